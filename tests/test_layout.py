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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports by name, lazy imports included. ``from a import b``
    points at ``a.b`` where that is a module, else at ``a``; the implicit import of a parent package
    does not count (every submodule has it)."""
    modules = {_module_name(p): p for p in MODULES}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_circle_inside_the_package():
    """Two modules that import each other (even lazily, inside a function) are one module in two
    files: neither can be read, tested or moved alone."""
    assert _cycles(_import_graph()) == []


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
