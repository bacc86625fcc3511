"""Fixtures of the cache tests: their own devnet (they stop every storage node and put
gateways in the chain's list), and configs of separate instances on it."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from deossfs.config import load_config, write_config
from deossfs.devnet import start_node, stop_node, wait_ready

from ..conftest import Devnet, devnet_at
from ..harness import wait_for  # noqa: F401 - the cache tests import it from here

T = TypeVar("T")


@pytest.fixture(scope="module")
def cache_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with devnet_at(tmp_path_factory.mktemp("cache-devnet")) as net:
        yield net


def instance(net: Devnet, directory: Path, **options: Any) -> Path:
    """The config of one more instance of the devnet's account: its own workspace and
    cache; `options` are SECTION__OPTION=value (e.g. serve__port=0)."""
    config = load_config(net.config, environ={})
    config.path = None
    config.workspace = directory / "workspace"
    config.cache.dir = directory / "cache"
    for key, value in options.items():
        section, _, name = key.partition("__")
        assert hasattr(getattr(config, section), name), key
        setattr(getattr(config, section), name, value)
    path = directory / "deossfs.toml"
    write_config(config, path)
    return path


def bucket_name() -> str:
    return f"cache-{secrets.token_hex(4)}"


def stop_all_nodes(net: Devnet) -> None:
    for node in net.nodes():
        stop_node(node)
    assert not any(node.alive for node in net.nodes())


def start_all_nodes(net: Devnet) -> None:
    for node in net.nodes():
        if not node.alive:
            start_node(net.config, node)
    wait_ready(net.nodes())


def disk_bytes(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # removed while we looked
                total += os.path.getsize(os.path.join(root, name))
    return total


def files_containing(directory: Path, marker: bytes) -> list[Path]:
    found = []
    for root, _, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            try:
                if marker in path.read_bytes():
                    found.append(path)
            except FileNotFoundError:
                pass
    return found
