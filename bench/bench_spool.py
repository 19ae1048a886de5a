#!/usr/bin/env python
"""What the spool costs a write (docs/errors.md, "Crash of hvfs"), side by side in one run.

Per write through the mount, the spool makes two files at the handle's first
change (``<id>.json``, ``<id>.data`` with the content), mirrors each further
write with one ``pwrite``, and removes both files once the bytes land. This times
exactly those calls (``hvfs.vfs.spool.Spool``, on the state directory's disk) for
one ``echo value > FILE`` (one write) and for a 64 KiB value written in 4 KiB
writes, beside a raw nats-py ``kv.update`` of the same value on a local
nats-server and the same writes to a tmpfs file. Offline mode adds an fsync of
the data file and of the entry (``adopt`` + ``mark_pending``) only when NATS is
away; that is timed too. Prints p50 and p99 in microseconds; never asserts.

    .venv/bin/python bench/bench_spool.py [--n 2000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

from hvfs.server import EmbeddedServer  # noqa: E402
from hvfs.vfs.handles import Handle  # noqa: E402
from hvfs.vfs.spool import Spool  # noqa: E402
from hvfs.vfs.tree import Kind, Node  # noqa: E402


class _View:
    bucket = "bench"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e6


def spool_cycle(sp: Spool, value: bytes, chunk: int) -> float:
    node = Node(2, Kind.KV, b"k", None)
    node.view, node.key = _View(), "k"  # type: ignore[assignment]
    h = Handle(1, node, True, bytearray(), 1)
    t0 = time.perf_counter()
    for off in range(0, len(value), chunk):
        buf = value[off:off + chunk]
        h.data[off:off + len(buf)] = buf
        sp.wrote(h, off, buf)
    sp.done(h)
    return time.perf_counter() - t0


def pending_cycle(sp: Spool, value: bytes) -> float:
    node = Node(2, Kind.KV, b"k", None)
    node.view, node.key = _View(), "k"  # type: ignore[assignment]
    h = Handle(1, node, True, bytearray(value), 1)
    t0 = time.perf_counter()
    sp.wrote(h, 0, value)
    sid = sp.adopt(h)
    sp.mark_pending(sid, "x", 1, [])
    dt = time.perf_counter() - t0
    sp.drop(sid)
    return dt


def tmpfs_cycle(path: Path, value: bytes, chunk: int) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for off in range(0, len(value), chunk):
        os.write(fd, value[off:off + chunk])
    os.close(fd)
    return time.perf_counter() - t0


async def raw_updates(url: str, value: bytes, n: int) -> list[float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="spoolbench", history=1)
        rev = await kv.put("k", b"")
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            rev = await kv.update("k", value, last=rev)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dir", help="state directory to spool in (default: a temp dir under ~/.local/state)")
    a = ap.parse_args()
    base = Path(a.dir) if a.dir else Path.home() / ".local" / "state"
    base.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(dir=base) as state, tempfile.TemporaryDirectory(dir="/dev/shm") as shm, \
            tempfile.TemporaryDirectory() as store:
        sp = Spool(Path(state))
        server = EmbeddedServer(store)
        server.start()
        try:
            for label, value, chunk in (("echo line (12 B, 1 write)", b"hello world\n", 4096),
                                        ("64 KiB in 4 KiB writes", os.urandom(65536), 4096)):
                raw: Any = asyncio.run(raw_updates(server.url, value, a.n))
                rows.append((f"raw kv.update, {label}", raw))
                rows.append((f"spool, {label}", [spool_cycle(sp, value, chunk) for _ in range(a.n)]))
                rows.append((f"tmpfs write, {label}", [tmpfs_cycle(Path(shm) / "f", value, chunk)
                                                       for _ in range(a.n)]))
                rows.append((f"offline pending (fsync), {label}", [pending_cycle(sp, value)
                                                                   for _ in range(max(50, a.n // 10))]))
        finally:
            server.stop()
    print(f"{'what':48} {'p50 µs':>10} {'p99 µs':>10}")
    for name, xs in rows:
        print(f"{name:48} {pct(xs, 0.5):10.1f} {pct(xs, 0.99):10.1f}")


if __name__ == "__main__":
    main()
