"""The operator CLI (`agentcoord stats|tasks|signals`) against a real server over a real channel;
click's CliRunner runs the command in-process."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from agentcoord import Client
from agentcoord_server.cli import main
from agentcoord_server.services.signals import hub_for
from click.testing import CliRunner, Result


def cli(server, token: str, *args: str, env: dict[str, str] | None = None) -> Result:
    group, *rest = args
    return CliRunner().invoke(
        main, [group, "--server", server.address, "--token", token, *rest], env=env or {}
    )


def json_lines(output: str, key: str) -> list[dict[str, Any]]:
    # The in-process test server's log lines land in the captured output too.
    rows = []
    for line in output.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if key in row:
                rows.append(row)
    return rows


def make_dead_letter(client: Client, task_id: str) -> None:
    client.tasks.add_task(task_type="flaky", task_id=task_id, max_attempts=1)
    claimed = client.tasks.claim_task(task_types=["flaky"])
    client.tasks.fail_task(
        task_id=task_id, fencing_token=claimed.lease.fencing_token, retryable=False
    )


def test_stats_prints_the_server_stats_as_json_and_as_a_table(server, namespace):
    steward = server.issue_token("lead", "STEWARD", namespace)

    as_json = cli(server, steward, "stats", "--json")
    as_table = cli(server, steward, "stats")

    assert as_json.exit_code == 0, as_json.output
    (stats,) = json_lines(as_json.stdout, "server_version")
    assert stats["server_version"] == "0.1.0"
    assert as_table.exit_code == 0, as_table.output
    assert "server_version" in as_table.stdout and "0.1.0" in as_table.stdout


def test_tasks_list_filters_by_status_and_prints_a_table(server, namespace):
    steward = server.issue_token("lead", "STEWARD", namespace)
    with Client(server.address, token=steward) as client:
        client.tasks.add_task(task_type="build", task_id="b1")
        client.tasks.add_task(task_type="build", task_id="b2", priority=9)
        client.tasks.claim_task(task_types=["build"])  # b2, the higher priority

    pending = cli(server, steward, "tasks", "list", "--status", "pending", "--json")
    everything = cli(server, steward, "tasks", "list")

    assert pending.exit_code == 0, pending.output
    assert [t["task_id"] for t in json_lines(pending.stdout, "task_id")] == ["b1"]
    assert everything.exit_code == 0, everything.output
    rows = [line for line in everything.stdout.splitlines() if " b1 " in line or " b2 " in line]
    assert len(rows) == 2
    assert "pending" in rows[0] and "claimed" in rows[1]


def test_dead_letters_are_listed_and_requeued(server, namespace):
    validator = server.issue_token("lead", "VALIDATOR", namespace)
    with Client(server.address, token=validator) as client:
        make_dead_letter(client, "d1")
        make_dead_letter(client, "d2")

    listed = cli(server, validator, "tasks", "dead-letters", "--json")
    requeued = cli(server, validator, "tasks", "requeue", "d1", "--json")
    left = cli(server, validator, "tasks", "dead-letters", "--json")
    rest = cli(server, validator, "tasks", "requeue", "--all", "--json")

    assert listed.exit_code == 0, listed.output
    assert [t["task_id"] for t in json_lines(listed.stdout, "task_id")] == ["d1", "d2"]
    assert requeued.exit_code == 0, requeued.output
    ((task),) = json_lines(requeued.stdout, "task_id")
    assert (task["task_id"], task["status"]) == ("d1", "TASK_STATUS_PENDING")
    assert [t["task_id"] for t in json_lines(left.stdout, "task_id")] == ["d2"]
    assert [t["task_id"] for t in json_lines(rest.stdout, "task_id")] == ["d2"]


def test_tasks_cancel_and_a_refusal_is_a_cli_error(server, namespace):
    adder = server.issue_token("adder", "CONTRIBUTOR", namespace)
    other = server.issue_token("other", "CONTRIBUTOR", namespace)
    with Client(server.address, token=adder) as client:
        client.tasks.add_task(task_type="build", task_id="c1")

    refused = cli(server, other, "tasks", "cancel", "c1")
    cancelled = cli(server, adder, "tasks", "cancel", "c1", "--json")

    assert refused.exit_code == 1
    assert "NOT_TASK_ADDER" in refused.output
    assert cancelled.exit_code == 0, cancelled.output
    assert json_lines(cancelled.stdout, "task_id")[0]["status"] == "TASK_STATUS_CANCELLED"


def test_server_and_token_file_from_the_environment(server, namespace, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(server.issue_token("lead", "STEWARD", namespace) + "\n")
    env = {"AGENTCOORD_SERVER": server.address, "AGENTCOORD_TOKEN_FILE": str(token_file)}

    result = CliRunner().invoke(main, ["stats", "--json"], env=env)
    missing = CliRunner().invoke(main, ["stats"], env={"AGENTCOORD_SERVER": server.address})

    assert result.exit_code == 0, result.output
    assert json_lines(result.stdout, "server_version")
    assert missing.exit_code == 2
    assert "no token" in missing.output


def test_signals_tail_prints_live_signals_of_the_chosen_type(server, namespace):
    watcher = server.issue_token("watcher", "OBSERVER", namespace)
    results: list[Result] = []
    tail = threading.Thread(
        target=lambda: results.append(
            cli(
                server, watcher, "signals", "tail", "--type", "deploy", "--earliest",
                "--count", "2", "--json",
            )
        ),
        daemon=True,
    )
    tail.start()
    # Registered is not yet positioned: --earliest makes the signals below reach the tail
    # whether they are sent before or after its subscription settles on a start.
    hub = hub_for(server.server.ctx)
    deadline = time.monotonic() + 10
    while not hub.subscriptions(namespace) and time.monotonic() < deadline:
        time.sleep(0.01)
    with Client(server.address, token=server.issue_token("ci", "CONTRIBUTOR", namespace)) as ci:
        ci.signals.send_signal("deploy", {"version": 1})
        ci.signals.send_signal("chatter", {"noise": True})
        ci.signals.send_signal("deploy", {"version": 2})
    tail.join(30)

    assert not tail.is_alive()
    (result,) = results
    assert result.exit_code == 0, result.output
    printed = json_lines(result.stdout, "signal_type")
    assert [(s["signal_type"], s["data"]["version"], s["sender"]) for s in printed] == [
        ("deploy", 1, "ci"),
        ("deploy", 2, "ci"),
    ]


def test_health_reports_serving_without_a_token(server):
    result = CliRunner().invoke(main, ["health", "--server", server.address], env={})

    assert result.exit_code == 0, result.output
    assert "SERVING" in result.stdout


def test_health_fails_when_nothing_listens(tmp_path):
    result = CliRunner().invoke(
        main, ["health", "--server", "unix:" + str(tmp_path / "none.sock"), "--timeout", "1"], env={}
    )

    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.output


def test_operator_creates_a_namespace_issues_its_steward_lists_and_deletes_it(server):
    operator = server.issue_token("operator", "OPERATOR", "_operator")
    name = f"cli{time.time_ns()}"

    created = cli(server, operator, "namespaces", "create", name, "--description", "team", "--json")
    issued = cli(server, operator, "token", "issue", "lead", "--tier", "STEWARD", "--namespace", name)
    steward_token = issued.stdout.strip().splitlines()[-1]
    with Client(server.address, token=steward_token) as steward:
        principal = steward.admin.who_am_i()
    listed = cli(server, operator, "namespaces", "list", "--json")
    table = cli(server, operator, "namespaces", "list")
    tokens = cli(server, operator, "token", "list", "--namespace", name)
    deleted = cli(server, operator, "namespaces", "delete", name, "--yes", "--json")
    refused = cli(server, steward_token, "namespaces", "list")

    assert created.exit_code == 0, created.output
    assert json_lines(created.output, "name")[0]["state"] == "NAMESPACE_STATE_ACTIVE"
    assert (principal.namespace, principal.agent_id) == (name, "lead")
    assert name in {row["name"] for row in json_lines(listed.output, "name")}
    assert name in table.output and "ACTIVE" in table.output
    assert [row["agent_id"] for row in json_lines(tokens.output, "token_id")] == ["lead"]
    assert deleted.exit_code == 0 and json_lines(deleted.output, "name")[0]["name"] == name
    assert refused.exit_code == 1  # a STEWARD's token is revoked with its namespace
