"""The write-policy chain: links in order to the store, in reverse back; a refusal
fails the write with its errno and keeps the bytes. Pure, then the vfs on MemoryStore."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from hvfs.errors import Invalid, NotFound, errno_of
from hvfs.store.memory import MemoryStore
from hvfs.vfs.core import Vfs
from hvfs.vfs.policy import Link, Publish, WritePolicy
from hvfs.vfs.tree import Kind, Node

PID = 4242


class Upper(Link):
    """A toy codec: stored upper-case, shown lower-case."""

    async def on_write(self, node: Node, p: Publish) -> Publish:
        return Publish(p.value.upper(), p.ttl, p.headers)

    def on_read(self, node: Node, value: bytes) -> bytes:
        return value.lower()


class Framed(Link):
    """A toy second link: stored between brackets."""

    async def on_write(self, node: Node, p: Publish) -> Publish:
        return Publish(b"[" + p.value + b"]", p.ttl, p.headers)

    def on_read(self, node: Node, value: bytes) -> bytes:
        return value[1:-1] if value.startswith(b"[") else value


class NoX(Link):
    """A toy schema: a value holding 'x' is refused."""

    async def on_write(self, node: Node, p: Publish) -> Publish:
        if b"x" in p.value:
            raise Invalid("no x allowed")
        return p


def test_links_run_in_order_and_back_in_reverse():
    pol = WritePolicy([Upper(), Framed()])
    node = Node(9, Kind.KV, b"f", None)
    assert trio.run(pol.on_write, node, b"ab").value == b"[AB]"
    assert pol.on_read(node, b"[AB]") == b"ab"
    assert trio.run(WritePolicy().on_write, node, b"raw").value == b"raw" and not WritePolicy()


def _run(body) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        store = MemoryStore()
        await store.start()
        store.add_bucket("p")
        vfs = Vfs(store)
        await vfs.start()
        try:
            root = vfs.tree.mkdirs("typed")
            await vfs.kv.bind(root, "p", policy=WritePolicy([NoX(), Upper(), Framed()]))
            with trio.fail_after(5):
                await body(vfs, store, root)
        finally:
            await vfs.close()
            await store.close()

    trio.run(main)


def test_a_binding_stores_through_its_chain_and_shows_through_it_back():
    async def body(vfs: Vfs, store: MemoryStore, root: Node) -> None:
        h = await vfs.create(root.ino, b"f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PID)
        await vfs.write(h.fh, 0, b"hello")
        await vfs.flush(h.fh)
        vfs.release(h.fh)
        assert (await store.get("p", "f")).value == b"[HELLO]"
        r = await vfs.open((await vfs.lookup(root.ino, b"f", PID)).ino, os.O_RDONLY, PID)
        assert await vfs.read(r.fh, 0, 100) == b"hello"
        vfs.release(r.fh)

    _run(body)


def test_a_refusing_link_fails_the_write_and_keeps_the_bytes():
    async def body(vfs: Vfs, store: MemoryStore, root: Node) -> None:
        h = await vfs.create(root.ino, b"g", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PID)
        await vfs.write(h.fh, 0, b"xyz")
        with pytest.raises(Invalid) as ei:
            await vfs.flush(h.fh)
        assert errno_of(ei.value) == errno.EINVAL and "no x allowed" in ei.value.reason
        with pytest.raises(Invalid):
            await vfs.flush(h.fh)  # the handle is done
        vfs.release(h.fh)
        # The key open() created to claim the name is taken back: no half-made value stays.
        with pytest.raises(NotFound):
            await store.get("p", "g")
        [c] = list(vfs.conflicts.items.values())
        assert c.data == b"xyz" and c.errno == errno.EINVAL

    _run(body)
