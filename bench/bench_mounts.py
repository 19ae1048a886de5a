#!/usr/bin/env python
"""Many mounts on one host: one remote change -> an inotify event on every mount.

Target: "50 mounts on one host, a change -> inotify on all 50 (changes 20 ms
apart): p99 < 50 ms". One run starts everything it measures and stops it again:

* a nats-server (``hvfs.server.EmbeddedServer``, nats-server's own fsync
  interval as in bench_notify.py) on a temp dir, a KV bucket with one key,
* M ``hvfs mount`` subprocesses on it (``bench_kv.MountProc``, each with its own
  ``--state-dir``), started ``--start-batch`` at a time; stopped by PID,
  ``fusermount3 -u -z`` if still mounted,
* in this process: one inotify instance watching the bucket directory of every
  mount (a reader thread timestamps events as it reads them).

A raw nats-py client then puts a new value ``--changes`` times, ``--interval``
apart (each put is started on schedule, without waiting for the previous ack),
to the one key ``k0`` or, with ``--keys K``, round-robin to ``k0..k{K-1}``
(all made before the mounts start). For every (change, mount) pair: the time
from the put's acknowledgement to the IN_MODIFY on that mount (the mount's
kernel notifier repeats each remote change as open + ftruncate + close through
its own mountpoint). ``--mounts`` takes a list (``1,10,50``): each count is a
separate run on the same server.

Matching events to changes, per mount and key: if the mount's notifier merged
nothing (status ``notifier.coalesced`` unchanged) and the key got exactly one
IN_MODIFY per change, none before its put was sent, in order (exact).
Otherwise each change gets the first event on that key after its put was sent.
With one key that is ambiguous: the notifier merges a change into a notice of
the same file still queued, and an event still announcing the previous change
can count for this one, so those latencies are a lower bound (the table says
for how many mounts). With ``--keys K`` the same file changes only every
K x interval, so nothing merges and the match is exact unless a latency
exceeds that.

Prints numbers, never asserts. Usage::

    .venv/bin/python bench/bench_mounts.py [--mounts 50] [--changes 200] [--interval 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ctypes
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import nats  # noqa: E402
from bench_kv import MountProc, hvfs_version, is_mounted, log, pct, poll, rss_bytes  # noqa: E402
from bench_notify import inotify_batch  # noqa: E402

from hvfs.server import SYNC_DEFAULT, EmbeddedServer  # noqa: E402

BUCKET = "mounts"
IN_MODIFY = 0x2
MISS_S = 5.0  # an event later than this after the ack counts as missed

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


# -- inotify on many directories, one instance, one reader thread -------------------------


class MultiInotify:
    """One inotify instance watching IN_MODIFY in many directories.

    ``events[i][name]`` is the list of perf_counter times (taken when read) of the
    events on ``name`` in directory ``i``.
    """

    def __init__(self, dirs: list[Path]) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.events: list[dict[str, list[float]]] = [{} for _ in dirs]
        self.overflows = 0
        self._wd: dict[int, int] = {}
        try:
            for i, d in enumerate(dirs):
                wd = _libc.inotify_add_watch(self.fd, os.fsencode(d), IN_MODIFY)
                if wd < 0:
                    raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")
                self._wd[wd] = i
        except BaseException:
            os.close(self.fd)
            raise
        self._stop = False
        self._t = threading.Thread(target=self._run, name="inotify-reader", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            now, events = inotify_batch(self.fd, 1 << 20)
            for wd, mask, name in events:
                if mask & 0x4000:  # IN_Q_OVERFLOW
                    self.overflows += 1
                    continue
                i = self._wd.get(wd)
                if i is None or not mask & IN_MODIFY:
                    continue
                self.events[i].setdefault(name.decode(), []).append(now)

    def clear(self) -> None:
        for ev in self.events:
            ev.clear()

    def heard_after(self, i: int, name: str, t: float) -> bool:
        ev = self.events[i].get(name)
        return bool(ev) and ev[-1] > t

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        os.close(self.fd)


# -- helpers ----------------------------------------------------------------------------


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split among the processes sharing them)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def notifier(m: MountProc) -> dict[str, int]:
    try:
        return dict(m.status().get("notifier") or {})
    except (OSError, ValueError):
        return {}


def match(events: list[float], sent: list[float], acked: list[float], exact: bool) -> list[float | None]:
    """Latency (ms, ack -> event) of each change on one mount; None: no event within MISS_S."""
    out: list[float | None] = []
    if exact:
        for t, a in zip(events, acked, strict=True):
            out.append((t - a) * 1000)
        return out
    j = 0
    for s, a in zip(sent, acked, strict=True):
        while j < len(events) and events[j] <= s:
            j += 1
        if j < len(events) and events[j] - a <= MISS_S:
            out.append((events[j] - a) * 1000)
        else:
            out.append(None)
    return out


# -- one run: M mounts -------------------------------------------------------------------


class Run:
    def __init__(self, a: argparse.Namespace, tmp: Path, url: str, m: int) -> None:
        self.a = a
        self.tmp = tmp / f"m{m}"
        self.url = url
        self.n = m
        self.mounts: list[MountProc] = []
        self.res: dict[str, Any] = {"mounts": m}
        self.notes: list[str] = []

    def start_mounts(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            state = self.tmp / f"state{i}"
            self.mounts.append(MountProc(self.tmp / f"mnt{i}", self.url, self.tmp / f"mount{i}.log",
                                         ["--state-dir", str(state), "--log-level", "WARNING",
                                          *(self.a.mount_arg or [])]))
        log(f"{self.n} mounts: starting {self.a.start_batch} at a time")
        t0 = time.perf_counter()
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=self.a.start_batch)
        try:
            futs = [ex.submit(m.start, self.a.start_timeout) for m in self.mounts]
            for f in concurrent.futures.as_completed(futs):
                f.result()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        self.res["mounted_s"] = time.perf_counter() - t0
        paths = [m.mountpoint / "kv" / BUCKET / k for m in self.mounts for k in keys(self.a)]
        if not poll(lambda: all(p.exists() for p in paths), 60, 0.02):
            missing = sum(not p.exists() for p in paths)
            raise RuntimeError(f"{missing} of {len(paths)} key files missing on the mounts after 60 s")
        self.res["visible_s"] = time.perf_counter() - t0
        log(f"{self.n} mounts up in {self.res['mounted_s']:.1f} s, key visible on all after "
            f"{self.res['visible_s']:.1f} s")

    def stop_mounts(self) -> None:
        if not self.mounts:
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
            for m, f in [(m, ex.submit(m.stop)) for m in self.mounts]:
                try:
                    f.result()
                except Exception as e:  # keep stopping the rest
                    log(f"stopping {m.mountpoint}: {type(e).__name__}: {e}")
        still = [m.mountpoint for m in self.mounts if is_mounted(m.mountpoint)]
        for mp in still:
            subprocess_run(["fusermount3", "-u", "-z", str(mp)])
        if still:
            log(f"unmounted {len(still)} leftover mountpoints with fusermount3 -u -z")

    async def measure(self) -> None:
        nc = await nats.connect(self.url)
        try:
            kv = await nc.jetstream(timeout=10.0).key_value(BUCKET)
            ino = MultiInotify([m.mountpoint / "kv" / BUCKET for m in self.mounts])
            try:
                await self._measure(kv, ino)
            finally:
                ino.close()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

    async def _put_paced(self, kv: Any, count: int, tag: str) -> tuple[list[str], list[float], list[float]]:
        """Put ``count`` changes, each started at its due time (up to 1,000 unacknowledged).
        Returns per change: key, perf_counter when sent, when acknowledged."""
        names = keys(self.a)
        key = [names[i % len(names)] for i in range(count)]
        sent = [math.nan] * count
        acked = [math.nan] * count

        async def one(i: int) -> None:
            await kv.put(key[i], f"{tag} {i}".encode())
            acked[i] = time.perf_counter()

        tasks = []
        t0 = time.perf_counter() + 0.05
        for i in range(count):
            delay = t0 + i * self.a.interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = time.perf_counter()
            tasks.append(asyncio.create_task(one(i)))
            if len(tasks) - sum(t.done() for t in tasks[-1000:]) >= 1000:
                await asyncio.wait(tasks[-1000:], return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*tasks)
        self.res.setdefault("behind_ms_max", 0.0)
        self.res["behind_ms_max"] = max(self.res["behind_ms_max"], max(
            (x - t0 - i * self.a.interval) * 1000 for i, x in enumerate(sent)))
        return key, sent, acked

    async def _settle(self, ino: MultiInotify, key: list[str], sent: list[float], limit: float) -> bool:
        """Until every mount had an event on each key after that key's last put, and every
        notifier's queue is empty; at most ``limit`` seconds."""
        last: dict[str, float] = {}
        for k, t in zip(key, sent, strict=True):
            last[k] = t

        def done() -> bool:
            return (all(ino.heard_after(i, k, t) for i in range(self.n) for k, t in last.items())
                    and all(notifier(m).get("queue", 0) == 0 for m in self.mounts))

        return await asyncio.to_thread(poll, done, max(0.0, limit), 0.02)

    async def _measure(self, kv: Any, ino: MultiInotify) -> None:
        a = self.a
        if a.warmup:
            key, sent, acked = await self._put_paced(kv, a.warmup, "warmup")
            if not await self._settle(ino, key, sent, MISS_S):
                self.notes.append(f"warm-up: not every mount heard the last warm-up changes within {MISS_S:.0f} s")
            await asyncio.sleep(0.3)
        ino.clear()
        before = [notifier(m) for m in self.mounts]
        rss0 = sum(rss_bytes(m.pid) for m in self.mounts)
        c = a.changes
        log(f"{self.n} mounts: {c} changes {a.interval * 1000:.0f} ms apart to {a.keys} key(s)")
        key, sent, acked = await self._put_paced(kv, c, "change")
        self.res["put_ack_ms"] = [(x - s) * 1000 for s, x in zip(sent, acked, strict=True)]
        await self._settle(ino, key, sent, max(acked) + MISS_S - time.perf_counter())
        await asyncio.sleep(0.3)  # any extra (duplicate) events
        after = [notifier(m) for m in self.mounts]
        rss = [rss_bytes(m.pid) for m in self.mounts]
        pss = [pss_bytes(m.pid) for m in self.mounts]
        lat: list[list[float | None]] = []  # [mount][change]
        approx = 0
        extra = 0
        for i in range(self.n):
            merged = after[i].get("coalesced", 0) - before[i].get("coalesced", 0)
            row: list[float | None] = [None] * c
            mount_exact = True
            for k in keys(a):
                idx = [j for j in range(c) if key[j] == k]
                ev = list(ino.events[i].get(k, []))
                ks, ka = [sent[j] for j in idx], [acked[j] for j in idx]
                exact = merged == 0 and len(ev) == len(idx) and all(t > x for t, x in zip(ev, ks, strict=True))
                extra += max(0, len(ev) - len(idx))
                mount_exact = mount_exact and exact
                for j, x in zip(idx, match(ev, ks, ka, exact), strict=True):
                    row[j] = x
            approx += not mount_exact
            lat.append(row)
        pairs = [x for row in lat for x in row if x is not None]
        ack_ms = [(x - y) * 1000 for x, y in zip(acked, sent, strict=True)]
        from_send = [x + ack_ms[j] for row in lat for j, x in enumerate(row) if x is not None]
        missed = sum(x is None for row in lat for x in row)
        slowest = []  # per change: the slowest mount (a change with a miss: inf)
        for j in range(c):
            col = [row[j] for row in lat]
            slowest.append(math.inf if any(x is None for x in col) else max(col))  # type: ignore[type-var]

        def delta(k: str) -> int:
            return sum(af.get(k, 0) - bf.get(k, 0) for bf, af in zip(before, after, strict=True))

        per_mount_p99 = [pct([x for x in row if x is not None], 0.99) for row in lat]
        self.res.update(
            notes=self.notes, pairs=pairs, from_send=from_send, missed=missed, slowest=slowest, approx=approx, extra=extra,
            events=sum(len(v) for e in ino.events for v in e.values()), overflows=ino.overflows,
            rss=sum(rss), rss_max=max(rss), pss=sum(pss), rss_growth=sum(rss) - rss0,
            coalesced=delta("coalesced"), failed=delta("failed"), unwatched=delta("unwatched"),
            max_queue=max((af.get("max_queue", 0) for af in after), default=0),
            worst_mount=max(range(self.n), key=lambda i: per_mount_p99[i]),
            mount_p99_range=(min(per_mount_p99), max(per_mount_p99)),
        )

    def go(self) -> None:
        try:
            self.start_mounts()
            asyncio.run(self.measure())
        finally:
            self.stop_mounts()


def subprocess_run(cmd: list[str]) -> None:
    import subprocess

    subprocess.run(cmd, check=False, capture_output=True)


# -- the table -----------------------------------------------------------------------------


def report(runs: list[dict[str, Any]], a: argparse.Namespace) -> str:
    def ms(x: float) -> str:
        return "n/a" if x != x else ("inf" if x == math.inf else f"{x:.1f}")

    head = ("mounts", "pairs", "p50", "p99", "max", "slowest p50", "slowest p99", "missed",
            "merged", "start s", "visible s", "RSS MiB", "/mount", "PSS/mount", "target")
    rows = []
    for r in runs:
        p = r["pairs"]
        sp99 = pct(r["slowest"], 0.99)
        ok = sp99 < 50 and pct(p, 0.99) < 50 and r["missed"] == 0
        rows.append((str(r["mounts"]), str(len(p) + r["missed"]), ms(pct(p, 0.5)), ms(pct(p, 0.99)),
                     ms(max(p) if p else float("nan")), ms(pct(r["slowest"], 0.5)), ms(sp99),
                     str(r["missed"]), str(r["coalesced"]), f"{r['mounted_s']:.1f}", f"{r['visible_s']:.1f}",
                     f"{r['rss'] / 2**20:.0f}", f"{r['rss'] / r['mounts'] / 2**20:.1f}",
                     f"{r['pss'] / r['mounts'] / 2**20:.1f}", f"p99 < 50 ms {'OK' if ok else 'MISS'}"))
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(widths[i]) for i, c in enumerate(row))

    lines = [f"put ack -> IN_MODIFY on every mount, {a.changes} changes {a.interval * 1000:.0f} ms apart "
             f"to {a.keys} key(s) (latencies in ms)", fmt(head), "-" * len(fmt(head)), *[fmt(x) for x in rows], ""]
    lines.append("pairs: (change, mount); p50/p99/max over all pairs; slowest: per change, its slowest "
                 "mount (a missed pair makes it inf); missed: no IN_MODIFY within 5 s of the ack; "
                 "merged: notifier.coalesced (changes announced by an earlier queued one); start s: "
                 f"all mounts' status readable ({a.start_batch} started at a time); visible s: the key's "
                 "file on every mount; RSS/PSS at the end (PSS splits shared pages)")
    for r in runs:
        acks = r["put_ack_ms"]
        lo, hi = r["mount_p99_range"]
        fs = r["from_send"]
        lines.append(f"M={r['mounts']}: from the put's send (not its ack) to the event: p50 {pct(fs, 0.5):.1f} / "
                     f"p99 {pct(fs, 0.99):.1f} / max {max(fs) if fs else math.nan:.1f} ms; events/changes "
                     f"{r['events'] / max(1, len(r['slowest']) * r['mounts']):.2f}")
        lines.append(f"  put->ack p50 {pct(acks, 0.5):.1f} / max {max(acks):.1f} ms; puts at most "
                     f"{r['behind_ms_max']:.1f} ms behind schedule; per-mount p99 {lo:.1f}..{hi:.1f} ms "
                     f"(worst mount #{r['worst_mount']}); events {r['events']}; notifier failed {r['failed']}, "
                     f"unwatched {r['unwatched']}, longest queue {r['max_queue']}; RSS max {r['rss_max'] / 2**20:.1f}"
                     f" MiB, grew {r['rss_growth'] / 2**20:+.1f} MiB total during the changes")
        if r["approx"]:
            lines.append(f"  NOTE: {r['approx']} of {r['mounts']} mounts merged changes or had extra/early "
                         "events: their latencies are those of the first event on the key after the put was "
                         "sent, a lower bound when changes of one key come faster than the mount "
                         "announces them (see the docstring)")
        for n in r["notes"]:
            lines.append(f"  NOTE: {n}")
        if r["overflows"] or r["extra"]:
            lines.append(f"  NOTE: inotify queue overflows {r['overflows']}, events beyond one per change {r['extra']}")
    lines.append(f"hvfs {hvfs_version()}; mount args: {' '.join(a.mount_arg or []) or '(defaults)'}; "
                 f"{os.cpu_count()} CPUs; load average at the end {os.getloadavg()[0]:.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mounts", default="50", help="mounts on the host; a comma list runs each (default 50)")
    p.add_argument("--changes", type=int, default=200, help="timed changes of the key (default 200)")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between changes (default 0.02)")
    p.add_argument("--keys", type=int, default=1, help="changes go round-robin to this many keys "
                   "(default 1: one key, as in the target)")
    p.add_argument("--warmup", type=int, default=5, help="untimed changes first (default 5)")
    p.add_argument("--start-batch", type=int, default=4, help="mounts started at once (default 4)")
    p.add_argument("--start-timeout", type=float, default=90.0, help="per mount, seconds (default 90)")
    p.add_argument("--mount-arg", action="append", help="extra argument for 'hvfs mount' (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (mount and server logs)")
    a = p.parse_args(argv)
    a.mount_counts = [int(x) for x in a.mounts.split(",") if x.strip()]
    return a


class Interrupted(BaseException):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root; FUSE mounts may fail")
    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="hvfs-bench-mounts-"))
    srv = EmbeddedServer(tmp / "nats", sync=SYNC_DEFAULT)
    runs: list[dict[str, Any]] = []
    failed = False
    run: Run | None = None
    t0 = time.monotonic()
    try:
        srv.start()
        asyncio.run(_make_bucket(srv.url, a))
        for m in a.mount_counts:
            run = Run(a, tmp, srv.url, m)
            run.go()
            runs.append(run.res)
            run = None
    except BaseException as e:
        failed = True
        log(f"benchmark failed: {type(e).__name__}: {e}")
        if run is not None:
            for m in run.mounts[:50]:
                tail = m.log_tail(600)
                if tail.strip():
                    log(f"log of {m.mountpoint}:\n{tail}")
                    break
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish stopping what we started
        if run is not None:
            run.stop_mounts()  # again: an interrupted stop left some running
        try:
            srv.stop()
        except Exception as e:
            log(f"stopping nats-server: {type(e).__name__}: {e}")
        leftover = any(is_mounted(p) for p in tmp.glob("m*/mnt*"))
        if a.keep or failed or leftover:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if runs:
        print(report(runs, a))
        print(f"(whole run: {time.monotonic() - t0:.0f} s)")
    return 1 if failed else 0


def keys(a: argparse.Namespace) -> list[str]:
    return [f"k{i}" for i in range(max(1, a.keys))]


async def _make_bucket(url: str, a: argparse.Namespace) -> None:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream(timeout=10.0).create_key_value(bucket=BUCKET, history=1)
        for k in keys(a):
            await kv.put(k, b"initial")
    finally:
        await nc.close()


if __name__ == "__main__":
    sys.exit(main())
