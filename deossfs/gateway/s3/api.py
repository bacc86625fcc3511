"""The S3-compatible API: one ASGI application beside DeOSS's routes on the same listener.

Requests are path-style (`/bucket/key`) or, when `gateway.domain` is set, virtual-host
style (`bucket.domain/key`). Every request is signed with SigV4 (header or presigned
URL) by an access key from `deossfs gateway key create`, bound to an account the gateway
may act for. The operation is chosen by method, bucket, key and query subresource, as
S3 does; what deossfs does not implement answers NotImplemented (501) in S3's XML, never
a wrong success. docs/gateway.md lists the operations.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...catalog.catalog import Catalog, Catalogs, ListPage
from ...errors import AlreadyExists, DeossError, InvalidInput, NoSuchBucket
from ..credentials import KeyStore
from ..engine import GatewayEngine
from ..uploads import UploadService
from . import xml
from .context import S3Call, S3Error, authenticate, error_response
from .multipart import MultipartStore
from .objects import ObjectOperations
from .planning import PartsPlanning

log = logging.getLogger(__name__)

Handler = Callable[[S3Call], Awaitable[Any]]
#: bucket subresources answered as S3 does for a bucket that has none of them
_EMPTY_BUCKET_CONFIGS = {"versioning": ("VersioningConfiguration", [])}
_NOT_IMPLEMENTED = ("policy", "cors", "lifecycle", "website", "replication", "encryption",
                    "notification", "logging", "object-lock", "accelerate", "requestPayment",
                    "ownershipControls", "publicAccessBlock", "intelligent-tiering", "inventory",
                    "metrics", "analytics", "retention", "legal-hold", "restore", "select",
                    "torrent")


class S3Api:
    def __init__(self, engine: GatewayEngine, uploads: UploadService, keys: KeyStore,
                 catalogs: Catalogs, multipart: MultipartStore) -> None:
        self.engine = engine
        self.uploads = uploads
        self.keys = keys
        self.catalogs = catalogs
        self.multipart = multipart
        #: pass 1 of multipart uploads while their parts arrive
        self.planning = PartsPlanning(engine, multipart)
        self.objects = ObjectOperations(self)
        self.region = engine.config.gateway.region
        self._completion_locks: dict[str, trio.Lock] = {}

    def catalog(self, call: S3Call) -> Catalog:
        return self.catalogs.of(call.owner)

    def completion_lock(self, upload_id: str) -> trio.Lock:
        if len(self._completion_locks) > 10_000:
            self._completion_locks = {k: v for k, v in self._completion_locks.items() if v.locked()}
        return self._completion_locks.setdefault(upload_id, trio.Lock())

    # ---- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        head = scope["method"] == "HEAD"
        call: S3Call | None = None
        try:
            call = await authenticate(request, self.engine, self.keys)
            response = await self.dispatch(call)
        except ClientDisconnect:
            log.info("%s %s: the client disconnected before its body was complete",
                     scope["method"], scope["path"])
            return
        except BaseException as exc:
            exc = _unwrap(exc)
            if not isinstance(exc, DeossError):
                if isinstance(exc, Exception):
                    log.error("S3 %s %s failed", scope["method"], scope["path"], exc_info=exc)
                else:
                    raise
            request_id = scope.setdefault("state", {}).setdefault("request_id", "0")
            resource = call.resource if call else scope["path"]
            response = error_response(exc, resource, request_id, head=head)
        if call is not None and hasattr(response, "headers"):
            response.headers.setdefault("x-amz-request-id", call.request_id)
        await response(scope, receive, send)

    async def dispatch(self, call: S3Call) -> Any:
        method, bucket, key = call.request.method, call.bucket, call.key
        if not bucket:
            if method == "GET":
                return await self.list_buckets(call)
            raise S3Error("MethodNotAllowed", f"{method} is not allowed on the service", 405)
        for name in _NOT_IMPLEMENTED:
            if call.has(name):
                raise S3Error("NotImplemented", f"the {name} subresource is not implemented by "
                              "this gateway", 501)
        if not key:
            return await self._bucket_operation(call, method)
        return await self._object_operation(call, method)

    async def _bucket_operation(self, call: S3Call, method: str) -> Any:
        table: dict[tuple[str, str], Handler] = {
            ("PUT", ""): self.create_bucket, ("HEAD", ""): self.head_bucket,
            ("DELETE", ""): self.delete_bucket, ("GET", "location"): self.get_bucket_location,
            ("GET", "versioning"): self.get_bucket_versioning, ("GET", "acl"): self.get_acl,
            ("GET", "tagging"): self.get_tagging, ("GET", "uploads"): self.list_uploads,
            ("GET", "versions"): self.list_versions, ("POST", "delete"): self.objects.delete_objects,
            ("GET", ""): self.list_objects,
        }
        if method == "PUT" and (call.has("acl") or call.has("tagging") or call.has("versioning")):
            raise S3Error("NotImplemented", "changing a bucket's ACL, tags or versioning is not "
                          "implemented: buckets are private and unversioned", 501)
        named = [s for m, s in table if s and m == method and call.has(s)]
        others = [s for _, s in table if s and call.has(s)]
        handler = table.get((method, named[0] if named else "")) if named or not others else None
        if handler is not None:
            return await handler(call)
        raise S3Error("MethodNotAllowed", f"{method} is not allowed on a bucket here", 405)

    async def _object_operation(self, call: S3Call, method: str) -> Any:
        objects = self.objects
        if method == "PUT":
            if call.has("uploadId") or call.has("partNumber"):
                if call.header("x-amz-copy-source"):
                    return await objects.upload_part_copy(call)
                return await objects.upload_part(call)
            if call.has("acl") or call.has("tagging"):
                raise S3Error("NotImplemented", "object ACLs and tags cannot be set here: objects "
                              "are private to their account", 501)
            if call.header("x-amz-copy-source"):
                return await objects.copy_object(call)
            return await objects.put_object(call)
        if method == "GET":
            if call.has("uploadId"):
                return await objects.list_parts(call)
            if call.has("attributes"):
                return await objects.get_object_attributes(call)
            if call.has("acl"):
                await self.catalog(call).get(call.bucket, call.key)
                return self.get_acl_document(call)
            if call.has("tagging"):
                await self.catalog(call).get(call.bucket, call.key)
                return _xml("Tagging", [("TagSet", [])])
            return await objects.get_object(call)
        if method == "HEAD":
            return await objects.get_object(call, head=True)
        if method == "DELETE":
            if call.has("uploadId"):
                return await objects.abort_multipart(call)
            return await objects.delete_object(call)
        if method == "POST":
            if call.has("uploads"):
                return await objects.create_multipart(call)
            if call.has("uploadId"):
                return await objects.complete_multipart(call)
        raise S3Error("MethodNotAllowed", f"{method} is not allowed on an object here", 405)

    # ---- the service and buckets -----------------------------------------------------------

    def _owner(self, call: S3Call) -> list[tuple[str, str]]:
        return [("ID", call.owner), ("DisplayName", call.owner)]

    async def list_buckets(self, call: S3Call) -> Response:
        """ListBuckets, a page at a time when the client asks (max-buckets,
        continuation-token, prefix): the token is the last name of the page before."""
        prefix = call.query.get("prefix", "")
        paged = "max-buckets" in call.query
        limit = self._max_keys(call, "max-buckets", ceiling=10_000, smallest=1) if paged else 10_000
        token = call.query.get("continuation-token")
        after = _decode_token(token) if token else ""
        catalog = self.catalog(call)
        every = await catalog.buckets()
        created = await catalog.bucket_dates(every)
        names = sorted(name for name in every if name.startswith(prefix) and name > after)
        page = names[:limit]
        children: list[tuple[str, Any]] = [
            ("Owner", self._owner(call)),
            ("Buckets", [("Bucket", [("Name", name),
                                     ("CreationDate", xml.timestamp(created[name])),
                                     ("BucketRegion", self.region)])
                         for name in page])]
        if len(names) > limit:
            children.append(("ContinuationToken", _encode_token(page[-1])))
        if "prefix" in call.query:
            children.append(("Prefix", prefix))
        return _xml("ListAllMyBucketsResult", children)

    async def create_bucket(self, call: S3Call) -> Response:
        body = await self.objects._small_body(call)
        if body.strip():
            configuration = xml.parse(body, "CreateBucketConfiguration")
            location = xml.text(configuration, "LocationConstraint")
            if location not in (None, "", self.region):
                log.info("bucket %s asked for location %r; this gateway has one location (%s)",
                         call.bucket, location, self.region)
        try:
            await self.catalog(call).create_bucket(call.bucket)
        except AlreadyExists:
            raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named "
                          "bucket succeeded and you already own it.", 409) from None
        except DeossError as exc:
            if isinstance(exc, InvalidInput):
                raise S3Error("InvalidBucketName", f"The specified bucket is not valid: {exc}", 400) from None
            raise
        return Response(status_code=200, headers={"location": f"/{call.bucket}"})

    async def _require_bucket(self, call: S3Call) -> None:
        if call.bucket not in await self.catalog(call).buckets():
            raise NoSuchBucket(f"The specified bucket does not exist: {call.bucket}")

    async def head_bucket(self, call: S3Call) -> Response:
        await self._require_bucket(call)
        return Response(status_code=200, headers={"x-amz-bucket-region": self.region})

    async def delete_bucket(self, call: S3Call) -> Response:
        await self._require_bucket(call)
        await self.catalog(call).delete_bucket(call.bucket)
        return Response(status_code=204)

    async def get_bucket_location(self, call: S3Call) -> Response:
        await self._require_bucket(call)
        # us-east-1 is written as an empty LocationConstraint, as S3 does
        return _xml("LocationConstraint", [], text=None if self.region == "us-east-1" else self.region)

    async def get_bucket_versioning(self, call: S3Call) -> Response:
        await self._require_bucket(call)
        return _xml("VersioningConfiguration", [])

    def get_acl_document(self, call: S3Call) -> Response:
        """The one grant there is: the owner, FULL_CONTROL."""
        grantee = xml.Tagged({"xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
                              "xsi:type": "CanonicalUser"},
                             [("ID", call.owner), ("DisplayName", call.owner)])
        return _xml("AccessControlPolicy", [
            ("Owner", self._owner(call)),
            ("AccessControlList", [("Grant", [("Grantee", grantee), ("Permission", "FULL_CONTROL")])])])

    async def get_acl(self, call: S3Call) -> Response:
        await self._require_bucket(call)
        return self.get_acl_document(call)

    async def get_tagging(self, call: S3Call) -> Response:
        await self._require_bucket(call)
        return _xml("Tagging", [("TagSet", [])])

    # ---- listings ---------------------------------------------------------------------------

    def _max_keys(self, call: S3Call, name: str = "max-keys", ceiling: int = 1000,
                  smallest: int = 0) -> int:
        text = call.query.get(name, str(ceiling))
        try:
            value = int(text)
        except ValueError:
            raise InvalidInput(f"{name} must be a whole number") from None
        if value < smallest:
            raise InvalidInput(f"{name} must be at least {smallest}")
        return min(value, ceiling)

    async def list_objects(self, call: S3Call) -> Response:
        version_2 = call.query.get("list-type") == "2"
        prefix = call.query.get("prefix", "")
        delimiter = call.query.get("delimiter", "")
        encoding = call.query.get("encoding-type")
        if encoding not in (None, "url"):
            raise InvalidInput("encoding-type must be url")
        limit = self._max_keys(call)
        if version_2:
            token = call.query.get("continuation-token")
            start_after = _decode_token(token) if token else call.query.get("start-after", "")
        else:
            start_after = call.query.get("marker", "")
        catalog = self.catalog(call)
        await self._require_bucket(call)
        page = await catalog.list(call.bucket, prefix=prefix, start_after=start_after,
                                  limit=limit, delimiter=delimiter)
        if not limit:  # max-keys=0 asks for no keys: S3 answers an empty, untruncated page
            page = ListPage([], [], False, None)

        def encode(text: str) -> str:
            return quote(text, safe="/") if encoding == "url" else text

        children: list[tuple[str, Any]] = [("Name", call.bucket), ("Prefix", encode(prefix))]
        if version_2:
            if "continuation-token" in call.query:  # echoed even when empty, as S3 does
                children.append(("ContinuationToken", call.query["continuation-token"]))
            if call.query.get("start-after"):
                children.append(("StartAfter", encode(call.query["start-after"])))
            children.append(("KeyCount", len(page.objects) + len(page.prefixes)))
        else:
            children.append(("Marker", encode(start_after)))
        children += [("MaxKeys", limit)]
        if delimiter:
            children.append(("Delimiter", encode(delimiter)))
        if encoding:
            children.append(("EncodingType", encoding))
        children.append(("IsTruncated", page.truncated))
        if page.truncated and page.next_marker is not None:
            if version_2:
                children.append(("NextContinuationToken", _encode_token(page.next_marker)))
            elif delimiter:
                children.append(("NextMarker", encode(page.next_marker)))
        fetch_owner = not version_2 or call.query.get("fetch-owner") == "true"
        for item in page.objects:
            entry: list[tuple[str, Any]] = [
                ("Key", encode(item.key)), ("LastModified", xml.timestamp(item.modified_ns)),
                ("ETag", f'"{item.etag}"'), ("Size", item.size)]
            if fetch_owner:
                entry.append(("Owner", self._owner(call)))
            entry.append(("StorageClass", "STANDARD"))
            children.append(("Contents", entry))
        for common in page.prefixes:
            children.append(("CommonPrefixes", [("Prefix", encode(common))]))
        return _xml("ListBucketResult", children)

    async def list_versions(self, call: S3Call) -> Response:
        """ListObjectVersions: deossfs keeps no versions, so each object is its only one."""
        prefix = call.query.get("prefix", "")
        delimiter = call.query.get("delimiter", "")
        limit = self._max_keys(call)
        await self._require_bucket(call)
        page = await self.catalog(call).list(call.bucket, prefix=prefix,
                                             start_after=call.query.get("key-marker", ""),
                                             limit=limit, delimiter=delimiter)
        children: list[tuple[str, Any]] = [
            ("Name", call.bucket), ("Prefix", prefix), ("KeyMarker", call.query.get("key-marker", "")),
            ("VersionIdMarker", ""), ("MaxKeys", limit), ("IsTruncated", page.truncated)]
        if page.truncated and page.next_marker is not None:
            children += [("NextKeyMarker", page.next_marker), ("NextVersionIdMarker", "null")]
        if delimiter:
            children.append(("Delimiter", delimiter))
        for item in page.objects:
            children.append(("Version", [
                ("Key", item.key), ("VersionId", "null"), ("IsLatest", True),
                ("LastModified", xml.timestamp(item.modified_ns)), ("ETag", f'"{item.etag}"'),
                ("Size", item.size), ("Owner", self._owner(call)), ("StorageClass", "STANDARD")]))
        for common in page.prefixes:
            children.append(("CommonPrefixes", [("Prefix", common)]))
        return _xml("ListVersionsResult", children)

    async def list_uploads(self, call: S3Call) -> Response:
        await self._require_bucket(call)
        limit = self._max_keys(call, "max-uploads")
        key_marker = call.query.get("key-marker", "")
        upload_marker = call.query.get("upload-id-marker", "")
        uploads = await trio.to_thread.run_sync(
            self.multipart.uploads, call.owner, call.bucket, call.query.get("prefix", ""),
            key_marker, upload_marker, limit)
        truncated = len(uploads) > limit
        uploads = uploads[:limit]
        children: list[tuple[str, Any]] = [
            ("Bucket", call.bucket), ("KeyMarker", key_marker), ("UploadIdMarker", upload_marker),
            ("NextKeyMarker", uploads[-1].key if uploads else ""),
            ("NextUploadIdMarker", uploads[-1].id if uploads else ""),
            ("MaxUploads", limit), ("IsTruncated", truncated)]
        if call.query.get("prefix"):
            children.append(("Prefix", call.query["prefix"]))
        for upload in uploads:
            children.append(("Upload", [
                ("Key", upload.key), ("UploadId", upload.id), ("Initiator", self._owner(call)),
                ("Owner", self._owner(call)), ("StorageClass", "STANDARD"),
                ("Initiated", xml.timestamp(int(upload.created * 1e9)))]))
        return _xml("ListMultipartUploadsResult", children)


def _xml(root: str, children: list, text: str | None = None) -> Response:
    return Response(xml.document(root, children, text=text), media_type="application/xml")


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("The continuation token provided is incorrect") from None


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
