// Checks every frame Switchboard sends against the official schema
// (protocol.schema.json of @openclaw/gateway-protocol, with ajv): each frame
// as a GatewayFrame, hello-ok as HelloOk, each error's details where the
// schema defines its code, and the payloads the schema defines for what
// Switchboard implements (health as hello-ok's snapshot.health, its result
// and its event; channels.status, system-presence, tick, presence,
// shutdown). Connects once per property of ConnectParams (each must be
// accepted), then drives two raw WebSocket connections (Node's own
// WebSocket): an admin that calls every method and a read-only one that is
// refused a write and each method the schema puts above operator.read.
// Prints `READY` once it waits for the shutdown event; the caller then
// stops the daemon. Exits non-zero, listing each mismatch, on any.
// Usage: node conformance.mjs ws://127.0.0.1:PORT TOKEN
import fs from "node:fs";
import Ajv from "ajv";

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node conformance.mjs URL TOKEN");
  process.exit(2);
}

const schema = JSON.parse(
  fs.readFileSync(
    new URL("./node_modules/@openclaw/gateway-protocol/protocol.schema.json", import.meta.url),
  ),
);
const ajv = new Ajv({ strict: false, allErrors: true });
ajv.addSchema(schema);
// A definition's name, or a path below `definitions` (`Snapshot/properties/health`).
const validator = (name) => {
  const v = ajv.getSchema(`${schema.$id}#/definitions/${name}`);
  if (!v) throw new Error(`the schema has no definition ${name}`);
  return v;
};
const frameSchema = ajv.getSchema(schema.$id);
const problems = [];
const checked = {};
function check(what, name, value) {
  const v = name === "GatewayFrame" ? frameSchema : validator(name);
  checked[name] = (checked[name] ?? 0) + 1;
  if (!v(value)) {
    problems.push(`${what} is not a valid ${name}: ${ajv.errorsText(v.errors)}\n  ${JSON.stringify(value).slice(0, 600)}`);
  }
}

// One connection: every frame is checked as it arrives; requests wait for
// their answer, events for their name.
function open(label, scopes) {
  const ws = new WebSocket(url);
  const waiting = new Map();
  const eventWaiters = [];
  const events = [];
  let n = 0;
  ws.onmessage = (m) => {
    let f;
    try {
      f = JSON.parse(m.data);
    } catch {
      problems.push(`${label}: a frame that is not JSON: ${String(m.data).slice(0, 200)}`);
      return;
    }
    check(`${label} frame`, "GatewayFrame", f);
    if (f.type === "res" && waiting.has(f.id)) {
      waiting.get(f.id)(f);
      waiting.delete(f.id);
    } else if (f.type === "event") {
      events.push(f);
      for (const w of eventWaiters.splice(0)) w();
    }
  };
  const closed = new Promise((res) => (ws.onclose = (e) => res(e)));
  const request = (method, params) =>
    new Promise((res, rej) => {
      const id = `${label}-${++n}`;
      waiting.set(id, res);
      ws.send(JSON.stringify({ type: "req", id, method, params }));
      setTimeout(() => rej(new Error(`${label}: no answer to ${method} within 10 s`)), 10000);
    });
  const event = async (name, since = 0) => {
    const deadline = Date.now() + 10000;
    for (;;) {
      const e = events.slice(since).find((x) => x.event === name);
      if (e) return e;
      if (Date.now() > deadline) throw new Error(`${label}: no ${name} event within 10 s`);
      await new Promise((res) => {
        eventWaiters.push(res);
        setTimeout(res, 200);
      });
    }
  };
  const connectParams = () => ({
    minProtocol: 4,
    maxProtocol: 4,
    client: { id: "cli", version: "1.0.0", platform: "linux", mode: "cli", instanceId: `conformance-${label}` },
    role: "operator",
    scopes,
    auth: { token },
  });
  // `edit` changes the params before they go; the answer is returned.
  const tryConnect = async (edit = (p) => p) => {
    await event("connect.challenge");
    const hello = await request("connect", edit(connectParams()));
    if (hello.ok) check(`${label} hello-ok`, "HelloOk", hello.payload);
    return hello;
  };
  const connect = async () => {
    const hello = await tryConnect();
    if (!hello.ok) throw new Error(`${label}: connect refused: ${JSON.stringify(hello.error)}`);
    return hello.payload;
  };
  return { ws, request, event, events, connect, tryConnect, closed };
}

// An answer: checked as the schema's `name` when it is ok, and its error's
// details where the schema defines their code.
function answered(what, res, name) {
  if (!res.ok) {
    const code = res.error?.details?.code;
    if (code === "MISSING_SCOPE") check(`${what} error details`, "MissingScopeErrorDetails", res.error.details);
    return res;
  }
  if (name) check(`${what} result`, name, res.payload);
  return res;
}

// A value the schema `s` allows: a const, the first of an enum or a
// union, each required property of an object; strings of the length and
// pattern it asks.
function sample(s) {
  if (s.$ref) return sample(ajv.getSchema(`${schema.$id}${s.$ref}`).schema);
  if ("const" in s) return s.const;
  if (s.enum) return s.enum[0];
  if (s.anyOf) return sample(s.anyOf[0]);
  switch (s.type) {
    case "boolean":
      return true;
    case "integer":
    case "number":
      return Math.max(1, s.minimum ?? 1);
    case "array":
      return [sample(s.items ?? {})];
    case "object": {
      const o = {};
      for (const k of s.required ?? []) o[k] = sample(s.properties[k]);
      return o;
    }
    default:
      if (s.pattern === "^[a-f0-9]{64}$") return "a".repeat(64);
      return "x".repeat(Math.max(8, s.minLength ?? 1));
  }
}

// Every property of ConnectParams, of its client and of its auth, each in
// turn on a connection of its own: the schema allows the value, and so
// must the daemon (a newer client sends them all). `device` is left out:
// a made-up proof is refused, as it should be (interop.mjs signs real ones).
async function everyConnectField() {
  const def = validator("ConnectParams").schema;
  const cases = [];
  for (const [k, s] of Object.entries(def.properties)) {
    if (["minProtocol", "maxProtocol", "client", "auth", "device"].includes(k)) continue;
    cases.push([k, (p) => ({ ...p, [k]: k === "role" ? "operator" : sample(s) })]);
  }
  for (const [k, s] of Object.entries(def.properties.client.properties)) {
    cases.push([`client.${k}`, (p) => ({ ...p, client: { ...p.client, [k]: sample(s) } })]);
  }
  for (const [k, s] of Object.entries(def.properties.auth.properties)) {
    if (k === "token") continue;
    cases.push([`auth.${k}`, (p) => ({ ...p, auth: { ...p.auth, [k]: sample(s) } })]);
  }
  for (const [name, edit] of cases) {
    const c = open(`field-${name}`, ["operator.read"]);
    const sent = [];
    const hello = await c.tryConnect((p) => {
      const q = edit(p);
      sent.push(q);
      return q;
    });
    check(`connect params with ${name}`, "ConnectParams", sent[0]);
    if (!hello.ok) problems.push(`connect with ${name} = ${JSON.stringify(sent[0])} was refused: ${JSON.stringify(hello.error)}`);
    c.ws.close();
    await c.closed;
  }
  return cases.length;
}

async function main() {
  const fields = await everyConnectField();
  if (fields < 25) problems.push(`only ${fields} connect fields were tried`);
  const admin = open("admin", ["operator.admin"]);
  const hello = await admin.connect();
  const r = (method, params, name) => admin.request(method, params).then((res) => answered(method, res, name));

  // What `health` answers is hello-ok's snapshot.health.
  const HEALTH = "Snapshot/properties/health";
  await r("health", {}, HEALTH);
  await r("status", {});
  const presence = await r("system-presence", {});
  for (const [i, p] of (presence.payload ?? []).entries()) check(`system-presence[${i}]`, "PresenceEntry", p);
  await r("channels.status", {}, "ChannelsStatusResult");
  await r("channels.status", { channel: "echo" }, "ChannelsStatusResult");
  await r("plugins.list", {});
  await r("config.get", {});
  await r("messages.history", { limit: 10 });
  const sent = await r("send", { channel: "echo", to: "conf-chat", message: "conformance", idempotencyKey: "conf-1" });
  if (!sent.ok) problems.push(`send failed: ${JSON.stringify(sent.error)}`);
  await admin.event("message");
  await r("message.action", {
    channel: "echo",
    action: "send",
    params: { to: "conf-chat", message: "conformance 2" },
    idempotencyKey: "conf-2",
  });
  const stopped = await r("channels.stop", { channel: "echo", accountId: "default" });
  if (!stopped.ok) problems.push(`channels.stop failed: ${JSON.stringify(stopped.error)}`);
  await r("channels.start", { channel: "echo", accountId: "default" });
  const health = await admin.event("health");
  check("health event payload", HEALTH, health.payload);
  // Refusals: an unknown method, bad params, a missing scope.
  for (const [m, p] of [["no.such.method", {}], ["send", { to: "x" }], ["messages.history", { limit: "ten" }]]) {
    const res = await r(m, p);
    if (res.ok) problems.push(`${m} ${JSON.stringify(p)} was not refused`);
  }
  const reader = open("reader", ["operator.read"]);
  const seen = admin.events.length;
  await reader.connect();
  const refused = await reader.request("send", { channel: "echo", to: "x", message: "m", idempotencyKey: "conf-3" });
  answered("send by a reader", refused);
  if (refused.ok || refused.error?.details?.code !== "MISSING_SCOPE") {
    problems.push(`a reader's send was not refused with MISSING_SCOPE: ${JSON.stringify(refused)}`);
  }
  // Each method hello-ok lists that the schema knows needs the scope the
  // schema gives it: a reader may call the read ones and is refused the
  // others, naming that scope. protocol.md asks `operator.admin` for
  // config.get (the configuration, even redacted), where OpenClaw asks read.
  const deviations = { "config.get": "operator.admin" };
  for (const m of hello.features.methods) {
    const want = deviations[m] ?? schema.methods[m]?.scope;
    if (!want || m === "send") continue;
    const res = answered(`${m} by a reader`, await reader.request(m, {}));
    const missing = res.error?.details?.code === "MISSING_SCOPE";
    if (want === "operator.read" && missing) {
      problems.push(`${m} needs operator.read in the schema, but a reader was refused: ${JSON.stringify(res.error)}`);
    }
    if (want !== "operator.read" && (!missing || res.error.details.missingScope !== want)) {
      problems.push(`${m} needs ${want}, but a reader got: ${JSON.stringify(res)}`);
    }
  }
  // The reader's arrival reaches the admin as a presence event.
  const p = await admin.event("presence", seen);
  for (const [i, e] of (p.payload?.presence ?? []).entries()) check(`presence event entry ${i}`, "PresenceEntry", e);
  const tick = await admin.event("tick");
  check("tick payload", "TickEvent", tick.payload);

  console.log("READY");
  const since = admin.events.length;
  const shutdown = await admin.event("shutdown", since);
  check("shutdown payload", "ShutdownEvent", shutdown.payload);
  await admin.closed;

  for (const need of ["GatewayFrame", "HelloOk", HEALTH, "ChannelsStatusResult", "PresenceEntry", "TickEvent", "ShutdownEvent", "MissingScopeErrorDetails"]) {
    if (!checked[need]) problems.push(`nothing was checked as ${need}`);
  }
  console.log(JSON.stringify({ checked }));
  if (problems.length) {
    console.error(problems.join("\n"));
    process.exit(1);
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(String(e?.stack ?? e));
    if (problems.length) console.error(problems.join("\n"));
    process.exit(1);
  },
);
