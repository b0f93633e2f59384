"""Wake-ups for waiting claims, across server processes: one Redis subscription per namespace
per process, fanned out in-process, one waiter per task.

Every script that makes a task pending (AddTask, FailTask, RequeueDeadLetter, a settled lease
expiry or backoff) PUBLISHes the task's type on `ac:{ns}:tasks:wake` (tasks_common.lua,
`wake`). `TaskWakeups` holds one pub/sub connection per server process (named
`agentcoord-task-wakeups` in CLIENT LIST) and SUBSCRIBEs it to the channel of each namespace
that has waiting claims — never one connection or subscription per waiter. A message wakes one
waiter of that namespace whose task types include the type (the longest waiting first), not the
whole herd; a claim that names no types (its agent's capabilities) matches any type.

Missed wake-ups cannot leave a claim waiting for long: a waiter also looks again after the
store's safety re-check interval, and at the time the claim script reported that a lease runs
out or a backoff ends. Messages that arrive while a waiter's claim is in flight, or a
(re)subscription being confirmed, bump the namespace's epoch: a claim that found nothing checks
the epoch it saw before asking Redis and asks again at once if it moved.

Plain PUBLISH/SUBSCRIBE works on a single Redis, Sentinel and Cluster alike (on a cluster a
PUBLISH reaches every node; the channel is not a key, so the scripts' KEYS are unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import ConnectionPool, Redis

from .keys import Keyspace

log = structlog.get_logger("agentcoord.tasks")

LINGER_SECONDS = 60.0
"""A namespace stays subscribed this long after its last waiter left, so a worker fleet that
claims in a loop does not SUBSCRIBE/UNSUBSCRIBE on every claim."""
RECONNECT_SECONDS = 1.0
"""Pause before reconnecting a failed pub/sub connection (waiters fall back to re-checks)."""
SUBSCRIBE_TIMEOUT_SECONDS = 1.0
"""How long a waiter waits for its namespace's subscription to be confirmed before it relies
on the re-check alone."""


def channel(namespace: str) -> str:
    """The wake-up channel of a namespace (see tasks_common.lua)."""
    return Keyspace(namespace).key("tasks", "wake")


@dataclass(eq=False)
class _Waiter:
    types: frozenset[str]  # empty: any type (the claim uses the agent's capabilities)
    future: asyncio.Future[None]


@dataclass(eq=False)
class _Namespace:
    epoch: int = 0
    requested: bool = False  # SUBSCRIBE sent (redis-py re-sends it after a reconnect)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: deque[_Waiter] = field(default_factory=deque)
    idle_since: float | None = None


class TaskWakeups:
    """The waiting claims of this process and its one pub/sub connection.

    Args:
        redis: the shared client; the pub/sub connection copies its settings, never takes one
            of its connections.
        shutdown: set when the server begins a graceful stop; the connection is then closed
            (waiting claims return on it themselves).
    """

    AREA = "tasks"
    """The area of the `ac:{ns}:<area>:wake` channels this class subscribes to (subclasses,
    e.g. LockWakeups, wake other waiters the same way)."""
    CLIENT_NAME = "agentcoord-task-wakeups"
    """The pub/sub connection's name in CLIENT LIST."""

    def __init__(self, redis: Redis, shutdown: asyncio.Event) -> None:
        self._redis = redis
        self._shutdown = shutdown
        self._spaces: dict[str, _Namespace] = {}
        self._pubsub: Any = None
        self._pool: ConnectionPool | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def mark(self, namespace: str) -> int:
        """The namespace's epoch now; pass it to `wait` after a claim that found nothing."""
        space = self._spaces.get(namespace)
        return space.epoch if space is not None else -1

    async def wait(
        self,
        namespace: str,
        task_types: Sequence[str],
        mark: int,
        timeout: float,
        shutdown: asyncio.Event,
    ) -> None:
        """Returns when a task that may suit `task_types` became pending in `namespace` (in
        any server process) since the epoch `mark`, when `shutdown` is set, or after
        `timeout` seconds, whichever is first. Cancellation propagates (and passes a wake-up
        this waiter had received on to the next waiter)."""
        if self._closer is None:
            self._closer = asyncio.create_task(
                self._close_at_shutdown(), name="task-wakeups-close", context=contextvars.Context()
            )
        space = self._spaces.get(namespace)
        if space is None:
            space = self._spaces[namespace] = _Namespace()
        space.idle_since = None
        if not space.subscribed.is_set():
            await self._subscribe(namespace, space)
        loop = asyncio.get_running_loop()
        if space.epoch != mark or shutdown.is_set():
            if not space.waiters:
                space.idle_since = loop.time()
            return
        waiter = _Waiter(frozenset(task_types), loop.create_future())
        space.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(waiter.future)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if waiter.future.done():
                self._wake_one(space, None)  # its wake-up goes to the next waiter
            raise
        finally:
            with contextlib.suppress(ValueError):
                space.waiters.remove(waiter)
            if not space.waiters:
                space.idle_since = loop.time()

    def _wake_one(self, space: _Namespace, task_type: str | None) -> None:
        for waiter in space.waiters:
            if task_type is None or not waiter.types or task_type in waiter.types:
                space.waiters.remove(waiter)
                if not waiter.future.done():
                    waiter.future.set_result(None)
                return

    @staticmethod
    def _wake_all(space: _Namespace) -> None:
        for waiter in space.waiters:
            if not waiter.future.done():
                waiter.future.set_result(None)
        space.waiters.clear()

    # -- the pub/sub connection -----------------------------------------------------------

    def _connect(self) -> Any:
        shared = getattr(self._redis, "connection_pool", None)
        if shared is None:
            # Redis Cluster: a ClusterPubSub holds one connection to one node, and a PUBLISH
            # on any node reaches every node's subscribers.
            return self._redis.pubsub()
        kwargs = dict(shared.connection_kwargs)
        kwargs["client_name"] = self.CLIENT_NAME
        kwargs["socket_timeout"] = None  # a subscriber waits for messages indefinitely
        self._pool = ConnectionPool(
            connection_class=shared.connection_class, max_connections=1, **kwargs
        )
        return Redis(connection_pool=self._pool).pubsub()

    async def _subscribe(self, namespace: str, space: _Namespace) -> None:
        if self._closed:
            return
        try:
            async with self._lock:  # one connect, and the reader only once it is connected
                if not space.requested:
                    if self._pubsub is None:
                        self._pubsub = self._connect()
                    # Sent even if the channel is still listed: a lingering namespace's
                    # UNSUBSCRIBE may be on its way, and this SUBSCRIBE (answered after it) wins.
                    await self._pubsub.subscribe(Keyspace(namespace).key(self.AREA, "wake"))
                    space.requested = True
                    if self._reader is None:
                        self._reader = asyncio.create_task(
                            self._read(), name="task-wakeups", context=contextvars.Context()
                        )
                        self._sweeper = asyncio.create_task(
                            self._sweep(), name="task-wakeups-sweep", context=contextvars.Context()
                        )
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
                await space.subscribed.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the waiter still re-checks; the reader reconnects
            log.warning("task wake-up subscription failed", error=type(exc).__name__)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("task wake-up connection failed", error=type(exc).__name__)
                for space in self._spaces.values():
                    space.subscribed.clear()
                    space.epoch += 1
                    self._wake_all(space)  # let them look again now
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            if message is None:
                continue
            name = message["channel"]
            if isinstance(name, bytes):
                name = name.decode()
            namespace = name.partition("{")[2].rpartition("}:")[0]  # ac:{ns}:tasks:wake
            found = self._spaces.get(namespace)
            if found is None:
                continue
            space = found
            kind = message["type"]
            if kind == "message":
                space.epoch += 1
                data = message["data"]
                self._wake_one(space, data.decode() if isinstance(data, bytes) else data)
            elif kind == "subscribe":  # also after a reconnect: anything may have been missed
                space.epoch += 1
                space.subscribed.set()
                self._wake_all(space)
            elif kind == "unsubscribe":
                space.subscribed.clear()

    async def _sweep(self) -> None:
        """Unsubscribes namespaces whose last waiter left LINGER_SECONDS ago."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LINGER_SECONDS / 4)
            now = loop.time()
            for namespace, space in tuple(self._spaces.items()):
                if space.waiters or space.idle_since is None:
                    continue
                if now - space.idle_since >= LINGER_SECONDS:
                    del self._spaces[namespace]
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(Keyspace(namespace).key(self.AREA, "wake"))

    async def _close_at_shutdown(self) -> None:
        await self._shutdown.wait()
        for space in self._spaces.values():  # waiting claims answer now
            self._wake_all(space)
        await self.aclose()

    async def aclose(self) -> None:
        """Stops the reader and closes the pub/sub connection (at shutdown)."""
        self._closed = True
        for task in (self._reader, self._sweeper, self._closer):
            if task is asyncio.current_task():
                continue
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._reader = self._sweeper = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.disconnect()
        self._pubsub = self._pool = None
