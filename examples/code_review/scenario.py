"""The code-review scenario: who takes part, what there is to review, what they will find.

Everything the processes and the final check agree on lives here, so the expected outcome is
derived from the same table the fleet works from.
"""

from __future__ import annotations

import os
import sys
import time

SESSION_ID = "pr-42"
SCOPE = {"pull_request": 42, "files_changed": 15, "lines_changed": 500, "repository": "shop/api"}
PROMOTION_THRESHOLD = 0.8  # the lead promotes staged patterns at or above this confidence
LEASE_SECONDS = 3.0  # short, so the killed worker's task comes back quickly

# (agent id, tier): the steward issues one token each.
LEAD = "lead"
MONITOR = "monitor"
WORKERS = {
    "security-1": "security_review",
    "performance-1": "performance_review",
    "style-1": "style_review",
    "performance-2": "performance_review",
}
VICTIM, REPLACEMENT = "performance-1", "performance-2"
TIERS = {LEAD: "VALIDATOR", MONITOR: "OBSERVER", **{w: "CONTRIBUTOR" for w in WORKERS}}

# task id → (type, priority, description, the pattern its reviewer will find)
TASKS = {
    "sec-auth": (
        "security_review",
        9,
        "Review the token refresh in auth/session.py",
        {
            "id": "jwt-refresh-window",
            "name": "JWT refresh window",
            "description": "Refresh tokens 5 minutes before expiry",
            "confidence": 0.92,
        },
    ),
    "sec-sql": (
        "security_review",
        7,
        "Check query building in orders/repository.py",
        {
            "id": "parameterised-sql",
            "name": "Parameterised SQL",
            "description": "Never format user input into SQL text",
            "confidence": 0.88,
        },
    ),
    "perf-orders": (
        "performance_review",
        8,
        "Profile the order listing endpoint",
        {
            "id": "n-plus-one-orders",
            "name": "N+1 queries on order lines",
            "description": "Prefetch order lines in one query",
            "confidence": 0.85,
        },
    ),
    "perf-cache": (
        "performance_review",
        5,
        "Look at the product cache TTLs",
        {
            "id": "cache-stampede",
            "name": "Cache stampede on expiry",
            "description": "Jitter TTLs so hot keys do not expire together",
            "confidence": 0.55,
        },
    ),
    "style-names": (
        "style_review",
        4,
        "Naming in payments/",
        {
            "id": "verb-noun-handlers",
            "name": "Verb-noun handler names",
            "description": "Handlers are named for what they do",
            "confidence": 0.62,
        },
    ),
    "style-long": (
        "style_review",
        3,
        "Long functions in checkout.py",
        {
            "id": "split-long-functions",
            "name": "Split long functions",
            "description": "Functions over 60 lines hide branches",
            "confidence": 0.81,
        },
    ),
}

# --- the watched scope (issue #16): the lead keeps the review's scope in its working memory
# under SCOPE_KEY and revises it after the first completed review (a conditional stash on the
# revision it wrote); SCOPE_WATCHER watches that entry and records what it saw under
# SCOPE_SEEN_KEY, which the final check compares with the lead's entry.
SCOPE_KEY = "scope"
SCOPE_SEEN_KEY = "scope-seen"
SCOPE_WATCHER = "style-1"
REVISED_SCOPE = {
    **SCOPE,
    "files_changed": 16,
    "lines_changed": 540,
    "added": "tests/test_refresh.py",
}

EXPECTED_LIBRARY = sorted(
    p["id"] for *_, p in TASKS.values() if p["confidence"] >= PROMOTION_THRESHOLD
)
EXPECTED_REJECTED = sorted(
    p["id"] for *_, p in TASKS.values() if p["confidence"] < PROMOTION_THRESHOLD
)


def count_by_type() -> dict[str, int]:
    counts: dict[str, int] = {}
    for task_type, *_ in TASKS.values():
        counts[task_type] = counts.get(task_type, 0) + 1
    return counts


def say(who: str, text: str) -> None:
    """One transcript line: seconds since the fleet started, who, what."""
    started = float(os.environ.setdefault("FLEET_T0", str(time.time())))
    # One write per line, so lines from the fleet's processes never interleave mid-line.
    sys.stdout.write(f"{time.time() - started:7.2f}s  {who:<14} {text}\n")
    sys.stdout.flush()


def target() -> str:
    return os.environ["AGENTCOORD_TARGET"]


def fail(who: str, text: str) -> None:
    say(who, f"FAILED: {text}")
    sys.exit(1)


# --- File locks (LockService): each reviewer holds a lock on the file it reviews while
# reviewing (file_locks.py). Task id → the lock id of its file (lock ids are ids: no '/').
# sec-sql and perf-orders review the same file, so their reviewers take turns on it.
FILE_LOCKS = {
    "sec-auth": "file.auth.session.py",
    "sec-sql": "file.orders.repository.py",
    "perf-orders": "file.orders.repository.py",
    "perf-cache": "file.products.cache.py",
    "style-names": "file.payments",
    "style-long": "file.checkout.py",
}
FILE_LOCK_TTL_SECONDS = 5.0  # renewed every TTL/3 while held
