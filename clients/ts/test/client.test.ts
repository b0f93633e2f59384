import { randomBytes } from "node:crypto";
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { after, before, describe, test } from "node:test";

import { createClient as createConnectClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  AccessTier,
  AgentcoordError,
  Code,
  createClient,
  ErrorReason,
  MemoryService,
  SAFE_TO_RETRY,
  SERVICES,
  TaskService,
  fromValue,
  neverRan,
  requiredTier,
  toValue,
  type Client,
} from "../src/index.js";
import { TestServer, eventually, freePort } from "./support.js";

// Signals are kept 1 s here, so a cursor can be made stale quickly (CURSOR_TRIMMED).
let server: TestServer;
let contributor: Client;
let observer: Client;

before(async () => {
  server = await TestServer.start(["--ttl", "coordination=1"]);
  contributor = server.client(await server.issueToken("ts-contributor", AccessTier.CONTRIBUTOR));
  observer = server.client(await server.issueToken("ts-observer", AccessTier.OBSERVER));
});

after(async () => {
  contributor?.close();
  observer?.close();
  await server?.dispose();
});

async function rejection(promise: Promise<unknown>): Promise<AgentcoordError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof AgentcoordError, `expected AgentcoordError, got ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}

describe("contract descriptors", () => {
  test("required_tier is read from the generated method options", () => {
    assert.equal(requiredTier(MemoryService.method.stash), AccessTier.CONTRIBUTOR);
    assert.equal(requiredTier(MemoryService.method.retrieve), AccessTier.OBSERVER);
    assert.equal(requiredTier(TaskService.method.requeueDeadLetter), AccessTier.VALIDATOR);
    for (const service of SERVICES) {
      for (const method of service.methods) {
        assert.notEqual(requiredTier(method), AccessTier.UNSPECIFIED, `${service.name}/${method.name}`);
      }
    }
  });

  test("every retry-safe RPC names a method of the contract", () => {
    const known = new Set(SERVICES.flatMap((s) => s.methods.map((m) => `${s.name}/${m.name}`)));
    for (const name of SAFE_TO_RETRY) {
      assert.ok(known.has(name), `${name} is not in the contract`);
    }
    // The other direction: every read of the contract is listed (a new Get or List is safe).
    for (const name of known) {
      const method = name.slice(name.indexOf("/") + 1);
      if (/^(Get|List)/.test(method)) assert.ok(SAFE_TO_RETRY.has(name), `${name} is not retry-safe`);
    }
  });
});

describe("token and principal", () => {
  test("the bearer token is attached and the principal learnt once", async () => {
    const client = server.client(await server.issueToken("ts-once", AccessTier.CONTRIBUTOR));
    try {
      const principal = await client.principal();
      assert.equal(principal.agentId, "ts-once");
      assert.equal(principal.namespace, "default");
      assert.equal(principal.tier, AccessTier.CONTRIBUTOR);
      // Three writes that each need CONTRIBUTOR, at once: the tier check asks WhoAmI no more.
      await Promise.all(
        ["a", "b", "c"].map((key) => client.memory.stash({ key, value: toValue({ n: 1 }) })),
      );
      // The server logs a call just after answering it: wait for the lines.
      await eventually(() => server.rpcLines("MemoryService/Stash", "ts-once").length === 3, "3 Stash lines");
      assert.equal(server.rpcLines("AdminService/WhoAmI", "ts-once").length, 1);
    } finally {
      client.close();
    }
  });

  test("an unknown token is UNAUTHENTICATED with reason UNKNOWN_TOKEN", async () => {
    const client = server.client("not-a-real-token-0123456789");
    try {
      const error = await rejection(client.admin.whoAmI({}));
      assert.equal(error.code, Code.Unauthenticated);
      assert.equal(error.reason, ErrorReason.UNKNOWN_TOKEN);
      assert.equal(error.reasonName, "UNKNOWN_TOKEN");
    } finally {
      client.close();
    }
  });
});

describe("tier fail-fast", () => {
  test("a write above the caller's tier is refused locally and never reaches the server", async () => {
    const error = await rejection(
      observer.memory.stash({ key: "observer-note", value: toValue("hello") }),
    );
    assert.equal(error.code, Code.PermissionDenied);
    assert.equal(error.reason, ErrorReason.TIER_TOO_LOW);
    assert.deepEqual({ ...error.errorMetadata }, { required_tier: "CONTRIBUTOR", caller_tier: "OBSERVER" });
    assert.equal(error.requestId, undefined, "a local refusal has no server request id");
    // A later call of the observer reaches the log (the server logs a call just after
    // answering it), and by then a Stash sent before it would have too: there is none.
    await observer.tasks.listAgents({});
    await eventually(() => server.rpcLines("TaskService/ListAgents", "ts-observer").length === 1, "ListAgents line");
    assert.equal(server.rpcLines("AdminService/WhoAmI", "ts-observer").length, 1);
    assert.equal(server.rpcLines("MemoryService/Stash", "ts-observer").length, 0);
  });

  test("the same write sent without the client's check is refused by the server, and logged", async () => {
    // The contrast that makes the test above meaningful: a raw Connect client (no fail-fast).
    const token = await server.issueToken("ts-raw-observer", AccessTier.OBSERVER);
    const raw = createConnectClient(
      MemoryService,
      createGrpcTransport({
        baseUrl: `http://${server.address}`,
        interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${token}`), next(req))],
      }),
    );
    const error = await rejection(
      raw.stash({ key: "observer-note", value: toValue("hello") }).catch((e: unknown) => {
        throw AgentcoordError.fromError(e);
      }),
    );
    assert.equal(error.code, Code.PermissionDenied);
    assert.equal(error.reason, ErrorReason.TIER_TOO_LOW);
    assert.ok(error.requestId, "the server's refusal carries its request id");
    await eventually(() => server.rpcLines("MemoryService/Stash", "ts-raw-observer").length === 1, "its Stash line");
  });

  test("the operator is refused data calls locally and makes its own; a steward cannot", async () => {
    const operator = server.client(server.operatorToken);
    const steward = server.client(server.stewardToken);
    try {
      const refused = await rejection(operator.memory.stash({ key: "k", value: toValue(1) }));
      assert.equal(refused.reason, ErrorReason.OPERATOR_DATA_ACCESS);
      assert.equal(refused.requestId, undefined, "refused locally");
      const name = `team-${randomBytes(4).toString("hex")}`;
      const created = await operator.admin.createNamespace({ name });
      assert.equal(created.namespace?.name, name);
      const denied = await rejection(steward.admin.createNamespace({ name: `${name}-x` }));
      assert.equal(denied.reason, ErrorReason.TIER_TOO_LOW);
      assert.equal(denied.errorMetadata["required_tier"], "OPERATOR");
      assert.equal(denied.requestId, undefined, "refused locally");
    } finally {
      operator.close();
      steward.close();
    }
  });

  test("calls within the caller's tier go through", async () => {
    await contributor.memory.stash({ key: "shared", value: toValue({ list: [1, "two", null] }) });
    const response = await observer.memory.retrieve({ key: "shared", owner: "ts-contributor" });
    assert.deepEqual(fromValue(response.entry?.value), { list: [1, "two", null] });
  });
});

describe("errors from google.rpc.Status", () => {
  test("reason, field violations and request id are decoded", async () => {
    const error = await rejection(contributor.tasks.addTask({ taskType: "lint", priority: 11 }));
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, ErrorReason.INVALID_FIELD);
    assert.ok(error.fieldViolations.some((v) => v.field === "priority"), JSON.stringify(error.fieldViolations));
    assert.match(error.requestId ?? "", /^[0-9a-f]{32}$/);
  });

  test("NOT_FOUND carries its specific reason", async () => {
    const error = await rejection(observer.tasks.getTask({ taskId: "no-such-task" }));
    assert.equal(error.code, Code.NotFound);
    assert.equal(error.reason, ErrorReason.TASK_NOT_FOUND);
  });

  test("Struct fields travel as plain JSON objects", async () => {
    const payload = { file: "a.py", lines: [1, 2], nested: { ok: true, none: null } };
    const added = await contributor.tasks.addTask({ taskType: "json-check", payload });
    assert.deepEqual(added.task?.payload, payload);
    const read = await observer.tasks.getTask({ taskId: added.task?.taskId ?? "" });
    assert.deepEqual(read.task?.payload, payload);
  });
});

describe("subscribe errors", () => {
  test("a cursor older than the retention surfaces CURSOR_TRIMMED", async () => {
    const first = await contributor.signals.sendSignal({ signalType: "trim", data: { n: 1 } });
    await contributor.signals.sendSignal({ signalType: "trim", data: { n: 2 } });
    await new Promise((r) => setTimeout(r, 1500)); // past the 1 s retention
    await contributor.signals.sendSignal({ signalType: "trim", data: { n: 3 } }); // trims 1 and 2
    const subscription = observer.subscribe({ signalTypes: ["trim"], afterId: first.signal?.id ?? "" });
    const error = await rejection(
      (async () => {
        for await (const signal of subscription) {
          assert.fail(`got ${signal.id}`);
        }
      })(),
    );
    assert.equal(error.code, Code.OutOfRange);
    assert.equal(error.reason, ErrorReason.CURSOR_TRIMMED);
  });

  test("closing the client ends its subscriptions instead of resuming them", async () => {
    const client = server.client(await server.issueToken("ts-closing", AccessTier.OBSERVER));
    let opened = 0;
    const subscription = client.subscribe({ signalTypes: ["never"], onOpen: () => void opened++ });
    const consumed = (async () => {
      for await (const signal of subscription) assert.fail(`got ${signal.id}`);
    })();
    await eventually(() => opened === 1, "the stream to open");
    client.close();
    await consumed;
    assert.equal(opened, 1, "it did not resubscribe");
  });

  test("aborting the signal ends the iteration", async () => {
    const controller = new AbortController();
    const seen: string[] = [];
    const subscription = observer.subscribe({
      signalTypes: ["abort-test"],
      signal: controller.signal,
      onOpen: () => {
        void contributor.signals.sendSignal({ signalType: "abort-test" });
      },
    });
    for await (const signal of subscription) {
      seen.push(signal.id);
      controller.abort();
    }
    assert.equal(seen.length, 1);
  });
});

describe("connection failures", () => {
  test("a refused connection is UNAVAILABLE and surely never ran", async () => {
    const client = createClient(`127.0.0.1:${await freePort()}`, "t", { retry: { maxRetries: 0 } });
    try {
      const error = await rejection(client.admin.whoAmI({}));
      assert.equal(error.code, Code.Unavailable);
      assert.ok(neverRan(error), error.message);
    } finally {
      client.close();
    }
  });

  test("a connection reset under a call is UNAVAILABLE, and not classed as never ran", async () => {
    // A peer that accepts, reads what the client sends and resets the TCP connection (RST), as
    // the kernel of a server that crashed with the request unread does.
    const sockets = new Set<Socket>();
    const peer = createServer((socket) => {
      sockets.add(socket);
      socket.once("data", () => setImmediate(() => socket.resetAndDestroy()));
    });
    await new Promise<void>((done) => peer.listen(0, "127.0.0.1", done));
    const address = peer.address();
    const port = typeof address === "object" && address !== null ? address.port : 0;
    const client = createClient(`127.0.0.1:${port}`, "t", { retry: { maxRetries: 0 } });
    try {
      const error = await rejection(client.admin.whoAmI({}));
      assert.equal(error.code, Code.Unavailable, error.message);
      assert.ok(!neverRan(error), error.message);
    } finally {
      client.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((done) => peer.close(done));
    }
  });
});

// Last in this file: once this peer address is refused, every call from it is, for a while.
describe("retry delay", () => {
  test("TOO_MANY_FAILED_AUTHENTICATIONS carries RetryInfo's delay", async () => {
    const client = server.client("wrong-token-0123456789abcdef", { retry: { maxRetries: 0 } });
    try {
      let error: AgentcoordError | undefined;
      for (let attempt = 0; attempt < 50 && error?.reason !== ErrorReason.TOO_MANY_FAILED_AUTHENTICATIONS; attempt++) {
        error = await rejection(client.admin.whoAmI({}));
      }
      assert.equal(error?.code, Code.ResourceExhausted);
      assert.equal(error?.reason, ErrorReason.TOO_MANY_FAILED_AUTHENTICATIONS);
      assert.ok((error?.retryDelayMs ?? 0) > 0, `retryDelayMs ${String(error?.retryDelayMs)}`);
    } finally {
      client.close();
    }
  });
});
