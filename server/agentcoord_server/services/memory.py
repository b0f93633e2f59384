"""MemoryService: working memory, team sessions, collaboration state
(proto/agentcoord/v1/memory.proto → store/memory.py).

Each handler validates its request, makes one store call and builds the response. The caller
(`current_principal()`) is the owner of every write and its namespace is the only one reached.
Validation happens completely before the store call, so a refused request writes nothing.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from agentcoord.v1 import memory_pb2, memory_pb2_grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from ..errors import NotFound, PermissionDenied, ResourceExhausted, invalid_field
from ..identity import ID_RE, current_principal
from ..store.keys import validate_id
from ..store.memory import (
    EntryEventRecord,
    MemoryStore,
    StashItem,
    StoredCollaborationState,
    StoredEntry,
    StoredSession,
    now_ms,
)
from ..store.memory_watch import MemoryExpirySweeper, WatchFilter, WatchHub, WatchProgress
from .values import checked_json, fitting, response_budget, too_large

if TYPE_CHECKING:
    from ..config import Settings
    from . import ServiceContext

PB2 = memory_pb2

MAX_BATCH = 100  # items per BatchStash / keys per BatchRetrieve (issue #4)
MAX_EXPLICIT_TTL_MS = 30 * 24 * 3600 * 1000  # an explicit ttl_duration may not exceed 30 days
MAX_PURPOSE_CHARS = 1024
MAX_TRAJECTORY = 100  # trust_trajectory keeps the last 100 points (issue #4)
MAX_EMPATHY_LEVEL = 5
MAX_VALUE_SETTING = "--max-value-bytes"
# google.protobuf.Timestamp's valid range, 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS, MAX_TIMESTAMP_SECONDS = -62_135_596_800, 253_402_300_799
ENTRY_PAGE = (100, 1000)  # (default, maximum) page size of ListEntries
SESSION_PAGE = (50, 100)  # (default, maximum) page size of ListSessions, ListCollaborationStates

# TtlStrategy → the TtlPolicy attribute holding its seconds.
TTL_FIELDS: dict[int, str] = {
    memory_pb2.TTL_STRATEGY_WORKING_RESULTS: "working_results",
    memory_pb2.TTL_STRATEGY_STAGED_PATTERNS: "staged_patterns",
    memory_pb2.TTL_STRATEGY_COORDINATION: "coordination",
    memory_pb2.TTL_STRATEGY_CONFLICT_CONTEXT: "conflict_context",
    memory_pb2.TTL_STRATEGY_SESSION: "session",
    memory_pb2.TTL_STRATEGY_TASK: "task",
}


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _ttl_ms(
    message: memory_pb2.StashRequest | memory_pb2.StashItem | memory_pb2.TouchEntryRequest,
    settings: Settings,
    path: str,
) -> int:
    """The TTL a stash asks for, in ms: its strategy's (default WORKING_RESULTS) or its explicit
    duration (1 ms .. 30 days). Raises InvalidArgument naming `path`."""
    which = message.WhichOneof("ttl")
    if which == "ttl_duration":
        duration = message.ttl_duration
        nanos = duration.seconds * 1_000_000_000 + duration.nanos
        if duration.seconds < 0 or duration.nanos < 0 or duration.nanos >= 1_000_000_000:
            raise invalid_field(f"{path}ttl_duration", "must be a valid positive duration")
        ms = nanos // 1_000_000
        if not 1 <= ms <= MAX_EXPLICIT_TTL_MS:
            raise invalid_field(f"{path}ttl_duration", "must be between 1 millisecond and 30 days")
        return ms
    strategy = message.ttl_strategy if which == "ttl_strategy" else 0
    if strategy == memory_pb2.TTL_STRATEGY_UNSPECIFIED:
        strategy = memory_pb2.TTL_STRATEGY_WORKING_RESULTS
    if strategy not in TTL_FIELDS:
        raise invalid_field(f"{path}ttl_strategy", f"unknown TTL strategy {strategy}")
    return int(getattr(settings.ttl, TTL_FIELDS[strategy])) * 1000


def _value_bytes(value: struct_pb2.Value, has: bool, limit: int, path: str, key: str) -> bytes:
    """The serialized value, checked: present, a JSON kind set, at most `limit` bytes
    (ResourceExhausted VALUE_TOO_LARGE), numbers finite (InvalidArgument NON_FINITE_NUMBER)."""
    if not has or value.WhichOneof("kind") is None:
        raise invalid_field(path, "is required (any JSON value, including null)")
    try:
        return checked_json(value, path, limit, MAX_VALUE_SETTING)
    except ResourceExhausted as exc:
        exc.metadata["key"] = key
        raise


def _owner(owner: str, caller: str) -> str:
    return validate_id(owner, "owner") if owner else caller


def _page_size(requested: int, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(requested or default, maximum)


def _page_token(token: str, prefix: str = "") -> str:
    """Tokens are the last id of the previous page; anything else is refused."""
    if token and (not ID_RE.fullmatch(token) or not token.startswith(prefix)):
        raise invalid_field(
            "page_token", "is not a token this listing returned", reason="INVALID_PAGE_TOKEN"
        )
    return token


def _entry(stored: StoredEntry) -> memory_pb2.MemoryEntry:
    entry = memory_pb2.MemoryEntry(
        key=stored.key,
        owner=stored.owner,
        stash_time=_timestamp(stored.stash_ms),
        expire_time=_timestamp(stored.expire_ms),
        size_bytes=stored.size,
        revision=stored.revision,
    )
    if stored.value is not None:
        entry.value.ParseFromString(stored.value)
    return entry


_EVENT_TYPES = {
    "P": memory_pb2.ENTRY_EVENT_TYPE_PUT,
    "D": memory_pb2.ENTRY_EVENT_TYPE_DELETE,
    "E": memory_pb2.ENTRY_EVENT_TYPE_EXPIRE,
}


def _event(record: EntryEventRecord, with_value: bool) -> memory_pb2.EntryEvent:
    """The wire form of a logged event (PUTs carry the entry's metadata, or the context
    item's value, and values only when asked); built once per record and form, since a live
    event is shared by every watcher of its namespace in this process."""
    event = record.cache.get(with_value)
    if event is None:
        event = record.cache[with_value] = _build_event(record, with_value)
    return event  # type: ignore[no-any-return]


def _build_event(record: EntryEventRecord, with_value: bool) -> memory_pb2.EntryEvent:
    event = memory_pb2.EntryEvent(
        type=_EVENT_TYPES[record.kind],
        revision=record.revision,
        owner=record.owner,
        key=record.key,
        session_id=record.session_id,
        event_time=_timestamp(record.time_ms),
    )
    if record.kind != "P" or record.value is None:
        return event
    if record.session_id:
        if with_value:
            item = memory_pb2.SharedContextItem.FromString(record.value)
            event.value.CopyFrom(item.value)
        return event
    event.entry.CopyFrom(
        _entry(
            StoredEntry(
                record.key,
                record.owner,
                record.time_ms,
                record.expire_ms,
                len(record.value),
                record.value if with_value else None,
                revision=record.revision,
            )
        )
    )
    return event


def _session(stored: StoredSession) -> memory_pb2.Session:
    session = memory_pb2.Session(
        session_id=stored.session_id,
        purpose=stored.purpose,
        created_by=stored.created_by,
        participants=stored.participants,
        create_time=_timestamp(stored.create_ms),
        expire_time=_timestamp(stored.expire_ms),
    )
    session.metadata.ParseFromString(stored.metadata)
    return session


def _record(stored: StoredCollaborationState) -> memory_pb2.CollaborationStateRecord:
    record = memory_pb2.CollaborationStateRecord(
        session_id=stored.session_id,
        owner=stored.owner,
        version=stored.version,
        update_time=_timestamp(stored.update_ms),
    )
    record.state.ParseFromString(stored.state)
    return record


def _collaboration_state(state: memory_pb2.CollaborationState, limit: int) -> bytes:
    """Validates a CollaborationState (ranges in memory.proto) and serializes it with its
    trust_trajectory cut to the last MAX_TRAJECTORY points."""

    def unit(value: float) -> bool:
        return not math.isnan(value) and 0.0 <= value <= 1.0

    if not unit(state.trust_level):
        raise invalid_field("state.trust_level", "must be between 0.0 and 1.0")
    for name in ("successful_interventions", "failed_interventions", "total_interactions"):
        if getattr(state, name) < 0:
            raise invalid_field(f"state.{name}", "must not be negative")
    if not 0 <= state.current_empathy_level <= MAX_EMPATHY_LEVEL:
        raise invalid_field(
            "state.current_empathy_level", f"must be between 0 and {MAX_EMPATHY_LEVEL}"
        )
    for i, point in enumerate(state.trust_trajectory):
        if not unit(point):
            raise invalid_field(f"state.trust_trajectory[{i}]", "must be between 0.0 and 1.0")
    start = state.session_start
    if state.HasField("session_start") and not (
        MIN_TIMESTAMP_SECONDS <= start.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= start.nanos < 1_000_000_000
    ):
        raise invalid_field("state.session_start", "is not a valid timestamp")
    if state.HasField("extra"):
        checked_json(state.extra, "state.extra", limit, MAX_VALUE_SETTING)
    kept = memory_pb2.CollaborationState()
    kept.CopyFrom(state)
    if len(kept.trust_trajectory) > MAX_TRAJECTORY:
        del kept.trust_trajectory[: len(kept.trust_trajectory) - MAX_TRAJECTORY]
    data = kept.SerializeToString()
    if len(data) > limit:
        raise too_large("state", len(data), limit, MAX_VALUE_SETTING)
    return data


def _check_batch(count: int, field: str) -> None:
    if not 1 <= count <= MAX_BATCH:
        raise invalid_field(
            field, f"must hold 1 to {MAX_BATCH} items, not {count}", reason="BATCH_SIZE"
        )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._settings = ctx.settings
        self._store = MemoryStore(
            ctx.redis,
            ctx.settings.memory_history,
            max_entries=ctx.settings.quota_memory_entries,
            max_bytes=ctx.settings.quota_memory_bytes,
        )
        self.hub = WatchHub(ctx.redis, self._store, ctx.settings.signal_queue_size, ctx.shutdown)
        self.sweeper: MemoryExpirySweeper | None = None
        self._session_ttl_ms = ctx.settings.ttl.session * 1000
        # Values are up to max_value_bytes each, so a batch or a page of them can exceed one
        # gRPC message (max_message_bytes): pages are cut to fit, whole reads are refused.
        self._response_budget = response_budget(ctx.settings.max_message_bytes)

    def _check_response_size(self, response: Message, advice: str) -> None:
        """Raises ResourceExhausted (RESPONSE_TOO_LARGE) if `response` does not fit in one
        message; otherwise the transport would fail it after the handler succeeded."""
        size = response.ByteSize()
        if size > self._response_budget:
            limit = self._settings.max_message_bytes
            raise ResourceExhausted(
                f"the response would be {size} bytes; a message may be at most {limit} bytes: "
                + advice,
                reason="RESPONSE_TOO_LARGE",
                metadata={"size_bytes": str(size), "limit_bytes": str(limit)},
            )

    # --- working memory -------------------------------------------------------------------

    def _stash_item(
        self, message: memory_pb2.StashRequest | memory_pb2.StashItem, path: str
    ) -> StashItem:
        key = validate_id(message.key, f"{path}key")
        ttl = _ttl_ms(message, self._settings, path)
        value = _value_bytes(
            message.value,
            message.HasField("value"),
            self._settings.max_value_bytes,
            f"{path}value",
            key,
        )
        return StashItem(key, value, ttl)

    async def Stash(
        self, request: memory_pb2.StashRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.StashResponse:
        caller = current_principal()
        item = self._stash_item(request, "")
        expected: int | None = None
        if request.HasField("expected_revision"):
            expected = request.expected_revision
            if expected < 0:
                raise invalid_field("expected_revision", "must not be negative")
        (stored,) = await self._store.stash(caller.namespace, caller.agent_id, [item], expected)
        return memory_pb2.StashResponse(entry=_entry(stored))

    async def TouchEntry(
        self, request: memory_pb2.TouchEntryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.TouchEntryResponse:
        caller = current_principal()
        key = validate_id(request.key, "key")
        ttl = _ttl_ms(request, self._settings, "") if request.WhichOneof("ttl") else None
        default = int(self._settings.ttl.working_results) * 1000
        stored = await self._store.touch(caller.namespace, caller.agent_id, key, ttl, default)
        return memory_pb2.TouchEntryResponse(entry=_entry(stored))

    async def WatchEntries(
        self, request: memory_pb2.WatchEntriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[memory_pb2.WatchEntriesResponse]:
        caller = current_principal()
        prefix = request.key_prefix
        if prefix and not ID_RE.fullmatch(prefix):
            raise invalid_field(
                "key_prefix",
                "must be up to 128 letters, digits, '.', '_' or '-'",
                reason="INVALID_ID",
            )
        if request.all_owners and request.owner:
            raise invalid_field("owner", "set owner or all_owners, not both")
        session_id = ""
        if request.session_id:
            session_id = validate_id(request.session_id, "session_id")
            if request.owner or request.all_owners:
                raise invalid_field("session_id", "set session_id or owner/all_owners, not both")
        after: int | None = None
        if request.HasField("after_revision"):
            after = request.after_revision
            if after < 0:
                raise invalid_field("after_revision", "must not be negative")
        if session_id:
            await self._check_participant(caller.namespace, session_id, caller.agent_id)
        flt = WatchFilter(
            owner=_owner(request.owner, caller.agent_id) if not request.all_owners else "",
            all_owners=request.all_owners,
            key_prefix=prefix,
            session_id=session_id,
        )
        with_values = request.include_values
        # A watch is a live stream like Subscribe: it counts toward the namespace's
        # live-subscriptions quota while open.
        async with (
            self._ctx.live_subscriptions.hold(caller.namespace),
            self.hub.watch(caller.namespace, flt, after=after) as watcher,
        ):
            yield memory_pb2.WatchEntriesResponse(revision=watcher.start_revision)
            async for item in watcher.events():
                if isinstance(item, WatchProgress):
                    yield memory_pb2.WatchEntriesResponse(revision=item.revision)
                    continue
                response = memory_pb2.WatchEntriesResponse()
                size = 0
                for record in item:
                    event = _event(record, with_values)
                    grows = event.ByteSize() + 8
                    if response.events and size + grows > self._response_budget:
                        response.revision = response.events[-1].revision
                        yield response
                        response, size = memory_pb2.WatchEntriesResponse(), 0
                    response.events.append(event)
                    size += grows
                response.revision = response.events[-1].revision
                yield response

    async def _check_participant(self, namespace: str, session_id: str, agent: str) -> None:
        session = await self._store.get_session(namespace, session_id)
        if agent not in session.participants:
            raise PermissionDenied(
                f"{agent!r} is not a participant of session {session_id!r}",
                reason="NOT_A_PARTICIPANT",
                metadata={"session_id": session_id},
            )

    async def BatchStash(
        self, request: memory_pb2.BatchStashRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.BatchStashResponse:
        caller = current_principal()
        _check_batch(len(request.items), "items")
        items: list[StashItem] = []
        seen: set[str] = set()
        for i, message in enumerate(request.items):
            item = self._stash_item(message, f"items[{i}].")
            if item.key in seen:
                raise invalid_field(
                    f"items[{i}].key", "repeats a key of this batch", reason="DUPLICATE_KEY"
                )
            seen.add(item.key)
            items.append(item)
        stored = await self._store.stash(caller.namespace, caller.agent_id, items)
        return memory_pb2.BatchStashResponse(entries=[_entry(s) for s in stored])

    async def Retrieve(
        self, request: memory_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.RetrieveResponse:
        caller = current_principal()
        key = validate_id(request.key, "key")
        owner = _owner(request.owner, caller.agent_id)
        (stored,) = await self._store.retrieve(caller.namespace, owner, [key])
        if stored is None:
            raise NotFound(
                f"no entry {key!r} of {owner!r}",
                reason="ENTRY_NOT_FOUND",
                metadata={"key": key, "owner": owner},
            )
        return memory_pb2.RetrieveResponse(entry=_entry(stored))

    async def BatchRetrieve(
        self, request: memory_pb2.BatchRetrieveRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.BatchRetrieveResponse:
        caller = current_principal()
        _check_batch(len(request.keys), "keys")
        keys = [validate_id(key, f"keys[{i}]") for i, key in enumerate(request.keys)]
        owner = _owner(request.owner, caller.agent_id)
        stored = await self._store.retrieve(caller.namespace, owner, keys)
        response = memory_pb2.BatchRetrieveResponse(
            results=[
                memory_pb2.RetrieveResult(key=key)
                if s is None
                else memory_pb2.RetrieveResult(key=key, found=True, entry=_entry(s))
                for key, s in zip(keys, stored, strict=True)
            ]
        )
        self._check_response_size(response, "retrieve fewer keys per call")
        return response

    async def DeleteEntry(
        self, request: memory_pb2.DeleteEntryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteEntryResponse:
        caller = current_principal()
        key = validate_id(request.key, "key")
        await self._store.delete(caller.namespace, caller.agent_id, key)
        return memory_pb2.DeleteEntryResponse()

    async def ClearWorkingMemory(
        self, request: memory_pb2.ClearWorkingMemoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ClearWorkingMemoryResponse:
        caller = current_principal()
        count = await self._store.clear(caller.namespace, caller.agent_id)
        return memory_pb2.ClearWorkingMemoryResponse(deleted_count=count)

    async def ListEntries(
        self, request: memory_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListEntriesResponse:
        caller = current_principal()
        owner = _owner(request.owner, caller.agent_id)
        prefix = request.key_prefix
        if prefix and not ID_RE.fullmatch(prefix):
            raise invalid_field(
                "key_prefix",
                "must be up to 128 letters, digits, '.', '_' or '-'",
                reason="INVALID_ID",
            )
        size = _page_size(request.page_size, ENTRY_PAGE)
        token = _page_token(request.page_token, prefix)
        entries, next_token = await self._store.list_entries(
            caller.namespace, owner, prefix, token, size
        )
        listed = [_entry(e) for e in entries]
        fit = fitting(listed, self._response_budget)
        if fit < len(listed):  # the token is the last key listed
            listed, next_token = listed[:fit], listed[fit - 1].key
        return memory_pb2.ListEntriesResponse(entries=listed, next_page_token=next_token)

    # --- team sessions --------------------------------------------------------------------

    async def CreateSession(
        self, request: memory_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.CreateSessionResponse:
        caller = current_principal()
        session_id = validate_id(request.session_id, "session_id")
        if len(request.purpose) > MAX_PURPOSE_CHARS:
            raise invalid_field("purpose", f"must be at most {MAX_PURPOSE_CHARS} characters")
        metadata = checked_json(
            request.metadata, "metadata", self._settings.max_value_bytes, MAX_VALUE_SETTING
        )
        stored = await self._store.create_session(
            caller.namespace,
            session_id,
            purpose=request.purpose,
            metadata=metadata,
            creator=caller.agent_id,
            ttl_ms=self._session_ttl_ms,
        )
        return memory_pb2.CreateSessionResponse(session=_session(stored))

    async def JoinSession(
        self, request: memory_pb2.JoinSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.JoinSessionResponse:
        caller = current_principal()
        session_id = validate_id(request.session_id, "session_id")
        stored = await self._store.join_session(
            caller.namespace, session_id, caller.agent_id, self._session_ttl_ms
        )
        return memory_pb2.JoinSessionResponse(session=_session(stored))

    async def LeaveSession(
        self, request: memory_pb2.LeaveSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.LeaveSessionResponse:
        caller = current_principal()
        session_id = validate_id(request.session_id, "session_id")
        stored = await self._store.leave_session(
            caller.namespace, session_id, caller.agent_id, self._session_ttl_ms
        )
        return memory_pb2.LeaveSessionResponse(session=_session(stored))

    async def GetSession(
        self, request: memory_pb2.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetSessionResponse:
        caller = current_principal()
        session_id = validate_id(request.session_id, "session_id")
        stored = await self._store.get_session(caller.namespace, session_id)
        return memory_pb2.GetSessionResponse(session=_session(stored))

    async def ListSessions(
        self, request: memory_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListSessionsResponse:
        caller = current_principal()
        size = _page_size(request.page_size, SESSION_PAGE)
        token = _page_token(request.page_token)
        stored, next_token = await self._store.list_sessions(caller.namespace, token, size)
        sessions = [_session(s) for s in stored]
        fit = fitting(sessions, self._response_budget)
        if fit < len(sessions):
            sessions, next_token = sessions[:fit], sessions[fit - 1].session_id
        return memory_pb2.ListSessionsResponse(sessions=sessions, next_page_token=next_token)

    async def ShareContext(
        self, request: memory_pb2.ShareContextRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ShareContextResponse:
        caller = current_principal()
        session_id = validate_id(request.session_id, "session_id")
        key = validate_id(request.key, "key")
        _value_bytes(
            request.value, request.HasField("value"), self._settings.max_value_bytes, "value", key
        )
        item = memory_pb2.SharedContextItem(
            key=key, value=request.value, shared_by=caller.agent_id, share_time=_timestamp(now_ms())
        )
        await self._store.share_context(
            caller.namespace,
            session_id,
            caller.agent_id,
            key,
            item.SerializeToString(),
            self._session_ttl_ms,
        )
        item.ClearField("value")
        return memory_pb2.ShareContextResponse(item=item)

    async def GetSharedContext(
        self, request: memory_pb2.GetSharedContextRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetSharedContextResponse:
        caller = current_principal()
        session_id = validate_id(request.session_id, "session_id")
        key = validate_id(request.key, "key") if request.key else ""
        raw = await self._store.read_context(
            caller.namespace, session_id, caller.agent_id, key, self._session_ttl_ms
        )
        items = sorted(
            (memory_pb2.SharedContextItem.FromString(b) for b in raw), key=lambda i: i.key
        )
        response = memory_pb2.GetSharedContextResponse(items=items)
        self._check_response_size(response, "read the keys one at a time")
        return response

    # --- collaboration state --------------------------------------------------------------

    async def SaveCollaborationState(
        self, request: memory_pb2.SaveCollaborationStateRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.SaveCollaborationStateResponse:
        caller = current_principal()
        session_id = validate_id(request.session_id, "session_id")
        state = _collaboration_state(request.state, self._settings.max_value_bytes)
        expected: int | None = None
        if request.HasField("expected_version"):
            expected = request.expected_version
            if expected < 0:
                raise invalid_field("expected_version", "must not be negative")
        version, update_ms = await self._store.save_collaboration_state(
            caller.namespace, caller.agent_id, session_id, state, expected
        )
        return memory_pb2.SaveCollaborationStateResponse(
            version=version, update_time=_timestamp(update_ms)
        )

    async def LoadCollaborationState(
        self, request: memory_pb2.LoadCollaborationStateRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.LoadCollaborationStateResponse:
        caller = current_principal()
        session_id = validate_id(request.session_id, "session_id")
        stored = await self._store.load_collaboration_state(
            caller.namespace, caller.agent_id, session_id
        )
        return memory_pb2.LoadCollaborationStateResponse(record=_record(stored))

    async def ListCollaborationStates(
        self, request: memory_pb2.ListCollaborationStatesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListCollaborationStatesResponse:
        caller = current_principal()
        size = _page_size(request.page_size, SESSION_PAGE)
        token = _page_token(request.page_token)
        stored, next_token = await self._store.list_collaboration_states(
            caller.namespace, caller.agent_id, token, size
        )
        records = [_record(r) for r in stored]
        fit = fitting(records, self._response_budget)
        if fit < len(records):
            records, next_token = records[:fit], records[fit - 1].session_id
        return memory_pb2.ListCollaborationStatesResponse(
            records=records, next_page_token=next_token
        )


_SERVICERS: dict[int, MemoryServicer] = {}


def servicer_for(ctx: ServiceContext) -> MemoryServicer:
    """The MemoryServicer of the server owning `ctx` (tests inspect its hub and sweeper)."""
    return _SERVICERS[id(ctx)]


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    servicer = MemoryServicer(ctx)
    # Every process sweeps due entries (exact EXPIRE events); it stops with the server.
    servicer.sweeper = MemoryExpirySweeper(servicer._store, ctx.shutdown)
    _SERVICERS[id(ctx)] = servicer
    weakref.finalize(ctx, _SERVICERS.pop, id(ctx), None)
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name
