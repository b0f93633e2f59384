"""The README's table of error reasons is the one scripts/gen_reason_table.py makes from
error_reason.proto, so a reason added to the contract shows up there (after `make generate`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gen_reason_table", ROOT / "scripts" / "gen_reason_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_reason_table_matches_the_contract():
    generator = load_generator()

    assert generator.updated_readme() == (ROOT / "README.md").read_text(), "run make generate"


def test_reason_table_has_a_row_and_an_action_for_every_reason():
    from agentcoord.v1 import error_reason_pb2

    table = load_generator().table()
    for name in error_reason_pb2.ErrorReason.keys():
        if name != "ERROR_REASON_UNSPECIFIED":
            assert f"| `{name}` |" in table
    assert "| `TIER_TOO_LOW` | PERMISSION_DENIED | re-authenticate |" in table
    assert "| `SUBSCRIBER_TOO_SLOW` | RESOURCE_EXHAUSTED | resume (the clients do it) |" in table
    assert "| `REDIS_UNAVAILABLE` | UNAVAILABLE | retry with backoff (streams: resume) |" in table
