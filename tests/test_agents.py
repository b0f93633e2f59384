"""The domain layer (Agent, TeamSession, Coordinator and their Async twins) against the real
server: each method does what its name says through the typed client, as the token's agent."""

from __future__ import annotations

import asyncio
import inspect

import agentcoord
import grpc
import pytest
from agentcoord import (
    Agent,
    AgentcoordError,
    AsyncAgent,
    AsyncCoordinator,
    AsyncTeamSession,
    Coordinator,
    TeamSession,
)
from agentcoord.client._async import agents as async_agents
from agentcoord.client._sync import agents as sync_agents


def _public(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


@pytest.mark.parametrize(
    ("sync_cls", "async_cls"),
    [(Agent, AsyncAgent), (TeamSession, AsyncTeamSession), (Coordinator, AsyncCoordinator)],
)
def test_sync_twin_has_the_async_surface_with_the_same_parameters(sync_cls, async_cls):
    assert _public(sync_cls) == _public(async_cls)
    for name in _public(async_cls):
        async_member, sync_member = getattr(async_cls, name), getattr(sync_cls, name)
        if callable(async_member):
            assert list(inspect.signature(sync_member).parameters) == list(
                inspect.signature(async_member).parameters
            ), name
            assert inspect.iscoroutinefunction(sync_member) is False, name


def test_package_exports_the_domain_layer_from_the_generated_modules():
    assert agentcoord.Agent is sync_agents.Agent
    assert agentcoord.AsyncAgent is async_agents.AsyncAgent
    assert agentcoord.Coordinator is sync_agents.Coordinator
    assert agentcoord.TeamSession is sync_agents.TeamSession
    assert {"Agent", "AsyncAgent", "Coordinator", "TeamSession"} <= set(agentcoord.__all__)


# -- Agent ---------------------------------------------------------------------------------------


def test_agent_id_is_the_tokens_agent(make_client):
    agent = Agent(client=make_client("security-1", "CONTRIBUTOR"))
    assert agent.agent_id() == "security-1"
    assert agent.principal().tier == agentcoord.v1.access_pb2.ACCESS_TIER_CONTRIBUTOR


def test_stash_is_authored_by_the_agent_and_readable_by_others_naming_the_owner(make_client):
    writer = Agent(client=make_client("writer", "CONTRIBUTOR"))
    reader = Agent(client=make_client("reader", "OBSERVER"))

    entry = writer.stash("finding.t1", {"issues": [1, 2], "file": "a.py"}, ttl=90)

    assert entry.owner == "writer"
    lifetime = entry.expire_time.ToDatetime() - entry.stash_time.ToDatetime()
    assert 89 <= lifetime.total_seconds() <= 90
    assert reader.retrieve("finding.t1", owner="writer") == {"issues": [1, 2], "file": "a.py"}
    assert writer.retrieve("finding.t1") == {"issues": [1, 2], "file": "a.py"}
    with pytest.raises(AgentcoordError) as refused:
        reader.retrieve("finding.t1")  # the reader's own memory has no such key
    assert refused.value.code is grpc.StatusCode.NOT_FOUND


def test_an_observer_agent_cannot_stash(make_client):
    monitor = Agent(client=make_client("monitor", "OBSERVER"))
    with pytest.raises(AgentcoordError) as refused:
        monitor.stash("notes", 1)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "TIER_TOO_LOW",
    )


def test_targeted_signal_reaches_only_its_target(make_client):
    sender = Agent(client=make_client("sender", "CONTRIBUTOR"))
    lead = Agent(client=make_client("lead", "VALIDATOR"))
    other = Agent(client=make_client("other", "OBSERVER"))

    sender.send_signal("review.pattern_staged", {"pattern": "p1"}, target_agent="lead")
    sender.send_signal("review.task_completed", {"task_id": "t1"})

    got = lead.receive_signals("review.pattern_staged", "review.task_completed")
    assert [(s.signal_type, s.sender, dict(s.data)) for s in got] == [
        ("review.pattern_staged", "sender", {"pattern": "p1"}),
        ("review.task_completed", "sender", {"task_id": "t1"}),
    ]
    assert [s.signal_type for s in other.receive_signals()] == ["review.task_completed"]
    assert [s.signal_type for s in lead.receive_signals("review.task_completed")] == [
        "review.task_completed"
    ]
    after_first = lead.receive_signals(after_id=got[0].id)
    assert [s.id for s in after_first] == [got[1].id]


def test_subscribe_from_earliest_then_live_in_order(make_client):
    sender = Agent(client=make_client("sender", "CONTRIBUTOR"))
    lead = Agent(client=make_client("lead", "VALIDATOR"))
    before = sender.send_signal("review.task_completed", {"n": 1})

    stream = lead.subscribe("review.task_completed", earliest=True)
    try:
        first = next(stream)
        sender.send_signal("review.other", {"n": 2})  # filtered out
        after = sender.send_signal("review.task_completed", {"n": 3})
        second = next(stream)
    finally:
        stream.close()

    assert (first.id, second.id) == (before.id, after.id)


def test_staged_patterns_returns_every_page(make_client):
    contributor = Agent(client=make_client("finder", "CONTRIBUTOR"))
    for i in range(105):  # the server's default page is 100
        contributor.stage_pattern(
            f"p{i:03d}", pattern_type="style", name=f"P{i}", confidence=(i % 10) / 10
        )

    staged = contributor.staged_patterns()

    assert sorted(p.pattern_id for p in staged) == [f"p{i:03d}" for i in range(105)]
    confidences = [p.confidence for p in staged]
    assert confidences == sorted(confidences, reverse=True)
    high = contributor.staged_patterns(minimum_confidence=0.9)
    assert {p.pattern_id for p in high} == {f"p{i:03d}" for i in range(9, 105, 10)}


def test_validator_promotes_above_threshold_and_rejects_below(make_client):
    finder = Agent(client=make_client("finder", "CONTRIBUTOR"))
    lead = Agent(client=make_client("lead", "VALIDATOR"))
    finder.stage_pattern("strong", pattern_type="security", name="Strong", confidence=0.9)
    finder.stage_pattern(
        "weak", pattern_type="security", name="Weak", confidence=0.5, context={"file": "a.py"}
    )

    promoted = lead.promote_pattern("strong", minimum_confidence=0.8, note="ok")
    with pytest.raises(AgentcoordError) as below:
        lead.promote_pattern("weak", minimum_confidence=0.8)
    rejection = lead.reject_pattern("weak", reason="too weak")

    assert (promoted.pattern_id, promoted.author, promoted.promoted_by) == (
        "strong",
        "finder",
        "lead",
    )
    assert (below.value.code, below.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BELOW_CONFIDENCE_THRESHOLD",
    )
    assert rejection.rejected_by == "lead"
    assert finder.staged_patterns() == []
    with pytest.raises(AgentcoordError) as contributor_promotes:
        finder.promote_pattern("anything")
    assert contributor_promotes.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_collaboration_state_round_trips_and_checks_the_version(make_client):
    agent = Agent(client=make_client("lead", "VALIDATOR"))

    first = agent.save_collaboration_state("pr-1", {"trust_level": 0.75, "trust_trajectory": [0.5]})
    second = agent.save_collaboration_state(
        "pr-1", {"trust_level": 0.9, "successful_interventions": 6}, expected_version=first
    )
    with pytest.raises(AgentcoordError) as stale:
        agent.save_collaboration_state("pr-1", {"trust_level": 0.1}, expected_version=first)
    state = agent.load_collaboration_state("pr-1")

    assert (first, second) == (1, 2)
    assert stale.value.code is grpc.StatusCode.ABORTED
    assert (state.trust_level, state.successful_interventions) == (0.9, 6)
    with pytest.raises(AgentcoordError) as missing:
        agent.load_collaboration_state("pr-2")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND


def test_agent_closes_only_a_client_it_opened(server, make_client, credentials):
    given = make_client("lead", "VALIDATOR")
    with Agent(client=given) as agent:
        agent.agent_id()
    assert given.admin.who_am_i().agent_id == "lead"  # still usable

    with Agent(server.address, **credentials("own", "OBSERVER")) as owner:
        assert owner.agent_id() == "own"
    with pytest.raises(ValueError):  # grpc refuses calls on a closed channel
        owner.client.admin.who_am_i()


# -- TeamSession ---------------------------------------------------------------------------------


def test_team_session_shares_with_participants_only(make_client):
    lead = Agent(client=make_client("lead", "VALIDATOR"))
    worker = Agent(client=make_client("worker", "CONTRIBUTOR"))
    outsider = Agent(client=make_client("outsider", "CONTRIBUTOR"))
    session, seen_by_worker = lead.session("pr-42"), worker.session("pr-42")

    created = session.create(purpose="Review PR #42", metadata={"pull_request": 42})
    session.share("scope", {"files_changed": 15})
    seen_by_worker.join()

    assert (created.session_id, created.created_by) == ("pr-42", "lead")
    assert seen_by_worker.get("scope") == {"files_changed": 15}
    assert sorted(session.participants()) == ["lead", "worker"]
    with pytest.raises(AgentcoordError) as not_in:
        outsider.session("pr-42").get("scope")
    assert (not_in.value.code, not_in.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_A_PARTICIPANT",
    )
    with pytest.raises(AgentcoordError) as never_shared:
        seen_by_worker.get("missing")
    assert never_shared.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(AgentcoordError) as again:
        session.create()
    assert again.value.code is grpc.StatusCode.ALREADY_EXISTS

    summary = session.signal("review.summary", {"promoted": 4})
    assert summary.session_id == "pr-42"
    assert [s.id for s in worker.receive_signals("review.summary")] == [summary.id]
    assert outsider.receive_signals("review.summary") == []

    assert list(seen_by_worker.leave().participants) == ["lead"]


# -- Coordinator ---------------------------------------------------------------------------------


def test_coordinator_claims_highest_priority_first_and_aggregates(make_client):
    lead = Agent(client=make_client("lead", "VALIDATOR")).coordinator()
    worker = Agent(client=make_client("security-1", "CONTRIBUTOR")).coordinator()
    worker.register_agent(["security_review"])
    lead.add_task(task_id="low", task_type="security_review", priority=3)
    lead.add_task(task_id="high", task_type="security_review", priority=9, payload={"f": "a.py"})
    lead.add_task(task_id="style", task_type="style_review", priority=10)

    first = worker.claim_task(lease=30)  # no types: the registered capabilities
    second = worker.claim_task("security_review", lease=30)
    assert worker.claim_task("security_review") is None

    assert (first.task_id, second.task_id) == ("high", "low")
    assert first.assignee == "security-1"
    done = worker.complete_task(first, {"issues": 2, "file": "a.py"})
    worker.complete_task(second)
    assert done.status == agentcoord.v1.tasks_pb2.TASK_STATUS_COMPLETED

    results = lead.aggregate_results()
    assert results["total_completed"] == 2
    assert results["by_agent"] == {"security-1": 2}
    assert results["by_type"] == {"security_review": 2}
    assert [r["task_id"] for r in results["recent_results"]] == ["low", "high"]  # newest first
    high = results["recent_results"][1]
    assert (high["agent_id"], high["task_type"]) == ("security-1", "security_review")
    assert high["result"] == {"issues": 2, "file": "a.py"}
    assert type(high["result"]["issues"]) is int
    assert lead.aggregate_results("style_review")["total_completed"] == 0


def test_completing_after_failing_the_attempt_is_lease_lost(make_client):
    coordinator = Agent(client=make_client("worker", "CONTRIBUTOR")).coordinator()
    coordinator.add_task(task_id="t1", task_type="lint", max_attempts=2)
    task = coordinator.claim_task("lint", lease=30)

    failed = coordinator.fail_task(task, "flaky")
    with pytest.raises(AgentcoordError) as lost:
        coordinator.complete_task(task, {"ok": True})
    again = coordinator.claim_task("lint", lease=30)

    assert failed.status == agentcoord.v1.tasks_pb2.TASK_STATUS_PENDING
    assert (lost.value.code, lost.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "LEASE_LOST",
    )
    assert (again.task_id, again.attempts) == ("t1", 2)
    assert coordinator.fail_task(again, "broken", retryable=False).status == (
        agentcoord.v1.tasks_pb2.TASK_STATUS_DEAD_LETTERED
    )


def test_coordinator_worker_runs_the_handler_and_completes(make_client):
    coordinator = Agent(client=make_client("worker", "CONTRIBUTOR")).coordinator()
    for i in range(3):
        coordinator.add_task(task_id=f"t{i}", task_type="lint", payload={"n": i})

    handled = coordinator.worker(
        lambda task: {"double": task.payload["n"] * 2}, "lint", lease=10, wait=0.2
    ).run(stop_when_idle=True)

    assert handled == 3
    results = coordinator.aggregate_results("lint")
    assert results["by_agent"] == {"worker": 3}
    assert sorted(r["result"]["double"] for r in results["recent_results"]) == [0, 2, 4]


# -- the async twins -----------------------------------------------------------------------------


async def test_async_agent_does_the_review_round_trip(make_aclient):
    async with (
        AsyncAgent(client=make_aclient("lead", "VALIDATOR")) as lead,
        AsyncAgent(client=make_aclient("security-1", "CONTRIBUTOR")) as worker,
    ):
        assert await worker.agent_id() == "security-1"
        session = lead.session("pr-42")
        await session.create(purpose="review")
        await session.share("scope", {"files_changed": 15})
        await worker.session("pr-42").join()
        assert await worker.session("pr-42").get("scope") == {"files_changed": 15}
        assert sorted(await session.participants()) == ["lead", "security-1"]

        stream = lead.subscribe("review.task_completed", earliest=True)
        lead_coordinator, coordinator = lead.coordinator(), worker.coordinator()
        await lead_coordinator.add_task(task_id="sec", task_type="security_review", priority=8)
        await coordinator.register_agent(["security_review"])
        task = await coordinator.claim_task(lease=30, wait=1)
        assert task is not None and task.task_id == "sec"
        await worker.stash(f"finding.{task.task_id}", {"issues": 1})
        await worker.stage_pattern(
            "parameterised-sql", pattern_type="security_review", name="SQL", confidence=0.88
        )
        await coordinator.complete_task(task, {"issues": 1})
        sent = await worker.send_signal("review.task_completed", {"task_id": "sec"})

        heard = await asyncio.wait_for(stream.__anext__(), 10)
        await stream.aclose()
        assert (heard.id, heard.sender) == (sent.id, "security-1")
        assert await lead.retrieve("finding.sec", owner="security-1") == {"issues": 1}
        assert [p.pattern_id for p in await lead.staged_patterns()] == ["parameterised-sql"]
        assert (
            await lead.promote_pattern("parameterised-sql", minimum_confidence=0.8)
        ).promoted_by == "lead"
        results = await lead_coordinator.aggregate_results()
        assert (results["by_agent"], results["recent_results"][0]["result"]) == (
            {"security-1": 1},
            {"issues": 1},
        )
        version = await lead.save_collaboration_state("pr-42", {"trust_level": 0.9})
        assert version == 1
        assert (await lead.load_collaboration_state("pr-42")).trust_level == 0.9
        assert [s.signal_type for s in await lead.receive_signals()] == ["review.task_completed"]


async def test_async_agent_closes_only_a_client_it_opened(server, make_aclient, credentials):
    given = make_aclient("lead", "VALIDATOR")
    async with AsyncAgent(client=given) as agent:
        await agent.agent_id()
    assert (await given.admin.who_am_i()).agent_id == "lead"

    async with AsyncAgent(server.address, **credentials("own", "OBSERVER")) as owner:
        assert (await owner.principal()).agent_id == "own"
    with pytest.raises(grpc.aio.UsageError, match="closed"):
        await owner.client.admin.who_am_i()
