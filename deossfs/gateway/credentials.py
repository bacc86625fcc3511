"""S3 access keys: an access key id and a secret, bound to an account.

The gateway answers S3 requests signed with these keys (SigV4, `gateway/s3/sigv4.py`);
a key acts for its account, which is the gateway's own or one that has authorized the
gateway (the CLI checks that before `create`).

All keys live in one JSON file:

    {"format": "deossfs s3 credentials", "version": 1,
     "keys": [{"id": "...", "account": "cX...", "created": 1712345678.9,
               "secret": "<base64 of nonce ‖ AES-256-GCM ciphertext+tag>"}]}

- JSON rather than SQLite: a few dozen small records, rewritten whole at each change.
  One file replaced by `rename` is atomic, keeps mode 0600 without side files (SQLite's
  -wal/-shm would be created with the umask's mode), and tells a reader that it
  changed by its new inode — so `lookup` needs one `stat` per call, no polling.
- Secrets are encrypted with AES-256-GCM under `encryption_key`, a fresh 12-byte
  nonce each, the key id and account as associated data (an entry moved to another
  id or account fails to decrypt). The caller derives the key from the gateway's
  account: `Account.derive_key(CREDENTIALS_KEY_PURPOSE)`, i.e.
  `derive_key("deossfs s3 credentials v1")` (`KeyStore.for_account` does it).
  So the file alone does not reveal a secret; the gateway's key file is needed too.
- The file is created 0600 and refused when group or others can read it. Changes by
  several processes (the CLI while a gateway runs) are serialized by `flock` on a
  0600 side file `<name>.lock`; readers never wait for it.
- Secrets are never logged; `repr(AccessKey)` leaves the secret out.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import re
import secrets
import stat
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import InvalidInput, KeyFileError
from ..keys import valid_address

if TYPE_CHECKING:
    from ..keys import Account

#: the `Account.derive_key` purpose of the key that encrypts the secrets
CREDENTIALS_KEY_PURPOSE = "deossfs s3 credentials v1"

FILE_FORMAT = "deossfs s3 credentials"
FILE_VERSION = 1
ACCESS_KEY_ID_LENGTH = 20
SECRET_LENGTH = 40
_ID_ALPHABET = string.ascii_uppercase + string.digits
_ID_PATTERN = re.compile(r"[A-Z0-9]{20}")
_NONCE_BYTES = 12


@dataclass(frozen=True)
class AccessKey:
    """One S3 access key. `secret` is "" in listings; `repr` never shows it."""

    access_key_id: str
    secret: str = field(repr=False)
    #: the SS58 address of the account the key acts for
    account: str
    #: creation time, seconds since the epoch
    created: float


def valid_access_key_id(text: str) -> bool:
    """True for an id of our shape: 20 characters A-Z and 0-9, as AWS's are."""
    return _ID_PATTERN.fullmatch(text) is not None


def _new_access_key_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ACCESS_KEY_ID_LENGTH))


def _new_secret() -> str:
    # 30 random bytes are 40 base64 characters, the length of an AWS secret key
    return base64.b64encode(secrets.token_bytes(SECRET_LENGTH * 3 // 4)).decode()


def _associated_data(access_key_id: str, account: str) -> bytes:
    return f"{FILE_FORMAT}\n{access_key_id}\n{account}".encode()


# the (device, inode, size, mtime, ctime) of a version of the file: a rename gives a new inode
_FileVersion = tuple[int, int, int, int, int]


def _version_of(st: os.stat_result) -> _FileVersion:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeyStore:
    """The access keys in one 0600 file, secrets encrypted under `encryption_key`.

    `lookup` is what the gateway calls per request: it answers from memory and
    reloads only when the file changed on disk (one `stat` per call), so keys made
    or removed by the CLI in another process take effect at the next request.
    Safe to use from several threads.
    """

    def __init__(self, path: Path | str, encryption_key: bytes) -> None:
        if len(encryption_key) != 32:
            raise ValueError("the credentials encryption key must be 32 bytes (AES-256)")
        self.path = Path(path)
        self._aead = AESGCM(encryption_key)
        self._lock = threading.Lock()
        self._version: _FileVersion | None = None
        self._keys: dict[str, AccessKey] = {}

    @classmethod
    def for_account(cls, path: Path | str, account: Account) -> KeyStore:
        """The store whose secrets are encrypted under a key derived from `account`."""
        return cls(path, account.derive_key(CREDENTIALS_KEY_PURPOSE))

    # ---- reading -----------------------------------------------------------

    def lookup(self, access_key_id: str) -> AccessKey | None:
        """The key with this id (secret included), or None when there is none."""
        if not valid_access_key_id(access_key_id):
            return None
        with self._lock:
            self._refresh()
            return self._keys.get(access_key_id)

    def list(self, account: str | None = None) -> list[AccessKey]:
        """All keys (or one account's), oldest first, with their secrets blanked."""
        with self._lock:
            self._refresh()
            keys = [key for key in self._keys.values() if account in (None, key.account)]
        return [replace(key, secret="") for key in sorted(keys, key=lambda k: k.created)]

    def _refresh(self) -> None:
        """Reload the file when it is not the version in memory (caller holds _lock)."""
        try:
            current = _version_of(os.stat(self.path))
        except FileNotFoundError:
            self._version, self._keys = None, {}
            return
        if current != self._version:
            self._version, self._keys = self._load()

    def _load(self) -> tuple[_FileVersion | None, dict[str, AccessKey]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, {}
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            self._check_mode(st)
            body = handle.read()
        return _version_of(st), self._decode(body)

    def _check_mode(self, st: os.stat_result) -> None:
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"S3 credentials file {self.path} is readable by others "
                f"(mode {stat.S_IMODE(st.st_mode):o})",
                hint=f"run `chmod 600 {self.path}`",
            )

    def _decode(self, body: bytes) -> dict[str, AccessKey]:
        try:
            data = json.loads(body)
            if data.get("format") != FILE_FORMAT or data.get("version") != FILE_VERSION:
                raise ValueError("not a credentials file of this version")
            records = data["keys"]
            keys = {}
            for record in records:
                key = self._decrypt(record)
                keys[key.access_key_id] = key
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyFileError(f"{self.path} is not a deossfs S3 credentials file") from None
        return keys

    def _decrypt(self, record: dict[str, Any]) -> AccessKey:
        access_key_id, account = str(record["id"]), str(record["account"])
        try:
            sealed = base64.b64decode(record["secret"], validate=True)
            secret = self._aead.decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:],
                _associated_data(access_key_id, account),
            ).decode()
        except (InvalidTag, binascii.Error, UnicodeDecodeError):
            raise KeyFileError(
                f"the secret of access key {access_key_id} in {self.path} cannot be decrypted",
                hint="the file belongs to another gateway account, or was altered",
            ) from None
        return AccessKey(access_key_id, secret, account, float(record["created"]))

    # ---- changing ----------------------------------------------------------

    def create(self, account: str) -> AccessKey:
        """Make a new key for `account` (an SS58 address) and return it, secret included."""
        if not valid_address(account):
            raise InvalidInput(f"{account!r} is not an SS58 account address")
        with self._changing() as keys:
            access_key_id = _new_access_key_id()
            while access_key_id in keys:  # 36^20 ids: never, but cheap to be sure
                access_key_id = _new_access_key_id()
            key = AccessKey(access_key_id, _new_secret(), account, time.time())
            keys[access_key_id] = key
        return key

    def remove(self, access_key_id: str) -> bool:
        """Delete a key; False when there was none with this id."""
        with self._changing() as keys:
            return keys.pop(access_key_id, None) is not None

    @contextmanager
    def _changing(self) -> Iterator[dict[str, AccessKey]]:
        """The keys as on disk, under the file lock; written back if the block changed them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(
            self.path.with_name(self.path.name + ".lock"),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600,
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            with self._lock:
                self._version, self._keys = self._load()
                keys = dict(self._keys)
            yield keys
            if keys != self._keys:
                self._write(keys)
                with self._lock:
                    self._refresh()
        finally:
            os.close(lock_fd)  # releases the flock

    def _write(self, keys: dict[str, AccessKey]) -> None:
        records = [self._encrypt(key) for key in sorted(keys.values(), key=lambda k: k.created)]
        body = json.dumps(
            {"format": FILE_FORMAT, "version": FILE_VERSION, "keys": records}, indent=1
        ).encode() + b"\n"
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _encrypt(self, key: AccessKey) -> dict[str, Any]:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(
            nonce, key.secret.encode(), _associated_data(key.access_key_id, key.account)
        )
        return {
            "id": key.access_key_id,
            "account": key.account,
            "created": key.created,
            "secret": base64.b64encode(sealed).decode(),
        }
