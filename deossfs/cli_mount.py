"""The command line of the mount: `deossfs mount`, `deossfs umount` and `deossfs status`.

Apart from cli.py (which grew past 800 lines) because these commands concern another
program - a long-running FUSE process and its workspace - and the kernel's view of it
(/proc/self/mountinfo, fusermount3); they register on cli.main.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from .cli import Context, fail, handle_errors, main

# ---- mount -----------------------------------------------------------------


@main.command("mount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground (systemd, debugging)")
@click.option("--no-wait", is_flag=True,
              help="at unmount, leave pending uploads in the journal instead of waiting for them")
@click.option("--allow-other", is_flag=True, help="let other users access the mount")
@click.option("--log-file", type=click.Path(dir_okay=False), help="where a background mount logs")
@click.pass_obj
@handle_errors
def mount_cmd(obj: Context, mountpoint: str, foreground: bool, no_wait: bool, allow_other: bool,
              log_file: str | None) -> None:
    """Mount the account's buckets at MOUNTPOINT."""
    import os
    import subprocess
    import time

    config = obj.config()
    account = obj.account(config)
    target = Path(mountpoint).resolve()
    if _fuse_mount_type(target) and _is_dead_mount(target):
        # the mount process was killed (kill -9, a crash): nobody serves this mount any more
        click.echo(f"{target}: clearing the dead mount of a killed deossfs process", err=True)
        _fusermount_unmount(target)
    if not target.is_dir():
        fail(f"mount point {target} is not a directory; create it with `mkdir -p {target}`")
    if os.path.ismount(target):
        fail(f"{target} is already a mount point; unmount it with `deossfs umount {target}`")
    if not foreground:
        from .fs.mount import workspace_for

        log_path = Path(log_file) if log_file else workspace_for(config, account) / "mount.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "deossfs"]
        if obj.config_path:
            args += ["--config", obj.config_path]
        for override in obj.overrides:
            args += ["-o", override]
        args += ["-v", "mount", "--foreground", str(target)]
        if no_wait:
            args.append("--no-wait")
        if allow_other:
            args.append("--allow-other")
        with open(log_path, "ab") as log_handle:
            child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_handle,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.ismount(target):
            if child.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
                fail(f"the mount exited at start: {tail[0] if tail else 'see ' + str(log_path)}")
            if time.monotonic() > deadline:
                fail(f"the mount did not come up within 30 s; see {log_path}")
            time.sleep(0.05)
        click.echo(f"mounted at {target} (pid {child.pid}, log {log_path})")
        return
    from .fs.mount import MountOptions, run_mount
    from .store import ObjectStore

    chain = obj.chain(config, account)
    store = ObjectStore(config, account, chain)
    try:
        run_mount(config, account, store, MountOptions(target, wait_on_unmount=not no_wait,
                                                       allow_other=allow_other))
    finally:
        chain.close()


def _unescape_mount_field(field: str) -> str:
    """/proc/self/mounts escapes space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _fuse_mount_type(target: Path) -> str | None:
    """The file system type mounted at `target` if it is a FUSE mount (e.g. fuse.deossfs)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split(" ")
        if len(fields) >= 3 and _unescape_mount_field(fields[1]) == str(target):
            found = fields[2]  # the last entry for a path is the visible one
    return found if found and found.startswith("fuse") else None


def _is_dead_mount(target: Path) -> bool:
    """A FUSE mount whose process is gone answers every call with ENOTCONN."""
    import errno
    import os

    try:
        os.stat(target)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _fusermount_unmount(target: Path) -> None:
    import subprocess

    result = subprocess.run(["fusermount3", "-u", str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        fail(result.stderr.strip() or f"cannot unmount {target}")


def _mount_processes(target: Path) -> list[int]:
    """Pids of running `deossfs ... mount ... TARGET` processes (from /proc)."""
    import os

    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if "mount" not in args or not any(Path(a).name == "deossfs" for a in args[: args.index("mount")]):
            continue
        after = args[args.index("mount") + 1 :]
        if any(not a.startswith("-") and Path(os.path.normpath(os.path.join(cwd, a))) == target
               for a in after):
            pids.append(int(entry.name))
    return pids


@main.command("umount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="wait until the mount process has finished its pending uploads and exited")
@handle_errors
def umount_cmd(mountpoint: str, wait: bool) -> None:
    """Unmount; the mount process finishes pending uploads before it exits."""
    import time

    from .devnet import process_alive

    target = Path(mountpoint).resolve()
    pids = _mount_processes(target)
    if _fuse_mount_type(target):
        _fusermount_unmount(target)
        click.echo(f"unmounted {target}")
    elif not pids:
        fail(f"{target} is not mounted")
    if not wait:
        if pids:
            click.echo(f"the mount process (pid {', '.join(map(str, pids))}) finishes its pending "
                       "uploads in the background")
        return
    pids = [p for p in pids if process_alive(p)]
    if pids:
        click.echo(f"waiting for the mount process (pid {', '.join(map(str, pids))}) to finish "
                   "its pending uploads (`deossfs status` shows them)…")
    while pids:
        time.sleep(0.2)
        pids = [p for p in pids if process_alive(p)]


@main.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def status_cmd(obj: Context, as_json: bool) -> None:
    """Pending and failed uploads of the mount (from its journal), and the cache counters."""
    import sqlite3
    import time

    from .fs.mount import DB_NAME, workspace_for

    config = obj.config()
    account = obj.account(config)
    path = workspace_for(config, account) / DB_NAME
    cache = _cache_status(config, account)
    if not path.exists() and cache is None:
        fail(f"no mount state at {path}; mount first with `deossfs mount MOUNTPOINT`")
    items = []
    if path.exists():
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = conn.execute(
            "SELECT u.path, u.total_bytes, u.done_bytes, u.attempts, u.error, u.next_try, i.state"
            " FROM uploads u LEFT JOIN inodes i ON i.id = u.ino ORDER BY u.queued_at").fetchall()
        conn.close()
        items = [{"path": p, "size": total, "sent": done, "attempts": attempts, "error": error,
                  "state": state or "staged", "retry_in": max(0.0, round(next_try - time.time(), 1))}
                 for p, total, done, attempts, error, next_try, state in rows]
    if as_json:
        click.echo(json.dumps({"pending": items, "cache": cache}, indent=2))
        return
    if path.exists() and not items:
        click.echo("no pending uploads: everything closed is durable")
    for item in items:
        pct = 100 * item["sent"] // item["size"] if item["size"] else 100
        line = f"{item['state']:<9} {pct:>3}%  {item['size']:>12}  {item['path']}"
        if item["error"]:
            line += f"  [{item['error']}; retry in {item['retry_in']:.0f}s]"
        click.echo(line)
    if cache is not None:
        _show_cache_status(cache)


def _cache_status(config: Any, account: Any) -> dict | None:
    """The cache's use and the read/serve counters, or None if this instance has neither."""
    from .cache import Counters, SegmentCache

    counters = Counters(config.workspace_dir(account.address) / "counters")
    cache = SegmentCache.from_config(config, account.address)
    if not counters.directory.exists() and not cache.store_dir.exists():
        return None
    try:
        return {**cache.usage(), "counters": counters.snapshot()}
    finally:
        cache.close()
        counters.close()


def _show_cache_status(cache: dict) -> None:
    mib = 1024**2
    c = cache["counters"]
    state = "on" if cache["enabled"] else "off"
    click.echo(f"cache: {state}, {cache['dir']}: {cache['segments']} segments, "
               f"{cache['used_bytes'] / mib:.0f} of {cache['size_limit'] / mib:.0f} MiB")
    click.echo(f"reads: {c['hits']} from the cache ({c['bytes_from_cache'] / mib:.0f} MiB), "
               f"{c['peer_hits']} from peers ({c['bytes_from_peers'] / mib:.0f} MiB), "
               f"{c['node_reads']} from storage nodes ({c['bytes_from_nodes'] / mib:.0f} MiB); "
               f"{c['misses']} cache misses")
    click.echo(f"served to peers: {c['served_segments']} segments ({c['served_bytes'] / mib:.0f} MiB), "
               f"{c['refused_requests']} requests refused; {c['segments_cached']} segments cached in all")


