"""Work queues: a directory bound to a durable pull consumer (docs/queues.md).

Its files are the deliveries this mount holds and has not acked, named by
stream sequence. Reading does not ack; ``rm`` acks; a delivery left alone is
dropped from the directory shortly before the consumer's ack wait ends, and
the server redelivers it (possibly to another mount).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..config import QueueBinding
from ..errors import IsADirectory, NotFound, NotPermitted, ReadOnly
from ..store import Queue, QueueGone, QueueMsg, Store
from .handles import Handle
from .provider import Provider, Services
from .tree import Kind, Node, Tree, display

__all__ = ["QueueProvider", "QueueView"]


class QueueView:
    def __init__(self, tree: Tree, root: Node, binding: QueueBinding) -> None:
        self.tree = tree
        self.root = root
        self.binding = binding
        root.queue = self
        self.held: dict[int, Node] = {}
        self._meta: dict[int, QueueMsg] = {}
        self.consumer: Queue | None = None  # the store's hold on the consumer
        self.acked = 0
        self.released = 0

    def apply(self, items: list[Any]) -> None:
        for item in items:
            if isinstance(item, QueueMsg):
                if item.seq in self.held:
                    continue
                node = self.tree.new(Kind.QMSG, str(item.seq).encode(), self.root)
                node.queue, node.key, node.revision = self, item.subject, item.seq
                node.data, node.size = item.data, len(item.data)
                node.mtime = node.ctime = item.time
                self._meta[item.seq] = item
                self.tree.attach(self.root, node)
                self.held[item.seq] = node
                self.tree.notify(self.root, node.name, node, "create")
            elif isinstance(item, QueueGone):
                self.released += 1
                self._drop(item.seq, notify=True)

    def _drop(self, seq: int, notify: bool) -> None:
        node = self.held.pop(seq, None)
        self._meta.pop(seq, None)
        if node is not None:
            self.tree.detach(node)
            if notify:
                self.tree.notify(self.root, node.name, node, "delete")

    async def ack(self, store: Store, node: Node, read_only: bool) -> None:
        if read_only:
            raise ReadOnly("mounted read-only")
        if node.kind is not Kind.QMSG:
            raise NotPermitted("only deliveries can be removed from a queue directory")
        if node.revision not in self.held:
            raise NotFound("this delivery is no longer held (its ack wait ended)")
        assert self.consumer is not None, "a queue directory exists once its consumer does"
        self._drop(node.revision, notify=False)
        await store.ack(self.consumer, node.revision)
        self.acked += 1

    def xattrs(self, node: Node) -> dict[bytes, bytes]:
        b = self.binding
        out = {b"user.hvfs.stream": b.stream.encode(), b"user.hvfs.consumer": b.durable.encode()}
        meta = self._meta.get(node.revision) if node.kind is Kind.QMSG else None
        if meta is not None:
            out[b"user.hvfs.seq"] = str(meta.seq).encode()
            out[b"user.hvfs.subject"] = meta.subject.encode()
            out[b"user.hvfs.deliveries"] = str(meta.deliveries).encode()
            out[b"user.hvfs.expires_in"] = f"{max(meta.expires - time.monotonic(), 0):.1f}".encode()
        return out


class QueueProvider(Provider):
    """A work-queue directory: deliveries are read-only files, ``rm`` acks one."""

    def __init__(self, sv: Services) -> None:
        super().__init__(sv)
        self.queues: list[QueueView] = []

    async def bind(self, root: Node, qb: QueueBinding) -> QueueView:
        root.provider = self
        qv = QueueView(self.sv.tree, root, qb)
        self.queues.append(qv)
        qv.consumer = await self.sv.store.queue(
            qb.stream, qb.durable, qv.apply, create=qb.create, filter_subject=qb.filter_subject,
            ack_wait=qb.ack_wait, max_held=qb.max_held)
        return qv

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        if node.kind is Kind.DIR:
            raise IsADirectory(f"{display(node)} is a directory")
        if flags & (os.O_WRONLY | os.O_RDWR):
            self.writable()
            raise NotPermitted("queue deliveries are read-only; rm acks one")
        return Handle(0, node, False, node.data or b"", node.revision)

    async def create(self, parent: Node, name: bytes, flags: int, pid: int) -> Handle:
        raise NotPermitted(f"{display(parent)}: only bucket directories hold files")

    async def unlink(self, parent: Node, name: bytes, node: Node | None) -> None:
        if node is None:
            raise NotFound(f"{display(parent)}/{name.decode(errors='replace')}: no such file")
        await parent.queue.ack(self.sv.store, node, self.sv.read_only)

    def xattr_names(self, node: Node) -> list[bytes]:
        return list(node.queue.xattrs(node)) if node.queue is not None else []

    async def xattrs(self, node: Node, pid: int) -> dict[bytes, bytes]:
        return node.queue.xattrs(node) if node.queue is not None else {}
