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
import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import trio
from nats.js import api
from nats.nuid import NUID

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
    CHUNK_DIGEST_HEADER,
    OBJ_CHUNK_SIZE,
    BucketInfo,
    Corrupt,
    KvDelta,
    KvEntry,
    ObjBucketInfo,
    ObjChange,
    ObjectInfo,
    Op,
    Queue,
    StoreState,
    StreamDelta,
    StreamInfo,
    StreamMsg,
    WatchSink,
    sha256_digest,
)
from .natssubs import KvWatch, NatsQueue, StreamWatch, read_since, storage_of, stream_info, ts
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
_ERR_STREAM_NOT_FOUND = 10059
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
        """Connect with the configured credentials; Invalid for an unusable file, Unavailable with
        the reason (say "authorization violation") when NATS refuses or cannot be reached.

        No secret goes into a message: only file paths, the user name and the form of credentials.
        """
        import base64
        import json
        import ssl
        import time

        o = self.opts
        where = shown_servers(o.servers)
        kw: dict[str, Any] = dict(
            servers=o.servers,
            connect_timeout=min(self.timeout, 2.0),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            allow_reconnect=True,
            ping_interval=5,
            max_outstanding_pings=2,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            name="hvfs",
        )

        def check_files() -> None:
            """Each file named can be read: nats-py and ssl read them later, with less clear errors."""
            files = {"credentials file": o.creds, "nkey seed file": o.nkey, "TLS CA file": o.tls_ca,
                     "TLS certificate": o.tls_cert, "TLS key": o.tls_key}
            for what, path in files.items():
                if path:
                    try:
                        with open(path, "rb") as f:
                            head = f.read(1 << 16)
                    except OSError as e:
                        raise Invalid(f"{what} {path}: {e.strerror or e}") from None
                    if path == o.creds and not (b"-----BEGIN NATS USER JWT-----" in head
                                                and b"NKEY SEED-----" in head):
                        raise Invalid(f"credentials file {path}: no user JWT and nkey seed in it "
                                      "(what nsc generate creds writes)")

        check_files()
        if o.user:
            kw["user"], kw["password"] = o.user, o.password.get_secret_value() if o.password else ""
        if o.token:
            kw["token"] = o.token.get_secret_value()
        if o.creds:
            kw["user_credentials"] = o.creds
        if o.nkey:
            kw["nkeys_seed"] = o.nkey
        if o.tls_key and not o.tls_cert:
            raise Invalid(f"TLS key {o.tls_key} without a client certificate (--tlscert, NATS_CERT)")
        if o.tls_ca or o.tls_cert:
            try:
                tls = ssl.create_default_context(cafile=o.tls_ca)
            except ssl.SSLError as e:
                raise Invalid(f"TLS CA file {o.tls_ca}: no PEM certificate in it ({e.reason or e})") from None
            if o.tls_cert:
                try:
                    tls.load_cert_chain(o.tls_cert, o.tls_key)
                except ssl.SSLError as e:
                    raise Invalid(f"TLS certificate {o.tls_cert}" + (f" and key {o.tls_key}" if o.tls_key else "")
                                  + f": not a PEM certificate and its key ({e.reason or e})") from None
            kw["tls"] = tls

        async def without_tls() -> str | None:
            """A server that does not require TLS, by its INFO line, before any credential is sent:
            nats-py would connect in the clear where the nats CLI refuses."""
            from urllib.parse import urlsplit

            for url in o.servers:
                u = urlsplit(url if "://" in url else f"nats://{url}")
                if u.scheme not in ("nats", "tls") or not u.hostname:
                    continue
                try:
                    r, w = await asyncio.wait_for(asyncio.open_connection(u.hostname, u.port or 4222),
                                                  kw["connect_timeout"])
                except (OSError, TimeoutError):
                    continue  # the connect says what is wrong with it
                try:
                    line = await asyncio.wait_for(r.readline(), kw["connect_timeout"])
                    info = json.loads(line.split(b" ", 1)[1]) if line.startswith(b"INFO ") else None
                except (OSError, TimeoutError, ValueError):
                    info = None  # no NATS server there: the connect says so
                finally:
                    w.close()
                if isinstance(info, dict) and not info.get("tls_required"):
                    return shown_servers([url])
            return None

        def credentials() -> str:
            """Which credentials were refused, without the secret."""
            if o.creds:
                exp = None
                with contextlib.suppress(Exception):  # the user JWT's expiry, to say why
                    text = open(o.creds).read()
                    jwt = text.split("-----BEGIN NATS USER JWT-----")[1].split("------END")[0].strip()
                    body = jwt.split(".")[1]
                    exp = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))).get("exp")
                if isinstance(exp, int) and exp <= time.time():
                    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp))
                    return f"credentials file {o.creds}: its user JWT expired at {when}"
                return f"credentials file {o.creds}"
            forms = [f"user {o.user} {'and password' if o.password else 'without a password'}" if o.user else "",
                     "token" if o.token else "", f"nkey seed file {o.nkey}" if o.nkey else ""]
            return ", ".join(f for f in forms if f) or "no credentials given"

        def refusal(e: Exception) -> str | None:
            """The reason if ``e`` says that NATS refuses this client for good (retrying will not help)."""
            if isinstance(e, ssl.SSLCertVerificationError):
                return f"TLS: the server's certificate is not trusted: {e.verify_message or e.reason} " \
                       "(--tlsca: the CA that signed it)"
            if isinstance(e, ssl.SSLError):
                alert = str(e.reason or e)
                if "CERTIFICATE_REQUIRED" in alert:
                    return "TLS: the server requires a client certificate (--tlscert and --tlskey)"
                if "UNKNOWN_CA" in alert or "BAD_CERTIFICATE" in alert or "CERTIFICATE_UNKNOWN" in alert:
                    return f"TLS: the server refused the client certificate {o.tls_cert} ({alert})"
                return f"TLS: {alert}"
            if type(e).__module__.startswith("nkeys"):  # a seed nats-py could not read
                return f"{f'credentials file {o.creds}' if o.creds else f'nkey seed file {o.nkey}'}: " \
                       f"{str(e).removeprefix('nkeys: ')}"
            text = str(e).removeprefix("nats: ").strip("'\" ").lower()
            if isinstance(e, nats.errors.AuthorizationError) or "authorization violation" in text:
                return f"authorization violation ({credentials()})"
            if "authentication expired" in text or "authentication revoked" in text:
                return f"{text} ({credentials()})"
            return None

        if "tls" in kw and (plain := await without_tls()) is not None:
            raise Unavailable(f"cannot connect to NATS at {where}: TLS: {plain} does not use TLS, "
                              "and TLS files were given (credentials are not sent in the clear)")
        # The first connect fails fast, with a reason: nats-py retries it forever when
        # reconnects are unlimited, so it is bounded here and cut short by a refusal.
        nc = nats.NATS()
        refused: list[str] = []

        async def on_error(e: Exception) -> None:
            await self._on_error(e)
            why = refusal(e) if not connecting.done() else None
            if why is not None:
                refused.append(why)
                connecting.cancel()

        async def on_disconnected() -> None:
            if self._nc is not None:  # not during the first connect: that reports its own reason
                await self._on_disconnected()

        kw["error_cb"], kw["disconnected_cb"] = on_error, on_disconnected
        connecting = asyncio.ensure_future(nc.connect(**kw))
        try:
            await asyncio.wait_for(connecting, self.timeout + 2)
        except asyncio.CancelledError:
            if not refused:
                raise  # we are cancelled, not the connect
            why = refused[0]
        except Exception as e:
            why = refusal(e) or self.state.last_error or str(e) or type(e).__name__
        else:
            why = ""
        if why:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 1.0)
            raise Unavailable(f"cannot connect to NATS at {where}: {why}")
        self._nc = nc
        self._js = self._nc.jetstream(timeout=self.timeout)
        try:
            await self._js.account_info()
        except Exception as e:
            raise Unavailable(f"NATS at {where} has no JetStream: {e or type(e).__name__}") from e
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
        url = self._nc.connected_url if self._nc else None
        # host and port only: a URL's netloc may carry user:password
        log.warning("nats: reconnected to %s", f"{url.hostname}:{url.port}" if url is not None else "?")
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
            raise Unavailable(f"{what}: not connected to NATS", sent=False)
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

    async def kv_next(self, bucket: str, key: str, revision: int) -> StreamMsg | None:
        what = f"get {bucket}/{key}"
        check_key(bucket, key, what)
        subject = f"$KV.{bucket}.{key}"

        async def run() -> StreamMsg | None:
            try:
                msg = await self._js.get_msg(f"KV_{bucket}", seq=revision + 1, subject=subject, next=True)
            except nats.js.errors.NotFoundError as e:
                if e.err_code == _ERR_STREAM_NOT_FOUND:
                    self.forget_bucket(bucket)
                    raise NotFound(f"no KV bucket {bucket!r}") from None
                return None  # no message on the key after it
            own = {k: str(v) for k, v in (msg.headers or {}).items() if k not in DIRECT_GET_HEADERS}
            return StreamMsg(f"KV_{bucket}", msg.subject, int(msg.seq), msg.data or b"", own, ts(msg.time))

        return await self._call(what, run(), subject=f"$JS.API.STREAM.MSG.GET.KV_{bucket}")

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

    # -- object store buckets (issue 15; see the section in hvfs.store.base) ---------------

    @property
    def _obj_seqs(self) -> OrderedDict[tuple[str, str], list[int]]:
        """The chunk-sequence indexes, (bucket, nuid) -> sequences, least recently used first
        (made on first use: this section adds nothing to ``__init__``)."""
        d: OrderedDict[tuple[str, str], list[int]] | None = self.__dict__.get("_obj_seqs_d")
        if d is None:
            d = self.__dict__["_obj_seqs_d"] = OrderedDict()
        return d

    async def obj_buckets(self) -> list[ObjBucketInfo]:
        async def run() -> list[ObjBucketInfo]:
            return [_obj_bucket_info(si) for si in await self._all_streams()
                    if (si.config.name or "").startswith("OBJ_")]

        return await self._call("list object buckets", run(), subject="$JS.API.STREAM.LIST")

    async def obj_bucket(self, name: str) -> ObjBucketInfo:
        check_bucket(name, f"object bucket {name}")

        async def run() -> ObjBucketInfo:
            try:
                return _obj_bucket_info(await self._js.stream_info(f"OBJ_{name}"))
            except nats.js.errors.NotFoundError:
                raise NotFound(f"no object bucket {name!r}") from None

        return await self._call(f"object bucket {name}", run(), subject=f"$JS.API.STREAM.INFO.OBJ_{name}")

    async def create_obj_bucket(self, name: str, *, max_bytes: int = -1, max_age: float = 0.0,
                                replicas: int = 1, storage: str = "file") -> ObjBucketInfo:
        what = f"create object bucket {name}"
        check_new_bucket(name, what)
        check_limits(what, max_age=max_age, max_size=max_bytes, replicas=replicas, storage=storage)
        want = {"max_bytes": max_bytes if max_bytes > 0 else -1, "max_age": float(max_age),
                "replicas": replicas, "storage": storage}
        # The stream the NATS clients make for an object store (nats-py create_object_store, Go).
        cfg = api.StreamConfig(name=f"OBJ_{name}", subjects=[f"$O.{name}.C.>", f"$O.{name}.M.>"],
                               max_age=max_age or None, max_bytes=max_bytes if max_bytes > 0 else -1,
                               storage=api.StorageType(storage), num_replicas=replicas,
                               discard=api.DiscardPolicy.NEW, allow_rollup_hdrs=True, allow_direct=True)

        async def run() -> ObjBucketInfo:
            try:
                have = _obj_bucket_info(await self._js.stream_info(f"OBJ_{name}"))
            except nats.js.errors.NotFoundError:
                try:
                    return _obj_bucket_info(await self._js.add_stream(cfg))
                except nats.js.errors.APIError as e:
                    if e.err_code != _ERR_STREAM_IN_USE:
                        raise
                    have = _obj_bucket_info(await self._js.stream_info(f"OBJ_{name}"))
            why = differences({k: getattr(have, k) for k in want}, want)
            if why:
                raise Invalid(f"{what}: bucket {name} exists with other settings: {why}")
            return have

        return await self._call(what, run(), subject="$JS.API.STREAM.CREATE")

    async def _obj_meta(self, bucket: str, name: str) -> ObjectInfo | None:
        """Loop side: the object's current meta (a delete marker too); None: never written.
        NotFound: no such bucket."""
        try:
            msg = await self._js.get_msg(f"OBJ_{bucket}", subject=obj_meta_subject(bucket, name))
        except nats.js.errors.NotFoundError as e:
            if e.err_code == _ERR_STREAM_NOT_FOUND:
                raise NotFound(f"no object bucket {bucket!r}") from None
            return None
        return parse_obj_meta(bucket, msg.data or b"", int(msg.seq), ts(msg.time))

    async def obj_info(self, bucket: str, name: str) -> ObjectInfo:
        what = f"object {bucket}/{name}"
        check_obj_name(bucket, name, what)

        async def run() -> ObjectInfo:
            info = await self._obj_meta(bucket, name)
            if info is None or info.deleted:
                raise NotFound(f"{what}: no such object" if info is None else f"{what}: deleted")
            return info

        return await self._call(what, run(), subject=f"$JS.API.STREAM.MSG.GET.OBJ_{bucket}")

    async def _obj_index(self, info: ObjectInfo) -> list[int]:
        """Loop side: the stream sequences of the object's chunks, in order, read once per
        nuid (headers only: no chunk's payload comes with it) and cached."""
        key = (info.bucket, info.nuid)
        seqs = self._obj_seqs.get(key)
        if seqs is not None:
            self._obj_seqs.move_to_end(key)
            return seqs
        found: set[int] = set()  # an ordered consumer that restarts may deliver a chunk twice
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            meta = msg.metadata
            found.add(int(meta.sequence.stream))
            if meta.num_pending == 0 or len(found) >= info.chunks:
                done.set()

        sub = await self._js.subscribe(obj_chunk_subject(info.bucket, info.nuid), stream=f"OBJ_{info.bucket}",
                                       cb=on_msg, ordered_consumer=True, headers_only=True,
                                       deliver_policy=api.DeliverPolicy.ALL,
                                       inactive_threshold=max(2 * self.timeout, 5.0), pending_msgs_limit=-1)
        try:
            ci = await sub.consumer_info()
            if not ci.num_pending and not (ci.delivered and ci.delivered.consumer_seq):
                done.set()  # no chunk at all
            await done.wait()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), self.timeout)
        seqs = sorted(found)  # one writer publishes an object's chunks in order
        self._obj_seqs[key] = seqs
        while len(self._obj_seqs) > _OBJ_INDEXES:
            self._obj_seqs.popitem(last=False)
        return seqs

    async def obj_read(self, info: ObjectInfo, first: int, count: int) -> list[bytes]:
        what = f"read {info.bucket}/{info.name}"
        if first < 0 or count < 1 or first >= max(info.chunks, 1):
            raise Invalid(f"{what}: chunks {first}+{count} of {info.chunks}")
        if info.chunks == 0:
            return []
        end = min(first + count, info.chunks)
        stream, subject = f"OBJ_{info.bucket}", obj_chunk_subject(info.bucket, info.nuid)

        async def gone(why: str) -> HvfsError:
            """A chunk is not there: the object changed since ``info`` (NotFound), or it is damaged."""
            cur = await self._obj_meta(info.bucket, info.name)
            if cur is None or cur.revision != info.revision:
                self._obj_seqs.pop((info.bucket, info.nuid), None)
                return NotFound(f"{what}: the object was replaced or deleted since it was opened")
            return Corrupt(f"{what}: {why}")

        async def one(i: int, seq: int) -> bytes:
            try:
                msg = await self._js.get_msg(stream, seq=seq, direct=True)
            except nats.js.errors.NotFoundError:
                raise await gone(f"chunk {i} (#{seq}) is missing") from None
            if msg.subject != subject:
                raise await gone(f"chunk {i} (#{seq}) is missing")
            return check_chunk(info, i, msg.data or b"", msg.headers or {}, what)

        async def run() -> list[bytes]:
            seqs = await self._obj_index(info)
            if len(seqs) != info.chunks:
                raise await gone(f"{len(seqs)} chunks in NATS, its meta says {info.chunks}")
            out = list(await asyncio.gather(*(one(i, seqs[i]) for i in range(first, end))))
            if first == 0 and end == info.chunks:
                check_digest(info, out, what)
            return out

        # The index, when not cached, is one headers-only read of every chunk: bounded as kv_since.
        index = 0 if (info.bucket, info.nuid) in self._obj_seqs else info.chunks // _READ_BATCH
        return await self._call(what, run(), bound=self.timeout * (2 + (end - first) // 8 + index),
                                subject=f"$JS.API.DIRECT.GET.{stream}")

    async def obj_put(self, bucket: str, name: str, path: str, last: int, *,
                      headers: Mapping[str, str] | None = None,
                      metadata: Mapping[str, str] | None = None,
                      chunk_size: int = OBJ_CHUNK_SIZE) -> ObjectInfo:
        what = f"put {bucket}/{name}"
        check_obj_name(bucket, name, what)
        hdrs = check_headers(headers, what)
        if chunk_size < 1:
            raise Invalid(f"{what}: a chunk size is positive")
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise Invalid(f"{what}: {path}: {e.strerror}") from None
        stream = f"OBJ_{bucket}"
        nuid = _NUID.next().decode()
        chunk_subj = obj_chunk_subject(bucket, nuid)

        async def run() -> ObjectInfo:
            cur = await self._obj_meta(bucket, name)
            expect = check_last(cur, last, what)
            window: list[asyncio.Future[Any]] = []
            seqs: list[int] = []
            h = hashlib.sha256()
            chunks = total = 0
            sent = False

            async def settle(fut: asyncio.Future[Any]) -> None:
                ack = await fut
                if seqs and int(ack.seq) <= seqs[-1]:
                    raise Unavailable(f"{what}: chunks stored out of order")  # never seen; checked anyway
                seqs.append(int(ack.seq))

            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    while True:
                        buf = _read_full(fd, chunk_size)
                        if not buf:
                            break
                        h.update(buf)
                        ch = {CHUNK_DIGEST_HEADER: sha256_digest(hashlib.sha256(buf).digest())}
                        # Up to _PUT_WINDOW chunks in flight: the tasks start in order, and each
                        # writes its message before it first waits, so the chunks are stored in order.
                        window.append(asyncio.ensure_future(
                            self._js.publish(chunk_subj, buf, stream=stream, headers=ch)))
                        sent = True
                        chunks, total = chunks + 1, total + len(buf)
                        if len(window) >= _PUT_WINDOW:
                            await settle(window.pop(0))
                finally:
                    os.close(fd)
                while window:
                    await settle(window.pop(0))
                if total != size:
                    raise Invalid(f"{what}: {path} changed while it was sent")
                doc = obj_meta_doc(bucket, name, nuid, total, chunks, sha256_digest(h.digest()) if total else "",
                                   chunk_size, hdrs, metadata)
                ack = await self._js.publish(obj_meta_subject(bucket, name), doc, stream=stream,
                                             headers={"Nats-Rollup": "sub", EXPECTED_LAST: str(expect)})
            except BaseException as e:
                for fut in window:
                    fut.cancel()
                if sent:
                    await asyncio.shield(self._obj_purge(stream, chunk_subj))
                if isinstance(e, nats.js.errors.APIError) and e.err_code in _ERR_WRONG_LAST:
                    now = await self._obj_meta(bucket, name)
                    raise Conflict(f"{what}: revision {last} is not current",
                                   current=now.revision if now is not None and not now.deleted else 0) from None
                raise _obj_error(e, what) from None
            if cur is not None and not cur.deleted and cur.nuid and cur.nuid != nuid:
                await self._obj_purge(stream, obj_chunk_subject(bucket, cur.nuid))
            self._obj_seqs[(bucket, nuid)] = seqs
            return parse_obj_meta(bucket, doc, int(ack.seq), time.time())

        bound = self.timeout * (3 + size // (OBJ_CHUNK_SIZE * 8))
        return await self._call(what, run(), bound=bound, subject=chunk_subj)

    async def _obj_purge(self, stream: str, subject: str) -> None:
        """Loop side: drop chunks nothing refers to (best effort, bounded: left if NATS is away)."""
        try:
            await asyncio.wait_for(self._js.purge_stream(stream, subject=subject), self.timeout)
        except Exception as e:
            log.info("purge %s %s: %s (left unreferenced)", stream, subject, e)

    async def obj_delete(self, bucket: str, name: str, last: int | None = None) -> None:
        what = f"delete {bucket}/{name}"
        check_obj_name(bucket, name, what)
        stream = f"OBJ_{bucket}"

        async def run() -> None:
            cur = check_current(await self._obj_meta(bucket, name), last, what)
            doc = obj_meta_doc(bucket, name, cur.nuid, 0, 0, "", cur.chunk_size, cur.headers, cur.metadata,
                               deleted=True)
            try:
                await self._js.publish(obj_meta_subject(bucket, name), doc, stream=stream,
                                       headers={"Nats-Rollup": "sub", EXPECTED_LAST: str(cur.revision)})
            except nats.js.errors.APIError as e:
                if e.err_code in _ERR_WRONG_LAST:
                    raise Conflict(f"{what}: the object changed meanwhile") from None
                raise
            if cur.nuid:
                await self._obj_purge(stream, obj_chunk_subject(bucket, cur.nuid))

        await self._call(what, run(), subject=f"$O.{bucket}.M.")

    async def obj_rename(self, bucket: str, name: str, new: str, last: int, new_last: int) -> ObjectInfo:
        what = f"rename {bucket}/{name} to {new}"
        check_obj_name(bucket, name, what)
        check_obj_name(bucket, new, what)
        stream = f"OBJ_{bucket}"

        async def run() -> ObjectInfo:
            src = check_current(await self._obj_meta(bucket, name), last, what)
            dst = await self._obj_meta(bucket, new)
            expect = check_last(dst, new_last, what)
            doc = obj_meta_doc(bucket, new, src.nuid, src.size, src.chunks, src.digest, src.chunk_size,
                               src.headers, src.metadata)
            try:
                ack = await self._js.publish(obj_meta_subject(bucket, new), doc, stream=stream,
                                             headers={"Nats-Rollup": "sub", EXPECTED_LAST: str(expect)})
                # The old name's marker keeps the nuid: no client purges the chunks of a marker.
                gone = obj_meta_doc(bucket, name, src.nuid, 0, 0, "", src.chunk_size, src.headers,
                                    src.metadata, deleted=True)
                await self._js.publish(obj_meta_subject(bucket, name), gone, stream=stream,
                                       headers={"Nats-Rollup": "sub", EXPECTED_LAST: str(src.revision)})
            except nats.js.errors.APIError as e:
                if e.err_code in _ERR_WRONG_LAST:
                    raise Conflict(f"{what}: an object changed meanwhile") from None
                raise
            if dst is not None and not dst.deleted and dst.nuid and dst.nuid != src.nuid:
                await self._obj_purge(stream, obj_chunk_subject(bucket, dst.nuid))
            return parse_obj_meta(bucket, doc, int(ack.seq), time.time())

        return await self._call(what, run(), subject=f"$O.{bucket}.M.")

    async def obj_list(self, bucket: str) -> list[ObjectInfo]:
        what = f"list {bucket}"
        check_bucket(bucket, what)
        stream, missing = f"OBJ_{bucket}", f"no object bucket {bucket!r}"
        first, last, count = await self._span(stream, missing, what)
        found: list[ObjectInfo] = []

        def keep(msg: Any, meta: Any, seq: int) -> None:
            info = parse_obj_meta(bucket, msg.data or b"", seq, ts(meta.timestamp))
            if not info.deleted:
                found.append(info)

        async def run() -> list[ObjectInfo]:
            if last:
                await read_since(self, stream, f"$O.{bucket}.M.>", 1, True, keep, missing)
            return sorted(found, key=lambda i: i.revision)

        return await self._call(what, run(), bound=self._read_bound(count),
                                subject=f"$JS.API.CONSUMER.CREATE.{stream}")

    async def obj_watch(self, bucket: str, sink: WatchSink) -> KvWatch:
        check_bucket(bucket, f"watch {bucket}")
        assert self._token is not None
        w = ObjWatch(self, bucket, sink, self._token)
        await self._call(f"watch {bucket}", w.start(), bound=max(self.timeout, 10.0),
                         subject=f"$JS.API.CONSUMER.CREATE.OBJ_{bucket}")
        self._watches.add(w)
        return w


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


# -- object store (issue 15) --------------------------------------------------------

#: chunk publishes in flight at once during a put (each 128 KiB by default)
_PUT_WINDOW = 8
#: objects whose chunk-sequence index is kept
_OBJ_INDEXES = 64
_ERR_STORE_FAILED = 10077  # "maximum bytes exceeded" and other refusals of the stream's store
_NUID = NUID()


def _read_full(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes of a local file: fewer only at its end."""
    parts: list[bytes] = []
    while n > 0:
        b = os.read(fd, n)
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def _obj_bucket_info(si: Any) -> ObjBucketInfo:
    c = si.config
    mb = c.max_bytes
    return ObjBucketInfo(name=c.name[4:], max_bytes=mb if mb and mb > 0 else -1, max_age=float(c.max_age or 0.0),
                         replicas=int(c.num_replicas or 1), storage=storage_of(c), sealed=bool(c.sealed))


def _obj_error(e: BaseException, what: str) -> BaseException:
    """A put's failure: the stream's byte limit is TooLarge (nothing stored); the rest as any call's."""
    if isinstance(e, nats.js.errors.APIError):
        text = (e.description or "").lower()
        if e.err_code == _ERR_STORE_FAILED or "maximum bytes" in text or "resource limits" in text:
            return TooLarge(f"{what}: over the bucket's max bytes ({e.description}); nothing stored")
    if isinstance(e, HvfsError | asyncio.CancelledError):
        return e
    if isinstance(e, Exception):
        return _map_error(e, what)
    return e


class ObjWatch(KvWatch):
    """An object bucket's meta subjects: the latest meta of every object, then changes.
    Unlike a KV watch it takes the payloads (the meta JSON is small): size, digest and
    the delete flag are in it, not in headers."""

    headers_only = False

    def __init__(self, store: Any, bucket: str, sink: WatchSink, token: trio.lowlevel.TrioToken) -> None:
        super().__init__(store, bucket, sink, token)
        self.pre = f"$O.{bucket}.M."

    @property
    def stream_name(self) -> str:
        return f"OBJ_{self.bucket}"

    @property
    def _missing(self) -> str:
        return f"no object bucket {self.bucket!r}"

    def _item(self, subject: str, headers: dict[str, str] | None, seq: int, when: float,
              size: int, data: bytes | None) -> ObjChange | None:
        try:
            info = parse_obj_meta(self.bucket, data or b"", seq, when)
        except Corrupt as e:
            log.warning("watch %s: %s", self.bucket, e.reason)
            return None
        if not info.name:
            return None
        return ObjChange(self.bucket, info.name, info.deleted, seq, info.size, info.time, info.digest,
                         info.metadata)
