/**
 * {@link Watcher}: MemoryService.WatchEntries as an `AsyncIterable` that resumes by itself.
 *
 * @module
 */
import type { Client as ServiceClient } from "@connectrpc/connect";
import type { EntryEvent, MemoryService } from "./gen/agentcoord/v1/memory_pb.js";
import { AgentcoordError } from "./errors.js";
import { sleep } from "./retry.js";
import { isResumable } from "./subscribe.js";

/** Options of {@link Watcher} (`client.watchEntries(options)`). */
export interface WatchOptions {
  /** Whose entries to watch; unset: the caller's (unless `allOwners`). */
  owner?: string;
  /** Watch every owner's entries in the namespace (`owner` must be unset). */
  allOwners?: boolean;
  /** Only keys starting with this; unset: all. */
  keyPrefix?: string;
  /** Watch this session's shared context instead (participants only). */
  sessionId?: string;
  /**
   * Start after this revision (exclusive): the revision of the last event handled, or of an
   * entry read. Unset: start at the current revision (changes from now on).
   */
  afterRevision?: bigint;
  /** Put stashed values in PUT events. */
  includeValues?: boolean;
  /** Aborting it ends the iteration (it returns, without an error) and cancels the stream. */
  signal?: AbortSignal;
  /** Resumptions in a row that may fail before the error is thrown; default 5. */
  maxRetries?: number;
  /** Pause before the first resumption, ms, doubled per retry; default 200. */
  backoffMs?: number;
  /** The longest pause between resumptions, ms; default 5000. */
  maxBackoffMs?: number;
  /** Called with the revision each stream (first or resumed) starts after, once it is open. */
  onOpen?: (revision: bigint) => void;
}

/**
 * Changes to working-memory entries (PUT, DELETE, EXPIRE events), oldest first, live and without
 * end: iterate it with `for await`. Like {@link Subscription}, it resumes after the last revision
 * it received when the stream ends UNAVAILABLE, with a lost connection, or SUBSCRIBER_TOO_SLOW,
 * so no event is lost or repeated; `revision` is that position (pass it as `afterRevision` to
 * continue later).
 *
 * Iteration throws {@link AgentcoordError}: OUT_OF_RANGE (REVISION_COMPACTED) when the revision
 * is older than the namespace's kept history (re-read the entries, watch again); the last error
 * once `maxRetries` resumptions failed in a row; any other failure at once.
 */
export class Watcher implements AsyncIterable<EntryEvent> {
  /** The position after the last event yielded (or progress reported); undefined before. */
  revision: bigint | undefined;
  private readonly options: WatchOptions;

  constructor(
    private readonly memory: ServiceClient<typeof MemoryService>,
    options: WatchOptions = {},
  ) {
    this.options = options;
    this.revision = options.afterRevision;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<EntryEvent, void, undefined> {
    const { signal: outer } = this.options;
    const maxRetries = this.options.maxRetries ?? 5;
    const backoffMs = this.options.backoffMs ?? 200;
    const maxBackoffMs = this.options.maxBackoffMs ?? 5000;
    let retries = 0;
    while (!outer?.aborted) {
      const controller = new AbortController();
      const forward = (): void => controller.abort(outer?.reason);
      outer?.addEventListener("abort", forward, { once: true });
      try {
        const stream = this.memory.watchEntries(
          {
            owner: this.options.owner ?? "",
            allOwners: this.options.allOwners ?? false,
            keyPrefix: this.options.keyPrefix ?? "",
            sessionId: this.options.sessionId ?? "",
            includeValues: this.options.includeValues ?? false,
            afterRevision: this.revision,
          },
          { signal: controller.signal, timeoutMs: 0 },
        );
        let first = true;
        for await (const response of stream) {
          retries = 0;
          if (first) {
            first = false;
            this.revision = response.revision;
            this.options.onOpen?.(response.revision);
            continue;
          }
          for (const event of response.events) {
            this.revision = event.revision;
            yield event;
          }
          this.revision = response.revision;
        }
        return;
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
          return;
        }
        retries++;
      } finally {
        outer?.removeEventListener("abort", forward);
        controller.abort();
      }
    }
  }
}
