// Dorm JavaScript client: one dependency-free ES module for browsers,
// React Native / Expo and Node (>= 22, or 20 with --experimental-websocket).
// Speaks wire protocol v1 (PROTOCOL.md): welcome/resume with `since`, acks by
// client id, close codes, ping/pong, heartbeat, presence.
//
//   import { DormClient } from "/static/dorm/dorm.js";
//   const room = new DormClient({ url: "ws://127.0.0.1:8000", room: "board-1", userId: "u1" });
//   room.on("draw", (e) => draw(e.payload));
//   const { seq } = await room.send("draw", { x: 1, y: 2 });
//   room.connect();

export const VERSION = "1.0.0";

// Close codes (PROTOCOL.md section 1) and what the client does about them.
export const CloseCodes = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // server restarting or room moving: reconnect at once
  ABNORMAL: 1006, // no close frame (network cut, server killed)
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  TRY_AGAIN_LATER: 1013,
  BAD_REQUEST: 4400,
  UNAUTHORIZED: 4401,
  OVER_BUDGET: 4402,
  FORBIDDEN: 4403,
  NOT_FOUND: 4404,
  ROOM_FULL: 4409,
  TOO_MANY_CONNECTIONS: 4429,
  // Client-side: no frame within the heartbeat window; treated like 1006.
  HEARTBEAT_TIMEOUT: 4000,
});

// Retrying these cannot help: the client stops and rejects what is queued.
export const TERMINAL_CODES = Object.freeze([4400, 4402, 4403, 4404, 1009]);

export const States = Object.freeze({
  IDLE: "idle", // constructed, connect() not called yet
  CONNECTING: "connecting", // socket opening, or waiting for `welcome`
  OPEN: "open", // welcome received: in the room
  RECONNECTING: "reconnecting", // waiting out a backoff delay
  CLOSED: "closed", // close() called or a terminal code: no more retries
});

const DEFAULTS = {
  backoffBaseMs: 500,
  backoffMaxMs: 30_000, // the cap, jitter included
  heartbeatMs: 15_000, // ping period (latency, and presence: the server takes a ping as a heartbeat)
  connectTimeoutMs: 10_000, // socket open + welcome
  internalRetries: 3, // `error: internal` (failed commit) is retried with the same id
};

/** An `error` reply to one message, or the client stopping before its ack. */
export class DormError extends Error {
  constructor(reason, detail, extra = {}) {
    super(detail ? `${reason}: ${detail}` : reason);
    this.name = "DormError";
    this.reason = reason;
    this.detail = detail;
    Object.assign(this, extra);
  }
}

/**
 * Backoff delay before attempt `attempt` (0-based): exponential, "equal
 * jitter" (half fixed, half random) so a fleet reconnecting after an outage
 * spreads out, and never above `maxMs`.
 */
export function backoffDelay(attempt, { baseMs = DEFAULTS.backoffBaseMs, maxMs = DEFAULTS.backoffMaxMs, random = Math.random } = {}) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

function randomTag() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID().replace(/-/g, "").slice(0, 12);
  return Math.random().toString(36).slice(2, 14).padEnd(12, "0");
}

function now() {
  return globalThis.performance && typeof performance.now === "function" ? performance.now() : Date.now();
}

function defaultBaseUrl() {
  const loc = globalThis.location;
  if (loc && loc.host) return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}`;
  throw new Error("DormClient: give `url` (ws://host:port) outside a browser page");
}

export class DormClient {
  /**
   * @param {object} options see dorm.d.ts (DormClientOptions)
   */
  constructor(options) {
    if (!options || !options.room) throw new Error("DormClient: `room` is required");
    this.options = { ...DEFAULTS, ...options };
    this.room = options.room;
    this.userId = options.userId ?? null;
    this.token = options.token ?? null;
    this.baseUrl = (options.url ?? defaultBaseUrl()).replace(/\/+$/, "");
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") throw new Error("DormClient: no WebSocket implementation (pass options.WebSocket)");
    this.random = options.random ?? Math.random;

    this.state = States.IDLE;
    this.kind = null;
    this.connectionId = null;
    this.latencyMs = null;
    this.members = []; // [{userId, status}] (welcome.presence, kept current)
    // Highest seq such that every durable event up to it was seen (events or
    // own acks): what `since` is on reconnect.
    this.lastSeq = options.since ?? null;
    this._seenAbove = new Set(); // seqs seen above lastSeq (out of order)

    this._listeners = new Map();
    this._outbox = []; // unacknowledged messages with ids, in send order
    this._byId = new Map();
    this._counter = 0;
    this._tag = options.idPrefix ?? randomTag();
    this._ws = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._heartbeatTimer = null;
    this._connectTimer = null;
    this._lastFrameAt = 0;
    this._closeFrame = null;
    this._presenceStatus = null;
    this._unauthorizedInRow = 0;
    this._pausedUntil = 0;
    this._flushTimer = null;
  }

  // -- events ---------------------------------------------------------------

  /**
   * Listen to a message type (`draw`, `message`, `user_joined`, ...) or a
   * client event (`state`, `welcome`, `reset`, `ack`, `reject`, `latency`,
   * `members`, `error`, `*` for every frame). Returns an unsubscribe function.
   */
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (e) => {
      off();
      fn(e);
    });
    return off;
  }

  _emit(type, event) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(event);
      } catch (err) {
        // A listener's bug must not break the connection (nor, in Node,
        // kill the process as an uncaught exception would): report it.
        (typeof globalThis.reportError === "function" ? globalThis.reportError : console.error)(err);
      }
    }
  }

  _setState(state, info = {}) {
    if (this.state === state && !info.force) return;
    const previous = this.state;
    this.state = state;
    const { force, ...rest } = info;
    this._emit("state", { state, previous, ...rest });
  }

  // -- connection -----------------------------------------------------------

  /** The URL of the next connection attempt (token or userId, and since). */
  get url() {
    const q = new URLSearchParams();
    if (this.token) q.set("token", this.token);
    else if (this.userId) q.set("userId", this.userId);
    if (this.lastSeq !== null && this.lastSeq !== undefined) q.set("since", String(this.lastSeq));
    const qs = q.toString();
    return `${this.baseUrl}/ws/${encodeURIComponent(this.room)}${qs ? `?${qs}` : ""}`;
  }

  /** Open the connection (and keep it open until close() or a terminal code). */
  connect() {
    if (this.state === States.CONNECTING || this.state === States.OPEN) return this;
    this._clearRetry();
    this._open();
    return this;
  }

  /** Close for good: no reconnect; queued messages are rejected. */
  close(code = 1000, reason = "client closed") {
    this._clearRetry();
    this._stopTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        /* already closed */
      }
    }
    this._stop(code, reason);
  }

  /** Drop the current socket as if the network had cut it (tests, "reconnect now" buttons). */
  dropConnection() {
    const ws = this._ws;
    if (!ws) return;
    try {
      ws.close(CloseCodes.HEARTBEAT_TIMEOUT, "dropped by client");
    } catch {
      /* ignore */
    }
    this._onSocketClosed(ws, CloseCodes.ABNORMAL, "dropped by client");
  }

  /**
   * Forget the seq position and rejoin for a full snapshot (a `reset` event
   * follows). For apps whose local model cannot apply an event.
   */
  resync() {
    this.lastSeq = null;
    this._seenAbove.clear();
    if (this.state === States.OPEN || this.state === States.CONNECTING) this.dropConnection();
  }

  _open() {
    this._closeFrame = null;
    const url = this.url;
    this._setState(States.CONNECTING, { attempt: this._attempt, url });
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this._scheduleReconnect(CloseCodes.ABNORMAL, String(err && err.message));
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onSocketClosed(ws, ev.code, ev.reason);
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onerror = () => {
      // Browsers follow with onclose; Node 20's undici fires only onerror
      // when the connection fails (and leaves readyState at CONNECTING).
      setTimeout(() => {
        if (this._ws === ws && (ws.readyState === 3 || !opened)) this._onSocketClosed(ws, CloseCodes.ABNORMAL, "connection failed");
      }, 0);
    };
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && this.state !== States.OPEN) {
        try {
          ws.close(CloseCodes.HEARTBEAT_TIMEOUT, "connect timeout");
        } catch {
          /* ignore */
        }
        this._onSocketClosed(ws, CloseCodes.ABNORMAL, "connect timeout");
      }
    }, this.options.connectTimeoutMs);
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  _onSocketClosed(ws, code, reason) {
    if (ws !== this._ws) return; // an old socket
    this._detach(ws);
    this._ws = null;
    this._stopTimers();
    // Some servers drop the close reason: the last `close` frame has it.
    if (this._closeFrame) ({ code, reason } = this._closeFrame);
    code = code || CloseCodes.ABNORMAL;
    if (this.state === States.CLOSED) return;
    if (TERMINAL_CODES.includes(code)) {
      this._stop(code, reason);
      return;
    }
    if (code === CloseCodes.UNAUTHORIZED) {
      this._refreshAndReconnect(code, reason);
      return;
    }
    this._scheduleReconnect(code, reason);
  }

  async _refreshAndReconnect(code, reason) {
    const refresh = this.options.refreshToken;
    if (typeof refresh !== "function") {
      this._stop(code, reason);
      return;
    }
    this._unauthorizedInRow += 1;
    this._setState(States.RECONNECTING, { code, reason, refreshing: true });
    let fresh;
    try {
      fresh = await refresh({ code, reason, room: this.room, attempt: this._unauthorizedInRow });
    } catch (err) {
      fresh = null;
    }
    if (this.state === States.CLOSED) return;
    if (!fresh) {
      this._stop(code, reason);
      return;
    }
    if (typeof fresh === "string") this.token = fresh;
    else {
      // {token} or, on a development server with anonymous access, {userId}.
      this.token = fresh.token ?? null;
      if (fresh.userId) this.userId = fresh.userId;
    }
    // The first refresh reconnects at once; a token refused again backs off.
    if (this._unauthorizedInRow <= 1) this._open();
    else this._scheduleReconnect(code, reason);
  }

  _scheduleReconnect(code, reason) {
    let delayMs;
    if (code === CloseCodes.GOING_AWAY) {
      // Reconnect at once, spread over a short window (a whole server's
      // clients get 1001 at the same moment).
      delayMs = Math.round(this.random() * Math.min(this.options.backoffBaseMs, 1000));
    } else if (code === CloseCodes.POLICY_VIOLATION) {
      delayMs = this.options.backoffMaxMs; // "not at once"
    } else {
      delayMs = backoffDelay(this._attempt, { baseMs: this.options.backoffBaseMs, maxMs: this.options.backoffMaxMs, random: this.random });
    }
    this._attempt += 1;
    this._setState(States.RECONNECTING, { code, reason, attempt: this._attempt, delayMs, force: true });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this.state === States.RECONNECTING) this._open();
    }, delayMs);
  }

  _clearRetry() {
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  _stopTimers() {
    if (this._heartbeatTimer) clearInterval(this._heartbeatTimer);
    if (this._connectTimer) clearTimeout(this._connectTimer);
    if (this._flushTimer) clearTimeout(this._flushTimer);
    this._heartbeatTimer = this._connectTimer = this._flushTimer = null;
  }

  _stop(code, reason) {
    this._clearRetry();
    this._stopTimers();
    const pending = this._outbox.splice(0);
    this._byId.clear();
    this._setState(States.CLOSED, { code, reason, terminal: TERMINAL_CODES.includes(code) || code === CloseCodes.UNAUTHORIZED });
    for (const m of pending) m.reject(new DormError("closed", reason, { id: m.id, code }));
  }

  // -- inbound --------------------------------------------------------------

  _onFrame(ws, data) {
    if (ws !== this._ws) return;
    this._lastFrameAt = now();
    if (typeof data !== "string") return; // binary: Yjs kinds only
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    this._emit("*", frame);
    switch (frame.type) {
      case "welcome":
        this._onWelcome(frame);
        return;
      case "ack":
        this._onAck(frame);
        return;
      case "error":
        this._onError(frame);
        return;
      case "pong":
        this._onPong(frame);
        return;
      case "close":
        this._closeFrame = { code: frame.code, reason: frame.reason };
        this._emit("close", frame);
        return;
      case "rate_limited": {
        // The server dropped one frame: pause, then resend it. Its `id` says
        // which; without one (older servers, messages without ids) every
        // unacknowledged message is resent (ids make that safe).
        const wait = frame.retryAfterMs || 250;
        this._pausedUntil = now() + wait;
        const dropped = frame.id !== undefined ? this._byId.get(frame.id) : null;
        if (dropped) dropped.sent = false;
        else if (frame.id === undefined) for (const m of this._outbox) m.sent = false;
        this._scheduleFlush(wait);
        this._emit("rate_limited", frame);
        return;
      }
      case "user_joined":
        if (!this.members.some((m) => m.userId === frame.userId)) {
          this.members = [...this.members, { userId: frame.userId, status: "online" }];
          this._emit("members", this.members);
        }
        break;
      case "user_left":
        this.members = this.members.filter((m) => m.userId !== frame.userId);
        this._emit("members", this.members);
        break;
      case "presence": {
        const status = frame.payload && typeof frame.payload.status === "string" ? frame.payload.status : null;
        if (status) {
          const known = this.members.some((m) => m.userId === frame.userId);
          this.members = known
            ? this.members.map((m) => (m.userId === frame.userId ? { ...m, status } : m))
            : [...this.members, { userId: frame.userId, status }];
          this._emit("members", this.members);
        }
        break;
      }
      default:
        break;
    }
    if (typeof frame.seq === "number") {
      if (!this._markSeen(frame.seq)) return; // a duplicate: already applied
    }
    this._emit(frame.type, frame);
  }

  /** Record a durable seq; false if it was already seen. */
  _markSeen(seq) {
    if (this.lastSeq !== null && seq <= this.lastSeq) return false;
    if (this._seenAbove.has(seq)) return false;
    this._seenAbove.add(seq);
    let last = this.lastSeq ?? 0;
    while (this._seenAbove.has(last + 1)) {
      this._seenAbove.delete(last + 1);
      last += 1;
    }
    this.lastSeq = last;
    return true;
  }

  _onWelcome(frame) {
    if (this._connectTimer) clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this.kind = frame.kind;
    this.connectionId = frame.connectionId;
    if (frame.userId) this.userId = frame.userId;
    if (!frame.resumed) {
      // A fresh snapshot (first join, or `since` outside the history): the
      // app resets its state from `frame.state`.
      this.lastSeq = frame.seq;
      this._seenAbove.clear();
      this._emit("reset", { state: frame.state, seq: frame.seq });
    }
    this.members = Array.isArray(frame.presence) ? frame.presence.map((m) => ({ ...m })) : [];
    this._attempt = 0;
    this._unauthorizedInRow = 0;
    this._lastFrameAt = now();
    this._setState(States.OPEN, { resumed: !!frame.resumed, seq: frame.seq });
    this._emit("welcome", frame);
    this._emit("members", this.members);
    this._startHeartbeat();
    if (this._presenceStatus) this._raw({ type: "presence", payload: { status: this._presenceStatus } });
    for (const m of this._outbox) m.sent = false;
    this._flush();
  }

  _onAck(frame) {
    const m = this._byId.get(frame.id);
    if (typeof frame.seq === "number") this._markSeen(frame.seq);
    if (!m) return; // a second ack of a retried message
    this._forget(m);
    const ack = { id: m.id, seq: frame.seq, type: m.type, payload: m.payload };
    m.resolve(ack);
    this._emit("ack", ack);
  }

  _onError(frame) {
    const m = frame.id ? this._byId.get(frame.id) : null;
    if (!m) {
      this._emit("error", frame);
      return;
    }
    if (frame.reason === "internal" && m.internalRetries < this.options.internalRetries) {
      // The server's commit failed: nothing was applied, retry with the same id.
      m.internalRetries += 1;
      m.sent = false;
      this._scheduleFlush(backoffDelay(m.internalRetries, { baseMs: this.options.backoffBaseMs, maxMs: 5000, random: this.random }));
      return;
    }
    this._forget(m);
    const err = new DormError(frame.reason, frame.detail, { id: m.id, type: m.type, payload: m.payload });
    m.reject(err);
    this._emit("reject", { id: m.id, type: m.type, payload: m.payload, reason: frame.reason, detail: frame.detail, error: err });
  }

  _onPong(frame) {
    const t = frame.payload && frame.payload.t;
    if (typeof t === "number") {
      this.latencyMs = Math.max(0, Math.round(now() - t));
      this._emit("latency", { ms: this.latencyMs });
    }
  }

  // -- outbound -------------------------------------------------------------

  /** A new client message id, unique to this client instance. */
  nextId() {
    this._counter += 1;
    return `${this._tag}-${this._counter}`;
  }

  /**
   * Send a message with an id; queued while offline and resent on reconnect
   * with the same id (the server applies it once). Resolves with
   * `{id, seq, type, payload}` on ack, rejects with DormError on an error
   * reply or when the client stops. With `optimistic: true`, listeners of
   * `type` get `{type, id, userId, payload, pending: true}` at once.
   * The returned promise carries the message id as `.id`.
   */
  send(type, payload, { id, optimistic = false } = {}) {
    const msg = { id: id ?? this.nextId(), type, payload, sent: false, internalRetries: 0 };
    const promise = new Promise((resolve, reject) => {
      msg.resolve = resolve;
      msg.reject = reject;
    });
    promise.id = msg.id;
    if (this.state === States.CLOSED) {
      msg.reject(new DormError("closed", "the client is closed", { id: msg.id }));
      return promise;
    }
    this._outbox.push(msg);
    this._byId.set(msg.id, msg);
    if (optimistic) this._emit(type, { type, id: msg.id, userId: this.userId, payload, pending: true });
    this._flush();
    return promise;
  }

  /**
   * Fire and forget (cursors, typing): sent only if the room is open now,
   * never queued, no ack. Returns whether it was written.
   */
  sendVolatile(type, payload) {
    if (this.state !== States.OPEN) return false;
    return this._raw(payload === undefined ? { type } : { type, payload });
  }

  /** Set this client's presence status; kept and re-sent after reconnects. */
  setPresence(status) {
    this._presenceStatus = status;
    return this.sendVolatile("presence", { status });
  }

  /** Unacknowledged messages, oldest first. */
  get pending() {
    return this._outbox.map(({ id, type, payload }) => ({ id, type, payload }));
  }

  _forget(m) {
    this._byId.delete(m.id);
    const i = this._outbox.indexOf(m);
    if (i >= 0) this._outbox.splice(i, 1);
  }

  _scheduleFlush(delayMs) {
    if (this._flushTimer) clearTimeout(this._flushTimer);
    this._flushTimer = setTimeout(() => {
      this._flushTimer = null;
      this._flush();
    }, delayMs);
  }

  _flush() {
    if (this.state !== States.OPEN) return;
    const pausedMs = this._pausedUntil - now();
    if (pausedMs > 0) {
      // Timers may fire a little early: come back when the pause is over.
      this._scheduleFlush(Math.ceil(pausedMs) + 1);
      return;
    }
    for (const m of this._outbox) {
      if (m.sent) continue;
      const frame = { type: m.type, id: m.id };
      if (m.payload !== undefined) frame.payload = m.payload;
      if (!this._raw(frame)) return;
      m.sent = true;
    }
  }

  _raw(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // -- heartbeats -----------------------------------------------------------

  /** Measure the round trip now (the answer comes as a `latency` event). */
  ping() {
    return this._raw({ type: "ping", payload: { t: Math.round(now() * 1000) / 1000 } });
  }

  _startHeartbeat() {
    if (this._heartbeatTimer) clearInterval(this._heartbeatTimer);
    const period = this.options.heartbeatMs;
    this.ping();
    this._heartbeatTimer = setInterval(() => {
      const ws = this._ws;
      if (!ws) return;
      // Two periods without a single frame (pong included): the socket is
      // dead even if the OS has not noticed. Drop it and reconnect.
      if (now() - this._lastFrameAt > 2 * period + 1000) {
        this.dropConnection();
        return;
      }
      // One frame a period: the server takes a ping as a heartbeat too
      // (presence), and its pong is what tells this client the socket lives.
      this.ping();
    }, period);
  }
}

export default DormClient;
