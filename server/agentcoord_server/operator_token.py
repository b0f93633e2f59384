"""`agentcoord operator-token`: issues a server-wide OPERATOR token straight into Redis.

The server creates the first OPERATOR token only on its very first start (no token in Redis
yet). A Redis whose tokens were bootstrapped before the operator tier existed therefore has
none, and no RPC can make one (only the OPERATOR issues OPERATOR tokens). The same holds when
the operator token was lost or revoked. This command is the way back without wiping data:
whoever can reach the Redis (its URL and password, or the data directory of the embedded one)
already holds every secret the server has, so that is the credential it asks for.

It also registers namespace `default` when that namespace holds tokens but predates the
namespace registry (what the first start does on a fresh Redis), so the operator sees it in
ListNamespaces and can issue its tokens and set its quotas.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .store.tokens import TokenRecord

ISSUER = "local"
"""`issued_by` of the tokens this command issues (ListTokens shows it)."""


async def issue_operator_token(url: str, description: str) -> tuple[str, TokenRecord, bool]:
    """Issues an OPERATOR token on the Redis `url` names (any REDIS_URL form). Returns (the
    secret, its record, whether namespace `default` was registered now).

    Raises RedisStartError (one line) when the Redis cannot be used.
    """
    # Imported here, as `serve` does: the rest of the CLI starts without the server's modules.
    from agentcoord.v1 import access_pb2

    from .app import BOOTSTRAP_NAMESPACE, OPERATOR_AGENT
    from .identity import OPERATOR_NAMESPACE
    from .redis_client import close_redis, connect_redis, parse_redis_url
    from .store.keys import Keyspace
    from .store.namespaces import NamespaceStore, record_key
    from .store.tokens import TokenStore

    redis, _ = await connect_redis(parse_redis_url(url), max_connections=4, timeout=10.0)
    try:
        tokens = TokenStore(redis)
        token, record = await tokens.issue(
            OPERATOR_NAMESPACE,
            OPERATOR_AGENT,
            access_pb2.ACCESS_TIER_OPERATOR,
            description=description,
            issued_by=ISSUER,
        )
        registered = False
        default = Keyspace(BOOTSTRAP_NAMESPACE)
        if await redis.zcard(default.key("tokens", "index")) and not await redis.exists(
            record_key(BOOTSTRAP_NAMESPACE)
        ):
            await NamespaceStore(redis, tokens).create(
                BOOTSTRAP_NAMESPACE,
                created_by=ISSUER,
                description="registered by `agentcoord operator-token`: its tokens predate "
                "the namespace registry",
            )
            registered = True
        return token, record, registered
    finally:
        await close_redis(redis)


def _issue(redis_url: str | None, data_dir: Path, description: str) -> tuple[str, TokenRecord, bool]:
    from .embedded_redis import DataDirectoryInUse, EmbeddedRedis

    if redis_url:
        return asyncio.run(issue_operator_token(redis_url, description))
    if not data_dir.is_dir():
        raise click.ClickException(
            f"{data_dir} is no data directory; give the server's --data-dir, or --redis-url"
        )
    embedded = EmbeddedRedis(data_dir)
    try:
        url = embedded.start()  # no server owns the directory: start its Redis for this
    except DataDirectoryInUse:
        return asyncio.run(issue_operator_token(embedded.url, description))  # the live one's
    try:
        return asyncio.run(issue_operator_token(url, description))
    finally:
        embedded.stop()


@click.command("operator-token")
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    default=None,
    help="The Redis the servers use (any form `serve` takes). Unset: the embedded Redis of "
    "--data-dir (its running server's, or started for this command while no server runs).",
)
@click.option(
    "--data-dir",
    envvar="AGENTCOORD_DATA_DIR",
    default=".agentcoord",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The server's data directory, for the embedded Redis.",
)
@click.option(
    "--output",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the token to this file (0600; e.g. <data-dir>/operator-token) instead of "
    "stdout. An existing file is not overwritten.",
)
@click.option(
    "--description",
    default="OPERATOR token issued locally (agentcoord operator-token)",
    help="Free text shown by `token list`.",
)
def operator_token(
    redis_url: str | None, data_dir: Path, output: Path | None, description: str
) -> None:
    """Issue a server-wide OPERATOR token straight into Redis, e.g. on a Redis whose tokens
    predate the operator tier, or when the operator token was lost or revoked. Needs no token:
    access to the Redis (or the data directory) is the credential. Prints the token (shown
    once) on stdout unless --output is given."""
    from .app import BOOTSTRAP_NAMESPACE, write_secret_file
    from .embedded_redis import EmbeddedRedisError
    from .errors import DomainError
    from .redis_client import RedisStartError

    if output is not None and output.exists():
        raise click.ClickException(f"{output} exists; remove it or choose another --output")
    try:
        token, record, registered = _issue(redis_url, data_dir, description)
    except (RedisStartError, EmbeddedRedisError, DomainError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if registered:
        click.echo(f"registered namespace {BOOTSTRAP_NAMESPACE} (it held tokens)", err=True)
    where = "shown only now" if output is None else f"written to {output}"
    click.echo(f"issued OPERATOR token {record.token_id}; the token is {where}", err=True)
    if output is None:
        click.echo(token)
    else:
        write_secret_file(output, token)
