// The official TypeScript SDK as an agent: node ts_client.mjs URL TOKEN
// Prints one JSON line per step, for tests/mcp/test_ts_client.py to read.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "ts-agent", version: "1.0.0" });
const say = (step, value) => console.log(JSON.stringify({ step, ...value }));

await client.connect(transport);
say("connected", { session: transport.sessionId ?? null });
const { tools } = await client.listTools();
say("tools", { names: tools.map((t) => t.name) });
const ok = await client.callTool({ name: "get_ticket", arguments: { id: 7 } });
say("call", { tool: "get_ticket", isError: ok.isError ?? false, text: ok.content[0].text });
try {
  await client.callTool({ name: "delete_ticket", arguments: { id: 7 } });
  say("call", { tool: "delete_ticket", ran: true });
} catch (err) {
  say("call", { tool: "delete_ticket", code: err.code, message: err.message });
}
await transport.terminateSession();
await client.close();
say("closed", {});
