# Generated from ../_async by `make generate` (unasync); do not edit.
"""MemoryService calls: working memory (stash/retrieve), team sessions, collaboration state.

Values are any JSON-like Python value (dict, list, str, int, float, bool, None); they travel as
google.protobuf.Value and come back unchanged (JSON numbers are doubles: integer-valued numbers
come back as int). Tiers: reads need OBSERVER, writes (stash, sessions, share, save) CONTRIBUTOR;
reading a session's shared context also needs CONTRIBUTOR (participants only, and joining does).
Every failure raises AgentcoordError; its `reason` tells the cases apart (ENTRY_NOT_FOUND,
VALUE_TOO_LARGE, INVALID_ID, SESSION_EXISTS, SESSION_NOT_FOUND, NOT_A_PARTICIPANT,
VERSION_MISMATCH, COLLABORATION_STATE_NOT_FOUND, ENTRY_EXISTS, ENTRY_REVISION_MISMATCH,
REVISION_COMPACTED, QUOTA_EXCEEDED…). `watch_entries` follows changes live and resumes by itself.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from agentcoord.v1 import memory_pb2, memory_pb2_grpc

from .._transport import SyncTransport, sync_sleep
from ..errors import AgentcoordError
from ._base import ServiceClient

# A watch interrupted with one of these resumes from its last revision (as subscribe does).
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

Ttl = float | datetime.timedelta


def to_value(obj: Any) -> struct_pb2.Value:
    """A JSON-like Python value as a google.protobuf.Value. Raises TypeError for anything else
    (mapping keys must be strings)."""
    value = struct_pb2.Value()
    _fill(value, obj)
    return value


def _fill(value: struct_pb2.Value, obj: Any) -> None:
    if obj is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        value.bool_value = obj
    elif isinstance(obj, (int, float)):
        value.number_value = obj
    elif isinstance(obj, str):
        value.string_value = obj
    elif isinstance(obj, Mapping):
        fields = value.struct_value.fields
        value.struct_value.SetInParent()
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
            _fill(fields[k], v)
        return
    elif isinstance(obj, (list, tuple)):
        items = value.list_value.values
        value.list_value.SetInParent()
        for v in obj:
            _fill(items.add(), v)
    else:
        raise TypeError(f"{type(obj).__name__} is not a JSON-like value")


def from_value(value: struct_pb2.Value) -> Any:
    """A google.protobuf.Value as a Python value; integer-valued numbers become int."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {k: from_value(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [from_value(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) <= 2**53:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if value:
        struct.CopyFrom(to_value(dict(value)).struct_value)
    return struct


def _strategy(name: str | int) -> int:
    if isinstance(name, int):
        return name
    text = name.strip().upper()
    full = text if text.startswith("TTL_STRATEGY_") else f"TTL_STRATEGY_{text}"
    return memory_pb2.TtlStrategy.Value(full)


def _set_ttl(
    message: memory_pb2.StashRequest | memory_pb2.StashItem | memory_pb2.TouchEntryRequest,
    ttl: Ttl | None,
    ttl_strategy: str | int | None,
) -> None:
    if ttl is not None and ttl_strategy is not None:
        raise ValueError("give ttl or ttl_strategy, not both")
    if ttl is not None:
        seconds = ttl.total_seconds() if isinstance(ttl, datetime.timedelta) else float(ttl)
        message.ttl_duration.FromNanoseconds(round(seconds * 1e9))
    elif ttl_strategy is not None:
        message.ttl_strategy = _strategy(ttl_strategy)  # type: ignore[assignment]


class MemoryClient(ServiceClient):
    def __init__(self, transport: SyncTransport) -> None:
        super().__init__(transport)
        self._stub = memory_pb2_grpc.MemoryServiceStub(transport.channel)

    # -- working memory --------------------------------------------------------------------

    def stash(
        self,
        key: str,
        value: Any,
        *,
        ttl: Ttl | None = None,
        ttl_strategy: str | int | None = None,
        expected_revision: int | None = None,
    ) -> memory_pb2.MemoryEntry:
        """Stores `value` under `key` in this agent's working memory; overwriting restarts the
        TTL. `ttl` is an explicit lifetime (seconds or timedelta, 1 ms to 30 days);
        `ttl_strategy` a strategy name ("working_results", "coordination", "session"…) whose
        seconds the server configures. Neither: WORKING_RESULTS (1 h by default).

        `expected_revision` makes it conditional: 0 creates only (ALREADY_EXISTS ENTRY_EXISTS
        if the key is live), N > 0 updates only the entry at revision N (NOT_FOUND
        ENTRY_NOT_FOUND if missing, ABORTED ENTRY_REVISION_MISMATCH if someone wrote it since:
        re-read, merge, retry with the new revision). Nothing is written when refused.

        Returns the entry's metadata (owner, stash_time, expire_time, size_bytes, revision; no
        value).
        Raises AgentcoordError: INVALID_ARGUMENT (INVALID_ID for a bad key, NON_FINITE_NUMBER
        for NaN/±Infinity in the value), RESOURCE_EXHAUSTED (VALUE_TOO_LARGE, default limit
        1 MiB), PERMISSION_DENIED below
        CONTRIBUTOR. ValueError if both ttl and ttl_strategy are given.
        """
        request = memory_pb2.StashRequest(key=key, value=to_value(value))
        _set_ttl(request, ttl, ttl_strategy)
        if expected_revision is not None:
            request.expected_revision = expected_revision
        response = self._unary(self._stub.Stash, request)
        return response.entry  # type: ignore[no-any-return]

    def touch_entry(
        self,
        key: str,
        *,
        ttl: Ttl | None = None,
        ttl_strategy: str | int | None = None,
    ) -> memory_pb2.MemoryEntry:
        """Restarts the TTL of this agent's entry `key` without rewriting it: from now, `ttl`
        (seconds or timedelta) or `ttl_strategy`, else the TTL it was stashed with. Value and
        revision stay; watchers see no event. Returns its metadata (new expire_time).
        Raises AgentcoordError NOT_FOUND (ENTRY_NOT_FOUND) if it is missing or expired."""
        request = memory_pb2.TouchEntryRequest(key=key)
        _set_ttl(request, ttl, ttl_strategy)
        response = self._unary(self._stub.TouchEntry, request)
        return response.entry  # type: ignore[no-any-return]

    def watch_entries(
        self,
        *,
        owner: str | None = None,
        all_owners: bool = False,
        key_prefix: str = "",
        session_id: str = "",
        after_revision: int | None = None,
        include_values: bool = False,
        max_retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> Iterator[memory_pb2.EntryEvent]:
        """Yields changes to working-memory entries, oldest first, live, without end:
        EntryEvent with type PUT (entry metadata, and entry.value with `include_values`),
        DELETE or EXPIRE, and `revision`.

        Watches `owner`'s entries (default: this agent's), or every owner's with `all_owners`,
        only keys starting with `key_prefix`; or, with `session_id`, that session's shared
        context (participants only; PUT events carry `value`). Starts after `after_revision`
        (a revision from an event or a MemoryEntry: resume there), else at the current one.
        When the server ends the stream UNAVAILABLE or RESOURCE_EXHAUSTED it resumes after the
        last revision seen (progress included), so nothing is lost or repeated: up to
        `max_retries` times in a row, `backoff` seconds doubled per retry (at most
        `max_backoff`). OBSERVER or above. Close the iterator to stop (cancels the call).

        Raises AgentcoordError: OUT_OF_RANGE (REVISION_COMPACTED) when events after the
        revision are no longer kept (re-read, then watch again), PERMISSION_DENIED
        (NOT_A_PARTICIPANT) for a session the caller is not in, the last error once retries
        are exhausted, any other failure at once.
        """
        cursor = after_revision
        retries = 0
        while True:
            request = memory_pb2.WatchEntriesRequest(
                owner=owner or "",
                all_owners=all_owners,
                key_prefix=key_prefix,
                session_id=session_id,
                include_values=include_values,
            )
            if cursor is not None:
                request.after_revision = cursor
            # The raw call, so that closing this iterator cancels the server-side stream.
            call = self._stub.WatchEntries(request)
            try:
                for response in call:
                    retries = 0
                    for event in response.events:
                        cursor = event.revision
                        yield event
                    cursor = response.revision
            except grpc.RpcError as rpc_error:
                error = AgentcoordError.from_rpc_error(rpc_error)
                if error.code not in RESUMABLE_CODES or retries >= max_retries:
                    raise error from None
                sync_sleep(min(max_backoff, backoff * 2**retries))
                retries += 1
                continue
            finally:
                call.cancel()
            return

    def retrieve(self, key: str, *, owner: str | None = None) -> Any:
        """The value stored under `key` by `owner` (default: this agent), as a Python value.
        Raises AgentcoordError NOT_FOUND (ENTRY_NOT_FOUND) if it is missing or expired."""
        entry = self.retrieve_entry(key, owner=owner)
        return from_value(entry.value)

    def retrieve_entry(self, key: str, *, owner: str | None = None) -> memory_pb2.MemoryEntry:
        """Like `retrieve`, but returns the whole entry: value, owner, stash/expire times and
        size in bytes."""
        request = memory_pb2.RetrieveRequest(key=key, owner=owner or "")
        response = self._unary(self._stub.Retrieve, request)
        return response.entry  # type: ignore[no-any-return]

    def batch_stash(
        self,
        items: Mapping[str, Any],
        *,
        ttl: Ttl | None = None,
        ttl_strategy: str | int | None = None,
    ) -> list[memory_pb2.MemoryEntry]:
        """Stores 1-100 key → value pairs atomically in one call, all with the same TTL (see
        `stash`). If any item is refused (bad key, too large), nothing is written. Returns the
        entries' metadata in the mapping's order."""
        request = memory_pb2.BatchStashRequest()
        for key, value in items.items():
            item = request.items.add(key=key, value=to_value(value))
            _set_ttl(item, ttl, ttl_strategy)
        response = self._unary(self._stub.BatchStash, request)
        return list(response.entries)

    def batch_retrieve(
        self, keys: Iterable[str], *, owner: str | None = None
    ) -> dict[str, Any]:
        """Values of 1-100 keys of `owner` (default: this agent) in one call, as {key: value};
        keys that are missing or expired are left out (a stored JSON null is present as None).
        """
        results = self.batch_retrieve_entries(keys, owner=owner)
        return {r.key: from_value(r.entry.value) for r in results if r.found}

    def batch_retrieve_entries(
        self, keys: Iterable[str], *, owner: str | None = None
    ) -> list[memory_pb2.RetrieveResult]:
        """Like `batch_retrieve`, but one RetrieveResult (key, found, entry) per requested key,
        in order."""
        request = memory_pb2.BatchRetrieveRequest(keys=list(keys), owner=owner or "")
        response = self._unary(self._stub.BatchRetrieve, request)
        return list(response.results)

    def delete_entry(self, key: str) -> None:
        """Deletes one of this agent's entries. Raises AgentcoordError NOT_FOUND
        (ENTRY_NOT_FOUND) if it is missing or expired."""
        self._unary(self._stub.DeleteEntry, memory_pb2.DeleteEntryRequest(key=key))

    def clear_working_memory(self) -> int:
        """Deletes all of this agent's entries; returns how many live entries there were."""
        response = self._unary(
            self._stub.ClearWorkingMemory, memory_pb2.ClearWorkingMemoryRequest()
        )
        return int(response.deleted_count)

    def list_entries(
        self,
        *,
        owner: str | None = None,
        key_prefix: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> memory_pb2.ListEntriesResponse:
        """One page of `owner`'s (default: this agent's) live entries in key order, metadata
        only, optionally only keys starting with `key_prefix`. page_size 1-1000 (0: 100); pass
        the response's next_page_token to get the next page (empty: no more)."""
        request = memory_pb2.ListEntriesRequest(
            owner=owner or "", key_prefix=key_prefix, page_size=page_size, page_token=page_token
        )
        return self._unary(self._stub.ListEntries, request)  # type: ignore[no-any-return]

    def iter_entries(
        self, *, owner: str | None = None, key_prefix: str = "", page_size: int = 0
    ) -> Iterator[memory_pb2.MemoryEntry]:
        """Every live entry of `owner` (default: this agent) with `key_prefix`, page by page."""
        token = ""
        while True:
            page = self.list_entries(
                owner=owner, key_prefix=key_prefix, page_size=page_size, page_token=token
            )
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    # -- team sessions ---------------------------------------------------------------------

    def create_session(
        self, session_id: str, *, purpose: str = "", metadata: Mapping[str, Any] | None = None
    ) -> memory_pb2.Session:
        """Creates a team session with this agent as its first participant; it expires after
        the SESSION TTL (30 min by default) without activity. Raises AgentcoordError
        ALREADY_EXISTS (SESSION_EXISTS) if it exists (it is left untouched)."""
        request = memory_pb2.CreateSessionRequest(
            session_id=session_id, purpose=purpose, metadata=_struct(metadata)
        )
        response = self._unary(self._stub.CreateSession, request)
        return response.session  # type: ignore[no-any-return]

    def join_session(self, session_id: str) -> memory_pb2.Session:
        """Joins a session (idempotent) and restarts its TTL; returns it with its participants.
        Raises AgentcoordError NOT_FOUND (SESSION_NOT_FOUND), RESOURCE_EXHAUSTED (SESSION_FULL:
        it has 1000 participants)."""
        request = memory_pb2.JoinSessionRequest(session_id=session_id)
        response = self._unary(self._stub.JoinSession, request)
        return response.session  # type: ignore[no-any-return]

    def leave_session(self, session_id: str) -> memory_pb2.Session:
        """Leaves a session and restarts its TTL; returns it with its remaining participants.
        Raises AgentcoordError NOT_FOUND (SESSION_NOT_FOUND), FAILED_PRECONDITION
        (NOT_A_PARTICIPANT)."""
        request = memory_pb2.LeaveSessionRequest(session_id=session_id)
        response = self._unary(self._stub.LeaveSession, request)
        return response.session  # type: ignore[no-any-return]

    def get_session(self, session_id: str) -> memory_pb2.Session:
        """A session: purpose, metadata, created_by, participants, create/expire time. Does not
        refresh its TTL. Raises AgentcoordError NOT_FOUND (SESSION_NOT_FOUND)."""
        request = memory_pb2.GetSessionRequest(session_id=session_id)
        response = self._unary(self._stub.GetSession, request)
        return response.session  # type: ignore[no-any-return]

    def list_sessions(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> memory_pb2.ListSessionsResponse:
        """One page of the namespace's live sessions in id order; page_size 1-100 (0: 50)."""
        request = memory_pb2.ListSessionsRequest(page_size=page_size, page_token=page_token)
        return self._unary(self._stub.ListSessions, request)  # type: ignore[no-any-return]

    def share_context(
        self, session_id: str, key: str, value: Any
    ) -> memory_pb2.SharedContextItem:
        """Shares `value` under `key` with the session's participants (overwriting) and restarts
        the session's TTL; the context expires with the session. Returns the item's metadata.
        Raises AgentcoordError PERMISSION_DENIED (NOT_A_PARTICIPANT) unless this agent has
        joined, NOT_FOUND (SESSION_NOT_FOUND), RESOURCE_EXHAUSTED (VALUE_TOO_LARGE)."""
        request = memory_pb2.ShareContextRequest(
            session_id=session_id, key=key, value=to_value(value)
        )
        response = self._unary(self._stub.ShareContext, request)
        return response.item  # type: ignore[no-any-return]

    def get_shared_context(
        self, session_id: str, *, key: str | None = None
    ) -> dict[str, Any]:
        """The session's shared context as {key: value} (only `key` if given); restarts the
        session's TTL. Needs CONTRIBUTOR and a participant: raises AgentcoordError
        PERMISSION_DENIED (TIER_TOO_LOW below CONTRIBUTOR, else NOT_A_PARTICIPANT), NOT_FOUND
        (SESSION_NOT_FOUND; CONTEXT_NOT_FOUND for a missing `key`)."""
        items = self.get_shared_items(session_id, key=key)
        return {item.key: from_value(item.value) for item in items}

    def get_shared_items(
        self, session_id: str, *, key: str | None = None
    ) -> list[memory_pb2.SharedContextItem]:
        """Like `get_shared_context`, but the items with shared_by and share_time, in key order."""
        request = memory_pb2.GetSharedContextRequest(session_id=session_id, key=key or "")
        response = self._unary(self._stub.GetSharedContext, request)
        return list(response.items)

    # -- collaboration state ---------------------------------------------------------------

    def save_collaboration_state(
        self,
        session_id: str,
        state: memory_pb2.CollaborationState | Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> int:
        """Saves this agent's collaboration state for a session (kept with no TTL; only the
        last 100 trust_trajectory points are kept) and returns its new version. `state` is a
        CollaborationState or a dict of its fields (JSON names, e.g. {"trust_level": 0.8}).
        With `expected_version` (0: not saved yet) the save happens only if the stored version
        matches. Raises AgentcoordError ABORTED (VERSION_MISMATCH; metadata["version"] is the
        stored one), INVALID_ARGUMENT for out-of-range fields."""
        if not isinstance(state, memory_pb2.CollaborationState):
            state = json_format.ParseDict(dict(state), memory_pb2.CollaborationState())
        request = memory_pb2.SaveCollaborationStateRequest(session_id=session_id, state=state)
        if expected_version is not None:
            request.expected_version = expected_version
        response = self._unary(self._stub.SaveCollaborationState, request)
        return int(response.version)

    def load_collaboration_state(
        self, session_id: str
    ) -> memory_pb2.CollaborationStateRecord:
        """This agent's saved state for a session, with its version and update_time. Raises
        AgentcoordError NOT_FOUND (COLLABORATION_STATE_NOT_FOUND)."""
        request = memory_pb2.LoadCollaborationStateRequest(session_id=session_id)
        response = self._unary(self._stub.LoadCollaborationState, request)
        return response.record  # type: ignore[no-any-return]

    def list_collaboration_states(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> memory_pb2.ListCollaborationStatesResponse:
        """One page of this agent's saved states in session id order; page_size 1-100 (0: 50)."""
        request = memory_pb2.ListCollaborationStatesRequest(
            page_size=page_size, page_token=page_token
        )
        return self._unary(self._stub.ListCollaborationStates, request)  # type: ignore[no-any-return]
