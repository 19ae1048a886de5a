#!/usr/bin/env python
"""A fresh mount on a big bucket: how long until it is mounted and lists every key, and
its memory per key.

One run starts a nats-server on a temp dir (or ``--store DIR``, kept, so a million keys
are put once and reused), puts ``--keys`` keys of 100 bytes into bucket ``big`` (as
``agent.k0000000`` ...: one directory), then ``--reps`` times starts ``hvfs mount`` on
it (nothing else mounted) and times: until ``.hvfs/status`` is readable (mounted), the
first ``os.listdir`` of the directory (all keys), and the sum (listable). RSS of the
mount at mount and after the listing; per key over an idle mount's RSS (``--idle``,
measured on an empty server first). Side by side, each in a fresh process as the mount
is: the raw nats-py client listing the same keys (``kv.keys()``, Python start-up
included) and ``os.listdir`` of a tmpfs directory of as many empty files. Prints
numbers, asserts nothing. Usage::

    .venv/bin/python bench/bench_fresh.py [--keys 100000] [--reps 2] [--store DIR]
"""

# Blocking calls inside coroutines are deliberate: the mount is another process.
# ruff: noqa: ASYNC230, ASYNC251

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nats  # noqa: E402
from bench_kv import MountProc, log, rss_bytes  # noqa: E402

from hvfs.server import EmbeddedServer  # noqa: E402

BUCKET = "big"


async def fill(url: str, n: int, batch: int = 2000) -> int:
    """Put keys until the bucket has ``n``; returns how many were put now."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket=BUCKET, history=1)
        have = (await js.stream_info(f"KV_{BUCKET}")).state.messages
        keys = [f"agent.k{i:07d}" for i in range(have, n)]
        for i in range(0, len(keys), batch):
            await asyncio.gather(*(kv.put(k, b"v" * 100) for k in keys[i:i + batch]))
        return len(keys)
    finally:
        await nc.close()


_RAW = """
import asyncio, resource, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    kv = await nc.jetstream().key_value(sys.argv[2])
    keys = await kv.keys(timeout=30)
    await nc.close()
    print(len(keys), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
asyncio.run(main())
"""

_LIST = "import os, sys; print(len(os.listdir(sys.argv[1])))"


def timed(cmd: list[str], timeout: float = 300.0) -> tuple[float, list[str]]:
    """Seconds a fresh process took from spawn to exit, and what it printed (nothing if it
    failed or ran past ``timeout``: it is killed)."""
    t = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.monotonic() - t, []
    return time.monotonic() - t, r.stdout.split() if r.returncode == 0 else []


def tmpfs_listing(n: int) -> float:
    """A fresh process's ``os.listdir`` of a tmpfs directory of ``n`` empty files."""
    d = Path("/dev/shm") / f"hvfs-bench-fresh-{os.getpid()}"
    d.mkdir()
    try:
        for i in range(n):
            (d / f"k{i:07d}").touch()
        return timed([sys.executable, "-c", _LIST, str(d)])[0]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def one_mount(tmp: Path, url: str, rep: int, keys: int) -> dict[str, float]:
    mp = tmp / f"m{rep}"
    m = MountProc(mp, url, tmp / f"m{rep}.log", ["--state-dir", str(tmp / f"state{rep}")])
    try:
        t0 = time.monotonic()
        m.start(timeout=600)
        t1 = time.monotonic()
        rss0 = rss_bytes(m.pid)
        d = mp / "kv" / BUCKET / "agent" if keys else mp / "kv"
        n = len(os.listdir(d))
        t2 = time.monotonic()
        return {"mounted": t1 - t0, "listdir": t2 - t1, "listable": t2 - t0, "entries": n,
                "rss_mount": rss0, "rss_listed": rss_bytes(m.pid)}
    finally:
        m.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--store", help="nats-server store dir, kept (reused by later runs)")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hvfs-bench-fresh-"))
    try:
        idle_srv = EmbeddedServer(tmp / "idle")
        idle_srv.start()
        try:
            idle = one_mount(tmp, idle_srv.url, 99, 0)["rss_mount"]
        finally:
            idle_srv.stop()
        srv = EmbeddedServer(Path(a.store) if a.store else tmp / "nats")
        srv.start()
        try:
            t = time.monotonic()
            put = asyncio.run(fill(srv.url, a.keys))
            log(f"{put:,} keys put in {time.monotonic() - t:.1f} s; bucket has {a.keys:,}")
            rows = [one_mount(tmp, srv.url, r, a.keys) for r in range(a.reps)]
            raws = [timed([sys.executable, "-c", _RAW, srv.url, BUCKET]) for _ in range(a.reps)]
        finally:
            srv.stop()
        tmpfs = tmpfs_listing(a.keys)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| fresh mount on {a.keys:,} keys | mounted s | first listdir s | listable s | RSS at mount MiB "
          f"| RSS listed MiB | bytes/key at mount | bytes/key listed |")
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| run {i + 1} ({r['entries']:,.0f} names) | {r['mounted']:.2f} | {r['listdir']:.2f} | "
              f"{r['listable']:.2f} | {r['rss_mount'] / 2**20:.0f} | {r['rss_listed'] / 2**20:.0f} | "
              f"{(r['rss_mount'] - idle) / a.keys:.0f} | {(r['rss_listed'] - idle) / a.keys:.0f} |")
    for i, (secs, out) in enumerate(raws):
        if not out:
            print(f"| raw nats-py `kv.keys()`, fresh process, run {i + 1}: no list (failed or stalled; "
                  f"gave up after {secs:.0f} s) | | | | | | | |")
            continue
        print(f"| raw nats-py `kv.keys()`, fresh process, run {i + 1} ({int(out[0]):,} keys) | | | "
              f"{secs:.2f} | | {int(out[1]) / 2**20:.0f} (peak) | | |")
    print(f"| tmpfs `os.listdir`, fresh process ({a.keys:,} files) | | | {tmpfs:.2f} | | | | |")
    print(f"\nidle mount (empty server): {idle / 2**20:.1f} MiB RSS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
