"""Nothing write() accepted is lost when the daemon dies, and no write's outcome is a guess.

- The spool: bytes a handle holds and NATS does not have yet are in the mount's state
  directory; after kill -9 of the daemon the next mount shows them in .hvfs/conflicts/
  (never re-applied), and finds out whether a publish under way had landed.
- Conflict entries survive a restart of the mount.
- A write answered ETIMEDOUT (NATS stalled): its conflict entry says "unknown", then
  "landed" (with the revision) or "not landed" once NATS tells (docs/errors.md).
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from hvfs.server import EmbeddedServer
from hvfs.vfs.spool import HEADER

from .helpers import Mount, RawNats, is_mounted, seed_bucket, wait_for


def entries(m: Mount) -> list[dict[str, Any]]:
    text = m.path(".hvfs", "conflicts", "index").read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def entry_for(m: Mount, bucket: str, key: str) -> dict[str, Any] | None:
    found = [c for c in entries(m) if c["bucket"] == bucket and c["key"] == key]
    return found[-1] if found else None


def stop_process(pid: int) -> None:
    """SIGSTOP, and wait until the process is stopped (kill() returns before it is)."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")

    wait_for(stopped, what=f"process {pid} stopped")


def close_stalled(server: EmbeddedServer, fd: int) -> None:
    """Stop the server (SIGSTOP), then close ``fd``: its publish gets no answer (ETIMEDOUT)."""
    assert server.proc is not None
    stop_process(server.proc.pid)
    with pytest.raises(OSError) as ei:
        os.close(fd)
    assert ei.value.errno == errno.ETIMEDOUT


def settled(m: Mount, bucket: str, key: str, timeout: float = 30) -> dict[str, Any]:
    """The key's last conflict entry once its outcome is known."""
    return wait_for(lambda: (e := entry_for(m, bucket, key)) and e["outcome"] != "unknown" and e,
                    timeout=timeout, what=f"the outcome of the write to {bucket}/{key}")


def kill_daemon(m: Mount) -> None:
    assert m.proc is not None
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait(10)
    m.proc = None


def test_kill_9_keeps_accepted_bytes(server, raw, bucket, tmp_path):
    state = tmp_path / "state"
    mp = tmp_path / "m"
    raw.put(bucket, "doc", b"old value\n")
    first = Mount(mp, server.url, "--state-dir", str(state)).start()
    second: Mount | None = None
    try:
        p = first.path("kv", bucket, "doc")
        wait_for(lambda: p.read_bytes() == b"old value\n", what="key visible")
        fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"accepted by write(), ")
        os.write(fd, b"never closed\n")
        # What write() accepted is on local disk, not only in the daemon's memory.
        spooled = [f.read_bytes() for f in (state / "spool").iterdir() if f.stat().st_size]
        assert [s[HEADER:] for s in spooled] == [b"accepted by write(), never closed\n"]
        assert json.loads(spooled[0][:HEADER])["key"] == "doc"
        kill_daemon(first)
        with pytest.raises(OSError) as ei:
            os.close(fd)  # the daemon is gone: the close cannot publish
        assert ei.value.errno in (errno.ENOTCONN, errno.EIO)
        second = Mount(mp, server.url, "--state-dir", str(state)).start()
        c = entry_for(second, bucket, "doc")
        assert c is not None, entries(second)
        assert c["errno"] == errno.EIO and "hvfs stopped before these bytes were published" in c["reason"]
        assert second.path(".hvfs", "conflicts", c["file"]).read_bytes() == b"accepted by write(), never closed\n"
        assert c["outcome"] in ("unknown", "not landed")
        done = settled(second, bucket, "doc", 20)
        assert done["outcome"] == "not landed"
        assert raw.value(bucket, "doc") == b"old value\n"  # never re-applied on its own
        assert not [f for f in (state / "spool").iterdir() if f.stat().st_size]

        # Conflicts survive a restart of the mount, and rm drops them for good.
        second.stop()
        second = Mount(mp, server.url, "--state-dir", str(state)).start()
        again = entry_for(second, bucket, "doc")
        assert again is not None and again["file"] == c["file"] and again["outcome"] == "not landed"
        os.unlink(second.path(".hvfs", "conflicts", c["file"]))
        assert entry_for(second, bucket, "doc") is None
        assert not (state / "conflicts" / c["file"]).exists()
    finally:
        for m in (first, second):
            if m is not None:
                m.stop()
        if is_mounted(mp):
            os.system(f"fusermount3 -u -z {mp}")


def test_crash_mid_publish_is_told_landed(server, raw, bucket, tmp_path):
    """A spool entry whose publish reached NATS before the daemon died: the next mount
    finds its message id in the key and says "landed" (not a false "lost")."""
    state = tmp_path / "state"
    mp = tmp_path / "m"
    raw.put(bucket, "k", b"base\n")
    m = Mount(mp, server.url, "--state-dir", str(state)).start()
    try:
        wait_for(lambda: m.path("kv", bucket, "k").read_bytes() == b"base\n", what="key visible")
    finally:
        m.stop()
    base = raw.get(bucket, "k").revision
    # What a daemon leaves when it dies between publishing and removing its spool entry.
    sid = "0000001-000000001-0badcafe"
    header = json.dumps({"id": sid, "where": bucket, "key": "k", "path": f"/kv/{bucket}/k", "base": base,
                         "time": 1.0, "kind": "kv"}).encode()
    (state / "spool" / "slot-1").write_bytes(header.ljust(HEADER - 1) + b"\n" + b"published just before the crash\n")
    raw.run(raw.js.publish(f"$KV.{bucket}.k", b"published just before the crash\n", headers={
        "Nats-Msg-Id": f"hvfs-{sid}", "Nats-Expected-Last-Subject-Sequence": str(base)}))
    landed = raw.get(bucket, "k").revision
    m = Mount(mp, server.url, "--state-dir", str(state)).start()
    try:
        done = settled(m, bucket, "k", 20)
        assert (done["outcome"], done["landed_revision"]) == ("landed", landed)
    finally:
        m.stop()


@pytest.fixture
def stall_mount(own_server: EmbeddedServer, tmp_path: Path):
    m = Mount(tmp_path / "m", own_server.url, "--timeout", "1", "--state-dir", str(tmp_path / "state")).start()
    yield m
    assert own_server.proc is not None
    os.kill(own_server.proc.pid, signal.SIGCONT)  # never leave it stopped
    m.stop()


@pytest.mark.parametrize("history", [10, 1])
def test_timed_out_write_that_landed_later_is_marked_landed(own_server, stall_mount, history):
    """With history 1 another write drops ours from the key's history at once: the watch,
    which saw ours land, still tells."""
    m = stall_mount
    raw = RawNats(own_server.url)
    try:
        raw.create_bucket("st", history=history)
        raw.put("st", "k", b"v1")
        p = m.path("kv", "st", "k")
        wait_for(lambda: p.read_bytes() == b"v1", what="key visible")
        fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"sent while NATS was stalled")
        assert own_server.proc is not None
        try:
            close_stalled(own_server, fd)
            c = entry_for(m, "st", "k")
            assert c is not None and c["outcome"] == "unknown" and c["msg_id"].startswith("hvfs-")
        finally:
            os.kill(own_server.proc.pid, signal.SIGCONT)
        landed = wait_for(lambda: (e := raw.get("st", "k")).value == b"sent while NATS was stalled" and e,
                          timeout=10, what="the stalled write to land when NATS resumes")
        if history == 1:
            raw.put("st", "k", b"a later write")
        done = settled(m, "st", "k", 30)
        assert (done["outcome"], done["landed_revision"]) == ("landed", landed.revision)
        assert "it did land after all" in done["reason"]
    finally:
        raw.close()


def test_timed_out_write_lost_with_the_server_is_marked_not_landed(own_server, stall_mount):
    m = stall_mount
    seed_bucket(own_server.url, "sl", {"k": b"v1"})
    p = m.path("kv", "sl", "k")
    wait_for(lambda: p.read_bytes() == b"v1", what="key visible")
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"never stored")
    assert own_server.proc is not None
    pid = own_server.proc.pid
    close_stalled(own_server, fd)
    # The server dies with the message unread in its socket: it can never land.
    os.kill(pid, signal.SIGKILL)
    own_server.proc.wait(10)
    own_server.proc = None
    own_server.start()
    done = settled(m, "sl", "k", 40)
    assert done["outcome"] == "not landed"
    raw = RawNats(own_server.url)
    try:
        assert raw.value("sl", "k") == b"v1"
    finally:
        raw.close()


def test_timed_out_stream_publish_is_marked_landed(own_server, stall_mount):
    """A new file in a stream directory whose publish timed out: its message id finds it."""
    from .helpers import add_stream

    m = stall_mount
    raw = RawNats(own_server.url)
    try:
        add_stream(raw, "STALL", ["stall.>"])
        d = m.path("streams", "STALL", "stall", "is-1")
        os.makedirs(d, exist_ok=True)
        fd = os.open(d / "comment", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"said while NATS was stalled\n")
        assert own_server.proc is not None
        try:
            close_stalled(own_server, fd)
            c = wait_for(lambda: entry_for(m, "STALL", "stall.is-1"), timeout=15, what="the conflict entry")
            assert c["outcome"] == "unknown" and c["kind"] == "stream"
        finally:
            os.kill(own_server.proc.pid, signal.SIGCONT)
        done = settled(m, "STALL", "stall.is-1", 30)
        info = raw.run(raw.js.stream_info("STALL"))
        assert info.state.messages == 1  # once, whatever the retries: the message id deduplicates
        assert (done["outcome"], done["landed_revision"]) == ("landed", info.state.last_seq)
    finally:
        raw.close()
