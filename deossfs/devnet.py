"""A one-machine network: the embedded chain plus N storage-node processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .chain.factory import open_chain
from .config import Config, load_config, write_config
from .errors import DeossError, InvalidInput, TemporaryError
from .keys import Account, create_key_file, load_key_file

CONFIG_NAME = "deossfs.toml"
GIB = 1024**3
NODE_IDLE_SPACE = 256 * GIB
DEV_FUNDS = 10**6 * 10**18  # 1,000,000 TCESS (18 decimals)
DEV_TERRITORY_GIB = 128
DEV_TERRITORY_DAYS = 365
DEVNET_CACHE_SIZE = 512 * 1024**2


@dataclass
class NodeProcess:
    index: int
    dir: Path
    pid: int | None
    port: int | None

    @property
    def alive(self) -> bool:
        return self.pid is not None and process_alive(self.pid)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def process_alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie whose threads are all gone does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead - once all its threads are gone: a
    # multithreaded process's leader turns zombie first, and the others still hold
    # its files (the node's listening socket) until they have exited too
    try:
        with open(f"/proc/{pid}/stat") as handle:
            if handle.read().split(") ", 1)[1][0] != "Z":
                return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def node_processes(devnet_dir: Path) -> list[NodeProcess]:
    nodes = []
    for path in sorted((devnet_dir / "nodes").glob("node*"), key=lambda p: int(p.name[4:] or 0)):
        state = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((path / "process.json").read_text())
        nodes.append(NodeProcess(int(path.name[4:]), path, state.get("pid"), state.get("port")))
    return nodes


def listen_socket(port: int = 0) -> socket.socket:
    """A socket listening on 127.0.0.1:`port` (0: a free port the kernel picks).

    The devnet binds each node's port itself and hands the listening socket to the
    node process: picking a free port and binding it later raced with anyone else
    doing the same (two devnets starting at once got the same port)."""
    sock = socket.socket()
    try:
        if port:
            # as the node's server does: connections of its last run in TIME_WAIT do not count
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(socket.SOMAXCONN)  # a listening port is taken for good, SO_REUSEADDR or not
    except OSError:
        sock.close()
        raise
    return sock


def listen_socket_for(node: NodeProcess) -> socket.socket:
    """A listening socket on the node's previous port if nothing took it meanwhile
    (another devnet, or an outgoing connection's ephemeral port), else on a new one."""
    if node.port is not None:
        with contextlib.suppress(OSError):
            return listen_socket(node.port)
    return listen_socket(0)


def start_node(config_path: Path, node: NodeProcess, listener: socket.socket | None = None) -> NodeProcess:
    """Start a node process serving `listener` (by default `listen_socket_for(node)`).

    A restarted node keeps its port when it can; with a new one it registers the new
    endpoint on the chain at start."""
    listener = listener or listen_socket_for(node)
    port = listener.getsockname()[1]
    log = open(node.dir / "node.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deossfs", "--config", str(config_path), "node",
             "--dir", str(node.dir), "--host", "127.0.0.1", "--port", str(port),
             "--listen-fd", str(listener.fileno()), "--idle-space", str(NODE_IDLE_SPACE)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            pass_fds=(listener.fileno(),),
        )
    finally:
        log.close()
        listener.close()  # the child has its own copy
    (node.dir / "process.json").write_text(json.dumps({"pid": proc.pid, "port": port}))
    return NodeProcess(node.index, node.dir, proc.pid, port)


def stop_node(node: NodeProcess, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    stop_nodes([node], sig, timeout)


def stop_nodes(nodes: list[NodeProcess], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal every node, then wait for them together (SIGKILL after `timeout`)."""
    running = [n for n in nodes if n.pid is not None and process_alive(n.pid)]
    for node in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, sig)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while any(n.alive for n in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for node in running:
        if node.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)  # type: ignore[arg-type]


def wait_ready(nodes: list[NodeProcess], timeout: float = 60.0) -> None:
    """Until every node answers `/status` as itself (another process on its port is not it)."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    accounts = {node.dir: load_key_file(node.dir / "key.json").address for node in nodes}
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while pending:
            for node in list(pending):
                try:
                    answer = client.get(f"{node.endpoint}/status")
                    if answer.status_code == 200 and answer.json().get("account") == accounts[node.dir]:
                        pending.remove(node)
                        continue
                except (httpx.HTTPError, ValueError):
                    pass
                if not node.alive:
                    log_tail = (node.dir / "node.log").read_text(errors="replace")[-600:]
                    raise DeossError(f"storage node {node.index} exited at start: {log_tail.strip()}")
            if pending and time.monotonic() > deadline:
                raise TemporaryError(f"{len(pending)} storage nodes did not start within {timeout:.0f}s")
            time.sleep(0.1)


def devnet_up(devnet_dir: Path, node_count: int = 12, gateway: bool = False) -> Config:
    """Create (or restart) the devnet in `devnet_dir`; idempotent. With `gateway`, also a
    gateway process (`deossfs gateway`) for the devnet's account."""
    if node_count < 1 or node_count > 64:
        raise InvalidInput("--nodes must be between 1 and 64")
    devnet_dir = devnet_dir.resolve()
    devnet_dir.mkdir(parents=True, exist_ok=True)
    config_path = devnet_dir / CONFIG_NAME
    key_path = devnet_dir / "account.key"
    if config_path.exists():
        config = load_config(config_path)
    else:
        config = Config(key_file=key_path, workspace=devnet_dir / "workspace")
        config.chain.ledger = devnet_dir / "ledger.sqlite"
        config.cache.dir = devnet_dir / "cache"
        # a devnet shares its machine's disk with 12 nodes holding 3x the data: keep the
        # segment cache modest (raise it in deossfs.toml for benchmarks of warm reads)
        config.cache.size = DEVNET_CACHE_SIZE
        write_config(config, config_path)
    account = load_key_file(key_path) if key_path.exists() else create_key_file(key_path)
    chain = open_chain(config, account)
    started: list[NodeProcess] = []
    try:
        if chain.balance(account.address) == 0:  # type: ignore[attr-defined]
            chain.fund(account.address, DEV_FUNDS)  # type: ignore[attr-defined]
        nodes = []
        for index in range(1, node_count + 1):
            node_dir = devnet_dir / "nodes" / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            if not (node_dir / "key.json").exists():
                create_key_file(node_dir / "key.json")
            current = [n for n in node_processes(devnet_dir) if n.index == index]
            node = current[0] if current else NodeProcess(index, node_dir, None, None)
            if not node.alive:
                node = start_node(config_path, node)
                started.append(node)
            nodes.append(node)
        wait_ready(nodes)
        territory = config.storage.territory
        if chain.territory(account.address, territory) is None:
            chain.mint_territory(territory, DEV_TERRITORY_GIB, DEV_TERRITORY_DAYS)
    except BaseException:
        # a failed `up` leaves nothing of its own running (nodes that ran before stay)
        stop_nodes(started)
        raise
    finally:
        chain.close()
    if gateway:
        start_gateway(devnet_dir)
    return config


# ---- the devnet's gateway ----------------------------------------------------------------


@dataclass
class GatewayProcess:
    dir: Path
    pid: int | None
    url: str | None

    @property
    def alive(self) -> bool:
        return self.pid is not None and process_alive(self.pid)


def gateway_process(devnet_dir: Path) -> GatewayProcess:
    directory = devnet_dir.resolve() / "gateway"
    state: dict = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((directory / "process.json").read_text())
    url = None
    with contextlib.suppress(OSError):
        url = (directory / "url").read_text().strip() or None
    return GatewayProcess(directory, state.get("pid"), url)


def start_gateway(devnet_dir: Path, timeout: float = 60.0) -> GatewayProcess:
    """Start the devnet's gateway (on a free port) unless it runs; returns it once serving."""
    current = gateway_process(devnet_dir)
    if current.alive and current.url:
        return current
    directory = current.dir
    directory.mkdir(parents=True, exist_ok=True)
    url_file = directory / "url"
    url_file.unlink(missing_ok=True)
    log = open(directory / "gateway.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "deossfs", "--config", str(devnet_dir.resolve() / CONFIG_NAME),
         "gateway", "--listen", "127.0.0.1:0", "--url-file", str(url_file)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    (directory / "process.json").write_text(json.dumps({"pid": proc.pid}))
    deadline = time.monotonic() + timeout
    while not url_file.exists():
        if proc.poll() is not None:
            tail = (directory / "gateway.log").read_text(errors="replace")[-600:]
            raise DeossError(f"the devnet's gateway exited at start: {tail.strip()}")
        if time.monotonic() > deadline:
            stop_pid(proc.pid)
            raise TemporaryError(f"the devnet's gateway did not start within {timeout:.0f}s")
        time.sleep(0.05)
    return gateway_process(devnet_dir)


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a process: `sig`, then SIGKILL if it is still there after `timeout` seconds."""
    if not process_alive(pid):
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)


def stop_gateway(devnet_dir: Path) -> bool:
    process = gateway_process(devnet_dir)
    if not process.alive:
        return False
    assert process.pid is not None
    stop_pid(process.pid)
    return True


def devnet_down(devnet_dir: Path) -> int:
    stop_gateway(devnet_dir)
    stopped = 0
    for node in node_processes(devnet_dir.resolve()):
        if node.alive:
            stop_node(node)
            stopped += 1
    return stopped


def devnet_status(devnet_dir: Path) -> list[dict]:
    rows = []
    with httpx.Client(timeout=1.0) as client:
        for node in node_processes(devnet_dir.resolve()):
            row: dict = {"node": node.index, "pid": node.pid, "alive": node.alive,
                         "endpoint": node.endpoint if node.port else None}
            if node.alive:
                try:
                    row.update(client.get(f"{node.endpoint}/status").json())
                except (httpx.HTTPError, ValueError):
                    row["alive"] = "not answering"
            rows.append(row)
    return rows


def load_account(config: Config) -> Account:
    return load_key_file(config.require_key_file())
