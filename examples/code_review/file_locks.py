"""File locks in the code-review demo: a reviewer holds a lock on the file it reviews while
reviewing, and records the proof; the fleet's final check verifies it.

The record (`lock.<task id>` in the reviewer's working memory) holds the fencing token of the
reviewer's acquisition and what GetLock said in the middle of the review (holder and token), with
the review's start and end. The check: every review was done under its file's lock, held by its
reviewer; reviews of one file never overlapped and ran in the order of their fencing tokens
(which only grow); no lock is left held.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager

from agentcoord import Agent, AgentcoordError, Client

from scenario import FILE_LOCK_TTL_SECONDS, FILE_LOCKS, say


@contextmanager
def reviewing_file(agent: Agent, task_id: str) -> Iterator[None]:
    """Holds the lock on `task_id`'s file while the block runs (waiting for another reviewer
    of that file to finish first), then stashes the proof. A task with no file takes none."""
    if task_id not in FILE_LOCKS:
        yield
        return
    me = agent.agent_id()
    with agent.client.lock(FILE_LOCKS[task_id], ttl=FILE_LOCK_TTL_SECONDS, wait=60) as held:
        started = time.time()
        say(me, f"locked {held.lock_id} for {task_id} (fencing token {held.fencing_token})")
        yield
        seen = agent.client.locks.get_lock(held.lock_id)
        ended = time.time()
    agent.stash(
        f"lock.{task_id}",
        {
            "file": held.lock_id,
            "fencing_token": held.fencing_token,
            "holder_seen": seen.holder,
            "token_seen": seen.fencing_token,
            "start": started,
            "end": ended,
        },
    )


def check(steward: Client) -> list[str]:
    """The fleet's final check of the file locks; returns the failures."""
    problems = []
    by_file: dict[str, list[dict]] = {}
    for task_id, file in FILE_LOCKS.items():
        assignee = steward.tasks.get_task(task_id).assignee
        try:
            record = steward.memory.retrieve(f"lock.{task_id}", owner=assignee)
        except AgentcoordError as error:
            problems.append(f"{task_id} was reviewed without a recorded lock: {error.reason}")
            continue
        if record["file"] != file:
            problems.append(f"{task_id} was reviewed under the lock of {record['file']}")
        if (record["holder_seen"], record["token_seen"]) != (assignee, record["fencing_token"]):
            problems.append(f"{task_id}: during the review GetLock said {record}")
        by_file.setdefault(file, []).append(record)
    for file, records in by_file.items():
        records.sort(key=lambda r: r["fencing_token"])
        for before, after in itertools.pairwise(records):
            if after["fencing_token"] == before["fencing_token"] or after["start"] < before["end"]:
                problems.append(f"reviews of {file} overlapped or reused a token: {records}")
        try:
            held = steward.locks.get_lock(file)
            problems.append(f"{file} is still locked by {held.holder}")
        except AgentcoordError as error:
            if error.reason != "LOCK_NOT_FOUND":
                problems.append(f"GetLock({file}): {error.reason}")
    return problems
