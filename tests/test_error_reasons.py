"""The contract's ErrorReason enum lists exactly the reasons the server can send.

The server raises domain errors with string reasons (`reason="TASK_NOT_FOUND"`, or a class's
default `reason = "NOT_FOUND"`); this scans the sources for every such literal, so a reason added
to the code without the contract (or left in the contract after the code stopped sending it)
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from agentcoord import AgentcoordError, ErrorReason
from agentcoord.client.errors import as_reason
from agentcoord.v1 import error_reason_pb2

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "server" / "agentcoord_server", ROOT / "clients" / "python" / "agentcoord" / "client"]
# reason="X", reason = "X", reason: str = "X" (a default), reason=ErrorReason.X
LITERAL = re.compile(r'\breason\s*(?::\s*str\s*)?=\s*(?:"([A-Z][A-Z0-9_]*)"|ErrorReason\.([A-Z][A-Z0-9_]*))')


def reasons_in_sources() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            if path.name == "reasons.py" or "_sync" in path.parts:
                continue
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                for match in LITERAL.finditer(line):
                    name = match.group(1) or match.group(2)
                    found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{lineno}")
    return found


def contract_reasons() -> set[str]:
    return set(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}


def test_every_reason_the_server_sends_is_in_the_contract() -> None:
    found = reasons_in_sources()
    assert len(found) > 40, "the scan found too few reasons: is the pattern still right?"
    missing = {name: places for name, places in found.items() if name not in contract_reasons()}
    assert not missing, f"add these to proto/agentcoord/v1/error_reason.proto: {missing}"


def test_every_contract_reason_is_sent_somewhere() -> None:
    stale = contract_reasons() - set(reasons_in_sources())
    assert not stale, f"the contract lists reasons nothing sends: {sorted(stale)}"


def test_the_python_enum_matches_the_contract() -> None:
    assert {member.value for member in ErrorReason} == contract_reasons()
    assert ErrorReason.TIER_TOO_LOW == "TIER_TOO_LOW"


def test_contract_reason_numbers_are_unique() -> None:
    numbers = [value.number for value in error_reason_pb2.ErrorReason.DESCRIPTOR.values]
    assert len(numbers) == len(set(numbers))


def test_a_reason_from_the_server_decodes_to_its_enum_member(make_client) -> None:
    with pytest.raises(AgentcoordError) as caught:
        make_client().tasks.get_task("no-such-task")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason is ErrorReason.TASK_NOT_FOUND


def test_a_reason_the_contract_does_not_know_stays_a_string() -> None:
    assert as_reason("A_REASON_FROM_A_NEWER_SERVER") == "A_REASON_FROM_A_NEWER_SERVER"
    assert not isinstance(as_reason("A_REASON_FROM_A_NEWER_SERVER"), ErrorReason)
    assert as_reason("LEASE_LOST") is ErrorReason.LEASE_LOST
