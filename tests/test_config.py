"""Tier 1: config file and nats CLI context parsing."""

import json
from pathlib import Path

import pytest

from hvfs.config import Binding, load_config, load_context
from hvfs.entities import Claim, Comment, Issue, QueueEntry
from hvfs.errors import Invalid


def test_config_bindings(tmp_path) -> None:
    p = tmp_path / "c.yml"
    p.write_text("bindings:\n  - path: /claims/\n    kv: fleet_claims\n    prefix: live\n")
    cfg = load_config(p)
    assert cfg.bindings[0].path == "claims"
    assert cfg.bindings[0].kv == "fleet_claims"
    assert cfg.bindings[0].prefix == "live"
    assert cfg.raw


@pytest.mark.parametrize(
    "body,needle",
    [
        ("bindings:\n  - path: x\n    kv: 'bad name'\n", "bad bucket name"),
        ("bindings:\n  - path: ..\n    kv: b\n", "bad binding path"),
        ("bindings:\n  - path: .hvfs\n    kv: b\n", "bad binding path"),
        ("bogus: 1\n", "bogus"),
        ("bindings: [\n", "config"),
    ],
)
def test_config_errors(tmp_path, body: str, needle: str) -> None:
    p = tmp_path / "c.yml"
    p.write_text(body)
    with pytest.raises(Invalid) as e:
        load_config(p)
    assert needle in e.value.reason


def test_context(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    d = tmp_path / "nats" / "context"
    d.mkdir(parents=True)
    (d / "prod.json").write_text(json.dumps({"url": "nats://a:4222", "creds": "/x.creds", "token": ""}))
    assert load_context("prod") == {"url": "nats://a:4222", "creds": "/x.creds"}
    assert load_context(None) == {}
    (tmp_path / "nats" / "context.txt").write_text("prod\n")
    assert load_context(None)["url"] == "nats://a:4222"
    with pytest.raises(Invalid):
        load_context("missing")


# -- typed bindings, streams, cross-checks --------------------------------------------


def _load(tmp_path, body: str):
    p = tmp_path / "c.yml"
    p.write_text(body)
    return load_config(p)


def _err(tmp_path, body: str) -> str:
    with pytest.raises(Invalid) as e:
        _load(tmp_path, body)
    return e.value.reason


def test_binding_defaults(tmp_path) -> None:
    b = _load(tmp_path, "bindings:\n  - path: a\n    kv: b\n").bindings[0]
    assert (b.format, b.schema_name, b.ttl, b.read_only, b.refs) == ("raw", None, None, False, {})
    assert (b.history, b.replicas, b.max_value_size, b.storage, b.max_age) == (10, 1, -1, "file", 0)
    assert b.schema_model is None and b.codec() is None


def test_binding_typed(tmp_path) -> None:
    cfg = _load(tmp_path, """\
bindings:
  - path: claims
    kv: fleet_claims
    format: json
    schema: claim
    ttl: 300
    read_only: true
    refs: {issue_id: /issues/}
    history: 64
    replicas: 3
    max_value_size: 4096
    storage: memory
    max_age: 3600
  - path: issues
    kv: fleet_issues
    format: yaml
    schema: hvfs.entities:Issue
""")
    b, i = cfg.bindings
    assert b.schema_name == "claim" and b.schema_model is Claim
    assert b.refs == {"issue_id": "issues"}
    assert (b.ttl, b.read_only, b.history, b.replicas, b.max_value_size, b.storage, b.max_age) == \
        (300, True, 64, 3, 4096, "memory", 3600)
    codec = b.codec()
    assert codec is not None and codec.suffix == ".json" and codec.model is Claim and not codec.line
    assert i.schema_model is Issue
    assert b.model_dump(by_alias=True)["schema"] == "claim"


def test_binding_by_field_name() -> None:
    b = Binding(path="a", kv="b", format="yaml", schema="agent")
    assert b.schema_name == "agent"
    assert Binding(path="a", kv="b", format="yaml", schema_name="queue").schema_model is QueueEntry
    assert Binding(path="a", kv="b", format="yaml").codec() is not None  # any mapping


def test_stream_binding(tmp_path) -> None:
    cfg = _load(tmp_path, """\
streams:
  - path: threads
    stream: fleet_threads
    prefix: threads
    format: yaml
    schema: comment
  - stream: fleet_work
    subjects: ["work.>", "jobs.*.new"]
    max_msg_size: 1024
""")
    t, w = cfg.streams
    assert t.subjects == ["threads.>"] and t.schema_model is Comment
    assert "subjects" not in t.model_fields_set and "subjects" in w.model_fields_set  # derived vs given
    codec = t.codec()
    assert codec is not None and codec.line and codec.model is Comment
    assert w.path is None and w.prefix == "" and w.format == "raw" and w.codec() is None
    assert w.max_msg_size == 1024 and w.create and w.max_age == 0


@pytest.mark.parametrize(
    "subjects,prefix,ok",
    [
        (["threads.>"], "threads", True),
        (["threads.*"], "threads", True),
        (["*.>"], "a.b", True),
        ([">"], "a", True),
        (["a.*.c"], "a.x", True),
        (["threads"], "threads", False),  # nothing below the prefix
        (["other.>"], "threads", False),
        (["a.b"], "a.b.c", False),
    ],
)
def test_stream_prefix_covered(tmp_path, subjects: list[str], prefix: str, ok: bool) -> None:
    body = f"streams:\n  - path: p\n    stream: s\n    prefix: {prefix}\n    subjects: {json.dumps(subjects)}\n"
    if ok:
        assert _load(tmp_path, body).streams[0].prefix == prefix
    else:
        assert "no subject of the stream is below prefix" in _err(tmp_path, body)


@pytest.mark.parametrize(
    "body,reason",
    [
        # field errors name the line of the field
        ("bindings:\n  - path: a\n    kv: b\n  - path: c\n    kv: d\n    ttl: 0\n",
         "config {p}:6: bindings[1].ttl: Input should be greater than or equal to 1"),
        ("bindings:\n  - path: a\n    kv: b\n    history: 65\n",
         "config {p}:4: bindings[0].history: Input should be less than or equal to 64"),
        ("bindings:\n  - path: a\n    kv: b\n    max_value_size: 0\n",
         "config {p}:4: bindings[0].max_value_size: -1 (no limit) or at least 1"),
        ("bindings:\n  - path: a\n    kv: b\n    format: toml\n",
         "config {p}:4: bindings[0].format: Input should be 'raw', 'yaml' or 'json'"),
        ("bindings:\n  - path: a\n    kv: b\n    storage: disk\n",
         "config {p}:4: bindings[0].storage: Input should be 'file' or 'memory'"),
        ("bindings:\n  - path: a\n    kv: b\n    schma: agent\n",
         "config {p}:4: bindings[0].schma: Extra inputs are not permitted"),
        # a missing field: the line of its binding
        ("raw: true\nbindings:\n  - path: a\n", "config {p}:3: bindings[0].kv: Field required"),
        ("bindings:\n  - path: a\n    kv: b\n    schema: agent\n",
         "config {p}:4: bindings[0].schema: schema needs format yaml or json"),
        ("bindings:\n  - path: a\n    kv: b\n    format: yaml\n    schema: agnt\n",
         "config {p}:5: bindings[0].schema: unknown schema 'agnt'"),
        ("bindings:\n  - path: a\n    kv: b\n    format: yaml\n    schema: nosuchmod_q:X\n",
         "config {p}:5: bindings[0].schema: schema 'nosuchmod_q:X': cannot import nosuchmod_q"),
        ("bindings:\n  - path: a\n    kv: b\n    refs: {x: a}\n",
         "config {p}:4: bindings[0].refs: refs need format yaml or json"),
        ("bindings:\n  - path: a\n    kv: b\n    format: yaml\n    schema: claim\n    refs:\n      isue_id: a\n",
         "config {p}:7: bindings[0].refs.isue_id: isue_id is not a field of schema claim"),
        ("writer: 'a:b'\n", "config {p}:1: writer: bad writer 'a:b'"),
        ("writer: ''\n", "config {p}:1: writer: bad writer ''"),
        ("streams:\n  - stream: s\n", "config {p}:2: streams[0].subjects: subjects are required"),
        ("streams:\n  - stream: s\n    prefix: a.*\n", "config {p}:3: streams[0].prefix: bad subject prefix"),
        ("streams:\n  - stream: s\n    prefix: a/b\n", "config {p}:3: streams[0].prefix: bad subject prefix"),
        ("streams:\n  - stream: s\n    subjects: ['a.>.b']\n",
         "config {p}:3: streams[0].subjects[0]: 'a.>.b': '>' can only be the last token"),
        ("streams:\n  - stream: s\n    subjects: ['a..b']\n", "config {p}:3: streams[0].subjects[0]: 'a..b': empty token"),
        ("streams:\n  - stream: s\n    subjects:\n      - a.>\n      - a.b*\n",
         "config {p}:5: streams[0].subjects[1]: 'a.b*': a wildcard ('*' or '>') must be a whole token"),
        ("streams:\n  - stream: s\n    subjects: ['a b']\n",
         "config {p}:3: streams[0].subjects[0]: 'a b': white space or a control character"),
        ("streams:\n  - stream: 'x.y'\n    subjects: [a]\n", "config {p}:2: streams[0].stream: bad stream name"),
        # cross-checks point at the binding's line
        ("bindings:\n  - path: a\n    kv: b\n  - path: /a/\n    kv: c\n",
         "config {p}:4: bindings[1].path: path a is already bindings[0]'s"),
        ("bindings:\n  - path: a\n    kv: b\nqueues:\n  - path: a/q\n    stream: s\n    durable: d\n",
         "config {p}:5: queues[0].path: path a/q and bindings[0]'s a: one binding cannot be inside another"),
        ("streams:\n  - path: t/x\n    stream: s\n    prefix: t\nbindings:\n  - path: t\n    kv: b\n",
         "config {p}:2: streams[0].path: path t/x and bindings[0]'s t"),
        ("meta: a\nbindings:\n  - path: a\n    kv: b\n", "config {p}:1: meta: path a is already bindings[0]'s"),
        ("bindings:\n  - path: kv/x\n    kv: b\n", "config {p}:2: bindings[0].path: path kv/x is in the raw view's kv/"),
        ("bindings:\n  - path: a\n    kv: b\n    format: yaml\n    refs: {issue_id: issues}\n",
         "config {p}:5: bindings[0].refs.issue_id: issues is not the path of a KV binding"),
        ("streams:\n  - path: t\n    stream: s\n    prefix: t\n    format: yaml\n    refs: {issue_id: w}\n"
         "queues:\n  - path: w\n    stream: s\n    durable: d\n",
         "config {p}:6: streams[0].refs.issue_id: w is not the path of a KV binding"),
        ("bindings:\n  - path: a\n    kv: b\n  - path: c\n    kv: b\n    replicas: 3\n",
         "config {p}:6: bindings[1].replicas: bucket b: replicas 3 differs from bindings[0]'s 1"),
        ("streams:\n  - stream: s\n    subjects: [a]\n  - stream: s\n    subjects: [b]\n",
         "config {p}:5: streams[1].subjects: stream s: subjects ['b'] differs from streams[0]'s ['a']"),
        # YAML errors with their line
        ("bindings:\n  - path: a\n   kv: b\n", "config {p}:3: expected <block end>"),
        ("raw: true\nraw: false\n", "config {p}:2: duplicate key 'raw'"),
        ("bindings: [\n", "config {p}:2: "),
        ("- a\n", "config {p}:1: Input should be a valid dictionary"),
    ],
)
def test_config_errors_with_lines(tmp_path, body: str, reason: str) -> None:
    got = _err(tmp_path, body)
    assert got.startswith(reason.format(p=tmp_path / "c.yml")), got


def test_config_reports_several_errors(tmp_path) -> None:
    got = _err(tmp_path, "bindings:\n  - path: a\n    kv: b\n    ttl: 0\n    history: 0\n")
    assert ":4: bindings[0].ttl" in got and ":5: bindings[0].history" in got


def test_config_anchors_and_merge_keys(tmp_path) -> None:
    """An operator's file may share settings through anchors (entity files may not)."""
    cfg = _load(tmp_path, (
        "bindings:\n"
        "  - &shared\n"
        "    path: a\n"
        "    kv: shared\n"
        "    history: 5\n"
        "  - <<: *shared\n"
        "    path: b\n"
        "raw: false\n"
        "meta: /_meta/\n"
        "writer: alice@host\n"
    ))
    assert [(b.path, b.kv, b.history) for b in cfg.bindings] == [("a", "shared", 5), ("b", "shared", 5)]
    assert cfg.meta == "_meta" and cfg.writer == "alice@host" and not cfg.raw


def test_kv_path_allowed_without_raw(tmp_path) -> None:
    assert _load(tmp_path, "raw: false\nbindings:\n  - path: kv/x\n    kv: b\n").bindings[0].path == "kv/x"


def test_queue_on_declared_stream(tmp_path) -> None:
    cfg = _load(tmp_path, "streams:\n  - stream: w\n    subjects: ['work.>']\n"
                          "queues:\n  - path: work\n    stream: w\n    durable: workers\n")
    assert cfg.queues[0].stream == cfg.streams[0].stream == "w"


def test_example_fleet_loads() -> None:
    cfg = load_config(Path(__file__).parent.parent / "examples" / "fleet.yml")
    assert cfg.meta == "_meta" and cfg.raw and cfg.writer is None
    kinds = {b.path: (b.kv, b.format, b.schema_name) for b in cfg.bindings}
    assert kinds == {
        "agents": ("fleet_agents", "yaml", "agent"),
        "claims": ("fleet_claims", "yaml", "claim"),
        "overlays": ("fleet_overlays", "yaml", "overlay"),
        "queues": ("fleet_queues", "yaml", "queue"),
        "links": ("fleet_links", "yaml", "link"),
        "issues": ("fleet_issues", "yaml", "issue"),
    }
    by = {b.path: b for b in cfg.bindings}
    assert by["agents"].ttl == 30 and by["claims"].ttl == 300 and by["issues"].history == 64
    assert by["claims"].refs == by["overlays"].refs == by["links"].refs == {"issue_id": "issues"}
    threads, work = cfg.streams
    assert (threads.path, threads.stream, threads.prefix, threads.schema_model) == \
        ("threads", "fleet_threads", "threads", Comment)
    assert threads.max_age == 30 * 86400 and threads.refs == {"issue_id": "issues"}
    assert (work.path, work.stream, work.subjects) == (None, "fleet_work", ["work.>"])
    assert [(q.path, q.stream, q.durable) for q in cfg.queues] == [("work", "fleet_work", "workers")]


# -- the nats: section and where each connection setting comes from -------------------------------


def test_nats_section_paths_are_the_config_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = tmp_path / "etc" / "c.yml"
    p.parent.mkdir()
    p.write_text("nats:\n  url: nats://a:4222, nats://b:4222\n  creds: keys/agent.creds\n"
                 "  nkey: ~/agent.nk\n  tls_ca: /etc/ssl/ca.pem\n  user: alice\n")
    n = load_config(p).nats
    assert n.url == ["nats://a:4222", "nats://b:4222"]
    assert n.creds == str(tmp_path / "etc" / "keys" / "agent.creds")
    assert n.nkey == str(tmp_path / "home" / "agent.nk")
    assert n.tls_ca == "/etc/ssl/ca.pem"
    assert n.user == "alice" and n.password is None
    p.write_text("nats:\n  url: [nats://a:4222]\n  password: s3cr3t\n")
    cfg = load_config(p)
    assert cfg.nats.url == ["nats://a:4222"]
    assert _secret(cfg.nats.password) == "s3cr3t" and "s3cr3t" not in repr(cfg)
    assert load_config(None).nats.url == []


@pytest.mark.parametrize(
    "body,needle",
    [
        ("nats:\n  url: nats://a\n  ca: x.pem\n", "c.yml:3: nats.ca: Extra inputs are not permitted"),
        ("nats:\n  url:\n    - nats://a\n    - ''\n", "c.yml:4: nats.url[1]: a URL cannot be empty"),
        ("nats:\n  token: ''\n", "c.yml:2: nats.token: cannot be empty (leave it out instead)"),
        ("nats:\n  password: [s3cr3t]\n", "c.yml:2: nats.password: Input should be a valid string"),
    ],
)
def test_nats_section_errors(tmp_path, body: str, needle: str) -> None:
    p = tmp_path / "c.yml"
    p.write_text(body)
    with pytest.raises(Invalid) as e:
        load_config(p)
    assert needle in e.value.reason
    assert "s3cr3t" not in e.value.reason


def _secret(v) -> str | None:
    return None if v is None else v.get_secret_value()


def _connect(argv: list[str]):
    from hvfs.cli import _parser, connect_options

    return connect_options(_parser().parse_args(["mount", "/mnt", *argv]))


def test_connect_options_flags_then_env_then_config_then_context(tmp_path, monkeypatch) -> None:
    for var in ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS", "NATS_NKEY",
                "NATS_CA", "NATS_CERT", "NATS_KEY", "NATS_CONTEXT", "HVFS_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ctx = tmp_path / "xdg" / "nats" / "context"
    ctx.mkdir(parents=True)
    (ctx / "ops.json").write_text(json.dumps({
        "url": "nats://ctx:4222", "user": "ctx-user", "password": "ctx-pw", "token": "ctx-token",
        "creds": "~/ctx.creds", "nkey": "ctx.nk", "ca": "ctx-ca.pem", "cert": "ctx.pem", "key": "ctx.key"}))
    (ctx / "other.json").write_text(json.dumps({"nkey": "/other.nk"}))
    cfg = tmp_path / "c.yml"
    cfg.write_text("nats:\n  context: ops\n  url: [nats://cfg:4222]\n  user: cfg-user\n  password: cfg-pw\n"
                   "  creds: cfg.creds\n")
    # the context alone (named by the config)
    o = _connect(["--config", str(cfg)])
    assert o.servers == ["nats://cfg:4222"]
    assert (o.user, _secret(o.password), _secret(o.token)) == ("cfg-user", "cfg-pw", "ctx-token")
    assert o.creds == str(tmp_path / "cfg.creds")
    assert o.nkey == "ctx.nk" and o.tls_ca == "ctx-ca.pem" and (o.tls_cert, o.tls_key) == ("ctx.pem", "ctx.key")
    # HVFS_CONFIG is the mount's --config too
    monkeypatch.setenv("HVFS_CONFIG", str(cfg))
    assert _connect([]).user == "cfg-user"
    monkeypatch.delenv("HVFS_CONFIG")
    # without the config: the context's own, ~ expanded as the nats CLI does
    o = _connect(["--context", "ops"])
    assert o.servers == ["nats://ctx:4222"] and o.creds == str(tmp_path / "home" / "ctx.creds")
    # the environment over the config
    monkeypatch.setenv("NATS_URL", "nats://env1:4222,nats://env2:4222")
    monkeypatch.setenv("NATS_PASSWORD", "env-pw")
    monkeypatch.setenv("NATS_CONTEXT", "other")
    o = _connect(["--config", str(cfg)])
    assert o.servers == ["nats://env1:4222", "nats://env2:4222"]
    assert (o.user, _secret(o.password), o.nkey, o.token) == ("cfg-user", "env-pw", "/other.nk", None)
    # flags over everything
    o = _connect(["--config", str(cfg), "--context", "ops", "-s", "nats://flag:4222", "--password", "flag-pw",
                  "--tlsca", "flag-ca.pem"])
    assert o.servers == ["nats://flag:4222"] and _secret(o.password) == "flag-pw" and o.tls_ca == "flag-ca.pem"
    assert _secret(o.token) == "ctx-token"
    assert "flag-pw" not in repr(o) and "ctx-token" not in repr(o)


def test_secret_arguments_in_every_form_argparse_takes() -> None:
    from hvfs.cli import _secret_args

    secrets = [(("--password",), "pw", "NATS_PASSWORD"), (("--token",), "tk", "NATS_TOKEN"),
               (("--server", "-s"), "nats://u:pw@h", "NATS_URL")]
    args = ["mount", "/mnt", "--password", "pw", "--tok=tk", "-snats://u:pw@h", "--user", "alice",
            "--pass", "pw", "--server=nats://u:pw@h", "-s", "nats://u:pw@h", "--", "--password"]
    assert [(i, n) for i, n, _ in _secret_args(args, secrets)] == [(2, 2), (4, 1), (5, 1), (8, 2), (10, 1), (11, 2)]
    assert [v for _, _, v in _secret_args(args, secrets)][:2] == ["pw", "tk"]
    assert _secret_args(["mount", "/mnt", "--timeout", "2", "--tlsca", "x"], secrets) == []


def test_a_bad_config_fails_the_connection_but_not_doctor(tmp_path, monkeypatch) -> None:
    """hvfs doctor reports a bad config as one of its checks, with the connection made without it."""
    from hvfs.cli import _parser, connect_options

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for var in ("NATS_URL", "NATS_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "c.yml"
    cfg.write_text("nats:\n  url: nats://a:4222\n  bogus: 1\n")
    with pytest.raises(Invalid, match=r"c.yml:3: nats.bogus: Extra inputs"):
        connect_options(_parser().parse_args(["mount", "/mnt", "--config", str(cfg)]))
    assert connect_options(_parser().parse_args(["doctor", "--config", str(cfg)])).servers == []
