"""Who a call runs as: the Principal, how it is established, and what tier each RPC requires.

The identity interceptor is the one place a principal is established (DESIGN.md, "Identity and
tiers"); servicers read it with `current_principal()` and never from request fields.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

from agentcoord.v1 import access_pb2

from .errors import Unauthenticated

AccessTier = int  # an access_pb2.AccessTier value; ordered OBSERVER < … < STEWARD

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


class Authenticator(Protocol):
    """Turns a call's invocation metadata into a Principal, or raises Unauthenticated."""

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal: ...


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

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
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

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        raise Unauthenticated("no credentials accepted by this server", reason="NO_AUTHENTICATION")


def describe_tiers(tiers: Mapping[str, AccessTier]) -> dict[str, str]:
    return {path: tier_name(tier) for path, tier in tiers.items()}
