"""The code stays legible: flat modules small enough to read at once, short functions, no private APIs of
other libraries (argparse's `_actions`)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "resnet_repro"
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_MODULE_LINES = 310  # models.py aside: the nets' classes and their builders belong together
MAX_FUNCTION_LINES = 55  # argument-parser declarations aside


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_are_short_enough_to_read_at_once(path):
    if path.name != "models.py":
        assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_functions_are_short(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and "parser" not in node.name
    ]
    assert not long, f"{path.name}: {', '.join(long)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_private_attribute_of_argparse_is_used(path):
    assert "._actions" not in path.read_text() and "_option_string_actions" not in path.read_text()
