"""MemoryService throughput and latency: stash/retrieve (small and ~10 KB nested values),
100-key batches, listing, session activity, collaboration state.

    .venv/bin/python -m bench.bench_memory

Each row is one RPC type from 16 concurrent tasks over one AsyncClient (real token
authentication), against a server in its own thread (uvloop) over a fresh embedded Redis;
bounded loops. Compare with `bench.bench_overhead` (raw Redis PING, bare grpc.aio, WhoAmI) on
the same machine: a stash, a retrieve and a 100-key batch are one EVALSHA each (the retrieve
scripts are read-only).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import structlog
from agentcoord import AsyncClient

from tests.conftest import server_settings
from tests.support import ServerThread

from .common import embedded_redis, measure

SMALL = {"files": 10, "issues": 3, "status": "ok"}
LARGE = {  # ~10 KB serialized
    "files": [
        {
            "name": f"src/module_{i}.py",
            "issues": [{"line": j, "severity": "high", "tags": ["a", "b"]} for j in range(5)],
        }
        for i in range(30)
    ],
    "summary": {"total": 150, "ratio": 0.25, "done": True, "owner": None},
}


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with embedded_redis() as url:
        handle = ServerThread(server_settings(url)).start()
        try:
            async with AsyncClient(
                handle.address, token=handle.issue_token("bench", "CONTRIBUTOR", "bench")
            ) as client:
                await run(client)
        finally:
            handle.stop()


async def run(client: AsyncClient) -> None:
    memory = client.memory
    counter = itertools.count()
    await measure("Stash (small value, new key)", lambda: memory.stash(f"k{next(counter)}", SMALL))
    await memory.stash("large", LARGE)
    await measure("Stash (~10 KB nested, overwrite)", lambda: memory.stash("large", LARGE))
    await memory.stash("small", SMALL)
    await measure("Retrieve (small value)", lambda: memory.retrieve("small"))
    await run_watch_rows(client)
    await measure("Retrieve (~10 KB nested)", lambda: memory.retrieve("large"))
    batch = {f"b{i:03d}": SMALL for i in range(100)}
    await measure("BatchStash (100 small items)", lambda: memory.batch_stash(batch), total=1000)
    await measure(
        "BatchRetrieve (100 keys)", lambda: memory.batch_retrieve(list(batch)), total=1000
    )
    await memory.clear_working_memory()
    await memory.batch_stash({f"l{i:04d}": i for i in range(100)})
    for start in range(100, 1000, 100):
        await memory.batch_stash({f"l{i:04d}": i for i in range(start, start + 100)})
    await measure(
        "ListEntries (100/page of 1000)", lambda: memory.list_entries(page_size=100), total=2000
    )

    await memory.create_session("bench-session", purpose="bench")
    await memory.share_context("bench-session", "findings", SMALL)
    await measure(
        "JoinSession (already in: TTL refresh)", lambda: memory.join_session("bench-session")
    )
    await measure(
        "ShareContext (small value)",
        lambda: memory.share_context("bench-session", "findings", SMALL),
    )
    await measure(
        "GetSharedContext (one key)",
        lambda: memory.get_shared_context("bench-session", key="findings"),
    )
    state = {"trust_level": 0.8, "successful_interventions": 10, "trust_trajectory": [0.5] * 100}
    await measure(
        "SaveCollaborationState (100-point trajectory)",
        lambda: memory.save_collaboration_state("bench-session", state),
    )
    await measure(
        "LoadCollaborationState", lambda: memory.load_collaboration_state("bench-session")
    )


async def run_watch_rows(client: AsyncClient) -> None:
    """Issue #16: TouchEntry, a conditional stash, and stashes with watchers open (each
    delivered to 16 watchers of the owner through the process's one reader)."""
    memory = client.memory
    await memory.stash("touched", SMALL)
    await measure("TouchEntry", lambda: memory.touch_entry("touched"))
    await measure(
        "Stash (create-only, new key)",
        lambda: memory.stash(f"c{next(_keys)}", SMALL, expected_revision=0),
    )
    received = 0

    async def watch(ready: asyncio.Event) -> None:
        nonlocal received
        async for _ in memory.watch_entries(key_prefix="w"):
            if not ready.is_set():
                ready.set()
            received += 1

    readies = [asyncio.Event() for _ in range(16)]
    watchers = [asyncio.create_task(watch(ready)) for ready in readies]
    await asyncio.sleep(0.5)
    await memory.stash("w-warm", SMALL)
    await asyncio.gather(*(ready.wait() for ready in readies))
    await measure("Stash with 16 watchers open", lambda: memory.stash(f"w{next(_keys)}", SMALL))
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    print(f"{'  events delivered to the 16 watchers':<44} {received:>9}")


_keys = itertools.count()


if __name__ == "__main__":
    asyncio.run(main())
