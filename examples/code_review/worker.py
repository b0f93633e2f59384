"""A reviewer agent (CONTRIBUTOR), one OS process: claims tasks of its capability, stashes its
findings, stages the pattern it found, tells the lead, until the lead says the review is done.

    AGENTCOORD_TARGET=… AGENTCOORD_TOKEN=… python worker.py security_review [--hang]

With --hang it stops working after its first claim (and is killed): its task must come back.
"""

from __future__ import annotations

import sys
import threading
import time

from agentcoord import Agent, AgentcoordError
from agentcoord.v1 import memory_pb2
from google.protobuf import json_format

from file_locks import reviewing_file
from scenario import (
    LEAD,
    LEASE_SECONDS,
    SCOPE_KEY,
    SCOPE_SEEN_KEY,
    SCOPE_WATCHER,
    SESSION_ID,
    say,
    target,
)

# --- the watched scope (issue #16) ---------------------------------------------------------


def watch_scope(agent: Agent, me: str) -> threading.Thread:
    """Watches the lead's scope entry from the revision read now and reacts to its first change
    (it may come before the watch opens: the watch catches up from that revision), recording
    what it saw in this reviewer's memory. Runs in a thread beside the review loop."""
    start = agent.client.memory.retrieve_entry(SCOPE_KEY, owner=LEAD)

    def follow() -> None:
        events = agent.client.memory.watch_entries(
            owner=LEAD, key_prefix=SCOPE_KEY, after_revision=start.revision, include_values=True
        )
        for event in events:
            if event.type == memory_pb2.ENTRY_EVENT_TYPE_PUT and event.key == SCOPE_KEY:
                files = int(json_format.MessageToDict(event.entry.value)["files_changed"])
                agent.stash(SCOPE_SEEN_KEY, {"files_changed": files, "revision": event.revision})
                say(me, f"saw the lead revise {SCOPE_KEY}: now {files} files")
                break
        events.close()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread


def main(capability: str, hang: bool) -> None:
    with Agent(target()) as agent:
        me = agent.agent_id()
        coordinator = agent.coordinator()
        coordinator.register_agent([capability])
        session = agent.session(SESSION_ID)
        session.join()
        scope = session.get("scope")
        say(me, f"joined {SESSION_ID}: {scope['files_changed']} files to review for {capability}")
        watcher = watch_scope(agent, me) if me == SCOPE_WATCHER else None

        while not agent.receive_signals("review.done"):
            task = coordinator.claim_task(capability, lease=LEASE_SECONDS, wait=1.0)
            if task is None:
                continue
            say(me, f"claimed {task.task_id} (priority {task.priority}, attempt {task.attempts})")
            if hang:
                say(me, "…stops responding while holding the lease")
                time.sleep(3600)
            with reviewing_file(agent, task.task_id):  # holds the file's lock (file_locks.py)
                time.sleep(0.3)  # reviewing
            pattern = json_format.MessageToDict(task.payload)["pattern"]
            agent.stash(f"finding.{task.task_id}", {"task": task.task_id, "pattern": pattern["id"]})
            agent.stage_pattern(
                pattern["id"],
                pattern_type=capability,
                name=pattern["name"],
                description=pattern["description"],
                confidence=pattern["confidence"],
                context={"task": task.task_id, "pull_request": scope["pull_request"]},
            )
            agent.send_signal(
                "review.pattern_staged",
                {"pattern": pattern["id"], "confidence": pattern["confidence"]},
                target_agent=LEAD,
            )
            try:
                coordinator.complete_task(task, {"pattern": pattern["id"], "issues": 1})
            except AgentcoordError as error:  # our lease was lost: someone else has it now
                say(me, f"lost the lease on {task.task_id}: {error.reason}")
                continue
            agent.send_signal("review.task_completed", {"task_id": task.task_id, "by": me})
            say(me, f"completed {task.task_id}, staged {pattern['id']} ({pattern['confidence']})")
        coordinator.client.tasks.deregister_agent()
        if watcher is not None:
            watcher.join(30)
        say(me, "done")


if __name__ == "__main__":
    main(sys.argv[1], "--hang" in sys.argv[2:])
