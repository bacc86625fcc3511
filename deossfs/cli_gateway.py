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


# ---- S3 access keys ------------------------------------------------------------------


@gateway.group("key")
def gateway_key() -> None:
    """S3 access keys of this gateway, each bound to an account."""


def _key_store(obj: Context):  # noqa: ANN202
    from .gateway.credentials import KeyStore
    from .gateway.server import credentials_path

    config = obj.config()
    account = obj.account(config)
    return config, account, KeyStore.for_account(credentials_path(config, account), account)


@gateway_key.command("create")
@click.option("--account", "for_account", metavar="SS58",
              help="the account the key acts for (default: the gateway's own); it must have "
                   "authorized the gateway (`deossfs authorize GATEWAY` with its key)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def gateway_key_create(obj: Context, for_account: str | None, as_json: bool) -> None:
    """Create an access key id and secret for S3 clients. The secret is shown once."""
    import json

    from .gateway.auth import canonical_account

    config, account, keys = _key_store(obj)
    owner = canonical_account(for_account) if for_account else account.address
    if owner != account.address:
        chain = obj.chain(config, account)
        try:
            authorized = account.address in chain.authorized_gateways(owner)
        finally:
            chain.close()
        if not authorized:
            fail(f"account {owner} has not authorized this gateway ({account.address}): run "
                 f"`deossfs authorize {account.address}` with that account's key first")
    key = keys.create(owner)
    if as_json:
        click.echo(json.dumps({"access_key_id": key.access_key_id, "secret_access_key": key.secret,
                               "account": key.account}))
        return
    click.echo(f"access key id:     {key.access_key_id}")
    click.echo(f"secret access key: {key.secret}")
    click.echo(f"account:           {key.account}")
    click.echo("the secret is not shown again; e.g. aws configure, or rclone's s3 backend "
               "with provider Other and this gateway's URL as the endpoint")


@gateway_key.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def gateway_key_ls(obj: Context, as_json: bool) -> None:
    """The access keys (never their secrets)."""
    import json
    import time

    _, _, keys = _key_store(obj)
    listed = keys.list()
    if as_json:
        click.echo(json.dumps([{"access_key_id": k.access_key_id, "account": k.account,
                                "created": k.created} for k in listed]))
        return
    for key in listed:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created))
        click.echo(f"{key.access_key_id}  {key.account}  {when}")


@gateway_key.command("rm")
@click.argument("access_key_id")
@click.pass_obj
@handle_errors
def gateway_key_rm(obj: Context, access_key_id: str) -> None:
    """Remove an access key: it stops working at once, also in a running gateway."""
    _, _, keys = _key_store(obj)
    if not keys.remove(access_key_id):
        fail(f"no access key {access_key_id}; list them with `deossfs gateway key ls`")
    click.echo(f"access key {access_key_id} removed")
