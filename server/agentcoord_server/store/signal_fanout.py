"""Live signal fan-out: one Redis reader per namespace per process feeds every local subscriber.

DESIGN.md, "Redis": a subscriber never costs its own Redis connection. `SignalHub` keeps one
`_NamespaceReader` per namespace that has subscribers: a task blocked in XREAD on its own
single-connection client (named `agentcoord-signals:<ns>` in CLIENT LIST), started when the
namespace's first subscriber arrives and stopped when its last one leaves. Each entry read is
parsed once and offered only to the subscriptions that may see it and want its type: the
reader indexes its subscriptions by signal type and, for targeted and session signals, by
agent, so a send costs work proportional to the subscriptions it matches, not to all of them.

No gaps, no duplicates: a subscriber registers with the reader first and waits until the reader
knows its position P (everything after P will be offered to it). It then catches up from its own
cursor with the store's receive script; meanwhile live entries are not buffered (Redis has
them). When a catch-up page reaches the end of the stream, the subscription turns live — from
then on every new entry is buffered — and reads one more page, which fetches whatever arrived
before the switch. Live entries at or before the last id the catch-up covered are skipped. So a
long catch-up never fills the buffer, and nothing falls between the two phases.

Bounded memory: each subscription buffers at most `queue_size` entries; when a slow reader lets
it fill, the subscription ends with RESOURCE_EXHAUSTED (SUBSCRIBER_TOO_SLOW) and its buffer is
dropped — the client resumes from its last id. On graceful shutdown every subscription ends
with UNAVAILABLE (SERVER_SHUTTING_DOWN).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from redis.asyncio import Redis

from ..errors import DomainError, ResourceExhausted, Unavailable
from ..redis_client import close_redis, dedicated_client
from .signals import SignalEntry, SignalStore, id_key

T = TypeVar("T")

log = structlog.get_logger("agentcoord.signals")

BLOCK_MS = 5000
"""How long one XREAD waits for new entries before asking again (ms)."""

READ_COUNT = 1000
"""Most entries one XREAD returns."""

CATCH_UP_LIMIT = 500
"""Signals per catch-up page."""

BATCH_SIGNALS = 100
"""Most live signals `entries()` hands over at once (what was queued when the stream asked)."""

ANY_TYPE = ""
"""The index key of subscriptions without a type filter."""

PROGRESS_SECONDS = 10.0
"""After this long without a visible signal, a subscription whose namespace moved on reports
its new position (a Progress), so a filtered or quiet subscriber's resume cursor never falls
behind the retention while it misses nothing."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Everything up to `cursor` was considered for the subscriber: resume after it."""

    cursor: str


async def cancellable(call: Awaitable[T]) -> T:
    """Awaits a Redis call of a stream handler so that cancelling the handler always raises
    CancelledError in it. redis-py can lose a cancellation that lands while it starts a command
    (the call then returns normally), and a Subscribe handler that missed its cancellation would
    wait for live signals that in a quiet namespace never come, holding its subscription until
    the server stops. Under `shield` the handler's own await is what gets cancelled; the Redis
    call finishes (or fails) in the background."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_consume_outcome)
        raise


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _raise_if_cancel_was_lost() -> None:
    """A second net for the same loss anywhere else: a task asked to cancel that is still
    running (asyncio.Task.cancelling() > 0) ends at its next idle tick."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class LiveStream(Generic[T]):
    """A live stream's bounded buffer and how it ended — what Subscribe's subscriptions and
    WatchEntries' watchers (store/memory_watch.py) share.

    The hub's reader `offer`s items once the stream is live (during catch-up the store read
    returns them instead), `tick`s it every progress interval and `fail`s it; the stream's
    handler takes batches with `_next_live`. A stream more than `queue_size` items behind fails
    RESOURCE_EXHAUSTED `SUBSCRIBER_TOO_SLOW` (the hub counts it in `overflows`): one slow reader
    never holds up the others or grows without bound.
    """

    BATCH = BATCH_SIGNALS
    """Items `_next_live` returns at most at once."""
    OVERFLOW = "the subscriber fell {n} signals behind; resume from the last signal id received"
    """The SUBSCRIBER_TOO_SLOW message, `{n}` the queue size."""

    def __init__(self, hub: Any, queue_size: int) -> None:
        self._hub = hub
        self._queue_size = queue_size
        self._items: deque[T] = deque()
        self._wake = asyncio.Event()
        self._live = False
        self._tick = False  # a progress tick passed (see _NamespaceReader._progress_tick)
        self.error: DomainError | None = None

    @property
    def queued(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> None:
        """Called by the reader for every new item this stream may see and wants (never
        blocks)."""
        if self.error is not None or not self._live:
            return  # during catch-up the store read will return this item
        if len(self._items) >= self._queue_size:
            self._hub.overflows += 1
            self.fail(
                ResourceExhausted(
                    self.OVERFLOW.format(n=self._queue_size),
                    reason="SUBSCRIBER_TOO_SLOW",
                    metadata={"queue_size": str(self._queue_size)},
                )
            )
            return
        self._items.append(item)
        self._wake.set()

    def fail(self, error: DomainError) -> None:
        """Ends the stream with `error` (the first error wins) and drops its buffer."""
        if self.error is None:
            self.error = error
            self._items.clear()
            self._wake.set()

    def tick(self) -> None:
        """Called by the reader every progress interval: an idle `_next_live` returns None."""
        self._tick = True
        self._wake.set()

    async def _next_live(self) -> list[T] | None:
        """The buffered items (at most BATCH, never waiting for more than one), or None when a
        progress tick passes with the buffer empty.

        No timeout per wait: a timer per stream per delivery cost more than the rest of the wait
        (asyncio.timeout schedules and cancels a loop timer each time); the reader's one timer
        ticks every stream instead."""
        while True:
            if self.error is not None:
                raise self.error
            items = self._items
            if items:
                if len(items) == 1:
                    return [items.popleft()]
                return [items.popleft() for _ in range(min(len(items), self.BATCH))]
            if self._tick:
                self._tick = False
                _raise_if_cancel_was_lost()
                return None
            self._wake.clear()
            await self._wake.wait()


class Subscription(LiveStream[SignalEntry]):
    """One Subscribe stream's state: its filter, its bounded buffer and how it ended.

    `entries()` yields lists of SignalEntry objects (oldest first): stored ones after
    `start_cursor`, then live ones. It raises the DomainError that ended it (OutOfRange for a
    trimmed cursor, ResourceExhausted for overflow, Unavailable for shutdown or a lost Redis
    connection).
    """

    def __init__(
        self,
        hub: SignalHub,
        namespace: str,
        agent_id: str,
        signal_types: Sequence[str],
        queue_size: int,
    ) -> None:
        super().__init__(hub, queue_size)
        self.namespace = namespace
        self.agent_id = agent_id
        self.signal_types = frozenset(signal_types)
        self.start_cursor = ""
        # START_POSITION_EARLIEST: the first catch-up read starts at the oldest entry retained
        # then, not after start_cursor, which a send may have trimmed past in the meantime.
        self.from_oldest = False
        self._reader: _NamespaceReader | None = None  # set on registration

    async def entries(self) -> AsyncIterator[list[SignalEntry] | Progress]:
        """Stored signals after `start_cursor`, then live ones, in non-empty lists (a catch-up
        page, or what was buffered when asked), with a Progress whenever the position moved
        past signals the subscriber does not see; iterate once."""
        store = self._hub.store
        cursor = self.start_cursor
        reported = cursor
        after = "" if self.from_oldest else cursor
        while True:
            if self.error is not None:
                raise self.error
            page = await cancellable(
                store.receive(
                    self.namespace,
                    self.agent_id,
                    sorted(self.signal_types),
                    after=after,
                    limit=CATCH_UP_LIMIT,
                )
            )
            if page.entries:
                yield page.entries
                reported = page.entries[-1].id
            cursor = page.next_after or cursor
            after = cursor
            if not page.more:
                if self._live:
                    break
                # Buffer live entries from here on; the next page picks up whatever was
                # appended between this page's read and this line.
                self._live = True
        if cursor != reported:
            yield Progress(cursor)
        covered = id_key(cursor) if cursor else (0, 0)
        while True:
            live = await self._next_live()
            if live is None:
                # The buffer is empty and the reader offers every entry it reads before it
                # awaits again, so every visible entry up to its position was delivered.
                passed = self._reader.position if self._reader is not None else ""
                if passed and id_key(passed) > covered:
                    covered = id_key(passed)
                    yield Progress(passed)
                continue
            if id_key(live[0].id) <= covered:  # rare: live entries the last page also read
                live = [entry for entry in live if id_key(entry.id) > covered]
                if not live:
                    continue
            covered = id_key(live[-1].id)
            yield live


def _drop(index: dict[Any, set[Subscription]], key: Any, subscription: Subscription) -> None:
    group = index.get(key)
    if group is not None:
        group.discard(subscription)
        if not group:
            del index[key]


class _NamespaceReader:
    """The one XREAD loop of a namespace in this process."""

    def __init__(self, hub: SignalHub, namespace: str) -> None:
        self.hub = hub
        self.namespace = namespace
        self.subscribers: set[Subscription] = set()
        # Who an entry is offered to: broadcasts by type (ANY_TYPE for no filter), targeted
        # and session signals by (agent, type) for each agent that may see them.
        self._by_type: dict[str, set[Subscription]] = {}
        self._by_agent_type: dict[tuple[str, str], set[Subscription]] = {}
        self.position = "0-0"
        self.ready = asyncio.Event()
        self.error: DomainError | None = None
        # A fresh context: the reader outlives the request that started it and must not log
        # with that request's id and agent.
        self.task = asyncio.create_task(
            self._run(), name=f"signals-reader:{namespace}", context=contextvars.Context()
        )
        self._interval = hub.progress_interval
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._progress_tick)

    def _progress_tick(self) -> None:
        """Every progress interval: subscriptions idle since the last tick report their position
        (Subscription.entries); one loop timer per namespace, not one per wait."""
        for subscriber in tuple(self.subscribers):
            subscriber.tick()
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._progress_tick)

    def _keys(self, subscription: Subscription) -> list[str]:
        return list(subscription.signal_types) or [ANY_TYPE]

    def add(self, subscription: Subscription) -> None:
        self.subscribers.add(subscription)
        subscription._reader = self
        for signal_type in self._keys(subscription):
            self._by_type.setdefault(signal_type, set()).add(subscription)
            key = (subscription.agent_id, signal_type)
            self._by_agent_type.setdefault(key, set()).add(subscription)

    def discard(self, subscription: Subscription) -> None:
        if subscription not in self.subscribers:
            return
        self.subscribers.discard(subscription)
        for signal_type in self._keys(subscription):
            _drop(self._by_type, signal_type, subscription)
            _drop(self._by_agent_type, (subscription.agent_id, signal_type), subscription)

    def _offer(self, entry: SignalEntry) -> None:
        """Offers `entry` to exactly the subscriptions that may see it and want its type
        (SignalEntry.visible_to, by index), each once."""
        signal_type = entry.signal_type
        if not entry.target_agent and not entry.session_id:
            for key in (signal_type, ANY_TYPE):
                for subscriber in self._by_type.get(key, ()):  # offer() never changes it
                    subscriber.offer(entry)
            return
        agents = {entry.sender}
        if entry.target_agent:
            agents.add(entry.target_agent)
        if entry.recipients:
            agents.update(agent for agent in entry.recipients.split(",") if agent)
        by_agent_type = self._by_agent_type
        for agent in agents:
            for pair in ((agent, signal_type), (agent, ANY_TYPE)):
                group = by_agent_type.get(pair)
                if group:
                    for subscriber in group:
                        subscriber.offer(entry)

    def _connect(self, key: str) -> Redis:
        # The read blocks for BLOCK_MS; a socket timeout shorter than that would cut it.
        return dedicated_client(
            self.hub.redis,
            key,
            client_name=f"agentcoord-signals:{self.namespace}",
            socket_timeout=BLOCK_MS / 1000 + 10,
        )

    async def _run(self) -> None:
        key = SignalStore.stream_key(self.namespace)
        redis: Redis | None = None
        try:
            # Through the shared client first: on a cluster this follows the slot to its
            # current primary, which the reader's own connection then goes to.
            self.position, _ = await self.hub.store.positions(self.namespace)
            redis = self._connect(key)
            self.ready.set()
            while True:
                reply: Any = await redis.xread(
                    {key: self.position}, count=READ_COUNT, block=BLOCK_MS
                )
                for _stream, entries in reply or ():
                    for entry_id, fields in entries:
                        entry = SignalEntry.from_fields(entry_id, fields)
                        self.position = entry_id
                        self._offer(entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("signal reader failed", namespace=self.namespace, error=type(exc).__name__)
            self.error = Unavailable(
                "the signal stream's Redis connection failed; resume later",
                reason="REDIS_UNAVAILABLE",
            )
            for subscriber in tuple(self.subscribers):
                subscriber.fail(self.error)
            self.ready.set()
            self.hub._forget(self)
        finally:
            self._timer.cancel()
            if redis is not None:
                with contextlib.suppress(Exception):
                    await close_redis(redis)

    def stop(self) -> None:
        """Stops the read loop and the progress timer (also when the loop never started)."""
        self._timer.cancel()
        self.task.cancel()


class SignalHub:
    """Every live subscription of this server process, grouped by namespace.

    Args:
        redis: the shared client; readers copy its connection settings, never its connections.
        store: the SignalStore used for catch-up.
        queue_size: the most signals one subscription buffers (Settings.signal_queue_size).
        shutdown: set when a graceful stop begins; every subscription then ends UNAVAILABLE.
    """

    def __init__(
        self, redis: Redis, store: SignalStore, queue_size: int, shutdown: asyncio.Event
    ) -> None:
        self.redis = redis
        self.store = store
        self.queue_size = queue_size
        self._shutdown = shutdown
        self._readers: dict[str, _NamespaceReader] = {}
        self.progress_interval = PROGRESS_SECONDS
        self._watcher: asyncio.Task[None] | None = None
        self.overflows = 0
        """Subscriptions ended SUBSCRIBER_TOO_SLOW since start (read by metrics)."""

    def stats(self) -> dict[str, int]:
        """{namespace: live subscribers} for every namespace with a running reader."""
        return {ns: len(reader.subscribers) for ns, reader in self._readers.items()}

    def subscriptions(self, namespace: str) -> list[Subscription]:
        """The live subscriptions of a namespace in this process (empty without a reader)."""
        reader = self._readers.get(namespace)
        return list(reader.subscribers) if reader is not None else []

    def reader_tasks(self) -> list[asyncio.Task[Any]]:
        """The running reader tasks, one per namespace with subscribers."""
        return [reader.task for reader in self._readers.values()]

    def _forget(self, reader: _NamespaceReader) -> None:
        if self._readers.get(reader.namespace) is reader:
            del self._readers[reader.namespace]

    async def _watch_shutdown(self) -> None:
        await self._shutdown.wait()
        error = Unavailable(
            "the server is shutting down; resume on another server",
            reason="SERVER_SHUTTING_DOWN",
        )
        for reader in tuple(self._readers.values()):
            for subscriber in tuple(reader.subscribers):
                subscriber.fail(error)

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        namespace: str,
        agent_id: str,
        signal_types: Sequence[str],
        *,
        after: str | None,
        earliest: bool = False,
    ) -> AsyncIterator[Subscription]:
        """Registers a subscription for the block's duration and releases it on exit.

        `after` is a validated cursor, or None to start after the latest signal (or, with
        `earliest`, before the oldest retained one). The subscription's `start_cursor` is set
        before it is yielded.

        Raises Unavailable (SERVER_SHUTTING_DOWN) once a graceful stop has begun, or
        (REDIS_UNAVAILABLE) if the namespace's reader cannot reach Redis.
        """
        if self._shutdown.is_set():
            raise Unavailable(
                "the server is shutting down; resume on another server",
                reason="SERVER_SHUTTING_DOWN",
            )
        if self._watcher is None:
            self._watcher = asyncio.create_task(
                self._watch_shutdown(), name="signals-shutdown", context=contextvars.Context()
            )
        reader = self._readers.get(namespace)
        if reader is None:
            reader = self._readers[namespace] = _NamespaceReader(self, namespace)
        subscription = Subscription(self, namespace, agent_id, signal_types, self.queue_size)
        reader.add(subscription)
        try:
            await reader.ready.wait()
            if reader.error is not None:
                raise reader.error
            if after is not None:
                subscription.start_cursor = after
            elif earliest:
                _, subscription.start_cursor = await cancellable(self.store.positions(namespace))
                subscription.from_oldest = True
            else:
                subscription.start_cursor = reader.position
            yield subscription
        finally:
            reader.discard(subscription)
            if not reader.subscribers:
                self._forget(reader)
                reader.stop()
