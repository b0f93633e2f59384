// Package agentcoord is the Go client of agentcoord, a gRPC coordination server for fleets of AI
// agents: working memory, pattern staging, tasks and signals over Redis.
//
// It is the generated code (package agentcoordv1, under gen/, made from proto/ by
// `make generate`) plus a thin layer that behaves like the Python and TypeScript clients:
//
//   - Dial returns a Client holding one connection and the generated client of each service
//     (Admin, Memory, Staging, Tasks, Signals, Locks). A unary and a stream interceptor attach the
//     bearer token to every call.
//   - The caller's principal is learnt once, at Dial (WhoAmI), and a call whose required_tier
//     (a method option in the contract, read from the generated descriptors) is above the
//     caller's tier fails locally with PERMISSION_DENIED / TIER_TOO_LOW, without a round trip.
//   - Every failure is an *Error (use errors.As) with the status code, the contract's
//     ErrorReason, field violations, metadata and request id decoded from google.rpc.Status.
//   - Client.Subscribe follows signals live and resumes from its last cursor after UNAVAILABLE or
//     SUBSCRIBER_TOO_SLOW; CURSOR_TRIMMED comes back as an error.
//   - Client.NewWorker claims tasks with long-polls, renews each lease in the background while
//     the handler runs, and completes with the claim's fencing token (or fails the task when the
//     handler returns an error).
//   - Client.Lock acquires a named lock (waiting while another agent holds it) and renews it in
//     the background; HeldLock.Context is cancelled (cause ErrLockLost) when the lock is lost,
//     HeldLock.FencingToken goes with every write to the guarded resource, Unlock releases.
//   - gRPC retries (service config) only the RPCs in RetrySafeMethods, on UNAVAILABLE.
//
// Quick start:
//
//	client, err := agentcoord.Dial(ctx, "127.0.0.1:50051", os.Getenv("AGENTCOORD_TOKEN"))
//	if err != nil { … }
//	defer client.Close()
//	_, err = client.Memory.Stash(ctx, &agentcoordv1.StashRequest{Key: "note", Value: v})
//	if e, ok := agentcoord.FromError(err); ok && e.Reason == agentcoordv1.ErrorReason_TIER_TOO_LOW { … }
package agentcoord
