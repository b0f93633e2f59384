"""A reviewer agent (CONTRIBUTOR), one OS process: claims tasks of its capability, stashes its
findings, stages the pattern it found, tells the lead, until the lead says the review is done.

    AGENTCOORD_TARGET=… AGENTCOORD_TOKEN=… python worker.py security_review [--hang]

With --hang it stops working after its first claim (and is killed): its task must come back.
"""

from __future__ import annotations

import sys
import time

from agentcoord import Agent, AgentcoordError
from google.protobuf import json_format

from file_locks import reviewing_file
from scenario import LEAD, LEASE_SECONDS, SESSION_ID, say, target


def main(capability: str, hang: bool) -> None:
    with Agent(target()) as agent:
        me = agent.agent_id()
        coordinator = agent.coordinator()
        coordinator.register_agent([capability])
        session = agent.session(SESSION_ID)
        session.join()
        scope = session.get("scope")
        say(me, f"joined {SESSION_ID}: {scope['files_changed']} files to review for {capability}")

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
        say(me, "done")


if __name__ == "__main__":
    main(sys.argv[1], "--hang" in sys.argv[2:])
