import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { AccessTier, AgentcoordError, ErrorReason, type Client } from "../src/index.js";
import { TestServer } from "./support.js";

let server: TestServer;
let clients: Client[];
let steward: Client;

before(async () => {
  server = await TestServer.start();
  clients = await Promise.all(
    [0, 1, 2, 3, 4, 5].map(async (n) =>
      server.client(await server.issueToken(`ts-locker-${n}`, AccessTier.CONTRIBUTOR)),
    ),
  );
  steward = server.client(await server.issueToken("ts-steward", AccessTier.STEWARD));
});

after(async () => {
  for (const c of clients ?? []) c.close();
  steward?.close();
  await server?.dispose();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test("contenders hold the lock one at a time with growing fencing tokens", async () => {
  let inside = 0;
  let overlaps = 0;
  const tokens: bigint[] = [];
  await Promise.all(
    clients.map(async (client) => {
      const held = await client.lock("ts-shared", { ttlMs: 10_000 });
      inside++;
      if (inside > 1) overlaps++;
      tokens.push(held.fencingToken);
      await sleep(5);
      inside--;
      await held.release();
    }),
  );
  assert.equal(overlaps, 0, "two holders at once");
  assert.equal(tokens.length, clients.length);
  for (let i = 1; i < tokens.length; i++) {
    assert.ok(tokens[i]! > tokens[i - 1]!, `tokens do not grow: ${tokens.join(",")}`);
  }
});

test("a lost lock aborts its signal with LOCK_NOT_HELD and release reports the loss", async () => {
  const held = await clients[0]!.lock("ts-lost", { ttlMs: 1500 });
  await steward.locks.releaseLock({ lockId: "ts-lost", force: true });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the signal was not aborted")), 10_000);
    held.signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  assert.ok(held.signal.reason instanceof AgentcoordError);
  assert.equal((held.signal.reason as AgentcoordError).reason, ErrorReason.LOCK_NOT_HELD);
  await assert.rejects(held.release(), (e: unknown) => (e as AgentcoordError).reason === ErrorReason.LOCK_NOT_HELD);
});

test("waiting for a held lock ends with LOCK_HELD after waitMs, then it is free after release", async () => {
  const held = await clients[0]!.lock("ts-wait", { ttlMs: 30_000 });
  await assert.rejects(
    clients[1]!.lock("ts-wait", { waitMs: 500 }),
    (e: unknown) => (e as AgentcoordError).reason === ErrorReason.LOCK_HELD,
  );
  const renewed = await clients[0]!.locks.getLock({ lockId: "ts-wait" });
  assert.equal(renewed.lock?.holder, "ts-locker-0");
  await held.release();
  const next = await clients[1]!.lock("ts-wait", { waitMs: 500 });
  assert.ok(next.fencingToken > held.fencingToken);
  await next.release();
});
