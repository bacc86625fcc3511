"""A storage node gone bad: a tiny HTTP server on a real node's port and account.

The test stops a real node process and starts this in its place, so the chain still
names the node (account, endpoint) as the holder of its fragments, and clients reach
it the way they reach any node. `mode` says how it misbehaves on `GET /fragment`
and `PUT /fragment`; `GET /status` is answered normally so the node still looks
alive to the probes that pick nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from deossfs.processing.layout import FRAGMENT_SIZE

#: how a bad node answers a fragment request
MODES = (
    "garbage",  # 200 and 8 MiB of random bytes
    "short",  # 200 and 1 MiB (a truncated fragment)
    "long",  # 200 and 8 MiB + 4 KiB
    "unasked-206",  # 206 Partial Content nobody asked for
    "error-500",  # a server error
    "reset",  # closes the connection without an answer
    "hang",  # accepts, reads the request, never answers
    "drip",  # answers 200, then sends one byte every half second
)


class BadNode:
    def __init__(self, port: int, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.requests: list[tuple[str, str]] = []
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _status(self) -> None:
                body = json.dumps({"code": 200, "account": "bad", "fragments": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/status":
                    self._status()
                    return
                outer.requests.append(("GET", self.path))
                outer.misbehave(self)

            def do_PUT(self) -> None:  # noqa: N802
                outer.requests.append(("PUT", self.path))
                length = int(self.headers.get("Content-Length") or 0)
                while length > 0 and not outer._stop.is_set():
                    chunk = self.rfile.read(min(length, 1 << 20))
                    if not chunk:
                        return
                    length -= len(chunk)
                outer.misbehave(self)

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def misbehave(self, handler: BaseHTTPRequestHandler) -> None:
        mode, out = self.mode, handler.wfile

        def answer(status: int, body: bytes, length: int | None = None) -> None:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Length", str(len(body) if length is None else length))
            handler.end_headers()
            with contextlib.suppress(OSError):
                out.write(body)

        if mode == "garbage":
            answer(200, os.urandom(FRAGMENT_SIZE))
        elif mode == "short":
            answer(200, os.urandom(1 << 20))
        elif mode == "long":
            answer(200, os.urandom(FRAGMENT_SIZE + 4096))
        elif mode == "unasked-206":
            answer(206, os.urandom(1 << 20))
        elif mode == "error-500":
            body = b'{"code":500,"msg":"disk on fire"}'
            handler.send_response(500)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            out.write(body)
        elif mode == "reset":
            with contextlib.suppress(OSError):
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              b"\x01\x00\x00\x00\x00\x00\x00\x00")
            handler.close_connection = True
            handler.connection.close()
        elif mode == "hang":
            self._stop.wait()
            handler.close_connection = True
        elif mode == "drip":
            handler.send_response(200)
            handler.send_header("Content-Length", str(FRAGMENT_SIZE))
            handler.end_headers()
            while not self._stop.wait(0.5):
                try:
                    out.write(b"\0")
                    out.flush()
                except OSError:
                    return
            handler.close_connection = True

    def __enter__(self) -> BadNode:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
