"""The configured layout: buckets and streams made (or checked) as the config
asks, and each binding's write policy (codec and schema, references, TTL,
writer). A bucket or stream that exists with settings the binding
contradicts stops the mount with the reason: starting would quietly do
something else than the config says (a TTL never applied, expiries unseen).
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import Binding, MountConfig, StreamBinding
from ..errors import Invalid, NotFound
from ..store import BucketInfo, Store, StreamInfo
from ..store.rules import subject_matches
from .policy import CodecLink, Link, RefLink, Target, TtlLink, WritePolicy, WriterLink

__all__ = ["MARKER_TTL", "Layout"]

log = logging.getLogger(__name__)

#: How long the server keeps the delete marker it writes when a key's TTL ends
#: (watchers see the expiry through it); then the key has no trace left. The
#: server's minimum, because it raises every shorter message TTL to this one
#: (measured on nats-server 2.15: Nats-TTL 3 on a bucket with marker TTL 5 is stored as 5).
MARKER_TTL = 1.0

_SETTINGS = ("history", "max_value_size", "replicas", "storage", "max_age")
_STREAM_SETTINGS = ("max_age", "max_msg_size", "replicas", "storage")


class Layout:
    """Makes the config's buckets and streams and the policies of its bindings."""

    def __init__(self, store: Store, config: MountConfig, writer: str) -> None:
        self.store = store
        self.config = config
        self.writer = writer
        #: what the mount says at start and in status about its bindings' TTLs
        self.notes: list[str] = []

    # -- buckets and streams ---------------------------------------------------------

    def _ttl_native(self, b: Binding) -> bool:
        return b.ttl is not None and self.store.msg_ttl

    async def bucket(self, b: Binding) -> BucketInfo:
        """The binding's bucket: created with its settings, or checked against them."""
        native = self._ttl_native(b)
        if b.ttl is not None and not native:
            note = (f"{b.path}: this NATS server has no per-message TTL (2.11 or newer has it); "
                    f"bucket {b.kv} expires every key {b.ttl:g} s after its last write (max age)")
            self.notes.append(note)
            log.warning("%s", note)
        max_age = b.max_age or (b.ttl if b.ttl is not None and not native else 0.0)
        try:
            bi = await self.store.bucket(b.kv)
        except NotFound:
            if not b.create:
                raise NotFound(f"binding {b.path}: no KV bucket {b.kv!r} (create: false)") from None
            # A TTL bucket keeps one revision per key unless told otherwise: an older
            # revision outliving a newer one's shorter TTL would come back when it ends.
            history = b.history if "history" in b.model_fields_set or b.ttl is None else 1
            return await self.store.create_bucket(
                b.kv, history, max_age=max_age, max_value_size=b.max_value_size,
                replicas=b.replicas, storage=b.storage, marker_ttl=MARKER_TTL if native else 0.0)
        problems = []
        if native and not bi.msg_ttl:
            problems.append(f"it does not allow per-message TTL (the binding has ttl {b.ttl:g})")
        if native and bi.marker_ttl <= 0:
            problems.append("it has no limit marker TTL, so other mounts would not see keys expire")
        elif native and b.ttl is not None and bi.marker_ttl > b.ttl:
            problems.append(f"its limit marker TTL of {bi.marker_ttl:g} s is over the binding's ttl "
                            f"of {b.ttl:g} s (the server raises every shorter TTL to it)")
        if b.ttl is not None and not native and not b.max_age and bi.max_age != max_age:
            problems.append(f"max age is {bi.max_age:g} s, the TTL fallback needs {max_age:g} s")
        problems += _differences(b, bi, _SETTINGS, {"max_age": bi.max_age, "history": bi.history,
                                                    "max_value_size": bi.max_value_size,
                                                    "replicas": bi.replicas, "storage": bi.storage})
        if problems:
            raise Invalid(f"binding {b.path}: KV bucket {b.kv} exists with other settings: "
                          f"{'; '.join(problems)}. Change the binding to match, or the bucket "
                          "(nats kv edit / nats stream edit), then mount again")
        return bi

    async def stream(self, sb: StreamBinding) -> StreamInfo:
        """The binding's stream: created with its subjects and settings, or checked."""
        try:
            si = await self.store.stream(sb.stream)
        except NotFound:
            if not sb.create:
                raise NotFound(f"stream binding {sb.path or sb.stream}: no stream {sb.stream!r} "
                               "(create: false)") from None
            return await self.store.create_stream(sb.stream, sb.subjects, max_age=sb.max_age,
                                                  max_msg_size=sb.max_msg_size, replicas=sb.replicas,
                                                  storage=sb.storage)
        problems = []
        if "subjects" in sb.model_fields_set and sorted(si.subjects) != sorted(sb.subjects):
            problems.append(f"its subjects are {', '.join(si.subjects)}, not {', '.join(sb.subjects)}")
        if sb.prefix and not any(subject_matches(p, sb.prefix + ".x") for p in si.subjects):
            problems.append(f"it takes no subject below {sb.prefix}")
        problems += _differences(sb, si, _STREAM_SETTINGS, {"max_age": si.max_age,
                                                            "max_msg_size": si.max_msg_size,
                                                            "replicas": si.replicas, "storage": si.storage})
        if problems:
            raise Invalid(f"stream binding {sb.path or sb.stream}: stream {sb.stream} exists with other "
                          f"settings: {'; '.join(problems)}. Change the binding or the stream, then mount again")
        return si

    # -- policies --------------------------------------------------------------------

    def _targets(self, refs: dict[str, str]) -> dict[str, Target]:
        by_path = {b.path: b for b in self.config.bindings}
        out = {}
        for fld, path in refs.items():
            t = by_path[path]
            codec = t.codec()
            out[fld] = Target(path, t.kv, t.prefix, codec.suffix if codec else "")
        return out

    def kv_policy(self, b: Binding) -> WritePolicy:
        links: list[Link] = []
        suffix = ""
        codec = b.codec()
        if codec is not None:
            suffix = codec.suffix
            links.append(CodecLink(codec, b.prefix, self.writer))
        if b.refs:
            links.append(RefLink(self.store, self._targets(b.refs)))
        if self._ttl_native(b):
            assert b.ttl is not None
            links.append(TtlLink(b.ttl))
        links.append(WriterLink(self.writer))
        return WritePolicy(links, suffix=suffix, read_only=b.read_only)

    def stream_policy(self, sb: StreamBinding) -> WritePolicy:
        links: list[Link] = []
        codec = sb.codec()  # one JSON line per message: a directory's .log is JSON lines
        if codec is not None:
            links.append(CodecLink(codec, sb.prefix, self.writer))
        if sb.refs:
            links.append(RefLink(self.store, self._targets(sb.refs)))
        links.append(WriterLink(self.writer))
        return WritePolicy(links, read_only=sb.read_only)

    def describe(self) -> list[dict[str, Any]]:
        """The bindings, for status and _meta/daemon.yml."""
        out: list[dict[str, Any]] = []
        for b in self.config.bindings:
            d: dict[str, Any] = {"path": b.path, "kv": b.kv, "format": b.format}
            if b.prefix:
                d["prefix"] = b.prefix
            if b.schema_name:
                d["schema"] = b.schema_name
            if b.ttl is not None:
                d["ttl"] = b.ttl
                d["ttl_mode"] = "per-message" if self._ttl_native(b) else "bucket max age (fallback)"
            if b.read_only:
                d["read_only"] = True
            out.append(d)
        for sb in self.config.streams:
            if sb.path is None:
                continue
            d = {"path": sb.path, "stream": sb.stream, "format": sb.format}
            if sb.prefix:
                d["prefix"] = sb.prefix
            if sb.schema_name:
                d["schema"] = sb.schema_name
            out.append(d)
        for qb in self.config.queues:
            out.append({"path": qb.path, "queue": f"{qb.stream}/{qb.durable}"})
        return out


def _differences(cfg: Any, info: Any, names: tuple[str, ...], have: dict[str, Any]) -> list[str]:
    """The settings the config names explicitly that the existing bucket or stream does not have."""
    out = []
    for name in names:
        if name in cfg.model_fields_set:
            want = getattr(cfg, name)
            got = have[name]
            if isinstance(want, float | int) and isinstance(got, float | int):
                same = abs(float(want) - float(got)) < 1e-6
            else:
                same = want == got
            if not same:
                out.append(f"{name} is {got}, the binding says {want}")
    return out

