"""The pyfuse3 ``Operations``: a thin translation of FUSE requests to the ``Vfs`` facade.

Every handler raises only ``FUSEError``: an exception escaping a pyfuse3
handler kills the mount under trio, so ``_fuse`` catches everything,
chooses the errno through the one table (``errors.errno_of``) and logs what
was not planned.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from ..errors import HvfsError, NotPermitted, ReadOnly, errno_of
from ..vfs.core import XATTRS, Vfs
from ..vfs.handles import Handle
from ..vfs.tree import Kind, Node

__all__ = ["Operations"]

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

_QUIET = {errno.ENOENT, errno.ENODATA, errno.EEXIST, errno.EOPNOTSUPP}
#: when the request being answered reached this process (each request is its own trio task)
_RECEIVED: ContextVar[float] = ContextVar("hvfs_request_received", default=0.0)
#: how long a request may wait in the kernel's queue before this process reads it:
#: an attribute reply to a request made before an invalidation of its inode is
#: dropped by the kernel, so its size is not taken as the kernel's (see attrs)
QUEUE_SLACK = 0.05
#: the thread whose request is being answered (FUSE's pid is the caller's thread id); 0: not known
_CALLER: ContextVar[int] = ContextVar("hvfs_request_caller", default=0)
_UNCACHED = (Kind.CTRL, Kind.REV, Kind.LOG)
DIR_MODE = 0o755
#: pyfuse3 does not pass the kernel's "now" flag on: a time this close to now is taken as UTIME_NOW
_NOW_SLACK_NS = 1_000_000_000


def _is_now(mtime_ns: int) -> bool:
    """Tell ``touch`` (UTIME_NOW) from explicit times (``touch -d``, ``tar x``)."""
    return abs(time.time_ns() - mtime_ns) <= _NOW_SLACK_NS


def _fuse(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        t0 = time.perf_counter()
        _RECEIVED.set(time.monotonic())
        ctx = args[-1] if args else None  # pyfuse3 passes the request's context last
        _CALLER.set(ctx.pid if isinstance(ctx, pyfuse3.RequestContext) else 0)
        err = 0
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError as e:
            err = e.errno
            raise
        except HvfsError as e:
            err = errno_of(e)
            if err not in _QUIET:
                self = args[0]
                assert isinstance(self, Operations)
                where = self.where(op, args[1:])
                self.core.errors.add(op, where, err, e.reason)
                log.info("%s %s: %s (%s)", op, where, e.reason, errno.errorcode.get(err))
            raise pyfuse3.FUSEError(err) from None
        except Exception as e:
            err = errno.EIO
            self = args[0]
            assert isinstance(self, Operations)
            where = self.where(op, args[1:])
            log.exception("%s %s failed unexpectedly", op, where)
            self.core.errors.add(op, where, errno.EIO, f"internal error: {type(e).__name__}: {e}")
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self = args[0]
            assert isinstance(self, Operations)
            self.counted(op, time.perf_counter() - t0, err)

    return wrapper


#: handlers whose first argument is a file handle, not an inode
_BY_FH = {"read", "write", "flush", "fsync", "release", "readdir"}
#: handlers whose second argument is the name of an entry in the first
_WITH_NAME = {"lookup", "create", "mkdir", "unlink", "rmdir", "rename", "symlink", "mknod"}


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, core: Vfs, entry_timeout: float = 1.0, attr_timeout: float = 1.0) -> None:
        super().__init__()
        self.core = core
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._dirs: dict[int, list[tuple[bytes, Node]]] = {}
        self._per_op: dict[str, tuple[Any, Any]] = {}  # op -> its request counter and histogram
        self._next_dir = 1

    def counted(self, op: str, seconds: float, err: int) -> None:
        """One answered request in the metrics: its count, its time, its errno if any."""
        m = self.core.metrics
        per_op = self._per_op.get(op)
        if per_op is None:
            # prometheus_client's labels() costs more than the update itself: once per op
            per_op = self._per_op[op] = (m.labelled("fuse.requests").labels(op),
                                         m.histogram("fuse.request_seconds").labels(op))
        per_op[0].inc()
        per_op[1].observe(seconds)
        if err:
            m.labelled("fuse.errors").labels(op, errno.errorcode.get(err, str(err))).inc()

    def where(self, op: str, args: tuple[Any, ...]) -> str:
        """The mount path a request is about, for .hvfs/errors and the log."""
        try:
            first = args[0] if args else None
            if op in _BY_FH:
                h = self.core.handles.get(first) if isinstance(first, int) else None
                base = h.node.path() if h is not None else None
            else:
                n = self.core.tree.get(first) if isinstance(first, int) else None
                base = n.path() if n is not None else None
            if base is None:
                return f"(gone: {op} {first})"
            if op in _WITH_NAME and len(args) > 1 and isinstance(args[1], bytes):
                base = base.rstrip(b"/") + b"/" + args[1]
            return base.decode(errors="replace")
        except Exception:  # a path for a message must never fail the request
            return f"({op})"

    # -- attributes --------------------------------------------------------

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.entry_timeout
        # Attributes are cached as long as entries: the notifier invalidates
        # them on every remote change. A cached size never cuts a handle's
        # read short: writers and FILE@REV use direct_io, and while read-only
        # page-cache handles are open their content's size is the one reported
        # (Vfs._register, KvProvider.size). Files whose size moves by itself
        # (.log, .hvfs/*) are never cached.
        a.attr_timeout = 0 if node.kind in _UNCACHED else self.attr_timeout
        if node.view is not None and node.view.suffix and node.shown_rev != node.revision:
            a.attr_timeout = 0  # a typed file's size is known once rendered: ask again (getattr)
        if node.kind is Kind.DIR:
            a.st_mode = stat.S_IFDIR | DIR_MODE
            assert node.children is not None
            a.st_nlink = 2 + node.children.subdirs()
            a.st_size = 0
        else:
            a.st_mode = stat.S_IFREG | self.file_mode(node)
            a.st_nlink = 1 if node.linked or node.kind is Kind.REV else 0
            a.st_size = self.core.size_of(node)
            # What the kernel's size for the inode now is, unless an invalidation of the
            # inode may have come between this request's making and its answer: then the
            # kernel drops these attributes, and its size is not known here.
            trusted = node.inval_at < _RECEIVED.get() - QUEUE_SLACK
            # Two replies for one inode close together: the kernel drops the one it applies
            # second if the other was applied after it was sent; which size it kept is not
            # known until a reply comes alone. One thread's requests do not cross: its next
            # one is made after the kernel applied the reply to its last (fsx, a shell).
            now = time.monotonic()
            caller = _CALLER.get()
            close = now - node.reply_at < QUEUE_SLACK and (caller == 0 or caller != node.reply_caller)
            if close and (node.reply_size != a.st_size or node.told == -1):
                trusted = False
            node.reply_size, node.reply_at, node.reply_caller = a.st_size, now, caller
            node.told = a.st_size if trusted else -1
        a.st_uid = self.uid
        a.st_gid = self.gid
        ns = int(node.mtime * 1e9)
        a.st_atime_ns = a.st_mtime_ns = ns
        a.st_ctime_ns = int(node.ctime * 1e9)
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        return a

    def file_mode(self, node: Node) -> int:
        ro = self.core.refuses_writes(node) or node.kind in (Kind.CTRL, Kind.MSG, Kind.LOG)
        return 0o444 if ro else 0o644

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        node.nlookup += 1
        return self.attrs(node)

    # -- lookup and listing ------------------------------------------------------

    @_fuse
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.core.lookup(parent_inode, name, ctx.pid))

    @_fuse
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.core.node(inode)
        await self.core.refresh_attrs(node)
        return self.attrs(node)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.core.tree.forget(ino, n)

    @_fuse
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        d = self.core.node(inode)
        entries = [(b".", d), (b"..", d.parent or d), *await self.core.readdir(inode, ctx.pid)]
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = entries
        return fh

    @_fuse
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh, [])
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs(node), i + 1):
                return
            if i >= 2:  # the kernel takes no lookup reference for "." and ".."
                node.nlookup += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -------------------------------------------------------------

    def _info(self, h: Handle) -> pyfuse3.FileInfo:
        keep = h.keep_cache if h.node.kind is Kind.KV else not h.direct_io
        return pyfuse3.FileInfo(fh=h.fh, direct_io=h.direct_io, keep_cache=keep)

    @_fuse
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return self._info(await self.core.open(inode, flags, ctx.pid))

    @_fuse
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        h = await self.core.create(parent_inode, name, flags, ctx.pid)
        return self._info(h), self._entry(h.node)

    @_fuse
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.core.read(fh, off, size)

    @_fuse
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.core.write(fh, off, buf)

    @_fuse
    async def flush(self, fh: int) -> None:
        await self.core.flush(fh)

    @_fuse
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.core.flush(fh, final=True)

    @_fuse
    async def release(self, fh: int) -> None:
        h = self.core.handles.get(fh)
        try:
            if h is not None and h.dirty:
                await self.core.release_flush(fh)  # errors reach no caller: logged, bytes kept
        except HvfsError as e:
            log.warning("release of %s: %s", self.where("release", (fh,)), e.reason)
        finally:
            self.core.release(fh)
            node = h.node if h is not None else None
            if node is not None and h is not None and h.cached and node.cached_open == 0 \
                    and node.told != self.core.size_of(node):
                # The size the last page-cache reader pinned is over: the kernel asks again
                # (only the attributes: no page locks, so safe inside a request).
                pyfuse3.invalidate_inode(node.ino, attr_only=True)

    @_fuse
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.core.node(inode)
        mode_change = fields.update_mode and stat.S_IMODE(attr.st_mode) != self._mode_of(node)
        owner_change = (fields.update_uid and attr.st_uid != self.uid) or \
            (fields.update_gid and attr.st_gid != self.gid)
        if (mode_change or owner_change) and self.core.read_only:
            raise ReadOnly("mounted read-only")
        if mode_change:
            raise NotPermitted(f"modes are not stored here: {self._mode_of(node):04o} is the only mode "
                               f"(asked {stat.S_IMODE(attr.st_mode):04o})")
        if owner_change:
            raise NotPermitted(f"owners are not stored here: files belong to {self.uid}:{self.gid}")
        if fields.update_size:
            await self.core.set_size(inode, attr.st_size, fh)
        if fields.update_mtime and _is_now(attr.st_mtime_ns):
            await self.core.touch(inode, ctx.pid)
        # Explicit times are accepted, not kept: a file's mtime is its revision's time.
        return self.attrs(self.core.node(inode))

    def _mode_of(self, node: Node) -> int:
        return DIR_MODE if node.kind is Kind.DIR else self.file_mode(node)

    # -- namespace -----------------------------------------------------------

    @_fuse
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.core.mkdir(parent_inode, name, ctx.pid))

    @_fuse
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise NotPermitted("hard links do not exist here: a file is one key")

    @_fuse
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise NotPermitted("symbolic links do not exist here")

    @_fuse
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise NotPermitted("only regular files and directories exist here")

    @_fuse
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.core.unlink(parent_inode, name, ctx.pid)

    @_fuse
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.core.rmdir(parent_inode, name, ctx.pid)

    @_fuse
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        await self.core.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    # -- xattrs and statfs -------------------------------------------------------

    @_fuse
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.core.getxattr(inode, name, ctx.pid)

    @_fuse
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        # What the node has now: a key's TTL, writer and error come and go with its revisions.
        node = self.core.node(inode)
        have = await self.core.xattrs(node, ctx.pid)
        return [n for n in XATTRS if n in have] + sorted(n for n in have if n not in XATTRS)

    @_fuse
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.core.setxattr(inode, name, value)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 20
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s
