"""`agentcoord` command line: `agentcoord serve` (more subcommands come with their issues)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from .config import Settings, TtlPolicy


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="agentcoord")
def main() -> None:
    """agentcoord: a gRPC coordination server for fleets of AI agents."""


@main.command()
@click.option(
    "--listen",
    envvar="AGENTCOORD_LISTEN",
    default="127.0.0.1:50051",
    help="host:port to serve gRPC on.",
)
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    default=None,
    help="redis://, rediss:// or unix:// URL; unset: start an embedded Redis.",
)
@click.option(
    "--data-dir",
    envvar="AGENTCOORD_DATA_DIR",
    default=".agentcoord",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded Redis keeps its data.",
)
@click.option(
    "--log-format",
    envvar="AGENTCOORD_LOG_FORMAT",
    default="auto",
    type=click.Choice(["auto", "json", "console"]),
    help="auto: console on a TTY, JSON otherwise.",
)
@click.option(
    "--log-level",
    envvar="AGENTCOORD_LOG_LEVEL",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--shutdown-grace",
    envvar="AGENTCOORD_SHUTDOWN_GRACE",
    default=10.0,
    type=click.FloatRange(min=0),
    help="Seconds in-flight calls get on SIGTERM/SIGINT.",
)
@click.option(
    "--max-message-bytes",
    envvar="AGENTCOORD_MAX_MESSAGE_BYTES",
    default=4 * 1024 * 1024,
    type=click.IntRange(min=1024),
    help="Largest request or response, in bytes.",
)
@click.option(
    "--max-concurrent-rpcs",
    envvar="AGENTCOORD_MAX_CONCURRENT_RPCS",
    default=None,
    type=click.IntRange(min=1),
    help="Calls served at once; more are refused with RESOURCE_EXHAUSTED. Unset: no limit.",
)
@click.option(
    "--redis-max-connections",
    envvar="AGENTCOORD_REDIS_MAX_CONNECTIONS",
    default=128,
    type=click.IntRange(min=1),
    help="Size of the Redis connection pool.",
)
@click.option(
    "--ttl",
    "ttl_spec",
    envvar="AGENTCOORD_TTL",
    default=None,
    help='TTL overrides in seconds, e.g. "coordination=60,session=600".',
)
@click.option(
    "--insecure-dev-identity",
    envvar="AGENTCOORD_INSECURE_DEV_IDENTITY",
    is_flag=True,
    default=False,
    help="Trust x-agent-id/x-namespace/x-access-tier metadata. Loopback only; development only.",
)
def serve(
    listen: str,
    redis_url: str | None,
    data_dir: Path,
    log_format: str,
    log_level: str,
    shutdown_grace: float,
    max_message_bytes: int,
    max_concurrent_rpcs: int | None,
    redis_max_connections: int,
    ttl_spec: str | None,
    insecure_dev_identity: bool,
) -> None:
    """Serve agentcoord over gRPC until SIGTERM or SIGINT."""
    from .app import is_loopback
    from .app import serve as run_server
    from .logs import configure_logging

    try:
        ttl = TtlPolicy.parse(ttl_spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    if insecure_dev_identity and not is_loopback(listen):
        raise click.BadParameter(
            "--insecure-dev-identity binds loopback addresses only", param_hint="--listen"
        )
    settings = Settings(
        listen=listen,
        redis_url=redis_url or None,
        data_dir=data_dir,
        log_format=log_format,
        log_level=log_level,
        shutdown_grace=shutdown_grace,
        max_message_bytes=max_message_bytes,
        max_concurrent_rpcs=max_concurrent_rpcs,
        redis_max_connections=redis_max_connections,
        insecure_dev_identity=insecure_dev_identity,
        ttl=ttl,
    )
    configure_logging(log_format, log_level)
    try:
        import uvloop
    except ImportError:  # non-Linux platforms
        asyncio.run(run_server(settings))
    else:
        uvloop.run(run_server(settings))


if __name__ == "__main__":
    main()
