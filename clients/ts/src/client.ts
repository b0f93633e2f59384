/**
 * {@link Client}: one object per caller identity, holding one HTTP/2 connection and one typed
 * client per agentcoord service.
 *
 * @module
 */
import { create, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  createClient as createConnectClient,
  type Client as ServiceClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type * as http2 from "node:http2";

import { AccessTier, type Principal } from "./gen/agentcoord/v1/access_pb.js";
import { AdminService, WhoAmIRequestSchema } from "./gen/agentcoord/v1/admin_pb.js";
import { LockService } from "./gen/agentcoord/v1/locks_pb.js";
import { MemoryService } from "./gen/agentcoord/v1/memory_pb.js";
import { SignalService } from "./gen/agentcoord/v1/signals_pb.js";
import { StagingService } from "./gen/agentcoord/v1/staging_pb.js";
import { TaskService } from "./gen/agentcoord/v1/tasks_pb.js";
import { AgentcoordError } from "./errors.js";
import { DEFAULT_RETRY_POLICY, isSafeToRetry, neverRan, sleep, type RetryPolicy } from "./retry.js";
import { acquire, type HeldLock, type LockOptions } from "./lock.js";
import { Subscription, type SubscribeOptions } from "./subscribe.js";
import { Watcher, type WatchOptions } from "./watch.js";
import { refusal, requiredTier } from "./tiers.js";
import { CANCEL_SIGNAL_TYPE, Worker, type TaskHandler, type WorkerOptions } from "./worker.js";

export type { ServiceClient };

/** Options of {@link createClient}. */
export interface ClientOptions {
  /**
   * Default deadline of each unary call, in milliseconds; 0 means none. Default 30 000.
   * A call can override it with the `timeoutMs` call option. {@link Client.subscribe} never
   * has a deadline; a raw `signals.subscribe` call needs `timeoutMs: 0` to have none.
   */
  timeoutMs?: number;
  /** Use TLS (`https`). Implied by a target starting with `https://`. */
  tls?: boolean;
  /**
   * Node HTTP/2 session options, e.g. `{ ca }` for a private CA, or `{ cert, key }` for
   * servers that require client certificates (mTLS).
   */
  nodeOptions?: http2.SecureClientSessionOptions;
  /** Extra headers sent with every call (e.g. development identity headers). */
  headers?: Record<string, string>;
  /** How calls are retried (see `SAFE_TO_RETRY` and `neverRan`). */
  retry?: Partial<RetryPolicy>;
  /** Extra Connect interceptors, run inside the client's own (after the tier check). */
  interceptors?: Interceptor[];
}

const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * Connects to an agentcoord server as the holder of `token`. Nothing goes over the wire until
 * the first call.
 *
 * @param target - `host:port` (plaintext HTTP/2), or a URL `http://host:port` /
 *   `https://host:port`.
 * @param token - the bearer token; default the `AGENTCOORD_TOKEN` environment variable. Sent
 *   as `authorization: Bearer <token>` on every call, never logged.
 * @param options - see {@link ClientOptions}.
 */
export function createClient(
  target: string,
  token: string | undefined = process.env["AGENTCOORD_TOKEN"],
  options: ClientOptions = {},
): Client {
  return new Client(target, token, options);
}

/**
 * The agentcoord client: `admin`, `memory`, `signals`, `staging` and `tasks` are the generated
 * Connect clients of the five services (promises; request fields as plain objects; `Struct`
 * fields as plain JSON objects), with the client's interceptors:
 *
 * - the bearer token is attached to every call;
 * - a call needing a higher tier than the caller's is refused locally — rejected with
 *   {@link AgentcoordError} PERMISSION_DENIED / TIER_TOO_LOW, never sent. The caller's
 *   principal is learnt once, with WhoAmI, on the first call that needs more than OBSERVER
 *   (every principal has OBSERVER); each method's `required_tier` option is read from the
 *   generated descriptors. If WhoAmI fails the call goes out and the server decides.
 * - calls that surely never ran (refused by a stopping server, or a refused connection) are
 *   retried, and so are safe calls after UNAVAILABLE (see `SAFE_TO_RETRY`);
 * - every failure rejects with {@link AgentcoordError}, details decoded.
 *
 * Call {@link Client.close} when done: it closes the connection, failing calls in flight.
 */
export class Client {
  readonly admin: ServiceClient<typeof AdminService>;
  readonly memory: ServiceClient<typeof MemoryService>;
  readonly signals: ServiceClient<typeof SignalService>;
  readonly staging: ServiceClient<typeof StagingService>;
  readonly tasks: ServiceClient<typeof TaskService>;
  readonly locks: ServiceClient<typeof LockService>;
  /** The base URL calls go to, e.g. `http://127.0.0.1:50051`. */
  readonly baseUrl: string;
  /** Default unary deadline in milliseconds (0: none). */
  readonly timeoutMs: number;

  private readonly session: Http2SessionManager;
  /** Aborted by close(): ends subscriptions and workers, and stops retries. */
  private readonly lifetime = new AbortController();
  private principalPromise: Promise<Principal> | undefined;

  constructor(target: string, token: string | undefined, options: ClientOptions = {}) {
    const tls = options.tls ?? target.startsWith("https://");
    this.baseUrl = /^https?:\/\//.test(target) ? target : `${tls ? "https" : "http"}://${target}`;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    // Our own session manager, so that close() can end the connection (a transport has no
    // close of its own). No client keepalive pings: in connect-node 2.1 a ping timer firing on
    // a session the server just dropped throws an uncaught ERR_HTTP2_INVALID_SESSION that ends
    // the process (connectrpc/connect-es#1795). The server's keepalive pings keep idle
    // subscriptions' connections alive instead.
    this.session = new Http2SessionManager(this.baseUrl, {}, options.nodeOptions);
    const policy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    const transport = createGrpcTransport({
      baseUrl: this.baseUrl,
      sessionManager: this.session,
      defaultTimeoutMs: this.timeoutMs > 0 ? this.timeoutMs : undefined,
      interceptors: [
        errorInterceptor,
        headerInterceptor(token, options.headers ?? {}),
        this.tierInterceptor(),
        retryInterceptor(policy, this.lifetime.signal),
        ...(options.interceptors ?? []),
      ],
    });
    this.admin = createConnectClient(AdminService, transport);
    this.memory = createConnectClient(MemoryService, transport);
    this.signals = createConnectClient(SignalService, transport);
    this.staging = createConnectClient(StagingService, transport);
    this.tasks = createConnectClient(TaskService, transport);
    this.locks = createConnectClient(LockService, transport);
  }

  /**
   * The principal this client's token authenticates as (agent id, namespace, tier), asked
   * with WhoAmI once and then remembered. A failed WhoAmI is not remembered.
   *
   * @throws {@link AgentcoordError} UNAUTHENTICATED (MISSING_TOKEN, UNKNOWN_TOKEN,
   *   TOKEN_EXPIRED…) for a bad token; UNAVAILABLE if the server cannot be reached.
   */
  principal(): Promise<Principal> {
    if (this.principalPromise === undefined) {
      const pending = this.admin.whoAmI(create(WhoAmIRequestSchema)).then((response) => {
        if (response.principal === undefined) {
          throw new AgentcoordError("WhoAmI returned no principal", Code.Internal);
        }
        return response.principal;
      });
      pending.catch(() => {
        if (this.principalPromise === pending) {
          this.principalPromise = undefined;
        }
      });
      this.principalPromise = pending;
    }
    return this.principalPromise;
  }

  /**
   * The signals visible to this agent, live and in send order, as an `AsyncIterable` that
   * resumes from its last cursor after UNAVAILABLE or SUBSCRIBER_TOO_SLOW. See
   * {@link Subscription} for the options and errors.
   */
  subscribe(options: SubscribeOptions = {}): Subscription {
    const signal =
      options.signal === undefined
        ? this.lifetime.signal
        : AbortSignal.any([options.signal, this.lifetime.signal]);
    return new Subscription(this.signals, { ...options, signal });
  }

  /**
   * Changes to working-memory entries (or a session's shared context), live and oldest first,
   * as an `AsyncIterable` that resumes from its last revision after UNAVAILABLE or
   * SUBSCRIBER_TOO_SLOW. See {@link Watcher} for the options and errors.
   */
  watchEntries(options: WatchOptions = {}): Watcher {
    const signal =
      options.signal === undefined
        ? this.lifetime.signal
        : AbortSignal.any([options.signal, this.lifetime.signal]);
    return new Watcher(this.memory, { ...options, signal });
  }

  /** A task worker running `handler` on claimed tasks; see {@link Worker}. */
  worker(handler: TaskHandler, options: WorkerOptions = {}): Worker {
    return new Worker(this.tasks, handler, options, this.lifetime.signal, (signal) =>
      this.subscribe({ signalTypes: [CANCEL_SIGNAL_TYPE], earliest: true, signal }),
    );
  }

  /**
   * Acquires the named lock (waiting as `options` says) and keeps it renewed until
   * {@link HeldLock.release}; its `signal` aborts when the lock is lost. See {@link HeldLock}.
   */
  lock(lockId: string, options: LockOptions = {}): Promise<HeldLock> {
    const signal =
      options.signal === undefined
        ? this.lifetime.signal
        : AbortSignal.any([options.signal, this.lifetime.signal]);
    return acquire(this.locks, lockId, { ...options, signal });
  }

  /**
   * Closes the connection: calls in flight fail with CANCELLED, subscriptions from
   * {@link Client.subscribe} end, workers' `run` returns. Calls made later open a new
   * connection.
   */
  close(): void {
    this.lifetime.abort(new AgentcoordError("the client was closed", Code.Canceled));
    this.session.abort();
  }

  private tierInterceptor(): Interceptor {
    return (next) => async (req) => {
      const required = requiredTier(req.method);
      // WhoAmI itself needs only OBSERVER, so learning the principal never recurses.
      if (required > AccessTier.OBSERVER) {
        let own: AccessTier | undefined;
        try {
          own = (await this.principal()).tier;
        } catch {
          own = undefined; // let the call go out: the server stays the authority
        }
        const refused = own === undefined ? undefined : refusal(req.method, own);
        if (refused !== undefined) throw refused;
      }
      return next(req);
    };
  }
}

/** Turns every failure, unary or mid-stream, into an AgentcoordError with decoded details. */
const errorInterceptor: Interceptor = (next) => async (req) => {
  let res;
  try {
    res = await next(req);
  } catch (error) {
    throw AgentcoordError.fromError(error);
  }
  if (!res.stream) {
    return res;
  }
  const messages = res.message;
  return {
    ...res,
    message: (async function* () {
      try {
        yield* messages;
      } catch (error) {
        throw AgentcoordError.fromError(error);
      }
    })(),
  };
};

function headerInterceptor(token: string | undefined, headers: Record<string, string>): Interceptor {
  return (next) => (req) => {
    for (const [name, value] of Object.entries(headers)) {
      req.header.set(name, value);
    }
    if (token) {
      req.header.set("authorization", `Bearer ${token}`);
    }
    return next(req);
  };
}

function retryInterceptor(policy: RetryPolicy, closed: AbortSignal): Interceptor {
  return (next) => async (req) => {
    if (req.stream || policy.maxRetries <= 0) {
      return next(req); // a Subscription resumes by itself
    }
    const safe = isSafeToRetry(req.method, req.message);
    for (let attempt = 0; ; attempt++) {
      try {
        return await next(req);
      } catch (error) {
        // A stream reset by a dying server surfaces as CANCELLED in Node; unless this call
        // was aborted, that is a lost connection like UNAVAILABLE (which a connection reset
        // becomes in fromError). Either may have run: only safe calls are repeated.
        const code = AgentcoordError.fromError(error).code;
        const lost = code === Code.Unavailable || code === Code.Canceled;
        const again = neverRan(error) || (safe && lost);
        if (!again || attempt >= policy.maxRetries || req.signal.aborted || closed.aborted) {
          throw error;
        }
        const pause = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * 2 ** attempt);
        await sleep(pause, req.signal);
      }
    }
  };
}

/** A `DescService` of the agentcoord contract, for code that walks the descriptors. */
export const SERVICES: readonly DescService[] = [
  AdminService,
  MemoryService,
  SignalService,
  StagingService,
  TaskService,
  LockService,
];
