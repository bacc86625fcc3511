"""The gateway under stress and failure: DeOSS's "accepted" answers with kill -9 in the
middle, uploads that fail for good, clients that vanish or crawl, many accounts at once,
access lists and Ethereum signatures."""

from __future__ import annotations

import secrets
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
import trio
from eth_keys import keys as eth_keys
from eth_utils import keccak
from substrateinterface import Keypair

from deossfs.errors import AccessDenied
from deossfs.gateway.auth import eth_bound_account
from deossfs.keys import account_from_secret

from ..harness import ledger, read_only_ledger, wait_for
from .conftest import GatewayProcess, Gateways, new_user, random_bytes, raw_exchange, wait_stored

pytestmark = pytest.mark.slow


def _orders_and_files(gateways: Gateways) -> tuple[int, int]:
    """Storage orders (declared, not stored) and stored files on the devnet's ledger."""
    db = read_only_ledger(gateways.devnet)
    try:
        return (db.execute("SELECT COUNT(*) FROM deals").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM files").fetchone()[0])
    finally:
        db.close()


def test_accepted_uploads_survive_kill_9_of_the_gateway(gateways: Gateways, tmp_path: Path) -> None:
    gateway = gateways.extra("accepted", "gateway.respond=accepted").start()
    data = random_bytes(3 * 32 * 1024 * 1024)  # three segments: still uploading when killed
    try:
        with gateway.client(gateways.account) as client:
            fid = client.upload(data, "accepted.bin")
            state = client.state(fid)
            assert state["state"] in ("declared", "uploading", "reporting", "stored")
            gateway.kill()
            gateway.start()
            client.url = gateway.url
            client._http.base_url = httpx.URL(gateway.url)
            wait_stored(client, fid)
            assert client.download(fid) == data
            assert "resuming the upload of deoss/accepted.bin" in gateway.log()
            client.delete(fid)
    finally:
        gateway.stop()


def test_an_upload_that_fails_for_good_is_reported_not_dropped(gateways: Gateways) -> None:
    from deossfs.devnet import stop_node

    from ..harness import node_account, restart_dead

    gateway = gateways.extra("failing", "gateway.respond=accepted", "gateway.retry_seconds=0.2",
                             "gateway.upload_attempts=2").start()
    nodes = gateways.devnet.nodes()
    try:
        nobody = [account_from_secret(Keypair.generate_mnemonic()).address for _ in range(12)]
        with gateway.client(gateways.account) as client:
            # pinned to 12 nodes that do not exist: refused before anything is declared
            refused = httpx.put(f"{gateway.url}/object/nowhere.bin",
                                headers=[*client.sign().items()] + [("Miner", m) for m in nobody],
                                content=b"n" * 50_000)
            assert refused.status_code == 503 and "usable" in refused.json()["msg"]
            # pinned to 12 nodes that are up: accepted once declared (nodes are measured
            # and chosen before that); one of them dies before it gets its fragment of the
            # second segment, and no other node may take its column
            pinned = [node_account(n) for n in nodes[:12]]
            answer = httpx.put(f"{gateway.url}/object/pinned.bin",
                               headers=[*client.sign().items()] + [("Miner", m) for m in pinned],
                               content=b"p" * (64 * 1024 * 1024), timeout=120)
            stop_node(nodes[0], signal.SIGKILL)
            fid = answer.json()["data"]["fid"]

            def failed() -> dict | None:
                state = client.state(fid)
                return state if state["state"] == "failed" else None

            state = wait_for(failed, 120, "the upload to be reported failed", interval=0.3)
            assert "usable" in state["error"] and state["name"] == "pinned.bin"
            gateway.stop()
            gateway.start()  # a restart keeps reporting it
            client._http.base_url = httpx.URL(gateway.url)
            assert client.state(fid)["state"] == "failed"
    finally:
        gateway.stop()
        restart_dead(gateways.devnet)


def test_a_client_gone_mid_upload_leaves_nothing(gateway: GatewayProcess, gateways: Gateways) -> None:
    before = _orders_and_files(gateways)
    with gateway.client(gateways.account) as client:
        head = "".join(f"{k}: {v}\r\n" for k, v in client.sign().items())
    host, port = httpx.URL(gateway.url).host, httpx.URL(gateway.url).port
    with socket.create_connection((host, port)) as sock:
        sock.sendall((f"PUT /object/vanishing.bin HTTP/1.1\r\nHost: x\r\n{head}"
                      f"Content-Length: {50 * 1024 * 1024}\r\n\r\n").encode())
        sock.sendall(b"v" * 10 * 1024 * 1024)
    staging = gateway.dir / "workspace" / "gateway" / "staging"
    wait_for(lambda: "PUT /object/vanishing.bin" in gateway.log(), 30, "the abandoned request's log line")
    assert " 499 " in [line for line in gateway.log().splitlines() if "vanishing.bin" in line][-1]
    wait_for(lambda: not any(staging.iterdir()), 30, "the staging area to be empty")
    assert _orders_and_files(gateways) == before
    assert gateway.alive


def test_slow_clients_are_cut_off(gateways: Gateways) -> None:
    gateway = gateways.extra("slow", "gateway.header_timeout=2", "gateway.body_timeout=2").start()
    try:
        host, port = httpx.URL(gateway.url).host, httpx.URL(gateway.url).port
        # headers that never end: the connection is closed
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert sock.recv(100) == b""
            assert time.monotonic() - started < 20
        # a body that stalls: 408 with a reason
        with gateway.client(gateways.account) as client:
            head = "".join(f"{k}: {v}\r\n" for k, v in client.sign().items())
        answer = raw_exchange(gateway.url, (f"PUT /object/stalled.bin HTTP/1.1\r\nHost: x\r\n{head}"
                                            "Content-Length: 100000\r\n\r\n").encode() + b"s" * 1000)
        assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer
        assert httpx.get(f"{gateway.url}/version").status_code == 200
    finally:
        gateway.stop()


def test_a_thousand_requests_from_twenty_accounts(gateway: GatewayProcess, gateways: Gateways) -> None:
    users = [new_user(gateways.devnet, authorize=gateways.account.address, territory_gib=0)
             for _ in range(20)]
    clients = [gateway.client(user) for user in users]
    statuses: list[int] = []

    async def main() -> None:
        limit = trio.CapacityLimiter(200)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120,
                                     limits=httpx.Limits(max_connections=200)) as http:
            async def one(index: int) -> None:
                client = clients[index % len(clients)]
                async with limit:
                    answer = await http.get("/bucket", headers=client.sign())
                statuses.append(answer.status_code)

            async with trio.open_nursery() as nursery:
                for index in range(1000):
                    nursery.start_soon(one, index)

    trio.run(main)
    for client in clients:
        client.close()
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
    assert gateway.alive


def test_per_account_limits_keep_one_account_from_starving_others(gateways: Gateways) -> None:
    gateway = gateways.extra("limits", "gateway.max_uploads_per_account=1").start()
    try:
        greedy = gateways.account
        other = new_user(gateways.devnet, authorize=gateways.account.address)
        with gateway.client(greedy) as first, gateway.client(other) as second:
            host, port = httpx.URL(gateway.url).host, httpx.URL(gateway.url).port
            head = "".join(f"{k}: {v}\r\n" for k, v in first.sign().items())
            with socket.create_connection((host, port)) as sock:
                # one upload of the greedy account under way (its body still arriving)
                sock.sendall((f"PUT /object/slow.bin HTTP/1.1\r\nHost: x\r\n{head}"
                              "Content-Length: 1000000\r\n\r\n").encode() + b"g" * 1000)
                wait_for(lambda: any((gateway.dir / "workspace" / "gateway" / "staging").iterdir()),
                         30, "the first upload to be receiving")
                answer = httpx.put(f"{gateway.url}/object/second.bin", headers=first.sign(),
                                   content=b"x" * 1000)
                assert answer.status_code == 429 and answer.headers["retry-after"]
                assert "under way" in answer.json()["msg"]
                fid = second.put_object("unaffected.bin", b"y" * 1000)  # another account goes on
                second.delete(fid)
    finally:
        gateway.stop()


def test_the_access_list_refuses_a_blocked_account(gateways: Gateways) -> None:
    blocked = new_user(gateways.devnet, authorize=gateways.account.address)
    gateway = gateways.extra("blacklist", f"access.accounts={blocked.address}").start()
    try:
        with gateway.client(blocked) as client, pytest.raises(AccessDenied, match="blocked"):
            client.put_object("blocked.bin", b"b" * 100)
        with gateway.client(gateways.account) as own:  # the gateway's own account always passes
            own.delete(own.put_object("own.bin", b"o" * 100))
    finally:
        gateway.stop()


def _eth_headers(private_key: eth_keys.PrivateKey, account: str, message: str | None = None) -> dict:
    message = message or f"{int(time.time())}:{secrets.token_hex(4)}"
    payload = message.encode()
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(payload)).encode() + payload)
    raw = private_key.sign_msg_hash(digest).to_bytes()
    signature = raw[:64] + bytes([raw[64] + 27])
    return {"Account": account, "Message": message, "Signature": "0x" + signature.hex(),
            "EthAcc": private_key.public_key.to_checksum_address()}


def test_ethacc_acts_only_for_the_account_it_is_bound_to(gateway: GatewayProcess, gateways: Gateways) -> None:
    key = eth_keys.PrivateKey(secrets.token_bytes(32))
    bound = eth_bound_account(key.public_key.to_checksum_address())
    # the bound account authorizes the gateway on the chain (funded to pay for it)
    admin = ledger(gateways.devnet)
    try:
        admin.fund(bound, 10**24)
    finally:
        admin.close()
    with httpx.Client(base_url=gateway.url) as http:
        # DeOSS's hole: an Ethereum key acting for someone else's account
        victim = gateways.account.address
        answer = http.get("/bucket", headers=_eth_headers(key, victim))
        assert answer.status_code == 401 and "not bound" in answer.json()["msg"]
        # for its own (bound) account it is checked as any request: not authorized yet
        answer = http.get("/bucket", headers=_eth_headers(key, bound))
        assert answer.status_code == 403 and "authorize" in answer.json()["msg"]
        # a signature by another key for the claimed EthAcc
        other = eth_keys.PrivateKey(secrets.token_bytes(32))
        forged = _eth_headers(other, bound)
        forged["EthAcc"] = key.public_key.to_checksum_address()
        assert http.get("/bucket", headers=forged).status_code == 401
