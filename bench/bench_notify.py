"""Change notification: remote write acknowledged -> inotify event on the mount.

Prints (does not assert):
  1. latency from a raw nats-py put's acknowledgement to the IN_CREATE /
     IN_MODIFY event on the mount, median / p99 over N changes (target:
     median < 20 ms, p99 < 200 ms);
  2. a storm of 10,000 remote changes: how long until the kernel heard all of
     them, and the worst latency of stat/cat of another file meanwhile;
  3. kernel caching on vs off (--no-notify): stat, ls -l, repeated cat.

Run as root: .venv/bin/python bench/bench_notify.py [--n 1000] [--storm 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats  # noqa: E402

from hvfs.server import EmbeddedServer  # noqa: E402

IN_CREATE, IN_MODIFY, IN_DELETE, IN_CLOSE_WRITE = 0x100, 0x2, 0x200, 0x8
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class Inotify:
    """Minimal inotify on one directory, events timestamped as they are read."""

    def __init__(self, path: Path, mask: int) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK)
        if _libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.seen: dict[tuple[int, str], float] = {}
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if not r:
                continue
            now = time.perf_counter()
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            off = 0
            while off < len(buf):
                _wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16: off + 16 + ln].rstrip(b"\0").decode()
                off += 16 + ln
                for bit in (IN_CREATE, IN_MODIFY, IN_DELETE):
                    if mask & bit:
                        self.seen.setdefault((bit, name), now)

    def wait(self, bit: int, name: str, timeout: float = 5.0) -> float | None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            t = self.seen.get((bit, name))
            if t is not None:
                return t
            time.sleep(0.0002)
        return None

    def close(self) -> None:
        self._stop = True
        self._t.join(1)
        os.close(self.fd)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def start_mount(mp: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    mp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "hvfs", "mount", str(mp), "--server", url,
                             "--log-level", "WARNING", *extra], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (mp / ".hvfs" / "status").exists():
            return proc
        time.sleep(0.02)
    raise SystemExit("mount did not come up")


def stop_mount(proc: subprocess.Popen[bytes], mp: Path) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


async def bench_latency(url: str, mp: Path, n: int) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="lat", history=1)
    d = mp / "kv" / "lat"
    while not d.is_dir():  # noqa: ASYNC110 - polling the filesystem, no event to wait on
        await asyncio.sleep(0.01)
    ino = Inotify(d, IN_CREATE | IN_MODIFY | IN_DELETE)
    create, modify, missed = [], [], 0
    try:
        for i in range(n):
            key = f"k{i}"
            await kv.put(key, b"v1")
            t0 = time.perf_counter()
            t = await asyncio.to_thread(ino.wait, IN_CREATE, key)
            if t is None:
                missed += 1
            else:
                create.append((t - t0) * 1000)
            await kv.put(key, b"v2")
            t0 = time.perf_counter()
            t = await asyncio.to_thread(ino.wait, IN_MODIFY, key)
            if t is None:
                missed += 1
            else:
                modify.append((t - t0) * 1000)
    finally:
        ino.close()
        await nc.close()
    return {"create_p50": statistics.median(create), "create_p99": pct(create, 0.99),
            "modify_p50": statistics.median(modify), "modify_p99": pct(modify, 0.99), "missed": missed}


async def bench_storm(url: str, mp: Path, n: int, watched: bool = True) -> dict[str, float]:
    """``watched``: an inotify watcher on the bucket (every change is repeated for it); else
    nobody watches, and the notifier only invalidates the kernel's caches in a storm."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    bucket = "storm" if watched else "stormq"
    kv = await js.create_key_value(bucket=bucket, history=1)
    await kv.put("probe", b"p" * 100)
    d = mp / "kv" / bucket
    while not (d / "probe").exists():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    ino = Inotify(d, IN_CREATE | IN_MODIFY | IN_DELETE) if watched else None
    probe_lat: list[float] = []
    stop = threading.Event()

    def prober() -> None:
        p = d / "probe"
        while not stop.is_set():
            t0 = time.perf_counter()
            os.stat(p)
            p.read_bytes()
            probe_lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.002)

    before = json.loads((mp / ".hvfs" / "status").read_text()).get("notifier", {})
    th = threading.Thread(target=prober)
    th.start()
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(256)

    async def one(i: int) -> None:
        async with sem:
            await js.publish(f"$KV.{bucket}.s{i % (n // 2)}", b"x" * 32)

    await asyncio.gather(*(one(i) for i in range(n)))
    t_acked = time.perf_counter() - t0
    # The kernel has heard everything when the notifier's queue is empty again.
    t_last = None
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        nt = json.loads((mp / ".hvfs" / "status").read_text()).get("notifier", {})
        heard = ino.seen.get((IN_CREATE, f"s{n // 2 - 1}")) if ino is not None else \
            os.path.exists(d / f"s{n // 2 - 1}")  # noqa: ASYNC240
        if nt.get("queue") == 0 and nt.get("done", 0) + nt.get("failed", 0) >= nt.get("queued", 1) and heard:
            t_last = time.perf_counter()
            break
        await asyncio.sleep(0.01)
    status = json.loads((mp / ".hvfs" / "status").read_text())
    stop.set()
    th.join()
    if ino is not None:
        ino.close()
    await nc.close()
    after = status.get("notifier", {})
    return {"changes": n, "acked_s": t_acked,
            "kernel_heard_all_s": (t_last - t0) if t_last else float("nan"),
            "probe_p50_ms": statistics.median(probe_lat), "probe_max_ms": max(probe_lat),
            "notifier": {k: v - before.get(k, 0) if k in ("queued", "done", "failed", "coalesced", "unwatched")
                         else v for k, v in after.items()}}


async def seed_cache_bucket(url: str, n: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="cache", history=1)
    await asyncio.gather(*(kv.put(f"f{i}", b"c" * 200) for i in range(n)))
    await nc.close()


def bench_cache(mp: Path, n: int) -> dict[str, float]:
    d = mp / "kv" / "cache"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(os.listdir(d)) < n:
        time.sleep(0.05)
    f = d / "f1"
    out: dict[str, float] = {}
    lat = []
    for _ in range(2000):
        t0 = time.perf_counter()
        os.stat(f)
        lat.append((time.perf_counter() - t0) * 1e6)
    out["stat_us_p50"] = statistics.median(lat)
    lat = []
    for _ in range(500):
        t0 = time.perf_counter()
        with open(f, "rb") as fh:
            fh.read()
        lat.append((time.perf_counter() - t0) * 1e6)
    out["cat_us_p50"] = statistics.median(lat)
    t0 = time.perf_counter()
    subprocess.run(["ls", "-l", str(d)], stdout=subprocess.DEVNULL, check=True)
    out["ls_l_ms_first"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    subprocess.run(["ls", "-l", str(d)], stdout=subprocess.DEVNULL, check=True)
    out["ls_l_ms_again"] = (time.perf_counter() - t0) * 1000
    # deep path walk: stat of a path whose components are cached (or not)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--storm", type=int, default=10000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedServer(Path(tmp) / "nats", sync="default")  # the notifier is measured, not fsync
        srv.start()
        mp = Path(tmp) / "m"
        proc = start_mount(mp, srv.url)
        try:
            lat = asyncio.run(bench_latency(srv.url, mp, a.n))
            print(f"\n== remote put ack -> inotify event, {a.n} keys (target p50 < 20 ms, p99 < 200 ms)")
            print(f"IN_CREATE  p50 {lat['create_p50']:7.2f} ms   p99 {lat['create_p99']:7.2f} ms")
            print(f"IN_MODIFY  p50 {lat['modify_p50']:7.2f} ms   p99 {lat['modify_p99']:7.2f} ms")
            print(f"missed events: {lat['missed']}")
            for watched in (True, False):
                storm = asyncio.run(bench_storm(srv.url, mp, a.storm, watched))
                who = "an inotify watcher on the bucket" if watched else "nobody watching"
                print(f"\n== storm: {storm['changes']} remote changes over {storm['changes'] // 2} keys, {who}")
                print(f"all acknowledged after {storm['acked_s']:.2f} s; kernel heard the last one after "
                      f"{storm['kernel_heard_all_s']:.2f} s")
                print(f"stat+cat of another file meanwhile: p50 {storm['probe_p50_ms']:.2f} ms, "
                      f"max {storm['probe_max_ms']:.2f} ms")
                print(f"notifier: {storm['notifier']}")
            asyncio.run(seed_cache_bucket(srv.url, 1000))
            cached = bench_cache(mp, 1000)
        finally:
            stop_mount(proc, mp)
        mp2 = Path(tmp) / "m2"
        proc = start_mount(mp2, srv.url, "--no-notify")
        try:
            uncached = bench_cache(mp2, 1000)
        finally:
            stop_mount(proc, mp2)
            srv.stop()
    print("\n== kernel caching: notifier on (caches + invalidation) vs --no-notify (no caches)")
    print(f"{'':22}{'cached':>12}{'uncached':>12}")
    for k in cached:
        print(f"{k:22}{cached[k]:12.1f}{uncached[k]:12.1f}")


if __name__ == "__main__":
    main()
