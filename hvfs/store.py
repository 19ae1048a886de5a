"""The store interface: everything above it sees NATS only through this.

All methods are trio-async, bounded in time, and raise only ``HvfsError``
subclasses. The one implementation is ``hvfs.natsstore.NatsStore``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["RESYNC", "SYNCED", "MsgSeen", "QueueGone", "QueueMsg", "StreamInfo", "StreamMsg", "BucketInfo", "KvChange", "KvEntry", "Op", "Store", "StoreState", "Watch"]


#: Watch sink markers: a watch (re)starts its snapshot / the snapshot is complete.
RESYNC = "resync"
SYNCED = "synced"


class Op(enum.Enum):
    PUT = "PUT"
    DEL = "DEL"
    PURGE = "PURGE"


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    max_value_size: int  # -1: no limit beyond the connection's max payload
    history: int


@dataclass(frozen=True, slots=True)
class StreamInfo:
    name: str
    subjects: tuple[str, ...]
    max_msg_size: int  # -1: no limit beyond the connection's max payload
    deny_delete: bool
    first_seq: int
    last_seq: int
    direct: bool


@dataclass(frozen=True, slots=True)
class StreamMsg:
    """One stream message with its payload and headers."""

    stream: str
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]
    time: float


@dataclass(frozen=True, slots=True)
class MsgSeen:
    """What a stream watch reports: one message, without its payload."""

    stream: str
    subject: str
    seq: int
    size: int
    time: float


@dataclass(frozen=True, slots=True)
class QueueMsg:
    """A message a durable consumer delivered to this mount, not yet acked."""

    seq: int
    subject: str
    data: bytes
    time: float
    deliveries: int
    expires: float  # monotonic time this mount lets go of it (before the ack wait ends)


@dataclass(frozen=True, slots=True)
class QueueGone:
    """This mount let go of a delivery (ack wait nearly over): it will be redelivered."""

    seq: int


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One revision of one key, with its value."""

    bucket: str
    key: str
    value: bytes
    revision: int
    time: float  # seconds since the epoch, from the stream message


@dataclass(frozen=True, slots=True)
class KvChange:
    """What a watch reports: one revision of one key, without its value."""

    bucket: str
    key: str
    op: Op
    revision: int
    size: int
    time: float


#: A watch sink gets a KvChange, or None once the initial snapshot is complete
#: (again after every re-sync), always on the trio thread.
WatchSink = Callable[[list["KvChange | None"]], None]


class Watch(Protocol):
    async def stop(self) -> None: ...


@dataclass(slots=True)
class StoreState:
    """Counters and connection state, shown in .hvfs/status."""

    server: str = ""
    connected: bool = False
    reconnects: int = 0
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    last_error: str = ""


class Store(Protocol):
    state: StoreState

    async def buckets(self) -> list[BucketInfo]: ...

    async def bucket(self, name: str) -> BucketInfo: ...

    async def get(self, bucket: str, key: str, revision: int | None = None) -> KvEntry: ...

    async def create(self, bucket: str, key: str, value: bytes) -> int: ...

    async def update(self, bucket: str, key: str, value: bytes, last: int) -> int: ...

    async def delete(self, bucket: str, key: str, last: int | None = None) -> None: ...

    async def watch(self, bucket: str, sink: WatchSink) -> Watch: ...
