// Connects the official @openclaw/gateway-client to a running Switchboard,
// with a token, first without and then with a device identity, and calls the
// first-wave read methods. Prints one JSON line per check; exits non-zero on
// any failure. Usage: node interop.mjs ws://127.0.0.1:PORT TOKEN
import crypto from "node:crypto";
import { GatewayClient } from "@openclaw/gateway-client";

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node interop.mjs URL TOKEN");
  process.exit(2);
}

function makeIdentity() {
  const { publicKey, privateKey } = crypto.generateKeyPairSync("ed25519");
  const publicKeyPem = publicKey.export({ type: "spki", format: "pem" }).toString();
  const privateKeyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const raw = rawPublicKey(publicKeyPem);
  const deviceId = crypto.createHash("sha256").update(raw).digest("hex");
  return { deviceId, publicKeyPem, privateKeyPem };
}

function rawPublicKey(pem) {
  const der = crypto.createPublicKey(pem).export({ type: "spki", format: "der" });
  return der.subarray(der.length - 32);
}

const hostDeps = {
  signDevicePayload: (privateKeyPem, payload) =>
    crypto.sign(null, Buffer.from(payload, "utf8"), crypto.createPrivateKey(privateKeyPem)).toString("base64url"),
  publicKeyRawBase64UrlFromPem: (pem) => rawPublicKey(pem).toString("base64url"),
};

async function session(label, deviceIdentity) {
  const events = [];
  let resolveHello, rejectHello;
  const hello = new Promise((res, rej) => { resolveHello = res; rejectHello = rej; });
  const client = new GatewayClient({
    url,
    token,
    clientName: "cli",
    mode: "cli",
    scopes: ["operator.read"],
    deviceIdentity: deviceIdentity ?? null,
    hostDeps,
    onHelloOk: (h) => resolveHello(h),
    onConnectError: (e) => rejectHello(e),
    onClose: (code, reason) => rejectHello(new Error(`closed ${code} ${reason}`)),
    onEvent: (e) => events.push(e.event),
  });
  client.start();
  const timer = setTimeout(() => rejectHello(new Error("no hello-ok within 10s")), 10000);
  const h = await hello;
  clearTimeout(timer);
  const out = { label, protocol: h.protocol, role: h.auth?.role, scopes: h.auth?.scopes, methods: h.features?.methods };
  for (const m of ["health", "status", "system-presence", "channels.status"]) {
    const r = await client.request(m, {});
    out[m] = m === "system-presence" ? r.length : Object.keys(r).sort();
  }
  if (deviceIdentity) {
    const presence = await client.request("system-presence", {});
    out.deviceSeen = presence.some((p) => p.deviceId === deviceIdentity.deviceId);
  }
  out.events = events;
  client.stop();
  return out;
}

try {
  console.log(JSON.stringify(await session("token", null)));
  console.log(JSON.stringify(await session("token+device", makeIdentity())));
  process.exit(0);
} catch (e) {
  console.error("interop failure:", e?.stack ?? e, e?.details ? JSON.stringify(e.details) : "");
  process.exit(1);
}
