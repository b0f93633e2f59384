"""Runs the code-review fleet end to end and checks its outcome; `make demo` runs this.

1. Starts `agentcoord serve` on a free loopback port with an embedded Redis in a temp dir.
2. As the steward (the bootstrap token), issues a token per agent.
3. Starts the lead (it opens the session and adds the tasks), the monitor and the reviewers,
   each its own OS process; kills performance-1 while it holds a task and starts
   performance-2, which must get that task once the lease expires.
4. Waits for everyone, then checks the aggregate, the library and the redelivered task against
   the scenario. Exit status 0 only if all of it is what the scenario implies.

    python examples/code_review/fleet.py

With DEMO_REDIS_URL set (e.g. `redis+cluster://127.0.0.1:7000`) the server runs on that Redis
instead, and the steward is the STEWARD token in AGENTCOORD_STEWARD_TOKEN (a Redis that
already holds tokens bootstraps none); the fleet then works in that token's namespace.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from agentcoord import AgentcoordError, Client
from grpc_health.v1 import health_pb2, health_pb2_grpc

import file_locks
import in_time
from scenario import (
    EXPECTED_LIBRARY,
    EXPECTED_REJECTED,
    LEAD,
    MONITOR,
    REPLACEMENT,
    REVISED_SCOPE,
    SCOPE_KEY,
    SCOPE_SEEN_KEY,
    SCOPE_WATCHER,
    TASKS,
    TIERS,
    VICTIM,
    WORKERS,
    count_by_type,
    say,
)

HERE = Path(__file__).resolve().parent
ME = "fleet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"agentcoord did not start serving on {address}")


def wait_for(predicate, what: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class Fleet:
    def __init__(self, data_dir: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.data_dir = data_dir
        os.environ["FLEET_T0"] = str(time.time())
        self.env = {**os.environ, "AGENTCOORD_TARGET": self.address}
        self.env.pop("REDIS_URL", None)
        self.redis_url = self.env.pop("DEMO_REDIS_URL", None)
        self.steward_token = self.env.pop("AGENTCOORD_STEWARD_TOKEN", None)
        self.env["PYTHONPATH"] = os.pathsep.join([str(HERE), self.env.get("PYTHONPATH", "")])
        self.tokens: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.server: subprocess.Popen[bytes] | None = None

    def start_server(self) -> None:
        log = open(self.data_dir / "server.log", "wb")
        self.server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentcoord_server.cli",
                "serve",
                "--listen",
                self.address,
                "--data-dir",
                str(self.data_dir / "redis"),
                "--log-format",
                "json",
                *(["--redis-url", self.redis_url] if self.redis_url else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        wait_until_serving(self.address)
        redis = self.redis_url if self.redis_url else "embedded Redis"
        say(ME, f"agentcoord serving on {self.address} ({redis}, logs in server.log)")

    def issue_tokens(self, steward: Client) -> None:
        for agent_id, tier in (TIERS | in_time.TIERS).items():
            issued = steward.admin.issue_token(agent_id, tier, description="code-review demo")
            self.tokens[agent_id] = issued.token
        say(
            ME,
            "steward issued tokens: "
            + ", ".join(f"{a}={t}" for a, t in (TIERS | in_time.TIERS).items()),
        )

    def spawn(self, agent_id: str, script: str, *args: str) -> None:
        env = {**self.env, "AGENTCOORD_TOKEN": self.tokens[agent_id]}
        self.processes[agent_id] = subprocess.Popen(
            [sys.executable, str(HERE / script), *args], env=env
        )

    def wait_all(self, timeout: float = 60.0) -> dict[str, int]:
        codes = {}
        deadline = time.monotonic() + timeout
        for agent_id, process in self.processes.items():
            try:
                codes[agent_id] = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[agent_id] = process.wait()
        return codes

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)  # it stops its embedded Redis itself
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


def check_scope_watch(steward: Client) -> list[str]:
    """The watched scope (issue #16): the lead's revised entry is what the watcher recorded."""
    problems = []
    scope = steward.memory.retrieve_entry(SCOPE_KEY, owner=LEAD)
    if steward.memory.retrieve(SCOPE_KEY, owner=LEAD) != REVISED_SCOPE:
        problems.append(f"the lead's {SCOPE_KEY} was never revised")
    try:
        seen = steward.memory.retrieve(SCOPE_SEEN_KEY, owner=SCOPE_WATCHER)
    except AgentcoordError as error:
        return [*problems, f"{SCOPE_WATCHER} never reacted to the revised scope: {error.reason}"]
    expected = {"files_changed": REVISED_SCOPE["files_changed"], "revision": scope.revision}
    if seen != expected:
        problems.append(f"{SCOPE_WATCHER} saw {seen}, expected {expected}")
    return problems


def check(steward: Client, victim_task: str, codes: dict[str, int]) -> list[str]:
    """What the scenario implies, compared with what the server holds; returns the failures."""
    problems = []
    expected_codes = {agent: 0 for agent in codes} | {VICTIM: -signal.SIGKILL}
    if codes != expected_codes:
        problems.append(f"exit codes {codes}, expected {expected_codes}")

    aggregate = steward.tasks.aggregate_results()
    by_agent = dict(aggregate.by_agent)
    expected_by_agent = {"security-1": 2, "style-1": 2, REPLACEMENT: 2} | in_time.EXTRA_BY_AGENT
    expected_total = len(TASKS) + sum(in_time.EXTRA_BY_TYPE.values())
    if aggregate.total_completed != expected_total:
        problems.append(f"total completed {aggregate.total_completed}, expected {expected_total}")
    if dict(aggregate.by_type) != count_by_type() | in_time.EXTRA_BY_TYPE:
        problems.append(
            f"by type {dict(aggregate.by_type)}, expected {count_by_type() | in_time.EXTRA_BY_TYPE}"
        )
    if by_agent != expected_by_agent:
        problems.append(f"by agent {by_agent}, expected {expected_by_agent}")

    task = steward.tasks.get_task(victim_task)
    if (task.assignee, task.attempts, task.status) != (REPLACEMENT, 2, 3):  # 3: COMPLETED
        problems.append(
            f"{victim_task}: assignee {task.assignee}, attempts {task.attempts}, status {task.status}"
        )

    for task_id, (*_, pattern) in TASKS.items():
        assignee = steward.tasks.get_task(task_id).assignee
        try:
            finding = steward.memory.retrieve(f"finding.{task_id}", owner=assignee)
        except AgentcoordError as error:
            problems.append(f"no finding for {task_id} in {assignee}'s memory: {error.reason}")
            continue
        if finding != {"task": task_id, "pattern": pattern["id"]}:
            problems.append(f"{assignee}'s finding for {task_id} is {finding}")

    library = sorted(p.pattern_id for p in steward.staging.list_patterns(page_size=100).patterns)
    if library != EXPECTED_LIBRARY:
        problems.append(f"library {library}, expected {EXPECTED_LIBRARY}")
    left = [p.pattern_id for p in steward.staging.list_staged_patterns().patterns]
    if left:
        problems.append(f"still staged, neither promoted nor rejected: {left}")
    for pattern_id in EXPECTED_REJECTED:
        rejection = steward.staging.get_pattern_rejection(pattern_id)
        if rejection.rejected_by != LEAD:
            problems.append(f"{pattern_id} rejected by {rejection.rejected_by!r}")
    problems.extend(in_time.check(steward))
    problems.extend(file_locks.check(steward))  # each review held its file's lock
    problems.extend(check_scope_watch(steward))  # style-1 saw the lead's revised scope
    return problems


def main() -> int:
    # SIGTERM (`timeout`, a cancelled CI job) unwinds like Ctrl-C, so the `finally` below stops
    # the server and the agents instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory(prefix="agentcoord-demo-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            fleet.start_server()
            steward_token = (
                fleet.steward_token
                or (fleet.data_dir / "redis" / "bootstrap-token").read_text().strip()
            )
            with Client(fleet.address, token=steward_token) as steward:
                fleet.issue_tokens(steward)

                fleet.spawn(LEAD, "lead.py")
                wait_for(
                    lambda: len(steward.tasks.list_tasks(page_size=100).tasks) >= len(TASKS),
                    "the lead's tasks",
                )
                fleet.spawn(MONITOR, "monitor.py")
                fleet.spawn(in_time.DOCS_REVIEWER, "docs_reviewer.py")
                for agent_id, capability in WORKERS.items():
                    if agent_id != REPLACEMENT:
                        fleet.spawn(
                            agent_id,
                            "worker.py",
                            capability,
                            *(["--hang"] if agent_id == VICTIM else []),
                        )

                held = wait_for(
                    lambda: steward.tasks.list_tasks(status="claimed", assignee=VICTIM).tasks,
                    f"{VICTIM} to claim a task",
                )
                victim_task = held[0].task_id
                fleet.processes[VICTIM].kill()
                say(
                    ME,
                    f"killed {VICTIM} (SIGKILL) while it held {victim_task}; starting {REPLACEMENT}",
                )
                fleet.spawn(REPLACEMENT, "worker.py", WORKERS[REPLACEMENT])

                codes = fleet.wait_all()
                problems = check(steward, victim_task, codes)
        finally:
            fleet.stop()
        if problems:
            for problem in problems:
                say(ME, f"CHECK FAILED: {problem}")
            print(
                (fleet.data_dir / "server.log").read_text()[-3000:]
                if (fleet.data_dir / "server.log").exists()
                else ""
            )
            return 1
        say(
            ME,
            f"all checks passed: {len(TASKS)} tasks completed once each, {victim_task} redelivered "
            f"to {REPLACEMENT}, library = {EXPECTED_LIBRARY}, every review under its file's lock",
        )
        return 0


if __name__ == "__main__":
    sys.exit(main())
