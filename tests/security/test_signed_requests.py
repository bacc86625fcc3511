"""Signed requests to a real storage node process, over HTTP: stale, replayed, redirected
or borrowed signatures are refused; one account cannot act for another."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deossfs.chain.interface import SegmentSpec, UserBrief
from deossfs.devnet import start_node, wait_ready
from deossfs.keys import Account, create_key_file
from deossfs.p2p.signing import sign_request
from deossfs.processing.layout import FRAGMENT_SIZE

from ..conftest import Devnet, deossfs
from ..harness import account, kill, ledger, nodes_by_account


@pytest.fixture(scope="module")
def stored(secure_devnet: Devnet, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A file of the devnet's user, and where its fragment 0 of segment 0 lives."""
    src = tmp_path_factory.mktemp("signed") / "owned.bin"
    src.write_bytes(os.urandom(2_000_000))
    deossfs("put", "-q", str(src), "sec/owned.bin", config=secure_devnet.config)
    stat = json.loads(deossfs("stat", "--json", "sec/owned.bin", config=secure_devnet.config).stdout)
    fragment = stat["segments"][0]["fragments"][0]
    return {"fid": stat["fid"], "hash": fragment["hash"], "miner": fragment["miner"],
            "endpoint": fragment["endpoint"]}


@pytest.fixture(scope="module")
def mallory(secure_devnet: Devnet, tmp_path_factory: pytest.TempPathFactory) -> Account:
    """Another funded account, with a valid key of its own."""
    who = create_key_file(tmp_path_factory.mktemp("mallory") / "key.json")
    chain = ledger(secure_devnet)
    try:
        chain.fund(who.address, 10**24)
    finally:
        chain.close()
    return who


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, trust_env=False) as client:
        yield client


def get(http: httpx.Client, stored: dict, headers: dict[str, str], fid: str | None = None,
        fragment: str | None = None) -> httpx.Response:
    headers = {**headers, "Fid": fid or stored["fid"], "Fragment": fragment or stored["hash"]}
    return http.get(stored["endpoint"] + "/fragment", headers=headers)


def signed(who: Account, stored: dict, method: str = "GET", **kw: int) -> dict[str, str]:
    return sign_request(who, method, stored["fid"], stored["hash"], **kw)


def test_a_fresh_signed_request_is_served_once(secure_devnet: Devnet, stored: dict,
                                              http: httpx.Client) -> None:
    headers = signed(account(secure_devnet), stored)
    first = get(http, stored, headers)
    assert first.status_code == 200
    assert hashlib.sha256(first.content).hexdigest() == stored["hash"]
    again = get(http, stored, headers)
    assert again.status_code == 401 and "replayed" in again.json()["msg"]


def test_stale_and_future_requests_are_refused(secure_devnet: Devnet, stored: dict,
                                               http: httpx.Client) -> None:
    now = time.time_ns() // 1_000_000
    for offset, word in ((-10 * 60_000, "stale"), (10 * 60_000, "future")):
        response = get(http, stored, signed(account(secure_devnet), stored, timestamp_ms=now + offset))
        assert response.status_code == 401 and word in response.json()["msg"], response.text


def test_a_replay_is_refused_after_the_node_restarts(secure_devnet: Devnet, stored: dict,
                                                     http: httpx.Client) -> None:
    headers = signed(account(secure_devnet), stored)
    assert get(http, stored, headers).status_code == 200
    node = nodes_by_account(secure_devnet)[stored["miner"]]
    kill(node)
    restarted = start_node(secure_devnet.config, node)
    wait_ready([restarted])
    stored["endpoint"] = restarted.endpoint  # a new port if its old one was taken meanwhile
    response = get(http, stored, headers)
    assert response.status_code == 401 and "replayed" in response.json()["msg"]


def test_a_signature_is_bound_to_its_request(secure_devnet: Devnet, stored: dict,
                                             http: httpx.Client) -> None:
    owner = account(secure_devnet)
    other_fid = hashlib.sha256(b"another file").hexdigest()
    cases = [
        (sign_request(owner, "PUT", stored["fid"], stored["hash"]), {}),  # signed for a PUT
        (sign_request(owner, "GET", other_fid, stored["hash"]), {}),  # for another file
        (sign_request(owner, "GET", stored["fid"], other_fid), {}),  # for another fragment
        (signed(owner, stored), {"Fid": other_fid}),  # used for another file
    ]
    for headers, override in cases:
        response = get(http, stored, headers, fid=override.get("Fid"))
        assert response.status_code == 401, (headers["Message"], response.text)


def test_one_account_cannot_act_for_another(secure_devnet: Devnet, stored: dict, mallory: Account,
                                           http: httpx.Client, tmp_path: Path) -> None:
    owner = account(secure_devnet)
    # Mallory's own valid signature: she owns nothing here
    response = get(http, stored, signed(mallory, stored))
    assert response.status_code == 403, response.text
    # Mallory's signature under the owner's name: the signature does not verify
    forged = signed(mallory, stored)
    forged["Account"] = owner.address
    response = get(http, stored, forged)
    assert response.status_code == 401 and "signature" in response.json()["msg"]
    # the owner's signature with Mallory's name on it: same
    borrowed = signed(owner, stored)
    borrowed["Account"] = mallory.address
    assert get(http, stored, borrowed).status_code == 401

    # Mallory cannot put fragments into the owner's storage order
    data = os.urandom(FRAGMENT_SIZE)
    fragment = hashlib.sha256(data).hexdigest()
    fid = hashlib.sha256(os.urandom(16)).hexdigest()
    spec = SegmentSpec(hashlib.sha256(os.urandom(16)).hexdigest(),
                       (fragment, *(hashlib.sha256(os.urandom(16)).hexdigest() for _ in range(11))))
    chain = ledger(secure_devnet)
    try:
        chain.upload_declaration(fid, [spec], UserBrief(owner.address, "order.bin", "sec", "default"),
                                 FRAGMENT_SIZE)
        node_dir = nodes_by_account(secure_devnet)[stored["miner"]].dir
        url = stored["endpoint"] + "/fragment"

        def put(who: Account) -> httpx.Response:
            headers = {**sign_request(who, "PUT", fid, fragment), "Fid": fid, "Fragment": fragment,
                       "Content-Type": "application/octet-stream"}
            return http.put(url, headers=headers, content=data)

        response = put(mallory)
        assert response.status_code == 403, response.text
        assert not (node_dir / "fragments" / fid[:2] / fid).exists()
        # an owner's authorization makes Mallory its gateway: then she may (positive control)
        chain.authorize(mallory.address)
        assert put(mallory).status_code == 200
        assert (node_dir / "fragments" / fid[:2] / fid / fragment).exists()
        assert get(http, stored, signed(mallory, stored)).status_code == 200
        chain.cancel_authorize(mallory.address)
        assert get(http, stored, signed(mallory, stored)).status_code == 403
    finally:
        chain.close()
