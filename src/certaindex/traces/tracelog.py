"""An append-only folder of trace files that many concurrent writers can share without losing data.

:class:`TraceLog` keeps one open JSONL trace file (the format of :mod:`certaindex.traces.format`)
per distinct :class:`TraceSettings`, named ``shadow-<model>-<settings hash>-<time>-<pid>-<n>.jsonl``
so several processes never share a file. Every record is one ``write`` of one whole line on a
file opened with ``O_APPEND`` (no user-space buffer: it is on its way to disk when ``write``
returns); a write that fails midway is cut back to the last whole line, so a reader never meets a
partial line. A file that passes ``max_bytes`` is closed and the next record opens a new one
(rotation). Writes take a lock, so threads may call :meth:`TraceLog.write` at once.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from certaindex.traces.format import TraceHeader, TraceRecord, TraceSettings

__all__ = ["TraceLog", "check_writable_dir"]

_SERIAL = itertools.count(1)  # file names unique within the process (the pid makes them unique across)


@dataclass
class _Open:
    fd: int
    path: Path
    size: int


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:60] or "model"


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def check_writable_dir(directory: str | os.PathLike[str], option: str = "--shadow") -> Path:
    """Create ``directory`` if needed and check that files can be created in it, at startup
    (``ValueError`` with one line saying why not); later disk errors are only logged."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".certaindex-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write trace files there ({exc.strerror or exc})") from None
    return path


class TraceLog:
    """Append trace records to files under ``directory`` (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str], model: str, engine: str, dataset: str,
                 max_bytes: int = 256 * 1024 * 1024, prefix: str = "shadow") -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.directory = Path(directory)
        self.model, self.engine, self.dataset = model, engine, dataset
        self.max_bytes = max_bytes
        self.prefix = prefix
        self._lock = threading.Lock()
        self._files: dict[str, _Open] = {}
        self.written = 0

    def _key(self, settings: TraceSettings) -> str:
        return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:10]

    def _open(self, settings: TraceSettings, key: str) -> _Open:
        self.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        while True:
            name = f"{self.prefix}-{_slug(self.model)}-{key}-{now:%Y%m%dT%H%M%S}-{os.getpid()}-{next(_SERIAL)}.jsonl"
            path = self.directory / name
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)  # prompts: owner only
                break
            except FileExistsError:  # a file of an earlier process with the same pid: never append to it
                continue
        header = TraceHeader(model=self.model, engine=self.engine, settings=settings,
                             created=now.isoformat(timespec="seconds"), dataset=self.dataset)
        opened = _Open(fd, path, 0)
        try:
            self._append(opened, _line(header.to_dict()))
        except OSError:
            os.close(fd)
            try:
                path.unlink()  # a file without its header is no trace file
            except OSError:
                pass
            raise
        return opened

    @staticmethod
    def _append(opened: _Open, data: bytes) -> None:
        """Write ``data`` whole, or cut the file back to where it was and raise."""
        view = memoryview(data)
        try:
            while view:
                written = os.write(opened.fd, view)
                view = view[written:]
        except OSError:
            try:
                os.ftruncate(opened.fd, opened.size)
            except OSError:
                pass
            raise
        opened.size += len(data)

    def write(self, settings: TraceSettings, record: TraceRecord) -> Path:
        """Append ``record`` to the file of ``settings``; returns its path. Raises ``OSError`` (the
        file then holds only whole lines) for the caller to log."""
        data = _line(record.to_dict())
        key = self._key(settings)
        with self._lock:
            opened = self._files.get(key)
            if opened is not None and opened.size >= self.max_bytes:
                os.close(opened.fd)
                del self._files[key]
                opened = None
            if opened is None:
                opened = self._files[key] = self._open(settings, key)
            self._append(opened, data)
            self.written += 1
            return opened.path

    def close(self) -> None:
        with self._lock:
            for opened in self._files.values():
                try:
                    os.close(opened.fd)
                except OSError:
                    pass
            self._files.clear()
