"""Acknowledged writes lost when a Redis Cluster primary is SIGKILLed under load.

A local 3-primary/3-replica cluster (cluster-node-timeout 1000 ms) and one agentcoord server;
`--writers` concurrent stash loops and as many SendSignal loops in one namespace; after a few
seconds the primary owning the namespace's slot is SIGKILLed; once its replica is promoted and
calls succeed again, every acknowledged stash is read back and every acknowledged signal looked
up. Prints what was acknowledged, what was lost, how calls failed and how long they failed.

    .venv/bin/python -m bench.bench_failover [--writers 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

import structlog
from agentcoord import AgentcoordError, AsyncClient

from tests.conftest import server_settings
from tests.redis_topologies import LocalCluster
from tests.support import ServerThread


async def one_run(writers: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="acbench-failover-") as tmp:
        cluster = LocalCluster(Path(tmp)).start()
        server = ServerThread(server_settings(cluster.url)).start()
        try:
            return await _load(cluster, server, writers)
        finally:
            server.stop()
            cluster.stop()


async def _load(cluster: LocalCluster, server: ServerThread, writers: int) -> dict[str, object]:
    namespace = "bench-failover"
    client = AsyncClient(server.address, token=server.issue_token("w", "CONTRIBUTOR", namespace))
    stashed: list[str] = []
    sent: list[str] = []
    failures: Counter[str] = Counter()
    first_failure = last_failure = 0.0
    stop = asyncio.Event()

    async def guarded(call):  # type: ignore[no-untyped-def]
        nonlocal first_failure, last_failure
        try:
            return await call
        except AgentcoordError as error:
            failures[error.code.name] += 1
            now = time.monotonic()
            first_failure = first_failure or now
            last_failure = now
            await asyncio.sleep(0.01)
            return None

    async def stash_loop(w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = f"w{w}-{n}"
            if await guarded(client.memory.stash(key, n, ttl=600)) is not None:
                stashed.append(key)

    async def send_loop() -> None:
        while not stop.is_set():
            reply = await guarded(client.signals.send_signal("tick"))
            if reply is not None:
                sent.append(reply.id)

    tasks = [asyncio.ensure_future(stash_loop(w)) for w in range(writers)]
    tasks += [asyncio.ensure_future(send_loop()) for _ in range(writers)]
    await asyncio.sleep(2)
    victim = cluster.owner_of(f"ac:{{{namespace}}}:")
    cluster.kill(victim)
    killed = time.monotonic()
    while True:  # until calls have succeeded again for 2 s
        await asyncio.sleep(0.1)
        if failures.total() and time.monotonic() - last_failure >= 2:
            break
    stop.set()
    await asyncio.gather(*tasks)

    found: set[str] = set()
    for start in range(0, len(stashed), 100):
        found |= set(await client.memory.batch_retrieve(stashed[start : start + 100]))
    stored: set[str] = set()
    after = ""
    while True:
        page = await client.signals.receive_signals(after_id=after, limit=1000)
        stored |= {s.id for s in page.signals}
        if not page.next_after_id or page.next_after_id == after:
            break
        after = page.next_after_id
    await client.close()
    return {
        "stashes_acknowledged": len(stashed),
        "stashes_lost": len(set(stashed) - found),
        "signals_acknowledged": len(sent),
        "signals_lost": len(set(sent) - stored),
        "failed_calls": dict(failures),
        "unavailable_for_s": round(last_failure - killed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    for run in range(args.runs):
        print(f"run {run + 1}:", asyncio.run(one_run(args.writers)), flush=True)


if __name__ == "__main__":
    main()
