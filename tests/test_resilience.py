"""NATS going away: bounded failures, a live mount, recovery by itself."""

import errno
import os
import subprocess
import sys
import time

import pytest

from hvfs.server import EmbeddedServer

from .helpers import Mount, RawNats, changed_while_away, is_mounted, wait_for


@pytest.fixture
def outage_mount(own_server, tmp_path):
    m = Mount(tmp_path / "m", own_server.url, "--timeout", "1").start()
    yield m
    m.stop()


def test_server_down_then_back(own_server, outage_mount, tmp_path):
    m = outage_mount
    raw = RawNats(own_server.url)
    try:
        raw.create_bucket("ops")
        raw.put("ops", "k", b"v1")
        p = m.path("kv", "ops", "k")
        wait_for(lambda: p.exists() and p.read_bytes() == b"v1", what="key visible")
    finally:
        raw.close()
    port = own_server.port
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)  # a writer open across the outage
    own_server.stop()

    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        p.read_bytes()
    assert e.value.errno in (errno.EIO, errno.ETIMEDOUT)
    with pytest.raises(OSError) as e:
        p.write_bytes(b"v2")
    assert e.value.errno in (errno.EIO, errno.ETIMEDOUT)
    os.write(fd, b"v2")
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno in (errno.EIO, errno.ETIMEDOUT)
    fresh = m.path("kv", "ops", "fresh")
    with pytest.raises(OSError) as e:  # a create cannot land: open() says so, no file is left
        os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    assert e.value.errno in (errno.EIO, errno.ETIMEDOUT)
    assert "fresh" not in os.listdir(m.path("kv", "ops"))
    assert time.monotonic() - t0 < 10, "failures must be fast"
    assert is_mounted(m.mountpoint)
    assert b'"connected": false' in m.path(".hvfs", "status").read_bytes()
    # the bytes that could not land are kept
    assert b"v2" in b"".join(f.read_bytes() for f in m.path(".hvfs", "conflicts").iterdir()
                             if f.name != "index")

    again = EmbeddedServer(own_server.store_dir, port=port)
    again.start()
    try:
        wait_for(lambda: b'"connected": true' in m.path(".hvfs", "status").read_bytes(),
                 timeout=15, what="reconnect")
        p.write_bytes(b"v3")
        fresh.write_bytes(b"created after the outage")
        raw = RawNats(again.url)
        try:
            assert raw.value("ops", "k") == b"v3"
            assert raw.value("ops", "fresh") == b"created after the outage"
            raw.put("ops", "new", b"after")
            wait_for(lambda: m.path("kv", "ops", "new").exists(), timeout=10, what="watch resumed")
        finally:
            raw.close()
    finally:
        again.stop()


def test_mountpoint_missing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hvfs", "mount", str(tmp_path / "nope"), "--server",
                        "nats://127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_server_unusable(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "hvfs", "mount", str(d), "--server", "nats://127.0.0.1:1",
                        "--timeout", "1"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "cannot connect" in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert time.monotonic() - t0 < 15
    assert not is_mounted(d)


def test_daemon_and_umount(server, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    r = subprocess.run([sys.executable, "-m", "hvfs", "mount", str(d), "--server", server.url, "--daemon",
                        "--log-file", str(tmp_path / "d.log")], capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        assert is_mounted(d)
        s = subprocess.run([sys.executable, "-m", "hvfs", "status", str(d)], capture_output=True, text=True,
                           timeout=30)
        assert s.returncode == 0 and '"connected": true' in s.stdout
    finally:
        u = subprocess.run([sys.executable, "-m", "hvfs", "umount", str(d)], capture_output=True, text=True,
                           timeout=30)
    assert u.returncode == 0, u.stderr
    assert not is_mounted(d)


def test_read_only(server, raw, bucket, tmp_path):
    raw.put(bucket, "k", b"v")
    m = Mount(tmp_path / "ro", server.url, "--read-only").start()
    try:
        p = m.path("kv", bucket, "k")
        assert p.read_bytes() == b"v"
        for fn in (lambda: p.write_bytes(b"x"), lambda: os.unlink(p),
                   lambda: m.path("kv", bucket, "new").write_bytes(b"x"),
                   lambda: os.chmod(p, 0o600), lambda: os.utime(p), lambda: os.truncate(p, 0),
                   lambda: os.rename(p, m.path("kv", bucket, "k2")),
                   lambda: os.mkdir(m.path("kv", bucket, "d")), lambda: os.mkdir(m.path("kv", "newbucket"))):
            with pytest.raises(OSError) as e:
                fn()
            assert e.value.errno == errno.EROFS
    finally:
        m.stop()


def test_changes_while_disconnected_reach_the_kernel(own_server, outage_mount):
    from .helpers import Inotify

    m = outage_mount
    raw = RawNats(own_server.url)
    try:
        raw.create_bucket("rs")
        raw.put("rs", "keep", b"1")
        raw.put("rs", "change", b"old")
        raw.put("rs", "drop", b"x")
        d = m.path("kv", "rs")
        wait_for(lambda: sorted(os.listdir(d)) == ["change", "drop", "keep"], what="initial keys")
    finally:
        raw.close()
    w = Inotify(d)
    try:
        def change(raw: RawNats) -> None:
            raw.put("rs", "change", b"new value")
            raw.put("rs", "born", b"b")
            raw.delete("rs", "drop")

        again = changed_while_away(own_server, m, change)
        try:
            w.wait("CREATE", d / "born", timeout=15)
            w.wait("DELETE", d / "drop", timeout=5)
            w.wait("MODIFY", d / "change", timeout=5)
            assert sorted(os.listdir(d)) == ["born", "change", "keep"]
            assert (d / "change").read_bytes() == b"new value"
            assert w.of(d / "keep") == []
        finally:
            again.stop()
    finally:
        w.stop()


def test_permission_violation_is_fast_eacces(tmp_path):
    conf = tmp_path / "auth.conf"
    conf.write_text(
        "authorization { users = [\n"
        "  {user: admin, password: pw}\n"
        "  {user: agent, password: pw, permissions: {publish: {deny: [\"$KV.locked.>\"]}}}\n"
        "] }\n")
    srv = EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(conf)])
    srv.start()
    try:
        admin = RawNats(srv.url.replace("nats://", "nats://admin:pw@"))
        try:
            admin.create_bucket("locked")
            admin.put("locked", "k", b"v")
        finally:
            admin.close()
        m = Mount(tmp_path / "m", srv.url, "--user", "agent", "--password", "pw").start()
        try:
            p = m.path("kv", "locked", "k")
            assert p.read_bytes() == b"v"
            t0 = time.monotonic()
            fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
            os.write(fd, b"mine")
            with pytest.raises(OSError) as e:
                os.close(fd)
            assert e.value.errno == errno.EACCES
            assert time.monotonic() - t0 < 1.5, "a permission error must not wait for the timeout"
            assert b"ermission" in m.path(".hvfs", "errors").read_bytes()
        finally:
            m.stop()
    finally:
        srv.stop()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", ["TERM", "KILL"])
def test_embedded_server_ends_with_the_mount(tmp_path, sig):
    import signal

    d = tmp_path / "m"
    d.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "hvfs", "mount", str(d), "--store", str(tmp_path / "st")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: is_mounted(d) and (d / ".hvfs" / "status").exists(), timeout=20, what="mounted")
        (d / "kv").joinpath("demo").mkdir()
        (d / "kv" / "demo" / "k").write_bytes(b"v")
        [srv] = [p for p in _children(proc.pid) if "nats-server" in open(f"/proc/{p}/cmdline").read()]
        proc.send_signal(getattr(signal, f"SIG{sig}"))
        proc.wait(20)
        wait_for(lambda: not _alive(srv), timeout=10, what="embedded nats-server gone")
        if sig == "TERM":
            assert proc.returncode == 0
            assert not is_mounted(d)
    finally:
        if proc.poll() is None:
            proc.kill()
        if is_mounted(d):
            subprocess.run(["fusermount3", "-u", "-z", str(d)], check=False)
