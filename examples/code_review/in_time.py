"""Tasks in time in the code-review scenario (issue 16): the lead's `synthesis` task depends on
the six reviews and is claimed only after they complete; a seventh review (docs) is cancelled
while its reviewer holds it, and that reviewer's worker stops at once.

Kept in one module the lead, the fleet and its checks call into, so the other additions to the
demo stay independent of this one.
"""

from __future__ import annotations

import time
from typing import Any

from agentcoord import AgentcoordError, Client
from agentcoord.v1 import tasks_pb2

from scenario import LEAD, TASKS, fail, say

SYNTHESIS = "synthesis"  # task id and type
CANCELLED_REVIEW, CANCELLED_TYPE = "docs-readme", "docs_review"
DOCS_REVIEWER = "docs-1"
DOCS_LEASE_SECONDS = 60.0  # renewals every 20 s: stopping sooner proves the signal told it
TIERS = {DOCS_REVIEWER: "CONTRIBUTOR"}
# What the aggregate holds beyond the six reviews: the lead completes the synthesis.
EXTRA_BY_AGENT = {LEAD: 1}
EXTRA_BY_TYPE = {SYNTHESIS: 1}


def add_tasks(coordinator: Any) -> None:
    """The lead, right after adding the reviews: the synthesis (waiting for all six) and the
    docs review it will cancel. A claim of the synthesis now gets nothing."""
    added = coordinator.add_task(
        task_id=SYNTHESIS,
        task_type=SYNTHESIS,
        priority=10,
        description="Write the review summary from the six findings",
        depends_on=list(TASKS),
    )
    if coordinator.claim_task(SYNTHESIS) is not None:
        fail(LEAD, "the synthesis was claimable before its reviews completed")
    say(
        LEAD,
        f"added {SYNTHESIS}: waits for {added.dependencies_outstanding} reviews "
        f"({tasks_pb2.TaskWaitReason.Name(added.wait_reason)}); a claim now gets nothing",
    )
    coordinator.add_task(
        task_id=CANCELLED_REVIEW,
        task_type=CANCELLED_TYPE,
        description="Proof-read README.md (out of scope after all)",
    )


def cancel_held_review(coordinator: Any, timeout: float = 30.0) -> None:
    """The lead decides the docs review is out of scope once its reviewer holds it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = coordinator.client.tasks.get_task(CANCELLED_REVIEW)
        if task.status == tasks_pb2.TASK_STATUS_CLAIMED:
            coordinator.client.tasks.cancel_task(CANCELLED_REVIEW)
            say(LEAD, f"cancelled {CANCELLED_REVIEW} while {task.assignee} held it")
            return
        time.sleep(0.1)
    fail(LEAD, f"{CANCELLED_REVIEW} was never claimed")


def synthesize(coordinator: Any) -> None:
    """The lead, once it heard every review complete: claims the synthesis (now released) and
    completes it, recording when the server handed it out."""
    task = coordinator.claim_task(SYNTHESIS, lease=30, wait=10)
    if task is None:
        fail(LEAD, "the synthesis was not claimable after the reviews completed")
    claimed_ms = task.update_time.ToMilliseconds()
    coordinator.complete_task(task, {"reviews": len(TASKS), "claimed_ms": claimed_ms})
    say(LEAD, f"claimed and completed {SYNTHESIS} after all {len(TASKS)} reviews completed")


def check(steward: Client) -> list[str]:
    """The fleet's checks for this part: the synthesis was claimed no earlier than the last
    review's completion (server times), and the docs review ended cancelled, not completed."""
    problems = []
    try:
        synthesis = steward.tasks.get_task(SYNTHESIS)
        docs = steward.tasks.get_task(CANCELLED_REVIEW)
    except AgentcoordError as error:
        return [f"tasks in time: {error.reason}"]
    last_review = max(steward.tasks.get_task(t).complete_time.ToMilliseconds() for t in TASKS)
    claimed_ms = int(synthesis.result["claimed_ms"]) if "claimed_ms" in synthesis.result else 0
    if synthesis.status != tasks_pb2.TASK_STATUS_COMPLETED or synthesis.attempts != 1:
        problems.append(f"{SYNTHESIS}: status {synthesis.status}, attempts {synthesis.attempts}")
    if claimed_ms < last_review:
        problems.append(f"{SYNTHESIS} claimed at {claimed_ms}, before the last review {last_review}")
    if docs.status != tasks_pb2.TASK_STATUS_CANCELLED or docs.assignee != DOCS_REVIEWER:
        problems.append(f"{CANCELLED_REVIEW}: status {docs.status}, assignee {docs.assignee}")
    return problems
