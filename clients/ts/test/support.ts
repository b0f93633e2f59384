/**
 * Test support: a real `agentcoord serve` (the repository's .venv) on a free loopback port with
 * an embedded Redis in a temporary data directory, its JSON log captured to a file.
 *
 * Node 20's test runner runs each file in its own process and has no global setup hook, so
 * each test file starts one server in `before()` and stops it in `after()`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { AccessTier, createClient, type Client, type ClientOptions } from "../src/index.js";

const REPO = resolve(fileURLToPath(new URL("../../..", import.meta.url)));
const AGENTCOORD = process.env["AGENTCOORD_BIN"] ?? join(REPO, ".venv", "bin", "agentcoord");

/** A free loopback TCP port (bound once to port 0, then released). */
export async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => done(port));
    });
  });
}

/** One log line of the server (the canonical per-RPC line has `event: "rpc"`). */
export interface LogLine {
  event?: string;
  method?: string;
  agent?: string;
  code?: string;
  [key: string]: unknown;
}

export class TestServer {
  readonly address: string;
  readonly dataDir: string;
  readonly logPath: string;
  /** The bootstrap STEWARD token of namespace "default" (agent "steward"). */
  readonly stewardToken: string;
  /** The server-wide OPERATOR token (agent "operator"). */
  readonly operatorToken: string;
  private process: ChildProcess | undefined;
  private readonly extraArgs: string[];

  private constructor(port: number, extraArgs: string[]) {
    this.address = `127.0.0.1:${port}`;
    this.dataDir = mkdtempSync(join(tmpdir(), "agentcoord-ts-"));
    this.logPath = join(this.dataDir, "server.log");
    this.stewardToken = `steward-${randomBytes(16).toString("hex")}`;
    this.operatorToken = `operator-${randomBytes(16).toString("hex")}`;
    this.extraArgs = extraArgs;
  }

  /** Starts a server and waits until it answers WhoAmI. `extraArgs` go to `agentcoord serve`. */
  static async start(extraArgs: string[] = []): Promise<TestServer> {
    const server = new TestServer(await freePort(), extraArgs);
    await server.spawn();
    return server;
  }

  private async spawn(): Promise<void> {
    const log = openSync(this.logPath, "a");
    try {
      this.process = spawn(
        AGENTCOORD,
        [
          "serve",
          "--listen", this.address,
          "--data-dir", join(this.dataDir, "redis"),
          "--log-format", "json",
          "--bootstrap-token", this.stewardToken,
          "--bootstrap-operator-token", this.operatorToken,
          "--shutdown-grace", "1",
          ...this.extraArgs,
        ],
        { stdio: ["ignore", log, log] },
      );
    } finally {
      closeSync(log);
    }
    const exited = new Promise<never>((_, fail) =>
      this.process?.once("exit", (code) =>
        fail(new Error(`agentcoord serve exited with ${code}:\n${this.logText().slice(-3000)}`)),
      ),
    );
    exited.catch(() => undefined);
    const probe = this.client(this.stewardToken, { timeoutMs: 1000, retry: { maxRetries: 0 } });
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          const call = probe.admin.whoAmI({});
          call.catch(() => undefined); // when `exited` wins the race
          await Promise.race([call, exited]);
          return;
        } catch (error) {
          if (attempt > 300 || this.process?.exitCode !== null) {
            throw error;
          }
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    } finally {
      probe.close();
    }
  }

  /** A client of this server. */
  client(token: string, options: ClientOptions = {}): Client {
    return createClient(this.address, token, options);
  }

  /** Issues a token of the default namespace with the steward token (Admin IssueToken). */
  async issueToken(agentId: string, tier: AccessTier): Promise<string> {
    const steward = this.client(this.stewardToken);
    try {
      return (await steward.admin.issueToken({ agentId, tier })).token;
    } finally {
      steward.close();
    }
  }

  /** SIGTERM, and waits for the process (and its embedded Redis shutdown) to end. */
  async stop(): Promise<void> {
    const child = this.process;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) {
      return;
    }
    const ended = new Promise<void>((done) => child.once("exit", () => done()));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    await ended;
    clearTimeout(timer);
  }

  /** SIGKILLs the server (a crash: no drain, no clean Redis shutdown) and waits for it to end. */
  async kill(): Promise<void> {
    const child = this.process;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) {
      return;
    }
    const ended = new Promise<void>((done) => child.once("exit", () => done()));
    child.kill("SIGKILL");
    await ended;
    await this.stopOrphanedRedis();
  }

  /**
   * Shuts down the killed server's embedded Redis (SHUTDOWN: it writes its data first, as a
   * clean stop would), which a SIGKILLed server leaves behind, and waits until its socket is
   * gone: the next server on this data directory refuses to start beside it.
   */
  private async stopOrphanedRedis(): Promise<void> {
    const socketPath = join(this.dataDir, "redis", "redis.sock");
    const answers = (command: string): Promise<boolean> =>
      new Promise((done) => {
        const socket = connect(socketPath);
        socket.once("connect", () => socket.end(`${command}\r\n`));
        socket.once("data", () => socket.destroy());
        socket.once("error", () => done(false));
        socket.once("close", (hadError) => done(!hadError));
      });
    await answers("SHUTDOWN");
    for (let attempt = 0; attempt < 200 && (await answers("PING")); attempt++) {
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Starts the server again on the same port and data directory (after stop or kill). */
  async respawn(): Promise<void> {
    await this.spawn();
  }

  /** Stops the server and starts it again on the same port and data directory. */
  async restart(): Promise<void> {
    await this.stop();
    await this.spawn();
  }

  /** Stops the server and removes its data directory. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  logText(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  /** The server's JSON log lines so far (non-JSON lines skipped). */
  logLines(): LogLine[] {
    const lines: LogLine[] = [];
    for (const text of this.logText().split("\n")) {
      if (!text.startsWith("{")) continue;
      try {
        lines.push(JSON.parse(text) as LogLine);
      } catch {
        // a line being written right now
      }
    }
    return lines;
  }

  /** The canonical RPC log lines of `method` (e.g. "MemoryService/Stash") made by `agent`. */
  rpcLines(method: string, agent: string): LogLine[] {
    return this.logLines().filter(
      (l) => l.event === "rpc" && l.method === `/agentcoord.v1.${method}` && l.agent === agent,
    );
  }
}

/**
 * Polls `condition` (which may be async) every 50 ms until it holds; throws after `attempts`
 * tries (default 600: 30 s and more).
 */
export async function eventually(
  condition: () => boolean | Promise<boolean>,
  what: string,
  attempts = 600,
): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    if (await condition()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** How a promise ended: its value, or what it threw. */
export type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

/**
 * `promise`'s outcome, observed from now on: a promise that is awaited only later (while the
 * test awaits something else) must not reject unobserved (an unhandled rejection fails the run).
 */
export function outcome<T>(promise: Promise<T>): Promise<Outcome<T>> {
  return promise.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

/** The value of an {@link Outcome}, or its error thrown. */
export function valueOf<T>(result: Outcome<T>): T {
  if (!result.ok) {
    throw result.error;
  }
  return result.value;
}
