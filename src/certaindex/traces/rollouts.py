"""Reader for Governor's ``rollouts8`` set: several sampled rollouts of one problem, each probed
on a fixed token grid, as the input of a self-consistency replay.

One JSON object a line (gzip or plain): ``problem_id``, ``rollout_id``, ``dataset``, ``target``,
``tokens_used``, ``finished_naturally``, ``final_answer``, ``final_correct`` and ``probes``, a list of
``{probe_id, token_position, probe_text, answer}`` (or that list written as a Python literal string).
Numbers and booleans may arrive as strings (``'2903'``, ``'True'``) and are converted here. A line that
cannot be read stops the reader with one :class:`RolloutsError` naming the file and the line.

Also here, because the replay must not call a grader in its inner loop: :class:`AnswerBook`, which
maps every distinct answer string of a problem to one representative of its class of equivalent
answers (``certaindex.core.answers.answers_equal``) and grades each representative once, each
comparison bounded by a timeout.
"""

from __future__ import annotations

import ast
import gzip
import re
import threading
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from certaindex.core.answers import answers_equal, canonical_answer, is_hesitant
from certaindex.core.validation import json_object_line

__all__ = [
    "CHARS_PER_TOKEN",
    "PROBE_SUFFIX",
    "PROBE_SUFFIX_TOKENS",
    "AnswerBook",
    "Grader",
    "Problem",
    "Probe",
    "Rollout",
    "RolloutsError",
    "group_problems",
    "probe_token_counter",
    "read_rollouts",
]

# The probe suffix of the Governor collection (its README): appended to the reasoning so far, then
# at most a few tokens are decoded greedily. With prefix caching only this suffix is prefilled.
PROBE_SUFFIX = "**Final Answer**\n\n\\[ \\boxed{"
PROBE_SUFFIX_TOKENS = 8  # len(quicktok qwen3 encode(PROBE_SUFFIX)), measured
# Measured on all 25,134 probe texts of rollouts8 with quicktok's qwen3 vocabulary: 2.52 characters a
# token. The fallback when quicktok is not installed.
CHARS_PER_TOKEN = 2.52


_RATIONAL = re.compile(r"-?\d+(?:/\d+)?")  # how canonical_answer prints an exact number


class RolloutsError(ValueError):
    """A rollouts file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Probe:
    """One probe of a rollout: after ``position`` reasoning tokens, the answer it gave."""

    position: int
    text: str
    answer: str | None
    hesitant: bool  # the probe's text holds a hesitation word (Dynasor's test)
    decode_tokens: int  # tokens the probe generated (see probe_token_counter)
    prefill_tokens: int = 0  # new prompt tokens it prefilled: the suffix (the reasoning is cached)


@dataclass(frozen=True)
class Rollout:
    dataset: str
    problem_id: int
    rollout_id: int
    target: str
    tokens_used: int
    finished_naturally: bool
    final_answer: str | None
    source_correct: bool  # the source's own grading, kept for comparison only
    probes: tuple[Probe, ...]

    @property
    def key(self) -> tuple[str, int]:
        return (self.dataset, self.problem_id)


@dataclass(frozen=True)
class Problem:
    dataset: str
    problem_id: int
    target: str
    rollouts: tuple[Rollout, ...]

    @property
    def key(self) -> tuple[str, int]:
        return (self.dataset, self.problem_id)


# ------------------------------------------------------------------------------- probe token cost


def probe_token_counter(max_probe_tokens: int = 10) -> tuple[Callable[[str], int], str]:
    """How many tokens one probe decoded, from its text, and a line saying how that was counted.

    rollouts8's probe texts are at most 10 tokens long, so a shorter one stopped on an end token:
    that decode step counts too. The text's length comes from the qwen3 vocabulary of ``quicktok``
    when installed (exact for R1-Distill-Qwen), else from 2.52 characters a token. Besides, a probe
    prefills :data:`PROBE_SUFFIX` (8 tokens; the reasoning before it is in the prefix cache): the
    reader records that as ``Probe.prefill_tokens``."""
    try:
        import quicktok

        encoding = quicktok.get_encoding("qwen3")

        def decoded(text: str) -> int:
            return len(encoding.encode(text, allowed_special="all"))

        how = "quicktok qwen3 token count of the probe text"
    except Exception:  # noqa: BLE001 - quicktok missing or its vocabulary unreadable: the measured ratio
        def decoded(text: str) -> int:
            return max(1, round(len(text) / CHARS_PER_TOKEN))

        how = f"probe text length / {CHARS_PER_TOKEN} characters a token (quicktok not installed)"

    def cost(text: str) -> int:
        n = decoded(text)
        stop = 1 if n < max_probe_tokens else 0
        return min(n, max_probe_tokens) + stop

    return cost, f"decoded tokens = {how}, +1 end token when below the {max_probe_tokens}-token cap"


# ------------------------------------------------------------------------------------------ reader


class _LineError(Exception):
    pass


def _int(record: dict, name: str) -> int:
    value = record.get(name)
    if isinstance(value, bool):
        raise _LineError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _LineError(f"{name} must be an integer, got {value!r}")


def _bool(record: dict, name: str) -> bool:
    value = record.get(name)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip() in ("True", "False", "true", "false"):
        return value.strip().lower() == "true"
    raise _LineError(f"{name} must be True or False, got {value!r}")


def _str(record: dict, name: str, required: bool = True) -> str | None:
    value = record.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _LineError(f"{name} must be a string, got {value!r}")
    return str(value)


def _probes(record: dict, cost: Callable[[str], int]) -> tuple[Probe, ...]:
    raw = record.get("probes")
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise _LineError("probes is a string but not a Python literal list") from None
    if not isinstance(raw, list):
        raise _LineError(f"probes must be a list, got {type(raw).__name__}")
    probes = []
    last = 0
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _LineError(f"probes[{i}] must be an object")
        position = _int(item, "token_position")
        if position <= last:
            raise _LineError(f"probes[{i}].token_position {position} does not increase")
        last = position
        text = _str(item, "probe_text", required=False) or ""
        answer = _str(item, "answer", required=False)
        answer = answer if answer is not None and answer.strip() else None
        probes.append(Probe(position, text, answer, is_hesitant(text), cost(text), PROBE_SUFFIX_TOKENS))
    return tuple(probes)


def _rollout(record: Any, cost: Callable[[str], int]) -> Rollout:
    if not isinstance(record, dict):
        raise _LineError(f"expected a JSON object, got {type(record).__name__}")
    for name in ("problem_id", "rollout_id", "dataset", "target", "tokens_used", "probes"):
        if name not in record:
            raise _LineError(f"missing field {name!r}")
    tokens = _int(record, "tokens_used")
    if tokens < 0:
        raise _LineError(f"tokens_used must be >= 0, got {tokens}")
    final = _str(record, "final_answer", required=False)
    probes = _probes(record, cost)
    if probes and probes[-1].position > tokens:
        raise _LineError(f"a probe at token {probes[-1].position} lies beyond tokens_used {tokens}")
    return Rollout(
        dataset=_str(record, "dataset") or "",
        problem_id=_int(record, "problem_id"),
        rollout_id=_int(record, "rollout_id"),
        target=_str(record, "target") or "",
        tokens_used=tokens,
        finished_naturally=_bool(record, "finished_naturally") if "finished_naturally" in record else True,
        final_answer=final if final is not None and final.strip() else None,
        source_correct=_bool(record, "final_correct") if "final_correct" in record else False,
        probes=probes,
    )


def read_rollouts(path: str | Path, probe_cost: Callable[[str], int] | None = None) -> list[Rollout]:
    """Every rollout of a ``trajectories.jsonl[.gz]`` file; blank lines are skipped.
    ``probe_cost``: tokens one probe decoded, from its text (default :func:`probe_token_counter`)."""
    path = Path(path)
    if not path.is_file():
        raise RolloutsError(f"{path}: no such file")
    cost = probe_cost or probe_token_counter()[0]
    opener = gzip.open if path.suffix == ".gz" else open
    rollouts: list[Rollout] = []
    seen: set[tuple[str, int, int]] = set()
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                record = json_object_line(line, f"{path}:{lineno}", RolloutsError)
                try:
                    rollout = _rollout(record, cost)
                except _LineError as exc:
                    raise RolloutsError(f"{path}:{lineno}: {exc}") from None
                ident = (rollout.dataset, rollout.problem_id, rollout.rollout_id)
                if ident in seen:
                    raise RolloutsError(f"{path}:{lineno}: rollout {ident} appears twice")
                seen.add(ident)
                rollouts.append(rollout)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise RolloutsError(f"{path}:{lineno + 1}: cannot read ({exc})") from None
    if not rollouts:
        raise RolloutsError(f"{path}: holds no rollouts")
    return rollouts


def group_problems(rollouts: Iterable[Rollout]) -> list[Problem]:
    """Rollouts grouped by (dataset, problem_id), in rollout_id order; problems sorted by key."""
    groups: dict[tuple[str, int], list[Rollout]] = defaultdict(list)
    for rollout in rollouts:
        groups[rollout.key].append(rollout)
    problems = []
    for (dataset, problem_id), members in sorted(groups.items()):
        targets = {r.target for r in members}
        if len(targets) > 1:
            raise RolloutsError(f"problem {dataset}/{problem_id} has rollouts with different targets {sorted(targets)}")
        members.sort(key=lambda r: r.rollout_id)
        problems.append(Problem(dataset, problem_id, members[0].target, tuple(members)))
    return problems


# ------------------------------------------------------------------------------------------ grading


class Grader:
    """``answers_equal`` with a cache per (a, b) pair and a time bound per call.

    answers.py keeps inputs that could hang sympy away from it, but nothing else bounds a call; here
    each new pair runs in a daemon thread and counts as "not equal" when it is not done within
    ``timeout_s`` (``timeouts`` counts such calls, so a report can say so). ``canonical_answer`` keys
    are a fast path: equal keys are equal answers, and two different exact numbers are different."""

    def __init__(
        self,
        timeout_s: float = 10.0,
        equal: Callable[[str | None, str | None], bool] = answers_equal,
        canonical: Callable[[str], str | None] | None = canonical_answer,
    ) -> None:
        """``canonical``: a key with "equal keys imply equal answers" for ``equal`` (None: no keys)."""
        self.timeout_s = timeout_s
        self._equal = equal
        self._canonical = canonical
        self._cache: dict[tuple[str, str], bool] = {}
        self._keys: dict[str, str | None] = {}
        self.calls = 0
        self.timeouts = 0

    def equal(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        key = (a, b) if a <= b else (b, a)
        if key not in self._cache:
            self._cache[key] = self._bounded(*key)
        return self._cache[key]

    def key(self, answer: str) -> str | None:
        """``canonical_answer``'s key (cached, bounded like a comparison; None if it timed out)."""
        if self._canonical is None:
            return None
        if answer not in self._keys:
            canonical = self._canonical
            found = self._run(lambda: canonical(answer))
            self._keys[answer] = found[0] if found else None
        return self._keys[answer]

    def maybe_equal(self, a: str, b: str) -> bool:
        """False when both answers are plain numbers with different keys: exact rationals that
        differ (what ``answers_equal`` concludes too), so no comparison is needed."""
        ka, kb = self.key(a), self.key(b)
        if ka is None or kb is None:
            return True
        return not (_RATIONAL.fullmatch(ka) and _RATIONAL.fullmatch(kb) and ka != kb)

    def _run(self, work: Callable[[], Any]) -> list:
        """``work()`` in a daemon thread; [result], or [] when it took longer than the timeout."""
        result: list = []

        def target() -> None:
            try:
                result.append(work())
            except Exception:  # noqa: BLE001 - treated like an incomparable answer
                result.append(None)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if not result:
            self.timeouts += 1
        return result

    def _bounded(self, a: str, b: str) -> bool:
        self.calls += 1
        found = self._run(lambda: bool(self._equal(a, b)))
        return bool(found and found[0])


class AnswerBook:
    """The answers of one problem in classes of equivalent answers, each class graded once.

    ``rep(answer)`` is the class representative (the first answer seen of the class; None stays
    None), so a replay can vote on representatives and grade with a dictionary lookup. Answers join
    the first class whose representative they equal (the greedy clustering of
    ``certaindex.core.signals.cluster_answers``)."""

    def __init__(self, target: str, answers: Sequence[str | None], grader: Grader) -> None:
        self.target = target
        self._rep: dict[str, str] = {}
        self.reps: list[str] = []
        by_key: dict[str, str] = {}  # canonical key -> representative: equal keys are equal answers
        for answer in answers:
            if answer is None or answer in self._rep:
                continue
            key = grader.key(answer)
            if key is not None and key in by_key:
                self._rep[answer] = by_key[key]
                continue
            for rep in self.reps:
                if grader.maybe_equal(rep, answer) and grader.equal(rep, answer):
                    self._rep[answer] = rep
                    break
            else:
                self._rep[answer] = answer
                self.reps.append(answer)
            if key is not None:
                by_key.setdefault(key, self._rep[answer])
        self._correct = {rep: grader.equal(rep, target) for rep in self.reps}

    def rep(self, answer: str | None) -> str | None:
        if answer is None:
            return None
        try:
            return self._rep[answer]
        except KeyError:
            raise KeyError(f"answer {answer!r} was not in this problem's book") from None

    def correct(self, answer: str | None) -> bool:
        rep = self.rep(answer)
        return rep is not None and self._correct[rep]

    @classmethod
    def for_problem(cls, problem: Problem, grader: Grader) -> "AnswerBook":
        """Final answers first (they found the classes the vote sees most), then every probe answer."""
        answers: list[str | None] = [r.final_answer for r in problem.rollouts]
        answers += [p.answer for r in problem.rollouts for p in r.probes]
        return cls(problem.target, answers, grader)
