"""Server settings: one frozen object built once at start from flags and environment variables.

Every setting has a flag and an environment variable (see `agentcoord serve --help` and the
README's configuration table); defaults come from DESIGN.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
FIXED_FIELDS_BYTES = 256 * 1024
"""Room a response item needs beside its size-limited fields: ids, names, descriptions, notes,
interests, errors and times, each bounded in characters by its service (the largest, a pattern
with its description, note, name and interests, stays under 200 KiB even at 4 bytes a
character)."""
TASK_TEXT_BYTES = 64 * 1024
"""Room one task needs beside its payload and result: a 4096-character description and
last_error (at most 16 KiB each in UTF-8), ids and times."""


@dataclass(frozen=True)
class TtlPolicy:
    """Lifetimes of each TTL strategy, in seconds (DESIGN.md, "TTL strategies")."""

    working_results: int = 3600
    staged_patterns: int = 24 * 3600
    coordination: int = 300
    conflict_context: int = 7 * 24 * 3600
    session: int = 1800
    task: int = 4 * 3600

    @classmethod
    def parse(cls, spec: str | None) -> TtlPolicy:
        """Builds a policy from `"coordination=60,session=600"`; unnamed strategies keep defaults.

        Raises ValueError on an unknown strategy or a value that is not a positive integer.
        """
        if not spec:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, int] = {}
        for item in spec.split(","):
            name, sep, raw = item.strip().partition("=")
            name = name.strip().lower()
            if not sep or name not in names:
                raise ValueError(f"unknown TTL strategy in {item!r}; known: {sorted(names)}")
            seconds = int(raw)
            if seconds <= 0:
                raise ValueError(f"TTL for {name} must be a positive number of seconds")
            values[name] = seconds
        return cls(**values)


@dataclass(frozen=True)
class Settings:
    """Everything `agentcoord serve` is configured with.

    Sizes are bytes, durations seconds. `redis_url=None` means: start an embedded redis-server
    with its data in `data_dir`.
    """

    listen: str = "127.0.0.1:50051"
    redis_url: str | None = None
    data_dir: Path = Path(".agentcoord")
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    shutdown_grace: float = 10.0
    # Seconds a stopping server keeps answering new calls UNAVAILABLE (health NOT_SERVING)
    # before it closes, so load balancers and clients move on before its port disappears.
    shutdown_drain: float = 1.0
    max_message_bytes: int = 4 * MiB
    max_concurrent_rpcs: int | None = None
    redis_max_connections: int = 128
    # Seconds a Redis connect or reply may take before the call fails UNAVAILABLE: without
    # it, an unreachable (not refusing) Redis holds every call until the client's deadline.
    redis_timeout: float = 5.0
    insecure_dev_identity: bool = False
    ttl: TtlPolicy = field(default_factory=TtlPolicy)
    max_value_bytes: int = 1 * MiB  # largest stashed/shared value (serialized), bytes
    signal_queue_size: int = 1024  # signals one subscription buffers; more: RESOURCE_EXHAUSTED
    # Working-memory events a namespace's log keeps for WatchEntries to resume from (about:
    # trimmed in whole stream nodes); older revisions get OUT_OF_RANGE (REVISION_COMPACTED).
    memory_history: int = 10_000
    # Identity and TLS (issue #3). The bootstrap token is a secret: kept out of repr and logs.
    bootstrap_token: str | None = field(default=None, repr=False)
    bootstrap_operator_token: str | None = field(default=None, repr=False)
    # Default namespace quotas (admin.proto NamespaceQuota; 0: no limit), issue #14.
    quota_tokens: int = 0
    quota_signals_per_second: int = 0
    quota_pending_tasks: int = 0
    quota_live_subscriptions: int = 0
    # Seconds an open stream counts toward the live-subscriptions quota without its server
    # refreshing it (every third of this): how long a killed server's streams keep counting.
    subscription_lease_seconds: float = 30.0
    quota_memory_entries: int = 0  # working-memory entries (issue #14 item 2)
    quota_memory_bytes: int = 0  # bytes of working-memory values
    auth_cache_seconds: float = 5.0  # how stale a cached token may be; 0..5 (DESIGN.md)
    # Failed authentications one peer address may make per window before it is refused
    # without a Redis lookup (a token bucket; identity.FailedAuthLimiter). 0: no limit.
    auth_failure_limit: int = 20
    auth_failure_window: float = 10.0
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key: serve TLS
    tls_key: Path | None = None  # PEM private key of tls_cert
    tls_client_ca: Path | None = None  # PEM CA bundle; set: require client certificates (mTLS)
    # Operations (issue #14): host:port to serve Prometheus /metrics on; None: no metrics.
    metrics_listen: str | None = None
    # Size limits of the JSON-like and free-text fields that responses echo (issue #12): each is
    # checked before anything is written, and `check_size_limits` refuses a configuration
    # under which one stored item could not be sent back in one message.
    max_task_bytes: int = 1 * MiB  # a task's payload, and its result, each (serialized)
    max_signal_bytes: int = 1 * MiB  # a signal's data (serialized)
    max_pattern_bytes: int = 1 * MiB  # a pattern's code (UTF-8), and its context, each
    max_conflict_bytes: int = 1 * MiB  # a conflict's positions, and its interests, each

    def check_size_limits(self) -> None:
        """Raises ValueError unless every item a response carries fits in one message.

        A task carries a payload and a result, a pattern its code and context, a conflict its
        positions and interests (two limited fields each), beside text fields bounded by the
        services (at most FIXED_FIELDS_BYTES together). So `2 * limit + FIXED_FIELDS_BYTES` must
        fit `max_message_bytes`; otherwise a write could succeed whose echo or later read could
        not be sent (the transport would fail it after the change was applied).
        """
        doubles = {
            "--max-task-bytes": self.max_task_bytes,
            "--max-pattern-bytes": self.max_pattern_bytes,
            "--max-conflict-bytes": self.max_conflict_bytes,
        }
        singles = {
            "--max-value-bytes": self.max_value_bytes,
            "--max-signal-bytes": self.max_signal_bytes,
        }
        for flag, value in (*doubles.items(), *singles.items()):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1 byte")
        room = self.max_message_bytes - FIXED_FIELDS_BYTES
        # A CompleteTask/FailTask response with claim_next carries two tasks: the ended one
        # (payload and result) and the next one (its payload and its own text fields).
        tasks_room = self.max_message_bytes - 2 * TASK_TEXT_BYTES
        if 3 * self.max_task_bytes > tasks_room:
            raise ValueError(
                f"--max-task-bytes {self.max_task_bytes} is too large for --max-message-bytes "
                f"{self.max_message_bytes}: a completion with claim_next answers with the "
                "completed task (payload and result) and the next one (payload), beside text, "
                f"so it may be at most {tasks_room // 3}"
            )
        for flag, value in doubles.items():
            if 2 * value > room:
                raise ValueError(
                    f"{flag} {value} is too large for --max-message-bytes "
                    f"{self.max_message_bytes}: an item holds two such fields and up to "
                    f"{FIXED_FIELDS_BYTES} bytes of text, so it may be at most {room // 2}"
                )
        for flag, value in singles.items():
            if value > room:
                raise ValueError(
                    f"{flag} {value} is too large for --max-message-bytes "
                    f"{self.max_message_bytes}: it may be at most {room}"
                )
