"""The package's imports point down only: core -> engines -> programs -> traces -> scheduler ->
evaluation / serving -> server -> cli. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "certaindex"
LAYERS = {
    "core": 0,
    "engines": 1,
    "programs": 2,
    "traces": 3,
    "scheduler": 4,
    "evaluation": 5,
    "serving": 5,
    "server": 6,
    "cli": 7,
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "certaindex" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_no_module_sits_flat_in_the_package_but_its_init():
    flat = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert flat == []


def test_every_subpackage_has_a_layer():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0] if len(rel.parts) > 1 else None
    if own is None:
        return
    upward = []
    for line, module in _imports(path):
        target = _layer(module)
        if target is None or target == own or target not in LAYERS:
            continue
        if LAYERS[target] >= LAYERS[own]:
            upward.append(f"line {line}: {module}")
    assert upward == [], f"{rel} imports a layer at or above its own ({own})"


MAX_FUNCTION_LINES = 120


def _long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Every function or method (nested ones too, each counted with its whole body) over ``limit``
    lines, from its ``def`` line to its last line; decorators are not counted."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append(f"{node.name} (line {node.lineno}): {lines} lines")
    return found


def test_the_function_length_check_counts_a_long_nested_function(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(130))
    (tmp_path / "m.py").write_text(f"def outer():\n    def inner():\n{body}\n    return inner\n\n\ndef short():\n    return 1\n")
    assert [f.split(" ")[0] for f in _long_functions(tmp_path / "m.py")] == ["outer", "inner"]
    assert _long_functions(tmp_path / "m.py", limit=200) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_over_120_lines(path: Path):
    """Issue 21: a function that does not fit on a screen or two does more than one job."""
    long = _long_functions(path)
    assert long == [], f"{path.relative_to(PACKAGE)}: split {'; '.join(long)}"
