import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  AccessTier,
  AgentcoordError,
  Code,
  ErrorReason,
  toValue,
  type Client,
  type EntryEvent,
} from "../src/index.js";
import { EntryEventType } from "../src/gen/agentcoord/v1/memory_pb.js";
import { TestServer } from "./support.js";

let server: TestServer;
let writer: Client;
let reader: Client;

before(async () => {
  server = await TestServer.start();
  const retry = { maxRetries: 100, initialBackoffMs: 100, maxBackoffMs: 500 };
  writer = server.client(await server.issueToken("ts-watch-writer", AccessTier.CONTRIBUTOR), { retry });
  reader = server.client(await server.issueToken("ts-watch-reader", AccessTier.OBSERVER), { retry });
});

after(async () => {
  writer?.close();
  reader?.close();
  await server?.dispose();
});

test("a conditional stash creates only once and refuses a stale revision; touch keeps the revision", async () => {
  const created = await writer.memory.stash({ key: "plan", value: toValue(1), expectedRevision: 0n });
  await assert.rejects(
    writer.memory.stash({ key: "plan", value: toValue(2), expectedRevision: 0n }),
    (e: unknown) => e instanceof AgentcoordError && e.reason === ErrorReason.ENTRY_EXISTS,
  );
  const rev = created.entry?.revision ?? 0n;
  const updated = await writer.memory.stash({ key: "plan", value: toValue(2), expectedRevision: rev });
  await assert.rejects(
    writer.memory.stash({ key: "plan", value: toValue(3), expectedRevision: rev }),
    (e: unknown) =>
      e instanceof AgentcoordError && e.code === Code.Aborted && e.reason === ErrorReason.ENTRY_REVISION_MISMATCH,
  );
  const touched = await writer.memory.touchEntry({ key: "plan" });
  assert.equal(touched.entry?.revision, updated.entry?.revision);
});

test("watchEntries catches up, goes live and resumes across a server restart with no gap", async () => {
  const anchor = await writer.memory.stash({ key: "anchor", value: toValue(0) });
  await writer.memory.stash({ key: "k", value: toValue(1) });
  const controller = new AbortController();
  const events: EntryEvent[] = [];
  let opened!: () => void;
  const open = new Promise<void>((resolve) => (opened = resolve));
  const watcher = reader.watchEntries({
    owner: "ts-watch-writer",
    keyPrefix: "k",
    includeValues: true,
    afterRevision: anchor.entry?.revision,
    signal: controller.signal,
    onOpen: () => opened(),
  });
  const reading = (async () => {
    for await (const event of watcher) {
      events.push(event);
      if (events.length === 3) controller.abort();
    }
  })();
  await open;
  await writer.memory.stash({ key: "k", value: toValue(2) });
  await server.restart();
  const last = await writer.memory.stash({ key: "k", value: toValue(3) });
  await reading;

  assert.deepEqual(
    events.map((e) => e.entry?.value?.kind.value),
    [1, 2, 3],
  );
  assert.ok(events.every((e) => e.type === EntryEventType.PUT));
  assert.equal(events[2]?.revision, last.entry?.revision);
  assert.equal(watcher.revision, last.entry?.revision);
});
