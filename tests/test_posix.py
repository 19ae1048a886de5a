"""The file contract of docs/posix.md, row by row, on real mounts with real syscalls.

Each test states one promise of docs/posix.md (or a few that belong together)
and nothing else: the errno a call returns, what NATS holds when the call has
returned, what another mount sees. ``raw`` plays "another NATS client" and is
the judge of what is in NATS. Nothing sleeps to synchronise: what the contract
makes immediate is checked at once; what is asynchronous by nature (a watch
delivering to the other mount) is awaited with ``wait_for`` and a deadline.
Every loop that could spin has an overall deadline and fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import mmap
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hvfs.server import EmbeddedServer

from .helpers import Inotify, Mount, RawNats, history, wait_for

_names = itertools.count()


# -- helpers ------------------------------------------------------------------------


def sh(script: str, cwd: str | Path | None = None, check: bool = True,
       timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash; fail with its stderr when ``check`` and it exits non-zero."""
    p = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"bash -c {script!r} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def new_bucket(raw: RawNats, **kw: Any) -> str:
    name = f"p{os.getpid()}_{next(_names)}"
    raw.create_bucket(name, **kw)
    return name


def kvdir(mnt: Mount, bucket: str) -> Path:
    return mnt.path("kv", bucket)


def seed(raw: RawNats, bucket: str, key: str, value: bytes, *mounts: Mount) -> int:
    """Put ``key`` (a top-level key) with the raw client; return its revision once each mount shows it."""
    rev = raw.put(bucket, key, value)
    for m in mounts:
        p = kvdir(m, bucket) / key
        wait_for(p.exists, what=f"{p} on {m.mountpoint}")
    return rev


def rev_xattr(p: Path | str | int) -> int:
    return int(os.getxattr(p, "user.hvfs.revision"))


def conflicts(mnt: Mount) -> list[dict[str, Any]]:
    text = mnt.path(".hvfs", "conflicts", "index").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def conflict_bytes(mnt: Mount, bucket: str, key: str) -> list[bytes]:
    """The kept bytes of every conflict ``mnt`` holds for ``bucket``/``key``."""
    cdir = mnt.path(".hvfs", "conflicts")
    return [(cdir / c["file"]).read_bytes() for c in conflicts(mnt) if c["bucket"] == bucket and c["key"] == key]


def error_lines(mnt: Mount) -> list[dict[str, Any]]:
    text = mnt.path(".hvfs", "errors").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def quiet(mnt: Mount) -> None:
    """Wait until ``mnt`` has no open handle: every release the kernel sends has been handled."""
    wait_for(lambda: json.loads(mnt.path(".hvfs", "status").read_text())["open_handles"] == 0,
             what=f"no open handles on {mnt.mountpoint}")


def in_threads(*fns: Callable[[], Any], timeout: float = 30.0) -> list[Any]:
    """Run ``fns`` in threads; their results, or the first exception; fail past ``timeout``."""
    results: list[Any] = [None] * len(fns)
    failures: list[BaseException] = []

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: B036 - reported to the test below
            failures.append(e)

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout}s"
    if failures:
        raise failures[0]
    return results


def start_bash(script: str, *args: str) -> subprocess.Popen[str]:
    """``bash -c script bash args...`` in its own process group (so it can be killed whole)."""
    return subprocess.Popen(["bash", "-c", script, "bash", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    """Wait for every process with one overall deadline; kill (by process group) what is left."""
    deadline = time.monotonic() + timeout
    out: list[tuple[int, str, str]] = []
    try:
        for p in procs:
            try:
                o, e = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"processes still running after {timeout}s") from None
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
    return out


class Fd:
    """An ``os.open`` descriptor that a test closes itself (to check close()),
    and that is closed anyway, exactly once, when the test fails first."""

    def __init__(self, path: Path | str, flags: int, mode: int = 0o644) -> None:
        self.fd = os.open(path, flags, mode)
        self.closed = False

    def close(self) -> None:
        self.closed = True
        os.close(self.fd)

    def __enter__(self) -> Fd:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                self.close()


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


# -- open(O_CREAT) of a new name: the key exists when open() returns -----------------------


def test_create_close_unlink_in_two_threads_leaves_nothing(mnt, raw, bucket):
    """A deleted file never comes back: create+close then unlink, 100 rounds in two threads."""
    d = kvdir(mnt, bucket)

    def rounds(name: str) -> None:
        p = d / name
        for _ in range(100):
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644))
            os.unlink(p)

    in_threads(lambda: rounds("a"), lambda: rounds("b"), timeout=60)
    assert os.listdir(d) == []
    assert raw.value(bucket, "a") is None
    assert raw.value(bucket, "b") is None
    quiet(mnt)  # every release has been handled: nothing may have landed after close() returned
    assert raw.value(bucket, "a") is None
    assert raw.value(bucket, "b") is None
    assert os.listdir(d) == []
    assert not (d / "a").exists() and not (d / "b").exists()


def test_create_is_in_nats_before_open_returns(mnt, mnt2, raw, bucket):
    d = kvdir(mnt, bucket)
    with Fd(d / "new", os.O_CREAT | os.O_WRONLY | os.O_TRUNC) as f:
        assert raw.value(bucket, "new") == b"", "the key must exist, empty, once open() returned"
        assert (kvdir(mnt2, bucket) / "new").exists(), "a file exists for everyone once it is open"
        f.close()
    assert raw.value(bucket, "new") == b""
    assert [(r.value, r.operation) for r in history(raw, bucket, "new")] == [(b"", None)]


def test_create_of_a_name_just_created_elsewhere_opens_that_one(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    raw.put(bucket, "k", b"theirs")  # no wait: the mount may not have heard of it
    with Fd(d / "k", os.O_CREAT | os.O_WRONLY) as f:
        f.close()
    assert raw.value(bucket, "k") == b"theirs"
    assert len(history(raw, bucket, "k")) == 1


@pytest.mark.parametrize("content", [b"", b"content"], ids=["empty", "written"])
def test_rename_right_after_create_close(mnt, raw, bucket, content):
    """No EBUSY: when close() returned the file is in NATS, so it can be renamed at once."""
    d = kvdir(mnt, bucket)
    for i in range(50):
        fd = os.open(d / f"new{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        os.rename(d / f"new{i}", d / f"moved{i}")
        assert raw.value(bucket, f"moved{i}") == content
        assert raw.value(bucket, f"new{i}") is None


def test_rmdir_right_after_create_close_unlink(mnt, raw, bucket):
    """No ENOTEMPTY: the unlinked file is gone from its directory at once."""
    d = kvdir(mnt, bucket)
    for i in range(20):
        sub = d / f"sub{i}"
        os.mkdir(sub)
        os.close(os.open(sub / "f", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644))
        os.unlink(sub / "f")
        os.rmdir(sub)
        assert not sub.exists()
        assert raw.value(bucket, f"sub{i}.f") is None
    assert os.listdir(d) == []


# -- a create NATS refuses: EACCES, and the name stays absent ------------------------------


@pytest.fixture
def denied(tmp_path) -> Iterator[tuple[Mount, RawNats]]:
    """A private server where user ``agent`` may not publish to bucket ``ro``; a mount as agent."""
    conf = tmp_path / "auth.conf"
    conf.write_text(
        "authorization { users = [\n"
        "  {user: admin, password: pw}\n"
        "  {user: agent, password: pw, permissions: {publish: {deny: [\"$KV.ro.>\"]}}}\n"
        "] }\n")
    srv = EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(conf)])
    srv.start()
    admin: RawNats | None = None
    m: Mount | None = None
    try:
        admin = RawNats(srv.url.replace("nats://", "nats://admin:pw@"))
        admin.create_bucket("ro")
        m = Mount(tmp_path / "m", srv.url, "--user", "agent", "--password", "pw").start()
        yield m, admin
    finally:
        if m is not None:
            m.stop()
        if admin is not None:
            admin.close()
        srv.stop()


def _create_in_denied_bucket(p: Path, how: str) -> OSError | None:
    """One create of ``p``: the error it ended with, None if every call returned success."""
    if how == "shell":  # a shell ignores close(): only an open() that fails can tell it
        r = sh(f"echo x > {p.name}", cwd=p.parent, check=False)
        return OSError(errno.EACCES, r.stderr) if "Permission denied" in r.stderr else \
            (None if r.returncode == 0 else OSError(0, r.stderr))
    err = None
    try:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    except OSError as e:
        return e
    if how == "write":
        try:
            os.write(fd, b"mine")
        except OSError as e:
            err = e
    try:
        os.close(fd)
    except OSError as e:
        err = err or e
    return err


@pytest.mark.parametrize("how", ["write", "no-write", "shell"])
def test_denied_create_is_eacces_every_time(denied, how):
    """open(O_CREAT|O_TRUNC) [+ write] + close of a new name NATS refuses: EACCES, never success."""
    m, admin = denied
    d = m.path("kv", "ro")
    assert d.is_dir()
    for i in range(50 if how != "shell" else 10):
        name = "new" if i % 2 else f"new{i}"  # the same new name again and again, and fresh ones
        err = _create_in_denied_bucket(d / name, how)
        assert err is not None, f"round {i}: create of {name} in a bucket NATS refuses returned success"
        assert err.errno == errno.EACCES, f"round {i}: {err}"
        assert admin.value("ro", name) is None, f"round {i}: {name} is in NATS"
    for name in ["new", "new0", "new8"]:
        with pytest.raises(OSError) as ei:
            os.open(d / name, os.O_RDONLY)
        assert ei.value.errno == errno.ENOENT, ei.value
        assert admin.value("ro", name) is None
    assert os.listdir(d) == []


# -- read-modify-write without losing updates (the recipes of docs/posix.md) ---------------


SHELL_RECIPE = r'''
cd "$1" || exit 2
for i in $(seq "$2"); do
until
  rev=$(getfattr --only-values -n user.hvfs.revision counter) &&   # latest revision, fresh
  n=$(cat "counter@$rev") &&                                        # exactly that revision
  echo $((n + 1)) | tee "counter@$rev" >/dev/null 2>&1           # CAS on it: fails if counter moved
do :; done
done
'''


def test_shell_recipe_counts_every_increment(mnt, mnt2, raw, bucket):
    seed(raw, bucket, "counter", b"0", mnt, mnt2)
    procs = [start_bash(SHELL_RECIPE, str(kvdir(m, bucket)), "15") for m in (mnt, mnt, mnt2, mnt2)]
    for rc, _out, err in finish(procs, timeout=60):
        assert rc == 0, err[-2000:]
    assert raw.value(bucket, "counter") == b"60\n"
    assert os.listdir(kvdir(mnt, bucket)) == ["counter"]


def python_recipe(path: Path, times: int, deadline: float) -> None:
    """The program recipe of docs/posix.md, ``times`` increments, bounded by ``deadline``."""
    for _ in range(times):
        while True:
            assert time.monotonic() < deadline, f"{path}: increments still failing at the deadline"
            fd = os.open(path, os.O_RDWR)
            try:
                n = int(os.read(fd, 64) or b"0")
                os.ftruncate(fd, 0)
                os.pwrite(fd, b"%d" % (n + 1), 0)
            except BaseException:
                os.close(fd)
                raise
            try:
                os.close(fd)  # ESTALE: another writer got in first; read again
                break
            except OSError as e:
                if e.errno != errno.ESTALE:
                    raise


def test_python_recipe_counts_every_increment(mnt, mnt2, raw, bucket):
    seed(raw, bucket, "counter", b"0", mnt, mnt2)
    deadline = time.monotonic() + 40
    paths = [kvdir(m, bucket) / "counter" for m in (mnt, mnt, mnt2, mnt2)]
    in_threads(*[lambda p=p: python_recipe(p, 25, deadline) for p in paths], timeout=45)
    assert raw.value(bucket, "counter") == b"100"


# -- FILE@REV is immutable ------------------------------------------------------------------


REV_LOOP = r'''
cd "$1" || exit 2
for i in $(seq "$3"); do
  rev=$(getfattr --only-values -n user.hvfs.revision f) || { echo "GETFATTR-FAILED"; continue; }
  v=$(cat "f@$rev") || { echo "CAT-FAILED $rev"; continue; }
  echo "READ $rev $v"
  printf 'p%s-%s' "$2" "$i" | tee "f@$rev" >/dev/null 2>&1 && echo "WROTE p$2-$i"
  v=$(cat "f@$rev") || { echo "CAT-FAILED $rev"; continue; }   # once more, after writing it
  echo "READ $rev $v"
done
exit 0
'''


def test_file_at_rev_reads_exactly_that_revision_under_writers(mnt, raw):
    b = new_bucket(raw, history=64)  # 1 + 4 x 12 revisions at most: all kept
    seed(raw, b, "f", b"seed", mnt)
    procs = [start_bash(REV_LOOP, str(kvdir(mnt, b)), str(i), "12") for i in range(4)]
    results = finish(procs, timeout=40)
    values = {r.revision: r.value for r in history(raw, b, "f") if r.operation is None}
    reads: list[tuple[int, bytes]] = []
    wrote: list[bytes] = []
    for rc, out, err in results:
        assert rc == 0, err[-2000:]
        for line in out.splitlines():
            what, _, rest = line.partition(" ")
            if what == "READ":
                rev, _, content = rest.partition(" ")
                reads.append((int(rev), content.encode()))
            elif what == "WROTE":
                wrote.append(rest.encode())
            else:
                raise AssertionError(f"{line!r} (stderr: {err[-1000:]})")
    assert reads and wrote
    for rev, content in reads:
        assert content, f"f@{rev} read 0 bytes; revision {rev} holds {values.get(rev)!r}"
        assert content == values.get(rev), f"f@{rev} read {content!r}; revision {rev} holds {values.get(rev)!r}"
    assert sorted(values.values()) == sorted([b"seed", *wrote])


# -- EFBIG: the handle is refused for good, nothing lands, the bytes are kept ------------------


@pytest.fixture
def small_bucket(raw: RawNats) -> str:
    return new_bucket(raw, max_value_size=1024)


def test_efbig_refuses_the_handle_for_good(mnt, raw, small_bucket):
    b = small_bucket
    seed(raw, b, "f", b"old value", mnt)
    with Fd(kvdir(mnt, b) / "f", os.O_WRONLY) as f:
        with pytest.raises(OSError) as ei:
            os.write(f.fd, b"B" * 2000)
        assert ei.value.errno == errno.EFBIG, ei.value
        with pytest.raises(OSError) as ei:
            os.write(f.fd, b"s")
        assert ei.value.errno == errno.EFBIG, ei.value
        with pytest.raises(OSError) as ei:
            os.fsync(f.fd)
        assert ei.value.errno == errno.EFBIG, ei.value
        with pytest.raises(OSError) as ei:
            f.close()
        assert ei.value.errno == errno.EFBIG, ei.value
    assert raw.value(b, "f") == b"old value"
    assert len(history(raw, b, "f")) == 1
    kept = conflict_bytes(mnt, b, "f")
    assert kept, f"no conflict for {b}/f: {conflicts(mnt)[-3:]}"
    assert any(b"B" * 1999 in k for k in kept), "the refused write's bytes are not kept"
    assert [c for c in conflicts(mnt) if c["bucket"] == b and c["key"] == "f"][-1]["errno"] == errno.EFBIG


def test_one_large_write_over_the_limit_is_efbig_or_short_then_close_efbig(mnt, raw):
    b = new_bucket(raw, max_value_size=200 * 1024)
    seed(raw, b, "f", b"old", mnt)
    data = b"L" * (300 * 1024)
    with Fd(kvdir(mnt, b) / "f", os.O_WRONLY | os.O_TRUNC) as f:
        try:
            n = os.write(f.fd, data)
        except OSError as e:
            assert e.errno == errno.EFBIG, e
        else:
            assert n < len(data), "a write over the bucket's limit was accepted whole"
        with pytest.raises(OSError) as ei:
            f.close()
        assert ei.value.errno == errno.EFBIG, ei.value
    assert raw.value(b, "f") == b"old"
    assert len(history(raw, b, "f")) == 1
    kept = [c["errno"] for c in conflicts(mnt) if c["bucket"] == b and c["key"] == "f"]
    assert kept and set(kept) == {errno.EFBIG}, f"the refused bytes are not kept as an EFBIG conflict: {kept}"


# -- names ----------------------------------------------------------------------------------


def test_lookup_of_a_256_byte_name_is_enametoolong(mnt, raw, bucket):
    with pytest.raises(OSError) as ei:
        os.stat(kvdir(mnt, bucket) / ("n" * 256))
    assert ei.value.errno == errno.ENAMETOOLONG, ei.value


def test_create_of_a_256_byte_name_is_enametoolong(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    with pytest.raises(OSError) as ei:
        os.open(d / ("c" * 256), os.O_CREAT | os.O_WRONLY, 0o644)
    assert ei.value.errno == errno.ENAMETOOLONG, ei.value
    assert os.listdir(d) == []


def test_rename_to_a_256_byte_name_is_enametoolong(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    seed(raw, bucket, "f", b"v", mnt)
    with pytest.raises(OSError) as ei:
        os.rename(d / "f", d / ("r" * 256))
    assert ei.value.errno == errno.ENAMETOOLONG, ei.value
    assert raw.value(bucket, "f") == b"v"
    assert os.listdir(d) == ["f"]


def test_mkdir_of_a_256_byte_name_is_enametoolong(mnt, raw, bucket):
    with pytest.raises(OSError) as ei:
        os.mkdir(kvdir(mnt, bucket) / ("m" * 256))
    assert ei.value.errno == errno.ENAMETOOLONG, ei.value


def test_mkdir_of_a_256_byte_bucket_name_is_enametoolong(mnt, raw):
    name = "b" * 256
    try:
        with pytest.raises(OSError) as ei:
            os.mkdir(mnt.path("kv", name))
        assert ei.value.errno == errno.ENAMETOOLONG, ei.value
    finally:
        with contextlib.suppress(Exception):
            raw.run(raw.js.delete_key_value(name))


def test_255_byte_names_work(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    name, other, sub = "n" * 255, "r" * 255, "m" * 255
    (d / name).write_bytes(b"long")
    assert raw.value(bucket, name) == b"long"
    assert os.stat(d / name).st_size == 4
    os.rename(d / name, d / other)
    assert raw.value(bucket, other) == b"long" and raw.value(bucket, name) is None
    os.mkdir(d / sub)
    assert sorted(os.listdir(d)) == sorted([other, sub])


# -- ftruncate moves mtime and ctime at once ------------------------------------------------------


def test_ftruncate_moves_mtime_and_ctime(mnt, raw, bucket):
    seed(raw, bucket, "f", b"some content", mnt)
    with Fd(kvdir(mnt, bucket) / "f", os.O_RDWR) as f:
        before = os.fstat(f.fd)
        t = time.time_ns()
        wait_for(lambda: time.time_ns() > t + 10_000_000, what="10 ms to pass")
        os.ftruncate(f.fd, 4)
        after = os.fstat(f.fd)
        assert after.st_size == 4
        assert after.st_mtime_ns > before.st_mtime_ns, (before.st_mtime_ns, after.st_mtime_ns)
        assert after.st_ctime_ns > before.st_ctime_ns, (before.st_ctime_ns, after.st_ctime_ns)
        f.close()
    assert raw.value(bucket, "f") == b"some"


# -- touch and utimensat ----------------------------------------------------------------------


def test_touch_of_an_existing_key_is_one_revision_same_value(mnt, raw, bucket):
    r1 = seed(raw, bucket, "f", b"v", mnt)
    sh("touch f", cwd=kvdir(mnt, bucket))
    h = history(raw, bucket, "f")
    assert [(r.value, r.operation) for r in h] == [(b"v", None), (b"v", None)]
    assert h[0].revision == r1


def test_touch_is_a_modify_on_the_other_mount(mnt, mnt2, raw, bucket):
    seed(raw, bucket, "f", b"v", mnt, mnt2)
    other = kvdir(mnt2, bucket)
    w = Inotify(other)
    try:
        sh("touch f", cwd=kvdir(mnt, bucket))
        w.wait("MODIFY", other / "f")
    finally:
        w.stop()


def test_touch_of_a_new_name_is_one_empty_revision(mnt, raw, bucket):
    sh("touch newfile", cwd=kvdir(mnt, bucket))
    assert [(r.value, r.operation) for r in history(raw, bucket, "newfile")] == [(b"", None)]


def test_utime_now_on_a_handle_with_unpublished_changes_adds_nothing(mnt, raw, bucket):
    seed(raw, bucket, "f", b"old", mnt)
    with Fd(kvdir(mnt, bucket) / "f", os.O_WRONLY | os.O_TRUNC) as f:
        os.write(f.fd, b"new")
        os.utime(f.fd)  # futimens(fd, UTIME_NOW)
        f.close()
    assert [r.value for r in history(raw, bucket, "f")] == [b"old", b"new"]


@pytest.mark.parametrize("how", ["touch -d", "os.utime"])
def test_explicit_times_are_accepted_and_not_stored(mnt, raw, bucket, how):
    d = kvdir(mnt, bucket)
    seed(raw, bucket, "f", b"v", mnt)
    if how == "touch -d":
        sh("touch -d 2001-01-01 f", cwd=d)
    else:
        os.utime(d / "f", (1, 1))
    h = history(raw, bucket, "f")
    assert len(h) == 1
    st = os.stat(d / "f")
    assert abs(st.st_mtime - h[0].created.timestamp()) < 1.0, (st.st_mtime, h[0].created)


# -- directories -------------------------------------------------------------------------------


def test_directory_nlink_counts_subdirectories(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    for key in ["d.s1.x", "d.s2.x", "d.s3.x", "d.f1", "d.f2"]:
        raw.put(bucket, key, b"x")
    wait_for(lambda: sorted(os.listdir(d / "d")) == ["f1", "f2", "s1", "s2", "s3"], what="d's entries")
    assert os.stat(d / "d").st_nlink == 2 + 3
    assert os.stat(d).st_nlink == 2 + 1
    assert os.stat(d / "d" / "s1").st_nlink == 2
    assert os.stat(d / "d" / "f1").st_nlink == 1


def test_readdir_lists_dot_and_dotdot(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    seed(raw, bucket, "f", b"x", mnt)
    assert sh("ls -a", cwd=d).stdout.split() == [".", "..", "f"]
    assert os.listdir(d) == ["f"]


# -- rename of directories, and onto directories -------------------------------------------------


@pytest.fixture
def layout(mnt, raw, bucket) -> Path:
    """src/ and full/ (each with a key), empty/ (made here), files f and g."""
    d = kvdir(mnt, bucket)
    for key, value in [("src.a", b"A"), ("full.b", b"B"), ("f", b"F"), ("g", b"G")]:
        raw.put(bucket, key, value)
    wait_for(lambda: sorted(os.listdir(d)) == ["f", "full", "g", "src"], what="the layout")
    os.mkdir(d / "empty")
    return d


def _layout_intact(raw: RawNats, bucket: str, d: Path) -> None:
    assert [raw.value(bucket, k) for k in ["src.a", "full.b", "f", "g"]] == [b"A", b"B", b"F", b"G"]
    assert sorted(os.listdir(d)) == ["empty", "f", "full", "g", "src"]


def test_rename_directory_onto_nonempty_directory_is_enotempty(mnt, raw, bucket, layout):
    with pytest.raises(OSError) as ei:
        os.rename(layout / "src", layout / "full")
    assert ei.value.errno == errno.ENOTEMPTY, ei.value
    _layout_intact(raw, bucket, layout)


@pytest.mark.parametrize("target", ["empty", "newname"])
def test_rename_directory_is_exdev(mnt, raw, bucket, layout, target):
    with pytest.raises(OSError) as ei:
        os.rename(layout / "src", layout / target)
    assert ei.value.errno == errno.EXDEV, ei.value
    _layout_intact(raw, bucket, layout)


def test_rename_directory_onto_file_is_enotdir(mnt, raw, bucket, layout):
    with pytest.raises(OSError) as ei:
        os.rename(layout / "src", layout / "f")
    assert ei.value.errno == errno.ENOTDIR, ei.value
    _layout_intact(raw, bucket, layout)


def test_rename_file_onto_directory_is_eisdir(mnt, raw, bucket, layout):
    with pytest.raises(OSError) as ei:
        os.rename(layout / "f", layout / "full")
    assert ei.value.errno == errno.EISDIR, ei.value
    _layout_intact(raw, bucket, layout)


def test_rename_noreplace_onto_existing_is_eexist(mnt, raw, bucket, layout):
    with pytest.raises(OSError) as ei:
        renameat2(layout / "f", layout / "g", RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST, ei.value
    _layout_intact(raw, bucket, layout)


def test_rename_exchange_is_eopnotsupp(mnt, raw, bucket, layout):
    with pytest.raises(OSError) as ei:
        renameat2(layout / "f", layout / "g", RENAME_EXCHANGE)
    assert ei.value.errno == errno.EOPNOTSUPP, ei.value
    _layout_intact(raw, bucket, layout)


# -- mmap -----------------------------------------------------------------------------------------


def test_mmap_shared_read_only_shows_the_content(mnt, raw, bucket):
    seed(raw, bucket, "f", b"mapped content", mnt)
    with Fd(kvdir(mnt, bucket) / "f", os.O_RDONLY) as f:
        m = mmap.mmap(f.fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        try:
            assert m[:] == b"mapped content"
        finally:
            m.close()


def test_mmap_private_works(mnt, raw, bucket):
    seed(raw, bucket, "f", b"private content", mnt)
    with Fd(kvdir(mnt, bucket) / "f", os.O_RDONLY) as f:
        m = mmap.mmap(f.fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        try:
            assert m[:] == b"private content"
        finally:
            m.close()


@pytest.mark.parametrize("prot", [mmap.PROT_READ | mmap.PROT_WRITE, mmap.PROT_READ], ids=["rw", "r"])
def test_mmap_shared_of_a_file_open_for_writing_is_enodev(mnt, raw, bucket, prot):
    seed(raw, bucket, "f", b"content", mnt)
    with Fd(kvdir(mnt, bucket) / "f", os.O_RDWR) as f:
        with pytest.raises(OSError) as ei:
            mmap.mmap(f.fd, 0, flags=mmap.MAP_SHARED, prot=prot)
        assert ei.value.errno == errno.ENODEV, ei.value
        f.close()
    assert raw.value(bucket, "f") == b"content"
    assert len(history(raw, bucket, "f")) == 1


def test_mmap_shared_after_own_writes_that_change_the_size(mnt, raw, bucket):
    """One thread writes (the size changing at every step), closes, then maps the file
    read-only: its own requests never cross, so the kernel's size is known and the
    mapping works every time (fsx's check; docs/consistency.md)."""
    p = kvdir(mnt, bucket) / "grow"
    p.write_bytes(b"")
    model = b""
    for i in range(40):
        with Fd(p, os.O_RDWR) as f:
            model = (model + b"%d," % i * (i % 7 + 1))[: 200 + (i * 37) % 900]
            os.pwrite(f.fd, model, 0)
            os.ftruncate(f.fd, len(model))
            assert os.fstat(f.fd).st_size == len(model)
        assert os.stat(p).st_size == len(model)
        with Fd(p, os.O_RDONLY) as f:
            m = mmap.mmap(f.fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            try:
                assert m[:] == model, f"step {i}"
            finally:
                m.close()
    assert raw.value(bucket, "grow") == model


def test_readers_beside_a_writer_on_their_mount_never_read_it_empty(mnt, raw, bucket):
    """A writer opening the file while a page-cache reader has it open sends the file's
    readers on this mount to direct_io (docs/consistency.md): a reader opened now reads
    the published value, and its MAP_SHARED is refused (ENODEV), as documented."""
    seed(raw, bucket, "hot", b"published value", mnt)
    p = kvdir(mnt, bucket) / "hot"
    with Fd(p, os.O_RDONLY) as reader:
        m = mmap.mmap(reader.fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)  # page cache
        m.close()
        with Fd(p, os.O_WRONLY | os.O_TRUNC) as writer:
            assert os.pread(reader.fd, 100, 0) == b"published value"
            os.write(writer.fd, b"next")
            writer.close()
    with Fd(p, os.O_RDONLY) as f:
        assert os.read(f.fd, 100) == b"next"
        with pytest.raises(OSError) as ei:
            mmap.mmap(f.fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert ei.value.errno == errno.ENODEV


# In a child process: a SIGBUS from a mapping gone wrong must not take pytest down.
MMAP_CHILD = r'''
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
print(m[:].decode(), flush=True)
sys.stdin.readline()
print(m[:].decode(), flush=True)
'''


def test_mmap_shared_read_only_keeps_the_content_of_its_open(mnt, raw, bucket):
    seed(raw, bucket, "f", b"first version", mnt)
    p = kvdir(mnt, bucket) / "f"
    child = subprocess.Popen([sys.executable, "-c", MMAP_CHILD, str(p)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        ready, _, _ = select.select([child.stdout], [], [], 10)
        assert ready, "the child did not map the file within 10 s"
        first = child.stdout.readline()
        if not first:
            raise AssertionError(f"child failed: {child.communicate(timeout=10)[1][-2000:]}")
        assert first == "first version\n"
        raw.put(bucket, "f", b"other version")  # same length: the mapping stays inside the file
        wait_for(lambda: p.read_bytes() == b"other version", what="the mount to show the new value")
        out, err = child.communicate("go\n", timeout=10)
        assert child.returncode == 0, f"child exited {child.returncode}: {err[-2000:]}"
        assert out == "first version\n"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


# -- chmod, chown, link, symlink, mknod ----------------------------------------------------------


def test_chmod_to_the_mode_shown_is_accepted(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    raw.put(bucket, "sub.f", b"x")
    wait_for((d / "sub" / "f").exists, what="sub/f")
    os.chmod(d / "sub" / "f", 0o644)
    os.chmod(d / "sub", 0o755)
    assert stat.S_IMODE(os.stat(d / "sub" / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(d / "sub").st_mode) == 0o755
    assert len(history(raw, bucket, "sub.f")) == 1


@pytest.mark.parametrize(("path", "mode"), [("sub/f", 0o600), ("sub/f", 0o755), ("sub", 0o700)],
                         ids=["file-0600", "file-0755", "dir-0700"])
def test_chmod_to_another_mode_is_eperm(mnt, raw, bucket, path, mode):
    d = kvdir(mnt, bucket)
    raw.put(bucket, "sub.f", b"x")
    wait_for((d / "sub" / "f").exists, what="sub/f")
    shown = stat.S_IMODE(os.stat(d / path).st_mode)
    with pytest.raises(OSError) as ei:
        os.chmod(d / path, mode)
    assert ei.value.errno == errno.EPERM, ei.value
    assert stat.S_IMODE(os.stat(d / path).st_mode) == shown


def test_chown_to_the_owner_shown_is_accepted(mnt, raw, bucket):
    p = kvdir(mnt, bucket) / "f"
    seed(raw, bucket, "f", b"x", mnt)
    os.chown(p, os.getuid(), os.getgid())
    os.chown(p, -1, -1)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.parametrize(("uid", "gid"), [(12345, -1), (-1, 12345), (12345, 12345)],
                         ids=["uid", "gid", "both"])
def test_chown_to_another_owner_is_eperm(mnt, raw, bucket, uid, gid):
    p = kvdir(mnt, bucket) / "f"
    seed(raw, bucket, "f", b"x", mnt)
    with pytest.raises(OSError) as ei:
        os.chown(p, uid, gid)
    assert ei.value.errno == errno.EPERM, ei.value
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.parametrize("call", ["link", "symlink", "mkfifo"])
def test_link_symlink_mknod_are_eperm(mnt, raw, bucket, call):
    d = kvdir(mnt, bucket)
    seed(raw, bucket, "f", b"x", mnt)
    with pytest.raises(OSError) as ei:
        if call == "link":
            os.link(d / "f", d / "new")
        elif call == "symlink":
            os.symlink("f", d / "new")
        else:
            os.mkfifo(d / "new")
    assert ei.value.errno == errno.EPERM, ei.value
    assert os.listdir(d) == ["f"]
    assert raw.value(bucket, "new") is None


# -- xattrs --------------------------------------------------------------------------------------


def test_revision_xattr_of_a_path_is_fresh(mnt, raw, bucket):
    p = kvdir(mnt, bucket) / "f"
    seed(raw, bucket, "f", b"one", mnt)
    for i in range(5):
        rev = raw.put(bucket, "f", b"v%d" % i)  # no wait
        assert rev_xattr(p) == rev
        assert sh(f"getfattr --only-values -n user.hvfs.revision {p}").stdout == str(rev)


def test_revision_xattr_of_an_open_fd_is_the_revision_it_read(mnt, raw, bucket):
    p = kvdir(mnt, bucket) / "f"
    seed(raw, bucket, "f", b"one", mnt)
    with Fd(p, os.O_RDONLY) as f:
        r1 = raw.get(bucket, "f").revision
        assert os.read(f.fd, 100) == b"one"
        r2 = raw.put(bucket, "f", b"two")
        # Another process asks for the path: the latest; this one asks for its descriptor: what it read.
        wait_for(lambda: sh(f"getfattr --only-values -n user.hvfs.revision {p}").stdout == str(r2),
                 what="the path's revision to be the new one")
        assert rev_xattr(f.fd) == r1
        assert rev_xattr(f"/proc/self/fd/{f.fd}") == r1


def test_xattr_errors(mnt, raw, bucket):
    p = kvdir(mnt, bucket) / "f"
    seed(raw, bucket, "f", b"x", mnt)
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user.mine", b"1")
    assert ei.value.errno == errno.EOPNOTSUPP, ei.value
    with pytest.raises(OSError) as ei:
        os.removexattr(p, "user.hvfs.key")
    assert ei.value.errno == errno.EOPNOTSUPP, ei.value
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "security.selinux")
    assert ei.value.errno == errno.EOPNOTSUPP, ei.value
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "trusted.x")
    assert ei.value.errno == errno.EOPNOTSUPP, ei.value
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "user.nope")
    assert ei.value.errno == errno.ENODATA, ei.value
    p2 = sh(f"setfattr -n user.mine -v 1 {p}", check=False)
    assert p2.returncode != 0 and "not supported" in p2.stderr.lower(), p2.stderr


def test_errors_log_names_the_path(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    name = f"errfile{next(_names)}"  # unique in the session mount's log
    seed(raw, bucket, name, b"base", mnt)
    with Fd(d / name, os.O_WRONLY | os.O_TRUNC) as f:
        os.write(f.fd, b"mine")
        raw.put(bucket, name, b"theirs")
        with pytest.raises(OSError) as ei:
            f.close()
        assert ei.value.errno == errno.ESTALE, ei.value
    dname = f"errdir{next(_names)}"
    raw.put(bucket, f"{dname}.k", b"x")
    wait_for((d / dname).exists, what=dname)
    with pytest.raises(OSError) as ei:
        os.rmdir(d / dname)
    assert ei.value.errno == errno.ENOTEMPTY, ei.value
    lines = error_lines(mnt)
    for err, what in [(errno.ESTALE, name), (errno.ENOTEMPTY, dname)]:
        mine = [e for e in lines if e["errno"] == err and f"{bucket}/{what}" in str(e["path"])]
        assert mine, f"no {errno.errorcode[err]} line whose path names {bucket}/{what}: {lines[-4:]}"
        assert all(str(e["path"]).startswith("/") for e in mine), mine


def test_write_at_a_revision_gone_from_history_is_estale(mnt, raw):
    b = new_bucket(raw, history=1)
    r1 = seed(raw, b, "f", b"one", mnt)
    raw.put(b, "f", b"two")
    p = kvdir(mnt, b) / f"f@{r1}"
    with pytest.raises(OSError) as ei:
        os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    assert ei.value.errno == errno.ESTALE, ei.value
    with pytest.raises(OSError) as ei:
        os.open(p, os.O_RDONLY)
    assert ei.value.errno == errno.ENOENT, ei.value
    assert raw.value(b, "f") == b"two"


# -- concurrent writers on two mounts: every 0 is in NATS, every failure is ESTALE and kept -------


def _write_once(how: str, p: Path, value: bytes) -> None:
    """One write of ``value`` through one write path; raises the OSError of the failed call."""
    if how == "python":
        with open(p, "wb") as fh:
            fh.write(value)
        return
    flags = os.O_RDWR if how == "pwrite" else os.O_WRONLY | os.O_TRUNC
    with Fd(p, flags) as f:
        if how == "pwrite":
            os.ftruncate(f.fd, 0)
            os.pwrite(f.fd, value, 0)
        else:
            os.write(f.fd, value)
        if how == "fsync":
            try:
                os.fsync(f.fd)
            except OSError as e:
                with pytest.raises(OSError) as ei:
                    f.close()
                assert ei.value.errno == e.errno, f"fsync failed {e}, then close {ei.value}"
                raise
        f.close()


@pytest.mark.parametrize("how", ["python", "os", "pwrite", "fsync"])
def test_concurrent_writers_on_two_mounts_lose_nothing(mnt, mnt2, raw, how):
    b = new_bucket(raw, history=64)  # 1 + 2 x 30 revisions at most: all kept
    seed(raw, b, "k", b"seed", mnt, mnt2)
    barrier = threading.Barrier(2)
    acked: list[bytes] = []
    failed: dict[str, list[tuple[bytes, int]]] = {"m1": [], "m2": []}

    def writer(tag: str, m: Mount) -> None:
        p = kvdir(m, b) / "k"
        for i in range(30):
            value = f"{tag}-{how}-{i}".encode()
            barrier.wait(10)
            try:
                _write_once(how, p, value)
            except OSError as e:
                failed[tag].append((value, e.errno))
            else:
                acked.append(value)

    in_threads(lambda: writer("m1", mnt), lambda: writer("m2", mnt2), timeout=40)
    assert acked
    for tag in failed:
        for value, err in failed[tag]:
            assert err == errno.ESTALE, f"{value!r}: {errno.errorcode.get(err, err)}"
    h = history(raw, b, "k")
    assert all(r.operation is None for r in h)
    assert sorted(r.value for r in h) == sorted([b"seed", *acked]), \
        "NATS must hold exactly the seed and every acknowledged write"
    for tag, m in [("m1", mnt), ("m2", mnt2)]:
        kept = conflict_bytes(m, b, "k")
        for value, _ in failed[tag]:
            assert value in kept, f"{value!r} failed on {tag} but is not in its .hvfs/conflicts"
