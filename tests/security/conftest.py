"""The security suite's own devnet (12 nodes): fuzzing and plaintext scans see only what
these tests put there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..conftest import Devnet
from ..harness import scratch_devnet


@pytest.fixture(scope="package")
def secure_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with scratch_devnet(tmp_path_factory.mktemp("secure-devnet")) as net:
        net.cli("bucket", "create", "sec")
        yield net
