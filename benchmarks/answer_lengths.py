"""How long a reasoning model's own answer after ``</think>`` is, in the recorded Governor traces.

Why: the proxy lets the model write its answer after its reasoning closes, bounded by the client's
``max_tokens`` or, when the client gives none, by ``CoTConfig.answer_tokens``. That default must not
cut real answers (issue 18: at 256 it cut 79% of R1-7B's MATH500 answers). This reads every
trajectory that closed its thinking by itself and counts the tokens after ``</think>`` with the
model's own vocabulary (quicktok).

    python benchmarks/answer_lengths.py TRACES_DIR > benchmarks/results/answer-lengths/governor.txt

TRACES_DIR: the Governor traces folder (shared/traces/governor, one folder per model x dataset x seed).
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from certaindex.traces.tokenmap import encode

PERCENTILES = (50, 90, 95, 99, 99.9, 100)


def answer_lengths(folder: Path) -> list[int]:
    """Tokens after ``</think>`` of each trajectory in ``folder`` that ended by itself."""
    model = folder.name.split("__")[0]
    out = []
    with gzip.open(folder / "trajectories.jsonl.gz", "rt") as f:
        for line in f:
            record = json.loads(line)
            text = record["full_text"]
            if not record.get("finished_naturally") or "</think>" not in text:
                continue
            tail = text.split("</think>", 1)[1]
            encoded = encode(tail, model)
            if encoded is None:
                raise SystemExit(f"no vocabulary for {model}: install quicktok-v1")
            out.append(len(encoded[0]))
    return out


def main(root: Path) -> None:
    by_family: dict[str, list[int]] = defaultdict(list)
    by_set: dict[str, list[int]] = defaultdict(list)
    for folder in sorted(p for p in root.glob("*__*__seed_*") if (p / "trajectories.jsonl.gz").exists()):
        model, dataset, _ = folder.name.split("__")
        lengths = answer_lengths(folder)
        by_family[model] += lengths
        by_set[f"{model} {dataset}"] += lengths
    header = "| set | answers | over 256 | " + " | ".join(f"p{p:g}" for p in PERCENTILES) + " |"
    print(header)
    print("|" + "---|" * (3 + len(PERCENTILES)))
    for name, lengths in [*sorted(by_set.items()), *sorted(by_family.items()),
                          ("all", [n for v in by_family.values() for n in v])]:
        a = np.array(lengths)
        cells = " | ".join(str(int(np.percentile(a, p, method="higher"))) for p in PERCENTILES)
        print(f"| {name} | {len(a)} | {np.mean(a > 256):.1%} | {cells} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
