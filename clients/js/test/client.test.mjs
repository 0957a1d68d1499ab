// Unit tests of the Dorm JavaScript client against a real Dorm server.
// Run by tests/clients/test_js_client.py, which starts daphne and sets
// DORM_WS_URL; by hand: DORM_WS_URL=ws://127.0.0.1:8000 node --experimental-websocket --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import crypto from "node:crypto";

import { DormClient, DormError, backoffDelay, TERMINAL_CODES } from "../dorm.js";

const URL_ = process.env.DORM_WS_URL;
// Real room tokens minted by the pytest wrapper: {room, expired, fresh, otherRoom}.
const TOKENS = JSON.parse(process.env.DORM_TEST_TOKENS || "null");
if (!URL_) throw new Error("DORM_WS_URL is not set (the pytest wrapper starts a server and sets it)");

let n = 0;
const roomName = (p = "js") => `${p}-${process.pid}-${Date.now().toString(36)}-${++n}`;
const clients = [];

function client(options) {
  const c = new DormClient({ url: URL_, heartbeatMs: 60_000, backoffBaseMs: 100, ...options });
  clients.push(c);
  return c;
}

function until(predicate, what, timeoutMs = 8000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      let value;
      try {
        value = predicate();
      } catch (err) {
        reject(err);
        return;
      }
      if (value) resolve(value);
      else if (Date.now() - started > timeoutMs) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

function collect(c, type) {
  const got = [];
  c.on(type, (e) => got.push(e));
  return got;
}

async function freePortUrl() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return `ws://127.0.0.1:${port}`;
}

test.afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

test("backoffDelay grows exponentially, has jitter and is capped at 30 s", () => {
  const lo = () => 0;
  const hi = () => 0.999999;
  assert.equal(backoffDelay(0, { baseMs: 500, random: lo }), 250);
  assert.equal(backoffDelay(3, { baseMs: 500, random: lo }), 2000);
  assert.equal(backoffDelay(3, { baseMs: 500, random: hi }), 4000);
  for (let attempt = 0; attempt < 60; attempt++) {
    assert.ok(backoffDelay(attempt, { random: hi }) <= 30_000);
  }
  assert.equal(backoffDelay(50, { random: hi }), 30_000);
  assert.equal(backoffDelay(50, { random: lo }), 15_000);
  const spread = new Set(Array.from({ length: 20 }, () => backoffDelay(4)));
  assert.ok(spread.size > 1, "jitter: delays differ between clients");
});

test("reconnects with growing backoff while the server is unreachable, capped", async () => {
  const c = client({ url: await freePortUrl(), room: roomName(), userId: "u1", backoffBaseMs: 40, backoffMaxMs: 400 });
  const states = collect(c, "state");
  c.connect();
  await until(() => states.filter((s) => s.state === "reconnecting").length >= 6, "six reconnect attempts");
  const delays = states.filter((s) => s.state === "reconnecting").map((s) => s.delayMs);
  assert.ok(delays[0] >= 20 && delays[0] <= 40, `first delay ${delays[0]}`);
  assert.ok(delays[3] >= 160, `fourth delay grows: ${delays}`);
  assert.ok(delays.every((d) => d <= 400), `capped: ${delays}`);
  assert.ok(states.filter((s) => s.state === "connecting").length >= 6);
});

test("messages sent while offline are queued and flushed once on connect, in order", async () => {
  const room = roomName();
  const observer = client({ room, userId: "observer" }).connect();
  await until(() => observer.state === "open", "observer open");
  const draws = collect(observer, "draw");
  const c = client({ room, userId: "writer" });
  const acks = [1, 2, 3].map((i) => c.send("draw", { i }));
  assert.equal(c.pending.length, 3);
  c.connect();
  const results = await Promise.all(acks);
  assert.deepEqual(results.map((a) => a.payload.i), [1, 2, 3]);
  const seqs = results.map((a) => a.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(new Set(seqs).size, 3);
  await until(() => draws.length >= 3, "three draws at the observer");
  await new Promise((r) => setTimeout(r, 150));
  assert.deepEqual(draws.map((d) => d.payload.i), [1, 2, 3]);
  assert.deepEqual(draws.map((d) => d.seq), seqs);
  assert.equal(c.pending.length, 0);
});

test("a message whose socket was cut before its ack is retried with the same id and applied once", async () => {
  const room = roomName();
  const observer = client({ room, userId: "observer" }).connect();
  await until(() => observer.state === "open", "observer open");
  const draws = collect(observer, "draw");
  const c = client({ room, userId: "writer", backoffBaseMs: 50 }).connect();
  await until(() => c.state === "open", "writer open");
  const ackIds = [];
  c.on("ack", (a) => ackIds.push(a.id));
  const pending = [];
  for (let i = 0; i < 5; i++) {
    pending.push(c.send("draw", { i }));
    // Cut the socket right after the frame left, before its ack can arrive.
    if (i % 2 === 0) c.dropConnection();
  }
  const acks = await Promise.all(pending);
  await until(() => draws.length >= 5, "five draws at the observer");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(draws.map((d) => d.payload.i), [0, 1, 2, 3, 4], "each message applied exactly once, in order");
  assert.deepEqual(acks.map((a) => a.seq), draws.map((d) => d.seq));
  assert.equal(new Set(ackIds).size, 5);
  assert.deepEqual(acks.map((a) => a.id), pending.map((p) => p.id), "ids are stable across retries");
});

test("resume with since delivers exactly the missed events, once", async () => {
  const room = roomName();
  const a = client({ room, userId: "a", backoffBaseMs: 600 });
  const seen = collect(a, "draw");
  const resets = collect(a, "reset");
  const welcomes = collect(a, "welcome");
  a.connect();
  const b = client({ room, userId: "b" }).connect();
  await until(() => a.state === "open" && b.state === "open", "both open");
  for (let i = 0; i < 3; i++) await b.send("draw", { i });
  await until(() => seen.length === 3, "three live draws");
  a.dropConnection(); // a waits 300-600 ms before reconnecting
  for (let i = 3; i < 8; i++) await b.send("draw", { i });
  await until(() => seen.length >= 8 && a.state === "open", "a resumed");
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(seen.map((d) => d.payload.i), [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(seen.map((d) => d.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(welcomes.length, 2);
  assert.equal(welcomes[1].resumed, true);
  assert.equal(resets.length, 1, "only the first join resets the state");
  assert.equal(a.lastSeq, 8);

  // A new client given `since` (a seq stored across app restarts) resumes too.
  const late = client({ room, userId: "late", since: 5 }).connect();
  const lateSeen = collect(late, "draw");
  await until(() => lateSeen.length >= 3, "replay after since=5");
  assert.deepEqual(lateSeen.map((d) => d.seq), [6, 7, 8]);
});

test("4401 calls refreshToken, then reconnects with what it returned", async () => {
  const room = roomName();
  const calls = [];
  const c = client({
    room,
    token: "expired-token",
    refreshToken: async (info) => {
      calls.push(info);
      // This server has token auth off (anonymous development mode), so the
      // refreshed credentials are an anonymous identity here.
      return { userId: "refreshed" };
    },
  });
  const states = collect(c, "state");
  c.connect();
  await until(() => c.state === "open", "open after refresh");
  assert.equal(calls.length, 1);
  assert.equal(calls[0].code, 4401);
  assert.equal(c.userId, "refreshed");
  assert.ok(states[0].url.includes("token=expired-token"));
  assert.ok(states.some((s) => s.state === "reconnecting" && s.refreshing));
  const ack = await c.send("draw", { ok: true });
  assert.equal(ack.seq, 1);
});

test("4401 with a refresh that gives nothing stops the client and rejects its queue", async () => {
  let calls = 0;
  const c = client({ room: roomName(), token: "bad", refreshToken: () => (calls++, null) });
  const queued = c.send("draw", { x: 1 });
  c.connect();
  await assert.rejects(queued, (err) => err instanceof DormError && err.reason === "closed" && err.code === 4401);
  assert.equal(c.state, "closed");
  assert.equal(calls, 1);
});

test("a refreshed token refused again backs off instead of looping", async () => {
  let calls = 0;
  const c = client({ room: roomName(), token: "bad", backoffBaseMs: 100, refreshToken: () => `still-bad-${++calls}` });
  const states = collect(c, "state");
  c.connect();
  await until(() => calls >= 3, "three refreshes");
  const urls = states.filter((s) => s.state === "connecting").map((s) => s.url);
  assert.ok(urls[1].includes("token=still-bad-1") && urls[2].includes("token=still-bad-2"), urls.join(" "));
  assert.ok(states.some((s) => s.state === "reconnecting" && s.delayMs > 0), "backs off after the second 4401");
  c.close();
});

test("terminal close codes stop reconnecting", async () => {
  assert.ok(TERMINAL_CODES.includes(4400) && TERMINAL_CODES.includes(4403) && TERMINAL_CODES.includes(4404));
  const c = client({ room: "not a valid room!", userId: "u1" });
  const states = collect(c, "state");
  c.connect();
  await until(() => c.state === "closed", "closed");
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(states.at(-1).code, 4400);
  assert.equal(states.filter((s) => s.state === "connecting").length, 1, "no retry after 4400");
  assert.ok(!states.some((s) => s.state === "reconnecting"));
});

test("an error reply rejects the ack promise and reconciles the optimistic copy", async () => {
  const c = client({ room: roomName(), userId: "u1" }).connect();
  await until(() => c.state === "open", "open");
  const local = collect(c, "erase");
  const rejects = collect(c, "reject");
  const p = c.send("erase", { seq: 999 }, { optimistic: true });
  assert.equal(local.length, 1);
  assert.equal(local[0].pending, true);
  assert.equal(local[0].id, p.id);
  await assert.rejects(p, (err) => err.reason === "invalid_message" && err.id === p.id);
  assert.equal(rejects.length, 1);
  assert.equal(rejects[0].id, p.id);
  // The connection is still usable.
  const ok = await c.send("draw", { fine: 1 }, { optimistic: true });
  assert.equal(ok.seq, 1);
});

test("presence helpers: members, joins, leaves and status", async () => {
  const room = roomName();
  const a = client({ room, userId: "alice" }).connect();
  await until(() => a.state === "open", "alice open");
  const b = client({ room, userId: "bob" }).connect();
  await until(() => b.state === "open", "bob open");
  assert.deepEqual(b.members.map((m) => m.userId).sort(), ["alice", "bob"]);
  await until(() => a.members.some((m) => m.userId === "bob"), "alice sees bob");
  b.setPresence("typing");
  await until(() => a.members.find((m) => m.userId === "bob")?.status === "typing", "alice sees bob typing");
  b.close();
  await until(() => !a.members.some((m) => m.userId === "bob"), "bob left");
});

test("ping measures the round trip; on() returns an unsubscribe", async () => {
  const c = client({ room: roomName(), userId: "u1" });
  const latencies = collect(c, "latency");
  let calls = 0;
  const off = c.on("latency", () => calls++);
  c.connect();
  await until(() => latencies.length >= 1, "first latency (sent on welcome)");
  assert.ok(c.latencyMs >= 0 && c.latencyMs < 5000);
  off();
  c.ping();
  await until(() => latencies.length >= 2, "second latency");
  assert.equal(calls, 1);
});

test("seq tracking delivers each durable event once across a gap (own ack lost)", () => {
  const c = new DormClient({ url: "ws://127.0.0.1:9", room: "room-1", userId: "u1" });
  const draws = collect(c, "draw");
  c._ws = { readyState: 1, send() {} }; // frames are fed by hand below; nothing is sent
  const frame = (f) => c._onFrame(c._ws, JSON.stringify(f));
  frame({ type: "welcome", room: "room-1", kind: "whiteboard", userId: "u1", connectionId: "c", seq: 5, resumed: false, state: {}, presence: [] });
  frame({ type: "draw", seq: 7, userId: "b", payload: { n: 7 } });
  frame({ type: "draw", seq: 8, userId: "b", payload: { n: 8 } });
  assert.equal(c.lastSeq, 5);
  assert.ok(c.url.includes("since=5"));
  frame({ type: "welcome", room: "room-1", kind: "whiteboard", userId: "u1", connectionId: "d", seq: 8, resumed: true, presence: [] });
  for (const n of [6, 7, 8]) frame({ type: "draw", seq: n, userId: n === 6 ? "u1" : "b", payload: { n } });
  frame({ type: "draw", seq: 9, userId: "b", payload: { n: 9 } });
  assert.deepEqual(draws.map((d) => d.seq), [7, 8, 6, 9]);
  assert.equal(c.lastSeq, 9);
  c._stopTimers();
  c._ws = null;
  c.close();
});

// -- a scripted peer: a real TCP socket speaking just enough WebSocket to send
// chosen frames, record what the client sends, and stay silent on purpose.

function textFrame(text) {
  const data = Buffer.from(text);
  const head = data.length < 126 ? Buffer.from([0x81, data.length]) : Buffer.from([0x81, 126, data.length >> 8, data.length & 255]);
  return Buffer.concat([head, data]);
}

function parseFrames(buf) {
  const frames = [];
  let off = 0;
  while (buf.length - off >= 2) {
    let len = buf[off + 1] & 0x7f;
    let p = off + 2;
    if (len === 126) {
      if (buf.length < p + 2) break;
      len = buf.readUInt16BE(p);
      p += 2;
    }
    const mask = buf.subarray(p, p + 4);
    p += 4;
    if (buf.length < p + len) break;
    const data = Buffer.from(buf.subarray(p, p + len));
    for (let i = 0; i < len; i++) data[i] ^= mask[i % 4];
    if ((buf[off] & 0x0f) === 1) frames.push(JSON.parse(data.toString()));
    off = p + len;
  }
  return { frames, rest: buf.subarray(off) };
}

async function scriptedPeer(onConnection) {
  const sockets = [];
  const srv = net.createServer((sock) => {
    sockets.push(sock);
    sock.on("error", () => {});
    sock.once("data", (req) => {
      const key = /sec-websocket-key: *(.+)\r\n/i.exec(req.toString())[1].trim();
      const accept = crypto.createHash("sha1").update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64");
      sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
      const peer = { received: [], send: (obj) => sock.write(textFrame(JSON.stringify(obj))), socket: sock };
      let buf = Buffer.alloc(0);
      sock.on("data", (chunk) => {
        const parsed = parseFrames(Buffer.concat([buf, chunk]));
        buf = parsed.rest;
        peer.received.push(...parsed.frames);
      });
      onConnection(peer, sockets.length);
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return {
    url: `ws://127.0.0.1:${srv.address().port}`,
    close: () => {
      for (const s of sockets) s.destroy();
      srv.close();
    },
  };
}

const welcome = (seq = 0) => ({ type: "welcome", room: "r", kind: "whiteboard", userId: "u1", connectionId: "c", seq, resumed: false, state: {}, presence: [] });

test("heartbeats: periodic ping and heartbeat frames, and a silent socket is dropped and replaced", async () => {
  const peers = [];
  const srv = await scriptedPeer((peer) => {
    peers.push(peer);
    peer.send(welcome()); // ...and never another frame, pong included
  });
  try {
    const c = client({ url: srv.url, room: "r", userId: "u1", heartbeatMs: 150 });
    const states = collect(c, "state");
    c.connect();
    await until(() => peers.length >= 2, "a second connection after the silent one was dropped", 5000);
    const types = peers[0].received.map((f) => f.type);
    assert.ok(types.filter((t) => t === "ping").length >= 3, types.join(","));
    assert.ok(!types.includes("heartbeat"), types.join(",")); // one frame a period: the ping
    assert.ok(states.some((s) => s.state === "reconnecting" && s.code === 1006));
  } finally {
    srv.close();
  }
});

test("rate_limited pauses, then resends the dropped message (by id) with the same id", async () => {
  let peer;
  const srv = await scriptedPeer((p) => {
    peer = p;
    p.send(welcome());
  });
  const draws = () => peer.received.filter((f) => f.type === "draw");
  try {
    const c = client({ url: srv.url, room: "r", userId: "u1" }).connect();
    await until(() => c.state === "open", "open");
    const [a, b, d] = [1, 2, 3].map((n) => c.send("draw", { n }));
    await until(() => draws().length === 3, "three draws sent");
    peer.send({ type: "ack", id: a.id, seq: 1 });
    peer.send({ type: "rate_limited", retryAfterMs: 200, id: d.id }); // the third was dropped
    const sentAt = Date.now();
    assert.equal((await a).seq, 1);
    await until(() => draws().length === 4, "the resend");
    assert.ok(Date.now() - sentAt >= 150, "waited for retryAfterMs");
    assert.equal(draws()[3].id, d.id, "only the dropped message is resent, with its id");
    // A rate_limited without id (an older server): every unacknowledged message again.
    peer.send({ type: "rate_limited", retryAfterMs: 50 });
    await until(() => draws().length === 6, "both unacknowledged resent");
    assert.deepEqual(draws().slice(4).map((f) => f.id), [b.id, d.id]);
    peer.send({ type: "ack", id: b.id, seq: 2 });
    peer.send({ type: "ack", id: d.id, seq: 3 });
    assert.deepEqual([(await b).seq, (await d).seq], [2, 3]);
    assert.equal(c.lastSeq, 3);
  } finally {
    srv.close();
  }
});

test("error: internal is retried with the same id before the promise rejects", async () => {
  let peer;
  const srv = await scriptedPeer((p) => {
    peer = p;
    p.send(welcome());
  });
  try {
    const c = client({ url: srv.url, room: "r", userId: "u1", backoffBaseMs: 20, internalRetries: 2 }).connect();
    await until(() => c.state === "open", "open");
    const m = c.send("draw", { n: 1 });
    for (let i = 1; i <= 3; i++) {
      await until(() => peer.received.filter((f) => f.type === "draw").length === i, `attempt ${i}`);
      peer.send({ type: "error", reason: "internal", id: m.id });
    }
    await assert.rejects(m, (err) => err.reason === "internal");
    assert.ok(peer.received.filter((f) => f.type === "draw").every((f) => f.id === m.id));
  } finally {
    srv.close();
  }
});

test("connect() while waiting out a backoff reconnects at once (app back in the foreground)", async () => {
  const c = client({ url: await freePortUrl(), room: roomName(), userId: "u1", backoffBaseMs: 10_000 });
  const states = collect(c, "state");
  c.connect();
  await until(() => c.state === "reconnecting", "first failure");
  assert.ok(states.at(-1).delayMs >= 5000);
  const before = states.filter((s) => s.state === "connecting").length;
  c.connect();
  assert.equal(states.filter((s) => s.state === "connecting").length, before + 1);
});

test("a throwing listener is reported and does not break the client", async () => {
  const room = roomName();
  const reported = [];
  const original = console.error;
  console.error = (err) => reported.push(err);
  try {
    const a = client({ room, userId: "a" });
    a.on("draw", () => {
      throw new Error("listener bug");
    });
    const seen = collect(a, "draw");
    a.connect();
    const b = client({ room, userId: "b" }).connect();
    await until(() => a.state === "open" && b.state === "open", "both open");
    await b.send("draw", { n: 1 });
    await b.send("draw", { n: 2 });
    await until(() => seen.length === 2, "both draws still delivered");
    assert.equal(reported.length, 2);
    assert.equal(a.state, "open");
  } finally {
    console.error = original;
  }
});

test("a real expired token: 4401, refreshToken gives a fresh one, the client joins as its user", async (t) => {
  if (!TOKENS) return t.skip("DORM_TEST_TOKENS not set (run through pytest)");
  const calls = [];
  const c = client({
    room: TOKENS.room,
    token: TOKENS.expired,
    refreshToken: async (info) => {
      calls.push(info.code);
      return TOKENS.fresh;
    },
  });
  c.connect();
  await until(() => c.state === "open", "open with the fresh token");
  assert.deepEqual(calls, [4401]);
  assert.equal(c.userId, "alice");
  assert.ok((await c.send("draw", { n: 1 })).seq >= 1);
});

test("a token for another room is 4403: terminal, no refresh", async (t) => {
  if (!TOKENS) return t.skip("DORM_TEST_TOKENS not set (run through pytest)");
  let calls = 0;
  const c = client({ room: TOKENS.room, token: TOKENS.otherRoom, refreshToken: () => (calls++, TOKENS.fresh) });
  const states = collect(c, "state");
  c.connect();
  await until(() => c.state === "closed", "closed");
  assert.equal(states.at(-1).code, 4403);
  assert.equal(calls, 0);
});
