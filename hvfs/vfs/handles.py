"""Open files, one class per behaviour.

``Handle`` is a snapshot (the content fixed at open) that may be written
(buffered, published at close as one revision); ``FollowHandle`` follows a
directory's ``.log`` as messages arrive; ``PublishHandle`` is a new stream
message, published once with its own ``Nats-Msg-Id``. What a handle's calls
do is its provider's (hvfs.vfs.provider); the handle is the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ..errors import HvfsError
from .tree import Node

__all__ = ["FollowHandle", "Handle", "LogCursor", "PublishHandle"]


@dataclass(slots=True)
class Handle:
    """An open file: the content fixed at open, and what this handle wrote."""

    fh: int
    node: Node
    writable: bool
    data: bytearray | bytes
    base: int  # the revision this content came from (open, or the last publish); 0: none yet
    dirty: bool = False  # differs from revision ``base`` (a write or truncate happened)
    wrote: bool = False  # write()/ftruncate() happened since the last publish (O_TRUNC alone: not)
    pid: int = 0  # the thread that opened it (FUSE's ctx.pid)
    echo: bool = False  # the notifier's own handle: writes and flushes change nothing
    direct_io: bool = False
    keep_cache: bool = False  # page-cache mode: the kernel's cached pages are this content
    #: the error that ended this handle: once a publish failed or a write was
    #: refused, every later write/fsync/close fails with it (nothing half-applied)
    failed: HvfsError | None = None
    append: bool = False  # O_APPEND: every write goes to the end of *this* content
    created: bool = False  # this handle's open created the key (touch adds no heartbeat)
    cached: bool = False  # reads go through the kernel's page cache (read-only KV handles)
    tgid: int = 0  # the opener's process id, resolved when first needed
    #: the per-message TTL of the revision this handle read (None: none, or not read);
    #: a write keeps it, else it gets its binding's (docs/entities.md)
    ttl: float | None = None
    #: one publish at a time: a second flush (a dup'd fd closed meanwhile) must see the new base
    lock: trio.Lock = field(default_factory=trio.Lock)


class LogCursor:
    """Where a ``.log`` reader is: the messages' sequences and end offsets, a few payloads."""

    __slots__ = ("seqs", "ends", "cache")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.ends: list[int] = []
        self.cache: dict[int, bytes] = {}


@dataclass(slots=True)
class FollowHandle(Handle):
    """``.log``: the payloads of a subject tree, read as they arrive (``tail -f``)."""

    cursor: LogCursor = field(default_factory=LogCursor)


@dataclass(slots=True)
class PublishHandle(Handle):
    """A new file in a subject directory: one message, published at close."""

    msg_id: str = ""  # Nats-Msg-Id: a retried publish of the same bytes is deduplicated
