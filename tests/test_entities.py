"""Tier 1: the entity models and the codec of typed bindings (no NATS, no FUSE)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from hvfs.codec import EMPTY_REASON, Codec, Context, json_schema
from hvfs.entities import (
    SCHEMA_VERSION,
    SCHEMAS,
    AgentSession,
    Claim,
    Comment,
    ExternalLink,
    Issue,
    Overlay,
    QueueEntry,
    new_id,
    resolve_schema,
)
from hvfs.errors import Invalid

AGENT_YAML = b"""\
type: ag
id: ag-abc123
name: "Claude Agent 1"
status: working
current_issue: is-01hx5zzkbkactav9wevgemmvrz
last_heartbeat: "2026-01-20T10:30:00Z"
started_at: "2026-01-20T09:00:00Z"
capabilities:
  - code-review
  - bug-fix
  - documentation
"""


class Note(BaseModel):
    """A user's schema (module:Class): no hvfs_fill, extra fields allowed."""

    text: str
    n: int = 1


def _store_err(codec: Codec, data: bytes, ctx: Context | None = None) -> str:
    with pytest.raises(Invalid) as e:
        codec.store(data, ctx or Context("ag-7"))
    return e.value.reason


# -- models -----------------------------------------------------------------------


def test_schemas_table() -> None:
    assert set(SCHEMAS) == {"agent", "issue", "claim", "comment", "overlay", "queue", "link"}
    assert SCHEMA_VERSION == "1"
    assert SCHEMAS["agent"] is AgentSession and SCHEMAS["link"] is ExternalLink


def test_field_order_is_the_seeds() -> None:
    assert list(AgentSession.model_fields) == [
        "type", "id", "name", "capabilities", "status", "last_heartbeat", "current_issue", "started_at"]
    assert list(Issue.model_fields) == [
        "type", "id", "title", "status", "kind", "priority", "assignee", "labels", "description",
        "created_at", "updated_at"]
    assert list(Claim.model_fields) == ["type", "id", "issue_id", "agent_id", "claimed_at", "claim_type"]
    assert list(Comment.model_fields) == [
        "type", "id", "issue_id", "author", "body", "created_at", "settle_policy"]
    assert list(Overlay.model_fields) == ["type", "issue_id", "overlay_status", "overlay_assignee", "last_activity",
                                          "settle_fields"]
    assert list(QueueEntry.model_fields) == ["type", "id", "issues", "updated_at"]
    assert list(ExternalLink.model_fields) == [
        "type", "id", "issue_id", "github_issue", "github_pr", "linear_issue", "slack_thread"]


def test_fill_sources() -> None:
    assert AgentSession.hvfs_fill == {"id": "name"}
    assert Issue.hvfs_fill == {"id": "name"}
    assert QueueEntry.hvfs_fill == {"id": "name"}
    assert Claim.hvfs_fill == {"issue_id": "path:0"}
    assert Comment.hvfs_fill == {"issue_id": "path:0", "author": "writer"}
    assert Overlay.hvfs_fill == {"issue_id": "path:0"}
    assert ExternalLink.hvfs_fill == {"issue_id": "path:0"}
    assert "hvfs_fill" not in AgentSession.model_fields


def test_defaults() -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    a = AgentSession(id="ag-1")
    assert a.type == "ag" and a.status == "ready" and a.capabilities == [] and a.name is None
    assert a.last_heartbeat >= before and a.last_heartbeat.tzinfo is not None
    i = Issue(id="is-1", title="t")
    assert (i.status, i.kind, i.priority, i.labels, i.description) == ("open", "task", 2, [], "")
    c = Claim(issue_id="is-1", agent_id="ag-1")
    assert re.fullmatch(r"cl-[a-z2-7]{16}", c.id) and c.claim_type == "working"
    assert Claim(issue_id="is-1", agent_id="ag-1").id != c.id
    assert re.fullmatch(r"cm-[a-z2-7]{16}", Comment(issue_id="is-1", author="a", body="b").id)
    assert re.fullmatch(r"lk-[a-z2-7]{16}", ExternalLink(issue_id="is-1").id)
    assert Comment(issue_id="is-1", author="a", body="b").settle_policy == "never"
    assert re.fullmatch(r"qu-[a-z2-7]{16}", new_id("qu"))


@pytest.mark.parametrize(
    "model,data,loc",
    [
        (AgentSession, {"id": "agent-1"}, "id"),
        (AgentSession, {"id": "ag-1", "status": "sleeping"}, "status"),
        (AgentSession, {"id": "ag-1", "current_issue": "x-1"}, "current_issue"),
        (AgentSession, {"id": "ag-1", "type": "is"}, "type"),
        (AgentSession, {"id": "ag-1", "staus": "ready"}, "staus"),  # a typo is refused
        (Issue, {"id": "is-1", "title": ""}, "title"),
        (Issue, {"id": "is-1", "title": "t", "priority": 5}, "priority"),
        (Issue, {"id": "is-1", "title": "t", "kind": "story"}, "kind"),
        (Claim, {"issue_id": "is-1", "agent_id": "bob"}, "agent_id"),
        (Claim, {"issue_id": "is-1", "agent_id": "ag-1", "id": "xx-1"}, "id"),
        (Comment, {"issue_id": "is-1", "author": "a", "body": ""}, "body"),
        (QueueEntry, {"id": "a b"}, "id"),
        (QueueEntry, {"id": "ready", "issues": ["is-1", "ag-2"]}, "issues.1"),
        (Overlay, {"issue_id": "is-1", "last_activity": "yesterday"}, "last_activity"),
    ],
)
def test_model_refuses(model: type[BaseModel], data: dict[str, object], loc: str) -> None:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    assert loc in [".".join(str(x) for x in err["loc"]) for err in e.value.errors()]


def test_datetimes_are_utc_with_z() -> None:
    a = AgentSession.model_validate({"id": "ag-1", "started_at": "2026-01-20T11:30:00+01:00",
                                     "last_heartbeat": "2026-01-20T10:30:00.250"})
    out = a.model_dump(mode="json")
    assert out["started_at"] == "2026-01-20T10:30:00Z"
    assert out["last_heartbeat"] == "2026-01-20T10:30:00.250Z"  # no offset: taken as UTC
    t = datetime(2026, 1, 20, 10, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-5)))
    assert Overlay(issue_id="is-1", last_activity=t).model_dump(mode="json")["last_activity"] == \
        "2026-01-20T15:30:00.123456Z"
    assert AgentSession(id="ag-1").model_dump(mode="json")["started_at"].endswith("Z")


# -- resolve_schema ---------------------------------------------------------------


def test_resolve_builtin_and_module() -> None:
    assert resolve_schema("claim") is Claim
    assert resolve_schema("hvfs.entities:Issue") is Issue
    assert resolve_schema("tests.test_entities:Note") is Note


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("agents", "unknown schema 'agents'"),
        ("nosuchmodule_xyz:Foo", "cannot import nosuchmodule_xyz"),
        ("hvfs.entities:Nope", "has no Nope"),
        ("hvfs.entities:resolve_schema", "not a pydantic model"),
        ("hvfs.entities:", "expected module:Class"),
        (":Foo", "expected module:Class"),
    ],
)
def test_resolve_errors(spec: str, needle: str) -> None:
    with pytest.raises(Invalid) as e:
        resolve_schema(spec)
    assert needle in e.value.reason


# -- Codec.store ------------------------------------------------------------------


def test_store_agent_seed_file() -> None:
    c = Codec("yaml", AgentSession)
    assert c.suffix == ".yml" and Codec("json", None).suffix == ".json"
    stored = c.store(AGENT_YAML, Context("ag-abc123"))
    assert b" " not in stored.replace(b"Claude Agent 1", b"")  # compact
    d = json.loads(stored)
    assert list(d) == list(AgentSession.model_fields)  # the model's order, not the written one
    assert d["capabilities"] == ["code-review", "bug-fix", "documentation"]
    assert d["last_heartbeat"] == "2026-01-20T10:30:00Z"


def test_store_fills_defaults_and_drops_none() -> None:
    c = Codec("yaml", AgentSession)
    d = json.loads(c.store(b"name: null\nstatus: paused\n", Context("ag-7")))
    assert d["id"] == "ag-7" and d["type"] == "ag" and d["capabilities"] == []
    assert "name" not in d and "current_issue" not in d
    assert d["started_at"].endswith("Z") and d["last_heartbeat"].endswith("Z")


def test_store_unquoted_timestamp_and_unicode() -> None:
    c = Codec("yaml", Issue)
    stored = c.store("title: Über – 💥\ncreated_at: 2026-01-20T10:30:00Z\n".encode(), Context("is-1"))
    assert "Über – 💥".encode() in stored  # ensure_ascii=False
    assert json.loads(stored)["created_at"] == "2026-01-20T10:30:00Z"
    # a timestamp-looking value of a string field stays the string written
    q = json.loads(Codec("yaml", Issue).store(b"title: 2026-01-20\n", Context("is-1")))
    assert q["title"] == "2026-01-20"


def test_store_fill_from_context() -> None:
    claim = json.loads(Codec("yaml", Claim).store(b"agent_id: ag-abc123\n", Context("owner", ["is-42"])))
    assert claim["issue_id"] == "is-42" and claim["id"].startswith("cl-")
    cm = Codec("yaml", Comment, line=True)
    stored = cm.store(b"body: hi\n", Context("7", ["is-42"], "alice"))
    assert stored.endswith(b"}\n") and stored.count(b"\n") == 1
    d = json.loads(stored)
    assert (d["issue_id"], d["author"]) == ("is-42", "alice")
    q = json.loads(Codec("yaml", QueueEntry).store(b"issues: [is-1, is-2]\n", Context("ready", ["_global"])))
    assert q["id"] == "ready"


def test_store_fill_matching_value_is_fine() -> None:
    d = json.loads(Codec("yaml", AgentSession).store(b"id: ag-7\n", Context("ag-7")))
    assert d["id"] == "ag-7"


@pytest.mark.parametrize(
    "model,data,ctx,reason",
    [
        (AgentSession, b"id: ag-9\n", Context("ag-7"), "id ag-9 does not match the file name ag-7"),
        (Claim, b"issue_id: is-1\nagent_id: ag-1\n", Context("owner", ["is-42"]),
         "issue_id is-1 does not match the directory is-42"),
        (Comment, b"author: bob\nbody: x\n", Context("1", ["is-42"], "alice"),
         "author bob does not match the writer alice"),
    ],
)
def test_store_refuses_contradicting_context(model: type[BaseModel], data: bytes, ctx: Context,
                                             reason: str) -> None:
    assert _store_err(Codec("yaml", model), data, ctx) == reason


def test_store_without_context_value_leaves_field_to_the_model() -> None:
    # A claim written at the binding root has no directory to take issue_id from.
    assert _store_err(Codec("yaml", Claim), b"agent_id: ag-1\n", Context("owner")) == \
        "issue_id: Field required"
    d = json.loads(Codec("yaml", Claim).store(b"agent_id: ag-1\nissue_id: is-5\n", Context("owner")))
    assert d["issue_id"] == "is-5"


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"name: x\nstatus: [", None),  # checked by pattern below
        (b"a: b: c\n", "line 1, column 5: mapping values are not allowed here"),
        (b"id: ag-7\nname: x\n  bad: 1\n", "line 3, column 6: mapping values are not allowed here"),
        (b"- a\n- b\n", "expected a mapping of fields, got a list"),
        (b"hello\n", "expected a mapping of fields, got a string"),
        (b"42\n", "expected a mapping of fields, got a number"),
        (b"true\n", "expected a mapping of fields, got a boolean"),
        (b"", "empty: an entity needs its fields"),
        (b"  \n\n", "empty: an entity needs its fields"),
        (b"# only a comment\n", "empty: an entity needs its fields"),
        (b"name: a\nname: b\n", "line 2, column 1: duplicate key 'name'"),
        (b"name: x\ncapabilities: &c [a]\nx: *c\n", "line 3, column 4: alias *c not allowed: write the value out"),
        (b"name: !!binary aGk=\n", "line 1, column 7: !!binary is not JSON data"),
        (b"name: !!python/object:os.system x\n", None),
        (b"1: x\n", "line 1, column 1: a key must be a string, not 1"),
        (b"name: \xff\n", "not UTF-8: byte 0xff at offset 6"),
        (b"name: a\x00\n", "character 8: special characters are not allowed (#x0000)"),
        (b"status: sleeping\nstatuz: x\n",
         "status: Input should be 'starting', 'ready', 'working', 'paused' or 'stopping'; "
         "statuz: Extra inputs are not permitted (did you mean status?)"),
        (b"capabilities: [1]\n", "capabilities.0: Input should be a valid string"),
    ],
)
def test_store_error_reasons(data: bytes, reason: str | None) -> None:
    got = _store_err(Codec("yaml", AgentSession), data)
    if reason is not None:
        assert got == reason
    else:
        assert re.match(r"line \d+, column \d+: ", got), got


def test_store_reports_every_validation_error_capped() -> None:
    got = _store_err(Codec("yaml", Claim), b"{}", Context("x"))
    assert got == "issue_id: Field required; agent_id: Field required"
    many = "\n".join(f"field_{i:03}_with_a_long_name: 1" for i in range(100)).encode()
    got = _store_err(Codec("yaml", Claim), many, Context("x"))
    assert len(got) <= 520 and got.endswith("more)")


def test_store_json_format() -> None:
    c = Codec("json", Claim)
    stored = c.store(b'{"agent_id": "ag-1", "claim_type": "reviewing"}', Context("reviewers", ["is-9"]))
    d = json.loads(stored)
    assert d["claim_type"] == "reviewing" and d["issue_id"] == "is-9"
    assert _store_err(c, b'{"agent_id": "ag-1",}', Context("o", ["is-9"])).startswith("line 1, column 21: ")
    assert _store_err(c, b'{"a": 1, "a": 2}', Context("o", ["is-9"])) == "duplicate key 'a'"
    assert _store_err(c, b"[1]", Context("o", ["is-9"])) == "expected a mapping of fields, got a list"
    assert _store_err(c, b"null", Context("o", ["is-9"])) == "expected a mapping of fields, got null"
    assert _store_err(c, b'{"x": NaN}', Context("o", ["is-9"])) == "NaN is not a JSON number"
    assert _store_err(c, b"agent_id: ag-1", Context("o", ["is-9"])).startswith("line 1, column 1: ")


def test_yaml_format_accepts_json() -> None:
    c = Codec("yaml", Claim)
    a = json.loads(c.store(b'{"agent_id": "ag-1", "claimed_at": "2026-01-20T10:25:00Z"}', Context("o", ["is-1"])))
    assert a["agent_id"] == "ag-1"
    # read as JSON: an escaped surrogate pair is one character, 1e5 a number
    n = Codec("yaml", None)
    assert json.loads(n.store(b'{"s": "\\ud83d\\ude00", "f": 1e5}', Context("k"))) == {"s": "\U0001f600", "f": 1e5}
    # a YAML flow mapping is no JSON but still YAML
    assert n.store(b"{a: 1, b: [x]}", Context("k")) == b'{"a":1,"b":["x"]}'
    # in YAML too a surrogate pair escape is one character; a lone one is refused
    assert json.loads(n.store(b's: "\\ud83d\\ude00"', Context("k"))) == {"s": "\U0001f600"}
    assert _store_err(n, b's: "\\ud83d"').startswith("a lone surrogate escape")


def test_store_without_model_keeps_written_order() -> None:
    c = Codec("yaml", None)
    assert c.store(b"z: 1\na: [x, {b: null}]\nm: 2026-01-20\n", Context("k")) == \
        b'{"z":1,"a":["x",{"b":null}],"m":"2026-01-20"}'
    assert _store_err(c, b"- 1\n") == "expected a mapping of fields, got a list"
    assert _store_err(c, b"x: .nan\n").startswith("not JSON data: ")
    assert Codec("json", None, line=True).store(b'{"b": 1, "a": 2}', Context("k")) == b'{"b":1,"a":2}\n'


def test_raw_has_no_codec() -> None:
    with pytest.raises(ValueError):
        Codec("raw", None)


# -- Codec.show -------------------------------------------------------------------


def test_show_yaml_roundtrip() -> None:
    c = Codec("yaml", AgentSession)
    stored = c.store(AGENT_YAML, Context("ag-abc123"))
    shown, why = c.show(stored)
    assert why is None
    assert shown.startswith(b"type: ag\nid: ag-abc123\nname: Claude Agent 1\ncapabilities:\n- code-review\n")
    assert yaml.safe_load(shown) == json.loads(stored)
    assert c.store(shown, Context("ag-abc123")) == stored  # read-modify-write of an unchanged file


def test_show_json_roundtrip() -> None:
    c = Codec("json", Issue)
    stored = c.store(b'{"title": "Fix it", "labels": ["a"]}', Context("is-3"))
    shown, why = c.show(stored)
    assert why is None and shown.endswith(b"}\n") and b'\n  "type": "is",\n' in shown
    assert json.loads(shown) == json.loads(stored)
    assert c.store(shown, Context("is-3")) == stored


def test_show_orders_fields_and_adds_no_defaults() -> None:
    c = Codec("yaml", Claim)
    stored = b'{"agent_id":"ag-1","issue_id":"is-1"}'
    shown, why = c.show(stored)
    assert why is None
    assert shown == b"issue_id: is-1\nagent_id: ag-1\n"  # no id, no claimed_at "now"
    assert c.show(stored) == (shown, None)  # a pure function of the stored bytes


def test_show_unknown_keys_after_known_ones() -> None:
    shown, why = Codec("yaml", Note).show(b'{"extra":1,"n":2,"text":"t"}')
    assert why is None and shown == b"text: t\nn: 2\nextra: 1\n"
    shown, why = Codec("yaml", None).show(b'{"b":1,"a":{"y":1,"x":2}}')
    assert why is None and shown == b"b: 1\na:\n  y: 1\n  x: 2\n"


@pytest.mark.parametrize(
    "stored,reason",
    [
        (b"[1, 2]", "stored value: expected a mapping of fields, got a list"),
        (b"not json", "stored value: line 1, column 1: Expecting value"),
        (b"\xff\xfe", "stored value: not UTF-8: byte 0xff at offset 0"),
        (b'{"agent_id":"ag-1","issue_id":"is-1","claim_type":"x"}',
         "stored value: claim_type: Input should be 'working', 'reviewing' or 'editing'"),
        (b'{"agent_id":"ag-1"}', "stored value: issue_id: Field required"),
    ],
)
def test_show_invalid_stored_value_raw_with_reason(stored: bytes, reason: str) -> None:
    assert Codec("yaml", Claim).show(stored) == (stored, reason)


def test_show_empty() -> None:
    assert Codec("yaml", Claim).show(b"") == (b"", EMPTY_REASON)
    assert EMPTY_REASON == "empty value (a file being created, or not an entity)"


def test_show_multiline_body_reads_as_written() -> None:
    c = Codec("yaml", Comment, line=True)
    ctx = Context("1", ["is-42"], "alice")
    stored = c.store(b"body: |\n  first line\n  second: line\n", ctx)
    shown, why = c.show(stored)
    assert why is None and b"body: |\n  first line\n  second: line\n" in shown
    assert c.store(shown, ctx) == stored


_text = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(body=_text, name=st.one_of(st.none(), _text),
       caps=st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=20), max_size=4))
def test_roundtrip_property(body: str, name: str | None, caps: list[str]) -> None:
    """Any value the mount stores shows as a file that stores back to the same bytes."""
    for fmt in ("yaml", "json"):
        cm = Codec(fmt, Comment, line=True)
        ctx = Context("1", ["is-1"], "w")
        stored = cm.store(json.dumps({"body": body}).encode(), ctx)
        shown, why = cm.show(stored)
        assert why is None
        assert cm.store(shown, ctx) == stored
        assert json.loads(stored)["body"] == body
        ag = Codec(fmt, AgentSession)
        value = {"name": name, "capabilities": caps}
        stored = ag.store(json.dumps(value).encode(), Context("ag-1"))
        shown, why = ag.show(stored)
        assert why is None and ag.store(shown, Context("ag-1")) == stored


def test_json_schema() -> None:
    s = json.loads(json_schema(Claim))
    assert s["title"] == "Claim" and "agent_id" in s["required"]
    assert s["properties"]["claim_type"]["enum"] == ["working", "reviewing", "editing"]
    assert json_schema(Claim).endswith(b"}\n")
