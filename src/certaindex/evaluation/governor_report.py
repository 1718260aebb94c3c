"""Tables and the Pareto plot of a Governor evaluation (presentation only; the figures come from
:mod:`certaindex.evaluation.governor`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from rich.table import Table

from certaindex.evaluation.governor import Point, best_in_band

__all__ = ["FAMILY_ROWS", "group_rows", "plot_groups", "render_group", "text_table"]

# (family, row label); "best" rows show the family's point saving most within the accuracy band, chosen
# in-sample; "chosen on train" rows show the setting a user would deploy, chosen on the train problems
# (:func:`certaindex.evaluation.governor.deployable_points`).
FAMILY_ROWS = (
    ("full", "full reasoning"),
    ("dynasor", "dynasor, best within band"),
    ("events", "events, best within band"),
    ("deer", "DEER, best within band"),
    ("dynasor-train", "dynasor, chosen on train"),
    ("events-train", "events, chosen on train"),
    ("deer-train", "DEER, chosen on train"),
    ("deer-fixed", "DEER, fixed threshold"),
    ("oracle", "oracle bound"),
    ("default", "certaindex default"),
    ("score", "default's score, best within band"),
)


def group_rows(points: Sequence[Point], band: float = 0.01) -> list[tuple[str, Point | None]]:
    """The table's rows for one group: (row label, point or None where the family has no point in band)."""
    full = next(p for p in points if p.family == "full")
    rows: list[tuple[str, Point | None]] = []
    for family, label in FAMILY_ROWS:
        if family in ("dynasor", "events", "deer", "score"):
            if not any(p.family == family for p in points):
                continue
            rows.append((label, best_in_band(points, family, full.accuracy, band)))
        else:
            rows.extend((label, p) for p in points if p.family == family)
    rows.extend((f"--policy {p.label}", p) for p in points if p.family == "policy")
    return rows


def render_group(model: str, dataset: str, n: int, points: Sequence[Point], band: float = 0.01) -> Table:
    table = Table(title=f"{model} · {dataset} (n={n}; band: accuracy within {100 * band:g} point of full; "
                        "'best within band' chosen in-sample, 'chosen on train' on the train problems)")
    for col in ("policy", "setting", "accuracy", "mean tokens", "saved", "harmful"):
        table.add_column(col, justify="left" if col in ("policy", "setting") else "right")
    for label, p in group_rows(points, band):
        if p is None:
            table.add_row(label, "none in band", "", "", "", "")
        else:
            table.add_row(label, p.label, f"{p.accuracy:.3f}", f"{p.tokens:,.0f}", f"{100 * p.saved:.1f}%", str(p.harmful_exits))
    return table


def text_table(groups: Sequence[tuple[str, str, int, Sequence[Point]]], band: float = 0.01) -> str:
    """The same rows as plain text (for results files)."""
    lines = [f"{'model':20s} {'dataset':8s} {'n':>5s}  {'policy':34s} {'setting':46s} {'acc':>6s} {'tokens':>8s} {'saved':>7s} {'harm':>5s}"]
    for model, dataset, n, points in groups:
        for label, p in group_rows(points, band):
            if p is None:
                lines.append(f"{model:20s} {dataset:8s} {n:5d}  {label:34s} {'none in band':46s}")
            else:
                lines.append(f"{model:20s} {dataset:8s} {n:5d}  {label:34s} {p.label[:46]:46s} {p.accuracy:6.3f} "
                             f"{p.tokens:8.0f} {100 * p.saved:6.1f}% {p.harmful_exits:5d}")
    return "\n".join(lines)


def plot_groups(groups: Sequence[tuple[str, str, int, Sequence[Point]]], path: str | os.PathLike[str]) -> Path:
    """Accuracy against mean tokens, one panel per model x dataset, every family shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(groups))
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, (model, dataset, n, points) in zip(axes.flat, groups):
        dyn = [p for p in points if p.family == "dynasor"]
        for interval in sorted({p.interval for p in dyn if p.interval is not None}):
            ps = sorted((p for p in dyn if p.interval == interval), key=lambda p: p.tokens)
            ax.plot([p.tokens for p in ps], [p.accuracy for p in ps], ".-", ms=3, lw=0.8, alpha=0.8,
                    label=f"Dynasor, every {interval} tok")
        for family, style, lw, label in (("events", "s-", 1.0, "Dynasor on event probes"), ("deer", "^-", 1.0, "DEER"),
                                         ("score", "k-", 1.8, "default's score, any threshold")):
            ps = sorted((p for p in points if p.family == family), key=lambda p: p.tokens)
            if ps:
                ax.plot([p.tokens for p in ps], [p.accuracy for p in ps], style, ms=4, lw=lw, label=label)
        for family, style, label in (("full", "k*", "full reasoning"), ("oracle", "gD", "oracle bound"),
                                     ("default", "ro", "certaindex default"), ("policy", "mP", "--policy")):
            for p in points:
                if p.family == family:
                    ax.plot([p.tokens], [p.accuracy], style, ms=9 if family != "full" else 12, label=label)
        full = next(p for p in points if p.family == "full")
        ax.axhline(full.accuracy - 0.01, color="grey", lw=0.6, ls=":")
        ax.set_title(f"{model} · {dataset} (n={n})", fontsize=9)
        ax.set_xlabel("mean tokens per trajectory (reasoning + probes/trials)", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen: dict[str, object] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(5, len(seen)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.12, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
