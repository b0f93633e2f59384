"""Test helpers: a real agentcoord server in a background thread with its own event loop.

The server runs on uvloop in its own thread, exactly as `agentcoord serve` runs it, so sync
clients, async clients (on the test's loop) and subprocesses can all call it over a real
channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar, cast

import grpc
import redis
import redis.asyncio as aredis
import uvloop
from agentcoord_server.app import AgentcoordServer
from agentcoord_server.config import Settings
from agentcoord_server.identity import parse_tier
from agentcoord_server.store.tokens import TokenStore

T = TypeVar("T")


class ServerThread:
    """Runs an AgentcoordServer on 127.0.0.1:<random port> in a thread until `stop()`.

    Attributes after start(): `address` ("127.0.0.1:port"), `server` (the AgentcoordServer).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        extra_handlers: Sequence[Callable[[grpc.aio.Server], None]] = (),
        tracer_provider: Any = None,
    ) -> None:
        self.settings = settings
        self.server = AgentcoordServer(
            settings, extra_handlers=extra_handlers, tracer_provider=tracer_provider
        )
        self.address = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping: Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name="agentcoord-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            try:
                port = await self.server.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise
            self.address = f"127.0.0.1:{port}"
            self._ready.set()
            await self._stopped.wait()

        try:
            uvloop.run(main())
        except BaseException:
            pass
        finally:
            self._finished.set()

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise self._error
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Runs a coroutine on the server's loop (e.g. to use its Redis client) and returns its result."""
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def issue_token(
        self,
        agent_id: str,
        tier: str | int,
        namespace: str,
        *,
        lifetime_s: float | None = None,
        description: str = "test",
    ) -> str:
        """Mints a real token for any namespace straight through the server's token store (as
        a STEWARD of that namespace could) and returns the secret."""
        assert self.server.ctx is not None, "start() the server first"
        level = tier if isinstance(tier, int) else parse_tier(tier)
        store = TokenStore(self.server.ctx.redis)
        token, _ = self.run(
            store.issue(
                namespace,
                agent_id,
                level,
                lifetime_s=lifetime_s,
                description=description,
                issued_by="tests",
            )
        )
        return token

    def begin_stop(self, grace: float | None = None, drain: float | None = None) -> Future[None]:
        """Starts a drained stop (grace and drain default to the settings') and returns at
        once; the future completes when it is done. Only the first call stops the server;
        later calls return the same future."""
        assert self._loop is not None and self._stopped is not None
        if self._stopping is not None:
            return self._stopping
        stopped = self._stopped

        async def stop() -> None:
            try:
                await self.server.stop(grace, drain=drain)
            finally:
                stopped.set()

        self._stopping = asyncio.run_coroutine_threadsafe(stop(), self._loop)
        return self._stopping

    def stop(
        self, grace: float | None = 0.5, timeout: float = 30.0, drain: float | None = 0.0
    ) -> None:
        """Stops the server (or waits for a stop begun with begin_stop) and joins the thread.
        No drain window by default: a test's teardown has no clients to drain."""
        if self._stopping is None:
            if not self._thread.is_alive():
                return
            self.begin_stop(grace, drain)
        assert self._stopping is not None
        self._stopping.result(timeout)
        self._finished.wait(timeout)
        self._thread.join(timeout)


def dev_identity(agent_id: str, tier: str, namespace: str) -> list[tuple[str, str]]:
    """Metadata for a server started with insecure_dev_identity."""
    return [("x-agent-id", agent_id), ("x-access-tier", tier), ("x-namespace", namespace)]


def sync_redis(url: str) -> redis.Redis:
    """A sync client (decoded replies) on the Redis `url` names, a cluster included."""
    if url.startswith("redis+cluster://"):
        host, port = url.removeprefix("redis+cluster://").split(",")[0].rsplit(":", 1)
        return cast(
            redis.Redis, redis.RedisCluster(host=host, port=int(port), decode_responses=True)
        )
    return redis.Redis.from_url(url, decode_responses=True)


def async_redis(url: str) -> aredis.Redis:
    """An asyncio client (decoded replies) on the Redis `url` names, a cluster included."""
    if url.startswith("redis+cluster://"):
        host, port = url.removeprefix("redis+cluster://").split(",")[0].rsplit(":", 1)
        return cast(aredis.Redis, aredis.RedisCluster(host=host, port=int(port), decode_responses=True))
    return aredis.Redis.from_url(url, decode_responses=True)


class ServeWorkers:
    """`agentcoord serve --workers N` in a child process over `settings.redis_url`, with the
    interface the suites use of ServerThread (`address`, `issue_token`, `run`, `stop`), so the
    acceptance suites can run against N processes (AGENTCOORD_TEST_WORKERS, conftest.py).
    There is no `server` attribute: nothing of the server's own objects is reachable.
    """

    def __init__(self, settings: Settings, workers: int) -> None:
        assert settings.redis_url, "the workers run over the session's Redis"
        self.settings = settings
        self.workers = workers
        self.address = ""
        self.lines: list[str] = []
        self._serving = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: aredis.Redis | None = None
        self._loop_ready = threading.Event()

    def start(self, timeout: float = 60.0) -> ServeWorkers:
        s = self.settings
        self._process = subprocess.Popen(
            [
                sys.executable, "-m", "agentcoord_server.cli", "serve",
                "--workers", str(self.workers),
                "--listen", s.listen,
                "--redis-url", s.redis_url or "",
                "--data-dir", str(s.data_dir),
                "--log-format", "json",
                "--auth-cache-seconds", str(s.auth_cache_seconds),
                "--auth-failure-limit", str(s.auth_failure_limit),
                "--shutdown-grace", str(s.shutdown_grace),
                "--shutdown-drain", "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._run_loop, daemon=True).start()
        if not self._serving.wait(timeout) or not self.address:
            self.stop()
            raise TimeoutError("the workers did not serve:\n" + "".join(self.lines[-30:]))
        self._loop_ready.wait(timeout)
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        serving = 0
        for line in self._process.stdout:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "workers started":
                self.address = event["listen"]
            elif event.get("event") == "serving":
                serving += 1
                if serving == self.workers:
                    self._serving.set()
        self._serving.set()

    def _run_loop(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._redis = async_redis(self.settings.redis_url or "")
            self._loop_ready.set()
            await asyncio.Event().wait()

        with contextlib.suppress(BaseException):
            uvloop.run(main())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Runs a coroutine on this helper's loop (which has a Redis client, `redis`)."""
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def issue_token(
        self,
        agent_id: str,
        tier: str | int,
        namespace: str,
        *,
        lifetime_s: float | None = None,
        description: str = "test",
    ) -> str:
        """As ServerThread.issue_token, through a token store of this helper's own."""
        assert self._redis is not None
        level = tier if isinstance(tier, int) else parse_tier(tier)
        token, _ = self.run(
            TokenStore(self._redis).issue(
                namespace,
                agent_id,
                level,
                lifetime_s=lifetime_s,
                description=description,
                issued_by="tests",
            )
        )
        return token

    def stop(self, timeout: float = 30.0, **_: Any) -> None:
        """SIGTERM, then waits for the parent (which stops its workers) to exit."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._loop is not None and self._redis is not None:
            with contextlib.suppress(Exception):
                self.run(self._redis.aclose())


# -- task records (tasks_common.lua: one record hash per namespace, no key per task) ---------


def task_record(client: redis.Redis, namespace: str, task_id: str) -> dict[str, str] | None:
    """The stored record of a task (expired or not), None when there is none."""
    raw = client.hget(f"ac:{{{namespace}}}:tasks:rec", task_id)
    return None if raw is None else cast(dict[str, str], json.loads(raw))


def set_task_fields(client: redis.Redis, namespace: str, task_id: str, **fields: object) -> None:
    """Overwrites fields of a stored task record (test setup: e.g. a lease that ran out)."""
    record = task_record(client, namespace, task_id)
    assert record is not None, task_id
    record.update({k: str(v) for k, v in fields.items()})
    client.hset(f"ac:{{{namespace}}}:tasks:rec", task_id, json.dumps(record))


def expire_task(client: redis.Redis, namespace: str, task_id: str) -> None:
    """What the TASK TTL does to a task: its record's expiry passes (long ago)."""
    set_task_fields(client, namespace, task_id, exp=1)
    client.zadd(f"ac:{{{namespace}}}:tasks:exp", {task_id: 1})


def task_ttl_ms(client: redis.Redis, namespace: str, task_id: str) -> int:
    """How long the task's record lives from now (ms, by Redis's clock)."""
    record = task_record(client, namespace, task_id)
    assert record is not None, task_id
    seconds, micros = client.time()
    return int(record["exp"]) - (int(seconds) * 1000 + int(micros) // 1000)


def queued_tasks(client: redis.Redis, namespace: str, task_type: str) -> int:
    """How many tasks of `task_type` are in the namespace's pending queue."""
    return int(client.hget(f"ac:{{{namespace}}}:tasks:counts", f"q:{task_type}") or 0)


# -- the script key guard (issue 13: every key a script touches is declared in KEYS) ---------

KEY_GUARD_MARK = "-- agentcoord test key guard\n"
KEY_GUARD_LUA = (
    KEY_GUARD_MARK
    + """local __declared = {}
for _, k in ipairs(KEYS) do __declared[k] = true end
local __keyless = {time = true, publish = true, ['replicate_commands'] = true}
local __all_keys = {del = true, exists = true, unlink = true, mget = true, touch = true}
local function __check(cmd, ...)
  local c = string.lower(cmd)
  if __keyless[c] then return end
  local args = {...}
  local n = __all_keys[c] and #args or math.min(1, #args)
  for i = 1, n do
    if not __declared[args[i]] then
      error('undeclared key ' .. tostring(args[i]) .. ' in ' .. cmd)
    end
  end
end
local __redis = redis
local redis = setmetatable({
  call = function(cmd, ...) __check(cmd, ...) return __redis.call(cmd, ...) end,
  pcall = function(cmd, ...) __check(cmd, ...) return __redis.pcall(cmd, ...) end,
}, {__index = __redis})
"""
)
"""Prepended to a script, it makes every redis.call/pcall on a key that is not in KEYS fail
the script ("undeclared key …"): the rule Redis documents for scripts, checked at run time
(a cluster only checks that keys share a slot, and every namespace key shares `{ns}`)."""


def guarded(source: str) -> str:
    """`source` run under KEY_GUARD_LUA (once)."""
    return source if source.startswith(KEY_GUARD_MARK) else KEY_GUARD_LUA + source


def unguarded(source: str) -> str:
    """A registered script's own text, without KEY_GUARD_LUA."""
    return source.removeprefix(KEY_GUARD_LUA)
