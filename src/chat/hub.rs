//! The per-shard hub (one per shard, used only on that shard's thread): local sessions, which
//! local users belong to which rooms, stream subscriptions, and fan-out of change-feed events.
//!
//! Each change arrives here at most once per shard (the tailer routes it); every frame is
//! serialized once per shard and the same bytes are queued to every interested local session.
//! A method that wrote to the store answers its client only after this shard has applied the
//! write's change ([`Hub::wait_applied`]), so a client that sees a result also sees its effects.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chatd_shards::{Mesh, ShardStats};
use futures::channel::oneshot;
use serde_json::json;
use tungstenite::Utf8Bytes;

use super::outbound::Outbound;
use super::presence::{Activity, PresenceRead, PresenceSeed, PresenceUpdate, Status};
use super::{ShardMsg, TAILER_SHARD};
use crate::app::error::{AppError, AppResult};
use crate::ids::{RoomId, UserId};
use crate::protocol::ddp;
use crate::protocol::wire::{self, Dates};
use crate::store::{Change, ChangeRecord, Room, Store, Subscription, User, UserRef};

/// The hub's maps are looked up for every delivery: foldhash (randomly seeded, so keys chosen
/// by clients cannot be made to collide) instead of SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub const STREAM_ROOM_MESSAGES: &str = "stream-room-messages";
pub const STREAM_NOTIFY_USER: &str = "stream-notify-user";
pub const STREAM_NOTIFY_ROOM: &str = "stream-notify-room";
pub const STREAM_NOTIFY_LOGGED: &str = "stream-notify-logged";
pub const STREAM_USER_PRESENCE: &str = "stream-user-presence";
pub const STREAM_NOTIFY_ALL: &str = "stream-notify-all";
pub const STREAM_ROLES: &str = "stream-roles";
pub const MY_MESSAGES: &str = "__my_messages__";

/// Longest a method waits for its own change to come back through the feed before answering
/// anyway (the write is already durable; this only bounds a stalled tailer's impact).
const APPLY_WAIT: Duration = Duration::from_secs(10);

pub type SessionId = u64;

/// The part of a session the hub needs: its queue, its user and its stream subscriptions.
pub struct SessionHandle {
    pub id: SessionId,
    pub out: Outbound,
    user: RefCell<Option<UserRef>>,
    subs: RefCell<Subs>,
    /// The client said it is idle (`UserPresence:away`) and has not said otherwise since.
    idle: Cell<bool>,
    /// The one live `stream-user-presence` subscription: its id and the watched users.
    presence_sub: RefCell<Option<(String, HashSet<UserId>)>>,
    /// The shard's figures (its `subscriptions` gauge counts this session's subscriptions).
    stats: Arc<ShardStats>,
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        ShardStats::sub(&self.stats.subscriptions, self.subs.borrow().by_id.len() as u64);
    }
}

#[derive(Default)]
struct Subs {
    by_id: HashMap<String, (&'static str, String)>,
    /// stream → event → live subscriptions (nested so lookups borrow: no key is built per
    /// delivery).
    active: HashMap<&'static str, HashMap<String, u32>>,
}

thread_local! {
    /// Scratch for composing `{uid}/{event}` names to look up (a shard's thread only).
    static EVENT_NAME: RefCell<String> = const { RefCell::new(String::new()) };
}

impl SessionHandle {
    pub fn new(id: SessionId, out: Outbound, stats: Arc<ShardStats>) -> Self {
        Self {
            id,
            out,
            stats,
            user: RefCell::new(None),
            subs: RefCell::new(Subs::default()),
            idle: Cell::new(false),
            presence_sub: RefCell::new(None),
        }
    }

    pub fn user(&self) -> Option<UserRef> {
        self.user.borrow().clone()
    }

    /// Records a subscription; `false` if the id is already in use (Meteor ignores such a sub).
    pub fn add_sub(&self, id: &str, stream: &'static str, event: &str) -> bool {
        let mut subs = self.subs.borrow_mut();
        if subs.by_id.contains_key(id) {
            return false;
        }
        subs.by_id.insert(id.to_owned(), (stream, event.to_owned()));
        ShardStats::add(&self.stats.subscriptions, 1);
        *subs
            .active
            .entry(stream)
            .or_default()
            .entry(event.to_owned())
            .or_insert(0) += 1;
        true
    }

    /// How many stream subscriptions the session holds.
    pub fn sub_count(&self) -> usize {
        self.subs.borrow().by_id.len()
    }

    pub fn remove_sub(&self, id: &str) -> bool {
        let mut subs = self.subs.borrow_mut();
        let Some((stream, event)) = subs.by_id.remove(id) else {
            return false;
        };
        ShardStats::sub(&self.stats.subscriptions, 1);
        if let Some(events) = subs.active.get_mut(stream) {
            if let Some(n) = events.get_mut(&event) {
                *n -= 1;
                if *n == 0 {
                    events.remove(&event);
                }
            }
            if events.is_empty() {
                subs.active.remove(stream);
            }
        }
        true
    }

    /// Removes the subscriptions matching `pred`, returning their ids.
    fn remove_subs_where(&self, pred: impl Fn(&'static str, &str) -> bool) -> Vec<String> {
        let ids: Vec<String> = self
            .subs
            .borrow()
            .by_id
            .iter()
            .filter(|(_, (stream, event))| pred(stream, event))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.remove_sub(id);
        }
        ids
    }

    pub fn clear_subs(&self) {
        let old = std::mem::take(&mut *self.subs.borrow_mut());
        ShardStats::sub(&self.stats.subscriptions, old.by_id.len() as u64);
    }

    pub fn wants(&self, stream: &'static str, event: &str) -> bool {
        self.subs
            .borrow()
            .active
            .get(stream)
            .is_some_and(|events| events.contains_key(event))
    }

    /// Whether the session listens to `stream-notify-user` `{uid}/{event}` (no allocation).
    pub fn wants_user_event(&self, uid: &UserId, event: &str) -> bool {
        let subs = self.subs.borrow();
        let Some(events) = subs.active.get(STREAM_NOTIFY_USER) else {
            return false;
        };
        EVENT_NAME.with(|name| {
            let mut name = name.borrow_mut();
            name.clear();
            name.push_str(uid.as_str());
            name.push('/');
            name.push_str(event);
            events.contains_key(name.as_str())
        })
    }
}

enum LoadState {
    /// Memberships are being read; changes that arrive meanwhile wait here.
    Loading {
        pending: Vec<Arc<ChangeRecord>>,
        waiters: Vec<oneshot::Sender<()>>,
    },
    /// Memberships reflect the log up to `synced` plus every change applied since.
    Ready { synced: u64 },
}

struct LocalUser {
    sessions: Vec<SessionId>,
    /// What this shard last told the presence owner: every session here is idle.
    idle_reported: bool,
    /// The user's subscriptions (their rooms), kept in step with the feed: a new message's
    /// `subscriptions-changed` carries each member's own counters.
    rooms: HashMap<RoomId, Subscription>,
    state: LoadState,
}

pub struct Hub {
    pub shard: usize,
    pub store: Store,
    pub stats: Arc<ShardStats>,
    mesh: Rc<Mesh<ShardMsg>>,
    /// The ephemeral lane (typing): `try_send` only.
    ephemeral: Rc<Mesh<ShardMsg>>,
    sessions: RefCell<HashMap<SessionId, Rc<SessionHandle>>>,
    /// Host-level presence of every user who is not offline, as broadcast by the owner.
    presence: RefCell<HashMap<UserId, PresenceUpdate>>,
    /// User → local sessions watching them on `stream-user-presence`.
    presence_watchers: RefCell<HashMap<UserId, HashSet<SessionId>>>,
    users: RefCell<HashMap<UserId, LocalUser>>,
    /// Room → local users who are members.
    room_members: RefCell<HashMap<RoomId, HashSet<UserId>>>,
    applied: Cell<u64>,
    waiters: RefCell<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
    acks: RefCell<HashMap<u64, oneshot::Sender<()>>>,
    presence_answers: RefCell<HashMap<u64, oneshot::Sender<Vec<PresenceRead>>>>,
    next_id: Cell<u64>,
    /// How long a round trip to another shard may take before it fails.
    round_trip: Duration,
}

/// Runs `fut` for at most `limit` (`None` when it timed out). Shards only.
async fn within<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

fn notify_user_event(uid: &UserId, event: &str, args_json: &str) -> Utf8Bytes {
    Utf8Bytes::from(ddp::stream_event(
        STREAM_NOTIFY_USER,
        &format!("{uid}/{event}"),
        args_json,
    ))
}

impl Hub {
    pub fn new(
        shard: usize,
        store: Store,
        stats: Arc<ShardStats>,
        mesh: Rc<Mesh<ShardMsg>>,
        ephemeral: Rc<Mesh<ShardMsg>>,
        applied: u64,
        round_trip: Duration,
    ) -> Self {
        Self {
            shard,
            store,
            stats,
            mesh,
            ephemeral,
            sessions: RefCell::new(HashMap::default()),
            presence: RefCell::new(HashMap::default()),
            presence_watchers: RefCell::new(HashMap::default()),
            users: RefCell::new(HashMap::default()),
            room_members: RefCell::new(HashMap::default()),
            applied: Cell::new(applied),
            waiters: RefCell::new(BTreeMap::new()),
            acks: RefCell::new(HashMap::default()),
            presence_answers: RefCell::new(HashMap::default()),
            next_id: Cell::new(1),
            round_trip,
        }
    }

    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    pub fn new_session(&self, out: Outbound) -> Rc<SessionHandle> {
        let handle = Rc::new(SessionHandle::new(self.next_id(), out, self.stats.clone()));
        self.sessions.borrow_mut().insert(handle.id, handle.clone());
        ShardStats::add(&self.stats.websockets, 1);
        handle
    }

    pub async fn end_session(&self, session: &Rc<SessionHandle>) {
        self.detach_user(session).await;
        if self.sessions.borrow_mut().remove(&session.id).is_some() {
            ShardStats::sub(&self.stats.websockets, 1);
        }
    }

    /// The reliable lane of the mesh.
    pub fn mesh(&self) -> &Rc<Mesh<ShardMsg>> {
        &self.mesh
    }

    /// Every open session (for shutdown).
    pub fn all_sessions(&self) -> Vec<Rc<SessionHandle>> {
        self.sessions.borrow().values().cloned().collect()
    }

    /// The change-log position this shard has applied.
    pub fn applied(&self) -> u64 {
        self.applied.get()
    }

    /// Whether the local user `uid` is a member of `rid` as of the changes applied here.
    pub fn is_member(&self, uid: &UserId, rid: &RoomId) -> bool {
        self.users.borrow().get(uid).is_some_and(|u| u.rooms.contains_key(rid))
    }

    /// Logs `user` in on `session`: on the user's first session on this shard, tells the tailer
    /// (and waits until routing includes this shard) and loads their memberships.
    pub async fn attach_user(&self, session: &Rc<SessionHandle>, user: &User) -> AppResult<()> {
        if session.user().is_some_and(|u| u.id == user.id) {
            return Ok(());
        }
        self.detach_user(session).await;
        *session.user.borrow_mut() = Some(user.user_ref());
        ShardStats::add(&self.stats.sessions, 1);
        let wait = {
            let mut users = self.users.borrow_mut();
            match users.get_mut(&user.id) {
                Some(lu) => {
                    lu.sessions.push(session.id);
                    session.idle.set(false);
                    if lu.idle_reported {
                        lu.idle_reported = false;
                        let msg = ShardMsg::UserIdle {
                            uid: user.id.clone(),
                            shard: self.shard,
                            idle: false,
                        };
                        glommio::spawn_local(Self::notify_owner(self.mesh.clone(), msg)).detach();
                    }
                    match &mut lu.state {
                        LoadState::Loading { waiters, .. } => {
                            let (tx, rx) = oneshot::channel();
                            waiters.push(tx);
                            Some(rx)
                        }
                        LoadState::Ready { .. } => return Ok(()),
                    }
                }
                None => {
                    users.insert(
                        user.id.clone(),
                        LocalUser {
                            sessions: vec![session.id],
                            idle_reported: false,
                            rooms: HashMap::default(),
                            state: LoadState::Loading {
                                pending: Vec::new(),
                                waiters: Vec::new(),
                            },
                        },
                    );
                    None
                }
            }
        };
        if let Some(rx) = wait {
            // Another session of this user is loading their memberships, within its own bounds.
            return match within(self.round_trip + self.store_wait(), rx).await {
                Some(Ok(())) => Ok(()),
                _ => {
                    self.detach_user(session).await;
                    Err(AppError::Busy("another session's login did not finish".into()))
                }
            };
        }
        let loaded = match self.announce(user).await {
            Ok(()) => self.store.memberships_of(&user.id).await.map_err(AppError::from),
            Err(e) => Err(e),
        };
        let (rooms, synced) = match loaded {
            Ok(v) => v,
            Err(e) => {
                // Sessions waiting on this load fail too (they detach; the next login starts over).
                if let Some(LocalUser {
                    state: LoadState::Loading { waiters, .. },
                    ..
                }) = self.users.borrow_mut().get_mut(&user.id)
                {
                    waiters.clear();
                }
                self.detach_user(session).await;
                return Err(e);
            }
        };
        let (pending, waiters) = {
            let mut users = self.users.borrow_mut();
            let Some(lu) = users.get_mut(&user.id) else {
                return Ok(());
            };
            let mut members = self.room_members.borrow_mut();
            for sub in rooms {
                members.entry(sub.rid.clone()).or_default().insert(user.id.clone());
                lu.rooms.insert(sub.rid.clone(), sub);
            }
            match std::mem::replace(&mut lu.state, LoadState::Ready { synced }) {
                LoadState::Loading { pending, waiters } => (pending, waiters),
                LoadState::Ready { .. } => (Vec::new(), Vec::new()),
            }
        };
        for rec in pending {
            self.apply_membership(&rec);
        }
        for w in waiters {
            let _ = w.send(());
        }
        Ok(())
    }

    /// Logs the session's user out of this session (logout or disconnect).
    pub async fn detach_user(&self, session: &Rc<SessionHandle>) {
        let Some(user) = session.user.borrow_mut().take() else {
            return;
        };
        session.clear_subs();
        self.clear_presence_watch(session);
        session.idle.set(false);
        ShardStats::sub(&self.stats.sessions, 1);
        let last = {
            let mut users = self.users.borrow_mut();
            let Some(lu) = users.get_mut(&user.id) else { return };
            lu.sessions.retain(|s| *s != session.id);
            if lu.sessions.is_empty() {
                if let Some(lu) = users.remove(&user.id) {
                    let mut members = self.room_members.borrow_mut();
                    for rid in lu.rooms.into_keys() {
                        if let Some(set) = members.get_mut(&rid) {
                            set.remove(&user.id);
                            if set.is_empty() {
                                members.remove(&rid);
                            }
                        }
                    }
                }
                true
            } else {
                false
            }
        };
        if !last {
            self.report_idle(&user.id).await;
        }
        if last {
            let msg = ShardMsg::UserShard {
                uid: user.id.clone(),
                shard: self.shard,
                online: false,
                ack: None,
                seed: None,
            };
            if self.mesh.send_to(TAILER_SHARD, msg).await.is_err() {
                tracing::debug!(uid = %user.id, "tailer gone; offline notice not sent");
            }
        }
    }

    async fn notify_owner(mesh: Rc<Mesh<ShardMsg>>, msg: ShardMsg) {
        if mesh.send_to(TAILER_SHARD, msg).await.is_err() {
            tracing::debug!("presence owner gone; notice not sent");
        }
    }

    /// The client of `session` says it is idle (`UserPresence:away`) or active again.
    pub async fn set_idle(&self, session: &Rc<SessionHandle>, idle: bool) {
        let Some(user) = session.user() else { return };
        session.idle.set(idle);
        self.report_idle(&user.id).await;
    }

    /// Tells the presence owner when "every session of `uid` here is idle" changed.
    async fn report_idle(&self, uid: &UserId) {
        let changed = {
            let mut users = self.users.borrow_mut();
            let Some(lu) = users.get_mut(uid) else { return };
            let sessions = self.sessions.borrow();
            let all_idle = !lu.sessions.is_empty()
                && lu
                    .sessions
                    .iter()
                    .all(|sid| sessions.get(sid).is_some_and(|s| s.idle.get()));
            if all_idle == lu.idle_reported {
                None
            } else {
                lu.idle_reported = all_idle;
                Some(all_idle)
            }
        };
        if let Some(idle) = changed {
            let msg = ShardMsg::UserIdle {
                uid: uid.clone(),
                shard: self.shard,
                idle,
            };
            Self::notify_owner(self.mesh.clone(), msg).await;
        }
    }

    /// The host-level presence of `uid`: (status, connection status, status text).
    pub fn presence_of(&self, uid: &UserId) -> PresenceRead {
        self.presence
            .borrow()
            .get(uid)
            .map(|p| (p.status, p.connection, p.text.clone()))
            .unwrap_or((Status::Offline, Status::Offline, String::new()))
    }

    /// Asks the presence owner for the current presence of `uids` (an up-to-date read: the owner
    /// applies every connection and status change before it is acknowledged to anyone).
    /// Fails when the owner does not answer within the round-trip timeout.
    pub async fn query_presence(&self, uids: Vec<UserId>) -> AppResult<Vec<PresenceRead>> {
        let token = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.presence_answers.borrow_mut().insert(token, tx);
        let msg = ShardMsg::PresenceQuery {
            uids,
            shard: self.shard,
            token,
        };
        let answer = within(self.round_trip, async {
            if self.mesh.send_to(TAILER_SHARD, msg).await.is_err() {
                return None;
            }
            rx.await.ok()
        })
        .await;
        self.presence_answers.borrow_mut().remove(&token);
        match answer {
            Some(Some(a)) => Ok(a),
            Some(None) => Err(AppError::Busy("the presence owner is gone".into())),
            None => Err(AppError::Busy("presence query timed out".into())),
        }
    }

    pub fn presence_answer(&self, token: u64, answers: Vec<PresenceRead>) {
        if let Some(tx) = self.presence_answers.borrow_mut().remove(&token) {
            let _ = tx.send(answers);
        }
    }

    /// Starts or edits the session's `stream-user-presence` watch. Returns `true` when this
    /// subscription is the live one (answer `ready`), `false` when it only edited the live one
    /// (answer `nosub`, as Rocket.Chat does); `None` (nothing changed) when the session would
    /// watch more than `cap` users.
    pub async fn watch_presence(
        &self,
        session: &Rc<SessionHandle>,
        sub_id: &str,
        added: &[UserId],
        removed: &[UserId],
        cap: usize,
    ) -> Option<bool> {
        let (live, fresh) = {
            let mut sub = session.presence_sub.borrow_mut();
            let watching = sub.as_ref().map_or(0, |(_, w)| w.len());
            let removing = sub
                .as_ref()
                .map_or(0, |(_, w)| removed.iter().filter(|u| w.contains(*u)).count());
            // An upper bound (duplicates in `added` count twice): checked before anything changes.
            if watching - removing + added.len() > cap {
                let removed: HashSet<&UserId> = removed.iter().collect();
                let mut after: HashSet<&UserId> = sub
                    .as_ref()
                    .map(|(_, w)| w.iter().filter(|u| !removed.contains(u)).collect())
                    .unwrap_or_default();
                after.extend(added.iter());
                if after.len() > cap {
                    return None;
                }
            }
            let live = sub.is_none();
            let (_, watched) = sub.get_or_insert_with(|| (sub_id.to_owned(), HashSet::default()));
            let mut watchers = self.presence_watchers.borrow_mut();
            for uid in removed {
                watched.remove(uid);
                if let Some(set) = watchers.get_mut(uid) {
                    set.remove(&session.id);
                    if set.is_empty() {
                        watchers.remove(uid);
                    }
                }
            }
            let mut fresh = Vec::new();
            for uid in added {
                if watched.insert(uid.clone()) {
                    watchers.entry(uid.clone()).or_default().insert(session.id);
                    fresh.push(uid);
                }
            }
            (live, fresh)
        };
        // The current state of every newly watched user, so the client starts out right. Users
        // not online have no presence entry: their usernames come from one batched store read.
        let known: Vec<(UserId, Option<String>)> = {
            let presence = self.presence.borrow();
            fresh
                .into_iter()
                .map(|uid| (uid.clone(), presence.get(uid).map(|p| p.username.clone())))
                .collect()
        };
        let missing: Vec<UserId> = known
            .iter()
            .filter(|(_, name)| name.is_none())
            .map(|(uid, _)| uid.clone())
            .collect();
        let mut looked_up: HashMap<UserId, String> = HashMap::default();
        if !missing.is_empty() {
            match self.store.users(missing).await {
                Ok(users) => looked_up.extend(users.into_iter().map(|u| (u.id, u.username))),
                Err(e) => tracing::warn!(error = %e, "presence watch: cannot read usernames"),
            }
        }
        for (uid, name) in known {
            let (status, _, text) = self.presence_of(&uid);
            let username = name.or_else(|| looked_up.remove(&uid)).unwrap_or_default();
            session.out.push_str(presence_frame(&uid, &username, status, &text));
        }
        Some(live)
    }

    /// Ends the session's `stream-user-presence` watch if `sub_id` is it (or any, for `None`).
    pub fn clear_presence_watch_if(&self, session: &SessionHandle, sub_id: &str) -> bool {
        let is_it = session
            .presence_sub
            .borrow()
            .as_ref()
            .is_some_and(|(id, _)| id == sub_id);
        if is_it {
            self.clear_presence_watch(session);
        }
        is_it
    }

    fn clear_presence_watch(&self, session: &SessionHandle) {
        let Some((_, watched)) = session.presence_sub.borrow_mut().take() else {
            return;
        };
        let mut watchers = self.presence_watchers.borrow_mut();
        for uid in watched {
            if let Some(set) = watchers.get_mut(&uid) {
                set.remove(&session.id);
                if set.is_empty() {
                    watchers.remove(&uid);
                }
            }
        }
    }

    /// Applies a batch of presence transitions from the owner: updates the local view and tells
    /// `stream-notify-logged` / `user-status` and `stream-user-presence` subscribers (one frame
    /// per transition, serialized once on this shard).
    pub fn apply_presence(&self, updates: &[PresenceUpdate]) {
        let listeners: Vec<Rc<SessionHandle>> = self
            .sessions
            .borrow()
            .values()
            .filter(|s| s.user().is_some() && s.wants(STREAM_NOTIFY_LOGGED, "user-status"))
            .cloned()
            .collect();
        for u in updates {
            {
                let mut presence = self.presence.borrow_mut();
                if u.connection == Status::Offline && u.status == Status::Offline {
                    presence.remove(&u.uid);
                } else {
                    presence.insert(u.uid.clone(), u.clone());
                }
            }
            if !listeners.is_empty() {
                let args = json!([[u.uid, u.username, u.status.code(), u.text, u.name, ["user"]]]).to_string();
                let frame = Utf8Bytes::from(ddp::stream_event(STREAM_NOTIFY_LOGGED, "user-status", &args));
                for s in &listeners {
                    self.push(s, &frame);
                }
            }
            let watchers: Vec<Rc<SessionHandle>> = {
                let sessions = self.sessions.borrow();
                self.presence_watchers
                    .borrow()
                    .get(&u.uid)
                    .map(|set| set.iter().filter_map(|sid| sessions.get(sid).cloned()).collect())
                    .unwrap_or_default()
            };
            if !watchers.is_empty() {
                let frame = Utf8Bytes::from(presence_frame(&u.uid, &u.username, u.status, &u.text));
                for s in &watchers {
                    self.push(s, &frame);
                }
            }
        }
    }

    /// Hands a typing / activity notice to every shard over the ephemeral lane; a full lane drops
    /// it (counted).
    pub fn send_activity(&self, activity: Activity) {
        let activity = Arc::new(activity);
        for shard in 0..self.ephemeral.nr_shards() {
            if self
                .ephemeral
                .try_send_to(shard, ShardMsg::Activity(activity.clone()))
                .is_err()
            {
                ShardStats::add(&self.stats.dropped, 1);
            }
        }
    }

    /// Delivers a typing / activity notice to the local members subscribed to it, except the
    /// connection it came from. Frames are serialized once; a session with a busy queue skips it.
    pub fn apply_activity(&self, a: &Activity) {
        let members = self.member_sessions(&a.rid);
        if members.is_empty() {
            return;
        }
        let activity_event = format!("{}/user-activity", a.rid);
        let typing_event = format!("{}/typing", a.rid);
        let mut activity_frame: Option<Utf8Bytes> = None;
        let mut typing_frame: Option<Utf8Bytes> = None;
        let bridge = a.activities.is_empty() || a.typing();
        let from_here = a.origin.host == 0 && a.origin.shard == self.shard;
        for (_, s) in &members {
            if from_here && s.id == a.origin.session {
                continue;
            }
            if s.wants(STREAM_NOTIFY_ROOM, &activity_event) {
                let f = activity_frame.get_or_insert_with(|| {
                    let mut args = vec![json!(a.username), json!(a.activities)];
                    if let Some(extra) = &a.extra {
                        args.push(extra.clone());
                    }
                    Utf8Bytes::from(ddp::stream_event(
                        STREAM_NOTIFY_ROOM,
                        &activity_event,
                        &serde_json::Value::Array(args).to_string(),
                    ))
                });
                self.push_ephemeral(s, f);
            }
            if bridge && s.wants(STREAM_NOTIFY_ROOM, &typing_event) {
                let f = typing_frame.get_or_insert_with(|| {
                    Utf8Bytes::from(ddp::stream_event(
                        STREAM_NOTIFY_ROOM,
                        &typing_event,
                        &json!([a.username, a.typing()]).to_string(),
                    ))
                });
                self.push_ephemeral(s, f);
            }
        }
    }

    fn push_ephemeral(&self, session: &SessionHandle, frame: &Utf8Bytes) {
        if session.out.push_ephemeral(frame.clone()) {
            ShardStats::add(&self.stats.deliveries, 1);
        } else {
            ShardStats::add(&self.stats.dropped, 1);
        }
    }

    /// Tells the tailer `uid` is on this shard and waits until it has updated its routing;
    /// fails when that takes longer than the round-trip timeout.
    async fn announce(&self, user: &User) -> AppResult<()> {
        let uid = &user.id;
        let token = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.acks.borrow_mut().insert(token, tx);
        let msg = ShardMsg::UserShard {
            uid: uid.clone(),
            shard: self.shard,
            online: true,
            ack: Some(token),
            seed: Some(Box::new(PresenceSeed::of(user))),
        };
        let answered = within(self.round_trip, async {
            self.mesh.send_to(TAILER_SHARD, msg).await.is_ok() && rx.await.is_ok()
        })
        .await;
        self.acks.borrow_mut().remove(&token);
        match answered {
            Some(true) => Ok(()),
            Some(false) => Err(AppError::Busy("the tailer shard is gone".into())),
            None => {
                // The notice may still arrive: the tailer counts notices, so the offline one sent
                // when this session ends keeps its routing right.
                tracing::warn!(uid = %uid, "user routing round trip timed out");
                Err(AppError::Busy("user routing round trip timed out".into()))
            }
        }
    }

    /// The longest one store call may take (for waits on another session's store call).
    fn store_wait(&self) -> Duration {
        self.store.timeout().unwrap_or(Duration::from_secs(60))
    }

    /// Whether shard `to` answers a mesh round trip within `timeout` (a full queue counts as no
    /// answer: the shard is not keeping up).
    pub async fn ping_shard(&self, to: usize, timeout: Duration) -> bool {
        let token = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.acks.borrow_mut().insert(token, tx);
        let msg = ShardMsg::Ping {
            shard: self.shard,
            token,
        };
        let answered = self.mesh.try_send_to(to, msg).is_ok()
            && futures_lite::future::or(async { rx.await.is_ok() }, async {
                glommio::timer::sleep(timeout).await;
                false
            })
            .await;
        self.acks.borrow_mut().remove(&token);
        answered
    }

    pub fn ack(&self, token: u64) {
        if let Some(tx) = self.acks.borrow_mut().remove(&token) {
            let _ = tx.send(());
        }
    }

    /// Waits until this shard has applied the change log up to `seq`.
    pub async fn wait_applied(&self, seq: u64) {
        if self.applied.get() >= seq {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().entry(seq).or_default().push(tx);
        let timed_out = futures_lite::future::or(async { rx.await.is_err() }, async {
            glommio::timer::sleep(APPLY_WAIT).await;
            true
        })
        .await;
        if timed_out {
            tracing::warn!(
                seq,
                applied = self.applied.get(),
                "change feed is behind; answering before the change applied here"
            );
        }
    }

    /// Applies a batch from the tailer, then advances the applied position.
    pub fn apply_changes(&self, records: Vec<Arc<ChangeRecord>>, head: u64) {
        for rec in records {
            self.apply_membership(&rec);
            self.deliver(&rec);
        }
        if head > self.applied.get() {
            self.applied.set(head);
            self.stats.applied.store(head, std::sync::atomic::Ordering::Relaxed);
            let ready: Vec<u64> = self.waiters.borrow().range(..=head).map(|(k, _)| *k).collect();
            for k in ready {
                if let Some(ws) = self.waiters.borrow_mut().remove(&k) {
                    for w in ws {
                        let _ = w.send(());
                    }
                }
            }
        }
    }

    /// Keeps local users' subscriptions in step with the feed: memberships, read marks, and
    /// what a new message changes in the sender's and the mentioned members' subscriptions.
    fn apply_membership(&self, rec: &Arc<ChangeRecord>) {
        match &rec.change {
            Change::MemberAdded { subscription, .. } | Change::SubscriptionUpdated { subscription, .. } => {
                let added = matches!(rec.change, Change::MemberAdded { .. });
                self.with_local_sub(rec, &subscription.u.id, |lu| {
                    if added {
                        self.room_members
                            .borrow_mut()
                            .entry(subscription.rid.clone())
                            .or_default()
                            .insert(subscription.u.id.clone());
                    }
                    if added || lu.rooms.contains_key(&subscription.rid) {
                        lu.rooms.insert(subscription.rid.clone(), subscription.clone());
                    }
                });
            }
            Change::MemberRemoved { room, uid, .. } => {
                self.with_local_sub(rec, uid, |lu| {
                    let rid = &room.id;
                    lu.rooms.remove(rid);
                    let mut members = self.room_members.borrow_mut();
                    if let Some(set) = members.get_mut(rid) {
                        set.remove(uid);
                        if set.is_empty() {
                            members.remove(rid);
                        }
                    }
                    // Leaving stops delivery at once: drop the room's stream subscriptions.
                    let prefix = format!("{rid}/");
                    let sessions = self.sessions.borrow();
                    for sid in &lu.sessions {
                        if let Some(s) = sessions.get(sid) {
                            let dropped = s.remove_subs_where(|stream, event| {
                                (stream == STREAM_ROOM_MESSAGES && event == rid.as_str())
                                    || (stream == STREAM_NOTIFY_ROOM && event.starts_with(&prefix))
                            });
                            for id in dropped {
                                s.out.push_str(ddp::nosub(&id, None));
                            }
                        }
                    }
                });
            }
            Change::MessageCreated { message, room } => {
                // The rules' own bookkeeping, mirrored: the sender has read their message, each
                // mentioned member has one more mention.
                self.with_local_sub(rec, &message.u.id, |lu| {
                    if let Some(sub) = lu.rooms.get_mut(&room.id) {
                        sub.read_seq = message.seq;
                        sub.ls = message.ts;
                    }
                });
                let group = message
                    .mentions
                    .iter()
                    .any(|m| m.id.as_str() == "all" || m.id.as_str() == "here");
                // `@all` / `@here` count for every other member: those on this shard.
                let named: Vec<UserId> = if group {
                    let members = self.room_members.borrow();
                    members
                        .get(&room.id)
                        .map(|set| set.iter().cloned().collect())
                        .unwrap_or_default()
                } else {
                    message.mentions.iter().map(|m| m.id.clone()).collect()
                };
                for uid in named {
                    if uid == message.u.id {
                        continue;
                    }
                    let by_name = message.mentions.iter().any(|m| m.id == uid);
                    self.with_local_sub(rec, &uid, |lu| {
                        if let Some(sub) = lu.rooms.get_mut(&room.id) {
                            if by_name {
                                sub.user_mentions += 1;
                            } else {
                                sub.group_mentions += 1;
                            }
                        }
                    });
                }
            }
            _ => {}
        }
    }

    /// Runs `f` on the local user `uid` once the change `rec` is theirs to apply: now, or after
    /// their subscriptions have loaded (changes the load's snapshot already holds are skipped).
    fn with_local_sub(&self, rec: &Arc<ChangeRecord>, uid: &UserId, f: impl FnOnce(&mut LocalUser)) {
        let mut users = self.users.borrow_mut();
        let Some(lu) = users.get_mut(uid) else { return };
        match &mut lu.state {
            LoadState::Loading { pending, .. } => {
                if !pending.last().is_some_and(|p| Arc::ptr_eq(p, rec)) {
                    pending.push(rec.clone());
                }
            }
            LoadState::Ready { synced } if rec.seq > *synced => f(lu),
            LoadState::Ready { .. } => {}
        }
    }

    fn push(&self, session: &SessionHandle, frame: &Utf8Bytes) {
        if session.out.push(frame.clone()) {
            ShardStats::add(&self.stats.deliveries, 1);
        }
    }

    /// Calls `f` for each local session of each local member of `rid`, without copying either
    /// (`f` must not change the hub's users, sessions or rooms).
    fn for_member_sessions(&self, rid: &RoomId, mut f: impl FnMut(&UserId, &Rc<SessionHandle>)) {
        let members = self.room_members.borrow();
        let Some(set) = members.get(rid) else { return };
        let users = self.users.borrow();
        let sessions = self.sessions.borrow();
        for uid in set {
            if let Some(lu) = users.get(uid) {
                for sid in &lu.sessions {
                    if let Some(s) = sessions.get(sid) {
                        f(uid, s);
                    }
                }
            }
        }
    }

    /// Local sessions of the local members of `rid`.
    fn member_sessions(&self, rid: &RoomId) -> Vec<(UserId, Rc<SessionHandle>)> {
        let mut out = Vec::new();
        self.for_member_sessions(rid, |uid, s| out.push((uid.clone(), s.clone())));
        out
    }

    fn user_sessions(&self, uid: &UserId) -> Vec<Rc<SessionHandle>> {
        let users = self.users.borrow();
        let sessions = self.sessions.borrow();
        users
            .get(uid)
            .map(|lu| {
                lu.sessions
                    .iter()
                    .filter_map(|sid| sessions.get(sid).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `rooms-changed ["updated", room]` to every local member watching it: the room is
    /// serialized once, and only if someone listens.
    fn room_updated(&self, room: &Room, except: Option<&UserId>) {
        let mut args: Option<String> = None;
        self.for_member_sessions(&room.id, |uid, s| {
            if Some(uid) != except && s.wants_user_event(uid, "rooms-changed") {
                let args = args.get_or_insert_with(|| format!(r#"["updated",{}]"#, wire::room(room, Dates::Ejson)));
                self.push(s, &notify_user_event(uid, "rooms-changed", args));
            }
        });
    }

    fn deliver(&self, rec: &ChangeRecord) {
        match &rec.change {
            Change::MessageCreated { message, room } | Change::MessageUpdated { message, room } => {
                if !self.room_members.borrow().contains_key(&room.id) {
                    return;
                }
                let is_new = matches!(rec.change, Change::MessageCreated { .. });
                if is_new {
                    // The message's `ts` is set by the writer just before its commit.
                    let ms = crate::ids::now_ms().saturating_sub(message.ts).max(0);
                    self.stats.delivery_seconds.observe(ms as f64 / 1000.0);
                }
                // Every frame is built once per shard, on first need, and shared by reference.
                let msg_json = serde_json::to_string(&wire::WireMessage(message, Dates::Ejson)).unwrap_or_default();
                let mut by_room: Option<Utf8Bytes> = None;
                let mut mine: Option<Utf8Bytes> = None;
                let mut notification: Option<String> = None;
                let mut room_args: Option<String> = None;
                let mut counters: Vec<(UserId, Rc<SessionHandle>)> = Vec::new();
                let direct = room.t == crate::store::RoomType::Direct;
                self.for_member_sessions(&room.id, |uid, s| {
                    if s.wants(STREAM_ROOM_MESSAGES, room.id.as_str()) {
                        let f = by_room.get_or_insert_with(|| {
                            Utf8Bytes::from(ddp::stream_event(
                                STREAM_ROOM_MESSAGES,
                                room.id.as_str(),
                                &format!("[{msg_json}]"),
                            ))
                        });
                        self.push(s, f);
                    }
                    if s.wants(STREAM_ROOM_MESSAGES, MY_MESSAGES) {
                        let f = mine.get_or_insert_with(|| {
                            let meta = json!({
                                "roomParticipant": true,
                                "roomType": room.t.code(),
                                "roomName": room.name.clone().unwrap_or_default(),
                            });
                            Utf8Bytes::from(ddp::stream_event(
                                STREAM_ROOM_MESSAGES,
                                MY_MESSAGES,
                                &format!("[{msg_json},{meta}]"),
                            ))
                        });
                        self.push(s, f);
                    }
                    if is_new
                        && *uid != message.u.id
                        && (direct || message.mentions_user(uid, true))
                        && s.wants_user_event(uid, "notification")
                    {
                        let args = notification.get_or_insert_with(|| notification_args(message, room, direct));
                        self.push(s, &notify_user_event(uid, "notification", args));
                    }
                    if s.wants_user_event(uid, "rooms-changed") {
                        let args = room_args
                            .get_or_insert_with(|| format!(r#"["updated",{}]"#, wire::room(room, Dates::Ejson)));
                        self.push(s, &notify_user_event(uid, "rooms-changed", args));
                    }
                    if is_new && *uid != message.u.id && s.wants_user_event(uid, "subscriptions-changed") {
                        counters.push((uid.clone(), s.clone()));
                    }
                });
                // Each member's own counters moved (unread, alert, mentions): their subscription,
                // rendered per member, after every member has the message itself.
                for (uid, s) in counters {
                    if let Some(frame) = self.member_sub_frame(&uid, room) {
                        self.push(&s, &frame);
                    }
                }
            }
            Change::MessageDeleted { rid, mid, room } => {
                let members = self.member_sessions(rid);
                let event = format!("{rid}/deleteMessage");
                let frame = Utf8Bytes::from(ddp::stream_event(
                    STREAM_NOTIFY_ROOM,
                    &event,
                    &json!([{ "_id": mid }]).to_string(),
                ));
                for (_, s) in &members {
                    if s.wants(STREAM_NOTIFY_ROOM, &event) {
                        self.push(s, &frame);
                    }
                }
                self.room_updated(room, None);
            }
            Change::MemberAdded { room, subscription } => {
                let uid = &subscription.u.id;
                let room_json = wire::room(room, Dates::Ejson).to_string();
                let sub_json = serde_json::to_string(&wire::WireSubscription(subscription, room, Dates::Ejson))
                    .unwrap_or_default();
                for s in self.user_sessions(uid) {
                    if s.wants_user_event(uid, "subscriptions-changed") {
                        self.push(
                            &s,
                            &notify_user_event(uid, "subscriptions-changed", &format!(r#"["inserted",{sub_json}]"#)),
                        );
                    }
                    if s.wants_user_event(uid, "rooms-changed") {
                        self.push(
                            &s,
                            &notify_user_event(uid, "rooms-changed", &format!(r#"["inserted",{room_json}]"#)),
                        );
                    }
                }
                self.room_updated(room, Some(uid));
            }
            Change::MemberRemoved {
                room,
                uid,
                subscription_id,
            } => {
                let removed_sub =
                    json!(["removed", {"_id": subscription_id, "rid": room.id, "u": {"_id": uid}, "t": room.t.code()}]);
                let removed_room = json!(["removed", {"_id": room.id}]);
                for s in self.user_sessions(uid) {
                    if s.wants_user_event(uid, "subscriptions-changed") {
                        self.push(
                            &s,
                            &notify_user_event(uid, "subscriptions-changed", &removed_sub.to_string()),
                        );
                    }
                    if s.wants_user_event(uid, "rooms-changed") {
                        self.push(&s, &notify_user_event(uid, "rooms-changed", &removed_room.to_string()));
                    }
                }
                self.room_updated(room, Some(uid));
            }
            Change::SubscriptionUpdated {
                subscription,
                room,
                read_until,
            } => {
                if let Some(until) = read_until {
                    let event = format!("{}/messagesRead", room.id);
                    let frame = Utf8Bytes::from(ddp::stream_event(
                        STREAM_NOTIFY_ROOM,
                        &event,
                        &json!([{ "until": { "$date": until } }]).to_string(),
                    ));
                    self.for_member_sessions(&room.id, |_, s| {
                        if s.wants(STREAM_NOTIFY_ROOM, &event) {
                            self.push(s, &frame);
                        }
                    });
                }
                let uid = &subscription.u.id;
                let sub_json = serde_json::to_string(&wire::WireSubscription(subscription, room, Dates::Ejson))
                    .unwrap_or_default();
                for s in self.user_sessions(uid) {
                    if s.wants_user_event(uid, "subscriptions-changed") {
                        self.push(
                            &s,
                            &notify_user_event(uid, "subscriptions-changed", &format!(r#"["updated",{sub_json}]"#)),
                        );
                    }
                }
            }
            // The presence owner combines chosen status and connections and publishes the result
            // (`apply_presence`); the raw change is not delivered to sessions.
            Change::UserStatusChanged { .. } => {}
        }
    }
}

impl Hub {
    /// `subscriptions-changed ["updated", sub]` for a local member's subscription of `room`, as
    /// the feed has left it.
    fn member_sub_frame(&self, uid: &UserId, room: &Room) -> Option<Utf8Bytes> {
        let users = self.users.borrow();
        let sub = users.get(uid)?.rooms.get(&room.id)?;
        let sub = serde_json::to_string(&wire::WireSubscription(sub, room, Dates::Ejson)).ok()?;
        Some(notify_user_event(
            uid,
            "subscriptions-changed",
            &format!(r#"["updated",{sub}]"#),
        ))
    }
}

/// The arguments of a `notification` event (the same for every recipient of a message).
fn notification_args(message: &crate::store::Message, room: &Room, direct: bool) -> String {
    json!([{
        "title": if direct { format!("@{}", message.u.username) } else { format!("#{}", room.name.clone().unwrap_or_default()) },
        "text": message.msg,
        "payload": {
            "_id": message.id,
            "rid": room.id,
            "sender": wire::user_ref(&message.u),
            "type": room.t.code(),
            "name": room.name,
            "message": {"msg": message.msg},
        },
    }])
    .to_string()
}

/// A `stream-user-presence` event: the document id is the user id, not `"id"`.
fn presence_frame(uid: &UserId, username: &str, status: Status, text: &str) -> String {
    json!({
        "msg": "changed",
        "collection": STREAM_USER_PRESENCE,
        "id": uid,
        "fields": {"uid": uid, "args": [[username, status.code(), text]], "eventName": uid},
    })
    .to_string()
}
