"""The self-consistency study on recorded rollouts: replay the grid, choose settings on one half of
the problems, report them on the other half, and render the result as text, JSON and a PNG.

The goal it checks (issue 13): the majority-of-n accuracy at no more than half of its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from certaindex.evaluation.sc_replay import (
    Policy,
    PolicyRuns,
    ReplayProblem,
    Summary,
    choose,
    default_grid,
    replay,
    split_problems,
    summarise,
)

__all__ = ["DatasetStudy", "Study", "data_facts", "plot_study", "render_study", "run_study", "study_json"]

FAMILIES = ("sc-early", "sc-anytime", "combined", "sc-early stream", "combined stream")


@dataclass
class DatasetStudy:
    dataset: str
    choose_problems: int
    report_problems: int
    baseline_choose: Summary  # majority of n on the choose half
    baseline_report: Summary
    baseline_all: Summary
    majority_report: list[Summary]  # majority of k = 1..n on the report half
    majority_all: list[Summary]
    # (tolerance, family) -> (on the choose half, on the report half)
    chosen: dict[tuple[float, str], tuple[Summary, Summary]]
    grid_all: list[Summary]  # every setting on all problems (in-sample: for the picture only)
    # (tolerance, family) -> [(split seed, accuracy gap, token ratio)] on the report half of other splits
    sweep: dict[tuple[float, str], list[tuple[int, float, float]]] = field(default_factory=dict)

    def goal(self, tolerance: float, family: str) -> tuple[bool, float, float]:
        """(reached, accuracy minus majority-of-n, tokens / majority-of-n tokens) on the report half.
        Reached means no accuracy lost at all (whatever tolerance chose it) and at most half the tokens."""
        report = self.chosen[(tolerance, family)][1]
        gap = report.accuracy - self.baseline_report.accuracy
        ratio = report.tokens / self.baseline_report.tokens
        return gap >= -1e-12 and ratio <= 0.5, gap, ratio


@dataclass
class Study:
    orders: int
    seed: int
    split_seed: int
    n: int
    tolerances: tuple[float, ...]
    sweep_seeds: tuple[int, ...]
    datasets: list[DatasetStudy] = field(default_factory=list)


def _pick(runs: Sequence[PolicyRuns], baseline: PolicyRuns, family: str, choose_keys: set, report_keys: set,
          tolerance: float) -> tuple[Summary, Summary]:
    members = [r for r in runs if r.policy.name == family]
    pick = choose([summarise(r, choose_keys) for r in members], summarise(baseline, choose_keys), tolerance)
    run = next(r for r in members if r.policy is pick.policy)
    return pick, summarise(run, report_keys)


def run_study(problems: Sequence[ReplayProblem], orders: int = 200, seed: int = 0, split_seed: int = 0,
              grid: Sequence[Policy] | None = None, tolerances: Sequence[float] = (0.0, 0.01),
              sweep_seeds: Sequence[int] = ()) -> Study:
    """Replay ``grid`` (default :func:`default_grid`) on every problem, then per dataset, tolerance
    and family choose a setting on the choose half of split ``split_seed`` and summarise it on the
    report half. ``sweep_seeds``: other splits, each chosen and reported the same way, to show how
    much the answer depends on which problems fell in which half."""
    n = min(len(p.problem.rollouts) for p in problems)
    if n < 2:
        raise ValueError(f"every problem needs at least 2 rollouts, one has {n}")
    if any(not 0 <= t < 1 for t in tolerances) or not tolerances:
        raise ValueError(f"tolerances must lie in [0, 1), got {list(tolerances)}")
    policies = list(grid) if grid is not None else default_grid(n)
    runs = replay(problems, policies, orders=orders, seed=seed)
    study = Study(orders=orders, seed=seed, split_seed=split_seed, n=n, tolerances=tuple(tolerances),
                  sweep_seeds=tuple(sweep_seeds))
    majority = [r for r in runs if r.policy.name == "majority"]
    baseline = next((r for r in majority if r.policy.config.n == n), None)
    if baseline is None:
        raise ValueError(f"the grid has no majority of {n}")
    families = [f for f in FAMILIES if any(r.policy.name == f for r in runs)]
    splits = {s: split_problems([p.key for p in problems], seed=s) for s in (split_seed, *sweep_seeds)}
    for dataset in sorted({p.key[0] for p in problems}):
        every = {p.key for p in problems if p.key[0] == dataset}
        mine_choose, mine_report = every & splits[split_seed][0], every & splits[split_seed][1]
        if not mine_choose or not mine_report:
            raise ValueError(f"dataset {dataset} has too few problems ({len(every)}) to split in halves")
        chosen = {(t, f): _pick(runs, baseline, f, mine_choose, mine_report, t) for t in tolerances for f in families}
        d = DatasetStudy(
            dataset=dataset,
            choose_problems=len(mine_choose),
            report_problems=len(mine_report),
            baseline_choose=summarise(baseline, mine_choose),
            baseline_report=summarise(baseline, mine_report),
            baseline_all=summarise(baseline, every),
            majority_report=[summarise(r, mine_report) for r in majority],
            majority_all=[summarise(r, every) for r in majority],
            chosen=chosen,
            grid_all=[summarise(r, every) for r in runs if r.policy.name != "majority"],
        )
        for s in sweep_seeds:
            pick_keys, report_keys = every & splits[s][0], every & splits[s][1]
            base = summarise(baseline, report_keys)
            for t in tolerances:
                for f in families:
                    _c, r = _pick(runs, baseline, f, pick_keys, report_keys, t)
                    d.sweep.setdefault((t, f), []).append((s, r.accuracy - base.accuracy, r.tokens / base.tokens))
        study.datasets.append(d)
    return study


def _row(s: Summary) -> str:
    return (
        f"{s.accuracy:6.3f} [{s.accuracy_p5:.3f}, {s.accuracy_p95:.3f}]  {s.tokens:9,.0f} [{s.tokens_p5:,.0f}, "
        f"{s.tokens_p95:,.0f}]  {s.probe_tokens:7,.0f} {s.probe_prefill:7,.0f}  {s.latency:8,.0f}  {s.samples:4.2f}"
    )


_HEAD = "accuracy [5th, 95th pct]     tokens/problem [5th, 95th pct]     probe  prefill   latency  samples"


def _name(family: str, label: str, width: int = 46) -> str:
    return f"{family}: {label}".ljust(width)


def render_study(study: Study, facts: Sequence[str] = ()) -> str:
    """The study as a plain-text report (what benchmarks/results/sc-rollouts/sc-rollouts.txt holds)."""
    lines = [*facts]
    tol = ", ".join(f"{t:g}" for t in study.tolerances)
    lines.append(
        f"{study.orders} seeded orders of the rollouts per problem (seed {study.seed}). Settings chosen per dataset "
        f"and program on a seeded half of the problems (split seed {study.split_seed}): the cheapest setting whose "
        f"accuracy there is within a tolerance ({tol}) of majority of {study.n} there; reported on the other half."
    )
    lines.append(
        "tokens = generated tokens per problem (reasoning + probe decoding), mean over orders; probe = the "
        "probes' decoded share of it; prefill = probe suffix tokens prefilled on top (not in tokens); "
        "latency = tokens of the longest sample in each round, summed over rounds (streamed: time to the decision)."
    )
    lines.append(f"goal: majority-of-{study.n} accuracy (no loss) at no more than half of its tokens (x0.5).")
    for d in study.datasets:
        base = d.baseline_report
        lines += ["", f"== {d.dataset}: report half, {d.report_problems} problems ({d.choose_problems} other problems "
                      f"chose the settings)", ""]
        lines.append(f"  {'':46s}{_HEAD}")
        for s in d.majority_report:
            lines.append(f"  {s.policy.label:46s}{_row(s)}")
        for t in study.tolerances:
            lines += ["", f"  chosen within {t:g} of majority of {study.n} on the choose half; on the report half "
                          f"(goal: >= {base.accuracy:.3f} at <= {base.tokens / 2:,.0f} tokens):"]
            for (tt, family), (picked, report) in d.chosen.items():
                if tt != t:
                    continue
                reached, gap, ratio = d.goal(t, family)
                lines.append(f"  {_name(family, report.policy.label)}{_row(report)}")
                lines.append(
                    f"  {'':46s}-> accuracy {gap:+.3f}, tokens x{ratio:.3f}: goal {'REACHED' if reached else 'not reached'}"
                    f" (choose half: {picked.accuracy - d.baseline_choose.accuracy:+.3f} at "
                    f"x{picked.tokens / d.baseline_choose.tokens:.3f})"
                )
        if d.sweep:
            lines += ["", f"  the same choice on {len(study.sweep_seeds)} other seeded splits (report half each): "
                          "mean accuracy gap, mean token ratio [min, max], splits reaching the goal"]
            for (t, family), rows in d.sweep.items():
                gaps = [g for _s, g, _r in rows]
                ratios = [r for _s, _g, r in rows]
                hits = sum(g >= -1e-12 and r <= 0.5 for _s, g, r in rows)
                lines.append(
                    f"  within {t:<5g} {family:16s} accuracy {sum(gaps) / len(gaps):+.3f} [{min(gaps):+.3f}, "
                    f"{max(gaps):+.3f}]  tokens x{sum(ratios) / len(ratios):.3f} [{min(ratios):.3f}, "
                    f"{max(ratios):.3f}]  goal {hits}/{len(rows)}"
                )
        lines += ["", f"  all {d.choose_problems + d.report_problems} problems, IN-SAMPLE (no split): majority of "
                      f"{study.n}, then each program's cheapest grid setting within each tolerance of it:"]
        lines.append(f"  {'majority of ' + str(study.n):46s}{_row(d.baseline_all)}")
        for t in study.tolerances:
            for family in dict.fromkeys(f for _t, f in d.chosen):
                members = [s for s in d.grid_all if s.policy.name == family]
                best = choose(members, d.baseline_all, t)
                lines.append(f"  {_name(family, best.policy.label + f' (within {t:g})')}{_row(best)}")
    return "\n".join(lines) + "\n"


def study_json(study: Study, facts: Sequence[str] = ()) -> dict:
    """Everything the text shows, plus every grid setting on all problems."""
    out: dict = {"orders": study.orders, "seed": study.seed, "split_seed": study.split_seed, "n": study.n,
                 "tolerances": list(study.tolerances), "sweep_seeds": list(study.sweep_seeds),
                 "facts": list(facts), "datasets": {}}
    for d in study.datasets:
        out["datasets"][d.dataset] = {
            "choose_problems": d.choose_problems,
            "report_problems": d.report_problems,
            "baseline": {"choose": d.baseline_choose.as_dict(), "report": d.baseline_report.as_dict(),
                         "all": d.baseline_all.as_dict()},
            "majority_report": [s.as_dict() for s in d.majority_report],
            "majority_all": [s.as_dict() for s in d.majority_all],
            "chosen": [
                {"tolerance": t, "family": family, "choose": c.as_dict(), "report": r.as_dict(),
                 "goal_reached": d.goal(t, family)[0], "accuracy_gap": d.goal(t, family)[1],
                 "token_ratio": d.goal(t, family)[2],
                 "other_splits": [{"split_seed": s, "accuracy_gap": g, "token_ratio": q}
                                  for s, g, q in d.sweep.get((t, family), [])]}
                for (t, family), (c, r) in d.chosen.items()
            ],
            "grid_all": [s.as_dict() for s in d.grid_all],
        }
    return out


_COLOURS = {"sc-early": "tab:blue", "sc-anytime": "tab:purple", "combined": "tab:red",
            "sc-early stream": "tab:cyan", "combined stream": "tab:orange"}


def plot_study(study: Study, path: str | Path) -> None:
    """Accuracy against mean tokens per problem, one column per dataset: the top row is the report
    half (majority of k and each chosen setting, bars = 5th-95th percentile over orders), the bottom
    row all problems with every grid setting (in-sample)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(study.datasets)
    fig, axes = plt.subplots(2, cols, figsize=(6.5 * cols, 9), squeeze=False)
    for c, d in enumerate(study.datasets):
        for row, (curve, title) in enumerate(((d.majority_report, "report half"), (d.majority_all, "all problems, in-sample"))):
            ax = axes[row][c]
            ax.plot([s.tokens for s in curve], [s.accuracy for s in curve], "k-o", ms=4, label="majority of k")
            for k, s in enumerate(curve, start=1):
                ax.annotate(str(k), (s.tokens, s.accuracy), textcoords="offset points", xytext=(3, -10), fontsize=7)
            base = curve[-1]
            ax.axvline(base.tokens / 2, color="grey", ls=":", lw=1, label="half the tokens of majority of n")
            ax.axhline(base.accuracy, color="grey", ls="--", lw=1)
            if row == 0:
                for (tol, family), (_picked, s) in d.chosen.items():
                    ax.errorbar(s.tokens, s.accuracy,
                                xerr=[[max(0.0, s.tokens - s.tokens_p5)], [max(0.0, s.tokens_p95 - s.tokens)]],
                                yerr=[[max(0.0, s.accuracy - s.accuracy_p5)], [max(0.0, s.accuracy_p95 - s.accuracy)]],
                                fmt="s" if tol == 0 else "^", color=_COLOURS.get(family, "tab:green"), capsize=3,
                                label=f"{family} (within {tol:g})")
            else:
                for family, colour in _COLOURS.items():
                    pts = [s for s in d.grid_all if s.policy.name == family]
                    if pts:
                        ax.scatter([s.tokens for s in pts], [s.accuracy for s in pts], s=10, alpha=0.5,
                                   color=colour, label=family)
            ax.set_title(f"{d.dataset}: {title} ({d.report_problems if row == 0 else d.report_problems + d.choose_problems} problems)")
            ax.set_xlabel("generated tokens per problem (mean over orders)")
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right", ncol=2 if row == 0 else 1)
    fig.suptitle(f"Self-consistency on recorded rollouts ({study.orders} orders per problem)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def data_facts(problems: Sequence[ReplayProblem], probe_ks: Sequence[int] = (4, 8, 16, 24)) -> list[str]:
    """What the rollouts hold before any program runs: per dataset, single-rollout accuracy (our
    grading and the source's), majority of all rollouts in recorded order, tokens per problem, how
    often two rollouts agree, and what probe exit alone does to one rollout."""
    from certaindex.evaluation.sc_replay import majority_policies, replay_order, run_sample

    lines = []
    for dataset in sorted({p.key[0] for p in problems}):
        mine = [p for p in problems if p.key[0] == dataset]
        rollouts = [r for p in mine for r in p.problem.rollouts]
        ours = sum(p.book.correct(r.final_answer) for p in mine for r in p.problem.rollouts) / len(rollouts)
        source = sum(r.source_correct for r in rollouts) / len(rollouts)
        n = min(len(p.problem.rollouts) for p in mine)
        config = majority_policies(n)[-1].config
        majority = 0
        for p in mine:
            samples = [run_sample(r, p.book, None) for r in p.problem.rollouts]
            majority += p.book.correct(replay_order(samples, list(range(n)), config).answer)
        tokens = sum(r.tokens_used for r in rollouts) / len(mine)
        lines.append(
            f"{dataset}: {len(mine)} problems x {len(rollouts) / len(mine):g} rollouts; single rollout right "
            f"{ours:.3f} (source's grading {source:.3f}); majority of {n} in rollout order right "
            f"{majority / len(mine):.3f}; {tokens:,.0f} tokens per problem"
        )
        agree = right_pairs = 0.0
        for p in mine:
            finals = [p.book.rep(r.final_answer) for r in p.problem.rollouts]
            pairs = [(a, b) for i, a in enumerate(finals) for b in finals[i + 1:]]
            agree += sum(a is not None and a == b for a, b in pairs) / len(pairs)
            right_pairs += sum(a is not None and a == b and p.book.correct(a) for a, b in pairs) / len(pairs)
        lines.append(
            f"  two random rollouts of a problem give the same answer {agree / len(mine):.3f} of the time "
            f"(the same right answer {right_pairs / len(mine):.3f}, a shared wrong one {(agree - right_pairs) / len(mine):.3f})"
        )
        parts = []
        for k in probe_ks:
            runs = [(p, run_sample(r, p.book, k)) for p in mine for r in p.problem.rollouts]
            acc = sum(p.book.correct(s.answer) for p, s in runs) / len(runs)
            cost = sum(s.tokens for _p, s in runs) / len(runs)
            share = sum(s.probe_tokens for _p, s in runs) / max(1, sum(s.tokens for _p, s in runs))
            parts.append(f"k={k} {acc:.3f} at x{cost / (tokens / n):.3f} (probes {share:.1%})")
        lines.append(f"  one rollout with probe exit (Dynasor, k agreeing probes on the 128-token grid): right "
                     f"{ours:.3f} in full; " + "; ".join(parts))
    return lines
