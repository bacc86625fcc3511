"""Pass 1 of a multipart upload while its parts arrive (gateway/s3/planning.py).

Real parts: the multipart journal (SQLite) and part files on disk, a real ObjectStore's
codec (encryption, RS, hashes). What is checked is the plan Complete gets: it must be the
plan `put` itself makes of the bytes Complete names (same FID, same segment and fragment
hashes), however the parts arrived - out of order, one uploaded again after its segment
was planned, fewer named than sent - and the planning slot must be held only while the
parts keep coming.
The uploads through real S3 clients, stored on real nodes, are in test_s3_api.py and
test_s3_clients.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from deossfs.config import Config
from deossfs.gateway.s3.multipart import MultipartStore, Part, Upload
from deossfs.gateway.s3.planning import PartsPlanning
from deossfs.keys import account_from_secret
from deossfs.processing.pipeline import FilePlan
from deossfs.store import ObjectStore

MIB = 1024 * 1024
PART = 5 * MIB  # S3's smallest part: 7 parts fill a segment (~32 MiB)


class Harness:
    def __init__(self, tmp_path: Path, encrypt: bool = True) -> None:
        account = account_from_secret("//Alice")
        config = Config()
        config.workspace = tmp_path / "workspace"
        config.cache.enabled = False
        self.store = ObjectStore(config, account, chain=None)  # type: ignore[arg-type]
        self.multipart = MultipartStore(tmp_path / "multipart")
        self.slots = trio.Semaphore(1)
        engine = SimpleNamespace(store_for=lambda owner: self.store, planning_slots=self.slots)
        self.planning = PartsPlanning(engine, self.multipart, idle_seconds=2.0,  # type: ignore[arg-type]
                                      pause_seconds=0.3)
        self.encrypt = encrypt
        self.upload: Upload = self.multipart.create(account.address, "bucket", "big.bin", {})

    async def send(self, number: int, data: bytes) -> Part:
        incoming = self.multipart.part_path(self.upload)
        incoming.parent.mkdir(parents=True, exist_ok=True)
        incoming.write_bytes(data)
        part = await trio.to_thread.run_sync(self.multipart.record_part, self.upload, number,
                                             incoming, len(data), "00" * 16)
        self.planning.part_recorded(self.upload, part, self.encrypt)
        return part

    def planning_state(self):  # noqa: ANN201 - the upload's _Planning
        return self.planning._plannings.get(self.upload.id)

    async def wait_planned(self, segments: int) -> None:
        with trio.fail_after(60):
            while (state := self.planning_state()) is None or state.planned_early < segments:
                await trio.sleep(0.02)

    def own_plan(self, parts: list[Part]) -> FilePlan:
        """What put plans itself from the parts Complete names."""
        codec = self.store.encrypted_codec if self.encrypt else self.store.plain_codec
        reader = self.multipart.reader(self.upload, parts)
        ws = self.store.workspaces.take()
        try:
            return codec.plan(reader, reader.size, ws, salt_context=f"multipart:{self.upload.id}".encode())
        finally:
            self.store.workspaces.give(ws)
            reader.close()

    async def complete(self, parts: list[Part]) -> FilePlan | None:
        return await self.planning.plan_for(self.upload, parts, sum(p.size for p in parts), self.encrypt)


def chunks(count: int) -> list[bytes]:
    return [os.urandom(PART) for _ in range(count)]


@pytest.mark.parametrize("encrypt", [True, False])
async def test_segments_are_planned_as_parts_arrive_in_any_order(tmp_path: Path, encrypt: bool) -> None:
    harness = Harness(tmp_path, encrypt)
    data = chunks(15)  # 75 MiB: two whole segments and a last one
    parts: dict[int, Part] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.planning.run)
        # out of order, as ten client threads send them
        for number in [2, 1, 4, 3, 6, 5, 7, 9, 8, 10, 12, 11, 13, 14, 15]:
            parts[number] = await harness.send(number, data[number - 1])
        await harness.wait_planned(2)
        state = harness.planning_state()
        named = [parts[n] for n in range(1, 16)]
        plan = await harness.complete(named)
        assert harness.slots.value == 1, "the planning slot was given back"
        nursery.cancel_scope.cancel()
    assert plan is not None
    assert plan == harness.own_plan(named)
    assert len(plan.segments) == 3 and state.kept == 2


async def test_a_part_uploaded_again_after_its_segment_was_planned(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    data = chunks(8)
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.planning.run)
        parts = [await harness.send(n, data[n - 1]) for n in range(1, 9)]
        await harness.wait_planned(1)
        state = harness.planning_state()
        parts[2] = await harness.send(3, os.urandom(PART))  # other bytes, after planning
        plan = await harness.complete(parts)
        nursery.cancel_scope.cancel()
    assert state.kept == 0, "the segment planned from the replaced part was dropped"
    assert plan == harness.own_plan(parts)


async def test_complete_naming_fewer_parts_than_were_sent(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    data = chunks(16)
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.planning.run)
        parts = [await harness.send(n, data[n - 1]) for n in range(1, 17)]
        await harness.wait_planned(2)
        state = harness.planning_state()
        named = parts[:9]  # 45 MiB: one whole segment, and a last one planned at Complete
        plan = await harness.complete(named)
        nursery.cancel_scope.cancel()
    assert state.planned_early == 2 and state.kept == 1
    assert plan == harness.own_plan(named)


async def test_an_upload_holds_the_slot_only_while_its_parts_keep_coming(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    first = harness.upload
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.planning.run)
        await harness.send(1, os.urandom(PART))
        # waiting for more parts, with no whole segment: nothing held
        await trio.sleep(0.2)
        assert harness.slots.value == 1
        parts = [await harness.send(n, os.urandom(PART)) for n in range(1, 8)]  # a segment
        await harness.wait_planned(1)
        # planned, and no part for pause_seconds: the slot is back for others
        with trio.fail_after(10):
            while harness.slots.value == 0:
                await trio.sleep(0.02)
        # a second upload is planned meanwhile, while the first one is still open
        harness.upload = harness.multipart.create(first.owner, "bucket", "second.bin", {})
        second = [await harness.send(n, os.urandom(PART)) for n in range(1, 8)]
        await harness.wait_planned(1)
        plan = await harness.complete(second)  # while its planner holds the slot
        assert plan == harness.own_plan(second)
        assert harness.slots.value == 1
        # the slot taken by someone else (a single PUT's body arriving): the first upload
        # plans nothing early meanwhile, and its Complete does not wait for the slot
        harness.upload = first
        await harness.slots.acquire()
        parts += [await harness.send(n, os.urandom(PART)) for n in range(8, 15)]
        await trio.sleep(0.5)
        assert harness.planning_state().planned_early == 1
        with trio.fail_after(30):
            plan = await harness.complete(parts)
        harness.slots.release()
        assert plan == harness.own_plan(parts)
        nursery.cancel_scope.cancel()


async def test_abort_and_idle_uploads_are_no_longer_followed(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.planning.run)
        await harness.send(1, os.urandom(PART))
        assert harness.planning_state() is not None
        harness.planning.drop(harness.upload.id)
        assert harness.planning_state() is None
        # a second upload that stops sending parts: followed no more after idle_seconds
        harness.upload = harness.multipart.create(harness.upload.owner, "bucket", "idle.bin", {})
        await harness.send(1, os.urandom(PART))
        with trio.fail_after(10):
            while harness.planning_state() is not None:
                await trio.sleep(0.05)
        # its Complete plans everything itself
        assert await harness.complete([Part(1, PART, "00" * 16, "x", 0.0)]) is None
        assert harness.slots.value == 1
        nursery.cancel_scope.cancel()
