"""The notifier's echo: requests the mount makes through its own mountpoint.

The kernel emits inotify events only for operations that pass through the
VFS, so the notifier thread (``hvfs.fuse.notifier``) repeats every remote
change through the mountpoint. Those requests come back to the handlers,
where they must find the index as the notice says and change nothing in
NATS. This module is the one place that knows them: ``Echo.owns(pid)`` tells
a request of the notifier thread, and the answers below are what it gets.
"""

from __future__ import annotations

from ..errors import NotFound
from .tree import Kind, Node

__all__ = ["Echo", "SelfOps"]


class SelfOps:
    """What the notifier's own requests must see.

    ``current`` is the one notice the notifier is repeating through the
    mountpoint right now: its create/mkdir must find the name absent, its
    delete present. ``gone`` keeps deleted nodes reachable for the path walks
    of pending deletes (a file inside a directory that is already pruned).
    Written by the notifier and the trio thread, read by handlers on the trio
    thread: plain attribute and dict operations, atomic under the GIL.
    """

    def __init__(self) -> None:
        self.current: tuple[int, bytes, Node, str] | None = None
        #: (parent ino, name) -> (node, seq) for notices of deletes not yet repeated
        self.gone: dict[tuple[int, bytes], tuple[Node, int]] = {}

    def lookup(self, parent_ino: int, name: bytes) -> tuple[str, Node] | None:
        cur = self.current
        if cur is not None and cur[0] == parent_ino and cur[1] == name:
            if cur[3] in ("create", "mkdir"):
                return ("hide", cur[2])
            if cur[3] == "delete":
                return ("show", cur[2])
            return None
        g = self.gone.get((parent_ino, name))
        return ("show", g[0]) if g is not None else None

    def announced(self, parent_ino: int, name: bytes, is_dir: bool) -> Node | None:
        """The node of the create (a file of any kind: key, message, object) or mkdir
        being repeated as ``name`` in ``parent_ino``."""
        cur = self.current
        if (cur is not None and cur[0] == parent_ino and cur[1] == name
                and (cur[2].kind is Kind.DIR) is is_dir
                and cur[2].linked and cur[3] in ("create", "mkdir") and cur[2].name == name
                and cur[2].parent is not None and cur[2].parent.ino == parent_ino):
            return cur[2]
        return None


class Echo:
    """Who the notifier is (its thread ids) and what its requests must see."""

    def __init__(self) -> None:
        #: thread ids of the notifier: FUSE reports the calling thread as ctx.pid
        self.pids: set[int] = set()
        self.ops = SelfOps()

    def owns(self, pid: int) -> bool:
        return pid in self.pids

    def lookup(self, parent_ino: int, name: bytes, nodes: dict[int, Node]) -> Node | None:
        """The notice being repeated decides; None: answer as for anyone."""
        seen = self.ops.lookup(parent_ino, name)
        if seen is None:
            return None
        if seen[0] == "hide":
            raise NotFound("notifier: entry not announced yet")
        node = seen[1]
        nodes.setdefault(node.ino, node)  # the kernel holds it until forget
        return node

    def announced(self, parent_ino: int, name: bytes, is_dir: bool) -> Node:
        """The node a create/mkdir of the notifier announces; NotFound if it is gone already."""
        node = self.ops.announced(parent_ino, name, is_dir)
        if node is None:
            raise NotFound("notifier: entry is gone")
        return node
