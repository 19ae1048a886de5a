"""An open file: what ``open()`` fixed and what the handle has written since."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from ..errors import HvfsError
from .tree import Node

__all__ = ["Handle"]


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
    log: Any = None  # .log reading state
    msg_id: str = ""  # Nats-Msg-Id of a new stream message
    append: bool = False  # O_APPEND: every write goes to the end of *this* content
    created: bool = False  # this handle's open created the key (touch adds no heartbeat)
    cached: bool = False  # reads go through the kernel's page cache (read-only KV handles)
    #: a page-cache handle whose size the kernel does not know yet: the FUSE
    #: layer makes it ask again (reads are clipped at the kernel's size)
    stale_size: bool = False
    tgid: int = 0  # the opener's process id, resolved when first needed
    #: one publish at a time: a second flush (a dup'd fd closed meanwhile) must see the new base
    lock: trio.Lock = field(default_factory=trio.Lock)
    errors: list[str] = field(default_factory=list)
