"""Test helpers: a raw NATS client for "another client", mounts, deadlines."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.js.errors
from nats.js.api import KeyValueConfig

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``cond`` until it is truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class RawNats:
    """Another NATS client (what the nats CLI or a service would be), on its own loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc: Any = self.run(nats.connect(url))
        self.js = self.nc.jetstream()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def kv(self, bucket: str) -> Any:
        return self.run(self.js.key_value(bucket))

    def create_bucket(self, bucket: str, **kw: Any) -> Any:
        kw.setdefault("history", 10)
        return self.run(self.js.create_key_value(KeyValueConfig(bucket=bucket, **kw)))

    def put(self, bucket: str, key: str, value: bytes) -> int:
        return self.run(self.kv(bucket).put(key, value))

    def get(self, bucket: str, key: str) -> Any:
        return self.run(self.kv(bucket).get(key))

    def put_many(self, bucket: str, values: dict[str, bytes], batch: int = 500) -> None:
        """Put many keys, ``batch`` puts in flight at a time."""
        async def go() -> None:
            kv = await self.js.key_value(bucket)
            items = list(values.items())
            for i in range(0, len(items), batch):
                await asyncio.gather(*(kv.put(k, v) for k, v in items[i:i + batch]))
        self.run(go(), timeout=60.0)

    def value(self, bucket: str, key: str) -> bytes | None:
        try:
            return self.get(bucket, key).value or b""
        except nats.js.errors.KeyNotFoundError:
            return None

    def delete(self, bucket: str, key: str) -> None:
        self.run(self.kv(bucket).delete(key))

    def purge(self, bucket: str, key: str) -> None:
        self.run(self.kv(bucket).purge(key))

    def history(self, bucket: str, key: str) -> list[Any]:
        return self.run(self.kv(bucket).history(key))

    def close(self) -> None:
        try:
            self.run(self.nc.close(), timeout=5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def seed_bucket(url: str, bucket: str, values: dict[str, bytes], **kw: Any) -> None:
    """Another client makes ``bucket`` with these keys, then disconnects."""
    raw = RawNats(url)
    try:
        raw.create_bucket(bucket, **kw)
        for k, v in values.items():
            raw.put(bucket, k, v)
    finally:
        raw.close()


def is_mounted(path: str | Path) -> bool:
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Mount:
    """``hvfs mount`` as a real subprocess, stopped by PID, unmounted always."""

    def __init__(self, mountpoint: Path, server: str, *extra: str, log: Path | None = None) -> None:
        self.mountpoint = mountpoint
        self.server = server
        self.extra = list(extra)
        #: the Hvfs-Writer its writes carry (--writer; else the host name, as hvfs defaults)
        self.writer = self.extra[self.extra.index("--writer") + 1] if "--writer" in self.extra \
            else socket.gethostname()
        self.log = log or mountpoint.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "hvfs", "mount", str(self.mountpoint), "--server", self.server,
               "--log-level", "INFO", *self.extra]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hvfs mount exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                up = is_mounted(self.mountpoint) and (self.mountpoint / ".hvfs" / "status").exists()
            except OSError:
                up = False  # a dead mount there (ENOTCONN) until the new one takes its place
            if up:
                return self
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"mount did not appear: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Inotify:
    """``inotifywait -m -r`` on a directory; events collected by a reader thread."""

    def __init__(self, path: Path) -> None:
        import queue

        self.path = path
        self.events: list[tuple[str, str]] = []
        self._q: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            ["inotifywait", "-m", "-r", "--format", "%e|%w%f", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "Watches established" in line:
                break
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev, _, p = line.rstrip("\n").partition("|")
            self.events.append((ev, p))

    def wait(self, event: str, path: Path | str, timeout: float = 3.0) -> tuple[str, str]:
        """Wait for an event whose flags include ``event`` on ``path``."""
        p = str(path)
        want = set(event.split(","))
        return wait_for(lambda: next((e for e in list(self.events)
                                      if want <= set(e[0].split(",")) and e[1] == p), None),
                        timeout, f"{event} on {p} (have {self.events[-10:]})")

    def of(self, path: Path | str) -> list[str]:
        return [e[0] for e in list(self.events) if e[1] == str(path)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def changed_while_away(server: Any, mount: Mount, change: Callable[[RawNats], None]) -> Any:
    """Stop ``server`` (the mount sees it go), make ``change`` through a client of the same
    store served elsewhere (changes the mount cannot see), then serve it again on its port.
    Returns the new server: the caller stops it."""
    from hvfs.server import EmbeddedServer

    port = server.port
    server.stop()
    wait_for(lambda: b'"connected": false' in mount.path(".hvfs", "status").read_bytes(), what="disconnect")
    other = EmbeddedServer(server.store_dir)
    other.start()
    raw = RawNats(other.url)
    try:
        change(raw)
    finally:
        raw.close()
        other.stop()
    again = EmbeddedServer(server.store_dir, port=port)
    again.start()
    return again


def add_stream(raw: RawNats, name: str, subjects: list[str], **kw: Any) -> Any:
    from nats.js.api import StreamConfig

    return raw.run(raw.js.add_stream(StreamConfig(name=name, subjects=subjects, **kw)))


def publish(raw: RawNats, subject: str, data: bytes, headers: dict[str, str] | None = None) -> int:
    return int(raw.run(raw.js.publish(subject, data, headers=headers)).seq)


@dataclass(frozen=True)
class Rev:
    revision: int
    value: bytes
    operation: str | None  # None: a PUT; "DEL" / "PURGE": a marker
    created: datetime.datetime


def history(raw: RawNats, bucket: str, key: str) -> list[Rev]:
    """Every revision of ``key`` the bucket keeps (PUTs and DEL/PURGE markers), oldest first.

    Read message by message (next_by_subj), not with ``KeyValue.history()``: nats-py's
    history watcher can signal "no more entries" before the first one arrives (its
    consumer_info check races the delivery) and then reports an existing key as empty.
    """
    subject = f"$KV.{bucket}.{key}"

    async def run() -> list[Rev]:
        out: list[Rev] = []
        seq = 1
        while True:
            try:
                m = await raw.js.get_msg(f"KV_{bucket}", seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return out
            op = (m.headers or {}).get("KV-Operation")
            out.append(Rev(int(m.seq), m.data or b"", op, m.time))
            seq = int(m.seq) + 1

    return raw.run(run())


def race_exclusive_creates(dirs: list[Path], n: int, name: str = "lock") -> list[Any]:
    """``n`` threads create ``name`` with O_EXCL at once, alternating over ``dirs`` (one
    directory on each of several mounts); each winner writes "winner I". One result per
    thread: "won", or the errno its open failed with."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def claim(i: int) -> None:
        barrier.wait(5)
        try:
            fd = os.open(dirs[i % len(dirs)] / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as e:
            results[i] = e.errno
            return
        try:
            os.write(fd, f"winner {i}\n".encode())
        finally:
            os.close(fd)
        results[i] = "won"

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    return results
