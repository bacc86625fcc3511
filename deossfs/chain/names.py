"""Name rules the chain applies: bucket, territory and file names.

Each rule has a pure form (`*_problem(name) -> str | None`, for the CLI to
explain a name before anything is sent) and a checking form (`check_*`) that
raises the chain's refusal with its CESS error name.

Two levels, checked against the real runtime (spec 100, tests/conformance):
- the chain's rule (`check_*`, applied by the embedded ledger exactly as the runtime
  does): a bucket name is 3..63 bytes of `a-z A-Z 0-9 . - _` without `j`/`J` (the
  runtime's allowed-character table lists `g` twice where `i j` belong), no `..`, and
  not exactly three dots; shorter is `LessMinLength`, other breaks are `SpecError`;
- deossfs' own policy for names it creates (`bucket_name_problem`, used by the CLI, the
  mount and the gateway): S3's rules (3..63 bytes of `a-z 0-9 . -`, starting and ending
  with a letter or digit, no `..`, not an IPv4 address). Two kinds of S3 names break the
  chain's rule - those with a `j` and those with exactly three dots - so every deossfs
  name is stored under `bucket_to_chain(name)`: `j` becomes `Q` and the last of exactly
  three dots `X` (letters no S3 name has), and `bucket_from_chain` maps it back. Buckets
  of other tools keep their names (`MyPhotos`, `my_files`): only a chain name that
  decodes to a valid S3 name encoding back to itself is shown decoded. `NamedBuckets`
  applies the mapping to every chain call (chain/factory.py), so the CLI, the mount and
  the gateway all see `jazz` where the chain holds `Qazz` (docs/s3-names.md).
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


def _bucket_length_issue(name: object) -> tuple[str, str] | None:
    if not isinstance(name, str):
        return "SpecError", "a bucket name must be a string"
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if size < BUCKET_NAME_MIN_BYTES:
        return "LessMinLength", f"a bucket name has at least {BUCKET_NAME_MIN_BYTES} characters"
    if size > BUCKET_NAME_MAX_BYTES:
        return "LengthExceedsLimit", f"a bucket name has at most {BUCKET_NAME_MAX_BYTES} characters"
    return None


def _chain_bucket_issue(name: object) -> tuple[str, str] | None:
    """(CESS error name, explanation) when the runtime refuses a bucket name, or None."""
    issue = _bucket_length_issue(name)
    if issue is not None:
        return issue
    assert isinstance(name, str)
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
    """What is wrong with a bucket name deossfs would create (S3's rules)."""
    issue = _bucket_length_issue(name)
    if issue is not None:
        return issue
    assert isinstance(name, str)
    if not _BUCKET_CHARS.fullmatch(name):
        return "SpecError", "a bucket name may contain only a-z, 0-9, '.' and '-'"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "SpecError", "a bucket name must start and end with a letter or digit"
    if ".." in name:
        return "SpecError", "a bucket name must not contain '..'"
    if _IPV4_LIKE.fullmatch(name):
        return "SpecError", "a bucket name must not look like an IPv4 address"
    return None


def bucket_name_problem(name: str) -> str | None:
    """Why `name` is not a valid bucket name for deossfs to create (S3's rules), or None.
    A valid name is stored on the chain as `bucket_to_chain(name)`."""
    issue = _bucket_issue(name)
    return None if issue is None else issue[1]


#: S3 bucket names are lowercase: these capitals stand for what the chain refuses
_J_ON_CHAIN = "Q"
_DOT_ON_CHAIN = "X"


def bucket_to_chain(name: str) -> str:
    """The chain's name of bucket `name`. A valid S3 name with a `j` or exactly three dots
    (the runtime refuses both) is escaped: every `j` becomes `Q`, the last of three dots
    `X` (`jazz` -> `Qazz`, `a.b.c.d` -> `a.b.cXd`); other names are the chain's as they
    are (`MyPhotos`, or a name the chain will refuse with its own error)."""
    if _bucket_issue(name) is not None:
        return name
    chain = name.replace("j", _J_ON_CHAIN)
    if chain.count(".") == 3:
        last = chain.rindex(".")
        chain = chain[:last] + _DOT_ON_CHAIN + chain[last + 1:]
    return chain


def bucket_from_chain(chain: str) -> str:
    """The name deossfs shows for chain bucket `chain`: decoded when it is the escape of a
    valid S3 name (`Qazz` -> `jazz`), else as it is (`MyPhotos`). The inverse of
    bucket_to_chain, and one-to-one on the names the chain accepts."""
    if _J_ON_CHAIN not in chain and _DOT_ON_CHAIN not in chain:
        return chain
    name = chain.replace(_J_ON_CHAIN, "j").replace(_DOT_ON_CHAIN, ".")
    if _bucket_issue(name) is None and bucket_to_chain(name) == chain:
        return name
    return chain


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
