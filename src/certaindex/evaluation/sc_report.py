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
    chosen: dict[str, tuple[Summary, Summary]]  # family -> (on the choose half, on the report half)
    grid_all: list[Summary]  # every setting on all problems (in-sample: for the picture only)

    def goal(self, family: str) -> tuple[bool, float, float]:
        """(reached, accuracy minus majority-of-n, tokens / majority-of-n tokens) on the report half."""
        report = self.chosen[family][1]
        gap = report.accuracy - self.baseline_report.accuracy
        ratio = report.tokens / self.baseline_report.tokens
        return gap >= -1e-12 and ratio <= 0.5, gap, ratio


@dataclass
class Study:
    orders: int
    seed: int
    split_seed: int
    n: int
    datasets: list[DatasetStudy] = field(default_factory=list)


def run_study(problems: Sequence[ReplayProblem], orders: int = 200, seed: int = 0, split_seed: int = 0,
              grid: Sequence[Policy] | None = None) -> Study:
    """Replay ``grid`` (default :func:`default_grid`) on every problem, then per dataset choose each
    family's setting on the choose half and summarise it on the report half."""
    n = min(len(p.problem.rollouts) for p in problems)
    if n < 2:
        raise ValueError(f"every problem needs at least 2 rollouts, one has {n}")
    policies = list(grid) if grid is not None else default_grid(n)
    runs = replay(problems, policies, orders=orders, seed=seed)
    choose_keys, report_keys = split_problems([p.key for p in problems], seed=split_seed)
    study = Study(orders=orders, seed=seed, split_seed=split_seed, n=n)
    majority = [r for r in runs if r.policy.name == "majority"]
    baseline = next((r for r in majority if r.policy.config.n == n), None)
    if baseline is None:
        raise ValueError(f"the grid has no majority of {n}")
    for dataset in sorted({p.key[0] for p in problems}):
        every = {p.key for p in problems if p.key[0] == dataset}
        mine_choose, mine_report = every & choose_keys, every & report_keys
        if not mine_choose or not mine_report:
            raise ValueError(f"dataset {dataset} has too few problems ({len(every)}) to split in halves")
        chosen: dict[str, tuple[Summary, Summary]] = {}
        base_choose = summarise(baseline, mine_choose)
        for family in FAMILIES:
            members = [r for r in runs if r.policy.name == family]
            if not members:
                continue
            pick = choose([summarise(r, mine_choose) for r in members], base_choose)
            run = next(r for r in members if r.policy is pick.policy)
            chosen[family] = (pick, summarise(run, mine_report))
        study.datasets.append(
            DatasetStudy(
                dataset=dataset,
                choose_problems=len(mine_choose),
                report_problems=len(mine_report),
                baseline_choose=base_choose,
                baseline_report=summarise(baseline, mine_report),
                baseline_all=summarise(baseline, every),
                majority_report=[summarise(r, mine_report) for r in majority],
                majority_all=[summarise(r, every) for r in majority],
                chosen=chosen,
                grid_all=[summarise(r, every) for r in runs if r.policy.name != "majority"],
            )
        )
    return study


def _row(s: Summary) -> str:
    return (
        f"{s.accuracy:6.3f} [{s.accuracy_p5:.3f}, {s.accuracy_p95:.3f}]  {s.tokens:9,.0f} [{s.tokens_p5:,.0f}, "
        f"{s.tokens_p95:,.0f}]  {s.probe_tokens:7,.0f} {s.probe_prefill:7,.0f}  {s.latency:8,.0f}  {s.samples:4.2f}"
    )


_HEAD = "accuracy [5th, 95th pct]     tokens/problem [5th, 95th pct]   probe  prefill   latency  samples"


def render_study(study: Study, facts: Sequence[str] = ()) -> str:
    """The study as a plain-text report (what benchmarks/results/sc-rollouts.txt holds)."""
    lines = [*facts]
    lines.append(
        f"{study.orders} seeded orders of the rollouts per problem (seed {study.seed}); settings chosen per "
        f"dataset and program on a seeded half of the problems (split seed {study.split_seed}): the cheapest "
        f"setting at least as accurate as majority of {study.n} there; reported on the other half."
    )
    lines.append(
        "tokens = generated tokens per problem (reasoning + probe decoding), mean over orders; probe = the "
        "probes' decoded share of it; prefill = probe suffix tokens prefilled on top (not in tokens); "
        "latency = tokens of the longest sample in each round, summed over rounds."
    )
    for d in study.datasets:
        base = d.baseline_report
        lines += ["", f"== {d.dataset}: {d.report_problems} report problems ({d.choose_problems} used to choose)", ""]
        lines.append(f"{'':34s}{_HEAD}")
        for s in d.majority_report:
            lines.append(f"  {s.policy.label:32s}{_row(s)}")
        lines.append("")
        lines.append(f"  chosen on the choose half -> on the report half; goal: accuracy >= {base.accuracy:.3f} "
                     f"at <= {base.tokens / 2:,.0f} tokens (half of majority of {study.n})")
        for family, (picked, report) in d.chosen.items():
            reached, gap, ratio = d.goal(family)
            lines.append(f"  {family + ': ' + report.policy.label:32s}{_row(report)}")
            lines.append(
                f"  {'':32s}accuracy {gap:+.3f} vs majority of {study.n}, tokens x{ratio:.3f}: goal "
                f"{'REACHED' if reached else 'not reached'} (choose half: {picked.accuracy:.3f} at "
                f"x{picked.tokens / d.baseline_choose.tokens:.3f})"
            )
        lines += ["", f"  all {d.choose_problems + d.report_problems} problems (in-sample; the chosen settings "
                      f"again, then the cheapest grid setting of each program at full majority accuracy):"]
        every = {s.policy.label + s.policy.name: s for s in d.grid_all}
        lines.append(f"  {'majority of ' + str(study.n):32s}{_row(d.baseline_all)}")
        for family, (_picked, report) in d.chosen.items():
            s = every[report.policy.label + report.policy.name]
            lines.append(f"  {family + ': ' + s.policy.label:32s}{_row(s)}")
        for family in d.chosen:
            members = [s for s in d.grid_all if s.policy.name == family]
            best = choose(members, d.baseline_all)
            lines.append(f"  best in-sample {family + ': ' + best.policy.label:17s}{_row(best)}")
    return "\n".join(lines) + "\n"


def study_json(study: Study, facts: Sequence[str] = ()) -> dict:
    """Everything the text shows, plus every grid setting on all problems."""
    out: dict = {"orders": study.orders, "seed": study.seed, "split_seed": study.split_seed, "n": study.n,
                 "facts": list(facts), "datasets": {}}
    for d in study.datasets:
        out["datasets"][d.dataset] = {
            "choose_problems": d.choose_problems,
            "report_problems": d.report_problems,
            "baseline": {"choose": d.baseline_choose.as_dict(), "report": d.baseline_report.as_dict(),
                         "all": d.baseline_all.as_dict()},
            "majority_report": [s.as_dict() for s in d.majority_report],
            "majority_all": [s.as_dict() for s in d.majority_all],
            "chosen": {
                family: {"choose": c.as_dict(), "report": r.as_dict(),
                         "goal_reached": d.goal(family)[0], "accuracy_gap": d.goal(family)[1],
                         "token_ratio": d.goal(family)[2]}
                for family, (c, r) in d.chosen.items()
            },
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
                for family, (_picked, s) in d.chosen.items():
                    ax.errorbar(s.tokens, s.accuracy,
                                xerr=[[s.tokens - s.tokens_p5], [s.tokens_p95 - s.tokens]],
                                yerr=[[s.accuracy - s.accuracy_p5], [s.accuracy_p95 - s.accuracy]],
                                fmt="s", color=_COLOURS.get(family, "tab:green"), capsize=3,
                                label=f"{family}: {s.policy.label}")
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
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Self-consistency on recorded rollouts ({study.orders} orders per problem)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def data_facts(problems: Sequence[ReplayProblem]) -> list[str]:
    """What the rollouts hold before any program runs: per dataset, single-rollout accuracy (our
    grading and the source's), majority of all rollouts in recorded order, tokens per problem."""
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
    return lines
