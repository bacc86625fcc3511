"""S3 access keys: one 0600 file, secrets encrypted, changes seen by a running gateway."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deossfs.errors import InvalidInput, KeyFileError
from deossfs.gateway.credentials import (
    CREDENTIALS_KEY_PURPOSE,
    KeyStore,
    valid_access_key_id,
)
from deossfs.keys import account_from_secret

from ..conftest import ROOT

ALICE = account_from_secret("//Alice")
BOB = account_from_secret("//Bob")
GATEWAY = account_from_secret("//Charlie")
KEY = GATEWAY.derive_key(CREDENTIALS_KEY_PURPOSE)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "gateway" / "s3-credentials.json"


def test_create_lookup_list_remove(path: Path) -> None:
    store = KeyStore(path, KEY)
    assert store.list() == [] and store.lookup("A" * 20) is None
    alice = store.create(ALICE.address)
    bob = store.create(BOB.address)
    assert valid_access_key_id(alice.access_key_id) and len(alice.access_key_id) == 20
    assert len(alice.secret) == 40 and alice.secret != bob.secret
    assert alice.account == ALICE.address
    assert store.lookup(alice.access_key_id) == alice
    assert [k.access_key_id for k in store.list()] == [alice.access_key_id, bob.access_key_id]
    assert all(k.secret == "" for k in store.list())
    assert [k.account for k in store.list(BOB.address)] == [BOB.address]
    assert store.remove(alice.access_key_id) is True
    assert store.remove(alice.access_key_id) is False
    assert store.lookup(alice.access_key_id) is None
    # a fresh store (another process, a restarted gateway) reads the same
    again = KeyStore(path, KEY)
    assert again.lookup(bob.access_key_id) == bob


def test_file_is_0600_and_holds_no_secret_in_clear(path: Path) -> None:
    store = KeyStore.for_account(path, GATEWAY)
    key = store.create(ALICE.address)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key.secret not in text and key.secret.encode().hex() not in text
    assert key.access_key_id in text and ALICE.address in text
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert key.secret not in repr(key) and key.secret not in str(key)


def test_a_file_others_can_read_is_refused(path: Path) -> None:
    store = KeyStore(path, KEY)
    key = store.create(ALICE.address)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="readable by others") as info:
        store.lookup(key.access_key_id)
    assert "chmod 600" in info.value.hint
    with pytest.raises(KeyFileError):
        KeyStore(path, KEY).list()
    with pytest.raises(KeyFileError):
        store.create(BOB.address)


def test_another_gateways_key_cannot_decrypt(path: Path) -> None:
    KeyStore(path, KEY).create(ALICE.address)
    other = KeyStore.for_account(path, ALICE)
    with pytest.raises(KeyFileError, match="cannot be decrypted"):
        other.list()


def test_an_entry_moved_to_another_account_fails(path: Path) -> None:
    store = KeyStore(path, KEY)
    store.create(ALICE.address)
    data = json.loads(path.read_text())
    data["keys"][0]["account"] = BOB.address  # try to make Alice's secret act for Bob
    path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError, match="cannot be decrypted"):
        store.list()


def test_junk_file_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a deossfs S3 credentials file"):
        KeyStore(path, KEY).lookup("A" * 20)


def test_bad_input(path: Path) -> None:
    store = KeyStore(path, KEY)
    with pytest.raises(InvalidInput):
        store.create("not-an-address")
    with pytest.raises(ValueError):
        KeyStore(path, b"short")
    assert store.lookup("lower-case-is-not-ours") is None
    assert not path.exists()  # nothing created by looking or by refusals


def test_derived_key_is_the_documented_one(path: Path) -> None:
    store = KeyStore(path, GATEWAY.derive_key("deossfs s3 credentials v1"))
    key = store.create(ALICE.address)
    assert KeyStore.for_account(path, GATEWAY).lookup(key.access_key_id) == key


def _run_in_another_process(path: Path, code: str) -> str:
    script = textwrap.dedent(f"""
        from deossfs.gateway.credentials import KeyStore
        from deossfs.keys import account_from_secret
        store = KeyStore.for_account({str(path)!r}, account_from_secret("//Charlie"))
    """) + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=True)
    return result.stdout.strip()


def test_keys_made_by_another_process_are_seen_at_once(path: Path) -> None:
    running = KeyStore(path, KEY)  # the gateway's store, loaded before the CLI runs
    assert running.list() == []
    made = _run_in_another_process(path, f"""
        print(store.create({ALICE.address!r}).access_key_id)
    """)
    key = running.lookup(made)
    assert key is not None and key.account == ALICE.address
    _run_in_another_process(path, f"assert store.remove({made!r})")
    assert running.lookup(made) is None  # a removed key stops working at once


def test_concurrent_creators_lose_nothing(path: Path) -> None:
    start = time.time() + 2  # all workers begin together, after their imports
    code = textwrap.dedent(f"""
        import time
        from deossfs.gateway.credentials import KeyStore
        from deossfs.keys import account_from_secret
        store = KeyStore.for_account({str(path)!r}, account_from_secret("//Charlie"))
        time.sleep(max(0, {start} - time.time()))
        for _ in range(40):
            store.create({ALICE.address!r})
    """)
    workers = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(3)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    assert len(KeyStore(path, KEY).list()) == 120
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
