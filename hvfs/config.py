"""Connection settings and the mount config file (YAML, validated by pydantic).

Connection settings follow the nats CLI: flags, then NATS_* environment
variables, then a context file (NATS ADR-21) named by --context/NATS_CONTEXT
or the CLI's selected context.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import Invalid

__all__ = ["Binding", "ConnectOptions", "MountConfig", "QueueBinding", "load_config", "load_context"]

_BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_PREFIX_RE = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")


class ConnectOptions(BaseModel):
    """How to reach NATS; empty ``servers`` means start an embedded server."""

    model_config = ConfigDict(extra="forbid")

    servers: list[str] = Field(default_factory=list)
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = Field(2.0, gt=0, le=60, description="bound on every NATS call, seconds")


class Binding(BaseModel):
    """A mount path bound to a KV bucket, optionally under a key prefix."""

    model_config = ConfigDict(extra="forbid")

    path: str
    kv: str
    prefix: str = ""
    create: bool = Field(True, description="create the bucket if it does not exist")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        parts = [p for p in v.strip("/").split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or parts[0] == ".hvfs":
            raise ValueError(f"bad binding path {v!r}")
        return "/".join(parts)

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

    _path = field_validator("path")(Binding._path.__func__)  # type: ignore[attr-defined]

    @field_validator("stream", "durable")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _BUCKET_RE.match(v):
            raise ValueError(f"bad stream or consumer name {v!r}")
        return v


class MountConfig(BaseModel):
    """The mount config file. With no bindings the mount shows the raw view."""

    model_config = ConfigDict(extra="forbid")

    bindings: list[Binding] = Field(default_factory=list)
    queues: list[QueueBinding] = Field(default_factory=list)
    raw: bool = Field(True, description="also show kv/<bucket>/ for every bucket")


def load_config(path: str | os.PathLike[str] | None) -> MountConfig:
    if path is None:
        return MountConfig()
    try:
        data: Any = yaml.safe_load(Path(path).read_text()) or {}
        return MountConfig.model_validate(data)
    except (OSError, yaml.YAMLError) as e:
        raise Invalid(f"config {path}: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise Invalid(f"config {path}: {where}: {first['msg']}") from e


def load_context(name: str | None) -> dict[str, str]:
    """Read a nats CLI context (``~/.config/nats/context/NAME.json``).

    With no name, the CLI's selected context (``context.txt``) if any.
    """
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "nats"
    if not name:
        sel = base / "context.txt"
        if not sel.exists():
            return {}
        name = sel.read_text().strip()
        if not name:
            return {}
    path = base / "context" / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Invalid(f"nats context {name!r}: {e}") from e
    return {k: v for k, v in raw.items() if isinstance(v, str) and v}
