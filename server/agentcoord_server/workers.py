"""`agentcoord serve --workers N`: N server processes on one port, under one parent.

Python runs one thread of Python at a time, so one server process uses about one core. To use
more, the parent runs N workers, each a whole agentcoord server (its own grpc.aio server, event
loop and Redis connections), all listening on the same port with SO_REUSEPORT: the kernel
spreads new connections over them, and each connection (its calls and streams) stays with the
worker that accepted it. Workers share nothing but Redis, which is how several agentcoord
processes already cooperate (claims, fan-out, wake-ups).

grpc's rule for more than one process (its examples/python/multiprocessing): a process must be
forked before any gRPC object exists in it, and each binds with `grpc.so_reuseport`. Here each
worker is a fresh interpreter (`python -m agentcoord_server.workers`, fork and exec), so it
inherits no gRPC state at all, even when it replaces a dead worker while the parent runs threads
(the Redis watcher, /metrics), which a plain fork would not survive.

The parent:

- refuses a port another program holds: it first binds the address without SO_REUSEPORT (a
  listener anywhere on it fails that), then keeps it reserved with a bound, never listening,
  SO_REUSEPORT socket, which receives no connections (grpc's example does the same) and makes
  the next check of that port fail too;
- owns the embedded Redis (no `--redis-url`): it starts and supervises it (redis_supervisor.py)
  and tells the workers when it died (REDIS_DOWN_SIGNAL: health NOT_SERVING) and is back
  (REDIS_UP_SIGNAL); it creates the bootstrap tokens before any worker starts;
- serves /metrics (`--metrics-listen`) from the workers' prometheus_client multiprocess files
  (metrics.py);
- restarts a worker that died (after a pause that doubles while workers keep dying early); it
  gives up, stops the others and exits non-zero when one fails RESTART_ATTEMPTS times in a row
  without having served for HEALTHY_SECONDS;
- on SIGTERM or SIGINT sends SIGTERM to every worker, which drains as a single server does
  (health NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish), waits for all, then stops
  Redis. Workers die with the parent (PR_SET_PDEATHSIG) if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .app import REDIS_DOWN_SIGNAL, REDIS_UP_SIGNAL, ServeFailed, bootstrap_tokens
from .config import Settings

if TYPE_CHECKING:
    from .redis_supervisor import RedisSupervisor

log = structlog.get_logger("agentcoord.workers")

RESTART_ATTEMPTS = 5
"""A worker that dies this many times in a row before serving HEALTHY_SECONDS stops the server."""
HEALTHY_SECONDS = 10.0
"""A worker that ran this long before dying is restarted at once."""
RESTART_BACKOFF = 0.25
"""Seconds before restarting a worker that died early, doubled for each further early death."""
STOP_MARGIN = 10.0
"""Seconds, beyond its drain and grace, a worker gets to exit on SIGTERM before SIGKILL."""
PORT_CHECK_SECONDS = 2.0
"""How long the port check retries: the workers of a server killed a moment ago (SIGKILL of the
parent; they follow it by PR_SET_PDEATHSIG) may still hold the port."""

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is started with (pickled to its stdin)."""

    settings: Settings
    parent_pid: int
    metrics_dir: Path | None


# -- the port --------------------------------------------------------------------------------


def _addresses(listen: str) -> tuple[str, int, list[tuple[int, tuple[object, ...]]]]:
    """`host:port` → (host, port, [(family, sockaddr) to bind]); raises ServeFailed."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit():
        raise ServeFailed(f"cannot listen on {listen}: not a host:port address (see --listen)")
    try:
        infos = socket.getaddrinfo(
            host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ServeFailed(f"cannot listen on {listen}: {exc.strerror} (see --listen)") from None
    seen: list[tuple[int, tuple[object, ...]]] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    return host, int(port_text), seen


def _socket(family: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        # As grpc binds [::]: dual-stack, so it conflicts with an IPv4 listener too.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    else:
        # As grpc's own listeners: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def reserve_port(listen: str) -> tuple[str, list[socket.socket]]:
    """Checks that no other program holds `listen` and reserves it for the workers.

    Returns the address the workers bind (port 0 replaced by the port chosen here) and the
    reserving sockets (bound with SO_REUSEPORT, never listening; close them at exit).
    Raises ServeFailed with a one-line reason.
    """
    host, port, addresses = _addresses(listen)
    in_use = ServeFailed(
        f"cannot listen on {listen}: the address is in use or not available here (see --listen)"
    )
    if not addresses:
        raise in_use
    deadline = time.monotonic() + PORT_CHECK_SECONDS
    while True:
        reserved: list[socket.socket] = []
        try:
            for family, sockaddr in addresses:
                # Bound without SO_REUSEPORT: fails if anything listens there, our own workers
                # (of another agentcoord) included.
                with _socket(family, reuse_port=False) as probe:
                    probe.bind((sockaddr[0], port, *sockaddr[2:]))
                    port = probe.getsockname()[1]
                sock = _socket(family, reuse_port=True)
                reserved.append(sock)
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
            break
        except OSError:
            for sock in reserved:
                sock.close()
            if time.monotonic() >= deadline:
                raise in_use from None
            time.sleep(0.1)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}", reserved


# -- the worker ------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux): a killed parent leaves no worker
    holding the port. Exits at once if the parent is already gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def worker_main() -> None:
    """A worker: reads its WorkerSpec from stdin and serves like `agentcoord serve` does."""
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    _die_with_parent(spec.parent_pid)
    from .app import serve
    from .cli import run_until_exit
    from .logs import configure_logging

    configure_logging(spec.settings.log_format, spec.settings.log_level, cache=True)
    run_until_exit(
        lambda: serve(spec.settings, reuse_port=True, metrics_dir=spec.metrics_dir)
    )


# -- the parent ------------------------------------------------------------------------------


class _Worker:
    """One worker process and the thread that waits for its exit."""

    def __init__(self, index: int, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentcoord_server.workers"],
            stdin=subprocess.PIPE,
        )
        assert self.process.stdin is not None
        with self.process.stdin:
            with contextlib.suppress(BrokenPipeError):
                pickle.dump(spec, self.process.stdin)
        self.exited: asyncio.Future[int] = loop.create_future()
        threading.Thread(
            target=self._wait, args=(loop,), name=f"worker-{index}-waiter", daemon=True
        ).start()

    def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        returncode = self.process.wait()
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(self._exited, returncode)

    def _exited(self, returncode: int) -> None:
        if not self.exited.done():
            self.exited.set_result(returncode)

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class WorkerParent:
    """The parent of `serve --workers N` (see the module docstring)."""

    def __init__(self, settings: Settings, count: int) -> None:
        if count < 2:
            raise ValueError("a WorkerParent runs at least 2 workers")
        self.settings = settings
        self.count = count
        self.failure = ""
        self._workers: dict[int, _Worker] = {}
        self._early_deaths: dict[int, int] = {}
        self._stopping = False
        self._failed = asyncio.Event()
        self._supervisor: RedisSupervisor | None = None
        self._metrics_dir: Path | None = None
        self._metrics_http: Any = None
        self._reserved: list[socket.socket] = []

    async def run(self) -> None:
        """Serves until SIGTERM/SIGINT (or a failure), then stops everything.

        Raises ServeFailed (one line) if the port is held, a worker keeps dying, or the
        embedded Redis cannot be brought back; DataDirectoryInUse / EmbeddedRedisError if it
        cannot start; RedisStartError if `--redis-url` cannot be reached.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            listen, self._reserved = reserve_port(self.settings.listen)
            redis_url = await self._start_redis()
            await self._bootstrap(redis_url)
            self._serve_metrics()
            metrics_listen = self.settings.metrics_listen
            if self._metrics_http is not None and metrics_listen is not None:
                host = metrics_listen.rpartition(":")[0]
                metrics_listen = f"{host}:{self._metrics_http.server_port}"  # port 0 resolved
            spec = WorkerSpec(
                settings=dataclasses.replace(
                    self.settings,
                    listen=listen,
                    redis_url=redis_url,
                    metrics_listen=metrics_listen,
                ),
                parent_pid=os.getpid(),
                metrics_dir=self._metrics_dir,
            )
            for index in range(self.count):
                self._start_worker(index, spec, loop)
            log.info(
                "workers started",
                workers=self.count,
                listen=listen,
                pid=os.getpid(),
                metrics_port=None if self._metrics_http is None else self._metrics_http.server_port,
            )
            await self._supervise(spec, loop, stop)
        finally:
            await self._stop()
        if self.failure:
            raise ServeFailed(self.failure)

    async def _start_redis(self) -> str:
        if self.settings.redis_url:
            return self.settings.redis_url
        from .embedded_redis import EmbeddedRedis
        from .redis_supervisor import RedisSupervisor

        self._supervisor = RedisSupervisor(
            EmbeddedRedis(self.settings.data_dir),
            on_down=self._redis_down,
            on_up=self._redis_up,
            on_failed=self._redis_failed,
        )
        return await self._supervisor.start()

    async def _redis_down(self) -> None:
        for worker in self._workers.values():
            worker.signal(REDIS_DOWN_SIGNAL)

    async def _redis_up(self) -> None:
        for worker in self._workers.values():
            worker.signal(REDIS_UP_SIGNAL)

    def _redis_failed(self, failure: str) -> None:
        self.failure = failure
        self._failed.set()

    async def _bootstrap(self, redis_url: str) -> None:
        """The first start's tokens, once, before any worker could race for them."""
        if self.settings.insecure_dev_identity:
            return
        from .redis_client import close_redis, connect_redis, parse_redis_url
        from .store.tokens import TokenStore

        redis, _ = await connect_redis(
            parse_redis_url(redis_url), max_connections=4, timeout=self.settings.redis_timeout
        )
        try:
            await bootstrap_tokens(self.settings, TokenStore(redis), redis)
        finally:
            await close_redis(redis)

    def _serve_metrics(self) -> None:
        if self.settings.metrics_listen is None:
            return
        from .metrics import serve_multiprocess

        self._metrics_dir = Path(tempfile.mkdtemp(prefix="agentcoord-metrics-"))
        try:
            self._metrics_http = serve_multiprocess(self.settings.metrics_listen, self._metrics_dir)
        except OSError as exc:
            raise ServeFailed(
                f"cannot serve metrics on {self.settings.metrics_listen}: {exc.strerror} "
                "(see --metrics-listen)"
            ) from None

    def _start_worker(self, index: int, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self._workers[index] = _Worker(index, spec, loop)

    async def _supervise(
        self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop, stop: asyncio.Event
    ) -> None:
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        failed: asyncio.Future[Any] = asyncio.ensure_future(self._failed.wait())
        try:
            while True:
                exits: dict[asyncio.Future[Any], _Worker] = {
                    w.exited: w for w in self._workers.values()
                }
                done, _ = await asyncio.wait(
                    [stopping, failed, *exits], return_when=asyncio.FIRST_COMPLETED
                )
                if stopping in done or failed in done:
                    return
                for future in done:
                    await self._replace(exits[future], future.result(), spec, loop)
                    if self.failure:
                        return
        finally:
            stopping.cancel()
            failed.cancel()

    async def _replace(
        self, worker: _Worker, returncode: int, spec: WorkerSpec, loop: asyncio.AbstractEventLoop
    ) -> None:
        lived = time.monotonic() - worker.started
        self._forget(worker)
        index = worker.index
        early = self._early_deaths.get(index, 0) + 1 if lived < HEALTHY_SECONDS else 0
        self._early_deaths[index] = early
        log.error(
            "a worker exited; starting another",
            worker=index,
            pid=worker.process.pid,
            returncode=returncode,
            lived_s=round(lived, 1),
        )
        if early >= RESTART_ATTEMPTS:
            self.failure = (
                f"worker {index} exited {early} times in a row within {HEALTHY_SECONDS:g} s of "
                "starting; see the log above"
            )
            return
        if early:
            await asyncio.sleep(RESTART_BACKOFF * 2 ** (early - 1))
        self._start_worker(index, spec, loop)

    def _forget(self, worker: _Worker) -> None:
        """A dead worker's live gauges leave the metrics (its counters stay)."""
        if self._metrics_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(worker.process.pid, str(self._metrics_dir))

    async def _stop(self) -> None:
        """Stops the workers together (each drains), then Redis, metrics and the port."""
        self._stopping = True
        workers = [w for w in self._workers.values() if w.process.poll() is None]
        if workers:
            log.info("stopping the workers", workers=len(workers))
        for worker in workers:
            worker.signal(signal.SIGTERM)
        patience = self.settings.shutdown_drain + self.settings.shutdown_grace + STOP_MARGIN
        if workers:
            _, late = await asyncio.wait([w.exited for w in workers], timeout=patience)
            for worker in workers:
                if worker.exited in late:
                    log.error("a worker did not stop in time; killing it", pid=worker.process.pid)
                    worker.signal(signal.SIGKILL)
            if late:
                await asyncio.wait(late, timeout=5)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor.stop()
        httpd, self._metrics_http = self._metrics_http, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        for sock in self._reserved:
            sock.close()
        self._reserved = []


async def serve_workers(settings: Settings, count: int) -> None:
    """Runs `count` (≥ 2) workers until SIGTERM or SIGINT; see WorkerParent.run."""
    await WorkerParent(settings, count).run()


if __name__ == "__main__":
    worker_main()
