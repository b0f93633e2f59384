"""LockService latency: uncontended acquire+release, GetLock, and the hand-over of a contended
lock between two server processes (release on one, the waiter on the other acquires).

    .venv/bin/python -m bench.bench_locks

Two servers in their own threads (uvloop) over one fresh embedded Redis, clients in this loop;
bounded loops. The hand-over row: 16 agents, 8 on each server, take turns on one lock (acquire
with a wait, release at once); it prints hand-overs/s and the p50/p99 from a release's answer
to the next holder's acquisition (the cross-process wake-up plus one script).
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

CONTENDERS = 16
HANDOVERS = 2000


async def handover(clients: list[AsyncClient]) -> None:
    released_at: list[float] = []
    gaps: list[float] = []
    done = 0

    async def contend(client: AsyncClient) -> None:
        nonlocal done
        while done < HANDOVERS:
            lock = await client.locks.acquire_lock("hot", ttl=10, wait=60)
            if released_at:
                gaps.append(time.perf_counter() - released_at[-1])
            done += 1
            await client.locks.release_lock("hot", lock.fencing_token)
            released_at.append(time.perf_counter())

    began = time.perf_counter()
    await asyncio.gather(*(contend(c) for c in clients))
    elapsed = time.perf_counter() - began
    gaps.sort()
    print(
        f"{f'hand-over, {len(clients)} agents on 2 servers':<44} {done / elapsed:>9.0f} locks/s"
        f"  p50 {statistics.median(gaps) * 1000:6.2f} ms"
        f"   p99 {gaps[int(len(gaps) * 0.99) - 1] * 1000:6.2f} ms   ({done} acquisitions)"
    )


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with embedded_redis() as url:
        servers = [ServerThread(server_settings(url)).start() for _ in range(2)]
        clients = [
            AsyncClient(
                servers[n % 2].address,
                token=servers[0].issue_token(f"bench-{n}", "CONTRIBUTOR", "bench"),
            )
            for n in range(CONTENDERS)
        ]
        try:
            one = clients[0]
            counter = iter(range(10**9))

            async def acquire_release() -> None:
                lock_id = f"free-{next(counter)}"
                lock = await one.locks.acquire_lock(lock_id, ttl=10)
                await one.locks.release_lock(lock_id, lock.fencing_token)

            await measure("AcquireLock+ReleaseLock, uncontended", acquire_release, total=5000)
            probe = await one.locks.acquire_lock("probe", ttl=600)
            await measure("GetLock", lambda: one.locks.get_lock("probe"), total=5000)
            await one.locks.release_lock("probe", probe.fencing_token)
            await handover(clients)
        finally:
            for client in clients:
                await client.close()
            for server in servers:
                server.stop()


if __name__ == "__main__":
    asyncio.run(main())
