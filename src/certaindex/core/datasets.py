"""Labelled problem sets for the evaluation harness.

Shipped: ``gsm8k`` (the GSM8K test split, 1,319 problems; source and licence in
``certaindex/data/README.md``). Any JSONL file with ``question`` and ``answer`` fields works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from certaindex.core.validation import json_object_line

SHIPPED = {"gsm8k": "gsm8k_test.jsonl"}


class DatasetError(ValueError):
    """The data set is unknown, unreadable or malformed."""


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # gold final answer


def dataset_names() -> list[str]:
    return sorted(SHIPPED)


def load_dataset(name_or_path: str, limit: int | None = None, offset: int = 0) -> list[Problem]:
    """Load a shipped set by name, or a JSONL file by path; ``offset``/``limit`` select a slice."""
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise DatasetError(f"offset must be >= 0, got {offset}")
    if name_or_path in SHIPPED:
        source = resources.files("certaindex").joinpath("data", SHIPPED[name_or_path])
        label = name_or_path
        text = source.read_text(encoding="utf-8")
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            known = ", ".join(dataset_names())
            raise DatasetError(f"unknown data set {name_or_path!r}: use one of {known} or a path to a JSONL file")
        label = str(path)
        text = path.read_text(encoding="utf-8")
    problems = _parse_jsonl(text, label)
    selected = problems[offset : None if limit is None else offset + limit]
    if not selected:
        raise DatasetError(f"{label} has {len(problems)} problems; offset {offset} selects none")
    return selected


def _parse_jsonl(text: str, label: str) -> list[Problem]:
    problems = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = json_object_line(line, f"{label}:{lineno}", DatasetError)
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"{label}:{lineno}: missing 'question'")
        if answer is None or not str(answer).strip():
            raise DatasetError(f"{label}:{lineno}: missing 'answer'")
        problems.append(Problem(id=str(record.get("id", f"{label}-{lineno}")), question=question, answer=str(answer)))
    return problems
