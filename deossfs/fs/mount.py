"""Running a mount: pyfuse3 + trio, the uploader and the metadata saver beside it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pyfuse3
import trio

from .. import metrics
from ..config import Config
from ..errors import ConfigError, InvalidInput
from ..keys import Account
from ..repair import verify_forever
from ..store import ObjectStore
from .db import Database
from .metadata import BucketSync
from .operations import Operations
from .uploader import Uploader

log = logging.getLogger(__name__)

DB_NAME = "mount.sqlite"


def workspace_for(config: Config, account: Account) -> Path:
    return config.workspace_dir(account.address)


@dataclass
class MountOptions:
    mountpoint: Path
    wait_on_unmount: bool = True
    allow_other: bool = False
    debug_fuse: bool = False


class Mount:
    def __init__(self, config: Config, account: Account, store: ObjectStore, options: MountOptions) -> None:
        self.options = options
        workspace = workspace_for(config, account)
        self.db = Database(workspace / DB_NAME)
        # files go up as they are; a file stored through a processing stage is refused
        # with ENOTSUP, not shown as its envelope (docs/extending.md says why)
        self.ops = Operations(store.without_processing(), self.db, workspace, os.getuid(), os.getgid())
        metrics.instrument_fuse(self.ops, _FUSE_REQUESTS)
        self.uploader = Uploader(self.ops)
        self.sync = BucketSync(self.ops)
        self.store = store
        self.config = config
        self.account = account
        self.closed = False

    def fuse_options(self) -> set[str]:
        options = set(pyfuse3.default_options)
        # nodev: device nodes arrive in metadata objects from any machine with the key;
        # nosuid likewise for set-user-ID bits (both are kept, not honoured)
        options |= {"fsname=deossfs", "subtype=deossfs", "nodev", "nosuid"}
        if self.options.allow_other:
            options.add("allow_other")
        if self.options.debug_fuse:
            options.add("debug")
        return options

    async def _signals(self, cancel: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if self.closed:
                    # already unmounted and draining uploads: terminate() on a closed
                    # session crashes libfuse; the drain ends on its own
                    log.warning("signal %d: already unmounted, finishing uploads", signum)
                    continue
                log.warning("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return

    async def _tune_read_ahead(self) -> None:
        # the kernel sets the mount's read-ahead when it handles FUSE's INIT reply,
        # which happens once the loop runs: adjust it after that
        await trio.sleep(0.5)
        # run_mount resolved the path before mounting: resolving it here would stat the
        # mount point from the thread that serves it (a deadlock once attrs expire)
        await trio.to_thread.run_sync(raise_read_ahead, self.options.mountpoint)

    async def _serve_cache(self, nursery: trio.Nursery) -> None:
        """With serve.enabled, serve this mount's segment cache to peers (p2p/peers.py)."""
        if not self.config.serve.enabled:
            return
        if not self.store.cache.enabled:
            log.warning("serve.enabled is set but the cache is off: nothing to serve to peers")
            return
        from ..p2p.peers import serve_peers

        endpoint = await nursery.start(partial(
            serve_peers, self.store.cache, self.account, self.store.chain, self.config.serve,
            self.config.access, workspace_for(self.config, self.account) / "peer-replay.sqlite3",
            counters=self.store.counters))
        if self.store.peers is not None:
            self.store.peers.own_endpoints.add(endpoint)

    async def serve(self) -> None:
        pending = self.uploader.pending()
        if pending:
            log.warning("resuming %d journaled uploads", pending)
        async with trio.open_nursery() as nursery:
            self.ops.reader.nursery = nursery
            await nursery.start(self.uploader.run)
            await nursery.start(self.sync.run)
            nursery.start_soon(self._signals, nursery.cancel_scope)
            nursery.start_soon(self._tune_read_ahead)
            # [storage] verify_interval: check (and repair) every fragment now and then, and
            # delete orphans (not a version this mount refers to)
            nursery.start_soon(partial(verify_forever, self.store, self.config.storage.verify_interval,
                                       grace=self.config.mount.orphan_grace,
                                       keep=lambda fid: bool(self.db.files_with_fid(fid))))
            await self._serve_cache(nursery)
            await self.sync.refresh_buckets(force=True)
            await pyfuse3.main()
            # unmount at once: the kernel must not wait on us while uploads drain
            self.closed = True
            with contextlib.suppress(Exception):  # unmounted from outside already
                pyfuse3.close(unmount=True)
            log.info("unmounted")
            if self.options.wait_on_unmount:
                await self.uploader.drain()
                await self.sync.save_all()
            else:
                left = self.uploader.pending()
                if left:
                    log.warning("%d uploads left in the journal; they resume at the next mount", left)
            nursery.cancel_scope.cancel()
        await self.store.aclose()


#: the pyfuse3 requests counted in the metrics (metrics.instrument_fuse)
_FUSE_REQUESTS = ("lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir",
                  "unlink", "rmdir", "symlink", "rename", "link", "open", "read", "write",
                  "flush", "release", "fsync", "opendir", "readdir", "releasedir", "fsyncdir",
                  "statfs", "create", "setxattr", "getxattr", "listxattr", "removexattr",
                  "access")


def journal_counts(db_path: Path) -> tuple[int, int]:
    """(closed files not yet durable, those whose last upload attempt failed), read from
    the mount's journal through a read-only connection of its own (as `deossfs status`
    does): the metrics listener's thread never touches the mount's connection."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
    try:
        pending, failed = conn.execute(
            "SELECT COUNT(*), COUNT(error) FROM uploads").fetchone()
    finally:
        conn.close()
    return int(pending), int(failed)


#: kernel read-ahead for the mount, KiB (the default 128 KiB halves sequential reads)
READ_AHEAD_KB = 4096


def raise_read_ahead(mountpoint: Path) -> None:
    """Let the kernel read ahead in large steps (needs root; best effort).

    The device number comes from /proc/self/mountinfo: stat() of the mount point
    would wait for this very process, which does not serve requests yet.
    """
    device = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == str(mountpoint):
                device = fields[2]
    if device is None:
        return
    path = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    try:
        path.write_text(str(READ_AHEAD_KB))
    except OSError as exc:
        log.info("kernel read-ahead left at its default (%s)", exc)


def run_mount(config: Config, account: Account, store: ObjectStore, options: MountOptions) -> None:
    mountpoint = options.mountpoint.resolve()
    if not mountpoint.is_dir():
        raise InvalidInput(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise InvalidInput(f"{mountpoint} is already a mount point", hint=f"unmount it first: fusermount3 -u {mountpoint}")
    if not Path("/dev/fuse").exists():
        raise ConfigError("/dev/fuse is missing: this system cannot mount FUSE file systems")
    options = replace(options, mountpoint=mountpoint)
    mount = Mount(config, account, store, options)
    db_path = workspace_for(config, account) / DB_NAME
    metrics.upload_gauges(lambda: journal_counts(db_path)[0], lambda: journal_counts(db_path)[1])
    if config.metrics.listen:
        metrics.serve(config.metrics.listen)
    pyfuse3.init(mount.ops, str(mountpoint), mount.fuse_options())
    try:
        trio.run(mount.serve)
    finally:
        if not mount.closed:
            with contextlib.suppress(Exception):
                pyfuse3.close(unmount=True)
        mount.db.close()
