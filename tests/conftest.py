"""Shared fixtures: the embedded model and a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.processes import ServerDidNotStart, running_server

# llama-cpp-python finishes a UTF-8 character that max_tokens cut in the middle (it skips the
# max_tokens check while a character is incomplete), so a completion of the real model can be up to
# 3 byte tokens over its max_tokens (seen through the proxy at temperature 1). Tests of the real model
# allow it wherever they bound a count by a limit.
UTF8_SLACK = 3


def _model_path() -> Path | None:
    try:
        from certaindex.engines.embedded import default_model_path

        import llama_cpp  # noqa: F401

        return default_model_path()
    except Exception:  # noqa: BLE001 - no embedded extra installed: model tests are skipped
        return None


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = _model_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("the embedded model is not installed, but CI must run the model tests")
        pytest.skip("embedded model not installed (pip install 'certaindex[embedded]')")
    return path


@pytest.fixture(scope="session")
def embedded_engine(model_path: Path):
    from certaindex.engines.embedded import EmbeddedEngine

    return EmbeddedEngine(model_path=model_path, n_ctx=4096)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server_process(args: list[str], log: Path, ready_url: str, name: str) -> Iterator[subprocess.Popen]:
    """Run a server command, wait until ``ready_url`` answers 200 (failing the test with the tail of
    its log if it exits or takes over 120 s), and stop it on exit."""
    stack = contextlib.ExitStack()
    try:
        proc = stack.enter_context(running_server(args, ready_url, name, log))
    except ServerDidNotStart as exc:
        pytest.fail(str(exc))
    with stack:
        yield proc


@contextlib.contextmanager
def start_llama_server(model_path: Path, log_dir: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start llama-cpp-python's OpenAI-compatible server with the real model on loopback; yield its
    URL and process (tests that kill a server mid-run use the process); stop it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path), "--model_alias", "smollm2-135m-instruct",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
        "--n_threads", str(os.cpu_count() or 1), "--logits_all", "true",
    ]
    with server_process(args, log_dir / f"server-{port}.log", f"{url}/v1/models", "llama_cpp.server") as proc:
        yield url, proc


@pytest.fixture(scope="session")
def llama_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """llama-cpp-python's OpenAI-compatible server with the real model, started on loopback."""
    with start_llama_server(model_path, tmp_path_factory.mktemp("server")) as (url, _proc):
        yield url
