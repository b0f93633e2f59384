"""One servicer module per proto service; this list is how the server finds them.

Each module exposes `PB2` (its generated `_pb2` module, whose descriptors declare the
required tiers) and `register(server, ctx) -> str` (adds the servicer, returns the service's
full name for health and reflection). To add a service, add its module here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import ModuleType

from redis.asyncio import Redis

from ..config import Settings
from ..store.live_subscriptions import LiveSubscriptions
from . import admin, locks, memory, signals, staging, tasks

SERVICE_MODULES: tuple[ModuleType, ...] = (admin, memory, staging, signals, tasks, locks)


@dataclass
class ServiceContext:
    """What servicers share, built once at start.

    redis_mode is an admin_pb2.RedisMode value; shutdown is set when the server begins a
    graceful stop, so long-lived streams can end with a status instead of being cut;
    live_subscriptions admits server-streaming calls under the namespace's live-subscriptions
    quota (`async with ctx.live_subscriptions.hold(namespace):` around a stream's body).
    """

    settings: Settings
    redis: Redis
    redis_mode: int
    server_version: str
    started_at: float = field(default_factory=time.monotonic)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    live_subscriptions: LiveSubscriptions = field(init=False)

    def __post_init__(self) -> None:
        self.live_subscriptions = LiveSubscriptions(
            self.redis,
            default_limit=self.settings.quota_live_subscriptions,
            lease_seconds=self.settings.subscription_lease_seconds,
        )
