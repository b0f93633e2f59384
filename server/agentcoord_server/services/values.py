"""Checks every JSON-like request field goes through, and byte-cut pages (issue #12).

`checked_json` is the one place a `google.protobuf.Struct`/`Value` from a request is admitted:
its serialized size against the field's configured limit (RESOURCE_EXHAUSTED
`VALUE_TOO_LARGE`, ErrorInfo metadata `field`, `limit_bytes`, `size_bytes`) and every number in
it finite (INVALID_ARGUMENT `NON_FINITE_NUMBER` naming the path, e.g. `payload.a[2].b`). JSON has
no NaN or Infinity: json_format refuses to convert them and grpcurl, protojson (Go) and
protobuf-es (TypeScript) refuse to print them, so such a value would be unreadable by half the
clients once stored. Both checks run before anything is written.

`fitting` cuts a page of response items so the response fits one gRPC message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from ..errors import InvalidArgument, ResourceExhausted

JsonMessage = struct_pb2.Struct | struct_pb2.Value | struct_pb2.ListValue

RESPONSE_HEADROOM_BYTES = 4096
"""Room left in a response message for what is not a listed item (the page token, framing)."""

# Every non-finite double, serialized little-endian, ends in the bytes [F0-FF] [7F or FF]
# (exponent all ones). Where neither 0x7F nor 0xFF occurs, or this pair does not, the value has
# no NaN or Infinity and the tree walk is skipped: C-speed scans instead of a Python walk for
# nearly every request.
_NON_FINITE_TAIL = re.compile(rb"[\xf0-\xff][\x7f\xff]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def too_large(field: str, size: int, limit: int, setting: str) -> ResourceExhausted:
    """The RESOURCE_EXHAUSTED a field over its configured limit gets (nothing is written)."""
    return ResourceExhausted(
        f"{field} is {size} bytes; the limit is {limit} bytes ({setting})",
        reason="VALUE_TOO_LARGE",
        metadata={
            "field": field,
            "size_bytes": str(size),
            "limit_bytes": str(limit),
            "setting": setting,
        },
    )


def checked_json(message: JsonMessage, field: str, limit: int, setting: str) -> bytes:
    """`message` serialized, once it is at most `limit` bytes and holds only finite numbers.

    Args:
        message: a request's Struct, Value or ListValue.
        field: its path in the request, for the error (e.g. "payload", "items[3].value").
        limit: the most bytes its serialized form may take.
        setting: the server flag that sets `limit`, named in the error.

    Raises:
        ResourceExhausted: VALUE_TOO_LARGE when larger than `limit`.
        InvalidArgument: NON_FINITE_NUMBER naming the first NaN/±Infinity's path.
    """
    data = message.SerializeToString()
    if len(data) > limit:
        raise too_large(field, len(data), limit, setting)
    if (b"\x7f" in data or b"\xff" in data) and _NON_FINITE_TAIL.search(data):
        path = _non_finite_path(message, field)
        if path is not None:
            raise non_finite(path)
    return data


def non_finite(path: str) -> InvalidArgument:
    description = "must be a finite number: JSON has no NaN or Infinity"
    return InvalidArgument(
        f"{path}: {description}",
        reason="NON_FINITE_NUMBER",
        metadata={"field": path},
        field_violations=[(path, description)],
    )


def _non_finite_path(message: JsonMessage, path: str) -> str | None:
    """The path of the first NaN/±Infinity in `message`, or None. Recursion is bounded by
    protobuf's nesting limit (100), which the request parser enforced."""
    if isinstance(message, struct_pb2.Struct):
        for key, value in message.fields.items():
            found = _non_finite_path(value, _child(path, key))
            if found is not None:
                return found
        return None
    if isinstance(message, struct_pb2.ListValue):
        for i, value in enumerate(message.values):
            found = _non_finite_path(value, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    kind = message.WhichOneof("kind")
    if kind == "number_value":
        return None if math.isfinite(message.number_value) else path
    if kind == "struct_value":
        return _non_finite_path(message.struct_value, path)
    if kind == "list_value":
        return _non_finite_path(message.list_value, path)
    return None


def _child(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'{path}["{escaped}"]'


def fitting(items: Sequence[Message], budget: int) -> int:
    """How many of `items`, from the first, fit in `budget` bytes of a response's repeated
    field (at least one: every single item fits a message, see Settings.check_size_limits)."""
    total = 0
    for i, item in enumerate(items):
        total += item.ByteSize() + 6  # field tag and length prefix
        if total > budget and i > 0:
            return i
    return len(items)


def response_budget(max_message_bytes: int) -> int:
    """Bytes a response's listed items may take in total."""
    return max_message_bytes - RESPONSE_HEADROOM_BYTES
