// Drives Lago's own JavaScript client (lago-javascript-client, from npm)
// against meterd's Lago door: node lago_client.mjs BASE_URL NODE_MODULES.
// Prints one JSON object: each call's HTTP status and what the client
// returned, or the Lago error it surfaced.
const [base, modules] = process.argv.slice(2);
const { Client, getLagoError } = await import(`file://${modules}/lago-javascript-client/esm/mod.js`);
const client = Client("meterd-key", { baseUrl: `${base}/api/v1` });
const out = {};
async function call(name, fn) {
  try {
    const r = await fn();
    out[name] = { status: r.status, data: r.data };
  } catch (e) {
    out[name] = { status: e.status, error: await getLagoError(e) };
  }
}
const ts = Math.floor(Date.now() / 1000);
const event = (id, code, props) => ({ event: { transaction_id: id, external_customer_id: "lj1", code, timestamp: ts, properties: props } });
await call("charged", () => client.events.createEvent(event("js-1", "task", { region: "eu" })));
await call("resend", () => client.events.createEvent(event("js-1", "task", { region: "eu" })));
await call("bad", () => client.events.createEvent(event("js-2", "", {})));
await call("unaffordable", () => client.events.createEvent(event("js-3", "tokens", { value: 500 })));
await call("batch", () => client.events.createBatchEvents({ events: [event("js-4", "task", {}).event, event("js-5", "task", {}).event] }));
console.log(JSON.stringify(out));
