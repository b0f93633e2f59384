"""Server settings: one frozen object built once at start from flags and environment variables.

Every setting has a flag and an environment variable (see `agentcoord serve --help` and the
README's configuration table); defaults come from DESIGN.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


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
    # Identity and TLS (issue #3). The bootstrap token is a secret: kept out of repr and logs.
    bootstrap_token: str | None = field(default=None, repr=False)
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
