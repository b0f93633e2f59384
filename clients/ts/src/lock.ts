/**
 * {@link HeldLock}: a named lock acquired with {@link Client.lock}, renewed in the background,
 * with an `AbortSignal` that aborts when the lock is lost.
 *
 * @module
 */
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, type Client as ServiceClient } from "@connectrpc/connect";
import { ErrorReason } from "./gen/agentcoord/v1/error_reason_pb.js";
import type { Lock, LockService } from "./gen/agentcoord/v1/locks_pb.js";
import { AgentcoordError } from "./errors.js";
import { sleep } from "./retry.js";

/** Options of {@link Client.lock}. */
export interface LockOptions {
  /** How long the lock lasts unless renewed, in milliseconds, 1 000 to 3 600 000. Default 30 000. */
  ttlMs?: number;
  /**
   * How long to wait while another acquisition holds the lock (this agent's own included:
   * locks do not re-enter), in milliseconds. Default: as long as it takes (AcquireLock calls of
   * at most 60 s each). When it runs out, rejects with LOCK_HELD.
   */
  waitMs?: number;
  /** Aborting it stops waiting (rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** The longest wait one AcquireLock call may ask for, in milliseconds. */
const MAX_WAIT_MS = 60_000;
/** Pause before trying again after UNAVAILABLE (e.g. a stopping server), in milliseconds. */
const UNAVAILABLE_PAUSE_MS = 500;

/**
 * Acquires `lockId`, waiting as {@link LockOptions} says, and returns it held and renewed.
 *
 * @throws {@link AgentcoordError} FAILED_PRECONDITION / LOCK_HELD when `waitMs` ran out;
 *   INVALID_ARGUMENT / INVALID_ID, PERMISSION_DENIED / TIER_TOO_LOW…
 */
export async function acquire(
  locks: ServiceClient<typeof LockService>,
  lockId: string,
  options: LockOptions = {},
): Promise<HeldLock> {
  const ttlMs = options.ttlMs ?? 30_000;
  const deadline = options.waitMs === undefined ? undefined : Date.now() + options.waitMs;
  for (;;) {
    const left = deadline === undefined ? MAX_WAIT_MS : Math.max(0, deadline - Date.now());
    const waitMs = Math.min(left, MAX_WAIT_MS);
    try {
      const response = await locks.acquireLock(
        { lockId, ttl: durationFromMs(ttlMs), wait: waitMs > 0 ? durationFromMs(waitMs) : undefined },
        { signal: options.signal, timeoutMs: waitMs + 30_000 },
      );
      if (response.lock === undefined) {
        throw new AgentcoordError("AcquireLock returned no lock", Code.Internal);
      }
      return new HeldLock(locks, response.lock, ttlMs);
    } catch (error) {
      const e = AgentcoordError.fromError(error);
      const again = e.reason === ErrorReason.LOCK_HELD || e.code === Code.Unavailable;
      if (!again || options.signal?.aborted || (deadline !== undefined && Date.now() >= deadline)) {
        throw options.signal?.aborted ? options.signal.reason : e;
      }
      if (e.code === Code.Unavailable) {
        await sleep(UNAVAILABLE_PAUSE_MS, options.signal);
      }
    }
  }
}

/**
 * A lock held by this client's agent, renewed every `ttlMs / 3` until {@link HeldLock.release}.
 * Hand {@link HeldLock.fencingToken} to the resource the lock guards: it must refuse a token
 * smaller than the largest it has seen. Run the guarded work under {@link HeldLock.signal}: it
 * aborts (reason: an {@link AgentcoordError} LOCK_NOT_HELD) when the lock is lost — a renewal
 * was refused, or none succeeded before the TTL ran out.
 */
export class HeldLock {
  /** The lock as the acquisition or the last renewal returned it. */
  lock: Lock;
  private readonly controller = new AbortController();
  private readonly stopped = new AbortController();
  private lostError: AgentcoordError | undefined;
  private released = false;
  private readonly renewing: Promise<void>;

  constructor(
    private readonly locks: ServiceClient<typeof LockService>,
    lock: Lock,
    private readonly ttlMs: number,
  ) {
    this.lock = lock;
    this.renewing = this.renew();
  }

  /** Aborts when the lock is lost (or released). */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** This acquisition's fencing token: larger than every earlier one in the namespace. */
  get fencingToken(): bigint {
    return this.lock.fencingToken;
  }

  /** The loss, once the lock was lost while held; `undefined` while it is held. */
  get lost(): AgentcoordError | undefined {
    return this.lostError;
  }

  /**
   * Stops renewing and releases the lock, waking one waiting acquirer. Rejects with the
   * LOCK_NOT_HELD {@link AgentcoordError} when the lock had been lost while held (the work done
   * under it was not protected to the end). Calling it again does nothing.
   */
  async release(): Promise<void> {
    this.stopped.abort();
    await this.renewing;
    if (this.lostError !== undefined) {
      throw this.lostError;
    }
    if (this.released) {
      return;
    }
    try {
      await this.locks.releaseLock({ lockId: this.lock.lockId, fencingToken: this.lock.fencingToken });
      this.released = true;
      this.controller.abort(new AgentcoordError("the lock was released", Code.Canceled));
    } catch (error) {
      const e = AgentcoordError.fromError(error);
      if (e.reason === ErrorReason.LOCK_NOT_HELD) {
        this.lose(e);
      }
      throw e;
    }
  }

  private async renew(): Promise<void> {
    let deadline = Date.now() + this.ttlMs;
    const stop = this.stopped.signal;
    for (;;) {
      try {
        await sleep(this.ttlMs / 3, stop);
      } catch {
        return; // released
      }
      const sent = Date.now();
      try {
        const response = await this.locks.renewLock(
          { lockId: this.lock.lockId, fencingToken: this.lock.fencingToken, ttl: durationFromMs(this.ttlMs) },
          { signal: stop, timeoutMs: Math.max(1, deadline - Date.now()) },
        );
        if (response.lock !== undefined) {
          this.lock = response.lock;
        }
        deadline = sent + this.ttlMs;
      } catch (error) {
        if (stop.aborted) {
          return;
        }
        const e = AgentcoordError.fromError(error);
        if (e.reason === ErrorReason.LOCK_NOT_HELD) {
          this.lose(e);
          return;
        }
        if (Date.now() >= deadline) {
          this.lose(
            new AgentcoordError(
              `renewals failed until the lock's TTL ran out: ${e.message}`,
              Code.FailedPrecondition,
              { reasonName: "LOCK_NOT_HELD", cause: e },
            ),
          );
          return;
        }
      }
    }
  }

  private lose(error: AgentcoordError): void {
    this.lostError ??= error;
    this.controller.abort(this.lostError);
  }
}
