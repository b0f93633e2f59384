"""The lead reviewer (VALIDATOR), one OS process: opens the team session, adds the prioritised
tasks, follows completions over a live subscription, promotes patterns above the confidence
threshold (rejecting the rest), aggregates the results and persists its collaboration state.

    AGENTCOORD_TARGET=… AGENTCOORD_TOKEN=… python lead.py
"""

from __future__ import annotations

import json

from agentcoord import Agent, AgentcoordError

import in_time
from scenario import (
    PROMOTION_THRESHOLD,
    REVISED_SCOPE,
    SCOPE,
    SCOPE_KEY,
    SESSION_ID,
    TASKS,
    fail,
    say,
    target,
)

ME = "lead"


# --- the watched scope (issue #16) ---------------------------------------------------------


def publish_scope(agent: Agent) -> int:
    """Stashes the scope in the lead's working memory; returns its revision."""
    return agent.client.memory.stash(SCOPE_KEY, SCOPE).revision


def revise_scope(agent: Agent, revision: int) -> None:
    """Mid-run, the scope grows: a conditional stash on the revision the lead wrote, so a
    concurrent change by anyone else would be refused rather than overwritten."""
    entry = agent.client.memory.stash(SCOPE_KEY, REVISED_SCOPE, expected_revision=revision)
    say(
        ME,
        f"revised {SCOPE_KEY}: {REVISED_SCOPE['files_changed']} files (revision {entry.revision})",
    )


def main() -> None:
    with Agent(target()) as agent:
        session = agent.session(SESSION_ID)
        session.create(purpose="Review PR #42", metadata={"pull_request": 42})
        session.share("scope", SCOPE)
        say(ME, f"opened team session {SESSION_ID} and shared its scope")
        scope_revision = publish_scope(agent)

        coordinator = agent.coordinator()
        # From the earliest retained signal: no completion can slip past, however fast the workers.
        signals = agent.subscribe("review.task_completed", "review.pattern_staged", earliest=True)
        for task_id, (task_type, priority, description, pattern) in TASKS.items():
            coordinator.add_task(
                task_id=task_id,
                task_type=task_type,
                priority=priority,
                description=description,
                payload={"pattern": pattern},
            )
        say(
            ME, f"added {len(TASKS)} tasks: " + ", ".join(f"{t}(p{v[1]})" for t, v in TASKS.items())
        )
        in_time.add_tasks(coordinator)
        in_time.cancel_held_review(coordinator)

        completed: set[str] = set()
        for signal in signals:
            if signal.signal_type == "review.pattern_staged":
                say(ME, f"heard from {signal.sender}: staged {signal.data['pattern']}")
                continue
            completed.add(signal.data["task_id"])
            say(
                ME,
                f"{signal.data['task_id']} done by {signal.sender} ({len(completed)}/{len(TASKS)})",
            )
            if len(completed) == 1:
                revise_scope(agent, scope_revision)
            if completed == set(TASKS):
                break
        signals.close()
        in_time.synthesize(coordinator)

        promoted, rejected = [], []
        for staged in agent.staged_patterns():
            try:
                agent.promote_pattern(
                    staged.pattern_id, minimum_confidence=PROMOTION_THRESHOLD, note="PR #42 review"
                )
                promoted.append(staged.pattern_id)
                say(ME, f"promoted {staged.pattern_id} ({staged.confidence:.2f}) into the library")
            except AgentcoordError as error:
                if error.reason != "BELOW_CONFIDENCE_THRESHOLD":
                    raise
                agent.reject_pattern(
                    staged.pattern_id, reason=f"confidence below {PROMOTION_THRESHOLD}"
                )
                rejected.append(staged.pattern_id)
                say(ME, f"rejected {staged.pattern_id} ({staged.confidence:.2f}): below threshold")

        results = coordinator.aggregate_results()
        say(
            ME,
            f"aggregate: {results['total_completed']} completed, by agent {json.dumps(results['by_agent'], sort_keys=True)}",
        )

        version = agent.save_collaboration_state(
            SESSION_ID,
            {
                "trust_level": 0.9,
                "successful_interventions": len(completed),
                "failed_interventions": 0,
                "total_interactions": len(completed) + len(promoted) + len(rejected),
                "current_empathy_level": 3,
                "trust_trajectory": [0.5, 0.7, 0.9],
            },
        )
        restored = agent.load_collaboration_state(SESSION_ID)
        if restored.successful_interventions != len(completed):
            fail(ME, "collaboration state did not round-trip")
        say(ME, f"persisted collaboration state (version {version}, trust {restored.trust_level})")

        session.signal("review.summary", {"promoted": promoted, "rejected": rejected})
        agent.send_signal("review.done", {"completed": len(completed)})
        say(ME, "review done")


if __name__ == "__main__":
    main()
