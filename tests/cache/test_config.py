"""The one TOML config: every option documented, overrides and their precedence, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from deossfs.config import Config, load_config, option_names, parse_size
from deossfs.errors import ConfigError
from deossfs.keys import account_from_secret

from ..conftest import ROOT, deossfs

EXAMPLE = ROOT / "contrib" / "config.example.toml"
DOCS = ROOT / "docs" / "configuration.md"
ALICE = account_from_secret("//Alice").address


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deossfs.toml"
    path.write_text(text)
    return path


def flatten(data: dict) -> set[str]:
    names = set()
    for key, value in data.items():
        if isinstance(value, dict):
            names.update(f"{key}.{name}" for name in value)
        else:
            names.add(key)
    return names


def commented_options(text: str) -> set[str]:
    """Options the example shows commented out (`# name = value`): those whose mere
    presence changes behaviour, as a TLS certificate's path does."""
    names, section = set(), ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line.startswith("# ") and " = " in line and line[2:].split(" = ")[0].isidentifier():
            names.add(f"{section}.{line[2:].split(' = ')[0]}")
    return names


def test_example_file_loads_and_holds_every_option() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.cache.size == 4 * 1024**3  # written as "4 GiB"
    assert config.cache.dir == EXAMPLE.parent / "cache"  # relative to the file
    text = EXAMPLE.read_text()
    options = set(option_names())
    assert flatten(tomllib.loads(text)) | (commented_options(text) & options) == options


def test_docs_describe_every_option() -> None:
    text = DOCS.read_text()
    for name in option_names():
        section, _, option = name.rpartition(".")
        assert f"`{option}`" in text, f"docs/configuration.md does not describe {name}"
        if section:
            assert f"[{section}]" in text, section


def test_environment_and_command_line_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[cache]\nsize = "1 GiB"\nenabled = true\n[peers]\nendpoints = ["http://a:1"]\n')
    env = {"DEOSSFS_CACHE_SIZE": "2GiB", "DEOSSFS_PEERS_ENDPOINTS": "http://b:2, http://c:3",
           "DEOSSFS_ACCESS_MODE": "private", "DEOSSFS_KEY_FILE": "/keys/k.json",
           "DEOSSFS_STORAGE_NODE_PENALTY_SECONDS": "7.5",
           # not options: left alone
           "DEOSSFS_CONFIG": str(path), "DEOSSFS_REQUIRE_CESS": "1"}
    assert load_config(path, environ={}).cache.size == 1024**3
    config = load_config(path, environ=env)
    assert config.cache.size == 2 * 1024**3
    assert config.peers.endpoints == ["http://b:2", "http://c:3"]
    assert config.access.mode == "private"
    assert config.key_file == Path("/keys/k.json")
    assert config.storage.node_penalty_seconds == 7.5
    config = load_config(path, environ=env, overrides=[
        "cache.size=3 GiB", "cache.enabled=false", f'access.accounts=["{ALICE}"]',
        "serve.port=0", "storage.encryption=no"])
    assert config.cache.size == 3 * 1024**3  # the command line beats the environment
    assert config.cache.enabled is False
    assert config.access.accounts == [ALICE]
    assert config.serve.port == 0
    assert config.storage.encryption is False


def test_sizes() -> None:
    assert parse_size("4 GiB") == 4 * 1024**3
    assert parse_size("500MiB") == 500 * 1024**2
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size("123") == 123
    assert parse_size("lots") is None
    assert parse_size("5 parsecs") is None


@pytest.mark.parametrize(("text", "env", "overrides", "words"), [
    ("[cache]\nsise = 1\n", {}, [], ["cache.sise", "cache.size"]),
    ("[cahce]\nsize = 1\n", {}, [], ["cahce", "cache"]),
    ("workspac = 'x'\n", {}, [], ["workspac", "workspace"]),
    ("", {"DEOSSFS_CACHE_SISE": "1"}, [], ["cache.sise", "DEOSSFS_CACHE_SISE"]),
    ("", {}, ["cache.sise=1"], ["cache.sise", "-o cache.sise=1"]),
    ("", {}, ["nonsense"], ["nonsense", "SECTION.OPTION=VALUE"]),
    ("[cache]\nenabled = \"yes\"\n", {}, [], ["cache.enabled", "true or false"]),
    ("[cache]\nsize = \"huge\"\n", {}, [], ["cache.size", "size"]),
    ("", {"DEOSSFS_CACHE_ENABLED": "maybe"}, [], ["cache.enabled", "DEOSSFS_CACHE_ENABLED"]),
    ("[access]\nmode = \"open\"\n", {}, [], ["access.mode", "public", "private"]),
    ("[access]\naccounts = [\"not-an-account\"]\n", {}, [], ["access.accounts", "not-an-account"]),
    ("[storage]\nblocked_nodes = [\"node7\"]\n", {}, [], ["storage.blocked_nodes", "node7"]),
    ("[serve]\nport = 70000\n", {}, [], ["serve.port"]),
    ("[peers]\ntimeout = 0\n", {}, [], ["peers.timeout"]),
    ("cache = 3\n", {}, [], ["[cache]", "table"]),
])
def test_a_wrong_option_is_named(tmp_path: Path, text: str, env: dict, overrides: list, words: list) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=env, overrides=overrides)
    message = f"{caught.value} {caught.value.hint or ''}"
    for word in words:
        assert word in message, message


def test_the_cache_dir_may_not_overlap_the_staging_dir(tmp_path: Path) -> None:
    config = Config(workspace=tmp_path / "ws")
    assert config.cache_dir(ALICE) == tmp_path / "ws" / "cache"
    assert config.staging_dir(ALICE) == tmp_path / "ws" / "staging"
    for bad in (tmp_path / "ws" / "staging", tmp_path / "ws" / "staging" / "c", tmp_path / "ws", tmp_path):
        config.cache.dir = bad
        with pytest.raises(ConfigError, match="cache.dir"):
            config.cache_dir(ALICE)
    config.cache.dir = tmp_path / "elsewhere"
    assert config.cache_dir(ALICE) == tmp_path / "elsewhere"


def test_cli_names_a_wrong_override(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    result = deossfs("-o", "cache.sise=1", "status", config=path, check=False, timeout=60)
    assert result.returncode != 0
    assert "cache.sise" in result.stderr and "cache.size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    env_result = deossfs("status", config=path, check=False, timeout=60)
    assert "cache.sise" not in env_result.stderr
