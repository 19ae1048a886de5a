"""The filesystem's logic, independent of the kernel interface.

``fs.Operations`` translates FUSE requests into calls here; tests of the
second tier call this class directly against a real nats-server. Reads are
rendered from NATS at open; writes are buffered per handle and published at
flush/fsync/close as a compare-and-swap on the revision seen at open.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import trio

from ..config import MountConfig
from ..errors import (
    Busy,
    Conflict,
    CrossDevice,
    Exists,
    HvfsError,
    Invalid,
    InvalidName,
    IsADirectory,
    NameTooLong,
    NoAttr,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    ReadOnly,
    TooLarge,
    errno_of,
)
from ..metrics import Metrics
from ..store import RESYNC, SYNCED, KvChange, Op, Store
from .control import Conflicts, ErrorLog, EventLog
from .echo import Echo
from .handles import Handle
from .queues import QueueView
from .streamops import StreamOps
from .tree import Kind, KvView, Node, Tree

__all__ = ["Core"]

log = logging.getLogger(__name__)

_REV_RE = re.compile(rb"^(.+)@(\d+)$")
_WRITE = os.O_WRONLY | os.O_RDWR
#: What a connection carries at most by default; values are refused above it.
DEFAULT_MAX_PAYLOAD = 1 << 20
NAME_MAX = 255
#: the longest a call waits for a last-close publish of its file (each NATS call is bounded)
SETTLE_WAIT = 30.0
XATTRS = (b"user.hvfs.bucket", b"user.hvfs.key", b"user.hvfs.revision")


def _spliced(data: bytes | bytearray, off: int, buf: bytes) -> bytes:
    """``data`` with ``buf`` written at ``off`` (a gap zero-filled): what a write meant."""
    out = bytearray(data)
    if off > len(out):
        out.extend(bytes(off - len(out)))
    out[off:off + len(buf)] = buf
    return bytes(out)


def _tgid(tid: int) -> int:
    """The process a thread belongs to (FUSE reports the calling thread's id)."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -tid  # gone: matches no live process


def _check_name(name: bytes) -> None:
    """No path component longer than NAME_MAX exists here, whatever the call."""
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes; at most {NAME_MAX} bytes per name")


def cas_header_bytes(bucket: str) -> int:
    """Bytes of the headers a CAS publish adds (expected last sequence up to 20 digits, stream)."""
    return len("NATS/1.0\r\n" "Nats-Expected-Last-Subject-Sequence: \r\n" "Nats-Expected-Stream: KV_\r\n\r\n") \
        + 20 + len(bucket)


class Core(StreamOps):
    def __init__(self, store: Store, config: MountConfig | None = None, read_only: bool = False,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.config = config or MountConfig()
        self.read_only = read_only
        self.max_payload = max_payload
        self.tree = Tree()
        self.conflicts = Conflicts()
        self.errors = ErrorLog()
        self.handles: dict[int, Handle] = {}
        #: ino -> the handle whose unpublished bytes define the size the kernel sees
        self.writers: dict[int, Handle] = {}
        self._next_fh = 1
        self.views: dict[str, list[KvView]] = {}  # bucket -> views
        self._synced: dict[int, trio.Event] = {}  # id(view) -> set when snapshot complete
        self._watches: dict[str, Any] = {}
        self._refresh_lock = trio.Lock()
        self.started = time.time()
        self.echo = Echo()  # the notifier's own requests (hvfs.vfs.echo)
        #: dir ino -> monotonic time of its last listing by anyone but the notifier
        self.listed: dict[int, float] = {}
        self.events = EventLog()
        self._register_metrics()
        self.kv_dir: Node | None = self.tree.mkdirs("kv") if self.config.raw else None
        self.streams_dir: Node | None = self.tree.mkdirs("streams") if self.config.raw else None
        self._init_streams()
        self.queues: list[QueueView] = []
        self.ctl = self.tree.mkdirs(".hvfs")
        self.conflicts_dir = self.tree.mkdirs(".hvfs/conflicts")
        self._ctl_file(self.ctl, b"status", self.render_status)
        self._ctl_file(self.ctl, b"errors", self.errors.render)
        self.events_node = self._ctl_file(self.ctl, b"events", self.events.render)
        self._ctl_file(self.conflicts_dir, b"index", self.conflicts.index)

    # -- start-up -----------------------------------------------------------

    def _ctl_file(self, parent: Node, name: bytes, render: Callable[[], bytes]) -> Node:
        node = self.tree.new(Kind.CTRL, name, parent)
        node.render = render
        self.tree.attach(parent, node)
        return node

    async def start(self) -> None:
        """Bind configured paths and (raw view) every bucket; wait for their snapshots."""
        for b in self.config.bindings:
            try:
                await self.store.bucket(b.kv)
            except NotFound:
                if not b.create:
                    raise
                await self.store.create_bucket(b.kv)
            root = self.tree.mkdirs(b.path)
            await self._add_view(KvView(self.tree, root, b.kv, b.prefix))
        for qb in self.config.queues:
            qv = QueueView(self.tree, self.tree.mkdirs(qb.path), qb)
            self.queues.append(qv)
            qv.consumer = await self.store.queue(
                qb.stream, qb.durable, qv.apply, create=qb.create, filter_subject=qb.filter_subject,
                ack_wait=qb.ack_wait, max_held=qb.max_held)
        if self.kv_dir is not None:
            await self.refresh_buckets()
        await self.refresh_streams()

    async def _add_view(self, view: KvView) -> None:
        others = [v for v in self.views.get(view.bucket, []) if v is not view]
        self.views.setdefault(view.bucket, []).append(view)
        ev = trio.Event()
        self._synced[id(view)] = ev
        bucket = view.bucket
        if others and bucket in self._watches:
            if all(v.synced for v in others):
                # Another view of a watched bucket: replay its keys.
                for key, n in list(others[0].keys.items()):
                    view.put(key, n.revision, n.size, n.mtime, notify=False)
                view.end_resync()
                ev.set()
            # else: the watch's SYNCED marker is still to come, for every view.
        else:
            old = self._watches.pop(bucket, None)
            if old is not None:
                await old.stop()
            self._watches[bucket] = await self.store.watch(bucket, lambda items: self._on_watch(bucket, items))
        with trio.move_on_after(max(5.0, self.store.timeout * 5)):
            await ev.wait()

    async def refresh_buckets(self) -> None:
        """Keep kv/ in step with the server's buckets.

        Serialised: a listing is applied only by the task that took it, while
        no other refresh is adding or dropping views.
        """
        if self.kv_dir is None:
            return
        async with self._refresh_lock:
            await self._refresh_buckets()

    async def _refresh_buckets(self) -> None:
        assert self.kv_dir is not None
        infos = await self.store.buckets()
        names = {bi.name for bi in infos}
        assert self.kv_dir.children is not None
        for name in sorted(names):
            if name.encode() not in self.kv_dir.children:
                root = self.tree.new(Kind.DIR, name.encode(), self.kv_dir)
                root.local = True
                self.tree.attach(self.kv_dir, root)
                self.tree.notify(self.kv_dir, root.name, root, "mkdir")
                await self._add_view(KvView(self.tree, root, name))
        for child in list(self.kv_dir.children.values()):
            bucket = child.name.decode()
            if bucket not in names:
                await self._drop_bucket(bucket, child)

    async def poll_buckets(self, interval: float = 1.0,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background: buckets created or deleted elsewhere appear under kv/ by themselves."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            self._forget_gone_dirs()
            try:
                await self.refresh_buckets()
                await self.refresh_streams()
            except HvfsError as e:
                log.debug("bucket poll: %s", e.reason)
            except Exception:
                # A background task must not take the mount down with it.
                log.exception("bucket poll failed")

    def _forget_gone_dirs(self) -> None:
        """Bookkeeping keyed by inode must not outlive the inode."""
        for ino in [i for i in self.listed if i not in self.tree.nodes]:
            del self.listed[ino]

    async def _discover_bucket(self, name: bytes) -> None:
        """A lookup of an unknown kv/NAME: one stream-info call, not a full listing."""
        if self.kv_dir is None or not re.fullmatch(rb"[a-zA-Z0-9_-]+", name):
            return
        try:
            await self.store.bucket(name.decode())
        except NotFound:
            return
        await self.refresh_buckets()

    async def _drop_bucket(self, bucket: str, root: Node) -> None:
        views = self.views.get(bucket, [])
        for v in [v for v in views if v.root is root]:
            views.remove(v)
            self._synced.pop(id(v), None)
            for n in list(self.tree.walk(root))[1:]:
                n.linked = False
                self.tree.maybe_free(n)
        if not views:
            self.views.pop(bucket, None)
            w = self._watches.pop(bucket, None)
            if w is not None:
                await w.stop()
            self.store.forget_bucket(bucket)
        parent = root.parent
        self.tree.detach(root)
        if parent is not None:
            self.tree.notify(parent, root.name, root, "delete")

    async def close(self) -> None:
        for w in [*self._watches.values(), *self._stream_watches.values()]:
            try:
                await w.stop()
            except HvfsError:
                pass
        self._watches.clear()
        self._stream_watches.clear()

    # -- watch (trio thread) -----------------------------------------------------

    def _on_watch(self, bucket: str, items: list[KvChange | str]) -> None:
        views = self.views.get(bucket, [])
        for item in items:
            if item == RESYNC:
                for v in views:
                    v.begin_resync()
            elif item == SYNCED:
                for v in views:
                    v.end_resync()
                    ev = self._synced.get(id(v))
                    if ev is not None:
                        ev.set()
            else:
                assert isinstance(item, KvChange)
                self.metrics.inc("vfs.changes_seen")
                for v in views:
                    v.apply(item.key, item.op is not Op.PUT, item.revision, item.size, item.time)
                self.events.add(item)

    # -- lookup and listing --------------------------------------------------------

    def node(self, ino: int) -> Node:
        n = self.tree.get(ino)
        if n is None:
            raise NotFound(f"inode {ino} is gone")
        return n

    async def lookup(self, parent_ino: int, name: bytes, pid: int = 0) -> Node:
        echo = self.echo.owns(pid)
        if echo:
            node = self.echo.lookup(parent_ino, name, self.tree.nodes)
            if node is not None:
                return node
        _check_name(name)
        parent = self.node(parent_ino)
        if parent.kind is not Kind.DIR:
            raise NotADirectory(f"{parent.path().decode(errors='replace')} is not a directory")
        assert parent.children is not None
        if name == b".":
            return parent
        if name == b"..":
            return parent.parent or parent
        if parent is self.conflicts_dir:
            self._sync_conflict_files()
        if parent.stream is not None:
            logn = self.stream_lookup(parent, name)
            if logn is not None:
                return logn
            await self._wait_stream(parent.stream)
        child = parent.children.get(name)
        if child is None and parent is self.kv_dir:
            await self._discover_bucket(name)
            child = parent.children.get(name)
        if child is None and parent is self.streams_dir:
            await self._discover_stream(name)
            child = parent.children.get(name)
        if child is None and parent.view is not None:
            await self._wait_synced(parent.view)
            child = parent.children.get(name)
        if child is not None:
            return child
        m = _REV_RE.match(name)
        if m and parent.view is not None:
            return await self._revision_node(parent, m.group(1), int(m.group(2)))
        if parent.view is not None and not echo:
            found = await self._lookup_in_nats(parent, name)
            if found is not None:
                return found
        raise NotFound(f"{parent.path().decode(errors='replace')}/{name.decode(errors='replace')}: no such file")

    async def _lookup_in_nats(self, parent: Node, name: bytes) -> Node | None:
        """A name the index does not have yet may be a key the watch has not
        delivered (it trails NATS by a few ms): ask NATS before saying ENOENT."""
        view = parent.view
        assert view is not None
        try:
            key = view.key_for(parent, name)
            entry = await self.store.get(view.bucket, key)
        except (NotFound, InvalidName):
            return None
        node = view.put(key, entry.revision, len(entry.value), entry.time)
        return node if node is not None and node.parent is parent and node.name == name else None

    async def _wait_synced(self, view: KvView) -> None:
        if view.synced:
            return
        ev = self._synced.get(id(view))
        if ev is not None:
            with trio.move_on_after(self.store.timeout):
                await ev.wait()

    def _key_of(self, parent: Node, base: bytes) -> str:
        """The key of file ``base`` in ``parent`` (existing or to be), for ``FILE@REV``."""
        view = parent.view
        assert view is not None and parent.children is not None
        existing = parent.children.get(base)
        if existing is not None and existing.kind is Kind.DIR:
            raise IsADirectory(f"{self._display(existing)} is a directory")
        return existing.key if existing is not None else view.key_for(parent, base)

    async def _revision_node(self, parent: Node, base: bytes, rev: int) -> Node:
        """``FILE@REV``: a not-listed inode for one revision of FILE's key."""
        view = parent.view
        assert view is not None
        key = self._key_of(parent, base)
        node = self.tree.new(Kind.REV, base + b"@" + str(rev).encode(), parent)
        node.view, node.key, node.revision = view, key, rev
        node.linked = False  # never listed; freed on forget
        if rev == 0:
            node.data = b""
        else:
            try:
                entry = await self.store.get(view.bucket, key, rev)
            except NotFound:
                self.tree.nodes.pop(node.ino, None)
                raise
            node.data = entry.value
            node.size = len(entry.value)
            node.mtime = node.ctime = entry.time
        return node

    async def readdir(self, ino: int, pid: int = 0) -> list[tuple[bytes, Node]]:
        d = self.node(ino)
        if not self.echo.owns(pid):
            self.listed[ino] = time.monotonic()
        if d.kind is not Kind.DIR:
            raise NotADirectory(f"{d.path().decode(errors='replace')} is not a directory")
        if d is self.kv_dir:
            try:
                await self.refresh_buckets()
            except HvfsError as e:
                log.warning("bucket list: %s", e.reason)
        if d.view is not None:
            await self._wait_synced(d.view)
        if d.stream is not None:
            await self._wait_stream(d.stream)
        if d is self.streams_dir:
            try:
                await self.refresh_streams()
            except HvfsError as e:
                log.warning("stream list: %s", e.reason)
        if d is self.conflicts_dir:
            self._sync_conflict_files()
        assert d.children is not None
        return sorted(d.children.items())

    def _sync_conflict_files(self) -> None:
        d = self.conflicts_dir
        assert d.children is not None
        for name, c in self.conflicts.items.items():
            bname = name.encode()
            if bname not in d.children:
                n = self._ctl_file(d, bname, functools.partial(bytes, c.data))
                n.size = len(c.data)
        for bname in [k for k, n in d.children.items() if n.kind is Kind.CTRL and k != b"index"]:
            if bname.decode() not in self.conflicts.items:
                self.tree.detach(d.children[bname])

    def size_of(self, node: Node) -> int:
        if node is self.events_node:
            return self.events.total
        if node.kind is Kind.CTRL and node.render is not None:
            return len(node.render())
        if node.kind is Kind.REV:
            return len(node.data or b"")
        if node.kind is Kind.LOG:
            return self.log_size(node)
        if node.cached_open > 0:
            # Readers share the page cache, clipped at the kernel's size: while
            # one is open its content's size stands (docs/consistency.md).
            return node.cached_size
        w = self.writers.get(node.ino)
        if w is not None and w.dirty:
            return len(w.data)
        return node.size

    # -- open, read, write -----------------------------------------------------------

    def _new_fh(self, h: Handle, cached: bool = False) -> Handle:
        """Register ``h``. KV and FILE@REV handles use direct_io unless ``cached``.

        A key's value changes under open handles, and the page cache is the
        inode's, bounded by the size the kernel knows: direct_io serves each
        handle its own content, fixed at open. ``cached`` handles (read-only,
        see ``_page_cache_ok``) go through the page cache so that shared
        read-only mappings work.
        """
        if h.node.kind in (Kind.KV, Kind.REV) and not cached:
            h.direct_io = True
        h.fh = self._next_fh
        self._next_fh += 1
        self.handles[h.fh] = h
        if cached:
            node = h.node
            h.keep_cache = node.cached_rev == h.base
            node.cached_rev, node.cached_size = h.base, len(h.data)
            node.cached_open += 1
        if h.writable and h.dirty:
            self.writers[h.node.ino] = h
        return h

    def _page_cache_ok(self, node: Node, revision: int) -> bool:
        """May a read-only handle of ``revision`` share the inode's page cache?

        Only if every other page-cache handle open on the inode holds the same
        revision: pages are shared by all of them. (The kernel's size for the
        inode must be this content's too: see ``Handle.stale_size``.)
        """
        return node.cached_open == 0 or node.cached_rev == revision

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise Invalid(f"bad file handle {fh}")
        return h

    async def open(self, ino: int, flags: int, pid: int = 0) -> Handle:
        h = await self._open(ino, flags, pid)
        h.append = bool(flags & os.O_APPEND) and h.writable
        h.pid = pid
        if h.writable and flags & os.O_TRUNC and h.node.kind is Kind.KV:
            h.node.told = 0  # the kernel sets its size to 0 on an O_TRUNC open
        return h

    async def _open(self, ino: int, flags: int, pid: int = 0) -> Handle:
        node = self.node(ino)
        writable = bool(flags & _WRITE)
        trunc = bool(flags & os.O_TRUNC)
        self.metrics.inc("vfs.opens")
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{node.path().decode(errors='replace')} is a directory")
        if self.echo.owns(pid):
            # The notifier's own open: it only makes the kernel emit events
            # (also on a --read-only mount: it changes nothing).
            return self._new_fh(Handle(0, node, writable, b"", node.revision, pid=pid, echo=True))
        await self._settled(node)
        if node.kind is Kind.CTRL:
            if writable:
                raise NotPermitted(".hvfs files are read-only")
            assert node.render is not None
            data = b"" if node is self.events_node else node.render()
            return self._new_fh(Handle(0, node, False, data, 0, direct_io=True))
        if writable and self.read_only:
            raise ReadOnly("mounted read-only")
        if node.kind in (Kind.MSG, Kind.LOG):
            return await self.stream_open(node, writable, self._new_fh)
        if node.kind is Kind.QMSG:
            if writable:
                raise NotPermitted("queue deliveries are read-only; rm acks one")
            return self._new_fh(Handle(0, node, False, node.data or b"", node.revision))
        if node.kind is Kind.PUB:
            raise Busy("this message is still being written")
        view = node.view
        assert view is not None
        if node.kind is Kind.REV:
            if not writable:
                return self._new_fh(Handle(0, node, False, node.data or b"", node.revision))
            if node.revision == 0:
                # FILE@0: create only if absent, now, like any open(O_CREAT) of a new name.
                try:
                    with self._muted(view, node.key):
                        rev = await self.store.create(view.bucket, node.key, b"")
                except Exists:
                    current = await self._safe_current(view, node.key)
                    raise Conflict(f"{view.bucket}/{node.key} exists (revision {current or '?'}); "
                                   "@0 creates only a key that does not exist", current) from None
                view.put(node.key, rev, 0, time.time(), notify=False)
                return self._new_fh(Handle(0, node, True, bytearray(), rev, created=True))
            current = await self._current_revision(view, node.key)
            if current != node.revision:
                raise Conflict(f"{view.bucket}/{node.key}: revision {node.revision} is not current "
                               f"(current: {current or 'none'})", current)
            buf = bytearray() if trunc else bytearray(node.data or b"")
            return self._new_fh(Handle(0, node, True, buf, node.revision, dirty=trunc and bool(node.data)))
        if writable and trunc and view.synced and node.linked and node.revision:
            # The old value is not read: the revision the mount knows is the one
            # this writer saw; a newer one makes the publish fail (ESTALE), never lost.
            return self._new_fh(Handle(0, node, True, bytearray(), node.revision, dirty=node.size > 0))
        try:
            entry = await self.store.get(view.bucket, node.key)
        except NotFound:
            view.remove(node.key, None)
            raise NotFound(f"{self._display(node)}: the key is gone") from None
        view.put(node.key, entry.revision, len(entry.value), entry.time)
        if not writable:
            cached = self._page_cache_ok(node, entry.revision)
            h = self._new_fh(Handle(0, node, False, entry.value, entry.revision), cached=cached)
            h.stale_size = cached and node.told != len(entry.value)
            return h
        buf = bytearray() if trunc else bytearray(entry.value)
        return self._new_fh(Handle(0, node, True, buf, entry.revision, dirty=trunc and bool(entry.value)))

    async def _current_revision(self, view: KvView, key: str) -> int:
        try:
            return (await self.store.get(view.bucket, key)).revision
        except NotFound:
            return 0

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handle(fh)
        self.metrics.inc("vfs.reads")
        if h.log is not None:
            return await self.log_read(h, off, size)
        if h.node is self.events_node:
            return self.events.read(off, size)
        return bytes(h.data[off:off + size])

    async def max_value_size(self, view: KvView) -> int:
        """The largest value a CAS publish can carry: NATS counts our headers too."""
        limit = self.max_payload
        bi = await self.store.bucket(view.bucket)
        if bi.max_value_size > 0:
            limit = min(limit, bi.max_value_size)
        return limit - cas_header_bytes(view.bucket)

    def _writable(self, h: Handle) -> None:
        if not h.writable:
            raise Invalid("file not open for writing")
        if h.failed is not None:
            raise type(h.failed)(f"{h.failed.reason} (this handle failed earlier; reopen to write again)")

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handle(fh)
        self._writable(h)
        if h.echo:
            return len(buf)
        assert isinstance(h.data, bytearray)
        if h.append:
            # The kernel's append offset comes from a size it may have cached
            # before a remote change; the end of the content read at open is right.
            off = len(h.data)
        end = off + len(buf)
        if end > len(h.data):
            await self._check_size(h, end, lambda: _spliced(h.data, off, buf))
            h.data.extend(bytes(end - len(h.data)))  # zero-fill any gap
        h.data[off:end] = buf
        self._changed(h)
        h.node.told = max(h.node.told, end)  # the kernel grows its size past a write's end
        return len(buf)

    def _changed(self, h: Handle) -> None:
        h.dirty = h.wrote = True
        self.writers[h.node.ino] = h
        h.node.mtime = h.node.ctime = time.time()

    async def _check_size(self, h: Handle, size: int, intended: Callable[[], bytes]) -> None:
        """EFBIG before a value grows past what its bucket or stream takes.

        The handle is refused for good: nothing of it lands, and what it was
        to hold is kept under .hvfs/conflicts/.
        """
        if h.node.kind is Kind.PUB:
            limit, what = self.stream_limit(h.node), "stream's max message size"
        else:
            assert h.node.view is not None
            limit, what = await self.max_value_size(h.node.view), "bucket's max value size"
        if size > limit:
            err = TooLarge(f"{self._display(h.node)}: {size} bytes is over the {what} of {limit} bytes")
            self._fail(h, err, intended())
            raise err

    def _fail(self, h: Handle, err: HvfsError, data: bytes, current: int | None = None) -> None:
        """End ``h`` with ``err``: its bytes go to .hvfs/conflicts/, later calls fail alike."""
        h.dirty = h.wrote = False
        if self.writers.get(h.node.ino) is h:
            del self.writers[h.node.ino]
        where = h.node.view.bucket if h.node.view is not None else getattr(h.node.stream, "name", "")
        c = self.conflicts.add(where, h.node.key, h.base, current, errno_of(err), err.reason, data)
        err.reason = f"{err.reason}; your bytes are in .hvfs/conflicts/{c.file}"
        h.failed = err

    async def truncate_handle(self, h: Handle, size: int) -> None:
        self._writable(h)
        if h.echo:
            return
        assert isinstance(h.data, bytearray)
        if size > len(h.data):
            await self._check_size(h, size, lambda: bytes(h.data) + bytes(size - len(h.data)))
            h.data.extend(bytes(size - len(h.data)))
        else:
            del h.data[size:]
        self._changed(h)

    async def flush(self, fh: int, final: bool = False) -> None:
        h = self.handle(fh)
        async with h.lock:
            await self._flush(h, final)

    async def release_flush(self, fh: int) -> None:
        """The last close: publish what is left (an O_TRUNC with nothing written).

        The kernel sends this just after close() returned; it was queued
        before any later request of the closing process, and this mount's
        later calls on the file wait for it (``_settled``).
        """
        h = self.handles.get(fh)
        if h is None or not h.dirty or h.failed is not None or h.echo:
            return
        node = h.node
        if node.kind is Kind.REV and node.view is not None:
            node = node.view.keys.get(node.key, node)
        ev = trio.Event()
        node.settling = ev
        try:
            await self.flush(fh, final=True)
        finally:
            ev.set()
            if node.settling is ev:
                node.settling = None

    async def _settled(self, node: Node) -> None:
        """Wait for a last-close publish of ``node`` still in flight (bounded by its NATS call)."""
        ev = node.settling
        if ev is not None:
            with trio.move_on_after(SETTLE_WAIT):
                await ev.wait()

    async def _flush(self, h: Handle, final: bool) -> None:
        """Publish what the handle changed as one revision: CAS on the revision it last saw.

        Every flush (each close() of a descriptor, fsync) publishes what was
        written, so when close() returns it is in NATS. Only an O_TRUNC with
        nothing written after it waits for a write or the last close
        (``final``): a shell's ``echo x > f`` closes the descriptor it opened
        before writing, and that close must not publish an empty revision.
        """
        if h.echo:
            return
        if h.failed is not None and h.writable:
            raise type(h.failed)(h.failed.reason)
        if not h.dirty or not (h.wrote or final):
            return
        node = h.node
        if node.kind is Kind.PUB:
            await self.stream_flush(h, final)
            return
        view = node.view
        assert view is not None and isinstance(h.data, bytearray)
        data = bytes(h.data)
        h.dirty = h.wrote = False
        try:
            with self._muted(view, node.key):
                rev = await self.store.update(view.bucket, node.key, data, h.base)
        except HvfsError as e:
            current = e.current if isinstance(e, Conflict) else None
            if isinstance(e, Exists | Conflict):
                self.metrics.inc("vfs.conflicts")
                if current is None:
                    current = await self._safe_current(view, node.key)
            self._fail(h, e, data, current)
            raise
        self.metrics.inc("vfs.publishes")
        h.base = rev
        if self.writers.get(node.ino) is h:
            del self.writers[node.ino]
        target = view.keys.get(node.key, node) if node.kind is Kind.REV else node
        newer = target.kind is Kind.KV and target.revision > rev
        view.put(node.key, rev, len(data), time.time(), notify=False)  # no-op if newer
        if newer and target.parent is not None:
            # Another writer's revision arrived while ours was in flight.
            self.tree.notify(target.parent, target.name, target, "modify")

    @contextlib.contextmanager
    def _muted(self, view: KvView, key: str) -> Iterator[None]:
        """While this mount changes ``key``, its watch echo is not news to the kernel."""
        view.mute(key)
        try:
            yield
        finally:
            view.unmute(key)

    async def _safe_current(self, view: KvView, key: str) -> int | None:
        try:
            return await self._current_revision(view, key)
        except HvfsError:
            return None

    def release(self, fh: int) -> Handle | None:
        h = self.handles.pop(fh, None)
        if h is not None:
            if self.writers.get(h.node.ino) is h:
                del self.writers[h.node.ino]
            if not h.direct_io and h.node.kind is Kind.KV:
                h.node.cached_open -= 1
        return h

    @staticmethod
    def _display(node: Node) -> str:
        """A node's path in the mount, for reasons and logs."""
        return node.path().decode(errors="replace")

    # -- create, mkdir, unlink, rmdir, rename ------------------------------------------

    def _kv_parent(self, parent_ino: int) -> tuple[Node, KvView]:
        parent = self.node(parent_ino)
        if parent.kind is not Kind.DIR:
            raise NotADirectory(f"{parent.path().decode(errors='replace')} is not a directory")
        if parent.view is None:
            raise NotPermitted(f"{parent.path().decode()}: only bucket directories hold files")
        if self.read_only:
            raise ReadOnly("mounted read-only")
        return parent, parent.view

    async def create(self, parent_ino: int, name: bytes, flags: int, pid: int = 0) -> Handle:
        """open(O_CREAT) of a name the kernel does not know.

        A new key is created (empty) in NATS before this returns, so a file
        exists for everyone once open() succeeds and a refused create fails
        open() itself; the content follows at close like any write.
        """
        if self.echo.owns(pid):
            node = self.echo.announced(parent_ino, name, Kind.KV)
            return self._new_fh(Handle(0, node, True, b"", node.revision, pid=pid, echo=True))
        _check_name(name)
        sparent = self.node(parent_ino)
        if sparent.stream is not None:
            assert sparent.children is not None
            if name in sparent.children:
                if flags & os.O_EXCL:
                    raise Exists(f"{name.decode(errors='replace')} exists")
                return await self.open(sparent.children[name].ino, flags, pid)
            h = await self.stream_create(sparent, name, self._new_fh)
            h.pid = pid
            return h
        parent, view = self._kv_parent(parent_ino)
        assert parent.children is not None
        m = _REV_RE.match(name)
        if m and name not in parent.children:
            return await self._create_at_revision(parent, m.group(1), int(m.group(2)), flags, pid)
        existing = parent.children.get(name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise Exists(f"{self._display(existing)} exists")
            return await self.open(existing.ino, flags, pid)
        key = view.key_for(parent, name)
        where = f"{self._display(parent)}/{name.decode(errors='replace')}"
        try:
            with self._muted(view, key):
                rev = await self.store.create(view.bucket, key, b"")
        except Exists:
            if flags & os.O_EXCL:
                raise Exists(f"{where} exists (key {view.bucket}/{key})") from None
            # Created elsewhere a moment ago: open() opens that one, as on any filesystem.
            found = await self._lookup_in_nats(parent, name)
            if found is None:
                raise
            return await self.open(found.ino, flags, pid)
        made = view.put(key, rev, 0, time.time(), notify=False)
        if made is None or made.parent is not parent or made.name != name:
            raise InvalidName(f"{where} maps to key {key!r}, whose name is taken here "
                              f"({view.hidden.get(key, 'see docs/naming.md')})")
        h = self._new_fh(Handle(0, made, True, bytearray(), rev, created=True))
        h.pid = pid
        return h

    async def _create_at_revision(self, parent: Node, base: bytes, rev: int, flags: int, pid: int) -> Handle:
        """``echo > FILE@REV`` where REV is not in FILE's history: the CAS is lost
        (ESTALE), unless REV is 0 and FILE does not exist (create only)."""
        view = parent.view
        assert view is not None
        key = self._key_of(parent, base)
        current = await self._current_revision(view, key)
        if current != rev:
            raise Conflict(f"{view.bucket}/{key}: revision {rev} is not current "
                           f"(current: {current or 'none'}); read the file again", current)
        node = await self._revision_node(parent, base, rev)
        return await self.open(node.ino, flags | os.O_WRONLY, pid)

    async def mkdir(self, parent_ino: int, name: bytes, pid: int = 0) -> Node:
        if self.echo.owns(pid):
            return self.echo.announced(parent_ino, name, Kind.DIR)
        _check_name(name)
        parent = self.node(parent_ino)
        if parent.stream is not None:
            assert parent.children is not None
            if name in parent.children:
                raise Exists(f"{name.decode(errors='replace')} exists")
            return self.stream_mkdir(parent, name)
        if parent is self.kv_dir and not self.read_only:
            bucket = name.decode(errors="replace")
            if not re.fullmatch(r"[a-zA-Z0-9_-]+", bucket):
                raise InvalidName(f"{bucket!r} is not a valid bucket name")
            await self.refresh_buckets()
            assert parent.children is not None
            if name in parent.children:
                raise Exists(f"bucket {bucket} exists")
            await self.store.create_bucket(bucket)
            await self.refresh_buckets()
            return parent.children[name]
        parent, view = self._kv_parent(parent_ino)
        assert parent.children is not None
        if name in parent.children:
            raise Exists(f"{self._display(parent.children[name])} exists")
        key = view.key_for(parent, name)
        node = self.tree.new(Kind.DIR, name, parent)
        node.view, node.key, node.local = view, key, True
        self.tree.attach(parent, node)
        return node

    async def unlink(self, parent_ino: int, name: bytes, pid: int = 0) -> None:
        if self.echo.owns(pid):
            return  # the notifier announcing a delete already applied
        _check_name(name)
        parent = self.node(parent_ino)
        assert parent.children is not None
        node = parent.children.get(name)
        if parent is self.conflicts_dir and node is not None and node.kind is Kind.CTRL and name != b"index":
            self.conflicts.remove(name.decode())
            self.tree.detach(node)
            return
        if parent.queue is not None:
            if node is None:
                raise NotFound(f"{name.decode(errors='replace')}: no such file")
            return await parent.queue.ack(self.store, node, self.read_only)
        if parent.stream is not None:
            if node is None:
                raise NotFound(f"{name.decode(errors='replace')}: no such file")
            if node.kind is Kind.DIR:
                raise IsADirectory(f"{name.decode(errors='replace')} is a directory")
            return await self.stream_unlink(node)
        parent, view = self._kv_parent(parent_ino)
        if node is None:
            raise NotFound(f"{self._display(parent)}/{name.decode(errors='replace')}: no such file")
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{self._display(node)} is a directory")
        await self._settled(node)
        with self._muted(view, node.key):
            await self.store.delete(view.bucket, node.key)
        view.keys.pop(node.key, None)
        self.tree.detach(node)
        self._keep_emptied(parent)

    def _keep_emptied(self, d: Node) -> None:
        """A directory emptied by a local rm or mv stays, as on any filesystem,
        until rmdir (``rm -r`` and ``mv`` send one next); it is now this mount's own."""
        if d.kind is Kind.DIR and d.children == {} and d.view is not None and d is not d.view.root:
            d.local = True

    async def rmdir(self, parent_ino: int, name: bytes, pid: int = 0) -> None:
        if self.echo.owns(pid):
            return
        _check_name(name)
        sparent = self.node(parent_ino)
        if sparent.stream is not None:
            assert sparent.children is not None
            d = sparent.children.get(name)
            if d is None or d.kind is not Kind.DIR:
                raise NotFound(f"{name.decode(errors='replace')}: no such directory")
            if d.children:
                raise NotEmpty(f"{name.decode(errors='replace')} is not empty")
            self.tree.detach(d)
            return
        parent, view = self._kv_parent(parent_ino)
        assert parent.children is not None
        node = parent.children.get(name)
        if node is None:
            raise NotFound(f"{name.decode(errors='replace')}: no such directory")
        if node.kind is not Kind.DIR:
            raise NotADirectory(f"{name.decode(errors='replace')} is not a directory")
        assert node.children is not None
        if node.children:
            raise NotEmpty(f"{self._display(node)} is not empty")
        self.tree.detach(node)
        self._keep_emptied(parent)

    async def rename(self, old_ino: int, old: bytes, new_ino: int, new: bytes, flags: int) -> None:
        """Put the value under the new key, then delete the old key: never loses data."""
        _check_name(old)
        _check_name(new)
        if self.node(old_ino).stream is not None or self.node(new_ino).stream is not None:
            raise NotPermitted("stream messages cannot be renamed")
        src_parent, src_view = self._kv_parent(old_ino)
        dst_parent, dst_view = self._kv_parent(new_ino)
        assert src_parent.children is not None and dst_parent.children is not None
        src = src_parent.children.get(old)
        if src is None:
            raise NotFound(f"{self._display(src_parent)}/{old.decode(errors='replace')}: no such file")
        if flags & 2:  # RENAME_EXCHANGE
            raise NotSupported("RENAME_EXCHANGE is not supported")
        dst = dst_parent.children.get(new)
        if dst is src:
            return
        if dst is not None and flags & 1:  # RENAME_NOREPLACE
            raise Exists(f"{self._display(dst)} exists")
        if src.kind is Kind.DIR:
            if dst is not None and dst.kind is not Kind.DIR:
                raise NotADirectory(f"{self._display(dst)} is not a directory")
            if dst is not None and dst.children:
                raise NotEmpty(f"{self._display(dst)} is not empty")
            raise CrossDevice("NATS cannot rename a key prefix: directories move by copy "
                              "(mv does this by itself)")
        if dst is not None and dst.kind is Kind.DIR:
            raise IsADirectory(f"{self._display(dst)} is a directory")
        dst_key = dst.key if dst is not None else dst_view.key_for(dst_parent, new)
        await self._settled(src)
        if dst is not None:
            await self._settled(dst)
        entry = await self.store.get(src_view.bucket, src.key)
        with self._muted(dst_view, dst_key), self._muted(src_view, src.key):
            current = 0
            if dst is not None:
                current = await self._current_revision(dst_view, dst_key)
            if current:
                rev = await self.store.update(dst_view.bucket, dst_key, entry.value, current)
            else:
                rev = await self.store.create(dst_view.bucket, dst_key, entry.value)
            await self.store.delete(src_view.bucket, src.key, entry.revision)
        # The kernel moves the source inode to the new name: so does the index.
        src_view.keys.pop(src.key, None)
        self.tree.detach(src)
        if dst is not None:
            dst_view.keys.pop(dst.key, None)
            self.tree.detach(dst)
        src.view, src.key, src.name = dst_view, dst_key, new
        src.revision, src.size = rev, len(entry.value)
        src.mtime = src.ctime = time.time()
        self.tree.attach(dst_parent, src)
        dst_view.keys[dst_key] = src
        self._keep_emptied(src_parent)

    async def set_size(self, ino: int, size: int, fh: int | None) -> None:
        """truncate(2): on a handle it is buffered, on a path it is one new revision."""
        if fh is not None and fh in self.handles:
            await self.truncate_handle(self.handles[fh], size)
            return
        node = self.node(ino)
        if node.kind is not Kind.KV:
            raise NotPermitted("only files of keys can be truncated")
        await self._settled(node)
        h = await self.open(ino, os.O_RDWR)
        try:
            await self.truncate_handle(h, size)
            await self.flush(h.fh, final=True)
        finally:
            self.release(h.fh)

    async def touch(self, ino: int, pid: int = 0) -> None:
        """utimensat(UTIME_NOW): a new revision with the same value, a heartbeat
        other mounts see. If the calling process holds a handle that created
        the key or has unpublished changes, it adds nothing: that close publishes."""
        node = self.node(ino)
        if node.kind is not Kind.KV or node.view is None or self.echo.owns(pid):
            return
        if any(h.created or h.dirty for h in self._handles_of(node, pid)):
            return
        if self.read_only:
            raise ReadOnly("mounted read-only")
        await self._settled(node)
        view = node.view
        try:
            entry = await self.store.get(view.bucket, node.key)
        except NotFound:
            view.remove(node.key, None)
            raise NotFound(f"{self._display(node)}: the key is gone") from None
        try:
            with self._muted(view, node.key):
                rev = await self.store.update(view.bucket, node.key, entry.value, entry.revision)
        except Conflict:
            return  # another writer got in first: the key is as fresh as a touch would make it
        view.put(node.key, rev, len(entry.value), time.time(), notify=False)

    # -- xattrs -------------------------------------------------------------------

    def xattr_names(self, node: Node) -> list[bytes]:
        if node.stream is not None or node.queue is not None:
            return []  # answered by their own providers (see xattrs)
        if node.view is None:
            return []
        if node.kind in (Kind.KV, Kind.REV):
            return list(XATTRS)
        return [b"user.hvfs.bucket", b"user.hvfs.key"]

    async def xattrs(self, node: Node, pid: int = 0) -> dict[bytes, bytes]:
        if node.stream is not None:
            return await self.stream_xattrs(node)
        if node.queue is not None:
            return node.queue.xattrs(node)
        if node.view is None:
            return {}
        out = {b"user.hvfs.bucket": node.view.bucket.encode(), b"user.hvfs.key": node.key.encode()}
        if node.kind in (Kind.KV, Kind.REV):
            out[b"user.hvfs.revision"] = str(await self._revision_for(node, pid)).encode()
        return out

    async def _revision_for(self, node: Node, pid: int) -> int:
        """``user.hvfs.revision``: in a process holding the file open, the revision of
        the content its latest handle has; otherwise as fresh as open()."""
        if node.kind is Kind.REV:
            return node.revision
        for h in self._handles_of(node, pid):
            if h.base:
                return h.base
        view = node.view
        assert view is not None
        await self._settled(node)
        try:
            entry = await self.store.get(view.bucket, node.key)
        except NotFound:
            view.remove(node.key, None)
            raise NotFound(f"{self._display(node)}: the key is gone") from None
        view.put(node.key, entry.revision, len(entry.value), entry.time)
        return entry.revision

    def _handles_of(self, node: Node, pid: int) -> list[Handle]:
        """The handles on ``node`` that the process of thread ``pid`` opened, newest first.

        FUSE tells a request's thread, not its descriptor: fgetxattr and
        futimens reach us as calls on the inode from a process.
        """
        mine = [h for h in self.handles.values()
                if h.node is node and h.pid and not h.echo]
        if not mine or not pid:
            return []
        caller = _tgid(pid)
        out = []
        for h in sorted(mine, key=lambda h: h.fh, reverse=True):
            if not h.tgid:
                h.tgid = _tgid(h.pid)
            if h.tgid == caller:
                out.append(h)
        return out

    async def getxattr(self, ino: int, name: bytes, pid: int = 0) -> bytes:
        if not name.startswith(b"user."):
            # ENOTSUP, not ENODATA: ls and friends then stop asking for
            # ACLs and security labels on this filesystem.
            raise NotSupported(f"{name.decode(errors='replace')}: only user.hvfs.* attributes exist here")
        node = self.node(ino)
        if node.stream is None and node.queue is None and name not in self.xattr_names(node):
            raise NoAttr(name.decode(errors="replace"))
        attrs = await self.xattrs(node, pid)
        if name not in attrs:
            raise NoAttr(name.decode(errors="replace"))
        return attrs[name]

    # -- status -------------------------------------------------------------------

    def _register_metrics(self) -> None:
        m = self.metrics
        for name, help in (("opens", "files opened"), ("reads", "read requests"),
                           ("publishes", "revisions and messages this mount published"),
                           ("conflicts", "compare-and-swap writes that lost"),
                           ("changes_seen", "changes the watches reported")):
            m.counter(f"vfs.{name}", help)
        st = self.store.state
        m.gauge("nats.connected", lambda: st.connected, "connected to NATS")
        m.gauge("nats.calls", lambda: st.calls, "NATS calls made")
        m.gauge("nats.errors", lambda: st.errors, "NATS calls that failed (answers such as no such key excluded)")
        m.gauge("nats.timeouts", lambda: st.timeouts, "NATS calls that ran past --timeout")
        m.gauge("nats.reconnects", lambda: st.reconnects, "reconnects to NATS")
        m.gauge("vfs.keys", lambda: sum(len(v.keys) for vs in self.views.values() for v in vs), "keys shown")
        m.gauge("vfs.inodes", lambda: len(self.tree.nodes), "inodes held")
        m.gauge("vfs.open_handles", lambda: len(self.handles), "open files")
        m.gauge("vfs.messages", lambda: sum(len(s.msgs) for s in self.streams.values()), "stream messages shown")
        m.gauge("conflicts.held", lambda: len(self.conflicts.items), "conflict files kept")
        m.gauge("conflicts.total", lambda: self.conflicts.total, "conflict files made")
        m.gauge("errors.total", lambda: self.errors.total, "errors returned with a reason")

    def render_status(self) -> bytes:
        """``.hvfs/status``: read from the metrics registry, plus what the mount is."""
        m, st = self.metrics, self.store.state
        doc = {
            "connected": st.connected,
            "server": st.server,
            "read_only": self.read_only,
            "uptime_s": round(time.time() - self.started, 1),
            "buckets": sorted(self.views),
            "streams": sorted(self.streams),
            "messages": m.value("vfs.messages"),
            "queues": {q.binding.path: {"held": len(q.held), "acked": q.acked, "released": q.released}
                       for q in self.queues},
            "keys": m.value("vfs.keys"),
            "inodes": m.value("vfs.inodes"),
            "open_handles": m.value("vfs.open_handles"),
            "nats": {k: m.value(f"nats.{k}") for k in ("calls", "errors", "timeouts", "reconnects")}
            | {"last_error": st.last_error},
            "counters": {k: m.value(f"vfs.{k}") for k in
                         ("opens", "reads", "publishes", "conflicts", "changes_seen")},
            "conflicts": {"held": m.value("conflicts.held"), "total": m.value("conflicts.total")},
            "errors_total": m.value("errors.total"),
        }
        notifier = m.group("notifier")
        if notifier:
            doc["notifier"] = notifier
        return (json.dumps(doc, indent=2) + "\n").encode()

