"""A seeded, bounded fuzz of every agentcoord RPC (issue #12): no request gets UNKNOWN or
INTERNAL, every error carries an ErrorInfo whose reason is in the contract's ErrorReason, and
the server is still up at the end.

Requests go over a raw channel with identity serializers, so the bodies need not parse. For each
RPC, enumerated from the contract's descriptors (the streaming Subscribe included), the cases
are: random messages built from the request descriptor with extreme values (huge and negative
numbers, NaN, ±Infinity, empty, very long and odd strings, deep JSON, long repeated fields
within the message cap), those messages serialized and then mutated (bytes flipped, truncated,
extended, a JSON field nested past protobuf's depth limit), plain random bytes, and calls with
bad metadata (no token, malformed or unknown tokens, binary garbage headers).

Bounded: a fixed number of cases per RPC, at most TIME_BUDGET_S of sending, ~16 calls in flight.
The seed is printed on failure; AGENTCOORD_FUZZ_SEED repeats or varies a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from agentcoord import AgentcoordError
from agentcoord.v1 import (
    admin_pb2,
    error_reason_pb2,
    locks_pb2,
    memory_pb2,
    signals_pb2,
    staging_pb2,
    tasks_pb2,
)
from google.protobuf import descriptor, message_factory, struct_pb2
from google.protobuf.message import Message

from .conftest import server_settings
from .support import ServerThread

SEED = int(os.environ.get("AGENTCOORD_FUZZ_SEED", "20261202"))
CASES_PER_RPC = int(os.environ.get("AGENTCOORD_FUZZ_CASES", "28"))
TIME_BUDGET_S = float(os.environ.get("AGENTCOORD_FUZZ_SECONDS", "12"))
IN_FLIGHT = 16
CALL_TIMEOUT_S = 20.0
CLAIM_TIMEOUT_S = 1.5  # ClaimTask may long-poll up to 60 s by design; its deadline is ours

CONTRACT_REASONS = set(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
FD = descriptor.FieldDescriptor


@dataclass(frozen=True)
class Rpc:
    path: str
    request: descriptor.Descriptor
    streaming: bool


def contract_rpcs() -> list[Rpc]:
    rpcs = []
    for module in (admin_pb2, memory_pb2, staging_pb2, signals_pb2, tasks_pb2, locks_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rpcs.append(
                    Rpc(
                        f"/{service.full_name}/{method.name}",
                        method.input_type,
                        method.server_streaming,
                    )
                )
    return rpcs


# --- values ---------------------------------------------------------------------------------

ODD_STRINGS = [
    "",
    "a",
    "agent-1",
    "t",
    "k",
    "x" * 128,
    "x" * 129,
    "a:b",
    "a*b",
    "..",
    "-",
    "é☃𝄞",
    "\x00",
    "line\nbreak",
    " ",
    "ALL_CAPS",
    "0-0",
    "1732060800123-0",
    "18446744073709551615-0",
    "99999999999999999999999-1",
    "tok-" + "0" * 32,
    "|",
    "staged|x",
    "100:abc",
]
INTS = {
    32: [0, 1, -1, 2**31 - 1, -(2**31), 5, 10, 11, 100, 1000, 1001],
    64: [0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, 60, 3600, 86400 * 3650],
}
UINTS = {32: [0, 1, 2**32 - 1], 64: [0, 1, 2**64 - 1]}
DOUBLES = [
    0.0,
    -0.0,
    0.5,
    1.0,
    1.0000001,
    -1.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    1.7976931348623157e308,
    5e-324,
    1e300,
]


def random_string(rng: random.Random, long_ok: bool = True) -> str:
    roll = rng.random()
    if roll < 0.7 or (roll >= 0.97 and not long_ok):
        return rng.choice(ODD_STRINGS)
    if roll < 0.97:
        return "".join(rng.choices("abc-_.:*/é \t", k=rng.randint(1, 40)))
    return rng.choice("xé") * rng.choice([200, 5000, 20_000, 1_100_000])


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 6 or roll < 0.45:
        return rng.choice(
            [None, True, False, 0, -1, 2**60, rng.choice(DOUBLES), random_string(rng, depth < 2)]
        )
    if roll < 0.75:
        return {
            random_string(rng, False): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))
        }
    return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def fill(message: Message, rng: random.Random, depth: int = 0) -> Message:
    """Sets a random subset of `message`'s fields to random, often extreme, values."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Struct":
        message.update(
            {random_string(rng, False): random_json(rng) for _ in range(rng.randint(0, 4))}
        )  # type: ignore[attr-defined]
        return message
    if name == "google.protobuf.Value":
        holder = struct_pb2.Struct()
        holder.update({"v": random_json(rng)})
        message.CopyFrom(holder.fields["v"])
        return message
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        if field.is_repeated:
            container = getattr(message, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field = field.message_type.fields_by_name["key"]
                value_field = field.message_type.fields_by_name["value"]
                for _ in range(rng.choice([0, 1, 3, 70])):
                    key = _scalar(key_field, rng, long_ok=False)
                    if value_field.message_type is not None:
                        fill(container[key], rng, depth + 1)
                    else:
                        container[key] = _scalar(value_field, rng, long_ok=False)
                continue
            count = rng.choice([0, 1, 2, 5, 101, 2000])
            for _ in range(count):
                if field.message_type is not None:
                    if depth < 3 and len(container) < 101:
                        fill(container.add(), rng, depth + 1)
                else:
                    container.append(_scalar(field, rng, long_ok=False))
        elif field.message_type is not None:
            if depth < 3:
                fill(getattr(message, field.name), rng, depth + 1)
        else:
            setattr(message, field.name, _scalar(field, rng))
    return message


def _scalar(field: descriptor.FieldDescriptor, rng: random.Random, long_ok: bool = True) -> Any:
    kind = field.type
    if kind == FD.TYPE_STRING:
        return random_string(rng, long_ok)
    if kind == FD.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 64]))
    if kind == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        value = rng.choice(DOUBLES)
        return value if kind == FD.TYPE_DOUBLE or abs(value) < 1e38 else 1.0
    if kind == FD.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return rng.choice([*numbers, max(numbers) + 1, 999, -1])
    if kind in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return rng.choice(INTS[32])
    if kind in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return rng.choice(INTS[64])
    if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return rng.choice(UINTS[32])
    return rng.choice(UINTS[64])


# --- bodies ---------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _deep_value(depth: int) -> bytes:
    value = b"\x08\x00"  # null_value
    for _ in range(depth):
        inner = b"\x0a" + _varint(len(value)) + value
        value = b"\x32" + _varint(len(inner)) + inner
    return value


def _too_deep(request: descriptor.Descriptor) -> bytes | None:
    """A body whose Struct or Value field nests past protobuf's limit, or None if it has none."""
    for field in request.fields:
        kind = field.message_type.full_name if field.message_type else ""
        value = _deep_value(120)
        if kind == "google.protobuf.Value":
            return bytes([field.number << 3 | 2]) + _varint(len(value)) + value
        if kind == "google.protobuf.Struct":
            entry = b"\x0a\x01d\x12" + _varint(len(value)) + value
            struct = b"\x0a" + _varint(len(entry)) + entry
            return bytes([field.number << 3 | 2]) + _varint(len(struct)) + struct
    return None


def mutate(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    roll = rng.random()
    if not data or roll < 0.25:
        return bytes(data) + rng.randbytes(rng.randint(1, 32))
    if roll < 0.5:
        return bytes(data[: rng.randrange(len(data))])
    if roll < 0.8:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    position = rng.randrange(len(data) + 1)
    return bytes(data[:position]) + rng.randbytes(rng.randint(1, 8)) + bytes(data[position:])


def bodies(rpc: Rpc, rng: random.Random) -> Iterator[bytes]:
    message_class = message_factory.GetMessageClass(rpc.request)
    deep = _too_deep(rpc.request)
    if deep is not None:
        yield deep
    yield b""
    for i in range(CASES_PER_RPC):
        valid = fill(message_class(), rng).SerializeToString()
        if len(valid) > 3_500_000:  # stay under the 4 MiB message cap: that limit is grpc's
            valid = valid[:3_500_000]
        roll = i % 4
        if roll == 0:
            yield rng.randbytes(rng.choice([1, 7, 64, 1000]))
        elif roll == 1:
            yield mutate(valid, rng)
        else:
            yield valid


def metadata_for(token: str, rng: random.Random) -> tuple[tuple[str, Any], ...]:
    roll = rng.random()
    if roll < 0.8:
        return (("authorization", f"Bearer {token}"),)
    return rng.choice(
        [
            (),
            (("authorization", "Bearer"),),
            (("authorization", "Bearer "),),
            (("authorization", "Basic dXNlcjpwYXNz"),),
            (("authorization", "Bearer agc_" + "0" * 40),),
            (("authorization", "Bearer " + "x" * 4000),),
            (("authorization", f"Bearer {token}"), ("authorization", "Bearer other")),
            (("authorization", f"Bearer {token}"), ("x-request-id", "r" * 200)),
            (("authorization", f"Bearer {token}"), ("x-garbage-bin", rng.randbytes(64))),
            (("authorization-bin", rng.randbytes(32)),),
            (("x-agent-id", "steward"), ("x-access-tier", "STEWARD")),  # not a dev-identity server
        ]
    )


# --- calls ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    rpc: str
    body: bytes
    code: grpc.StatusCode
    reason: str | None
    domain_ok: bool
    details: str = ""


async def call(channel: grpc.aio.Channel, rpc: Rpc, body: bytes, metadata) -> Outcome:
    claim = rpc.path.endswith(("/ClaimTask", "/AcquireLock"))  # both long-poll
    timeout = CLAIM_TIMEOUT_S if claim else CALL_TIMEOUT_S
    try:
        if rpc.streaming:
            stream = channel.unary_stream(rpc.path)(body, metadata=metadata, timeout=timeout)
            try:
                await stream.read()  # the first response (the starting cursor) means it is open
            finally:
                stream.cancel()
        else:
            await channel.unary_unary(rpc.path)(body, metadata=metadata, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if claim and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Outcome(rpc.path, body, grpc.StatusCode.OK, None, True)  # our own deadline
        error = AgentcoordError.from_rpc_error(exc)
        info = [d for d in error.details if d.DESCRIPTOR.name == "ErrorInfo"]
        return Outcome(
            rpc.path,
            body,
            exc.code(),
            error.reason if info else None,
            bool(info) and info[0].domain == "agentcoord",
            exc.details() or "",
        )
    return Outcome(rpc.path, body, grpc.StatusCode.OK, None, True)


@pytest.fixture(scope="module")
def fuzz_server(redis_url):
    handle = ServerThread(server_settings(redis_url)).start()
    yield handle
    handle.stop()


async def test_fuzzed_requests_to_every_rpc_get_contract_errors_and_the_server_stays_up(
    fuzz_server, credentials
):
    rng = random.Random(SEED)
    token = credentials("fuzzer", "STEWARD")["token"]
    rpcs = contract_rpcs()
    assert len(rpcs) >= 50 and any(r.streaming for r in rpcs)
    cases = [(rpc, body) for rpc in rpcs for body in bodies(rpc, rng)]
    rng.shuffle(cases)

    outcomes: list[Outcome] = []
    started = time.monotonic()
    async with grpc.aio.insecure_channel(fuzz_server.address) as channel:
        limit = asyncio.Semaphore(IN_FLIGHT)

        async def one(rpc: Rpc, body: bytes, metadata) -> None:
            async with limit:
                if time.monotonic() - started < TIME_BUDGET_S:
                    outcomes.append(await call(channel, rpc, body, metadata))

        await asyncio.gather(*(one(rpc, body, metadata_for(token, rng)) for rpc, body in cases))

        who = await channel.unary_unary(
            "/agentcoord.v1.AdminService/WhoAmI",
            response_deserializer=admin_pb2.WhoAmIResponse.FromString,
        )(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    assert who.principal.agent_id == "fuzzer"

    bad = [
        o
        for o in outcomes
        if o.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
        or (o.code != grpc.StatusCode.OK and (not o.domain_ok or o.reason not in CONTRACT_REASONS))
    ]
    summary = [(o.rpc, o.code.name, o.reason, o.details, len(o.body)) for o in bad[:10]]
    assert not bad, (
        f"seed {SEED}: {len(bad)} of {len(outcomes)} calls broke the contract: {summary}"
    )
    codes = {o.code for o in outcomes}
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.INVALID_ARGUMENT in codes
    assert len({o.rpc for o in outcomes}) == len(rpcs)
