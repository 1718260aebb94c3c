"""Replay of the sampling programs on small hand-made rollouts with known votes, and `evaluate-sc`."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from certaindex.evaluation.sc_replay import (
    Policy,
    ReplayProblem,
    choose,
    majority_policies,
    problem_orders,
    replay,
    replay_order,
    replay_streaming,
    run_sample,
    split_problems,
    summarise,
)
from certaindex.evaluation.sc_report import render_study, run_study
from certaindex.programs.self_consistency import SCConfig, decide
from certaindex.traces.rollouts import AnswerBook, Grader, Probe, Problem, Rollout

GRADER = Grader()


def rollout(final: str | None, tokens: int, probes: tuple = (), rid: int = 0, hesitant: tuple = (),
            decode: int = 10, prefill: int = 8, key: tuple[str, int] = ("math500", 1), target: str = "3") -> Rollout:
    """A rollout probed every 128 tokens; ``probes`` are the probe answers in order."""
    made = tuple(
        Probe(128 * (i + 1), f"{a}}}", a, i in hesitant, decode, prefill) for i, a in enumerate(probes)
    )
    return Rollout(key[0], key[1], rid, target, tokens, True, final, False, made)


def problem(rollouts: list[Rollout], target: str = "3") -> ReplayProblem:
    first = rollouts[0]
    p = Problem(first.dataset, first.problem_id, target, tuple(rollouts))
    return ReplayProblem(p, AnswerBook.for_problem(p, GRADER))


def samples(rp: ReplayProblem, probe_k: int | None = None):
    return [run_sample(r, rp.book, probe_k) for r in rp.problem.rollouts]


def test_all_agree_stops_after_the_first_round_and_pays_only_it() -> None:
    rp = problem([rollout("3", 100 * (i + 1), rid=i) for i in range(8)])
    config = SCConfig(n=8, first_round=3, round_size=2, rule="entropy", threshold=0.9)
    out = replay_order(samples(rp), [4, 0, 7, 1, 2, 3, 5, 6], config)
    assert (out.samples, out.rounds, out.answer) == (3, 1, "3")
    assert out.tokens == 500 + 100 + 800 and out.latency_tokens == 800


def test_disagreement_keeps_sampling_to_the_budget_and_latency_sums_round_maxima() -> None:
    answers = ["1", "2", "1", "2", "1", "2", "4", "5"]
    rp = problem([rollout(a, 10 * (i + 1), rid=i) for i, a in enumerate(answers)])
    config = SCConfig(n=8, first_round=2, round_size=2, rule="entropy", threshold=1.0)
    out = replay_order(samples(rp), list(range(8)), config)
    assert out.samples == 8 and out.rounds == 4 and out.tokens == sum(10 * (i + 1) for i in range(8))
    assert out.latency_tokens == 20 + 40 + 60 + 80
    assert out.answer == "1"  # the 3-3 tie goes to the answer seen first


def test_majority_of_k_draws_exactly_k_and_votes_with_equivalent_answers() -> None:
    rp = problem([rollout(a, 50, rid=i) for i, a in enumerate(["7", "3", "3.0", "7", "7", "9"])])
    runs = samples(rp)
    assert runs[1].answer == runs[2].answer  # "3" and "3.0" are one class
    outs = [replay_order(runs, list(range(6)), p.config) for p in majority_policies(6)]
    assert [o.samples for o in outs] == [1, 2, 3, 4, 5, 6]
    assert [o.tokens for o in outs] == [50 * k for k in range(1, 7)]
    # 7 | 7,3 (tie: first seen) | 7,3,3 | 7,3,3,7 (tie) | ...
    assert [rp.book.correct(o.answer) for o in outs] == [False, False, True, False, False, False]


def test_anytime_rule_cannot_stop_on_8_samples_at_alpha_005_but_can_at_025() -> None:
    rp = problem([rollout("3", 10, rid=i) for i in range(8)])
    strict = SCConfig(n=8, first_round=2, round_size=1, rule="anytime", alpha=0.05)
    loose = SCConfig(n=8, first_round=2, round_size=1, rule="anytime", alpha=0.25)
    # (2^c - 1) / c >= 7 / alpha: never for c <= 8 at 0.05 (140); at 0.25 (28) first at c = 8.
    assert replay_order(samples(rp), list(range(8)), strict).samples == 8
    assert decide(["3"] * 8, strict)[1] is None and decide(["3"] * 7, loose)[1] is None
    assert decide(["3"] * 8, loose)[1] == "significant"


def test_probe_exit_costs_tokens_to_the_exit_plus_its_probes() -> None:
    exits = rollout("5", 2000, probes=("9", "3", "3", "3", "5"), decode=6, prefill=8)
    (sample,) = samples(problem([exits]), probe_k=3)
    assert sample.exited_early and sample.answer == "3" and sample.probes_used == 4
    assert sample.reasoning_tokens == 4 * 128 and sample.probe_tokens == 4 * 6 and sample.probe_prefill == 4 * 8
    assert sample.tokens == 512 + 24


def test_hesitation_or_no_agreement_runs_to_the_end_and_pays_every_probe() -> None:
    hesitates = rollout("5", 700, probes=("3", "3", "3", "4", "5"), hesitant=(1,), decode=7)
    (sample,) = samples(problem([hesitates]), probe_k=3)
    assert not sample.exited_early and sample.answer == "5"
    assert sample.reasoning_tokens == 700 and sample.probe_tokens == 5 * 7
    (full,) = samples(problem([hesitates]), probe_k=None)
    assert full.tokens == 700 and full.probe_tokens == 0


def test_combined_program_round_costs_add_the_early_exits() -> None:
    quick = [rollout("3", 5000, probes=("3",) * 10, rid=i) for i in range(4)]
    rp = problem(quick)
    config = SCConfig(n=4, first_round=2, round_size=1, rule="entropy", threshold=0.9)
    out = replay_order(samples(rp, probe_k=2), [0, 1, 2, 3], config)
    # Each sample exits at its 2nd probe: 256 reasoning tokens + 2 probes of 10 decoded tokens.
    assert out.samples == 2 and out.tokens == 2 * (256 + 20) and out.probe_tokens == 40
    assert out.probe_prefill == 2 * 2 * 8


def test_streaming_cancels_the_rest_and_counts_what_they_generated() -> None:
    rp = problem([rollout("3", t, rid=i) for i, t in enumerate([100, 150, 1000, 1000])])
    config = SCConfig(n=4, first_round=3, round_size=1, rule="entropy", threshold=0.9)
    out = replay_streaming(samples(rp), [0, 1, 2, 3], config)
    # Sample 0 finishes at 100 (one answer is not a vote yet) and sample 3 starts in its place; sample 1
    # finishes at 150 and agrees: sample 2 had generated 150 tokens by then, sample 3 50.
    assert out.answer == "3" and out.latency_tokens == 150
    assert out.tokens == 100 + 150 + 150 + 50 and out.samples == 4


def test_orders_are_permutations_reproducible_by_seed() -> None:
    a = problem_orders(("math500", 7), 8, 50, seed=3)
    assert a.shape == (50, 8)
    assert all(sorted(row) == list(range(8)) for row in a)
    assert np.array_equal(a, problem_orders(("math500", 7), 8, 50, seed=3))
    assert not np.array_equal(a, problem_orders(("math500", 7), 8, 50, seed=4))
    assert not np.array_equal(a, problem_orders(("aime24", 7), 8, 50, seed=3))


def mixed_problems() -> list[ReplayProblem]:
    """Problems whose votes differ: unanimous right, split, unanimous wrong."""
    votes = [["3"] * 4, ["3", "3", "4", "4"], ["3", "4", "4", "5"], ["4"] * 4]
    out = []
    for pid, answers in enumerate(votes):
        key = ("math500", pid)
        out.append(problem([rollout(a, 100 + 10 * i, rid=i, key=key, probes=(a,) * 3) for i, a in enumerate(answers)]))
    return out


def test_replay_is_reproducible_and_paired_across_policies() -> None:
    problems = mixed_problems()
    policies = [*majority_policies(4), Policy("sc-early", "t=1", SCConfig(n=4, first_round=2, round_size=1, threshold=1.0))]
    first = replay(problems, policies, orders=30, seed=5)
    again = replay(problems, policies, orders=30, seed=5)
    for x, y in zip(first, again):
        assert np.array_equal(x.correct, y.correct) and np.array_equal(x.tokens, y.tokens)
    every = {p.key for p in problems}
    majority4 = summarise(first[3], every)
    assert majority4.tokens == pytest.approx(sum(100 + 110 + 120 + 130 for _ in problems) / 4)
    assert majority4.accuracy_p5 <= majority4.accuracy <= majority4.accuracy_p95
    early = summarise(first[4], every)
    assert early.tokens < majority4.tokens  # the unanimous problems stop after 2 samples


def test_split_is_a_stratified_partition_and_choose_prefers_cheap_and_accurate() -> None:
    keys = [("a", i) for i in range(10)] + [("b", i) for i in range(5)]
    pick, report = split_problems(keys, seed=1)
    assert pick.isdisjoint(report) and pick | report == set(keys)
    assert sum(k[0] == "a" for k in pick) == 5 and sum(k[0] == "b" for k in pick) == 2
    assert split_problems(keys, seed=1) == (pick, report)
    problems = mixed_problems()
    runs = replay(problems, majority_policies(4), orders=10)
    every = {p.key for p in problems}
    summaries = [summarise(r, every) for r in runs]
    best = choose(summaries, summaries[-1])
    assert best.accuracy >= summaries[-1].accuracy
    assert best.tokens == min(s.tokens for s in summaries if s.accuracy >= summaries[-1].accuracy)


def test_study_reports_each_family_on_the_report_half() -> None:
    problems = mixed_problems()
    grid = [*majority_policies(4), Policy("sc-early", "t=1", SCConfig(n=4, first_round=2, round_size=1, threshold=1.0)),
            Policy("combined", "k=2", SCConfig(n=4, first_round=2, round_size=1, threshold=1.0), probe_k=2)]
    study = run_study(problems, orders=10, grid=grid)
    (d,) = study.datasets
    assert d.choose_problems + d.report_problems == 4
    assert set(d.chosen) == {(t, f) for t in (0.0, 0.01) for f in ("sc-early", "combined")}
    text = render_study(study, ["fact line"])
    assert "fact line" in text and "goal" in text and "majority of 4" in text


# ------------------------------------------------------------------------------------ the CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certaindex.cli", "evaluate-sc", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def write_rollouts(path: Path, extra_line: str | None = None) -> Path:
    lines = []
    for dataset in ("aime24", "math500"):
        for pid in range(2):
            for rid, answer in enumerate(["3", "3", "4"]):
                probes = [{"probe_id": i + 1, "token_position": 128 * (i + 1), "probe_text": answer + "}",
                           "answer": answer} for i in range(3)]
                lines.append(json.dumps({"problem_id": pid, "rollout_id": rid, "dataset": dataset, "target": "3",
                                         "tokens_used": 400 + rid, "finished_naturally": True, "final_answer": answer,
                                         "final_correct": answer == "3", "probes": probes}))
    if extra_line is not None:
        lines.append(extra_line)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def assert_one_error_line(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    assert_one_error_line(run_cli(str(tmp_path / "absent.jsonl.gz")), "no such file")
    bad = write_rollouts(tmp_path / "bad.jsonl.gz", extra_line="{oops")
    assert_one_error_line(run_cli(str(bad)), f"{bad}:13: not valid JSON")
    good = write_rollouts(tmp_path / "good.jsonl.gz")
    assert_one_error_line(run_cli(str(good), "--orders", "0"), "--orders must be at least 1")
    assert_one_error_line(run_cli(str(good), "--png", str(tmp_path / "nowhere" / "x.png")), "does not exist")
    assert_one_error_line(run_cli(str(good), "--tolerances", "0,2"), "fractions in [0, 1)")
    assert_one_error_line(run_cli(str(good), "--splits", "-1"), "--splits must be >= 0")


def test_cli_writes_report_json_and_png(tmp_path: Path) -> None:
    good = write_rollouts(tmp_path / "good.jsonl.gz")
    proc = run_cli(str(good), "--orders", "5", "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png"))
    assert proc.returncode == 0, proc.stderr
    assert "== aime24" in proc.stdout and "== math500" in proc.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["datasets"]) == {"aime24", "math500"}
    assert data["datasets"]["math500"]["baseline"]["all"]["samples"] == 3
    assert (tmp_path / "r.png").stat().st_size > 1000
