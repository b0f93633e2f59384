"""What the task worker helpers (`AsyncWorker`, `Worker`) need that differs between asyncio
and threads: keeping a lease renewed in the background while the handler works.

`AsyncLeaseKeeper` (an asyncio task) is what `_async/tasks.py` uses; `make generate` maps it to
`LeaseKeeper` (a daemon thread) for the sync client. Raise `PermanentTaskError` from a handler
to dead-letter the task at once instead of having it retried.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agentcoord.v1 import tasks_pb2

from .errors import AgentcoordError

TaskResult = Mapping[str, Any] | None
AsyncTaskHandler = Callable[[tasks_pb2.Task], Awaitable[TaskResult]]
"""An async handler: gets the claimed task, returns its result (a JSON-like dict) or None."""
TaskHandler = Callable[[tasks_pb2.Task], TaskResult]
"""A sync handler: gets the claimed task, returns its result (a JSON-like dict) or None."""

_LOST_REASONS = {"LEASE_LOST", "TASK_NOT_FOUND"}


class PermanentTaskError(Exception):
    """Raised by a handler: the task cannot succeed, dead-letter it (FailTask retryable=False).
    Any other exception fails the attempt as retryable."""


class AsyncLeaseKeeper:
    """`async with AsyncLeaseKeeper(renew, interval):` calls `await renew()` every `interval`
    seconds until the block ends. Sets `lost` and stops when the server says the lease is gone
    (LEASE_LOST / TASK_NOT_FOUND); other failures (e.g. UNAVAILABLE) are retried next interval.
    """

    def __init__(self, renew: Callable[[], Awaitable[object]], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.lost = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._renew()
            except AgentcoordError as exc:
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

    def __init__(self, renew: Callable[[], object], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentcoord-lease", daemon=True)
        self.lost = False

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._renew()
            except AgentcoordError as exc:
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
