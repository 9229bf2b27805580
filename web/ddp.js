// A DDP client over the page's own origin (`/websocket`), the protocol every Rocket.Chat
// realtime client speaks: method calls with promises, stream subscriptions that are sent
// again after a reconnect, answers to the server's pings, and reconnection with
// exponential backoff and jitter when the socket closes or goes silent.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;
// The server pings every 20 s; this long without a frame means the connection is dead.
const SILENCE_MS = 45000;

/** A Meteor error answered by a method call or a subscription. */
export class DdpError extends Error {
  constructor(err) {
    super(err?.reason || err?.message || String(err?.error ?? 'error'));
    this.error = err?.error;
    this.details = err?.details;
  }
}

export class Ddp {
  /**
   * @param {object} handlers onStatus(status, detail), onConnected(reconnected) (awaited before
   *   subscriptions are sent again), onEvent(collection, fields, id).
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/websocket`;
    this.nextId = 1;
    this.calls = new Map();
    this.subs = new Map();
    this.socket = null;
    this.attempt = 0;
    this.everConnected = false;
    // Counts DDP sessions; a subscription records the one it was last sent on.
    this.session = 0;
    this.stopped = false;
    this.retryTimer = null;
    this.silenceTimer = null;
    this.live = false;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  /** Closes for good (no reconnect); pending calls fail. */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.silenceTimer);
    if (this.socket) this.socket.close();
    this.socket = null;
    this.failPending('stopped');
    this.subs.clear();
  }

  /** Reconnects now instead of waiting for the backoff. */
  retryNow() {
    if (this.stopped || (this.socket && this.socket.readyState <= WebSocket.OPEN)) return;
    clearTimeout(this.retryTimer);
    this.open();
  }

  open() {
    this.handlers.onStatus?.('connecting');
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch (e) {
      this.scheduleRetry();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.send({ msg: 'connect', version: '1', support: ['1', 'pre2', 'pre1'] });
      this.heard();
    };
    socket.onmessage = (ev) => {
      this.heard();
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.receive(frame);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.live = false;
      clearTimeout(this.silenceTimer);
      this.failPending('disconnected');
      if (!this.stopped) this.scheduleRetry();
    };
  }

  heard() {
    clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(() => this.socket?.close(), SILENCE_MS);
  }

  scheduleRetry() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt += 1;
    this.handlers.onStatus?.('offline', { retryAt: Date.now() + delay });
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  failPending(why) {
    for (const { reject } of this.calls.values()) reject(new DdpError({ error: why, reason: `Connection ${why}` }));
    this.calls.clear();
  }

  send(frame) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  async receive(f) {
    switch (f.msg) {
      case 'connected': {
        const reconnected = this.everConnected;
        this.everConnected = true;
        this.session += 1;
        this.live = true;
        this.attempt = 0;
        try {
          await this.handlers.onConnected?.(reconnected);
        } catch (e) {
          console.warn('after connect', e);
        }
        for (const [id, s] of this.subs) {
          if (s.session === this.session) continue;
          s.session = this.session;
          this.send({ msg: 'sub', id, name: s.name, params: s.params });
        }
        this.handlers.onStatus?.('connected');
        break;
      }
      case 'ping':
        this.send(f.id ? { msg: 'pong', id: f.id } : { msg: 'pong' });
        break;
      case 'result': {
        const call = this.calls.get(f.id);
        if (!call) break;
        this.calls.delete(f.id);
        if (f.error) call.reject(new DdpError(f.error));
        else call.resolve(f.result);
        break;
      }
      case 'nosub': {
        const s = this.subs.get(f.id);
        if (s && f.error) {
          this.subs.delete(f.id);
          console.warn('subscription refused', s.name, s.params, f.error);
        }
        break;
      }
      case 'changed':
      case 'added':
        this.handlers.onEvent?.(f.collection, f.fields || {}, f.id);
        break;
      case 'failed':
        this.handlers.onStatus?.('failed');
        break;
      default:
        break;
    }
  }

  /** Calls a method; resolves with its result or rejects with a DdpError. */
  call(method, ...params) {
    return new Promise((resolve, reject) => {
      if (!this.live) {
        reject(new DdpError({ error: 'disconnected', reason: 'Not connected' }));
        return;
      }
      const id = String(this.nextId++);
      this.calls.set(id, { resolve, reject });
      this.send({ msg: 'method', id, method, params });
    });
  }

  /** Subscribes (and again after every reconnect until `unsubscribe`); returns its id. */
  subscribe(name, params) {
    const id = `s${this.nextId++}`;
    const sub = { name, params, session: null };
    this.subs.set(id, sub);
    if (this.live) {
      sub.session = this.session;
      this.send({ msg: 'sub', id, name, params });
    }
    return id;
  }

  unsubscribe(id) {
    if (!this.subs.delete(id)) return;
    this.send({ msg: 'unsub', id });
  }
}
