import { AccessTier, AgentcoordError, createClient, toValue } from "../src/index.js";

const server = "127.0.0.1:50051";
const steward = createClient(server, process.env["AGENTCOORD_TOKEN"]); // the bootstrap STEWARD
const issue = async (agentId: string, tier: AccessTier) => (await steward.admin.issueToken({ agentId, tier })).token;
const agent = createClient(server, await issue("ts-agent", AccessTier.CONTRIBUTOR));
const observer = createClient(server, await issue("ts-observer", AccessTier.OBSERVER));

await agent.tasks.registerAgent({ capabilities: ["lint"] });
await agent.tasks.addTask({ taskType: "lint", payload: { file: "a.py" } }); // Struct = plain JSON
const worker = agent.worker(async (task) => ({ linted: task.payload?.["file"] ?? null }), { taskTypes: ["lint"] });
const done = await worker.runOnce(); // long-poll claim, lease renewed while it runs, complete
console.log(done?.outcome, done?.task.taskId, done?.task.result);

await agent.signals.sendSignal({ signalType: "hello", data: { from: "ts-agent" } });
for await (const signal of observer.subscribe({ signalTypes: ["hello"], earliest: true })) {
  console.log("signal", signal.id, signal.data);
  break; // leaving the loop cancels the stream
}
await observer.memory.stash({ key: "note", value: toValue("hi") }).catch((e: AgentcoordError) => {
  console.log("refused locally:", e.code, e.reasonName); // 7 TIER_TOO_LOW; nothing was sent
});
[steward, agent, observer].forEach((c) => c.close());
