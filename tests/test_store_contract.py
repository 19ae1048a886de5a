"""The store contract: one suite, run on MemoryStore and on NatsStore against a real nats-server.

Where the two differ the real server is right and MemoryStore follows; what
hvfs makes of the server's answer (which error, when) is the store's choice,
pinned here. The memory store's own test switches are tried at the end.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from hvfs.config import ConnectOptions
from hvfs.errors import (
    Conflict,
    Exists,
    Invalid,
    InvalidName,
    NameTooLong,
    NotFound,
    NotPermitted,
    PermissionDenied,
    Timeout,
    TooLarge,
    Unavailable,
)
from hvfs.store import (
    RESYNC,
    SYNCED,
    BucketInfo,
    KvChange,
    KvDelta,
    KvEntry,
    MsgSeen,
    Op,
    QueueGone,
    QueueMsg,
    Store,
    StreamDelta,
    StreamInfo,
)
from hvfs.store.memory import MemoryStore
from hvfs.store.nats import NatsStore
from hvfs.store.rules import cas_header_bytes, pattern_covers, subject_matches, write_header_bytes

from .helpers import RawNats, add_stream

Body = Callable[[Store], Awaitable[None]]
_names = itertools.count()


def fresh(prefix: str) -> str:
    """A bucket or stream name no other test (or earlier run on this server) uses."""
    return f"{prefix}{os.getpid()}x{next(_names)}"


def run(store: Store, body: Body) -> None:
    async def main() -> None:
        await store.start()
        try:
            await body(store)
        finally:
            await store.close()

    trio.run(main)


class Backend:
    """A store under test, and how a test sets up what another client would make."""

    kind = ""

    def new(self) -> Store:
        raise NotImplementedError

    def run(self, body: Body) -> None:
        run(self.new(), body)

    def other(self, store: Store) -> Store:
        """Another client of the same server (a second mount), not yet started."""
        return self.new()

    def add_bucket(self, store: Store, name: str, history: int = 10, max_value_size: int = -1,
                   msg_ttl: bool = True) -> None:
        """Another client makes a bucket (``msg_ttl`` False: without per-message TTL)."""
        raise NotImplementedError

    def add_stream(self, store: Store, name: str, subjects: list[str], max_msg_size: int = -1,
                   deny_delete: bool = False) -> None:
        raise NotImplementedError

    async def delete_bucket(self, store: Store, name: str) -> None:
        """Another client deletes a bucket (the store has no call for it)."""
        raise NotImplementedError


class MemoryBackend(Backend):
    kind = "memory"

    def new(self) -> Store:
        return MemoryStore()

    def other(self, store: Store) -> Store:
        assert isinstance(store, MemoryStore)
        return store.peer()

    def add_bucket(self, store: Store, name: str, history: int = 10, max_value_size: int = -1,
                   msg_ttl: bool = True) -> None:
        assert isinstance(store, MemoryStore)
        store.add_bucket(name, history, max_value_size, msg_ttl=msg_ttl)

    def add_stream(self, store: Store, name: str, subjects: list[str], max_msg_size: int = -1,
                   deny_delete: bool = False) -> None:
        assert isinstance(store, MemoryStore)
        store.add_stream(name, subjects, max_msg_size, deny_delete)

    async def delete_bucket(self, store: Store, name: str) -> None:
        assert isinstance(store, MemoryStore)
        del store._streams[f"KV_{name}"]


class NatsBackend(Backend):
    kind = "nats"

    def __init__(self, url: str, raw: RawNats) -> None:
        self.url, self.raw = url, raw

    def new(self) -> Store:
        return NatsStore(ConnectOptions(servers=[self.url], timeout=2.0))

    def add_bucket(self, store: Store, name: str, history: int = 10, max_value_size: int = -1,
                   msg_ttl: bool = True) -> None:
        if msg_ttl:  # nats-py 2.16 allows per-message TTL on every bucket it makes
            self.raw.create_bucket(name, history=history, max_value_size=max_value_size)
            return
        # As an older client makes a bucket: the stream config of one, without allow_msg_ttl.
        add_stream(self.raw, f"KV_{name}", [f"$KV.{name}.>"], max_msgs_per_subject=history,
                   max_msg_size=max_value_size, deny_delete=True, allow_direct=True, allow_rollup_hdrs=True,
                   discard="new", duplicate_window=120.0)

    def add_stream(self, store: Store, name: str, subjects: list[str], max_msg_size: int = -1,
                   deny_delete: bool = False) -> None:
        add_stream(self.raw, name, subjects, max_msg_size=max_msg_size, deny_delete=deny_delete)

    async def delete_bucket(self, store: Store, name: str) -> None:
        await trio.to_thread.run_sync(lambda: self.raw.run(self.raw.js.delete_key_value(name)))


@pytest.fixture(params=["memory", "nats"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "nats":
        return NatsBackend(request.getfixturevalue("server").url, request.getfixturevalue("raw"))
    return MemoryBackend()


class Sink:
    """A watch sink that tests can wait on, with a trio deadline."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = trio.Event()

    def __call__(self, batch: list[Any]) -> None:
        self.items.extend(batch)
        self._changed.set()

    async def wait(self, done: Callable[[list[Any]], bool], within: float = 5.0) -> list[Any]:
        with trio.fail_after(within):
            while not done(self.items):
                self._changed = trio.Event()
                await self._changed.wait()
        return self.items

    async def wait_len(self, n: int, within: float = 5.0) -> list[Any]:
        return await self.wait(lambda items: len(items) >= n, within)

    async def synced(self) -> list[Any]:
        return await self.wait(lambda items: SYNCED in items)

    async def quiet(self, n: int, seconds: float) -> bool:
        """True if no more than ``n`` items arrive within ``seconds``."""
        with trio.move_on_after(seconds):
            await self.wait_len(n + 1, seconds + 1)
            return False
        return True

    def take(self) -> list[Any]:
        items, self.items = self.items, []
        return items


def changes(items: list[Any]) -> list[tuple[str, Op, int, int]]:
    return [(c.key, c.op, c.revision, c.size) for c in items if isinstance(c, KvChange)]


# -- KV keys -------------------------------------------------------------------


def test_create_get_update_delete(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("kv")
        await store.create_bucket(b)
        r1 = await store.create(b, "a", b"one")
        e = await store.get(b, "a")
        assert (e.bucket, e.key, e.value, e.revision) == (b, "a", b"one", r1)
        assert abs(e.time - time.time()) < 60
        r2 = await store.create(b, "dir/b.c", b"two")
        assert r2 == r1 + 1  # one sequence per bucket, not per key
        r3 = await store.update(b, "a", b"uno", r1)
        assert r3 == r2 + 1
        assert (await store.get(b, "a")).value == b"uno"
        assert (await store.get(b, "dir/b.c")).value == b"two"
        assert (await store.get(b, "a", 0)).revision == r3  # revision 0: the latest
        assert (await store.get(b, "empty", await store.create(b, "empty", b""))).value == b""
        await store.delete(b, "a")
        with pytest.raises(NotFound):
            await store.get(b, "a")
        with pytest.raises(NotFound):
            await store.get(b, "never")
        assert (await store.get(b, "a", r3)).value == b"uno"  # history keeps what was there
        await store.delete(b, "never")  # a marker for a key that never was: no error

    backend.run(body)


def test_kv_next_tells_what_followed_a_revision(backend: Backend) -> None:
    """How a write that timed out is resolved: the key's first message after its base."""

    async def body(store: Store) -> None:
        b = fresh("next")
        await store.create_bucket(b)
        r1 = await store.create(b, "k", b"1")
        await store.create(b, "other", b"o")
        assert await store.kv_next(b, "k", r1) is None  # nothing after it (yet)
        r2 = await store.update(b, "k", b"2", r1, headers={"Nats-Msg-Id": "hvfs-mine"})
        m = await store.kv_next(b, "k", r1)
        assert m is not None and (m.seq, m.data, m.headers["Nats-Msg-Id"]) == (r2, b"2", "hvfs-mine")
        assert m.headers["Nats-Expected-Last-Subject-Sequence"] == str(r1)
        await store.delete(b, "k")
        marker = await store.kv_next(b, "k", r2)  # a marker too, with its headers
        assert marker is not None and marker.seq > r2 and marker.data == b""
        assert (await store.kv_next(b, "k", 0)) is not None and (await store.kv_next(b, "k", 0)).seq == r1
        assert await store.kv_next(b, "never", 0) is None
        with pytest.raises(NotFound):
            await store.kv_next(fresh("nobucket"), "k", 0)

    run(backend.new(), body)


def test_cas(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("cas")
        await store.create_bucket(b)
        assert await store.update(b, "f", b"x", 0) > 0  # last=0: "must not exist", like create
        r1 = await store.create(b, "k", b"1")
        with pytest.raises(Exists):
            await store.create(b, "k", b"again")
        r2 = await store.update(b, "k", b"2", r1)
        with pytest.raises(Conflict):
            await store.update(b, "k", b"stale", r1)
        with pytest.raises(Conflict):
            await store.update(b, "k", b"stale", 0)
        with pytest.raises(Conflict):
            await store.update(b, "missing", b"x", r2)
        with pytest.raises(Conflict):
            await store.delete(b, "k", r1)
        await store.delete(b, "k", r2)
        marker = r2 + 1
        # A deleted key's current revision is its delete marker's.
        with pytest.raises(Conflict):
            await store.update(b, "k", b"x", r2)
        with pytest.raises(Conflict):
            await store.delete(b, "k", r2)
        r3 = await store.update(b, "k", b"back", marker)
        assert r3 == marker + 1 and (await store.get(b, "k")).value == b"back"
        await store.delete(b, "k")
        r4 = await store.create(b, "k", b"again")  # create over a delete marker works
        assert (await store.get(b, "k")).revision == r4
        assert store.state.errors == 0  # a lost CAS is an answer, not an error of NATS

    backend.run(body)


def test_history_and_revisions(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("hist")
        await store.create_bucket(b, history=2)
        r1 = await store.create(b, "k", b"1")
        r2 = await store.update(b, "k", b"2", r1)
        other = await store.create(b, "other", b"o")
        r3 = await store.update(b, "k", b"3", r2)
        assert (await store.get(b, "k", r2)).value == b"2"
        assert (await store.get(b, "k", r3)).value == b"3"
        for key, rev in (("k", r1), ("k", other), ("other", r3), ("k", r3 + 100)):
            with pytest.raises(NotFound):  # gone (history 2), another key's, or never written
                await store.get(b, key, rev)
        await store.delete(b, "k")
        with pytest.raises(NotFound):
            await store.get(b, "k", r3 + 1)  # the delete marker is no value
        with pytest.raises(NotFound):
            await store.get(b, "k", r2)  # the marker pushed it out of the history
        assert (await store.get(b, "k", r3)).value == b"3"

    backend.run(body)


def test_watch_snapshot_then_live(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("watch")
        await store.create_bucket(b)
        ra = await store.create(b, "a", b"AA")
        rb = await store.create(b, "b", b"B")
        rc = await store.create(b, "c", b"C")
        await store.delete(b, "b", rb)
        ra2 = await store.update(b, "a", b"AAA", ra)
        sink = Sink()
        w = await store.watch(b, sink)
        items = list(await sink.synced())
        sink.take()
        assert items[0] == RESYNC and items[-1] == SYNCED and len(items) == 5
        # The latest revision per key, in revision order; a deleted key is there as its marker.
        assert changes(items) == [("c", Op.PUT, rc, 1), ("b", Op.DEL, rc + 1, 0), ("a", Op.PUT, ra2, 3)]
        assert all(c.bucket == b and abs(c.time - time.time()) < 60 for c in items[1:-1])
        rd = await store.create(b, "d", b"DDDD")
        rd2 = await store.update(b, "d", b"D", rd)
        await store.delete(b, "d")
        await store.delete(b, "a", ra2)
        live = await sink.wait_len(4)
        assert changes(live) == [("d", Op.PUT, rd, 4), ("d", Op.PUT, rd2, 1), ("d", Op.DEL, rd2 + 1, 0),
                                 ("a", Op.DEL, rd2 + 2, 0)]
        await w.stop()
        await store.create(b, "e", b"e")
        barrier = Sink()  # a second watch that has seen "e" has seen everything before it
        w2 = await store.watch(b, barrier)
        assert ("e", Op.PUT) in [(k, op) for k, op, _, _ in changes(await barrier.synced())]
        assert len(sink.items) == 4  # nothing after stop
        await w2.stop()

    backend.run(body)


@pytest.mark.parametrize("kind", ["kv", "stream"])
def test_watch_hands_over_when_its_live_consumer_is_lost(server: Any, raw: RawNats, kind: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot's consumer goes on with live changes; when it is gone (a restarted server
    forgets a memory consumer; an operator deletes it), not even heartbeats come, and the
    ordered consumer follows from the last sequence read: nothing lost, nothing twice."""
    from hvfs.store import natssubs

    monkeypatch.setattr(natssubs, "_SNAPSHOT_HEARTBEAT", 0.2)  # silence is 3 heartbeats: 0.6 s
    name = fresh("lost")
    stream = f"KV_{name}" if kind == "kv" else name
    if kind == "kv":
        raw.create_bucket(name)
        raw.put(name, "a", b"1")
    else:
        add_stream(raw, name, [f"{name}.>"])
        raw.run(raw.js.publish(f"{name}.a", b"1"))

    def write(tok: str) -> None:
        if kind == "kv":
            raw.put(name, tok, tok.encode())
        else:
            raw.run(raw.js.publish(f"{name}.{tok}", tok.encode()))

    def seen(items: list[Any]) -> list[str]:
        if kind == "kv":
            return [c.key for c in items if isinstance(c, KvChange)]
        return [m.subject.rpartition(".")[2] for m in items if isinstance(m, MsgSeen)]

    async def body(store: Store) -> None:
        sink = Sink()
        w = await (store.watch(name, sink) if kind == "kv" else store.stream_watch(name, sink))
        await sink.synced()
        write("b")
        await sink.wait(lambda items: "b" in seen(items))  # live, through the snapshot's consumer
        infos = await trio.to_thread.run_sync(lambda: raw.run(raw.js.consumers_info(stream)))
        assert len(infos) == 1  # the fast consumer, still following
        await trio.to_thread.run_sync(lambda: raw.run(raw.js.delete_consumer(stream, infos[0].name)))
        write("c")  # while no consumer delivers
        await sink.wait(lambda items: "c" in seen(items), within=10)
        write("d")
        await sink.wait(lambda items: "d" in seen(items))
        assert seen(sink.items) == ["a", "b", "c", "d"]
        await w.stop()

    NatsBackend(server.url, raw).run(body)


def test_watch_empty_and_missing_bucket(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("empty")
        await store.create_bucket(b)
        sink = Sink()
        w = await store.watch(b, sink)
        assert await sink.synced() == [RESYNC, SYNCED]
        await store.create(b, "first", b"1")
        assert changes(await sink.wait_len(3)) == [("first", Op.PUT, 1, 1)]
        await w.stop()
        missing = fresh("nobucket")
        errors = store.state.errors
        nothing = Sink()
        with pytest.raises(NotFound):
            await store.watch(missing, nothing)
        with pytest.raises(NotFound):
            await store.get(missing, "k")
        with pytest.raises(NotFound):
            await store.get(missing, "k", 1)
        with pytest.raises(NotFound):
            await store.bucket(missing)
        # A write to a missing bucket has no responder on NATS: the store asks whether the
        # bucket is there (only then) and answers NotFound, as get does.
        with pytest.raises(NotFound):
            await store.create(missing, "k", b"v")
        with pytest.raises(NotFound):
            await store.update(missing, "k", b"v", 1)
        with pytest.raises(NotFound):
            await store.delete(missing, "k")
        with pytest.raises(NotFound):
            await store.delete(missing, "k", 3)
        assert store.state.errors == errors  # answers, not failures of NATS
        await trio.sleep(0.1)
        assert nothing.items == []  # a watch that failed sent nothing, not even RESYNC

    backend.run(body)


def test_bucket_deleted_under_a_direct_get(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("gone")
        await store.create_bucket(b)  # direct gets on: a get of a gone bucket has no responder
        await store.create(b, "k", b"v")
        assert (await store.get(b, "k")).value == b"v"
        other = backend.other(store)
        await other.start()
        try:
            await backend.delete_bucket(other, b)
        finally:
            await other.close()
        with pytest.raises(NotFound):
            await store.get(b, "k")
        with pytest.raises(NotFound):
            await store.update(b, "k", b"w", 1)
        with pytest.raises(NotFound):
            await store.watch(b, Sink())

    backend.run(body)


def test_watch_many_and_other_client(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("many")
        await store.create_bucket(b, history=1)
        for i in range(300):  # more than one batch
            await store.create(b, f"k{i:03}", b"%d" % i)
        sink = Sink()
        await store.watch(b, sink)
        items = list(await sink.synced())
        assert [c[0] for c in changes(items)] == [f"k{i:03}" for i in range(300)]
        sink.take()
        other = backend.other(store)
        await other.start()
        try:
            r = await other.update(b, "k007", b"\x00\xff", (await other.get(b, "k007")).revision)
            assert changes(await sink.wait_len(1)) == [("k007", Op.PUT, r, 2)]
            assert (await store.get(b, "k007")).value == b"\x00\xff"
            with pytest.raises(NotFound):
                await store.get(b, "k007", r - 1)  # history 1
        finally:
            await other.close()

    backend.run(body)


def test_buckets(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("list")
        bi = await store.create_bucket(b, history=5)
        assert bi == BucketInfo(b, -1, 5, msg_ttl=True)  # per-message TTL allowed, no markers
        assert await store.bucket(b) == bi
        assert bi in await store.buckets()
        assert await store.create_bucket(b, history=5) == bi  # the same again: no error
        with pytest.raises(Invalid):
            await store.create_bucket(b, history=7)
        with pytest.raises(Invalid):
            await store.create_bucket(fresh("deep"), history=65)
        store.forget_bucket(b)
        assert await store.bucket(b) == bi
        s = fresh("NOTKV")
        backend.add_stream(store, s, [f"{s.lower()}.>"])
        assert s not in [x.name for x in await store.buckets()]
        names = [x.name for x in await store.streams()]
        assert s in names and f"KV_{b}" not in names

    backend.run(body)


def test_too_large(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("small")
        backend.add_bucket(store, b, max_value_size=200)
        assert (await store.bucket(b)).max_value_size == 200
        r = await store.create(b, "s", b"x" * 10)
        errors = store.state.errors
        with pytest.raises(TooLarge):
            await store.create(b, "big", b"x" * 201)
        # The server counts the headers too: ~90 bytes of them on a CAS write to this bucket.
        with pytest.raises(TooLarge):
            await store.create(b, "hdr", b"x" * 150)
        with pytest.raises(TooLarge):
            await store.update(b, "s", b"x" * 150, r)
        assert store.state.errors == errors + 3
        with pytest.raises(NotFound):
            await store.get(b, "big")
        big = fresh("big")
        await store.create_bucket(big)
        with pytest.raises(TooLarge):
            await store.create(big, "huge", b"x" * (store.max_payload + 1))
        assert await store.create(big, "fine", b"x" * 1000) > 0  # still connected, still working

    backend.run(body)


def cas_headers(bucket: str, last: int) -> int:
    """Header bytes of a create (last 0) or update: what base.Store's docs tell callers to subtract."""
    return 78 + len(bucket) + len(str(last))


def test_too_large_counts_the_headers(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("edge")
        backend.add_bucket(store, b, max_value_size=200)
        fits = 200 - cas_headers(b, 0)
        r = await store.create(b, "k", b"x" * fits)
        with pytest.raises(TooLarge):
            await store.create(b, "k2", b"x" * (fits + 1))
        with pytest.raises(TooLarge):
            await store.update(b, "k", b"x" * (200 - cas_headers(b, r) + 1), r)
        assert await store.update(b, "k", b"x" * (200 - cas_headers(b, r)), r) == r + 1
        big = fresh("edgebig")
        await store.create_bucket(big)
        fits = store.max_payload - cas_headers(big, 0)
        # One byte over with the headers: the server would drop the connection; the store refuses it.
        with pytest.raises(TooLarge):
            await store.create(big, "over", b"x" * (fits + 1))
        assert store.state.connected
        assert await store.create(big, "edge", b"x" * fits) > 0
        s = fresh("EDGES")
        backend.add_stream(store, s, [f"{s.lower()}.>"])
        # a publish sends Nats-Msg-Id and Nats-Expected-Stream: 51 + len(id) + len(stream)
        with pytest.raises(TooLarge):
            await store.publish(f"{s.lower()}.x", b"x" * (store.max_payload - 51 - 2 - len(s) + 1), s, "id")
        assert store.state.connected
        assert await store.publish(f"{s.lower()}.x", b"x", s, "id") == 1

    backend.run(body)


def test_invalid_names(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("names")
        await store.create_bucket(b)
        calls, errors = store.state.calls, store.state.errors
        for name in ("a.b", "a b", "", "a*", ">", "ä", "a/b", "x" * 253):
            with pytest.raises(InvalidName, match="bucket name"):
                await store.create_bucket(name)
        with pytest.raises(NameTooLong):
            await store.create_bucket("x" * 253)
        for name in ("a.b", "a b", "", "*", ">", "a/b"):
            with pytest.raises(InvalidName):
                await store.bucket(name)
            with pytest.raises(InvalidName):
                await store.get(name, "k")
            with pytest.raises(InvalidName):
                await store.watch(name, Sink())
        bad_keys = ("*", ">", "a.*", "a.>", "*.a", "a*b", "a>", "", ".a", "a.", "a..b", ".",
                    "a b", " ", "a\tb", "a\nb", "a\rb", "a\x00b")
        for key in bad_keys:
            with pytest.raises(InvalidName):
                await store.get(b, key)
            with pytest.raises(InvalidName):
                await store.get(b, key, 1)
            with pytest.raises(InvalidName):
                await store.create(b, key, b"v")
            with pytest.raises(InvalidName):
                await store.update(b, key, b"v", 1)
            with pytest.raises(InvalidName):
                await store.delete(b, key)
        st = fresh("NAMES")
        backend.add_stream(store, st, [f"{st.lower()}.>"])
        calls = store.state.calls
        for sub in ("", "a b", f"{st.lower()}.*", f"{st.lower()}.>", f"{st.lower()}.a..b", f"{st.lower()}.",
                    f"{st.lower()}.a\tb", f"{st.lower()}.x*"):
            with pytest.raises(InvalidName):
                await store.publish(sub, b"", st, "id")
        with pytest.raises(NameTooLong):
            await store.publish(f"{st.lower()}." + "s" * 3840, b"", st, "id")
        # Caught before any request: no call made, none failed.
        assert (store.state.calls, store.state.errors) == (calls, errors)
        # A key too long for a PUB line (a direct get's request subject holds it too):
        # the server would drop the connection.
        for call in (lambda k: store.create(b, k, b"v"), lambda k: store.update(b, k, b"v", 1),
                     lambda k: store.delete(b, k), lambda k: store.get(b, k)):
            with pytest.raises(NameTooLong):
                await call("k" * 3800)
        # What the server takes beyond the KV clients' [-/_=.a-zA-Z0-9] works too.
        for key in ("ä", "a@b", "a#b", "x" * 3000, "a/b.c=d_e-f"):
            r = await store.create(b, key, key.encode())
            assert (await store.get(b, key)).value == key.encode()
            await store.delete(b, key, r)
        assert store.state.connected
        assert await store.create(b, "after", b"ok") > 0

    backend.run(body)


def test_state_counts_calls_not_answers(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert store.state.connected
        b = fresh("state")
        await store.create_bucket(b)
        calls, errors = store.state.calls, store.state.errors
        with pytest.raises(NotFound):
            await store.get(b, "nothing")
        assert (store.state.calls, store.state.errors) == (calls + 1, errors)  # NotFound is an answer
        await store.create(b, "k", b"1")
        with pytest.raises(Exists):
            await store.create(b, "k", b"1")
        assert (store.state.calls, store.state.errors) == (calls + 3, errors)  # so is Exists

    backend.run(body)


# -- headers, TTL, settings -------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> float:
    """Poll ``check`` until it is true; the seconds that took (Timeout-like failure past ``within``)."""
    t0 = time.monotonic()
    with trio.fail_after(within):
        while True:
            if await check():
                return time.monotonic() - t0
            await trio.sleep(0.02)  # the server's state: nothing to wait on but asking again


def has(op: Op, key: str) -> Callable[[list[Any]], bool]:
    return lambda items: any(isinstance(c, KvChange) and (c.key, c.op) == (key, op) for c in items)


def test_headers_round_trip(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("hdr")
        await store.create_bucket(b)
        r1 = await store.create(b, "k", b"v", headers={"Hvfs-Writer": "alice"})
        e = await store.get(b, "k")
        # Every header the message was stored with: ours, and the CAS ones; not a direct get's own.
        assert e.headers == {"Hvfs-Writer": "alice", "Nats-Expected-Last-Subject-Sequence": "0",
                             "Nats-Expected-Stream": f"KV_{b}"}
        # The store's own headers win over the same names.
        r2 = await store.update(b, "k", b"w", r1, headers={"Hvfs-Writer": "bob",
                                                          "Nats-Expected-Last-Subject-Sequence": "999"})
        assert (await store.get(b, "k")).headers["Hvfs-Writer"] == "bob"
        assert (await store.get(b, "k", r1)).headers["Hvfs-Writer"] == "alice"
        await store.delete(b, "k", r2, headers={"Hvfs-Writer": "carol"})
        marker = await store.get_msg(f"KV_{b}", r2 + 1)
        assert marker.headers["KV-Operation"] == "DEL" and marker.headers["Hvfs-Writer"] == "carol"
        assert (await store.create(b, "plain", b"p")) and "Hvfs-Writer" not in (await store.get(b, "plain")).headers
        s = fresh("HDRS")
        backend.add_stream(store, s, [f"{s.lower()}.>"])
        seq = await store.publish(f"{s.lower()}.x", b"m", s, "id1", headers={"Hvfs-Writer": "dave", "X-Kind": " a b "})
        m = await store.get_msg(s, seq)
        assert (m.headers["Hvfs-Writer"], m.headers["X-Kind"], m.headers["Nats-Msg-Id"]) == ("dave", "a b", "id1")
        calls, errors = store.state.calls, store.state.errors
        for bad in ({"Bad Name": "x"}, {"a:b": "x"}, {"": "x"}, {"X": "a\r\nb"}, {"X": "a\x00"}, {"Ä": "x"},
                    {"a(b)": "x"}):
            with pytest.raises(Invalid):
                await store.create(b, "bad", b"v", headers=bad)
            with pytest.raises(Invalid):
                await store.update(b, "bad", b"v", 1, headers=bad)
            with pytest.raises(Invalid):
                await store.delete(b, "bad", headers=bad)
            with pytest.raises(Invalid):
                await store.publish(f"{s.lower()}.x", b"m", s, "id2", headers=bad)
        assert (store.state.calls, store.state.errors) == (calls, errors)  # refused before any request
        assert store.state.connected

    backend.run(body)


def test_msg_ttl_round_trip_and_cas(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert store.msg_ttl  # nats-server 2.15 here; MemoryStore by default
        b = fresh("ttl")
        assert (await store.create_bucket(b)).msg_ttl
        r = await store.create(b, "t", b"v", ttl=30, headers={"Hvfs-Writer": "me"})
        e = await store.get(b, "t")
        assert (e.value, e.headers["Nats-TTL"], e.headers["Hvfs-Writer"]) == (b"v", "30", "me")
        # Whole seconds, rounded up, at least 1.
        for ttl, sent in ((0.2, "1"), (1.5, "2"), (3600, "3600")):
            rev = await store.create(b, f"r{sent}", b"", ttl=ttl)
            assert (await store.get(b, f"r{sent}", rev)).headers["Nats-TTL"] == sent
        # A CAS update with a TTL is still a CAS.
        r2 = await store.update(b, "t", b"w", r, ttl=60)
        assert (await store.get(b, "t")).headers["Nats-TTL"] == "60"
        errors = store.state.errors
        with pytest.raises(Conflict):
            await store.update(b, "t", b"stale", r, ttl=60)
        with pytest.raises(Exists):
            await store.create(b, "t", b"again", ttl=60)
        assert (await store.get(b, "t")).revision == r2 and store.state.errors == errors
        r3 = await store.update(b, "t", b"forever", r2)  # no TTL: no header
        assert "Nats-TTL" not in (await store.get(b, "t", r3)).headers
        calls = store.state.calls
        for bad in (0, -1, float("nan"), float("inf")):
            with pytest.raises(Invalid):
                await store.create(b, "bad", b"", ttl=bad)
        assert store.state.calls == calls  # refused before any request
        # The server raises a TTL below the bucket's marker TTL to it.
        m = fresh("ttlm")
        await store.create_bucket(m, marker_ttl=5)
        r = await store.create(m, "k", b"v", ttl=1)
        assert (await store.get(m, "k")).headers["Nats-TTL"] == "5"
        await store.update(m, "k", b"w", r, ttl=7)
        assert (await store.get(m, "k")).headers["Nats-TTL"] == "7"

    backend.run(body)


def test_msg_ttl_refused_by_the_bucket(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("nottl")
        backend.add_bucket(store, b, msg_ttl=False)
        assert not (await store.bucket(b)).msg_ttl
        r = await store.create(b, "k", b"v")  # without a TTL: fine
        with pytest.raises(Invalid, match=f"bucket {b} does not allow per-message TTL"):
            await store.create(b, "t", b"v", ttl=5)
        with pytest.raises(Invalid, match="does not allow per-message TTL"):
            await store.update(b, "k", b"w", r, ttl=5)
        with pytest.raises(Invalid):  # the server checks the TTL before the revision
            await store.update(b, "k", b"w", r + 10, ttl=5)
        with pytest.raises(NotFound):
            await store.get(b, "t")
        assert (await store.get(b, "k")).value == b"v"
        # Asking for a bucket with TTLs where one without exists: Invalid, naming why.
        with pytest.raises(Invalid, match="per-message TTL"):
            await store.create_bucket(b)

    backend.run(body)


def test_expiry_with_marker_reaches_get_and_every_watch(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("exp")
        await store.create_bucket(b, marker_ttl=1)
        one, two = Sink(), Sink()
        w1 = await store.watch(b, one)
        w2 = await store.watch(b, two)
        await one.synced()
        await two.synced()
        await store.create(b, "keep", b"k")
        r = await store.create(b, "gone", b"x", ttl=1)
        written = time.monotonic()
        await one.wait(has(Op.PURGE, "gone"))
        seen = time.monotonic() - written
        await two.wait(has(Op.PURGE, "gone"))
        purge = next(c for c in one.items if isinstance(c, KvChange) and c.op is Op.PURGE)
        assert (purge.key, purge.size) == ("gone", 0) and purge.revision > r
        assert 0.9 < seen < 2.0, seen  # measured on NATS: 0 to 0.25 s after the TTL
        with pytest.raises(NotFound):
            await store.get(b, "gone")
        with pytest.raises(NotFound):
            await store.get(b, "gone", r)
        assert (await store.get(b, "keep")).value == b"k"
        assert not has(Op.PURGE, "keep")(one.items) and not has(Op.DEL, "gone")(one.items)
        # A new snapshot has no value for it (the marker, like a delete, while the marker lives).
        snap = Sink()
        w3 = await store.watch(b, snap)
        keys = {(k, op) for k, op, _, _ in changes(await snap.synced())}
        assert ("keep", Op.PUT) in keys and ("gone", Op.PUT) not in keys
        # Written again over the marker (or after it): a new key.
        r2 = await store.create(b, "gone", b"again")
        assert (await store.get(b, "gone")).value == b"again" and r2 > purge.revision
        for w in (w1, w2, w3):
            await w.stop()

    backend.run(body)


def test_expiry_without_marker_is_silent(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("quiet")
        await store.create_bucket(b)
        sink = Sink()
        await store.watch(b, sink)
        await sink.synced()
        await store.create(b, "gone", b"x", ttl=1)
        # Older revisions expire each with their own TTL; the key goes back to what is left.
        h1 = await store.create(b, "back", b"old")
        h2 = await store.update(b, "back", b"new", h1, ttl=1)

        async def expired() -> bool:
            try:
                await store.get(b, "gone")
                return False
            except NotFound:
                return True

        took = await until(expired)
        assert took < 2.0

        async def reverted() -> bool:
            return (await store.get(b, "back")).revision == h1

        await until(reverted)
        with pytest.raises(NotFound):
            await store.get(b, "back", h2)
        await store.create(b, "barrier", b"")
        await sink.wait(has(Op.PUT, "barrier"))  # the watch is ordered: what came before, it has seen
        assert [(k, op) for k, op, _, _ in changes(sink.items)] == [
            ("gone", Op.PUT), ("back", Op.PUT), ("back", Op.PUT), ("barrier", Op.PUT)]
        snap = Sink()
        await store.watch(b, snap)
        assert [(k, r) for k, _, r, _ in changes(await snap.synced())] == [("back", h1), ("barrier", h2 + 1)]

    backend.run(body)


def test_bucket_max_age_with_marker(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("age")
        bi = await store.create_bucket(b, max_age=1, marker_ttl=1)
        assert (bi.max_age, bi.marker_ttl) == (1.0, 1.0)
        sink = Sink()
        await store.watch(b, sink)
        await sink.synced()
        await store.create(b, "old", b"x")  # no TTL: the bucket's max age ends it
        await sink.wait(has(Op.PURGE, "old"))
        with pytest.raises(NotFound):
            await store.get(b, "old")

    backend.run(body)


def test_create_bucket_settings(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("set")
        bi = await store.create_bucket(b, 3, max_age=60, max_value_size=4096, storage="memory", marker_ttl=2)
        assert bi == BucketInfo(b, 4096, 3, max_age=60.0, msg_ttl=True, marker_ttl=2.0, replicas=1, storage="memory")
        store.forget_bucket(b)
        assert await store.bucket(b) == bi and bi in await store.buckets()
        again = dict(max_age=60, max_value_size=4096, storage="memory", marker_ttl=2)
        assert await store.create_bucket(b, 3, **again) == bi  # type: ignore[arg-type]
        for what, change in (("history", dict(history=4)), ("marker_ttl", dict(marker_ttl=3)),
                             ("max_age", dict(max_age=30)), ("storage", dict(storage="file")),
                             ("max_value_size", dict(max_value_size=-1))):
            kw: dict[str, Any] = {"history": 3, **again, **change}
            with pytest.raises(Invalid, match=f"exists with other settings: .*{what}"):
                await store.create_bucket(b, **kw)
        assert (await store.create_bucket(fresh("frac"), marker_ttl=0.4)).marker_ttl == 1.0  # whole seconds
        calls = store.state.calls
        for bad in (dict(history=0), dict(history=65), dict(max_age=0.05), dict(max_age=-1),
                    dict(max_value_size=0), dict(replicas=0), dict(replicas=6), dict(storage="disk"),
                    dict(marker_ttl=-1)):
            with pytest.raises(Invalid):
                await store.create_bucket(fresh("bad"), **bad)  # type: ignore[arg-type]
        assert store.state.calls == calls  # refused before any request

    backend.run(body)


def test_create_stream(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("CS")
        sl = s.lower()
        si = await store.create_stream(s, [f"{sl}.a.>", f"{sl}.b"], max_age=60, max_msg_size=1000, storage="memory")
        assert si == StreamInfo(s, (f"{sl}.a.>", f"{sl}.b"), 1000, False, 0, 0, True, max_age=60.0, replicas=1,
                                storage="memory", msg_ttl=True)
        assert await store.stream(s) == si and si in await store.streams()
        same = dict(max_age=60, max_msg_size=1000, storage="memory")
        assert await store.create_stream(s, [f"{sl}.b", f"{sl}.a.>"], **same) == si  # type: ignore[arg-type]
        assert await store.create_stream(s, [f"{sl}.a.x.*"], **same) == si  # type: ignore[arg-type]  # covered
        with pytest.raises(Invalid, match="other subjects"):
            await store.create_stream(s, [f"{sl}.c"], **same)  # type: ignore[arg-type]
        with pytest.raises(Invalid, match="other settings: .*max_age"):
            await store.create_stream(s, [f"{sl}.b"], max_age=30, max_msg_size=1000, storage="memory")
        seq = await store.publish(f"{sl}.a.x", b"m", s, "m1", headers={"Hvfs-Writer": "me"})
        m = await store.get_msg(s, seq, direct=True)  # direct gets on
        assert (m.data, m.headers["Hvfs-Writer"]) == (b"m", "me")
        with pytest.raises(Invalid):  # another stream's subjects
            await store.create_stream(fresh("CSO"), [f"{sl}.b"])
        with pytest.raises(Invalid):
            await store.create_stream(fresh("CSE"), [])
        calls = store.state.calls
        for name in ("a.b", "a b", "", "a*", f"KV_{s}", f"OBJ_{s}"):
            with pytest.raises(InvalidName):
                await store.create_stream(name, ["x.y"])
        with pytest.raises(Invalid):
            await store.create_stream(fresh("CSB"), ["x.y"], max_age=0.01)
        assert store.state.calls == calls
        plain = await store.create_stream(fresh("CSP"), [f"{sl}p.>"])
        assert (plain.max_age, plain.max_msg_size, plain.storage, plain.direct) == (0.0, -1, "file", True)

    backend.run(body)


def test_too_large_counts_ttl_and_extra_headers(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("hsize")
        backend.add_bucket(store, b, max_value_size=300)
        hdr = {"Hvfs-Writer": "alice"}
        extra = (len("Nats-TTL") + len("30") + 4) + (len("Hvfs-Writer") + len("alice") + 4)
        fits = 300 - cas_headers(b, 0) - extra
        with pytest.raises(TooLarge):
            await store.create(b, "k", b"x" * (fits + 1), ttl=30, headers=hdr)
        r = await store.create(b, "k", b"x" * fits, ttl=30, headers=hdr)
        up = 300 - cas_headers(b, r) - extra
        with pytest.raises(TooLarge):
            await store.update(b, "k", b"x" * (up + 1), r, ttl=30, headers=hdr)
        r = await store.update(b, "k", b"x" * up, r, ttl=30, headers=hdr)
        # The helper callers use: the most a write adds, whatever the revision.
        assert write_header_bytes(b, 30, hdr) == cas_header_bytes(b) + extra == cas_headers(b, 10**19) + extra
        assert write_header_bytes(b, None, {}) == cas_header_bytes(b) == 98 + len(b)
        assert await store.update(b, "k", b"x" * (300 - write_header_bytes(b, 29.5, hdr)), r, ttl=29.5, headers=hdr)
        big = fresh("hsizebig")
        await store.create_bucket(big)
        fits = store.max_payload - cas_headers(big, 0) - extra
        with pytest.raises(TooLarge):  # the server would drop the connection: the store refuses it
            await store.create(big, "over", b"x" * (fits + 1), ttl=30, headers=hdr)
        assert store.state.connected
        assert await store.create(big, "edge", b"x" * fits, ttl=30, headers=hdr) > 0
        s = fresh("HSIZE")
        backend.add_stream(store, s, [f"{s.lower()}.>"])
        room = store.max_payload - 51 - 2 - len(s) - (len("Hvfs-Writer") + len("alice") + 4)
        with pytest.raises(TooLarge):
            await store.publish(f"{s.lower()}.x", b"x" * (room + 1), s, "id", headers=hdr)
        assert store.state.connected
        assert await store.publish(f"{s.lower()}.x", b"x" * room, s, "id", headers=hdr) == 1

    backend.run(body)


def test_pattern_covers() -> None:
    assert pattern_covers("a.>", "a.b.*") and pattern_covers("a.*", "a.b") and pattern_covers("a.b", "a.b")
    assert not pattern_covers("a.*", "a.>") and not pattern_covers("a.b", "a.*") and not pattern_covers("a.>", "a")


# -- streams ------------------------------------------------------------------------


def test_stream_publish_get(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("S")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.one.*", f"{subj}.all.>"])
        info = await store.stream(s)
        assert (info.name, info.subjects, info.max_msg_size, info.deny_delete) == (
            s, (f"{subj}.one.*", f"{subj}.all.>"), -1, False)
        assert (info.first_seq, info.last_seq, info.direct) == (0, 0, False)
        assert await store.publish(f"{subj}.one.x", b"one", s, "id1") == 1
        assert await store.publish(f"{subj}.all.deep.er", b"two", s, "id2") == 2
        for nobody in (f"{subj}.one.a.b", f"{subj}.all", f"{subj}.zz"):  # '*' one token, '>' one or more
            with pytest.raises(Unavailable):  # no stream takes it: no responder
                await store.publish(nobody, b"", s, "id3")
        m = await store.get_msg(s, 1)
        assert (m.stream, m.subject, m.seq, m.data) == (s, f"{subj}.one.x", 1, b"one")
        assert m.headers["Nats-Msg-Id"] == "id1" and abs(m.time - time.time()) < 60
        info = await store.stream(s)
        assert (info.first_seq, info.last_seq) == (1, 2)
        with pytest.raises(NotFound):
            await store.get_msg(s, 3)
        with pytest.raises(Invalid):
            await store.get_msg(s, 0)
        with pytest.raises(Unavailable):  # no direct gets on this stream: no responder
            await store.get_msg(s, 1, direct=True)
        missing = fresh("NOSTREAM")
        with pytest.raises(NotFound):
            await store.get_msg(missing, 1)
        with pytest.raises(NotFound):
            await store.stream(missing)
        other = fresh("OTHER")
        backend.add_stream(store, other, [f"{other.lower()}.>"])
        with pytest.raises(Invalid):  # the subject is another stream's
            await store.publish(f"{subj}.one.x", b"", other, "id4")
        assert {s, other} <= {x.name for x in await store.streams()}

    backend.run(body)


def test_stream_dedupe_by_msg_id(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("DEDUP")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"])
        seq = await store.publish(f"{subj}.a", b"first", s, "same")
        assert await store.publish(f"{subj}.b", b"second", s, "same") == seq
        assert await store.publish(f"{subj}.a", b"other", s, "another") == seq + 1
        assert (await store.stream(s)).last_seq == seq + 1
        assert (await store.get_msg(s, seq)).data == b"first"
        await store.delete_msg(s, seq)
        assert await store.publish(f"{subj}.a", b"third", s, "same") == seq  # remembered past delete

    backend.run(body)


def test_delete_msg(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("DEL")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"])
        for i in range(3):
            await store.publish(f"{subj}.m", b"%d" % i, s, f"m{i}")
        await store.delete_msg(s, 2)
        with pytest.raises(NotFound):
            await store.get_msg(s, 2)
        assert ((await store.stream(s)).first_seq, (await store.stream(s)).last_seq) == (1, 3)
        errors = store.state.errors
        # Deleting what is not there is NotFound wherever the sequence is. The server says
        # it three ways: a gap inside the stream 10043 (400), before the first message
        # (and 0) 10057 "no message found", past the last 10057 "stream store EOF".
        with pytest.raises(NotFound):
            await store.delete_msg(s, 2)
        await store.delete_msg(s, 1)
        assert ((await store.stream(s)).first_seq, (await store.stream(s)).last_seq) == (3, 3)
        for seq in (2, 0, 4, 99):
            with pytest.raises(NotFound):
                await store.delete_msg(s, seq)
        with pytest.raises(NotFound):
            await store.delete_msg(fresh("NOSTREAM"), 1)
        await store.delete_msg(s, 3)
        assert ((await store.stream(s)).first_seq, (await store.stream(s)).last_seq) == (4, 3)
        for seq in (0, 1, 3, 4, 5):  # every message deleted
            with pytest.raises(NotFound):
                await store.delete_msg(s, seq)
        empty = fresh("DELE")
        backend.add_stream(store, empty, [f"{empty.lower()}.>"])
        for seq in (0, 1, 2):
            with pytest.raises(NotFound):
                await store.delete_msg(empty, seq)
        assert store.state.errors == errors  # NotFound is an answer
        keep = fresh("KEEP")
        backend.add_stream(store, keep, [f"{keep.lower()}.>"], deny_delete=True)
        seq = await store.publish(f"{keep.lower()}.x", b"x", keep, "k1")
        for which in (seq, seq + 1, 0):  # the server checks deny_delete before the sequence
            with pytest.raises(NotPermitted):
                await store.delete_msg(keep, which)
        assert (await store.get_msg(keep, seq)).data == b"x"
        b = fresh("kvdel")
        await store.create_bucket(b)
        r = await store.create(b, "k", b"v")
        with pytest.raises(NotPermitted):  # a bucket's stream denies deletes
            await store.delete_msg(f"KV_{b}", r)

    backend.run(body)


def test_stream_max_msg_size(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("SIZE")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"], max_msg_size=200)
        assert (await store.stream(s)).max_msg_size == 200
        assert await store.publish(f"{subj}.a", b"x" * 100, s, "a") == 1
        with pytest.raises(TooLarge):  # 150 bytes and the headers (Nats-Msg-Id, stream) are over 200
            await store.publish(f"{subj}.a", b"x" * 150, s, "b")

    backend.run(body)


def test_stream_watch(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("SW")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"])
        for i, data in enumerate((b"a", b"bb", b"ccc")):
            await store.publish(f"{subj}.{i}", data, s, f"w{i}")
        await store.delete_msg(s, 2)
        sink = Sink()
        w = await store.stream_watch(s, sink)
        items = list(await sink.synced())
        assert items[0] == RESYNC and items[-1] == SYNCED
        assert [(m.stream, m.subject, m.seq, m.size) for m in items[1:-1]] == [
            (s, f"{subj}.0", 1, 1), (s, f"{subj}.2", 3, 3)]
        assert all(isinstance(m, MsgSeen) and abs(m.time - time.time()) < 60 for m in items[1:-1])
        await store.publish(f"{subj}.live", b"1234", s, "w9")
        live = await sink.wait_len(len(items) + 1)
        assert [(m.subject, m.seq, m.size) for m in live[len(items):]] == [(f"{subj}.live", 4, 4)]
        await w.stop()
        empty = fresh("SWE")
        backend.add_stream(store, empty, [f"{empty.lower()}.>"])
        sink2 = Sink()
        w2 = await store.stream_watch(empty, sink2)
        assert await sink2.synced() == [RESYNC, SYNCED]
        await w2.stop()
        nothing = Sink()
        with pytest.raises(NotFound):
            await store.stream_watch(fresh("NOSTREAM"), nothing)
        await trio.sleep(0.1)
        assert nothing.items == []  # not even RESYNC

    backend.run(body)


# -- reads of what changed (kv_since, stream_since) ------------------------------------------


def same_entry(got: KvEntry, want: KvEntry) -> bool:
    """The same revision with the same value and headers (times: the same message, read two ways)."""
    return ((got.bucket, got.key, got.value, got.revision, got.headers)
            == (want.bucket, want.key, want.value, want.revision, want.headers)) and abs(got.time - want.time) < 0.01


def test_kv_since_full_and_incremental(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("since")
        await store.create_bucket(b)
        assert await store.kv_since(b) == KvDelta(b, 0, {}, {}, True)  # empty bucket
        ra = await store.create(b, "a", b"A", headers={"Hvfs-Writer": "w"})
        rb = await store.create(b, "dir/b.c", b"B")
        rx = await store.create(b, "x", b"X")
        ra2 = await store.update(b, "a", b"AA", ra, headers={"Hvfs-Writer": "w2"})
        await store.delete(b, "dir/b.c", rb)
        full = await store.kv_since(b, 0)
        assert (full.bucket, full.last, full.complete) == (b, ra2 + 1, True)  # the marker is the last revision
        assert sorted(full.puts) == ["a", "x"] and full.deleted == {"dir/b.c": ra2 + 1}
        for key in ("a", "x"):
            assert same_entry(full.puts[key], await store.get(b, key))
        assert full.puts["a"].headers["Hvfs-Writer"] == "w2" and full.puts["x"].revision == rx
        # After it: an update twice (once, the latest), a delete, a key made and deleted, a new one.
        mark = full.last
        rx2 = await store.update(b, "x", b"X2", rx)
        rx3 = await store.update(b, "x", b"X3", rx2)
        await store.delete(b, "a")
        rn = await store.create(b, "n", b"N")
        await store.delete(b, "n", rn)
        re = await store.create(b, "e", b"E")
        rb2 = await store.create(b, "dir/b.c", b"again")  # over its marker
        inc = await store.kv_since(b, mark)
        assert (inc.last, inc.complete) == (rb2, True)
        assert {k: (e.value, e.revision) for k, e in inc.puts.items()} == {
            "x": (b"X3", rx3), "e": (b"E", re), "dir/b.c": (b"again", rb2)}
        assert inc.deleted == {"a": rx3 + 1, "n": rn + 1}
        assert same_entry(inc.puts["x"], await store.get(b, "x"))
        # Nothing since: empty, at the same revision; and from a revision inside the changes.
        assert await store.kv_since(b, inc.last) == KvDelta(b, inc.last, {}, {}, True)
        mid = await store.kv_since(b, rn)
        assert (sorted(mid.puts), mid.deleted) == (["dir/b.c", "e"], {"n": rn + 1})
        again = await store.kv_since(b)  # the whole state, deletions whose markers are there
        assert (sorted(again.puts), again.deleted, again.last) == (
            ["dir/b.c", "e", "x"], {"a": rx3 + 1, "n": rn + 1}, rb2)
        errors, calls = store.state.errors, store.state.calls
        with pytest.raises(NotFound):
            await store.kv_since(fresh("nobucket"))
        with pytest.raises(NotFound):
            await store.kv_since(fresh("nobucket"), 5)
        assert store.state.errors == errors  # an answer
        with pytest.raises(InvalidName):
            await store.kv_since("no.such")
        with pytest.raises(Invalid):
            await store.kv_since(b, -1)
        assert store.state.calls == calls + 2  # refused before any request

    backend.run(body)


def test_kv_since_trimmed_history(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("trim")
        await store.create_bucket(b, history=1)
        r1 = await store.create(b, "a", b"1")
        r2 = await store.update(b, "a", b"2", r1)
        r3 = await store.update(b, "a", b"3", r2)  # 1 and 2 are gone: the stream starts at 3
        r4 = await store.create(b, "gone", b"g")
        await store.delete(b, "gone", r4)  # its value goes (history 1), its marker stays
        d = await store.kv_since(b, r1)
        assert not d.complete  # 2 is before the first sequence (3): a deletion may be missing
        assert ({k: e.revision for k, e in d.puts.items()}, d.deleted, d.last) == ({"a": r3}, {"gone": r4 + 1}, r4 + 1)
        assert (await store.kv_since(b, r2)).complete  # 3 is there: nothing after 2 is gone
        assert (await store.kv_since(b, 0)).complete  # the whole state is the whole state
        past = await store.kv_since(b, r4 + 10)  # past the last: another bucket of that name?
        assert (past.last, past.puts, past.deleted, past.complete) == (r4 + 1, {}, {}, False)

    backend.run(body)


def test_kv_since_expired_key_is_deleted(backend: Backend) -> None:
    async def body(store: Store) -> None:
        b = fresh("sincettl")
        await store.create_bucket(b, marker_ttl=1)
        sink = Sink()
        w = await store.watch(b, sink)
        await sink.synced()
        keep = await store.create(b, "keep", b"k")
        r = await store.create(b, "gone", b"x", ttl=1)
        await sink.wait(has(Op.PURGE, "gone"))
        purge = next(c for c in sink.items if isinstance(c, KvChange) and c.op is Op.PURGE)
        # While the marker lives (1 s): the key is deleted, at the marker's revision.
        d = await store.kv_since(b, r)
        assert (d.puts, d.deleted, d.last) == ({}, {"gone": purge.revision}, purge.revision)
        full = await store.kv_since(b)
        assert (list(full.puts), full.deleted) == (["keep"], {"gone": purge.revision})
        assert full.puts["keep"].revision == keep
        await w.stop()

    backend.run(body)


def test_stream_since(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("SINCE")
        p = s.lower()
        backend.add_stream(store, s, [f"{p}.>"])
        assert await store.stream_since(s) == StreamDelta(s, 0, 0, [])  # empty
        sent = [(f"{p}.a", b"1"), (f"{p}.b", b"2"), (f"{p}.a.x", b"3"), (f"{p}.a", b"4"), (f"{p}.c", b"5")]
        for i, (subj, data) in enumerate(sent):
            await store.publish(subj, data, s, f"m{i}", headers={"Hvfs-Writer": f"w{i}"})
        full = await store.stream_since(s)
        assert (full.stream, full.first, full.last) == (s, 1, 5)
        assert [(m.stream, m.subject, m.seq, m.data) for m in full.msgs] == [
            (s, subj, i + 1, data) for i, (subj, data) in enumerate(sent)]
        for m in full.msgs:  # the headers it was stored with, as get_msg gives them
            want = await store.get_msg(s, m.seq)
            assert m.headers == want.headers and m.headers["Hvfs-Writer"] == f"w{m.seq - 1}"
            assert abs(m.time - want.time) < 0.01
        mid = await store.stream_since(s, 2)
        assert ([m.seq for m in mid.msgs], mid.first, mid.last) == ([3, 4, 5], 1, 5)
        assert [m.seq for m in (await store.stream_since(s, 0, f"{p}.a")).msgs] == [1, 4]  # literal: that subject only
        assert [m.seq for m in (await store.stream_since(s, 1, f"{p}.a")).msgs] == [4]
        assert [m.seq for m in (await store.stream_since(s, 0, f"{p}.*")).msgs] == [1, 2, 4, 5]
        assert [m.seq for m in (await store.stream_since(s, 0, f"{p}.a.>")).msgs] == [3]
        assert [m.seq for m in (await store.stream_since(s, 2, f"{p}.>")).msgs] == [3, 4, 5]
        none = await store.stream_since(s, 0, f"{p}.zzz")  # taken by the stream, none there
        assert (none.msgs, none.first, none.last) == ([], 1, 5)
        assert await store.stream_since(s, 5) == StreamDelta(s, 5, 1, [])
        assert await store.stream_since(s, 9) == StreamDelta(s, 5, 1, [])
        # Deleted at the start: first moves on, the read starts there.
        await store.delete_msg(s, 1)
        await store.delete_msg(s, 2)
        await store.delete_msg(s, 4)
        gone = await store.stream_since(s)
        assert ([m.seq for m in gone.msgs], gone.first, gone.last) == ([3, 5], 3, 5)
        assert [m.seq for m in (await store.stream_since(s, 0, f"{p}.a")).msgs] == []
        await store.delete_msg(s, 5)  # the last: a read from 4 has nothing, and knows it
        assert await store.stream_since(s, 4) == StreamDelta(s, 5, 3, [])
        # A bucket's stream is a stream too.
        b = fresh("sincekv")
        await store.create_bucket(b)
        r = await store.create(b, "k", b"v")
        kv = await store.stream_since(f"KV_{b}", 0, f"$KV.{b}.*")
        assert [(m.subject, m.seq, m.data) for m in kv.msgs] == [(f"$KV.{b}.k", r, b"v")]
        errors, calls = store.state.errors, store.state.calls
        with pytest.raises(NotFound):
            await store.stream_since(fresh("NOSTREAM"))
        assert store.state.errors == errors
        with pytest.raises(Invalid, match="takes no subject"):
            await store.stream_since(s, 0, "elsewhere.>")
        calls = store.state.calls
        for bad in ("", f"{p}..a", f"{p}.>.a", f"{p}.a*", f"{p}.>x", f"{p}. a", ".a"):
            with pytest.raises(Invalid):
                await store.stream_since(s, 0, bad)
        with pytest.raises(Invalid):
            await store.stream_since(s, -1)
        with pytest.raises(InvalidName):
            await store.stream_since("a.b")
        assert store.state.calls == calls  # refused before any request

    backend.run(body)


def test_since_under_writes(backend: Backend) -> None:
    """Writes that go on during a read do not keep it going; what it reports is consistent."""

    async def body(store: Store) -> None:
        b = fresh("busy")
        await store.create_bucket(b, history=1)
        for i in range(200):
            await store.create(b, f"k{i:03}", b"v")
        stop = trio.Event()
        written: list[int] = []

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                written.append(await store.create(b, f"w{i:05}", b"w"))
                i += 1

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            for _ in range(5):
                d = await store.kv_since(b)
                assert {f"k{i:03}" for i in range(200)} <= set(d.puts)
                # Every key written up to the revision it reports is there, none after it.
                got = {e.revision for k, e in d.puts.items() if k.startswith("w")}
                assert {r for r in written if r <= d.last} <= got and max(got, default=0) <= d.last
            stop.set()

    backend.run(body)


def test_since_scale(backend: Backend) -> None:
    """2,000 keys / messages of ~200 bytes (10,000 measured apart: see the report); times printed."""
    n = 2000

    async def body(store: Store) -> None:
        b, s = fresh("scale"), fresh("SCALE")
        p = s.lower()
        await store.create_bucket(b)
        backend.add_stream(store, s, [f"{p}.>"])
        value = b"v" * 200

        async def fill(part: int) -> None:
            for i in range(part, n, 8):
                await store.create(b, f"dir{i % 10}/key{i:05}", value)
                await store.publish(f"{p}.{i % 10}", value, s, f"s{i}")

        async with trio.open_nursery() as nursery:
            for part in range(8):
                nursery.start_soon(fill, part)
        t = time.perf_counter()
        full = await store.kv_since(b)
        t_full = time.perf_counter() - t
        assert (len(full.puts), full.deleted, full.complete) == (n, {}, True)
        for i in range(100):  # 100 changes: 50 updates, 50 deletes
            key = f"dir{i % 10}/key{i:05}"
            if i % 2:
                await store.delete(b, key)
            else:
                await store.update(b, key, b"new", full.puts[key].revision)
        t = time.perf_counter()
        inc = await store.kv_since(b, full.last)
        t_inc = time.perf_counter() - t
        assert (len(inc.puts), len(inc.deleted), inc.last) == (50, 50, full.last + 100)
        t = time.perf_counter()
        msgs = await store.stream_since(s)
        t_stream = time.perf_counter() - t
        assert [m.seq for m in msgs.msgs] == list(range(1, n + 1))
        t = time.perf_counter()
        some = await store.stream_since(s, n - 100, f"{p}.*")
        t_tail = time.perf_counter() - t
        assert len(some.msgs) == 100
        print(f"\n{backend.kind}: kv_since {n} keys {t_full * 1000:.0f} ms, 100 changes {t_inc * 1000:.1f} ms; "
              f"stream_since {n} msgs {t_stream * 1000:.0f} ms, last 100 {t_tail * 1000:.1f} ms")

    backend.run(body)


# -- work queues ----------------------------------------------------------------------


def test_queue_delivery_ack_max_held(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("Q")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"])
        for i in range(3):
            await store.publish(f"{subj}.{i % 2}", b"m%d" % i, s, f"q{i}")
        sink = Sink()
        q = await store.queue(s, "work", sink, max_held=2, ack_wait=30.0)
        assert (q.stream, q.durable, q.ack_wait) == (s, "work", 30.0)
        first = await sink.wait_len(2)
        assert await sink.quiet(2, 0.3)  # max_held: no third until one is acked
        assert [(m.seq, m.subject, m.data, m.deliveries) for m in first] == [
            (1, f"{subj}.0", b"m0", 1), (2, f"{subj}.1", b"m1", 1)]
        now = time.monotonic()
        assert all(isinstance(m, QueueMsg) and now + 20 < m.expires < now + 28 for m in first)
        await store.ack(q, 1)
        third = (await sink.wait_len(3))[2]
        assert (third.seq, third.data, third.deliveries) == (3, b"m2", 1)
        with pytest.raises(NotFound):
            await store.ack(q, 1)  # no longer held
        with pytest.raises(NotFound):
            await store.ack(q, 99)
        await store.ack(q, 2)
        await store.ack(q, 3)
        await store.publish(f"{subj}.later", b"later", s, "q9")
        later = (await sink.wait_len(4))[3]
        assert (later.seq, later.data) == (4, b"later")

    backend.run(body)


def test_queue_let_go_and_redelivery(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("QR")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"])
        await store.publish(f"{subj}.job", b"job", s, "j1")
        await store.publish(f"{subj}.job", b"job2", s, "j2")
        sink = Sink()
        t0 = time.monotonic()
        q = await store.queue(s, "slow", sink, ack_wait=1.0, max_held=1)
        first = (await sink.wait_len(1))[0]
        assert isinstance(first, QueueMsg) and first.expires < t0 + 1.0
        items = await sink.wait_len(5, 6.0)
        t = time.monotonic() - t0
        # Let go margin (0.5 s) before the ack wait (1 s) ends; the server redelivers after it,
        # so the next message comes first.
        assert [(type(m).__name__, m.seq, getattr(m, "deliveries", 0)) for m in items] == [
            ("QueueMsg", 1, 1), ("QueueGone", 1, 0), ("QueueMsg", 2, 1), ("QueueGone", 2, 0),
            ("QueueMsg", 1, 2)]
        assert items[1] == QueueGone(1) and 0.9 < t < 4.0
        await store.ack(q, 1)

    backend.run(body)


def test_queue_existing_filter_missing(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("QF")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"])
        with pytest.raises(NotFound):
            await store.queue(s, "nobody", Sink(), create=False)
        with pytest.raises(NotFound):
            await store.queue(fresh("NOSTREAM"), "d", Sink())
        for i in range(4):
            await store.publish(f"{subj}.{i % 2}", b"%d" % i, s, f"f{i}")
        sink = Sink()
        await store.queue(s, "evens", sink, filter_subject=f"{subj}.0", ack_wait=5.0, max_held=10)
        assert [m.seq for m in await sink.wait_len(2)] == [1, 3]
        assert await sink.quiet(2, 0.2)
        q2 = await store.queue(s, "evens", Sink(), create=False, ack_wait=60.0)
        assert q2.ack_wait == 5.0  # the consumer's own config wins

    backend.run(body)


def test_queue_shared_by_two_mounts(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("QS")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"])
        for i in range(4):
            await store.publish(f"{subj}.x", b"%d" % i, s, f"s{i}")
        other = backend.other(store)
        await other.start()
        try:
            one, two = Sink(), Sink()
            await store.queue(s, "shared", one, max_held=2)
            await other.queue(s, "shared", two, max_held=2, create=False)
            await one.wait_len(2)
            await two.wait_len(2)
            seqs = [m.seq for m in one.items + two.items]
            assert sorted(seqs) == [1, 2, 3, 4]  # never the same message to both
        finally:
            await other.close()

    backend.run(body)


def test_queue_stop(backend: Backend) -> None:
    async def body(store: Store) -> None:
        s = fresh("QX")
        subj = s.lower()
        backend.add_stream(store, s, [f"{subj}.>"])
        for i in range(40):
            await store.publish(f"{subj}.x", b"%d" % i, s, f"x{i}")
        sink = Sink()
        q = await store.queue(s, "stopped", sink, ack_wait=1.0, max_held=40)
        await sink.wait_len(1)
        await q.stop()  # from trio, maybe with deliveries on their way to the sink
        n = len(sink.items)
        assert all(isinstance(m, QueueMsg) for m in sink.items)
        for i in range(3):
            await store.publish(f"{subj}.y", b"late", s, f"y{i}")
        # Past the let-go time (0.5 s) and the ack wait: no QueueGone, no redelivery, nothing new.
        await trio.sleep(1.5)
        assert len(sink.items) == n
        await q.stop()  # twice is fine
        # The consumer lives on: another hold on it gets what this one let go, and the rest.
        again = Sink()
        q2 = await store.queue(s, "stopped", again, create=False, max_held=50)
        want = set(range(1, 44))
        await again.wait(lambda items: {m.seq for m in items if isinstance(m, QueueMsg)} >= want, 8.0)
        await q2.stop()
        assert len(sink.items) == n

    backend.run(body)


def test_nats_jetstream_gone_is_unavailable_not_not_found(tmp_path: Any) -> None:
    """"No responders" is also what a server without JetStream answers: that is no NotFound."""
    import subprocess

    from hvfs.server import EmbeddedServer, find_nats_server

    js = EmbeddedServer(tmp_path / "js")
    js.start()
    plain: subprocess.Popen[bytes] | None = None

    def start_plain() -> subprocess.Popen[bytes]:  # the same port, no -js
        return subprocess.Popen([find_nats_server(), "-a", "127.0.0.1", "-p", str(js.port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        async def body(store: Store) -> None:
            nonlocal plain
            b = fresh("jsgone")
            await store.create_bucket(b)
            r = await store.create(b, "k", b"v")
            await trio.to_thread.run_sync(js.stop)
            plain = await trio.to_thread.run_sync(start_plain)
            with trio.fail_after(10):
                while True:  # reconnected to the server without JetStream
                    await trio.sleep(0.1)
                    if store.state.connected and store.state.reconnects:
                        break
            for call in (lambda: store.create(b, "k2", b"v"), lambda: store.update(b, "k", b"w", r),
                         lambda: store.delete(b, "k"), lambda: store.get(b, "k"),
                         lambda: store.get(b, "k", r), lambda: store.watch(b, Sink())):
                with pytest.raises(Unavailable):
                    await call()

        run(NatsStore(ConnectOptions(servers=[js.url], timeout=2.0)), body)
    finally:
        if plain is not None:
            plain.terminate()
            plain.wait(10)
        js.stop()


# -- MemoryStore's test switches -------------------------------------------------------


def test_memory_outage_and_resync() -> None:
    async def body(store: Store) -> None:
        assert isinstance(store, MemoryStore)
        await store.create_bucket("b")
        await store.create("b", "k", b"1")
        sink = Sink()
        await store.watch("b", sink)
        await sink.synced()
        sink.take()
        other = store.peer()
        await other.start()
        store.disconnect()
        with pytest.raises(Unavailable):
            await store.get("b", "k")
        assert not store.state.connected and store.state.errors == 1
        await other.create("b", "new", b"2")  # missed while away
        store.reconnect()
        items = await sink.synced()
        assert items[0] == RESYNC and [c[0] for c in changes(items)] == ["k", "new"]
        assert store.state.reconnects == 1 and (await store.get("b", "new")).value == b"2"
        await other.close()

    run(MemoryStore(), body)


def test_memory_deny_and_fail_next() -> None:
    async def body(store: Store) -> None:
        assert isinstance(store, MemoryStore)
        await store.create_bucket("b")
        store.deny("$KV.b.>")
        with pytest.raises(PermissionDenied):
            await store.create("b", "k", b"1")
        with pytest.raises(NotFound):
            await store.get("b", "k")  # reads are another subject
        store.denied.clear()
        r = await store.create("b", "k", b"1")
        store.fail_next(Timeout("slow"), "$KV.b.k")
        await store.get("b", "k")  # not a matching subject
        with pytest.raises(Timeout):
            await store.update("b", "k", b"2", r)
        assert await store.update("b", "k", b"2", r) == r + 1
        assert store.state.timeouts == 1

    run(MemoryStore(), body)


def test_memory_expiry_is_prompt_and_stops_with_close() -> None:
    async def body(store: Store) -> None:
        assert isinstance(store, MemoryStore)
        await store.create_bucket("b", marker_ttl=1)
        sink = Sink()
        await store.watch("b", sink)
        await sink.synced()
        await store.create("b", "k", b"v", ttl=1)
        t0 = time.monotonic()
        await sink.wait(has(Op.PURGE, "k"))  # no other call needed: the store's own task
        assert 0.95 < time.monotonic() - t0 < 1.25
        # The marker expires too, leaving nothing: no second marker.
        assert await sink.quiet(len(sink.items), 1.3)
        assert changes(sink.items)[-1][:2] == ("k", Op.PURGE)
        await store.create("b", "later", b"v", ttl=1)
        await store.close()
        assert store._expiry.cancel_called

    run(MemoryStore(), body)


def test_memory_older_server_without_msg_ttl() -> None:
    async def body(store: Store) -> None:
        assert isinstance(store, MemoryStore) and not store.msg_ttl
        bi = await store.create_bucket("b", marker_ttl=5)
        assert (bi.msg_ttl, bi.marker_ttl) == (False, 0.0)  # no markers without TTLs
        with pytest.raises(Invalid, match="this server has no per-message TTL"):
            await store.create("b", "k", b"v", ttl=5)
        assert await store.create("b", "k", b"v") > 0

    run(MemoryStore(msg_ttl=False), body)


def test_subject_matches() -> None:
    assert subject_matches("a.*.c", "a.b.c") and not subject_matches("a.*.c", "a.b.b.c")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    assert subject_matches("a", "a") and not subject_matches("a", "a.b")


# -- object store buckets (issue 15) ----------------------------------------------------

import errno  # noqa: E402

import nats.js.errors  # noqa: E402

from hvfs.errors import errno_of  # noqa: E402
from hvfs.store.base import CHUNK_DIGEST_HEADER, Corrupt, ObjChange, sha256_digest  # noqa: E402
from hvfs.store.objrules import obj_meta_subject  # noqa: E402

KiB = 1024


def _local(data: bytes) -> str:
    """A local file holding ``data`` (what a mount's spool is); removed at exit."""
    import atexit
    import tempfile

    fd, path = tempfile.mkstemp(prefix="hvfs-obj-")
    os.write(fd, data)
    os.close(fd)
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    return path


def _sha(data: bytes) -> str:
    import hashlib

    return sha256_digest(hashlib.sha256(data).digest())


def _corrupt(backend: Backend, store: Any, bucket: str, name: str) -> None:
    """Damage the object as a failing disk or a buggy client would: chunk 0's bytes
    (memory) / the meta's digest (a real server keeps no way to change a stored chunk)."""
    if isinstance(store, MemoryStore):
        store.corrupt_chunk(bucket, name, 0, b"X" * (128 * KiB))
        return
    assert isinstance(backend, NatsBackend)
    raw = backend.raw
    import json

    subj = obj_meta_subject(bucket, name)
    m = raw.run(raw.js.get_last_msg(f"OBJ_{bucket}", subj))
    doc = json.loads(m.data)
    doc["digest"] = _sha(b"something else")
    raw.run(raw.js.publish(subj, json.dumps(doc).encode(), headers={"Nats-Rollup": "sub"}))


def test_obj_put_info_read_replace_delete(backend: Backend) -> None:
    data = os.urandom(300 * KiB)  # 3 chunks: 128, 128, 44 KiB

    async def body(store: Any) -> None:
        b = fresh("obj")
        bi = await store.create_obj_bucket(b)
        assert (bi.name, bi.max_bytes) == (b, -1)
        info = await store.obj_put(b, "dir/a.bin", _local(data), 0, headers={"Hvfs-Writer": "alice"})
        assert (info.name, info.size, info.chunks, info.digest) == ("dir/a.bin", len(data), 3, _sha(data))
        assert info.revision > 0 and abs(info.time - time.time()) < 60 and not info.deleted
        got = await store.obj_info(b, "dir/a.bin")
        assert (got.revision, got.nuid, got.digest, got.headers) == (info.revision, info.nuid, info.digest,
                                                                     {"Hvfs-Writer": "alice"})
        assert b"".join(await store.obj_read(got, 0, 3)) == data
        assert await store.obj_read(got, 1, 1) == [data[128 * KiB:256 * KiB]]
        assert await store.obj_read(got, 2, 10) == [data[256 * KiB:]]  # clipped at the last chunk
        with pytest.raises(Invalid):
            await store.obj_read(got, 3, 1)
        # CAS: 0 is "no object"; a stale revision loses and says which one won.
        with pytest.raises(Conflict) as ei:
            await store.obj_put(b, "dir/a.bin", _local(b"other"), 0)
        assert ei.value.current == info.revision
        new = await store.obj_put(b, "dir/a.bin", _local(b"second"), info.revision)
        assert new.revision > info.revision and new.nuid != info.nuid and new.chunks == 1
        with pytest.raises(Conflict):
            await store.obj_put(b, "dir/a.bin", _local(b"third"), info.revision)
        assert b"".join(await store.obj_read(await store.obj_info(b, "dir/a.bin"), 0, 1)) == b"second"
        with pytest.raises(NotFound, match="replaced or deleted"):
            await store.obj_read(info, 0, 1)  # the old chunks are purged
        with pytest.raises(Conflict):
            await store.obj_delete(b, "dir/a.bin", info.revision)
        await store.obj_delete(b, "dir/a.bin")
        with pytest.raises(NotFound):
            await store.obj_info(b, "dir/a.bin")
        with pytest.raises(NotFound):
            await store.obj_delete(b, "dir/a.bin")
        again = await store.obj_put(b, "dir/a.bin", _local(b""), 0)  # over the marker; empty
        assert (again.size, again.chunks, again.digest) == (0, 0, "")
        assert await store.obj_read(again, 0, 1) == []
        with pytest.raises(NotFound):
            await store.obj_info(b, "never")
        with pytest.raises(NotFound):
            await store.obj_put(fresh("nobucket"), "x", _local(b"x"), 0)
        with pytest.raises(InvalidName):
            await store.obj_info(b, "")

    backend.run(body)


def test_obj_buckets_and_settings(backend: Backend) -> None:
    async def body(store: Any) -> None:
        b = fresh("objb")
        await store.create_obj_bucket(b, max_bytes=1 << 20)
        assert (await store.create_obj_bucket(b, max_bytes=1 << 20)).max_bytes == 1 << 20
        with pytest.raises(Invalid, match="max_bytes"):
            await store.create_obj_bucket(b, max_bytes=2 << 20)
        assert b in {x.name for x in await store.obj_buckets()}
        assert b not in {x.name for x in await store.buckets()}  # not a KV bucket
        assert (await store.obj_bucket(b)).max_bytes == 1 << 20
        with pytest.raises(NotFound):
            await store.obj_bucket(fresh("nobucket"))
        with pytest.raises(InvalidName):
            await store.create_obj_bucket("a.b")

    backend.run(body)


def test_obj_too_large_stores_nothing(backend: Backend) -> None:
    async def body(store: Any) -> None:
        b = fresh("objbig")
        await store.create_obj_bucket(b, max_bytes=256 * KiB)
        with pytest.raises(TooLarge):
            await store.obj_put(b, "big", _local(os.urandom(400 * KiB)), 0)
        with pytest.raises(NotFound):
            await store.obj_info(b, "big")
        assert await store.obj_list(b) == []
        small = await store.obj_put(b, "small", _local(b"x" * 1000), 0)  # the chunks went: room again
        assert small.size == 1000

    backend.run(body)


def test_obj_rename_keeps_the_chunks(backend: Backend) -> None:
    data = os.urandom(200 * KiB)

    async def body(store: Any) -> None:
        b = fresh("objmv")
        await store.create_obj_bucket(b)
        a = await store.obj_put(b, "a", _local(data), 0)
        moved = await store.obj_rename(b, "a", "d/b", a.revision, 0)
        assert (moved.name, moved.nuid, moved.digest) == ("d/b", a.nuid, a.digest)
        with pytest.raises(NotFound):
            await store.obj_info(b, "a")
        assert b"".join(await store.obj_read(await store.obj_info(b, "d/b"), 0, 2)) == data
        c = await store.obj_put(b, "c", _local(b"c"), 0)
        with pytest.raises(Conflict):
            await store.obj_rename(b, "c", "d/b", c.revision, 0)  # d/b exists: its revision is asked
        assert [i.name for i in await store.obj_list(b)] == ["d/b", "c"]

    backend.run(body)


def test_obj_watch_snapshot_then_live(backend: Backend) -> None:
    async def body(store: Any) -> None:
        b = fresh("objw")
        await store.create_obj_bucket(b)
        first = await store.obj_put(b, "one", _local(b"1" * 10), 0)
        gone = await store.obj_put(b, "gone", _local(b"g"), 0)
        await store.obj_delete(b, "gone", gone.revision)
        sink = Sink()
        w = await store.obj_watch(b, sink)
        items = await sink.synced()
        assert items[0] == RESYNC
        seen = {(c.name, c.deleted, c.size) for c in items if isinstance(c, ObjChange)}
        assert seen == {("one", False, 10), ("gone", True, 0)}
        assert next(c for c in items if isinstance(c, ObjChange) and c.name == "one").digest == first.digest
        sink.take()
        other = backend.other(store)
        await other.start()
        try:
            two = await other.obj_put(b, "two", _local(b"22"), 0)
        finally:
            await other.close()
        got = await sink.wait(lambda items: any(isinstance(c, ObjChange) and c.name == "two" for c in items))
        c = next(c for c in got if isinstance(c, ObjChange))
        assert (c.name, c.deleted, c.revision, c.size) == ("two", False, two.revision, 2)  # no chunk shows
        await store.obj_delete(b, "one")
        await sink.wait(lambda items: any(isinstance(c, ObjChange) and c.name == "one" and c.deleted
                                          for c in items))
        await w.stop()
        with pytest.raises(NotFound):
            await store.obj_watch(fresh("nobucket"), Sink())

    backend.run(body)


def test_obj_corrupt_is_never_bytes(backend: Backend) -> None:
    data = os.urandom(130 * KiB)

    async def body(store: Any) -> None:
        b = fresh("objbad")
        await store.create_obj_bucket(b)
        await store.obj_put(b, "x", _local(data), 0)
        _corrupt(backend, store, b, "x")
        info = await store.obj_info(b, "x")
        with pytest.raises(Corrupt, match="digest"):
            await store.obj_read(info, 0, 2)
        assert errno_of(Corrupt("x")) == errno.EIO

    backend.run(body)


def test_obj_interop_with_nats_clients(server: Any, raw: RawNats) -> None:
    """What nats-py's object store writes, hvfs reads, and the other way round."""
    data = os.urandom(300 * KiB)
    b = fresh("objx")

    async def body(store: Any) -> None:
        await store.create_obj_bucket(b)
        obs = await trio.to_thread.run_sync(lambda: raw.run(raw.js.object_store(b)))
        await trio.to_thread.run_sync(lambda: raw.run(obs.put("from-nats-py", data)))
        info = await store.obj_info(b, "from-nats-py")
        assert (info.size, info.chunks, info.digest) == (len(data), 3, _sha(data))
        assert b"".join(await store.obj_read(info, 0, 3)) == data
        await store.obj_put(b, "from-hvfs", _local(data), 0, metadata={"issue": "is-42"})
        res = await trio.to_thread.run_sync(lambda: raw.run(obs.get("from-hvfs")))  # nats-py checks the digest
        assert res.data == data
        # The chunks hvfs writes carry their own digest.
        m = await trio.to_thread.run_sync(lambda: raw.run(raw.js.get_msg(
            f"OBJ_{b}", seq=1, subject=f"$O.{b}.C.{info.nuid}", next=True)))
        assert m.data == data[:128 * KiB] and CHUNK_DIGEST_HEADER not in (m.headers or {})
        await store.obj_delete(b, "from-hvfs")
        with pytest.raises(nats.js.errors.ObjectNotFoundError):
            await trio.to_thread.run_sync(lambda: raw.run(obs.get("from-hvfs")))

    run(NatsStore(ConnectOptions(servers=[server.url], timeout=2.0)), body)
