"""``certaindex serve``'s default reasoning budget does not cut a reasoning model's own run: run as
docs/server.md shows (no ``--budget``) in front of ``certaindex replay-server`` on the shipped
sample, a recorded R1 run of 8,258 tokens that closes its own ``</think>`` is served to its end
(the former default of 4,096 cut it: ``finish_reason: length``). Outcomes only, never seconds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
import pytest

from certaindex.cli.serve import add_serve_subcommand, settings_from_args
from certaindex.server.settings import EMBEDDED_DEFAULT_BUDGET, UPSTREAM_DEFAULT_BUDGET
from certaindex.traces.governor import read_governor
from tests.conftest import free_port, server_process

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_default_budget_is_the_recorded_collection_budget_with_an_upstream() -> None:
    settings = settings_from_args(serve_args("--upstream", "http://127.0.0.1:9/v1"))
    assert settings.cot.budget == UPSTREAM_DEFAULT_BUDGET == 32_768


def test_default_budget_is_the_context_on_the_embedded_engine() -> None:
    assert settings_from_args(serve_args("--profile", "none")).cot.budget == EMBEDDED_DEFAULT_BUDGET == 4096


def test_a_given_budget_is_kept_and_a_bad_one_refused() -> None:
    assert settings_from_args(serve_args("--upstream", "http://127.0.0.1:9/v1", "--budget", "512")).cot.budget == 512
    with pytest.raises(ValueError, match="budget must be at least 1"):
        settings_from_args(serve_args("--upstream", "http://127.0.0.1:9/v1", "--budget", "0"))


def test_serve_as_documented_lets_a_long_recorded_run_finish(tmp_path) -> None:
    longest = max((t for run in read_governor(SAMPLE) for t in run.trajectories
                   if t.finish_reason == "stop" and t.tokens_used <= UPSTREAM_DEFAULT_BUDGET),
                  key=lambda t: t.tokens_used)
    assert longest.tokens_used > 2 * EMBEDDED_DEFAULT_BUDGET  # the old default would have cut it
    rport, sport = free_port(), free_port()
    replay = [sys.executable, "-m", "certaindex.cli", "replay-server", str(SAMPLE), "--port", str(rport),
              "--speed", "200", "--flush-ms", "20"]
    serve = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"http://127.0.0.1:{rport}/v1",
             "--port", str(sport), "--log-level", "warning"]
    with server_process(replay, tmp_path / "replay.log", f"http://127.0.0.1:{rport}/health", "replay-server"), \
            server_process(serve, tmp_path / "serve.log", f"http://127.0.0.1:{sport}/health", "serve"):
        reply = httpx.post(f"http://127.0.0.1:{sport}/v1/chat/completions", timeout=600, json={
            "messages": [{"role": "user", "content": longest.problem.strip()}],
            "certaindex": {"policy": "full"}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    info, usage = body["certaindex"], body["usage"]["certaindex"]
    assert info["budget"] == UPSTREAM_DEFAULT_BUDGET
    assert info["stop_reason"] == "finished" and body["choices"][0]["finish_reason"] == "stop", info
    assert usage["reasoning_tokens"] > 2 * EMBEDDED_DEFAULT_BUDGET
