"""The in-memory index: inodes, directories and listings, fed by watches.

Nothing here talks to NATS. A ``KvView`` places the keys of one bucket (under
an optional key prefix) below one directory; watch batches are applied on
the trio thread, so the index needs no locks. ``readdir`` and ``lookup`` are
answered from here and never list keys from NATS.

Placement rule for a key that is also a prefix of other keys (``a`` beside
``a.b``): the directory ``a`` wins the name and the key ``a`` is shown as
``a/.value`` (see docs/naming.md).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator

from .errors import InvalidName, NotADirectory
from .names import VALUE_NAME, decode_token, encode_name

__all__ = ["Kind", "KvView", "Node", "Tree"]

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    DIR = "dir"
    KV = "kv"  # one key's current value
    REV = "rev"  # FILE@REV: one historical revision, not listed
    CTRL = "ctrl"  # a file under .hvfs/


class Node:
    """One inode. Directories have ``children``; KV files have key/revision."""

    __slots__ = (
        "ino", "kind", "name", "parent", "children", "view", "key", "revision",
        "size", "mtime", "ctime", "nlookup", "local", "linked", "render", "data",
    )

    def __init__(self, ino: int, kind: Kind, name: bytes, parent: Node | None) -> None:
        self.ino = ino
        self.kind = kind
        self.name = name
        self.parent = parent
        self.children: dict[bytes, Node] | None = {} if kind is Kind.DIR else None
        self.view: KvView | None = None
        self.key = ""  # KV/REV: the key; DIR: the key prefix it stands for
        self.revision = 0
        self.size = 0
        now = time.time()
        self.mtime = now
        self.ctime = now
        self.nlookup = 0
        self.local = False  # made through this mount, not (yet) backed by a key
        self.linked = True  # still reachable from its parent
        self.render: Callable[[], bytes] | None = None  # CTRL content
        self.data: bytes | None = None  # REV content, CTRL snapshot

    def __repr__(self) -> str:
        return f"<Node {self.ino} {self.kind.value} {self.name!r} key={self.key!r} rev={self.revision}>"

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    def path(self) -> bytes:
        parts: list[bytes] = []
        n: Node | None = self
        while n is not None and n.parent is not None:
            parts.append(n.name)
            n = n.parent
        return b"/" + b"/".join(reversed(parts))


#: What the kernel must hear about a change: (parent ino, name, child ino, what)
#: with what in {"create", "modify", "delete", "mkdir"}. Consumed by the notifier.
Notice = tuple[int, bytes, int, str]


class Tree:
    """Owns the inode table and the directory nodes every view hangs from."""

    def __init__(self) -> None:
        self._next = 2
        self.nodes: dict[int, Node] = {}
        self.root = Node(1, Kind.DIR, b"", None)
        self.root.nlookup = 1
        self.nodes[1] = self.root
        self.listeners: list[Callable[[Notice], None]] = []

    def new(self, kind: Kind, name: bytes, parent: Node | None) -> Node:
        node = Node(self._next, kind, name, parent)
        self._next += 1
        self.nodes[node.ino] = node
        return node

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def mkdirs(self, path: str) -> Node:
        """Fixed directories (kv/, .hvfs/, binding paths)."""
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            name = part.encode()
            assert node.children is not None
            child = node.children.get(name)
            if child is None:
                child = self.attach(node, self.new(Kind.DIR, name, node))
                child.local = True  # never pruned
            node = child
        return node

    def attach(self, parent: Node, node: Node) -> Node:
        assert parent.children is not None
        node.parent = parent
        node.linked = True
        parent.children[node.name] = node
        parent.mtime = parent.ctime = time.time()
        return node

    def detach(self, node: Node) -> None:
        parent = node.parent
        if parent is not None and parent.children is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
            parent.mtime = parent.ctime = time.time()
        node.linked = False
        self.maybe_free(node)

    def maybe_free(self, node: Node) -> None:
        """Drop an unlinked inode once the kernel has forgotten it."""
        if not node.linked and node.nlookup <= 0 and node.ino != 1:
            self.nodes.pop(node.ino, None)

    def forget(self, ino: int, n: int) -> None:
        node = self.nodes.get(ino)
        if node is None:
            return
        node.nlookup -= n
        self.maybe_free(node)

    def notify(self, notice: Notice) -> None:
        for fn in self.listeners:
            fn(notice)

    def walk(self, node: Node) -> Iterator[Node]:
        yield node
        if node.children:
            for c in list(node.children.values()):
                yield from self.walk(c)


class KvView:
    """The keys of one bucket (under ``prefix``) placed below ``root``."""

    def __init__(self, tree: Tree, root: Node, bucket: str, prefix: str = "") -> None:
        self.tree = tree
        self.root = root
        root.view = self
        root.key = prefix
        self.bucket = bucket
        self.prefix = prefix
        self.keys: dict[str, Node] = {}
        self.synced = False
        self._resync_seen: set[str] | None = None
        self.hidden: dict[str, str] = {}  # key -> why it is not shown

    # -- names -------------------------------------------------------------

    def key_for(self, parent: Node, name: bytes) -> str:
        """The key a new file ``name`` in directory ``parent`` stands for."""
        if parent.kind is not Kind.DIR:
            raise NotADirectory(f"{parent.path()!r} is not a directory")
        if name == VALUE_NAME:
            if not parent.key:
                raise InvalidName(f"{VALUE_NAME!r} names the directory's own key; this directory has none")
            return parent.key
        token = encode_name(name)
        return f"{parent.key}.{token}" if parent.key else token

    def _rel_tokens(self, key: str) -> list[str] | None:
        if not self.prefix:
            return key.split(".")
        if key.startswith(self.prefix + "."):
            return key[len(self.prefix) + 1:].split(".")
        return None

    # -- applying changes (trio thread) ----------------------------------------

    def begin_resync(self) -> None:
        self._resync_seen = set()

    def end_resync(self) -> None:
        seen, self._resync_seen = self._resync_seen, None
        if seen is not None:
            for key in [k for k, n in self.keys.items() if k not in seen and not n.local]:
                self.remove(key, None)
        self.synced = True

    def put(self, key: str, revision: int, size: int, mtime: float, notify: bool = True) -> Node | None:
        """Record revision ``revision`` of ``key``; older revisions are ignored."""
        if self._resync_seen is not None:
            self._resync_seen.add(key)
        node = self.keys.get(key)
        if node is not None:
            if revision <= node.revision:
                return node
            node.revision, node.size, node.mtime, node.ctime = revision, size, mtime, mtime
            node.local = False
            if notify and node.parent is not None:
                self.tree.notify((node.parent.ino, node.name, node.ino, "modify"))
            return node
        tokens = self._rel_tokens(key)
        if tokens is None:
            return None
        parent = self._dir_for(tokens[:-1], notify)
        if parent is None:
            self.hidden[key] = "a parent name collides with a file name"
            return None
        name, _ = decode_token(tokens[-1])
        assert parent.children is not None
        existing = parent.children.get(name)
        node = self.tree.new(Kind.KV, name, parent)
        node.view, node.key = self, key
        node.revision, node.size, node.mtime, node.ctime = revision, size, mtime, mtime
        if existing is not None and existing.kind is Kind.DIR:
            # ``a`` beside ``a.b``: the key shows inside the directory.
            node.name = VALUE_NAME
            if VALUE_NAME in existing.children:  # type: ignore[operator]
                self.hidden[key] = f"name {name!r} is taken"
                self.tree.nodes.pop(node.ino, None)
                return None
            parent = existing
        elif existing is not None:
            self.hidden[key] = f"name {name!r} is taken by key {existing.key!r}"
            log.warning("key %s/%s hidden: name %r is taken by %r", self.bucket, key, name, existing.key)
            self.tree.nodes.pop(node.ino, None)
            return None
        self.tree.attach(parent, node)
        self.keys[key] = node
        if notify:
            self.tree.notify((parent.ino, node.name, node.ino, "create"))
        return node

    def _dir_for(self, tokens: list[str], notify: bool) -> Node | None:
        node = self.root
        for i, tok in enumerate(tokens):
            name, _ = decode_token(tok)
            assert node.children is not None
            child = node.children.get(name)
            if child is None:
                child = self.tree.new(Kind.DIR, name, node)
                child.view = self
                child.key = f"{node.key}.{tok}" if node.key else tok
                self.tree.attach(node, child)
                if notify:
                    self.tree.notify((node.ino, name, child.ino, "mkdir"))
            elif child.kind is Kind.KV:
                # A file must become a directory: it moves inside as .value.
                if child.key != (f"{node.key}.{tok}" if node.key else tok):
                    return None
                self.tree.detach(child)
                child.linked = True  # re-attached below
                newdir = self.tree.new(Kind.DIR, name, node)
                newdir.view = self
                newdir.key = child.key
                self.tree.attach(node, newdir)
                child.name = VALUE_NAME
                self.tree.attach(newdir, child)
                if notify:
                    self.tree.notify((node.ino, name, child.ino, "delete"))
                    self.tree.notify((node.ino, name, newdir.ino, "mkdir"))
                    self.tree.notify((newdir.ino, VALUE_NAME, child.ino, "create"))
                child = newdir
            elif child.kind is not Kind.DIR:
                return None
            node = child
            del i
        return node

    def remove(self, key: str, revision: int | None, notify: bool = True) -> Node | None:
        """Forget ``key`` (deleted or purged at ``revision``, None: unconditionally)."""
        node = self.keys.get(key)
        if node is None:
            self.hidden.pop(key, None)
            return None
        if revision is not None and revision <= node.revision:
            return None
        del self.keys[key]
        parent = node.parent
        self.tree.detach(node)
        if notify and parent is not None:
            self.tree.notify((parent.ino, node.name, node.ino, "delete"))
        if parent is not None:
            self.prune(parent, notify)
        return node

    def prune(self, d: Node, notify: bool = True) -> None:
        """Remove directories left empty; fold a lone .value back into a file."""
        while d is not self.root and d.parent is not None and d.kind is Kind.DIR and not d.local:
            assert d.children is not None
            parent = d.parent
            if not d.children:
                self.tree.detach(d)
                if notify:
                    self.tree.notify((parent.ino, d.name, d.ino, "delete"))
            elif len(d.children) == 1 and VALUE_NAME in d.children:
                value = d.children[VALUE_NAME]
                self.tree.detach(value)
                self.tree.detach(d)
                value.name = d.name
                self.tree.attach(parent, value)
                if notify:
                    self.tree.notify((parent.ino, d.name, d.ino, "delete"))
                    self.tree.notify((parent.ino, value.name, value.ino, "create"))
            else:
                return
            d = parent

    def apply(self, change_key: str, deleted: bool, revision: int, size: int, mtime: float) -> None:
        if deleted:
            self.remove(change_key, revision)
            if self._resync_seen is not None:
                self._resync_seen.discard(change_key)
        else:
            self.put(change_key, revision, size, mtime)
