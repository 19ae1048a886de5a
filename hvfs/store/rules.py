"""What NATS takes, as both stores check it before any request: names of
buckets, keys and subjects, subject matching, and the header bytes a message
carries. No nats-py here: the in-memory store and the vfs use it too.
"""

from __future__ import annotations

import re

from ..errors import InvalidName, NameTooLong

__all__ = [
    "KV_OP", "MAX_SUBJECT", "check_bucket", "check_key", "check_new_bucket", "check_subject", "get_subject",
    "hdr_size", "literal_error", "subject_matches",
]

#: the header of a KV delete or purge marker
KV_OP = "KV-Operation"

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


def hdr_size(headers: dict[str, str]) -> int:
    """Wire bytes of "NATS/1.0\\r\\n", "k: v\\r\\n"..., "\\r\\n": the server counts them in a message's size."""
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items()) if headers else 0


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)
