"""DEER-style trials taken live: at each "Wait" a score rule that reads trials (schedule part ``tr``)
sends the reasoning before the word plus the trial suffix, greedy with logprobs, reads the boxed
answer and its confidence, and feeds both to the score. Logic on scripted fakes; the last tests
replay recorded Governor trajectories of the shipped sample live and compare with the offline replay."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from certaindex.core.exit_score import read_trial, trial_confidence
from certaindex.engines.base import EngineConfigError, EngineError
from certaindex.evaluation.profiles import shipped_profiles
from certaindex.programs.cot import CoTConfig, solve_cot
from tests.fakes import ScriptedFakeEngine

QUESTION = "What is 6 * 7?"
SUFFIX = "\n**Final Answer**\n\\boxed"
# exits when the latest trial is confident (its mean token probability after the brace above ~0.99)
TRIAL_RULE = {"schedule": "bx+g8+tr", "threshold": 0.9, "trials": {"at": "Wait", "suffix": SUFFIX, "max": 30},
              "model": {"features": ["trial_conf"], "mean": [0.0], "scale": [1.0], "coef": [40.0], "intercept": -37.0}}


def with_waits(n: int, every: int = 11, at: int = 4) -> list[str]:
    """``n`` script tokens with a "Wait" token every ``every`` tokens (index ``at`` mod ``every``)."""
    return ["Wait" if i % every == at else (", " if i % every == (at + 1) % every else "step ") for i in range(n)]


def confident_from(start: int, answer: str = "42"):
    """Trial replies: unsure (token probability e^-3) before ``start`` reasoning tokens, then sure."""
    def reply(n: int) -> list[tuple[str, float]]:
        lp = -3.0 if n < start else -0.0005
        return [("{", -0.2), (answer if n >= start else "41", lp), ("}\n", lp)]
    return reply


# ------------------------------------------------------------------------------ reading a trial


def test_trial_confidence_is_deers_mean_after_the_opening_brace():
    lps = [math.log(0.5), math.log(0.9), math.log(0.7)]
    conf, minp = trial_confidence(lps)
    assert conf == pytest.approx(0.8) and minp == pytest.approx(0.5)
    assert trial_confidence([]) == (0.0, 0.0)
    assert trial_confidence([math.log(0.6)]) == pytest.approx((0.6, 0.6))  # one token: itself


def test_read_trial_reads_the_first_box_and_scores_every_token_as_the_records_do():
    """A trial that runs on past its box (``}, \\boxed{0}, ...``: no stop string there) is scored over
    all its tokens, as the R1-7B records are (``benchmarks/trial_confidence.py``)."""
    r = read_trial(["{\\", "frac", "{1}{2", "}},", " then"], [-0.1, -0.2, -0.3, -0.4, -5.0])
    assert r.answer == "\\frac{1}{2}" and r.answer_tokens == 5
    assert r.confidence == pytest.approx(sum(math.exp(x) for x in (-0.2, -0.3, -0.4, -5.0)) / 4)
    assert r.min_prob == pytest.approx(math.exp(-5.0))
    unclosed = read_trial(["{1", "+", "2"], [-0.1, -0.1, -2.0])
    assert unclosed.answer is None and unclosed.answer_tokens == 3
    assert read_trial(["{", " ", "}\n"], [0, 0, 0]).answer is None  # an empty box is no answer


def test_avg2_is_the_geometric_mean_after_the_opening_brace():
    lps = [math.log(0.5), math.log(0.9), math.log(0.4)]
    conf, minp = trial_confidence(lps, "avg2")
    assert conf == pytest.approx(math.sqrt(0.9 * 0.4)) and minp == pytest.approx(0.4)
    assert conf < trial_confidence(lps, "avg1")[0]  # below the arithmetic mean where the tokens differ
    with pytest.raises(ValueError, match="avg1, avg2"):
        trial_confidence(lps, "avg3")


def test_require_think_close_scores_up_to_think_close_and_zero_without_it():
    """The Qwen3-8B records' rule: the tokens after the brace up to and including ``</think>``; a trial
    that did not write ``</think>`` reads 0 (its answer is still read; min_prob over all its tokens)."""
    tokens, lps = ["{", "7", "}\n", "</think>", "\n\nThe"], [-0.5, -0.01, -0.2, -0.03, -4.0]
    closed = read_trial(tokens, lps, "avg2", require_think_close=True)
    assert closed.answer == "7" and closed.answer_tokens == 4
    assert closed.confidence == pytest.approx(math.exp((-0.01 - 0.2 - 0.03) / 3))
    assert closed.min_prob == pytest.approx(math.exp(-0.5))
    tokens, lps = ["{", "7", "}\n\n", "Wait", ",", " no"], [-0.1, -0.01, -0.02, -0.3, -0.01, -2.5]
    open_ = read_trial(tokens, lps, "avg2", require_think_close=True)
    assert open_.answer == "7" and open_.confidence == 0.0 and open_.answer_tokens == 6
    assert open_.min_prob == pytest.approx(math.exp(-2.5))
    assert read_trial(tokens, lps).confidence > 0  # the default (avg1) reads the trial without </think>


def test_the_definition_reproduces_the_recorded_deer_confidence():
    """The shipped sample's DEER records: the confidence recomputed from each trial's logprobs equals
    the recorded one, and the reader's min_prob is the same function's."""
    from certaindex.traces.governor import read_governor
    from tests.governor_fake import recorded_trials

    folder = _sample()
    trajs = {t.problem_id: t for t in read_governor(folder)[0].trajectories}
    n = 0
    for pid, trials in recorded_trials(folder).items():
        by_pos = {t.pos: t for t in trajs[pid].trials or ()}
        for rec in trials.values():
            conf, minp = trial_confidence([lp for _, lp in rec["tokens"]])
            assert conf == pytest.approx(rec["confidence"], abs=1e-12)
            assert by_pos[rec["pos"]].min_prob == pytest.approx(minp, abs=1e-15)
            reading = read_trial([t for t, _ in rec["tokens"]], [lp for _, lp in rec["tokens"]])
            assert reading.confidence == pytest.approx(rec["confidence"], abs=1e-12)
            assert reading.answer == (rec["answer"] or None)
            n += 1
    assert n > 500


# ------------------------------------------------------------------------------ live trials


@pytest.mark.parametrize("streaming", [False, True])
async def test_trials_are_taken_before_each_wait_with_logprobs_and_counted(streaming):
    engine = ScriptedFakeEngine(reasoning=with_waits(60), trial_reply=confident_from(10**6), streaming=streaming)
    config = CoTConfig(budget=200, probe_interval=8, probe_tokens=6, certainty=TRIAL_RULE)
    result = await solve_cot(engine, QUESTION, config)
    assert result.stop_reason == "finished"  # never confident: full reasoning
    waits = [i for i, t in enumerate(with_waits(60)) if t == "Wait"]
    assert [t.at_tokens for t in result.trials] == waits
    for req, at in zip(engine.trials, waits):
        reasoning = "".join(with_waits(60)[:at])
        assert req.prompt.endswith(reasoning + SUFFIX) and not req.prompt.endswith("Wait" + SUFFIX)
        assert req.logprobs == 1 and req.temperature == 0 and req.max_tokens == 20
    assert all(t.answer == "41" for t in result.trials)
    expected = (math.exp(-3.0) + math.exp(-3.0)) / 2
    assert all(t.confidence == pytest.approx(expected) and t.min_prob == pytest.approx(math.exp(-3.0))
               for t in result.trials)
    probe_calls = [c for c in engine.calls if engine._is_probe(c)]
    assert result.probe_tokens == 3 * len(waits) + 3 * len(probe_calls)  # trial tokens are probe cost
    assert result.total_tokens == (result.reasoning_tokens + result.overrun_tokens + result.probe_tokens
                                   + result.answer_tokens)


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_confident_trial_exits_with_its_answer_at_its_position(streaming):
    engine = ScriptedFakeEngine(reasoning=with_waits(200), trial_reply=confident_from(30), streaming=streaming,
                                ends_naturally=False)
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=200, probe_interval=8, certainty=TRIAL_RULE))
    first_sure = next(i for i, t in enumerate(with_waits(200)) if t == "Wait" and i >= 30)
    assert result.stop_reason == "certain" and result.answer == "42"
    assert result.reasoning_tokens == first_sure and result.trials[-1].at_tokens == first_sure
    assert streaming or result.overrun_tokens == 8 - first_sure % 8  # the rest of its chunk


AVG2_RULE = dict(TRIAL_RULE, trials=dict(TRIAL_RULE["trials"], confidence_rule="avg2", require_think_close=True))


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_think_close_rule_trial_runs_to_think_close_and_reads_zero_without_it(streaming):
    """Under ``require_think_close`` a trial asks to stop at ``</think>`` (not at the box's end); one
    that writes it is read by avg2 and can exit, one that does not reads 0 and cannot."""
    def reply(n: int) -> list[tuple[str, float]]:
        sure = [("{", -0.2), ("42", -0.0005), ("}\n", -0.0005), ("</think>", -0.0005)]
        unsure = [("{", -0.2), ("41", -0.0005), ("}\n\n", -0.0005), ("Wait", -0.0005)]  # sure, but open
        return sure if n >= 30 else unsure
    engine = ScriptedFakeEngine(reasoning=with_waits(200), trial_reply=reply, streaming=streaming, ends_naturally=False)
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=200, probe_interval=8, certainty=AVG2_RULE))
    assert all(req.stop == ("</think>",) and req.max_tokens == 20 for req in engine.trials)
    first_sure = next(i for i, t in enumerate(with_waits(200)) if t == "Wait" and i >= 30)
    assert result.stop_reason == "certain" and result.answer == "42" and result.reasoning_tokens == first_sure
    assert all(t.confidence == 0.0 and t.answer == "41" for t in result.trials[:-1]) and len(result.trials) > 1
    assert result.trials[-1].confidence == pytest.approx(math.exp(-0.0005))


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_trial_whose_box_never_closes_has_no_answer(streaming):
    """R1-7B MATH500 problem 389's recorded trials: ``{\\dfrac{\\sqrt{21}}`` and stop, every token
    shown, confidence ~1. The records read no answer there, so live must not submit the text cut
    inside the fraction: no exit, the trials' answers are None."""
    def reply(n: int) -> list[tuple[str, float]]:
        return [("{\\", 0.0), ("d", 0.0), ("frac", 0.0), ("{\\", 0.0), ("sqrt", 0.0), ("{", 0.0), ("2", 0.0),
                ("1", 0.0), ("}}", 0.0)]
    engine = ScriptedFakeEngine(reasoning=with_waits(60), trial_reply=reply, streaming=streaming)
    rule = dict(TRIAL_RULE, schedule="tr")  # trials only: a probe's answer would exit on the trial's confidence
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=200, probe_interval=8, certainty=rule))
    assert result.trials and all(t.answer is None and t.confidence == 1.0 for t in result.trials)
    assert result.stop_reason == "finished"


def test_shipped_qwen3_profile_reads_trials_by_the_records_rule_and_bad_rules_are_refused():
    from certaindex.evaluation.profiles import parse_profile

    trials = {p.name: (p.rule.get("trials") or {}) for p in shipped_profiles()}
    assert trials["qwen3"]["confidence_rule"] == "avg2" and trials["qwen3"]["require_think_close"] is True
    assert "confidence_rule" not in trials["r1-distill-qwen"]  # avg1, today's behaviour
    data = next(p for p in shipped_profiles() if p.name == "qwen3")
    base = {"format": "certaindex-profile", "version": 1, "name": "x", "models": ["x"], "probe_suffix": "s",
            "probe_interval": 64, "probe_tokens": 32}
    for bad, msg in (({"confidence_rule": "avg3"}, "confidence_rule"), ({"require_think_close": "yes"}, "require_think_close")):
        rule = dict(data.rule, trials=dict(data.rule["trials"], **bad))
        with pytest.raises(ValueError, match=msg):
            parse_profile(dict(base, rule=rule), "p.json")


async def test_no_trials_without_tr_in_the_schedule():
    engine = ScriptedFakeEngine(reasoning=with_waits(60))
    rule = dict(TRIAL_RULE, schedule="bx+g8")
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=200, probe_interval=8, certainty=rule))
    assert not engine.trials and not result.trials
    # Dynasor's rule takes none either
    engine = ScriptedFakeEngine(reasoning=with_waits(60))
    await solve_cot(engine, QUESTION, CoTConfig(budget=200, probe_interval=8))
    assert not engine.trials


async def test_waiting_is_no_wait_and_trials_stop_at_the_cap():
    script = ["step "] * 5 + ["Wait", "ing "] + ["step "] * 5 + ["Wait", ", "] * 6
    engine = ScriptedFakeEngine(reasoning=script, trial_reply=confident_from(10**6))
    rule = dict(TRIAL_RULE, trials=dict(TRIAL_RULE["trials"], max=4))
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=200, probe_interval=8, certainty=rule))
    assert [t.at_tokens for t in result.trials] == [12, 14, 16, 18]


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_failed_trial_falls_back_to_full_reasoning_or_fails(streaming):
    engine = ScriptedFakeEngine(reasoning=with_waits(60), fail_trials=True, streaming=streaming)
    config = CoTConfig(budget=200, probe_interval=8, certainty=TRIAL_RULE)
    result = await solve_cot(engine, QUESTION, config, probe_failures="full-reasoning")
    assert result.stop_reason == "finished" and result.probe_failures == 1 and not result.trials
    assert len(engine.trials) == 1  # early exit given up at the first failure: no more trials
    with pytest.raises(EngineError, match="scripted trial failure"):
        await solve_cot(ScriptedFakeEngine(reasoning=with_waits(60), fail_trials=True, streaming=streaming),
                        QUESTION, config)


async def test_an_engine_without_logprobs_is_refused_up_front_for_trials_only():
    config = CoTConfig(budget=200, probe_interval=8, certainty=TRIAL_RULE)
    engine = ScriptedFakeEngine(reasoning=with_waits(60), logprobs=False)
    with pytest.raises(EngineConfigError, match="need token logprobs"):
        await solve_cot(engine, QUESTION, config)
    assert not engine.calls
    # full reasoning and a rule without trials need none
    assert (await solve_cot(engine, QUESTION, replace(config, early_exit=False))).stop_reason == "finished"
    await solve_cot(engine, QUESTION, replace(config, certainty=dict(TRIAL_RULE, schedule="bx+g8")))


async def test_a_trial_answered_without_logprobs_is_a_failed_trial():
    class Liar(ScriptedFakeEngine):
        returns_logprobs = True  # says so, but returns none

    engine = Liar(reasoning=with_waits(60), logprobs=False)
    engine.__dict__["logprobs"] = False
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=200, probe_interval=8, certainty=TRIAL_RULE),
                             probe_failures="full-reasoning")
    assert result.probe_failures == 1 and result.stop_reason == "finished"
    assert result.probe_tokens >= 3  # the failed trial's tokens were generated: still counted


def test_scheduler_budgets_count_the_trials_and_only_the_probes_the_schedule_reads():
    from certaindex.scheduler.budgets import program_budget

    with_trials = CoTConfig(budget=640, probe_interval=64, probe_tokens=32, certainty=TRIAL_RULE)
    plain = replace(with_trials, certainty=dict(TRIAL_RULE, schedule="bx+g8"))
    assert with_trials.max_probes == plain.max_probes == 640 // 8 + 1 and with_trials.max_trials == 30
    assert program_budget(with_trials) == program_budget(plain) + 30 * 20
    only_trials = replace(with_trials, certainty=dict(TRIAL_RULE, schedule="bx+tc+tr"))
    assert only_trials.max_probes == 2  # the probe after </think> and the forced last one


# ------------------------------------------------------------------------------ recorded trajectories


def _sample() -> Path:
    import certaindex

    return Path(certaindex.__file__).parent / "data" / "governor_sample" / "r1-distill-qwen-7b__math500__seed_42"


# trajectories of the sample whose offline exit is a trial, a grid probe, a box the model wrote
EXITS = {"trial": [98, 258, 253], "grid": [31, 53], "box": [47, 42]}
ALL = os.environ.get("CERTAINDEX_LIVE_ALL") == "1"  # every trajectory of the sample, three thresholds (about 5 min)


@pytest.mark.parametrize("streaming, ids", [(False, [i for ids in EXITS.values() for i in ids]), (True, [98, 31, 47])])
async def test_a_live_run_over_recorded_trajectories_exits_where_offline_replay_does(streaming, ids):
    """The shipped r1-distill-qwen profile (bx+tc+g512+tr) run live on a fake engine that plays recorded
    R1-Distill-Qwen-7B trajectories (text, probes, DEER trials with their logprobs) exits at the same
    token, with the same answer and the same token count (reasoning to the exit plus every probe and
    trial) as ``certaindex evaluate``'s offline replay; at lower thresholds too. Exact, because the
    fake streams the model's own tokens (quicktok), with which the replay places the text's markers;
    the trials taken are the recorded ones (a trial where none was recorded fails the fake)."""
    pytest.importorskip("quicktok")
    from certaindex.evaluation.score_policy import observations
    from certaindex.traces.governor import read_governor
    from tests.governor_fake import live_beside_replay, recorded_trials

    profile = next(p for p in shipped_profiles() if p.name == "r1-distill-qwen")
    folder = _sample()
    trajs = {t.problem_id: t for t in read_governor(folder)[0].trajectories}
    trials = recorded_trials(folder)
    ids = sorted(trajs) if ALL else ids
    seen = set()
    for threshold in (profile.rule["threshold"], 0.9) + ((0.99,) if ALL else ()):
        rule = dict(profile.rule, threshold=threshold)
        for pid in ids:
            t = trajs[pid]
            result, offline = await live_beside_replay(profile, rule, t, trials[pid], streaming)
            taken = [(x.at_tokens, x.answer) for x in result.trials]
            recorded = [(o.pos, o.answer) for o in observations(t, "tr")]
            assert taken == recorded[: len(taken)]  # the trials taken are the recorded ones, in order
            if offline.exit_pos is None:
                assert result.stop_reason == "finished" and result.probe_tokens == offline.overhead, pid
                continue
            assert (result.stop_reason, result.reasoning_tokens, result.answer) == ("certain", offline.exit_pos, offline.answer), pid
            assert result.reasoning_tokens + result.probe_tokens == offline.tokens, pid  # probes and trials counted alike
            seen.add(next(o.src for o in observations(t, rule["schedule"]) if o.pos == offline.exit_pos))
    assert streaming or seen == {"trial", "grid", "box"}


# ------------------------------------------------------------------------------ over HTTP


def test_http_logprobs_in_both_server_formats():
    from certaindex.engines.http import parse_completion_choice

    legacy = {"choices": [{"text": "{7}\n", "finish_reason": "stop", "logprobs": {
        "tokens": ["{", "7", "}\n"], "token_logprobs": [-0.5, -0.01, -0.02], "top_logprobs": [{"{": -0.5}, None, None]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
    content = {"choices": [{"text": "{7}\n", "finish_reason": "stop", "logprobs": {"content": [
        {"token": "{", "logprob": -0.5, "top_logprobs": [{"token": "{", "logprob": -0.5}]},
        {"token": "7", "logprob": -0.01, "top_logprobs": []}, {"token": "}\n", "logprob": -0.02}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
    readings = []
    for payload in (legacy, content):
        choice, _ = parse_completion_choice(payload)
        readings.append(read_trial([t.token for t in choice.logprobs], [t.logprob for t in choice.logprobs]))
    assert readings[0] == readings[1] and readings[0].answer == "7"
    assert readings[0].confidence == pytest.approx((math.exp(-0.01) + math.exp(-0.02)) / 2)


async def test_trials_over_http_in_one_stream():
    from certaindex.engines.http import HTTPEngine
    from tests.misbehaving_upstream import FakeUpstream, serve_in_thread

    fake = FakeUpstream(token_delay_s=0.001, waits_every=20)
    rule = dict(TRIAL_RULE, schedule="bx+tr")
    with serve_in_thread(fake.app()) as url:
        async with HTTPEngine(url, chat_template="chatml", max_retries=0) as engine:
            assert engine.returns_logprobs
            config = CoTConfig(budget=400, probe_interval=64, certainty=rule, system_prompt=None)  # the fake counts "step "
            result = await solve_cot(engine, QUESTION, config)
    assert result.stop_reason == "certain" and result.answer == "42"
    assert [t.at_tokens for t in result.trials] == [19]  # the first "Wait, " is the 20th token
    trials = [r for r in fake.requests if r["kind"] == "trial"]
    assert len(trials) == 1 and trials[0]["logprobs"] == 1 and trials[0]["prompt"].endswith(SUFFIX)
    assert not [r for r in fake.requests if r["kind"] == "probe"]  # the schedule reads no probe
    assert result.probe_tokens == 3 and result.reasoning_tokens == 19


# ------------------------------------------------------------------------------ the command line


def test_solve_uses_the_trial_profile_of_an_r1_model_and_says_so(monkeypatch, capsys):
    import json

    from certaindex import cli

    qwen = next(p for p in shipped_profiles() if p.name == "r1-distill-qwen")
    script = with_waits(900)
    fake = ScriptedFakeEngine(reasoning=script, probe_suffix=qwen.probe_suffix, trial_reply=confident_from(300),
                              ends_naturally=False)
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: fake)
    code = cli.main(["solve", "What is 6 * 7?", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                     "--budget", "900", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["rule"].startswith("early-exit profile r1-distill-qwen")
    result = payload["result"]
    assert result["trials"] and len(result["trials"]) == len(fake.trials) <= 30
    assert all(r.prompt.endswith(qwen.rule["trials"]["suffix"]) for r in fake.trials)
    assert all(t["tokens"] == 3 for t in result["trials"])
    assert result["probe_tokens"] == sum(t["tokens"] for t in result["trials"]) + sum(
        p["tokens"] for p in result["probes"])  # trials and probes alike
    # an engine without logprobs: the conservative profile, and why
    plain = ScriptedFakeEngine(reasoning=script, probe_suffix=qwen.probe_suffix, logprobs=False, ends_naturally=False)
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: plain)
    cli.main(["solve", "What is 6 * 7?", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "--budget", "300", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["rule"].startswith("early-exit profile conservative") and "does not return" in payload["rule"]
    assert not plain.trials and not payload["result"]["trials"]


def test_an_embedded_r1_model_is_created_with_logprobs_for_its_trials(monkeypatch):
    """The embedded engine keeps the logits trials need only when created so: solve asks for them when
    the profile picked from the model's file name reads trials: the R1 file's family profile, and the
    generic profile the tiny default model gets (it matches no family; issue 19); not under a profile
    without trials."""
    from certaindex import cli

    asked = []

    def fake_make_engine(*args, **kwargs):
        asked.append(kwargs.get("logprobs"))
        return ScriptedFakeEngine(reasoning=["4 "], logprobs=bool(kwargs.get("logprobs")))

    monkeypatch.setattr(cli.common, "make_engine", fake_make_engine)
    cli.main(["solve", "What is 2+2?", "--engine", "embedded:/models/DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf", "--quiet"])
    cli.main(["solve", "What is 2+2?", "--quiet"])
    cli.main(["solve", "What is 2+2?", "--profile", "conservative", "--quiet"])
    assert asked == [True, True, False]


@pytest.mark.parametrize("streaming", [False, True])
async def test_under_a_score_rule_the_scheduler_hears_the_score_after_each_probe_and_trial(streaming):
    """What the scheduler hears is the score of each probe's and trial's observation (as the
    simulator's plans carry it), not Dynasor's agreeing-run progress, which would read 1.0 here once
    k probes agreed."""
    from certaindex.scheduler.runtime import cot_reporter

    heard: list[float] = []
    session = type("FakeSession", (), {"report": lambda self, c: heard.append(c)})()
    events: list = []
    report = cot_reporter(session)  # type: ignore[arg-type]

    def on_event(event) -> None:
        events.append(event)
        report(event)

    engine = ScriptedFakeEngine(reasoning=with_waits(60), trial_reply=confident_from(10**6), streaming=streaming,
                                probe_reply=lambda n: ["41", "}"])
    config = CoTConfig(budget=200, probe_interval=8, k=2, certainty=TRIAL_RULE)
    result = await solve_cot(engine, QUESTION, config, on_event=on_event)
    probes = [e.probe for e in events if e.kind == "probe"]
    trials = [e.trial for e in events if e.kind == "trial"]
    assert len(probes) >= 3 and trials == result.trials and len(trials) >= 3
    unsure = 1 / (1 + math.exp(-(40 * (2 * math.exp(-3.0) / 2) - 37)))  # the score of an unsure latest trial
    assert all(t.certaindex == pytest.approx(unsure) for t in trials)
    assert all(p.certaindex == pytest.approx(unsure if p.at_tokens > trials[0].at_tokens else 1 / (1 + math.exp(37)))
               for p in probes)
    assert heard == [getattr(e, e.kind).certaindex for e in events if e.kind in ("probe", "trial")]
    assert max(heard) < 0.01  # Dynasor's progress would be 1.0 after two agreeing probes


def test_a_profile_fitted_on_one_familys_trials_reads_them_by_that_familys_recorded_rule():
    """A refit of ``qwen3`` keeps avg2 / require_think_close; R1-7B alone or both families pooled
    (``generic``) read avg1, the default."""
    from certaindex.core.exit_score import ScoreModel
    from certaindex.evaluation.profiles import parse_profile
    from certaindex.evaluation.score_policy import Calibration, score_profile_json

    cal = Calibration("bx+tr", ScoreModel(["trial_conf"], [0.0], [1.0], [1.0], 0.0), 0.9, 0.02, 0.1, 10, 10, 0,
                      0.3, "ltt", {"math500": 10})
    qwen = score_profile_json("q", ["qwen3"], ["qwen3-8b"], cal, "cmd")["rule"]["trials"]
    assert qwen["confidence_rule"] == "avg2" and qwen["require_think_close"] is True
    for models in (["r1-distill-qwen-7b"], ["r1-distill-qwen-7b", "qwen3-8b"]):
        data = score_profile_json("g", ["x"], models, cal, "cmd")
        assert "confidence_rule" not in data["rule"]["trials"] and "require_think_close" not in data["rule"]["trials"]
        parse_profile(data)
    assert parse_profile(score_profile_json("q", ["qwen3"], ["qwen3-8b"], cal, "cmd")).rule["trials"] == qwen
