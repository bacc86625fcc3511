"""DeOSS's REST API (v0.4.2), and the routes DeOSS lacks in the same style.

A client written for DeOSS v0.4.2 works by changing only the base URL: the same paths,
headers, form fields and `{code, msg, data}` bodies. What deliberately differs — real
HTTP statuses, standard ranges, fresh single-use signatures, EthAcc bound to its Account,
encryption by default — is listed in docs/gateway.md with every route.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..chain.interface import FileInfo
from ..chain.names import bucket_name_problem, territory_name_problem
from ..errors import (
    AccessDenied,
    DeossError,
    InvalidInput,
    InvalidName,
    NotFound,
    NotYetStored,
    TooLarge,
    cli_message,
    error_kind,
)
from ..names import check_key
from ..processing.hashes import is_hash
from ..processing.layout import TOTAL_SHARDS, charged_space
from ..processing.pipeline import FilePlan
from ..scheduling.selector import Placement
from ..store import ObjectStore, single_error_nursery
from .auth import RequestVerifier, canonical_account
from .engine import GatewayEngine, Reservation
from .http import (
    StagingFile,
    StoredFileResponse,
    content_disposition,
    declared_length,
    parse_range,
    receive_multipart,
    receive_raw,
)
from .uploads import ReceivePlanner, UploadRecord, UploadService

log = logging.getLogger(__name__)

#: the version string GET /version answers (DeOSS answers a bare JSON string too)
VERSION = f"deossfs v{__version__} (DeOSS v0.4.2 API)"
_RESUME_RANGE_HELP = "send Content-Range: bytes FIRST-LAST/TOTAL (LAST inclusive)"


def ok(data: Any = None, status: int = 200) -> JSONResponse:
    return JSONResponse({"code": status, "msg": "ok", "data": data}, status_code=status)


def error_response(exc: BaseException, status: int) -> JSONResponse:
    """DeOSS's envelope with a real status; `msg` is the one line the CLI would print."""
    headers = {"WWW-Authenticate": 'DeOSS realm="deossfs"'} if status == 401 else None
    if status == 429:
        headers = {"Retry-After": "5"}
    return JSONResponse({"code": status, "msg": cli_message(exc), "data": None,
                         "error": error_kind(exc)}, status_code=status, headers=headers)


def _header_list(request: Request, name: str) -> list[str]:
    return [v.strip() for value in request.headers.getlist(name) for v in value.split(",") if v.strip()]


class DeossApi:
    """The routes; each acts through the engine's authorization and stores."""

    def __init__(self, engine: GatewayEngine, uploads: UploadService, verifier: RequestVerifier) -> None:
        self.engine = engine
        self.uploads = uploads
        self.verifier = verifier
        self.config = engine.config.gateway
        self._resume_locks: dict[tuple[str, str, int], trio.Lock] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/version", self.version, methods=["GET"]),
            Route("/file", self.put_file, methods=["PUT"]),
            Route("/files", self.put_files, methods=["PUT"]),
            Route("/object/{name}", self.put_object, methods=["PUT"]),
            Route("/resume/{name}", self.put_resume, methods=["PUT"]),
            Route("/file/list", self.file_list, methods=["GET"]),
            Route("/file/download/{fid}", self.download, methods=["GET"]),
            Route("/file/open/{fid}", self.open, methods=["GET"]),
            Route("/file/metadata/{fid}", self.metadata, methods=["GET"]),
            Route("/file/location/{fid}", self.location, methods=["GET"]),
            Route("/file/state/{fid}", self.file_state, methods=["GET"]),
            Route("/file/{fid}", self.delete_file, methods=["DELETE"]),
            Route("/fragment/download", self.fragment, methods=["GET"]),
            Route("/bucket", self.bucket_list, methods=["GET"]),
            Route("/bucket/{name}", self.bucket_create, methods=["PUT"]),
            Route("/bucket/{name}", self.bucket_delete, methods=["DELETE"]),
            Route("/bucket/{name}", self.bucket_info, methods=["GET"]),
            Route("/territory", self.territory_list, methods=["GET"]),
            Route("/territory/{name}", self.territory_show, methods=["GET"]),
            Route("/territory/{name}", self.territory_mint, methods=["PUT"]),
            Route("/territory/{name}/expand", self.territory_expand, methods=["POST"]),
            Route("/territory/{name}/renew", self.territory_renew, methods=["POST"]),
        ]

    # ---- who is asking ------------------------------------------------------------

    async def signer(self, request: Request) -> str:
        """The account that signed the request, once the gateway may act for it."""
        headers = {k: request.headers.get(k, "") for k in ("Account", "Message", "Signature", "EthAcc")}
        signer = await trio.to_thread.run_sync(self.verifier.verify, headers)
        request.state.account = signer.account
        await self.engine.authorize(signer.account)
        return signer.account

    async def optional_signer(self, request: Request) -> str | None:
        return await self.signer(request) if request.headers.get("Account") else None

    async def _chain(self, func: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(func, *args)

    # ---- uploads ------------------------------------------------------------------

    def _upload_options(self, request: Request) -> tuple[str, str, str | None, bool, Placement]:
        """Bucket, territory, Cipher, encrypt? and placement of an upload request."""
        bucket = request.headers.get("Bucket", "").strip() or self.config.default_bucket
        problem = bucket_name_problem(bucket)
        if problem and bucket != self.config.default_bucket:
            raise InvalidName(f"bucket name {bucket!r}: {problem}")
        territory = request.headers.get("Territory", "").strip() or self.engine.config.storage.territory
        problem = territory_name_problem(territory)
        if problem:
            raise InvalidName(f"territory name {territory!r}: {problem}")
        cipher = request.headers.get("Cipher") or None
        encrypt_header = request.headers.get("Encrypt", "").strip().lower()
        if encrypt_header not in ("", "true", "false"):
            raise InvalidInput("the Encrypt header is true or false")
        encrypt = cipher is not None or (
            self.engine.config.storage.encryption if not encrypt_header else encrypt_header == "true")
        if cipher is not None and encrypt_header == "false":
            raise InvalidInput("a Cipher encrypts the file: do not send Encrypt: false with it")
        return bucket, territory, cipher, encrypt, self._placement(request)

    @staticmethod
    def _placement(request: Request) -> Placement:
        miners = tuple(canonical_account(m) for m in _header_list(request, "Miner"))
        longitudes, latitudes = _header_list(request, "Longitude"), _header_list(request, "Latitude")
        area: list[tuple[float, float]] = []
        if longitudes or latitudes:
            try:
                if len(longitudes) != len(latitudes):
                    raise ValueError("unpaired")
                area = [(float(lat), float(lon)) for lat, lon in zip(latitudes, longitudes, strict=True)]
            except ValueError:
                raise InvalidInput("Longitude and Latitude are numbers, sent in pairs") from None
            if not all(-90 <= lat <= 90 and -180 <= lon <= 180 for lat, lon in area):
                raise InvalidInput("Latitude is -90..90 and Longitude -180..180")
        # one point is a location hint; three or more are a region, as DeOSS takes them
        return Placement(preferred=miners, location=area[0] if area else None, area=tuple(area))

    async def _check_space(self, store: ObjectStore, size: int, encrypt: bool) -> None:
        """Refuse, before reading it, a body bigger than the territory's free space."""
        codec = store.encrypted_codec if encrypt else store.plain_codec
        territory = await store.territory()
        need = charged_space(codec.segment_count(max(size, 1)))
        if territory.remaining_space < need:
            raise TooLarge(
                f"territory {territory.name!r} has {territory.remaining_space // 2**20} MiB free, "
                f"a {size}-byte file needs {need // 2**20} MiB (12 x 8 MiB per segment)",
                hint=f"expand it (`deossfs territory expand {territory.name} --gib N`) or delete files")

    def _new_staging(self) -> tuple[str, StagingFile]:
        upload_id = self.uploads.new_id()
        return upload_id, StagingFile(self.uploads.staging_path(upload_id))

    async def _store(self, request: Request, owner: str, upload_id: str, staged: StagingFile,
                     key: str, options: tuple[str, str, str | None, bool, Placement],
                     reservation: Reservation, plan: FilePlan | None = None) -> FilePlan | str:
        """Hand a staged body to the upload service (which now owns the reservation)."""
        bucket, territory, cipher, encrypt, placement = options
        store = self.engine.store_for(owner, territory, cipher)
        record = UploadRecord(
            id=upload_id, owner=owner, bucket=bucket, key=key, territory=territory, size=staged.size,
            encrypt=encrypt, with_cipher=cipher is not None,
            placement={"preferred": list(placement.preferred),
                       "location": list(placement.location) if placement.location else None,
                       "area": [list(point) for point in placement.area]},
            respond=self.config.respond)
        return await self.uploads.submit(record, store, reservation, plan)

    async def _receive(self, request: Request, owner: str, options: tuple, multipart: bool,
                       name: str | None = None) -> FilePlan | str:
        """Stage the request's one file and store it; the result of UploadService.submit.
        The body is hashed (pass 1) while it arrives, so storing it starts with pass 2."""
        bucket, territory, cipher, encrypt, _ = options
        store = self.engine.store_for(owner, territory, cipher)
        length = declared_length(request)
        if length is not None:
            await self._check_space(store, length, encrypt)
        reservation = self.engine.reserve(owner, length or 0)
        staged: StagingFile | None = None
        planners: list[ReceivePlanner] = []
        try:
            if name is not None:
                check_key(name)
            async with single_error_nursery() as nursery:
                def plan_while_receiving(staged_file: StagingFile, key: str) -> None:
                    planner = ReceivePlanner(store, bucket, key, encrypt, staged_file,
                                             self.engine.planning_slots)
                    planners.append(planner)
                    nursery.start_soon(planner.run)

                if multipart:
                    ids: list[str] = []

                    def new_file(filename: str) -> StagingFile:
                        upload_id, staged_file = self._new_staging()
                        ids.append(upload_id)
                        key = name or _decoded_name(filename)
                        with contextlib.suppress(DeossError):  # refused below, once received
                            plan_while_receiving(staged_file, check_key(key))
                        return staged_file

                    files = await receive_multipart(request, "file", new_file, self.config.body_timeout,
                                                    max_files=1)
                    if not files:
                        raise InvalidInput("the form has no file field named 'file'",
                                           hint="send the file as the multipart field 'file'")
                    staged, upload_id = files[0].staged, ids[0]
                    key = name or _decoded_name(files[0].filename)
                    check_key(key)
                else:
                    assert name is not None
                    upload_id, staged = self._new_staging()
                    key = name
                    plan_while_receiving(staged, key)
                    await receive_raw(request, staged, self.config.body_timeout)
                for planner in planners:
                    planner.body_complete()
            plan = planners[0].plan() if planners else None
            reservation.grow(staged.size)
            result = await self._store(request, owner, upload_id, staged, key, options, reservation, plan)
        except BaseException:
            reservation.release()
            if staged is not None:
                staged.discard()
            raise
        return result

    @staticmethod
    def _fid_of(result: FilePlan | str) -> str:
        return result if isinstance(result, str) else result.fid

    async def put_file(self, request: Request) -> Response:
        """PUT /file: one file as the multipart field `file`; its name is the Filename
        header, else the part's filename."""
        owner = await self.signer(request)
        options = self._upload_options(request)
        name = request.headers.get("Filename", "").strip()
        result = await self._receive(request, owner, options, multipart=True,
                                     name=_decoded_name(name) if name else None)
        return ok({"fid": self._fid_of(result)})

    async def put_object(self, request: Request) -> Response:
        """PUT /object/{name}: the raw body is the file."""
        owner = await self.signer(request)
        options = self._upload_options(request)
        result = await self._receive(request, owner, options, multipart=False,
                                     name=request.path_params["name"])
        return ok({"fid": self._fid_of(result)})

    async def put_files(self, request: Request) -> Response:
        """PUT /files: every multipart field `file` is a file; one result per part, in order."""
        owner = await self.signer(request)
        options = self._upload_options(request)
        bucket, territory, cipher, encrypt, _ = options
        store = self.engine.store_for(owner, territory, cipher)
        length = declared_length(request)
        if length is not None:
            await self._check_space(store, length, encrypt)
        reservation = self.engine.reserve(owner, length or 0)
        ids: list[str] = []

        def new_file(_filename: str) -> StagingFile:
            upload_id, staged_file = self._new_staging()
            ids.append(upload_id)
            return staged_file

        try:
            files = await receive_multipart(request, "file", new_file, self.config.body_timeout)
        except BaseException:
            reservation.release()
            raise
        if not files:
            reservation.release()
            raise InvalidInput("the form has no file field named 'file'")
        parts = reservation.split(len(files))
        results = []
        for (upload_id, form), part in zip(zip(ids, files, strict=True), parts, strict=True):
            entry = {"name": form.filename, "fid": "", "result": "failed", "reason": "",
                     "size": form.staged.size}
            try:
                key = _decoded_name(form.filename)
                check_key(key)
                result = await self._store(request, owner, upload_id, form.staged, key, options, part)
                entry.update(fid=self._fid_of(result), result="success")
            except DeossError as exc:
                part.release()
                form.staged.discard()
                entry["reason"] = cli_message(exc)
            results.append(entry)
        return ok(results)

    async def put_resume(self, request: Request) -> Response:
        """PUT /resume/{name}: a resumable upload in chunks, each `Content-Range: bytes
        FIRST-LAST/TOTAL`; 308 until the last byte is in, then the file is stored."""
        owner = await self.signer(request)
        name = request.path_params["name"]
        check_key(name)
        first, last, total = _parse_content_range(request.headers.get("Content-Range"))
        lock = self._resume_locks.setdefault((owner, name, total), trio.Lock())
        async with lock:
            try:
                return await self._resume_chunk(request, owner, name, first, last, total)
            finally:
                if not lock.statistics().tasks_waiting:
                    self._resume_locks.pop((owner, name, total), None)

    async def _resume_chunk(self, request: Request, owner: str, name: str, first: int | None,
                            last: int | None, total: int) -> Response:
        known = await self._chain(self.uploads.journal.resumable, owner, name, total)
        if known is None:
            if request.headers.get("Territory"):  # DeOSS clients may name it only at the end
                options = self._upload_options(request)
                store = self.engine.store_for(owner, options[1], options[2])
                await self._check_space(store, total, options[3])
            upload_id, received = self.uploads.new_id(), 0
            StagingFile(self.uploads.staging_path(upload_id)).close()
            await self._chain(self.uploads.journal.save_resumable, owner, name, total, upload_id, 0)
        else:
            upload_id, received = known
        if first is None:  # "bytes */TOTAL": how much is here?
            return _resume_incomplete(request, received, total)
        assert last is not None
        if first > received:
            raise InvalidInput(
                f"this chunk starts at byte {first}, but the gateway has the first {received} "
                f"bytes of {name}: send from byte {received}", hint=_RESUME_RANGE_HELP)
        reservation = self.engine.reserve(owner, last - first + 1)
        try:
            got = await _write_at(request, self.uploads.staging_path(upload_id), first,
                                  last - first + 1, self.config.body_timeout)
        finally:
            reservation.release()
        received = max(received, first + got)
        await self._chain(self.uploads.journal.save_resumable, owner, name, total, upload_id, received)
        if got != last - first + 1:
            raise InvalidInput(f"the chunk has {got} bytes, its Content-Range says {last - first + 1}"
                               f" (the gateway keeps the first {received} bytes)")
        if received < total:
            return _resume_incomplete(request, received, total)
        options = self._upload_options(request)
        reservation = self.engine.reserve(owner, total)
        staged = StagingFile.existing(self.uploads.staging_path(upload_id), total)
        try:
            await self._chain(self.uploads.journal.drop_resumable, owner, name, total)
            result = await self._store(request, owner, upload_id, staged, name, options, reservation)
        except BaseException:
            reservation.release()
            raise
        return ok({"fid": self._fid_of(result)})

    # ---- reading ------------------------------------------------------------------

    async def _file(self, fid: str) -> FileInfo:
        if not is_hash(fid):
            raise InvalidInput(f"{fid[:80]!r} is not a FID (64 hex digits)")
        info = await self._chain(self.engine.chain.file, fid)
        if info is None:
            if await self._chain(self.engine.chain.deal, fid) is not None:
                raise NotYetStored(f"file {fid} is still being stored",
                                   hint=f"GET /file/state/{fid} shows its progress")
            raise NotFound(f"file {fid} is not stored on the chain")
        return info

    async def _reader(self, request: Request, info: FileInfo) -> tuple[ObjectStore, str | None]:
        """The store that may read `info` for this request, and the caller's name for the file.

        An owner's signed request reads with that owner's key (or the request's Cipher);
        anyone may read a file stored without encryption, as in DeOSS."""
        signer = await self.optional_signer(request)
        owners = {brief.user: brief.file_name for brief in info.owners}
        if signer is not None and signer in owners:
            return self.engine.store_for(signer, cipher=request.headers.get("Cipher") or None), owners[signer]
        if await self.engine.store.encrypted_layout(info):
            raise AccessDenied(f"file {info.fid} is encrypted: only its owner can download it",
                               hint="sign the request as its owner (Account, Message, Signature)")
        return self.engine.store, next(iter(owners.values()), None)

    async def _serve(self, request: Request, disposition: str, content_type: str,
                     extra: dict[str, str] | None = None) -> Response | StoredFileResponse:
        info = await self._file(request.path_params["fid"].split(".", 1)[0])
        store, name = await self._reader(request, info)
        name = name or info.fid
        if content_type == "":
            content_type = request.headers.get("Format") or ""
            guessed = mimetypes.guess_type(content_type if content_type.startswith(".")
                                           else name)[0] if content_type else None
            extension = request.path_params["fid"].partition(".")[2]
            if guessed is None and extension:
                guessed = mimetypes.guess_type(f"x.{extension}")[0]
            content_type = guessed or mimetypes.guess_type(name)[0] or "application/octet-stream"
        size = await store.logical_size(info)  # a processed file's own length
        etag = f'"{info.fid}"'
        headers = {"content-type": content_type, "accept-ranges": "bytes", "etag": etag,
                   "content-disposition": content_disposition(disposition, name),
                   "cache-control": "private, max-age=31536000, immutable", **(extra or {})}
        range_header = request.headers.get("Range")
        if range_header is None and disposition == "inline":
            # DeOSS's /file/open takes its range in a Content-Range *request* header
            legacy = request.headers.get("Content-Range", "")
            range_header = legacy if legacy.startswith("bytes=") else None
        if_range = request.headers.get("If-Range")
        byte_range = parse_range(range_header, size) if if_range in (None, etag) else None
        head_only = request.method == "HEAD"
        if byte_range is None:
            return StoredFileResponse(store, info, 0, size, 200, headers, head_only)
        start, end = byte_range
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
        return StoredFileResponse(store, info, start, end, 206, headers, head_only)

    async def download(self, request: Request) -> Response | StoredFileResponse:
        """GET /file/download/{fid}: the file as an attachment (ranges work)."""
        return await self._serve(request, "attachment", "application/octet-stream")

    async def open(self, request: Request) -> Response | StoredFileResponse:
        """GET /file/open/{fid}[.ext]: the file inline, typed by its name (or Format / .ext)."""
        return await self._serve(request, "inline", "")

    async def metadata(self, request: Request) -> Response:
        """GET /file/metadata/{fid}: size and owners (with their names); `state` is ours."""
        fid = request.path_params["fid"]
        if not is_hash(fid):
            raise InvalidInput(f"{fid[:80]!r} is not a FID (64 hex digits)")
        info = await self._chain(self.engine.chain.file, fid)
        if info is not None:
            return ok({"fid": fid, "size": info.file_size, "state": "stored",
                       "owner": [_brief(b) for b in info.owners]})
        deal = await self._chain(self.engine.chain.deal, fid)
        if deal is not None:
            return ok({"fid": fid, "size": deal.file_size, "state": "uploading",
                       "owner": [_brief(deal.user)]})
        raise NotFound(f"file {fid} is not on the chain (not stored, not being stored)")

    async def location(self, request: Request) -> Response:
        """GET /file/location/{fid}: which node holds which fragment column."""
        info = await self._file(request.path_params["fid"])
        nodes = {n.account: n for n in await self._chain(self.engine.chain.storage_nodes)}
        data: dict[str, Any] = {}
        for j in range(TOTAL_SHARDS):
            miner = info.segments[0].fragments[j].miner if info.segments else ""
            data[f"{j} batch fragments"] = {"account": miner,
                                            "location": {"longitude": 0.0, "latitude": 0.0}}
        data["segments"] = [
            [{"index": j, "hash": f.hash, "account": f.miner, "avail": f.avail,
              "endpoint": nodes[f.miner].endpoint if f.miner in nodes else None}
             for j, f in enumerate(segment.fragments)]
            for segment in info.segments]
        return ok(data)

    async def file_list(self, request: Request) -> Response:
        """GET /file/list?Account=&Territory=: an account's files (query, else headers)."""
        account_text = request.query_params.get("Account", request.headers.get("Account", "")).strip()
        if not account_text:
            raise InvalidInput("Please set your Account in the header or url")
        account = canonical_account(account_text)
        territory = request.query_params.get("Territory", request.headers.get("Territory"))
        files = await self._chain(self.engine.chain.user_files, account)
        return ok([{"territory": f.territory_name, "fid": f.fid, "size": f.file_size}
                   for f in files if territory in (None, "", f.territory_name)])

    async def file_state(self, request: Request) -> Response:
        """GET /file/state/{fid} (deossfs): declared / uploading (per fragment) / stored / failed."""
        fid = request.path_params["fid"]
        if not is_hash(fid):
            raise InvalidInput(f"{fid[:80]!r} is not a FID (64 hex digits)")
        return ok(await self.uploads.state(fid))

    async def delete_file(self, request: Request) -> Response:
        """DELETE /file/{fid}: the signer gives up the file (the chain deletes it with its
        last owner)."""
        owner = await self.signer(request)
        fid = request.path_params["fid"]
        if not is_hash(fid):
            raise InvalidInput(f"{fid[:80]!r} is not a FID (64 hex digits)")
        await self._chain(self.engine.chain.delete_file, owner, fid)
        return ok({"fid": fid})

    async def fragment(self, request: Request) -> Response:
        """GET /fragment/download?fid=&fragment=: one fragment as stored (an owner's request)."""
        owner = await self.signer(request)
        fid, fragment_hash = request.query_params.get("fid", ""), request.query_params.get("fragment", "")
        if not is_hash(fid):
            raise InvalidInput("invalid fid: 64 hex digits")
        if not is_hash(fragment_hash):
            raise InvalidInput("invalid fragment: 64 hex digits")
        info = await self._file(fid)
        if owner not in {b.user for b in info.owners}:
            raise AccessDenied(f"account {owner} does not own file {fid}")
        holders = [f.miner for s in info.segments for f in s.fragments if f.hash == fragment_hash]
        if not holders:
            raise NotFound(f"file {fid} has no fragment {fragment_hash}")
        endpoints = await self.engine.store.endpoints()
        data = await self.engine.store.client.get_fragment(endpoints.get(holders[0], ""), fid, fragment_hash)
        return Response(bytes(data), media_type="application/octet-stream")

    # ---- buckets and territories (deossfs) ----------------------------------------------

    async def bucket_list(self, request: Request) -> Response:
        owner = await self.signer(request)
        return ok(await self._chain(self.engine.chain.buckets, owner))

    async def bucket_create(self, request: Request) -> Response:
        owner = await self.signer(request)
        name = request.path_params["name"]
        problem = bucket_name_problem(name)
        if problem:
            raise InvalidName(f"bucket name {name!r}: {problem}")
        await self._chain(self.engine.chain.create_bucket, owner, name)
        return ok({"name": name}, status=201)

    async def bucket_delete(self, request: Request) -> Response:
        owner = await self.signer(request)
        await self._chain(self.engine.chain.delete_bucket, owner, request.path_params["name"])
        return ok({"name": request.path_params["name"]})

    async def bucket_info(self, request: Request) -> Response:
        owner = await self.signer(request)
        name = request.path_params["name"]
        info = await self._chain(self.engine.chain.bucket, owner, name)
        if info is None:
            raise NotFound(f"bucket {name!r} does not exist")
        return ok({"name": info.name, "owner": info.owner, "objects": list(info.object_list),
                   "count": len(info.object_list)})

    async def territory_list(self, request: Request) -> Response:
        owner = await self.signer(request)
        return ok([_territory(t) for t in await self._chain(self.engine.chain.territories, owner)])

    async def territory_show(self, request: Request) -> Response:
        owner = await self.signer(request)
        territory = await self._chain(self.engine.chain.territory, owner, request.path_params["name"])
        if territory is None:
            raise NotFound(f"territory {request.path_params['name']!r} does not exist")
        return ok(_territory(territory))

    async def _own_territory_call(self, request: Request, call: Callable[..., Awaitable[None]]) -> Response:
        """Territories are bought, expanded and renewed by their owner's own signed chain
        call, which Oss.authorize does not delegate: the gateway does it for its own account."""
        owner = await self.signer(request)
        if owner != self.engine.address:
            raise AccessDenied(
                "territories are bought, expanded and renewed with their owner's own signature "
                "on the chain; a gateway cannot pay for another account",
                hint="run `deossfs territory mint|expand|renew` with your own key")
        name = request.path_params["name"]
        await call(name)
        return ok(_territory(await self._chain(self.engine.chain.territory, owner, name)))

    async def territory_mint(self, request: Request) -> Response:
        gib, days = _int_param(request, "gib"), _int_param(request, "days", 30)
        return await self._own_territory_call(
            request, lambda name: self._chain(self.engine.chain.mint_territory, name, gib, days))

    async def territory_expand(self, request: Request) -> Response:
        gib = _int_param(request, "gib")
        return await self._own_territory_call(
            request, lambda name: self._chain(self.engine.chain.expand_territory, name, gib))

    async def territory_renew(self, request: Request) -> Response:
        days = _int_param(request, "days")
        return await self._own_territory_call(
            request, lambda name: self._chain(self.engine.chain.renew_territory, name, days))

    async def version(self, request: Request) -> Response:
        return JSONResponse(VERSION)


# ---- helpers ----------------------------------------------------------------------------


def _decoded_name(name: str) -> str:
    """A file name as DeOSS reads it: percent-decoded when it contains '%'."""
    return unquote(name, errors="strict") if "%" in name else name


def _brief(brief: Any) -> dict[str, str]:
    return {"user": brief.user, "file_name": brief.file_name, "bucket_name": brief.bucket_name,
            "territory_name": brief.territory_name}


def _territory(t: Any) -> dict[str, Any]:
    return {"name": t.name, "total_space": t.total_space, "used_space": t.used_space,
            "locked_space": t.locked_space, "remaining_space": t.remaining_space,
            "start": t.start, "deadline": t.deadline, "state": t.state.value}


def _int_param(request: Request, name: str, default: int | None = None) -> int:
    text = request.query_params.get(name)
    if text is None:
        if default is None:
            raise InvalidInput(f"the query parameter {name} is required")
        return default
    if not text.isdigit() or int(text) <= 0:
        raise InvalidInput(f"{name} must be a positive whole number")
    return int(text)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int]:
    """(first, last, total) of DeOSS's `bytes FIRST-LAST/TOTAL` (also `bytes=...`, and
    `bytes */TOTAL` to ask what the gateway has)."""
    if not value:
        raise InvalidInput("Content-Range is missing from the request header", hint=_RESUME_RANGE_HELP)
    text = value.strip()
    if not text.startswith("bytes"):
        raise InvalidInput(f"Illegal Content-Range content: {value[:80]!r}", hint=_RESUME_RANGE_HELP)
    span, sep, total_text = text[5:].lstrip(" =").partition("/")
    if not sep or not total_text.isdigit() or int(total_text) == 0:
        raise InvalidInput(f"Illegal Content-Range content: {value[:80]!r}", hint=_RESUME_RANGE_HELP)
    total = int(total_text)
    if span == "*":
        return None, None, total
    first_text, dash, last_text = span.partition("-")
    if not dash or not first_text.isdigit() or not last_text.isdigit():
        raise InvalidInput(f"Illegal Content-Range content: {value[:80]!r}", hint=_RESUME_RANGE_HELP)
    first, last = int(first_text), int(last_text)
    if last < first or last >= total:
        raise InvalidInput(f"Illegal Content-Range content: {value[:80]!r} (LAST is inclusive and "
                           "below TOTAL)", hint=_RESUME_RANGE_HELP)
    return first, last, total


def _resume_incomplete(request: Request, received: int, total: int) -> Response:
    """308 as DeOSS answers (Content-Range echoed, body null), plus a Range header saying
    which bytes the gateway has, so a client can resume without keeping its offset."""
    headers = {"Content-Range": request.headers.get("Content-Range", f"bytes */{total}")}
    if received:
        headers["Range"] = f"bytes=0-{received - 1}"
    return JSONResponse(None, status_code=308, headers=headers)


async def _write_at(request: Request, path: Any, offset: int, length: int, idle_timeout: float) -> int:
    """Write the body at `offset` of `path` (a chunk sent again lands where it belongs);
    at most `length` bytes are taken. Returns the bytes written."""
    import os

    from .http import body_chunks

    fd = os.open(path, os.O_WRONLY)
    written = 0
    try:
        async for chunk in body_chunks(request, idle_timeout):
            piece = chunk[: max(0, length - written)]
            if len(chunk) > len(piece):
                raise InvalidInput(f"the chunk is longer than its Content-Range ({length} bytes)")
            view = memoryview(piece)
            while view:
                done = os.pwrite(fd, view, offset + written)
                view = view[done:]
                written += done
    finally:
        os.close(fd)
    return written
