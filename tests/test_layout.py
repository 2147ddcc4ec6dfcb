"""The package's layout keeps its promises: no import cycles, one adapter per dependency's internals.

Read from the source (AST), nothing imported: a cycle or a stray reach into
Daphne's or autobahn's private attributes fails here, wherever it was added.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "paas_channels"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level, including inside if/try, not in functions."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            pending.extend(node.body + node.orelse)  # TYPE_CHECKING blocks count: they are cycles for checkers
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
        elif isinstance(node, (ast.With, ast.ClassDef)):
            pending.extend(node.body)
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> package modules it imports at import time (a submodule import also runs its packages)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in _top_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                target = _resolve(name, path.name == "__init__.py", node)
                targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
            for target in targets:
                # A module importing its own package (``from . import x``) finds it already importing.
                if target in modules and not name.startswith(target + "."):
                    graph[name].add(target)
                    # Importing a.b.c imports a.b first: an edge to each parent package.
                    parts = target.split(".")
                    for index in range(1, len(parts)):
                        parent = ".".join(parts[:index])
                        if parent in modules and parent != name and not name.startswith(parent + "."):
                            graph[name].add(parent)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    # The check itself can fail: a two-module circle, and one through a parent package.
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"q"}, "q": {"p"}}) is not None
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_real_imports():
    graph = import_graph()
    assert "paas_channels.interface" in graph["paas_channels.runtime.web"]
    assert "paas_channels.interface.app" in graph["paas_channels.interface"]
    assert "paas_channels.runtime" in graph["paas_channels.interface.static"]  # the parent package runs first
    assert "paas_channels.layers.base" in graph["paas_channels.layers.memory"]


#: Daphne's and autobahn's private parts the interface relies on: only interface/daphne.py may name them.
_DAPHNE_PRIVATE = {
    "sendCloseFrame", "serverClose", "ws_factory", "_ws_factory", "kill_all_applications",
    "listen_success", "listen_error", "application_instance", "requestReceived",
}
_DAPHNE_ADAPTER = PACKAGE / "interface" / "daphne.py"


def _names_used(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    return names


def _daphne_private_outside_adapter() -> dict[str, set[str]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path == _DAPHNE_ADAPTER:
            continue
        names = _names_used(path) & _DAPHNE_PRIVATE
        if names:
            found[str(path.relative_to(PACKAGE.parent))] = names
    return found


def test_only_the_daphne_adapter_touches_daphne_and_autobahn_internals():
    assert _daphne_private_outside_adapter() == {}
    assert _names_used(_DAPHNE_ADAPTER) & _DAPHNE_PRIVATE  # the list names what the adapter really uses


def test_only_the_daphne_adapter_imports_daphne_server_or_twisted():
    for path in PACKAGE.rglob("*.py"):
        if path == _DAPHNE_ADAPTER:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module and node.module.split(".")[0] in (
                    "daphne", "twisted", "autobahn"):
                raise AssertionError(f"{path.relative_to(PACKAGE.parent)} imports {node.module}")
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in ("daphne", "twisted", "autobahn"), (
                        f"{path.relative_to(PACKAGE.parent)} imports {alias.name}")


def test_no_module_is_two_concepts():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}, f"modules past ~500 lines (split them by concern): {long}"


def test_no_layer_shadows_the_base_layers_private_methods(tmp_path):
    # A backend's own `_open` (an attribute or a method) once hid the base's
    # message authentication: every receive then failed. Class and instance level.
    import inspect

    from paas_channels.layers import BaseChannelLayer, InMemoryChannelLayer, IPCChannelLayer, RedisChannelLayer
    from paas_channels.layers.rabbitmq import RabbitMQChannelLayer

    private = {name: value for name, value in vars(BaseChannelLayer).items()
               if name.startswith("_") and not name.startswith("__") and callable(getattr(value, "__func__", value))}
    assert {"_open", "_seal"} <= set(private)
    for cls in (InMemoryChannelLayer, IPCChannelLayer, RedisChannelLayer, RabbitMQChannelLayer):
        for name, value in private.items():
            assert inspect.getattr_static(cls, name) is value, f"{cls.__name__}.{name} shadows BaseChannelLayer.{name}"
    made = [InMemoryChannelLayer(), IPCChannelLayer(prefix="shadow", directory=tmp_path), RedisChannelLayer()]
    try:
        for layer in made:
            assert not set(vars(layer)) & set(private), f"{type(layer).__name__} sets {set(vars(layer)) & set(private)}"
    finally:
        for layer in made:
            layer.close()
