"""Running the gateway: hypercorn on trio, the upload service, a clean stop on SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
import time
from functools import partial
from pathlib import Path

import hypercorn.trio.tcp_server as _hypercorn_tcp
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from .. import metrics
from ..catalog.catalog import Catalogs
from ..chain.interface import ChainClient
from ..config import Config, parse_listen
from ..errors import ConfigError
from ..keys import Account
from ..store import ObjectStore
from . import memory
from .app import build_app
from .auth import RequestVerifier
from .console.routes import Console
from .credentials import KeyStore
from .engine import GatewayEngine
from .s3.api import S3Api
from .s3.multipart import MultipartStore
from .tls import read_tls_in_large_pieces
from .uploads import UploadService

log = logging.getLogger(__name__)


def _hypercorn_config(config: Config, listen: str) -> HypercornConfig:
    host, port = parse_listen(listen, "gateway.listen")
    hyper = HypercornConfig()
    hyper.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hyper.accesslog = None  # the gateway logs its own line per request (http.AccessLog)
    hyper.errorlog = logging.getLogger("deossfs.gateway.http")
    hyper.include_server_header = False
    # hypercorn's read timeout would also cut a long download (the client sends nothing
    # while it receives); its keep-alive timeout covers a connection that never completes
    # its request headers, and the routes time out a stalled body themselves
    hyper.read_timeout = None
    hyper.keep_alive_timeout = config.gateway.header_timeout
    hyper.h11_max_incomplete_size = 64 * 1024
    settings = config.gateway
    if settings.tls_cert is not None and settings.tls_key is not None:
        check_tls_files(settings.tls_cert, settings.tls_key)
        hyper.certfile, hyper.keyfile = str(settings.tls_cert), str(settings.tls_key)
        # HTTP/1.1 over TLS as in the clear: the body timeouts, the large reads and the
        # keep-alive of a long CompleteMultipartUpload are written for h11
        hyper.alpn_protocols = ["http/1.1"]
    return hyper


def check_tls_files(cert: Path, key: Path) -> None:
    """ConfigError naming what is wrong with gateway.tls_cert / tls_key, before serving."""
    import ssl

    for where, path in (("gateway.tls_cert", cert), ("gateway.tls_key", key)):
        if not path.is_file():
            raise ConfigError(f"config option {where}: {path} is not a file",
                              hint="give a PEM certificate (chain) and its private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"gateway.tls_cert {cert} and gateway.tls_key {key} cannot be used: "
                          f"{exc.strerror or exc}",
                          hint="both are PEM; the key must be the certificate's, unencrypted") from None


#: decoded segments the gateway keeps for the ranged GETs that follow (33 MiB each),
#: and segments it fetches at once (each in its buffer, decrypted in place): ~160 MB
READ_MEMORY_SEGMENTS = 2
READ_FETCHES = 3
async def serve_gateway(config: Config, account: Account, chain: ChainClient,
                        listen: str | None = None, *,
                        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; reports the URL it listens at through task_status."""
    # hypercorn reads 64 KiB at a time; uploads are GiBs, and larger reads cut the
    # per-request Python work several-fold (the gateway process runs only this server)
    _hypercorn_tcp.MAX_RECV = 1024 * 1024
    read_tls_in_large_pieces()  # and HTTPS ones likewise (tls.py: a record each, otherwise)
    settings = config.gateway
    hyper = _hypercorn_config(config, listen or settings.listen)
    if settings.accept_unfresh_messages:
        log.warning("gateway.accept_unfresh_messages is on: signed requests can be replayed "
                    "forever, as with DeOSS. Turn it off once clients send fresh Messages.")
    store = ObjectStore(config, account, chain)
    # downloads of all accounts share decoded segments: S3 clients fetch one object as
    # many ranged GETs at once, four of them per segment (reader.py says why)
    store.share_reads(memory_segments=READ_MEMORY_SEGMENTS, fetch_slots=READ_FETCHES)
    engine = GatewayEngine(config, account, chain, store)
    engine.workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    verifier = await trio.to_thread.run_sync(
        partial(RequestVerifier, engine.workspace / "seen-messages.sqlite3",
                settings.message_window, settings.accept_unfresh_messages))
    uploads = await trio.to_thread.run_sync(UploadService, engine)
    metrics.upload_gauges(lambda: uploads.journal.counts()[0], lambda: uploads.journal.counts()[1])
    keys = KeyStore.for_account(credentials_path(config, account), account)
    catalogs = Catalogs(engine.workspace / "catalog", engine.store_for)
    multipart = await trio.to_thread.run_sync(MultipartStore, engine.workspace / "multipart")
    s3 = S3Api(engine, uploads, keys, catalogs, multipart)
    console = Console(engine, uploads, keys, catalogs, s3) if settings.console else None
    app = build_app(engine, uploads, verifier, s3, console.app() if console else None)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(uploads.run)
            await nursery.start(catalogs.run)
            await nursery.start(s3.planning.run)
            nursery.start_soon(_expire_multipart, multipart, settings.multipart_expiry_days)
            binds: list[str] = await nursery.start(partial(serve, app, hyper, mode="asgi"))
            url = binds[0] if binds else f"http://{hyper.bind[0]}"
            log.info("gateway of %s serving at %s", account.address, url)
            if console is not None:
                log.info("web console at %s/console/ (sign in with a key from "
                         "`deossfs gateway key create`)", url)
            task_status.started(url)
    finally:
        with trio.CancelScope(shield=True):
            # what the catalogs hold unsaved is published before the stop
            with trio.move_on_after(20):
                await catalogs.aclose()
            await store.aclose()
        multipart.close()
        if console is not None:
            console.close()
        uploads.close()
        verifier.close()


def credentials_path(config: Config, account: Account) -> Path:
    """The gateway's S3 access keys (0600; `deossfs gateway key`)."""
    return config.workspace_dir(account.address) / "gateway" / "s3-credentials.json"


async def _expire_multipart(multipart: MultipartStore, days: float) -> None:
    """Drop multipart uploads left incomplete for `days` (and their parts), hourly."""
    while True:
        for upload in await trio.to_thread.run_sync(multipart.expired, time.time() - days * 86400):
            log.info("dropping the incomplete multipart upload %s of %s/%s (older than %g days)",
                     upload.id, upload.bucket, upload.key, days)
            await trio.to_thread.run_sync(multipart.remove, upload)
        await trio.sleep(3600)


def run_gateway(config: Config, account: Account, chain: ChainClient, listen: str | None = None,
                on_ready: object = None) -> None:
    """Blocking `serve_gateway` for the CLI: until SIGINT or SIGTERM. Uploads under way are
    resumed from the journal at the next start. Serves the metrics at metrics.listen."""

    memory.limit_malloc_arenas()  # before the metrics thread and trio's worker threads start
    if config.metrics.listen:
        metrics.serve(config.metrics.listen)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_gateway, config, account, chain, listen))
            if callable(on_ready):
                on_ready(url)
            if threading.current_thread() is not threading.main_thread():
                return
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("SIGTERM: stopping the gateway")
                    nursery.cancel_scope.cancel()
                    return

    trio.run(main)
