"""Python stand-ins for the TypeScript worker and observer of the polyglot demo, with the same
contract (one JSON object per stdout line; see fleet.py): `fleet.py --stand-ins` uses them on a
checkout without clients/ts.

    AGENTCOORD_SERVER=… AGENTCOORD_TOKEN=… python standins.py worker|observer
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from agentcoord import AgentcoordError, Client


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def worker(client: Client) -> None:
    agent = client.admin.who_am_i().agent_id
    capabilities = os.environ.get("WORKER_CAPABILITIES", "lint,test").split(",")
    work = int(os.environ.get("WORKER_WORK_MS", "200")) / 1000
    client.tasks.register_agent(capabilities)

    def handle(task: Any) -> dict[str, Any]:
        emit(event="claimed", task_id=task.task_id, attempt=task.attempts, agent=agent)
        time.sleep(work)
        return {"worker": agent}

    runner = client.tasks.worker(
        handle, lease=float(os.environ.get("WORKER_LEASE_SECONDS", "3")), wait=2.0
    )
    while True:
        task = runner.run_once()
        if task is not None and task.status == 3:  # COMPLETED
            data = {"task_id": task.task_id, "attempt": task.attempts, "agent": agent}
            client.signals.send_signal("task.completed", data)
            emit(event="completed", **data)


def observer(client: Client) -> None:
    # The iterator opens its stream lazily; from the earliest retained signal nothing sent after
    # `ready` can be missed either way.
    signals = client.signals.subscribe(["task.completed"], earliest=True)
    emit(event="ready")
    try:
        client.memory.stash("observer-note", "an observer may not write")
        emit(event="write_not_refused")
    except AgentcoordError as error:
        emit(event="write_refused", code=error.code.name, reason=str(error.reason))
    for sig in signals:
        data = dict(sig.data)
        emit(event="signal", id=sig.id, task_id=data.get("task_id"), agent=data.get("agent"))


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    role = {"worker": worker, "observer": observer}[sys.argv[1]]
    with Client(os.environ["AGENTCOORD_SERVER"], token=os.environ["AGENTCOORD_TOKEN"]) as client:
        role(client)


if __name__ == "__main__":
    main()
