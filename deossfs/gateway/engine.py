"""What every API of the gateway stands on: whose request it is, whether the gateway may
act for that account, which key encrypts its files, and how much it may do at once.

The gateway has its own account (its key file). It stores files for that account and for
any account that authorized it on the chain (`Oss.authorize`), signing the chain calls
itself, as a DeOSS gateway does. Files of its own account are encrypted with that
account's key, exactly as `deossfs put` and the mount encrypt them, so all three read
each other's files. Files of other accounts are encrypted with a key derived from the
gateway's secret and the account, or with one derived from the Cipher a request carries
(docs/encryption.md says who can read what).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..chain.interface import ChainClient
from ..config import Config
from ..errors import AccessDenied, InvalidInput, RateLimited
from ..keys import Account
from ..store import ObjectStore

log = logging.getLogger(__name__)

#: the longest Cipher DeOSS takes (it pads shorter ones to 32 bytes)
MAX_CIPHER_BYTES = 32


def cipher_key(cipher: str, owner: str) -> bytes:
    """The master key of files a request encrypts with its Cipher: HKDF of the Cipher,
    bound to the owner, so one Cipher used by two accounts gives two keys. The Cipher
    itself is used for that request only: never stored, never logged."""
    raw = cipher.encode()
    if not raw or len(raw) > MAX_CIPHER_BYTES:
        raise InvalidInput(f"a Cipher is 1 to {MAX_CIPHER_BYTES} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"deossfs cipher v1",
                info=owner.encode()).derive(raw)


@dataclass
class Reservation:
    """An upload counted against its account's limits (GatewayEngine.reserve)."""

    engine: GatewayEngine
    owner: str
    size: int
    released: bool = False

    def grow(self, size: int) -> None:
        """The upload turned out bigger than first counted (a body without Content-Length)."""
        if size > self.size and not self.released:
            self.engine._grow(self.owner, size - self.size)
            self.size = size

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.engine._release(self.owner, self.size)

    def split(self, count: int) -> list[_Share]:
        """`count` shares of this reservation (one per file of a request); it is released
        when every share is."""
        remaining = [count]

        def release_one() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self.release()

        return [_Share(release_one) for _ in range(count)]


@dataclass
class _Share:
    """A part of a Reservation that several uploads of one request hold."""

    on_release: Callable[[], None]
    released: bool = False

    def grow(self, size: int) -> None:  # the request's reservation counted the whole body
        pass

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.on_release()


@dataclass
class _Usage:
    uploads: int = 0
    bytes: int = 0


class GatewayEngine:
    """The gateway's account, chain and store, and the rules for serving other accounts."""

    def __init__(self, config: Config, account: Account, chain: ChainClient, store: ObjectStore) -> None:
        self.config = config
        self.account = account
        self.chain = chain
        self.store = store
        self.workspace = config.workspace_dir(account.address) / "gateway"
        #: owner -> (authorized?, when checked)
        self._authorized: dict[str, tuple[bool, float]] = {}
        self._usage: dict[str, _Usage] = {}
        #: uploads encoding and sending segments now, all accounts together (FIFO)
        self.store_slots = trio.Semaphore(config.gateway.parallel_stores)
        #: bodies hashed (pass 1) while they arrive: each holds a 96 MiB workspace
        self.planning_slots = trio.Semaphore(1)

    @property
    def address(self) -> str:
        return self.account.address

    # ---- who may be served ------------------------------------------------------

    def check_access_list(self, owner: str) -> None:
        """The [access] list, as DeOSS applies it: public = a blacklist, private = a whitelist."""
        if owner == self.address:
            return
        listed = owner in self.config.access.accounts
        if self.config.access.mode == "public" and listed:
            raise AccessDenied(f"account {owner} is blocked by this gateway's access list")
        if self.config.access.mode == "private" and not listed:
            raise AccessDenied(f"account {owner} is not on this gateway's access list",
                               hint="ask the gateway's operator to add it to access.accounts")

    async def authorize(self, owner: str) -> None:
        """Raise AccessDenied unless the gateway may act for `owner`: its own account, or
        one that authorized it on the chain and is not refused by the access list."""
        self.check_access_list(owner)
        if owner == self.address:
            return
        cached = self._authorized.get(owner)
        now = time.monotonic()
        if cached is None or now - cached[1] > self.config.gateway.authorization_cache_seconds:
            gateways = await trio.to_thread.run_sync(self.chain.authorized_gateways, owner)
            cached = (self.address in gateways, now)
            self._authorized[owner] = cached
        if not cached[0]:
            raise AccessDenied(
                f"account {owner} has not authorized this gateway ({self.address})",
                hint=f"authorize it on the chain first: `deossfs authorize {self.address}` "
                     "(Oss.authorize), then retry")

    def forget_authorization(self, owner: str) -> None:
        self._authorized.pop(owner, None)

    # ---- stores and keys ----------------------------------------------------------

    def account_key(self, owner: str) -> bytes:
        """The master key of `owner`'s files stored without a Cipher: the gateway's own
        account key for its own files, else derived from the gateway's secret."""
        if owner == self.address:
            return self.account.derive_key("deossfs encryption v1")
        return self.account.derive_key(f"deossfs gateway account key v1:{owner}")

    def store_for(self, owner: str, territory: str | None = None,
                  cipher: str | None = None) -> ObjectStore:
        """A store acting for `owner` (authorized already), in `territory` (default the
        configured one), encrypting with the request's Cipher when it has one."""
        if owner == self.address and cipher is None and territory is None:
            return self.store
        key = cipher_key(cipher, owner) if cipher else self.account_key(owner)
        return self.store.acting_for(owner, territory=territory, master_key=key)

    # ---- limits -------------------------------------------------------------------

    def reserve(self, owner: str, size: int) -> Reservation:
        """Count an upload of `size` bytes against `owner`'s limits until the reservation
        is released; refuse it (429) when the account has as many uploads or bytes under
        way as it may. Released by whoever finishes the upload (a request, or the
        background task of an accepted upload)."""
        limits = self.config.gateway
        usage = self._usage.setdefault(owner, _Usage())
        if usage.uploads >= limits.max_uploads_per_account:
            raise RateLimited(f"account {owner} has {usage.uploads} uploads under way already",
                              hint="wait for one to finish, then retry")
        self._grow(owner, size)
        usage.uploads += 1
        return Reservation(self, owner, size)

    def _grow(self, owner: str, extra: int) -> None:
        usage = self._usage.setdefault(owner, _Usage())
        limit = self.config.gateway.max_bytes_per_account
        if usage.bytes + extra > limit:
            raise RateLimited(f"account {owner} has {usage.bytes} bytes of uploads under way; "
                              f"this gateway takes {limit} per account",
                              hint="wait for an upload to finish, then retry")
        usage.bytes += extra

    def _release(self, owner: str, size: int) -> None:
        usage = self._usage.get(owner)
        if usage is None:
            return
        usage.uploads -= 1
        usage.bytes -= size
        if usage.uploads <= 0:
            self._usage.pop(owner, None)

    def usage(self, owner: str) -> tuple[int, int]:
        usage = self._usage.get(owner)
        return (usage.uploads, usage.bytes) if usage else (0, 0)
