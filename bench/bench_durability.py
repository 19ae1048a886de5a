#!/usr/bin/env python
"""What JetStream ``sync_interval: always`` costs: a KV write with it and without, side by side.

One run starts two nats-servers (``hvfs.server.EmbeddedServer``, each with its
store in a temp dir on the same disk): one with ``sync="always"`` (the embedded
server's default: fsync before every acknowledgement), one with
``sync="default"`` (nats-server's own: fsync every 2 minutes), and an
``hvfs mount`` subprocess on each. It times, in interleaved blocks so that the
machine's drift hits both columns alike:

* raw ``kv.put`` (nats-py, persistent connection, 100-byte value),
* raw ``kv.update(last=REV)`` (the CAS write hvfs does),
* a write through the mount: ``os.open(O_WRONLY|O_TRUNC)`` + ``os.write`` + ``os.close``
  of an existing key (one acknowledged revision per close),
* and, for scale, the disk itself: append 100 B + ``fsync`` in the same temp dir.

It prints p50/p99 per row and column and never asserts. Everything it starts is
stopped in ``finally`` (servers and mounts by PID; ``fusermount3 -u -z`` if a
mount is left); ``--max-seconds`` bounds the timed part. Usage::

    .venv/bin/python bench/bench_durability.py [--n 2000] [--rounds 10] [--no-mount]
"""

# The mount writes are blocking calls in the same process as the asyncio loop
# that times the raw ones; they never run at the same time.
# ruff: noqa: ASYNC230

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.js.api import KeyValueConfig  # noqa: E402

from hvfs.server import SYNC_ALWAYS, SYNC_DEFAULT, EmbeddedServer  # noqa: E402
from tests.helpers import Mount  # noqa: E402

BUCKET = "durability"
MODES = (SYNC_ALWAYS, SYNC_DEFAULT)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    s = sorted(samples)
    if not s:
        return float("nan")
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def fsync_probe(where: Path, n: int) -> list[float]:
    """The disk's own cost: append 100 B and fsync, ``n`` times (what sync always adds per write)."""
    path = where / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            out.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return out


def fs_type(path: Path) -> str:
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True)
    return r.stdout.strip() or "?"


class Side:
    """One server with one sync mode, a nats-py connection and (optionally) a mount on it."""

    def __init__(self, mode: str, tmp: Path, with_mount: bool) -> None:
        self.mode = mode
        self.srv = EmbeddedServer(tmp / f"nats-{mode}", sync=mode)
        self.mount = Mount(tmp / f"mnt-{mode}" / "m", "", log=tmp / f"mount-{mode}.log") \
            if with_mount else None
        self.nc: Any = None
        self.kv: Any = None
        self.rev = 0
        self.samples: dict[str, list[float]] = {"put": [], "update": [], "mount write": []}

    async def connect(self, value: bytes) -> None:
        self.nc = await nats.connect(self.srv.url)
        js = self.nc.jetstream()
        self.kv = await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1))
        self.rev = await self.kv.put("cas", value)
        await self.kv.put("file", value)

    async def time_put(self, n: int, value: bytes) -> None:
        out = self.samples["put"]
        for i in range(n):
            t0 = time.perf_counter()
            await self.kv.put(f"k{i % 100}", value)
            out.append(time.perf_counter() - t0)

    async def time_update(self, n: int, value: bytes) -> None:
        out = self.samples["update"]
        for _ in range(n):
            t0 = time.perf_counter()
            self.rev = await self.kv.update("cas", value, last=self.rev)
            out.append(time.perf_counter() - t0)

    def time_mount_write(self, n: int, value: bytes) -> None:
        assert self.mount is not None
        p = str(self.mount.path("kv", BUCKET, "file"))
        out = self.samples["mount write"]
        for _ in range(n):
            t0 = time.perf_counter()
            fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, value)
            finally:
                os.close(fd)
            out.append(time.perf_counter() - t0)

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.nc is not None:
            try:
                loop.run_until_complete(asyncio.wait_for(self.nc.close(), 5))
            except Exception as e:  # a close that fails must not keep the rest running
                log(f"{self.mode}: nats close: {e!r}")
        if self.mount is not None:
            self.mount.stop()
        self.srv.stop()


def run(a: argparse.Namespace, tmp: Path) -> None:
    value = b"v" * a.value_size
    loop = asyncio.new_event_loop()
    sides = [Side(m, tmp, not a.no_mount) for m in MODES]
    try:
        for s in sides:
            s.srv.start()
            loop.run_until_complete(s.connect(value))
            if s.mount is not None:
                s.mount.server = s.srv.url
                s.mount.start()
        log(f"servers {[s.srv.url for s in sides]}, store on {fs_type(tmp)}")
        jobs: list[tuple[str, Callable[[Side, int], None]]] = [
            ("put", lambda s, k: loop.run_until_complete(s.time_put(k, value))),
            ("update", lambda s, k: loop.run_until_complete(s.time_update(k, value))),
        ]
        if not a.no_mount:
            jobs.append(("mount write", lambda s, k: s.time_mount_write(k, value)))
        for _, job in jobs:  # warm-up, untimed
            for s in sides:
                job(s, a.warmup)
        for s in sides:
            s.samples = {k: [] for k in s.samples}
        deadline = time.monotonic() + a.max_seconds
        per = max(1, a.n // a.rounds)
        for r in range(a.rounds):
            if time.monotonic() > deadline:
                log(f"--max-seconds reached after {r} of {a.rounds} rounds")
                break
            order = sides if r % 2 == 0 else sides[::-1]
            for _, job in jobs:
                for s in order:
                    job(s, per)
        report(a, sides, fs_type(tmp), fsync_probe(tmp, a.n))
    finally:
        for s in sides:
            s.stop(loop)
        loop.close()


def report(a: argparse.Namespace, sides: list[Side], fs: str, fsync: list[float]) -> None:
    us = 1e6
    always, default = sides
    print(f"\nJetStream sync_interval: always vs default (2 min), nats-server store on {fs}, "
          f"value {a.value_size} B, times in µs")
    print(f"{'':<14}{'always p50':>11}{'p99':>8}{'default p50':>13}{'p99':>8}"
          f"{'p50 +':>8}{'n':>7}")
    for row in ("put", "update", "mount write"):
        x, y = always.samples[row], default.samples[row]
        if not x or not y:
            continue
        print(f"{row:<14}{pct(x, .5) * us:>11.0f}{pct(x, .99) * us:>8.0f}"
              f"{pct(y, .5) * us:>13.0f}{pct(y, .99) * us:>8.0f}"
              f"{(pct(x, .5) - pct(y, .5)) * us:>8.0f}{len(x):>7}")
    print(f"{'disk fsync':<14}{pct(fsync, .5) * us:>11.0f}{pct(fsync, .99) * us:>8.0f}"
          f"{'':>13}{'':>8}{'':>8}{len(fsync):>7}   (append 100 B + fsync, same disk: the floor of the cost)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="timed operations per row and column")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved blocks")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--no-mount", action="store_true", help="raw nats-py rows only")
    ap.add_argument("--max-seconds", type=float, default=300, help="bound on the timed part")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server and mount logs)")
    a = ap.parse_args()
    if not a.no_mount and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        log("/dev/fuse is not available: raw rows only")
        a.no_mount = True
    # Not /dev/shm: fsync on tmpfs costs nothing and would hide what is measured.
    tmp = Path(tempfile.mkdtemp(prefix="hvfs-durability-", dir="/var/tmp"))
    try:
        run(a, tmp)
    finally:
        if a.keep:
            log(f"kept {tmp}")
        else:
            subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
