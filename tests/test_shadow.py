"""Shadow mode (``serve --shadow DIR``): the client gets policy full's answer, byte for byte; the
probes go beside it and every program is written as a readable trace, even under concurrency,
disk errors and clients that leave."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from certaindex.programs.cot import CoTConfig
from certaindex.server.metrics import ProxyMetrics
from certaindex.server.schema import plan_chat
from certaindex.server.shadow import ShadowRecorder, run_shadow_program, shadow_plan
from certaindex.programs.self_consistency import SCConfig
from certaindex.traces.format import read_traces
from certaindex.traces.shadow import SHADOW_DATASET
from tests.fakes import ScriptedFakeEngine
from tests.misbehaving_upstream import FakeUpstream
from tests.test_server import COT, QUESTION, start_stack, wait_until


def trace_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def all_records(folder: Path):
    return [r for f in trace_files(folder) for r in read_traces(f).records]


def chat(url: str, policy: str | None = None, stream: bool = False, **body) -> dict:
    """One chat request; the streamed answer is put back together as the message it amounts to."""
    payload = {"model": "fake-reasoner", "messages": QUESTION, "stream": stream, **body}
    if policy:
        payload["certaindex"] = {"policy": policy}
    if not stream:
        response = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=30)
        assert response.status_code == 200, response.text
        data = response.json()
        message = data["choices"][0]["message"]
        return {"content": message["content"], "reasoning": message["reasoning_content"],
                "finish": data["choices"][0]["finish_reason"], "usage": data["usage"], "details": data["certaindex"]}
    content, reasoning, finish, usage, details = "", "", None, None, None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**payload, "stream_options": {"include_usage": True}},
                      timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                content += choice["delta"].get("content") or ""
                reasoning += choice["delta"].get("reasoning_content") or ""
                finish = choice["finish_reason"] or finish
            details = event.get("certaindex", details)
    return {"content": content, "reasoning": reasoning, "finish": finish, "usage": usage, "details": details}


def stacks(tmp_path: Path, upstream_kwargs: dict, **settings):
    """Two proxies in front of two identical fake upstreams: one policy full, one shadow."""
    full, full_ctx = start_stack(FakeUpstream(**upstream_kwargs), policy="full", **settings)
    shadow, shadow_ctx = start_stack(FakeUpstream(**upstream_kwargs), policy="full", shadow_dir=str(tmp_path), **settings)
    return full, shadow, [*full_ctx, *shadow_ctx]


def close(contexts) -> None:
    for ctx in contexts:
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("finish_after", [18, None])  # the model ends by itself; the budget ends it
def test_shadow_answers_equal_policy_full_byte_for_byte(tmp_path, stream, finish_after):
    full, shadow, contexts = stacks(tmp_path, {"finish_after": finish_after, "disagreeing_probes": True},
                                    cot=replace(COT, budget=30))
    try:
        a = chat(full.url, stream=stream)
        b = chat(shadow.url, stream=stream)
        for key in ("content", "reasoning", "finish"):
            assert a[key] == b[key]
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert a["usage"][key] == b["usage"][key]  # the client is billed what full reasoning costs
        assert "shadow_probe_tokens" not in a["usage"]["certaindex"]
        extra = b["usage"]["certaindex"]["shadow_probe_tokens"]
        assert extra > 0 and b["details"]["shadow"]["probes"] >= 4
        # The upstream saw the same reasoning requests, plus the probes beside them.
        reasoning_a = [r for r in full.upstream.requests if r["kind"] == "chunk"]
        reasoning_b = [r for r in shadow.upstream.requests if r["kind"] == "chunk"]
        assert [(r["prompt"], r["max_tokens"], r.get("stream")) for r in reasoning_a] == \
            [(r["prompt"], r["max_tokens"], r.get("stream")) for r in reasoning_b]
        metrics = httpx.get(f"{shadow.url}/metrics").text
        assert f"certaindex_shadow_probe_tokens_total {float(extra)}" in metrics
        assert wait_until(lambda: 'certaindex_shadow_traces_total{outcome="written"} 1.0' in httpx.get(f"{shadow.url}/metrics").text)
    finally:
        close(contexts)
    [record] = all_records(tmp_path)
    assert record.reasoning == b["reasoning"]
    assert record.stop == ("finished" if finish_after else "budget")
    probes = record.probes()
    assert len(probes) == b["details"]["shadow"]["probes"] + (record.stop == "budget")  # + the forced answer
    expected = list(range(COT.probe_interval, record.reasoning_tokens, COT.probe_interval))
    assert [p.at_tokens for p in probes] == expected + ([30] if record.stop == "budget" else [])
    assert len({p.answer for p in probes}) > 1  # the probes' own answers, not the final one
    assert record.prompt.endswith("<think>\n") or record.prompt  # the rendered prompt is kept
    assert record.question == QUESTION[0]["content"] and record.gold == ""
    header = read_traces(trace_files(tmp_path)[0]).header
    assert header.dataset == SHADOW_DATASET and header.model == "fake-reasoner"
    assert header.settings.granularity == COT.probe_interval


def test_shadow_never_exits_early_even_when_cot_is_asked_for(tmp_path):
    _, shadow, contexts = stacks(tmp_path, {"finish_after": 40})  # probes agree at once
    try:
        reply = chat(shadow.url, policy="cot")
        assert reply["details"]["stop_reason"] == "finished"
        assert reply["usage"]["certaindex"]["reasoning_tokens"] == 41  # 40 steps and the final sentence
    finally:
        close(contexts)
    [record] = all_records(tmp_path)
    assert all(p.answer == "42" for p in record.probes())  # they agreed, and decided nothing


def test_concurrent_requests_write_complete_traces(tmp_path):
    _, shadow, contexts = stacks(tmp_path, {"finish_after": 24, "token_delay_s": 0.002})
    try:
        replies: list[dict] = []

        def one(i: int) -> None:
            replies.append(chat(shadow.url, stream=bool(i % 2), messages=[{"role": "user", "content": f"question {i}"}]))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(replies) == 12
    finally:
        close(contexts)  # shutting down finishes the writes in flight
    records = all_records(tmp_path)
    assert sorted(r.question for r in records) == sorted(f"question {i}" for i in range(12))
    assert all(r.reasoning_tokens == 25 and len(r.probes()) == 24 // COT.probe_interval for r in records)
    assert len(trace_files(tmp_path)) == 1  # one process, one settings: one file


def test_rotation_starts_new_files_that_all_read_back(tmp_path):
    _, shadow, contexts = stacks(tmp_path, {"finish_after": 12}, shadow_max_file_bytes=1)
    try:
        for i in range(3):
            chat(shadow.url, messages=[{"role": "user", "content": f"q{i}"}])
    finally:
        close(contexts)
    assert len(trace_files(tmp_path)) == 3
    assert sorted(r.question for r in all_records(tmp_path)) == ["q0", "q1", "q2"]


def test_a_full_disk_fails_no_request_and_leaves_whole_lines(tmp_path):
    _, shadow, contexts = stacks(tmp_path, {"finish_after": 12})
    try:
        chat(shadow.url)
        recorder = shadow.app.state.shadow
        # the file appears when it is created, before the worker thread has registered it and
        # written the first trace: wait for the write itself
        assert wait_until(lambda: any(log.written == 1 for log in list(recorder._logs.values())))
        [log] = recorder._logs.values()
        [opened] = log._files.values()
        full = os.open("/dev/full", os.O_WRONLY)  # every write now fails with ENOSPC, as on a full disk
        os.dup2(full, opened.fd)
        os.close(full)
        reply = chat(shadow.url, stream=True)
        assert reply["finish"] == "stop" and reply["content"]
        assert wait_until(lambda: 'certaindex_shadow_traces_total{outcome="write-error"} 1.0' in httpx.get(f"{shadow.url}/metrics").text)
    finally:
        close(contexts)
    assert len(all_records(tmp_path)) == 1  # the first trace, whole; no partial line after it


def test_an_unwritable_folder_fails_no_request(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _, shadow, contexts = stacks(blocker / "traces", {"finish_after": 12})
    try:
        for stream in (False, True):
            assert chat(shadow.url, stream=stream)["content"]
        assert wait_until(lambda: 'certaindex_shadow_traces_total{outcome="write-error"} 2.0' in httpx.get(f"{shadow.url}/metrics").text)
    finally:
        close(contexts)


def test_a_client_that_leaves_leaves_no_partial_line(tmp_path):
    _, shadow, contexts = stacks(tmp_path, {"token_delay_s": 0.01, "finish_after": 2000}, cot=replace(COT, budget=2000))
    try:
        parsed = urlparse(shadow.url)
        data = json.dumps({"model": "m", "messages": QUESTION, "stream": True}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parsed.hostname}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        with socket.create_connection((parsed.hostname, parsed.port)) as sock:
            sock.sendall(head + data)
            assert wait_until(lambda: any(r["kind"] == "probe" for r in shadow.upstream.requests), timeout=30)
        assert wait_until(lambda: shadow.upstream.in_flight == 0, timeout=30)
        chat(shadow.url, messages=[{"role": "user", "content": "after"}], max_tokens=12)
    finally:
        close(contexts)
    assert [r.question for r in all_records(tmp_path)] == ["after"]  # the abandoned program wrote nothing
    for f in trace_files(tmp_path):
        assert f.read_bytes().endswith(b"\n")


# -- the chunked path (an engine that runs one request at a time) --------------------------------


def run_plan(engine, plan, recorder, events=None):
    async def go():
        try:
            return await run_shadow_program(engine, plan, recorder, "scripted-model", engine.name, events)
        finally:
            await recorder.drain()
    return asyncio.run(go())


@pytest.mark.parametrize("thinking", [False, True])
def test_chunked_shadow_equals_full_and_records_every_probe(tmp_path, thinking):
    reasoning = [f"t{i} " for i in range(22)] + ["\\boxed{9}"]
    config = CoTConfig(budget=64, probe_interval=4, probe_tokens=8, system_prompt=None)
    body = {"model": "m", "messages": QUESTION}
    replies = iter(["7", "8", "9", "9", "9", "9"])

    def probe_reply(n: int) -> list[str]:
        return [next(replies, "9"), "}"]

    def engine():
        return ScriptedFakeEngine(reasoning=reasoning, thinking=thinking, probe_reply=probe_reply)

    from certaindex.server.chat_programs import run_chat_program

    full_plan = plan_chat(body, "full", config, SCConfig(), 10**5)
    full = asyncio.run(run_chat_program(engine(), full_plan))
    recorder = ShadowRecorder(str(tmp_path), ProxyMetrics(lambda: 0, lambda: 0))
    shadow = run_plan(engine(), shadow_plan(plan_chat(body, "full", config, SCConfig(), 10**5), config), recorder)
    assert (shadow.content, shadow.reasoning, shadow.finish_reason) == (full.content, full.reasoning, full.finish_reason)
    assert shadow.completion_tokens == full.completion_tokens and shadow.shadow_probe_tokens == 2 * 5
    [record] = all_records(tmp_path)
    assert [p.answer for p in record.probes()] == ["7", "8", "9", "9", "9"]
    assert record.final.answer == ("42" if thinking else "9")  # a thinking model answers after </think>
    assert record.final.source == ("after-think" if thinking else "reasoning")
    assert record.reasoning == full.reasoning


def test_a_failed_probe_skips_the_trace_not_the_answer(tmp_path):
    config = CoTConfig(budget=64, probe_interval=4, probe_tokens=8, system_prompt=None)
    reasoning = [f"t{i} " for i in range(10)] + ["\\boxed{3}"]
    recorder = ShadowRecorder(str(tmp_path), ProxyMetrics(lambda: 0, lambda: 0))
    plan = shadow_plan(plan_chat({"model": "m", "messages": QUESTION}, "full", config, SCConfig(), 10**5), config)
    outcome = run_plan(ScriptedFakeEngine(reasoning=reasoning, fail_probes=True), plan, recorder)
    assert outcome.content == "3" or "\\boxed{3}" in outcome.content
    assert recorder.traces.labels("probe-failed")._value.get() == 1
    assert not trace_files(tmp_path)


# -- end to end: the commands a user runs -----------------------------------------------------


def test_serve_shadow_then_calibrate_then_serve_the_profile(tmp_path):
    """`certaindex serve --shadow DIR` in front of an upstream, then `certaindex calibrate DIR`, then
    `certaindex serve --calibration PROFILE`: each as its own process, as a user runs them."""
    import subprocess
    import sys

    from tests.conftest import free_port, server_process
    from tests.misbehaving_upstream import serve_in_thread

    traces = tmp_path / "traces"
    profile = tmp_path / "profile.json"
    upstream = FakeUpstream(answer="7", finish_after=30)  # probes say 7 from the start; so does the model
    env = {**os.environ, "COLUMNS": "1000"}
    with serve_in_thread(upstream.app()) as upstream_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", upstream_url, "--port", str(port),
                 "--probe-interval", "4", "--budget", "40"]
        with server_process(serve + ["--shadow", str(traces)], tmp_path / "shadow.log", f"{url}/health", "serve --shadow"):
            for i in range(12):
                reply = chat(url, stream=bool(i % 2), messages=[{"role": "user", "content": f"q{i}"}])
                assert reply["details"]["stop_reason"] == "finished" and reply["content"]
        records = all_records(traces)
        assert len(records) == 12 and all(len(r.probes()) == 30 // 4 for r in records)

        calibrate = [sys.executable, "-m", "certaindex.cli", "calibrate", str(traces), "-o", str(profile)]
        result = subprocess.run(calibrate + ["--alpha", "0.2"], capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0 and "certified:" in result.stdout, result.stdout + result.stderr
        result = subprocess.run(calibrate + ["--alpha", "0.05"], capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 3 and "needs about 33 more traces" in result.stdout  # 45 at zero harm

        subprocess.run(calibrate + ["--alpha", "0.2"], capture_output=True, timeout=120, env=env, check=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", upstream_url, "--port", str(port),
                 "--policy", "cot", "--calibration", str(profile)]
        with server_process(serve, tmp_path / "served.log", f"{url}/health", "serve --calibration"):
            reply = chat(url)
        assert reply["details"]["stop_reason"] == "certain" and reply["details"]["answer"] == "7"
        assert reply["usage"]["certaindex"]["reasoning_tokens"] < 30


def test_runs_that_do_not_fit_the_format_are_skipped_not_written():
    from certaindex.programs.cot import CoTResult, Probe
    from certaindex.traces.shadow import SkippedTrace, shadow_trace

    config = CoTConfig(budget=64, probe_interval=4, probe_tokens=8)

    def result(at: list[int], tokens: int, stop: str = "finished", probe_tokens: int = 2) -> CoTResult:
        probes = [Probe(a, "7", "7", False, probe_tokens, 0.0) for a in at]
        return CoTResult("q", "7", "7", stop, "x" * tokens, 3, tokens, 2 * len(at), 0, 64, probes)

    offsets = {i: i for i in range(65)}
    assert len(shadow_trace("a", "q", "p", 3, result([4, 8], 10), offsets, config).probes()) == 2
    for bad, reason in ((result([4, 9], 10), "misaligned"),  # several tokens streamed across a point
                        (result([4], 10), "probe-failed"),  # no probe at 8
                        (result([4, 8], 10, stop="certain"), "early-exit"),
                        (result([4, 8], 67, stop="budget"), "over-budget"),
                        (result([4, 8], 10, probe_tokens=-1), "invalid")):  # the reader's parse_record refuses it
        with pytest.raises(SkippedTrace) as caught:
            shadow_trace("a", "q", "p", 3, bad, offsets, config)
        assert caught.value.reason == reason
    assert "chunks[0].probe.tokens" in str(caught.value)  # the reader's own message names the field


@pytest.mark.model
@pytest.mark.parametrize("stream", [False, True])
def test_shadow_on_the_embedded_engine_writes_a_readable_trace(tmp_path, embedded_engine, stream):
    """The real model through the shadow program (one stream, probes queued behind it on an engine
    that runs one request at a time). Only what holds for any text the model writes."""
    config = CoTConfig(budget=48, probe_interval=16, probe_tokens=8, system_prompt=None)
    body = {"model": "m", "messages": [{"role": "user", "content": "What is 2 + 3? Put the answer in \\boxed{}."}]}
    plan = shadow_plan(plan_chat(body, "full", config, SCConfig(), 10**5), config)
    recorder = ShadowRecorder(str(tmp_path), ProxyMetrics(lambda: 0, lambda: 0))
    events: asyncio.Queue[str] | None = asyncio.Queue() if stream else None
    outcome = run_plan(embedded_engine, plan, recorder, events)
    assert outcome.completion_tokens == (outcome.reasoning_tokens + outcome.overrun_tokens + outcome.probe_tokens
                                         + outcome.answer_tokens)
    assert outcome.shadow_probe_tokens >= 0 and outcome.details["policy"] == "full"
    written = recorder.traces.labels("written")._value.get()
    skipped = sum(recorder.traces.labels(r)._value.get() for r in ("over-budget", "misaligned", "probe-failed"))
    assert written + skipped == 1
    if written:
        [record] = all_records(tmp_path)
        assert record.reasoning == outcome.reasoning and record.reasoning_tokens == outcome.reasoning_tokens
        assert all(p.at_tokens % 16 == 0 or p.at_tokens == 48 for p in record.probes())
        assert len(record.probes()) == outcome.details["shadow"]["probes"] + (record.stop == "budget")
