"""Tasks and agent registrations in Redis (TaskService's store; no gRPC types).

Every state change is one Lua script in store/lua/tasks_*.lua (tasks_common.lua, prepended to
each, documents the key layout). Every key a script touches is declared in its KEYS — the same
fixed list of per-namespace keys for every script (`_keys`), plus the caller's registration and
one key of the script's own — so no script builds a key name: task records live in one hash
per namespace (expiry kept by a zset, pruned lazily), and one queue, one lease and one delayed
zset hold the tasks of every type (issue 13). Rules that live here, from the TaskService issue
and DESIGN.md:

- Exactly one claimant per task: choosing a task and leasing it is one atomic script.
- A dead worker's task is handed out again: the claim script first returns the expired leases
  (and due backoffs) of the namespace, so no background job has to have run. GetTask
  and ListTasks settle an expired lease they meet the same way, so reads tell the truth.
- Priority 10 first, FIFO among equal priorities: queue score = type number * 16 + (10 -
  priority), member = 13-digit add sequence ':' id (equal scores order by member). A task that
  goes back to pending keeps its place in line.
- Times are Redis server time (`TIME` inside the scripts), in ms.
- A waiting claim holds no Redis connection: every script that makes a task pending publishes a
  wake-up, and this process's one subscriber (store/task_wakeups.py) wakes one waiting claim per
  task, whichever server process the change came through.
- One round trip per task cycle: CompleteTask and FailTask can lease the caller's next task in
  the same script (`claim_next`).
- Tasks in time (issue 16): a scheduled task (not_before) waits in the same delayed zset as a
  backoff, so claims promote it when due and a waiting claim sleeps until then. A task with
  dependencies is in no queue until the script that completes its last dependency releases it
  (release_dependents, same atomic step); one that is dead-lettered or cancelled settles its
  dependents by their policy there too. Dependencies must exist when a task is added, so no
  cycle can form. A backoff policy decides the delay when FailTask names none and when a lease
  expires. CancelTask of a claimed task appends a targeted CANCEL_SIGNAL_TYPE signal to the
  namespace's signals stream in the cancelling script, and leaves a notice for the holder's next
  heartbeat; its renewals answer TASK_CANCELLED.
- Lifetimes: a task's record lives TtlPolicy.task after its last state change (plus the lease
  while claimed, plus the backoff while backing off): past that, every script treats it as
  absent, and AddTask (and a claim that meets it) deletes it with its queue entry. Registrations
  live TtlPolicy.coordination after the last register, heartbeat or claim. The sequence and
  fencing counters have no TTL, so fencing tokens never repeat within a namespace.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    invalid_field,
    quota_exceeded,
)
from .keys import Keyspace, validate_id
from .paging import page_by_lex
from .scripts import load_script
from .signals import SignalStore
from .task_wakeups import TaskWakeups, channel

PENDING, CLAIMED, COMPLETED, DEAD, CANCELLED = (
    "pending",
    "claimed",
    "completed",
    "dead",
    "cancelled",
)
STATUSES = (PENDING, CLAIMED, COMPLETED, DEAD, CANCELLED)

RECENT_RESULTS = 20
"""How many recent completions AggregateResults returns (per type and overall)."""
SUMMARY_RESULT_MAX_BYTES = 4096
"""A result whose JSON is larger is left out of the recent summaries (kept on the task)."""
LIST_BUDGET = 1000
"""Index entries one ListTasks/ListDeadLetters call examines at most (bounds a script's run)."""
CANCEL_SIGNAL_TYPE = "task.cancelled"
"""The type of the signal CancelTask sends the holder of a claimed task (data: task_id,
fencing_token); the clients' task workers listen for it."""
ON_DEPENDENCY_FAILURE = ("cancel", "run")
"""What a dead-lettered or cancelled dependency does to a dependent: cancel it, or run it."""
WAIT_SCHEDULED, WAIT_BACKOFF, WAIT_DEPENDENCIES = "scheduled", "backoff", "deps"
RECHECK_SECONDS = 5.0
"""A waiting claim looks again at least this often (seconds) — a safety net for a wake-up lost
with a pub/sub connection; wake-ups (from any server process) and the lease expiries and
backoff ends the claim script reports end a wait much sooner."""


@dataclass(frozen=True, slots=True)
class ClaimNext:
    """CompleteTask/FailTask's claim_next: lease the caller's next task in the same script.

    task_types: validated ids; empty means the agent's registered capabilities.
    lease_ms: the new lease's length (ms).
    """

    task_types: Sequence[str]
    lease_ms: int


_KEYS = (
    ("tasks", "rec"),
    ("tasks", "exp"),
    ("tasks", "q"),
    ("tasks", "l"),
    ("tasks", "d"),
    ("tasks", "typeno"),
    ("tasks", "index"),
    ("tasks", "dead"),
    ("tasks", "deps"),
    ("tasks", "seq"),
    ("tasks", "fence"),
    ("tasks", "lease_expiries"),
    ("tasks", "counts"),
    ("tasks", "types"),
    ("tasks", "stats"),
    ("tasks", "stats", "agents"),
    ("tasks", "stats", "types"),
    ("tasks", "stats", "type_agents"),
    ("tasks", "recent"),
    ("tasks", "recent_types"),
    ("agents", "index"),
    ("agents", "cx"),
    ("namespace",),
)
"""KEYS[1..23] of every tasks_*.lua script, in tasks_common.lua's order."""


@functools.lru_cache(maxsize=4096)
def _keys(namespace: str) -> tuple[str, ...]:
    """A namespace's fixed script keys (KEYS[1..23]), built once per namespace (bounded)."""
    ks = Keyspace(namespace)
    return tuple(ks.key(*parts) for parts in _KEYS)


class _Script:
    """A tasks_*.lua script (tasks_common.lua prepended), run with EVALSHA.

    Called with the namespace, the calling agent ('' for none) and `args` (ARGV[2…]); KEYS are
    the namespace's fixed keys, the agent's registration and `extra` (or a placeholder), so
    every key a script touches is declared, and all share the namespace's `{ns}` hash tag (one
    slot). ARGV[1] is the namespace's wake-up channel (task_wakeups.channel).
    """

    def __init__(self, redis: Redis, name: str) -> None:
        self._script: AsyncScript = load_script(redis, name, prelude="tasks_common")

    async def __call__(
        self,
        namespace: str,
        *,
        agent: str = "",
        args: Sequence[str | int | float],
        extra: str = "",
    ) -> Any:
        ks = Keyspace(namespace)
        keys = [
            *_keys(namespace),
            ks.key("agents", "a", agent) if agent else ks.key("agents", "a"),
            extra or ks.key("tasks", "none"),
        ]
        return await self._script(keys=keys, args=[channel(namespace), *args])


def _int(value: str | None) -> int:
    return int(value) if value else 0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """A task's retry delays: the n-th failed attempt waits min(max_ms, initial_ms *
    multiplier^(n-1)) ms when the failure names no delay of its own."""

    initial_ms: int
    multiplier: float
    max_ms: int


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task as stored. Times are ms since the epoch (Redis time); 0 means unset.

    payload_json/result_json are JSON objects as text ('' when absent); status is one of
    STATUSES; fencing_token is 0 before the first claim.
    """

    task_id: str
    task_type: str
    description: str
    priority: int
    payload_json: str
    status: str
    attempts: int
    max_attempts: int
    created_by: str
    assignee: str
    fencing_token: int
    lease_expire_ms: int
    result_json: str
    last_error: str
    create_ms: int
    update_ms: int
    available_ms: int
    complete_ms: int
    expire_ms: int
    not_before_ms: int = 0
    depends_on: tuple[str, ...] = ()
    dependencies_outstanding: int = 0
    on_dependency_failure: str = ""  # "cancel" | "run"; "" without dependencies
    backoff: BackoffPolicy | None = None
    wait_reason: str = ""  # WAIT_SCHEDULED | WAIT_BACKOFF | WAIT_DEPENDENCIES | ""

    @classmethod
    def from_flat(cls, flat: Sequence[str]) -> TaskRecord:
        """From an HGETALL reply as a script returns it: [field, value, field, value, …]."""
        h = dict(zip(flat[::2], flat[1::2], strict=True))
        return cls(
            task_id=h.get("id", ""),
            task_type=h.get("type", ""),
            description=h.get("desc", ""),
            priority=_int(h.get("pri")),
            payload_json=h.get("payload", ""),
            status=h.get("status", ""),
            attempts=_int(h.get("attempts")),
            max_attempts=_int(h.get("max")),
            created_by=h.get("by", ""),
            assignee=h.get("assignee", ""),
            fencing_token=_int(h.get("token")),
            lease_expire_ms=_int(h.get("lease_exp")),
            result_json=h.get("result", ""),
            last_error=h.get("err", ""),
            create_ms=_int(h.get("created")),
            update_ms=_int(h.get("updated")),
            available_ms=_int(h.get("avail")),
            complete_ms=_int(h.get("completed")),
            expire_ms=_int(h.get("exp")),
            not_before_ms=_int(h.get("nb")),
            depends_on=tuple(d for d in h.get("deps", "").split(",") if d),
            dependencies_outstanding=_int(h.get("deps_left")) if h.get("why") == "deps" else 0,
            on_dependency_failure=h.get("on_fail", ""),
            backoff=(
                BackoffPolicy(_int(h["bo_i"]), float(h.get("bo_m") or 2), _int(h.get("bo_x")))
                if h.get("bo_i")
                else None
            ),
            wait_reason=h.get("why", "") if h.get("status") == PENDING else "",
        )


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """A registration. Times are ms since the epoch (Redis time)."""

    agent_id: str
    capabilities: tuple[str, ...]
    register_ms: int
    last_seen_ms: int
    expire_ms: int


@dataclass(frozen=True, slots=True)
class ResultSummary:
    task_id: str
    task_type: str
    agent_id: str
    complete_ms: int
    result_json: str | None  # None when the result was too large to keep in the summary


@dataclass(frozen=True, slots=True)
class Aggregate:
    total_completed: int
    by_agent: dict[str, int]
    by_type: dict[str, int]
    recent: list[ResultSummary]


def _cursor(token: str) -> tuple[str, str]:
    """A ListTasks/ListDeadLetters page token `<score>:<id>` → (score, id); '' → ('', '')."""
    if not token:
        return "", ""
    score, sep, task_id = token.partition(":")
    if not sep or not score.isdigit() or not task_id:
        raise invalid_field("page_token", "is not a token this server returned")
    return score, task_id


def _lease_lost(task_id: str, reply: list[Any]) -> FailedPrecondition:
    why = reply[1] if len(reply) > 1 else ""
    if why == "expired":
        message = f"the lease on task {task_id} has expired"
    else:
        message = f"the caller holds no lease with that fencing token on task {task_id} ({why})"
    return FailedPrecondition(message, reason="LEASE_LOST", metadata={"task_id": task_id})


def _no_types(field: str) -> InvalidArgument:
    return invalid_field(
        field,
        "name the task types to claim, or register capabilities first",
        reason="NO_TASK_TYPES",
    )


def _not_found(task_id: str) -> NotFound:
    return NotFound(
        f"task {task_id} not found", reason="TASK_NOT_FOUND", metadata={"task_id": task_id}
    )


class TaskStore:
    """Tasks and registrations of every namespace.

    Args:
        redis: the shared client (decode_responses=True).
        task_ttl: TtlPolicy.task, seconds. agent_ttl: TtlPolicy.coordination, seconds.
        shutdown: set when the server begins a graceful stop (closes the wake-up subscriber).
        max_pending: the server's default pending-tasks quota per namespace (0: none).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        task_ttl: int,
        agent_ttl: int,
        shutdown: asyncio.Event | None = None,
        max_pending: int = 0,
    ) -> None:
        self._redis = redis
        self._max_pending = max_pending
        self._task_ttl_ms = task_ttl * 1000
        self._agent_ttl_ms = agent_ttl * 1000
        self.wakeups = TaskWakeups(redis, shutdown if shutdown is not None else asyncio.Event())
        # Claims of a task attempted before, per namespace (read by metrics at scrape time).
        self.redeliveries: dict[str, int] = {}
        self._add = _Script(redis, "tasks_add")
        self._claim = _Script(redis, "tasks_claim")
        self._renew = _Script(redis, "tasks_renew")
        self._complete = _Script(redis, "tasks_complete")
        self._fail = _Script(redis, "tasks_fail")
        self._cancel = _Script(redis, "tasks_cancel")
        self._requeue = _Script(redis, "tasks_requeue")
        self._list = _Script(redis, "tasks_list")
        self._get = _Script(redis, "tasks_get")
        self._register = _Script(redis, "tasks_register_agent")
        self._heartbeat = _Script(redis, "tasks_heartbeat")
        self._read = load_script(redis, "index_read")

    # -- agents ---------------------------------------------------------------------------

    def _agent(self, flat: Sequence[str]) -> AgentRecord:
        h = dict(zip(flat[::2], flat[1::2], strict=True))
        seen = _int(h.get("seen"))
        return AgentRecord(
            agent_id=h.get("id", ""),
            capabilities=tuple(c for c in h.get("caps", "").split(",") if c),
            register_ms=_int(h.get("registered")),
            last_seen_ms=seen,
            expire_ms=seen + self._agent_ttl_ms,
        )

    async def register_agent(
        self, namespace: str, agent_id: str, capabilities: Sequence[str]
    ) -> AgentRecord:
        """(Re)registers `agent_id` with `capabilities` (validated ids) for the agent TTL."""
        flat = await self._register(
            namespace,
            agent=agent_id,
            args=[agent_id, ",".join(capabilities), self._agent_ttl_ms],
        )
        return self._agent(flat)

    async def heartbeat(self, namespace: str, agent_id: str) -> AgentRecord:
        """Extends the registration by the agent TTL.

        Raises NotFound (AGENT_NOT_REGISTERED) if it is not registered or has lapsed;
        FailedPrecondition (TASK_CANCELLED, metadata task_ids) once after tasks the agent held
        were cancelled (the registration is extended all the same).
        """
        flat = await self._heartbeat(
            namespace, agent=agent_id, args=[agent_id, self._agent_ttl_ms]
        )
        if len(flat) == 3 and flat[0] == "cancelled" and isinstance(flat[2], list):
            raise FailedPrecondition(
                f"tasks held by agent {agent_id} were cancelled: {flat[1]}",
                reason="TASK_CANCELLED",
                metadata={"task_ids": str(flat[1])},
            )
        if not flat:
            raise NotFound(
                f"agent {agent_id} is not registered (or its registration lapsed)",
                reason="AGENT_NOT_REGISTERED",
            )
        return self._agent(flat)

    async def deregister_agent(self, namespace: str, agent_id: str) -> bool:
        """Removes the registration; False if there was none."""
        ks = Keyspace(namespace)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(ks.key("agents", "a", agent_id))
            pipe.zrem(ks.key("agents", "index"), agent_id)
            pipe.hdel(ks.key("agents", "cx"), agent_id)  # its cancellation notices went with it
            deleted, _, _ = await pipe.execute()
        return bool(deleted)

    async def list_agents(
        self, namespace: str, page_size: int, page_token: str
    ) -> tuple[list[AgentRecord], str]:
        """Active registrations ordered by agent id, and the next page token ('' at the end).

        Raises InvalidArgument for a page token that is not an agent id.
        """
        if page_token:
            try:
                validate_id(page_token, "page_token")  # the token is the last agent id
            except InvalidArgument:
                raise invalid_field("page_token", "is not a token this server returned") from None
        ks = Keyspace(namespace)
        index = ks.key("agents", "index")

        async def examine(ids: Sequence[str]) -> list[AgentRecord | None]:
            # A registration that lapsed (its hash expired) leaves the index here.
            rows = await self._read(
                keys=[index, *(ks.key("agents", "a", i) for i in ids)], args=[1, 0, *ids]
            )
            return [self._agent(row) if row else None for row in rows]

        return await page_by_lex(
            self._redis,
            index,
            lo=f"({page_token}" if page_token else "-",
            want=page_size,
            budget=max(LIST_BUDGET, page_size),
            examine=examine,
        )

    # -- tasks ----------------------------------------------------------------------------

    async def add_task(
        self,
        namespace: str,
        agent_id: str,
        *,
        task_id: str,
        task_type: str,
        description: str,
        priority: int,
        payload_json: str,
        max_attempts: int,
        request_id: str,
        not_before_ms: int = 0,
        depends_on: Sequence[str] = (),
        on_dependency_failure: str = "cancel",
        backoff: BackoffPolicy | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Adds a pending task; returns (task, replayed).

        `not_before_ms` (ms since the epoch, 0: none) keeps it from claims until then;
        `depends_on` (validated ids of existing tasks) until they complete, and
        `on_dependency_failure` ("cancel" | "run") says what a dead-lettered or cancelled one
        does to it; `backoff` is its retry-delay policy.
        replayed is True when `request_id` (scoped to `agent_id`) matched an earlier AddTask
        whose task still exists: that task is returned and nothing is written.
        Raises AlreadyExists (TASK_EXISTS) if `task_id` is taken; ResourceExhausted
        (QUOTA_EXCEEDED, quota "pending_tasks") at the namespace's pending-tasks quota;
        NotFound (DEPENDENCY_NOT_FOUND) for a dependency that does not exist.
        """
        ks = Keyspace(namespace)
        reply = await self._add(
            namespace,
            agent=agent_id,
            extra=ks.key("tasks", "req", agent_id, request_id) if request_id else "",
            args=[
                task_id,
                agent_id,
                task_type,
                description,
                priority,
                payload_json,
                max_attempts,
                request_id,
                self._task_ttl_ms,
                self._max_pending,
                not_before_ms,
                on_dependency_failure,
                backoff.initial_ms if backoff else 0,
                repr(backoff.multiplier) if backoff else "0",
                backoff.max_ms if backoff else 0,
                *depends_on,
            ]
        )
        if reply[0] == "unknown_dep":
            raise NotFound(
                f"dependency {reply[1]} not found",
                reason="DEPENDENCY_NOT_FOUND",
                metadata={"task_id": str(reply[1])},
            )
        if reply[0] == "quota":
            raise quota_exceeded("pending_tasks", int(reply[1]), int(reply[2]))
        if reply[0] == "exists":
            raise AlreadyExists(
                f"task {task_id} already exists",
                reason="TASK_EXISTS",
                metadata={"task_id": task_id},
            )
        return TaskRecord.from_flat(reply[1]), reply[0] == "replayed"

    async def claim_task(
        self,
        namespace: str,
        agent_id: str,
        *,
        task_types: Sequence[str],
        lease_ms: int,
        wait_seconds: float,
        shutdown: asyncio.Event,
    ) -> TaskRecord | None:
        """Claims the best pending task of `task_types` (none: the agent's capabilities) under a
        `lease_ms` lease, waiting up to `wait_seconds` for one; None when none came.

        While waiting it holds no Redis connection: it sleeps until a task that may suit it
        becomes pending in any server process (one waiter per task), a lease of its types runs
        out or a backoff ends, RECHECK_SECONDS pass, or `shutdown` is set (then it checks once
        more and answers).
        Raises InvalidArgument (NO_TASK_TYPES) when no types are given and the agent has no
        registered capabilities.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        args: list[str | int] = [
            agent_id,
            lease_ms,
            self._task_ttl_ms,
            self._agent_ttl_ms,
            *task_types,
        ]
        while True:
            mark = self.wakeups.mark(namespace)
            reply = await self._claim(namespace, agent=agent_id, args=args)
            if reply[0] == "ok":
                return self._claimed(namespace, reply[1])
            if reply[0] == "no_types":
                raise _no_types("task_types")
            remaining = deadline - loop.time()
            if remaining <= 0 or shutdown.is_set():
                return None
            pause = min(remaining, RECHECK_SECONDS)
            due_ms = int(reply[1])
            if due_ms >= 0:
                pause = min(pause, due_ms / 1000)
            await self.wakeups.wait(namespace, task_types, mark, pause, shutdown)

    @overload
    def _claimed(self, namespace: str, flat: Sequence[str]) -> TaskRecord: ...
    @overload
    def _claimed(self, namespace: str, flat: Sequence[str] | None) -> TaskRecord | None: ...

    def _claimed(self, namespace: str, flat: Sequence[str] | None) -> TaskRecord | None:
        """A task a claim (ClaimTask or claim_next) just leased, counting a redelivery; None
        for no task."""
        if not flat:
            return None
        record = TaskRecord.from_flat(flat)
        if record.attempts > 1:
            self.redeliveries[namespace] = self.redeliveries.get(namespace, 0) + 1
        return record

    async def renew_lease(
        self, namespace: str, agent_id: str, task_id: str, fencing_token: int, lease_ms: int
    ) -> int:
        """Extends the caller's live lease to now + `lease_ms`; returns the new expiry (ms).

        Raises NotFound (TASK_NOT_FOUND), FailedPrecondition (TASK_CANCELLED when the task was
        cancelled while the caller held it; LEASE_LOST).
        """
        reply = await self._renew(
            namespace,
            agent=agent_id,
            args=[
                task_id,
                fencing_token,
                agent_id,
                lease_ms,
                self._task_ttl_ms,
            ]
        )
        if reply[0] == "cancelled":
            raise FailedPrecondition(
                f"task {task_id} was cancelled",
                reason="TASK_CANCELLED",
                metadata={"task_id": task_id},
            )
        self._check(task_id, reply)
        return int(reply[2])

    def _next_args(self, claim_next: ClaimNext | None) -> list[str | int]:
        if claim_next is None:
            return ["0", 0, self._agent_ttl_ms]
        return ["1", claim_next.lease_ms, self._agent_ttl_ms, *claim_next.task_types]

    async def complete_task(
        self,
        namespace: str,
        agent_id: str,
        task_id: str,
        fencing_token: int,
        result_json: str,
        *,
        claim_next: ClaimNext | None = None,
    ) -> tuple[TaskRecord, TaskRecord | None]:
        """Completes the task held under the caller's live lease, counting it for
        AggregateResults, and with `claim_next` leases the caller's next task in the same
        script. Returns (completed task, next task or None when none was pending).

        Repeating a successful completion returns the task unchanged (and, with claim_next,
        the task that completion leased while the lease is still the caller's). A refused
        completion claims nothing.
        Raises NotFound (TASK_NOT_FOUND), FailedPrecondition (LEASE_LOST), InvalidArgument
        (NO_TASK_TYPES: claim_next without types and no registered capabilities; nothing is
        completed then).
        """
        reply = await self._complete(
            namespace,
            agent=agent_id,
            args=[
                task_id,
                fencing_token,
                agent_id,
                result_json,
                self._task_ttl_ms,
                RECENT_RESULTS,
                SUMMARY_RESULT_MAX_BYTES,
                *self._next_args(claim_next),
            ]
        )
        self._check(task_id, reply)
        return TaskRecord.from_flat(reply[1]), self._claimed(namespace, reply[2])

    async def fail_task(
        self,
        namespace: str,
        agent_id: str,
        task_id: str,
        fencing_token: int,
        *,
        error: str,
        retryable: bool,
        backoff_ms: int | None,
        claim_next: ClaimNext | None = None,
    ) -> tuple[TaskRecord, TaskRecord | None]:
        """Ends the caller's claim unsuccessfully: pending again (after `backoff_ms`; None: the
        task's backoff policy decides, no policy meaning at once) or dead
        when not retryable or attempts reached max_attempts; with `claim_next`, then leases the
        caller's next task in the same script (with no backoff, possibly this one again).
        Returns (failed task, next task or None).

        Raises NotFound (TASK_NOT_FOUND), FailedPrecondition (LEASE_LOST), InvalidArgument
        (NO_TASK_TYPES, as for complete_task).
        """
        reply = await self._fail(
            namespace,
            agent=agent_id,
            args=[
                task_id,
                fencing_token,
                agent_id,
                error,
                "1" if retryable else "0",
                -1 if backoff_ms is None else backoff_ms,
                self._task_ttl_ms,
                *self._next_args(claim_next),
            ]
        )
        self._check(task_id, reply)
        return TaskRecord.from_flat(reply[1]), self._claimed(namespace, reply[2])

    @staticmethod
    def _check(task_id: str, reply: list[Any]) -> None:
        if reply[0] == "not_found":
            raise _not_found(task_id)
        if reply[0] == "lease_lost":
            raise _lease_lost(task_id, reply)
        if reply[0] == "cancelled":  # Complete/Fail keep answering LEASE_LOST, as before
            raise _lease_lost(task_id, ["lease_lost", "cancelled"])
        if reply[0] == "no_types":
            raise _no_types("claim_next.task_types")

    async def get_task(self, namespace: str, task_id: str) -> TaskRecord:
        """The task as the next claim would find it: a task whose lease has run out is settled
        first, in the same script (pending again, attempt counted, last_error 'lease expired';
        or dead-lettered after max_attempts), so a read never shows a dead worker's claim.

        Raises NotFound (TASK_NOT_FOUND).
        """
        reply = await self._get(namespace, args=[task_id, self._task_ttl_ms])
        if not reply:
            raise _not_found(task_id)
        return TaskRecord.from_flat(reply[1])

    async def list_tasks(
        self,
        namespace: str,
        *,
        status: str,
        task_type: str,
        assignee: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[TaskRecord], str]:
        """Tasks in add order matching the filters ('' = any); returns (page, next token).
        Tasks whose lease has run out are settled before filtering, as in `get_task`.

        Raises InvalidArgument for a malformed page token.
        """
        return await self._walk(
            namespace, "index", status, task_type, assignee, page_size, page_token
        )

    async def list_dead_letters(
        self, namespace: str, *, page_size: int, page_token: str
    ) -> tuple[list[TaskRecord], str]:
        """Dead-lettered tasks, oldest dead-lettering first; returns (page, next token).

        Filtered by status too: an entry can outlive its task (TASK TTL), and the id may since
        have been added again as a new task.
        """
        return await self._walk(namespace, "dead", DEAD, "", "", page_size, page_token)

    async def _walk(
        self,
        namespace: str,
        index: str,
        status: str,
        task_type: str,
        assignee: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[TaskRecord], str]:
        score, after_id = _cursor(page_token)
        next_score, next_id, flats, _woke = await self._list(
            namespace,
            args=[
                index,
                score,
                after_id,
                page_size,
                status,
                task_type,
                assignee,
                LIST_BUDGET,
                self._task_ttl_ms,
            ]
        )
        token = f"{next_score}:{next_id}" if next_score else ""
        return [TaskRecord.from_flat(f) for f in flats], token

    async def cancel_task(
        self, namespace: str, agent_id: str, task_id: str, *, privileged: bool
    ) -> TaskRecord:
        """Cancels a task that is not completed (revoking any lease). Only its adder, or a
        `privileged` caller (VALIDATOR+, per the TaskService issue), may.

        A claimed task's holder is told in the same script: a CANCEL_SIGNAL_TYPE signal
        targeted at it in the namespace's signals stream, TASK_CANCELLED on its next renewal
        and heartbeat. Dependents are settled by their policy.

        Raises NotFound (TASK_NOT_FOUND), PermissionDenied (NOT_TASK_ADDER),
        FailedPrecondition (TASK_COMPLETED).
        """
        reply = await self._cancel(
            namespace,
            agent=agent_id,
            args=[
                task_id,
                agent_id,
                "1" if privileged else "0",
                self._task_ttl_ms,
                CANCEL_SIGNAL_TYPE,
                self._agent_ttl_ms,
            ],
            extra=SignalStore.stream_key(namespace),
        )
        if reply[0] == "not_found":
            raise _not_found(task_id)
        if reply[0] == "denied":
            raise PermissionDenied(
                f"only the agent that added task {task_id}, or a VALIDATOR, may cancel it",
                reason="NOT_TASK_ADDER",
                metadata={"task_id": task_id},
            )
        if reply[0] == "completed":
            raise FailedPrecondition(
                f"task {task_id} is already completed",
                reason="TASK_COMPLETED",
                metadata={"task_id": task_id},
            )
        return TaskRecord.from_flat(reply[1])

    async def requeue_dead_letter(self, namespace: str, task_id: str) -> TaskRecord:
        """Puts a dead-lettered task back in its queue with attempts reset to 0.

        Raises NotFound (TASK_NOT_FOUND), FailedPrecondition (NOT_DEAD_LETTERED).
        """
        reply = await self._requeue(namespace, args=[task_id, self._task_ttl_ms])
        if reply[0] == "not_found":
            raise _not_found(task_id)
        if reply[0] == "not_dead":
            raise FailedPrecondition(
                f"task {task_id} is not dead-lettered (it is {reply[1]})",
                reason="NOT_DEAD_LETTERED",
                metadata={"task_id": task_id, "status": str(reply[1])},
            )
        return TaskRecord.from_flat(reply[1])

    async def aggregate_results(self, namespace: str, task_type: str) -> Aggregate:
        """Exact completion counts (kept by the completion script) and recent summaries, for
        all types (one pipelined round trip) or one (`task_type`: its ring of recent
        summaries, then an HSCAN of the per-type-and-agent counts for its fields).

        For one type, every figure comes from that type's own fields (`<type>:<agent>` in
        tasks:stats:type_agents, the type's ring in tasks:recent_types): its total is the sum
        of its by-agent counts, so the answer stays consistent when those fields are gone.
        """
        ks = Keyspace(namespace)
        if task_type:
            slots = [f"{task_type}:{i}" for i in range(RECENT_RESULTS)]
            ring: list[str | None] = await self._redis.hmget(  # type: ignore[assignment]
                ks.key("tasks", "recent_types"), [f"{task_type}:n", *slots]
            )
            pushed = _int(ring[0])
            # Newest first: the n-th push went to slot (n - 1) mod RECENT_RESULTS.
            raws = [
                ring[1 + (pushed - 1 - i) % RECENT_RESULTS]
                for i in range(min(pushed, RECENT_RESULTS))
            ]
            by_agent = {}
            async for field, value in self._redis.hscan_iter(
                ks.key("tasks", "stats", "type_agents"), match=f"{task_type}:*", count=1000
            ):
                by_agent[field.partition(":")[2]] = int(value)
            total = sum(by_agent.values())
            by_type = {task_type: total} if total else {}
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(ks.key("tasks", "stats", "agents"))
                pipe.lrange(ks.key("tasks", "recent"), 0, RECENT_RESULTS - 1)
                pipe.hget(ks.key("tasks", "stats"), "total")
                pipe.hgetall(ks.key("tasks", "stats", "types"))
                replies = await pipe.execute()
            by_agent = {k: int(v) for k, v in replies[0].items()}
            raws = replies[1]
            total = _int(replies[2])
            by_type = {k: int(v) for k, v in replies[3].items()}
        recent = []
        for raw in raws:
            if raw is None:  # a slot whose hash lapsed between pushes
                continue
            item = json.loads(raw)
            result = item.get("result")
            recent.append(
                ResultSummary(
                    task_id=item["id"],
                    task_type=item["type"],
                    agent_id=item["agent"],
                    complete_ms=int(item["at"]),
                    result_json=result if isinstance(result, str) else None,
                )
            )
        return Aggregate(total, by_agent, by_type, recent)
