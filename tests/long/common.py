"""Shared pieces of the long tests: the skip mark, knobs, commands with deadlines,
tmpfs, a private nats-server with its mounts, and the number tables.

Everything started here is stopped by PID (a command's whole process group,
which it got from ``start_new_session``), FUSE mounts with ``fusermount3 -u``,
the tmpfs with ``umount``, also when a test fails.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hvfs.server import EmbeddedServer

from ..helpers import Mount, RawNats, is_mounted, wait_for

LONG = os.environ.get("HVFS_LONG") == "1"

#: every module in tests/long sets ``pytestmark = long_only``
long_only = pytest.mark.skipif(not LONG, reason="long test: run `bash scripts/test.sh --long` (HVFS_LONG=1)")

#: seconds per stressor / fio run (60 unless HVFS_LONG_SECONDS says otherwise)
SECONDS = int(os.environ.get("HVFS_LONG_SECONDS", "60"))
#: hypothesis examples of the long fsx test
EXAMPLES = int(os.environ.get("HVFS_LONG_EXAMPLES", "300"))
#: random ops of the seeded fsx loop
LOOP_OPS = int(os.environ.get("HVFS_LONG_OPS", "4000"))

#: where the logs of a failed test are kept (pytest's tmp dirs are deleted after 3 runs)
LOG_ROOT = Path(os.environ.get("HVFS_LONG_LOGS", "/tmp/hvfs-long-logs")) / time.strftime("%Y%m%d-%H%M%S")

#: every table printed by a long test, repeated in pytest's terminal summary
REPORTS: list[str] = []


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (bash scripts/test.sh --long installs stress-ng and fio)")
    return path


# -- commands with deadlines ---------------------------------------------------------


@dataclass
class Result:
    cmd: list[str]
    rc: int | None  # None: killed at the deadline
    out: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.rc is None


def run(cmd: Sequence[str], timeout: float, cwd: str | Path | None = None,
        env: dict[str, str] | None = None) -> Result:
    """Run ``cmd`` (stdout and stderr together) in its own process group.

    At the deadline the group (the command and whatever it forked) gets SIGKILL
    by its id and the result has ``rc=None``.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate(timeout=30)
        out += f"\n[killed: no exit within {timeout:.0f}s]"
        rc = None
    finally:
        if proc.poll() is None:
            kill_group(proc)
    return Result(list(cmd), rc, out, time.monotonic() - t0)


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group led by ``proc`` (started with start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass


# -- tmpfs ----------------------------------------------------------------------------


class Tmpfs:
    """A fresh tmpfs mounted on ``where``; unmounted by ``stop``."""

    def __init__(self, where: Path, size: str = "1g") -> None:
        self.path = where
        self.size = size

    def start(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        r = run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)], 30)
        if r.rc != 0:
            pytest.fail(f"mount -t tmpfs failed: {r.out.strip()}")
        return self

    def stop(self) -> None:
        if is_mounted(self.path):
            r = run(["umount", str(self.path)], 60)
            if r.rc != 0 and is_mounted(self.path):
                run(["umount", "-l", str(self.path)], 60)


# -- a private server with its mounts --------------------------------------------------


@dataclass
class Rig:
    """A private nats-server, a raw client ("another NATS client") and hvfs mounts."""

    root: Path
    server: EmbeddedServer
    raw: RawNats
    mounts: list[Mount] = field(default_factory=list)

    def add_mount(self, *extra: str) -> Mount:
        m = Mount(self.root / f"m{len(self.mounts)}" / "m", self.server.url, *extra)
        self.mounts.append(m)
        return m.start()

    @property
    def mnt(self) -> Mount:
        return self.mounts[0]

    def bucket(self, name: str, **kw: object) -> str:
        self.raw.create_bucket(name, **kw)
        for m in self.mounts:
            p = m.path("kv", name)
            wait_for(p.is_dir, 10, f"bucket {name} in {m.mountpoint}")
        return name

    def alive(self) -> list[str]:
        """What is wrong with the mounts right now ([] when every one answers)."""
        bad = []
        for m in self.mounts:
            if m.proc is None or m.proc.poll() is not None:
                bad.append(f"{m.mountpoint}: hvfs mount exited ({m.proc and m.proc.returncode})")
                continue
            try:
                (m.mountpoint / ".hvfs" / "status").read_bytes()
            except OSError as e:
                bad.append(f"{m.mountpoint}: .hvfs/status unreadable: {e}")
        return bad

    def stop(self, keep_logs: Path | None = None) -> None:
        """Stop everything; with ``keep_logs``, first copy what explains a failure there:
        each mount's ``.hvfs/errors`` and ``.hvfs/status``, then its log and the server's."""
        try:
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for i, m in enumerate(self.mounts):
                    for name in ("errors", "status"):
                        try:
                            data = (m.mountpoint / ".hvfs" / name).read_bytes()
                        except OSError as e:
                            data = f"unreadable: {e}\n".encode()
                        (keep_logs / f"mount{i}.{name}").write_bytes(data)
        finally:
            for m in self.mounts:
                m.stop()
            self.raw.close()
            self.server.stop()
        if keep_logs is not None:
            for i, m in enumerate(self.mounts):
                if m.log.exists():
                    shutil.copyfile(m.log, keep_logs / f"mount{i}.log")
            if self.server.log_path.exists():
                shutil.copyfile(self.server.log_path, keep_logs / "nats-server.log")


def start_rig(root: Path, mounts: int = 1) -> Rig:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")
    server = EmbeddedServer(root / "nats")
    server.start()
    try:
        rig = Rig(root, server, RawNats(server.url))
    except BaseException:
        server.stop()
        raise
    try:
        for _ in range(mounts):
            rig.add_mount()
    except BaseException:
        rig.stop()
        raise
    return rig


def errors_tail(m: Mount, n: int = 10, width: int = 300) -> list[str]:
    """The last ``n`` lines of the mount's ``.hvfs/errors`` (each cut to ``width``)."""
    try:
        lines = (m.mountpoint / ".hvfs" / "errors").read_text(errors="replace").splitlines()[-n:]
    except OSError as e:
        return [f"(.hvfs/errors unreadable: {e})"]
    return [cut(line, width) for line in lines]


def cut(line: str, width: int = 300) -> str:
    return line if len(line) <= width else line[:width] + f"... ({len(line)} chars)"


class ErrorWatch:
    """Collects every line of a mount's ``.hvfs/errors`` while a load runs.

    ``.hvfs/errors`` keeps the last 500 errors, so a reader thread samples it
    every ``every`` seconds and keeps what is new; ``missed`` counts what went
    by between two samples (from ``errors_total`` in ``.hvfs/status``).
    """

    def __init__(self, m: Mount, every: float = 0.5) -> None:
        self.m = m
        self.every = every
        self.lines: list[str] = []
        self.missed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._total0 = self._total()

    def _total(self) -> int:
        try:
            return int(json.loads((self.m.mountpoint / ".hvfs" / "status").read_bytes())["errors_total"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def _sample(self) -> None:
        try:
            snap = (self.m.mountpoint / ".hvfs" / "errors").read_text(errors="replace").splitlines()
        except OSError:
            return
        have = self.lines
        k = min(len(have), len(snap))
        while k and have[len(have) - k:] != snap[:k]:
            k -= 1
        have.extend(snap[k:])

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> ErrorWatch:
        self._sample()
        self._start = len(self.lines)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._sample()
        del self.lines[:self._start]
        total1 = self._total()
        if self._total0 >= 0 and total1 >= 0:
            self.missed = max(0, total1 - self._total0 - len(self.lines))

    def summary(self) -> list[str]:
        """``op errno (name) x count: first reason`` per kind of error seen."""
        kinds: dict[tuple[str, int], list[str]] = {}
        for line in self.lines:
            try:
                j = json.loads(line)
                key = (str(j["op"]), int(j["errno"]))
            except (ValueError, KeyError, TypeError):
                key = ("?", 0)
                j = {"reason": line}
            kinds.setdefault(key, []).append(str(j.get("reason", "")))
        out = [f"{op} {errno_name(e)} x{len(r):,}: {cut(r[0], 160)}"
               for (op, e), r in sorted(kinds.items(), key=lambda kv: -len(kv[1]))]
        if self.missed:
            out.append(f"(+{self.missed:,} errors not sampled: more than 500 between two samples)")
        return out

    def with_errno(self, errnos: set[int], n: int = 10) -> list[str]:
        got = []
        for line in self.lines:
            try:
                if int(json.loads(line)["errno"]) in errnos:
                    got.append(cut(line))
            except (ValueError, KeyError, TypeError):
                pass
        return got[:n]


def errno_name(e: int) -> str:
    return f"{e} ({errno.errorcode.get(e, '?')})"


# -- tables ---------------------------------------------------------------------------------


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]],
          notes: Sequence[str] = (), keep: bool = True) -> str:
    """A plain-text table (Markdown pipe syntax), printed now and (``keep``) repeated in
    the terminal summary at the end of the run."""
    cells = [[str(c) for c in header]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [f"### {title}", "", line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    if notes:
        out += [""] + [f"  {n}" for n in notes]
    text = "\n".join(out) + "\n"
    print("\n" + text, flush=True)
    if keep:
        REPORTS.append(text)
    return text


def fmt(v: object) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "-"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


# -- a process's footprint --------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """What a process holds: resident memory (VmRSS, KiB), open descriptors, threads."""

    rss_kib: int
    fds: int
    threads: int


def footprint(pid: int) -> Footprint:
    """From /proc/PID/status (VmRSS, Threads) and /proc/PID/fd."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return Footprint(int(fields["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")),
                     int(fields["Threads"]))
