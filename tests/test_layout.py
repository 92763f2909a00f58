"""The package's shape: no import cycles between modules, and a public API that agrees
with itself. The layers themselves are an import-linter contract (pyproject.toml)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back():
    graph = grimp.build_graph("agent_channels", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert _cycles(graph) == [{"pkg.a", "pkg.b"}]


def _type_checking_names(module_path: Path) -> set[str]:
    tree = ast.parse(module_path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom):
                    names |= {alias.asname or alias.name for alias in statement.names}
    return names


@pytest.mark.parametrize("package", ["agent_channels", "agent_channels.runtime"])
def test_all_the_lazy_exports_and_the_type_checking_imports_agree(package):
    module = importlib.import_module(package)
    path = ROOT / Path(*package.split(".")) / "__init__.py"
    exports = set(module._EXPORTS)
    assert set(module.__all__) == exports == _type_checking_names(path)
    for name in module.__all__:
        value = getattr(module, name)
        assert getattr(value, "__name__", name) == name
        assert value.__module__ == module._EXPORTS[name]


def test_the_version_is_the_packages():
    from importlib.metadata import version

    import agent_channels

    assert agent_channels.__version__ == version("agent-channels")


def test_backends_named_by_their_old_dotted_paths_still_load():
    from django.utils.module_loading import import_string

    from agent_channels.runtime.backends.celery import CeleryBackend
    from agent_channels.runtime.backends.inprocess import InProcessBackend

    assert import_string("agent_channels.runtime.backends.CeleryBackend") is CeleryBackend
    assert import_string("agent_channels.runtime.backends.InProcessBackend") is InProcessBackend
    with pytest.raises(ImportError):
        import_string("agent_channels.runtime.backends.NoSuchBackend")
