"""`GatewayClient`: DeOSS's REST API from Python, for any DeOSS-compatible gateway.

The Python counterpart of CESS's Go and JavaScript SDKs: each call signs its request as
DeOSS clients do (`Account`, `Message`, `Signature`: sr25519 through substrate-interface),
with a fresh Message per request (`<unix seconds>:<nonce>`), which deossfs gateways
require and DeOSS v0.4.2 accepts. Errors come back as the project's taxonomy
(`errors.from_http_status`), e.g. NotFound for a 404.

    from substrateinterface import Keypair
    client = GatewayClient("http://127.0.0.1:8080", Keypair.create_from_uri("//Alice"))
    fid = client.upload(b"hello", "hello.txt", territory="default")
    assert client.download(fid) == b"hello"
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import base58
import httpx
from substrateinterface import Keypair

from .errors import DeossError, from_http_status
from .keys import Account

Source = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]
#: a (latitude, longitude) point, or several (a region)
Location = tuple[float, float] | Sequence[tuple[float, float]]
#: a resumable upload sends chunks of this size unless told otherwise
RESUME_CHUNK = 16 * 1024 * 1024


class GatewayClient:
    """A signed client of one gateway. Not thread-safe; cheap to create."""

    def __init__(self, url: str, keypair: Keypair | Account, *, timeout: float = 600.0,
                 signature_encoding: str = "hex", wrap_message: bool = False) -> None:
        """`signature_encoding` "hex" (0x...) or "base58" (as CESS's Go SDK sends);
        `wrap_message` signs `<Bytes>Message</Bytes>` as polkadot.js signRaw does."""
        if signature_encoding not in ("hex", "base58"):
            raise ValueError("signature_encoding is 'hex' or 'base58'")
        self.url = url.rstrip("/")
        self.keypair = keypair.keypair if isinstance(keypair, Account) else keypair
        self.signature_encoding = signature_encoding
        self.wrap_message = wrap_message
        self._http = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def account(self) -> str:
        return self.keypair.ss58_address

    # ---- signing ------------------------------------------------------------------

    def sign(self, message: str | None = None) -> dict[str, str]:
        """The Account/Message/Signature headers of one request (a fresh Message by default)."""
        message = message or f"{int(time.time())}:{secrets.token_hex(8)}"
        payload = f"<Bytes>{message}</Bytes>" if self.wrap_message else message
        raw = self.keypair.sign(payload.encode())
        signature = "0x" + raw.hex() if self.signature_encoding == "hex" else base58.b58encode(raw).decode()
        return {"Account": self.account, "Message": message, "Signature": signature}

    def _request(self, method: str, path: str, *, signed: bool = True, headers: dict | None = None,
                 allow_status: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        all_headers = {**(self.sign() if signed else {}), **(headers or {})}
        response = self._http.request(method, path, headers=all_headers, **kwargs)
        return _checked(response, allow_status)

    def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()["data"]

    @staticmethod
    def _upload_headers(territory: str | None, bucket: str | None, cipher: str | None,
                        encrypt: bool | None, miners: Iterable[str] = (),
                        location: Location | None = None) -> list[tuple[str, str]]:
        headers = []
        for name, value in (("Territory", territory), ("Bucket", bucket), ("Cipher", cipher)):
            if value:
                headers.append((name, value))
        if encrypt is not None:
            headers.append(("Encrypt", "true" if encrypt else "false"))
        headers.extend(("Miner", miner) for miner in miners)
        if location is not None:
            points = [location] if isinstance(location[0], int | float) else location
            for lat, lon in points:  # type: ignore[misc]
                headers += [("Latitude", str(lat)), ("Longitude", str(lon))]
        return headers

    # ---- uploads ------------------------------------------------------------------

    def upload(self, source: Source, name: str | None = None, *, territory: str | None = None,
               bucket: str | None = None, cipher: str | None = None, encrypt: bool | None = None,
               miners: Iterable[str] = (), location: Location | None = None) -> str:
        """PUT /file: store `source` (bytes, a path or a binary file) as `name`; its FID.
        Files are streamed, never read into memory whole. `miners` pin the upload to
        those storage nodes (DeOSS's Miner headers); `location` is a (latitude, longitude)
        point, or three or more of them naming a region (Latitude/Longitude headers),
        for placement policies such as the region plug-in."""
        with _opened(source) as (body, default_name):
            filename = name or default_name
            if not filename:
                raise ValueError("name the file: its source has no name")
            # a list, not a dict: a region repeats the Latitude and Longitude headers
            headers = [*self.sign().items(), ("Filename", filename),
                       *self._upload_headers(territory, bucket, cipher, encrypt, miners, location)]
            response = self._http.put("/file", headers=headers, files={"file": (filename, body)})
        return _checked(response).json()["data"]["fid"]

    def upload_files(self, sources: Iterable[tuple[str, Source]], *, territory: str | None = None,
                     bucket: str | None = None) -> list[dict]:
        """PUT /files: several files in one request; one result per file
        ({name, fid, result, reason, size})."""
        opened = [_opened(source) for _, source in sources]
        names = [name for name, _ in sources]
        try:
            files = [("file", (name, handle.__enter__()[0])) for name, handle in zip(names, opened, strict=True)]
            headers = {**self.sign(), **dict(self._upload_headers(territory, bucket, None, None))}
            response = self._http.put("/files", headers=headers, files=files)
        finally:
            for handle in opened:
                handle.__exit__(None, None, None)
        return _checked(response).json()["data"]

    def put_object(self, name: str, source: Source, *, territory: str | None = None,
                   bucket: str | None = None, cipher: str | None = None,
                   encrypt: bool | None = None) -> str:
        """PUT /object/{name}: the raw body is the file; its FID."""
        with _opened(source) as (body, _):
            headers = self._upload_headers(territory, bucket, cipher, encrypt)
            content = body if isinstance(body, bytes) else _chunks(body)
            response = self._http.put(f"/object/{_quote(name)}",
                                      headers=[*self.sign().items(), *headers], content=content)
        return _checked(response).json()["data"]["fid"]

    def resumable_upload(self, name: str, source: Source, *, chunk_size: int = RESUME_CHUNK,
                         territory: str | None = None, bucket: str | None = None,
                         cipher: str | None = None, encrypt: bool | None = None) -> str:
        """PUT /resume/{name} in chunks; asks the gateway how much it has first, so an
        interrupted upload continues where it stopped. Returns the FID."""
        with _opened(source) as (body, _):
            data = body if isinstance(body, bytes) else None
            total = len(data) if data is not None else os.fstat(body.fileno()).st_size  # type: ignore[union-attr]
            path = f"/resume/{_quote(name)}"
            headers = self._upload_headers(territory, bucket, cipher, encrypt)
            response = self._request("PUT", path, headers={"Content-Range": f"bytes */{total}"},
                                     content=b"", allow_status=(308,))
            offset = _received(response)
            while True:
                end = min(total, offset + chunk_size)
                if data is not None:
                    chunk = data[offset:end]
                else:
                    body.seek(offset)  # type: ignore[union-attr]
                    chunk = body.read(end - offset)  # type: ignore[union-attr]
                response = self._http.put(path, headers=[*self.sign().items(), *headers,
                                                         ("Content-Range", f"bytes {offset}-{end - 1}/{total}")],
                                          content=chunk)
                if response.status_code == 308:
                    offset = _received(response)
                    continue
                return _checked(response).json()["data"]["fid"]

    # ---- reading ------------------------------------------------------------------

    def download(self, fid: str, dest: str | os.PathLike[str] | None = None, *,
                 byte_range: tuple[int, int | None] | None = None, cipher: str | None = None,
                 signed: bool = True) -> bytes | Path:
        """GET /file/download/{fid}: the file's bytes, or written to `dest` (atomically).
        `byte_range` = (first, last inclusive or None) asks for part of it."""
        headers = {}
        if byte_range is not None:
            first, last = byte_range
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        if cipher:
            headers["Cipher"] = cipher
        all_headers = {**(self.sign() if signed else {}), **headers}
        with self._http.stream("GET", f"/file/download/{fid}", headers=all_headers) as response:
            if response.status_code >= 400:
                response.read()
                _checked(response)
            if dest is None:
                return response.read()
            target = Path(dest)
            tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
            try:
                with open(tmp, "wb") as handle:
                    for piece in response.iter_bytes(1024 * 1024):
                        handle.write(piece)
                tmp.replace(target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return target

    def metadata(self, fid: str) -> dict:
        return self._data("GET", f"/file/metadata/{fid}", signed=False)

    def location(self, fid: str) -> dict:
        return self._data("GET", f"/file/location/{fid}", signed=False)

    def state(self, fid: str) -> dict:
        return self._data("GET", f"/file/state/{fid}", signed=False)

    def list_files(self, account: str | None = None, territory: str | None = None) -> list[dict]:
        params = {"Account": account or self.account}
        if territory:
            params["Territory"] = territory
        return self._data("GET", "/file/list", signed=False, params=params) or []

    def fragment(self, fid: str, fragment_hash: str) -> bytes:
        return self._request("GET", "/fragment/download",
                             params={"fid": fid, "fragment": fragment_hash}).content

    def delete(self, fid: str) -> None:
        self._request("DELETE", f"/file/{fid}")

    def version(self) -> str:
        return self._request("GET", "/version", signed=False).json()

    # ---- buckets and territories (deossfs's routes) --------------------------------------

    def create_bucket(self, name: str) -> None:
        self._request("PUT", f"/bucket/{_quote(name)}")

    def delete_bucket(self, name: str) -> None:
        self._request("DELETE", f"/bucket/{_quote(name)}")

    def bucket(self, name: str) -> dict:
        return self._data("GET", f"/bucket/{_quote(name)}")

    def buckets(self) -> list[str]:
        return self._data("GET", "/bucket")

    def territory(self, name: str) -> dict:
        return self._data("GET", f"/territory/{_quote(name)}")

    def territories(self) -> list[dict]:
        return self._data("GET", "/territory")


def _checked(response: httpx.Response, allow_status: tuple[int, ...] = ()) -> httpx.Response:
    if response.status_code < 300 or response.status_code in allow_status:
        return response
    kind = None
    try:
        body = response.json()
        message, kind = body.get("msg") or response.reason_phrase, body.get("error")
    except (ValueError, AttributeError):
        message = response.text[:200] or response.reason_phrase
    raise from_http_status(response.status_code, message, kind)


def _received(response: httpx.Response) -> int:
    """Bytes the gateway holds of a resumable upload (its Range header on a 308)."""
    if response.status_code != 308:
        _checked(response)
        return 0
    value = response.headers.get("Range", "")
    return int(value.rpartition("-")[2]) + 1 if value.startswith("bytes=0-") else 0


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while True:
        piece = handle.read(1024 * 1024)
        if not piece:
            return
        yield piece


class _opened:
    """(a body httpx can send, a default file name) for any Source."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._handle: IO[bytes] | None = None

    def __enter__(self) -> tuple[bytes | IO[bytes], str | None]:
        source = self.source
        if isinstance(source, bytes | bytearray | memoryview):
            return bytes(source), None
        if isinstance(source, str | os.PathLike):
            self._handle = open(source, "rb")  # noqa: SIM115 - closed in __exit__
            return self._handle, Path(source).name
        return source, Path(getattr(source, "name", "") or "").name or None

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()


__all__ = ["GatewayClient", "DeossError"]
