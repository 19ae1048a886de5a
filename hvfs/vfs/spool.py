"""The spool: bytes that ``write()`` accepted and NATS does not have yet, on local disk.

A handle with unpublished bytes holds a slot file in the mount's state
directory (``--state-dir``), ``spool/slot-N``: a JSON description of where the
bytes were meant to go (bucket or stream, key, the revision they were based
on), then the content the handle holds, kept current by every write and
truncate. The slot is emptied when the bytes land or become a conflict. A
crash of the daemon leaves it full (the kernel keeps written pages when a
process dies); the next mount turns each into a conflict entry with what it
was meant to be, never re-applied on its own (docs/errors.md, "Crash of hvfs").

This is one file per open handle with unpublished bytes (reused), not a mirror
of NATS. Offline mode keeps a slot past a failed publish: the mount's pending
writes (hvfs.vfs.offline).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .handles import Handle
from .tree import display

__all__ = ["HEADER", "MSG_ID_LEN", "Spool", "SpoolEntry"]

log = logging.getLogger(__name__)

#: bytes of a slot's JSON description; the handle's bytes follow it
HEADER = 8192
#: an entry's id, ``PPPPPPP-SSSSSSSSS-RRRRRRRR`` (pid, sequence, random): fixed length, so
#: the Nats-Msg-Id header it makes has a known size (what a value may take: hvfs.vfs.kv)
MSG_ID_LEN = 26


def _new_id(seq: int) -> str:
    return f"{os.getpid() % 10**7:07d}-{seq % 10**9:09d}-{os.urandom(4).hex()}"


@dataclass(slots=True)
class SpoolEntry:
    """What a spooled handle was meant to be (its slot's header)."""

    id: str
    where: str  # bucket or stream
    key: str  # key or subject
    path: str  # the file's path in the mount, as shown then
    base: int  # the revision the handle's content was based on (0: a new key)
    time: float
    kind: str = "kv"  # "kv" or "stream"
    #: offline mode: close() acknowledged these bytes as spooled; they are applied when NATS is back
    pending: bool = False
    sent: list[str] | None = None  # message ids of earlier sends of this pending write

    @property
    def msg_id(self) -> str:
        """The Nats-Msg-Id every publish of these bytes carries (``Spool.msg_id``)."""
        return f"hvfs-{self.id}"


_FIELDS = tuple(f.name for f in fields(SpoolEntry))


class Spool:
    """Slot files under ``<state>/spool``; ``root`` None: no spool (in-memory tests).

    A slot is one file: a ``HEADER``-byte JSON description (a ``SpoolEntry``, padded
    with spaces), then the handle's bytes. A free slot is empty (truncated to 0) and is
    reused, so a write costs a ``pwrite`` of header and content at the handle's first
    change, one ``pwrite`` per further write, and an ``ftruncate`` when the bytes land:
    no file is made or removed on the write path (bench/bench_spool.py).
    """

    def __init__(self, root: Path | None) -> None:
        self.dir = root / "spool" if root is not None else None
        self._seq = 0
        self._slots = 0  # slot files made so far: slot-<n>
        self._free: list[tuple[int, Path]] = []  # empty slots: (descriptor, path)
        self._used: dict[int, tuple[int, Path, SpoolEntry]] = {}  # id(handle) -> its slot and entry
        self._adopted: dict[str, tuple[int, Path, SpoolEntry]] = {}  # pending writes' slots, by entry id
        self.bytes_written = 0
        self.errors = 0
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def held(self) -> int:
        return len(self._used)

    # -- the handles' side ------------------------------------------------------

    def _slot(self) -> tuple[int, Path]:
        if self._free:
            return self._free.pop()
        assert self.dir is not None
        while True:
            self._slots += 1
            path = self.dir / f"slot-{self._slots}"
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
            except FileExistsError:
                continue  # an earlier mount's slot still holding a pending write

    def _open(self, h: Handle) -> int | None:
        """The handle's slot, filled (header and whole content) at its first change."""
        used = self._used.get(id(h))
        if used is not None or self.dir is None:
            return used[0] if used is not None else None
        self._seq += 1
        node = h.node
        view = node.view
        stream = getattr(node, "stream", None)
        kind, where = ("kv", view.bucket) if view is not None else ("stream", stream.name if stream else "")
        entry = SpoolEntry(_new_id(self._seq), where, node.key, display(node), h.base, time.time(), kind)
        try:
            fd, path = self._slot()
            os.pwrite(fd, _header(entry) + bytes(h.data), 0)
        except OSError as e:
            self._failed(f"cannot spool {display(node)}", e)
            return None
        self._used[id(h)] = (fd, path, entry)
        return fd

    def wrote(self, h: Handle, off: int, buf: bytes) -> None:
        """Mirror a write the handle took (its content is already changed)."""
        fresh = id(h) not in self._used
        fd = self._open(h)
        if fd is None or fresh:
            return  # a fresh slot already holds the whole content
        try:
            os.pwrite(fd, buf, HEADER + off)
            self.bytes_written += len(buf)
        except OSError as e:
            self._failed(f"cannot spool a write to {display(h.node)}", e)

    def truncated(self, h: Handle, size: int) -> None:
        fresh = id(h) not in self._used
        fd = self._open(h)
        if fd is None or fresh:
            return
        try:
            os.ftruncate(fd, HEADER + size)
        except OSError as e:
            self._failed(f"cannot spool a truncate of {display(h.node)}", e)

    def msg_id(self, h: Handle) -> str:
        """The Nats-Msg-Id for a publish of the handle's bytes: ``hvfs-<entry id>`` while it
        is spooled, so the next mount can tell after a crash whether the publish landed."""
        used = self._used.get(id(h))
        if used is not None:
            return used[2].msg_id
        self._seq += 1
        return f"hvfs-{_new_id(self._seq)}"

    def ensure(self, h: Handle) -> None:
        """Spool the handle's content now, written or not (an O_TRUNC with nothing written)."""
        self._open(h)

    def adopt(self, h: Handle) -> str:
        """Detach the handle's slot from it (its bytes stay, fsync'd): a pending write owns it
        now; its entry id, "" when nothing is spooled."""
        used = self._used.pop(id(h), None)
        if used is None:
            return ""
        fd, path, entry = used
        os.fsync(fd)
        self._adopted[entry.id] = used
        return entry.id

    def mark_pending(self, sid: str, name: str, base: int, sent: list[str]) -> None:
        """Record durably that the entry is an acknowledged pending write."""
        slot = self._adopted.get(sid)
        if slot is None:
            return
        fd, path, entry = slot
        entry.pending, entry.base, entry.sent = True, base, list(sent)
        os.pwrite(fd, _header(entry), 0)
        os.fsync(fd)
        if self.dir is not None:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)  # the slot's name too, when it was made just now
            finally:
                os.close(dfd)

    def drop(self, sid: str) -> None:
        """A pending write landed (or became a conflict): its slot is free again."""
        slot = self._adopted.pop(sid, None)
        if slot is not None:
            self._release(slot[0], slot[1])

    def done(self, h: Handle) -> None:
        """The handle holds no unpublished bytes any more: its slot is free again."""
        used = self._used.pop(id(h), None)
        if used is not None:
            self._release(used[0], used[1])

    def _release(self, fd: int, path: Path) -> None:
        try:
            os.ftruncate(fd, 0)
        except OSError as e:
            self._failed(f"cannot free {path.name}", e)
            with contextlib.suppress(OSError):
                os.close(fd)
            return
        self._free.append((fd, path))

    def close(self) -> None:
        """Unmount: descriptors close; slots of handles still dirty and of pending writes stay
        for the next mount; free slots go."""
        for fd, path in self._free:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
        for fd, _, _ in [*self._used.values(), *self._adopted.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._free.clear()
        self._used.clear()
        self._adopted.clear()

    def _failed(self, what: str, e: OSError) -> None:
        self.errors += 1
        log.warning("spool: %s: %s", what, e.strerror or e)

    # -- after a crash ----------------------------------------------------------

    def leftovers(self) -> list[tuple[SpoolEntry, bytes]]:
        """Entries a previous daemon left (it died with bytes unpublished), oldest first.
        Slots of entries that are not pending are removed: the caller keeps them (as
        conflicts) from here on; a pending entry's slot stays this spool's until it is
        applied (``drop``)."""
        if self.dir is None:
            return []
        out: list[tuple[SpoolEntry, bytes, Path]] = []
        for path in self.dir.iterdir():
            try:
                raw = path.read_bytes()
            except OSError:
                continue
            if len(raw) < HEADER:
                with contextlib.suppress(OSError):
                    path.unlink()  # a free slot (or one cut short before its header)
                continue
            try:
                d = json.loads(raw[:HEADER])
                entry = SpoolEntry(**{k: d[k] for k in SpoolEntry.__dataclass_fields__ if k in d})
            except (ValueError, TypeError) as e:
                log.warning("spool: unreadable slot %s: %s", path.name, e)
                continue
            out.append((entry, raw[HEADER:], path))
        out.sort(key=lambda t: t[0].time)
        for entry, _, path in out:
            if entry.pending:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                except OSError as e:
                    self._failed(f"cannot reopen {path.name}", e)
                    continue
                self._adopted[entry.id] = (fd, path, entry)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return [(e, data) for e, data, _ in out]


def _fields(entry: SpoolEntry) -> dict[str, Any]:
    """The entry's fields (``asdict`` without its deep copies: on every first write)."""
    return {f: getattr(entry, f) for f in _FIELDS}


def _header(entry: SpoolEntry) -> bytes:
    """The entry as JSON, padded to ``HEADER`` bytes (the bytes follow it)."""
    raw = json.dumps(_fields(entry)).encode()
    if len(raw) > HEADER - 1:
        # A path or key too long for the header: keep what recovery needs.
        short = _fields(entry) | {"path": entry.path[:200], "key": entry.key}
        raw = json.dumps(short).encode()[:HEADER - 1]
    return raw + b" " * (HEADER - 1 - len(raw)) + b"\n"
