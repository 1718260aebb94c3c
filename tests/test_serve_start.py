"""How ``serve`` and ``replay-server`` start, as a user runs them (subprocesses, real sockets): a
taken port is one ``error:`` line and exit 2 before anything starts; an upstream that does not
answer is named at start, and the proxy serves anyway with the documented statuses."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, server_process

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "certaindex.cli", *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)


def test_serve_on_a_taken_port_says_so_and_exits_2_before_starting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _run(["serve", "--upstream", f"http://127.0.0.1:{free_port()}/v1", "--port", str(port)])
    assert run.returncode == 2, run.stderr
    assert f"port {port} on 127.0.0.1 is in use" in " ".join(run.stderr.split())
    assert run.stderr.count("error:") == 1
    assert "startup complete" not in run.stderr and "Traceback" not in run.stderr


def test_replay_server_on_a_taken_port_says_so_before_its_banner() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _run(["replay-server", str(SAMPLE), "--port", str(port)])
    assert run.returncode == 2, run.stderr
    assert "is in use" in run.stderr and "error:" in run.stderr
    assert "replay-server:" not in run.stderr  # the serving banner
    assert "Traceback" not in run.stderr


def test_serve_names_an_upstream_that_does_not_answer_and_serves_anyway(tmp_path) -> None:
    dead = free_port()  # bound and released: nothing listens, connections are refused
    port = free_port()
    log = tmp_path / "serve.log"
    args = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"http://127.0.0.1:{dead}/v1",
            "--port", str(port), "--model", "some-model"]
    with server_process(args, log, f"http://127.0.0.1:{port}/metrics", "serve"):
        chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                          json={"model": "some-model", "messages": [{"role": "user", "content": "What is 2+3?"}]})
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
    text = " ".join(log.read_text().split())
    # said once, by the server's first read of /v1/models (the cli no longer reads it a second time)
    assert text.count(f"no upstream answers: http://127.0.0.1:{dead} (cannot connect)") == 1, text
    assert "WARNING certaindex.server" in text and "Serving anyway" in text
    assert chat.status_code == 502, chat.text
    assert health.status_code == 503


def test_check_port_refuses_a_taken_port_and_a_foreign_host_and_passes_a_free_one() -> None:
    from certaindex.cli.common import UsageError, check_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} on 127.0.0.1 is in use"):
            check_port("127.0.0.1", port)
    check_port("127.0.0.1", free_port())
    with pytest.raises(UsageError, match="not an address of this machine"):
        check_port("192.0.2.1", free_port())  # TEST-NET-1: never this machine's
    with pytest.raises(UsageError, match="--port must be between"):
        check_port("127.0.0.1", 70000)


def test_serve_with_a_missing_embedded_model_file_is_a_usage_error() -> None:
    run = _run(["serve", "--model", "/nonexistent/model.gguf", "--port", str(free_port())])
    assert run.returncode == 2, run.stderr
    assert "--model /nonexistent/model.gguf: no such file" in " ".join(run.stderr.split())
    assert "Traceback" not in run.stderr and "startup" not in run.stderr


class _FakeFailingUvicorn:
    """A fake uvicorn server whose startup fails as uvicorn's does: ``sys.exit(3)``."""

    async def serve(self) -> None:
        raise SystemExit(3)


def test_a_failed_server_start_is_an_engine_failure_not_no_answer() -> None:
    """uvicorn's exit 3 (startup failed) would read as this command line's 3, 'no answer'."""
    from certaindex.cli.common import EXIT_ENGINE, EXIT_NO_ANSWER, run_handler, run_uvicorn

    async def handler(_args) -> int:
        await run_uvicorn(_FakeFailingUvicorn(), "certaindex serve")
        return 0

    assert run_handler(handler, None) == EXIT_ENGINE != EXIT_NO_ANSWER
