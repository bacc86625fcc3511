"""Name rules the chain applies: bucket, territory and file names.

Each rule has a pure form (`*_problem(name) -> str | None`, for the CLI to
explain a name before anything is sent) and a checking form (`check_*`) that
raises the chain's refusal with its CESS error name.

Two levels, checked against the real runtime (spec 100, tests/conformance):
- the chain's rule (`check_*`, applied by the embedded ledger exactly as the runtime
  does): a bucket name is 3..63 bytes of `a-z A-Z 0-9 . - _` without `j`/`J` (the
  runtime's allowed-character table lists `g` twice where `i j` belong), no `..`, and
  not exactly three dots; shorter is `LessMinLength`, other breaks are `SpecError`;
- deossfs' own policy for names it creates (`bucket_name_problem`, used by the CLI and
  the mount): additionally S3-style lowercase, starting and ending with a letter or digit.
A name longer than the runtime's bound (`NameStrLimit` = 63) cannot even be encoded for
the call; we call that `LengthExceedsLimit`. File names in a storage order are 3..63
bytes (`SpecError` below 3); territory names 0..63 bytes (the runtime takes "").
"""

from __future__ import annotations

import re

from ..errors import ChainError, chain_error

BUCKET_NAME_MIN_BYTES = 3  # FileBank NameMinLength
BUCKET_NAME_MAX_BYTES = 63  # FileBank NameStrLimit
TERRITORY_NAME_MIN_BYTES = 0  # the runtime accepts an empty territory name (checked)
TERRITORY_NAME_MAX_BYTES = 63  # StorageHandler NameLimit
#: UserBrief.file_name: NameMinLength..NameStrLimit (checked on the runtime)
FILE_NAME_MIN_BYTES = 3
FILE_NAME_MAX_BYTES = 63

#: the runtime's BUCKET_ALLOW_CHAR (no j/J: its table repeats g)
_CHAIN_BUCKET_CHARS = re.compile(r"[a-ik-zA-IK-Z0-9._\-]+")
_BUCKET_CHARS = re.compile(r"[a-z0-9.\-]+")
_IPV4_LIKE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


def _chain_bucket_issue(name: object) -> tuple[str, str] | None:
    """(CESS error name, explanation) when the runtime refuses a bucket name, or None."""
    if not isinstance(name, str):
        return "SpecError", "a bucket name must be a string"
    size = len(name.encode("utf-8"))
    if size < BUCKET_NAME_MIN_BYTES:
        return "LessMinLength", f"a bucket name has at least {BUCKET_NAME_MIN_BYTES} characters"
    if size > BUCKET_NAME_MAX_BYTES:
        return "LengthExceedsLimit", f"a bucket name has at most {BUCKET_NAME_MAX_BYTES} characters"
    if not _CHAIN_BUCKET_CHARS.fullmatch(name):
        if "j" in name.lower():
            return "SpecError", "the CESS chain refuses the letter 'j' in bucket names"
        return "SpecError", "a bucket name may contain only letters, digits, '.', '-' and '_'"
    if ".." in name:
        return "SpecError", "a bucket name must not contain '..'"
    if name.count(".") == 3:
        return "SpecError", "a bucket name must not contain exactly three dots (IPv4-like)"
    return None


def _bucket_issue(name: object) -> tuple[str, str] | None:
    """What is wrong with a bucket name deossfs would create: the chain's rule and ours."""
    issue = _chain_bucket_issue(name)
    if issue is not None:
        return issue
    assert isinstance(name, str)
    if not _BUCKET_CHARS.fullmatch(name):
        return "SpecError", "a bucket name may contain only a-z, 0-9, '.' and '-'"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "SpecError", "a bucket name must start and end with a letter or digit"
    for pair in ("..", ".-", "-."):
        if pair in name:
            return "SpecError", f"a bucket name must not contain {pair!r}"
    if _IPV4_LIKE.fullmatch(name):
        return "SpecError", "a bucket name must not look like an IPv4 address"
    return None


def bucket_name_problem(name: str) -> str | None:
    """Why `name` is not a valid CESS bucket name, or None when it is."""
    issue = _bucket_issue(name)
    return None if issue is None else issue[1]


def check_bucket_name(name: str) -> None:
    """Raise the chain's refusal (`ChainError`) when the runtime refuses bucket `name`."""
    issue = _chain_bucket_issue(name)
    if issue is not None:
        raise _refusal(issue, f"bucket name {name!r}")


def _bounded_issue(name: object, kind: str, low: int, high: int) -> tuple[str, str] | None:
    if not isinstance(name, str):
        return "SpecError", f"a {kind} must be a string"
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if size < low:
        # FileBank refuses a too-short file name with SpecError (checked)
        return "SpecError", f"a {kind} has at least {low} byte{'s' if low > 1 else ''}"
    if size > high:
        return "LengthExceedsLimit", f"a {kind} has at most {high} bytes"
    if "\0" in name:
        return "SpecError", f"a {kind} must not contain NUL"
    return None


def territory_name_problem(name: str) -> str | None:
    """Why `name` is not a valid territory name (0..63 bytes), or None."""
    issue = _bounded_issue(name, "territory name", TERRITORY_NAME_MIN_BYTES,
                           TERRITORY_NAME_MAX_BYTES)
    return None if issue is None else issue[1]


def check_territory_name(name: str) -> None:
    issue = _bounded_issue(name, "territory name", TERRITORY_NAME_MIN_BYTES,
                           TERRITORY_NAME_MAX_BYTES)
    if issue is not None:
        raise _refusal(issue, f"territory name {name!r}")


def file_name_problem(name: str) -> str | None:
    """Why `name` cannot be a storage order's file name, or None."""
    issue = _bounded_issue(name, "file name", FILE_NAME_MIN_BYTES, FILE_NAME_MAX_BYTES)
    return None if issue is None else issue[1]


def check_file_name(name: str) -> None:
    issue = _bounded_issue(name, "file name", FILE_NAME_MIN_BYTES, FILE_NAME_MAX_BYTES)
    if issue is not None:
        raise _refusal(issue, "file name")


def _refusal(issue: tuple[str, str], what: str) -> ChainError:
    code, why = issue
    return chain_error(code, f"{what} refused: {why}")
