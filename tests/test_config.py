"""Tier 1: config file and nats CLI context parsing."""

import json

import pytest

from hvfs.config import load_config, load_context
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
