"""TaskService: agents, priority queues, leases, dead letters, aggregation
(proto/agentcoord/v1/tasks.proto → here → store/tasks.py + store/lua/tasks_*.lua).

Thin: validate the request, one store call, build the response. Bounds enforced here (all
INVALID_ARGUMENT with a field violation, nothing written): priority 1..10 (0 → 5),
max_attempts 1..100 (0 → 3), leases 1 s..1 h (unset → 5 min), claim waits 0..60 s, backoffs
0..1 h, descriptions and errors ≤ 4096 characters, ≤ 64 capabilities, ≤ 32 claim types,
≤ 32 dependencies, not_before at most the TASK TTL ahead, backoff policies: initial 1 ms..1 h,
multiplier 1..10 (0 → 2), maximum initial..1 h (unset → 1 h).
"""

from __future__ import annotations

import json
import math
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import grpc
from agentcoord.v1 import access_pb2, tasks_pb2, tasks_pb2_grpc
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from ..errors import invalid_field
from ..identity import current_principal
from ..store import tasks as store
from ..store.keys import validate_id
from .values import checked_json, fitting, response_budget

if TYPE_CHECKING:
    from . import ServiceContext

PB2 = tasks_pb2

DEFAULT_PRIORITY = 5
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 100
DEFAULT_LEASE_MS = 5 * 60 * 1000
MIN_LEASE_MS, MAX_LEASE_MS = 1000, 3600 * 1000
MAX_WAIT_MS = 60 * 1000
MAX_BACKOFF_MS = 3600 * 1000
MAX_TEXT_CHARS = 4096
MAX_CAPABILITIES = 64
MAX_CLAIM_TYPES = 32
MAX_DEPENDENCIES = 32
DEFAULT_BACKOFF_MULTIPLIER, MAX_BACKOFF_MULTIPLIER = 2.0, 10.0
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
MAX_TASK_SETTING = "--max-task-bytes"

_STATUS_TO_PROTO = {
    store.PENDING: tasks_pb2.TASK_STATUS_PENDING,
    store.CLAIMED: tasks_pb2.TASK_STATUS_CLAIMED,
    store.COMPLETED: tasks_pb2.TASK_STATUS_COMPLETED,
    store.DEAD: tasks_pb2.TASK_STATUS_DEAD_LETTERED,
    store.CANCELLED: tasks_pb2.TASK_STATUS_CANCELLED,
}
_STATUS_FROM_PROTO = {v: k for k, v in _STATUS_TO_PROTO.items()}
_WAIT_TO_PROTO = {
    store.WAIT_SCHEDULED: tasks_pb2.TASK_WAIT_REASON_SCHEDULED,
    store.WAIT_BACKOFF: tasks_pb2.TASK_WAIT_REASON_BACKOFF,
    store.WAIT_DEPENDENCIES: tasks_pb2.TASK_WAIT_REASON_DEPENDENCIES,
}
_ON_FAILURE_TO_PROTO = {
    "cancel": tasks_pb2.DEPENDENCY_FAILURE_POLICY_CANCEL,
    "run": tasks_pb2.DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY,
}


# -- conversions ---------------------------------------------------------------------------


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _struct(text: str) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    if text:
        value.update(json.loads(text))
    return value


def _json(value: struct_pb2.Struct, field: str, limit: int) -> str:
    """The Struct as JSON text ('' when empty), once `checked_json` admitted it."""
    if not value.fields:
        return ""
    checked_json(value, field, limit, MAX_TASK_SETTING)
    return json.dumps(json_format.MessageToDict(value), separators=(",", ":"))


def task_proto(rec: store.TaskRecord) -> tasks_pb2.Task:
    task = tasks_pb2.Task(
        task_id=rec.task_id,
        task_type=rec.task_type,
        description=rec.description,
        priority=rec.priority,
        payload=_struct(rec.payload_json),
        status=_STATUS_TO_PROTO.get(rec.status, tasks_pb2.TASK_STATUS_UNSPECIFIED),
        attempts=rec.attempts,
        max_attempts=rec.max_attempts,
        created_by=rec.created_by,
        assignee=rec.assignee,
        last_error=rec.last_error,
        create_time=_ts(rec.create_ms),
        update_time=_ts(rec.update_ms),
        expire_time=_ts(rec.expire_ms),
    )
    if rec.status in (store.CLAIMED, store.COMPLETED) and rec.fencing_token:
        task.lease.fencing_token = rec.fencing_token
        task.lease.expire_time.FromMilliseconds(rec.lease_expire_ms)
    if rec.status == store.COMPLETED:
        task.result.CopyFrom(_struct(rec.result_json))
        task.complete_time.FromMilliseconds(rec.complete_ms)
    if rec.available_ms:
        task.available_time.FromMilliseconds(rec.available_ms)
    if rec.not_before_ms:
        task.not_before.FromMilliseconds(rec.not_before_ms)
    if rec.depends_on:
        task.depends_on.extend(rec.depends_on)
        task.dependencies_outstanding = rec.dependencies_outstanding
        task.dependency_failure_policy = _ON_FAILURE_TO_PROTO.get(
            rec.on_dependency_failure, tasks_pb2.DEPENDENCY_FAILURE_POLICY_UNSPECIFIED
        )
    if rec.backoff is not None:
        task.backoff_policy.initial.FromMilliseconds(rec.backoff.initial_ms)
        task.backoff_policy.multiplier = rec.backoff.multiplier
        task.backoff_policy.maximum.FromMilliseconds(rec.backoff.max_ms)
    task.wait_reason = _WAIT_TO_PROTO.get(rec.wait_reason, tasks_pb2.TASK_WAIT_REASON_UNSPECIFIED)
    return task


def agent_proto(rec: store.AgentRecord) -> tasks_pb2.Agent:
    return tasks_pb2.Agent(
        agent_id=rec.agent_id,
        capabilities=rec.capabilities,
        register_time=_ts(rec.register_ms),
        last_seen_time=_ts(rec.last_seen_ms),
        expire_time=_ts(rec.expire_ms),
    )


# -- validation ----------------------------------------------------------------------------


def _duration_ms(
    request: object,
    field: str,
    *,
    default: int,
    low: int,
    high: int,
    what: str,
    prefix: str = "",
) -> int:
    """The Duration field `field` in ms, `default` when unset; InvalidArgument outside
    [low, high] ms (naming the field as `prefix + field`)."""
    if not request.HasField(field):  # type: ignore[attr-defined]
        return default
    value: duration_pb2.Duration = getattr(request, field)
    ms = value.ToMilliseconds()
    if ms < low or ms > high or value.nanos < 0 or value.seconds < 0:
        raise invalid_field(prefix + field, what)
    return ms


def _ids(values: Sequence[str], field: str, limit: int) -> list[str]:
    if len(values) > limit:
        raise invalid_field(field, f"at most {limit} entries")
    unique: list[str] = []
    for i, value in enumerate(values):
        validate_id(value, f"{field}[{i}]")
        if value not in unique:
            unique.append(value)
    return unique


def _text(value: str, field: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise invalid_field(field, f"at most {MAX_TEXT_CHARS} characters")
    return value


def _page_size(value: int) -> int:
    if value < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _token(value: int) -> int:
    if value <= 0:
        raise invalid_field("fencing_token", "must be the positive token of a claim")
    return value


def _lease_ms(request: object, prefix: str = "") -> int:
    return _duration_ms(
        request,
        "lease_duration",
        default=DEFAULT_LEASE_MS,
        low=MIN_LEASE_MS,
        high=MAX_LEASE_MS,
        what="must be 1 s to 1 h",
        prefix=prefix,
    )


def _claim_next(
    request: tasks_pb2.CompleteTaskRequest | tasks_pb2.FailTaskRequest,
) -> store.ClaimNext | None:
    """The request's claim_next as the store takes it; None when unset."""
    if not request.HasField("claim_next"):
        return None
    options = request.claim_next
    return store.ClaimNext(
        task_types=_ids(options.task_types, "claim_next.task_types", MAX_CLAIM_TYPES),
        lease_ms=_lease_ms(options, "claim_next."),
    )


def _backoff_policy(request: tasks_pb2.AddTaskRequest) -> store.BackoffPolicy | None:
    """AddTask's backoff_policy as the store takes it; None when unset."""
    if not request.HasField("backoff_policy"):
        return None
    policy = request.backoff_policy
    if not policy.HasField("initial"):
        raise invalid_field("backoff_policy.initial", "is required (1 ms to 1 h)")
    initial = _duration_ms(
        policy,
        "initial",
        default=0,
        low=1,
        high=MAX_BACKOFF_MS,
        what="must be 1 ms to 1 h",
        prefix="backoff_policy.",
    )
    multiplier = policy.multiplier or DEFAULT_BACKOFF_MULTIPLIER
    if not math.isfinite(multiplier) or not 1 <= multiplier <= MAX_BACKOFF_MULTIPLIER:
        raise invalid_field("backoff_policy.multiplier", "must be 1 to 10 (0 means 2)")
    maximum = _duration_ms(
        policy,
        "maximum",
        default=MAX_BACKOFF_MS,
        low=initial,
        high=MAX_BACKOFF_MS,
        what="must be at least backoff_policy.initial and at most 1 h",
        prefix="backoff_policy.",
    )
    return store.BackoffPolicy(initial_ms=initial, multiplier=multiplier, max_ms=maximum)


def _not_before_ms(request: tasks_pb2.AddTaskRequest, task_ttl_ms: int) -> int:
    """AddTask's not_before in ms since the epoch (0 when unset). The bound uses this process's
    clock (the claim compares with Redis time): it only keeps a task from outliving its TTL."""
    if not request.HasField("not_before"):
        return 0
    value = request.not_before
    if value.seconds < 0 or not 0 <= value.nanos < 1_000_000_000:
        raise invalid_field("not_before", "must be a valid time after 1970")
    ms = value.ToMilliseconds()
    if ms > time.time() * 1000 + task_ttl_ms:
        raise invalid_field("not_before", "must be at most the TASK TTL ahead")
    return ms


_ON_FAILURE_FROM_PROTO = {
    tasks_pb2.DEPENDENCY_FAILURE_POLICY_UNSPECIFIED: "cancel",
    tasks_pb2.DEPENDENCY_FAILURE_POLICY_CANCEL: "cancel",
    tasks_pb2.DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY: "run",
}


class TaskServicer(tasks_pb2_grpc.TaskServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._store = store.TaskStore(
            ctx.redis,
            task_ttl=ctx.settings.ttl.task,
            agent_ttl=ctx.settings.ttl.coordination,
            shutdown=ctx.shutdown,
            max_pending=ctx.settings.quota_pending_tasks,
        )
        self._max_task_bytes = ctx.settings.max_task_bytes
        self._budget = response_budget(ctx.settings.max_message_bytes)

    async def _fitted_page(
        self,
        page: Callable[[int], Awaitable[tuple[list[store.TaskRecord], str]]],
        size: int,
    ) -> tuple[list[tasks_pb2.Task], str]:
        """A page of at most `size` tasks whose response fits one message, and its token.

        A task is at most two `--max-task-bytes` fields plus bounded text, so one always fits;
        when several do not, the page is read again with as many as fit, which gives the
        store's own token for the shorter page (another round trip, only for pages of
        megabytes).
        """
        while True:
            records, token = await page(size)
            tasks = [task_proto(r) for r in records]
            fit = fitting(tasks, self._budget)
            if fit == len(tasks):
                return tasks, token
            size = fit

    async def RegisterAgent(
        self, request: tasks_pb2.RegisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.RegisterAgentResponse:
        capabilities = _ids(request.capabilities, "capabilities", MAX_CAPABILITIES)
        p = current_principal()
        rec = await self._store.register_agent(p.namespace, p.agent_id, capabilities)
        return tasks_pb2.RegisterAgentResponse(agent=agent_proto(rec))

    async def Heartbeat(
        self, request: tasks_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.HeartbeatResponse:
        p = current_principal()
        rec = await self._store.heartbeat(p.namespace, p.agent_id)
        return tasks_pb2.HeartbeatResponse(agent=agent_proto(rec))

    async def DeregisterAgent(
        self, request: tasks_pb2.DeregisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.DeregisterAgentResponse:
        p = current_principal()
        removed = await self._store.deregister_agent(p.namespace, p.agent_id)
        return tasks_pb2.DeregisterAgentResponse(deregistered=removed)

    async def ListAgents(
        self, request: tasks_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListAgentsResponse:
        size = _page_size(request.page_size)
        agents, token = await self._store.list_agents(
            current_principal().namespace, size, request.page_token
        )
        listed = [agent_proto(a) for a in agents]
        fit = fitting(listed, self._budget)
        if fit < len(listed):  # the token is the last agent id listed
            listed, token = listed[:fit], listed[fit - 1].agent_id
        return tasks_pb2.ListAgentsResponse(agents=listed, next_page_token=token)

    async def AddTask(
        self, request: tasks_pb2.AddTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.AddTaskResponse:
        task_id = validate_id(request.task_id, "task_id") if request.task_id else uuid.uuid4().hex
        task_type = validate_id(request.task_type, "task_type")
        priority = request.priority or DEFAULT_PRIORITY
        if not 1 <= priority <= 10:
            raise invalid_field("priority", "must be 1 (lowest) to 10 (highest)")
        max_attempts = request.max_attempts or DEFAULT_MAX_ATTEMPTS
        if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise invalid_field("max_attempts", f"must be 1 to {MAX_ATTEMPTS_LIMIT}")
        if request.request_id:
            validate_id(request.request_id, "request_id")
        depends_on = _ids(request.depends_on, "depends_on", MAX_DEPENDENCIES)
        if request.dependency_failure_policy not in _ON_FAILURE_FROM_PROTO:
            raise invalid_field("dependency_failure_policy", "unknown policy")
        not_before_ms = _not_before_ms(request, self._ctx.settings.ttl.task * 1000)
        backoff = _backoff_policy(request)
        p = current_principal()
        rec, replayed = await self._store.add_task(
            p.namespace,
            p.agent_id,
            task_id=task_id,
            task_type=task_type,
            description=_text(request.description, "description"),
            priority=priority,
            payload_json=_json(request.payload, "payload", self._max_task_bytes),
            max_attempts=max_attempts,
            request_id=request.request_id,
            not_before_ms=not_before_ms,
            depends_on=depends_on,
            on_dependency_failure=_ON_FAILURE_FROM_PROTO[request.dependency_failure_policy],
            backoff=backoff,
        )
        return tasks_pb2.AddTaskResponse(task=task_proto(rec), replayed=replayed)

    async def ClaimTask(
        self, request: tasks_pb2.ClaimTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ClaimTaskResponse:
        task_types = _ids(request.task_types, "task_types", MAX_CLAIM_TYPES)
        lease_ms = _lease_ms(request)
        wait_ms = _duration_ms(
            request, "wait", default=0, low=0, high=MAX_WAIT_MS, what="must be 0 to 60 s"
        )
        p = current_principal()
        rec = await self._store.claim_task(
            p.namespace,
            p.agent_id,
            task_types=task_types,
            lease_ms=lease_ms,
            wait_seconds=wait_ms / 1000,
            shutdown=self._ctx.shutdown,
        )
        if rec is None:
            return tasks_pb2.ClaimTaskResponse()
        return tasks_pb2.ClaimTaskResponse(task=task_proto(rec))

    async def RenewTaskLease(
        self, request: tasks_pb2.RenewTaskLeaseRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.RenewTaskLeaseResponse:
        task_id = validate_id(request.task_id, "task_id")
        token = _token(request.fencing_token)
        lease_ms = _duration_ms(
            request,
            "lease_duration",
            default=DEFAULT_LEASE_MS,
            low=MIN_LEASE_MS,
            high=MAX_LEASE_MS,
            what="must be 1 s to 1 h",
        )
        p = current_principal()
        expiry = await self._store.renew_lease(p.namespace, p.agent_id, task_id, token, lease_ms)
        return tasks_pb2.RenewTaskLeaseResponse(
            lease=tasks_pb2.TaskLease(fencing_token=token, expire_time=_ts(expiry))
        )

    async def CompleteTask(
        self, request: tasks_pb2.CompleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.CompleteTaskResponse:
        task_id = validate_id(request.task_id, "task_id")
        token = _token(request.fencing_token)
        result = _json(request.result, "result", self._max_task_bytes)
        claim_next = _claim_next(request)
        p = current_principal()
        rec, next_rec = await self._store.complete_task(
            p.namespace, p.agent_id, task_id, token, result, claim_next=claim_next
        )
        response = tasks_pb2.CompleteTaskResponse(task=task_proto(rec))
        if next_rec is not None:
            response.next_task.CopyFrom(task_proto(next_rec))
        return response

    async def FailTask(
        self, request: tasks_pb2.FailTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.FailTaskResponse:
        task_id = validate_id(request.task_id, "task_id")
        token = _token(request.fencing_token)
        backoff_ms = (
            _duration_ms(
                request, "backoff", default=0, low=0, high=MAX_BACKOFF_MS, what="must be 0 to 1 h"
            )
            if request.HasField("backoff")
            else None  # the task's backoff policy decides
        )
        claim_next = _claim_next(request)
        p = current_principal()
        rec, next_rec = await self._store.fail_task(
            p.namespace,
            p.agent_id,
            task_id,
            token,
            error=_text(request.error, "error"),
            retryable=request.retryable if request.HasField("retryable") else True,
            backoff_ms=backoff_ms,
            claim_next=claim_next,
        )
        response = tasks_pb2.FailTaskResponse(task=task_proto(rec))
        if next_rec is not None:
            response.next_task.CopyFrom(task_proto(next_rec))
        return response

    async def GetTask(
        self, request: tasks_pb2.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.GetTaskResponse:
        task_id = validate_id(request.task_id, "task_id")
        rec = await self._store.get_task(current_principal().namespace, task_id)
        return tasks_pb2.GetTaskResponse(task=task_proto(rec))

    async def ListTasks(
        self, request: tasks_pb2.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListTasksResponse:
        status = ""
        if request.status:
            if request.status not in _STATUS_FROM_PROTO:
                raise invalid_field("status", "unknown task status")
            status = _STATUS_FROM_PROTO[request.status]
        task_type = validate_id(request.task_type, "task_type") if request.task_type else ""
        assignee = validate_id(request.assignee, "assignee") if request.assignee else ""
        namespace = current_principal().namespace

        async def page(size: int) -> tuple[list[store.TaskRecord], str]:
            return await self._store.list_tasks(
                namespace,
                status=status,
                task_type=task_type,
                assignee=assignee,
                page_size=size,
                page_token=request.page_token,
            )

        tasks, token = await self._fitted_page(page, _page_size(request.page_size))
        return tasks_pb2.ListTasksResponse(tasks=tasks, next_page_token=token)

    async def CancelTask(
        self, request: tasks_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.CancelTaskResponse:
        task_id = validate_id(request.task_id, "task_id")
        p = current_principal()
        rec = await self._store.cancel_task(
            p.namespace,
            p.agent_id,
            task_id,
            privileged=p.tier >= access_pb2.ACCESS_TIER_VALIDATOR,
        )
        return tasks_pb2.CancelTaskResponse(task=task_proto(rec))

    async def ListDeadLetters(
        self, request: tasks_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.ListDeadLettersResponse:
        namespace = current_principal().namespace

        async def page(size: int) -> tuple[list[store.TaskRecord], str]:
            return await self._store.list_dead_letters(
                namespace, page_size=size, page_token=request.page_token
            )

        tasks, token = await self._fitted_page(page, _page_size(request.page_size))
        return tasks_pb2.ListDeadLettersResponse(tasks=tasks, next_page_token=token)

    async def RequeueDeadLetter(
        self, request: tasks_pb2.RequeueDeadLetterRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.RequeueDeadLetterResponse:
        task_id = validate_id(request.task_id, "task_id")
        rec = await self._store.requeue_dead_letter(current_principal().namespace, task_id)
        return tasks_pb2.RequeueDeadLetterResponse(task=task_proto(rec))

    async def AggregateResults(
        self, request: tasks_pb2.AggregateResultsRequest, context: grpc.aio.ServicerContext
    ) -> tasks_pb2.AggregateResultsResponse:
        task_type = validate_id(request.task_type, "task_type") if request.task_type else ""
        agg = await self._store.aggregate_results(current_principal().namespace, task_type)
        response = tasks_pb2.AggregateResultsResponse(
            total_completed=agg.total_completed, by_agent=agg.by_agent, by_type=agg.by_type
        )
        for item in agg.recent:
            summary = response.recent_results.add(
                task_id=item.task_id,
                task_type=item.task_type,
                agent_id=item.agent_id,
                complete_time=_ts(item.complete_ms),
                result_omitted=item.result_json is None,
            )
            if item.result_json is not None:
                summary.result.CopyFrom(_struct(item.result_json))
        return response


_STORES: dict[int, store.TaskStore] = {}


def store_for(ctx: ServiceContext) -> store.TaskStore:
    """The task store of the server owning `ctx` (metrics read its observed queues)."""
    return _STORES[id(ctx)]


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    servicer = TaskServicer(ctx)
    _STORES[id(ctx)] = servicer._store
    weakref.finalize(ctx, _STORES.pop, id(ctx), None)
    tasks_pb2_grpc.add_TaskServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name
