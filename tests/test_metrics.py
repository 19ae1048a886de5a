"""The metrics registry (pure) and that .hvfs/status reads it (real mount)."""

from __future__ import annotations

import json

from hvfs.metrics import Metrics


def test_counters_gauges_groups():
    m = Metrics()
    m.counter("vfs.opens", "files opened")
    assert m.value("vfs.opens") == 0 and m.help["vfs.opens"] == "files opened"
    m.inc("vfs.opens")
    m.inc("vfs.opens", 2)
    m.peak("notifier.max_queue", 5)
    m.peak("notifier.max_queue", 3)
    held = [7]
    m.gauge("notifier.queue", lambda: held[0])
    held[0] = 9
    assert m.value("vfs.opens") == 3
    assert m.group("notifier") == {"max_queue": 5, "queue": 9}
    assert m.snapshot() == {"vfs.opens": 3, "notifier.max_queue": 5, "notifier.queue": 9}


def test_status_counts_what_the_mount_did(mnt, raw, bucket):
    before = json.loads(mnt.path(".hvfs", "status").read_text())
    p = mnt.path("kv", bucket, "counted")
    p.write_bytes(b"x")
    assert p.read_bytes() == b"x"
    after = json.loads(mnt.path(".hvfs", "status").read_text())
    assert after["counters"]["publishes"] >= before["counters"]["publishes"] + 1
    assert after["counters"]["opens"] >= before["counters"]["opens"] + 2
    assert after["nats"]["calls"] > before["nats"]["calls"]
    assert set(after["notifier"]) >= {"queued", "done", "failed", "coalesced", "max_queue", "queue"}
