"""Wake-ups for waiting lock acquisitions, across server processes: TaskWakeups' machinery
(store/task_wakeups.py) on the `ac:{ns}:locks:wake` channels.

A release (locks_release.lua) PUBLISHes the lock id; each server process's one pub/sub
connection (`agentcoord-lock-wakeups` in CLIENT LIST, one SUBSCRIBE per namespace with waiters)
wakes the longest-waiting acquirer of that lock in the process — one per process, not the
herd. An expiry publishes nothing (Redis expires the key silently): a refused acquisition learns
when the holder's TTL runs out and sleeps until then (LockStore.acquire), with the store's
safety re-check as the bound for anything missed.
"""

from __future__ import annotations

from .keys import Keyspace
from .task_wakeups import TaskWakeups


def channel(namespace: str) -> str:
    """The lock wake-up channel of a namespace (see locks_release.lua)."""
    return Keyspace(namespace).key(LockWakeups.AREA, "wake")


class LockWakeups(TaskWakeups):
    """The waiting acquisitions of this process. `wait(namespace, [lock_id], mark, timeout,
    shutdown)` returns when that lock was released in any server process since `mark`, at
    shutdown, or after `timeout` seconds."""

    AREA = "locks"
    CLIENT_NAME = "agentcoord-lock-wakeups"
