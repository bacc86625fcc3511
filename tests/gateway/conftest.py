"""Fixtures of the gateway suites: real `deossfs gateway` processes on the session devnet,
and accounts that authorized them on its ledger."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from substrateinterface import Keypair

from deossfs.devnet import process_alive
from deossfs.gateway_client import GatewayClient
from deossfs.keys import Account, account_from_secret

from ..conftest import ROOT, Devnet, deossfs
from ..harness import account, config_for, ledger, self_signed, wait_for

GIB = 1024**3


class GatewayProcess:
    """`deossfs gateway` as a child process on 127.0.0.1, with `-o` overrides."""

    def __init__(self, config: Path, directory: Path, *overrides: str) -> None:
        self.config = config
        self.dir = directory
        self.overrides = overrides
        self.proc: subprocess.Popen | None = None
        self.url = ""
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.dir / "gateway.log"

    def start(self) -> GatewayProcess:
        url_file = self.dir / "url"
        url_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "deossfs", "--config", str(self.config)]
        for override in self.overrides:
            args += ["-o", override]
        # a restart keeps the address, as a real one does: clients made before it still work
        listen = f"127.0.0.1:{httpx.URL(self.url).port}" if self.url else "127.0.0.1:0"
        args += ["gateway", "--listen", listen, "--url-file", str(url_file)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited at start:\n{self.log()[-2000:]}")
            return url_file.exists()

        wait_for(ready, 60, "the gateway to listen")
        self.url = url_file.read_text().strip()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and process_alive(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, who: Account | Keypair, **options: object) -> GatewayClient:
        return GatewayClient(self.url, who, **options)  # type: ignore[arg-type]


@dataclass
class Gateways:
    """The session's gateway and what tests need around it."""

    devnet: Devnet
    main: GatewayProcess
    account: Account  # the gateway's own account (the devnet's)
    root: Path

    def extra(self, name: str, *overrides: str, storage: dict | None = None) -> GatewayProcess:
        """Another gateway of the same account, in a workspace of its own."""
        directory = self.root / name
        config = config_for(self.devnet, directory, storage=storage, cache=True)
        return GatewayProcess(config, directory, *overrides)

    @contextlib.contextmanager
    def https(self, name: str, *overrides: str) -> Iterator[GatewayProcess]:
        """Another gateway serving HTTPS with a self-signed certificate (its `cert`),
        started, and stopped afterwards."""
        directory = self.root / f"{name}-tls"
        directory.mkdir(parents=True)
        cert, key = self_signed(directory)
        process = self.extra(name, f"gateway.tls_cert={cert}", f"gateway.tls_key={key}", *overrides)
        process.cert = cert  # type: ignore[attr-defined]
        process.start()
        try:
            yield process
        finally:
            process.stop()


def new_user(devnet: Devnet, authorize: str | None, territory_gib: int = 4) -> Account:
    """A funded account with a territory named `default`, which authorized `authorize`."""
    user = account_from_secret(Keypair.generate_mnemonic())
    admin = ledger(devnet)
    try:
        admin.fund(user.address, 10**24)
    finally:
        admin.close()
    chain = ledger(devnet, user)
    try:
        if territory_gib:
            chain.mint_territory("default", territory_gib, 30)
        if authorize:
            chain.authorize(authorize)
    finally:
        chain.close()
    return user


@pytest.fixture(scope="session")
def gateways(devnet: Devnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    root = tmp_path_factory.mktemp("gateways")
    config = config_for(devnet, root / "main", cache=True)
    main = GatewayProcess(config, root / "main").start()
    try:
        yield Gateways(devnet, main, account(devnet), root)
    finally:
        main.stop()


@pytest.fixture
def gateway(gateways: Gateways) -> GatewayProcess:
    """The session's gateway, restarted if a test stopped it."""
    if not gateways.main.alive:
        gateways.main.start()
    return gateways.main


def raw_exchange(url: str, request: bytes, timeout: float = 30) -> bytes:
    """Send `request` as it is on a new connection and read until the server closes it or
    one response has come (what a client library would not send: lies, trickles)."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while True:
            try:
                piece = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not piece:
                break
            received += piece
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
    return received


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def wait_stored(client: GatewayClient, fid: str, timeout: float = 300) -> dict:
    def stored() -> dict | None:
        state = client.state(fid)
        return state if state["state"] == "stored" else None

    return wait_for(stored, timeout, f"file {fid[:16]} to be stored", interval=0.3)


def now() -> float:
    return time.time()


# ---- S3 ----------------------------------------------------------------------------------


@dataclass
class S3Access:
    """An access key of a gateway, and clients made with it."""

    gateway: GatewayProcess
    access_key_id: str
    secret: str
    account: str

    def client(self, **config: object):  # noqa: ANN201 - a boto3 client
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.gateway.url, aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                          signature_version="s3v4", **config))  # type: ignore[arg-type]

    def env(self) -> dict[str, str]:
        """The environment of an S3 command-line client (aws, restic, rclone's env_auth)."""
        return {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}


def code(error: Exception) -> str:
    """The S3 error code of a botocore ClientError."""
    return error.response["Error"]["Code"]  # type: ignore[attr-defined]


def status(error: Exception) -> int:
    """The HTTP status of a botocore ClientError."""
    return error.response["ResponseMetadata"]["HTTPStatusCode"]  # type: ignore[attr-defined]


def create_key(gateway: GatewayProcess, account: str | None = None) -> S3Access:
    import json

    args = ["gateway", "key", "create", "--json"] + (["--account", account] if account else [])
    created = json.loads(deossfs(*args, config=gateway.config).stdout)
    return S3Access(gateway, created["access_key_id"], created["secret_access_key"],
                    created["account"])


@pytest.fixture(scope="session")
def s3_access(gateways: Gateways) -> S3Access:
    """An access key of the session gateway for its own account."""
    if not gateways.main.alive:
        gateways.main.start()
    return create_key(gateways.main)


@pytest.fixture
def s3(s3_access: S3Access, gateway: GatewayProcess):  # noqa: ANN201 - a boto3 client
    return s3_access.client()


@pytest.fixture
def bucket(s3) -> Iterator[str]:  # noqa: ANN001
    """A new bucket for one test, emptied and removed after it (uploads aborted too)."""
    name = f"s3t-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    s3.delete_bucket(Bucket=name)
