"""The polyglot fleet (examples/polyglot/fleet.py) end to end, as `make demo-polyglot` runs it:
Go and TypeScript workers, a TypeScript observer, a Python coordinator, a killed Go worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "examples" / "polyglot" / "fleet.py"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(pgid: int) -> None:
    """SIGTERM first (the server stops its embedded Redis), SIGKILL what is left after 15 s."""
    if not _group_alive(pgid):
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)


@pytest.mark.timeout(300)  # beyond the fleet's own timeout below, so the group is stopped first
def test_polyglot_fleet_completes_every_task_once_and_the_observer_sees_each_in_order():
    process = subprocess.Popen(
        [sys.executable, str(FLEET)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        transcript, _ = process.communicate(timeout=240)  # includes building the Go worker
    except subprocess.TimeoutExpired:
        _stop_group(process.pid)
        transcript = "fleet timed out after 240 s\n" + process.communicate()[0]
    finally:
        _stop_group(process.pid)

    assert process.returncode == 0, transcript
    assert "SIGKILLed go-worker-1 right after it claimed" in transcript
    assert (
        '"event": "write_refused", "code": "PERMISSION_DENIED", "reason": "TIER_TOO_LOW"'
        in transcript
    )
    assert (
        "all checks passed: 30 tasks completed once each by Go and TypeScript workers" in transcript
    )
