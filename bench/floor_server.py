"""The floor agentcoord is measured against: a bare grpc.aio + uvloop server answering the same
methods (same protos, same messages) with one Redis command each and nothing else — no
authentication, logging, error mapping, validation or Lua.

    .venv/bin/python -m bench.floor_server --listen 127.0.0.1:50061 --redis-url unix:///…

- MemoryService.Stash      SET key <serialized Value> PX ttl
- MemoryService.Retrieve   GET key → the Value parsed back into the response
- TaskService.AddTask      ZADD queue (10 - priority) id
- TaskService.ClaimTask    ZPOPMIN queue (never waits)
- TaskService.CompleteTask SET result key <serialized Struct> PX ttl;
  with claim_next, a pipelined ZPOPMIN in the same round trip

Whatever agentcoord does beyond this is its cost; the floor is what Python gRPC + redis-py
cost on this machine. Prints "listening <port>" once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
import uvloop
from agentcoord.v1 import memory_pb2, memory_pb2_grpc, tasks_pb2, tasks_pb2_grpc
from redis.asyncio import BlockingConnectionPool, Redis

TTL_MS = 3_600_000
QUEUE = "floor:q"


class Memory(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def Stash(
        self, request: memory_pb2.StashRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.StashResponse:
        raw = request.value.SerializeToString()
        await self._redis.set(f"floor:m:{request.key}", raw, px=TTL_MS)
        return memory_pb2.StashResponse(
            entry=memory_pb2.MemoryEntry(key=request.key, size_bytes=len(raw))
        )

    async def Retrieve(
        self, request: memory_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.RetrieveResponse:
        raw = await self._redis.get(f"floor:m:{request.key}")
        entry = memory_pb2.MemoryEntry(key=request.key)
        if raw is not None:
            entry.value.ParseFromString(raw)
            entry.size_bytes = len(raw)
        return memory_pb2.RetrieveResponse(entry=entry)


class Tasks(tasks_pb2_grpc.TaskServiceServicer):
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._seq = 0

    async def AddTask(
        self, request: tasks_pb2.AddTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.AddTaskResponse:
        self._seq += 1
        task_id = request.task_id or f"f{self._seq}"
        await self._redis.zadd(QUEUE, {task_id: 10 - (request.priority or 5)})
        return tasks_pb2.AddTaskResponse(task=tasks_pb2.Task(task_id=task_id))

    async def ClaimTask(
        self, request: tasks_pb2.ClaimTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ClaimTaskResponse:
        popped = await self._redis.zpopmin(QUEUE)
        if not popped:
            return tasks_pb2.ClaimTaskResponse()
        return tasks_pb2.ClaimTaskResponse(task=_task(popped[0][0]))

    async def CompleteTask(
        self, request: tasks_pb2.CompleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.CompleteTaskResponse:
        raw = request.result.SerializeToString()
        response = tasks_pb2.CompleteTaskResponse(task=tasks_pb2.Task(task_id=request.task_id))
        if not request.HasField("claim_next"):
            await self._redis.set(f"floor:r:{request.task_id}", raw, px=TTL_MS)
            return response
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(f"floor:r:{request.task_id}", raw, px=TTL_MS)
            pipe.zpopmin(QUEUE)
            _, popped = await pipe.execute()
        if popped:
            response.next_task.CopyFrom(_task(popped[0][0]))
        return response


def _task(task_id: bytes | str) -> tasks_pb2.Task:
    name = task_id.decode() if isinstance(task_id, bytes) else task_id
    task = tasks_pb2.Task(task_id=name, status=tasks_pb2.TASK_STATUS_CLAIMED)
    task.lease.fencing_token = 1
    return task


async def serve(listen: str, redis_url: str) -> None:
    redis = Redis(
        connection_pool=BlockingConnectionPool.from_url(redis_url, max_connections=128, timeout=5)
    )
    server = grpc.aio.server()
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(Memory(redis), server)  # type: ignore[no-untyped-call]
    tasks_pb2_grpc.add_TaskServiceServicer_to_server(Tasks(redis), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)
        await redis.aclose(close_connection_pool=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.redis_url))


if __name__ == "__main__":
    main()
