"""Signed node requests: accepted once, fresh, bound to the request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from deossfs.errors import NodeRefused
from deossfs.keys import account_from_secret
from deossfs.p2p.signing import ReplayGuard, build_message, sign_request

ALICE = account_from_secret("//Alice")
BOB = account_from_secret("//Bob")
FID = "ab" * 32
FRAG = "cd" * 32


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def refused(guard: ReplayGuard, headers: dict[str, str], method="PUT", fid=FID, frag=FRAG) -> str:
    with pytest.raises(NodeRefused) as info:
        guard.check(headers, method, fid, frag)
    assert info.value.status == 401
    return str(info.value)


def test_good_signature_accepted() -> None:
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    assert headers["Account"] == ALICE.address
    assert headers["Message"].startswith("deossfs:1:")
    assert guard.check(headers, "PUT", FID, FRAG) == ALICE.address


def test_signature_without_0x_and_lowercase_header_names() -> None:
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "GET", FID, FRAG)
    lowered = {k.lower(): v for k, v in headers.items()}
    lowered["signature"] = lowered["signature"].removeprefix("0x")
    assert guard.check(lowered, "get", FID, FRAG) == ALICE.address


def test_empty_parts_use_dash() -> None:
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "GET", "", "")
    assert headers["Message"].endswith(":GET:-:-")
    assert guard.check(headers, "GET", "", "") == ALICE.address


def test_tampered_message_refused() -> None:
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    parts = headers["Message"].split(":")
    parts[3] = "0" * 16 if parts[3] != "0" * 16 else "1" * 16  # another nonce
    headers["Message"] = ":".join(parts)
    assert "bad signature" in refused(guard, headers)


def test_tampered_signature_refused() -> None:
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    sig = bytearray.fromhex(headers["Signature"][2:])
    sig[0] ^= 1
    headers["Signature"] = sig.hex()
    refused(guard, headers)


def test_wrong_account_refused() -> None:
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    headers["Account"] = BOB.address
    assert "bad signature" in refused(guard, headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Account": ALICE.address, "Message": "x"},
        {
            "Account": "not-an-address",
            "Message": build_message("PUT", FID, FRAG),
            "Signature": "00" * 64,
        },
        {
            "Account": ALICE.address,
            "Message": build_message("PUT", FID, FRAG),
            "Signature": "zz" * 64,
        },
        {
            "Account": ALICE.address,
            "Message": build_message("PUT", FID, FRAG),
            "Signature": "00" * 10,
        },
    ],
)
def test_missing_or_malformed_headers_refused(headers: dict[str, str]) -> None:
    refused(ReplayGuard(None), headers)


def test_cess_miner_style_free_text_message_refused() -> None:
    # cess-miner accepts any signed text; we need the freshness-bound format
    guard = ReplayGuard(None)
    message = "hello world"
    headers = {
        "Account": ALICE.address,
        "Message": message,
        "Signature": ALICE.sign(message.encode()).hex(),
    }
    assert "not a deossfs:1" in refused(guard, headers)


def test_stale_message_refused() -> None:
    guard = ReplayGuard(None, window_seconds=120)
    headers = sign_request(ALICE, "PUT", FID, FRAG, timestamp_ms=now_ms() - 121_000)
    assert "stale" in refused(guard, headers)
    # just inside the window is fine
    ok = sign_request(ALICE, "PUT", FID, FRAG, timestamp_ms=now_ms() - 100_000)
    assert guard.check(ok, "PUT", FID, FRAG) == ALICE.address


def test_future_message_refused() -> None:
    guard = ReplayGuard(None, window_seconds=120)
    headers = sign_request(ALICE, "PUT", FID, FRAG, timestamp_ms=now_ms() + 121_000)
    assert "future" in refused(guard, headers)


def test_replay_in_same_process_refused() -> None:
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    guard.check(headers, "PUT", FID, FRAG)
    assert "replay" in refused(guard, headers)


def test_replay_after_reopening_refused(tmp_path: Path) -> None:
    db = tmp_path / "seen.sqlite3"
    guard = ReplayGuard(db)
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    guard.check(headers, "PUT", FID, FRAG)
    guard.close()

    reopened = ReplayGuard(db)  # a restarted node: the in-memory set is empty
    assert "replay" in refused(reopened, headers)
    fresh = sign_request(ALICE, "PUT", FID, FRAG)
    assert reopened.check(fresh, "PUT", FID, FRAG) == ALICE.address
    reopened.close()


def test_same_message_signed_by_two_accounts_is_two_requests() -> None:
    guard = ReplayGuard(None)
    message = build_message("PUT", FID, FRAG)
    for account in (ALICE, BOB):
        headers = {
            "Account": account.address,
            "Message": message,
            "Signature": account.sign(message.encode()).hex(),
        }
        assert guard.check(headers, "PUT", FID, FRAG) == account.address


@pytest.mark.parametrize(
    ("method", "fid", "frag"),
    [("GET", FID, FRAG), ("PUT", "ef" * 32, FRAG), ("PUT", FID, "ef" * 32), ("PUT", FID, "")],
)
def test_signed_for_another_request_refused(method: str, fid: str, frag: str) -> None:
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    assert "another request" in refused(guard, headers, method, fid, frag)


def test_refused_request_does_not_burn_the_message() -> None:
    # a forged copy (bad signature) must not make the genuine request look replayed
    guard = ReplayGuard(None)
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    forged = dict(headers, Signature="00" * 64)
    refused(guard, forged)
    assert guard.check(headers, "PUT", FID, FRAG) == ALICE.address


def test_old_entries_pruned(tmp_path: Path) -> None:
    guard = ReplayGuard(tmp_path / "seen.sqlite3", window_seconds=1)
    guard.check(sign_request(ALICE, "PUT", FID, FRAG), "PUT", FID, FRAG)
    time.sleep(2.5)
    guard.check(sign_request(ALICE, "PUT", FID, FRAG), "PUT", FID, FRAG)  # triggers a prune
    assert guard._db is not None
    (rows,) = guard._db.execute("SELECT COUNT(*) FROM seen").fetchone()
    assert rows == 1
    assert len(guard._seen) == 1
    guard.close()


def test_concurrent_replays_accept_exactly_once(tmp_path: Path) -> None:
    guard = ReplayGuard(tmp_path / "seen.sqlite3")
    headers = sign_request(ALICE, "PUT", FID, FRAG)
    results: list[bool] = []

    def attempt() -> None:
        try:
            guard.check(headers, "PUT", FID, FRAG)
            results.append(True)
        except NodeRefused:
            results.append(False)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    guard.close()
