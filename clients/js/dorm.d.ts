// Types of the Dorm JavaScript client (dorm.js), wire protocol v1.

export declare const VERSION: string;

export declare const CloseCodes: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  POLICY_VIOLATION: 1008;
  MESSAGE_TOO_BIG: 1009;
  TRY_AGAIN_LATER: 1013;
  BAD_REQUEST: 4400;
  UNAUTHORIZED: 4401;
  OVER_BUDGET: 4402;
  FORBIDDEN: 4403;
  NOT_FOUND: 4404;
  ROOM_FULL: 4409;
  TOO_MANY_CONNECTIONS: 4429;
  HEARTBEAT_TIMEOUT: 4000;
}>;

export declare const TERMINAL_CODES: readonly number[];

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export declare const States: Readonly<{
  IDLE: "idle";
  CONNECTING: "connecting";
  OPEN: "open";
  RECONNECTING: "reconnecting";
  CLOSED: "closed";
}>;

/** What `refreshToken` may return: a new token, credentials, or null to stop. */
export type Credentials = string | { token?: string | null; userId?: string } | null | undefined;

export interface DormClientOptions {
  /** Room id: [A-Za-z0-9_-]{1,64}. */
  room: string;
  /** ws:// or wss:// origin of the server; defaults to the page's host in a browser. */
  url?: string;
  /** A JWT from POST /api/rooms/<room>/token. */
  token?: string;
  /** Anonymous identity (development servers only). */
  userId?: string;
  /** Called on close code 4401; return a new token (or null to stop). */
  refreshToken?: (info: { code: number; reason: string; room: string; attempt: number }) => Promise<Credentials> | Credentials;
  /** Resume after this seq (for example one stored across app restarts). */
  since?: number;
  /** A WebSocket constructor (React Native and browsers have a global one). */
  WebSocket?: new (url: string) => WebSocket;
  /** Backoff before reconnect attempt n: min(max, base * 2^n), half of it random. */
  backoffBaseMs?: number;
  /** The backoff cap, jitter included (default 30 000). */
  backoffMaxMs?: number;
  /** Period of ping (latency) and heartbeat (presence) frames (default 15 000). */
  heartbeatMs?: number;
  connectTimeoutMs?: number;
  /** How often a message answered with `error: internal` is retried (default 3). */
  internalRetries?: number;
  /** Prefix of generated message ids (default: random per client). */
  idPrefix?: string;
  random?: () => number;
}

/** A message as the server broadcasts it, or an optimistic local copy. */
export interface RoomEvent<P = unknown> {
  type: string;
  seq?: number;
  userId: string;
  payload?: P;
  ts?: number;
  /** Optimistic local copies only. */
  id?: string;
  pending?: true;
}

export interface Ack<P = unknown> {
  id: string;
  /** Absent for ephemeral messages. */
  seq?: number;
  type: string;
  payload: P;
}

export interface Reject<P = unknown> {
  id: string;
  type: string;
  payload: P;
  reason: string;
  detail?: string;
  error: DormError;
}

export interface Member {
  userId: string;
  status: string;
}

export interface Welcome {
  type: "welcome";
  room: string;
  kind: string;
  userId: string;
  connectionId: string;
  seq: number;
  resumed: boolean;
  state?: unknown;
  presence: Member[];
}

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  code?: number;
  reason?: string;
  attempt?: number;
  delayMs?: number;
  url?: string;
  resumed?: boolean;
  seq?: number;
  refreshing?: boolean;
  terminal?: boolean;
}

export interface ClientEvents {
  state: StateChange;
  welcome: Welcome;
  reset: { state: unknown; seq: number };
  ack: Ack;
  reject: Reject;
  latency: { ms: number };
  members: Member[];
  error: { type: "error"; reason: string; detail?: string };
  close: { type: "close"; code: number; reason: string };
  rate_limited: { type: "rate_limited"; retryAfterMs: number; id?: string };
  user_joined: { type: "user_joined"; userId: string; connectionId: string; at: number };
  user_left: { type: "user_left"; userId: string; connectionId: string; code: number; reason: string };
  "*": Record<string, unknown>;
}

export type Pending<T> = Promise<T> & { readonly id: string };

export declare class DormError extends Error {
  reason: string;
  detail?: string;
  id?: string;
  code?: number;
  type?: string;
  payload?: unknown;
}

export declare function backoffDelay(
  attempt: number,
  options?: { baseMs?: number; maxMs?: number; random?: () => number },
): number;

export declare class DormClient {
  constructor(options: DormClientOptions);
  readonly room: string;
  readonly state: ConnectionState;
  readonly kind: string | null;
  readonly userId: string | null;
  readonly connectionId: string | null;
  readonly latencyMs: number | null;
  readonly members: Member[];
  /** Every durable event up to this seq was seen: the next `since`. */
  readonly lastSeq: number | null;
  readonly url: string;
  readonly pending: { id: string; type: string; payload: unknown }[];

  on<K extends keyof ClientEvents>(type: K, fn: (event: ClientEvents[K]) => void): () => void;
  on<P = unknown>(type: string, fn: (event: RoomEvent<P>) => void): () => void;
  once<K extends keyof ClientEvents>(type: K, fn: (event: ClientEvents[K]) => void): () => void;
  once<P = unknown>(type: string, fn: (event: RoomEvent<P>) => void): () => void;

  connect(): this;
  close(code?: number, reason?: string): void;
  dropConnection(): void;
  /** Rejoin without `since` for a full snapshot (a `reset` event follows). */
  resync(): void;

  nextId(): string;
  send<P = unknown>(type: string, payload?: P, options?: { id?: string; optimistic?: boolean }): Pending<Ack<P>>;
  sendVolatile(type: string, payload?: unknown): boolean;
  setPresence(status: string): boolean;
  ping(): boolean;
}

export default DormClient;
