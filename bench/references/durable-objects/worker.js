// A Durable Objects rooms relay (hibernation API), the Cloudflare reference
// of issue 12: one object per room, `welcome` on connect, `draw` relayed to the
// rest of the room (serialized once), `ack` to the sender. Nothing is stored:
// relay only, as the reference figures.
export class Room {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.seq = 0;
  }

  async fetch(request) {
    const url = new URL(request.url);
    const user = url.searchParams.get("userId") || "anonymous";
    const pair = new WebSocketPair();
    this.ctx.acceptWebSocket(pair[1]);
    pair[1].serializeAttachment({ user });
    pair[1].send(JSON.stringify({ type: "welcome", userId: user, seq: this.seq }));
    return new Response(null, { status: 101, webSocket: pair[0] });
  }

  webSocketMessage(ws, data) {
    if (typeof data !== "string") return;
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type !== "draw") return;
    const seq = ++this.seq;
    const { user } = ws.deserializeAttachment();
    const frame = JSON.stringify({ type: "draw", seq, userId: user, payload: msg.payload, ts: Date.now() });
    for (const other of this.ctx.getWebSockets()) if (other !== ws) other.send(frame);
    if (msg.id != null) ws.send(JSON.stringify({ type: "ack", id: msg.id, seq }));
  }

  webSocketClose(ws, code) {
    try { ws.close(code === 1005 ? 1000 : code); } catch {}
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const m = /^\/ws\/([A-Za-z0-9_-]{1,64})\/?$/.exec(url.pathname);
    if (!m || request.headers.get("Upgrade") !== "websocket") return new Response("not found", { status: 404 });
    return env.ROOMS.get(env.ROOMS.idFromName(m[1])).fetch(request);
  },
};
