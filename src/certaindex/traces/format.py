"""Recorded reasoning traces: a versioned file format, its reader and writer, and a recorder.

A trace set records, for every (problem, sample), the reasoning an engine wrote in chunks of exactly
``granularity`` (g) tokens, and the probe answer forked off at every chunk boundary. Because a
chain of thought with probes every ``m * g`` tokens sends exactly the requests whose answers are in
the trace, :class:`certaindex.traces.replay.ReplayEngine` can replay any such early-exit setting
offline, and calibration can try hundreds of settings without touching a model.

File format (gzip JSONL, ``.jsonl.gz``; plain ``.jsonl`` is read too). The first line is a header::

    {"format": "certaindex-traces", "version": 1, "model": ..., "engine": ..., "created": ...,
     "dataset": ..., "settings": {"granularity": 16, "budget": 384, "probe_suffix": ...,
     "probe_tokens": 20, "answer_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": 0,
     "samples": 1, "system_prompt": ..., "logprobs": 5, "confidence_window": 8}}

then one JSON object per (problem, sample); ``docs/traces.md`` documents every field. Readers
reject other versions: a change that old readers would misread bumps :data:`VERSION`.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX, DEFAULT_SYSTEM_PROMPT
from certaindex.core.validation import json_object_line
from certaindex.programs.cot import CoTConfig

__all__ = [
    "FORMAT",
    "VERSION",
    "Chunk",
    "FieldError",
    "FinalAnswer",
    "ProbeRecord",
    "TraceFormatError",
    "TraceHeader",
    "TraceRecord",
    "TraceSet",
    "TraceSettings",
    "TraceWriter",
    "parse_record",
    "read_traces",
    "write_traces",
]

FORMAT = "certaindex-traces"
VERSION = 1
# Samples of one problem get seeds this far apart, so their per-chunk seeds (seed + tokens so far,
# as solve_cot sends them) never collide for budgets below it.
SAMPLE_SEED_STRIDE = 1_000_003
FINISH_SOURCES = ("reasoning", "after-think", "budget-probe")
_RECORDED: Any = object()  # cot_config's default seed: the recorded one


class TraceFormatError(ValueError):
    """A trace file is malformed: bad JSON, wrong format or version, missing fields, truncated gzip."""


# --------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class TraceSettings:
    """How a trace set was recorded. Replay can serve exactly the settings these allow."""

    granularity: int  # g: reasoning tokens per chunk; probes are recorded at every chunk boundary
    budget: int  # most reasoning tokens per trace
    probe_suffix: str = DEFAULT_PROBE_SUFFIX
    probe_tokens: int = 20
    answer_tokens: int = 256  # room for the answer after a reasoning model closes </think>
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    samples: int = 1  # traces per problem (different seeds; only useful with temperature > 0)
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    logprobs: int | None = 5  # top-k logprobs asked for per token (entropy statistics); None: none
    confidence_window: int = 8  # tokens per sliding window of a chunk's lowest-window confidence

    def __post_init__(self) -> None:
        checks = [
            (_is_int(self.granularity) and self.granularity >= 1, f"granularity must be an int >= 1, got {self.granularity!r}"),
            (_is_int(self.budget) and self.budget >= 1, f"budget must be an int >= 1, got {self.budget!r}"),
            (isinstance(self.probe_suffix, str) and bool(self.probe_suffix.strip()), "probe_suffix must not be empty"),
            (_is_int(self.probe_tokens) and self.probe_tokens >= 1, f"probe_tokens must be an int >= 1, got {self.probe_tokens!r}"),
            (_is_int(self.answer_tokens) and self.answer_tokens >= 1, f"answer_tokens must be an int >= 1, got {self.answer_tokens!r}"),
            (_is_num(self.temperature) and self.temperature >= 0, f"temperature must be >= 0, got {self.temperature!r}"),
            (_is_num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (self.seed is None or _is_int(self.seed), f"seed must be an int or null, got {self.seed!r}"),
            (_is_int(self.samples) and self.samples >= 1, f"samples must be an int >= 1, got {self.samples!r}"),
            (self.system_prompt is None or isinstance(self.system_prompt, str), "system_prompt must be a string or null"),
            (self.logprobs is None or (_is_int(self.logprobs) and self.logprobs >= 1), f"logprobs must be an int >= 1 or null, got {self.logprobs!r}"),
            (_is_int(self.confidence_window) and self.confidence_window >= 1, f"confidence_window must be an int >= 1, got {self.confidence_window!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def sample_seed(self, sample: int) -> int | None:
        """The seed of sample ``sample`` of a problem (its CoTConfig seed)."""
        return None if self.seed is None else self.seed + sample * SAMPLE_SEED_STRIDE

    def cot_config(self, probe_interval: int | None = None, k: int = 3, budget: int | None = None,
                   early_exit: bool = True, seed: Any = _RECORDED) -> CoTConfig:
        """The :class:`CoTConfig` whose requests these traces answer (probe_interval a multiple of g)."""
        return CoTConfig(
            budget=self.budget if budget is None else budget,
            probe_interval=self.granularity if probe_interval is None else probe_interval,
            k=k,
            probe_tokens=self.probe_tokens,
            answer_tokens=self.answer_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed if seed is _RECORDED else seed,
            early_exit=early_exit,
            system_prompt=self.system_prompt,
            probe_suffix=self.probe_suffix,
        )


@dataclass(frozen=True)
class TraceHeader:
    model: str
    engine: str
    settings: TraceSettings
    created: str = ""
    dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "engine": self.engine,
            "created": self.created,
            "dataset": self.dataset,
            "settings": asdict(self.settings),
        }


@dataclass(frozen=True)
class ProbeRecord:
    """The probe forked at a chunk boundary (``prompt + reasoning so far + probe suffix``)."""

    at_tokens: int  # reasoning tokens before the probe
    text: str
    tokens: int
    finish_reason: str
    answer: str | None  # read with cot.read_probe_answer, as solve_cot reads it
    hesitant: bool
    entropy: float | None = None  # mean token entropy of the probe's tokens (nats), if logprobs
    confidence: float | None = None  # mean DeepConf token confidence of the probe's tokens


@dataclass(frozen=True)
class Chunk:
    """``tokens`` reasoning tokens (exactly g, except for the last chunk of a trace)."""

    text: str
    tokens: int
    finish_reason: str  # "length": the chunk filled g tokens (or the budget); else the model ended
    entropy: float | None = None  # mean token entropy of the chunk (nats)
    confidence: float | None = None  # mean DeepConf token confidence of the chunk
    lowest_window: float | None = None  # lowest sliding-window mean token confidence in the chunk
    probe: ProbeRecord | None = None  # the probe after this chunk; None when the chunk ended the reasoning


@dataclass(frozen=True)
class FinalAnswer:
    """The answer of full reasoning and the tokens it cost beyond the reasoning itself.

    ``source``: "reasoning" (the finished reasoning holds the answer; ``tokens`` 0), "after-think"
    (a reasoning model closed ``</think>`` and wrote ``text``), "budget-probe" (the budget ran out
    and the probe at the budget forced an answer; ``text``/``tokens`` are that probe's).
    """

    source: str
    answer: str | None
    text: str = ""
    tokens: int = 0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class TraceRecord:
    id: str
    sample: int
    seed: int | None
    question: str  # as sent to the model (stripped)
    gold: str
    prompt: str  # the rendered chat prompt
    prompt_tokens: int
    thinking: bool  # the prompt opened a <think> block (chunks stop at </think>)
    chunks: tuple[Chunk, ...]
    finish_reason: str  # of the last chunk
    stop: str  # "finished" (the model ended its reasoning) or "budget"
    final: FinalAnswer
    correct: bool  # the final answer equals the gold answer

    @property
    def reasoning(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def reasoning_tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)

    @property
    def full_tokens(self) -> int:
        """Every token full reasoning generates: the reasoning plus the answer or forced probe."""
        return self.reasoning_tokens + self.final.tokens

    def probes(self) -> list[ProbeRecord]:
        return [c.probe for c in self.chunks if c.probe is not None]

    def has_entropy(self) -> bool:
        return all(c.entropy is not None for c in self.chunks if c.tokens > 0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["chunks"] = [asdict(c) for c in self.chunks]
        data["reasoning_tokens"] = self.reasoning_tokens
        return data


@dataclass
class TraceSet:
    header: TraceHeader
    records: list[TraceRecord] = field(default_factory=list)
    path: str | None = None

    @property
    def settings(self) -> TraceSettings:
        return self.header.settings

    def __len__(self) -> int:
        return len(self.records)


# --------------------------------------------------------------------------------------- writing


class TraceWriter:
    """Writes a trace file record by record, flushing each, so progress survives a long recording.

    gzip when the name ends in ``.gz``. A recording killed midway leaves a truncated gzip file:
    :func:`read_traces` refuses it unless ``allow_truncated=True``, which keeps the whole records.
    """

    def __init__(self, path: str | os.PathLike[str], header: TraceHeader) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str]
        if self.path.name.endswith(".gz"):
            self._fh = io.TextIOWrapper(gzip.open(self.path, "wb"), encoding="utf-8", newline="\n")
        else:
            self._fh = self.path.open("w", encoding="utf-8", newline="\n")
        self.count = 0
        self._write_line(header.to_dict())

    def _write_line(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")
        self._fh.flush()

    def write(self, record: TraceRecord) -> None:
        self._write_line(record.to_dict())
        self.count += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_traces(path: str | os.PathLike[str], header: TraceHeader, records: Iterable[TraceRecord]) -> Path:
    with TraceWriter(path, header) as writer:
        for record in records:
            writer.write(record)
    return Path(path)


# --------------------------------------------------------------------------------------- reading


def read_traces(path: str | os.PathLike[str], allow_truncated: bool = False) -> TraceSet:
    """Read and validate a trace file. Raises :class:`TraceFormatError` naming the file and line."""
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise TraceFormatError(f"{label}: no such trace file")
    header: TraceHeader | None = None
    records: list[TraceRecord] = []
    seen: set[tuple[str, int]] = set()
    lineno = 0
    for lineno, line in _lines(path, label, allow_truncated):
        if not line.strip():
            continue
        obj = json_object_line(line, f"{label}:{lineno}", TraceFormatError, column=True)
        try:
            if header is None:
                header = _parse_header(obj)
                continue
            record = parse_record(obj, header.settings)
        except FieldError as exc:
            raise TraceFormatError(f"{label}:{lineno}: {exc}") from None
        key = (record.id, record.sample)
        if key in seen:
            raise TraceFormatError(f"{label}:{lineno}: duplicate record for id {record.id!r} sample {record.sample}")
        seen.add(key)
        records.append(record)
    if header is None:
        raise TraceFormatError(f"{label}: empty trace file (no header line)")
    return TraceSet(header=header, records=records, path=label)


def _lines(path: Path, label: str, allow_truncated: bool) -> Iterator[tuple[int, str]]:
    with path.open("rb") as raw:
        magic = raw.read(2)
    if magic != b"\x1f\x8b":
        with path.open("r", encoding="utf-8", errors="strict", newline="\n") as fh:
            try:
                for lineno, line in enumerate(fh, start=1):
                    yield lineno, line
            except UnicodeDecodeError as exc:
                raise TraceFormatError(f"{label}: not UTF-8 text ({exc.reason})") from None
        return
    lineno = 0
    with gzip.open(path, "rb") as fh:
        while True:
            try:
                line = fh.readline()
            except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
                if allow_truncated:
                    return
                what = "truncated" if isinstance(exc, EOFError) else "corrupt"
                raise TraceFormatError(
                    f"{label}:{lineno + 1}: {what} gzip file after line {lineno} ({exc}); was the recording "
                    "interrupted? read it with --allow-truncated (allow_truncated=True in Python) to keep the complete records"
                ) from None
            if not line:
                return
            lineno += 1
            if not line.endswith(b"\n") and allow_truncated:
                return  # a partial last line of an interrupted recording
            try:
                yield lineno, line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TraceFormatError(f"{label}:{lineno}: not UTF-8 text ({exc.reason})") from None


class FieldError(Exception):
    """One field of one line breaks the format; the message names the field, not the file or line:
    :func:`read_traces` adds those (as a :class:`TraceFormatError`), and a writer that checks a
    record before writing it (shadow traces) can skip the record instead."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _get(obj: dict, key: str, kind: str, where: str, optional: bool = False) -> Any:
    name = f"{where}{key}"
    if key not in obj:
        if optional:
            return None
        raise FieldError(f"missing field {name!r}")
    value = obj[key]
    if value is None and (optional or kind.endswith("?")):
        return None
    base = kind.rstrip("?")
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": _is_int,
        "num": _is_num,
        "bool": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, list),
        "dict": lambda v: isinstance(v, dict),
    }[base](value)
    if not ok:
        what = {"num": "a number", "int": "an int", "str": "a string", "bool": "true or false", "list": "a list", "dict": "an object"}[base]
        raise FieldError(f"field {name!r} must be {what}, got {value!r:.60}")
    if base == "int" and value < 0:
        raise FieldError(f"field {name!r} must be >= 0, got {value}")
    return value


def _parse_header(obj: dict) -> TraceHeader:
    if obj.get("format") != FORMAT:
        raise FieldError(f"not a certaindex trace file: the header's format is {obj.get('format')!r}, expected {FORMAT!r}")
    version = obj.get("version")
    if version != VERSION:
        raise FieldError(f"trace format version {version!r} is not supported (this certaindex reads version {VERSION})")
    raw = _get(obj, "settings", "dict", "header.")
    known = set(TraceSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise FieldError(f"unknown settings {', '.join(unknown)} in the header")
    for key in ("granularity", "budget"):
        _get(raw, key, "int", "settings.")
    try:
        settings = TraceSettings(**raw)
    except (TypeError, ValueError) as exc:
        raise FieldError(f"bad header settings: {exc}") from None
    return TraceHeader(
        model=_get(obj, "model", "str", "header."),
        engine=_get(obj, "engine", "str", "header."),
        settings=settings,
        created=_get(obj, "created", "str?", "header.", optional=True) or "",
        dataset=_get(obj, "dataset", "str?", "header.", optional=True),
    )


def _parse_probe(obj: Any, where: str) -> ProbeRecord:
    if not isinstance(obj, dict):
        raise FieldError(f"field {where.rstrip('.')!r} must be an object")
    return ProbeRecord(
        at_tokens=_get(obj, "at_tokens", "int", where),
        text=_get(obj, "text", "str", where),
        tokens=_get(obj, "tokens", "int", where),
        finish_reason=_get(obj, "finish_reason", "str", where),
        answer=_get(obj, "answer", "str?", where),
        hesitant=_get(obj, "hesitant", "bool", where),
        entropy=_get(obj, "entropy", "num?", where, optional=True),
        confidence=_get(obj, "confidence", "num?", where, optional=True),
    )


def parse_record(obj: dict, settings: TraceSettings) -> TraceRecord:
    """One record line's object, checked as the reader checks it against the header's ``settings``
    (chunks of exactly g tokens, a probe at every boundary, within the budget). Public so that a
    writer can refuse a record the reader would stop at. Raises :class:`FieldError`."""
    g = settings.granularity
    chunks_raw = _get(obj, "chunks", "list", "")
    if not chunks_raw:
        raise FieldError("field 'chunks' is empty: a trace has at least one chunk")
    chunks = []
    at = 0
    for i, raw in enumerate(chunks_raw):
        where = f"chunks[{i}]."
        if not isinstance(raw, dict):
            raise FieldError(f"field 'chunks[{i}]' must be an object")
        probe_raw = _get(raw, "probe", "dict?", where, optional=True)
        chunk = Chunk(
            text=_get(raw, "text", "str", where),
            tokens=_get(raw, "tokens", "int", where),
            finish_reason=_get(raw, "finish_reason", "str", where),
            entropy=_get(raw, "entropy", "num?", where, optional=True),
            confidence=_get(raw, "confidence", "num?", where, optional=True),
            lowest_window=_get(raw, "lowest_window", "num?", where, optional=True),
            probe=None if probe_raw is None else _parse_probe(probe_raw, f"{where}probe."),
        )
        last = i == len(chunks_raw) - 1
        if chunk.tokens > g or (not last and chunk.tokens != g):
            raise FieldError(f"chunk {i} has {chunk.tokens} tokens; every chunk but the last has exactly g={g}")
        if not last and chunk.finish_reason != "length":
            raise FieldError(f"chunk {i} ended with {chunk.finish_reason!r} but more chunks follow it")
        at += chunk.tokens
        if chunk.finish_reason == "length" and chunk.tokens > 0:
            if chunk.probe is None:
                raise FieldError(f"chunk {i} has no probe: every boundary the reasoning went on from has one")
            if chunk.probe.at_tokens != at:
                raise FieldError(f"chunk {i}'s probe is at {chunk.probe.at_tokens} tokens, its boundary at {at}")
        chunks.append(chunk)
    if at > settings.budget:
        raise FieldError(f"the reasoning has {at} tokens, more than the budget of {settings.budget}")
    if "reasoning_tokens" in obj and _get(obj, "reasoning_tokens", "int", "") != at:
        raise FieldError(f"field 'reasoning_tokens' is {obj['reasoning_tokens']} but the chunks hold {at} tokens")
    final_raw = _get(obj, "final", "dict", "")
    final = FinalAnswer(
        source=_get(final_raw, "source", "str", "final."),
        answer=_get(final_raw, "answer", "str?", "final."),
        text=_get(final_raw, "text", "str", "final."),
        tokens=_get(final_raw, "tokens", "int", "final."),
        finish_reason=_get(final_raw, "finish_reason", "str", "final."),
    )
    if final.source not in FINISH_SOURCES:
        raise FieldError(f"field 'final.source' must be one of {', '.join(FINISH_SOURCES)}, got {final.source!r}")
    stop = _get(obj, "stop", "str", "")
    if stop not in ("finished", "budget"):
        raise FieldError(f"field 'stop' must be 'finished' or 'budget', got {stop!r}")
    sample = _get(obj, "sample", "int", "")
    seed = obj.get("seed")
    if seed is not None and not _is_int(seed):
        raise FieldError(f"field 'seed' must be an int or null, got {seed!r}")
    if "seed" not in obj:
        raise FieldError("missing field 'seed'")
    return TraceRecord(
        id=_get(obj, "id", "str", ""),
        sample=sample,
        seed=seed,
        question=_get(obj, "question", "str", ""),
        gold=_get(obj, "gold", "str", ""),
        prompt=_get(obj, "prompt", "str", ""),
        prompt_tokens=_get(obj, "prompt_tokens", "int", ""),
        thinking=_get(obj, "thinking", "bool", ""),
        chunks=tuple(chunks),
        finish_reason=_get(obj, "finish_reason", "str", ""),
        stop=stop,
        final=final,
        correct=_get(obj, "correct", "bool", ""),
    )
