"""The store in memory: a trio-native double of ``hvfs.store.nats`` for fast tests.

What a nats-server keeps: streams of messages, one sequence per stream; a KV
bucket is the stream ``KV_<name>`` on ``$KV.<name>.>`` with per-key history;
a key's revision is its last message's sequence. Answers and error classes are
NatsStore's against a real server (``tests/test_store_contract.py`` runs one
suite on both). Simplified: no TTLs, purges or stream limits but history and
message size.

Test switches: ``disconnect``/``reconnect`` (watches resync), ``deny(pattern)``,
``fail_next(exc)``, ``add_bucket``/``add_stream``, and ``peer()``: another
client of the same data, as a second mount or the nats CLI would be.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from ..errors import (
    Conflict,
    Exists,
    HvfsError,
    Invalid,
    NotFound,
    NotPermitted,
    PermissionDenied,
    Timeout,
    TooLarge,
    Unavailable,
)
from .base import (
    RESYNC,
    SYNCED,
    BucketInfo,
    KvChange,
    KvEntry,
    MsgSeen,
    Op,
    Queue,
    QueueGone,
    QueueMsg,
    StoreState,
    StreamInfo,
    StreamMsg,
    WatchSink,
)
from .rules import (
    KV_OP,
    check_bucket,
    check_key,
    check_new_bucket,
    check_subject,
    hdr_size,
    subject_matches,
)

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_LAST = "Nats-Expected-Last-Subject-Sequence"
_EXPECT = "Nats-Expected-Stream"
_CHUNK = 256
_DUPE_WINDOW = 120.0  # nats-py's KV default; streams made by add_stream get the server's, also 2 min
def _no_stream(what: str) -> Unavailable:
    return Unavailable(f"{what}: no JetStream responder (bucket or stream missing?)")  # no stream takes it


@dataclass(slots=True)
class _Msg:
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]
    time: float

    @property
    def op(self) -> Op:
        return {"DEL": Op.DEL, "PURGE": Op.PURGE}.get(self.headers.get(KV_OP, ""), Op.PUT)


@dataclass(slots=True)
class _Consumer:
    """A durable pull consumer: explicit acks, redelivery after ``ack_wait``."""

    filter: str | None
    ack_wait: float
    cursor: int = 0  # the last stream sequence handed out for the first time
    pending: dict[int, tuple[float, int]] = field(default_factory=dict)  # seq -> (redelivery due, deliveries)

    def take(self, st: _Stream, want: int, now: float) -> list[tuple[_Msg, int]]:
        """Up to ``want`` deliveries: redeliveries that are due first, then new messages."""
        out: list[tuple[_Msg, int]] = []
        for seq, (due, n) in sorted(self.pending.items()):
            m = st.msgs.get(seq)
            if m is None:
                del self.pending[seq]
            elif due <= now and len(out) < want:
                self.pending[seq] = (now + self.ack_wait, n + 1)
                out.append((m, n + 1))
        while len(out) < want and self.cursor < st.last_seq:
            self.cursor += 1
            m = st.msgs.get(self.cursor)
            if m is not None and (not self.filter or subject_matches(self.filter, m.subject)):
                self.pending[m.seq] = (now + self.ack_wait, 1)
                out.append((m, 1))
        return out


class _Stream:
    def __init__(self, name: str, subjects: list[str], max_msg_size: int = -1, deny_delete: bool = False,
                 history: int = 0, direct: bool = False) -> None:
        self.name, self.subjects, self.history, self.direct = name, list(subjects), history, direct
        self.max_msg_size, self.deny_delete = max_msg_size if max_msg_size > 0 else -1, deny_delete
        self.msgs: dict[int, _Msg] = {}  # in sequence order
        self.last_seq = 0
        self.by_subject: dict[str, list[int]] = {}  # oldest first
        self.msg_ids: dict[str, tuple[int, float]] = {}
        self.watches: list[_Watch] = []
        self.consumers: dict[str, _Consumer] = {}
        self.queues: list[_Queue] = []

    def info(self) -> StreamInfo:
        first = next(iter(self.msgs)) if self.msgs else (self.last_seq + 1 if self.last_seq else 0)
        return StreamInfo(self.name, tuple(self.subjects), self.max_msg_size, self.deny_delete,
                          first, self.last_seq, self.direct)

    def bucket_info(self) -> BucketInfo:
        return BucketInfo(self.name[3:], self.max_msg_size, self.history or 1)

    def last(self, subject: str) -> _Msg | None:
        seqs = self.by_subject.get(subject)
        return self.msgs[seqs[-1]] if seqs else None

    def check_size(self, data: bytes, headers: dict[str, str], max_payload: int, what: str) -> None:
        size = len(data) + hdr_size(headers)
        if len(data) > max_payload or size > max_payload:  # NatsStore refuses it before sending
            raise TooLarge(f"{what}: value larger than the server's max payload")
        if 0 < self.max_msg_size < size:
            raise TooLarge(f"{what}: value larger than the bucket allows")

    def append(self, subject: str, data: bytes, headers: dict[str, str]) -> _Msg:
        self.last_seq += 1
        m = _Msg(subject, self.last_seq, bytes(data), dict(headers), time.time())
        self.msgs[m.seq] = m
        seqs = self.by_subject.setdefault(subject, [])
        seqs.append(m.seq)
        if self.history > 0 and len(seqs) > self.history:
            del self.msgs[seqs.pop(0)]
        for w in list(self.watches):
            w.on_msg(m)
        for q in self.queues:
            q.wake()
        return m

    def remove(self, seq: int) -> None:
        m = self.msgs.pop(seq)
        self.by_subject[m.subject].remove(seq)
        if not self.by_subject[m.subject]:
            del self.by_subject[m.subject]


class _Emitter:
    """Hands items to a sink on the trio thread, in batches, never inside the caller's call."""

    def __init__(self, token: trio.lowlevel.TrioToken, sink: WatchSink, name: str) -> None:
        self.token, self.sink, self.name = token, sink, name
        self.buf: list[Any] = []
        self.scheduled = self.closed = False

    def emit(self, items: list[Any]) -> None:
        if self.closed:
            return
        self.buf.extend(items)
        if not self.scheduled:
            self.scheduled = True
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self._deliver)

    def _deliver(self) -> None:
        items, self.buf = self.buf[:_CHUNK], self.buf[_CHUNK:]
        self.scheduled = bool(self.buf)
        if self.scheduled:
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self._deliver)
        if self.closed or not items:
            return
        try:
            self.sink(items)
        except Exception:  # like NatsStore: one bad change must not end the trio run
            log.exception("watch %s: applying %d changes failed", self.name, len(items))


class _Watch(_Emitter):
    """A KV watch (last message per key, then live) or a stream watch (every message, then live)."""

    def __init__(self, store: MemoryStore, st: _Stream, sink: WatchSink, kv: bool) -> None:
        assert store._token is not None
        super().__init__(store._token, sink, st.name)
        self.store, self.st, self.kv = store, st, kv

    def item(self, m: _Msg) -> KvChange | MsgSeen:
        if self.kv:
            op = m.op
            return KvChange(self.st.name[3:], m.subject[len(self.st.name) + 2:], op, m.seq,
                            len(m.data) if op is Op.PUT else 0, m.time)
        return MsgSeen(self.st.name, m.subject, m.seq, len(m.data), m.time)

    def resync(self) -> None:
        """RESYNC, the snapshot, SYNCED; a KV snapshot has delete markers too, as NATS's has."""
        if self.kv:
            msgs = sorted((self.st.msgs[seqs[-1]] for seqs in self.st.by_subject.values()), key=lambda m: m.seq)
        else:
            msgs = list(self.st.msgs.values())
        self.buf.clear()
        self.emit([RESYNC, *(self.item(m) for m in msgs), SYNCED])

    def on_msg(self, m: _Msg) -> None:
        if self.store.state.connected:  # what is missed while away, the resync on reconnect covers
            self.emit([self.item(m)])

    async def stop(self) -> None:
        self.closed = True
        self.buf.clear()
        with contextlib.suppress(ValueError):
            self.st.watches.remove(self)
        self.store._watches.discard(self)
        await trio.lowlevel.checkpoint()


class _Queue:
    """This store's hold on a durable consumer; lets go ``margin`` before the ack wait ends."""

    def __init__(self, store: MemoryStore, st: _Stream, durable: str, consumer: _Consumer,
                 sink: WatchSink, max_held: int) -> None:
        assert store._token is not None
        self.store, self.st, self.consumer = store, st, consumer
        self.stream, self.durable = st.name, durable
        self.ack_wait = consumer.ack_wait
        self.max_held = max(1, max_held)
        self.held: dict[int, float] = {}  # seq -> trio time this store lets go
        self._emitter = _Emitter(store._token, sink, f"{st.name}/{durable}")
        self._wake = trio.Event()
        self._scope = trio.CancelScope()

    @property
    def margin(self) -> float:
        return min(max(0.5, self.ack_wait * 0.1), 5.0)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        with self._scope:
            while True:
                now = trio.current_time()
                for seq, until in list(self.held.items()):
                    if until <= now:
                        del self.held[seq]
                        self._emitter.emit([QueueGone(seq)])
                want = self.max_held - len(self.held)
                wake_at = min(self.held.values(), default=math.inf)
                if want > 0 and self.store.state.connected:
                    keep = max(self.ack_wait - self.margin, 0.1)
                    for m, n in self.consumer.take(self.st, want, now):
                        self.held[m.seq] = now + keep
                        self._emitter.emit([QueueMsg(m.seq, m.subject, m.data, m.time, n, time.monotonic() + keep)])
                    wake_at = min([*self.held.values(), *(d for d, _ in self.consumer.pending.values()), wake_at])
                self._wake = trio.Event()
                with trio.move_on_at(wake_at):
                    await self._wake.wait()

    async def stop(self) -> None:
        """Stop fetching; what is held the consumer redelivers after the ack wait; nothing reaches the sink after."""
        self._scope.cancel()
        self._emitter.closed = True
        with contextlib.suppress(ValueError):
            self.st.queues.remove(self)
        self.store._queues.discard(self)
        await trio.lowlevel.checkpoint()


class MemoryStore:
    """Store interface in memory (see hvfs.store.base.Store); one trio run at a time."""

    def __init__(self, *, timeout: float = 2.0, max_payload: int = 1 << 20) -> None:
        self.state = StoreState(server="memory")
        self.timeout = timeout  # the bound a caller sizes its waits from (calls here never wait)
        self.max_payload = max_payload  # the server's, headers included
        self._streams: dict[str, _Stream] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._watches: set[_Watch] = set()
        self._queues: set[_Queue] = set()
        self.denied: list[str] = []  # subject patterns calls on which raise PermissionDenied
        self._faults: list[tuple[str, HvfsError]] = []

    # -- test switches -------------------------------------------------------

    def peer(self) -> MemoryStore:
        """Another client of the same data (a second mount, the nats CLI), not yet started."""
        other = MemoryStore(timeout=self.timeout, max_payload=self.max_payload)
        other._streams = self._streams
        return other

    def disconnect(self) -> None:
        """Calls raise Unavailable; watches miss changes until ``reconnect``."""
        self.state.connected = False

    def reconnect(self) -> None:
        """Back: every watch starts over with RESYNC and a fresh snapshot, as on NATS."""
        self.state.connected = True
        self.state.reconnects += 1
        for w in list(self._watches):
            w.resync()
        for q in self._queues:
            q.wake()

    def deny(self, pattern: str) -> None:
        """Calls on subjects matching ``pattern`` raise PermissionDenied (``$KV.b.>``: writes to b)."""
        self.denied.append(pattern)

    def fail_next(self, exc: HvfsError, pattern: str = ">") -> None:
        """The next call on a subject matching ``pattern`` raises ``exc`` instead of running."""
        self._faults.append((pattern, exc))

    def add_stream(self, name: str, subjects: list[str], max_msg_size: int = -1,
                   deny_delete: bool = False, direct: bool = False) -> StreamInfo:
        """A stream made by someone else (setup for tests; not a store call)."""
        if name in self._streams:
            raise Invalid(f"stream {name!r} exists")
        st = self._streams[name] = _Stream(name, subjects, max_msg_size, deny_delete, direct=direct)
        return st.info()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.state.connected = True
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        for q in list(self._queues):
            await q.stop()
        for w in list(self._watches):
            await w.stop()
        self.state.connected = False

    async def _call(self, what: str, subject: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` as one call: counted, refused when away or denied, errors tallied as NatsStore does."""
        self.state.calls += 1
        await trio.lowlevel.checkpoint()
        try:
            if not self.state.connected:
                raise Unavailable(f"{what}: not connected to NATS")
            if any(subject_matches(p, subject) for p in self.denied):
                raise PermissionDenied(f"NATS permissions violation: this user may not publish to {subject}")
            fault = next((f for f in self._faults if subject_matches(f[0], subject)), None)
            if fault is not None:
                self._faults.remove(fault)
                raise fault[1]
            return fn()
        except (NotFound, Exists, Conflict):
            raise  # answers (no such key, lost CAS), not failures: not counted as errors
        except HvfsError as e:
            self.state.errors += 1
            self.state.last_error = f"{what}: {e.reason}"
            if isinstance(e, Timeout):
                self.state.timeouts += 1
            raise

    def _stream(self, name: str, why: str | HvfsError) -> _Stream:
        st = self._streams.get(name)
        if st is None:
            raise why if isinstance(why, HvfsError) else NotFound(why)
        return st

    # -- buckets -----------------------------------------------------------------

    async def buckets(self) -> list[BucketInfo]:
        return await self._call("list buckets", "$JS.API.STREAM.LIST", lambda: [
            st.bucket_info() for n, st in sorted(self._streams.items()) if n.startswith("KV_")])

    async def bucket(self, name: str) -> BucketInfo:
        check_bucket(name, f"bucket {name}")
        return await self._call(f"bucket {name}", f"$JS.API.STREAM.INFO.KV_{name}",
                                lambda: self._stream(f"KV_{name}", f"no KV bucket {name!r}").bucket_info())

    async def create_bucket(self, name: str, history: int = 10) -> BucketInfo:
        what = f"create bucket {name}"
        check_new_bucket(name, what)
        return await self._call(what, "$JS.API.STREAM.CREATE", lambda: self.add_bucket(name, history, what=what))

    def add_bucket(self, name: str, history: int = 10, max_value_size: int = -1, *,
                   what: str = "") -> BucketInfo:
        """create_bucket's work (direct gets on); a test calls it to make a bucket with a max value size."""
        what = what or f"create bucket {name}"
        check_new_bucket(name, what)
        if history > 64:
            raise Invalid(f"{what}: nats: history limited to a max of 64")
        st = _Stream(f"KV_{name}", [f"$KV.{name}.>"], max_value_size, deny_delete=True, history=history,
                     direct=True)
        old = self._streams.setdefault(st.name, st)
        if (old.history, old.max_msg_size) != (st.history, st.max_msg_size):
            raise Invalid(f"{what}: stream name already in use with a different configuration")
        return old.bucket_info()

    def forget_bucket(self, name: str) -> None:
        pass  # nothing cached

    # -- keys ----------------------------------------------------------------------

    async def get(self, bucket: str, key: str, revision: int | None = None) -> KvEntry:
        check_key(bucket, key, f"get {bucket}/{key}")
        at = f"{bucket}/{key}" + (f"@{revision}" if revision else "")
        subject = f"$KV.{bucket}.{key}"

        def run() -> KvEntry:
            st = self._stream(f"KV_{bucket}", f"no KV bucket {bucket!r}")
            m = st.msgs.get(revision) if revision else st.last(subject)
            if m is None:
                raise NotFound(f"{at}: no such key")
            if m.subject != subject or m.op is not Op.PUT:
                raise NotFound(f"{at}: deleted")
            return KvEntry(bucket, key, m.data, m.seq, m.time)

        st = self._streams.get(f"KV_{bucket}")
        api = "$JS.API.DIRECT.GET." if st is not None and st.direct else "$JS.API.STREAM.MSG.GET."
        return await self._call(f"get {bucket}/{key}", f"{api}KV_{bucket}", run)

    async def create(self, bucket: str, key: str, value: bytes) -> int:
        return await self._put(bucket, key, value, 0, create=True)

    async def update(self, bucket: str, key: str, value: bytes, last: int) -> int:
        return await self._put(bucket, key, value, last, create=False)

    def _append_kv(self, st: _Stream, what: str, subject: str, value: bytes, hdrs: dict[str, str],
                   last: int | None) -> _Msg:
        """One publish with the headers NatsStore sends: size first, then the expected revision."""
        if last is not None:
            hdrs[_LAST] = str(last)
        hdrs[_EXPECT] = st.name
        st.check_size(value, hdrs, self.max_payload, what)
        cur = st.last(subject)
        if last is not None and last != (cur.seq if cur else 0):
            raise Conflict(f"{what}: revision {last} is not current")
        return st.append(subject, value, hdrs)

    async def _put(self, bucket: str, key: str, value: bytes, last: int, create: bool) -> int:
        what, subject = f"put {bucket}/{key}", f"$KV.{bucket}.{key}"
        check_key(bucket, key, what)

        def run() -> int:
            st = self._stream(f"KV_{bucket}", f"no KV bucket {bucket!r}")
            if not create:
                return self._append_kv(st, what, subject, value, {}, last).seq
            try:
                return self._append_kv(st, what, subject, value, {}, 0).seq
            except Conflict:
                # A deleted key keeps a marker: creating over it is allowed.
                cur = st.last(subject)
                if cur is None or cur.op is Op.PUT:
                    raise Exists(f"{bucket}/{key}: exists") from None
                return self._append_kv(st, what, subject, value, {}, cur.seq).seq

        return await self._call(what, subject, run)

    async def delete(self, bucket: str, key: str, last: int | None = None) -> None:
        what, subject = f"delete {bucket}/{key}", f"$KV.{bucket}.{key}"
        check_key(bucket, key, what)
        await self._call(what, subject, lambda: self._append_kv(
            self._stream(f"KV_{bucket}", f"no KV bucket {bucket!r}"), what, subject, b"", {KV_OP: "DEL"},
            last or None))

    async def watch(self, bucket: str, sink: WatchSink) -> _Watch:
        check_bucket(bucket, f"watch {bucket}")
        return await self._watch(f"KV_{bucket}", sink, f"watch {bucket}", kv=True)

    async def _watch(self, name: str, sink: WatchSink, what: str, kv: bool) -> _Watch:
        def run() -> _Watch:
            st = self._stream(name, f"{what}: not found")
            w = _Watch(self, st, sink, kv)
            st.watches.append(w)
            self._watches.add(w)
            w.resync()
            return w

        return await self._call(what, f"$JS.API.CONSUMER.CREATE.{name}", run)

    # -- streams ---------------------------------------------------------------------

    async def streams(self) -> list[StreamInfo]:
        return await self._call("list streams", "$JS.API.STREAM.LIST", lambda: [
            st.info() for n, st in sorted(self._streams.items()) if not n.startswith(("KV_", "OBJ_"))])

    async def stream(self, name: str) -> StreamInfo:
        return await self._call(f"stream {name}", f"$JS.API.STREAM.INFO.{name}",
                                lambda: self._stream(name, f"no stream {name!r}").info())

    async def get_msg(self, stream: str, seq: int, direct: bool = False) -> StreamMsg:
        what = f"get {stream}#{seq}"

        def run() -> StreamMsg:
            st = self._streams.get(stream)
            if direct and (st is None or not st.direct):
                raise Unavailable(f"{what}: no JetStream responder (bucket or stream missing?)")
            if st is None:
                raise NotFound(f"{stream}: no message {seq}")
            if seq <= 0:
                raise Invalid(f"{what}: " + ("Empty Request" if direct else "bad request"))
            m = st.msgs.get(seq)
            if m is None:
                raise NotFound(f"{stream}: no message {seq}")
            stamp = dt.datetime.fromtimestamp(m.time, dt.UTC).isoformat().replace("+00:00", "Z")
            where = {"Nats-Stream": stream, "Nats-Subject": m.subject, "Nats-Sequence": str(seq),
                     "Nats-Time-Stamp": stamp} if direct else {}  # a direct get says where it came from
            return StreamMsg(stream, m.subject, seq, m.data, {**m.headers, **where}, m.time)

        api = "$JS.API.DIRECT.GET." if direct else "$JS.API.STREAM.MSG.GET."
        return await self._call(what, f"{api}{stream}", run)

    async def publish(self, subject: str, data: bytes, stream: str, msg_id: str) -> int:
        """Append one message; ``msg_id`` makes a retried publish a no-op."""
        what = f"publish {subject}"
        check_subject(subject, what)

        def run() -> int:
            st = next((s for s in self._streams.values()
                       if any(subject_matches(p, subject) for p in s.subjects)), None)
            if st is None:
                raise _no_stream(what)
            if st.name != stream:
                raise Invalid(f"{what}: expected stream does not match")
            hdrs = {"Nats-Msg-Id": msg_id, _EXPECT: stream}
            st.check_size(data, hdrs, self.max_payload, what)
            now = time.time()
            first = st.msg_ids.get(msg_id)
            if first is not None and now - first[1] < _DUPE_WINDOW:
                return first[0]
            seq = st.append(subject, data, hdrs).seq
            st.msg_ids[msg_id] = (seq, now)
            return seq

        return await self._call(what, subject, run)

    async def delete_msg(self, stream: str, seq: int) -> None:
        def run() -> None:
            st = self._stream(stream, f"{stream}: no stream {stream!r}")
            if st.deny_delete:  # the server checks this before the sequence
                raise NotPermitted(f"{stream}: message delete not permitted (the stream denies deletes)")
            if seq not in st.msgs:  # a gap, before the first, past the last, 0: all NotFound
                raise NotFound(f"{stream}: no message {seq}")
            st.remove(seq)

        await self._call(f"delete {stream}#{seq}", f"$JS.API.STREAM.MSG.DELETE.{stream}", run)

    async def stream_watch(self, stream: str, sink: WatchSink) -> _Watch:
        return await self._watch(stream, sink, f"watch stream {stream}", kv=False)

    # -- work queues (durable pull consumers) ----------------------------------------

    async def queue(self, stream: str, durable: str, sink: WatchSink, *, create: bool = True,
                    filter_subject: str | None = None, ack_wait: float = 30.0,
                    max_held: int = 4) -> _Queue:
        """Hold up to ``max_held`` deliveries of a durable consumer; its existing config wins."""

        def run() -> _Queue:
            st = self._stream(stream, f"queue {stream}/{durable}: not found")
            c = st.consumers.get(durable)
            if c is None:
                if not create:
                    raise NotFound(f"no consumer {durable!r} on stream {stream!r}")
                c = st.consumers[durable] = _Consumer(filter_subject, ack_wait)
            q = _Queue(self, st, durable, c, sink, max_held)
            st.queues.append(q)
            self._queues.add(q)
            trio.lowlevel.spawn_system_task(q._run, name=f"hvfs-queue-{stream}-{durable}")
            return q

        return await self._call(f"queue {stream}/{durable}", f"$JS.API.CONSUMER.INFO.{stream}", run)

    async def ack(self, q: Queue, seq: int) -> None:
        assert isinstance(q, _Queue), "a queue of another store"

        def run() -> None:
            if q.held.pop(seq, None) is None:
                raise NotFound(f"{q.stream}#{seq} is no longer held by this mount (ack wait over)")
            q.consumer.pending.pop(seq, None)
            q.wake()

        await self._call(f"ack {q.stream}#{seq}", f"$JS.ACK.{q.stream}.{q.durable}", run)
