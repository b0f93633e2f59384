"""AdminService: WhoAmI, GetServerStats and token administration (proto/agentcoord/v1/admin.proto).

Token RPCs act only in the caller's namespace: a STEWARD administers its own team's tokens
and nothing else (DESIGN.md "Identity and tiers"). The tier check itself is the interceptor's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc
from agentcoord.v1 import access_pb2, admin_pb2, admin_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ..errors import PermissionDenied, invalid_field
from ..identity import current_principal
from ..store.admin import AdminStore, NamespaceCounts
from ..store.keys import validate_id
from ..store.tokens import TokenRecord, TokenStore
from .signals import hub_for
from .values import fitting, response_budget

if TYPE_CHECKING:
    from . import ServiceContext

PB2 = admin_pb2

MAX_DESCRIPTION_CHARS = 256
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_LIFETIME_S = 10 * 365 * 24 * 3600  # ten years: a typo guard, not a policy


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def token_info(record: TokenRecord) -> admin_pb2.TokenInfo:
    info = admin_pb2.TokenInfo(
        token_id=record.token_id,
        agent_id=record.agent_id,
        namespace=record.namespace,
        tier=record.tier,  # type: ignore[arg-type]
        description=record.description,
        create_time=_timestamp(record.created_ms),
        issued_by=record.issued_by,
    )
    if record.expires_ms:
        info.expire_time.CopyFrom(_timestamp(record.expires_ms))
    return info


def namespace_stats(
    namespace: str, counts: NamespaceCounts, live_subscriptions: int
) -> admin_pb2.NamespaceStats:
    queues = [
        admin_pb2.TaskQueueStats(
            task_type=t.task_type,
            pending=t.pending,
            backing_off=t.backing_off,
            claimed=t.claimed,
            completed=t.completed,
        )
        for t in counts.task_types
    ]
    return admin_pb2.NamespaceStats(
        namespace=namespace,
        memory_entries=counts.memory_entries,
        memory_owners=counts.memory_owners,
        sessions=counts.sessions,
        staged_patterns=counts.staged_patterns,
        library_patterns=counts.library_patterns,
        open_conflicts=counts.open_conflicts,
        tasks=admin_pb2.TaskCounts(
            pending=sum(q.pending for q in queues),
            backing_off=sum(q.backing_off for q in queues),
            claimed=sum(q.claimed for q in queues),
            dead_letters=counts.dead_letters,
            completed=counts.completed_tasks,
        ),
        task_queues=queues,
        retained_signals=counts.retained_signals,
        live_subscriptions=live_subscriptions,
        truncated=counts.truncated,
    )


def _page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise invalid_field("page_size", f"must be 0..{MAX_PAGE_SIZE}", reason="INVALID_PAGE_SIZE")
    return value or DEFAULT_PAGE_SIZE


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._store = AdminStore(ctx.redis, task_ttl=ctx.settings.ttl.task)
        self._max_message_bytes = ctx.settings.max_message_bytes
        self._tokens = TokenStore(ctx.redis)

    async def WhoAmI(
        self, request: admin_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.WhoAmIResponse:
        return admin_pb2.WhoAmIResponse(principal=current_principal().to_proto())

    async def GetServerStats(
        self, request: admin_pb2.GetServerStatsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetServerStatsResponse:
        namespace = current_principal().namespace
        stats = await self._store.stats(namespace)
        mode = admin_pb2.REDIS_MODE_CLUSTER if stats.cluster_enabled else self._ctx.redis_mode
        uptime = duration_pb2.Duration()
        uptime.FromNanoseconds(int((time.monotonic() - self._ctx.started_at) * 1e9))
        subscriptions = hub_for(self._ctx).stats().get(namespace, 0)
        return admin_pb2.GetServerStatsResponse(
            server_version=self._ctx.server_version,
            redis_mode=mode,  # type: ignore[arg-type]
            redis_version=stats.redis_version,
            used_memory_bytes=stats.used_memory_bytes,
            uptime=uptime,
            namespace_stats=namespace_stats(namespace, stats.namespace, subscriptions),
            redis_nodes=stats.nodes,
        )

    async def IssueToken(
        self, request: admin_pb2.IssueTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.IssueTokenResponse:
        principal = current_principal()
        if request.namespace and request.namespace != principal.namespace:
            raise PermissionDenied(
                "a STEWARD issues tokens only in its own namespace",
                reason="NAMESPACE_MISMATCH",
            )
        validate_id(request.agent_id, "agent_id")
        if request.tier not in (
            access_pb2.ACCESS_TIER_OBSERVER,
            access_pb2.ACCESS_TIER_CONTRIBUTOR,
            access_pb2.ACCESS_TIER_VALIDATOR,
            access_pb2.ACCESS_TIER_STEWARD,
        ):
            raise invalid_field("tier", "must be OBSERVER, CONTRIBUTOR, VALIDATOR or STEWARD")
        lifetime_s = None
        if request.HasField("lifetime"):
            lifetime_s = request.lifetime.ToNanoseconds() / 1e9
            if not 1 <= lifetime_s <= MAX_LIFETIME_S:
                raise invalid_field("lifetime", "must be between 1 second and 10 years")
        if len(request.description) > MAX_DESCRIPTION_CHARS:
            raise invalid_field(
                "description", f"must be at most {MAX_DESCRIPTION_CHARS} characters"
            )
        token, record = await self._tokens.issue(
            principal.namespace,
            request.agent_id,
            request.tier,
            lifetime_s=lifetime_s,
            description=request.description,
            issued_by=principal.agent_id,
        )
        return admin_pb2.IssueTokenResponse(token=token, info=token_info(record))

    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeTokenResponse:
        validate_id(request.token_id, "token_id")
        record = await self._tokens.revoke(current_principal().namespace, request.token_id)
        return admin_pb2.RevokeTokenResponse(info=token_info(record))

    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTokensResponse:
        page_size = _page_size(request.page_size)
        if request.page_token:
            validate_id(request.page_token, "page_token")
        records, next_after = await self._tokens.list(
            current_principal().namespace, page_size, request.page_token
        )
        tokens = [token_info(r) for r in records]
        fit = fitting(tokens, response_budget(self._max_message_bytes))
        if fit < len(tokens):  # the token is the last token id listed
            tokens, next_after = tokens[:fit], tokens[fit - 1].token_id
        return admin_pb2.ListTokensResponse(tokens=tokens, next_page_token=next_after)


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(ctx), server)  # type: ignore[no-untyped-call]
    return admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
