"""``ketch token create|list|revoke|delete``: API tokens with a role, and proxy-auth tokens."""

from __future__ import annotations

import click

from ._util import ago, rpc


@click.group(name="token")
def token_group() -> None:
    """Manage API tokens (for other people and machines) and proxy-auth tokens (web endpoints)."""


@token_group.command()
@click.option(
    "--role",
    type=click.Choice(["invoke", "deploy", "admin"]),
    default=None,
    help="an API token: invoke (call deployed functions), deploy (also deploy apps), admin (all)",
)
def create(role: str | None) -> None:
    """Create a token; it is shown once.

    With --role, an API token for KETCH_TOKEN:

        KETCH_TOKEN=kt-... KETCH_SERVER_URL=https://host:port python client.py

    Without it, a proxy-auth token for requires_proxy_auth endpoints:

        curl -H "Modal-Key: wk-..." -H "Modal-Secret: ws-..." http://127.0.0.1:PORT/
    """
    if role is not None:
        reply = rpc("ApiTokenCreate", {"role": role})
        click.echo(f"Token ID: {reply['token_id']}")
        click.echo(f"Token:    {reply['token']}")
        click.echo(
            f"An API token with role {role!r}; give it as KETCH_TOKEN. It is not shown again.",
            err=True,
        )
        return
    reply = rpc("ProxyTokenCreate", {})
    click.echo(f"Token ID:     {reply['token_id']}")
    click.echo(f"Token secret: {reply['token_secret']}")
    click.echo(
        "Send them as the Modal-Key and Modal-Secret headers. The secret is not shown again.",
        err=True,
    )


@token_group.command(name="list")
def list_tokens() -> None:
    """List API tokens (ids and roles) and proxy-auth tokens (ids); never the tokens themselves."""
    api_tokens = rpc("ApiTokenList", {})["tokens"]
    proxy = rpc("ProxyTokenList", {})["tokens"]
    if not api_tokens and not proxy:
        click.echo("no tokens (create one with `ketch token create [--role ROLE]`)")
    for token in api_tokens:
        click.echo(f"{token['token_id']}  {token['role']:<7} created {ago(token['created_at'])}")
    for token in proxy:
        click.echo(f"{token['token_id']}  proxy   created {ago(token['created_at'])}")


@token_group.command()
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Revoke token TOKEN_ID (API or proxy-auth); requests carrying it are refused from now on."""
    if token_id.startswith("tk-"):
        rpc("ApiTokenRevoke", {"token_id": token_id})
    else:
        rpc("ProxyTokenDelete", {"token_id": token_id})
    click.echo(f"revoked {token_id}")


token_group.add_command(revoke, name="delete")  # the older name of ``revoke``
