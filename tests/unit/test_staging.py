"""The gateway's staging file: request bodies gathered in one reused batch buffer."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
import trio

from deossfs.errors import InvalidInput
from deossfs.gateway.http import WRITE_BATCH, StagingFile


@pytest.mark.parametrize("asynchronous", [False, True], ids=["write", "write_async"])
@pytest.mark.parametrize("piece", [1, 4096, 65536, WRITE_BATCH - 1, WRITE_BATCH, 3 * WRITE_BATCH + 7])
def test_pieces_of_any_size_land_in_order_and_flushes_report_what_is_in_the_file(
        tmp_path: Path, piece: int, asynchronous: bool) -> None:
    data = random.Random(piece).randbytes(5 * WRITE_BATCH + 123)
    staged = StagingFile(tmp_path / "body")
    reported: list[int] = []

    def on_flush(total: int) -> None:
        reported.append(total)
        # what a flush reports is in the file already (the receive planner reads it)
        assert os.path.getsize(staged.path) == total

    staged.on_flush = on_flush
    view = memoryview(data)

    async def write_all() -> None:
        for start in range(0, len(data), piece):
            # a memoryview the caller reuses right after: the file must not depend on it
            chunk = bytearray(view[start:start + piece])
            if asynchronous:
                await staged.write_async(memoryview(chunk))
            else:
                staged.write(memoryview(chunk))
            chunk[:] = b"\0" * len(chunk)

    trio.run(write_all)
    staged.close()
    assert Path(staged.path).read_bytes() == data
    assert staged.size == staged.flushed == len(data)
    assert reported == sorted(reported) and reported[-1] == len(data)
    assert all(total % WRITE_BATCH == 0 for total in reported[:-1])
    assert stat.S_IMODE(os.stat(staged.path).st_mode) == 0o600


def test_a_body_past_its_limit_is_stopped_and_discard_removes_the_file(tmp_path: Path) -> None:
    staged = StagingFile(tmp_path / "body", limit=10)
    staged.write(b"0123456789")
    with pytest.raises(InvalidInput):
        staged.write(b"x")
    staged.discard()
    assert not (tmp_path / "body").exists()


def test_an_empty_body_makes_an_empty_file(tmp_path: Path) -> None:
    staged = StagingFile(tmp_path / "body")
    staged.close()
    assert (tmp_path / "body").read_bytes() == b"" and staged.flushed == 0
