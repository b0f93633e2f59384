"""`agentcoord token issue|revoke|list` against a live server, with a STEWARD token."""

from __future__ import annotations

import json

from agentcoord import Client
from agentcoord_server.cli import main
from click.testing import CliRunner


def json_lines(output: str) -> list[dict]:
    # The in-process test server's own log lines land in the captured stdout too.
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def printed_token(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("agc_"))


def run(server, token: str, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(
        main, ["token", "--server", server.address, "--token", token, *args], env=env or {}
    )


def test_token_issue_prints_a_working_token_and_list_shows_it_without_the_secret(server, namespace):
    steward = server.issue_token("lead", "STEWARD", namespace)

    issued = run(server, steward, "issue", "worker-3", "--tier", "contributor", "--description", "cli")
    token = printed_token(issued.stdout)
    listed = run(server, steward, "list")

    assert issued.exit_code == 0, issued.output
    with Client(server.address, token=token) as client:
        assert client.admin.who_am_i().agent_id == "worker-3"
    rows = json_lines(listed.stdout)
    assert [(r["agent_id"], r["tier"]) for r in rows] == [
        ("lead", "ACCESS_TIER_STEWARD"),
        ("worker-3", "ACCESS_TIER_CONTRIBUTOR"),
    ]
    assert token not in listed.output


def test_token_revoke_by_id(server, namespace):
    steward = server.issue_token("lead", "STEWARD", namespace)
    run(server, steward, "issue", "worker-3", "--tier", "OBSERVER")
    token_id = json_lines(run(server, steward, "list").stdout)[-1]["token_id"]

    revoked = run(server, steward, "revoke", token_id)
    after = run(server, steward, "list")

    assert revoked.exit_code == 0, revoked.output
    assert json_lines(revoked.stdout)[0]["token_id"] == token_id
    assert token_id not in after.stdout


def test_token_commands_take_the_token_from_the_environment(server, namespace):
    steward = server.issue_token("lead", "STEWARD", namespace)

    result = CliRunner().invoke(
        main, ["token", "--server", server.address, "list"], env={"AGENTCOORD_TOKEN": steward}
    )

    assert result.exit_code == 0, result.output
    assert json_lines(result.stdout)[0]["agent_id"] == "lead"


def test_token_commands_fail_cleanly_below_steward(server, namespace):
    contributor = server.issue_token("w1", "CONTRIBUTOR", namespace)

    result = run(server, contributor, "issue", "w2", "--tier", "OBSERVER")

    assert result.exit_code == 1
    assert "PERMISSION_DENIED TIER_TOO_LOW" in result.output
