"""A mixed-language fleet end to end; `make demo-polyglot` runs this.

1. Starts `agentcoord serve` on a free loopback port with an embedded Redis in a temp dir.
2. As the steward (the bootstrap token) issues tokens: go-worker-1, go-worker-2, ts-worker-1
   CONTRIBUTOR, observer OBSERVER, coordinator VALIDATOR.
3. Starts the TypeScript OBSERVER (clients/ts/examples/observer.ts) and waits for its `ready`.
4. The Python coordinator (this process, the Python client) adds 30 tasks t01…t30 of types
   `lint` and `test` with varied priorities.
5. Starts two Go workers (clients/go/examples/worker, built once) and one TypeScript worker
   (clients/ts/examples/worker.ts). go-worker-1 is SIGKILLed right after it prints its first
   `claimed` line, holding that task's 3 s lease; another worker gets the task on attempt 2.
6. Waits until every task is COMPLETED and the observer printed a signal per task, SIGTERMs
   everyone, and exits 0 only if: every task completed exactly once (the killed worker's task on
   attempt 2), the observer saw each completion signal once and in stream order, its write was
   refused locally with TIER_TOO_LOW and the server's log has no Stash call from it, and every
   survivor exited 0. The programs' contract: clients/go/examples/worker/main.go and
   clients/ts/examples/{worker,observer}.ts (one JSON object per stdout line).

    python examples/polyglot/fleet.py
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from agentcoord import Client
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GO_DIR = ROOT / "clients" / "go"
TS_DIR = ROOT / "clients" / "ts"

GO_WORKERS = ["go-worker-1", "go-worker-2"]
TS_WORKER = "ts-worker-1"
OBSERVER = "observer"
COORDINATOR = "coordinator"
VICTIM = "go-worker-1"
TIERS = {
    **{agent: "CONTRIBUTOR" for agent in [*GO_WORKERS, TS_WORKER]},
    OBSERVER: "OBSERVER",
    COORDINATOR: "VALIDATOR",
}
LEASE_SECONDS = 3
WORK_MS = 200
# The victim works long enough that it surely still holds its lease when it is killed.
VICTIM_WORK_MS = 5000
# t01…t30, lint and test alternating, priorities 1..10 in a scrambled order.
TASKS = {f"t{i:02d}": ("lint" if i % 2 else "test", (i * 7) % 10 + 1) for i in range(1, 31)}
SIGNAL_TYPE = "task.completed"
T0 = time.monotonic()


def say(who: str, text: str) -> None:
    print(f"{time.monotonic() - T0:6.2f}s {who:<12} {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def stream_position(signal_id: str) -> tuple[int, int]:
    ms, seq = signal_id.split("-")
    return int(ms), int(seq)


class Program:
    """One agent's OS process; a thread reads its stdout, one JSON object per line."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        log_dir: Path,
        on_event: Callable[[Program, dict[str, Any]], None] | None = None,
    ) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._on_event = on_event
        self.stderr_path = log_dir / f"{name}.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                say(self.name, f"(not JSON) {raw.rstrip()}")
                continue
            if self._on_event is not None:
                self._on_event(self, event)  # first: the victim's kill must not wait for printing
            with self._lock:
                self.events.append(event)
            say(self.name, json.dumps(event))

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == event]

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                say(self.name, f"still running {timeout:.0f} s after SIGTERM: killed")
                self.process.kill()
        code = self.process.wait()
        self._reader.join(5)
        return code

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-2000:]


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {**os.environ, "AGENTCOORD_SERVER": self.address}
        self.env.pop("REDIS_URL", None)
        self.tokens: dict[str, str] = {}
        self.programs: dict[str, Program] = {}
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = tmp / "server.log"
        self.victim_task: str | None = None
        # Set by build(): each program's argv, and the TypeScript programs' working directory.
        self.go_worker: list[str] = []
        self.ts_worker: list[str] = []
        self.ts_observer: list[str] = []
        self.ts_cwd = TS_DIR

    # --- building and starting --------------------------------------------------------------

    def build(self) -> None:
        """The Go worker binary (so SIGKILL hits the worker itself, not `go run`), and the
        TypeScript package's dependencies from its lock file."""
        binary = self.tmp / "go-worker"
        subprocess.run(
            ["go", "build", "-o", str(binary), "./examples/worker"], cwd=GO_DIR, check=True
        )
        self.go_worker = [str(binary)]
        for program in ("worker.ts", "observer.ts"):
            if not (TS_DIR / "examples" / program).exists():
                raise SystemExit(f"{TS_DIR / 'examples' / program} is missing")
        if not (TS_DIR / "node_modules").exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, check=True)
        node = shutil.which("node") or "node"
        self.ts_worker = [node, "--import", "tsx", "examples/worker.ts"]
        self.ts_observer = [node, "--import", "tsx", "examples/observer.ts"]
        self.ts_cwd = TS_DIR

    def start_server(self) -> None:
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(
                [
                    sys.executable, "-m", "agentcoord_server.cli", "serve",
                    "--listen", self.address,
                    "--data-dir", str(self.tmp / "redis"),
                    "--log-format", "json",
                    "--shutdown-grace", "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        say("fleet", f"agentcoord serving on {self.address} (embedded Redis)")
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise TimeoutError(f"agentcoord did not serve on {self.address}")

    def issue_tokens(self, steward: Client) -> None:
        for agent, tier in TIERS.items():
            self.tokens[agent] = steward.admin.issue_token(
                agent, tier, description="polyglot demo"
            ).token
        say("fleet", "steward issued tokens: " + ", ".join(f"{a}={t}" for a, t in TIERS.items()))

    def spawn(
        self,
        name: str,
        argv: list[str],
        cwd: Path,
        work_ms: int = WORK_MS,
        on_event: Callable[[Program, dict[str, Any]], None] | None = None,
    ) -> Program:
        env = {
            **self.env,
            "AGENTCOORD_TOKEN": self.tokens[name],
            "WORKER_CAPABILITIES": "lint,test",
            "WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
            "WORKER_WORK_MS": str(work_ms),
        }
        program = Program(name, argv, cwd, env, self.tmp, on_event)
        self.programs[name] = program
        return program

    def kill_victim_on_first_claim(self, program: Program, event: dict[str, Any]) -> None:
        if event.get("event") == "claimed" and self.victim_task is None:
            program.process.kill()
            self.victim_task = str(event.get("task_id"))
            say("fleet", f"SIGKILLed {program.name} right after it claimed {self.victim_task}")

    def stop_programs(self) -> dict[str, int]:
        return {name: program.stop() for name, program in self.programs.items()}

    def stop(self) -> None:
        self.stop_programs()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)  # it stops its embedded Redis itself
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    # --- the checks --------------------------------------------------------------------------

    def check(self, steward: Client, codes: dict[str, int]) -> list[str]:
        problems = []
        workers = [*GO_WORKERS, TS_WORKER]
        completed = [e for w in workers for e in self.programs[w].of("completed")]
        counts = collections.Counter(str(e.get("task_id")) for e in completed)
        for task_id in TASKS:
            if counts[task_id] != 1:
                problems.append(f"{task_id} completed {counts[task_id]} times, want once")
        if extra := set(counts) - set(TASKS):
            problems.append(f"completions of unknown tasks {sorted(extra)}")

        victim = self.victim_task
        if victim is None:
            problems.append(f"{VICTIM} never claimed a task")
        else:
            done = [e for e in completed if e.get("task_id") == victim]
            if [(e.get("attempt"), e.get("agent") != VICTIM) for e in done] != [(2, True)]:
                problems.append(
                    f"the killed worker's task {victim} completed as {done}, want attempt 2"
                )
            task = steward.tasks.get_task(victim)
            if (task.status, task.attempts) != (3, 2):  # 3: COMPLETED
                problems.append(f"{victim} is status {task.status}, attempt {task.attempts}")

        observer = self.programs[OBSERVER]
        signals = observer.of("signal")
        seen = collections.Counter(str(e.get("task_id")) for e in signals)
        if sorted(seen) != sorted(TASKS) or set(seen.values()) != {1}:
            problems.append(f"the observer saw completions {dict(seen)}, want each task once")
        positions = [stream_position(str(e.get("id"))) for e in signals]
        if positions != sorted(positions) or len(set(positions)) != len(positions):
            problems.append("the observer's signals are not in stream order")
        by_task = {str(e.get("task_id")): e.get("agent") for e in completed}
        if mismatched := [
            e for e in signals if by_task.get(str(e.get("task_id"))) != e.get("agent")
        ]:
            problems.append(f"signals name another agent than the completion: {mismatched[:3]}")

        refused = observer.of("write_refused")
        if observer.of("write_not_refused") or [
            (e.get("code"), e.get("reason")) for e in refused
        ] != [("PERMISSION_DENIED", "TIER_TOO_LOW")]:
            problems.append(f"the observer's write was not refused locally: {observer.events[:3]}")
        stashes = [
            line
            for line in self.rpc_lines()
            if line.get("agent") == OBSERVER and str(line.get("method", "")).endswith("/Stash")
        ]
        if stashes:
            problems.append(f"the server saw the observer's Stash: {stashes}")
        if not [line for line in self.rpc_lines() if line.get("agent") == OBSERVER]:
            problems.append("the server's log has no call of the observer at all (is it logging?)")

        for worker in ("go-worker-2", TS_WORKER):
            if not self.programs[worker].of("completed"):
                problems.append(f"{worker} completed no task")

        expected = {name: 0 for name in codes} | {VICTIM: -signal.SIGKILL}
        if codes != expected:
            problems.append(f"exit codes {codes}, want {expected}")
        return problems

    def rpc_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.server_log.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if line.get("event") == "rpc":
                lines.append(line)
        return lines


def completed_count(client: Client) -> int:
    statuses = {}
    token = ""
    while True:
        page = client.tasks.list_tasks(page_size=100, page_token=token)
        statuses.update({t.task_id: t.status for t in page.tasks})
        token = page.next_page_token
        if not token:
            break
    return sum(1 for task_id in TASKS if statuses.get(task_id) == 3)  # 3: COMPLETED


def run(fleet: Fleet) -> list[str]:
    fleet.build()
    fleet.start_server()
    steward_token = (fleet.tmp / "redis" / "bootstrap-token").read_text().strip()
    with Client(fleet.address, token=steward_token) as steward:
        fleet.issue_tokens(steward)

        observer = fleet.spawn(OBSERVER, fleet.ts_observer, fleet.ts_cwd)
        wait_for(lambda: observer.of("ready"), "the observer's ready line", 60)

        with Client(fleet.address, token=fleet.tokens[COORDINATOR]) as coordinator:
            for task_id, (task_type, priority) in TASKS.items():
                coordinator.tasks.add_task(
                    task_id=task_id,
                    task_type=task_type,
                    priority=priority,
                    payload={"task": task_id},
                )
        say(COORDINATOR, f"added {len(TASKS)} tasks (lint and test, priorities 1-10)")

        fleet.spawn(
            VICTIM,
            fleet.go_worker,
            GO_DIR,
            VICTIM_WORK_MS,
            on_event=fleet.kill_victim_on_first_claim,
        )
        fleet.spawn("go-worker-2", fleet.go_worker, GO_DIR)
        fleet.spawn(TS_WORKER, fleet.ts_worker, fleet.ts_cwd)

        wait_for(lambda: completed_count(steward) == len(TASKS), "every task COMPLETED", 120)
        say("fleet", f"all {len(TASKS)} tasks are COMPLETED")
        wait_for(
            lambda: len(observer.of("signal")) >= len(TASKS), "the observer's signal lines", 30
        )
        time.sleep(0.5)  # a duplicate signal, were there one, would show up now
        codes = fleet.stop_programs()
        return fleet.check(steward, codes)


def main() -> int:
    # SIGTERM (`timeout`, a cancelled CI job) unwinds like Ctrl-C: the `finally` stops everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory(prefix="agentcoord-polyglot-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            problems = run(fleet)
        except BaseException:
            for program in fleet.programs.values():
                if program.process.poll() is not None and program.name != VICTIM:
                    say(
                        program.name,
                        f"exited {program.process.returncode}; stderr:\n{program.stderr_tail()}",
                    )
            raise
        finally:
            fleet.stop()
        if problems:
            for problem in problems:
                say("fleet", f"CHECK FAILED: {problem}")
            for program in fleet.programs.values():
                say(program.name, f"stderr:\n{program.stderr_tail()}")
            return 1
        say(
            "fleet",
            f"all checks passed: {len(TASKS)} tasks completed once each by Go and TypeScript "
            f"workers, {fleet.victim_task} redelivered on attempt 2 after {VICTIM} was killed, "
            "the observer saw every completion once and in order, its write was refused locally",
        )
        return 0


if __name__ == "__main__":
    sys.exit(main())
