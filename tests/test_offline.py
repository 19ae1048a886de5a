"""Offline mode (``--offline``, docs/offline.md): two mounts keep writing through an
outage; on reconnect each pending write is a compare-and-swap on its base, in order;
the one that lost the race is in .hvfs/conflicts/ with both sides."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hvfs.server import EmbeddedServer

from .helpers import Mount, RawNats, seed_bucket, wait_for


def index(m: Mount, d: str) -> list[dict[str, Any]]:
    text = m.path(".hvfs", d, "index").read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def wait_disconnected(m: Mount) -> None:
    wait_for(lambda: b'"connected": false' in m.path(".hvfs", "status").read_bytes(), timeout=10,
             what=f"{m.mountpoint}: NATS gone")


def xattr(path: Path, name: str) -> str | None:
    r = subprocess.run(["getfattr", "--only-values", "-n", name, str(path)], capture_output=True)
    return r.stdout.decode() if r.returncode == 0 else None


@pytest.fixture
def two(own_server: EmbeddedServer, tmp_path: Path):
    seed_bucket(own_server.url, "off", {k: b"v1\n" for k in ("a", "b", "c", "unread")})
    a = Mount(tmp_path / "a", own_server.url, "--offline", "--timeout", "1", "--writer", "mount-a",
              "--state-dir", str(tmp_path / "sa")).start()
    b = Mount(tmp_path / "b", own_server.url, "--offline", "--timeout", "1", "--writer", "mount-b",
              "--state-dir", str(tmp_path / "sb")).start()
    yield a, b
    a.stop()
    b.stop()


def test_writes_on_two_mounts_during_an_outage(own_server, two):
    a, b = two
    for m in (a, b):
        for k in ("a", "b", "c"):
            p = m.path("kv", "off", k)
            wait_for(lambda p=p: p.read_bytes() == b"v1\n", what=f"{p} readable")  # read: now kept
    raw = RawNats(own_server.url)
    try:
        base = raw.get("off", "a").revision
    finally:
        raw.close()
    port, store = own_server.port, own_server.store_dir
    own_server.stop()
    for m in (a, b):
        wait_disconnected(m)

    # Writes are accepted (spooled durably) while NATS is away.
    a.path("kv", "off", "a").write_bytes(b"from a\n")
    b.path("kv", "off", "a").write_bytes(b"from b\n")  # the same key: one of these loses
    b.path("kv", "off", "b").write_bytes(b"b by b\n")
    a.path("kv", "off", "new").write_bytes(b"created while away\n")  # a new key, too
    assert "new" in os.listdir(a.path("kv", "off"))
    assert a.path("kv", "off", "new").read_bytes() == b"created while away\n"
    # Read your writes; other keys read earlier are served from memory, marked stale.
    assert a.path("kv", "off", "a").read_bytes() == b"from a\n"
    assert os.stat(a.path("kv", "off", "a")).st_size == len(b"from a\n")
    assert a.path("kv", "off", "c").read_bytes() == b"v1\n"
    assert "unreachable" in (xattr(a.path("kv", "off", "c"), "user.hvfs.stale") or "")
    # A key this mount never read: EIO, as without the mode.
    with pytest.raises(OSError) as ei:
        a.path("kv", "off", "unread").read_bytes()
    assert ei.value.errno in (errno.EIO, errno.ETIMEDOUT)
    # What has not landed is shown.
    pa, pnew = index(a, "pending")
    assert (pa["bucket"], pa["key"], pa["base_revision"], pa["size"]) == ("off", "a", base, 7)
    assert (pnew["key"], pnew["base_revision"]) == ("new", 0)
    assert a.path(".hvfs", "pending", pa["file"]).read_bytes() == b"from a\n"
    assert xattr(a.path("kv", "off", "a"), "user.hvfs.pending") == f".hvfs/pending/{pa['file']}"
    assert sorted(p["key"] for p in index(b, "pending")) == ["a", "b"]

    again = EmbeddedServer(store, port=port)
    again.start()
    try:
        for m in (a, b):
            wait_for(lambda m=m: not index(m, "pending"), timeout=20, what=f"{m.mountpoint}: pending applied")
        raw = RawNats(again.url)
        try:
            final_a = raw.value("off", "a")
            assert raw.value("off", "b") == b"b by b\n"
            assert raw.value("off", "c") == b"v1\n"
            assert raw.value("off", "new") == b"created while away\n"
            winner, loser = (a, b) if final_a == b"from a\n" else (b, a)
            assert final_a == (b"from a\n" if winner is a else b"from b\n")
            lost = [c for c in index(loser, "conflicts") if c["key"] == "a"]
            assert len(lost) == 1, index(loser, "conflicts")
            c = lost[0]
            assert c["base_revision"] == base and c["errno"] == errno.ESTALE
            assert c["current_revision"] == raw.get("off", "a").revision
            mine = b"from b\n" if loser is b else b"from a\n"
            assert loser.path(".hvfs", "conflicts", c["file"]).read_bytes() == mine
            assert loser.path(".hvfs", "conflicts", c["file"] + ".theirs").read_bytes() == final_a
            assert not [x for x in index(winner, "conflicts") if x["key"] == "a"]
        finally:
            raw.close()
        # Both mounts show the value that won, and the stale mark is gone once NATS answers.
        for m in (a, b):
            p = m.path("kv", "off", "a")
            wait_for(lambda p=p: p.read_bytes() == final_a, timeout=10, what=f"{p} shows the winner")
            assert xattr(p, "user.hvfs.pending") is None
        assert a.path("kv", "off", "c").read_bytes() == b"v1\n"
        assert xattr(a.path("kv", "off", "c"), "user.hvfs.stale") is None
        wait_for(lambda: b.path("kv", "off", "new").read_bytes() == b"created while away\n", timeout=10,
                 what="the other mount sees the key created offline")
    finally:
        again.stop()


def test_without_offline_writes_fail_fast(own_server, tmp_path):
    m = Mount(tmp_path / "m", own_server.url, "--timeout", "1", "--state-dir", str(tmp_path / "s")).start()
    try:
        seed_bucket(own_server.url, "on", {"k": b"v1"})
        p = m.path("kv", "on", "k")
        wait_for(lambda: p.read_bytes() == b"v1", what="key")
        own_server.stop()
        wait_disconnected(m)
        with pytest.raises(OSError) as ei:
            p.write_bytes(b"v2")
        assert ei.value.errno in (errno.EIO, errno.ETIMEDOUT)
        assert not index(m, "pending")
        with pytest.raises(OSError):
            p.read_bytes()
    finally:
        m.stop()


def test_pending_writes_survive_a_restart_of_the_mount(own_server, tmp_path):
    """close() returned 0 in offline mode: the next mount applies the write, even after kill -9."""
    import signal

    seed_bucket(own_server.url, "keep", {"k": b"v1"})
    state = tmp_path / "s"
    m = Mount(tmp_path / "m", own_server.url, "--offline", "--timeout", "1", "--state-dir", str(state)).start()
    port, store = own_server.port, own_server.store_dir
    try:
        p = m.path("kv", "keep", "k")
        wait_for(lambda: p.read_bytes() == b"v1", what="key")
        own_server.stop()
        wait_disconnected(m)
        p.write_bytes(b"acknowledged while away\n")
        assert len(index(m, "pending")) == 1
        assert m.proc is not None
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(10)
        m.proc = None
    finally:
        m.stop()
    again = EmbeddedServer(store, port=port)
    again.start()
    try:
        m2 = Mount(tmp_path / "m", again.url, "--timeout", "1", "--state-dir", str(state)).start()
        try:
            raw = RawNats(again.url)
            try:
                wait_for(lambda: raw.value("keep", "k") == b"acknowledged while away\n", timeout=20,
                         what="the pending write applied by the next mount")
            finally:
                raw.close()
            wait_for(lambda: not index(m2, "pending"), timeout=10, what="pending emptied")
            assert not index(m2, "conflicts")
        finally:
            m2.stop()
    finally:
        again.stop()
