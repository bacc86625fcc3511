"""S3's object operations: PutObject, GetObject, HeadObject, DeleteObject(s), CopyObject,
and the multipart ones (Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts).

Bytes go through the same path as the DeOSS routes: a body is verified as it streams
(`payload.PayloadVerifier`), staged in a 0600 file and hashed for its storage order while
it arrives, then stored by the gateway's upload service and answered once durable; only
then does the catalog name it, so a read, a listing or a delete after the answer sees it
(strong consistency through one gateway). A body that fails a check is discarded and
nothing is named.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote

import trio
from starlette.responses import Response

from ...catalog.records import ObjectRecord
from ...errors import DeossError, InvalidInput, NoSuchKey, cli_message
from ...processing.layout import charged_space
from ...processing.pipeline import FilePlan
from ...store import single_error_nursery
from .. import memory
from ..http import StagingFile, StoredFileResponse, body_chunks, parse_range
from ..uploads import ReceivePlanner, UploadRecord
from . import xml
from .checksums import FULL_OBJECT, element_name, object_checksum, upload_checksum
from .completion import CompletionResponse
from .context import S3Call, S3Error, code_and_status
from .multipart import MAX_PART_NUMBER, MAX_PART_SIZE, multipart_etag
from .payload import CHECKSUMS, PayloadResult, PayloadVerifier, stored_content_encoding
from .sigv4 import HeaderMap, header_text

#: S3's largest single PUT
MAX_PUT_SIZE = 5 * 1024**3
#: the headers S3 keeps with an object besides Content-Type (catalog.records.HEADERS)
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language",
                  "expires")
#: GetObject's query overrides of response headers
OVERRIDES = {"response-content-type": "content-type", "response-content-language": "content-language",
             "response-expires": "expires", "response-cache-control": "cache-control",
             "response-content-disposition": "content-disposition",
             "response-content-encoding": "content-encoding"}
#: bytes of the body verified on the trio thread at once; larger pieces go to a thread
_INLINE_VERIFY = 256 * 1024
#: seconds a file's chain record read for one GET serves the next GETs of the object (a
#: download in ranges is one GET per range); the catalog still decides what a key names
FILE_INFO_MAX_AGE = 5.0
#: GetObjectAttributes' attributes, by their lowercase names
_OBJECT_ATTRIBUTES = {"etag": "ETag", "checksum": "Checksum", "objectparts": "ObjectParts",
                      "storageclass": "StorageClass", "objectsize": "ObjectSize"}
#: a conditional write's condition, given the object its key names now (None: none)
WriteCheck = Callable[[ObjectRecord | None], None]


def quoted(etag: str) -> str:
    return f'"{etag}"'


def attributes_of(call: S3Call) -> dict[str, Any]:
    """Content-Type, user metadata and the stored headers a PUT or Create carries."""
    metadata = {}
    for name in call.headers.names():
        if name.startswith("x-amz-meta-"):
            metadata[name[len("x-amz-meta-"):]] = header_text(call.headers.get(name) or "")
    headers = {}
    for name in STORED_HEADERS:
        value = stored_content_encoding(call.headers) if name == "content-encoding" else call.header(name)
        if value:
            headers[name] = header_text(value)
    return {"content_type": call.header("content-type"), "metadata": metadata, "headers": headers}


def object_headers(record: ObjectRecord) -> dict[str, str]:
    """ETag, Last-Modified, Content-Type, the user metadata and stored headers of an object."""
    headers = {"etag": quoted(record.etag), "last-modified": xml.http_date(record.modified_ns),
               "content-type": record.content_type or "binary/octet-stream",
               "accept-ranges": "bytes"}
    for name, value in record.headers.items():
        headers[name] = ascii_header(value)
    for name, value in record.metadata.items():
        headers[f"x-amz-meta-{name}"] = ascii_header(value)
    return headers


def checksum_headers(checksum: tuple[str, str, str] | None) -> dict[str, str]:
    """x-amz-checksum-<algorithm> and x-amz-checksum-type of a kept checksum."""
    if checksum is None:
        return {}
    algorithm, kind, value = checksum
    return {f"x-amz-checksum-{algorithm}": value, "x-amz-checksum-type": kind}


def ascii_header(value: str) -> str:
    """A stored value as a response header: as it is when ASCII, else RFC 2047's
    `=?UTF-8?B?...?=`, as S3 returns non-ASCII metadata (HTTP headers carry no UTF-8)."""
    if value.isascii():
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8", "replace")).decode() + "?="


def _http_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None  # an unreadable date is ignored, as S3 does


def _etag_matches(header: str, etag: str) -> bool:
    wanted = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in wanted or etag in wanted


def check_conditions(call: S3Call, record: ObjectRecord, copy_source: bool = False) -> int | None:
    """The status a conditional request gets instead of the object (412, 304), or None.

    With `copy_source` the x-amz-copy-source-if-* headers are read, and every failed
    condition is 412 (a copy is never 304)."""
    prefix = "x-amz-copy-source-" if copy_source else ""
    modified = record.modified_ns / 1e9
    if_match = call.header(prefix + "if-match")
    if_none_match = call.header(prefix + "if-none-match")
    if if_match is not None and not _etag_matches(if_match, record.etag):
        return 412
    if if_match is None:
        since = _http_time(call.header(prefix + "if-unmodified-since"))
        if since is not None and int(modified) > since:
            return 412
    if if_none_match is not None and _etag_matches(if_none_match, record.etag):
        return 412 if copy_source or call.request.method not in ("GET", "HEAD") else 304
    if if_none_match is None:
        since = _http_time(call.header(prefix + "if-modified-since"))
        if since is not None and int(modified) <= since:
            return 412 if copy_source else 304
    return None


def precondition_failed() -> S3Error:
    return S3Error("PreconditionFailed", "At least one of the pre-conditions you specified "
                   "did not hold", 412)


class ObjectOperations:
    """Object operations of one gateway (the S3Api routes to them)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.engine = api.engine

    # ---- receiving bodies ------------------------------------------------------------

    def _declared_size(self, call: S3Call) -> int:
        text = call.header("x-amz-decoded-content-length") if call.verified.payload_mode.chunked \
            else call.header("content-length")
        if text is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
        if not text.strip().isdigit():
            raise InvalidInput("Content-Length is not a number")
        return int(text)

    async def _receive(self, call: S3Call, staged: StagingFile, planner: ReceivePlanner | None,
                       required_checksum: str | None = None,
                       default_checksum: str | None = None) -> PayloadResult:
        """Verify and stage the body; the digests once it is whole and checks out (with
        `required_checksum`, that algorithm's checksum among them; with
        `default_checksum`, that one's if the request carries none)."""
        verifier = PayloadVerifier(call.headers, call.verified, required_checksum, default_checksum)
        timeout = self.engine.config.gateway.body_timeout
        try:
            async for chunk in body_chunks(call.request, timeout):
                pieces = verifier.feed(chunk) if len(chunk) <= _INLINE_VERIFY else \
                    await trio.to_thread.run_sync(verifier.feed, chunk)
                for piece in pieces:
                    await staged.write_async(piece)
            result = verifier.finish()
            staged.close()
        except BaseException:
            staged.discard()
            raise
        finally:
            if planner is not None:
                planner.body_complete()
        return result

    async def _stage_and_store(self, call: S3Call, bucket: str, path: str, size: int,
                               encrypt: bool) -> tuple[PayloadResult, FilePlan | None]:
        """Receive a body of `size` bytes for bucket/path and store it durably (nothing is
        stored for an empty body); its digests, and the plan of what was stored."""
        store = self.engine.store_for(call.owner)
        if size:
            codec = store.encrypted_codec if encrypt else store.plain_codec
            territory = await store.territory()
            need = charged_space(codec.segment_count(size))
            if territory.remaining_space < need:
                raise S3Error("EntityTooLarge", f"territory {territory.name!r} has "
                              f"{territory.remaining_space // 2**20} MiB free; this object needs "
                              f"{need // 2**20} MiB (12 x 8 MiB per segment)", 400)
        reservation = self.engine.reserve(call.owner, size)
        upload_id = self.api.uploads.new_id()
        staged = StagingFile(self.api.uploads.staging_path(upload_id))
        try:
            async with single_error_nursery() as nursery:
                planner = None
                if size:
                    planner = ReceivePlanner(store, bucket, path, encrypt, staged,
                                             self.engine.planning_slots)
                    nursery.start_soon(planner.run)
                # as S3 does, an object sent without a checksum gets a CRC64NVME
                result = await self._receive(call, staged, planner, default_checksum="crc64nvme")
            if result.size != size:
                raise S3Error("IncompleteBody", "You did not provide the number of bytes "
                              "specified by the Content-Length HTTP header.", 400)
            if not size:
                reservation.release()
                staged.discard()
                return result, None
            record = UploadRecord(id=upload_id, owner=call.owner, bucket=bucket, key=path,
                                  territory=store.territory_name, size=size, encrypt=encrypt,
                                  with_cipher=False, placement={}, respond="durable")
            plan = await self.api.uploads.submit(record, store, reservation,
                                                 planner.plan() if planner else None)
            assert isinstance(plan, FilePlan)
            return result, plan
        except BaseException:
            reservation.release()
            staged.discard()
            raise

    # ---- PutObject ------------------------------------------------------------------

    async def put_object(self, call: S3Call) -> Response:
        catalog = self.api.catalog(call)
        target = await catalog.prepare_put(call.bucket, call.key)
        check = await self._check_write_conditions(call)
        size = self._declared_size(call)
        if size > MAX_PUT_SIZE:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed "
                          "size (5 GiB for one PUT: use a multipart upload).", 400)
        if call.key.endswith("/") and size:
            raise InvalidInput(f"{call.key!r} ends in '/': a folder, which holds no bytes")
        encrypt = self.engine.config.storage.encryption
        result, plan = await self._stage_and_store(call, call.bucket, target.path, size, encrypt)
        attributes = attributes_of(call)
        # the request's one checksum (PayloadVerifier), or the CRC64NVME computed in its
        # absence, kept with the object
        checksum = next(((name, FULL_OBJECT, value) for name, value in result.checksums.items()), None)
        record = ObjectRecord(key=call.key, size=size, etag=result.etag,
                              fid=plan.fid if plan else None, modified_ns=time.time_ns(),
                              content_type=attributes["content_type"], metadata=attributes["metadata"],
                              headers=attributes["headers"], encrypted=encrypt, checksum=checksum)
        await self._record_checked(call, call.bucket, record, check)
        return Response(status_code=200, headers={"etag": quoted(result.etag),
                                                  **checksum_headers(checksum)})

    async def _check_write_conditions(self, call: S3Call) -> WriteCheck | None:
        """A conditional write (If-Match / If-None-Match on PutObject and
        CompleteMultipartUpload), checked before any byte is taken or stored: 412 when the
        object's ETag differs or, with `If-None-Match: *`, when it exists; NoSuchKey for
        If-Match on a key with no object. Returns the check, for `record_put` to make
        again at the moment the object is named: of two conditional writes that both
        passed here, the second to finish fails then (its bytes are deleted)."""
        if_match, if_none_match = call.header("if-match"), call.header("if-none-match")
        if if_match is None and if_none_match is None:
            return None
        if if_none_match is not None and if_none_match.strip() != "*":
            raise S3Error("NotImplemented", "If-None-Match on a write takes only '*'", 501)

        def check(current: ObjectRecord | None) -> None:
            if current is None:
                if if_match is not None:
                    raise NoSuchKey(f"no object {call.key!r} in bucket {call.bucket!r}")
                return
            if if_none_match is not None or (if_match is not None and
                                             not _etag_matches(if_match, current.etag)):
                raise precondition_failed()

        try:
            current: ObjectRecord | None = await self.api.catalog(call).get(call.bucket, call.key)
        except NoSuchKey:
            current = None
        check(current)
        return check

    async def _record_checked(self, call: S3Call, bucket: str, record: ObjectRecord,
                              check: WriteCheck | None) -> None:
        """Name the stored object, making a conditional write's check again at that moment;
        bytes stored for a write whose condition no longer holds are deleted."""
        catalog = self.api.catalog(call)
        try:
            await catalog.record_put(bucket, record, check=check)
        except (S3Error, NoSuchKey):
            if check is not None and record.fid:
                catalog.discard(bucket, record.fid)
            raise

    # ---- GetObject / HeadObject -----------------------------------------------------

    async def get_object(self, call: S3Call, head: bool = False) -> Response | StoredFileResponse:
        catalog = self.api.catalog(call)
        record = await catalog.get(call.bucket, call.key)
        headers = object_headers(record)
        status = check_conditions(call, record)
        if status == 304:
            return Response(status_code=304, headers={k: headers[k] for k in ("etag", "last-modified")})
        if status == 412:
            raise precondition_failed()
        for name, header in OVERRIDES.items():
            if name in call.query:
                headers[header] = call.query[name]
        byte_range = None
        if "partNumber" in call.query:
            byte_range = self._part_range(call, record, headers)
        else:
            if_range = call.header("if-range")
            if if_range is None or if_range.strip('"') == record.etag:
                try:
                    byte_range = parse_range(call.header("range"), record.size)
                except DeossError:
                    raise S3Error("InvalidRange", "The requested range is not satisfiable", 416) from None
        if (call.header("x-amz-checksum-mode") or "").upper() == "ENABLED":
            headers.update(_checksum_of_read(call, record, byte_range))
        if not record.fid:
            return Response(b"", status_code=200, headers={**headers, "content-length": "0"})
        store = self.engine.store_for(call.owner)
        info = await store.file_info(record.fid, max_age=FILE_INFO_MAX_AGE)
        start, end, status = 0, record.size, 200
        if byte_range is not None:
            start, end = byte_range
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{record.size}"
        return StoredFileResponse(store, info, start, end, status, headers, head_only=head)

    async def get_object_attributes(self, call: S3Call) -> Response:
        """GetObjectAttributes: of `x-amz-object-attributes`, the ETag, the kept checksum,
        the parts of a multipart object (sizes; their checksums are not kept), the
        storage class and the size; conditions as on a GET."""
        record = await self.api.catalog(call).get(call.bucket, call.key)
        wanted = {name.strip().lower() for name in
                  (call.header("x-amz-object-attributes") or "").split(",") if name.strip()}
        unknown = wanted - set(_OBJECT_ATTRIBUTES)
        if not wanted or unknown:
            raise InvalidInput("x-amz-object-attributes lists one or more of "
                               f"{', '.join(_OBJECT_ATTRIBUTES.values())}"
                               + (f"; not {', '.join(sorted(unknown))}" if unknown else ""))
        status = check_conditions(call, record)
        if status == 304:
            return Response(status_code=304, headers={"etag": quoted(record.etag)})
        if status == 412:
            raise precondition_failed()
        children: list[tuple[str, Any]] = []
        if "etag" in wanted:
            children.append(("ETag", record.etag))
        if "checksum" in wanted and record.checksum is not None:
            algorithm, kind, value = record.checksum
            children.append(("Checksum", [(element_name(algorithm), value), ("ChecksumType", kind)]))
        if "objectparts" in wanted and record.parts:
            children.append(("ObjectParts", self._parts_page(call, record)))
        if "storageclass" in wanted:
            children.append(("StorageClass", "STANDARD"))
        if "objectsize" in wanted:
            children.append(("ObjectSize", record.size))
        return Response(xml.document("GetObjectAttributesResponse", children),
                        media_type="application/xml",
                        headers={"last-modified": xml.http_date(record.modified_ns)})

    @staticmethod
    def _parts_page(call: S3Call, record: ObjectRecord) -> list[tuple[str, Any]]:
        """GetObjectAttributes' ObjectParts: the parts after x-amz-part-number-marker, at
        most x-amz-max-parts (1,000) of them, with their checksums where kept."""
        marker_text = call.header("x-amz-part-number-marker") or "0"
        limit_text = call.header("x-amz-max-parts") or "1000"
        if not marker_text.strip().isdigit() or not limit_text.strip().isdigit():
            raise InvalidInput("x-amz-part-number-marker and x-amz-max-parts are whole numbers")
        marker, limit = int(marker_text), min(int(limit_text), 1000)
        sums = record.part_checksums or (None,) * len(record.parts)
        after = [(number, size, value) for (number, size), value in zip(record.parts, sums, strict=True)
                 if number > marker]
        page = after[:limit]
        name = element_name(record.checksum[0]) if record.checksum else ""
        return [("PartsCount", len(record.parts)), ("PartNumberMarker", marker),
                ("NextPartNumberMarker", page[-1][0] if page else marker), ("MaxParts", limit),
                ("IsTruncated", len(after) > limit),
                *[("Part", [("PartNumber", number), ("Size", size), (name, value)])
                  for number, size, value in page]]

    def _part_range(self, call: S3Call, record: ObjectRecord,
                    headers: dict[str, str]) -> tuple[int, int] | None:
        """GetObject/HeadObject's partNumber: the bytes of that part of a multipart object
        (with x-amz-mp-parts-count), as a ranged GET of them. An object stored by one PUT
        is its own part 1."""
        if call.header("range"):
            raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber "
                          "query parameter", 400)
        number = self._part_number(call)
        if not record.parts:
            if number != 1:
                raise S3Error("InvalidPart", f"The object has no part {number}: it was stored "
                              "by one PUT, its only part is 1", 400)
            return None
        start = 0
        for part, size in record.parts:
            if part == number:
                headers["x-amz-mp-parts-count"] = str(len(record.parts))
                return (start, start + size) if size else None
            start += size
        raise S3Error("InvalidPart", f"The object has no part {number}: it has "
                      f"{len(record.parts)} parts", 400)

    # ---- DeleteObject(s) -------------------------------------------------------------

    async def delete_object(self, call: S3Call) -> Response:
        await self.api.catalog(call).delete(call.bucket, call.key)
        return Response(status_code=204)

    async def delete_objects(self, call: S3Call) -> Response:
        body = await self._small_body(call)
        document = xml.parse(body, "Delete")
        quiet = (xml.text(document, "Quiet") or "").strip().lower() == "true"
        objects = xml.children(document, "Object")
        if len(objects) > 1000:
            raise xml.MalformedXML("a DeleteObjects request names at most 1,000 keys")
        catalog = self.api.catalog(call)
        results: list[tuple[str, Any]] = []
        for item in objects:
            key = xml.text(item, "Key")
            if key is None:
                raise xml.MalformedXML("an Object without a Key")
            try:
                await catalog.delete(call.bucket, key)
                if not quiet:
                    results.append(("Deleted", [("Key", key)]))
            except DeossError as exc:
                code, _ = code_and_status(exc)
                results.append(("Error", [("Key", key), ("Code", code), ("Message", cli_message(exc))]))
        return Response(xml.document("DeleteResult", results), media_type="application/xml")

    async def _small_body(self, call: S3Call, object_checksums: bool = False) -> bytes:
        """A request document (XML), verified like any body, at most MAX_REQUEST_XML bytes.
        With `object_checksums` (CompleteMultipartUpload) x-amz-checksum-* headers are the
        object's, not the document's: they are not checked against it."""
        headers = call.headers
        if object_checksums:
            headers = HeaderMap((name, value) for name in call.headers.names()
                                if not name.startswith("x-amz-checksum-")
                                for value in call.headers.get_all(name))
        verifier = PayloadVerifier(headers, call.verified)
        parts: list[bytes] = []
        size = 0
        async for chunk in body_chunks(call.request, self.engine.config.gateway.body_timeout):
            for piece in verifier.feed(chunk):
                size += len(piece)
                if size > xml.MAX_REQUEST_XML:
                    raise xml.MalformedXML(f"the XML body is larger than {xml.MAX_REQUEST_XML} bytes")
                parts.append(bytes(piece))
        verifier.finish()
        return b"".join(parts)

    # ---- CopyObject -------------------------------------------------------------------

    def _copy_source(self, call: S3Call) -> tuple[str, str]:
        source = unquote(call.header("x-amz-copy-source") or "")
        source = source.split("?versionId=", 1)[0].lstrip("/")
        bucket, sep, key = source.partition("/")
        if not sep or not bucket or not key:
            raise InvalidInput("x-amz-copy-source must be BUCKET/KEY (URL-encoded)")
        return bucket, key

    async def copy_object(self, call: S3Call) -> Response:
        src_bucket, src_key = self._copy_source(call)
        catalog = self.api.catalog(call)
        source = await catalog.get(src_bucket, src_key)
        if check_conditions(call, source, copy_source=True) is not None:
            raise precondition_failed()
        directive = (call.header("x-amz-metadata-directive") or "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise InvalidInput("x-amz-metadata-directive is COPY or REPLACE")
        if (src_bucket, src_key) == (call.bucket, call.key) and directive == "COPY":
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to "
                          "copy an object to itself without changing the object's metadata, "
                          "storage class, website redirect location or encryption attributes.", 400)
        attributes = attributes_of(call) if directive == "REPLACE" else None
        copied = await catalog.copy(
            src_bucket, src_key, call.bucket, call.key,
            content_type=attributes["content_type"] if attributes else None,
            metadata=attributes["metadata"] if attributes else None,
            headers=attributes["headers"] if attributes else None,
            replace_attributes=attributes is not None)
        if copied is None:  # across buckets: CESS cannot share the FID; the bytes go again
            copied = await self.copy_bytes(call.owner, source, call.bucket, call.key, attributes)
        document = xml.document("CopyObjectResult", [
            ("LastModified", xml.timestamp(copied.modified_ns)), ("ETag", quoted(copied.etag))])
        return Response(document, media_type="application/xml")

    async def copy_bytes(self, owner: str, source: ObjectRecord, bucket: str, key: str,
                         attributes: Mapping[str, Any] | None) -> ObjectRecord:
        """Copy an object of `owner` to bucket/key by storing its bytes again (across
        buckets, where CESS cannot share a FID); with the source's attributes unless
        `attributes` replace them. CopyObject and the console's move use it."""
        catalog = self.api.catalogs.of(owner)
        target = await catalog.prepare_put(bucket, key)
        plan = await self._store_from(owner, source, 0, source.size, bucket, target.path)
        attributes = attributes or {"content_type": source.content_type,
                                    "metadata": dict(source.metadata), "headers": dict(source.headers)}
        record = ObjectRecord(key=key, size=source.size, etag=source.etag, fid=plan.fid,
                              modified_ns=time.time_ns(), content_type=attributes["content_type"],
                              metadata=attributes["metadata"], headers=attributes["headers"],
                              encrypted=source.encrypted, parts=source.parts,
                              checksum=source.checksum,  # the same bytes
                              part_checksums=source.part_checksums)
        await catalog.record_put(bucket, record)
        return record

    async def _store_from(self, owner: str, source: ObjectRecord, start: int, end: int,
                          bucket: str, path: str) -> FilePlan:
        """Store bytes [start, end) of an object as bucket/path (read from the network
        into a staging file, then put as an upload)."""
        staged = await self._stage_from(owner, source, start, end,
                                        self.api.uploads.staging_path(upload_id := self.api.uploads.new_id()))
        store = self.engine.store_for(owner)
        reservation = self.engine.reserve(owner, end - start)
        record = UploadRecord(id=upload_id, owner=owner, bucket=bucket, key=path,
                              territory=store.territory_name, size=end - start,
                              encrypt=self.engine.config.storage.encryption, with_cipher=False,
                              placement={}, respond="durable")
        try:
            plan = await self.api.uploads.submit(record, store, reservation)
        except BaseException:
            reservation.release()
            staged.discard()
            raise
        assert isinstance(plan, FilePlan)
        return plan

    async def _stage_from(self, owner: str, source: ObjectRecord, start: int, end: int,
                          path: Any) -> StagingFile:
        staged = StagingFile(path)
        try:
            if source.fid and end > start:
                store = self.engine.store_for(owner)
                info = await store.file_info(source.fid)

                async def sink(data: memoryview) -> None:
                    staged.write(data)

                await store.read_range(info, start, end, sink)
            staged.close()
        except BaseException:
            staged.discard()
            raise
        return staged

    # ---- multipart -------------------------------------------------------------------

    async def create_multipart(self, call: S3Call) -> Response:
        catalog = self.api.catalog(call)
        await catalog.prepare_put(call.bucket, call.key)
        checksum = upload_checksum(call.header("x-amz-checksum-algorithm"),
                                   call.header("x-amz-checksum-type"))
        attributes = attributes_of(call)
        headers = {}
        if checksum is not None:
            attributes["checksum"] = list(checksum)
            headers = {"x-amz-checksum-algorithm": checksum[0].upper(),
                       "x-amz-checksum-type": checksum[1]}
        upload = await trio.to_thread.run_sync(self.api.multipart.create, call.owner, call.bucket,
                                               call.key, attributes)
        return Response(xml.document("InitiateMultipartUploadResult", [
            ("Bucket", call.bucket), ("Key", call.key), ("UploadId", upload.id)]),
            media_type="application/xml", headers=headers)

    def _part_number(self, call: S3Call) -> int:
        text = call.query.get("partNumber", "")
        if not text.isdigit() or not 1 <= int(text) <= MAX_PART_NUMBER:
            raise InvalidInput(f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, "
                               "inclusive")
        return int(text)

    async def _upload(self, call: S3Call) -> Any:
        return await trio.to_thread.run_sync(self.api.multipart.get, call.query.get("uploadId", ""),
                                             call.owner, call.bucket, call.key)

    async def upload_part(self, call: S3Call) -> Response:
        number = self._part_number(call)
        upload = await self._upload(call)
        size = self._declared_size(call)
        if size > MAX_PART_SIZE:
            raise S3Error("EntityTooLarge", "A part is at most 5 GiB.", 400)
        algorithm = _checksum_algorithm(upload)
        reservation = self.engine.reserve(call.owner, size)
        try:
            incoming = self.api.multipart.part_path(upload)
            result = await self._receive(call, StagingFile(incoming), None, algorithm)
            if result.size != size:
                incoming.unlink(missing_ok=True)
                raise S3Error("IncompleteBody", "You did not provide the number of bytes "
                              "specified by the Content-Length HTTP header.", 400)
            part = await trio.to_thread.run_sync(
                self.api.multipart.record_part, upload, number, incoming, result.size, result.etag,
                result.checksums.get(algorithm) if algorithm else None)
            self.api.planning.part_recorded(upload, part, self.engine.config.storage.encryption)
        finally:
            reservation.release()
        headers = {"etag": quoted(result.etag)}
        headers.update({f"x-amz-checksum-{name}": value for name, value in result.checksums.items()})
        return Response(status_code=200, headers=headers)

    async def upload_part_copy(self, call: S3Call) -> Response:
        number = self._part_number(call)
        upload = await self._upload(call)
        src_bucket, src_key = self._copy_source(call)
        source = await self.api.catalog(call).get(src_bucket, src_key)
        if check_conditions(call, source, copy_source=True) is not None:
            raise precondition_failed()
        start, end = 0, source.size
        wanted = call.header("x-amz-copy-source-range")
        if wanted:
            start, end = copy_source_range(wanted, source.size)
        incoming = self.api.multipart.part_path(upload)
        staged = await self._stage_from(call.owner, source, start, end, incoming)
        algorithm = _checksum_algorithm(upload)
        md5, checksum = await trio.to_thread.run_sync(_digests_of_file, incoming, algorithm)
        part = await trio.to_thread.run_sync(self.api.multipart.record_part, upload, number, incoming,
                                             staged.size, md5, checksum)
        self.api.planning.part_recorded(upload, part, self.engine.config.storage.encryption)
        children: list[tuple[str, Any]] = [("LastModified", xml.timestamp(int(part.modified * 1e9))),
                                           ("ETag", quoted(part.etag))]
        if algorithm and checksum:
            children.append((element_name(algorithm), checksum))
        return Response(xml.document("CopyPartResult", children), media_type="application/xml")

    async def list_parts(self, call: S3Call) -> Response:
        upload = await self._upload(call)
        marker_text = call.query.get("part-number-marker", "0") or "0"
        limit_text = call.query.get("max-parts", "1000") or "1000"
        if not marker_text.isdigit() or not limit_text.isdigit():
            raise InvalidInput("part-number-marker and max-parts are whole numbers")
        limit = min(int(limit_text), 1000)
        parts = await trio.to_thread.run_sync(self.api.multipart.parts, upload, int(marker_text), limit + 1)
        truncated = len(parts) > limit
        parts = parts[:limit]
        owner = [("ID", call.owner), ("DisplayName", call.owner)]
        children: list[tuple[str, Any]] = [
            ("Bucket", call.bucket), ("Key", call.key), ("UploadId", upload.id),
            ("Initiator", owner), ("Owner", owner), ("StorageClass", "STANDARD"),
            ("PartNumberMarker", int(marker_text)),
            ("NextPartNumberMarker", parts[-1].number if parts else 0),
            ("MaxParts", limit), ("IsTruncated", truncated)]
        checksum = upload.attributes.get("checksum")
        if checksum:
            children += [("ChecksumAlgorithm", checksum[0].upper()), ("ChecksumType", checksum[1])]
        for p in parts:
            part: list[tuple[str, Any]] = [
                ("PartNumber", p.number), ("LastModified", xml.timestamp(int(p.modified * 1e9))),
                ("ETag", quoted(p.etag)), ("Size", p.size)]
            if checksum and p.checksum:
                part.append((element_name(checksum[0]), p.checksum))
            children.append(("Part", part))
        return Response(xml.document("ListPartsResult", children), media_type="application/xml")

    async def abort_multipart(self, call: S3Call) -> Response:
        upload = await self._upload(call)
        self.api.planning.drop(upload.id)
        await trio.to_thread.run_sync(self.api.multipart.remove, upload)
        return Response(status_code=204)

    async def complete_multipart(self, call: S3Call) -> Response | CompletionResponse:
        upload_id = call.query.get("uploadId", "")
        lock = self.api.completion_lock(upload_id)
        body = await self._small_body(call, object_checksums=True)
        async with lock:
            done = await trio.to_thread.run_sync(self.api.multipart.completed, upload_id, call.owner)
            if done is not None:  # a repeated Complete (the client timed out): same answer
                return Response(self._completed_document(call, done[2], done[3]),
                                media_type="application/xml")
            upload = await self._upload(call)
            document = xml.parse(body, "CompleteMultipartUpload")
            algorithm = _checksum_algorithm(upload)
            listed = []
            listed_checksums: dict[int, str | None] = {}
            for part in xml.children(document, "Part"):
                number, etag = xml.text(part, "PartNumber"), xml.text(part, "ETag")
                if number is None or etag is None or not number.strip().isdigit():
                    raise xml.MalformedXML("each Part needs a PartNumber and an ETag")
                listed.append((int(number), etag))
                if algorithm:
                    listed_checksums[int(number)] = xml.text(part, element_name(algorithm))
            parts = await trio.to_thread.run_sync(self.api.multipart.check_complete, upload, listed)
            checksum = self._completed_checksum(call, upload, parts, listed_checksums)
            # a conditional Complete (If-None-Match: *, If-Match), checked before the 200
            # goes out; the upload stays, so the client may complete it otherwise
            check = await self._check_write_conditions(call)
        # the parts are right: storing them takes as long as any put, while the answer's
        # status is sent at once and spaces keep the client waiting (as S3 does)
        return CompletionResponse(self._finish_upload(call, upload, parts, lock, check, checksum),
                                  call.request_id)

    @staticmethod
    def _completed_checksum(call: S3Call, upload: Any, parts: list,
                            listed: Mapping[int, str | None]) -> tuple[str, str, str] | None:
        """The object's checksum from its parts' (upload created with an algorithm), checked
        against the one the Complete carries (BadDigest) and the parts' it lists (each
        part's must be listed for a COMPOSITE one)."""
        kept = upload.attributes.get("checksum")
        if not kept or any(p.checksum is None for p in parts):
            return None  # no algorithm (or parts journaled before checksums were kept)
        algorithm, kind = kept
        value = object_checksum(algorithm, kind, [(p.checksum, p.size) for p in parts])
        given = call.header(f"x-amz-checksum-{algorithm}")
        if given is not None and given.strip() != value:
            raise S3Error("BadDigest", f"The {algorithm.upper()} you specified for the object "
                          f"did not match what was computed from its parts ({value}).", 400)
        for part in parts:
            stated = listed.get(part.number)
            if stated is None and kind == FULL_OBJECT:
                continue  # S3 asks for the parts' checksums only of a composite one
            if stated is None:
                raise S3Error("InvalidRequest", f"The upload was created using a {algorithm} "
                              "checksum. The complete request must include the checksum for each "
                              f"part. It was missing for part {part.number} in the request.", 400)
            if stated.strip() != part.checksum:
                raise S3Error("InvalidPart", f"The {algorithm} checksum given for part "
                              f"{part.number} does not match the part uploaded.", 400)
        return algorithm, kind, value

    def _completed_document(self, call: S3Call, etag: str, checksum: tuple[str, str, str] | None,
                            leading: bool = True) -> bytes:
        children: list[tuple[str, Any]] = [
            ("Location", f"{call.request.base_url}{call.bucket}/{call.key}"),
            ("Bucket", call.bucket), ("Key", call.key), ("ETag", quoted(etag))]
        if checksum is not None:
            children += [(element_name(checksum[0]), checksum[2]), ("ChecksumType", checksum[1])]
        document = xml.document("CompleteMultipartUploadResult", children)
        return document if leading else document.split(b"\n", 1)[1]

    async def _finish_upload(self, call: S3Call, upload: Any, parts: list, lock: trio.Lock,
                             check: WriteCheck | None = None,
                             checksum: tuple[str, str, str] | None = None) -> bytes:
        """Store the parts as one object and name it; the answer's XML (without the XML
        declaration: spaces may have gone before it)."""
        async with lock:
            done = await trio.to_thread.run_sync(self.api.multipart.completed, upload.id, call.owner)
            if done is not None:
                return self._completed_document(call, done[2], done[3], leading=False)
            catalog = self.api.catalog(call)
            target = await catalog.prepare_put(call.bucket, call.key)
            etag = multipart_etag(parts)
            size = sum(p.size for p in parts)
            encrypt = self.engine.config.storage.encryption
            store = self.engine.store_for(call.owner)
            fid = None
            if size:
                # pass 1 of the segments in parts that arrived already is done (planning.py)
                plan = await self.api.planning.plan_for(upload, parts, size, encrypt)
                # what receiving the parts left free in the heap, before pass 2's workspaces
                await trio.to_thread.run_sync(memory.give_back_free_memory)
                reader = await trio.to_thread.run_sync(self.api.multipart.reader, upload, parts)
                reservation = self.engine.reserve(call.owner, 0)  # the parts were counted
                try:
                    with self.api.uploads.tracking(call.owner, call.bucket, target.path, size) as status:
                        async with self.engine.store_slots:
                            plan = await store.put(reader, size, call.bucket, target.path,
                                                   encrypt=encrypt, replace_existing=False,
                                                   salt_context=f"multipart:{upload.id}".encode(),
                                                   status=status, plan=plan)
                    fid = plan.fid
                finally:
                    reservation.release()
                    reader.close()
            attributes = upload.attributes
            record = ObjectRecord(key=call.key, size=size, etag=etag, fid=fid,
                                  modified_ns=time.time_ns(), content_type=attributes.get("content_type"),
                                  metadata=attributes.get("metadata", {}),
                                  headers=attributes.get("headers", {}), encrypted=encrypt,
                                  parts=tuple((p.number, p.size) for p in parts), checksum=checksum,
                                  part_checksums=tuple(p.checksum for p in parts) if checksum else ())
            await self._record_checked(call, call.bucket, record, check)
            await trio.to_thread.run_sync(self.api.multipart.finish, upload, etag, checksum)
            return self._completed_document(call, etag, checksum, leading=False)


def copy_source_range(header: str, size: int) -> tuple[int, int]:
    """[start, end) of UploadPartCopy's `x-amz-copy-source-range: bytes=first-last`. Unlike a
    GET's Range it is never trimmed to the object: a range past its end is InvalidRange."""
    first, dash, last = header.strip().removeprefix("bytes=").partition("-")
    if not header.strip().startswith("bytes=") or not dash or not first.isdigit() \
            or not last.isdigit() or int(last) < int(first):
        raise InvalidInput("The x-amz-copy-source-range value must be of the form bytes=first-last "
                           "where first and last are the zero-based offsets of the first and last "
                           "bytes to copy")
    if int(last) >= size:
        raise S3Error("InvalidRange", f"The requested range bytes={first}-{last} is not "
                      f"satisfiable: the source object has {size} bytes", 416)
    return int(first), int(last) + 1


def _checksum_of_read(call: S3Call, record: ObjectRecord,
                      byte_range: tuple[int, int] | None) -> dict[str, str]:
    """The checksum headers of what a GET or HEAD with x-amz-checksum-mode returns: the
    object's for the whole object, a part's for `partNumber` (where kept), none for a
    range, which no kept checksum covers."""
    if "partNumber" in call.query and record.parts and record.checksum:
        number = int(call.query["partNumber"])  # checked by _part_range
        index = next((i for i, (n, _) in enumerate(record.parts) if n == number), None)
        if index is None or not record.part_checksums:
            return {}
        algorithm, kind, _ = record.checksum
        return checksum_headers((algorithm, kind, record.part_checksums[index]))
    return checksum_headers(record.checksum) if byte_range is None else {}


def _checksum_algorithm(upload: Any) -> str | None:
    """The checksum algorithm a multipart upload was created with, or None."""
    kept = upload.attributes.get("checksum")
    return kept[0] if kept else None


def _digests_of_file(path: Any, algorithm: str | None) -> tuple[str, str | None]:
    """Hex MD5 of a staged file and, with an algorithm, its base64 checksum."""
    md5 = hashlib.md5()
    checksum = CHECKSUMS[algorithm][0]() if algorithm else None
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            md5.update(chunk)
            if checksum is not None:
                checksum.update(memoryview(chunk))
    return md5.hexdigest(), (base64.b64encode(checksum.digest()).decode() if checksum else None)

