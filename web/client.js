// The web client's state and every call it makes to chatd, through the same public API other
// Rocket.Chat clients use: REST /api/v1 for login, registration and settings; DDP /websocket for
// the session (resume login), rooms, subscriptions, history, sending, typing and the streams.
// Views read `client.state` and re-render when `client.changed()` notifies them.

import { Ddp, DdpError } from './ddp.js';

// Where the login is kept across reloads: the keys Rocket.Chat's web client (Meteor) uses.
const TOKEN_KEY = 'Meteor.loginToken';
const USER_ID_KEY = 'Meteor.userId';
const EXPIRES_KEY = 'Meteor.loginTokenExpires';
// A login whose logout could not reach chatd, revoked at the page's next start.
const REVOKE_KEY = 'chatd.pendingLogout';

/** Messages per history page. */
export const PAGE = 50;
// A typing notice without a refresh disappears after this long.
const TYPING_TTL_MS = 15000;
// How often we repeat our own typing notice while typing goes on.
const TYPING_REPEAT_MS = 10000;

const STATUS_NAMES = ['offline', 'online', 'away', 'busy'];

/** A Rocket.Chat date (EJSON `{$date}`, ISO string or number) as milliseconds. */
export function ms(d) {
  if (d == null) return 0;
  if (typeof d === 'number') return d;
  if (typeof d === 'string') return Date.parse(d) || 0;
  if (typeof d === 'object' && '$date' in d) return Number(d.$date) || 0;
  return 0;
}

function randomId() {
  const chars = '23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz';
  const bytes = new Uint8Array(17);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => chars[b % chars.length]).join('');
}

async function sha256Hex(text) {
  if (!globalThis.crypto?.subtle) return null;
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** An error a person can read, from a REST answer or a DDP error. */
function readable(e) {
  if (e instanceof DdpError) return e.message;
  return e?.message || String(e);
}

export class Client {
  constructor() {
    this.listeners = new Set();
    // Counts state changes, so a view can tell it missed one.
    this.version = 0;
    this.state = {
      phase: 'starting', // starting | login | ready
      connection: 'connecting', // connecting | connected | offline
      retryAt: 0,
      registration: false,
      user: null,
      rooms: new Map(), // rid -> {room, sub}
      openRid: null,
      messages: new Map(), // rid -> {list: [...] oldest first, complete: bool, loading: bool}
      typing: new Map(), // rid -> Map(username -> expiresAt)
      presence: new Map(), // uid -> status name
      error: null,
    };
    this.roomSubs = [];
    this.typingSent = { rid: null, at: 0, timer: null };
    this.ddp = new Ddp({
      onStatus: (status, detail) => this.onStatus(status, detail),
      onConnected: (reconnected) => this.onConnected(reconnected),
      onEvent: (collection, fields, id) => this.onEvent(collection, fields, id),
    });
  }

  /** Registers a re-render callback; returns its removal. */
  listen(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed() {
    this.version += 1;
    for (const fn of this.listeners) fn();
  }

  set(patch) {
    Object.assign(this.state, patch);
    this.changed();
  }

  async start() {
    this.loadRegistration();
    this.revokePending();
    if (!localStorage.getItem(TOKEN_KEY)) this.set({ phase: 'login' });
    this.ddp.start();
  }

  async loadRegistration() {
    try {
      const query = encodeURIComponent(JSON.stringify({ _id: { $in: ['Accounts_RegistrationForm'] } }));
      const answer = await this.rest('GET', `settings.public?query=${query}`);
      const form = answer.settings?.find((s) => s._id === 'Accounts_RegistrationForm');
      this.set({ registration: form?.value === 'Public' });
    } catch {
      this.set({ registration: false });
    }
  }

  /** A REST call (as the stored login, or as `auth` = [userId, token]); rejects with the
   * server's error text. */
  async rest(method, endpoint, body, auth) {
    const headers = { Accept: 'application/json' };
    const [uid, token] = auth || [localStorage.getItem(USER_ID_KEY), localStorage.getItem(TOKEN_KEY)];
    if (token && uid) {
      headers['X-Auth-Token'] = token;
      headers['X-User-Id'] = uid;
    }
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(`/api/v1/${endpoint}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
    });
    let json = {};
    try {
      json = await resp.json();
    } catch {
      json = {};
    }
    if (!resp.ok || json.success === false) {
      const text = json.error === 'Unauthorized' ? 'Wrong username or password' : json.error || json.message;
      throw new Error(text || `Request failed (${resp.status})`);
    }
    return json;
  }

  onStatus(status, detail) {
    if (status === 'offline') this.set({ connection: 'offline', retryAt: detail?.retryAt || 0 });
    else if (status === 'connecting') this.set({ connection: this.state.connection === 'offline' ? 'offline' : 'connecting' });
    else if (status === 'connected') this.set({ connection: 'connected', retryAt: 0 });
  }

  /** Each new DDP session: resume the login, then fetch what changed while we were away. */
  async onConnected(reconnected) {
    const token = localStorage.getItem(TOKEN_KEY);
    if (!token) {
      if (this.state.phase !== 'login') this.set({ phase: 'login' });
      return;
    }
    try {
      await this.resume(token);
    } catch (e) {
      // Only the server's refusal ends the session; anything else (the connection dropping,
      // a failed request) is retried with the next connection.
      if (!(e instanceof DdpError) || String(e.error) !== '403') {
        if (this.state.phase === 'starting') this.set({ error: readable(e) });
        this.ddp.socket?.close();
        return;
      }
      this.forget();
      this.set({ phase: 'login', user: null, error: reconnected ? 'Your session has ended; please log in again' : null });
      return;
    }
    await this.loadRooms();
    if (reconnected && this.state.openRid) await this.catchUp(this.state.openRid);
  }

  async resume(token) {
    const result = await this.ddp.call('login', { resume: token });
    localStorage.setItem(USER_ID_KEY, result.id);
    if (result.tokenExpires) localStorage.setItem(EXPIRES_KEY, String(ms(result.tokenExpires)));
    let me = this.state.user;
    if (!me || me._id !== result.id) {
      const answer = await this.rest('GET', 'me');
      me = { _id: answer._id, username: answer.username, name: answer.name };
    }
    this.set({ user: me, phase: 'ready', error: null });
    this.subscribeUserStreams(me._id);
  }

  /** The user's own streams, once per login (the DDP client sends them again on reconnect). */
  subscribeUserStreams(uid) {
    if (this.userSubs) return;
    this.userSubs = [
      this.ddp.subscribe('stream-notify-user', [`${uid}/subscriptions-changed`, false]),
      this.ddp.subscribe('stream-notify-user', [`${uid}/rooms-changed`, false]),
      this.ddp.subscribe('stream-room-messages', ['__my_messages__', false]),
      this.ddp.subscribe('stream-notify-logged', ['user-status', false]),
    ];
  }

  forget() {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(USER_ID_KEY);
    localStorage.removeItem(EXPIRES_KEY);
    for (const id of [...(this.userSubs || []), ...this.roomSubs]) this.ddp.unsubscribe(id);
    this.userSubs = null;
    this.roomSubs = [];
  }

  async login(username, password) {
    this.set({ error: null });
    try {
      const digest = await sha256Hex(password);
      const body = digest
        ? { user: username, password: { digest, algorithm: 'sha-256' } }
        : { user: username, password };
      const answer = await this.rest('POST', 'login', body);
      localStorage.setItem(TOKEN_KEY, answer.data.authToken);
      localStorage.setItem(USER_ID_KEY, answer.data.userId);
      const me = answer.data.me || {};
      this.state.user = { _id: answer.data.userId, username: me.username || username, name: me.name };
      if (this.state.connection === 'connected') {
        await this.resume(answer.data.authToken);
        await this.loadRooms();
      } else {
        this.ddp.retryNow();
      }
    } catch (e) {
      this.set({ error: readable(e) });
    }
  }

  async register({ username, email, name, password }) {
    this.set({ error: null });
    try {
      await this.rest('POST', 'users.register', { username, email, name: name || username, pass: password });
    } catch (e) {
      this.set({ error: readable(e) });
      return;
    }
    await this.login(username, password);
  }

  async logout() {
    try {
      await this.ddp.call('logout');
    } catch (e) {
      // Not connected: revoke the token over REST instead, or at the next start of the page,
      // so it cannot be used again.
      const login = [localStorage.getItem(USER_ID_KEY), localStorage.getItem(TOKEN_KEY)];
      try {
        await this.rest('POST', 'logout', undefined, login);
      } catch {
        localStorage.setItem(REVOKE_KEY, JSON.stringify(login));
      }
    }
    this.forget();
    this.set({
      phase: 'login',
      user: null,
      rooms: new Map(),
      messages: new Map(),
      openRid: null,
      typing: new Map(),
      error: null,
    });
  }

  /** A logout that could not reach chatd: its token is revoked now. */
  async revokePending() {
    let login;
    try {
      login = JSON.parse(localStorage.getItem(REVOKE_KEY) || 'null');
    } catch {
      login = null;
    }
    if (!Array.isArray(login)) return;
    try {
      await this.rest('POST', 'logout', undefined, login);
      localStorage.removeItem(REVOKE_KEY);
    } catch {
      /* tried again at the next start */
    }
  }

  // ---- rooms -----------------------------------------------------------------------------

  async loadRooms() {
    const [rooms, subs] = await Promise.all([this.ddp.call('rooms/get'), this.ddp.call('subscriptions/get')]);
    const byRid = new Map();
    for (const room of Array.isArray(rooms) ? rooms : rooms?.update || []) byRid.set(room._id, { room, sub: null });
    const list = new Map();
    for (const sub of Array.isArray(subs) ? subs : subs?.update || []) {
      if (sub.open === false) continue;
      list.set(sub.rid, { room: byRid.get(sub.rid)?.room || { _id: sub.rid, t: sub.t }, sub });
    }
    this.set({ rooms: list });
    this.watchPresence();
    if (this.state.openRid && !list.has(this.state.openRid)) this.set({ openRid: null });
  }

  /** The other member of a direct-message room, by id, if we can tell. */
  dmPartner(entry) {
    const me = this.state.user?._id;
    const uids = entry?.room?.uids;
    if (entry?.room?.t !== 'd' || !Array.isArray(uids)) return null;
    return uids.find((u) => u !== me) || null;
  }

  async watchPresence() {
    const ids = [...this.state.rooms.values()].map((e) => this.dmPartner(e)).filter(Boolean);
    if (!ids.length) return;
    try {
      const answer = await this.rest('GET', `users.presence?ids=${ids.map(encodeURIComponent).join(',')}`);
      const presence = new Map(this.state.presence);
      for (const id of ids) presence.set(id, 'offline');
      for (const u of answer.users || []) presence.set(u._id, u.status);
      this.set({ presence });
    } catch {
      /* presence stays unknown until the stream says */
    }
  }

  /** The name shown for a room: a direct message's is the other person's username (as
   * Rocket.Chat shows it with UI_Use_Real_Name off), a room's its display name. */
  roomName(entry) {
    const sub = entry?.sub;
    const room = entry?.room;
    if ((sub?.t || room?.t) === 'd') return sub?.name || room?.usernames?.join(', ') || room?._id || '';
    return sub?.fname || sub?.name || room?.fname || room?.name || room?._id || '';
  }

  async createRoom(name, isPrivate) {
    const result = await this.ddp.call(isPrivate ? 'createPrivateGroup' : 'createChannel', name, []);
    await this.loadRooms();
    return result.rid;
  }

  async startDirect(username) {
    const result = await this.ddp.call('createDirectMessage', username);
    await this.loadRooms();
    return result.rid;
  }

  // ---- one room ------------------------------------------------------------------------------

  async openRoom(rid) {
    if (this.state.openRid === rid && this.state.messages.has(rid)) return;
    this.set({ openRid: rid });
    this.subscribeRoom(rid);
    // A room shown before is refreshed: its deletions (and anything sent while the page was
    // disconnected) reach only the open room live.
    if (this.state.messages.has(rid)) await this.catchUp(rid);
    else await this.loadOlder(rid);
    this.markRead(rid);
  }

  closeRoom() {
    for (const id of this.roomSubs.splice(0)) this.ddp.unsubscribe(id);
    this.set({ openRid: null });
  }

  subscribeRoom(rid) {
    for (const id of this.roomSubs.splice(0)) this.ddp.unsubscribe(id);
    this.roomSubs = [
      this.ddp.subscribe('stream-notify-room', [`${rid}/user-activity`, false]),
      this.ddp.subscribe('stream-notify-room', [`${rid}/deleteMessage`, false]),
    ];
  }

  roomMessages(rid) {
    let m = this.state.messages.get(rid);
    if (!m) {
      m = { list: [], complete: false, loading: false };
      this.state.messages.set(rid, m);
    }
    return m;
  }

  /** Loads the page of messages before the oldest one shown. */
  async loadOlder(rid) {
    const m = this.roomMessages(rid);
    if (m.loading || m.complete) return;
    m.loading = true;
    this.changed();
    try {
      const oldest = m.list.find((x) => !x.pending);
      const end = oldest ? { $date: ms(oldest.ts) } : null;
      const answer = await this.ddp.call('loadHistory', rid, end, PAGE, null);
      const page = (answer?.messages || []).slice().reverse();
      const known = new Set(m.list.map((x) => x._id));
      m.list = [...page.filter((x) => !known.has(x._id)), ...m.list];
      if (page.length < PAGE) m.complete = true;
    } catch (e) {
      this.set({ error: readable(e) });
    } finally {
      m.loading = false;
      this.changed();
    }
  }

  /** After a reconnect: the newest page again (edits, deletions, new messages), merged. */
  async catchUp(rid) {
    const m = this.roomMessages(rid);
    try {
      const answer = await this.ddp.call('loadHistory', rid, null, PAGE, null);
      const page = (answer?.messages || []).slice().reverse();
      if (!page.length) {
        m.list = m.list.filter((x) => x.pending);
      } else {
        const from = ms(page[0].ts);
        const older = m.list.filter((x) => !x.pending && ms(x.ts) < from);
        const pending = m.list.filter((x) => x.pending && !page.some((p) => p._id === x._id));
        m.list = [...older, ...page, ...pending];
      }
      this.changed();
      this.markRead(rid);
    } catch (e) {
      this.set({ error: readable(e) });
    }
  }

  upsertMessage(message) {
    const m = this.state.messages.get(message.rid);
    if (!m) return;
    const at = m.list.findIndex((x) => x._id === message._id);
    if (at >= 0) {
      m.list[at] = message;
    } else {
      // In time order; a message older than the first page shown is left to history.
      const ts = ms(message.ts);
      if (!m.complete && m.list.length && ts < ms(m.list[0].ts)) return;
      let i = m.list.length;
      while (i > 0 && (m.list[i - 1].pending || ms(m.list[i - 1].ts) > ts)) i -= 1;
      m.list.splice(i, 0, message);
    }
    m.list = m.list.slice();
  }

  removeMessage(rid, id) {
    const m = this.state.messages.get(rid);
    if (!m) return;
    m.list = m.list.filter((x) => x._id !== id);
  }

  async send(rid, text) {
    const msg = text.replace(/\s+$/, '');
    if (!msg.trim()) return;
    const m = this.roomMessages(rid);
    const me = this.state.user;
    const draft = { _id: randomId(), rid, msg, ts: { $date: Date.now() }, u: me, pending: true };
    m.list = [...m.list, draft];
    this.stopTyping();
    this.changed();
    try {
      const saved = await this.ddp.call('sendMessage', { _id: draft._id, rid, msg });
      if (saved && saved._id) this.upsertMessage(saved);
      this.changed();
    } catch (e) {
      m.list = m.list.filter((x) => x._id !== draft._id);
      this.set({ error: `Not sent: ${readable(e)}` });
      throw e;
    }
  }

  async edit(message, text) {
    await this.ddp.call('updateMessage', { _id: message._id, rid: message.rid, msg: text });
  }

  async remove(message) {
    await this.ddp.call('deleteMessage', { _id: message._id });
    this.removeMessage(message.rid, message._id);
    this.changed();
  }

  markRead(rid) {
    const entry = this.state.rooms.get(rid);
    if (!entry?.sub || (!entry.sub.unread && !entry.sub.alert)) return;
    entry.sub = { ...entry.sub, unread: 0, alert: false };
    this.changed();
    this.ddp.call('readMessages', rid).catch(() => {});
  }

  /** Our own typing notice: sent when typing starts, repeated while it goes on. */
  typing(rid) {
    const now = Date.now();
    const t = this.typingSent;
    clearTimeout(t.timer);
    t.timer = setTimeout(() => this.stopTyping(), 5000);
    if (t.rid === rid && now - t.at < TYPING_REPEAT_MS) return;
    t.rid = rid;
    t.at = now;
    this.notifyTyping(rid, true);
  }

  stopTyping() {
    const t = this.typingSent;
    clearTimeout(t.timer);
    if (!t.rid) return;
    this.notifyTyping(t.rid, false);
    t.rid = null;
  }

  notifyTyping(rid, on) {
    const username = this.state.user?.username;
    if (!username) return;
    this.ddp.call('stream-notify-room', `${rid}/user-activity`, username, on ? ['user-typing'] : [], {}).catch(() => {});
  }

  typingIn(rid) {
    const now = Date.now();
    const names = [];
    for (const [name, until] of this.state.typing.get(rid) || []) if (until > now) names.push(name);
    return names;
  }

  // ---- streams ---------------------------------------------------------------------------------

  onEvent(collection, fields) {
    const args = fields.args || [];
    const event = fields.eventName || '';
    switch (collection) {
      case 'stream-room-messages':
        for (const message of args.slice(0, 1)) this.onMessage(message);
        break;
      case 'stream-notify-room':
        this.onRoomEvent(event, args);
        break;
      case 'stream-notify-user':
        this.onUserEvent(event, args);
        break;
      case 'stream-notify-logged':
        if (event === 'user-status') this.onStatusEvent(args);
        break;
      default:
        break;
    }
  }

  onMessage(message) {
    if (!message || !message.rid || !message._id) return;
    this.upsertMessage(message);
    const entry = this.state.rooms.get(message.rid);
    if (entry) entry.room = { ...entry.room, lm: message.ts, lastMessage: message };
    if (message.u?.username && this.state.typing.get(message.rid)?.delete(message.u.username)) {
      /* the sender stopped typing */
    }
    if (message.rid === this.state.openRid && document.visibilityState === 'visible') this.markRead(message.rid);
    this.changed();
  }

  onRoomEvent(event, args) {
    const slash = event.lastIndexOf('/');
    const rid = event.slice(0, slash);
    const kind = event.slice(slash + 1);
    if (kind === 'deleteMessage') {
      const id = args[0]?._id;
      if (id) this.removeMessage(rid, id);
    } else if (kind === 'user-activity') {
      const [username, activities] = args;
      if (!username || username === this.state.user?.username) return;
      const map = new Map(this.state.typing.get(rid) || []);
      if (Array.isArray(activities) && activities.includes('user-typing')) map.set(username, Date.now() + TYPING_TTL_MS);
      else map.delete(username);
      this.state.typing.set(rid, map);
      clearTimeout(this.typingExpiry);
      this.typingExpiry = setTimeout(() => this.changed(), TYPING_TTL_MS + 50);
    }
    this.changed();
  }

  onUserEvent(event, args) {
    const [action, doc] = args;
    if (!doc) return;
    if (event.endsWith('/subscriptions-changed')) {
      const rid = doc.rid;
      if (!rid) return;
      if (action === 'removed' || doc.open === false) {
        this.state.rooms.delete(rid);
        if (this.state.openRid === rid) this.closeRoom();
      } else {
        const entry = this.state.rooms.get(rid);
        if (entry) entry.sub = doc;
        else this.state.rooms.set(rid, { room: { _id: rid, t: doc.t }, sub: doc });
        if (rid === this.state.openRid && doc.unread && document.visibilityState === 'visible') this.markRead(rid);
      }
      this.state.rooms = new Map(this.state.rooms);
      this.changed();
    } else if (event.endsWith('/rooms-changed')) {
      const entry = this.state.rooms.get(doc._id);
      if (action === 'removed') return;
      if (entry) entry.room = { ...entry.room, ...doc };
      else this.state.rooms.set(doc._id, { room: doc, sub: null });
      this.state.rooms = new Map(this.state.rooms);
      this.watchPresenceOf(doc);
      this.changed();
    }
  }

  watchPresenceOf(room) {
    const partner = this.dmPartner({ room });
    if (partner && !this.state.presence.has(partner)) this.watchPresence();
  }

  onStatusEvent(args) {
    for (const entry of args) {
      if (!Array.isArray(entry)) continue;
      const [uid, , code] = entry;
      if (typeof uid !== 'string') continue;
      const presence = new Map(this.state.presence);
      presence.set(uid, STATUS_NAMES[code] || 'offline');
      this.state.presence = presence;
    }
    this.changed();
  }
}
