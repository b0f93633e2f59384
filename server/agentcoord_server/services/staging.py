"""StagingService: pattern staging, review, the pattern library and conflict contexts
(proto/agentcoord/v1/staging.proto; store: store/staging.py).

Each handler validates the whole request (every bad field becomes one BadRequest field
violation of a single InvalidArgument, so a caller fixes everything in one round), makes one
store call and builds the response. Tiers are enforced by the interceptor, not here.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from agentcoord.v1 import staging_pb2, staging_pb2_grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from ..errors import InvalidArgument
from ..identity import ID_RE, current_principal
from ..store.staging import (
    CONFLICT_LIST,
    LIBRARY_LIST,
    STAGED_LIST,
    ConflictRecord,
    Page,
    PatternRecord,
    RejectionRecord,
    StagingStore,
    decode_page_token,
)
from .values import checked_json, fitting, response_budget, too_large

if TYPE_CHECKING:
    from . import ServiceContext

PB2 = staging_pb2

# Text limits, in characters. Free text (code) is bounded only by the message size limit.
MAX_NAME = 256
MAX_TEXT = 16384
MAX_INTEREST = 256
MAX_INTERESTS = 64
MAX_PATTERN_SETTING = "--max-pattern-bytes"
MAX_CONFLICT_SETTING = "--max-conflict-bytes"

R = TypeVar("R")
M = TypeVar("M", bound=Message)


class Violations:
    """Collects (field, description) pairs; `raise_if_any` raises one InvalidArgument."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def id(self, value: str, field: str) -> None:
        if not value:
            self.add(field, "must not be empty")
        elif not ID_RE.fullmatch(value):
            self.add(field, "must be 1-128 characters of letters, digits, '.', '_' or '-'")

    def optional_id(self, value: str, field: str) -> None:
        if value:
            self.id(value, field)

    def text(self, value: str, field: str, *, limit: int, required: bool = False) -> None:
        if required and not value.strip():
            self.add(field, "must not be empty")
        elif len(value) > limit:
            self.add(field, f"must be at most {limit} characters")

    def confidence(self, value: float, field: str) -> None:
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            self.add(field, "must be between 0.0 and 1.0")

    def interests(self, values: Iterable[str], field: str) -> None:
        values = list(values)
        if len(values) > MAX_INTERESTS:
            self.add(field, f"must hold at most {MAX_INTERESTS} entries")
        for i, value in enumerate(values):
            if not value.strip():
                self.add(f"{field}[{i}]", "must not be empty")
            elif len(value) > MAX_INTEREST:
                self.add(f"{field}[{i}]", f"must be at most {MAX_INTEREST} characters")

    def page_size(self, value: int) -> None:
        if value < 0:
            self.add("page_size", "must not be negative")

    def page_token(self, value: str, kind: str) -> None:
        """A token of list `kind` (checked here so it is reported with the other fields)."""
        try:
            decode_page_token(kind, value)
        except InvalidArgument as error:
            self.items += error.field_violations

    def raise_if_any(self) -> None:
        if self.items:
            fields = ", ".join(field for field, _ in self.items)
            raise InvalidArgument(
                f"invalid fields: {fields}", reason="INVALID_FIELD", field_violations=self.items
            )


def _timestamp(ms: int) -> timestamp_pb2.Timestamp | None:
    if not ms:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def _pattern_fields(r: PatternRecord) -> dict[str, Any]:
    """The fields StagedPattern and Pattern share, from one record."""
    return {
        "pattern_id": r.pattern_id,
        "pattern_type": r.pattern_type,
        "name": r.name,
        "description": r.description,
        "confidence": r.confidence,
        "code": r.code,
        "context": _struct(r.context),
        "interests": r.interests,
        "author": r.author,
        "revision": r.revision,
        "stage_time": _timestamp(r.stage_ms),
    }


def staged_pattern_pb(r: PatternRecord) -> staging_pb2.StagedPattern:
    return staging_pb2.StagedPattern(**_pattern_fields(r), expire_time=_timestamp(r.expire_ms))


def pattern_pb(r: PatternRecord) -> staging_pb2.Pattern:
    return staging_pb2.Pattern(
        **_pattern_fields(r),
        promoted_by=r.promoted_by,
        promote_time=_timestamp(r.promote_ms),
        note=r.note,
    )


def rejection_pb(r: RejectionRecord) -> staging_pb2.PatternRejection:
    return staging_pb2.PatternRejection(
        pattern_id=r.pattern_id,
        pattern_type=r.pattern_type,
        name=r.name,
        author=r.author,
        revision=r.revision,
        confidence=r.confidence,
        rejected_by=r.rejected_by,
        reason=r.reason,
        reject_time=_timestamp(r.reject_ms),
        expire_time=_timestamp(r.expire_ms),
    )


def conflict_pb(r: ConflictRecord) -> staging_pb2.Conflict:
    return staging_pb2.Conflict(
        conflict_id=r.conflict_id,
        description=r.description,
        positions=r.positions,
        interests={
            agent: staging_pb2.AgentInterests(interests=values)
            for agent, values in r.interests.items()
        },
        batna=r.batna,
        created_by=r.created_by,
        create_time=_timestamp(r.create_ms),
        expire_time=_timestamp(r.expire_ms),
        state=staging_pb2.CONFLICT_STATE_RESOLVED
        if r.resolved
        else staging_pb2.CONFLICT_STATE_OPEN,
        resolution=r.resolution,
        resolved_by=r.resolved_by,
        resolve_time=_timestamp(r.resolve_ms),
    )


class StagingServicer(staging_pb2_grpc.StagingServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._store = StagingStore(
            ctx.redis,
            staged_ttl=ctx.settings.ttl.staged_patterns,
            conflict_ttl=ctx.settings.ttl.conflict_context,
            # Half the message limit leaves room for the proto encoding's overhead.
            page_bytes=ctx.settings.max_message_bytes // 2,
        )
        self._settings = ctx.settings
        self._budget = response_budget(ctx.settings.max_message_bytes)

    async def _fitted(
        self, page: Callable[[int], Awaitable[Page[R]]], size: int, convert: Callable[[R], M]
    ) -> tuple[list[M], str]:
        """A page of at most `size` items (0: the default) whose response fits one message.

        The store stops a page at half a message of stored bytes, but the wire form can be
        larger than the stored JSON (a list of small numbers takes up to 5 times as much), so
        the converted page is measured; when it does not fit, it is read again with as many
        items as fit, which gives the store's own token for the shorter page.
        """
        while True:
            result = await page(size)
            items = [convert(r) for r in result.items]
            fit = fitting(items, self._budget)
            if fit == len(items):
                return items, result.next_page_token
            size = fit

    # -- staging ---------------------------------------------------------------------------

    async def StagePattern(
        self, request: staging_pb2.StagePatternRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.StagePatternResponse:
        v = Violations()
        v.id(request.pattern_id, "pattern_id")
        v.id(request.pattern_type, "pattern_type")
        v.text(request.name, "name", limit=MAX_NAME, required=True)
        v.text(request.description, "description", limit=MAX_TEXT)
        v.confidence(request.confidence, "confidence")
        v.interests(request.interests, "interests")
        v.raise_if_any()
        limit = self._settings.max_pattern_bytes
        code_bytes = len(request.code.encode())
        if code_bytes > limit:
            raise too_large("code", code_bytes, limit, MAX_PATTERN_SETTING)
        if request.context.fields:
            checked_json(request.context, "context", limit, MAX_PATTERN_SETTING)
        principal = current_principal()
        record = await self._store.stage(
            principal.namespace,
            principal.agent_id,
            pattern_id=request.pattern_id,
            pattern_type=request.pattern_type,
            name=request.name,
            description=request.description,
            confidence=request.confidence,
            code=request.code,
            context=json_format.MessageToDict(request.context),  # checked above
            interests=list(request.interests),
        )
        return staging_pb2.StagePatternResponse(pattern=staged_pattern_pb(record))

    async def GetStagedPattern(
        self, request: staging_pb2.GetStagedPatternRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.GetStagedPatternResponse:
        v = Violations()
        v.id(request.pattern_id, "pattern_id")
        v.raise_if_any()
        record = await self._store.get_staged(current_principal().namespace, request.pattern_id)
        return staging_pb2.GetStagedPatternResponse(pattern=staged_pattern_pb(record))

    async def ListStagedPatterns(
        self, request: staging_pb2.ListStagedPatternsRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.ListStagedPatternsResponse:
        v = Violations()
        v.optional_id(request.pattern_type, "pattern_type")
        v.optional_id(request.author, "author")
        minimum = None
        if request.HasField("minimum_confidence"):
            minimum = request.minimum_confidence
            v.confidence(minimum, "minimum_confidence")
        v.page_size(request.page_size)
        v.page_token(request.page_token, STAGED_LIST)
        v.raise_if_any()
        namespace = current_principal().namespace

        def page(size: int) -> Awaitable[Page[PatternRecord]]:
            return self._store.list_staged(
                namespace,
                pattern_type=request.pattern_type,
                author=request.author,
                minimum_confidence=minimum,
                page_size=size,
                page_token=request.page_token,
            )

        patterns, token = await self._fitted(page, request.page_size, staged_pattern_pb)
        return staging_pb2.ListStagedPatternsResponse(patterns=patterns, next_page_token=token)

    # -- review ----------------------------------------------------------------------------

    async def PromotePattern(
        self, request: staging_pb2.PromotePatternRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.PromotePatternResponse:
        v = Violations()
        v.id(request.pattern_id, "pattern_id")
        minimum = None
        if request.HasField("minimum_confidence"):
            minimum = request.minimum_confidence
            v.confidence(minimum, "minimum_confidence")
        revision = request.revision if request.HasField("revision") else None
        if revision is not None and revision < 1:
            v.add("revision", "must be at least 1")
        v.text(request.note, "note", limit=MAX_TEXT)
        v.raise_if_any()
        principal = current_principal()
        record = await self._store.promote(
            principal.namespace,
            principal.agent_id,
            request.pattern_id,
            minimum_confidence=minimum,
            note=request.note,
            revision=revision,
        )
        return staging_pb2.PromotePatternResponse(pattern=pattern_pb(record))

    async def RejectPattern(
        self, request: staging_pb2.RejectPatternRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.RejectPatternResponse:
        v = Violations()
        v.id(request.pattern_id, "pattern_id")
        v.text(request.reason, "reason", limit=MAX_TEXT, required=True)
        v.raise_if_any()
        principal = current_principal()
        record = await self._store.reject(
            principal.namespace, principal.agent_id, request.pattern_id, reason=request.reason
        )
        return staging_pb2.RejectPatternResponse(rejection=rejection_pb(record))

    async def GetPatternRejection(
        self, request: staging_pb2.GetPatternRejectionRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.GetPatternRejectionResponse:
        v = Violations()
        v.id(request.pattern_id, "pattern_id")
        v.raise_if_any()
        record = await self._store.get_rejection(current_principal().namespace, request.pattern_id)
        return staging_pb2.GetPatternRejectionResponse(rejection=rejection_pb(record))

    # -- library ---------------------------------------------------------------------------

    async def GetPattern(
        self, request: staging_pb2.GetPatternRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.GetPatternResponse:
        v = Violations()
        v.id(request.pattern_id, "pattern_id")
        v.raise_if_any()
        record = await self._store.get_pattern(current_principal().namespace, request.pattern_id)
        return staging_pb2.GetPatternResponse(pattern=pattern_pb(record))

    async def ListPatterns(
        self, request: staging_pb2.ListPatternsRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.ListPatternsResponse:
        v = Violations()
        v.optional_id(request.pattern_type, "pattern_type")
        v.text(request.text, "text", limit=MAX_NAME)
        if "\x00" in request.text:
            v.add("text", "must not contain NUL characters")
        v.page_size(request.page_size)
        v.page_token(request.page_token, LIBRARY_LIST)
        v.raise_if_any()
        namespace = current_principal().namespace

        def page(size: int) -> Awaitable[Page[PatternRecord]]:
            return self._store.list_patterns(
                namespace,
                pattern_type=request.pattern_type,
                text=request.text,
                page_size=size,
                page_token=request.page_token,
            )

        patterns, token = await self._fitted(page, request.page_size, pattern_pb)
        return staging_pb2.ListPatternsResponse(patterns=patterns, next_page_token=token)

    # -- conflicts -------------------------------------------------------------------------

    async def CreateConflict(
        self, request: staging_pb2.CreateConflictRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.CreateConflictResponse:
        v = Violations()
        v.id(request.conflict_id, "conflict_id")
        v.text(request.description, "description", limit=MAX_TEXT)
        v.text(request.batna, "batna", limit=MAX_TEXT)
        if not request.positions:
            v.add("positions", "must name at least one agent's position")
        for agent, position in sorted(request.positions.items()):
            v.id(agent, f"positions[{agent!r}]")
            v.text(position, f"positions[{agent!r}]", limit=MAX_TEXT, required=True)
        for agent, interests in sorted(request.interests.items()):
            if agent not in request.positions:
                v.add(f"interests[{agent!r}]", "agent has no entry in positions")
            v.interests(interests.interests, f"interests[{agent!r}]")
        v.raise_if_any()
        limit = self._settings.max_conflict_bytes
        for name in ("positions", "interests"):
            size = staging_pb2.CreateConflictRequest(**{name: getattr(request, name)}).ByteSize()
            if size > limit:
                raise too_large(name, size, limit, MAX_CONFLICT_SETTING)
        principal = current_principal()
        record = await self._store.create_conflict(
            principal.namespace,
            principal.agent_id,
            conflict_id=request.conflict_id,
            description=request.description,
            positions=dict(request.positions),
            interests={agent: list(i.interests) for agent, i in request.interests.items()},
            batna=request.batna,
        )
        return staging_pb2.CreateConflictResponse(conflict=conflict_pb(record))

    async def GetConflict(
        self, request: staging_pb2.GetConflictRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.GetConflictResponse:
        v = Violations()
        v.id(request.conflict_id, "conflict_id")
        v.raise_if_any()
        record = await self._store.get_conflict(current_principal().namespace, request.conflict_id)
        return staging_pb2.GetConflictResponse(conflict=conflict_pb(record))

    async def ListConflicts(
        self, request: staging_pb2.ListConflictsRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.ListConflictsResponse:
        v = Violations()
        resolved: bool | None = None
        if request.state == staging_pb2.CONFLICT_STATE_OPEN:
            resolved = False
        elif request.state == staging_pb2.CONFLICT_STATE_RESOLVED:
            resolved = True
        elif request.state != staging_pb2.CONFLICT_STATE_UNSPECIFIED:
            v.add("state", "unknown conflict state")
        v.page_size(request.page_size)
        v.page_token(request.page_token, CONFLICT_LIST)
        v.raise_if_any()
        namespace = current_principal().namespace

        def page(size: int) -> Awaitable[Page[ConflictRecord]]:
            return self._store.list_conflicts(
                namespace,
                resolved=resolved,
                page_size=size,
                page_token=request.page_token,
            )

        conflicts, token = await self._fitted(page, request.page_size, conflict_pb)
        return staging_pb2.ListConflictsResponse(conflicts=conflicts, next_page_token=token)

    async def ResolveConflict(
        self, request: staging_pb2.ResolveConflictRequest, context: grpc.aio.ServicerContext
    ) -> staging_pb2.ResolveConflictResponse:
        v = Violations()
        v.id(request.conflict_id, "conflict_id")
        v.text(request.resolution, "resolution", limit=MAX_TEXT, required=True)
        v.raise_if_any()
        principal = current_principal()
        record = await self._store.resolve_conflict(
            principal.namespace,
            principal.agent_id,
            request.conflict_id,
            resolution=request.resolution,
        )
        return staging_pb2.ResolveConflictResponse(conflict=conflict_pb(record))


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    staging_pb2_grpc.add_StagingServiceServicer_to_server(StagingServicer(ctx), server)  # type: ignore[no-untyped-call]
    return staging_pb2.DESCRIPTOR.services_by_name["StagingService"].full_name
