"""Changes made elsewhere reach the kernel: listings, stat, cat and inotify."""

import asyncio
import errno
import json
import os
import threading

import pytest

from .helpers import Inotify, Mount, wait_for


@pytest.fixture
def watch(mnt, bucket):
    d = mnt.path("kv", bucket)
    assert d.is_dir()
    w = Inotify(d)
    yield d, w
    w.stop()


def test_remote_create_modify_delete_events(raw, bucket, watch):
    d, w = watch
    raw.put(bucket, "job1", b"one")
    w.wait("CREATE", d / "job1")
    assert (d / "job1").read_bytes() == b"one"
    raw.put(bucket, "job1", b"two!")
    w.wait("MODIFY", d / "job1")
    w.wait("CLOSE_WRITE", d / "job1")
    assert (d / "job1").read_bytes() == b"two!"
    assert os.stat(d / "job1").st_size == 4
    raw.delete(bucket, "job1")
    w.wait("DELETE", d / "job1")
    assert "job1" not in os.listdir(d)
    assert not (d / "job1").exists()


def test_remote_create_in_new_subdirectory(raw, bucket, watch):
    d, w = watch
    raw.put(bucket, "is-42.owner", b"ag-7")
    w.wait("CREATE,ISDIR", d / "is-42")
    # inotifywait -r watches a new directory only after it reads its CREATE,
    # so the file's own CREATE may come before that watch, as on any
    # filesystem (mkdir -p a && touch a/f). What must hold: the directory is
    # announced first and the file is there when the watcher looks.
    wait_for(lambda: "owner" in os.listdir(d / "is-42"), 3.0, "owner listed")
    assert (d / "is-42" / "owner").read_bytes() == b"ag-7"
    names = [e[1] for e in w.events]
    if str(d / "is-42" / "owner") in names:
        assert names.index(str(d / "is-42")) < names.index(str(d / "is-42" / "owner"))
    # A local file the watcher reports proves the subdirectory is watched.
    (d / "is-42" / "probe").write_bytes(b"")
    w.wait("CLOSE_WRITE", d / "is-42" / "probe")
    os.unlink(d / "is-42" / "probe")
    w.wait("DELETE", d / "is-42" / "probe")
    raw.purge(bucket, "is-42.owner")
    w.wait("DELETE", d / "is-42" / "owner")
    w.wait("DELETE,ISDIR", d / "is-42")
    assert os.listdir(d) == []


def test_local_writes_have_no_echo(raw, bucket, watch):
    d, w = watch
    (d / "mine").write_bytes(b"local")
    w.wait("CLOSE_WRITE", d / "mine")
    # A later remote change is a barrier: the watch delivers in order, so an
    # echo of the local write would have arrived before this event.
    raw.put(bucket, "barrier", b"x")
    w.wait("CREATE", d / "barrier")
    ev = w.of(d / "mine")
    assert ev.count("CREATE") == 1, ev
    assert ev.count("MODIFY") == 1, ev
    assert ev.count("CLOSE_WRITE,CLOSE") == 1, ev


def test_other_mount_changes_are_seen(mnt, mnt2, bucket):
    a = mnt.path("kv", bucket)
    b = mnt2.path("kv", bucket)
    assert a.is_dir() and b.is_dir()
    w = Inotify(b)
    try:
        (a / "note").write_bytes(b"from mount 1")
        w.wait("CREATE", b / "note")
        assert (b / "note").read_bytes() == b"from mount 1"
        os.unlink(a / "note")
        w.wait("DELETE", b / "note")
    finally:
        w.stop()


def test_listing_is_fresh_without_waiting_for_cache(raw, mnt, bucket):
    d = mnt.path("kv", bucket)
    raw.put(bucket, "k", b"v1")
    wait_for(lambda: "k" in os.listdir(d), what="listed")
    st1 = os.stat(d / "k")
    raw.put(bucket, "k", b"version 2")
    # open() always reads the acknowledged value, whatever the caches hold
    assert (d / "k").read_bytes() == b"version 2"
    assert os.stat(d / "k").st_size == len(b"version 2")
    assert os.stat(d / "k").st_ino == st1.st_ino
    raw.delete(bucket, "k")
    wait_for(lambda: "k" not in os.listdir(d), what="gone from listing")
    with pytest.raises(FileNotFoundError):
        (d / "k").read_bytes()


def test_events_file(raw, mnt, bucket):
    assert mnt.path("kv", bucket).is_dir()
    ev = mnt.path(".hvfs", "events")
    start = os.stat(ev).st_size
    raw.put(bucket, "e1", b"hello")
    raw.delete(bucket, "e1")

    def lines():
        with open(ev, "rb") as f:
            f.seek(start)
            return [json.loads(x) for x in f.read().splitlines() if x]

    got = wait_for(lambda: [x for x in lines() if x["bucket"] == bucket and x["key"] == "e1"] if
                   len([x for x in lines() if x["bucket"] == bucket]) >= 2 else None, what="two events")
    assert [x["op"] for x in got] == ["PUT", "DEL"]
    assert got[0]["size"] == 5 and got[0]["revision"] < got[1]["revision"]


def test_new_bucket_appears(raw, mnt):
    kv = mnt.path("kv")
    w = Inotify(kv)
    try:
        name = f"nb{os.getpid()}"
        raw.create_bucket(name)
        assert (kv / name).is_dir()  # a lookup finds it at once
        raw.put(name, "x", b"1")
        wait_for(lambda: (kv / name / "x").exists(), what="key in new bucket")
    finally:
        w.stop()


def test_ttl_expiry_is_a_delete(raw, mnt):
    name = f"ttl{os.getpid()}"
    raw.create_bucket(name, limit_marker_ttl=1, history=1)
    d = mnt.path("kv", name)
    assert d.is_dir()
    w = Inotify(d)
    try:
        raw.run(raw.kv(name).create("presence", b"ag-7", msg_ttl=1))
        w.wait("CREATE", d / "presence")
        w.wait("DELETE", d / "presence", timeout=6)
        assert "presence" not in os.listdir(d)
    finally:
        w.stop()


def test_non_ascii_keys_and_subjects_do_not_hurt_the_mount(raw, mnt, bucket):
    from .helpers import add_stream, publish

    d = mnt.path("kv", bucket)
    assert d.is_dir()
    raw.run(raw.js.publish(f"$KV.{bucket}.café", b"foreign"))
    wait_for(lambda: "café" in os.listdir(d), what="foreign UTF-8 key listed")
    assert (d / "café").read_bytes() == b"foreign"
    name = f"U{os.getpid()}"
    add_stream(raw, name, ["u.>"])
    try:
        publish(raw, "u.naïve", b"x")
        wait_for(lambda: "naïve" in os.listdir(mnt.path("streams", name, "u")), what="UTF-8 subject")
    finally:
        raw.run(raw.js.delete_stream(name))
    assert b'"connected": true' in mnt.path(".hvfs", "status").read_bytes()


def test_new_file_deleted_elsewhere_before_close_keeps_its_bytes(raw, mnt, bucket):
    d = mnt.path("kv", bucket)
    assert d.is_dir()
    fd = os.open(d / "newkey", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    assert raw.value(bucket, "newkey") == b""  # open(O_CREAT) created the key
    os.write(fd, b"important bytes\n")
    raw.delete(bucket, "newkey")  # the delete is newer than what the handle saw
    with pytest.raises(OSError) as ei:
        os.close(fd)
    assert ei.value.errno == errno.ESTALE
    assert raw.value(bucket, "newkey") is None
    index = mnt.path(".hvfs", "conflicts", "index").read_text()
    [c] = [json.loads(line) for line in index.splitlines() if f'"{bucket}"' in line and '"newkey"' in line]
    assert mnt.path(".hvfs", "conflicts", c["file"]).read_bytes() == b"important bytes\n"


def test_read_only_mount_still_reports_remote_modifies(server, raw, bucket, tmp_path):
    from .helpers import Mount

    raw.put(bucket, "k", b"v1")
    m = Mount(tmp_path / "ro", server.url, "--read-only").start()
    try:
        d = m.path("kv", bucket)
        wait_for((d / "k").exists, what="k")
        w = Inotify(d)
        try:
            raw.put(bucket, "k", b"v2, longer")
            w.wait("MODIFY", d / "k")
        finally:
            w.stop()
    finally:
        m.stop()


def _storm(raw, bucket: str, n: int) -> None:
    async def go() -> None:
        import asyncio

        sem = asyncio.Semaphore(256)

        async def one(i: int) -> None:
            async with sem:
                await raw.js.publish(f"$KV.{bucket}.k{i % (n // 2)}", f"v{i}".encode())

        await asyncio.gather(*(one(i) for i in range(n)))

    raw.run(go(), timeout=60)


def _notifier(mnt) -> dict:
    return json.loads(mnt.path(".hvfs", "status").read_text())["notifier"]


def test_storm_nobody_watches_is_invalidated_only(raw, mnt, bucket):
    """A storm in a directory nobody watches: the kernel forgets what changed (listings,
    sizes, contents are right) without a round trip per change."""
    d = mnt.path("kv", bucket)
    raw.put(bucket, "k0", b"before")
    wait_for(lambda: (d / "k0").read_bytes() == b"before", what="k0 cached")
    os.stat(d / "k0")  # the kernel holds its inode and attributes
    before = _notifier(mnt)["unwatched"]
    _storm(raw, bucket, 2000)
    wait_for(lambda: _notifier(mnt)["queue"] == 0 and len(os.listdir(d)) == 1000, timeout=30,
             what="the storm heard")
    assert _notifier(mnt)["unwatched"] > before
    last = {f"k{i % 1000}": f"v{i}".encode() for i in range(2000)}
    for name in ("k0", "k1", "k500", "k999"):
        assert (d / name).read_bytes() == last[name]
        assert os.stat(d / name).st_size == len(last[name])


def test_storm_with_a_watcher_misses_no_event(raw, mnt, bucket):
    d = mnt.path("kv", bucket)
    w = Inotify(d)
    try:
        _storm(raw, bucket, 600)
        for i in (0, 150, 299):
            w.wait("CREATE", d / f"k{i}", timeout=30)
        wait_for(lambda: _notifier(mnt)["queue"] == 0, timeout=30, what="queue drained")
        assert {p for e, p in w.events if "CREATE" in e} >= {str(d / f"k{i}") for i in range(300)}
    finally:
        w.stop()


def test_a_mount_starting_during_writes_misses_none(server, raw, tmp_path):
    """The snapshot is read by a consumer of its own and an ordered consumer follows from
    the next sequence: writes, deletes and new keys made while a mount starts and reads
    20,000 keys all reach its index (hvfs.store.natssubs.KvWatch)."""
    bucket = f"snapwrites_{os.getpid()}"
    raw.create_bucket(bucket, history=1)
    kv = raw.kv(bucket)

    async def fill() -> None:
        for i in range(0, 20_000, 1000):
            await asyncio.gather(*(kv.put(f"k{j}", b"x%d" % j) for j in range(i, i + 1000)))

    raw.run(fill(), timeout=120)
    stop = threading.Event()
    done: list[int] = []

    def churn() -> None:
        i = 0
        while not stop.is_set() or i < 300:
            raw.put(bucket, f"k{i % 20_000}", b"new %d" % i)  # new revisions of old keys
            raw.put(bucket, f"late{i}", b"late")  # keys the snapshot cannot have
            if i % 10 == 0:
                raw.delete(bucket, f"k{(i * 7) % 20_000}")
            i += 1
        done.append(i)

    t = threading.Thread(target=churn)
    t.start()
    m = Mount(tmp_path / "m", server.url)
    try:
        m.start()
        wait_for(lambda: (m.path("kv", bucket) / "late5").exists(), timeout=30, what="a late key")
        stop.set()
        t.join(60)
        assert done, "the writer failed"

        async def state() -> dict[str, int]:
            w = await kv.watchall(ignore_deletes=True)
            out: dict[str, int] = {}
            async for e in w:
                if e is None:
                    break
                out[e.key] = e.revision
            await w.stop()
            return out

        want = raw.run(state(), timeout=60)

        def same() -> bool:
            return sorted(os.listdir(m.path("kv", bucket))) == sorted(want)

        wait_for(same, timeout=30, what="the mount's listing to equal the bucket's keys")
        for key in ("k0", "k299", f"late{done[0] - 1}"):
            if key in want:
                assert int(os.getxattr(m.path("kv", bucket, key), "user.hvfs.revision")) == want[key]
    finally:
        stop.set()
        t.join(60)
        m.stop()


def test_changes_where_the_kernel_holds_nothing_need_no_work(raw, mnt, bucket):
    """A change in a directory the kernel holds no reference to is not repeated to it:
    nothing can be cached or watched there. Whoever looks later sees the index."""
    d = mnt.path("kv", bucket)
    raw.put(bucket, "a.b.k", b"one")
    wait_for(lambda: "a" in os.listdir(d), what="a listed")  # the kernel holds a, not a/b
    before = _notifier(mnt)["unheld"]
    raw.put(bucket, "a.b.k", b"two")
    raw.put(bucket, "a.b.new", b"n")
    wait_for(lambda: _notifier(mnt)["unheld"] >= before + 2, what="two changes needing nothing")
    assert (d / "a" / "b" / "k").read_bytes() == b"two"
    assert sorted(os.listdir(d / "a" / "b")) == ["k", "new"]
    w = Inotify(d / "a" / "b")  # now it holds a/b: changes there are told
    try:
        raw.put(bucket, "a.b.k", b"three")
        w.wait("MODIFY", d / "a" / "b" / "k")
        raw.put(bucket, "a.b.more", b"m")
        w.wait("CREATE", d / "a" / "b" / "more")
    finally:
        w.stop()
    assert (d / "a" / "b" / "k").read_bytes() == b"three"
