"""Directories of buckets: ``kv/`` (KV buckets) and, through ``BucketList``, ``obj/``
(object store buckets, hvfs.vfs.objects). One directory per bucket, found by listing,
by a lookup of its name, and by the mount's poller; ``mkdir kv/NAME`` creates a bucket.
"""

from __future__ import annotations

import logging
import re
import time

import trio

from ..errors import Exists, HvfsError, InvalidName, IsADirectory, NotFound, NotPermitted
from .handles import Handle
from .kv import KvProvider
from .provider import Provider, Services
from .tree import Kind, Node, display

__all__ = ["BucketList", "BucketsProvider"]

log = logging.getLogger(__name__)

_BUCKET_NAME = re.compile(r"[a-zA-Z0-9_-]+")


class BucketList(Provider):
    """A directory with one directory per bucket of one kind; a kind gives how its
    buckets are listed, checked, created, shown and dropped."""

    #: the kind's buckets in reasons and logs ("bucket", "object bucket")
    what = "bucket"
    #: what the buckets' directories hold, in the reason for a file made beside them
    holds = "files"

    def __init__(self, sv: Services, root: Node) -> None:
        super().__init__(sv)
        self.root = root
        root.provider = self
        self._lock = trio.Lock()
        self._retry: dict[str, float] = {}  # bucket -> monotonic time it is tried again

    async def names(self) -> set[str]:
        """The buckets on the server."""
        raise NotImplementedError

    async def exists(self, name: str) -> None:
        """NotFound unless the bucket is on the server (one call, not a listing)."""
        raise NotImplementedError

    async def make(self, name: str) -> None:
        raise NotImplementedError

    async def show(self, root: Node, name: str) -> None:
        """Bind the bucket below its new directory ``root`` (attached) and announce it."""
        raise NotImplementedError

    async def drop(self, name: str, root: Node) -> None:
        raise NotImplementedError

    async def refresh(self) -> None:
        """Keep the directory in step with the server's buckets.

        Serialised: a listing is applied only by the task that took it, while
        no other refresh is adding or dropping views.
        """
        async with self._lock:
            names = await self.names()
            d, tree = self.root, self.sv.tree
            assert d.children is not None
            now = time.monotonic()
            for name in sorted(names):
                if name.encode() not in d.children and now >= self._retry.get(name, 0.0):
                    root = tree.new(Kind.DIR, name.encode(), d)
                    root.local = True
                    tree.attach(d, root)
                    await self.show(root, name)
            for child in list(d.children.values()):
                bucket = child.name.decode()
                if bucket not in names:
                    await self.drop(bucket, child)
                    tree.detach(child)
                    tree.notify(d, child.name, child, "delete")

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        assert parent.children is not None
        child = parent.children.get(name)
        if child is None and _BUCKET_NAME.fullmatch(name.decode(errors="replace")):
            # An unknown NAME: one info call, not a full listing.
            try:
                await self.exists(name.decode())
            except NotFound:
                return None
            await self.refresh()
            child = parent.children.get(name)
        return child

    async def listing(self, d: Node) -> None:
        try:
            await self.refresh()
        except HvfsError as e:
            log.warning("%s list: %s", self.what, e.reason)

    async def mkdir(self, parent: Node, name: bytes) -> Node:
        self.writable()
        bucket = name.decode(errors="replace")
        if not _BUCKET_NAME.fullmatch(bucket):
            raise InvalidName(f"{bucket!r} is not a valid bucket name")
        await self.refresh()
        assert parent.children is not None
        if name in parent.children:
            raise Exists(f"{self.what} {bucket} exists")
        await self.make(bucket)
        await self.refresh()
        return parent.children[name]

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        raise IsADirectory(f"{display(node)} is a directory")

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        raise NotPermitted(f"{display(parent)}: only bucket directories hold {self.holds}")


class BucketsProvider(BucketList):
    """``kv/``: one directory per KV bucket; ``mkdir kv/NAME`` creates a bucket."""

    def __init__(self, sv: Services, kv: KvProvider, root: Node) -> None:
        super().__init__(sv, root)
        self.kv = kv

    async def names(self) -> set[str]:
        return {bi.name for bi in await self.sv.store.buckets()}

    async def exists(self, name: str) -> None:
        await self.sv.store.bucket(name)

    async def make(self, name: str) -> None:
        await self.sv.store.create_bucket(name)

    async def show(self, root: Node, name: str) -> None:
        # Announced first: the bind returns once the bucket's snapshot is in.
        self.sv.tree.notify(self.root, root.name, root, "mkdir")
        await self.kv.bind(root, name)

    async def drop(self, name: str, root: Node) -> None:
        await self.kv.unbind(name, root)
