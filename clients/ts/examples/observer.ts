/**
 * The OBSERVER of the polyglot demo (examples/polyglot in the repository). Prints one JSON
 * object per line on stdout; diagnostics go to stderr.
 *
 *   cd clients/ts && AGENTCOORD_SERVER=127.0.0.1:50051 AGENTCOORD_TOKEN=… \
 *     node --import tsx examples/observer.ts
 *
 * Follows `task.completed` signals with the client's resuming subscription: `{"event":"ready"}`
 * once the stream is open, then `{"event":"signal","id":…,"task_id":…,"agent":…}` per signal.
 * Right after `ready` it tries a write (Stash of key `observer-note`), which the client must
 * refuse locally for an OBSERVER: `{"event":"write_refused","code":"PERMISSION_DENIED",
 * "reason":"TIER_TOO_LOW"}` (or `{"event":"write_not_refused"}`). Runs until SIGTERM or SIGINT,
 * then exits 0.
 */
import { AgentcoordError, createClient, grpcCodeName, toValue } from "../src/index.js";

const server = process.env["AGENTCOORD_SERVER"] ?? "127.0.0.1:50051";
const print = (event: Record<string, unknown>): void => {
  process.stdout.write(`${JSON.stringify(event)}\n`);
};

const stop = new AbortController();
process.once("SIGTERM", () => stop.abort());
process.once("SIGINT", () => stop.abort());

const client = createClient(server, process.env["AGENTCOORD_TOKEN"]);

async function tryWrite(): Promise<void> {
  try {
    await client.memory.stash({ key: "observer-note", value: toValue("an observer may not write") });
    print({ event: "write_not_refused" });
  } catch (error) {
    if (!(error instanceof AgentcoordError)) throw error;
    print({ event: "write_refused", code: grpcCodeName(error.code), reason: error.reasonName });
  }
}

let written: Promise<void> | undefined;
try {
  const subscription = client.subscribe({
    signalTypes: ["task.completed"],
    signal: stop.signal,
    maxRetries: 20,
    onOpen: (cursor) => {
      if (written === undefined) {
        print({ event: "ready" });
        written = tryWrite();
      } else {
        console.error(`observer: resumed after ${cursor}`);
      }
    },
  });
  for await (const signal of subscription) {
    print({
      event: "signal",
      id: signal.id,
      task_id: signal.data?.["task_id"] ?? null,
      agent: signal.data?.["agent"] ?? null,
    });
  }
  await written;
} catch (error) {
  console.error(error instanceof AgentcoordError ? `observer failed: ${error.message}` : error);
  process.exitCode = 1;
} finally {
  client.close();
}
