"""What a settlement writes, as a pure function of NATS state: no git, no NATS here.

Each settled path is a ``Source``: a KV or stream binding of the mount config
with its policy and its place in the repository (``settle.dir`` / the binding
path). A key becomes the file the mount shows for it (``names.decode_token``
per token, the codec's suffix, typed values rendered by ``Codec.show``); a
stream message the file ``<subject tokens>/<seq>`` (policy ``full``) or a
section of its thread's markdown digest (policy ``digest``). Overlays with
``settle_fields`` change the issue files they bind. ``Marks`` are the commit
trailers: which state of NATS a commit holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from ..codec import Codec, Context
from ..config import Binding, MountConfig, SettleConfig, StreamBinding
from ..errors import Invalid, InvalidName
from ..names import VALUE_NAME, decode_token, encode_name
from ..store import StreamMsg

__all__ = [
    "DIGEST_SUFFIX", "T_BUCKET", "T_PATH", "T_STREAM", "Marks", "Source", "apply_overlays", "digest_header",
    "digest_last_seq", "digest_section", "file_key", "kv_content", "kv_file", "msg_file", "overlay_doc",
    "overlay_issue",
    "resolve", "restore_value", "thread_file",
]

#: the commit trailers a settlement writes (one line per bucket, stream and path)
T_BUCKET = "Hvfs-Bucket-Revision"
T_STREAM = "Hvfs-Stream-Sequence"
T_PATH = "Hvfs-Path"
DIGEST_SUFFIX = ".md"

Parts = tuple[bytes, ...]


@dataclass(frozen=True)
class Source:
    """One settled path: a binding, its policy, and where its files go in the repository."""

    path: str  # the binding's path in the mount
    policy: str  # full | digest | overlay
    kind: str  # "kv" | "stream"
    name: str  # the bucket or stream
    prefix: str
    location: Parts  # the directory in the repository tree (settle.dir, then the path)
    binding: Binding | StreamBinding
    #: overlay: the path of the issues binding whose files its settle_fields change
    issues: str | None = None
    fingerprint: str = ""

    @property
    def suffix(self) -> str:
        codec = self.binding.codec()
        return codec.suffix if codec is not None and self.kind == "kv" else ""

    def codec(self) -> Codec | None:
        return self.binding.codec()


def _parts(*paths: str) -> Parts:
    return tuple(p.encode() for path in paths for p in path.split("/") if p)


def _fingerprint(src: Source, dir_: str) -> str:
    b = src.binding
    doc = {"kind": src.kind, "name": src.name, "prefix": src.prefix, "policy": src.policy, "dir": dir_,
           "format": b.format, "schema": b.schema_name, "issues": src.issues}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def resolve(config: MountConfig, settle: SettleConfig, only: Iterable[str] = ()) -> list[Source]:
    """The sources a settlement reads, in config order; ``only`` narrows them to some paths.

    A path shares its bucket (stream) with every other settled path on it, and an
    overlay path needs its issues (and back): asking for one settles them together,
    so that the revision a commit records for a bucket is true of every path on it.
    """
    kv = {b.path: b for b in config.bindings}
    streams = {s.path: s for s in config.streams if s.path is not None}
    entries = [(sp.path, sp.policy) for sp in settle.paths]
    if not settle.paths:  # the default: every KV and stream binding, whole
        entries = [(p, "full") for p in [*kv, *streams]]
    out: list[Source] = []
    for path, policy in entries:
        if policy == "never":
            continue
        if path in kv:
            b = kv[path]
            issues = b.refs.get("issue_id") if policy == "overlay" else None
            loc = _parts(settle.dir, issues if issues is not None else path)
            src = Source(path, policy, "kv", b.kv, b.prefix, loc, b, issues)
        elif path in streams:
            sb = streams[path]
            src = Source(path, policy, "stream", sb.stream, sb.prefix, _parts(settle.dir, path), sb)
        else:
            raise Invalid(f"settle: {path} is not the path of a KV or stream binding")
        out.append(Source(**{**src.__dict__, "fingerprint": _fingerprint(src, settle.dir)}))
    wanted = [_norm(p) for p in only]
    if not wanted:
        return out
    by_path = {s.path: s for s in out}
    never = {p for p, pol in entries if pol == "never"}
    for p in wanted:
        if p in never:
            raise Invalid(f"settle: path {p} has policy never: it is kept out of git")
        if p not in by_path:
            known = ", ".join(by_path) or "none"
            raise Invalid(f"settle: {p} is not a settled path (settled paths: {known})")
    chosen = set(wanted)
    grew = True
    while grew:  # the closure: same bucket or stream, overlay <-> issues
        grew = False
        for s in out:
            if s.path in chosen:
                continue
            linked = any((c.kind, c.name) == (s.kind, s.name) or c.issues == s.path or s.issues == c.path
                         for c in (by_path[x] for x in chosen))
            if linked:
                chosen.add(s.path)
                grew = True
    return [s for s in out if s.path in chosen]


def _norm(p: str) -> str:
    return "/".join(x for x in p.strip().strip("/").split("/") if x)


# -- keys and messages as files ---------------------------------------------------------


def _rel(prefix: str, name: str) -> list[str] | None:
    if not prefix:
        return name.split(".")
    if name.startswith(prefix + "."):
        return name[len(prefix) + 1:].split(".")
    return None


def kv_file(src: Source, key: str) -> Parts | None:
    """The file of ``key`` below ``src.location`` as the mount names it; None: not below the prefix.

    A key that is also a directory (``a`` beside ``a.b``, raw bindings) is placed
    as ``a/.value`` when the tree is built (``hvfs.settle.git``), as in the mount.
    """
    toks = _rel(src.prefix, key)
    if toks is None or any(not t for t in toks):
        return None
    names = [decode_token(t)[0] for t in toks]
    names[-1] += src.suffix.encode()
    return tuple(names)


def kv_content(codec: Codec | None, value: bytes) -> bytes:
    """What the file shows: typed values rendered (a value that does not validate: as stored)."""
    return codec.show(value)[0] if codec is not None else value


def msg_file(src: Source, subject: str, seq: int) -> Parts | None:
    toks = _rel(src.prefix, subject)
    if toks is None or any(not t for t in toks):
        return None
    return (*(decode_token(t)[0] for t in toks), str(seq).encode())


def thread_file(src: Source, subject: str) -> Parts | None:
    """A thread's digest: ``threads.is-42`` is ``is-42.md`` below the path."""
    toks = _rel(src.prefix, subject)
    if toks is None or any(not t for t in toks):
        return None
    names = [decode_token(t)[0] for t in toks]
    names[-1] += DIGEST_SUFFIX.encode()
    return tuple(names)


def file_key(src: Source, parts: Parts) -> str | None:
    """The key a settled file (below ``src.location``) stands for; None: no key's file.

    The inverse of ``kv_file`` for every name the mount makes; a name shown for a
    foreign token (docs/naming.md) comes back as the canonical key of that name.
    """
    names = list(parts)
    if not names:
        return None
    if names[-1] == VALUE_NAME:
        names.pop()
        if not names:
            return None
    else:
        sfx = src.suffix.encode()
        if sfx:
            if not names[-1].endswith(sfx) or len(names[-1]) == len(sfx):
                return None
            names[-1] = names[-1][: -len(sfx)]
    try:
        toks = [encode_name(n) for n in names]
    except InvalidName:
        return None
    key = ".".join(toks)
    return f"{src.prefix}.{key}" if src.prefix else key


# -- digests ----------------------------------------------------------------------------

_SECTION_RE = re.compile(rb"^### #(\d+) \xc2\xb7 ", re.M)
_HEADING_RE = re.compile("^### #\\d+ \u00b7 ", re.M)


def digest_header(src: Source, subject: str) -> bytes:
    rel = subject[len(src.prefix) + 1:] if src.prefix else subject
    return (f"# {src.path}/{rel.replace('.', '/')}\n\n"
            f"Digest of stream {src.name}, subject {subject}: every message in order, "
            "settled by hvfs (docs/settle.md).\n").encode()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def digest_section(msg: StreamMsg) -> bytes:
    """One message: ``### #<seq> · <author> · <time>``, then its body.

    A typed comment gives its ``author``, ``created_at`` and ``body``; any other
    message is shown as text, by its ``Hvfs-Writer`` at the stream's time.
    """
    author = msg.headers.get("Hvfs-Writer", "") or "unknown"
    when = _iso(msg.time)
    body = msg.data.decode("utf-8", errors="replace")
    try:
        doc = json.loads(msg.data)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("body"), str):
        body = doc["body"]
        author = str(doc.get("author") or author)
        when = str(doc.get("created_at") or when)
    # A body line that looks like a section heading would mislead digest_last_seq: escaped.
    body = _HEADING_RE.sub(r"\\\g<0>", body.rstrip("\n"))
    return f"\n### #{msg.seq} \u00b7 {author} \u00b7 {when}\n\n{body}\n".encode()


def digest_last_seq(content: bytes) -> int:
    """The last message a digest holds (0: none): later reads append only after it."""
    last = 0
    for m in _SECTION_RE.finditer(content):
        last = max(last, int(m.group(1)))
    return last


# -- overlays ---------------------------------------------------------------------------


def overlay_issue(overlay: Source, issues: Source, key: str) -> str | None:
    """The issue key an overlay key applies to: its first token (``overlays/is-42/status.yml``
    is about ``issues/is-42.yml``), the directory the mount fills ``issue_id`` from."""
    toks = _rel(overlay.prefix, key)
    if toks is None or not toks[0]:
        return None
    return f"{issues.prefix}.{toks[0]}" if issues.prefix else toks[0]


def overlay_doc(value: bytes) -> dict[str, Any] | None:
    """An overlay's fields when it has settle_fields to apply; None otherwise."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("settle_fields"), list) or not doc["settle_fields"]:
        return None
    return doc


def apply_overlays(issue: bytes, overlays: Iterable[Mapping[str, Any]], model: type[BaseModel] | None) -> bytes:
    """The stored issue with each overlay's ``settle_fields`` taken from its ``overlay_<name>``
    (overlays in the order given, the last one winning), as stored JSON.

    A field whose overlay value the issue's schema refuses is left as the issue has it;
    an issue that is no JSON mapping is returned as it is.
    """
    try:
        doc = json.loads(issue)
    except ValueError:
        return issue
    if not isinstance(doc, dict):
        return issue
    changed = False
    for ov in overlays:
        for name in ov.get("settle_fields") or ():
            if not isinstance(name, str):
                continue
            value = ov.get(f"overlay_{name}")
            if value is None or doc.get(name) == value:
                continue
            trial = {**doc, name: value}
            if model is not None:
                try:
                    model.model_validate(trial)
                except ValidationError:
                    continue
            doc = trial
            changed = True
    if not changed:
        return issue
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# -- restore ----------------------------------------------------------------------------


def restore_value(src: Source, parts: Parts, data: bytes, writer: str) -> bytes:
    """What a settled file stores back: typed files through the codec (as the mount would
    store them); a file the codec refuses (a value shown as stored) and raw files as they are."""
    codec = src.codec()
    if codec is None or not data:
        return data
    names = [p.decode(errors="replace") for p in parts]
    name = names[-1]
    if name == VALUE_NAME.decode():
        name = names[-2] if len(names) > 1 else ""
    elif codec.suffix and name.endswith(codec.suffix):
        name = name[: -len(codec.suffix)]
    try:
        return codec.store(data, Context(name, names[:-1], writer))
    except Invalid:
        return data


# -- what a commit holds ------------------------------------------------------------------


@dataclass
class Marks:
    """The state of NATS a commit holds: its trailers."""

    buckets: dict[str, int] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)
    #: binding path -> (policy, fingerprint of the settings the files were made with)
    paths: dict[str, tuple[str, str]] = field(default_factory=dict)

    def trailers(self) -> list[tuple[str, str]]:
        out = [(T_BUCKET, f"{b}={r}") for b, r in sorted(self.buckets.items())]
        out += [(T_STREAM, f"{s}={q}") for s, q in sorted(self.streams.items())]
        out += [(T_PATH, f"{pol} {fp} {p}") for p, (pol, fp) in sorted(self.paths.items())]
        return out

    @classmethod
    def parse(cls, trailers: Iterable[tuple[str, str]]) -> Marks:
        m = cls()
        for k, v in trailers:
            v = v.strip()
            if k in (T_BUCKET, T_STREAM):
                name, _, n = v.rpartition("=")
                if name and n.isdigit():
                    (m.buckets if k == T_BUCKET else m.streams)[name] = int(n)
            elif k == T_PATH:
                bits = v.split(" ", 2)
                if len(bits) == 3:
                    m.paths[bits[2]] = (bits[0], bits[1])
        return m

    def copy(self) -> Marks:
        return Marks(dict(self.buckets), dict(self.streams), dict(self.paths))
