"""The write policy: the chain of rules between a handle's bytes and the store.

A binding's files may be shown in one form and stored in another (a codec:
YAML shown, JSON stored), checked against a schema, published with a TTL or
a writer's identity. Each such rule is one ``Link``; a binding's
``WritePolicy`` runs its links in order on the way to the store
(``on_write``) and in reverse on the way back (``on_read``). The raw view's
policy has no links: bytes go through unchanged. A link refuses a write by
raising an ``HvfsError`` (``Invalid`` for a schema, with the reason), before
anything is published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .tree import Node

__all__ = ["Link", "Publish", "WritePolicy"]


@dataclass(slots=True)
class Publish:
    """What a flush sends to the store for one file."""

    value: bytes
    #: per-message TTL in seconds (None: the bucket's own); for a TTL link
    ttl: float | None = None
    #: extra message headers (a writer's identity); for an identity link
    headers: dict[str, str] = field(default_factory=dict)


class Link:
    """One rule. Both directions default to passing the bytes through."""

    def on_write(self, node: Node, p: Publish) -> Publish:
        return p

    def on_read(self, node: Node, value: bytes) -> bytes:
        return value


class WritePolicy:
    def __init__(self, links: Sequence[Link] = ()) -> None:
        self.links = tuple(links)

    def on_write(self, node: Node, data: bytes) -> Publish:
        """The handle's bytes, as the store is to get them (a link may refuse)."""
        p = Publish(data)
        for link in self.links:
            p = link.on_write(node, p)
        return p

    def on_read(self, node: Node, value: bytes) -> bytes:
        """A stored value, as a reader of the file sees it."""
        if not self.links:
            return value
        for link in reversed(self.links):
            value = link.on_read(node, value)
        return value

    def __bool__(self) -> bool:
        return bool(self.links)
