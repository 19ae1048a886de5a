"""``--cache watch`` (docs/consistency.md): an open of a key whose latest revision, as
the mount's watch has it, was read before is served from memory; a change made
anywhere is read as soon as the watch has it; the default mode gets every open."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from hvfs.server import EmbeddedServer

from .helpers import Mount, RawNats, wait_for


def status(m: Mount) -> dict[str, Any]:
    return json.loads(m.path(".hvfs", "status").read_bytes())  # type: ignore[no-any-return]


def revision(p: Path) -> int:
    return int(os.getxattr(p, "user.hvfs.revision"))


@pytest.fixture
def cached(server: EmbeddedServer, tmp_path: Path):
    m = Mount(tmp_path / "c", server.url, "--cache", "watch", "--writer", "cached").start()
    yield m
    m.stop()


def test_repeated_opens_make_no_nats_call(cached: Mount, raw: RawNats, bucket: str) -> None:
    raw.put(bucket, "k", b"one\n")
    p = cached.path("kv", bucket, "k")
    wait_for(lambda: p.exists(), what="key listed")
    assert p.read_bytes() == b"one\n"  # a miss: read from NATS, kept
    calls = status(cached)["nats"]["calls"]
    hits = status(cached)["cache"]["hits"]
    for _ in range(20):
        assert p.read_bytes() == b"one\n"
    st = status(cached)
    assert st["cache"]["mode"] == "watch"
    assert st["cache"]["hits"] - hits == 20
    assert st["nats"]["calls"] == calls


def test_a_change_elsewhere_is_read_once_the_watch_has_it(cached: Mount, mnt2: Mount, raw: RawNats,
                                                          bucket: str) -> None:
    raw.put(bucket, "k", b"v0\n")
    p = cached.path("kv", bucket, "k")
    wait_for(lambda: p.exists() and p.read_bytes() == b"v0\n", what="first value")
    for i in range(1, 30):
        value = f"v{i}\n".encode()
        if i % 2:
            rev = raw.put(bucket, "k", value)
        else:
            other = mnt2.path("kv", bucket, "k")
            wait_for(other.exists, what="listed on the other mount")
            other.write_bytes(value)
            rev = raw.get(bucket, "k").revision
        wait_for(lambda rev=rev: revision(p) >= rev, what=f"watch has revision {rev}")
        assert p.read_bytes() == value  # never the value read before


def test_concurrent_writers_never_show_a_value_out_of_order(cached: Mount, mnt2: Mount, raw: RawNats,
                                                            bucket: str) -> None:
    """Writers on another mount and a raw client; readers on the cached mount see each
    value whole and revisions that never go back."""
    raw.put(bucket, "n", b"0")
    p = cached.path("kv", bucket, "n")
    wait_for(lambda: p.exists(), what="listed")
    stop = threading.Event()
    errors: list[str] = []
    reads = [0, 0]

    def reader(i: int) -> None:
        last = -1
        while not stop.is_set():
            reads[i] += 1
            fd = os.open(p, os.O_RDONLY)
            try:
                rev = int(os.getxattr(fd, "user.hvfs.revision"))
                data = os.read(fd, 100)
            finally:
                os.close(fd)
            if not data.isdigit():
                errors.append(f"torn or empty value {data!r}")
            if rev < last:
                errors.append(f"revision went back: {last} -> {rev}")
            last = rev

    def writer(put: Any, n: int) -> None:
        for i in range(n):
            put(str(i + 1).encode())

    def via_mount(v: bytes) -> None:
        other = mnt2.path("kv", bucket, "n")
        try:
            other.write_bytes(v)
        except OSError:
            pass  # ESTALE: the raw writer went first (compare-and-swap); kept in conflicts

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    wait_for(lambda: mnt2.path("kv", bucket, "n").exists(), what="listed on the other mount")
    writers = [threading.Thread(target=writer, args=(lambda v: raw.put(bucket, "n", v), 150)),
               threading.Thread(target=writer, args=(via_mount, 150))]
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    for t in readers:
        t.join(30)
    assert not errors, errors[:5]
    assert all(n > 10 for n in reads), reads
    final = raw.get(bucket, "n")
    wait_for(lambda: revision(p) >= final.revision, what="last revision seen")
    assert p.read_bytes() == final.value


def test_local_writes_and_deletes(cached: Mount, raw: RawNats, bucket: str) -> None:
    p = cached.path("kv", bucket, "w")
    p.write_bytes(b"a")
    assert p.read_bytes() == b"a"
    p.write_bytes(b"bb")
    hits = status(cached)["cache"]["hits"]
    assert p.read_bytes() == b"bb"  # what this mount wrote is kept: no get
    assert status(cached)["cache"]["hits"] == hits + 1
    assert raw.value(bucket, "w") == b"bb"
    raw.delete(bucket, "w")
    wait_for(lambda: not p.exists(), what="delete seen")
    with pytest.raises(FileNotFoundError):
        p.read_bytes()


def test_ttl_values_are_always_fetched(cached: Mount, raw: RawNats) -> None:
    """A value that may expire unseen (bucket max age, no expiry markers) is not served
    from memory: the watch would not say that it is gone."""
    raw.create_bucket("cw_ttl", ttl=60)
    raw.put("cw_ttl", "k", b"x")
    p = cached.path("kv", "cw_ttl", "k")
    wait_for(lambda: p.exists(), what="listed")
    hits = status(cached)["cache"]["hits"]
    for _ in range(5):
        assert p.read_bytes() == b"x"
    assert status(cached)["cache"]["hits"] == hits


def test_no_cache_while_disconnected(own_server: EmbeddedServer, tmp_path: Path) -> None:
    raw = RawNats(own_server.url)
    try:
        raw.create_bucket("cw_away")
        raw.put("cw_away", "k", b"x")
    finally:
        raw.close()
    m = Mount(tmp_path / "m", own_server.url, "--cache", "watch", "--timeout", "1").start()
    try:
        p = m.path("kv", "cw_away", "k")
        wait_for(lambda: p.exists() and p.read_bytes() == b"x", what="read once")
        own_server.stop()
        wait_for(lambda: b'"connected": false' in m.path(".hvfs", "status").read_bytes(), timeout=10,
                 what="NATS gone")
        with pytest.raises(OSError):
            p.read_bytes()  # not served from memory: without --offline a read needs NATS
    finally:
        m.stop()


def test_default_mode_gets_every_open(mnt: Mount, raw: RawNats, bucket: str) -> None:
    raw.put(bucket, "k", b"x")
    p = mnt.path("kv", bucket, "k")
    wait_for(lambda: p.exists(), what="listed")
    p.read_bytes()
    calls = status(mnt)["nats"]["calls"]
    for _ in range(5):
        p.read_bytes()
    st = status(mnt)
    assert st["cache"] == {"mode": "fresh", "hits": 0, "misses": 0}
    assert st["nats"]["calls"] - calls >= 5
