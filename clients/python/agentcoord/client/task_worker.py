"""What the task worker helpers (`AsyncWorker`, `Worker`) need that differs between asyncio
and threads: keeping a lease renewed in the background while the handler works.

`AsyncLeaseKeeper` (an asyncio task) is what `_async/tasks.py` uses; `make generate` maps it to
`LeaseKeeper` (a daemon thread) for the sync client. Raise `PermanentTaskError` from a handler
to dead-letter the task at once instead of having it retried.

Cancellation (CancelTask of a task the worker holds): `AsyncHandlerRun` runs the handler as an
asyncio task that `cancel()` stops (the handler sees CancelledError). Two things call it: the
lease keeper, when a renewal answers TASK_CANCELLED, and `AsyncCancelWatch`, one Subscribe per
worker to the "task.cancelled" signal the server sends the holder in the cancelling step — the
signal stops the handler at once, the renewal (every lease/3) is the backstop for a signal
missed while the subscription was (re)connecting. The sync twins cannot interrupt a handler
running in the caller's thread: `HandlerRun.cancel()` only marks it, the worker then skips
the completion; `CancelWatch` is a no-op, since the renewal tells it just as usefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from agentcoord.v1 import signals_pb2, tasks_pb2

from .errors import AgentcoordError

TaskResult = Mapping[str, Any] | None
AsyncTaskHandler = Callable[[tasks_pb2.Task], Awaitable[TaskResult]]
"""An async handler: gets the claimed task, returns its result (a JSON-like dict) or None."""
TaskHandler = Callable[[tasks_pb2.Task], TaskResult]
"""A sync handler: gets the claimed task, returns its result (a JSON-like dict) or None."""

_LOST_REASONS = {"LEASE_LOST", "TASK_NOT_FOUND"}
CANCEL_SIGNAL_TYPE = "task.cancelled"
"""The signal CancelTask sends the holder of a claimed task (data: task_id, fencing_token)."""
RESUBSCRIBE_PAUSE = 1.0
"""Seconds AsyncCancelWatch waits before subscribing again after its stream failed."""


class TaskCancelled(Exception):
    """The task was cancelled while the handler ran (CancelTask): the handler was stopped and
    the worker neither completes nor fails it."""


class PermanentTaskError(Exception):
    """Raised by a handler: the task cannot succeed, dead-letter it (FailTask retryable=False).
    Any other exception fails the attempt as retryable."""


class AsyncHandlerRun:
    """One run of a handler on a task, as an asyncio task that `cancel()` stops."""

    def __init__(self, handler: Callable[[tasks_pb2.Task], Awaitable[TaskResult]]) -> None:
        self._handler = handler
        self._job: asyncio.Task[TaskResult] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Stops the handler (CancelledError inside it); `result` then raises TaskCancelled."""
        self.cancelled = True
        if self._job is not None:
            self._job.cancel()

    async def result(self, task: tasks_pb2.Task) -> TaskResult:
        """Runs the handler on `task`. Raises TaskCancelled if `cancel()` stopped it (or was
        called before); whatever the handler raised otherwise."""
        if self.cancelled:
            raise TaskCancelled(task.task_id)
        self._job = asyncio.ensure_future(self._handler(task))
        try:
            return await self._job
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.cancelled and (current is None or current.cancelling() == 0):
                raise TaskCancelled(task.task_id) from None
            raise  # the worker itself is being cancelled


class HandlerRun:
    """The sync twin of AsyncHandlerRun: the handler runs in the caller's thread and cannot be
    interrupted; `cancel()` marks the run, and `result` raises TaskCancelled once it returns."""

    def __init__(self, handler: Callable[[tasks_pb2.Task], TaskResult]) -> None:
        self._handler = handler
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def result(self, task: tasks_pb2.Task) -> TaskResult:
        if self.cancelled:
            raise TaskCancelled(task.task_id)
        value = self._handler(task)
        if self.cancelled:
            raise TaskCancelled(task.task_id)
        return value


class AsyncCancelWatch:
    """One live subscription to this agent's "task.cancelled" signals, shared by every task a
    worker handles: a signal naming a watched (task id, fencing token) cancels its run.

    Args:
        subscribe: opens the subscription (SignalsClient.subscribe for CANCEL_SIGNAL_TYPE).
    """

    def __init__(self, subscribe: Callable[[], AsyncIterator[signals_pb2.Signal]]) -> None:
        self._subscribe = subscribe
        self._runs: dict[tuple[str, int], AsyncHandlerRun] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agentcoord-cancel-watch")

    def watch(self, task_id: str, fencing_token: int, run: AsyncHandlerRun) -> None:
        self._runs[(task_id, fencing_token)] = run

    def unwatch(self, task_id: str, fencing_token: int) -> None:
        self._runs.pop((task_id, fencing_token), None)

    async def _run(self) -> None:
        while True:
            try:
                stream = self._subscribe()
                async for signal in stream:
                    fields = signal.data.fields
                    if "task_id" not in fields or "fencing_token" not in fields:
                        continue
                    key = (fields["task_id"].string_value, int(fields["fencing_token"].number_value))
                    run = self._runs.get(key)
                    if run is not None:
                        run.cancel()
            except asyncio.CancelledError:
                raise
            except AgentcoordError as exc:
                if exc.code.name in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
                    return  # it would fail again: the renewals alone tell the worker
                await asyncio.sleep(RESUBSCRIBE_PAUSE)
            except Exception:  # the renewal still tells the worker; subscribe again soon
                await asyncio.sleep(RESUBSCRIBE_PAUSE)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class CancelWatch:
    """The sync twin of AsyncCancelWatch: nothing to watch (see the module docstring)."""

    def __init__(self, subscribe: Callable[[], object]) -> None:
        del subscribe

    def start(self) -> None:
        pass

    def watch(self, task_id: str, fencing_token: int, run: HandlerRun) -> None:
        pass

    def unwatch(self, task_id: str, fencing_token: int) -> None:
        pass

    def close(self) -> None:
        pass


class AsyncLeaseKeeper:
    """`async with AsyncLeaseKeeper(renew, interval, on_cancelled):` calls `await renew()` every
    `interval` seconds until the block ends. Sets `lost` and stops when the server says the lease
    is gone (LEASE_LOST / TASK_NOT_FOUND), or calls `on_cancelled` and stops when it says the
    task was cancelled (TASK_CANCELLED); other failures (e.g. UNAVAILABLE) are retried next
    interval.
    """

    def __init__(
        self,
        renew: Callable[[], Awaitable[object]],
        interval: float,
        on_cancelled: Callable[[], None] | None = None,
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._on_cancelled = on_cancelled
        self._task: asyncio.Task[None] | None = None
        self.lost = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._renew()
            except AgentcoordError as exc:
                if exc.reason == "TASK_CANCELLED":
                    if self._on_cancelled is not None:
                        self._on_cancelled()
                    return
                if exc.reason in _LOST_REASONS:
                    self.lost = True
                    return
            except Exception:
                pass

    async def __aenter__(self) -> AsyncLeaseKeeper:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class LeaseKeeper:
    """`with LeaseKeeper(renew, interval):` calls `renew()` every `interval` seconds from a
    daemon thread until the block ends; `lost` as for AsyncLeaseKeeper."""

    def __init__(
        self,
        renew: Callable[[], object],
        interval: float,
        on_cancelled: Callable[[], None] | None = None,
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._on_cancelled = on_cancelled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentcoord-lease", daemon=True)
        self.lost = False

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._renew()
            except AgentcoordError as exc:
                if exc.reason == "TASK_CANCELLED":
                    if self._on_cancelled is not None:
                        self._on_cancelled()
                    return
                if exc.reason in _LOST_REASONS:
                    self.lost = True
                    return
            except Exception:
                pass

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
