"""The store: the interface the filesystem sees NATS through, and its implementations.

``hvfs.store.nats`` is the only module that imports nats-py; import it (or
``hvfs.store.memory``) by name. This package itself imports neither.
"""

from .base import (
    RESYNC,
    SYNCED,
    BucketInfo,
    KvChange,
    KvDelta,
    KvEntry,
    MsgSeen,
    Op,
    Queue,
    QueueGone,
    QueueMsg,
    Store,
    StoreState,
    StreamDelta,
    StreamInfo,
    StreamMsg,
    Watch,
    WatchSink,
)

__all__ = [
    "RESYNC", "SYNCED", "BucketInfo", "KvChange", "KvDelta", "KvEntry", "MsgSeen", "Op", "Queue", "QueueGone",
    "QueueMsg", "Store", "StoreState", "StreamDelta", "StreamInfo", "StreamMsg", "Watch", "WatchSink",
]
