"""A program streaming its reasoning with probes beside it is never cut short below its own budget
by the ``certaindex`` policy's budget lending (``SchedulerCore.hold_budget``).

The bug: a score profile's probe certaindex (k agreeing probes) reaches 1 while the score has not
settled; the core then lent the program's whole unused budget (its probes', trials' and answer's
share: the stream already held the reasoning part) to unsure programs, its next probe or trial was
refused (``BudgetExhausted``) and the program ended ``budget`` after ~2k of 16k reasoning tokens,
its stream decoding on meanwhile. Lending between rounds (nothing of the program running) stays.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from certaindex.programs.cot import CoTConfig, solve_cot
from certaindex.scheduler import Scheduler, SchedulerCore, cot_reporter
from certaindex.scheduler.budgets import program_budget
from certaindex.traces.governor import read_governor
from certaindex.traces.tokenmap import quicktok_available
from tests.conftest import free_port, server_process
from tests.fakes import ScriptedFakeEngine

QUESTION = "What is six times seven?"
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"
COST = ROOT / "benchmarks" / "results" / "gpu" / "cost-model-h100-qwen2.5-7b.json"


def _streams(core: SchedulerCore, budget: int, names: str, stream_tokens: int) -> dict:
    gangs = {}
    for name in names:
        core.add_program(name, now=0.0, budget=budget)
        gangs[name] = core.submit(name, width=1, max_tokens=stream_tokens, now=0.0)
    assert len(core.dispatch(now=0.0)) == len(names)
    return gangs


def test_a_settled_programs_budget_is_lent_between_rounds_but_held_beside_its_stream() -> None:
    budget, stream = 20_000, 16_384  # the stream holds the reasoning part; the rest is probes and answer
    core = SchedulerCore("certaindex", capacity=8)
    _streams(core, budget, "abc", stream)
    core.report("a", certaindex=1.0)  # a score profile's probe certaindex: k agreeing probes, score unsettled
    # Lending as designed: the settled program keeps only its floor (already spent by its stream) ...
    assert core.allowance("a") == 0
    # ... and the unsure ones may borrow what it released, beyond their own headroom.
    assert core.allowance("b") > budget - stream
    core.hold_budget("a")  # a request beside its open stream
    assert core.allowance("a") == budget - stream  # everything its own budget leaves
    assert core.allowance("b") == core.allowance("c") == budget - stream  # nothing of a's to borrow
    side = core.start_side("a", max_tokens=32, now=1.0)
    core.finish(side, tokens=7)
    assert core.allowance("a") == budget - stream - 7  # charged exactly what it generated
    core.hold_budget("a")  # idempotent
    assert core.allowance("a") == budget - stream - 7
    # Every promise stays within the live budgets.
    committed = {"a": stream + 7, "b": stream, "c": stream}
    assert sum(core.allowance(p) + committed[p] for p in "abc") <= 3 * budget
    core.remove_program("a")
    assert core.allowance("b") == budget - stream and core.carried_budget == 0


async def test_a_stream_reporting_settled_certainty_gets_every_probe_up_to_its_budget() -> None:
    """Two one-stream programs on the certaindex scheduler; one reports certaindex 1 at each probe
    without exiting (as a score profile does while its score is below the threshold). Before the fix
    its second probe was refused and it ended ``budget`` after 32 of 300 reasoning tokens."""

    def engine() -> ScriptedFakeEngine:
        return ScriptedFakeEngine(["step "] * 500, ends_naturally=False, streaming=True, token_delay_s=0.001,
                                  probe_reply=lambda n: [str(n), "}"])  # never agreeing: no exit

    config = CoTConfig(budget=300, probe_interval=16, k=2, probe_tokens=4)
    bare = await solve_cot(engine(), QUESTION, config)
    scheduler = Scheduler(engine(), SchedulerCore("certaindex", capacity=2))  # default floor: lending on

    async def run(pid: str, settled: bool):
        async with scheduler.session(pid, budget=program_budget(config)) as session:
            report = cot_reporter(session)

            def on_event(event) -> None:
                if settled and event.kind == "probe":
                    session.report(1.0)
                else:
                    report(event)

            result = await solve_cot(session, QUESTION, config, on_event=on_event)
            return result, program_budget(config) - session.allowance

    outcomes = await asyncio.gather(run("settled", True), run("unsure", False))
    for result, charged in outcomes:
        assert (result.stop_reason, result.reasoning_tokens) == ("budget", config.budget)
        assert [p.at_tokens for p in result.probes] == [p.at_tokens for p in bare.probes]
        assert charged == result.total_tokens
    assert scheduler.core.running == 0 and scheduler.core.pending_gangs == 0


# ------------------------------------------------------------------------ serve + replay server


@pytest.mark.skipif(not quicktok_available("qwen3"), reason="quicktok-v1 not installed (tokenizer extra)")
def test_no_program_ends_on_budget_below_its_budget_through_serve_and_the_replay_server(tmp_path) -> None:
    """The default scheduler and the served model's shipped profile, on recorded trajectories: two
    programs whose grid probes agree before the score settles (problems 7 and 13 of the sample), and
    a full-reasoning neighbour that stays unsure throughout (problem 18, 16k tokens). Before the fix
    problem 13 ended ``budget`` at 1,632 of 16,384 tokens. Accounting only: no timing."""
    trajs = [t for run in read_governor(SAMPLE) for t in run.trajectories if t.seed == 42]
    rport, pport = free_port(), free_port()
    replay = [sys.executable, "-m", "certaindex.cli", "replay-server", str(SAMPLE), "--port", str(rport),
              "--speed", "40", "--cost-model", str(COST), "--seeds", "42"]
    proxy = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"http://127.0.0.1:{rport}/v1",
             "--port", str(pport), "--budget", "16384", "--log-level", "warning", "--model", trajs[0].model_name]
    programs = [(7, {}), (13, {}), (18, {"policy": "full"})]

    async def clients() -> list[dict]:
        async with httpx.AsyncClient(timeout=600) as client:
            async def one(i: int, options: dict) -> dict:
                body = {"model": trajs[i].model_name, "messages": [{"role": "user", "content": trajs[i].problem.strip()}]}
                if options:
                    body["certaindex"] = options
                response = await client.post(f"http://127.0.0.1:{pport}/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text[:300]
                return response.json()

            return await asyncio.gather(*(one(i, o) for i, o in programs))

    with server_process(replay, tmp_path / "replay.log", f"http://127.0.0.1:{rport}/health", "replay-server"), \
            server_process(proxy, tmp_path / "proxy.log", f"http://127.0.0.1:{pport}/health", "certaindex serve"):
        replies = asyncio.run(clients())
    for (i, _), reply in zip(programs, replies):
        info, usage = reply["certaindex"], reply["usage"]
        parts = usage["certaindex"]
        assert info["stop_reason"] != "budget" or parts["reasoning_tokens"] >= 16384, (i, info, parts)
        assert usage["completion_tokens"] == sum(v for k, v in parts.items() if k.endswith("_tokens"))
