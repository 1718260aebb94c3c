"""``certaindex calibrate DIR`` on a folder of trace files: the replayed rule matches the replay
engine, Learn-then-Test certifies when enough traces agree and says how many more it needs when
they are too few, and the profile it writes runs through ``--calibration``."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from certaindex.core.calibration import binomial_cdf, min_examples_for_certificate
from certaindex.core.prompting import read_probe_answer
from certaindex.evaluation.evaluate import probe_grid, replay_outcomes, Policy
from certaindex.evaluation.profiles import load_profile
from certaindex.evaluation.self_calibration import calibrate_dynasor, replay_dynasor, traces_to_certify
from certaindex.traces.format import (
    Chunk, FinalAnswer, ProbeRecord, TraceHeader, TraceRecord, TraceSettings, TraceSet, write_traces,
)
from certaindex.traces.shadow import SHADOW_DATASET

G = 4
SUFFIX_SETTINGS = dict(probe_tokens=8, system_prompt=None, logprobs=None, seed=None)


def probe(at: int, answer: str | None) -> ProbeRecord:
    text, finish = (answer, "stop") if answer is not None else ("let me think", "length")
    record = ProbeRecord(at, text, 2 if answer is not None else 8, finish, answer, False)
    assert read_probe_answer(TraceSettings(granularity=G, budget=8).probe_suffix, text, finish == "stop") == answer
    return record


def trace(i: int, answers: list[str | None], final: str, budget: int, finished: bool = True, gold: str = "") -> TraceRecord:
    """Probes answering ``answers`` every G tokens; then the model ends with ``final`` (or the budget does)."""
    chunks = [Chunk(f"c{j} ", G, "length", probe=probe(G * (j + 1), a)) for j, a in enumerate(answers)]
    if finished:
        chunks.append(Chunk(f"so \\boxed{{{final}}}", 3, "stop"))
        end = FinalAnswer("reasoning", final)
    else:
        assert len(answers) * G == budget and answers[-1] == final
        last = chunks[-1].probe
        end = FinalAnswer("budget-probe", last.answer, last.text, last.tokens, last.finish_reason)
    question = f"question {i}"
    return TraceRecord(id=f"q{i}", sample=0, seed=0, question=question, gold=gold, prompt=f"User: {question}\nAssistant: ",
                       prompt_tokens=5, thinking=False, chunks=tuple(chunks), finish_reason=chunks[-1].finish_reason,
                       stop="finished" if finished else "budget", final=end, correct=bool(gold) and gold == final)


def random_traces(n: int, seed: int, budget: int = 48) -> list[TraceRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        final = str(rng.randint(1, 3))
        length = rng.randint(2, budget // G - 1)
        answers = [rng.choice(["1", "2", "3", None, final, final]) for _ in range(length)]
        finished = rng.random() < 0.8
        if not finished:
            answers = answers + [final] * (budget // G - len(answers))
        out.append(trace(i, answers, final, budget, finished, gold=str(rng.randint(1, 3))))
    return out


def test_the_replayed_rule_matches_the_replay_engine():
    budget = 48
    records = random_traces(40, seed=3, budget=budget)
    settings = TraceSettings(granularity=G, budget=budget, **SUFFIX_SETTINGS)
    traces = TraceSet(TraceHeader("m", "e", settings), records)
    policies = probe_grid(settings, [4, 8, 12], [1, 2, 3])
    engine_runs = asyncio.run(replay_outcomes(traces, policies + [Policy("full", G)]))
    for policy in policies:
        ours = [replay_dynasor(r, policy.probe_interval, policy.k, budget) for r in records]
        theirs = engine_runs[policy]
        assert [(o.answer, o.tokens) for o in ours] == [(t.answer, t.tokens) for t in theirs], policy.label
        assert [o.exited for o in ours] == [t.stop_reason == "certain" for t in theirs]
    assert [(r.final.answer, r.full_tokens) for r in records] == \
        [(t.answer, t.tokens) for t in engine_runs[Policy("full", G)]]


def test_traces_to_certify_is_the_first_count_that_passes():
    alpha, delta = 0.05, 0.1
    assert traces_to_certify(0, 10, alpha, delta) == min_examples_for_certificate(alpha, delta)
    need = traces_to_certify(3, 100, alpha, delta)
    assert need is not None and need > 100
    assert binomial_cdf(int(need * 0.03 + 1e-9), need, alpha) <= delta
    assert binomial_cdf(int((need - 1) * 0.03 + 1e-9), need - 1, alpha) > delta
    assert traces_to_certify(10, 100, alpha, delta) is None  # a 10% rate never passes alpha = 5%
    assert traces_to_certify(0, 500, alpha, delta) == 500  # already enough


def agreeing(n: int, start: int = 0) -> list[TraceRecord]:
    """Traces whose probes settle on the model's final answer after a wrong first guess."""
    return [trace(start + i, ["5"] + ["7"] * 6, "7", budget=64) for i in range(n)]


def test_ltt_certifies_with_enough_agreeing_traces_and_counts_what_is_missing():
    grid = [(p.probe_interval, p.k) for p in probe_grid(TraceSettings(granularity=G, budget=64), None, [1, 2, 3, 4])]
    few = calibrate_dynasor(agreeing(10), [64] * 10, grid, "full", 0.05, 0.1)
    assert few.chosen is None
    assert few.next_target is not None and few.n + few.more_needed == min_examples_for_certificate(0.05, 0.1)
    enough = calibrate_dynasor(agreeing(50), [64] * 50, grid, "full", 0.05, 0.1)
    assert enough.chosen is not None and enough.chosen.harmful == 0 and enough.chosen.saved > 0
    # k=1 exits on the wrong first guess: harmful on every trace, never certified.
    assert (enough.chosen.interval, enough.chosen.k) != (4, 1)
    assert all(c.harmful == 50 for c in enough.candidates if (c.interval, c.k) == (4, 1))


def test_gold_reference_counts_harm_only_where_full_reasoning_was_right():
    record = trace(0, ["5", "5", "7"], "7", budget=64, gold="7")
    wrong_full = trace(1, ["5", "5", "7"], "7", budget=64, gold="5")
    grid = [(4, 2)]
    gold = calibrate_dynasor([record, wrong_full], [64, 64], grid, "gold", 0.5, 0.5)
    full = calibrate_dynasor([record, wrong_full], [64, 64], grid, "full", 0.5, 0.5)
    assert gold.candidates[0].harmful == 1 and full.candidates[0].harmful == 2


# -- the command --------------------------------------------------------------------------------


def write_folder(folder: Path, records: list[TraceRecord], model: str = "my-model", name: str = "a") -> Path:
    settings = TraceSettings(granularity=G, budget=64, **SUFFIX_SETTINGS)
    folder.mkdir(parents=True, exist_ok=True)
    return write_traces(folder / f"{name}.jsonl", TraceHeader(model, "fake", settings, dataset=SHADOW_DATASET), records)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000"}  # rich wraps at the terminal's width: one error, one line
    return subprocess.run([sys.executable, "-m", "certaindex.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_calibrate_folder_writes_a_profile_that_loads_or_says_how_many_more(tmp_path):
    write_folder(tmp_path / "few", agreeing(10))
    result = cli("calibrate", str(tmp_path / "few"), "-o", str(tmp_path / "few.json"))
    assert result.returncode == 3, result.stderr
    need = min_examples_for_certificate(0.05, 0.1) - 10
    assert f"needs about {need} more traces" in " ".join(result.stdout.split())
    assert "differs from the model's own full-reasoning answer" in " ".join(result.stdout.split())
    assert not (tmp_path / "few.json").exists()

    write_folder(tmp_path / "many", agreeing(30), name="a")
    write_folder(tmp_path / "many", agreeing(30, start=30), name="b")
    out = tmp_path / "profile.json"
    result = cli("calibrate", str(tmp_path / "many"), "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "certified:" in result.stdout
    profile = load_profile(out)
    assert profile.kind == "dynasor" and profile.probe_interval % G == 0 and profile.matches("my-model")
    assert profile.calibration["reference"] == "full" and profile.calibration["n"] == 60

    from certaindex.cli import build_parser
    from certaindex.cli.common import cot_config

    args = build_parser().parse_args(["solve", "q", "--calibration", str(out)])
    config = cot_config(args, model_name="my-model")
    assert (config.k, config.probe_interval) == (profile.rule["k"], profile.probe_interval)


def test_calibrate_folder_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("calibrate", str(tmp_path / "empty"))
    assert result.returncode == 2 and "no trace files" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    write_folder(tmp_path / "mixed", agreeing(3), model="model-a", name="a")
    write_folder(tmp_path / "mixed", agreeing(3, start=3), model="model-b", name="b")
    result = cli("calibrate", str(tmp_path / "mixed"))
    assert result.returncode == 2 and "model-a" in result.stderr and "model-b" in result.stderr

    path = write_folder(tmp_path / "bad", agreeing(3))
    lines = path.read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # a cut line
    path.write_text("\n".join(lines) + "\n")
    result = cli("calibrate", str(tmp_path / "bad"))
    assert result.returncode == 2 and re.search(rf"{re.escape(str(path))}:3: ", result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1

    result = cli("calibrate", str(tmp_path / "mixed" / ".."), "--reference", "gold")
    assert result.returncode == 2

    cut = tmp_path / "cut"  # an interrupted gzip recording: the message names the command-line flag
    cut.mkdir()
    whole = write_traces(cut / "a.jsonl.gz", TraceHeader("my-model", "fake", TraceSettings(granularity=G, budget=64,
                         **SUFFIX_SETTINGS), dataset=SHADOW_DATASET), agreeing(30))
    whole.write_bytes(whole.read_bytes()[:-40])
    result = cli("calibrate", str(cut))
    assert result.returncode == 2 and "--allow-truncated" in result.stderr and "allow_truncated=True" not in result.stderr.replace(
        "(allow_truncated=True in Python)", "")


def test_record_files_with_gold_answers_are_calibrated_against_gold(tmp_path):
    records = [trace(i, ["5"] + ["7"] * 6, "7", budget=64, gold="7") for i in range(30)]
    settings = TraceSettings(granularity=G, budget=64, **SUFFIX_SETTINGS)
    (tmp_path / "rec").mkdir()
    write_traces(tmp_path / "rec" / "gsm8k.jsonl.gz", TraceHeader("my-model", "fake", settings, dataset="gsm8k"), records)
    result = cli("calibrate", str(tmp_path / "rec"), "-o", str(tmp_path / "p.json"), "--alpha", "0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrong where full reasoning's was right (gold answers)" in result.stdout
    assert load_profile(tmp_path / "p.json").calibration["reference"] == "gold"


# -- the certainty score on trace folders (issue 19 item 5) --------------------------------------


def long_trace(i: int, g: int = 64, chunks: int = 16, settle: int = 2) -> TraceRecord:
    """A trace probed every ``g`` tokens: a wrong first guess, then the final answer "7" from
    probe ``settle`` on, written as \\boxed{7} in the reasoning half-way through."""
    answers = ["5"] * settle + ["7"] * (chunks - 1 - settle)
    body = [Chunk(f"step {j} " + ("so \\boxed{7} " if j == chunks // 2 else "") + "x " * 40, g, "length",
                  probe=ProbeRecord(g * (j + 1), a, 2, "stop", a, False)) for j, a in enumerate(answers)]
    body.append(Chunk("done \\boxed{7}", g, "stop"))
    return TraceRecord(id=f"q{i}", sample=0, seed=0, question=f"question {i}", gold="", prompt="p", prompt_tokens=5,
                       thinking=False, chunks=tuple(body), finish_reason="stop", stop="finished",
                       final=FinalAnswer("reasoning", "7"), correct=False)


def test_traces_become_trajectories_for_the_score():
    from certaindex.evaluation.self_calibration import as_trajectories, score_schedule

    r = long_trace(0, chunks=6)
    (t,) = as_trajectories([r], "my-model", "shadow", [4 * 64], "full")
    assert [p.pos for p in t.probes] == [64, 128, 192]  # below the budget the reasoning went on from
    assert t.target == "7" and t.tokens_used == r.full_tokens and t.trials is None and "\\boxed{7}" in t.full_text
    assert as_trajectories([r], "my-model", "shadow", [10_000], "gold")[0].target == ""
    assert score_schedule("bx+tc+g512+tr", 64, has_trials=False) == "bx+tc+g512"
    assert score_schedule("bx+g512", 128, has_trials=False) == "bx+g512"
    assert score_schedule("bx+g192+ev", 128, has_trials=True) == "bx+g128"
    assert score_schedule("bx+g512", 16, has_trials=False) is None  # the score's grid is 64 tokens


def test_calibrate_folder_tries_the_score_and_writes_the_certified_candidate(tmp_path):
    """With probes every 64 tokens, calibrate also re-certifies the starting profile's score and
    refits one; each candidate is tested at delta / 3 and the certified one saving most is written."""
    settings = TraceSettings(granularity=64, budget=4096, **SUFFIX_SETTINGS)
    (tmp_path / "shadow").mkdir()
    write_traces(tmp_path / "shadow" / "a.jsonl.gz", TraceHeader("my-model", "fake", settings, dataset=SHADOW_DATASET),
                 [long_trace(i) for i in range(150)])
    out = tmp_path / "p.json"
    result = cli("calibrate", str(tmp_path / "shadow"), "-o", str(out))
    text = " ".join(result.stdout.split())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "threshold re-certified on every trace" in text and "score refitted on a third" in text
    assert "each of the 3 candidates tested at delta 0.0333" in text
    # the starting profile's score, its threshold re-certified on all 150 traces (none spent fitting)
    assert re.search(r"score, threshold re-certified on every trace \(bx\+[^)]*g512[^)]*\): threshold [0-9.]+ "
                     r"certified on 150 traces, 0 harmful", text), text
    profile = load_profile(out)
    assert profile.calibration["candidates_tried"] == 3 and profile.calibration["n"] == 150
    assert profile.kind in ("score", "dynasor") and profile.probe_interval % 64 == 0
    if profile.kind == "score":
        assert profile.rule["threshold"] is not None and "tr" not in profile.rule["schedule"].split("+")
        assert profile.probe_suffix == settings.probe_suffix and profile.calibration["candidate"] in ("start", "refit")
