"""StagingService calls: stage, review and list patterns; the pattern library; conflicts.

Tiers: reads need OBSERVER, stage_pattern/create_conflict CONTRIBUTOR, promote_pattern,
reject_pattern and resolve_conflict VALIDATOR. Every failure raises AgentcoordError; its
`reason` tells the cases apart (e.g. PATTERN_STAGED_BY_OTHER_AGENT, BELOW_CONFIDENCE_THRESHOLD,
STAGED_PATTERN_NOT_FOUND, ALREADY_RESOLVED).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from google.protobuf import struct_pb2

from agentcoord.v1 import staging_pb2, staging_pb2_grpc

from .._transport import AsyncTransport
from ._base import ServiceClient

_STATES = {
    None: staging_pb2.CONFLICT_STATE_UNSPECIFIED,
    "open": staging_pb2.CONFLICT_STATE_OPEN,
    "resolved": staging_pb2.CONFLICT_STATE_RESOLVED,
}


def _struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if value:
        s.update(dict(value))
    return s


class StagingClient(ServiceClient):
    def __init__(self, transport: AsyncTransport) -> None:
        super().__init__(transport)
        self._stub = staging_pb2_grpc.StagingServiceStub(transport.channel)

    # -- staging ---------------------------------------------------------------------------

    async def stage_pattern(
        self,
        *,
        pattern_id: str,
        pattern_type: str,
        name: str,
        confidence: float,
        description: str = "",
        code: str = "",
        context: Mapping[str, Any] | None = None,
        interests: Iterable[str] = (),
    ) -> staging_pb2.StagedPattern:
        """Stages a pattern authored by this client's agent; it expires after the server's
        STAGED_PATTERNS TTL (24 h by default). Staging an id you staged before replaces it
        (revision + 1). `confidence` is 0.0-1.0; `context` any JSON-like dict.

        Raises AgentcoordError: INVALID_ARGUMENT (field_violations lists every bad field;
        NON_FINITE_NUMBER for NaN/±Infinity in `context`), ALREADY_EXISTS
        (PATTERN_STAGED_BY_OTHER_AGENT), PERMISSION_DENIED below CONTRIBUTOR,
        RESOURCE_EXHAUSTED (VALUE_TOO_LARGE: `code` in UTF-8 or `context` serialized is over the
        server's --max-pattern-bytes, default 1 MiB).
        """
        request = staging_pb2.StagePatternRequest(
            pattern_id=pattern_id,
            pattern_type=pattern_type,
            name=name,
            description=description,
            confidence=confidence,
            code=code,
            context=_struct(context),
            interests=list(interests),
        )
        response = await self._unary(self._stub.StagePattern, request)
        return response.pattern  # type: ignore[no-any-return]

    async def get_staged_pattern(self, pattern_id: str) -> staging_pb2.StagedPattern:
        """One staged pattern. Raises AgentcoordError NOT_FOUND (STAGED_PATTERN_NOT_FOUND)."""
        response = await self._unary(
            self._stub.GetStagedPattern,
            staging_pb2.GetStagedPatternRequest(pattern_id=pattern_id),
        )
        return response.pattern  # type: ignore[no-any-return]

    async def list_staged_patterns(
        self,
        *,
        pattern_type: str = "",
        author: str = "",
        minimum_confidence: float | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> staging_pb2.ListStagedPatternsResponse:
        """One page of staged patterns, highest confidence first, then oldest first.

        `page_size` 0 means the server's default (100); pass `next_page_token` back as
        `page_token` until it is empty. A page may be short while more follow.
        """
        request = staging_pb2.ListStagedPatternsRequest(
            pattern_type=pattern_type,
            author=author,
            page_size=page_size,
            page_token=page_token,
        )
        if minimum_confidence is not None:
            request.minimum_confidence = minimum_confidence
        return await self._unary(self._stub.ListStagedPatterns, request)  # type: ignore[no-any-return]

    async def iter_staged_patterns(
        self,
        *,
        pattern_type: str = "",
        author: str = "",
        minimum_confidence: float | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[staging_pb2.StagedPattern]:
        """Every staged pattern matching the filters, fetching page after page."""
        token = ""
        while True:
            page = await self.list_staged_patterns(
                pattern_type=pattern_type,
                author=author,
                minimum_confidence=minimum_confidence,
                page_size=page_size,
                page_token=token,
            )
            for pattern in page.patterns:
                yield pattern
            token = page.next_page_token
            if not token:
                return

    # -- review ----------------------------------------------------------------------------

    async def promote_pattern(
        self,
        pattern_id: str,
        *,
        minimum_confidence: float | None = None,
        note: str = "",
        revision: int | None = None,
    ) -> staging_pb2.Pattern:
        """Moves a staged pattern into the library (VALIDATOR); returns the library entry.

        `minimum_confidence` (0.0-1.0): refuse if the pattern's confidence is lower.
        `revision`: promote only if this is still the staged revision.
        Raises AgentcoordError: NOT_FOUND (STAGED_PATTERN_NOT_FOUND, also when another validator
        promoted or rejected it first), FAILED_PRECONDITION (BELOW_CONFIDENCE_THRESHOLD; it
        stays staged), ABORTED (REVISION_MISMATCH).
        """
        request = staging_pb2.PromotePatternRequest(pattern_id=pattern_id, note=note)
        if minimum_confidence is not None:
            request.minimum_confidence = minimum_confidence
        if revision is not None:
            request.revision = revision
        response = await self._unary(self._stub.PromotePattern, request)
        return response.pattern  # type: ignore[no-any-return]

    async def reject_pattern(self, pattern_id: str, *, reason: str) -> staging_pb2.PatternRejection:
        """Removes a staged pattern (VALIDATOR) and returns the rejection record, readable with
        get_pattern_rejection for the STAGED_PATTERNS TTL. Raises AgentcoordError NOT_FOUND
        (STAGED_PATTERN_NOT_FOUND)."""
        response = await self._unary(
            self._stub.RejectPattern,
            staging_pb2.RejectPatternRequest(pattern_id=pattern_id, reason=reason),
        )
        return response.rejection  # type: ignore[no-any-return]

    async def get_pattern_rejection(self, pattern_id: str) -> staging_pb2.PatternRejection:
        """The latest rejection of a pattern id (who, why, when). Raises AgentcoordError
        NOT_FOUND (REJECTION_NOT_FOUND)."""
        response = await self._unary(
            self._stub.GetPatternRejection,
            staging_pb2.GetPatternRejectionRequest(pattern_id=pattern_id),
        )
        return response.rejection  # type: ignore[no-any-return]

    # -- library ---------------------------------------------------------------------------

    async def get_pattern(self, pattern_id: str) -> staging_pb2.Pattern:
        """One library pattern. Raises AgentcoordError NOT_FOUND (PATTERN_NOT_FOUND)."""
        response = await self._unary(
            self._stub.GetPattern, staging_pb2.GetPatternRequest(pattern_id=pattern_id)
        )
        return response.pattern  # type: ignore[no-any-return]

    async def list_patterns(
        self, *, pattern_type: str = "", text: str = "", page_size: int = 0, page_token: str = ""
    ) -> staging_pb2.ListPatternsResponse:
        """One page of the library, by id. `text` matches name or description, ignoring case."""
        request = staging_pb2.ListPatternsRequest(
            pattern_type=pattern_type, text=text, page_size=page_size, page_token=page_token
        )
        return await self._unary(self._stub.ListPatterns, request)  # type: ignore[no-any-return]

    async def iter_patterns(
        self, *, pattern_type: str = "", text: str = "", page_size: int = 0
    ) -> AsyncIterator[staging_pb2.Pattern]:
        """Every library pattern matching the filters, fetching page after page."""
        token = ""
        while True:
            page = await self.list_patterns(
                pattern_type=pattern_type, text=text, page_size=page_size, page_token=token
            )
            for pattern in page.patterns:
                yield pattern
            token = page.next_page_token
            if not token:
                return

    # -- conflicts -------------------------------------------------------------------------

    async def create_conflict(
        self,
        *,
        conflict_id: str,
        positions: Mapping[str, str],
        interests: Mapping[str, Iterable[str]] | None = None,
        batna: str = "",
        description: str = "",
    ) -> staging_pb2.Conflict:
        """Opens a conflict (CONTRIBUTOR): `positions` and `interests` by agent id; it expires
        after the CONFLICT_CONTEXT TTL (7 days by default).

        Raises AgentcoordError: INVALID_ARGUMENT (field_violations), ALREADY_EXISTS
        (CONFLICT_EXISTS), RESOURCE_EXHAUSTED (VALUE_TOO_LARGE: positions or interests
        serialized over the server's --max-conflict-bytes, default 1 MiB).
        """
        request = staging_pb2.CreateConflictRequest(
            conflict_id=conflict_id,
            description=description,
            positions=dict(positions),
            interests={
                agent: staging_pb2.AgentInterests(interests=list(values))
                for agent, values in (interests or {}).items()
            },
            batna=batna,
        )
        response = await self._unary(self._stub.CreateConflict, request)
        return response.conflict  # type: ignore[no-any-return]

    async def get_conflict(self, conflict_id: str) -> staging_pb2.Conflict:
        """One conflict. Raises AgentcoordError NOT_FOUND (CONFLICT_NOT_FOUND)."""
        response = await self._unary(
            self._stub.GetConflict, staging_pb2.GetConflictRequest(conflict_id=conflict_id)
        )
        return response.conflict  # type: ignore[no-any-return]

    async def list_conflicts(
        self, *, state: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> staging_pb2.ListConflictsResponse:
        """One page of conflicts, oldest first. `state`: None (all), "open" or "resolved"."""
        if state not in _STATES:
            raise ValueError(f"state must be None, 'open' or 'resolved', not {state!r}")
        request = staging_pb2.ListConflictsRequest(
            state=_STATES[state], page_size=page_size, page_token=page_token
        )
        return await self._unary(self._stub.ListConflicts, request)  # type: ignore[no-any-return]

    async def resolve_conflict(self, conflict_id: str, *, resolution: str) -> staging_pb2.Conflict:
        """Resolves an open conflict (VALIDATOR). Raises AgentcoordError: NOT_FOUND
        (CONFLICT_NOT_FOUND), FAILED_PRECONDITION (ALREADY_RESOLVED)."""
        response = await self._unary(
            self._stub.ResolveConflict,
            staging_pb2.ResolveConflictRequest(conflict_id=conflict_id, resolution=resolution),
        )
        return response.conflict  # type: ignore[no-any-return]
