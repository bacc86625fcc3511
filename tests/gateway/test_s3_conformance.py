"""Where a public S3 conformance run found the gateway departing from the S3 API reference,
through a real gateway process and boto3: listing edges, ListBuckets pages, conditional
writes, UploadPartCopy ranges and GetObject's partNumber."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from ..harness import ledger, wait_for
from .conftest import Gateways, code, create_key, random_bytes, status

pytestmark = pytest.mark.slow
MIB = 1024 * 1024



def test_list_buckets_in_pages(s3) -> None:  # noqa: ANN001
    prefix = f"pages-{uuid.uuid4().hex[:8]}-"
    names = [prefix + label for label in ("a", "b", "c")]
    for name in names:
        s3.create_bucket(Bucket=name)
    try:
        first = s3.list_buckets(Prefix=prefix, MaxBuckets=2)
        assert [b["Name"] for b in first["Buckets"]] == names[:2]
        assert first["Prefix"] == prefix and first["ContinuationToken"]
        rest = s3.list_buckets(Prefix=prefix, MaxBuckets=2, ContinuationToken=first["ContinuationToken"])
        assert [b["Name"] for b in rest["Buckets"]] == names[2:]
        assert "ContinuationToken" not in rest
        assert set(names) <= {b["Name"] for b in s3.list_buckets()["Buckets"]}  # unpaged: all
    finally:
        for name in names:
            s3.delete_bucket(Bucket=name)


def test_bucket_creation_dates_hold_still(s3) -> None:  # noqa: ANN001
    """CESS keeps no creation time: ListBuckets dates a bucket when the gateway created it
    (or first listed it) and keeps that date; it used to give the time of each listing.
    A bucket deleted and created again is dated again."""
    name = f"dated-{uuid.uuid4().hex[:10]}"

    def dated() -> datetime:
        return {b["Name"]: b["CreationDate"] for b in s3.list_buckets()["Buckets"]}[name]

    before = datetime.now(UTC)
    s3.create_bucket(Bucket=name)
    after = datetime.now(UTC)
    try:
        first = dated()
        assert before - timedelta(seconds=1) <= first <= after + timedelta(seconds=1)
        time.sleep(1.5)
        assert dated() == first
        s3.delete_bucket(Bucket=name)
        s3.create_bucket(Bucket=name)
        assert dated() >= first + timedelta(seconds=1)
    finally:
        s3.delete_bucket(Bucket=name)


def test_listing_edges(s3, bucket: str) -> None:  # noqa: ANN001
    for key in ("a", "b"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    # max-keys=0 asks for nothing: an empty page that is not truncated (v1 and v2)
    v1 = s3.list_objects(Bucket=bucket, MaxKeys=0)
    assert v1["IsTruncated"] is False and "Contents" not in v1
    v2 = s3.list_objects_v2(Bucket=bucket, MaxKeys=0)
    assert v2["IsTruncated"] is False and v2["KeyCount"] == 0 and "NextContinuationToken" not in v2
    # a continuation token sent empty is echoed empty; the listing starts at the beginning
    echoed = s3.list_objects_v2(Bucket=bucket, ContinuationToken="")
    assert echoed["ContinuationToken"] == "" and [o["Key"] for o in echoed["Contents"]] == ["a", "b"]


def test_conditional_put(s3, bucket: str) -> None:  # noqa: ANN001
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"first")["ETag"]
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert code(caught.value) == "PreconditionFailed" and status(caught.value) == 412
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="k", Body=b"second", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert code(caught.value) == "PreconditionFailed" and status(caught.value) == 412
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"  # nothing stored
    s3.put_object(Bucket=bucket, Key="k", Body=b"third", IfMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"third"
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch=etag)
    assert code(caught.value) == "NoSuchKey" and status(caught.value) == 404
    s3.put_object(Bucket=bucket, Key="new", Body=b"", IfNoneMatch="*")  # absent: written
    assert s3.head_object(Bucket=bucket, Key="new")["ContentLength"] == 0


def test_concurrent_conditional_puts(s3, bucket: str, gateways: Gateways) -> None:  # noqa: ANN001
    """If-None-Match: * as a lock (Terraform's, table formats' commits): of writers racing
    for one key through one gateway exactly one wins, whatever their bytes' timing; the
    losers' bytes, stored meanwhile, leave the chain."""
    bodies = [random_bytes(3 * MIB) for _ in range(4)]
    start = threading.Barrier(len(bodies))
    outcomes: list[object] = [None] * len(bodies)

    def write(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = s3.put_object(Bucket=bucket, Key="lock", Body=bodies[index],
                                            IfNoneMatch="*")["ETag"]
        except ClientError as exc:
            outcomes[index] = (code(exc), status(exc))

    writers = [threading.Thread(target=write, args=(i,)) for i in range(len(bodies))]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    winners = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, str)]
    assert len(winners) == 1, outcomes
    assert all(outcome == ("PreconditionFailed", 412) for i, outcome in enumerate(outcomes)
               if i not in winners), outcomes
    assert s3.get_object(Bucket=bucket, Key="lock")["Body"].read() == bodies[winners[0]]

    def on_the_chain() -> int:
        """Files named `lock` in the bucket, asked of the chain itself."""
        chain = ledger(gateways.devnet)
        try:
            listed = chain.bucket(gateways.account.address, bucket)
            assert listed is not None
            return sum(any(brief.file_name == "lock" for brief in info.owners)
                       for info in map(chain.file, listed.object_list) if info is not None)
        finally:
            chain.close()

    wait_for(lambda: on_the_chain() == 1, 30, "the losers' bytes to leave the chain")


def test_conditional_complete(s3, bucket: str) -> None:  # noqa: ANN001
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"first")["ETag"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"second")
    parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(ClientError) as caught:
            s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload=parts,
                                         **condition)
        assert code(caught.value) == "PreconditionFailed" and status(caught.value) == 412, condition
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"  # nothing stored
    # the upload is still there: completed when the condition holds
    s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload, MultipartUpload=parts,
                                 IfMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"second"
    fresh = s3.create_multipart_upload(Bucket=bucket, Key="new")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="new", UploadId=fresh, PartNumber=1, Body=b"x")
    s3.complete_multipart_upload(Bucket=bucket, Key="new", UploadId=fresh, IfNoneMatch="*",
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="new")["Body"].read() == b"x"


def test_upload_part_copy_range_must_lie_in_the_source(s3, bucket: str) -> None:  # noqa: ANN001
    s3.put_object(Bucket=bucket, Key="src", Body=b"12345")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    for wanted, expected in (("bytes=0-21", ("InvalidRange", 416)), ("bytes=3-1", ("InvalidArgument", 400))):
        with pytest.raises(ClientError) as caught:
            s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=wanted)
        assert (code(caught.value), status(caught.value)) == expected, wanted
    part = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                               CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange="bytes=1-4")
    s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"2345"


def test_get_object_by_part_number(s3, bucket: str) -> None:  # noqa: ANN001
    first, second = random_bytes(5 * MIB), random_bytes(MIB + 7)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=number, Body=body)["ETag"]
             for number, body in ((1, first), (2, second))]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags, strict=True)]})
    for number, body in ((1, first), (2, second)):
        got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert got["PartsCount"] == 2 and got["ETag"] == done["ETag"]
        assert got["ContentLength"] == len(body) and got["Body"].read() == body
        head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert head["PartsCount"] == 2 and head["ContentLength"] == len(body)
    for number in (3, 10000):
        with pytest.raises(ClientError) as caught:
            s3.get_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert code(caught.value) == "InvalidPart" and status(caught.value) == 400
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=1, Range="bytes=0-1")
    assert code(caught.value) == "InvalidRequest"
    # an object of one PUT is its own part 1, and has no other
    put = s3.put_object(Bucket=bucket, Key="single", Body=b"body")
    whole = s3.get_object(Bucket=bucket, Key="single", PartNumber=1)
    assert whole["Body"].read() == b"body" and whole["ETag"] == put["ETag"]
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="single", PartNumber=2)
    assert code(caught.value) == "InvalidPart" and status(caught.value) == 400


def test_non_ascii_metadata(s3, bucket: str) -> None:  # noqa: ANN001
    """Header values sent as UTF-8 bytes (botocore signs and sends them so when a caller
    sets them; its Metadata parameter itself takes ASCII only): the signature holds, and
    the value comes back as S3 returns it, RFC 2047-encoded."""
    from email.header import decode_header

    value = "Zürich 日本"

    def add_headers(params: dict, **_: object) -> None:
        params["headers"].update({"x-amz-meta-place": value, "x-amz-meta-plain": "ascii",
                                  "Content-Disposition": 'attachment; filename="résumé.txt"'})

    s3.meta.events.register("before-call.s3.PutObject", add_headers)
    try:
        s3.put_object(Bucket=bucket, Key="m", Body=b"x")
    finally:
        s3.meta.events.unregister("before-call.s3.PutObject", add_headers)
    got = s3.head_object(Bucket=bucket, Key="m")
    encoded = got["Metadata"]["place"]
    assert encoded.startswith("=?UTF-8?B?")
    (raw, charset), = decode_header(encoded)
    assert raw.decode(charset) == value and got["Metadata"]["plain"] == "ascii"
    (raw, charset), = decode_header(got["ContentDisposition"])
    assert raw.decode(charset) == 'attachment; filename="résumé.txt"'
    assert s3.get_object(Bucket=bucket, Key="m")["Metadata"]["place"] == encoded


def test_unencrypted_bytes_in_a_second_bucket_are_an_invalid_request(gateways: Gateways) -> None:
    """CESS keeps an account's unencrypted file once, in one bucket: the same bytes put in
    a second bucket are refused with a plain InvalidRequest (not BucketAlreadyOwnedByYou,
    which would point a client at the bucket), and nothing is named."""
    plain = gateways.extra("plain", storage={"encryption": False}).start()
    try:
        s3 = create_key(plain).client()
        first, second = (f"plain-{label}-{uuid.uuid4().hex[:8]}" for label in ("a", "b"))
        data = random_bytes(4096)
        for name in (first, second):
            s3.create_bucket(Bucket=name)
        s3.put_object(Bucket=first, Key="k", Body=data)
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket=second, Key="k", Body=data)
        assert code(caught.value) == "InvalidRequest" and status(caught.value) == 409
        assert "stored unencrypted in bucket" in caught.value.response["Error"]["Message"]
        assert "Contents" not in s3.list_objects_v2(Bucket=second)
        s3.delete_object(Bucket=first, Key="k")
        for name in (first, second):
            s3.delete_bucket(Bucket=name)
    finally:
        plain.stop()
