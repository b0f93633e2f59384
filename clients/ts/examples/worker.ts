/**
 * A task worker of the polyglot demo (examples/polyglot in the repository). Prints one JSON
 * object per line on stdout (`claimed`, `completed`); diagnostics go to stderr.
 *
 *   cd clients/ts && AGENTCOORD_SERVER=127.0.0.1:50051 AGENTCOORD_TOKEN=… \
 *     node --import tsx examples/worker.ts --capabilities lint,test --lease 3s --work-ms 200
 *
 * Flags (or environment): --capabilities a,b (WORKER_CAPABILITIES, default "lint,test"),
 * --lease 3s (WORKER_LEASE_SECONDS, default 3), --work-ms 200 (WORKER_WORK_MS, default 200).
 * Registers its capabilities, then runs the client's Worker (long-poll claim, background lease
 * renewal, completion with the fencing token); after each completion it broadcasts a
 * `task.completed` signal. Runs until SIGTERM or SIGINT, then exits 0.
 */
import { parseArgs } from "node:util";

import { AgentcoordError, createClient, type WorkerOutcome } from "../src/index.js";

const { values } = parseArgs({
  options: {
    capabilities: { type: "string" },
    lease: { type: "string" },
    "work-ms": { type: "string" },
  },
});
const capabilities = (values.capabilities ?? process.env["WORKER_CAPABILITIES"] ?? "lint,test")
  .split(",")
  .map((c) => c.trim())
  .filter((c) => c !== "");
const leaseSeconds = Number.parseFloat(
  (values.lease ?? process.env["WORKER_LEASE_SECONDS"] ?? "3").replace(/s$/, ""),
);
const workMs = Number.parseInt(values["work-ms"] ?? process.env["WORKER_WORK_MS"] ?? "200", 10);
const server = process.env["AGENTCOORD_SERVER"] ?? "127.0.0.1:50051";

const print = (event: Record<string, unknown>): void => {
  process.stdout.write(`${JSON.stringify(event)}\n`);
};

const stop = new AbortController();
process.once("SIGTERM", () => stop.abort());
process.once("SIGINT", () => stop.abort());

const client = createClient(server, process.env["AGENTCOORD_TOKEN"]);
try {
  const agent = (await client.principal()).agentId;
  await client.tasks.registerAgent({ capabilities });
  console.error(`${agent}: registered ${capabilities.join(",")} on ${server}`);

  const worker = client.worker(
    async (task, leaseLost) => {
      print({ event: "claimed", task_id: task.taskId, attempt: task.attempts, agent });
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, workMs);
        leaseLost.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
      });
      return { worker: agent };
    },
    { taskTypes: capabilities, leaseMs: leaseSeconds * 1000, waitMs: 5000 },
  );

  await worker.run({
    signal: stop.signal,
    onOutcome: async (outcome: WorkerOutcome) => {
      const taskId = outcome.task.taskId;
      if (outcome.outcome !== "completed") {
        console.error(`${agent}: ${taskId} ${outcome.outcome}: ${String(outcome.error)}`);
        return;
      }
      const attempt = outcome.task.attempts;
      // The request id makes the send safe to retry (the client retries it on UNAVAILABLE)
      // without a second signal.
      await client.signals.sendSignal({
        signalType: "task.completed",
        data: { task_id: taskId, attempt, agent },
        requestId: `completed.${taskId}.${attempt}`,
      });
      print({ event: "completed", task_id: taskId, attempt, agent });
    },
  });
  console.error(`${agent}: stopping (completed ${worker.completed}, failed ${worker.failed}, lost ${worker.lost})`);
} catch (error) {
  console.error(error instanceof AgentcoordError ? `worker failed: ${error.message}` : error);
  process.exitCode = 1;
} finally {
  client.close();
}
