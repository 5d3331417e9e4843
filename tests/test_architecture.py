"""The shape of the package: layers that import only downward, no import cycles, small modules.

The import graph is read with ``ast`` (no import is executed): every ``import`` and
``from ... import`` inside ``aqueue``, at module level or inside functions, except those
under ``if TYPE_CHECKING:`` (annotations only). ``docs/internals.md`` draws these layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aqueue"
MAX_LINES = 400

#: Bottom to top. A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "ground",
        [
            "aqueue.errors",
            "aqueue.message",
            "aqueue.topology",
            "aqueue.dead_letters",
            "aqueue._arguments",
            "aqueue._durations",
            "aqueue._url",
            "aqueue._logging",
            "aqueue._failures",
            "aqueue._deadlines",
            "aqueue._threads",
            "aqueue._recent",
        ],
    ),
    (
        "contracts",
        [
            "aqueue.middleware.base",
            "aqueue.context",
            "aqueue._default_broker",
            "aqueue._in_flight",
            "aqueue._scheduling_support",
            "aqueue._replies",
            "aqueue._groups",
            "aqueue._actor_options",
            "aqueue._deliveries",
            "aqueue.limits",
            "aqueue._limit_support",
        ],
    ),
    ("actors", ["aqueue.actor", "aqueue.schedules", "aqueue.composition"]),
    ("middleware", ["aqueue.middleware"]),
    ("broker interface", ["aqueue.broker"]),
    (
        "runtime",
        [
            "aqueue.worker",
            "aqueue._plans",
            "aqueue._processing",
            "aqueue._decoding",
            "aqueue._scheduler",
            "aqueue._schedule_state",
        ],
    ),
    ("implementations", ["aqueue.brokers"]),
    (
        "entry points",
        [
            "aqueue",
            "aqueue.__main__",
            "aqueue.cli",
            "aqueue._admin",
            "aqueue._admin_format",
            "aqueue._loading",
            "aqueue.asgi",
            "aqueue.pytest_plugin",
            "aqueue.dashboard",
        ],
    ),
]


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def runtime_imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The aqueue modules ``module`` imports when it runs (lazy imports included)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name.split(".")[0] == "aqueue")

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            target = resolve(node)
            if target.split(".")[0] != "aqueue":
                return
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: runtime_imports(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), index)
    if best is None or (best[0] == len("aqueue") and module != "aqueue"):
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycle_inside_aqueue() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_import_only_downward() -> None:
    upward = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                upward.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports "
                    f"{target} ({LAYERS[layer_of(target)][0]})"
                )
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: n
        for name, path in module_files().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split out their second job): {long}"


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    # The checkers themselves: a cycle is named, a lazy import counts, TYPE_CHECKING does not.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    modules = {"aqueue.x": Path("x.py"), "aqueue.y": Path("y.py")}
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from . import y\n"
        "def f():\n    from .y import thing\n"
    )
    probe = tmp_path / "x.py"
    probe.write_text(source)
    assert runtime_imports("aqueue.x", probe, modules) == {"aqueue.y"}
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import y\n")
    assert runtime_imports("aqueue.x", probe, modules) == set()
    assert layer_of("aqueue.broker") > layer_of("aqueue.actor") > layer_of("aqueue.errors")
