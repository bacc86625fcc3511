"""Request bodies checked as they stream: botocore's own uploads, signed chunks, bad bodies."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deossfs.gateway.s3.payload import (
    CHECKSUMS,
    PayloadResult,
    PayloadVerifier,
    stored_content_encoding,
)
from deossfs.gateway.s3.sigv4 import HeaderMap, S3AuthError, VerifiedRequest

from .s3_requests import (
    Captured,
    ChunkSigner,
    capture,
    client,
    crc32_b64,
    signed_chunked_request,
)

HTTPS = client()
HTTP = client(endpoint="http://127.0.0.1:9000")
BODY = os.urandom(2 * 1024 * 1024 + 12345)  # three of botocore's 1 MiB aws-chunked chunks
SMALL = b"The quick brown fox jumps over the lazy dog"


def decode(request: Captured, pieces: list[bytes] | None = None,
           headers: list[tuple[str, str]] | None = None,
           verified: VerifiedRequest | None | bool = True,
           wrap: type = bytes) -> tuple[bytes, PayloadResult]:
    """Feed the body (in `pieces`, else whole) through a verifier; the payload and result."""
    if verified is True:
        verified = request.verify()
    verifier = PayloadVerifier(HeaderMap(headers or request.headers), verified or None)
    out = bytearray()
    for piece in pieces if pieces is not None else [request.body]:
        for view in verifier.feed(wrap(piece)):
            out += view
    return bytes(out), verifier.finish()


def refused(code: str, status: int, *args, **kwargs) -> S3AuthError:
    with pytest.raises(S3AuthError) as info:
        decode(*args, **kwargs)
    assert (info.value.code, info.value.status) == (code, status), str(info.value)
    return info.value


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


# ---- checksums ----------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "check"), [
    ("crc32", 0xCBF43926), ("crc32c", 0xE3069283), ("crc64nvme", 0xAE8B14860A799888),
    ("sha1", int(hashlib.sha1(b"123456789").hexdigest(), 16)),
    ("sha256", int(hashlib.sha256(b"123456789").hexdigest(), 16)),
])
def test_checksum_algorithms_give_the_catalogued_check_values(algorithm: str, check: int) -> None:
    new, size = CHECKSUMS[algorithm]
    whole, pieces = new(), new()
    whole.update(memoryview(b"123456789"))
    for piece in (b"1234", b"", b"56789"):
        pieces.update(memoryview(piece))
    assert whole.digest() == pieces.digest() == check.to_bytes(size, "big")


# ---- botocore's uploads -----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
@pytest.mark.parametrize("body", [BODY, SMALL, b""], ids=["2MiB", "small", "empty"])
def test_boto3_uploads_over_https_decode_and_check_their_trailer(algorithm: str, body) -> None:
    request = capture(lambda: HTTPS.put_object(Bucket="b", Key="k", Body=body,
                                               ChecksumAlgorithm=algorithm))
    name = f"x-amz-checksum-{algorithm.lower()}"
    assert request.header("x-amz-trailer") == name
    assert request.header("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    sent_checksum = re.search(rb"x-amz-checksum-[a-z0-9]+:([A-Za-z0-9+/=]+)\r\n",
                              request.body).group(1).decode()
    for size in (len(request.body) or 1, 65536, 1000, 7):
        payload, result = decode(request, split(request.body, size))
        assert payload == body
        assert result.size == len(body)
        assert result.md5 == hashlib.md5(body).digest() and result.etag == hashlib.md5(body).hexdigest()
        assert result.checksums == {algorithm.lower(): sent_checksum}


def test_boto3_upload_over_http_checks_the_signed_sha256_and_checksum_header() -> None:
    request = capture(lambda: HTTP.put_object(Bucket="b", Key="k", Body=BODY))
    assert request.header("x-amz-content-sha256") == hashlib.sha256(BODY).hexdigest()
    payload, result = decode(request, split(request.body, 65536))
    assert payload == BODY
    assert result.checksums == {"crc32": request.header("x-amz-checksum-crc32")}
    # one byte changed on the way: the signed SHA-256 catches it
    tampered = BODY[:1000] + bytes([BODY[1000] ^ 1]) + BODY[1001:]
    error = refused("XAmzContentSHA256Mismatch", 400, request, [tampered])
    assert "x-amz-content-sha256" in str(error)


def test_a_default_checksum_only_where_the_request_carries_none() -> None:
    from awscrt.checksums import crc64nvme

    def digests(request: Captured) -> dict[str, str]:
        # unsigned: the payload's own headers are what is read (removing a header would
        # break the signature)
        verifier = PayloadVerifier(HeaderMap(request.headers), None, default="crc64nvme")
        for _ in verifier.feed(request.body):
            pass
        return verifier.finish().checksums

    carried = capture(lambda: HTTP.put_object(Bucket="b", Key="k", Body=BODY))
    assert set(digests(carried)) == {"crc32"}  # the request's own, no other
    bare_request = carried.with_header("x-amz-checksum-crc32", None).with_header(
        "x-amz-sdk-checksum-algorithm", None)
    expected = base64.b64encode(crc64nvme(BODY).to_bytes(8, "big")).decode()
    assert digests(bare_request) == {"crc64nvme": expected}


def test_content_md5() -> None:
    md5 = base64.b64encode(hashlib.md5(SMALL).digest()).decode()
    request = capture(lambda: HTTPS.put_object(Bucket="b", Key="k", Body=SMALL, ContentMD5=md5))
    assert request.header("content-md5") == md5
    assert decode(request)[0] == SMALL
    verified = request.verify()
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    headers = request.with_header("Content-MD5", wrong).headers
    refused("BadDigest", 400, request, headers=headers, verified=verified)
    for malformed in ("not base64!", base64.b64encode(b"short").decode(), ""):
        headers = request.with_header("Content-MD5", malformed).headers
        refused("InvalidDigest", 400, request, headers=headers, verified=verified)


def test_checksum_header_mismatch_and_malformed() -> None:
    request = capture(lambda: HTTP.put_object(Bucket="b", Key="k", Body=SMALL,
                                              ChecksumAlgorithm="SHA256"))
    verified = request.verify()
    other = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    headers = request.with_header("x-amz-checksum-sha256", other).headers
    error = refused("BadDigest", 400, request, headers=headers, verified=verified)
    assert str(error) == "The SHA256 you specified did not match the calculated checksum."
    headers = request.with_header("x-amz-checksum-sha256", "AAAA").headers
    error = refused("InvalidRequest", 400, request, headers=headers, verified=verified)
    assert str(error) == "Value for x-amz-checksum-sha256 header is invalid."
    headers = request.with_header("x-amz-checksum-crc32", crc32_b64(SMALL)).headers
    refused("InvalidRequest", 400, request, headers=headers, verified=verified)  # two algorithms


def test_wrong_or_missing_trailer_checksum() -> None:
    request = capture(lambda: HTTPS.put_object(Bucket="b", Key="k", Body=BODY))
    good = crc32_b64(BODY).encode()
    assert good in request.body
    wrong = base64.b64encode(b"\0\0\0\0")
    bad = Captured(**{**request.__dict__, "body": request.body.replace(good, wrong)})
    error = refused("BadDigest", 400, bad)
    assert str(error) == "The CRC32 you specified did not match the calculated checksum."
    bad.body = request.body.replace(good, b"!!")
    refused("InvalidRequest", 400, bad)
    bad.body = request.body.replace(b"x-amz-checksum-crc32:" + good + b"\r\n", b"")
    refused("MalformedTrailerError", 400, bad)
    bad.body = request.body.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-sha1:")
    refused("MalformedTrailerError", 400, bad)


# ---- signed chunks ------------------------------------------------------------------


def test_chunk_signer_reproduces_the_aws_documented_signatures() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    a = b"a" * 66560
    signer = ChunkSigner(secret, "20130524T000000Z", "us-east-1",
                         "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9")
    assert [signer.chunk(a[:65536]), signer.chunk(a[65536:]), signer.chunk(b"")] == [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
    signer = ChunkSigner(secret, "20130524T000000Z", "us-east-1",
                         "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e")
    assert [signer.chunk(a[:65536]), signer.chunk(a[65536:]), signer.chunk(b""),
            signer.trailer(b"x-amz-checksum-crc32c:sOO8/Q==\n")] == [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
        "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"]


def aws_example(trailer: bool, final: bytes = b"") -> Captured:
    """The PUT of "Transferring Payload in Multiple Chunks" (or "Including Trailing Headers")."""
    if trailer:
        seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
        signed = ("content-encoding;host;x-amz-content-sha256;x-amz-date;"
                  "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer")
        signatures = ["b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
                      "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
                      "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"]
        end = final or (b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:"
                        b"d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n")
    else:
        seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        signed = ("content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                  "x-amz-decoded-content-length;x-amz-storage-class")
        signatures = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                      "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                      "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
        end = final or b"\r\n"
    body = (f"10000;chunk-signature={signatures[0]}\r\n".encode() + b"a" * 65536
            + f"\r\n400;chunk-signature={signatures[1]}\r\n".encode() + b"a" * 1024
            + f"\r\n0;chunk-signature={signatures[2]}\r\n".encode() + end)
    headers = [
        ("Host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/"
         f"s3/aws4_request,SignedHeaders={signed},Signature={seed}"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + "-TRAILER" * trailer),
        ("Content-Encoding", "aws-chunked"), ("x-amz-decoded-content-length", "66560")]
    headers.append(("x-amz-trailer", "x-amz-checksum-crc32c") if trailer
                   else ("Content-Length", "66824"))
    return Captured("PUT", "/examplebucket/chunkObject.txt", "", headers, body)


def doc_verify(request: Captured) -> VerifiedRequest | None:
    from deossfs.gateway.credentials import AccessKey
    key = AccessKey("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "d", 0.0)
    return request.verify(datetime(2013, 5, 24, 0, 1, tzinfo=UTC).timestamp(),
                          {key.access_key_id: key}.get)


@pytest.mark.parametrize("trailer", [False, True], ids=["chunks", "chunks+trailer"])
def test_aws_documented_chunked_uploads(trailer: bool) -> None:
    request = aws_example(trailer)
    verified = doc_verify(request)
    assert len(request.body) == 66824 or trailer
    for size in (len(request.body), 997, 64):
        payload, result = decode(request, split(request.body, size), verified=verified)
        assert payload == b"a" * 66560
    assert result.checksums == ({"crc32c": "sOO8/Q=="} if trailer else {})
    tampered = Captured(**{**request.__dict__, "body": request.body.replace(b"a\r\n400", b"b\r\n400")})
    refused("SignatureDoesNotMatch", 403, tampered, verified=verified)


@pytest.mark.parametrize("ending", [
    b"\r\nx-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:"
    b"d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n",
    b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:"
    b"d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n",
    b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:"
    b"d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435",
], ids=["crlf-before-trailer", "no-final-crlf", "no-crlf-at-all"])
def test_trailer_endings_that_sdks_send(ending: bytes) -> None:
    request = aws_example(True, ending)
    assert decode(request, split(request.body, 1000), verified=doc_verify(request))[0] == \
        b"a" * 66560


@pytest.mark.parametrize("sizes", [65536, 8192, [8192, 8192, 83616], [100000], [70000, 30000]])
def test_signed_chunks_decode(sizes) -> None:
    payload = os.urandom(100000)
    request, pieces = signed_chunked_request(payload, sizes)
    verified = request.verify()
    assert verified is not None and verified.payload_mode.signed_chunks
    for cut in (len(request.body), 65536, 4096, 333):
        assert decode(request, split(request.body, cut))[0] == payload
    assert decode(request, pieces)[1].md5 == hashlib.md5(payload).digest()


def test_signed_empty_payload() -> None:
    request, _ = signed_chunked_request(b"")
    payload, result = decode(request)
    assert payload == b"" and result.size == 0


def test_tampered_signed_chunks_are_refused() -> None:
    payload = os.urandom(3 * 65536)
    request, pieces = signed_chunked_request(payload)
    # a flipped bit in the second chunk's data
    at = len(pieces[0]) + 1000
    tampered = request.body[:at] + bytes([request.body[at] ^ 1]) + request.body[at + 1:]
    refused("SignatureDoesNotMatch", 403, request, [tampered])
    # chunks swapped (same sizes, both validly signed in their own place)
    refused("SignatureDoesNotMatch", 403, request, [pieces[1], pieces[0], *pieces[2:]])
    # a chunk left out (decoded length then short) or its signature replaced
    refused("SignatureDoesNotMatch", 403, request, [pieces[0], *pieces[2:]])
    forged = re.sub(rb"chunk-signature=[0-9a-f]{64}", b"chunk-signature=" + b"0" * 64,
                    pieces[1], count=1)
    refused("SignatureDoesNotMatch", 403, request, [pieces[0], forged, *pieces[2:]])
    unsigned = re.sub(rb";chunk-signature=[0-9a-f]{64}", b"", pieces[1], count=1)
    refused("SignatureDoesNotMatch", 403, request, [pieces[0], unsigned, *pieces[2:]])
    # the final chunk's signature is checked too
    final = re.sub(rb"chunk-signature=[0-9a-f]{64}", b"chunk-signature=" + b"1" * 64, pieces[-1])
    refused("SignatureDoesNotMatch", 403, request, [*pieces[:-1], final])


def test_small_signed_chunk_before_the_last_is_refused() -> None:
    request, _ = signed_chunked_request(os.urandom(20000), [8191, 8192, 3617])
    error = refused("InvalidChunkSizeError", 400, request)
    assert "8192" in str(error)


def test_signed_trailer() -> None:
    payload = os.urandom(150000)
    good = crc32_b64(payload)
    request, pieces = signed_chunked_request(payload, trailer=("x-amz-checksum-crc32", good))
    verified = request.verify()
    assert verified is not None and verified.trailer_names == ("x-amz-checksum-crc32",)
    assert decode(request, split(request.body, 10000))[1].checksums == {"crc32": good}
    # the trailer's value changed: its signature no longer matches
    other = base64.b64encode(b"\1\2\3\4").decode()
    changed = pieces[-1].replace(good.encode(), other.encode())
    refused("SignatureDoesNotMatch", 403, request, [*pieces[:-1], changed])
    # a wrong checksum, correctly signed: BadDigest
    wrong, _ = signed_chunked_request(payload, trailer=("x-amz-checksum-crc32", other))
    refused("BadDigest", 400, wrong)
    # no trailer signature
    unsigned = re.sub(rb"x-amz-trailer-signature:[0-9a-f]{64}\r\n", b"", pieces[-1])
    refused("SignatureDoesNotMatch", 403, request, [*pieces[:-1], unsigned])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_signed_chunks_decode_however_the_body_is_cut(data: st.DataObject) -> None:
    length = data.draw(st.integers(0, 120000))
    chunk = data.draw(st.integers(8192, 70000))
    trailer = data.draw(st.booleans())
    payload = os.urandom(length)
    request, _ = signed_chunked_request(
        payload, chunk, trailer=("x-amz-checksum-crc32", crc32_b64(payload)) if trailer else None)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(request.body)), max_size=30)))
    pieces = [request.body[a:b] for a, b in zip([0, *cuts], [*cuts, len(request.body)],
                                                strict=True)]
    wrap = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
    decoded, result = decode(request, pieces, wrap=wrap)
    assert decoded == payload and result.size == length


# ---- lengths and framing ------------------------------------------------------------


def test_plain_body_shorter_or_longer_than_content_length() -> None:
    request = capture(lambda: HTTPS.get_object(Bucket="b", Key="k"))  # signs an empty body
    headers = request.with_header("Content-Length", "100").headers
    verified = request.verify()
    error = refused("IncompleteBody", 400, request, [b"x" * 99], headers=headers, verified=verified)
    assert "Content-Length" in str(error)
    refused("InvalidRequest", 400, request, [b"x" * 60, b"x" * 41], headers=headers,
            verified=verified)
    anonymous = [("Content-Length", "100")]
    payload, result = decode(request, [b"x" * 50, b"", b"x" * 50], headers=anonymous,
                             verified=None)
    assert result.size == 100 and payload == b"x" * 100
    refused("XAmzContentSHA256Mismatch", 400, request, [b"x" * 100], headers=headers,
            verified=verified)


def test_chunked_body_lengths() -> None:
    payload = os.urandom(100000)
    request, pieces = signed_chunked_request(payload)
    # declared decoded length shorter or longer than the chunks carry (header signed too:
    # here only the payload layer is asked)
    verified = request.verify()
    for declared, code in (("99999", "InvalidRequest"), ("100001", "IncompleteBody")):
        headers = request.with_header("x-amz-decoded-content-length", declared).headers
        refused(code, 400, request, headers=headers, verified=verified)
    headers = request.with_header("x-amz-decoded-content-length", None).headers
    refused("MissingContentLength", 411, request, headers=headers, verified=verified)
    # the body cut short, or with bytes after its end
    refused("IncompleteBody", 400, request, pieces[:-1])
    refused("IncompleteBody", 400, request, [request.body[:-1]])
    no_length = request.with_header("Content-Length", None).headers
    refused("InvalidRequest", 400, request, [request.body + b"0\r\n"], headers=no_length,
            verified=verified)
    refused("InvalidRequest", 400, request, [request.body, b"x"])  # past Content-Length


@pytest.mark.parametrize(("change", "code"), [
    (lambda body: body.replace(b"2af8\r\n", b"2aZ8\r\n", 1), "InvalidRequest"),
    (lambda body: body.replace(b"2af8\r\n", b"2af8\n", 1), "InvalidRequest"),
    (lambda body: body.replace(b"2af8\r\n", b"2af8" + b" " * 5000 + b"\r\n", 1), "InvalidRequest"),
    (lambda body: body.replace(b"2af8\r\n", b"2af7\r\n", 1), "InvalidRequest"),
    (lambda body: body.replace(b"2af8\r\n", b"2af9\r\n", 1), "InvalidRequest"),
    (lambda body: body.replace(b"2af8\r\n", b"0x2af8\r\n", 1), "InvalidRequest"),
])
def test_malformed_aws_chunked_framing(change, code: str) -> None:
    request = capture(lambda: HTTPS.put_object(Bucket="b", Key="k", Body=b"hello" * 2200))
    assert request.body.startswith(b"2af8\r\n")  # 11000 bytes in one chunk
    bad = Captured(**{**request.__dict__, "body": change(request.body)})
    refused(code, 400, bad, split(bad.body, 1000))


def test_pieces_are_views_of_what_was_fed() -> None:
    request, _ = signed_chunked_request(os.urandom(200000))
    verifier = PayloadVerifier(HeaderMap(request.headers), request.verify())
    fed = [request.body[i:i + 50000] for i in range(0, len(request.body), 50000)]
    for piece in fed:
        for view in verifier.feed(piece):
            assert view.obj is piece  # no copy
    verifier.finish()


def test_anonymous_bodies() -> None:
    headers = HeaderMap([("x-amz-content-sha256", hashlib.sha256(SMALL).hexdigest()),
                         ("Content-Length", str(len(SMALL)))])
    verifier = PayloadVerifier(headers)
    verifier.feed(SMALL)
    assert verifier.finish().size == len(SMALL)
    with pytest.raises(S3AuthError) as info:
        PayloadVerifier(HeaderMap([("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
                                   ("x-amz-decoded-content-length", "0")]))
    assert info.value.code == "AccessDenied"


def test_trailer_announced_without_a_trailer_mode_is_refused() -> None:
    with pytest.raises(S3AuthError) as info:
        PayloadVerifier(HeaderMap([("x-amz-trailer", "x-amz-checksum-crc32")]))
    assert info.value.code == "InvalidRequest"


def test_stored_content_encoding_drops_aws_chunked() -> None:
    assert stored_content_encoding(HeaderMap([("Content-Encoding", "aws-chunked")])) is None
    assert stored_content_encoding(HeaderMap([("Content-Encoding", "gzip,aws-chunked")])) == "gzip"
    assert stored_content_encoding(HeaderMap([])) is None
