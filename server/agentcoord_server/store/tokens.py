"""Bearer tokens in Redis: stored only as SHA-256 hashes, found by hash, listed per namespace.

Layout (DESIGN.md "Identity and tiers"; tokens are exempt from the TTL strategies and expire
only at their own optional lifetime):

- `ac:tokens:<sha256 hex>` — the global index a bare bearer token is looked up in: a hash with
  the token's namespace, id, agent id, tier and expiry. A bearer token carries no namespace, and
  the hash of the secret is all the server keeps, so the hash itself is the key: one HGETALL
  authenticates a call, and nothing in Redis can be replayed as a credential.
- `ac:{<ns>}:tokens:<token id>` — the namespace's record of the token (agent, tier,
  description, times, issuer, and the hash to find the global entry when revoking).
- `ac:{<ns>}:tokens:index` — a sorted set of the namespace's token ids (all scores 0, so it
  orders by id; ids start with the issue time in hex, so that is issue order) for paging.

- `ac:tokens` — a sorted set of every live token's hash, scored by its expiry (ms; +inf for
  never), so start-up learns whether any token exists with one small read instead of a SCAN.

On a Redis Cluster every key above sits in one slot or another: the namespace's keys in the
namespace's (its `{ns}` hash tag), each global entry in its digest's, `ac:tokens` in its own.
The global key cannot share the namespace's slot (a bare bearer token names no namespace,
and only the hash of the secret is kept), so issue and revoke touch several slots and cannot
be one Lua script or MULTI. They are steps instead, each sent only once the one before
succeeded (a non-transactional pipeline runs its later commands even when an earlier one
fails, and a cluster pipeline sends to each node in parallel, so one pipeline could not order
them), so that a failure half-way can only leave a token unusable, never usable without its
namespace record or its member of `ac:tokens`: issue writes the namespace record, then the
member, then the global entry; revoke deletes the global entry first and the rest after it.
A leftover namespace record shows in ListTokens and is removed by revoking it again; a
leftover member of `ac:tokens` is dropped by the next `any_exist`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from ..errors import FailedPrecondition, NotFound, quota_exceeded
from ..identity import Principal, TokenGrant, token_digest
from .keys import Keyspace
from .paging import page_by_lex
from .scripts import load_script

TOKEN_PREFIX = "agc_"
"""Every issued token starts with this, so secret scanners and humans can recognise one."""

GLOBAL_PREFIX = "ac:tokens:"
LIVE_KEY = "ac:tokens"
"""Sorted set: the hash of every live token, scored by its expiry in ms (+inf: never)."""


LIST_BUDGET = 1000
"""Index members one ListTokens call examines at most (expired tokens included)."""


def global_key(digest: str) -> str:
    return GLOBAL_PREFIX + digest


def new_token() -> str:
    """A fresh bearer token: the prefix and 256 random bits, URL-safe base64 (47 characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_token_id(now_ms: int) -> str:
    """`tok-<issue time, ms, 12 hex digits><8 random hex digits>`: unique and sorting by issue
    time, which makes the namespace index's lexicographic order the issue order."""
    return f"tok-{now_ms:012x}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class TokenRecord:
    """What the server keeps about a token (never the secret). Times are Unix milliseconds;
    expires_ms 0 means never."""

    token_id: str
    agent_id: str
    namespace: str
    tier: int
    description: str
    created_ms: int
    expires_ms: int
    issued_by: str


def _record(namespace: str, token_id: str, fields: dict[str, str]) -> TokenRecord:
    return TokenRecord(
        token_id=token_id,
        agent_id=fields.get("agent_id", ""),
        namespace=namespace,
        tier=int(fields.get("tier", 0)),
        description=fields.get("description", ""),
        created_ms=int(fields.get("created_ms", 0)),
        expires_ms=int(fields.get("expires_ms", 0)),
        issued_by=fields.get("issued_by", ""),
    )


class TokenStore:
    """Issues, revokes, lists and looks up tokens. Redis only; raises domain errors."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._read = load_script(redis, "index_read")
        self._issue = load_script(redis, "tokens_issue")

    async def issue(
        self,
        namespace: str,
        agent_id: str,
        tier: int,
        *,
        lifetime_s: float | None = None,
        description: str = "",
        issued_by: str = "",
        token: str | None = None,
        registered_only: bool = False,
        max_tokens: int = 0,
    ) -> tuple[str, TokenRecord]:
        """Creates a token and returns (the secret token, its record). Three round trips, each
        sent only once the one before succeeded: the namespace record
        (tokens_issue.lua, which also checks the namespace's state), the token's
        member of `ac:tokens`, then the global entry that makes the token usable (MULTI).

        `namespace` and `agent_id` must be validated ids and `tier` a real tier (the servicer
        checks). `lifetime_s` (seconds) makes both keys expire at that time; None: never.
        `token` registers a given secret instead of a fresh one (the `--bootstrap-token` flag).
        `registered_only`: the namespace must be registered (store/namespaces.py) and active.
        `max_tokens`: the server's default token quota (0: none; the namespace's own quota,
        set by UpdateNamespaceQuota, overrides it). Expired tokens still in the index count
        until a ListTokens drops them.

        Raises NotFound (NAMESPACE_NOT_FOUND) when `registered_only` and the namespace is not
        registered; FailedPrecondition (NAMESPACE_DELETING) while DeleteNamespace runs;
        ResourceExhausted (QUOTA_EXCEEDED, quota "tokens") at the namespace's token quota.
        """
        token = token or new_token()
        digest = token_digest(token)
        now_ms = int(time.time() * 1000)
        expires_ms = now_ms + int(lifetime_s * 1000) if lifetime_s else 0
        token_id = new_token_id(now_ms)
        keys = Keyspace(namespace)
        record_key = keys.key("tokens", token_id)
        record: dict[Any, Any] = {
            "agent_id": agent_id,
            "tier": str(tier),
            "description": description,
            "created_ms": str(now_ms),
            "expires_ms": str(expires_ms),
            "issued_by": issued_by,
            "digest": digest,
        }
        grant: dict[Any, Any] = {
            "namespace": namespace,
            "token_id": token_id,
            "agent_id": agent_id,
            "tier": str(tier),
            "expires_ms": str(expires_ms),
            "digest": digest,
        }
        # One slot (the namespace's hash tag): one script, which also refuses a namespace
        # being deleted. Only if it wrote is the token made usable.
        flat = [str(v) for pair in record.items() for v in pair]
        outcome = await self._issue(
            keys=[keys.key("namespace"), record_key, keys.key("tokens", "index")],
            args=["1" if registered_only else "0", expires_ms, token_id, max_tokens, *flat],
        )
        if outcome[0] == "quota":
            raise quota_exceeded("tokens", int(outcome[1]), int(outcome[2]))
        if outcome[0] == "missing":
            raise NotFound(
                f"namespace {namespace} is not registered",
                reason="NAMESPACE_NOT_FOUND",
                metadata={"namespace": namespace},
            )
        if outcome[0] == "deleting":
            raise FailedPrecondition(
                f"namespace {namespace} is being deleted",
                reason="NAMESPACE_DELETING",
                metadata={"namespace": namespace},
            )
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(LIVE_KEY, {digest: expires_ms or "+inf"})
            # Tokens that expired by their lifetime leave it here, so it never grows with them.
            pipe.zremrangebyscore(LIVE_KEY, "-inf", now_ms)
            await pipe.execute()
        async with self._redis.pipeline(transaction=True) as pipe:  # one key: one slot
            pipe.hset(global_key(digest), mapping=grant)
            if expires_ms:
                pipe.pexpireat(global_key(digest), expires_ms)
            await pipe.execute()
        return token, _record(namespace, token_id, record)

    async def revoke(self, namespace: str, token_id: str) -> TokenRecord:
        """Deletes a token of `namespace`: its global entry first, then — only if that
        succeeded — its record, index entry and member of `ac:tokens`.

        Three round trips (read the record to learn the hash, delete the global entry, then the
        rest).
        Raises NotFound (TOKEN_NOT_FOUND) if the namespace has no such live token — including
        when the id belongs to another namespace, which is not distinguishable on purpose.
        """
        keys = Keyspace(namespace)
        record_key = keys.key("tokens", token_id)
        # decode_responses=True: every field and value is a str
        fields = cast(dict[str, str], await self._redis.hgetall(record_key))
        if not fields:
            raise NotFound(
                f"no token {token_id} in this namespace",
                reason="TOKEN_NOT_FOUND",
                metadata={"token_id": token_id},
            )
        await self._redis.delete(global_key(fields["digest"]))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(record_key)
            pipe.zrem(keys.key("tokens", "index"), token_id)
            pipe.zrem(LIVE_KEY, fields["digest"])
            await pipe.execute()
        return _record(namespace, token_id, fields)

    async def list(
        self, namespace: str, page_size: int, after: str = ""
    ) -> tuple[list[TokenRecord], str]:
        """Up to `page_size` live tokens with ids greater than `after`, in issue order, and the id
        to continue after ("" when this is the last page). Two round trips per
        `page_size` index members (paging.page_by_lex with index_read.lua); index members whose
        record expired are dropped on the way."""
        keys = Keyspace(namespace)
        index = keys.key("tokens", "index")

        async def examine(ids: Sequence[str]) -> list[TokenRecord | None]:
            rows = await self._read(
                keys=[index, *(keys.key("tokens", i) for i in ids)], args=[1, 0, *ids]
            )
            return [
                _record(namespace, i, dict(zip(row[::2], row[1::2], strict=True))) if row else None
                for i, row in zip(ids, rows, strict=True)
            ]

        return await page_by_lex(
            self._redis,
            index,
            lo=f"({after}" if after else "-",
            want=page_size,
            budget=max(LIST_BUDGET, page_size),
            examine=examine,
        )

    async def lookup(self, digest: str) -> TokenGrant | None:
        """The grant stored under a token's SHA-256 hex digest, or None if unknown, revoked or
        expired. One round trip (HGETALL)."""
        fields = cast(dict[str, str], await self._redis.hgetall(global_key(digest)))
        if not fields:
            return None
        expires_ms = int(fields.get("expires_ms", 0))
        principal = Principal(fields["agent_id"], fields["namespace"], int(fields["tier"]))
        return TokenGrant(
            principal=principal,
            token_id=fields["token_id"],
            digest=fields.get("digest", ""),
            expires_at=expires_ms / 1000 if expires_ms else None,
        )

    async def any_exist(self) -> bool:
        """True if any namespace has a live token (start-up's bootstrap decision).

        Drops expired members of `ac:tokens`, then reads its lowest members and checks their
        global entries exist: a few round trips, plus one per batch of members without one.
        Those are passed over, never removed: they are leftovers of a revoke cut short or tokens
        being issued right now (issue writes the member before the entry; removing it raced
        with servers bootstrapping together). So the answer is never "yes" for tokens that
        cannot authenticate. No SCAN: on a large Redis or a Cluster the answer costs the same.
        """
        now_ms = int(time.time() * 1000)
        await self._redis.zremrangebyscore(LIVE_KEY, "-inf", now_ms)
        start = 0
        while True:
            digests = cast(list[str], await self._redis.zrange(LIVE_KEY, start, start + 15))
            if not digests:
                return False
            pipe = self._redis.pipeline(transaction=False)
            for digest in digests:
                pipe.exists(global_key(digest))
            present = await pipe.execute()
            if any(present):
                return True
            # Passed over, not removed: a member without its global entry may be a token being
            # issued right now (issue writes the member first), not a leftover of a revoke.
            start += len(digests)
