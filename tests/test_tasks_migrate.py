"""A server upgraded in place moves tasks of the layout before issue 13 (a key per task,
per-type queues and stats) at start, so no pending or claimed task is lost
(store/tasks_migrate.py)."""

from __future__ import annotations

import json

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord.v1 import tasks_pb2
from agentcoord_server.store.tasks_migrate import LAYOUT_KEY

from .conftest import server_settings
from .support import ServerThread

HOUR_MS = 3600 * 1000


def write_old_layout(r, namespace: str) -> None:
    """Tasks, stats and a registration as the scripts before issue 13 wrote them."""
    p = f"ac:{{{namespace}}}:"
    seconds, micros = r.time()
    now = int(seconds) * 1000 + int(micros) // 1000

    def task(task_id: str, seq: int, status: str, **extra: object) -> None:
        fields = {
            "id": task_id, "type": "review", "desc": task_id, "pri": 5, "payload": "{}",
            "status": status, "attempts": 0, "max": 3, "by": "adder", "created": now,
            "updated": now, "score": f"5{seq:013d}", "seq": seq, "exp": now + HOUR_MS,
            "why": "", "avail": "",
        }  # fmt: skip
        fields.update(extra)
        r.hset(f"{p}tasks:t:{task_id}", mapping=fields)
        r.pexpire(f"{p}tasks:t:{task_id}", HOUR_MS)
        r.zadd(f"{p}tasks:index", {task_id: seq})

    task("p1", 1, "pending")
    r.zadd(f"{p}tasks:q:review", {"p1": 50000000000001})
    task("c1", 2, "claimed", attempts=1, assignee="worker", token=7, lease_exp=now + 600_000)
    r.zadd(f"{p}tasks:l:review", {"c1": now + 600_000})
    task("s1", 3, "pending", nb=now + HOUR_MS, why="scheduled", avail=now + HOUR_MS)
    r.zadd(f"{p}tasks:d:review", {"s1": now + HOUR_MS})
    task("x1", 4, "dead", attempts=3, err="boom")
    r.zadd(f"{p}tasks:dead", {"x1": now})
    r.set(f"{p}tasks:seq", 4)
    r.set(f"{p}tasks:fence", 7)
    r.hset(f"{p}tasks:stats", "total", 2)
    r.hset(f"{p}tasks:stats:agents", "worker", 2)
    r.hset(f"{p}tasks:stats:types", "review", 2)
    r.hset(f"{p}tasks:stats:agents:review", "worker", 2)
    for n in (1, 2):
        summary = json.dumps({"id": f"old{n}", "type": "review", "agent": "worker", "at": now})
        r.lpush(f"{p}tasks:recent:review", summary)
        r.lpush(f"{p}tasks:recent", summary)
    r.hset(f"{p}agents:a:worker", mapping={"id": "worker", "caps": "review", "cx": "gone1"})
    r.hset(f"{p}agents:a:worker", mapping={"registered": now, "seen": now})
    r.pexpire(f"{p}agents:a:worker", HOUR_MS)
    r.set(f"{p}tasks:recent:odd", "not a list")  # a name of the old layout, not its type


@pytest.mark.standalone_only  # starts a server of its own: once is enough
def test_an_upgraded_server_moves_old_layout_tasks_and_loses_none(
    redis_url, redis_client, namespace, make_client
):
    write_old_layout(redis_client, namespace)
    redis_client.delete(LAYOUT_KEY)  # as on a Redis an older server wrote

    ServerThread(server_settings(redis_url)).start().stop()
    ServerThread(server_settings(redis_url)).start().stop()  # a second start moves nothing twice

    left = list(redis_client.scan_iter(match=f"ac:{{{namespace}}}:tasks:[tqld]:*"))
    assert left == []
    assert redis_client.get(LAYOUT_KEY) == "2"
    assert redis_client.get(f"ac:{{{namespace}}}:tasks:recent:odd") == "not a list"  # left
    other, worker = make_client("other"), make_client("worker")
    claimed = other.tasks.claim_task(task_types=["review"])
    assert claimed is not None and claimed.task_id == "p1"
    assert other.tasks.claim_task(task_types=["review"]) is None  # s1 is not due, c1 is held
    done = worker.tasks.complete_task(task_id="c1", fencing_token=7)
    assert done.status == tasks_pb2.TASK_STATUS_COMPLETED
    scheduled = other.tasks.get_task("s1")
    assert scheduled.status == tasks_pb2.TASK_STATUS_PENDING
    assert scheduled.wait_reason == tasks_pb2.TASK_WAIT_REASON_SCHEDULED
    assert [t.task_id for t in other.tasks.list_dead_letters().tasks] == ["x1"]
    assert [t.task_id for t in other.tasks.list_tasks().tasks] == ["p1", "c1", "s1", "x1"]
    review = other.tasks.aggregate_results("review")
    assert dict(review.by_agent) == {"worker": 3}
    assert [r.task_id for r in review.recent_results] == ["c1", "old2", "old1"]
    with pytest.raises(AgentcoordError) as caught:
        worker.tasks.heartbeat()
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TASK_CANCELLED",
    )
    assert caught.value.metadata["task_ids"] == "gone1"
