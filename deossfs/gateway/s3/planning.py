"""Pass 1 of a multipart upload while its parts arrive.

A put hashes every segment (pass 1: salts, fragments, the FID) before the storage order
can be declared, and only then encodes and sends (pass 2). Planned at Complete, pass 1
of a 1 GiB upload starts after its last part and the client waits for both passes.
Here the segments are planned as the parts that hold them arrive: parts 1..k recorded
(in any order) cover k x part-size bytes, and every whole segment in them is planned in
a worker thread, so at Complete only the last segment or two are left.

What was planned is used only for the bytes Complete names: each planned segment must
lie within leading parts that are the very part files it was read from (a part uploaded
again is a new file). Otherwise, or after a restart, `put` plans the file itself as
before.

Planning takes the gateway's planning slot and a 96 MiB workspace, held while the parts
keep coming and given back once they pause for PAUSE_SECONDS: an upload waiting for its
client (or one gone quiet) holds neither, so it does not keep other uploads' segments -
or a single PUT's body - from being planned as they arrive. (Giving them back after
every segment would cost more: a workspace given back releases its pages, and touching
96 MiB again takes longer than planning a segment.) Complete never waits for the slot.
At most MAX_PLANNINGS uploads are followed at once (each keeps its part files open).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ...processing.pipeline import FilePlan, SegmentPlanner, SegmentWorkspace
from .multipart import MultipartStore, Part, PartsReader, Upload

if TYPE_CHECKING:
    from ...store import ObjectStore
    from ..engine import GatewayEngine

log = logging.getLogger(__name__)

#: an upload that got no part for this long is no longer followed (Complete plans it)
IDLE_SECONDS = 120.0
#: multipart uploads followed at once; the others are planned at Complete
MAX_PLANNINGS = 8
#: how often an upload with a segment to plan looks for the planning slot while it is taken
SLOT_POLL_SECONDS = 0.1
#: an upload whose parts stop coming for this long gives the slot and its workspace back
PAUSE_SECONDS = 2.0


@dataclass(eq=False)
class _Planning:
    upload: Upload
    store: ObjectStore
    encrypt: bool
    #: parts recorded and not yet fed, by number (the latest recording of each)
    pending: dict[int, Part] = field(default_factory=dict)
    wake: trio.Event = field(default_factory=trio.Event)
    #: what Complete names: (parts, total size); set once
    final: tuple[list[Part], int] | None = None
    plan: FilePlan | None = None
    done: trio.Event = field(default_factory=trio.Event)
    #: segments planned before Complete, and how many of them Complete's parts kept
    planned_early: int = 0
    kept: int = 0


class _Held:
    """The planning slot and a workspace, held by one upload's planner while its parts keep
    coming (a workspace given back releases its pages, and touching 96 MiB again costs
    more than planning a segment on this kind of machine)."""

    def __init__(self, slots: trio.Semaphore, store: ObjectStore, planner: SegmentPlanner) -> None:
        self.slots, self.store, self.planner = slots, store, planner
        self.slot = False
        self.workspace: SegmentWorkspace | None = None

    def take(self) -> bool:
        """The slot and a workspace, if the slot is free (or held already)."""
        if not self.slot:
            try:
                self.slots.acquire_nowait()
            except trio.WouldBlock:
                return False
            self.slot = True
        self.borrow_workspace()
        return True

    def borrow_workspace(self) -> None:
        """A workspace for the planner, slot or not (Complete's rest)."""
        if self.workspace is None:
            self.workspace = self.planner.ws = self.store.workspaces.take()

    def give(self) -> None:
        if self.workspace is not None:
            self.store.workspaces.give(self.workspace)
            self.workspace = None
        if self.slot:
            self.slots.release()
            self.slot = False


class PartsPlanning:
    """The planners of the multipart uploads under way (planning one segment at a time in
    `engine.planning_slots`, shared with single PUTs planned while their bodies arrive)."""

    def __init__(self, engine: GatewayEngine, multipart: MultipartStore,
                 idle_seconds: float = IDLE_SECONDS, pause_seconds: float = PAUSE_SECONDS) -> None:
        self.engine = engine
        self.multipart = multipart
        self.idle_seconds = idle_seconds
        self.pause_seconds = pause_seconds
        self._plannings: dict[str, _Planning] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def part_recorded(self, upload: Upload, part: Part, encrypt: bool) -> None:
        """A part is whole and journaled: plan what it completes (in the background)."""
        planning = self._plannings.get(upload.id)
        if planning is None:
            store = self.engine.store_for(upload.owner)
            if self._nursery is None or store.stage_name or len(self._plannings) >= MAX_PLANNINGS:
                # a processing stage changes the bytes before they are segmented
                return
            planning = _Planning(upload, store, encrypt)
            self._plannings[upload.id] = planning
            self._nursery.start_soon(self._drive, planning)
        planning.pending[part.number] = part
        planning.wake.set()

    def drop(self, upload_id: str) -> None:
        """The upload was aborted: stop planning it."""
        planning = self._plannings.pop(upload_id, None)
        if planning is not None:
            planning.final = ([], 0)
            planning.wake.set()

    async def plan_for(self, upload: Upload, parts: list[Part], size: int, encrypt: bool) -> FilePlan | None:
        """The plan of the object Complete composes of `parts`, or None (put plans it)."""
        planning = self._plannings.pop(upload.id, None)
        if planning is None:
            return None
        planning.final = (parts, size)
        planning.wake.set()
        await planning.done.wait()
        if planning.plan is None or planning.encrypt != encrypt:
            return None
        return planning.plan

    async def _drive(self, planning: _Planning) -> None:
        upload = planning.upload
        planner, ws = planning.store.planner(upload.bucket, upload.key, planning.encrypt,
                                             salt_context=f"multipart:{upload.id}".encode())
        planning.store.workspaces.give(ws)  # taken again with the slot, when there is work
        held = _Held(self.engine.planning_slots, planning.store, planner)
        capacity = planner.codec.capacity
        fed: list[Part] = []
        reader = PartsReader([], [])
        try:
            # parts recorded before this planner began
            for part in await trio.to_thread.run_sync(self.multipart.parts, upload):
                planning.pending.setdefault(part.number, part)
            while planning.final is None:
                while (part := planning.pending.pop(len(fed) + 1, None)) is not None:
                    reader.append(self.multipart.part_file(upload, part), part.size)
                    fed.append(part)
                waiting_for_slot = False
                if planning.final is None and reader.size >= planner.planned_bytes + capacity:
                    # never block for the slot: Complete may come meanwhile, and must not
                    # wait for another upload's planning
                    if held.take():
                        while planning.final is None and reader.size >= planner.planned_bytes + capacity:
                            await trio.to_thread.run_sync(planner.add, reader, capacity)
                            planning.planned_early += 1
                        continue  # parts may have come meanwhile
                    waiting_for_slot = True
                if planning.final is not None:
                    break
                timeout = (SLOT_POLL_SECONDS if waiting_for_slot else
                           self.pause_seconds if held.slot else self.idle_seconds)
                with trio.move_on_after(timeout) as waited:
                    await planning.wake.wait()
                planning.wake = trio.Event()
                if not waited.cancelled_caught or waiting_for_slot:
                    continue
                if held.slot:  # a pause between parts: others may plan meanwhile
                    held.give()
                    continue
                log.info("multipart upload %s sent no part for %g s: its pass 1 waits for "
                         "Complete", upload.id, self.idle_seconds)
                self._plannings.pop(upload.id, None)
                return
            parts, size = planning.final
            if not parts:
                return
            matched = 0
            for planned_from, named in zip(fed, parts, strict=False):
                if planned_from.file != named.file:
                    break
                matched += planned_from.size
            keep = planning.kept = min(len(planner.segments), matched // capacity, size // capacity)
            del planner.segments[keep:]
            whole = await trio.to_thread.run_sync(self.multipart.reader, upload, parts)
            try:
                # the rest is planned at once, slot or not: the client waits for it, and a
                # single PUT's body may hold the slot for as long as it takes to arrive
                # (put would take a workspace for it anyway)
                held.borrow_workspace()
                while planner.planned_bytes < size:
                    await trio.to_thread.run_sync(planner.add, whole,
                                                  min(capacity, size - planner.planned_bytes))
            finally:
                whole.close()
            planning.plan = planner.finish(size)
            log.info("multipart upload %s: %d of %d segments planned while its parts arrived",
                      upload.id, keep, len(planning.plan.segments))
        except Exception as exc:  # put plans again, and reports it there if it is real
            log.info("planning multipart upload %s while its parts arrived failed (%s); "
                     "Complete plans it", upload.id, exc)
        finally:
            reader.close()
            held.give()
            planning.done.set()
