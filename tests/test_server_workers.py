"""``certaindex serve --workers N``: several proxy processes behind one port (a real subprocess in
front of FakeUpstream), replica affinity that agrees across processes, and the capacity split."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from certaindex.server.settings import ServerSettings
from certaindex.server.workers import worker_settings
from tests.misbehaving_upstream import FakeUpstream, free_port, serve_in_thread
from tests.processes import running_server

REPO = Path(__file__).resolve().parent.parent


def test_each_worker_gets_an_even_share_of_the_scheduler_capacity():
    settings = ServerSettings(upstream="http://gpu0:8000/v1", capacity=512)
    assert worker_settings(settings, 4).scheduler_capacity == 128
    assert worker_settings(settings, 3).scheduler_capacity == 170  # rounded down: never above 512 together
    assert worker_settings(settings, 4).workers == 4
    assert worker_settings(settings, 1).scheduler_capacity == 512
    assert worker_settings(ServerSettings(upstream="http://x/v1", capacity=2), 4).scheduler_capacity == 1
    # Without --capacity the scheduler's capacity is --max-concurrency: that is split too.
    assert worker_settings(ServerSettings(upstream="http://x/v1", max_concurrency=64), 2).scheduler_capacity == 32
    with pytest.raises(ValueError, match="--workers needs --upstream"):
        worker_settings(ServerSettings(), 2)
    with pytest.raises(ValueError, match="at least 1"):
        worker_settings(settings, 0)


_ROUTE = """
import json, sys
from certaindex.engines.routing import AffinityKeys, rendezvous_order
ids = [f"http://gpu{i}:8000/v1" for i in range(16)]
keys = AffinityKeys()
chat = "<|im_start|>user\\nWhat is {i} * 7?<|im_end|>\\n<|im_start|>assistant\\n<think>\\n"
out = []
for i in range(300):
    rendered = chat.replace("{i}", str(i))
    keys.remember(rendered)
    probe = rendered + "step " * i + "... Oh, I suddenly got the answer"  # a later request of the program
    out.append([rendezvous_order(ids, keys.key(rendered))[0], rendezvous_order(ids, keys.key(probe))[0]])
print(json.dumps(out))
"""


def test_the_same_program_picks_the_same_replica_in_every_process():
    # Workers are separate interpreters with differently salted str hashes: the replica a program
    # key maps to must not depend on the process.
    answers = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", _ROUTE], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    assert answers[0] == answers[1]
    assert all(first == later for first, later in answers[0])  # a program's later requests follow it
    assert len({first for first, _ in answers[0]}) == 16  # and the keys spread over all replicas


def _serve_args(upstream_url: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", upstream_url, "--port", str(port),
            "--workers", str(workers), "--policy", "cot", "--profile", "none", "--probe-interval", "4",
            "--k", "2", "--budget", "64", "--capacity", "8", "--log-level", "warning"]


def _chat(url: str, i: int) -> tuple[int, str | None, str]:
    body = {"model": "fake-reasoner", "messages": [{"role": "user", "content": f"What is {i} * 7?"}]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    return reply.status_code, reply.headers.get("x-certaindex-worker"), reply.text


def _counter_total(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_two_workers_serve_one_port_stream_restart_and_stop_together(tmp_path):
    upstream = FakeUpstream(token_delay_s=0.002)
    with serve_in_thread(upstream.app()) as upstream_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "serve.log"
        with running_server(_serve_args(upstream_url, port, 2), f"{url}/health", "serve --workers 2", log,
                            cwd=REPO) as proc:
            # Many concurrent requests through the one port: every one answered, by both processes.
            with ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda i: _chat(url, i), range(96)))
            assert [status for status, _, _ in replies] == [200] * 96
            assert all("\\boxed{42}" in text for _, _, text in replies)
            served = Counter(pid for _, pid, _ in replies)
            children = {p.pid for p in psutil.Process(proc.pid).children()}
            assert len(served) == 2 and {int(pid) for pid in served} <= children
            # A stream is relayed whole by one worker.
            body = {"model": "fake-reasoner", "stream": True, "messages": [{"role": "user", "content": "6 * 7?"}]}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as stream:
                assert stream.headers["x-certaindex-worker"] in served
                lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            assert "\\boxed{42}" in "".join(lines)
            # /metrics, from whichever worker answers, counts the requests of both.
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            assert _counter_total(metrics, "certaindex_requests_total") == 97
            # A worker that dies is reported and replaced; the port keeps serving.
            victim = int(next(iter(served)))
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 120  # a fresh interpreter imports the app: slow on a busy machine
            while True:
                pids = {p.pid for p in psutil.Process(proc.pid).children()}
                fresh = {int(r.headers["x-certaindex-worker"]) for r in
                         [httpx.get(f"{url}/health", timeout=10) for _ in range(8)]}
                if victim not in pids and fresh - {victim} and (fresh - children):
                    break
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
            assert proc.poll() is None
            assert f"(pid {victim}) died (killed by SIGKILL)" in log.read_text()
            workers = [psutil.Process(pid) for pid in pids]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            gone, alive = psutil.wait_procs(workers, timeout=10)
            assert not alive
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/health", timeout=2)


def test_a_port_taken_by_another_program_stops_the_server_with_an_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(_serve_args("http://127.0.0.1:9/v1", port, 2), capture_output=True, text=True,
                              timeout=120, cwd=REPO)
    assert done.returncode == 2  # refused by the command line before any worker starts, as with one process
    assert "port %d on 127.0.0.1 is in use" % port in " ".join(done.stderr.split())
    assert "worker" not in done.stderr


def test_ctrl_c_stops_every_worker(tmp_path):
    upstream = FakeUpstream()
    with serve_in_thread(upstream.app()) as upstream_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with running_server(_serve_args(upstream_url, port, 2), f"{url}/health", "serve --workers 2",
                            tmp_path / "serve.log", cwd=REPO) as proc:
            assert _chat(url, 1)[0] == 200
            workers = psutil.Process(proc.pid).children()
            assert len({w.pid for w in workers}) >= 2
            proc.send_signal(signal.SIGINT)  # to the supervisor alone: it stops the workers itself
            assert proc.wait(timeout=30) == 0
            _, alive = psutil.wait_procs(workers, timeout=10)
            assert not alive
