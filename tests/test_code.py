"""The code uses no private APIs of other libraries (argparse's `_actions`). Module and function length follow
their meaning: no line cap is checked."""

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "resnet_repro"
MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_private_attribute_of_argparse_is_used(path):
    assert "._actions" not in path.read_text() and "_option_string_actions" not in path.read_text()
