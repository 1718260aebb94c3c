"""What ``certaindex serve`` run exactly as docs/server.md shows gives a reasoning model's users:
its default reasoning budget against the recorded runs (issue 19, serving side).

``certaindex replay-server`` plays the shipped sample (50 DeepSeek-R1-Distill-Qwen-7B MATH500
trajectories, recorded with a 16,384-token budget) paced like an H100 at ``--speed``; ``certaindex
serve --upstream URL`` (no other flag, or the extra flags of a row) runs in front of it, and all 50
problems are sent at once as chat requests (the problem as the user's message). Per row: answers
right (the project's answer equivalence against the reference) against the recorded full
reasoning's, answers ended on ``finish_reason: length`` and why, tokens generated at the upstream
(the replay server's ``/replay/stats``) against the recorded full reasoning, and the proxy's own
``completion_tokens`` sum.

    python benchmarks/serve_default_budget.py --rows default "--budget 4096" \\
        --out-dir benchmarks/results/serve-default-budget   # and --speed 50 --flush-ms 0: the lead's run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from live_vs_offline import free_port, start, stop  # noqa: E402

from certaindex.core.answers import answers_equal  # noqa: E402
from certaindex.traces.governor import Trajectory, read_governor  # noqa: E402

SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"


async def ask_all(url: str, trajs: list[Trajectory]) -> list[dict[str, Any]]:
    """Every problem at once, as a user's chat request with nothing else set."""
    limits = httpx.Limits(max_connections=len(trajs) + 8)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        async def one(traj: Trajectory) -> dict[str, Any]:
            reply = await client.post(f"{url}/v1/chat/completions",
                                      json={"messages": [{"role": "user", "content": traj.problem.strip()}]})
            return reply.json() if reply.status_code == 200 else {"error": f"HTTP {reply.status_code}: {reply.text[:300]}"}

        return await asyncio.gather(*(one(t) for t in trajs))


def row_of(traj: Trajectory, reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply:
        return {"problem_id": traj.problem_id, "error": reply["error"]}
    info, usage = reply["certaindex"], reply["usage"]
    answer = info.get("answer")
    return {"problem_id": traj.problem_id, "recorded_tokens": traj.tokens_used, "recorded_finish": traj.finish_reason,
            "recorded_correct": traj.final_correct, "answer": answer,
            "correct": answer is not None and answers_equal(answer, traj.target),
            "finish_reason": reply["choices"][0]["finish_reason"], "stop_reason": info.get("stop_reason"),
            "budget": info.get("budget"), "profile": info.get("profile"),
            "completion_tokens": usage["completion_tokens"],
            "reasoning_tokens": usage["certaindex"]["reasoning_tokens"],
            "overrun_tokens": usage["certaindex"]["overrun_tokens"]}


def summary(name: str, rows: list[dict[str, Any]], upstream: int, recorded: int, lag_s: float) -> str:
    ok = [r for r in rows if "error" not in r]
    cut = Counter(r["stop_reason"] for r in ok if r["finish_reason"] == "length")
    stops = Counter(r["stop_reason"] for r in ok)
    return (f"{name:<16} {len(ok):>3}/{len(rows):<3} {sum(r['correct'] for r in ok):>5} "
            f"{sum(bool(r['recorded_correct']) for r in ok):>8} {sum(cut.values()):>4} "
            f"{', '.join(f'{k} {v}' for k, v in sorted(cut.items())) or '-':<12} "
            f"{', '.join(f'{k} {v}' for k, v in sorted(stops.items())):<32} {ok[0]['budget'] if ok else '-':>7} "
            f"{upstream:>9,} {recorded:>9,} {1 - upstream / recorded:>6.1%} {sum(r['completion_tokens'] for r in ok):>9,} "
            f"{sum(r['overrun_tokens'] for r in ok):>8,} {lag_s:>6.1f}")


HEADER = (f"{'serve flags':<16} {'200':>7} {'right':>5} {'recorded':>8} {'cut':>4} {'cut why':<12} "
          f"{'stop reasons':<32} {'budget':>7} {'upstream':>9} {'recorded':>9} {'saved':>6} {'proxy':>9} {'overrun':>8} {'lag s':>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=["default", "--budget 4096"],
                        help="serve's extra flags per row ('default': none, as docs/server.md shows)")
    parser.add_argument("--speed", type=float, default=1, help="replay-server --speed (default 1: an H100's pace)")
    parser.add_argument("--flush-ms", type=float, default=20,
                        help="replay-server --flush-ms (default 20: several tokens an event, as the 1x live runs; "
                        "at 0, 50 streams of one token an event saturate this 2-CPU VM and decisions come late)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "serve-default-budget")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="serve-default-budget-"))  # the servers' logs, not results
    trajs = [t for run in read_governor(SAMPLE) for t in run.trajectories]
    recorded = sum(t.tokens_used for t in trajs)
    lines = [f"$ python benchmarks/serve_default_budget.py {shlex.join(sys.argv[1:])}",
             f"machine: {platform.node()} ({os.cpu_count()} CPUs, shared); the shipped sample ({len(trajs)} R1-7B "
             f"MATH500 problems, seed 42, recorded budget 16384), replay-server --speed {args.speed:g} "
             f"--flush-ms {args.flush_ms:g}, all at once",
             "200: answered; right: answers equal to the reference (recorded: full reasoning's); cut: finish_reason "
             "length; upstream: tokens generated at the replay server; recorded: the full reasoning's tokens; "
             "saved: 1 - upstream/recorded; proxy: the sum of completion_tokens; overrun: streamed after the deciding "
             "probe's position; lag s: how far the replay server's clock fell behind its pace", "", HEADER]
    print("\n".join(lines), flush=True)
    rport = free_port()
    replay = start(["replay-server", str(SAMPLE), "--port", str(rport), "--speed", str(args.speed),
                    "--flush-ms", str(args.flush_ms)],
                   logs / "replay.log", f"http://127.0.0.1:{rport}/health")
    try:
        for flags in args.rows:
            sport = free_port()
            extra = [] if flags == "default" else shlex.split(flags)
            name = "(none)" if flags == "default" else flags
            proxy = start(["serve", "--upstream", f"http://127.0.0.1:{rport}/v1", "--port", str(sport), *extra],
                          logs / "serve.log", f"http://127.0.0.1:{sport}/health")
            try:
                before = httpx.get(f"http://127.0.0.1:{rport}/replay/stats").json()
                replies = asyncio.run(ask_all(f"http://127.0.0.1:{sport}", trajs))
                after = httpx.get(f"http://127.0.0.1:{rport}/replay/stats").json()
            finally:
                stop(proxy)
            rows = [row_of(t, r) for t, r in zip(trajs, replies)]
            slug = "default" if flags == "default" else "-".join(extra).strip("-").replace("--", "")
            with (args.out_dir / f"{slug}-speed{args.speed:g}-flush{args.flush_ms:g}.jsonl").open("w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            lines.append(summary(name, rows, after["tokens"] - before["tokens"], recorded,
                                 after["lag_s"] - before["lag_s"]))
            print(lines[-1], flush=True)
    finally:
        stop(replay)
    with (args.out_dir / "summary.txt").open("a") as fh:  # one block per run: several paces side by side
        fh.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
