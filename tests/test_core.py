"""Tier 2: the filesystem's logic (Core) against a real nats-server, no kernel."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import pytest
import trio

from hvfs.config import ConnectOptions
from hvfs.errors import Conflict, Exists, NotFound, errno_of
from hvfs.store.nats import NatsStore
from hvfs.vfs.core import Core


def run_core(url: str, fn: Callable[[Core, NatsStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = NatsStore(ConnectOptions(servers=[url], timeout=2.0))
        await store.start()
        core = Core(store)
        try:
            await core.start()
            await fn(core, store)
        finally:
            await core.close()
            await store.close()

    trio.run(main)


async def bucket_dir(core: Core, bucket: str) -> int:
    kv = await core.lookup(1, b"kv")
    return (await core.lookup(kv.ino, bucket.encode())).ino


async def write_file(core: Core, parent: int, name: bytes, data: bytes) -> None:
    h = await core.create(parent, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    await core.write(h.fh, 0, data)
    await core.flush(h.fh, final=True)
    core.release(h.fh)


def test_create_read_update(server, raw, bucket):
    async def body(core: Core, store: NatsStore) -> None:
        d = await bucket_dir(core, bucket)
        await write_file(core, d, b"owner.yml", b"agent: ag-7\n")
        assert raw.value(bucket, "owner=2Eyml") == b"agent: ag-7\n"
        node = await core.lookup(d, b"owner.yml")
        h = await core.open(node.ino, os.O_RDONLY)
        assert await core.read(h.fh, 0, 100) == b"agent: ag-7\n"
        core.release(h.fh)
        assert (await core.getxattr(node.ino, b"user.hvfs.key")) == b"owner=2Eyml"

    run_core(server.url, body)


def test_lost_cas_keeps_the_bytes(server, raw, bucket):
    async def body(core: Core, store: NatsStore) -> None:
        raw.put(bucket, "k", b"v1")
        d = await bucket_dir(core, bucket)
        node = await core.lookup(d, b"k")
        h = await core.open(node.ino, os.O_RDWR)
        await core.write(h.fh, 0, b"mine")
        raw.put(bucket, "k", b"theirs")
        with pytest.raises(Conflict) as e:
            await core.flush(h.fh)
        assert errno_of(e.value) == errno.ESTALE
        core.release(h.fh)
        assert raw.value(bucket, "k") == b"theirs"
        [c] = [c for c in core.conflicts.items.values() if c.bucket == bucket]
        assert c.data == b"mine"
        assert c.current_revision is not None and c.current_revision > c.base_revision

    run_core(server.url, body)


def test_exclusive_create_is_a_claim(server, raw, bucket):
    async def body(core: Core, store: NatsStore) -> None:
        d = await bucket_dir(core, bucket)
        raw.put(bucket, "claim", b"other agent")
        with pytest.raises(Exists):
            # the index may not know yet: the claim itself is refused by NATS
            await core.create(d, b"claim", os.O_WRONLY | os.O_CREAT | os.O_EXCL)

    run_core(server.url, body)


def test_revision_view_and_rename(server, raw, bucket):
    async def body(core: Core, store: NatsStore) -> None:
        r1 = raw.put(bucket, "a", b"one")
        raw.put(bucket, "a", b"two")
        d = await bucket_dir(core, bucket)
        old = await core.lookup(d, f"a@{r1}".encode())
        h = await core.open(old.ino, os.O_RDONLY)
        assert await core.read(h.fh, 0, 10) == b"one"
        core.release(h.fh)
        with pytest.raises(Conflict):
            await core.open(old.ino, os.O_WRONLY | os.O_TRUNC)
        with pytest.raises(NotFound):
            await core.lookup(d, b"a@999999")
        await core.rename(d, b"a", d, b"b", 0)
        assert raw.value(bucket, "a") is None
        assert raw.value(bucket, "b") == b"two"

    run_core(server.url, body)
