"""Uploads through the gateway: staged on local disk, journaled, stored in the background.

A body is received into `<workspace>/gateway/staging/<id>` (0600) before anything is
declared: a client that disconnects midway leaves nothing on the chain, and the staging
file is removed. Once the body is whole, a journal row (SQLite, synchronous=FULL) records
the upload and a task of the gateway's own nursery stores it (`ObjectStore.put`), so the
upload finishes even if the client goes away, and a gateway restarted after kill -9
resumes every upload its journal holds. A put reads its source twice (pass 1 hashes, pass
2 sends: docs/architecture.md), which is why the body is staged rather than piped.

`gateway.respond` decides when the client hears back: "durable" once the put returns,
"accepted" once the storage order is declared (as DeOSS answers). Either way the state
route reports progress, and an upload that fails for good is kept, with its reason, for
RETAIN_FAILED seconds — never silently dropped.

Uploads encrypted with a request's Cipher hold that key in memory only: if the gateway
restarts before one is stored, it is marked failed ("upload it again"), since the gateway
never keeps a Cipher.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..errors import DeossError, InvalidInput, NotFound, cli_message
from ..processing.layout import TOTAL_SHARDS
from ..processing.pipeline import FilePlan, SegmentPlanner, file_reader
from ..scheduling.selector import Placement
from ..store import ObjectStore, UploadStatus
from .engine import GatewayEngine, Reservation
from .http import StagingFile
from .journal import DurableJournal

log = logging.getLogger(__name__)

#: failed uploads (and their staged bytes, for a retry) are kept this long
RETAIN_FAILED = 7 * 24 * 3600.0
#: resumable uploads not completed within this long are dropped
RETAIN_RESUMABLE = 24 * 3600.0
#: the longest wait between two background attempts of an upload
MAX_RETRY_DELAY = 600.0
FINAL_STATES = ("stored", "failed")


@dataclass
class UploadRecord:
    """One journaled upload."""

    id: str
    owner: str
    bucket: str
    key: str
    territory: str
    size: int
    encrypt: bool
    with_cipher: bool
    placement: dict[str, Any]
    respond: str
    state: str = "staged"
    fid: str | None = None
    error: str | None = None
    attempts: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def placement_hint(self) -> Placement:
        location = self.placement.get("location")
        return Placement(preferred=tuple(self.placement.get("preferred", ())),
                         location=tuple(location) if location else None,  # type: ignore[arg-type]
                         area=tuple(tuple(p) for p in self.placement.get("area", ())))  # type: ignore[misc]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
    territory TEXT NOT NULL, size INTEGER NOT NULL, encrypt INTEGER NOT NULL,
    with_cipher INTEGER NOT NULL, placement TEXT NOT NULL, respond TEXT NOT NULL,
    state TEXT NOT NULL, fid TEXT, error TEXT, attempts INTEGER NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS uploads_fid ON uploads (fid);
CREATE TABLE IF NOT EXISTS resumable (
    owner TEXT NOT NULL, name TEXT NOT NULL, total INTEGER NOT NULL, id TEXT NOT NULL,
    received INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (owner, name, total));
"""
_COLUMNS = ("id", "owner", "bucket", "key", "territory", "size", "encrypt", "with_cipher",
            "placement", "respond", "state", "fid", "error", "attempts", "created", "updated")


class UploadJournal(DurableJournal):
    """The gateway's upload journal (SQLite, WAL, synchronous=FULL: a committed row
    survives kill -9 and power loss). Blocking: called from worker threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, _SCHEMA)

    def save(self, record: UploadRecord) -> None:
        record.updated = time.time()
        values = asdict(record)
        values["placement"] = json.dumps(record.placement)
        values["encrypt"], values["with_cipher"] = int(record.encrypt), int(record.with_cipher)
        self._run(f"INSERT OR REPLACE INTO uploads ({', '.join(_COLUMNS)}) VALUES "
                  f"({', '.join('?' * len(_COLUMNS))})", tuple(values[c] for c in _COLUMNS))

    def delete(self, upload_id: str) -> None:
        self._run("DELETE FROM uploads WHERE id=?", (upload_id,))

    @staticmethod
    def _record(row: tuple) -> UploadRecord:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["placement"] = json.loads(values["placement"])
        values["encrypt"], values["with_cipher"] = bool(values["encrypt"]), bool(values["with_cipher"])
        return UploadRecord(**values)

    def unfinished(self) -> list[UploadRecord]:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM uploads "
                         "WHERE state NOT IN ('stored', 'failed') ORDER BY created")
        return [self._record(r) for r in rows]

    def by_fid(self, fid: str) -> UploadRecord | None:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM uploads WHERE fid=? "
                         "ORDER BY updated DESC LIMIT 1", (fid,))
        return self._record(rows[0]) if rows else None

    def by_id(self, upload_id: str) -> UploadRecord | None:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM uploads WHERE id=?", (upload_id,))
        return self._record(rows[0]) if rows else None

    def failed(self, owner: str, bucket: str) -> list[UploadRecord]:
        """An account's uploads to `bucket` that failed for good (kept RETAIN_FAILED)."""
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM uploads WHERE owner=? AND bucket=? "
                         "AND state='failed' ORDER BY updated DESC", (owner, bucket))
        return [self._record(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        """(uploads not yet stored, uploads that failed for good) in the journal."""
        rows = dict(self._run("SELECT state = 'failed', COUNT(*) FROM uploads "
                              "WHERE state != 'stored' GROUP BY state = 'failed'"))
        return rows.get(0, 0), rows.get(1, 0)

    def expired_failures(self, before: float) -> list[str]:
        return [r[0] for r in self._run(
            "SELECT id FROM uploads WHERE state='failed' AND updated < ?", (before,))]

    # ---- resumable uploads (DeOSS's PUT /resume) ----------------------------------

    def resumable(self, owner: str, name: str, total: int) -> tuple[str, int] | None:
        rows = self._run("SELECT id, received FROM resumable WHERE owner=? AND name=? AND total=?",
                         (owner, name, total))
        return (rows[0][0], rows[0][1]) if rows else None

    def save_resumable(self, owner: str, name: str, total: int, upload_id: str, received: int) -> None:
        now = time.time()
        self._run("INSERT INTO resumable VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, name, total)"
                  " DO UPDATE SET received=excluded.received, updated=excluded.updated",
                  (owner, name, total, upload_id, received, now, now))

    def drop_resumable(self, owner: str, name: str, total: int) -> None:
        self._run("DELETE FROM resumable WHERE owner=? AND name=? AND total=?", (owner, name, total))

    def expired_resumables(self, before: float) -> list[tuple[str, str, int, str]]:
        return [tuple(r) for r in self._run(  # type: ignore[misc]
            "SELECT owner, name, total, id FROM resumable WHERE updated < ?", (before,))]


@dataclass
class _Flight:
    """An upload being stored by this process."""

    record: UploadRecord
    status: UploadStatus
    declared: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    plan: FilePlan | None = None
    error: BaseException | None = None
    #: a request waits for the outcome (it reports a failure to its client)
    awaited: bool = False


class UploadService:
    """Stores staged uploads in the background and answers what became of them."""

    def __init__(self, engine: GatewayEngine) -> None:
        self.engine = engine
        self.staging = engine.workspace / "staging"
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.journal = UploadJournal(engine.workspace / "journal.sqlite3")
        self._flights: dict[str, _Flight] = {}
        self._by_fid: dict[str, _Flight] = {}
        #: puts made outside this service that show among `in_progress` (S3 Complete)
        self._tracked: dict[int, _Tracked] = {}
        self._nursery: trio.Nursery | None = None

    def staging_path(self, upload_id: str) -> Path:
        return self.staging / upload_id

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    async def _db(self, func: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(func, *args)

    # ---- running ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Resume the journal's unfinished uploads, then keep the staging area tidy."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._resume_journal()
            task_status.started()
            while True:
                await self._expire()
                await trio.sleep(600)

    async def _resume_journal(self) -> None:
        known = {r.id for r in await self._db(self.journal.unfinished)}
        for record in await self._db(self.journal.unfinished):
            path = self.staging_path(record.id)
            if record.with_cipher or not path.exists():
                why = ("the gateway restarted before it was stored, and it was encrypted with "
                       "a Cipher the gateway never keeps: upload it again"
                       if record.with_cipher else "its staged bytes are gone: upload it again")
                await self._fail(record, why)
                continue
            log.info("resuming the upload of %s/%s for %s (%d bytes)", record.bucket,
                     record.key, record.owner, record.size)
            reservation = Reservation(self.engine, record.owner, 0, released=True)
            store = self.engine.store_for(record.owner, record.territory)
            self._start(record, store, reservation)
        # staging files no row names: bodies of requests that never completed
        resumable = {r[3] for r in await self._db(self.journal.expired_resumables, float("inf"))}
        for path in self.staging.iterdir():
            if path.name not in known and path.name not in resumable:
                path.unlink(missing_ok=True)

    async def _expire(self) -> None:
        now = time.time()
        for upload_id in await self._db(self.journal.expired_failures, now - RETAIN_FAILED):
            self.staging_path(upload_id).unlink(missing_ok=True)
            await self._db(self.journal.delete, upload_id)
        for owner, name, total, upload_id in await self._db(self.journal.expired_resumables,
                                                             now - RETAIN_RESUMABLE):
            self.staging_path(upload_id).unlink(missing_ok=True)
            await self._db(self.journal.drop_resumable, owner, name, total)

    # ---- submitting -----------------------------------------------------------------

    async def submit(self, record: UploadRecord, store: ObjectStore,
                     reservation: Reservation, plan: FilePlan | None = None) -> FilePlan | str:
        """Journal a staged upload and store it in the background. Returns the plan once
        the file is durable (respond "durable"), or its FID once declared ("accepted");
        raises what the put raised if it fails before that point."""
        await self._db(self.journal.save, record)
        flight = self._start(record, store, reservation, plan)
        flight.awaited = True
        if record.respond == "accepted":
            await _first_of(flight.declared, flight.done)
            if not flight.declared.is_set() and flight.error is not None:
                raise flight.error
            assert flight.status.fid is not None
            return flight.status.fid
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.plan is not None
        return flight.plan

    def _start(self, record: UploadRecord, store: ObjectStore, reservation: Reservation,
               plan: FilePlan | None = None) -> _Flight:
        assert self._nursery is not None, "UploadService.run is not running"
        flight = _Flight(record, UploadStatus(), plan=plan)
        self._flights[record.id] = flight
        self._nursery.start_soon(self._store, flight, store, reservation)
        return flight

    async def _store(self, flight: _Flight, store: ObjectStore, reservation: Reservation) -> None:
        record = flight.record
        try:
            while True:
                record.attempts += 1
                try:
                    async with self.engine.store_slots:
                        flight.plan = await self._put(flight, store)
                    break
                except DeossError as exc:
                    settings = self.engine.config.gateway
                    delay = min(settings.retry_seconds * 4 ** (record.attempts - 1), MAX_RETRY_DELAY)
                    retry = (_retryable(exc) and record.respond == "accepted"
                             and record.attempts < settings.upload_attempts)
                    if not retry:
                        raise
                    log.warning("upload %s/%s for %s failed (%s); retrying in %.0f s",
                                record.bucket, record.key, record.owner, cli_message(exc), delay)
                    record.error = cli_message(exc)
                    await self._db(self.journal.save, record)
                    await trio.sleep(delay)
            record.state, record.fid, record.error = "stored", flight.plan.fid, None
            # stored: the chain answers for it from now on
            await self._db(self.journal.delete, record.id)
            self.staging_path(record.id).unlink(missing_ok=True)
        except Exception as exc:  # reported to the waiting request, or kept in the journal
            flight.error = exc
            if flight.awaited and record.respond == "durable":
                # the client hears of it in the answer: nothing is left to report later
                await self._db(self.journal.delete, record.id)
                self.staging_path(record.id).unlink(missing_ok=True)
            else:
                await self._fail(record, cli_message(exc))
        finally:
            reservation.release()
            flight.done.set()
            self._flights.pop(record.id, None)
            if record.fid and self._by_fid.get(record.fid) is flight:
                del self._by_fid[record.fid]

    async def _put(self, flight: _Flight, store: ObjectStore) -> FilePlan:
        record = flight.record
        fd = os.open(self.staging_path(record.id), os.O_RDONLY)
        try:
            await self._ensure_default_bucket(store, record.bucket)

            def declared(plan: FilePlan) -> None:
                record.fid, record.state = plan.fid, "declared"
                self._by_fid[plan.fid] = flight
                flight.declared.set()

            # files are known by FID here (DeOSS) or by the catalog (S3): a name already
            # on the chain is not looked up and replaced, as `deossfs put` does
            plan = await store.put(file_reader(fd), record.size, record.bucket, record.key,
                                   encrypt=record.encrypt, placement=record.placement_hint(),
                                   status=flight.status, declared=declared, plan=flight.plan,
                                   replace_existing=False)
            if not flight.declared.is_set():
                declared(plan)  # the FID was stored already: nothing new to declare
            return plan
        finally:
            os.close(fd)
            if record.fid:
                await self._db(self.journal.save, record)

    async def _ensure_default_bucket(self, store: ObjectStore, bucket: str) -> None:
        """DeOSS clients name no bucket: the default one is made on an account's first upload."""
        if bucket != self.engine.config.gateway.default_bucket:
            return
        info = await trio.to_thread.run_sync(self.engine.chain.bucket, store.owner, bucket)
        if info is None:
            try:
                await trio.to_thread.run_sync(self.engine.chain.create_bucket, store.owner, bucket)
            except DeossError as exc:  # made meanwhile by another upload: fine
                if getattr(exc, "name", "") != "SameBucketName":
                    raise

    async def _fail(self, record: UploadRecord, why: str) -> None:
        log.error("upload of %s/%s for %s failed: %s", record.bucket, record.key, record.owner, why)
        record.state, record.error = "failed", why
        await self._db(self.journal.save, record)

    # ---- what became of an upload ---------------------------------------------------

    async def state(self, fid: str) -> dict[str, Any]:
        """The state of the file `fid`: stored, or where its upload is (this gateway's
        journal, else the chain's storage order); NotFound if neither knows it."""
        info = await trio.to_thread.run_sync(self.engine.chain.file, fid)
        flight = self._by_fid.get(fid)
        if info is not None:
            return {"fid": fid, "state": "stored", "size": info.file_size,
                    "segments": len(info.segments), "error": None,
                    "fragments": [{"column": j, "node": info.segments[0].fragments[j].miner,
                                   "sent_segments": len(info.segments), "reported": True}
                                  for j in range(TOTAL_SHARDS)] if info.segments else []}
        deal = await trio.to_thread.run_sync(self.engine.chain.deal, fid)
        reported = deal.reported() if deal else {}
        if flight is not None:
            status, record = flight.status, flight.record
            # a failed attempt of an upload that will be tried again is not the end of it
            state = "retrying" if status.state == "failed" else status.state
            return {"fid": fid, "state": state, "size": record.size,
                    "bucket": record.bucket, "name": record.key, "segments": status.segments,
                    "error": status.error or record.error,
                    "fragments": [{"column": j, "node": reported.get(j, status.nodes.get(j)),
                                   "sent_segments": status.sent[j], "reported": j in reported}
                                  for j in range(TOTAL_SHARDS)]}
        record = await self._db(self.journal.by_fid, fid)
        if record is not None:
            return {"fid": fid, "state": record.state, "size": record.size,
                    "bucket": record.bucket, "name": record.key, "error": record.error,
                    "segments": len(deal.segments) if deal else 0,
                    "fragments": [{"column": j, "node": reported.get(j), "sent_segments": None,
                                   "reported": j in reported} for j in range(TOTAL_SHARDS)]}
        if deal is not None:
            return {"fid": fid, "state": "uploading", "size": deal.file_size,
                    "segments": len(deal.segments), "error": None,
                    "fragments": [{"column": j, "node": reported.get(j), "sent_segments": None,
                                   "reported": j in reported} for j in range(TOTAL_SHARDS)]}
        raise NotFound(f"file {fid} is neither stored nor being uploaded",
                       hint="check the FID; an upload that failed before its declaration has none")

    # ---- what one account has under way (the console) ------------------------------

    @contextlib.contextmanager
    def tracking(self, owner: str, bucket: str, path: str, size: int) -> Iterator[UploadStatus]:
        """The status of a put made outside this service (S3's CompleteMultipartUpload
        stores its parts in place), listed by `in_progress` while the block runs."""
        tracked = _Tracked(owner, bucket, path, size, UploadStatus())
        self._tracked[id(tracked)] = tracked
        try:
            yield tracked.status
        finally:
            del self._tracked[id(tracked)]

    def in_progress(self, owner: str, bucket: str) -> list[dict[str, Any]]:
        """The account's puts to `bucket` being stored now: path, size, state and, per
        fragment column, the segments its node has taken."""
        under_way = [_Tracked(f.record.owner, f.record.bucket, f.record.key, f.record.size,
                              f.status, f.record.created) for f in self._flights.values()]
        under_way += self._tracked.values()
        return [{"path": t.path, "size": t.size, "state": t.status.state, "fid": t.status.fid,
                 "segments": t.status.segments, "sent": list(t.status.sent),
                 "error": t.status.error, "started": t.started}
                for t in sorted(under_way, key=lambda t: t.started)
                if t.owner == owner and t.bucket == bucket]

    async def failed(self, owner: str, bucket: str) -> list[UploadRecord]:
        return await self._db(self.journal.failed, owner, bucket)

    async def retry(self, owner: str, upload_id: str) -> None:
        """Store a failed upload of `owner` again from its staged bytes, in the background
        (as an accepted upload: retried for the network's reasons, else failed again)."""
        record = await self._db(self.journal.by_id, upload_id)
        if record is None or record.owner != owner or record.state != "failed":
            raise NotFound("no failed upload with this id", hint="it was retried or has expired")
        if record.with_cipher:
            raise InvalidInput("this upload was encrypted with a Cipher, which the gateway never "
                               "keeps: upload it again")
        if not self.staging_path(record.id).exists():
            raise NotFound("the staged bytes of this upload are gone: upload it again")
        reservation = self.engine.reserve(owner, record.size)
        record.state, record.error, record.attempts, record.respond = "staged", None, 0, "accepted"
        try:
            await self._db(self.journal.save, record)
        except BaseException:
            reservation.release()
            raise
        self._start(record, self.engine.store_for(owner, record.territory), reservation)

    def close(self) -> None:
        self.journal.close()


@dataclass
class _Tracked:
    owner: str
    bucket: str
    path: str
    size: int
    status: UploadStatus
    started: float = field(default_factory=time.time)


class ReceivePlanner:
    """Pass 1 of a put while its body arrives (hashing overlaps the transfer): every
    segment is planned in a worker thread as soon as its bytes are staged, the last one
    when the body is complete. Holds a 96 MiB workspace, so only `slots` bodies are
    planned this way at once; the others are planned by `put` afterwards."""

    def __init__(self, store: ObjectStore, bucket: str, key: str, encrypt: bool,
                 staged: StagingFile, slots: trio.Semaphore) -> None:
        self.store, self.bucket, self.key, self.encrypt = store, bucket, key, encrypt
        self.staged = staged
        self.slots = slots
        self._wake = trio.Event()
        self._done = False
        self._failed: BaseException | None = None
        self._planner: SegmentPlanner | None = None

    def _flushed(self, _total: int) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.store.stage_name:
            # a processing stage changes the bytes before they are segmented: pass 1 runs
            # over its output, once the body is whole (docs/extending.md)
            return
        try:
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            return
        planner, ws = self.store.planner(self.bucket, self.key, self.encrypt)
        fd = -1
        try:
            fd = os.open(self.staged.path, os.O_RDONLY)
            self.staged.on_flush = self._flushed
            capacity = planner.codec.capacity
            reader = file_reader(fd)
            while True:
                while self.staged.flushed >= planner.planned_bytes + capacity:
                    await trio.to_thread.run_sync(planner.add, reader, capacity)
                if self._done:
                    break
                await self._wake.wait()
                self._wake = trio.Event()
            size = self.staged.size
            while planner.planned_bytes < size:
                await trio.to_thread.run_sync(planner.add, reader, min(capacity, size - planner.planned_bytes))
            self._planner = planner
        except Exception as exc:  # put plans again, and reports it there if it is real
            self._failed = exc
        finally:
            self.staged.on_flush = None
            if fd >= 0:
                os.close(fd)
            self.store.workspaces.give(ws)
            self.slots.release()

    def body_complete(self) -> None:
        self._done = True
        self._wake.set()

    def plan(self) -> FilePlan | None:
        """The plan, once `run` has returned after body_complete (None if it did not plan)."""
        if self._planner is None or self._failed is not None or not self.staged.size:
            return None
        return self._planner.finish(self.staged.size)


def _retryable(exc: DeossError) -> bool:
    """Worth another background attempt: the network's fault, not the request's."""
    from ..errors import ChainUnavailable, DataUnavailable, NodeUnavailable, NotEnoughNodes

    return exc.temporary or isinstance(exc, NotEnoughNodes | DataUnavailable | NodeUnavailable
                                       | ChainUnavailable)


async def _first_of(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in events:
            async def wait(e: trio.Event = event) -> None:
                await e.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
