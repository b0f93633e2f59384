"""The code-review fleet (examples/code_review) end to end, as separate processes, as in `make demo`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FLEET = Path(__file__).resolve().parent.parent / "examples" / "code_review" / "fleet.py"


def test_code_review_fleet_completes_every_task_once_and_redelivers_the_killed_workers_task():
    result = subprocess.run(
        [sys.executable, str(FLEET)], capture_output=True, text=True, timeout=150
    )
    transcript = result.stdout + result.stderr

    assert result.returncode == 0, transcript
    assert "killed performance-1 (SIGKILL)" in transcript
    assert "performance-2  claimed perf-orders (priority 8, attempt 2)" in transcript
    assert "all checks passed" in transcript
