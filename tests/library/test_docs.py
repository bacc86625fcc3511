"""The documentation's examples run, and the documentation stands alone.

docs/library.md is run as a doctest against the session devnet and a gateway of it;
README.md and docs/*.md point at nothing outside the repository, and every file they
name inside it exists."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

from ..conftest import ROOT, Devnet
from ..gateway.conftest import GatewayProcess
from ..harness import account, config_for

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_library_guide_runs(devnet: Devnet, tmp_path: Path) -> None:
    gateway = GatewayProcess(config_for(devnet, tmp_path / "gateway"), tmp_path / "gateway").start()
    try:
        result = doctest.testfile(
            str(ROOT / "docs" / "library.md"), module_relative=False, report=True,
            globs={"DEVNET": str(devnet.dir), "GATEWAY": gateway.url,
                   "KEYPAIR": account(devnet).keypair},
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    finally:
        gateway.stop()
    assert result.attempted >= 40
    assert result.failed == 0, f"{result.failed} examples of docs/library.md failed (see above)"


def test_the_docs_point_at_nothing_outside_the_repository() -> None:
    for doc in DOCS:
        text = doc.read_text()
        assert "shared/" not in text, f"{doc.name} points into ../shared"
        assert not re.search(r"\]\(\.\./", text), f"{doc.name} links outside the repository"
        assert "/work/" not in text, f"{doc.name} names a path of this machine"


def test_the_files_the_docs_name_exist() -> None:
    named = re.compile(r"(?<![\w/.])((?:docs|contrib|deossfs|tests|benchmarks)/[\w./-]+\.(?:md|py|toml|sh|service))")
    for doc in DOCS:
        for path in named.findall(doc.read_text()):
            assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"


def test_the_code_points_at_no_document_outside_the_repository() -> None:
    for source in (ROOT / "deossfs").rglob("*.py"):
        text = source.read_text()
        assert "shared/docs" not in text and "PERFORMANCE-LIMITS" not in text, source
        for name in re.findall(r"docs/([\w-]+\.md)", text):
            assert (ROOT / "docs" / name).exists(), f"{source} names docs/{name}"
