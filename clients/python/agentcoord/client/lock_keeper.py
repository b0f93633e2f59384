"""What the lock helpers (`client.lock(...)`, `AsyncHeldLock`/`HeldLock`) need that differs
between asyncio and threads: renewing a held lock in the background and telling the code
inside the block when the lock is lost.

`AsyncLockKeeper` (an asyncio task) cancels the task that entered the block when the lock is
lost, the way `asyncio.timeout` does, and the block ends with the loss; `make generate` maps it
to `LockKeeper` (a daemon thread), which cannot interrupt the block: it sets `lost`, and the
block's end raises the loss.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from .errors import AgentcoordError

_LOST_REASONS = {"LOCK_NOT_HELD"}


def _expired(ttl: float) -> AgentcoordError:
    import grpc

    from .reasons import ErrorReason

    return AgentcoordError(
        code=grpc.StatusCode.FAILED_PRECONDITION,
        message=f"the lock was not renewed within its TTL ({ttl} s): it may be held by "
        "another agent now (detected by the client)",
        reason=ErrorReason.LOCK_NOT_HELD,
    )


class AsyncLockKeeper:
    """Calls `await renew()` every `interval` seconds while started. The lock counts as lost
    when the server answers LOCK_NOT_HELD or when no renewal succeeded for `ttl` seconds (the
    lock has then expired on the server); other failures (e.g. UNAVAILABLE) are retried at the
    next interval. On a loss it cancels the task that called `start()`, once."""

    def __init__(
        self, renew: Callable[[], Awaitable[object]], interval: float, ttl: float
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._ttl = ttl
        self._task: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[object] | None = None
        self._cancelled_owner = False
        self.lost: AgentcoordError | None = None

    def start(self) -> None:
        self._owner = asyncio.current_task()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._interval)
            sent = time.monotonic()  # a successful renewal's TTL counts from before it was sent
            try:
                await self._renew()
                renewed = sent
            except AgentcoordError as exc:
                if exc.reason in _LOST_REASONS:
                    self._lose(exc)
                    return
            except Exception:
                pass
            if time.monotonic() - renewed >= self._ttl:
                self._lose(_expired(self._ttl))
                return

    def _lose(self, error: AgentcoordError) -> None:
        self.lost = error
        if self._owner is not None and not self._owner.done():
            self._cancelled_owner = True
            self._owner.cancel()

    async def stop(self, exc: BaseException | None) -> AgentcoordError | None:
        """Stops renewing. Returns the loss to raise (None if the lock was kept). `exc` is
        what the block raised: the cancellation this keeper caused is taken back (as
        `asyncio.timeout` does), so the caller raises the loss instead of CancelledError; a
        cancellation from elsewhere still propagates (None is returned then)."""
        if self._cancelled_owner and self._owner is not None:
            others = self._owner.uncancel()
            if not isinstance(exc, asyncio.CancelledError):
                try:  # the block ended before the cancellation reached it: take it here
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    if others:
                        raise
            elif others:
                return None
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.lost


class LockKeeper:
    """Calls `renew()` every `interval` seconds from a daemon thread while started; `lost` as
    for AsyncLockKeeper, but the block is not interrupted (a thread cannot be)."""

    def __init__(self, renew: Callable[[], object], interval: float, ttl: float) -> None:
        self._renew = renew
        self._interval = interval
        self._ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentcoord-lock", daemon=True)
        self.lost: AgentcoordError | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self._interval):
            sent = time.monotonic()
            try:
                self._renew()
                renewed = sent
            except AgentcoordError as exc:
                if exc.reason in _LOST_REASONS:
                    self.lost = exc
                    return
            except Exception:
                pass
            if time.monotonic() - renewed >= self._ttl:
                self.lost = _expired(self._ttl)
                return

    def stop(self, exc: BaseException | None) -> AgentcoordError | None:
        """Stops renewing; returns the loss (None if the lock was kept)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.lost
