"""The object store's wire format, shared by both stores: subjects, the meta JSON
(the NATS clients' ObjectInfo), and the checks of names, revisions and digests.

Pure code: NatsStore and MemoryStore read and write exactly these documents, so an
object either writes is one every NATS client (nats-py, Go, the nats CLI) reads.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Mapping

from ..errors import Conflict, InvalidName, NameTooLong, NotFound
from .base import CHUNK_DIGEST_HEADER, OBJ_CHUNK_SIZE, Corrupt, ObjectInfo, sha256_digest
from .rules import check_bucket

__all__ = ["check_chunk", "check_current", "check_digest", "verify_digest", "check_last", "check_obj_name", "obj_chunk_subject", "obj_meta_doc",
           "obj_meta_subject", "parse_obj_meta"]

#: the longest meta subject hvfs sends (the server's control line is 4096 bytes)
_MAX_SUBJECT = 3800


def obj_meta_subject(bucket: str, name: str) -> str:
    """``$O.<bucket>.M.<base64url(name)>``, padded, as nats-py and Go write it."""
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def obj_chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


def check_obj_name(bucket: str, name: str, what: str) -> None:
    """InvalidName for an empty object name or a bucket name no bucket has; NameTooLong for
    a name whose meta subject would not fit the server's protocol line."""
    check_bucket(bucket, what)
    if not name:
        raise InvalidName(f"{what}: an object name is not empty")
    if len(obj_meta_subject(bucket, name)) > _MAX_SUBJECT:
        raise NameTooLong(f"{what}: object name of {len(name.encode())} bytes is too long for a NATS subject")


def parse_obj_meta(bucket: str, data: bytes, seq: int, stamp: float) -> ObjectInfo:
    """A meta message as ObjectInfo; Corrupt if it is not the clients' JSON."""
    try:
        d = json.loads(data)
        opts = d.get("options") or {}
        link = opts.get("link") or {}
        return ObjectInfo(
            bucket=bucket, name=str(d["name"]), nuid=str(d.get("nuid") or ""), size=int(d.get("size") or 0),
            chunks=int(d.get("chunks") or 0), digest=str(d.get("digest") or ""), revision=seq,
            time=_mtime(d.get("mtime"), stamp), chunk_size=int(opts.get("max_chunk_size") or OBJ_CHUNK_SIZE),
            deleted=bool(d.get("deleted")), description=str(d.get("description") or ""),
            headers={str(k): _one(v) for k, v in (d.get("headers") or {}).items()},
            metadata={str(k): str(v) for k, v in (d.get("metadata") or {}).items()},
            link=f"{link.get('bucket', '')}/{link.get('name') or ''}" if link else "")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise Corrupt(f"{bucket}: meta #{seq} is not object info ({type(e).__name__}: {e})") from None


def _one(v: object) -> str:
    """Go writes an object's headers as lists of values; nats-py as strings."""
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def _mtime(text: object, stamp: float) -> float:
    """The meta's RFC 3339 mtime (Go writes nanoseconds: cut to microseconds); else the
    message's own time."""
    if not isinstance(text, str) or not text:
        return stamp
    t = text.replace("Z", "+00:00")
    head, dot, frac = t.partition(".")
    if dot:
        digits = "".join(c for c in frac if c.isdigit())
        t = f"{head}.{digits[:6].ljust(6, '0')}{frac[len(digits):]}"
    try:
        return dt.datetime.fromisoformat(t).timestamp()
    except ValueError:
        return stamp


def obj_meta_doc(bucket: str, name: str, nuid: str, size: int, chunks: int, digest: str, chunk_size: int,
                 headers: Mapping[str, str] | None, metadata: Mapping[str, str] | None,
                 deleted: bool = False) -> bytes:
    """The meta message the NATS clients write (Go's field names; empty ones left out)."""
    doc: dict[str, object] = {"name": name}
    if metadata:
        doc["metadata"] = dict(metadata)
    if headers:
        doc["headers"] = {k: [v] for k, v in headers.items()}  # Go's http.Header form; nats-py reads it
    doc["options"] = {"max_chunk_size": chunk_size}
    doc.update({"bucket": bucket, "nuid": nuid, "size": size,
                "mtime": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z") if not deleted
                else "0001-01-01T00:00:00Z",
                "chunks": chunks})
    if digest:
        doc["digest"] = digest
    if deleted:
        doc["deleted"] = True
    return json.dumps(doc, separators=(",", ":")).encode()


def check_current(cur: ObjectInfo | None, last: int | None, what: str) -> ObjectInfo:
    """The object a delete or rename acts on: NotFound if there is none (or only its delete
    marker), Conflict if ``last`` (0 or None: any) is not its current revision."""
    if cur is None or cur.deleted:
        raise NotFound(f"{what}: no such object")
    if last and last != cur.revision:
        raise Conflict(f"{what}: revision {last} is not current", current=cur.revision)
    return cur


def check_last(cur: ObjectInfo | None, last: int, what: str) -> int:
    """The sequence a write of the meta expects: ``last`` must be the object's current
    revision (0: no object, or a deleted one, whose marker is then what is expected)."""
    live = cur is not None and not cur.deleted
    have = cur.revision if live and cur is not None else 0
    if last != have:
        raise Conflict(f"{what}: revision {last} is not current", current=have)
    return cur.revision if cur is not None else 0


def check_chunk(info: ObjectInfo, i: int, data: bytes, headers: Mapping[str, str], what: str) -> bytes:
    """Chunk ``i`` as read: the size the meta implies, and its own digest if it has one."""
    want = info.chunk_size if i < info.chunks - 1 else info.size - info.chunk_size * (info.chunks - 1)
    if len(data) != want:
        raise Corrupt(f"{what}: chunk {i} has {len(data)} bytes, its meta says {want}")
    mine = headers.get(CHUNK_DIGEST_HEADER)
    if mine is not None and sha256_digest(hashlib.sha256(data).digest()) != mine:
        raise Corrupt(f"{what}: chunk {i} does not match its digest (SHA-256)")
    return data


def check_digest(info: ObjectInfo, chunks: list[bytes], what: str) -> None:
    """Every chunk of the object, against its meta's digest."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    verify_digest(info, h.digest(), what)


def verify_digest(info: ObjectInfo, raw: bytes, what: str) -> None:
    if info.digest and sha256_digest(raw) != info.digest.replace("sha-256=", "SHA-256=", 1):
        raise Corrupt(f"{what}: the object does not match its digest ({info.digest})")

