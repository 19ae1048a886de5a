"""Durable consumers as work queues: take, work, rm (ack)."""

import errno
import os
import threading
import time

import pytest

from .helpers import Mount, add_stream, publish, wait_for


@pytest.fixture
def work(server, raw, tmp_path):
    """A stream, and two mounts (two agents' hosts) sharing one durable consumer."""
    name = f"W{os.getpid()}{len(list(tmp_path.parent.iterdir()))}"
    add_stream(raw, name, [f"{name.lower()}.>"])
    cfg = tmp_path / "q.yml"
    cfg.write_text(f"queues:\n  - path: queue\n    stream: {name}\n    durable: workers\n"
                   f"    ack_wait: 3\n    max_held: 3\n")
    mounts = [Mount(tmp_path / f"m{i}", server.url, "--config", str(cfg)).start() for i in range(2)]
    yield name, mounts
    for m in mounts:
        m.stop()
    try:
        raw.run(raw.js.delete_stream(name))
    except Exception:
        pass


def test_take_read_rm(raw, work):
    name, (a, b) = work
    seq = publish(raw, f"{name.lower()}.jobs", b"job 1")
    q = [a.path("queue"), b.path("queue")]
    held = wait_for(lambda: [p / n for p in q for n in os.listdir(p)], what="delivered")
    assert len(held) == 1 and held[0].name == str(seq)
    assert held[0].read_bytes() == b"job 1"
    assert held[0].read_bytes() == b"job 1"  # reading does not ack
    with pytest.raises(OSError) as e:
        held[0].write_bytes(b"x")
    assert e.value.errno == errno.EPERM
    os.unlink(held[0])
    info = raw.run(raw.js.consumer_info(name, "workers"))
    assert info.num_ack_pending == 0 and info.num_pending == 0


def test_unacked_is_redelivered(raw, work):
    name, (a, b) = work
    publish(raw, f"{name.lower()}.jobs", b"slow job")
    q = [a.path("queue"), b.path("queue")]
    first = wait_for(lambda: [p / n for p in q for n in os.listdir(p)], what="delivered")[0]
    # left alone: it leaves this mount before the ack wait ends, and comes back
    wait_for(lambda: not first.exists(), timeout=6, what="released")
    again = wait_for(lambda: [p / n for p in q for n in os.listdir(p)], timeout=8, what="redelivered")
    assert again[0].name == first.name
    out = os.getxattr(again[0], "user.hvfs.deliveries")
    assert int(out) >= 2
    os.unlink(again[0])


def test_concurrent_agents_process_every_message_once(raw, work):
    name, mounts = work
    n = 40
    seqs = {publish(raw, f"{name.lower()}.jobs", f"job {i}".encode()) for i in range(n)}
    done: list[int] = []
    lock = threading.Lock()

    deadline = time.monotonic() + 60

    def agent(m: Mount) -> None:
        qd = m.path("queue")
        while time.monotonic() < deadline:
            with lock:
                if len(done) >= n:
                    return
            for fname in os.listdir(qd):
                try:
                    body = (qd / fname).read_bytes()
                    os.unlink(qd / fname)  # the ack: only one agent's rm succeeds
                except FileNotFoundError:
                    continue
                assert body.startswith(b"job ")
                with lock:
                    done.append(int(fname))

    threads = [threading.Thread(target=agent, args=(m,), daemon=True) for m in mounts for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert sorted(done) == sorted(seqs), "every message acked exactly once"
    info = raw.run(raw.js.consumer_info(name, "workers"))
    assert info.num_ack_pending == 0 and info.num_pending == 0
