"""The store on NATS, continued: its subscriptions (KV and stream watches,
durable work-queue consumers). Only ``hvfs.store.nats`` uses this module;
like it, it runs on the store's asyncio thread and hands batches to trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import trio
from nats.js import api

from ..errors import (
    HvfsError,
    NotFound,
    Timeout,
)
from .base import (
    RESYNC,
    SYNCED,
    KvChange,
    MsgSeen,
    Op,
    QueueGone,
    QueueMsg,
    StreamInfo,
    WatchSink,
)
from .rules import MSG_ID, op_of

__all__ = ["KvWatch", "NatsQueue", "StreamWatch", "op_of", "read_since", "storage_of", "stream_info", "ts"]

log = logging.getLogger(__name__)

_CHUNK = 256
#: seconds between the snapshot consumer's heartbeats while it has nothing to send
_SNAPSHOT_HEARTBEAT = 5.0


class _Snapshot:
    """The fast consumer of one watch: its snapshot, then live changes (the store's loop only)."""

    def __init__(self) -> None:
        self.sub: Any = None
        self.consumer = ""
        self.next = 1  # the consumer sequence the next message must have
        self.last = 0  # the highest stream sequence read
        self.done = False
        self.live = False  # the snapshot is in: the same consumer now follows live changes
        self.active = False  # something arrived since the watchdog last looked
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        t = loop.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)


def ts(t: dt.datetime | None) -> float:
    return t.timestamp() if t is not None else time.time()


def _ack_fields(reply: str) -> tuple[int, int, float, int] | None:
    """(stream sequence, consumer sequence, time, pending) from a JetStream delivery's reply
    subject (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``, or the
    form with domain and account hash); None if it is not one."""
    t = reply.split(".")
    if len(t) == 9 and t[0] == "$JS":
        return int(t[5]), int(t[6]), int(t[7]) / 1e9, int(t[8])
    if len(t) >= 12 and t[0] == "$JS":
        return int(t[7]), int(t[8]), int(t[9]) / 1e9, int(t[10])
    return None


def raw_headers(block: bytes) -> dict[str, str]:
    """The headers of a raw NATS header block (its first line, ``NATS/1.0`` and a status, left out)."""
    out: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n")[1:]:
        k, sep, v = line.partition(":")
        if sep and k not in out:
            out[k] = v.strip()
    return out


def _fast_msgs(nc: Any) -> dict[int, Callable[[bytes, bytes, bytes, bytes], None]] | None:
    """Subscription id -> a plain function that takes its raw messages (subject, reply, data,
    header block), called from the connection's read loop without building nats-py's
    ``Msg`` objects: a snapshot of a million entries reads at about 3x the speed.

    nats-py 2.16's ``Client._process_msg`` is wrapped once per connection (the version
    is pinned); None if the client does not have it (the caller uses the plain path)."""
    table: dict[int, Callable[[bytes, bytes, bytes, bytes], None]] | None = nc.__dict__.get("_hvfs_fast")
    if table is not None:
        return table
    orig = getattr(nc, "_process_msg", None)
    if orig is None or not asyncio.iscoroutinefunction(orig):
        return None
    table = {}

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        fn = table.get(sid)
        if fn is None:
            await orig(sid, subject, reply, data, headers)
        else:
            fn(subject, reply, data, headers)

    nc.__dict__["_hvfs_fast"] = table
    nc._process_msg = process_msg
    return table


def stored_size(headers: dict[str, str] | None, data: bytes | None) -> int:
    """A message's stored payload size: headers-only deliveries carry it in Nats-Msg-Size."""
    size = headers.get("Nats-Msg-Size") if headers else None
    return int(size) if size else len(data or b"")


def delivery(msg: Any) -> tuple[int, float, int]:
    """(stream sequence, time, pending) of a JetStream delivery, read off its reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``, or the form with
    domain and account hash): nats-py's ``msg.metadata`` costs several times as much, which a
    snapshot of a million keys pays a million times."""
    f = _ack_fields(msg.reply or "")
    if f is not None:
        return f[0], f[2], f[3]
    meta = msg.metadata
    return int(meta.sequence.stream), ts(meta.timestamp), int(meta.num_pending or 0)


class KvWatch:
    """A bucket's watch feeding the index: a headers-only consumer of its own for the
    snapshot and the changes after it; an ordered, headers-only consumer from the next
    sequence where that one cannot go on (``start``).

    Items are batched and handed to the trio thread with one run_sync_soon per
    batch, so a storm of changes costs the trio loop one wake-up per batch.
    """

    def __init__(self, store: Any, bucket: str, sink: WatchSink,
                 token: trio.lowlevel.TrioToken) -> None:
        self.store = store
        self.bucket = bucket
        self.sink = sink
        self.token = token
        self.pre = f"$KV.{bucket}."
        self.sub: Any = None
        self._lock = threading.Lock()
        self._buf: list[Any] = []
        self._held: list[Any] | None = None  # while a (re)start is not yet known to work
        self._scheduled = False
        self._synced = False
        self._gen = 0
        self._snap: _Snapshot | None = None  # the fast consumer, while it delivers
        self.closed = False

    async def stop(self) -> None:
        """Trio side: nothing reaches the sink once this returns."""
        self.closed = True
        await self.store.stop_watch(self)

    def _emit(self, item: Any) -> None:
        with self._lock:
            if self.closed:
                return
            if self._held is not None:
                self._held.append(item)
                return
            self._buf.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self._deliver)

    def _hold(self) -> None:
        """Keep what is emitted from here on until ``_release`` (or drop it with ``_drop``)."""
        with self._lock:
            self._held = []

    def _release(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
        for item in held:
            self._emit(item)

    def _drop(self) -> None:
        with self._lock:
            self._held = None

    def _deliver(self) -> None:  # trio thread
        # At most one chunk per call: FUSE requests run between chunks, so a
        # storm of changes delays them by one chunk's work, not the storm's.
        with self._lock:
            if self.closed:  # stopped on this thread: nothing more for the sink
                self._buf.clear()
                self._scheduled = False
                return
            items, self._buf = self._buf[:_CHUNK], self._buf[_CHUNK:]
            more = bool(self._buf)
            if not more:
                self._scheduled = False
        if more:
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self._deliver)
        try:
            self.sink(items)  # type: ignore[arg-type]
        except Exception:
            # An exception in a run_sync_soon callback would end the trio run:
            # one bad change must not take the mount down.
            log.exception("watch %s: applying %d changes failed", self.bucket, len(items))

    #: what the consumer covers; a stream watch takes every subject from the start
    deliver_policy = api.DeliverPolicy.LAST_PER_SUBJECT
    #: whether messages come without their payloads (an object watch reads its metas)
    headers_only = True

    def _item(self, subject: str, headers: dict[str, str] | None, seq: int, when: float,
              size: int, data: bytes | None) -> Any:
        """What one delivery means to the sink (None: nothing)."""
        op = op_of(headers)
        return KvChange(self.bucket, subject[len(self.pre):], op, seq, size if op is Op.PUT else 0, when,
                        (headers or {}).get(MSG_ID, ""))

    async def start(self) -> None:
        """(Re)start the snapshot: RESYNC, every current entry, SYNCED, then live changes.

        The snapshot is read by a consumer of its own whose messages skip nats-py's
        per-message machinery (``_fast_msgs``); once it has sent everything it goes on
        with live changes. After a gap in its deliveries or a silence (``_watchdog``), an
        ordered consumer follows from the next sequence (``_live``). Without the fast path
        (or for an empty bucket) the ordered consumer does both.

        What it emits is held back until the consumer exists: a watch of a missing
        bucket or stream fails with nothing sent to the sink, not even RESYNC.
        """
        self._gen += 1
        gen = self._gen
        self._synced = False
        self._hold()
        self._emit(RESYNC)
        try:
            try:
                if not await self._snapshot(gen):
                    await self._live(gen, None)
            except nats.js.errors.NotFoundError:
                raise NotFound(self._missing) from None
        except BaseException:
            self._drop()
            await asyncio.shield(self._stop())  # a consumer half made goes too
            raise
        self._release()

    async def _live(self, gen: int, start: int | None) -> None:
        """The ordered consumer: from ``start`` on (the snapshot sent what came before),
        or (None) the snapshot too."""

        async def on_msg(msg: Any) -> None:
            if gen != self._gen:
                return
            seq, when, pending = delivery(msg)
            item = self._item(msg.subject, msg.headers, seq, when, stored_size(msg.headers, msg.data), msg.data)
            if item is not None:
                self._emit(item)
            if not self._synced and pending == 0:
                self._synced = True
                self._emit(SYNCED)

        if start is None:
            policy: dict[str, Any] = {"deliver_policy": self.deliver_policy}
        else:
            policy = {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                      "config": api.ConsumerConfig(opt_start_seq=start)}
        self.sub = await self.store._js.subscribe(
            f"{self.pre}>", stream=self.stream_name, cb=on_msg, ordered_consumer=True,
            headers_only=self.headers_only, inactive_threshold=300.0, pending_msgs_limit=-1, **policy,
        )
        if start is not None:
            return
        info = await self.sub.consumer_info()
        # Empty only if the server has sent nothing and has nothing to send: messages
        # it sent may not have reached on_msg yet (the last of them says SYNCED).
        sent = info.delivered.consumer_seq if info.delivered is not None else 0
        if info.num_pending == 0 and not sent and not self._synced:
            self._synced = True
            self._emit(SYNCED)

    async def _snapshot(self, gen: int) -> bool:
        """Start reading the snapshot through the fast path; False: not taken (no fast path
        on this client, or nothing to read), nothing left behind."""
        nc = self.store._nc
        table = _fast_msgs(nc) if nc is not None else None
        if table is None:
            return False
        loop = asyncio.get_running_loop()
        snap = _Snapshot()
        self._snap = snap
        snap.sub = await nc.subscribe(nc.new_inbox(), pending_msgs_limit=-1, pending_bytes_limit=-1)

        def on_raw(subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
            if gen != self._gen or snap.done:
                return
            f = _ack_fields(reply.decode()) if reply.startswith(b"$JS.ACK.") else None
            if f is None:
                # A flow-control request (answered at its reply subject), or a heartbeat, which
                # names the subject to answer if the server stalled waiting for an answer. Not
                # progress: a snapshot that gets heartbeats only is started again (_watchdog).
                to = reply.decode() or raw_headers(headers).get("Nats-Consumer-Stalled", "")
                if to:
                    snap.spawn(loop, nc.publish(to, b""))
                if snap.live:
                    snap.active = True  # an idle live consumer shows it is there by heartbeats
                return
            snap.active = True
            sseq, cseq, when, pending = f
            if cseq != snap.next and snap.live:
                # A gap while following: the ordered consumer takes over after the last one read.
                snap.done = True
                log.warning("watch %s: live delivery skipped from %d to %d; following anew",
                            self.bucket, snap.next, cseq)
                snap.spawn(loop, self._follow(gen, snap.last))
                return
            if cseq != snap.next:
                snap.done = True
                log.warning("watch %s: snapshot skipped from %d to %d; starting again", self.bucket,
                            snap.next, cseq)
                snap.spawn(loop, self._again(gen))
                return
            snap.next += 1
            hdrs = raw_headers(headers) if headers else {}
            item = self._item(subject.decode(), hdrs, sseq, when, stored_size(hdrs, data), data)
            if item is not None:
                self._emit(item)
            snap.last = max(snap.last, sseq)
            if pending == 0 and not snap.live:
                # The snapshot is in; its consumer goes on with what comes next, through this
                # same path (nats-py's ordered consumer costs a Msg and a task per message).
                snap.live = self._synced = True
                self._emit(SYNCED)

        table[snap.sub._id] = on_raw
        req = {"stream_name": self.stream_name, "config": {
            "deliver_subject": snap.sub.subject, "deliver_policy": self.deliver_policy.value,
            "ack_policy": "none", "filter_subject": f"{self.pre}>", "headers_only": self.headers_only,
            "flow_control": True, "idle_heartbeat": int(_SNAPSHOT_HEARTBEAT * 1e9), "mem_storage": True,
            "num_replicas": 1, "inactive_threshold": int(30e9), "replay_policy": "instant"}}
        # The server counts what a last-per-subject consumer has pending at its creation: a
        # second or more for a million subjects; the bound is the watch's (NatsStore.watch).
        resp = await nc.request(f"$JS.API.CONSUMER.CREATE.{self.stream_name}", json.dumps(req).encode(),
                                timeout=max(self.store.timeout, 10.0) - 0.5)
        info = json.loads(resp.data)
        err = info.get("error")
        if err is not None:
            await self._end_snapshot()
            if err.get("code") == 404:
                raise NotFound(self._missing)
            log.warning("watch %s: no fast snapshot (%s); the ordered consumer reads it", self.bucket,
                        err.get("description"))
            return False
        snap.consumer = info.get("name", "")
        if not info.get("num_pending") and not (info.get("delivered") or {}).get("consumer_seq"):
            await self._end_snapshot()  # nothing to read: the ordered consumer knows an empty one
            return False
        snap.spawn(loop, self._watchdog(gen, snap))
        return True

    async def _follow(self, gen: int, last: int) -> None:
        """Deliveries are complete up to ``last``: the fast consumer goes, the ordered one follows."""
        try:
            await self._end_snapshot()
            if gen == self._gen and not self.closed:
                await asyncio.wait_for(self._live(gen, last + 1), max(self.store.timeout, 10.0))
        except Exception as e:
            log.warning("watch %s: following after the snapshot failed (%s); starting again", self.bucket, e)
            await self._again(gen)

    async def _watchdog(self, gen: int, snap: _Snapshot) -> None:
        """A snapshot that stops arriving (no message for three heartbeats' time) starts again;
        a live consumer that goes silent (not even heartbeats) hands over to the ordered one."""
        while not snap.done and gen == self._gen:
            snap.active = False
            await asyncio.sleep(3 * _SNAPSHOT_HEARTBEAT)
            if not snap.active and not snap.done and gen == self._gen:
                if snap.live:
                    log.warning("watch %s: the live consumer went silent; following anew", self.bucket)
                    snap.done = True
                    await self._follow(gen, snap.last)
                    return
                log.warning("watch %s: the snapshot stalled; starting again", self.bucket)
                await self._again(gen)
                return

    async def _again(self, gen: int) -> None:
        if gen == self._gen and not self.closed:
            await self.restart()

    async def _end_snapshot(self) -> None:
        snap, self._snap = self._snap, None
        if snap is None:
            return
        snap.done = True
        me = asyncio.current_task()
        for t in list(snap.tasks):
            if t is not me:
                t.cancel()  # the watchdog; a flow-control answer no longer needed
        nc = self.store._nc
        table = nc.__dict__.get("_hvfs_fast") if nc is not None else None
        if snap.sub is not None:
            if table is not None:
                table.pop(snap.sub._id, None)
            await _unsubscribe(snap.sub, self.store.timeout)
        if snap.consumer and nc is not None and nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.request(f"$JS.API.CONSUMER.DELETE.{self.stream_name}.{snap.consumer}", b"",
                                 timeout=self.store.timeout)

    @property
    def stream_name(self) -> str:
        return f"KV_{self.bucket}"

    @property
    def _missing(self) -> str:
        return f"no KV bucket {self.bucket!r}"

    async def restart(self) -> None:
        """After a reconnect: a fresh snapshot, retried (capped backoff) until it
        works, the connection is gone, or the watch is stopped."""
        attempt = 0
        while not self.closed:
            try:
                await self._stop()
                await asyncio.wait_for(self.start(), max(self.store.timeout, 10.0))
                return
            except Exception as e:  # the server may still be starting JetStream
                attempt += 1
                self.store.state.last_error = f"watch {self.bucket}: restart failed: {e}"
                log.warning("watch %s: restart failed (%s), attempt %d", self.bucket, e, attempt)
                nc = self.store._nc
                if nc is None or nc.is_closed:
                    return
                await asyncio.sleep(min(0.5 * attempt, 5.0))

    async def _stop(self) -> None:
        self._gen += 1
        await self._end_snapshot()
        sub, self.sub = self.sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), self.store.timeout)


class NatsQueue:
    """Fetches deliveries of one durable pull consumer; lets go before the ack wait ends.

    A delivery this mount holds is a file; the mount drops it ``margin`` before
    the server's ack wait runs out, so two mounts sharing the consumer never
    hold one message at the same time.
    """

    def __init__(self, store: Any, stream: str, durable: str, sink: WatchSink,
                 token: trio.lowlevel.TrioToken, max_held: int) -> None:
        self.store = store
        self.stream = stream
        self.durable = durable
        self.max_held = max(1, max_held)
        self.ack_wait = 30.0
        self.held: dict[int, Any] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}  # seq -> when this mount lets go of it
        self._emitter = KvWatch(store, stream, sink, token)  # reuse its batching to trio
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sub: Any = None

    @property
    def margin(self) -> float:
        return min(max(0.5, self.ack_wait * 0.1), 5.0)

    async def start(self) -> None:
        self._sub = await self.store._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Trio side: stop fetching and let go of what is held (the server redelivers it
        after the ack wait); nothing reaches the sink once this returns."""
        self._emitter.closed = True  # on the trio thread, where the sink is called
        with contextlib.suppress(HvfsError):  # disconnected too: the fetching must end
            await self.store._call(f"stop queue {self.stream}/{self.durable}", self._stop(), always=True)

    async def _stop(self) -> None:
        """Loop side: end the fetch task and the let-go timers, then unsubscribe."""
        self._emitter.closed = True
        self.store._queues.discard(self)
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # its end, whatever it was; a cancel of ours still reaches us
        self.held.clear()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), self.store.timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            want = self.max_held - len(self.held)
            nc = self.store._nc
            if want <= 0 or nc is None or not nc.is_connected:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                continue
            try:
                msgs = await self._sub.fetch(want, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.info("queue %s/%s: fetch: %s", self.stream, self.durable, e)
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                meta = m.metadata
                seq = int(meta.sequence.stream)
                keep = max(self.ack_wait - self.margin, 0.1)
                self.held[seq] = m
                old = self._timers.pop(seq, None)
                if old is not None:
                    old.cancel()
                self._timers[seq] = loop.call_later(keep, self._expire, seq, m)
                self._emitter._emit(QueueMsg(seq, m.subject, m.data or b"", ts(meta.timestamp),
                                             int(meta.num_delivered or 1), time.monotonic() + keep))

    def _expire(self, seq: int, m: Any) -> None:
        if self.held.get(seq) is m:
            del self.held[seq]
            self._timers.pop(seq, None)
            self._emitter._emit(QueueGone(seq))
            self._wake.set()

    async def ack(self, seq: int) -> None:
        m = self.held.pop(seq, None)
        if m is None:
            raise NotFound(f"{self.stream}#{seq} is no longer held by this mount (ack wait over)")
        h = self._timers.pop(seq, None)
        if h is not None:
            h.cancel()
        self._wake.set()
        try:
            await m.ack_sync(timeout=self.store.timeout)
        except Exception:
            # Not acknowledged: the server redelivers it after the ack wait.
            raise


def storage_of(c: Any) -> str:
    """A stream config's storage as "file" or "memory" (nats-py gives an enum or a string)."""
    return str(getattr(c.storage, "value", c.storage) or "file")


def stream_info(si: Any) -> StreamInfo:
    c, st = si.config, si.state
    mms = c.max_msg_size
    return StreamInfo(name=c.name, subjects=tuple(c.subjects or ()),
                      max_msg_size=mms if mms and mms > 0 else -1, deny_delete=bool(c.deny_delete),
                      first_seq=int(st.first_seq or 0), last_seq=int(st.last_seq or 0),
                      direct=bool(c.allow_direct), max_age=float(c.max_age or 0.0),
                      replicas=int(c.num_replicas or 1), storage=storage_of(c), msg_ttl=bool(c.allow_msg_ttl))


class StreamWatch(KvWatch):
    """Every message of a stream (headers only), then live appends."""

    deliver_policy = api.DeliverPolicy.ALL

    def __init__(self, store: Any, stream: str, sink: WatchSink, token: trio.lowlevel.TrioToken) -> None:
        super().__init__(store, stream, sink, token)
        self.pre = ""

    @property
    def stream_name(self) -> str:
        return self.bucket

    @property
    def _missing(self) -> str:
        return f"no stream {self.bucket!r}"

    def _item(self, subject: str, headers: dict[str, str] | None, seq: int, when: float,
              size: int, data: bytes | None) -> MsgSeen:
        return MsgSeen(self.bucket, subject, seq, size, when)


class _Read:
    """Where one ``read_since`` is (loop thread only)."""

    __slots__ = ("done", "error", "last", "n", "seen", "target")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
        self.n = 0  # messages handed on
        self.seen = 0  # the last one's stream sequence
        self.target: int | None = None  # the stream's last sequence once the consumer exists
        self.last = 0  # where the read ended


#: how often a read that gets nothing asks the consumer whether anything is left
_STALL_CHECK = 0.2


async def read_since(store: Any, stream: str, subject: str, start: int, last_per_subject: bool,
                     keep: Callable[[Any, Any, int], None], missing: str) -> int:
    """Loop side of kv_since and stream_since: hand the messages of ``stream`` on
    ``subject`` (a filter) from sequence ``start`` on (``last_per_subject``: the last of
    each subject only) to ``keep(msg, metadata, seq)``, in order; the sequence the read
    brings the caller to.

    One ordered consumer: 10,000 messages in 0.2-0.3 s here, most of it nats-py's
    header parsing (direct-get batches are no faster, need a stream with direct gets,
    and the server refuses a last-per-subject batch of 10,000 subjects: 413 Too Many
    Results). It reads until the stream's last sequence as it is
    once the consumer exists (a last-per-subject snapshot is taken then: stopping
    earlier would leave out a key whose older message the snapshot skipped), or until
    the server has nothing left for it: writes that go on meanwhile do not keep it
    going. Each wait for the next message is bounded by the store's timeout (a stalled
    read is Timeout, not a hang); the caller bounds the whole.
    """
    js, timeout = store._js, store.timeout
    progress = asyncio.Event()
    r = _Read()

    async def on_msg(msg: Any) -> None:
        if r.done:
            return
        try:
            meta = msg.metadata
            seq = int(meta.sequence.stream)
            keep(msg, meta, seq)
        except Exception as e:  # a bug here must end the read, not stall it until the timeout
            r.error, r.done = e, True
            progress.set()
            return
        r.seen, r.n = seq, r.n + 1
        if meta.num_pending == 0 or (r.target is not None and seq >= r.target):
            r.last, r.done = seq, True
        progress.set()

    if last_per_subject:
        cfg = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
    else:
        cfg = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start, 1))

    def drained(ci: Any) -> bool:
        """Nothing pending, and whatever was sent has been handed on (the ordered consumer
        may have been made again since: its own count starts over)."""
        d = ci.delivered
        return not ci.num_pending and (d is None or not d.consumer_seq or int(d.stream_seq or 0) <= r.seen)

    sub: Any = None
    try:
        try:
            sub = await js.subscribe(subject, stream=stream, cb=on_msg, ordered_consumer=True, config=cfg,
                                     inactive_threshold=max(2 * timeout, 5.0), pending_msgs_limit=-1)
            target = int((await js.stream_info(stream)).state.last_seq or 0)
        except nats.js.errors.NotFoundError:
            raise NotFound(missing) from None
        r.target = target
        if not r.done and r.n and r.seen >= target:
            r.last, r.done = r.seen, True
        loop = asyncio.get_running_loop()
        check = not r.done  # at once: an empty read has nothing to wait for
        heard = loop.time()  # the last progress
        while not r.done:
            if check:
                try:
                    ci = await sub.consumer_info()
                except nats.js.errors.NotFoundError:
                    ci = None  # an ordered consumer made again after a gap: not yet there
                if ci is not None and drained(ci):
                    if not r.done:  # what came meanwhile may have ended it already
                        r.last, r.done = max(r.seen, target), True
                    break
                if loop.time() - heard >= timeout:
                    raise Timeout(f"read {stream}: nothing from NATS for {timeout:.1f}s "
                                  f"({r.n} messages read, up to #{r.seen} of #{target})")
            progress.clear()
            try:
                async with asyncio.timeout(_STALL_CHECK):
                    await progress.wait()
                heard, check = loop.time(), False
            except TimeoutError:
                check = True
        if r.error is not None:
            raise r.error
        return r.last
    finally:
        r.done = True
        if sub is not None:
            await asyncio.shield(_unsubscribe(sub, timeout))


async def _unsubscribe(sub: Any, bound: float) -> None:
    """A read's consumer goes: the server drops it when it has had no subscriber for its
    inactive threshold."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sub.unsubscribe(), bound)
