"""One exit policy: observations in, decisions out (pure: no engine, no I/O).

Why: the early-exit decision used to be written once per caller (the live program, the trace
replay, the simulator's plans, self-calibration). Here each rule is one object that every caller
feeds the same observations, in position order, so a replay of a recorded run and a live run of
the same stream decide alike by construction.

An observation is an :class:`~certaindex.core.exit_score.Obs`: its position (reasoning tokens),
its source (``grid`` or ``event`` probe, ``trial`` at a "Wait", a ``box`` the model wrote), the
answer read, whether the probe hesitated, what it cost and a trial's confidence.
:meth:`ExitPolicy.observe` takes one or several (a decision point may read boxes and a probe) and
returns a :class:`Decision`: exit or not, the answer to submit, the observation that decided and the
certaindex the scheduler hears. Observations after the one that exits are not read.

Rules: :class:`Dynasor` (the last ``k`` probes agree and none hesitates), :class:`Deer` (a trial's
confidence reaches a threshold) and :class:`ScoreRule` (a profile's fitted certainty score, through
:class:`~certaindex.core.exit_score.LiveScore`). :func:`replay` runs a policy over a recorded
stream and says what the observations up to the exit cost.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Protocol, Sequence

from certaindex.core.exit_score import LiveScore, Obs, TextMarkers
from certaindex.core.signals import ProbeObservation, probe_certaindex

__all__ = ["Decision", "Deer", "Dynasor", "ExitPolicy", "Observation", "ScoreRule", "key_equal", "replay"]

Observation = Obs
Equal = Callable[[str, str], bool]
KeyFn = Callable[[Optional[str]], Optional[Hashable]]


@dataclass(frozen=True)
class Decision:
    """What a policy decided after its latest observations."""

    exit: bool
    answer: str | None = None  # the answer to submit (when exiting)
    at: Obs | None = None  # the observation that decided the exit
    certaindex: float = 0.0  # the certainty reported after the latest observation, in [0, 1]


class ExitPolicy(Protocol):
    def observe(self, *observations: Obs) -> Decision:
        """Read observations in position order; the decision after them (the first exit, if any)."""
        ...


def key_equal(key: KeyFn) -> Equal:
    """Agreement by equal keys (a cache of :func:`~certaindex.core.answers.canonical_answer`): an
    answer whose key is None agrees with nothing."""

    def equal(a: str, b: str) -> bool:
        ka = key(a)
        return ka is not None and ka == key(b)

    return equal


class Dynasor:
    """Dynasor-CoT's rule: exit once the last ``k`` probes (``grid`` or ``event``) gave answers that
    agree with the latest and none hesitated; submit the latest. The run is
    :func:`certaindex.core.signals.probe_certaindex`'s (each earlier probe compared to the latest as
    ``equal(latest, earlier)``); an answer the equivalence cannot read (empty, or not equal to itself)
    counts as no answer. Other sources (boxes, trials) are not read. The certaindex is the agreeing
    run over ``k``, capped at 1; the rule exits when it reaches 1."""

    def __init__(self, k: int, equal: Equal) -> None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k = int(k)
        self.equal = equal
        self.probes: list[ProbeObservation] = []
        self.last = Decision(False)

    def _answer(self, o: Obs) -> str | None:
        a = o.answer
        return a if a is not None and a.strip() != "" and self.equal(a, a) else None

    def observe(self, *observations: Obs) -> Decision:
        for o in observations:
            if o.src not in ("grid", "event"):
                continue
            self.probes.append(ProbeObservation(self._answer(o), not o.certain))
            cdx = probe_certaindex(self.probes, self.k, self.equal)
            go = cdx >= 1.0
            self.last = Decision(go, o.answer if go else None, o if go else None, cdx)
            if go:
                break
        return self.last


class Deer:
    """DEER: exit at the first ``trial`` whose answer exists and whose confidence reaches
    ``threshold``; submit the trial's answer. Other sources are not read; the certaindex is the
    latest trial's confidence."""

    def __init__(self, threshold: float) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"DEER's threshold must be in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.last = Decision(False)

    def observe(self, *observations: Obs) -> Decision:
        for o in observations:
            if o.src != "trial":
                continue
            go = o.answer is not None and o.confidence >= self.threshold
            self.last = Decision(go, o.answer if go else None, o if go else None, min(1.0, max(0.0, o.confidence)))
            if go:
                break
        return self.last


class _RecordedScore(LiveScore):
    """The score's state over a recorded run: the text markers are known in advance (the whole
    text, tokenised exactly), so nothing is streamed. None: a run with nothing to observe."""

    def __init__(self, rule: dict[str, Any], key: KeyFn, marks: TextMarkers | None) -> None:
        super().__init__(rule, key)
        self._marks = marks

    def markers(self) -> TextMarkers:
        if self._marks is None:
            raise ValueError("a recorded run given no text markers cannot be scored")
        return self._marks


class ScoreRule:
    """A profile's ``score`` rule: exit at the first observation with an answer whose fitted score
    reaches the threshold (:meth:`LiveScore.decide`). Reads every source. The live program's
    :class:`~certaindex.core.exit_score.LiveScore` also reads the boxes the model writes
    (:meth:`LiveScore.boxed`); those are decided on with the next :meth:`observe`. The certaindex is
    the latest observation's score, clipped to [0, 1]."""

    def __init__(self, live: LiveScore) -> None:
        self.live = live
        self.last = Decision(False)

    @classmethod
    def recorded(cls, rule: dict[str, Any], key: KeyFn, marks: TextMarkers | None) -> "ScoreRule":
        """The rule over a recorded run whose text markers are ``marks`` (None: it observes nothing)."""
        return cls(_RecordedScore(rule, key, marks))

    def observe(self, *observations: Obs) -> Decision:
        self.live.obs.extend(observations)
        go, answer, _ = self.live.decide()
        cdx = min(1.0, max(0.0, self.live.last_score or 0.0))
        self.last = Decision(go, answer, self.live.exit_obs if go else None, cdx)
        return self.last


def replay(policy: ExitPolicy, observations: Sequence[Obs]) -> tuple[Decision, int]:
    """A policy over a recorded stream: its decision and the tokens the observations up to the exit
    cost (the deciding one included; all of them when it never exits)."""
    decision = policy.observe(*observations)
    if not decision.exit:
        return decision, sum(o.out_tokens for o in observations)
    spent = 0
    for o in observations:
        spent += o.out_tokens
        if o is decision.at:
            return decision, spent
    raise ValueError("the deciding observation is not one of the observations replayed")
