"""Streams: publish through the mount vs raw js.publish vs tmpfs; ls of big subject dirs.

Prints (does not assert). Targets: a subject directory of 100,000 messages
lists in under 2 s. Beside the publish it prints what one FUSE request that does
nothing costs the mount (wall and its request thread's CPU): a publish by file is
some 14 of them (docs/benchmarks.md, the floors).

Run as root: .venv/bin/python bench/bench_streams.py [--n 2000] [--big 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats  # noqa: E402
from nats.js.api import StreamConfig  # noqa: E402

from bench.bench_notify import start_mount, stop_mount  # noqa: E402
from bench.bench_parallel import proc_cpu  # noqa: E402
from hvfs.server import EmbeddedServer  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def row(name: str, xs: list[float]) -> str:
    return f"{name:34}{statistics.median(xs):10.1f}{pct(xs, 0.99):10.1f}"


async def raw_publish(url: str, n: int) -> list[float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="PUB", subjects=["pub.>"]))
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await js.publish("pub.raw", b"x" * 100, headers={"Nats-Msg-Id": f"raw-{i}"})
        out.append((time.perf_counter() - t0) * 1e6)
    await nc.close()
    return out


def file_publish(d: Path, n: int) -> list[float]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    payload = b"x" * 100
    for i in range(n):
        t0 = time.perf_counter()
        fd = os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, payload)
        os.close(fd)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def bare_request(mp: Path, pid: int, n: int = 20_000) -> tuple[float, float]:
    """(wall, CPU of the mount's main thread) per request, in microseconds, of a request
    that does nothing: the floor every FUSE request of a publish pays."""
    def go(k: int) -> None:
        for _ in range(k):
            try:
                os.getxattr(mp / "streams", "user.nothing")
            except OSError:
                pass

    go(1000)
    c0, t0 = proc_cpu(pid, pid), time.perf_counter()
    go(n)
    return (time.perf_counter() - t0) / n * 1e6, (proc_cpu(pid, pid) - c0) / n * 1e6


async def fill(url: str, stream: str, subject: str, n: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject.split('.')[0]}.>"]))
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(512)

    async def one(i: int) -> None:
        async with sem:
            await js.publish(subject, b"m" * 64)

    await asyncio.gather(*(one(i) for i in range(n)))
    await nc.close()
    return time.perf_counter() - t0


def wait_listed(d: Path, n: int, timeout: float = 120) -> float:
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        try:
            if len(os.listdir(d)) >= n:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.05)
    return float("nan")


def time_ls(d: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    names = os.listdir(d)
    t_listdir = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["ls", str(d)], stdout=subprocess.DEVNULL, check=True)
    t_ls = time.perf_counter() - t0
    assert names
    return t_listdir, t_ls


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def mount_pid(mp: Path) -> int:
    out = subprocess.run(["pgrep", "-f", f"hvfs mount {mp} "], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--big", type=int, default=100_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = EmbeddedServer(Path(tmp) / "nats")
        srv.start()
        tmpfs = Path(tmp) / "tmpfs"
        tmpfs.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmpfs)], check=True)
        mp = Path(tmp) / "m"
        proc = start_mount(mp, srv.url)
        try:
            raw = asyncio.run(raw_publish(srv.url, a.n))
            d = mp / "streams" / "PUB" / "pub" / "mnt"
            deadline = time.monotonic() + 10
            while not (mp / "streams" / "PUB").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            mounted = file_publish(d, a.n)
            tfs = file_publish(tmpfs / "pub", a.n)
            print(f"\n== publish one 100-byte message, {a.n} times (microseconds)")
            print(f"{'':34}{'p50':>10}{'p99':>10}")
            print(row("raw js.publish (with Msg-Id)", raw))
            print(row("mount: create+write+close", mounted))
            print(row("tmpfs: create+write+close", tfs))
            print(f"mount/raw p50: {statistics.median(mounted) / statistics.median(raw):.2f}x")
            bare = bare_request(mp, proc.pid)
            print(f"one bare FUSE request (getxattr of a missing name on a directory): {bare[0]:.1f} us wall, "
                  f"{bare[1]:.1f} us CPU of the mount's request thread")

            print("\n== ls of a subject directory")
            print(f"{'messages':>10}{'fill s':>9}{'listable s':>12}{'listdir s':>11}{'ls s':>8}{'RSS MiB':>9}")
            for n, name in ((10_000, "TENK"), (a.big, "BIG")):
                fill_s = asyncio.run(fill(srv.url, name, f"{name.lower()}.sub", n))
                listable = wait_listed(mp / "streams" / name / name.lower() / "sub", n)
                t_listdir, t_ls = time_ls(mp / "streams" / name / name.lower() / "sub")
                print(f"{n:10d}{fill_s:9.2f}{listable:12.2f}{t_listdir:11.3f}{t_ls:8.3f}"
                      f"{rss_kb(mount_pid(mp)) / 1024:9.1f}")
            status = json.loads((mp / ".hvfs" / "status").read_text())
            print(f"messages indexed: {status['messages']}")
        finally:
            stop_mount(proc, mp)
        # a fresh mount of the existing big stream: how long until listable
        mp2 = Path(tmp) / "m2"
        t0 = time.perf_counter()
        proc = start_mount(mp2, srv.url)
        try:
            up = time.perf_counter() - t0
            d = mp2 / "streams" / "BIG" / "big" / "sub"
            listable = wait_listed(d, a.big)
            t_listdir, t_ls = time_ls(d)
            print(f"\n== fresh mount over {a.big} existing messages: mounted in {up:.2f} s, listable after "
                  f"{up + listable:.2f} s, then listdir {t_listdir:.3f} s, ls {t_ls:.3f} s, "
                  f"RSS {rss_kb(mount_pid(mp2)) / 1024:.1f} MiB")
        finally:
            stop_mount(proc, mp2)
            subprocess.run(["umount", str(tmpfs)], check=False)
            srv.stop()


if __name__ == "__main__":
    main()
