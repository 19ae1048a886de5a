"""KV buckets: the index of each bucket (fed by one watch) and its files.

A file is one key's value: ``open()`` fetches it, writes are buffered in the
handle and published at close/fsync as a compare-and-swap on the revision
the handle saw (docs/posix.md). ``FILE@REV`` nodes belong to
``hvfs.vfs.revision``; the ``kv/`` directory itself to ``hvfs.vfs.buckets``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable

import trio

from ..errors import (
    Conflict,
    CrossDevice,
    Exists,
    HvfsError,
    Invalid,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    TooLarge,
    Unavailable,
)
from ..store import RESYNC, SYNCED, KvChange, KvEntry, Op, Watch
from ..store.rules import write_header_bytes
from .handles import Handle
from .offline import unreachable
from .policy import WRITER_HEADER, Publish, WritePolicy, WriterLink
from .provider import Provider, Services, keep_emptied
from .revision import REVISION_XATTRS, XATTRS, RevisionProvider
from .spool import MSG_ID_LEN
from .tree import Kind, KvView, Node, display

__all__ = ["KvProvider", "MSG_ID_HEADER", "XATTRS", "parse_ttl", "ttl_of", "value_headers"]

log = logging.getLogger(__name__)

_REV_RE = re.compile(rb"^(.+)@(\d+)$")
_WRITE = os.O_WRONLY | os.O_RDWR


TTL_HEADER = "Nats-TTL"
#: every value a handle publishes carries one (hvfs.vfs.spool.Spool.msg_id): a write that timed
#: out can be told landed or not (hvfs.vfs.resolve)
MSG_ID_HEADER = "Nats-Msg-Id"


#: present while the file has a pending write (offline mode) / was last read from memory
STATE_XATTRS = (b"user.hvfs.pending", b"user.hvfs.stale")

#: once a writer opened a file beside page-cache readers on a mount, its read-only opens there
#: use direct_io until no writer opened it there for this many seconds (docs/consistency.md)
CONTENDED = 10.0


def value_headers(writer: str) -> dict[str, str]:
    """The extra headers of a handle's publish, at their largest: what its size limit leaves room for."""
    return {WRITER_HEADER: writer, MSG_ID_HEADER: "hvfs-" + "x" * MSG_ID_LEN}
#: keys whose last refused write's reason the mount keeps for user.hvfs.error
_REFUSED_KEPT = 4096


def ttl_of(headers: dict[str, str]) -> float | None:
    """The per-message TTL a message carries, in seconds (None: none)."""
    v = headers.get(TTL_HEADER, "").strip().lower()
    if not v or v in ("never", "0"):
        return None
    try:
        return parse_ttl(v)
    except Invalid:
        return None


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TTL_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")


def parse_ttl(text: str) -> float | None:
    """``setfattr -n user.hvfs.ttl -v VALUE``: seconds, or with s/m/h/d; 0, none: no TTL."""
    t = text.strip().lower()
    if t in ("", "0", "none", "never"):
        return None
    m = _TTL_RE.match(t)
    if m is None:
        raise Invalid(f"ttl {text!r}: give seconds (30), or 30s, 5m, 2h, 1d; 0 or none for no TTL")
    secs = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if secs < 1:
        raise Invalid(f"ttl {text!r}: NATS keeps per-message TTLs in whole seconds, at least 1")
    return secs


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


class KvProvider(Provider):
    """Bucket directories and key files."""

    def __init__(self, sv: Services, handles: dict[int, Handle]) -> None:
        super().__init__(sv)
        self.handles = handles  # the facade's table: which process holds what open
        self.views: dict[str, list[KvView]] = {}  # bucket -> views
        self._synced: dict[int, trio.Event] = {}  # id(view) -> set when its snapshot is complete
        self._watches: dict[str, Watch] = {}
        self._policies: dict[int, WritePolicy] = {}  # id(view) -> its binding's write policy
        self._raw = WritePolicy([WriterLink(sv.writer)])  # the raw view's: bytes as they are
        self.revisions = RevisionProvider(sv, self)
        #: (bucket, key) -> (the revision then current, why): the last write this mount refused
        self.refused: dict[tuple[str, str], tuple[int, str]] = {}
        #: keys whose last read was served from memory while NATS was away (user.hvfs.stale)
        self.stale: set[tuple[str, str]] = set()

    # -- views and watches ----------------------------------------------------

    async def bind(self, root: Node, bucket: str, prefix: str = "",
                   policy: WritePolicy | None = None) -> KvView:
        """Show ``bucket`` (under ``prefix``) below ``root``; returns once its snapshot is in.

        ``policy`` is the binding's write-policy chain (none: the raw view's, bytes as they are).
        """
        root.provider = self
        policy = policy or self._raw
        view = KvView(self.sv.tree, root, bucket, prefix, policy.suffix)
        self._policies[id(view)] = policy
        others = [v for v in self.views.get(bucket, []) if v is not view]
        self.views.setdefault(bucket, []).append(view)
        ev = trio.Event()
        self._synced[id(view)] = ev
        if others and bucket in self._watches:
            if all(v.synced for v in others):
                # Another view of a watched bucket: replay its keys.
                for key, rev, size, mtime in others[0].entries():
                    view.put(key, rev, size, mtime, notify=False, leaf=True)
                view.end_resync()
                ev.set()
            # else: the watch's SYNCED marker is still to come, for every view.
        else:
            old = self._watches.pop(bucket, None)
            if old is not None:
                await old.stop()
            self._watches[bucket] = await self.sv.store.watch(bucket, lambda items: self._on_watch(bucket, items))
        with trio.move_on_after(max(5.0, self.sv.store.timeout * 5)):
            await ev.wait()
        return view

    async def unbind(self, bucket: str, root: Node) -> None:
        views = self.views.get(bucket, [])
        for v in [v for v in views if v.root is root]:
            views.remove(v)
            self._synced.pop(id(v), None)
            self._policies.pop(id(v), None)
            for n in list(self.sv.tree.walk(root))[1:]:
                n.linked = False
                self.sv.tree.maybe_free(n)
        if not views:
            self.views.pop(bucket, None)
            w = self._watches.pop(bucket, None)
            if w is not None:
                await w.stop()
            self.sv.store.forget_bucket(bucket)

    async def close(self) -> None:
        for w in self._watches.values():
            try:
                await w.stop()
            except HvfsError:
                pass
        self._watches.clear()

    def _on_watch(self, bucket: str, items: list[KvChange | str]) -> None:
        """A batch of the bucket's watch, on the trio thread."""
        views = self.views.get(bucket, [])
        seen = 0
        for item in items:
            if item.__class__ is not str:
                assert isinstance(item, KvChange)
                if item.msg_id and self.sv.resolver is not None:
                    self.sv.resolver.seen(item.msg_id, item.revision)
                seen += 1
                first = True  # part of a first snapshot: the state, not a change (no event, no lag)
                for v in views:
                    first = first and not v.synced
                    v.apply(item.key, item.op is not Op.PUT, item.revision, item.size, item.time)
                if not first:
                    self.sv.metrics.observe("watch.lag_seconds", max(0.0, time.time() - item.time))
                    self.sv.events.add(item)
            elif item == RESYNC:
                for v in views:
                    v.begin_resync()
            elif item == SYNCED:
                for v in views:
                    v.end_resync()
                    v.live = self.sv.store.state.reconnects
                    ev = self._synced.get(id(v))
                    if ev is not None:
                        ev.set()
        if seen:
            self.sv.metrics.inc("vfs.changes_seen", seen)

    def policy(self, view: KvView) -> WritePolicy:
        return self._policies.get(id(view), self._raw)

    def writable_view(self, view: KvView) -> None:
        """EROFS on a read-only mount, and in a binding that is read-only."""
        self.writable(view.root, self.policy(view).read_only)

    def read_only(self, node: Node) -> bool:
        return node.view is not None and self.policy(node.view).read_only

    async def set_xattr(self, node: Node, name: bytes, value: bytes) -> None:
        if name == b"user.hvfs.ttl":
            await self.set_ttl(node, value)
        else:
            await super().set_xattr(node, name, value)

    def _shown(self, node: Node, revision: int, shown: bytes) -> None:
        """A typed file's size is its rendered content's: recorded per revision."""
        view = node.view
        if view is not None and view.suffix and node.kind is Kind.KV and revision >= node.revision:
            node.size, node.shown_rev = len(shown), revision

    async def refresh_attrs(self, node: Node) -> None:
        """A typed file whose latest revision is not rendered yet: render it for its size."""
        view = node.view
        if view is None or not view.suffix or node.kind is not Kind.KV or node.shown_rev == node.revision:
            return
        if self.sv.writers.get(node.ino) is not None:
            return  # a writer here defines the size
        try:
            entry = await self.fetch(node)
        except NotFound:
            return
        self._shown(node, entry.revision, self.policy(view).on_read(node, entry.value))

    async def _wait_synced(self, view: KvView) -> None:
        if view.synced:
            return
        ev = self._synced.get(id(view))
        if ev is not None:
            with trio.move_on_after(self.sv.store.timeout):
                await ev.wait()

    async def snapshots_in(self, bound: float) -> None:
        """Wait (at most ``bound`` seconds) for every bucket's first snapshot: its messages
        share the one NATS connection with every other call, which would wait behind a
        large one (a million keys: seconds) longer than a call's timeout."""
        with trio.move_on_after(bound):
            for bucket, vs in list(self.views.items()):
                if bucket not in self._watches:
                    continue  # its watch failed to start: nothing will come
                for v in vs:
                    ev = self._synced.get(id(v))
                    if ev is not None and not v.synced:
                        await ev.wait()

    def key_count(self) -> int:
        return sum(len(v.keys) for vs in self.views.values() for v in vs)

    # -- names ------------------------------------------------------------------

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        view = parent.view
        assert view is not None and parent.children is not None
        child = parent.children.get(name)
        if child is None:
            await self._wait_synced(view)
            child = parent.children.get(name)
        if child is not None:
            return child
        m = _REV_RE.match(name)
        if m:
            return await self.revisions.node(parent, m.group(1), int(m.group(2)))
        if not echo:
            return await self.lookup_in_nats(parent, name)
        return None

    async def lookup_in_nats(self, parent: Node, name: bytes) -> Node | None:
        """A name the index does not have yet may be a key the watch has not
        delivered (it trails NATS by a few ms): ask NATS before saying ENOENT."""
        view = parent.view
        assert view is not None
        try:
            key = view.key_for(parent, name)
            entry = await self.sv.store.get(view.bucket, key)
        except (NotFound, InvalidName):
            return None
        except HvfsError as e:
            off = self.sv.offline
            if off is not None and off.enabled and unreachable(e):
                return None  # offline: no such name as far as this mount knows (a create may follow)
            raise
        node = view.put(key, entry.revision, len(entry.value), entry.time)
        return node if node is not None and node.parent is parent and node.name == name else None

    async def listing(self, d: Node) -> None:
        if d.view is not None:
            await self._wait_synced(d.view)

    # -- files --------------------------------------------------------------------

    def size(self, node: Node) -> int:
        off = self.sv.offline
        if off is not None and off.pending and node.view is not None and node.kind is Kind.KV \
                and self.sv.writers.get(node.ino) is None:
            pw = off.of(node.view.bucket, node.key)
            if pw is not None:
                return len(self.policy(node.view).on_read(node, pw.data)) if node.view.suffix else len(pw.data)
        if node.cached_open > 0:
            # Readers share the page cache, clipped at the kernel's size: while
            # one is open its content's size stands (docs/consistency.md).
            return node.cached_size
        return super().size(node)

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        view = node.view
        assert view is not None
        writable = bool(flags & _WRITE)
        trunc = bool(flags & os.O_TRUNC)
        if writable:
            self.writable_view(view)
            now = time.monotonic()
            if node.cached_open or node.contended > now:
                # A writer beside open page-cache readers: its O_TRUNC and writes set the
                # kernel's size under them (a read may come out empty or cut), so until
                # writers here have left the file alone for a while, its readers here
                # read with direct_io instead.
                node.contended = now + CONTENDED
        if writable and trunc and view.synced and node.linked and node.revision:
            # The old value is not read: the revision the mount knows is the one
            # this writer saw; a newer one makes the publish fail (ESTALE), never lost.
            node.told = 0  # the kernel sets its size to 0 on an O_TRUNC open
            return Handle(0, node, True, bytearray(), node.revision, dirty=node.size > 0, ttl=node.ttl)
        entry = await self.fetch(node)
        shown = self.policy(view).on_read(node, entry.value)
        self._shown(node, entry.revision, shown)
        if not writable:
            h = Handle(0, node, False, shown, entry.revision)
            # Shared read-only handles go through the page cache (so MAP_SHARED works)
            # while every one open holds the same revision: pages are per inode.
            # ... and only when the kernel's size for the inode is this content's: the
            # kernel clips page-cache reads at its size and zero-fills up to it, and an
            # attribute reply racing a remote change's invalidation may be dropped, so a
            # size it must first learn is not relied on: such a handle reads with direct_io.
            h.cached = (node.cached_open == 0 or node.cached_rev == entry.revision) \
                and node.told == len(shown) and not self._writing(node) \
                and node.contended < time.monotonic()
            return h
        if trunc:
            node.told = 0
        buf = bytearray() if trunc else bytearray(shown)
        return Handle(0, node, True, buf, entry.revision, dirty=trunc and bool(shown), ttl=node.ttl)

    def _writing(self, node: Node) -> bool:
        """A handle open for writing on ``node`` here: its O_TRUNC, writes and size replies set
        the kernel's size for the inode, which page-cache reads are clipped at."""
        return any(h.writable and h.node is node for h in self.handles.values())

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        """open(O_CREAT) of a name the kernel does not know.

        A new key is created (empty) in NATS before this returns, so a file
        exists for everyone once open() succeeds and a refused create fails
        open() itself; the content follows at close like any write.
        """
        view = parent.view
        assert view is not None and parent.children is not None
        self.writable_view(view)
        m = _REV_RE.match(name)
        if m and name not in parent.children:
            return await self.revisions.create_at(parent, m.group(1), int(m.group(2)), flags, pid)
        existing = parent.children.get(name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise Exists(f"{display(existing)} exists")
            return await existing.provider.open(existing, flags, pid)
        key = view.key_for(parent, name)
        where = f"{display(parent)}/{name.decode(errors='replace')}"
        env = await self.policy(view).envelope(b"")
        try:
            with view.muted(key):
                rev = await self.sv.store.create(view.bucket, key, b"", ttl=env.ttl, headers=env.headers)
        except Exists:
            if flags & os.O_EXCL:
                raise Exists(f"{where} exists (key {view.bucket}/{key})") from None
            # Created elsewhere a moment ago: open() opens that one, as on any filesystem.
            found = await self.lookup_in_nats(parent, name)
            if found is None:
                raise
            return await self.open(found, flags, pid)
        except HvfsError as e:
            off = self.sv.offline
            if off is None or not off.enabled or not unreachable(e):
                raise
            # Offline mode: the file exists here now; its content (empty if nothing is written)
            # becomes a pending create at close, applied as a create when NATS is back.
            made = view.put(key, 0, 0, time.time(), notify=False)
            if made is None or made.parent is not parent or made.name != name:
                raise InvalidName(f"{where} maps to key {key!r}, whose name is taken here "
                                  f"({view.hidden.get(key, 'see docs/naming.md')})") from None
            made.local, made.ttl = True, env.ttl
            return Handle(0, made, True, bytearray(), 0, dirty=True, created=True, ttl=env.ttl)
        made = view.put(key, rev, 0, time.time(), notify=False)
        if made is None or made.parent is not parent or made.name != name:
            raise InvalidName(f"{where} maps to key {key!r}, whose name is taken here "
                              f"({view.hidden.get(key, 'see docs/naming.md')})")
        made.ttl = env.ttl
        return Handle(0, made, True, bytearray(), rev, created=True, ttl=env.ttl)

    async def write(self, h: Handle, off: int, buf: bytes) -> int:
        return await self.write_buffer(h, off, buf)

    async def truncate(self, h: Handle, size: int) -> None:
        await self.truncate_buffer(h, size)

    async def max_value_size(self, view: KvView) -> int:
        """The largest value a CAS publish can carry: NATS counts our headers too."""
        limit = self.sv.max_payload
        bi = await self.sv.store.bucket(view.bucket)
        if bi.max_value_size > 0:
            limit = min(limit, bi.max_value_size)
        pol = self.policy(view)
        return limit - write_header_bytes(view.bucket, pol.ttl, value_headers(self.sv.writer))

    async def check_size(self, h: Handle, size: int, intended: Callable[[], bytes]) -> None:
        """EFBIG before a value grows past what its bucket takes; the handle is refused for good."""
        view = h.node.view
        assert view is not None
        limit = await self.max_value_size(view)
        if size > limit:
            err = TooLarge(f"{display(h.node)}: {size} bytes is over the bucket's max value size "
                           f"of {limit} bytes")
            self.sv.fail(h, err, intended(), view.bucket)
            raise err

    async def flush(self, h: Handle, final: bool) -> None:
        """Publish the handle's content as one revision: CAS on the revision it last saw."""
        node = h.node
        view = node.view
        assert view is not None and isinstance(h.data, bytearray)
        data = bytes(h.data)
        h.dirty = h.wrote = False
        pol = self.policy(view)
        msg_id = ""
        off = self.sv.offline
        try:
            p = await pol.on_write(node, data, _kept_ttl(pol, h.ttl))
            msg_id = self.sv.spool.msg_id(h)
            if off is not None and off.of(view.bucket, node.key) is not None:
                # A write of a key with a pending write joins it: applied in order, never around it.
                self._keep_pending(h, p, msg_id, sent=False)
                return
            with view.muted(node.key):
                rev = await self.sv.store.update(view.bucket, node.key, p.value, h.base, ttl=p.ttl,
                                                 headers={**p.headers, MSG_ID_HEADER: msg_id})
        except HvfsError as e:
            if off is not None and off.enabled and msg_id and unreachable(e) and node.kind is Kind.KV:
                # Offline mode: NATS is away; the bytes are spooled durably, applied when it is back.
                self._keep_pending(h, p, msg_id, sent=not (isinstance(e, Unavailable) and not e.sent))
                return
            current = e.current if isinstance(e, Conflict) else None
            if isinstance(e, Exists | Conflict):
                self.sv.metrics.inc("vfs.conflicts")
                if current is None:
                    current = await self.safe_current(view, node.key)
            self.sv.fail(h, e, data, view.bucket, current, msg_id)
            if isinstance(e, Invalid):
                self.sv.metrics.inc("vfs.refused")
                await self._refused(h, e)
            raise
        self.sv.metrics.inc("vfs.publishes")
        h.base = rev
        h.created = False  # its content is in: a touch is a heartbeat again
        self.sv.published(h)
        self.refused.pop((view.bucket, node.key), None)
        target = view.keys.get(node.key, node) if node.kind is Kind.REV else node
        newer = target.kind is Kind.KV and target.revision > rev
        view.put(node.key, rev, len(p.value), time.time(), notify=False)  # no-op if newer
        if self.sv.cache_watch and off is not None and p.ttl is None:
            # What this mount wrote is the revision's value: its next open needs no get.
            off.remember(KvEntry(view.bucket, node.key, p.value, rev, time.time(),
                                 {**p.headers, MSG_ID_HEADER: msg_id}))
        if target.kind is Kind.KV:
            target.ttl = p.ttl
            if pol.typed:
                self._shown(target, rev, pol.on_read(target, p.value))
        if newer and target.parent is not None:
            # Another writer's revision arrived while ours was in flight.
            self.sv.tree.notify(target.parent, target.name, target, "modify")

    def _keep_pending(self, h: Handle, p: Publish, msg_id: str, sent: bool) -> None:
        """Offline mode: the handle's bytes become the key's pending write (hvfs.vfs.offline)."""
        off = self.sv.offline
        node, view = h.node, h.node.view
        assert off is not None and view is not None
        self.sv.spool.ensure(h)
        spool_id = self.sv.spool.adopt(h)  # its slot, fsync'd, is the pending write's now
        off.keep(view.bucket, node.key, display(node), h.base, p.value, msg_id, spool_id, p.ttl,
                      {k: v for k, v in p.headers.items() if k != MSG_ID_HEADER}, sent)
        self.sv.metrics.inc("vfs.pending")
        self.sv.published(h)
        node.mtime = node.ctime = time.time()

    async def refresh_key(self, bucket: str, key: str) -> None:
        """A write of ours that timed out did land: the index learns its revision now, not
        when the watch catches up (a later O_TRUNC open bases its CAS on it)."""
        for view in self.views.get(bucket, []):
            node = view.keys.get(key)
            if node is not None and node.kind is Kind.KV:
                try:
                    await self.fetch(node)
                except HvfsError:
                    pass
                return

    def pending_settled(self, bucket: str, key: str) -> None:
        """A pending write landed or lost: the file shows NATS's value again; the kernel is told."""
        for view in self.views.get(bucket, []):
            node = view.keys.get(key)
            if node is not None and node.parent is not None:
                self.sv.tree.notify(node.parent, node.name, node, "modify")

    async def _refused(self, h: Handle, e: HvfsError) -> None:
        """A write the binding refused: the value in NATS stays as it was, and the
        reason is the file's ``user.hvfs.error`` until a write succeeds. A key this
        handle's open created (empty, to claim the name) is deleted again: no
        half-made entity is left behind."""
        node, view = h.node, h.node.view
        assert view is not None
        self.refused[(view.bucket, node.key)] = (h.base, e.reason)
        while len(self.refused) > _REFUSED_KEPT:
            del self.refused[next(iter(self.refused))]  # the oldest reason goes first
        if not h.created:
            return
        try:
            env = await self.policy(view).envelope(b"")
            # Not muted: the kernel must hear that the file it just created is gone.
            await self.sv.store.delete(view.bucket, node.key, h.base, headers=env.headers)
        except HvfsError as err:
            log.info("%s: could not take back the create of a refused write: %s", display(node), err.reason)
            return
        if view.keys.get(node.key) is node:
            view.remove(node.key, None)

    async def fetch(self, node: Node) -> KvEntry:
        """The key's latest value from NATS, recorded in the index; ENOENT if it is gone."""
        view = node.view
        assert view is not None
        off = self.sv.offline
        if off is not None:
            pw = off.of(view.bucket, node.key)
            if pw is not None:  # this mount's own pending write: read your writes
                return KvEntry(view.bucket, node.key, pw.data, pw.base, pw.time, dict(pw.headers))
        if self.sv.cache_watch:
            kept = await self._from_watch(view, node)
            if kept is not None:
                return kept
        try:
            entry = await self.sv.store.get(view.bucket, node.key)
        except NotFound:
            view.remove(node.key, None)
            raise NotFound(f"{display(node)}: the key is gone") from None
        except HvfsError as e:
            kept = off.recall(view.bucket, node.key) if off is not None and off.enabled and unreachable(e) else None
            if kept is None:
                raise
            self.sv.metrics.inc("vfs.stale_reads")
            self.stale.add((view.bucket, node.key))
            return kept
        self.stale.discard((view.bucket, node.key))
        if off is not None:
            off.remember(entry)
        view.put(node.key, entry.revision, len(entry.value), entry.time)
        node.ttl = ttl_of(entry.headers)
        return entry

    async def _from_watch(self, view: KvView, node: Node) -> KvEntry | None:
        """``--cache watch``: the value read before, if it is still the key's latest revision
        as the watch has it (current up to the watch's lag), the watch has run without a
        break since its last snapshot, and no expiry can end the value unseen (no TTL
        unless the server marks expiries)."""
        st = self.sv.store.state
        off = self.sv.offline
        if off is None or not (st.connected and view.synced and not view.resyncing
                               and view.live == st.reconnects and node.linked):
            return None
        kept = off.recall(view.bucket, node.key)
        if kept is None or kept.revision != node.revision:
            self.sv.metrics.inc("vfs.cache_misses")
            return None
        bi = await self.sv.store.bucket(view.bucket)
        if (bi.max_age or ttl_of(kept.headers) is not None) and not bi.marker_ttl:
            return None
        self.sv.metrics.inc("vfs.cache_hits")
        self.stale.discard((view.bucket, node.key))
        node.ttl = ttl_of(kept.headers)
        return kept

    async def current_revision(self, view: KvView, key: str) -> int:
        try:
            return (await self.sv.store.get(view.bucket, key)).revision
        except NotFound:
            return 0

    async def safe_current(self, view: KvView, key: str) -> int | None:
        try:
            return await self.current_revision(view, key)
        except HvfsError:
            return None

    async def set_size(self, node: Node, size: int) -> None:
        """truncate(2) of a path: one new revision."""
        if node.kind is not Kind.KV:
            raise NotPermitted("only files of keys can be truncated")
        self.sv.metrics.inc("vfs.opens")
        h = await self.open(node, os.O_RDWR, 0)
        try:
            await self.truncate(h, size)
            async with h.lock:
                await self.flush(h, final=True)
        finally:
            self.sv.published(h)  # an unregistered handle: its writers entry goes with it

    async def touch(self, node: Node, pid: int) -> None:
        """utimensat(UTIME_NOW): a new revision with the same value, a heartbeat
        other mounts see. If the calling process holds a handle that created
        the key or has unpublished changes, it adds nothing: that close publishes."""
        if node.kind is not Kind.KV or node.view is None:
            return
        if any(h.created or h.dirty for h in self.handles_of(node, pid)):
            return
        view = node.view
        self.writable_view(view)
        entry = await self.fetch(node)
        pol = self.policy(view)
        env = await pol.envelope(entry.value, _kept_ttl(pol, node.ttl))
        try:
            with view.muted(node.key):
                rev = await self.sv.store.update(view.bucket, node.key, entry.value, entry.revision,
                                                 ttl=env.ttl, headers=env.headers)
        except Conflict:
            return  # another writer got in first: the key is as fresh as a touch would make it
        self._republished(node, rev, entry, env)

    def _republished(self, node: Node, rev: int, entry: KvEntry, env: Publish) -> None:
        """The same value again under a new revision (a touch, a new TTL)."""
        view = node.view
        assert view is not None
        view.put(node.key, rev, len(entry.value), time.time(), notify=False)
        node.ttl = env.ttl
        if view.suffix and node.shown_rev == entry.revision:
            node.shown_rev = rev  # the same bytes: the same rendered size

    async def set_ttl(self, node: Node, value: bytes) -> None:
        """``setfattr -n user.hvfs.ttl``: the current value again, with this TTL."""
        if node.kind is not Kind.KV or node.view is None:
            raise NotPermitted(f"{display(node)}: a TTL is set on a key's file")
        view = node.view
        self.writable_view(view)
        ttl = parse_ttl(value.decode(errors="replace"))
        if ttl is not None and not self.sv.store.msg_ttl:
            raise NotSupported("this NATS server has no per-message TTL (2.11 or newer has it)")
        entry = await self.fetch(node)
        env = await self.policy(view).envelope(entry.value)
        with view.muted(node.key):
            rev = await self.sv.store.update(view.bucket, node.key, entry.value, entry.revision,
                                             ttl=ttl, headers=env.headers)
        env.ttl = ttl
        self._republished(node, rev, entry, env)

    # -- namespace ----------------------------------------------------------------

    async def mkdir(self, parent: Node, name: bytes) -> Node:
        view = parent.view
        assert view is not None and parent.children is not None
        self.writable_view(view)
        if name in parent.children:
            raise Exists(f"{display(parent.children[name])} exists")
        key = view.key_for(parent, name, file=False)
        node = self.sv.tree.new(Kind.DIR, name, parent)
        node.view, node.key, node.local = view, key, True
        self.sv.tree.attach(parent, node)
        return node

    async def unlink(self, parent: Node, name: bytes, node: Node | None) -> None:
        view = parent.view
        assert view is not None
        self.writable_view(view)
        if node is None:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such file")
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        env = await self.policy(view).envelope(b"")
        with view.muted(node.key):
            await self.sv.store.delete(view.bucket, node.key, headers=env.headers)
        view.keys.pop(node.key, None)
        self.sv.tree.detach(node)
        keep_emptied(parent)

    async def rmdir(self, parent: Node, name: bytes, node: Node | None) -> None:
        if parent.view is not None:
            self.writable_view(parent.view)
        self.remove_empty_dir(parent, name, node)

    async def rename(self, src_parent: Node, old: bytes, dst_parent: Node, new: bytes, flags: int) -> None:
        """Put the value under the new key, then delete the old key: never loses data.

        Into a typed binding the value is written as a new file there would be:
        checked against the binding's schema in its new place (its name, its directory).
        """
        src_view, dst_view = src_parent.view, dst_parent.view
        if dst_view is None or dst_parent.provider is not self:
            raise NotPermitted(f"{display(dst_parent)}: only bucket directories hold files")
        assert src_view is not None
        self.writable_view(src_view)
        self.writable_view(dst_view)
        ends = self.rename_ends(src_parent, old, dst_parent, new, flags)
        if ends is None:
            return
        src, dst = ends
        if src.kind is Kind.DIR:
            if dst is not None and dst.kind is not Kind.DIR:
                raise NotADirectory(f"{display(dst)} is not a directory")
            if dst is not None and dst.children:
                raise NotEmpty(f"{display(dst)} is not empty")
            raise CrossDevice("NATS cannot rename a key prefix: directories move by copy "
                              "(mv does this by itself)")
        if dst is not None and dst.kind is Kind.DIR:
            raise IsADirectory(f"{display(dst)} is a directory")
        dst_key = dst.key if dst is not None else dst_view.key_for(dst_parent, new)
        entry = await self.sv.store.get(src_view.bucket, src.key)
        src_pol, dst_pol = self.policy(src_view), self.policy(dst_view)
        value, ttl = entry.value, ttl_of(entry.headers)
        if dst_pol.typed or src_pol.typed:
            # What the file shows is what lands in its new place, as if written there.
            probe = Node(0, Kind.KV, new, None)
            probe.view, probe.key = dst_view, dst_key
            p = await dst_pol.on_write(probe, src_pol.on_read(src, value), _kept_ttl(dst_pol, ttl))
        else:
            p = await dst_pol.envelope(value, _kept_ttl(dst_pol, ttl))
        with dst_view.muted(dst_key), src_view.muted(src.key):
            current = 0
            if dst is not None:
                current = await self.current_revision(dst_view, dst_key)
            if current:
                rev = await self.sv.store.update(dst_view.bucket, dst_key, p.value, current,
                                                 ttl=p.ttl, headers=p.headers)
            else:
                rev = await self.sv.store.create(dst_view.bucket, dst_key, p.value,
                                                 ttl=p.ttl, headers=p.headers)
            env = await src_pol.envelope(b"")
            await self.sv.store.delete(src_view.bucket, src.key, entry.revision, headers=env.headers)
        # The kernel moves the source inode to the new name: so does the index.
        tree = self.sv.tree
        src_view.keys.pop(src.key, None)
        tree.detach(src)
        if dst is not None:
            dst_view.keys.pop(dst.key, None)
            tree.detach(dst)
        src.view, src.key, src.name = dst_view, dst_key, new
        src.revision, src.size, src.ttl = rev, len(p.value), p.ttl
        src.shown_rev = 0
        if dst_pol.typed:
            src.size, src.shown_rev = len(dst_pol.on_read(src, p.value)), rev
        src.mtime = src.ctime = time.time()
        tree.attach(dst_parent, src)
        dst_view.keys[dst_key] = src
        keep_emptied(src_parent)

    # -- xattrs ---------------------------------------------------------------------

    def xattr_names(self, node: Node) -> list[bytes]:
        if node.view is None:
            return []
        if node.kind in (Kind.KV, Kind.REV):
            return list(XATTRS) + list(REVISION_XATTRS) + list(STATE_XATTRS)
        return [b"user.hvfs.bucket", b"user.hvfs.key"]

    async def xattrs(self, node: Node, pid: int) -> dict[bytes, bytes]:
        view = node.view
        if view is None:
            return {}
        out = {b"user.hvfs.bucket": view.bucket.encode(), b"user.hvfs.key": node.key.encode()}
        if node.kind not in (Kind.KV, Kind.REV):
            return out
        rev, entry = await self._revision_for(node, pid)
        out[b"user.hvfs.revision"] = str(rev).encode()
        if entry is None:
            try:
                entry = await self.sv.store.get(view.bucket, node.key, rev)
            except NotFound:
                entry = None
        if entry is not None:
            ttl = ttl_of(entry.headers)
            if ttl is not None:
                out[b"user.hvfs.ttl"] = f"{ttl:g}".encode()
                end = entry.time + ttl
                ms = int(round((end - int(end)) * 1000)) % 1000
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(end)))
                out[b"user.hvfs.expires"] = f"{stamp}.{ms:03d}Z".encode()
            writer = entry.headers.get(WRITER_HEADER)
            if writer:
                out[b"user.hvfs.writer"] = writer.encode()
        off = self.sv.offline
        pw = off.of(view.bucket, node.key) if off is not None else None
        if pw is not None:
            out[b"user.hvfs.pending"] = f".hvfs/pending/{pw.name}".encode()
        if (view.bucket, node.key) in self.stale:
            out[b"user.hvfs.stale"] = b"NATS unreachable: this is the value this mount read last"
        why = None
        refused = self.refused.get((view.bucket, node.key))
        if refused is not None and refused[0] == rev:
            why = refused[1]
        elif entry is not None:
            why = self.policy(view).problem(node, entry.value)
        if why:
            out[b"user.hvfs.error"] = why.encode()
        return out

    async def _revision_for(self, node: Node, pid: int) -> tuple[int, KvEntry | None]:
        """``user.hvfs.revision``: in a process holding the file open, the revision of
        the content its latest handle has; otherwise as fresh as open() (the entry too)."""
        if node.kind is Kind.REV:
            return node.revision, None
        for h in self.handles_of(node, pid):
            if h.base:
                return h.base, None
        entry = await self.fetch(node)
        return entry.revision, entry

    def handles_of(self, node: Node, pid: int) -> list[Handle]:
        """The handles on ``node`` that the process of thread ``pid`` opened, newest first.

        FUSE tells a request's thread, not its descriptor: fgetxattr and
        futimens reach us as calls on the inode from a process.
        """
        mine = [h for h in self.handles.values() if h.node is node and h.pid and not h.echo]
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


def _kept_ttl(pol: WritePolicy, seen: float | None) -> float | None:
    """The TTL a write carries beyond its policy's: a binding with a ``ttl`` gives its
    own to every write; elsewhere a write keeps the TTL of the revision it replaces, as
    this mount last saw it (docs/entities.md)."""
    return None if pol.ttl is not None else seen

