"""Who a call runs as: the Principal, how it is established, and what tier each RPC requires.

The identity interceptor is the one place a principal is established (DESIGN.md, "Identity and
tiers"); servicers read it with `current_principal()` and never from request fields.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

from agentcoord.v1 import access_pb2

from .errors import Unauthenticated

AccessTier = int  # an access_pb2.AccessTier value; ordered OBSERVER < … < STEWARD < OPERATOR

OPERATOR = access_pb2.ACCESS_TIER_OPERATOR
OPERATOR_NAMESPACE = "_operator"
"""The namespace of OPERATOR tokens: reserved (CreateNamespace refuses '_' names), holds no data."""

ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""Agent ids, namespaces and every other id that becomes part of a Redis key (DESIGN.md)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: agent id, namespace (team) and access tier."""

    agent_id: str
    namespace: str
    tier: AccessTier

    def to_proto(self) -> access_pb2.Principal:
        tier = access_pb2.AccessTier.ValueType(self.tier)
        return access_pb2.Principal(agent_id=self.agent_id, namespace=self.namespace, tier=tier)


_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("agentcoord_principal")


def current_principal() -> Principal:
    """The principal of the RPC being served. Raises LookupError outside an authenticated call."""
    return _principal.get()


def bind_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _principal.set(principal)


def tier_name(tier: AccessTier) -> str:
    """`ACCESS_TIER_CONTRIBUTOR` → `CONTRIBUTOR`."""
    return access_pb2.AccessTier.Name(tier).removeprefix("ACCESS_TIER_")  # type: ignore[arg-type]


def parse_tier(value: str) -> AccessTier:
    """Accepts `CONTRIBUTOR`, `contributor`, `ACCESS_TIER_CONTRIBUTOR` or `2`.

    Raises ValueError for anything else, including UNSPECIFIED.
    """
    text = value.strip().upper()
    if text.isdigit():
        tier = int(text)
        if tier in access_pb2.AccessTier.values() and tier != 0:
            return tier
        raise ValueError(f"unknown access tier {value!r}")
    name = text if text.startswith("ACCESS_TIER_") else f"ACCESS_TIER_{text}"
    if name not in access_pb2.AccessTier.keys() or name == "ACCESS_TIER_UNSPECIFIED":
        raise ValueError(f"unknown access tier {value!r}")
    return access_pb2.AccessTier.Value(name)


def required_tiers(modules: Iterable[ModuleType]) -> dict[str, AccessTier]:
    """Maps each RPC path (`/agentcoord.v1.AdminService/WhoAmI`) to its declared required_tier.

    Read once at start from the generated `_pb2` modules' descriptors; a method that declares
    none maps to ACCESS_TIER_UNSPECIFIED, which the identity interceptor refuses (fail closed).
    """
    tiers: dict[str, AccessTier] = {}
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                tier = options.Extensions[access_pb2.required_tier]
                tiers[f"/{service.full_name}/{method.name}"] = tier
    return tiers


def operator_callable(modules: Iterable[ModuleType]) -> frozenset[str]:
    """The RPC paths that declare `(agentcoord.v1.operator_callable) = true`, read once at start
    from the descriptors like `required_tiers`."""
    paths = set()
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.GetOptions().Extensions[access_pb2.operator_callable]:
                    paths.add(f"/{service.full_name}/{method.name}")
    return frozenset(paths)


class Authenticator(Protocol):
    """Turns a call's invocation metadata into a Principal, or raises Unauthenticated.

    `revocable` says whether a principal can be taken back while its call runs (then open
    streams are re-checked with `fresh=True`, which must bypass any cache).
    """

    revocable: bool

    async def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], *, fresh: bool = False
    ) -> Principal: ...


def metadata_value(metadata: Sequence[tuple[str, str | bytes]], key: str) -> str | None:
    for k, v in metadata:
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


class DevIdentityAuthenticator:
    """`--insecure-dev-identity`: trusts `x-agent-id`, `x-namespace`, `x-access-tier` metadata.

    For local development only: anyone who can reach the port can claim any identity, which is
    why the server refuses to bind a non-loopback address in this mode and warns at start.
    `x-namespace` defaults to `default`; the other two are required.
    """

    revocable = False

    async def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], *, fresh: bool = False
    ) -> Principal:
        agent_id = metadata_value(metadata, "x-agent-id")
        namespace = metadata_value(metadata, "x-namespace") or "default"
        raw_tier = metadata_value(metadata, "x-access-tier")
        if not agent_id or not raw_tier:
            raise Unauthenticated(
                "development identity needs x-agent-id and x-access-tier metadata",
                reason="MISSING_IDENTITY",
            )
        if not ID_RE.fullmatch(agent_id) or not ID_RE.fullmatch(namespace):
            raise Unauthenticated(
                "x-agent-id or x-namespace is not a valid id", reason="INVALID_IDENTITY"
            )
        try:
            tier = parse_tier(raw_tier)
        except ValueError:
            raise Unauthenticated(
                f"unknown access tier {raw_tier!r}", reason="INVALID_IDENTITY"
            ) from None
        return Principal(agent_id, namespace, tier)


class NoAuthenticator:
    """Refuses every call: used when no way of authenticating is configured."""

    revocable = False

    async def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], *, fresh: bool = False
    ) -> Principal:
        raise Unauthenticated("no credentials accepted by this server", reason="NO_AUTHENTICATION")


MAX_TOKEN_CHARS = 512
"""Longer `authorization` values are refused before hashing (issued tokens have 47 chars)."""


def token_digest(token: str) -> str:
    """The SHA-256 hex digest of a bearer token: all the server ever stores of it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a token grants: its principal, its id and hash, and when it expires (Unix seconds,
    None: never)."""

    principal: Principal
    token_id: str
    digest: str
    expires_at: float | None = None


class TokenLookup(Protocol):
    """Finds the grant stored under a token's SHA-256 hex digest (store/tokens.TokenStore)."""

    async def lookup(self, digest: str) -> TokenGrant | None: ...


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """The token of an `authorization: Bearer <token>` header.

    Raises Unauthenticated: MISSING_TOKEN without the header, INVALID_TOKEN if it is not a
    bearer token of sane length. Messages never contain the token.
    """
    value = metadata_value(metadata, "authorization")
    if not value:
        raise Unauthenticated(
            "this call needs an `authorization: Bearer <token>` header", reason="MISSING_TOKEN"
        )
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated(
            "the authorization header is not `Bearer <token>`", reason="INVALID_TOKEN"
        )
    return token


class TokenAuthenticator:
    """`authorization: Bearer <token>` → the principal the token was issued for.

    The token is hashed (SHA-256) and its grant looked up by that hash; the stored hash is
    compared to the computed one in constant time (hmac.compare_digest). Grants are cached
    in-process for at most `cache_seconds` (≤ 5 s: DESIGN.md bounds how stale a revocation may
    be), at most `max_entries` (oldest evicted). The caches are keyed by the token as presented,
    so a cached call computes no hash: they live in this process's memory only, like the
    request that carried the token, and are never written, logged or sent anywhere (Redis
    holds only hashes). A token's own expiry is checked on every call, cached or not.

    Hashes found in no grant are remembered too (a negative cache, at most `max_entries`,
    oldest evicted), for `negative_cache_seconds` (default and at most `cache_seconds`), so a
    flood of calls with an unknown token costs one Redis lookup per token and bound, not one
    per call. The bound is also how long a token can be refused after it was issued, if a
    call presented it before (only possible with a secret chosen in advance, such as
    `--bootstrap-token`: issued tokens are random). `fresh=True` bypasses both caches.

    Raises Unauthenticated: MISSING_TOKEN, INVALID_TOKEN, UNKNOWN_TOKEN (never issued, or
    revoked), TOKEN_EXPIRED.
    """

    revocable = True

    def __init__(
        self,
        tokens: TokenLookup,
        *,
        cache_seconds: float = 5.0,
        max_entries: int = 10_000,
        negative_cache_seconds: float | None = None,
    ) -> None:
        if not 0 <= cache_seconds <= 5:
            raise ValueError("the auth cache bound must be between 0 and 5 seconds")
        if negative_cache_seconds is None:
            negative_cache_seconds = cache_seconds
        if not 0 <= negative_cache_seconds <= cache_seconds:
            raise ValueError("the negative cache bound must be between 0 and the auth cache's")
        self._tokens = tokens
        self.cache_seconds = cache_seconds
        self.negative_cache_seconds = negative_cache_seconds
        self._max_entries = max_entries
        # token → (grant, when it was looked up: time.monotonic()).
        self._cache: dict[str, tuple[TokenGrant, float]] = {}
        # token → when it was found unknown (time.monotonic()); insertion order is age order.
        self._unknown: dict[str, float] = {}

    async def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], *, fresh: bool = False
    ) -> Principal:
        token = bearer_token(metadata)
        now = time.monotonic()
        cached = None if fresh else self._cache.get(token)
        if cached is not None and now - cached[1] < self.cache_seconds:
            grant = cached[0]
        else:
            self._cache.pop(token, None)
            if not fresh:
                unknown_since = self._unknown.get(token)
                if unknown_since is not None:
                    if now - unknown_since < self.negative_cache_seconds:
                        raise _unknown_token()
                    del self._unknown[token]
            digest = token_digest(token)
            found = await self._tokens.lookup(digest)
            if found is None or not hmac.compare_digest(found.digest, digest):
                self._remember_unknown(token, now)
                raise _unknown_token()
            self._unknown.pop(token, None)
            grant = found
            if self.cache_seconds > 0:
                if len(self._cache) >= self._max_entries:
                    del self._cache[next(iter(self._cache))]
                self._cache[token] = (grant, now)
        if grant.expires_at is not None and time.time() >= grant.expires_at:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
        return grant.principal

    def _remember_unknown(self, token: str, now: float) -> None:
        if self.negative_cache_seconds <= 0:
            return
        self._unknown.pop(token, None)  # re-inserted last: the dict stays in age order
        while len(self._unknown) >= self._max_entries:
            del self._unknown[next(iter(self._unknown))]
        self._unknown[token] = now


def _unknown_token() -> Unauthenticated:
    return Unauthenticated("the token is unknown or revoked", reason="UNKNOWN_TOKEN")


def peer_address(peer: str | None) -> str:
    """The address part of a gRPC peer string, without the client's port: `ipv4:1.2.3.4:5678`
    → `ipv4:1.2.3.4`, `ipv6:[::1]:5678` → `ipv6:[::1]`; anything else (unix sockets…)
    unchanged. One host's connections count as one peer however many ports it uses."""
    if not peer:
        return ""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit() and host not in ("ipv4", "ipv6"):
            return host
    return peer


class FailedAuthLimiter:
    """Per-peer limit on failed authentications: a token bucket per peer address.

    Each peer may fail `max_failures` authentications in a burst; the bucket refills at
    `max_failures / window_seconds` per second. A peer whose bucket is empty is refused before
    its call is authenticated (no Redis lookup) until one failure's worth has refilled: the
    caller learns how long to wait. Calls from other peers are unaffected. At most
    `max_peers` peers are tracked (the least recently failing dropped first), so memory stays
    bounded under a flood from many addresses. `max_failures=0` turns the limit off.
    """

    def __init__(
        self, *, max_failures: int = 20, window_seconds: float = 10.0, max_peers: int = 10_000
    ) -> None:
        if max_failures < 0 or window_seconds <= 0 or max_peers < 1:
            raise ValueError("max_failures ≥ 0, window_seconds > 0 and max_peers ≥ 1")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._rate = max_failures / window_seconds  # failures forgiven per second
        self._max_peers = max_peers
        # peer → (tokens left, when last updated: time.monotonic()); insertion order is LRU.
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    @property
    def failing(self) -> bool:
        """Whether any peer has a failure on record (if not, no peer is over the limit)."""
        return bool(self._buckets)

    def _level(self, peer: str, now: float) -> float:
        bucket = self._buckets.get(peer)
        if bucket is None:
            return float(self.max_failures)
        tokens, updated = bucket
        return min(float(self.max_failures), tokens + (now - updated) * self._rate)

    def retry_after(self, peer: str) -> float:
        """Seconds until `peer` may try again; 0.0 if it may now."""
        if not self.enabled or peer not in self._buckets:
            return 0.0
        level = self._level(peer, time.monotonic())
        if level >= 1:
            return 0.0
        return (1 - level) / self._rate

    def record_failure(self, peer: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        level = self._level(peer, now)
        self._buckets.pop(peer, None)
        while len(self._buckets) >= self._max_peers:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[peer] = (max(0.0, level - 1), now)


def describe_tiers(tiers: Mapping[str, AccessTier]) -> dict[str, str]:
    return {path: tier_name(tier) for path, tier in tiers.items()}
