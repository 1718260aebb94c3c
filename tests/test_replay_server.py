"""The replay server (issue 13): recorded Governor trajectories answered as completions, paced by a
cost model with batching; and ``certaindex serve`` in front of it running real reasoning programs.

Everything runs on the shipped 50-trajectory sample (R1-Distill-Qwen-7B, MATH500, seed 42). No
assertion reads a wall clock: pacing is checked by the server's own step counters."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

import httpx
import pytest

from certaindex.core.answers import answers_equal, is_hesitant
from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX, DEFAULT_SYSTEM_PROMPT, PROBE_STOPS, read_probe_answer
from certaindex.engines.chat_template import ChatTemplate
from certaindex.serving.batch_clock import BatchClock, Sequence_
from certaindex.serving.costmodel import CostModel
from certaindex.traces.governor import read_governor
from certaindex.traces.governor_engine import (
    DEER_SUFFIX,
    GOVERNOR_PROBE_SUFFIX,
    GovernorReplay,
    OffTrajectory,
    ReplayError,
    UnknownProblem,
)
from certaindex.traces.tokenmap import quicktok_available
from tests.conftest import free_port, server_process

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"
COST = ROOT / "benchmarks" / "results" / "gpu" / "cost-model-h100-qwen2.5-7b.json"

needs_vocab = pytest.mark.skipif(not quicktok_available("qwen3"), reason="quicktok-v1 not installed (tokenizer extra)")


@pytest.fixture(scope="module")
def trajs():
    return [t for run in read_governor(SAMPLE) for t in run.trajectories]


@pytest.fixture(scope="module")
def replay(trajs):
    return GovernorReplay(trajs)


def prompt_of(traj, system: bool = True) -> str:
    messages = ([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] if system else []) + [
        {"role": "user", "content": traj.problem.strip()}]
    return ChatTemplate.named("deepseek-r1").render(messages)


def text_at(replay, traj, tokens: int) -> str:
    """The reasoning after the template's <think>\\n, up to ``tokens`` tokens of the recorded text."""
    played = replay.played(traj)
    return traj.full_text[len("<think>\n"):int(played.ends[tokens - 1])]


# ------------------------------------------------------------------------------------ engine


@needs_vocab
def test_a_fresh_prompt_streams_the_trajectorys_own_text_and_continuations_go_on_from_there(replay, trajs):
    traj = trajs[0]
    first = replay.answer(prompt_of(traj), max_tokens=100, stop=("</think>",))
    assert first.kind == "continuation" and first.tokens == 100 and first.finish_reason == "length"
    assert traj.full_text.startswith("<think>\n" + first.text)
    rest = replay.answer(prompt_of(traj) + first.text, max_tokens=100_000, stop=("</think>",))
    assert rest.finish_reason == "stop" and rest.position == first.position + 100
    reasoning = first.text + rest.text
    assert traj.full_text.startswith("<think>\n" + reasoning + "</think>")
    answer = replay.answer(prompt_of(traj) + reasoning + "</think>\n\n", max_tokens=100_000)
    assert traj.full_text.endswith(answer.text) and answer.finish_reason == "stop"
    # every token of the recording once, less what the prompts wrote: <think>\n (2 tokens, the template's) and
    # the blank line after </think> (1, the program's); the end-of-text token may not be in the text
    assert first.tokens + rest.tokens + answer.tokens + 3 in (traj.tokens_used, traj.tokens_used - 1)
    assert first.prompt_tokens < rest.prompt_tokens == first.prompt_tokens + 100


@needs_vocab
def test_a_probe_is_answered_from_the_recorded_probe_at_or_before_its_position(replay, trajs):
    traj = trajs[1]
    grid = [p.pos for p in traj.probes]
    n = grid[2] + 30  # between two recorded probes
    reply = replay.answer(prompt_of(traj) + text_at(replay, traj, n) + DEFAULT_PROBE_SUFFIX, max_tokens=32,
                          stop=PROBE_STOPS)
    recorded = next(p for p in traj.probes if p.pos == grid[2])
    assert reply.kind == "probe" and reply.position == n and reply.recorded_position == grid[2]
    assert read_probe_answer(DEFAULT_PROBE_SUFFIX, reply.text, reply.finish_reason == "stop") == recorded.answer
    assert reply.tokens == min(32, recorded.out_tokens)
    assert not is_hesitant(reply.text)
    # the Governor's own suffix is a probe too; prefix caching: the suffix is all a probe adds
    other = replay.answer(prompt_of(traj) + text_at(replay, traj, n) + GOVERNOR_PROBE_SUFFIX, max_tokens=32)
    assert other.kind == "probe" and other.recorded_position == grid[2]
    assert reply.cached_tokens < reply.prompt_tokens


@needs_vocab
def test_a_probe_before_the_first_recorded_one_reads_no_answer_not_a_later_probes(replay, trajs):
    traj = trajs[1]
    first = min(p.pos for p in traj.probes)
    for n in (0, first // 2):
        reasoning = text_at(replay, traj, n) if n else ""
        reply = replay.answer(prompt_of(traj) + reasoning + DEFAULT_PROBE_SUFFIX, max_tokens=20, stop=PROBE_STOPS)
        # the template's <think> and newline are the recording's first 2 tokens
        assert reply.kind == "probe" and reply.position == max(n, 2) and reply.recorded_position is None
        assert read_probe_answer(DEFAULT_PROBE_SUFFIX, reply.text, reply.finish_reason == "stop") is None
        assert reply.tokens == 20 and reply.finish_reason == "length"
    at_first = replay.answer(prompt_of(traj) + text_at(replay, traj, first) + DEFAULT_PROBE_SUFFIX, max_tokens=32)
    assert at_first.recorded_position == first


@needs_vocab
def test_a_probe_reads_the_grid_even_on_an_event_probes_position(replay, trajs):
    traj, event = next((t, e) for t in trajs for e in t.events if e.pos % 64 > 2)
    grid = max(p.pos for p in traj.probes if p.pos <= event.pos)
    reply = replay.answer(prompt_of(traj) + text_at(replay, traj, event.pos) + DEFAULT_PROBE_SUFFIX, max_tokens=32)
    assert reply.recorded_position == grid


@needs_vocab
def test_a_hesitating_probe_reads_as_its_answer_and_as_hesitant(trajs):
    traj = trajs[2]
    probes = [dataclasses.replace(p, certain=False) if i == 3 else p for i, p in enumerate(traj.probes)]
    doubtful = dataclasses.replace(traj, probes=probes)
    replay = GovernorReplay([doubtful])
    pos = probes[3].pos
    reply = replay.answer(prompt_of(doubtful) + text_at(replay, doubtful, pos) + DEFAULT_PROBE_SUFFIX,
                          max_tokens=32, stop=PROBE_STOPS)
    hit = reply.finish_reason == "stop" and any(reply.text.endswith(s) for s in PROBE_STOPS)
    assert read_probe_answer(DEFAULT_PROBE_SUFFIX, reply.text, hit) == probes[3].answer
    assert is_hesitant(reply.text)


@needs_vocab
def test_a_deer_trial_reads_as_the_recorded_one(replay, trajs):
    from certaindex.core.exit_score import read_trial

    traj = next(t for t in trajs if t.trials and len(t.trials) > 2)
    trial = traj.trials[2]
    reply = replay.answer(prompt_of(traj) + text_at(replay, traj, trial.pos + 5) + DEER_SUFFIX, max_tokens=64,
                          stop=PROBE_STOPS, logprobs=1)  # as the live chain of thought asks
    assert reply.kind == "trial" and reply.recorded_position == trial.pos
    reading = read_trial([p.token_text for p in reply.pieces], [p.logprob for p in reply.pieces])
    assert reading.confidence == pytest.approx(trial.confidence, abs=1e-9)
    assert reading.min_prob == pytest.approx(trial.min_prob, abs=1e-9)
    assert answers_equal(reading.answer, trial.answer)


@needs_vocab
def test_a_trial_at_a_wait_gets_that_waits_recorded_trial(replay, trajs):
    """A live trial's reasoning ends where its "Wait" starts (``trigger_char_position``). Its recorded
    ``token_position`` can be one more than the tokens that text holds (the text before " wait"
    encoded alone ends on a space token): it must still get that trial, not the one before."""
    served, shifted = 0, 0
    for traj in trajs:
        played = replay.played(traj)
        for trial in traj.trials or ():
            assert trial.char is not None
            reasoning = traj.full_text[len("<think>\n"):trial.char]
            reply = replay.answer(prompt_of(traj) + reasoning + DEER_SUFFIX, max_tokens=20, stop=PROBE_STOPS,
                                  logprobs=1)
            assert reply.recorded_position == trial.pos, (traj.problem_id, trial.pos)
            served += 1
            shifted += played.token_at(trial.char) < trial.pos
    assert served > 500 and shifted > 50  # the shift is common, so the test can fail


@needs_vocab
def test_the_answer_after_a_trajectory_cut_at_its_budget_is_what_evaluates_full_reasoning_submits(trajs):
    from certaindex.core.answers import extract_answer

    def reasoning(t):
        return t.full_text.split("</think>")[0]

    # one whose reasoning's own answer differs from its last probe's (the answer replayed before)
    traj = next(t for t in trajs if extract_answer(reasoning(t)) is not None
                and not answers_equal(extract_answer(reasoning(t)), max(t.probes, key=lambda p: p.pos).answer))
    cut = dataclasses.replace(traj, full_text=reasoning(traj), finish_reason="length")
    submitted = extract_answer(cut.full_text)  # evaluate's full reasoning answer (--final-answer extracted)
    reply = GovernorReplay([cut]).answer(prompt_of(cut) + cut.full_text[8:] + "\n</think>\n\n", max_tokens=64)
    assert answers_equal(extract_answer(reply.text), submitted), reply.text


def test_an_unknown_problem_and_a_foreign_reasoning_are_refused(replay, trajs):
    with pytest.raises(UnknownProblem, match="no recorded problem"):
        replay.answer("What is the capital of France?", max_tokens=5)
    with pytest.raises(OffTrajectory, match="does not continue"):
        replay.answer(prompt_of(trajs[0]) + "Let me think about something else entirely.", max_tokens=5)


def test_an_off_track_prompt_after_an_unrecognised_template_is_refused_not_replayed_from_the_start(replay, trajs):
    traj = trajs[0]
    head = traj.problem.strip()
    # no template ending anywhere after the problem: the empty rest fits every text, yet says nothing
    with pytest.raises(OffTrajectory, match="no chat template ending was recognised"):
        replay.answer(head + "\nLet me think about something else entirely.", max_tokens=5)
    with pytest.raises(OffTrajectory, match="no chat template ending was recognised"):
        replay.answer(head + "\nSolution:", max_tokens=5)
    # an instruction between the problem and a known template ending: the reasoning starts at the template
    instructed = head + "\nAnswer in a box.<\uff5cAssistant\uff5c><think>\n"
    with pytest.raises(OffTrajectory, match="does not continue"):
        replay.answer(instructed + "Let me think about something else entirely.", max_tokens=5)
    fresh = replay.answer(instructed, max_tokens=5)
    assert fresh.kind == "continuation" and fresh.position <= 2 and traj.full_text.startswith("<think>\n" + fresh.text)
    on_track = replay.answer(instructed + traj.full_text[8:200], max_tokens=5)
    assert traj.full_text[200:].startswith(on_track.text)


@needs_vocab
def test_seeds_of_one_problem_go_round_robin_and_a_continuation_keeps_its_own(trajs):
    traj = trajs[3]
    other = dataclasses.replace(traj, seed=43, full_text="<think>\nA different line of thought. " + traj.full_text[8:])
    replay = GovernorReplay([traj, other])
    fresh = [replay.answer(prompt_of(traj), max_tokens=4) for _ in range(4)]
    assert [r.trajectory.split("/")[2] for r in fresh] == ["seed_42", "seed_43", "seed_42", "seed_43"]
    theirs = replay.answer(prompt_of(traj) + "A different line", max_tokens=4)
    ours = replay.answer(prompt_of(traj) + traj.full_text[8:60], max_tokens=4)
    assert theirs.trajectory.endswith(f"seed_43/{traj.problem_id}") and ours.trajectory.endswith(f"seed_42/{traj.problem_id}")
    first = GovernorReplay([traj, other], seed_rule="first")
    assert {first.answer(prompt_of(traj), max_tokens=2).trajectory for _ in range(3)} == {fresh[0].trajectory}


@needs_vocab
def test_a_requests_seed_picks_its_recording_and_a_greedy_request_always_the_same(trajs):
    traj = trajs[3]
    other = dataclasses.replace(traj, seed=43, full_text="<think>\nA different line of thought. " + traj.full_text[8:])
    replay = GovernorReplay([traj, other])

    def seed_of(**kw) -> str:
        return replay.answer(prompt_of(traj), max_tokens=4, **kw).trajectory.split("/")[2]

    assert [seed_of(seed=43) for _ in range(3)] == ["seed_43"] * 3  # the recording made under that seed
    assert [seed_of(seed=42, temperature=0.6) for _ in range(3)] == ["seed_42"] * 3
    assert [seed_of(seed=7) for _ in range(2)] == ["seed_43"] * 2  # another seed: 7 % 2, the same every time
    assert [seed_of(temperature=0.0) for _ in range(3)] == ["seed_42"] * 3  # greedy is deterministic
    assert {seed_of(temperature=0.6) for _ in range(2)} == {"seed_42", "seed_43"}  # sampled: each a new sample


def test_a_sampled_probe_or_trial_is_refused_not_answered_with_the_greedy_recording(replay, trajs):
    traj = trajs[1]
    reasoning = traj.full_text[8:600]
    for suffix in (DEFAULT_PROBE_SUFFIX, DEER_SUFFIX):
        with pytest.raises(ReplayError, match="recorded greedy"):
            replay.answer(prompt_of(traj) + reasoning + suffix, max_tokens=8, temperature=0.6)
        assert replay.answer(prompt_of(traj) + reasoning + suffix, max_tokens=8, temperature=0.0).kind != "continuation"


# ------------------------------------------------------------------------------------ clock


def test_the_clock_batches_sequences_and_frees_a_cancelled_ones_slot():
    cost = dataclasses.replace(CostModel.load(COST), max_batch=2)

    async def run():
        clock = BatchClock(cost, speed=1e5)
        alone = clock.submit(Sequence_("a", ["x"] * 50, 100, 100))
        async for _ in alone.pieces_out():
            pass
        pair = [clock.submit(Sequence_(k, ["x"] * 50, 100, 100)) for k in ("b", "c")]
        third = clock.submit(Sequence_("d", ["x"] * 20, 100, 100))  # waits: max_batch 2
        await asyncio.sleep(0)
        clock.cancel(pair[0])
        for seq in (*pair, third):
            async for _ in seq.pieces_out():
                pass
        await clock.stop()
        return clock, alone, pair, third

    clock, alone, pair, third = asyncio.run(run())
    assert alone.emitted == 50 and alone.stats()["mean_batch"] == 1.0
    assert alone.decode_s == pytest.approx(cost.steps_s(50, 1, 100))
    assert pair[1].emitted == 50 and pair[1].stats()["mean_batch"] > 1.0
    assert pair[1].stats()["per_token_s"] > alone.stats()["per_token_s"]  # company slows every token
    assert pair[0].cancelled and pair[0].emitted < 50 and third.emitted == 20  # the freed slot served the third
    assert clock.stats.cancelled == 1 and clock.stats.tokens == 50 + pair[0].emitted + 50 + 20


def test_prefix_caching_charges_a_probe_only_its_suffix():
    cost = CostModel.load(COST)

    async def run():
        clock = BatchClock(cost, speed=1e5)
        chunk = clock.submit(Sequence_("p", ["x"] * 64, 120, 120))
        async for _ in chunk.pieces_out():
            pass
        probe = clock.submit(Sequence_("p", ["x"] * 5, 120 + 64 + 25, 120 + 64, keeps_prefix=False))
        other = clock.submit(Sequence_("q", ["x"] * 5, 300, 300))
        for seq in (probe, other):
            async for _ in seq.pieces_out():
                pass
        await clock.stop()
        return chunk, probe, other

    chunk, probe, other = asyncio.run(run())
    assert (chunk.prefill_tokens, probe.prefill_tokens, other.prefill_tokens) == (120, 25, 300)


# ------------------------------------------------------------------------------------ HTTP


@pytest.fixture(scope="module")
def replay_server(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "certaindex.cli", "replay-server", str(SAMPLE), "--port", str(port),
            "--speed", "10", "--cost-model", str(COST)]
    log = tmp_path_factory.mktemp("replay") / "replay.log"
    with server_process(args, log, f"{url}/health", "certaindex replay-server"):
        yield url


@needs_vocab
def test_the_openai_client_gets_completions_streaming_and_not(replay_server, trajs):
    import openai

    traj = trajs[5]
    client = openai.OpenAI(base_url=f"{replay_server}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    assert model == traj.model_name
    whole = client.completions.create(model=model, prompt=prompt_of(traj), max_tokens=40)
    assert whole.usage.completion_tokens == 40 and whole.choices[0].finish_reason == "length"
    assert traj.full_text.startswith("<think>\n" + whole.choices[0].text)
    stream = client.completions.create(model=model, prompt=prompt_of(traj), max_tokens=40, stream=True,
                                       stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for event in stream:
        for choice in event.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
        usage = event.usage or usage
    assert "".join(pieces) == whole.choices[0].text and finish == "length" and usage.completion_tokens == 40
    chat = client.chat.completions.create(model=model, max_tokens=12, messages=[
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": traj.problem.strip()}])
    assert chat.choices[0].message.content == client.completions.create(
        model=model, prompt=prompt_of(traj), max_tokens=12).choices[0].text
    missing = httpx.post(f"{replay_server}/v1/completions", json={"prompt": "Who wrote Hamlet?", "max_tokens": 3})
    assert missing.status_code == 404 and "no recorded problem" in missing.json()["error"]["message"]
    sampled = httpx.post(f"{replay_server}/v1/completions", json={
        "prompt": prompt_of(traj) + traj.full_text[8:300] + DEFAULT_PROBE_SUFFIX, "max_tokens": 8, "temperature": 0.7})
    assert sampled.status_code == 400 and "recorded greedy" in sampled.json()["error"]["message"]
    for bad in ({"temperature": -1}, {"temperature": "hot"}, {"top_p": 0}, {"top_p": 1.5}):
        refused = httpx.post(f"{replay_server}/v1/completions",
                             json={"prompt": prompt_of(traj), "max_tokens": 3, **bad})
        assert refused.status_code == 400 and next(iter(bad)) in refused.json()["error"]["message"]


@needs_vocab
def test_concurrent_requests_share_decode_steps_and_slow_each_other(replay_server, trajs):
    body = {"prompt": prompt_of(trajs[6]), "max_tokens": 300}
    alone = httpx.post(f"{replay_server}/v1/completions", json=body, timeout=120).json()["replay"]

    async def together():
        async with httpx.AsyncClient(timeout=120) as client:
            replies = await asyncio.gather(*(
                client.post(f"{replay_server}/v1/completions", json={"prompt": prompt_of(t), "max_tokens": 300})
                for t in trajs[6:12]))
        return [r.json()["replay"] for r in replies]

    crowd = asyncio.run(together())
    assert alone["mean_batch"] == 1.0
    shared = [r for r in crowd if r["mean_batch"] > 1.0]
    assert shared, "six requests sent at once never shared a decode step"
    assert all(r["per_token_s"] > alone["per_token_s"] for r in shared)
    stats = httpx.get(f"{replay_server}/replay/stats").json()
    assert stats["max_batch_seen"] >= 2 and stats["tokens"] >= 7 * 300


def test_a_closed_stream_frees_its_slot(replay_server, trajs):
    before = httpx.get(f"{replay_server}/replay/stats").json()
    with httpx.stream("POST", f"{replay_server}/v1/completions", timeout=60,
                      json={"prompt": prompt_of(trajs[7]), "max_tokens": 5000, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # the first token came: leave
    for _ in range(200):
        stats = httpx.get(f"{replay_server}/replay/stats").json()
        if stats["cancelled"] > before["cancelled"] and stats["running"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert stats["cancelled"] == before["cancelled"] + 1 and stats["running"] == 0
    assert stats["tokens"] - before["tokens"] < 5000


# ------------------------------------------------------------------------------------ proxy end to end


@needs_vocab
def test_the_proxy_runs_real_reasoning_programs_on_the_replay_server(replay_server, trajs, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"{replay_server}/v1", "--port", str(port),
            "--budget", "16384", "--scheduler", "fcfs", "--log-level", "warning", "--model", trajs[0].model_name]
    traj = trajs[0]  # 8,258 tokens; Dynasor's k=3 settles long before
    with server_process(args, tmp_path / "proxy.log", f"{url}/health", "certaindex serve"):
        before = httpx.get(f"{replay_server}/replay/stats").json()
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": traj.model_name, "messages": [{"role": "user", "content": traj.problem}],
            "certaindex": {"k": 3, "probe_interval": 128}}).json()
        after = httpx.get(f"{replay_server}/replay/stats").json()
        info, usage = reply["certaindex"], reply["usage"]
        parts = usage["certaindex"]
        assert info["stop_reason"] == "certain" and info["probes"] >= 3
        assert parts["reasoning_tokens"] < traj.tokens_used and parts["answer_tokens"] == 0
        assert usage["completion_tokens"] == sum(parts[k] for k in ("reasoning_tokens", "overrun_tokens",
                                                                   "probe_tokens", "answer_tokens"))
        # the exit answer is the recorded probe's at the deciding position (the last probe at or before it)
        at = max(p.pos for p in traj.probes if p.pos <= parts["reasoning_tokens"] + 2)
        assert answers_equal(info["answer"], next(p.answer for p in traj.probes if p.pos == at))
        # every token the proxy counts was generated upstream (the closed stream's last ones it never read)
        assert after["tokens"] - before["tokens"] >= usage["completion_tokens"]
        assert after["joins"] - before["joins"] == info["upstream_requests"]

        # the shipped profile of the served model (its certainty score reads probes, boxes and DEER trials)
        before = httpx.get(f"{replay_server}/replay/stats").json()
        profile = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": trajs[8].model_name, "messages": [{"role": "user", "content": trajs[8].problem}]}).json()
        after = httpx.get(f"{replay_server}/replay/stats").json()
        parts = profile["usage"]["certaindex"]
        assert profile["certaindex"]["stop_reason"] in ("certain", "finished")
        assert after["joins"] - before["joins"] == profile["certaindex"]["upstream_requests"]
        assert profile["usage"]["completion_tokens"] == sum(v for k, v in parts.items() if k.endswith("_tokens"))
        assert parts["reasoning_tokens"] < trajs[8].tokens_used
        assert profile["choices"][0]["message"]["content"]
