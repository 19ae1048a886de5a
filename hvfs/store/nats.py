"""The store on NATS: with natssubs.py (its subscriptions), the only code that imports nats-py (and asyncio).

nats-py runs on asyncio, pyfuse3 on trio, so this module owns one thread with
its own asyncio loop. Trio callers hand it coroutines through
``run_coroutine_threadsafe`` and are woken by ``TrioToken.run_sync_soon``;
every call is bounded twice (asyncio ``wait_for`` inside, trio ``fail_after``
outside) so nothing can hang a FUSE request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import trio
from nats.js import api

from ..config import ConnectOptions
from ..errors import (
    Conflict,
    Exists,
    HvfsError,
    Invalid,
    InvalidName,
    NotFound,
    NotPermitted,
    PermissionDenied,
    Timeout,
    TooLarge,
    Unavailable,
)
from .base import (
    BucketInfo,
    KvDelta,
    KvEntry,
    Op,
    Queue,
    StoreState,
    StreamDelta,
    StreamInfo,
    StreamMsg,
    WatchSink,
)
from .natssubs import KvWatch, NatsQueue, StreamWatch, read_since, storage_of, stream_info, ts
from .rules import (
    DIRECT_GET_HEADERS,
    EXPECTED_LAST,
    KV_OP,
    check_bucket,
    check_filter,
    check_headers,
    check_key,
    check_limits,
    check_new_bucket,
    check_stream,
    check_subject,
    differences,
    hdr_size,
    kv_delta_complete,
    new_stream,
    op_of,
    shown_servers,
    subjects_overlap,
    write_headers,
)

__all__ = ["NatsStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")


_ERR_WRONG_LAST = (10071, 10164)
_ERR_TOO_BIG = (10054,)
_ERR_SEQ_NOT_FOUND = 10043  # a message delete of a gap inside the stream (400)
_ERR_DELETE_FAILED = 10057  # every other refused message delete (500); the text says why
_ERR_STREAM_IN_USE = 10058  # a stream of that name exists with another configuration
_ERR_SUBJECTS_OVERLAP = 10065
_ERR_TTL_INVALID = 10165  # a Nats-TTL the server cannot parse (or 0 and less)
_ERR_TTL_DISABLED = 10166  # a Nats-TTL on a stream without allow_msg_ttl; before any CAS check
#: a read of a stream (kv_since, stream_since) may take the store's timeout per this many messages
_READ_BATCH = 1000
_PERM_RE = re.compile(r'permissions violation for (?:publish|subscription) to "?([^"\s]+)', re.I)

class NatsStore:
    """Store interface on a real NATS connection (see hvfs.store.base.Store)."""

    def __init__(self, opts: ConnectOptions) -> None:
        self._closing = False  # close() began: its disconnect is not reported
        self.opts = opts
        self.timeout = opts.timeout
        self.state = StoreState(server=shown_servers(opts.servers))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="hvfs-nats", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._nc: Any = None
        self._js: Any = None
        self._direct: dict[str, bool] = {}
        self._info: dict[str, BucketInfo] = {}
        self._watches: set[KvWatch] = set()
        self._queues: set[NatsQueue] = set()
        self._inflight: dict[asyncio.Task[Any], str] = {}
        self._denied: dict[asyncio.Task[Any], str] = {}

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload) if self._nc is not None else 1 << 20

    @property
    def msg_ttl(self) -> bool:
        """The server (the one connected to now) is 2.11 or newer: older ones ignore Nats-TTL."""
        nc = self._nc
        if nc is None:
            return False
        try:
            v = nc.connected_server_version
            return (v.major, v.minor) >= (2, 11)
        except Exception:  # no version, or not semver
            return False

    # -- lifecycle -------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def start(self) -> None:
        """Start the loop thread and connect; Unavailable with the reason if NATS is not there."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()
        await self._call("connect", self._connect(), bound=self.timeout + 3)

    async def _connect(self) -> None:
        o = self.opts
        kw: dict[str, Any] = dict(
            servers=o.servers,
            connect_timeout=min(self.timeout, 2.0),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            allow_reconnect=True,
            ping_interval=5,
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            name="hvfs",
        )
        if o.user:
            kw["user"], kw["password"] = o.user, o.password or ""
        if o.token:
            kw["token"] = o.token
        if o.creds:
            kw["user_credentials"] = o.creds
        if o.nkey:
            kw["nkeys_seed"] = o.nkey
        if o.tls_ca or o.tls_cert:
            import ssl

            ctx = ssl.create_default_context(cafile=o.tls_ca)
            if o.tls_cert:
                ctx.load_cert_chain(o.tls_cert, o.tls_key)
            kw["tls"] = ctx
        # The first connect must fail fast with a reason, not retry forever.
        # nats-py retries the first connect forever when reconnects are
        # unlimited: bound it here and report the last error it met.
        try:
            self._nc = await asyncio.wait_for(nats.connect(**kw), self.timeout + 2)
        except Exception as e:
            why = self.state.last_error or str(e) or type(e).__name__
            raise Unavailable(f"cannot connect to NATS at {shown_servers(o.servers)}: {why}") from e
        self._js = self._nc.jetstream(timeout=self.timeout)
        try:
            await self._js.account_info()
        except Exception as e:
            raise Unavailable(f"NATS at {shown_servers(o.servers)} has no JetStream: {e or type(e).__name__}") from e
        self.state.connected = True

    async def close(self) -> None:
        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            with trio.move_on_after(self.timeout + 1):
                await trio.to_thread.run_sync(fut.result, abandon_on_cancel=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            await trio.to_thread.run_sync(self._thread.join, 2.0, abandon_on_cancel=True)
        self.state.connected = False

    async def _close(self) -> None:
        self._closing = True  # the disconnect that follows is ours, not news
        for q in list(self._queues):
            with contextlib.suppress(Exception):
                await q._stop()
        for w in list(self._watches):
            with contextlib.suppress(Exception):
                await w._stop()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), self.timeout)

    # -- callbacks (asyncio thread) -----------------------------------------

    async def _on_error(self, e: Exception) -> None:
        msg = str(e)
        self.state.last_error = msg
        m = _PERM_RE.search(msg)
        if m:
            # A permission violation is no reply: fail the waiting call now.
            subject = m.group(1).lower()  # nats-py lower-cases the server's error text
            for task, subj in list(self._inflight.items()):
                s = subj.lower()
                if s and (s == subject or subject.startswith(s) or s.startswith(subject)):
                    self._denied[task] = "publish to" if "publish" in msg.lower() else "subscribe to"
                    task.cancel()
        if self.state.connected:  # the first connect reports its own one-line reason
            log.warning("nats: %s", msg)

    async def _on_disconnected(self) -> None:
        self.state.connected = False
        if not self._closing:
            log.warning("nats: disconnected")

    async def _on_reconnected(self) -> None:
        self.state.connected = True
        self.state.reconnects += 1
        log.warning("nats: reconnected to %s", self._nc.connected_url.netloc if self._nc else "?")
        for w in list(self._watches):
            asyncio.ensure_future(w.restart())

    async def _on_closed(self) -> None:
        self.state.connected = False

    # -- the bridge --------------------------------------------------------

    async def _call(self, what: str, coro: Coroutine[Any, Any, T], bound: float | None = None,
                    subject: str = "", always: bool = False) -> T:
        """Run ``coro`` on the NATS loop, bounded; map every error to HvfsError.

        ``always``: run it also while disconnected (a teardown whose NATS part may fail).
        """
        bound = bound or self.timeout
        self.state.calls += 1
        if what != "connect" and not always and (self._nc is None or not self._nc.is_connected):
            coro.close()
            self.state.errors += 1
            raise Unavailable(f"{what}: not connected to NATS")
        fut = asyncio.run_coroutine_threadsafe(self._bounded(coro, bound, subject), self._loop)
        done = trio.Event()
        token = self._token
        assert token is not None

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        fut.add_done_callback(wake)
        try:
            with trio.fail_after(bound + 1.0):
                await done.wait()
        except trio.TooSlowError:
            fut.cancel()
            self.state.timeouts += 1
            raise Timeout(f"{what}: no answer from NATS within {bound:.1f}s") from None
        except BaseException:
            fut.cancel()
            raise
        try:
            return fut.result()
        except (NotFound, Exists, Conflict):
            raise  # answers (no such key, lost CAS), not failures of NATS: not counted as errors
        except HvfsError as e:
            self.state.errors += 1
            self.state.last_error = f"{what}: {e.reason}"
            if isinstance(e, Timeout):
                self.state.timeouts += 1
            raise
        except Exception as e:
            err = _map_error(e, what)
            if not isinstance(err, NotFound | Exists | Conflict):  # answers here too
                self.state.errors += 1
                self.state.last_error = f"{what}: {err.reason}"
            raise err from e

    async def _bounded(self, coro: Coroutine[Any, Any, T], bound: float, subject: str) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._inflight[task] = subject
        try:
            async with asyncio.timeout(bound):  # no extra task, unlike wait_for
                return await coro
        except asyncio.CancelledError:
            denied = self._denied.pop(task, None)
            if denied is not None:
                # The server's text comes lower-cased from nats-py: name the subject as sent.
                raise PermissionDenied(f"NATS permissions violation: this user may not {denied} {subject}") from None
            raise
        except (TimeoutError, nats.errors.TimeoutError):
            raise Timeout(f"no answer from NATS within {bound:.1f}s") from None
        finally:
            self._inflight.pop(task, None)
            self._denied.pop(task, None)

    # -- buckets -----------------------------------------------------------

    async def _all_streams(self) -> list[Any]:
        """Every stream's info, page by page (the server answers 256 at a time)."""
        out: list[Any] = []
        offset = 0
        while True:
            infos = await self._js.streams_info(offset=offset)
            out.extend(infos)
            if len(infos) < 256:
                return out
            offset += len(infos)

    async def buckets(self) -> list[BucketInfo]:
        async def run() -> list[BucketInfo]:
            out: list[BucketInfo] = []
            for si in await self._all_streams():
                if (si.config.name or "").startswith("KV_"):
                    bi = self._bucket_info(si)
                    self._info[bi.name] = bi
                    out.append(bi)
            return out

        return await self._call("list buckets", run(), subject="$JS.API.STREAM.LIST")

    def _bucket_info(self, si: Any) -> BucketInfo:
        c = si.config
        name = c.name[3:]
        self._direct[name] = bool(c.allow_direct)
        mms = c.max_msg_size
        return BucketInfo(name=name, max_value_size=mms if mms and mms > 0 else -1,
                          history=c.max_msgs_per_subject or 1, max_age=float(c.max_age or 0.0),
                          msg_ttl=bool(c.allow_msg_ttl), marker_ttl=float(c.subject_delete_marker_ttl or 0.0),
                          replicas=int(c.num_replicas or 1), storage=storage_of(c))

    async def bucket(self, name: str) -> BucketInfo:
        if name in self._info:
            return self._info[name]
        check_bucket(name, f"bucket {name}")

        async def run() -> BucketInfo:
            try:
                si = await self._js.stream_info(f"KV_{name}")
            except nats.js.errors.NotFoundError:
                raise NotFound(f"no KV bucket {name!r}") from None
            bi = self._bucket_info(si)
            self._info[name] = bi
            return bi

        return await self._call(f"bucket {name}", run(), subject=f"$JS.API.STREAM.INFO.KV_{name}")

    async def create_bucket(self, name: str, history: int = 10, *, max_age: float = 0.0,
                            max_value_size: int = -1, replicas: int = 1, storage: str = "file",
                            marker_ttl: float = 0.0) -> BucketInfo:
        what = f"create bucket {name}"
        check_new_bucket(name, what)
        marker = check_limits(what, max_age=max_age, max_size=max_value_size, replicas=replicas,
                              storage=storage, marker_ttl=marker_ttl, history=history)
        if not self.msg_ttl:
            marker = 0  # an older server has no markers (nats-py would refuse the config)
        # nats-py 2.16 sets allow_msg_ttl on every bucket it makes.
        cfg = api.KeyValueConfig(bucket=name, history=history, direct=True, ttl=max_age or None,
                                 max_value_size=max_value_size if max_value_size > 0 else None,
                                 replicas=replicas, storage=api.StorageType(storage),
                                 limit_marker_ttl=marker or None)
        want = {"history": history, "max_age": float(max_age), "max_value_size": max_value_size,
                "replicas": replicas, "storage": storage, "marker_ttl": float(marker)}

        async def run() -> BucketInfo:
            try:
                await self._js.create_key_value(cfg)
            except nats.js.errors.APIError as e:
                if e.err_code != _ERR_STREAM_IN_USE:
                    raise
                # The server says only "different configuration": name what differs.
                bi = self._bucket_info(await self._js.stream_info(f"KV_{name}"))
                have = {k: getattr(bi, k) for k in want}
                why = differences(have, want) or (
                    "per-message TTL off" if not bi.msg_ttl else "another configuration (made by another client?)")
                raise Invalid(f"{what}: bucket {name} exists with other settings: {why}") from None
            return self._bucket_info(await self._js.stream_info(f"KV_{name}"))

        bi = await self._call(what, run(), subject="$JS.API.STREAM.CREATE")
        self._info[name] = bi
        return bi

    def forget_bucket(self, name: str) -> None:
        self._info.pop(name, None)
        self._direct.pop(name, None)

    async def _no_responder(self, bucket: str, what: str) -> HvfsError:
        """What "no responders" on a bucket's subject means: the bucket is gone
        (NotFound) or JetStream does not answer (Unavailable). Asked only on this
        error path, so a call that works costs no extra request."""
        try:
            si = await self._js.stream_info(f"KV_{bucket}")
        except nats.js.errors.NotFoundError:
            self.forget_bucket(bucket)
            return NotFound(f"no KV bucket {bucket!r}")
        except Exception as e:
            return Unavailable(f"{what}: no JetStream responder ({_map_error(e, 'stream info').reason})")
        self._info[bucket] = self._bucket_info(si)  # also refreshes the direct-get flag
        return Unavailable(f"{what}: no JetStream responder for bucket {bucket} (no stream leader, or a mirror that takes no writes?)")

    # -- keys --------------------------------------------------------------

    async def get(self, bucket: str, key: str, revision: int | None = None) -> KvEntry:
        check_key(bucket, key, f"get {bucket}/{key}")
        subject = f"$KV.{bucket}.{key}"

        async def fetch(direct: bool) -> Any:
            if revision:
                return await self._js.get_msg(f"KV_{bucket}", seq=revision, direct=direct)
            return await self._js.get_msg(f"KV_{bucket}", subject=subject, direct=direct)

        async def run() -> KvEntry:
            direct = self._direct.get(bucket, False)
            try:
                try:
                    msg = await fetch(direct)
                except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                    # A direct get of a bucket that is gone (or was made again without direct gets).
                    err = await self._no_responder(bucket, f"get {bucket}/{key}")
                    if isinstance(err, NotFound) or self._direct.get(bucket, False):
                        raise err from None
                    msg = await fetch(False)
            except nats.js.errors.NotFoundError:
                raise NotFound(f"{bucket}/{key}" + (f"@{revision}" if revision else "") + ": no such key") from None
            if msg.subject != subject or op_of(msg.headers) is not Op.PUT:
                raise NotFound(f"{bucket}/{key}" + (f"@{revision}" if revision else "") + ": deleted")
            own = {k: str(v) for k, v in (msg.headers or {}).items() if k not in DIRECT_GET_HEADERS}
            return KvEntry(bucket, key, msg.data or b"", int(msg.seq), ts(msg.time), own)

        api_subject = ("$JS.API.DIRECT.GET." if self._direct.get(bucket) else "$JS.API.STREAM.MSG.GET.")
        return await self._call(f"get {bucket}/{key}", run(), subject=f"{api_subject}KV_{bucket}")

    async def create(self, bucket: str, key: str, value: bytes, *, ttl: float | None = None,
                     headers: Mapping[str, str] | None = None) -> int:
        return await self._put(bucket, key, value, 0, create=True, ttl=ttl, headers=headers)

    async def update(self, bucket: str, key: str, value: bytes, last: int, *, ttl: float | None = None,
                     headers: Mapping[str, str] | None = None) -> int:
        return await self._put(bucket, key, value, last, create=False, ttl=ttl, headers=headers)

    def _check_payload(self, data: bytes, headers: dict[str, str], stream: str, what: str) -> None:
        """TooLarge for a message over the server's max payload, headers counted: nats-py
        checks the payload alone, and the server drops the connection for the rest."""
        size = len(data) + hdr_size({**headers, "Nats-Expected-Stream": stream})  # nats-py adds that header
        if size > self.max_payload:
            raise TooLarge(f"{what}: {len(data)} bytes and {size - len(data)} of headers are over "
                           f"the server's max payload of {self.max_payload}")

    async def _publish_kv(self, bucket: str, key: str, value: bytes, headers: dict[str, str], what: str) -> int:
        """One write to a key; NotFound if the bucket is gone, Conflict if the expected revision is not current."""
        stream = f"KV_{bucket}"
        self._check_payload(value, headers, stream, what)
        try:
            ack = await self._js.publish(f"$KV.{bucket}.{key}", value, stream=stream, headers=headers)
        except nats.js.errors.APIError as e:
            if e.err_code in _ERR_WRONG_LAST:
                expect = headers.get(api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE)
                raise Conflict(f"{bucket}/{key}: revision {expect} is not current") from None
            if e.err_code == _ERR_TTL_DISABLED:
                raise Invalid(f"{what}: bucket {bucket} does not allow per-message TTL") from None
            raise
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise await self._no_responder(bucket, what) from None
        return int(ack.seq)

    def _write_headers(self, what: str, ttl: float | None, headers: Mapping[str, str] | None) -> dict[str, str]:
        return write_headers(what, ttl, headers, self.msg_ttl)

    async def _put(self, bucket: str, key: str, value: bytes, last: int, create: bool, *,
                   ttl: float | None = None, headers: Mapping[str, str] | None = None) -> int:
        what = f"put {bucket}/{key}"
        check_key(bucket, key, what)
        subject = f"$KV.{bucket}.{key}"
        extra = self._write_headers(what, ttl, headers)

        async def publish(expect: int) -> int:
            return await self._publish_kv(bucket, key, value, {**extra, EXPECTED_LAST: str(expect)}, what)

        async def run() -> int:
            if not create:
                return await publish(last)
            try:
                return await publish(0)
            except Conflict:
                # A deleted/purged key keeps a marker: creating over it is allowed.
                try:
                    msg = await self._js.get_msg(f"KV_{bucket}", subject=subject,
                                                 direct=self._direct.get(bucket, False))
                except nats.js.errors.NotFoundError:
                    raise Exists(f"{bucket}/{key}: exists") from None
                if op_of(msg.headers) is Op.PUT:
                    raise Exists(f"{bucket}/{key}: exists") from None
                try:
                    return await publish(int(msg.seq))
                except Conflict:
                    raise Exists(f"{bucket}/{key}: exists") from None

        return await self._call(what, run(), subject=subject)

    async def delete(self, bucket: str, key: str, last: int | None = None, *,
                     headers: Mapping[str, str] | None = None) -> None:
        what = f"delete {bucket}/{key}"
        check_key(bucket, key, what)
        hdrs = {**check_headers(headers, what), KV_OP: "DEL"}
        if last:
            hdrs[EXPECTED_LAST] = str(last)
        else:
            hdrs.pop(EXPECTED_LAST, None)  # the store's own: no CAS unless asked

        async def run() -> None:
            await self._publish_kv(bucket, key, b"", dict(hdrs), what)

        await self._call(what, run(), subject=f"$KV.{bucket}.{key}")

    # -- streams -----------------------------------------------------------

    async def streams(self) -> list[StreamInfo]:
        """Every stream that is not a KV or object-store bucket's own."""

        async def run() -> list[StreamInfo]:
            return [stream_info(si) for si in await self._all_streams()
                    if not (si.config.name or "").startswith(("KV_", "OBJ_"))]

        return await self._call("list streams", run(), subject="$JS.API.STREAM.LIST")

    async def stream(self, name: str) -> StreamInfo:
        async def run() -> StreamInfo:
            try:
                return stream_info(await self._js.stream_info(name))
            except nats.js.errors.NotFoundError:
                raise NotFound(f"no stream {name!r}") from None

        return await self._call(f"stream {name}", run(), subject=f"$JS.API.STREAM.INFO.{name}")

    async def create_stream(self, name: str, subjects: Sequence[str], *, max_age: float = 0.0,
                            max_msg_size: int = -1, replicas: int = 1, storage: str = "file") -> StreamInfo:
        req = new_stream(name, subjects, max_age=max_age, max_msg_size=max_msg_size, replicas=replicas,
                         storage=storage)
        what, subjects, existing = req.what, req.subjects, req.existing

        async def run() -> StreamInfo:
            try:
                return existing(stream_info(await self._js.stream_info(name)))
            except nats.js.errors.NotFoundError:
                pass
            cfg = api.StreamConfig(name=name, subjects=subjects, allow_direct=True,
                                   allow_msg_ttl=True if self.msg_ttl else None, max_age=max_age or None,
                                   max_msg_size=max_msg_size, num_replicas=replicas,
                                   storage=api.StorageType(storage))
            try:
                return stream_info(await self._js.add_stream(cfg))
            except nats.js.errors.APIError as e:
                if e.err_code == _ERR_STREAM_IN_USE:  # made meanwhile by another client
                    return existing(stream_info(await self._js.stream_info(name)))
                if e.err_code == _ERR_SUBJECTS_OVERLAP:
                    raise Invalid(f"{what}: another stream takes some of {', '.join(subjects)}") from None
                raise

        return await self._call(what, run(), subject="$JS.API.STREAM.CREATE")

    async def get_msg(self, stream: str, seq: int, direct: bool = False) -> StreamMsg:
        async def run() -> StreamMsg:
            try:
                msg = await self._js.get_msg(stream, seq=seq, direct=direct)
            except nats.js.errors.NotFoundError:
                raise NotFound(f"{stream}: no message {seq}") from None
            if msg.seq is not None and int(msg.seq) != seq:
                raise NotFound(f"{stream}: no message {seq}")
            return StreamMsg(stream, msg.subject or "", seq, msg.data or b"",
                             {k: str(v) for k, v in (msg.headers or {}).items()}, ts(msg.time))

        api_subject = "$JS.API.DIRECT.GET." if direct else "$JS.API.STREAM.MSG.GET."
        return await self._call(f"get {stream}#{seq}", run(), subject=f"{api_subject}{stream}")

    async def publish(self, subject: str, data: bytes, stream: str, msg_id: str, *,
                      headers: Mapping[str, str] | None = None) -> int:
        """Append one message; ``msg_id`` makes a retried publish a no-op."""

        what = f"publish {subject}"
        check_subject(subject, what)
        hdrs = {**check_headers(headers, what), "Nats-Msg-Id": msg_id}

        async def run() -> int:
            self._check_payload(data, hdrs, stream, what)
            ack = await self._js.publish(subject, data, stream=stream, headers=hdrs)
            return int(ack.seq)

        return await self._call(what, run(), subject=subject)

    async def delete_msg(self, stream: str, seq: int) -> None:
        async def run() -> None:
            try:
                await self._js.delete_msg(stream, seq)
            except nats.js.errors.NotFoundError:  # the stream (10059)
                raise NotFound(f"{stream}: no stream {stream!r}") from None
            except nats.js.errors.APIError as e:
                # The server checks deny_delete first, then the sequence: a gap inside the
                # stream is 10043 "sequence N not found" (400); before the first message
                # (seq 0 too) 10057 "no message found", past the last "stream store EOF".
                text = (e.description or "").lower()
                if e.err_code == _ERR_DELETE_FAILED and "not permitted" in text:
                    raise NotPermitted(f"{stream}: message delete not permitted (the stream denies deletes)") from None
                if e.err_code == _ERR_SEQ_NOT_FOUND or (
                        e.err_code == _ERR_DELETE_FAILED and ("no message found" in text or "eof" in text)):
                    raise NotFound(f"{stream}: no message {seq}") from None
                raise

        await self._call(f"delete {stream}#{seq}", run(), subject=f"$JS.API.STREAM.MSG.DELETE.{stream}")

    async def stream_watch(self, stream: str, sink: WatchSink) -> StreamWatch:
        assert self._token is not None
        w = StreamWatch(self, stream, sink, self._token)
        await self._call(f"watch stream {stream}", w.start(), bound=max(self.timeout, 10.0),
                         subject=f"$JS.API.CONSUMER.CREATE.{stream}")
        self._watches.add(w)  # type: ignore[arg-type]
        return w

    # -- work queues (durable pull consumers) -------------------------------------

    async def queue(self, stream: str, durable: str, sink: WatchSink, *, create: bool = True,
                    filter_subject: str | None = None, ack_wait: float = 30.0,
                    max_held: int = 4) -> NatsQueue:
        """Hold up to ``max_held`` deliveries of a durable consumer for this mount."""
        assert self._token is not None
        q = NatsQueue(self, stream, durable, sink, self._token, max_held)

        async def run() -> None:
            try:
                ci = await self._js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                if not create:
                    raise NotFound(f"no consumer {durable!r} on stream {stream!r}") from None
                cfg = api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT,
                                         ack_wait=ack_wait, filter_subject=filter_subject,
                                         max_ack_pending=-1)
                ci = await self._js.add_consumer(stream, cfg)
            q.ack_wait = float(ci.config.ack_wait or ack_wait)
            await q.start()

        try:
            await self._call(f"queue {stream}/{durable}", run(), subject=f"$JS.API.CONSUMER.INFO.{stream}")
        except BaseException:
            # Cut short (a timeout) after q.start(): what of it started must not go on fetching.
            q._emitter.closed = True
            if self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(q._stop(), self._loop)
            raise
        self._queues.add(q)
        return q

    async def ack(self, q: Queue, seq: int) -> None:
        assert isinstance(q, NatsQueue), "a queue of another store"
        await self._call(f"ack {q.stream}#{seq}", q.ack(seq), subject="$JS.ACK.")

    # -- reads of what changed ------------------------------------------------------

    async def _span(self, stream: str, missing: str, what: str, subject: str | None = None) -> tuple[int, int, int]:
        """A stream's first and last sequence and message count. NotFound: no such stream;
        Invalid: it takes no subject on the filter ``subject``."""

        async def run() -> tuple[int, int, int]:
            try:
                si = await self._js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                raise NotFound(missing) from None
            subjects = si.config.subjects or ()
            if subject is not None and subjects and not any(subjects_overlap(p, subject) for p in subjects):
                raise Invalid(f"{what}: stream {stream} takes no subject on {subject} "
                              f"(its subjects: {', '.join(subjects)})")
            st = si.state
            return int(st.first_seq or 0), int(st.last_seq or 0), int(st.messages or 0)

        return await self._call(what, run(), subject=f"$JS.API.STREAM.INFO.{stream}")

    def _read_bound(self, count: int) -> float:
        """The bound on a whole read of ``count`` messages: the timeout per batch (each wait
        inside it is bounded by the timeout alone)."""
        return self.timeout * (2 + count // _READ_BATCH)

    async def kv_since(self, bucket: str, revision: int = 0) -> KvDelta:
        what = f"changes of {bucket} since {revision}"
        check_bucket(bucket, what)
        if revision < 0:
            raise Invalid(f"{what}: a revision is 0 or more")
        stream, pre, missing = f"KV_{bucket}", f"$KV.{bucket}.", f"no KV bucket {bucket!r}"
        first, last, count = await self._span(stream, missing, what)
        complete = kv_delta_complete(revision, first, last)
        if last <= revision:
            return KvDelta(bucket, last, {}, {}, complete)
        latest: dict[str, tuple[Any, Any, int]] = {}

        def keep(msg: Any, meta: Any, seq: int) -> None:
            latest[msg.subject] = (msg, meta, seq)

        async def run() -> KvDelta:
            end = await read_since(self, stream, f"{pre}>", revision + 1, revision == 0, keep, missing)
            puts: dict[str, KvEntry] = {}
            deleted: dict[str, int] = {}
            cut = len(pre)
            for subject, (msg, meta, seq) in latest.items():
                key = subject[cut:]
                hdrs = msg.headers  # a fresh dict per message: a consumer's delivery adds no header
                if op_of(hdrs) is Op.PUT:
                    puts[key] = KvEntry(bucket, key, msg.data or b"", seq, ts(meta.timestamp), hdrs or {})
                else:
                    deleted[key] = seq
            return KvDelta(bucket, max(end, last), puts, deleted, complete)

        if revision:
            count = min(count, last - revision)
        return await self._call(what, run(), bound=self._read_bound(count),
                                subject=f"$JS.API.CONSUMER.CREATE.{stream}")

    async def stream_since(self, stream: str, seq: int = 0, subject: str | None = None) -> StreamDelta:
        what = f"read {stream} since #{seq}" + (f" on {subject}" if subject else "")
        check_stream(stream, what, new=False)
        if seq < 0:
            raise Invalid(f"{what}: a sequence is 0 or more")
        if subject is not None:
            check_filter(subject, what)
        missing = f"no stream {stream!r}"
        first, last, count = await self._span(stream, missing, what, subject)
        if last <= seq:
            return StreamDelta(stream, last, first, [])
        msgs: list[StreamMsg] = []

        def keep(msg: Any, meta: Any, n: int) -> None:
            # msg.headers: a fresh dict per message; a consumer's delivery adds no header
            msgs.append(StreamMsg(stream, msg.subject, n, msg.data or b"", msg.headers or {}, ts(meta.timestamp)))

        async def run() -> StreamDelta:
            end = await read_since(self, stream, subject or ">", seq + 1, False, keep, missing)
            return StreamDelta(stream, max(end, last), first, msgs)

        return await self._call(what, run(), bound=self._read_bound(min(count, last - seq)),
                                subject=f"$JS.API.CONSUMER.CREATE.{stream}")

    # -- watch -------------------------------------------------------------

    async def watch(self, bucket: str, sink: WatchSink) -> KvWatch:
        """RESYNC, the snapshot, SYNCED, then live changes; NotFound (and nothing
        sent to the sink) if the bucket is not there."""
        check_bucket(bucket, f"watch {bucket}")
        assert self._token is not None
        w = KvWatch(self, bucket, sink, self._token)
        await self._call(f"watch {bucket}", w.start(), bound=max(self.timeout, 10.0),
                         subject=f"$JS.API.CONSUMER.CREATE.KV_{bucket}")
        self._watches.add(w)
        return w

    async def stop_watch(self, w: KvWatch) -> None:
        self._watches.discard(w)
        with contextlib.suppress(HvfsError):  # disconnected too: the subscription must go
            await self._call(f"unwatch {w.bucket}", w._stop(), always=True)


def _map_error(e: BaseException, what: str) -> HvfsError:
    """Translate a nats-py exception into the project's own (one place)."""
    if isinstance(e, HvfsError):
        return e
    if isinstance(e, nats.js.errors.KeyWrongLastSequenceError):
        return Conflict(f"{what}: revision is not current")
    if isinstance(e, nats.js.errors.APIError):
        code = e.err_code
        if code in _ERR_WRONG_LAST:
            return Conflict(f"{what}: revision is not current")
        if code in _ERR_TOO_BIG:
            return TooLarge(f"{what}: value larger than the bucket allows")
        if code == _ERR_TTL_DISABLED:
            return Invalid(f"{what}: the stream does not allow per-message TTL")
        if code == _ERR_TTL_INVALID:
            return Invalid(f"{what}: the server takes no such per-message TTL")
        if isinstance(e, nats.js.errors.NotFoundError):
            return NotFound(f"{what}: not found")
        if isinstance(e, nats.js.errors.ServiceUnavailableError):
            return Unavailable(f"{what}: JetStream unavailable")
        return Invalid(f"{what}: {e.description or e}")
    if isinstance(e, nats.errors.MaxPayloadError):
        return TooLarge(f"{what}: value larger than the server's max payload")
    if isinstance(e, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
        return Unavailable(f"{what}: no JetStream responder (bucket or stream missing?)")
    if isinstance(e, nats.errors.BadSubjectError | nats.js.errors.InvalidBucketNameError):
        return InvalidName(f"{what}: not a valid NATS name")
    if isinstance(e, nats.errors.TimeoutError | TimeoutError | asyncio.TimeoutError):
        return Timeout(f"{what}: no answer from NATS")
    if isinstance(e, nats.errors.ConnectionClosedError | nats.errors.StaleConnectionError
                  | nats.errors.ConnectionReconnectingError | nats.errors.OutboundBufferLimitError):
        return Unavailable(f"{what}: not connected to NATS")
    if isinstance(e, asyncio.CancelledError):
        return Unavailable(f"{what}: cancelled")
    return Unavailable(f"{what}: {type(e).__name__}: {e}")
