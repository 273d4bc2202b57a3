"""The house rules, checked: no import circle, no module over 400 lines, strategies import shared
machinery and never each other, and no module below the runner imports the runner."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "compresskit"
MODULES = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
           for p in ROOT.rglob("*.py")}


def imports(path: Path, module_level_only: bool = True) -> set[str]:
    """compresskit modules `path` imports (at module level, TYPE_CHECKING blocks included)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if not module_level_only else [
        sub for node in tree.body for sub in (ast.walk(node) if isinstance(node, ast.If) else [node])]
    found = set()
    for node in nodes:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if isinstance(node, ast.ImportFrom) and node.module else [])
        found |= {n for n in names if n in MODULES}
    return found


def test_no_import_circle():
    graph = {m: imports(p) - {m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import circle: " + " -> ".join([*path, module, dep])
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_400_lines(module):
    assert len(MODULES[module].read_text().splitlines()) <= 400


def test_strategies_import_shared_machinery_never_each_other():
    for module, path in MODULES.items():
        if module.startswith("compresskit.strategies."):
            others = {m for m in imports(path, module_level_only=False) if m.startswith("compresskit.strategies.")}
            assert not others - {module}, f"{module} imports {sorted(others)}"


def test_nothing_a_stage_uses_imports_the_runner():
    runner = {"compresskit.pipeline", "compresskit.cli"}  # and `python -m compresskit`, which is the CLI
    for module, path in MODULES.items():
        if module not in runner | {"compresskit.__main__"}:
            assert not imports(path) & runner, f"{module} imports the runner"
