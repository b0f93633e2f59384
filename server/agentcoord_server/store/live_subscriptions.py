"""The live-subscriptions quota (admin.proto NamespaceQuota.max_live_subscriptions, issue #14):
how many server-streaming calls (Subscribe, and any other stream wrapped by `hold`) a namespace
may hold open at once, counted across every server process on the Redis.

Layout: `ac:{<ns>}:subscriptions:live`, a sorted set of `<process id>:<n>` members, one per open
stream, scored by the Unix ms at which its lease runs out. Each process refreshes the leases of
its own open streams every `lease_seconds / 3` (one script per namespace) and removes a
stream's member when the stream ends. A process that dies without ending its streams (SIGKILL,
a lost host) stops refreshing them, so its members stop counting at most `lease_seconds` later:
the admission script first drops every member whose lease has run out. Scores come from Redis's
own clock (TIME inside the scripts), so processes on hosts with skewed clocks agree.

The admission check and the add are one script, so two processes admitting the last free slot
at once cannot both get it. The key expires `lease_seconds` after its last write, so a namespace
whose streams are all gone leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import os
import uuid
from collections.abc import AsyncIterator

import structlog
from redis.asyncio import Redis

from ..errors import quota_exceeded
from .keys import Keyspace
from .scripts import register_source

QUOTA = "live_subscriptions"
"""The quota's name in QUOTA_EXCEEDED's metadata and in QuotaUsage."""

REFRESH_BATCH = 1000
"""Members whose leases one refresh script call extends (bounds the script's argument list)."""

log = structlog.get_logger(__name__)

# KEYS: the live set, the namespace record. ARGV: member, lease ms, the server's default limit.
# Returns {'ok'} or {'quota', limit, used}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(redis.call('HGET', KEYS[2], 'quota:live_subscriptions') or '0') or 0
if limit <= 0 then
  limit = tonumber(ARGV[3])
end
if limit > 0 then
  local used = redis.call('ZCARD', KEYS[1])
  if used >= limit then
    return {'quota', limit, used}
  end
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return {'ok'}
"""

# KEYS: the live set. ARGV: lease ms, then the members to extend (this process's open streams).
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lease = tonumber(ARGV[1])
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = now + lease
  args[#args + 1] = ARGV[i]
end
if #args > 0 then
  redis.call('ZADD', KEYS[1], unpack(args))
end
redis.call('PEXPIRE', KEYS[1], lease)
return #ARGV - 1
"""


def live_key(namespace: str) -> str:
    """`ac:{<namespace>}:subscriptions:live`."""
    return Keyspace(namespace).key("subscriptions", "live")


class LiveSubscriptions:
    """This process's share of every namespace's live-subscriptions count.

    Args:
        redis: the shared client.
        default_limit: the server's default quota (Settings.quota_live_subscriptions; 0: none),
            used for a namespace whose record sets none.
        lease_seconds: how long a stream counts without a refresh; the bound on how long a
            killed process's streams keep counting (Settings.subscription_lease_seconds).
    """

    def __init__(self, redis: Redis, *, default_limit: int, lease_seconds: float) -> None:
        self._redis = redis
        self._default_limit = default_limit
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self.process_id = f"{os.getpid()}.{uuid.uuid4().hex[:12]}"
        self._ids = itertools.count(1)
        self._held: dict[str, set[str]] = {}
        # Orders a refresh against a release, so a refresh cannot re-add a member its stream
        # has just removed (which would count it for one more lease).
        self._lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()  # referenced until done
        self._admit = register_source(redis, _ADMIT, "subscriptions_admit")
        self._refresh = register_source(redis, _REFRESH, "subscriptions_refresh")

    @contextlib.asynccontextmanager
    async def hold(self, namespace: str) -> AsyncIterator[None]:
        """Counts one live stream of `namespace` for the block's duration. One round trip to
        enter, one to leave.

        Wrap a server-streaming handler's body in it before it yields anything, so a refused
        stream sends no message:

            async with ctx.live_subscriptions.hold(principal.namespace):
                ...

        Raises ResourceExhausted (QUOTA_EXCEEDED, quota "live_subscriptions", with the limit
        and the current use) when the namespace's streams already reach its quota (its own,
        set by UpdateNamespaceQuota, or else the server's default); nothing is counted then.
        """
        key = live_key(namespace)
        member = f"{self.process_id}:{next(self._ids)}"
        try:
            reply = await self._admit(
                keys=[key, Keyspace(namespace).key("namespace")],
                args=[member, self._lease_ms, self._default_limit],
            )
        except asyncio.CancelledError:
            # The call ended while the script ran, which may have counted it: uncount it now
            # rather than for a whole lease.
            release = asyncio.create_task(self._release(key, member), context=contextvars.Context())
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)
            raise
        if reply[0] == "quota":
            raise quota_exceeded(QUOTA, int(reply[1]), int(reply[2]))
        members = self._held.setdefault(namespace, set())
        members.add(member)
        if self._refresher is None:
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name="subscriptions-lease", context=contextvars.Context()
            )
        try:
            yield
        finally:
            members.discard(member)
            if not members and self._held.get(namespace) is members:
                del self._held[namespace]
            if not self._held and self._refresher is not None:
                self._refresher.cancel()
                self._refresher = None
            await self._release(key, member)

    async def _release(self, key: str, member: str) -> None:
        try:
            async with self._lock:
                await self._redis.zrem(key, member)
        except Exception as exc:  # its lease runs out instead
            log.warning("subscription_release_failed", error=type(exc).__name__)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self.refresh()
            except Exception as exc:  # retried at the next period
                log.warning("subscription_refresh_failed", error=type(exc).__name__)

    async def refresh(self) -> None:
        """Extends the lease of every stream this process holds open, one script call per
        namespace (per REFRESH_BATCH streams)."""
        async with self._lock:
            for namespace, members in list(self._held.items()):
                listed = list(members)
                for start in range(0, len(listed), REFRESH_BATCH):
                    batch = listed[start : start + REFRESH_BATCH]
                    await self._refresh(keys=[live_key(namespace)], args=[self._lease_ms, *batch])

