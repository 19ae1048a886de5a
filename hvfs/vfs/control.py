"""The mount's own state, shown under ``.hvfs/``: status, errors, conflicts.

Everything here is in memory and bounded; it is what an agent reads to learn
why a write failed without access to the daemon's log.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field

__all__ = ["Conflict", "Conflicts", "ErrorLog", "EventLog"]

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
    data: bytes = field(repr=False, default=b"")

    def meta(self) -> dict[str, object]:
        d = asdict(self)
        del d["data"]
        return d


class Conflicts:
    """The losing bytes of failed writes, oldest dropped past the bounds."""

    def __init__(self) -> None:
        self._seq = 0
        self.items: dict[str, Conflict] = {}
        self._bytes = 0
        self.total = 0

    def add(self, bucket: str, key: str, base: int, current: int | None, err: int,
            reason: str, data: bytes) -> Conflict:
        self._seq += 1
        self.total += 1
        safe_key = key.replace("/", "=2F")
        name = f"{self._seq:06d}-{bucket}-{safe_key}@{base}"
        c = Conflict(name, bucket, key, base, current, err, reason, time.time(), len(data), bytes(data))
        self.items[name] = c
        self._bytes += len(data)
        while self.items and (len(self.items) > MAX_CONFLICTS or self._bytes > MAX_CONFLICT_BYTES):
            oldest = next(iter(self.items))
            self.remove(oldest)
        return c

    def remove(self, name: str) -> None:
        c = self.items.pop(name, None)
        if c is not None:
            self._bytes -= c.size

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
