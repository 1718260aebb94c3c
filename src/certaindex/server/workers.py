"""Several proxy processes behind one port (``certaindex serve --workers N``).

One ``certaindex serve`` process is one asyncio event loop, at most one CPU core (docs/deployment.md
section 5 says when a cluster needs more). Here a supervisor starts N worker processes; each binds
its own listening socket to the same host:port with ``SO_REUSEPORT``, and the Linux kernel spreads
incoming connections over them by a hash of the connection's addresses. (One socket shared by all
workers would let whichever event loop wakes first accept a whole burst: asyncio accepts up to the
backlog per wake-up.) A connection, and so a chat request with all its probes, lives in one worker
from start to end: per-program state (the program, its scheduler session, its home replica) never
crosses processes. Replica affinity agrees across workers because rendezvous hashing is
deterministic (blake2b of the key, not Python's salted ``hash``): the same program key picks the
same replica in every process.

What each worker keeps to itself: its admission slots (``--max-concurrency`` and ``--max-queue``
are per worker), its scheduler core (which therefore orders only its own programs), the replica
router's in-flight counts (load balance sees only its own requests) and remembered homes. The
engines' batch capacity is the one thing that has to be divided: each worker's scheduler gets
``capacity // N`` (at least 1), so together they never send more than ``--capacity`` at once.

Workers that die are reported (pid, exit code or signal) and restarted; more than
``max_restarts`` deaths within ``window_s`` (a crash loop), or a worker that fails before it
first serves at start-up (a port in use, a bad upstream flag), stops every worker and the server
exits with status 1. SIGINT or SIGTERM stops all workers gracefully (in-flight requests get
uvicorn's grace period) and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from certaindex.server.settings import ServerSettings

log = logging.getLogger("certaindex.server.workers")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_settings(settings: ServerSettings, workers: int) -> ServerSettings:
    """Settings of one of ``workers`` processes: the scheduler capacity split evenly (rounded down,
    at least 1), everything else as given."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and settings.upstream is None:
        raise ValueError("--workers needs --upstream: each worker would load its own embedded model")
    capacity = max(1, settings.scheduler_capacity // workers)
    return replace(settings, capacity=capacity, workers=workers)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port that other workers of this user can bind as well."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--workers needs SO_REUSEPORT (Linux or BSD)")
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def _worker_main(settings: ServerSettings, host: str, port: int, log_level: str, ready: Connection) -> None:
    """One worker process (spawned: a fresh interpreter that imports the app itself)."""
    import uvicorn

    from certaindex.server.app import create_app

    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        if not settings.verbose:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        sock = reuseport_socket(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        raise SystemExit(1) from None
    config = uvicorn.Config(create_app(settings), log_level=log_level, access_log=log_level == "debug",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            ready.send(os.getpid())
        await task

    asyncio.run(serve())
    raise SystemExit(0 if server.started else 1)


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing.Process (spawn context)
    ready: Connection
    started_at: float
    serving: bool = False


def _exit_description(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, settings: ServerSettings, host: str, port: int, workers: int, *, log_level: str = "info",
                 max_restarts: int = 5, window_s: float = 60.0, stop_timeout_s: float = 15.0) -> None:
        self.settings = worker_settings(settings, workers)
        self.host, self.port, self.count = host, port, workers
        self.log_level = log_level
        self.max_restarts, self.window_s, self.stop_timeout_s = max_restarts, window_s, stop_timeout_s
        self._context = multiprocessing.get_context("spawn")  # no fork of a running event loop
        self._workers: list[_Worker] = []
        self._deaths: deque[float] = deque()
        self._metrics_dir: str | None = None

    def _start(self, index: int) -> _Worker:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main, name=f"certaindex-worker-{index}", daemon=False,
            args=(self.settings, self.host, self.port, self.log_level, send))
        process.start()
        send.close()
        return _Worker(index, process, receive, time.monotonic())

    def _prepare_metrics_dir(self) -> None:
        if os.environ.get(METRICS_DIR_ENV):
            return  # the operator's own directory: used as it is, never deleted
        self._metrics_dir = tempfile.mkdtemp(prefix="certaindex-metrics-")
        os.environ[METRICS_DIR_ENV] = self._metrics_dir  # inherited by the spawned workers

    def _forget_metrics(self, pid: int | None) -> None:
        if pid is None:
            return
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, os.environ.get(METRICS_DIR_ENV))
        except Exception:  # noqa: BLE001 - metrics cleanup must not take the server down
            log.debug("could not drop the metrics of worker pid %s", pid, exc_info=True)

    def _poll_ready(self) -> None:
        for worker in self._workers:
            if not worker.serving and worker.ready.poll():
                try:
                    worker.ready.recv()
                except EOFError:
                    continue
                worker.serving = True
                log.info("worker %d (pid %d) serving on %s:%d", worker.index, worker.process.pid, self.host, self.port)

    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM (0) or a fatal worker failure (1)."""
        self._prepare_metrics_dir()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        status = 0
        try:
            self._workers = [self._start(i) for i in range(self.count)]
            while not stop.is_set():
                self._poll_ready()
                failed = self._reap()
                if failed:
                    status = 1
                    break
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self._stop_all()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
                os.environ.pop(METRICS_DIR_ENV, None)
        return status

    def _reap(self) -> bool:
        """Report and restart workers that died; True when the server must stop."""
        for slot, worker in enumerate(self._workers):
            if worker.process.is_alive():
                continue
            worker.process.join()
            pid, code = worker.process.pid, worker.process.exitcode
            self._forget_metrics(pid)
            if not worker.serving:
                log.error("worker %d (pid %s) failed before serving (%s): stopping the server",
                          worker.index, pid, _exit_description(code))
                return True
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > self.window_s:
                self._deaths.popleft()
            if len(self._deaths) > self.max_restarts:
                log.error("worker %d (pid %s) died (%s); %d deaths within %g s: stopping the server",
                          worker.index, pid, _exit_description(code), len(self._deaths), self.window_s)
                return True
            log.error("worker %d (pid %s) died (%s); its requests in flight are lost; restarting it",
                      worker.index, pid, _exit_description(code))
            self._workers[slot] = self._start(worker.index)
        return False

    async def _stop_all(self) -> None:
        """SIGTERM to every live worker (uvicorn finishes or closes its requests), SIGKILL after
        ``stop_timeout_s``."""
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + self.stop_timeout_s
        while any(w.process.is_alive() for w in self._workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker in self._workers:
            if worker.process.is_alive():
                log.warning("worker %d (pid %d) ignored SIGTERM for %g s: killing it",
                            worker.index, worker.process.pid, self.stop_timeout_s)
                worker.process.kill()
            worker.process.join()
            worker.ready.close()


__all__ = ["Supervisor", "reuseport_socket", "worker_settings"]
