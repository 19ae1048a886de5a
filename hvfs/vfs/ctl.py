"""``.hvfs/``: the mount's own state as read-only files (status, errors, events,
conflicts). ``rm`` of a conflict file drops it; nothing else here changes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from ..errors import NotPermitted
from .handles import Handle
from .provider import Provider, Services
from .tree import Kind, Node, display

__all__ = ["ControlProvider"]


class ControlProvider(Provider):
    def __init__(self, sv: Services, render_status: Callable[[], bytes]) -> None:
        super().__init__(sv)
        tree = sv.tree
        self.dir = tree.mkdirs(".hvfs")
        self.dir.provider = self
        self.conflicts_dir = tree.mkdirs(".hvfs/conflicts")
        self.rendered_file(self.dir, b"status", render_status)
        self.rendered_file(self.dir, b"errors", sv.errors.render)
        self.events_node = self.rendered_file(self.dir, b"events", sv.events.render)
        self.rendered_file(self.conflicts_dir, b"index", sv.conflicts.index)

    def _sync_conflict_files(self) -> None:
        d = self.conflicts_dir
        assert d.children is not None
        conflicts = self.sv.conflicts
        for name, c in conflicts.items.items():
            bname = name.encode()
            if bname not in d.children:
                n = self.rendered_file(d, bname, functools.partial(bytes, c.data))
                n.size = len(c.data)
        for bname in [k for k, n in d.children.items() if n.kind is Kind.CTRL and k != b"index"]:
            if bname.decode() not in conflicts.items:
                self.sv.tree.detach(d.children[bname])

    async def lookup(self, parent: Node, name: bytes, echo: bool) -> Node | None:
        if parent is self.conflicts_dir:
            self._sync_conflict_files()
        assert parent.children is not None
        return parent.children.get(name)

    async def listing(self, d: Node) -> None:
        if d is self.conflicts_dir:
            self._sync_conflict_files()

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
            self.sv.conflicts.remove(name.decode())
            self.sv.tree.detach(node)
            return
        raise NotPermitted(f"{display(parent)}: .hvfs files are read-only")
