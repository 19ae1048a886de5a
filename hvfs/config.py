"""Connection settings and the mount config file (YAML, validated by pydantic).

Connection settings follow the nats CLI, setting by setting: flags, then
NATS_* environment variables, then the mount config's ``nats:`` section, then
a context file (NATS ADR-21) named by --context/NATS_CONTEXT/``nats.context``
or the CLI's selected context.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .codec import Codec, StrictLoader, yaml_problem
from .entities import resolve_schema
from .errors import Invalid

__all__ = [
    "Binding", "ConnectOptions", "MountConfig", "NatsConfig", "ObjectBinding", "QueueBinding", "SettleConfig", "SettlePath", "StreamBinding",
    "check_branch", "load_config", "load_context",
]

_BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_PREFIX_RE = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
_SUBJECT_PREFIX_RE = re.compile(r"^[-_=a-zA-Z0-9]+(\.[-_=a-zA-Z0-9]+)*$")
_NOT_IN_TOKEN = re.compile(r"[\s\x00-\x1f\x7f]")
_WRITER_RE = re.compile(r"^[!-9;-~]{1,128}$")  # printable ASCII but space and ':'
_RAW_DIRS = ("kv", "streams", "obj")  # the raw view's top-level directories

Format = Literal["raw", "yaml", "json"]
SettlePolicy = Literal["full", "digest", "never", "overlay"]
Storage = Literal["file", "memory"]
Loc = tuple[str | int, ...]


class _At(ValueError):
    """A validation error that knows where in the file it is (``loc`` below the model raising it).

    pydantic puts the exception in the error's ``ctx``; load_config reads the
    loc there so that a cross-check points at the line it is about.
    """

    def __init__(self, loc: Loc, msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


class ConnectOptions(BaseModel):
    """How to reach NATS; empty ``servers`` means start an embedded server."""

    model_config = ConfigDict(extra="forbid")

    servers: list[str] = Field(default_factory=list)
    user: str | None = None
    password: SecretStr | None = None  # SecretStr: a repr or a log of these options shows '**********'
    token: SecretStr | None = None
    creds: str | None = None
    nkey: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = Field(2.0, gt=0, le=60, description="bound on every NATS call, seconds")


class NatsConfig(BaseModel):
    """The mount config's ``nats:`` section: below flags and NATS_* variables, above the nats context.

    The TLS files are ``tls_*``, not the context's ``ca``/``cert``/``key``: in a
    mount config a bare ``key`` reads as a KV key. Relative file paths are the
    config file's directory's (``load_config`` resolves them).
    """

    model_config = ConfigDict(extra="forbid")

    url: list[str] = Field(default_factory=list, description="NATS URL(s): a list, or one string, comma separated")
    context: str | None = Field(None, description="a nats CLI context for the settings this section leaves out")
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds: str | None = Field(None, description="credentials file (JWT and nkey seed)")
    nkey: str | None = Field(None, description="nkey seed file")
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    _FILES: ClassVar[tuple[str, ...]] = ("creds", "nkey", "tls_ca", "tls_cert", "tls_key")

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, v: Any) -> Any:
        return [u.strip() for u in v.split(",")] if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for i, u in enumerate(v):
            if not u.strip():
                raise _At((i,), "a URL cannot be empty")
        return [u.strip() for u in v]

    @field_validator("context", "user", "password", "token", "creds", "nkey", "tls_ca", "tls_cert", "tls_key")
    @classmethod
    def _nonempty(cls, v: str | SecretStr | None) -> str | SecretStr | None:
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        if text is not None and not text.strip():
            raise ValueError("cannot be empty (leave it out instead)")
        return v

    def resolved(self, base: Path) -> NatsConfig:
        """The same section with its file paths made absolute: ``~`` expanded, else below ``base``."""
        update = {f: str(base / Path(v).expanduser()) for f in self._FILES if (v := getattr(self, f))}
        return self.model_copy(update=update)


def _norm_path(v: str) -> str:
    parts = [p for p in v.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or parts[0] == ".hvfs":
        raise ValueError(f"bad binding path {v!r}")
    return "/".join(parts)


def _subject_error(s: str) -> str:
    """Why ``s`` is no NATS subject a stream can take (wildcards allowed), or ""."""
    if not s:
        return "a subject cannot be empty"
    toks = s.split(".")
    for i, t in enumerate(toks):
        if not t:
            return f"{s!r}: empty token (a leading, trailing or double '.')"
        if _NOT_IN_TOKEN.search(t):
            return f"{s!r}: white space or a control character"
        if ("*" in t or ">" in t) and t not in ("*", ">"):
            return f"{s!r}: a wildcard ('*' or '>') must be a whole token"
        if t == ">" and i != len(toks) - 1:
            return f"{s!r}: '>' can only be the last token"
    return ""


def _covers(subject: str, prefix: str) -> bool:
    """Whether ``subject`` (a stream's, wildcards allowed) matches some subject below ``prefix``."""
    p = prefix.split(".")
    for i, tok in enumerate(subject.split(".")):
        if tok == ">" or i == len(p):
            return True
        if tok != "*" and tok != p[i]:
            return False
    return False


class _Typed(BaseModel):
    """What KV and stream bindings share: values decoded by a format, checked by a schema."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    if TYPE_CHECKING:
        format: Format
        schema_name: str | None
        refs: dict[str, str]

    _model: type[BaseModel] | None = PrivateAttr(None)
    _line: ClassVar[bool] = False  # a codec's values end with "\n" (stream messages)

    @property
    def schema_model(self) -> type[BaseModel] | None:
        """The model ``schema`` names, resolved when the config was validated."""
        return self._model

    def codec(self) -> Codec | None:
        """What this binding's files show and store; None for a raw binding."""
        return None if self.format == "raw" else Codec(self.format, self._model, line=self._line)

    @field_validator("refs", check_fields=False)
    @classmethod
    def _refs(cls, v: dict[str, str]) -> dict[str, str]:
        return {k: _norm_path(p) for k, p in v.items()}

    @model_validator(mode="after")
    def _schema(self) -> _Typed:
        if self.schema_name is not None:
            if self.format == "raw":
                raise _At(("schema",), "schema needs format yaml or json")
            try:
                self._model = resolve_schema(self.schema_name)
            except Invalid as e:
                raise _At(("schema",), e.reason) from None
        if self.refs:
            if self.format == "raw":
                raise _At(("refs",), "refs need format yaml or json")
            if self._model is not None:
                fields = {f.alias or n for n, f in self._model.model_fields.items()}
                for k in self.refs:
                    if k not in fields:
                        raise _At(("refs", k), f"{k} is not a field of schema {self.schema_name}")
        return self


class Binding(_Typed):
    """A mount path bound to a KV bucket, optionally under a key prefix.

    ``history`` .. ``max_age`` are the settings of a bucket hvfs creates; an
    existing bucket keeps its own.
    """

    path: str
    kv: str
    prefix: str = ""
    create: bool = Field(True, description="create the bucket if it does not exist")
    format: Format = Field("raw", description="raw: bytes as written; yaml/json: entities stored as JSON")
    schema_name: str | None = Field(None, alias="schema",
                                    description="a built-in entity schema (hvfs.entities.SCHEMAS) or module:Class")
    ttl: float | None = Field(None, ge=1, description="per-message TTL of every write, seconds")
    read_only: bool = False
    refs: dict[str, str] = Field(default_factory=dict,
                                 description="field -> path of a KV binding where a key of that name must exist")
    history: int = Field(10, ge=1, le=64)
    replicas: int = Field(1, ge=1, le=5)
    max_value_size: int = Field(-1, description="bytes; -1: no limit")
    storage: Storage = "file"
    max_age: float = Field(0.0, ge=0, description="seconds; 0: values never expire")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _norm_path(v)

    @field_validator("kv")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET_RE.match(v):
            raise ValueError(f"bad bucket name {v!r} (allowed: letters, digits, '-', '_')")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and not _PREFIX_RE.match(v):
            raise ValueError(f"bad key prefix {v!r}")
        return v

    @field_validator("max_value_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("-1 (no limit) or at least 1")
        return v


class StreamBinding(_Typed):
    """A stream hvfs creates and, with a path, shows: a message on PREFIX.a.b is the file PATH/a/b/<seq>."""

    _line: ClassVar[bool] = True

    path: str | None = Field(None, description="None: the stream is only created (the raw streams/ view shows it)")
    stream: str
    subjects: list[str] = Field(default_factory=list, description="default: PREFIX.>")
    prefix: str = Field("", description="the subject prefix shown at path")
    format: Format = "raw"
    schema_name: str | None = Field(None, alias="schema")
    refs: dict[str, str] = Field(default_factory=dict)
    read_only: bool = False
    create: bool = Field(True, description="create the stream if it does not exist")
    max_age: float = Field(0.0, ge=0, description="seconds; 0: messages never expire")
    max_msg_size: int = Field(-1, description="bytes; -1: no limit")
    replicas: int = Field(1, ge=1, le=5)
    storage: Storage = "file"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return None if v is None else _norm_path(v)

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: str) -> str:
        if not _BUCKET_RE.match(v):
            raise ValueError(f"bad stream name {v!r} (allowed: letters, digits, '-', '_')")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and not _SUBJECT_PREFIX_RE.match(v):
            raise ValueError(f"bad subject prefix {v!r} (tokens of letters, digits, '-', '_', '=' joined by '.')")
        return v

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, v: list[str]) -> list[str]:
        for i, s in enumerate(v):
            why = _subject_error(s)
            if why:
                raise _At((i,), why)
        return v

    @field_validator("max_msg_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("-1 (no limit) or at least 1")
        return v

    @model_validator(mode="after")
    def _cover(self) -> StreamBinding:
        if not self.subjects:
            if not self.prefix:
                raise _At(("subjects",), "subjects are required when there is no prefix")
            self.subjects = [f"{self.prefix}.>"]
            self.model_fields_set.discard("subjects")  # derived, not given: an existing stream's own stand
        elif self.prefix and not any(_covers(s, self.prefix) for s in self.subjects):
            raise _At(("prefix",), f"no subject of the stream is below prefix {self.prefix} "
                                   f"(subjects: {', '.join(self.subjects)})")
        return self


class QueueBinding(BaseModel):
    """A mount path bound to a durable pull consumer: its files are deliveries not yet acked."""

    model_config = ConfigDict(extra="forbid")

    path: str
    stream: str
    durable: str
    filter_subject: str | None = None
    create: bool = Field(True, description="create the durable consumer if it does not exist")
    ack_wait: float = Field(30.0, gt=0.5, description="ack wait of a consumer hvfs creates, seconds")
    max_held: int = Field(4, ge=1, le=1000, description="deliveries this mount holds at once")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _norm_path(v)

    @field_validator("stream", "durable")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _BUCKET_RE.match(v):
            raise ValueError(f"bad stream or consumer name {v!r}")
        return v


_AUTHOR_RE = re.compile(r"^[^<>\n]*[^<>\s] <[^<>\n]*>$")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def check_branch(name: str) -> str:
    """Why ``name`` is no branch git takes (git check-ref-format's rules), or ""."""
    if not name:
        return "a branch name cannot be empty"
    if name.startswith("refs/"):
        return f"{name!r} is a ref, not a branch name (give the part after refs/heads/)"
    if name == "@" or "@{" in name or ".." in name or "//" in name or _BAD_REF_CHARS.search(name):
        return f"{name!r} is not a branch name (no '..', '@{{', spaces, control characters or ~^:?*[\\)"
    if name.startswith(("/", "-")) or name.endswith(("/", ".")):
        return f"{name!r} is not a branch name (it cannot start with '/' or '-', or end with '/' or '.')"
    for part in name.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return f"{name!r} is not a branch name (no component may start with '.' or end with '.lock')"
    return ""


class SettlePath(BaseModel):
    """One subtree settled to git, and how (docs/settle.md)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    policy: SettlePolicy = Field("full", description="full: every key as the file the mount shows; digest: a "
                                 "stream's messages as one markdown file per thread; overlay: an overlay "
                                 "binding's settle_fields applied to the issues it binds; never: kept out")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _norm_path(v)


class SettleConfig(BaseModel):
    """Settlement to git: which paths, into which repository and branch (docs/settle.md)."""

    model_config = ConfigDict(extra="forbid")

    repo: str | None = Field(None, description="the git repository (bare or not); relative: to the working "
                             "directory; unset: hvfs settle --repo")
    branch: str = "main"
    dir: str = Field("", description="directory inside the repository the paths settle under; '': the root")
    author: str = Field("hvfs <hvfs@localhost>", description="author and committer, 'Name <email>'")
    message: str = Field("hvfs: settle", description="the commit message's first line")
    interval: float = Field(0.0, ge=0, description="seconds between the mount's settlements; 0: only hvfs settle")
    remote: str | None = Field(None, description="a repository path or URL each settlement is pushed to")
    paths: list[SettlePath] = Field(default_factory=list,
                                    description="default: every KV binding and stream binding, policy full")

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str) -> str:
        why = check_branch(v)
        if why:
            raise ValueError(why)
        return v

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        parts = [p for p in v.strip("/").split("/") if p]
        if any(p in (".", "..", ".git") for p in parts):
            raise ValueError(f"bad directory {v!r} (no '.', '..' or '.git' parts)")
        return "/".join(parts)

    @field_validator("author")
    @classmethod
    def _author(cls, v: str) -> str:
        if not _AUTHOR_RE.match(v):
            raise ValueError(f"bad author {v!r}: expected 'Name <email>'")
        return v

    @field_validator("message")
    @classmethod
    def _message(cls, v: str) -> str:
        if not v.strip() or "\0" in v:
            raise ValueError("the commit message cannot be empty or hold NUL")
        return v

    @field_validator("repo", "remote")
    @classmethod
    def _nonempty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("cannot be empty (leave it out instead)")
        return v

    @model_validator(mode="after")
    def _check(self) -> SettleConfig:
        if self.interval > 0 and self.repo is None:
            raise _At(("repo",), "a periodic settlement (interval > 0) needs repo")
        seen: dict[str, int] = {}
        for i, sp in enumerate(self.paths):
            if sp.path in seen:
                raise _At(("paths", i, "path"), f"path {sp.path} is already paths[{seen[sp.path]}]")
            seen[sp.path] = i
        return self


def _loc_str(loc: Loc) -> str:
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else str(x))
    return out


class ObjectBinding(BaseModel):
    """A mount path bound to an object store bucket (docs/objects.md): in ``bindings:`` an
    entry with ``storage: object`` (its bucket as ``bucket:`` or ``kv:``), kept here apart so
    that code about KV bindings never sees it. ``max_bytes`` .. ``replicas`` are the settings
    of a bucket hvfs creates; an existing bucket keeps its own."""

    model_config = ConfigDict(extra="forbid")

    path: str
    bucket: str
    storage: Literal["object"] = "object"
    content_addressed: bool = Field(False, description="objects named by the SHA-256 of their bytes, "
                                                       "added by writing into incoming/")
    create: bool = Field(True, description="create the bucket if it does not exist")
    read_only: bool = False
    max_bytes: int = Field(-1, description="bytes the bucket holds at most; -1: no limit")
    max_age: float = Field(0.0, ge=0, description="seconds; 0: objects never expire")
    replicas: int = Field(1, ge=1, le=5)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _norm_path(v)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET_RE.match(v):
            raise ValueError(f"bad bucket name {v!r} (allowed: letters, digits, '-', '_')")
        return v

    @field_validator("max_bytes")
    @classmethod
    def _size(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("-1 (no limit) or at least 1")
        return v


class MountConfig(BaseModel):
    """The mount config file. With no bindings the mount shows the raw view."""

    model_config = ConfigDict(extra="forbid")

    bindings: list[Binding] = Field(default_factory=list)
    streams: list[StreamBinding] = Field(default_factory=list)
    queues: list[QueueBinding] = Field(default_factory=list)
    objects: list[ObjectBinding] = Field(
        default_factory=list, description="object store bindings (written in bindings: with storage: object)")
    raw: bool = Field(True, description="also show kv/<bucket>/ for every bucket and streams/")
    writer: str | None = Field(None, description="the writer identity put on every write")
    meta: str | None = Field(None, description="where the mount shows its read-only _meta/ directory")
    settle: SettleConfig | None = Field(None, description="settlement of chosen paths to git (docs/settle.md)")
    nats: NatsConfig = Field(default_factory=NatsConfig,
                             description="how to reach NATS, below flags and NATS_* variables (docs/security.md)")

    @model_validator(mode="before")
    @classmethod
    def _object_bindings(cls, data: Any) -> Any:
        """``bindings:`` entries with ``storage: object`` are object bindings (``kv:`` may name
        the bucket): moved to ``objects`` before validation."""
        if not isinstance(data, dict) or not isinstance(data.get("bindings"), list):
            return data
        kv, obj = [], list(data.get("objects") or [])
        for b in data["bindings"]:
            if isinstance(b, dict) and b.get("storage") == "object":
                b = dict(b)
                if "kv" in b and "bucket" not in b:
                    b["bucket"] = b.pop("kv")
                obj.append(b)
            else:
                kv.append(b)
        return {**data, "bindings": kv, "objects": obj}

    @field_validator("writer")
    @classmethod
    def _writer(cls, v: str | None) -> str | None:
        if v is not None and not _WRITER_RE.match(v):
            raise ValueError(f"bad writer {v!r}: printable ASCII without spaces or ':', 1 to 128 characters")
        return v

    @field_validator("meta")
    @classmethod
    def _meta(cls, v: str | None) -> str | None:
        return None if v is None else _norm_path(v)

    @model_validator(mode="after")
    def _cross(self) -> MountConfig:
        """One place per path, refs to KV bindings, one setting per bucket and stream."""
        places: list[tuple[str, Loc]] = [(b.path, ("bindings", i, "path")) for i, b in enumerate(self.bindings)]
        places += [(s.path, ("streams", i, "path")) for i, s in enumerate(self.streams) if s.path is not None]
        places += [(q.path, ("queues", i, "path")) for i, q in enumerate(self.queues)]
        places += [(o.path, ("objects", i, "path")) for i, o in enumerate(self.objects)]
        if self.meta is not None:
            places.append((self.meta, ("meta",)))
        for j, (p, loc) in enumerate(places):
            top = p.split("/")[0]
            if self.raw and top in _RAW_DIRS:
                raise _At(loc, f"path {p} is in the raw view's {top}/ (choose another path, or raw: false)")
            for q, qloc in places[:j]:
                if p == q:
                    raise _At(loc, f"path {p} is already {_loc_str(qloc[:-1] or qloc)}'s")
                if p.startswith(q + "/") or q.startswith(p + "/"):
                    raise _At(loc, f"path {p} and {_loc_str(qloc[:-1] or qloc)}'s {q}: "
                                   "one binding cannot be inside another")
        kv_paths = {b.path for b in self.bindings}
        typed: list[tuple[Loc, _Typed]] = [(("bindings", i), b) for i, b in enumerate(self.bindings)]
        typed += [(("streams", i), s) for i, s in enumerate(self.streams)]
        for at, t in typed:
            for field, target in t.refs.items():
                if target not in kv_paths:
                    raise _At((*at, "refs", field), f"{target} is not the path of a KV binding")
        self._same("bindings", "kv", "bucket", ("history", "replicas", "max_value_size", "storage", "max_age"))
        self._same("streams", "stream", "stream", ("subjects", "max_age", "max_msg_size", "replicas", "storage"))
        if self.settle is not None:
            self.check_settle(self.settle)
        return self

    def check_settle(self, st: SettleConfig) -> None:
        """Each settled path is a KV or stream binding's; digest is for streams, overlay for typed KV.
        ValueError (an ``_At``, whose ``loc`` is below the config) otherwise."""
        kv = {b.path: b for b in self.bindings}
        streams = {s.path: s for s in self.streams if s.path is not None}
        policies = {sp.path: sp.policy for sp in st.paths}
        for i, sp in enumerate(st.paths):
            at: Loc = ("settle", "paths", i)
            if sp.path not in kv and sp.path not in streams:
                raise _At((*at, "path"), f"{sp.path} is not the path of a KV or stream binding")
            if sp.policy == "digest" and sp.path not in streams:
                raise _At((*at, "policy"), f"digest is for stream bindings; {sp.path} is a KV binding")
            if sp.policy == "overlay":
                b = kv.get(sp.path)
                if b is None or b.format == "raw":
                    raise _At((*at, "policy"), f"overlay is for typed KV bindings (an overlay schema); "
                                               f"{sp.path} is not one")
                target = b.refs.get("issue_id")
                if target is None:
                    raise _At((*at, "policy"), f"overlay: binding {sp.path} has no refs issue_id: the "
                                               "issues its overlays apply to")
                if kv[target].format == "raw":
                    raise _At((*at, "policy"), f"overlay: the issues at {target} are not typed")
                if policies.get(target, "never") != "full":
                    raise _At((*at, "policy"), f"overlay: the issues at {target} must settle with policy full")

    def _same(self, where: str, key: str, what: str, attrs: tuple[str, ...]) -> None:
        """Bindings of one bucket (stream) must agree on how it is created: there is one."""
        first: dict[str, int] = {}
        items: list[BaseModel] = getattr(self, where)
        for i, b in enumerate(items):
            j = first.setdefault(getattr(b, key), i)
            for a in attrs:
                mine, theirs = getattr(b, a), getattr(items[j], a)
                if isinstance(mine, list):  # subjects: a set
                    mine, theirs = sorted(mine), sorted(theirs)
                if mine != theirs:
                    raise _At((where, i, a), f"{what} {getattr(b, key)}: {a} {mine} differs from "
                                             f"{where}[{j}]'s {theirs} (one {what}, one setting)")


class _ConfigLoader(StrictLoader):
    allow_aliases = True  # an operator's file, never expanded into JSON: anchors save repetition


def _node_line(node: Node | None, loc: Loc) -> int:
    """The line (from 1) of the deepest node of ``loc`` the file has: where an error is."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for i, part in enumerate(loc):
        if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.value == str(part):
                    line = (k if i == len(loc) - 1 else v).start_mark.line + 1
                    node = v
                    break
            else:
                break
        else:
            break
    return line


def load_config(path: str | os.PathLike[str] | None) -> MountConfig:
    """Read and check a mount config; Invalid names the file, line and field of what is wrong."""
    if path is None:
        return MountConfig()
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Invalid(f"config {name}: {e}") from e
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        data: Any = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        line, col, what = yaml_problem(e)
        where = f"{name}:{line}" if line is not None else name
        raise Invalid(f"config {where}: {what}" + (f" (column {col})" if col else "")) from e
    finally:
        loader.dispose()
    try:
        config = MountConfig.model_validate({} if data is None else data)
    except ValidationError as e:
        errs = e.errors(include_url=False)
        out = []
        for err in errs[:5]:
            loc: Loc = tuple(err["loc"])
            exc = (err.get("ctx") or {}).get("error")
            if isinstance(exc, _At):
                loc += exc.loc
            where = _loc_str(loc)
            msg = err["msg"].removeprefix("Value error, ")
            out.append(f"config {name}:{_node_line(node, loc)}: " + (f"{where}: {msg}" if where else msg))
        more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
        raise Invalid("; ".join(out) + more) from e
    config.nats = config.nats.resolved(Path(name).absolute().parent)
    return config


def load_context(name: str | None) -> dict[str, str]:
    """Read a nats CLI context (``~/.config/nats/context/NAME.json``).

    With no name, the CLI's selected context (``context.txt``) if any.
    """
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "nats"
    if not name:
        try:
            # An unreadable config dir (another user's HOME) is no context chosen.
            name = (base / "context.txt").read_text().strip()
        except OSError:
            return {}
        if not name:
            return {}
    path = base / "context" / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Invalid(f"nats context {name!r}: {e}") from e
    return {k: v for k, v in raw.items() if isinstance(v, str) and v}
