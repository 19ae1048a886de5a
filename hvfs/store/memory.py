"""The store in memory: a trio-native double of ``hvfs.store.nats`` for fast tests.

What a nats-server keeps: streams of messages, one sequence per stream; a KV
bucket is the stream ``KV_<name>`` on ``$KV.<name>.>`` with per-key history;
a key's revision is its last message's sequence. Answers and error classes are
NatsStore's against a real server (``tests/test_store_contract.py`` runs one
suite on both). Expiry as the server does it: per-message TTL and max age, the
marker a bucket with ``marker_ttl`` gets when a key's last message expires (a
system task per started store removes messages on time; every call catches up
first). Simplified: no purges, no stream limits but history, message size and
age; replicas are taken as asked (a cluster of five, not the single test server).

Test switches: ``disconnect``/``reconnect`` (watches resync), ``deny(pattern)``,
``fail_next(exc)``, ``add_bucket``/``add_stream``, and ``peer()``: another
client of the same data, as a second mount or the nats CLI would be.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import heapq
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
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
    CHUNK_DIGEST_HEADER,
    OBJ_CHUNK_SIZE,
    RESYNC,
    SYNCED,
    BucketInfo,
    Corrupt,
    KvChange,
    KvDelta,
    KvEntry,
    MsgSeen,
    ObjBucketInfo,
    ObjChange,
    ObjectInfo,
    Op,
    Queue,
    QueueGone,
    QueueMsg,
    StoreState,
    StreamDelta,
    StreamInfo,
    StreamMsg,
    WatchSink,
    sha256_digest,
)
from .objrules import (
    check_chunk,
    check_current,
    check_digest,
    check_last,
    check_obj_name,
    obj_chunk_subject,
    obj_meta_doc,
    obj_meta_subject,
    parse_obj_meta,
)
from .rules import (
    EXPECTED_LAST,
    EXPECTED_STREAM,
    KV_OP,
    MARKER_REASON,
    MSG_ID,
    MSG_TTL,
    check_bucket,
    check_filter,
    check_headers,
    check_key,
    check_limits,
    check_new_bucket,
    check_stream,
    check_subject,
    differences,
    go_duration,
    hdr_size,
    kv_delta_complete,
    new_stream,
    op_of,
    subject_matches,
    subjects_overlap,
    write_headers,
)

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_LAST = EXPECTED_LAST
_EXPECT = EXPECTED_STREAM
_CHUNK = 256
_GO_SECONDS = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$|^(\d+)$")
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
        return op_of(self.headers)


class _Timers:
    """When each message with a TTL or a max age goes: the server's clock, shared by
    peers (one trio run). Every started store runs ``run`` in a system task."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, _Stream, int]] = []  # (trio time, tie-break, stream, seq)
        self._n = itertools.count()
        self._wakes: set[trio.Event] = set()

    def add(self, after: float, st: _Stream, seq: int) -> None:
        heapq.heappush(self.heap, (trio.current_time() + after, next(self._n), st, seq))
        for e in self._wakes:
            e.set()

    def due(self) -> None:
        """Expire what is due now (also called before every call: it never waits for the task)."""
        now = trio.current_time()
        while self.heap and self.heap[0][0] <= now:
            _, _, st, seq = heapq.heappop(self.heap)
            st.expire(seq)

    async def run(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                wake = trio.Event()
                self._wakes.add(wake)
                try:
                    try:
                        self.due()
                    except Exception:  # a system task's exception would end the trio run
                        log.exception("memory store: expiring messages failed")
                    with trio.move_on_at(self.heap[0][0] if self.heap else math.inf):
                        await wake.wait()
                finally:
                    self._wakes.discard(wake)


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
                 history: int = 0, direct: bool = False, *, timers: _Timers, max_age: float = 0.0,
                 msg_ttl: bool = False, marker_ttl: int = 0, replicas: int = 1, storage: str = "file") -> None:
        self.name, self.subjects, self.history, self.direct = name, list(subjects), history, direct
        self.max_msg_size, self.deny_delete = max_msg_size if max_msg_size > 0 else -1, deny_delete
        self.timers, self.max_age, self.msg_ttl, self.marker_ttl = timers, float(max_age), msg_ttl, marker_ttl
        self.replicas, self.storage = replicas, storage
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
                          first, self.last_seq, self.direct, self.max_age, self.replicas, self.storage,
                          self.msg_ttl)

    def bucket_info(self) -> BucketInfo:
        return BucketInfo(self.name[3:], self.max_msg_size, self.history or 1, self.max_age, self.msg_ttl,
                          float(self.marker_ttl), self.replicas, self.storage)

    def last(self, subject: str) -> _Msg | None:
        seqs = self.by_subject.get(subject)
        return self.msgs[seqs[-1]] if seqs else None

    def check_size(self, data: bytes, headers: dict[str, str], max_payload: int, what: str) -> None:
        size = len(data) + hdr_size(headers)
        if len(data) > max_payload or size > max_payload:  # NatsStore refuses it before sending
            raise TooLarge(f"{what}: value larger than the server's max payload")
        if 0 < self.max_msg_size < size:
            raise TooLarge(f"{what}: value larger than the bucket allows")

    def msg_ttl_of(self, hdrs: dict[str, str], what: str) -> float | None:
        """The TTL a message's ``Nats-TTL`` gives it, as the server reads it (inf: "never"),
        raised to the marker TTL if below it (the stored header says so); Invalid where the
        server refuses it."""
        v = hdrs.get(MSG_TTL)
        if v is None:
            return None
        if not self.msg_ttl:
            kind = f"bucket {self.name[3:]}" if self.name.startswith("KV_") else f"stream {self.name}"
            raise Invalid(f"{what}: {kind} does not allow per-message TTL")
        if v == "never":
            return math.inf
        m = _GO_SECONDS.match(v)
        secs = int(m[4] or 0) + int(m[1] or 0) * 3600 + int(m[2] or 0) * 60 + int(m[3] or 0) if m else 0
        if secs <= 0:
            raise Invalid(f"{what}: the server takes no such per-message TTL")
        if secs < self.marker_ttl:
            secs = self.marker_ttl
            hdrs[MSG_TTL] = str(secs)
        return secs

    def append(self, subject: str, data: bytes, headers: dict[str, str], ttl: float | None = None) -> _Msg:
        """Store one message; ``ttl`` (seconds; inf: never, max age or not) or the max age,
        the sooner, removes it later."""
        self.last_seq += 1
        m = _Msg(subject, self.last_seq, bytes(data), dict(headers), time.time())
        self.msgs[m.seq] = m
        seqs = self.by_subject.setdefault(subject, [])
        seqs.append(m.seq)
        if self.history > 0 and len(seqs) > self.history:
            del self.msgs[seqs.pop(0)]
        life = min(ttl or math.inf, self.max_age or math.inf) if ttl != math.inf else math.inf
        if life < math.inf:
            self.timers.add(life, self, m.seq)
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

    def expire(self, seq: int) -> None:
        """A message's TTL or max age is over: it goes. If it was its subject's last and the
        stream has a marker TTL, the server's marker takes its place (a watch sees PURGE);
        a marker that expires leaves nothing."""
        m = self.msgs.get(seq)
        if m is None:  # gone before (history, delete)
            return
        self.remove(seq)
        if self.marker_ttl > 0 and m.subject not in self.by_subject and MARKER_REASON not in m.headers:
            self.append(m.subject, b"", {MARKER_REASON: "MaxAge", MSG_TTL: go_duration(self.marker_ttl),
                                         "Nats-Rollup": "sub"}, ttl=self.marker_ttl)


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
                            len(m.data) if op is Op.PUT else 0, m.time, m.headers.get(MSG_ID, ""))
        return MsgSeen(self.st.name, m.subject, m.seq, len(m.data), m.time)

    def resync(self) -> None:
        """RESYNC, the snapshot, SYNCED; a KV snapshot has delete markers too, as NATS's has."""
        self.st.timers.due()
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

    def __init__(self, *, timeout: float = 2.0, max_payload: int = 1 << 20, msg_ttl: bool = True) -> None:
        self.state = StoreState(server="memory")
        self.timeout = timeout  # the bound a caller sizes its waits from (calls here never wait)
        self.max_payload = max_payload  # the server's, headers included
        self.msg_ttl = msg_ttl  # False: an older server (before 2.11), without per-message TTL
        self._streams: dict[str, _Stream] = {}
        self._timers = _Timers()
        self._expiry = trio.CancelScope()
        self._token: trio.lowlevel.TrioToken | None = None
        self._watches: set[_Watch] = set()
        self._queues: set[_Queue] = set()
        self.denied: list[str] = []  # subject patterns calls on which raise PermissionDenied
        self._faults: list[tuple[str, HvfsError]] = []

    # -- test switches -------------------------------------------------------

    def peer(self) -> MemoryStore:
        """Another client of the same data (a second mount, the nats CLI), not yet started."""
        other = MemoryStore(timeout=self.timeout, max_payload=self.max_payload, msg_ttl=self.msg_ttl)
        other._streams, other._timers = self._streams, self._timers
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
                   deny_delete: bool = False, direct: bool = False, *, max_age: float = 0.0,
                   msg_ttl: bool = False, replicas: int = 1, storage: str = "file") -> StreamInfo:
        """A stream made by someone else (setup for tests; not a store call)."""
        if name in self._streams:
            raise Invalid(f"stream {name!r} exists")
        st = self._streams[name] = _Stream(name, subjects, max_msg_size, deny_delete, direct=direct,
                                           timers=self._timers, max_age=max_age,
                                           msg_ttl=msg_ttl and self.msg_ttl, replicas=replicas, storage=storage)
        return st.info()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.state.connected = True
        self._expiry = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._timers.run, self._expiry, name="hvfs-memory-expiry")
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        self._expiry.cancel()
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
                raise Unavailable(f"{what}: not connected to NATS", sent=False)
            if any(subject_matches(p, subject) for p in self.denied):
                raise PermissionDenied(f"NATS permissions violation: this user may not publish to {subject}")
            fault = next((f for f in self._faults if subject_matches(f[0], subject)), None)
            if fault is not None:
                self._faults.remove(fault)
                raise fault[1]
            self._timers.due()  # what expired by now is gone, whenever the task runs
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

    async def create_bucket(self, name: str, history: int = 10, *, max_age: float = 0.0,
                            max_value_size: int = -1, replicas: int = 1, storage: str = "file",
                            marker_ttl: float = 0.0) -> BucketInfo:
        what = f"create bucket {name}"
        check_new_bucket(name, what)
        check_limits(what, max_age=max_age, max_size=max_value_size, replicas=replicas, storage=storage,
                     marker_ttl=marker_ttl, history=history)
        return await self._call(what, "$JS.API.STREAM.CREATE", lambda: self.add_bucket(
            name, history, max_value_size, what=what, max_age=max_age, replicas=replicas, storage=storage,
            marker_ttl=marker_ttl))

    def add_bucket(self, name: str, history: int = 10, max_value_size: int = -1, *, what: str = "",
                   max_age: float = 0.0, replicas: int = 1, storage: str = "file", marker_ttl: float = 0.0,
                   msg_ttl: bool = True) -> BucketInfo:
        """create_bucket's work (direct gets on); a test calls it to make a bucket as another
        client would (``msg_ttl`` False: one made without per-message TTL)."""
        what = what or f"create bucket {name}"
        check_new_bucket(name, what)
        marker = check_limits(what, max_age=max_age, max_size=max_value_size, replicas=replicas,
                              storage=storage, marker_ttl=marker_ttl, history=history)
        msg_ttl = msg_ttl and self.msg_ttl
        st = _Stream(f"KV_{name}", [f"$KV.{name}.>"], max_value_size, deny_delete=True, history=history,
                     direct=True, timers=self._timers, max_age=max_age, msg_ttl=msg_ttl,
                     marker_ttl=marker if msg_ttl else 0, replicas=replicas, storage=storage)
        old = self._streams.setdefault(st.name, st)
        if old is not st:
            have, want = old.bucket_info(), st.bucket_info()
            keys = ("history", "max_age", "max_value_size", "replicas", "storage", "marker_ttl")
            why = differences({k: getattr(have, k) for k in keys}, {k: getattr(want, k) for k in keys})
            if not why and have.msg_ttl != want.msg_ttl:
                why = "per-message TTL off" if not have.msg_ttl else "per-message TTL on"
            if why:
                raise Invalid(f"{what}: bucket {name} exists with other settings: {why}")
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
            return KvEntry(bucket, key, m.data, m.seq, m.time, dict(m.headers))

        st = self._streams.get(f"KV_{bucket}")
        api = "$JS.API.DIRECT.GET." if st is not None and st.direct else "$JS.API.STREAM.MSG.GET."
        return await self._call(f"get {bucket}/{key}", f"{api}KV_{bucket}", run)

    async def kv_next(self, bucket: str, key: str, revision: int) -> StreamMsg | None:
        check_key(bucket, key, f"get {bucket}/{key}")
        subject = f"$KV.{bucket}.{key}"

        def run() -> StreamMsg | None:
            st = self._stream(f"KV_{bucket}", f"no KV bucket {bucket!r}")
            for seq in st.by_subject.get(subject, []):
                if seq > revision:
                    m = st.msgs[seq]
                    return StreamMsg(st.name, m.subject, m.seq, m.data, dict(m.headers), m.time)
            return None

        return await self._call(f"get {bucket}/{key}", f"$JS.API.STREAM.MSG.GET.KV_{bucket}", run)

    async def create(self, bucket: str, key: str, value: bytes, *, ttl: float | None = None,
                     headers: Mapping[str, str] | None = None) -> int:
        return await self._put(bucket, key, value, 0, create=True, ttl=ttl, headers=headers)

    async def update(self, bucket: str, key: str, value: bytes, last: int, *, ttl: float | None = None,
                     headers: Mapping[str, str] | None = None) -> int:
        return await self._put(bucket, key, value, last, create=False, ttl=ttl, headers=headers)

    def _append_kv(self, st: _Stream, what: str, subject: str, value: bytes, hdrs: dict[str, str],
                   last: int | None) -> _Msg:
        """One publish with the headers NatsStore sends: size first, then the TTL, then the
        expected revision (the server's order: a TTL the bucket refuses beats a stale revision)."""
        hdrs = dict(hdrs)
        if last is not None:
            hdrs[_LAST] = str(last)
        else:
            hdrs.pop(_LAST, None)
        hdrs[_EXPECT] = st.name
        st.check_size(value, hdrs, self.max_payload, what)
        ttl = st.msg_ttl_of(hdrs, what)
        cur = st.last(subject)
        if last is not None and last != (cur.seq if cur else 0):
            raise Conflict(f"{what}: revision {last} is not current")
        return st.append(subject, value, hdrs, ttl)

    def _write_headers(self, what: str, ttl: float | None, headers: Mapping[str, str] | None) -> dict[str, str]:
        return write_headers(what, ttl, headers, self.msg_ttl)

    async def _put(self, bucket: str, key: str, value: bytes, last: int, create: bool, *,
                   ttl: float | None = None, headers: Mapping[str, str] | None = None) -> int:
        what, subject = f"put {bucket}/{key}", f"$KV.{bucket}.{key}"
        check_key(bucket, key, what)
        extra = self._write_headers(what, ttl, headers)

        def run() -> int:
            st = self._stream(f"KV_{bucket}", f"no KV bucket {bucket!r}")
            if not create:
                return self._append_kv(st, what, subject, value, extra, last).seq
            try:
                return self._append_kv(st, what, subject, value, extra, 0).seq
            except Conflict:
                # A deleted (or expired) key keeps a marker: creating over it is allowed.
                cur = st.last(subject)
                if cur is None or cur.op is Op.PUT:
                    raise Exists(f"{bucket}/{key}: exists") from None
                return self._append_kv(st, what, subject, value, extra, cur.seq).seq

        return await self._call(what, subject, run)

    async def delete(self, bucket: str, key: str, last: int | None = None, *,
                     headers: Mapping[str, str] | None = None) -> None:
        what, subject = f"delete {bucket}/{key}", f"$KV.{bucket}.{key}"
        check_key(bucket, key, what)
        hdrs = {**check_headers(headers, what), KV_OP: "DEL"}
        await self._call(what, subject, lambda: self._append_kv(
            self._stream(f"KV_{bucket}", f"no KV bucket {bucket!r}"), what, subject, b"", hdrs,
            last or None))

    async def kv_since(self, bucket: str, revision: int = 0) -> KvDelta:
        what = f"changes of {bucket} since {revision}"
        check_bucket(bucket, what)
        if revision < 0:
            raise Invalid(f"{what}: a revision is 0 or more")
        cut = len(bucket) + 5  # "$KV.<bucket>."

        def run() -> KvDelta:
            st = self._stream(f"KV_{bucket}", f"no KV bucket {bucket!r}")
            puts: dict[str, KvEntry] = {}
            deleted: dict[str, int] = {}
            # Each key's latest message: what NATS's read folds to (a newer one that expired
            # without a marker is gone there too; the key's older one is not after revision).
            for m in sorted((st.msgs[seqs[-1]] for seqs in st.by_subject.values()), key=lambda m: m.seq):
                if m.seq <= revision:
                    continue
                key = m.subject[cut:]
                if m.op is Op.PUT:
                    puts[key] = KvEntry(bucket, key, m.data, m.seq, m.time, dict(m.headers))
                else:
                    deleted[key] = m.seq
            info = st.info()
            return KvDelta(bucket, st.last_seq, puts, deleted,
                           kv_delta_complete(revision, info.first_seq, info.last_seq))

        return await self._call(what, f"$JS.API.CONSUMER.CREATE.KV_{bucket}", run)

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

    async def create_stream(self, name: str, subjects: Sequence[str], *, max_age: float = 0.0,
                            max_msg_size: int = -1, replicas: int = 1, storage: str = "file") -> StreamInfo:
        req = new_stream(name, subjects, max_age=max_age, max_msg_size=max_msg_size, replicas=replicas,
                         storage=storage)
        what, subjects = req.what, req.subjects

        def run() -> StreamInfo:
            old = self._streams.get(name)
            if old is not None:
                return req.existing(old.info())
            for st in self._streams.values():
                if any(subjects_overlap(p, q) for p in st.subjects for q in subjects):
                    raise Invalid(f"{what}: another stream takes some of {', '.join(subjects)}")
            return self.add_stream(name, subjects, max_msg_size, direct=True, max_age=max_age,
                                   msg_ttl=True, replicas=replicas, storage=storage)

        return await self._call(what, "$JS.API.STREAM.CREATE", run)

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

    async def publish(self, subject: str, data: bytes, stream: str, msg_id: str, *,
                      headers: Mapping[str, str] | None = None) -> int:
        """Append one message; ``msg_id`` makes a retried publish a no-op."""
        what = f"publish {subject}"
        check_subject(subject, what)
        extra = check_headers(headers, what)

        def run() -> int:
            st = next((s for s in self._streams.values()
                       if any(subject_matches(p, subject) for p in s.subjects)), None)
            if st is None:
                raise _no_stream(what)
            if st.name != stream:
                raise Invalid(f"{what}: expected stream does not match")
            hdrs = {**extra, "Nats-Msg-Id": msg_id, _EXPECT: stream}
            st.check_size(data, hdrs, self.max_payload, what)
            ttl = st.msg_ttl_of(hdrs, what)
            now = time.time()
            first = st.msg_ids.get(msg_id)
            if first is not None and now - first[1] < _DUPE_WINDOW:
                return first[0]
            seq = st.append(subject, data, hdrs, ttl).seq
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

    async def stream_since(self, stream: str, seq: int = 0, subject: str | None = None) -> StreamDelta:
        what = f"read {stream} since #{seq}" + (f" on {subject}" if subject else "")
        check_stream(stream, what, new=False)
        if seq < 0:
            raise Invalid(f"{what}: a sequence is 0 or more")
        if subject is not None:
            check_filter(subject, what)

        def run() -> StreamDelta:
            st = self._stream(stream, f"no stream {stream!r}")
            if subject is not None and st.subjects and not any(subjects_overlap(p, subject) for p in st.subjects):
                raise Invalid(f"{what}: stream {stream} takes no subject on {subject} "
                              f"(its subjects: {', '.join(st.subjects)})")
            msgs = [StreamMsg(stream, m.subject, m.seq, m.data, dict(m.headers), m.time)
                    for m in st.msgs.values()
                    if m.seq > seq and (subject is None or subject_matches(subject, m.subject))]
            return StreamDelta(stream, st.last_seq, st.info().first_seq, msgs)

        return await self._call(what, f"$JS.API.CONSUMER.CREATE.{stream}", run)

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

    # -- object store buckets (issue 15; see the section in hvfs.store.base) ---------------

    def add_obj_bucket(self, name: str, max_bytes: int = -1, *, max_age: float = 0.0, replicas: int = 1,
                       storage: str = "file") -> ObjBucketInfo:
        """An object bucket made by someone else (setup for tests; not a store call)."""
        if f"OBJ_{name}" in self._streams:
            raise Invalid(f"stream OBJ_{name} exists")
        st = _Stream(f"OBJ_{name}", [f"$O.{name}.C.>", f"$O.{name}.M.>"], direct=True, timers=self._timers,
                     max_age=max_age, replicas=replicas, storage=storage)
        st.obj_max_bytes = max_bytes if max_bytes > 0 else -1  # type: ignore[attr-defined]
        self._streams[st.name] = st
        return _obj_bucket_of(st)

    def corrupt_chunk(self, bucket: str, name: str, i: int, data: bytes) -> None:
        """Chunk ``i`` of the object now holds ``data`` (what a damaged store would give)."""
        st = self._streams[f"OBJ_{bucket}"]
        info = _obj_now(st, bucket, name)
        assert info is not None
        st.msgs[st.by_subject[obj_chunk_subject(bucket, info.nuid)][i]].data = data

    def _obj_stream(self, bucket: str) -> _Stream:
        return self._stream(f"OBJ_{bucket}", f"no object bucket {bucket!r}")

    async def obj_buckets(self) -> list[ObjBucketInfo]:
        return await self._call("list object buckets", "$JS.API.STREAM.LIST", lambda: [
            _obj_bucket_of(st) for n, st in sorted(self._streams.items()) if n.startswith("OBJ_")])

    async def obj_bucket(self, name: str) -> ObjBucketInfo:
        check_bucket(name, f"object bucket {name}")
        return await self._call(f"object bucket {name}", f"$JS.API.STREAM.INFO.OBJ_{name}",
                                lambda: _obj_bucket_of(self._obj_stream(name)))

    async def create_obj_bucket(self, name: str, *, max_bytes: int = -1, max_age: float = 0.0,
                                replicas: int = 1, storage: str = "file") -> ObjBucketInfo:
        what = f"create object bucket {name}"
        check_new_bucket(name, what)
        check_limits(what, max_age=max_age, max_size=max_bytes, replicas=replicas, storage=storage)
        want = {"max_bytes": max_bytes if max_bytes > 0 else -1, "max_age": float(max_age),
                "replicas": replicas, "storage": storage}

        def run() -> ObjBucketInfo:
            st = self._streams.get(f"OBJ_{name}")
            if st is None:
                return self.add_obj_bucket(name, max_bytes, max_age=max_age, replicas=replicas, storage=storage)
            have = _obj_bucket_of(st)
            why = differences({k: getattr(have, k) for k in want}, want)
            if why:
                raise Invalid(f"{what}: bucket {name} exists with other settings: {why}")
            return have

        return await self._call(what, "$JS.API.STREAM.CREATE", run)

    async def obj_info(self, bucket: str, name: str) -> ObjectInfo:
        what = f"object {bucket}/{name}"
        check_obj_name(bucket, name, what)

        def run() -> ObjectInfo:
            info = _obj_now(self._obj_stream(bucket), bucket, name)
            if info is None or info.deleted:
                raise NotFound(f"{what}: no such object" if info is None else f"{what}: deleted")
            return info

        return await self._call(what, f"$JS.API.STREAM.MSG.GET.OBJ_{bucket}", run)

    async def obj_read(self, info: ObjectInfo, first: int, count: int) -> list[bytes]:
        what = f"read {info.bucket}/{info.name}"
        if first < 0 or count < 1 or first >= max(info.chunks, 1):
            raise Invalid(f"{what}: chunks {first}+{count} of {info.chunks}")
        end = min(first + count, info.chunks)

        def run() -> list[bytes]:
            if info.chunks == 0:
                return []
            st = self._obj_stream(info.bucket)
            seqs = st.by_subject.get(obj_chunk_subject(info.bucket, info.nuid), [])
            if len(seqs) != info.chunks:
                cur = _obj_now(st, info.bucket, info.name)
                if cur is None or cur.revision != info.revision:
                    raise NotFound(f"{what}: the object was replaced or deleted since it was opened")
                raise Corrupt(f"{what}: {len(seqs)} chunks in NATS, its meta says {info.chunks}")
            out = [check_chunk(info, i, st.msgs[seqs[i]].data, st.msgs[seqs[i]].headers, what)
                   for i in range(first, end)]
            if first == 0 and end == info.chunks:
                check_digest(info, out, what)
            return out

        return await self._call(what, f"$JS.API.DIRECT.GET.OBJ_{info.bucket}", run)

    async def obj_put(self, bucket: str, name: str, path: str, last: int, *,
                      headers: Mapping[str, str] | None = None,
                      metadata: Mapping[str, str] | None = None,
                      chunk_size: int = OBJ_CHUNK_SIZE) -> ObjectInfo:
        what = f"put {bucket}/{name}"
        check_obj_name(bucket, name, what)
        hdrs = check_headers(headers, what)
        if chunk_size < 1:
            raise Invalid(f"{what}: a chunk size is positive")
        self._nuids = getattr(self, "_nuids", 0) + 1
        nuid = f"MEM{id(self):x}N{self._nuids}"
        chunk_subj, meta_subj = obj_chunk_subject(bucket, nuid), obj_meta_subject(bucket, name)

        def run() -> ObjectInfo:
            st = self._obj_stream(bucket)
            cur = _obj_now(st, bucket, name)
            expect = check_last(cur, last, what)
            limit = getattr(st, "obj_max_bytes", -1)
            used = sum(len(m.data) + hdr_size(m.headers) + len(m.subject) for m in st.msgs.values())
            h = hashlib.sha256()
            chunks = total = 0
            try:
                with open(path, "rb") as f:
                    while buf := f.read(chunk_size):
                        ch = {CHUNK_DIGEST_HEADER: sha256_digest(hashlib.sha256(buf).digest())}
                        used += len(buf) + hdr_size(ch) + len(chunk_subj)
                        if limit > 0 and used > limit:
                            raise TooLarge(f"{what}: over the bucket's max bytes ({limit}); nothing stored")
                        h.update(buf)
                        st.append(chunk_subj, buf, ch)
                        chunks, total = chunks + 1, total + len(buf)
            except BaseException:
                _purge(st, chunk_subj)
                raise
            doc = obj_meta_doc(bucket, name, nuid, total, chunks, sha256_digest(h.digest()) if total else "",
                               chunk_size, hdrs, metadata)
            _purge(st, meta_subj)  # Nats-Rollup: sub
            m = st.append(meta_subj, doc, {"Nats-Rollup": "sub", EXPECTED_LAST: str(expect)})
            if cur is not None and not cur.deleted and cur.nuid:
                _purge(st, obj_chunk_subject(bucket, cur.nuid))
            return parse_obj_meta(bucket, doc, m.seq, m.time)

        return await self._call(what, chunk_subj, run)

    async def obj_delete(self, bucket: str, name: str, last: int | None = None) -> None:
        what = f"delete {bucket}/{name}"
        check_obj_name(bucket, name, what)
        meta_subj = obj_meta_subject(bucket, name)

        def run() -> None:
            st = self._obj_stream(bucket)
            cur = check_current(_obj_now(st, bucket, name), last, what)
            doc = obj_meta_doc(bucket, name, cur.nuid, 0, 0, "", cur.chunk_size, cur.headers, cur.metadata,
                               deleted=True)
            _purge(st, meta_subj)
            st.append(meta_subj, doc, {"Nats-Rollup": "sub"})
            _purge(st, obj_chunk_subject(bucket, cur.nuid))

        await self._call(what, meta_subj, run)

    async def obj_rename(self, bucket: str, name: str, new: str, last: int, new_last: int) -> ObjectInfo:
        what = f"rename {bucket}/{name} to {new}"
        check_obj_name(bucket, name, what)
        check_obj_name(bucket, new, what)

        def run() -> ObjectInfo:
            st = self._obj_stream(bucket)
            src = check_current(_obj_now(st, bucket, name), last, what)
            dst = _obj_now(st, bucket, new)
            check_last(dst, new_last, what)
            doc = obj_meta_doc(bucket, new, src.nuid, src.size, src.chunks, src.digest, src.chunk_size,
                               src.headers, src.metadata)
            _purge(st, obj_meta_subject(bucket, new))
            m = st.append(obj_meta_subject(bucket, new), doc, {"Nats-Rollup": "sub"})
            gone = obj_meta_doc(bucket, name, src.nuid, 0, 0, "", src.chunk_size, src.headers, src.metadata,
                                deleted=True)
            _purge(st, obj_meta_subject(bucket, name))
            st.append(obj_meta_subject(bucket, name), gone, {"Nats-Rollup": "sub"})
            if dst is not None and not dst.deleted and dst.nuid != src.nuid:
                _purge(st, obj_chunk_subject(bucket, dst.nuid))
            return parse_obj_meta(bucket, doc, m.seq, m.time)

        return await self._call(what, f"$O.{bucket}.M.", run)

    async def obj_list(self, bucket: str) -> list[ObjectInfo]:
        what = f"list {bucket}"
        check_bucket(bucket, what)

        def run() -> list[ObjectInfo]:
            st = self._obj_stream(bucket)
            out = [i for i in (_obj_parse(st, bucket, m) for m in _obj_metas(st, bucket)) if not i.deleted]
            return sorted(out, key=lambda i: i.revision)

        return await self._call(what, f"$JS.API.CONSUMER.CREATE.OBJ_{bucket}", run)

    async def obj_watch(self, bucket: str, sink: WatchSink) -> _Watch:
        what = f"watch {bucket}"
        check_bucket(bucket, what)

        def run() -> _Watch:
            st = self._obj_stream(bucket)
            w = _ObjWatch(self, st, sink, False)
            st.watches.append(w)
            self._watches.add(w)
            w.resync()
            return w

        return await self._call(what, f"$JS.API.CONSUMER.CREATE.OBJ_{bucket}", run)


def _obj_bucket_of(st: _Stream) -> ObjBucketInfo:
    return ObjBucketInfo(st.name[4:], getattr(st, "obj_max_bytes", -1), st.max_age, st.replicas, st.storage)


def _purge(st: _Stream, subject: str) -> None:
    for seq in list(st.by_subject.get(subject, [])):
        st.remove(seq)


def _obj_metas(st: _Stream, bucket: str) -> list[_Msg]:
    """The latest meta message of every object (markers too), in sequence order."""
    pre = f"$O.{bucket}.M."
    return sorted((st.msgs[seqs[-1]] for subj, seqs in st.by_subject.items() if subj.startswith(pre)),
                  key=lambda m: m.seq)


def _obj_parse(st: _Stream, bucket: str, m: _Msg) -> ObjectInfo:
    return parse_obj_meta(bucket, m.data, m.seq, m.time)


def _obj_now(st: _Stream, bucket: str, name: str) -> ObjectInfo | None:
    m = st.last(obj_meta_subject(bucket, name))
    return None if m is None else parse_obj_meta(bucket, m.data, m.seq, m.time)


class _ObjWatch(_Watch):
    """An object bucket's metas: as a KV watch, ObjChange items, chunks never shown."""

    def item(self, m: _Msg) -> ObjChange:  # type: ignore[override]
        bucket = self.st.name[4:]
        try:
            i = parse_obj_meta(bucket, m.data, m.seq, m.time)
        except Corrupt:
            return ObjChange(bucket, "", True, m.seq, 0, m.time)
        return ObjChange(bucket, i.name, i.deleted, m.seq, i.size, i.time, i.digest, i.metadata)

    def resync(self) -> None:
        self.st.timers.due()
        self.buf.clear()
        items = [c for c in (self.item(m) for m in _obj_metas(self.st, self.st.name[4:])) if c.name]
        self.emit([RESYNC, *items, SYNCED])

    def on_msg(self, m: _Msg) -> None:
        if self.store.state.connected and m.subject.startswith(f"$O.{self.st.name[4:]}.M."):
            c = self.item(m)
            if c.name:
                self.emit([c])
