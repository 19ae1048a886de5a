#!/usr/bin/env python
"""hvfs KV benchmark: raw nats-py vs the FUSE mount vs tmpfs, side by side.

One run starts everything it measures and stops it again:

* a nats-server (``hvfs.server.EmbeddedServer``) with its store in a temp dir,
* an ``hvfs mount`` subprocess on that server (stopped by PID with SIGTERM,
  ``fusermount3 -u -z`` if it is still mounted),
* a fresh tmpfs (``mount -t tmpfs``; /dev/shm if that is not allowed).

It prints numbers and never asserts. See bench/README.md for what each row
means. Usage::

    .venv/bin/python bench/bench_kv.py [--n 2000] [--no-scale] [--profile DIR]
"""

# Blocking file I/O and sleeps inside coroutines are deliberate here: the file
# operations are what is timed, and the mount is another process.
# ruff: noqa: ASYNC230, ASYNC251

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

from hvfs.server import EmbeddedServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuse_ops import FuseCounter  # noqa: E402

BUCKET = "bench"
LS_BUCKET = "ls10k"
SCALE_BUCKET = "scale"

# -- small helpers ------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    s = sorted(samples)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[k]


def median(samples: list[float]) -> float:
    return pct(samples, 0.5)


def is_mounted(path: str | Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def drop_caches() -> bool:
    """Drop the kernel's dentry/inode caches (FUSE: the kernel FORGETs its inodes)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        return True
    except OSError:
        return False


def poll(cond: Callable[[], Any], timeout: float, step: float = 0.01) -> bool:
    """Call ``cond`` until it is truthy (an OSError counts as not yet), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except OSError:
            pass
        time.sleep(step)
    return False


def time_sync(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    """Per-call latencies in microseconds."""
    for _ in range(warmup):
        fn()
    out = []
    pc = time.perf_counter_ns
    for _ in range(n):
        t0 = pc()
        fn()
        out.append((pc() - t0) / 1e3)
    return out


async def time_async(fn: Callable[[], Awaitable[Any]], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    pc = time.perf_counter_ns
    for _ in range(n):
        t0 = pc()
        await fn()
        out.append((pc() - t0) / 1e3)
    return out


# -- the things started and stopped -----------------------------------------------------


class MountProc:
    """``python -m hvfs mount`` as a subprocess, stopped by PID, always unmounted."""

    def __init__(self, mountpoint: Path, server: str, logfile: Path, extra: list[str]) -> None:
        self.mountpoint = mountpoint
        self.server = server
        self.logfile = logfile
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "hvfs", "mount", str(self.mountpoint), "--server", self.server,
               "--log-level", "INFO", *self.extra]
        with open(self.logfile, "ab") as lf:
            self.proc = subprocess.Popen(cmd, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hvfs mount exited {self.proc.returncode}: {self.log_tail()}")
            if is_mounted(self.mountpoint) and (self.mountpoint / ".hvfs" / "status").exists():
                return
            time.sleep(0.02)
        raise RuntimeError(f"mount did not appear within {timeout}s: {self.log_tail()}")

    def status(self) -> dict[str, Any]:
        with open(self.mountpoint / ".hvfs" / "status", "rb") as f:
            return json.loads(f.read())

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-n:]
        except OSError:
            return ""

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


class Tmpfs:
    """A fresh tmpfs on a temp dir, or a dir under /dev/shm if mounting is refused."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.mounted = False
        self.path = where
        self.kind = "tmpfs"

    def start(self) -> None:
        self.where.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(self.where)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            self.mounted = True
            self.path = self.where
        else:
            self.path = Path(tempfile.mkdtemp(prefix="hvfs-bench-", dir="/dev/shm"))
            self.kind = "/dev/shm"
            log(f"mount -t tmpfs refused ({r.stderr.strip()}); using {self.path}")

    def stop(self) -> None:
        if self.mounted:
            r = subprocess.run(["umount", str(self.where)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(self.where)], check=False)
            self.mounted = False
        elif self.path != self.where:
            shutil.rmtree(self.path, ignore_errors=True)


# -- the benchmark --------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.a = args
        self.tmp = tmp
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self.value = (b"v" * args.value_size)[: args.value_size]
        self.srv = EmbeddedServer(tmp / "nats")
        self.mnt = MountProc(tmp / "mnt", "", tmp / "mount.log", args.mount_arg or [])
        self.tfs = Tmpfs(tmp / "tmpfs")
        self.nc: Any = None
        self.js: Any = None
        self.calls = 0
        self._fc: FuseCounter | None = None

    # -- plumbing

    def mpath(self, bucket: str, key: str = "") -> str:
        p = self.mnt.mountpoint / "kv" / bucket
        return str(p / key) if key else str(p)

    def nats_calls(self) -> int:
        return int(self.mnt.status()["nats"]["calls"])

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> bool:
        if poll(cond, timeout):
            return True
        self.notes.append(f"timed out after {timeout}s waiting for {what}")
        log(f"timed out waiting for {what}")
        return False

    async def fill(self, kv: Any, keys: list[str]) -> float:
        """Put every key (parallel batches of acked puts); return perf_counter at the last ack."""
        b = self.a.batch
        for i in range(0, len(keys), b):
            await asyncio.gather(*(kv.put(k, self.value) for k in keys[i:i + b]))
        return time.perf_counter()

    @contextlib.contextmanager
    def profiled(self, name: str):  # type: ignore[no-untyped-def]
        """py-spy record of the mount process while the body runs (untimed runs only)."""
        if not self.a.profile:
            yield
            return
        out = Path(self.a.profile) / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        p = subprocess.Popen([spy, "record", "-p", str(self.mnt.pid), "-r", "500", "--threads",
                              "--format", "raw", "-o", str(out), "--nonblocking"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it attach
        try:
            yield
        finally:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log(f"profile of {name}: {out}")

    # -- phases

    async def setup(self) -> None:
        self.srv.start()
        self.mnt.server = self.srv.url
        self.nc = await nats.connect(self.srv.url)
        self.js = self.nc.jetstream(timeout=10.0)
        self.kv = await self.js.create_key_value(bucket=BUCKET, history=10, direct=True)
        for k in ("small", "w_raw", "w_mnt"):
            await self.kv.put(k, self.value)
        self.mnt.start()
        self.tfs.start()
        self.wait(lambda: os.path.exists(self.mpath(BUCKET, "small")), 15, "the bench bucket in the mount")
        for k in ("small", "w_mnt"):
            with open(self.tfs.path / k, "wb") as f:
                f.write(self.value)
        time.sleep(0.5)
        self.results["rss_fresh"] = rss_bytes(self.mnt.pid)
        self.results["fresh_keys"] = int(self.mnt.status()["keys"])
        log(f"nats-server {self.srv.url}, mount pid {self.mnt.pid} at {self.mnt.mountpoint}, "
            f"baseline {self.tfs.kind} at {self.tfs.path}")

    async def interleaved(self, kinds: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
        """Warm each kind up, then time n calls of each, interleaved in --rounds blocks.

        Interleaving spreads the machine's drift (other load, CPU placement) over
        every column alike. A kind whose name starts with "raw" is awaited. NATS
        calls the mount made during the "mnt" blocks are counted in self.calls.
        """
        n, w, rounds = self.a.n, self.a.warmup, max(1, self.a.rounds)
        out: dict[str, list[float]] = {k: [] for k in kinds}
        for name, fn in kinds.items():
            if name.startswith("raw"):
                await time_async(fn, 0, w)
            else:
                time_sync(fn, 0, w)
        self.calls = 0
        for r in range(rounds):
            per = n // rounds + (1 if r < n % rounds else 0)
            for name, fn in kinds.items():
                if name.startswith("raw"):
                    out[name] += await time_async(fn, per, 0)
                elif name == "mnt":
                    c0 = self.nats_calls()
                    out[name] += time_sync(fn, per, 0)
                    self.calls += self.nats_calls() - c0
                else:
                    out[name] += time_sync(fn, per, 0)
        return out

    async def bench_read(self) -> None:
        kv = self.kv

        async def raw() -> None:
            await kv.get("small")

        def file_read(path: str) -> Callable[[], None]:
            def fn() -> None:
                fd = os.open(path, os.O_RDONLY)
                os.read(fd, 65536)
                os.close(fd)
            return fn

        log("read: raw kv.get, mount, tmpfs")
        mread = file_read(self.mpath(BUCKET, "small"))
        res = await self.interleaved({"raw": raw, "mnt": mread, "tmp": file_read(str(self.tfs.path / "small"))})
        self.results["read_raw"], self.results["read_mnt"], self.results["read_tmp"] = (
            res["raw"], res["mnt"], res["tmp"])
        self.results["read_calls"] = self.calls / self.a.n
        with open(self.mpath(BUCKET, "small"), "rb") as f:
            if f.read() != self.value:
                self.notes.append("read through the mount returned other bytes than were put")
        with self.profiled("read"):
            if self.a.profile:
                time_sync(mread, self.a.n, 0)

    async def bench_write(self) -> None:
        kv = self.kv
        rev = (await kv.get("w_raw")).revision

        async def raw() -> None:
            nonlocal rev
            rev = await kv.update("w_raw", self.value, last=rev)

        def file_write(path: str) -> Callable[[], None]:
            value = self.value

            def fn() -> None:
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
                os.write(fd, value)
                os.close(fd)
            return fn

        log("write: raw kv.update, mount, tmpfs")
        mwrite = file_write(self.mpath(BUCKET, "w_mnt"))
        res = await self.interleaved({"raw": raw, "mnt": mwrite, "tmp": file_write(str(self.tfs.path / "w_mnt"))})
        self.results["write_raw"], self.results["write_mnt"], self.results["write_tmp"] = (
            res["raw"], res["mnt"], res["tmp"])
        self.results["write_calls"] = self.calls / self.a.n
        # Sanity, reported not asserted: the last write landed, once per write, never empty.
        ent = await kv.get("w_mnt")
        if ent.value != self.value:
            self.notes.append(f"after mount writes w_mnt holds {ent.value!r:.40}, not the written value")
        seq0 = (await self.js.stream_info(f"KV_{BUCKET}")).state.last_seq
        for _ in range(5):
            mwrite()
        seq1 = (await self.js.stream_info(f"KV_{BUCKET}")).state.last_seq
        if seq1 - seq0 != 5:
            self.notes.append(f"5 mount writes moved the bucket's sequence by {seq1 - seq0}, not 5")
        hist = await kv.history("w_mnt")  # the last 10 revisions (the bucket's history)
        empties = [h.revision for h in hist if not h.value]
        if empties:
            self.notes.append(f"mount writes published empty revisions of w_mnt: {empties}")
        with self.profiled("write"):
            if self.a.profile:
                time_sync(mwrite, self.a.n, 0)

    async def bench_stat(self) -> None:
        mp = self.mpath(BUCKET, "small")
        tp = str(self.tfs.path / "small")
        log("stat: mount, tmpfs")
        res = await self.interleaved({"mnt": lambda: os.stat(mp), "tmp": lambda: os.stat(tp)})
        self.results["stat_mnt"], self.results["stat_tmp"] = res["mnt"], res["tmp"]
        self.results["stat_calls"] = self.calls / self.a.n

    def fuse_counter(self) -> FuseCounter | None:
        if self.a.no_fuse_count:
            return None
        if self._fc is None:
            self._fc = FuseCounter(str(self.mnt.mountpoint), self.mnt.pid)
            if self._fc.how == "strace" and not shutil.which("strace"):
                self.notes.append("neither the fuse tracepoint nor strace: FUSE requests not counted")
                self.a.no_fuse_count = True
                return None
        return self._fc

    def count_fuse(self) -> None:
        """FUSE requests per read/write/stat, in a tight loop like the timed one (after the timings)."""
        fc = self.fuse_counter()
        if fc is None:
            return
        mp, wp = self.mpath(BUCKET, "small"), self.mpath(BUCKET, "w_mnt")

        def rd() -> None:
            fd = os.open(mp, os.O_RDONLY)
            os.read(fd, 65536)
            os.close(fd)

        def wr() -> None:
            fd = os.open(wp, os.O_WRONLY | os.O_TRUNC)
            os.write(fd, self.value)
            os.close(fd)

        log(f"counting FUSE requests per op ({fc.how})")
        reps = 200 if fc.how == "tracepoint" else 20
        for name, fn in (("read", rd), ("write", wr), ("stat", lambda: os.stat(mp))):
            if fc.how == "tracepoint":
                t = fc.timings(fn, reps)
                order = sorted(t, key=lambda k: -sum(t[k]))
                self.results[f"{name}_fuse"] = {k: len(t[k]) / reps for k in order}
                self.results[f"{name}_fuse_us"] = {k: median(t[k]) for k in order}
            else:
                counts = fc.count(fn, reps)
                self.results[f"{name}_fuse"] = {k: v / reps for k, v in counts.most_common()}

    def _time_listings(self, path: str, expect: int) -> dict[str, float]:
        """listdir and ls -l of path, cold (after dropping dentry/inode caches) and warm; ms."""
        out: dict[str, float] = {}

        def listdir() -> float:
            t0 = time.perf_counter()
            got = len(os.listdir(path))
            dt = (time.perf_counter() - t0) * 1e3
            if got != expect:
                self.notes.append(f"listdir {path}: {got} entries, expected {expect}")
            return dt

        def ls_l() -> float:
            t0 = time.perf_counter()
            r = subprocess.run(["ls", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = (time.perf_counter() - t0) * 1e3
            if r.returncode != 0:
                self.notes.append(f"ls -l {path}: exit {r.returncode}: {r.stderr.decode(errors='replace')[:200]}")
            return dt

        for name, fn in (("listdir", listdir), ("ls_l", ls_l)):
            cold = drop_caches()
            time.sleep(0.5)  # let the FUSE daemon work off the FORGETs first
            out[f"{name}_cold"] = fn()
            if not cold:
                self.notes.append("could not drop caches: 'cold' is the first listing after the warm-up")
            out[f"{name}_warm"] = median([fn() for _ in range(self.a.ls_repeat)])
        return out

    async def bench_ls(self) -> None:
        n = self.a.ls_keys
        keys = [f"f{i:06d}" for i in range(n)]
        kv = await self.js.create_key_value(bucket=LS_BUCKET, history=1, direct=True)
        log(f"ls: putting {n} keys")
        t0 = time.perf_counter()
        t_ack = await self.fill(kv, keys)
        self.results["ls_put_s"] = t_ack - t0
        path = self.mpath(LS_BUCKET)

        def full() -> bool:
            return len(os.listdir(path)) >= n

        ok = self.wait(full, 120, f"the mount to list {n} keys")
        self.results["ls_listable_ms"] = (time.perf_counter() - t_ack) * 1e3 if ok else float("nan")
        self.wait_notifier("after the ls fill")
        self.results["ls_drain_ms"] = (time.perf_counter() - t_ack) * 1e3
        log("ls: timing the mount")
        c0 = self.nats_calls()
        self.results["ls_mnt"] = self._time_listings(path, n)
        self.results["ls_calls"] = self.nats_calls() - c0
        fc = self.fuse_counter()
        if fc is not None and fc.how == "tracepoint":
            for name, fn in (("listdir", lambda: os.listdir(path)),
                             ("ls_l", lambda: subprocess.run(["ls", "-l", path], stdout=subprocess.DEVNULL))):
                c = fc.count(fn, 1)
                self.results[f"{name}_fuse"] = {k: v / n for k, v in c.most_common()}
        tdir = self.tfs.path / "ls10k"
        tdir.mkdir(exist_ok=True)
        for k in keys:
            with open(tdir / k, "wb") as f:
                f.write(self.value)
        log("ls: timing tmpfs")
        self.results["ls_tmp"] = self._time_listings(str(tdir), n)

    def notifier_queue(self, st: dict[str, Any] | None = None) -> int:
        """Notices the mount's kernel notifier still has to repeat (0 without a notifier)."""
        st = st if st is not None else self.mnt.status()
        return int((st.get("notifier") or {}).get("queue", 0))

    def wait_notifier(self, what: str) -> float:
        """Wait (bounded by --drain-timeout) until the notifier's queue is empty; seconds waited."""
        t0 = time.perf_counter()
        if "notifier" not in self.mnt.status():
            return 0.0
        ok = self.wait(lambda: self.notifier_queue() == 0, self.a.drain_timeout,
                       f"the notifier queue to drain ({what})")
        return (time.perf_counter() - t0) if ok else float("nan")

    async def bench_scale(self) -> None:
        """The index at scale: a bucket filled while watched, then a second mount starting on it."""
        n = self.a.scale_keys
        bucket = SCALE_BUCKET
        keys = [f"s{i:07d}" for i in range(n)]
        kv = await self.js.create_key_value(bucket=bucket, history=1, direct=True)
        path = self.mpath(bucket)
        # live: the mount watches the bucket while it is being filled
        self.wait(lambda: os.path.isdir(path), 15, f"kv/{bucket} in the mount")
        self.wait_notifier("before the fill")
        st0 = self.mnt.status()
        base_keys = int(st0["keys"])
        q0 = int((st0.get("notifier") or {}).get("queued", 0))
        rss0 = rss_bytes(self.mnt.pid)
        log(f"scale (live): putting {n} keys into {bucket}")
        t0 = time.perf_counter()
        t_ack = await self.fill(kv, keys)
        put_s = t_ack - t0
        self.wait(lambda: int(self.mnt.status()["keys"]) >= base_keys + n, 180,
                  f"status keys to reach {base_keys + n}")
        t_status = time.perf_counter()
        ok = self.wait(lambda: len(os.listdir(path)) >= n, 60, f"the mount to list {n} keys of {bucket}")
        t_list = time.perf_counter()
        rss1 = rss_bytes(self.mnt.pid)
        qlen = self.notifier_queue()
        log(f"scale (live): listable; notifier queue {qlen}")
        drained = self.wait_notifier("after the fill")
        t_drain = time.perf_counter()
        st1 = self.mnt.status()
        rss2 = rss_bytes(self.mnt.pid)
        self.results["scale_live"] = {
            "n": n, "put_s": put_s, "status_s": t_status - t_ack,
            "listable_s": (t_list - t_ack) if ok else float("nan"),
            "rss0": rss0, "rss1": rss1, "rss2": rss2, "queue_at_listable": qlen,
            "drain_s": (t_drain - t_ack) if drained == drained else float("nan"),
            "notices": int((st1.get("notifier") or {}).get("queued", 0)) - q0,
            "has_notifier": "notifier" in st1,
        }
        # startup: a second mount of the same server loads every bucket, this one included
        total_keys = int(st1["keys"])
        m2 = MountProc(self.tmp / "mnt2", self.srv.url, self.tmp / "mount2.log", self.a.mount_arg or [])
        log(f"scale (startup): a second mount loading {total_keys} keys")
        try:
            t0 = time.perf_counter()
            m2.start(timeout=120)
            t_up = time.perf_counter()
            p2 = str(m2.mountpoint / "kv" / bucket)
            ok = self.wait(lambda: len(os.listdir(p2)) >= n, 120, f"the second mount to list {n} keys")
            t_list2 = time.perf_counter()
            time.sleep(0.5)
            rss_m2 = rss_bytes(m2.pid)
            keys_m2 = int(m2.status()["keys"])
        finally:
            m2.stop()
        self.results["scale_start"] = {
            "n": n, "keys": keys_m2, "up_s": t_up - t0, "listable_s": (t_list2 - t0) if ok else float("nan"),
            "rss": rss_m2, "rss_fresh": self.results["rss_fresh"], "fresh_keys": self.results["fresh_keys"],
        }

    async def run(self) -> None:
        await self.setup()
        await self.bench_read()
        await self.bench_write()
        await self.bench_stat()
        if not self.a.no_fuse_count:
            self.count_fuse()
        if self.a.ls_keys:
            await self.bench_ls()
        if not self.a.no_scale:
            await self.bench_scale()
        self.results["final_status"] = self.mnt.status()

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)

    def stop_all(self) -> None:
        if self._fc is not None:
            with contextlib.suppress(Exception):
                self._fc.close()
        stop_each(self)

    # -- the table

    def report(self) -> str:
        r = self.results
        a = self.a
        rows: list[tuple[str, str, str, str, str, str]] = []

        def us(x: float) -> str:
            return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"

        def ms(x: float) -> str:
            return "n/a" if x != x else (f"{x:,.0f}" if x >= 100 else f"{x:,.1f}")

        def ratio_row(label: str, raw: list[float], mnt: list[float], tmp: list[float], q: float,
                      target: str = "", limit: float | None = None) -> None:
            rv, mv, tv = pct(raw, q), pct(mnt, q), pct(tmp, q)
            ratio = mv / rv
            verdict = ""
            if limit is not None:
                verdict = f"{target} {'OK' if ratio <= limit else 'MISS'}"
            rows.append((label, us(rv), us(mv), us(tv), f"{ratio:.2f}x", verdict))

        fuse_notes: list[str] = []

        def fuse_row(op: str) -> None:
            c = r.get(f"{op}_fuse")
            if c:
                rows.append((f"  FUSE requests per mount {op}", "", f"{sum(c.values()):.1f}", "", "", ""))
                us_ = r.get(f"{op}_fuse_us")
                if us_:
                    fuse_notes.append(f"FUSE requests per mount {op} (count x median us, send->reply): " + ", ".join(
                        f"{k} {v:g}x{us_[k]:.0f}" for k, v in c.items()))
                else:
                    fuse_notes.append(f"FUSE requests per mount {op}: " + ", ".join(f"{k} {v:g}" for k, v in c.items()))

        rows.append((f"read 100B open+read+close, n={a.n}", "", "", "", "", ""))
        ratio_row("  median (us)", r["read_raw"], r["read_mnt"], r["read_tmp"], 0.5, "<= 2x", 2.0)
        ratio_row("  p99 (us)", r["read_raw"], r["read_mnt"], r["read_tmp"], 0.99)
        rows.append(("  NATS calls per mount read", "1", f"{r['read_calls']:.2f}", "", "", ""))
        fuse_row("read")
        rows.append((f"write 100B open(O_TRUNC)+write+close, n={a.n}", "", "", "", "", ""))
        ratio_row("  median (us)", r["write_raw"], r["write_mnt"], r["write_tmp"], 0.5, "<= 1.5x", 1.5)
        ratio_row("  p99 (us)", r["write_raw"], r["write_mnt"], r["write_tmp"], 0.99)
        rows.append(("  NATS calls per mount write", "1", f"{r['write_calls']:.2f}", "", "", ""))
        fuse_row("write")
        rows.append((f"stat, n={a.n}", "", "", "", "", ""))
        rows.append(("  median (us)", "-", us(median(r["stat_mnt"])), us(median(r["stat_tmp"])), "", ""))
        rows.append(("  p99 (us)", "-", us(pct(r["stat_mnt"], 0.99)), us(pct(r["stat_tmp"], 0.99)), "", ""))
        rows.append(("  NATS calls per mount stat", "-", f"{r['stat_calls']:.2f}", "", "", ""))
        fuse_row("stat")
        if "ls_mnt" in r:
            m, t = r["ls_mnt"], r["ls_tmp"]
            rows.append((f"ls of {a.ls_keys:,} keys (ms)", "", "", "", "", ""))
            for k, label in (("listdir_cold", "  os.listdir cold"), ("listdir_warm", "  os.listdir warm"),
                             ("ls_l_cold", "  ls -l cold"), ("ls_l_warm", "  ls -l warm")):
                ok = m[k] < 1000
                rows.append((label, "-", ms(m[k]), ms(t[k]), "", f"< 1 s {'OK' if ok else 'MISS'}"))
            rows.append(("  put all keys (s)", f"{r['ls_put_s']:.2f}", "", "", "", ""))
            rows.append(("  listable (listdir == n), after last ack (ms)", "", ms(r["ls_listable_ms"]), "", "", ""))
            rows.append(("  notifier queue drained, after last ack (ms)", "", ms(r["ls_drain_ms"]), "", "", ""))
            rows.append(("  NATS calls during the ls timings", "", str(r["ls_calls"]), "", "", ""))
            for name in ("listdir", "ls_l"):
                c = r.get(f"{name}_fuse")
                if c:
                    label = "os.listdir" if name == "listdir" else "ls -l"
                    rows.append((f"  FUSE requests per entry, {label} warm", "", f"{sum(c.values()):.2f}",
                                 "", "", ""))
                    fuse_notes.append(f"FUSE requests per entry of a warm {label}: "
                                      + ", ".join(f"{k} {v:.3g}" for k, v in c.items()))
        if "scale_live" in r:
            s = r["scale_live"]
            rows.append((f"index of {s['n']:,} keys, filled while the mount watches", "", "", "", "", ""))
            rows.append(("  put all keys (s)", f"{s['put_s']:.2f}", "", "", "", ""))
            rows.append(("  status keys reached, after last ack (s)", "", f"{s['status_s']:.2f}", "", "", ""))
            rows.append(("  listable (listdir == n), after last ack (s)", "", f"{s['listable_s']:.2f}",
                         "", "", ""))
            rows.append(("  mount RSS before -> listable (MiB)", "",
                         f"{s['rss0'] / 2**20:.1f} -> {s['rss1'] / 2**20:.1f}", "", "", ""))
            rows.append(("  RSS per key at listable (bytes)", "", f"{(s['rss1'] - s['rss0']) / s['n']:,.0f}",
                         "", "", ""))
            if s["has_notifier"]:
                rows.append(("  notifier: notices / queue at listable", "",
                              f"{s['notices']:,} / {s['queue_at_listable']:,}", "", "", ""))
                rows.append(("  notifier queue drained, after last ack (s)", "", f"{s['drain_s']:.2f}",
                             "", "", ""))
                rows.append(("  RSS per key once drained (bytes)", "",
                             f"{(s['rss2'] - s['rss0']) / s['n']:,.0f}", "", "", ""))
        if "scale_start" in r:
            s = r["scale_start"]
            per = (s["rss"] - s["rss_fresh"]) / max(1, s["keys"] - s["fresh_keys"])
            rows.append((f"a second mount starting on {s['keys']:,} keys", "", "", "", "", ""))
            rows.append(("  mounted (status readable), after start (s)", "", f"{s['up_s']:.2f}", "", "", ""))
            rows.append((f"  kv/{SCALE_BUCKET} listable, after start (s)", "", f"{s['listable_s']:.2f}",
                         "", "", ""))
            rows.append(("  RSS: fresh mount -> this one (MiB)", "",
                         f"{s['rss_fresh'] / 2**20:.1f} -> {s['rss'] / 2**20:.1f}", "", "", ""))
            rows.append(("  RSS per key held (bytes)", "", f"{per:,.0f}", "", "", ""))
        head = ("", "raw nats-py", "mount", self.tfs.kind, "mount/raw", "target")
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(6)]
        lines = []

        def fmt(row: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))

        lines.append(fmt(head))
        lines.append("-" * len(fmt(head)))
        lines += [fmt(row) for row in rows]
        st = r.get("final_status", {})
        lines.append("")
        lines.append(f"hvfs {hvfs_version()}; mount args: {' '.join(self.a.mount_arg or []) or '(defaults)'}")
        lines.append(f"mount status at the end: keys={st.get('keys')} inodes={st.get('inodes')} "
                     f"nats={st.get('nats')} errors_total={st.get('errors_total')}")
        lines += fuse_notes
        for n in self.notes:
            lines.append(f"NOTE: {n}")
        return "\n".join(lines)


def hvfs_version() -> str:
    """The commit of the hvfs tree measured, and whether it had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "hvfs"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "(version unknown)"
    return f"at {head or '?'}" + (" + uncommitted changes in hvfs/" if dirty else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="timed iterations of read/write/stat (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed iterations first (default 200)")
    p.add_argument("--rounds", type=int, default=10, help="raw/mount/tmpfs timed in this many "
                   "interleaved blocks (default 10)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--ls-keys", type=int, default=10_000, help="keys in the ls directory (0: skip)")
    p.add_argument("--ls-repeat", type=int, default=3, help="warm listings per kind, median reported")
    p.add_argument("--scale-keys", type=int, default=100_000, help="keys for the memory/index part")
    p.add_argument("--no-scale", action="store_true", help="skip the memory/index part")
    p.add_argument("--drain-timeout", type=float, default=150.0, help="longest wait for the mount's "
                   "kernel notifier to work off its queue (s, default 150)")
    p.add_argument("--batch", type=int, default=1000, help="puts in flight at once while filling")
    p.add_argument("--no-fuse-count", action="store_true", help="do not count FUSE requests per op "
                   "(that attaches strace to the mount after the timings)")
    p.add_argument("--profile", metavar="DIR", help="py-spy record the mount during extra, untimed "
                   "read and write loops; raw collapsed stacks to DIR/{read,write}.txt")
    p.add_argument("--mount-arg", action="append", help="extra argument for 'hvfs mount' (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, nats store)")
    return p.parse_args(argv)


def stop_each(bench: Any) -> None:
    """Stop the mount, the tmpfs and the nats-server of ``bench``; one failing stops not the rest."""
    for what, fn in (("mount", bench.mnt.stop), ("tmpfs", bench.tfs.stop), ("nats-server", bench.srv.stop)):
        try:
            fn()
        except Exception as e:  # keep stopping the rest
            log(f"stopping {what}: {type(e).__name__}: {e}")


def guarded(bench: Any, args: argparse.Namespace, tmp: Path, run: Callable[[], Any]) -> bool:
    """Run a benchmark; whatever happens, stop all it started (``bench.stop_all``) and drop
    ``tmp`` unless ``--keep`` or it failed (then the mount's log tail is shown). True: failed."""
    failed = False
    try:
        run()
    except BaseException as e:
        failed = True
        log(f"benchmark failed: {type(e).__name__}: {e}")
        tail = bench.mnt.log_tail()
        if tail:
            log(f"mount log tail:\n{tail}")
    finally:
        bench.stop_all()
        if args.keep or failed:
            log(f"kept {tmp}")
        elif not is_mounted(bench.mnt.mountpoint) and not is_mounted(bench.tfs.where):
            shutil.rmtree(tmp, ignore_errors=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root; mount -t tmpfs and dropping caches will not work")
    tmp = Path(tempfile.mkdtemp(prefix="hvfs-bench-"))
    bench = Bench(args, tmp)
    t0 = time.monotonic()
    failed = guarded(bench, args, tmp, lambda: asyncio.run(_run(bench)))
    if not failed:
        print(bench.report())
        print(f"\n(whole run: {time.monotonic() - t0:.0f} s; {os.cpu_count()} CPUs; "
              f"python {sys.version.split()[0]})")
    return 1 if failed else 0


async def _run(bench: Bench) -> None:
    try:
        await bench.run()
    finally:
        await bench.close()


if __name__ == "__main__":
    sys.exit(main())
