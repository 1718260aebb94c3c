"""Observe and decide: read what the probes, trials and the model's own boxes say, and judge whether
the answer has settled.

Pure logic, no engine: the chunked and the one-stream paths feed it the same observations in
position order, so they make the same decisions. The decision itself is the exit policy object of
:mod:`certaindex.core.exit_policy` that the trace replay also calls: :class:`Dynasor` (the last ``k``
probes agree without hesitating) or, under a fitted score rule (``CoTConfig.certainty``),
:class:`ScoreRule` over a :class:`~certaindex.core.exit_score.LiveScore`, which reads the probes,
trials and the boxes the model writes.
"""

from __future__ import annotations

from typing import Callable

from certaindex.core.answers import answers_equal, is_hesitant
from certaindex.core.exit_policy import Decision, Dynasor, ExitPolicy, ScoreRule
from certaindex.core.exit_score import LiveScore, Obs, TrialReading, read_trial
from certaindex.core.prompting import opens_box, read_probe_answer
from certaindex.engines.base import Choice, Completion
from certaindex.programs.cot_types import CoTConfig, CoTEvent, Probe, Trial


def read_trial_choice(choice: Choice, rule: str = "avg1",
                      require_think_close: bool = False) -> tuple[str | None, TrialReading]:
    """(answer, reading) of a trial completion, as the profile's trials were recorded
    (:func:`~certaindex.core.exit_score.read_trial`). A box that never closes in the tokens shown is
    no answer, as in the DEER records; only where the engine generated a token it did not show (a
    stop string's) is the answer read from the text cut before it."""
    lps = choice.logprobs or ()
    reading = read_trial([t.token for t in lps], [t.logprob for t in lps], rule, require_think_close)
    answer = reading.answer
    if answer is None and choice.finish_reason == "stop" and len(lps) < choice.completion_tokens:
        answer = read_probe_answer("\\boxed{", choice.text.lstrip().removeprefix("{"), True)
    return answer, reading


class Judge:
    """The observations of one chain of thought so far, and the exit rule that reads them.

    ``emit`` hears a ``probe`` or ``trial`` event for each one recorded."""

    def __init__(self, config: CoTConfig, live: LiveScore | None,
                 emit: Callable[[CoTEvent], None] = lambda _event: None) -> None:
        self.config = config
        self.live = live
        self.emit = emit
        self.probes: list[Probe] = []
        self.trials: list[Trial] = []
        self.policy: ExitPolicy = Dynasor(config.k, answers_equal) if live is None else ScoreRule(live)
        self.decision = Decision(False)  # the policy's latest decision
        self.exited: Decision | None = None  # the latest decision to exit (its answer and observation)
        self._probe_settled = False  # whether the latest probe settled it

    def _observe(self, *observations: Obs) -> bool:
        self.decision = self.policy.observe(*observations)
        if self.decision.exit:
            self.exited = self.decision
        return self.decision.exit

    def decided(self) -> bool:
        """The score rule's decision on everything observed so far (the boxes it read included)."""
        return self._observe()

    def boxes_settle(self, upto: int | None = None) -> bool:
        """Judge the boxes the model wrote up to ``upto`` tokens (None: all of them), then decide."""
        self.live.boxed(upto=upto)  # type: ignore[union-attr]
        return self.decided()

    def settled_after(self, record: Probe | None, at_tokens: int) -> bool:
        """The policy at a decision point: under a score rule, the boxes the model wrote up to it and
        the probe taken there if any (already judged by :meth:`record_probe`); under Dynasor's rule,
        the probes so far."""
        if self.live is None or record is not None:
            return self._probe_settled
        return self.boxes_settle(at_tokens)

    def score_reported(self) -> float:
        """The certaindex of the latest decision, as the scheduler hears it (in [0, 1])."""
        return self.decision.certaindex

    def record_probe(self, at_tokens: int, completion: Completion, probe_tokens: int) -> Probe:
        """Read a probe's answer and judge it in order: the rule sees probes by position.
        ``probe_tokens``: every probe and trial token so far (reported with the event)."""
        choice = completion.first
        suffix = self.config.probe_suffix
        answer = read_probe_answer(suffix, choice.text, choice.finish_reason == "stop" and opens_box(suffix))
        hesitant = is_hesitant(choice.text)
        if self.live is not None:  # the score judges the boxes written up to the probe, then the probe
            self.live.boxed(upto=at_tokens)
        self._probe_settled = self._observe(Obs(at_tokens, "grid", answer, not hesitant, choice.completion_tokens))
        record = Probe(at_tokens=at_tokens, text=choice.text, answer=answer, hesitant=hesitant,
                       tokens=choice.completion_tokens, certaindex=self.decision.certaindex)
        self.probes.append(record)
        self.emit(CoTEvent("probe", at_tokens, probe_tokens, probe=record))
        return record

    def record_trial(self, at_tokens: int, completion: Completion, probe_tokens: int) -> bool:
        """Read a trial (answer, confidence from its logprobs), feed it to the score after the boxes
        written before it, and decide (True: settled)."""
        assert self.live is not None  # trials are read under a score rule only
        choice = completion.first
        answer, reading = read_trial_choice(choice, self.live.trial_rule, self.live.require_think_close)
        settled = self._observe(Obs(at_tokens, "trial", answer, True, choice.completion_tokens, reading.confidence,
                                    reading.min_prob))
        trial = Trial(at_tokens, answer, reading.confidence, reading.min_prob, choice.completion_tokens,
                      self.score_reported())
        self.trials.append(trial)
        self.emit(CoTEvent("trial", at_tokens, probe_tokens, trial=trial))
        return settled

    def final_answer(self) -> str | None:
        """The answer an early exit gives: the one the policy exited with."""
        return self.exited.answer if self.exited is not None else None

    def exit_position(self) -> int | None:
        """Under a score rule, the position of the observation it exited on (a box, a trial, a probe)."""
        if self.live is None or self.exited is None or self.exited.at is None:
            return None
        return self.exited.at.pos


__all__ = ["Judge", "read_trial_choice"]
