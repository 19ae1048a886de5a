"""The store interface: everything above it sees NATS only through this.

All methods are trio-async, bounded in time, and raise only ``HvfsError``
subclasses (``hvfs.errors``: NotFound, Exists, Conflict, PermissionDenied,
TooLarge, Unavailable, Timeout, ...). Implementations: ``hvfs.store.nats``
(the only module that imports nats-py) and ``hvfs.store.memory`` (an
in-memory double, trusted because it passes the same contract suite,
``tests/test_store_contract.py``, which pins every answer listed here).

Errors any call may raise (each method lists only its own):

- ``Unavailable`` (EIO): not connected to NATS, JetStream not answering (no
  responders), the connection failing under the call.
- ``Timeout`` (ETIMEDOUT): no answer within ``Store.timeout``.
- ``PermissionDenied`` (EACCES): the NATS user may not publish or subscribe to
  the call's subject (the server sends no reply; the store fails it at once).

``NotFound``, ``Exists`` and ``Conflict`` are answers, not failures of NATS:
``StoreState.errors`` does not count them. ``InvalidName`` (and its
``NameTooLong``) is raised before any request is made: not counted as a call.

Names:

- A new bucket's name is ``[a-zA-Z0-9_-]+``, at most 252 characters (its
  stream ``KV_<name>`` at most 255); a bucket made elsewhere may have any name a
  stream can have (no ``.``, ``*``, ``>``, ``/``, ``\\``, white space or control
  character) and is reached by it.
- A key is a literal subject tail: not empty, no empty ``.``-separated token
  (no leading, trailing or double ``.``), no ``*`` or ``>`` anywhere (a
  wildcard would match or overwrite other keys), no white space or control
  character. Other characters the server takes (``@``, ``#``, non-ASCII)
  work, though the KV clients write only ``[-/_=.a-zA-Z0-9]``. A key longer
  than ``3812 - 2 * len(bucket)`` bytes (UTF-8) is ``NameTooLong``: the request
  subject of a direct get, ``$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>``,
  stays within 3840 bytes, well inside the server's 4096-byte protocol line
  (a longer line makes the server drop the connection).

Sizes: the server counts a message's headers in its size, against the
connection's ``max_payload`` and against a bucket's ``max_value_size`` (its
stream's max message size) alike. A ``create`` or ``update`` sends
``Nats-Expected-Last-Subject-Sequence: <revision>`` and ``Nats-Expected-Stream:
KV_<bucket>``: ``78 + len(bucket) + len(str(revision))`` bytes (``create``:
revision 0, or the delete marker's when it writes over one), never more than
``98 + len(bucket)``; a ``ttl`` adds ``Nats-TTL: <seconds>`` (``12 +
len(str(seconds))``) and each extra header ``len(name) + len(value) + 4``
(UTF-8 bytes). ``hvfs.store.rules.write_header_bytes(bucket, ttl, headers)`` is
the sum: the largest value a write stores is ``min(max_payload, max_value_size
if > 0) - write_header_bytes(...)``; callers subtract it; one byte more is
``TooLarge``. A ``publish`` to a stream sends ``Nats-Msg-Id`` and
``Nats-Expected-Stream``: ``51 + len(msg_id) + len(stream)`` bytes, plus its
extra headers.

Headers: ``headers`` on a write are extra message headers, sent as given (hvfs
sends ``Hvfs-Writer: <name>``); the store's own headers of that write (CAS,
stream, ``Nats-TTL``, ``KV-Operation``, ``Nats-Msg-Id``) win over the same
names. A name is an HTTP token (letters, digits, ``!#$%&'*+-.^_`|~``), a
value has no CR, LF or control character (Invalid otherwise, before any
request) and loses surrounding white space (nats-py trims it on the wire); the
server keeps them with the message.

TTL: ``ttl`` on a write is the server's per-message TTL (nats-server 2.11 or
newer: ``Store.msg_ttl``), sent as ``Nats-TTL`` in whole seconds, rounded up, at
least 1; the bucket must allow it (``BucketInfo.msg_ttl``; every bucket
``create_bucket`` makes does). A key's messages each expire with their own TTL
(or the bucket's ``max_age``, whichever is sooner); one without either never
does. When a key's current message expires, ``get`` is NotFound and a new watch
snapshot has no value for it; if older revisions of the key are left (written
without a TTL, or with a longer one), the key goes back to the newest of them,
silently. When a key's last message expires on a bucket with ``marker_ttl``,
the server writes a marker (``Nats-Marker-Reason: MaxAge``) that every watch
gets as op PURGE (measured: 0 to 0.25 s after the expiry) and that new
snapshots show like a delete until it expires itself ``marker_ttl`` later; on a
bucket without ``marker_ttl`` a watch sees nothing. The server raises a TTL
below the bucket's ``marker_ttl`` to it (the stored ``Nats-TTL`` says so). A
read never extends a TTL.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import Corrupt

__all__ = [
    "RESYNC", "SYNCED", "BucketInfo", "KvChange", "KvDelta", "KvEntry", "MsgSeen", "Op", "Queue", "QueueGone",
    "QueueMsg", "Store", "StoreState", "StreamDelta", "StreamInfo", "StreamMsg", "Watch", "WatchSink",
]


#: Watch sink markers: a watch (re)starts its snapshot / the snapshot is complete.
RESYNC = "resync"
SYNCED = "synced"


class Op(enum.Enum):
    PUT = "PUT"
    DEL = "DEL"
    PURGE = "PURGE"


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    max_value_size: int  # -1: no limit beyond the connection's max payload; headers count (see above)
    history: int
    max_age: float = 0.0  # seconds a message is kept at most; 0: no limit
    msg_ttl: bool = False  # writes may carry a per-message TTL
    marker_ttl: float = 0.0  # seconds the server's expiry marker lives; 0: no markers, watches see no expiry
    replicas: int = 1
    storage: str = "file"  # or "memory"


@dataclass(frozen=True, slots=True)
class StreamInfo:
    name: str
    subjects: tuple[str, ...]
    max_msg_size: int  # -1: no limit beyond the connection's max payload
    deny_delete: bool
    first_seq: int
    last_seq: int
    direct: bool
    max_age: float = 0.0  # seconds a message is kept at most; 0: no limit
    replicas: int = 1
    storage: str = "file"  # or "memory"
    msg_ttl: bool = False  # messages may carry a per-message TTL


@dataclass(frozen=True, slots=True)
class StreamMsg:
    """One stream message with its payload and headers."""

    stream: str
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]
    time: float


#: not frozen: a frozen dataclass's __init__ costs 3x, paid once per entry of a snapshot
@dataclass(slots=True)
class MsgSeen:
    """What a stream watch reports: one message, without its payload."""

    stream: str
    subject: str
    seq: int
    size: int
    time: float


@dataclass(frozen=True, slots=True)
class QueueMsg:
    """A message a durable consumer delivered to this mount, not yet acked."""

    seq: int
    subject: str
    data: bytes
    time: float
    deliveries: int
    expires: float  # monotonic time this mount lets go of it (before the ack wait ends)


@dataclass(frozen=True, slots=True)
class QueueGone:
    """This mount let go of a delivery (ack wait nearly over): it will be redelivered."""

    seq: int


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One revision of one key, with its value."""

    bucket: str
    key: str
    value: bytes
    revision: int
    time: float  # seconds since the epoch, from the stream message
    #: every header the message was stored with (Nats-TTL, Hvfs-Writer, the CAS ones...);
    #: not what a direct get's reply adds (Nats-Stream, Nats-Sequence, ...)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KvDelta:
    """What changed in a bucket since a revision (``Store.kv_since``): each key whose
    latest message is newer than it, in exactly one of ``puts`` and ``deleted``."""

    bucket: str
    #: the bucket stream's last sequence when the read ended: the revision this delta
    #: brings a reader to (pass it as the next call's ``revision``)
    last: int
    #: key -> its latest value, for keys whose latest change after the revision is a PUT
    puts: dict[str, KvEntry]
    #: key -> the revision of its delete or purge marker (the server's TTL-expiry marker
    #: too), for keys whose latest change after the revision deletes them
    deleted: dict[str, int]
    #: False: messages after the revision are gone (its next sequence is before the
    #: stream's first; or the revision is past the stream's last: another bucket of
    #: that name). Keys deleted by a marker that is itself gone are then not in
    #: ``deleted``: read again from revision 0 and compare keys to find them.
    complete: bool


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """A stream's messages after a sequence (``Store.stream_since``)."""

    stream: str
    last: int  # the stream's last sequence when the read ended (pass it as the next ``seq``)
    first: int  # the stream's first sequence when the read began: messages before it are gone
    #: the messages with a sequence over the one asked (and matching the filter), in order,
    #: with data and the headers they were stored with
    msgs: list[StreamMsg]


#: not frozen: a frozen dataclass's __init__ costs 3x, paid once per entry of a snapshot
@dataclass(slots=True)
class KvChange:
    """What a watch reports: one revision of one key, without its value.

    ``op`` DEL or PURGE: the key was deleted (a delete marker, ``size`` 0); the
    snapshot has these too, for every key whose latest revision is a marker.
    """

    bucket: str
    key: str
    op: Op
    revision: int
    size: int
    time: float
    #: the Nats-Msg-Id the revision was written with ("": none); how a write that timed
    #: out is recognised as it lands (hvfs.vfs.resolve)
    msg_id: str = ""


#: What a watch hands the layer above, in batches, always on the trio thread,
#: never inside the call that caused them: a KV watch gives KvChange items, a
#: stream watch MsgSeen, a queue QueueMsg and QueueGone; KV and stream watches
#: mark a (re)started snapshot with RESYNC and its end with SYNCED. A KV
#: snapshot is the latest revision of every key in revision order, delete
#: markers included (op DEL or PURGE, size 0): a key deleted before the watch
#: began appears as its marker, not by its absence. After a reconnect the watch
#: starts over: RESYNC and a fresh snapshot.
WatchSink = Callable[[list[Any]], None]


class Watch(Protocol):
    """A running watch (KV bucket or stream): its sink gets changes until stopped."""

    async def stop(self) -> None:
        """End the watch; nothing reaches the sink once this returns. Never raises
        for NATS's sake (works while disconnected too); a second call is a no-op."""
        ...


class Queue(Protocol):
    """This mount's hold on a durable consumer: deliveries reach its sink."""

    stream: str
    durable: str
    ack_wait: float  # the consumer's own (its existing config wins over the one asked for)

    async def stop(self) -> None:
        """Stop fetching and let go: the let-go timers end, the subscription goes;
        what is held and not acked the server redelivers after its ack wait (to this
        or another mount). Nothing reaches the sink once this returns. Never raises
        for NATS's sake (works while disconnected too); a second call is a no-op."""
        ...


@dataclass(slots=True)
class StoreState:
    """Counters and connection state, shown in .hvfs/status.

    ``calls`` counts requests made (not calls refused for an invalid name);
    ``errors`` counts failures, not answers (NotFound, Exists, Conflict).
    """

    server: str = ""
    connected: bool = False
    reconnects: int = 0
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    last_error: str = ""


class Store(Protocol):
    """Everything the filesystem asks of NATS. Every call is bounded by ``timeout``."""

    state: StoreState

    @property
    def timeout(self) -> float:
        """The bound on one call, seconds; callers size their own waits from it."""
        ...

    @property
    def msg_ttl(self) -> bool:
        """The server takes per-message TTLs (nats-server 2.11 or newer). When False, a
        ``ttl`` on a write is Invalid and ``create_bucket`` makes no expiry markers."""
        ...

    @property
    def max_payload(self) -> int:
        """The largest message the server takes, headers included (a write's
        headers: see the module's "Sizes"; the store refuses what is over with
        TooLarge rather than let the server drop the connection)."""
        ...

    async def start(self) -> None:
        """Connect. Unavailable, with the reason, if NATS or its JetStream is not there."""
        ...

    async def close(self) -> None:
        """Stop every watch and queue, then disconnect. Never raises for NATS's sake."""
        ...

    # -- KV buckets and keys

    async def buckets(self) -> list[BucketInfo]:
        """Every KV bucket (stream ``KV_<name>``) on the server."""
        ...

    async def bucket(self, name: str) -> BucketInfo:
        """NotFound: no such bucket. InvalidName: a name no bucket can have."""
        ...

    async def create_bucket(self, name: str, history: int = 10, *, max_age: float = 0.0,
                            max_value_size: int = -1, replicas: int = 1, storage: str = "file",
                            marker_ttl: float = 0.0) -> BucketInfo:
        """Make a bucket (direct gets and per-message TTL on); the same again returns it.

        ``max_age``: seconds a message is kept (0: forever; at least 0.1).
        ``max_value_size``: -1 none (headers count, see "Sizes"). ``storage``:
        "file" or "memory". ``marker_ttl`` > 0 (whole seconds, rounded up): when
        a key's last message expires the server writes a marker watches see as
        PURGE, kept that long (see "TTL"); ignored when ``msg_ttl`` is False.

        InvalidName: ``name`` is not ``[a-zA-Z0-9_-]+`` (NameTooLong: over 252
        characters). Invalid: ``history`` not 1 to 64, another setting out of
        range, more replicas than the server has, or the bucket exists with other
        settings (the reason names them).
        """
        ...

    def forget_bucket(self, name: str) -> None:
        """Drop what is cached about a bucket that is gone."""
        ...

    async def get(self, bucket: str, key: str, revision: int | None = None) -> KvEntry:
        """The key's latest value (``revision`` None or 0) or the one at ``revision``.

        NotFound: no such bucket; the key was never written; its latest revision
        is a delete marker; ``revision`` is gone from the history, another key's,
        a marker, or not yet written. InvalidName/NameTooLong: see "Names".
        """
        ...

    async def create(self, bucket: str, key: str, value: bytes, *, ttl: float | None = None,
                     headers: Mapping[str, str] | None = None) -> int:
        """Write a key that has no value (never written, deleted, or expired: over its
        marker); its new revision. ``ttl``: seconds until the server removes this
        message (see "TTL"); ``headers``: extra headers (see "Headers").

        Exists: the key has a value. NotFound: no such bucket. TooLarge: value and
        headers over ``max_payload`` or the bucket's ``max_value_size`` (see
        "Sizes"). Invalid: ``ttl`` not positive, the server or the bucket without
        per-message TTL, a header NATS cannot carry. InvalidName/NameTooLong: see
        "Names".
        """
        ...

    async def update(self, bucket: str, key: str, value: bytes, last: int, *, ttl: float | None = None,
                     headers: Mapping[str, str] | None = None) -> int:
        """Compare and swap: write if ``last`` is the key's current revision; the new revision.

        ``last`` 0: only if the key has no message at all (like create, but a
        delete marker counts: its revision is the key's current one). Conflict:
        ``last`` is not current (``current`` is None: not known). NotFound: no
        such bucket. ``ttl``, ``headers``, TooLarge, Invalid,
        InvalidName/NameTooLong: as for create (a ``ttl`` the bucket refuses is
        Invalid before a stale ``last`` is Conflict).
        """
        ...

    async def delete(self, bucket: str, key: str, last: int | None = None, *,
                     headers: Mapping[str, str] | None = None) -> None:
        """Write a delete marker (op DEL), also for a key that never was; with
        ``last``, only if it is the key's current revision. ``headers``: extra
        headers on the marker (see "Headers").

        Conflict: ``last`` is not current. NotFound: no such bucket. Invalid: a
        header NATS cannot carry. InvalidName/NameTooLong: see "Names".
        """
        ...

    async def kv_next(self, bucket: str, key: str, revision: int) -> StreamMsg | None:
        """The key's first message after ``revision`` (a value or a marker), with the
        headers it was stored with; None: none (yet). How a write that timed out is
        resolved: a compare-and-swap on ``revision`` landed exactly when this is the
        message it sent (its ``Nats-Msg-Id``), and can no longer land once another
        message on the key with ``Nats-Expected-Last-Subject-Sequence: <revision>`` is
        here (history may have dropped older messages: see hvfs.vfs.resolve).

        NotFound: no such bucket. InvalidName/NameTooLong: see "Names".
        """
        ...

    async def kv_since(self, bucket: str, revision: int = 0) -> KvDelta:
        """What changed in ``bucket`` after ``revision``: every key whose latest message
        has a greater sequence, with that message (``puts``: a value, with its headers;
        ``deleted``: the revision of a delete or purge marker, the server's TTL-expiry
        marker included); keys unchanged since ``revision`` are in neither.

        ``revision`` 0: the whole current state (only each key's latest message is
        read; a deleted key whose marker is still there is in ``deleted``). Otherwise
        the bucket's stream is read from ``revision + 1`` and folded to each key's
        latest. ``last`` is the revision the delta brings the reader to (the stream's
        last sequence when the read ended; messages written meanwhile may be in the
        delta too): pass it as the next call's ``revision``.

        What a delta cannot show: a key deleted by a marker that is itself gone
        (markers expire ``marker_ttl`` after they are written; history is trimmed),
        a value that expired without a marker (a bucket without ``marker_ttl``), and
        a key that went back to an older revision when its newer one expired. When
        ``revision + 1`` is before the stream's first sequence, or ``revision`` is
        past its last (the bucket was made again), ``complete`` is False: read with
        revision 0 and compare keys to find deletions.

        Bounded: each wait for more of the read is bounded by ``timeout``; the whole
        read by ``timeout`` per batch of messages. NotFound: no such bucket.
        Invalid: ``revision`` negative. InvalidName: a name no bucket can have.
        """
        ...

    async def watch(self, bucket: str, sink: WatchSink) -> Watch:
        """RESYNC, the snapshot (delete markers included, see WatchSink), SYNCED,
        then every change, until stopped.

        NotFound: no such bucket; the sink gets nothing, not even RESYNC.
        InvalidName: a name no bucket can have.
        """
        ...

    # -- streams

    async def streams(self) -> list[StreamInfo]:
        """Every stream that is not a KV (``KV_``) or object store (``OBJ_``) bucket's."""
        ...

    async def stream(self, name: str) -> StreamInfo:
        """NotFound: no such stream."""
        ...

    async def create_stream(self, name: str, subjects: Sequence[str], *, max_age: float = 0.0,
                            max_msg_size: int = -1, replicas: int = 1, storage: str = "file") -> StreamInfo:
        """Make a stream on ``subjects`` (direct gets on, per-message TTL allowed when
        the server has it); if it exists and its subjects cover every one asked
        and its settings are these, that one.

        ``max_age``: seconds a message is kept (0: forever; at least 0.1).
        ``max_msg_size``: -1 none (headers count). ``storage``: "file" or "memory".

        InvalidName: not a stream name, or a bucket's (``KV_``, ``OBJ_``).
        Invalid: no subjects, a subject another stream takes, a setting out of
        range, more replicas than the server has, or the stream exists with other
        subjects or settings (the reason names them).
        """
        ...

    async def get_msg(self, stream: str, seq: int, direct: bool = False) -> StreamMsg:
        """The message at ``seq``; ``direct``: a direct get (the stream must allow them).

        NotFound: no such stream, or no message at ``seq`` (deleted, purged, not
        yet written). Invalid: ``seq`` 0. Unavailable: ``direct`` on a stream
        without direct gets, or a missing one (no responder).
        """
        ...

    async def publish(self, subject: str, data: bytes, stream: str, msg_id: str, *,
                      headers: Mapping[str, str] | None = None) -> int:
        """Append one message to ``stream``; its sequence. A ``msg_id`` seen within
        the stream's duplicate window (2 min by default) returns the first's
        sequence and appends nothing. ``headers``: extra headers (see "Headers"),
        which ``get_msg`` returns with the message.

        Unavailable: no stream takes ``subject`` (no responder). Invalid:
        another stream than ``stream`` takes it. TooLarge: data and headers over
        ``max_payload`` or the stream's max message size. InvalidName:
        ``subject`` is no literal subject (the rules for keys in "Names");
        NameTooLong: over 3840 bytes. Invalid also: a header NATS cannot carry.
        """
        ...

    async def delete_msg(self, stream: str, seq: int) -> None:
        """Delete one message.

        NotPermitted: the stream denies deletes (every KV bucket's does), whatever
        ``seq`` is. NotFound: no such stream, or no message at ``seq`` (a gap,
        before the first, past the last, 0).
        """
        ...

    async def stream_since(self, stream: str, seq: int = 0, subject: str | None = None) -> StreamDelta:
        """The messages of ``stream`` after ``seq`` (and on ``subject``, a filter that may
        hold wildcards), in order, with data and stored headers; ``first`` and ``last``:
        the stream's first sequence when the read began, its last when it ended (messages
        appended meanwhile may be in ``msgs`` too; pass ``last`` as the next ``seq``).
        ``seq + 1 < first``: messages after ``seq`` are gone (deleted or expired).

        Bounded as ``kv_since``. NotFound: no such stream. Invalid: ``seq`` negative, or
        ``subject`` no subject filter (an empty token, a ``>`` not last, a wildcard inside
        a token) or one the stream takes none of. InvalidName: not a stream name.
        """
        ...

    async def stream_watch(self, stream: str, sink: WatchSink) -> Watch:
        """RESYNC, every message of the stream (MsgSeen), SYNCED, then every append.

        NotFound: no such stream; the sink gets nothing, not even RESYNC.
        """
        ...

    # -- work queues (durable pull consumers)

    async def queue(self, stream: str, durable: str, sink: WatchSink, *, create: bool = True,
                    filter_subject: str | None = None, ack_wait: float = 30.0,
                    max_held: int = 4) -> Queue:
        """Hold up to ``max_held`` deliveries of the durable consumer at a time:
        QueueMsg for each, QueueGone when the mount lets go of one unacked (shortly
        before the ack wait ends; the server redelivers it then).

        NotFound: no such stream, or ``create`` is False and no such consumer. An
        existing consumer keeps its own configuration (``ack_wait``, filter).
        """
        ...

    async def ack(self, q: Queue, seq: int) -> None:
        """Acknowledge a held delivery: done, not redelivered.

        NotFound: ``seq`` is not held by ``q`` (never delivered, acked, or let go).
        """
        ...


# -- object store buckets (issue 15) ---------------------------------------------
#
# An object store bucket ``<name>`` is the stream ``OBJ_<name>`` on ``$O.<name>.C.>``
# (chunks) and ``$O.<name>.M.>`` (meta), as the NATS clients make it (nats-py, Go,
# the nats CLI): an object is one meta message on ``$O.<name>.M.<base64url(name)>``
# (JSON ObjectInfo, written with ``Nats-Rollup: sub``, so only the latest is kept)
# and its chunks on ``$O.<name>.C.<nuid>``, each ``chunk_size`` bytes but the last.
# An object's **revision** is its meta message's stream sequence: a put replaces an
# object only if that is still its current meta (``Nats-Expected-Last-Subject-
# Sequence`` on the meta subject: the server decides, atomically). Chunks go first,
# under a fresh nuid, and are invisible until the meta names them: a put that fails
# (a lost compare, NATS gone) leaves no partial object; its chunks are purged when
# NATS answers, else left unreferenced. Reads fetch chunks by range (direct gets by
# sequence; the chunk-sequence index of an object is read once, headers only, and
# cached per nuid). There is no history: ``FILE@REV`` does not exist for objects.
#
# Digests: ``digest`` is ``SHA-256=<base64url>`` of the whole object (what every client
# checks); objects hvfs writes also carry ``Hvfs-Chunk-Digest`` (the same form) on every
# chunk, so each chunk is checked as it is read. ``Corrupt`` (EIO) when a chunk does not
# match its digest, when a whole read does not match the object's, or a chunk is missing.

#: the chunk size the NATS clients use by default
OBJ_CHUNK_SIZE = 128 * 1024
#: a chunk's own digest, on chunks hvfs writes (other clients ignore it)
CHUNK_DIGEST_HEADER = "Hvfs-Chunk-Digest"


def sha256_digest(raw: bytes) -> str:
    """The NATS object-store form of a SHA-256: ``SHA-256=<base64url, padded>``."""
    import base64

    return "SHA-256=" + base64.urlsafe_b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class ObjBucketInfo:
    name: str
    max_bytes: int  # -1: no limit (the bucket's stream max bytes: every object and its meta)
    max_age: float = 0.0
    replicas: int = 1
    storage: str = "file"
    sealed: bool = False


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object's current meta (a put, or a delete marker: ``deleted``)."""

    bucket: str
    name: str
    nuid: str
    size: int
    chunks: int
    digest: str  # "SHA-256=...", "" for an empty or deleted object
    revision: int  # the meta message's stream sequence: what a put compares
    time: float  # the meta's mtime (seconds since the epoch)
    chunk_size: int = OBJ_CHUNK_SIZE
    deleted: bool = False
    description: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # the object's own (ObjectMeta.headers)
    metadata: dict[str, str] = field(default_factory=dict)  # ObjectMeta.metadata (Go, nats CLI)
    link: str = ""  # "bucket/name" of a link object (other clients make them; read through)


@dataclass(frozen=True, slots=True)
class ObjChange:
    """What an object watch reports: an object's meta changed (put or deleted)."""

    bucket: str
    name: str
    deleted: bool
    revision: int
    size: int
    time: float
    digest: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # the object's ObjectMeta.metadata


class ObjectStore(Protocol):
    """The object-store calls of a store (``Store`` implementations have them too)."""

    async def obj_buckets(self) -> list[ObjBucketInfo]:
        """Every object store bucket (stream ``OBJ_<name>``) on the server."""
        ...

    async def obj_bucket(self, name: str) -> ObjBucketInfo:
        """NotFound: no such bucket. InvalidName: a name no bucket can have."""
        ...

    async def create_obj_bucket(self, name: str, *, max_bytes: int = -1, max_age: float = 0.0,
                                replicas: int = 1, storage: str = "file") -> ObjBucketInfo:
        """Make an object store bucket as the NATS clients do; the same again returns it.

        InvalidName: not ``[a-zA-Z0-9_-]+``. Invalid: a setting out of range, or the bucket
        exists with other settings (the reason names them).
        """
        ...

    async def obj_info(self, bucket: str, name: str) -> ObjectInfo:
        """The object's current meta. NotFound: no such bucket, no such object, or it is
        deleted. Corrupt: its meta is not ObjectInfo JSON. InvalidName: an empty name."""
        ...

    async def obj_read(self, info: ObjectInfo, first: int, count: int) -> list[bytes]:
        """Chunks ``first`` to ``first + count - 1`` of the object ``info`` describes (clipped
        at its last), each checked against its own digest when it has one; all of them
        (``first`` 0, every chunk) also against ``info.digest``.

        NotFound: the object was replaced or deleted since ``info`` (its chunks are gone).
        Corrupt: a digest does not match, a chunk is missing or of the wrong size.
        Invalid: ``first`` or ``count`` out of range.
        """
        ...

    async def obj_put(self, bucket: str, name: str, path: str, last: int, *,
                      headers: Mapping[str, str] | None = None,
                      metadata: Mapping[str, str] | None = None,
                      chunk_size: int = OBJ_CHUNK_SIZE) -> ObjectInfo:
        """Store the bytes of the local file ``path`` as object ``name``, read and sent chunk
        by chunk (never whole in memory), if ``last`` is its current revision (0: the object
        does not exist or is deleted); the new info. The old chunks are purged after.

        Conflict: ``last`` is not current (``current``: the revision that is, 0 none).
        NotFound: no such bucket. TooLarge: over the bucket's max bytes (nothing stored).
        Invalid: a header NATS cannot carry; ``chunk_size`` not positive.
        """
        ...

    async def obj_delete(self, bucket: str, name: str, last: int | None = None) -> None:
        """Write the object's delete marker (its meta, ``deleted``) and purge its chunks; with
        ``last``, only if that is its current revision. NotFound: no such bucket or object
        (or deleted already). Conflict: ``last`` is not current."""
        ...

    async def obj_rename(self, bucket: str, name: str, new: str, last: int, new_last: int) -> ObjectInfo:
        """Move object ``name`` (at revision ``last``) to ``new`` (at revision ``new_last``,
        0: none) without copying: the meta is written under the new name with the same
        chunks, then the old name gets a delete marker that keeps them. The new info.
        Conflict: either revision is not current. NotFound: no such bucket or object."""
        ...

    async def obj_list(self, bucket: str) -> list[ObjectInfo]:
        """Every object's current meta, deleted ones excluded, in meta revision order.
        NotFound: no such bucket."""
        ...

    async def obj_watch(self, bucket: str, sink: WatchSink) -> Watch:
        """RESYNC, an ObjChange per object (deleted ones too, as KV's markers), SYNCED, then
        every change, until stopped; after a reconnect RESYNC and a fresh snapshot.
        NotFound: no such bucket; the sink gets nothing."""
        ...


__all__ += ["CHUNK_DIGEST_HEADER", "OBJ_CHUNK_SIZE", "Corrupt", "ObjBucketInfo", "ObjChange", "ObjectInfo",
            "ObjectStore", "sha256_digest"]
