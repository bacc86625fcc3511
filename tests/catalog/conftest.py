"""Fixtures of the catalog's tests: a Catalog over a real ObjectStore on the session devnet."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from deossfs.catalog.catalog import Catalog
from deossfs.chain.factory import open_chain
from deossfs.config import load_config
from deossfs.errors import NotFound
from deossfs.keys import load_key_file
from deossfs.store import ObjectStore


def bucket_name(prefix: str = "jcat") -> str:
    """A fresh bucket name; with a `j`, which the chain refuses (stored as `Q...`)."""
    return f"{prefix}-{secrets.token_hex(4)}"


@asynccontextmanager
async def open_catalog(config_path: Path, index: Path) -> AsyncIterator[Catalog]:
    """A catalog of the config's account, as a gateway opens one for its own account."""
    config = load_config(config_path)
    account = load_key_file(config.require_key_file())
    chain = open_chain(config, account)
    store = ObjectStore(config, account, chain)
    catalog = Catalog(store, index)
    try:
        yield catalog
    finally:
        await catalog.aclose()
        await store.aclose()
        chain.close()


async def read_all(store: ObjectStore, fid: str) -> bytes:
    """An object's bytes, read back from the storage nodes."""
    info = await store.file_info(fid)
    out = bytearray()

    async def sink(view: memoryview) -> None:
        out.extend(view)

    await store.read_range(info, 0, info.file_size, sink)
    return bytes(out)


async def on_chain(store: ObjectStore, fid: str) -> bool:
    try:
        await store.file_info(fid)
    except NotFound:
        return False
    return True
