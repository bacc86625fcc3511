"""The one error taxonomy of deossfs.

Every error raised across module boundaries is a `DeossError`. Each is either
*temporary* (a retry with backoff may succeed: a node timed out, the chain is
unreachable) or *permanent* (surfaced to the user: a bad name, no space, a
missing key file). The CLI maps them to one-line messages (`cli_message`), the
mount maps them to errnos (`to_errno`), the gateway to HTTP statuses
(`to_http_status`); the mappings live here and nowhere else.
"""

from __future__ import annotations

import errno
import sqlite3


class DeossError(Exception):
    """Base of all deossfs errors."""

    temporary: bool = False
    errno: int = errno.EIO
    #: the HTTP status the gateway answers with (4xx: the client's doing, 5xx: ours)
    http_status: int = 500
    #: what the user can do about it, appended to the CLI message
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class TemporaryError(DeossError):
    """Worth retrying with backoff."""

    temporary = True
    http_status = 503


class PermanentError(DeossError):
    """Retrying will not help; surface it."""


# ---- permanent -------------------------------------------------------------


class InvalidInput(PermanentError):
    errno = errno.EINVAL
    http_status = 400


class RangeNotSatisfiable(InvalidInput):
    """A byte range that starts past the end of the file."""

    http_status = 416


class RequestTimeout(InvalidInput):
    """A client that stopped sending its request midway."""

    errno = errno.ETIMEDOUT
    http_status = 408


class InvalidName(InvalidInput):
    errno = errno.EINVAL


class NameTooLong(InvalidName):
    errno = errno.ENAMETOOLONG


class KeyTooLongError(NameTooLong):
    """An S3 key longer than S3 allows (1,024 bytes: S3's KeyTooLongError)."""


class KeyConflict(InvalidName):
    """A key that would make one name both a file and a directory (`a/b` and `a/b/c`):
    keys live as a tree of files and directories (the mount's), not as flat names."""

    errno = errno.EEXIST
    http_status = 409


class NotFound(PermanentError):
    errno = errno.ENOENT
    http_status = 404


class NoSuchBucket(NotFound):
    """The account has no bucket of that name."""


class NoSuchKey(NotFound):
    """The bucket has no object of that key."""


class AlreadyExists(PermanentError):
    errno = errno.EEXIST
    http_status = 409


class NotEmpty(PermanentError):
    errno = errno.ENOTEMPTY
    http_status = 409


class NoSpace(PermanentError):
    errno = errno.ENOSPC
    http_status = 507


class TooLarge(NoSpace):
    """A request body bigger than the space it could take (refused before it is read)."""

    errno = errno.EFBIG
    http_status = 413


class FileTooLarge(PermanentError):
    """Larger than one CESS storage order can hold (processing.layout.MAX_SEGMENTS)."""

    errno = errno.EFBIG


class AccessDenied(PermanentError):
    errno = errno.EACCES
    http_status = 403


class Unauthenticated(AccessDenied):
    """A request without valid credentials: no signature, a bad one, or a stale message."""

    http_status = 401


class Unsupported(PermanentError):
    errno = errno.ENOTSUP
    http_status = 501


class ConfigError(PermanentError):
    errno = errno.EINVAL


class PluginError(PermanentError):
    """A plug-in (a processing stage or a scheduling policy) raised, or broke its contract
    (wrong sizes, too few or duplicate nodes): the message names it; nothing was stored."""

    errno = errno.EIO
    http_status = 500


class MissingPlugin(Unsupported):
    """A file needs a plug-in this instance does not have (the message names it)."""


class KeyFileError(PermanentError):
    errno = errno.EACCES


class IntegrityError(PermanentError):
    """Bytes did not match their hash or failed authentication."""

    errno = errno.EIO
    http_status = 502


class NotEnoughNodes(PermanentError):
    errno = errno.EIO
    http_status = 503


class DataUnavailable(PermanentError):
    """Fewer than 4 valid fragments of a segment could be had."""

    errno = errno.EIO
    http_status = 503


class ChainError(PermanentError):
    """A call the chain refused; `name` is the CESS error name (e.g. `PurchasedSpace`)."""

    http_status = 400

    def __init__(self, name: str, message: str | None = None, *, hint: str | None = None) -> None:
        self.name = name
        super().__init__(message or name, hint=hint)


# ---- temporary -------------------------------------------------------------


class NodeUnavailable(TemporaryError):
    """A storage node or peer did not answer, timed out or answered 5xx."""


class ChainUnavailable(TemporaryError):
    """No chain endpoint answered."""


class Busy(TemporaryError):
    """A local resource (a database another process holds) is busy for now."""

    errno = errno.EBUSY


class NotYetStored(TemporaryError):
    """The file is declared but its fragments are not all stored yet: ask again later."""

    errno = errno.EAGAIN
    http_status = 409


class RateLimited(TemporaryError):
    """An account has as many requests under way as it may (gateway limits)."""

    errno = errno.EAGAIN
    http_status = 429


# ---- CESS error names → exception classes ----------------------------------

#: chain errors whose meaning maps onto a more specific class (and errno)
_CHAIN_ERROR_KINDS: dict[str, type[DeossError]] = {
    "InsufficientAvailableSpace": NoSpace,
    "InsufficientStorage": NoSpace,
    "InsufficientBalance": NoSpace,
    "NotPurchasedSpace": NoSpace,
    "NonExistent": NotFound,
    "NotExist": NotFound,
    "NotOwner": AccessDenied,
    "NoPermission": AccessDenied,
    "NotQualified": AccessDenied,
    "Expired": NoSpace,
    "SameBucketName": AlreadyExists,
    "PurchasedSpace": AlreadyExists,
    "Existed": AlreadyExists,
    "LengthExceedsLimit": InvalidName,
    "LessMinLength": InvalidName,
    "SpecError": InvalidName,
    "BucketNotEmpty": NotEmpty,
    "NotEmpty": NotEmpty,
    "NotHaveTerritory": NotFound,
    "NoAuthorization": NotFound,
    "NotActive": NoSpace,
    "LeaseExpired": NoSpace,
    "BoundariesNotMet": InvalidInput,
    "ParamError": InvalidInput,
    "NotMiner": AccessDenied,
    "MinerStateError": AccessDenied,
}

_CHAIN_HINTS: dict[str, str] = {
    "InsufficientAvailableSpace": "expand the territory (deossfs territory expand) or delete files",
    "PurchasedSpace": "a territory of that name exists already; use another name or `territory expand`",
    "NonExistent": "check the name with `deossfs ls` / `deossfs bucket ls`",
    "Expired": "renew the territory with `deossfs territory renew`",
    "BucketNotEmpty": "delete its objects first",
    "NotEmpty": "delete its objects first",
    "NotHaveTerritory": "mint one with `deossfs territory mint NAME --gib N`",
    "NotActive": "the territory expired; renew it with `deossfs territory renew NAME --days 30`",
    "LeaseExpired": "the territory expired; renew it with `deossfs territory renew NAME --days 30`",
    "BoundariesNotMet": "territories are bought for at least 30 days",
    "Existed": "it exists already",
}


def chain_error(name: str, message: str | None = None) -> ChainError:
    """Build the exception for a CESS error name, with the right errno and hint."""
    kind = _CHAIN_ERROR_KINDS.get(name)
    cls: type = ChainError
    if kind is not None:
        # the specific kind's status, not ChainError's generic one (first in the MRO)
        cls = type(f"ChainError_{name}", (ChainError, kind), {"http_status": kind.http_status})
    return cls(name, message or name, hint=_CHAIN_HINTS.get(name))


def classify(exc: BaseException) -> BaseException:
    """Bring an error raised by a library we use into the taxonomy, or return it as it is.

    SQLite (the journal, the mount database, diskcache) reports a full disk and a busy
    database as `OperationalError` with a text; those are a full local disk (permanent,
    ENOSPC) and a lock held too long by another process (temporary)."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "disk is full" in text:
            return NoSpace("the local disk is full",
                           hint="free space on the disk that holds the workspace and cache")
        if "database is locked" in text or "database is busy" in text:
            return Busy(f"a local database is busy ({text})")
    return exc


def to_errno(exc: BaseException) -> int:
    """The errno the mount returns for an exception."""
    exc = classify(exc)
    if isinstance(exc, DeossError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def to_http_status(exc: BaseException) -> int:
    """The HTTP status the gateway answers with for an exception (500: a bug of ours)."""
    exc = classify(exc)
    if isinstance(exc, DeossError):
        return exc.http_status
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return 507
    return 500


#: the class a gateway client raises for an HTTP error status (the converse of http_status)
_BY_HTTP_STATUS: dict[int, type[DeossError]] = {
    400: InvalidInput, 401: Unauthenticated, 403: AccessDenied, 404: NotFound,
    405: Unsupported, 408: RequestTimeout, 409: AlreadyExists, 413: TooLarge,
    416: RangeNotSatisfiable, 429: RateLimited, 501: Unsupported, 502: IntegrityError,
    503: TemporaryError, 504: TemporaryError, 507: NoSpace,
}


def error_kind(exc: BaseException) -> str:
    """The taxonomy's name for an error ("NotFound"), sent with gateway errors so clients
    raise the same class (a chain refusal names its kind, e.g. AlreadyExists)."""
    for cls in type(exc).__mro__:
        if cls.__name__.startswith("ChainError_"):
            continue
        if cls.__module__ == __name__ and cls is not ChainError:
            return cls.__name__
    return "DeossError"


def from_http_status(status: int, message: str, kind: str | None = None) -> DeossError:
    """The error a client of the gateway raises for an answer with `status` (and the
    `kind` the gateway named, when it is one of the taxonomy's classes)."""
    named = globals().get(kind or "")
    cls = named if isinstance(named, type) and issubclass(named, DeossError) else None
    if cls is None or cls is ChainError:
        cls = _BY_HTTP_STATUS.get(status)
    if cls is None:
        cls = TemporaryError if status >= 500 else InvalidInput
    error = cls(message)
    error.http_status = status
    return error


def cli_message(exc: BaseException) -> str:
    """The one line the CLI prints for an exception."""
    exc = classify(exc)
    if isinstance(exc, DeossError):
        text = str(exc)
        if isinstance(exc, ChainError) and exc.name not in text:
            text = f"{text} ({exc.name})"
        if exc.temporary:
            text += " (temporary; try again later)"
        if exc.hint:
            text += f": {exc.hint}"
        return text
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    return f"unexpected error: {type(exc).__name__}: {exc}"


class NodeRefused(PermanentError):
    """A storage node or peer answered 4xx: it will not take (or give) this request."""

    http_status = 502

    def __init__(self, message: str, *, status: int = 400, hint: str | None = None) -> None:
        self.status = status
        super().__init__(message, hint=hint)
