"""The mfusepy binding (``hvfs mount --binding mfusepy``, hvfs/fuse/mfuse.py) on a real mount.

The binding FUSE-T needs on macOS (libfuse's high-level, path-based API), run
here on Linux against libfuse2 (libfuse3 if libfuse2 is missing). Its own
mount of the session's server (``mf``), driven with real syscalls and shell
tools; ``raw`` is the judge of what is in NATS. Part of the file contract is
re-run from tests/test_kv_files.py and tests/test_posix.py with this mount as
``mnt`` (and the session's pyfuse3 mount as ``mnt2``: the two bindings race
each other). Nothing sleeps to synchronise: what this binding leaves to its
cache timeout (1 s: no kernel notifier) is awaited with ``wait_for``.
"""

from __future__ import annotations

import ctypes.util
import errno
import inspect
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hvfs.server import EmbeddedServer

from . import test_kv_files as kvf
from . import test_posix as px
from .helpers import Mount, RawNats, history, race_exclusive_creates, wait_for

try:
    import mfusepy  # noqa: F401  (finds libfuse when imported)
except (ImportError, OSError) as e:  # pragma: no cover - the environment decides
    pytest.skip(f"mfusepy cannot load here: {e}", allow_module_level=True)

from hvfs.fuse.mfuse import CACHE_TIMEOUT

#: the libfuse mfusepy loads (FUSE_LIBRARY_NAME): libfuse2 is FUSE-T's API, libfuse3 the fallback
LIBFUSES = {"libfuse2": "fuse", "libfuse3": "fuse3"}


@pytest.fixture(scope="module", params=list(LIBFUSES))
def mf(request: pytest.FixtureRequest, server: EmbeddedServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """The session server mounted with --binding mfusepy, on libfuse2 and on libfuse3."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")
    lib = LIBFUSES[request.param]
    if ctypes.util.find_library(lib) is None:
        pytest.skip(f"lib{lib} is not installed (apt-get install {'libfuse2' if lib == 'fuse' else 'libfuse3-3'})")
    m = Mount(tmp_path_factory.mktemp(f"mfuse-{request.param}") / "m", server.url, "--binding", "mfusepy",
              "--writer", "mf-a")
    before = os.environ.get("FUSE_LIBRARY_NAME")
    os.environ["FUSE_LIBRARY_NAME"] = lib  # the mount's process inherits it at start
    try:
        m.start()
    finally:
        if before is None:
            del os.environ["FUSE_LIBRARY_NAME"]
        else:
            os.environ["FUSE_LIBRARY_NAME"] = before
    try:
        yield m
    finally:
        m.stop()


def sh(script: str, cwd: Path | str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return kvf.sh(script, cwd=cwd, check=check)


def kvdir(m: Mount, bucket: str) -> Path:
    return m.path("kv", bucket)


def error_lines(m: Mount) -> list[dict[str, Any]]:
    return [json.loads(line) for line in m.path(".hvfs", "errors").read_text().splitlines() if line.strip()]


# -- this binding's own checks ----------------------------------------------------------------


def test_the_mount_is_served_by_libfuse_high_level(mf):
    with open("/proc/self/mountinfo") as f:
        line = next(line for line in f if line.split()[4] == str(mf.mountpoint))
    assert " - fuse.hvfs hvfs " in line, line
    assert "no kernel notifier with --binding mfusepy" in mf.log_text()
    pid = mf.proc.pid if mf.proc is not None else 0
    with open(f"/proc/{pid}/maps") as f:
        libs = {line.split()[-1].rpartition("/")[2] for line in f if "libfuse" in line}
    want = "libfuse.so.2" if "libfuse2" in str(mf.mountpoint) else "libfuse3.so.3"
    assert any(lib.startswith(want) for lib in libs), libs


def test_create_read_overwrite_append(mf, raw, bucket):
    d = kvdir(mf, bucket)
    sh("echo one > f", cwd=d)
    assert sh("cat f", cwd=d).stdout == "one\n"
    sh("echo two > f", cwd=d)  # O_TRUNC reaches open(): one revision, not an empty one first
    sh("echo three >> f", cwd=d)
    assert [e.value for e in history(raw, bucket, "f")] == [b"", b"one\n", b"two\n", b"two\nthree\n"]
    assert (d / "f").read_bytes() == b"two\nthree\n"
    assert int(os.getxattr(d / "f", "user.hvfs.revision")) == history(raw, bucket, "f")[-1].revision
    assert os.getxattr(d / "f", "user.hvfs.writer") == b"mf-a"


def test_getfattr_revision_and_listing(mf, raw, bucket):
    rev = raw.put(bucket, "k", b"v")
    p = kvdir(mf, bucket) / "k"
    out = sh(f"getfattr --only-values -n user.hvfs.revision {kvf.sh_quote(p)}").stdout
    assert int(out) == rev
    names = sh(f"getfattr -d {kvf.sh_quote(p)}").stdout
    assert f'user.hvfs.bucket="{bucket}"' in names and 'user.hvfs.key="k"' in names
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "user.nope")
    assert ei.value.errno == errno.ENODATA, ei.value


def test_noclobber_claim_has_exactly_one_winner_across_bindings(mf, mnt, raw, bucket):
    """O_EXCL claims from this mount and the pyfuse3 mount at once: one winner, the rest EEXIST."""
    dirs = [kvdir(mf, bucket), kvdir(mnt, bucket)]
    for d in dirs:
        assert d.is_dir()
    results = race_exclusive_creates(dirs, 16)
    assert results.count("won") == 1, results
    assert all(r == errno.EEXIST for r in results if r != "won"), results
    assert raw.value(bucket, "lock") == f"winner {results.index('won')}\n".encode()
    p = sh("set -o noclobber; echo late > lock", cwd=dirs[0], check=False)
    assert p.returncode != 0 and "cannot overwrite" in p.stderr, p.stderr


def test_lost_cas_through_file_at_rev_is_estale_and_logged(mf, raw, bucket):
    d = kvdir(mf, bucket)
    rev = raw.put(bucket, "f", b"base\n")
    raw.put(bucket, "f", b"theirs\n")
    p = sh(f"echo mine | tee f@{rev}", cwd=d, check=False)
    assert p.returncode != 0, "a write at an old revision succeeded"
    assert "stale" in p.stderr.lower(), p.stderr
    fd = os.open(d / f"f@{rev + 1}", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"mine\n")
    raw.put(bucket, "f", b"again theirs\n")
    with pytest.raises(OSError) as ei:
        os.close(fd)
    assert ei.value.errno == errno.ESTALE, ei.value
    assert raw.value(bucket, "f") == b"again theirs\n"
    mine = [e for e in error_lines(mf) if e["errno"] == errno.ESTALE and f"{bucket}/f@" in str(e["path"])]
    assert mine, error_lines(mf)[-4:]
    assert (d / f"f@{rev}").read_bytes() == b"base\n"


def test_file_at_rev_inodes_do_not_pile_up(mf, raw, bucket):
    """No kernel forget in the high-level API: FILE@REV inodes are dropped after each request."""
    rev = raw.put(bucket, "f", b"v1")
    raw.put(bucket, "f", b"v2")
    p = kvdir(mf, bucket) / f"f@{rev}"
    assert p.read_bytes() == b"v1"

    def inodes() -> int:
        return int(json.loads(mf.path(".hvfs", "status").read_text())["inodes"])

    before = inodes()
    for _ in range(20):
        assert p.read_bytes() == b"v1" and os.stat(p).st_size == 2
    assert inodes() == before


def test_rm_mv_mkdir_rmdir_ls(mf, raw, bucket):
    d = kvdir(mf, bucket)
    sh("mkdir -p is-1 && echo a > is-1/owner && echo b > top && ls", cwd=d)
    assert sh("ls", cwd=d).stdout.split() == ["is-1", "top"]
    sh("mv top is-1/moved", cwd=d)
    assert raw.value(bucket, "top") is None and raw.value(bucket, "is-1.moved") == b"b\n"
    assert sh("ls is-1", cwd=d).stdout.split() == ["moved", "owner"]
    p = sh("rmdir is-1", cwd=d, check=False)
    assert p.returncode != 0 and "not empty" in p.stderr.lower(), p.stderr
    sh("rm is-1/owner is-1/moved && rmdir is-1", cwd=d)
    assert raw.value(bucket, "is-1.owner") is None
    assert sh("ls -A", cwd=d).stdout.split() == []


def test_rename_flags_never_replace(mf, raw, bucket):
    """renameat2 flags reach the facade (libfuse3: EEXIST, EOPNOTSUPP as with pyfuse3) or are
    refused by the kernel (libfuse2's protocol has no flags: EINVAL); never a silent replace."""
    d = kvdir(mf, bucket)
    raw.put(bucket, "f", b"F")
    raw.put(bucket, "g", b"G")
    for flags, want in [(px.RENAME_NOREPLACE, errno.EEXIST), (px.RENAME_EXCHANGE, errno.EOPNOTSUPP)]:
        with pytest.raises(OSError) as ei:
            px.renameat2(d / "f", d / "g", flags)
        assert ei.value.errno in (want, errno.EINVAL), ei.value
        if "libfuse3" in str(mf.mountpoint):
            assert ei.value.errno == want, ei.value
    assert (raw.value(bucket, "f"), raw.value(bucket, "g")) == (b"F", b"G")
    os.rename(d / "f", d / "h")
    assert (raw.value(bucket, "f"), raw.value(bucket, "h")) == (None, b"F")


def test_remote_change_is_seen_by_cat_within_the_cache_timeout(mf, raw, bucket):
    p = kvdir(mf, bucket) / "f"
    raw.put(bucket, "f", b"short")
    assert sh(f"cat {kvf.sh_quote(p)}").stdout == "short"
    raw.put(bucket, "f", b"a longer value than before")
    wait_for(lambda: sh(f"cat {kvf.sh_quote(p)}").stdout == "a longer value than before",
             timeout=CACHE_TIMEOUT + 2, what="the remote change through cat")
    raw.delete(bucket, "f")
    wait_for(lambda: not p.exists(), timeout=CACHE_TIMEOUT + 2, what="the remote delete")


def test_oversize_value_is_efbig_and_logged(mf, raw):
    b = px.new_bucket(raw, max_value_size=1024)
    p = kvdir(mf, b) / "f"
    raw.put(b, "f", b"old")
    fd = os.open(p, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as ei:
            os.write(fd, b"B" * 2000)
        assert ei.value.errno == errno.EFBIG, ei.value
    finally:
        with pytest.raises(OSError) as ei:
            os.close(fd)
        assert ei.value.errno == errno.EFBIG, ei.value
    assert raw.value(b, "f") == b"old"
    mine = [e for e in error_lines(mf) if e["errno"] == errno.EFBIG and f"{b}/f" in str(e["path"])]
    assert mine and all(str(e["path"]).startswith("/") for e in mine), error_lines(mf)[-4:]


# -- the file contract, re-run on this binding ------------------------------------------------

CASES: list[Callable[..., None]] = [
    kvf.test_new_file_by_shell_redirect_is_created_at_open_then_filled,
    kvf.test_overwrite_is_one_update_on_the_revision_seen,
    kvf.test_touch_creates_an_empty_key,
    kvf.test_empty_create_is_published_by_the_time_close_returns,
    kvf.test_truncate_shell_shrink_and_grow,
    kvf.test_truncate_path_is_one_revision,
    kvf.test_append_is_one_revision,
    kvf.test_append_right_after_remote_put,
    kvf.test_pwrite_at_offset_is_one_revision,
    kvf.test_dd_notrunc_is_one_revision,
    kvf.test_many_writes_one_close_one_revision,
    kvf.test_fsync_publishes_and_close_adds_nothing_more,
    kvf.test_excl_create_claims_empty_then_publishes,
    kvf.test_binary_content_round_trip,
    kvf.test_noclobber_claim,
    kvf.test_noclobber_against_remote_key,
    kvf.test_noclobber_on_second_mount_right_after_claim,
    kvf.test_ls_stat_cat_head,
    kvf.test_dotted_key_is_a_path,
    kvf.test_xattrs,
    kvf.test_read_right_after_remote_put_is_fresh,
    px.test_errors_log_names_the_path,
    px.test_write_at_a_revision_gone_from_history_is_estale,
    px.test_xattr_errors,
    px.test_revision_xattr_of_a_path_is_fresh,
    px.test_chmod_to_the_mode_shown_is_accepted,
    px.test_chown_to_the_owner_shown_is_accepted,
    px.test_touch_of_an_existing_key_is_one_revision_same_value,
    px.test_lookup_of_a_256_byte_name_is_enametoolong,
    px.test_255_byte_names_work,
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.__module__.rpartition('.')[2]}::{c.__name__}" for c in CASES])
def test_contract_on_mfusepy(case, mf, mnt, raw, bucket):
    """A case of the contract with this binding's mount as ``mnt`` (``mnt2``: the pyfuse3 mount)."""
    given = {"mnt": mf, "mnt2": mnt, "raw": raw, "bucket": bucket}
    params = inspect.signature(case).parameters
    missing = [p for p in params if p not in given]
    assert not missing, f"{case.__name__} needs {missing}"
    case(*(given[p] for p in params))


def test_unmount_on_sigterm_with_a_file_open(server: EmbeddedServer, raw: RawNats, tmp_path: Path):
    """SIGTERM unmounts even while a process holds a file open in the mount (nothing left behind)."""
    m = Mount(tmp_path / "m", server.url, "--binding", "mfusepy").start()
    try:
        b = px.new_bucket(raw)
        fd = os.open(kvdir(m, b) / "held", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"x")
            proc = m.proc
            assert proc is not None
            proc.terminate()
            proc.wait(20)
            assert proc.returncode == 0, m.log_text()[-2000:]
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
        assert not any(line.split()[1] == str(m.mountpoint) for line in open("/proc/mounts"))
    finally:
        m.stop()


# -- start-up: the flag, the mountpoint check, the launchd plist (no mount) --------------------


def test_mountpoint_check_asks_for_dev_fuse_except_mfusepy_on_macos(tmp_path, monkeypatch):
    from hvfs import mount
    from hvfs.errors import HvfsError

    real_access = os.access
    monkeypatch.setattr(mount.os, "access", lambda p, m: False if p == "/dev/fuse" else real_access(p, m))
    for platform, binding, ok in [("linux", "pyfuse3", False), ("linux", "mfusepy", False),
                                  ("darwin", "pyfuse3", False), ("darwin", "mfusepy", True)]:
        monkeypatch.setattr(mount.sys, "platform", platform)
        if ok:
            mount.check_mountpoint(str(tmp_path), binding)
        else:
            with pytest.raises(HvfsError, match="/dev/fuse"):
                mount.check_mountpoint(str(tmp_path), binding)
    with pytest.raises(HvfsError, match="cannot serve a /dev/fd/N"):
        mount.check_mountpoint("/dev/fd/3", "mfusepy")


def test_binding_flag_and_the_launchd_plist():
    import plistlib

    from hvfs.cli import _parser

    assert _parser().parse_args(["mount", "/m"]).binding == "pyfuse3"
    plist = Path(__file__).resolve().parent.parent / "mount-scripts" / "macos" / "com.hvfs.fleet.plist"
    with open(plist, "rb") as f:
        args = plistlib.load(f)["ProgramArguments"]
    assert _parser().parse_args(args[1:]).binding == "mfusepy"
