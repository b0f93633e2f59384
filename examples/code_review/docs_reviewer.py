"""The docs reviewer (CONTRIBUTOR), one OS process: an asyncio task worker whose one task the lead
cancels while it works on it. The worker's handler must be stopped at once — by the
"task.cancelled" signal, long before its 60 s lease's next renewal would say so.

    AGENTCOORD_TARGET=… AGENTCOORD_TOKEN=… python docs_reviewer.py
"""

from __future__ import annotations

import asyncio
import time

from agentcoord import AsyncClient

from in_time import CANCELLED_TYPE, DOCS_LEASE_SECONDS, DOCS_REVIEWER
from scenario import fail, say, target


async def main() -> None:
    async with AsyncClient(target()) as client:
        claimed_at = 0.0

        async def review(task):  # type: ignore[no-untyped-def]
            nonlocal claimed_at
            claimed_at = time.monotonic()
            say(DOCS_REVIEWER, f"claimed {task.task_id}; reviewing…")
            try:
                await asyncio.sleep(DOCS_LEASE_SECONDS)
            except asyncio.CancelledError:
                say(DOCS_REVIEWER, f"handler stopped: {task.task_id} was cancelled")
                raise
            return {"proof_read": True}

        worker = client.tasks.worker(
            review, task_types=[CANCELLED_TYPE], lease=DOCS_LEASE_SECONDS, wait=10
        )
        await worker.run(max_tasks=1)
        held = time.monotonic() - claimed_at
        if worker.cancelled != 1 or held >= DOCS_LEASE_SECONDS / 3:
            fail(DOCS_REVIEWER, f"worker not stopped by the cancel (held it {held:.1f} s)")
        say(DOCS_REVIEWER, f"worker stopped at once ({held:.1f} s after its claim); done")


if __name__ == "__main__":
    asyncio.run(main())
