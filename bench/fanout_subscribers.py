"""One process of fan-out subscribers for `make bench` (bench/side_by_side.py starts several).

    .venv/bin/python -m bench.fanout_subscribers --address HOST:PORT --token T \
        --subscribers N --signal-type TYPE [--per-channel 50]

Holds N live Subscribe streams of TYPE (the Python client, which asks for batches and unpacks
them), spread over channels of `--per-channel` streams each (each its own connection).
Talks to its parent over stdin/stdout, one JSON line at a time:

1. prints `ready` once every stream has received a warm-up signal (data `seq` < 0: the parent
   sends them until every process is ready, so no stream misses the timed signals);
2. reads a line `{"ids": [...]}`: the ids of the timed signals the parent sent;
3. waits until every stream has every one of them (at most `--grace` seconds), prints `done`
   (the parent reads the server's CPU then), then `{"deliveries", "lost", "duplicated",
   "first", "last", "cpu", "latencies"}`: cpu is this process's CPU seconds from `ready` to
   `done` (to tell whether the subscribers kept up); the rest counted per
   subscriber by signal id; a latency is a signal's `t` (time.monotonic() just before the
   parent's SendSignal call: CLOCK_MONOTONIC, one clock for every process of this host) to
   the moment this process's iterator yielded it, seconds; first/last: monotonic times of
   the first and last timed delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter

from agentcoord import AsyncClient


async def run(args: argparse.Namespace) -> None:
    channels = max(1, -(-args.subscribers // args.per_channel))
    clients = [
        # A channel of its own per client: grpc shares connections of same-argument
        # channels in one process otherwise.
        AsyncClient(args.address, token=args.token, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    seen: list[Counter[str]] = [Counter() for _ in range(args.subscribers)]
    latencies: list[float] = []
    times = [float("inf"), 0.0]  # first, last timed delivery
    warm = [False] * args.subscribers
    ready = asyncio.Event()
    waiting = [args.subscribers]
    target: set[str] = set()
    complete = asyncio.Event()
    remaining = [0]

    async def listen(index: int, client: AsyncClient) -> None:
        counts = seen[index]
        stream = client.signals.subscribe([args.signal_type])
        try:
            async for signal in stream:
                now = time.monotonic()
                fields = signal.data.fields
                if fields["seq"].number_value < 0:
                    if not warm[index]:
                        warm[index] = True
                        waiting[0] -= 1
                        if waiting[0] == 0:
                            ready.set()
                    continue
                counts[signal.id] += 1
                if counts[signal.id] == 1:
                    latencies.append(now - fields["t"].number_value)
                    times[0] = min(times[0], now)
                    times[1] = now
                    if target and signal.id in target:
                        remaining[0] -= 1
                        if remaining[0] <= 0:
                            complete.set()
        finally:
            await stream.aclose()

    tasks = [asyncio.create_task(listen(i, clients[i % channels])) for i in range(args.subscribers)]
    await ready.wait()
    print("ready", flush=True)
    cpu = time.process_time()
    line = await asyncio.to_thread(sys.stdin.readline)
    ids = json.loads(line)["ids"]
    target.update(ids)
    remaining[0] = sum(len(target) - sum(1 for i in target if c[i] > 0) for c in seen)
    if remaining[0] <= 0:
        complete.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(complete.wait(), args.grace)
    cpu = time.process_time() - cpu
    print("done", flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.close()
    lost = sum(sum(1 for i in target if counts[i] == 0) for counts in seen)
    duplicated = sum(sum(n - 1 for n in counts.values() if n > 1) for counts in seen)
    stray = sum(sum(1 for i in counts if i not in target) for counts in seen)
    result = {
        "deliveries": sum(len(counts) for counts in seen) - stray,
        "lost": lost,
        "duplicated": duplicated,
        "first": times[0],
        "last": times[1],
        "cpu": cpu,
        "latencies": [round(x, 6) for x in latencies],
    }
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--subscribers", type=int, required=True)
    parser.add_argument("--signal-type", required=True)
    parser.add_argument("--per-channel", type=int, default=50)
    parser.add_argument("--grace", type=float, default=15.0, help="seconds to wait for stragglers")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
