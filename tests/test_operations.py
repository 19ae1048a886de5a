"""Operations (issue 12): the Prometheus endpoint, JSON logs, ``hvfs doctor``.

One mount of this module's config with ``--metrics`` and ``--log-json``;
the counters are scraped over HTTP while real tools (cat, echo, ls) use the
mount. ``hvfs doctor`` runs as a subprocess against the session's server
and against a port nobody listens on.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvfs.logs import JsonFormatter
from hvfs.metrics import Metrics, parse_listen
from hvfs.server import EmbeddedServer, free_port

from .helpers import Mount, RawNats, wait_for

CONFIG = """\
bindings:
  - path: plain
    kv: ops_plain
  - path: issues
    kv: ops_issues
    format: yaml
    schema: issue
"""
_ids = itertools.count()


@pytest.fixture(scope="module")
def om(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, int]]:
    """CONFIG mounted with --metrics on a free port and --log-json; (mount, port)."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")
    base = tmp_path_factory.mktemp("ops")
    cfg = base / "ops.yml"
    cfg.write_text(CONFIG)
    port = free_port()
    m = Mount(base / "m", server.url, "--config", str(cfg), "--writer", "ops",
              "--metrics", f"127.0.0.1:{port}", "--log-json")
    try:
        yield m.start(), port
    finally:
        m.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of ``name{labels}`` (labels a subset of the sample's), 0 when absent."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def moved(port: int, name: str, above: float, **labels: str) -> float:
    return wait_for(lambda: (v := sample(scrape(port), name, **labels)) > above and v,
                    10, f"{name}{labels} above {above}")


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=20)


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hvfs", "doctor", *args], capture_output=True, text=True,
                          timeout=60)


# -- the registry, pure ---------------------------------------------------------------------


def test_registry_exports_dotted_names_with_their_prometheus_names():
    m = Metrics()
    m.counter("vfs.conflicts", "lost CAS", "hvfs_cas_conflicts")
    m.counter("notifier.max_queue", "longest", "hvfs_notifier_queue_depth_max", peak=True)
    m.gauge("nats.calls", lambda: 7, "calls", counter=True)
    m.gauge("nats.connected", lambda: True, "up")
    m.gauge("vfs.keys", lambda: 1 // 0, "broken", "hvfs_keys")  # a failing read leaves the scrape whole
    m.labelled("fuse.requests", "requests", ["op"]).labels("lookup").inc(3)
    m.histogram("watch.lag_seconds", "lag")
    m.inc("vfs.conflicts", 2)
    m.peak("notifier.max_queue", 4)
    m.observe("watch.lag_seconds", 0.2)
    text = m.text().decode()
    assert "# TYPE hvfs_cas_conflicts_total counter" in text and sample(text, "hvfs_cas_conflicts_total") == 2
    assert "# TYPE hvfs_notifier_queue_depth_max gauge" in text
    assert sample(text, "hvfs_nats_calls_total") == 7 and sample(text, "hvfs_nats_connected") == 1
    assert "hvfs_keys" not in text
    assert sample(text, "hvfs_fuse_requests_total", op="lookup") == 3
    assert sample(text, "hvfs_watch_lag_seconds_count") == 1
    assert m.total("fuse.requests") == 3 and m.total("watch.lag_seconds") == 1
    # .hvfs/status's view is unchanged: dotted names, labelled families left out
    assert m.value("vfs.conflicts") == 2 and m.group("notifier") == {"max_queue": 4}


def test_listen_addresses():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("host", "host:0", "host:70000"):
        with pytest.raises(ValueError, match="--metrics"):
            parse_listen(bad)


def test_json_log_line_has_the_fields_and_extras():
    import logging

    rec = logging.LogRecord("hvfs.x", logging.WARNING, __file__, 1, "a %s\nb", ("thing",), None)
    rec.bucket = "b1"
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["level"] == "WARNING" and doc["logger"] == "hvfs.x" and doc["message"] == "a thing\nb"
    assert doc["bucket"] == "b1" and doc["time"].endswith("Z")


# -- a mount's endpoint ----------------------------------------------------------------------


def test_metrics_endpoint_counts_requests(om, raw: RawNats):
    m, port = om
    text = scrape(port)
    for name in ("hvfs_nats_connected", "hvfs_nats_calls_total", "hvfs_nats_errors_total",
                 "hvfs_nats_timeouts_total", "hvfs_nats_reconnects_total", "hvfs_cas_conflicts_total",
                 "hvfs_refused_writes_total", "hvfs_notifier_queue_depth", "hvfs_notifier_invalidations_total",
                 "hvfs_keys", "hvfs_inodes", "hvfs_open_handles"):
        assert re.search(rf"^{name} ", text, re.M), name
    assert sample(text, "hvfs_nats_connected") == 1
    before = {op: sample(text, "hvfs_fuse_requests_total", op=op) for op in ("lookup", "open", "read", "write")}
    calls = sample(text, "hvfs_nats_calls_total")
    d = m.path("plain")
    key = f"f{next(_ids)}"
    assert sh(f"echo hello > {key} && cat {key} && ls", d).returncode == 0
    for op, n in before.items():
        moved(port, "hvfs_fuse_requests_total", n, op=op)
    moved(port, "hvfs_fuse_request_seconds_count", 0, op="read")
    moved(port, "hvfs_nats_calls_total", calls)
    assert moved(port, "hvfs_keys", 0) >= 1


def test_watch_lag_and_invalidations_move_on_remote_changes(om, raw: RawNats):
    m, port = om
    text = scrape(port)
    lag, inval = sample(text, "hvfs_watch_lag_seconds_count"), sample(text, "hvfs_notifier_invalidations_total")
    key = f"r{next(_ids)}"
    raw.put("ops_plain", key, b"remote\n")
    wait_for(m.path("plain", key).exists, what=key)
    moved(port, "hvfs_watch_lag_seconds_count", lag)
    moved(port, "hvfs_notifier_invalidations_total", inval)


def test_cas_conflict_through_file_at_rev_is_counted(om, raw: RawNats):
    m, port = om
    key = f"c{next(_ids)}"
    rev = raw.put("ops_plain", key, b"base\n")
    d = m.path("plain")
    wait_for((d / key).exists, what=key)
    text = scrape(port)
    conflicts = sample(text, "hvfs_cas_conflicts_total")
    estale = sample(text, "hvfs_fuse_errors_total", errno="ESTALE")
    fd = os.open(d / f"{key}@{rev}", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"mine\n")
    raw.put("ops_plain", key, b"theirs\n")
    with pytest.raises(OSError) as ei:
        os.close(fd)
    assert ei.value.errno == errno.ESTALE
    moved(port, "hvfs_cas_conflicts_total", conflicts)
    moved(port, "hvfs_fuse_errors_total", estale, errno="ESTALE")
    status = json.loads(m.path(".hvfs", "status").read_text())
    assert status["counters"]["conflicts"] >= conflicts + 1


def test_refused_typed_write_is_counted(om):
    m, port = om
    refused = sample(scrape(port), "hvfs_refused_writes_total")
    fd = os.open(m.path("issues", f"is-ops{next(_ids)}.yml"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"title: [unclosed\n")
    with pytest.raises(OSError) as ei:
        os.close(fd)
    assert ei.value.errno == errno.EINVAL
    moved(port, "hvfs_refused_writes_total", refused)
    moved(port, "hvfs_fuse_errors_total", 0, errno="EINVAL")
    status = json.loads(m.path(".hvfs", "status").read_text())
    assert status["counters"]["refused"] >= refused + 1


def test_status_keeps_its_fields(om):
    m, _ = om
    doc = json.loads(m.path(".hvfs", "status").read_text())
    assert set(doc) >= {"connected", "server", "read_only", "writer", "msg_ttl", "bindings", "uptime_s",
                        "buckets", "streams", "messages", "queues", "keys", "inodes", "open_handles",
                        "nats", "counters", "conflicts", "errors_total", "notifier"}
    assert set(doc["nats"]) == {"calls", "errors", "timeouts", "reconnects", "last_error"}
    assert set(doc["counters"]) >= {"opens", "reads", "publishes", "conflicts", "changes_seen"}


def test_log_lines_are_json(om):
    m, _ = om
    m.path(".hvfs", "status").read_text()
    lines = [line for line in m.log_text().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    assert any(d["message"].startswith("mounted ") for d in docs)


def test_metrics_address_taken_stops_the_mount_with_the_reason(server: EmbeddedServer, tmp_path: Path):
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        m = Mount(tmp_path / "m", server.url, "--metrics", f"127.0.0.1:{port}")
        with pytest.raises(AssertionError, match="cannot serve metrics there"):
            m.start()
        m.stop()


# -- doctor ------------------------------------------------------------------------------------


def test_doctor_against_the_server_passes(server: EmbeddedServer, raw: RawNats, tmp_path: Path):
    raw.create_bucket("ops_doc", history=3)
    cfg = tmp_path / "c.yml"
    cfg.write_text("bindings:\n  - path: a\n    kv: ops_doc\n  - path: b\n    kv: ops_doc_new\n")
    p = doctor("--server", server.url, "--config", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert all(re.match(r"^(ok|warn|FAIL) ", line) for line in lines[:-1]), lines
    for what in ("/dev/fuse", "fusermount3", "reachable", "JetStream", "server version",
                 "per-message TTL", "direct get", "ops_doc: exists", "ops_doc_new: missing"):
        assert any(line.startswith("ok") and what in line for line in lines), (what, lines)


def test_doctor_names_a_contradicting_bucket(server: EmbeddedServer, raw: RawNats, tmp_path: Path):
    raw.create_bucket("ops_doc2", history=3)
    cfg = tmp_path / "c.yml"
    cfg.write_text("bindings:\n  - path: a\n    kv: ops_doc2\n    history: 5\n")
    p = doctor("--server", server.url, "--config", str(cfg))
    assert p.returncode == 1
    assert any(line.startswith("FAIL") and "history is 3" in line for line in p.stdout.splitlines()), p.stdout


def test_doctor_with_an_unreachable_server_fails_with_the_fix():
    p = doctor("--server", f"nats://127.0.0.1:{free_port()}", "--timeout", "1")
    assert p.returncode == 1
    fail = [line for line in p.stdout.splitlines() if line.startswith("FAIL")]
    assert fail and "not reachable" in fail[0] and "— check the URL" in fail[0], p.stdout


def test_doctor_without_a_server_checks_the_embedded_binary():
    p = doctor()
    assert p.returncode == 0, p.stdout
    assert any(line.startswith("ok") and "embedded nats-server" in line for line in p.stdout.splitlines())
