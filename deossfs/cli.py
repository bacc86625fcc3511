"""The `deossfs` command line.

Every error reaches the user as one line (`errors.cli_message`) and a non-zero
exit; a traceback only with --debug.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import trio

from .errors import DeossError, InvalidName, cli_message

GIB = 1024**3


class Context:
    def __init__(self, config_path: str | None, debug: bool, overrides: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.debug = debug
        #: -o SECTION.OPTION=VALUE, applied over the file and the environment
        self.overrides = overrides

    def config(self):  # noqa: ANN201 - imported lazily to keep `--help` fast
        from .config import load_config

        return load_config(self.config_path, overrides=self.overrides)

    def account(self, config):  # noqa: ANN001, ANN201
        from .keys import load_key_file

        return load_key_file(config.require_key_file())

    def chain(self, config, account):  # noqa: ANN001, ANN201
        from .chain.factory import open_chain

        return open_chain(config, account)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"deossfs: error: {message}", err=True)
    sys.exit(code)


def lone_exception(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one member each - what a trio
    nursery wraps a task's failure in - else `exc` itself: a node that cannot bind its
    port says so, not "ExceptionGroup"."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def handle_errors(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as caught:  # the promise is one line, never a traceback
            if ctx and ctx.debug:
                traceback.print_exc()
            exc = lone_exception(caught)
            if isinstance(exc, DeossError | OSError):
                fail(cli_message(exc))
            fail(f"{cli_message(exc)} (run with --debug for details)")

    return wrapper


@click.group()
@click.option("--config", "config_path", envvar="DEOSSFS_CONFIG", type=click.Path(dir_okay=False),
              help="config file (default $DEOSSFS_CONFIG, then ~/.config/deossfs/config.toml)")
@click.option("-o", "--option", "overrides", multiple=True, metavar="SECTION.OPTION=VALUE",
              help="override a config option (over the file and DEOSSFS_<SECTION>_<OPTION>); "
                   "repeatable, e.g. -o cache.enabled=false -o cache.size=2GiB")
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.version_option(package_name="deossfs")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, overrides: tuple[str, ...], verbose: int,
         debug: bool) -> None:
    """deossfs: the CESS decentralized object store as a local filesystem."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one line per HTTP request drowns everything else; keep their warnings only
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    ctx.obj = Context(config_path, debug, overrides)


# ---- key ------------------------------------------------------------------


@main.group()
def key() -> None:
    """Account key files."""


@key.command("create")
@click.argument("path", type=click.Path(dir_okay=False))
@handle_errors
def key_create(path: str) -> None:
    """Create a new sr25519 key file (mode 0600)."""
    from .keys import create_key_file

    account = create_key_file(Path(path))
    click.echo(account.address)


@key.command("show")
@click.pass_obj
@handle_errors
def key_show(obj: Context) -> None:
    """Print the configured account's address."""
    config = obj.config()
    click.echo(obj.account(config).address)


# ---- devnet ----------------------------------------------------------------


@main.group()
def devnet() -> None:
    """A local network: embedded chain plus storage nodes on 127.0.0.1."""


@devnet.command("up")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
@click.option("--nodes", default=12, show_default=True, help="storage node processes")
@click.option("--chain", "chain_kind", type=click.Choice(["embedded", "cess"]),
              default="embedded", show_default=True,
              help="the embedded ledger, or the real CESS runtime (chopsticks; `make devchain`)")
@click.option("--gateway", "with_gateway", is_flag=True,
              help="also run an HTTP gateway for the devnet's account (docs/gateway.md)")
@handle_errors
def devnet_up_cmd(directory: str, nodes: int, chain_kind: str, with_gateway: bool) -> None:
    """Start the devnet (creates it on first use)."""
    from .devnet import CONFIG_NAME, devnet_up, gateway_process, start_gateway

    if chain_kind == "cess":
        from .devnet_cess import devnet_up_cess

        devnet_up_cess(Path(directory), nodes)
        if with_gateway:
            start_gateway(Path(directory))
    else:
        devnet_up(Path(directory), nodes, gateway=with_gateway)
    config_path = Path(directory).resolve() / CONFIG_NAME
    click.echo(f"devnet up: {nodes} storage nodes, territory 'default'")
    if with_gateway:
        click.echo(f"gateway: {gateway_process(Path(directory)).url}")
    click.echo(f"config: {config_path}")
    click.echo(f"use it:  export DEOSSFS_CONFIG={config_path}")


@devnet.command("down")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
@handle_errors
def devnet_down_cmd(directory: str) -> None:
    """Stop the devnet's node processes (data is kept)."""
    from .devnet import devnet_down
    from .devnet_cess import stop_chain

    click.echo(f"stopped {devnet_down(Path(directory))} storage nodes")
    stop_chain(Path(directory).resolve() / "chain")


@devnet.command("status")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def devnet_status_cmd(directory: str, as_json: bool) -> None:
    """Show each storage node's process and what it holds."""
    from .devnet import devnet_status, gateway_process

    rows = devnet_status(Path(directory))
    gateway = gateway_process(Path(directory))
    gateway_row = {"pid": gateway.pid, "alive": gateway.alive, "url": gateway.url} if gateway.pid else None
    if as_json:
        click.echo(json.dumps({"nodes": rows, "gateway": gateway_row}, indent=2))
        return
    if not rows:
        fail(f"no devnet in {directory}; start one with `deossfs devnet up --dir {directory}`")
    for row in rows:
        state = "up" if row["alive"] is True else ("down" if not row["alive"] else row["alive"])
        held = f"{row.get('fragments', '?')} fragments" if row["alive"] is True else ""
        click.echo(f"node{row['node']:<3} {state:<14} {row.get('endpoint') or '-':<24} {held}")
    if gateway_row is not None:
        click.echo(f"gateway {'up' if gateway.alive else 'down':<14} {gateway.url or '-'}")


# ---- node ----------------------------------------------------------------


@main.command("node")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="the node's data directory (holds key.json and fragments)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=15001, show_default=True)
@click.option("--idle-space", default=256 * GIB, show_default=True, help="bytes offered")
@click.option("--listen-fd", type=int, hidden=True,
              help="serve this inherited, already bound socket instead of --host/--port")
@click.pass_obj
@handle_errors
def node_cmd(obj: Context, directory: str, host: str, port: int, idle_space: int,
             listen_fd: int | None) -> None:
    """Run a storage node daemon (cess-miner fragment protocol over HTTP)."""
    from .keys import create_key_file, load_key_file
    from .node.server import run_node

    node_dir = Path(directory)
    key_path = node_dir / "key.json"
    account = load_key_file(key_path) if key_path.exists() else create_key_file(key_path)
    config = obj.config()
    chain = obj.chain(config, account)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    if config.metrics.listen:  # each node needs its own: -o metrics.listen=HOST:PORT
        from .metrics import serve

        serve(config.metrics.listen)
    run_node(node_dir, account, chain, host, port, idle_space, listen_fd=listen_fd)


# ---- territory -------------------------------------------------------------


@main.group()
def territory() -> None:
    """Territories: named, paid, expiring storage space."""


def _chain_call(obj: Context, action: Callable[[Any, Any, Any], Any]) -> Any:
    config = obj.config()
    account = obj.account(config)
    chain = obj.chain(config, account)
    try:
        return action(config, account, chain)
    finally:
        chain.close()


def _show_territory(t: Any) -> None:
    gib = 1024**3
    click.echo(
        f"{t.name}: {t.state.value}, {t.total_space / gib:.1f} GiB total, "
        f"{t.used_space / gib:.2f} used, {t.locked_space / gib:.2f} locked, "
        f"{t.remaining_space / gib:.2f} free, blocks {t.start}..{t.deadline}"
    )


@territory.command("mint")
@click.argument("name")
@click.option("--gib", type=int, required=True)
@click.option("--days", type=int, default=30, show_default=True)
@click.pass_obj
@handle_errors
def territory_mint(obj: Context, name: str, gib: int, days: int) -> None:
    _chain_call(obj, lambda c, a, ch: ch.mint_territory(name, gib, days))
    click.echo(f"territory {name} minted: {gib} GiB for {days} days")


@territory.command("expand")
@click.argument("name")
@click.option("--gib", type=int, required=True)
@click.pass_obj
@handle_errors
def territory_expand(obj: Context, name: str, gib: int) -> None:
    _chain_call(obj, lambda c, a, ch: ch.expand_territory(name, gib))
    click.echo(f"territory {name} expanded by {gib} GiB")


@territory.command("renew")
@click.argument("name")
@click.option("--days", type=int, required=True)
@click.pass_obj
@handle_errors
def territory_renew(obj: Context, name: str, days: int) -> None:
    _chain_call(obj, lambda c, a, ch: ch.renew_territory(name, days))
    click.echo(f"territory {name} renewed for {days} days")


@territory.command("show")
@click.argument("name", required=False)
@click.pass_obj
@handle_errors
def territory_show(obj: Context, name: str | None) -> None:
    def action(config: Any, account: Any, chain: Any) -> list:
        if name:
            found = chain.territory(account.address, name)
            if found is None:
                fail(f"territory {name!r} does not exist; mint it with `deossfs territory mint {name} --gib N`")
            return [found]
        return chain.territories(account.address)

    found = _chain_call(obj, action)
    if not found:
        click.echo("no territories; mint one with `deossfs territory mint NAME --gib N`")
    for t in found:
        _show_territory(t)


# ---- bucket ----------------------------------------------------------------


@main.group()
def bucket() -> None:
    """Buckets: the top-level directories of the mount."""


def _check_bucket_name(name: str) -> None:
    from .chain.names import bucket_name_problem

    problem = bucket_name_problem(name)
    if problem:
        raise InvalidName(f"bad bucket name {name!r}: {problem}")


@bucket.command("create")
@click.argument("name")
@click.pass_obj
@handle_errors
def bucket_create(obj: Context, name: str) -> None:
    _check_bucket_name(name)
    _chain_call(obj, lambda c, a, ch: ch.create_bucket(a.address, name))
    click.echo(f"bucket {name} created")


@bucket.command("rm")
@click.argument("name")
@click.pass_obj
@handle_errors
def bucket_rm(obj: Context, name: str) -> None:
    """Delete an empty bucket."""
    from .namespace import delete_bucket

    _run_store(obj, lambda s: delete_bucket(s, name))
    click.echo(f"bucket {name} deleted")


@bucket.command("ls")
@click.pass_obj
@handle_errors
def bucket_ls(obj: Context) -> None:
    for name in _chain_call(obj, lambda c, a, ch: ch.buckets(a.address)):
        click.echo(name)


@bucket.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def bucket_info(obj: Context, name: str, as_json: bool) -> None:
    info = _chain_call(obj, lambda c, a, ch: ch.bucket(a.address, name))
    if info is None:
        fail(f"bucket {name!r} does not exist; create it with `deossfs bucket create {name}`")
    if as_json:
        click.echo(json.dumps({"name": info.name, "owner": info.owner,
                               "objects": list(info.object_list), "authority": list(info.authority)}))
    else:
        click.echo(f"{info.name}: {len(info.object_list)} objects, owner {info.owner}")


# ---- objects ---------------------------------------------------------------


def _run_store(obj: Context, action: Callable[[Any], Any]) -> Any:
    from .store import ObjectStore

    config = obj.config()
    account = obj.account(config)
    chain = obj.chain(config, account)

    async def run() -> Any:
        async with ObjectStore(config, account, chain) as store:
            return await action(store)

    try:
        return trio.run(run)
    finally:
        chain.close()


def _progress(total: int, label: str, enabled: bool):  # noqa: ANN202
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False,
    )
    task = progress.add_task(label, total=total)
    return progress, lambda n: progress.advance(task, n)


@main.command("put")
@click.option("--no-encrypt", is_flag=True, help="store the plain CESS layout")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@click.argument("local", type=click.Path(dir_okay=False))
@click.argument("target")
@click.pass_obj
@handle_errors
def put_cmd(obj: Context, no_encrypt: bool, quiet: bool, local: str, target: str) -> None:
    """Store LOCAL as BUCKET/KEY; returns once the file is durable (Active on the chain)."""
    from .names import split_target

    bucket_name, key_name = split_target(target)
    path = Path(local)
    size = path.stat().st_size
    show = not quiet and sys.stderr.isatty() and size >= 32 * 1024**2
    progress, advance = _progress(size, f"put {key_name}", show)

    async def action(store: Any) -> Any:
        from .namespace import put_empty, put_object

        def upload() -> Any:
            return store.put_file(path, bucket_name, key_name,
                                  encrypt=False if no_encrypt else None, progress=advance)

        if size == 0:
            return await put_empty(store, bucket_name, key_name)
        return await put_object(store, bucket_name, key_name, upload)

    with progress:
        plan = _run_store(obj, action)
    if plan is None:
        click.echo(f"{target} stored: 0 bytes, in the bucket's metadata object "
                   "(CESS stores no empty files)")
        return
    click.echo(f"{target} stored: fid {plan.fid}, {plan.size} bytes, {len(plan.segments)} segments"
               f"{', encrypted' if plan.encrypted else ''}")


@main.command("get")
@click.option("--quiet", "-q", is_flag=True)
@click.argument("target")
@click.argument("local", type=click.Path(dir_okay=False))
@click.pass_obj
@handle_errors
def get_cmd(obj: Context, quiet: bool, target: str, local: str) -> None:
    """Fetch BUCKET/KEY into LOCAL (written atomically: no partial file on failure)."""
    from .names import split_target

    bucket_name, key_name = split_target(target)
    dest = Path(local)
    if dest.is_dir():
        dest = dest / Path(key_name).name
    if not dest.resolve().parent.is_dir():
        fail(f"directory {dest.resolve().parent} does not exist")

    async def action(store: Any) -> Any:
        from .namespace import resolve
        from .store import ObjectEntry, atomic_output

        entry = await resolve(store, bucket_name, key_name)
        if entry is None:
            async with atomic_output(dest):
                pass  # an object of zero bytes: an empty file
            return ObjectEntry(bucket_name, key_name, "", 0)
        show = not quiet and sys.stderr.isatty() and entry.size >= 32 * 1024**2
        progress, advance = _progress(entry.size, f"get {key_name}", show)
        with progress:
            await store.get_fid(entry.fid, dest, advance)
        return entry

    entry = _run_store(obj, action)
    click.echo(f"{target} → {dest}: {entry.size} bytes")


@main.command("rm")
@click.argument("target")
@click.pass_obj
@handle_errors
def rm_cmd(obj: Context, target: str) -> None:
    """Delete BUCKET/KEY from the chain."""
    from .names import split_target
    from .namespace import delete

    bucket_name, key_name = split_target(target)
    _run_store(obj, lambda store: delete(store, bucket_name, key_name))
    click.echo(f"{target} deleted")


@main.command("ls")
@click.argument("target", required=False)
@click.pass_obj
@handle_errors
def ls_cmd(obj: Context, target: str | None) -> None:
    """List buckets, or the objects of BUCKET[/PREFIX]."""
    if not target:
        for name in _chain_call(obj, lambda c, a, ch: ch.buckets(a.address)):
            click.echo(f"{name}/")
        return
    bucket_name, _, prefix = target.partition("/")

    async def action(store: Any) -> Any:
        from .namespace import list_objects

        return await list_objects(store, bucket_name, prefix)

    for entry in _run_store(obj, action):
        fid = f"{entry.fid[:16]}…" if entry.fid else "-" + " " * 16  # zero bytes: no FID
        click.echo(f"{entry.size:>14}  {fid}  {entry.key}")


@main.command("stat")
@click.option("--json", "as_json", is_flag=True)
@click.argument("target")
@click.pass_obj
@handle_errors
def stat_cmd(obj: Context, as_json: bool, target: str) -> None:
    """FID, size, state, and per segment its hash, fragment hashes and nodes."""
    from .names import split_target

    bucket_name, key_name = split_target(target)

    async def action(store: Any) -> Any:
        from .errors import DeossError
        from .namespace import resolve

        entry = await resolve(store, bucket_name, key_name)
        if entry is None:
            return None
        info = await store.file_info(entry.fid)
        try:
            header = await store.stage_of(info)
        except DeossError:  # a file another key encrypted: the chain's facts still show
            header = None
        return entry, info, await store.endpoints(), header

    found = _run_store(obj, action)
    if found is None:  # zero bytes: nothing on the chain
        if as_json:
            click.echo(json.dumps({"bucket": bucket_name, "key": key_name, "fid": None, "size": 0,
                                   "stored_size": 0, "stage": None, "state": "empty",
                                   "completion": None, "segments": []}, indent=2))
        else:
            click.echo(f"{target}\n  size   0\n  state  empty: kept in the bucket's metadata "
                       "object (CESS stores no empty files)")
        return
    entry, info, endpoints, header = found
    data = {
        "bucket": bucket_name, "key": key_name, "fid": info.fid,
        "size": info.file_size if header is None else header.size, "stored_size": info.file_size,
        "stage": None if header is None else {"name": header.stage, "params": header.params},
        "state": info.state.value, "completion": info.completion,
        "segments": [
            {"index": i, "hash": seg.hash,
             "fragments": [{"index": j, "hash": f.hash, "miner": f.miner, "avail": f.avail,
                            "endpoint": endpoints.get(f.miner)} for j, f in enumerate(seg.fragments)]}
            for i, seg in enumerate(info.segments)
        ],
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{target}\n  fid    {info.fid}\n  size   {data['size']}\n  state  {info.state.value}")
    if header is not None:
        click.echo(f"  stage  {header.stage} {json.dumps(header.params)} "
                   f"({info.file_size} bytes stored)")
    for seg in data["segments"]:
        click.echo(f"  segment {seg['index']}: {seg['hash']}")
        for frag in seg["fragments"]:
            click.echo(f"    {frag['index']:>2} {frag['hash']}  {frag['endpoint'] or frag['miner']}")


@main.command("verify")
@click.option("--repair", is_flag=True,
              help="rebuild missing, corrupt or unreachable fragments on healthy nodes; "
                   "delete orphaned files")
@click.option("--grace", type=click.FloatRange(min=0), default=24 * 3600.0, show_default=True,
              help="seconds a file must be on the chain before it can count as orphaned")
@click.option("--json", "as_json", is_flag=True)
@click.argument("target", required=False)
@click.pass_obj
@handle_errors
def verify_cmd(obj: Context, repair: bool, grace: float, as_json: bool, target: str | None) -> None:
    """Check every fragment of BUCKET[/KEY] (default: every object) against its hash.

    For a bucket (default: every bucket) also list orphaned files: versions that no
    mount's metadata object names any more (two mounts wrote one file), older than
    --grace. Exits non-zero while a bad fragment or an orphan is left (not repaired, or
    without --repair).
    """
    from .namespace import Names
    from .repair import describe, describe_orphan, verify

    def show(file_report: Any, endpoints: dict[str, str]) -> None:
        if as_json or not file_report.problems:
            return
        click.echo(f"{file_report.name} ({file_report.fid[:16]}…)")
        for problem in file_report.problems:
            click.echo(f"  {describe(problem, endpoints)}")

    async def action(store: Any) -> Any:
        endpoints = await store.endpoints()
        return await verify(store, target, repair=repair, grace=grace, names=Names(store),
                            progress=lambda file_report: show(file_report, endpoints))

    report = _run_store(obj, action)
    if as_json:
        click.echo(json.dumps({
            "files": [{"name": f.name, "fid": f.fid, "fragments": f.fragments,
                       "problems": [vars(p) for p in f.problems]} for f in report.files],
            "fragments": report.fragments, "problems": len(report.problems),
            "repaired": len(report.repaired), "unresolved": len(report.unresolved),
            "orphans": [vars(o) for o in report.orphans]}, indent=2))
    else:
        for orphan in report.orphans:
            click.echo(describe_orphan(orphan))
        click.echo(f"checked {report.fragments} fragments of {len(report.files)} files: "
                   f"{len(report.problems)} bad, {len(report.repaired)} repaired; "
                   f"{len(report.orphans)} orphaned files, "
                   f"{len(report.orphans) - len(report.orphans_left)} deleted")
    left = report.unresolved
    if left:
        what = "could not be repaired" if repair else "need repair (run `deossfs verify --repair`)"
        fail(f"{len(left)} fragments {what}")
    if report.orphans_left:
        what = "could not be deleted" if repair else "left (`deossfs verify --repair` deletes them)"
        fail(f"{len(report.orphans_left)} orphaned files {what}")


# ---- chain -----------------------------------------------------------------


@main.group("chain")
def chain_group() -> None:
    """The chain itself."""


@chain_group.command("verify")
@click.pass_obj
@handle_errors
def chain_verify(obj: Context) -> None:
    """Verify the embedded ledger's signed transaction log."""
    count = _chain_call(obj, lambda c, a, ch: ch.verify_log())
    click.echo(f"ledger log verified: {count} signed transactions")


# ---- the peer cache network ------------------------------------------------


@main.command("serve-cache")
@click.option("--host", help="address to listen on (default serve.host)")
@click.option("--port", type=int, help="port (default serve.port; 0 picks one)")
@click.option("--register/--no-register", default=None,
              help="put the endpoint in the chain's gateway list (default serve.register)")
@click.pass_obj
@handle_errors
def serve_cache_cmd(obj: Context, host: str | None, port: int | None, register: bool | None) -> None:
    """Serve this instance's segment cache to peers, until Ctrl-C (as a mount does with
    serve.enabled). Access follows [access]: public (a blacklist) or private (a whitelist)."""
    import signal
    import threading
    from dataclasses import replace
    from functools import partial

    from .cache import Counters, SegmentCache
    from .errors import ConfigError
    from .p2p.peers import serve_peers

    config = obj.config()
    account = obj.account(config)
    serve = config.serve
    serve = replace(serve, host=host if host is not None else serve.host,
                    port=port if port is not None else serve.port,
                    register=register if register is not None else serve.register)
    workspace = config.workspace_dir(account.address)
    counters = Counters(workspace / "counters")
    cache = SegmentCache.from_config(config, account.address, counters)
    if not cache.enabled:
        raise ConfigError("the cache is off (cache.enabled = false, or cache.size too small): "
                          "there is nothing to serve")
    chain = obj.chain(config, account)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))

    async def main_task() -> None:
        async with trio.open_nursery() as nursery:
            endpoint = await nursery.start(partial(
                serve_peers, cache, account, chain, serve, config.access,
                workspace / "peer-replay.sqlite3", counters=counters))
            click.echo(f"serving the cache at {endpoint}", err=True)
            if threading.current_thread() is not threading.main_thread():
                return
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    try:
        trio.run(main_task)
    finally:
        cache.close()
        counters.close()
        chain.close()


# the mount's and the gateway's commands live in modules of their own (see their docstrings)
from . import cli_gateway, cli_mount  # noqa: E402, F401
