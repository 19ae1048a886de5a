"""The store interface: everything above it sees NATS only through this.

All methods are trio-async, bounded in time, and raise only ``HvfsError``
subclasses (``hvfs.errors``: NotFound, Exists, Conflict, PermissionDenied,
TooLarge, Unavailable, Timeout, ...). Implementations: ``hvfs.store.nats``
(the only module that imports nats-py) and ``hvfs.store.memory`` (an
in-memory double, trusted because it passes the same contract suite).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "RESYNC", "SYNCED", "BucketInfo", "KvChange", "KvEntry", "MsgSeen", "Op", "Queue", "QueueGone",
    "QueueMsg", "Store", "StoreState", "StreamInfo", "StreamMsg", "Watch", "WatchSink",
]


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


#: What a watch hands the layer above, in batches, always on the trio thread:
#: a KV watch gives KvChange items, a stream watch MsgSeen, a queue QueueMsg and
#: QueueGone; KV and stream watches mark a (re)started snapshot with RESYNC and
#: its end with SYNCED.
WatchSink = Callable[[list[Any]], None]


class Watch(Protocol):
    """A running watch (KV bucket or stream): its sink gets changes until stopped."""

    async def stop(self) -> None: ...


class Queue(Protocol):
    """This mount's hold on a durable consumer: deliveries reach its sink."""

    stream: str
    durable: str
    ack_wait: float

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
    """Everything the filesystem asks of NATS. Every call is bounded by ``timeout``."""

    state: StoreState

    @property
    def timeout(self) -> float:
        """The bound on one call, seconds; callers size their own waits from it."""
        ...

    @property
    def max_payload(self) -> int:
        """The largest message the server takes, headers included."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    # -- KV buckets and keys

    async def buckets(self) -> list[BucketInfo]: ...

    async def bucket(self, name: str) -> BucketInfo: ...

    async def create_bucket(self, name: str, history: int = 10) -> BucketInfo: ...

    def forget_bucket(self, name: str) -> None:
        """Drop what is cached about a bucket that is gone."""
        ...

    async def get(self, bucket: str, key: str, revision: int | None = None) -> KvEntry: ...

    async def create(self, bucket: str, key: str, value: bytes) -> int: ...

    async def update(self, bucket: str, key: str, value: bytes, last: int) -> int: ...

    async def delete(self, bucket: str, key: str, last: int | None = None) -> None: ...

    async def watch(self, bucket: str, sink: WatchSink) -> Watch: ...

    # -- streams

    async def streams(self) -> list[StreamInfo]: ...

    async def stream(self, name: str) -> StreamInfo: ...

    async def get_msg(self, stream: str, seq: int, direct: bool = False) -> StreamMsg: ...

    async def publish(self, subject: str, data: bytes, stream: str, msg_id: str) -> int: ...

    async def delete_msg(self, stream: str, seq: int) -> None: ...

    async def stream_watch(self, stream: str, sink: WatchSink) -> Watch: ...

    # -- work queues (durable pull consumers)

    async def queue(self, stream: str, durable: str, sink: WatchSink, *, create: bool = True,
                    filter_subject: str | None = None, ack_wait: float = 30.0,
                    max_held: int = 4) -> Queue: ...

    async def ack(self, q: Queue, seq: int) -> None: ...
