"""Working memory, team sessions and collaboration state in Redis (MemoryService's store).

Layout (all keys of a namespace share its `{ns}` hash tag, so every script is single-slot):

    ac:{ns}:memory:<owner>:<key>              HASH  v = value bytes, t = stash ms, e = expire ms,
                                                    r = revision, l = ttl ms
                                                    (PEXPIRE = the entry's TTL)
    ac:{ns}:memory-rev                        STRING the namespace's last revision (no TTL)
    ac:{ns}:memory-log                        STREAM the namespace's entry events, id
                                                    '<revision>-0', the latest `history` kept
                                                    (lua/memory_events.lua has the fields)
    ac:{ns}:memory-expiry                     ZSET  member '<owner>/<key>', score expire ms:
                                                    what the expiry sweep will end
    ac:memory-expiring                        ZSET  (server-wide) member namespace, score the
                                                    ms its earliest entry is due (the sweep's
                                                    schedule; memory_watch.MemoryExpirySweeper)
    ac:{ns}:memory-index:<owner>:keys         ZSET  score 0, member key: listing in key order
    ac:{ns}:memory-index:<owner>:expiry       ZSET  score expire ms, member key: pruning
    ac:{ns}:memory-owners                     ZSET  score the owner's latest expire ms, member
                                                    owner: who has live entries (stats)
    ac:{ns}:sessions:<id>:info                HASH  p purpose, m metadata bytes, b created by,
                                                    c create ms, e expire ms
    ac:{ns}:sessions:<id>:participants        SET   agent ids  (documented for the Signals
                                                    service: see `MemoryStore.participants`)
    ac:{ns}:sessions:<id>:context             HASH  context key → serialized SharedContextItem
    ac:{ns}:session-index:ids / :expiry       ZSET  as for memory, over session ids
    ac:{ns}:collab:<owner>:<session id>       HASH  s state bytes, v version, u update ms (no TTL)
    ac:{ns}:collab-index:<owner>              ZSET  score 0, member session id (no TTL)

Values are stored as the serialized protobuf bytes of the message the client sent
(google.protobuf.Value, Struct, CollaborationState, SharedContextItem): they round-trip
bit-exactly (JSON text would not carry NaN/Infinity, and json_format is ~40x slower than the C
protobuf codec for a 17 kB value). The shared Redis client decodes replies as UTF-8, so every
read that returns such bytes is sent with redis-py's NEVER_DECODE option and the few text fields
are decoded here.

Listing never uses KEYS or SCAN: each owner (and each namespace, for sessions) keeps a sorted
set of its keys, all with score 0 so ZRANGEBYLEX gives prefix ranges and key-ordered pages, plus
a second sorted set scored by expiry that every write prunes (up to 100 members), so the
indexes stay close to the live entries without a sweeper. Index keys carry the TTL of their
longest-lived member, so an idle owner leaves nothing behind. Times are the server's clock,
in milliseconds since the epoch; TTLs are enforced by Redis (PEXPIRE).

The clear and list scripts build per-entry key names from a prefix passed in ARGV instead of
declaring each key: every key they touch carries the same `{ns}` hash tag as their KEYS, so they
stay single-slot (and atomic) on Redis Cluster.

Every change to an entry (stash, delete, clear, expiry, and sharing context) bumps the
namespace's revision and appends its event to the event log in the script that makes the change
(memory_events.lua), so WatchEntries (memory_watch.py) misses nothing and sees nothing that did
not happen. A stash whose new expiry is the namespace's earliest also schedules the namespace in
`ac:memory-expiring` (a second, small script: that key is in another cluster slot).

Store methods take validated ids and raise domain errors (errors.py); no gRPC types here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.client import NEVER_DECODE
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ..errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    quota_exceeded,
)
from .keys import Keyspace
from .paging import page_by_lex
from .scripts import load_script

RAW = {NEVER_DECODE: True}
CLEAR_BATCH = 1000  # entries deleted per script call by `clear`, so Redis is never blocked long
MAX_PARTICIPANTS = 1000
"""Most participants a session may have: every response about a session lists them, so 1000
ids of at most 128 characters (~130 KB) keep it within one message with its metadata
(config.FIXED_FIELDS_BYTES)."""
LIST_BUDGET = 2000  # index members one List call examines at most (expired ones included)
HISTORY = 10_000
"""Default number of entry events a namespace's log keeps (Settings.memory_history): watchers
resume from any revision within it; older cursors get OUT_OF_RANGE (REVISION_COMPACTED)."""
EXPIRING_KEY = "ac:memory-expiring"


def now_ms() -> int:
    """The server's clock, milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    # Lua writes numbers with %.17g: integers, but parse floats defensively.
    return int(float(_text(value)))


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A working-memory entry. `value` is the serialized google.protobuf.Value, or None where
    only metadata was read; times are ms since the epoch; `size` is the value's size in bytes."""

    key: str
    owner: str
    stash_ms: int
    expire_ms: int
    size: int
    value: bytes | None = None
    revision: int = 0


@dataclass(slots=True)
class EntryEventRecord:
    """One event of a namespace's log. `kind` is 'P' (put), 'D' (delete) or 'E' (expire);
    `session_id` is set for shared-context items; `value` (serialized google.protobuf.Value, or
    for context items the serialized SharedContextItem) and `expire_ms` only for puts. `cache`
    is the service's wire form, built once however many watchers carry a live event."""

    revision: int
    kind: str
    owner: str
    key: str
    time_ms: int
    session_id: str = ""
    value: bytes | None = None
    expire_ms: int = 0
    cache: dict[bool, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_fields(cls, entry_id: Any, fields: Any) -> EntryEventRecord:
        """From a stream entry (id '<revision>-0'; fields as a flat list or a dict)."""
        if isinstance(fields, dict):
            f = {_text(k): v for k, v in fields.items()}
        else:
            f = {_text(fields[i]): fields[i + 1] for i in range(0, len(fields), 2)}
        value = f.get("v")
        return cls(
            revision=int(_text(entry_id).partition("-")[0]),
            kind=_text(f["k"]),
            owner=_text(f["o"]),
            key=_text(f["y"]),
            time_ms=_int(f["t"]),
            session_id=_text(f["s"]) if "s" in f else "",
            value=value.encode() if isinstance(value, str) else value,
            expire_ms=_int(f["e"]) if "e" in f else 0,
        )


@dataclass(frozen=True, slots=True)
class EventPage:
    """A catch-up page: events after the asked revision (oldest first) and the namespace's
    revision when it was read."""

    events: list[EntryEventRecord]
    current: int


@dataclass(frozen=True, slots=True)
class StashItem:
    """One entry to stash: key (a validated id), serialized Value bytes, TTL in milliseconds."""

    key: str
    value: bytes
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A team session. `metadata` is the serialized google.protobuf.Struct; times in ms."""

    session_id: str
    purpose: str
    metadata: bytes
    created_by: str
    create_ms: int
    expire_ms: int
    participants: list[str]


@dataclass(frozen=True, slots=True)
class StoredCollaborationState:
    """An agent's collaboration state for a session: serialized CollaborationState bytes."""

    session_id: str
    owner: str
    state: bytes
    version: int
    update_ms: int


class MemoryStore:
    """Working memory, sessions and collaboration state of every namespace on one Redis.

    Scripts are registered once here (at server start) and run with EVALSHA.
    """

    def __init__(
        self, redis: Redis, history: int = HISTORY, max_entries: int = 0, max_bytes: int = 0
    ) -> None:
        self._redis = redis
        self.history = history
        # The server's default working-memory quotas per namespace (0: none).
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        events = "memory_events"
        self._stash = load_script(redis, "memory_stash", prelude=events)
        self._retrieve = load_script(redis, "memory_retrieve")
        self._delete = load_script(redis, "memory_delete", prelude=events)
        self._clear = load_script(redis, "memory_clear", prelude=events)
        self._touch = load_script(redis, "memory_touch", prelude=events)
        self._expire = load_script(redis, "memory_expire", prelude=events)
        self._expiring = load_script(redis, "memory_expiring_claim")
        self._watch_read = load_script(redis, "memory_watch_read")
        self._list = load_script(redis, "memory_list")
        self._session_create = load_script(redis, "memory_session_create", prelude=events)
        self._session_activity = load_script(redis, "memory_session_activity", prelude=events)
        self._session_list = load_script(redis, "memory_session_list")
        self._collab_save = load_script(redis, "memory_collab_save")
        self._collab_list = load_script(redis, "index_read")

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA with undecoded replies (values are protobuf bytes); loads the script on
        NOSCRIPT (e.g. after a Redis restart) and retries once."""
        try:
            return await self._redis.execute_command(
                "EVALSHA", script.sha, len(keys), *keys, *args, **RAW
            )
        except NoScriptError:
            await self._redis.script_load(script.script)
            return await self._redis.execute_command(
                "EVALSHA", script.sha, len(keys), *keys, *args, **RAW
            )

    # --- working memory -------------------------------------------------------------------

    @staticmethod
    def _owner_keys(ks: Keyspace, owner: str) -> tuple[str, str]:
        return ks.key("memory-index", owner, "keys"), ks.key("memory-index", owner, "expiry")

    @staticmethod
    def _event_keys(ks: Keyspace) -> list[str]:
        """The namespace keys every entry-changing script takes (memory_events.lua)."""
        return [
            ks.key("memory-expiry"),
            ks.key("memory-rev"),
            ks.key("memory-log"),
            ks.key("memory-sizes"),
            ks.key("memory-usage"),
        ]

    async def stash(
        self,
        namespace: str,
        owner: str,
        items: Sequence[StashItem],
        expected_revision: int | None = None,
    ) -> list[StoredEntry]:
        """Writes `items` (1..100, distinct validated keys) for `owner` atomically, in one round
        trip; an existing key is overwritten and its TTL restarted. Each entry gets a new
        revision and a PUT event. Returns their metadata (no values) in order.

        With `expected_revision` (one item only): 0 writes only if the key is not live, else
        raises AlreadyExists (ENTRY_EXISTS); N > 0 only if it is live at revision N, else
        raises NotFound (ENTRY_NOT_FOUND) or Aborted (ENTRY_REVISION_MISMATCH, metadata
        "revision"). Nothing is written then.
        """
        ks = Keyspace(namespace)
        keys = [
            *self._owner_keys(ks, owner),
            ks.key("memory-owners"),
            ks.key("namespace"),
            *self._event_keys(ks),
            *(ks.key("memory", owner, i.key) for i in items),
        ]
        now = now_ms()
        expected = "" if expected_revision is None else expected_revision
        args: list[Any] = [now, self.history, expected, owner, self.max_entries, self.max_bytes]
        for item in items:
            args += [item.key, item.value, item.ttl_ms]
        reply = await self._run(self._stash, keys, args)
        status = _text(reply[0])
        if status == "QUOTA":
            raise quota_exceeded(_text(reply[1]), int(reply[2]), int(reply[3]))
        if status != "OK":
            key = items[0].key
            meta = {"key": key}
            if status == "EXISTS":
                raise AlreadyExists(
                    f"entry {key!r} exists (revision {_int(reply[1])}); a create-only stash "
                    "never overwrites",
                    reason="ENTRY_EXISTS",
                    metadata={**meta, "revision": str(_int(reply[1]))},
                )
            if status == "MISSING":
                raise NotFound(
                    f"no entry {key!r} of {owner!r} to update",
                    reason="ENTRY_NOT_FOUND",
                    metadata=meta,
                )
            raise Aborted(
                f"entry {key!r} is at revision {_int(reply[1])}, not {expected_revision}",
                reason="ENTRY_REVISION_MISMATCH",
                metadata={**meta, "revision": str(_int(reply[1]))},
            )
        await self._schedule(namespace, _int(reply[1]))
        return [
            StoredEntry(
                i.key,
                owner,
                now,
                _int(reply[2 + 2 * n]),
                len(i.value),
                revision=_int(reply[3 + 2 * n]),
            )
            for n, i in enumerate(items)
        ]

    async def _schedule(self, namespace: str, earliest: int) -> None:
        """Tells the expiry sweep that `namespace`'s earliest expiry moved to `earliest` ms
        (0: it did not move earlier; nothing to do)."""
        if earliest:
            await self._run(self._expiring, [EXPIRING_KEY], ["due", namespace, earliest])

    async def touch(
        self, namespace: str, owner: str, key: str, ttl_ms: int | None, default_ttl_ms: int
    ) -> StoredEntry:
        """Restarts the TTL of `owner`'s entry `key`: `ttl_ms`, or the TTL it was stashed with
        (`default_ttl_ms` for entries stashed before it was recorded). Value and revision stay.
        Returns its metadata. Raises NotFound (ENTRY_NOT_FOUND) if it is missing or expired."""
        ks = Keyspace(namespace)
        keys = [
            ks.key("memory", owner, key),
            *self._owner_keys(ks, owner),
            ks.key("memory-owners"),
            *self._event_keys(ks),
        ]
        args = [
            key,
            owner,
            now_ms(),
            self.history,
            "" if ttl_ms is None else ttl_ms,
            default_ttl_ms,
        ]
        reply = await self._run(self._touch, keys, args)
        if _text(reply[0]) != "OK":
            raise NotFound(
                f"no entry {key!r} of {owner!r}", reason="ENTRY_NOT_FOUND", metadata={"key": key}
            )
        await self._schedule(namespace, _int(reply[1]))
        return StoredEntry(
            key, owner, _int(reply[2]), _int(reply[3]), int(reply[4]), revision=_int(reply[5])
        )

    async def read_events(self, namespace: str, after: int, limit: int) -> EventPage:
        """Up to `limit` events after revision `after`, oldest first, in one round trip.
        Raises OutOfRange (REVISION_COMPACTED) if events right after `after` are no longer kept
        or `after` is beyond the namespace's current revision."""
        ks = Keyspace(namespace)
        current, rows = await self._run(
            self._watch_read, [ks.key("memory-log"), ks.key("memory-rev")], [after, limit]
        )
        current = int(current)
        events = [EntryEventRecord.from_fields(entry_id, fields) for entry_id, fields in rows]
        for i, event in enumerate(events):
            if event.revision != after + 1 + i:
                # A revision without its event (gone): hand out what precedes it; the next
                # read starts at the hole and is refused below.
                events = events[:i] if i else events
                break
        if after > current or (after < current and (not events or events[0].revision != after + 1)):
            oldest = events[0].revision - 1 if events else current
            raise OutOfRange(
                f"revision {after} is outside the kept history (resume from {oldest} to "
                f"{current}); re-read the entries, then watch from their revision",
                reason="REVISION_COMPACTED",
                metadata={"oldest_revision": str(oldest), "revision": str(current)},
            )
        return EventPage(events, current)

    async def current_revision(self, namespace: str) -> int:
        """The namespace's last revision (0 before its first change)."""
        value = await self._redis.get(Keyspace(namespace).key("memory-rev"))
        return int(value) if value else 0

    # --- the expiry sweep (memory_watch.MemoryExpirySweeper) -------------------------------

    async def due_namespaces(self, now: int, limit: int) -> list[str]:
        """Namespaces whose earliest entry is due at `now` ms (at most `limit`)."""
        rows = await self._redis.zrangebyscore(EXPIRING_KEY, "-inf", now, start=0, num=limit)
        return [_text(r) for r in rows]

    async def sweep(self, namespace: str, now: int, lease_ms: int, batch: int) -> int:
        """Ends `namespace`'s entries due at `now` (at most `batch`), emitting each one's EXPIRE
        event exactly once whichever process gets there first; returns how many it ended.
        The namespace is claimed for `lease_ms` first, so processes rarely duplicate work."""
        claim = await self._run(
            self._expiring, [EXPIRING_KEY], ["claim", namespace, now, now + lease_ms]
        )
        if not claim:
            return 0
        ks = Keyspace(namespace)
        members = await self._redis.zrangebyscore(
            ks.key("memory-expiry"), "-inf", now, start=0, num=batch
        )
        keys = self._event_keys(ks)
        args: list[Any] = [now, self.history]
        for member in members:
            owner, _, key = _text(member).partition("/")
            if owner:
                keys += [ks.key("memory", owner, key), *self._owner_keys(ks, owner)]
            else:  # '/<session id>': a session (its context expires with it)
                keys += [
                    ks.key("sessions", key, part) for part in ("context", "info", "participants")
                ]
            args += [owner, key]
        count, left = await self._run(self._expire, keys, args)
        if int(count) == len(members) == batch:
            left = now  # more are due: come back at once
        await self._run(
            self._expiring,
            [EXPIRING_KEY],
            ["done", namespace, claim, "" if left is None else _int(left)],
        )
        return int(count)

    async def retrieve(
        self, namespace: str, owner: str, keys: Sequence[str]
    ) -> list[StoredEntry | None]:
        """Reads `keys` (1..100 validated ids) of `owner` in one round trip; None for a key that
        is missing or expired. Order follows `keys`.

        One read-only script rather than a pipeline of HMGETs: for 100 keys it is ~4x cheaper
        (one command to pack and one reply to parse in redis-py).
        """
        ks = Keyspace(namespace)
        rows = await self._run(self._retrieve, [ks.key("memory", owner, key) for key in keys], [])
        out: list[StoredEntry | None] = []
        for key, (value, stash, expire, revision) in zip(keys, rows, strict=True):
            if value is None:
                out.append(None)
            else:
                out.append(
                    StoredEntry(
                        key,
                        owner,
                        _int(stash),
                        _int(expire),
                        len(value),
                        value,
                        revision=_int(revision) if revision else 0,
                    )
                )
        return out

    async def delete(self, namespace: str, owner: str, key: str) -> None:
        """Deletes `owner`'s entry `key`. Raises NotFound (ENTRY_NOT_FOUND) if there is none."""
        ks = Keyspace(namespace)
        keys = [ks.key("memory", owner, key), *self._owner_keys(ks, owner), *self._event_keys(ks)]
        if not await self._run(self._delete, keys, [key, owner, now_ms(), self.history]):
            raise NotFound(
                f"no entry {key!r} of {owner!r}", reason="ENTRY_NOT_FOUND", metadata={"key": key}
            )

    async def clear(self, namespace: str, owner: str) -> int:
        """Deletes all of `owner`'s entries, CLEAR_BATCH per script call (two round trips per
        batch: the index read, then memory_clear.lua with the batch's keys). Returns how many
        live entries were deleted. Entries stashed while it runs may or may not be deleted."""
        ks = Keyspace(namespace)
        index, expiry = self._owner_keys(ks, owner)
        total = 0
        while True:
            members = [_text(m) for m in await self._redis.zrange(index, 0, CLEAR_BATCH - 1)]
            if not members:
                return total
            entries = [ks.key("memory", owner, m) for m in members]
            deleted, left = await self._run(
                self._clear,
                [index, expiry, *self._event_keys(ks), *entries],
                [now_ms(), self.history, owner, *members],
            )
            total += int(deleted)
            if not left:
                return total

    async def list_entries(
        self, namespace: str, owner: str, key_prefix: str, page_token: str, page_size: int
    ) -> tuple[list[StoredEntry], str]:
        """One page of `owner`'s live entries whose key starts with `key_prefix`, in key order,
        metadata only. `page_token` is the previous page's last key ('' to start); returns
        (entries, next token or ''). Examines at most LIST_BUDGET index members, so a page can
        be short; the token then says where to go on. Two round trips per batch (paging.py)."""
        ks = Keyspace(namespace)
        index, expiry = self._owner_keys(ks, owner)

        async def examine(keys: Sequence[str]) -> list[StoredEntry | None]:
            entries = [ks.key("memory", owner, k) for k in keys]
            rows = await self._run(self._list, [index, expiry, *entries], keys)
            return [
                StoredEntry(
                    key, owner, _int(row[0]), _int(row[1]), int(row[2]), revision=_int(row[3])
                )
                if row
                else None
                for key, row in zip(keys, rows, strict=True)
            ]

        return await page_by_lex(
            self._redis,
            index,
            lo=f"({page_token}" if page_token else f"[{key_prefix}",
            hi=f"[{key_prefix}\xff",
            want=page_size,
            budget=LIST_BUDGET,
            examine=examine,
        )

    # --- team sessions --------------------------------------------------------------------

    @staticmethod
    def _session_keys(ks: Keyspace, session_id: str) -> list[str]:
        return [
            ks.key("sessions", session_id, "info"),
            ks.key("sessions", session_id, "participants"),
            ks.key("sessions", session_id, "context"),
            ks.key("session-index", "ids"),
            ks.key("session-index", "expiry"),
        ]

    async def create_session(
        self,
        namespace: str,
        session_id: str,
        *,
        purpose: str,
        metadata: bytes,
        creator: str,
        ttl_ms: int,
    ) -> StoredSession:
        """Creates a session with `creator` as its only participant, expiring in `ttl_ms`.
        Raises AlreadyExists (SESSION_EXISTS), changing nothing, if it is live."""
        now = now_ms()
        ks = Keyspace(namespace)
        reply = await self._run(
            self._session_create,
            [*self._session_keys(ks, session_id), *self._event_keys(ks)[:3]],
            [session_id, purpose, metadata, creator, now, ttl_ms, self.history],
        )
        if reply[0] == b"EXISTS":
            raise AlreadyExists(
                f"session {session_id!r} already exists",
                reason="SESSION_EXISTS",
                metadata={"session_id": session_id},
            )
        await self._schedule(namespace, _int(reply[2]))
        return StoredSession(session_id, purpose, metadata, creator, now, int(reply[1]), [creator])

    async def _activity(
        self, namespace: str, session_id: str, op: str, agent: str, ttl_ms: int, *extra: Any
    ) -> list[Any]:
        ks = Keyspace(namespace)
        extras = [*extra, "", "", ""][:3]  # ARGV[6..8]; ARGV[9] is always the history
        reply = await self._run(
            self._session_activity,
            [
                *self._session_keys(ks, session_id),
                ks.key("memory-rev"),
                ks.key("memory-log"),
                ks.key("memory-expiry"),
            ],
            [session_id, op, agent, now_ms(), ttl_ms, *extras, self.history],
        )
        status = _text(reply[0])
        if status == "NO_SESSION":
            raise NotFound(
                f"no session {session_id!r}",
                reason="SESSION_NOT_FOUND",
                metadata={"session_id": session_id},
            )
        if status == "SESSION_FULL":
            raise ResourceExhausted(
                f"session {session_id!r} has the most participants a session may have "
                f"({MAX_PARTICIPANTS})",
                reason="SESSION_FULL",
                metadata={"session_id": session_id, "limit": str(MAX_PARTICIPANTS)},
            )
        if status == "NOT_A_PARTICIPANT":
            message = f"{agent!r} is not a participant of session {session_id!r}"
            meta = {"session_id": session_id}
            if op == "leave":
                raise FailedPrecondition(message, reason="NOT_A_PARTICIPANT", metadata=meta)
            raise PermissionDenied(message, reason="NOT_A_PARTICIPANT", metadata=meta)
        return list(reply)

    @staticmethod
    def _session(session_id: str, row: Sequence[Any]) -> StoredSession:
        purpose, metadata, created_by, create, expire, members = row
        return StoredSession(
            session_id,
            _text(purpose),
            metadata or b"",
            _text(created_by),
            _int(create),
            _int(expire),
            sorted(_text(m) for m in members),
        )

    async def join_session(
        self, namespace: str, session_id: str, agent: str, ttl_ms: int
    ) -> StoredSession:
        """Adds `agent` to the participants (idempotent, atomic) and restarts the session TTL.
        Raises NotFound (SESSION_NOT_FOUND), or ResourceExhausted (SESSION_FULL) when the session
        has MAX_PARTICIPANTS others already."""
        reply = await self._activity(
            namespace, session_id, "join", agent, ttl_ms, "", "", MAX_PARTICIPANTS
        )
        return self._session(session_id, reply[1:])

    async def leave_session(
        self, namespace: str, session_id: str, agent: str, ttl_ms: int
    ) -> StoredSession:
        """Removes `agent` from the participants and restarts the session TTL. Raises NotFound
        (SESSION_NOT_FOUND) or FailedPrecondition (NOT_A_PARTICIPANT)."""
        reply = await self._activity(namespace, session_id, "leave", agent, ttl_ms)
        return self._session(session_id, reply[1:])

    async def get_session(self, namespace: str, session_id: str) -> StoredSession:
        """Reads a session without refreshing it. Raises NotFound (SESSION_NOT_FOUND)."""
        info, participants, *_ = self._session_keys(Keyspace(namespace), session_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.execute_command("HMGET", info, "p", "m", "b", "c", "e", **RAW)
        pipe.execute_command("SMEMBERS", participants, **RAW)
        row, members = await pipe.execute()
        if row[0] is None:
            raise NotFound(
                f"no session {session_id!r}",
                reason="SESSION_NOT_FOUND",
                metadata={"session_id": session_id},
            )
        return self._session(session_id, [*row, members])

    async def list_sessions(
        self, namespace: str, page_token: str, page_size: int
    ) -> tuple[list[StoredSession], str]:
        """One page of live sessions in id order; `page_token` is the previous page's last id
        ('' to start). Returns (sessions, next token or ''). At most LIST_BUDGET ids are
        examined per call; two round trips per batch (paging.py)."""
        ks = Keyspace(namespace)
        index, expiry = ks.key("session-index", "ids"), ks.key("session-index", "expiry")

        async def examine(ids: Sequence[str]) -> list[StoredSession | None]:
            keys = [index, expiry]
            for session_id in ids:
                keys += [ks.key("sessions", session_id, "info")]
                keys += [ks.key("sessions", session_id, "participants")]
            rows = await self._run(self._session_list, keys, ids)
            return [
                self._session(i, row) if row else None for i, row in zip(ids, rows, strict=True)
            ]

        return await page_by_lex(
            self._redis,
            index,
            lo=f"({page_token}" if page_token else "-",
            want=page_size,
            budget=LIST_BUDGET,
            examine=examine,
        )

    async def participants(self, namespace: str, session_id: str) -> set[str]:
        """The agent ids currently in a session; empty if it does not exist or has expired.

        For other services (session-targeted signals): the SET at
        `Keyspace(ns).key("sessions", session_id, "participants")`, kept atomically by
        join/leave and expiring with its session.
        """
        members = await self._redis.smembers(
            Keyspace(namespace).key("sessions", session_id, "participants")
        )  # type: ignore[misc]
        return {_text(m) for m in members}

    async def share_context(
        self, namespace: str, session_id: str, agent: str, key: str, item: bytes, ttl_ms: int
    ) -> int:
        """Stores `item` (a serialized SharedContextItem) under `key` in the session's context
        and restarts the session TTL. Returns the session's new expire time (ms). Raises NotFound
        (SESSION_NOT_FOUND) or PermissionDenied (NOT_A_PARTICIPANT)."""
        reply = await self._activity(namespace, session_id, "share", agent, ttl_ms, key, item)
        return int(reply[1])

    async def read_context(
        self, namespace: str, session_id: str, agent: str, key: str, ttl_ms: int
    ) -> list[bytes]:
        """The serialized SharedContextItems of the session (one if `key` is given, else all, in
        no particular order); restarts the session TTL. Raises NotFound (SESSION_NOT_FOUND,
        CONTEXT_NOT_FOUND) or PermissionDenied (NOT_A_PARTICIPANT)."""
        reply = await self._activity(namespace, session_id, "read", agent, ttl_ms, key)
        if _text(reply[0]) == "NO_CONTEXT":
            raise NotFound(
                f"no shared context {key!r} in session {session_id!r}",
                reason="CONTEXT_NOT_FOUND",
                metadata={"session_id": session_id, "key": key},
            )
        return list(reply[2])

    # --- collaboration state --------------------------------------------------------------

    async def save_collaboration_state(
        self,
        namespace: str,
        owner: str,
        session_id: str,
        state: bytes,
        expected_version: int | None,
    ) -> tuple[int, int]:
        """Replaces `owner`'s state for `session_id` (no TTL). With `expected_version`, only if
        the stored version equals it (0: none stored), else raises Aborted (VERSION_MISMATCH)
        without writing. Returns (new version, update ms)."""
        ks = Keyspace(namespace)
        now = now_ms()
        ok, version = await self._run(
            self._collab_save,
            [ks.key("collab", owner, session_id), ks.key("collab-index", owner)],
            [session_id, state, "" if expected_version is None else expected_version, now],
        )
        if not ok:
            raise Aborted(
                f"collaboration state of session {session_id!r} is at version {version}, "
                f"not {expected_version}",
                reason="VERSION_MISMATCH",
                metadata={"session_id": session_id, "version": str(version)},
            )
        return int(version), now

    async def load_collaboration_state(
        self, namespace: str, owner: str, session_id: str
    ) -> StoredCollaborationState:
        """Reads `owner`'s state for `session_id`. Raises NotFound
        (COLLABORATION_STATE_NOT_FOUND)."""
        key = Keyspace(namespace).key("collab", owner, session_id)
        state, version, update = await self._redis.execute_command(
            "HMGET", key, "s", "v", "u", **RAW
        )
        if state is None:
            raise NotFound(
                f"no collaboration state for session {session_id!r}",
                reason="COLLABORATION_STATE_NOT_FOUND",
                metadata={"session_id": session_id},
            )
        return StoredCollaborationState(session_id, owner, state, _int(version), _int(update))

    async def list_collaboration_states(
        self, namespace: str, owner: str, page_token: str, page_size: int
    ) -> tuple[list[StoredCollaborationState], str]:
        """One page of `owner`'s states in session id order; `page_token` is the previous page's
        last session id ('' to start). Returns (states, next token or ''). Two round trips per
        page (paging.py with index_read.lua)."""
        ks = Keyspace(namespace)
        index = ks.key("collab-index", owner)

        async def examine(ids: Sequence[str]) -> list[StoredCollaborationState | None]:
            keys = [ks.key("collab", owner, i) for i in ids]
            rows = await self._run(self._collab_list, keys, [0, 3, "s", "v", "u", *ids])
            return [
                StoredCollaborationState(i, owner, row[0], _int(row[1]), _int(row[2]))
                if row
                else None
                for i, row in zip(ids, rows, strict=True)
            ]

        return await page_by_lex(
            self._redis,
            index,
            lo=f"({page_token}" if page_token else "-",
            want=page_size,
            budget=LIST_BUDGET,
            examine=examine,
        )
