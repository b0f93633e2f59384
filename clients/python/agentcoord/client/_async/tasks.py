"""TaskService calls (`client.tasks`) and the worker helper `AsyncWorker`.

Tiers: reads (get/list/aggregate) need OBSERVER; registering, adding, claiming, renewing,
completing, failing and cancelling your own tasks CONTRIBUTOR; cancelling others' tasks and
requeue_dead_letter VALIDATOR. Durations are seconds (floats). Every failure raises
AgentcoordError; its `reason` tells the cases apart (LEASE_LOST, TASK_CANCELLED, TASK_NOT_FOUND,
TASK_EXISTS, DEPENDENCY_NOT_FOUND, NOT_TASK_ADDER, TASK_COMPLETED, NOT_DEAD_LETTERED,
NO_TASK_TYPES, AGENT_NOT_REGISTERED…).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from agentcoord.v1 import tasks_pb2, tasks_pb2_grpc

from .._transport import AsyncTransport, async_sleep
from ..errors import AgentcoordError
from ..task_worker import (
    CANCEL_SIGNAL_TYPE,
    AsyncCancelWatch,
    AsyncHandlerRun,
    AsyncLeaseKeeper,
    AsyncTaskHandler,
    PermanentTaskError,
    TaskCancelled,
)
from ._base import ServiceClient
from .signals import SignalsClient

IDLE_PAUSE = 0.5
"""Seconds a worker with wait=0 pauses after finding nothing to claim."""

_STATUSES = {
    None: tasks_pb2.TASK_STATUS_UNSPECIFIED,
    "pending": tasks_pb2.TASK_STATUS_PENDING,
    "claimed": tasks_pb2.TASK_STATUS_CLAIMED,
    "completed": tasks_pb2.TASK_STATUS_COMPLETED,
    "dead_lettered": tasks_pb2.TASK_STATUS_DEAD_LETTERED,
    "cancelled": tasks_pb2.TASK_STATUS_CANCELLED,
}
_ON_DEPENDENCY_FAILURE = {
    "cancel": tasks_pb2.DEPENDENCY_FAILURE_POLICY_CANCEL,
    "run_anyway": tasks_pb2.DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY,
}


def _struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if value:
        s.update(dict(value))
    return s


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _claim_next(task_types: Iterable[str], lease: float) -> tasks_pb2.ClaimNextOptions:
    return tasks_pb2.ClaimNextOptions(task_types=list(task_types), lease_duration=_duration(lease))


def _next_task(
    response: tasks_pb2.CompleteTaskResponse | tasks_pb2.FailTaskResponse,
) -> tasks_pb2.Task | None:
    return response.next_task if response.HasField("next_task") else None


class TasksClient(ServiceClient):
    def __init__(self, transport: AsyncTransport) -> None:
        super().__init__(transport)
        self._stub = tasks_pb2_grpc.TaskServiceStub(transport.channel)

    # -- agents ------------------------------------------------------------------------------

    async def register_agent(self, capabilities: Iterable[str] = ()) -> tasks_pb2.Agent:
        """Registers this client's agent with the task types it can do (ids). It lapses after
        the server's COORDINATION TTL (5 min by default) without a heartbeat or claim.

        Raises AgentcoordError: INVALID_ARGUMENT for a bad capability (more than 64, not ids).
        """
        request = tasks_pb2.RegisterAgentRequest(capabilities=list(capabilities))
        response = await self._unary(self._stub.RegisterAgent, request)
        return response.agent  # type: ignore[no-any-return]

    async def heartbeat(self) -> tasks_pb2.Agent:
        """Keeps this agent's registration alive for another COORDINATION TTL.

        Raises AgentcoordError: NOT_FOUND (AGENT_NOT_REGISTERED) if it lapsed or never was.
        """
        response = await self._unary(self._stub.Heartbeat, tasks_pb2.HeartbeatRequest())
        return response.agent  # type: ignore[no-any-return]

    async def deregister_agent(self) -> bool:
        """Removes this agent's registration; False if it had none."""
        request = tasks_pb2.DeregisterAgentRequest()
        response = await self._unary(self._stub.DeregisterAgent, request)
        return response.deregistered  # type: ignore[no-any-return]

    async def list_agents(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> tasks_pb2.ListAgentsResponse:
        """One page of active agents ordered by id (page_size default 100, at most 1000);
        pass `next_page_token` back for the next page."""
        request = tasks_pb2.ListAgentsRequest(page_size=page_size, page_token=page_token)
        return await self._unary(self._stub.ListAgents, request)  # type: ignore[no-any-return]

    # -- tasks -------------------------------------------------------------------------------

    async def add_task(
        self,
        *,
        task_type: str,
        description: str = "",
        priority: int = 5,
        payload: Mapping[str, Any] | None = None,
        task_id: str = "",
        max_attempts: int = 3,
        request_id: str = "",
        not_before: datetime.datetime | None = None,
        depends_on: Iterable[str] = (),
        on_dependency_failure: str = "cancel",
        backoff_initial: float | None = None,
        backoff_multiplier: float = 2.0,
        backoff_max: float | None = None,
    ) -> tasks_pb2.Task:
        """Adds a pending task. `priority` 1 (lowest) to 10 (highest); `payload` any JSON-like
        dict; `task_id` empty lets the server make one; `max_attempts` 1-100 claims before it
        is dead-lettered; `request_id` makes retries safe: the same request_id (from this
        agent, within the TASK TTL) returns the task the first call added.

        Tasks in time: `not_before` (an aware datetime, at most the TASK TTL ahead) keeps it
        from claims until then (server clock); `depends_on` (ids of existing tasks, at most 32)
        until they complete, and `on_dependency_failure` ("cancel" or "run_anyway") says what a
        dependency that is dead-lettered or cancelled does to it. `backoff_initial` (seconds,
        0.001-3600) gives it a backoff policy: a failure that names no delay (and an expired
        lease) waits min(`backoff_max` (default 3600), initial * multiplier^(attempt-1))
        seconds before it is claimable again (`backoff_multiplier` 1-10).

        Raises AgentcoordError: INVALID_ARGUMENT (NON_FINITE_NUMBER for NaN/±Infinity in the
        payload), ALREADY_EXISTS (TASK_EXISTS), NOT_FOUND (DEPENDENCY_NOT_FOUND),
        RESOURCE_EXHAUSTED (VALUE_TOO_LARGE: the serialized payload is over the server's
        --max-task-bytes, default 1 MiB).
        """
        request = tasks_pb2.AddTaskRequest(
            task_id=task_id,
            task_type=task_type,
            description=description,
            priority=priority,
            payload=_struct(payload),
            max_attempts=max_attempts,
            request_id=request_id,
            depends_on=list(depends_on),
            dependency_failure_policy=_ON_DEPENDENCY_FAILURE[on_dependency_failure],
        )
        if not_before is not None:
            request.not_before.FromDatetime(not_before)
        if backoff_initial is not None:
            request.backoff_policy.initial.CopyFrom(_duration(backoff_initial))
            request.backoff_policy.multiplier = backoff_multiplier
            if backoff_max is not None:
                request.backoff_policy.maximum.CopyFrom(_duration(backoff_max))
        response = await self._unary(self._stub.AddTask, request)
        return response.task  # type: ignore[no-any-return]

    async def claim_task(
        self, *, task_types: Iterable[str] = (), lease: float = 300.0, wait: float = 0.0
    ) -> tasks_pb2.Task | None:
        """Claims the highest-priority pending task of `task_types` (default: this agent's
        registered capabilities), FIFO among equal priorities, under a `lease` (seconds,
        1-3600), waiting up to `wait` seconds (0-60) for one to appear. Returns the task, with
        `task.lease.fencing_token` to renew/complete/fail it, or None when none came.

        Raises AgentcoordError: INVALID_ARGUMENT (NO_TASK_TYPES when there are no types).
        """
        request = tasks_pb2.ClaimTaskRequest(
            task_types=list(task_types), lease_duration=_duration(lease)
        )
        timeout = self._transport.timeout
        if wait > 0:
            request.wait.CopyFrom(_duration(wait))
            if timeout is not None:
                timeout = max(timeout, wait + 10.0)
        response = await self._unary(self._stub.ClaimTask, request, timeout=timeout)
        return response.task if response.HasField("task") else None

    async def renew_task_lease(
        self, *, task_id: str, fencing_token: int, lease: float = 300.0
    ) -> tasks_pb2.TaskLease:
        """Extends this agent's live lease to `lease` seconds from now.

        Raises AgentcoordError: FAILED_PRECONDITION (TASK_CANCELLED: the task was cancelled,
        stop working on it; LEASE_LOST), NOT_FOUND (TASK_NOT_FOUND).
        """
        request = tasks_pb2.RenewTaskLeaseRequest(
            task_id=task_id, fencing_token=fencing_token, lease_duration=_duration(lease)
        )
        response = await self._unary(self._stub.RenewTaskLease, request)
        return response.lease  # type: ignore[no-any-return]

    async def complete_task(
        self, *, task_id: str, fencing_token: int, result: Mapping[str, Any] | None = None
    ) -> tasks_pb2.Task:
        """Completes a task held under this agent's live lease with `result` (JSON-like dict).
        Repeating a successful completion returns the completed task again.

        Raises AgentcoordError: FAILED_PRECONDITION (LEASE_LOST), NOT_FOUND (TASK_NOT_FOUND),
        INVALID_ARGUMENT (NON_FINITE_NUMBER), RESOURCE_EXHAUSTED (VALUE_TOO_LARGE: the result is
        over --max-task-bytes; the task stays claimed).
        """
        request = tasks_pb2.CompleteTaskRequest(
            task_id=task_id, fencing_token=fencing_token, result=_struct(result)
        )
        response = await self._unary(self._stub.CompleteTask, request)
        return response.task  # type: ignore[no-any-return]

    async def complete_and_claim_next(
        self,
        *,
        task_id: str,
        fencing_token: int,
        result: Mapping[str, Any] | None = None,
        task_types: Iterable[str] = (),
        lease: float = 300.0,
    ) -> tuple[tasks_pb2.Task, tasks_pb2.Task | None]:
        """`complete_task`, and in the same call (one round trip, one atomic step on the
        server) claims this agent's next task of `task_types` (default: its registered
        capabilities) under a `lease` (seconds, 1-3600), without waiting. Returns (completed
        task, next task or None when none was pending). A refused completion claims nothing.

        Raises AgentcoordError: FAILED_PRECONDITION (LEASE_LOST), NOT_FOUND (TASK_NOT_FOUND),
        INVALID_ARGUMENT (NO_TASK_TYPES: no types and no capabilities; nothing completed).
        """
        request = tasks_pb2.CompleteTaskRequest(
            task_id=task_id,
            fencing_token=fencing_token,
            result=_struct(result),
            claim_next=_claim_next(task_types, lease),
        )
        response = await self._unary(self._stub.CompleteTask, request)
        return response.task, _next_task(response)

    async def fail_and_claim_next(
        self,
        *,
        task_id: str,
        fencing_token: int,
        error: str = "",
        retryable: bool = True,
        backoff: float | None = None,
        task_types: Iterable[str] = (),
        lease: float = 300.0,
    ) -> tuple[tasks_pb2.Task, tasks_pb2.Task | None]:
        """`fail_task`, and in the same call claims this agent's next task as
        `complete_and_claim_next` does (with no delay, possibly the failed task again).
        Returns (failed task, next task or None).

        Raises AgentcoordError: FAILED_PRECONDITION (LEASE_LOST), NOT_FOUND (TASK_NOT_FOUND),
        INVALID_ARGUMENT (NO_TASK_TYPES).
        """
        request = tasks_pb2.FailTaskRequest(
            task_id=task_id,
            fencing_token=fencing_token,
            error=error,
            retryable=retryable,
            claim_next=_claim_next(task_types, lease),
        )
        if backoff is not None:
            request.backoff.CopyFrom(_duration(backoff))
        response = await self._unary(self._stub.FailTask, request)
        return response.task, _next_task(response)

    async def fail_task(
        self,
        *,
        task_id: str,
        fencing_token: int,
        error: str = "",
        retryable: bool = True,
        backoff: float | None = None,
    ) -> tasks_pb2.Task:
        """Reports a failed attempt: the task is pending again after `backoff` seconds (0-3600;
        the issue's retry_after; None: the task's backoff policy decides, at once without one)
        or, when not `retryable` or out of attempts, dead-lettered.

        Raises AgentcoordError: FAILED_PRECONDITION (LEASE_LOST), NOT_FOUND (TASK_NOT_FOUND).
        """
        request = tasks_pb2.FailTaskRequest(
            task_id=task_id, fencing_token=fencing_token, error=error, retryable=retryable
        )
        if backoff is not None:
            request.backoff.CopyFrom(_duration(backoff))
        response = await self._unary(self._stub.FailTask, request)
        return response.task  # type: ignore[no-any-return]

    async def get_task(self, task_id: str) -> tasks_pb2.Task:
        """Raises AgentcoordError: NOT_FOUND (TASK_NOT_FOUND)."""
        request = tasks_pb2.GetTaskRequest(task_id=task_id)
        response = await self._unary(self._stub.GetTask, request)
        return response.task  # type: ignore[no-any-return]

    async def list_tasks(
        self,
        *,
        status: str | None = None,
        task_type: str = "",
        assignee: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tasks_pb2.ListTasksResponse:
        """One page of tasks in the order they were added. `status` is one of "pending",
        "claimed", "completed", "dead_lettered", "cancelled" (None: any). A page may be short
        while `next_page_token` is set; stop when it is empty."""
        request = tasks_pb2.ListTasksRequest(
            status=_STATUSES[status],
            task_type=task_type,
            assignee=assignee,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._unary(self._stub.ListTasks, request)  # type: ignore[no-any-return]

    async def cancel_task(self, task_id: str) -> tasks_pb2.Task:
        """Cancels a task that is not completed (revoking any lease). Its adder or a VALIDATOR.
        The holder of a claimed task is told at once (a "task.cancelled" signal) and its
        renewals answer TASK_CANCELLED; tasks depending on it follow their policy.

        Raises AgentcoordError: PERMISSION_DENIED (NOT_TASK_ADDER), FAILED_PRECONDITION
        (TASK_COMPLETED), NOT_FOUND.
        """
        request = tasks_pb2.CancelTaskRequest(task_id=task_id)
        response = await self._unary(self._stub.CancelTask, request)
        return response.task  # type: ignore[no-any-return]

    async def list_dead_letters(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> tasks_pb2.ListDeadLettersResponse:
        """One page of dead-lettered tasks, oldest first."""
        request = tasks_pb2.ListDeadLettersRequest(page_size=page_size, page_token=page_token)
        return await self._unary(self._stub.ListDeadLetters, request)  # type: ignore[no-any-return]

    async def requeue_dead_letter(self, task_id: str) -> tasks_pb2.Task:
        """Puts a dead-lettered task back in its queue with attempts reset. VALIDATOR.

        Raises AgentcoordError: FAILED_PRECONDITION (NOT_DEAD_LETTERED), NOT_FOUND.
        """
        request = tasks_pb2.RequeueDeadLetterRequest(task_id=task_id)
        response = await self._unary(self._stub.RequeueDeadLetter, request)
        return response.task  # type: ignore[no-any-return]

    async def aggregate_results(self, task_type: str = "") -> tasks_pb2.AggregateResultsResponse:
        """Completed counts (total, by agent, by type) and the 20 most recent results, for all
        task types or one."""
        request = tasks_pb2.AggregateResultsRequest(task_type=task_type)
        return await self._unary(self._stub.AggregateResults, request)  # type: ignore[no-any-return]

    def worker(
        self,
        handler: AsyncTaskHandler,
        *,
        task_types: Iterable[str] = (),
        lease: float = 60.0,
        wait: float = 10.0,
        retry_backoff: float | None = None,
    ) -> AsyncWorker:
        """A worker that runs `handler` on tasks claimed from `task_types`; see AsyncWorker."""
        signals = SignalsClient(self._transport)
        return AsyncWorker(
            self,
            handler,
            task_types=task_types,
            lease=lease,
            wait=wait,
            retry_backoff=retry_backoff,
            # From the oldest retained signal: one sent before the stream was set up is not
            # missed, and an old one cannot match (fencing tokens never repeat).
            cancel_watch=AsyncCancelWatch(
                lambda: signals.subscribe([CANCEL_SIGNAL_TYPE], earliest=True)
            ),
        )


class AsyncWorker:
    """Claims tasks, runs `handler(task)` while renewing the lease in the background (every
    lease/3 seconds), then completes the task with the handler's return value (a JSON-like dict
    or None) or, if it raised, fails it: retryable after `retry_backoff` seconds (None: the
    task's backoff policy decides), or dead-lettered at once for PermanentTaskError.

    Cancellation: when the task is cancelled (CancelTask) while the handler runs, the handler
    is stopped — its asyncio task is cancelled, so it sees CancelledError — and the task is
    neither completed nor failed (counted in `cancelled`). `run` learns it at once from the
    "task.cancelled" signal the server sends the holder (one Subscribe per running worker,
    `cancel_watch`); every worker also learns it from its next renewal (TASK_CANCELLED), the
    backstop for a signal missed while that subscription was reconnecting. (The sync Worker
    cannot interrupt a handler running in its thread: it learns it from the renewal and skips
    the completion once the handler returns.)

    In `run`, the completion (or failure) also claims the next task in the same call
    (`complete_and_claim_next`), so a busy worker costs one RPC per task; only when nothing is
    pending does it fall back to a ClaimTask that waits up to `wait` seconds.

    Counters: `completed`, `failed`, `lost` (attempts whose lease was lost: the server refused
    the completion, the task went back to the queue or to someone else), `cancelled`.
    """

    def __init__(
        self,
        tasks: TasksClient,
        handler: AsyncTaskHandler,
        *,
        task_types: Iterable[str] = (),
        lease: float = 60.0,
        wait: float = 10.0,
        retry_backoff: float | None = None,
        cancel_watch: AsyncCancelWatch | None = None,
    ) -> None:
        self._tasks = tasks
        self._handler = handler
        self._task_types = list(task_types)
        self._lease = lease
        self._wait = wait
        self._retry_backoff = retry_backoff
        self._cancel_watch = cancel_watch
        self._stopping = False
        self.completed = 0
        self.failed = 0
        self.lost = 0
        self.cancelled = 0

    def stop(self) -> None:
        """Makes `run` return after the task in hand (or the current claim's wait); a task
        already claimed with the last completion is processed first."""
        self._stopping = True

    async def run_once(self) -> tasks_pb2.Task | None:
        """Claims one task (waiting up to `wait` seconds) and processes it. Returns the task as
        the server last reported it, or None when none came."""
        task = await self._claim()
        if task is None:
            return None
        done, _ = await self._process(task, claim_next=False)
        return done

    async def _claim(self) -> tasks_pb2.Task | None:
        return await self._tasks.claim_task(
            task_types=self._task_types, lease=self._lease, wait=self._wait
        )

    async def _process(
        self, task: tasks_pb2.Task, *, claim_next: bool
    ) -> tuple[tasks_pb2.Task, tasks_pb2.Task | None]:
        """Runs the handler on a claimed task and completes or fails it; with `claim_next`,
        that call also claims the next task. Returns (task as last reported, next task)."""
        task_id, token = task.task_id, task.lease.fencing_token

        async def renew() -> None:
            await self._tasks.renew_task_lease(
                task_id=task_id, fencing_token=token, lease=self._lease
            )

        error: Exception | None = None
        result: Any = None
        run = AsyncHandlerRun(self._handler)
        if self._cancel_watch is not None:
            self._cancel_watch.watch(task_id, token, run)
        try:
            async with AsyncLeaseKeeper(renew, self._lease / 3, run.cancel):
                try:
                    result = await run.result(task)
                except TaskCancelled:
                    self.cancelled += 1
                    return task, None
                except Exception as exc:
                    error = exc
        finally:
            if self._cancel_watch is not None:
                self._cancel_watch.unwatch(task_id, token)
        next_task: tasks_pb2.Task | None = None
        try:
            if error is None:
                if claim_next:
                    done, next_task = await self._tasks.complete_and_claim_next(
                        task_id=task_id,
                        fencing_token=token,
                        result=result,
                        task_types=self._task_types,
                        lease=self._lease,
                    )
                else:
                    done = await self._tasks.complete_task(
                        task_id=task_id, fencing_token=token, result=result
                    )
                self.completed += 1
            else:
                message = f"{type(error).__name__}: {error}"[:4096]
                retryable = not isinstance(error, PermanentTaskError)
                if claim_next:
                    done, next_task = await self._tasks.fail_and_claim_next(
                        task_id=task_id,
                        fencing_token=token,
                        error=message,
                        retryable=retryable,
                        backoff=self._retry_backoff,
                        task_types=self._task_types,
                        lease=self._lease,
                    )
                else:
                    done = await self._tasks.fail_task(
                        task_id=task_id,
                        fencing_token=token,
                        error=message,
                        retryable=retryable,
                        backoff=self._retry_backoff,
                    )
                self.failed += 1
        except AgentcoordError as exc:
            if exc.reason != "LEASE_LOST":
                raise
            self.lost += 1
            return task, None
        return done, next_task

    async def run(self, *, max_tasks: int | None = None, stop_when_idle: bool = False) -> int:
        """Processes tasks until `stop()`, `max_tasks` were processed, or (with
        `stop_when_idle`) a claim's wait ends with no task. Returns how many were processed."""
        if self._cancel_watch is not None:
            self._cancel_watch.start()
        try:
            return await self._run(max_tasks, stop_when_idle)
        finally:
            if self._cancel_watch is not None:
                await self._cancel_watch.close()

    async def _run(self, max_tasks: int | None, stop_when_idle: bool) -> int:
        processed = 0
        held: tasks_pb2.Task | None = None  # claimed by the last completion
        while held is not None or (
            not self._stopping and (max_tasks is None or processed < max_tasks)
        ):
            task, held = held, None
            if task is None:
                task = await self._claim()
            if task is None:
                if stop_when_idle:
                    break
                if self._wait <= 0:
                    await async_sleep(IDLE_PAUSE)  # a worker told not to wait must not spin
                continue
            more = not self._stopping and (max_tasks is None or processed + 1 < max_tasks)
            _, held = await self._process(task, claim_next=more)
            processed += 1
        return processed
