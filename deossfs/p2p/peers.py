"""The peer cache network: deossfs instances serve their cached segments to each other.

Server (`PeerApp`, on hypercorn + trio like the storage node):
- `HEAD /segment` - "do you have it?"; `GET /segment` - the segment as stored
  (32 MiB; ciphertext for encrypted files). Headers `Fid`, `Index`, and the signed
  `Account`/`Message`/`Signature` of `signing.sign_request` for the method, the fid
  and `segment-<index>`: fresh, single use (`ReplayGuard`), so a captured request
  cannot be replayed or redirected to another segment.
- `GET /status` - unsigned: who serves, in which access mode.
A request is answered only if (1) its signature holds (else 401), (2) the access
policy admits the signer - public mode: everyone but the listed accounts (a
blacklist), private mode: only them (a whitelist), as DeOSS - and (3) the signer
may read the file on CESS: an owner, or a gateway an owner authorized (the storage
nodes' rule, so the cache network never widens who can read a file). A refusal is
a 403 with a JSON message and one log line.

Client (`PeerNetwork`): peers are the configured endpoints plus, optionally, the
chain's gateway list (`Oss`), re-read every `refresh_seconds`. For a segment
missing locally, every peer is asked in parallel (HEAD); the peers that have it
are fetched from in the order they answered, and the first whose bytes match the
chain's segment hash wins. A peer that fails, times out, refuses or sends wrong
bytes is not asked again for `penalty_seconds`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ..cache.counters import Counters
from ..cache.segments import SegmentCache
from ..chain.interface import ChainClient
from ..config import AccessConfig, PeersConfig, ServeConfig
from ..errors import DeossError, NodeRefused
from ..keys import Account
from ..processing.hashes import is_hash
from ..processing.layout import SEGMENT_SIZE
from .nodeclient import base_url
from .signing import ReplayGuard, sign_request

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: a segment response is sent in pieces of this size
SEND_CHUNK = 1024 * 1024
#: seconds a peer has to say whether it holds a segment
PROBE_TIMEOUT = 3.0
#: peers asked at once for one segment
MAX_PEERS = 16
#: seconds an answer about who may read a file is reused
READER_TTL = 30.0
_MAX_INDEX = 10**7
#: why a request was refused (also in the JSON body, which HEAD answers lack)
REASON_HEADER = "X-Deossfs-Reason"


def segment_tag(index: int) -> str:
    """What a signed peer request binds besides the fid (the `fragment` part)."""
    return f"segment-{index}"


# ---- access --------------------------------------------------------------------


class AccessPolicy:
    """Public mode: `accounts` are refused (a blacklist). Private mode: only `accounts`
    are served (a whitelist)."""

    def __init__(self, mode: str, accounts: Iterable[str]) -> None:
        if mode not in ("public", "private"):
            raise ValueError(f"access mode must be public or private, not {mode!r}")
        self.mode = mode
        self.accounts = frozenset(accounts)

    @classmethod
    def from_config(cls, access: AccessConfig) -> AccessPolicy:
        return cls(access.mode, access.accounts)

    def refusal(self, account: str) -> str | None:
        """Why `account` is refused, or None if it may be served."""
        if self.mode == "public" and account in self.accounts:
            return f"account {account} is blacklisted by this instance (public mode)"
        if self.mode == "private" and account not in self.accounts:
            return f"account {account} is not on this instance's whitelist (private mode)"
        return None


def chain_reader_check(chain: ChainClient) -> Callable[[str, str], bool | None]:
    """`may_read(signer, fid)`: True for an owner of the file or a gateway an owner
    authorized, False otherwise, None if the chain has no such file (blocking)."""

    def may_read(signer: str, fid: str) -> bool | None:
        info = chain.file(fid)
        if info is None:
            return None
        owners = list(dict.fromkeys(brief.user for brief in info.owners))
        if signer in owners:
            return True
        return any(signer in chain.authorized_gateways(owner) for owner in owners)

    return may_read


# ---- server --------------------------------------------------------------------


class Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PeerApp:
    """The ASGI app serving a `SegmentCache` to peers."""

    def __init__(
        self,
        cache: SegmentCache,
        guard: ReplayGuard,
        policy: AccessPolicy,
        account: str,
        may_read: Callable[[str, str], bool | None] | None,
        counters: Counters | None = None,
    ) -> None:
        self.cache = cache
        self.guard = guard
        self.policy = policy
        self.account = account
        self.may_read = may_read
        self.counters = counters
        self._readers: dict[tuple[str, str], tuple[float, bool | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = _headers(scope)
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "?"
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._route(scope.get("method", ""), scope.get("path", ""), headers, peer, tracked)
        except Refusal as refusal:
            if not started:
                # HEAD answers have no body: the reason also travels in a header
                await _send_json(send, refusal.status, {"code": refusal.status, "msg": refusal.message},
                                 [(REASON_HEADER.encode(), _header_value(refusal.message))])
        except Exception:
            log.exception("peer request %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(send, 500, {"code": 500, "msg": "internal error"})

    async def _route(self, method: str, path: str, headers: dict[str, str], peer: str, send: Send) -> None:
        if path == "/status" and method == "GET":
            await _send_json(send, 200, {"service": "deossfs-cache", "account": self.account,
                                         "access": self.policy.mode})
            return
        if path != "/segment":
            raise Refusal(404, f"no route {path}")
        if method not in ("GET", "HEAD"):
            raise Refusal(405, "use GET or HEAD")
        fid = headers.get("fid", "")
        index_text = headers.get("index", "")
        if not is_hash(fid):
            raise Refusal(400, "Fid must be 64 lowercase hex characters")
        # the length first: int() of more than 4300 digits raises ValueError (a 500), and
        # no segment number has more digits than _MAX_INDEX
        if (not index_text.isascii() or not index_text.isdigit()
                or len(index_text) > len(str(_MAX_INDEX)) or int(index_text) >= _MAX_INDEX):
            raise Refusal(400, "Index must be a segment number")
        index = int(index_text)
        signer = await self._check(method, fid, index, headers, peer)
        handle = await trio.to_thread.run_sync(self.cache.open, fid, index)
        if handle is None:
            raise Refusal(404, f"segment {index} of {fid} is not cached here")
        try:
            size = await trio.to_thread.run_sync(lambda: _size(handle))
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode()),
            ]})
            if method == "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            sent = 0
            while sent < size:
                chunk = await trio.to_thread.run_sync(handle.read, min(SEND_CHUNK, size - sent))
                if not chunk:
                    raise OSError("cached segment shrank while being sent")
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": sent < size})
        finally:
            handle.close()
        log.info("served segment %d of %s… to %s (%s)", index, fid[:16], signer, peer)
        if self.counters is not None:
            await trio.to_thread.run_sync(lambda: self.counters.add(served_segments=1, served_bytes=sent))  # type: ignore[union-attr]

    async def _check(self, method: str, fid: str, index: int, headers: dict[str, str], peer: str) -> str:
        """The signer of an admissible request; a Refusal (logged) otherwise."""
        try:
            signer = await trio.to_thread.run_sync(self.guard.check, headers, method, fid, segment_tag(index))
        except NodeRefused as exc:
            await self._refused(peer, headers.get("account", "?"), str(exc))
            raise Refusal(401, str(exc)) from None
        reason = self.policy.refusal(signer)
        if reason is None and self.may_read is not None:
            allowed = await self._may_read(signer, fid)
            if allowed is None:
                raise Refusal(404, f"file {fid} is not stored on the chain")
            if not allowed:
                reason = f"account {signer} is not an owner of file {fid[:16]}… nor a gateway one authorized"
        if reason is not None:
            await self._refused(peer, signer, reason)
            raise Refusal(403, reason)
        return signer

    async def _may_read(self, signer: str, fid: str) -> bool | None:
        now = time.monotonic()
        key = (signer, fid)
        known = self._readers.get(key)
        if known is not None and known[0] > now:
            return known[1]
        assert self.may_read is not None
        allowed = await trio.to_thread.run_sync(self.may_read, signer, fid)
        if len(self._readers) > 10_000:
            self._readers = {k: v for k, v in self._readers.items() if v[0] > now}
        self._readers[key] = (now + READER_TTL, allowed)
        return allowed

    async def _refused(self, peer: str, account: str, reason: str) -> None:
        log.warning("refused a peer request from %s (%s): %s", account, peer, reason)
        if self.counters is not None:
            await trio.to_thread.run_sync(lambda: self.counters.add(refused_requests=1))  # type: ignore[union-attr]


def _size(handle: Any) -> int:
    return os.fstat(handle.fileno()).st_size


def _header_value(text: str) -> bytes:
    """`text` as a header value: printable ASCII, no surrounding blanks. A refusal quotes
    the request's percent-decoded path, whose control characters (CR LF among them) h11
    refuses to send - a 500 instead of the refusal."""
    return "".join(c if " " <= c <= "~" else "?" for c in text).strip().encode("ascii")


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        headers.setdefault(raw_name.decode("latin-1").lower(), raw_value.decode("latin-1"))
    return headers


async def _send_json(send: Send, status: int, payload: dict,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(extra or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _bind(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def serve_peers(
    cache: SegmentCache,
    account: Account,
    chain: ChainClient,
    serve_config: ServeConfig,
    access: AccessConfig,
    replay_db: Path | None,
    *,
    counters: Counters | None = None,
    check_owners: bool = True,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `cache` to peers until cancelled; reports the endpoint once listening.

    With `serve_config.register` the endpoint goes into the chain's gateway list.
    """
    # imported here: every CLI command imports this module, only servers need hypercorn
    # (~0.1 s of a command's start-up)
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    guard = await trio.to_thread.run_sync(ReplayGuard, replay_db)
    app = PeerApp(cache, guard, AccessPolicy.from_config(access), account.address,
                  chain_reader_check(chain) if check_owners else None, counters)
    config = HypercornConfig()
    config.bind = [_bind(serve_config.host, serve_config.port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("deossfs.peers.http")
    config.keep_alive_timeout = 30
    config.include_server_header = False
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(serve, app, config, mode="asgi"))
            endpoint = serve_config.public_endpoint or (binds[0] if binds else f"http://{config.bind[0]}")
            if serve_config.register:
                await trio.to_thread.run_sync(chain.register_gateway, endpoint)
                log.info("registered %s in the chain's gateway list", endpoint)
            log.warning("serving the cache to peers at %s (access: %s%s)", endpoint, access.mode,
                        f", {len(access.accounts)} accounts listed" if access.accounts else "")
            task_status.started(endpoint)
    finally:
        guard.close()


# ---- client --------------------------------------------------------------------


class PeerNetwork:
    """Asks peer instances for segments (see the module docstring)."""

    def __init__(self, config: PeersConfig, account: Account, chain: ChainClient, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.account = account
        self.chain = chain
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._gateways: list[str] = []
        self._gateways_read = -float("inf")
        self._failed_until: dict[str, float] = {}
        self._warned: set[tuple[str, int]] = set()
        #: endpoints of this instance itself (never asked)
        self.own_endpoints: set[str] = set()

    @property
    def _client(self) -> httpx.AsyncClient:
        """Made when a peer is first asked: importing httpx and building a client (its TLS
        context) cost ~0.15 s, which every CLI command paid, peers or not."""
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(self.config.timeout, connect=PROBE_TIMEOUT),
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                follow_redirects=False,
                trust_env=False,
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    def _normal(self, endpoint: str) -> str:
        return base_url(endpoint)

    async def endpoints(self) -> list[str]:
        """The peers to ask now: configured ones, then the chain's gateways."""
        now = time.monotonic()
        if self.config.from_chain and now - self._gateways_read >= self.config.refresh_seconds:
            self._gateways_read = now
            try:
                gateways = await trio.to_thread.run_sync(self.chain.gateways)
                self._gateways = [g.endpoint for g in gateways if g.endpoint]
            except DeossError as exc:
                log.info("cannot read the chain's gateway list: %s", exc)
        own = {self._normal(e) for e in self.own_endpoints}
        found: list[str] = []
        for endpoint in [*self.config.endpoints, *self._gateways]:
            try:
                url = self._normal(endpoint)
            except DeossError:
                continue
            if url in own or url in found or self._failed_until.get(url, 0.0) > now:
                continue
            found.append(url)
        return found[:MAX_PEERS]

    def penalize(self, endpoint: str, why: str) -> None:
        log.info("peer %s not asked for %.0fs: %s", endpoint, self.config.penalty_seconds, why)
        self._failed_until[endpoint] = time.monotonic() + self.config.penalty_seconds

    def _headers(self, method: str, fid: str, index: int) -> dict[str, str]:
        headers = sign_request(self.account, method, fid, segment_tag(index))
        headers["Fid"] = fid
        headers["Index"] = str(index)
        return headers

    def _refused(self, endpoint: str, response: httpx.Response) -> None:
        message = response.headers.get(REASON_HEADER, "")
        if not message:
            try:
                message = str(json.loads(response.content).get("msg", ""))
            except (ValueError, AttributeError):
                message = response.text[:200]
        key = (endpoint, response.status_code)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("peer %s refused us (%d): %s", endpoint, response.status_code, message)
        self.penalize(endpoint, f"refused ({response.status_code})")

    async def _probe(self, endpoint: str, fid: str, index: int) -> bool:
        """Whether the peer holds the segment (and will give it to us)."""
        import httpx  # for the except clause; loaded with the client

        try:
            with trio.fail_after(PROBE_TIMEOUT):
                response = await self._client.head(endpoint + "/segment",
                                                   headers=self._headers("HEAD", fid, index))
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            self.penalize(endpoint, f"no answer ({exc!r})")
            return False
        if response.status_code == 200:
            return True
        if response.status_code in (401, 403):
            self._refused(endpoint, response)
        elif response.status_code >= 500:
            self.penalize(endpoint, f"answered {response.status_code}")
        return False

    async def _download(self, endpoint: str, fid: str, index: int, segment_hash: str,
                        into: memoryview) -> bool:
        """The segment into `into`; True only if it matches `segment_hash`."""
        import httpx  # for the except clause; loaded with the client

        received = 0
        try:
            with trio.fail_after(self.config.timeout):
                async with self._client.stream("GET", endpoint + "/segment",
                                               headers=self._headers("GET", fid, index)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code in (401, 403):
                            self._refused(endpoint, response)
                        return False
                    async for chunk in response.aiter_raw():
                        if received + len(chunk) > len(into):
                            self.penalize(endpoint, "sent more than a segment")
                            return False
                        into[received : received + len(chunk)] = chunk
                        received += len(chunk)
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            self.penalize(endpoint, f"transfer failed ({exc!r})")
            return False
        if received != len(into):
            self.penalize(endpoint, f"sent {received} bytes, not {len(into)}")
            return False
        digest = await trio.to_thread.run_sync(lambda: hashlib.sha256(into).hexdigest())
        if digest != segment_hash:
            log.warning("peer %s sent segment %d of %s… not matching the chain's hash", endpoint,
                        index, fid[:16])
            self.penalize(endpoint, "wrong segment bytes")
            return False
        return True

    async def fetch_segment(self, fid: str, index: int, segment_hash: str,
                            into: memoryview) -> str | None:
        """Segment `index` of `fid` into `into` (SEGMENT_SIZE bytes) from the first peer
        whose bytes match `segment_hash`; that peer's endpoint, or None."""
        if len(into) != SEGMENT_SIZE:
            raise ValueError("a segment buffer has SEGMENT_SIZE bytes")
        peers = await self.endpoints()
        if not peers:
            return None
        answers_send, answers = trio.open_memory_channel[tuple[str, bool]](len(peers))
        winner: str | None = None

        async def ask(endpoint: str) -> None:
            answers_send.send_nowait((endpoint, await self._probe(endpoint, fid, index)))

        async with trio.open_nursery() as nursery:
            for endpoint in peers:
                nursery.start_soon(ask, endpoint)
            for _ in peers:
                endpoint, has_it = await answers.receive()
                if has_it and await self._download(endpoint, fid, index, segment_hash, into):
                    winner = endpoint
                    break
            nursery.cancel_scope.cancel()
        if winner is not None:
            log.debug("segment %d of %s… from peer %s", index, fid[:16], winner)
        return winner
