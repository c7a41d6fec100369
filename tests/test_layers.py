"""The package's module-level imports form no cycle, and the runtime imports nothing from the
layers above it, not even lazily: the graph contract (lga_export/contract.py), the graph wrappers
(modeling/graphs.py) and verification (verify/) sit below it (the exporter validates with
runners, never the reverse)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"lga_export": REPO / "lga_export", "lga_export.cli": REPO / "cli", "lga_export.trt_engines": REPO / "trt_engines"}
_JOBS = ("lga_export.export", "lga_export.bench", "lga_export.training", "lga_export.serve", "lga_export.cli")
# A low layer -> the modules above it that it must not import, even lazily (README's Layout).
ABOVE = {"lga_export.runtime": _JOBS,
         "lga_export.verify": (*_JOBS, "lga_export.runtime", "lga_export.modeling", "lga_export.checkpoint"),
         "lga_export.contract": (*_JOBS, "lga_export.runtime", "lga_export.verify", "lga_export.modeling")}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _top_level_imports(path: Path, known: set[str]) -> set[str]:
    """lga_export modules imported at module level (imports inside functions are lazy on purpose)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        names.update(c for c in candidates if c in known)
    return names


def test_no_import_cycles_and_runtime_below_export():
    modules = _modules()
    graph = {name: _top_level_imports(path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for target in graph[name]:
            assert state.get(target) != 1, "import cycle: " + " -> ".join(stack + [name, target])
            if target not in state:
                visit(target, stack + [name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
    for name, path in modules.items():
        above = next((layers for low, layers in ABOVE.items() if name.startswith(low)), ())
        lazy_too = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module}
        upward = {m for m in lazy_too if m.startswith(above)} if above else set()
        assert not upward, f"{name} imports {upward}"
