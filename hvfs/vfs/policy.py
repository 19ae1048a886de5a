"""The write policy: the chain of rules between a handle's bytes and the store.

A binding's files may be shown in one form and stored in another (a codec:
YAML shown, JSON stored), checked against a schema and its references,
published with a TTL and a writer's identity. Each such rule is one
``Link``; a binding's ``WritePolicy`` runs its links in order on the way to
the store (``on_write``) and in reverse on the way back (``on_read``). The
raw view's policy has only the writer's identity: bytes go through
unchanged. A link refuses a write by raising an ``HvfsError`` (``Invalid``
for a schema, with the reason), before anything is published.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import Invalid, NotFound
from ..names import decode_token
from .tree import Node

if TYPE_CHECKING:
    from ..codec import Codec
    from ..store import Store

__all__ = ["WRITER_HEADER", "CodecLink", "Link", "Publish", "RefLink", "TtlLink", "Where", "WriterLink",
           "WritePolicy", "where_of"]

#: The header naming who wrote a value or message (docs/entities.md).
WRITER_HEADER = "Hvfs-Writer"


@dataclass(slots=True)
class Publish:
    """What a flush sends to the store for one file."""

    value: bytes
    #: per-message TTL in seconds (None: none; the bucket's max age only)
    ttl: float | None = None
    #: extra message headers (the writer's identity)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Where:
    """Where a value is written, below its binding's root: for a codec's context."""

    name: str  # the file's name without the codec's extension (the key's last token)
    dirs: list[str]  # the directory names between the binding root and the file


def where_of(node: Node, prefix: str, suffix: str = "") -> Where:
    """The ``Where`` of a KV key or stream subject below ``prefix`` (its tokens, decoded)."""
    key = node.key
    rel = key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key
    names = [decode_token(t)[0].decode(errors="replace") for t in rel.split(".")] if rel else []
    name = node.name.decode(errors="replace")
    if node.view is not None and names:  # a key: its last token is the file
        name = names.pop()
    elif suffix and name.endswith(suffix):
        name = name[: -len(suffix)]
    return Where(name, names)


class Link:
    """One rule. Both directions default to passing the bytes through."""

    #: the link adds to a message without looking at its value (TTL, writer): it
    #: also goes on values the mount republishes as they are (``envelope``)
    envelope = False

    async def on_write(self, node: Node, p: Publish) -> Publish:
        return p

    def on_read(self, node: Node, value: bytes) -> bytes:
        return value

    def problem(self, node: Node, value: bytes) -> str | None:
        """Why a stored value is not what this link would have stored (None: fine)."""
        return None


class WritePolicy:
    """A binding's links, and what the files of the binding are named and may do."""

    def __init__(self, links: Sequence[Link] = (), *, suffix: str = "", read_only: bool = False) -> None:
        self.links = tuple(links)
        self.suffix = suffix  # a codec's file extension: KEY.yml is key KEY
        self.read_only = read_only
        self.typed = any(isinstance(link, CodecLink) for link in self.links)
        self._shows = any(type(link).on_read is not Link.on_read for link in self.links)

    async def on_write(self, node: Node, data: bytes, ttl: float | None = None) -> Publish:
        """The handle's bytes, as the store is to get them (a link may refuse).

        ``ttl``: the TTL of the revision the writer read (a write keeps it).
        """
        p = Publish(data, ttl)
        for link in self.links:
            p = await link.on_write(node, p)
        return p

    async def envelope(self, value: bytes, ttl: float | None = None) -> Publish:
        """A stored value published again as it is (a touch, a move, the empty
        create that claims a name): only the links that do not read the value."""
        p = Publish(value, ttl)
        for link in self.links:
            if link.envelope:
                p = await link.on_write(None, p)  # type: ignore[arg-type]
        return p

    def on_read(self, node: Node, value: bytes) -> bytes:
        """A stored value, as a reader of the file sees it."""
        if not self._shows:
            return value
        for link in reversed(self.links):
            value = link.on_read(node, value)
        return value

    def problem(self, node: Node, value: bytes) -> str | None:
        """Why a stored value does not validate (``user.hvfs.error``), or None."""
        for link in self.links:
            why = link.problem(node, value)
            if why:
                return why
        return None

    @property
    def ttl(self) -> float | None:
        for link in self.links:
            if isinstance(link, TtlLink):
                return link.ttl
        return None

    def __bool__(self) -> bool:
        return bool(self.links)


class CodecLink(Link):
    """A format (YAML or JSON shown, JSON stored) and a schema (hvfs.codec)."""

    def __init__(self, codec: Codec, prefix: str, writer: str) -> None:
        self.codec = codec
        self.prefix = prefix
        self.writer = writer

    async def on_write(self, node: Node, p: Publish) -> Publish:
        from ..codec import Context

        w = where_of(node, self.prefix, self.codec.suffix)
        return Publish(self.codec.store(p.value, Context(w.name, w.dirs, self.writer)), p.ttl, p.headers)

    def on_read(self, node: Node, value: bytes) -> bytes:
        return self.codec.show(value)[0]

    def problem(self, node: Node, value: bytes) -> str | None:
        return self.codec.show(value)[1]


@dataclass(slots=True)
class Target:
    """Where a reference must point: a key of another KV binding."""

    path: str  # the binding's path, for reasons
    bucket: str
    prefix: str
    suffix: str


class RefLink(Link):
    """Fields that name another entity: the entity must exist (a claim's issue)."""

    def __init__(self, store: Store, refs: dict[str, Target]) -> None:
        self.store = store
        self.refs = refs

    async def on_write(self, node: Node, p: Publish) -> Publish:
        try:
            doc = json.loads(p.value)
        except ValueError:
            return p  # not a typed value: the codec (before this link) decides
        if not isinstance(doc, dict):
            return p
        for fld, t in self.refs.items():
            val = doc.get(fld)
            if val is None:
                continue
            ids = val if isinstance(val, list) else [val]
            for v in ids:
                if not isinstance(v, str) or not v or "." in v:
                    raise Invalid(f"{fld}: {v!r} is not the name of an entity in {t.path}/")
                key = f"{t.prefix}.{v}" if t.prefix else v
                try:
                    await self.store.get(t.bucket, key)
                except NotFound:
                    raise Invalid(f"{fld}: {v} does not exist ({t.path}/{v}{t.suffix})") from None
        return p


class TtlLink(Link):
    """Every write carries the binding's per-message TTL (presence, claims)."""

    envelope = True

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    async def on_write(self, node: Node, p: Publish) -> Publish:
        if p.ttl is None:
            p.ttl = self.ttl
        return p


class WriterLink(Link):
    """Every write names its writer in a header (``user.hvfs.writer``)."""

    envelope = True

    def __init__(self, writer: str) -> None:
        self.writer = writer

    async def on_write(self, node: Node, p: Publish) -> Publish:
        p.headers.setdefault(WRITER_HEADER, self.writer)
        return p

