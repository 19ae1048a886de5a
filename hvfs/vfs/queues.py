"""Work queues: a directory bound to a durable pull consumer (docs/queues.md).

Its files are the deliveries this mount holds and has not acked, named by
stream sequence. Reading does not ack; ``rm`` acks; a delivery left alone is
dropped from the directory shortly before the consumer's ack wait ends, and
the server redelivers it (possibly to another mount).
"""

from __future__ import annotations

import time
from typing import Any

from ..config import QueueBinding
from ..errors import NotFound, NotPermitted, ReadOnly
from ..store import Queue, QueueGone, QueueMsg, Store
from .tree import Kind, Node, Tree

__all__ = ["QueueView"]


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
