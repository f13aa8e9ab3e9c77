"""The house, checked: the import graph of ``gateway/`` has no cycle, and each room imports only
the rooms below it — the UPS core nothing but itself; the store the core; the event transport the
store and the core; the adapters the core and the events (never each other); only the
composition root (``app``) and the command line see everything; the operator's commands
(``admin``) reach the core through the composition root.

Imports under ``if TYPE_CHECKING:`` are type-only (they never run) and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

ROOT = Path(gateway.__file__).parent

# room → the rooms it may import (besides itself). "gateway" is the package's __init__
# (its version), "config", "instance", "logs", "metrics" and "supervisor" are leaf modules.
ALLOWED = {
    "ups": set(),
    "store": {"ups"},
    "events": {"ups", "store", "metrics"},
    "rest": {"ups", "events", "config", "logs", "gateway", "security", "audit", "metrics"},
    "dimse": {"ups", "events", "config", "logs", "gateway", "security", "audit", "metrics"},
    "audit": set(),
    "security": {"config"},
    "config": {"ups"},
    "instance": {"config"},
    "logs": set(),
    "metrics": set(),
    "supervisor": set(),
    "testing": set(),
    "testing_peers": set(),
    "gateway": set(),
    "app": {"ups", "store", "events", "rest", "dimse", "config", "instance", "logs", "metrics",
            "supervisor", "security", "audit"},
    "admin": {"app", "ups", "store", "events", "config"},
    "cli": {"admin", "app", "config", "logs", "gateway"},
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_target(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a ``from … import`` in ``module`` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + is_package]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _import_target(node, module, is_package)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imports = _runtime_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {i for i in imports if i in modules and i != name}
    return graph


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "gateway"


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_each_room_imports_only_the_rooms_below_it():
    wrong = []
    for module, imports in sorted(import_graph().items()):
        allowed = ALLOWED[room(module)] | {room(module)}
        for imported in sorted(imports):
            if room(imported) not in allowed:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_nothing_of_the_gateway_but_itself():
    for module, imports in import_graph().items():
        if room(module) == "ups":
            assert all(room(i) == "ups" for i in imports), (module, imports)


def test_the_checker_sees_a_forbidden_import():
    """The walk is not vacuous: a core module importing the store would be caught."""
    tree = ast.parse("from gateway.store.workitems import RedisWorkitemStore\n"
                     "def f():\n    import gateway.rest.app\n"
                     "if TYPE_CHECKING:\n    from gateway.dimse import handlers\n")
    found = _runtime_imports(tree, "gateway.ups.service", False)
    assert "gateway.store.workitems" in found and "gateway.rest.app" in found
    assert not any(name.startswith("gateway.dimse") for name in found)


def _private_imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """``from gateway.x import _name`` (any level) in ``tree``: another module's private name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _import_target(node, module, is_package)
            if target.startswith("gateway") and target != module:
                found += [f"{target}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    """Shared helpers are public in the module that owns them (``dimse/decoding.py`` for the
    SCPs' request reading, ``ups.service.workitem_change`` for every UPS commit)."""
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        wrong += [f"{name} imports {imported}" for imported in
                  _private_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")]
    assert not wrong, "\n".join(wrong)


def test_the_private_import_check_sees_one():
    tree = ast.parse("def f():\n    from gateway.dimse.handlers import _canonical, Refused\n")
    assert _private_imports(tree, "gateway.dimse.mpps", False) == \
        ["gateway.dimse.handlers._canonical"]
