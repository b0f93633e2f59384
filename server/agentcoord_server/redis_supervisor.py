"""Keeps the embedded redis-server running while the server runs (DESIGN.md, "Runtime").

A watcher waits on the child process itself (a blocking `wait()` in a thread, so a death is
seen at once, not at the next poll). When Redis exits without being asked to, the server is
told (`on_down`: health NOT_SERVING), Redis is started again from its data directory — the
lock stays held throughout, so no other server can step in — with a bounded number of attempts
and a doubling pause between them, and the server is told again (`on_up`: scripts loaded,
health SERVING). If every attempt fails, `on_failed` is called with the reason: the server
then exits non-zero, so whatever supervises it (systemd, Kubernetes) restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable

import structlog

from .embedded_redis import LOG_FILE, EmbeddedRedis

log = structlog.get_logger("agentcoord.redis")

RESTART_ATTEMPTS = 5
"""Tries to bring a dead embedded Redis back before the server gives up and exits."""
RESTART_BACKOFF = 0.25
"""Seconds between the first and second attempt, doubled after each failure."""


class RedisSupervisor:
    """Starts an EmbeddedRedis, restarts it when it dies, stops it.

    Args:
        embedded: the Redis to run.
        on_down: awaited when Redis died, before it is restarted.
        on_up: awaited once a restarted Redis answers.
        on_failed: called with a one-line reason when Redis cannot be brought back.
        attempts: restarts tried before giving up.
        backoff: seconds before the second attempt, doubled after each failure.
    """

    def __init__(
        self,
        embedded: EmbeddedRedis,
        *,
        on_down: Callable[[], Awaitable[None]],
        on_up: Callable[[], Awaitable[None]],
        on_failed: Callable[[str], None],
        attempts: int = RESTART_ATTEMPTS,
        backoff: float = RESTART_BACKOFF,
    ) -> None:
        self.embedded = embedded
        self._on_down = on_down
        self._on_up = on_up
        self._on_failed = on_failed
        self._attempts = attempts
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None

    async def _launch(self) -> str:
        await asyncio.to_thread(self.embedded.prepare)
        # On the event loop's thread, which lives as long as the server: the child's death
        # signal is tied to the thread that spawned it (EmbeddedRedis.spawn).
        self.embedded.spawn()
        return await asyncio.to_thread(self.embedded.wait_ready)

    async def start(self) -> str:
        """Starts Redis and its watcher; returns its URL.

        Raises DataDirectoryInUse or EmbeddedRedisError (nothing is left running then).
        """
        try:
            url = await self._launch()
        except BaseException:
            await asyncio.to_thread(self.embedded.stop)
            raise
        # A fresh context: the watcher outlives the call that started it.
        self._task = asyncio.create_task(
            self._watch(), name="embedded-redis-watcher", context=contextvars.Context()
        )
        return url

    async def _watch(self) -> None:
        while True:
            process = self.embedded.process
            if process is None:
                return
            returncode = await asyncio.to_thread(process.wait)
            log.error(
                "the embedded redis-server exited; restarting it",
                pid=process.pid,
                returncode=returncode,
            )
            await self._on_down()
            if not await self._restart():
                return

    async def _restart(self) -> bool:
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                await self._launch()
                await self._on_up()  # fails too if the new Redis died already
            except Exception as exc:
                log.error(
                    "restarting the embedded redis-server failed",
                    attempt=attempt,
                    attempts=self._attempts,
                    error=str(exc),
                )
                await asyncio.to_thread(self.embedded.stop_process, 5.0)
                if attempt < self._attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
                continue
            log.info("the embedded redis-server is back", attempt=attempt)
            return True
        failure = (
            f"the embedded redis-server exited and could not be restarted "
            f"({self._attempts} attempts); see {self.embedded.data_dir / LOG_FILE}"
        )
        log.error(failure)
        self._on_failed(failure)
        return False

    async def stop(self) -> None:
        """Stops watching, then stops Redis (SHUTDOWN SAVE) and releases the data directory."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.embedded.stop)
