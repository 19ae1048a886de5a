"""Fuzz with a model: two mounts of one bucket and a raw NATS client, driven by a
hypothesis state machine, with faults (server stalled, server restarted, mount
killed and mounted again).

The model is the value of each key (``None``: absent). After every step:

* the raw client's ``get`` of every key is what the model allows (right after
  each call that returned 0, too: a ``close()`` that returned 0 put its value
  in NATS);
* each mount's ``cat`` of every key and its listing of the bucket agree with
  the model, within a deadline (remote changes reach a mount through its watch).

Operations through a mount: write (``O_TRUNC`` + write + close), append,
create (with and without ``O_EXCL``), ``truncate``, ``rename`` within the
bucket, ``unlink``, a write to ``FILE@REV`` (current, stale or future REV);
through the raw client: put and delete. A fault rule runs one such operation
while the server is stalled (SIGSTOP) or away (stopped, then started again on
the same port and store), or kills a mount (SIGKILL) with a written handle
open and mounts it again over the dead mount.

Every server and mount here is this test's own, stopped by its PID.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from hvfs.server import EmbeddedServer

from .helpers import Mount, RawNats, wait_for

#: The one switch for "no ambiguous outcomes" (being fixed in parallel). Today a
#: write whose publish was answered ETIMEDOUT (the server stalled, or went away
#: while the request was out) may still land when the server answers again, so a
#: timed-out write leaves the old value OR the new one. Set to False once hvfs
#: guarantees that every failed write left the old value: the model then allows
#: only the old value after any failure.
TIMED_OUT_WRITES_MAY_LAND = True

#: Finding (reported with issue 14): ``: > f`` (open O_TRUNC, nothing written, close) of an
#: existing key returns 0 from close() before anything is published (docs/posix.md, "Shell
#: redirections"); when NATS is away at that moment the deferred publish fails (the empty
#: content goes to .hvfs/conflicts) and the old value stays, although close() said 0. See
#: test_empty_truncate_while_server_away. Fixed for NATS known to be away (close() fails EIO);
#: a stalled server is not known at that close (docs/posix.md), so under a stall the model
#: still lets such a truncation leave the old value.
EMPTY_TRUNCATE_ANSWERED_BY_CLOSE = False

KEYS = ("a", "b", "c", "d")
#: the mounts' --timeout: a stalled server turns into ETIMEDOUT after this long
NATS_TIMEOUT = "1"
#: how long a mount may take to show a change made elsewhere (its watch)
SEE = 5.0
#: the same after a reconnect (watches restart with a fresh snapshot)
SEE_AFTER_OUTAGE = 20.0

Val = bytes | None


# -- the rig: a server, a raw client and two mounts, all ours ---------------------------


@dataclass
class FuzzRig:
    root: Path
    server: EmbeddedServer
    raw: RawNats
    mounts: list[Mount] = field(default_factory=list)
    stalled: bool = False
    tally: Counter[str] = field(default_factory=Counter)
    #: operations that returned 0 while the server was stalled or away (each then
    #: checked like any other: its work must be in NATS)
    fault_successes: list[str] = field(default_factory=list)

    def mount(self, i: int) -> Mount:
        return Mount(self.root / f"m{i}" / "m", self.server.url, "--timeout", NATS_TIMEOUT,
                     "--writer", f"fuzz-{i}")

    def connected(self, m: Mount) -> bool:
        return b'"connected": true' in (m.mountpoint / ".hvfs" / "status").read_bytes()

    def wait_connected(self, timeout: float = SEE_AFTER_OUTAGE) -> None:
        for m in self.mounts:
            wait_for(partial(self.connected, m), timeout, f"{m.mountpoint} connected")

    @contextmanager
    def stall(self) -> Iterator[None]:
        """The server stopped in its tracks (SIGSTOP), continued (SIGCONT) on the way out."""
        assert self.server.proc is not None
        pid = self.server.proc.pid
        os.kill(pid, signal.SIGSTOP)
        self.stalled = True
        try:
            # kill() only queues the signal: the server may answer for a moment more
            wait_for(lambda: all_stopped(pid), SEE, f"nats-server {pid} stopped")
            yield
        finally:
            os.kill(pid, signal.SIGCONT)
            self.stalled = False

    def server_down(self) -> int:
        """Stop the server (SIGTERM, by PID); its port, to start it again there."""
        self.raw.close()
        port = self.server.port
        self.server.stop()
        return port

    def server_up(self, port: int) -> None:
        self.server = EmbeddedServer(self.server.store_dir, port=port)
        self.server.start()
        self.raw = RawNats(self.server.url)

    def kill_mount(self, i: int) -> None:
        m = self.mounts[i]
        assert m.proc is not None
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(10)
        m.proc = None  # dead: the next mount on this path detaches it (tests/test_crash.py)

    def remount(self, i: int) -> None:
        self.mounts[i] = self.mount(i).start()

    def heal(self) -> None:
        """Whatever an earlier (failed) example left: server running, every mount alive."""
        if self.stalled and self.server.proc is not None:
            os.kill(self.server.proc.pid, signal.SIGCONT)
            self.stalled = False
        if self.server.proc is None or self.server.proc.poll() is not None:
            self.server_up(self.server.port)
        for i, m in enumerate(self.mounts):
            if m.proc is None or m.proc.poll() is not None:
                self.remount(i)
        self.wait_connected()

    def stop(self) -> None:
        try:
            if self.stalled and self.server.proc is not None:
                os.kill(self.server.proc.pid, signal.SIGCONT)
            for m in self.mounts:
                m.stop()  # also detaches a killed mount nobody replaced
        finally:
            self.raw.close()
            self.server.stop()


def all_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (state T in /proc/PID/task/TID/stat)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] != "T":
                return False
    return True


@contextmanager
def fuzz_rig(root: Path) -> Iterator[FuzzRig]:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")
    server = EmbeddedServer(root / "nats")
    server.start()
    rig = FuzzRig(root, server, RawNats(server.url))
    try:
        for i in range(2):
            rig.mounts.append(rig.mount(i))
            rig.mounts[i].start()
        yield rig
    finally:
        rig.stop()


# -- operations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation through a mount. ``kind`` names it; the fields it does not use are unset."""

    kind: str  # write append create create_excl truncate rename unlink rev_write read
    key: str
    data: bytes = b""
    size: int = 0
    dest: str = ""
    rev: str = "current"  # rev_write: current, stale, future

    def __str__(self) -> str:
        extra = {"write": f" {self.data[:16]!r}", "append": f" {self.data[:16]!r}",
                 "rev_write": f"@{self.rev} {self.data[:16]!r}", "truncate": f" {self.size}",
                 "rename": f" -> {self.dest}"}.get(self.kind, "")
        return f"{self.kind} {self.key}{extra}"


def outcome(op: Op, model: dict[str, Val], current_rev: int | None, rev: int) -> tuple[set[int], dict[str, Val]]:
    """What ``op`` must do from ``model``: the errnos it must fail with (empty: must succeed)
    and, on success, the keys it changes."""
    old = model[op.key]
    k = op.kind
    if k == "write":
        return set(), {op.key: op.data}
    if k == "append":
        return set(), {op.key: (old or b"") + op.data}
    if k == "create":
        return set(), {op.key: b"" if old is None else old}
    if k == "create_excl":
        return ({errno.EEXIST}, {}) if old is not None else (set(), {op.key: b""})
    if k == "truncate":
        if old is None:
            return {errno.ENOENT}, {}
        return set(), {op.key: old[:op.size].ljust(op.size, b"\0")}
    if k == "rename":
        if old is None:
            return {errno.ENOENT}, {}
        return set(), {op.key: None, op.dest: old}
    if k == "unlink":
        return ({errno.ENOENT}, {}) if old is None else (set(), {op.key: None})
    if k == "rev_write":
        if old is None:
            return {errno.ESTALE, errno.ENOENT}, {}
        if rev != current_rev:
            return {errno.ESTALE}, {}
        return set(), {op.key: op.data}
    if k == "read":
        return ({errno.ENOENT}, {}) if old is None else (set(), {})
    raise AssertionError(f"unknown op {k}")


def run_op(path: Callable[[str], Path], op: Op, rev: int) -> tuple[int, bytes | None]:
    """Do ``op`` with real syscalls; (0 or the errno it failed with, what a read read)."""
    p = path(op.key)
    try:
        if op.kind in ("write", "append", "rev_write", "create", "create_excl"):
            flags = os.O_WRONLY | os.O_CREAT | {
                "write": os.O_TRUNC, "append": os.O_APPEND, "rev_write": os.O_TRUNC,
                "create": 0, "create_excl": os.O_EXCL}[op.kind]
            target = p.with_name(f"{p.name}@{rev}") if op.kind == "rev_write" else p
            fd = os.open(target, flags, 0o644)
            try:
                if op.data:
                    assert os.write(fd, op.data) == len(op.data)
            finally:
                os.close(fd)  # the publish: its errno is the write's
        elif op.kind == "truncate":
            os.truncate(p, op.size)
        elif op.kind == "rename":
            os.rename(p, path(op.dest))
        elif op.kind == "unlink":
            os.unlink(p)
        elif op.kind == "read":
            return 0, p.read_bytes()
        else:
            raise AssertionError(f"unknown op {op.kind}")
    except OSError as e:
        return e.errno or -1, None
    return 0, None


keys = st.sampled_from(KEYS)
datas = st.one_of(
    st.binary(max_size=48),
    st.builds(lambda n, b: b * n, st.integers(100, 3000), st.binary(min_size=1, max_size=7)),
)
mount_ix = st.integers(0, 1)
#: which REV a FILE@REV write names: mostly the current one (the others are ESTALE)
revs = st.sampled_from(["current", "current", "current", "stale", "future"])


@st.composite
def ops(draw: st.DrawFn, reads: bool = False) -> Op:
    # repeated names weigh more: writes are what may be lost
    kinds = ["write", "write", "write", "append", "append", "create", "create_excl", "truncate",
             "truncate", "rename", "rename", "unlink", "rev_write", "rev_write"]
    kind = draw(st.sampled_from(kinds + (["read"] if reads else [])))
    key = draw(keys)
    if kind in ("write", "append"):
        return Op(kind, key, data=draw(datas))
    if kind == "rev_write":
        return Op(kind, key, data=draw(datas), rev=draw(revs))
    if kind == "truncate":
        return Op(kind, key, size=draw(st.sampled_from([0, 1, 5, 40, 200])))
    if kind == "rename":
        return Op(kind, key, dest=draw(keys.filter(lambda d: d != key)))
    return Op(kind, key)


def holds(p: Path, value: bytes) -> bool:
    return p.read_bytes() == value


def short(values: dict[str, Val]) -> dict[str, str]:
    return {k: "absent" if v is None else f"{len(v)}B {v[:8]!r}" for k, v in values.items()}


def empty_truncate(op: Op) -> bool:
    """``: > f``: O_TRUNC and nothing written; published just after close() returns."""
    return op.kind == "write" and not op.data


def fault_errnos() -> set[int]:
    return {errno.EIO, errno.ETIMEDOUT}


# -- the machine ----------------------------------------------------------------------


class HvfsFuzz(RuleBasedStateMachine):
    """Set ``HvfsFuzz.rig`` before running."""

    rig: FuzzRig
    bucket_ids = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.bucket = ""
        #: each key: every value it may hold (one, except after an ambiguous failure)
        self.model: dict[str, set[Val]] = {k: {None} for k in KEYS}
        #: "no data lost" across keys after a failed rename: (src, dest, value)
        self.renames_out: list[tuple[str, str, bytes]] = []
        #: keys a failed operation may or may not have changed: their old value
        self.ambiguous: dict[str, Val] = {}
        self.ambiguous_why: dict[str, str] = {}
        #: the deadline of the next check (longer after an outage)
        self.see = SEE

    # -- helpers ----

    @property
    def raw(self) -> RawNats:
        return self.rig.raw

    def path(self, i: int) -> Callable[[str], Path]:
        m = self.rig.mounts[i]
        return lambda key: m.path("kv", self.bucket, key)

    def value(self, key: str) -> Val:
        [v] = self.model[key]  # settled by the last check
        return v

    def current_rev(self, key: str) -> int | None:
        try:
            return int(self.raw.get(self.bucket, key).revision)
        except Exception:  # KeyNotFoundError, also for a deleted key
            return None

    def pick_rev(self, op: Op) -> tuple[int | None, int]:
        cur = self.current_rev(op.key)
        base = cur or 1
        if op.rev == "current":
            return cur, base
        if op.rev == "stale" and base > 1:
            return cur, base - 1
        return cur, base + 1000

    def note(self, what: str) -> None:
        self.rig.tally[what] += 1

    def perform(self, i: int, op: Op, fault: str | None = None,
                around: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        """Do ``op`` through mount ``i`` (inside ``around``) and move the model. ``fault``:
        the server is stalled or away, so EIO/ETIMEDOUT are allowed too (and leave the old
        value, or, for ETIMEDOUT while TIMED_OUT_WRITES_MAY_LAND, old or new)."""
        before = {k: self.value(k) for k in KEYS}
        cur, rev = self.pick_rev(op) if op.kind == "rev_write" else (None, 0)
        must_fail, changes = outcome(op, before, cur, rev)
        with around():
            err, got = run_op(self.path(i), op, rev)
        self.note(f"{fault or 'op'} {op.kind} -> {errno.errorcode.get(err, err) if err else 'ok'}")
        where = f"{op} through mount {i}" + (f" ({fault})" if fault else "")
        if err == 0 and fault and op.kind != "read":
            self.rig.fault_successes.append(f"{where}: before {short(before)}")
        if err == 0:
            assert not must_fail, f"{where}: succeeded, expected {sorted(errno.errorcode[e] for e in must_fail)}"
            if op.kind == "read":
                assert got == before[op.key], f"{where}: read {got!r}, model {before[op.key]!r}"
            if (fault and empty_truncate(op) and before[op.key] not in (None, b"")
                    and not EMPTY_TRUNCATE_ANSWERED_BY_CLOSE):
                self.maybe_landed(op, before, changes, f"`: > f` returned 0 ({fault})")
                return
            for k, v in changes.items():
                self.model[k] = {v}
            self.acknowledged(op, changes, where)
            return
        if err in must_fail:
            return
        assert fault and err in fault_errnos(), (
            f"{where}: {errno.errorcode.get(err, err)}, expected "
            + (" or ".join(errno.errorcode[e] for e in must_fail) if must_fail else "success"))
        if must_fail:
            return  # it would have failed anyway: nothing to land
        why = f"{op.kind} failed {errno.errorcode[err]} ({fault})"
        if err == errno.ETIMEDOUT and TIMED_OUT_WRITES_MAY_LAND:
            self.maybe_landed(op, before, changes, why)
        elif op.kind == "rename":
            # Not atomic (docs/posix.md): the put under the new name may have been
            # acknowledged before the delete of the old one failed.
            self.maybe_landed(op, before, changes, why)

    def maybe_landed(self, op: Op, before: dict[str, Val], changes: dict[str, Val], why: str) -> None:
        for k, v in changes.items():
            self.model[k] = {before[k], v}
            self.ambiguous[k] = before[k]
            self.ambiguous_why[k] = why
        if op.kind in ("write", "append", "create", "rev_write") and before[op.key] is None:
            self.model[op.key].add(b"")  # the create at open() may land without the content
        if op.kind == "rename":
            old = before[op.key]
            assert old is not None
            self.renames_out.append((op.key, op.dest, old))

    def acknowledged(self, op: Op, changes: dict[str, Val], where: str) -> None:
        """A call that returned 0 put its work in NATS: the raw client sees it now."""
        for k, v in changes.items():
            if empty_truncate(op):
                # `: > f`: published by the handle's last close, just after close()
                # returned (docs/posix.md, "Shell redirections"); the check waits for it.
                continue
            got = self.raw.value(self.bucket, k)
            assert got == v, f"{where} returned 0, but NATS holds {got!r} for {k} (model {v!r})"

    def sync(self, i: int) -> None:
        """A request through mount ``i``'s connection: NATS handles a connection's messages
        in order, so a publish this mount sent before (e.g. one that timed out while the
        server was stalled) is decided before the check reads."""
        with suppress(OSError):
            self.path(i)(KEYS[0]).read_bytes()

    # -- set-up ----

    @initialize()
    def new_bucket(self) -> None:
        self.rig.heal()
        self.bucket = f"fz{next(self.bucket_ids)}"
        self.raw.create_bucket(self.bucket, history=10)
        for m in self.rig.mounts:
            wait_for(m.path("kv", self.bucket).is_dir, SEE, f"bucket {self.bucket} in {m.mountpoint}")

    # -- rules: operations ----

    @rule(i=mount_ix, op=ops())
    def mount_op(self, i: int, op: Op) -> None:
        self.perform(i, op)

    @rule(i=mount_ix, key=keys, data=datas)
    def write(self, i: int, key: str, data: bytes) -> None:
        self.perform(i, Op("write", key, data=data))

    @rule(i=mount_ix, n=st.integers(0, len(KEYS) - 1), data=datas, rev=revs)
    def rev_write(self, i: int, n: int, data: bytes, rev: str) -> None:
        """FILE@REV of a key that exists, if one does (``mount_op`` tries absent ones too)."""
        present = [k for k in KEYS if self.value(k) is not None] or list(KEYS)
        self.perform(i, Op("rev_write", present[n % len(present)], data=data, rev=rev))

    @rule(key=keys, data=datas, put=st.sampled_from([True, True, False]))
    def remote_change(self, key: str, data: bytes, put: bool) -> None:
        """Another NATS client puts or deletes the key."""
        if put:
            self.raw.put(self.bucket, key, data)
        else:
            self.raw.delete(self.bucket, key)
        self.model[key] = {data if put else None}
        self.note("remote put" if put else "remote delete")

    # -- rules: faults ----

    @rule(i=mount_ix, fault=st.sampled_from(["stall", "stall", "restart", "restart after notice",
                                              "kill", "kill with a handle open"]),
          op=ops(reads=True), data=datas)
    def fault(self, i: int, fault: str, op: Op, data: bytes) -> None:
        """One fault (one rule, so that faults are a fifth of the steps, not half):

        * stall: one operation through mount ``i`` while the server is stopped in its
          tracks (SIGSTOP), then SIGCONT;
        * restart: the server stopped (SIGTERM) and started again on its port and
          store, one operation while it is away (before or after the mount noticed);
        * kill: SIGKILL of mount ``i`` (perhaps with a written, unclosed handle: none
          of it may land) and a new ``hvfs mount`` over the dead one.
        """
        if fault == "stall":
            self.perform(i, op, fault="server stalled", around=self.rig.stall)
        elif fault.startswith("restart"):
            self.perform(i, op, fault="server away",
                         around=lambda: self.server_away(i, noticed=fault.endswith("notice")))
        else:
            self.mount_killed(i, op.key, data, open_handle=fault.endswith("open"))
        self.rig.wait_connected()
        self.sync(i)
        self.see = SEE_AFTER_OUTAGE

    @contextmanager
    def server_away(self, i: int, noticed: bool) -> Iterator[None]:
        port = self.rig.server_down()
        try:
            if noticed:
                wait_for(lambda: not self.rig.connected(self.rig.mounts[i]), SEE, "mount to notice")
            yield
        finally:
            self.rig.server_up(port)

    def mount_killed(self, i: int, key: str, data: bytes, open_handle: bool) -> None:
        fd = -1
        if open_handle:
            fd = os.open(self.path(i)(key), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            if self.value(key) is None:
                self.model[key] = {b""}  # created at open()
            if data:
                os.write(fd, data)
        self.rig.kill_mount(i)
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as e:
                self.note(f"close on a killed mount -> {errno.errorcode.get(e.errno or 0)}")
            else:
                # close() said 0: then the content must be in NATS.
                self.note("close on a killed mount -> ok")
                self.model[key] = {data}
                self.acknowledged(Op("write", key, data=data), {key: data}, "close() on a killed mount")
        self.rig.remount(i)
        self.note("mount killed")

    # -- the check ----

    @invariant()
    def all_sides_agree(self) -> None:
        if not self.bucket:
            return
        see, self.see = self.see, SEE

        def raw_view() -> dict[str, Val]:
            return {k: self.raw.value(self.bucket, k) for k in KEYS}

        # NATS first: each key within what the model allows (polled only for the
        # moment a `: > f` publish or a late timed-out publish takes).
        wait_for(lambda: all(v in self.model[k] for k, v in raw_view().items()), see,
                 f"NATS to hold what the model allows: {self.model}")
        now = raw_view()
        for k, v in now.items():
            assert v in self.model[k], f"NATS holds {v!r} for {k}; the model allows {self.model[k]}"
            if k in self.ambiguous:
                self.note(f"{self.ambiguous_why[k]}: "
                          + ("old value kept" if v == self.ambiguous[k] else "LANDED later"))
            self.model[k] = {v}
        self.ambiguous.clear()
        for src, dest, old in self.renames_out:
            assert now[src] == old or now[dest] == old, (
                f"a failed rename {src} -> {dest} lost {old!r}: {src}={now[src]!r}, {dest}={now[dest]!r}")
        self.renames_out.clear()

        want = {k: self.value(k) for k in KEYS}
        names = sorted(k for k, v in want.items() if v is not None)
        for i, m in enumerate(self.rig.mounts):
            path = self.path(i)

            def view(path: Callable[[str], Path] = path, m: Mount = m) -> bool:
                got: dict[str, Val] = {}
                for k in KEYS:
                    try:
                        got[k] = path(k).read_bytes()
                    except FileNotFoundError:
                        got[k] = None
                return got == want and sorted(os.listdir(m.path("kv", self.bucket))) == names

            wait_for(view, see, f"mount {i} to show {want} (listing {names})")


def run_fuzz(rig: FuzzRig, s: settings) -> float:
    HvfsFuzz.rig = rig
    t0 = time.monotonic()
    try:
        run_state_machine_as_test(HvfsFuzz, settings=s)
    finally:
        seconds = time.monotonic() - t0
        print(f"\nfuzz: {seconds:.0f}s; steps by outcome:")
        for what, n in sorted(rig.tally.items()):
            print(f"  {n:5d}  {what}")
        if rig.fault_successes:
            print("operations that returned 0 while the server was stalled or away:")
            for line in rig.fault_successes:
                print(f"  {line}")
    return seconds


#: CI: about a minute on 2 cores. derandomize: the same examples every run.
CI_SETTINGS = settings(
    max_examples=13,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # shrinking a failure can take many minutes
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@pytest.mark.timeout(600)
def test_fuzz_two_mounts_and_raw(tmp_path: Path) -> None:
    with fuzz_rig(tmp_path) as rig:
        run_fuzz(rig, CI_SETTINGS)


def test_empty_truncate_while_server_away(tmp_path: Path) -> None:
    """Finding of issue 14's fuzz, fixed: `: > f` (O_TRUNC, nothing written) is published after
    close() returns; with NATS known to be away, close() fails EIO rather than answer 0."""
    with fuzz_rig(tmp_path) as rig:
        rig.raw.create_bucket("b", history=10)
        rig.raw.put("b", "k", b"old value")
        p = rig.mounts[0].path("kv", "b", "k")
        wait_for(lambda: p.read_bytes() == b"old value", SEE, "the key on the mount")
        port = rig.server_down()
        try:
            fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
            try:
                os.close(fd)
            except OSError:
                return  # refused: nothing was promised
        finally:
            rig.server_up(port)
        rig.wait_connected()
        assert rig.raw.value("b", "k") == b"", "close() returned 0, so NATS must hold the empty value"


def test_reader_beside_a_truncating_writer(tmp_path: Path) -> None:
    """Finding of issue 14's load test: a reader on the writer's mount read an empty file in
    ~9 % of its reads (page-cache reads clipped at the size 0 the kernel sets at the writer's
    O_TRUNC open). Fixed for readers that open while the writer has the file open (they read
    with direct_io); what is left is the rare race docs/consistency.md names (a reader opened
    before the writer's O_TRUNC: 0.2-0.3 % of reads here). Other mounts: never."""
    with fuzz_rig(tmp_path) as rig:
        rig.raw.create_bucket("b", history=1)
        rig.raw.put("b", "k", b"v" * 100)
        paths = [m.path("kv", "b", "k") for m in rig.mounts]
        for p in paths:
            wait_for(partial(holds, p, b"v" * 100), SEE, "the key on both mounts")
        stop = threading.Event()
        reads: list[list[bytes]] = [[], []]

        def write() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                fd = os.open(paths[0], os.O_WRONLY | os.O_TRUNC)
                try:
                    os.write(fd, b"w%d-" % i * 20)
                finally:
                    os.close(fd)

        def read(i: int) -> None:
            while not stop.is_set():
                reads[i].append(paths[i].read_bytes())

        threads = [threading.Thread(target=write), threading.Thread(target=read, args=(0,)),
                   threading.Thread(target=read, args=(1,))]
        for t in threads:
            t.start()
        try:
            stop.wait(3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert reads[0] and reads[1]
        assert b"" not in reads[1], "another mount read an empty value"
        empty = reads[0].count(b"")
        assert empty <= max(3, len(reads[0]) // 50), \
            f"{empty} of {len(reads[0])} reads on the writer's mount were empty"
