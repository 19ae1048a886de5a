"""The layers stay layers: who may import nats-py, pyfuse3 and mfusepy, and no import circles.

Pure code (tier 1): reads the package's sources with ``ast``, imports nothing.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "hvfs"

#: the only modules that may import each dependency
ALLOWED = {
    "nats": {"hvfs.store.nats", "hvfs.store.natssubs"},
    "pyfuse3": {"hvfs.fuse.ops", "hvfs.fuse.notifier", "hvfs.mount"},
    "asyncio": {"hvfs.store.nats", "hvfs.store.natssubs"},
    # git: the settlement's one module (hvfs.settle stays free of nats-py and pyfuse3 above)
    "dulwich": {"hvfs.settle.git"},
    # the second kernel binding (libfuse's high-level API, for FUSE-T on macOS)
    "mfusepy": {"hvfs.fuse.mfuse"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module ``name`` imports (any depth in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: {i for i in _imports(name, path) if i in mods and i != name}
            for name, path in mods.items()}


def test_dependencies_stay_in_their_modules():
    mods = _modules()
    wrong = []
    for name, path in mods.items():
        for imp in _imports(name, path):
            top = imp.split(".")[0]
            if top in ALLOWED and name not in ALLOWED[top]:
                wrong.append(f"{name} imports {imp}")
    assert not wrong, wrong


def test_the_store_package_itself_imports_no_nats():
    """``from hvfs.store import Store`` must not drag nats-py (and asyncio) in."""
    graph = _graph()
    seen, todo = set(), ["hvfs.store"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    assert "hvfs.store.nats" not in seen


def test_no_import_circles():
    graph = _graph()
    # A package importing its own submodules (re-exports) is not a circle.
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not circles, circles
