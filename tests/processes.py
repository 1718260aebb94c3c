"""Start a server as its own process and wait until it answers: one helper for the tests (through
``conftest.server_process``) and the benchmarks."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer in time; the message ends with the tail of its log."""


@contextlib.contextmanager
def running_server(
    args: list[str], ready_url: str, name: str, log: Path | None = None, *, cwd: Path | None = None,
    timeout_s: float = 120.0,
) -> Iterator[subprocess.Popen]:
    """Run ``args`` with its output in ``log`` (a temporary file if None), wait until ``ready_url``
    answers 200, and stop the process on exit (killed if it ignores SIGTERM for 20 s)."""
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "server.log"
        with log.open("wb") as log_fh:
            proc = subprocess.Popen(args, stdout=log_fh, stderr=subprocess.STDOUT, cwd=cwd)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if proc.poll() is not None:
                    raise ServerDidNotStart(f"{name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerDidNotStart(f"{name} did not start in {timeout_s:g} s: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
