"""The mount's own state, shown under ``.hvfs/``: status, errors, conflicts.

Everything here is bounded; it is what an agent reads to learn why a write
failed without access to the daemon's log. Conflicts are also kept on disk in
the mount's state directory (``--state-dir``) and survive a restart; the rest
is in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Conflict", "Conflicts", "ErrorLog", "EventLog"]

log = logging.getLogger(__name__)

MAX_CONFLICTS = 1000
MAX_CONFLICT_BYTES = 64 << 20
MAX_ERRORS = 500
MAX_EVENT_BYTES = 4 << 20


@dataclass(slots=True)
class Conflict:
    """Bytes a write could not land, kept so nothing written is lost."""

    file: str
    bucket: str
    key: str
    base_revision: int
    current_revision: int | None
    errno: int
    reason: str
    time: float
    size: int
    #: "" a write that did not land; "unknown" it timed out and may still land (NATS answered
    #: nothing): the mount finds out and says "landed" (``landed_revision``) or "not landed"
    outcome: str = ""
    landed_revision: int | None = None
    msg_id: str = ""  # the Nats-Msg-Id the write was sent with ("": not sent)
    theirs_size: int | None = None  # the winning value's size, kept as NAME.theirs (None: not kept)
    kind: str = "kv"  # "kv": bucket and key; "stream": stream and subject (base_revision: a sequence)
    _data: bytes | None = field(repr=False, default=None)
    _path: Path | None = field(repr=False, default=None)
    _theirs: bytes | None = field(repr=False, default=None)

    @property
    def theirs(self) -> bytes | None:
        if self.theirs_size is None:
            return None
        if self._path is not None:
            try:
                return self._path.with_name(f"{self.file}.theirs").read_bytes()
            except OSError:
                return b""
        return self._theirs

    @property
    def data(self) -> bytes:
        if self._data is not None:
            return self._data
        if self._path is None:
            return b""
        try:
            return self._path.read_bytes()
        except OSError:
            return b""

    def meta(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in _META}
        if not self.outcome:
            for k in ("outcome", "landed_revision", "msg_id"):
                if not d[k]:
                    del d[k]
        if d["theirs_size"] is None:
            del d["theirs_size"]
        if d["kind"] == "kv":
            del d["kind"]
        return d


_META = ("file", "bucket", "key", "base_revision", "current_revision", "errno", "reason", "time", "size",
         "outcome", "landed_revision", "msg_id", "theirs_size", "kind")


class Conflicts:
    """The losing bytes of failed writes, oldest dropped past the bounds.

    With a directory (the mount's ``<state>/conflicts``) each entry is two files there,
    ``NAME`` (the bytes) and ``NAME.json``, so they survive a restart of the mount;
    without one (in-memory tests) they live in memory.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._seq = 0
        self.items: dict[str, Conflict] = {}
        self._bytes = 0
        self.total = 0
        self.dir = root / "conflicts" if root is not None else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._load()

    def _load(self) -> None:
        """The entries an earlier mount on this state directory left."""
        assert self.dir is not None
        for meta in sorted(self.dir.glob("*.json")):
            if meta.name.endswith(".tmp"):
                continue
            try:
                d = json.loads(meta.read_text())
                c = Conflict(**{k: d.get(k) for k in _META if k in d})
            except (OSError, ValueError, TypeError):
                continue
            c.outcome = c.outcome or ""
            c.msg_id = c.msg_id or ""
            c.kind = c.kind or "kv"
            c._path = self.dir / c.file
            self.items[c.file] = c
            self._bytes += c.size
            head = c.file.split("-", 1)[0]
            if head.isdigit():
                self._seq = max(self._seq, int(head))
        self.total = len(self.items)

    def add(self, bucket: str, key: str, base: int, current: int | None, err: int,
            reason: str, data: bytes, *, outcome: str = "", msg_id: str = "",
            when: float | None = None, theirs: bytes | None = None, kind: str = "kv") -> Conflict:
        """Keep ``data`` (ours); ``theirs``: the value that won, kept beside it as ``NAME.theirs``."""
        self._seq += 1
        self.total += 1
        safe_key = key.replace("/", "=2F")
        name = f"{self._seq:06d}-{bucket}-{safe_key}@{base}"
        c = Conflict(name, bucket, key, base, current, err, reason, when or time.time(), len(data),
                     outcome, None, msg_id, None if theirs is None else len(theirs), kind)
        if self.dir is not None and self._store(c, data, theirs):
            c._path = self.dir / name
        else:
            c._data, c._theirs = bytes(data), theirs
        self.items[name] = c
        self._bytes += len(data)
        while self.items and (len(self.items) > MAX_CONFLICTS or self._bytes > MAX_CONFLICT_BYTES):
            oldest = next(iter(self.items))
            self.remove(oldest)
        return c

    def _store(self, c: Conflict, data: bytes, theirs: bytes | None) -> bool:
        assert self.dir is not None
        try:
            (self.dir / c.file).write_bytes(data)
            if theirs is not None:
                (self.dir / f"{c.file}.theirs").write_bytes(theirs)
            self._write_meta(c)
        except OSError as e:
            log.warning("conflicts: cannot keep %s on disk (%s): kept in memory", c.file, e.strerror or e)
            return False
        return True

    def save(self, c: Conflict) -> None:
        """Write an entry's description again (its outcome became known)."""
        if c._path is None or c.file not in self.items:
            return  # kept in memory, or dropped meanwhile
        try:
            self._write_meta(c)
        except OSError as e:
            log.warning("conflicts: cannot update %s: %s", c.file, e.strerror or e)

    def _write_meta(self, c: Conflict) -> None:
        assert self.dir is not None
        path = self.dir / f"{c.file}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(c.meta()))
        os.replace(tmp, path)

    def remove(self, name: str) -> None:
        c = self.items.pop(name, None)
        if c is not None:
            self._bytes -= c.size
            if self.dir is not None:
                for p in (self.dir / name, self.dir / f"{name}.json", self.dir / f"{name}.theirs"):
                    with contextlib.suppress(OSError):
                        p.unlink()

    def index(self) -> bytes:
        return "".join(json.dumps(c.meta()) + "\n" for c in self.items.values()).encode()


class ErrorLog:
    """The last errors the mount returned, one JSON line each."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=MAX_ERRORS)
        self.total = 0

    def add(self, op: str, path: str, err: int, reason: str) -> None:
        self.total += 1
        self.lines.append(json.dumps({"time": round(time.time(), 3), "op": op, "path": path,
                                      "errno": err, "reason": reason}))

    def render(self) -> bytes:
        return "".join(line + "\n" for line in self.lines).encode()


class EventLog:
    """``.hvfs/events``: one JSON line per change the mount sees, followable.

    Offsets are absolute (the file only grows, so ``tail -f`` works); the
    oldest bytes past MAX_EVENT_BYTES are dropped, and a read below the
    retained window starts at its beginning.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.base = 0  # absolute offset of buf[0]
        self.total = 0

    def add(self, change: object) -> None:
        c = change
        line = json.dumps({
            "bucket": getattr(c, "bucket", ""), "key": getattr(c, "key", ""),
            "op": getattr(getattr(c, "op", None), "value", ""), "revision": getattr(c, "revision", 0),
            "size": getattr(c, "size", 0), "time": round(getattr(c, "time", 0.0), 6),
        }).encode() + b"\n"
        self.buf += line
        self.total += len(line)
        if len(self.buf) > MAX_EVENT_BYTES:
            cut = self.buf.find(b"\n", len(self.buf) - MAX_EVENT_BYTES // 2) + 1
            del self.buf[:cut]
            self.base += cut

    def read(self, off: int, size: int) -> bytes:
        start = max(off - self.base, 0)
        return bytes(self.buf[start:start + size])

    def render(self) -> bytes:
        return bytes(self.buf)
