"""Key layout and id validation shared by every store.

Keys are `ac:{<namespace>}:<area>:<part>…`. The `{namespace}` hash tag keeps a namespace in one
cluster slot, so multi-key Lua scripts stay atomic on Redis Cluster. Every id is validated
before it becomes part of a key (letters, digits, `._-`, 1–128 chars), so `:` and `*` in an id
can never change which keys match.
"""

from __future__ import annotations

from ..errors import invalid_field
from ..identity import ID_RE


def validate_id(value: str, field: str) -> str:
    """Returns `value` if it is a valid id; raises InvalidArgument naming `field` otherwise."""
    if not ID_RE.fullmatch(value):
        if not value:
            raise invalid_field(field, "must not be empty", reason="INVALID_ID")
        raise invalid_field(
            field,
            "must be 1-128 characters of letters, digits, '.', '_' or '-'",
            reason="INVALID_ID",
        )
    return value


class Keyspace:
    """Builds the keys of one namespace. `Keyspace("team").key("memory", "a1", "k")` →
    `ac:{team}:memory:a1:k`. Parts must already be validated ids."""

    __slots__ = ("namespace", "prefix")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.prefix = f"ac:{{{namespace}}}:"

    def key(self, area: str, *parts: str) -> str:
        return self.prefix + ":".join((area, *parts))

    def pattern(self, area: str = "*") -> str:
        """A SCAN MATCH pattern for an area (namespaces and areas hold no glob characters)."""
        return self.prefix + (area if area == "*" else area + ":*")


def area_of(key: str) -> str:
    """`ac:{team}:memory:a1:k` → `memory`."""
    _, _, rest = key.partition("}:")
    return rest.split(":", 1)[0]
