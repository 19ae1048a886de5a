"""obj/: the NATS Object Store through real mounts, driven by real syscalls and tools (issue 15).

Every object written here is checked from outside with nats-py's own object store
client (which verifies the digest), and objects nats-py writes are read through the
mount. Servers and mounts are the session's (conftest) unless a test stops its own.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import random
import subprocess
import threading
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from nats.js.api import ObjectStoreConfig

from hvfs.server import EmbeddedServer
from hvfs.store.base import sha256_digest

from .helpers import Inotify, Mount, RawNats, wait_for

MiB = 1 << 20
_n = itertools.count()


def fresh_bucket(raw: RawNats, **kw: Any) -> str:
    name = f"o{os.getpid()}_{next(_n)}"
    raw.run(raw.js.create_object_store(name, config=ObjectStoreConfig(**kw)))
    return name


def obs(raw: RawNats, bucket: str) -> Any:
    return raw.run(raw.js.object_store(bucket))


def raw_get(raw: RawNats, bucket: str, name: str) -> bytes | None:
    """The object as nats-py reads it (digest checked by nats-py); None if there is none."""
    try:
        return bytes(raw.run(obs(raw, bucket).get(name), timeout=60).data or b"")
    except nats.js.errors.ObjectNotFoundError:
        return None


def raw_put(raw: RawNats, bucket: str, name: str, data: bytes) -> Any:
    return raw.run(obs(raw, bucket).put(name, data), timeout=60)


def digest(data: bytes) -> str:
    return sha256_digest(hashlib.sha256(data).digest())


def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, name).decode()


def seen(mnt: Mount, bucket: str) -> Path:
    d = mnt.path("obj", bucket)
    wait_for(d.is_dir, 5, f"obj/{bucket} on {mnt.mountpoint}")
    return d


def test_small_and_50mib_objects(mnt: Mount, raw: RawNats, tmp_path: Path) -> None:
    b = f"mk{os.getpid()}"
    os.mkdir(mnt.path("obj", b))  # mkdir obj/NAME makes an object store bucket
    assert raw.run(raw.js.object_store(b)) is not None
    d = mnt.path("obj", b)
    subprocess.run(f"printf 'hello objects\\n' > {d}/note.txt", shell=True, check=True)
    assert raw_get(raw, b, "note.txt") == b"hello objects\n"
    assert (d / "note.txt").read_bytes() == b"hello objects\n"
    big = os.urandom(50 * MiB)
    src = tmp_path / "big"
    src.write_bytes(big)
    os.makedirs(d / "builds" / "42")
    subprocess.run(["cp", str(src), str(d / "builds" / "42" / "app.bin")], check=True)
    assert raw_get(raw, b, "builds/42/app.bin") == big  # a name with / is directories here
    st = os.stat(d / "builds" / "42" / "app.bin")
    assert st.st_size == len(big)
    assert xattr(d / "builds" / "42" / "app.bin", "user.hvfs.digest") == digest(big)
    assert xattr(d / "builds" / "42" / "app.bin", "user.hvfs.writer") == "mnt-a"
    assert subprocess.run(["cmp", str(src), str(d / "builds" / "42" / "app.bin")]).returncode == 0
    assert sorted(os.listdir(d)) == ["builds", "note.txt"]


def test_partial_reads_at_random_offsets(mnt: Mount, raw: RawNats) -> None:
    b = fresh_bucket(raw)
    data = os.urandom(50 * MiB + 12345)
    raw_put(raw, b, "logs/run.log", data)  # nats-py's chunks: no per-chunk digest
    p = seen(mnt, b) / "logs" / "run.log"
    wait_for(p.exists, 5, "the object")
    rnd = random.Random(15)
    fd = os.open(p, os.O_RDONLY)
    try:
        for _ in range(200):
            off = rnd.randrange(0, len(data) + 10)
            n = rnd.choice([1, 100, 4096, 128 * 1024, 300_000, 2 * MiB])
            assert os.pread(fd, n, off) == data[off:off + n], (off, n)
    finally:
        os.close(fd)
    assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert xattr(p, "user.hvfs.digest") == digest(data)


def test_content_is_fixed_at_open(mnt: Mount, raw: RawNats) -> None:
    """A reader reads the object it opened, or fails with ESTALE once a writer elsewhere has
    replaced it (the object store keeps no history: the old chunks are purged): never a mix."""
    b = fresh_bucket(raw)
    one = os.urandom(3 * MiB)
    raw_put(raw, b, "x", one)
    p = seen(mnt, b) / "x"
    wait_for(p.exists, 5, "the object")
    fd = os.open(p, os.O_RDONLY)
    try:
        head = os.read(fd, 256 * 1024)
        raw_put(raw, b, "x", b"replaced")
        rest = b""
        try:
            while chunk := os.read(fd, MiB):
                rest += chunk
        except OSError as e:
            assert e.errno == errno.ESTALE
            assert one.startswith(head + rest)
        else:
            assert head + rest == one
    finally:
        os.close(fd)
    assert p.read_bytes() == b"replaced"


def test_replace_with_a_concurrent_writer(mnt: Mount, mnt2: Mount, raw: RawNats) -> None:
    b = fresh_bucket(raw)
    raw_put(raw, b, "shared.bin", b"original")
    p1, p2 = seen(mnt, b) / "shared.bin", seen(mnt2, b) / "shared.bin"
    wait_for(lambda: p1.exists() and p2.exists(), 5, "the object on both mounts")
    fd1 = os.open(p1, os.O_WRONLY | os.O_TRUNC)
    fd2 = os.open(p2, os.O_WRONLY | os.O_TRUNC)
    mine, theirs = os.urandom(2 * MiB), os.urandom(MiB)
    os.write(fd1, mine)
    os.write(fd2, theirs)
    os.close(fd1)  # first close wins
    with pytest.raises(OSError) as e:
        os.close(fd2)
    assert e.value.errno == errno.ESTALE
    assert raw_get(raw, b, "shared.bin") == mine
    index = mnt2.path(".hvfs", "conflicts", "index").read_text().splitlines()
    entry = json.loads(index[-1])
    assert entry["bucket"] == b
    kept = mnt2.path(".hvfs", "conflicts", entry["file"]).read_bytes()
    assert kept == theirs
    wait_for(lambda: p2.stat().st_size == len(mine), 5, "the winner on the second mount")
    assert p2.read_bytes() == mine


def test_exclusive_create_claims_the_name(mnt: Mount, mnt2: Mount, raw: RawNats) -> None:
    b = fresh_bucket(raw)
    d1, d2 = seen(mnt, b), seen(mnt2, b)
    fd = os.open(d1 / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with pytest.raises(FileExistsError):
            os.open(d2 / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, b"winner")
    finally:
        os.close(fd)
    assert raw_get(raw, b, "lock") == b"winner"


def test_raw_put_and_delete_reach_inotify(mnt: Mount, raw: RawNats) -> None:
    b = fresh_bucket(raw)
    d = seen(mnt, b)
    ino = Inotify(d)
    try:
        raw_put(raw, b, "shot.png", b"\x89PNG" + os.urandom(1000))
        ino.wait("CREATE", d / "shot.png")
        assert "shot.png" in os.listdir(d)
        raw_put(raw, b, "shot.png", b"\x89PNG again")
        ino.wait("MODIFY", d / "shot.png")
        assert (d / "shot.png").read_bytes() == b"\x89PNG again"
        raw_put(raw, b, "a/b/deep.txt", b"deep")
        ino.wait("CREATE,ISDIR", d / "a")
        wait_for(lambda: (d / "a" / "b" / "deep.txt").exists(), 5, "the deep object")
        raw.run(obs(raw, b).delete("shot.png"))
        ino.wait("DELETE", d / "shot.png")
        assert "shot.png" not in os.listdir(d)
    finally:
        ino.stop()


def test_rm_mv_and_at_rev(mnt: Mount, raw: RawNats) -> None:
    b, other = fresh_bucket(raw), fresh_bucket(raw)
    data = os.urandom(300_000)
    raw_put(raw, b, "a.bin", data)
    d = seen(mnt, b)
    seen(mnt, other)
    wait_for((d / "a.bin").exists, 5, "the object")
    os.makedirs(d / "moved")
    os.rename(d / "a.bin", d / "moved" / "b.bin")  # within the bucket: no copy
    assert raw_get(raw, b, "a.bin") is None
    assert raw_get(raw, b, "moved/b.bin") == data
    assert (d / "moved" / "b.bin").read_bytes() == data
    with pytest.raises(OSError) as e:
        os.rename(d / "moved" / "b.bin", mnt.path("obj", other, "b.bin"))
    assert e.value.errno == errno.EXDEV  # mv copies across buckets by itself
    subprocess.run(["mv", str(d / "moved" / "b.bin"), str(mnt.path("obj", other, "b.bin"))], check=True)
    assert raw_get(raw, other, "b.bin") == data and raw_get(raw, b, "moved/b.bin") is None
    rev = xattr(mnt.path("obj", other, "b.bin"), "user.hvfs.revision")
    with pytest.raises(FileNotFoundError):  # no history: FILE@REV does not exist for objects
        mnt.path("obj", other, f"b.bin@{rev}").read_bytes()
    os.unlink(mnt.path("obj", other, "b.bin"))
    assert raw_get(raw, other, "b.bin") is None
    assert not mnt.path("obj", other, "b.bin").exists()


def test_over_the_bucket_limit_is_efbig_and_stores_nothing(mnt: Mount, raw: RawNats) -> None:
    b = fresh_bucket(raw, max_bytes=MiB)
    p = seen(mnt, b) / "too-big.bin"
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    written = 0
    try:
        with pytest.raises(OSError) as e:
            while True:
                written += os.write(fd, b"x" * 65536)
        assert e.value.errno == errno.EFBIG
        assert written <= MiB
    finally:
        with pytest.raises(OSError):
            os.close(fd)  # the handle failed: its close says so
    assert raw_get(raw, b, "too-big.bin") is None
    errors = mnt.path(".hvfs", "errors").read_text()
    assert "max bytes" in errors


def test_corrupted_object_is_eio_never_bytes(mnt: Mount, raw: RawNats) -> None:
    b = fresh_bucket(raw)
    data = os.urandom(100_000)
    raw_put(raw, b, "bad.bin", data)
    subj = f"$O.{b}.M." + __import__("base64").urlsafe_b64encode(b"bad.bin").decode()
    m = raw.run(raw.js.get_last_msg(f"OBJ_{b}", subj))
    doc = json.loads(m.data)
    doc["digest"] = digest(b"not these bytes")
    raw.run(raw.js.publish(subj, json.dumps(doc).encode(), headers={"Nats-Rollup": "sub"}))
    p = seen(mnt, b) / "bad.bin"
    wait_for(p.exists, 5, "the object")
    r = subprocess.run(["cat", str(p)], capture_output=True)
    assert r.returncode != 0 and r.stdout == b""  # EIO, and not one byte
    assert "Input/output error" in r.stderr.decode()
    assert "does not match its digest" in mnt.path(".hvfs", "errors").read_text()


def test_nats_gone_mid_write_leaves_no_object(own_server: EmbeddedServer, tmp_path: Path) -> None:
    raw = RawNats(own_server.url)
    try:
        b = fresh_bucket(raw)
        raw_put(raw, b, "keep.bin", b"old content")
    finally:
        raw.close()
    m = Mount(tmp_path / "m", own_server.url, "--timeout", "1").start()
    port, store_dir = own_server.port, own_server.store_dir
    again: EmbeddedServer | None = None
    try:
        p = seen(m, b) / "keep.bin"
        fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
        for _ in range(40):
            os.write(fd, os.urandom(MiB))
        watcher = RawNats(own_server.url)
        stopped = threading.Event()

        def stop_when_chunks_arrive() -> None:
            try:
                wait_for(lambda: watcher.run(watcher.js.stream_info(f"OBJ_{b}")).state.bytes > 4 * MiB,
                         30, "chunks arriving")
            finally:
                watcher.close()
                own_server.stop()
                stopped.set()

        t = threading.Thread(target=stop_when_chunks_arrive)
        t.start()
        with pytest.raises(OSError) as e:
            os.close(fd)  # the put is under way when NATS goes
        assert e.value.errno in (errno.EIO, errno.ETIMEDOUT)
        t.join(60)
        assert stopped.is_set()
        again = EmbeddedServer(store_dir, port=port)
        again.start()
        raw = RawNats(again.url)
        try:
            assert raw_get(raw, b, "keep.bin") == b"old content"  # nothing half-written shows
        finally:
            raw.close()
    finally:
        m.stop()
        if again is not None:
            again.stop()


# -- tier 2: the vfs on the in-memory store (no kernel, no server) -------------------------

import trio  # noqa: E402

from hvfs.errors import errno_of  # noqa: E402
from hvfs.store.memory import MemoryStore  # noqa: E402
from hvfs.vfs.core import Core  # noqa: E402
from hvfs.vfs.objects import KEPT, ObjHandle, key_of, name_of  # noqa: E402

PID = os.getpid()


def in_memory(body: Any, **bucket: Any) -> None:
    """``body(core, store, dir_ino)`` with object bucket ``ob`` shown at obj/ob."""

    async def main() -> None:
        store = MemoryStore()
        store.add_obj_bucket("ob", **bucket)
        await store.start()
        core = Core(store)
        try:
            with trio.fail_after(20):
                await core.start()
                obj = await core.lookup(1, b"obj", PID)
                d = await core.lookup(obj.ino, b"ob", PID)
                await body(core, store, d.ino)
        finally:
            await core.close()
            await store.close()

    trio.run(main)


async def put_file(core: Core, d: int, name: bytes, data: bytes) -> None:
    h = await core.create(d, name, os.O_WRONLY | os.O_CREAT, PID)
    for off in range(0, len(data), 1 << 20):
        await core.write(h.fh, off, data[off:off + (1 << 20)])
    await core.flush(h.fh)
    core.release(h.fh)


async def read_all(core: Core, fh: int, step: int = 1 << 20) -> bytes:
    out, off = bytearray(), 0
    while chunk := await core.read(fh, off, step):
        out += chunk
        off += len(chunk)
    return bytes(out)


def test_names_map_both_ways() -> None:
    for name in ["a", "a/b.log", "is-42/shot 1.png", "ü/x=y"]:
        key = key_of(name)
        assert key is not None and name_of(key) == name
    assert [key_of(n) for n in ["a//b", "/a", "a/", "./x", "a/..", "x" * 256]] == [None] * 6


def test_vfs_reads_by_window_with_flat_memory() -> None:
    data = os.urandom(5 * MiB + 777)

    async def body(core: Core, store: MemoryStore, d: int) -> None:
        await put_file(core, d, b"big", data)
        node = await core.lookup(d, b"big", PID)
        h = await core.open(node.ino, os.O_RDONLY, PID)
        assert isinstance(h, ObjHandle)
        assert await read_all(core, h.fh, 128 * 1024) == data
        assert len(h.chunks) <= KEPT and h.hashed == h.info.chunks  # type: ignore[union-attr]
        rnd = random.Random(7)
        for _ in range(50):
            off, n = rnd.randrange(len(data)), rnd.choice([1, 5000, 300_000])
            assert await core.read(h.fh, off, n) == data[off:off + n]
        core.release(h.fh)
        attrs = await core.xattrs(node, PID)
        assert attrs[b"user.hvfs.digest"] == digest(data).encode()
        assert attrs[b"user.hvfs.object"] == b"big"

    in_memory(body)


def test_vfs_corrupt_chunk_is_eio_at_any_offset() -> None:
    data = os.urandom(600 * 1024)

    async def body(core: Core, store: MemoryStore, d: int) -> None:
        await put_file(core, d, b"x", data)
        store.corrupt_chunk("ob", "x", 2, b"Y" * (128 * 1024))
        node = await core.lookup(d, b"x", PID)
        h = await core.open(node.ino, os.O_RDONLY, PID)
        assert await core.read(h.fh, 0, 1000) == data[:1000]  # chunk 0 is sound
        with pytest.raises(Exception) as e:
            await core.read(h.fh, 2 * 128 * 1024 + 5, 10)
        assert errno_of(e.value) == errno.EIO and "digest" in str(e.value)
        core.release(h.fh)

    in_memory(body)


def test_vfs_efbig_at_the_first_write_past_max_bytes() -> None:
    async def body(core: Core, store: MemoryStore, d: int) -> None:
        h = await core.create(d, b"big", os.O_WRONLY | os.O_CREAT, PID)
        await core.write(h.fh, 0, b"x" * 200_000)
        with pytest.raises(Exception) as e:
            await core.write(h.fh, 200_000, b"x" * 200_000)
        assert errno_of(e.value) == errno.EFBIG
        with pytest.raises(Exception) as e:
            await core.flush(h.fh)
        assert errno_of(e.value) == errno.EFBIG
        core.release(h.fh)
        assert await store.obj_list("ob") == []  # the empty object the create made is gone

    in_memory(body, max_bytes=300_000)


def test_vfs_content_addressed_incoming() -> None:
    from hvfs.vfs.blobs import BlobsProvider

    shot = b"\x89PNG" + os.urandom(300_000)

    async def body(core: Core, store: MemoryStore, d: int) -> None:
        blobs = BlobsProvider(core.sv, None)
        await blobs.bind(core.tree.mkdirs("blobs"), "ob")
        root = await core.lookup(1, b"blobs", PID)
        inc = await core.lookup(root.ino, b"incoming", PID)
        issue = await core.mkdir(inc.ino, b"is-42", PID)
        h = await core.create(issue.ino, b"shot.png", os.O_WRONLY | os.O_CREAT, PID)
        await core.write(h.fh, 0, shot)
        await core.flush(h.fh)
        core.release(h.fh)
        name = hashlib.sha256(shot).hexdigest()
        assert b"shot.png" not in dict(await core.readdir(issue.ino, PID))  # renamed to its hash
        blob = await core.lookup(root.ino, name.encode(), PID)
        h = await core.open(blob.ino, os.O_RDONLY, PID)
        assert await read_all(core, h.fh) == shot
        core.release(h.fh)
        attrs = await core.xattrs(blob, PID)
        assert attrs[b"user.hvfs.meta.issue"] == b"is-42"
        assert attrs[b"user.hvfs.meta.type"] == b"image/png"
        assert attrs[b"user.hvfs.meta.name"] == b"shot.png"
        assert attrs[b"user.hvfs.digest"] == digest(shot).encode()
        assert b"user.hvfs.meta.time" in attrs
        assert b"user.hvfs.meta.issue" in core.xattr_names(blob)
        # The same bytes again: stored once; a blob is never written in place.
        h = await core.create(inc.ino, b"again.png", os.O_WRONLY | os.O_CREAT, PID)
        await core.write(h.fh, 0, shot)
        await core.flush(h.fh)
        core.release(h.fh)
        assert [i.name for i in await store.obj_list("ob")] == [name]
        with pytest.raises(Exception) as e:
            await core.open(blob.ino, os.O_WRONLY, PID)
        assert errno_of(e.value) == errno.EPERM
        await core.unlink(root.ino, name.encode(), PID)
        assert await store.obj_list("ob") == []

    in_memory(body)


def test_vfs_read_modify_write_append_truncate_rename() -> None:
    base = os.urandom(300_000)

    async def body(core: Core, store: MemoryStore, d: int) -> None:
        await put_file(core, d, b"f", base)
        node = await core.lookup(d, b"f", PID)
        h = await core.open(node.ino, os.O_WRONLY, PID)  # no O_TRUNC: the current bytes first
        await core.write(h.fh, 10, b"XYZ")
        assert core.size_of(node) == len(base)
        await core.flush(h.fh)
        core.release(h.fh)
        want = base[:10] + b"XYZ" + base[13:]
        info = await store.obj_info("ob", "f")
        assert b"".join(await store.obj_read(info, 0, 10)) == want
        h = await core.open(node.ino, os.O_WRONLY | os.O_APPEND, PID)
        await core.write(h.fh, 0, b"tail")  # O_APPEND: at the end whatever the offset
        await core.flush(h.fh)
        core.release(h.fh)
        want += b"tail"
        await core.set_size(node.ino, 5, None)  # truncate(path)
        info = await store.obj_info("ob", "f")
        assert b"".join(await store.obj_read(info, 0, 10)) == want[:5]
        sub = await core.mkdir(d, b"sub", PID)
        await core.rename(d, b"f", sub.ino, b"g", 0)
        moved = await store.obj_info("ob", "sub/g")
        assert moved.nuid == info.nuid and moved.size == 5
        with pytest.raises(Exception) as e:
            await store.obj_info("ob", "f")
        assert errno_of(e.value) == errno.ENOENT

    in_memory(body)


def test_vfs_changes_by_another_client_reach_the_tree() -> None:
    async def body(core: Core, store: MemoryStore, d: int) -> None:
        peer = store.peer()
        await peer.start()
        seen: list[tuple[bytes, str]] = []
        told = trio.Event()

        def listen(parent: Any, name: bytes, node: Any, what: str) -> None:
            nonlocal told
            seen.append((name, what))
            told.set()

        async def until_told(what: tuple[bytes, str]) -> None:
            nonlocal told
            with trio.fail_after(2):
                while what not in seen:
                    told = trio.Event()
                    await told.wait()

        core.tree.listeners.append(listen)
        path = tempfile_with(b"from elsewhere")
        info = await peer.obj_put("ob", "dir/new.txt", path, 0)
        await until_told((b"new.txt", "create"))
        sub = await core.lookup(d, b"dir", PID)
        node = await core.lookup(sub.ino, b"new.txt", PID)
        assert node.revision == info.revision and node.size == len(b"from elsewhere")
        await peer.obj_delete("ob", "dir/new.txt")
        await until_told((b"new.txt", "delete"))
        await peer.close()
        os.unlink(path)

    in_memory(body)


def tempfile_with(data: bytes) -> str:
    import tempfile

    fd, p = tempfile.mkstemp(prefix="hvfs-obj-test-")
    os.write(fd, data)
    os.close(fd)
    return p


def test_content_addressed_binding_on_a_mount(server: EmbeddedServer, raw: RawNats, tmp_path: Path) -> None:
    """``storage: object`` + ``content_addressed: true``: a file written into incoming/ is stored
    under its SHA-256 with its metadata, and leaves incoming/."""
    bucket = f"blobs{os.getpid()}"
    cfg = tmp_path / "blobs.yml"
    cfg.write_text(f"bindings:\n  - path: blobs\n    bucket: {bucket}\n    storage: object\n"
                   "    content_addressed: true\n")
    m = Mount(tmp_path / "m", server.url, "--config", str(cfg), "--writer", "ag-7").start()
    try:
        inc = m.path("blobs", "incoming")
        assert inc.is_dir()
        os.mkdir(inc / "is-42")
        shot = b"\x89PNG" + os.urandom(3 * MiB)
        src = tmp_path / "shot.png"
        src.write_bytes(shot)
        ino = Inotify(m.path("blobs"))
        try:
            subprocess.run(["cp", str(src), str(inc / "is-42" / "shot.png")], check=True)
            # once close() has returned, the name has left incoming/ for every later call
            assert not (inc / "is-42" / "shot.png").exists()
            assert "shot.png" not in os.listdir(inc / "is-42")
            name = hashlib.sha256(shot).hexdigest()
            blob = m.path("blobs", name)
            ino.wait("CREATE", blob)
        finally:
            ino.stop()
        assert blob.read_bytes() == shot
        assert raw_get(raw, bucket, name) == shot
        info = raw.run(obs(raw, bucket).get_info(name))
        assert info.digest == digest(shot)
        assert xattr(blob, "user.hvfs.meta.issue") == "is-42"
        assert xattr(blob, "user.hvfs.meta.type") == "image/png"
        assert xattr(blob, "user.hvfs.meta.name") == "shot.png"
        assert xattr(blob, "user.hvfs.digest") == digest(shot)
        with pytest.raises(PermissionError):
            blob.write_bytes(b"other")  # a blob never changes
        subprocess.run(["cp", str(src), str(inc / "again.png")], check=True)  # the same bytes: once
        wait_for(lambda: not (inc / "again.png").exists(), 5, "the second copy stored")
        assert sorted(p.name for p in m.path("blobs").iterdir()) == sorted([name, "incoming"])
        os.unlink(blob)
        assert raw_get(raw, bucket, name) is None
    finally:
        m.stop()


def test_object_bindings_in_the_config() -> None:
    """``storage: object`` entries of ``bindings:`` are object bindings; KV code never sees them."""
    from hvfs.config import MountConfig

    c = MountConfig.model_validate({"bindings": [
        {"path": "blobs", "bucket": "tbd-blobs", "storage": "object", "content_addressed": True},
        {"path": "logs", "kv": "logs", "storage": "object"},
        {"path": "issues", "kv": "fleet_issues"}]})
    assert [(o.path, o.bucket, o.content_addressed) for o in c.objects] == [
        ("blobs", "tbd-blobs", True), ("logs", "logs", False)]
    assert [b.path for b in c.bindings] == ["issues"]
    with pytest.raises(ValueError, match="raw view's obj/"):
        MountConfig.model_validate({"bindings": [{"path": "obj/x", "bucket": "x", "storage": "object"}]})
