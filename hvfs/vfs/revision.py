"""``FILE@REV``: one revision of a key, read from the bucket's history.

Not listed; reading it gives exactly that revision's bytes, whatever writers
of the same name do; writing it is a compare-and-swap on REV (ESTALE when REV
is not current, also when it has left the history); ``FILE@0`` creates only a
key that does not exist. Writes go through the key files' machinery
(``KeyFiles``, the KV provider).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Protocol

from ..errors import Conflict, Exists, IsADirectory, NotFound
from .handles import Handle
from .policy import WritePolicy
from .provider import Provider, Services
from .tree import Kind, KvView, Node, display

__all__ = ["KeyFiles", "REVISION_XATTRS", "RevisionProvider", "XATTRS"]

_WRITE = os.O_WRONLY | os.O_RDWR
XATTRS = (b"user.hvfs.bucket", b"user.hvfs.key", b"user.hvfs.revision")
#: present when the revision has them: its TTL, when it expires, who wrote it, why it is refused
REVISION_XATTRS = (b"user.hvfs.ttl", b"user.hvfs.expires", b"user.hvfs.writer", b"user.hvfs.error")


class KeyFiles(Protocol):
    """What a ``FILE@REV`` needs of the provider of key files."""

    def policy(self, view: KvView) -> WritePolicy: ...

    async def current_revision(self, view: KvView, key: str) -> int: ...

    async def safe_current(self, view: KvView, key: str) -> int | None: ...

    async def write(self, h: Handle, off: int, buf: bytes) -> int: ...

    async def truncate(self, h: Handle, size: int) -> None: ...

    async def check_size(self, h: Handle, size: int, intended: Callable[[], bytes]) -> None: ...

    async def flush(self, h: Handle, final: bool) -> None: ...

    async def xattrs(self, node: Node, pid: int) -> dict[bytes, bytes]: ...

    def writable_view(self, view: KvView) -> None: ...


class RevisionProvider(Provider):
    """``FILE@REV``: one revision of a key, not listed; writing it is a CAS on REV."""

    def __init__(self, sv: Services, kv: KeyFiles) -> None:
        super().__init__(sv)
        self.kv = kv

    def _key_of(self, parent: Node, base: bytes) -> str:
        """The key of file ``base`` in ``parent`` (existing or to be)."""
        view = parent.view
        assert view is not None and parent.children is not None
        existing = parent.children.get(base)
        if existing is not None and existing.kind is Kind.DIR:
            raise IsADirectory(f"{display(existing)} is a directory")
        return existing.key if existing is not None else view.key_for(parent, base)

    async def node(self, parent: Node, base: bytes, rev: int) -> Node:
        """A not-listed inode for revision ``rev`` of ``base``'s key (freed on forget)."""
        view = parent.view
        assert view is not None
        key = self._key_of(parent, base)
        tree = self.sv.tree
        node = tree.new(Kind.REV, base + b"@" + str(rev).encode(), parent)
        node.provider = self
        node.view, node.key, node.revision = view, key, rev
        node.linked = False
        if rev == 0:
            node.data = b""
        else:
            try:
                entry = await self.sv.store.get(view.bucket, key, rev)
            except NotFound:
                tree.nodes.pop(node.ino, None)
                raise
            node.data = self.kv.policy(view).on_read(node, entry.value)
            node.size = len(node.data)
            node.mtime = node.ctime = entry.time
        return node

    async def create_at(self, parent: Node, base: bytes, rev: int, flags: int, pid: int) -> Handle:
        """``echo > FILE@REV`` where REV is not in FILE's history: the CAS is lost
        (ESTALE), unless REV is 0 and FILE does not exist (create only)."""
        view = parent.view
        assert view is not None
        key = self._key_of(parent, base)
        current = await self.kv.current_revision(view, key)
        if current != rev:
            raise Conflict(f"{view.bucket}/{key}: revision {rev} is not current "
                           f"(current: {current or 'none'}); read the file again", current)
        node = await self.node(parent, base, rev)
        return await self.open(node, flags | os.O_WRONLY, pid)

    def size(self, node: Node) -> int:
        return len(node.data or b"")

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        view = node.view
        assert view is not None
        if not flags & _WRITE:
            return Handle(0, node, False, node.data or b"", node.revision)
        self.kv.writable_view(view)
        if node.revision == 0:
            # FILE@0: create only if absent, now, like any open(O_CREAT) of a new name.
            env = await self.kv.policy(view).envelope(b"")
            try:
                with view.muted(node.key):
                    rev = await self.sv.store.create(view.bucket, node.key, b"", ttl=env.ttl,
                                                     headers=env.headers)
            except Exists:
                current = await self.kv.safe_current(view, node.key)
                raise Conflict(f"{view.bucket}/{node.key} exists (revision {current or '?'}); "
                               "@0 creates only a key that does not exist", current) from None
            view.put(node.key, rev, 0, time.time(), notify=False)
            return Handle(0, node, True, bytearray(), rev, created=True, ttl=env.ttl)
        current = await self.kv.current_revision(view, node.key)
        if current != node.revision:
            raise Conflict(f"{view.bucket}/{node.key}: revision {node.revision} is not current "
                           f"(current: {current or 'none'})", current)
        trunc = bool(flags & os.O_TRUNC)
        buf = bytearray() if trunc else bytearray(node.data or b"")
        return Handle(0, node, True, buf, node.revision, dirty=trunc and bool(node.data))

    async def write(self, h: Handle, off: int, buf: bytes) -> int:
        return await self.kv.write(h, off, buf)

    async def truncate(self, h: Handle, size: int) -> None:
        await self.kv.truncate(h, size)

    async def check_size(self, h: Handle, size: int, intended: Callable[[], bytes]) -> None:
        await self.kv.check_size(h, size, intended)

    async def flush(self, h: Handle, final: bool) -> None:
        await self.kv.flush(h, final)

    def read_only(self, node: Node) -> bool:
        return node.view is not None and self.kv.policy(node.view).read_only

    def xattr_names(self, node: Node) -> list[bytes]:
        return list(XATTRS) + list(REVISION_XATTRS)

    async def xattrs(self, node: Node, pid: int) -> dict[bytes, bytes]:
        return await self.kv.xattrs(node, pid)
