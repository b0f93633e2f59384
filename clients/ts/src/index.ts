/**
 * agentcoord's TypeScript client: the generated messages and service descriptors
 * (protobuf-es v2) plus a thin layer — {@link createClient}, {@link AgentcoordError},
 * {@link Subscription}, {@link Worker}.
 *
 * @example
 * ```ts
 * import { createClient } from "@agentcoord/client";
 * const client = createClient("127.0.0.1:50051", process.env.AGENTCOORD_TOKEN);
 * const { principal } = await client.admin.whoAmI({});
 * client.close();
 * ```
 *
 * @module
 */
export { Client, createClient, SERVICES, type ClientOptions, type ServiceClient } from "./client.js";
export { AgentcoordError, Code, grpcCodeName, toReason, type FieldViolation } from "./errors.js";
export { ErrorReason } from "./gen/agentcoord/v1/error_reason_pb.js";
export { fromValue, toValue, type JsonObject, type JsonValue } from "./json.js";
export {
  DEFAULT_RETRY_POLICY,
  SAFE_TO_RETRY,
  isSafeToRetry,
  neverRan,
  type RetryPolicy,
} from "./retry.js";
export { HeldLock, type LockOptions } from "./lock.js";
export { isResumable, Subscription, type SubscribeOptions } from "./subscribe.js";
export { Watcher, type WatchOptions } from "./watch.js";
export { AccessTier, methodPath, operatorCallable, requiredTier, tierName } from "./tiers.js";
export {
  CANCEL_SIGNAL_TYPE,
  PermanentTaskError,
  Worker,
  type CancelSubscriber,
  type RunOptions,
  type TaskHandler,
  type WorkerOptions,
  type WorkerOutcome,
} from "./worker.js";

export * from "./gen/agentcoord/v1/access_pb.js";
export * from "./gen/agentcoord/v1/admin_pb.js";
export * from "./gen/agentcoord/v1/locks_pb.js";
export * from "./gen/agentcoord/v1/memory_pb.js";
export * from "./gen/agentcoord/v1/signals_pb.js";
export * from "./gen/agentcoord/v1/staging_pb.js";
export * from "./gen/agentcoord/v1/tasks_pb.js";
