"""The embedded nats-server runs with JetStream sync_interval always, as the server itself reports.

Each test starts its own server with the monitoring port on (``-m``) and reads
``/varz``: ``jetstream.config.sync_always`` is what the running server uses,
whatever the config file says.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hvfs.server import EmbeddedServer, _jetstream_block, _split_config, free_port

from .helpers import RawNats

AUTH = "authorization { users = [ {user: admin, password: pw} ] }\n"


def varz(**kw: Any) -> tuple[dict[str, Any], EmbeddedServer]:
    """Start a server with ``kw``, return its /varz and the (stopped) server."""
    http = free_port()
    kw["extra_args"] = [*kw.get("extra_args", []), "-m", str(http)]
    srv = EmbeddedServer(kw.pop("store_dir"), **kw)
    with srv:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/varz", timeout=5) as r:
            return json.load(r), srv


def jetstream_config(v: dict[str, Any]) -> dict[str, Any]:
    return dict(v["jetstream"]["config"])


def test_embedded_server_syncs_every_write(tmp_path: Path):
    v, srv = varz(store_dir=tmp_path / "nats")
    assert jetstream_config(v)["sync_always"] is True
    assert jetstream_config(v)["store_dir"] == str(tmp_path / "nats" / "jetstream")
    assert v["host"] == "127.0.0.1"
    assert "sync_interval: always" in srv.config_path.read_text()


def test_sync_default_opts_out_and_writes_no_config(tmp_path: Path):
    v, srv = varz(store_dir=tmp_path / "nats", sync="default")
    assert not jetstream_config(v).get("sync_always")
    assert jetstream_config(v)["sync_interval"] == 120 * 10**9  # nats-server's 2 minutes
    assert not srv.config_path.exists()


def test_sync_interval_as_a_duration(tmp_path: Path):
    v, _ = varz(store_dir=tmp_path / "nats", sync="1s")
    assert not jetstream_config(v).get("sync_always")
    assert jetstream_config(v)["sync_interval"] == 10**9


@pytest.mark.parametrize("spelling", ["-c", "--config", "-config=", "--c="])
def test_a_callers_config_is_included_and_both_apply(tmp_path: Path, spelling: str):
    conf = tmp_path / "conf dir" / "auth.conf"  # a space, and another directory than the store
    conf.parent.mkdir()
    conf.write_text(AUTH)
    args = [spelling + str(conf)] if spelling.endswith("=") else [spelling, str(conf)]
    http = free_port()
    srv = EmbeddedServer(tmp_path / "nats", extra_args=[*args, "-m", str(http)])
    with srv:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/varz", timeout=5) as r:
            v = json.load(r)
        assert jetstream_config(v)["sync_always"] is True
        assert v["auth_required"] is True
        admin = RawNats(srv.url.replace("nats://", "nats://admin:pw@"))
        try:
            admin.create_bucket("b")
            assert admin.put("b", "k", b"v") == 1
        finally:
            admin.close()


def test_a_callers_jetstream_block_decides_sync_when_it_names_it(tmp_path: Path):
    conf = tmp_path / "js.conf"
    conf.write_text("jetstream {\n  max_memory_store: 64MB\n  sync_interval: always\n}\n")
    v, _ = varz(store_dir=tmp_path / "nats", extra_args=["-c", str(conf)])
    assert jetstream_config(v)["sync_always"] is True
    assert jetstream_config(v)["max_memory"] == 64 * 1024**2


def test_a_callers_jetstream_block_without_sync_is_refused(tmp_path: Path):
    """Its block would replace ours whole: say so rather than run without the sync."""
    conf = tmp_path / "js.conf"
    conf.write_text("# jetstream { sync_interval: always } in a comment does not count\n"
                    "jetstream: { max_memory_store: 64MB }\n")
    srv = EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(conf)])
    with pytest.raises(ValueError, match="sync_interval"):
        srv.start()
    assert srv.proc is None
    v, _ = varz(store_dir=tmp_path / "nats", extra_args=["-c", str(conf)], sync="default")
    assert jetstream_config(v)["max_memory"] == 64 * 1024**2  # opting out runs it as it is


def test_config_reading():
    assert _split_config(["-m", "8222", "-c", "a.conf", "--config=b.conf"]) == \
        (["-m", "8222"], Path("b.conf"))
    assert _split_config(["-DV"]) == (["-DV"], None)
    assert _jetstream_block(AUTH) is None
    assert _jetstream_block("accounts { A { jetstream: enabled } }\n") is None
    assert _jetstream_block("a: 1\njetstream {\n domain: x\n}\nb: 2\n") == "jetstream {\n domain: x\n}"
    assert _jetstream_block("jetstream: enabled\n") == "jetstream: enabled"
    assert _jetstream_block('{\n  "jetstream": {"max_mem": 1}\n}\n') == '  "jetstream": {"max_mem": 1}'
    routes = "cluster { routes: [nats://a:6222, nats://b:6222] } # a comment {\njetstream {}\n"
    assert _jetstream_block(routes) == "jetstream {}"


def test_a_bad_sync_value_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="sync"):
        EmbeddedServer(tmp_path, sync="sometimes")
