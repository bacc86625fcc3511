"""CompleteMultipartUpload's answer, which goes out before the object is stored.

Storing the parts takes as long as any put; S3 sends the 200 status at once and spaces
while it works, so clients wait without timing out, then the result or an Error
document in that 200 body, which S3 clients look for.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio
from starlette.types import Receive, Scope, Send

from ...errors import cli_message
from . import xml
from .context import S3Error, code_and_status

#: seconds between the spaces a long CompleteMultipartUpload sends to keep its client waiting
KEEPALIVE_SECONDS = 10.0


class CompletionResponse:
    """CompleteMultipartUpload's answer: 200 at once, a space every KEEPALIVE_SECONDS while
    the object is stored, then the result - or S3's Error document, which clients look for
    in a 200 answer to a Complete."""

    def __init__(self, work: Any, request_id: str) -> None:
        self.work = work
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/xml"),
                                (b"x-amz-request-id", self.request_id.encode())]})
        await send({"type": "http.response.body", "body": b'<?xml version="1.0" encoding="UTF-8"?>\n',
                    "more_body": True})
        outcome: list[bytes] = []

        async def run() -> None:
            try:
                outcome.append(await self.work)
            except Exception as exc:  # the error goes in the body: the status is sent
                code, _ = code_and_status(exc)
                message = str(exc) if isinstance(exc, S3Error) else cli_message(exc)
                outcome.append(xml.document("Error", [("Code", code), ("Message", message),
                                                      ("RequestId", self.request_id)],
                                            namespace=False).split(b"\n", 1)[1])

        # the store runs to its end even if the client goes (a retried Complete finds it)
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def store() -> None:
                with trio.CancelScope(shield=True):
                    await run()
                done.set()

            nursery.start_soon(store)
            while not done.is_set():
                with trio.move_on_after(KEEPALIVE_SECONDS):
                    await done.wait()
                if not done.is_set():
                    with contextlib.suppress(Exception):
                        await send({"type": "http.response.body", "body": b" ", "more_body": True})
        await send({"type": "http.response.body", "body": outcome[0]})
