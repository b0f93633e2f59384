"""An OPERATOR token for a Redis whose tokens were bootstrapped before the operator tier existed
(issue #14): the server starts on it and says none exists; `agentcoord operator-token`, run
locally against the data directory, issues one without touching the data, and registers the
namespace `default` its tokens live in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aredis
from agentcoord import Client
from agentcoord.v1 import access_pb2
from agentcoord_server.cli import main
from agentcoord_server.embedded_redis import EmbeddedRedis
from agentcoord_server.store.tokens import TokenStore
from click.testing import CliRunner

from .test_faults import ServeProcess

NO_OPERATOR = "no OPERATOR token exists"


def pre_operator_data_dir(data_dir: Path) -> str:
    """A data directory as a server from before the operator tier left it: one STEWARD token of
    namespace `default`, no OPERATOR token, no namespace registry. Returns the STEWARD token."""

    async def seed(url: str) -> str:
        redis = aredis.Redis.from_url(url, decode_responses=True)
        try:
            token, _ = await TokenStore(redis).issue(
                "default", "steward", access_pb2.ACCESS_TIER_STEWARD, issued_by="bootstrap"
            )
            return token
        finally:
            await redis.aclose()

    with EmbeddedRedis(data_dir) as embedded:
        return asyncio.run(seed(embedded.url))


def operator_token(*args: str):
    return CliRunner().invoke(main, ["operator-token", *args], env={"REDIS_URL": ""})


def test_a_live_server_on_pre_operator_data_gets_an_operator_token_and_keeps_the_data(tmp_path):
    data_dir = tmp_path / "data"
    steward_token = pre_operator_data_dir(data_dir)
    server = ServeProcess(data_dir)
    try:
        address = server.wait_serving()
        with Client(address, token=steward_token) as steward:
            steward.memory.stash("kept", {"n": 1})

            issued = operator_token("--data-dir", str(data_dir), "--output", str(data_dir / "operator-token"))
            with Client(address, token=(data_dir / "operator-token").read_text().strip()) as operator:
                principal = operator.admin.who_am_i()
                listed = [n.name for n in operator.admin.iter_namespaces()]
                operator.admin.create_namespace("team-b")
                operator.admin.issue_token("lead", "STEWARD", namespace="team-b")
                operator.admin.issue_token("worker", "CONTRIBUTOR", namespace="default")
            kept = steward.memory.retrieve("kept")
    finally:
        server.close()

    assert NO_OPERATOR in server.output
    assert issued.exit_code == 0, issued.output
    assert (data_dir / "operator-token").stat().st_mode & 0o777 == 0o600
    assert principal.tier == access_pb2.ACCESS_TIER_OPERATOR
    assert listed == ["default"]  # registered now: its tokens predate the registry
    assert kept == {"n": 1}


def test_with_no_server_running_it_starts_the_embedded_redis_itself(tmp_path):
    data_dir = tmp_path / "data"
    pre_operator_data_dir(data_dir)

    issued = operator_token("--data-dir", str(data_dir))
    token = issued.stdout.strip().splitlines()[-1]
    server = ServeProcess(data_dir)
    try:
        with Client(server.wait_serving(), token=token) as operator:
            principal = operator.admin.who_am_i()
    finally:
        server.close()

    assert issued.exit_code == 0, issued.output
    assert principal.tier == access_pb2.ACCESS_TIER_OPERATOR
    assert NO_OPERATOR not in server.output


def test_a_missing_data_directory_is_refused_in_one_line(tmp_path):
    refused = operator_token("--data-dir", str(tmp_path / "nowhere"))

    assert refused.exit_code == 1
    assert "no data directory" in refused.output
    assert not (tmp_path / "nowhere").exists()


def test_on_an_external_redis_it_prints_a_working_operator_token(server, redis_url):
    issued = operator_token("--redis-url", redis_url)
    token = issued.stdout.strip().splitlines()[-1]

    with Client(server.address, token=token) as operator:
        principal = operator.admin.who_am_i()

    assert issued.exit_code == 0, issued.output
    assert principal.tier == access_pb2.ACCESS_TIER_OPERATOR
