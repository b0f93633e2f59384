/**
 * {@link Worker}: claim tasks with a long poll, run a handler while the lease is renewed in the
 * background, complete with the fencing token or fail the attempt.
 *
 * @module
 */
import type { JsonObject } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, type Client as ServiceClient } from "@connectrpc/connect";
import { ErrorReason } from "./gen/agentcoord/v1/error_reason_pb.js";
import type { Signal } from "./gen/agentcoord/v1/signals_pb.js";
import type { Task, TaskService } from "./gen/agentcoord/v1/tasks_pb.js";
import { AgentcoordError } from "./errors.js";
import { sleep } from "./retry.js";

/**
 * Does one task's work. Gets the claimed task and a signal that aborts when the lease is lost
 * (the task may be handed to someone else: stop working on it) or the task is cancelled
 * (CancelTask; the abort reason is then an {@link AgentcoordError} with reason TASK_CANCELLED). Returns the task's result, a
 * JSON object (or nothing). Throwing fails the attempt: retryable, unless it throws
 * {@link PermanentTaskError}.
 */
export type TaskHandler = (
  task: Task,
  signal: AbortSignal,
) => Promise<JsonObject | void> | JsonObject | void;

/** Thrown by a handler: the task cannot succeed; it is dead-lettered at once (FailTask retryable=false). */
export class PermanentTaskError extends Error {
  override name = "PermanentTaskError";
}

/** Options of {@link Worker}. */
export interface WorkerOptions {
  /** Task types to claim; empty or unset: the agent's registered capabilities. */
  taskTypes?: string[];
  /** Lease length per claim and per renewal, in milliseconds, 1 000 to 3 600 000. Default 60 000. */
  leaseMs?: number;
  /** How long one claim waits for a task (the long poll), in milliseconds, 0 to 60 000. Default 10 000. */
  waitMs?: number;
  /** How often the lease is renewed while the handler runs, in milliseconds. Default leaseMs / 3. */
  renewEveryMs?: number;
  /**
   * How long a failed (retryable) task waits before it can be claimed again, in milliseconds
   * (FailTask's backoff, the retry_after). Unset or 0 sends none: the task's backoff
   * policy decides (at once without one).
   */
  retryBackoffMs?: number;
}

/** What became of one claimed task. */
export interface WorkerOutcome {
  /** The task as the server last returned it (after CompleteTask/FailTask, or as claimed). */
  task: Task;
  /**
   * `completed`: CompleteTask succeeded. `failed`: the handler threw and FailTask succeeded.
   * `lost`: the lease was lost (renewal or completion refused with LEASE_LOST, or no renewal
   * succeeded before the lease ran out), so the result was not submitted. `cancelled`: the task
   * was cancelled while the handler ran; its signal was aborted and nothing was submitted.
   */
  outcome: "completed" | "failed" | "lost" | "cancelled";
  /** The handler's error for `failed`; the lease error for `lost`; the TASK_CANCELLED error for `cancelled`. */
  error?: unknown;
}

/** Options of {@link Worker.run}. */
export interface RunOptions {
  /** Aborting it stops the loop: a claim in progress is cancelled; a task in hand is finished first. */
  signal?: AbortSignal;
  /** Stop after this many tasks. */
  maxTasks?: number;
  /** Stop when a claim's wait ends with no task. */
  stopWhenIdle?: boolean;
  /** Called after each task, before the next claim. */
  onOutcome?: (outcome: WorkerOutcome) => void | Promise<void>;
}

/** Pause after an UNAVAILABLE claim, or after an empty claim with `waitMs` 0, in milliseconds. */
const IDLE_PAUSE_MS = 500;

/** The type of the signal CancelTask sends the holder of a claimed task (data: task_id, fencing_token). */
export const CANCEL_SIGNAL_TYPE = "task.cancelled";

/** Opens a subscription to this agent's {@link CANCEL_SIGNAL_TYPE} signals, ending when `signal` aborts. */
export type CancelSubscriber = (signal: AbortSignal) => AsyncIterable<Signal>;

function cancelledError(taskId: string): AgentcoordError {
  return new AgentcoordError(`task ${taskId} was cancelled`, Code.FailedPrecondition, {
    reasonName: "TASK_CANCELLED",
  });
}

/**
 * Runs `handler` on tasks claimed from `taskTypes` (see {@link WorkerOptions}). Each task: the
 * claim waits up to `waitMs` for one (long poll); while the handler runs, the lease is renewed
 * every `renewEveryMs`; then the task is completed with the handler's result and the lease's
 * fencing token or, if the handler threw, failed (FailTask: retryable after `retryBackoffMs`, or
 * dead-lettered for {@link PermanentTaskError}). A lost lease aborts the handler's signal and
 * nothing is submitted. Counters: `completed`, `failed`, `lost`, `cancelled`.
 *
 * Cancellation (CancelTask of the task in hand) aborts the handler's signal too. `run` learns it
 * at once: it holds one subscription to the "task.cancelled" signal the server sends the holder
 * in the cancelling step (from the oldest retained one, so a signal sent before the stream was
 * set up is not missed; old ones cannot match, fencing tokens never repeat). Every worker,
 * `runOnce` included, also learns it from its next renewal (TASK_CANCELLED), the backstop for
 * a subscription that failed.
 */
export class Worker {
  completed = 0;
  failed = 0;
  lost = 0;
  cancelled = 0;
  /** While `run` holds its subscription: the abort controllers of the tasks in hand. */
  private watched: Map<string, AbortController> | undefined;
  private readonly taskTypes: string[];
  private readonly leaseMs: number;
  private readonly waitMs: number;
  private readonly renewEveryMs: number;
  private readonly retryBackoffMs: number;

  /**
   * @param closed - aborted when the client closes: `run` then returns (as for its own signal).
   */
  constructor(
    private readonly tasks: ServiceClient<typeof TaskService>,
    private readonly handler: TaskHandler,
    options: WorkerOptions = {},
    private readonly closed?: AbortSignal,
    private readonly subscribeCancels?: CancelSubscriber,
  ) {
    this.taskTypes = options.taskTypes ?? [];
    this.leaseMs = options.leaseMs ?? 60_000;
    this.waitMs = options.waitMs ?? 10_000;
    this.renewEveryMs = options.renewEveryMs ?? this.leaseMs / 3;
    this.retryBackoffMs = options.retryBackoffMs ?? 0;
  }

  /**
   * Claims one task (waiting up to `waitMs`) and processes it.
   *
   * @param signal - aborting it cancels the claim (then it resolves `undefined`); a claimed
   *   task is processed regardless.
   * @returns the outcome, or `undefined` when no task came.
   * @throws {@link AgentcoordError} from ClaimTask (INVALID_ARGUMENT / NO_TASK_TYPES with no
   *   types and no registered capabilities, UNAVAILABLE…) and from CompleteTask/FailTask other
   *   than LEASE_LOST.
   */
  async runOnce(signal?: AbortSignal): Promise<WorkerOutcome | undefined> {
    const task = await this.claim(signal);
    if (task === undefined) {
      return undefined;
    }
    return (await this.process(task, () => false)).outcome;
  }

  /** A long-polled ClaimTask: the claimed task, or `undefined` when none came or `signal` aborted. */
  private async claim(signal?: AbortSignal): Promise<Task | undefined> {
    let task: Task | undefined;
    try {
      const response = await this.tasks.claimTask(
        {
          taskTypes: this.taskTypes,
          leaseDuration: durationFromMs(this.leaseMs),
          wait: this.waitMs > 0 ? durationFromMs(this.waitMs) : undefined,
        },
        // The long poll must not hit the call's deadline first.
        { signal, timeoutMs: this.waitMs + 30_000 },
      );
      task = response.task;
    } catch (error) {
      if (signal?.aborted) {
        return undefined;
      }
      throw error;
    }
    return task?.lease === undefined ? undefined : task;
  }

  /**
   * Runs the handler on a claimed task and completes or fails it, as {@link Worker.runOnce}
   * describes. When `wantNext()` says so as the handler returns, that CompleteTask/FailTask also
   * claims the next task (claim_next with this worker's task types and lease): returned in
   * `next`, unset when none was pending.
   */
  private async process(
    claimed: Task,
    wantNext: () => boolean,
  ): Promise<{ outcome: WorkerOutcome; next?: Task }> {
    const taskId = claimed.taskId;
    const fencingToken = claimed.lease?.fencingToken ?? 0n;

    const keeper = new LeaseKeeper(
      () =>
        this.tasks.renewTaskLease({
          taskId,
          fencingToken,
          leaseDuration: durationFromMs(this.leaseMs),
        }),
      this.renewEveryMs,
      this.leaseMs,
    );
    const cancel = new AbortController();
    const key = `${taskId}/${fencingToken}`;
    this.watched?.set(key, cancel);
    let result: JsonObject | void = undefined;
    let failure: unknown;
    let threw = false;
    try {
      result = await this.handler(claimed, AbortSignal.any([keeper.signal, cancel.signal]));
    } catch (error) {
      threw = true;
      failure = error;
    } finally {
      this.watched?.delete(key);
      await keeper.stop();
    }
    const cancelledBy = cancel.signal.aborted
      ? (cancel.signal.reason as unknown)
      : keeper.lostError instanceof AgentcoordError && keeper.lostError.reason === ErrorReason.TASK_CANCELLED
        ? keeper.lostError
        : undefined;
    if (cancelledBy !== undefined) {
      this.cancelled++;
      return { outcome: { task: claimed, outcome: "cancelled", error: cancelledBy } };
    }
    if (keeper.lostError !== undefined) {
      this.lost++;
      return { outcome: { task: claimed, outcome: "lost", error: keeper.lostError } };
    }
    const claimNext = wantNext()
      ? { taskTypes: this.taskTypes, leaseDuration: durationFromMs(this.leaseMs) }
      : undefined;
    try {
      if (!threw) {
        const done = await this.tasks.completeTask({
          taskId,
          fencingToken,
          result: result ?? undefined,
          claimNext,
        });
        this.completed++;
        return { outcome: { task: done.task ?? claimed, outcome: "completed" }, next: done.nextTask };
      }
      const failed = await this.tasks.failTask({
        taskId,
        fencingToken,
        error: describe(failure).slice(0, 4096),
        retryable: !(failure instanceof PermanentTaskError),
        backoff: this.retryBackoffMs > 0 ? durationFromMs(this.retryBackoffMs) : undefined,
        claimNext,
      });
      this.failed++;
      return {
        outcome: { task: failed.task ?? claimed, outcome: "failed", error: failure },
        next: failed.nextTask,
      };
    } catch (error) {
      if (isLeaseLost(error)) {
        this.lost++;
        return { outcome: { task: claimed, outcome: "lost", error } };
      }
      throw error;
    }
  }

  /**
   * Processes tasks until `signal` aborts, `maxTasks` were processed, or (with
   * `stopWhenIdle`) a claim's wait ends with no task. Each completion (or failure) also claims
   * the next task (claim_next), so a busy worker makes one call per task and long-polls
   * ClaimTask only when nothing was pending; a task claimed that way is processed even if
   * `signal` aborts meanwhile (no further one is claimed then). A claim that fails UNAVAILABLE (or on a
   * lost connection) is tried again after a pause (a claim the server made but whose answer was lost only delays that
   * task until its lease runs out).
   *
   * @returns how many tasks were processed.
   * @throws {@link AgentcoordError} as {@link Worker.runOnce}, except UNAVAILABLE.
   */
  async run(options: RunOptions = {}): Promise<number> {
    const signals = [options.signal, this.closed].filter((s): s is AbortSignal => s !== undefined);
    const signal = signals.length > 0 ? AbortSignal.any(signals) : undefined;
    const stopWatch = new AbortController();
    if (this.subscribeCancels !== undefined) {
      this.watched = new Map();
      void this.watchCancels(this.subscribeCancels, this.watched, stopWatch.signal);
    }
    try {
      return await this.loop(options, signal);
    } finally {
      stopWatch.abort();
      this.watched = undefined;
    }
  }

  /** Aborts the handler of the task a cancel signal names, while `stop` has not aborted. */
  private async watchCancels(
    subscribe: CancelSubscriber,
    watched: Map<string, AbortController>,
    stop: AbortSignal,
  ): Promise<void> {
    while (!stop.aborted) {
      try {
        for await (const received of subscribe(stop)) {
          const data = received.data ?? {};
          const taskId = typeof data.task_id === "string" ? data.task_id : "";
          const token = typeof data.fencing_token === "number" ? BigInt(data.fencing_token) : -1n;
          watched.get(`${taskId}/${token}`)?.abort(cancelledError(taskId));
        }
      } catch {
        // the renewals still tell the worker; subscribe again after a pause
      }
      await sleep(IDLE_PAUSE_MS * 2, stop).catch(() => undefined);
    }
  }

  private async loop(options: RunOptions, signal: AbortSignal | undefined): Promise<number> {
    const { maxTasks, stopWhenIdle = false, onOutcome } = options;
    let processed = 0;
    let held: Task | undefined; // claimed by the last completion or failure
    const more = (): boolean =>
      !signal?.aborted && (maxTasks === undefined || processed + 1 < maxTasks);
    while (held !== undefined || (!signal?.aborted && (maxTasks === undefined || processed < maxTasks))) {
      let outcome: WorkerOutcome | undefined;
      try {
        const task = held ?? (await this.claim(signal));
        held = undefined;
        if (task !== undefined) {
          ({ outcome, next: held } = await this.process(task, more));
        }
      } catch (error) {
        const lost =
          error instanceof AgentcoordError &&
          (error.code === Code.Unavailable || error.code === Code.Canceled);
        if (signal?.aborted) {
          break;
        }
        if (!lost) {
          throw error;
        }
        await sleep(IDLE_PAUSE_MS, signal).catch(() => undefined);
        continue;
      }
      if (outcome === undefined) {
        if (stopWhenIdle) {
          break;
        }
        if (this.waitMs <= 0) {
          // a worker told not to wait must not spin
          await sleep(IDLE_PAUSE_MS, signal).catch(() => undefined);
        }
        continue;
      }
      processed++;
      await onOutcome?.(outcome);
    }
    return processed;
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    return `${error.name}: ${error.message}`;
  }
  return String(error);
}

/** LEASE_LOST, or the task gone altogether: the attempt is over. */
function isLeaseLost(error: unknown): boolean {
  return (
    error instanceof AgentcoordError &&
    (error.reason === ErrorReason.LEASE_LOST || error.reason === ErrorReason.TASK_NOT_FOUND)
  );
}

/**
 * Renews a lease every `everyMs` until stopped. The lease counts as lost when a renewal is
 * refused with LEASE_LOST (or the task is gone), or when no renewal has succeeded within
 * `leaseMs` of the last successful one (the server has let it lapse by then); then `signal`
 * aborts with the reason. Other renewal failures (UNAVAILABLE…) are tried again next tick.
 */
class LeaseKeeper {
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private inFlight: Promise<void> | undefined;
  /** Local time by which the lease has surely run out, if no renewal succeeds before. */
  private deadline: number;
  lostError: unknown;

  constructor(
    private readonly renew: () => Promise<unknown>,
    everyMs: number,
    private readonly leaseMs: number,
  ) {
    this.deadline = Date.now() + leaseMs;
    this.timer = setInterval(() => this.tick(), Math.max(10, everyMs));
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  private tick(): void {
    if (this.inFlight !== undefined || this.lostError !== undefined) {
      return;
    }
    if (Date.now() >= this.deadline) {
      this.lose(
        new AgentcoordError("no lease renewal succeeded before the lease ran out", Code.FailedPrecondition, {
          reasonName: "LEASE_LOST",
        }),
      );
      return;
    }
    const sent = Date.now();
    this.inFlight = this.renew()
      .then(() => {
        this.deadline = sent + this.leaseMs;
      })
      .catch((error: unknown) => {
        if (
          isLeaseLost(error) ||
          (error instanceof AgentcoordError && error.reason === ErrorReason.TASK_CANCELLED)
        ) {
          this.lose(error);
        }
      })
      .finally(() => {
        this.inFlight = undefined;
      });
  }

  private lose(error: unknown): void {
    this.lostError = error;
    clearInterval(this.timer);
    this.controller.abort(error);
  }

  /** Stops renewing; waits for a renewal in flight so its verdict is known. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.inFlight;
  }
}
