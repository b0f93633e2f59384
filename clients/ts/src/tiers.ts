/**
 * The tier fail-fast check's rule source: each method's `required_tier` option, read from the
 * generated descriptors — the same declaration the server enforces (DESIGN.md "The contract":
 * no second table).
 *
 * @module
 */
import { getOption, hasOption, type DescMethod } from "@bufbuild/protobuf";
import { AccessTier, operator_callable, required_tier } from "./gen/agentcoord/v1/access_pb.js";
import { Code } from "@connectrpc/connect";
import { AgentcoordError } from "./errors.js";

export { AccessTier };

/**
 * The lowest tier allowed to call `method`, from its `(agentcoord.v1.required_tier)` option;
 * `ACCESS_TIER_UNSPECIFIED` for a method that declares none (the server refuses those).
 */
export function requiredTier(method: DescMethod): AccessTier {
  return hasOption(method, required_tier)
    ? getOption(method, required_tier)
    : AccessTier.UNSPECIFIED;
}

/**
 * Whether `method` declares `(agentcoord.v1.operator_callable) = true`: besides the
 * OPERATOR-only methods, the only ones an OPERATOR principal may call.
 */
export function operatorCallable(method: DescMethod): boolean {
  return hasOption(method, operator_callable) && getOption(method, operator_callable);
}

/**
 * The contract's rule (access.proto, AccessTier), as the local refusal a call meets, or
 * `undefined` when `own` may call `method`: the OPERATOR calls exactly the OPERATOR-only and
 * operator_callable methods; every other tier those its tier reaches.
 */
export function refusal(method: DescMethod, own: AccessTier): AgentcoordError | undefined {
  const required = requiredTier(method);
  if (own === AccessTier.OPERATOR) {
    if (required === AccessTier.OPERATOR || operatorCallable(method)) return undefined;
    return new AgentcoordError(
      `${methodPath(method)} reads or writes a namespace's data, which the OPERATOR never does ` +
        "(refused by the client, not sent)",
      Code.PermissionDenied,
      {
        reasonName: "OPERATOR_DATA_ACCESS",
        errorMetadata: { required_tier: tierName(required), caller_tier: tierName(own) },
      },
    );
  }
  return own < required ? tierTooLow(method, required, own) : undefined;
}

/** "CONTRIBUTOR" for `AccessTier.CONTRIBUTOR`: the tier names the server uses in ErrorInfo. */
export function tierName(tier: AccessTier): string {
  return AccessTier[tier] ?? String(tier);
}

/** The path a method is called by: `/agentcoord.v1.MemoryService/Stash`. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/**
 * The error a call above the caller's tier is refused with, locally and without a round trip:
 * PERMISSION_DENIED with reason TIER_TOO_LOW and ErrorInfo-like metadata `required_tier` and
 * `caller_tier`, as the server itself would send.
 */
export function tierTooLow(method: DescMethod, required: AccessTier, own: AccessTier): AgentcoordError {
  return new AgentcoordError(
    `${methodPath(method)} needs tier ${tierName(required)}; caller has ${tierName(own)} ` +
      "(refused by the client, not sent)",
    Code.PermissionDenied,
    {
      reasonName: "TIER_TOO_LOW",
      errorMetadata: { required_tier: tierName(required), caller_tier: tierName(own) },
    },
  );
}
