// Switchboard's JavaScript client: one dependency-free ES module, served by
// the server at /client.js (types at /client.d.ts). It works in browsers
// and in Node 20+ (pass `WebSocket` in the options where there is no
// global one).
//
//   import { connect } from "/client.js";
//   const sb = connect("wss://example.com/ws", { getToken: async () => fetchMyToken() });
//   const reply = await sb.call("hello/greet", { name: "Ada" });
//   const lobby = await sb.join("chat:lobby", (data, meta) => show(data, meta.offset));
//
// Reconnects with exponential backoff and jitter; signs in again with a
// fresh token; rejoins every room with the offset and epoch it last saw, so
// no room message is lost across a reconnect (or it says so: the
// "recovered" event with `recovered: false`); calls made while
// disconnected wait (bounded) and go out after reconnecting, or fail at
// their timeout.

const DEFAULTS = {
  callTimeout: 10000,
  queueLimit: 1000,
  keepalive: 25000,
  minBackoff: 250,
  maxBackoff: 10000,
};

/** An error a call rejects with: the server's `{code, message, data}`. */
export class RpcError extends Error {
  constructor(code, message, data) {
    super(message);
    this.name = "RpcError";
    this.code = code;
    this.data = data;
  }
}

/** Opens a client to `url` (`ws://host:port/ws`). */
export function connect(url, options = {}) {
  return new Client(url, options);
}

class Client {
  constructor(url, options) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) {
      throw new Error("no WebSocket implementation: pass { WebSocket } in the options (Node < 22: run with --experimental-websocket)");
    }
    this.socket = null;
    this.open = false;
    this.closed = false;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer, frame, sent}
    this.queue = []; // frames to send once connected
    this.rooms = new Map(); // room -> Subscription
    this.handlers = new Map(); // method -> fn (server calls)
    this.listeners = new Map(); // event -> Set<fn>
    this.attempt = 0;
    this.keepaliveTimer = null;
    this.reconnectTimer = null;
    this.dial();
  }

  /** Calls `method`; resolves with its result, rejects with an RpcError. */
  call(method, params, { timeout, signal } = {}) {
    const id = `c${this.nextId++}`;
    const frame = JSON.stringify({ jsonrpc: "2.0", id, method, params });
    return new Promise((resolve, reject) => {
      const limit = timeout ?? this.options.callTimeout;
      const entry = { resolve, reject, frame, sent: false, timer: null };
      entry.timer = setTimeout(() => {
        this.pending.delete(id);
        this.dequeue(frame);
        reject(new RpcError(-32003, `no reply to ${method} within ${limit} ms`));
      }, limit);
      if (signal) {
        if (signal.aborted) {
          clearTimeout(entry.timer);
          return reject(new RpcError(-32003, `${method} was aborted`));
        }
        signal.addEventListener("abort", () => {
          if (this.pending.delete(id)) {
            clearTimeout(entry.timer);
            this.dequeue(frame);
            reject(new RpcError(-32003, `${method} was aborted`));
          }
        }, { once: true });
      }
      if (!this.open && this.queue.length >= this.options.queueLimit) {
        clearTimeout(entry.timer);
        return reject(new RpcError(-32006, `not connected, and ${this.options.queueLimit} calls wait already`));
      }
      this.pending.set(id, entry);
      this.send(frame);
    });
  }

  /** Sends a notification (no reply). */
  notify(method, params) {
    this.send(JSON.stringify({ jsonrpc: "2.0", method, params }));
  }

  /** Joins `room`; `onMessage(data, {room, offset})` gets each message. */
  async join(room, onMessage) {
    const existing = this.rooms.get(room);
    const subscription = existing || new Subscription(this, room, onMessage);
    if (!existing) this.rooms.set(room, subscription);
    try {
      const joined = await this.call("rpc.join", { room });
      subscription.epoch = joined.epoch;
      subscription.offset = Math.max(subscription.offset, joined.offset);
      return subscription;
    } catch (error) {
      if (!existing) this.rooms.delete(room);
      throw error;
    }
  }

  /** Publishes `data` to `room`; resolves with `{offset}`. */
  publish(room, data) {
    return this.call("rpc.publish", { room, data });
  }

  /** The members of `room`. */
  async presence(room) {
    return (await this.call("rpc.presence", { room })).members;
  }

  /** Answers the server's calls of `method` with `fn(params)` (may be async). */
  handle(method, fn) {
    this.handlers.set(method, fn);
  }

  /** Listens to `event`: connected, disconnected, reconnecting, error,
   *  recovered, or any pushed event (e.g. actions.changed). */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event)?.delete(fn);
  }

  /** Closes for good. */
  close() {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.keepaliveTimer);
    if (this.socket) this.socket.close(1000);
    for (const [, entry] of this.pending) {
      clearTimeout(entry.timer);
      entry.reject(new RpcError(-32003, "the client was closed"));
    }
    this.pending.clear();
    this.queue = [];
  }

  // ---- internals -------------------------------------------------------

  emit(event, ...args) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(...args);
      } catch (error) {
        if (event !== "error") this.emit("error", error);
      }
    }
  }

  send(frame) {
    if (this.open) {
      this.socket.send(frame);
    } else {
      this.queue.push(frame);
    }
  }

  dequeue(frame) {
    const at = this.queue.indexOf(frame);
    if (at >= 0) this.queue.splice(at, 1);
  }

  async token() {
    const { token, getToken, tokenUrl, tokenRequest } = this.options;
    if (getToken) return await getToken();
    if (tokenUrl) {
      // The server's POST /token, with the page's credentials (cookies).
      const response = await fetch(tokenUrl, { method: "POST", credentials: "include", ...tokenRequest });
      const body = await response.json().catch(() => ({}));
      if (!response.ok || !body.token) {
        throw new RpcError(body.code ?? -32001, body.message ?? `${tokenUrl} answered ${response.status}`);
      }
      return body.token;
    }
    return token;
  }

  async dial() {
    if (this.closed) return;
    let url = this.url;
    try {
      const token = await this.token();
      if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    } catch (error) {
      this.emit("error", error);
      return this.retry();
    }
    const socket = new this.WebSocket(url);
    this.socket = socket;
    socket.onopen = () => this.opened(socket);
    socket.onmessage = (event) => this.received(event.data);
    socket.onerror = () => {};
    socket.onclose = (event) => this.lost(socket, event);
  }

  async opened(socket) {
    if (socket !== this.socket) return;
    this.open = true;
    this.attempt = 0;
    const reconnected = this.wasOpen === true;
    this.wasOpen = true;
    // Rooms first (their replays come before anything live), then the
    // calls that waited.
    // (A room whose first join is still queued is joined by that call.)
    const rejoins = [...this.rooms.values()].filter((sub) => sub.epoch).map((sub) => sub.rejoin());
    const waiting = this.queue;
    this.queue = [];
    for (const frame of waiting) socket.send(frame);
    this.keepalive();
    this.emit("connected", { reconnected });
    await Promise.allSettled(rejoins);
  }

  keepalive() {
    clearInterval(this.keepaliveTimer);
    const every = this.options.keepalive;
    if (!every) return;
    this.keepaliveTimer = setInterval(() => {
      if (!this.open) return;
      this.call("rpc.ping", undefined, { timeout: every }).catch(() => {
        // No answer in a whole period: the socket is dead.
        if (this.socket) this.socket.close(4000);
      });
    }, every);
  }

  lost(socket, event) {
    if (socket !== this.socket) return;
    const wasOpen = this.open;
    this.open = false;
    this.socket = null;
    clearInterval(this.keepaliveTimer);
    // Calls sent on the lost socket get no reply: send them again (a call
    // is at most repeated, never lost; make actions idempotent where that
    // matters).
    for (const [, entry] of this.pending) {
      if (!this.queue.includes(entry.frame)) this.queue.push(entry.frame);
    }
    if (wasOpen) this.emit("disconnected", { code: event.code, reason: event.reason });
    this.retry();
  }

  retry() {
    if (this.closed) return;
    const { minBackoff, maxBackoff } = this.options;
    const ceiling = Math.min(maxBackoff, minBackoff * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.emit("reconnecting", { attempt: this.attempt, delay });
    this.reconnectTimer = setTimeout(() => this.dial(), delay);
  }

  received(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (error) {
      return this.emit("error", error);
    }
    if (Array.isArray(message)) {
      for (const one of message) this.dispatch(one);
    } else {
      this.dispatch(message);
    }
  }

  dispatch(message) {
    if (message.method === "rpc.message") {
      const { room, offset, data } = message.params;
      this.rooms.get(room)?.deliver(offset, data);
    } else if (message.method === "rpc.event") {
      const { event, data } = message.params;
      if (event === "token.expiring") this.refresh();
      if (event === "room.gap") this.rooms.get(data.room)?.rejoin();
      this.emit(event, data);
    } else if (message.method && message.id !== undefined) {
      this.answer(message);
    } else if (message.id !== undefined && message.id !== null) {
      const entry = this.pending.get(message.id);
      if (!entry) return;
      this.pending.delete(message.id);
      clearTimeout(entry.timer);
      if ("error" in message) {
        const { code, message: text, data } = message.error;
        entry.reject(new RpcError(code, text, data));
      } else {
        entry.resolve(message.result);
      }
    } else if (message.error) {
      this.emit("error", new RpcError(message.error.code, message.error.message, message.error.data));
    }
  }

  async answer({ id, method, params }) {
    const handler = this.handlers.get(method);
    let reply;
    if (!handler) {
      reply = { jsonrpc: "2.0", id, error: { code: -32601, message: `this client does not handle '${method}'` } };
    } else {
      try {
        reply = { jsonrpc: "2.0", id, result: (await handler(params)) ?? null };
      } catch (error) {
        const code = Number.isInteger(error?.code) ? error.code : 1;
        reply = { jsonrpc: "2.0", id, error: { code, message: String(error?.message ?? error), data: error?.data } };
      }
    }
    if (this.open) this.socket.send(JSON.stringify(reply));
  }

  async refresh() {
    try {
      const token = await this.token();
      if (token) await this.call("rpc.auth", { token });
    } catch (error) {
      this.emit("error", error);
    }
  }
}

/** A joined room: its last offset and epoch, kept across reconnects. */
class Subscription {
  constructor(client, room, onMessage) {
    this.client = client;
    this.room = room;
    this.onMessage = onMessage;
    this.offset = 0;
    this.epoch = null;
    this.left = false;
  }

  deliver(offset, data) {
    // A message at or below what was delivered came twice: skip it.
    if (offset <= this.offset) return;
    this.offset = offset;
    try {
      this.onMessage?.(data, { room: this.room, offset });
    } catch (error) {
      this.client.emit("error", error);
    }
  }

  async rejoin() {
    if (this.left || !this.epoch) return;
    const params = { room: this.room, since: this.offset, epoch: this.epoch };
    try {
      const joined = await this.client.call("rpc.join", params);
      const recovered = joined.recovered !== false;
      this.epoch = joined.epoch;
      if (!recovered) {
        // Offsets go on from where the room is now; what was missed is
        // gone, and the app is told.
        this.offset = joined.offset;
      }
      this.client.emit("recovered", { room: this.room, recovered, offset: joined.offset, epoch: joined.epoch });
    } catch (error) {
      this.client.emit("error", error);
    }
  }

  /** Leaves the room. */
  async leave() {
    this.left = true;
    this.client.rooms.delete(this.room);
    await this.client.call("rpc.leave", { room: this.room });
  }
}
