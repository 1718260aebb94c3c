"""Reader for the Governor trace layout: recorded trajectories of real reasoning models, each probed
for its answer every 64 reasoning tokens (``../shared/traces/governor/README.md`` documents it).

A *run* is one folder ``<model>__<dataset>__seed_<s>/`` holding ``trajectories.jsonl.gz``,
``probes.csv.gz`` and optionally ``events.jsonl.gz`` (extra probes at event positions) and
``deer.jsonl.gz`` (DEER trial answers at "Wait" points). ``split_manifest.json`` (in the folder or
the one above it) assigns each problem to train / dev / test. :func:`read_governor` takes either a
folder of runs or one run and detects which.

Values arrive loosely typed: every CSV field is a string and some nested JSON values are strings
holding Python literals; the reader converts them. A malformed file raises one
:class:`GovernorFormatError` naming the file and line. Only this module does I/O; the records are
plain data that :mod:`certaindex.evaluation.peers` replays.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from certaindex.core.exit_score import trial_confidence
from certaindex.core.validation import json_object_line

__all__ = [
    "GovernorFormatError",
    "GovernorRun",
    "Probe",
    "SPLITS",
    "Trajectory",
    "Trial",
    "find_runs",
    "is_governor_layout",
    "missing_optional",
    "read_governor",
    "read_run",
    "read_split_manifest",
]

RUN_NAME = re.compile(r"^(?P<model>.+?)__(?P<dataset>[^_].*?)__seed_(?P<seed>\d+)$")
TRAJECTORIES = "trajectories.jsonl.gz"
PROBES = "probes.csv.gz"
EVENTS = "events.jsonl.gz"
DEER = "deer.jsonl.gz"
MANIFEST = "split_manifest.json"
SPLITS = ("train", "dev", "all")


class GovernorFormatError(ValueError):
    """A Governor file that cannot be read; the message names the file and line."""


@dataclass(slots=True)
class Probe:
    """One answer probe on the frozen trajectory, taken after ``pos`` reasoning tokens."""

    pos: int
    answer: str | None
    certain: bool  # False when the probe's text hesitates (Dynasor's test)
    out_tokens: int
    triggers: tuple[str, ...] = ()  # event probes: why this position was probed


@dataclass(slots=True)
class Trial:
    """One DEER trial answer read at a "Wait" point, with its logprob confidence."""

    pos: int
    answer: str | None
    confidence: float
    out_tokens: int
    min_prob: float = 0.0  # smallest token probability of the trial answer (from its logprobs)
    tokens: tuple[tuple[str, float], ...] = ()  # the trial's tokens and their logprobs, as recorded
    char: int | None = None  # where its "Wait" starts in ``full_text`` (``trigger_char_position``), if recorded


@dataclass(slots=True)
class Trajectory:
    """One recorded chain of thought with everything probed on it."""

    model: str  # the run folder's model slug, e.g. r1-distill-qwen-7b
    model_name: str  # the served model's name, e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-7B
    dataset: str
    seed: int
    problem_id: int
    split: str
    target: str
    tokens_used: int
    full_text: str
    final_answer: str | None
    final_correct: bool  # the source's own grading (kept for comparison; certaindex regrades)
    finish_reason: str
    probes: list[Probe] = field(default_factory=list)  # the 64-token grid, by position
    events: list[Probe] = field(default_factory=list)  # event probes, by position
    trials: list[Trial] | None = None  # DEER trials by position; None where the run has none
    problem: str = ""  # the problem's text as the prompt gave it (the replay server recognises it)


@dataclass
class GovernorRun:
    """One ``<model>__<dataset>__seed_<s>`` folder."""

    path: Path
    model: str
    model_name: str
    dataset: str
    seed: int
    trajectories: list[Trajectory]
    has_events: bool
    has_deer: bool


# ------------------------------------------------------------------------------- conversions


class _Bad(Exception):
    """A field that cannot be converted; turned into a GovernorFormatError with file and line."""


def _literal(value: Any) -> Any:
    """Strings holding Python literals (lists, dicts) become the values they spell."""
    if isinstance(value, str) and value[:1] in "[{(":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise _Bad(f"not a Python literal: {value[:60]!r}") from None
    return value


def _objects(record: dict, key: str, what: str) -> Iterator[dict]:
    """The objects of a list field that may be stored as a Python-literal string, each possibly one too."""
    items = _literal(_need(record, key))
    if not isinstance(items, list):
        raise _Bad(f"{key} is not a list")
    for item in items:
        item = _literal(item)
        if not isinstance(item, dict):
            raise _Bad(f"{what} is not an object")
        yield item


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise _Bad(f"{name} is not an integer: {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Bad(f"{name} is not an integer: {value!r}") from None
    if not number.is_integer():
        raise _Bad(f"{name} is not an integer: {value!r}")
    return int(number)


def _float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _Bad(f"{name} is not a number: {value!r}") from None


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise _Bad(f"{name} is not a boolean: {value!r}")


def _answer(value: Any) -> str | None:
    """An answer string; missing and empty answers are None."""
    if value is None:
        return None
    if isinstance(value, float):
        return _number_text(value)
    text = str(value)
    return text if text.strip() else None


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _target(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number_text(float(value))
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"target is missing or empty: {value!r}")
    return value


def _min_prob(value: Any) -> float:
    """The smallest token probability of a trial's ``logprobs`` list (0.0 when absent), by the
    definition live trials use (:func:`~certaindex.core.exit_score.trial_confidence`, whose
    confidence also reproduces the records' own ``confidence``)."""
    lps = _literal(value) or []
    if not isinstance(lps, list):
        raise _Bad("logprobs is not a list")
    values = []
    for d in lps:
        d = _literal(d)
        values.append(_float(d.get("logprob") if isinstance(d, dict) else d, "logprob"))
    return trial_confidence(values)[1]


def _trial_tokens(value: Any) -> tuple[tuple[str, float], ...]:
    """A trial's ``logprobs`` list as (token text, logprob) pairs (entries without a token are skipped)."""
    out = []
    for d in _literal(value) or []:
        d = _literal(d)
        if isinstance(d, dict) and "token" in d:
            out.append((str(d["token"]), _float(d.get("logprob"), "logprob")))
    return tuple(out)


def _need(record: dict[str, Any], name: str) -> Any:
    if name not in record:
        raise _Bad(f"missing field {name!r}")
    return record[name]


# ------------------------------------------------------------------------------------ files


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a gzip (or plain) text file; unreadable files name themselves."""
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:  # type: ignore[operator]
            for lineno, line in enumerate(fh, 1):
                yield lineno, line
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise GovernorFormatError(f"{path}:{lineno + 1}: cannot read: {exc}") from None


def _json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        yield lineno, json_object_line(line, f"{path}:{lineno}", GovernorFormatError)


def read_split_manifest(path: Path) -> dict[tuple[str, int], str]:
    """(dataset, problem_id) -> split, from a ``split_manifest.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {(str(a["benchmark"]), int(a["dataset_index"])): str(a["split"]) for a in data["assignments"]}
    except OSError as exc:
        raise GovernorFormatError(f"{path}: cannot read: {exc}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise GovernorFormatError(f"{path}: not a split manifest ({type(exc).__name__}: {exc})") from None


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / TRAJECTORIES).is_file() and RUN_NAME.match(path.name) is not None


def is_governor_layout(path: str | Path) -> bool:
    """True for a Governor run folder or a folder holding run folders."""
    path = Path(path)
    return _is_run(path) or (path.is_dir() and any(_is_run(p) for p in path.iterdir()))


def find_runs(path: str | Path) -> list[Path]:
    """The run folders at ``path``: itself if it is one, else its run subfolders (sorted)."""
    path = Path(path)
    if not path.exists():
        raise GovernorFormatError(f"{path}: no such file or folder")
    if _is_run(path):
        return [path]
    if not path.is_dir():
        raise GovernorFormatError(f"{path}: not a Governor folder (a <model>__<dataset>__seed_<s> folder or a folder of them)")
    runs = sorted(p for p in path.iterdir() if _is_run(p))
    if not runs:
        raise GovernorFormatError(
            f"{path}: holds no <model>__<dataset>__seed_<s> folder with {TRAJECTORIES}")
    return runs


def _manifest_for(path: Path) -> Path | None:
    for folder in (path, path.parent):
        if (folder / MANIFEST).is_file():
            return folder / MANIFEST
    return None


def read_run(folder: str | Path, splits: dict[tuple[str, int], str] | None = None,
             keep: Callable[[str], bool] = lambda split: True) -> GovernorRun:
    """One run folder; ``keep(split)`` chooses which problems to read (unknown splits are "?")."""
    folder = Path(folder)
    match = RUN_NAME.match(folder.name)
    if match is None:
        raise GovernorFormatError(f"{folder}: folder name is not <model>__<dataset>__seed_<s>")
    model, dataset, seed = match["model"], match["dataset"], int(match["seed"])
    splits = splits or {}
    trajs: dict[int, Trajectory] = {}
    skipped: set[int] = set()
    model_name = model
    path = folder / TRAJECTORIES
    for lineno, r in _json_records(path):
        try:
            pid = _int(_need(r, "problem_id"), "problem_id")
            split = splits.get((dataset, pid), "?")
            if not keep(split):
                skipped.add(pid)
                continue
            settings = _literal(r.get("run_settings")) or {}
            if isinstance(settings, dict) and settings.get("model"):
                model_name = str(settings["model"])
            if pid in trajs:
                raise _Bad(f"problem_id {pid} appears twice")
            trajs[pid] = Trajectory(
                model=model, model_name=model_name, dataset=dataset, seed=seed, problem_id=pid, split=split,
                target=_target(_need(r, "target")),
                tokens_used=_int(_need(r, "tokens_used"), "tokens_used"),
                full_text=str(r.get("full_text") or ""),
                final_answer=_answer(r.get("final_answer")),
                final_correct=_bool(r.get("final_correct", False), "final_correct"),
                finish_reason=str(r.get("finish_reason") or ""),
                problem=str(r.get("problem") or ""),
            )
        except _Bad as exc:
            raise GovernorFormatError(f"{path}:{lineno}: {exc}") from None

    def owner(pid: int, where: str) -> Trajectory | None:
        t = trajs.get(pid)
        if t is None and pid not in skipped:
            raise _Bad(f"problem_id {pid} has no trajectory in {TRAJECTORIES} ({where})")
        return t

    path = folder / PROBES
    if not path.is_file():
        raise GovernorFormatError(f"{path}: missing (every run folder needs its probes)")
    rows = csv.reader(line for _, line in _lines(path))
    lineno = 1
    try:
        header = next(rows)
    except StopIteration:
        raise GovernorFormatError(f"{path}:1: empty file, expected a CSV header") from None
    except csv.Error as exc:
        raise GovernorFormatError(f"{path}:1: {exc}") from None
    columns = ("problem_id", "token_position", "probe_answer", "is_certain", "probe_out_tokens")
    missing = [c for c in columns if c not in header]
    if missing:
        raise GovernorFormatError(f"{path}:1: CSV header lacks {', '.join(missing)}")
    i_pid, i_pos, i_ans, i_cert, i_out = (header.index(c) for c in columns)
    width = len(header)
    try:
        for lineno, row in enumerate(rows, 2):
            if len(row) != width:
                raise _Bad(f"{len(row)} fields where the header has {width}")
            t = owner(_int(row[i_pid], "problem_id"), "probes")
            if t is None:
                continue
            t.probes.append(Probe(_int(row[i_pos], "token_position"), _answer(row[i_ans]),
                                  _bool(row[i_cert], "is_certain"), _int(row[i_out] or 0, "probe_out_tokens")))
    except _Bad as exc:
        raise GovernorFormatError(f"{path}:{lineno}: {exc}") from None
    except csv.Error as exc:
        raise GovernorFormatError(f"{path}:{lineno}: {exc}") from None

    def attach(name: str, where: str, field: str, what: str, into: Callable[[Trajectory], list],
               build: Callable[[dict[str, Any]], Any]) -> None:
        """Read the optional file ``name``: each line's list ``field`` of objects, built and appended
        to its trajectory's list (``into``); one error naming file and line."""
        path = folder / name
        for lineno, r in _json_records(path):
            try:
                t = owner(_int(_need(r, "problem_id"), "problem_id"), where)
                if t is None:
                    continue
                into(t).extend(build(x) for x in _objects(r, field, what))
            except _Bad as exc:
                raise GovernorFormatError(f"{path}:{lineno}: {exc}") from None

    has_events = (folder / EVENTS).is_file()
    if has_events:
        attach(EVENTS, "events", "probes", "an event probe", lambda t: t.events, lambda p: Probe(
            _int(_need(p, "token_position"), "token_position"), _answer(p.get("probe_answer")),
            _bool(p.get("is_certain", False), "is_certain"),
            _int(p.get("probe_out_tokens") or 0, "probe_out_tokens"),
            tuple(str(x) for x in (_literal(p.get("trigger_types")) or ())),
        ))

    has_deer = (folder / DEER).is_file()
    if has_deer:
        for t in trajs.values():
            t.trials = []
        attach(DEER, "deer", "trials", "a trial", lambda t: t.trials, lambda x: Trial(  # type: ignore[arg-type,return-value]
            _int(_need(x, "token_position"), "token_position"), _answer(x.get("trial_answer")),
            _float(_need(x, "confidence"), "confidence"),
            _int(x.get("trial_out_tokens") or 0, "trial_out_tokens"),
            _min_prob(x.get("logprobs")),
            _trial_tokens(x.get("logprobs")),
            None if x.get("trigger_char_position") is None
            else _int(x["trigger_char_position"], "trigger_char_position"),
        ))

    for t in trajs.values():
        t.probes.sort(key=lambda p: p.pos)
        t.events.sort(key=lambda p: p.pos)
        if t.trials is not None:
            t.trials.sort(key=lambda x: x.pos)
        t.model_name = model_name
    return GovernorRun(folder, model, model_name, dataset, seed, [trajs[k] for k in sorted(trajs)],
                       has_events, has_deer)


def read_governor(path: str | Path, split: str = "all",
                  on_run: Callable[[int, int, GovernorRun], None] | None = None) -> list[GovernorRun]:
    """Every run at ``path`` (a run folder or a folder of them), restricted to ``split`` problems.

    ``split`` is ``train``, ``dev`` or ``all``; train/dev need a ``split_manifest.json`` in the
    folder or the one above it. ``on_run(done, total, run)`` reports progress."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    runs = find_runs(path)
    manifest = _manifest_for(Path(path))
    splits = read_split_manifest(manifest) if manifest else {}
    if split != "all" and not splits:
        raise GovernorFormatError(f"{path}: --split {split} needs a {MANIFEST} in the folder or the one above it")
    keep: Callable[[str], bool] = (lambda s: True) if split == "all" else (lambda s: s == split)
    out = []
    for i, folder in enumerate(runs, 1):
        run = read_run(folder, splits, keep)
        out.append(run)
        if on_run is not None:
            on_run(i, len(runs), run)
    return out


def missing_optional(runs: list[GovernorRun]) -> dict[str, list[str]]:
    """The optional files each run lacks: file name -> the run folders without it (only files that
    some run lacks), so a command can say what it could not report instead of dropping it silently."""
    out: dict[str, list[str]] = {}
    for run in runs:
        for name, present in ((EVENTS, run.has_events), (DEER, run.has_deer)):
            if not present:
                out.setdefault(name, []).append(run.path.name)
    return out
