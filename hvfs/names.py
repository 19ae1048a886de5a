"""File names <-> NATS KV key tokens: the one escaping rule (docs/naming.md).

NATS keys allow only ``[-/_=.a-zA-Z0-9]`` and use ``.`` as the hierarchy
separator, so every byte of a file name outside ``[-_a-zA-Z0-9]`` is written
as ``=XX`` (two upper-case hex digits): ``owner.yml`` is the token
``owner=2Eyml``. The rule is a bijection between file names and *canonical*
tokens. Tokens written by other clients that the rule never produces (a ``/``,
a lower-case or needless escape, a bare ``=``) are *foreign*: they are shown
under a display name and reached through the index, never re-encoded.
"""

from __future__ import annotations

import re

from .errors import InvalidName

__all__ = [
    "VALUE_NAME",
    "decode_token",
    "encode_name",
    "is_plain",
    "is_valid_key",
]

#: Inside a directory that is also a key (``a`` beside ``a.b``), the key's own
#: value is shown under this name.
VALUE_NAME = b".value"

_SAFE = frozenset(b"-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX = b"0123456789ABCDEF"
_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
_ESCAPE_RE = re.compile(r"=([0-9A-F]{2})")
#: a token of safe characters only is its own name (most keys: the fast path)
_PLAIN_RE = re.compile(r"[-_0-9a-zA-Z]+")
MAX_NAME = 255


def encode_name(name: bytes) -> str:
    """Return the canonical key token for a file name."""
    if not name or name in (b".", b".."):
        raise InvalidName(f"'{name.decode(errors='replace')}' is not a file name")
    if b"/" in name or b"\0" in name:
        raise InvalidName(f"{name.decode(errors='replace')} contains '/' or NUL")
    out = bytearray()
    for b in name:
        if b in _SAFE:
            out.append(b)
        else:
            out += b"=" + bytes((_HEX[b >> 4], _HEX[b & 15]))
    return out.decode("ascii")


def _canonical_decode(token: str) -> bytes | None:
    out = bytearray()
    i, n = 0, len(token)
    while i < n:
        c = token[i]
        if c == "=":
            m = _ESCAPE_RE.match(token, i)
            if m is None:
                return None
            b = int(m.group(1), 16)
            if b in _SAFE:  # a needless escape is never produced by encode_name
                return None
            out.append(b)
            i += 3
        elif ord(c) < 128 and ord(c) in _SAFE:
            out.append(ord(c))
            i += 1
        else:
            return None
    return bytes(out)


def is_plain(token: str) -> bool:
    """A token of safe characters only: its name is its own text (no escapes)."""
    return len(token) <= MAX_NAME and _PLAIN_RE.fullmatch(token) is not None


def decode_token(token: str) -> tuple[bytes, bool]:
    """Return ``(display name, canonical)`` for one key token.

    A canonical token decodes to the name that encodes to it. A foreign token
    is shown as its own text with ``/`` written ``=2F``; such a name is found
    through the index, and creating that name anew makes a canonical key.
    """
    if len(token) <= MAX_NAME and _PLAIN_RE.fullmatch(token):
        return token.encode("ascii"), True
    raw = _canonical_decode(token)
    if (
        raw is not None
        and raw not in (b".", b"..", VALUE_NAME)
        and b"/" not in raw
        and b"\0" not in raw
        and len(raw) <= MAX_NAME
    ):
        return raw, True
    # Other clients may use any UTF-8 in keys and subjects: shown as its bytes.
    return token.replace("/", "=2F").encode("utf-8", "surrogateescape"), False


def is_valid_key(key: str) -> bool:
    """NATS KV key rule: allowed characters, no empty token."""
    return bool(_KEY_RE.match(key)) and not key.startswith(".") and not key.endswith(".") and ".." not in key
