"""Do live DEER trials read what the recorded ones say? (issue 18: Qwen3-8B's live outcomes)

Every recorded DEER trial of the Governor development traces (``deer.jsonl.gz``, train and dev
problems) is served as the replay server serves it to a live program
(:func:`certaindex.traces.governor_engine.trial_reply`: its recorded tokens and logprobs, at most the
profile's ``trials.tokens``, cut at the live trial's stop strings) and read as the live program reads
it (:func:`certaindex.programs.cot_observe.read_trial_choice`). The reading is compared with the
record's own ``confidence``, answer (``trial_answer``; empty = none), smallest token probability
(what ``evaluate`` reads) and output tokens:

* ``profile``: the live reading under the family's shipped profile (its ``trials.confidence_rule``
  and ``require_think_close``): what ``serve`` does now;
* ``avg1``: DEER's ``avg1`` rule over all the tokens with the box-end stops (the same answer
  reading): what the profile reads without ``confidence_rule`` / ``require_think_close``;
* ``before``: the live reader of main at ed67ba2 (copied here as :func:`before_reading`): ``avg1``
  over the tokens up to the one closing the box, box-end stops, and a box that never closes read
  from the text as if a stop string had cut it.

    python benchmarks/trial_confidence.py --out benchmarks/results/trial-confidence/summary.txt

A confidence agrees within 1e-9, a smallest probability within 1e-12; answers agree when both are
none or both are the same string (stripped).
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from certaindex.core.answers import _boxes, _closing_brace  # noqa: E402
from certaindex.core.exit_score import trial_confidence  # noqa: E402
from certaindex.core.prompting import read_probe_answer  # noqa: E402
from certaindex.engines.base import Choice, TokenLogprobs  # noqa: E402
from certaindex.evaluation.profiles import shipped_profiles  # noqa: E402
from certaindex.programs.cot_observe import read_trial_choice  # noqa: E402
from certaindex.programs.cot_run import trial_stops  # noqa: E402
from certaindex.traces.governor import Trial, read_governor  # noqa: E402
from certaindex.traces.governor_engine import trial_reply  # noqa: E402

SHARED = ROOT.parent / "shared" / "traces" / "governor"
FAMILY_PROFILE = {"r1-distill-qwen-7b": "r1-distill-qwen", "qwen3-8b": "qwen3"}  # the families with DEER records


def live_reading(trial: Trial, trials: dict, rule: str, think_close: bool) -> tuple[str | None, float, float, int]:
    """(answer, confidence, min_prob, output tokens) a live program reads from the replayed trial."""
    pieces, finish = trial_reply(trial, int(trials.get("tokens", 20)), trial_stops(think_close))
    lps = tuple(TokenLogprobs(p.token_text, float(p.logprob or 0.0)) for p in pieces)
    choice = Choice("".join(p.text for p in pieces), finish, len(pieces), lps)
    answer, reading = read_trial_choice(choice, rule, think_close)
    return answer, reading.confidence, reading.min_prob, len(pieces)


def before_reading(trial: Trial, trials: dict) -> tuple[str | None, float, float, int]:
    """The reading of ``cot_observe.Judge.record_trial`` / ``exit_score.read_trial`` before this study."""
    pieces, finish = trial_reply(trial, int(trials.get("tokens", 20)), trial_stops(False))
    tokens, lps = [p.token_text for p in pieces], [float(p.logprob or 0.0) for p in pieces]
    text = "".join(tokens)
    ends = np.cumsum([len(t) for t in tokens]) if tokens else np.zeros(0, dtype=np.int64)
    opening = re.search(r"(?<!\\)\{", text)
    close = _closing_brace(text, opening.end()) if opening else None
    n = len(tokens) if close is None else min(int(np.searchsorted(ends, close, side="right")) + 1, len(tokens))
    boxes = _boxes("\\boxed" + text) if close is not None else []
    answer = boxes[0][1] if boxes and boxes[0][1] is not None and boxes[0][1].strip() else None
    conf, minp = trial_confidence(lps[:n], "avg1")
    if answer is None and finish == "stop":
        answer = read_probe_answer("\\boxed{", "".join(p.text for p in pieces).lstrip().removeprefix("{"), True)
    return answer, conf, minp, len(pieces)


def compare(family: str, split: str, counts: Counter, examples: list[str]) -> None:
    """Count agreements of every recorded trial of ``family``'s ``split`` problems."""
    trials = next(p for p in shipped_profiles() if p.name == FAMILY_PROFILE[family]).rule["trials"]
    readers = {"profile": (str(trials.get("confidence_rule", "avg1")), bool(trials.get("require_think_close", False))),
               "avg1": ("avg1", False), "before": ("avg1", False)}
    for folder in sorted(SHARED.glob(f"{family}__*")):
        for run in read_governor(folder, split):
            for traj in run.trajectories:
                for t in traj.trials or ():
                    key = (family, split)
                    counts[key + ("trials",)] += 1
                    for name, (rule, think_close) in readers.items():
                        answer, conf, minp, used = (before_reading(t, trials) if name == "before"
                                                    else live_reading(t, trials, rule, think_close))
                        same_answer = (answer or "").strip() == (t.answer or "").strip()
                        same_conf = abs(conf - t.confidence) <= 1e-9
                        counts[key + (name, "conf")] += same_conf
                        counts[key + (name, "answer")] += same_answer
                        counts[key + (name, "minp")] += abs(minp - t.min_prob) <= 1e-12
                        counts[key + (name, "tokens")] += used == t.out_tokens
                        counts[key + (name, "all")] += same_conf and same_answer
                        if name == "profile" and not (same_conf and same_answer) and len(examples) < 20:
                            examples.append(f"{traj.model}/{traj.dataset}/seed_{traj.seed}/{traj.problem_id} @{t.pos}: "
                                            f"recorded ({t.answer!r}, {t.confidence:.6f}) live ({answer!r}, {conf:.6f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILY_PROFILE), choices=list(FAMILY_PROFILE))
    ap.add_argument("--splits", nargs="+", default=["dev", "train"], choices=["dev", "train"])
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    started = time.time()
    counts: Counter = Counter()
    examples: list[str] = []
    for family in args.families:
        for split in args.splits:
            compare(family, split, counts, examples)
    lines = [f"$ python benchmarks/trial_confidence.py {shlex.join(sys.argv[1:])}".rstrip(),
             f"machine: {platform.node() or 'vm'} ({platform.machine()}); data: Governor traces "
             f"({SHARED.relative_to(ROOT.parent)}), seeds 42-44, every DEER trial of the {'/'.join(args.splits)} problems",
             "each cell: trials whose live reading equals the record (confidence within 1e-9; answer; min_prob within "
             "1e-12; output tokens)", "",
             f"{'family':20} {'split':5} {'trials':>7} {'reader':8} {'conf':>7} {'answer':>7} {'both':>7} {'min_p':>7} "
             f"{'tokens':>7} {'both %':>7}"]
    for family in args.families:
        for split in args.splits:
            key = (family, split)
            n = counts[key + ("trials",)]
            for name in ("profile", "avg1", "before"):
                c = {k: counts[key + (name, k)] for k in ("conf", "answer", "all", "minp", "tokens")}
                lines.append(f"{family:20} {split:5} {n:7d} {name:8} {c['conf']:7d} {c['answer']:7d} {c['all']:7d} "
                             f"{c['minp']:7d} {c['tokens']:7d} {100 * c['all'] / max(n, 1):6.2f}%")
    lines += ["", f"profile readings that differ (first {len(examples)}):"] + ["  " + e for e in examples]
    lines.append(f"\n{time.time() - started:.0f} s")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
