#!/usr/bin/env python
"""A typed binding (format yaml, schema agent) beside a raw one, same bytes, one mount.

The target (issue "the codec and validation may add at most 20 %"): a read or a
rewrite of ``typed/ag-1.yml`` costs at most 1.2x the same operation on
``plain/ag-1``, a raw binding holding the very bytes the typed file shows.

One run starts everything it measures and stops it again (by PID; the mount is
unmounted with ``fusermount3 -u``, also on Ctrl-C or an error):

* a nats-server (``hvfs.server.EmbeddedServer``) with its store in a temp dir,
* one ``hvfs mount --config`` subprocess binding ``typed`` (KV ``bt_typed``,
  format yaml, schema agent, no TTL) and ``plain`` (KV ``bt_plain``, format
  raw); ``raw: false``, so the mount watches these two buckets only,
* a fresh tmpfs (``mount -t tmpfs``; /dev/shm if that is not allowed).

Rows (medians and p90 over ``--n`` calls per variant, the variants alternated in
``--rounds`` blocks, the order reversed every other round, so drift hits all):

* read: ``os.open(O_RDONLY)`` + ``os.read`` + ``os.close``: typed, plain; raw
  nats-py ``kv.get`` of the stored JSON as the floor; tmpfs.
* write: ``os.open(O_WRONLY|O_TRUNC)`` + ``os.write`` of the YAML + ``os.close``
  (one new revision each): typed, plain; raw nats-py ``kv.update`` of the
  stored JSON (a bucket the mount does not watch) as the floor; tmpfs.
* codec in-process: ``Codec("yaml", AgentSession).store`` and ``.show`` per
  call, and their parts (YAML load, model validate + dump, YAML dump).

``--profile DIR`` then runs the mount under cProfile (one mount per variant,
untimed loops) and prints where the typed variant spends more than the plain
one, per operation. It prints numbers and never asserts. Usage::

    .venv/bin/python bench/bench_typed.py            # about 1.5-2 minutes on 2 cores
    .venv/bin/python bench/bench_typed.py --quick    # about 20 s
"""

# Blocking file I/O inside coroutines is deliberate: the file operations are
# what is timed, and the mount is another process.
# ruff: noqa: ASYNC230, ASYNC251

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats  # noqa: E402
import yaml  # noqa: E402
from bench_kv import MountProc, Tmpfs, hvfs_version, is_mounted, log, pct, time_async, time_sync  # noqa: E402

from hvfs.codec import Codec, Context, StrictLoader, _Dumper  # noqa: E402
from hvfs.entities import AgentSession  # noqa: E402
from hvfs.server import EmbeddedServer  # noqa: E402

TYPED, PLAIN, FLOOR = "bt_typed", "bt_plain", "bt_floor"
TARGET = 1.20  # typed may cost at most 20 % more than plain

CONFIG = f"""\
# bench/bench_typed.py: one typed binding beside one raw binding
raw: false
bindings:
  - path: typed
    kv: {TYPED}
    format: yaml
    schema: agent
  - path: plain
    kv: {PLAIN}
    format: raw
"""

# What a writer writes; the mount fills id from the file name, type by default.
SOURCE = b"""\
name: bench agent
capabilities: [python, nats, fuse]
status: working
current_issue: is-42
last_heartbeat: '2026-11-29T10:30:00Z'
started_at: '2026-11-29T09:00:00Z'
"""


class Mount(MountProc):
    """bench_kv's MountProc with a config, an optional cProfile wrapper, its own session.

    Its own session: a Ctrl-C in the terminal reaches the benchmark only, which
    then stops the mount itself (SIGTERM by PID, ``fusermount3 -u``).
    """

    def __init__(self, mountpoint: Path, server: str, logfile: Path, config: Path,
                 extra: list[str], profile: Path | None = None) -> None:
        super().__init__(mountpoint, server, logfile, ["--config", str(config), *extra])
        self.profile = profile

    def start(self, timeout: float = 30.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        pre = [sys.executable]
        if self.profile is not None:
            pre += ["-m", "cProfile", "-o", str(self.profile)]
        cmd = [*pre, "-m", "hvfs", "mount", str(self.mountpoint), "--server", self.server,
               "--log-level", "INFO", *self.extra]
        with open(self.logfile, "ab") as lf:
            self.proc = subprocess.Popen(cmd, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, cwd=str(ROOT),
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hvfs mount exited {self.proc.returncode}: {self.log_tail()}")
            if is_mounted(self.mountpoint) and (self.mountpoint / ".hvfs" / "status").exists():
                return
            time.sleep(0.02)
        raise RuntimeError(f"mount did not appear within {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30 if self.profile else 15)  # cProfile writes its stats on the way out
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if is_mounted(self.mountpoint):
            r = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)


def file_read(path: str) -> Callable[[], None]:
    def fn() -> None:
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)
    return fn


def file_write(path: str, value: bytes) -> Callable[[], None]:
    def fn() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, value)
        os.close(fd)
    return fn


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.a = args
        self.tmp = tmp
        self.cfg = tmp / "typed.yml"
        self.cfg.write_text(CONFIG)
        self.srv = EmbeddedServer(tmp / "nats")
        self.mnt = Mount(tmp / "mnt", "", tmp / "mount.log", self.cfg, args.mount_arg or [])
        self.extra_mounts: list[Mount] = []
        self.tfs = Tmpfs(tmp / "tmpfs")
        self.codec = Codec("yaml", AgentSession)
        self.nc: Any = None
        self.results: dict[str, dict[str, list[float]]] = {}
        self.calls: dict[str, float] = {}  # "read typed" -> NATS calls per op of the mount
        self.notes: list[str] = []
        self.profiles: list[str] = []
        # the entity, as stored (compact JSON) and as shown (YAML), for two keys
        self.stored = {k: self.codec.store(SOURCE, Context(k)) for k in ("ag-1", "ag-2")}
        self.shown = {k: self.codec.show(v)[0] for k, v in self.stored.items()}

    def mp(self, *parts: str, mnt: Mount | None = None) -> str:
        return str((mnt or self.mnt).mountpoint.joinpath(*parts))

    def nats_calls(self, mnt: Mount | None = None) -> int:
        return int((mnt or self.mnt).status()["nats"]["calls"])

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if cond():
                    return
            time.sleep(0.01)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}")

    # -- set-up

    async def setup(self) -> None:
        self.srv.start()
        self.mnt.server = self.srv.url
        self.mnt.start()  # creates bt_typed and bt_plain as a mount does (history 10, direct gets)
        self.nc = await nats.connect(self.srv.url)
        js = self.nc.jetstream(timeout=10.0)
        self.kv_typed = await js.key_value(TYPED)
        self.kv_plain = await js.key_value(PLAIN)
        self.kv_floor = await js.create_key_value(bucket=FLOOR, history=10, direct=True)
        for k in ("ag-1", "ag-2"):
            await self.kv_typed.put(k, self.stored[k])
            await self.kv_plain.put(k, self.shown[k])
        self.floor_rev = await self.kv_floor.put("ag-2", self.stored["ag-2"])
        self.tfs.start()
        for k in ("ag-1", "ag-2"):
            (self.tfs.path / f"{k}.yml").write_bytes(self.shown[k])
        self.wait(lambda: all(os.path.exists(p) for p in (self.mp("typed", "ag-2.yml"), self.mp("plain", "ag-2"))),
                  15, "typed/ag-2.yml and plain/ag-2 in the mount")
        # the same bytes in both views, else the comparison means nothing
        with open(self.mp("typed", "ag-1.yml"), "rb") as f:
            t = f.read()
        with open(self.mp("plain", "ag-1"), "rb") as f:
            p = f.read()
        if t != p or t != self.shown["ag-1"]:
            self.notes.append(f"typed/ag-1.yml ({len(t)} B) and plain/ag-1 ({len(p)} B) differ")
        log(f"nats-server {self.srv.url}, mount pid {self.mnt.pid} at {self.mnt.mountpoint}, "
            f"baseline {self.tfs.kind} at {self.tfs.path}; entity {len(self.stored['ag-1'])} B stored, "
            f"{len(self.shown['ag-1'])} B shown")

    # -- timing

    async def alternate(self, op: str, kinds: dict[str, Callable[[], Any]], n: int) -> None:
        """Warm every kind up, then time n calls of each in --rounds blocks, alternating.

        The order of the kinds is reversed every other round. A kind starting with
        "raw" is awaited; NATS calls the mount makes during "typed"/"plain" blocks
        are counted.
        """
        w, rounds = self.a.warmup, max(1, self.a.rounds)
        out: dict[str, list[float]] = {k: [] for k in kinds}
        calls = dict.fromkeys(kinds, 0)
        for name, fn in kinds.items():
            if name.startswith("raw"):
                await time_async(fn, 0, w)
            else:
                time_sync(fn, 0, w)
        names = list(kinds)
        for r in range(rounds):
            per = n // rounds + (1 if r < n % rounds else 0)
            for name in (names if r % 2 == 0 else names[::-1]):
                fn = kinds[name]
                if name.startswith("raw"):
                    out[name] += await time_async(fn, per, 0)
                elif name in ("typed", "plain"):
                    c0 = self.nats_calls()
                    out[name] += time_sync(fn, per, 0)
                    calls[name] += self.nats_calls() - c0
                else:
                    out[name] += time_sync(fn, per, 0)
        for name, samples in out.items():
            self.results[f"{op}\t{name}"] = samples
        for name in ("typed", "plain"):
            if name in kinds:
                self.calls[f"{op} {name}"] = calls[name] / n

    async def bench_read(self) -> None:
        kv = self.kv_typed

        async def raw() -> None:
            await kv.get("ag-1")

        log(f"read: typed, plain, raw kv.get, {self.tfs.kind}; n={self.a.n} each")
        await self.alternate("read", {
            "typed": file_read(self.mp("typed", "ag-1.yml")),
            "plain": file_read(self.mp("plain", "ag-1")),
            "raw": raw,
            "tmpfs": file_read(str(self.tfs.path / "ag-1.yml")),
        }, self.a.n)

    async def bench_write(self) -> None:
        kv, value, stored = self.kv_floor, self.shown["ag-2"], self.stored["ag-2"]
        rev = self.floor_rev

        async def raw() -> None:
            nonlocal rev
            rev = await kv.update("ag-2", stored, last=rev)

        log(f"write: typed, plain, raw kv.update, {self.tfs.kind}; n={self.a.n} each")
        seq0 = {b: (await self.nc.jetstream().stream_info(f"KV_{b}")).state.last_seq for b in (TYPED, PLAIN)}
        await self.alternate("write", {
            "typed": file_write(self.mp("typed", "ag-2.yml"), value),
            "plain": file_write(self.mp("plain", "ag-2"), value),
            "raw": raw,
            "tmpfs": file_write(str(self.tfs.path / "ag-2.yml"), value),
        }, self.a.n)
        # sanity, reported not asserted: one revision per write, and the stored bytes
        want = self.a.n + self.a.warmup
        for b in (TYPED, PLAIN):
            moved = (await self.nc.jetstream().stream_info(f"KV_{b}")).state.last_seq - seq0[b]
            if moved != want:
                self.notes.append(f"{want} writes moved KV_{b}'s sequence by {moved}")
        if (await self.kv_typed.get("ag-2")).value != stored:
            self.notes.append("typed/ag-2.yml's writes stored other bytes than Codec.store gives")
        if (await self.kv_plain.get("ag-2")).value != value:
            self.notes.append("plain/ag-2's writes stored other bytes than were written")

    def bench_codec(self) -> None:
        c, src, stored = self.codec, self.shown["ag-2"], self.stored["ag-1"]
        ctx = Context("ag-2")
        doc = yaml.load(src, Loader=StrictLoader)  # noqa: S506 - a SafeLoader
        value = json.loads(stored)
        ordered = {k: value[k] for k in c._order if k in value}
        n = self.a.codec_n
        log(f"codec in-process: n={n} each")

        def load() -> None:
            yaml.load(src.decode(), Loader=StrictLoader)  # noqa: S506

        def validate_dump() -> None:
            AgentSession.model_validate(doc).model_dump(mode="json", by_alias=True, exclude_none=True)

        def validate() -> None:
            AgentSession.model_validate(value)

        def dump() -> None:
            yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                      default_flow_style=False, width=1 << 16)

        def cdump() -> None:
            yaml.dump(ordered, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=True,
                      default_flow_style=False, width=1 << 16)

        kinds = {
            "Codec.store (write)": lambda: c.store(src, ctx),
            "  yaml.load StrictLoader": load,
            "  model_validate + model_dump": validate_dump,
            "Codec.show (read)": lambda: c.show(stored),
            "  model_validate": validate,
            "  yaml.dump": dump,
            "  (libyaml yaml.CSafeLoader, not used)": lambda: yaml.load(src, Loader=yaml.CSafeLoader),  # noqa: S506
            "  (libyaml yaml.CSafeDumper, not used)": cdump,
            "Codec.store, after a plain read": lambda: c.store(src, ctx),
            "Codec.show, after a plain read": lambda: c.show(stored),
        }
        # The mount runs the codec between FUSE requests and NATS calls, not in a hot
        # loop: the "after a plain read" rows time one call right after an (untimed)
        # read of plain/ag-1 through the mount, which leaves this process's caches cold.
        between = file_read(self.mp("plain", "ag-1"))
        pc = time.perf_counter_ns

        def cold(fn: Callable[[], Any], k: int) -> list[float]:
            out = []
            for _ in range(k):
                between()
                t0 = pc()
                fn()
                out.append((pc() - t0) / 1e3)
            return out

        rounds = max(1, self.a.rounds)
        out: dict[str, list[float]] = {k: [] for k in kinds}
        for fn in kinds.values():
            time_sync(fn, 0, min(self.a.warmup, 100))
        for r in range(rounds):
            per = n // rounds + (1 if r < n % rounds else 0)
            for name in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
                if name.endswith("after a plain read"):
                    out[name] += cold(kinds[name], max(1, per // 5))
                else:
                    out[name] += time_sync(kinds[name], per, 0)
        for name, samples in out.items():
            self.results[f"codec\t{name}"] = samples

    # -- profile (untimed): where the typed variant spends more than the plain one

    def profile(self) -> None:
        pdir = Path(self.a.profile)
        pdir.mkdir(parents=True, exist_ok=True)
        n = self.a.profile_n
        self.mnt.stop()  # one mount at a time: no second watcher of the buckets
        value = self.shown["ag-2"]
        stats: dict[str, pstats.Stats] = {}
        for op in ("read", "write"):
            for var in ("typed", "plain"):
                out = pdir / f"{op}-{var}.prof"
                m = Mount(self.tmp / "mnt-prof", self.srv.url, self.tmp / "mount-prof.log", self.cfg,
                          self.a.mount_arg or [], profile=out)
                self.extra_mounts.append(m)
                m.start()
                try:
                    path = (self.mp("typed", "ag-1.yml" if op == "read" else "ag-2.yml", mnt=m) if var == "typed"
                            else self.mp("plain", "ag-1" if op == "read" else "ag-2", mnt=m))
                    fn = file_read(path) if op == "read" else file_write(path, value)
                    self.wait(lambda p=path: os.path.exists(p), 15, path)
                    time_sync(fn, 0, n)
                finally:
                    m.stop()
                    self.extra_mounts.remove(m)
                if out.exists():
                    stats[f"{op} {var}"] = pstats.Stats(str(out))
                    log(f"profile of {op} {var}: {out}")
                else:
                    self.notes.append(f"cProfile wrote no {out} (mount log: {m.log_tail(300)!r})")
        for op in ("read", "write"):
            t, p = stats.get(f"{op} typed"), stats.get(f"{op} plain")
            if t is not None and p is not None:
                self.profiles.append(profile_diff(op, t, p, n, self.a.profile_top))

    # -- run, stop, report

    async def run(self) -> None:
        await self.setup()
        await self.bench_read()
        await self.bench_write()
        self.bench_codec()
        self.final_status = self.mnt.status()
        if self.a.profile:
            await self.close()
            self.profile()

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

    def stop_all(self) -> None:
        for what, fn in ([("profiled mount", m.stop) for m in self.extra_mounts]
                         + [("mount", self.mnt.stop), ("tmpfs", self.tfs.stop), ("nats-server", self.srv.stop)]):
            try:
                fn()
            except Exception as e:  # keep stopping the rest
                log(f"stopping {what}: {type(e).__name__}: {e}")

    def report(self) -> str:
        r = self.results

        def us(x: float) -> str:
            return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"

        head = ("operation", "variant", "median us", "p90 us", "typed/plain")
        rows: list[tuple[str, ...]] = []
        verdicts = []
        for op, label in (("read", f"read open+read+close, n={self.a.n}"),
                          ("write", f"write open(O_TRUNC)+write+close, n={self.a.n}")):
            t, p = r[f"{op}\ttyped"], r[f"{op}\tplain"]
            ratio, ratio90 = pct(t, 0.5) / pct(p, 0.5), pct(t, 0.9) / pct(p, 0.9)
            for var, vlabel in (("typed", "typed (yaml + agent)"), ("plain", "plain (raw binding)"),
                                ("raw", "raw nats-py " + ("kv.get" if op == "read" else "kv.update")),
                                ("tmpfs", self.tfs.kind)):
                s = r[f"{op}\t{var}"]
                rows.append((label if var == "typed" else "", vlabel, us(pct(s, 0.5)), us(pct(s, 0.9)),
                             f"{ratio:.2f} (p90 {ratio90:.2f})" if var == "typed" else ""))
            delta = pct(t, 0.5) - pct(p, 0.5)
            verdicts.append(f"{op}: typed is {100 * (ratio - 1):+.0f} % of plain at the median "
                            f"({delta:+,.0f} us), {100 * (ratio90 - 1):+.0f} % at p90: "
                            f"<= +20 % {'OK' if ratio <= TARGET else 'MISS'}; "
                            f"NATS calls per op typed {self.calls[f'{op} typed']:.2f}, "
                            f"plain {self.calls[f'{op} plain']:.2f}")
        first = True
        for key, s in r.items():
            op, name = key.split("\t")
            if op != "codec":
                continue
            rows.append((f"codec in-process, n={self.a.codec_n}" if first else "", name,
                         us(pct(s, 0.5)), us(pct(s, 0.9)), ""))
            first = False
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

        def fmt(row: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row))

        lines = [fmt(head), "-" * len(fmt(head)), *(fmt(row) for row in rows), ""]
        lines += verdicts
        st = getattr(self, "final_status", {})
        lines.append(f"entity: {len(self.stored['ag-1'])} B stored (JSON), {len(self.shown['ag-1'])} B shown (YAML)")
        lines.append(f"hvfs {hvfs_version()}; mount args: --config (typed + plain, raw: false) "
                     f"{' '.join(self.a.mount_arg or [])}".rstrip())
        lines.append(f"mount status at the end: keys={st.get('keys')} nats={st.get('nats')} "
                     f"errors_total={st.get('errors_total')}")
        lines += [f"NOTE: {n}" for n in self.notes]
        for p in self.profiles:
            lines += ["", p]
        return "\n".join(lines)


def _fname(func: tuple[str, int, str]) -> str:
    file, line, name = func
    if file == "~":
        return name
    parts = Path(file).parts
    for anchor in ("hvfs", "site-packages", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            file = "/".join(parts[i + (anchor != "hvfs"):])
            break
    return f"{file}:{line}({name})"


def profile_diff(op: str, typed: pstats.Stats, plain: pstats.Stats, n: int, top: int) -> str:
    """Per-op cumulative and own time that typed spends beyond plain, the largest first."""
    def table(st: pstats.Stats) -> dict[tuple[str, int, str], tuple[float, float, int]]:
        return {f: (ct, tt, nc) for f, (_cc, nc, tt, ct, _callers) in st.stats.items()}  # type: ignore[attr-defined]

    t, p = table(typed), table(plain)
    tot_t = sum(v[1] for v in t.values()) / n * 1e6
    tot_p = sum(v[1] for v in p.values()) / n * 1e6
    lines = [f"cProfile of the mount's main thread, {op}, {n} untimed ops per variant (cProfile inflates "
             f"every call; compare typed with plain): total own time per op typed {tot_t:,.0f} us, "
             f"plain {tot_p:,.0f} us"]
    def in_hvfs(f: tuple[str, int, str]) -> bool:
        parts = Path(f[0]).parts
        return "hvfs" in parts and parts[-1] not in ("cli.py", "__main__.py", "mount.py")

    for what, idx, keep in (("cumulative time in hvfs functions", 0, in_hvfs), ("own time", 1, None)):
        diffs = []
        for f in set(t) | set(p):
            if keep is not None and not keep(f):
                continue
            a, b = t.get(f, (0.0, 0.0, 0)), p.get(f, (0.0, 0.0, 0))
            d = (a[idx] - b[idx]) / n * 1e6
            diffs.append((d, f, a[idx] / n * 1e6, b[idx] / n * 1e6, a[2] / n, b[2] / n))
        diffs.sort(key=lambda x: x[0], reverse=True)
        lines.append(f"  {what} per op, typed minus plain (us; calls per op typed/plain):")
        for d, f, a, b, ca, cb in diffs[:top]:
            lines.append(f"    {d:+8.1f}  typed {a:8.1f}  plain {b:8.1f}  ({ca:g}/{cb:g})  {_fname(f)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a ~20 s run: --n 1500 --rounds 10 --warmup 100 "
                   "--codec-n 2000")
    p.add_argument("--n", type=int, help="timed calls per variant of read and write (default 6000)")
    p.add_argument("--rounds", type=int, help="blocks the variants alternate in (default 30)")
    p.add_argument("--warmup", type=int, help="untimed calls per variant first (default 300)")
    p.add_argument("--codec-n", type=int, help="timed calls per codec row (default 8000)")
    p.add_argument("--profile", metavar="DIR", help="afterwards, cProfile the mount (main thread) during "
                   "untimed loops, one mount per op and variant; stats to DIR/{read,write}-{typed,plain}.prof")
    p.add_argument("--profile-n", type=int, default=3000, help="ops per profiled loop (default 3000)")
    p.add_argument("--profile-top", type=int, default=15, help="functions listed per profile table")
    p.add_argument("--mount-arg", action="append", help="extra argument for 'hvfs mount' (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, nats store)")
    a = p.parse_args(argv)
    quick = {"n": 1500, "rounds": 10, "warmup": 100, "codec_n": 2000}
    full = {"n": 6000, "rounds": 30, "warmup": 300, "codec_n": 8000}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root; mount -t tmpfs will not work")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="hvfs-bench-typed-"))
    bench = Bench(args, tmp)
    t0 = time.monotonic()
    failed = interrupted = False
    try:
        asyncio.run(_run(bench))
    except KeyboardInterrupt as e:
        failed = interrupted = True
        log(f"interrupted ({str(e) or 'SIGINT'}): stopping what was started")
    except BaseException as e:
        failed = True
        log(f"benchmark failed: {type(e).__name__}: {e}")
        tail = bench.mnt.log_tail()
        if tail:
            log(f"mount log tail:\n{tail}")
    finally:
        bench.stop_all()
        if args.keep or (failed and not interrupted):
            log(f"kept {tmp}")
        elif not is_mounted(bench.mnt.mountpoint) and not is_mounted(bench.tfs.where):
            shutil.rmtree(tmp, ignore_errors=True)
    if not failed:
        print(bench.report())
        print(f"\n(whole run: {time.monotonic() - t0:.0f} s; {os.cpu_count()} CPUs; "
              f"python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d')})")
    return 1 if failed else 0


async def _run(bench: Bench) -> None:
    try:
        await bench.run()
    finally:
        await bench.close()


if __name__ == "__main__":
    sys.exit(main())
