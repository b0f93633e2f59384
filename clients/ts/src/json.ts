/**
 * `google.protobuf.Value` fields as plain JSON. (`Struct` fields — task payloads and results,
 * signal data — are generated as plain `JsonObject`s already; only `Value` fields, the values of
 * working memory and shared context, need these.)
 *
 * @module
 */
import { fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";

export type { JsonObject, JsonValue } from "@bufbuild/protobuf";

/**
 * A JSON value as a `google.protobuf.Value`, for fields such as `StashRequest.value`.
 * Numbers travel as doubles (integers above 2^53 lose precision). Throws for values JSON
 * cannot hold (e.g. `NaN`).
 */
export function toValue(json: JsonValue): Value {
  return fromJson(ValueSchema, json);
}

/** A `google.protobuf.Value` as plain JSON; an unset value is `null`. */
export function fromValue(value: Value | undefined): JsonValue {
  return value === undefined ? null : toJson(ValueSchema, value);
}
