"""Pattern staging, the pattern library and conflict contexts in Redis (StagingService).

Layout in a namespace's keyspace (`ac:{ns}:…`):

- `staging:pattern:<id>`    hash, a staged pattern; TTL = STAGED_PATTERNS from its last revision.
- `staging:index`           sorted set of staged patterns, all scores 0, members
                            `<inverted confidence, 16 hex>:<stage ms, 15 digits>:<id>` so that
                            ZRANGEBYLEX yields confidence descending, then oldest first. Its TTL
                            is pushed to its newest entry's, so it never outlives them.
- `staging:expiry`          sorted set, score = expire ms, members as in `staging:index`: each
                            stage prunes up to 100 members of expired patterns from both, so an
                            index kept alive by steady staging does not grow with entries that
                            expired unlisted. Same TTL rule as the index. Promote and reject
                            remove their member, so its unexpired members are the staged
                            patterns (GetServerStats counts them).
- `staging:rejection:<id>`  hash, the latest rejection of <id>; TTL = STAGED_PATTERNS.
- `patterns:pattern:<id>`   hash, a library pattern; no TTL (DESIGN.md, "Redis").
- `patterns:index`          sorted set of library ids, all scores 0 (ordered by id); no TTL.
- `conflicts:conflict:<id>` hash, a conflict; TTL = CONFLICT_CONTEXT from its creation.
- `conflicts:index`         sorted set, all scores 0, members `<create ms, 15 digits>:<id>`.
- `conflicts:expiry`        sorted set, score = expire ms: pruned by each create, as for staging.
- `conflicts:open`          sorted set of unresolved conflict ids, score = expire ms: a resolve
                            removes its id, each create prunes expired ones (GetServerStats).

Every hash holds `idx`, the index member it was filed under: a member whose hash expired, or
whose id was since re-created under a newer member, is stale, skipped and pruned by the list
script. Struct and list fields are stored as JSON text. Times are Redis `TIME` in ms, so every
server process shares one clock. Each operation is one round trip (a Lua script or one command).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from redis.asyncio import Redis

from ..errors import Aborted, AlreadyExists, FailedPrecondition, NotFound, invalid_field
from .keys import Keyspace
from .scripts import load_script

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# Members a list call examines at most (filters may skip many); bounds one script's run time.
SCAN_BUDGET = 2000

_SEARCH_SEPARATOR = "\x00"

# Which list a page token belongs to (encoded in the token; see encode_page_token).
STAGED_LIST = "staged"
LIBRARY_LIST = "library"
CONFLICT_LIST = "conflicts"


@dataclass(frozen=True)
class PatternRecord:
    """A staged or library pattern. Times are Unix ms; library-only fields are empty/0 when
    staged, `expire_ms` is 0 in the library."""

    pattern_id: str
    pattern_type: str
    name: str
    description: str
    confidence: float
    code: str
    context: dict[str, Any]
    interests: list[str]
    author: str
    revision: int
    stage_ms: int
    expire_ms: int = 0
    promoted_by: str = ""
    promote_ms: int = 0
    note: str = ""

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> PatternRecord:
        return cls(
            pattern_id=h["pattern_id"],
            pattern_type=h.get("pattern_type", ""),
            name=h.get("name", ""),
            description=h.get("description", ""),
            confidence=float(h.get("confidence", "0")),
            code=h.get("code", ""),
            context=json.loads(h.get("context") or "{}"),
            interests=json.loads(h.get("interests") or "[]"),
            author=h.get("author", ""),
            revision=int(h.get("revision", "0")),
            stage_ms=int(h.get("stage_ms", "0")),
            expire_ms=int(h.get("expire_ms", "0")),
            promoted_by=h.get("promoted_by", ""),
            promote_ms=int(h.get("promote_ms", "0")),
            note=h.get("note", ""),
        )


@dataclass(frozen=True)
class RejectionRecord:
    """The latest rejection of a pattern id. Times are Unix ms."""

    pattern_id: str
    pattern_type: str
    name: str
    author: str
    revision: int
    confidence: float
    rejected_by: str
    reason: str
    reject_ms: int
    expire_ms: int

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> RejectionRecord:
        return cls(
            pattern_id=h["pattern_id"],
            pattern_type=h.get("pattern_type", ""),
            name=h.get("name", ""),
            author=h.get("author", ""),
            revision=int(h.get("revision", "0")),
            confidence=float(h.get("confidence", "0")),
            rejected_by=h.get("rejected_by", ""),
            reason=h.get("reason", ""),
            reject_ms=int(h.get("reject_ms", "0")),
            expire_ms=int(h.get("expire_ms", "0")),
        )


@dataclass(frozen=True)
class ConflictRecord:
    """A conflict context. `resolved` is False while open; times are Unix ms (0: not yet)."""

    conflict_id: str
    description: str
    positions: dict[str, str]
    interests: dict[str, list[str]]
    batna: str
    created_by: str
    create_ms: int
    expire_ms: int
    resolved: bool
    resolution: str
    resolved_by: str
    resolve_ms: int

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> ConflictRecord:
        return cls(
            conflict_id=h["conflict_id"],
            description=h.get("description", ""),
            positions=json.loads(h.get("positions") or "{}"),
            interests=json.loads(h.get("interests") or "{}"),
            batna=h.get("batna", ""),
            created_by=h.get("created_by", ""),
            create_ms=int(h.get("create_ms", "0")),
            expire_ms=int(h.get("expire_ms", "0")),
            resolved=h.get("state") == "resolved",
            resolution=h.get("resolution", ""),
            resolved_by=h.get("resolved_by", ""),
            resolve_ms=int(h.get("resolve_ms", "0")),
        )


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its items and the opaque token of the next page ('' at the end)."""

    items: list[T]
    next_page_token: str


def confidence_order_key(confidence: float) -> str:
    """16 hex digits that sort (as text) by confidence descending, exactly: for non-negative
    doubles the IEEE-754 bit pattern is monotonic, so subtracting it from +inf's inverts it."""
    bits = struct.unpack(">Q", struct.pack(">d", confidence + 0.0))[0]
    return f"{0x7FF0000000000000 - bits:016x}"


def _flat_to_dict(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def encode_page_token(kind: str, member: str) -> str:
    """Opaque page token: which list it belongs to and the last index member examined."""
    if not member:
        return ""
    return base64.urlsafe_b64encode(f"{kind}|{member}".encode()).decode().rstrip("=")


def decode_page_token(kind: str, token: str) -> str:
    """The index member a page token resumes after ('' for no token).

    Raises InvalidArgument (field page_token, reason INVALID_PAGE_TOKEN) for a token that is
    malformed or belongs to another list.
    """
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    prefix, sep, member = text.partition("|")
    if not sep or prefix != kind or not member:
        raise invalid_field(
            "page_token", "is not a page token of this list", reason="INVALID_PAGE_TOKEN"
        )
    return member


def clamp_page_size(page_size: int) -> int:
    """0 → DEFAULT_PAGE_SIZE; above MAX_PAGE_SIZE → MAX_PAGE_SIZE (AIP-158). Negative values
    are refused by the servicer before they get here."""
    if page_size <= 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def search_text(name: str, description: str) -> str:
    """What ListPatterns' `text` filter searches: name and description, case-folded by Python
    (Lua only folds ASCII) and joined by a NUL, which the filter text may not contain."""
    return f"{name.lower()}{_SEARCH_SEPARATOR}{description.lower()}"


class StagingStore:
    """Staged patterns, the pattern library and conflicts of any namespace.

    Args:
        redis: a redis.asyncio client with decode_responses=True.
        staged_ttl: STAGED_PATTERNS TTL in seconds (staged patterns and rejection records).
        conflict_ttl: CONFLICT_CONTEXT TTL in seconds.
        page_bytes: a list page stops before its stored values exceed this many bytes (it
            always holds at least one item), so a page of large patterns still fits the
            server's message size limit; the rest follows on the next page.
    """

    def __init__(
        self, redis: Redis, *, staged_ttl: int, conflict_ttl: int, page_bytes: int = 2 * 1024**2
    ) -> None:
        self._redis = redis
        self._page_bytes = page_bytes
        self._staged_ttl_ms = staged_ttl * 1000
        self._conflict_ttl_ms = conflict_ttl * 1000
        self._stage = load_script(redis, "staging_stage")
        self._promote = load_script(redis, "staging_promote")
        self._reject = load_script(redis, "staging_reject")
        self._create_conflict = load_script(redis, "staging_create_conflict")
        self._resolve_conflict = load_script(redis, "staging_resolve_conflict")
        self._list = load_script(redis, "staging_list")

    # -- staging ---------------------------------------------------------------------------

    async def stage(
        self,
        namespace: str,
        author: str,
        *,
        pattern_id: str,
        pattern_type: str,
        name: str,
        description: str,
        confidence: float,
        code: str,
        context: Mapping[str, Any],
        interests: Sequence[str],
    ) -> PatternRecord:
        """Stages (or, by its author, replaces) a pattern; expires after the STAGED_PATTERNS TTL.

        Inputs must already be validated. Returns the stored record (revision 1 when new,
        previous + 1 when replaced). Raises AlreadyExists (PATTERN_STAGED_BY_OTHER_AGENT) if
        another agent staged this id; nothing is written then.
        """
        ks = Keyspace(namespace)
        confidence = float(confidence) + 0.0  # -0.0 → 0.0, so it sorts with 0.0
        fields = {
            "pattern_type": pattern_type,
            "name": name,
            "description": description,
            "confidence": repr(confidence),
            "code": code,
            "context": json.dumps(dict(context), separators=(",", ":")),
            "interests": json.dumps(list(interests), separators=(",", ":")),
            "search": search_text(name, description),
        }
        args: list[str | int] = [
            author,
            self._staged_ttl_ms,
            confidence_order_key(confidence),
            pattern_id,
        ]
        for key, value in fields.items():
            args += [key, value]
        result = await self._stage(
            keys=[
                ks.key("staging", "pattern", pattern_id),
                ks.key("staging", "index"),
                ks.key("staging", "expiry"),
            ],
            args=args,
        )
        if result[0] == "OTHER_AUTHOR":
            raise AlreadyExists(
                f"pattern {pattern_id!r} is staged by another agent",
                reason="PATTERN_STAGED_BY_OTHER_AGENT",
                metadata={"pattern_id": pattern_id, "author": result[1]},
            )
        stage_ms = int(result[2])
        return PatternRecord(
            pattern_id=pattern_id,
            pattern_type=pattern_type,
            name=name,
            description=description,
            confidence=confidence,
            code=code,
            context=dict(context),
            interests=list(interests),
            author=author,
            revision=int(result[1]),
            stage_ms=stage_ms,
            expire_ms=stage_ms + self._staged_ttl_ms,
        )

    async def get_staged(self, namespace: str, pattern_id: str) -> PatternRecord:
        """The staged pattern. Raises NotFound (STAGED_PATTERN_NOT_FOUND)."""
        h = await self._hgetall(Keyspace(namespace).key("staging", "pattern", pattern_id))
        if not h:
            raise _staged_not_found(pattern_id)
        return PatternRecord.from_hash(h)

    async def list_staged(
        self,
        namespace: str,
        *,
        pattern_type: str = "",
        author: str = "",
        minimum_confidence: float | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[PatternRecord]:
        """Staged patterns by confidence descending, then stage time, then id; filters combine
        with AND. Raises InvalidArgument for a page token of another list."""
        filters: list[str] = []
        if pattern_type:
            filters += ["pattern_type", "eq", pattern_type]
        if author:
            filters += ["author", "eq", author]
        if minimum_confidence is not None:
            filters += ["confidence", "ge", repr(float(minimum_confidence))]
        ks = Keyspace(namespace)
        flats, token = await self._list_page(
            STAGED_LIST,
            ks.key("staging", "index"),
            ks.key("staging", "pattern", ""),
            filters,
            page_size,
            page_token,
        )
        return Page([PatternRecord.from_hash(f) for f in flats], token)

    # -- review ----------------------------------------------------------------------------

    async def promote(
        self,
        namespace: str,
        validator: str,
        pattern_id: str,
        *,
        minimum_confidence: float | None = None,
        note: str = "",
        revision: int | None = None,
    ) -> PatternRecord:
        """Moves the staged pattern into the library (no TTL), recording validator, time, note.

        Raises NotFound (STAGED_PATTERN_NOT_FOUND: not staged, e.g. already promoted or rejected
        by a faster validator), FailedPrecondition (BELOW_CONFIDENCE_THRESHOLD) or Aborted
        (REVISION_MISMATCH); in those cases nothing is written and the pattern stays as it was.
        """
        ks = Keyspace(namespace)
        result = await self._promote(
            keys=[
                ks.key("staging", "pattern", pattern_id),
                ks.key("staging", "index"),
                ks.key("patterns", "pattern", pattern_id),
                ks.key("patterns", "index"),
                ks.key("staging", "expiry"),
            ],
            args=[
                validator,
                "" if minimum_confidence is None else repr(float(minimum_confidence)),
                note,
                "" if revision is None else str(revision),
                pattern_id,
            ],
        )
        status = result[0]
        if status == "NOT_FOUND":
            raise _staged_not_found(pattern_id)
        if status == "BELOW_THRESHOLD":
            raise FailedPrecondition(
                f"pattern {pattern_id!r} has confidence {result[1]}, below the required "
                f"{minimum_confidence!r}",
                reason="BELOW_CONFIDENCE_THRESHOLD",
                metadata={
                    "pattern_id": pattern_id,
                    "confidence": str(result[1]),
                    "minimum_confidence": repr(minimum_confidence),
                },
            )
        if status == "REVISION_MISMATCH":
            raise Aborted(
                f"pattern {pattern_id!r} is at revision {result[1]}, not {revision}",
                reason="REVISION_MISMATCH",
                metadata={"pattern_id": pattern_id, "revision": str(result[1])},
            )
        return PatternRecord.from_hash(_flat_to_dict(result[1]))

    async def reject(
        self, namespace: str, validator: str, pattern_id: str, *, reason: str
    ) -> RejectionRecord:
        """Removes the staged pattern and keeps a rejection record for the STAGED_PATTERNS TTL.

        Raises NotFound (STAGED_PATTERN_NOT_FOUND); nothing is written then.
        """
        ks = Keyspace(namespace)
        result = await self._reject(
            keys=[
                ks.key("staging", "pattern", pattern_id),
                ks.key("staging", "index"),
                ks.key("staging", "rejection", pattern_id),
                ks.key("staging", "expiry"),
            ],
            args=[validator, reason, self._staged_ttl_ms],
        )
        if result[0] == "NOT_FOUND":
            raise _staged_not_found(pattern_id)
        return RejectionRecord.from_hash(_flat_to_dict(result[1]))

    async def get_rejection(self, namespace: str, pattern_id: str) -> RejectionRecord:
        """The latest rejection of `pattern_id`. Raises NotFound (REJECTION_NOT_FOUND)."""
        h = await self._hgetall(Keyspace(namespace).key("staging", "rejection", pattern_id))
        if not h:
            raise NotFound(
                f"no rejection of pattern {pattern_id!r}",
                reason="REJECTION_NOT_FOUND",
                metadata={"pattern_id": pattern_id},
            )
        return RejectionRecord.from_hash(h)

    # -- library ---------------------------------------------------------------------------

    async def get_pattern(self, namespace: str, pattern_id: str) -> PatternRecord:
        """The library pattern. Raises NotFound (PATTERN_NOT_FOUND)."""
        h = await self._hgetall(Keyspace(namespace).key("patterns", "pattern", pattern_id))
        if not h:
            raise NotFound(
                f"pattern {pattern_id!r} is not in the library",
                reason="PATTERN_NOT_FOUND",
                metadata={"pattern_id": pattern_id},
            )
        return PatternRecord.from_hash(h)

    async def list_patterns(
        self,
        namespace: str,
        *,
        pattern_type: str = "",
        text: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[PatternRecord]:
        """Library patterns by id; `text` matches name or description ignoring case."""
        filters: list[str] = []
        if pattern_type:
            filters += ["pattern_type", "eq", pattern_type]
        if text:
            filters += ["search", "has", text.lower()]
        ks = Keyspace(namespace)
        flats, token = await self._list_page(
            LIBRARY_LIST,
            ks.key("patterns", "index"),
            ks.key("patterns", "pattern", ""),
            filters,
            page_size,
            page_token,
        )
        return Page([PatternRecord.from_hash(f) for f in flats], token)

    # -- conflicts -------------------------------------------------------------------------

    async def create_conflict(
        self,
        namespace: str,
        creator: str,
        *,
        conflict_id: str,
        description: str,
        positions: Mapping[str, str],
        interests: Mapping[str, Sequence[str]],
        batna: str,
    ) -> ConflictRecord:
        """Stores a new open conflict with the CONFLICT_CONTEXT TTL.

        Raises AlreadyExists (CONFLICT_EXISTS) if the id is taken; nothing is written then.
        """
        ks = Keyspace(namespace)
        args: list[str | int] = [
            creator,
            self._conflict_ttl_ms,
            conflict_id,
            "description",
            description,
            "positions",
            json.dumps(dict(positions), separators=(",", ":")),
            "interests",
            json.dumps({k: list(v) for k, v in interests.items()}, separators=(",", ":")),
            "batna",
            batna,
        ]
        result = await self._create_conflict(
            keys=[
                ks.key("conflicts", "conflict", conflict_id),
                ks.key("conflicts", "index"),
                ks.key("conflicts", "expiry"),
                ks.key("conflicts", "open"),
            ],
            args=args,
        )
        if result[0] == "EXISTS":
            raise AlreadyExists(
                f"conflict {conflict_id!r} already exists",
                reason="CONFLICT_EXISTS",
                metadata={"conflict_id": conflict_id},
            )
        return ConflictRecord.from_hash(_flat_to_dict(result[1]))

    async def get_conflict(self, namespace: str, conflict_id: str) -> ConflictRecord:
        """The conflict. Raises NotFound (CONFLICT_NOT_FOUND)."""
        h = await self._hgetall(Keyspace(namespace).key("conflicts", "conflict", conflict_id))
        if not h:
            raise _conflict_not_found(conflict_id)
        return ConflictRecord.from_hash(h)

    async def list_conflicts(
        self,
        namespace: str,
        *,
        resolved: bool | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[ConflictRecord]:
        """Conflicts oldest first; `resolved` None lists both states."""
        filters: list[str] = []
        if resolved is not None:
            filters += ["state", "eq", "resolved" if resolved else "open"]
        ks = Keyspace(namespace)
        flats, token = await self._list_page(
            CONFLICT_LIST,
            ks.key("conflicts", "index"),
            ks.key("conflicts", "conflict", ""),
            filters,
            page_size,
            page_token,
        )
        return Page([ConflictRecord.from_hash(f) for f in flats], token)

    async def resolve_conflict(
        self, namespace: str, validator: str, conflict_id: str, *, resolution: str
    ) -> ConflictRecord:
        """Marks an open conflict resolved; it keeps its remaining TTL.

        Raises NotFound (CONFLICT_NOT_FOUND) or FailedPrecondition (ALREADY_RESOLVED); nothing
        is written then.
        """
        result = await self._resolve_conflict(
            keys=[
                Keyspace(namespace).key("conflicts", "conflict", conflict_id),
                Keyspace(namespace).key("conflicts", "open"),
            ],
            args=[validator, resolution, conflict_id],
        )
        if result[0] == "NOT_FOUND":
            raise _conflict_not_found(conflict_id)
        if result[0] == "ALREADY_RESOLVED":
            raise FailedPrecondition(
                f"conflict {conflict_id!r} is already resolved",
                reason="ALREADY_RESOLVED",
                metadata={"conflict_id": conflict_id, "resolved_by": str(result[1] or "")},
            )
        return ConflictRecord.from_hash(_flat_to_dict(result[1]))

    # -- shared ----------------------------------------------------------------------------

    async def _hgetall(self, key: str) -> dict[str, str]:
        # decode_responses=True: redis-py's bytes|str typing does not know that.
        return cast("dict[str, str]", await self._redis.hgetall(key))

    async def _list_page(
        self,
        kind: str,
        index: str,
        item_prefix: str,
        filters: list[str],
        page_size: int,
        page_token: str,
    ) -> tuple[list[dict[str, str]], str]:
        """One page of an index's items that match `filters` (flat (field, op, value) triples).

        Reads the index in batches and has staging_list.lua examine each batch's items (two
        round trips per batch: the script may touch only keys named in KEYS); examines at most
        SCAN_BUDGET members and stops before the page's values exceed the page byte bound.
        """
        after = decode_page_token(kind, page_token)
        want = clamp_page_size(page_size)
        budget = max(SCAN_BUDGET, want)
        flats: list[dict[str, str]] = []
        used = 0
        cursor = after
        more = True
        while budget > 0 and len(flats) < want:
            room = min(budget, want - len(flats) + 16)
            lo = f"({cursor}" if cursor else "-"
            # One member beyond the batch says whether anything follows it.
            members: list[str] = await self._redis.zrangebylex(  # type: ignore[assignment]
                index, lo, "+", start=0, num=room + 1
            )
            batch = members[:room]
            if not batch:
                more = False
                break
            keys = [index, *(item_prefix + m.rsplit(":", 1)[-1] for m in batch)]
            reply = await self._list(
                keys=keys,
                args=[
                    want - len(flats),
                    used,
                    self._page_bytes,
                    len(flats),
                    len(filters) // 3,
                    *filters,
                    *batch,
                ],
            )
            examined, used, full = int(reply[0]), int(reply[1]), reply[2] == "1"
            flats += [_flat_to_dict(flat) for flat in reply[3:]]
            budget -= examined + (1 if full else 0)
            if examined:
                cursor = batch[examined - 1]
            more = examined < len(batch) or len(members) > room
            if full or not more:
                break
        return flats, encode_page_token(kind, cursor if more else "")


def _staged_not_found(pattern_id: str) -> NotFound:
    return NotFound(
        f"pattern {pattern_id!r} is not staged",
        reason="STAGED_PATTERN_NOT_FOUND",
        metadata={"pattern_id": pattern_id},
    )


def _conflict_not_found(conflict_id: str) -> NotFound:
    return NotFound(
        f"conflict {conflict_id!r} not found",
        reason="CONFLICT_NOT_FOUND",
        metadata={"conflict_id": conflict_id},
    )
