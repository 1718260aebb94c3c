"""Live against simulated (issue 13): the same arrivals of real reasoning programs served live
(clients -> ``certaindex serve`` -> ``certaindex replay-server``, which plays the recorded
trajectories back paced by the H100 cost model with continuous batching) and by ``certaindex
simulate --traces`` (the simulator on the same cost model and the programs' request plans).

    nice -n 10 .venv/bin/python benchmarks/replay_vs_sim.py --out benchmarks/results/replay-vs-sim/replay-vs-sim.txt

Both sides serve the same draw (``serving.workload.draw``: Poisson arrivals and which trajectory
arrives, seeded) under each row: ``full-fcfs`` (full reasoning) and ``exit-fcfs`` (Dynasor's rule,
k agreeing probes every ``--interval`` tokens; the proxy's probe suffix). The live side runs
``--speed`` times faster than the modelled GPU, its arrivals compressed by the same factor and its
times scaled back: every figure is in modelled (H100) seconds. The proxy reasons in one upstream
stream with probes on the side (its default; simulated with ``--probe-timing side``) and, as a
second live row, in chunks with probes between them (``--no-side-probes``; simulated with
``--probe-timing chunked``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

from certaindex.cli.governor import grade, load_trajectories  # noqa: E402
from certaindex.cli.simulate_governor import exit_policies, workloads_for  # noqa: E402
from certaindex.serving.costmodel import CostModel  # noqa: E402
from certaindex.serving.loadgen import ProgramRecord, Summary, summarise  # noqa: E402
from certaindex.serving.workload import Serving, draw, run_workload  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.processes import running_server  # noqa: E402

SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"
COST = ROOT / "benchmarks" / "results" / "gpu" / "cost-model-h100-qwen2.5-7b.json"
PY = [sys.executable, "-m", "certaindex.cli"]


async def live_clients(url: str, questions: list[str], arrivals: list[float], speed: float,
                       options: dict) -> tuple[list[ProgramRecord], list[dict]]:
    """Chat requests at the (compressed) arrival times; records in modelled seconds."""
    t0 = time.monotonic()
    infos: list[dict] = []
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:

        async def one(i: int) -> ProgramRecord:
            await asyncio.sleep(max(0.0, arrivals[i] / speed - (time.monotonic() - t0)))
            body = {"model": "m", "messages": [{"role": "user", "content": questions[i]}], "certaindex": options}
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            end = (time.monotonic() - t0) * speed
            if response.status_code != 200:
                raise RuntimeError(f"program {i}: HTTP {response.status_code}: {response.text[:300]}")
            data = response.json()
            info = data.get("certaindex", {})
            infos.append({"i": i, **info, "usage": data.get("usage")})
            return ProgramRecord(program_id=str(i), arrival=arrivals[i], start=arrivals[i], end=max(end, arrivals[i]),
                                 tokens=int(data["usage"]["completion_tokens"]), correct=False,
                                 stop_reason=str(info.get("stop_reason", "")))

        records = await asyncio.gather(*(one(i) for i in range(len(arrivals))))
    return list(records), infos


def live_run(args, questions, arrivals, policy: str, side_probes: bool) -> tuple[Summary, dict, list[dict]]:
    rport, pport = free_port(), free_port()
    replay = [*PY, "replay-server", str(args.traces), "--port", str(rport), "--speed", str(args.speed),
              "--cost-model", str(args.cost_model), "--flush-ms", str(args.flush_ms), "--seeds", str(args.seed_folder)]
    proxy = [*PY, "serve", "--upstream", f"http://127.0.0.1:{rport}/v1", "--port", str(pport),
             "--budget", "16384", "--scheduler", "fcfs", "--capacity", "1024", "--max-concurrency", "1024",
             "--max-queue", "4096", "--probe-interval", str(args.interval), "--k", str(args.k),
             "--log-level", "warning", "--upstream-timeout", "3600", "--request-timeout", "36000"]
    if not side_probes:
        proxy.append("--no-side-probes")
    options = {"policy": "full" if policy.startswith("full") else "cot", "answer_tokens": 16384,
               "probe_tokens": 32}
    with running_server(replay, f"http://127.0.0.1:{rport}/health", "replay-server", cwd=ROOT), \
            running_server(proxy, f"http://127.0.0.1:{pport}/health", "proxy", cwd=ROOT):
        # One program first, not timed: the proxy's first answer comparison imports its maths libraries
        # (seconds of wall time, which a fast clock would multiply into a long overrun).
        httpx.post(f"http://127.0.0.1:{pport}/v1/chat/completions", timeout=3600, json={
            "model": "m", "messages": [{"role": "user", "content": questions[0]}],
            "certaindex": {**options, "policy": "cot"}}).raise_for_status()
        before = httpx.get(f"http://127.0.0.1:{rport}/replay/stats").json()
        records, infos = asyncio.run(live_clients(f"http://127.0.0.1:{pport}", questions, arrivals, args.speed, options))
        after = httpx.get(f"http://127.0.0.1:{rport}/replay/stats").json()
    stats = {k: after[k] - before[k] for k in ("steps", "tokens", "joins", "prefill_tokens", "busy_s", "batch_sum",
                                                "cancelled")}
    stats["mean_batch"] = stats["batch_sum"] / stats["steps"] if stats["steps"] else 0.0
    stats["lag_s"] = after["lag_s"]
    return summarise(policy, records), stats, infos


def exits_agree(infos: list[dict], plans, served) -> str:
    """How many live programs exited where their plan does (the live count + the template's 2-token
    <think>, on the 64-token grid), and why the others did not."""
    same, past_think, other = 0, 0, []
    for info in infos:
        plan, traj = plans[info["i"]], served[info["i"]]
        live = info["usage"]["certaindex"]["reasoning_tokens"] + 2 if info.get("stop_reason") == "certain" else None
        if (live is None and plan.exit_pos is None) or (live is not None and plan.exit_pos == live // 64 * 64):
            same += 1
        elif live is None and plan.exit_pos is not None and "</think>" in traj.full_text[:_chars(traj, plan.exit_pos)]:
            past_think += 1
        else:
            other.append(f"{traj.problem_id}: plan {plan.exit_pos}, live {live}")
    return (f"exits as planned: {same}/{len(infos)}; the plan exits at a probe after </think>, where the live "
            f"program had finished its reasoning: {past_think}; other: {', '.join(other) or 'none'}")


def _chars(traj, tokens: int) -> int:
    from certaindex.traces.tokenmap import char_ends

    ends, _ = char_ends(traj.full_text, traj.model_name, traj.tokens_used)
    return int(ends[min(tokens, len(ends)) - 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default=str(SAMPLE), help="Governor folder (default: the shipped 50-trajectory sample)")
    parser.add_argument("--seed-folder", type=int, default=42, help="recorded seed served (default 42)")
    parser.add_argument("--cost-model", default=str(COST))
    parser.add_argument("--programs", type=int, default=40)
    parser.add_argument("--rate", type=float, default=1.0, help="arrivals per modelled second (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    parser.add_argument("--speed", type=float, default=4.0, help="live clock speed-up (default 4)")
    parser.add_argument("--flush-ms", type=float, default=20.0, help="replay-server --flush-ms (default 20)")
    parser.add_argument("--interval", type=int, default=128)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=0,
                        help="the simulator's prompt tokens per program (default: measured, the mean live prompt)")
    parser.add_argument("--rows", default="full-fcfs,exit-fcfs,exit-fcfs-chunked")
    parser.add_argument("--out", help="write the report here")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()

    trajs = [t for t in load_trajectories(args.traces, "all", quiet=True) if t.seed == args.seed_folder]
    trajs = [t for t in trajs if t.model == trajs[0].model]
    cache = grade(trajs, None, quiet=True)
    cost = CostModel.load(args.cost_model)
    exits = exit_policies(f"dynasor:k={args.k},interval={args.interval}")
    arrivals, order = draw(len(trajs), args.programs, args.rate, args.seed)
    questions = [trajs[j].problem.strip() for j in order]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    prompt_tokens = args.prompt_tokens or 122  # the deepseek-r1 template with the default system prompt: ~122
    timing = {"side": Serving(capacity=1024, kv_tokens=None, deadlines=False, probe_timing="side"),
              "chunked": Serving(capacity=1024, kv_tokens=None, deadlines=False, probe_timing="chunked")}
    lines: list[str] = []
    figures: dict = {"rows": {}}
    for row in rows:
        policy = "full-fcfs" if row.startswith("full") else "exit-fcfs"
        workloads, plans = workloads_for(trajs, [policy], exits, cache, prompt_tokens=prompt_tokens,
                                         suffix_tokens=cost.probe_suffix_tokens)
        started = time.monotonic()
        serving = timing["chunked" if row.endswith("chunked") else "side"]
        sim = summarise(row, run_workload(workloads[0], cost, arrivals, order, serving))
        sim_s = time.monotonic() - started
        started = time.monotonic()
        live, stats, infos = live_run(args, questions, arrivals, policy, side_probes=not row.endswith("chunked"))
        live_s = time.monotonic() - started
        ratio_lat = sim.mean_latency / live.mean_latency
        ratio_tput = sim.programs_per_s / live.programs_per_s
        ratio_tok = sim.mean_tokens / live.mean_tokens
        line = (f"{row:20s} mean latency sim {sim.mean_latency:7.1f} s live {live.mean_latency:7.1f} s "
                f"(sim/live {ratio_lat:.3f}); programs/s sim {sim.programs_per_s:.4f} live {live.programs_per_s:.4f} "
                f"(sim/live {ratio_tput:.3f}); mean tokens sim {sim.mean_tokens:.0f} live {live.mean_tokens:.0f} "
                f"({ratio_tok:.3f}); p90 sim {sim.latency[90]:.1f} live {live.latency[90]:.1f}; "
                f"replay mean batch {stats['mean_batch']:.1f}, max lag {stats['lag_s']:.2f} modelled s; "
                f"wall: sim {sim_s:.1f} s, live {live_s:.0f} s")
        if policy.startswith("exit"):
            line += "\n" + " " * 21 + exits_agree(infos, [plans[exits[0].label][j] for j in order],
                                                   [trajs[j] for j in order])
        print(line, flush=True)
        lines.append(line)
        figures["rows"][row] = {"sim": sim.to_dict(), "live": live.to_dict(), "replay_stats": stats,
                                "ratios": {"mean_latency": ratio_lat, "programs_per_s": ratio_tput,
                                           "mean_tokens": ratio_tok},
                                "live_programs": infos}
    header = [
        "$ " + " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        f"machine: {platform.machine()}, {os.cpu_count()} cores shared ({platform.node()}); figures in modelled "
        f"H100 seconds ({Path(args.cost_model).name}); live clock {args.speed:g}x, times scaled back",
        f"workload: {args.programs} programs drawn (seed {args.seed}) from {len(trajs)} {trajs[0].model} "
        f"{trajs[0].dataset} seed_{args.seed_folder} trajectories, Poisson {args.rate:g}/s; exit rows: Dynasor "
        f"k={args.k} every {args.interval} tokens; proxy scheduler fcfs, capacity 1024; simulator: plans with "
        f"--prompt-tokens {prompt_tokens}, no KV limit, joins stall the batch (both sides); simulator probe timing: side "
        f"(one stream, probes beside it, scheduled) for full and exit rows, chunked for the *-chunked row",
    ]
    report = "\n".join(header + [""] + lines) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **figures}, indent=1) + "\n", encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
