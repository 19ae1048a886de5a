"""What NATS takes, as both stores check it before any request: names of
buckets, keys and subjects, subject matching, and the header bytes a message
carries. No nats-py here: the in-memory store and the vfs use it too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import Invalid, InvalidName, NameTooLong
from .base import Op

__all__ = [
    "DIRECT_GET_HEADERS", "EXPECTED_LAST", "EXPECTED_STREAM", "KV_OP", "MARKER_REASON", "MAX_SUBJECT", "MSG_TTL",
    "cas_header_bytes", "check_bucket", "check_filter", "check_headers", "check_key", "check_limits", "check_new_bucket",
    "NewStream", "check_stream", "check_subject", "differences", "get_subject", "go_duration", "hdr_size", "kv_delta_complete", "new_stream",
    "literal_error", "op_of", "pattern_covers", "shown_servers", "subject_matches", "subjects_overlap", "ttl_seconds",
    "write_header_bytes", "write_headers",
]

#: the header of a KV delete or purge marker
KV_OP = "KV-Operation"
#: a message's own time to live (whole seconds here); the server needs the stream's allow_msg_ttl
MSG_TTL = "Nats-TTL"
MSG_ID = "Nats-Msg-Id"
#: on a marker the server writes itself: "MaxAge" when a subject's last message expired
MARKER_REASON = "Nats-Marker-Reason"
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_STREAM = "Nats-Expected-Stream"
#: what a direct get's reply adds to a message's headers: where it came from, not part of it
DIRECT_GET_HEADERS = frozenset({"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp",
                                "Nats-Num-Pending", "Nats-Last-Sequence", "Nats-UpTo-Sequence"})

# Names. The server takes any literal subject; these are what hvfs lets through
# (both stores apply them): a new bucket is named as every KV client
# allows, an existing one as a stream name and subject token can be; a key is a
# literal subject tail. A PUB line over the server's 4096-byte max control line
# makes the server drop the connection, so the longest subject a key call sends
# (a direct get's, which holds the key's subject) stays well under it.
BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_BUCKET = 255 - len("KV_")  # the server's longest stream name
NOT_IN_BUCKET = re.compile(r"[\s\x00-\x1f\x7f.*>/\\]")
NOT_IN_KEY = re.compile(r"[\s\x00-\x1f\x7f*>]")
MAX_SUBJECT = 3840


def check_bucket(name: str, what: str) -> None:
    """InvalidName for a name no bucket can have; no request is made for it."""
    if not name or len(name) > MAX_BUCKET or NOT_IN_BUCKET.search(name):
        raise InvalidName(f"{what}: {name!r} is not a bucket name (no '.', '*', '>', '/', '\\', "
                          "white space or control character; 1 to 252 characters)")


def check_stream(name: str, what: str, *, new: bool = True) -> None:
    """InvalidName for a name no new stream can have (a bucket's ``KV_``/``OBJ_`` prefix
    included); ``new`` False: no stream at all can have (a bucket's stream is one)."""
    if not name or len(name) > 255 or NOT_IN_BUCKET.search(name):
        raise InvalidName(f"{what}: {name!r} is not a stream name (no '.', '*', '>', '/', '\\', "
                          "white space or control character; 1 to 255 characters)")
    if new and name.startswith(("KV_", "OBJ_")):
        raise InvalidName(f"{what}: {name!r}: the prefixes KV_ and OBJ_ are the buckets' streams")


def check_new_bucket(name: str, what: str) -> None:
    if len(name) > MAX_BUCKET:
        raise NameTooLong(f"{what}: a bucket name has at most {MAX_BUCKET} characters, not {len(name)}")
    if not BUCKET_RE.match(name):
        raise InvalidName(f"{what}: {name!r} is not a bucket name: only letters, digits, '-' and '_' "
                          "(no '.', spaces or wildcards), at least one")


def get_subject(bucket: str, key: str) -> str:
    """The request subject of a direct get of a key's last value (nats-py puts the key's subject in it)."""
    return f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}"


def literal_error(name: str, kind: str) -> str:
    """Why ``name`` is no literal subject (tail), or "" if it is one."""
    if not name:
        return f"a {kind} cannot be empty"
    if name.startswith(".") or name.endswith(".") or ".." in name:
        return f"a {kind} cannot start or end with '.' or hold '..' (an empty token)"
    m = NOT_IN_KEY.search(name)
    if m is not None:
        return f"a {kind} cannot hold {m.group()!r} (no wildcard '*' or '>', white space or control character)"
    return ""


def check_key(bucket: str, key: str, what: str) -> None:
    """InvalidName for a key that is no literal subject tail (a wildcard would match
    other keys, an empty token or white space no subject at all); no request is made."""
    check_bucket(bucket, what)
    why = literal_error(key, "key")
    if why:
        raise InvalidName(f"{what}: {key!r}: {why}")
    if len(get_subject(bucket, key).encode()) > MAX_SUBJECT:
        raise NameTooLong(f"{what}: a key of {len(key.encode())} bytes is longer than a NATS subject here carries")


def check_subject(subject: str, what: str) -> None:
    """The same for a subject a stream message is published to."""
    why = literal_error(subject, "subject")
    if why:
        raise InvalidName(f"{what[:80]}: {why}")
    if len(subject.encode()) > MAX_SUBJECT:
        raise NameTooLong(f"{what[:80]}...: a subject of {len(subject.encode())} bytes is longer than NATS carries here")


_NOT_IN_FILTER = re.compile(r"[\s\x00-\x1f\x7f]")


def check_filter(subject: str, what: str) -> None:
    """Invalid for a subject filter NATS refuses: an empty token, a ``*`` or ``>`` inside
    a token, a ``>`` that is not the last token, white space or control characters."""
    toks = subject.split(".")
    bad = (not subject or "" in toks or _NOT_IN_FILTER.search(subject) is not None
           or any(len(t) > 1 and ("*" in t or ">" in t) for t in toks) or ">" in toks[:-1])
    if bad:
        raise Invalid(f"{what[:80]}: {subject[:80]!r} is not a subject filter (tokens not empty, "
                      "'*' and '>' whole tokens, '>' last, no white space)")
    if len(subject.encode()) > MAX_SUBJECT:
        raise Invalid(f"{what[:80]}: a subject filter of {len(subject.encode())} bytes is longer than NATS carries here")


def subjects_overlap(p: str, q: str) -> bool:
    """Some subject matches both patterns (the server refuses a stream that overlaps
    another, and a consumer filter that overlaps none of its stream's subjects)."""
    a, b = p.split("."), q.split(".")
    for i in range(max(len(a), len(b))):
        x, y = (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None or (x != y and "*" not in (x, y)):
            return False
    return True


def shown_servers(servers: list[str]) -> str:
    """Server URLs for status and messages, with any user:password@ in them masked."""
    return ",".join(re.sub(r"//[^/@]*@", "//***@", s) for s in servers)


def hdr_size(headers: dict[str, str]) -> int:
    """Wire bytes of "NATS/1.0\\r\\n", "k: v\\r\\n"..., "\\r\\n": the server counts them in a message's size."""
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items()) if headers else 0


_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP token, as nats-py checks it
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # no CR, LF or other control (tab is fine)


def check_headers(headers: Mapping[str, str] | None, what: str) -> dict[str, str]:
    """Extra headers as sent: values without surrounding white space (nats-py trims them
    on the wire). Invalid for one the NATS protocol cannot carry (a CR or LF would end
    the header block early); no request is made for them."""
    out: dict[str, str] = {}
    for k, v in (headers or {}).items():
        if not isinstance(k, str) or not _HEADER_NAME.match(k):
            raise Invalid(f"{what}: {k!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
        if not isinstance(v, str) or _BAD_VALUE.search(v):
            raise Invalid(f"{what}: header {k}: {v!r} is not a header value (no CR, LF or control character)")
        out[k] = v.strip()
    return out


def ttl_seconds(ttl: float, what: str) -> int:
    """A per-message TTL as the server takes it: whole seconds, rounded up, at least 1."""
    if not math.isfinite(ttl) or ttl <= 0:
        raise Invalid(f"{what}: a TTL is a positive number of seconds, not {ttl!r}")
    return max(1, math.ceil(ttl))


def check_limits(what: str, *, max_age: float, max_size: int, replicas: int, storage: str,
                 marker_ttl: float = 0.0, history: int | None = None) -> int:
    """Invalid for a bucket or stream setting the server refuses (no request is made
    for it); the marker TTL in whole seconds, rounded up (the server's minimum is 1 s,
    and a fraction of one behaves oddly)."""
    if history is not None and not 1 <= history <= 64:
        raise Invalid(f"{what}: history is 1 to 64, not {history}")
    if not math.isfinite(max_age) or max_age < 0 or 0 < max_age < 0.1:
        raise Invalid(f"{what}: max age is 0 (none) or at least 0.1 s, not {max_age!r}")
    if max_size == 0 or max_size < -1:
        raise Invalid(f"{what}: the largest message is -1 (no limit) or positive, not {max_size}")
    if not 1 <= replicas <= 5:
        raise Invalid(f"{what}: replicas are 1 to 5, not {replicas}")
    if storage not in ("file", "memory"):
        raise Invalid(f"{what}: storage is 'file' or 'memory', not {storage!r}")
    if not math.isfinite(marker_ttl) or marker_ttl < 0:
        raise Invalid(f"{what}: the marker TTL is 0 (no markers) or positive, not {marker_ttl!r}")
    return math.ceil(marker_ttl)


def go_duration(seconds: float) -> str:
    """How the server writes a duration in a header it makes ("5s", "1m30s", "1h0m0s")."""
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


def cas_header_bytes(bucket: str) -> int:
    """The most header bytes a create or update sends by itself (revision of up to 20 digits)."""
    return hdr_size({EXPECTED_LAST: "0" * 20, EXPECTED_STREAM: f"KV_{bucket}"})


def write_header_bytes(bucket: str, ttl: float | None, headers: Mapping[str, str] | None) -> int:
    """The most header bytes a ``create`` or ``update`` of ``bucket`` with this ``ttl`` and
    these extra ``headers`` sends: the largest value it stores is the bucket's (or the
    connection's) limit minus this. See "Sizes" in hvfs.store.base."""
    own = {EXPECTED_LAST, EXPECTED_STREAM} | ({MSG_TTL} if ttl is not None else set())
    extra = {k: v.strip() for k, v in (headers or {}).items() if k not in own}
    if ttl is not None:
        extra[MSG_TTL] = str(max(1, math.ceil(ttl)) if math.isfinite(ttl) else 1)
    return cas_header_bytes(bucket) + hdr_size(extra) - (12 if extra else 0)


def op_of(headers: Mapping[str, str] | None) -> Op:
    """What a KV message is: a value (PUT), a delete marker (DEL), or a purge or the
    server's own marker (a subject's last message expired: PURGE)."""
    if not headers:
        return Op.PUT
    op = headers.get(KV_OP)
    if op == "DEL":
        return Op.DEL
    if op == "PURGE":
        return Op.PURGE
    reason = headers.get(MARKER_REASON)
    if reason in ("MaxAge", "Purge"):
        return Op.PURGE
    if reason == "Remove":
        return Op.DEL
    return Op.PUT


def kv_delta_complete(revision: int, first: int, last: int) -> bool:
    """A delta since ``revision`` of a stream now from ``first`` to ``last`` shows every
    deletion after it: revision 0 (the whole state), or nothing after it is gone (its
    next sequence is not before the first) and it is not past the last (a stream of that
    name made again starts over)."""
    return revision == 0 or (first <= revision + 1 and revision <= last)


@dataclass(frozen=True, slots=True)
class NewStream:
    """A ``create_stream`` request, checked before any request is made (both stores)."""

    what: str
    name: str
    subjects: list[str]
    want: dict[str, object]  # the settings StreamInfo must have

    def existing(self, si: Any) -> Any:
        """``si`` (a StreamInfo) if the stream there is the one asked for, else Invalid naming why."""
        if [s for s in self.subjects if not any(pattern_covers(p, s) for p in si.subjects)]:
            raise Invalid(f"{self.what}: stream {self.name} exists with other subjects: "
                          f"{', '.join(si.subjects)} (asked {', '.join(self.subjects)})")
        why = differences({k: getattr(si, k) for k in self.want}, self.want)
        if why:
            raise Invalid(f"{self.what}: stream {self.name} exists with other settings: {why}")
        return si


def new_stream(name: str, subjects: Sequence[str], *, max_age: float, max_msg_size: int, replicas: int,
               storage: str) -> NewStream:
    what = f"create stream {name}"
    check_stream(name, what)
    if not subjects:
        raise Invalid(f"{what}: a stream needs at least one subject")
    check_limits(what, max_age=max_age, max_size=max_msg_size, replicas=replicas, storage=storage)
    return NewStream(what, name, list(subjects), {"max_age": float(max_age), "max_msg_size": max_msg_size,
                                                  "replicas": replicas, "storage": storage})


def differences(have: Mapping[str, object], want: Mapping[str, object]) -> str:
    """ "history 10 (asked 7), ..." for every setting that differs; "" if none."""
    return ", ".join(f"{k} {have[k]!r} (asked {v!r})" for k, v in want.items() if have.get(k) != v)


def pattern_covers(pattern: str, other: str) -> bool:
    """Every subject ``other`` (a subject or a pattern) matches, ``pattern`` matches too."""
    p, o = pattern.split("."), other.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(o) > i
        if i >= len(o) or o[i] == ">" or (tok != "*" and (o[i] == "*" or tok != o[i])):
            return False
    return len(p) == len(o)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def write_headers(what: str, ttl: float | None, headers: Mapping[str, str] | None, msg_ttl: bool) -> dict[str, str]:
    """The extra headers and the TTL of a KV write, checked before any request
    (``msg_ttl``: the server has per-message TTL)."""
    hdrs = check_headers(headers, what)
    if ttl is not None:
        secs = ttl_seconds(ttl, what)
        if not msg_ttl:
            raise Invalid(f"{what}: this server has no per-message TTL (nats-server 2.11 or newer has it)")
        hdrs[MSG_TTL] = str(secs)
    return hdrs
