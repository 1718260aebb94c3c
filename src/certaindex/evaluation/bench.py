"""Side-by-side evaluation: a program against its baseline on the same problems and engine.

``cot`` compares early-exit chain of thought with full reasoning; every parallel program
(``sc-early``, ``sc-anytime``, ``deepconf``, ``first-finish``) is compared with fixed-N
self-consistency. Problems run one after another with the modes interleaved, so machine noise hits
every mode alike.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

from certaindex.core.answers import answers_equal
from certaindex.core.datasets import Problem
from certaindex.engines.base import Engine
from certaindex.programs.cot import CoTConfig, solve_cot
from certaindex.programs.self_consistency import NoAnswerError, SCConfig, first_finish, self_consistency


@dataclass(frozen=True)
class Outcome:
    """What one program run cost and answered, in the terms every program shares."""

    answer: str | None
    total_tokens: int  # every generated token, probes and cancelled samples included
    samples: int
    stop_reason: str
    probe_tokens: int = 0


ProgramFn = Callable[[Engine, str], Awaitable[Outcome]]


def cot_program(config: CoTConfig) -> ProgramFn:
    async def run(engine: Engine, question: str) -> Outcome:
        r = await solve_cot(engine, question, config)
        return Outcome(r.answer, r.total_tokens, 1, r.stop_reason, r.probe_tokens)

    return run


def sc_program(config: SCConfig) -> ProgramFn:
    async def run(engine: Engine, question: str) -> Outcome:
        try:
            r = await self_consistency(engine, question, config)
        except NoAnswerError as exc:  # every sample spent, none answered: a wrong answer at full cost
            return Outcome(None, exc.total_tokens, exc.samples_used, "no-answer")
        return Outcome(r.answer, r.total_tokens, r.samples_used, r.stop_reason)

    return run


def deepconf_program(config) -> ProgramFn:
    from certaindex.programs.deepconf import deepconf

    async def run(engine: Engine, question: str) -> Outcome:
        try:
            r = await deepconf(engine, question, config)
        except NoAnswerError as exc:
            return Outcome(None, exc.total_tokens, exc.samples_used, "no-answer")
        return Outcome(r.answer, r.total_tokens, r.samples_used, r.stop_reason)

    return run


def bon_program(sc: SCConfig) -> ProgramFn:
    """Best-of-N ranked by the policy model's own step confidence (no external PRM needed)."""
    from certaindex.programs.search import SearchConfig, SelfConfidenceScorer, best_of_n

    config = SearchConfig(width=sc.n, max_tokens=sc.max_tokens, temperature=sc.temperature, top_p=sc.top_p, seed=sc.seed)

    async def run(engine: Engine, question: str) -> Outcome:
        try:
            r = await best_of_n(engine, question, config, scorer=SelfConfidenceScorer())
        except NoAnswerError as exc:
            return Outcome(None, exc.total_tokens, exc.samples_used, "no-answer")
        return Outcome(r.answer, r.total_tokens, len(r.finished), r.stop_reason)

    return run


def first_finish_program(n: int, config: SCConfig) -> ProgramFn:
    async def run(engine: Engine, question: str) -> Outcome:
        r = await first_finish(engine, question, n=n, config=config)
        return Outcome(r.answer, r.total_tokens, r.samples_started, "first-finished")

    return run


def programs_for(name: str, cot: CoTConfig, sc: SCConfig, deepconf_config=None) -> dict[str, ProgramFn]:
    """The modes to compare for ``--program NAME``: the baseline first."""
    fixed = {"sc (fixed N)": sc_program(dataclasses.replace(sc, rule="fixed"))}
    table: dict[str, Callable[[], dict[str, ProgramFn]]] = {
        "cot": lambda: {
            "full reasoning": cot_program(dataclasses.replace(cot, early_exit=False)),
            "early exit": cot_program(dataclasses.replace(cot, early_exit=True)),
        },
        "sc": lambda: fixed,
        "sc-early": lambda: {**fixed, "sc-early (entropy)": sc_program(dataclasses.replace(sc, rule="entropy"))},
        "sc-anytime": lambda: {**fixed, "sc-anytime": sc_program(dataclasses.replace(sc, rule="anytime"))},
        "deepconf": lambda: {**fixed, "deepconf (online)": deepconf_program(deepconf_config)},
        "first-finish": lambda: {**fixed, "first-finish": first_finish_program(sc.n, sc)},
        "bon": lambda: {**fixed, "best-of-N (self-confidence)": bon_program(sc)},
    }
    if name not in table:
        raise ValueError(f"unknown program {name!r}: use one of {', '.join(sorted(table))}")
    return table[name]()


PROGRAM_NAMES = ("cot", "sc", "sc-early", "sc-anytime", "deepconf", "bon", "first-finish")
LOGPROB_PROGRAMS = ("deepconf", "bon")


@dataclass
class ModeSummary:
    mode: str
    n: int
    correct: int
    answered: int
    mean_total_tokens: float
    mean_samples: float
    mean_probe_tokens: float
    wall_s: float
    stop_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class BenchReport:
    summaries: dict[str, ModeSummary]
    records: list[dict]

    @property
    def baseline(self) -> str:
        return next(iter(self.summaries))

    def saving(self, mode: str) -> float:
        """Fraction of the baseline's tokens (probes included) that ``mode`` did not spend."""
        base = self.summaries[self.baseline].mean_total_tokens
        return 1.0 - self.summaries[mode].mean_total_tokens / base if base else 0.0

    def same_answer_rate(self, mode: str) -> float:
        """How often ``mode`` gave the baseline's answer (correct or not)."""
        pairs = [(r["modes"][mode]["answer"], r["modes"][self.baseline]["answer"]) for r in self.records]
        agree = sum(1 for a, b in pairs if (a is None and b is None) or answers_equal(a, b))
        return agree / len(pairs) if pairs else 0.0


async def run_bench(
    engine: Engine,
    problems: Iterable[Problem],
    modes: dict[str, ProgramFn],
    on_result: Callable[[str, Problem, Outcome], None] | None = None,
) -> BenchReport:
    """Run every mode on every problem, interleaved."""
    outcomes: dict[str, list[tuple[Problem, Outcome, float]]] = {m: [] for m in modes}
    records = []
    for problem in problems:
        record: dict = {"id": problem.id, "gold": problem.answer, "modes": {}}
        for mode, program in modes.items():
            started = time.perf_counter()
            outcome = await program(engine, problem.question)
            elapsed = time.perf_counter() - started
            outcomes[mode].append((problem, outcome, elapsed))
            record["modes"][mode] = {
                **dataclasses.asdict(outcome),
                "correct": answers_equal(outcome.answer, problem.answer),
                "wall_s": round(elapsed, 4),
            }
            if on_result:
                on_result(mode, problem, outcome)
        records.append(record)
    return BenchReport({mode: _summarise(mode, rows) for mode, rows in outcomes.items()}, records)


def _summarise(mode: str, rows: list[tuple[Problem, Outcome, float]]) -> ModeSummary:
    reasons: dict[str, int] = {}
    for _, outcome, _ in rows:
        reasons[outcome.stop_reason] = reasons.get(outcome.stop_reason, 0) + 1

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    return ModeSummary(
        mode=mode,
        n=len(rows),
        correct=sum(1 for p, o, _ in rows if answers_equal(o.answer, p.answer)),
        answered=sum(1 for _, o, _ in rows if o.answer is not None),
        mean_total_tokens=mean([o.total_tokens for _, o, _ in rows]),
        mean_samples=mean([o.samples for _, o, _ in rows]),
        mean_probe_tokens=mean([o.probe_tokens for _, o, _ in rows]),
        wall_s=sum(t for _, _, t in rows),
        stop_reasons=reasons,
    )
