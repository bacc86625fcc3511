"""The S3 API through a real gateway process, driven by boto3 (botocore signs every request).

Each operation the gateway implements, S3's errors for what it refuses, the names S3 allows
and the chain does not, and the namespace it shares with the mount and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote_plus

import httpx
import pytest
from botocore.exceptions import ClientError

from ..harness import ledger, read_only_ledger, wait_for
from .conftest import (
    GatewayProcess,
    Gateways,
    S3Access,
    code,
    create_key,
    new_user,
    random_bytes,
    status,
)

pytestmark = pytest.mark.slow
MIB = 1024 * 1024



def bucket_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bucket(s3) -> str:  # noqa: ANN001
    name = bucket_name("t")
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


def test_buckets(s3, gateways: Gateways) -> None:  # noqa: ANN001
    names = [bucket_name("jazz-j"), f"a.b.c.{uuid.uuid4().hex[:6]}"]  # the chain refuses both as they are
    for name in names:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        s3.head_bucket(Bucket=name)
    listed = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert set(names) <= set(listed)
    # the CLI shows the same names
    assert set(names) <= set(gateways.devnet.cli("bucket", "ls").stdout.split())
    assert s3.get_bucket_location(Bucket=names[0]).get("LocationConstraint") in (None, "")
    with pytest.raises(ClientError) as caught:
        s3.create_bucket(Bucket=names[0])
    assert code(caught.value) == "BucketAlreadyOwnedByYou" and status(caught.value) == 409
    for bad in ("ab", "Upper", "-dash", "a" * 64, "192.168.1.1"):
        with pytest.raises(ClientError) as caught:
            s3.create_bucket(Bucket=bad)
        assert code(caught.value) == "InvalidBucketName", bad
    s3.put_object(Bucket=names[0], Key="x", Body=b"x")
    with pytest.raises(ClientError) as caught:
        s3.delete_bucket(Bucket=names[0])
    assert code(caught.value) == "BucketNotEmpty"
    assert s3.get_bucket_versioning(Bucket=names[0]).get("Status") is None  # never enabled
    acl = s3.get_bucket_acl(Bucket=names[0])
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]
    assert s3.get_bucket_tagging(Bucket=names[0])["TagSet"] == []
    with pytest.raises(ClientError) as caught:
        s3.put_bucket_policy(Bucket=names[0], Policy="{}")
    assert code(caught.value) == "NotImplemented" and status(caught.value) == 501
    s3.delete_object(Bucket=names[0], Key="x")
    for name in names:
        s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as caught:
        s3.head_bucket(Bucket=names[0])
    assert status(caught.value) == 404


def test_objects_round_trip_with_attributes(s3, bucket: str) -> None:  # noqa: ANN001
    data = random_bytes(3 * MIB + 5)
    put = s3.put_object(Bucket=bucket, Key="dir/photo.jpg", Body=data, ContentType="image/jpeg",
                        Metadata={"camera": "x100", "place": "Zurich"}, CacheControl="max-age=60",
                        ContentDisposition='attachment; filename="p.jpg"', ContentEncoding="identity",
                        Expires=datetime(2030, 1, 1, tzinfo=UTC))
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dir/photo.jpg")
    assert got["Body"].read() == data
    assert got["ContentType"] == "image/jpeg" and got["ETag"] == put["ETag"]
    assert got["Metadata"] == {"camera": "x100", "place": "Zurich"}
    assert got["CacheControl"] == "max-age=60" and got["ContentEncoding"] == "identity"
    assert got["ContentDisposition"] == 'attachment; filename="p.jpg"'
    head = s3.head_object(Bucket=bucket, Key="dir/photo.jpg")
    assert head["ContentLength"] == len(data) and head["Metadata"]["camera"] == "x100"
    # ranges: open, suffix, closed; beyond the end
    assert s3.get_object(Bucket=bucket, Key="dir/photo.jpg", Range="bytes=-7")["Body"].read() == data[-7:]
    assert s3.get_object(Bucket=bucket, Key="dir/photo.jpg",
                         Range=f"bytes={len(data) - 10}-")["Body"].read() == data[-10:]
    part = s3.get_object(Bucket=bucket, Key="dir/photo.jpg", Range="bytes=100-199")
    assert part["Body"].read() == data[100:200] and part["ContentRange"] == f"bytes 100-199/{len(data)}"
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="dir/photo.jpg", Range=f"bytes={len(data) + 1}-")
    assert code(caught.value) == "InvalidRange"
    # conditionals
    etag = put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="dir/photo.jpg", IfMatch=etag)["ContentLength"] == len(data)
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="dir/photo.jpg", IfMatch='"nope"')
    assert status(caught.value) == 412
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="dir/photo.jpg", IfNoneMatch=etag)
    assert status(caught.value) == 304
    later = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="dir/photo.jpg", IfModifiedSince=later)
    assert status(caught.value) == 304
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="dir/photo.jpg",
                      IfUnmodifiedSince=datetime.now(UTC) - timedelta(days=1))
    assert status(caught.value) == 412
    overridden = s3.get_object(Bucket=bucket, Key="dir/photo.jpg", ResponseContentType="text/x-test",
                               ResponseContentDisposition="inline")
    assert overridden["ContentType"] == "text/x-test" and overridden["ContentDisposition"] == "inline"
    s3.delete_object(Bucket=bucket, Key="dir/photo.jpg")
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="dir/photo.jpg")
    assert code(caught.value) == "NoSuchKey"
    s3.delete_object(Bucket=bucket, Key="dir/photo.jpg")  # deleting what is gone: 204


def test_zero_byte_objects_and_folders(s3, bucket: str) -> None:  # noqa: ANN001
    s3.put_object(Bucket=bucket, Key="empty.txt", Body=b"", Metadata={"k": "v"})
    s3.put_object(Bucket=bucket, Key="folder/", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="empty.txt")["Body"].read() == b""
    head = s3.head_object(Bucket=bucket, Key="empty.txt")
    assert head["ContentLength"] == 0 and head["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    assert head["Metadata"] == {"k": "v"}
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"empty.txt", "folder/"}


@pytest.mark.parametrize("key", ["with space.txt", "ünïcödé/名前.txt", "a+b=c&d.txt", "100%.txt",
                                 "a//b", "/leading", "trailing./x", "../up", "./dot", "x/../y",
                                 "~~escape", "q" * 1024])
def test_keys_s3_allows(s3, bucket: str, key: str) -> None:  # noqa: ANN001
    data = key.encode()[:100] + b"!"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    s3.delete_object(Bucket=bucket, Key=key)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_a_key_of_1025_bytes_is_refused(s3, bucket: str) -> None:  # noqa: ANN001
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"x")
    assert code(caught.value) == "KeyTooLongError"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_listings(s3, bucket: str) -> None:  # noqa: ANN001
    keys = sorted(["a/1", "a/2", "a/b/3", "b/4", "c", "d e", "é"], key=str.encode)
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == keys and not listed["IsTruncated"]
    grouped = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["a/", "b/"]
    assert [o["Key"] for o in grouped["Contents"]] == ["c", "d e", "é"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")["Contents"]] == \
        ["a/1", "a/2"]
    # pages of 2, v2 tokens and v1 markers
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}))
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == keys and len(pages) == 4
    v1 = list(s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 3}))
    assert [o["Key"] for p in v1 for o in p.get("Contents", [])] == keys
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, StartAfter="b/4")["Contents"]] == \
        ["c", "d e", "é"]
    assert s3.list_objects_v2(Bucket=bucket, MaxKeys=0)["KeyCount"] == 0
    assert len(s3.list_objects_v2(Bucket=bucket, MaxKeys=100000)["Contents"]) == len(keys)
    with httpx.Client() as http:
        url = s3.generate_presigned_url("list_objects", Params={"Bucket": bucket, "MaxKeys": -1})
        answer = http.get(url)
        assert answer.status_code == 400 and b"<Code>InvalidArgument</Code>" in answer.content
    # asked for explicitly, the encoding is left to the caller to undo
    encoded = s3.list_objects_v2(Bucket=bucket, EncodingType="url", Prefix="d")
    assert [unquote_plus(o["Key"]) for o in encoded["Contents"]] == ["d e"]
    assert encoded["Contents"][0]["Key"] != "d e"
    owner = s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"][0]["Owner"]
    assert owner["ID"].startswith("cX")
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert {v["Key"] for v in versions} == set(keys) and all(v["IsLatest"] for v in versions)


def test_copies_do_not_upload_again_within_a_bucket(s3, bucket: str, gateways: Gateways) -> None:  # noqa: ANN001
    data = random_bytes(MIB)
    s3.put_object(Bucket=bucket, Key="src", Body=data, Metadata={"a": "1"}, ContentType="text/plain")
    before = _files(gateways)
    copy = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert copy["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert _files(gateways) == before  # no new file on the chain: the same FID under two keys
    got = s3.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == data and got["Metadata"] == {"a": "1"}
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource=f"{bucket}/src",
                   MetadataDirective="REPLACE", Metadata={"b": "2"}, ContentType="x/y")
    assert s3.head_object(Bucket=bucket, Key="replaced")["Metadata"] == {"b": "2"}
    with pytest.raises(ClientError) as caught:
        s3.copy_object(Bucket=bucket, Key="x", CopySource=f"{bucket}/src", CopySourceIfMatch='"nope"')
    assert status(caught.value) == 412
    with pytest.raises(ClientError) as caught:
        s3.copy_object(Bucket=bucket, Key="src", CopySource=f"{bucket}/src")
    assert code(caught.value) == "InvalidRequest"
    s3.delete_object(Bucket=bucket, Key="src")  # the others keep the content
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == data
    other = bucket_name("copy-to")
    s3.create_bucket(Bucket=other)
    s3.copy_object(Bucket=other, Key="moved", CopySource={"Bucket": bucket, "Key": "dst"})
    assert s3.get_object(Bucket=other, Key="moved")["Body"].read() == data
    s3.delete_object(Bucket=other, Key="moved")
    s3.delete_bucket(Bucket=other)


def _files(gateways: Gateways) -> int:
    db = read_only_ledger(gateways.devnet)
    try:
        return db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    finally:
        db.close()


def test_multipart_uploads(s3, bucket: str, gateway: GatewayProcess) -> None:  # noqa: ANN001
    parts = [random_bytes(5 * MIB), random_bytes(5 * MIB), random_bytes(1234)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big.bin", ContentType="app/x",
                                        Metadata={"m": "1"})["UploadId"]
    etags = []
    for number, data in enumerate(parts[:2], start=1):
        etags.append(s3.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload, PartNumber=number,
                                    Body=data)["ETag"])
    # the gateway restarts between parts: the parts are journaled
    gateway.stop()
    gateway.start()
    s3 = S3Access(gateway, *_key(s3)).client()
    etags.append(s3.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload, PartNumber=3,
                                Body=parts[2])["ETag"])
    listed = s3.list_parts(Bucket=bucket, Key="big.bin", UploadId=upload)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3] and [p["ETag"] for p in listed] == etags
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("big.bin", upload)]
    # Complete's checks
    for wrong, expected in (([(2, etags[1]), (1, etags[0])], "InvalidPartOrder"),
                            ([(1, '"00000000000000000000000000000000"')], "InvalidPart"),
                            ([(3, etags[2]), (4, etags[2])], "InvalidPart")):
        with pytest.raises(ClientError) as caught:
            s3.complete_multipart_upload(Bucket=bucket, Key="big.bin", UploadId=upload, MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in wrong]})
        assert code(caught.value) == expected
    small = s3.create_multipart_upload(Bucket=bucket, Key="small.bin")["UploadId"]
    small_etags = [s3.upload_part(Bucket=bucket, Key="small.bin", UploadId=small, PartNumber=n,
                                  Body=b"s" * 100)["ETag"] for n in (1, 2)]
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(Bucket=bucket, Key="small.bin", UploadId=small, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), small_etags, strict=True)]})
    assert code(caught.value) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket=bucket, Key="small.bin", UploadId=small)
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(Bucket=bucket, Key="small.bin", UploadId=small, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": small_etags[0]}]})
    assert code(caught.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as caught:
        s3.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload, PartNumber=10001, Body=b"x")
    assert code(caught.value) == "InvalidArgument"
    done = s3.complete_multipart_upload(Bucket=bucket, Key="big.bin", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]})
    expected = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in etags)).hexdigest() + "-3"
    assert done["ETag"] == f'"{expected}"'
    got = s3.get_object(Bucket=bucket, Key="big.bin")
    assert got["Body"].read() == b"".join(parts) and got["ETag"] == done["ETag"]
    assert got["ContentType"] == "app/x" and got["Metadata"] == {"m": "1"}
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["ETag"] == done["ETag"]
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # UploadPartCopy: a part made of a range of an object
    copy = s3.create_multipart_upload(Bucket=bucket, Key="copied.bin")["UploadId"]
    first = s3.upload_part_copy(Bucket=bucket, Key="copied.bin", UploadId=copy, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "big.bin"},
                                CopySourceRange=f"bytes=0-{5 * MIB - 1}")["CopyPartResult"]["ETag"]
    second = s3.upload_part(Bucket=bucket, Key="copied.bin", UploadId=copy, PartNumber=2, Body=b"tail")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="copied.bin", UploadId=copy, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]})
    assert s3.get_object(Bucket=bucket, Key="copied.bin")["Body"].read() == parts[0] + b"tail"


def _key(client) -> tuple[str, str, str]:  # noqa: ANN001
    credentials = client._request_signer._credentials
    return credentials.access_key, credentials.secret_key, ""


def test_the_transfer_manager(s3, bucket: str, tmp_path: Path) -> None:  # noqa: ANN001
    from boto3.s3.transfer import TransferConfig

    source = tmp_path / "large.bin"
    source.write_bytes(random_bytes(21 * MIB))
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)
    s3.upload_file(str(source), bucket, "large.bin", Config=config)
    assert s3.head_object(Bucket=bucket, Key="large.bin")["ETag"].endswith('-3"')
    s3.download_file(bucket, "large.bin", str(tmp_path / "back.bin"), Config=config)
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_presigned_urls(s3, bucket: str) -> None:  # noqa: ANN001
    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"shared")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"},
                                    ExpiresIn=60)
    with httpx.Client() as http:
        assert http.get(url).content == b"shared"
        expired = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"},
                                            ExpiresIn=1)
        time.sleep(2)
        answer = http.get(expired)
        assert answer.status_code == 403 and b"<Code>AccessDenied</Code>" in answer.content
        upload = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "via-url.txt"})
        assert http.put(upload, content=b"uploaded").status_code == 200
        assert http.get(f"{s3.meta.endpoint_url}/{bucket}/shared.txt").status_code == 403  # anonymous
    assert s3.get_object(Bucket=bucket, Key="via-url.txt")["Body"].read() == b"uploaded"


def test_bad_credentials_and_bodies(s3, s3_access: S3Access, bucket: str) -> None:  # noqa: ANN001
    import boto3

    wrong = boto3.client("s3", endpoint_url=s3_access.gateway.url, aws_access_key_id=s3_access.access_key_id,
                         aws_secret_access_key="x" * 40, region_name="us-east-1")
    with pytest.raises(ClientError) as caught:
        wrong.list_buckets()
    assert code(caught.value) == "SignatureDoesNotMatch"
    unknown = boto3.client("s3", endpoint_url=s3_access.gateway.url, aws_access_key_id="A" * 20,
                           aws_secret_access_key="x" * 40, region_name="us-east-1")
    with pytest.raises(ClientError) as caught:
        unknown.list_buckets()
    assert code(caught.value) == "InvalidAccessKeyId"
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="md5.txt", Body=b"data", ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg==")
    assert code(caught.value) == "BadDigest"
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="crc.txt", Body=b"data", ChecksumCRC32="AAAAAA==")
    assert code(caught.value) == "BadDigest"
    with pytest.raises(ClientError) as caught:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"k{i}"} for i in range(10000)]})
    assert code(caught.value) == "MalformedXML"
    url = f"{s3_access.gateway.url}/{bucket}?delete"
    answer = _signed(s3, "POST", url, b"<Delete><Object><Key>a</Key></Object>", {"Content-MD5": ""})
    assert answer.status_code == 400 and b"MalformedXML" in answer.content
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def _signed(client, method: str, url: str, body: bytes, headers: dict) -> httpx.Response:  # noqa: ANN001
    """A request signed by botocore's own signer, sent as it is."""
    import base64

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    headers = {k: v for k, v in headers.items() if v}
    headers.setdefault("Content-MD5", base64.b64encode(hashlib.md5(body).digest()).decode())
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    S3SigV4Auth(client._request_signer._credentials, "s3", "us-east-1").add_auth(request)
    return httpx.request(method, url, content=body, headers=dict(request.headers))


def test_concurrent_puts_of_one_key_leave_one_whole_object(s3, bucket: str) -> None:  # noqa: ANN001
    bodies = [bytes([i]) * (2 * MIB) for i in range(4)]
    errors: list[BaseException] = []

    def put(body: bytes) -> None:
        try:
            s3.put_object(Bucket=bucket, Key="contended", Body=body)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    got = s3.get_object(Bucket=bucket, Key="contended")["Body"].read()
    assert got in bodies  # one writer's bytes, whole


def test_another_account_through_its_own_key(gateway: GatewayProcess, gateways: Gateways) -> None:
    user = new_user(gateways.devnet, authorize=gateways.account.address)
    theirs = create_key(gateway, user.address).client()
    name = bucket_name("user")
    theirs.create_bucket(Bucket=name)
    theirs.put_object(Bucket=name, Key="mine.txt", Body=b"mine")
    chain = ledger(gateways.devnet)
    try:
        assert name in chain.buckets(user.address) and name not in chain.buckets(gateways.account.address)
    finally:
        chain.close()
    mine = create_key(gateway).client()
    assert name not in [b["Name"] for b in mine.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as caught:
        mine.get_object(Bucket=name, Key="mine.txt")
    assert code(caught.value) == "NoSuchBucket"
    stranger = new_user(gateways.devnet, authorize=None)
    with pytest.raises(Exception, match="has not authorized"):
        create_key(gateway, stranger.address)
    theirs.delete_object(Bucket=name, Key="mine.txt")
    theirs.delete_bucket(Bucket=name)


def test_s3_and_the_cli_share_one_namespace(s3, bucket: str, gateways: Gateways, tmp_path: Path) -> None:  # noqa: ANN001
    s3.put_object(Bucket=bucket, Key="from-s3/notes.txt", Body=b"from s3")
    listed = gateways.devnet.cli("ls", bucket).stdout
    assert "from-s3/notes.txt" in listed
    source = tmp_path / "cli.txt"
    source.write_bytes(b"from the cli")
    gateways.devnet.cli("put", str(source), f"{bucket}/from-cli.txt")

    def listed() -> set[str]:
        return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}

    # another writer's object: in the listing at the catalog's next refresh (<= 2 s,
    # docs/semantics.md), and a GET of its key finds it at once
    assert s3.get_object(Bucket=bucket, Key="from-cli.txt")["Body"].read() == b"from the cli"
    wait_for(lambda: {"from-s3/notes.txt", "from-cli.txt"} <= listed(), 10,
             "the CLI's object in the S3 listing")
    info = json.loads(gateways.devnet.cli("stat", "--json", f"{bucket}/from-s3/notes.txt").stdout)
    assert info["size"] == len(b"from s3")


def test_keys_the_chain_hashes_keep_their_names(s3, bucket: str, gateways: Gateways,  # noqa: ANN001
                                                tmp_path: Path) -> None:
    """CESS names a file 3 to 63 bytes long; other keys are declared under a hash that only
    the bucket's metadata object maps back. A CLI put of such a key publishes it there, so
    S3 lists it under its key; the CLI lists S3's such keys under theirs too. Objects of
    zero bytes, which live in the metadata object only, cross both ways as well."""
    source = tmp_path / "cli.txt"
    source.write_bytes(b"short and deep")
    short, deep = "ab", "deep/" + "d" * 70 + "/file.txt"
    for key in (short, deep):
        gateways.devnet.cli("put", "-q", str(source), f"{bucket}/{key}")
    # published before the put returned: the CLI's own listing shows the keys at once
    cli_listed = gateways.devnet.cli("ls", bucket).stdout
    assert f" {short}\n" in cli_listed and f" {deep}\n" in cli_listed, cli_listed
    assert "~k" not in cli_listed and ".deossfs" not in cli_listed, cli_listed
    assert deep in gateways.devnet.cli("ls", f"{bucket}/deep/").stdout

    def s3_keys() -> set[str]:
        return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    gateways.devnet.cli("put", "-q", str(empty), f"{bucket}/cli-empty.txt")  # metadata only
    wait_for(lambda: {short, deep, "cli-empty.txt"} <= s3_keys(), 10, "the CLI's keys in the S3 listing")
    assert s3.head_object(Bucket=bucket, Key="cli-empty.txt")["ContentLength"] == 0
    assert not any(key.startswith("~k") for key in s3_keys()), s3_keys()
    assert s3.get_object(Bucket=bucket, Key=deep)["Body"].read() == b"short and deep"
    # the other way: an S3 key the chain hashes, in `deossfs ls` once the gateway has
    # saved its metadata object (5 s after the bucket's last change)
    long_key = "s3/" + "e" * 70
    s3.put_object(Bucket=bucket, Key="zz/", Body=b"")  # a folder: a directory in the mount
    s3.put_object(Bucket=bucket, Key="s3-empty.txt", Body=b"")
    s3.put_object(Bucket=bucket, Key=long_key, Body=b"from s3")
    wait_for(lambda: f" {long_key}\n" in gateways.devnet.cli("ls", bucket).stdout, 60,
             "the S3 key in the CLI's listing")
    back = tmp_path / "back.txt"
    gateways.devnet.cli("get", "-q", f"{bucket}/{long_key}", str(back))
    assert back.read_bytes() == b"from s3"
    assert "s3-empty.txt" in gateways.devnet.cli("ls", bucket).stdout
    gateways.devnet.cli("get", "-q", f"{bucket}/s3-empty.txt", str(back))
    assert back.read_bytes() == b""
    # a key where the namespace has a folder: refused before a byte is sent, nothing stored
    refused = gateways.devnet.cli("put", "-q", str(source), f"{bucket}/zz", check=False)
    assert refused.returncode != 0 and "folder" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2 and "Traceback" not in refused.stderr
    assert "zz" not in {line.split()[-1] for line in gateways.devnet.cli("ls", bucket).stdout.splitlines()}
    assert s3.list_objects_v2(Bucket=bucket, Prefix="zz")["Contents"][0]["Key"] == "zz/"
    # a CLI rm takes the key out of the metadata object too: no folder "deep/" stays behind
    for key in (short, deep):
        gateways.devnet.cli("rm", f"{bucket}/{key}")
    wait_for(lambda: not {short, deep, "deep/", "deep/" + "d" * 70 + "/"} & s3_keys(), 40,
             "the CLI's deletes in the S3 listing")


@pytest.mark.mount
def test_s3_and_the_mount_share_one_namespace(s3, bucket: str, gateways: Gateways,  # noqa: ANN001
                                              tmp_path: Path) -> None:
    """An object put over S3 is a file in the mount, with its S3 attributes as xattrs, under
    its escaped name; a file written in the mount is an S3 object."""
    import shutil

    from ..harness import Mounted, config_for

    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is absent")
    s3.put_object(Bucket=bucket, Key="photos/2026/cat.jpg", Body=b"meow" * 1000,
                  ContentType="image/jpeg", Metadata={"camera": "x100"})
    s3.put_object(Bucket=bucket, Key="a//b", Body=b"escaped")
    mounted = Mounted(config_for(gateways.devnet, tmp_path / "machine"), tmp_path / "mnt")
    try:
        mounted.mount()
        cat = mounted.path(bucket, "photos", "2026", "cat.jpg")
        wait_for(cat.exists, 60, "the S3 object to appear in the mount")
        assert cat.read_bytes() == b"meow" * 1000

        def xattrs() -> bool:
            # they come with the gateway's metadata object (saved 5-30 s after the put),
            # which the mount reads at its next listing (docs/semantics.md): `ls` the bucket
            os.listdir(mounted.path(bucket))
            try:
                return os.getxattr(cat, "user.s3.content-type") == b"image/jpeg"
            except OSError:
                return False

        wait_for(xattrs, 90, "the S3 attributes to reach the mount", interval=1)
        assert os.getxattr(cat, "user.s3.meta.camera") == b"x100"
        assert mounted.path(bucket, "a", "~~", "b").read_bytes() == b"escaped"
        shutil.copyfile(cat, mounted.path(bucket, "from-mount.jpg"))
        mounted.wait_durable()

        def listed() -> set[str]:
            return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}

        wait_for(lambda: "from-mount.jpg" in listed(), 60, "the mount's file to be listed over S3")
        assert s3.get_object(Bucket=bucket, Key="from-mount.jpg")["Body"].read() == b"meow" * 1000
        s3.delete_object(Bucket=bucket, Key="a//b")
        wait_for(lambda: "a" not in os.listdir(mounted.path(bucket)), 60,
                 "the S3 delete to reach the mount")
        mounted.path(bucket, "from-mount.jpg").unlink()
        mounted.wait_durable()
    finally:
        mounted.cleanup()
