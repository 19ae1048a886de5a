#!/usr/bin/env python
"""``--cache watch`` beside the default (fresh) mount, raw nats-py and tmpfs.

One run starts a nats-server, two ``hvfs mount`` subprocesses of it (the
default, and ``--cache watch``) and a tmpfs, then prints:

* read (open+read+close of a 100-byte value; raw: ``kv.get``), p50 and p99, in
  interleaved blocks, and each mount's ratio to raw;
* the staleness window of ``--cache watch``: a raw client puts a new value of a
  key the watch mount has read; from the put's ack, the watch mount's file is read
  in a loop until it shows the new value. Reported: p50 / p99 / max of that
  time, and how many reads showed the older value; idle, and with a background
  of ``--rate`` changes/s to other keys of the bucket (another process);
* the same window for the default mount (every open gets the latest value, so
  the first read after the ack is new: the window is the read's own time).

It prints numbers and never asserts. Usage::

    .venv/bin/python bench/bench_cache.py [--n 2000] [--changes 300] [--rate 1000]
"""

# Blocking file I/O inside coroutines is deliberate: the file operations are what is timed.
# ruff: noqa: ASYNC220, ASYNC230, ASYNC240, ASYNC251

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nats  # noqa: E402
from bench_kv import ROOT, MountProc, Tmpfs, log, median, pct, time_async, time_sync  # noqa: E402

from hvfs.server import EmbeddedServer  # noqa: E402

BUCKET = "cachebench"

#: another process: ``rate`` puts/s to keys bg.0 .. bg.999 until killed
BACKGROUND = r"""
import asyncio, sys, time, nats
async def main(url, bucket, rate):
    nc = await nats.connect(url)
    kv = await (nc.jetstream()).key_value(bucket)
    n, t0 = 0, time.monotonic()
    while True:
        await kv.put(f"bg.{n % 1000}", b"b" * 100)
        n += 1
        ahead = n / rate - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


def reader(path: str) -> Any:
    def fn() -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, 65536)
        finally:
            os.close(fd)
    return fn


class CacheBench:
    def __init__(self, a: argparse.Namespace, tmp: Path) -> None:
        self.a = a
        self.tmp = tmp
        self.srv = EmbeddedServer(tmp / "nats")
        self.fresh = MountProc(tmp / "fresh", "", tmp / "fresh.log", [])
        self.watch = MountProc(tmp / "watch", "", tmp / "watch.log", ["--cache", "watch"])
        self.tfs = Tmpfs(tmp / "tmpfs")
        self.nc: Any = None
        self.kv: Any = None
        self.rows: list[tuple[str, ...]] = []

    def path(self, m: MountProc, key: str) -> str:
        return str(m.mountpoint / "kv" / BUCKET / key)

    async def start(self) -> None:
        self.srv.start()
        self.nc = await nats.connect(self.srv.url)
        js = self.nc.jetstream()
        self.kv = await js.create_key_value(bucket=BUCKET, history=1)
        await self.kv.put("small", b"v" * 100)
        await self.kv.put("stale", b"0")
        for m in (self.fresh, self.watch):
            m.server = self.srv.url
            m.start()
        self.tfs.start()
        (self.tfs.path / "small").write_bytes(b"v" * 100)
        for m in (self.fresh, self.watch):
            deadline = time.monotonic() + 10
            while not os.path.exists(self.path(m, "small")) and time.monotonic() < deadline:
                time.sleep(0.01)

    async def reads(self) -> None:
        n, w, rounds = self.a.n, self.a.warmup, 10
        kinds = {"raw": lambda: self.kv.get("small"), "fresh": reader(self.path(self.fresh, "small")),
                 "watch": reader(self.path(self.watch, "small")), "tmpfs": reader(str(self.tfs.path / "small"))}
        out: dict[str, list[float]] = {k: [] for k in kinds}
        await time_async(kinds["raw"], 0, w)
        for k in ("fresh", "watch", "tmpfs"):
            time_sync(kinds[k], 0, w)
        st0 = self.watch.status()
        for _ in range(rounds):
            out["raw"] += await time_async(kinds["raw"], n // rounds, 0)
            for k in ("fresh", "watch", "tmpfs"):
                out[k] += time_sync(kinds[k], n // rounds, 0)
        st1 = self.watch.status()
        hits = st1["cache"]["hits"] - st0["cache"]["hits"]
        raw50, raw99 = median(out["raw"]), pct(out["raw"], 99)
        self.rows.append(("read 100 B, p50 / p99 (µs)", f"{raw50:,.0f} / {raw99:,.0f}",
                          f"{median(out['fresh']):,.0f} / {pct(out['fresh'], 99):,.0f} "
                          f"({median(out['fresh']) / raw50:.2f}x)",
                          f"{median(out['watch']):,.0f} / {pct(out['watch'], 99):,.0f} "
                          f"({median(out['watch']) / raw50:.2f}x; {hits / (n // rounds * rounds):.0%} hits)",
                          f"{median(out['tmpfs']):,.1f} / {pct(out['tmpfs'], 99):,.1f}"))

    async def window(self, m: MountProc, label: str) -> tuple[list[float], int, int]:
        """ms from each put's ack until ``m`` shows the value; stale reads seen; reads."""
        path = self.path(m, "stale")
        rd = reader(path)
        times: list[float] = []
        stale = reads = 0
        for i in range(self.a.changes):
            want = f"{label}-{i}".encode()
            rd()  # the current value is read (and, with --cache watch, kept) first
            await self.kv.put("stale", want)
            t0 = time.perf_counter()
            deadline = t0 + 5
            while True:
                got = rd()
                reads += 1
                if got == want:
                    break
                stale += 1
                if time.perf_counter() > deadline:
                    log(f"{label}: value {i} not seen within 5 s")
                    break
            times.append((time.perf_counter() - t0) * 1000)
        return times, stale, reads

    async def windows(self, background: bool) -> None:
        bg: subprocess.Popen[bytes] | None = None
        if background:
            bg = subprocess.Popen([sys.executable, "-c", BACKGROUND, self.srv.url, BUCKET, str(self.a.rate)],
                                  cwd=str(ROOT))
            time.sleep(1.0)  # the background reaches its rate (not a synchronisation: load only)
        try:
            cols = []
            for m, name in ((self.fresh, "fresh"), (self.watch, "watch")):
                times, stale, reads = await self.window(m, name + ("-bg" if background else ""))
                cols.append(f"{median(times):.2f} / {pct(times, 99):.2f} / {max(times):.2f} ms; "
                            f"{stale} of {reads} reads old")
        finally:
            if bg is not None:
                bg.kill()
                bg.wait(5)
        what = f"with {self.a.rate:,.0f} changes/s to other keys" if background else "idle"
        self.rows.append((f"put ack → the mount reads it, p50 / p99 / max ({what})", "–", cols[0], cols[1], "–"))

    async def run(self) -> None:
        await self.start()
        log(f"server {self.srv.url}; fresh mount pid {self.fresh.pid}, watch mount pid {self.watch.pid}")
        log("reads")
        await self.reads()
        log("staleness, idle")
        await self.windows(False)
        log(f"staleness, {self.a.rate} changes/s background")
        await self.windows(True)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        for m in (self.fresh, self.watch):
            m.stop()
        self.tfs.stop()
        self.srv.stop()

    def report(self) -> str:
        head = ("measure", "raw nats-py", "mount (default: fresh)", "mount --cache watch", "tmpfs")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="timed reads per column (default 2000)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--changes", type=int, default=300, help="changes timed per staleness row (default 300)")
    p.add_argument("--rate", type=float, default=1000.0, help="background changes/s (default 1000)")
    return p.parse_args(argv)


async def main(a: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hvfs-bench-cache-") as d:
        b = CacheBench(a, Path(d))
        try:
            await b.run()
        finally:
            await b.close()
        print(b.report())


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
