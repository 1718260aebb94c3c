"""Headline figure of the real-trace serving simulations (issue 13, section 1): for each workload,
each row's highest rate at 90% SLO attainment and its tightest SLO at full-fcfs's highest rate, as
ratios to full-fcfs, with the row's accuracy change written on its bar.

    python benchmarks/plot_simulate_real.py benchmarks/results/simulate-real/simulate-real-r1-7b-math500.json \
        benchmarks/results/simulate-real/simulate-real-r1-7b-mix.json benchmarks/results/simulate-real/simulate-real-r1-32b-math500.json \
        --chunked benchmarks/results/simulate-real/simulate-real-r1-7b-math500-chunked.json \
        benchmarks/results/simulate-real/simulate-real-r1-7b-mix-chunked.json benchmarks/results/simulate-real/simulate-real-r1-32b-math500-chunked.json \
        --out benchmarks/results/simulate-real/simulate-real-summary.png

Inputs are the ``--json`` files of ``certaindex simulate --traces <Governor folder> --find-rate``;
``--chunked``: the same workloads run with ``--probe-timing chunked``, drawn as a second, hatched
bar under each row (ratios to that run's own full-fcfs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def ratios(d: dict, key: str) -> list[float]:
    rows = d["rows"]
    base = next(r for r in rows if r["label"] == "full-fcfs")
    if key == "max_rate":
        return [r[key] / base[key] if base[key] else 0.0 for r in rows]
    return [base[key] / r[key] if r[key] else 0.0 for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--chunked", nargs="*", default=[], help="the same workloads under --probe-timing chunked")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.chunked and len(args.chunked) != len(args.files):
        parser.error("--chunked takes one file per workload file, in the same order")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.files]
    chunked = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.chunked] or [None] * len(data)
    fig, axes = plt.subplots(len(data), 2, figsize=(13, 3.6 * len(data)), squeeze=False)
    for row, d, c in zip(axes, data, chunked):
        rows = d["rows"]
        base = next(r for r in rows if r["label"] == "full-fcfs")
        labels = [r["label"].replace(" interval=64", "") for r in rows]
        timing = d.get("probe_timing", "chunked")
        if timing == "side" and d.get("side_probes"):
            timing += f", side probes {d['side_probes']}"
        for ax, key, title in ((row[0], "max_rate", f"highest rate with 90% within {d['slos'][0]:g} s (x full-fcfs)"),
                               (row[1], "p90_at_reference", "tightest SLO met by 90% at full-fcfs's highest rate (x)")):
            values = ratios(d, key)
            height = 0.4 if c is not None else 0.8
            y = list(range(len(rows)))
            colors = ["#888" if r["policy"].startswith("full") else
                      ("#c44" if r["accuracy"] < base["accuracy"] - 0.01 else "#48c") for r in rows]
            bars = ax.barh([i - (0.2 if c is not None else 0) for i in y], values, height=height, color=colors,
                           label=f"probe timing {timing}")
            for bar, r, v in zip(bars, rows, values):
                # a rate search that met the target at every rate tried found a lower bound only
                at_least = key == "max_rate" and all(a >= 0.9 for _, a in r.get("max_rate_tried") or [(0, 0)])
                ax.text(v, bar.get_y() + bar.get_height() / 2,
                        f" {'>= ' if at_least else ''}{v:.2f}x, acc {100 * (r['accuracy'] - base['accuracy']):+.1f} pt",
                        va="center", fontsize=7)
            top = max(values)
            if c is not None:
                by_label = dict(zip([r["label"] for r in c["rows"]], ratios(c, key)))
                other = [by_label.get(r["label"], 0.0) for r in rows]
                cbars = ax.barh([i + 0.2 for i in y], other, height=height, color=colors, alpha=0.45, hatch="//",
                                label=f"probe timing {c.get('probe_timing', 'chunked')}")
                for bar, v in zip(cbars, other):
                    ax.text(v, bar.get_y() + bar.get_height() / 2, f" {v:.2f}x", va="center", fontsize=7)
                top = max(top, max(other))
                ax.legend(fontsize=7, loc="lower right")
            ax.set_yticks(y, labels)
            ax.axvline(1.0, color="k", lw=0.5)
            ax.invert_yaxis()
            ax.set_xlim(0, top * 1.6)
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=8)
        row[0].set_ylabel(d["workload"].split(" (")[0] + "\n" + d["workload"].split(" (")[1].rstrip(")"), fontsize=8)
    fig.suptitle("Real reasoning programs, simulator on H100 cost models (red: accuracy more than 1 point below full "
                 "reasoning)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
