"""Streams as append-only directories: the index of one stream's messages.

A message on subject ``comments.is-42`` with sequence 17 is the file
``comments/is-42/17`` below the stream's directory. One ordered,
headers-only consumer per stream feeds this index (subject, sequence, size,
time); payloads are fetched when a file is opened. Each directory also has a
``.log`` (not listed): the payloads of every message below it, in stream
order, concatenated, so ``tail -f .log`` follows new messages.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING

from ..names import decode_token, encode_name
from ..store import MsgSeen, StreamInfo
from ..store.rules import subject_matches
from .tree import Kind, Node, Tree

if TYPE_CHECKING:
    from .policy import WritePolicy

__all__ = ["LOG_NAME", "StreamView"]

LOG_NAME = b".log"


class StreamView:
    def __init__(self, tree: Tree, root: Node, info: StreamInfo, prefix: str, policy: WritePolicy) -> None:
        self.tree = tree
        self.root = root
        self.info = info
        self.name = info.name
        #: only subjects below this one are shown, without it (a binding's ``prefix``)
        self.prefix = prefix
        self.policy = policy  # what a new message goes through (a binding's schema, the writer)
        root.key = prefix
        root.stream = self  # type: ignore[attr-defined]
        self.msgs: dict[int, Node] = {}
        self.log_size: dict[int, int] = {root.ino: 0}  # dir ino -> bytes of .log
        self.log_nodes: dict[int, Node] = {}  # dir ino -> its .log inode
        self.synced = False
        self._resync_seen: set[int] | None = None

    # -- subjects and names -------------------------------------------------------

    def child_subject(self, parent: Node, name: bytes) -> str:
        tok = encode_name(name)
        return f"{parent.key}.{tok}" if parent.key else tok

    def captures(self, subject: str) -> bool:
        return any(subject_matches(p, subject) for p in self.info.subjects)

    # -- applying what the watch sees (trio thread) -----------------------------------

    def begin_resync(self) -> None:
        self._resync_seen = set()

    def end_resync(self) -> None:
        seen, self._resync_seen = self._resync_seen, None
        if seen is not None:
            for seq in [s for s in self.msgs if s not in seen]:
                self.remove(seq)
        self.synced = True

    def put(self, m: MsgSeen, notify: bool = True) -> Node | None:
        if self._resync_seen is not None:
            self._resync_seen.add(m.seq)
        notify = notify and self.synced  # the first snapshot is not news to the kernel
        if m.seq in self.msgs:
            return self.msgs[m.seq]
        subject = m.subject
        if self.prefix:
            if not subject.startswith(self.prefix + "."):
                return None  # a subject of the stream this binding does not show
            subject = subject[len(self.prefix) + 1:]
        tokens = subject.split(".")
        d = self.root
        chain = [d]
        for tok in tokens:
            name, _ = decode_token(tok)
            assert d.children is not None
            child = d.children.get(name)
            if child is None:
                child = self.tree.new(Kind.DIR, name, d)
                child.key = f"{d.key}.{tok}" if d.key else tok
                child.stream = self  # type: ignore[attr-defined]
                self.tree.attach(d, child)
                self.log_size[child.ino] = 0
                if notify:
                    self.tree.notify(d, name, child, "mkdir")
            elif child.kind is not Kind.DIR:
                return None
            d = child
            chain.append(d)
        node = self.tree.new(Kind.MSG, str(m.seq).encode(), d)
        node.key, node.revision, node.size = m.subject, m.seq, m.size
        node.mtime = node.ctime = m.time
        node.stream = self  # type: ignore[attr-defined]
        self.tree.attach(d, node)
        self.msgs[m.seq] = node
        for a in chain:
            self.log_size[a.ino] = self.log_size.get(a.ino, 0) + m.size
        if notify:
            self.tree.notify(d, node.name, node, "create")
        return node

    def remove(self, seq: int, notify: bool = True) -> Node | None:
        node = self.msgs.pop(seq, None)
        if node is None:
            return None
        parent = node.parent
        a = parent
        while a is not None and a.ino in self.log_size:
            self.log_size[a.ino] -= node.size
            a = a.parent if a is not self.root else None
        self.tree.detach(node)
        if notify and parent is not None:
            self.tree.notify(parent, node.name, node, "delete")
        d = parent
        while d is not None and d is not self.root and not d.local and d.children == {}:
            up = d.parent
            self.tree.detach(d)
            self.log_size.pop(d.ino, None)
            if notify and up is not None:
                self.tree.notify(up, d.name, d, "delete")
            d = up
        return node

    def trim(self, first_seq: int) -> None:
        """Messages below the stream's first sequence are gone (limits, purge)."""
        for seq in [s for s in self.msgs if s < first_seq]:
            self.remove(seq)

    # -- .log -------------------------------------------------------------------------

    def log_node(self, d: Node) -> Node:
        node = self.log_nodes.get(d.ino)
        if node is not None and self.tree.get(node.ino) is not node:
            node = None  # the kernel forgot it and the table let it go: a new one
        if node is None:
            node = self.tree.new(Kind.LOG, LOG_NAME, d)
            node.linked = False  # not listed
            node.stream = self  # type: ignore[attr-defined]
            node.key = d.key
            node.mtime = time.time()
            self.log_nodes[d.ino] = node
        return node

    def log_entries(self, d: Node) -> tuple[list[int], list[int]]:
        """(sequences, cumulative end offsets) of the messages below ``d``, in stream order."""
        seqs = sorted(n.revision for n in self.tree.walk(d) if n.kind is Kind.MSG)
        ends: list[int] = []
        total = 0
        for s in seqs:
            total += self.msgs[s].size
            ends.append(total)
        return seqs, ends


def locate(ends: list[int], off: int) -> int:
    """Index of the message that holds byte ``off`` of a .log."""
    return bisect.bisect_right(ends, off)
