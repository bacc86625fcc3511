"""The console's object pages: the browser of a bucket, an object's details (its state and
where its fragments are), download, delete, rename/move, share links, and the JSON the
upload script uses (presigned S3 URLs, what is being stored).

Each acts through the signed-in account's catalog and store, as the S3 operations do:
a listing is `Catalog.list`, a delete `Catalog.delete`, a move within a bucket
`Catalog.copy` (the same FID: nothing is uploaded again) then `Catalog.delete`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...catalog.names import path_key
from ...catalog.records import ListedObject
from ...errors import DeossError, InvalidInput, NoSuchKey, NotFound, cli_message
from ...processing.layout import TOTAL_SHARDS
from ..http import StoredFileResponse, content_disposition
from ..s3.multipart import MAX_PART_NUMBER
from ..s3.objects import object_headers
from ..s3.sigv4 import MAX_PRESIGNED_EXPIRES
from .presign import object_path, presign
from .routes import User, seg, url

if TYPE_CHECKING:
    from .routes import Console

#: rows of the object browser per page
PAGE = 100
#: a folder level sorted by size or time is read whole; past this it is sorted by name only
SORT_LIMIT = 100_000
#: the upload script sends files up to this size in one PutObject, larger ones in parts
SINGLE_PUT_MAX = 16 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
#: seconds the URLs the upload script gets are valid (each is used within moments)
UPLOAD_URL_SECONDS = 3600
SHARE_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}


class BrowserPages:
    def __init__(self, console: Console) -> None:
        self.console = console

    def routes(self) -> list[Route]:
        return [
            Route("/b/{bucket}", self.browse, methods=["GET"]),
            Route("/b/{bucket}/object", self.details, methods=["GET"]),
            Route("/b/{bucket}/download", self.download, methods=["GET"]),
            Route("/b/{bucket}/delete", self.delete, methods=["POST"]),
            Route("/b/{bucket}/rename", self.rename_page, methods=["GET"]),
            Route("/b/{bucket}/rename", self.rename, methods=["POST"]),
            Route("/b/{bucket}/share", self.share_page, methods=["GET"]),
            Route("/b/{bucket}/share", self.share, methods=["POST"]),
            Route("/b/{bucket}/retry", self.retry, methods=["POST"]),
            Route("/api/presign", self.api_presign, methods=["POST"]),
            Route("/api/progress/{bucket}", self.api_progress, methods=["GET"]),
        ]

    # ---- the object browser -------------------------------------------------------------

    async def browse(self, request: Request) -> Response:
        user = await self.console.user(request)
        bucket = request.path_params["bucket"]
        query = request.query_params
        prefix, typed = query.get("prefix", ""), query.get("filter", "")
        sort = query.get("sort", "name") if query.get("sort") in ("name", "size", "modified") else "name"
        descending = query.get("order") == "desc"
        after = query.get("after", "")
        page_number = int(query["page"]) if query.get("page", "").isdigit() and int(query["page"]) > 0 else 1
        listed_prefix = prefix + typed
        paging: dict[str, Any] = {"first": None, "previous": None, "next": None, "range": None}
        too_many = False
        if sort == "name" and not descending:
            page = await user.catalog.list(bucket, prefix=listed_prefix, start_after=after,
                                           limit=PAGE, delimiter="/")
            rows = _rows(prefix, page.prefixes, page.objects)
            if page.truncated and page.next_marker is not None:
                paging["next"] = self._browse_url(bucket, prefix, typed, sort, descending, after=page.next_marker)
            if after:
                paging["first"] = self._browse_url(bucket, prefix, typed, sort, descending)
        else:
            everything, too_many = await _whole_level(user, bucket, listed_prefix)
            folders = [r for r in everything if r["folder"]]
            objects = [r for r in everything if not r["folder"]]
            if too_many:
                sort, descending = "name", False
            column = {"name": "key", "size": "size", "modified": "modified"}[sort]
            objects.sort(key=lambda r: (r[column], r["key"].encode()), reverse=descending)
            if sort == "name":
                folders.sort(key=lambda r: r["key"].encode(), reverse=descending)
            ordered = folders + objects
            start = (page_number - 1) * PAGE
            rows = ordered[start:start + PAGE]
            if start + PAGE < len(ordered):
                paging["next"] = self._browse_url(bucket, prefix, typed, sort, descending, page=page_number + 1)
            if page_number > 1:
                paging["previous"] = self._browse_url(bucket, prefix, typed, sort, descending,
                                                      page=page_number - 1)
            paging["range"] = (start + 1, start + len(rows), len(ordered)) if rows else None
        sorts = {column: self._browse_url(bucket, prefix, typed, column,
                                          column == sort and not descending)
                 for column in ("name", "size", "modified")}
        in_progress = self._in_progress(user, bucket)
        failed = await self.console.uploads.failed(user.account, bucket)
        return self.console.render(
            request, "bucket.html", user, title=bucket, bucket=bucket, prefix=prefix, filter=typed,
            rows=rows, paging=paging, sort=sort, descending=descending, sorts=sorts,
            too_many=too_many, crumbs=_crumbs(prefix), in_progress=in_progress, failed=failed,
            single_put_max=SINGLE_PUT_MAX, part_size=PART_SIZE,
            parallel=max(1, min(4, self.console.engine.config.gateway.max_uploads_per_account - 1)),
            here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))

    def _browse_url(self, bucket: str, prefix: str, typed: str, sort: str, descending: bool,
                    after: str = "", page: int | None = None) -> str:
        return url(f"/b/{seg(bucket)}", prefix=prefix, filter=typed,
                   sort=None if sort == "name" else sort, order="desc" if descending else None,
                   after=after, page=page)

    def _in_progress(self, user: User, bucket: str) -> list[dict[str, Any]]:
        rows = []
        for item in self.console.uploads.in_progress(user.account, bucket):
            key = path_key(item["path"]) or item["path"]
            rows.append({**item, "key": key})
        return rows

    # ---- one object -----------------------------------------------------------------------

    async def details(self, request: Request) -> Response:
        user = await self.console.user(request)
        bucket, key = request.path_params["bucket"], request.query_params.get("key", "")
        record = await user.catalog.get(bucket, key)
        state: dict[str, Any] = {"state": "stored" if not record.fid else "unknown", "error": None}
        segments: list[list[dict[str, Any]]] = []
        nodes: list[dict[str, Any]] = []
        nodes_down = 0
        if record.fid:
            try:
                state = await self.console.uploads.state(record.fid)
            except NotFound as exc:
                state = {"state": "missing", "error": cli_message(exc)}
            if state["state"] == "stored":
                store = self.console.engine.store_for(user.account)
                info = await store.file_info(record.fid)
                endpoints = await store.endpoints()
                answers = await self.console.probe.reachable(sorted(set(endpoints.values())))
                held: dict[str, int] = {}
                for segment in info.segments:
                    row = []
                    for index, fragment in enumerate(segment.fragments):
                        endpoint = endpoints.get(fragment.miner, "")
                        up = answers.get(endpoint, False)
                        nodes_down += not up
                        held[fragment.miner] = held.get(fragment.miner, 0) + 1
                        row.append({"index": index, "node": fragment.miner, "endpoint": endpoint,
                                    "reachable": up, "avail": fragment.avail, "hash": fragment.hash,
                                    "data": index < TOTAL_SHARDS // 3})
                    segments.append(row)
                nodes = [{"node": node, "endpoint": endpoints.get(node, ""), "fragments": count,
                          "reachable": answers.get(endpoints.get(node, ""), False)}
                         for node, count in sorted(held.items(), key=lambda item: item[0])]
        return self.console.render(
            request, "object.html", user, title=key, bucket=bucket, record=record, state=state,
            segments=segments, nodes=nodes, nodes_down=nodes_down, crumbs=_crumbs(_folder_of(key)),
            modified=record.modified_ns / 1e9)

    async def download(self, request: Request) -> Response | StoredFileResponse:
        """The object as an attachment, streamed segment by segment (as GetObject streams)."""
        user = await self.console.user(request)
        bucket, key = request.path_params["bucket"], request.query_params.get("key", "")
        record = await user.catalog.get(bucket, key)
        headers = object_headers(record)
        headers["content-disposition"] = content_disposition("attachment", key.rstrip("/").rpartition("/")[2] or "download")
        if not record.fid:
            return Response(b"", headers={**headers, "content-length": "0"})
        store = self.console.engine.store_for(user.account)
        info = await store.file_info(record.fid)
        return StoredFileResponse(store, info, 0, record.size, 200, headers)

    # ---- delete -------------------------------------------------------------------------

    async def delete(self, request: Request) -> Response:
        """First a confirmation of what is selected, then (confirm=yes) the delete."""
        user = await self.console.user(request)
        form = await self.console.form(request, user)
        bucket = request.path_params["bucket"]
        back = str(form.get("back", "")) or url(f"/b/{seg(bucket)}")
        back = back if back.startswith("/console/") else url(f"/b/{seg(bucket)}")
        selected = [str(v) for v in form.getlist("item") if str(v)[:2] in ("k:", "p:")]
        if not selected:
            return self.console.done(user, "Nothing was selected: tick the objects and folders to delete.", back)
        items = [{"folder": s.startswith("p:"), "key": s[2:]} for s in selected]
        if form.get("confirm") != "yes":
            return self.console.render(request, "delete.html", user, title="Delete?", bucket=bucket,
                                       items=items, back=back, selected=selected)
        deleted, problems = 0, []
        for item in items:
            keys = await _keys_under(user, bucket, item["key"]) if item["folder"] else [item["key"]]
            for key in keys:
                try:
                    if await user.catalog.delete(bucket, key) is not None:
                        deleted += 1
                except DeossError as exc:
                    problems.append(f"{key}: {cli_message(exc)}")
        message = f"Deleted {deleted} object{'s' if deleted != 1 else ''}."
        if problems:
            message += f" Not deleted: {'; '.join(problems[:5])}" + (" …" if len(problems) > 5 else "")
        return self.console.done(user, message, back)

    # ---- rename / move --------------------------------------------------------------------

    async def rename_page(self, request: Request) -> Response:
        user = await self.console.user(request)
        bucket = request.path_params["bucket"]
        key, prefix = request.query_params.get("key", ""), request.query_params.get("prefix", "")
        if not key and not prefix:
            raise InvalidInput("say what to rename: an object (key) or a folder (prefix)")
        if key:
            await user.catalog.get(bucket, key)
        return self.console.render(request, "rename.html", user, title="Rename", bucket=bucket,
                                   key=key, prefix=prefix, buckets=sorted(await user.catalog.buckets()))

    async def rename(self, request: Request) -> Response:
        user = await self.console.user(request)
        form = await self.console.form(request, user)
        bucket = request.path_params["bucket"]
        source = str(form.get("source", ""))
        folder = form.get("kind") == "folder"
        target = str(form.get("target", ""))
        target_bucket = str(form.get("target_bucket", "")) or bucket
        back = url(f"/b/{seg(bucket)}", prefix=_folder_of(source.rstrip("/")) if folder else _folder_of(source))
        try:
            moved = await self._move(user, bucket, source, target_bucket, target, folder)
        except DeossError as exc:
            return self.console.done(user, f"{source!r} was not renamed: {cli_message(exc)}", back)
        where = f"{target_bucket}/{target}" if target_bucket != bucket else target
        return self.console.done(user, f"Renamed {source} to {where} ({moved} object"
                                 f"{'s' if moved != 1 else ''}).", back)

    async def _move(self, user: User, bucket: str, source: str, target_bucket: str, target: str,
                    folder: bool) -> int:
        if not target:
            raise InvalidInput("give the new name")
        if target_bucket not in await user.catalog.buckets():
            raise InvalidInput(f"there is no bucket {target_bucket!r}")
        if folder:
            source = source if source.endswith("/") else source + "/"
            target = target if target.endswith("/") else target + "/"
            if target_bucket == bucket and target.startswith(source):
                raise InvalidInput("a folder cannot be moved into itself")
            pairs = [(key, target + key[len(source):]) for key in await _keys_under(user, bucket, source)]
            if not pairs:
                raise NoSuchKey(f"folder {source!r} is empty or does not exist")
            if await _keys_under(user, target_bucket, target, limit=1):
                raise InvalidInput(f"{target!r} holds objects already: choose a new folder name")
        else:
            pairs = [(source, target)]
        if (bucket, source) == (target_bucket, target):
            raise InvalidInput("the new name is the old one")
        for old, new in pairs:
            try:
                await user.catalog.get(target_bucket, new, refresh_on_miss=False)
            except NoSuchKey:
                pass
            else:
                raise InvalidInput(f"an object named {new!r} exists already")
            # within a bucket the copy names the same FID: nothing is uploaded again
            copied = await user.catalog.copy(bucket, old, target_bucket, new)
            if copied is None:  # across buckets CESS cannot share a FID: the bytes go again
                record = await user.catalog.get(bucket, old)
                await self.console.s3.objects.copy_bytes(user.account, record, target_bucket, new, None)
            await user.catalog.delete(bucket, old)
        return len(pairs)

    # ---- share links -----------------------------------------------------------------------

    async def share_page(self, request: Request) -> Response:
        user = await self.console.user(request)
        bucket, key = request.path_params["bucket"], request.query_params.get("key", "")
        record = await user.catalog.get(bucket, key)
        return self.console.render(request, "share.html", user, title="Share", bucket=bucket,
                                   record=record, link=None, expires_at=None)

    async def share(self, request: Request) -> Response:
        user = await self.console.user(request)
        form = await self.console.form(request, user)
        bucket, key = request.path_params["bucket"], str(form.get("key", ""))
        record = await user.catalog.get(bucket, key)
        amount, unit = str(form.get("amount", "")).strip(), str(form.get("unit", ""))
        if not amount.isdigit() or unit not in SHARE_UNITS or not 1 <= int(amount) * SHARE_UNITS[unit] <= MAX_PRESIGNED_EXPIRES:
            raise InvalidInput("a share link is valid from 1 second to 7 days: give a whole number "
                               "and a unit")
        seconds = int(amount) * SHARE_UNITS[unit]
        link = self._presign(request, user, "GET", bucket, key, {}, seconds)
        return self.console.render(request, "share.html", user, title="Share", bucket=bucket,
                                   record=record, link=link, expires_at=time.time() + seconds)

    def _presign(self, request: Request, user: User, method: str, bucket: str, key: str,
                 params: dict[str, str], seconds: int) -> str:
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        return presign(user.key, method, request.url.scheme, host, object_path(bucket, key), params,
                       seconds, self.console.engine.config.gateway.region)

    # ---- failed uploads ----------------------------------------------------------------------

    async def retry(self, request: Request) -> Response:
        user = await self.console.user(request)
        form = await self.console.form(request, user)
        bucket = request.path_params["bucket"]
        try:
            await self.console.uploads.retry(user.account, str(form.get("id", "")))
        except DeossError as exc:
            return self.console.done(user, f"Not retried: {cli_message(exc)}", url(f"/b/{seg(bucket)}"))
        return self.console.done(user, "Storing it again: its progress shows below.", url(f"/b/{seg(bucket)}"))

    # ---- what the upload script asks -------------------------------------------------------

    async def api_presign(self, request: Request) -> Response:
        """URLs for one step of an upload, signed with the session's key:
        put (one PutObject), create, parts (UploadPart for the numbers given), complete,
        abort. `put` and `create` first check that the key can be stored (its name, a
        conflict with a folder, the bucket), so a refusal comes before any byte is sent."""
        user = await self.console.user(request)
        self.console.check_csrf_header(request, user)
        body = await request.json()
        if not isinstance(body, dict):
            raise InvalidInput("the request is a JSON object")
        op, bucket, key = str(body.get("op", "")), str(body.get("bucket", "")), str(body.get("key", ""))
        upload_id = str(body.get("upload_id", ""))

        def signed(method: str, params: dict[str, str], seconds: int = UPLOAD_URL_SECONDS) -> str:
            return self._presign(request, user, method, bucket, key, params, seconds)

        if op in ("put", "create"):
            await user.catalog.prepare_put(bucket, key)
            if op == "put":
                return JSONResponse({"url": signed("PUT", {})})
            return JSONResponse({"url": signed("POST", {"uploads": ""})})
        if not upload_id:
            raise InvalidInput("upload_id is missing")
        if op == "parts":
            numbers = body.get("parts")
            if not isinstance(numbers, list) or not 0 < len(numbers) <= 100 or not all(
                    isinstance(n, int) and 1 <= n <= MAX_PART_NUMBER for n in numbers):
                raise InvalidInput(f"parts is a list of 1 to 100 part numbers (1..{MAX_PART_NUMBER})")
            return JSONResponse({"urls": {str(n): signed("PUT", {"partNumber": str(n), "uploadId": upload_id})
                                          for n in numbers}})
        if op == "complete":
            return JSONResponse({"url": signed("POST", {"uploadId": upload_id})})
        if op == "abort":
            return JSONResponse({"url": signed("DELETE", {"uploadId": upload_id}, MAX_PRESIGNED_EXPIRES)})
        raise InvalidInput("op is put, create, parts, complete or abort")

    async def api_progress(self, request: Request) -> Response:
        """The account's files of this bucket being stored now, per fragment column."""
        user = await self.console.user(request)
        bucket = request.path_params["bucket"]
        return JSONResponse({"uploads": [
            {"key": item["key"], "size": item["size"], "state": item["state"], "segments": item["segments"],
             "sent": item["sent"], "error": item["error"]}
            for item in self._in_progress(user, bucket)]})


# ---- helpers ------------------------------------------------------------------------------


def _rows(prefix: str, prefixes: list[str], objects: list[ListedObject]) -> list[dict[str, Any]]:
    """Folders and objects of one listing page, in key order (the folder's own marker
    object, `prefix` itself, is not a row of its contents)."""
    rows = [_folder_row(prefix, p) for p in prefixes]
    rows += [_object_row(prefix, o) for o in objects if o.key != prefix]
    return sorted(rows, key=lambda r: r["key"].encode())


def _folder_row(prefix: str, common: str) -> dict[str, Any]:
    return {"folder": True, "key": common, "name": common[len(prefix):], "size": 0, "modified": 0}


def _object_row(prefix: str, item: ListedObject) -> dict[str, Any]:
    return {"folder": False, "key": item.key, "name": item.key[len(prefix):], "size": item.size,
            "modified": item.modified_ns / 1e9, "etag": item.etag}


async def _whole_level(user: User, bucket: str, prefix: str) -> tuple[list[dict[str, Any]], bool]:
    """Every folder and object directly in `prefix` (for sorting by another column than
    the name), and whether there were more than SORT_LIMIT."""
    folder = prefix[: prefix.rfind("/") + 1]
    rows: list[dict[str, Any]] = []
    after = ""
    while True:
        page = await user.catalog.list(bucket, prefix=prefix, start_after=after, limit=1000, delimiter="/")
        rows += _rows(folder, page.prefixes, page.objects)
        if not page.truncated or page.next_marker is None:
            return rows, False
        if len(rows) > SORT_LIMIT:
            return rows[:SORT_LIMIT], True
        after = page.next_marker


async def _keys_under(user: User, bucket: str, prefix: str, limit: int | None = None) -> list[str]:
    """The keys of every object whose key starts with `prefix` (a folder and its contents)."""
    keys: list[str] = []
    after = ""
    while True:
        page = await user.catalog.list(bucket, prefix=prefix, start_after=after, limit=1000)
        keys += [o.key for o in page.objects]
        if limit is not None and len(keys) >= limit:
            return keys[:limit]
        if not page.truncated or page.next_marker is None:
            return keys
        after = page.next_marker


def _folder_of(key: str) -> str:
    return key[: key.rfind("/") + 1]


def _crumbs(prefix: str) -> list[tuple[str, str]]:
    """(prefix, label) of each folder down to `prefix`."""
    crumbs = []
    position = 0
    while True:
        cut = prefix.find("/", position)
        if cut < 0:
            return crumbs
        crumbs.append((prefix[: cut + 1], prefix[position:cut] or "(empty name)"))
        position = cut + 1
