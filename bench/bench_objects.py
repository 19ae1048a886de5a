#!/usr/bin/env python
"""hvfs object store benchmark (issue 15): the mount beside raw nats-py and tmpfs.

One run starts everything it measures and stops it again: a nats-server with its
store in a temp dir, an ``hvfs mount`` subprocess (stopped by PID, unmounted), a
fresh tmpfs. It prints numbers and never asserts:

* sequential write and read of one ``--mib`` object (100 MiB): nats-py's object
  store ``put`` (from a file) and ``get`` (into a sink), the mount (1 MiB writes,
  then close: the put; 1 MiB reads of a fresh open), tmpfs; best of ``--runs``;
* the mount's RSS growth (peak over the idle mount) while writing and then reading
  one ``--big-mib`` object (1 GiB), sampled every 20 ms.

Usage::

    .venv/bin/python bench/bench_objects.py [--mib 100] [--big-mib 1024] [--runs 3]
"""

# Blocking file I/O inside coroutines is deliberate: the file operations are what is timed.
# ruff: noqa: ASYNC230

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats  # noqa: E402
from bench_kv import MountProc, Tmpfs, log, rss_bytes  # noqa: E402
from nats.js.api import ObjectStoreConfig  # noqa: E402

from hvfs.server import EmbeddedServer  # noqa: E402

MiB = 1 << 20
BUCKET = "bench"


class Sink:
    """Where nats-py's ``get`` writes: counts and drops (the mount's reader drops too)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


def write_file(path: Path, block: bytes, blocks: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(blocks):
            os.write(fd, block)
    finally:
        os.close(fd)  # the mount's put happens here


def copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as f:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while b := f.read(MiB):
                os.write(fd, b)
        finally:
            os.close(fd)


def read_file(path: Path) -> int:
    n = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while b := os.read(fd, MiB):
            n += len(b)
    finally:
        os.close(fd)
    return n


def best(fn: Any, runs: int) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


class RssPeak:
    """The peak RSS of a process while a block runs (sampled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self) -> RssPeak:
        self.base = rss_bytes(self.pid)
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hvfs-bench-obj-"))
    srv = EmbeddedServer(tmp / "nats")
    srv.start()
    mnt = MountProc(tmp / "mnt", srv.url, tmp / "mount.log", ["--state-dir", str(tmp / "state")])
    tfs = Tmpfs(tmp / "tmpfs")
    try:
        mnt.start()
        tfs.start()
        src = Path(tempfile.mkdtemp(prefix="hvfs-bench-src-", dir="/dev/shm")) / "src"
        src.write_bytes(os.urandom(args.mib * MiB))
        size = args.mib * MiB

        import asyncio

        loop = asyncio.new_event_loop()
        nc = loop.run_until_complete(nats.connect(srv.url))
        js = nc.jetstream(timeout=60)
        obs = loop.run_until_complete(js.create_object_store(BUCKET, config=ObjectStoreConfig()))

        def raw_put() -> None:
            with open(src, "rb") as f:
                loop.run_until_complete(obs.put("raw", f))

        def raw_get() -> None:
            s = Sink()
            loop.run_until_complete(obs.get("raw", writeinto=s))  # type: ignore[arg-type]
            assert s.n == size, s.n

        d = mnt.mountpoint / "obj" / BUCKET
        deadline = time.monotonic() + 10
        while not d.is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)
        log(f"{args.mib} MiB sequential, best of {args.runs}")
        rows = [
            ("raw nats-py object store", best(raw_put, args.runs), best(raw_get, args.runs)),
            ("hvfs mount obj/", best(lambda: copy_file(src, d / "m"), args.runs),
             best(lambda: read_file(d / "m"), args.runs)),
            (f"{tfs.kind}", best(lambda: copy_file(src, tfs.path / "t"), args.runs),
             best(lambda: read_file(tfs.path / "t"), args.runs)),
        ]
        assert (d / "m").stat().st_size == size
        print(f"\n{args.mib} MiB object, sequential (best of {args.runs})")
        print(f"{'':28} {'write s':>9} {'MiB/s':>8} {'read s':>9} {'MiB/s':>8}")
        for name, w, r in rows:
            print(f"{name:28} {w:9.3f} {args.mib / w:8.1f} {r:9.3f} {args.mib / r:8.1f}")
        w_ratio, r_ratio = rows[1][1] / rows[0][1], rows[1][2] / rows[0][2]
        print(f"mount / raw: write {w_ratio:.2f}x, read {r_ratio:.2f}x")

        loop.run_until_complete(obs.delete("raw"))
        os.unlink(d / "m")
        block = os.urandom(MiB)
        log(f"{args.big_mib} MiB write and read through the mount, RSS sampled")
        idle = rss_bytes(mnt.pid)
        with RssPeak(mnt.pid) as wr:
            t0 = time.perf_counter()
            write_file(d / "big", block, args.big_mib)
            tw = time.perf_counter() - t0
        with RssPeak(mnt.pid) as rd:
            t0 = time.perf_counter()
            n = read_file(d / "big")
            tr = time.perf_counter() - t0
        assert n == args.big_mib * MiB
        print(f"\n{args.big_mib} MiB object through the mount (RSS idle {idle / MiB:.1f} MiB)")
        print(f"write: {tw:7.2f} s ({args.big_mib / tw:6.1f} MiB/s), RSS growth {(wr.peak - idle) / MiB:6.1f} MiB")
        print(f"read:  {tr:7.2f} s ({args.big_mib / tr:6.1f} MiB/s), RSS growth {(rd.peak - idle) / MiB:6.1f} MiB")
        os.unlink(d / "big")
        loop.run_until_complete(nc.close())
        loop.close()
        src.unlink()
        src.parent.rmdir()
    finally:
        mnt.stop()
        tfs.stop()
        srv.stop()


if __name__ == "__main__":
    main()
