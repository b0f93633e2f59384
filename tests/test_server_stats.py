"""GetServerStats says what a namespace holds, from index cardinalities, never a SCAN
(issues #12 and #14)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis
from agentcoord.v1 import admin_pb2


def commands(redis_client: redis.Redis, name: str) -> int:
    stats = redis_client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def queue(stats: admin_pb2.NamespaceStats, task_type: str) -> tuple[int, int, int, int]:
    (found,) = [q for q in stats.task_queues if q.task_type == task_type]
    return found.pending, found.backing_off, found.claimed, found.completed


def test_server_stats_count_what_the_callers_namespace_holds_without_a_scan(
    make_client, namespace, redis_client
):
    worker = make_client("worker", "VALIDATOR")
    other = make_client("other", "CONTRIBUTOR")
    # Working memory: 3 + 2 live entries of two owners; one deleted, one expired: not counted.
    for key in ("a", "b", "c", "gone"):
        worker.memory.stash(key, 1)
    worker.memory.delete_entry("gone")
    worker.memory.stash("brief", 1, ttl=0.001)
    other.memory.stash("x", 1)
    other.memory.stash("y", 1)
    # Sessions, staged patterns (one promoted, one rejected), conflicts (one resolved).
    worker.memory.create_session("s1")
    worker.memory.create_session("s2")
    for pattern_id in ("p1", "p2", "p3"):
        worker.staging.stage_pattern(
            pattern_id=pattern_id, pattern_type="t", name=pattern_id, confidence=0.9
        )
    worker.staging.promote_pattern("p1")
    worker.staging.reject_pattern("p2", reason="no")
    worker.staging.create_conflict(conflict_id="c1", positions={"worker": "a"})
    worker.staging.create_conflict(conflict_id="c2", positions={"worker": "b"})
    worker.staging.resolve_conflict("c1", resolution="a")
    # Tasks: "build" 2 pending + 1 claimed + 1 backing off; "test" 1 completed; "deploy" dead.
    for _ in range(4):
        worker.tasks.add_task(task_type="build")
    claimed = worker.tasks.claim_task(task_types=["build"])
    retried = worker.tasks.claim_task(task_types=["build"])
    assert claimed is not None and retried is not None
    worker.tasks.fail_task(
        task_id=retried.task_id, fencing_token=retried.lease.fencing_token, backoff=600
    )
    worker.tasks.add_task(task_type="test")
    done = worker.tasks.claim_task(task_types=["test"])
    assert done is not None
    worker.tasks.complete_task(task_id=done.task_id, fencing_token=done.lease.fencing_token)
    worker.tasks.add_task(task_type="deploy", max_attempts=1)
    dead = worker.tasks.claim_task(task_types=["deploy"])
    assert dead is not None
    worker.tasks.fail_task(
        task_id=dead.task_id, fencing_token=dead.lease.fencing_token, retryable=False
    )
    worker.signals.send_signal("ping")
    worker.signals.send_signal("pong")
    # Another namespace's data is never counted.
    make_client("worker", "CONTRIBUTOR", f"{namespace}-b").memory.stash("elsewhere", 1)
    time.sleep(0.01)  # past the 1 ms entry's expiry

    scans = commands(redis_client, "scan")
    stats = make_client("looker", "OBSERVER").admin.get_server_stats().namespace_stats

    assert commands(redis_client, "scan") == scans
    assert stats.namespace == namespace
    assert (stats.memory_entries, stats.memory_owners) == (5, 2)
    assert stats.sessions == 2
    assert (stats.staged_patterns, stats.library_patterns, stats.open_conflicts) == (1, 1, 1)
    assert queue(stats, "build") == (2, 1, 1, 0)
    assert queue(stats, "test") == (0, 0, 0, 1)
    assert queue(stats, "deploy") == (0, 0, 0, 0)
    assert [q.task_type for q in stats.task_queues] == ["deploy", "test", "build"]
    tasks = stats.tasks
    assert (tasks.pending, tasks.backing_off, tasks.claimed) == (2, 1, 1)
    assert (tasks.dead_letters, tasks.completed) == (1, 1)
    assert stats.retained_signals == 2
    assert stats.live_subscriptions == 0
    assert not stats.truncated


async def test_server_stats_count_this_servers_live_subscriptions(make_aclient):
    watcher = make_aclient("watcher", "OBSERVER")
    signals = watcher.signals.subscribe()
    reading = asyncio.ensure_future(signals.__anext__())
    try:
        deadline = time.monotonic() + 10
        while True:
            stats = (await watcher.admin.get_server_stats()).namespace_stats
            if stats.live_subscriptions == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert stats.live_subscriptions == 1
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await signals.aclose()
