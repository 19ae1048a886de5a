"""Content-addressed blobs (the seed's ``tbd-blobs``): an object binding whose objects are
named by the SHA-256 of their bytes (issue 15, docs/objects.md).

``<path>/<sha256 hex>`` are the blobs, immutable (``rm`` removes one); ``<path>/incoming/``
takes new ones: a file written there is stored at close under its hash, then it is gone
from ``incoming/`` and ``<hash>`` is there. Its metadata are the object's own
(``ObjectMeta.metadata``), shown as ``user.hvfs.meta.*``: ``name`` (the file's name in
``incoming/``), ``type`` (its MIME type, guessed from that name), ``time`` (when it was
stored, UTC) and ``issue`` (the directory it was written in: ``incoming/is-42/shot.png``).
The same bytes again are stored once: the blob there keeps its first metadata.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import mimetypes
import os
import time
from pathlib import Path
from typing import Any

import trio

from ..errors import (
    Conflict,
    Exists,
    HvfsError,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    TooLarge,
)
from ..store.base import Corrupt, sha256_digest
from .handles import Handle
from .objects import _WRITE, ObjectProvider, ObjHandle, key_of, truncate_spooled, write_spooled
from .provider import Provider, Services
from .tree import Kind, KvView, Node, display

__all__ = ["BlobsProvider", "IncomingProvider", "bind_objects"]

INCOMING = b"incoming"
_BLOCK = 1 << 20


def _hash_file(fd: int) -> hashlib._Hash:
    """SHA-256 of a spool, read in blocks (in a worker thread: a large one takes seconds)."""
    h = hashlib.sha256()
    off = 0
    while block := os.pread(fd, _BLOCK, off):
        h.update(block)
        off += len(block)
    return h


class BlobsProvider(ObjectProvider):
    """A content-addressed object bucket at a binding path: blobs are read and removed,
    never written in place."""

    def __init__(self, sv: Services, spool_dir: Path | None) -> None:
        super().__init__(sv, spool_dir)
        self.incoming = IncomingProvider(sv, self)

    async def bind(self, root: Node, bucket: str) -> KvView:
        view = await super().bind(root, bucket)
        assert root.children is not None
        inc = root.children.get(INCOMING)
        if inc is None:
            inc = self.sv.tree.new(Kind.DIR, INCOMING, root)
            self.sv.tree.attach(root, inc)
        inc.local = True  # never pruned: it is no object's
        inc.provider = self.incoming
        self.incoming.binds[id(inc)] = view
        return view

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        if flags & _WRITE and node.kind is not Kind.DIR:
            raise NotPermitted(f"{display(node)}: a blob is named by its content and never changes: "
                               "write new content into incoming/")
        return await super().open(node, flags, pid)

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        assert parent.children is not None
        existing = parent.children.get(name)
        if existing is not None and not flags & os.O_EXCL:
            return await self.open(existing, flags, pid)
        raise NotPermitted(f"{display(parent)}: blobs are added by writing them into incoming/ "
                           "(they are named by their SHA-256)")

    async def mkdir(self, parent: Node, name: bytes) -> Node:
        raise NotPermitted(f"{display(parent)}: blobs are added through incoming/")

    async def rename(self, src_parent: Node, old: bytes, dst_parent: Node, new: bytes, flags: int) -> None:
        raise NotPermitted(f"{display(src_parent)}: a blob's name is its SHA-256")

    async def rmdir(self, parent: Node, name: bytes, node: Node | None) -> None:
        if node is not None and node.provider is self.incoming:
            raise NotPermitted(f"{display(node)} belongs to the binding")
        await super().rmdir(parent, name, node)

    async def set_size(self, node: Node, size: int) -> None:
        raise NotPermitted(f"{display(node)}: a blob never changes")


class IncomingProvider(Provider):
    """``incoming/`` of a blob binding: files being written, stored under their hash at close."""

    def __init__(self, sv: Services, blobs: BlobsProvider) -> None:
        super().__init__(sv)
        self.blobs = blobs
        self.binds: dict[int, KvView] = {}  # id(incoming dir) -> the binding's view

    def writable(self, binding: Node | None = None, read_only: bool = False) -> None:
        self.blobs.writable(binding, read_only)

    def read_only(self, node: Node) -> bool:
        return self.blobs.read_only(node)

    def _view(self, node: Node) -> tuple[KvView, Node]:
        """The binding's view and its incoming/ directory, for a node at or below it."""
        n: Node | None = node
        while n is not None and id(n) not in self.binds:
            n = n.parent
        assert n is not None
        return self.binds[id(n)], n

    def size(self, node: Node) -> int:
        w = self.sv.writers.get(node.ino)
        return w.size if isinstance(w, ObjHandle) else node.size

    def _new(self, node: Node) -> ObjHandle:
        return ObjHandle(0, node, True, b"", 0, created=True, spool=self.blobs._spool())

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        self.writable()
        assert parent.children is not None
        node = self.sv.tree.new(Kind.KV, name, parent)
        node.local = True
        self.sv.tree.attach(parent, node)
        return self._new(node)

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        if not flags & _WRITE:
            raise NotPermitted(f"{display(node)} is being written: it is read as a blob once stored")
        self.writable()
        return self._new(node)  # another writer of the name: its own bytes, its own blob

    async def read(self, h: Handle, off: int, size: int) -> bytes:
        assert isinstance(h, ObjHandle) and h.spool is not None
        return os.pread(h.spool.fileno(), size, off) if off < h.size else b""

    async def write(self, h: Handle, off: int, buf: bytes) -> int:
        return await write_spooled(self.sv, self._grow, h, off, buf)

    async def truncate(self, h: Handle, size: int) -> None:
        await truncate_spooled(self.sv, self._grow, h, size)

    async def _grow(self, h: ObjHandle, end: int) -> None:
        view, _ = self._view(h.node)
        limit = await self.blobs._limit(view.bucket)
        if 0 < limit < end:
            err = TooLarge(f"{display(h.node)}: {end} bytes is over the bucket's max bytes of {limit}; "
                           "nothing stored")
            h.dirty = h.wrote = False
            h.failed = err
            self.sv.published(h)
            raise err

    async def flush(self, h: Handle, final: bool) -> None:
        """Store the bytes under their SHA-256; the file leaves incoming/, the blob appears."""
        assert isinstance(h, ObjHandle) and h.spool is not None
        node = h.node
        view, inc = self._view(node)
        h.dirty = h.wrote = False
        fd = h.spool.fileno()
        sha = await trio.to_thread.run_sync(_hash_file, fd)
        name, digest = sha.hexdigest(), sha256_digest(sha.digest())
        parent = node.parent
        meta = {"name": node.name.decode(errors="replace"),
                "type": mimetypes.guess_type(node.name.decode(errors="replace"))[0] or "application/octet-stream",
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
        if parent is not None and parent is not inc:
            meta["issue"] = parent.name.decode(errors="replace")
        key = key_of(name)
        assert key is not None
        try:
            # Not muted: the kernel saw a file written in incoming/, not this blob's create.
            try:
                info = await self.blobs.obj.obj_put(view.bucket, name, f"/proc/self/fd/{fd}", 0,
                                                    headers=self.blobs._headers(), metadata=meta)
            except Conflict:
                # Stored already (here or elsewhere): the same bytes by their name.
                info = await self.blobs.obj.obj_info(view.bucket, name)
                if info.digest != digest:
                    raise Corrupt(f"blob {view.bucket}/{name} does not match its name "
                                  f"(its digest is {info.digest})") from None
        except HvfsError as e:
            self.sv.fail(h, e, os.pread(fd, 64 << 20, 0), view.bucket)
            raise
        self.sv.metrics.inc("vfs.publishes")
        h.base = info.revision
        self.sv.published(h)
        if node.linked and parent is not None:
            self.sv.tree.detach(node)
            self.sv.tree.notify(parent, node.name, node, "delete")
        view.put(key, info.revision, info.size, time.time())
        self.blobs._remember(view.bucket, key, info.metadata)
        # The kernel did not see the file leave incoming/: once close() returns, it must know.
        await self.sv.told()

    async def mkdir(self, parent: Node, name: bytes) -> Node:
        self.writable()
        assert parent.children is not None
        if name in parent.children:
            raise Exists(f"{display(parent.children[name])} exists")
        node = self.sv.tree.new(Kind.DIR, name, parent)
        node.local = True
        self.sv.tree.attach(parent, node)
        return node

    async def unlink(self, parent: Node, name: bytes, node: Node | None) -> None:
        if node is None:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such file")
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        self.sv.tree.detach(node)  # an abandoned upload: nothing of it is in NATS

    async def rmdir(self, parent: Node, name: bytes, node: Node | None) -> None:
        if node is None:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such directory")
        if node.kind is not Kind.DIR:
            raise NotADirectory(f"{display(node)} is not a directory")
        if node.children:
            raise NotEmpty(f"{display(node)} is not empty")
        if id(node) in self.binds:
            raise NotPermitted(f"{display(node)} belongs to the binding")
        self.sv.tree.detach(node)


async def bind_objects(sv: Services, root: Node, binding: Any, spool_dir: Path | None) -> ObjectProvider:
    """A config's ``storage: object`` binding (hvfs.config.ObjectBinding): its bucket made if
    asked and missing (an existing one keeps its own settings), its provider bound at ``root``."""
    prov = BlobsProvider(sv, spool_dir) if binding.content_addressed else ObjectProvider(sv, spool_dir)
    if binding.create:
        try:
            await prov.obj.obj_bucket(binding.bucket)
        except NotFound:
            await prov.obj.create_obj_bucket(binding.bucket, max_bytes=binding.max_bytes,
                                             max_age=binding.max_age, replicas=binding.replicas)
    if binding.read_only:
        prov.ro_root = root
    await prov.bind(root, binding.bucket)
    return prov
