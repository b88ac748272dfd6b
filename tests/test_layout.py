"""The shape of core/: no import cycles, dependencies down the data path, the map in the docs.

Every import counts, wherever it stands: at the top of a module, inside a function
(a lazy import is still a dependency) or under ``if TYPE_CHECKING:`` (a type named in
a signature is part of what a module needs to be understood).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "core"

#: packages of core/ from the bottom of the data path to the top: a module may import
#: from its own rank and below, never above. Top-level modules of core/ have their own
#: rank (``driver`` is the contract: above the generic code it defaults to, below the
#: store that calls it); a module listed by itself overrides its package's rank.
RANKS: dict[str, int] = {
    "errors": 0,
    "gotime": 0,  # Go's time syntax: plain text in, numbers out
    "host": 1,
    "blobs": 2,
    "layertar": 2,
    "layers.changes": 2,  # the generic changes a driver gets by default
    "layers.views": 2,  # what those generic operations are handed
    "driver": 3,
    "layers": 4,
    "config": 5,
    "plugins": 5,
    "engine": 6,
    "images": 7,
    "containers": 8,  # a container's record, spec, users, commit: images plus a layer
    "network": 8,  # bridge, veths, addresses, NAT: a container's network, not its process
    "launcher": 9,  # the process in namespaces: uses the container and its network
    "build": 10,
    "cli": 11,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(CORE).with_suffix("")
    parts = ["lamina", "core", *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The lamina.core modules ``path`` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import mod` imports a module; `from mod import name` a name
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = core_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def rank(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 3:
        return None  # lamina.core itself
    own = RANKS.get(".".join(parts[2:4]))
    return own if own is not None else RANKS.get(parts[2])


def test_core_has_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_dependencies_point_down_the_data_path() -> None:
    graph = import_graph()
    unranked = sorted(m for m in graph if rank(m) is None and m != "lamina.core")
    assert not unranked, f"modules of core/ in no rank of this test's RANKS: {unranked}"
    upward = sorted(
        f"{m} -> {d}" for m, deps in graph.items() for d in deps
        if rank(m) is not None and rank(d) is not None and rank(d) > rank(m)  # type: ignore[operator]
    )
    assert not upward, "imports against the data path:\n" + "\n".join(upward)


def test_the_core_imports_no_driver() -> None:
    """Built-in drivers are plugins like anyone's: the core never imports one."""
    offenders = sorted(
        str(p.relative_to(REPO)) for p in CORE.rglob("*.py")
        if re.search(r"^\s*(from|import) lamina\.drivers", p.read_text(), re.M)
    )
    assert not offenders


def test_architecture_map_names_every_module_of_core() -> None:
    """docs/architecture.md's module table names each file of core/, and nothing gone."""
    doc = (REPO / "docs/architecture.md").read_text()
    files = {str(p.relative_to(REPO)) for p in CORE.rglob("*.py")
             if "__pycache__" not in p.parts and p.name not in ("__init__.py", "__main__.py")}
    files |= {str(p.relative_to(REPO)) for p in CORE.rglob("*.c")}
    named = set(re.findall(r"`(core/[\w/]+\.(?:py|c))`", doc))
    assert sorted(files - named) == [], "modules missing from docs/architecture.md"
    assert sorted(named - files) == [], "docs/architecture.md names files that do not exist"
