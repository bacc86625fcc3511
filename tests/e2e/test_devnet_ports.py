"""`deossfs devnet up`: node ports chosen atomically, nothing left running after a failure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deossfs.devnet import node_processes, process_alive, start_node, stop_nodes, wait_ready
from deossfs.keys import create_key_file

from ..conftest import ROOT, Devnet, deossfs


def _up(directory: Path, nodes: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deossfs", "devnet", "up", "--dir", str(directory),
                             "--nodes", str(nodes)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _down(*directories: Path) -> None:
    for directory in directories:
        deossfs("devnet", "down", "--dir", str(directory), check=False)


def test_two_devnets_started_at_the_same_moment(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    runs = [_up(first, 12), _up(second, 12)]
    try:
        for run in runs:
            out, err = run.communicate(timeout=300)
            assert run.returncode == 0, f"devnet up failed:\n{out}\n{err}"
        nodes = node_processes(first) + node_processes(second)
        assert len(nodes) == 24 and all(n.alive for n in nodes)
        assert len({n.port for n in nodes}) == 24
        wait_ready(nodes, timeout=10)  # each port answers as its own node's account
    finally:
        _down(first, second)


def test_a_node_port_is_taken_the_moment_start_node_returns(tmp_path: Path) -> None:
    """No window between choosing a port and the node binding it: the node process has
    not even imported its server yet, and its port is already held."""
    deossfs("devnet", "up", "--dir", str(tmp_path), "--nodes", "1", timeout=240)
    try:
        [node] = node_processes(tmp_path)
        stop_nodes([node])
        restarted = start_node(tmp_path / "deossfs.toml", node)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", restarted.port))
        assert restarted.port == node.port  # a restarted node keeps its port when it is free
        wait_ready([restarted])
    finally:
        _down(tmp_path)


def test_a_restarted_node_whose_port_was_taken_gets_another(tmp_path: Path) -> None:
    deossfs("devnet", "up", "--dir", str(tmp_path), "--nodes", "1", timeout=240)
    try:
        [node] = node_processes(tmp_path)
        stop_nodes([node])
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", node.port))
            squatter.listen()
            deossfs("devnet", "up", "--dir", str(tmp_path), "--nodes", "1", timeout=240)
            [restarted] = node_processes(tmp_path)
            assert restarted.alive and restarted.port != node.port
            wait_ready([restarted])
    finally:
        _down(tmp_path)


def test_a_failed_up_stops_the_nodes_it_started(tmp_path: Path) -> None:
    deossfs("devnet", "up", "--dir", str(tmp_path), "--nodes", "2", timeout=240)
    try:
        before = {n.index: n.pid for n in node_processes(tmp_path)}
        # node 4 cannot start: its key file is not a key
        for index in (3, 4, 5):
            (tmp_path / "nodes" / f"node{index}").mkdir(parents=True)
        create_key_file(tmp_path / "nodes" / "node3" / "key.json")
        create_key_file(tmp_path / "nodes" / "node5" / "key.json")
        bad_key = tmp_path / "nodes" / "node4" / "key.json"
        bad_key.write_text("not a key\n")
        os.chmod(bad_key, 0o600)
        result = deossfs("devnet", "up", "--dir", str(tmp_path), "--nodes", "5", check=False, timeout=240)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        nodes = {n.index: n for n in node_processes(tmp_path)}
        # the nodes that ran before stay; those this run started are stopped
        assert all(nodes[i].pid == before[i] and nodes[i].alive for i in (1, 2))
        started = [nodes[i] for i in (3, 4, 5)]
        assert all(n.pid is not None for n in started)
        assert not any(process_alive(n.pid) for n in started if n.pid is not None)  # type: ignore[misc]
    finally:
        _down(tmp_path)


def test_a_node_whose_port_is_taken_says_so_in_one_line(devnet: Devnet, tmp_path: Path) -> None:
    """The bind fails inside the node's nursery: the CLI names the error itself (it used to
    say only "unexpected error: ExceptionGroup")."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = devnet.cli("node", "--dir", str(tmp_path / "node"), "--host", "127.0.0.1",
                            "--port", str(port), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deossfs: error: "), result.stderr
    assert "Address already in use" in lines[0] and "ExceptionGroup" not in lines[0]
