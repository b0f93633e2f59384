import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";

import type { Interceptor } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";

import { AccessTier, AgentcoordError, Code, ErrorReason, neverRan, type Client, type Signal } from "../src/index.js";
import { TestServer, eventually, outcome, valueOf } from "./support.js";

// A small per-stream buffer, so a reader that stops reading is cut off (SUBSCRIBER_TOO_SLOW).
let server: TestServer;
let sender: Client;
let reader: Client;

/** The sender's failed attempts (each try of a call), as its retry layer saw them. */
const senderFailures: { method: string; neverRan: boolean }[] = [];

/** Runs inside the client's retry layer, so it sees every attempt of a call. */
const recordFailures: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (error) {
    senderFailures.push({ method: req.method.name, neverRan: neverRan(error) });
    throw error;
  }
};

before(async () => {
  server = await TestServer.start(["--signal-queue-size", "8"]);
  // Retries of safe calls must outlast a server restart here, however slow the machine
  // (100 retries, at most 500 ms apart: some 50 s).
  const retry = { maxRetries: 100, initialBackoffMs: 100, maxBackoffMs: 500 };
  sender = server.client(await server.issueToken("ts-sender", AccessTier.CONTRIBUTOR), {
    retry,
    interceptors: [recordFailures],
  });
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
  consumed.catch(() => undefined); // awaited below; a failure must not go unhandled meanwhile
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
  const since = senderFailures.length;
  const refused = (method: string): boolean =>
    senderFailures.slice(since).some((f) => f.method === method && f.neverRan);
  // The sender may not have noticed yet that its connection died with the server: a request
  // written to it fails CANCELLED and may have run, so only a safe call is repeated then. A
  // safe read finds out; once one of its attempts had its connection refused, every new call
  // opens a new connection, which is refused too while nothing listens.
  const probe = outcome(sender.tasks.getTask({ taskId }));
  await eventually(() => refused("GetTask"), "a read's connection to be refused");
  // Refused, so it never reached a server: even a write without a request id is retried.
  const send = outcome(sender.signals.sendSignal({ signalType: "while-down" }));
  const read = outcome(reader.tasks.getTask({ taskId }));
  await eventually(() => refused("SendSignal"), "the write's connection to be refused");
  await server.respawn();
  assert.equal(valueOf(await read).task?.taskId, taskId);
  assert.equal(valueOf(await probe).task?.taskId, taskId);
  const sent = valueOf(await send);
  const stored = await reader.signals.receiveSignals({ signalTypes: ["while-down"] });
  assert.deepEqual(stored.signals.map((s) => s.id), [sent.signal?.id], "stored once");
});

test("an unsafe call in flight when the server crashes fails and is not repeated", async () => {
  // A claim is a sign of life: the server marks a registered agent seen when it runs one.
  await sender.tasks.registerAgent({ capabilities: ["nothing-here"] });
  const lastSeen = async (): Promise<number> => {
    const agent = (await reader.tasks.listAgents({})).agents.find((a) => a.agentId === "ts-sender");
    return agent?.lastSeenTime === undefined ? 0 : timestampMs(agent.lastSeenTime);
  };
  const registered = await lastSeen();
  assert.ok(registered > 0, "the sender is registered");
  await eventually(() => Date.now() > registered, "a later millisecond than the registration");
  const claim = outcome(
    sender.tasks.claimTask({ taskTypes: ["nothing-here"], wait: { seconds: 30n } }, { timeoutMs: 60_000 }),
  );
  // The server ran the claim and is waiting for a task now: the call is in flight.
  await eventually(async () => (await lastSeen()) > registered, "the server to run the claim");
  // The waiting claim may look again before the crash (a lease or delay of another type in the
  // namespace ends); what must not happen is a claim after it. Same host, so the server's Redis
  // clock and Date.now() agree.
  const killedAt = Date.now();
  await server.kill();
  await server.respawn(); // back within the retry window: a retry would now run (and succeed)
  const result = await claim;
  assert.ok(!result.ok, "the claim did not fail");
  const error = result.error;
  assert.ok(error instanceof AgentcoordError, `not an AgentcoordError: ${String(error)}`);
  assert.ok([Code.Canceled, Code.Unavailable].includes(error.code), `code ${error.code}: ${error.message}`);
  assert.ok(!neverRan(error), "a call that ran is not classed as never ran");
  const seen = await lastSeen();
  assert.ok(seen <= killedAt, `no claim ran after the crash (last seen ${seen}, killed at ${killedAt})`);
  assert.deepEqual(
    senderFailures.filter((f) => f.method === "ClaimTask"),
    [{ method: "ClaimTask", neverRan: false }],
    "one attempt, not repeated",
  );
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
  consumed.catch(() => undefined); // awaited below; a failure must not go unhandled meanwhile
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
  consumed.catch(() => undefined); // awaited below; a failure must not go unhandled meanwhile
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

test("a subscription yields batched signals one by one, in order, without loss or duplicate", async () => {
  const send = async (n: number): Promise<string> =>
    (await sender.signals.sendSignal({ signalType: "batch", data: { n } })).signal?.id ?? "";
  const anchor = await send(0);
  const stored: string[] = [];
  for (let n = 1; n <= 30; n++) stored.push(await send(n)); // the catch-up sends these as one batch
  // The server does batch them (what the Subscription below has to unpack).
  const raw = new AbortController();
  let largest = 0;
  let carried = 0;
  for await (const response of reader.signals.subscribe(
    { signalTypes: ["batch"], afterId: anchor, acceptBatches: true },
    { signal: raw.signal, timeoutMs: 0 },
  )) {
    largest = Math.max(largest, response.signals.length);
    carried += response.signals.length;
    if (carried >= stored.length) break;
  }
  raw.abort();
  assert.ok(largest > 1, "the server sent no batch");

  const controller = new AbortController();
  const subscription = reader.subscribe({ signalTypes: ["batch"], afterId: anchor, signal: controller.signal });
  const received: Signal[] = [];
  let cursorAfterFirst = "";
  const sent = [...stored];
  for await (const signal of subscription) {
    received.push(signal);
    if (received.length === 1) {
      cursorAfterFirst = subscription.cursor;
      for (let n = 31; n <= 60; n++) sent.push(await send(n));
    }
    if (received.length === 60) break;
  }
  controller.abort();
  assert.equal(cursorAfterFirst, stored[0], "the cursor stops at the signal yielded, not the batch's end");
  assert.deepEqual(received.map((s) => s.id), sent);
  assert.deepEqual(received.map((s) => s.data?.["n"]), Array.from({ length: 60 }, (_, i) => i + 1));
});

test("a subscription beyond the namespace's live-subscriptions quota is refused QUOTA_EXCEEDED", async () => {
  const operator = server.client(server.operatorToken);
  const controller = new AbortController();
  let lead: Client | undefined;
  try {
    const namespace = `team-${randomBytes(4).toString("hex")}`;
    await operator.admin.createNamespace({ name: namespace });
    const { token } = await operator.admin.issueToken({ agentId: "lead", namespace, tier: AccessTier.STEWARD });
    await operator.admin.updateNamespaceQuota({ namespace, quota: { maxLiveSubscriptions: 1n } });
    lead = server.client(token);
    let opened = 0;
    const first = lead.subscribe({ signal: controller.signal, onOpen: () => void opened++ });
    const held = (async () => {
      for await (const _ of first); // nothing is sent to this namespace: it stays open
    })();
    held.catch(() => undefined); // ends with the abort below
    await eventually(() => opened === 1, "the first stream to open");

    const second = lead.subscribe();
    const refused = await outcome((async () => {
      for await (const _ of second);
    })());

    assert.equal(refused.ok, false);
    const error = refused.ok ? undefined : refused.error;
    assert.ok(error instanceof AgentcoordError, String(error));
    assert.equal(error.code, Code.ResourceExhausted);
    assert.equal(error.reason, ErrorReason.QUOTA_EXCEEDED);
    assert.deepEqual(
      [error.errorMetadata["quota"], error.errorMetadata["limit"], error.errorMetadata["used"]],
      ["live_subscriptions", "1", "1"],
    );
  } finally {
    controller.abort();
    lead?.close();
    operator.close();
  }
});
