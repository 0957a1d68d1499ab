// The Node.js `ws` rooms server: the reference a team would write instead of
// Dorm (issue 12). One event loop, rooms in memory, no persistence. It speaks
// the frames the bench uses: `welcome` on connect, `draw` relayed to the rest
// of the room (serialized once per message), `ack` to the sender. Tokens:
// `?token=` is checked as an HS256 JWT (sub, room, exp) with BENCH_TOKEN_SECRET,
// as Dorm checks its room tokens; `?userId=` is accepted as well.
"use strict";
const http = require("http");
const crypto = require("crypto");
const { WebSocketServer } = require("ws");

const port = Number(process.env.PORT || 8080);
const secret = process.env.BENCH_TOKEN_SECRET || "";
const rooms = new Map(); // room -> Set of sockets
const seqs = new Map(); // room -> last seq

function b64url(buf) {
  return buf.toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

function verify(token, room) {
  const parts = token.split(".");
  if (parts.length !== 3 || !secret) return null;
  const mac = b64url(crypto.createHmac("sha256", secret).update(parts[0] + "." + parts[1]).digest());
  const a = Buffer.from(mac), b = Buffer.from(parts[2]);
  if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) return null;
  const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  if (claims.room !== room || !(claims.exp > Date.now() / 1000)) return null;
  return claims.sub;
}

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });

server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://x");
  const m = /^\/ws\/([A-Za-z0-9_-]{1,64})\/?$/.exec(url.pathname);
  if (!m) { socket.destroy(); return; }
  const room = m[1];
  let user = null;
  const token = url.searchParams.get("token");
  if (token) user = verify(token, room);
  else user = url.searchParams.get("userId");
  if (!user) { socket.write("HTTP/1.1 401 Unauthorized\r\n\r\n"); socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => join(ws, room, user));
});

function join(ws, room, user) {
  let members = rooms.get(room);
  if (!members) { members = new Set(); rooms.set(room, members); seqs.set(room, 0); }
  members.add(ws);
  ws.send(JSON.stringify({ type: "welcome", room, userId: user, seq: seqs.get(room) }));
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type !== "draw") return;
    const seq = seqs.get(room) + 1;
    seqs.set(room, seq);
    const frame = JSON.stringify({ type: "draw", seq, userId: user, payload: msg.payload, ts: Date.now() });
    for (const other of members) if (other !== ws && other.readyState === 1) other.send(frame);
    if (msg.id != null) ws.send(JSON.stringify({ type: "ack", id: msg.id, seq }));
  });
  ws.on("close", () => {
    members.delete(ws);
    if (members.size === 0) { rooms.delete(room); seqs.delete(room); }
  });
  ws.on("error", () => {});
}

server.listen(port, "127.0.0.1", () => console.log(`node-ws listening on 127.0.0.1:${port}`));
process.on("SIGINT", () => process.exit(0));
process.on("SIGTERM", () => process.exit(0));
