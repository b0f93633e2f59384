/**
 * {@link Subscription}: SignalService.Subscribe as an `AsyncIterable` that resumes by itself.
 *
 * @module
 */
import type { Client as ServiceClient } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import { ErrorReason } from "./gen/agentcoord/v1/error_reason_pb.js";
import { StartPosition, type Signal, type SignalService } from "./gen/agentcoord/v1/signals_pb.js";
import { AgentcoordError } from "./errors.js";
import { sleep } from "./retry.js";

/** Options of {@link Subscription} (`client.subscribe(options)`). */
export interface SubscribeOptions {
  /** Only signals of these types; empty or unset: every type. */
  signalTypes?: string[];
  /**
   * Start after this signal id (exclusive): resume with the id of the last signal handled.
   * Unset: start with the next signal sent, or with the oldest retained if `earliest`.
   */
  afterId?: string;
  /** Without `afterId`, start with the oldest retained signal instead of the next one sent. */
  earliest?: boolean;
  /** Aborting it ends the iteration (it returns, without an error) and cancels the stream. */
  signal?: AbortSignal;
  /**
   * How many resumptions in a row may fail before the error is thrown. The count resets
   * whenever a response arrives. Default 5.
   */
  maxRetries?: number;
  /** Pause before the first resumption, in milliseconds, doubled per retry. Default 200. */
  backoffMs?: number;
  /** The longest pause between resumptions, in milliseconds. Default 5000. */
  maxBackoffMs?: number;
  /**
   * Called with the stream's start cursor each time a stream (the first one, or a resumed one)
   * is open on the server: signals sent from then on will arrive.
   */
  onOpen?: (cursor: string) => void;
}

/**
 * The signals visible to the caller, in send order, live and without end: iterate it with
 * `for await`. Each iteration opens its own stream.
 *
 * When the server ends the stream with UNAVAILABLE (it is shutting down or restarting, Redis
 * blipped), the connection is lost (a crashed server), or RESOURCE_EXHAUSTED / SUBSCRIBER_TOO_SLOW (this reader
 * fell behind), it resubscribes after the last cursor it received, so no signal is lost or
 * repeated. `cursor` is that position: pass it as `afterId` to continue later.
 *
 * Stop with the `signal` option, or by leaving the `for await` loop; either cancels the call
 * on the server at once.
 *
 * Iteration throws {@link AgentcoordError}: OUT_OF_RANGE (CURSOR_TRIMMED) when the cursor is
 * older than the retention (signals were missed: re-read the state, subscribe without a
 * cursor); the last error once `maxRetries` resumptions failed in a row; any other failure
 * (UNAUTHENTICATED for a revoked token, RESOURCE_EXHAUSTED / QUOTA_EXCEEDED when the namespace
 * already holds its quota of open subscriptions…) at once.
 */
export class Subscription implements AsyncIterable<Signal> {
  /**
   * The position after the last signal yielded (or the last progress the server reported; never
   * past a signal of a batch not yet yielded); "" before the first response.
   */
  cursor: string;
  private readonly options: SubscribeOptions;

  constructor(
    private readonly signals: ServiceClient<typeof SignalService>,
    options: SubscribeOptions = {},
  ) {
    this.options = options;
    this.cursor = options.afterId ?? "";
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Signal, void, undefined> {
    const { signalTypes = [], earliest = false, signal: outer } = this.options;
    const maxRetries = this.options.maxRetries ?? 5;
    const backoffMs = this.options.backoffMs ?? 200;
    const maxBackoffMs = this.options.maxBackoffMs ?? 5000;
    let retries = 0;
    while (!outer?.aborted) {
      // One controller per stream, so leaving the loop cancels exactly this call.
      const controller = new AbortController();
      const forward = (): void => controller.abort(outer?.reason);
      outer?.addEventListener("abort", forward, { once: true });
      try {
        const stream = this.signals.subscribe(
          {
            signalTypes,
            afterId: this.cursor,
            acceptBatches: true,
            // after_id and start are mutually exclusive in the contract.
            start: !this.cursor && earliest ? StartPosition.EARLIEST : StartPosition.UNSPECIFIED,
          },
          { signal: controller.signal, timeoutMs: 0 },
        );
        let first = true;
        for await (const response of stream) {
          retries = 0;
          if (first) {
            first = false;
            this.cursor = response.cursor || this.cursor;
            this.options.onOpen?.(this.cursor);
            continue;
          }
          // A batch (several signals in one response) is yielded one signal at a time; its
          // cursor is its last signal's id. `signal` is what a server from before batching fills.
          const batch = response.signal !== undefined ? [response.signal] : response.signals;
          for (const signal of batch) {
            this.cursor = signal.id;
            yield signal;
          }
          this.cursor = response.cursor || this.cursor;
        }
        return; // the server ended the stream cleanly: nothing more will come
      } catch (caught) {
        if (outer?.aborted) {
          return;
        }
        const error = AgentcoordError.fromError(caught);
        if (!isResumable(error) || retries >= maxRetries) {
          throw error;
        }
        try {
          await sleep(Math.min(maxBackoffMs, backoffMs * 2 ** retries), outer);
        } catch {
          return; // aborted while waiting
        }
        retries++;
      } finally {
        outer?.removeEventListener("abort", forward);
        controller.abort();
      }
    }
  }
}

/**
 * Whether a subscription that ended with `error` resumes: UNAVAILABLE (the server is stopping,
 * Redis blipped, the server cannot be reached), SUBSCRIBER_TOO_SLOW, or CANCELLED that this
 * client did not ask for (the connection was lost: Node reports a stream reset by a dying
 * server as CANCELLED, where other gRPC clients say UNAVAILABLE).
 */
export function isResumable(error: AgentcoordError): boolean {
  return (
    error.code === Code.Unavailable ||
    error.code === Code.Canceled ||
    (error.code === Code.ResourceExhausted && error.reason === ErrorReason.SUBSCRIBER_TOO_SLOW)
  );
}
