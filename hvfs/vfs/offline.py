"""Offline mode (``hvfs mount --offline``): files keep working while NATS is away.

- A write whose publish finds NATS unreachable (not connected, or no answer) is
  kept as a *pending write*: its bytes stay in the spool, fsync'd, and close()
  returns 0, meaning "spooled durably", not "in NATS". ``.hvfs/pending/`` and
  the file's ``user.hvfs.pending`` show it; reads on this mount see it.
- When NATS answers again, pending writes are applied in the order they were
  made, each as a compare-and-swap on the revision it was based on, with the
  message id it was first sent with (a write that timed out and landed after
  all is recognised, not applied twice). A write that lost the race goes to
  ``.hvfs/conflicts/`` with both sides (ours, and theirs as ``NAME.theirs``);
  the newer value in NATS stays.
- Reads of keys this mount read recently are served from memory while NATS is
  away (``CACHE_BYTES`` at most, least recently read dropped first; no disk
  mirror), marked ``user.hvfs.stale``; other keys give EIO as without the mode.

Pending writes survive a restart of the mount: they were acknowledged, so the
next mount (offline or not) applies them (docs/offline.md).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import Conflict, Exists, HvfsError, NotFound, Timeout, Unavailable, errno_of
from ..store import KvEntry, Store
from .control import Conflicts
from .periodic import Periodic
from .resolve import MSG_ID
from .spool import Spool, SpoolEntry

__all__ = ["CACHE_BYTES", "Offline", "PendingWrite", "unreachable"]

log = logging.getLogger(__name__)

#: the most bytes of recently read values kept for reads while NATS is away
CACHE_BYTES = 64 << 20


def unreachable(e: HvfsError) -> bool:
    """NATS is away (not connected, or no answer): what offline mode spools through."""
    return isinstance(e, Timeout | Unavailable) and "no JetStream responder" not in e.reason


@dataclass(slots=True)
class PendingWrite:
    """A write close() acknowledged as spooled, not yet in NATS."""

    name: str  # its file in .hvfs/pending/
    bucket: str
    key: str
    path: str
    base: int  # the revision it replaces (compare-and-swap)
    data: bytes
    msg_id: str  # the Nats-Msg-Id it is sent with
    time: float
    spool_id: str = ""  # its files in the spool ("": none)
    ttl: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: message ids of earlier versions of this write that may have landed (sent, no answer)
    sent: list[str] = field(default_factory=list)


class Offline(Periodic):
    """The pending writes and the read cache of one mount."""

    interval = 0.5

    def __init__(self, store: Store, spool: Spool, conflicts: Conflicts, enabled: bool,
                 keep_values: bool = False) -> None:
        super().__init__()
        self.store = store
        self.spool = spool
        self.conflicts = conflicts
        self.enabled = enabled
        #: values read are kept: for reads while NATS is away, and for ``--cache watch``
        self.keeps = enabled or keep_values
        self.pending: OrderedDict[tuple[str, str], PendingWrite] = OrderedDict()
        self._cache: OrderedDict[tuple[str, str], KvEntry] = OrderedDict()
        self._cache_bytes = 0
        self._seq = 0
        self.applied = 0
        self.lost = 0
        #: told (bucket, key) when a pending write of it is settled (landed or lost)
        self.on_settled: list[Callable[[str, str], None]] = []

    # -- the read cache ------------------------------------------------------------

    def remember(self, entry: KvEntry) -> None:
        """A value just read from NATS: kept (bounded) for reads while NATS is away, and
        for opens served from the watch (``--cache watch``)."""
        if not self.keeps:
            return
        k = (entry.bucket, entry.key)
        old = self._cache.pop(k, None)
        if old is not None:
            self._cache_bytes -= len(old.value)
        if len(entry.value) > CACHE_BYTES // 4:
            return
        self._cache[k] = entry
        self._cache_bytes += len(entry.value)
        while self._cache_bytes > CACHE_BYTES and self._cache:
            _, gone = self._cache.popitem(last=False)
            self._cache_bytes -= len(gone.value)

    def recall(self, bucket: str, key: str) -> KvEntry | None:
        """What this mount last read of the key (None: not kept)."""
        e = self._cache.get((bucket, key))
        if e is not None:
            self._cache.move_to_end((bucket, key))
        return e

    def forget(self, bucket: str, key: str) -> None:
        e = self._cache.pop((bucket, key), None)
        if e is not None:
            self._cache_bytes -= len(e.value)

    # -- pending writes --------------------------------------------------------------

    def of(self, bucket: str, key: str) -> PendingWrite | None:
        return self.pending.get((bucket, key))

    def keep(self, bucket: str, key: str, path: str, base: int, data: bytes, msg_id: str,
             spool_id: str, ttl: float | None, headers: dict[str, str], sent: bool) -> PendingWrite:
        """Make (or replace: the newest bytes of a key win, based on the first one's
        revision) the key's pending write. ``sent``: it went out and may have landed."""
        k = (bucket, key)
        old = self.pending.get(k)
        if old is not None:
            base = old.base
            earlier = old.sent + ([old.msg_id] if old.msg_id not in old.sent else [])
            if old.spool_id and old.spool_id != spool_id:
                self.spool.drop(old.spool_id)
            name = old.name
        else:
            earlier = []
            self._seq += 1
            name = f"{self._seq:06d}-{bucket}-{key.replace('/', '=2F')}@{base}"
        pw = PendingWrite(name, bucket, key, path, base, data, msg_id, time.time(), spool_id, ttl,
                          dict(headers), earlier + ([msg_id] if sent else []))
        self.pending[k] = pw
        if spool_id:
            self.spool.mark_pending(spool_id, pw.name, base, pw.sent)
        self.wake()
        return pw

    def restore(self, entry: SpoolEntry, data: bytes) -> PendingWrite:
        """A pending write an earlier mount acknowledged and did not apply."""
        self._seq += 1
        name = f"{self._seq:06d}-{entry.where}-{entry.key.replace('/', '=2F')}@{entry.base}"
        pw = PendingWrite(name, entry.where, entry.key, entry.path, entry.base, data, entry.msg_id,
                          entry.time, entry.id, None, {}, list(entry.sent or []) + [entry.msg_id])
        self.pending[(entry.where, entry.key)] = pw
        self.spool.mark_pending(entry.id, name, entry.base, pw.sent)
        self.wake()
        return pw

    def index(self) -> bytes:
        import json

        return "".join(json.dumps({"file": p.name, "bucket": p.bucket, "key": p.key, "path": p.path,
                                   "base_revision": p.base, "size": len(p.data), "time": p.time}) + "\n"
                       for p in self.pending.values()).encode()

    # -- applying them ------------------------------------------------------------------

    async def step(self) -> None:
        if self.pending and self.store.state.connected:
            await self.apply()

    async def apply(self) -> None:
        """Apply pending writes in order until one finds NATS away again."""
        while self.pending:
            k, pw = next(iter(self.pending.items()))
            try:
                rev = await self._apply_one(pw)
            except HvfsError as e:
                if unreachable(e):
                    return  # still away: the rest wait, in order
                self._lost(pw, e, None)
                rev = None
            if self.pending.get(k) is pw:
                del self.pending[k]
                if pw.spool_id:
                    self.spool.drop(pw.spool_id)
            elif self.pending.get(k) is not None:
                # Written again while this one was being applied: the newer bytes go on the new revision.
                newer = self.pending[k]
                if rev is not None:
                    newer.base = rev
            if rev is not None:
                self.applied += 1
                log.info("offline write of %s applied as revision %d", pw.path, rev)
            if k not in self.pending:
                for cb in self.on_settled:
                    cb(pw.bucket, pw.key)

    async def _apply_one(self, pw: PendingWrite) -> int | None:
        headers = {**pw.headers, MSG_ID: pw.msg_id}
        try:
            if pw.base == 0:
                return await self.store.create(pw.bucket, pw.key, pw.data, ttl=pw.ttl, headers=headers)
            return await self.store.update(pw.bucket, pw.key, pw.data, pw.base, ttl=pw.ttl, headers=headers)
        except (Conflict, Exists, NotFound) as e:
            # Did an earlier send of this write land (it timed out)? Then ours is the newest there.
            ours = set(pw.sent) | {pw.msg_id}
            msg = await self.store.kv_next(pw.bucket, pw.key, pw.base) if pw.base else None
            current: KvEntry | None = None
            try:
                current = await self.store.get(pw.bucket, pw.key)
            except NotFound:
                current = None
            landed = (msg.seq, msg.headers.get(MSG_ID), msg.data) if msg is not None else None
            if landed is None and current is not None and pw.base == 0:
                landed = (current.revision, current.headers.get(MSG_ID), current.value)  # a create of ours
            if landed is not None and landed[1] in ours:
                if landed[1] == pw.msg_id and landed[2] == pw.data:
                    return landed[0]
                # An earlier version of ours landed: the newest bytes go on top of it.
                pw.base = landed[0]
                return await self._apply_one(pw)
            self._lost(pw, e, current)
            return None

    def _lost(self, pw: PendingWrite, e: HvfsError, theirs: KvEntry | None) -> None:
        """The write lost the race (or was refused): both sides go to .hvfs/conflicts/."""
        self.lost += 1
        reason = (f"{pw.path}: written while NATS was away (based on revision {pw.base}); "
                  f"when applied: {e.reason}")
        if theirs is not None:
            reason += f"; the value in NATS (revision {theirs.revision}) is in the .theirs file beside it"
        c = self.conflicts.add(pw.bucket, pw.key, pw.base, theirs.revision if theirs else None,
                               errno_of(e), reason, pw.data, when=pw.time,
                               theirs=theirs.value if theirs is not None else None)
        log.warning("offline write of %s lost: %s (kept in .hvfs/conflicts/%s)", pw.path, e.reason, c.file)
