"""``.hvfs/``: the mount's own state as read-only files (status, errors, events,
conflicts). ``rm`` of a conflict file drops it; nothing else here changes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from ..errors import NotPermitted
from .control import Conflict
from .handles import Handle
from .offline import Offline
from .provider import Provider, Services
from .tree import Kind, Node, display

__all__ = ["ControlProvider"]


def _conflict_bytes(c: Conflict) -> bytes:
    return c.data


def _theirs_bytes(c: Conflict) -> bytes:
    return c.theirs or b""


class ControlProvider(Provider):
    def __init__(self, sv: Services, render_status: Callable[[], bytes], offline: Offline | None = None) -> None:
        super().__init__(sv)
        tree = sv.tree
        self.dir = tree.mkdirs(".hvfs")
        self.dir.provider = self
        self.offline = offline
        self.conflicts_dir = tree.mkdirs(".hvfs/conflicts")
        self.pending_dir = tree.mkdirs(".hvfs/pending")
        self.rendered_file(self.pending_dir, b"index", offline.index if offline is not None else bytes)
        self.rendered_file(self.dir, b"status", render_status)
        self.rendered_file(self.dir, b"errors", sv.errors.render)
        self.events_node = self.rendered_file(self.dir, b"events", sv.events.render)
        self.rendered_file(self.conflicts_dir, b"index", sv.conflicts.index)

    def _sync_conflict_files(self) -> None:
        d = self.conflicts_dir
        assert d.children is not None
        conflicts = self.sv.conflicts
        want: set[bytes] = set()
        for name, c in conflicts.items.items():
            bname = name.encode()
            want.add(bname)
            if bname not in d.children:
                n = self.rendered_file(d, bname, functools.partial(_conflict_bytes, c))
                n.size = c.size
            if c.theirs_size is not None:
                tname = bname + b".theirs"
                want.add(tname)
                if tname not in d.children:
                    n = self.rendered_file(d, tname, functools.partial(_theirs_bytes, c))
                    n.size = c.theirs_size
        for bname in [k for k, n in d.children.items() if n.kind is Kind.CTRL and k != b"index"]:
            if bname not in want:
                self.sv.tree.detach(d.children[bname])

    def _sync_pending_files(self) -> None:
        d = self.pending_dir
        assert d.children is not None
        pending = {p.name.encode(): p for p in self.offline.pending.values()} if self.offline else {}
        for bname, p in pending.items():
            n = d.children.get(bname)
            if n is None or n.data is not p.data:
                if n is not None:
                    self.sv.tree.detach(n)
                n = self.rendered_file(d, bname, functools.partial(bytes, p.data))
                n.data, n.size = p.data, len(p.data)
        for bname in [k for k, n in d.children.items() if n.kind is Kind.CTRL and k != b"index"]:
            if bname not in pending:
                self.sv.tree.detach(d.children[bname])

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        if parent is self.conflicts_dir:
            self._sync_conflict_files()
        elif parent is self.pending_dir:
            self._sync_pending_files()
        assert parent.children is not None
        return parent.children.get(name)

    async def listing(self, d: Node) -> None:
        if d is self.conflicts_dir:
            self._sync_conflict_files()
        elif d is self.pending_dir:
            self._sync_pending_files()

    def size(self, node: Node) -> int:
        if node is self.events_node:
            return self.sv.events.total
        if node.render is not None:
            return len(node.render())
        return node.size

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise NotPermitted(".hvfs files are read-only")
        assert node.render is not None
        data = b"" if node is self.events_node else node.render()
        return Handle(0, node, False, data, 0, direct_io=True)

    async def read(self, h: Handle, off: int, size: int) -> bytes:
        if h.node is self.events_node:
            return self.sv.events.read(off, size)
        return bytes(h.data[off:off + size])

    async def unlink(self, parent: Node, name: bytes, node: Node | None) -> None:
        if parent is self.conflicts_dir and node is not None and node.kind is Kind.CTRL and name != b"index":
            self.sv.conflicts.remove(name.decode().removesuffix(".theirs"))
            self._sync_conflict_files()
            return
        raise NotPermitted(f"{display(parent)}: .hvfs files are read-only")
