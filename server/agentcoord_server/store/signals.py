"""Signals in Redis: one stream per namespace, `ac:{ns}:signals` (DESIGN.md, "Redis").

The stream id is the signal id and the cursor. Entries are trimmed by age (exact MINID) to the
COORDINATION retention whenever the stream is written or read (store/lua/signals_*.lua), and the
newest dropped id is kept in `ac:{ns}:signals:trimmed`, which is how a cursor older than the
retention is told apart from one with nothing after it: OUT_OF_RANGE, never a silent gap.
Neither key has a TTL: the stream's entries expire by trimming, and the two keys together are a
few hundred bytes per namespace that ever sent a signal. A send with a request id also writes
`ac:{ns}:signals:req:<sender>:<request id>` (the stored signal's id, with the retention as TTL)
so a retried send is stored once.

Entry fields (short names: they are stored per entry): t type, s sender, d data (JSON; absent
when empty), a target agent, n session id, r the session's participants at send time
(",a,b,"). Visibility rules live in `SignalEntry.visible_to` and, identically, in
signals_receive.lua.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from ..errors import NotFound, OutOfRange, invalid_field, quota_exceeded
from .keys import Keyspace
from .scripts import load_script

CURSOR_RE = re.compile(r"\d{1,20}-\d{1,20}")
"""A signal id / cursor: `<ms>-<seq>` as Redis stream ids are."""

SCAN_BOUND = 2000
"""Most stream entries one ReceiveSignals call scans (bounds the Lua script's run time)."""


MAX_ID_PART = 2**64 - 1
"""Redis stream ids are two unsigned 64-bit numbers; a larger part makes XRANGE fail."""


def validate_cursor(value: str, field_name: str) -> str:
    """Returns `value` if it is a signal id (`<ms>-<seq>`, each part a 64-bit unsigned number,
    not the largest id, after which nothing can come); raises InvalidArgument otherwise."""
    if not CURSOR_RE.fullmatch(value) or not (
        max(id_key(value)) <= MAX_ID_PART and id_key(value) != (MAX_ID_PART, MAX_ID_PART)
    ):
        raise invalid_field(
            field_name, "must be a signal id such as 1732060800123-0", reason="INVALID_CURSOR"
        )
    return value


def id_key(signal_id: str) -> tuple[int, int]:
    """`"1732060800123-4"` → `(1732060800123, 4)`: stream ids compare as this tuple."""
    ms, _, seq = signal_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class SignalEntry:
    """One stored signal.

    `cache` is a slot the service layer may fill with the entry's wire form, so a live entry
    fanned out to many subscribers is converted once.
    """

    id: str
    signal_type: str
    data: dict[str, Any]
    sender: str
    target_agent: str = ""
    session_id: str = ""
    recipients: str = ""
    cache: Any = field(default=None, compare=False)

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> SignalEntry:
        raw = fields.get("d")
        return cls(
            id=entry_id,
            signal_type=fields.get("t", ""),
            data=json.loads(raw) if raw else {},
            sender=fields.get("s", ""),
            target_agent=fields.get("a", ""),
            session_id=fields.get("n", ""),
            recipients=fields.get("r", ""),
        )

    @property
    def send_time_ms(self) -> int:
        """When Redis stored it, ms since the epoch (the id's first part)."""
        return id_key(self.id)[0]

    def visible_to(self, agent_id: str) -> bool:
        """Sender and target always; broadcasts everyone; session signals their recipients."""
        if agent_id == self.sender or agent_id == self.target_agent:
            return True
        if not self.target_agent and not self.session_id:
            return True
        return bool(self.recipients) and f",{agent_id}," in self.recipients


@dataclass(frozen=True, slots=True)
class SignalPage:
    """ReceiveSignals' answer: `entries` oldest first; `next_after` the cursor to continue
    after ('' when the stream was empty and no cursor was given); `more` true when the scan
    stopped before the end of the stream."""

    entries: list[SignalEntry]
    next_after: str
    more: bool


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class SignalStore:
    """Sends and reads signals of any namespace.

    Args:
        redis: the shared client (decode_responses=True).
        retention: seconds a signal is kept (TtlPolicy.coordination).
    """

    def __init__(self, redis: Redis, retention: int, max_per_second: int = 0) -> None:
        self._redis = redis
        self._max_per_second = max_per_second
        self._retention_ms = retention * 1000
        self._send = load_script(redis, "signals_send", prelude="signals_common")
        self._receive = load_script(redis, "signals_receive", prelude="signals_common")

    @staticmethod
    def stream_key(namespace: str) -> str:
        return Keyspace(namespace).key("signals")

    @staticmethod
    def trimmed_key(namespace: str) -> str:
        return Keyspace(namespace).key("signals", "trimmed")

    async def send(
        self,
        namespace: str,
        sender: str,
        signal_type: str,
        data: Mapping[str, Any],
        *,
        target_agent: str = "",
        session_id: str = "",
        request_id: str = "",
    ) -> tuple[SignalEntry, bool]:
        """Appends a signal (one EVALSHA); returns (it with its id, replayed).

        With a `request_id` (a validated id), a send of the same sender and request id within
        the retention (`ac:{ns}:signals:req:<sender>:<request id>`, a string with that TTL)
        stores nothing and returns the signal the first one stored, with replayed True; the
        check and the append are one script, so concurrent retries store one signal.

        Ids must already be validated. A session signal's recipients are the session's
        participants SET (`ac:{ns}:sessions:<id>:participants`, MemoryService) at send time;
        the session exists while its `…:info` HASH does.

        Raises NotFound (SESSION_NOT_FOUND) when the session is missing or expired, and
        ResourceExhausted (QUOTA_EXCEEDED, quota "signals_per_second") when the namespace's
        signal bucket is empty (`max_per_second`: the server's default rate, 0: none; the
        namespace's own quota overrides it); nothing is written then.
        """
        ks = Keyspace(namespace)
        keys = [
            self.stream_key(namespace),
            self.trimmed_key(namespace),
            ks.key("namespace"),
            ks.key("quota", "signals"),
        ]
        if session_id:
            keys.append(ks.key("sessions", session_id, "info"))
            keys.append(ks.key("sessions", session_id, "participants"))
        if request_id:
            keys.append(ks.key("signals", "req", sender, request_id))
        payload = json.dumps(data, separators=(",", ":")) if data else ""
        reply = await self._send(
            keys=keys,
            args=[
                self._retention_ms,
                signal_type,
                payload,
                sender,
                target_agent,
                session_id,
                "1" if request_id else "0",
                self._max_per_second,
            ],
        )
        if reply[0] == "QUOTA_EXCEEDED":
            raise quota_exceeded("signals_per_second", int(reply[1]), int(reply[2]))
        if reply[0] == "REPLAYED":
            if reply[2]:
                return SignalEntry.from_fields(reply[1], _pairs(reply[2])), True
            # The first signal already left the retention: answer with what was asked again.
            return (
                SignalEntry(
                    id=reply[1],
                    signal_type=signal_type,
                    data=dict(data),
                    sender=sender,
                    target_agent=target_agent,
                    session_id=session_id,
                ),
                True,
            )
        if reply[0] != "OK":
            raise NotFound(
                f"session {session_id!r} does not exist or has expired",
                reason="SESSION_NOT_FOUND",
                metadata={"session_id": session_id},
            )
        # The recipients list stays in Redis: the sender sees its own signal regardless.
        entry = SignalEntry(
            id=reply[1],
            signal_type=signal_type,
            data=dict(data),
            sender=sender,
            target_agent=target_agent,
            session_id=session_id,
        )
        return entry, False

    async def receive(
        self,
        namespace: str,
        agent_id: str,
        signal_types: Sequence[str],
        *,
        after: str = "",
        limit: int = 100,
        scan_bound: int = SCAN_BOUND,
    ) -> SignalPage:
        """The signals `agent_id` may see after `after` ('' = oldest retained), at most
        `limit`, scanning at most `scan_bound` entries (one EVALSHA).

        Raises OutOfRange (CURSOR_TRIMMED) when entries after `after` were dropped by retention.
        """
        reply = await self._receive(
            keys=[self.stream_key(namespace), self.trimmed_key(namespace)],
            args=[self._retention_ms, agent_id, after, limit, scan_bound, *signal_types],
        )
        if reply[0] != "OK":
            raise OutOfRange(
                f"signals after {after} are past the retention; the oldest resumable "
                f"cursor is {reply[1]}",
                reason="CURSOR_TRIMMED",
                metadata={"after_id": after, "trimmed_up_to": reply[1]},
            )
        _, cursor, more, raw = reply
        entries = [SignalEntry.from_fields(entry_id, _pairs(flat)) for entry_id, flat in raw]
        return SignalPage(entries=entries, next_after=cursor or "", more=bool(more))

    async def positions(self, namespace: str, redis: Redis | None = None) -> tuple[str, str]:
        """(latest, floor) in one round trip: the newest stored id (or the newest dropped one
        if the stream is empty; "0-0" if it never held anything) and the newest dropped id
        ("0-0" if nothing was dropped). A subscription from the latest signal starts after
        `latest`, one from the earliest after `floor`."""
        pipe = (redis or self._redis).pipeline(transaction=False)
        pipe.xrevrange(self.stream_key(namespace), count=1)
        pipe.get(self.trimmed_key(namespace))
        top, marker = await pipe.execute()
        floor = marker or "0-0"
        latest = top[0][0] if top else floor
        return max(latest, floor, key=id_key), floor
