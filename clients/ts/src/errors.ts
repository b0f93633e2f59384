/**
 * The one error type the client throws: {@link AgentcoordError}, a `ConnectError` with the
 * `google.rpc.Status` details an agentcoord server sends decoded (ErrorInfo reason and metadata,
 * BadRequest field violations).
 *
 * @module
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorReason } from "./gen/agentcoord/v1/error_reason_pb.js";
import { durationMs } from "@bufbuild/protobuf/wkt";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

export { Code };

/** One bad request field, from a `google.rpc.BadRequest` detail. */
export interface FieldViolation {
  /** The field's path in the request, e.g. `"priority"` or `"items[2].key"`. */
  readonly field: string;
  /** Why it is invalid. */
  readonly description: string;
}

/** What {@link AgentcoordError}'s constructor takes beyond the message and code. */
export interface AgentcoordErrorInit {
  /** `ErrorInfo.reason` as sent, e.g. `"TIER_TOO_LOW"`; `""` when there was none. */
  reasonName?: string;
  /** `ErrorInfo.metadata`. */
  errorMetadata?: Record<string, string>;
  /** Field violations from `google.rpc.BadRequest`. */
  fieldViolations?: FieldViolation[];
  /** How long to wait before retrying, in milliseconds, from `google.rpc.RetryInfo`. */
  retryDelayMs?: number;
  /** Response trailers (the gRPC metadata of the failed call). */
  metadata?: Headers;
  /** The error this one was decoded from. */
  cause?: unknown;
}

/**
 * A failed call, local or remote. Every method of the client rejects with this type (aborting
 * a call with an `AbortSignal` gives one with code `Canceled`).
 *
 * It extends Connect's `ConnectError`, so `code` is a {@link Code} (the gRPC status code:
 * `Code.PermissionDenied === 7`), `rawMessage` is the server's message and `metadata` the
 * response trailers. On top of that it carries what agentcoord puts in `google.rpc.Status`
 * (DESIGN.md "Errors"):
 *
 * - `reason`: the contract's {@link ErrorReason} value for `ErrorInfo.reason`, or
 *   `ErrorReason.ERROR_REASON_UNSPECIFIED` when there was none or this client does not know it;
 * - `reasonName`: the reason string as sent (`""` if none), so a reason newer than this client
 *   is still readable;
 * - `errorMetadata`: `ErrorInfo.metadata` (e.g. `required_tier`, `caller_tier`, `request_id`);
 * - `requestId`: the server's request id (`errorMetadata.request_id`), to find its log line;
 * - `fieldViolations`: `BadRequest` field violations for INVALID_ARGUMENT;
 * - `retryDelayMs`: `RetryInfo.retry_delay` in milliseconds, when the server says how long to
 *   wait (TOO_MANY_FAILED_AUTHENTICATIONS).
 *
 * @example
 * ```ts
 * try { await client.memory.stash({ key: "k", value: toValue(1) }); }
 * catch (err) {
 *   if (err instanceof AgentcoordError && err.reason === ErrorReason.TIER_TOO_LOW) { ... }
 * }
 * ```
 */
export class AgentcoordError extends ConnectError {
  /** The contract's reason; `ERROR_REASON_UNSPECIFIED` when none was sent or it is unknown. */
  readonly reason: ErrorReason;
  /** `ErrorInfo.reason` exactly as sent; `""` when none. */
  readonly reasonName: string;
  /** `ErrorInfo.metadata`. */
  readonly errorMetadata: Readonly<Record<string, string>>;
  /** `BadRequest` field violations. */
  readonly fieldViolations: readonly FieldViolation[];
  /** `RetryInfo.retry_delay` in milliseconds; undefined when the server sent none. */
  readonly retryDelayMs: number | undefined;

  constructor(message: string, code: Code, init: AgentcoordErrorInit = {}) {
    super(message, code, init.metadata, undefined, init.cause);
    // ConnectError fixes the prototype for its own class; do it for the subclass too.
    Object.setPrototypeOf(this, new.target.prototype);
    this.reasonName = init.reasonName ?? "";
    this.reason = toReason(this.reasonName);
    this.errorMetadata = Object.freeze({ ...(init.errorMetadata ?? {}) });
    this.fieldViolations = Object.freeze([...(init.fieldViolations ?? [])]);
    this.retryDelayMs = init.retryDelayMs;
  }

  /**
   * An ordinary prototype-chain check. ConnectError's own check also accepts any error named
   * "ConnectError", so without this every ConnectError would pass `instanceof AgentcoordError`.
   * (`name` stays "ConnectError" so that Connect, which re-wraps errors that fail
   * `instanceof ConnectError`, passes this one through unchanged.)
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }

  /** The server's request id for this failure (find its log line with it), if it sent one. */
  get requestId(): string | undefined {
    return this.errorMetadata["request_id"];
  }

  /**
   * Converts anything a call threw into an AgentcoordError: an AgentcoordError is returned
   * as is; a `ConnectError` keeps its code, message and trailers and has its
   * `grpc-status-details-bin` details (ErrorInfo, BadRequest, RetryInfo) decoded; anything else becomes
   * `Code.Unknown` (an `AbortError` becomes `Code.Canceled`). A connection reset under the call
   * (ECONNRESET, EPIPE), which Connect reports as ABORTED, becomes `Code.Unavailable`: the server
   * did not answer, as gRPC clients in other languages report it; ABORTED stays the server's
   * word for a conflict (e.g. a stale fencing token).
   */
  static fromError(error: unknown): AgentcoordError {
    if (error instanceof AgentcoordError) {
      return error;
    }
    const connect = ConnectError.from(error);
    const info = connect.findDetails(ErrorInfoSchema)[0];
    const badRequest = connect.findDetails(BadRequestSchema)[0];
    const retryDelay = connect.findDetails(RetryInfoSchema)[0]?.retryDelay;
    const code =
      connect.code === Code.Aborted && nodeErrorCode(connect, CONNECTION_RESET) !== undefined
        ? Code.Unavailable
        : connect.code;
    return new AgentcoordError(connect.rawMessage, code, {
      reasonName: info?.reason ?? "",
      errorMetadata: info?.metadata ?? {},
      fieldViolations: (badRequest?.fieldViolations ?? []).map((v) => ({
        field: v.field,
        description: v.description,
      })),
      retryDelayMs: retryDelay === undefined ? undefined : durationMs(retryDelay),
      metadata: connect.metadata,
      cause: error,
    });
  }
}

/** Node error codes of a connection that broke under a call (the peer went away). */
const CONNECTION_RESET: ReadonlySet<string> = new Set(["ECONNRESET", "EPIPE"]);

/**
 * The Node error code (e.g. `"ECONNREFUSED"`) of the first error in `error`'s cause chain
 * whose code is in `codes` and, when `syscall` is given, whose failed system call is `syscall`;
 * undefined if none. Connect wraps the Node error once (ConnectError → Error), this client once
 * more (AgentcoordError → ConnectError), so the chain is short.
 */
export function nodeErrorCode(
  error: unknown,
  codes: ReadonlySet<string>,
  syscall?: string,
): string | undefined {
  let cause: unknown = error;
  for (let depth = 0; cause instanceof Error && depth < 4; depth++) {
    const { code, syscall: call } = cause as NodeJS.ErrnoException;
    if (typeof code === "string" && codes.has(code) && (syscall === undefined || call === syscall)) {
      return code;
    }
    cause = cause.cause;
  }
  return undefined;
}

/** `reason` as its {@link ErrorReason} value; `ERROR_REASON_UNSPECIFIED` if unknown or empty. */
export function toReason(reason: string): ErrorReason {
  if (reason === "" || reason === "ERROR_REASON_UNSPECIFIED") {
    return ErrorReason.ERROR_REASON_UNSPECIFIED;
  }
  const value: unknown = (ErrorReason as unknown as Record<string, unknown>)[reason];
  return typeof value === "number" ? (value as ErrorReason) : ErrorReason.ERROR_REASON_UNSPECIFIED;
}

/**
 * The gRPC name of a status code, as other gRPC libraries and the server's logs spell it:
 * `grpcCodeName(Code.PermissionDenied) === "PERMISSION_DENIED"`.
 */
export function grpcCodeName(code: Code): string {
  if (code === Code.Canceled) {
    return "CANCELLED"; // gRPC spells it with two Ls
  }
  const name = Code[code] ?? "UNKNOWN";
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
