"""Fixtures of the plug-in suites: misbehaving plug-ins as real entry points, configs of
the session devnet that choose plug-ins, installing the example plug-ins into the venv."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from ..conftest import ROOT, Devnet
from ..harness import config_for

PLUGINS = ROOT / "contrib" / "plugins"

_ENTRY_POINTS = """\
[deossfs.processing]
raising = tests.plugins.misbehaving:RaisingStage
short = tests.plugins.misbehaving:ShortStage

[deossfs.scheduling]
duplicate = tests.plugins.misbehaving:DuplicatePolicy
stingy = tests.plugins.misbehaving:StingyPolicy
"""


@pytest.fixture(scope="session")
def misbehaving_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A distribution `misbehaving-plugins` on sys.path whose entry points are the
    classes of tests/plugins/misbehaving.py (found as any installed plug-in is)."""
    where = tmp_path_factory.mktemp("entry-points")
    info = where / "misbehaving_plugins-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: misbehaving-plugins\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(_ENTRY_POINTS)
    sys.path.insert(0, str(where))
    importlib.invalidate_caches()
    yield where
    sys.path.remove(str(where))
    importlib.invalidate_caches()


def plugin_config(devnet: Devnet, directory: Path, **sections: dict[str, Any]) -> Path:
    """A config of the devnet's account with a workspace of its own and `sections`
    merged in (e.g. processing={"stage": "zstd"})."""
    import tomllib

    path = config_for(devnet, directory)
    data = tomllib.loads(path.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(tomli_w.dumps(data))
    return path


def pip(*args: str) -> None:
    """pip of this venv (the ordinary client; the index is the machine's)."""
    result = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    importlib.invalidate_caches()


def install_plugin(name: str) -> None:
    pip("install", str(PLUGINS / name))


def uninstall_plugin(name: str) -> None:
    pip("uninstall", "-y", name)
