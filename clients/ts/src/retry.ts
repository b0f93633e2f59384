/**
 * Which calls the client retries by itself, and how.
 *
 * Any call is retried when it surely never ran: the server refused it while stopping
 * (UNAVAILABLE / SERVER_SHUTTING_DOWN: refused before anything ran, says the contract), or the
 * attempt's own connection was refused (nothing listened, so nothing was sent). A call that
 * failed otherwise with UNAVAILABLE (a connection reset: ECONNRESET/EPIPE) or CANCELLED without
 * the caller aborting it (how Node reports a stream whose connection a dying server dropped) may
 * or may not have run on the server: the connection can drop after the server acted, and a
 * request written to a connection whose peer had already gone, before the client noticed, looks
 * the same. So only calls whose repetition changes nothing are retried then: every read, and the
 * writes the contract makes idempotent. Everything else surfaces the error to the caller, who
 * knows whether repeating it is safe.
 *
 * @module
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { AgentcoordError, nodeErrorCode } from "./errors.js";
import { ErrorReason } from "./gen/agentcoord/v1/error_reason_pb.js";

/**
 * The RPCs retried on UNAVAILABLE (`Service/Method`, package omitted), and why each is safe:
 *
 * - reads: WhoAmI, GetServerStats, ListTokens, ListNamespaces, GetNamespaceQuota; Retrieve, BatchRetrieve, ListEntries,
 *   GetSession, ListSessions, GetSharedContext, LoadCollaborationState,
 *   ListCollaborationStates; GetStagedPattern, ListStagedPatterns, GetPatternRejection,
 *   GetPattern, ListPatterns, GetConflict, ListConflicts; ListAgents, GetTask, ListTasks,
 *   ListDeadLetters, AggregateResults; ReceiveSignals (it does not consume); GetLock.
 *   (GetTask and ListTasks may settle an expired lease: settling twice is settling once.)
 * - RegisterAgent (registering again replaces the capabilities with the same ones),
 *   Heartbeat, RenewTaskLease (extends the same lease to the same length from now),
 *   CompleteTask (the contract: repeating a successful completion with the same lease
 *   returns the same task), JoinSession (joining again is a no-op), CancelTask (cancelling
 *   a cancelled task returns it unchanged), RenewLock (restarts the TTL from now under the
 *   same fencing token).
 * - AddTask and SendSignal only with a `requestId` (the contract's idempotency key: a repeat
 *   stores nothing and returns what the first call stored); see {@link isSafeToRetry}.
 *
 * Not retried: Stash, BatchStash, DeleteEntry, ClearWorkingMemory, session writes,
 * SaveCollaborationState, staging writes, FailTask (a repeat could count a second failed
 * attempt), RequeueDeadLetter, SendSignal without a `requestId` (a repeat sends a
 * second signal),
 * DeregisterAgent, IssueToken, RevokeToken, AcquireLock (a repeat of an acquisition that
 * succeeded waits for the caller's own lock) and ReleaseLock (a repeat meets LOCK_NOT_HELD),
 * and Subscribe (which resumes instead: see
 * `Subscription`).
 */
export const SAFE_TO_RETRY: ReadonlySet<string> = new Set([
  "AdminService/WhoAmI",
  "AdminService/GetServerStats",
  "AdminService/ListTokens",
  "AdminService/ListNamespaces",
  "AdminService/GetNamespaceQuota",
  "MemoryService/Retrieve",
  "MemoryService/BatchRetrieve",
  "MemoryService/ListEntries",
  "MemoryService/JoinSession",
  "MemoryService/GetSession",
  "MemoryService/ListSessions",
  "MemoryService/GetSharedContext",
  "MemoryService/LoadCollaborationState",
  "MemoryService/ListCollaborationStates",
  "StagingService/GetStagedPattern",
  "StagingService/ListStagedPatterns",
  "StagingService/GetPatternRejection",
  "StagingService/GetPattern",
  "StagingService/ListPatterns",
  "StagingService/GetConflict",
  "StagingService/ListConflicts",
  "TaskService/RegisterAgent",
  "TaskService/Heartbeat",
  "TaskService/ListAgents",
  "TaskService/RenewTaskLease",
  "TaskService/CompleteTask",
  "TaskService/GetTask",
  "TaskService/ListTasks",
  "TaskService/CancelTask",
  "TaskService/ListDeadLetters",
  "TaskService/AggregateResults",
  "SignalService/ReceiveSignals",
  "LockService/GetLock",
  "LockService/RenewLock",
]);

/** `Service/Method` for a generated method descriptor. */
export function shortName(method: DescMethod): string {
  return `${method.parent.name}/${method.name}`;
}

/** RPCs made idempotent by a non-empty `requestId` field in their request. */
const SAFE_WITH_REQUEST_ID: ReadonlySet<string> = new Set([
  "TaskService/AddTask",
  "SignalService/SendSignal",
]);

/**
 * Whether the call of `method` with `request` may be repeated after UNAVAILABLE: it is in
 * {@link SAFE_TO_RETRY}, or it is an AddTask or SendSignal carrying a non-empty `requestId`.
 */
export function isSafeToRetry(method: DescMethod, request: unknown): boolean {
  const name = shortName(method);
  if (SAFE_TO_RETRY.has(name)) {
    return true;
  }
  if (SAFE_WITH_REQUEST_ID.has(name)) {
    const requestId = (request as { requestId?: unknown } | undefined)?.requestId;
    return typeof requestId === "string" && requestId !== "";
  }
  return false;
}

/**
 * Whether a failed call (one attempt of it) surely never ran on a server: refused with
 * UNAVAILABLE / SERVER_SHUTTING_DOWN (the server's drain refuses calls before running them), or
 * UNAVAILABLE because the `connect()` of the connection this attempt waited for was refused
 * (ECONNREFUSED: nothing listened; the request was never written). Any such call may be
 * repeated. A stream or connection reset (CANCELLED, UNAVAILABLE from ECONNRESET/EPIPE) is never
 * "never ran", even right after the server stopped: the request may have been written before
 * the client noticed the connection was gone.
 */
export function neverRan(error: unknown): boolean {
  const decoded = AgentcoordError.fromError(error);
  if (decoded.code !== Code.Unavailable) {
    return false;
  }
  return (
    decoded.reason === ErrorReason.SERVER_SHUTTING_DOWN ||
    nodeErrorCode(error, CONNECT_REFUSED, "connect") !== undefined
  );
}

const CONNECT_REFUSED: ReadonlySet<string> = new Set(["ECONNREFUSED"]);

/** How many times, and how patiently, calls are retried. */
export interface RetryPolicy {
  /** Retries after the first attempt; 0 disables retrying. Default 4. */
  maxRetries: number;
  /** Pause before the first retry, in milliseconds, doubled for each further one. Default 100. */
  initialBackoffMs: number;
  /** The longest pause, in milliseconds. Default 2000. */
  maxBackoffMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxRetries: 4,
  initialBackoffMs: 100,
  maxBackoffMs: 2000,
};

/**
 * Resolves after `ms` milliseconds, or rejects with the signal's reason as soon as `signal`
 * aborts (at once if it already has).
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
