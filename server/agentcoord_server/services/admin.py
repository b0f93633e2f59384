"""AdminService: WhoAmI, GetServerStats, token and namespace administration
(proto/agentcoord/v1/admin.proto).

Token RPCs act only in the caller's namespace: a STEWARD administers its own team's tokens
and nothing else (DESIGN.md "Identity and tiers"). The OPERATOR (DESIGN.md "Tenancy") names
the namespace whose tokens it administers, and creates, lists and deletes namespaces; it never
reaches their data (the interceptor refuses it every RPC that is not operator_callable or
OPERATOR-only). The tier check itself is the interceptor's.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc
from agentcoord.v1 import access_pb2, admin_pb2, admin_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from ..errors import InvalidArgument, PermissionDenied, invalid_field
from ..identity import OPERATOR, OPERATOR_NAMESPACE, Principal, current_principal
from ..store.admin import AdminStore, NamespaceCounts
from ..store.keys import validate_id
from ..store.namespaces import DELETING, NamespaceRecord, NamespaceStore
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


MAX_STATS_NAMESPACES = 100
"""Namespaces whose stats the OPERATOR's GetServerStats returns (two round trips each)."""


def namespace_message(record: NamespaceRecord) -> admin_pb2.Namespace:
    state = (
        admin_pb2.NAMESPACE_STATE_DELETING
        if record.state == DELETING
        else admin_pb2.NAMESPACE_STATE_ACTIVE
    )
    return admin_pb2.Namespace(
        name=record.name,
        state=state,
        create_time=_timestamp(record.created_ms),
        created_by=record.created_by,
        description=record.description,
    )


def target_namespace(principal: Principal, requested: str) -> str:
    """The namespace a token RPC acts in: the caller's own unless the OPERATOR names another.

    Raises PermissionDenied (NAMESPACE_MISMATCH) when a non-operator names another namespace,
    InvalidArgument (INVALID_ID) for a malformed name.
    """
    if not requested or requested == principal.namespace:
        return principal.namespace
    if principal.tier != OPERATOR:
        raise PermissionDenied(
            "a STEWARD administers tokens only in its own namespace",
            reason="NAMESPACE_MISMATCH",
        )
    return validate_id(requested, "namespace")


def validate_new_namespace(name: str) -> str:
    validate_id(name, "name")
    if name.startswith("_"):
        raise InvalidArgument(
            "namespace names starting with '_' are reserved",
            reason="RESERVED_NAMESPACE",
            field_violations=[("name", "must not start with '_'")],
        )
    return name


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
        self._namespaces = NamespaceStore(ctx.redis, self._tokens)

    async def WhoAmI(
        self, request: admin_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.WhoAmIResponse:
        return admin_pb2.WhoAmIResponse(principal=current_principal().to_proto())

    async def GetServerStats(
        self, request: admin_pb2.GetServerStatsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetServerStatsResponse:
        principal = current_principal()
        namespace = principal.namespace
        stats = await self._store.stats(namespace)
        mode = admin_pb2.REDIS_MODE_CLUSTER if stats.cluster_enabled else self._ctx.redis_mode
        uptime = duration_pb2.Duration()
        uptime.FromNanoseconds(int((time.monotonic() - self._ctx.started_at) * 1e9))
        live = hub_for(self._ctx).stats()
        response = admin_pb2.GetServerStatsResponse(
            server_version=self._ctx.server_version,
            redis_mode=mode,  # type: ignore[arg-type]
            redis_version=stats.redis_version,
            used_memory_bytes=stats.used_memory_bytes,
            uptime=uptime,
            redis_nodes=stats.nodes,
        )
        if principal.tier != OPERATOR:
            response.namespace_stats.CopyFrom(
                namespace_stats(namespace, stats.namespace, live.get(namespace, 0))
            )
            return response
        # Server-wide for the operator: every registered namespace's counts (bounded).
        records, more = await self._namespaces.list(MAX_STATS_NAMESPACES)
        # Only the counts: the Redis-wide part (INFO, the nodes) is the same for every namespace.
        counted = await asyncio.gather(*(self._store.count(record.name) for record in records))
        for record, counts in zip(records, counted, strict=True):
            response.namespaces.append(
                namespace_stats(record.name, counts, live.get(record.name, 0))
            )
        response.namespaces_truncated = bool(more)
        return response

    async def IssueToken(
        self, request: admin_pb2.IssueTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.IssueTokenResponse:
        principal = current_principal()
        namespace = target_namespace(principal, request.namespace)
        validate_id(request.agent_id, "agent_id")
        if namespace == OPERATOR_NAMESPACE:
            # Only the operator reaches its own namespace (target_namespace), and it holds
            # only OPERATOR tokens.
            if request.tier != access_pb2.ACCESS_TIER_OPERATOR:
                raise invalid_field("tier", "the operator's namespace holds only OPERATOR tokens")
        elif request.tier not in (
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
            namespace,
            request.agent_id,
            request.tier,
            lifetime_s=lifetime_s,
            description=request.description,
            issued_by=principal.agent_id,
            # The operator issues only into registered namespaces; a STEWARD's own namespace
            # may predate the registry.
            registered_only=principal.tier == OPERATOR and namespace != OPERATOR_NAMESPACE,
            max_tokens=0 if namespace == OPERATOR_NAMESPACE else self._ctx.settings.quota_tokens,
        )
        return admin_pb2.IssueTokenResponse(token=token, info=token_info(record))

    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeTokenResponse:
        namespace = target_namespace(current_principal(), request.namespace)
        validate_id(request.token_id, "token_id")
        record = await self._tokens.revoke(namespace, request.token_id)
        return admin_pb2.RevokeTokenResponse(info=token_info(record))

    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTokensResponse:
        namespace = target_namespace(current_principal(), request.namespace)
        page_size = _page_size(request.page_size)
        if request.page_token:
            validate_id(request.page_token, "page_token")
        records, next_after = await self._tokens.list(namespace, page_size, request.page_token)
        tokens = [token_info(r) for r in records]
        fit = fitting(tokens, response_budget(self._max_message_bytes))
        if fit < len(tokens):  # the token is the last token id listed
            tokens, next_after = tokens[:fit], tokens[fit - 1].token_id
        return admin_pb2.ListTokensResponse(tokens=tokens, next_page_token=next_after)

    async def CreateNamespace(
        self, request: admin_pb2.CreateNamespaceRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateNamespaceResponse:
        name = validate_new_namespace(request.name)
        if len(request.description) > MAX_DESCRIPTION_CHARS:
            raise invalid_field(
                "description", f"must be at most {MAX_DESCRIPTION_CHARS} characters"
            )
        record = await self._namespaces.create(
            name, created_by=current_principal().agent_id, description=request.description
        )
        return admin_pb2.CreateNamespaceResponse(namespace=namespace_message(record))

    async def ListNamespaces(
        self, request: admin_pb2.ListNamespacesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListNamespacesResponse:
        page_size = _page_size(request.page_size)
        if request.page_token:
            validate_id(request.page_token, "page_token")
        records, next_after = await self._namespaces.list(page_size, request.page_token)
        return admin_pb2.ListNamespacesResponse(
            namespaces=[namespace_message(r) for r in records], next_page_token=next_after
        )

    async def DeleteNamespace(
        self, request: admin_pb2.DeleteNamespaceRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DeleteNamespaceResponse:
        name = validate_new_namespace(request.name)
        cache = self._ctx.settings.auth_cache_seconds
        record = await self._namespaces.delete(
            name, settle_seconds=max(cache, 0.1), auth_cache_seconds=cache
        )
        return admin_pb2.DeleteNamespaceResponse(namespace=namespace_message(record))

    async def _quota_view(
        self, namespace: str
    ) -> tuple[admin_pb2.NamespaceQuota, list[admin_pb2.QuotaUsage]]:
        limits, usage = await self._namespaces.quotas(namespace)
        settings = self._ctx.settings
        defaults = {
            "tokens": settings.quota_tokens,
            "signals_per_second": settings.quota_signals_per_second,
            "pending_tasks": settings.quota_pending_tasks,
            "live_subscriptions": settings.quota_live_subscriptions,
            "memory_entries": settings.quota_memory_entries,
            "memory_bytes": settings.quota_memory_bytes,
        }
        effective = {q: limits[q] or defaults[q] for q in limits}
        rate = effective["signals_per_second"]
        signals_used = 0
        if rate and "signal_bucket" in usage:
            elapsed_ms = max(0.0, time.time() * 1000 - usage["signal_bucket_ms"])
            left = min(rate, usage["signal_bucket"] + elapsed_ms * rate / 1000)
            signals_used = rate - int(left)
        quota = admin_pb2.NamespaceQuota(
            max_tokens=limits["tokens"],
            max_signals_per_second=limits["signals_per_second"],
            max_pending_tasks=limits["pending_tasks"],
            max_live_subscriptions=limits["live_subscriptions"],
            max_memory_entries=limits["memory_entries"],
            max_memory_bytes=limits["memory_bytes"],
        )
        return quota, [
            admin_pb2.QuotaUsage(
                name="tokens", limit=effective["tokens"], used=int(usage["tokens"])
            ),
            admin_pb2.QuotaUsage(name="signals_per_second", limit=rate, used=signals_used),
            admin_pb2.QuotaUsage(
                name="pending_tasks",
                limit=effective["pending_tasks"],
                used=int(usage["pending_tasks"]),
            ),
            admin_pb2.QuotaUsage(
                name="live_subscriptions",
                limit=effective["live_subscriptions"],
                used=int(usage["live_subscriptions"]),
            ),
            *(
                admin_pb2.QuotaUsage(name=name, limit=effective[name], used=int(usage[name]))
                for name in ("memory_entries", "memory_bytes")
            ),
        ]

    async def GetNamespaceQuota(
        self, request: admin_pb2.GetNamespaceQuotaRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetNamespaceQuotaResponse:
        namespace = target_namespace(current_principal(), request.namespace)
        quota, usage = await self._quota_view(namespace)
        return admin_pb2.GetNamespaceQuotaResponse(namespace=namespace, quota=quota, usage=usage)

    async def UpdateNamespaceQuota(
        self, request: admin_pb2.UpdateNamespaceQuotaRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UpdateNamespaceQuotaResponse:
        name = validate_id(request.namespace, "namespace")
        limits = {
            "tokens": request.quota.max_tokens,
            "signals_per_second": request.quota.max_signals_per_second,
            "pending_tasks": request.quota.max_pending_tasks,
            "live_subscriptions": request.quota.max_live_subscriptions,
            "memory_entries": request.quota.max_memory_entries,
            "memory_bytes": request.quota.max_memory_bytes,
        }
        for quota_name, limit in limits.items():
            if limit < 0:
                field = "quota.max_" + quota_name
                raise invalid_field(field, "must be 0 (the server's default) or more")
        await self._namespaces.set_quotas(name, limits)
        quota, usage = await self._quota_view(name)
        return admin_pb2.UpdateNamespaceQuotaResponse(namespace=name, quota=quota, usage=usage)


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(ctx), server)  # type: ignore[no-untyped-call]
    return admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
