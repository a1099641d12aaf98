// The JavaScript client (/client.js, imported from the running server
// itself) against a real `switchboard serve`, with Node's test runner.
// Run by tests/js_client.rs, which starts the server and passes
// SWITCHBOARD_URL (http://host:port) and SWITCHBOARD_SECRET.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { writeFile, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const base = process.env.SWITCHBOARD_URL;
const secret = process.env.SWITCHBOARD_SECRET;
const wsUrl = base.replace(/^http/, "ws") + "/ws";

// The client as the server serves it.
const source = await (await fetch(base + "/client.js")).text();
const dir = await mkdtemp(join(tmpdir(), "switchboard-client-"));
await writeFile(join(dir, "client.mjs"), source);
const { connect, RpcError } = await import(join(dir, "client.mjs"));

function token(sub, ttl = 3600) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: now + ttl })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

function client(user, options = {}) {
  return connect(wsUrl, { getToken: () => token(user), keepalive: 0, minBackoff: 50, maxBackoff: 200, ...options });
}

const until = async (check, what, ms = 10000) => {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test("calls resolve, errors reject with code and message, timeouts fire", async () => {
  const sb = client("ada");
  try {
    assert.equal(await sb.call("rpc.ping"), "pong");
    assert.deepEqual(await sb.call("echo", { hi: [1, 2] }), { hi: [1, 2] });
    await assert.rejects(sb.call("no/such"), (e) => e instanceof RpcError && e.code === -32601 && /no action/.test(e.message));
    await assert.rejects(sb.call("echo/error", { why: 1 }), (e) => e.code === 1000 && e.data?.why === 1);
    await assert.rejects(sb.call("echo/sleep", { ms: 1500 }, { timeout: 100 }), (e) => e.code === -32003);
    const abort = new AbortController();
    const aborted = sb.call("echo/sleep", { ms: 1500 }, { signal: abort.signal });
    abort.abort();
    await assert.rejects(aborted, (e) => e.code === -32003 && /aborted/.test(e.message));
  } finally {
    sb.close();
  }
});

test("the server's calls are answered by handlers", async () => {
  const asker = client("bob");
  const answerer = client("cat");
  try {
    answerer.handle("chat/confirm", async ({ question }) => `yes to ${question}`);
    await answerer.call("chat/join", { room: "js" });
    await asker.call("chat/join", { room: "js" });
    const { conn } = await answerer.call("echo/whoami");
    const reply = await asker.call("chat/ask", { conn, question: "tea?" });
    assert.deepEqual(reply, { answer: "yes to tea?" });
  } finally {
    asker.close();
    answerer.close();
  }
});

test("a dropped socket during a burst of publishes loses and doubles nothing", async () => {
  const reader = client("reader");
  const writer = client("writer");
  try {
    const got = [];
    const recovered = [];
    reader.on("recovered", (r) => recovered.push(r));
    await reader.join("burst", (data) => got.push(data));
    await writer.join("burst", () => {});
    const sent = [];
    const publishing = (async () => {
      for (let i = 0; i < 200; i++) {
        await writer.publish("burst", i);
        sent.push(i);
      }
    })();
    await until(() => got.length >= 20, "the first messages");
    // Cut the reader's socket mid-burst (as a network drop would).
    reader.socket.close(4000);
    await publishing;
    await until(() => got.length >= 200, "every message after the reconnect");
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(got, sent, "every message once, in order");
    assert.ok(recovered.some((r) => r.room === "burst" && r.recovered === true), JSON.stringify(recovered));
  } finally {
    reader.close();
    writer.close();
  }
});

test("calls made while disconnected wait and go out after the reconnect", async () => {
  const sb = client("dan");
  try {
    assert.equal(await sb.call("rpc.ping"), "pong");
    const reconnected = new Promise((resolve) => sb.on("connected", (e) => e.reconnected && resolve()));
    sb.socket.close(4000);
    const answer = sb.call("echo", { queued: true });
    await reconnected;
    assert.deepEqual(await answer, { queued: true });
  } finally {
    sb.close();
  }
});

test("recovered: false reaches the app when the gap is older than the history", async () => {
  // Reconnects only after a second, so the publishes below fall into the gap.
  const reader = client("eve", { minBackoff: 2000, maxBackoff: 2000 });
  const writer = client("fay");
  try {
    const recovered = [];
    reader.on("recovered", (r) => recovered.push(r));
    const disconnected = new Promise((resolve) => reader.on("disconnected", resolve));
    await reader.join("short:js", () => {});
    await writer.join("short:js", () => {});
    // The room keeps 3 messages (tests/js_client.rs's rule): miss more.
    reader.socket.close(4000);
    await disconnected;
    const alone = async () => (await writer.presence("short:js")).length === 1;
    for (let i = 0; i < 100 && !(await alone()); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(await alone(), "the server saw the reader go");
    for (let i = 0; i < 8; i++) await writer.publish("short:js", i);
    await until(() => recovered.length > 0, "the rejoin");
    assert.equal(recovered[0].recovered, false, JSON.stringify(recovered));
    assert.equal(recovered[0].room, "short:js");
  } finally {
    reader.close();
    writer.close();
  }
});

test("pushed events reach listeners; presence lists members", async () => {
  const ann = client("ann");
  const ben = client("ben");
  try {
    const dms = [];
    ann.on("chat.dm", (data) => dms.push(data));
    await ann.call("rpc.ping");
    await ben.call("chat/dm", { to: "ann", text: "hello" });
    await until(() => dms.length === 1, "the dm");
    assert.equal(dms[0].text, "hello");
    await ann.join("team", () => {});
    await ben.join("team", () => {});
    const users = (await ann.presence("team")).map((m) => m.user).sort();
    assert.deepEqual(users, ["ann", "ben"]);
  } finally {
    ann.close();
    ben.close();
  }
});

test("tokenUrl: every (re)connection signs in with a fresh one-time token from POST /token", async () => {
  const sb = connect(wsUrl, {
    tokenUrl: base + "/token",
    // A browser sends the page's cookies itself (credentials: "include").
    tokenRequest: { headers: { cookie: "session=gus" } },
    keepalive: 0,
    minBackoff: 50,
    maxBackoff: 200,
  });
  try {
    assert.equal((await sb.call("echo/whoami")).user, "gus");
    const back = new Promise((resolve) => sb.on("connected", (e) => e.reconnected && resolve()));
    sb.socket.close(4000);
    await back;
    // The first token was one-time: this sign-in used a fresh one.
    assert.equal((await sb.call("echo/whoami")).user, "gus");
  } finally {
    sb.close();
  }
});
