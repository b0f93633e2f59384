"""SignalService: send and poll throughput, send→receive latency through a live subscription,
and fan-out of broadcasts to N subscribers.

    .venv/bin/python -m bench.bench_signals

The server runs in its own thread (uvloop) over a fresh embedded Redis, the clients in this
process's loop, all on the same machine (so the client's own decoding competes with the
server for CPU). Bounded loops; real token authentication.

- SendSignal / ReceiveSignals: `measure` (16 concurrent tasks, one AsyncClient).
- live latency: one subscriber; one signal at a time, from just before SendSignal until the
  subscriber's iterator yields it.
- fan-out: N subscribers (spread over 10 channels) of one namespace, M broadcasts sent one
  after another as fast as they can be; per signal, the time until EVERY subscriber has it,
  and deliveries per second overall. One Redis reader serves them all.
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

PAYLOAD = {"files_analyzed": 10, "issues_found": 3, "phase": "testing"}


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples) * 1000, samples[max(0, int(len(samples) * 0.99) - 1)] * 1000


async def live_latency(sender: AsyncClient, receiver: AsyncClient, count: int = 1000) -> None:
    anchor = await sender.signals.send_signal("start")
    stream = receiver.signals.subscribe(["ping"], after_id=anchor.id)
    latencies: list[float] = []
    for _ in range(50 + count):
        started = time.perf_counter()
        receive = asyncio.ensure_future(anext(stream))
        await sender.signals.send_signal("ping", PAYLOAD)
        await receive
        latencies.append(time.perf_counter() - started)
    await stream.aclose()
    p50, p99 = percentiles(latencies[50:])
    print(
        f"{'send→receive, live subscription':<44} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"
        f"   ({count} signals, one at a time)"
    )


async def fan_out(
    sender: AsyncClient, listeners: list[AsyncClient], subscribers: int, count: int
) -> None:
    anchor = await sender.signals.send_signal("start")
    received: list[list[float]] = [[] for _ in range(subscribers)]
    everyone_listening = asyncio.Event()

    async def listen(index: int, client: AsyncClient) -> None:
        stream = client.signals.subscribe(["news"], after_id=anchor.id)
        async for _signal in stream:
            received[index].append(time.perf_counter())
            if len(received[index]) == 1 and all(received):
                everyone_listening.set()
            if len(received[index]) == count:
                break
        await stream.aclose()

    tasks = [
        asyncio.ensure_future(listen(i, listeners[i % len(listeners)])) for i in range(subscribers)
    ]
    # Let every stream register before timing (catch-up would deliver them anyway).
    await sender.signals.send_signal("news", PAYLOAD)
    await asyncio.wait_for(everyone_listening.wait(), 120)
    sent_at = [time.perf_counter()]
    for _ in range(count - 1):
        await sender.signals.send_signal("news", PAYLOAD)
        sent_at.append(time.perf_counter())
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    # Signal i (after the warm-up one) is complete when the slowest subscriber has it.
    done_at = [max(r[i] for r in received) for i in range(1, count)]
    latencies = [done - sent for done, sent in zip(done_at, sent_at[:-1], strict=True)]
    elapsed = done_at[-1] - sent_at[0]
    p50, p99 = percentiles(latencies)
    deliveries = subscribers * (count - 1)
    print(
        f"{f'fan-out to {subscribers} subscribers':<44} {deliveries / elapsed:>9.0f} deliveries/s"
        f"   all-have-it p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({count - 1} broadcasts)"
    )


async def run(handle: ServerThread) -> None:
    def client(agent: str, tier: str = "CONTRIBUTOR", ns: str = "bench") -> AsyncClient:
        return AsyncClient(handle.address, token=handle.issue_token(agent, tier, ns))

    sender, receiver = client("sender"), client("receiver", "OBSERVER")
    signals = sender.signals
    await measure(
        "SendSignal (broadcast, small payload)", lambda: signals.send_signal("x", PAYLOAD)
    )
    await measure(
        "SendSignal (targeted)",
        lambda: signals.send_signal("x", PAYLOAD, target_agent="receiver"),
    )
    await measure("ReceiveSignals (limit 100)", lambda: receiver.signals.receive_signals(limit=100))
    await live_latency(sender, receiver)
    for index, (subscribers, count) in enumerate(((1, 500), (50, 200), (200, 200), (500, 100))):
        ns = f"fan{index}"
        fan_sender = client("sender", ns=ns)
        listeners = [client(f"listener-{i}", "OBSERVER", ns=ns) for i in range(10)]
        await fan_out(fan_sender, listeners, subscribers, count)
        for each in (fan_sender, *listeners):
            await each.close()
    await sender.close()
    await receiver.close()


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with embedded_redis() as url:
        handle = ServerThread(server_settings(url)).start()
        try:
            await run(handle)
        finally:
            handle.stop()


if __name__ == "__main__":
    asyncio.run(main())
