"""The one TOML config file, overridable by CLI flags and environment.

Found through `--config`, else `$DEOSSFS_CONFIG`, else `~/.config/deossfs/config.toml`.
Relative paths in the file are relative to the file's directory. An unknown or
ill-typed option is a `ConfigError` naming it.

Precedence, lowest first: the defaults below, the file, the environment
(`DEOSSFS_<SECTION>_<OPTION>`, e.g. DEOSSFS_CACHE_SIZE="2 GiB"; top-level options as
DEOSSFS_KEY_FILE, DEOSSFS_WORKSPACE), the command line (`-o section.option=value`).
docs/configuration.md describes every option.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
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
    #: seconds between background fragment checks and repairs by the mount (0 = off)
    verify_interval: float = 0.0
    #: seconds a closed file waits before its upload starts, so that a rename right after
    #: the close (rsync's temporary files, editors saving by rename) uploads under the final
    #: name; fsync does not wait for it
    upload_delay: float = 1.0


@dataclass
class CacheConfig:
    #: keep segments as stored (ciphertext when encrypted) on local disk
    enabled: bool = True
    #: default <workspace>/cache; never the mount's staging directory (or inside it)
    dir: Path | None = None
    #: size cap in bytes (the file may say "4 GiB"); least recently used segments go first
    size: int = field(default=4 * 1024**3, metadata={"size": True})
    #: staged copies of files written through the mount that are durable already are
    #: kept up to this total (the most recently written first); the rest are removed and
    #: read like any stored file (the segment cache holds what was just uploaded)
    staged_keep: int = field(default=1024**3, metadata={"size": True})


@dataclass
class PeersConfig:
    #: ask peer instances for a segment missing from the local cache, before storage nodes
    enabled: bool = True
    #: peer endpoints ("http://host:port") asked besides the chain's gateway list
    endpoints: list[str] = field(default_factory=list)
    #: also ask the gateways registered on the chain (the Oss list)
    from_chain: bool = True
    #: seconds a peer has to send a whole segment
    timeout: float = 30.0
    #: seconds a peer that failed is not asked
    penalty_seconds: float = 60.0
    #: seconds between reads of the chain's gateway list
    refresh_seconds: float = 60.0


@dataclass
class ServeConfig:
    #: serve the local cache to peers from the mount (`deossfs serve-cache` always serves)
    enabled: bool = False
    host: str = "127.0.0.1"
    #: 0 picks a free port
    port: int = 15100
    #: the endpoint peers connect to, when not http://host:port (NAT, proxies)
    public_endpoint: str = ""
    #: register the endpoint in the chain's gateway list (Oss.register) so peers find it
    register: bool = False


@dataclass
class AccessConfig:
    #: who may read this instance's cache: "public" = everyone but `accounts` (a blacklist),
    #: "private" = only `accounts` (a whitelist); as DeOSS
    mode: str = "public"
    accounts: list[str] = field(default_factory=list)


@dataclass
class GatewayConfig:
    """`deossfs gateway`: the HTTP gateway (DeOSS's REST API; docs/gateway.md)."""

    #: host:port the gateway listens on
    listen: str = "127.0.0.1:8080"
    #: the bucket of uploads that name none (DeOSS v0.4.2 clients send no Bucket header);
    #: created for the account on its first upload
    default_bucket: str = "deoss"
    #: "durable": an upload is answered once its fragments are stored and reported (as
    #: `deossfs put`); "accepted": once staged in the gateway's journal and declared on the
    #: chain, as DeOSS does (the file-state route follows the rest)
    respond: str = "durable"
    #: signed Messages are Unix timestamps within this many seconds of the gateway's clock
    message_window: float = 300.0
    #: take any signed Message forever, as DeOSS does (replayable: for old clients only)
    accept_unfresh_messages: bool = False
    #: uploads one account may have under way at once; more are answered 429
    max_uploads_per_account: int = 4
    #: bytes of uploads one account may have staged and not yet stored
    max_bytes_per_account: int = field(default=16 * 1024**3, metadata={"size": True})
    #: uploads whose segments are encoded and sent at once, all accounts together (each
    #: holds up to 192 MiB of workspaces; the others wait, staged, in arrival order). One
    #: keeps both cores busy: the storage nodes of a devnet take the other
    parallel_stores: int = 1
    #: seconds a client may take to send its request headers, and may leave its body idle
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    #: seconds the gateway trusts its answer to "has this account authorized me?"
    authorization_cache_seconds: float = 30.0
    #: an accepted upload that fails for the network's reasons (nodes, chain) is tried this
    #: many times in all, the first retry after retry_seconds, each next one 4x later (at
    #: most 10 min), before it is reported failed
    upload_attempts: int = 5
    retry_seconds: float = 5.0
    #: S3: the domain of virtual-host-style requests (BUCKET.domain); empty: path style only
    domain: str = ""
    #: S3: the region the gateway answers as (GetBucketLocation; any region signs)
    region: str = "us-east-1"
    #: S3: multipart uploads left incomplete this many days are dropped with their parts
    multipart_expiry_days: float = 7.0
    #: the web console under /console/ on the same listener (docs/console.md)
    console: bool = True
    #: seconds a console sign-in lasts (its session cookie expires then)
    console_session: float = 12 * 3600.0
    #: a PEM certificate (chain) and its key: the gateway serves HTTPS (REST, S3, console)
    tls_cert: Path | None = None
    tls_key: Path | None = None


#: what `mount.fsync` may be
FSYNC_MODES = ("network", "local")


@dataclass
class MountConfig:
    #: what fsync (and msync) waits for: "network" = the file is durable on CESS
    #: (fragments fsynced on 12 nodes, the file Active on the chain); "local" = its content
    #: is journaled and fsynced on this machine's disk, and the upload follows
    fsync: str = "network"
    #: seconds a chain file must exist before the mount's background check
    #: (storage.verify_interval) deletes it as an orphan (docs/reliability.md)
    orphan_grace: float = 24 * 3600.0


@dataclass
class ProcessingConfig:
    """Processing stages (docs/extending.md): a plug-in that transforms a file's bytes
    before segmentation and back after assembly."""

    #: the stage new files go through (an entry point of the group deossfs.processing;
    #: "" = none). Files are read back by their own record, whatever this says
    stage: str = ""
    #: options per stage name (a table per stage), given to the stage when it is made
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: decode each processed file once before it is stored, and refuse it unless that
    #: gives the original bytes back
    verify: bool = True


@dataclass
class SchedulingConfig:
    """Placement policies (docs/extending.md): which nodes take a file's fragments."""

    #: the policies, applied in order: built-ins (blacklist, nearby, pinned) or entry
    #: points of the group deossfs.scheduling
    policies: list[str] = field(default_factory=lambda: ["blacklist", "nearby", "pinned"])
    #: options per plug-in policy name (a table per policy)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class MetricsConfig:
    """Prometheus text metrics of `deossfs mount`, `gateway` and `node` (docs/operations.md)."""

    #: HOST:PORT the metrics are served at ("" = off); each process needs a port of its own
    listen: str = ""


#: the mount's staging directory inside the workspace (staged files are never in the cache)
STAGING_DIR_NAME = "staging"


@dataclass
class Config:
    path: Path | None = None
    key_file: Path | None = None
    workspace: Path | None = None
    chain: ChainConfig = field(default_factory=ChainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    mount: MountConfig = field(default_factory=MountConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def require_key_file(self) -> Path:
        if self.key_file is None:
            raise ConfigError("no key_file in the config", hint="set key_file = \"...\"")
        return self.key_file

    def workspace_dir(self, address: str) -> Path:
        """The instance's local state: `workspace`, else ~/.cache/deossfs/<account>."""
        if self.workspace is not None:
            return self.workspace
        return Path("~/.cache/deossfs").expanduser() / address

    def staging_dir(self, address: str) -> Path:
        return self.workspace_dir(address) / STAGING_DIR_NAME

    def cache_dir(self, address: str) -> Path:
        """`cache.dir`, else <workspace>/cache; refused if it overlaps the staging directory."""
        directory = self.cache.dir if self.cache.dir is not None else self.workspace_dir(address) / "cache"
        staging = self.staging_dir(address)
        a, b = directory.resolve(), staging.resolve()
        if a == b or a.is_relative_to(b) or b.is_relative_to(a):
            raise ConfigError(
                f"config option cache.dir ({directory}) overlaps the mount's staging directory "
                f"({staging})", hint="staged files are not cache entries: give the cache its own directory")
        return directory

    def to_toml(self) -> str:
        return tomli_w.dumps(_to_plain(self, skip={"path"}))


_SECTIONS = {"chain": ChainConfig, "storage": StorageConfig, "cache": CacheConfig,
             "peers": PeersConfig, "serve": ServeConfig, "access": AccessConfig,
             "gateway": GatewayConfig, "mount": MountConfig, "processing": ProcessingConfig,
             "scheduling": SchedulingConfig, "metrics": MetricsConfig}
#: options outside any section
_TOP_LEVEL = ("key_file", "workspace")
#: environment overrides are DEOSSFS_<SECTION>_<OPTION> (and DEOSSFS_KEY_FILE, DEOSSFS_WORKSPACE)
_ENV_PREFIX = "DEOSSFS_"


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


def _unknown(where: str, known: list[str], source: str = "") -> ConfigError:
    prefix, _, name = where.rpartition(".")
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    else:
        hint = f"known {'options of [' + prefix + ']' if prefix else 'options and sections'}: {', '.join(known)}"
    return ConfigError(f"unknown config option {where}{source}", hint=hint)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}


def parse_size(text: str) -> int | None:
    """Bytes of "4 GiB", "500MiB", "1.5 GB", "1048576"; None if it is no size."""
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[unit])


def _coerce(section: str, name: str, spec: Any, value: Any, base: Path, source: str = "") -> Any:
    """Check one value from the file (TOML types) against its option's type."""
    where = f"{section}.{name}" if section else name
    expected = spec.type
    text = str(expected)
    if "Path" in text:
        if not isinstance(value, str):
            raise ConfigError(f"config option {where}{source} must be a path string")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
    if "dict" in text:
        # a table of tables: options by plug-in name
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
            raise ConfigError(f"config option {where}{source} must be a table of tables, one per "
                              f"plug-in name, e.g. [{where}.NAME]")
        return value
    if "list" in text:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config option {where}{source} must be a list of strings")
        return value
    if expected in (bool, "bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"config option {where}{source} must be true or false")
        return value
    if expected in (int, "int"):
        if spec.metadata.get("size") and isinstance(value, str):
            size = parse_size(value)
            if size is None:
                raise ConfigError(f"config option {where}{source} must be a size "
                                  "(bytes, or e.g. \"4 GiB\", \"500 MiB\")")
            return size
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config option {where}{source} must be an integer")
        return value
    if expected in (float, "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config option {where}{source} must be a number")
        return float(value)
    if expected in (str, "str"):
        if not isinstance(value, str):
            raise ConfigError(f"config option {where}{source} must be a string")
        return value
    return value


def _from_text(spec: Any, text: str, where: str, source: str) -> Any:
    """An override's string (environment, command line) as the TOML value it stands for."""
    expected = str(spec.type)
    stripped = text.strip()
    if "dict" in expected:
        try:
            return tomllib.loads(f"v = {stripped or '{}'}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"config option {where}{source} must be an inline TOML table, "
                              "e.g. {zstd = {level = 19}}") from None
    if "list" in expected:
        if stripped.startswith("["):
            try:
                return tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"config option {where}{source} must be a list of strings, "
                                  "e.g. [\"a\", \"b\"] or a,b") from None
        return [part.strip() for part in stripped.split(",") if part.strip()]
    if expected == "bool":
        lowered = stripped.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"config option {where}{source} must be true or false, not {text!r}")
    if expected == "int" and not spec.metadata.get("size"):
        try:
            return int(stripped)
        except ValueError:
            raise ConfigError(f"config option {where}{source} must be an integer, not {text!r}") from None
    if expected == "float":
        try:
            return float(stripped)
        except ValueError:
            raise ConfigError(f"config option {where}{source} must be a number, not {text!r}") from None
    return text  # strings, paths, sizes: checked by _coerce


def _fill(target: Any, data: dict, section: str, base: Path) -> None:
    known = {f.name: f for f in fields(target) if f.name != "path" and f.name not in _SECTIONS}
    for name, value in data.items():
        if not section and name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config section [{name}] must be a table")
            _fill(getattr(target, name), value, name, base)
            continue
        if name not in known:
            where = f"{section}.{name}" if section else name
            raise _unknown(where, list(known) if section else [*_TOP_LEVEL, *_SECTIONS])
        setattr(target, name, _coerce(section, name, known[name], value, base))


def option_names() -> list[str]:
    """Every option, as SECTION.OPTION (top-level ones without a section)."""
    names = list(_TOP_LEVEL)
    for section, cls in _SECTIONS.items():
        names.extend(f"{section}.{f.name}" for f in fields(cls))
    return names


def set_option(config: Config, dotted: str, text: str, source: str = "") -> None:
    """Override one option from text: `dotted` is "cache.size" or "key_file".

    Relative paths are relative to the current directory. `source` says where the
    override came from, for error messages (" (from DEOSSFS_CACHE_SIZE)").
    """
    section, _, name = dotted.strip().lower().rpartition(".")
    if section:
        if section not in _SECTIONS:
            close = difflib.get_close_matches(section, list(_SECTIONS), n=1)
            raise ConfigError(f"unknown config section {section!r} in {dotted}{source}",
                              hint=f"did you mean {close[0]}?" if close else
                              f"sections: {', '.join(_SECTIONS)}")
        target = getattr(config, section)
    else:
        target = config
    known = {f.name: f for f in fields(target) if f.name != "path" and f.name not in _SECTIONS}
    if name not in known:
        raise _unknown(dotted, list(known) if section else list(_TOP_LEVEL), source)
    spec = known[name]
    value = _from_text(spec, text, dotted, source)
    setattr(target, name, _coerce(section, name, spec, value, Path.cwd(), source))


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(option, value, variable) for each DEOSSFS_<SECTION>_<OPTION> (or DEOSSFS_<OPTION>
    for top-level options) in `environ`. Variables naming no section (DEOSSFS_CONFIG,
    DEOSSFS_REQUIRE_CESS) are not options and are skipped."""
    found = []
    for variable in sorted(environ):
        if not variable.startswith(_ENV_PREFIX) or variable == ENV_VAR:
            continue
        rest = variable[len(_ENV_PREFIX):].lower()
        if rest in _TOP_LEVEL:
            found.append((rest, environ[variable], variable))
            continue
        section, _, name = rest.partition("_")
        if section in _SECTIONS and name:
            found.append((f"{section}.{name}", environ[variable], variable))
    return found


def _validate(config: Config) -> None:
    if config.chain.backend not in ("embedded", "cess"):
        raise ConfigError("config option chain.backend must be \"embedded\" or \"cess\"")
    if config.access.mode not in ("public", "private"):
        raise ConfigError("config option access.mode must be \"public\" (accounts are refused) "
                          "or \"private\" (only accounts are served)")
    if config.gateway.respond not in ("durable", "accepted"):
        raise ConfigError("config option gateway.respond must be \"durable\" (answer once stored) "
                          "or \"accepted\" (answer once staged and declared, as DeOSS)")
    parse_listen(config.gateway.listen, "gateway.listen")
    if config.metrics.listen:
        parse_listen(config.metrics.listen, "metrics.listen")
    for where, names in (("processing.stage", [config.processing.stage]),
                         ("scheduling.policies", config.scheduling.policies)):
        for name in names:
            if name != name.strip() or any(c.isspace() for c in name):
                raise ConfigError(f"config option {where}: {name!r} is not a plug-in name")
    if not config.scheduling.policies:
        raise ConfigError("config option scheduling.policies names no policy",
                          hint='the default is ["blacklist", "nearby", "pinned"]')
    for where, value in (("gateway.message_window", config.gateway.message_window),
                         ("gateway.header_timeout", config.gateway.header_timeout),
                         ("gateway.body_timeout", config.gateway.body_timeout)):
        if value <= 0:
            raise ConfigError(f"config option {where} must be positive")
    if config.gateway.console_session <= 0:
        raise ConfigError("config option gateway.console_session must be positive (seconds)")
    if (config.gateway.tls_cert is None) != (config.gateway.tls_key is None):
        raise ConfigError("config options gateway.tls_cert and gateway.tls_key go together: "
                          "give both (a PEM certificate and its key) or neither")
    for where, count in (("gateway.max_uploads_per_account", config.gateway.max_uploads_per_account),
                         ("gateway.parallel_stores", config.gateway.parallel_stores),
                         ("gateway.upload_attempts", config.gateway.upload_attempts)):
        if count < 1:
            raise ConfigError(f"config option {where} must be at least 1")
    if config.mount.fsync not in FSYNC_MODES:
        raise ConfigError("config option mount.fsync must be \"network\" (fsync waits until the "
                          "file is durable on CESS) or \"local\" (until it is on this machine's disk)")
    if not 0 <= config.serve.port <= 65535:
        raise ConfigError("config option serve.port must be between 0 and 65535")
    if config.cache.size < 0:
        raise ConfigError("config option cache.size must not be negative")
    for where, value in (("peers.timeout", config.peers.timeout),
                         ("storage.request_timeout", config.storage.request_timeout)):
        if value <= 0:
            raise ConfigError(f"config option {where} must be positive")
    for where, value in (("mount.orphan_grace", config.mount.orphan_grace),
                         ("peers.penalty_seconds", config.peers.penalty_seconds),
                         ("peers.refresh_seconds", config.peers.refresh_seconds),
                         ("storage.node_penalty_seconds", config.storage.node_penalty_seconds)):
        if value < 0:
            raise ConfigError(f"config option {where} must not be negative")
    for where, endpoints in (("peers.endpoints", config.peers.endpoints),):
        for endpoint in endpoints:
            if not endpoint.strip() or any(c.isspace() for c in endpoint.strip()):
                raise ConfigError(f"config option {where} has a bad endpoint {endpoint!r}")
    lists = (("access.accounts", config.access.accounts),
             ("storage.preferred_nodes", config.storage.preferred_nodes),
             ("storage.blocked_nodes", config.storage.blocked_nodes))
    if any(accounts for _, accounts in lists):
        from .keys import valid_address

        for where, accounts in lists:
            for account in accounts:
                if not valid_address(account):
                    raise ConfigError(f"config option {where}: {account!r} is not an SS58 account")


def parse_listen(text: str, where: str = "listen") -> tuple[str, int]:
    """(host, port) of "HOST:PORT" ("[::1]:8080" for IPv6); a ConfigError naming `where`."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"config option {where} must be HOST:PORT (e.g. 127.0.0.1:8080), not {text!r}")
    return host, int(port)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                environ: Mapping[str, str] | None = None) -> Config:
    """Load the config file: `path`, else $DEOSSFS_CONFIG, else the default location.

    Precedence, lowest first: defaults, the file, the environment
    (DEOSSFS_<SECTION>_<OPTION>), then `overrides` ("section.option=value", the
    command line's -o).
    """
    environ = os.environ if environ is None else environ
    explicit = path or environ.get(ENV_VAR)
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
    for dotted, value, variable in env_overrides(environ):
        set_option(config, dotted, value, f" (from the environment variable {variable})")
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"bad option override {item!r}: expected SECTION.OPTION=VALUE")
        set_option(config, dotted, value, f" (from -o {item})")
    _validate(config)
    return config


def write_config(config: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_toml())
