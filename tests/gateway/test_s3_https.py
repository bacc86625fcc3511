"""The S3 API over HTTPS: what boto3 sends there (aws-chunked bodies with a checksum
trailer, not a signed payload hash) through the gateway's TLS reads (gateway/tls.py),
multipart both ways, and a client that hangs up inside a part."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import GatewayProcess, Gateways, create_key, random_bytes

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def https_gateway(gateways: Gateways) -> Iterator[GatewayProcess]:
    with gateways.https("s3-https") as process:
        yield process


@pytest.fixture(scope="module")
def s3s(https_gateway: GatewayProcess):  # noqa: ANN201 - a boto3 client over HTTPS
    import boto3
    from botocore.config import Config

    assert https_gateway.url.startswith("https://")
    access = create_key(https_gateway)
    return boto3.client(
        "s3", endpoint_url=https_gateway.url, aws_access_key_id=access.access_key_id,
        aws_secret_access_key=access.secret, region_name="us-east-1",
        verify=str(https_gateway.cert),  # type: ignore[attr-defined]
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                      signature_version="s3v4"))


@pytest.fixture
def https_bucket(s3s) -> Iterator[str]:  # noqa: ANN001
    name = f"s3s-{uuid.uuid4().hex[:10]}"
    s3s.create_bucket(Bucket=name)
    yield name
    for item in s3s.list_objects_v2(Bucket=name).get("Contents", []):
        s3s.delete_object(Bucket=name, Key=item["Key"])
    for upload in s3s.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3s.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    s3s.delete_bucket(Bucket=name)


def test_transfer_manager_both_ways_over_https(s3s, https_bucket: str, tmp_path: Path) -> None:  # noqa: ANN001
    from boto3.s3.transfer import TransferConfig

    data = random_bytes(40 * MIB + 12345)
    source, back = tmp_path / "source.bin", tmp_path / "back.bin"
    source.write_bytes(data)
    transfer = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)
    sent: list[str] = []

    def note_payload_mode(request, **_: object) -> None:  # noqa: ANN001 - botocore's request
        sent.append(request.headers.get("x-amz-content-sha256", b"").decode())

    s3s.meta.events.register("before-send.s3.UploadPart", note_payload_mode)
    try:
        s3s.upload_file(str(source), https_bucket, "big", Config=transfer)
    finally:
        s3s.meta.events.unregister("before-send.s3.UploadPart", note_payload_mode)
    # over HTTPS boto3 streams each part with a CRC32 trailer and no payload hash
    assert sent and set(sent) == {"STREAMING-UNSIGNED-PAYLOAD-TRAILER"}, sent
    head = s3s.head_object(Bucket=https_bucket, Key="big", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-6"')
    assert head["ChecksumCRC32"].endswith("-6")  # the trailers' checksums, kept per part
    s3s.download_file(https_bucket, "big", str(back), Config=transfer)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()

    small = random_bytes(3 * MIB)
    s3s.put_object(Bucket=https_bucket, Key="small", Body=small, ChecksumAlgorithm="SHA256")
    got = s3s.get_object(Bucket=https_bucket, Key="small", ChecksumMode="ENABLED")
    assert got["Body"].read() == small  # botocore checked the SHA-256 it was given, too
    assert got["ChecksumSHA256"]


def test_a_client_gone_inside_a_part_over_https(s3s, https_bucket: str,  # noqa: ANN001
                                                https_gateway: GatewayProcess) -> None:
    upload = s3s.create_multipart_upload(Bucket=https_bucket, Key="half")["UploadId"]
    url = s3s.generate_presigned_url("upload_part", Params={
        "Bucket": https_bucket, "Key": "half", "UploadId": upload, "PartNumber": 1}, ExpiresIn=300)
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(https_gateway.cert))  # type: ignore[attr-defined]
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
        tls.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    f"Content-Length: {8 * MIB}\r\n\r\n".encode())
        tls.sendall(random_bytes(2 * MIB))  # a quarter of the part, then the client is gone
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the gateway notices the hang-up, then drops the part
        assert s3s.list_parts(Bucket=https_bucket, Key="half", UploadId=upload).get("Parts", []) == []
        time.sleep(0.5)
    whole = random_bytes(5 * MIB)
    etag = s3s.upload_part(Bucket=https_bucket, Key="half", UploadId=upload, PartNumber=1, Body=whole)["ETag"]
    s3s.complete_multipart_upload(Bucket=https_bucket, Key="half", UploadId=upload,
                                  MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3s.get_object(Bucket=https_bucket, Key="half")["Body"].read() == whole
    assert https_gateway.alive
    assert "Traceback" not in https_gateway.log()
