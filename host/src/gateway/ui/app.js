// Switchboard control page: an operator client of the gateway's own
// WebSocket protocol (OpenClaw Gateway protocol v4), served by the daemon.
// No dependencies, no build step. Everything from the network is shown with
// textContent, never parsed as HTML.

const TOKEN_KEY = "switchboard.token";
const KIND_KEY = "switchboard.authKind";
const INSTANCE_KEY = "switchboard.instance";
const SCOPES = ["operator.read", "operator.write", "operator.admin"];
const PAGE = 50;

const $ = (id) => document.getElementById(id);

const state = {
  ws: null,
  nextId: 1,
  pending: new Map(),
  backoffMs: 0,
  retryTimer: null,
  watchdog: null,
  tickMs: 30000,
  lastFrameAt: 0,
  wanted: false,
  scopes: [],
  startedAt: 0,
  channels: null,
  // Messages: shown by seq; `cursor` is the seq up to which the stream is
  // known to be complete (advanced by history pages, and by live events only
  // once the catch-up after a (re)connect has finished and while no event
  // was missed: the gateway numbers each connection's events).
  shown: new Map(),
  cursor: 0,
  synced: false,
  liveMax: 0,
  eventSeq: 0,
  firstLoad: true,
  olderDone: false,
  loadingOlder: false,
};

// ---------------------------------------------------------------- helpers

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function has(scope) {
  if (state.scopes.includes("operator.admin")) return true;
  if (scope === "operator.read" && state.scopes.includes("operator.write")) return true;
  return state.scopes.includes(scope);
}

function fmtTime(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

function fmtDuration(ms) {
  let s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return (d ? `${d}d ` : "") + (d || h ? `${h}h ` : "") + `${m}m ${s}s`;
}

function errText(e) {
  if (!e) return "unknown error";
  if (typeof e === "string") return e;
  return e.message || JSON.stringify(e);
}

function newKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function instanceId() {
  let id = sessionStorage.getItem(INSTANCE_KEY);
  if (!id) { id = newKey(); sessionStorage.setItem(INSTANCE_KEY, id); }
  return id;
}

function setConn(s, detail) {
  const c = $("conn-state");
  c.dataset.state = s;
  c.textContent = detail ? `${s}: ${detail}` : s;
}

// ------------------------------------------------------------- connection

function showLogin(error) {
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = error || "";
  $("login-token").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
}

function start() {
  state.wanted = true;
  clearTimeout(state.retryTimer);
  openSocket();
}

function stop() {
  state.wanted = false;
  clearTimeout(state.retryTimer);
  clearInterval(state.watchdog);
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000, "logged out");
  failPending("disconnected");
}

function failPending(why) {
  for (const p of state.pending.values()) p.reject({ message: why });
  state.pending.clear();
}

function openSocket() {
  const token = sessionStorage.getItem(TOKEN_KEY) ?? "";
  setConn(state.backoffMs ? "reconnecting" : "connecting");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (e) {
    setConn("disconnected", errText(e));
    return retry();
  }
  state.ws = ws;
  state.synced = false;
  state.liveMax = 0;
  state.eventSeq = 0;
  let refused = null;
  ws.onmessage = (ev) => {
    if (state.ws !== ws) return;
    state.lastFrameAt = Date.now();
    let f;
    try { f = JSON.parse(ev.data); } catch { return; }
    if (f.type === "event" && f.event === "connect.challenge") {
      handshake(ws, token, sessionStorage.getItem(KIND_KEY) === "password").catch((e) => {
        refused = e;
        ws.close();
      });
    } else if (f.type === "event") {
      onEvent(f);
    } else if (f.type === "res") {
      const p = state.pending.get(f.id);
      if (!p) return;
      state.pending.delete(f.id);
      if (f.ok) p.resolve(f.payload);
      else p.reject(f.error || { message: "request failed" });
    }
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.ws = null;
    clearInterval(state.watchdog);
    failPending("connection closed");
    if (!state.wanted) return;
    const authFailed = refused && (/^unauthorized/i.test(refused.message || "") ||
      /^AUTH_/.test(refused.details?.code || ""));
    const what = sessionStorage.getItem(KIND_KEY) === "password" ? "password" : "token";
    if (authFailed) {
      state.wanted = false;
      sessionStorage.removeItem(TOKEN_KEY);
      setConn("refused");
      showLogin(`The gateway refused this ${what}: ${errText(refused)}. Check the ${what} in [gateway.auth] and try again.`);
      return;
    }
    if (ev.code === 1008 && /revoked/i.test(ev.reason)) {
      state.wanted = false;
      sessionStorage.removeItem(TOKEN_KEY);
      setConn("refused");
      showLogin(`The gateway closed the connection: ${ev.reason}. Log in with a current token.`);
      return;
    }
    const why = refused ? errText(refused) : (ev.reason || `closed (${ev.code})`);
    setConn("disconnected", why);
    retry(refused?.retryAfterMs);
  };
}

function retry(atLeastMs) {
  if (!state.wanted) return;
  state.backoffMs = Math.min(15000, state.backoffMs ? state.backoffMs * 2 : 500);
  const jitter = 0.8 + Math.random() * 0.4;
  const delay = Math.max(atLeastMs || 0, Math.round(state.backoffMs * jitter));
  setConn("reconnecting", `in ${(delay / 1000).toFixed(1)} s`);
  state.retryTimer = setTimeout(openSocket, delay);
}

function rawCall(ws, id, method, params) {
  return new Promise((resolve, reject) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return reject({ message: "not connected" });
    state.pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ type: "req", id, method, params }));
    setTimeout(() => {
      if (state.pending.delete(id)) reject({ message: `${method}: no answer within 30 s` });
    }, 30000);
  });
}

function call(method, params = {}) {
  return rawCall(state.ws, `ui-${state.nextId++}`, method, params);
}

async function handshake(ws, token, isPassword) {
  const params = {
    minProtocol: 4,
    maxProtocol: 4,
    client: {
      id: "openclaw-control-ui",
      displayName: "Switchboard control page",
      version: "1",
      platform: "web",
      mode: "ui",
      instanceId: instanceId(),
    },
    caps: [],
    role: "operator",
    scopes: SCOPES,
    userAgent: navigator.userAgent.slice(0, 256),
    locale: navigator.language,
  };
  if (token) params.auth = isPassword ? { password: token } : { token };
  const hello = await rawCall(ws, `ui-${state.nextId++}`, "connect", params);
  onHello(hello);
}

function onHello(hello) {
  state.backoffMs = 0;
  state.scopes = hello.auth?.scopes || [];
  state.tickMs = hello.policy?.tickIntervalMs || 30000;
  state.startedAt = Date.now() - (hello.snapshot?.uptimeMs || 0);
  state.lastFrameAt = Date.now();
  // A connection that stays silent past two ticks is dead (a laptop that
  // slept, a half-open socket): drop it and reconnect.
  clearInterval(state.watchdog);
  state.watchdog = setInterval(() => {
    if (state.ws && Date.now() - state.lastFrameAt > state.tickMs * 2.5) state.ws.close(4000, "tick timeout");
  }, 1000);
  setConn("connected");
  showApp();
  $("status-version").textContent = hello.server?.version || "–";
  $("status-scopes").textContent = state.scopes.join(", ") || "none";
  showHealth(hello.snapshot?.health);
  refreshStatus();
  refreshChannels();
  refreshPlugins();
  catchUp();
}

// ------------------------------------------------------------------ events

let channelsTimer = null;
let statusTimer = null;

function onEvent(f) {
  if (typeof f.seq === "number") {
    const missed = state.eventSeq && f.seq !== state.eventSeq + 1;
    state.eventSeq = f.seq;
    if (missed && state.synced) {
      // Events were dropped (a slow page): fetch what the log has.
      state.synced = false;
      catchUp();
    }
  }
  switch (f.event) {
    case "message":
      addMessages([f.payload], { live: true });
      break;
    case "health":
      showHealth(f.payload);
      clearTimeout(channelsTimer);
      channelsTimer = setTimeout(refreshChannels, 150);
      break;
    case "plugins":
      refreshPlugins();
      break;
    case "presence":
    case "tick":
      clearTimeout(statusTimer);
      statusTimer = setTimeout(refreshStatus, 200);
      break;
    case "shutdown":
      setConn("reconnecting", "the gateway is restarting");
      break;
  }
}

// ------------------------------------------------------------------ status

function showHealth(h) {
  if (!h) return;
  const d = $("status-health");
  const failing = [];
  for (const [ch, c] of Object.entries(h.channels || {})) {
    for (const [acct, a] of Object.entries(c.accounts || {})) {
      if (a.lastError) failing.push(`${ch}/${acct}: ${a.lastError}`);
    }
  }
  const pluginErrors = (h.plugins?.errors || []).length;
  d.textContent = h.ok === false || failing.length || pluginErrors
    ? `degraded${failing.length ? ` (${failing.length} account error${failing.length > 1 ? "s" : ""})` : ""}${pluginErrors ? ` (${pluginErrors} plugin error${pluginErrors > 1 ? "s" : ""})` : ""}`
    : "ok";
  d.dataset.ok = String(!(h.ok === false || failing.length || pluginErrors));
}

async function refreshStatus() {
  try {
    const s = await call("status");
    $("status-version").textContent = `${s.version} (protocol ${s.protocol})`;
    state.startedAt = Date.now() - (s.uptimeMs || 0);
    $("status-connections").textContent = String(s.connections?.total ?? "–");
    showUptime();
  } catch (e) {
    // The next event or reconnect refreshes it.
  }
}

function showUptime() {
  if (state.startedAt) $("status-uptime").textContent = fmtDuration(Date.now() - state.startedAt);
}
setInterval(showUptime, 1000);

// ---------------------------------------------------------------- channels

function accountState(a) {
  if (a.enabled === false) return "disabled";
  if (a.connected) return "connected";
  if (a.running) return a.lastError ? "retrying" : "running";
  return a.lastError ? "error" : "stopped";
}

async function refreshChannels() {
  let st;
  try { st = await call("channels.status"); } catch { return; }
  state.channels = st;
  const body = $("channels").tBodies[0];
  body.replaceChildren();
  const admin = has("operator.admin");
  for (const ch of st.channelOrder || Object.keys(st.channelAccounts || {})) {
    for (const a of st.channelAccounts?.[ch] || []) {
      const s = accountState(a);
      const running = a.running || a.connected;
      const label = running ? "Stop" : "Start";
      const btn = el("button", {
        type: "button",
        class: "small",
        text: label,
        disabled: !admin || a.enabled === false,
        title: admin ? `${label} ${ch}/${a.accountId}` : "needs the operator.admin scope",
        "data-action": running ? "stop" : "start",
        on: { click: () => startStop(ch, a.accountId, running ? "channels.stop" : "channels.start", btn) },
      });
      btn.setAttribute("aria-label", `${label} account ${a.accountId} of ${ch}`);
      body.append(el("tr", { "data-channel": ch, "data-account": a.accountId },
        el("td", { text: st.channelLabels?.[ch] || ch }),
        el("td", { text: a.accountId }),
        el("td", {}, el("span", { class: "state", "data-state": s, text: s })),
        el("td", { class: "err", text: a.lastError || "" }),
        el("td", {}, btn)));
    }
  }
  $("channels-note").textContent = admin ? "" : "Starting and stopping accounts needs a token with the operator.admin scope.";
  fillSendChannels();
}

async function startStop(channel, accountId, method, btn) {
  btn.disabled = true;
  try {
    await call(method, { channel, accountId });
    $("channels-note").textContent = "";
  } catch (e) {
    $("channels-note").textContent = `${method} ${channel}/${accountId}: ${errText(e)}`;
  }
  refreshChannels();
}

// ----------------------------------------------------------------- plugins

async function refreshPlugins() {
  let list;
  try { list = (await call("plugins.list")).plugins; } catch { return; }
  const body = $("plugins").tBodies[0];
  body.replaceChildren();
  const admin = has("operator.admin");
  for (const p of list || []) {
    const btn = el("button", {
      type: "button", class: "small", text: "Reload", disabled: !admin,
      title: admin ? `Reload ${p.id}` : "needs the operator.admin scope",
      on: { click: () => reloadPlugins(p.id) },
    });
    btn.setAttribute("aria-label", `Reload plugin ${p.id}`);
    body.append(el("tr", { "data-plugin": p.id },
      el("td", { text: p.id }),
      el("td", { text: p.version || "–" }),
      el("td", { text: p.contract || "–" }),
      el("td", { text: p.file || "" }),
      el("td", { text: p.loadedAt ? fmtTime(p.loadedAt) : "–" }),
      el("td", { class: "err", text: p.error || "" }),
      el("td", {}, btn)));
  }
  $("plugins-reload-all").disabled = !admin;
}

async function reloadPlugins(id) {
  $("plugins-note").textContent = id ? `Reloading ${id}…` : "Reloading all plugins…";
  try {
    await call("plugins.reload", id ? { id } : {});
    $("plugins-note").textContent = id ? `Reloaded ${id}.` : "Reloaded.";
  } catch (e) {
    $("plugins-note").textContent = `Reload failed: ${errText(e)}`;
  }
  refreshPlugins();
}

// ---------------------------------------------------------------- messages

function messageItem(m) {
  const out = m.direction === "outbound";
  const who = out ? `to ${m.chatId}` : `from ${m.senderName || m.senderId} in ${m.chatId}`;
  const li = el("li", { "data-seq": String(m.messageSeq), "data-direction": m.direction },
    el("span", { class: "meta", text: `#${m.messageSeq} · ${fmtTime(m.ts)} · ${out ? "→ sent" : "← received"} · ${m.channel}/${m.accountId} · ${who}` }),
    el("span", { class: "text", text: m.text || "" }));
  for (const a of m.attachments || []) {
    const name = a.name || a.fileName || a.fileId || a.url || a.kind || "attachment";
    const bits = [a.kind, a.mimeType, a.size != null ? `${a.size} bytes` : null].filter(Boolean).join(", ");
    li.append(el("span", { class: "att", text: `Attachment: ${bits ? `${name} (${bits})` : name}` }));
  }
  return li;
}

// Adds messages in seq order; a seq already shown is skipped (no doubles).
function addMessages(list, { live = false } = {}) {
  const box = $("messages");
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  for (const m of list) {
    const seq = m.messageSeq;
    if (typeof seq !== "number" || state.shown.has(seq)) continue;
    const li = messageItem(m);
    state.shown.set(seq, li);
    // Find the first shown item with a greater seq (usually none: append).
    let before = null;
    for (let n = box.lastElementChild; n; n = n.previousElementSibling) {
      if (Number(n.dataset.seq) > seq) before = n; else break;
    }
    box.insertBefore(li, before);
    if (live) {
      state.liveMax = Math.max(state.liveMax, seq);
      if (state.synced) state.cursor = Math.max(state.cursor, seq);
    }
  }
  if (live && nearBottom) box.scrollTop = box.scrollHeight;
}

// After a (re)connect: the newest page the first time, else everything
// after the cursor, page by page, so nothing sent meanwhile is missed.
async function catchUp() {
  try {
    if (state.firstLoad) {
      const r = await call("messages.history", { limit: PAGE });
      addMessages(r.messages);
      const last = r.messages.at(-1);
      state.cursor = last ? last.messageSeq : 0;
      state.olderDone = !r.hasMore;
      state.firstLoad = false;
      $("messages").scrollTop = $("messages").scrollHeight;
    } else {
      for (;;) {
        const r = await call("messages.history", { afterSeq: state.cursor, limit: 500 });
        addMessages(r.messages);
        const last = r.messages.at(-1);
        if (last) state.cursor = last.messageSeq;
        if (!r.hasMore || !last) break;
      }
      const box = $("messages");
      box.scrollTop = box.scrollHeight;
    }
    // Live events that arrived during the catch-up are shown already, and
    // the log had everything before them.
    state.cursor = Math.max(state.cursor, state.liveMax);
    state.synced = true;
  } catch {
    // The connection dropped: the next one catches up from the cursor.
  }
  $("messages-earlier").disabled = state.olderDone;
}

async function loadOlder() {
  if (state.loadingOlder || state.olderDone || !state.ws) return;
  const first = Math.min(...state.shown.keys());
  if (!Number.isFinite(first)) return;
  state.loadingOlder = true;
  try {
    const box = $("messages");
    const h = box.scrollHeight;
    const r = await call("messages.history", { beforeSeq: first, limit: PAGE });
    addMessages(r.messages);
    box.scrollTop += box.scrollHeight - h;
    state.olderDone = !r.hasMore;
  } catch {
    // Try again on the next scroll.
  } finally {
    state.loadingOlder = false;
    $("messages-earlier").disabled = state.olderDone;
  }
}

// -------------------------------------------------------------------- send

function fillSendChannels() {
  const sel = $("send-channel");
  const prev = sel.value;
  const chans = state.channels?.channelOrder || [];
  sel.replaceChildren(...chans.map((c) => el("option", { value: c, text: c })));
  if (chans.includes(prev)) sel.value = prev;
  fillSendAccounts();
  const canWrite = has("operator.write");
  $("send-submit").disabled = !canWrite;
  if (!canWrite) $("send-result").textContent = "Sending needs a token with the operator.write scope.";
}

function fillSendAccounts() {
  const sel = $("send-account");
  const prev = sel.value;
  const accts = (state.channels?.channelAccounts?.[$("send-channel").value] || []).map((a) => a.accountId);
  sel.replaceChildren(...accts.map((a) => el("option", { value: a, text: a })));
  if (accts.includes(prev)) sel.value = prev;
}

async function onSend(ev) {
  ev.preventDefault();
  const params = {
    channel: $("send-channel").value,
    accountId: $("send-account").value,
    to: $("send-to").value.trim(),
    message: $("send-text").value,
    idempotencyKey: newKey(),
  };
  const result = $("send-result");
  if (!params.to || !params.message) {
    result.textContent = "Fill in who to send to and the text.";
    return;
  }
  $("send-submit").disabled = true;
  result.textContent = "Sending…";
  try {
    const r = await call("send", params);
    result.textContent = `Sent through ${r.channel}: message id ${r.messageId}.`;
    $("send-text").value = "";
  } catch (e) {
    result.textContent = `Not sent: ${errText(e)}`;
  } finally {
    $("send-submit").disabled = !has("operator.write");
  }
}

// -------------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("login-token").value);
    sessionStorage.setItem(KIND_KEY, $("login-is-password").checked ? "password" : "token");
    $("login-token").value = "";
    $("login-error").textContent = "";
    start();
  });
  $("logout").addEventListener("click", () => {
    stop();
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(KIND_KEY);
    setConn("disconnected");
    showLogin("");
  });
  $("send-form").addEventListener("submit", onSend);
  $("send-channel").addEventListener("change", fillSendAccounts);
  $("plugins-reload-all").addEventListener("click", () => reloadPlugins(null));
  $("messages-earlier").addEventListener("click", loadOlder);
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 40) loadOlder();
  });
  if (sessionStorage.getItem(TOKEN_KEY) !== null) start();
  else showLogin("");
});
