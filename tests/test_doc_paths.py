"""Every results file the docs name exists: benchmarks/results/ is grouped in study folders, and a
moved or renamed file must take its references along (README.md, docs/*.md, benchmarks/README.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS_PATH = re.compile(r"(?:benchmarks/)?results/[A-Za-z0-9_.{},*<>/-]+")


def expand(path: str) -> list[str]:
    """``a-{x,y}.txt`` -> ``a-x.txt``, ``a-y.txt`` (the docs' shorthand for sibling files)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in expand(path[:m.start()] + alt + path[m.end():])]


def missing(text: str, root: Path = ROOT) -> list[str]:
    """Results paths in ``text`` that match no file. ``<placeholders>`` are skipped; a path may be a
    prefix (``--png PREFIX`` writes ``PREFIX-*.png``) or a glob."""
    gone = []
    for m in RESULTS_PATH.finditer(text):
        raw = m.group(0).rstrip(".,:;)")
        rel = raw if raw.startswith("benchmarks/") else f"benchmarks/{raw}"
        for path in expand(rel):
            if "<" in path:
                continue
            if not (root / path).exists() and not any(root.glob(path)) and not any(root.glob(path + "*")):
                gone.append(raw)
    return gone


def test_missing_reads_braces_prefixes_and_placeholders(tmp_path):
    folder = tmp_path / "benchmarks" / "results" / "study"
    folder.mkdir(parents=True)
    for name in ("a.txt", "a.json", "run-slo10.png"):
        (folder / name).write_text("")
    text = ("`results/study/a.{txt,json}`, benchmarks/results/study/run, results/study/<name>.txt, "
            "results/study/b.txt and results/flat.txt.")
    assert missing(text, tmp_path) == ["results/study/b.txt", "results/flat.txt"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_results_path_the_docs_name_exists(doc: Path):
    assert missing(doc.read_text(encoding="utf-8")) == []


ABSOLUTE = re.compile(r"(?<![\w.~])/(?:work|home|root|tmp|Users|mnt|data)/")


def test_the_absolute_path_check_catches_a_machine_path():
    assert ABSOLUTE.search("--traces /work/shared/traces/governor")
    assert not ABSOLUTE.search("--traces ../shared/traces/governor and results/gpu/x.json")


def test_benchmarks_readme_names_no_absolute_path():
    """A newcomer runs the commands from the repository root on another machine."""
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert ABSOLUTE.findall(text) == []
