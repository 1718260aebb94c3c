"""Programs cut short by budget lending: concurrent chat requests through ``certaindex serve`` on
``certaindex replay-server`` (recorded R1-Distill-Qwen-7B reasoning, the shipped sample), counting
programs that end ``budget`` with reasoning below their budget (a request refused with
``BudgetExhausted``: the scheduler lent the program's budget away mid-stream).

    nice -n 10 .venv/bin/python benchmarks/budget_refusals.py --out benchmarks/results/budget-refusals/budget-refusals.txt

Rows: scheduler (certaindex, fcfs) x profile (the served model's shipped profile; the same without
DEER trials, ``--no-trials``, whose grid probes agree before its score settles more often). All
programs start together; the replay server sends one token per event (``--flush-ms 0``), so a score
profile's grid probes land on their positions. Counts, not times: the figures hold on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

from certaindex.traces.governor import read_governor  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.processes import running_server  # noqa: E402

SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"
COST = ROOT / "benchmarks" / "results" / "gpu" / "cost-model-h100-qwen2.5-7b.json"
PROFILE = ROOT / "src" / "certaindex" / "data" / "profiles" / "r1-distill-qwen.json"
PY = [sys.executable, "-m", "certaindex.cli"]


def run_row(questions: list[str], model: str, scheduler: str, profile: str, speed: float, budget: int) -> list[dict]:
    rport, pport = free_port(), free_port()
    replay = [*PY, "replay-server", str(SAMPLE), "--port", str(rport), "--speed", str(speed),
              "--cost-model", str(COST), "--flush-ms", "0", "--seeds", "42"]
    proxy = [*PY, "serve", "--upstream", f"http://127.0.0.1:{rport}/v1", "--port", str(pport),
             "--budget", str(budget), "--scheduler", scheduler, "--profile", profile, "--model", model,
             "--log-level", "warning", "--upstream-timeout", "3600", "--request-timeout", "36000"]

    async def clients() -> list[dict]:
        async with httpx.AsyncClient(timeout=3600) as client:
            async def one(question: str) -> dict:
                body = {"model": "m", "messages": [{"role": "user", "content": question}]}
                response = await client.post(f"http://127.0.0.1:{pport}/v1/chat/completions", json=body)
                response.raise_for_status()
                data = response.json()
                return {"stop": data["certaindex"]["stop_reason"], **data["usage"]["certaindex"]}

            return await asyncio.gather(*(one(q) for q in questions))

    with running_server(replay, f"http://127.0.0.1:{rport}/health", "replay-server", cwd=ROOT), \
            running_server(proxy, f"http://127.0.0.1:{pport}/health", "proxy", cwd=ROOT):
        return asyncio.run(clients())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=20, help="concurrent programs (sample problems in order)")
    parser.add_argument("--speed", type=float, default=5.0, help="replay clock speed-up (default 5)")
    parser.add_argument("--budget", type=int, default=16384)
    parser.add_argument("--schedulers", default="certaindex,fcfs")
    parser.add_argument("--out", help="write the report here")
    args = parser.parse_args()
    trajs = [t for run in read_governor(SAMPLE) for t in run.trajectories if t.seed == 42]
    questions = [trajs[i % len(trajs)].problem.strip() for i in range(args.programs)]
    lines = ["$ " + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
             f"{args.programs} programs started together on {len(trajs)} R1-Distill-Qwen-7B MATH500 seed_42 "
             f"trajectories (shipped sample), budget {args.budget}, replay --speed {args.speed:g} --flush-ms 0", ""]
    with tempfile.TemporaryDirectory() as tmp:
        no_trials = json.loads(PROFILE.read_text())
        no_trials["name"] += "-no-trials"
        no_trials["rule"]["schedule"] = "+".join(p for p in no_trials["rule"]["schedule"].split("+") if p != "tr")
        (Path(tmp) / "no-trials.json").write_text(json.dumps(no_trials))
        for scheduler in [s.strip() for s in args.schedulers.split(",") if s.strip()]:
            for name, profile in (("shipped r1-distill-qwen", "auto"), ("r1-distill-qwen without trials",
                                                                         str(Path(tmp) / "no-trials.json"))):
                results = run_row(questions, trajs[0].model_name, scheduler, profile, args.speed, args.budget)
                cut = [r for r in results if r["stop"] == "budget" and r["reasoning_tokens"] < args.budget]
                where = ", ".join(f"{r['reasoning_tokens']} (+{r['overrun_tokens']} overrun)" for r in cut)
                line = (f"scheduler {scheduler:10s} profile {name:32s}: {len(cut)}/{len(results)} ended budget below "
                        f"the budget{': ' + where if where else ''}")
                print(line, flush=True)
                lines.append(line)
    report = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
