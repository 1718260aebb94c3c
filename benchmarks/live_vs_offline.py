"""What `evaluate` promises against what a user gets through the proxy (issue 18, items 5 and 3).

For each recorded model family: ``certaindex replay-server`` plays its recorded trajectories (each
request names its seed, which the replay server honours, so every request has exactly one trajectory), ``certaindex serve`` runs in front of it as
docs/replay-server.md shows (no ``--model`` unless ``--model-flag``), and every problem is sent as
one chat request (the problem as the user's message). Tokens are counted at the upstream (the
replay server's ``/replay/stats``). Every problem is compared with what ``certaindex evaluate
--policy default`` replays on the same trajectory (:func:`certaindex.evaluation.governor.run_policy`,
the function ``evaluate`` calls per trajectory): exit or not, exit position, answer, correct or not,
tokens.

    python benchmarks/live_vs_offline.py --families r1-distill-qwen-7b qwen3-8b r1-distill-qwen-32b \\
        r1-distill-llama-8b --datasets math500 --limit 40 --concurrency 1 --speed 20 \\
        --out-dir benchmarks/results/live-vs-offline

Outcome equal: both exit early or both reason to the end, with equal answers (the project's answer
equivalence) and equal correctness. An offline exit at or after the point where the live model
finished its reasoning (a box in the answer after ``</think>``) counts as reasoning to the end. Per row: problems, live and offline accuracy, outcomes equal,
exit position (live minus offline, mean and most), upstream tokens against the offline plan's
tokens, overrun tokens per early exit. Written per run: ``<family>-c<concurrency>.jsonl`` (one row
per problem) and ``summary.txt`` (the table, the command, the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.core.answers import answers_equal  # noqa: E402
from certaindex.evaluation.governor import grading_inputs, parse_policy, run_policy, with_final_answers  # noqa: E402
from certaindex.evaluation.grading import GradeCache, default_cache_path  # noqa: E402
from certaindex.traces.governor import Trajectory, read_governor  # noqa: E402

SHARED = ROOT.parent / "shared" / "traces" / "governor"
SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"


@dataclass
class Row:
    """One problem: the live outcome beside the offline one."""

    problem: str
    live_exit: bool
    live_pos: int
    live_answer: str | None
    live_correct: bool
    live_tokens: int  # the proxy's count of what it spent (completion tokens)
    overrun: int
    answer_cut: bool
    off_exit: bool
    off_pos: int | None
    off_answer: str | None
    off_correct: bool
    off_tokens: int
    stop_reason: str
    profile: str | None = None  # the profile the proxy ran (usage.certaindex.profile)

    @property
    def equal(self) -> bool:
        same_answer = (self.live_answer is None and self.off_answer is None) or answers_equal(self.live_answer,
                                                                                             self.off_answer)
        return self.live_exit == self.off_exit and same_answer and self.live_correct == self.off_correct


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, health: str, timeout_s: float = 300) -> subprocess.Popen:
    """A certaindex server process, once its health route answers."""
    proc = subprocess.Popen([sys.executable, "-m", "certaindex.cli", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"{args[0]} did not come up in {timeout_s} s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def load(traces: Path, family: str, datasets: list[str], split: str, seeds: list[int],
         limit: int | None) -> list[Trajectory]:
    trajs: list[Trajectory] = []
    for seed in seeds:
        for dataset in datasets:
            folder = traces / f"{family}__{dataset}__seed_{seed}"
            if folder.is_dir():
                got = [t for run in read_governor(folder, split) for t in run.trajectories]
                trajs += got[:limit] if limit else got
    trajs = with_final_answers(trajs)  # full reasoning's answer as evaluate reads it (--final-answer extracted)
    if not trajs:
        raise SystemExit(f"no {split} trajectories of {family} ({', '.join(datasets)}, seeds {seeds}) in {traces}")
    return trajs


def offline(trajs: list[Trajectory], cache_path: Path, policy: str) -> dict[str, Any]:
    """What ``evaluate --policy <policy>`` replays on each trajectory, by (problem text, seed)."""
    cache = GradeCache.load(cache_path)
    pairs, answers = grading_inputs(trajs)
    cache.grade(pairs, answers)
    cache.save(cache_path)
    spec = parse_policy(policy)
    return {(t.problem.strip(), t.seed): run_policy(spec, t, cache) for t in trajs}


async def ask_all(url: str, model: str | None, trajs: list[Trajectory], concurrency: int,
                  policy: str) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)

    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        async def one(traj: Trajectory) -> dict[str, Any]:
            body: dict[str, Any] = {"messages": [{"role": "user", "content": traj.problem.strip()}], "seed": traj.seed}
            if model:
                body["model"] = model
            if policy == "full":
                body["certaindex"] = {"policy": "full"}
            async with gate:
                reply = await client.post(f"{url}/v1/chat/completions", json=body)
            if reply.status_code != 200:
                return {"error": f"HTTP {reply.status_code}: {reply.text[:300]}"}
            return reply.json()

        return await asyncio.gather(*(one(t) for t in trajs))


def compare(trajs: list[Trajectory], replies: list[dict[str, Any]], plans: dict[str, Any]) -> list[Row]:
    rows = []
    for traj, reply in zip(trajs, replies):
        plan = plans[(traj.problem.strip(), traj.seed)]
        if "error" in reply:
            info, parts, usage, finish = {"stop_reason": "error", "answer": None}, {}, {}, "error"
        else:
            info, usage = reply["certaindex"], reply["usage"]
            parts, finish = usage.get("certaindex", {}), reply["choices"][0]["finish_reason"]
        answer = info.get("answer")
        live_pos = int(parts.get("reasoning_tokens", 0))
        finished = info.get("stop_reason") == "finished"
        rows.append(Row(
            problem=f"{traj.dataset}/{traj.problem_id}/seed_{traj.seed}", live_exit=info.get("stop_reason") == "certain",
            live_pos=live_pos, live_answer=answer,
            live_correct=answers_equal(answer, traj.target), live_tokens=int(usage.get("completion_tokens", 0)),
            overrun=int(parts.get("overrun_tokens", 0)), answer_cut=finish == "length",
            off_exit=plan.exit_pos is not None and not (finished and plan.exit_pos >= live_pos), off_pos=plan.exit_pos, off_answer=plan.answer,
            off_correct=plan.correct, off_tokens=plan.tokens, stop_reason=str(info.get("stop_reason")),
            profile=info.get("profile")))
    return rows


def summary(family: str, concurrency: int, rows: list[Row], upstream: int, lag_s: float) -> str:
    n = len(rows)
    exits = [r for r in rows if r.live_exit and r.off_exit]
    shifts = [r.live_pos - (r.off_pos or 0) for r in exits]
    live_exits = [r for r in rows if r.live_exit]
    off_tokens = sum(r.off_tokens for r in rows)
    return (f"{family:<22} {concurrency:>4} {n:>4} {sum(r.live_correct for r in rows):>5} "
            f"{sum(r.off_correct for r in rows):>5} {sum(r.equal for r in rows):>5} "
            f"{(sum(shifts) / len(shifts) if shifts else 0):>7.1f} {max(shifts, key=abs, default=0):>6} "
            f"{upstream:>9} {off_tokens:>9} {upstream / max(off_tokens, 1):>6.3f} "
            f"{(sum(r.overrun for r in live_exits) / len(live_exits) if live_exits else 0):>8.1f} "
            f"{sum(r.answer_cut for r in rows):>4} {lag_s:>6.1f}  {_profiles(rows)}")


def _profiles(rows: list[Row]) -> str:
    """The profiles the proxy ran, with how many problems each."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.profile)] = counts.get(str(r.profile), 0) + 1
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


HEADER = (f"{'family':<22} {'conc':>4} {'n':>4} {'live':>5} {'eval':>5} {'same':>5} {'dpos':>7} {'most':>6} "
          f"{'upstream':>9} {'plan':>9} {'ratio':>6} {'overrun':>8} {'cut':>4} {'lag s':>6}  profiles run")


def run_family(args: argparse.Namespace, family: str, out: Path) -> list[str]:
    trajs = load(args.traces, family, args.datasets, args.split, args.seeds, args.limit)
    plans = offline(trajs, args.grade_cache, args.policy)
    rport, sport = free_port(), free_port()
    replay = start(["replay-server", str(args.traces), "--model", family, "--split", args.split, "--seeds",
                    ",".join(map(str, args.seeds)), "--dataset", ",".join(args.datasets), "--speed", str(args.speed),
                    "--flush-ms", str(args.flush_ms), "--port", str(rport)],
                   out / f"{family}-replay.log", f"http://127.0.0.1:{rport}/health")
    lines = []
    try:
        served = httpx.get(f"http://127.0.0.1:{rport}/v1/models").json()["data"][0]["id"]
        serve_args = ["serve", "--upstream", f"http://127.0.0.1:{rport}/v1", "--budget", str(args.budget),
                      "--scheduler", "fcfs", "--port", str(sport), "--log-level", "info"]
        if args.model_flag:
            serve_args += ["--model", served]
        proxy = start(serve_args, out / f"{family}-serve.log", f"http://127.0.0.1:{sport}/health")
        try:
            for concurrency in args.concurrency:
                before = httpx.get(f"http://127.0.0.1:{rport}/replay/stats").json()
                replies = asyncio.run(ask_all(f"http://127.0.0.1:{sport}", served if args.send_model else None,
                                              trajs, concurrency, args.policy))
                after = httpx.get(f"http://127.0.0.1:{rport}/replay/stats").json()
                rows = compare(trajs, replies, plans)
                with (out / f"{family}-c{concurrency}.jsonl").open("w") as fh:
                    for row, reply in zip(rows, replies):
                        fh.write(json.dumps({**row.__dict__, "equal": row.equal, "error": reply.get("error")}) + "\n")
                line = summary(family, concurrency, rows, after["tokens"] - before["tokens"],
                               after["lag_s"] - before["lag_s"])
                print(line, flush=True)
                lines.append(line)
        finally:
            stop(proxy)
    finally:
        stop(replay)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=SHARED if SHARED.is_dir() else SAMPLE)
    parser.add_argument("--families", nargs="+", default=["r1-distill-qwen-7b"])
    parser.add_argument("--datasets", nargs="+", default=["math500", "amc23", "aime24"])
    parser.add_argument("--split", default="dev", choices=["train", "dev", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="recorded seeds served (default 42)")
    parser.add_argument("--limit", type=int, help="first N problems of each dataset")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1])
    parser.add_argument("--speed", type=float, default=20, help="replay-server --speed (default 20)")
    parser.add_argument("--flush-ms", type=float, default=0, help="replay-server --flush-ms (default 0)")
    parser.add_argument("--budget", type=int, default=32768,
                        help="serve --budget (default 32768: the longest recorded budget, AIME's, so no trajectory is cut)")
    parser.add_argument("--policy", default="default", choices=["default", "full"])
    parser.add_argument("--model-flag", action="store_true", help="give serve --model (without: as the docs show)")
    parser.add_argument("--send-model", action="store_true", help="name the served model in each request")
    parser.add_argument("--grade-cache", type=Path, default=default_cache_path().with_name("grades-live-vs-offline.json"),
                        help="grade cache of this benchmark (default beside certaindex's own)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "live-vs-offline")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    head = [f"$ python benchmarks/live_vs_offline.py {shlex.join(sys.argv[1:])}",
            f"machine: {platform.node()} ({os.cpu_count()} CPUs, shared); traces {args.traces.name}, split {args.split}, "
            f"seeds {args.seeds}; replay speed {args.speed:g}x; serve --budget {args.budget} --scheduler fcfs"
            + (" --model" if args.model_flag else " (no --model)") + f"; policy {args.policy}",
            "live/eval: right answers; same: outcomes equal; dpos: live minus offline exit position (mean, most); "
            "upstream: tokens generated at the replay server; plan: evaluate's tokens; overrun: per early exit; "
            "cut: answers ended on length; lag s: how far the replay server's clock fell behind its pace", "", HEADER]
    print("\n".join(head), flush=True)
    lines = list(head)
    for family in args.families:
        lines += run_family(args, family, args.out_dir)
    with (args.out_dir / "summary.txt").open("a") as fh:
        fh.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
