"""grpcurl (installed by `make test` into ./bin) can list, describe and call a live server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def grpcurl() -> str:
    path = ROOT / "bin" / "grpcurl"
    found = str(path) if path.exists() else shutil.which("grpcurl")
    assert found, "grpcurl is missing: `make test` installs it into ./bin"
    return found


def run(grpcurl: str, *args: str) -> str:
    result = subprocess.run(
        [grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_lists_services_without_proto_files(grpcurl, server):
    services = run(grpcurl, server.address, "list").split()

    assert "agentcoord.v1.AdminService" in services
    assert "grpc.health.v1.Health" in services


def test_grpcurl_describes_a_service(grpcurl, server):
    description = run(grpcurl, server.address, "describe", "agentcoord.v1.AdminService")

    assert "rpc WhoAmI ( .agentcoord.v1.WhoAmIRequest ) returns ( .agentcoord.v1.WhoAmIResponse )" in description


def test_grpcurl_calls_who_am_i_with_a_bearer_token(grpcurl, server, namespace):
    token = server.issue_token("grpcurl-user", "OBSERVER", namespace)

    output = run(
        grpcurl,
        "-H", f"authorization: Bearer {token}",
        server.address,
        "agentcoord.v1.AdminService/WhoAmI",
    )

    assert json.loads(output) == {
        "principal": {"agent_id": "grpcurl-user", "namespace": namespace, "tier": "ACCESS_TIER_OBSERVER"}
    }


def test_grpcurl_issues_a_token_with_plain_json(grpcurl, server, namespace):
    steward = server.issue_token("lead", "STEWARD", namespace)

    output = run(
        grpcurl,
        "-H", f"authorization: Bearer {steward}",
        "-d", '{"agent_id": "worker-7", "tier": "ACCESS_TIER_CONTRIBUTOR", "lifetime": "3600s"}',
        server.address,
        "agentcoord.v1.AdminService/IssueToken",
    )

    issued = json.loads(output)
    assert issued["token"].startswith("agc_")
    assert issued["info"]["agent_id"] == "worker-7"
    assert issued["info"]["namespace"] == namespace
    assert issued["info"]["issued_by"] == "lead"


def test_grpcurl_describes_a_method(grpcurl, server):
    description = run(grpcurl, server.address, "describe", "agentcoord.v1.TaskService.ClaimTask")

    assert "agentcoord.v1.TaskService.ClaimTask is a method:" in description
    assert "rpc ClaimTask ( .agentcoord.v1.ClaimTaskRequest ) returns ( .agentcoord.v1.ClaimTaskResponse )" in description


def test_grpcurl_describe_of_an_unknown_method_fails(grpcurl, server):
    result = subprocess.run(
        [grpcurl, "-plaintext", server.address, "describe", "agentcoord.v1.TaskService.NoSuchMethod"],
        capture_output=True, text=True, timeout=30,
    )

    assert result.returncode != 0
    assert "Symbol not found" in result.stderr


def test_grpcurl_acquires_reads_renews_and_releases_a_lock_as_the_readme_shows(
    grpcurl, server, namespace
):
    token = server.issue_token("grpcurl-locker", "CONTRIBUTOR", namespace)
    auth = ("-H", f"authorization: Bearer {token}")
    lock_id = "file.orders.repository.py"

    def call(method: str, body: dict) -> dict:
        output = run(
            grpcurl, *auth, "-d", json.dumps(body), server.address,
            f"agentcoord.v1.LockService/{method}",
        )
        return json.loads(output)

    acquired = call("AcquireLock", {"lock_id": lock_id, "ttl": "30s", "wait": "10s"})["lock"]
    token_ = int(acquired["fencing_token"])  # an int64: JSON carries it as a string
    renewed = call("RenewLock", {"lock_id": lock_id, "fencing_token": token_, "ttl": "30s"})
    seen = call("GetLock", {"lock_id": lock_id})["lock"]
    released = call("ReleaseLock", {"lock_id": lock_id, "fencing_token": token_})["lock"]

    assert acquired["holder"] == seen["holder"] == released["holder"] == "grpcurl-locker"
    assert renewed["lock"]["fencing_token"] == seen["fencing_token"] == acquired["fencing_token"]
