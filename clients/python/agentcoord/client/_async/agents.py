"""The domain layer: agents, a coordinator and team sessions, for people who think in agents
rather than RPCs.

Sugar over the typed client (`AsyncClient`), not a second protocol: every method is one call of
one service, named with the domain's verbs (stash, retrieve, stage, promote, claim, signal,
subscribe). Reach the full client as `agent.client` for anything not here.

    async with AsyncAgent("127.0.0.1:50051", token=...) as agent:
        await agent.stash("analysis", {"files": 10})
        session = agent.session("pr-42")
        await session.share("scope", {"files_changed": 15})
        coordinator = agent.coordinator()
        await coordinator.add_task(task_type="security_review", priority=8)
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from google.protobuf import json_format

from agentcoord.v1 import access_pb2, memory_pb2, signals_pb2, staging_pb2, tasks_pb2

from ..task_worker import AsyncTaskHandler
from .client import AsyncClient
from .tasks import AsyncWorker


def struct_to_dict(message: Any) -> dict[str, Any]:
    """A google.protobuf.Struct as a plain dict (integer-valued numbers as int)."""
    data = json_format.MessageToDict(message)
    return {k: _ints(v) for k, v in data.items()}


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


class AsyncAgent:
    """One agent: an identity (its token) and what an agent does.

    Args:
        target: server address `host:port`.
        token: the agent's bearer token (default: AGENTCOORD_TOKEN).
        client: an existing client (AsyncClient; Client for the sync Agent) to use instead of
            opening one; `close()` then leaves it open.
        **options: further AsyncClient options (root_certificates, timeout…).

    Errors are the client's: every failed call raises AgentcoordError.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        client: AsyncClient | None = None,
        **options: Any,
    ) -> None:
        self._owns_client = client is None
        self.client = client if client is not None else AsyncClient(target, token=token, **options)
        self._principal: access_pb2.Principal | None = None

    async def principal(self) -> access_pb2.Principal:
        """Who the server says this agent is (asked once, then remembered)."""
        if self._principal is None:
            self._principal = await self.client.admin.who_am_i()
        return self._principal

    async def agent_id(self) -> str:
        """This agent's id, as its token says (see `principal`)."""
        return (await self.principal()).agent_id

    # -- working memory ---------------------------------------------------------------------
    async def stash(
        self, key: str, value: Any, *, ttl: float | None = None
    ) -> memory_pb2.MemoryEntry:
        """Stashes a JSON-like value under `key` for `ttl` seconds (default: WORKING_RESULTS, 1 h);
        returns the entry's metadata. Raises AgentcoordError: PERMISSION_DENIED below
        CONTRIBUTOR, INVALID_ARGUMENT (INVALID_ID) for a bad key, RESOURCE_EXHAUSTED
        (VALUE_TOO_LARGE)."""
        return await self.client.memory.stash(key, value, ttl=ttl)

    async def retrieve(self, key: str, *, owner: str | None = None) -> Any:
        """The value this agent (or `owner`) stashed under `key`; NOT_FOUND (ENTRY_NOT_FOUND)
        when it is missing or expired."""
        return await self.client.memory.retrieve(key, owner=owner)

    # -- signals ------------------------------------------------------------------------------
    async def send_signal(
        self,
        signal_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        target_agent: str = "",
        session_id: str = "",
        request_id: str = "",
    ) -> signals_pb2.Signal:
        """Broadcasts a signal to the namespace, or sends it to `target_agent` or a session's
        participants; returns it with its id (the resume cursor). CONTRIBUTOR; NOT_FOUND
        (SESSION_NOT_FOUND) for a missing session. A retry with the same `request_id`
        is stored once (see SignalsClient.send_signal)."""
        return await self.client.signals.send_signal(
            signal_type,
            data,
            target_agent=target_agent,
            session_id=session_id,
            request_id=request_id,
        )

    async def receive_signals(
        self, *signal_types: str, after_id: str = "", limit: int = 0
    ) -> list[signals_pb2.Signal]:
        """Signals visible to this agent after `after_id` ('' = oldest retained), oldest first,
        only of `signal_types` if given, at most `limit` (0: 100); non-destructive. OUT_OF_RANGE
        (CURSOR_TRIMMED) for a cursor older than the retention."""
        response = await self.client.signals.receive_signals(
            signal_types, after_id=after_id, limit=limit
        )
        return list(response.signals)

    def subscribe(
        self, *signal_types: str, after_id: str = "", earliest: bool = False
    ) -> AsyncIterator[signals_pb2.Signal]:
        """Live signals visible to this agent, in order, resuming by itself after a dropped
        stream; see SignalsClient.subscribe."""
        return self.client.signals.subscribe(signal_types, after_id=after_id, earliest=earliest)

    # -- patterns -----------------------------------------------------------------------------
    async def stage_pattern(
        self,
        pattern_id: str,
        *,
        pattern_type: str,
        name: str,
        confidence: float,
        description: str = "",
        code: str = "",
        context: Mapping[str, Any] | None = None,
        interests: Iterable[str] = (),
    ) -> staging_pb2.StagedPattern:
        """Stages a discovered pattern (confidence 0.0-1.0) for validators to review; staging
        your own id again replaces it (revision + 1). ALREADY_EXISTS
        (PATTERN_STAGED_BY_OTHER_AGENT) for another agent's id."""
        return await self.client.staging.stage_pattern(
            pattern_id=pattern_id,
            pattern_type=pattern_type,
            name=name,
            confidence=confidence,
            description=description,
            code=code,
            context=context,
            interests=interests,
        )

    async def staged_patterns(
        self, *, pattern_type: str = "", minimum_confidence: float | None = None
    ) -> list[staging_pb2.StagedPattern]:
        """Every staged pattern (all pages), highest confidence first."""
        patterns: list[staging_pb2.StagedPattern] = []
        token = ""
        while True:
            page = await self.client.staging.list_staged_patterns(
                pattern_type=pattern_type, minimum_confidence=minimum_confidence, page_token=token
            )
            patterns.extend(page.patterns)
            token = page.next_page_token
            if not token:
                return patterns

    async def promote_pattern(
        self, pattern_id: str, *, minimum_confidence: float | None = None, note: str = ""
    ) -> staging_pb2.Pattern:
        """Promotes a staged pattern into the library (VALIDATOR). FAILED_PRECONDITION
        (BELOW_CONFIDENCE_THRESHOLD) below `minimum_confidence`, NOT_FOUND
        (STAGED_PATTERN_NOT_FOUND) once it has left staging."""
        return await self.client.staging.promote_pattern(
            pattern_id, minimum_confidence=minimum_confidence, note=note
        )

    async def reject_pattern(self, pattern_id: str, *, reason: str) -> staging_pb2.PatternRejection:
        """Rejects a staged pattern with a reason (VALIDATOR); NOT_FOUND
        (STAGED_PATTERN_NOT_FOUND) once it has left staging."""
        return await self.client.staging.reject_pattern(pattern_id, reason=reason)

    # -- collaboration state ------------------------------------------------------------------
    async def save_collaboration_state(
        self,
        session_id: str,
        state: memory_pb2.CollaborationState | Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> int:
        """Persists this agent's collaboration state for a session (no TTL); returns its
        version. With `expected_version` (0: never saved) a stale writer gets ABORTED
        (VERSION_MISMATCH)."""
        return await self.client.memory.save_collaboration_state(
            session_id, state, expected_version=expected_version
        )

    async def load_collaboration_state(self, session_id: str) -> memory_pb2.CollaborationState:
        """This agent's saved collaboration state for a session; NOT_FOUND if never saved."""
        record = await self.client.memory.load_collaboration_state(session_id)
        return record.state  # type: ignore[no-any-return]

    # -- the other roles ----------------------------------------------------------------------
    def session(self, session_id: str) -> AsyncTeamSession:
        """The team session `session_id`, seen by this agent (create or join it first)."""
        return AsyncTeamSession(self.client, session_id)

    def coordinator(self) -> AsyncCoordinator:
        """Task coordination as this agent."""
        return AsyncCoordinator(self.client)

    async def close(self) -> None:
        if self._owns_client:
            await self.client.close()

    async def __aenter__(self) -> AsyncAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncTeamSession:
    """A team session: shared context and signals among its participants."""

    def __init__(self, client: AsyncClient, session_id: str) -> None:
        self.client = client
        self.session_id = session_id

    async def create(
        self, *, purpose: str = "", metadata: Mapping[str, Any] | None = None
    ) -> memory_pb2.Session:
        """Creates the session with this agent as first participant; ALREADY_EXISTS if it exists."""
        return await self.client.memory.create_session(
            self.session_id, purpose=purpose, metadata=metadata
        )

    async def join(self) -> memory_pb2.Session:
        """Joins (idempotent) and restarts the session's TTL; NOT_FOUND (SESSION_NOT_FOUND)."""
        return await self.client.memory.join_session(self.session_id)

    async def leave(self) -> memory_pb2.Session:
        """Leaves the session; FAILED_PRECONDITION (NOT_A_PARTICIPANT) if not in it."""
        return await self.client.memory.leave_session(self.session_id)

    async def participants(self) -> list[str]:
        """The participants' agent ids (does not restart the TTL); NOT_FOUND if it expired."""
        session = await self.client.memory.get_session(self.session_id)
        return list(session.participants)

    async def share(self, key: str, value: Any) -> memory_pb2.SharedContextItem:
        """Shares a JSON-like value with the participants (expires with the session).
        PERMISSION_DENIED (NOT_A_PARTICIPANT) unless this agent has joined."""
        return await self.client.memory.share_context(self.session_id, key, value)

    async def get(self, key: str) -> Any:
        """A shared value; NOT_FOUND if it was never shared, PERMISSION_DENIED for outsiders."""
        return (await self.client.memory.get_shared_context(self.session_id, key=key))[key]

    async def signal(
        self, signal_type: str, data: Mapping[str, Any] | None = None
    ) -> signals_pb2.Signal:
        """Sends a signal only the session's participants see."""
        return await self.client.signals.send_signal(signal_type, data, session_id=self.session_id)


class AsyncCoordinator:
    """Tasks in the domain's words: register, add, claim, complete, aggregate."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def register_agent(self, capabilities: Iterable[str]) -> tasks_pb2.Agent:
        """Registers this agent with the task types it can do; the registration lapses after
        the COORDINATION TTL (5 min by default) without a heartbeat or claim."""
        return await self.client.tasks.register_agent(capabilities)

    async def add_task(
        self,
        *,
        task_type: str,
        description: str = "",
        priority: int = 5,
        payload: Mapping[str, Any] | None = None,
        task_id: str = "",
        max_attempts: int = 3,
        not_before: datetime.datetime | None = None,
        depends_on: Iterable[str] = (),
        on_dependency_failure: str = "cancel",
        backoff_initial: float | None = None,
        backoff_multiplier: float = 2.0,
        backoff_max: float | None = None,
    ) -> tasks_pb2.Task:
        """Adds a task (priority 1-10, highest claimed first; max_attempts 1-100; empty
        task_id: the server makes one). ALREADY_EXISTS (TASK_EXISTS) for a taken task_id.
        Scheduled (`not_before`), dependent (`depends_on`, `on_dependency_failure` "cancel" or
        "run_anyway") and backoff-policy (`backoff_*`, seconds) tasks as in
        TasksClient.add_task; NOT_FOUND (DEPENDENCY_NOT_FOUND) for an unknown dependency."""
        return await self.client.tasks.add_task(
            task_type=task_type,
            description=description,
            priority=priority,
            payload=payload,
            task_id=task_id,
            max_attempts=max_attempts,
            not_before=not_before,
            depends_on=depends_on,
            on_dependency_failure=on_dependency_failure,
            backoff_initial=backoff_initial,
            backoff_multiplier=backoff_multiplier,
            backoff_max=backoff_max,
        )

    async def claim_task(
        self, *task_types: str, lease: float = 300.0, wait: float = 0.0
    ) -> tasks_pb2.Task | None:
        """Claims the highest-priority task of `task_types` (none: this agent's registered
        capabilities) under a `lease` of 1-3600 seconds, waiting up to `wait` seconds (0-60)
        for one; None when none came."""
        return await self.client.tasks.claim_task(task_types=task_types, lease=lease, wait=wait)

    async def complete_task(
        self, task: tasks_pb2.Task, result: Mapping[str, Any] | None = None
    ) -> tasks_pb2.Task:
        """Completes a claimed task with its lease; FAILED_PRECONDITION if the lease was lost."""
        return await self.client.tasks.complete_task(
            task_id=task.task_id, fencing_token=task.lease.fencing_token, result=result
        )

    async def fail_task(
        self,
        task: tasks_pb2.Task,
        error: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> tasks_pb2.Task:
        """Gives up this attempt: the task is pending again (after `retry_after` seconds; None:
        its backoff policy decides), or dead-lettered when not `retryable` or out of attempts.
        FAILED_PRECONDITION (LEASE_LOST) if the lease was lost."""
        return await self.client.tasks.fail_task(
            task_id=task.task_id,
            fencing_token=task.lease.fencing_token,
            error=error,
            retryable=retryable,
            backoff=retry_after,
        )

    def worker(
        self, handler: AsyncTaskHandler, *task_types: str, lease: float = 60.0, wait: float = 10.0
    ) -> AsyncWorker:
        """A worker that claims (waiting up to `wait` seconds), renews the `lease` (seconds)
        while `handler(task)` runs, then completes with its result or fails the attempt."""
        return self.client.tasks.worker(handler, task_types=task_types, lease=lease, wait=wait)

    async def aggregate_results(self, task_type: str = "") -> dict[str, Any]:
        """Completion counts for all task types or one, as plain Python values:
        {"total_completed": n, "by_agent": {agent: n}, "by_type": {type: n}, "recent_results":
        [{"task_id", "task_type", "agent_id", "complete_time" (RFC 3339), "result"}, …]} with
        the 20 most recent results newest first (integral numbers in results as int)."""
        response = await self.client.tasks.aggregate_results(task_type)
        return {
            "total_completed": response.total_completed,
            "by_agent": dict(response.by_agent),
            "by_type": dict(response.by_type),
            "recent_results": [
                _ints(json_format.MessageToDict(r, preserving_proto_field_name=True))
                for r in response.recent_results
            ],
        }
