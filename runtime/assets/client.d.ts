// Types for Switchboard's JavaScript client (/client.js).

/** How to connect. */
export interface ConnectOptions {
  /** A token to sign in with (sent as ?token=). */
  token?: string;
  /** Called for a fresh token at every (re)connection and refresh. */
  getToken?: () => Promise<string> | string;
  /** The server's token endpoint (`/token`): POSTed with the page's
   *  credentials for a fresh one-time token at every (re)connection. */
  tokenUrl?: string;
  /** Extra `fetch` options for `tokenUrl` (e.g. headers outside a browser). */
  tokenRequest?: RequestInit;
  /** A WebSocket implementation where there is no global one. */
  WebSocket?: typeof WebSocket;
  /** Default call timeout, ms (10000). */
  callTimeout?: number;
  /** Most calls waiting while disconnected (1000). */
  queueLimit?: number;
  /** Ping period, ms; 0 turns keepalive off (25000). */
  keepalive?: number;
  /** First reconnection delay, ms (250); doubled, with jitter. */
  minBackoff?: number;
  /** Longest reconnection delay, ms (10000). */
  maxBackoff?: number;
}

/** What a call rejects with: the server's error object. */
export class RpcError extends Error {
  code: number;
  data?: unknown;
}

/** Where a room message sits in its room. */
export interface MessageMeta {
  room: string;
  offset: number;
}

/** A joined room, kept (and rejoined with recovery) across reconnects. */
export interface Subscription {
  readonly room: string;
  /** The last offset delivered. */
  readonly offset: number;
  /** The room's epoch. */
  readonly epoch: string | null;
  leave(): Promise<void>;
}

/** A room member, as `presence` lists it. */
export interface Member {
  user: string | null;
  conn: number;
}

/** What the client tells the app about its connection and rooms. */
export interface ClientEvents {
  connected: { reconnected: boolean };
  disconnected: { code: number; reason: string };
  reconnecting: { attempt: number; delay: number };
  error: unknown;
  /** After a rejoin: whether every missed message was replayed. */
  recovered: { room: string; recovered: boolean; offset: number; epoch: string };
  [pushed: string]: unknown;
}

/** A connection to a Switchboard server. */
export interface Client {
  call<T = unknown>(method: string, params?: unknown, options?: { timeout?: number; signal?: AbortSignal }): Promise<T>;
  notify(method: string, params?: unknown): void;
  join(room: string, onMessage: (data: unknown, meta: MessageMeta) => void): Promise<Subscription>;
  publish(room: string, data: unknown): Promise<{ offset: number }>;
  presence(room: string): Promise<Member[]>;
  /** Answers the server's calls of `method`. */
  handle(method: string, fn: (params: unknown) => unknown | Promise<unknown>): void;
  /** Listens; returns a function that stops listening. */
  on<K extends keyof ClientEvents>(event: K, fn: (data: ClientEvents[K]) => void): () => void;
  close(): void;
}

/** Opens a client to `url` (`ws://host:port/ws`). */
export function connect(url: string, options?: ConnectOptions): Client;
