"""``obj/``: the NATS Object Store as files, for payloads beyond a KV value (issue 15).

``obj/<bucket>/`` is one object store bucket; an object named ``a/b/c.log`` is the
file ``c.log`` in the directories ``a/b`` (the index is a ``KvView`` whose keys are
the names' components, escaped as file names are for keys, so placement, collisions
and the kernel's events are the same as for KV). The index is fed by one watch of
the bucket's meta subjects.

A reader's content is fixed at open (the object's info then: its nuid, chunks and
digest) and read by chunk ranges as the reader asks, through a small per-handle
window (``WINDOW`` chunks, read ahead when reading on): a 1 GiB object reads with
flat memory. A reader that goes through the object in order checks the whole
digest before it hands out the last chunk; chunks hvfs wrote are also checked one
by one. A writer's bytes go to a temporary file in the mount's state directory
(unlinked at once: nothing is left after a crash) and are put at close as one new
object, a compare-and-swap on the meta revision the writer opened (docs/objects.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import trio

from ..errors import (
    Conflict,
    CrossDevice,
    Exists,
    HvfsError,
    InvalidName,
    IsADirectory,
    NotFound,
    NotPermitted,
    NotSupported,
    TooLarge,
)
from ..names import decode_token, encode_name
from ..store import RESYNC, SYNCED, KvChange, Op, Watch
from ..store.base import Corrupt, ObjBucketInfo, ObjChange, ObjectInfo, ObjectStore, sha256_digest
from .buckets import BucketList
from .handles import Handle
from .policy import WRITER_HEADER
from .provider import Provider, Services, keep_emptied
from .tree import Kind, KvView, Node, display

__all__ = ["ObjHandle", "ObjectBucketsProvider", "ObjectProvider", "key_of", "name_of", "truncate_spooled",
           "write_spooled"]

log = logging.getLogger(__name__)

_WRITE = os.O_WRONLY | os.O_RDWR
#: chunks a reader fetches at once when it reads on (8 x 128 KiB by default)
WINDOW = 8
#: chunks a handle keeps at most (its memory: about 2 MiB)
KEPT = 2 * WINDOW
#: the bytes of a failed write kept in .hvfs/conflicts/ at most (the rest is cut, and said)
CONFLICT_BYTES = 64 << 20
#: seconds before a bucket whose watch failed is tried again
_RETRY = 30.0

#: an object's metadata entry ``k`` is the attribute ``user.hvfs.meta.k``
META_XATTR = b"user.hvfs.meta."
OBJ_XATTRS = (b"user.hvfs.bucket", b"user.hvfs.object", b"user.hvfs.revision", b"user.hvfs.digest",
              b"user.hvfs.writer")


def key_of(name: str) -> str | None:
    """The index key of an object name: its ``/``-separated components escaped as file
    names (``a/b.log`` -> ``a.b=2Elog``); None for a name no path can show (an empty
    component, ``.`` or ``..``, a component over 255 bytes)."""
    parts = name.split("/")
    try:
        if any(len(p.encode()) > 255 for p in parts):
            return None
        return ".".join(encode_name(p.encode()) for p in parts)
    except (InvalidName, UnicodeEncodeError):
        return None


def name_of(key: str) -> str:
    """The object name of an index key (``key_of`` reversed)."""
    return "/".join(decode_token(t)[0].decode("utf-8", "surrogateescape") for t in key.split("."))


@dataclass(slots=True)
class ObjHandle(Handle):
    """An open object: what a reader reads (``info``, a window of chunks), or a writer's spool."""

    info: ObjectInfo | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    hasher: Any = None  # sha256 of chunks 0..hashed-1, while they are read in order
    hashed: int = 0
    spool: IO[bytes] | None = None  # the writer's bytes (an unlinked temporary file)
    size: int = 0  # the spool's size


class ObjectProvider(Provider):
    """One object store bucket below ``obj/<bucket>/``: its index, reads and writes."""

    def __init__(self, sv: Services, spool_dir: Path | None) -> None:
        super().__init__(sv)
        #: the store's object calls (every Store implementation has them: hvfs.store.base)
        self.obj = cast(ObjectStore, sv.store)
        self.spool_dir = spool_dir
        self.views: dict[str, KvView] = {}
        self._watches: dict[str, Watch] = {}
        self._synced: dict[str, trio.Event] = {}
        self._limits: dict[str, ObjBucketInfo] = {}
        #: the root of a binding that is read-only (``read_only: true``); None: writable
        self.ro_root: Node | None = None
        #: (bucket, key) -> the object's metadata (ObjectMeta.metadata), shown as user.hvfs.meta.<name>
        self.meta: dict[tuple[str, str], dict[str, str]] = {}

    def writable(self, binding: Node | None = None, read_only: bool = False) -> None:
        super().writable(binding or self.ro_root, read_only or self.ro_root is not None)

    def read_only(self, node: Node) -> bool:
        return self.ro_root is not None

    # -- views and watches ---------------------------------------------------------

    async def bind(self, root: Node, bucket: str) -> KvView:
        """Show ``bucket`` below ``root``; returns once its snapshot is in (or a bound passed)."""
        root.provider = self
        view = KvView(self.sv.tree, root, bucket)
        self.views[bucket] = view
        ev = self._synced[bucket] = trio.Event()
        old = self._watches.pop(bucket, None)
        if old is not None:
            await old.stop()
        self._watches[bucket] = await self.obj.obj_watch(bucket, lambda items: self._on_watch(bucket, items))
        with trio.move_on_after(max(5.0, self.sv.store.timeout * 5)):
            await ev.wait()
        return view

    async def unbind(self, bucket: str, root: Node) -> None:
        self.views.pop(bucket, None)
        self._synced.pop(bucket, None)
        self._limits.pop(bucket, None)
        for n in list(self.sv.tree.walk(root))[1:]:
            n.linked = False
            self.sv.tree.maybe_free(n)
        w = self._watches.pop(bucket, None)
        if w is not None:
            await w.stop()

    async def close(self) -> None:
        for w in self._watches.values():
            try:
                await w.stop()
            except HvfsError:
                pass
        self._watches.clear()

    def _on_watch(self, bucket: str, items: list[ObjChange | str]) -> None:
        """A batch of the bucket's meta watch, on the trio thread."""
        view = self.views.get(bucket)
        if view is None:
            return
        for item in items:
            if item == RESYNC:
                view.begin_resync()
            elif item == SYNCED:
                view.end_resync()
                ev = self._synced.get(bucket)
                if ev is not None:
                    ev.set()
            else:
                assert isinstance(item, ObjChange)
                key = key_of(item.name)
                if key is None:
                    view.hidden[item.name] = "no path can show this object name"
                    continue
                self.sv.metrics.inc("vfs.changes_seen")
                view.apply(key, item.deleted, item.revision, item.size, item.time)
                self._remember(bucket, key, None if item.deleted else item.metadata)
                self.sv.events.add(KvChange(bucket, item.name, Op.DEL if item.deleted else Op.PUT,
                                            item.revision, item.size, item.time))

    async def _wait_synced(self, view: KvView) -> None:
        ev = self._synced.get(view.bucket)
        if not view.synced and ev is not None:
            with trio.move_on_after(self.sv.store.timeout):
                await ev.wait()

    def object_count(self) -> int:
        return sum(len(v.keys) for v in self.views.values())

    # -- names ---------------------------------------------------------------------

    def _where(self, node: Node) -> tuple[KvView, str]:
        view = node.view
        assert view is not None
        return view, name_of(node.key)

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        view = parent.view
        assert view is not None and parent.children is not None
        child = parent.children.get(name)
        if child is None:
            await self._wait_synced(view)
            child = parent.children.get(name)
        if child is not None or echo:
            return child
        # The watch trails NATS by a few ms: ask before saying ENOENT.
        try:
            key = view.key_for(parent, name)
            info = await self.obj.obj_info(view.bucket, name_of(key))
        except (NotFound, InvalidName):
            return None
        node = view.put(key, info.revision, info.size, info.time)
        return node if node is not None and node.parent is parent and node.name == name else None

    async def listing(self, d: Node) -> None:
        if d.view is not None:
            await self._wait_synced(d.view)

    def size(self, node: Node) -> int:
        w = self.sv.writers.get(node.ino)
        if isinstance(w, ObjHandle) and w.dirty:
            return w.size
        return node.size

    # -- files ---------------------------------------------------------------------

    async def _info(self, node: Node) -> ObjectInfo:
        """The object's current info, recorded in the index; ENOENT if it is gone."""
        view, name = self._where(node)
        try:
            info: ObjectInfo = await self.obj.obj_info(view.bucket, name)
        except NotFound:
            view.remove(node.key, None)
            raise NotFound(f"{display(node)}: the object is gone") from None
        view.put(node.key, info.revision, info.size, info.time)
        self._remember(view.bucket, node.key, info.metadata)
        return info

    def _remember(self, bucket: str, key: str, metadata: dict[str, str] | None) -> None:
        if metadata:
            self.meta[(bucket, key)] = metadata
        else:
            self.meta.pop((bucket, key), None)

    async def _follow(self, info: ObjectInfo) -> ObjectInfo:
        """A link another client made (the Go client and nats CLI make them) reads as its
        target object, one hop; a link to a whole bucket is no file's content."""
        if not info.link:
            return info
        bucket, _, name = info.link.partition("/")
        if not name:
            raise NotSupported(f"{info.bucket}/{info.name} links to the whole bucket {bucket}")
        return await self.obj.obj_info(bucket, name)

    def _spool(self) -> IO[bytes]:
        """A writer's spool: an unlinked file in the state directory (nothing left after a
        crash; closed when its handle goes), in a temporary directory without one."""
        where = None
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            where = str(self.spool_dir)
        return tempfile.TemporaryFile(dir=where, prefix="hvfs-obj-")

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        writable = bool(flags & _WRITE)
        if writable:
            self.writable()
        if writable and flags & os.O_TRUNC and node.linked and node.revision:
            # The old bytes are not read: the revision the mount knows is the one this
            # writer saw; a newer one makes the put fail (ESTALE), never lost.
            node.told = 0
            return ObjHandle(0, node, True, b"", node.revision, dirty=node.size > 0, spool=self._spool())
        info = await self._info(node)
        if not writable:
            return ObjHandle(0, node, False, b"", info.revision, info=await self._follow(info))
        h = ObjHandle(0, node, True, b"", info.revision, spool=self._spool())
        if flags & os.O_TRUNC:
            node.told = 0
            h.dirty = info.size > 0
            return h
        # Read-modify-write: the current bytes into the spool, chunk by chunk, checked.
        reader = ObjHandle(0, node, False, b"", info.revision, info=await self._follow(info))
        off = 0
        while off < info.size:
            buf = await self.read(reader, off, info.chunk_size * WINDOW)
            assert h.spool is not None
            os.pwrite(h.spool.fileno(), buf, off)
            off += len(buf)
        h.size = info.size
        return h

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        """open(O_CREAT) of a new name: an empty object is put before this returns (as a
        new key is created), so O_EXCL claims the name fleet-wide; the bytes follow at close."""
        view = parent.view
        assert view is not None and parent.children is not None
        self.writable()
        existing = parent.children.get(name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise Exists(f"{display(existing)} exists")
            return await existing.provider.open(existing, flags, pid)
        key = view.key_for(parent, name)
        obj = name_of(key)
        where = f"{display(parent)}/{name.decode(errors='replace')}"
        spool = self._spool()
        try:
            with view.muted(key):
                info = await self.obj.obj_put(view.bucket, obj, f"/proc/self/fd/{spool.fileno()}", 0, headers=self._headers())
        except Conflict:
            spool.close()
            if flags & os.O_EXCL:
                raise Exists(f"{where} exists (object {view.bucket}/{obj})") from None
            found = await self.lookup(parent, name, False)
            if found is None:
                raise
            return await self.open(found, flags, pid)
        made = view.put(key, info.revision, 0, time.time(), notify=False)
        if made is None or made.parent is not parent or made.name != name:
            spool.close()
            raise InvalidName(f"{where} maps to object {obj!r}, whose name is taken here "
                              f"({view.hidden.get(key, 'see docs/objects.md')})")
        return ObjHandle(0, made, True, b"", info.revision, created=True, spool=spool)

    def _headers(self) -> dict[str, str]:
        return {WRITER_HEADER: self.sv.writer}

    async def read(self, h: Handle, off: int, size: int) -> bytes:
        assert isinstance(h, ObjHandle)
        if h.spool is not None:
            return os.pread(h.spool.fileno(), size, off) if off < h.size else b""
        info = h.info
        assert info is not None
        end = min(off + size, info.size)
        if off >= end:
            return b""
        cs = info.chunk_size
        first, last = off // cs, (end - 1) // cs
        # What this read returns is gathered here: the kernel may send reads of one handle
        # at once (async direct I/O), and another one's window may change ``h.chunks``.
        parts = {i: h.chunks[i] for i in range(first, last + 1) if i in h.chunks}
        missing = [i for i in range(first, last + 1) if i not in parts]
        if missing:
            start = missing[0]
            # Reading on (from where the window ended): fetch a whole window ahead.
            count = max(last - start + 1, WINDOW if start == h.hashed or start - 1 in h.chunks else 1)
            try:
                try:
                    got = await self.obj.obj_read(info, start, count)
                except Corrupt:
                    if count == last - start + 1:
                        raise
                    # A damaged chunk ahead of the reader fails only the read that needs it.
                    got = await self.obj.obj_read(info, start, last - start + 1)
            except NotFound:
                # No history to read the opened content from: a stale handle, never other bytes.
                raise Conflict(f"{display(h.node)}: the object was replaced or deleted since this "
                               "file was opened (reopen it)") from None
            for i in [i for i in h.chunks if i < start or i >= start + KEPT]:
                del h.chunks[i]
            for i, chunk in enumerate(got, start):
                h.chunks[i] = chunk
                if i <= last:
                    parts[i] = chunk
            self._hash_on(h, info)
        return b"".join(parts[i] for i in range(first, last + 1))[off - first * cs:end - first * cs]

    def _hash_on(self, h: ObjHandle, info: ObjectInfo) -> None:
        """Hash the chunks that continue the in-order run from chunk 0; when it reaches the
        end, the object's digest must match before any byte of the last chunk is handed out."""
        if h.hasher is None:
            if 0 not in h.chunks:
                return
            h.hasher = hashlib.sha256()
        while h.hashed in h.chunks and h.hashed < info.chunks:
            h.hasher.update(h.chunks[h.hashed])
            h.hashed += 1
        if h.hashed == info.chunks and info.digest:
            if sha256_digest(h.hasher.digest()) != info.digest:
                h.chunks.clear()
                raise Corrupt(f"{display(h.node)}: object {info.bucket}/{info.name} does not match its "
                              f"digest ({info.digest}): not read")

    async def _limit(self, bucket: str) -> int:
        bi = self._limits.get(bucket)
        if bi is None:
            bi = self._limits[bucket] = await self.obj.obj_bucket(bucket)
        return bi.max_bytes

    async def _grow(self, h: ObjHandle, end: int) -> None:
        """EFBIG at the first write past the bucket's max bytes: the handle is refused for
        good, nothing is stored (an empty object its open made is taken back)."""
        view, name = self._where(h.node)
        limit = await self._limit(view.bucket)
        if 0 < limit < end:
            err = TooLarge(f"{display(h.node)}: {end} bytes is over the bucket's max bytes of {limit}; "
                           "nothing stored")
            h.dirty = h.wrote = False
            h.failed = err
            self.sv.published(h)
            if h.created:
                try:
                    with view.muted(h.node.key):
                        await self.obj.obj_delete(view.bucket, name, h.base)
                except HvfsError as e:
                    log.info("%s: could not take back the create: %s", display(h.node), e.reason)
                else:
                    view.remove(h.node.key, None)
            elif h.node.linked and h.node.parent is not None:
                self.sv.tree.notify(h.node.parent, h.node.name, h.node, "modify")  # its size is the object's
            raise err

    async def write(self, h: Handle, off: int, buf: bytes) -> int:
        return await write_spooled(self.sv, self._grow, h, off, buf)

    async def truncate(self, h: Handle, size: int) -> None:
        await truncate_spooled(self.sv, self._grow, h, size)

    async def flush(self, h: Handle, final: bool) -> None:
        """Put the spool as the object's new content: CAS on the revision the handle saw."""
        assert isinstance(h, ObjHandle) and h.spool is not None
        node = h.node
        view, name = self._where(node)
        h.dirty = h.wrote = False
        try:
            with view.muted(node.key):
                info = await self.obj.obj_put(view.bucket, name, f"/proc/self/fd/{h.spool.fileno()}", h.base, headers=self._headers())
        except HvfsError as e:
            current = e.current if isinstance(e, Conflict) else None
            if isinstance(e, Conflict):
                self.sv.metrics.inc("vfs.conflicts")
            data = os.pread(h.spool.fileno(), CONFLICT_BYTES, 0)
            if h.size > CONFLICT_BYTES:
                e.reason += f" (only the first {CONFLICT_BYTES} of {h.size} bytes are kept)"
            self.sv.fail(h, e, data, view.bucket, current)
            if node.linked and node.parent is not None:
                # The kernel knows this writer's size: the file is the object's again.
                self.sv.tree.notify(node.parent, node.name, node, "modify")
            raise
        self.sv.metrics.inc("vfs.publishes")
        h.base = info.revision
        h.created = False
        self.sv.published(h)
        newer = node.revision > info.revision
        view.put(node.key, info.revision, info.size, time.time(), notify=False)
        self._remember(view.bucket, node.key, info.metadata)
        if newer and node.parent is not None:
            self.sv.tree.notify(node.parent, node.name, node, "modify")

    async def set_size(self, node: Node, size: int) -> None:
        """truncate(2) of a path: one new object."""
        if node.kind is not Kind.KV:
            raise NotPermitted("only files can be truncated")
        h = await self.open(node, os.O_RDWR | (os.O_TRUNC if size == 0 else 0), 0)
        try:
            await self.truncate(h, size)
            async with h.lock:
                await self.flush(h, final=True)
        finally:
            self.sv.published(h)

    # -- namespace -------------------------------------------------------------------

    async def mkdir(self, parent: Node, name: bytes) -> Node:
        view = parent.view
        assert view is not None and parent.children is not None
        self.writable()
        if name in parent.children:
            raise Exists(f"{display(parent.children[name])} exists")
        key = view.key_for(parent, name, file=False)
        node = self.sv.tree.new(Kind.DIR, name, parent)
        node.view, node.key, node.local = view, key, True
        self.sv.tree.attach(parent, node)
        return node

    async def unlink(self, parent: Node, name: bytes, node: Node | None) -> None:
        self.writable()
        if node is None:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such file")
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        view, obj = self._where(node)
        with view.muted(node.key):
            try:
                await self.obj.obj_delete(view.bucket, obj)
            except NotFound:
                pass  # deleted elsewhere meanwhile: gone either way
        view.keys.pop(node.key, None)
        self.sv.tree.detach(node)
        keep_emptied(parent)

    async def rmdir(self, parent: Node, name: bytes, node: Node | None) -> None:
        self.writable()
        self.remove_empty_dir(parent, name, node)

    async def rename(self, src_parent: Node, old: bytes, dst_parent: Node, new: bytes, flags: int) -> None:
        """Within a bucket: the meta moves to the new name, the chunks stay (no copy)."""
        src_view, dst_view = src_parent.view, dst_parent.view
        if dst_parent.provider is not self or dst_view is None or dst_view is not src_view:
            raise CrossDevice("objects move within their bucket; elsewhere mv copies")
        assert src_view is not None
        self.writable()
        ends = self.rename_ends(src_parent, old, dst_parent, new, flags)
        if ends is None:
            return
        src, dst = ends
        if src.kind is Kind.DIR:
            raise CrossDevice("an object name prefix cannot be renamed at once: directories move by copy "
                              "(mv does this by itself)")
        if dst is not None and dst.kind is Kind.DIR:
            raise IsADirectory(f"{display(dst)} is a directory")
        dst_key = dst.key if dst is not None else dst_view.key_for(dst_parent, new)
        with dst_view.muted(dst_key), src_view.muted(src.key):
            info = await self.obj.obj_rename(src_view.bucket, name_of(src.key), name_of(dst_key), src.revision,
                dst.revision if dst is not None else 0)
        tree = self.sv.tree
        src_view.keys.pop(src.key, None)
        tree.detach(src)
        if dst is not None:
            dst_view.keys.pop(dst.key, None)
            tree.detach(dst)
        src.key, src.name, src.revision, src.size = dst_key, new, info.revision, info.size
        src.mtime = src.ctime = time.time()
        tree.attach(dst_parent, src)
        dst_view.keys[dst_key] = src
        keep_emptied(src_parent)

    # -- xattrs ----------------------------------------------------------------------

    def xattr_names(self, node: Node) -> list[bytes]:
        if node.view is None:
            return []
        if node.kind is Kind.KV:
            meta = self.meta.get((node.view.bucket, node.key), {})
            return list(OBJ_XATTRS) + [META_XATTR + k.encode() for k in sorted(meta)]
        return [b"user.hvfs.bucket", b"user.hvfs.object"]

    async def xattrs(self, node: Node, pid: int) -> dict[bytes, bytes]:
        if node.view is None:
            return {}
        view, name = self._where(node)
        out = {b"user.hvfs.bucket": view.bucket.encode(), b"user.hvfs.object": name.encode()}
        if node.kind is not Kind.KV:
            return out
        info = await self._info(node)
        out[b"user.hvfs.revision"] = str(info.revision).encode()
        if info.digest:
            out[b"user.hvfs.digest"] = info.digest.encode()
        writer = info.headers.get(WRITER_HEADER)
        if writer:
            out[b"user.hvfs.writer"] = writer.encode()
        for k, v in info.metadata.items():
            out[META_XATTR + k.encode()] = v.encode()
        return out


Grow = Callable[["ObjHandle", int], Awaitable[None]]


async def write_spooled(sv: Services, grow: Grow, h: Handle, off: int, buf: bytes) -> int:
    """A write into a handle's spool file (objects, blobs); ``grow`` refuses a size past
    the bucket's max bytes (EFBIG) before anything is written."""
    assert isinstance(h, ObjHandle) and h.spool is not None
    if h.append:
        off = h.size
    end = off + len(buf)
    if end > h.size:
        await grow(h, end)
    os.pwrite(h.spool.fileno(), buf, off)
    h.size = max(h.size, end)
    sv.changed(h)
    h.node.told = max(h.node.told, end)
    return len(buf)


async def truncate_spooled(sv: Services, grow: Grow, h: Handle, size: int) -> None:
    assert isinstance(h, ObjHandle) and h.spool is not None
    if size > h.size:
        await grow(h, size)
    os.ftruncate(h.spool.fileno(), size)
    h.size = size
    sv.changed(h)


class ObjectBucketsProvider(BucketList):
    """``obj/``: one directory per object store bucket; ``mkdir obj/NAME`` creates one."""

    what = "object bucket"
    holds = "objects"

    def __init__(self, sv: Services, objects: ObjectProvider, root: Node) -> None:
        super().__init__(sv, root)
        self.obj = objects.obj
        self.objects = objects

    async def names(self) -> set[str]:
        return {bi.name for bi in await self.obj.obj_buckets()}

    async def exists(self, name: str) -> None:
        await self.obj.obj_bucket(name)

    async def make(self, name: str) -> None:
        await self.obj.create_obj_bucket(name)

    async def show(self, root: Node, name: str) -> None:
        tree = self.sv.tree
        try:
            await self.objects.bind(root, name)
        except HvfsError as e:
            # Not fatal for the mount (a user without rights on this bucket, say):
            # the bucket is left out and tried again a little later.
            log.warning("object bucket %s not shown: %s", name, e.reason)
            self._retry[name] = time.monotonic() + _RETRY
            await self.objects.unbind(name, root)
            tree.detach(root)
            return
        self._retry.pop(name, None)
        tree.notify(self.root, root.name, root, "mkdir")

    async def drop(self, name: str, root: Node) -> None:
        await self.objects.unbind(name, root)

