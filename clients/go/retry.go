package agentcoord

import (
	"encoding/json"
	"strings"
)

// RetrySafeMethods are the RPCs the client's gRPC retry policy retries (on UNAVAILABLE only: the
// server is stopping, restarting or cannot reach Redis; see RetryMaxAttempts). A call is listed only
// when sending it twice leaves the same state and gets the same answer as sending it once, so a
// retry after a response was lost cannot do harm:
//
//   - reads, which change nothing: the Get*, List*, Retrieve/BatchRetrieve, WhoAmI,
//     GetServerStats, AggregateResults, LoadCollaborationState and ReceiveSignals (it is
//     non-destructive: the cursor is the caller's). GetTask and ListTasks may settle a task whose
//     lease has run out; settling is itself idempotent;
//   - GetSharedContext, a read that also restarts the session's TTL (restarting it twice is the
//     same);
//   - writes the contract makes idempotent: RegisterAgent replaces the capabilities; Heartbeat and
//     RenewTaskLease extend from now (with the same fencing token); JoinSession ("idempotent");
//     CompleteTask ("repeating a successful completion with the same lease returns the same task
//     again"); CancelTask ("cancelling a cancelled task returns it unchanged");
//     RenewLock restarts the lock's TTL from now with the same fencing token.
//
// Not retried, because a second delivery is a second effect or a different answer: Stash,
// BatchStash and ShareContext (overwrites: a late retry could replace a newer value the same agent
// wrote meanwhile), AddTask and SendSignal (a second task or TASK_EXISTS, a duplicate signal; with
// request_id set the server replays the first call's answer, so retry those yourself with the same
// request_id: a service config cannot tell such calls apart), ClaimTask (a second lease while the
// first dangles until it expires), FailTask (the retry meets LEASE_LOST),
// DeleteEntry/LeaveSession/RequeueDeadLetter/RevokeToken (the retry reports NOT_FOUND or
// FAILED_PRECONDITION for what the first did), ClearWorkingMemory and DeregisterAgent (the retry's
// count or flag is wrong), IssueToken (a second token), CreateSession, StagePattern,
// PromotePattern, RejectPattern, CreateConflict, ResolveConflict and SaveCollaborationState (the
// retry meets EXISTS or a version/revision mismatch). Subscribe is not listed either: Subscription
// resumes it from its cursor itself. AcquireLock and ReleaseLock are not retried either: a retry
// of an acquisition that succeeded waits for the caller's own lock (locks do not re-enter), and a
// repeated release meets LOCK_NOT_HELD.
var RetrySafeMethods = []string{
	"agentcoord.v1.AdminService/WhoAmI",
	"agentcoord.v1.AdminService/GetServerStats",
	"agentcoord.v1.AdminService/ListTokens",
	"agentcoord.v1.AdminService/ListNamespaces",
	"agentcoord.v1.AdminService/GetNamespaceQuota",
	"agentcoord.v1.MemoryService/Retrieve",
	"agentcoord.v1.MemoryService/BatchRetrieve",
	"agentcoord.v1.MemoryService/ListEntries",
	"agentcoord.v1.MemoryService/JoinSession",
	"agentcoord.v1.MemoryService/GetSession",
	"agentcoord.v1.MemoryService/ListSessions",
	"agentcoord.v1.MemoryService/GetSharedContext",
	"agentcoord.v1.MemoryService/LoadCollaborationState",
	"agentcoord.v1.MemoryService/ListCollaborationStates",
	"agentcoord.v1.StagingService/GetStagedPattern",
	"agentcoord.v1.StagingService/ListStagedPatterns",
	"agentcoord.v1.StagingService/GetPatternRejection",
	"agentcoord.v1.StagingService/GetPattern",
	"agentcoord.v1.StagingService/ListPatterns",
	"agentcoord.v1.StagingService/GetConflict",
	"agentcoord.v1.StagingService/ListConflicts",
	"agentcoord.v1.TaskService/RegisterAgent",
	"agentcoord.v1.TaskService/Heartbeat",
	"agentcoord.v1.TaskService/ListAgents",
	"agentcoord.v1.TaskService/RenewTaskLease",
	"agentcoord.v1.TaskService/CompleteTask",
	"agentcoord.v1.TaskService/GetTask",
	"agentcoord.v1.TaskService/ListTasks",
	"agentcoord.v1.TaskService/CancelTask",
	"agentcoord.v1.TaskService/ListDeadLetters",
	"agentcoord.v1.TaskService/AggregateResults",
	"agentcoord.v1.SignalService/ReceiveSignals",
	"agentcoord.v1.LockService/GetLock",
	"agentcoord.v1.LockService/RenewLock",
}

// RetryMaxAttempts is how many times in all the retry policy sends a RetrySafeMethods call.
const RetryMaxAttempts = 4

// serviceConfig is the gRPC service config the client dials with: RetrySafeMethods get up to
// RetryMaxAttempts attempts on UNAVAILABLE, with exponential backoff from 0.2 s up to 2 s
// (gRPC randomizes each pause between 0 and that bound).
func serviceConfig() string {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method"`
	}
	type retryPolicy struct {
		MaxAttempts          int      `json:"maxAttempts"`
		InitialBackoff       string   `json:"initialBackoff"`
		MaxBackoff           string   `json:"maxBackoff"`
		BackoffMultiplier    float64  `json:"backoffMultiplier"`
		RetryableStatusCodes []string `json:"retryableStatusCodes"`
	}
	type methodConfig struct {
		Name        []name      `json:"name"`
		RetryPolicy retryPolicy `json:"retryPolicy"`
	}
	names := make([]name, 0, len(RetrySafeMethods))
	for _, m := range RetrySafeMethods {
		service, method, _ := strings.Cut(m, "/")
		names = append(names, name{Service: service, Method: method})
	}
	config := map[string][]methodConfig{"methodConfig": {{
		Name: names,
		RetryPolicy: retryPolicy{
			MaxAttempts:          RetryMaxAttempts,
			InitialBackoff:       "0.2s",
			MaxBackoff:           "2s",
			BackoffMultiplier:    2,
			RetryableStatusCodes: []string{"UNAVAILABLE"},
		},
	}}}
	out, err := json.Marshal(config)
	if err != nil {
		panic(err) // static data: cannot fail
	}
	return string(out)
}
