"""The one TOML config file, overridable by CLI flags and environment.

Found through `--config`, else `$DEOSSFS_CONFIG`, else `~/.config/deossfs/config.toml`.
Relative paths in the file are relative to the file's directory. An unknown or
ill-typed option is a `ConfigError` naming it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from .errors import ConfigError

ENV_VAR = "DEOSSFS_CONFIG"
DEFAULT_PATH = Path("~/.config/deossfs/config.toml")


@dataclass
class ChainConfig:
    #: "embedded" (a local SQLite ledger) or "cess" (a CESS node over RPC)
    backend: str = "embedded"
    #: the embedded ledger's SQLite file
    ledger: Path | None = None
    #: CESS RPC endpoints, tried in order
    endpoints: list[str] = field(default_factory=list)


@dataclass
class StorageConfig:
    territory: str = "default"
    encryption: bool = True
    #: storage-node accounts tried first; with 12 or more only these are used
    preferred_nodes: list[str] = field(default_factory=list)
    blocked_nodes: list[str] = field(default_factory=list)
    #: seconds a node that failed is avoided
    node_penalty_seconds: float = 60.0
    #: concurrent fragment transfers
    transfer_concurrency: int = 12
    request_timeout: float = 30.0


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: Path | None = None
    size: int = 4 * 1024**3


@dataclass
class Config:
    path: Path | None = None
    key_file: Path | None = None
    workspace: Path | None = None
    chain: ChainConfig = field(default_factory=ChainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def require_key_file(self) -> Path:
        if self.key_file is None:
            raise ConfigError("no key_file in the config", hint="set key_file = \"...\"")
        return self.key_file

    def to_toml(self) -> str:
        return tomli_w.dumps(_to_plain(self, skip={"path"}))


_SECTIONS = {"chain": ChainConfig, "storage": StorageConfig, "cache": CacheConfig}


def _to_plain(obj: Any, skip: set[str] = frozenset()) -> dict:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        if hasattr(value, "__dataclass_fields__"):
            value = _to_plain(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


def _coerce(section: str, name: str, expected: Any, value: Any, base: Path) -> Any:
    where = f"{section}.{name}" if section else name
    text = str(expected)
    if "Path" in text:
        if not isinstance(value, str):
            raise ConfigError(f"config option {where} must be a path string")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
    if "list" in text:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config option {where} must be a list of strings")
        return value
    if expected in (bool, "bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"config option {where} must be true or false")
        return value
    if expected in (int, "int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config option {where} must be an integer")
        return value
    if expected in (float, "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config option {where} must be a number")
        return float(value)
    if expected in (str, "str"):
        if not isinstance(value, str):
            raise ConfigError(f"config option {where} must be a string")
        return value
    return value


def _fill(target: Any, data: dict, section: str, base: Path) -> None:
    known = {f.name: f for f in fields(target)}
    for name, value in data.items():
        if name not in known or name == "path" or name in _SECTIONS and section:
            raise ConfigError(f"unknown config option {section + '.' if section else ''}{name}")
        if not section and name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config section [{name}] must be a table")
            _fill(getattr(target, name), value, name, base)
            continue
        setattr(target, name, _coerce(section, name, known[name].type, value, base))


def load_config(path: str | Path | None = None) -> Config:
    """Load the config file: `path`, else $DEOSSFS_CONFIG, else the default location."""
    explicit = path or os.environ.get(ENV_VAR)
    config_path = Path(explicit or DEFAULT_PATH).expanduser()
    if not config_path.exists():
        if explicit:
            raise ConfigError(f"config file {config_path} not found")
        raise ConfigError(
            "no config file",
            hint="start a devnet with `deossfs devnet up --dir DIR` and pass --config DIR/deossfs.toml",
        )
    try:
        data = tomllib.loads(config_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config_path} is not valid TOML: {exc}") from None
    config = Config(path=config_path.resolve())
    _fill(config, data, "", config_path.resolve().parent)
    if config.chain.backend not in ("embedded", "cess"):
        raise ConfigError("config option chain.backend must be \"embedded\" or \"cess\"")
    return config


def write_config(config: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_toml())
