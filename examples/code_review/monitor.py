"""The monitor (OBSERVER), one OS process: follows every signal it may see, read-only, until
the review is done. Targeted signals to the lead stay invisible to it; writing is refused.

    AGENTCOORD_TARGET=… AGENTCOORD_TOKEN=… python monitor.py
"""

from __future__ import annotations

from agentcoord import Agent, AgentcoordError

from scenario import TASKS, fail, say, target

ME = "monitor"


def main() -> None:
    with Agent(target()) as agent:
        try:
            agent.stash("notes", {"allowed": False})
            fail(ME, "an OBSERVER could write")
        except AgentcoordError as error:
            say(ME, f"may only watch: stash refused with {error.code.name} {error.reason}")

        seen: dict[str, int] = {}
        signals = agent.subscribe(earliest=True)
        for signal in signals:
            seen[signal.signal_type] = seen.get(signal.signal_type, 0) + 1
            if signal.signal_type == "review.done":
                break
            say(ME, f"saw {signal.signal_type} from {signal.sender}")
        signals.close()
        if seen.get("review.task_completed") != len(TASKS) or "review.pattern_staged" in seen:
            fail(ME, f"saw {seen}")
        say(ME, f"saw {sum(seen.values())} signals, none of the lead's private ones")


if __name__ == "__main__":
    main()
