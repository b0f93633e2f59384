"""Token administration: IssueToken, RevokeToken, ListTokens (STEWARD, own namespace only), and
how tokens are stored (SHA-256 hashes only, no TTL but their own lifetime)."""

from __future__ import annotations

import hashlib
import time

import grpc
import pytest
from agentcoord import AgentcoordError, Client
from agentcoord.v1 import access_pb2

from .support import ServerThread

pytestmark = pytest.mark.every_backend


def namespace_keys(redis_client, namespace: str) -> set[str]:
    return set(redis_client.scan_iter(match=f"ac:{{{namespace}}}:*", count=1000))


def wait_until_refused(client: Client, bound_s: float) -> AgentcoordError:
    """Polls WhoAmI until it fails; fails the test if it still works after `bound_s` + 1 s."""
    deadline = time.monotonic() + bound_s + 1.0
    while True:
        try:
            client.admin.who_am_i()
        except AgentcoordError as exc:
            return exc
        assert time.monotonic() < deadline, f"still accepted {bound_s + 1} s after revocation"
        time.sleep(0.1)


def test_issued_token_authenticates_as_its_agent_namespace_and_tier(make_client, server, namespace):
    steward = make_client("lead", "STEWARD")

    issued = steward.admin.issue_token("worker-7", "CONTRIBUTOR", description="nightly batch")

    with Client(server.address, token=issued.token) as worker:
        principal = worker.admin.who_am_i()
    assert (principal.agent_id, principal.namespace, principal.tier) == (
        "worker-7",
        namespace,
        access_pb2.ACCESS_TIER_CONTRIBUTOR,
    )
    assert issued.info.issued_by == "lead"
    assert issued.info.description == "nightly batch"
    assert issued.info.token_id.startswith("tok-")
    assert not issued.info.HasField("expire_time")


def test_only_the_sha256_of_a_token_is_stored(make_client, namespace, redis_client):
    issued = make_client("lead", "STEWARD").admin.issue_token("w1", "OBSERVER")
    digest = hashlib.sha256(issued.token.encode()).hexdigest()

    everything = {
        key: redis_client.hgetall(key) if redis_client.type(key) == "hash" else None
        for key in [*namespace_keys(redis_client, namespace), f"ac:tokens:{digest}"]
    }

    assert redis_client.exists(f"ac:tokens:{digest}")
    dumped = repr(everything)
    assert issued.token not in dumped
    assert issued.token.split("_", 1)[1] not in dumped  # not even the random part


def test_tokens_without_lifetime_never_expire(make_client, redis_client, namespace):
    issued = make_client("lead", "STEWARD").admin.issue_token("w1", "OBSERVER")
    digest = hashlib.sha256(issued.token.encode()).hexdigest()

    assert redis_client.pttl(f"ac:tokens:{digest}") == -1
    assert redis_client.pttl(f"ac:{{{namespace}}}:tokens:{issued.info.token_id}") == -1


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_token_with_lifetime_expires_with_its_keys(make_client, server, redis_client, namespace):
    issued = make_client("lead", "STEWARD").admin.issue_token("w1", "OBSERVER", lifetime=1)
    digest = hashlib.sha256(issued.token.encode()).hexdigest()

    assert 0 < redis_client.pttl(f"ac:tokens:{digest}") <= 1000
    assert 0 < redis_client.pttl(f"ac:{{{namespace}}}:tokens:{issued.info.token_id}") <= 1000
    assert issued.info.expire_time.ToMilliseconds() - issued.info.create_time.ToMilliseconds() == 1000
    with Client(server.address, token=issued.token) as client:
        client.admin.who_am_i()  # works before it expires
        time.sleep(1.1)
        with pytest.raises(AgentcoordError) as caught:
            client.admin.who_am_i()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason in {"TOKEN_EXPIRED", "UNKNOWN_TOKEN"}


def test_list_tokens_pages_in_issue_order_without_secrets(make_client, namespace):
    steward = make_client("lead", "STEWARD")
    issued = [steward.admin.issue_token(f"w{i}", "OBSERVER") for i in range(5)]
    make_client("other", "STEWARD", ns=f"{namespace}-x").admin.issue_token("w9", "OBSERVER")

    pages, page_token = [], ""
    while True:
        page = steward.admin.list_tokens(page_size=2, page_token=page_token)
        pages.append([t.agent_id for t in page.tokens])
        page_token = page.next_page_token
        if not page_token:
            break

    # the steward's own token comes first: it was issued before the five
    assert pages == [["lead", "w0"], ["w1", "w2"], ["w3", "w4"]]
    listed = list(steward.admin.iter_tokens())
    assert [t.token_id for t in listed[1:]] == [i.info.token_id for i in issued]
    assert {t.namespace for t in listed} == {namespace}
    for issued_token in issued:
        assert issued_token.token not in repr(listed)


@pytest.mark.standalone_only  # waits out a TTL, lease or bound: once is enough
def test_revoked_token_is_refused_within_the_cache_bound(make_client, server):
    steward = make_client("lead", "STEWARD")
    issued = steward.admin.issue_token("w1", "CONTRIBUTOR")
    with Client(server.address, token=issued.token) as worker:
        worker.admin.who_am_i()  # now cached by the server

        revoked = steward.admin.revoke_token(issued.info.token_id)
        error = wait_until_refused(worker, server.settings.auth_cache_seconds)

    assert revoked.token_id == issued.info.token_id
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "UNKNOWN_TOKEN"
    assert [t.agent_id for t in steward.admin.iter_tokens()] == ["lead"]


def test_revoking_leaves_no_keys_behind(make_client, redis_client, namespace):
    steward = make_client("lead", "STEWARD")
    before = namespace_keys(redis_client, namespace)
    issued = steward.admin.issue_token("w1", "CONTRIBUTOR")
    digest = hashlib.sha256(issued.token.encode()).hexdigest()

    steward.admin.revoke_token(issued.info.token_id)

    assert not redis_client.exists(f"ac:tokens:{digest}")
    assert namespace_keys(redis_client, namespace) == before
    assert redis_client.zrange(f"ac:{{{namespace}}}:tokens:index", 0, -1) == [
        t.token_id for t in steward.admin.iter_tokens()
    ]


def test_revoking_an_unknown_token_is_not_found(make_client):
    with pytest.raises(AgentcoordError) as caught:
        make_client("lead", "STEWARD").admin.revoke_token("tok-000000000000deadbeef")

    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "TOKEN_NOT_FOUND"


def test_steward_cannot_revoke_another_namespaces_token(make_client, server, namespace):
    theirs = make_client("boss", "STEWARD", ns=f"{namespace}-other").admin.issue_token("w1", "OBSERVER")

    with pytest.raises(AgentcoordError) as caught:
        make_client("lead", "STEWARD").admin.revoke_token(theirs.info.token_id)

    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    with Client(server.address, token=theirs.token) as client:
        assert client.admin.who_am_i().namespace == f"{namespace}-other"


def test_steward_cannot_issue_a_token_in_another_namespace(make_client, redis_client, namespace):
    steward = make_client("lead", "STEWARD")
    before = namespace_keys(redis_client, f"{namespace}-other")

    with pytest.raises(AgentcoordError) as caught:
        steward.admin.issue_token("w1", "STEWARD", namespace=f"{namespace}-other")

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "NAMESPACE_MISMATCH"
    assert namespace_keys(redis_client, f"{namespace}-other") == before == set()


def test_issuing_in_ones_own_namespace_by_name_is_allowed(make_client, namespace):
    issued = make_client("lead", "STEWARD").admin.issue_token("w1", "OBSERVER", namespace=namespace)

    assert issued.info.namespace == namespace


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"agent_id": "a:*", "tier": "OBSERVER"}, "agent_id"),
        ({"agent_id": "", "tier": "OBSERVER"}, "agent_id"),
        ({"agent_id": "w1", "tier": 0}, "tier"),
        ({"agent_id": "w1", "tier": 9}, "tier"),
        ({"agent_id": "w1", "tier": "OBSERVER", "lifetime": 0.5}, "lifetime"),
        ({"agent_id": "w1", "tier": "OBSERVER", "description": "x" * 257}, "description"),
    ],
)
def test_bad_issue_requests_are_invalid_and_write_nothing(
    make_client, redis_client, namespace, kwargs, field
):
    steward = make_client("lead", "STEWARD")
    before = namespace_keys(redis_client, namespace)
    global_before = len(list(redis_client.scan_iter(match="ac:tokens:*", count=1000)))

    with pytest.raises(AgentcoordError) as caught:
        steward.admin.issue_token(**kwargs)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == [field]
    assert namespace_keys(redis_client, namespace) == before
    assert len(list(redis_client.scan_iter(match="ac:tokens:*", count=1000))) == global_before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"page_size": -1}, "page_size"), ({"page_size": 1001}, "page_size"), ({"page_token": "a:*"}, "page_token")],
)
def test_bad_list_requests_are_invalid(make_client, kwargs, field):
    with pytest.raises(AgentcoordError) as caught:
        make_client("lead", "STEWARD").admin.list_tokens(**kwargs)

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in caught.value.field_violations] == [field]


def test_expired_tokens_drop_out_of_the_list_and_the_index(make_client, redis_client, namespace):
    steward = make_client("lead", "STEWARD")
    steward.admin.issue_token("short-lived", "OBSERVER", lifetime=1)
    time.sleep(1.1)

    assert [t.agent_id for t in steward.admin.iter_tokens()] == ["lead"]
    assert redis_client.zcard(f"ac:{{{namespace}}}:tokens:index") == 1


def test_any_server_over_the_same_redis_accepts_the_token(redis_url, credentials):
    from .conftest import server_settings

    other = ServerThread(server_settings(redis_url)).start()
    try:
        with Client(other.address, **credentials("w1", "OBSERVER")) as client:
            assert client.admin.who_am_i().agent_id == "w1"
    finally:
        other.stop()
