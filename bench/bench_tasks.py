"""TaskService throughput and latency: add, claim+complete with N concurrent workers, empty claim.

    .venv/bin/python -m bench.bench_tasks

A server in its own thread (uvloop) over a fresh embedded Redis, clients in this loop; bounded
loops. The claim+complete rows preload 4000 tasks over 10 priorities, then N workers (spread
over 8 AsyncClients, one agent each) loop claim → complete until the queue is empty; they print
completed tasks/s and the p50/p99 of one claim+complete cycle (two RPCs, two Lua scripts). The
empty-claim row is what a poll finds when there is nothing to do (it still reclaims expired
leases first). Compare with `bench.bench_overhead` on the same machine.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time

import structlog
from agentcoord import AsyncClient

from tests.conftest import server_settings
from tests.support import ServerThread

from .common import embedded_redis, measure

PRELOAD = 4000
CLIENTS = 8


async def claim_complete(clients: list[AsyncClient], workers: int, task_type: str) -> None:
    adder = clients[0]
    for start in range(0, PRELOAD, 500):
        await asyncio.gather(
            *(
                adder.tasks.add_task(task_type=task_type, priority=1 + n % 10, payload={"n": n})
                for n in range(start, start + 500)
            )
        )
    cycles: list[float] = []

    async def work(client: AsyncClient) -> None:
        while True:
            began = time.perf_counter()
            task = await client.tasks.claim_task(task_types=[task_type], lease=60)
            if task is None:
                return
            await client.tasks.complete_task(
                task_id=task.task_id, fencing_token=task.lease.fencing_token, result={"ok": 1}
            )
            cycles.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(work(clients[n % len(clients)]) for n in range(workers)))
    elapsed = time.perf_counter() - began
    cycles.sort()
    assert len(cycles) == PRELOAD, f"completed {len(cycles)} of {PRELOAD}"
    print(
        f"{f'claim+complete, {workers} workers':<44} {len(cycles) / elapsed:>9.0f} tasks/s"
        f"  p50 {statistics.median(cycles) * 1000:6.2f} ms"
        f"   p99 {cycles[int(len(cycles) * 0.99) - 1] * 1000:6.2f} ms   ({len(cycles)} tasks)"
    )


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with embedded_redis() as url:
        handle = ServerThread(server_settings(url)).start()
        clients = [
            AsyncClient(
                handle.address, token=handle.issue_token(f"bench-{n}", "CONTRIBUTOR", "bench")
            )
            for n in range(CLIENTS)
        ]
        try:
            adder = clients[0]
            await measure(
                "AddTask",
                lambda: adder.tasks.add_task(task_type="adds", payload={"k": "v"}),
                total=5000,
            )
            probe = await adder.tasks.add_task(task_type="probe")
            await measure(
                "GetTask",
                lambda: adder.tasks.get_task(probe.task_id),
                total=5000,
            )
            await measure(
                "ClaimTask, nothing pending",
                lambda: adder.tasks.claim_task(task_types=["none"]),
                total=5000,
            )
            for workers in (1, 8, 32):
                await claim_complete(clients, workers, f"work{workers}")
        finally:
            for client in clients:
                await client.close()
            handle.stop()


if __name__ == "__main__":
    asyncio.run(main())
