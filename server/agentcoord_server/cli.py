"""`agentcoord` command line: `agentcoord serve`, `agentcoord token …`, and the operator
commands of ops_cli.py (`stats`, `tasks …`, `signals tail`)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import click

from . import ops_cli
from .config import Settings, TtlPolicy
from .operator_token import operator_token
from .ops_cli import Connection, connection_options


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
    help="redis://, rediss:// or unix:// URL; redis+cluster://host:port[,host:port…] (or "
    "rediss+cluster://) for a Redis Cluster; redis+sentinel://host:port[,host:port…]/<master> "
    "for Sentinel. Unset: start an embedded Redis.",
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
    "--shutdown-drain",
    envvar="AGENTCOORD_SHUTDOWN_DRAIN",
    default=1.0,
    type=click.FloatRange(min=0),
    help="Seconds a stopping server (SIGTERM/SIGINT) answers new calls UNAVAILABLE, health "
    "NOT_SERVING, before the grace period for in-flight calls.",
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
    "--redis-timeout",
    envvar="AGENTCOORD_REDIS_TIMEOUT",
    default=5.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a Redis connect or reply may take; then the call fails UNAVAILABLE.",
)
@click.option(
    "--ttl",
    "ttl_spec",
    envvar="AGENTCOORD_TTL",
    default=None,
    help='TTL overrides in seconds, e.g. "coordination=60,session=600".',
)
@click.option(
    "--bootstrap-token",
    envvar="AGENTCOORD_BOOTSTRAP_TOKEN",
    default=None,
    show_default=False,
    help="On first start (no tokens yet), register this as the STEWARD token of namespace "
    "'default' instead of generating one into <data-dir>/bootstrap-token.",
)
@click.option(
    "--bootstrap-operator-token",
    envvar="AGENTCOORD_BOOTSTRAP_OPERATOR_TOKEN",
    default=None,
    show_default=False,
    help="On first start (no tokens yet), register this as the server-wide OPERATOR token "
    "instead of generating one into <data-dir>/operator-token.",
)
@click.option(
    "--quota-tokens",
    envvar="AGENTCOORD_QUOTA_TOKENS",
    default=0,
    type=click.IntRange(min=0),
    help="Default live tokens per namespace (0: no limit); the operator sets each "
    "namespace's own with `agentcoord namespaces quota`.",
)
@click.option(
    "--quota-pending-tasks",
    envvar="AGENTCOORD_QUOTA_PENDING_TASKS",
    default=0,
    type=click.IntRange(min=0),
    help="Default pending tasks (queued or backing off) per namespace (0: no limit).",
)
@click.option(
    "--quota-signals-per-second",
    envvar="AGENTCOORD_QUOTA_SIGNALS_PER_SECOND",
    default=0,
    type=click.IntRange(min=0),
    help="Default signals per second per namespace, a token bucket shared by every server "
    "process (0: no limit).",
)
@click.option(
    "--quota-live-subscriptions",
    envvar="AGENTCOORD_QUOTA_LIVE_SUBSCRIPTIONS",
    default=0,
    type=click.IntRange(min=0),
    help="Default live subscriptions (open Subscribe streams) per namespace, counted over "
    "every server process on the Redis (0: no limit).",
)
@click.option(
    "--subscription-lease-seconds",
    envvar="AGENTCOORD_SUBSCRIPTION_LEASE_SECONDS",
    default=30.0,
    type=click.FloatRange(min=0.1),
    help="How long an open stream counts toward --quota-live-subscriptions without its "
    "server renewing it: a killed server's streams stop counting within it.",
)
@click.option(
    "--quota-memory-entries",
    envvar="AGENTCOORD_QUOTA_MEMORY_ENTRIES",
    default=0,
    type=click.IntRange(min=0),
    help="Default working-memory entries per namespace (0: no limit).",
)
@click.option(
    "--quota-memory-bytes",
    envvar="AGENTCOORD_QUOTA_MEMORY_BYTES",
    default=0,
    type=click.IntRange(min=0),
    help="Default bytes of working-memory values per namespace (0: no limit).",
)
@click.option(
    "--memory-history",
    envvar="AGENTCOORD_MEMORY_HISTORY",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Working-memory events each namespace keeps for WatchEntries to resume from; older "
    "revisions are OUT_OF_RANGE.",
)
@click.option(
    "--auth-cache-seconds",
    envvar="AGENTCOORD_AUTH_CACHE_SECONDS",
    default=5.0,
    type=click.FloatRange(min=0, max=5),
    help="How long a validated token is trusted before Redis is asked again: the bound on how "
    "late a revocation takes effect (also for open streams).",
)
@click.option(
    "--auth-failure-limit",
    envvar="AGENTCOORD_AUTH_FAILURE_LIMIT",
    default=20,
    type=click.IntRange(min=0),
    help="Failed authentications one peer address may make per --auth-failure-window before "
    "its calls are refused (RESOURCE_EXHAUSTED, with a retry delay) without a Redis lookup. "
    "0: no limit.",
)
@click.option(
    "--auth-failure-window",
    envvar="AGENTCOORD_AUTH_FAILURE_WINDOW",
    default=10.0,
    type=click.FloatRange(min=0.001),
    help="Seconds in which --auth-failure-limit failures are forgiven (a token bucket).",
)
@click.option(
    "--tls-cert",
    envvar="AGENTCOORD_TLS_CERT",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate chain; with --tls-key, serve TLS.",
)
@click.option(
    "--tls-key",
    envvar="AGENTCOORD_TLS_KEY",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--tls-client-ca",
    envvar="AGENTCOORD_TLS_CLIENT_CA",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM CA bundle: require client certificates signed by it (mTLS).",
)
@click.option(
    "--signal-queue-size",
    envvar="AGENTCOORD_SIGNAL_QUEUE_SIZE",
    default=1024,
    type=click.IntRange(min=1),
    help="Signals one subscription buffers for a slow reader; beyond it the stream ends RESOURCE_EXHAUSTED.",
)
@click.option(
    "--max-value-bytes",
    envvar="AGENTCOORD_MAX_VALUE_BYTES",
    default=1024 * 1024,
    type=click.IntRange(min=1),
    help="Largest value a working-memory entry, shared context item or collaboration state may hold, in bytes.",
)
@click.option(
    "--metrics-listen",
    envvar="AGENTCOORD_METRICS_LISTEN",
    default=None,
    help="host:port to serve Prometheus metrics on (/metrics), e.g. 127.0.0.1:9464. Unset: no "
    "metrics.",
)
@click.option(
    "--max-task-bytes",
    envvar="AGENTCOORD_MAX_TASK_BYTES",
    default=1024 * 1024,
    type=click.IntRange(min=1),
    help="Largest task payload, and task result, in bytes (serialized), each.",
)
@click.option(
    "--max-signal-bytes",
    envvar="AGENTCOORD_MAX_SIGNAL_BYTES",
    default=1024 * 1024,
    type=click.IntRange(min=1),
    help="Largest signal data, in bytes (serialized).",
)
@click.option(
    "--max-pattern-bytes",
    envvar="AGENTCOORD_MAX_PATTERN_BYTES",
    default=1024 * 1024,
    type=click.IntRange(min=1),
    help="Largest pattern code (UTF-8), and pattern context (serialized), in bytes, each.",
)
@click.option(
    "--max-conflict-bytes",
    envvar="AGENTCOORD_MAX_CONFLICT_BYTES",
    default=1024 * 1024,
    type=click.IntRange(min=1),
    help="Largest conflict positions, and conflict interests, in bytes (serialized), each.",
)
@click.option(
    "--workers",
    "workers_text",
    envvar="AGENTCOORD_WORKERS",
    default=None,
    show_default="the cores this process may run on",
    help="Server processes sharing the port (SO_REUSEPORT) under one parent, which owns the "
    "embedded Redis and restarts a worker that dies. 1: a single process.",
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
    shutdown_drain: float,
    max_message_bytes: int,
    max_concurrent_rpcs: int | None,
    redis_max_connections: int,
    redis_timeout: float,
    ttl_spec: str | None,
    signal_queue_size: int,
    insecure_dev_identity: bool,
    bootstrap_token: str | None,
    bootstrap_operator_token: str | None,
    quota_tokens: int,
    quota_pending_tasks: int,
    quota_signals_per_second: int,
    quota_live_subscriptions: int,
    subscription_lease_seconds: float,
    quota_memory_entries: int,
    quota_memory_bytes: int,
    memory_history: int,
    auth_cache_seconds: float,
    auth_failure_limit: int,
    auth_failure_window: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    max_value_bytes: int,
    metrics_listen: str | None,
    max_task_bytes: int,
    max_signal_bytes: int,
    max_pattern_bytes: int,
    max_conflict_bytes: int,
    workers_text: str | None,
) -> None:
    """Serve agentcoord over gRPC until SIGTERM or SIGINT.

    OpenTelemetry tracing is on when the standard OTEL_* environment asks for it
    (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER; needs agentcoord[otel])."""
    from .app import is_loopback
    from .app import serve as run_server
    from .logs import configure_logging
    from .redis_client import parse_redis_url

    workers = parse_workers(workers_text)
    try:
        ttl = TtlPolicy.parse(ttl_spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    if insecure_dev_identity and not is_loopback(listen):
        raise click.BadParameter(
            "--insecure-dev-identity binds loopback addresses only", param_hint="--listen"
        )
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-key")
    if tls_client_ca is not None and tls_cert is None:
        raise click.BadParameter(
            "--tls-client-ca needs --tls-cert and --tls-key", param_hint="--tls-client-ca"
        )
    if redis_url:
        try:
            parse_redis_url(redis_url)
        except ValueError as exc:
            raise click.ClickException(f"--redis-url: {exc}") from None
    settings = Settings(
        listen=listen,
        redis_url=redis_url or None,
        data_dir=data_dir,
        log_format=log_format,
        log_level=log_level,
        shutdown_grace=shutdown_grace,
        shutdown_drain=shutdown_drain,
        max_message_bytes=max_message_bytes,
        max_concurrent_rpcs=max_concurrent_rpcs,
        redis_max_connections=redis_max_connections,
        redis_timeout=redis_timeout,
        insecure_dev_identity=insecure_dev_identity,
        ttl=ttl,
        signal_queue_size=signal_queue_size,
        bootstrap_token=bootstrap_token or None,
        bootstrap_operator_token=bootstrap_operator_token or None,
        quota_tokens=quota_tokens,
        quota_signals_per_second=quota_signals_per_second,
        quota_pending_tasks=quota_pending_tasks,
        quota_live_subscriptions=quota_live_subscriptions,
        subscription_lease_seconds=subscription_lease_seconds,
        quota_memory_entries=quota_memory_entries,
        quota_memory_bytes=quota_memory_bytes,
        memory_history=memory_history,
        auth_cache_seconds=auth_cache_seconds,
        auth_failure_limit=auth_failure_limit,
        auth_failure_window=auth_failure_window,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        max_value_bytes=max_value_bytes,
        metrics_listen=metrics_listen or None,
        max_task_bytes=max_task_bytes,
        max_signal_bytes=max_signal_bytes,
        max_pattern_bytes=max_pattern_bytes,
        max_conflict_bytes=max_conflict_bytes,
    )
    try:
        settings.check_size_limits()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-message-bytes") from None
    configure_logging(log_format, log_level, cache=True)
    if workers == 1:
        run_until_exit(lambda: run_server(settings))
    else:
        from .workers import serve_workers

        run_until_exit(lambda: serve_workers(settings, workers))


def parse_workers(text: str | None) -> int:
    """`--workers`: a whole number ≥ 1; unset: the cores this process may run on. Anything
    else ends the command with one line (not click's usage text)."""
    if text is None or text == "":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise click.ClickException(f"--workers must be a whole number ≥ 1, not {text!r}")
    return workers


def run_until_exit(serving: Callable[[], Awaitable[None]]) -> NoReturn:
    """Runs `serving()` on uvloop, then exits the process (0, or 1 with its one-line error).

    The exit happens inside the loop: ending the loop would cancel the calls grpc is still
    answering (UNAVAILABLE, draining) and shut grpc down, which fails calls it has received
    but not handed to us with CANCELLED. Exiting closes the connections, which clients see as
    UNAVAILABLE. Redis and everything of ours is already stopped by then.
    """
    from .app import ServeFailed
    from .embedded_redis import EmbeddedRedisError
    from .redis_client import RedisStartError

    async def run() -> None:
        try:
            await serving()
        except (EmbeddedRedisError, ServeFailed, RedisStartError) as exc:
            click.echo(f"agentcoord: {exc}", err=True)
            code = 1
        else:
            code = 0
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    try:
        import uvloop
    except ImportError:  # non-Linux platforms
        asyncio.run(run())
    else:
        uvloop.run(run())
    raise AssertionError("unreachable: run() exits the process")


@main.group()
@connection_options
def token() -> None:
    """Issue, revoke and list the tokens of your namespace (needs a STEWARD token), or, with
    the OPERATOR token and --namespace, of any namespace."""


namespace_option = click.option(
    "--namespace",
    default="",
    help="The namespace (OPERATOR token only; default: your token's own).",
)


@token.command("issue")
@click.argument("agent_id")
@click.option(
    "--tier",
    required=True,
    type=click.Choice(
        ["OBSERVER", "CONTRIBUTOR", "VALIDATOR", "STEWARD", "OPERATOR"], case_sensitive=False
    ),
)
@click.option(
    "--lifetime",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds the token works. Unset: until revoked.",
)
@click.option("--description", default="", help="Free text shown by `token list`.")
@namespace_option
@click.pass_obj
def token_issue(
    connection: Connection,
    agent_id: str,
    tier: str,
    lifetime: float | None,
    description: str,
    namespace: str,
) -> None:
    """Issue a token for AGENT_ID; prints the token (shown once) on stdout."""
    client = connection.client
    issued = ops_cli.call(
        lambda: client.admin.issue_token(
            agent_id, tier.upper(), lifetime=lifetime, description=description, namespace=namespace
        )
    )
    click.echo(
        f"issued {issued.info.token_id} for {agent_id} ({tier.upper()}) in namespace "
        f"{issued.info.namespace}; the token is shown only now",
        err=True,
    )
    click.echo(issued.token)


@token.command("revoke")
@click.argument("token_id")
@namespace_option
@click.pass_obj
def token_revoke(connection: Connection, token_id: str, namespace: str) -> None:
    """Revoke the token TOKEN_ID of your namespace; prints what was revoked (JSON)."""
    info = ops_cli.call(
        lambda: connection.client.admin.revoke_token(token_id, namespace=namespace)
    )
    ops_cli.echo_json(ops_cli.to_dict(info))


@token.command("list")
@namespace_option
@click.pass_obj
def token_list(connection: Connection, namespace: str) -> None:
    """List the live tokens of your namespace, one JSON object per line (never secrets)."""
    for info in ops_cli.call(
        lambda: list(connection.client.admin.iter_tokens(namespace=namespace))
    ):
        ops_cli.echo_json(ops_cli.to_dict(info))


ops_cli.register(main)
main.add_command(operator_token)


if __name__ == "__main__":
    main()
