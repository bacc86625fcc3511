"""SigV4 verification of requests signed by botocore itself and of AWS's documented examples."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote_to_bytes

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from deossfs.gateway.credentials import AccessKey
from deossfs.gateway.s3.sigv4 import (
    PayloadMode,
    S3AuthError,
    canonical_uri,
    derive_signing_key,
    verify_request,
)

from .s3_requests import (
    ALICE_KEY,
    BOB_KEY,
    Captured,
    capture,
    client,
    from_prepared,
    from_url,
)

HTTPS = client()
HTTP = client(endpoint="http://127.0.0.1:9000")
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# object keys that have broken S3 signers before
AWKWARD_KEYS = [
    "plain.txt", "with space", "two  spaces ", "plus+sign", "percent%41", "%", "%2F", "tilde~",
    "a//double//slash", "/leading-slash", "//", "trailing/", "ünïcødé/日本語", "emoji 🎉",
    "quote'\"", "semi;colon=eq&amp", "question?hash#", "back\\slash", "dots/../and/./",
    "ctrl\x01\x7f", "asterisk*(parens)!", "comma,colon:at@dollar$",
]


def refused(request: Captured, code: str, status: int = 403, now: float | None = None,
            keys=None) -> S3AuthError:
    with pytest.raises(S3AuthError) as info:
        if keys is None:
            request.verify(now)
        else:
            request.verify(now, keys)
    assert (info.value.code, info.value.status) == (code, status), str(info.value)
    return info.value


# ---- botocore's own requests ---------------------------------------------------


@pytest.mark.parametrize("key", AWKWARD_KEYS)
@pytest.mark.parametrize("s3", [HTTPS, HTTP], ids=["https", "http"])
def test_put_object_with_awkward_keys(s3, key: str) -> None:
    request = capture(lambda: s3.put_object(Bucket="bucket", Key=key, Body=b"x" * 100))
    verified = request.verify()
    assert verified is not None
    assert verified.access_key == ALICE_KEY and verified.account == "alice"
    assert not verified.presigned
    if s3 is HTTPS:  # boto3 >= 1.36 over TLS: aws-chunked with a CRC32 trailer
        assert verified.payload_mode is PayloadMode.STREAMING_UNSIGNED_TRAILER
        assert verified.trailer_names == ("x-amz-checksum-crc32",)
    else:  # over plain HTTP botocore signs the payload's SHA-256
        assert verified.payload_mode is PayloadMode.SHA256
        assert len(verified.content_sha256) == 64


@pytest.mark.parametrize("call", [
    lambda s3: s3.get_bucket_acl(Bucket="bucket"),  # ?acl: a name without a value
    lambda s3: s3.list_multipart_uploads(Bucket="bucket", Prefix="a b"),  # ?uploads&prefix=
    lambda s3: s3.list_objects_v2(Bucket="bucket", Prefix="a+b/é", Delimiter="/", StartAfter=""),
    lambda s3: s3.list_objects(Bucket="bucket", Marker="m=1&x", MaxKeys=7),
    lambda s3: s3.delete_objects(Bucket="bucket", Delete={"Objects": [{"Key": "a b"}]}),
    lambda s3: s3.get_object(Bucket="bucket", Key="k y", Range="bytes=0-9",
                             ResponseContentDisposition='attachment; filename="a b.txt"'),
    lambda s3: s3.head_object(Bucket="bucket", Key="k", IfNoneMatch='"abc"'),
    lambda s3: s3.copy_object(Bucket="bucket", Key="to", CopySource="bucket/from key+1"),
    lambda s3: s3.put_object(Bucket="bucket", Key="k", Body=b"", ContentType="text/plain",
                             Metadata={"spaced": "  many   inner   spaces  ", "e": ""}),
    lambda s3: s3.create_multipart_upload(Bucket="bucket", Key="k"),  # ?uploads (POST)
    lambda s3: s3.upload_part(Bucket="bucket", Key="k", UploadId="u/1+2", PartNumber=3,
                              Body=b"p" * 5000),
    lambda s3: s3.list_buckets(),
], ids=["acl", "uploads", "list-v2", "list-v1", "delete-objects", "get-range", "head",
        "copy", "metadata", "create-multipart", "upload-part", "list-buckets"])
@pytest.mark.parametrize("s3", [HTTPS, HTTP], ids=["https", "http"])
def test_operations_verify(s3, call) -> None:
    request = capture(lambda: call(s3))
    assert request.verify() is not None


def test_any_region_is_accepted_but_the_service_must_be_s3() -> None:
    for region in ("eu-central-1", "cess", "us-east-1"):
        request = capture(lambda r=region: client(region=r).head_bucket(Bucket="bucket"))
        verified = request.verify()
        assert verified is not None and verified.region == region
        assert verified.signing.scope.endswith(f"/{region}/s3/aws4_request")
    request = capture(lambda: HTTPS.head_bucket(Bucket="bucket"))
    authorization = request.header("authorization") or ""
    bad = request.with_header("Authorization", authorization.replace("/s3/", "/ec2/"))
    assert "incorrect service" in str(refused(bad, "AuthorizationHeaderMalformed", 400))


def test_date_header_instead_of_x_amz_date() -> None:
    request = AWSRequest(method="GET", url="https://gateway.test/bucket/key",
                         headers={"Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
    S3SigV4Auth(Credentials(ALICE_KEY.access_key_id, ALICE_KEY.secret), "s3", "us-east-1"
                ).add_auth(request)
    captured = from_prepared(request.prepare())
    assert captured.header("x-amz-date") is None and captured.header("date")
    verified = captured.verify()
    assert verified is not None and abs(verified.signed_at.timestamp() - time.time()) < 60


def test_the_verified_request_carries_the_seed_and_signing_key() -> None:
    request = capture(lambda: HTTPS.put_object(Bucket="b", Key="k", Body=b"data"))
    verified = request.verify()
    assert verified is not None
    authorization = request.header("authorization") or ""
    assert verified.signing.seed_signature == authorization.rpartition("Signature=")[2]
    date = verified.signing.amz_date[:8]
    assert verified.signing.signing_key == derive_signing_key(ALICE_KEY.secret, date, "us-east-1")
    assert ALICE_KEY.secret not in repr(verified)
    assert "signing_key" not in repr(verified.signing)


# ---- refusals ---------------------------------------------------------------------


def test_wrong_secret_is_signature_does_not_match() -> None:
    impostor = AccessKey(ALICE_KEY.access_key_id, "not-the-secret" * 3, "alice", 0.0)
    request = capture(lambda: client(impostor).get_object(Bucket="b", Key="k"))
    error = refused(request, "SignatureDoesNotMatch")
    assert error.details["AWSAccessKeyId"] == ALICE_KEY.access_key_id
    assert error.details["CanonicalRequest"].startswith("GET\n/b/k\n")
    assert ALICE_KEY.secret not in str(error.details)


def test_unknown_key_is_invalid_access_key_id() -> None:
    stranger = AccessKey("AKIDSTRANGER00000000", "s" * 40, "nobody", 0.0)
    request = capture(lambda: client(stranger).get_object(Bucket="b", Key="k"))
    refused(request, "InvalidAccessKeyId")


def test_another_keys_signature_does_not_pass_for_alice() -> None:
    request = capture(lambda: client(BOB_KEY).get_object(Bucket="b", Key="k"))
    authorization = request.header("authorization") or ""
    forged = request.with_header("Authorization", authorization.replace(
        BOB_KEY.access_key_id, ALICE_KEY.access_key_id))
    refused(forged, "SignatureDoesNotMatch")


@pytest.mark.parametrize("minutes", [-16, 16, 60 * 24])
def test_clock_skew_over_15_minutes_is_refused(minutes: int) -> None:
    request = capture(lambda: HTTPS.get_object(Bucket="b", Key="k"))
    error = refused(request, "RequestTimeTooSkewed", now=time.time() + minutes * 60)
    assert error.details["MaxAllowedSkewMilliseconds"] == "900000"


@pytest.mark.parametrize("minutes", [-14, 14])
def test_clock_skew_within_15_minutes_is_accepted(minutes: int) -> None:
    request = capture(lambda: HTTPS.get_object(Bucket="b", Key="k"))
    assert request.verify(now=time.time() + minutes * 60) is not None


def test_anonymous_request_is_reported_as_none() -> None:
    request = Captured("GET", "/bucket/key", "versionId=3", [("Host", "gateway.test")])
    assert request.verify() is None


def test_unsigned_amz_header_is_refused() -> None:
    request = capture(lambda: HTTPS.put_object(Bucket="b", Key="k", Body=b"x"))
    sneaky = request.with_header("x-amz-meta-added", "later")
    error = refused(sneaky, "AccessDenied")
    assert error.details["HeadersNotSigned"] == "x-amz-meta-added"
    # headers that are not x-amz-* may go unsigned (User-Agent, Expect... are)
    assert request.with_header("X-Forwarded-For", "10.0.0.1").verify() is not None


def test_a_signed_header_left_out_is_refused() -> None:
    request = capture(lambda: HTTPS.put_object(Bucket="b", Key="k", Body=b"x",
                                               Metadata={"empty": ""}))
    assert "x-amz-meta-empty" in (request.header("authorization") or "")
    error = refused(request.with_header("x-amz-meta-empty", None), "SignatureDoesNotMatch")
    assert "x-amz-meta-empty" in str(error)


def test_session_tokens_are_refused() -> None:
    request = capture(lambda: HTTPS.get_object(Bucket="b", Key="k"))
    refused(request.with_header("X-Amz-Security-Token", "token"), "InvalidToken", 400)


@pytest.mark.parametrize(("change", "code", "status"), [
    (lambda a: a.replace("AWS4-HMAC-SHA256", "AWS"), "InvalidRequest", 400),
    (lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"), "InvalidRequest", 400),
    (lambda a: a.replace("AWS4-HMAC-SHA256", "Bearer"), "InvalidArgument", 400),
    (lambda a: a.replace("Credential=", "Credentials="), "AuthorizationHeaderMalformed", 400),
    (lambda a: a.replace("/aws4_request", "/aws5_request"), "AuthorizationHeaderMalformed", 400),
    (lambda a: a.replace("/us-east-1/", "/us-east-1/extra/"), "AuthorizationHeaderMalformed", 400),
    (lambda a: a.replace("/20", "/19", 1), "AuthorizationHeaderMalformed", 400),  # credential date
    (lambda a: a.replace("SignedHeaders=host;", "SignedHeaders="), "AuthorizationHeaderMalformed",
     400),
    (lambda a: a.replace("SignedHeaders=host", "SignedHeaders=Host"),
     "AuthorizationHeaderMalformed", 400),
    (lambda a: a + ", Signature=00", "AuthorizationHeaderMalformed", 400),
    (lambda a: a[:-1] + ("0" if a[-1] != "0" else "1"), "SignatureDoesNotMatch", 403),
    (lambda a: a[:-1], "SignatureDoesNotMatch", 403),
    (lambda a: a.upper().replace("AWS4-HMAC-SHA256 CREDENTIAL", "AWS4-HMAC-SHA256 Credential"),
     "AuthorizationHeaderMalformed", 400),
])
def test_malformed_authorization_headers(change, code: str, status: int) -> None:
    request = capture(lambda: HTTPS.get_object(Bucket="b", Key="k"))
    authorization = request.header("authorization") or ""
    refused(request.with_header("Authorization", change(authorization)), code, status)


def test_bad_or_missing_dates_and_content_sha256() -> None:
    request = capture(lambda: HTTPS.get_object(Bucket="b", Key="k"))
    refused(request.with_header("X-Amz-Date", "yesterday"), "AccessDenied")
    refused(request.with_header("X-Amz-Date", None), "AccessDenied")
    refused(request.with_header("x-amz-content-sha256", None), "InvalidRequest", 400)
    refused(request.with_header("x-amz-content-sha256", "not-a-hash"), "InvalidArgument", 400)
    refused(request.with_header("x-amz-content-sha256", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"),
            "NotImplemented", 501)
    two = Captured(request.method, request.raw_path, request.query,
                   [*request.headers, ("Authorization", request.header("authorization") or "")])
    refused(two, "AuthorizationHeaderMalformed", 400)


def test_header_and_query_auth_together_are_refused() -> None:
    request = capture(lambda: HTTPS.get_object(Bucket="b", Key="k"))
    url = HTTPS.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    both = Captured("GET", request.raw_path, url.partition("?")[2], request.headers)
    refused(both, "InvalidArgument", 400)


def test_signature_v2_is_refused() -> None:
    v2 = Captured("GET", "/b/k", "AWSAccessKeyId=AKID&Expires=1&Signature=abc",
                  [("Host", "gateway.test")])
    refused(v2, "InvalidRequest", 400)


# ---- presigned URLs -----------------------------------------------------------------


@pytest.mark.parametrize("key", AWKWARD_KEYS[:12])
def test_presigned_get_and_put_verify(key: str) -> None:
    for operation, method in (("get_object", "GET"), ("put_object", "PUT")):
        url = HTTPS.generate_presigned_url(operation, Params={"Bucket": "bucket", "Key": key},
                                           ExpiresIn=300)
        verified = from_url(method, url).verify()
        assert verified is not None and verified.presigned
        assert verified.payload_mode is PayloadMode.UNSIGNED
        assert verified.expires_at is not None
        assert verified.expires_at.timestamp() - verified.signed_at.timestamp() == 300


def test_presigned_with_response_overrides() -> None:
    url = HTTPS.generate_presigned_url("get_object", Params={
        "Bucket": "b", "Key": "k", "ResponseContentDisposition": 'attachment; filename="a b.txt"',
        "ResponseContentType": "text/plain; charset=utf-8", "VersionId": ""})
    assert from_url("GET", url).verify() is not None


def test_presigned_url_expires() -> None:
    url = HTTPS.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"},
                                       ExpiresIn=60)
    request = from_url("GET", url)
    assert request.verify(now=time.time() + 50) is not None
    error = refused(request, "AccessDenied", now=time.time() + 62)
    assert str(error) == "Request has expired"
    # a URL dated in the future is not valid yet (beyond the 15 minutes of skew)
    assert str(refused(request, "AccessDenied", now=time.time() - 20 * 60)) == \
        "Request is not valid yet"


def test_presigned_expiry_over_a_week_is_refused() -> None:
    url = HTTPS.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"},
                                       ExpiresIn=604800)
    assert from_url("GET", url).verify() is not None
    longer = url.replace("X-Amz-Expires=604800", "X-Amz-Expires=604801")
    refused(from_url("GET", longer), "AuthorizationQueryParametersError", 400)
    for value in ("-1", "soon", ""):
        bad = url.replace("X-Amz-Expires=604800", f"X-Amz-Expires={value}")
        refused(from_url("GET", bad), "AuthorizationQueryParametersError", 400)


def test_tampered_presigned_urls_are_refused() -> None:
    url = HTTPS.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    refused(from_url("GET", url.replace("/b/k?", "/b/other?")), "SignatureDoesNotMatch")
    refused(from_url("PUT", url), "SignatureDoesNotMatch")
    refused(from_url("GET", url + "&versionId=1"), "SignatureDoesNotMatch")
    refused(from_url("GET", url.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=")),
            "AuthorizationQueryParametersError", 400)
    refused(from_url("GET", url.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256&", "")),
            "AuthorizationQueryParametersError", 400)
    refused(from_url("GET", url, [("x-amz-meta-x", "1")]), "AccessDenied")


def test_presigned_unknown_key_and_wrong_secret() -> None:
    impostor = AccessKey(ALICE_KEY.access_key_id, "x" * 40, "alice", 0.0)
    url = client(impostor).generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    refused(from_url("GET", url), "SignatureDoesNotMatch")
    stranger = AccessKey("AKIDSTRANGER00000000", "s" * 40, "nobody", 0.0)
    url = client(stranger).generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    refused(from_url("GET", url), "InvalidAccessKeyId")


# ---- AWS's documented examples (credentials and values from the S3 API reference) ---

DOC_KEY = AccessKey("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "doc", 0.0)
DOC_NOW = datetime(2013, 5, 24, 0, 5, tzinfo=UTC)
DOC_HOST = ("Host", "examplebucket.s3.amazonaws.com")
DOC_DATE = ("x-amz-date", "20130524T000000Z")


def doc_authorization(signed_headers: str, signature: str) -> tuple[str, str]:
    return ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
            f"us-east-1/s3/aws4_request,SignedHeaders={signed_headers},Signature={signature}")


DOC_EXAMPLES = {
    "get-object": ("GET", "/test.txt", "", [
        DOC_HOST, DOC_DATE, ("Range", "bytes=0-9"), ("x-amz-content-sha256", EMPTY),
        doc_authorization("host;range;x-amz-content-sha256;x-amz-date",
                          "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")]),
    "put-object": ("PUT", "/test%24file.text", "", [
        DOC_HOST, DOC_DATE, ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("x-amz-content-sha256", "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"),
        doc_authorization("date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                          "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")]),
    "get-lifecycle": ("GET", "/", "lifecycle", [
        DOC_HOST, DOC_DATE, ("x-amz-content-sha256", EMPTY),
        doc_authorization("host;x-amz-content-sha256;x-amz-date",
                          "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")]),
    "list-objects": ("GET", "/", "max-keys=2&prefix=J", [
        DOC_HOST, DOC_DATE, ("x-amz-content-sha256", EMPTY),
        doc_authorization("host;x-amz-content-sha256;x-amz-date",
                          "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")]),
    "presigned-get": ("GET", "/test.txt", (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
        "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&"
        "X-Amz-SignedHeaders=host&X-Amz-Signature="
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"), [DOC_HOST]),
}


@pytest.mark.parametrize("name", list(DOC_EXAMPLES))
def test_aws_documented_examples(name: str) -> None:
    method, path, query, headers = DOC_EXAMPLES[name]
    keys = {DOC_KEY.access_key_id: DOC_KEY}.get
    verified = verify_request(method, path, query, headers, keys, DOC_NOW)
    assert verified is not None and verified.account == "doc"
    # one byte off anywhere in the path fails
    with pytest.raises(S3AuthError):
        verify_request(method, path + "x", query, headers, keys, DOC_NOW)


def test_canonical_uri_keeps_the_path_as_s3_signs_it() -> None:
    assert canonical_uri("") == "/"
    assert canonical_uri("/b//a%20b/%2Fx/./..") == "/b//a%20b/%2Fx/./.."
    assert canonical_uri("/b/a b+c~(") == "/b/a%20b%2Bc~%28"  # sent unencoded, signed encoded
    assert canonical_uri("/b/%7e%2b") == "/b/~%2B"  # any escape case, one canonical form
    assert canonical_uri(b"/b/\xc3\xbc") == "/b/%C3%BC"


# ---- properties ---------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"),
                       max_size=30)
QUERY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def random_request(data: st.DataObject) -> Captured:
    s3 = data.draw(st.sampled_from([HTTPS, HTTP]))
    kind = data.draw(st.sampled_from(["put", "list", "get"]))
    if kind == "put":
        key = data.draw(TEXT | st.sampled_from(AWKWARD_KEYS))
        metadata = data.draw(st.dictionaries(
            st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8),
            HEADER_VALUE, max_size=3))
        body = data.draw(st.binary(max_size=300))
        return capture(lambda: s3.put_object(Bucket="bucket", Key=key, Body=body,
                                             Metadata=metadata))
    if kind == "list":
        prefix, start_after = data.draw(QUERY_TEXT), data.draw(QUERY_TEXT)
        return capture(lambda: s3.list_objects_v2(Bucket="bucket", Prefix=prefix,
                                                  StartAfter=start_after, Delimiter="/"))
    key = data.draw(TEXT)
    disposition = data.draw(QUERY_TEXT)
    return capture(lambda: s3.get_object(Bucket="bucket", Key=key,
                                         ResponseContentDisposition=disposition))


@PROPERTY
@given(st.data())
def test_any_request_botocore_signs_verifies(data: st.DataObject) -> None:
    assert random_request(data).verify() is not None


@PROPERTY
@given(st.data())
def test_any_presigned_url_botocore_makes_verifies(data: st.DataObject) -> None:
    key = data.draw(TEXT)
    params = {"Bucket": "bucket", "Key": key}
    if data.draw(st.booleans()):
        params["ResponseContentDisposition"] = data.draw(QUERY_TEXT)
    url = HTTPS.generate_presigned_url("get_object", Params=params,
                                       ExpiresIn=data.draw(st.integers(1, 604800)))
    assert from_url("GET", url).verify() is not None


def _folded(value: str) -> str:
    return " ".join(value.split())


def _same_meaning(original: Captured, changed: Captured) -> bool:
    """Whether a change leaves the signed request the same: another spelling of the
    same path, query or header values (e.g. %2b for %2B, or a space more)."""
    def path(p: str) -> list[bytes]:
        return [unquote_to_bytes(s) for s in p.split("/")]

    def query(q: str) -> list[tuple[str, str]]:
        return sorted(parse_qsl(q, keep_blank_values=True))

    def headers(c: Captured) -> list[tuple[str, str]]:
        signed = (c.header("authorization") or "").partition("SignedHeaders=")[2]
        names = signed.partition(",")[0].split(";")
        return [(n, _folded(c.header(n) or "")) for n in names] + [
            ("authorization", c.header("authorization") or "")] + sorted(
            (n.lower(), v) for n, v in c.headers if n.lower().startswith("x-amz-"))

    return (original.method.upper() == changed.method.upper() and path(original.raw_path) ==
            path(changed.raw_path) and query(original.query) == query(changed.query)
            and headers(original) == headers(changed))


@PROPERTY
@given(st.data())
def test_any_single_byte_change_fails(data: st.DataObject) -> None:
    request = random_request(data)
    signed = set((request.header("authorization") or "").partition("SignedHeaders=")[2]
                 .partition(",")[0].split(";"))
    targets = ["method", "raw_path", "query"] + [
        i for i, (name, _) in enumerate(request.headers)
        if name.lower() in signed | {"authorization"}]
    target = data.draw(st.sampled_from(targets))
    replacement = data.draw(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("%"))
    if isinstance(target, str):
        text = getattr(request, target)
        assume(text)
        at = data.draw(st.integers(0, len(text) - 1))
        assume(text[at] != replacement)
        changed_text = text[:at] + replacement + text[at + 1:]
        changed = Captured(**{**request.__dict__, target: changed_text})
    else:
        name, value = request.headers[target]
        in_name = data.draw(st.booleans())
        text = name if in_name else value
        assume(text)
        at = data.draw(st.integers(0, len(text) - 1))
        assume(text[at] != replacement)
        text = text[:at] + replacement + text[at + 1:]
        headers = list(request.headers)
        headers[target] = (text, value) if in_name else (name, text)
        changed = Captured(**{**request.__dict__, "headers": headers})
    if _same_meaning(request, changed):
        event("another spelling of the same request")
        assert changed.verify() is not None
    else:  # refused, or anonymous (a change to the name "Authorization")
        try:
            assert changed.verify() is None
            event("anonymous")
        except S3AuthError as error:
            event(error.code)
