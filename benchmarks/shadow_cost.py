"""What shadow mode (`certaindex serve --shadow DIR`) costs in upstream tokens, on real reasoning
traces: the probes it forks beside full reasoning, every I tokens, as a share of full reasoning's
own tokens. Read from recorded Governor trajectories, whose probes were taken every 64 tokens with
the same suffix a profile uses, so each probe's recorded length is what shadow mode would pay.

    .venv/bin/python benchmarks/shadow_cost.py [PATH] [--out benchmarks/results/shadow-cost/shadow-cost.txt]

PATH: a Governor folder (default: the sample shipped in the package). Only decode tokens are
counted; a probe's prompt is the cached prefix plus the suffix (about 20 new tokens of prefill).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from certaindex.cli.governor import sample_path
from certaindex.traces.governor import read_governor

INTERVALS = (64, 128, 256, 512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="Governor folder (default: the shipped sample)")
    parser.add_argument("--split", default="all", help="train, dev or all (default all)")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    path = Path(args.path) if args.path else sample_path()
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for run in read_governor(path, args.split):
        groups[(run.model, run.dataset)].extend(run.trajectories)
    lines = [f"shadow mode's probe tokens as a share of full reasoning's tokens ({path}, split {args.split})",
             "model | dataset | programs | full tokens (mean) | " + " | ".join(
                 f"every {i}: extra share, probes/program" for i in INTERVALS)]
    for (model, dataset), trajs in sorted(groups.items()):
        full = math.fsum(t.tokens_used for t in trajs)
        cells = []
        for interval in INTERVALS:
            taken = [p for t in trajs for p in t.probes if p.pos % interval == 0 and p.pos < t.tokens_used]
            extra = math.fsum(p.out_tokens for p in taken)
            cells.append(f"{100 * extra / full:.1f}%, {len(taken) / len(trajs):.1f}")
        lines.append(f"{model} | {dataset} | {len(trajs)} | {full / len(trajs):.0f} | " + " | ".join(cells))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"command: .venv/bin/python benchmarks/shadow_cost.py {args.path or ''} "
                                  f"--split {args.split}\n{text}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
