// The web client's views (preact components written with htm, no build step). They read the
// client's state and call its operations; names and roles follow the accessibility contract
// the browser tests use (labels, `nav` "Rooms", `log` "Messages", one `article` per message).

import { Component, h } from './vendor/preact.mjs';
import { useEffect, useLayoutEffect, useMemo, useRef, useState, useReducer } from './vendor/hooks.mjs';
import htm from './vendor/htm.mjs';
import { ms } from './client.js';
import { renderMarkdown } from './markdown.js';

const html = htm.bind(h);

/** Re-renders the calling component whenever the client's state changes. The listener is
 * registered as the first render commits (a layout effect, not a deferred one), and a change
 * made between that render and the registration re-renders at once: none is ever missed. */
function useClient(client) {
  const [, bump] = useReducer((n) => n + 1, 0);
  const seen = client.version;
  useLayoutEffect(() => {
    const stop = client.listen(bump);
    if (client.version !== seen) bump();
    return stop;
  }, [client]);
  return client.state;
}

function ErrorText({ text }) {
  return text ? html`<p class="error" role="alert">${text}</p>` : null;
}

// ---- login and registration --------------------------------------------------------------------

function LoginView({ client, state }) {
  const [mode, setMode] = useState('login');
  const [busy, setBusy] = useState(false);
  const form = useRef({});
  const field = (name) => (e) => {
    form.current[name] = e.currentTarget.value;
  };
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    const f = form.current;
    if (mode === 'login') await client.login(f.username || '', f.password || '');
    else await client.register({ username: f.username || '', email: f.email || '', name: f.name || '', password: f.password || '' });
    setBusy(false);
  };
  const registering = mode === 'register';
  return html`
    <main class="login">
      <form class="card" onSubmit=${submit} aria-labelledby="login-title">
        <h1 id="login-title">${registering ? 'Create an account' : 'Log in to chatd'}</h1>
        <label for="login-username">Username</label>
        <input id="login-username" name="username" autocomplete="username" required autofocus onInput=${field('username')} />
        ${registering &&
        html`
          <label for="login-email">Email</label>
          <input id="login-email" name="email" type="email" autocomplete="email" required onInput=${field('email')} />
          <label for="login-name">Name</label>
          <input id="login-name" name="name" autocomplete="name" onInput=${field('name')} />
        `}
        <label for="login-password">Password</label>
        <input
          id="login-password"
          name="password"
          type="password"
          autocomplete=${registering ? 'new-password' : 'current-password'}
          required
          onInput=${field('password')}
        />
        <${ErrorText} text=${state.error} />
        <button type="submit" class="primary" disabled=${busy}>${registering ? 'Register' : 'Log in'}</button>
        ${state.registration &&
        html`<button type="button" class="link" onClick=${() => {
          client.set({ error: null });
          setMode(registering ? 'login' : 'register');
        }}>
          ${registering ? 'I have an account' : 'Create an account'}
        </button>`}
      </form>
    </main>
  `;
}

// ---- dialogs -----------------------------------------------------------------------------------

function Dialog({ title, onClose, children, onSubmit }) {
  const ref = useRef(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    const cancel = (e) => {
      e.preventDefault();
      onClose();
    };
    d?.addEventListener('cancel', cancel);
    return () => d?.removeEventListener('cancel', cancel);
  }, []);
  return html`
    <dialog ref=${ref} aria-labelledby="dialog-title">
      <form onSubmit=${onSubmit}>
        <h2 id="dialog-title">${title}</h2>
        ${children}
      </form>
    </dialog>
  `;
}

/** Runs a dialog's action that yields a room id, then closes the dialog and opens the room. */
async function openCreated(action, onClose, setError) {
  try {
    const rid = await action();
    onClose();
    location.hash = `#/room/${rid}`;
  } catch (err) {
    setError(err.message);
  }
}

function CreateRoomDialog({ client, onClose }) {
  const [error, setError] = useState(null);
  const name = useRef(null);
  const priv = useRef(null);
  const submit = async (e) => {
    e.preventDefault();
    await openCreated(() => client.createRoom(name.current.value.trim(), priv.current.checked), onClose, setError);
  };
  return html`
    <${Dialog} title="Create room" onClose=${onClose} onSubmit=${submit}>
      <label for="create-name">Name</label>
      <input id="create-name" ref=${name} required autofocus autocomplete="off" />
      <label class="check"><input type="checkbox" ref=${priv} /> Private</label>
      <${ErrorText} text=${error} />
      <div class="buttons">
        <button type="button" onClick=${onClose}>Cancel</button>
        <button type="submit" class="primary">Create</button>
      </div>
    <//>
  `;
}

function DirectDialog({ client, onClose }) {
  const [error, setError] = useState(null);
  const input = useRef(null);
  const state = client.state;
  const known = new Set();
  for (const m of state.messages.values()) for (const x of m.list) if (x.u?.username) known.add(x.u.username);
  for (const e of state.rooms.values()) if (e.room?.t === 'd') for (const u of e.room.usernames || []) known.add(u);
  known.delete(state.user?.username);
  const submit = async (e) => {
    e.preventDefault();
    const username = input.current.value.trim().replace(/^@/, '');
    await openCreated(() => client.startDirect(username), onClose, setError);
  };
  return html`
    <${Dialog} title="New direct message" onClose=${onClose} onSubmit=${submit}>
      <label for="dm-username">Username</label>
      <input id="dm-username" ref=${input} list="dm-known" required autofocus autocomplete="off" />
      <datalist id="dm-known">${[...known].sort().map((u) => html`<option value=${u} />`)}</datalist>
      <${ErrorText} text=${error} />
      <div class="buttons">
        <button type="button" onClick=${onClose}>Cancel</button>
        <button type="submit" class="primary">Start</button>
      </div>
    <//>
  `;
}

// ---- the room list -----------------------------------------------------------------------------

function Presence({ status }) {
  if (!status) return null;
  return html`<span class=${`presence presence-${status}`} role="img" aria-label=${status}></span>`;
}

// A padlock drawn here (emoji fonts are not everywhere).
const LOCK = html`<svg viewBox="0 0 16 16" width="12" height="12" fill="currentColor"><path d="M4 7V5a4 4 0 1 1 8 0v2h1v8H3V7h1zm2 0h4V5a2 2 0 1 0-4 0v2z" /></svg>`;

function RoomList({ client, state }) {
  const entries = [...state.rooms.values()].sort((a, b) => {
    const at = (e) => Math.max(ms(e.room?.lm), ms(e.sub?.ts), ms(e.room?._updatedAt));
    return at(b) - at(a) || client.roomName(a).localeCompare(client.roomName(b));
  });
  return html`
    <nav aria-label="Rooms" class="rooms">
      <ul>
        ${entries.map((e) => {
          const rid = e.sub?.rid || e.room._id;
          const unread = e.sub?.unread || 0;
          const partner = client.dmPartner(e);
          const kind = e.room?.t === 'd' ? '@' : e.room?.t === 'p' ? LOCK : '#';
          return html`
            <li key=${rid}>
              <a href=${`#/room/${rid}`} aria-current=${state.openRid === rid ? 'page' : undefined} class=${unread ? 'unread' : ''}>
                <span class="name">${client.roomName(e)}</span>
                <span class="kind" aria-hidden="true">${kind}</span>
                ${partner && html`<${Presence} status=${state.presence.get(partner) || 'offline'} />`}
                ${unread > 0 && html`<span class="badge" role="img" aria-label=${`${unread} unread`}>${unread}</span>`}
              </a>
            </li>
          `;
        })}
      </ul>
      ${entries.length === 0 && html`<p class="empty">No rooms yet: create one, or start a direct message.</p>`}
    </nav>
  `;
}

function Sidebar({ client, state, onDialog }) {
  return html`
    <aside class="sidebar">
      <header class="me">
        <span class="who" title=${state.user?.name || ''}>${state.user?.username}</span>
        <button type="button" onClick=${() => client.logout()}>Log out</button>
      </header>
      <div class="actions">
        <button type="button" onClick=${() => onDialog('create')}>Create room</button>
        <button type="button" onClick=${() => onDialog('direct')}>New direct message</button>
      </div>
      <${RoomList} client=${client} state=${state} />
    </aside>
  `;
}

// ---- one room ----------------------------------------------------------------------------------

const SYSTEM_TEXT = {
  uj: 'joined the room',
  ul: 'left the room',
  ut: 'joined the conversation',
  au: (m) => `added ${m.msg}`,
  ru: (m) => `removed ${m.msg}`,
  r: (m) => `changed the room name to ${m.msg}`,
  rm: 'deleted a message',
  room_changed_topic: (m) => `changed the topic to ${m.msg}`,
  room_changed_announcement: (m) => `changed the announcement to ${m.msg}`,
  room_changed_description: (m) => `changed the description to ${m.msg}`,
  'subscription-role-added': (m) => `made ${m.msg} ${m.role || ''}`.trim(),
  'subscription-role-removed': (m) => `removed ${m.role || 'a role'} from ${m.msg}`,
  message_pinned: 'pinned a message',
  'room-set-read-only': 'made the room read-only',
  'room-removed-read-only': 'made the room writable',
  'room-archived': 'archived the room',
  'room-unarchived': 'unarchived the room',
  'user-muted': (m) => `muted ${m.msg}`,
  'user-unmuted': (m) => `unmuted ${m.msg}`,
};

function systemText(m) {
  const t = SYSTEM_TEXT[m.t];
  if (typeof t === 'function') return t(m);
  return t || m.msg;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function Attachments({ message }) {
  const list = message.attachments || [];
  if (!list.length) return null;
  return html`
    <ul class="attachments">
      ${list.map((a) => {
        const link = a.title_link || a.image_url || a.audio_url || a.video_url;
        const safe = typeof link === 'string' && (link.startsWith('/') || /^https?:/i.test(link)) ? link : null;
        return html`
          <li>
            ${a.image_url && safe
              ? html`<a href=${safe} target="_blank" rel="noopener noreferrer"><img src=${a.image_preview ? `data:image/jpeg;base64,${a.image_preview}` : a.image_url} alt=${a.title || 'image'} loading="lazy" /></a>`
              : safe
                ? html`<a href=${safe} target="_blank" rel="noopener noreferrer">${a.title || safe}</a>`
                : html`<span>${a.title || a.text || ''}</span>`}
            ${a.description && html`<p>${a.description}</p>`}
          </li>
        `;
      })}
    </ul>
  `;
}

function Reactions({ message }) {
  const entries = Object.entries(message.reactions || {});
  if (!entries.length) return null;
  return html`
    <ul class="reactions" aria-label="Reactions">
      ${entries.map(([emoji, r]) => {
        const names = r?.usernames || [];
        return html`<li title=${names.join(', ')} aria-label=${`${emoji} by ${names.join(', ')}`}>${emoji} ${names.length}</li>`;
      })}
    </ul>
  `;
}

function MessageView({ client, message, mine }) {
  const [mode, setMode] = useState('view'); // view | edit | confirm
  const [error, setError] = useState(null);
  const editRef = useRef(null);
  useEffect(() => {
    if (mode === 'edit') editRef.current?.focus();
  }, [mode]);
  // Parsed once per text, not on every render of the room.
  const rendered = useMemo(() => ({ __html: renderMarkdown(message.msg) }), [message.msg]);
  const ts = ms(message.ts);
  const author = message.u || {};
  if (message.t) {
    return html`
      <article class="message system" data-id=${message._id}>
        <span class="author">${author.username}</span> <span class="text">${systemText(message)}</span>
        <time datetime=${new Date(ts).toISOString()} title=${dayFormat.format(ts)}>${timeFormat.format(ts)}</time>
      </article>
    `;
  }
  const save = async () => {
    const text = editRef.current.value;
    if (text.trim() === message.msg.trim()) return setMode('view');
    try {
      await client.edit(message, text);
      setMode('view');
      setError(null);
    } catch (e) {
      setError(e.message);
    }
  };
  const remove = async () => {
    try {
      await client.remove(message);
    } catch (e) {
      setError(e.message);
      setMode('view');
    }
  };
  const editKey = (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      save();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      setMode('view');
    }
  };
  return html`
    <article
      class=${`message${message.pending ? ' pending' : ''}${mine ? ' mine' : ''}`}
      data-id=${message._id}
      tabindex=${mine ? '-1' : undefined}
    >
      <header>
        <span class="author">${author.username}</span>
        ${author.name && author.name !== author.username && html`<span class="realname">${author.name}</span>`}
        <time datetime=${new Date(ts).toISOString()} title=${dayFormat.format(ts)}>${timeFormat.format(ts)}</time>
        ${message.editedAt && html`<span class="edited">(edited)</span>`}
        ${message.pending && html`<span class="sending">sending…</span>`}
      </header>
      ${mode === 'edit'
        ? html`
            <div class="edit">
              <textarea aria-label="Edit message" ref=${editRef} onKeyDown=${editKey} defaultValue=${message.msg}>${message.msg}</textarea>
              <div class="buttons">
                <button type="button" onClick=${() => setMode('view')}>Cancel</button>
                <button type="button" class="primary" onClick=${save}>Save</button>
              </div>
            </div>
          `
        : html`<div class="body" dangerouslySetInnerHTML=${rendered}></div>`}
      <${Attachments} message=${message} />
      <${Reactions} message=${message} />
      ${message.tcount > 0 && html`<p class="thread">${message.tcount} ${message.tcount === 1 ? 'reply' : 'replies'}</p>`}
      <${ErrorText} text=${error} />
      ${mine &&
      !message.pending &&
      mode === 'view' &&
      html`<div class="tools">
        <button type="button" onClick=${() => setMode('edit')}>Edit</button>
        <button type="button" onClick=${() => setMode('confirm')}>Delete</button>
      </div>`}
      ${mode === 'confirm' &&
      html`<div class="tools confirm">
        <span>Delete this message?</span>
        <button type="button" onClick=${() => setMode('view')}>Cancel</button>
        <button type="button" class="danger" onClick=${remove}>Yes, delete</button>
      </div>`}
    </article>
  `;
}

/** A message re-renders only when it changed (messages are replaced, never mutated), so a new
 * message costs one article, not the whole room. */
class MessageItem extends Component {
  shouldComponentUpdate(next) {
    return next.message !== this.props.message || next.mine !== this.props.mine;
  }

  render(props) {
    return h(MessageView, props);
  }
}

function typingText(names) {
  if (!names.length) return '';
  if (names.length === 1) return `${names[0]} is typing`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing`;
  return `${names.length} people are typing`;
}

function Composer({ client, rid }) {
  const ref = useRef(null);
  const drafts = useRef(new Map());
  useEffect(() => {
    if (!ref.current) return;
    ref.current.value = drafts.current.get(rid) || '';
    ref.current.focus();
  }, [rid]);
  const send = async () => {
    const text = ref.current.value;
    if (!text.trim()) return;
    ref.current.value = '';
    drafts.current.delete(rid);
    try {
      await client.send(rid, text);
    } catch {
      if (!ref.current.value) ref.current.value = text;
    }
  };
  const key = (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  };
  const input = (e) => {
    drafts.current.set(rid, e.currentTarget.value);
    if (e.currentTarget.value) client.typing(rid);
    else client.stopTyping();
  };
  return html`
    <form class="composer" onSubmit=${(e) => {
      e.preventDefault();
      send();
    }}>
      <textarea ref=${ref} aria-label="Message" rows="1" placeholder="Message" onKeyDown=${key} onInput=${input}></textarea>
      <button type="submit" class="primary">Send</button>
    </form>
  `;
}

function RoomView({ client, state }) {
  const rid = state.openRid;
  const entry = state.rooms.get(rid);
  const messages = state.messages.get(rid) || { list: [], complete: false, loading: true };
  const log = useRef(null);
  const stick = useRef(true);
  const anchor = useRef(null);
  const me = state.user?._id;
  useLayoutEffect(() => {
    stick.current = true;
    anchor.current = null;
  }, [rid]);
  const shown = useRef(null);
  useLayoutEffect(() => {
    const el = log.current;
    // Scroll work (which makes the browser lay the room out) only when the messages changed.
    if (!el || (shown.current === messages.list && !messages.loading)) return;
    shown.current = messages.list;
    if (anchor.current !== null) {
      el.scrollTop = el.scrollHeight - anchor.current;
      anchor.current = null;
    } else if (stick.current) {
      el.scrollTop = el.scrollHeight;
    }
    // A first page shorter than the view: load more until it scrolls or the start shows.
    if (el.scrollHeight <= el.clientHeight + 4 && !messages.complete && !messages.loading) older();
  });
  const older = () => {
    const el = log.current;
    if (!el || messages.loading || messages.complete) return;
    anchor.current = el.scrollHeight - el.scrollTop;
    client.loadOlder(rid);
  };
  const scrolled = () => {
    const el = log.current;
    if (!el) return;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 60;
    if (el.scrollTop < 200) older();
  };
  const partner = client.dmPartner(entry);
  const names = client.typingIn(rid);
  return html`
    <section class="room" aria-labelledby="room-title">
      <header class="room-header">
        <a class="back" href="#/" aria-label="Back to rooms">‹</a>
        <h1 id="room-title">${client.roomName(entry)}</h1>
        ${partner && html`<${Presence} status=${state.presence.get(partner) || 'offline'} />`}
        ${entry?.room?.topic && html`<p class="topic">${entry.room.topic}</p>`}
      </header>
      <div class="messages" role="log" aria-label="Messages" ref=${log} onScroll=${scrolled} tabindex="0">
        ${messages.complete ? html`<p class="start">This is the start of the conversation.</p>` : null}
        ${messages.loading ? html`<p class="loading" role="status">Loading messages…</p>` : null}
        ${messages.list.map(
          (m) => html`<${MessageItem} key=${m._id} client=${client} message=${m} mine=${m.u?._id === me} />`,
        )}
      </div>
      <div class="typing" aria-live="polite">${typingText(names)}</div>
      <${Composer} client=${client} rid=${rid} />
    </section>
  `;
}

function Welcome({ state }) {
  return html`
    <section class="room welcome">
      <h1>Welcome, ${state.user?.username}</h1>
      <p>Pick a room on the left, create one, or start a direct message.</p>
    </section>
  `;
}

// ---- the connection ----------------------------------------------------------------------------

function ConnectionBanner({ client, state }) {
  const [, tick] = useReducer((n) => n + 1, 0);
  useEffect(() => {
    if (state.connection !== 'offline') return undefined;
    const timer = setInterval(tick, 1000);
    return () => clearInterval(timer);
  }, [state.connection]);
  if (state.connection === 'connected' || state.phase === 'starting') return null;
  const wait = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
  return html`
    <div class="banner" role="status">
      ${state.connection === 'offline'
        ? html`Connection lost. ${wait > 0 ? `Reconnecting in ${wait} s…` : 'Reconnecting…'}
            <button type="button" onClick=${() => client.ddp.retryNow()}>Reconnect now</button>`
        : 'Connecting…'}
    </div>
  `;
}

// ---- the page ----------------------------------------------------------------------------------

function roomFromHash() {
  const m = /^#\/room\/([^/?#]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

export function App({ client }) {
  const state = useClient(client);
  const [dialog, setDialog] = useState(null);
  useEffect(() => {
    const follow = () => {
      const rid = roomFromHash();
      if (rid && client.state.rooms.has(rid)) client.openRoom(rid);
      else if (!rid && client.state.openRid) client.closeRoom();
    };
    window.addEventListener('hashchange', follow);
    return () => window.removeEventListener('hashchange', follow);
  }, [client]);
  // A room named in the address opens once the room list has it (after a reload, say).
  useEffect(() => {
    const rid = roomFromHash();
    if (state.phase === 'ready' && rid && rid !== state.openRid && state.rooms.has(rid)) client.openRoom(rid);
  }, [state.phase, state.rooms]);
  useEffect(() => {
    let unread = 0;
    for (const e of state.rooms.values()) unread += e.sub?.unread || 0;
    document.title = unread ? `(${unread}) chatd` : 'chatd';
  });
  useEffect(() => {
    const seen = () => {
      if (document.visibilityState === 'visible' && client.state.openRid) client.markRead(client.state.openRid);
    };
    document.addEventListener('visibilitychange', seen);
    return () => document.removeEventListener('visibilitychange', seen);
  }, [client]);

  if (state.phase === 'starting') {
    return html`<main class="splash"><p role="status">Connecting to chatd…</p><${ConnectionBanner} client=${client} state=${state} /></main>`;
  }
  if (state.phase === 'login') {
    return html`<${ConnectionBanner} client=${client} state=${state} /><${LoginView} client=${client} state=${state} />`;
  }
  return html`
    <div class="app" data-view=${state.openRid ? 'room' : 'rooms'}>
      <${ConnectionBanner} client=${client} state=${state} />
      <${Sidebar} client=${client} state=${state} onDialog=${setDialog} />
      ${state.openRid ? html`<${RoomView} client=${client} state=${state} />` : html`<${Welcome} state=${state} />`}
      ${state.error && html`<div class="toast"><${ErrorText} text=${state.error} /><button type="button" onClick=${() => client.set({ error: null })}>Dismiss</button></div>`}
      ${dialog === 'create' && html`<${CreateRoomDialog} client=${client} onClose=${() => setDialog(null)} />`}
      ${dialog === 'direct' && html`<${DirectDialog} client=${client} onClose=${() => setDialog(null)} />`}
    </div>
  `;
}
