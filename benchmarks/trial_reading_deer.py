"""How the reading of a DEER trial moves DEER itself, and where a DEER-anchored operating point would sit
(issue 19; benchmarks/README.md, "A profile that transfers across model families").

1. DEER at fixed thresholds on TRAIN MATH500 of the two families with recorded trials, with each
   family's trials read as recorded (R1-Distill-Qwen-7B: avg1 at the box's end; Qwen3-8B: avg2 over a
   trial run on to ``</think>``, 0 without it) and as the ``generic`` profile reads them live (avg1 at
   the box's end, ``evaluation.trial_reading``).
2. The operating point anchored on the source's DEER: for the score fitted on one trial family
   (``transfer_profiles.fit``, the shipped schedule and features, alpha 0.02), its certified
   threshold's savings on the calibration problems against DEER 0.999's on the same problems. An
   anchor ("the least aggressive certified threshold saving at least DEER 0.999") binds only where the
   certified threshold saves more than DEER.

    python benchmarks/trial_reading_deer.py [GOVERNOR_DIR] [--grade-cache FILE]

writes benchmarks/results/transfer/deer-by-reading.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_profiles as tp  # noqa: E402  (the fit, the grading and the trial reading of the profile)

from certaindex.evaluation.governor import with_final_answers  # noqa: E402
from certaindex.evaluation.peers import deer, full_reasoning  # noqa: E402
from certaindex.evaluation.score_policy import fit_split  # noqa: E402
from certaindex.evaluation.trial_reading import trials_as_read  # noqa: E402
from certaindex.traces.governor import read_governor  # noqa: E402
from _cli_args import pop_value  # noqa: E402

THRESHOLDS = (0.99999, 0.9999, 0.9995, 0.999, 0.995, 0.99)


def deer_row(trajs, threshold: float, cache) -> tuple[float, float, int]:
    """(accuracy change in points, tokens saved %, harmful exits) of DEER at ``threshold``."""
    cs = [(lambda a, t=t: cache.correct(a, t.target)) for t in trajs]
    fulls = [full_reasoning(t, c) for t, c in zip(trajs, cs)]
    outs = [deer(t, threshold, c) for t, c in zip(trajs, cs)]
    acc = 100 * (sum(o.correct for o in outs) - sum(f.correct for f in fulls)) / len(trajs)
    saved = 100 * (1 - sum(o.tokens for o in outs) / sum(f.tokens for f in fulls))
    return acc, saved, sum(f.correct and not o.correct for f, o in zip(fulls, outs))


def main() -> int:
    args = sys.argv[1:]
    cache_path = pop_value(args, "--grade-cache")
    path = Path(args[0]) if args else tp.ROOT.parent / "shared" / "traces" / "governor"
    trajs = with_final_answers([t for r in read_governor(path, "all") for t in r.trajectories if r.model in tp.WITH_TRIALS])
    cache = tp.graded(trajs, cache_path)
    lines = [f"python benchmarks/trial_reading_deer.py {path}; TRAIN split only; machine: 2-core shared CPU VM", "",
             "1. DEER on TRAIN MATH500: accuracy change (points) / tokens saved / harmful exits",
             "model | reading | " + " | ".join(f"tau {th:g}" for th in THRESHOLDS)]
    for m in tp.WITH_TRIALS:
        ts = [t for t in trajs if t.model == m and t.split == "train" and t.dataset == "math500"]
        for name, read in (("recorded", ts), ("generic (avg1 at the box's end)", [trials_as_read(t, tp.GENERIC_TRIALS) for t in ts])):
            cells = [deer_row(read, th, cache) for th in THRESHOLDS]
            lines.append(f"{m} | {name} | " + " | ".join(f"{a:+.1f} / {s:.1f}% / h{h}" for a, s, h in cells))
    lines += ["", "2. Score fitted on one trial family (bx+tc+g512+tr, relative without fewer_parts, alpha 0.02, trials "
              "read as generic reads them): savings on its calibration problems at the certified threshold, "
              "and DEER 0.999's (recorded reading) on the same problems"]
    read_all = [trials_as_read(t, tp.GENERIC_TRIALS) for t in trajs]
    feats = tp.FEATURE_SETS["relative, no fewer_parts"]
    for m in tp.WITH_TRIALS:
        cal = tp.fit(read_all, [m], "bx+tc+g512+tr", feats, cache, 0.02)
        fam = [t for t in trajs if t.model == m and t.split == "train"]
        cal_ts = [t for t in fam if fit_split(t) == "cal"]
        cs = [(lambda a, t=t: cache.correct(a, t.target)) for t in cal_ts]
        full_tok = np.mean([full_reasoning(t, c).tokens for t, c in zip(cal_ts, cs)])
        deer_tok = np.mean([deer(t, 0.999, c).tokens for t, c in zip(cal_ts, cs)])
        lines.append(f"{m}: certified threshold {cal.threshold:.4f} ({cal.label}, stopped by {cal.stopped_by}) saves "
                     f"{100 * cal.cal_saved:.1f}% on {len(cal_ts)} calibration trajectories; DEER 0.999 saves "
                     f"{100 * (1 - deer_tok / full_tok):.1f}% there")
    out = tp.OUT / "deer-by-reading.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
