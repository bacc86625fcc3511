"""HTTPS reads in large pieces (deossfs/gateway/tls.py), over a real TLS connection on a
socket pair: what a receive returns, the end of the stream, a broken record."""

from __future__ import annotations

import os
import ssl

import pytest
import trio

from deossfs.gateway.tls import READ_SIZE, CoalescingSSLStream

from ..harness import self_signed

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert), str(key))
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def _connected(contexts: tuple[ssl.SSLContext, ssl.SSLContext]
                     ) -> tuple[trio.SSLStream[trio.SocketStream], trio.SSLStream[trio.SocketStream]]:
    a, b = trio.socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(a), contexts[0], server_side=True)
    client = trio.SSLStream(trio.SocketStream(b), contexts[1], server_hostname="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def _receive_all(stream: trio.SSLStream[trio.SocketStream] | CoalescingSSLStream,
                       sizes: list[int]) -> bytes:
    """Everything until the peer's close_notify, noting each receive's size."""
    received = bytearray()
    while data := await stream.receive_some(READ_SIZE):
        sizes.append(len(data))
        received += data
    return bytes(received)


async def _transfer(contexts: tuple[ssl.SSLContext, ssl.SSLContext], payload: bytes,
                    coalesce: bool) -> tuple[bytes, list[int]]:
    server, client = await _connected(contexts)
    reader: trio.SSLStream[trio.SocketStream] | CoalescingSSLStream = (
        CoalescingSSLStream(server) if coalesce else server)
    sizes: list[int] = []
    got = b""

    async def receive() -> None:
        nonlocal got
        got = await _receive_all(reader, sizes)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await client.send_all(payload)
        await client.aclose()  # close_notify
    await server.aclose()
    return got, sizes


async def test_a_receive_returns_every_record_already_read(contexts) -> None:  # noqa: ANN001
    payload = os.urandom(8 * MIB)
    plain, plain_sizes = await _transfer(contexts, payload, coalesce=False)
    got, sizes = await _transfer(contexts, payload, coalesce=True)
    assert plain == payload and got == payload
    # trio alone: one TLS record (<= 16 KiB) per receive
    assert max(plain_sizes) <= 16 * 1024 and len(plain_sizes) >= 8 * MIB // (16 * 1024)
    # coalesced: up to READ_SIZE per receive, so a few dozen receives at most, not 512
    assert max(sizes) <= READ_SIZE and max(sizes) > 16 * 1024
    assert len(sizes) <= len(plain_sizes) // 8, (len(sizes), len(plain_sizes))


async def test_small_messages_and_the_end_of_the_stream(contexts) -> None:  # noqa: ANN001
    server, client = await _connected(contexts)
    reader = CoalescingSSLStream(server)
    assert reader.coalescing
    for message in (b"GET / HTTP/1.1\r\n\r\n", b"x", os.urandom(70_000)):
        await client.send_all(message)
        got = b""
        while len(got) < len(message):
            got += await reader.receive_some(READ_SIZE)
        assert got == message
    # and the other way: a response body larger than a send piece, sent in pieces
    body = os.urandom(4 * MIB + 1)
    received = bytearray()

    async def receive_body() -> None:
        while len(received) < len(body):
            received.extend(await client.receive_some(READ_SIZE))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_body)
        await reader.send_all(body)
    assert received == body
    await client.aclose()
    assert await reader.receive_some(READ_SIZE) == b""
    await server.aclose()


async def test_a_broken_record_is_an_error_on_the_next_receive(contexts) -> None:  # noqa: ANN001
    server, client = await _connected(contexts)
    reader = CoalescingSSLStream(server)
    await client.send_all(b"whole records first")
    # then an application-data record that fails authentication, sent past the TLS layer
    await client.transport_stream.send_all(b"\x17\x03\x03\x00\x40" + os.urandom(64))
    got = await reader.receive_some(READ_SIZE)
    assert got == b"whole records first"
    with pytest.raises(trio.BrokenResourceError):
        while await reader.receive_some(READ_SIZE):
            pass
    await client.aclose()


def test_hypercorn_serves_tls_through_it() -> None:
    import hypercorn.trio.run

    from deossfs.gateway import tls

    tls.read_tls_in_large_pieces()
    # the hook is hypercorn's trio worker's connection handler: if a hypercorn release
    # moves it, this says so (HTTPS would still work, a record per receive)
    assert hypercorn.trio.run.TCPServer is tls._CoalescingTCPServer
