"""The fleet coordination layer's entity types (seed sections 2 and 3) as pydantic models.

A typed binding validates what is written to its files against one of these
(or a ``module:Class`` model of the user's). Field order is the order a file
is rendered in. ``hvfs_fill`` names the fields the mount fills from where a
value is written, so that a writer need not repeat what the path already says
(and cannot contradict it):

    "name"    the file's name without its extension (the key's last token)
    "path:N"  the N-th directory below the binding root
    "writer"  the mount's writer identity
"""

from __future__ import annotations

import base64
import importlib
import secrets
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

from .errors import Invalid

__all__ = [
    "SCHEMAS", "SCHEMA_VERSION", "AgentId", "AgentSession", "Claim", "Comment", "ExternalLink", "Issue",
    "IssueId", "Overlay", "QueueEntry", "UtcDatetime", "new_id", "resolve_schema",
]

#: the version of the coordination schema, shown in _meta/schema-version.yml
SCHEMA_VERSION = "1"

IssueId = Annotated[str, StringConstraints(pattern=r"^is-[A-Za-z0-9_-]+$")]
AgentId = Annotated[str, StringConstraints(pattern=r"^ag-[A-Za-z0-9_-]+$")]


def _utc(v: datetime) -> datetime:
    # A time written without an offset is taken as UTC: the seed's files are all UTC.
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


def _z(v: datetime) -> str:
    # As few fraction digits as the value needs: "...10:30:00Z", "...10:30:00.250Z".
    spec = "seconds" if not v.microsecond else "milliseconds" if not v.microsecond % 1000 else "microseconds"
    return v.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


#: a datetime held in UTC and written as ISO 8601 with "Z" (as the seed's files are)
UtcDatetime = Annotated[datetime, AfterValidator(_utc), PlainSerializer(_z, return_type=str, when_used="json")]


def _now() -> datetime:
    # Milliseconds, as the seed's writers (JavaScript's toISOString) give them.
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def new_id(kind: str) -> str:
    """A fresh id such as ``cl-mfrggzdfmztwq2lk``: 80 random bits, lowercase base32."""
    return f"{kind}-" + base64.b32encode(secrets.token_bytes(10)).decode().lower()


class _Entity(BaseModel):
    # A typo in a field name must be refused, not stored beside the field it meant.
    model_config = ConfigDict(extra="forbid")

    hvfs_fill: ClassVar[dict[str, str]] = {}


class AgentSession(_Entity):
    """An agent's presence: a file that expires unless its heartbeat rewrites it (KV TTL)."""

    hvfs_fill: ClassVar[dict[str, str]] = {"id": "name"}

    type: Literal["ag"] = "ag"
    id: AgentId
    name: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    status: Literal["starting", "ready", "working", "paused", "stopping"] = "ready"
    last_heartbeat: UtcDatetime = Field(default_factory=_now)
    current_issue: IssueId | None = None
    started_at: UtcDatetime = Field(default_factory=_now)


class Issue(_Entity):
    """An issue: git-durable in the seed; here a KV value with history."""

    hvfs_fill: ClassVar[dict[str, str]] = {"id": "name"}

    type: Literal["is"] = "is"
    id: IssueId
    title: str = Field(min_length=1)
    status: Literal["open", "in_progress", "blocked", "review", "closed"] = "open"
    kind: Literal["bug", "feature", "task", "epic", "chore"] = "task"
    priority: int = Field(2, ge=0, le=4)
    assignee: str | None = None
    labels: list[str] = Field(default_factory=list)
    description: str = ""
    created_at: UtcDatetime = Field(default_factory=_now)
    updated_at: UtcDatetime = Field(default_factory=_now)


class Claim(_Entity):
    """Who holds an issue (claims/<issue>/owner.yml); expires unless renewed (KV TTL)."""

    hvfs_fill: ClassVar[dict[str, str]] = {"issue_id": "path:0"}

    type: Literal["cl"] = "cl"
    id: str = Field(default_factory=lambda: new_id("cl"), pattern=r"^cl-[A-Za-z0-9_-]+$")
    issue_id: IssueId
    agent_id: AgentId
    claimed_at: UtcDatetime = Field(default_factory=_now)
    claim_type: Literal["working", "reviewing", "editing"] = "working"


class Comment(_Entity):
    """A message of an issue's thread (threads/<issue>/<seq>): append-only, a stream message."""

    hvfs_fill: ClassVar[dict[str, str]] = {"issue_id": "path:0", "author": "writer"}

    type: Literal["cm"] = "cm"
    id: str = Field(default_factory=lambda: new_id("cm"), pattern=r"^cm-[A-Za-z0-9_-]+$")
    issue_id: IssueId
    author: str = Field(min_length=1)
    body: str = Field(min_length=1)
    created_at: UtcDatetime = Field(default_factory=_now)
    settle_policy: Literal["never", "digest", "full"] = "never"


class Overlay(_Entity):
    """Fast-changing fields that override an issue's durable ones for "now" queries."""

    hvfs_fill: ClassVar[dict[str, str]] = {"issue_id": "path:0"}

    type: Literal["ov"] = "ov"
    issue_id: IssueId
    overlay_status: str | None = None
    overlay_assignee: str | None = None
    last_activity: UtcDatetime = Field(default_factory=_now)
    #: issue fields a settlement to git takes from this overlay: ``status`` sets the
    #: settled issue's status to ``overlay_status`` (docs/settle.md, policy overlay)
    settle_fields: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _settle_fields(self) -> Overlay:
        for name in self.settle_fields:
            if f"overlay_{name}" not in type(self).model_fields:
                have = ", ".join(n.removeprefix("overlay_") for n in type(self).model_fields
                                 if n.startswith("overlay_"))
                raise ValueError(f"settle_fields: {name!r} has no overlay_{name} field (have: {have})")
        return self


class QueueEntry(_Entity):
    """A named list of issues (queues/_global/ready.yml); its id is the queue's name."""

    hvfs_fill: ClassVar[dict[str, str]] = {"id": "name"}

    type: Literal["qu"] = "qu"
    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    issues: list[IssueId] = Field(default_factory=list)
    updated_at: UtcDatetime = Field(default_factory=_now)


class ExternalLink(_Entity):
    """Where an issue lives in other trackers (links/<issue>/mapping.yml)."""

    hvfs_fill: ClassVar[dict[str, str]] = {"issue_id": "path:0"}

    type: Literal["lk"] = "lk"
    id: str = Field(default_factory=lambda: new_id("lk"), pattern=r"^lk-[A-Za-z0-9_-]+$")
    issue_id: IssueId
    github_issue: str | None = None
    github_pr: str | None = None
    linear_issue: str | None = None
    slack_thread: str | None = None


#: the built-in schemas a binding names with ``schema: NAME``
SCHEMAS: dict[str, type[BaseModel]] = {
    "agent": AgentSession,
    "issue": Issue,
    "claim": Claim,
    "comment": Comment,
    "overlay": Overlay,
    "queue": QueueEntry,
    "link": ExternalLink,
}


def resolve_schema(spec: str) -> type[BaseModel]:
    """The model a binding's ``schema`` names: a built-in name, or ``module:Class``."""
    if spec in SCHEMAS:
        return SCHEMAS[spec]
    if ":" not in spec:
        raise Invalid(f"unknown schema {spec!r}: built-in ones are {', '.join(SCHEMAS)}; "
                      "or name a pydantic model as module:Class")
    mod_name, _, cls_name = spec.partition(":")
    if not mod_name or not cls_name:
        raise Invalid(f"schema {spec!r}: expected module:Class")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # an import runs the module's code: any error is the schema's
        raise Invalid(f"schema {spec!r}: cannot import {mod_name}: {type(e).__name__}: {e}") from e
    obj: object = mod
    for part in cls_name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise Invalid(f"schema {spec!r}: {mod_name} has no {cls_name}") from None
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise Invalid(f"schema {spec!r}: {cls_name} is not a pydantic model (a BaseModel subclass)")
    return obj
