"""docs/architecture.md stays true to the code: its generated layer block equals a fresh one, and
every module (and name in a module) its flows mention exists."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "certaindex"
DOC = ROOT / "docs" / "architecture.md"
# `layer/module.py` or `layer/module.py: name` (a function, class or Class.method defined in it)
MENTION = re.compile(r"`([a-z_]+(?:/[a-z_]+)*\.py)(?::\s*([A-Za-z_][\w.]*))?`")


def _script():
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_block_matches_the_code():
    script = _script()
    committed = script.committed_block(DOC.read_text(encoding="utf-8"))
    assert committed == script.block(), "docs/architecture.md is stale: run python scripts/architecture.py --write"


def test_the_block_names_every_layer_and_module():
    block = _script().block()
    for path in PACKAGE.glob("*/*.py"):
        if path.stem not in ("__init__", "__main__"):
            assert re.search(rf"\b{path.stem}\b", block), path


def _defined(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and ``Class.method`` for their methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return names


def _mentions(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in MENTION.finditer(text)]


def test_the_mention_pattern_reads_paths_and_names():
    text = "see `server/app.py: create_app`, `core/answers.py` and `tests/test_layout.py`; not `x.json`"
    assert _mentions(text) == [("server/app.py", "create_app"), ("core/answers.py", None), ("tests/test_layout.py", None)]


@pytest.mark.parametrize("mention", sorted(set(_mentions(DOC.read_text(encoding="utf-8"))), key=lambda m: (m[0], m[1] or "")),
                         ids=lambda m: f"{m[0]}:{m[1] or ''}")
def test_every_module_and_name_the_page_mentions_exists(mention):
    path, name = mention
    candidates = [PACKAGE / path, ROOT / path]
    found = next((c for c in candidates if c.is_file()), None)
    assert found is not None, f"docs/architecture.md mentions {path}, which is neither under src/certaindex nor the repository root"
    if name is not None:
        assert name in _defined(found), f"docs/architecture.md mentions {path}: {name}, which {path} does not define"
