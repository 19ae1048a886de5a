"""Streams: append-only directories of immutable messages (``StreamProvider``).

Messages are immutable files named by sequence; a new file in a subject
directory publishes one message at close, with ``Nats-Msg-Id`` so a retried
close never duplicates it; ``rm`` deletes the message where the stream
allows it. See docs/streams.md.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import trio

from ..errors import (
    Busy,
    Exists,
    HvfsError,
    Invalid,
    IsADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    Timeout,
    TooLarge,
    Unavailable,
    errno_of,
)
from ..names import encode_name
from ..store import RESYNC, SYNCED, MsgSeen, StreamInfo, Watch
from .handles import FollowHandle, Handle, PublishHandle
from .policy import WRITER_HEADER, WritePolicy, WriterLink
from .provider import Provider, Services
from .resolve import UNKNOWN
from .streams import LOG_NAME, StreamView, locate
from .tree import Kind, Node, display

__all__ = ["StreamProvider", "StreamsProvider"]

log = logging.getLogger(__name__)

#: Payloads a .log handle keeps while it is being read.
LOG_CACHE = 256


class StreamProvider(Provider):
    """Every stream's directory and what is below it (docs/streams.md)."""

    def __init__(self, sv: Services) -> None:
        super().__init__(sv)
        self.streams: dict[str, StreamView] = {}  # the raw view's, under streams/
        self.bound: list[StreamView] = []  # configured paths bound to a stream's subjects
        self._stream_watches: dict[int, Watch] = {}  # id(view) -> its watch
        self._stream_synced: dict[int, trio.Event] = {}  # id(view) -> set when its snapshot is in
        self._raw = WritePolicy([WriterLink(sv.writer)])
        self._stream_lock = trio.Lock()
        self._mount_id = uuid.uuid4().hex[:12]
        self._pub_seq = 0
        self.streams_dir: Node | None = None

    async def close(self) -> None:
        for w in self._stream_watches.values():
            try:
                await w.stop()
            except HvfsError:
                pass
        self._stream_watches.clear()

    def message_count(self) -> int:
        return sum(len(s.msgs) for s in [*self.streams.values(), *self.bound])

    async def bind(self, root: Node, info: StreamInfo, prefix: str, policy: WritePolicy) -> StreamView:
        """Show the messages of ``info``'s stream on subjects below ``prefix`` at ``root``."""
        root.provider = self
        view = StreamView(self.sv.tree, root, info, prefix, policy)
        self.bound.append(view)
        await self._watch_view(view)
        return view

    async def _watch_view(self, view: StreamView) -> None:
        ev = trio.Event()
        self._stream_synced[id(view)] = ev
        self._stream_watches[id(view)] = await self.sv.store.stream_watch(
            view.name, lambda items: self._on_stream_watch(view, items))
        with trio.move_on_after(max(5.0, self.sv.store.timeout * 5)):
            await ev.wait()

    # -- discovery -------------------------------------------------------------------

    async def refresh_streams(self) -> None:
        for view in self.bound:
            # Messages leave by age or limits without the watch saying so.
            view.info = await self.sv.store.stream(view.name)
            view.trim(view.info.first_seq)
        if self.streams_dir is None:
            return
        async with self._stream_lock:
            await self._refresh_streams()

    async def _refresh_streams(self) -> None:
        assert self.streams_dir is not None
        infos = {si.name: si for si in await self.sv.store.streams()}
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

    async def _add_stream(self, info: StreamInfo) -> None:
        assert self.streams_dir is not None
        root = self.sv.tree.new(Kind.DIR, info.name.encode(), self.streams_dir)
        root.local = True
        root.provider = self
        view = StreamView(self.sv.tree, root, info, "", self._raw)
        self.streams[info.name] = view
        self.sv.tree.attach(self.streams_dir, root)
        self.sv.tree.notify(self.streams_dir, root.name, root, "mkdir")
        await self._watch_view(view)

    async def _drop_stream(self, name: str) -> None:
        view = self.streams.pop(name)
        self._stream_synced.pop(id(view), None)
        w = self._stream_watches.pop(id(view), None)
        if w is not None:
            await w.stop()
        for n in list(self.sv.tree.walk(view.root))[1:]:
            n.linked = False
            self.sv.tree.maybe_free(n)
        parent = view.root.parent
        self.sv.tree.detach(view.root)
        if parent is not None:
            self.sv.tree.notify(parent, view.root.name, view.root, "delete")

    async def _discover_stream(self, name: bytes) -> None:
        try:
            info = await self.sv.store.stream(name.decode(errors="replace"))
        except (NotFound, HvfsError):
            return
        if info.name not in self.streams and not info.name.startswith(("KV_", "OBJ_")):
            async with self._stream_lock:
                if info.name not in self.streams:
                    await self._add_stream(info)

    def _on_stream_watch(self, view: StreamView, items: list[Any]) -> None:
        if id(view) not in self._stream_watches and view.synced:
            return  # dropped
        for item in items:
            if item == RESYNC:
                view.begin_resync()
            elif item == SYNCED:
                view.end_resync()
                ev = self._stream_synced.get(id(view))
                if ev is not None:
                    ev.set()
            elif isinstance(item, MsgSeen):
                view.put(item)

    async def snapshots_in(self, bound: float) -> None:
        """As KvProvider.snapshots_in, for the streams' snapshots."""
        with trio.move_on_after(bound):
            for vid, ev in list(self._stream_synced.items()):
                if vid in self._stream_watches:
                    await ev.wait()

    async def _wait_stream(self, view: StreamView) -> None:
        if not view.synced:
            ev = self._stream_synced.get(id(view))
            if ev is not None:
                with trio.move_on_after(self.sv.store.timeout):
                    await ev.wait()

    def writable_view(self, view: StreamView) -> None:
        self.writable(view.root, view.policy.read_only)

    def read_only(self, node: Node) -> bool:
        view: StreamView | None = node.stream
        return view is not None and view.policy.read_only

    # -- names ------------------------------------------------------------------------

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        view: StreamView = parent.stream
        if name == LOG_NAME:
            return view.log_node(parent)  # every directory's .log (not listed)
        await self._wait_stream(view)
        assert parent.children is not None
        return parent.children.get(name)

    async def listing(self, d: Node) -> None:
        await self._wait_stream(d.stream)

    # -- open, read -------------------------------------------------------------------

    def size(self, node: Node) -> int:
        if node.kind is Kind.LOG:
            view: StreamView = node.stream
            d = node.parent
            return view.log_size.get(d.ino, 0) if d is not None else 0
        return super().size(node)

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        view: StreamView = node.stream
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        if writable:
            self.writable_view(view)
        if node.kind is Kind.MSG:
            if writable:
                raise NotPermitted("stream messages are immutable")
            msg = await self.sv.store.get_msg(view.name, node.revision, view.info.direct)
            node.size = len(msg.data)
            return Handle(0, node, False, msg.data, node.revision)
        if node.kind is Kind.LOG:
            if writable:
                raise NotPermitted(".log is read-only")
            return FollowHandle(0, node, False, b"", 0)
        if node.kind is Kind.PUB:
            raise Busy("this message is still being written")
        raise NotPermitted("not a stream file")

    async def read(self, h: Handle, off: int, size: int) -> bytes:
        if not isinstance(h, FollowHandle):
            return bytes(h.data[off:off + size])
        view: StreamView = h.node.stream
        d = h.node.parent
        assert d is not None
        st = h.cursor
        if not st.ends or off + size > st.ends[-1]:
            st.seqs, st.ends = view.log_entries(d)
        out = bytearray()
        i = locate(st.ends, off)
        while i < len(st.seqs) and len(out) < size:
            seq = st.seqs[i]
            data = st.cache.get(seq)
            if data is None:
                try:
                    data = (await self.sv.store.get_msg(view.name, seq, view.info.direct)).data
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

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        assert parent.children is not None
        if name in parent.children:
            if flags & os.O_EXCL:
                raise Exists(f"{display(parent.children[name])} exists")
            return await self.open(parent.children[name], flags, pid)
        view: StreamView = parent.stream
        self.writable_view(view)
        subject = parent.key
        if not subject:
            raise NotPermitted(f"stream {view.name}: create files in a subject directory")
        if not view.captures(subject):
            raise Invalid(f"subject {subject!r} is not captured by stream {view.name} "
                          f"(subjects: {', '.join(view.info.subjects)})")
        encode_name(name)  # the name must be mappable even though it is not kept
        node = self.sv.tree.new(Kind.PUB, name, parent)
        node.stream, node.key, node.local = view, subject, True
        self.sv.tree.attach(parent, node)
        self._pub_seq += 1
        return PublishHandle(0, node, True, bytearray(), 0, dirty=True,
                             msg_id=f"hvfs-{self._mount_id}-{self._pub_seq}")

    async def write(self, h: Handle, off: int, buf: bytes) -> int:
        return await self.write_buffer(h, off, buf)

    async def truncate(self, h: Handle, size: int) -> None:
        await self.truncate_buffer(h, size)

    async def check_size(self, h: Handle, size: int, intended: Callable[[], bytes]) -> None:
        view: StreamView = h.node.stream
        limit = self.sv.max_payload
        if view.info.max_msg_size > 0:
            limit = min(limit, view.info.max_msg_size)
        # NATS counts the headers (Nats-Msg-Id, Nats-Expected-Stream) too.
        limit -= len(f"NATS/1.0\r\nNats-Msg-Id: hvfs-{self._mount_id}-\r\nNats-Expected-Stream: "
                     f"{view.name}\r\n\r\n") + 20
        if size > limit:
            err = TooLarge(f"{display(h.node)}: {size} bytes is over the stream's max message size "
                           f"of {limit} bytes")
            self.sv.fail(h, err, intended(), view.name)
            raise err

    async def flush(self, h: Handle, final: bool) -> None:
        """Publish one message, with the handle's Nats-Msg-Id (a retry is deduplicated).

        A new file waits for a write or the last close: a shell closes the
        descriptor it opened before writing, and that must not publish an
        empty message.
        """
        assert isinstance(h, PublishHandle)
        node = h.node
        view: StreamView = node.stream
        data = bytes(h.data)
        try:
            p = await view.policy.on_write(node, data)
            seq = await self.sv.store.publish(node.key, p.value, view.name, h.msg_id, headers=p.headers)
        except HvfsError as e:
            if isinstance(e, Invalid):
                self.sv.metrics.inc("vfs.refused")
            if final or isinstance(e, Invalid):
                # Given up (a refusal will not change by retrying): the bytes are kept,
                # the handle is done, and the draft's name leaves the directory.
                unknown = self.sv.resolver is not None and (
                    isinstance(e, Timeout) or isinstance(e, Unavailable) and e.sent)
                # A sent message may land yet: its entry says so, and the resolver finds out.
                after = max(0, view.info.first_seq - 1)
                c = self.sv.conflicts.add(view.name, node.key, after if unknown else 0, None, errno_of(e),
                                          e.reason, data, outcome=UNKNOWN if unknown else "",
                                          msg_id=h.msg_id if unknown else "", kind="stream")
                if unknown:
                    assert self.sv.resolver is not None
                    self.sv.resolver.add(c)
                e.reason = f"{e.reason}; your bytes are in .hvfs/conflicts/{c.file}"
                h.dirty = h.wrote = False
                h.failed = e
                self.sv.published(h)
                parent = node.parent
                if node.linked and parent is not None:
                    self.sv.tree.detach(node)
                    self.sv.tree.notify(parent, node.name, node, "delete")
            raise  # not final: dirty stays, a retry reuses the same Nats-Msg-Id
        h.dirty = h.wrote = False
        self.sv.published(h)
        self._pub_seq += 1
        h.msg_id = f"hvfs-{self._mount_id}-{self._pub_seq}"  # later writes are another message
        self.sv.metrics.inc("vfs.publishes")
        parent = node.parent
        if node.linked and parent is not None:
            # The new file's name gives way to the message's sequence number.
            self.sv.tree.detach(node)
            self.sv.tree.notify(parent, node.name, node, "delete")
        view.put(MsgSeen(view.name, node.key, seq, len(p.value), time.time()))

    # -- delete, mkdir ----------------------------------------------------------------

    async def unlink(self, parent: Node, name: bytes, node: Node | None) -> None:
        if node is None:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such file")
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        view: StreamView = node.stream
        self.writable_view(view)
        if node.kind is Kind.PUB:
            self.sv.tree.detach(node)
            return
        if node.kind is not Kind.MSG:
            raise NotPermitted("only messages can be removed")
        if view.info.deny_delete:
            raise NotPermitted(f"stream {view.name} does not allow deleting messages")
        await self.sv.store.delete_msg(view.name, node.revision)
        view.remove(node.revision, notify=False)

    async def mkdir(self, parent: Node, name: bytes) -> Node:
        assert parent.children is not None
        if name in parent.children:
            raise Exists(f"{display(parent.children[name])} exists")
        view: StreamView = parent.stream
        self.writable_view(view)
        node = self.sv.tree.new(Kind.DIR, name, parent)
        node.stream, node.local = view, True
        node.key = view.child_subject(parent, name)
        self.sv.tree.attach(parent, node)
        view.log_size[node.ino] = 0
        return node

    async def rmdir(self, parent: Node, name: bytes, node: Node | None) -> None:
        if node is None or node.kind is not Kind.DIR:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such directory")
        if node.children:
            raise NotEmpty(f"{display(node)} is not empty")
        self.sv.tree.detach(node)

    async def rename(self, src_parent: Node, old: bytes, dst_parent: Node, new: bytes, flags: int) -> None:
        raise NotPermitted("stream messages cannot be renamed")

    # -- xattrs ---------------------------------------------------------------------

    def xattr_names(self, node: Node) -> list[bytes]:
        names = [b"user.hvfs.stream"]
        if node.key:
            names.append(b"user.hvfs.subject")
        if node.kind is Kind.MSG:
            names += [b"user.hvfs.seq", b"user.hvfs.time"]
        return names

    async def xattrs(self, node: Node, pid: int) -> dict[bytes, bytes]:
        view: StreamView = node.stream
        out = {b"user.hvfs.stream": view.name.encode()}
        if node.key:
            out[b"user.hvfs.subject"] = node.key.encode()
        if node.kind is Kind.MSG:
            out[b"user.hvfs.seq"] = str(node.revision).encode()
            out[b"user.hvfs.time"] = repr(node.mtime).encode()
            msg = await self.sv.store.get_msg(view.name, node.revision, view.info.direct)
            for k, v in msg.headers.items():
                out[b"user.hvfs.header." + k.encode()] = v.encode()
            if msg.headers.get(WRITER_HEADER):
                out[b"user.hvfs.writer"] = msg.headers[WRITER_HEADER].encode()
        return out


class StreamsProvider(Provider):
    """``streams/``: one directory per stream that is not a KV or object-store bucket's own."""

    def __init__(self, sv: Services, streams: StreamProvider, root: Node) -> None:
        super().__init__(sv)
        self.streams = streams
        root.provider = self
        streams.streams_dir = root

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        assert parent.children is not None
        child = parent.children.get(name)
        if child is None:
            await self.streams._discover_stream(name)
            child = parent.children.get(name)
        return child

    async def listing(self, d: Node) -> None:
        try:
            await self.streams.refresh_streams()
        except HvfsError as e:
            log.warning("stream list: %s", e.reason)

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        raise IsADirectory(f"{display(node)} is a directory")
