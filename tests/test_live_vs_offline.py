"""What `evaluate` promises is what a user gets (issue 18, item 6): ``certaindex serve`` with no
``--model``, as the docs show, in front of ``certaindex replay-server`` on the shipped sample; ten
problems sent as chat requests, each compared with ``evaluate --policy default`` on the same
recorded trajectory. Outcomes only, never seconds."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from certaindex.core.answers import answers_equal
from certaindex.evaluation.governor import grading_inputs, parse_policy, run_policy, with_final_answers
from certaindex.evaluation.grading import GradeCache
from certaindex.traces.governor import read_governor
from certaindex.traces.tokenmap import quicktok_available
from tests.conftest import free_port, server_process

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"
COST = ROOT / "benchmarks" / "results" / "gpu" / "cost-model-h100-qwen2.5-7b.json"
PROBLEMS = 10

pytestmark = pytest.mark.skipif(not quicktok_available("qwen3"), reason="quicktok-v1 not installed (tokenizer extra)")


def offline_outcomes(trajs, tmp_path: Path) -> dict:
    cache = GradeCache.load(SAMPLE / "grades.json")
    cache.path = tmp_path / "grades.json"
    cache.grade(*grading_inputs(trajs))
    spec = parse_policy("default")
    return {t.problem.strip(): run_policy(spec, t, cache) for t in trajs}


async def ask(url: str, problems: list[str]) -> list[dict]:
    async with httpx.AsyncClient(timeout=600) as client:
        gate = asyncio.Semaphore(5)

        async def one(problem: str) -> dict:
            async with gate:
                reply = await client.post(f"{url}/v1/chat/completions",
                                          json={"messages": [{"role": "user", "content": problem}]})
            assert reply.status_code == 200, reply.text
            return reply.json()

        return await asyncio.gather(*(one(p) for p in problems))


def ready(health: str) -> None:
    """Until the proxy has read the upstream's served model (GET /v1/models, in the background)."""
    for _ in range(240):
        if httpx.get(health, timeout=10).json().get("upstream_models"):
            return
        asyncio.run(asyncio.sleep(0.25))
    raise AssertionError(f"{health} never listed the upstream's models")


def test_serve_without_model_gives_what_evaluate_promises_on_the_sample(tmp_path) -> None:
    trajs = with_final_answers([t for run in read_governor(SAMPLE) for t in run.trajectories])[:PROBLEMS]
    plans = offline_outcomes(trajs, tmp_path)
    rport, sport = free_port(), free_port()
    replay = [sys.executable, "-m", "certaindex.cli", "replay-server", str(SAMPLE), "--port", str(rport),
              "--speed", "20", "--cost-model", str(COST)]
    serve = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"http://127.0.0.1:{rport}/v1",
             "--budget", "16384", "--scheduler", "fcfs", "--port", str(sport), "--log-level", "info"]
    with server_process(replay, tmp_path / "replay.log", f"http://127.0.0.1:{rport}/health", "replay-server"), \
            server_process(serve, tmp_path / "serve.log", f"http://127.0.0.1:{sport}/health", "serve"):
        ready(f"http://127.0.0.1:{sport}/health")
        replies = asyncio.run(ask(f"http://127.0.0.1:{sport}", [t.problem.strip() for t in trajs]))
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "early-exit profile r1-distill-qwen" in log and "profile conservative" not in log
    for traj, reply in zip(trajs, replies):
        plan, info = plans[traj.problem.strip()], reply["certaindex"]
        where = f"{traj.dataset}/{traj.problem_id}: live {info}, evaluate {plan}"
        assert info["profile"] == "r1-distill-qwen", where  # picked from the upstream's served model
        assert reply["choices"][0]["finish_reason"] == "stop", where  # no answer cut
        reasoned = reply["usage"]["certaindex"]["reasoning_tokens"]
        # an offline exit at or after the live reasoning's end (a box in the answer after </think>) is its end
        early = plan.exit_pos is not None and not (info["stop_reason"] == "finished" and plan.exit_pos >= reasoned)
        assert (info["stop_reason"] == "certain") == early, where
        assert (info["answer"] is None and plan.answer is None) or answers_equal(info["answer"], plan.answer), where
        assert answers_equal(info["answer"], traj.target) == plan.correct, where
