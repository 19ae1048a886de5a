"""The facade the kernel binding calls: one method per filesystem call.

``Vfs`` owns the inode tree, the open handles and the mount's shared
services; what a call does is decided by the provider of the node it is
about (``hvfs.vfs.provider``): KV buckets, ``FILE@REV``, streams, work
queues, ``.hvfs/`` and the fixed directories. The notifier's own requests
are answered here, once, through ``hvfs.vfs.echo``. Nothing here imports
pyfuse3 or nats-py; tests of the second tier drive this class against the
in-memory store and a real nats-server.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import trio

from ..config import MountConfig
from ..errors import (
    Exists,
    HvfsError,
    Invalid,
    IsADirectory,
    NameTooLong,
    NoAttr,
    NotADirectory,
    NotFound,
    NotSupported,
    Unavailable,
)
from ..metrics import Metrics
from ..store import Store
from .blobs import bind_objects
from .buckets import BucketsProvider
from .control import Conflicts, ErrorLog, EventLog
from .ctl import ControlProvider
from .echo import Echo
from .handles import Handle
from .kv import XATTRS, KvProvider
from .layout import Layout
from .meta import MetaProvider
from .objects import ObjectBucketsProvider, ObjectProvider
from .offline import Offline
from .provider import Provider, Services
from .queues import QueueProvider
from .resolve import UNKNOWN, Resolver
from .spool import Spool
from .stream import StreamProvider, StreamsProvider
from .tree import Kind, Node, Tree, display

__all__ = ["Core", "Vfs", "XATTRS"]

log = logging.getLogger(__name__)

#: What a connection carries at most by default; values are refused above it.
DEFAULT_MAX_PAYLOAD = 1 << 20
NAME_MAX = 255
#: the longest a call waits for a last-close publish of its file (each NATS call is bounded)
SETTLE_WAIT = 30.0


def _check_name(name: bytes) -> None:
    """No path component longer than NAME_MAX exists here, whatever the call."""
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes; at most {NAME_MAX} bytes per name")


#: at start-up, seconds to wait for the snapshots of every bucket, then of every stream, before
#: the next NATS calls (they share one connection and would wait behind them, timing out)
SNAPSHOT_WAIT = 120.0


class Vfs:
    def __init__(self, store: Store, config: MountConfig | None = None, read_only: bool = False,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, metrics: Metrics | None = None,
                 writer: str = "hvfs", state_dir: Path | None = None, offline: bool = False,
                 cache: str = "fresh") -> None:
        self.store = store
        self.config = config or MountConfig()
        self.read_only = read_only
        self.tree = Tree()
        self.metrics = metrics or Metrics()
        #: the mount's local state (spool, conflicts): kept across restarts; None: in memory only
        self.state_dir = state_dir
        conflicts = Conflicts(state_dir)
        self.sv = Services(store, self.tree, self.metrics, read_only, max_payload, writer,
                           conflicts=conflicts, spool=Spool(state_dir))
        self.resolver = self.sv.resolver = Resolver(store, conflicts)
        #: pending writes (always: an earlier mount's are applied) and, with ``offline``, the mode
        self.sv.cache_watch = cache == "watch"
        self.offline = self.sv.offline = Offline(store, self.sv.spool, conflicts, offline,
                                                 keep_values=self.sv.cache_watch)
        self.layout = Layout(store, self.config, writer)
        self.conflicts: Conflicts = self.sv.conflicts
        self.errors: ErrorLog = self.sv.errors
        self.events: EventLog = self.sv.events
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self.started = time.time()
        self.echo = Echo()  # the notifier's own requests (hvfs.vfs.echo)
        #: dir ino -> monotonic time of its last listing by anyone but the notifier
        self.listed: dict[int, float] = {}
        self.tree.root.provider = Provider(self.sv)  # "/" and the dirs above bindings: fixed
        self.kv = KvProvider(self.sv, self.handles)
        self.offline.on_settled.append(self.kv.pending_settled)
        self.resolver.on_landed.append(self.kv.refresh_key)
        self.streams = StreamProvider(self.sv)
        self.queues = QueueProvider(self.sv)
        self.kv_dir: Node | None = None
        self.buckets: BucketsProvider | None = None
        if self.config.raw:
            self.kv_dir = self.tree.mkdirs("kv")
            self.buckets = BucketsProvider(self.sv, self.kv, self.kv_dir)
            StreamsProvider(self.sv, self.streams, self.tree.mkdirs("streams"))
        #: obj/: every object store bucket (hvfs.vfs.objects); writers spool under the state directory
        self.objects = ObjectProvider(self.sv, state_dir / "objects" if state_dir is not None else None)
        self.obj_buckets: ObjectBucketsProvider | None = None
        if self.config.raw:
            self.obj_buckets = ObjectBucketsProvider(self.sv, self.objects, self.tree.mkdirs("obj"))
        #: more sections of the status, each rendered when read (the mount's settler: "settle")
        self.extra_status: dict[str, Callable[[], object]] = {}
        self.control = ControlProvider(self.sv, self.render_status, self.offline)
        if self.config.meta:
            MetaProvider(self.sv, self.config.meta, self.status, self.layout.describe())
        self._register_metrics()

    # -- start-up and background ------------------------------------------------

    async def start(self) -> None:
        """Bind configured paths and (raw view) every bucket and stream; wait for their snapshots."""
        self.recover()
        lay = self.layout
        for b in self.config.bindings:
            await lay.bucket(b)
        infos = {sb.stream: await lay.stream(sb) for sb in self.config.streams}
        for b in self.config.bindings:
            await self.kv.bind(self.tree.mkdirs(b.path), b.kv, b.prefix, lay.kv_policy(b))
        for sb in self.config.streams:
            if sb.path is not None:
                await self.streams.bind(self.tree.mkdirs(sb.path), infos[sb.stream], sb.prefix,
                                        lay.stream_policy(sb))
        for qb in self.config.queues:
            await self.queues.bind(self.tree.mkdirs(qb.path), qb)
        for ob in self.config.objects:  # storage: object (hvfs.vfs.objects, hvfs.vfs.blobs)
            await bind_objects(self.sv, self.tree.mkdirs(ob.path), ob, self.objects.spool_dir)
        if self.buckets is not None:
            await self.buckets.refresh()
        await self.kv.snapshots_in(SNAPSHOT_WAIT)
        await self.streams.refresh_streams()
        await self.streams.snapshots_in(SNAPSHOT_WAIT)
        if self.obj_buckets is not None:
            await self.obj_buckets.refresh()

    async def poll_buckets(self, interval: float = 1.0,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background: buckets and streams created or deleted elsewhere appear by themselves."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            for ino in [i for i in self.listed if i not in self.tree.nodes]:
                del self.listed[ino]  # bookkeeping keyed by inode must not outlive the inode
            try:
                if self.buckets is not None:
                    await self.buckets.refresh()
                await self.streams.refresh_streams()
                if self.obj_buckets is not None:
                    await self.obj_buckets.refresh()
            except HvfsError as e:
                log.debug("bucket poll: %s", e.reason)
            except Exception:
                # A background task must not take the mount down with it.
                log.exception("bucket poll failed")

    def recover(self) -> None:
        """Bytes an earlier daemon on this state directory accepted and died with (kill -9,
        OOM): each becomes a conflict entry, never re-applied on its own; a KV write that
        may have been under way gets its outcome found out (hvfs.vfs.resolve)."""
        for c in list(self.conflicts.items.values()):
            if c.outcome == UNKNOWN and c.msg_id:
                self.resolver.add(c)  # an earlier mount did not find out: this one goes on
        for entry, data in self.sv.spool.leftovers():
            if entry.pending:
                # Acknowledged (offline mode: close() returned 0): applied when NATS answers.
                pw = self.offline.restore(entry, data)
                log.warning("an earlier mount's pending write of %s (%d bytes) will be applied", pw.path, len(data))
                continue
            reason = (f"{entry.path}: hvfs stopped before these bytes were published (the daemon "
                      "died: killed, out of memory, or a crash); not applied: copy them back to apply them")
            kv = entry.kind == "kv"
            c = self.conflicts.add(entry.where, entry.key, entry.base, None, errno.EIO, reason, data,
                                   outcome=UNKNOWN if kv else "", msg_id=entry.msg_id if kv else "",
                                   when=entry.time)
            if kv:
                self.resolver.add(c)
            log.warning("recovered %d unpublished bytes of %s into .hvfs/conflicts/%s", len(data), entry.path, c.file)

    async def close(self) -> None:
        await self.kv.close()
        await self.streams.close()
        self.sv.spool.close()

    # -- nodes and handles ---------------------------------------------------------

    def node(self, ino: int) -> Node:
        n = self.tree.get(ino)
        if n is None:
            raise NotFound(f"inode {ino} is gone")
        return n

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise Invalid(f"bad file handle {fh}")
        return h

    def _register(self, h: Handle) -> Handle:
        """A provider's new handle gets its number and its caching mode.

        KV and FILE@REV handles use direct_io unless ``h.cached``: a key's
        value changes under open handles and the page cache is the inode's,
        bounded by the size the kernel knows, so direct_io serves each handle
        its own content. Cached handles (read-only, all of one revision) go
        through the page cache so that shared read-only mappings work.
        """
        node = h.node
        if node.kind in (Kind.KV, Kind.REV) and not h.cached:
            h.direct_io = True
        h.fh = self._next_fh
        self._next_fh += 1
        self.handles[h.fh] = h
        if h.cached:
            h.keep_cache = node.cached_rev == h.base
            node.cached_rev, node.cached_size = h.base, len(h.data)
            node.cached_open += 1
        if h.writable and h.dirty:
            self.sv.writers[node.ino] = h
        return h

    def release(self, fh: int) -> Handle | None:
        h = self.handles.pop(fh, None)
        if h is not None:
            self.sv.published(h)
            if h.cached:
                h.node.cached_open -= 1
        return h

    def size_of(self, node: Node) -> int:
        return int(node.provider.size(node))

    async def _settled(self, node: Node) -> None:
        """Wait for a last-close publish of ``node`` still in flight (bounded by its NATS call)."""
        ev = node.settling
        if ev is not None:
            with trio.move_on_after(SETTLE_WAIT):
                await ev.wait()

    # -- lookup and listing ----------------------------------------------------------

    async def lookup(self, parent_ino: int, name: bytes, pid: int = 0) -> Node:
        echo = self.echo.owns(pid)
        if echo:
            node = self.echo.lookup(parent_ino, name, self.tree.nodes)
            if node is not None:
                return node
        _check_name(name)
        parent = self._dir(parent_ino)
        if name == b".":
            return parent
        if name == b"..":
            return parent.parent or parent
        child = await parent.provider.lookup(parent, name, echo)
        if child is None:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such file")
        if not echo:
            await self.refresh_attrs(child)
        return child

    async def refresh_attrs(self, node: Node) -> None:
        """Attributes as of now before they are reported (a typed file's rendered size).
        A failure leaves them as the index has them: a stat never fails for NATS's sake."""
        try:
            await node.provider.refresh_attrs(node)
        except HvfsError as e:
            log.debug("refresh %s: %s", display(node), e.reason)

    def refuses_writes(self, node: Node) -> bool:
        """Whether writes to ``node`` are refused (the mount, the binding, the kind of file)."""
        return self.read_only or bool(node.provider.read_only(node))

    async def readdir(self, ino: int, pid: int = 0) -> list[tuple[bytes, Node]]:
        d = self._dir(ino)
        if not self.echo.owns(pid):
            self.listed[ino] = time.monotonic()
        await d.provider.listing(d)
        assert d.children is not None
        return sorted(d.children.items())

    # -- files ------------------------------------------------------------------------

    async def open(self, ino: int, flags: int, pid: int = 0) -> Handle:
        node = self.node(ino)
        self.metrics.inc("vfs.opens")
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        if self.echo.owns(pid):
            # The notifier's own open: it only makes the kernel emit events
            # (also on a --read-only mount: it changes nothing).
            writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
            return self._register(Handle(0, node, writable, b"", node.revision, pid=pid, echo=True))
        await self._settled(node)
        return self._opened(await node.provider.open(node, flags, pid), flags, pid)

    def _opened(self, h: Handle, flags: int, pid: int) -> Handle:
        h.append = bool(flags & os.O_APPEND) and h.writable
        h.pid = pid
        return self._register(h)

    async def create(self, parent_ino: int, name: bytes, flags: int, pid: int = 0) -> Handle:
        if self.echo.owns(pid):
            node = self.echo.announced(parent_ino, name, False)
            return self._register(Handle(0, node, True, b"", node.revision, pid=pid, echo=True))
        _check_name(name)
        parent = self._dir(parent_ino)
        assert parent.children is not None
        existing = parent.children.get(name)
        if existing is not None:
            # Known here since the kernel's lookup: an open like any other (counted, settled).
            if flags & os.O_EXCL:
                raise Exists(f"{display(existing)} exists")
            return await self.open(existing.ino, flags, pid)
        return self._opened(await parent.provider.create(parent, name, flags, pid), flags, pid)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handle(fh)
        self.metrics.inc("vfs.reads")
        return await h.node.provider.read(h, off, size)

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
        return await h.node.provider.write(h, off, buf)

    async def truncate_handle(self, h: Handle, size: int) -> None:
        self._writable(h)
        if h.echo:
            return
        await h.node.provider.truncate(h, size)

    async def flush(self, fh: int, final: bool = False) -> None:
        """Publish what the handle wrote: every flush (each close() of a descriptor,
        fsync) publishes what was written, so when close() returns it is in NATS.
        Only an O_TRUNC with nothing written after it waits for a write or the
        last close (``final``): a shell's ``echo x > f`` closes the descriptor it
        opened before writing, and that close must not publish an empty revision.
        """
        h = self.handle(fh)
        async with h.lock:
            if h.echo:
                return
            if h.failed is not None and h.writable:
                raise type(h.failed)(h.failed.reason)
            if h.dirty and not h.wrote and not final:
                self._truncation_can_land(h)
            if not h.dirty or not (h.wrote or final):
                return
            await h.node.provider.flush(h, final)

    def _truncation_can_land(self, h: Handle) -> None:
        """An O_TRUNC with nothing written is published at the handle's last close, after this
        close() has returned: while NATS is known to be away it could not land, so this close
        fails (EIO) and the truncation is dropped, rather than answer 0 for it. (Offline mode
        spools it instead; a stalled NATS is not known here: docs/posix.md.)"""
        if self.store.state.connected or self.offline.enabled:
            return
        err = Unavailable(f"{display(h.node)}: the truncation cannot be published: not connected to NATS "
                          "(the value is unchanged)", sent=False)
        h.dirty = h.wrote = False
        self.sv.published(h)
        h.failed = err
        raise err

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

    async def set_size(self, ino: int, size: int, fh: int | None) -> None:
        """truncate(2): on a handle it is buffered, on a path it is one new revision."""
        if fh is not None and fh in self.handles:
            await self.truncate_handle(self.handles[fh], size)
            return
        node = self.node(ino)
        await self._settled(node)
        await node.provider.set_size(node, size)

    async def touch(self, ino: int, pid: int = 0) -> None:
        """utimensat(UTIME_NOW); what it means is the provider's (a heartbeat for keys)."""
        if self.echo.owns(pid):
            return
        node = self.node(ino)
        await self._settled(node)
        await node.provider.touch(node, pid)

    # -- namespace --------------------------------------------------------------------

    def _dir(self, ino: int) -> Node:
        d = self.node(ino)
        if d.kind is not Kind.DIR:
            raise NotADirectory(f"{display(d)} is not a directory")
        return d

    async def mkdir(self, parent_ino: int, name: bytes, pid: int = 0) -> Node:
        if self.echo.owns(pid):
            return self.echo.announced(parent_ino, name, True)
        _check_name(name)
        parent = self._dir(parent_ino)
        return await parent.provider.mkdir(parent, name)

    async def unlink(self, parent_ino: int, name: bytes, pid: int = 0) -> None:
        if self.echo.owns(pid):
            return  # the notifier announcing a delete already applied
        _check_name(name)
        parent = self._dir(parent_ino)
        assert parent.children is not None
        node = parent.children.get(name)
        if node is not None:
            await self._settled(node)
        await parent.provider.unlink(parent, name, node)

    async def rmdir(self, parent_ino: int, name: bytes, pid: int = 0) -> None:
        if self.echo.owns(pid):
            return
        _check_name(name)
        parent = self._dir(parent_ino)
        assert parent.children is not None
        await parent.provider.rmdir(parent, name, parent.children.get(name))

    async def rename(self, old_ino: int, old: bytes, new_ino: int, new: bytes, flags: int) -> None:
        _check_name(old)
        _check_name(new)
        src_parent, dst_parent = self._dir(old_ino), self._dir(new_ino)
        assert src_parent.children is not None and dst_parent.children is not None
        for n in (src_parent.children.get(old), dst_parent.children.get(new)):
            if n is not None:
                await self._settled(n)
        await src_parent.provider.rename(src_parent, old, dst_parent, new, flags)

    # -- xattrs -----------------------------------------------------------------------

    def xattr_names(self, node: Node) -> list[bytes]:
        return node.provider.xattr_names(node)

    async def xattrs(self, node: Node, pid: int = 0) -> dict[bytes, bytes]:
        if node.kind is Kind.KV:
            await self._settled(node)
        return await node.provider.xattrs(node, pid)

    async def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        """Only ``user.hvfs.ttl`` can be set (a key's TTL); the rest describe NATS state."""
        if name != b"user.hvfs.ttl":
            raise NotSupported(f"{name.decode(errors='replace')}: only user.hvfs.ttl can be set here "
                               "(the other user.hvfs.* attributes describe NATS state)")
        node = self.node(ino)
        if node.kind is Kind.KV:
            await self._settled(node)
        await node.provider.set_xattr(node, name, value)

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

    # -- status -----------------------------------------------------------------------

    def _register_metrics(self) -> None:
        """Everything the mount counts, under its status name and its Prometheus name
        (docs/operations.md lists them)."""
        m = self.metrics
        for name, help, prom in (("opens", "files opened", None), ("reads", "read requests", None),
                                 ("publishes", "revisions and messages this mount published", None),
                                 ("conflicts", "compare-and-swap writes that lost", "hvfs_cas_conflicts"),
                                 ("refused", "writes a typed binding refused (EINVAL)", "hvfs_refused_writes"),
                                 ("changes_seen", "changes the watches reported", "hvfs_watch_changes"),
                                 ("pending", "writes kept pending while NATS was away (--offline)",
                                  "hvfs_offline_writes"),
                                 ("stale_reads", "reads served from memory while NATS was away (--offline)",
                                  "hvfs_stale_reads"),
                                 ("cache_hits", "opens served from the watch without a get (--cache watch)",
                                  "hvfs_cache_hits"),
                                 ("cache_misses", "opens that needed a get (--cache watch)",
                                  "hvfs_cache_misses"),
                                 ("told_late", "requests that stopped waiting for the kernel to hear "
                                  "their side effects (a file leaving incoming/) after 2 s", None)):
            m.counter(f"vfs.{name}", help, prom)
        st = self.store.state
        m.gauge("nats.connected", lambda: st.connected, "connected to NATS (1) or not (0)")
        m.gauge("nats.calls", lambda: st.calls, "NATS calls made", counter=True)
        m.gauge("nats.errors", lambda: st.errors, "NATS calls that failed (answers such as no such key excluded)",
                counter=True)
        m.gauge("nats.timeouts", lambda: st.timeouts, "NATS calls that ran past --timeout", counter=True)
        m.gauge("nats.reconnects", lambda: st.reconnects, "reconnects to NATS", counter=True)
        m.gauge("vfs.keys", self.kv.key_count, "keys shown", "hvfs_keys")
        m.gauge("vfs.inodes", lambda: len(self.tree.nodes), "inodes held", "hvfs_inodes")
        m.gauge("vfs.open_handles", lambda: len(self.handles), "open files", "hvfs_open_handles")
        m.gauge("vfs.messages", self.streams.message_count, "stream messages shown", "hvfs_stream_messages")
        m.gauge("conflicts.held", lambda: len(self.conflicts.items), "conflict files kept",
                "hvfs_conflict_files")
        m.gauge("conflicts.total", lambda: self.conflicts.total, "conflict files made",
                "hvfs_conflict_files_made", counter=True)
        m.gauge("offline.pending", lambda: len(self.offline.pending), "pending writes not yet in NATS",
                "hvfs_pending_writes")
        m.gauge("conflicts.outcome_unknown", self.resolver.pending,
                "timed-out writes whose outcome is not known yet", "hvfs_writes_outcome_unknown")
        m.gauge("errors.total", lambda: self.errors.total, "errors returned with a reason",
                "hvfs_errors_reported", counter=True)
        m.labelled("fuse.requests", "FUSE requests answered, by operation", ["op"])
        m.labelled("fuse.errors", "FUSE requests answered with an error, by operation and errno",
                   ["op", "errno"])
        m.histogram("fuse.request_seconds", "time to answer a FUSE request, by operation", ["op"])
        m.histogram("watch.lag_seconds", "from a change's NATS timestamp to this mount applying it",
                    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                             60.0))

    def render_status(self) -> bytes:
        """``.hvfs/status``: JSON."""
        return (json.dumps(self.status(), indent=2) + "\n").encode()

    def status(self) -> dict[str, object]:
        """Read from the metrics registry, plus what the mount is."""
        m, st = self.metrics, self.store.state
        doc: dict[str, object] = {
            "connected": st.connected,
            "server": st.server,
            "read_only": self.read_only,
            "writer": self.sv.writer,
            "msg_ttl": self.store.msg_ttl,
            "ttl_notes": self.layout.notes,
            "bindings": self.layout.describe(),
            "uptime_s": round(time.time() - self.started, 1),
            "buckets": sorted(self.kv.views),
            "streams": sorted(self.streams.streams),
            "object_buckets": sorted(self.objects.views),
            "messages": m.value("vfs.messages"),
            "queues": {q.binding.path: {"held": len(q.held), "acked": q.acked, "released": q.released}
                       for q in self.queues.queues},
            "keys": m.value("vfs.keys"),
            "inodes": m.value("vfs.inodes"),
            "open_handles": m.value("vfs.open_handles"),
            "nats": {k: m.value(f"nats.{k}") for k in ("calls", "errors", "timeouts", "reconnects")}
            | {"last_error": st.last_error},
            "counters": {k: m.value(f"vfs.{k}") for k in
                         ("opens", "reads", "publishes", "conflicts", "refused", "changes_seen")},
            "conflicts": {"held": m.value("conflicts.held"), "total": m.value("conflicts.total"),
                          "outcome_unknown": self.resolver.pending()},
            "errors_total": m.value("errors.total"),
            "state_dir": str(self.state_dir) if self.state_dir is not None else None,
            "spool": {"handles": self.sv.spool.held(), "errors": self.sv.spool.errors},
            "offline": {"enabled": self.offline.enabled, "pending": m.value("offline.pending"),
                        "applied": self.offline.applied, "lost": self.offline.lost,
                        "stale_reads": m.value("vfs.stale_reads")},
            "cache": {"mode": "watch" if self.sv.cache_watch else "fresh", "hits": m.value("vfs.cache_hits"),
                      "misses": m.value("vfs.cache_misses")},
        }
        notifier = m.group("notifier")
        if notifier:
            doc["notifier"] = notifier
        for name, section in self.extra_status.items():
            doc[name] = section()
        return doc


#: The name the first release used; tests and benchmarks of the time import it.
Core = Vfs
