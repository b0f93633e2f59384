"""AdminService calls: who_am_i, get_server_stats, token administration (STEWARD, or the
OPERATOR naming the namespace) and namespace administration (OPERATOR)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

from agentcoord.v1 import access_pb2, admin_pb2, admin_pb2_grpc

from .._transport import AsyncTransport
from ._base import ServiceClient

Tier = int | str  # an access_pb2.AccessTier value, or its name: "CONTRIBUTOR"


def _tier(value: Tier) -> access_pb2.AccessTier.ValueType:
    """`"contributor"`, `"ACCESS_TIER_CONTRIBUTOR"` or `access_pb2.ACCESS_TIER_CONTRIBUTOR`."""
    if isinstance(value, int):
        return access_pb2.AccessTier.ValueType(value)
    name = value.strip().upper()
    if not name.startswith("ACCESS_TIER_"):
        name = "ACCESS_TIER_" + name
    return access_pb2.AccessTier.Value(name)


class AdminClient(ServiceClient):
    def __init__(self, transport: AsyncTransport) -> None:
        super().__init__(transport)
        self._stub = admin_pb2_grpc.AdminServiceStub(transport.channel)

    async def who_am_i(self) -> access_pb2.Principal:
        """The principal the server authenticates this client as."""
        response = await self._unary(self._stub.WhoAmI, admin_pb2.WhoAmIRequest())
        return response.principal  # type: ignore[no-any-return]

    async def get_server_stats(self) -> admin_pb2.GetServerStatsResponse:
        """Server version, Redis mode and version, used memory (bytes), uptime, and what the
        caller's namespace holds (`namespace_stats`: working-memory entries, sessions, staged
        and library patterns, open conflicts, tasks by state and per type, retained signals,
        this server's live subscriptions). OBSERVER or above."""
        return await self._unary(self._stub.GetServerStats, admin_pb2.GetServerStatsRequest())  # type: ignore[no-any-return]

    async def issue_token(
        self,
        agent_id: str,
        tier: Tier,
        *,
        lifetime: float | datetime.timedelta | None = None,
        description: str = "",
        namespace: str = "",
    ) -> admin_pb2.IssueTokenResponse:
        """Issues a bearer token for `agent_id` at `tier` in the caller's namespace. STEWARD,
        or the OPERATOR naming a registered namespace (e.g. its first STEWARD).

        Args:
            lifetime: seconds (or a timedelta) the token works, at least 1 s; None: until revoked.
            description: up to 256 characters, shown by list_tokens.
            namespace: empty or the caller's own; any other is refused (PERMISSION_DENIED)
                unless the caller is the OPERATOR (NOT_FOUND NAMESPACE_NOT_FOUND if it is not
                registered, FAILED_PRECONDITION NAMESPACE_DELETING while it is deleted).

        Returns the response: `.token` is the secret (shown only here), `.info` its TokenInfo.
        Raises AgentcoordError: INVALID_ARGUMENT (bad agent id, tier, lifetime, description),
        PERMISSION_DENIED (not a STEWARD: TIER_TOO_LOW, raised locally; other namespace:
        NAMESPACE_MISMATCH).
        """
        request = admin_pb2.IssueTokenRequest(
            agent_id=agent_id, namespace=namespace, tier=_tier(tier), description=description
        )
        if lifetime is not None:
            seconds = (
                lifetime.total_seconds()
                if isinstance(lifetime, datetime.timedelta)
                else float(lifetime)
            )
            request.lifetime.FromNanoseconds(round(seconds * 1e9))
        return await self._unary(self._stub.IssueToken, request)  # type: ignore[no-any-return]

    async def revoke_token(self, token_id: str, *, namespace: str = "") -> admin_pb2.TokenInfo:
        """Revokes a token of the caller's namespace by id; returns what was revoked. STEWARD.

        Calls with it fail (UNAUTHENTICATED) within the server's auth cache bound (≤ 5 s), open
        streams end within the same bound. Raises AgentcoordError NOT_FOUND (TOKEN_NOT_FOUND)
        for an id this namespace does not have. `namespace`: as in issue_token.
        """
        response = await self._unary(
            self._stub.RevokeToken,
            admin_pb2.RevokeTokenRequest(token_id=token_id, namespace=namespace),
        )
        return response.info  # type: ignore[no-any-return]

    async def list_tokens(
        self, *, page_size: int = 0, page_token: str = "", namespace: str = ""
    ) -> admin_pb2.ListTokensResponse:
        """One page (page_size 1..1000, 0: 100) of the caller's namespace's live tokens, in issue
        order, without secrets; `.next_page_token` is empty on the last page. STEWARD.
        `namespace`: as in issue_token."""
        return await self._unary(  # type: ignore[no-any-return]
            self._stub.ListTokens,
            admin_pb2.ListTokensRequest(
                page_size=page_size, page_token=page_token, namespace=namespace
            ),
        )

    async def iter_tokens(
        self, *, page_size: int = 0, namespace: str = ""
    ) -> AsyncIterator[admin_pb2.TokenInfo]:
        """Every live token of the caller's namespace (or, for the OPERATOR, of `namespace`),
        fetching page after page. STEWARD."""
        page_token = ""
        while True:
            page = await self.list_tokens(
                page_size=page_size, page_token=page_token, namespace=namespace
            )
            for info in page.tokens:
                yield info
            page_token = page.next_page_token
            if not page_token:
                return

    async def create_namespace(self, name: str, *, description: str = "") -> admin_pb2.Namespace:
        """Registers namespace `name` (a team) and returns it. OPERATOR.

        Raises AgentcoordError: INVALID_ARGUMENT (bad name; RESERVED_NAMESPACE for a name
        starting with '_'), ALREADY_EXISTS (NAMESPACE_EXISTS), FAILED_PRECONDITION
        (NAMESPACE_DELETING while a deletion of it is unfinished).
        """
        response = await self._unary(
            self._stub.CreateNamespace,
            admin_pb2.CreateNamespaceRequest(name=name, description=description),
        )
        return response.namespace  # type: ignore[no-any-return]

    async def list_namespaces(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListNamespacesResponse:
        """One page (page_size 1..1000, 0: 100) of registered namespaces in name order;
        `.next_page_token` is empty on the last page. OPERATOR."""
        return await self._unary(  # type: ignore[no-any-return]
            self._stub.ListNamespaces,
            admin_pb2.ListNamespacesRequest(page_size=page_size, page_token=page_token),
        )

    async def iter_namespaces(self, *, page_size: int = 0) -> AsyncIterator[admin_pb2.Namespace]:
        """Every registered namespace, fetching page after page. OPERATOR."""
        page_token = ""
        while True:
            page = await self.list_namespaces(page_size=page_size, page_token=page_token)
            for namespace in page.namespaces:
                yield namespace
            page_token = page.next_page_token
            if not page_token:
                return

    async def delete_namespace(self, name: str) -> admin_pb2.Namespace:
        """Deletes namespace `name`: revokes its tokens and removes every key it holds; returns
        it as it was. Takes about twice the server's auth cache bound (≤ 10 s) plus the time to
        remove its keys; if interrupted, call again to finish. OPERATOR.

        Raises AgentcoordError NOT_FOUND (NAMESPACE_NOT_FOUND) for a namespace not registered.
        """
        response = await self._unary(
            self._stub.DeleteNamespace, admin_pb2.DeleteNamespaceRequest(name=name)
        )
        return response.namespace  # type: ignore[no-any-return]

    async def get_namespace_quota(self, namespace: str = "") -> admin_pb2.GetNamespaceQuotaResponse:
        """The namespace's quotas as set (`.quota`; 0 fields: the server's default) and each
        quota's effective limit and current use (`.usage`: name, limit, used). STEWARD for its
        own namespace (`namespace` empty), the OPERATOR for any."""
        return await self._unary(  # type: ignore[no-any-return]
            self._stub.GetNamespaceQuota, admin_pb2.GetNamespaceQuotaRequest(namespace=namespace)
        )

    async def update_namespace_quota(
        self,
        namespace: str,
        *,
        max_tokens: int = 0,
        max_signals_per_second: int = 0,
        max_pending_tasks: int = 0,
        max_live_subscriptions: int = 0,
        max_memory_entries: int = 0,
        max_memory_bytes: int = 0,
    ) -> admin_pb2.UpdateNamespaceQuotaResponse:
        """Sets a registered namespace's quotas; every one is set (0: the server's default,
        from its --quota-* flags). Returns them as get_namespace_quota does. OPERATOR.

        Raises AgentcoordError NOT_FOUND (NAMESPACE_NOT_FOUND), INVALID_ARGUMENT (a negative
        limit). Calls over a quota fail with RESOURCE_EXHAUSTED QUOTA_EXCEEDED.
        """
        quota = admin_pb2.NamespaceQuota(
            max_tokens=max_tokens,
            max_signals_per_second=max_signals_per_second,
            max_pending_tasks=max_pending_tasks,
            max_live_subscriptions=max_live_subscriptions,
            max_memory_entries=max_memory_entries,
            max_memory_bytes=max_memory_bytes,
        )
        return await self._unary(  # type: ignore[no-any-return]
            self._stub.UpdateNamespaceQuota,
            admin_pb2.UpdateNamespaceQuotaRequest(namespace=namespace, quota=quota),
        )
