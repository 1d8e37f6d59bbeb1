"""The house has floors, and imports only go down them.

    contracts (syncmesh.*.v1)  <  runtime (services.common)  <  gateway, each service
        <  registry (services.registry)  <  operator tools (ops)  <  launcher

A module may import from its own floor's package and from the floors below; a service never
imports another service. Imports inside functions count too: a deferred import is still a
dependency, and the circles this test guards against (gateway.app <-> gateway.sweeper,
ops.cli <-> ops.verify) were both hidden inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "services", "ops", "launcher", "contracts/syncmesh")


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT / "contracts" if path.is_relative_to(ROOT / "contracts") else ROOT)
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[str]:
    """Every project module a file imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod.
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in MODULES else node.module


def _resolve(name: str) -> str | None:
    """The project module an import names (a `from x import y` may name a module or a symbol)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def floor(module: str) -> tuple[int, str]:
    """(height, room): a module may import rooms of a lower height, or its own room."""
    parts = module.split(".")
    if parts[0] == "syncmesh":
        return 0, "contracts"
    if parts[0] == "services":
        if len(parts) == 1 or parts[1] == "common":
            return 1, "runtime"
        if parts[1] == "registry":
            return 3, "registry"
        return 2, f"services.{parts[1]}"
    if parts[0] == "gateway":
        return 2, "gateway"
    if parts[0] == "ops":
        return 4, "ops"
    if parts[0] == "launcher":
        return 5, "launcher"
    raise AssertionError(f"{module} is on no floor: add its package to tests/test_layers.py")


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_resolve(name) for name in _imports(path)}
        # A module's own parent packages run before it anyway: not a dependency worth drawing.
        ancestors = {module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)}
        edges[module] = {t for t in targets if t and t != module and t not in ancestors}
    return edges


EDGES = _edges()


def test_imports_only_go_down_the_floors() -> None:
    upward = []
    for module, targets in EDGES.items():
        height, room = floor(module)
        for target in targets:
            target_height, target_room = floor(target)
            if target_room != room and target_height >= height:
                upward.append(f"{module} ({room}) imports {target} ({target_room})")
    assert not upward, "imports that go up or sideways:\n" + "\n".join(sorted(upward))


def test_there_are_no_import_circles() -> None:
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(EDGES.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(EDGES):
        if module not in state:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("syncmesh")))
def test_the_contracts_import_nothing_else_of_the_project(module: str) -> None:
    assert all(floor(t)[1] == "contracts" for t in EDGES[module]), EDGES[module]


def test_the_floor_rule_catches_an_upward_import() -> None:
    """The rule is not vacuous: the runtime importing a service, or a service another, fails it."""
    assert floor("services.common.consumer")[0] < floor("services.billing.store")[0]
    assert floor("services.billing.store")[1] != floor("services.customer.store")[1]
    assert floor("ops.verify")[0] < floor("launcher.cli")[0]
    assert len(MODULES) > 50 and sum(len(t) for t in EDGES.values()) > 100
