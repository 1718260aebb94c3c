"""Observe and decide: read what the probes, trials and the model's own boxes say, and judge whether
the answer has settled.

Pure logic, no engine: the chunked and the one-stream paths feed it the same observations in
position order, so they make the same decisions. Under Dynasor's rule the last ``k`` probes must
agree without hesitating; under a fitted score rule (``CoTConfig.certainty``) a
:class:`~certaindex.core.exit_score.LiveScore` decides from the probes, trials and boxes.
"""

from __future__ import annotations

from typing import Callable

from certaindex.core.answers import answers_equal, is_hesitant
from certaindex.core.exit_score import LiveScore, read_trial
from certaindex.core.prompting import opens_box, read_probe_answer
from certaindex.core.signals import ProbeObservation, probe_certaindex, probes_agree
from certaindex.engines.base import Completion
from certaindex.programs.cot_types import CoTConfig, CoTEvent, Probe, Trial


class Judge:
    """The observations of one chain of thought so far, and the exit rule that reads them.

    ``emit`` hears a ``probe`` or ``trial`` event for each one recorded."""

    def __init__(self, config: CoTConfig, live: LiveScore | None,
                 emit: Callable[[CoTEvent], None] = lambda _event: None) -> None:
        self.config = config
        self.live = live
        self.emit = emit
        self.probes: list[Probe] = []
        self.observations: list[ProbeObservation] = []
        self.trials: list[Trial] = []
        self.exit_answer: str | None = None  # under a score rule: the answer it exited with
        self._probe_settled = False  # under a score rule: whether the latest probe settled it

    def decided(self) -> bool:
        """The score rule's decision on everything observed so far (keeps the answer it exits with)."""
        go, answer, _ = self.live.decide()  # type: ignore[union-attr]
        if go:
            self.exit_answer = answer
        return go

    def boxes_settle(self, upto: int | None = None) -> bool:
        """Judge the boxes the model wrote up to ``upto`` tokens (None: all of them), then decide."""
        self.live.boxed(upto=upto)  # type: ignore[union-attr]
        return self.decided()

    def settled_after(self, record: Probe | None, at_tokens: int) -> bool:
        """The certainty rule at a decision point: the score (the boxes the model wrote up to it, the
        probe taken there if any, already judged by :meth:`record_probe`) or k agreeing probes."""
        if self.live is None:
            return probes_agree(self.observations, self.config.k, answers_equal)
        if record is not None:
            return self._probe_settled
        return self.boxes_settle(at_tokens)

    def score_reported(self) -> float:
        """The score of the latest observation, as the certainty the scheduler hears (in [0, 1])."""
        return min(1.0, max(0.0, self.live.last_score or 0.0))  # type: ignore[union-attr]

    def record_probe(self, at_tokens: int, completion: Completion, probe_tokens: int) -> Probe:
        """Read a probe's answer and judge it in order: the rule sees probes by position.
        ``probe_tokens``: every probe and trial token so far (reported with the event)."""
        choice = completion.first
        suffix = self.config.probe_suffix
        answer = read_probe_answer(suffix, choice.text, choice.finish_reason == "stop" and opens_box(suffix))
        hesitant = is_hesitant(choice.text)
        self.observations.append(ProbeObservation(answer=answer, hesitant=hesitant))
        if self.live is None:
            certaindex = probe_certaindex(self.observations, self.config.k, answers_equal)
        else:  # the score judges the boxes written up to the probe, then the probe
            self.live.boxed(upto=at_tokens)
            self.live.observe("grid", answer, certain=not hesitant, out_tokens=choice.completion_tokens,
                              pos=at_tokens)
            self._probe_settled = self.decided()
            certaindex = self.score_reported()
        record = Probe(at_tokens=at_tokens, text=choice.text, answer=answer, hesitant=hesitant,
                       tokens=choice.completion_tokens, certaindex=certaindex)
        self.probes.append(record)
        self.emit(CoTEvent("probe", at_tokens, probe_tokens, probe=record))
        return record

    def record_trial(self, at_tokens: int, completion: Completion, probe_tokens: int) -> bool:
        """Read a trial (answer, confidence from its logprobs), feed it to the score after the boxes
        written before it, and decide (True: settled)."""
        live = self.live
        assert live is not None
        choice = completion.first
        lps = choice.logprobs or ()
        reading = read_trial([t.token for t in lps], [t.logprob for t in lps])
        answer = reading.answer
        if answer is None and choice.finish_reason == "stop":  # the engine cut the closing brace with a stop string
            answer = read_probe_answer("\\boxed{", choice.text.lstrip().removeprefix("{"), True)
        live.observe("trial", answer, out_tokens=choice.completion_tokens, confidence=reading.confidence,
                     min_prob=reading.min_prob, pos=at_tokens)
        settled = self.decided()
        trial = Trial(at_tokens, answer, reading.confidence, reading.min_prob, choice.completion_tokens,
                      self.score_reported())
        self.trials.append(trial)
        self.emit(CoTEvent("trial", at_tokens, probe_tokens, trial=trial))
        return settled

    def final_answer(self) -> str | None:
        """The answer an early exit gives: the score rule's, or the deciding probe's."""
        return self.exit_answer if self.live is not None else self.probes[-1].answer

    def exit_position(self) -> int | None:
        """Under a score rule, the position of the observation it exited on (a box, a trial, a probe)."""
        if self.live is None or self.live.exit_obs is None:
            return None
        return self.live.exit_obs.pos


__all__ = ["Judge"]
