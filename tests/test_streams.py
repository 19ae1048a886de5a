"""Streams as append-only directories (real server, real mount)."""

import errno
import os
import subprocess

import pytest

from .helpers import Inotify, add_stream, publish, wait_for


@pytest.fixture
def stream(raw, request):
    name = f"S{os.getpid()}_{request.node.name[-20:].replace('[', '_').replace(']', '_').replace('-', '_')}"
    name = "".join(c for c in name if c.isalnum() or c == "_")
    prefix = name.lower()
    add_stream(raw, name, [f"{prefix}.>"])
    yield name, prefix
    try:
        raw.run(raw.js.delete_stream(name))
    except Exception:
        pass


def test_messages_are_files(mnt, raw, stream):
    name, p = stream
    seq = publish(raw, f"{p}.is-42", b"first comment\n", headers={"X-Agent": "ag-7"})
    f = mnt.path("streams", name, p, "is-42", str(seq))
    wait_for(f.exists, what="message file")
    assert f.read_bytes() == b"first comment\n"
    assert os.stat(f).st_size == len(b"first comment\n")
    out = subprocess.run(["getfattr", "-d", "-m", "user.hvfs", str(f)], capture_output=True, text=True).stdout
    assert f'user.hvfs.seq="{seq}"' in out
    assert f'user.hvfs.subject="{p}.is-42"' in out
    assert 'user.hvfs.header.X-Agent="ag-7"' in out


def test_messages_are_immutable(mnt, raw, stream):
    name, p = stream
    seq = publish(raw, f"{p}.a", b"x")
    f = mnt.path("streams", name, p, "a", str(seq))
    wait_for(f.exists, what="message")
    with pytest.raises(OSError) as e:
        with open(f, "wb") as fh:
            fh.write(b"y")
    assert e.value.errno == errno.EPERM
    assert f.read_bytes() == b"x"


def test_new_file_publishes_one_message(mnt, raw, stream):
    name, p = stream
    d = mnt.path("streams", name, p, "is-42")
    os.makedirs(d, exist_ok=True)
    w = Inotify(d)
    try:
        subprocess.run(["bash", "-c", f"echo 'hello from the mount' > {d}/new"], check=True)
        seqs = wait_for(lambda: [n for n in os.listdir(d) if n.isdigit()], what="published message")
        assert len(seqs) == 1
        assert (d / seqs[0]).read_bytes() == b"hello from the mount\n"
        info = raw.run(raw.js.stream_info(name))
        assert info.state.messages == 1
        assert "new" not in os.listdir(d)
        # inotify: the draft as the kernel saw it, then its name giving way to the message
        w.wait("CLOSE_WRITE", d / "new")
        w.wait("DELETE", d / "new")
        w.wait("CREATE", d / seqs[0])
        # a message published elsewhere is an IN_CREATE too
        seq = publish(raw, f"{p}.is-42", b"from elsewhere\n")
        w.wait("CREATE", d / str(seq))
        w.wait("CLOSE_WRITE", d / str(seq))
        assert (d / str(seq)).read_bytes() == b"from elsewhere\n"
    finally:
        w.stop()


def test_publish_outside_captured_subjects(mnt, raw, stream):
    name, p = stream
    d = mnt.path("streams", name, "other")
    os.makedirs(d, exist_ok=True)
    with pytest.raises(OSError) as e:
        (d / "x").write_bytes(b"nope")
    assert e.value.errno == errno.EINVAL
    assert raw.run(raw.js.stream_info(name)).state.messages == 0


def test_rm_deletes_message(mnt, raw, stream):
    name, p = stream
    seq = publish(raw, f"{p}.x", b"gone soon")
    f = mnt.path("streams", name, p, "x", str(seq))
    wait_for(f.exists, what="message")
    os.unlink(f)
    import nats.js.errors

    with pytest.raises(nats.js.errors.NotFoundError):
        raw.run(raw.js.get_msg(name, seq))


def test_log_and_tail(mnt, raw, stream):
    name, p = stream
    for i in range(3):
        publish(raw, f"{p}.t", f"line {i}\n".encode())
    d = mnt.path("streams", name, p, "t")
    wait_for(lambda: d.exists() and len(os.listdir(d)) == 3, what="three messages")
    assert (d / ".log").read_bytes() == b"line 0\nline 1\nline 2\n"
    assert ".log" not in os.listdir(d)
    tail = subprocess.Popen(["tail", "-n", "+1", "-f", str(d / ".log")], stdout=subprocess.PIPE)
    try:
        publish(raw, f"{p}.t", b"line 3\n")
        got = b""
        assert tail.stdout is not None
        while b"line 3\n" not in got:
            got += os.read(tail.stdout.fileno(), 4096)
        assert got.startswith(b"line 0\n")
    finally:
        tail.kill()
        tail.wait()


def test_oversized_message_is_refused(mnt, raw):
    name = f"BIG{os.getpid()}"
    add_stream(raw, name, ["big.>"], max_msg_size=100)
    try:
        d = mnt.path("streams", name, "big", "x")
        os.makedirs(d, exist_ok=True)
        fd = os.open(d / "m", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError) as e:
            os.write(fd, b"z" * 200)
        assert e.value.errno == errno.EFBIG
        with pytest.raises(OSError) as e:  # the handle is refused for good
            os.close(fd)
        assert e.value.errno == errno.EFBIG
        assert raw.run(raw.js.stream_info(name)).state.messages == 0
    finally:
        raw.run(raw.js.delete_stream(name))


def test_stream_deleted_while_mounted(mnt, raw):
    name = f"GONE{os.getpid()}"
    add_stream(raw, name, ["gone.>"])
    seq = publish(raw, "gone.a", b"soon gone")
    f = mnt.path("streams", name, "gone", "a", str(seq))
    wait_for(f.exists, what="message")
    raw.run(raw.js.delete_stream(name))
    with pytest.raises(OSError) as e:
        f.read_bytes()
    assert e.value.errno in (errno.ENOENT, errno.EIO)
    wait_for(lambda: name not in os.listdir(mnt.path("streams")), what="stream gone from listing")


def test_kv_and_object_streams_are_not_listed(mnt, raw, bucket):
    names = os.listdir(mnt.path("streams"))
    assert not any(n.startswith(("KV_", "OBJ_")) for n in names)


def test_deny_delete_stream(mnt, raw):
    name = f"KEEP{os.getpid()}"
    add_stream(raw, name, ["keep.>"], deny_delete=True)
    try:
        seq = publish(raw, "keep.a", b"forever")
        f = mnt.path("streams", name, "keep", "a", str(seq))
        wait_for(f.exists, what="message")
        with pytest.raises(OSError) as e:
            os.unlink(f)
        assert e.value.errno == errno.EPERM
        assert f.read_bytes() == b"forever"
    finally:
        raw.run(raw.js.delete_stream(name))


def test_log_survives_the_kernel_forgetting_it(mnt, raw, stream):
    name, p = stream
    publish(raw, f"{p}.a", b"x\n")
    d = mnt.path("streams", name, p, "a")
    wait_for(lambda: d.exists() and os.listdir(d), what="message")
    assert (d / ".log").read_bytes() == b"x\n"
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    assert (d / ".log").read_bytes() == b"x\n"
