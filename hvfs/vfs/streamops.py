"""The filesystem's logic for streams (mixed into ``Core``).

Messages are immutable files named by sequence; a new file in a subject
directory publishes one message at close, with ``Nats-Msg-Id`` so a retried
close never duplicates it; ``rm`` deletes the message where the stream
allows it. See docs/streams.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import trio

from ..errors import (
    HvfsError,
    Invalid,
    NotFound,
    NotPermitted,
    ReadOnly,
    errno_of,
)
from ..metrics import Metrics
from ..names import encode_name
from ..store import RESYNC, SYNCED, MsgSeen, Store
from .handles import Handle
from .streams import LOG_NAME, StreamView, locate
from .tree import Kind, Node

__all__ = ["StreamOps"]

log = logging.getLogger(__name__)

#: Payloads a .log handle keeps while it is being read.
LOG_CACHE = 256


class StreamOps:
    """Stream handling; expects the attributes Core defines."""

    # provided by Core
    tree: Any
    store: Store
    read_only: bool
    max_payload: int
    conflicts: Any
    metrics: Metrics
    streams_dir: Node | None

    def _init_streams(self) -> None:
        self.streams: dict[str, StreamView] = {}
        self._stream_watches: dict[str, Any] = {}
        self._stream_synced: dict[str, trio.Event] = {}
        self._stream_lock = trio.Lock()
        self._mount_id = uuid.uuid4().hex[:12]
        self._pub_seq = 0

    # -- discovery -------------------------------------------------------------------

    async def refresh_streams(self) -> None:
        if self.streams_dir is None:
            return
        async with self._stream_lock:
            await self._refresh_streams()

    async def _refresh_streams(self) -> None:
        assert self.streams_dir is not None
        infos = {si.name: si for si in await self.store.streams()}
        d = self.streams_dir
        assert d.children is not None
        for name in sorted(infos):
            view = self.streams.get(name)
            if view is None:
                await self._add_stream(infos[name])
            else:
                view.info = infos[name]
                view.trim(infos[name].first_seq)
        for name in [n for n in self.streams if n not in infos]:
            await self._drop_stream(name)

    async def _add_stream(self, info: Any) -> None:
        assert self.streams_dir is not None
        root = self.tree.new(Kind.DIR, info.name.encode(), self.streams_dir)
        root.local = True
        view = StreamView(self.tree, root, info)
        self.streams[info.name] = view
        self.tree.attach(self.streams_dir, root)
        self.tree.notify(self.streams_dir, root.name, root, "mkdir")
        ev = trio.Event()
        self._stream_synced[info.name] = ev
        name = info.name
        self._stream_watches[name] = await self.store.stream_watch(
            name, lambda items: self._on_stream_watch(name, items))
        with trio.move_on_after(max(5.0, self.store.timeout * 5)):
            await ev.wait()

    async def _drop_stream(self, name: str) -> None:
        view = self.streams.pop(name)
        w = self._stream_watches.pop(name, None)
        if w is not None:
            await w.stop()
        for n in list(self.tree.walk(view.root))[1:]:
            n.linked = False
            self.tree.maybe_free(n)
        parent = view.root.parent
        self.tree.detach(view.root)
        if parent is not None:
            self.tree.notify(parent, view.root.name, view.root, "delete")

    async def _discover_stream(self, name: bytes) -> None:
        try:
            info = await self.store.stream(name.decode(errors="replace"))
        except (NotFound, HvfsError):
            return
        if info.name not in self.streams and not info.name.startswith(("KV_", "OBJ_")):
            async with self._stream_lock:
                if info.name not in self.streams:
                    await self._add_stream(info)

    def _on_stream_watch(self, name: str, items: list[Any]) -> None:
        view = self.streams.get(name)
        if view is None:
            return
        for item in items:
            if item == RESYNC:
                view.begin_resync()
            elif item == SYNCED:
                view.end_resync()
                ev = self._stream_synced.get(name)
                if ev is not None:
                    ev.set()
            elif isinstance(item, MsgSeen):
                view.put(item)

    async def _wait_stream(self, view: StreamView) -> None:
        if not view.synced:
            ev = self._stream_synced.get(view.name)
            if ev is not None:
                with trio.move_on_after(self.store.timeout):
                    await ev.wait()

    # -- lookup -----------------------------------------------------------------------

    def stream_lookup(self, parent: Node, name: bytes) -> Node | None:
        """``.log`` of a stream directory (not listed)."""
        if parent.stream is not None and name == LOG_NAME:
            return parent.stream.log_node(parent)
        return None

    # -- open, read -------------------------------------------------------------------

    async def stream_open(self, node: Node, writable: bool, new_handle: Any) -> Handle:

        view: StreamView = node.stream
        if node.kind is Kind.MSG:
            if writable:
                raise NotPermitted("stream messages are immutable")
            msg = await self.store.get_msg(view.name, node.revision, view.info.direct)
            node.size = len(msg.data)
            return new_handle(Handle(0, node, False, msg.data, node.revision))
        if node.kind is Kind.LOG:
            if writable:
                raise NotPermitted(".log is read-only")
            h = new_handle(Handle(0, node, False, b"", 0))
            h.log = _LogState()
            return h
        raise NotPermitted("not a stream file")

    def log_size(self, node: Node) -> int:
        view: StreamView = node.stream
        d = node.parent
        return view.log_size.get(d.ino, 0) if d is not None else 0

    async def log_read(self, h: Handle, off: int, size: int) -> bytes:
        view: StreamView = h.node.stream
        d = h.node.parent
        assert d is not None
        st: _LogState = h.log
        if not st.ends or off + size > st.ends[-1]:
            st.seqs, st.ends = view.log_entries(d)
        out = bytearray()
        i = locate(st.ends, off)
        while i < len(st.seqs) and len(out) < size:
            seq = st.seqs[i]
            data = st.cache.get(seq)
            if data is None:
                try:
                    data = (await self.store.get_msg(view.name, seq, view.info.direct)).data
                except NotFound:
                    data = bytes(st.ends[i] - (st.ends[i - 1] if i else 0))  # deleted since: zeros keep offsets
                if len(st.cache) >= LOG_CACHE:
                    st.cache.pop(next(iter(st.cache)))
                st.cache[seq] = data
            start = st.ends[i] - len(data)
            lo = max(off + len(out) - start, 0)
            out += data[lo:lo + size - len(out)]
            i += 1
        return bytes(out)

    # -- publish --------------------------------------------------------------------

    async def stream_create(self, parent: Node, name: bytes, new_handle: Any) -> Handle:

        view: StreamView = parent.stream
        if self.read_only:
            raise ReadOnly("mounted read-only")
        subject = parent.key
        if not subject:
            raise NotPermitted(f"stream {view.name}: create files in a subject directory")
        if not view.captures(subject):
            raise Invalid(f"subject {subject!r} is not captured by stream {view.name} "
                          f"(subjects: {', '.join(view.info.subjects)})")
        encode_name(name)  # the name must be mappable even though it is not kept
        node = self.tree.new(Kind.PUB, name, parent)
        node.stream, node.key, node.local = view, subject, True
        self.tree.attach(parent, node)
        self._pub_seq += 1
        h = new_handle(Handle(0, node, True, bytearray(), 0, dirty=True))
        h.msg_id = f"hvfs-{self._mount_id}-{self._pub_seq}"
        return h

    def stream_limit(self, node: Node) -> int:
        view: StreamView = node.stream
        limit = self.max_payload
        if view.info.max_msg_size > 0:
            limit = min(limit, view.info.max_msg_size)
        # NATS counts the headers (Nats-Msg-Id, Nats-Expected-Stream) too.
        return limit - len(f"NATS/1.0\r\nNats-Msg-Id: hvfs-{self._mount_id}-\r\nNats-Expected-Stream: "
                           f"{view.name}\r\n\r\n") - 20

    async def stream_flush(self, h: Handle, final: bool) -> None:
        node = h.node
        view: StreamView = node.stream
        data = bytes(h.data)
        try:
            seq = await self.store.publish(node.key, data, view.name, h.msg_id)
        except HvfsError as e:
            if final:
                c = self.conflicts.add(view.name, node.key, 0, None, errno_of(e), e.reason, data)
                e.reason = f"{e.reason}; your bytes are in .hvfs/conflicts/{c.file}"
                h.dirty = False
            raise  # not final: dirty stays, a retry reuses the same Nats-Msg-Id
        h.dirty = h.wrote = False
        self._pub_seq += 1
        h.msg_id = f"hvfs-{self._mount_id}-{self._pub_seq}"  # later writes are another message
        self.metrics.inc("vfs.publishes")
        parent = node.parent
        if node.linked and parent is not None:
            # The new file's name gives way to the message's sequence number.
            self.tree.detach(node)
            self.tree.notify(parent, node.name, node, "delete")
        view.put(MsgSeen(view.name, node.key, seq, len(data), time.time()))

    # -- delete, mkdir ----------------------------------------------------------------

    async def stream_unlink(self, node: Node) -> None:
        view: StreamView = node.stream
        if self.read_only:
            raise ReadOnly("mounted read-only")
        if node.kind is Kind.PUB:
            self.tree.detach(node)
            return
        if node.kind is not Kind.MSG:
            raise NotPermitted("only messages can be removed")
        if view.info.deny_delete:
            raise NotPermitted(f"stream {view.name} does not allow deleting messages")
        await self.store.delete_msg(view.name, node.revision)
        view.remove(node.revision, notify=False)

    def stream_mkdir(self, parent: Node, name: bytes) -> Node:
        view: StreamView = parent.stream
        if self.read_only:
            raise ReadOnly("mounted read-only")
        node = self.tree.new(Kind.DIR, name, parent)
        node.stream, node.local = view, True
        node.key = view.child_subject(parent, name)
        self.tree.attach(parent, node)
        view.log_size[node.ino] = 0
        return node

    async def stream_xattrs(self, node: Node) -> dict[bytes, bytes]:
        view: StreamView = node.stream
        out = {b"user.hvfs.stream": view.name.encode()}
        if node.key:
            out[b"user.hvfs.subject"] = node.key.encode()
        if node.kind is Kind.MSG:
            out[b"user.hvfs.seq"] = str(node.revision).encode()
            out[b"user.hvfs.time"] = repr(node.mtime).encode()
            msg = await self.store.get_msg(view.name, node.revision, view.info.direct)
            for k, v in msg.headers.items():
                out[b"user.hvfs.header." + k.encode()] = v.encode()
        return out


class _LogState:
    __slots__ = ("seqs", "ends", "cache")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.ends: list[int] = []
        self.cache: dict[int, bytes] = {}
