"""``kv/``: one directory per KV bucket, found by listing, by a lookup of its
name, and by the mount's poller; ``mkdir kv/NAME`` creates a bucket.
"""

from __future__ import annotations

import logging
import re

import trio

from ..errors import Exists, HvfsError, InvalidName, IsADirectory, NotFound, NotPermitted
from .handles import Handle
from .kv import KvProvider
from .provider import Provider, Services
from .tree import Kind, Node, display

__all__ = ["BucketsProvider"]

log = logging.getLogger(__name__)


class BucketsProvider(Provider):
    """``kv/``: one directory per bucket; ``mkdir kv/NAME`` creates a bucket."""

    def __init__(self, sv: Services, kv: KvProvider, root: Node) -> None:
        super().__init__(sv)
        self.kv = kv
        self.root = root
        root.provider = self
        self._lock = trio.Lock()

    async def refresh(self) -> None:
        """Keep kv/ in step with the server's buckets.

        Serialised: a listing is applied only by the task that took it, while
        no other refresh is adding or dropping views.
        """
        async with self._lock:
            infos = await self.sv.store.buckets()
            names = {bi.name for bi in infos}
            d, tree = self.root, self.sv.tree
            assert d.children is not None
            for name in sorted(names):
                if name.encode() not in d.children:
                    root = tree.new(Kind.DIR, name.encode(), d)
                    root.local = True
                    tree.attach(d, root)
                    tree.notify(d, root.name, root, "mkdir")
                    await self.kv.bind(root, name)
            for child in list(d.children.values()):
                bucket = child.name.decode()
                if bucket not in names:
                    await self.kv.unbind(bucket, child)
                    tree.detach(child)
                    tree.notify(d, child.name, child, "delete")

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        assert parent.children is not None
        child = parent.children.get(name)
        if child is None and re.fullmatch(rb"[a-zA-Z0-9_-]+", name):
            # An unknown kv/NAME: one stream-info call, not a full listing.
            try:
                await self.sv.store.bucket(name.decode())
            except NotFound:
                return None
            await self.refresh()
            child = parent.children.get(name)
        return child

    async def listing(self, d: Node) -> None:
        try:
            await self.refresh()
        except HvfsError as e:
            log.warning("bucket list: %s", e.reason)

    async def mkdir(self, parent: Node, name: bytes) -> Node:
        self.writable()
        bucket = name.decode(errors="replace")
        if not re.fullmatch(r"[a-zA-Z0-9_-]+", bucket):
            raise InvalidName(f"{bucket!r} is not a valid bucket name")
        await self.refresh()
        assert parent.children is not None
        if name in parent.children:
            raise Exists(f"bucket {bucket} exists")
        await self.sv.store.create_bucket(bucket)
        await self.refresh()
        return parent.children[name]

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        raise IsADirectory(f"{display(node)} is a directory")

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        raise NotPermitted(f"{display(parent)}: only bucket directories hold files")
