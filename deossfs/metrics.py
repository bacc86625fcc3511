"""Prometheus text metrics (prometheus_client), served by `deossfs mount`, `gateway` and
`node` at `metrics.listen` (docs/operations.md lists every metric).

The metrics are module-level objects in the process's default registry, recorded always
(an increment costs about a microsecond) and served only when a listener is started.
prometheus_client is thread-safe: the trio thread, worker threads and the node's
connection threads record into the same objects, and the listener (a daemon thread of
prometheus_client) reads them.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

#: latency buckets (seconds): fragment transfers on a LAN to slow chain calls
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

BYTES_IN = Counter("deossfs_bytes_in", "Bytes this process received, by interface "
                   "(fuse: written by programs; http: request bodies; nodes/peers: fetched)",
                   ["via"])
BYTES_OUT = Counter("deossfs_bytes_out", "Bytes this process sent, by interface "
                    "(fuse: read by programs; http: response bodies; nodes: fragments sent)",
                    ["via"])
REQUESTS = Counter("deossfs_requests", "Requests served, by interface (http, fuse), "
                   "method (HTTP method or FUSE operation) and status (HTTP status or errno name)",
                   ["interface", "method", "status"])
UPLOADS = Counter("deossfs_uploads", "Puts that ended, by result (stored, failed)", ["result"])
UPLOADS_PENDING = Gauge("deossfs_uploads_pending", "Uploads accepted and not yet durable "
                        "(the mount's or the gateway's journal)")
UPLOADS_FAILED = Gauge("deossfs_uploads_failed", "Uploads in the journal whose last attempt "
                       "failed (retried later, or kept with their reason)")
SEGMENT_READS = Counter("deossfs_segment_reads", "Segments read, by the tier that had them "
                        "(cache: local disk, peer: another instance's cache, node: storage nodes)",
                        ["tier"])
NODE_SECONDS = Histogram("deossfs_node_request_seconds", "Fragment requests to storage nodes, "
                         "by node endpoint and operation (put, get)", ["node", "op"],
                         buckets=_LATENCY)
NODE_ERRORS = Counter("deossfs_node_errors", "Failed fragment requests to storage nodes, by "
                      "node endpoint, operation and error kind", ["node", "op", "kind"])
CHAIN_SECONDS = Histogram("deossfs_chain_call_seconds", "Chain calls and storage reads, by call",
                          ["call"], buckets=_LATENCY)
CHAIN_ERRORS = Counter("deossfs_chain_errors", "Chain calls that raised, by call and error kind",
                       ["call", "kind"])


_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    """An HTTP method as a label value: anything unusual is OTHER (a client must not be
    able to grow the label set at will)."""
    return method if method in _METHODS else "OTHER"


def serve(listen: str) -> tuple[str, int]:
    """Serve the metrics at "HOST:PORT" (port 0 picks one) from a daemon thread; the
    address served. A port taken is a ConfigError naming metrics.listen."""
    from .config import parse_listen
    from .errors import ConfigError

    host, port = parse_listen(listen, "metrics.listen")
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics at {listen}: {exc.strerror or exc}",
                          hint="give this process a free port: -o metrics.listen=HOST:PORT") from None
    bound = server.server_address
    log.info("metrics at http://%s:%d/metrics", host, bound[1])
    return host, int(bound[1])


def upload_gauges(pending: Callable[[], float], failed: Callable[[], float]) -> None:
    """Have the upload gauges read `pending()` and `failed()` at each scrape (in the
    listener's thread: they must be thread-safe)."""
    UPLOADS_PENDING.set_function(_safe(pending))
    UPLOADS_FAILED.set_function(_safe(failed))


def _safe(read: Callable[[], float]) -> Callable[[], float]:
    """A gauge's reading that cannot fail a scrape (a journal closed at shutdown)."""

    def reading() -> float:
        try:
            return float(read())
        except Exception as exc:
            log.debug("a gauge could not be read: %s", exc)
            return float("nan")

    return reading


def instrument_fuse(ops: Any, operations: Iterable[str]) -> None:
    """Count every FUSE request `ops` serves (REQUESTS, by operation and errno name) and
    the bytes programs read and write (BYTES_OUT / BYTES_IN, "fuse"), by wrapping its
    request methods on the instance (pyfuse3 looks them up there)."""
    for name in operations:
        method = getattr(ops, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            continue
        setattr(ops, name, _counted(name, method))


def _counted(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    ok = REQUESTS.labels("fuse", name, "ok")
    moved = (BYTES_OUT if name == "read" else BYTES_IN).labels("fuse")

    @functools.wraps(method)
    async def counted(*args: Any) -> Any:
        try:
            result = await method(*args)
        except BaseException as exc:
            code = getattr(exc, "errno", None)
            status = errno.errorcode.get(code, "error") if isinstance(code, int) else "error"
            REQUESTS.labels("fuse", name, status).inc()
            raise
        ok.inc()
        if name == "read":
            moved.inc(len(result))
        elif name == "write":
            moved.inc(result)
        return result

    return counted


def error_kind(exc: BaseException) -> str:
    from .errors import error_kind as kind

    name = kind(exc)
    return name if name != "DeossError" else type(exc).__name__


class MeteredChain:
    """A ChainClient that times every call (CHAIN_SECONDS) and counts errors; everything
    else passes through to the client it wraps."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            except Exception as exc:
                CHAIN_ERRORS.labels(name, error_kind(exc)).inc()
                raise
            finally:
                CHAIN_SECONDS.labels(name).observe(time.perf_counter() - started)

        return timed

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    @property
    def wrapped(self) -> Any:
        return self._inner
