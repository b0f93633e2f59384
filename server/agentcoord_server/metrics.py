"""Prometheus metrics on their own HTTP port (`--metrics-listen`; off unless set).

What is exported (README "Metrics" lists them with their labels):

- Per RPC, with go-grpc-prometheus's names and labels (grpc_type, grpc_service, grpc_method and,
  on `handled`, grpc_code): `grpc_server_started_total`, `grpc_server_handled_total`,
  `grpc_server_handling_seconds` (histogram), `grpc_server_msg_received_total`,
  `grpc_server_msg_sent_total`. Counted by the RPC wrapper (interceptors.py), outside everything
  else it does, so the status is the one sent and the time includes the rest.
- Redis: `agentcoord_redis_command_duration_seconds` and `agentcoord_redis_command_errors_total`
  by command and, for EVALSHA, the Lua script's name (both bounded sets).
- Authentication: `agentcoord_auth_cache_hits_total`, `agentcoord_auth_cache_misses_total`,
  `agentcoord_auth_failures_total` by reason.
- Read when scraped (`_StateCollector`): live subscriptions and fan-out buffer depth per
  namespace and fan-out overflows (this process); task queue depth per namespace, task type and
  state, dead letters and lease expiries per namespace (from Redis, so every process reports
  the same figure: aggregate with max), task redeliveries (this process).

Labels stay bounded: method, code, command, script, reason, namespace and task type — never an
agent id, key or task id. Namespaces are those that called this process since it started (at
most MAX_NAMESPACES); task types the latest MAX_TASK_TYPES of each namespace's index.

With `serve --workers N` each worker writes its figures to a prometheus_client multiprocess
directory every MULTIPROCESS_FLUSH_SECONDS (and when it stops), and the parent serves /metrics
from it (`serve_multiprocess`): counters and histograms are summed over the workers (a dead
worker's counts stay), per-process gauges summed over the live ones, and the figures read from
Redis (REDIS_WIDE) taken as the max over the live ones. A scrape is then at most that old.

Cost: a method's counters are bound once, when its handler is first wrapped, and are plain
numbers only the event loop writes, so a call pays two integer increments and one bisect (see
`python -m bench.bench_overhead`). Nothing is installed when metrics are off.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from . import errors
from .identity import Authenticator, Principal
from .store.keys import Keyspace
from .store.scripts import script_name

log = structlog.get_logger("agentcoord.metrics")

RPC_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
"""Seconds. Unary calls take well under a millisecond to tens of ms; a ClaimTask may wait 60 s."""
REDIS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)
"""Seconds per Redis command."""
MAX_NAMESPACES = 1000
"""Namespaces whose task queues are reported (the first that called this process)."""
MAX_TASK_TYPES = 100
"""Task types reported per namespace (the most recently added to; as GetServerStats)."""
COLLECT_TIMEOUT = 5.0
"""Seconds a scrape waits for the server's loop to read Redis and the fan-out state."""

_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class _Histogram:
    """Bucket counts and a sum, kept as plain numbers: only the server's event loop writes
    them (every RPC and Redis call runs there), and a scrape reads them on that loop too, so no
    lock is needed. prometheus_client's own Histogram takes a lock per observation, which cost
    several µs per call here; exposition still goes through prometheus_client."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (le, count) buckets, as Prometheus exposes them, and the sum."""
        buckets, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets, self.sum


class _RpcStats:
    """One method's counters (go-grpc-prometheus's, by label values), bound once."""

    __slots__ = ("handled", "handling", "labels", "sent", "started")

    def __init__(self, grpc_type: str, service: str, method: str) -> None:
        self.labels = (grpc_type, service, method)
        self.started = 0
        self.handled: dict[str, int] = {"OK": 0}  # by status code name
        self.handling = _Histogram(RPC_BUCKETS)
        self.sent = 0


class _CountingLookup:
    """A TokenLookup that counts how often the authenticator had to ask Redis."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.lookups = 0

    async def lookup(self, digest: str) -> Any:
        self.lookups += 1
        return await self._inner.lookup(digest)


class _CountingAuthenticator:
    """Counts an authenticator's cache hits and misses and its failures by reason.

    A call is a cache hit when it finished without a Redis lookup: an authenticator answers
    from its cache without awaiting, so no other call can run (and look up) in between.
    """

    def __init__(
        self, inner: Authenticator, lookups: _CountingLookup, metrics: ServerMetrics
    ) -> None:
        self._inner = inner
        self._lookups = lookups
        self._metrics = metrics
        self.revocable = inner.revocable

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # anything else the interceptor may ask of it

    async def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], *, fresh: bool = False
    ) -> Principal:
        before = self._lookups.lookups
        metrics = self._metrics
        try:
            principal = await self._inner.authenticate(metadata, fresh=fresh)
            namespaces = metrics.namespaces
            if principal.namespace not in namespaces and len(namespaces) < MAX_NAMESPACES:
                namespaces[principal.namespace] = None
            return principal
        except errors.Unauthenticated as exc:
            failures = metrics.auth_failures
            failures[exc.reason] = failures.get(exc.reason, 0) + 1
            raise
        finally:
            if not fresh:
                if self._lookups.lookups == before:
                    metrics.auth_cache_hits += 1
                else:
                    metrics.auth_cache_misses += 1


class ServerMetrics:
    """The metrics of one server process, exported from a registry of its own (so tests can run
    several servers in one process) over HTTP by `start_http`.

    The counts live in plain attributes written on the server's event loop; the collectors
    read them on that loop when scraped (`watch`).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs: dict[str, _RpcStats] = {}
        self.redis_commands: dict[tuple[str, str], _Histogram] = {}
        self.redis_errors: dict[tuple[str, str, str], int] = {}
        self.auth_cache_hits = 0
        self.auth_cache_misses = 0
        self.auth_failures: dict[str, int] = {}
        # Namespaces that called this process (in first-call order): the ones whose task
        # queues are reported.
        self.namespaces: dict[str, None] = {}
        self._http: Any = None
        self._writer: MultiprocessWriter | None = None
        self.port = 0

    def rpc(self, grpc_type: str, method: str) -> _RpcStats:
        """The counters of `/pkg.Service/Method` (created once)."""
        stats = self.rpcs.get(method)
        if stats is None:
            service, _, name = method.lstrip("/").partition("/")
            stats = self.rpcs[method] = _RpcStats(grpc_type, service, name)
        return stats

    def initialize(self, methods: Iterable[tuple[str, str]]) -> None:
        """Exports zeros for `(grpc_type, method path)` pairs before their first call, as
        go-grpc-prometheus's InitializeMetrics does, so rates start from a known point."""
        for grpc_type, method in methods:
            self.rpc(grpc_type, method)

    def instrument_authenticator(
        self, make: Callable[[Any], Authenticator], tokens: Any
    ) -> Authenticator:
        """`make(tokens)` with its token lookups counted, wrapped to count hits and failures."""
        lookups = _CountingLookup(tokens)
        return _CountingAuthenticator(make(lookups), lookups, self)

    def instrument_redis(self, redis: Any) -> None:
        """Times every command `redis` executes directly (scripts included; pipelines not)."""
        execute = redis.execute_command
        commands = self.redis_commands
        failures = self.redis_errors
        perf_counter = time.perf_counter

        async def timed(*args: Any, **options: Any) -> Any:
            command = str(args[0]).upper() if args else ""
            script = script_name(args[1]) if command == "EVALSHA" and len(args) > 1 else ""
            began = perf_counter()
            try:
                return await execute(*args, **options)
            except Exception as exc:
                key = (command, script, type(exc).__name__)
                failures[key] = failures.get(key, 0) + 1
                raise
            finally:
                histogram = commands.get((command, script))
                if histogram is None:
                    histogram = commands[(command, script)] = _Histogram(REDIS_BUCKETS)
                histogram.observe(perf_counter() - began)

        redis.execute_command = timed

    def watch(
        self,
        loop: asyncio.AbstractEventLoop,
        redis: Any,
        hub: Callable[[], Any],
        tasks: Any,
        *,
        task_ttl: int,
    ) -> None:
        """Registers the collectors: this object's counts, and the fan-out and task queue state
        (both read on `loop`, the server's event loop). `task_ttl`: TtlPolicy.task, seconds
        (how long a dead letter is kept, as GetServerStats counts them)."""
        self.registry.register(_CountsCollector(loop, self))
        self.registry.register(_StateCollector(loop, self, redis, hub, tasks, task_ttl))

    def start_http(self, listen: str) -> int:
        """Serves /metrics on `host:port` (port 0: any free port) in a daemon thread; returns
        the bound port."""
        host, _, port = listen.rpartition(":")
        httpd, _thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0", self.registry)
        self._http = httpd
        self.port = int(httpd.server_port)
        return self.port

    def write_to(self, directory: Path) -> None:
        """Writes the metrics to `directory` (prometheus_client multiprocess files) instead of
        serving them: a worker of `serve --workers N`, whose parent serves them."""
        self._writer = MultiprocessWriter(self.registry, directory, MULTIPROCESS_FLUSH_SECONDS)
        # The counts once now, from here (the loop's thread), so the parent's /metrics has this
        # worker's methods (all at 0) as soon as it serves, not a second later.
        now = CollectorRegistry()
        now.register(_CountsCollector(asyncio.get_running_loop(), self, on_loop=True))
        MultiprocessWriter(now, directory, 0).flush()
        self._writer.start()

    def stop_http(self) -> None:
        """Stops serving (or writing) the metrics; a writer writes once more first."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
        httpd, self._http = self._http, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()


MULTIPROCESS_FLUSH_SECONDS = 1.0
"""How often a worker of `serve --workers N` writes its metrics for the parent to serve."""
REDIS_WIDE = {
    "agentcoord_task_dead_letters": "gauge",
    "agentcoord_task_lease_expiries": "counter",
    "agentcoord_task_queue_depth": "gauge",
}
"""Families read from Redis, the same in every worker: aggregated with max, not summed."""


class MultiprocessWriter:
    """Writes what `registry` collects to prometheus_client's multiprocess files of this
    process in `directory`, every `interval` seconds from a thread of its own (the collectors
    read the server's state on its loop) and once more at `stop()`."""

    def __init__(self, registry: CollectorRegistry, directory: Path, interval: float) -> None:
        self._registry = registry
        self._directory = directory
        self._interval = interval
        self._files: dict[str, MmapedDict] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(COLLECT_TIMEOUT * 2)
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(self._interval)
            try:
                self.flush()
            except Exception as exc:  # the next flush tries again; a scrape is never failed
                log.warning("metrics: writing the multiprocess files failed", error=repr(exc))
            if stopping:
                return

    def _file(self, prefix: str) -> MmapedDict:
        f = self._files.get(prefix)
        if f is None:
            path = self._directory / f"{prefix}_{os.getpid()}.db"
            f = self._files[prefix] = MmapedDict(str(path))
        return f

    def flush(self) -> None:
        for family in self._registry.collect():
            if family.name in REDIS_WIDE:
                prefix = "gauge_livemax"
            elif family.type == "gauge":
                prefix = "gauge_livesum"
            elif family.type in ("counter", "histogram"):
                prefix = family.type
            else:
                continue
            f = self._file(prefix)
            # The files hold each bucket's own count (the collector adds them up and derives
            # _count); the exposition's buckets are cumulative.
            below: dict[tuple[tuple[str, str], ...], float] = {}
            for sample in family.samples:
                value = sample.value
                if family.type == "histogram":
                    if sample.name.endswith("_count"):
                        continue
                    if sample.name.endswith("_bucket"):
                        series = tuple(sorted(kv for kv in sample.labels.items() if kv[0] != "le"))
                        cumulative = value
                        value -= below.get(series, 0.0)
                        below[series] = cumulative
                key = mmap_key(
                    family.name,
                    sample.name,
                    list(sample.labels),
                    list(sample.labels.values()),
                    family.documentation,
                )
                f.write_value(key, value, 0.0)


class _WorkersCollector(Collector):
    """The workers' multiprocess files, with REDIS_WIDE families given their own types back
    (they are stored as gauges so that they aggregate with max)."""

    def __init__(self, directory: Path) -> None:
        self._inner = MultiProcessCollector(None, path=str(directory))

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        for metric in self._inner.collect():
            metric.type = REDIS_WIDE.get(metric.name, metric.type)
            yield metric


def serve_multiprocess(listen: str, directory: Path) -> Any:
    """Serves /metrics on `host:port` from the workers' multiprocess files in `directory`
    (the parent of `serve --workers N`). Returns the HTTP server (`.server_port`;
    `.shutdown()`). Raises OSError if the address is in use."""
    registry = CollectorRegistry()
    registry.register(_WorkersCollector(directory))
    host, _, port = listen.rpartition(":")
    httpd, _thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0", registry)
    return httpd


def _on_loop(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    """Runs `coro` on the server's loop from the scrape thread; None if it cannot."""
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # the loop is closed: the server has stopped
        coro.close()
        return None
    try:
        return future.result(COLLECT_TIMEOUT)
    except Exception as exc:  # a scrape must not fail for it; the log says why
        future.cancel()
        log.warning("metrics: reading the server's state failed", error=type(exc).__name__)
        return None


class _CountsCollector(Collector):
    """Exports ServerMetrics' counts, copied on the server's loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, metrics: ServerMetrics, *, on_loop: bool = False
    ) -> None:
        self._loop = loop
        self._metrics = metrics
        self._on_loop = on_loop  # collected on the loop's own thread: copy directly

    def describe(self) -> Iterable[Metric]:
        return ()

    async def _snapshot(self) -> dict[str, Any]:
        return self.snapshot_now()

    def snapshot_now(self) -> dict[str, Any]:
        m = self._metrics
        return {
            "rpcs": [
                (s.labels, s.started, dict(s.handled), s.handling.snapshot(), s.sent)
                for s in m.rpcs.values()
            ],
            "redis": [(k, h.snapshot()) for k, h in m.redis_commands.items()],
            "redis_errors": dict(m.redis_errors),
            "auth": (m.auth_cache_hits, m.auth_cache_misses, dict(m.auth_failures)),
        }

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot_now() if self._on_loop else _on_loop(self._loop, self._snapshot())
        if snap is None:
            return
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=_RPC_LABELS
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            labels=(*_RPC_LABELS, "grpc_code"),
        )
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its status, seconds (a stream's whole life).",
            labels=_RPC_LABELS,
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received",
            "Request messages received (one per call: no RPC streams requests).",
            labels=_RPC_LABELS,
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent",
            "Stream response messages sent (server streams only).",
            labels=_RPC_LABELS,
        )
        for labels, n_started, by_code, (buckets, total), n_sent in snap["rpcs"]:
            started.add_metric(labels, n_started)
            received.add_metric(labels, n_started)
            for code, count in by_code.items():
                handled.add_metric((*labels, code), count)
            handling.add_metric(labels, buckets, total)
            if labels[0] == "server_stream":
                sent.add_metric(labels, n_sent)
        yield from (started, handled, handling, received, sent)
        commands = HistogramMetricFamily(
            "agentcoord_redis_command_duration_seconds",
            "Redis command round trips, seconds; EVALSHA by Lua script name.",
            labels=("command", "script"),
        )
        for labels, (buckets, total) in snap["redis"]:
            commands.add_metric(labels, buckets, total)
        command_errors = CounterMetricFamily(
            "agentcoord_redis_command_errors",
            "Redis commands that failed, by error class.",
            labels=("command", "script", "error"),
        )
        for labels, count in snap["redis_errors"].items():
            command_errors.add_metric(labels, count)
        yield from (commands, command_errors)
        hits, misses, failures = snap["auth"]
        yield CounterMetricFamily(
            "agentcoord_auth_cache_hits",
            "Authentications answered from the in-process cache.",
            value=hits,
        )
        yield CounterMetricFamily(
            "agentcoord_auth_cache_misses",
            "Authentications that looked the token up in Redis.",
            value=misses,
        )
        auth_failures = CounterMetricFamily(
            "agentcoord_auth_failures",
            "Failed authentications (UNAUTHENTICATED), by reason.",
            labels=("reason",),
        )
        for reason, count in sorted(failures.items()):
            auth_failures.add_metric((reason,), count)
        yield auth_failures


class _StateCollector(Collector):
    """Reads, at scrape time and on the server's loop, what is cheaper to count than to track:
    the fan-out hub's subscriptions and buffers, and the task queues of every namespace that has
    called this process, from the indexes GetServerStats reads (`tasks:types`, the per-type
    counts in `tasks:counts`, `tasks:dead`; two pipelined round trips of O(1) or O(log n) commands, no SCAN)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        metrics: ServerMetrics,
        redis: Any,
        hub: Callable[[], Any],
        tasks: Any,
        task_ttl: int,
    ) -> None:
        self._loop = loop
        self._metrics = metrics
        self._redis = redis
        self._hub = hub
        self._tasks = tasks
        self._task_ttl_ms = task_ttl * 1000

    def describe(self) -> Iterable[Metric]:
        return ()

    async def _snapshot(self) -> dict[str, Any]:
        hub = self._hub()
        subscriptions: dict[str, int] = {}
        queued: dict[str, int] = {}
        overflows = 0
        if hub is not None:
            overflows = hub.overflows
            for namespace in hub.stats():
                subs = hub.subscriptions(namespace)
                subscriptions[namespace] = len(subs)
                queued[namespace] = sum(s.queued for s in subs)
        namespaces = list(self._metrics.namespaces)
        per_namespace: list[Any] = []
        queues: list[tuple[str, str]] = []
        depths: list[Any] = []
        if namespaces:
            kept_since = f"({time.time_ns() // 1_000_000 - self._task_ttl_ms}"
            async with self._redis.pipeline(transaction=False) as pipe:
                for ns in namespaces:
                    ks = Keyspace(ns)
                    pipe.zcount(ks.key("tasks", "dead"), kept_since, "+inf")
                    pipe.get(ks.key("tasks", "lease_expiries"))
                    pipe.zrevrange(ks.key("tasks", "types"), 0, MAX_TASK_TYPES - 1)
                per_namespace = await pipe.execute()
            for i, ns in enumerate(namespaces):
                queues.extend((ns, task_type) for task_type in per_namespace[3 * i + 2])
            if queues:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for ns, task_type in queues:
                        pipe.hmget(
                            Keyspace(ns).key("tasks", "counts"),
                            [f"q:{task_type}", f"l:{task_type}", f"d:{task_type}"],
                        )
                    depths = [int(n or 0) for row in await pipe.execute() for n in row]
        return {
            "subscriptions": subscriptions,
            "queued": queued,
            "overflows": overflows,
            "namespaces": [
                (ns, int(per_namespace[3 * i] or 0), int(per_namespace[3 * i + 1] or 0))
                for i, ns in enumerate(namespaces)
            ],
            "queues": queues,
            "depths": depths,
            "redeliveries": dict(self._tasks.redeliveries),
        }

    def collect(self) -> Iterable[Metric]:
        snap = _on_loop(self._loop, self._snapshot())
        if snap is None:
            return
        subs = GaugeMetricFamily(
            "agentcoord_signal_subscriptions",
            "Live Subscribe streams on this process.",
            labels=("namespace",),
        )
        queued = GaugeMetricFamily(
            "agentcoord_signal_fanout_queued",
            "Signals buffered for slow subscribers on this process (fan-out queue depth).",
            labels=("namespace",),
        )
        for ns, count in sorted(snap["subscriptions"].items()):
            subs.add_metric((ns,), count)
            queued.add_metric((ns,), snap["queued"].get(ns, 0))
        yield subs
        yield queued
        yield CounterMetricFamily(
            "agentcoord_signal_fanout_overflows",
            "Subscriptions ended SUBSCRIBER_TOO_SLOW (their buffered signals dropped; the "
            "client resumes).",
            value=snap["overflows"],
        )
        depths = iter(snap["depths"])
        dead = GaugeMetricFamily(
            "agentcoord_task_dead_letters",
            "Dead-lettered tasks (Redis; the same on every process).",
            labels=("namespace",),
        )
        expiries = CounterMetricFamily(
            "agentcoord_task_lease_expiries",
            "Task leases that ran out before completion (Redis; the same on every process).",
            labels=("namespace",),
        )
        for ns, dead_letters, lease_expiries in snap["namespaces"]:
            dead.add_metric((ns,), dead_letters)
            expiries.add_metric((ns,), lease_expiries)
        depth = GaugeMetricFamily(
            "agentcoord_task_queue_depth",
            "Tasks per queue state: pending (claimable now), claimed (leased), delayed "
            "(backing off) (Redis; the same on every process).",
            labels=("namespace", "task_type", "state"),
        )
        for ns, task_type in snap["queues"]:
            for state in ("pending", "claimed", "delayed"):
                depth.add_metric((ns, task_type, state), int(next(depths)))
        yield dead
        yield expiries
        yield depth
        redeliveries = CounterMetricFamily(
            "agentcoord_task_redeliveries",
            "Claims of a task already attempted before (this process).",
            labels=("namespace",),
        )
        for ns, count in sorted(snap["redeliveries"].items()):
            redeliveries.add_metric((ns,), count)
        yield redeliveries
