"""The project's exceptions and the one table that maps them to errno.

    HvfsError                 base; .reason is what the user reads
    ├── NotFound              ENOENT   key, revision or bucket absent
    ├── Exists                EEXIST   O_EXCL create lost, name taken
    ├── Conflict              ESTALE   CAS lost: the revision seen is not current
    ├── TooLarge              EFBIG    value over the bucket's max value size
    ├── InvalidName           EINVAL   a name that maps to no key
    │   └── NameTooLong       ENAMETOOLONG the key would be longer than NATS carries
    ├── Invalid               EINVAL   bad input of another kind
    ├── NotEmpty              ENOTEMPTY
    ├── IsADirectory          EISDIR
    ├── NotADirectory         ENOTDIR
    ├── CrossDevice           EXDEV    rename that hvfs leaves to mv's copy
    ├── PermissionDenied      EACCES   NATS permission violation
    ├── ReadOnly              EROFS    --read-only mount
    ├── NotSupported          EOPNOTSUPP
    ├── NotPermitted          EPERM    not an operation this place allows
    ├── Busy                  EBUSY    the file is still being written
    ├── NoAttr                ENODATA  no such extended attribute
    ├── Unavailable           EIO      NATS not connected / no responders
    │   └── Corrupt           EIO      stored bytes do not match their digest
    └── Timeout               ETIMEDOUT a NATS call ran past its bound
"""

from __future__ import annotations

import errno

__all__ = [
    "Busy",
    "Conflict",
    "Corrupt",
    "CrossDevice",
    "Exists",
    "HvfsError",
    "Invalid",
    "InvalidName",
    "IsADirectory",
    "NotADirectory",
    "NameTooLong",
    "NoAttr",
    "NotEmpty",
    "NotFound",
    "NotPermitted",
    "NotSupported",
    "PermissionDenied",
    "ReadOnly",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "errno_of",
]


class HvfsError(Exception):
    """Base of every error hvfs raises on purpose."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(HvfsError):
    pass


class Exists(HvfsError):
    pass


class Conflict(HvfsError):
    """A compare-and-swap lost: ``current`` is the revision that won, if known."""

    def __init__(self, reason: str = "", current: int | None = None) -> None:
        super().__init__(reason)
        self.current = current


class TooLarge(HvfsError):
    pass


class Invalid(HvfsError):
    pass


class InvalidName(Invalid):
    pass


class NameTooLong(InvalidName):
    pass


class NotEmpty(HvfsError):
    pass


class IsADirectory(HvfsError):
    pass


class NotADirectory(HvfsError):
    pass


class CrossDevice(HvfsError):
    pass


class PermissionDenied(HvfsError):
    pass


class ReadOnly(HvfsError):
    pass


class NotSupported(HvfsError):
    pass


class NotPermitted(HvfsError):
    pass


class Busy(HvfsError):
    pass


class NoAttr(HvfsError):
    pass


class Unavailable(HvfsError):
    """``sent`` False: refused before anything was sent (not connected), so a write
    certainly did not land; otherwise a write's outcome is not known (hvfs.vfs.resolve)."""

    def __init__(self, reason: str = "", sent: bool = True) -> None:
        super().__init__(reason)
        self.sent = sent


class Corrupt(Unavailable):
    """What NATS holds does not match its digest (a chunk, or the whole object), or a
    chunk the meta names is missing: EIO, the reason says which. Never wrong bytes."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason, sent=False)


class Timeout(HvfsError):
    pass


_ERRNO: dict[type[HvfsError], int] = {
    NotFound: errno.ENOENT,
    Exists: errno.EEXIST,
    Conflict: errno.ESTALE,
    TooLarge: errno.EFBIG,
    NameTooLong: errno.ENAMETOOLONG,
    InvalidName: errno.EINVAL,
    Invalid: errno.EINVAL,
    NotEmpty: errno.ENOTEMPTY,
    IsADirectory: errno.EISDIR,
    NotADirectory: errno.ENOTDIR,
    CrossDevice: errno.EXDEV,
    PermissionDenied: errno.EACCES,
    ReadOnly: errno.EROFS,
    NotSupported: errno.EOPNOTSUPP,
    NotPermitted: errno.EPERM,
    Busy: errno.EBUSY,
    NoAttr: errno.ENODATA,
    Unavailable: errno.EIO,
    Timeout: errno.ETIMEDOUT,
}


def errno_of(exc: BaseException) -> int:
    """The errno a syscall returns for ``exc``; EIO for anything unplanned."""
    for cls in type(exc).__mro__:
        if cls in _ERRNO:
            return _ERRNO[cls]  # type: ignore[index]
    return errno.EIO
