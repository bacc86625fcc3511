"""The background uploader: makes journaled files durable, then tidies the chain.

It works through three journals in the mount's database:
- `uploads`: closed files not yet durable (staged content → store.put);
- `declares`: renamed files whose FID must be declared under the new name;
- `chain_deletes`: replaced or unlinked versions to delete from the chain.
A temporary error is retried with exponential backoff; a permanent one marks the
file `failed`, keeps its data staged, and is retried every minute (the cause, e.g.
a full territory, may be fixed meanwhile). After a crash the journal is simply
read again: nothing closed is lost.
"""

from __future__ import annotations

import logging
import os
import time

import trio

from ..errors import DeossError, NotEnoughNodes, NotFound, cli_message
from ..processing.encryption import PLAINTEXT_CAPACITY
from ..processing.layout import charged_space, segment_count
from ..processing.pipeline import file_reader
from .operations import Operations

log = logging.getLogger(__name__)

#: files uploaded at once (each holds up to two 96 MiB workspaces)
CONCURRENT_UPLOADS = 2
PERMANENT_RETRY_SECONDS = 60.0
#: a background step that failed locally (e.g. the disk is full) runs again after this
BACKGROUND_RETRY_SECONDS = 5.0
#: failed attempts after which unmount stops waiting for an upload
DRAIN_GIVE_UP_ATTEMPTS = 3
#: how often staged copies of durable files are trimmed to cache.staged_keep
TRIM_STAGING_SECONDS = 5.0


class UploadFailed(DeossError):
    pass


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside trio's exception groups (the store's nurseries wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Uploader:
    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.db = ops.db
        self.store = ops.store
        self._wake = trio.Event()
        self._changed = trio.Event()  # set whenever an upload finishes or fails
        self._active: set[int] = set()
        #: inodes whose staging file an upload is reading (copy-on-write for writers)
        self._uploading: set[int] = set()
        self._limiter = trio.Semaphore(CONCURRENT_UPLOADS)
        self.completed = 0
        self._trimmed_at = -TRIM_STAGING_SECONDS
        ops.hooks.wake_uploader = self.wake
        ops.hooks.wait_durable = self.wait_durable
        ops.hooks.pending_charge = self.pending_charge
        ops.hooks.uploading = lambda ino: ino in self._uploading
        ops.hooks.detached = self._uploading.discard

    def wake(self) -> None:
        self._wake.set()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def pending_charge(self) -> int:
        """Territory space the journaled-but-not-durable files will take."""
        total = 0
        for row in self.db.pending_uploads():
            if row[6]:
                total += charged_space(segment_count(row[6], PLAINTEXT_CAPACITY))
        return total

    def pending(self) -> int:
        return len(self.db.pending_uploads())

    async def wait_durable(self, ino: int, generation: int) -> None:
        """Until `ino`'s content of `generation` (or newer) is durable; raise if it failed."""
        self.db.upload_now(ino)
        self.wake()
        while True:
            row = self.db.get(ino)
            if row is None or row.durable_generation >= generation:
                return
            pending = [u for u in self.db.pending_uploads() if u[0] == ino]
            if not pending:
                return
            if row.state == "failed" and pending[0][4]:
                raise UploadFailed(pending[0][4])
            changed = self._changed
            with trio.move_on_after(1.0):
                await changed.wait()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._wake = trio.Event()
                try:
                    await self._declares()
                    await self._chain_deletes()
                    self._trim_staging()
                    next_try = self._start_due(nursery)
                except Exception as exc:  # the journal cannot change (a full disk): later
                    log.warning("uploader: %s; trying again in %.0f s",
                                cli_message(exc), BACKGROUND_RETRY_SECONDS)
                    next_try = time.time() + BACKGROUND_RETRY_SECONDS
                delay = min(max(next_try - time.time(), 0.05), 5.0) if next_try else 5.0
                with trio.move_on_after(delay):
                    await self._wake.wait()

    def _trim_staging(self) -> None:
        # the query reads every staged row: at most every few seconds, not per upload
        if time.monotonic() - self._trimmed_at < TRIM_STAGING_SECONDS:
            return
        self._trimmed_at = time.monotonic()
        self.ops.trim_staging(self.store.config.cache.staged_keep)

    def _start_due(self, nursery: trio.Nursery) -> float | None:
        soonest: float | None = None
        now = time.time()
        for ino, generation, _attempts, next_try, *_ in self.db.pending_uploads():
            if ino in self._active:
                continue
            if next_try > now:
                soonest = next_try if soonest is None else min(soonest, next_try)
                continue
            self._active.add(ino)
            nursery.start_soon(self._upload, ino, generation)
        return soonest

    async def _upload(self, ino: int, generation: int) -> None:
        try:
            async with self._limiter:
                await self._upload_one(ino, generation)
        except Exception as exc:
            # a failure outside the put (the journal on a full disk): the file stays
            # journaled and is tried again; the mount must not end over it
            log.warning("upload of inode %d: %s; it stays journaled", ino, cli_message(exc))
        finally:
            self._active.discard(ino)
            self._signal_change()
            self.wake()

    async def _upload_one(self, ino: int, generation: int) -> None:
        row = self.db.get(ino)
        if row is None or row.parent == 0:  # gone, or unlinked while still open: no name left
            self.db.conn.execute("DELETE FROM uploads WHERE ino=?", (ino,))
            return
        bucket, key = self.ops.key_of(ino)
        size = row.size
        if size == 0:
            # CESS refuses empty files: an empty file lives in the bucket's metadata only
            self._finish(ino, generation, None, key, bucket)
            return
        self.db.update(ino, state="uploading")
        path = self.ops.staging_path(ino)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self.db.conn.execute("DELETE FROM uploads WHERE ino=?", (ino,))
            return
        self._uploading.add(ino)
        # the content as it is now: versions committed since this upload was scheduled
        # (while another upload of the file was in flight, or both slots were busy) are in
        # it, so the fsyncs waiting for them are answered by this one upload
        journaled = self.db.conn.execute("SELECT generation FROM uploads WHERE ino=?", (ino,)).fetchone()
        if journaled is not None:
            generation = max(generation, journaled[0])
        # the staging file as it is now (after a crash it may differ from the journal)
        size = os.fstat(fd).st_size
        if size == 0:
            self._uploading.discard(ino)
            os.close(fd)
            self._finish(ino, generation, None, key, bucket)
            return
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            self.db.upload_progress(ino, done)

        try:
            plan = await self.store.put(file_reader(fd), size, bucket, key,
                                        encrypt=bool(row.encrypted), progress=progress,
                                        replace_existing=False,
                                        salt_context=self._salt_context(ino, generation))
        except Exception as raised:  # whatever it is, the file stays journaled
            exc = _unwrap(raised)
            try:
                if not isinstance(exc, DeossError | OSError):
                    log.error("upload of %s/%s failed unexpectedly", bucket, key, exc_info=raised)
                # OSError: the staging file changed under us (e.g. truncated by a writer)
                current = self.db.get(ino)
                if current is None or current.generation != generation:
                    # a newer version was closed meanwhile and is journaled: upload that one now
                    log.info("upload of %s/%s superseded by a newer version (%s)", bucket, key, exc)
                    return
                attempts = next((u[2] for u in self.db.pending_uploads() if u[0] == ino), 0)
                # too few nodes now is the network's state, not this file's fault: back off
                if not isinstance(exc, DeossError) or isinstance(exc, NotEnoughNodes) or exc.temporary:
                    retry = min(2.0 ** attempts, 60.0)
                    state = "staged"
                else:
                    retry = PERMANENT_RETRY_SECONDS
                    state = "failed"
                log.warning("upload of %s/%s failed (%s); retrying in %.0fs", bucket, key, exc, retry)
                self.db.upload_failed(ino, str(exc), retry)
                self.db.update(ino, state=state, error=str(exc))
                return
            finally:
                # a local of a frame in its own traceback: a cycle only a full GC frees,
                # keeping the failed put's frames (and buffers) alive until then
                del exc
        finally:
            os.close(fd)
            self._uploading.discard(ino)
        self._finish(ino, generation, plan.fid, key, bucket)
        current = self.db.get(ino)
        if current is not None and current.generation == generation and current.size != size:
            # after a crash the staging file, not the journal, tells what was written
            self.db.update(ino, size=size)
        log.info("%s/%s is durable: %s", bucket, key, plan.fid)

    def _salt_context(self, ino: int, generation: int) -> bytes | None:
        """The same for every attempt at one version (a retry or a resume after a crash
        keeps its FID), never the same for two versions: an upload that started late
        reads the next version's bytes under the old number, and sharing a FID with
        that next version would have the superseded one delete it from the chain."""
        context = self.db.salt_context(ino)
        return None if context is None else context + generation.to_bytes(8, "big")

    def _finish(self, ino: int, generation: int, fid: str | None, key: str, bucket: str) -> None:
        row = self.db.get(ino)
        if row is None or row.parent == 0:
            # unlinked while uploading: the new version has no name left
            if fid:
                self.db.queue_chain_delete(fid)
            self.db.upload_done(ino, generation)
            return
        old = row.fid
        current = row.generation == generation
        values: dict[str, object] = {"durable_generation": max(row.durable_generation, generation)}
        if current:
            values.update(fid=fid, state="stored", error=None)
            if old and old != fid and all(i == ino for i in self.db.files_with_fid(old)):
                self.db.queue_chain_delete(old)
            if old and old != fid:
                self.ops.reader.forget(old)
        elif fid:
            # a newer version is already journaled; this one is superseded
            self.db.queue_chain_delete(fid)
        self.db.update(ino, **values)
        self.db.upload_done(ino, generation)
        if current and self.ops.key_of(ino) != (bucket, key) and fid:
            self.db.conn.execute("INSERT OR IGNORE INTO declares (ino) VALUES (?)", (ino,))
        self.completed += 1
        self.ops.changed(ino)

    async def _declares(self) -> None:
        for (ino,) in self.db.conn.execute("SELECT ino FROM declares").fetchall():
            row = self.db.get(ino)
            if row is None or not row.fid or row.parent == 0:
                self.db.conn.execute("DELETE FROM declares WHERE ino=?", (ino,))
                continue
            bucket, key = self.ops.key_of(ino)
            try:
                await self.store.declare_name(row.fid, bucket, key)
            except DeossError as exc:
                log.warning("declaring %s under %s/%s failed: %s", row.fid[:16], bucket, key, exc)
                if exc.temporary:
                    continue
            self.db.conn.execute("DELETE FROM declares WHERE ino=?", (ino,))

    async def _chain_deletes(self) -> None:
        for fid in self.db.chain_deletes():
            if self.db.files_with_fid(fid):
                self.db.chain_delete_done(fid)  # referenced again (e.g. identical content)
                continue
            try:
                await self.store.delete_fid(fid)
            except NotFound:
                pass
            except DeossError as exc:
                log.warning("deleting old version %s failed: %s", fid[:16], exc)
                if exc.temporary:
                    continue
            self.db.chain_delete_done(fid)

    async def drain(self, report_every: float = 5.0) -> None:
        """Wait until the journal is empty, logging progress.

        Uploads that keep failing (3 attempts, or a permanent error) do not hold the
        exit: they stay journaled and resume at the next mount, and the log says so.
        """
        last = 0.0
        while True:
            pending = self.db.pending_uploads()
            if not pending and not self._active:
                return
            stuck = [u for u in pending if u[2] >= DRAIN_GIVE_UP_ATTEMPTS and u[0] not in self._active]
            if len(stuck) == len(pending) and not self._active:
                for upload in stuck:
                    log.warning("leaving %s journaled: %s (it resumes at the next mount)", upload[7], upload[4])
                return
            if time.monotonic() - last > report_every:
                log.warning("waiting for %d pending uploads before exiting", len(pending))
                last = time.monotonic()
            self.wake()
            changed = self._changed
            with trio.move_on_after(1.0):
                await changed.wait()
