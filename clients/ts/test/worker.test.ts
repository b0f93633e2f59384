import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  AccessTier,
  ErrorReason,
  PermanentTaskError,
  TaskStatus,
  TaskWaitReason,
  type Client,
  type WorkerOutcome,
} from "../src/index.js";
import { TestServer, eventually } from "./support.js";

let server: TestServer;
let worker: Client;
let validator: Client;

before(async () => {
  server = await TestServer.start();
  worker = server.client(await server.issueToken("ts-worker", AccessTier.CONTRIBUTOR));
  validator = server.client(await server.issueToken("ts-validator", AccessTier.VALIDATOR));
});

after(async () => {
  worker?.close();
  validator?.close();
  await server?.dispose();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test("the worker long-polls, renews its lease while the handler runs, and completes with the fencing token", async () => {
  let claimedToken: bigint | undefined;
  const w = worker.worker(
    async (task) => {
      claimedToken = task.lease?.fencingToken;
      await sleep(2500); // longer than the 1 s lease: only renewals keep it
      return { handled: task.taskId };
    },
    { taskTypes: ["renew"], leaseMs: 1000, waitMs: 10_000 },
  );
  const claimed = w.runOnce(); // waiting: no task exists yet
  await sleep(300);
  await validator.tasks.addTask({ taskId: "renew-1", taskType: "renew" });
  const outcome = await claimed;
  assert.equal(outcome?.outcome, "completed");
  const task = (await validator.tasks.getTask({ taskId: "renew-1" })).task;
  assert.equal(task?.status, TaskStatus.COMPLETED);
  assert.equal(task?.attempts, 1, "the lease never lapsed, so the task was claimed once");
  assert.deepEqual(task?.result, { handled: "renew-1" });
  // Completed under the lease the handler was given: the claim's fencing token.
  assert.ok(claimedToken !== undefined && claimedToken > 0n, `claimed token ${claimedToken}`);
  assert.equal(task?.lease?.fencingToken, claimedToken);
  await eventually(
    () => server.rpcLines("TaskService/RenewTaskLease", "ts-worker").length >= 2,
    "at least two renewals in the server's log",
  );
  assert.equal(w.completed, 1);
});

test("a handler that throws fails the attempt: retryable, or dead-lettered for PermanentTaskError", async () => {
  await validator.tasks.addTask({ taskId: "fail-1", taskType: "fail", maxAttempts: 3 });
  const w = worker.worker(
    () => {
      throw new Error("disk full");
    },
    { taskTypes: ["fail"], waitMs: 0 },
  );
  const outcome = await w.runOnce();
  assert.equal(outcome?.outcome, "failed");
  let task = (await validator.tasks.getTask({ taskId: "fail-1" })).task;
  assert.equal(task?.status, TaskStatus.PENDING);
  assert.equal(task?.attempts, 1);
  assert.match(task?.lastError ?? "", /disk full/);

  const permanent = worker.worker(
    () => {
      throw new PermanentTaskError("bad input");
    },
    { taskTypes: ["fail"], waitMs: 0 },
  );
  assert.equal((await permanent.runOnce())?.outcome, "failed");
  task = (await validator.tasks.getTask({ taskId: "fail-1" })).task;
  assert.equal(task?.status, TaskStatus.DEAD_LETTERED);
});

test("a renewal refused TASK_CANCELLED aborts the handler's signal and nothing is submitted", async () => {
  await validator.tasks.addTask({ taskId: "lost-1", taskType: "lost" });
  let aborted: unknown;
  const w = worker.worker(
    async (task, signal) => {
      // The task is taken away while the handler works: runOnce holds no subscription, so the
      // next renewal (TASK_CANCELLED) is what tells the worker.
      await validator.tasks.cancelTask({ taskId: task.taskId });
      await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve()));
      aborted = signal.reason;
      return { should: "not be stored" };
    },
    { taskTypes: ["lost"], leaseMs: 1000, waitMs: 0 },
  );
  const outcome: WorkerOutcome | undefined = await w.runOnce();
  assert.equal(outcome?.outcome, "cancelled");
  assert.equal((aborted as { reason?: unknown }).reason, ErrorReason.TASK_CANCELLED);
  const task = (await validator.tasks.getTask({ taskId: "lost-1" })).task;
  assert.equal(task?.status, TaskStatus.CANCELLED);
  assert.equal(server.rpcLines("TaskService/CompleteTask", "ts-worker").length, 1, "only renew-1 was completed");
  assert.equal(w.cancelled, 1);
});

test("run() processes tasks until its signal aborts", async () => {
  for (let n = 1; n <= 3; n++) {
    await validator.tasks.addTask({ taskId: `run-${n}`, taskType: "run", priority: n });
  }
  const controller = new AbortController();
  const done: string[] = [];
  const w = worker.worker((task) => ({ n: task.priority }), { taskTypes: ["run"], waitMs: 5000 });
  const processed = await w.run({
    signal: controller.signal,
    onOutcome: (o) => {
      done.push(o.task.taskId);
      if (done.length === 3) controller.abort();
    },
  });
  assert.equal(processed, 3);
  assert.deepEqual(done, ["run-3", "run-2", "run-1"], "highest priority first");
});

test("the demo programs: the observer sees each completion once and its write is refused locally; both exit 0 on SIGTERM", async () => {
  const { spawn } = await import("node:child_process");
  const { createInterface } = await import("node:readline");
  const start = (script: string, token: string, args: string[] = []) => {
    const child = spawn(process.execPath, ["--import", "tsx", `examples/${script}.ts`, ...args], {
      env: { ...process.env, AGENTCOORD_SERVER: server.address, AGENTCOORD_TOKEN: token },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const lines: Record<string, unknown>[] = [];
    createInterface({ input: child.stdout }).on("line", (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
    return { child, lines, exited };
  };
  const observer = start("observer", await server.issueToken("demo-observer", AccessTier.OBSERVER));
  await eventually(() => observer.lines.some((l) => l["event"] === "ready"), "the observer to be ready");
  for (let n = 1; n <= 3; n++) {
    await validator.tasks.addTask({ taskId: `demo-${n}`, taskType: "demo" });
  }
  const demoWorker = start("worker", await server.issueToken("demo-worker", AccessTier.CONTRIBUTOR), [
    "--capabilities", "demo", "--lease", "3s", "--work-ms", "50",
  ]);
  const signals = () => observer.lines.filter((l) => l["event"] === "signal");
  await eventually(() => signals().length === 3, "three completion signals");
  demoWorker.child.kill("SIGTERM");
  observer.child.kill("SIGTERM");
  assert.equal(await demoWorker.exited, 0);
  assert.equal(await observer.exited, 0);

  const completed = demoWorker.lines.filter((l) => l["event"] === "completed").map((l) => l["task_id"]);
  assert.deepEqual([...completed].sort(), ["demo-1", "demo-2", "demo-3"]);
  assert.deepEqual(signals().map((l) => l["task_id"]), completed, "in completion order, once each");
  assert.deepEqual(
    observer.lines.find((l) => String(l["event"]).startsWith("write")),
    { event: "write_refused", code: "PERMISSION_DENIED", reason: "TIER_TOO_LOW" },
  );
  await eventually(() => server.rpcLines("SignalService/Subscribe", "demo-observer").length === 1, "the observer's stream to be logged");
  assert.equal(server.rpcLines("MemoryService/Stash", "demo-observer").length, 0);
});

test("run() claims each next task with the completion (or failure): one ClaimTask per idle period", async () => {
  const chain = server.client(await server.issueToken("ts-chain", AccessTier.CONTRIBUTOR));
  const count = 12;
  for (let n = 1; n <= count; n++) {
    await validator.tasks.addTask({ taskId: `chain-${n}`, taskType: "chain" });
  }
  let failedOnce = false;
  const completed = new Set<string>();
  const w = chain.worker(
    (task) => {
      if (!failedOnce) {
        failedOnce = true; // FailTask claims the next task too (here the same one again)
        throw new Error("once");
      }
      completed.add(task.taskId);
      return {};
    },
    { taskTypes: ["chain"], waitMs: 1000 },
  );
  const processed = await w.run({ stopWhenIdle: true });
  chain.close();

  assert.equal(processed, count + 1);
  assert.equal(completed.size, count);
  // One claim found the first task; every later one came with a completion or failure; the
  // last completion found nothing pending, so one more claim waited and came back empty.
  const claims = server.rpcLines("TaskService/ClaimTask", "ts-chain").length;
  assert.ok(claims <= 2, `${claims} ClaimTask calls for ${count} tasks queued at once`);
});

test("a cancelled task's handler is aborted at once and nothing is submitted", async () => {
  await validator.tasks.addTask({ taskId: "cancel-me", taskType: "cancel-ts" });
  let started!: () => void;
  const handlerStarted = new Promise<void>((resolve) => (started = resolve));
  let reason: unknown;
  // A 60 s lease renews every 20 s: within the test's bound only the signal can tell the worker.
  const w = worker.worker(
    (_task, signal) =>
      new Promise((_resolve, reject) => {
        started();
        signal.addEventListener("abort", () => {
          reason = signal.reason;
          reject(signal.reason as Error);
        });
      }),
    { taskTypes: ["cancel-ts"], leaseMs: 60_000, waitMs: 1000 },
  );
  const outcomes: WorkerOutcome[] = [];
  const running = w.run({ maxTasks: 1, onOutcome: (o) => void outcomes.push(o) });
  await handlerStarted;

  await validator.tasks.cancelTask({ taskId: "cancel-me" });

  const processed = await Promise.race([
    running,
    sleep(15_000).then(() => assert.fail("the cancelled task's handler was not stopped")),
  ]);
  assert.equal(processed, 1);
  assert.equal(outcomes[0]?.outcome, "cancelled");
  assert.equal((reason as { reason?: ErrorReason }).reason, ErrorReason.TASK_CANCELLED);
  assert.equal(w.cancelled, 1);
  assert.equal(w.completed + w.failed, 0);
  const task = (await validator.tasks.getTask({ taskId: "cancel-me" })).task;
  assert.equal(task?.status, TaskStatus.CANCELLED);
});

test("addTask takes dependencies and ListTasks says why the dependent waits", async () => {
  await validator.tasks.addTask({ taskId: "dep-ts", taskType: "dep-ts" });
  const added = await validator.tasks.addTask({
    taskId: "syn-ts",
    taskType: "syn-ts",
    dependsOn: ["dep-ts"],
  });
  assert.equal(added.task?.waitReason, TaskWaitReason.DEPENDENCIES);
  assert.equal(added.task?.dependenciesOutstanding, 1);
  assert.equal((await worker.tasks.claimTask({ taskTypes: ["syn-ts"] })).task, undefined);
  const dep = (await worker.tasks.claimTask({ taskTypes: ["dep-ts"] })).task;
  await worker.tasks.completeTask({ taskId: "dep-ts", fencingToken: dep?.lease?.fencingToken ?? 0n });
  const claimed = (await worker.tasks.claimTask({ taskTypes: ["syn-ts"] })).task;
  assert.equal(claimed?.taskId, "syn-ts");
});
