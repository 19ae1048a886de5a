"""The in-memory index: inodes, directories and listings, fed by watches.

Nothing here talks to NATS. A ``KvView`` places the keys of one bucket (under
an optional key prefix) below one directory; watch batches are applied on
the trio thread, so the index needs no locks. ``readdir`` and ``lookup`` are
answered from here and never list keys from NATS.

Placement rule for a key that is also a prefix of other keys (``a`` beside
``a.b``): the directory ``a`` wins the name and the key ``a`` is shown as
``a/.value`` (see docs/naming.md).

Leaves: a key the watch brought in and nobody has looked up yet is not a
``Node`` (about 300 bytes with its table entries) but a packed leaf in its
directory's ``Children`` (revision, size, mtime: 57 bytes), found by key
through ``KvView.keys``. Reading it through either mapping makes its Node
(``KvView.grow``), so code outside this module only ever sees Nodes.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import InvalidName, NameTooLong, NotADirectory
from ..names import VALUE_NAME, decode_token, encode_name, is_plain

__all__ = ["Children", "Kind", "KvView", "Listener", "Node", "Tree", "display"]

log = logging.getLogger(__name__)

#: Longest key hvfs writes: the subject ($KV.<bucket>.<key>) must fit the
#: server's control line (4 KiB by default) with headers to spare.
MAX_KEY = 2048


class Kind(enum.Enum):
    DIR = "dir"
    KV = "kv"  # one key's current value
    REV = "rev"  # FILE@REV: one historical revision, not listed
    CTRL = "ctrl"  # a file under .hvfs/
    MSG = "msg"  # one stream message (immutable)
    LOG = "log"  # a subject directory's .log, not listed
    PUB = "pub"  # a new file in a subject directory: published at close
    QMSG = "qmsg"  # a work-queue delivery held by this mount; rm acks it


class Node:
    """One inode. Directories have ``children``; KV files have key/revision.

    What every inode the kernel sees needs is in slots; what only some need (opened,
    written, typed, control files) is a class default until first set, which gives the
    instance its ``__dict__``: a listed but unopened inode carries no room for it.
    """

    __slots__ = (
        "ino", "kind", "name", "parent", "children", "view", "key", "revision",
        "size", "mtime", "ctime", "nlookup", "linked", "stream", "queue", "told", "provider",
        "reply_size", "reply_at", "reply_caller", "__dict__",
    )

    local: bool = False  # made through this mount, not (yet) backed by a key
    render: Callable[[], bytes] | None = None  # CTRL content
    data: bytes | None = None  # REV content, CTRL snapshot
    cached_rev: int = 0  # the revision whose content the kernel's page cache may hold
    cached_open: int = 0  # open handles that read through the page cache
    cached_size: int = 0  # the size of their content (they all hold revision cached_rev)
    settling: Any = None  # trio.Event while a last-close publish is in flight
    #: typed (codec) files: the revision whose rendered size ``size`` is (0: none)
    shown_rev: int = 0
    #: the per-message TTL of the revision this mount last read (None: none or unknown)
    ttl: float | None = None
    #: monotonic time the notifier last finished invalidating this inode (inf: doing it now)
    inval_at: float = 0.0
    #: until then (monotonic) read-only opens here use direct_io: a writer opened the
    #: file beside page-cache readers (hvfs.vfs.kv)
    contended: float = 0.0

    def __init__(self, ino: int, kind: Kind, name: bytes, parent: Node | None) -> None:
        self.ino = ino
        self.kind = kind
        self.name = name
        self.parent = parent
        self.children: Children | None = Children(self) if kind is Kind.DIR else None
        self.view: KvView | None = None
        self.key = ""  # KV/REV: the key; DIR: the key prefix it stands for
        self.revision = 0
        self.size = 0
        now = time.time()
        self.mtime = now
        self.ctime = now
        self.nlookup = 0
        self.linked = True  # still reachable from its parent
        self.stream: Any = None  # hvfs.streams.StreamView for nodes of a stream
        self.queue: Any = None  # hvfs.queues.QueueView for a work-queue directory and its files
        self.told = -1  # the size the kernel was last told (attribute replies), -1: unknown
        #: the size and monotonic time of this mount's last attribute reply for the inode
        self.reply_size = -1
        self.reply_at = 0.0
        self.reply_caller = 0  # the thread the last attribute reply answered (hvfs.fuse.ops)
        #: the hvfs.vfs.provider.Provider that owns this node (inherited from the parent)
        self.provider: Any = parent.provider if parent is not None else None

    def __repr__(self) -> str:
        return f"<Node {self.ino} {self.kind.value} {self.name!r} key={self.key!r} rev={self.revision}>"

    def path(self) -> bytes:
        parts: list[bytes] = []
        n: Node | None = self
        while n is not None and n.parent is not None:
            parts.append(n.name)
            n = n.parent
        return b"/" + b"/".join(reversed(parts))


#: A leaf: (revision, size, mtime) of a key never looked up.
_LEAF = struct.Struct("<qqd")


#: A raw value of a Children or Keys mapping (a leaf stays a leaf), and a raw store.
_peek: Callable[[Any, Any], Any] = dict.get
_store: Callable[[Any, Any, Any], None] = dict.__setitem__


class _Leafy(dict[Any, Node]):
    """A mapping to Nodes whose raw values may stand for a leaf (``_leaf``): every read
    through it (``get``, ``[]``, ``pop``, ``values``, ``items``) makes the leaf a Node
    (``_grow``), so callers only ever see Nodes. Subclasses give the two tests."""

    __slots__ = ()

    def _leaf(self, v: Any) -> bool:
        raise NotImplementedError

    def _grow(self, k: Any, v: Any) -> Node | None:
        raise NotImplementedError

    def get(self, k: Any, default: Any = None) -> Any:  # type: ignore[override]
        v = _peek(self, k)
        if v is None:
            return default
        return self._grow(k, v) if self._leaf(v) else v

    def __getitem__(self, k: Any) -> Node:
        node = self.get(k)
        if node is None:
            raise KeyError(k)
        return node  # type: ignore[no-any-return]

    def pop(self, k: Any, *default: Any) -> Any:  # type: ignore[override]
        self.get(k)
        return dict.pop(self, k, *default)

    def values(self) -> Any:
        self._grow_all()
        return dict.values(self)

    def items(self) -> Any:
        self._grow_all()
        return dict.items(self)

    def _grow_all(self) -> None:
        for k, v in [(k, v) for k, v in dict.items(self) if self._leaf(v)]:
            self._grow(k, v)


class Children(_Leafy):
    """A directory's entries by name; a leaf is its packed bytes (see the module's docstring)."""

    __slots__ = ("dir", "ndirs")

    def __init__(self, d: Node) -> None:
        super().__init__()
        self.dir = d
        self.ndirs = 0  # entries that are directories, kept as they come and go (st_nlink)

    def __setitem__(self, name: bytes, v: Any) -> None:
        self._gone(_peek(self, name))
        if v.__class__ is Node and v.kind is Kind.DIR:
            self.ndirs += 1
        dict.__setitem__(self, name, v)

    def __delitem__(self, name: bytes) -> None:
        v = _peek(self, name)
        dict.__delitem__(self, name)
        self._gone(v)

    def pop(self, name: Any, *default: Any) -> Any:
        if name not in self:
            return dict.pop(self, name, *default)
        v = super().pop(name)
        self._gone(v)
        return v

    def _gone(self, v: Any) -> None:
        if v.__class__ is Node and v.kind is Kind.DIR:
            self.ndirs -= 1

    def _leaf(self, v: Any) -> bool:
        return v.__class__ is bytes

    def _grow(self, name: bytes, packed: bytes) -> Node:
        view = self.dir.view
        assert view is not None, "a leaf outside a KvView"
        return view.grow(self.dir, name, packed)

    def nodes(self) -> Iterator[Node]:
        """The entries that are Nodes already (no leaf is made one)."""
        return (v for v in dict.values(self) if v.__class__ is Node)

    def subdirs(self) -> int:
        """How many entries are directories (a leaf never is one): for st_nlink.

        Counted as entries come and go, not by a scan: getattr of a directory that
        receives a message or key at a time would otherwise cost O(entries).
        Raw stores (``_store``) only ever put leaves and KV Nodes, never directories.
        """
        return self.ndirs


def display(node: Node) -> str:
    """A node's path in the mount, for reasons and logs."""
    return node.path().decode(errors="replace")


#: What the kernel must hear about a change: fn(parent, name, node, what) with
#: what in {"create", "modify", "delete", "mkdir"}. Consumed by the notifier.
Listener = Callable[["Node", bytes, "Node", str], None]


class Tree:
    """Owns the inode table and the directory nodes every view hangs from."""

    def __init__(self) -> None:
        self._next = 2
        self.nodes: dict[int, Node] = {}
        self.root = Node(1, Kind.DIR, b"", None)
        self.root.nlookup = 1
        self.nodes[1] = self.root
        self.listeners: list[Listener] = []
        #: each calls its argument (from any thread) once the kernel has heard every change
        #: notified so far: the notifier's ``when_told``
        self.tellers: list[Callable[[Callable[[], None]], None]] = []

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

    def unlink_for_move(self, node: Node) -> None:
        """Take a node out of its directory to attach it elsewhere (kept in the table)."""
        parent = node.parent
        if parent is not None and parent.children is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
            parent.mtime = parent.ctime = time.time()

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

    def notify(self, parent: Node, name: bytes, node: Node, what: str) -> None:
        for fn in self.listeners:
            fn(parent, name, node, what)

    def walk(self, node: Node) -> Iterator[Node]:
        """``node`` and the Nodes below it; leaves are not Nodes and are not made ones."""
        yield node
        if node.children:
            for c in list(node.children.nodes()):
                yield from self.walk(c)


class Keys(_Leafy):
    """A view's Nodes by key; a key held as a leaf maps to its directory."""

    __slots__ = ("view",)

    def __init__(self, view: KvView) -> None:
        super().__init__()
        self.view = view

    def _leaf(self, v: Any) -> bool:
        return v.kind is Kind.DIR  # type: ignore[no-any-return]

    def _grow(self, key: str, d: Node) -> Node | None:
        return self.view.grow_key(key, d)


class KvView:
    """The keys of one bucket (under ``prefix``) placed below ``root``."""

    def __init__(self, tree: Tree, root: Node, bucket: str, prefix: str = "", suffix: str = "") -> None:
        self.tree = tree
        #: a codec's file extension: key ``ag-7`` is the file ``ag-7.yml`` (directories have none)
        self.suffix = suffix
        self._sfx = suffix.encode()
        self.root = root
        root.view = self
        root.key = prefix
        self.bucket = bucket
        self.prefix = prefix
        self.keys = Keys(self)
        self.synced = False
        #: the store's reconnect count when the watch last completed a snapshot
        self.live = -1
        self._resync_seen: set[str] | None = None
        self.hidden: dict[str, str] = {}  # key -> why it is not shown
        #: keys this mount is publishing right now: their watch echo is applied
        #: without telling the kernel (it saw the local operation itself)
        self.quiet: dict[str, int] = {}

    def mute(self, key: str) -> None:
        self.quiet[key] = self.quiet.get(key, 0) + 1

    def unmute(self, key: str) -> None:
        n = self.quiet.get(key, 0) - 1
        if n <= 0:
            self.quiet.pop(key, None)
        else:
            self.quiet[key] = n

    @contextlib.contextmanager
    def muted(self, key: str) -> Iterator[None]:
        """While this mount changes ``key``, its watch echo is not news to the kernel."""
        self.mute(key)
        try:
            yield
        finally:
            self.unmute(key)

    # -- names -------------------------------------------------------------

    def key_for(self, parent: Node, name: bytes, file: bool = True) -> str:
        """The key a new file (or, ``file`` False, directory) ``name`` in ``parent`` stands for."""
        if parent.kind is not Kind.DIR:
            raise NotADirectory(f"{parent.path().decode(errors='replace')} is not a directory")
        if file and self.suffix:
            ext = self.suffix.encode()
            if not name.endswith(ext) or len(name) == len(ext):
                raise InvalidName(f"{name.decode(errors='replace')}: files here are named KEY{self.suffix} "
                                  f"(the key is the name without {self.suffix})")
            name = name[: -len(ext)]
        elif name == VALUE_NAME:
            if not parent.key:
                raise InvalidName(f"{VALUE_NAME.decode()} names the directory's own key; this directory has none")
            return parent.key
        token = encode_name(name)
        key = f"{parent.key}.{token}" if parent.key else token
        if len(key) > MAX_KEY:
            raise NameTooLong(f"key would be {len(key)} characters; at most {MAX_KEY} fit a NATS subject here")
        return key

    def _rel_tokens(self, key: str) -> list[str] | None:
        if not self.prefix:
            return key.split(".")
        if key.startswith(self.prefix + "."):
            return key[len(self.prefix) + 1:].split(".")
        return None

    # -- applying changes (trio thread) ----------------------------------------

    def begin_resync(self) -> None:
        self._resync_seen = set()

    @property
    def resyncing(self) -> bool:
        return self._resync_seen is not None

    def end_resync(self) -> None:
        seen, self._resync_seen = self._resync_seen, None
        if seen is not None:
            # (a leaf's value in keys is its directory: a leaf is never local)
            for key in [k for k, n in dict.items(self.keys)
                        if k not in seen and (n.kind is Kind.DIR or not n.local)]:
                self.remove(key, None)
        self.synced = True

    # -- leaves ------------------------------------------------------------------

    def grow(self, d: Node, name: bytes, packed: bytes) -> Node:
        """Make the leaf ``name`` of ``d`` a Node (in place: same name, same key)."""
        revision, size, mtime = _LEAF.unpack(packed)
        node = self.tree.new(Kind.KV, name, d)
        tok = (name[: len(name) - len(self.suffix)] if self.suffix else name).decode("ascii")
        node.view, node.key = self, f"{d.key}.{tok}" if d.key else tok
        node.revision, node.size, node.mtime, node.ctime = revision, size, mtime, mtime
        _store(d.children, name, node)
        _store(self.keys, node.key, node)
        return node

    def grow_key(self, key: str, d: Node) -> Node | None:
        """The Node of ``key``, held as a leaf in ``d``."""
        name = self._leaf_name(key)
        v = _peek(d.children, name)
        if v is None:
            return None
        return self.grow(d, name, v) if v.__class__ is bytes else v

    def _leaf_name(self, key: str) -> bytes:
        return key.rpartition(".")[2].encode("ascii") + self._sfx

    def entries(self) -> Iterator[tuple[str, int, int, float]]:
        """(key, revision, size, mtime) of every key shown, without making leaves Nodes."""
        for key, v in list(dict.items(self.keys)):
            if v.kind is Kind.DIR:
                packed = _peek(v.children, self._leaf_name(key))
                if packed.__class__ is bytes:
                    yield (key, *_LEAF.unpack(packed))  # type: ignore[arg-type]
                    continue
                v = self.keys.get(key)
            yield key, v.revision, v.size, v.mtime

    def _leaf_put(self, key: str, revision: int, size: int, mtime: float, store: bool) -> bool:
        """Whether a change is done as a leaf: an old revision of a leaf is ignored, and
        (``store``: nobody is told of it) a newer one or a new key kept as one.
        False: it needs a Node."""
        v = _peek(self.keys, key)
        if v is not None:
            if v.kind is not Kind.DIR:
                return False
            name = self._leaf_name(key)
            packed = _peek(v.children, name)
            if packed.__class__ is not bytes:
                return False
            if revision <= _LEAF.unpack_from(packed)[0]:  # type: ignore[arg-type]
                return True
            if store:
                _store(v.children, name, _LEAF.pack(revision, size, mtime))
            return store
        if not store:
            return False
        tokens = self._rel_tokens(key)
        if tokens is None or not is_plain(tokens[-1]):
            return False
        parent = self._dir_for(tokens[:-1], False)
        if parent is None:
            return False
        name = tokens[-1].encode("ascii") + self._sfx
        assert parent.children is not None
        if name in parent.children:
            return False
        _store(parent.children, name, _LEAF.pack(revision, size, mtime))
        _store(self.keys, key, parent)
        parent.mtime = parent.ctime = time.time()
        return True

    # -- changes -------------------------------------------------------------------

    def put(self, key: str, revision: int, size: int, mtime: float, notify: bool = True,
            leaf: bool = False) -> Node | None:
        """Record revision ``revision`` of ``key``; older revisions are ignored.

        ``leaf``: the change may stay or become a leaf (returns None then): a new key or
        revision nobody is told of, or a revision a leaf already has (a resync).
        """
        if self._resync_seen is not None:
            self._resync_seen.add(key)
        # The first snapshot is not news to the kernel: it has seen nothing yet.
        notify = notify and self.synced and key not in self.quiet
        if leaf and self._leaf_put(key, revision, size, mtime, not notify):
            return None
        node = self.keys.get(key)
        if node is not None:
            if revision <= node.revision:
                return node
            node.revision, node.size, node.mtime, node.ctime = revision, size, mtime, mtime
            if node.local:
                node.local = False
            if notify and node.parent is not None:
                self.tree.notify(node.parent, node.name, node, "modify")
            return node
        tokens = self._rel_tokens(key)
        if tokens is None:
            return None
        parent = self._dir_for(tokens[:-1], notify)
        if parent is None:
            self.hidden[key] = "a parent name collides with a file name"
            return None
        name, _ = decode_token(tokens[-1])
        name += self.suffix.encode()
        assert parent.children is not None
        existing = parent.children.get(name)
        node = self.tree.new(Kind.KV, name, parent)
        node.view, node.key = self, key
        node.revision, node.size, node.mtime, node.ctime = revision, size, mtime, mtime
        if existing is not None and existing.kind is Kind.DIR:
            # ``a`` beside ``a.b``: the key shows inside the directory.
            node.name = VALUE_NAME
            if VALUE_NAME in existing.children:  # type: ignore[operator]
                self.hidden[key] = f"name {name.decode(errors='replace')} is taken"
                self.tree.nodes.pop(node.ino, None)
                return None
            parent = existing
        elif existing is not None:
            self.hidden[key] = f"name {name.decode(errors='replace')} is taken by key {existing.key!r}"
            log.warning("key %s/%s hidden: name %r is taken by %r", self.bucket, key, name, existing.key)
            self.tree.nodes.pop(node.ino, None)
            return None
        self.tree.attach(parent, node)
        self.keys[key] = node
        if notify:
            self.tree.notify(parent, node.name, node, "create")
        return node

    def _dir_for(self, tokens: list[str], notify: bool) -> Node | None:
        node = self.root
        for i, tok in enumerate(tokens):
            name, _ = decode_token(tok)
            assert node.children is not None
            child = _peek(node.children, name)
            if child.__class__ is bytes:
                child = node.children.get(name)
            if child is None:
                child = self.tree.new(Kind.DIR, name, node)
                child.view = self
                child.key = f"{node.key}.{tok}" if node.key else tok
                self.tree.attach(node, child)
                if notify:
                    self.tree.notify(node, name, child, "mkdir")
            elif child.kind is Kind.KV:
                # A file must become a directory: it moves inside as .value.
                if child.key != (f"{node.key}.{tok}" if node.key else tok):
                    return None
                self.tree.unlink_for_move(child)
                newdir = self.tree.new(Kind.DIR, name, node)
                newdir.view = self
                newdir.key = child.key
                self.tree.attach(node, newdir)
                child.name = VALUE_NAME
                self.tree.attach(newdir, child)
                if notify:
                    self.tree.notify(node, name, child, "delete")
                    self.tree.notify(node, name, newdir, "mkdir")
                    self.tree.notify(newdir, VALUE_NAME, child, "create")
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
        if revision is not None and node.local and node.revision == 0:
            # A file being created here: a delete elsewhere cannot refer to
            # bytes never published (its create goes over the marker).
            return None
        notify = notify and self.synced and key not in self.quiet
        del self.keys[key]
        parent = node.parent
        self.tree.detach(node)
        if notify and parent is not None:
            self.tree.notify(parent, node.name, node, "delete")
        if parent is not None and key not in self.quiet:
            # (a local rm in flight leaves its directory for the rmdir that may follow)
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
                    self.tree.notify(parent, d.name, d, "delete")
            elif len(d.children) == 1 and VALUE_NAME in d.children:
                value = d.children[VALUE_NAME]
                self.tree.unlink_for_move(value)
                self.tree.detach(d)
                value.name = d.name
                self.tree.attach(parent, value)
                if notify:
                    self.tree.notify(parent, d.name, d, "delete")
                    self.tree.notify(parent, value.name, value, "create")
            else:
                return
            d = parent

    def apply(self, change_key: str, deleted: bool, revision: int, size: int, mtime: float) -> None:
        if deleted:
            self.remove(change_key, revision)
            if self._resync_seen is not None:
                self._resync_seen.discard(change_key)
        else:
            self.put(change_key, revision, size, mtime, leaf=True)
