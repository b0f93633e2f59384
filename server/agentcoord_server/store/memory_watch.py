"""Live working-memory watches and the expiry sweep.

WatchHub mirrors signal_fanout.SignalHub (read that module's docstring first): one reader per
namespace per process XREADs the namespace's entry-event log (`ac:{ns}:memory-log`, written by
the scripts that change entries, memory_events.lua) on its own single connection and offers each
event to the local watchers whose filter matches it, indexed by owner and by session. A watcher
never costs its own Redis connection.

No gaps, no duplicates, as for Subscribe: a watcher registers with the reader first, catches up
from its own revision with `MemoryStore.read_events` (which raises OutOfRange when the log was
trimmed past it), turns live when a page comes back short, reads one more page, and skips live
events at or before the last revision the catch-up covered. Revisions are the log's stream ids
('<revision>-0'), contiguous per namespace, so a trimmed cursor is always detected. A watcher
buffers at most `queue_size` events; a slow one ends RESOURCE_EXHAUSTED (SUBSCRIBER_TOO_SLOW).
Idle watchers get a progress report every `progress_interval` seconds when the namespace moved on.

MemoryExpirySweeper runs in every server process: every SWEEP_SECONDS it reads the namespaces
whose earliest entry is due (`ac:memory-expiring`) and calls `MemoryStore.sweep` for each, which
emits each due entry's EXPIRE event and removes it in one script. Whichever process gets there
first does it; the script re-checks every member, so each EXPIRE is emitted exactly once, within
about SWEEP_SECONDS of the entry's expire time, whether or not anyone is watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from ..errors import DomainError, OutOfRange, Unavailable
from ..redis_client import close_redis, dedicated_client
from .keys import Keyspace
from .memory import RAW, EntryEventRecord, MemoryStore, now_ms
from .signal_fanout import LiveStream, cancellable

log = structlog.get_logger("agentcoord.memory")

BLOCK_MS = 5000
"""How long one XREAD waits for new events before asking again (ms)."""
READ_COUNT = 200
"""Most events one XREAD returns (events carry values of up to --max-value-bytes each)."""
CATCH_UP_LIMIT = 200
"""Events per catch-up page (likewise bounded for the values they carry)."""
BATCH_EVENTS = 100
"""Most live events handed over at once."""
PROGRESS_SECONDS = 10.0
"""How often an idle watcher reports how far the namespace's history moved on."""
SWEEP_SECONDS = 0.25
"""How often every server process looks for due entries (EXPIRE events come this late at most,
plus the time one sweep takes)."""
SWEEP_LEASE_MS = 2000
"""How long a process's claim on a namespace's sweep lasts if it dies mid-sweep."""
SWEEP_BATCH = 200
"""Entries one sweep script ends at most (more due: swept again at once)."""
SWEEP_NAMESPACES = 100
"""Namespaces one sweep pass handles at most."""


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """What a watcher sees: a session's shared context (`session_id`), or working-memory
    entries of `owner` ('' with all_owners: everyone's) whose key starts with `key_prefix`."""

    owner: str
    all_owners: bool
    key_prefix: str
    session_id: str

    def matches(self, event: EntryEventRecord) -> bool:
        if self.session_id:
            # A session's EXPIRE has no key (its whole context went): every watcher of it sees it.
            return event.session_id == self.session_id and (
                not event.key or event.key.startswith(self.key_prefix)
            )
        if event.session_id:
            return False
        if not self.all_owners and event.owner != self.owner:
            return False
        return event.key.startswith(self.key_prefix)

    def index_key(self) -> tuple[str, str]:
        """The reader's index slot: ('s', session), ('o', owner) or ('*', '')."""
        if self.session_id:
            return ("s", self.session_id)
        if self.all_owners:
            return ("*", "")
        return ("o", self.owner)


@dataclass(frozen=True, slots=True)
class WatchProgress:
    """Every event up to `revision` was considered for the watcher: resume after it."""

    revision: int


class Watcher(LiveStream[EntryEventRecord]):
    """One WatchEntries stream: its filter, its bounded buffer and how it ended."""

    BATCH = BATCH_EVENTS
    OVERFLOW = "the watcher fell {n} events behind; resume from the last revision received"

    def __init__(self, hub: WatchHub, namespace: str, flt: WatchFilter, queue_size: int) -> None:
        super().__init__(hub, queue_size)
        self.namespace = namespace
        self.filter = flt
        self.start_revision = 0
        self._reader: _LogReader | None = None

    def offer(self, item: EntryEventRecord) -> None:
        """Called by the reader for each new event in this watcher's index slot."""
        if self.filter.matches(item):
            super().offer(item)

    async def events(self) -> AsyncIterator[list[EntryEventRecord] | WatchProgress]:
        """Stored events after `start_revision`, then live ones, in non-empty lists, with a
        WatchProgress when the position moved past events the watcher does not see. Raises the
        DomainError that ended it (OutOfRange for a trimmed revision)."""
        store = self._hub.store
        cursor = reported = self.start_revision
        while True:
            if self.error is not None:
                raise self.error
            page = await cancellable(store.read_events(self.namespace, cursor, CATCH_UP_LIMIT))
            if page.events:
                cursor = page.events[-1].revision
                seen = [e for e in page.events if self.filter.matches(e)]
                if seen:
                    yield seen
                    reported = seen[-1].revision
            if len(page.events) < CATCH_UP_LIMIT:
                if self._live:
                    break
                # Buffer live events from here on; the next page reads whatever was appended
                # between this page's read and this line.
                self._live = True
        if cursor != reported:
            yield WatchProgress(cursor)
        covered = cursor
        while True:
            live = await self._next_live()
            if live is None:
                passed = self._reader.position if self._reader is not None else 0
                if passed > covered:
                    covered = passed
                    yield WatchProgress(passed)
                continue
            live = [e for e in live if e.revision > covered]
            if live:
                covered = live[-1].revision
                yield live


class _LogReader:
    """The one XREAD loop over a namespace's event log in this process."""

    def __init__(self, hub: WatchHub, namespace: str) -> None:
        self.hub = hub
        self.namespace = namespace
        self.watchers: set[Watcher] = set()
        self._index: dict[tuple[str, str], set[Watcher]] = {}
        self.position = 0
        self.ready = asyncio.Event()
        self.error: DomainError | None = None
        self.task = asyncio.create_task(
            self._run(), name=f"memory-watch:{namespace}", context=contextvars.Context()
        )
        self._timer = asyncio.get_running_loop().call_later(
            hub.progress_interval, self._progress_tick
        )

    def _progress_tick(self) -> None:
        for watcher in tuple(self.watchers):
            watcher.tick()
        self._timer = asyncio.get_running_loop().call_later(
            self.hub.progress_interval, self._progress_tick
        )

    def add(self, watcher: Watcher) -> None:
        self.watchers.add(watcher)
        watcher._reader = self
        self._index.setdefault(watcher.filter.index_key(), set()).add(watcher)

    def discard(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        key = watcher.filter.index_key()
        group = self._index.get(key)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._index[key]

    def _offer(self, event: EntryEventRecord) -> None:
        index = self._index
        slots = [("s", event.session_id)] if event.session_id else [("o", event.owner), ("*", "")]
        for slot in slots:
            for watcher in index.get(slot, ()):
                watcher.offer(event)

    async def _run(self) -> None:
        key = Keyspace(self.namespace).key("memory-log")
        redis: Redis | None = None
        try:
            # Through the shared client first (on a cluster this finds the slot's primary).
            self.position = await self.hub.store.current_revision(self.namespace)
            redis = dedicated_client(
                self.hub.redis,
                key,
                client_name=f"agentcoord-memory-watch:{self.namespace}",
                socket_timeout=BLOCK_MS / 1000 + 10,
            )
            self.ready.set()
            while True:
                # Undecoded: values are protobuf bytes.
                reply: Any = await redis.execute_command(
                    "XREAD",
                    "COUNT",
                    READ_COUNT,
                    "BLOCK",
                    BLOCK_MS,
                    "STREAMS",
                    key,
                    f"{self.position}-0",
                    **RAW,
                )
                for _stream, entries in reply or ():
                    for entry_id, fields in entries:
                        event = EntryEventRecord.from_fields(entry_id, fields)
                        if event.revision != self.position + 1:
                            self._fell_behind(event.revision)
                        self.position = event.revision
                        self._offer(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "memory watch reader failed", namespace=self.namespace, error=type(exc).__name__
            )
            self.error = Unavailable(
                "the watch's Redis connection failed; resume later", reason="REDIS_UNAVAILABLE"
            )
            for watcher in tuple(self.watchers):
                watcher.fail(self.error)
            self.ready.set()
            self.hub._forget(self)
        finally:
            self._timer.cancel()
            if redis is not None:
                with contextlib.suppress(Exception):
                    await close_redis(redis)

    def _fell_behind(self, revision: int) -> None:
        """The log was trimmed past this reader's position (it fell a whole history behind):
        live watchers missed events, so they end OUT_OF_RANGE rather than see a gap. Watchers
        still catching up read the log themselves and are unaffected."""
        error = OutOfRange(
            f"the server's reader fell behind the kept history (events {self.position + 1} to "
            f"{revision - 1} are gone); re-read the entries, then watch from their revision",
            reason="REVISION_COMPACTED",
            metadata={"oldest_revision": str(revision - 1), "revision": str(revision)},
        )
        for watcher in tuple(self.watchers):
            if watcher._live:
                watcher.fail(error)

    def stop(self) -> None:
        self._timer.cancel()
        self.task.cancel()


class WatchHub:
    """Every live WatchEntries stream of this server process, grouped by namespace.

    Args:
        redis: the shared client; readers copy its settings, never its connections.
        store: the MemoryStore used for catch-up.
        queue_size: the most events one watcher buffers (Settings.signal_queue_size).
        shutdown: set when a graceful stop begins; every watch then ends UNAVAILABLE.
    """

    def __init__(
        self, redis: Redis, store: MemoryStore, queue_size: int, shutdown: asyncio.Event
    ) -> None:
        self.redis = redis
        self.store = store
        self.queue_size = queue_size
        self._shutdown = shutdown
        self._readers: dict[str, _LogReader] = {}
        self.progress_interval = PROGRESS_SECONDS
        self._shutdown_task: asyncio.Task[None] | None = None
        self.overflows = 0

    def stats(self) -> dict[str, int]:
        """{namespace: live watchers} for every namespace with a running reader."""
        return {ns: len(reader.watchers) for ns, reader in self._readers.items()}

    def _forget(self, reader: _LogReader) -> None:
        if self._readers.get(reader.namespace) is reader:
            del self._readers[reader.namespace]

    async def _watch_shutdown(self) -> None:
        await self._shutdown.wait()
        error = Unavailable(
            "the server is shutting down; resume on another server",
            reason="SERVER_SHUTTING_DOWN",
        )
        for reader in tuple(self._readers.values()):
            for watcher in tuple(reader.watchers):
                watcher.fail(error)

    @contextlib.asynccontextmanager
    async def watch(
        self, namespace: str, flt: WatchFilter, *, after: int | None
    ) -> AsyncIterator[Watcher]:
        """Registers a watcher for the block's duration. `after` is a revision, or None to
        start at the current one; `start_revision` is set before the watcher is yielded.
        Raises Unavailable (SERVER_SHUTTING_DOWN, REDIS_UNAVAILABLE)."""
        if self._shutdown.is_set():
            raise Unavailable(
                "the server is shutting down; resume on another server",
                reason="SERVER_SHUTTING_DOWN",
            )
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(
                self._watch_shutdown(), name="memory-watch-shutdown", context=contextvars.Context()
            )
        reader = self._readers.get(namespace)
        if reader is None:
            reader = self._readers[namespace] = _LogReader(self, namespace)
        watcher = Watcher(self, namespace, flt, self.queue_size)
        reader.add(watcher)
        try:
            await reader.ready.wait()
            if reader.error is not None:
                raise reader.error
            watcher.start_revision = reader.position if after is None else after
            yield watcher
        finally:
            reader.discard(watcher)
            if not reader.watchers:
                self._forget(reader)
                reader.stop()


class MemoryExpirySweeper:
    """The loop every server process runs so EXPIRE events are exact (module docstring)."""

    def __init__(self, store: MemoryStore, shutdown: asyncio.Event) -> None:
        self._store = store
        self._shutdown = shutdown
        self.swept = 0
        """EXPIRE events this process emitted (read by tests and metrics)."""
        self.task = asyncio.create_task(
            self._run(), name="memory-expiry-sweep", context=contextvars.Context()
        )

    async def _run(self) -> None:
        failing = False
        while not self._shutdown.is_set():
            try:
                now = now_ms()
                for namespace in await self._store.due_namespaces(now, SWEEP_NAMESPACES):
                    self.swept += await self._store.sweep(
                        namespace, now, SWEEP_LEASE_MS, SWEEP_BATCH
                    )
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep trying, log once per outage
                if not failing:
                    log.warning("memory expiry sweep failed", error=type(exc).__name__)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shutdown.wait(), SWEEP_SECONDS)

    def stop(self) -> None:
        self.task.cancel()
