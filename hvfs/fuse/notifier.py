"""The kernel notifier: remote changes reach the kernel and inotify watchers.

The kernel emits inotify events only for operations that pass through the
VFS; ``invalidate_*`` emit none. So this thread repeats each remote change
through the mountpoint itself: create -> ``open(O_CREAT|O_EXCL)``, a new
directory -> ``mkdir``, modify -> ``open(O_WRONLY)`` + ``ftruncate`` (same
size), delete -> ``unlink``/``rmdir``. The handlers recognise this thread's
requests (``hvfs.vfs.echo``) and touch nothing in NATS.

That costs a few FUSE round trips per change (1-2k changes/s). A change in
a directory the kernel does not hold (no lookup reference: nobody looked it
up or listed its parent since it was forgotten) needs nothing at all: no
dentry, no cached page and no inotify watch can be below it, and whoever
looks it up later gets the index as it is then. A change nobody else can hear
needs little: when the queue is long (a storm), the
thread reads which inodes of this mount inotify watches (every process's
``/proc/PID/fdinfo``, at most every ``SCAN_EVERY`` seconds) and, for a change
in a directory nobody watches (and to a file nobody watches), only
invalidates the kernel's entry or inode: microseconds, no round trip. A
change newer than the last scan is repeated as before, so a watcher added
before a change always hears it.

Everything that talks to the kernel from outside a request runs here:
calling ``invalidate_entry`` or a self-operation from the trio thread while a
request is in flight deadlocks the mount. No handler blocks on this thread;
it only reads a queue the trio thread fills. A handler whose change the kernel
did not see as an operation may await (not block, bounded) the moment the
kernel has heard it (``when_told``, ``Services.told``), so that later calls on
the mount find it; trio goes on answering requests, this thread's too.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3

from ..metrics import Metrics
from ..vfs.echo import Echo
from ..vfs.tree import Kind, Node

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

#: Past this many queued notices, modifies of one inode are coalesced and
#: new work is still accepted; the counter "coalesced" says how often.
MAX_QUEUE = 200_000
#: How long a new directory's files wait for a recursive watcher to list it.
FOLLOW_WAIT = 0.03
#: From this many queued changes on, changes nobody watches are only invalidated.
STORM = 32
#: The longest the list of watched inodes is reused for changes queued after it was read.
SCAN_EVERY = 0.05


@dataclass(slots=True)
class _Item:
    what: str  # create | mkdir | modify | delete
    parent: Node
    name: bytes
    node: Node
    path: bytes
    seq: int
    queued: float  # monotonic time it was queued

    @property
    def parent_ino(self) -> int:
        return self.parent.ino


class Notifier:
    def __init__(self, mountpoint: str, echo: Echo,
                 listed: dict[int, float] | None = None, metrics: Metrics | None = None,
                 device: str | None = None) -> None:
        """``device``: the mount's ``major:minor`` (mountinfo); None: no storm mode."""
        self.mountpoint = os.fsencode(mountpoint)
        self.echo = echo
        self.selfops = echo.ops
        self.listed = listed if listed is not None else {}
        self._q: deque[_Item] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._seq = 0
        self._pending_modify: set[int] = set()
        self._told = 0  # the seq of the last item done
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._exiting = False  # the thread has called its last waiters and is on its way out
        self._thread = threading.Thread(target=self._run, name="hvfs-notifier", daemon=True)
        self._watched = Watched(device) if device else None
        self._ready = threading.Event()
        m = self.metrics = metrics or Metrics()
        for name, help, prom in (
                ("queued", "changes queued for the kernel", None),
                ("done", "changes the kernel heard (invalidations and their events)",
                 "hvfs_notifier_invalidations"),
                ("failed", "changes that could not be repeated", "hvfs_notifier_failures"),
                ("coalesced", "modifies merged while behind", None),
                ("unwatched", "changes nobody watched: invalidated only", None),
                ("unheld", "changes in directories the kernel does not hold: nothing to do", None)):
            m.counter(f"notifier.{name}", help, prom)
        m.counter("notifier.max_queue", "longest queue seen", "hvfs_notifier_queue_depth_max", peak=True)
        m.gauge("notifier.queue", self.queue_length, "changes waiting for the kernel",
                "hvfs_notifier_queue_depth")
        self.lag_ms: deque[float] = deque(maxlen=1000)

    # -- lifecycle (trio thread) -----------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def stop_soon(self, ended: Callable[[], None]) -> None:
        """End the thread after the change it is repeating (the rest is dropped); ``ended``
        is called once it has (from the thread, or at once)."""
        with self._cv:
            self._stop = True
            self._cv.notify()
            if self._thread.is_alive() and not self._exiting:
                self._waiters.append((sys.maxsize, ended))  # woken only as the thread ends
                return
        ended()

    def stop(self, abort: Callable[[], None] | None = None) -> None:
        """Stop the thread. Called once the FUSE loop has ended: a self-operation
        still in the kernel would wait for an answer forever, so after a short
        grace the connection is aborted (``abort``), which fails it."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(1.0)
        if self._thread.is_alive() and abort is not None:
            log.warning("notifier stuck in a request to its own mount: aborting the FUSE connection")
            abort()
            self._thread.join(5.0)

    # -- queueing (trio thread) ---------------------------------------------------

    def enqueue(self, parent: Node, name: bytes, node: Node, what: str) -> None:
        parent_ino, ino = parent.ino, node.ino
        if what == "modify":
            # A create or modify of this inode still queued announces this change too.
            if ino in self._pending_modify:
                self.metrics.inc("notifier.coalesced")
                return
            self._pending_modify.add(ino)
        elif what == "create":
            self._pending_modify.add(ino)
        self._seq += 1
        if what == "delete":
            self.selfops.gone[(parent_ino, name)] = (node, self._seq)
        item = _Item(what, parent, name, node, parent.path().rstrip(b"/") + b"/" + name, self._seq,
                     time.monotonic())
        with self._cv:
            self._q.append(item)
            self.metrics.inc("notifier.queued")
            self.metrics.peak("notifier.max_queue", len(self._q))
            self._cv.notify()

    def when_told(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once every change queued so far is done (from this thread, or at once)."""
        with self._cv:
            if self._told >= self._seq or self._stop:
                now = True
            else:
                now = False
                self._waiters.append((self._seq, fn))
        if now:
            fn()

    def queue_length(self) -> int:
        return len(self._q)

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        self.echo.pids.add(threading.get_native_id())
        self._ready.set()
        while True:
            with self._cv:
                while not self._q and not self._stop:
                    self._cv.wait()
                if self._stop:
                    break
                item = self._q.popleft()
            t0 = time.monotonic()
            self.selfops.current = (item.parent_ino, item.name, item.node, item.what)
            item.node.inval_at = float("inf")  # attribute replies made meanwhile may be dropped
            try:
                if item.parent.nlookup <= 0:
                    # (read across threads: a lookup racing with this finds the index as it is)
                    self._pending_modify.discard(item.node.ino)
                    self.metrics.inc("notifier.unheld")
                elif self._heard_by_nobody(item):
                    self._invalidate(item)
                    self.metrics.inc("notifier.unwatched")
                else:
                    self._apply(item)
                self.metrics.inc("notifier.done")
            except OSError as e:
                # The entry moved on meanwhile (deleted again, re-created): nothing to announce.
                self.metrics.inc("notifier.failed")
                quiet = e.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.ENOTEMPTY, errno.EISDIR)
                log.log(logging.DEBUG if quiet else logging.INFO, "notifier %s %r: %s", item.what, item.path, e)
            except Exception:
                self.metrics.inc("notifier.failed")
                log.exception("notifier %s %r", item.what, item.path)
            finally:
                # The kernel's size for the inode is whatever it makes of this: unknown here.
                item.node.told = -1
                item.node.inval_at = time.monotonic()
                self.selfops.current = None
                key = (item.parent_ino, item.name)
                g = self.selfops.gone.get(key)
                if g is not None and g[1] == item.seq:
                    self.selfops.gone.pop(key, None)
                self.lag_ms.append((time.monotonic() - t0) * 1000)
                self._wake(item.seq)
        self._wake(None)

    def _wake(self, told: int | None) -> None:
        """Record ``told`` as done and call the waiters it satisfies (None: all, as the
        thread ends)."""
        with self._cv:
            if told is not None:
                self._told = told
            else:
                self._exiting = True
            if not self._waiters:
                return
            due = [fn for seq, fn in self._waiters if told is None or seq <= told]
            self._waiters = [w for w in self._waiters if told is not None and w[0] > told]
        for fn in due:
            fn()

    def _heard_by_nobody(self, item: _Item) -> bool:
        """In a storm: no inotify watch on the change's directory or file (as of a scan
        made after the change was queued)."""
        w = self._watched
        if w is None or len(self._q) < STORM:
            return False
        if w.at <= item.queued:
            if time.monotonic() - w.at < SCAN_EVERY:
                return False  # scanned too recently to scan again: repeat it, to be sure
            w.scan()
        return item.parent_ino not in w.inos and item.node.ino not in w.inos

    def _invalidate(self, item: _Item) -> None:
        """What the kernel must forget about the change; no inotify event (nobody listens)."""
        if item.what == "modify":
            self._pending_modify.discard(item.node.ino)
            _quiet(pyfuse3.invalidate_inode, item.node.ino, False)
        else:
            if item.what == "create":
                self._pending_modify.discard(item.node.ino)
            _quiet(pyfuse3.invalidate_entry, item.parent_ino, item.name)

    def _apply(self, item: _Item) -> None:
        full = self.mountpoint + item.path
        if item.what in ("create", "mkdir"):
            if item.what == "create":
                self._pending_modify.discard(item.node.ino)
            _quiet(pyfuse3.invalidate_entry, item.parent_ino, item.name)
            if item.what == "mkdir":
                os.mkdir(full)
                self._let_watchers_follow(item)
            else:
                os.close(os.open(full, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        elif item.what == "modify":
            self._pending_modify.discard(item.node.ino)
            fd = os.open(full, os.O_WRONLY)
            try:
                os.ftruncate(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
        elif item.what == "delete":
            if item.node.kind is Kind.DIR:
                os.rmdir(full)
            else:
                os.unlink(full)


    def _let_watchers_follow(self, item: _Item) -> None:
        """Give ``inotifywait -r`` time to watch a new directory before its files appear.

        A recursive watcher adds its watch, then lists the new directory; that
        opendir is what we wait for, briefly, and only where someone has
        listed the parent before and the queue is short.
        """
        parent_listed = item.parent_ino in self.listed
        if not parent_listed or len(self._q) > 100:
            return
        since = time.monotonic()
        deadline = since + FOLLOW_WAIT
        while time.monotonic() < deadline:
            if self.listed.get(item.node.ino, 0.0) >= since - 0.001:
                return
            time.sleep(0.0005)


class Watched:
    """The inodes of one filesystem that some inotify instance watches, read from every
    process's ``/proc/PID/fdinfo`` (lines ``inotify wd:N ino:HEX sdev:HEX ...``)."""

    def __init__(self, device: str) -> None:
        # fdinfo shows the kernel's dev_t: major << 20 | minor
        major, _, minor = device.partition(":")
        self.sdev = f"{(int(major) << 20) | int(minor):x}"
        self.inos: set[int] = set()
        self.at = 0.0  # monotonic time the last scan began

    def scan(self) -> None:
        self.at = time.monotonic()
        found: set[int] = set()
        tag = f" sdev:{self.sdev} "
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                        continue
                    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                        for line in f:
                            if line.startswith("inotify ") and tag in line:
                                found.add(int(line.split(" ino:", 1)[1].split(None, 1)[0], 16))
                except OSError:
                    continue
        self.inos = found


def _quiet(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError:
        pass
