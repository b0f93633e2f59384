"""Generated from proto/agentcoord/v1/error_reason.proto by `make generate`; do not edit.

Every reason an agentcoord server sends in google.rpc.ErrorInfo.reason. Members are
strings equal to the wire reason, so `err.reason == ErrorReason.TIER_TOO_LOW` holds.
"""

from enum import StrEnum


class ErrorReason(StrEnum):
    """The values of the contract's ErrorReason enum; error_reason.proto says when each
    is sent and what a client should do."""

    INTERNAL = "INTERNAL"
    """INTERNAL: a server bug. The status carries only a request id (ErrorInfo metadata
    "request_id") that finds the server's log line. Do not retry blindly; report it with the
    request id."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """INVALID_ARGUMENT: the request is malformed in a way no more specific reason covers. Fix
    the request."""

    NOT_FOUND = "NOT_FOUND"
    """NOT_FOUND: the named resource does not exist. Fix the request or create it."""

    ALREADY_EXISTS = "ALREADY_EXISTS"
    """ALREADY_EXISTS: the resource to create exists already."""

    PERMISSION_DENIED = "PERMISSION_DENIED"
    """PERMISSION_DENIED: the caller may not do this."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    """UNAUTHENTICATED: the call carried no acceptable credentials. Re-authenticate."""

    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    """FAILED_PRECONDITION: the state does not allow the call. Re-read the state."""

    ABORTED = "ABORTED"
    """ABORTED: a compare-and-set lost. Re-read and decide again."""

    OUT_OF_RANGE = "OUT_OF_RANGE"
    """OUT_OF_RANGE: a cursor or position is outside what is kept."""

    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    """RESOURCE_EXHAUSTED: a limit was hit. Back off or send less."""

    UNAVAILABLE = "UNAVAILABLE"
    """UNAVAILABLE: the server cannot serve the call right now. Retry with backoff."""

    MISSING_TOKEN = "MISSING_TOKEN"
    """UNAUTHENTICATED: no `authorization: Bearer <token>` metadata. Attach a token."""

    INVALID_TOKEN = "INVALID_TOKEN"
    """UNAUTHENTICATED: the authorization metadata is not a well-formed bearer token. Fix the
    client's configuration."""

    UNKNOWN_TOKEN = "UNKNOWN_TOKEN"
    """UNAUTHENTICATED: the token is not known (never issued, or revoked). Get a new token from
    a STEWARD; retrying with the same token fails again."""

    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    """UNAUTHENTICATED: the token's expiry has passed. Get a new token."""

    NO_AUTHENTICATION = "NO_AUTHENTICATION"
    """UNAUTHENTICATED: the server accepts no credentials at all (a configuration error of the
    server). Tell its operator."""

    MISSING_IDENTITY = "MISSING_IDENTITY"
    """UNAUTHENTICATED (insecure development mode only): x-agent-id or x-access-tier metadata is
    missing. Attach both."""

    INVALID_IDENTITY = "INVALID_IDENTITY"
    """UNAUTHENTICATED (insecure development mode only): x-agent-id or x-namespace is not a
    valid id, or x-access-tier is not a tier name."""

    TIER_TOO_LOW = "TIER_TOO_LOW"
    """PERMISSION_DENIED: the method needs a higher tier than the caller's (ErrorInfo metadata
    "required_tier" and "caller_tier"). Clients send this locally, without a round trip, when
    the caller's tier is known to be too low. Do not retry; use a token of a higher tier."""

    NO_REQUIRED_TIER = "NO_REQUIRED_TIER"
    """PERMISSION_DENIED: the method declares no required tier in the contract (a server bug:
    every RPC must declare one). Report it."""

    NAMESPACE_MISMATCH = "NAMESPACE_MISMATCH"
    """PERMISSION_DENIED: the request names another namespace than the caller's. A token only
    ever acts in its own namespace."""

    TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND"
    """NOT_FOUND: the token id to revoke is not a live token of the namespace."""

    TOO_MANY_FAILED_AUTHENTICATIONS = "TOO_MANY_FAILED_AUTHENTICATIONS"
    """RESOURCE_EXHAUSTED: the caller's address failed to authenticate too often (`--auth-
    failure-limit` per `--auth-failure-window`), so the server refuses its calls, without
    checking their tokens, for a while. ErrorInfo metadata "retry_after_seconds" and a
    google.rpc.RetryInfo say how long; retry after that with a valid token. Calls from other
    addresses are unaffected."""

    INVALID_FIELD = "INVALID_FIELD"
    """INVALID_ARGUMENT: a request field is invalid; BadRequest field violations name each bad
    field and why."""

    INVALID_ID = "INVALID_ID"
    """INVALID_ARGUMENT: an id (agent, key, session, task, pattern…) is empty, longer than 128
    characters, or holds characters other than letters, digits and `._-`."""

    INVALID_PAGE_SIZE = "INVALID_PAGE_SIZE"
    """INVALID_ARGUMENT: page_size is negative or above the list's maximum."""

    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    """INVALID_ARGUMENT: page_token was not returned by this list (or the list's filters changed
    between pages). Start again without a page token."""

    BATCH_SIZE = "BATCH_SIZE"
    """INVALID_ARGUMENT: a batch holds no items or more than the maximum."""

    DUPLICATE_KEY = "DUPLICATE_KEY"
    """INVALID_ARGUMENT: a batch names the same key twice."""

    INVALID_CURSOR = "INVALID_CURSOR"
    """INVALID_ARGUMENT: a signal cursor is not a signal id such as "1732060800123-0"."""

    NO_TASK_TYPES = "NO_TASK_TYPES"
    """INVALID_ARGUMENT: ClaimTask named no task types and the agent registered no capabilities.
    Register capabilities or name the types."""

    NON_FINITE_NUMBER = "NON_FINITE_NUMBER"
    """INVALID_ARGUMENT: a JSON-like field (a google.protobuf.Struct or Value: task payload or
    result, signal data, pattern context, working-memory value, session metadata, collaboration
    state extra) holds NaN, Infinity or -Infinity, which JSON cannot carry. The BadRequest field
    violation (and ErrorInfo metadata "field") gives the path, e.g. `payload.a[2].b`. Nothing
    was written. Send a finite number, null or a string instead."""

    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    """INVALID_ARGUMENT: the request body is not a valid serialized request message of the
    method (truncated or random bytes, invalid UTF-8 in a string field, nesting deeper than
    protobuf's limit of 100); ErrorInfo metadata "message_type" names the message expected.
    Nothing was run. A bug in the client or something between it and the server: fix it, do not
    retry."""

    VALUE_TOO_LARGE = "VALUE_TOO_LARGE"
    """RESOURCE_EXHAUSTED: a request field is larger than the server's limit for it: a working-
    memory value, shared context item, session metadata or collaboration state (--max-value-
    bytes), a task payload or result (--max-task-bytes), signal data (--max-signal-bytes),
    pattern code or context (--max-pattern-bytes), conflict positions or interests (--max-
    conflict-bytes); sizes are of the serialized field (UTF-8 for code). ErrorInfo metadata:
    "field" (its path in the request), "size_bytes", "limit_bytes" and "setting" (the server
    flag). Checked before anything is written: nothing was. Send less (store large data
    elsewhere and pass a reference)."""

    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    """RESOURCE_EXHAUSTED: the response would not fit in one gRPC message. Ask for fewer items
    (a smaller batch or page)."""

    SUBSCRIBER_TOO_SLOW = "SUBSCRIBER_TOO_SLOW"
    """RESOURCE_EXHAUSTED: a live subscription fell too far behind and the server ended it.
    Resume from the last signal id received (clients do this)."""

    REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
    """UNAVAILABLE: the server cannot reach Redis (down, partitioned, failing over). Retry with
    backoff; streams resume from their cursor."""

    SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"
    """UNAVAILABLE: the server is stopping (its drain window). The call was refused before
    anything ran, so any call may be retried: on another server, or on this one after its
    restart; streams resume from their cursor."""

    ENTRY_NOT_FOUND = "ENTRY_NOT_FOUND"
    """NOT_FOUND: no such working-memory entry of that owner (never stashed, or its TTL ran
    out)."""

    SESSION_EXISTS = "SESSION_EXISTS"
    """ALREADY_EXISTS: CreateSession named a session that exists."""

    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    """NOT_FOUND: no such team session (never created, or it expired)."""

    NOT_A_PARTICIPANT = "NOT_A_PARTICIPANT"
    """PERMISSION_DENIED or FAILED_PRECONDITION: the caller is not a participant of the session
    (join it first; leaving a session one is not in is FAILED_PRECONDITION)."""

    CONTEXT_NOT_FOUND = "CONTEXT_NOT_FOUND"
    """NOT_FOUND: the session has no shared context under that key."""

    VERSION_MISMATCH = "VERSION_MISMATCH"
    """ABORTED: SaveCollaborationState's expected_version is not the stored version (ErrorInfo
    metadata "version"). Re-read, merge, save again."""

    COLLABORATION_STATE_NOT_FOUND = "COLLABORATION_STATE_NOT_FOUND"
    """NOT_FOUND: no collaboration state is saved for that session."""

    SESSION_FULL = "SESSION_FULL"
    """RESOURCE_EXHAUSTED: JoinSession on a session that has the most participants a session may
    have (1000; ErrorInfo metadata "limit"). Nothing changed. Retry after someone leaves, or use
    another session."""

    PATTERN_STAGED_BY_OTHER_AGENT = "PATTERN_STAGED_BY_OTHER_AGENT"
    """ALREADY_EXISTS: the pattern id is staged by another agent (ErrorInfo metadata "author").
    Choose another id."""

    BELOW_CONFIDENCE_THRESHOLD = "BELOW_CONFIDENCE_THRESHOLD"
    """FAILED_PRECONDITION: the staged pattern's confidence is below the promotion's
    minimum_confidence. Reject it, or promote with a lower minimum."""

    REVISION_MISMATCH = "REVISION_MISMATCH"
    """ABORTED: the staged pattern changed since the revision the validator read (ErrorInfo
    metadata "revision"). Re-read and decide again."""

    STAGED_PATTERN_NOT_FOUND = "STAGED_PATTERN_NOT_FOUND"
    """NOT_FOUND: no staged pattern with that id (never staged, promoted, rejected, or
    expired)."""

    REJECTION_NOT_FOUND = "REJECTION_NOT_FOUND"
    """NOT_FOUND: no rejection recorded for that pattern id."""

    PATTERN_NOT_FOUND = "PATTERN_NOT_FOUND"
    """NOT_FOUND: no pattern with that id in the pattern library."""

    CONFLICT_EXISTS = "CONFLICT_EXISTS"
    """ALREADY_EXISTS: a conflict context with that id exists."""

    CONFLICT_NOT_FOUND = "CONFLICT_NOT_FOUND"
    """NOT_FOUND: no conflict context with that id (never opened, or expired)."""

    ALREADY_RESOLVED = "ALREADY_RESOLVED"
    """FAILED_PRECONDITION: the conflict is resolved already."""

    AGENT_NOT_REGISTERED = "AGENT_NOT_REGISTERED"
    """NOT_FOUND: the agent is not registered, or its registration lapsed. RegisterAgent
    again."""

    TASK_EXISTS = "TASK_EXISTS"
    """ALREADY_EXISTS: AddTask named a task id that exists."""

    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    """NOT_FOUND: no task with that id (never added, or expired)."""

    LEASE_LOST = "LEASE_LOST"
    """FAILED_PRECONDITION: the caller's lease on the task is gone (expired and the task handed
    to another claimant, or a stale fencing token). Stop working on it; do not retry the
    completion."""

    NOT_TASK_ADDER = "NOT_TASK_ADDER"
    """PERMISSION_DENIED: only the agent that added the task, or a VALIDATOR, may cancel it."""

    TASK_COMPLETED = "TASK_COMPLETED"
    """FAILED_PRECONDITION: the task is completed already and cannot be cancelled."""

    NOT_DEAD_LETTERED = "NOT_DEAD_LETTERED"
    """FAILED_PRECONDITION: only a dead-lettered task can be requeued (ErrorInfo metadata
    "status" says what it is)."""

    TASK_CANCELLED = "TASK_CANCELLED"
    """FAILED_PRECONDITION: the task the caller holds was cancelled (RenewTaskLease), or one it
    held was (Heartbeat; ErrorInfo metadata "task_ids"). Stop working on it and do not complete
    it; the result would be refused."""

    DEPENDENCY_NOT_FOUND = "DEPENDENCY_NOT_FOUND"
    """NOT_FOUND: AddTask's depends_on names a task that does not exist (ErrorInfo metadata
    "task_id"); nothing was added."""

    CURSOR_TRIMMED = "CURSOR_TRIMMED"
    """OUT_OF_RANGE: the resume cursor is older than the signals kept (they are trimmed after
    the COORDINATION TTL). Signals were missed: re-read the state the signals were about, then
    subscribe without a cursor."""

    OPERATOR_DATA_ACCESS = "OPERATOR_DATA_ACCESS"
    """PERMISSION_DENIED: the OPERATOR called an RPC that reads or writes a namespace's data.
    The operator manages namespaces and tokens only: issue a token of the namespace (IssueToken
    naming it) and call with that."""

    NAMESPACE_EXISTS = "NAMESPACE_EXISTS"
    """ALREADY_EXISTS: CreateNamespace named a registered namespace."""

    NAMESPACE_NOT_FOUND = "NAMESPACE_NOT_FOUND"
    """NOT_FOUND: the namespace is not registered (CreateNamespace it first)."""

    NAMESPACE_DELETING = "NAMESPACE_DELETING"
    """FAILED_PRECONDITION: the namespace is being deleted; call DeleteNamespace again to
    finish, then create it anew if wanted."""

    RESERVED_NAMESPACE = "RESERVED_NAMESPACE"
    """INVALID_ARGUMENT: namespace names starting with '_' are reserved for the server (the
    operator's own is "_operator")."""

    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    """RESOURCE_EXHAUSTED: the call would exceed a quota of the namespace (ErrorInfo metadata
    "quota" names it, "limit" and "used" give its limit and current use); nothing was written.
    Free some use or ask the operator for more; a "signals_per_second" refusal clears within a
    second."""

    LOCK_HELD = "LOCK_HELD"
    """FAILED_PRECONDITION: AcquireLock found the lock held (by another agent, or by the caller
    under an earlier acquisition) and its wait, or the call's deadline, ran out first. ErrorInfo
    metadata "holder" (agent id) and "expire_time" (RFC 3339) say by whom and until when.
    Acquire again with a wait (or a longer one)."""

    LOCK_NOT_HELD = "LOCK_NOT_HELD"
    """FAILED_PRECONDITION: RenewLock or ReleaseLock by an agent that does not hold the lock
    under that fencing token: it expired, was released (or force-released), or another
    acquisition holds it now. Stop using the guarded resource under that token; acquire again if
    still needed."""

    LOCK_NOT_FOUND = "LOCK_NOT_FOUND"
    """NOT_FOUND: GetLock (or a forced ReleaseLock) named a lock nobody holds: never acquired,
    released, or its TTL ran out. Acquire it if wanted."""

    ENTRY_EXISTS = "ENTRY_EXISTS"
    """ALREADY_EXISTS: a create-only Stash (expected_revision 0) named a live entry. Read it
    (Retrieve gives its revision) and update with that, or pick another key."""

    ENTRY_REVISION_MISMATCH = "ENTRY_REVISION_MISMATCH"
    """ABORTED: a conditional Stash's expected_revision is not the entry's revision (ErrorInfo
    metadata "revision" is the current one): someone wrote it since you read it. Re-read, merge,
    stash again with the new revision."""

    REVISION_COMPACTED = "REVISION_COMPACTED"
    """OUT_OF_RANGE: WatchEntries' after_revision is older than the namespace's event history
    keeps (ErrorInfo metadata "oldest_revision"), or newer than its current revision. Events
    were missed: re-read the entries you follow, then watch from the revision they carry (or
    without after_revision)."""
