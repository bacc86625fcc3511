"""HTTPS connections read in large pieces, as plain HTTP ones are.

hypercorn reads a TLS connection through `trio.SSLStream`, whose every receive returns
what one `SSLObject.read` gives: one TLS record, at most 16 KiB, from ciphertext read
64 KiB at a time. A 1 GiB upload became 65,536 trips through hypercorn, h11, the ASGI
app and the body's consumer. Measured (docs/PERFORMANCE.md): boto3 `upload_file` of
1 GiB cost the gateway 12.2-12.8 CPU-s over HTTP and 19-23 over HTTPS, the Python
interpreter 45% of the latter's profile, and took 18-21 s instead of 12.

So each TLS connection's stream is wrapped: its ciphertext is read up to `READ_SIZE`
at a time, and a receive returns, besides the record trio decrypted, every whole record
already read (each `SSLObject.read` is one C call, and it never awaits: no other task
touches the stream meanwhile). A response goes to trio in pieces of `SEND_PIECE`:
trio encrypts whatever it is given into a memory buffer before sending any of it, and
a 4 MiB piece of a body grew that buffer past the gateway's memory goal. Nothing else
changes: trio still does the handshake, the encryption, close_notify and every error;
a record split across reads waits for the next receive, as before.

This reaches into trio's SSLStream for its SSLObject (`_ssl_object`, stable since
trio's first TLS release). Where it is missing, connections are served as trio reads
them, only slower (tests/unit/test_gateway_tls.py fails then, to say so).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import hypercorn.trio.run as _hypercorn_run
import trio
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)

#: ciphertext read from the socket at once, and the most plaintext a receive returns
READ_SIZE = 1024 * 1024
#: plaintext encrypted and sent at once (a response's body comes in pieces of 4 MiB)
SEND_PIECE = 256 * 1024


class _LargeReads:
    """A transport stream whose receives default to READ_SIZE (trio's SSLStream asks
    for the default); everything else is the stream's own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(READ_SIZE if max_bytes is None else max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class CoalescingSSLStream:
    """`trio.SSLStream` whose receives return every whole record already received, up to
    the size asked for, not one record each, and whose sends go in SEND_PIECE pieces.
    Everything else is the stream's own."""

    def __init__(self, stream: trio.SSLStream[Any]) -> None:
        self._stream = stream
        self._ssl_object: ssl.SSLObject | None = getattr(stream, "_ssl_object", None)
        if self._ssl_object is not None:
            stream.transport_stream = _LargeReads(stream.transport_stream)

    @property
    def coalescing(self) -> bool:
        return self._ssl_object is not None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        if not data or max_bytes is None or self._ssl_object is None:
            return data
        pieces = [data]
        have = len(data)
        while have < max_bytes:
            try:
                more = self._ssl_object.read(max_bytes - have)
            except ssl.SSLWantReadError:
                break  # the rest of a record is still on its way
            except ssl.SSLError:
                # close_notify or a broken record: the SSLObject keeps that state, so
                # trio meets it again on the next receive and answers it as it does
                break
            if not more:
                break
            pieces.append(more)
            have += len(more)
        return data if len(pieces) == 1 else b"".join(pieces)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # trio encrypts all of `data` into its memory BIO, grown as it goes, before the
        # first byte is sent: in pieces the BIO stays small and each piece is sent while
        # the next is encrypted
        view = memoryview(data)
        if len(view) <= SEND_PIECE:
            await self._stream.send_all(view)
            return
        for start in range(0, len(view), SEND_PIECE):
            await self._stream.send_all(view[start : start + SEND_PIECE])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _CoalescingTCPServer(TCPServer):
    """hypercorn's connection handler, given a coalescing stream for a TLS connection."""

    def __init__(self, app: Any, config: Any, context: Any, state: Any, stream: Any) -> None:
        if isinstance(stream, trio.SSLStream):
            stream = CoalescingSSLStream(stream)
        super().__init__(app, config, context, state, stream)


def read_tls_in_large_pieces() -> None:
    """Make hypercorn's trio worker, in this process, serve TLS connections through
    CoalescingSSLStream (a no-op for plain HTTP)."""
    if getattr(_hypercorn_run, "TCPServer", None) is TCPServer:
        _hypercorn_run.TCPServer = _CoalescingTCPServer  # type: ignore[misc]
    elif getattr(_hypercorn_run, "TCPServer", None) is not _CoalescingTCPServer:
        log.debug("hypercorn's trio worker has no TCPServer to wrap: TLS reads stay per record")
