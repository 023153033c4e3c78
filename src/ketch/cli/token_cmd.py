"""``ketch token create|list|delete``: proxy auth tokens for ``requires_proxy_auth`` endpoints."""

from __future__ import annotations

import click

from ._util import ago, rpc


@click.group(name="token")
def token_group() -> None:
    """Manage proxy auth tokens (the Modal-Key / Modal-Secret headers of private web endpoints)."""


@token_group.command()
def create() -> None:
    """Create a proxy auth token; its secret is shown once.

    Example: curl -H "Modal-Key: wk-..." -H "Modal-Secret: ws-..." http://127.0.0.1:PORT/
    """
    reply = rpc("ProxyTokenCreate", {})
    click.echo(f"Token ID:     {reply['token_id']}")
    click.echo(f"Token secret: {reply['token_secret']}")
    click.echo("Send them as the Modal-Key and Modal-Secret headers. The secret is not shown again.", err=True)


@token_group.command(name="list")
def list_tokens() -> None:
    """List proxy auth tokens (ids only)."""
    tokens = rpc("ProxyTokenList", {})["tokens"]
    if not tokens:
        click.echo("no proxy auth tokens (create one with `ketch token create`)")
    for token in tokens:
        click.echo(f"{token['token_id']}  created {ago(token['created_at'])}")


@token_group.command()
@click.argument("token_id")
def delete(token_id: str) -> None:
    """Delete proxy auth token TOKEN_ID; requests carrying it get 401 from now on."""
    rpc("ProxyTokenDelete", {"token_id": token_id})
    click.echo(f"deleted {token_id}")
