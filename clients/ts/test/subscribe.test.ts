import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { AccessTier, AgentcoordError, Code, type Client, type Signal } from "../src/index.js";
import { TestServer, eventually } from "./support.js";

// A small per-stream buffer, so a reader that stops reading is cut off (SUBSCRIBER_TOO_SLOW).
let server: TestServer;
let sender: Client;
let reader: Client;

before(async () => {
  server = await TestServer.start(["--signal-queue-size", "8"]);
  // Retries of safe calls must outlast a server restart here.
  const retry = { maxRetries: 20, initialBackoffMs: 100, maxBackoffMs: 500 };
  sender = server.client(await server.issueToken("ts-sender", AccessTier.CONTRIBUTOR), { retry });
  reader = server.client(await server.issueToken("ts-reader", AccessTier.OBSERVER), { retry });
});

after(async () => {
  sender?.close();
  reader?.close();
  await server?.dispose();
});

function isIncreasing(ids: string[]): boolean {
  const key = (id: string): [bigint, bigint] => {
    const [ms, seq] = id.split("-");
    return [BigInt(ms ?? "0"), BigInt(seq ?? "0")];
  };
  return ids.every((id, i) => {
    if (i === 0) return true;
    const [a, b] = [key(ids[i - 1] ?? ""), key(id)];
    return a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
  });
}

test("a subscription resumes from its cursor across a server restart, losing and repeating nothing", async () => {
  const received: Signal[] = [];
  let opened = 0;
  const controller = new AbortController();
  const subscription = reader.subscribe({
    signalTypes: ["restart"],
    signal: controller.signal,
    maxRetries: 50,
    backoffMs: 100,
    maxBackoffMs: 500,
    onOpen: () => {
      opened++;
    },
  });
  const consumed = (async () => {
    for await (const signal of subscription) {
      received.push(signal);
      if (received.length === 6) controller.abort();
    }
  })();
  await eventually(() => opened === 1, "the first stream to open");
  const sent: string[] = [];
  for (let n = 1; n <= 3; n++) {
    sent.push((await sender.signals.sendSignal({ signalType: "restart", data: { n } })).signal?.id ?? "");
  }
  await eventually(() => received.length === 3, "the signals sent before the restart");

  await server.restart();
  // Sent before the reader is back: it must get them from its cursor, not live.
  for (let n = 4; n <= 6; n++) {
    sent.push((await sender.signals.sendSignal({ signalType: "restart", data: { n } })).signal?.id ?? "");
  }
  await consumed;
  assert.ok(opened >= 2, "the stream was reopened");
  assert.deepEqual(received.map((s) => s.id), sent);
  assert.deepEqual(received.map((s) => s.data?.["n"]), [1, 2, 3, 4, 5, 6]);
  assert.ok(isIncreasing(received.map((s) => s.id)));
  assert.equal(subscription.cursor, sent[5]);
});

test("calls that never ran are retried through a restart, safe reads too; the write is stored once", async () => {
  const added = await sender.tasks.addTask({ taskType: "retry-check" });
  const taskId = added.task?.taskId ?? "";
  await server.stop();
  // Nothing listens now: the connection is refused, so even a write without a request id is
  // retried (it never reached a server).
  const send = sender.signals.sendSignal({ signalType: "while-down" });
  const read = reader.tasks.getTask({ taskId });
  await server.respawn();
  assert.equal((await read).task?.taskId, taskId);
  const sent = await send;
  const stored = await reader.signals.receiveSignals({ signalTypes: ["while-down"] });
  assert.deepEqual(stored.signals.map((s) => s.id), [sent.signal?.id], "stored once");
});

test("an unsafe call in flight when the server crashes fails and is not repeated", async () => {
  const started = server.rpcLines("TaskService/ClaimTask", "ts-sender").length;
  const claim = sender.tasks
    .claimTask({ taskTypes: ["nothing-here"], wait: { seconds: 30n } }, { timeoutMs: 60_000 })
    .then(() => undefined, (error: unknown) => error);
  await new Promise((r) => setTimeout(r, 300)); // the long poll is waiting on the server now
  await server.kill();
  await server.respawn(); // back within the retry window: a retry would now succeed
  const error = await claim;
  assert.ok(error instanceof AgentcoordError, `the claim did not fail: ${String(error)}`);
  assert.ok([Code.Canceled, Code.Unavailable].includes(error.code), `code ${error.code}`);
  await eventually(() => server.logText().includes('"event": "serving"'), "the log");
  assert.equal(server.rpcLines("TaskService/ClaimTask", "ts-sender").length, started);
});

test("a reader that falls behind is cut off SUBSCRIBER_TOO_SLOW and resumes from its cursor", async () => {
  const total = 100;
  // Enough bytes to fill the HTTP/2 flow-control windows and the server's transport buffers,
  // so that the server's per-stream buffer (8 signals) overflows.
  const filler = "x".repeat(131_072);
  const controller = new AbortController();
  let opened = 0;
  let release!: () => void;
  const paused = new Promise<void>((r) => (release = r));
  const received: string[] = [];
  const subscription = reader.subscribe({
    signalTypes: ["flood"],
    signal: controller.signal,
    onOpen: () => {
      opened++;
    },
  });
  const consumed = (async () => {
    for await (const signal of subscription) {
      if (received.length === 0) await paused; // stop reading until everything was sent
      received.push(signal.id);
      if (received.length === total) controller.abort();
    }
  })();
  await eventually(() => opened === 1, "the stream to open");
  const sent: string[] = [];
  for (let n = 0; n < total; n++) {
    sent.push((await sender.signals.sendSignal({ signalType: "flood", data: { n, filler } })).signal?.id ?? "");
  }
  release();
  await consumed;
  assert.ok(opened >= 2, "the stream was reopened");
  await eventually(
    () => server.rpcLines("SignalService/Subscribe", "ts-reader").some((l) => l.code === "RESOURCE_EXHAUSTED"),
    "the server's log to show a stream ended RESOURCE_EXHAUSTED",
  );
  assert.deepEqual(received, sent);
});

test("a subscription resumes after the server is SIGKILLed and started again", async () => {
  const received: string[] = [];
  let opened = 0;
  const controller = new AbortController();
  const subscription = reader.subscribe({
    signalTypes: ["crash"],
    signal: controller.signal,
    maxRetries: 50,
    backoffMs: 100,
    maxBackoffMs: 500,
    onOpen: () => {
      opened++;
    },
  });
  const consumed = (async () => {
    for await (const signal of subscription) {
      received.push(signal.id);
      if (received.length === 2) controller.abort();
    }
  })();
  await eventually(() => opened === 1, "the stream to open");
  const sent = [(await sender.signals.sendSignal({ signalType: "crash" })).signal?.id ?? ""];
  await eventually(() => received.length === 1, "the signal sent before the crash");
  await server.kill();
  await server.respawn();
  sent.push((await sender.signals.sendSignal({ signalType: "crash" })).signal?.id ?? "");
  await consumed;
  assert.ok(opened >= 2, "the stream was reopened");
  assert.deepEqual(received, sent);
});
