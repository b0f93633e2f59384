"""The code-review fleet (examples/code_review) end to end, as separate processes, as in `make demo`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FLEET = Path(__file__).resolve().parent.parent / "examples" / "code_review" / "fleet.py"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(pgid: int) -> None:
    """SIGTERM first (the server then stops its embedded Redis, which runs in a session of its
    own), SIGKILL whatever is left after 15 s."""
    if not _group_alive(pgid):
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)


def _run_fleet(timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs fleet.py in its own process group; on timeout stops the whole group (fleet, server,
    agents), so a stuck run fails with its transcript instead of leaving processes behind.
    `env` adds to the environment (DEMO_REDIS_URL and AGENTCOORD_STEWARD_TOKEN: run on that
    Redis)."""
    process = subprocess.Popen(
        [sys.executable, str(FLEET)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        _stop_group(process.pid)
        output, _ = process.communicate()
        return -1, f"fleet timed out after {timeout} s\n{output}"
    finally:
        _stop_group(process.pid)


@pytest.mark.every_backend
@pytest.mark.timeout(200)  # beyond the fleet's own 150 s, so the group is stopped, not orphaned
def test_code_review_fleet_completes_every_task_once_and_redelivers_the_killed_workers_task(
    redis_backend, request, namespace
):
    env = None
    if redis_backend == "cluster":  # its own server on the cluster, in a fresh namespace
        server = request.getfixturevalue("server")
        env = {
            "DEMO_REDIS_URL": server.settings.redis_url,
            "AGENTCOORD_STEWARD_TOKEN": server.issue_token("steward", "STEWARD", namespace),
        }
    returncode, transcript = _run_fleet(timeout=150, env=env)

    assert returncode == 0, transcript
    assert "killed performance-1 (SIGKILL)" in transcript
    assert "performance-2  claimed perf-orders (priority 8, attempt 2)" in transcript
    assert "style-1        saw the lead revise scope: now 16 files" in transcript  # issue #16
    assert "all checks passed" in transcript
    # Tasks in time: the synthesis waits for the six reviews; the cancelled review's worker stops.
    assert "claimed and completed synthesis after all 6 reviews completed" in transcript
    assert "docs-1         handler stopped: docs-readme was cancelled" in transcript
    assert "every review under its file's lock" in transcript  # file_locks.check


@pytest.mark.timeout(200)
def test_fleet_stopped_with_sigterm_reaps_its_server_and_agents(tmp_path):
    """`timeout make demo`, a CI job's cancellation: the fleet stops what it started."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, str(FLEET)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:  # until the agents are running and the victim is dead
            seen.append(line)
            if "killed performance-1" in line:
                break
        assert any("killed performance-1" in line for line in seen), "".join(seen)

        process.send_signal(signal.SIGTERM)  # the fleet alone, not its group
        process.wait(timeout=60)

        deadline = time.monotonic() + 10
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(process.pid), "a server or agent outlived the fleet"
        assert list(tmp_path.glob("agentcoord-demo-*")) == [], "its data directory was left"
    finally:
        _stop_group(process.pid)
        process.wait()
