"""KV buckets as files, through the real mount: real syscalls, real shell tools.

Every test gets a fresh bucket (``bucket``) and drives the session's mounts
(``mnt``, and ``mnt2`` as a second host) while ``raw`` plays "another NATS
client". Nothing here sleeps to synchronise: what happens asynchronously
(watch delivery) is awaited with ``wait_for``; what the spec promises to be
immediate (a read after a put, a CAS at open) is checked without waiting.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import Mount, RawNats, history, race_exclusive_creates, wait_for

_names = itertools.count()


# -- helpers ------------------------------------------------------------------


def sh(script: str, cwd: str | Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash; fail with its stderr when ``check`` and it exits non-zero."""
    p = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise AssertionError(f"bash -c {script!r} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def sh_quote(p: Path | str) -> str:
    return "'" + str(p).replace("'", "'\\''") + "'"


def revision(raw: RawNats, bucket: str, key: str) -> int:
    return int(raw.get(bucket, key).revision)


def kvdir(mnt: Mount, bucket: str) -> Path:
    return mnt.path("kv", bucket)


def seeded(mnt, raw, bucket: str, key: str, value: bytes) -> Path:
    """Put ``key`` through the raw client; return the bucket dir once the mount shows it."""
    d = kvdir(mnt, bucket)
    raw.put(bucket, key, value)
    wait_for((d / key).exists, what=key)
    return d


def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, name).decode()


def conflicts(mnt: Mount) -> list[dict[str, Any]]:
    text = mnt.path(".hvfs", "conflicts", "index").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def conflict_for(mnt: Mount, bucket: str, key: str) -> dict[str, Any]:
    found = [c for c in conflicts(mnt) if c["bucket"] == bucket and c["key"] == key]
    assert found, f"no conflict recorded for {bucket}/{key}: {conflicts(mnt)}"
    return found[-1]


def fresh_bucket_name() -> str:
    return f"x{os.getpid()}_{next(_names)}"


def write_fd(path: Path, flags: int = os.O_WRONLY) -> int:
    return os.open(path, flags, 0o644)


# -- buckets and names -------------------------------------------------------------


def test_bucket_created_after_mount_is_a_directory(mnt, raw):
    name = fresh_bucket_name()
    assert not kvdir(mnt, name).exists()
    raw.create_bucket(name)
    # A lookup of the exact name finds it at once (one stream-info call) ...
    assert kvdir(mnt, name).is_dir()
    # ... and a listing of kv/ shows it.
    assert name in os.listdir(mnt.path("kv"))
    assert name in sh(f"ls {mnt.path('kv')}").stdout.split()


def test_bucket_visible_in_listing_without_lookup(mnt, raw):
    name = fresh_bucket_name()
    raw.create_bucket(name)
    assert name in os.listdir(mnt.path("kv"))


def test_dotted_key_is_a_path(mnt, raw, bucket):
    raw.put(bucket, "is-42.owner", b"agent: ag-7\n")
    p = kvdir(mnt, bucket) / "is-42" / "owner"
    wait_for(p.exists, what="is-42/owner")
    assert (kvdir(mnt, bucket) / "is-42").is_dir()
    assert p.read_bytes() == b"agent: ag-7\n"
    assert os.listdir(kvdir(mnt, bucket)) == ["is-42"]
    assert os.listdir(kvdir(mnt, bucket) / "is-42") == ["owner"]


def test_file_written_on_one_mount_is_seen_on_the_other(mnt, mnt2, raw, bucket):
    (kvdir(mnt, bucket) / "is-7").mkdir()
    (kvdir(mnt, bucket) / "is-7" / "owner").write_bytes(b"ag-1\n")
    assert raw.value(bucket, "is-7.owner") == b"ag-1\n"
    other = kvdir(mnt2, bucket) / "is-7" / "owner"
    wait_for(other.exists, what="the file on the second mount")
    assert other.read_bytes() == b"ag-1\n"


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("owner.yml", "owner=2Eyml"),
        ("my notes", "my=20notes"),
        ("a=b", "a=3Db"),
        ("x@y", "x=40y"),
        ("café", "caf=C3=A9"),
        ("日本", "=E6=97=A5=E6=9C=AC"),
        ("plain-Name_09", "plain-Name_09"),
        ("..dots..", "=2E=2Edots=2E=2E"),
    ],
)
def test_name_escaping_round_trip(mnt, raw, bucket, name, token):
    p = kvdir(mnt, bucket) / name
    p.write_bytes(b"v\n")
    assert raw.value(bucket, token) == b"v\n"
    assert xattr(p, "user.hvfs.key") == token
    out = sh(f"getfattr --only-values -n user.hvfs.key {sh_quote(p)}").stdout
    assert out == token
    assert name in os.listdir(kvdir(mnt, bucket))
    # The same name written by another client under the escaped key shows decoded.
    raw.put(bucket, f"sub.{token}", b"remote\n")
    q = kvdir(mnt, bucket) / "sub" / name
    wait_for(q.exists, what=f"sub/{name}")
    assert q.read_bytes() == b"remote\n"


def test_raw_escaped_key_shows_decoded(mnt, raw, bucket):
    raw.put(bucket, "a=2Eb", b"1")
    raw.put(bucket, "dir.my=20file", b"2")
    d = kvdir(mnt, bucket)
    wait_for(lambda: (d / "a.b").exists() and (d / "dir" / "my file").exists(), what="decoded names")
    assert sorted(os.listdir(d)) == ["a.b", "dir"]
    assert (d / "a.b").read_bytes() == b"1"
    assert (d / "dir" / "my file").read_bytes() == b"2"
    assert xattr(d / "a.b", "user.hvfs.key") == "a=2Eb"


@pytest.mark.parametrize("order", ["key-first", "prefix-first"])
def test_key_beside_its_prefix_is_dot_value(mnt, raw, bucket, order):
    puts = [("a", b"value of a"), ("a.b", b"value of a.b")]
    if order == "prefix-first":
        puts.reverse()
    for k, v in puts:
        raw.put(bucket, k, v)
    d = kvdir(mnt, bucket)
    wait_for(lambda: (d / "a" / ".value").exists() and (d / "a" / "b").exists(), 3.0, "a/.value and a/b")
    assert (d / "a").is_dir()
    assert (d / "a" / ".value").read_bytes() == b"value of a"
    assert (d / "a" / "b").read_bytes() == b"value of a.b"
    assert xattr(d / "a" / ".value", "user.hvfs.key") == "a"
    assert sorted(os.listdir(d / "a")) == [".value", "b"]


def test_key_becomes_file_again_with_same_inode(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    raw.put(bucket, "a", b"A")
    wait_for((d / "a").is_file, what="file a")
    ino = os.stat(d / "a").st_ino
    raw.put(bucket, "a.b", b"B")
    wait_for((d / "a" / ".value").exists, what="a/.value")
    assert os.stat(d / "a" / ".value").st_ino == ino
    raw.delete(bucket, "a.b")
    wait_for((d / "a").is_file, what="a is a file again")
    assert os.stat(d / "a").st_ino == ino
    assert (d / "a").read_bytes() == b"A"


def test_writing_dot_value_writes_the_directory_key(mnt, raw, bucket):
    raw.put(bucket, "a.b", b"B")
    d = kvdir(mnt, bucket)
    wait_for((d / "a" / "b").exists, what="a/b")
    (d / "a" / ".value").write_bytes(b"own value")
    assert raw.value(bucket, "a") == b"own value"
    assert raw.value(bucket, "a.b") == b"B"


# -- reading with ordinary tools -----------------------------------------------------


def _populate(raw: RawNats, bucket: str) -> dict[str, bytes]:
    files = {
        "is-1/owner.yml": b"agent: ag-1\nstate: open\n",
        "is-1/notes": b"needle in here\n",
        "is-2/owner.yml": b"agent: ag-2\n",
        "top": b"top level\n",
    }
    from hvfs.names import encode_name

    for path, value in files.items():
        key = ".".join(encode_name(part.encode()) for part in path.split("/"))
        raw.put(bucket, key, value)
    return files


def _wait_all(d: Path, files: dict[str, bytes]) -> None:
    wait_for(lambda: all((d / p).exists() for p in files), what="all files")


def test_ls_stat_cat_head(mnt, raw, bucket):
    files = _populate(raw, bucket)
    d = kvdir(mnt, bucket)
    _wait_all(d, files)
    assert sh("ls", cwd=d).stdout.split() == ["is-1", "is-2", "top"]
    assert sh("ls is-1", cwd=d).stdout.split() == ["notes", "owner.yml"]
    assert sh("cat is-1/owner.yml", cwd=d).stdout == "agent: ag-1\nstate: open\n"
    assert sh("head -n 1 is-1/owner.yml", cwd=d).stdout == "agent: ag-1\n"
    assert sh("head -c 5 top", cwd=d).stdout == "top l"
    size = sh("stat -c %s is-1/owner.yml", cwd=d).stdout.strip()
    assert int(size) == len(files["is-1/owner.yml"])
    st = os.stat(d / "is-1" / "owner.yml")
    assert stat.S_ISREG(st.st_mode) and st.st_size == len(files["is-1/owner.yml"])
    assert stat.S_ISDIR(os.stat(d / "is-1").st_mode)


def test_grep_find_cp_tar(mnt, raw, bucket, tmp_path):
    files = _populate(raw, bucket)
    d = kvdir(mnt, bucket)
    _wait_all(d, files)
    assert sh("grep -r needle .", cwd=d).stdout == "./is-1/notes:needle in here\n"
    assert sorted(sh("grep -rl agent .", cwd=d).stdout.split()) == ["./is-1/owner.yml", "./is-2/owner.yml"]
    found = sorted(sh("find . -type f", cwd=d).stdout.split())
    assert found == sorted(f"./{p}" for p in files)
    assert sorted(sh("find . -type d", cwd=d).stdout.split()) == [".", "./is-1", "./is-2"]
    # cp out of the mount
    sh(f"cp -r {sh_quote(d)} {sh_quote(tmp_path / 'copy')}")
    for p, v in files.items():
        assert (tmp_path / "copy" / p).read_bytes() == v
    # tar of the bucket directory
    tarball = tmp_path / "b.tar"
    p = sh(f"tar -C {sh_quote(d)} -cf {sh_quote(tarball)} .")
    assert "changed as we read" not in p.stderr
    with tarfile.open(tarball) as tf:
        members = {m.name.removeprefix("./"): m for m in tf.getmembers() if m.isfile()}
        assert set(members) == set(files)
        for name, m in members.items():
            f = tf.extractfile(m)
            assert f is not None and f.read() == files[name]
            assert m.size == len(files[name])


def test_cp_into_the_mount(mnt, raw, bucket, tmp_path):
    src = tmp_path / "src.yml"
    src.write_bytes(b"copied\n" * 100)
    dst = kvdir(mnt, bucket) / "dst.yml"
    sh(f"cp {sh_quote(src)} {sh_quote(dst)}")
    assert raw.value(bucket, "dst=2Eyml") == b"copied\n" * 100
    # cp creates a new destination with O_CREAT|O_EXCL: the empty claim, then the content.
    assert [e.value for e in history(raw, bucket, "dst=2Eyml")] == [b"", b"copied\n" * 100]
    assert dst.stat().st_size == 700
    # cp over an existing file opens it O_TRUNC: exactly one more revision.
    src.write_bytes(b"second\n")
    sh(f"cp {sh_quote(src)} {sh_quote(dst)}")
    assert [e.value for e in history(raw, bucket, "dst=2Eyml")][1:] == [b"copied\n" * 100, b"second\n"]
    assert dst.read_bytes() == b"second\n"


def test_size_mtime_and_inode(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    before = time.time()
    raw.put(bucket, "f", b"12345")
    p = d / "f"
    wait_for(p.exists, what="f")
    st1 = os.stat(p)
    st2 = os.stat(p)
    assert st1.st_size == 5
    assert st1.st_ino == st2.st_ino
    assert before - 5 < st1.st_mtime < time.time() + 5
    # mtime is the revision's time, as NATS stamped it
    created = history(raw, bucket, "f")[-1].created
    assert abs(st1.st_mtime - created.timestamp()) < 0.01
    raw.put(bucket, "f", b"1234567890")
    wait_for(lambda: os.stat(p).st_size == 10, what="new size")
    assert os.stat(p).st_ino == st1.st_ino
    p.write_bytes(b"x")
    st3 = os.stat(p)
    assert st3.st_ino == st1.st_ino and st3.st_size == 1
    assert abs(st3.st_mtime - time.time()) < 5


def test_read_right_after_remote_put_is_fresh(mnt, raw, bucket):
    raw.put(bucket, "f", b"value 00")
    p = kvdir(mnt, bucket) / "f"
    wait_for(p.exists, what="f")
    assert p.read_bytes() == b"value 00"
    for i in range(1, 30):
        value = f"value {i:02d}".encode()  # same size every time
        raw.put(bucket, "f", value)
        assert p.read_bytes() == value, f"stale read after put {i}"
    raw.put(bucket, "f", b"last")
    assert sh(f"cat {sh_quote(p)}").stdout == "last"


def test_read_right_after_remote_put_of_other_size_is_fresh(mnt, raw, bucket):
    raw.put(bucket, "f", b"v0")
    p = kvdir(mnt, bucket) / "f"
    wait_for(p.exists, what="f")
    assert p.read_bytes() == b"v0"
    for i in range(1, 30):
        value = f"value {i} ".encode() * (1 + (i * 7) % 11)  # sizes grow and shrink
        raw.put(bucket, "f", value)
        got = p.read_bytes()
        assert got == value, f"read after put {i}: {len(got)} bytes, want {len(value)}: {got[-16:]!r}"
        assert os.stat(p).st_size == len(value)


def test_read_right_after_remote_put_on_other_mount(mnt, mnt2, raw, bucket):
    (kvdir(mnt, bucket) / "f").write_bytes(b"first")
    p2 = kvdir(mnt2, bucket) / "f"
    wait_for(p2.exists, what="f on mnt2")
    assert p2.read_bytes() == b"first"
    for i in range(10):
        (kvdir(mnt, bucket) / "f").write_bytes(f"from mnt {i}".encode())
        assert p2.read_bytes() == f"from mnt {i}".encode()


@pytest.mark.parametrize("new", [b"new content, longer", b"new"])
def test_open_handle_keeps_its_content(mnt, raw, bucket, new):
    raw.put(bucket, "f", b"old content")
    p = kvdir(mnt, bucket) / "f"
    wait_for(p.exists, what="f")
    with open(p, "rb", buffering=0) as f:
        rev = raw.put(bucket, "f", new)
        wait_for(lambda: f'"revision": {rev}' in mnt.path(".hvfs", "events").read_text(),
                 what="the mount has seen the new revision")
        # While a reader holds the old content open, this mount's size is that content's
        # (the page cache is shared and clipped at it): docs/consistency.md.
        assert os.stat(p).st_size == len(b"old content")
        assert f.read() == b"old content"
    # The kernel's release of the handle follows close() by a moment (docs/consistency.md).
    wait_for(lambda: os.stat(p).st_size == len(new), what="the size of the new revision")
    assert p.read_bytes() == new


def test_open_handle_keeps_its_content_before_the_mount_hears(mnt, raw, bucket):
    raw.put(bucket, "f", b"old content")
    p = kvdir(mnt, bucket) / "f"
    wait_for(p.exists, what="f")
    with open(p, "rb", buffering=0) as f:
        first = f.read(3)
        raw.put(bucket, "f", b"NEW CONTENT")
        rest = f.read(8)
    assert first + rest == b"old content"


# -- xattrs --------------------------------------------------------------------------


def test_xattrs(mnt, raw, bucket):
    p = kvdir(mnt, bucket) / "owner.yml"
    p.write_bytes(b"a: 1\n")
    rev = revision(raw, bucket, "owner=2Eyml")
    out = sh(f"getfattr -d {sh_quote(p)}").stdout
    attrs = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#"))
    assert attrs == {
        "user.hvfs.bucket": f'"{bucket}"',
        "user.hvfs.key": '"owner=2Eyml"',
        "user.hvfs.revision": f'"{rev}"',
        "user.hvfs.writer": f'"{mnt.writer}"',  # who wrote it (docs/entities.md)
    }
    assert sorted(os.listxattr(p)) == ["user.hvfs.bucket", "user.hvfs.key", "user.hvfs.revision",
                                       "user.hvfs.writer"]
    # After a remote update the revision follows (once the mount has heard of it) ...
    rev2 = raw.put(bucket, "owner=2Eyml", b"a: 2\n")
    wait_for(lambda: xattr(p, "user.hvfs.revision") == str(rev2), what="revision xattr")
    # ... and after an open it is current at once.
    rev3 = raw.put(bucket, "owner=2Eyml", b"a: 3\n")
    assert p.read_bytes() == b"a: 3\n"
    assert xattr(p, "user.hvfs.revision") == str(rev3)
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "user.hvfs.nope")
    assert ei.value.errno == errno.ENODATA


def test_directory_xattrs(mnt, raw, bucket):
    raw.put(bucket, "is-1.owner", b"x")
    d = kvdir(mnt, bucket) / "is-1"
    wait_for(d.exists, what="is-1")
    assert xattr(d, "user.hvfs.bucket") == bucket
    assert xattr(d, "user.hvfs.key") == "is-1"


# -- writes: one close, one revision --------------------------------------------------


def test_new_file_by_shell_redirect_is_created_at_open_then_filled(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    sh("echo hello > f", cwd=d)
    h = history(raw, bucket, "f")
    assert [e.value for e in h] == [b"", b"hello\n"]  # docs/posix.md: created empty at open()
    assert (d / "f").read_bytes() == b"hello\n"
    assert xattr(d / "f", "user.hvfs.revision") == str(h[-1].revision)


def test_overwrite_is_one_update_on_the_revision_seen(mnt, raw, bucket):
    r1 = raw.put(bucket, "f", b"one\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    sh("echo two > f", cwd=d)
    h = history(raw, bucket, "f")
    assert [e.value for e in h] == [b"one\n", b"two\n"]
    assert h[0].revision == r1


def test_touch_creates_an_empty_key(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    sh("touch empty", cwd=d)
    wait_for(lambda: raw.value(bucket, "empty") == b"", what="the empty key")  # see the test below
    assert len(history(raw, bucket, "empty")) == 1
    assert (d / "empty").stat().st_size == 0
    assert (d / "empty").read_bytes() == b""


def test_empty_create_is_published_by_the_time_close_returns(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    for i in range(20):
        os.close(os.open(d / f"e{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        assert raw.value(bucket, f"e{i}") == b"", f"e{i} not in NATS after close()"


def test_remote_empty_value(mnt, raw, bucket):
    raw.put(bucket, "e", b"")
    p = kvdir(mnt, bucket) / "e"
    wait_for(p.exists, what="e")
    assert p.stat().st_size == 0
    assert p.read_bytes() == b""


def test_truncate_shell_shrink_and_grow(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "f", b"0123456789")
    sh("truncate -s 4 f", cwd=d)
    assert [e.value for e in history(raw, bucket, "f")] == [b"0123456789", b"0123"]
    sh("truncate -s 8 f", cwd=d)
    assert [e.value for e in history(raw, bucket, "f")][-1] == b"0123\0\0\0\0"
    assert len(history(raw, bucket, "f")) == 3
    assert (d / "f").stat().st_size == 8


def test_truncate_path_is_one_revision(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "f", b"0123456789")
    os.truncate(d / "f", 3)
    assert [e.value for e in history(raw, bucket, "f")] == [b"0123456789", b"012"]


def test_append_is_one_revision(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "log", b"line 1\n")
    sh("echo 'line 2' >> log", cwd=d)
    sh("printf 'line 3\\n' >> log", cwd=d)
    h = history(raw, bucket, "log")
    assert [e.value for e in h] == [b"line 1\n", b"line 1\nline 2\n", b"line 1\nline 2\nline 3\n"]


def test_append_right_after_remote_put(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "log", b"a\n")
    raw.put(bucket, "log", b"a\nremote b, longer\n")
    sh("echo c >> log", cwd=d)
    assert raw.value(bucket, "log") == b"a\nremote b, longer\nc\n"


def test_pwrite_at_offset_is_one_revision(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "f", b"abcdefghij")
    fd = write_fd(d / "f", os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"XY", 2) == 2
        assert os.pwrite(fd, b"Z", 8) == 1
    finally:
        os.close(fd)
    assert [e.value for e in history(raw, bucket, "f")] == [b"abcdefghij", b"abXYefghZj"]


def test_dd_notrunc_is_one_revision(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "f", b"abcdefghij")
    sh("printf 'QQQ' | dd of=f bs=1 seek=3 conv=notrunc status=none", cwd=d)
    assert [e.value for e in history(raw, bucket, "f")] == [b"abcdefghij", b"abcQQQghij"]


def test_write_past_eof_zero_fills(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "f", b"abc")
    fd = write_fd(d / "f", os.O_RDWR)
    try:
        os.pwrite(fd, b"END", 8)
    finally:
        os.close(fd)
    assert [e.value for e in history(raw, bucket, "f")] == [b"abc", b"abc\0\0\0\0\0END"]
    assert (d / "f").stat().st_size == 11


def test_many_writes_one_close_one_revision(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "big", b"old")
    with open(d / "big", "wb") as f:
        for i in range(200):
            f.write(f"{i:04d}\n".encode() * 50)
            f.flush()
    h = history(raw, bucket, "big")
    assert len(h) == 2
    assert h[1].value == b"".join(f"{i:04d}\n".encode() * 50 for i in range(200))
    assert (d / "big").stat().st_size == len(h[1].value)


def test_fsync_publishes_and_close_adds_nothing_more(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    fd = write_fd(d / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"synced")
        os.fsync(fd)
        assert raw.value(bucket, "f") == b"synced"
    finally:
        os.close(fd)
    assert [e.value for e in history(raw, bucket, "f")] == [b"", b"synced"]


def test_excl_create_claims_empty_then_publishes(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    fd = os.open(d / "claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        # The claim is already in NATS, empty, before any write.
        assert raw.value(bucket, "claim") == b""
        os.write(fd, b"mine\n")
    finally:
        os.close(fd)
    assert [e.value for e in history(raw, bucket, "claim")] == [b"", b"mine\n"]


def test_binary_content_round_trip(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    blob = bytes(range(256)) * 8 + b"\0" * 100 + bytes(range(255, -1, -1))
    (d / "bin").write_bytes(blob)
    assert raw.value(bucket, "bin") == blob
    assert (d / "bin").read_bytes() == blob
    raw.put(bucket, "bin2", blob[::-1])
    wait_for((d / "bin2").exists, what="bin2")
    assert (d / "bin2").read_bytes() == blob[::-1]
    assert (d / "bin2").stat().st_size == len(blob)
    assert sh("cat bin | od -An -tx1 | head -1", cwd=d).stdout.split()[:4] == ["00", "01", "02", "03"]


# -- O_EXCL claims ------------------------------------------------------------------


def test_noclobber_claim(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    first = sh("set -o noclobber; echo ag-1 > owner", cwd=d, check=False)
    assert first.returncode == 0, first.stderr
    second = sh("set -o noclobber; echo ag-2 > owner", cwd=d, check=False)
    assert second.returncode != 0
    assert "cannot overwrite existing file" in second.stderr or "exists" in second.stderr
    assert raw.value(bucket, "owner") == b"ag-1\n"


def test_noclobber_on_second_mount_right_after_claim(mnt, mnt2, raw, bucket):
    d1, d2 = kvdir(mnt, bucket), kvdir(mnt2, bucket)
    assert d2.is_dir()
    sh("set -o noclobber; echo ag-1 > owner", cwd=d1)
    p = sh("set -o noclobber; echo ag-2 > owner", cwd=d2, check=False)
    assert p.returncode != 0, "second mount overwrote a claimed file"
    assert raw.value(bucket, "owner") == b"ag-1\n"


def test_noclobber_against_remote_key(mnt, raw, bucket):
    raw.put(bucket, "owner", b"remote\n")
    d = kvdir(mnt, bucket)
    # No waiting for the watch: the claim must lose whether or not the mount has seen the key.
    p = sh("set -o noclobber; echo local > owner", cwd=d, check=False)
    assert p.returncode != 0
    assert raw.value(bucket, "owner") == b"remote\n"


def test_excl_race_across_two_mounts_has_one_winner(mnt, mnt2, raw, bucket):
    dirs = [kvdir(mnt, bucket), kvdir(mnt2, bucket)]
    for d in dirs:
        assert d.is_dir()
    results = race_exclusive_creates(dirs, 20)
    assert results.count("won") == 1, results
    assert all(r == errno.EEXIST for r in results if r != "won"), results
    winner = results.index("won")
    assert raw.value(bucket, "lock") == f"winner {winner}\n".encode()


def test_excl_race_with_subprocesses(mnt, mnt2, raw, bucket):
    dirs = [kvdir(mnt, bucket), kvdir(mnt2, bucket)]
    for d in dirs:
        assert d.is_dir()
    procs = [
        subprocess.Popen(["bash", "-c", f"set -o noclobber; echo {i} > lock"], cwd=dirs[i % 2],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(20)
    ]
    codes = [p.wait(15) for p in procs]
    for p in procs:
        assert p.stderr is not None
        p.stderr.close()
    assert codes.count(0) == 1, codes
    winner = codes.index(0)
    assert raw.value(bucket, "lock") == f"{winner}\n".encode()


# -- FILE@REV -------------------------------------------------------------------------


def test_file_at_rev_reads_history(mnt, raw, bucket):
    r1 = raw.put(bucket, "f", b"one")
    r2 = raw.put(bucket, "f", b"two")
    other = raw.put(bucket, "g", b"other")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    assert (d / f"f@{r1}").read_bytes() == b"one"
    assert (d / f"f@{r2}").read_bytes() == b"two"
    assert sh(f"cat f@{r1}", cwd=d).stdout == "one"
    assert (d / f"f@{r1}").stat().st_size == 3
    assert xattr(d / f"f@{r1}", "user.hvfs.revision") == str(r1)
    assert sorted(os.listdir(d)) == ["f", "g"]
    with pytest.raises(FileNotFoundError):
        (d / f"f@{other}").read_bytes()  # a revision of another key
    with pytest.raises(FileNotFoundError):
        (d / "f@999999").read_bytes()  # no such revision
    p = sh(f"cat f@{other}", cwd=d, check=False)
    assert p.returncode != 0 and "No such file" in p.stderr


def test_file_at_rev_of_deleted_revision_is_enoent(mnt, raw, bucket):
    r1 = raw.put(bucket, "f", b"one")
    raw.put(bucket, "f", b"two")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    raw.purge(bucket, "f")
    with pytest.raises(FileNotFoundError):
        (d / f"f@{r1}").read_bytes()


def test_write_file_at_current_rev_updates(mnt, raw, bucket):
    raw.put(bucket, "f", b"one\n")
    r2 = raw.put(bucket, "f", b"two\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    sh(f"echo three > f@{r2}", cwd=d)
    h = history(raw, bucket, "f")
    assert [e.value for e in h] == [b"one\n", b"two\n", b"three\n"]
    assert (d / "f").read_bytes() == b"three\n"
    assert "f" in os.listdir(d) and not any("@" in n for n in os.listdir(d))


def test_write_file_at_stale_rev_fails_at_open(mnt, raw, bucket):
    r1 = raw.put(bucket, "f", b"one\n")
    raw.put(bucket, "f", b"two\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    p = sh(f"echo three > f@{r1}", cwd=d, check=False)
    assert p.returncode != 0
    assert "Stale file handle" in p.stderr
    with pytest.raises(OSError) as ei:
        os.open(d / f"f@{r1}", os.O_WRONLY | os.O_TRUNC)
    assert ei.value.errno == errno.ESTALE
    assert raw.value(bucket, "f") == b"two\n"
    assert len(history(raw, bucket, "f")) == 2


def test_write_file_at_rev_right_after_remote_update_is_stale(mnt, raw, bucket):
    raw.put(bucket, "f", b"one\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    r = revision(raw, bucket, "f")
    raw.put(bucket, "f", b"remote\n")  # no wait: the check at open must see it
    p = sh(f"echo mine > f@{r}", cwd=d, check=False)
    assert p.returncode != 0 and "Stale file handle" in p.stderr
    assert raw.value(bucket, "f") == b"remote\n"


def test_file_at_zero_creates_only_if_absent(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    sh("echo first > new@0", cwd=d)
    assert raw.value(bucket, "new") == b"first\n"
    assert [e.value for e in history(raw, bucket, "new")] == [b"", b"first\n"]  # created at open
    p = sh("echo second > new@0", cwd=d, check=False)
    assert p.returncode != 0
    assert raw.value(bucket, "new") == b"first\n"
    raw.put(bucket, "remote", b"r\n")  # not yet seen by the mount, maybe
    p = sh("echo mine > remote@0", cwd=d, check=False)
    assert p.returncode != 0
    assert raw.value(bucket, "remote") == b"r\n"


# -- lost compare-and-swap ------------------------------------------------------------


def test_lost_cas_fails_close_and_keeps_the_bytes(mnt, raw, bucket):
    base = raw.put(bucket, "f", b"base\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    fd = os.open(d / "f", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"loser bytes\n")
    winner = raw.put(bucket, "f", b"winner\n")
    with pytest.raises(OSError) as ei:
        os.close(fd)
    assert ei.value.errno == errno.ESTALE
    assert raw.value(bucket, "f") == b"winner\n"
    assert len(history(raw, bucket, "f")) == 2
    c = conflict_for(mnt, bucket, "f")
    assert c["base_revision"] == base
    assert c["current_revision"] == winner
    assert c["errno"] == errno.ESTALE
    assert c["reason"]
    assert c["file"]
    names = os.listdir(mnt.path(".hvfs", "conflicts"))
    assert "index" in names and c["file"] in names
    assert mnt.path(".hvfs", "conflicts", c["file"]).read_bytes() == b"loser bytes\n"
    assert (d / "f").read_bytes() == b"winner\n"


def test_conflict_file_opens_by_name_from_index(mnt, raw, bucket):
    raw.put(bucket, "f", b"base\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    fd = os.open(d / "f", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"lost\n")
    raw.put(bucket, "f", b"winner\n")
    with pytest.raises(OSError):
        os.close(fd)
    c = conflict_for(mnt, bucket, "f")
    # What an agent does: read the index, then cat the file it names (no ls first).
    p = sh(f"cat {sh_quote(mnt.path('.hvfs', 'conflicts', c['file']))}", check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "lost\n"


def test_lost_cas_reported_by_python_close(mnt, raw, bucket):
    """A remote update between a writer's open and close: python's close reports it."""
    raw.put(bucket, "f", b"base\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    f = open(d / "f", "r+b")
    f.seek(0, 2)
    f.write(b"appended\n")
    raw.put(bucket, "f", b"remote\n")
    with pytest.raises(OSError) as ei:
        f.close()
    assert ei.value.errno == errno.ESTALE
    assert raw.value(bucket, "f") == b"remote\n"
    c = conflict_for(mnt, bucket, "f")
    assert c["file"] in os.listdir(mnt.path(".hvfs", "conflicts"))
    assert mnt.path(".hvfs", "conflicts", c["file"]).read_bytes() == b"base\nappended\n"


def test_new_file_create_lost_to_remote_create(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    created = revision(raw, bucket, "f")  # open(O_CREAT) created it, empty
    os.write(fd, b"mine\n")
    raw.put(bucket, "f", b"theirs\n")
    with pytest.raises(OSError) as ei:
        os.close(fd)
    assert ei.value.errno == errno.ESTALE
    assert raw.value(bucket, "f") == b"theirs\n"
    c = conflict_for(mnt, bucket, "f")
    assert c["base_revision"] == created
    names = os.listdir(mnt.path(".hvfs", "conflicts"))
    assert mnt.path(".hvfs", "conflicts", c["file"]).read_bytes() == b"mine\n" and c["file"] in names
    wait_for(lambda: (d / "f").read_bytes() == b"theirs\n", what="remote value shown")


def test_rm_conflict_file_drops_it(mnt, raw, bucket):
    raw.put(bucket, "f", b"base\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    fd = os.open(d / "f", os.O_WRONLY)
    os.write(fd, b"X")
    raw.put(bucket, "f", b"remote\n")
    with pytest.raises(OSError):
        os.close(fd)
    c = conflict_for(mnt, bucket, "f")
    cdir = mnt.path(".hvfs", "conflicts")
    assert c["file"] in os.listdir(cdir)
    os.unlink(cdir / c["file"])
    assert c["file"] not in os.listdir(cdir)
    assert not [x for x in conflicts(mnt) if x["file"] == c["file"]]


def test_write_racing_remote_updates_loses_nothing(mnt, raw, bucket):
    d = seeded(mnt, raw, bucket, "f", b"start")
    outcomes = []
    for i in range(8):
        barrier = threading.Barrier(2)
        mine, theirs = f"mount {i}".encode(), f"raw {i}".encode()

        def remote(barrier: threading.Barrier, theirs: bytes) -> None:
            barrier.wait(5)
            raw.put(bucket, "f", theirs)

        t = threading.Thread(target=remote, args=(barrier, theirs))
        t.start()
        fd = os.open(d / "f", os.O_WRONLY | os.O_TRUNC)
        barrier.wait(5)
        os.write(fd, mine)
        try:
            os.close(fd)
            outcomes.append("ok")
        except OSError as e:
            assert e.errno == errno.ESTALE, e
            outcomes.append("stale")
        t.join(10)
        values = [e.value for e in history(raw, bucket, "f")]
        assert theirs in values  # the remote write always lands
        if outcomes[-1] == "ok":
            assert mine in values
        else:
            c = conflict_for(mnt, bucket, "f")
            cdir = mnt.path(".hvfs", "conflicts")
            assert c["file"] in os.listdir(cdir)
            assert (cdir / c["file"]).read_bytes() == mine
            assert mine not in values
    assert set(outcomes) <= {"ok", "stale"}


# -- remote deletes while open ----------------------------------------------------------


def test_remote_delete_while_read_handle_open(mnt, raw, bucket):
    raw.put(bucket, "f", b"still here")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    with open(d / "f", "rb") as f:
        raw.delete(bucket, "f")
        wait_for(lambda: "f" not in os.listdir(d), what="f gone from listing")
        assert f.read() == b"still here"
    with pytest.raises(FileNotFoundError):
        (d / "f").read_bytes()


def test_remote_delete_while_dirty_write_handle_open(mnt, raw, bucket):
    base = raw.put(bucket, "f", b"orig")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    fd = os.open(d / "f", os.O_RDWR)
    os.write(fd, b"dirty")
    raw.delete(bucket, "f")
    with pytest.raises(OSError) as ei:
        os.close(fd)
    assert ei.value.errno == errno.ESTALE
    assert raw.value(bucket, "f") is None
    c = conflict_for(mnt, bucket, "f")
    assert c["base_revision"] == base
    names = os.listdir(mnt.path(".hvfs", "conflicts"))
    assert c["file"] in names
    assert mnt.path(".hvfs", "conflicts", c["file"]).read_bytes() == b"dirty"


def test_open_of_remotely_deleted_key_is_enoent(mnt, raw, bucket):
    raw.put(bucket, "f", b"x")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    raw.delete(bucket, "f")
    # No wait: the open goes to NATS and must not show the deleted value.
    with pytest.raises(FileNotFoundError):
        (d / "f").read_bytes()


# -- namespace: rm, mkdir, rmdir, mv ----------------------------------------------------


def test_rm_deletes_and_keeps_history(mnt, raw, bucket):
    raw.put(bucket, "f", b"x")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    sh("rm f", cwd=d)
    assert raw.value(bucket, "f") is None
    h = history(raw, bucket, "f")
    assert [e.operation for e in h][-1] == "DEL"
    assert h[0].value == b"x"
    assert "f" not in os.listdir(d)
    assert not (d / "f").exists()


def test_rm_of_file_created_on_mount(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    (d / "f").write_bytes(b"x")
    os.unlink(d / "f")
    assert raw.value(bucket, "f") is None
    assert not (d / "f").exists()
    # and it can be created again
    (d / "f").write_bytes(b"again")
    assert raw.value(bucket, "f") == b"again"


def test_mkdir_p_then_files_inside(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    sh("mkdir -p a/b && echo deep > a/b/f.txt", cwd=d)
    assert raw.value(bucket, "a.b.f=2Etxt") == b"deep\n"
    assert (d / "a" / "b" / "f.txt").read_bytes() == b"deep\n"
    assert sh("find . -type f", cwd=d).stdout.split() == ["./a/b/f.txt"]


def test_rmdir(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    sh("mkdir -p a/b && echo x > a/b/f", cwd=d)
    with pytest.raises(OSError) as ei:
        os.rmdir(d / "a")
    assert ei.value.errno == errno.ENOTEMPTY
    p = sh("rmdir a/b", cwd=d, check=False)
    assert p.returncode != 0 and "not empty" in p.stderr.lower()
    os.mkdir(d / "empty")
    assert (d / "empty").is_dir()
    os.rmdir(d / "empty")
    assert not (d / "empty").exists()
    assert raw.value(bucket, "a.b.f") == b"x\n"


def test_rmdir_of_remote_dir_is_enotempty(mnt, raw, bucket):
    raw.put(bucket, "dir.k", b"v")
    d = kvdir(mnt, bucket)
    wait_for((d / "dir" / "k").exists, what="dir/k")
    with pytest.raises(OSError) as ei:
        os.rmdir(d / "dir")
    assert ei.value.errno == errno.ENOTEMPTY


def test_rm_r_directory_made_here(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    sh("mkdir -p dir/sub && echo 1 > dir/a && echo 2 > dir/sub/b", cwd=d)
    assert raw.value(bucket, "dir.sub.b") == b"2\n"
    sh("rm -r dir", cwd=d)
    assert raw.value(bucket, "dir.a") is None
    assert raw.value(bucket, "dir.sub.b") is None
    assert not (d / "dir").exists()


def test_rm_r_directory_of_remote_keys(mnt, raw, bucket):
    raw.put(bucket, "dir.a", b"1")
    raw.put(bucket, "dir.sub.b", b"2")
    d = kvdir(mnt, bucket)
    wait_for(lambda: (d / "dir" / "sub" / "b").exists() and (d / "dir" / "a").exists(), what="tree")
    sh("rm -r dir", cwd=d)
    assert raw.value(bucket, "dir.a") is None
    assert raw.value(bucket, "dir.sub.b") is None
    assert not (d / "dir").exists()


def test_mv_within_bucket(mnt, raw, bucket):
    raw.put(bucket, "old", b"content\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "old").exists, what="old")
    sh("mkdir -p sub && mv old sub/new.yml", cwd=d)
    assert raw.value(bucket, "sub.new=2Eyml") == b"content\n"
    assert raw.value(bucket, "old") is None
    assert history(raw, bucket, "old")[-1].operation == "DEL"
    assert len(history(raw, bucket, "sub.new=2Eyml")) == 1
    wait_for(lambda: (d / "sub" / "new.yml").read_bytes() == b"content\n", what="sub/new.yml readable")
    wait_for(lambda: not (d / "old").exists(), what="old gone")


def test_mv_then_read_new_path_at_once(mnt, raw, bucket):
    raw.put(bucket, "old", b"content\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "old").exists, what="old")
    sh("mv old new", cwd=d)
    assert (d / "new").read_bytes() == b"content\n"
    assert sh("cat new", cwd=d).stdout == "content\n"
    assert xattr(d / "new", "user.hvfs.key") == "new"


def test_mv_over_existing_file(mnt, raw, bucket):
    raw.put(bucket, "src", b"new content")
    raw.put(bucket, "dst", b"old content")
    d = kvdir(mnt, bucket)
    wait_for(lambda: (d / "src").exists() and (d / "dst").exists(), what="src and dst")
    os.rename(d / "src", d / "dst")
    assert raw.value(bucket, "dst") == b"new content"
    assert raw.value(bucket, "src") is None
    assert len(history(raw, bucket, "dst")) == 2
    wait_for(lambda: (d / "dst").read_bytes() == b"new content", what="dst readable")
    wait_for(lambda: sorted(os.listdir(d)) == ["dst"], what="listing")


def test_mv_over_existing_then_read_at_once(mnt, raw, bucket):
    raw.put(bucket, "src", b"new content")
    raw.put(bucket, "dst", b"old content")
    d = kvdir(mnt, bucket)
    wait_for(lambda: (d / "src").exists() and (d / "dst").exists(), what="src and dst")
    os.rename(d / "src", d / "dst")
    assert (d / "dst").read_bytes() == b"new content"


def test_mv_across_buckets(mnt, raw, bucket):
    other = fresh_bucket_name()
    raw.create_bucket(other)
    raw.put(bucket, "f", b"travelling\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    sh(f"mv f {sh_quote(kvdir(mnt, other) / 'g')}", cwd=d)
    assert raw.value(other, "g") == b"travelling\n"
    assert raw.value(bucket, "f") is None
    wait_for(lambda: (kvdir(mnt, other) / "g").read_bytes() == b"travelling\n", what="g readable")
    wait_for(lambda: not (d / "f").exists(), what="f gone")


def test_mv_across_buckets_then_read_at_once(mnt, raw, bucket):
    other = fresh_bucket_name()
    raw.create_bucket(other)
    raw.put(bucket, "f", b"travelling\n")
    d = kvdir(mnt, bucket)
    wait_for((d / "f").exists, what="f")
    os.rename(d / "f", kvdir(mnt, other) / "g")
    assert (kvdir(mnt, other) / "g").read_bytes() == b"travelling\n"


def test_rename_of_directory_is_exdev(mnt, raw, bucket):
    raw.put(bucket, "src.a", b"A")
    d = kvdir(mnt, bucket)
    wait_for((d / "src" / "a").exists, what="src/a")
    with pytest.raises(OSError) as ei:
        os.rename(d / "src", d / "dst")
    assert ei.value.errno == errno.EXDEV
    assert raw.value(bucket, "src.a") == b"A"


def test_mv_directory_made_here_copies(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    sh("mkdir -p src/sub && echo A > src/a && echo B > src/sub/b", cwd=d)
    sh("mv src dst", cwd=d)
    assert raw.value(bucket, "dst.a") == b"A\n"
    assert raw.value(bucket, "dst.sub.b") == b"B\n"
    assert raw.value(bucket, "src.a") is None
    assert raw.value(bucket, "src.sub.b") is None
    assert sorted(sh("find . -type f", cwd=d).stdout.split()) == ["./dst/a", "./dst/sub/b"]


def test_mv_directory_of_remote_keys_copies(mnt, raw, bucket):
    raw.put(bucket, "src.a", b"A")
    raw.put(bucket, "src.sub.b", b"B")
    d = kvdir(mnt, bucket)
    wait_for(lambda: (d / "src" / "a").exists() and (d / "src" / "sub" / "b").exists(), what="src tree")
    sh("mv src dst", cwd=d)
    assert raw.value(bucket, "dst.a") == b"A"
    assert raw.value(bucket, "dst.sub.b") == b"B"
    assert raw.value(bucket, "src.a") is None
    assert raw.value(bucket, "src.sub.b") is None
    assert sorted(sh("find . -type f", cwd=d).stdout.split()) == ["./dst/a", "./dst/sub/b"]


def test_mv_of_file_seen_on_other_mount(mnt, mnt2, raw, bucket):
    (kvdir(mnt, bucket) / "a").write_bytes(b"x")
    os.rename(kvdir(mnt, bucket) / "a", kvdir(mnt, bucket) / "b")
    d2 = kvdir(mnt2, bucket)
    wait_for(lambda: sorted(os.listdir(d2)) == ["b"], what="rename seen on mnt2")
    assert (d2 / "b").read_bytes() == b"x"


# -- limits -----------------------------------------------------------------------------


@pytest.fixture
def small_bucket(raw: RawNats) -> str:
    name = fresh_bucket_name()
    raw.create_bucket(name, max_value_size=1024)
    return name


def test_value_over_max_size_is_efbig_at_write(mnt, raw, small_bucket):
    b = small_bucket
    raw.put(b, "f", b"old value")
    d = kvdir(mnt, b)
    wait_for((d / "f").exists, what="f")
    fd = os.open(d / "f", os.O_WRONLY)
    with pytest.raises(OSError) as ei:
        os.pwrite(fd, b"x" * 2000, 0)
    assert ei.value.errno == errno.EFBIG
    with pytest.raises(OSError) as ei:  # the handle is refused for good
        os.close(fd)
    assert ei.value.errno == errno.EFBIG
    assert raw.value(b, "f") == b"old value"
    assert len(history(raw, b, "f")) == 1
    # well under the limit is fine
    (d / "f").write_bytes(b"y" * 512)
    assert raw.value(b, "f") == b"y" * 512


@pytest.mark.parametrize("size", [1024, 1000, 960])
def test_value_near_max_size_fails_at_write_or_lands(mnt, raw, small_bucket, size):
    """Spec: EFBIG is raised at write(); a write() that was accepted must not fail at close(),
    and a handle whose write was refused fails its close too (nothing half-applied)."""
    b = small_bucket
    raw.put(b, "f", b"old value")
    d = kvdir(mnt, b)
    wait_for((d / "f").exists, what="f")
    fd = os.open(d / "f", os.O_WRONLY)
    try:
        os.write(fd, b"z" * size)
    except OSError as e:
        assert e.errno == errno.EFBIG
        accepted = False
    else:
        accepted = True
    finally:
        try:
            os.close(fd)
        except OSError as e:
            if accepted:
                raise AssertionError(f"write() of {size} bytes was accepted, close() failed: {e}") from None
            assert e.errno == errno.EFBIG
        else:
            assert accepted, "close() of a handle whose write was refused returned 0"
    if accepted:
        assert raw.value(b, "f") == b"z" * size
    else:
        assert raw.value(b, "f") == b"old value"


def test_value_over_max_size_by_shell_keeps_old_value(mnt, raw, small_bucket):
    b = small_bucket
    raw.put(b, "f", b"old value")
    d = kvdir(mnt, b)
    wait_for((d / "f").exists, what="f")
    p = sh("head -c 3000 /dev/zero > f", cwd=d, check=False)
    assert p.returncode != 0 and "too large" in p.stderr.lower()
    assert raw.value(b, "f") == b"old value"
    assert len(history(raw, b, "f")) == 1


def test_new_file_over_max_size_is_efbig(mnt, raw, small_bucket):
    d = kvdir(mnt, small_bucket)
    p = sh("head -c 3000 /dev/zero > big", cwd=d, check=False)
    assert p.returncode != 0 and "too large" in p.stderr.lower()
    assert raw.value(small_bucket, "big") in (None, b"")  # nothing over the limit landed


def test_truncate_over_max_size_is_efbig(mnt, raw, small_bucket):
    b = small_bucket
    raw.put(b, "f", b"old value")
    d = kvdir(mnt, b)
    wait_for((d / "f").exists, what="f")
    with pytest.raises(OSError) as ei:
        os.truncate(d / "f", 5000)
    assert ei.value.errno == errno.EFBIG
    assert raw.value(b, "f") == b"old value"


# -- the mount's own files -----------------------------------------------------------------


def test_status_is_json_and_read_only(mnt):
    doc = json.loads(mnt.path(".hvfs", "status").read_text())
    assert doc["connected"] is True
    assert stat.S_IMODE(mnt.path(".hvfs", "status").stat().st_mode) == 0o444
    with pytest.raises(OSError) as ei:
        os.open(mnt.path(".hvfs", "status"), os.O_WRONLY)
    assert ei.value.errno in (errno.EPERM, errno.EACCES, errno.EROFS)
    with pytest.raises(OSError) as ei:
        mnt.path(".hvfs", "new").write_bytes(b"x")
    assert ei.value.errno in (errno.EPERM, errno.EACCES, errno.EROFS)
    p = sh(f"echo x > {sh_quote(mnt.path('.hvfs', 'status'))}", check=False)
    assert p.returncode != 0


def test_status_read_by_cat_is_complete(mnt):
    text = sh(f"cat {sh_quote(mnt.path('.hvfs', 'status'))}").stdout
    assert json.loads(text)["connected"] is True


def test_files_outside_buckets_are_refused(mnt):
    with pytest.raises(OSError) as ei:
        mnt.path("kv", "stray-file").write_bytes(b"x")
    assert ei.value.errno in (errno.EPERM, errno.EACCES)
    with pytest.raises(OSError) as ei:
        mnt.path("top-level").write_bytes(b"x")
    assert ei.value.errno in (errno.EPERM, errno.EACCES)


# -- bad names -------------------------------------------------------------------------------


def test_name_too_long_is_refused(mnt, raw, bucket):
    """FUSE passes names up to 1024 bytes; hvfs must refuse those over 255 bytes itself."""
    d = kvdir(mnt, bucket)
    for name in ["n" * 256, "é" * 128, "n" * 1024]:  # "é" * 128: 128 characters but 256 bytes
        with pytest.raises(OSError) as ei:
            (d / name).write_bytes(b"x")
        assert ei.value.errno in (errno.ENAMETOOLONG, errno.EINVAL), ei.value
    assert os.listdir(d) == []
    logged = [json.loads(line) for line in mnt.path(".hvfs", "errors").read_text().splitlines()]
    mine = [e for e in logged if ("n" * 256) in e["path"]]
    assert mine and mine[-1]["errno"] in (errno.ENAMETOOLONG, errno.EINVAL) and mine[-1]["reason"]


def test_directory_name_too_long_is_refused(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    with pytest.raises(OSError) as ei:
        os.mkdir(d / ("m" * 300))
    assert ei.value.errno in (errno.ENAMETOOLONG, errno.EINVAL)


def test_longest_escaped_name_works(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    name = "." + "é" * 127  # 255 bytes, every one escaped: a 765-character token
    (d / name).write_bytes(b"long")
    token = "=2E" + "=C3=A9" * 127
    assert raw.value(bucket, token) == b"long"
    assert (d / name).read_bytes() == b"long"
    assert name in os.listdir(d)


@pytest.fixture
def own_mount(server, tmp_path):
    """A private mount for a test that may break its NATS connection."""
    m = Mount(tmp_path / "m", server.url).start()
    yield m
    m.stop()


def test_key_too_long_after_escaping_is_a_clear_error(own_mount, raw, bucket):
    """A path whose key would be too long for NATS fails with an errno; the mount stays usable."""
    mnt = own_mount
    d = kvdir(mnt, bucket)
    part = "é" * 127  # 254 bytes -> 762 characters escaped
    deep = d
    for _ in range(8):  # > 6000 characters of key
        deep = deep / part
    try:
        os.makedirs(deep)
    except OSError as e:
        assert e.errno in (errno.ENAMETOOLONG, errno.EINVAL), e
    else:
        with pytest.raises(OSError) as ei:
            (deep / "f").write_bytes(b"x")
        assert ei.value.errno in (errno.ENAMETOOLONG, errno.EINVAL), ei.value
    # The mount is still connected and works at once.
    assert json.loads(mnt.path(".hvfs", "status").read_text())["connected"] is True
    (d / "after").write_bytes(b"ok")
    assert raw.value(bucket, "after") == b"ok"


def test_dot_value_at_bucket_root_is_einval(mnt, raw, bucket):
    d = kvdir(mnt, bucket)
    with pytest.raises(OSError) as ei:
        (d / ".value").write_bytes(b"x")
    assert ei.value.errno == errno.EINVAL
    errors = mnt.path(".hvfs", "errors").read_text()
    assert ".value" in errors


def test_bad_bucket_name_mkdir_is_einval(mnt):
    with pytest.raises(OSError) as ei:
        os.mkdir(mnt.path("kv", "bad.name"))
    assert ei.value.errno == errno.EINVAL


# -- buckets appearing while the mount polls ----------------------------------------------------


def _leader_is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _abort_fuse_connection(dev: int) -> None:
    """Release a FUSE connection whose daemon can no longer answer (fusectl 'abort')."""
    conns = Path("/sys/fs/fuse/connections")
    if conns.is_dir() and not any(conns.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "none", str(conns)], check=False, capture_output=True)
    abort = conns / str(os.minor(dev) if os.major(dev) == 0 else dev) / "abort"
    if abort.exists():
        abort.write_text("1")


@pytest.fixture
def fragile_mount(own_server, tmp_path):
    """A private mount of a private server, for a test that may crash the daemon.

    A crashed hvfs can leave its notifier thread blocked in the kernel, so the
    process never exits and every request to the mount waits forever: the test
    touches this mount only from child processes, and teardown aborts the FUSE
    connection if the daemon died.
    """
    m = Mount(tmp_path / "m", own_server.url).start()
    dev = os.stat(m.mountpoint).st_dev
    m.fuse_dev = dev  # type: ignore[attr-defined]
    yield m
    proc = m.proc
    if proc is not None and (proc.poll() is not None or _leader_is_zombie(proc.pid)):
        _abort_fuse_connection(dev)
    m.stop()


_POLL_PROBE = r"""
import asyncio, json, os, sys, time
import nats
from nats.js.api import KeyValueConfig

mnt, url = sys.argv[1], sys.argv[2]

def status_buckets():
    with open(os.path.join(mnt, ".hvfs", "status")) as f:
        return json.load(f)["buckets"]

async def main():
    nc = await nats.connect(url)
    js = nc.jetstream()
    for i in range(120):
        await js.create_key_value(KeyValueConfig(bucket=f"many{i:02d}", history=1))
    deadline = time.monotonic() + 3
    while not any(b.startswith("many") for b in status_buckets()):
        assert time.monotonic() < deadline, "the poller never started adding buckets"
        await asyncio.sleep(0.005)
    # The poller is now adding the 120 buckets from its listing; "x" is not in it.
    kv = await js.create_key_value(KeyValueConfig(bucket="x", history=10))
    await kv.put("k", b"v")
    await nc.close()

asyncio.run(main())
p = os.path.join(mnt, "kv", "x", "k")
errors = []
first = None
t0 = time.monotonic()
while time.monotonic() - t0 < 1.5:
    try:
        with open(p, "rb") as f:
            ok = f.read() == b"v"
    except OSError as e:
        ok = False
        errors.append([round(time.monotonic() - t0, 3), e.errno])
    if ok and first is None:
        first = round(time.monotonic() - t0, 3)
print(json.dumps({"first_seen": first, "errors": errors[:5], "n_errors": len(errors)}))
"""


def test_bucket_created_while_the_mount_polls_stays(fragile_mount, own_server):
    """A bucket found by a lookup while the bucket poll is busy adding others stays.

    Regression guard: a poll that applied its (by then stale) listing after awaiting the
    views it added dropped buckets a lookup had added meanwhile (their files gave ENOENT),
    and re-adding one could crash the daemon (StopIteration in Core._add_view), leaving
    clients hung in the kernel. The probe runs in a child process for that reason.
    """
    m = fragile_mount
    child = subprocess.Popen([sys.executable, "-c", _POLL_PROBE, str(m.mountpoint), own_server.url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=6)
    except subprocess.TimeoutExpired:
        _abort_fuse_connection(m.fuse_dev)
        child.kill()
        child.communicate(timeout=10)
        raise AssertionError("the probe hung on the mount (daemon dead?)") from None
    assert child.returncode == 0, err[-2000:]
    result = json.loads(out)
    assert result["first_seen"] is not None, result
    assert result["n_errors"] == 0, f"kv/x/k was not readable all the time: {result}"
    assert m.proc is not None and m.proc.poll() is None and not _leader_is_zombie(m.proc.pid), \
        f"the mount died: {m.log_text()[-1500:]}"


def test_close_of_a_dup_while_writing_is_not_a_conflict(mnt, raw, bucket):
    """Two flushes of one handle (a dup'd fd closed in another thread) publish in turn."""
    import threading

    d = kvdir(mnt, bucket)
    for i in range(10):
        p = d / f"f{i}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"part1\n")
        fd2 = os.dup(fd)
        t = threading.Thread(target=os.close, args=(fd2,))
        t.start()
        os.write(fd, b"part2\n")
        os.close(fd)
        t.join()
        assert raw.value(bucket, f"f{i}") == b"part1\npart2\n"
