"""Providers: what a subtree of the mount does.

Every node belongs to the provider that made it (a new node inherits its
parent's, ``Tree.new``): the roots (``/``, ``kv/``, ``streams/``), a KV
bucket, ``FILE@REV``, a stream, a work queue, ``.hvfs/``. The facade
(``hvfs.vfs.core.Vfs``) asks the node's provider; the base class answers
every call with a clear refusal, so a provider states only what it supports.
``Services`` is what all providers share: the store, the inode tree, the
counters, the conflict and error logs, and the handles with unpublished bytes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..errors import (
    Exists,
    HvfsError,
    Invalid,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    ReadOnly,
    Timeout,
    Unavailable,
    errno_of,
)
from ..metrics import Metrics
from ..store import Store
from .control import Conflicts, ErrorLog, EventLog
from .handles import Handle
from .offline import Offline
from .resolve import UNKNOWN, Resolver
from .spool import Spool
from .tree import Kind, Node, Tree, display

#: The longest a request waits for the notifier to tell the kernel of its side effects.
TOLD_WAIT = 2.0

__all__ = ["Provider", "Services", "called_back", "keep_emptied", "size_unknown", "spliced"]


async def called_back(register: Callable[[Callable[[], None]], None], within: float) -> bool:
    """Give ``register`` a function that another thread calls once its work is done, and
    wait (without blocking trio) at most ``within`` s for the call; False: it did not come."""
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def call() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    register(call)
    with trio.move_on_after(within):
        await done.wait()
        return True
    return False


def spliced(data: bytes | bytearray, off: int, buf: bytes) -> bytes:
    """``data`` with ``buf`` written at ``off`` (a gap zero-filled): what a write meant."""
    out = bytearray(data)
    if off > len(out):
        out.extend(bytes(off - len(out)))
    out[off:off + len(buf)] = buf
    return bytes(out)


def keep_emptied(d: Node) -> None:
    """A directory emptied by a local rm or mv stays, as on any filesystem,
    until rmdir (``rm -r`` and ``mv`` send one next); it is now this mount's own."""
    if d.kind is Kind.DIR and d.children == {} and d.view is not None and d is not d.view.root:
        d.local = True


def size_unknown(node: Node) -> None:
    """The kernel sets its size for the inode by itself here (an O_TRUNC open, a write past
    the end, a writer's last close), and drops attribute replies that crossed it: what this
    mount last told it is not known to stand, so page-cache reads wait for a new reply
    (hvfs.fuse.ops: a reply to a request received before now is not trusted either)."""
    node.told = -1
    node.inval_at = max(node.inval_at, time.monotonic())


@dataclass(slots=True)
class Services:
    """What every provider shares; one per mount."""

    store: Store
    tree: Tree
    metrics: Metrics
    read_only: bool
    max_payload: int
    #: who writes: the Hvfs-Writer header on every value and message this mount publishes
    writer: str = "hvfs"
    conflicts: Conflicts = field(default_factory=Conflicts)
    errors: ErrorLog = field(default_factory=ErrorLog)
    events: EventLog = field(default_factory=EventLog)
    #: ino -> the handle whose unpublished bytes define the size the kernel sees
    writers: dict[int, Handle] = field(default_factory=dict)
    #: unpublished bytes on local disk, so a crash of the daemon loses none (hvfs.vfs.spool)
    spool: Spool = field(default_factory=lambda: Spool(None))
    #: finds out what became of writes that timed out (set by the facade)
    resolver: Resolver | None = None
    #: pending writes and the read cache; ``offline.enabled`` with ``--offline`` (set by the facade)
    offline: Offline | None = None
    #: ``--cache watch``: an open of a key whose latest revision (as the watch has it) was
    #: read before is served from memory, without a get (docs/consistency.md)
    cache_watch: bool = False

    async def told(self) -> None:
        """Wait (at most ``TOLD_WAIT`` s) until the kernel has heard every change notified so far.

        For a change this mount makes that the kernel did not see as an operation
        (a file leaving ``incoming/``): once the request returns, later calls on
        this mount must not find the kernel's cached entry.
        """
        for teller in self.tree.tellers:
            if not await called_back(teller, TOLD_WAIT):
                self.metrics.inc("vfs.told_late")

    def fail(self, h: Handle, err: HvfsError, data: bytes, where: str, current: int | None = None,
             msg_id: str = "") -> None:
        """End ``h`` with ``err``: its bytes go to .hvfs/conflicts/, later calls fail alike.

        ``msg_id``: the write was sent with it, and ``err`` (a timeout, a connection lost
        under the call) does not say whether it landed: the entry's outcome is "unknown"
        until the resolver finds out (hvfs.vfs.resolve).
        """
        h.dirty = h.wrote = False
        self.published(h)  # nothing of it is pending any more
        unknown = bool(msg_id) and self.resolver is not None and (
            isinstance(err, Timeout) or isinstance(err, Unavailable) and err.sent)
        c = self.conflicts.add(where, h.node.key, h.base, current, errno_of(err), err.reason, data,
                               outcome=UNKNOWN if unknown else "", msg_id=msg_id if unknown else "")
        if unknown:
            assert self.resolver is not None
            self.resolver.add(c)
            err.reason = (f"{err.reason}; whether the write landed is not known yet: your bytes are in "
                          f".hvfs/conflicts/{c.file}, and its line in .hvfs/conflicts/index gets the "
                          "outcome (landed or not landed) once it is")
        else:
            err.reason = f"{err.reason}; your bytes are in .hvfs/conflicts/{c.file}"
        h.failed = err

    def changed(self, h: Handle) -> None:
        """A write or truncate made the handle differ from what NATS has."""
        h.dirty = h.wrote = True
        self.writers[h.node.ino] = h
        h.node.mtime = h.node.ctime = time.time()

    def published(self, h: Handle) -> None:
        """``h`` holds no unpublished bytes any more: the size is the index's again,
        and its spool files go."""
        if self.writers.get(h.node.ino) is h:
            del self.writers[h.node.ino]
        self.spool.done(h)


class Provider:
    """A subtree's behaviour. Every default is a refusal with a reason."""

    def __init__(self, sv: Services) -> None:
        self.sv = sv

    # -- names -------------------------------------------------------------

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        """The child ``name`` of ``parent``; None: no such entry."""
        assert parent.children is not None
        return parent.children.get(name)

    async def listing(self, d: Node) -> None:
        """Bring ``d``'s children up to date before a readdir."""

    async def refresh_attrs(self, node: Node) -> None:
        """Bring ``node``'s attributes up to date before they are reported (stat)."""

    def read_only(self, node: Node) -> bool:
        """Files here refuse writes (shown 0444) beyond a read-only mount."""
        return False

    # -- files -------------------------------------------------------------

    def size(self, node: Node) -> int:
        w = self.sv.writers.get(node.ino)
        if w is not None and w.dirty:
            return len(w.data)  # what this mount's writer holds, not yet published
        return node.size

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        raise NotPermitted(f"{display(node)} cannot be opened here")

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        raise NotPermitted(f"{display(parent)}: files cannot be created here")

    async def read(self, h: Handle, off: int, size: int) -> bytes:
        return bytes(h.data[off:off + size])

    async def write(self, h: Handle, off: int, buf: bytes) -> int:
        raise Invalid("file not open for writing")

    async def truncate(self, h: Handle, size: int) -> None:
        raise Invalid("file not open for writing")

    async def flush(self, h: Handle, final: bool) -> None:
        """Publish what ``h`` changed (the facade checked there is something)."""

    async def set_size(self, node: Node, size: int) -> None:
        raise NotPermitted(f"{display(node)} cannot be truncated")

    async def touch(self, node: Node, pid: int) -> None:
        """utimensat(UTIME_NOW); nothing to do unless the provider says."""

    # -- namespace ---------------------------------------------------------

    async def mkdir(self, parent: Node, name: bytes) -> Node:
        raise NotPermitted(f"{display(parent)}: directories cannot be made here")

    async def unlink(self, parent: Node, name: bytes, node: Node | None) -> None:
        raise NotPermitted(f"{display(parent)}: nothing here can be removed")

    async def rmdir(self, parent: Node, name: bytes, node: Node | None) -> None:
        raise NotPermitted(f"{display(parent)}: nothing here can be removed")

    async def rename(self, src_parent: Node, old: bytes, dst_parent: Node, new: bytes, flags: int) -> None:
        raise NotPermitted(f"{display(src_parent)}: nothing here can be renamed")

    # -- xattrs ------------------------------------------------------------

    def xattr_names(self, node: Node) -> list[bytes]:
        return []

    async def xattrs(self, node: Node, pid: int) -> dict[bytes, bytes]:
        return {}

    async def set_xattr(self, node: Node, name: bytes, value: bytes) -> None:
        raise NotPermitted(f"{name.decode(errors='replace')}: this attribute cannot be set here")

    # -- helpers for providers with writable handles -------------------------

    def writable(self, binding: Node | None = None, read_only: bool = False) -> None:
        """EROFS on a read-only mount, and in a binding (rooted at ``binding``) that is read-only."""
        if self.sv.read_only:
            raise ReadOnly("mounted read-only")
        if read_only and binding is not None:
            raise ReadOnly(f"{display(binding)} is read-only (its binding says so)")

    def rename_ends(self, src_parent: Node, old: bytes, dst_parent: Node, new: bytes,
                    flags: int) -> tuple[Node, Node | None] | None:
        """The source and the entry it replaces (None: a new name) of a rename of files
        in a binding, after the checks every such rename makes; None: both are one file
        (nothing to do)."""
        assert src_parent.children is not None and dst_parent.children is not None
        src = src_parent.children.get(old)
        if src is None:
            raise NotFound(f"{display(src_parent)}/{old.decode(errors='replace')}: no such file")
        if flags & 2:  # RENAME_EXCHANGE
            raise NotSupported("RENAME_EXCHANGE is not supported")
        dst = dst_parent.children.get(new)
        if dst is src:
            return None
        if dst is not None and flags & 1:  # RENAME_NOREPLACE
            raise Exists(f"{display(dst)} exists")
        return src, dst

    def remove_empty_dir(self, parent: Node, name: bytes, node: Node | None) -> None:
        """rmdir of a directory of keys or objects (made here, or left by keys that went)."""
        if node is None:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such directory")
        if node.kind is not Kind.DIR:
            raise NotADirectory(f"{display(node)} is not a directory")
        assert node.children is not None
        if node.children:
            raise NotEmpty(f"{display(node)} is not empty")
        self.sv.tree.detach(node)
        keep_emptied(parent)

    def rendered_file(self, parent: Node, name: bytes, render: Callable[[], bytes]) -> Node:
        """A read-only file whose content ``render`` makes when it is read (.hvfs/, _meta/)."""
        node = self.sv.tree.new(Kind.CTRL, name, parent)
        node.render = render
        self.sv.tree.attach(parent, node)
        return node

    async def write_buffer(self, h: Handle, off: int, buf: bytes) -> int:
        """Apply a write to the handle's bytes; a growing size is checked (``check_size``)."""
        assert isinstance(h.data, bytearray)
        if h.append:
            # The kernel's append offset comes from a size it may have cached
            # before a remote change; the end of the content read at open is right.
            off = len(h.data)
        end = off + len(buf)
        if end > len(h.data):
            await self.check_size(h, end, lambda: spliced(h.data, off, buf))
            h.data.extend(bytes(end - len(h.data)))  # zero-fill any gap
        h.data[off:end] = buf
        self.sv.changed(h)
        self.sv.spool.wrote(h, off, buf)
        h.node.told = max(h.node.told, end)  # the kernel grows its size past a write's end
        return len(buf)

    async def truncate_buffer(self, h: Handle, size: int) -> None:
        assert isinstance(h.data, bytearray)
        if size > len(h.data):
            await self.check_size(h, size, lambda: bytes(h.data) + bytes(size - len(h.data)))
            h.data.extend(bytes(size - len(h.data)))
        else:
            del h.data[size:]
        self.sv.changed(h)
        self.sv.spool.truncated(h, size)

    async def check_size(self, h: Handle, size: int, intended: Callable[[], bytes]) -> None:
        """EFBIG before a value grows past what NATS takes (see ``limit``)."""
        raise NotSupported("this file cannot grow")

