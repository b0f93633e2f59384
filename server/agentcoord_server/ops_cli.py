"""The operator commands of `agentcoord`: stats, health, tasks, signals, namespaces (and the connection options every
client command shares, `token` included).

Every command talks to a server through the Python client. Where it connects and as whom comes
from flags or the environment, the same for every command:

    --server     AGENTCOORD_SERVER      host:port (default 127.0.0.1:50051)
    --token      AGENTCOORD_TOKEN       bearer token
    --token-file AGENTCOORD_TOKEN_FILE  file holding the token (e.g. .agentcoord/bootstrap-token)
    --ca-file / --cert-file / --key-file  TLS roots, mTLS client certificate and key

Output is a table (rich) for people and, with `--json`, JSON for scripts: one object for
`stats`, one object per line for lists and for `signals tail`.
"""

from __future__ import annotations

import functools
import json
import signal as signal_module
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

TASK_STATUSES = ("pending", "claimed", "completed", "dead_lettered", "cancelled")


class Connection:
    """Where and as whom to connect; the client is made on first use (so `--help` needs no
    token) and closed when the command ends."""

    def __init__(
        self,
        server: str,
        token: str | None,
        token_file: Path | None,
        ca_file: Path | None,
        cert_file: Path | None,
        key_file: Path | None,
    ) -> None:
        if (cert_file is None) != (key_file is None):
            raise click.BadParameter(
                "--cert-file and --key-file go together", param_hint="--key-file"
            )
        self.server = server
        self._token = token
        self._token_file = token_file
        self._tls = (ca_file, cert_file, key_file)
        self._client: Any = None

    def token(self) -> str:
        """--token (or AGENTCOORD_TOKEN), else the first line of --token-file."""
        if self._token:
            return self._token
        if self._token_file is not None:
            token = self._token_file.read_text().strip()
            if token:
                return token
            raise click.UsageError(f"--token-file {self._token_file} is empty")
        raise click.UsageError(
            "no token: pass --token (or AGENTCOORD_TOKEN) or --token-file (or AGENTCOORD_TOKEN_FILE)"
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            from agentcoord import Client

            ca_file, cert_file, key_file = self._tls
            self._client = Client(
                self.server,
                token=self.token(),
                root_certificates=ca_file.read_bytes() if ca_file else None,
                client_certificate=cert_file.read_bytes() if cert_file else None,
                client_key=key_file.read_bytes() if key_file else None,
            )
        return self._client

    def channel(self) -> Any:
        """A plain channel to the server (TLS per --ca-file/--cert-file/--key-file), for
        calls that need no token such as the health check."""
        import grpc

        ca_file, cert_file, key_file = self._tls
        if ca_file is None and cert_file is None:
            return grpc.insecure_channel(self.server)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_file.read_bytes() if ca_file else None,
            private_key=key_file.read_bytes() if key_file else None,
            certificate_chain=cert_file.read_bytes() if cert_file else None,
        )
        return grpc.secure_channel(self.server, credentials)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def connection_options(func: F) -> F:
    """Adds the connection options (see the module docstring) to a click group or command and
    puts a `Connection` in `ctx.obj`."""
    options = [
        click.option(
            "--server",
            envvar="AGENTCOORD_SERVER",
            default="127.0.0.1:50051",
            show_default=True,
            show_envvar=True,
            help="host:port of the agentcoord server.",
        ),
        click.option(
            "--token",
            envvar="AGENTCOORD_TOKEN",
            default=None,
            show_envvar=True,
            help="Bearer token to call with.",
        ),
        click.option(
            "--token-file",
            envvar="AGENTCOORD_TOKEN_FILE",
            default=None,
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="File holding the token (e.g. .agentcoord/bootstrap-token); used without --token.",
        ),
        click.option(
            "--ca-file",
            envvar="AGENTCOORD_CA_FILE",
            default=None,
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="PEM roots to verify the server's certificate (TLS).",
        ),
        click.option(
            "--cert-file",
            envvar="AGENTCOORD_CERT_FILE",
            default=None,
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="PEM client certificate, for servers that require one (mTLS).",
        ),
        click.option(
            "--key-file",
            envvar="AGENTCOORD_KEY_FILE",
            default=None,
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="PEM private key of --cert-file.",
        ),
    ]

    def callback(
        ctx: click.Context,
        /,
        *args: Any,
        server: str,
        token: str | None,
        token_file: Path | None,
        ca_file: Path | None,
        cert_file: Path | None,
        key_file: Path | None,
        **kwargs: Any,
    ) -> Any:
        connection = Connection(server, token, token_file, ca_file, cert_file, key_file)
        ctx.obj = connection
        ctx.call_on_close(connection.close)
        return ctx.invoke(func, *args, **kwargs)

    callback.__name__ = func.__name__
    callback.__doc__ = func.__doc__
    # Options declared below this decorator belong to the command too.
    callback.__click_params__ = getattr(func, "__click_params__", [])  # type: ignore[attr-defined]
    wrapped: Any = click.pass_context(callback)
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped  # type: ignore[no-any-return]


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def call(fn: Callable[[], Any]) -> Any:
    """Runs a client call; an AgentcoordError becomes a one-line CLI error (exit code 1)."""
    from agentcoord import AgentcoordError

    try:
        return fn()
    except AgentcoordError as exc:
        raise click.ClickException(str(exc)) from None


def to_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, sort_keys=False))


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, scalar) pairs of a JSON-like value; lists of scalars stay one value."""
    if isinstance(value, Mapping):
        if not value and prefix:
            yield prefix, ""
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
        for i, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{i}]")
    elif isinstance(value, list):
        yield prefix, ", ".join(map(str, value))
    else:
        yield prefix, value


def _console() -> Any:
    from rich.console import Console

    # Wide enough that a pipe or a test runner gets whole rows, not ellipses.
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def print_table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", min_width=len(title) if title else None)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _console().print(table)


def _split(
    value: Any, prefix: str, scalars: list[tuple[str, Any]], tables: list[tuple[str, list[Any]]]
) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _split(item, f"{prefix}.{key}" if prefix else str(key), scalars, tables)
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        tables.append((prefix, value))
    else:
        scalars.extend(_flatten(value, prefix))


def print_record(title: str | None, record: Mapping[str, Any]) -> None:
    """A message as a field/value table, plus a table per repeated message field (wherever it
    is nested), one row per element."""
    scalars: list[tuple[str, Any]] = []
    tables: list[tuple[str, list[Any]]] = []
    _split(record, "", scalars, tables)
    if scalars:
        print_table(title, ("field", "value"), scalars)
    for name, items in tables:
        rows = [dict(_flatten(item)) for item in items]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        print_table(name, columns, ([row.get(c, "") for c in columns] for row in rows))


# -- stats ------------------------------------------------------------------------------------


@click.command()
@connection_options
@json_option
@click.pass_obj
def stats(connection: Connection, as_json: bool) -> None:
    """Show the server's statistics (GetServerStats) for your token's scope."""
    response = call(connection.client.admin.get_server_stats)
    record = to_dict(response)
    if as_json:
        echo_json(record)
    else:
        print_record(f"agentcoord {connection.server}", record)


# -- health -----------------------------------------------------------------------------------


@click.command()
@connection_options
@click.option("--service", default="", help="A service name; empty: the server as a whole.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True)
@click.pass_obj
def health(connection: Connection, service: str, timeout: float) -> None:
    """Ask the server's gRPC health service; exit 0 when SERVING, 1 otherwise (needs no token;
    for container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with connection.channel() as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    click.echo(status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise SystemExit(1)


# -- tasks ------------------------------------------------------------------------------------


TASK_COLUMNS = ("task_id", "task_type", "status", "priority", "attempts", "assignee", "updated", "last_error")


def _task_row(task: Mapping[str, Any]) -> list[Any]:
    status = str(task.get("status", "")).removeprefix("TASK_STATUS_").lower()
    attempts = f"{task.get('attempts', 0)}/{task.get('max_attempts', 0)}"
    return [
        task.get("task_id"),
        task.get("task_type"),
        status,
        task.get("priority", 0),
        attempts,
        task.get("assignee", ""),
        task.get("update_time", ""),
        task.get("last_error", ""),
    ]


def _emit_tasks(title: str, tasks: Iterable[Any], as_json: bool) -> None:
    records = [to_dict(t) for t in tasks]
    if as_json:
        for record in records:
            echo_json(record)
        return
    print_table(title, TASK_COLUMNS, (_task_row(r) for r in records))
    click.echo(f"{len(records)} task(s)", err=True)


def _pages(fetch: Callable[[str], Any], limit: int) -> list[Any]:
    """Tasks from successive pages until `limit` or the last page (pages may be short)."""
    found: list[Any] = []
    token = ""
    while len(found) < limit:
        page = call(functools.partial(fetch, token))
        found.extend(page.tasks)
        token = page.next_page_token
        if not token:
            break
    return found[:limit]


@click.group()
@connection_options
def tasks() -> None:
    """List tasks and dead letters; requeue or cancel tasks (VALIDATOR for requeue and for
    cancelling other agents' tasks)."""


@tasks.command("list")
@click.option("--status", type=click.Choice(TASK_STATUSES), default=None, help="Only this status.")
@click.option("--type", "task_type", default="", help="Only tasks of this type.")
@click.option("--assignee", default="", help="Only tasks claimed by this agent.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@click.pass_obj
def tasks_list(
    connection: Connection,
    status: str | None,
    task_type: str,
    assignee: str,
    limit: int,
    as_json: bool,
) -> None:
    """List your namespace's tasks in the order they were added."""
    client = connection.client
    found = _pages(
        lambda token: client.tasks.list_tasks(
            status=status,
            task_type=task_type,
            assignee=assignee,
            page_size=min(limit, 1000),
            page_token=token,
        ),
        limit,
    )
    _emit_tasks("tasks", found, as_json)


@tasks.command("dead-letters")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@click.pass_obj
def tasks_dead_letters(connection: Connection, limit: int, as_json: bool) -> None:
    """List dead-lettered tasks, oldest first."""
    client = connection.client
    found = _pages(
        lambda token: client.tasks.list_dead_letters(
            page_size=min(limit, 1000), page_token=token
        ),
        limit,
    )
    _emit_tasks("dead letters", found, as_json)


@tasks.command("requeue")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "requeue_all", is_flag=True, help="Requeue every dead letter.")
@json_option
@click.pass_obj
def tasks_requeue(
    connection: Connection, task_ids: tuple[str, ...], requeue_all: bool, as_json: bool
) -> None:
    """Put dead-lettered tasks back in their queues, attempts reset (VALIDATOR)."""
    client = connection.client
    ids = list(task_ids)
    if requeue_all:
        ids += [
            t.task_id
            for t in _pages(
                lambda token: client.tasks.list_dead_letters(page_size=1000, page_token=token),
                100_000,
            )
        ]
    if not ids:
        raise click.UsageError("name the TASK_IDS to requeue, or pass --all")
    requeued = [call(functools.partial(client.tasks.requeue_dead_letter, i)) for i in ids]
    _emit_tasks("requeued", requeued, as_json)


@tasks.command("cancel")
@click.argument("task_ids", nargs=-1, required=True)
@json_option
@click.pass_obj
def tasks_cancel(connection: Connection, task_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel tasks that are not completed (their adder, or a VALIDATOR)."""
    client = connection.client
    cancelled = [call(functools.partial(client.tasks.cancel_task, i)) for i in task_ids]
    _emit_tasks("cancelled", cancelled, as_json)


# -- signals ----------------------------------------------------------------------------------


@click.group()
@connection_options
def signals() -> None:
    """Follow your namespace's signals."""


def _signal_line(record: Mapping[str, Any]) -> str:
    target = record.get("target_agent") or (
        f"session {record['session_id']}" if record.get("session_id") else "all"
    )
    data = json.dumps(record.get("data", {}), separators=(",", ":"))
    return (
        f"{record.get('id', '')}  {record.get('send_time', '')}  {record.get('signal_type', '')}"
        f"  {record.get('sender', '')} → {target}  {data}"
    )


@signals.command("tail")
@click.option(
    "--type", "signal_types", multiple=True, help="Only signals of this type (repeatable)."
)
@click.option("--after", "after_id", default="", help="Start after this signal id (resume).")
@click.option(
    "--earliest", is_flag=True, help="Start with the oldest retained signal, not the next one."
)
@click.option(
    "--count", type=click.IntRange(min=1), default=None, help="Exit after this many signals."
)
@json_option
@click.pass_obj
def signals_tail(
    connection: Connection,
    signal_types: tuple[str, ...],
    after_id: str,
    earliest: bool,
    count: int | None,
    as_json: bool,
) -> None:
    """Print the signals your token may see, live, until Ctrl-C (or --count).

    The subscription resumes by itself after a server restart or when it falls behind, from
    the last signal printed: nothing is skipped or repeated. Each line starts with the signal
    id, which `--after` resumes from.
    """
    client = connection.client
    stream = client.signals.subscribe(signal_types, after_id=after_id, earliest=earliest)
    previous = _interrupt_on_sigterm()
    seen = 0
    try:
        for item in _guarded(stream):
            record = to_dict(item)
            click.echo(json.dumps(record) if as_json else _signal_line(record))
            seen += 1
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
        if previous is not None:
            signal_module.signal(signal_module.SIGTERM, previous)


def _interrupt_on_sigterm() -> Any:
    """Makes SIGTERM end the tail as Ctrl-C does (cleanly, the stream cancelled); returns the
    handler to restore. Only the main thread may set handlers (tests run commands elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal_module.signal(signal_module.SIGTERM, signal_module.default_int_handler)


def _guarded(stream: Iterator[Any]) -> Iterator[Any]:
    """The stream, with a failure turned into a CLI error when it happens (not only at start)."""
    from agentcoord import AgentcoordError

    try:
        yield from stream
    except AgentcoordError as exc:
        raise click.ClickException(str(exc)) from None


# -- namespaces -------------------------------------------------------------------------------

NAMESPACE_COLUMNS = ("name", "state", "created", "created by", "description")


def _namespace_row(record: Mapping[str, Any]) -> list[Any]:
    return [
        record.get("name", ""),
        record.get("state", "").removeprefix("NAMESPACE_STATE_"),
        record.get("create_time", ""),
        record.get("created_by", ""),
        record.get("description", ""),
    ]


def _emit_namespaces(title: str, namespaces: Iterable[Any], as_json: bool) -> None:
    records = [to_dict(n) for n in namespaces]
    if as_json:
        for record in records:
            echo_json(record)
        return
    print_table(title, NAMESPACE_COLUMNS, (_namespace_row(r) for r in records))


@click.group()
@connection_options
def namespaces() -> None:
    """Create, list and delete namespaces (teams) and set their quotas; needs the OPERATOR token
    (<data-dir>/operator-token). Issue a namespace's tokens with
    `agentcoord token issue --namespace NAME`."""


@namespaces.command("create")
@click.argument("name")
@click.option("--description", default="", help="Free text shown by `namespaces list`.")
@json_option
@click.pass_obj
def namespaces_create(connection: Connection, name: str, description: str, as_json: bool) -> None:
    """Register namespace NAME."""
    created = call(
        functools.partial(connection.client.admin.create_namespace, name, description=description)
    )
    _emit_namespaces("created", [created], as_json)


@namespaces.command("list")
@json_option
@click.pass_obj
def namespaces_list(connection: Connection, as_json: bool) -> None:
    """List registered namespaces in name order."""
    found = call(lambda: list(connection.client.admin.iter_namespaces()))
    _emit_namespaces("namespaces", found, as_json)


@namespaces.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def namespaces_delete(connection: Connection, name: str, yes: bool, as_json: bool) -> None:
    """Delete namespace NAME: revoke its tokens and remove all its data. Takes a few seconds
    (twice the server's auth cache bound, plus the data); if interrupted, run it again."""
    if not yes:
        click.confirm(f"delete namespace {name} and all its data?", abort=True)
    deleted = call(functools.partial(connection.client.admin.delete_namespace, name))
    _emit_namespaces("deleted", [deleted], as_json)


@namespaces.command("quota")
@click.argument("name", default="")
@click.option("--max-tokens", type=click.IntRange(min=0), default=None, help="Live tokens.")
@click.option(
    "--max-signals-per-second",
    type=click.IntRange(min=0),
    default=None,
    help="Signals per second (a token bucket shared by every server process).",
)
@click.option(
    "--max-pending-tasks",
    type=click.IntRange(min=0),
    default=None,
    help="Pending tasks (queued or backing off).",
)
@click.option(
    "--max-live-subscriptions",
    type=click.IntRange(min=0),
    default=None,
    help="Open Subscribe streams, over every server process.",
)
@click.option(
    "--max-memory-entries", type=click.IntRange(min=0), default=None, help="Working-memory entries."
)
@click.option(
    "--max-memory-bytes",
    type=click.IntRange(min=0),
    default=None,
    help="Bytes of working-memory values.",
)
@json_option
@click.pass_obj
def namespaces_quota(
    connection: Connection,
    name: str,
    max_tokens: int | None,
    max_signals_per_second: int | None,
    max_pending_tasks: int | None,
    max_live_subscriptions: int | None,
    max_memory_entries: int | None,
    max_memory_bytes: int | None,
    as_json: bool,
) -> None:
    """Show namespace NAME's quotas (limit and current use), or with --max-* set them (the
    OPERATOR; 0: the server's default, from its --quota-* flags; quotas not given are kept).
    A STEWARD shows its own namespace's with no NAME."""
    admin = connection.client.admin
    response = call(functools.partial(admin.get_namespace_quota, name))
    given = (max_tokens, max_signals_per_second, max_pending_tasks, max_live_subscriptions)
    memory = (max_memory_entries, max_memory_bytes)
    if any(v is not None for v in (*given, *memory)):
        current = response.quota
        response = call(
            functools.partial(
                admin.update_namespace_quota,
                response.namespace,
                max_tokens=current.max_tokens if max_tokens is None else max_tokens,
                max_signals_per_second=(
                    current.max_signals_per_second
                    if max_signals_per_second is None
                    else max_signals_per_second
                ),
                max_pending_tasks=(
                    current.max_pending_tasks if max_pending_tasks is None else max_pending_tasks
                ),
                max_live_subscriptions=(
                    current.max_live_subscriptions
                    if max_live_subscriptions is None
                    else max_live_subscriptions
                ),
                max_memory_entries=(
                    current.max_memory_entries if max_memory_entries is None else max_memory_entries
                ),
                max_memory_bytes=(
                    current.max_memory_bytes if max_memory_bytes is None else max_memory_bytes
                ),
            )
        )
    rows = [to_dict(u) for u in response.usage]
    if as_json:
        echo_json({"namespace": response.namespace, "quotas": rows})
        return
    print_table(
        f"quotas of {response.namespace}",
        ("quota", "limit", "used"),
        ([r.get("name", ""), r.get("limit") or "none", r.get("used", "0")] for r in rows),
    )


def register(main: click.Group) -> None:
    """Adds the operator commands to the `agentcoord` group."""
    main.add_command(stats)
    main.add_command(namespaces)
    main.add_command(health)
    main.add_command(tasks)
    main.add_command(signals)
