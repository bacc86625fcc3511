"""The command line of the HTTP gateway: `deossfs gateway` and `deossfs authorize`.

Apart from cli.py (which is past 800 lines) because these commands concern another
program (a long-running server) and the accounts it serves; they register on cli.main.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .cli import Context, _chain_call, fail, handle_errors, main


@main.group("gateway", invoke_without_command=True)
@click.option("--listen", metavar="HOST:PORT", help="where to listen (default gateway.listen)")
@click.option("--url-file", type=click.Path(dir_okay=False), hidden=True,
              help="write the URL listened at to this file once serving (devnets, tests)")
@click.pass_context
@handle_errors
def gateway(ctx: click.Context, listen: str | None, url_file: str | None) -> None:
    """Serve the HTTP gateway (DeOSS's REST API) in the foreground, one log line per
    request, until Ctrl-C or SIGTERM. docs/gateway.md describes the routes."""
    if ctx.invoked_subcommand is not None:
        return
    from .config import parse_listen
    from .gateway.server import run_gateway

    obj: Context = ctx.obj
    config = obj.config()
    if listen is not None:
        parse_listen(listen, "--listen")
    account = obj.account(config)
    chain = obj.chain(config, account)
    for name in ("deossfs.gateway", "deossfs.gateway.access"):
        logger = logging.getLogger(name)
        logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))

    def ready(url: str) -> None:
        if url_file:
            target = Path(url_file)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(url + "\n")
            tmp.replace(target)

    try:
        run_gateway(config, account, chain, listen, on_ready=ready)
    finally:
        chain.close()


@main.command("authorize")
@click.argument("gateway_account")
@click.option("--cancel", is_flag=True, help="withdraw the authorization instead")
@click.pass_obj
@handle_errors
def authorize_cmd(obj: Context, gateway_account: str, cancel: bool) -> None:
    """Let the gateway GATEWAY_ACCOUNT store, read and delete this account's files
    (Oss.authorize), or stop it (--cancel)."""
    from .keys import valid_address

    if not valid_address(gateway_account):
        fail(f"{gateway_account!r} is not an SS58 account: give the gateway's address "
             "(its log says it at start)")
    if cancel:
        _chain_call(obj, lambda c, a, ch: ch.cancel_authorize(gateway_account))
        click.echo(f"gateway {gateway_account} may no longer act for this account")
        return
    _chain_call(obj, lambda c, a, ch: ch.authorize(gateway_account))
    click.echo(f"gateway {gateway_account} may now store, read and delete this account's files")


@gateway.command("sign")
@click.option("--curl", is_flag=True, help="print them as curl -H arguments")
@click.pass_obj
@handle_errors
def gateway_sign(obj: Context, curl: bool) -> None:
    """Print fresh Account, Message and Signature headers for one request to a gateway,
    signed with this config's key (each Message is accepted once, for 5 minutes):

        curl -X PUT $GW/file $(deossfs gateway sign --curl) -F file=@photo.jpg
    """
    from .gateway_client import GatewayClient

    config = obj.config()
    account = obj.account(config)
    headers = GatewayClient("http://unused", account).sign()
    if curl:
        click.echo(" ".join(f"-H {name}:{value}" for name, value in headers.items()))
    else:
        for name, value in headers.items():
            click.echo(f"{name}: {value}")
