"""How the code is held together: no import cycle between the package's modules, no formatter switched off, no
private APIs of other libraries (argparse's `_actions`). Module and function length follow their meaning: no
line cap is checked."""

import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "resnet_repro"
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """The package's modules that `path` imports anywhere in it (in a function too): a submodule where
    `from package import submodule` names one, else the package itself."""
    names = {module_name(p) for p in MODULES}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resnet_repro"):
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module for a in node.names
            }
    return found - {module_name(path)}


def test_no_module_imports_itself_round_a_circle():
    graph = {module_name(p): imports(p) for p in MODULES}
    done, path = set(), []

    def visit(module):
        if module in path:
            pytest.fail(f"import cycle: {' -> '.join(path[path.index(module) :] + [module])}")
        if module in done:
            return
        path.append(module)
        for other in sorted(graph.get(module, ())):
            visit(other)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert graph["resnet_repro.data.memory"] >= {"resnet_repro.data.sources"}  # the walk saw the imports


@pytest.mark.parametrize(
    "path",
    [*MODULES, *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "tools").glob("*.py"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_formatter_is_never_switched_off(path):
    text = path.read_text()
    assert "# fmt: " + "skip" not in text and "# fmt: " + "off" not in text


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_attribute_of_argparse_is_used(path):
    assert "._actions" not in path.read_text() and "_option_string_actions" not in path.read_text()
