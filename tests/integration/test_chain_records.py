"""The store's reuse of a file's chain record (ObjectStore.file_info's max_age), on a real
devnet: what a gateway's GETs of one object in ranges ask the chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from deossfs.chain.factory import open_chain
from deossfs.config import load_config
from deossfs.errors import NotFound
from deossfs.keys import load_key_file
from deossfs.processing.pipeline import bytes_reader
from deossfs.store import ObjectStore

from ..conftest import Devnet, deossfs
from ..harness import config_for


class CountedReads:
    """The real chain client, counting its reads of file records."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain
        self.file_reads = 0

    def file(self, fid: str) -> Any:
        self.file_reads += 1
        return self.chain.file(fid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.chain, name)


async def test_a_recent_record_serves_until_it_is_older_than_asked_or_the_file_is_deleted(
        devnet: Devnet, tmp_path: Path) -> None:
    config_path = config_for(devnet, tmp_path)
    deossfs("bucket", "create", "records", config=config_path)
    config = load_config(config_path)
    account = load_key_file(config.require_key_file())
    chain = open_chain(config, account)
    try:
        async with ObjectStore(config, account, chain) as store:
            data = b"a file read in ranges" * 1000
            plan = await store.put(bytes_reader(data), len(data), "records", "ranges.txt")
            counted = CountedReads(store.chain)
            store.chain = counted  # type: ignore[assignment]

            first = await store.file_info(plan.fid, max_age=5.0)
            assert (await store.file_info(plan.fid, max_age=5.0)) is first
            assert counted.file_reads == 1
            await store.file_info(plan.fid)  # no max_age: always the chain's
            assert counted.file_reads == 2
            await trio.sleep(0.05)
            await store.file_info(plan.fid, max_age=0.01)  # older than asked
            assert counted.file_reads == 3

            await store.delete_fid(plan.fid)
            with pytest.raises(NotFound):
                await store.file_info(plan.fid, max_age=5.0)
            assert counted.file_reads == 4
    finally:
        chain.close()
