"""Checksums kept with objects (x-amz-checksum-*), through a real gateway and boto3:
PutObject's, a multipart upload's composite and full-object ones, and what HeadObject and
GetObject return with `ChecksumMode=ENABLED`. The expected values are S3's definitions
computed here (and, for the three 5 MiB parts, the values ceph's s3-tests list)."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from .conftest import code, random_bytes, status

pytestmark = pytest.mark.slow
MIB = 1024 * 1024
#: three parts of 5 MiB: all 'A', all 'B', all 'C'
BODIES = [letter * (5 * MIB) for letter in (b"A", b"B", b"C")]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_put_objects_checksum_is_kept_and_returned_when_asked(s3, bucket: str) -> None:  # noqa: ANN001
    data = random_bytes(300_000)
    sha256 = b64(hashlib.sha256(data).digest())
    put = s3.put_object(Bucket=bucket, Key="obj", Body=data, ChecksumSHA256=sha256)
    assert put["ChecksumSHA256"] == sha256

    plain = s3.head_object(Bucket=bucket, Key="obj")
    assert "ChecksumSHA256" not in plain  # only when asked for
    asked = s3.head_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert (asked["ChecksumSHA256"], asked["ChecksumType"]) == (sha256, "FULL_OBJECT")
    got = s3.get_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == sha256 and got["Body"].read() == data
    ranged = s3.get_object(Bucket=bucket, Key="obj", Range="bytes=0-99", ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in ranged  # a range is not the object the checksum is of

    # a wrong checksum: BadDigest, and the object stays as it was
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="obj", Body=b"other bytes", ChecksumSHA256=sha256)
    assert (status(caught.value), code(caught.value)) == (400, "BadDigest")
    assert s3.head_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")["ChecksumSHA256"] == sha256

    # boto3's default for put_object is a CRC32 trailer: kept, and checked by botocore on
    # the way back (it validates a full-object checksum a GET returns)
    s3.put_object(Bucket=bucket, Key="default", Body=data)
    crc = b64(zlib.crc32(data).to_bytes(4, "big"))
    got = s3.get_object(Bucket=bucket, Key="default", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"] == crc and got["Body"].read() == data

    # a copy is the same bytes: the same checksum
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "obj"})
    assert s3.head_object(Bucket=bucket, Key="copy", ChecksumMode="ENABLED")["ChecksumSHA256"] == sha256


def _upload_parts(s3, bucket: str, key: str, algorithm: str, checksum_type: str | None = None  # noqa: ANN001
                  ) -> tuple[str, list[dict]]:
    extra = {"ChecksumType": checksum_type} if checksum_type else {}
    created = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm, **extra)
    assert created["ChecksumAlgorithm"] == algorithm
    parts = []
    for number, body in enumerate(BODIES, 1):
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=created["UploadId"],
                                PartNumber=number, Body=body, ChecksumAlgorithm=algorithm)
        parts.append({"PartNumber": number, "ETag": answer["ETag"],
                      f"Checksum{algorithm}": answer[f"Checksum{algorithm}"]})
    return created["UploadId"], parts


def test_an_object_sent_without_a_checksum_gets_a_crc64nvme(s3_access, bucket: str) -> None:  # noqa: ANN001
    from awscrt.checksums import crc64nvme

    # what curl, s3fs and SDKs before 2025 send: no x-amz-checksum-* at all
    bare = s3_access.client(request_checksum_calculation="when_required")
    sent: list[list[str]] = []
    bare.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(
        [name for name in request.headers if name.lower().startswith("x-amz-checksum")]))
    data = random_bytes(1_000_003)
    expected = b64(crc64nvme(data).to_bytes(8, "big"))
    put = bare.put_object(Bucket=bucket, Key="bare", Body=data)
    assert sent == [[]]  # the request carried none
    assert put["ChecksumCRC64NVME"] == expected
    head = bare.head_object(Bucket=bucket, Key="bare", ChecksumMode="ENABLED")
    assert (head["ChecksumCRC64NVME"], head["ChecksumType"]) == (expected, "FULL_OBJECT")
    got = bare.get_object(Bucket=bucket, Key="bare", ChecksumMode="ENABLED")
    assert got["Body"].read() == data  # botocore checked the CRC64NVME on the way
    # an empty object too: the CRC of nothing
    bare.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert bare.head_object(Bucket=bucket, Key="empty", ChecksumMode="ENABLED")["ChecksumCRC64NVME"] == \
        b64(bytes(8))


def test_a_composite_checksum_is_made_of_the_parts_and_checked_at_complete(s3, bucket: str) -> None:  # noqa: ANN001
    upload_id, parts = _upload_parts(s3, bucket, "mp", "SHA256")
    part_sums = [hashlib.sha256(body).digest() for body in BODIES]
    assert [p["ChecksumSHA256"] for p in parts] == [b64(d) for d in part_sums]
    expected = b64(hashlib.sha256(b"".join(part_sums)).digest()) + "-3"
    assert expected == "uWBwpe1dxI4Vw8Gf0X9ynOdw/SS6VBzfWm9giiv1sf4=-3"  # s3-tests' value

    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)
    assert listed["ChecksumAlgorithm"] == "SHA256"
    assert [p["ChecksumSHA256"] for p in listed["Parts"]] == [p["ChecksumSHA256"] for p in parts]

    def complete(listed_parts: list[dict], **extra: str) -> dict:
        return s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id,
                                            MultipartUpload={"Parts": listed_parts}, **extra)

    refusals = [
        (dict(ChecksumSHA256="bad"), parts, "BadDigest"),  # not the object's checksum
        ({}, [{k: v for k, v in p.items() if k != "ChecksumSHA256"} for p in parts], "InvalidRequest"),
        ({}, [dict(parts[0], ChecksumSHA256=parts[1]["ChecksumSHA256"]), *parts[1:]], "InvalidPart"),
    ]
    for extra, listed_parts, refused in refusals:
        with pytest.raises(ClientError) as caught:
            complete(listed_parts, **extra)
        assert (status(caught.value), code(caught.value)) == (400, refused)
    with pytest.raises(ClientError):  # none of them stored anything
        s3.head_object(Bucket=bucket, Key="mp")

    done = complete(parts, ChecksumSHA256=expected)
    assert (done["ChecksumSHA256"], done["ChecksumType"]) == (expected, "COMPOSITE")
    again = complete(parts, ChecksumSHA256=expected)  # a retried Complete: the same answer
    assert (again["ETag"], again["ChecksumSHA256"]) == (done["ETag"], expected)
    head = s3.head_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    assert (head["ChecksumSHA256"], head["ChecksumType"]) == (expected, "COMPOSITE")
    # botocore does not check a composite value (it is no checksum of the bytes) but reads on
    got = s3.get_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == expected and got["Body"].read() == b"".join(BODIES)
    # a part: its own checksum, which botocore checks against the part's bytes
    second = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2, ChecksumMode="ENABLED")
    assert (second["ChecksumSHA256"], second["ChecksumType"]) == (parts[1]["ChecksumSHA256"], "COMPOSITE")
    assert second["Body"].read() == BODIES[1]


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("CRC32", "WgDhBQ=="), ("CRC32C", "xU+Krw=="), ("CRC64NVME", "i+6LR0y3eFo=")])
def test_a_full_object_crc_is_combined_from_the_parts(s3, bucket: str, algorithm: str,  # noqa: ANN001
                                                      expected: str) -> None:
    upload_id, parts = _upload_parts(s3, bucket, "full", algorithm, "FULL_OBJECT")
    listed = parts
    if algorithm == "CRC32C":  # a full-object checksum needs no part's listed (S3 asks none)
        listed = [{k: v for k, v in p.items() if not k.startswith("Checksum")} for p in parts]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="full", UploadId=upload_id,
                                        MultipartUpload={"Parts": listed},
                                        **{f"Checksum{algorithm}": expected})
    assert (done[f"Checksum{algorithm}"], done["ChecksumType"]) == (expected, "FULL_OBJECT")
    # a full-object CRC is checked by botocore against the bytes it reads
    got = s3.get_object(Bucket=bucket, Key="full", ChecksumMode="ENABLED")
    assert got[f"Checksum{algorithm}"] == expected and got["Body"].read() == b"".join(BODIES)
    third = s3.get_object(Bucket=bucket, Key="full", PartNumber=3, ChecksumMode="ENABLED")
    assert third[f"Checksum{algorithm}"] == parts[2][f"Checksum{algorithm}"]
    assert third["Body"].read() == BODIES[2]
    ranged = s3.get_object(Bucket=bucket, Key="full", Range="bytes=1-2", ChecksumMode="ENABLED")
    assert f"Checksum{algorithm}" not in ranged and ranged["Body"].read() == b"AA"
    if algorithm == "CRC32":
        assert expected == b64(zlib.crc32(b"".join(BODIES)).to_bytes(4, "big"))


def test_checksum_requests_s3_does_not_offer_are_refused(s3, bucket: str) -> None:  # noqa: ANN001
    for algorithm, checksum_type in (("SHA256", "FULL_OBJECT"), ("CRC64NVME", "COMPOSITE")):
        with pytest.raises(ClientError) as caught:
            s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm=algorithm,
                                       ChecksumType=checksum_type)
        assert (status(caught.value), code(caught.value)) == (400, "InvalidRequest")
    created = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256")
    with pytest.raises(ClientError) as caught:  # a part with another algorithm's checksum
        s3.upload_part(Bucket=bucket, Key="k", UploadId=created["UploadId"], PartNumber=1,
                       Body=b"x" * 1000, ChecksumAlgorithm="CRC32")
    assert (status(caught.value), code(caught.value)) == (400, "InvalidRequest")
    assert s3.list_parts(Bucket=bucket, Key="k", UploadId=created["UploadId"]).get("Parts", []) == []


def test_the_transfer_managers_uploads_keep_a_checksum(s3, bucket: str, tmp_path) -> None:  # noqa: ANN001
    """boto3's upload_file creates its multipart uploads with CRC32 (since 1.36) and
    lists each part's checksum at Complete; the object keeps the composite value."""
    data = random_bytes(20 * MIB)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
    s3.upload_file(str(source), bucket, "big", Config=config)
    head = s3.head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    chunks = [data[i:i + 8 * MIB] for i in range(0, len(data), 8 * MIB)]
    sums = [zlib.crc32(c).to_bytes(4, "big") for c in chunks]
    assert head["ChecksumCRC32"] == b64(zlib.crc32(b"".join(sums)).to_bytes(4, "big")) + "-3"
    assert head["ChecksumType"] == "COMPOSITE"
    s3.download_file(bucket, "big", str(tmp_path / "back.bin"), Config=config)
    assert (tmp_path / "back.bin").read_bytes() == data


def test_object_attributes(s3, bucket: str) -> None:  # noqa: ANN001
    """GetObjectAttributes: ETag (unquoted), the kept checksum, a multipart object's parts
    in pages, storage class and size; an object of one PUT has no ObjectParts."""
    every = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
    data = random_bytes(1024)
    sha256 = b64(hashlib.sha256(data).digest())
    put = s3.put_object(Bucket=bucket, Key="one", Body=data, ChecksumSHA256=sha256)
    single = s3.get_object_attributes(Bucket=bucket, Key="one", ObjectAttributes=every)
    assert (single["ETag"], single["ObjectSize"], single["StorageClass"]) == (
        put["ETag"].strip('"'), 1024, "STANDARD")
    assert single["Checksum"] == {"ChecksumSHA256": sha256, "ChecksumType": "FULL_OBJECT"}
    assert "ObjectParts" not in single
    only_size = s3.get_object_attributes(Bucket=bucket, Key="one", ObjectAttributes=["ObjectSize"])
    assert only_size["ObjectSize"] == 1024 and "ETag" not in only_size

    upload_id, parts = _upload_parts(s3, bucket, "mp", "CRC32")
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id,
                                        MultipartUpload={"Parts": parts})
    whole = s3.get_object_attributes(Bucket=bucket, Key="mp", ObjectAttributes=every)
    assert whole["ETag"] == done["ETag"].strip('"') and whole["ObjectSize"] == 15 * MIB
    assert whole["Checksum"] == {"ChecksumCRC32": done["ChecksumCRC32"], "ChecksumType": "COMPOSITE"}
    listed = whole["ObjectParts"]
    assert (listed["TotalPartsCount"], listed["IsTruncated"]) == (3, False)
    assert [(p["PartNumber"], p["Size"], p["ChecksumCRC32"]) for p in listed["Parts"]] == [
        (n, 5 * MIB, part["ChecksumCRC32"]) for n, part in enumerate(parts, 1)]
    page = s3.get_object_attributes(Bucket=bucket, Key="mp", ObjectAttributes=["ObjectParts"],
                                    MaxParts=1, PartNumberMarker=1)["ObjectParts"]
    assert (page["MaxParts"], page["PartNumberMarker"], page["NextPartNumberMarker"],
            page["IsTruncated"]) == (1, 1, 2, True)
    assert [p["PartNumber"] for p in page["Parts"]] == [2]

    with pytest.raises(ClientError) as caught:  # not an attribute S3 has
        s3.get_object_attributes(Bucket=bucket, Key="one", ObjectAttributes=["Colour"])
    assert (status(caught.value), code(caught.value)) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as caught:
        s3.get_object_attributes(Bucket=bucket, Key="none", ObjectAttributes=every)
    assert (status(caught.value), code(caught.value)) == (404, "NoSuchKey")
