#!/usr/bin/env python
"""hvfs parallel reads: N concurrent readers of different keys, raw nats-py vs the mount vs tmpfs.

The target: "8 concurrent readers of different keys, total ops/s >= 3x one reader".
For each N in --readers (1,2,4,8), each reader reads its own key (a --value-size,
100-byte, value) in a loop: --warmup seconds untimed, then --seconds timed, all
readers started together (they get ready, wait on a barrier, then on one start
time). Only operations that complete inside the timed window are counted.

* raw asyncio: N asyncio tasks on one nats-py connection, ``await kv.get(key_i)``,
* raw procs: N processes, each with its own connection (``--no-raw-procs``: skip),
* mount: N processes, each ``os.open(O_RDONLY)`` + ``os.read`` + ``os.close`` of
  its own file through the FUSE mount (an ``hvfs mount`` subprocess),
* tmpfs: the same on a fresh tmpfs.

Reported per kind and N: total ops/s, its ratio to N=1 (the scaling the target is
about), ops/s per reader (min-max), p50/p99 per-op latency over all readers, the
CPU the mount and the nats-server used during the window (% of one CPU), and the
whole machine's busy share (other work on the machine shows up there). The server,
mount and tmpfs are bench_kv.py's (imported); everything started is stopped by PID,
the mount unmounted. Prints numbers, asserts nothing. Usage::

    .venv/bin/python bench/bench_parallel.py [--readers 1,2,4,8] [--seconds 5] [--warmup 1]
        [--rounds 1] [--no-raw-procs] [--mount-arg=--cache=watch ...] [--keep]
"""

# Blocking waits inside coroutines are deliberate: the loop has nothing else to do then.
# ruff: noqa: ASYNC251

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nats  # noqa: E402
from bench_kv import MountProc, Tmpfs, guarded, hvfs_version, log, stop_each  # noqa: E402

from hvfs.server import EmbeddedServer  # noqa: E402

BUCKET = "par"
KINDS = ("raw asyncio", "raw procs", "mount", "tmpfs")
MAX_SAMPLES = 20_000  # latency samples a reader hands back (rank-spaced, weighted)
mono = time.monotonic_ns  # CLOCK_MONOTONIC: the same clock in every process


def key_name(i: int) -> str:
    return f"r{i}"


# -- latencies ----------------------------------------------------------------------------


def reduce_samples(lat: array) -> tuple[list[float], float]:
    """At most MAX_SAMPLES latencies (us) spread evenly over the ranks, and each one's weight."""
    s = sorted(lat)
    n = len(s)
    if n <= MAX_SAMPLES:
        return [x / 1e3 for x in s], 1.0
    return [s[int((i + 0.5) * n / MAX_SAMPLES)] / 1e3 for i in range(MAX_SAMPLES)], n / MAX_SAMPLES


def weighted_pct(parts: list[tuple[list[float], float]], q: float) -> float:
    """Nearest-rank percentile over several readers' weighted samples."""
    pts = sorted((v, w) for vals, w in parts for v in vals)
    if not pts:
        return float("nan")
    total = sum(w for _, w in pts)
    target, acc = q * total, 0.0
    for v, w in pts:
        acc += w
        if acc >= target - 1e-9:
            return v
    return pts[-1][0]


# -- CPU accounting -----------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None, tid: int | None = None) -> float:
    """User+system CPU seconds of a process (all its threads), or of its thread ``tid``;
    nan if unknown."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


class CpuWindow:
    """CPU used by the mount, the nats-server and the whole machine between start() and stop()."""

    def __init__(self, mount_pid: int | None, server_pid: int | None) -> None:
        self.pids = {"mount": mount_pid, "server": server_pid}
        self.t0 = self.t1 = 0.0
        self.c0: dict[str, float] = {}
        self.c1: dict[str, float] = {}
        self.m0 = self.m1 = (0.0, 0.0)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = {k: proc_cpu(p) for k, p in self.pids.items()}
        self.m0 = machine_cpu()

    def stop(self) -> None:
        self.t1 = time.monotonic()
        self.c1 = {k: proc_cpu(p) for k, p in self.pids.items()}
        self.m1 = machine_cpu()

    def result(self) -> dict[str, float]:
        dt = max(1e-9, self.t1 - self.t0)
        out = {k: 100 * (self.c1[k] - self.c0[k]) / dt for k in self.pids}
        busy, total = self.m1[0] - self.m0[0], self.m1[1] - self.m0[1]
        out["machine"] = 100 * busy / total if total else float("nan")
        return out

    def at(self, t0_ns: int, t1_ns: int) -> threading.Thread:
        """Sample at the window's edges from a thread (for when this process is busy reading)."""
        def run() -> None:
            time.sleep(max(0.0, (t0_ns - mono()) / 1e9))
            self.start()
            time.sleep(max(0.0, (t1_ns - mono()) / 1e9))
            self.stop()
        th = threading.Thread(target=run, daemon=True)
        th.start()
        return th


# -- the readers -------------------------------------------------------------------------


def sleep_until(t_ns: int) -> None:
    d = (t_ns - mono()) / 1e9
    if d > 0:
        time.sleep(d)


def file_reader(path: str, times: Any) -> array:
    """Warm up until times[1], then time open+read+close until times[2]; latencies (ns) of the ops in the window."""
    tb, t0, t1 = times[0], times[1], times[2]
    sleep_until(tb)
    rd, op, cl, flags = os.read, os.open, os.close, os.O_RDONLY
    while mono() < t0:
        fd = op(path, flags)
        rd(fd, 65536)
        cl(fd)
    lat = array("q")
    app = lat.append
    while True:
        a = mono()
        fd = op(path, flags)
        rd(fd, 65536)
        cl(fd)
        b = mono()
        if b > t1:
            break
        if a >= t0:
            app(b - a)
    return lat


async def kv_reader(kv: Any, key: str, t0: int, t1: int) -> array:
    """The raw equivalent of file_reader: warm up until t0, time until t1."""
    while mono() < t0:
        await kv.get(key)
    lat = array("q")
    app = lat.append
    while True:
        a = mono()
        await kv.get(key)
        b = mono()
        if b > t1:
            break
        if a >= t0:
            app(b - a)
    return lat


def worker(kind: str, i: int, target: str, ready: Any, go: Any, times: Any, out: Any) -> None:
    """One reader process: get ready, wait for the others, read in the window, report."""
    try:
        if kind == "raw procs":
            async def main() -> array:
                nc = await nats.connect(target)
                try:
                    kv = await nc.jetstream(timeout=10.0).key_value(BUCKET)
                    await kv.get(key_name(i))
                    ready.wait(60)
                    go.wait(60)
                    await asyncio.sleep(max(0.0, (times[0] - mono()) / 1e9))
                    return await kv_reader(kv, key_name(i), times[1], times[2])
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(nc.close(), 5)
            lat = asyncio.run(main())
        else:
            with open(target, "rb") as f:
                f.read()
            ready.wait(60)
            go.wait(60)
            lat = file_reader(target, times)
        vals, w = reduce_samples(lat)
        out.put((i, len(lat), vals, w, None))
    except BaseException as e:  # reported by the parent
        with contextlib.suppress(Exception):
            ready.abort()
        out.put((i, 0, [], 1.0, f"{type(e).__name__}: {e}"))


# -- the benchmark -------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.a = args
        self.tmp = tmp
        self.value = (b"v" * args.value_size)[: args.value_size]
        self.srv = EmbeddedServer(tmp / "nats")
        self.mnt = MountProc(tmp / "mnt", "", tmp / "mount.log", args.mount_arg or [])
        self.tfs = Tmpfs(tmp / "tmpfs")
        self.nmax = max(args.readers)
        self.kinds = [k for k in KINDS if not (k == "raw procs" and args.no_raw_procs)]
        # results[kind][N] -> list of runs (one per round)
        self.results: dict[str, dict[int, list[dict[str, Any]]]] = {k: {n: [] for n in args.readers}
                                                                    for k in self.kinds}
        self.notes: list[str] = []
        self.ctx = mp.get_context("fork")

    def mpath(self, key: str) -> str:
        return str(self.mnt.mountpoint / "kv" / BUCKET / key)

    def tpath(self, key: str) -> str:
        return str(self.tfs.path / key)

    def server_pid(self) -> int | None:
        return self.srv.proc.pid if self.srv.proc is not None else None

    def nats_calls(self) -> int | None:
        try:
            return int(self.mnt.status()["nats"]["calls"])
        except (OSError, KeyError, ValueError, TypeError):
            return None

    def setup(self) -> None:
        self.srv.start()
        self.mnt.server = self.srv.url

        async def fill() -> None:
            nc = await nats.connect(self.srv.url)
            try:
                kv = await nc.jetstream(timeout=10.0).create_key_value(bucket=BUCKET, history=1, direct=True)
                for i in range(self.nmax):
                    await kv.put(key_name(i), self.value)
            finally:
                await nc.close()

        asyncio.run(fill())
        self.mnt.start()
        self.tfs.start()
        for i in range(self.nmax):
            with open(self.tpath(key_name(i)), "wb") as f:
                f.write(self.value)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(
                os.path.exists(self.mpath(key_name(i))) for i in range(self.nmax)):
            time.sleep(0.02)
        for i in range(self.nmax):
            with open(self.mpath(key_name(i)), "rb") as f:
                if f.read() != self.value:
                    self.notes.append(f"{key_name(i)} read through the mount is not the value put")
        log(f"nats-server {self.srv.url} pid {self.server_pid()}, mount pid {self.mnt.pid} at "
            f"{self.mnt.mountpoint}, {self.tfs.kind} at {self.tfs.path}")

    def window(self) -> tuple[int, int, int]:
        tb = mono() + 50_000_000  # 50 ms for everyone to see the start time
        t0 = tb + int(self.a.warmup * 1e9)
        return tb, t0, t0 + int(self.a.seconds * 1e9)

    def run_raw_asyncio(self, n: int) -> dict[str, Any]:
        async def main() -> tuple[list[array], CpuWindow]:
            nc = await nats.connect(self.srv.url)
            try:
                kv = await nc.jetstream(timeout=10.0).key_value(BUCKET)
                for i in range(n):
                    await kv.get(key_name(i))
                tb, t0, t1 = self.window()
                cpu = CpuWindow(None, self.server_pid())
                th = cpu.at(t0, t1)
                await asyncio.sleep(max(0.0, (tb - mono()) / 1e9))
                lats = await asyncio.gather(*(kv_reader(kv, key_name(i), t0, t1) for i in range(n)))
                th.join(5)
                return list(lats), cpu
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)

        lats, cpu = asyncio.run(main())
        counts = [len(x) for x in lats]
        return self.summarize(counts, [reduce_samples(x) for x in lats], cpu, None)

    def run_procs(self, kind: str, n: int) -> dict[str, Any]:
        ctx = self.ctx
        ready, go = ctx.Barrier(n + 1), ctx.Event()
        times = ctx.Array("q", 3, lock=False)
        out = ctx.Queue()
        if kind == "raw procs":
            targets = [self.srv.url] * n
        elif kind == "mount":
            targets = [self.mpath(key_name(i)) for i in range(n)]
        else:
            targets = [self.tpath(key_name(i)) for i in range(n)]
        procs = [ctx.Process(target=worker, args=(kind, i, targets[i], ready, go, times, out), daemon=True)
                 for i in range(n)]
        got: dict[int, tuple[int, list[float], float, str | None]] = {}
        cpu = CpuWindow(self.mnt.pid if kind == "mount" else None, self.server_pid())
        calls0 = calls1 = None
        try:
            for p in procs:
                p.start()
            ready.wait(60)
            tb, t0, t1 = self.window()
            times[0], times[1], times[2] = tb, t0, t1
            go.set()
            sleep_until(t0)
            cpu.start()
            calls0 = self.nats_calls() if kind == "mount" else None
            sleep_until(t1)
            cpu.stop()
            calls1 = self.nats_calls() if kind == "mount" else None
            deadline = time.monotonic() + 60
            while len(got) < n and time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    i, cnt, vals, w, err = out.get(timeout=1)
                    got[i] = (cnt, vals, w, err)
        except BaseException:
            # the barrier broke (a worker failed) or we were interrupted: collect what is there
            with contextlib.suppress(Exception):
                while True:
                    i, cnt, vals, w, err = out.get(timeout=1)
                    got[i] = (cnt, vals, w, err)
            calls1 = None
            if not any(g[3] for g in got.values()):
                raise
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.terminate()  # our own child, by its Process object (PID)
                    p.join(5)
        errs = [f"reader {i}: {g[3]}" for i, g in sorted(got.items()) if g[3]]
        if errs or len(got) < n:
            raise RuntimeError(f"{kind} N={n}: " + ("; ".join(errs) or f"only {len(got)} of {n} readers reported"))
        counts = [got[i][0] for i in range(n)]
        calls = None
        if calls0 is not None and calls1 is not None:
            calls = (calls1 - calls0) / max(1, sum(counts))  # approximate: the window's edges, .hvfs/status reads
        return self.summarize(counts, [(got[i][1], got[i][2]) for i in range(n)], cpu, calls)

    def summarize(self, counts: list[int], parts: list[tuple[list[float], float]], cpu: CpuWindow,
                  calls: float | None) -> dict[str, Any]:
        s = self.a.seconds
        return {"ops": sum(counts) / s, "min": min(counts) / s, "max": max(counts) / s,
                "p50": weighted_pct(parts, 0.5), "p99": weighted_pct(parts, 0.99),
                "cpu": cpu.result(), "calls": calls}

    def run(self) -> None:
        self.setup()
        for r in range(max(1, self.a.rounds)):
            for n in self.a.readers:
                for kind in self.kinds:
                    tag = f"round {r + 1}, {kind}, N={n}"
                    try:
                        res = self.run_raw_asyncio(n) if kind == "raw asyncio" else self.run_procs(kind, n)
                    except Exception as e:
                        self.notes.append(f"{tag} failed: {type(e).__name__}: {e}")
                        log(f"{tag} failed: {e}")
                        if kind == "mount" and self.mnt.proc is not None and self.mnt.proc.poll() is not None:
                            raise RuntimeError(f"the mount exited: {self.mnt.log_tail()}") from e
                        continue
                    self.results[kind][n].append(res)
                    log(f"{tag}: {res['ops']:,.0f} ops/s, p50 {res['p50']:.0f} us, p99 {res['p99']:.0f} us")

    def stop_all(self) -> None:
        stop_each(self)

    # -- the table

    def report(self) -> str:
        def med(runs: list[dict[str, Any]], f: Any) -> float:
            vals = sorted(f(x) for x in runs)
            return vals[(len(vals) - 1) // 2] if vals else float("nan")

        def num(x: float | None, fmt: str = ",.0f") -> str:
            return "-" if x is None or x != x else format(x, fmt)

        head = ["kind", "readers", "total ops/s", "vs N=1", "per reader ops/s (min-max)", "p50 us",
                "p99 us", "mount CPU %", "nats-server CPU %", "machine busy %", "NATS calls/op"]
        rows: list[list[str]] = []
        scaling: dict[str, dict[int, float]] = {}
        for kind in self.kinds:
            base_runs = self.results[kind].get(1) or self.results[kind].get(min(self.a.readers)) or []
            base_n = 1 if self.results[kind].get(1) else min(self.a.readers)
            base = med(base_runs, lambda x: x["ops"])
            scaling[kind] = {}
            for n in self.a.readers:
                runs = self.results[kind][n]
                if not runs:
                    rows.append([kind, str(n)] + ["failed"] + [""] * (len(head) - 3))
                    continue
                ops = med(runs, lambda x: x["ops"])
                sc = ops / base if base == base and base else float("nan")
                scaling[kind][n] = sc
                calls = med(runs, lambda x: x["calls"] if x["calls"] is not None else float("nan"))
                rows.append([
                    kind, str(n), num(ops), f"{sc:.2f}x" if base_n == 1 else f"{sc:.2f}x (vs N={base_n})",
                    f"{num(med(runs, lambda x: x['min']))}-{num(med(runs, lambda x: x['max']))}",
                    num(med(runs, lambda x: x["p50"])), num(med(runs, lambda x: x["p99"])),
                    num(med(runs, lambda x: x["cpu"]["mount"])), num(med(runs, lambda x: x["cpu"]["server"])),
                    num(med(runs, lambda x: x["cpu"]["machine"])), num(calls, ".2f"),
                ])
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
        a = self.a
        lines.append(f"{a.value_size}-byte values, one key per reader; {a.warmup:g} s warm-up + {a.seconds:g} s "
                     f"timed per cell; median of {max(1, a.rounds)} round(s); {os.cpu_count()} CPUs; "
                     f"hvfs {hvfs_version()}; mount args: {' '.join(a.mount_arg or []) or '(defaults)'}; "
                     f"baseline {self.tfs.kind}")
        lines.append("CPU % is of one CPU, over the timed window; machine busy % is of all CPUs (includes "
                     "other work on the machine). NATS calls/op: mount only, from .hvfs/status.")
        n8 = 8 if 8 in a.readers else max(a.readers)
        for kind in self.kinds:
            sc = scaling.get(kind, {}).get(n8)
            if sc is not None and sc == sc and n8 != 1:
                verdict = f" (target >= 3x: {'OK' if sc >= 3 else 'MISS'})" if kind == "mount" else ""
                lines.append(f"scaling {kind}: {n8} readers = {sc:.2f}x one reader{verdict}")
        for note in self.notes:
            lines.append(f"NOTE: {note}")
        return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readers", default="1,2,4,8", help="concurrent reader counts, comma separated (default 1,2,4,8)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per cell (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="untimed seconds of reading first, all readers "
                   "at once (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole grid, report medians (default 1)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--no-raw-procs", action="store_true", help="skip the raw row with one process and "
                   "connection per reader")
    p.add_argument("--mount-arg", action="append", help="extra argument for 'hvfs mount' (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, nats store)")
    args = p.parse_args(argv)
    try:
        args.readers = sorted({int(x) for x in args.readers.split(",") if x.strip()})
    except ValueError:
        p.error("--readers: comma-separated integers")
    if not args.readers or min(args.readers) < 1:
        p.error("--readers: at least one count, each >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root; FUSE and mount -t tmpfs may not work")
    tmp = Path(tempfile.mkdtemp(prefix="hvfs-bench-par-"))
    bench = Bench(args, tmp)
    t0 = time.monotonic()
    failed = guarded(bench, args, tmp, bench.run)
    if any(runs for k in bench.results.values() for runs in k.values()):
        print(bench.report())
        print(f"\n(whole run: {time.monotonic() - t0:.0f} s; python {sys.version.split()[0]})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
