"""Grading recorded answers with the project's answer equivalence, once per distinct string, cached.

Two questions are asked of :mod:`certaindex.core.answers`:

* ``answers_equal(answer, target)`` for every distinct (answer, target) pair (probe, event, trial
  and final answers against the gold answer);
* ``canonical_answer(answer)`` for every distinct answer string, the key that decides whether two
  probes agree (equal keys imply ``answers_equal``; a pair that math_verify equates only
  numerically keeps distinct keys, which can only delay an early exit, never cause one).

Each call runs in a worker process under a timer (``timeout_s``); a worker stuck where the timer
cannot reach it is killed after twice that and its job counts as timed out, so a hung parse never
hangs the run. A timed-out pair grades as not equal and a timed-out key as no answer.

The cache is a versioned JSON file (default ``~/.cache/certaindex/grades.json``)::

    {"format": "certaindex-grades", "version": 1, "equivalence": "<hash of core/answers.py>",
     "equal": [[answer, target, true], ...], "keys": [[answer, key-or-null], ...],
     "timeouts": [...]}

A cache written under another equivalence (``core/answers.py`` changed) is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "GradeCache",
    "GradeStats",
    "default_cache_path",
    "equivalence_id",
    "run_jobs",
    "warm_project_grader",
]

CACHE_FORMAT = "certaindex-grades"
CACHE_VERSION = 2  # 2: spaced matrix answers (row breaks followed by a space) are graded right


class _TimedOut:
    """The result of a job that ran out of time; pickles by name, so it stays one object across processes."""

    def __reduce__(self) -> str:
        return "TIMEOUT"

    def __repr__(self) -> str:
        return "TIMEOUT"


TIMEOUT = _TimedOut()

Job = tuple[str, str, str]  # ("eq", answer, target) or ("key", answer, "")


@lru_cache(maxsize=1)
def equivalence_id() -> str:
    """A hash of the equivalence's source: a cache built under other rules is not reused."""
    from certaindex.core import answers

    return hashlib.sha256(inspect.getsource(answers).encode()).hexdigest()[:16]


def default_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "certaindex" / "grades.json"


def project_grader(job: Job) -> Any:
    """The project's equivalence: ``answers_equal`` for "eq" jobs, ``canonical_answer`` for "key"."""
    from certaindex.core.answers import answers_equal, canonical_answer

    kind, a, b = job
    return bool(answers_equal(a, b)) if kind == "eq" else canonical_answer(a)


# ------------------------------------------------------------------------------ worker pool


class _Timeout(BaseException):
    """Raised by the worker's timer; a BaseException so graders' ``except Exception`` cannot eat it."""


_GRADER: Callable[[Job], Any] = project_grader
_TIMEOUT_S: float = 5.0


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def _init_worker(grader: Callable[[Job], Any], timeout_s: float) -> None:
    global _GRADER, _TIMEOUT_S
    _GRADER, _TIMEOUT_S = grader, timeout_s
    signal.signal(signal.SIGALRM, _on_alarm)


def _work(job: Job) -> tuple[Job, Any]:
    signal.setitimer(signal.ITIMER_REAL, _TIMEOUT_S)
    try:
        return job, _GRADER(job)
    except _Timeout:
        return job, TIMEOUT
    except Exception:  # noqa: BLE001 - an answer the equivalence cannot handle grades as not equal / no key
        return job, False if job[0] == "eq" else None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def warm_project_grader() -> None:
    """Import math_verify and sympy and run each path once, in the parent before forking: a worker
    then never spends its timer on imports (an import cut short by the timer breaks the worker)."""
    from certaindex.core.answers import answers_equal, canonical_answer

    answers_equal("\\frac{1}{2}", "0.5")
    canonical_answer("x^2 + 2x + 1")


@dataclass
class _Worker:
    """One grading process and the parent's end of its pipe; ``job`` is what it is working on."""

    process: Any
    conn: Any
    job: Job | None = None
    deadline: float = 0.0


def _serve(conn: Any, grader: Callable[[Job], Any], timeout_s: float) -> None:
    """A worker's main loop: grade each job the parent sends until the pipe closes."""
    _init_worker(grader, timeout_s)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_work(job))


def _start(ctx: Any, grader: Callable[[Job], Any], timeout_s: float) -> _Worker:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(child, grader, timeout_s), daemon=True)
    process.start()
    child.close()
    return _Worker(process, parent)


def _stop(worker: _Worker) -> None:
    """Kill, never ask: a worker that ran out of time may not be listening."""
    worker.process.kill()
    worker.process.join(timeout=5)
    worker.conn.close()


_WORKING = object()  # a worker with no answer yet (a grader's own answer may be None: no key)


def _answer(worker: _Worker, ready: list[Any], now: float) -> Any:
    """The worker's answer if it has one, TIMEOUT if it died or its time is up, else _WORKING."""
    if worker.conn in ready:
        try:
            return worker.conn.recv()[1]
        except (EOFError, OSError):  # the process died mid-job (a crash in C): as a timeout
            return TIMEOUT
    return TIMEOUT if now >= worker.deadline else _WORKING


def run_jobs(jobs: Sequence[Job], grader: Callable[[Job], Any] = project_grader, timeout_s: float = 5.0,
             workers: int = 2, on_result: Callable[[Job, Any], None] | None = None) -> dict[Job, Any]:
    """Run ``grader`` on every job in worker processes, each call bounded by ``timeout_s``.

    The timer interrupts Python code; a worker that does not answer within ``2 * timeout_s + 1`` s
    after its turn came (stuck in C, or ignoring the timer), or that dies, is killed and its job
    counts as :data:`TIMEOUT`. A worker whose call timed out is never reused (an interrupted call can
    leave its caches half-written): the jobs after it run in a fresh process. Each worker has its own
    pipe and every wait here has a deadline, so no worker, however it fails, can hang the parent (a
    ``multiprocessing.Pool`` can: its terminate waits on a queue lock a killed worker may hold)."""
    results: dict[Job, Any] = {}
    queue = deque(dict.fromkeys(jobs))
    hard = 2 * timeout_s + 1
    ctx = mp.get_context("fork")
    if grader is project_grader and queue:
        warm_project_grader()
    live: list[_Worker] = []
    try:
        while queue or any(w.job is not None for w in live):
            while queue and len(live) < max(1, workers):
                live.append(_start(ctx, grader, timeout_s))
            for worker in [w for w in live if w.job is None]:
                if not queue:
                    break
                job = queue.popleft()
                try:
                    worker.conn.send(job)
                except (BrokenPipeError, OSError):  # died while idle: a fresh one takes the job
                    queue.appendleft(job)
                    _stop(worker)
                    live.remove(worker)
                    continue
                worker.job, worker.deadline = job, time.monotonic() + hard
            busy = [w for w in live if w.job is not None]
            if not busy:
                continue
            ready = wait([w.conn for w in busy], timeout=max(0.0, min(w.deadline for w in busy) - time.monotonic()))
            now = time.monotonic()
            for worker in busy:
                value = _answer(worker, ready, now)
                if value is _WORKING:
                    continue
                job, worker.job = worker.job, None
                results[job] = value
                if on_result:
                    on_result(job, value)
                if value is TIMEOUT:
                    _stop(worker)
                    live.remove(worker)
    finally:
        for worker in live:
            _stop(worker)
    return results


# ------------------------------------------------------------------------------------ cache


@dataclass
class GradeStats:
    graded: int = 0  # jobs run now (cache misses)
    cached: int = 0  # jobs answered by the cache
    timeouts: int = 0


@dataclass
class GradeCache:
    """Grades of (answer, target) pairs and agreement keys of answers, with a JSON file behind."""

    path: Path | None = None
    equal: dict[tuple[str, str], bool] = field(default_factory=dict)
    keys: dict[str, str | None] = field(default_factory=dict)
    timeouts: list[str] = field(default_factory=list)
    note: str | None = None  # why a file on disk was not used

    @classmethod
    def load(cls, path: str | Path | None = None) -> "GradeCache":
        """The cache at ``path`` (default :func:`default_cache_path`); empty if absent or stale."""
        path = Path(path) if path is not None else default_cache_path()
        cache = cls(path)
        if not path.exists():
            return cache
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            cache.note = f"grade cache {path} unreadable ({exc}); regrading"
            return cache
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not a certaindex grade cache (no \"format\": \"{CACHE_FORMAT}\")")
        if data.get("version") != CACHE_VERSION or data.get("equivalence") != equivalence_id():
            cache.note = f"grade cache {path} was built under other answer rules; regrading"
            return cache
        cache.merge(data)
        return cache

    def merge(self, data: dict[str, Any]) -> None:
        """Add the entries of a cache file's JSON object (same equivalence assumed)."""
        for a, b, v in data.get("equal", []):
            self.equal[(a, b)] = bool(v)
        for a, k in data.get("keys", []):
            self.keys[a] = k
        self.timeouts.extend(data.get("timeouts", []))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "equivalence": equivalence_id(),
            "equal": [[a, b, v] for (a, b), v in self.equal.items()],
            "keys": [[a, k] for a, k in self.keys.items()],
            "timeouts": self.timeouts,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write atomically (a temporary file renamed into place)."""
        path = Path(path) if path is not None else (self.path or default_cache_path())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def missing(self, pairs: Iterable[tuple[str, str]], answers: Iterable[str]) -> list[Job]:
        jobs: list[Job] = [("eq", a, t) for a, t in dict.fromkeys(pairs) if (a, t) not in self.equal]
        jobs += [("key", a, "") for a in dict.fromkeys(answers) if a not in self.keys]
        return jobs

    def grade(self, pairs: Iterable[tuple[str, str]], answers: Iterable[str], *,
              grader: Callable[[Job], Any] = project_grader, timeout_s: float = 5.0, workers: int = 2,
              on_progress: Callable[[int, int], None] | None = None) -> GradeStats:
        """Grade what the cache lacks among ``pairs`` (answer, target) and ``answers`` (keys)."""
        pairs, answers = list(pairs), list(answers)
        jobs = self.missing(pairs, answers)
        stats = GradeStats(cached=len(set(pairs)) + len(set(answers)) - len(jobs))
        if not jobs:
            return stats
        done = 0

        def record(job: Job, value: Any) -> None:
            nonlocal done
            kind, a, b = job
            if value is TIMEOUT:
                stats.timeouts += 1
                self.timeouts.append(f"{kind}: {a[:200]!r} vs {b[:200]!r}" if kind == "eq" else f"key: {a[:200]!r}")
                value = False if kind == "eq" else None
            if kind == "eq":
                self.equal[(a, b)] = bool(value)
            else:
                self.keys[a] = value
            done += 1
            if on_progress is not None:
                on_progress(done, len(jobs))

        run_jobs(jobs, grader, timeout_s, workers, record)
        stats.graded = len(jobs)
        return stats

    def correct(self, answer: str | None, target: str) -> bool:
        """Whether ``answer`` equals ``target`` (graded before: a KeyError otherwise)."""
        return answer is not None and self.equal[(answer, target)]

    def key(self, answer: str | None) -> str | None:
        return None if answer is None else self.keys[answer]
