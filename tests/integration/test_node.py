"""The storage node over real HTTP on 127.0.0.1, against the embedded ledger.

Covers: storing a fragment of a pending deal and the transfer report it
triggers; reading it back whole and by range; every refusal (signature,
freshness, replay, size, hash, deal membership, signer, malformed and
path-traversal requests) with the node still serving afterwards; the zero
fragment and identical hashes across columns; report retries; a node restart;
and a node running as a separate OS process. The column-choice rules are also
unit-tested with a small fake chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trio

from deossfs.chain.interface import (
    ChainClient,
    CompleteInfo,
    DealInfo,
    SegmentSpec,
    UserBrief,
)
from deossfs.errors import ChainUnavailable, IntegrityError, NodeRefused, NodeUnavailable
from deossfs.keys import Account, account_from_secret
from deossfs.node.server import reportable_columns, serve_node
from deossfs.node.store import FragmentStore
from deossfs.p2p.nodeclient import NodeClient
from deossfs.p2p.signing import sign_request
from deossfs.processing.hashes import merkle_root, sha256_hex
from deossfs.processing.layout import FRAGMENT_SIZE, TOTAL_SHARDS, ZERO_FRAGMENT_HASH

ledger_module = pytest.importorskip("deossfs.chain.ledger")
EmbeddedLedger = ledger_module.EmbeddedLedger
TOKEN = 10**18
GIB = 1024**3

USER = account_from_secret("//NodeTestUser")
GATEWAY = account_from_secret("//NodeTestGateway")
STRANGER = account_from_secret("//NodeTestStranger")
NODE = account_from_secret("//NodeTestNode")
NODE2 = account_from_secret("//NodeTestNode2")
ROOT = Path(__file__).resolve().parents[2]


# ---- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module")
def fragments() -> list[bytes]:
    """12 random 8 MiB fragments (the node does not check Reed-Solomon consistency)."""
    return [os.urandom(FRAGMENT_SIZE) for _ in range(TOTAL_SHARDS)]


@pytest.fixture(scope="module")
def fragment_hashes(fragments: list[bytes]) -> list[str]:
    return [sha256_hex(f) for f in fragments]


@dataclass
class Net:
    path: Path
    user: ChainClient  # signs as USER

    def as_(self, account: Account) -> ChainClient:
        return EmbeddedLedger(self.path, account)

    def declare(self, hashes: list[str], name: str = "f.bin") -> str:
        """Declare a 1-segment deal with these 12 fragment hashes; returns its FID."""
        segment_hash = sha256_hex(os.urandom(32))  # unique FID per deal
        fid = merkle_root([segment_hash])
        self.user.upload_declaration(
            fid,
            [SegmentSpec(segment_hash, tuple(hashes))],
            UserBrief(USER.address, name, "node-tests", "main"),
            3 * FRAGMENT_SIZE,
        )
        return fid


@pytest.fixture
def net(tmp_path: Path) -> Net:
    path = tmp_path / "chain.sqlite3"
    user = EmbeddedLedger(path, USER)
    user.fund(USER.address, 10_000 * TOKEN)
    # the network needs certified space before a territory can be minted
    EmbeddedLedger(path, account_from_secret("//NodeTestSeed")).register_storage_node(
        "http://127.0.0.1:9", 64 * GIB
    )
    user.mint_territory("main", 8, 30)
    user.authorize(GATEWAY.address)
    return Net(path, user)


@asynccontextmanager
async def running_node(
    net: Net, directory: Path, account: Account = NODE, **options: object
) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(
                serve_node,
                directory,
                account,
                net.as_(account),
                "127.0.0.1",
                options.pop("port", 0),
                100 * GIB,
                **options,
            )
        )
        try:
            yield endpoint
        finally:
            nursery.cancel_scope.cancel()


async def in_thread(fn, *args):  # noqa: ANN001, ANN202 - tiny test helper
    return await trio.to_thread.run_sync(partial(fn, *args))


async def wait_for(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001
    with trio.fail_after(timeout):
        while not await in_thread(predicate):
            await trio.sleep(0.05)


def reported(chain: ChainClient, fid: str) -> set[tuple[int, str]]:
    deal = chain.deal(fid)
    if deal is None:
        return set()
    return {(c.index, c.miner) for c in deal.complete_list}


def signed(account: Account, method: str, fid: str, fragment: str, **kw: int) -> dict[str, str]:
    headers = sign_request(account, method, fid, fragment, **kw)
    headers["Fid"] = fid
    headers["Fragment"] = fragment
    return headers


def multipart(fragment_hash: str, data: bytes, boundary: str = "b0undary7x") -> tuple[dict, bytes]:
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{fragment_hash}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


async def raw_request(endpoint: str, request: str) -> str:
    """Send bytes as they are (no client-side path normalization); the status line back."""
    stream = await trio.open_tcp_stream("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
    try:
        await stream.send_all(request.encode("latin-1"))
        answer = b""
        with trio.move_on_after(10):
            while b"\r\n" not in answer:
                piece = await stream.receive_some(4096)
                if not piece:
                    break
                answer += piece
    finally:
        await stream.aclose()
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- store and report and read -------------------------------------------------------------


async def test_put_stores_reports_and_reads_back(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    fid = await in_thread(net.declare, fragment_hashes)
    node_dir = tmp_path / "node"
    async with running_node(net, node_dir) as endpoint, NodeClient(GATEWAY) as client:
        assert endpoint.startswith("http://127.0.0.1:")
        registered = await in_thread(net.user.storage_node, NODE.address)
        assert registered is not None and registered.endpoint == endpoint

        await client.put_fragment(endpoint, fid, fragment_hashes[0], fragments[0])
        store = FragmentStore(node_dir)
        assert store.has(fid, fragment_hashes[0])
        assert store.path(fid, fragment_hashes[0]).read_bytes() == fragments[0]
        # the report is sent before the PUT returns when the chain is quick
        assert reported(net.user, fid) == {(1, NODE.address)}

        whole = await client.get_fragment(endpoint, fid, fragment_hashes[0])
        assert whole == fragments[0]
        part = await client.get_fragment(endpoint, fid, fragment_hashes[0], (1000, 5000))
        assert part == fragments[0][1000:5000]

        # the raw protocol: 206 with Content-Range, open-ended and suffix ranges
        async with httpx.AsyncClient(base_url=endpoint) as http:
            for range_header, expected, content_range in [
                ("bytes=10-19", fragments[0][10:20], f"bytes 10-19/{FRAGMENT_SIZE}"),
                (f"bytes={FRAGMENT_SIZE - 5}-", fragments[0][-5:], None),
                ("bytes=-7", fragments[0][-7:], None),
            ]:
                headers = signed(GATEWAY, "GET", fid, fragment_hashes[0])
                headers["Range"] = range_header
                reply = await http.get("/fragment", headers=headers)
                assert reply.status_code == 206, reply.text
                assert reply.content == expected
                if content_range:
                    assert reply.headers["content-range"] == content_range
            reply = await http.get(
                "/fragment", headers=signed(USER, "GET", fid, fragment_hashes[0])
            )
            assert reply.status_code == 200
            assert reply.headers["content-length"] == str(FRAGMENT_SIZE)
            assert hashlib.sha256(reply.content).hexdigest() == fragment_hashes[0]

            status = (await http.get("/status")).json()
        assert status["account"] == NODE.address
        assert status["endpoint"] == endpoint
        assert status["fragments"] == 1
        assert status["bytes"] == FRAGMENT_SIZE
        # the client's /status helper (used by the gateway's probe)
        assert (await client.status(endpoint))["fragments"] == 1


async def test_raw_octet_stream_body_and_user_as_signer(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    fid = await in_thread(net.declare, fragment_hashes)
    async with running_node(net, tmp_path / "node") as endpoint:
        async with httpx.AsyncClient(base_url=endpoint) as http:
            headers = signed(USER, "PUT", fid, fragment_hashes[3])
            headers["Content-Type"] = "application/octet-stream"
            reply = await http.put("/fragment", headers=headers, content=fragments[3])
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"code": 200, "msg": "ok"}
        assert reported(net.user, fid) == {(4, NODE.address)}


async def test_deal_completes_and_owner_reads(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    """A node reports once per deal; after 12 reports only File[fid] authorizes reads."""
    fid = await in_thread(net.declare, fragment_hashes)
    others = [account_from_secret(f"//NodeTestOther{i}") for i in range(1, TOTAL_SHARDS)]
    for index, other in enumerate(others, start=2):
        chain = net.as_(other)
        await in_thread(chain.register_storage_node, f"http://127.0.0.1:{index}", GIB)
        await in_thread(chain.transfer_report, index, fid)
    assert await in_thread(net.user.file, fid) is None
    async with running_node(net, tmp_path / "node") as endpoint, NodeClient(GATEWAY) as client:
        await client.put_fragment(endpoint, fid, fragment_hashes[0], fragments[0])
        info = await in_thread(net.user.file, fid)
        assert info is not None and info.segments[0].fragments[0].miner == NODE.address
        assert await client.get_fragment(endpoint, fid, fragment_hashes[0]) == fragments[0]
        async with NodeClient(STRANGER) as stranger:
            with pytest.raises(NodeRefused) as info_:
                await stranger.get_fragment(endpoint, fid, fragment_hashes[0])
            assert info_.value.status == 403


# ---- refusals --------------------------------------------------------------------------------


async def test_every_refusal_is_a_clean_4xx(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    fid = await in_thread(net.declare, fragment_hashes)
    h0, h1 = fragment_hashes[0], fragment_hashes[1]
    async with running_node(net, tmp_path / "node") as endpoint:
        async with httpx.AsyncClient(base_url=endpoint, timeout=30) as http:

            async def put(headers: dict, body: bytes, fragment: str = h1) -> httpx.Response:
                content_type, payload = multipart(fragment, body)
                return await http.put(
                    "/fragment", headers={**headers, **content_type}, content=payload
                )

            async def expect(reply: httpx.Response, status: int, words: str = "") -> None:
                assert reply.status_code == status, (reply.status_code, reply.text)
                body = reply.json()
                assert body["code"] == status
                assert words.lower() in body["msg"].lower(), body

            # signature, freshness, replay: 401
            bad = signed(GATEWAY, "PUT", fid, h1)
            bad["Signature"] = "0x" + "11" * 64
            await expect(await put(bad, fragments[1]), 401, "signature")
            forged = signed(GATEWAY, "PUT", fid, h1)
            forged["Account"] = STRANGER.address
            await expect(await put(forged, fragments[1]), 401, "signature")
            stale = signed(GATEWAY, "PUT", fid, h1, timestamp_ms=int(time.time() * 1000) - 600_000)
            await expect(await put(stale, fragments[1]), 401, "stale")
            future = signed(GATEWAY, "PUT", fid, h1, timestamp_ms=int(time.time() * 1000) + 600_000)
            await expect(await put(future, fragments[1]), 401, "future")
            wrong_request = signed(GATEWAY, "PUT", fid, h0)
            wrong_request["Fragment"] = h1  # signed for fragment 0, used for fragment 1
            await expect(await put(wrong_request, fragments[1]), 401, "another request")
            as_get = signed(GATEWAY, "GET", fid, h1)
            await expect(await put(as_get, fragments[1]), 401, "another request")
            unsigned = {"Fid": fid, "Fragment": h1}
            await expect(await put(unsigned, fragments[1]), 401, "missing")

            first = signed(GATEWAY, "PUT", fid, h1)
            await expect(await put(first, fragments[1]), 200)
            await expect(await put(first, fragments[1]), 401, "replay")

            # body checks: 400 / 413
            await expect(
                await put(signed(GATEWAY, "PUT", fid, h0), fragments[0][:-1], h0), 400, "bytes"
            )
            await expect(await put(signed(GATEWAY, "PUT", fid, h0), b"", h0), 400, "bytes")
            await expect(await put(signed(GATEWAY, "PUT", fid, h0), fragments[0] + b"x", h0), 413)
            await expect(await put(signed(GATEWAY, "PUT", fid, h0), fragments[1], h0), 400, "hash")
            wrong_name = await put(
                signed(GATEWAY, "PUT", fid, h0), fragments[0], fragment_hashes[5]
            )
            await expect(wrong_name, 400, "filename")
            headers = signed(GATEWAY, "PUT", fid, h0)
            headers["Content-Type"] = "multipart/form-data; boundary=zzz"
            await expect(
                await http.put("/fragment", headers=headers, content=b"garbage" * 100), 400
            )
            headers = signed(GATEWAY, "PUT", fid, h0)
            headers["Content-Type"] = "multipart/form-data; boundary=b0undary7x"
            truncated = multipart(h0, fragments[0])[1][: FRAGMENT_SIZE // 2]
            await expect(await http.put("/fragment", headers=headers, content=truncated), 400)
            headers = signed(GATEWAY, "PUT", fid, h0)
            headers["Content-Type"] = "text/plain"
            await expect(await http.put("/fragment", headers=headers, content=b"x"), 415)
            headers = signed(GATEWAY, "PUT", fid, h0)
            headers["Content-Type"] = "multipart/form-data; boundary=b0undary7x"
            no_file = (
                b'--b0undary7x\r\nContent-Disposition: form-data; name="other"\r\n\r\nx'
                b"\r\n--b0undary7x--\r\n"
            )
            await expect(await http.put("/fragment", headers=headers, content=no_file), 400, "file")

            # the deal and the signer: 403 / 404
            not_in_deal = hashlib.sha256(b"not in the deal").hexdigest()
            await expect(
                await put(signed(GATEWAY, "PUT", fid, not_in_deal), b"x", not_in_deal),
                403,
                "not part",
            )
            other_fid = "ee" * 32
            await expect(
                await put(signed(GATEWAY, "PUT", other_fid, h0), fragments[0], h0), 404, "deal"
            )
            await expect(
                await put(signed(STRANGER, "PUT", fid, h0), fragments[0], h0), 403, "signer"
            )

            # reads: 403 / 404 / 416
            reply = await http.get("/fragment", headers=signed(STRANGER, "GET", fid, h1))
            await expect(reply, 403)
            reply = await http.get("/fragment", headers=signed(GATEWAY, "GET", fid, h0))
            await expect(reply, 404, "not held")
            reply = await http.get("/fragment", headers=signed(GATEWAY, "GET", other_fid, h0))
            await expect(reply, 404)
            get_once = signed(GATEWAY, "GET", fid, h1)
            get_once["Range"] = "bytes=0-0"
            assert (await http.get("/fragment", headers=get_once)).status_code == 206
            await expect(await http.get("/fragment", headers=get_once), 401, "replay")
            for bad_range in [
                f"bytes={FRAGMENT_SIZE}-",
                "bytes=5-2",
                "bytes=-0",
                "items=0-1",
                "bytes=0-1,4-5",
                "bytes=x-",
            ]:
                headers = signed(GATEWAY, "GET", fid, h1)
                headers["Range"] = bad_range
                reply = await http.get("/fragment", headers=headers)
                await expect(reply, 416)
                assert reply.headers["content-range"] == f"bytes */{FRAGMENT_SIZE}"

            # malformed identifiers and paths: 4xx, nothing touched outside the store
            for bad_fid in [
                "../../etc/passwd",
                "..",
                fid.upper(),
                fid[:-1],
                fid + "0",
                "",
                "/" + fid[1:],
            ]:
                headers = signed(GATEWAY, "PUT", bad_fid, h0)
                headers["Fid"] = bad_fid
                await expect(await put(headers, fragments[0], h0), 400)
                headers = signed(GATEWAY, "GET", fid, h0)
                headers["Fragment"] = bad_fid
                await expect(await http.get("/fragment", headers=headers), 400)
            for path in [
                "/",
                "/fragment/",
                "/fragment/../fragment",
                "/../../etc/passwd",
                "/%2e%2e/%2e%2e/etc/passwd",
                "/fragment%00",
                "/fragment?fid=../../x",
                "//fragment",
            ]:
                status_line = await raw_request(endpoint, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
                assert status_line.startswith("HTTP/1.1 4"), (path, status_line)
            await expect(await http.delete("/fragment"), 405)
            await expect(await http.post("/status"), 405)
            await expect(await http.patch("/nope"), 404)
            # a declared length far beyond a fragment is refused before any body is read
            headers = signed(GATEWAY, "PUT", fid, h0)
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            status_line = await raw_request(
                endpoint,
                f"PUT /fragment HTTP/1.1\r\nHost: x\r\n{head}"
                f"Content-Type: application/octet-stream\r\nContent-Length: {FRAGMENT_SIZE * 4}\r\n\r\n",
            )
            assert status_line.startswith("HTTP/1.1 413"), status_line
            # junk that is not even valid HTTP
            status_line = await raw_request(endpoint, "\x00\xff garbage \r\n\r\n")
            assert status_line == "" or status_line.startswith("HTTP/1.1 4"), status_line
            # a PUT whose header values carry traversal attempts and odd bytes
            status_line = await raw_request(
                endpoint,
                f"PUT /fragment HTTP/1.1\r\nHost: x\r\nFid: {fid[:60]}/../\r\n"
                f"Fragment: {h0}\r\nContent-Length: 0\r\n\r\n",
            )
            assert status_line.startswith("HTTP/1.1 400"), status_line

            # still alive, and nothing partial or stray was stored
            status = (await http.get("/status")).json()
            assert status["fragments"] == 1
        assert not list((tmp_path / "node").rglob("*.tmp"))
        assert not (tmp_path / "etc").exists()


async def test_client_maps_errors(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    fid = await in_thread(net.declare, fragment_hashes)
    node_dir = tmp_path / "node"
    async with running_node(net, node_dir) as endpoint:
        async with NodeClient(STRANGER) as stranger:
            with pytest.raises(NodeRefused) as info:
                await stranger.put_fragment(endpoint, fid, fragment_hashes[2], fragments[2])
            assert info.value.status == 403 and "signer" in str(info.value)
        async with NodeClient(GATEWAY, timeout=5) as client:
            with pytest.raises(NodeRefused) as info:
                await client.put_fragment(endpoint, fid, fragment_hashes[2], fragments[3])
            assert info.value.status == 400
            await client.put_fragment(endpoint, fid, fragment_hashes[2], memoryview(fragments[2]))
            # a node serving corrupted bytes is caught by the client's verification
            store = FragmentStore(node_dir)
            path = store.path(fid, fragment_hashes[2])
            corrupted = bytearray(path.read_bytes())
            corrupted[12345] ^= 0xFF
            path.write_bytes(corrupted)
            with pytest.raises(IntegrityError):
                await client.get_fragment(endpoint, fid, fragment_hashes[2])
            # ranges are returned unverified (documented)
            assert await client.get_fragment(
                endpoint, fid, fragment_hashes[2], (12345, 12346)
            ) == bytes([corrupted[12345]])
            with pytest.raises(NodeRefused) as info:
                await client.get_fragment(endpoint, fid, fragment_hashes[4])
            assert info.value.status == 404
            # the zero fragment never needs a request
            assert await client.get_fragment("", fid, ZERO_FRAGMENT_HASH) == bytes(FRAGMENT_SIZE)
            # nobody listening: temporary
            with pytest.raises(NodeUnavailable):
                await client.put_fragment(
                    f"127.0.0.1:{free_port()}", fid, fragment_hashes[2], fragments[2]
                )


# ---- zero fragments, identical columns, retries, restarts --------------------------------------


async def test_zero_file_nodes_report_distinct_columns(net: Net, tmp_path: Path) -> None:
    """An all-zero file has one hash in all 12 columns: each node claims another one."""
    fid = await in_thread(net.declare, [ZERO_FRAGMENT_HASH] * TOTAL_SHARDS)
    async with (
        running_node(net, tmp_path / "a", NODE) as endpoint_a,
        running_node(net, tmp_path / "b", NODE2) as endpoint_b,
        NodeClient(GATEWAY) as client,
    ):
        await client.put_fragment(endpoint_a, fid, ZERO_FRAGMENT_HASH, None)
        await client.put_fragment(endpoint_b, fid, ZERO_FRAGMENT_HASH, bytes(FRAGMENT_SIZE))
        assert reported(net.user, fid) == {(1, NODE.address), (2, NODE2.address)}
        # a node reports once per deal; sending it more changes nothing
        await client.put_fragment(endpoint_a, fid, ZERO_FRAGMENT_HASH, None)
        assert reported(net.user, fid) == {(1, NODE.address), (2, NODE2.address)}
        assert await client.get_fragment(endpoint_a, fid, ZERO_FRAGMENT_HASH) == bytes(
            FRAGMENT_SIZE
        )
        async with httpx.AsyncClient(base_url=endpoint_a) as http:
            headers = signed(GATEWAY, "GET", fid, ZERO_FRAGMENT_HASH)
            headers["Range"] = "bytes=5-9"
            reply = await http.get("/fragment", headers=headers)
            assert reply.status_code == 206 and reply.content == bytes(5)
            status = (await http.get("/status")).json()
            assert status["fragments"] == 0  # the zero fragment is never stored
            # zero hash with non-zero bytes is refused
            headers = signed(GATEWAY, "PUT", fid, ZERO_FRAGMENT_HASH)
            content_type, body = multipart(ZERO_FRAGMENT_HASH, b"\x01" * FRAGMENT_SIZE)
            reply = await http.put("/fragment", headers={**headers, **content_type}, content=body)
            assert reply.status_code == 400


class FlakyChain:
    """The real ledger, with the first `failures` transfer reports failing temporarily."""

    def __init__(self, inner: ChainClient, failures: int) -> None:
        self._inner = inner
        self.failures = failures
        self.account = inner.account

    def transfer_report(self, index: int, fid: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ChainUnavailable("chain endpoint not answering (test)")
        self._inner.transfer_report(index, fid)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


async def test_failed_report_is_retried(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    fid = await in_thread(net.declare, fragment_hashes)
    flaky = FlakyChain(net.as_(NODE), failures=2)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(
                serve_node,
                tmp_path / "node",
                NODE,
                flaky,  # type: ignore[arg-type]
                "127.0.0.1",
                0,
                100 * GIB,
                retry_interval=0.2,
            )
        )
        async with NodeClient(GATEWAY) as client:
            await client.put_fragment(endpoint, fid, fragment_hashes[6], fragments[6])
        assert reported(net.user, fid) == set()
        await wait_for(lambda: reported(net.user, fid) == {(7, NODE.address)})
        assert flaky.failures == 0
        nursery.cancel_scope.cancel()


async def test_restart_keeps_fragments_refuses_replays_and_reports_late(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    fid = await in_thread(net.declare, fragment_hashes)
    node_dir = tmp_path / "node"
    flaky = FlakyChain(net.as_(NODE), failures=1000)  # the chain is down while the PUT lands
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            partial(serve_node, node_dir, NODE, flaky, "127.0.0.1", 0, 100 * GIB)  # type: ignore[arg-type]
        )
        async with NodeClient(GATEWAY) as client:
            await client.put_fragment(endpoint, fid, fragment_hashes[8], fragments[8])
        get_headers = signed(GATEWAY, "GET", fid, fragment_hashes[8])
        async with httpx.AsyncClient(base_url=endpoint) as http:
            assert (await http.get("/fragment", headers=get_headers)).status_code == 200
        nursery.cancel_scope.cancel()
    assert reported(net.user, fid) == set()
    # a crash mid-upload leaves a temporary file: cleaned on start
    stray = FragmentStore(node_dir).path(fid, fragment_hashes[9]).parent / ".deadbeef.0000.tmp"
    stray.write_bytes(b"partial")

    async with running_node(net, node_dir) as endpoint:  # chain reachable again
        # the owed report is found on start-up
        await wait_for(lambda: reported(net.user, fid) == {(9, NODE.address)})
        assert not stray.exists()
        async with httpx.AsyncClient(base_url=endpoint) as http:
            replay = await http.get("/fragment", headers=get_headers)
            assert replay.status_code == 401 and "replay" in replay.json()["msg"]
            assert (await http.get("/status")).json()["fragments"] == 1
        async with NodeClient(GATEWAY) as client:
            assert await client.get_fragment(endpoint, fid, fragment_hashes[8]) == fragments[8]


async def test_concurrent_uploads_to_one_node(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    """Several deals' fragments at once: all stored and reported, each deal by one column."""
    fids = [await in_thread(net.declare, fragment_hashes, f"c{i}.bin") for i in range(6)]
    async with running_node(net, tmp_path / "node") as endpoint, NodeClient(GATEWAY) as client:
        async with trio.open_nursery() as nursery:
            for i, fid in enumerate(fids):
                nursery.start_soon(
                    client.put_fragment, endpoint, fid, fragment_hashes[i], fragments[i]
                )
        for i, fid in enumerate(fids):
            assert reported(net.user, fid) == {(i + 1, NODE.address)}
        status = await client.status(endpoint)
        assert status["fragments"] == 6 and status["bytes"] == 6 * FRAGMENT_SIZE


async def test_node_as_separate_process(
    net: Net, tmp_path: Path, fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    fid = await in_thread(net.declare, fragment_hashes)
    port = free_port()
    script = textwrap.dedent(
        f"""
        import logging
        from pathlib import Path
        from deossfs.chain.ledger import EmbeddedLedger
        from deossfs.keys import account_from_secret
        from deossfs.node.server import run_node

        logging.basicConfig(level=logging.INFO)
        account = account_from_secret("//NodeTestNode")
        chain = EmbeddedLedger(Path({str(net.path)!r}), account)
        run_node(Path({str(tmp_path / "proc-node")!r}), account, chain, "127.0.0.1", {port}, {100 * GIB})
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read().decode())  # type: ignore[union-attr]
            node = net.user.storage_node(NODE.address)
            return node is not None and node.endpoint == endpoint

        await wait_for(up, timeout=60)
        async with NodeClient(GATEWAY) as client:
            await client.put_fragment(endpoint, fid, fragment_hashes[10], fragments[10])
            assert reported(net.user, fid) == {(11, NODE.address)}
            assert await client.get_fragment(endpoint, fid, fragment_hashes[10]) == fragments[10]
            status = await client.status(endpoint)
            assert status["account"] == NODE.address and status["fragments"] == 1
        assert process.poll() is None
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# ---- column choice (pure unit tests, fake deal) -------------------------------------------------


def _deal(columns: list[list[str]], complete: tuple[CompleteInfo, ...] = ()) -> DealInfo:
    """A deal from its columns: columns[j][s] = fragment j of segment s."""
    segments = tuple(
        SegmentSpec(f"{s:064x}", tuple(columns[j][s] for j in range(TOTAL_SHARDS)))
        for s in range(len(columns[0]))
    )
    return DealInfo("f" * 64, 1, segments, UserBrief("u", "n", "b", "t"), complete)


def _h(n: int) -> str:
    return f"{n:064x}"


Z = ZERO_FRAGMENT_HASH


def test_reportable_column_needs_every_segment() -> None:
    deal = _deal([[_h(10 * j + s + 1) for s in range(2)] for j in range(TOTAL_SHARDS)])
    assert reportable_columns(deal, {_h(31)}, {_h(31)}, "me") == []
    assert reportable_columns(deal, {_h(31), _h(32)}, {_h(31), _h(32)}, "me") == [3]


def test_reportable_columns_prefer_data_and_skip_reported() -> None:
    zero_file = _deal([[Z] for _ in range(TOTAL_SHARDS)])
    assert reportable_columns(zero_file, set(), {Z}, "me") == list(range(TOTAL_SHARDS))
    done = (CompleteInfo(1, "a"), CompleteInfo(2, "b"))
    zero_file = _deal([[Z] for _ in range(TOTAL_SHARDS)], done)
    assert reportable_columns(zero_file, set(), {Z}, "me")[0] == 2
    # already reported by this node: nothing more
    mine = _deal([[Z] for _ in range(TOTAL_SHARDS)], (CompleteInfo(5, "me"),))
    assert reportable_columns(mine, set(), {Z}, "me") == []


def test_node_does_not_claim_a_zero_column_it_was_not_sent() -> None:
    # column 0 is all zeros (a sparse segment); this node was sent column 1's fragment
    columns = [[Z]] + [[_h(j)] for j in range(1, TOTAL_SHARDS)]
    deal = _deal(columns)
    assert reportable_columns(deal, {_h(1)}, {_h(1)}, "me") == [1]
    # the node that was sent the (empty) zero fragment gets column 0
    assert reportable_columns(deal, set(), {Z}, "me") == [0]


def test_identical_hashes_across_columns() -> None:
    # columns 2 and 7 carry the same fragment: both qualify, the first unreported wins
    columns = [[_h(j + 1)] for j in range(TOTAL_SHARDS)]
    columns[7] = columns[2]
    deal = _deal(columns)
    assert reportable_columns(deal, {_h(3)}, {_h(3)}, "me") == [2, 7]
    taken = _deal(columns, (CompleteInfo(3, "other"),))
    assert reportable_columns(taken, {_h(3)}, {_h(3)}, "me") == [7]


# ---- the fragment store ------------------------------------------------------------------------


def test_store_is_atomic_verified_and_refuses_bad_names(tmp_path: Path) -> None:
    from deossfs.errors import InvalidInput, NotFound

    store = FragmentStore(tmp_path)
    fid = "ab" * 32
    data = os.urandom(FRAGMENT_SIZE)
    digest = sha256_hex(data)
    for bad in ["../" * 10 + "etc", "AB" * 32, "ab" * 31, "ab" * 32 + "/", "", "g" * 64]:
        with pytest.raises(InvalidInput):
            store.path(bad, digest)
        with pytest.raises(InvalidInput):
            store.has(fid, bad)
        with pytest.raises(InvalidInput):
            store.open_writer(bad, digest)

    # an exception inside the writer leaves nothing behind
    with pytest.raises(RuntimeError), store.open_writer(fid, digest) as writer:
        writer.write(data[:1000])
        raise RuntimeError("sender went away")
    assert not store.has(fid, digest)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))

    # bytes that do not match the name are never committed (the last byte flipped: a
    # random last byte that happened to be the one written in its place made this pass
    # unchanged bytes, once in 256 runs)
    with pytest.raises(IntegrityError), store.open_writer(fid, digest) as writer:
        writer.write(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert not store.has(fid, digest)

    with store.open_writer(fid, digest) as writer:
        writer.write_many([memoryview(data)[:3], memoryview(data)[3:]])
    assert store.has(fid, digest)
    assert store.read(fid, digest) == data
    assert store.read(fid, digest, 5, 10) == data[5:10]
    assert store.fragments_of(fid) == {digest}
    assert store.fids() == [fid]
    assert store.stats() == (1, FRAGMENT_SIZE)
    assert FragmentStore(tmp_path).stats() == (1, FRAGMENT_SIZE)  # rescanned on open

    # the zero fragment: always held, reads as zeros, never stored
    assert store.has(fid, ZERO_FRAGMENT_HASH)
    assert store.read(fid, ZERO_FRAGMENT_HASH, 0, 16) == bytes(16)
    with pytest.raises(InvalidInput):
        store.open_writer(fid, ZERO_FRAGMENT_HASH)

    assert store.delete(fid, digest)
    assert not store.delete(fid, digest)
    assert store.stats() == (0, 0)
    assert store.fids() == []
    with pytest.raises(NotFound):
        store.read(fid, digest)


# ---- the client against scripted answers -------------------------------------------------------


@dataclass
class Scripted:
    """What the scripted node answers (per method), and what it was sent."""

    answers: dict[str, tuple[int, dict[str, str], bytes]]
    seen: list[tuple[str, str, dict[str, str], bytes]]
    connections: int = 0
    hang: bool = False  # send the head of an 8 MiB answer, then nothing


@contextmanager
def scripted_node() -> Iterator[tuple[str, Scripted]]:
    """A real HTTP/1.1 server on 127.0.0.1 answering as scripted (keep-alive on)."""
    state = Scripted({}, [])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            state.connections += 1

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append((self.command, self.path, dict(self.headers), body))
            if state.hang:
                self.send_response(200)
                self.send_header("Content-Length", str(FRAGMENT_SIZE))
                self.end_headers()
                self.wfile.flush()
                time.sleep(5)
                return
            status, headers, content = state.answers[self.command]
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_PUT = answer  # noqa: N815 - http.server's naming

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def _json(payload: dict) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/json"}, json.dumps(payload).encode()


async def test_client_against_scripted_node(
    fragments: list[bytes], fragment_hashes: list[str]
) -> None:
    fid = "cd" * 32
    h0 = fragment_hashes[0]
    with scripted_node() as (node, state):
        script, seen = state.answers, state.seen
        async with NodeClient(GATEWAY, timeout=10) as client:
            # cess-miner's request shape: multipart field `file` named by the hash, signed headers
            script["PUT"] = (200, *_json({"code": 200, "msg": "ok"}))
            await client.put_fragment(node, fid, h0, fragments[0])
            method, path, headers, body = seen[-1]
            assert (method, path) == ("PUT", "/fragment")
            assert headers["Fid"] == fid and headers["Fragment"] == h0
            assert headers["Account"] == GATEWAY.address
            assert f'name="file"; filename="{h0}"'.encode() in body
            assert len(body) - FRAGMENT_SIZE < 300 and fragments[0] in body
            await client.put_fragment(f"http://{node}/", fid, ZERO_FRAGMENT_HASH, None)
            assert b"\r\n\r\n\r\n--" in seen[-1][3]  # an empty file field

            # errors hidden in a 200 (as some CESS services do), 4xx, 5xx
            script["PUT"] = (200, *_json({"code": 403, "msg": "not yours"}))
            with pytest.raises(NodeRefused) as refused:
                await client.put_fragment(node, fid, h0, fragments[0])
            assert refused.value.status == 403 and "not yours" in str(refused.value)
            script["PUT"] = (413, *_json({"code": 413, "msg": "too big"}))
            with pytest.raises(NodeRefused):
                await client.put_fragment(node, fid, h0, fragments[0])
            script["PUT"] = (503, {}, b"busy")
            with pytest.raises(NodeUnavailable):
                await client.put_fragment(node, fid, h0, fragments[0])

            # whole fragments are verified; ranges are not
            script["GET"] = (200, {}, fragments[0])
            assert await client.get_fragment(node, fid, h0) == fragments[0]
            into = memoryview(bytearray(FRAGMENT_SIZE))
            assert await client.get_fragment(node, fid, h0, into=into) is into
            assert into == fragments[0]
            script["GET"] = (200, {}, fragments[1])
            with pytest.raises(IntegrityError):
                await client.get_fragment(node, fid, h0)
            script["GET"] = (200, {}, fragments[0][:-1])
            with pytest.raises(IntegrityError):
                await client.get_fragment(node, fid, h0)
            script["GET"] = (200, {}, fragments[0] + b"x")
            with pytest.raises(IntegrityError):
                await client.get_fragment(node, fid, h0)
            script["GET"] = (206, {}, b"abcd")
            assert await client.get_fragment(node, fid, h0, (10, 14)) == b"abcd"
            assert seen[-1][2]["Range"] == "bytes=10-13"
            with pytest.raises(IntegrityError):
                await client.get_fragment(node, fid, h0, (10, 20))  # short range answer
            # a node that ignores Range sends the whole fragment: verified, then sliced
            script["GET"] = (200, {}, fragments[0])
            assert await client.get_fragment(node, fid, h0, (10, 14)) == fragments[0][10:14]
            script["GET"] = (404, *_json({"code": 404, "msg": "not held"}))
            with pytest.raises(NodeRefused) as refused:
                await client.get_fragment(node, fid, h0)
            assert refused.value.status == 404
            requests_before = len(seen)
            assert await client.get_fragment(node, fid, ZERO_FRAGMENT_HASH, (0, 3)) == bytes(3)
            assert len(seen) == requests_before
        # answers that leave the connection usable keep it: far fewer connections than requests
        assert 1 <= state.connections < len(seen) // 2


async def test_client_cancelled_mid_fragment_returns_at_once(fragment_hashes: list[str]) -> None:
    """A fragment stuck mid-answer is given up as soon as the caller cancels (not after the
    request timeout), and the receiving thread stops writing into the caller's buffer."""
    with scripted_node() as (node, state):
        state.hang = True
        async with NodeClient(GATEWAY, timeout=30) as client:
            into = memoryview(bytearray(FRAGMENT_SIZE))
            start = time.monotonic()
            with trio.move_on_after(0.5):
                await client.get_fragment(node, "cd" * 32, fragment_hashes[0], into=into)
            assert time.monotonic() - start < 3
            assert state.seen
