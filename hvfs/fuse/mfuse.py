"""The mfusepy binding: libfuse's high-level (path-based) API, for FUSE-T on macOS.

FUSE-T serves only the libfuse2 high-level API, which pyfuse3 (libfuse3's
low-level API) cannot use; this binding calls the same ``Vfs`` facade as
``ops.py`` through mfusepy (ctypes). On Linux mfusepy loads libfuse2 if it is
installed, else libfuse3; both are tested here, FUSE-T never (docs/macos.md).

Threads: mfusepy's blocking main loop runs in one thread (``MfuseMount``,
started and stopped by the mount); libfuse calls the operations below from
its own worker threads. Each call is submitted to the mount's trio loop
(``trio.from_thread.run``) and waited for, bounded by ``REQUEST_BOUND``: the
facade is only ever touched from the trio thread, as with pyfuse3.

Paths are resolved from the root through ``Vfs.lookup``, one component at a
time. There is no kernel notifier with this binding: entries and attributes
are cached for at most ``CACHE_TIMEOUT`` seconds and nothing is invalidated,
least of all from inside a request. Errors take their errno from the one
table (``errors.errno_of``), are logged in ``.hvfs/errors`` like ``ops.py``
does, and reach libfuse as ``FuseOSError``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import mfusepy
import trio

from ..errors import HvfsError, NotPermitted, NotSupported, ReadOnly, Unavailable, errno_of
from ..vfs.core import XATTRS, Vfs
from ..vfs.handles import Handle
from ..vfs.tree import Kind, Node

__all__ = ["CACHE_TIMEOUT", "REQUEST_BOUND", "HvfsOperations", "MfuseMount", "fuse_options"]

log = logging.getLogger(__name__)

#: seconds the kernel (or FUSE-T) may cache an entry or attributes: nothing invalidates them
CACHE_TIMEOUT = 1.0
#: the longest a libfuse thread waits for the trio loop's answer (every NATS call is bounded
#: far below this; a last-close publish is waited for at most Vfs's SETTLE_WAIT, 30 s)
REQUEST_BOUND = 60.0
#: how long the mount waits for libfuse's loop to end after the (lazy) unmount, and again after
#: aborting the connection: the loop outlives the unmount while a process holds a file open
STOP_WAIT = 2.0
DIR_MODE = 0o755
_QUIET = {errno.ENOENT, errno.ENODATA, errno.EEXIST, errno.EOPNOTSUPP}
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_NOW_SLACK_NS = 1_000_000_000
#: chown's "leave it": (uid_t)-1 as libfuse passes it
_UNCHANGED = {-1, 0xFFFFFFFF}
_ENOATTR: int = getattr(errno, "ENOATTR", errno.ENODATA)
#: FILE@REV inodes a request resolved: made per lookup and, with no kernel forget in this
#: API, dropped from the inode table when the request ends (a handle keeps its own)
_REVS: ContextVar[list[Node] | None] = ContextVar("hvfs_mfuse_revs", default=None)


def _b(name: str) -> bytes:
    """A name as mfusepy decoded it (utf-8, surrogateescape) back to the kernel's bytes."""
    return name.encode("utf-8", "surrogateescape")


def _s(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def fuse_options(allow_other: bool, debug: bool) -> dict[str, Any]:
    """The mount options for this platform and the libfuse mfusepy loaded."""
    opts: dict[str, Any] = {"fsname": "hvfs", "default_permissions": True}
    if allow_other:
        opts["allow_other"] = True
    if debug:
        opts["debug"] = True
    if sys.platform == "darwin":
        # FUSE-T (1.0.29+): how long the NFS client caches attributes. Untested (docs/macos.md).
        opts["attrcache-timeout"] = int(CACHE_TIMEOUT)
        return opts
    opts |= {"subtype": "hvfs", "use_ino": True, "hard_remove": True,
             "attr_timeout": CACHE_TIMEOUT, "entry_timeout": CACHE_TIMEOUT, "negative_timeout": 0}
    if mfusepy.fuse_version_major == 2:
        # O_TRUNC reaches open() (libfuse3 does this by default): `echo x > f` is one revision
        opts["atomic_o_trunc"] = True
    return opts


def _is_now(mtime_ns: int) -> bool:
    return mtime_ns == _UTIME_NOW or abs(time.time_ns() - mtime_ns) <= _NOW_SLACK_NS


class HvfsOperations:
    """mfusepy operations (called from libfuse threads) over the trio-side ``Vfs``."""

    use_ns = True  # times in nanoseconds (utimens, attributes)

    def __init__(self, core: Vfs, token: trio.lowlevel.TrioToken, on_init: Callable[[], None],
                 bound: float = REQUEST_BOUND) -> None:
        self.core = core
        self.token = token
        self.on_init = on_init
        self.bound = bound
        self.uid = os.getuid()
        self.gid = os.getgid()

    # -- the bridge: a libfuse thread -> the trio loop ------------------------------------

    def _call(self, op: str, where: str | None, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``fn(*args)`` on the trio loop and wait for it; an errno is a FuseOSError."""
        try:
            return trio.from_thread.run(self._serve, op, where, fn, *args, trio_token=self.token)
        except mfusepy.FuseOSError:
            raise
        except trio.RunFinishedError:
            raise mfusepy.FuseOSError(errno.EIO) from None  # the mount is stopping
        except BaseException:  # noqa: B036 - Cancelled at shutdown: never into libfuse (mfusepy aborts)
            log.debug("%s %s: no answer (the mount is stopping)", op, where)
            raise mfusepy.FuseOSError(errno.EIO) from None

    async def _serve(self, op: str, where: str | None, fn: Callable[..., Awaitable[Any]],
                     *args: Any) -> Any:
        t0 = time.perf_counter()
        err = 0
        path = where or f"({op})"
        revs: list[Node] = []
        _REVS.set(revs)
        try:
            with trio.fail_after(self.bound):
                return await fn(*args)
        except mfusepy.FuseOSError as e:
            err = e.errno or errno.EIO
            raise
        except trio.TooSlowError:
            err = errno.ETIMEDOUT
            self.core.errors.add(op, path, err, f"no answer within {self.bound:g} s")
            log.warning("%s %s: no answer within %g s", op, path, self.bound)
            raise mfusepy.FuseOSError(err) from None
        except HvfsError as e:
            err = errno_of(e)
            if err not in _QUIET:
                self.core.errors.add(op, path, err, e.reason)
                log.info("%s %s: %s (%s)", op, path, e.reason, errno.errorcode.get(err))
            if err == errno.ENODATA and op == "getxattr":
                err = _ENOATTR  # the same on Linux; macOS says ENOATTR
            raise mfusepy.FuseOSError(err) from None
        except Exception as e:
            err = errno.EIO
            log.exception("%s %s failed unexpectedly", op, path)
            self.core.errors.add(op, path, err, f"internal error: {type(e).__name__}: {e}")
            raise mfusepy.FuseOSError(err) from None
        finally:
            for n in revs:
                self.core.tree.maybe_free(n)
            m = self.core.metrics
            m.labelled("fuse.requests").labels(op).inc()
            m.histogram("fuse.request_seconds").labels(op).observe(time.perf_counter() - t0)
            if err:
                m.labelled("fuse.errors").labels(op, errno.errorcode.get(err, str(err))).inc()

    @staticmethod
    def _pid() -> int:
        return mfusepy.fuse_get_context()[2]

    # -- paths to nodes (on the trio loop) ----------------------------------------------

    async def _node(self, path: str, pid: int) -> Node:
        node = self.core.tree.root
        for part in path.split("/"):
            if part:
                node = await self.core.lookup(node.ino, _b(part), pid)
        revs = _REVS.get()
        if node.kind is Kind.REV and revs is not None:
            revs.append(node)
        return node

    async def _parent(self, path: str, pid: int) -> tuple[Node, bytes]:
        head, _, name = path.rstrip("/").rpartition("/")
        return await self._node(head, pid), _b(name)

    # -- attributes ---------------------------------------------------------------------

    def _file_mode(self, node: Node) -> int:
        ro = self.core.refuses_writes(node) or node.kind in (Kind.CTRL, Kind.MSG, Kind.LOG)
        return 0o444 if ro else 0o644

    def _mode_of(self, node: Node) -> int:
        return DIR_MODE if node.kind is Kind.DIR else self._file_mode(node)

    def _attrs(self, node: Node) -> dict[str, int]:
        if node.kind is Kind.DIR:
            assert node.children is not None
            mode = stat.S_IFDIR | DIR_MODE
            nlink = 2 + node.children.subdirs()
            size = 0
        else:
            mode = stat.S_IFREG | self._file_mode(node)
            nlink = 1 if node.linked or node.kind is Kind.REV else 0
            size = self.core.size_of(node)
        ns = int(node.mtime * 1e9)
        return {"st_ino": node.ino, "st_mode": mode, "st_nlink": nlink, "st_size": size,
                "st_uid": self.uid, "st_gid": self.gid, "st_atime": ns, "st_mtime": ns,
                "st_ctime": int(node.ctime * 1e9), "st_blksize": 4096, "st_blocks": (size + 511) // 512}

    async def _getattr(self, path: str, fh: int | None, pid: int) -> dict[str, int]:
        h = self.core.handles.get(fh) if fh is not None else None
        if h is not None and not h.node.linked and h.node.kind is not Kind.REV:
            node = h.node  # an open file unlinked meanwhile: its handle still knows it
        else:
            node = await self._node(path, pid)
            await self.core.refresh_attrs(node)
        return self._attrs(node)

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        num = fh.fh if fh is not None else None
        return self._call("getattr", path, self._getattr, path, num, self._pid())  # type: ignore[no-any-return]

    # -- listing ------------------------------------------------------------------------

    async def _readdir(self, path: str, pid: int) -> list[Any]:
        d = await self._node(path, pid)
        entries: list[Any] = [".", ".."]
        for name, node in await self.core.readdir(d.ino, pid):
            mode = stat.S_IFDIR if node.kind is Kind.DIR else stat.S_IFREG
            entries.append((_s(name), {"st_mode": mode, "st_ino": node.ino}, 0))
        return entries

    def readdir(self, path: str, fh: int) -> list[Any]:
        return self._call("readdir", path, self._readdir, path, self._pid())  # type: ignore[no-any-return]

    # -- files --------------------------------------------------------------------------

    @staticmethod
    def _info(h: Handle, fi: Any) -> int:
        fi.fh = h.fh
        fi.direct_io = int(h.direct_io)
        fi.keep_cache = int(h.keep_cache if h.node.kind is Kind.KV else not h.direct_io)
        return 0

    async def _open(self, path: str, flags: int, pid: int) -> Handle:
        node = await self._node(path, pid)
        return await self.core.open(node.ino, flags, pid)

    def open(self, path: str, fi: Any) -> int:
        return self._info(self._call("open", path, self._open, path, fi.flags, self._pid()), fi)

    async def _create(self, path: str, flags: int, pid: int) -> Handle:
        parent, name = await self._parent(path, pid)
        return await self.core.create(parent.ino, name, flags, pid)

    def create(self, path: str, mode: int, fi: Any) -> int:
        return self._info(self._call("create", path, self._create, path, fi.flags, self._pid()), fi)

    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        return self._call("read", path, self.core.read, fi.fh, offset, size)  # type: ignore[no-any-return]

    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        return self._call("write", path, self.core.write, fi.fh, offset, data)  # type: ignore[no-any-return]

    def flush(self, path: str | None, fi: Any) -> int:
        self._call("flush", path, self.core.flush, fi.fh)
        return 0

    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        self._call("fsync", path, self.core.flush, fi.fh, True)
        return 0

    async def _release(self, path: str | None, fh: int) -> None:
        h = self.core.handles.get(fh)
        try:
            if h is not None and h.dirty:
                await self.core.release_flush(fh)  # errors reach no caller: logged, bytes kept
        except HvfsError as e:
            log.warning("release of %s: %s", path, e.reason)
        finally:
            self.core.release(fh)

    def release(self, path: str | None, fi: Any) -> int:
        self._call("release", path, self._release, path, fi.fh)
        return 0

    # -- setattr, in the high-level API's pieces ----------------------------------------

    async def _truncate(self, path: str | None, length: int, fh: int | None, pid: int) -> None:
        h = self.core.handles.get(fh) if fh is not None else None
        node = h.node if h is not None else await self._node(path or "/", pid)
        await self.core.set_size(node.ino, length, fh)

    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        num = fh.fh if fh is not None else None
        self._call("truncate", path, self._truncate, path, length, num, self._pid())
        return 0

    async def _chmod(self, path: str, mode: int, pid: int) -> None:
        node = await self._node(path, pid)
        if stat.S_IMODE(mode) == self._mode_of(node):
            return
        if self.core.read_only:
            raise ReadOnly("mounted read-only")
        raise NotPermitted(f"modes are not stored here: {self._mode_of(node):04o} is the only mode "
                           f"(asked {stat.S_IMODE(mode):04o})")

    def chmod(self, path: str, mode: int) -> int:
        self._call("chmod", path, self._chmod, path, mode, self._pid())
        return 0

    async def _chown(self, path: str, uid: int, gid: int, pid: int) -> None:
        await self._node(path, pid)
        if (uid in _UNCHANGED or uid == self.uid) and (gid in _UNCHANGED or gid == self.gid):
            return
        if self.core.read_only:
            raise ReadOnly("mounted read-only")
        raise NotPermitted(f"owners are not stored here: files belong to {self.uid}:{self.gid}")

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._call("chown", path, self._chown, path, uid, gid, self._pid())
        return 0

    async def _utimens(self, path: str, mtime: int | None, pid: int) -> None:
        node = await self._node(path, pid)
        if mtime is None or (mtime != _UTIME_OMIT and _is_now(mtime)):
            await self.core.touch(node.ino, pid)
        # Explicit times are accepted, not kept: a file's mtime is its revision's time.

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        mtime = None if times is None else int(times[1])
        self._call("utimens", path, self._utimens, path, mtime, self._pid())
        return 0

    # -- namespace ----------------------------------------------------------------------

    async def _mkdir(self, path: str, pid: int) -> None:
        parent, name = await self._parent(path, pid)
        await self.core.mkdir(parent.ino, name, pid)

    def mkdir(self, path: str, mode: int) -> int:
        self._call("mkdir", path, self._mkdir, path, self._pid())
        return 0

    async def _unlink(self, path: str, pid: int) -> None:
        parent, name = await self._parent(path, pid)
        await self.core.unlink(parent.ino, name, pid)

    def unlink(self, path: str) -> int:
        self._call("unlink", path, self._unlink, path, self._pid())
        return 0

    async def _rmdir(self, path: str, pid: int) -> None:
        parent, name = await self._parent(path, pid)
        await self.core.rmdir(parent.ino, name, pid)

    def rmdir(self, path: str) -> int:
        self._call("rmdir", path, self._rmdir, path, self._pid())
        return 0

    async def _rename(self, old: str, new: str, flags: int, pid: int) -> None:
        src, old_name = await self._parent(old, pid)
        dst, new_name = await self._parent(new, pid)
        await self.core.rename(src.ino, old_name, dst.ino, new_name, flags)

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        """``flags``: renameat2's (libfuse3 only, through ``_Fuse``; libfuse2's kernel protocol
        has none: the kernel refuses flags with EINVAL before asking)."""
        self._call("rename", old, self._rename, old, new, flags, self._pid())
        return 0

    async def _refuse(self, exc: HvfsError) -> None:
        raise exc

    def link(self, target: str, source: str) -> int:
        self._call("link", target, self._refuse, NotPermitted("hard links do not exist here: a file is one key"))
        return 0

    def symlink(self, target: str, source: str) -> int:
        self._call("symlink", target, self._refuse, NotPermitted("symbolic links do not exist here"))
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._call("mknod", path, self._refuse, NotPermitted("only regular files and directories exist here"))
        return 0

    # -- xattrs and statfs --------------------------------------------------------------
    # macOS passes a position argument to getxattr and setxattr: accepted, always 0 here.

    async def _getxattr(self, path: str, name: bytes, pid: int) -> bytes:
        node = await self._node(path, pid)
        return await self.core.getxattr(node.ino, name, pid)

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self._call("getxattr", path, self._getxattr, path, _b(name), self._pid())  # type: ignore[no-any-return]

    async def _listxattr(self, path: str, pid: int) -> list[str]:
        node = await self._node(path, pid)
        have = await self.core.xattrs(node, pid)
        names = [n for n in XATTRS if n in have] + sorted(n for n in have if n not in XATTRS)
        return [_s(n) for n in names]

    def listxattr(self, path: str) -> list[str]:
        return self._call("listxattr", path, self._listxattr, path, self._pid())  # type: ignore[no-any-return]

    async def _setxattr(self, path: str, name: bytes, value: bytes, pid: int) -> None:
        node = await self._node(path, pid)
        await self.core.setxattr(node.ino, name, value)

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._call("setxattr", path, self._setxattr, path, _b(name), value, self._pid())
        return 0

    def removexattr(self, path: str, name: str) -> int:
        self._call("removexattr", path, self._refuse, NotSupported(f"{name}: attributes cannot be removed here"))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 20,
                "f_bavail": 1 << 20, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_favail": 1 << 20,
                "f_namemax": 255}

    # -- life cycle ---------------------------------------------------------------------

    def init(self, path: str) -> None:
        """libfuse's loop is serving: the mount is up."""
        self.on_init()

    def destroy(self, path: str) -> None:
        pass


class _Fuse(mfusepy.FUSE):
    """mfusepy's FUSE, but libfuse3's rename passes renameat2's flags on (mfusepy drops them:
    RENAME_NOREPLACE would replace, RENAME_EXCHANGE would move)."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return int(self.operations.rename(old.decode(self.encoding, self.errors),
                                          new.decode(self.encoding, self.errors), flags))


class MfuseMount:
    """mfusepy's blocking loop in one thread, started by ``serve`` and stopped when it returns."""

    def __init__(self, core: Vfs, mountpoint: str, options: dict[str, Any],
                 connection: Callable[[], int | None] | None = None,
                 abort: Callable[[int | None], bool] | None = None) -> None:
        self.core = core
        self.mountpoint = mountpoint
        self.options = options
        #: the kernel's connection number of the mount, read once mounted (Linux: mountinfo),
        #: and how to abort it (Linux: fusectl; False: could not): ends the loop when files
        #: are held open at stop
        self.connection = connection
        self.abort = abort

    async def serve(self, ready: Callable[[], None], stop: trio.Event) -> None:
        """Mount, call ``ready``, serve until ``stop`` is set or the mount goes away; unmount."""
        token = trio.lowlevel.current_trio_token()
        conn: int | None = None
        mounted, ended = trio.Event(), trio.Event()
        failure: list[BaseException] = []

        def set_soon(ev: trio.Event) -> None:
            try:
                token.run_sync_soon(ev.set)
            except trio.RunFinishedError:
                pass

        ops = HvfsOperations(self.core, token, lambda: set_soon(mounted))

        def main() -> None:
            try:
                _Fuse(ops, self.mountpoint, raw_fi=True, foreground=True, nothreads=False, **self.options)
            except BaseException as e:  # noqa: B036 - reported on the trio side
                failure.append(e)
            finally:
                set_soon(ended)

        thread = threading.Thread(target=main, name="hvfs-mfusepy", daemon=True)
        thread.start()
        try:
            await _first(mounted.wait, ended.wait)
            if not mounted.is_set():
                why = failure[0] if failure else "libfuse's loop ended"
                raise Unavailable(f"{self.mountpoint}: cannot mount with mfusepy: {why}")
            conn = self.connection() if self.connection is not None else None
            ready()
            await _first(stop.wait, ended.wait)
        finally:
            with trio.CancelScope(shield=True):
                if not ended.is_set():
                    await self._unmount()
                    with trio.move_on_after(STOP_WAIT):
                        await ended.wait()
                if not ended.is_set() and self.abort is not None and self.abort(conn):
                    log.info("%s: files were still open; aborted the FUSE connection", self.mountpoint)
                    with trio.move_on_after(STOP_WAIT):
                        await ended.wait()
                if not ended.is_set():
                    # Files still open on the (detached) mount: the loop waits for requests that
                    # may never come. Its thread is a daemon: the process's exit closes /dev/fuse,
                    # which ends the connection (those files then fail with ENOTCONN).
                    log.info("%s: files still open; libfuse's loop ends with the process", self.mountpoint)
        if failure and mounted.is_set():
            log.warning("libfuse's loop ended with %r", failure[0])

    async def _unmount(self) -> None:
        if sys.platform == "darwin":
            cmds = [["umount", self.mountpoint], ["diskutil", "unmount", "force", self.mountpoint]]
        else:
            cmds = [["fusermount3", "-u", "-z", self.mountpoint], ["fusermount", "-u", "-z", self.mountpoint]]
        for cmd in cmds:
            try:
                r = await trio.run_process(cmd, check=False, capture_stdout=True, capture_stderr=True,
                                           stdin=subprocess.DEVNULL)
            except OSError:
                continue  # not installed here
            if r.returncode == 0:
                return
            log.debug("%s: %s", " ".join(cmd), r.stderr.decode(errors="replace").strip())


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` returns."""
    async with trio.open_nursery() as nursery:
        async def one(w: Callable[[], Awaitable[object]]) -> None:
            await w()
            nursery.cancel_scope.cancel()

        for w in waits:
            nursery.start_soon(one, w)
