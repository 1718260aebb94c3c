"""A fake engine for unit tests only: it plays one recorded Governor trajectory (streams its
``full_text`` in the model's own tokens, answers probes from the recorded ``probes.csv.gz`` and
DEER trials from the recorded ``deer.jsonl.gz`` with their token logprobs), so a live chain of
thought can be checked against the offline replay of the same trajectory."""

from __future__ import annotations

import ast
import bisect
import gzip
import json
from pathlib import Path
from typing import Any

from certaindex.engines.base import GenerationRequest
from certaindex.traces.governor import Trajectory
from certaindex.traces.tokenmap import char_ends
from tests.fakes import ScriptedFakeEngine


def _literal(value: Any) -> Any:
    return ast.literal_eval(value) if isinstance(value, str) and value[:1] in "[{(" else value


def recorded_trials(folder: Path) -> dict[int, dict[int, dict]]:
    """problem_id -> trigger character offset -> the raw DEER trial record (tokens with logprobs)."""
    out: dict[int, dict[int, dict]] = {}
    with gzip.open(folder / "deer.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            trials = {}
            for x in _literal(r["trials"]):
                x = _literal(x)
                lps = [_literal(d) for d in _literal(x["logprobs"])]
                trials[int(x["trigger_char_position"])] = {
                    "pos": int(x["token_position"]), "answer": x.get("trial_answer"),
                    "confidence": float(x["confidence"]), "out_tokens": int(x["trial_out_tokens"]),
                    "finish": x.get("trial_finish_reason") or "stop",
                    "tokens": [(str(d["token"]), float(d["logprob"])) for d in lps],
                }
            out[int(r["problem_id"])] = trials
    return out


class GovernorTrajectoryFake(ScriptedFakeEngine):
    """Fake (tests only): one recorded trajectory, streamed token by token, probes and trials answered
    from its records. ``probe_suffix``: the suffix the profile probes with."""

    def __init__(self, traj: Trajectory, trials: dict[int, dict], probe_suffix: str, **kwargs: Any) -> None:
        text = traj.full_text
        ends = [int(e) for e in char_ends(text, traj.model, traj.tokens_used)[0]]
        if not ends or ends[-1] < len(text):
            ends.append(len(text))
        starts = [0] + ends[:-1]
        super().__init__(reasoning=[text[a:b] for a, b in zip(starts, ends)], **kwargs)
        self.full = text
        self.ends = ends
        self.recorded = trials
        self.probe_suffix = probe_suffix
        self.probes_at = {p.pos: p for p in traj.probes}
        self.trial_tokens_sent = 0

    def _is_probe(self, request: GenerationRequest) -> bool:
        return request.prompt.endswith(self.probe_suffix)

    def _consumed(self, prompt: str) -> tuple[str, int]:
        text = prompt[len(self._base):]
        n = bisect.bisect_right(self.ends, len(text))
        done = self.ends[n - 1] if n else 0
        if not self.full.startswith(text[:done]):
            raise AssertionError("prompt does not extend the recorded text")
        return text[done:], n

    def _reply(self, request: GenerationRequest):
        text = request.prompt[len(self._base):]
        if text.endswith(self.trial_suffix):
            rec = self.recorded[len(text) - len(self.trial_suffix)]  # a trial where none was recorded: KeyError
            pairs = rec["tokens"][: request.max_tokens]
            return [t for t, _ in pairs], rec["finish"], pairs
        if text.endswith(self.probe_suffix):
            at = bisect.bisect_right(self.ends, len(text) - len(self.probe_suffix))
            p = self.probes_at[at]
            n = max(p.out_tokens, 2)
            if p.answer is None:
                pieces = [" "] * n
            else:
                pieces = [p.answer, "}" if p.certain else "} wait"] + [""] * (n - 2)
            return pieces, "length" if n >= request.max_tokens else "stop", [(t, 0.0) for t in pieces]
        return super()._reply(request)


__all__ = ["GovernorTrajectoryFake", "recorded_trials"]


async def live_beside_replay(profile: Any, rule: dict, traj: Trajectory, trials: dict[int, dict],
                             streaming: bool) -> tuple[Any, Any]:
    """One recorded trajectory run live under ``rule`` (``profile``'s probes) on the fake above,
    beside ``certaindex evaluate``'s offline replay of it: (the live CoTResult, the replay's outcome)."""
    from certaindex.core.answers import canonical_answer
    from certaindex.evaluation.score_policy import replay_score
    from certaindex.programs.cot import CoTConfig, solve_cot

    offline = replay_score(rule, traj, canonical_answer, lambda a: False)
    engine = GovernorTrajectoryFake(traj, trials, profile.probe_suffix, streaming=streaming)
    config = CoTConfig(budget=traj.tokens_used + 64, probe_interval=profile.probe_interval,
                       probe_suffix=profile.probe_suffix, probe_tokens=profile.probe_tokens,
                       certainty=rule, system_prompt=None)
    return await solve_cot(engine, f"problem {traj.problem_id}", config), offline
