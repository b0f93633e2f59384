"""Named locks with fencing tokens in Redis (LockService's store; no gRPC types).

Keys (one namespace, one `{ns}` hash tag, so each script stays in one cluster slot; every key a
script touches is in its KEYS):
  ac:{ns}:locks:l:<lock_id>   hash {holder, token, acquired, expires}, expiring with the lock
  ac:{ns}:locks:fence         counter, no TTL: every acquisition INCRs it, so a fencing token
                              is larger than every earlier one in the namespace, also after a
                              lock expired (LockService's contract)
Channel (not a key): ac:{ns}:locks:wake, the id of each released lock (store/lock_wakeups.py).

One script per operation (store/lua/locks_*.lua), one round trip each; GetLock is one HMGET.
Times are Redis server time (TIME in the scripts), in ms. Expiry is Redis's own key expiry, so
an expired lock is free for the next acquisition with no background job.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from ..errors import FailedPrecondition, NotFound, Unavailable
from .keys import Keyspace
from .lock_wakeups import LockWakeups, channel
from .scripts import load_script

RECHECK_SECONDS = 5.0
"""A waiting acquisition looks again at least this often (seconds): a safety net for a release
whose wake-up was lost with a pub/sub connection. Releases wake waiters at once; an expiry at
the holder's expire time (the refused attempt says when)."""


@dataclass(frozen=True, slots=True)
class LockRecord:
    """A held lock. Times are ms since the epoch (Redis time); for a lock just released,
    expire_ms is the release time."""

    lock_id: str
    holder: str
    fencing_token: int
    acquire_ms: int
    expire_ms: int


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _record(lock_id: str, reply: Any) -> LockRecord:
    """From a script's {status, holder, token, acquired, expires, …} reply."""
    return LockRecord(lock_id, str(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]))


def _not_held(lock_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the caller does not hold lock {lock_id} under that fencing token (it expired, was "
        "released, or another acquisition holds it)",
        reason="LOCK_NOT_HELD",
        metadata={"lock_id": lock_id},
    )


def _not_found(lock_id: str) -> NotFound:
    return NotFound(
        f"nobody holds lock {lock_id}", reason="LOCK_NOT_FOUND", metadata={"lock_id": lock_id}
    )


class LockStore:
    """Locks of every namespace.

    Args:
        redis: the shared client (decode_responses=True).
        shutdown: set when the server begins a graceful stop (ends waits, closes the wake-up
            subscriber).
    """

    def __init__(self, redis: Redis, *, shutdown: asyncio.Event | None = None) -> None:
        self._redis = redis
        self._shutdown = shutdown if shutdown is not None else asyncio.Event()
        self.wakeups = LockWakeups(redis, self._shutdown)
        self._acquire = load_script(redis, "locks_acquire")
        self._renew = load_script(redis, "locks_renew")
        self._release = load_script(redis, "locks_release")

    @staticmethod
    def _keys(namespace: str, lock_id: str) -> tuple[str, str]:
        ks = Keyspace(namespace)
        return ks.key("locks", "l", lock_id), ks.key("locks", "fence")

    async def acquire(
        self, namespace: str, agent_id: str, lock_id: str, *, ttl_ms: int, wait_seconds: float
    ) -> LockRecord:
        """Acquires `lock_id` (a validated id) for `agent_id` for `ttl_ms`, waiting up to
        `wait_seconds` while it is held (by anyone, `agent_id` included: no re-entry).

        While waiting it holds no Redis connection: it sleeps until the lock is released
        through any server process (the longest waiter of this process first), the holder's
        TTL runs out, or RECHECK_SECONDS pass, then tries again.
        Raises FailedPrecondition (LOCK_HELD, metadata holder and expire_time) when the wait
        ran out; Unavailable (SERVER_SHUTTING_DOWN) when the server began stopping while it
        waited (nothing was acquired).
        """
        keys = self._keys(namespace, lock_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            mark = self.wakeups.mark(namespace)
            reply = await self._acquire(keys=keys, args=[agent_id, ttl_ms])
            if reply[0] == "ok":
                return _record(lock_id, reply)
            remaining = deadline - loop.time()
            if remaining <= 0:
                expire_ms = int(reply[4])
                raise FailedPrecondition(
                    f"lock {lock_id} is held by {reply[1]} until {_rfc3339(expire_ms)}",
                    reason="LOCK_HELD",
                    metadata={
                        "lock_id": lock_id,
                        "holder": str(reply[1]),
                        "expire_time": _rfc3339(expire_ms),
                    },
                )
            if self._shutdown.is_set():
                raise Unavailable(
                    "the server is shutting down; nothing was acquired: retry",
                    reason="SERVER_SHUTTING_DOWN",
                )
            pause = min(remaining, RECHECK_SECONDS)
            ttl_left = int(reply[5])
            if ttl_left >= 0:  # woken when the holder's TTL runs out, if not released before
                pause = min(pause, (ttl_left + 1) / 1000)
            await self.wakeups.wait(namespace, (lock_id,), mark, pause, self._shutdown)

    async def renew(
        self, namespace: str, agent_id: str, lock_id: str, fencing_token: int, ttl_ms: int
    ) -> LockRecord:
        """Restarts the TTL (to now + `ttl_ms`) of a lock `agent_id` holds under
        `fencing_token`. Raises FailedPrecondition (LOCK_NOT_HELD)."""
        key, _ = self._keys(namespace, lock_id)
        reply = await self._renew(keys=[key], args=[agent_id, fencing_token, ttl_ms])
        if reply[0] != "ok":
            raise _not_held(lock_id)
        return _record(lock_id, reply)

    async def release(
        self,
        namespace: str,
        agent_id: str,
        lock_id: str,
        fencing_token: int,
        *,
        force: bool = False,
    ) -> LockRecord:
        """Releases a lock `agent_id` holds under `fencing_token` (with `force`, whoever holds
        it) and wakes one waiting acquirer per server process. Returns the lock as it was
        held, expire_ms being the release time.

        Raises FailedPrecondition (LOCK_NOT_HELD); with force, NotFound (LOCK_NOT_FOUND) when
        nobody holds it.
        """
        key, _ = self._keys(namespace, lock_id)
        reply = await self._release(
            keys=[key],
            args=[agent_id, fencing_token, "1" if force else "0", channel(namespace), lock_id],
        )
        if reply[0] != "ok":
            raise _not_found(lock_id) if force else _not_held(lock_id)
        return _record(lock_id, reply)

    async def get(self, namespace: str, lock_id: str) -> LockRecord:
        """The lock as held now. Raises NotFound (LOCK_NOT_FOUND) when nobody holds it."""
        key, _ = self._keys(namespace, lock_id)
        holder, token, acquired, expires = await self._redis.hmget(
            key, ["holder", "token", "acquired", "expires"]
        )
        if holder is None:
            raise _not_found(lock_id)
        return LockRecord(
            lock_id, str(holder), int(token or 0), int(acquired or 0), int(expires or 0)
        )
