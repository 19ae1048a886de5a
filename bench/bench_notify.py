"""Change notification: remote write acknowledged -> inotify event on the mount.

Prints (does not assert):
  1. latency from a raw nats-py put's acknowledgement to the IN_CREATE /
     IN_MODIFY event on the mount, median / p99 over N changes (target:
     median < 20 ms, p99 < 200 ms);
  1b. the same latency while another process puts --background changes/s (paced) to
     other keys of the bucket: keys bg.N in a directory nobody watches, then keys
     bgN in the watched directory (target: p99 < 50 ms at 1,000 changes/s);
  2. a storm of 10,000 remote changes: how long until the kernel heard all of
     them, and the worst latency of stat/cat of another file meanwhile;
  3. kernel caching on vs off (--no-notify): stat, ls -l, repeated cat.

Run as root: .venv/bin/python bench/bench_notify.py [--n 1000] [--storm 10000]
             [--background 1000] [--cache 1000]     (0 skips a part)
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


def inotify_batch(fd: int, size: int = 1 << 16) -> tuple[float, list[tuple[int, int, bytes]]]:
    """Wait up to 0.1 s for events on inotify descriptor ``fd``: the perf_counter time they
    were read at, and each one's (watch descriptor, mask, name)."""
    r, _, _ = select.select([fd], [], [], 0.1)
    if not r:
        return 0.0, []
    now = time.perf_counter()
    try:
        buf = os.read(fd, size)
    except BlockingIOError:
        return 0.0, []
    out = []
    off = 0
    while off < len(buf):
        wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, off)
        out.append((wd, mask, buf[off + 16: off + 16 + ln].rstrip(b"\0")))
        off += 16 + ln
    return now, out


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
            now, events = inotify_batch(self.fd)
            for _wd, mask, raw in events:
                name = raw.decode()
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
    stop_mount(proc, mp)
    raise SystemExit("mount did not come up")


def stop_mount(proc: subprocess.Popen[bytes], mp: Path) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def notifier_status(mp: Path) -> dict[str, int]:
    return json.loads((mp / ".hvfs" / "status").read_text()).get("notifier", {})


def notifier_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) if k in ("queued", "done", "failed", "coalesced", "unwatched")
            else v for k, v in after.items()}


async def measure_changes(kv, ino: Inotify, keys: list[str], wait_s: float,
                          budget_s: float) -> dict[tuple[int, str], float]:
    """Per key: put (new key -> IN_CREATE), wait for it, put again (-> IN_MODIFY), wait.
    Returns the put-ack time of each expected event; the events are looked up later."""
    acks: dict[tuple[int, str], float] = {}
    t_end = time.perf_counter() + budget_s
    for key in keys:
        if time.perf_counter() > t_end:
            break
        for bit, value in ((IN_CREATE, b"v1"), (IN_MODIFY, b"v2")):
            await kv.put(key, value)
            acks[(bit, key)] = time.perf_counter()
            await asyncio.to_thread(ino.wait, bit, key, wait_s)
    return acks


async def drain(mp: Path, ino: Inotify, acks: dict[tuple[int, str], float], limit_s: float = 60) -> None:
    """Until every expected event arrived, or the notifier has been idle for 1 s."""
    deadline = time.perf_counter() + limit_s
    idle_since = None
    while time.perf_counter() < deadline:
        if all(k in ino.seen for k in acks):
            return
        nt = notifier_status(mp)
        if nt.get("queue") == 0 and nt.get("done", 0) + nt.get("failed", 0) >= nt.get("queued", 1):
            idle_since = idle_since or time.perf_counter()
            if time.perf_counter() - idle_since > 1.0:
                return
        else:
            idle_since = None
        await asyncio.sleep(0.05)


def latencies(ino: Inotify, acks: dict[tuple[int, str], float]) -> dict[str, float]:
    lat: dict[int, list[float]] = {IN_CREATE: [], IN_MODIFY: []}
    missed = 0
    for (bit, key), t0 in acks.items():
        t = ino.seen.get((bit, key))
        if t is None:
            missed += 1
        else:
            lat[bit].append((t - t0) * 1000)
    out: dict[str, float] = {"measured": len(acks) // 2, "missed": missed}
    for bit, name in ((IN_CREATE, "create"), (IN_MODIFY, "modify")):
        xs = lat[bit]
        out[f"{name}_p50"] = statistics.median(xs) if xs else float("nan")
        out[f"{name}_p99"] = pct(xs, 0.99)
        out[f"{name}_max"] = max(xs) if xs else float("nan")
    return out


async def bench_latency(url: str, mp: Path, n: int) -> dict[str, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="lat", history=1)
    d = mp / "kv" / "lat"
    while not d.is_dir():  # noqa: ASYNC110 - polling the filesystem, no event to wait on
        await asyncio.sleep(0.01)
    ino = Inotify(d, IN_CREATE | IN_MODIFY | IN_DELETE)
    try:
        acks = await measure_changes(kv, ino, [f"k{i}" for i in range(n)], 5.0, float("inf"))
        await drain(mp, ino, acks)
        return latencies(ino, acks)
    finally:
        ino.close()
        await nc.close()


# The background writer: its own process (own GIL and event loop), puts ``rate`` changes/s
# paced evenly (each put is started at its due time, up to 256 unacknowledged) round-robin
# over ``nkeys`` keys ``prefix + N``. Prints "started"; on a "mark" line on stdin it notes
# the time and count; at EOF on stdin it stops and prints one JSON line.
BG_SCRIPT = r"""
import asyncio, json, sys, threading, time
import nats

async def main(url, bucket, prefix, nkeys, rate):
    nc = await nats.connect(url)
    kv = await nc.jetstream().key_value(bucket)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    st = {"sent": 0, "acked": 0, "errors": 0, "lag_max_ms": 0.0, "mark": None}

    def mark():
        st["mark"] = (time.perf_counter(), st["acked"])

    def reader():
        for line in sys.stdin:
            if line.strip() == "mark":
                loop.call_soon_threadsafe(mark)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=reader, daemon=True).start()
    sem = asyncio.Semaphore(256)
    tasks = set()

    async def put(i):
        try:
            await kv.put(f"{prefix}{i % nkeys}", b"bg %d" % i)
            st["acked"] += 1
        except Exception:
            st["errors"] += 1
        finally:
            sem.release()

    print("started", flush=True)
    t0 = time.perf_counter()
    i = 0
    while not stop.is_set():
        due = t0 + i / rate
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
            continue
        st["lag_max_ms"] = max(st["lag_max_ms"], (now - due) * 1000)
        await sem.acquire()
        t = asyncio.create_task(put(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
        st["sent"] = i
    t_stop, acked_stop = time.perf_counter(), st["acked"]
    await asyncio.gather(*tasks)
    await nc.close()
    tm, am = st["mark"] or (t0, 0)
    print(json.dumps({"sent": st["sent"], "acked": st["acked"], "errors": st["errors"],
                      "secs": t_stop - t0, "rate": st["acked"] / (t_stop - t0),
                      "window_secs": t_stop - tm, "window_rate": (acked_stop - am) / (t_stop - tm),
                      "lag_max_ms": st["lag_max_ms"]}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
"""


async def bench_latency_bg(url: str, mp: Path, n: int, rate: float, nkeys: int, prefix: str,
                           measured_prefix: str, budget_s: float) -> dict[str, object]:
    """Part 1's loop over ``n`` new keys while the background writer puts ``rate`` changes/s
    to ``nkeys`` keys ``prefix + N`` of the same bucket ("lat", made by part 1)."""
    nc = await nats.connect(url)
    kv = await nc.jetstream().key_value("lat")
    d = mp / "kv" / "lat"
    deadline = time.perf_counter() + 60  # the last part's backlog first
    while notifier_status(mp).get("queue") and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    ino = Inotify(d, IN_CREATE | IN_MODIFY | IN_DELETE)
    bg = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BG_SCRIPT, url, "lat", prefix, str(nkeys), str(rate),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    bg_out: dict[str, float] = {}
    try:
        assert bg.stdout is not None and bg.stdin is not None
        line = (await bg.stdout.readline()).decode()
        if line.strip() != "started":
            raise SystemExit(f"background writer did not start: {line!r}")
        await asyncio.sleep(min(10.0, nkeys / rate) + 1.0)  # every background key exists: modifies only
        before = notifier_status(mp)
        bg.stdin.write(b"mark\n")
        await bg.stdin.drain()
        t0 = time.perf_counter()
        acks = await measure_changes(kv, ino, [f"{measured_prefix}{i}" for i in range(n)], 2.0, budget_s)
        secs = time.perf_counter() - t0
        bg.stdin.close()
        line = (await asyncio.wait_for(bg.stdout.readline(), 30)).decode()
        bg_out = json.loads(line) if line.strip() else {}
        await asyncio.wait_for(bg.wait(), 30)
        after = notifier_status(mp)
        await drain(mp, ino, acks)
        out: dict[str, object] = latencies(ino, acks)
        out.update(secs=secs, bg=bg_out, notifier=notifier_delta(before, after))
        return out
    finally:
        if bg.returncode is None:
            bg.kill()
            await bg.wait()
        ino.close()
        await nc.close()


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


def print_latency(lat: dict[str, float]) -> None:
    for bit in ("create", "modify"):
        print(f"IN_{bit.upper():8}p50 {lat[f'{bit}_p50']:7.2f} ms   p99 {lat[f'{bit}_p99']:7.2f} ms   "
              f"max {lat[f'{bit}_max']:7.2f} ms")
    print(f"missed events: {lat['missed']}")


def run_parts(a: argparse.Namespace, url: str, tmp: Path) -> tuple[dict[str, float], dict[str, float]]:
    cached: dict[str, float] = {}
    uncached: dict[str, float] = {}
    mp = tmp / "m"
    proc = start_mount(mp, url)
    try:
        lat = asyncio.run(bench_latency(url, mp, a.n))
        print(f"\n== remote put ack -> inotify event, {a.n} keys (target p50 < 20 ms, p99 < 200 ms)")
        print_latency(lat)
        if a.background > 0:
            rows = [("idle", lat, None)]
            for prefix, mprefix, where in (("bg.", "u", "bg/ (nobody watches)"),
                                           ("bg", "w", "the watched directory")):
                r = asyncio.run(bench_latency_bg(url, mp, a.n, a.background, a.bg_keys, prefix,
                                                 mprefix, a.bg_budget))
                bg = r["bg"]
                print(f"\n== remote put ack -> inotify event under {a.background:.0f} background "
                      f"changes/s to {a.bg_keys} keys {prefix}N in {where} (target p99 < 50 ms)")
                print(f"background: asked {a.background:.0f}/s, achieved {bg.get('window_rate', 0):.0f}/s "
                      f"while measuring ({bg.get('window_secs', 0):.1f} s), {bg.get('rate', 0):.0f}/s "
                      f"over its {bg.get('secs', 0):.1f} s; at most {bg.get('lag_max_ms', 0):.1f} ms "
                      f"behind schedule; {bg.get('errors', '?')} errors")
                print(f"measured {r['measured']} of {a.n} keys in {r['secs']:.1f} s")
                print_latency(r)
                print(f"notifier: {r['notifier']}")
                rows.append((f"bg {prefix}N, {'unwatched' if prefix == 'bg.' else 'watched'}", r,
                             bg.get("window_rate")))
            print(f"\n== put ack -> event, idle vs {a.background:.0f} background changes/s "
                  "(ms; target under background: p99 < 50 ms)")
            print(f"{'':24}{'CREATE p50':>11}{'p99':>9}{'max':>9}{'MODIFY p50':>12}{'p99':>9}{'max':>9}"
                  f"{'missed':>8}{'bg/s':>7}")
            for name, r, rate in rows:
                print(f"{name:24}{r['create_p50']:11.2f}{r['create_p99']:9.2f}{r['create_max']:9.2f}"
                      f"{r['modify_p50']:12.2f}{r['modify_p99']:9.2f}{r['modify_max']:9.2f}"
                      f"{r['missed']:8d}{'-' if rate is None else f'{rate:.0f}':>7}")
        for watched in ((True, False) if a.storm > 0 else ()):
            storm = asyncio.run(bench_storm(url, mp, a.storm, watched))
            who = "an inotify watcher on the bucket" if watched else "nobody watching"
            print(f"\n== storm: {storm['changes']} remote changes over {storm['changes'] // 2} keys, {who}")
            print(f"all acknowledged after {storm['acked_s']:.2f} s; kernel heard the last one after "
                  f"{storm['kernel_heard_all_s']:.2f} s")
            print(f"stat+cat of another file meanwhile: p50 {storm['probe_p50_ms']:.2f} ms, "
                  f"max {storm['probe_max_ms']:.2f} ms")
            print(f"notifier: {storm['notifier']}")
        if a.cache > 0:
            asyncio.run(seed_cache_bucket(url, a.cache))
            cached = bench_cache(mp, a.cache)
    finally:
        stop_mount(proc, mp)
    if a.cache > 0:
        mp2 = tmp / "m2"
        proc = start_mount(mp2, url, "--no-notify")
        try:
            uncached = bench_cache(mp2, a.cache)
        finally:
            stop_mount(proc, mp2)
    return cached, uncached


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--storm", type=int, default=10000, help="remote changes in the storm (0: skip)")
    ap.add_argument("--background", type=float, default=1000, metavar="RATE",
                    help="repeat the latency measurement under RATE background changes/s (0: skip)")
    ap.add_argument("--bg-keys", type=int, default=1000, help="keys the background changes cycle over")
    ap.add_argument("--bg-budget", type=float, default=60,
                    help="at most this many seconds of measuring per background variant")
    ap.add_argument("--cache", type=int, default=1000, help="files in the caching comparison (0: skip)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedServer(Path(tmp) / "nats", sync="default")  # the notifier is measured, not fsync
        srv.start()
        try:
            cached, uncached = run_parts(a, srv.url, Path(tmp))
        finally:
            srv.stop()
    if cached:
        print("\n== kernel caching: notifier on (caches + invalidation) vs --no-notify (no caches)")
        print(f"{'':22}{'cached':>12}{'uncached':>12}")
        for k in cached:
            print(f"{k:22}{cached[k]:12.1f}{uncached[k]:12.1f}")


if __name__ == "__main__":
    main()
