"""Benchmark: would a veto on a list cut short (issue 19 item 6) touch the shipped profiles' exits?

For R1-Distill-Qwen-7B and Qwen3-8B under their shipped family profiles, on TRAIN and DEV: how many
exits there are, how many are harmful (wrong where full reasoning was right), and how many exit at an
observation whose answer has fewer parts than an earlier answer of the run (feature ``fewer_parts``,
``core.exit_score.answer_parts``), the signal a veto would read.

    python benchmarks/partial_answers.py [GOVERNOR_DIR] [--grade-cache FILE]

Writes benchmarks/results/partial-answers/partial-answers.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.cli.governor import grade, read_trajectories  # noqa: E402
from certaindex.core.exit_score import FEATURES, ScoreModel  # noqa: E402
from certaindex.evaluation import score_policy as sp  # noqa: E402
from certaindex.evaluation.profiles import shipped_profiles  # noqa: E402
from _cli_args import pop_value  # noqa: E402

FAMILIES = (("r1-distill-qwen-7b", "r1-distill-qwen"), ("qwen3-8b", "qwen3"))


def exit_counts(trajs, rule: dict, cache) -> dict[str, int]:
    """Exits, harmful exits, and exits (harmful ones) at an answer with fewer parts than an earlier one."""
    def correct(t, a):
        return cache.correct(a, t.target)

    tab = sp._table(trajs, rule["schedule"], cache.key, correct)
    scores = ScoreModel.from_dict(rule["model"]).score(tab.X)
    fewer = FEATURES.index("fewer_parts")
    out = {"exits": 0, "harmful": 0, "fewer_parts": 0, "fewer_parts_harmful": 0}
    for j, (cm, rows) in enumerate(sp._exits(tab, scores, np.arange(len(trajs)))):
        if not len(cm) or cm[-1] < rule["threshold"]:
            continue
        r = rows[int(np.searchsorted(cm, rule["threshold"], side="left"))]
        harm = bool(tab.final_ok[j] and not tab.ok[r])
        out["exits"] += 1
        out["harmful"] += harm
        if tab.X[r, fewer] > 0:
            out["fewer_parts"] += 1
            out["fewer_parts_harmful"] += harm
    return out


def main() -> int:
    args = sys.argv[1:]
    cache_path = pop_value(args, "--grade-cache")
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    profiles = {p.name: p for p in shipped_profiles()}
    lines = [f"# python benchmarks/partial_answers.py {path}",
             "# shipped family profiles; exits at an answer with fewer parts than an earlier answer of the run"]
    for split in ("train", "dev"):
        trajs, _, _ = read_trajectories(path, split, quiet=True)
        cache = grade(trajs, cache_path, quiet=True)
        for model, name in FAMILIES:
            c = exit_counts([t for t in trajs if t.model == model], profiles[name].rule, cache)
            lines.append(f"{split:5s} {model:20s} exits {c['exits']:4d} harmful {c['harmful']:3d} "
                         f"at fewer parts {c['fewer_parts']:3d} (harmful {c['fewer_parts_harmful']})")
            print(lines[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "partial-answers" / "partial-answers.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
