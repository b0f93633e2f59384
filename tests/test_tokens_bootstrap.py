"""Bootstrap: the first start with no tokens makes one STEWARD token for `default` in a 0600 file
and logs the file's path, never the token; `--bootstrap-token` supplies it instead. And no
token ever appears in the log output.

Each test uses its own Redis database (same redis-server), so "no tokens yet" is true.
"""

from __future__ import annotations

import io
import itertools
import json
import stat
import threading

import grpc
import pytest
import redis
import structlog
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import access_pb2, admin_pb2, admin_pb2_grpc
from agentcoord_server.app import AgentcoordServer
from agentcoord_server.logs import configure_logging

from .conftest import server_settings
from .support import ServerThread

_databases = itertools.count(1)


@pytest.fixture
def empty_redis_url(redis_url):
    url = f"{redis_url}?db={next(_databases)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def captured_logs():
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    yield out
    structlog.reset_defaults()


def test_first_start_writes_a_steward_token_to_a_private_file_and_logs_its_path(
    empty_redis_url, tmp_path, captured_logs
):
    handle = ServerThread(server_settings(empty_redis_url, data_dir=tmp_path)).start()
    try:
        path = tmp_path / "bootstrap-token"
        token = path.read_text().strip()
        with Client(handle.address, token=token) as client:
            principal = client.admin.who_am_i()
    finally:
        handle.stop()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (principal.agent_id, principal.namespace, principal.tier) == (
        "steward",
        "default",
        access_pb2.ACCESS_TIER_STEWARD,
    )
    logged = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    assert any(entry.get("path") == str(path.resolve()) for entry in logged)
    assert token not in captured_logs.getvalue()


def test_a_later_start_makes_no_second_token(empty_redis_url, tmp_path):
    first = ServerThread(server_settings(empty_redis_url, data_dir=tmp_path)).start()
    first.stop()
    token = (tmp_path / "bootstrap-token").read_text().strip()

    second = ServerThread(server_settings(empty_redis_url, data_dir=tmp_path)).start()
    try:
        with Client(second.address, token=token) as client:
            listed = list(client.admin.iter_tokens())
    finally:
        second.stop()

    assert [t.issued_by for t in listed] == ["bootstrap"]
    assert (tmp_path / "bootstrap-token").read_text().strip() == token


def test_supplied_bootstrap_token_is_registered_and_no_file_is_written(
    empty_redis_url, tmp_path, captured_logs
):
    supplied = "operator-chosen-secret-0123456789"
    handle = ServerThread(
        server_settings(empty_redis_url, data_dir=tmp_path, bootstrap_token=supplied)
    ).start()
    try:
        with Client(handle.address, token=supplied) as client:
            principal = client.admin.who_am_i()
    finally:
        handle.stop()

    assert (principal.namespace, principal.tier) == ("default", access_pb2.ACCESS_TIER_STEWARD)
    assert not (tmp_path / "bootstrap-token").exists()
    assert supplied not in captured_logs.getvalue()


def test_supplied_bootstrap_token_is_ignored_when_tokens_exist(empty_redis_url, tmp_path):
    ServerThread(server_settings(empty_redis_url, data_dir=tmp_path)).start().stop()
    supplied = "operator-chosen-secret-0123456789"

    handle = ServerThread(
        server_settings(empty_redis_url, data_dir=tmp_path, bootstrap_token=supplied)
    ).start()
    try:
        with Client(handle.address, token=supplied) as client, pytest.raises(AgentcoordError) as caught:
            client.admin.who_am_i()
    finally:
        handle.stop()

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("bad", ["short", "has whitespace in the middle of it", "x" * 513])
def test_unusable_bootstrap_tokens_are_refused_at_start(redis_url, bad):
    with pytest.raises(ValueError, match="bootstrap token"):
        AgentcoordServer(server_settings(redis_url, bootstrap_token=bad))


def test_settings_repr_hides_the_bootstrap_token(redis_url):
    settings = server_settings(redis_url, bootstrap_token="operator-chosen-secret-0123456789")

    assert "operator-chosen-secret" not in repr(settings)


def test_tokens_never_appear_in_the_log_output(empty_redis_url, tmp_path, captured_logs):
    handle = ServerThread(server_settings(empty_redis_url, data_dir=tmp_path)).start()
    seen: list[str] = []
    try:
        steward = (tmp_path / "bootstrap-token").read_text().strip()
        seen.append(steward)
        with Client(handle.address, token=steward) as admin:
            issued = admin.admin.issue_token("w1", "CONTRIBUTOR", description="log test")
            seen.append(issued.token)
            with Client(handle.address, token=issued.token) as worker:
                worker.admin.who_am_i()
                with pytest.raises(AgentcoordError):
                    worker.admin.list_tokens()  # refused locally
            with grpc.insecure_channel(handle.address) as channel:  # no client-side check
                stub = admin_pb2_grpc.AdminServiceStub(channel)
                with pytest.raises(grpc.RpcError):  # refused by the server: PERMISSION_DENIED
                    stub.ListTokens(
                        admin_pb2.ListTokensRequest(),
                        metadata=[("authorization", f"Bearer {issued.token}")],
                    )
            admin.admin.revoke_token(issued.info.token_id)
            bogus = "agc_this-one-was-never-issued-but-looks-real-0001"
            seen.append(bogus)
            with Client(handle.address, token=bogus) as stranger, pytest.raises(AgentcoordError):
                stranger.admin.who_am_i()
            with Client(handle.address, metadata=[("authorization", f"Basic {bogus}")]) as odd:
                with pytest.raises(AgentcoordError):
                    odd.admin.who_am_i()
    finally:
        handle.stop()

    output = captured_logs.getvalue()
    assert '"rpc"' in output and "PERMISSION_DENIED" in output  # the calls were logged
    for token in seen:
        assert token not in output
        assert token.split("_", 1)[1][:16] not in output


def test_servers_starting_together_on_an_empty_redis_make_one_bootstrap_token(
    empty_redis_url, tmp_path
):
    handles = [
        ServerThread(server_settings(empty_redis_url, data_dir=tmp_path / f"s{i}")) for i in range(4)
    ]
    threads = [threading.Thread(target=h.start) for h in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        written = [p for p in tmp_path.glob("s*/bootstrap-token")]
        client = redis.Redis.from_url(empty_redis_url, decode_responses=True)
        global_entries = list(client.scan_iter(match="ac:tokens:*"))
        live = client.zrange("ac:tokens", 0, -1)
        client.close()
    finally:
        for handle in handles:
            handle.stop()

    assert len(written) == 1
    assert len(list(tmp_path.glob("s*/operator-token"))) == 1
    assert len(global_entries) == 2  # the STEWARD of `default` and the OPERATOR
    assert sorted(f"ac:tokens:{digest}" for digest in live) == sorted(global_entries)
