"""What became of a write whose outcome NATS did not tell: it timed out, or the
daemon died while it was under way.

Every KV write hvfs sends is a compare-and-swap on the revision its handle saw
(``base``) and carries a ``Nats-Msg-Id``. At most one message can ever follow
``base`` on the key with ``Nats-Expected-Last-Subject-Sequence: <base>``, so the
key's first message after ``base`` settles it: ours (its message id) — the write
landed at that revision; another one that was a CAS on ``base`` — ours can
never land. Nothing after ``base`` yet: ours may still be on its way (a stalled
server holds it in its socket buffer); once NATS has answered for ``GRACE``
seconds with still nothing there, it did not land. When the key's history no
longer holds what followed ``base`` (history 1, or a write without CAS came
first), the outcome stays "unknown" and the docs say so (docs/errors.md).

The answer goes into the conflict entry that holds the bytes (``outcome``,
``landed_revision``); nothing is re-applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import HvfsError, NotFound
from ..store import Store
from ..store.rules import EXPECTED_LAST, MSG_ID
from .control import Conflict, Conflicts
from .periodic import Periodic

__all__ = ["GRACE", "Resolver"]

log = logging.getLogger(__name__)

#: seconds NATS must have answered "nothing after base" before a write counts as not landed
GRACE = 3.0
#: an entry still unknown after this long is left unknown (docs/errors.md)
GIVE_UP = 600.0
UNKNOWN, LANDED, NOT_LANDED = "unknown", "landed", "not landed"


@dataclass(slots=True)
class _Open:
    conflict: Conflict
    since: float  # monotonic time it was added
    first_answer: float | None = None  # monotonic time NATS first answered about it


class Resolver(Periodic):
    """Settles conflict entries whose outcome is "unknown"; runs in the mount's nursery."""

    def __init__(self, store: Store, conflicts: Conflicts) -> None:
        super().__init__()
        self.store = store
        self.conflicts = conflicts
        self._open: list[_Open] = []
        self.resolved = 0
        self._by_id: dict[str, _Open] = {}
        #: told (bucket, key) when a write turns out to have landed: the index catches up
        self.on_landed: list[Callable[[str, str], Awaitable[None]]] = []
        self._landed: list[tuple[str, str]] = []

    def add(self, c: Conflict) -> None:
        """Find out what became of ``c`` (its ``outcome`` is "unknown", ``msg_id`` set)."""
        o = _Open(c, time.monotonic())
        self._open.append(o)
        self._by_id[c.msg_id] = o
        self.wake()

    def seen(self, msg_id: str, revision: int) -> None:
        """A watch delivered a revision written with ``msg_id``: if it is one of ours that
        timed out, it landed (whatever the key's history keeps later)."""
        o = self._by_id.get(msg_id)
        if o is not None and o.conflict.outcome == UNKNOWN:
            self._settle(o.conflict, LANDED, revision)
            self.wake()

    def pending(self) -> int:
        return len(self._open)

    async def step(self) -> None:
        await self.check()

    async def check(self) -> None:
        """One pass over the open entries."""
        now = time.monotonic()
        still: list[_Open] = []
        batch = list(self._open)
        for o in batch:
            c = o.conflict
            if c.file not in self.conflicts.items or c.outcome != UNKNOWN:
                self._by_id.pop(c.msg_id, None)
                continue  # removed by the user meanwhile, or settled by a watch
            try:
                outcome, rev = await self.outcome(c)
            except NotFound:
                outcome, rev = NOT_LANDED, None  # the bucket is gone
            except HvfsError:
                if now - o.since < GIVE_UP:
                    still.append(o)
                continue
            answered = time.monotonic()
            if outcome == UNKNOWN:
                # Nothing after base yet, or history that cannot tell: wait until NATS has said
                # so for GRACE seconds (the watch may show ours landing meanwhile: ``seen``).
                if o.first_answer is None:
                    o.first_answer = answered
                if answered - o.first_answer < GRACE:
                    still.append(o)
                    continue
                if rev is None:
                    outcome = NOT_LANDED
            self._settle(c, outcome, rev)
            self._by_id.pop(c.msg_id, None)
        added = [o for o in self._open if all(o is not b for b in batch)]  # added during the pass
        self._open = still + added
        landed, self._landed = self._landed, []
        for bucket, key in landed:
            for cb in self.on_landed:
                await cb(bucket, key)

    async def outcome(self, c: Conflict) -> tuple[str, int | None]:
        """(LANDED, revision) / (NOT_LANDED, None) / (UNKNOWN, None): nothing after base yet /
        (UNKNOWN, -1): cannot be told any more."""
        if c.kind == "stream":
            # A stream message: the duplicate window keeps it from landing twice; look for it.
            delta = await self.store.stream_since(c.bucket, c.base_revision, c.key)
            seq = next((m.seq for m in delta.msgs if m.headers.get(MSG_ID) == c.msg_id), None)
            return (LANDED, seq) if seq is not None else (UNKNOWN, None)
        msg = await self.store.kv_next(c.bucket, c.key, c.base_revision)
        if msg is None:
            return UNKNOWN, None
        if msg.headers.get(MSG_ID) == c.msg_id:
            return LANDED, msg.seq
        if msg.headers.get(EXPECTED_LAST) == str(c.base_revision):
            return NOT_LANDED, None
        return UNKNOWN, -1

    def _settle(self, c: Conflict, outcome: str, rev: int | None) -> None:
        c.outcome = outcome
        if outcome == LANDED:
            c.landed_revision = rev
            c.reason += f"; it did land after all, as revision {rev}"
            self._landed.append((c.bucket, c.key))
        elif outcome == NOT_LANDED:
            c.reason += "; it did not land"
        else:
            c.reason += "; whether it landed cannot be told (the key's history no longer shows it)"
        self.resolved += 1
        self.conflicts.save(c)
        log.info("conflict %s: %s", c.file, outcome if rev is None or rev < 0 else f"{outcome} at {rev}")
