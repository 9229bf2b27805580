//! Ephemeral events: typing / user activity and presence. Nothing here is written to the store
//! except a user's *chosen* status (through the normal write path); connection state lives only
//! in memory.
//!
//! The event types are plain data (serde) and carry their origin, so that host-to-host peering can
//! later carry the same events between hosts unchanged:
//!
//! - [`Activity`]: a typing / user-activity notice for a room. The shard where it was sent hands it
//!   to every shard over the *ephemeral lane* of the mesh (a separate bounded channel per
//!   destination, `try_send` only): under overload it is dropped and counted, never waited for.
//! - Presence: every shard reports, per user, whether the user has sessions on it and whether all
//!   of them are idle ("away"). One shard, the [`PresenceOwner`] (the tailer shard), combines the
//!   reports and the user's chosen status into the host-level status, and broadcasts transitions
//!   in batches ([`PresenceUpdate`]) over the reliable lane. No lock is shared between shards.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use chatd_shards::Mesh;
use serde::{Deserialize, Serialize};

use super::ShardMsg;
use crate::ids::{RoomId, UserId};
use crate::store::Store;

/// How long the owner gathers transitions before broadcasting them as one batch: 10,000 users
/// logging in at once become a few messages per shard, not 10,000. Every transition is kept.
const PRESENCE_FLUSH: Duration = Duration::from_millis(10);
/// Most updates per broadcast message.
const PRESENCE_BATCH: usize = 2048;

/// Rocket.Chat's user statuses, with their numeric codes (offline 0, online 1, away 2, busy 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Offline,
    Online,
    Away,
    Busy,
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "offline" | "invisible" => Some(Self::Offline),
            "online" => Some(Self::Online),
            "away" => Some(Self::Away),
            "busy" => Some(Self::Busy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Online => "online",
            Self::Away => "away",
            Self::Busy => "busy",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Offline => 0,
            Self::Online => 1,
            Self::Away => 2,
            Self::Busy => 3,
        }
    }
}

/// A presence read: (status others see, connection status, status text).
pub type PresenceRead = (Status, Status, String);

/// Where an ephemeral event came from. `host` is 0 for this host; peering assigns the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub host: u32,
    pub shard: usize,
    pub session: u64,
}

/// A typing / user-activity notice, as written by a member of `rid`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activity {
    pub rid: RoomId,
    pub username: String,
    /// Activities in progress (`["user-typing"]`), empty when the user stopped.
    pub activities: Vec<String>,
    /// The client's extra object (e.g. `{tmid}`), passed through.
    pub extra: Option<serde_json::Value>,
    pub origin: Origin,
}

impl Activity {
    pub fn typing(&self) -> bool {
        self.activities.iter().any(|a| a == "user-typing")
    }
}

/// One user's host-level presence after a transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUpdate {
    pub uid: UserId,
    pub username: String,
    pub name: String,
    /// What others see: offline, or the chosen status, or away when every connection is idle.
    pub status: Status,
    /// The connection status alone (offline / online / away).
    pub connection: Status,
    pub text: String,
}

/// One host's share of a user's presence: whether the user is connected there (online, away,
/// or offline: no longer) and the status they chose, as that host knows it. Hosts exchange these
/// over peer links; each combines them with its own connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    pub uid: UserId,
    pub username: String,
    pub name: String,
    pub connection: Status,
    pub chosen: Status,
    pub text: String,
}

/// What the presence owner needs of a user it has not seen yet, as the login read it.
#[derive(Debug, Clone)]
pub struct PresenceSeed {
    pub username: String,
    pub name: String,
    pub status: String,
    pub status_text: String,
}

impl PresenceSeed {
    pub fn of(user: &crate::store::User) -> Self {
        Self {
            username: user.username.clone(),
            name: user.name.clone(),
            status: user.status.clone(),
            status_text: user.status_text.clone(),
        }
    }
}

/// What the owner knows of one user.
struct UserPresence {
    username: String,
    name: String,
    /// The chosen (persisted) status and its text.
    chosen: Status,
    text: String,
    /// `chosen` comes from this host's store or change feed (otherwise from a peer, which is
    /// all we know of a user connected only elsewhere).
    chosen_local: bool,
    /// Connection status per peer host that reports the user connected (online or away).
    remote: HashMap<u64, Status>,
    /// This host's contribution as last sent to peers: (connection here, chosen, text).
    shared: Option<(Status, Status, String)>,
    /// Per shard: presence notices counted (> 0: has sessions there; counting makes their
    /// arrival order irrelevant), and whether all of them are idle.
    present: Vec<i32>,
    idle: Vec<bool>,
    /// What was last broadcast.
    published: Option<(Status, Status, String)>,
    /// The status was set while the user had no connection anywhere (REST only): shown as
    /// chosen, as Rocket.Chat does, until the user connects.
    detached: bool,
}

impl UserPresence {
    fn new(username: String, name: String, chosen: Status, text: String, nr_shards: usize) -> Self {
        Self {
            username,
            name,
            chosen,
            text,
            chosen_local: false,
            remote: HashMap::new(),
            shared: None,
            present: vec![0; nr_shards],
            idle: vec![false; nr_shards],
            published: None,
            detached: false,
        }
    }

    /// The connection status across this host and every peer: online if online anywhere, away
    /// if connected somewhere but idle everywhere.
    fn connection(&self) -> Status {
        let mut best = self.local_connection();
        for s in self.remote.values() {
            match (best, *s) {
                (Status::Online, _) => break,
                (_, Status::Online) => best = Status::Online,
                (Status::Offline, Status::Away) => best = Status::Away,
                _ => {}
            }
        }
        best
    }

    /// The connection status from this host's sessions alone.
    fn local_connection(&self) -> Status {
        let mut any = false;
        for (i, p) in self.present.iter().enumerate() {
            if *p > 0 {
                any = true;
                if !self.idle.get(i).copied().unwrap_or(false) {
                    return Status::Online;
                }
            }
        }
        if any {
            Status::Away
        } else {
            Status::Offline
        }
    }

    fn effective(&self) -> Status {
        match (self.connection(), self.chosen) {
            (Status::Offline, chosen) if self.detached => chosen,
            (Status::Offline, _) => Status::Offline,
            (conn, Status::Online) => conn,
            (_, chosen) => chosen,
        }
    }
}

/// Where this host's contribution changes go when host peering is on (the peer links).
pub trait ContributionSink {
    fn send_presence(&self, changes: &[Contribution]);
}

/// Host-level presence, owned by one shard (the tailer shard).
pub struct PresenceOwner {
    store: Store,
    mesh: Rc<Mesh<ShardMsg>>,
    nr_shards: usize,
    /// Host peering, when on: receives this host's contribution changes.
    peers: RefCell<Option<Weak<dyn ContributionSink>>>,
    /// Contribution changes not yet sent to peers, in order.
    peer_pending: RefCell<Vec<Contribution>>,
    /// Peer host → users it reports connected.
    by_host: RefCell<HashMap<u64, HashSet<UserId>>>,
    users: RefCell<HashMap<UserId, UserPresence>>,
    /// Users whose record is being read on first sight, with the newest chosen status that
    /// arrived from the feed meanwhile (it wins over what the read returns).
    loading: RefCell<HashMap<UserId, Option<(String, String)>>>,
    /// Transitions not yet broadcast, in the order they happened (every one is kept; only the
    /// broadcasting is batched).
    pending: RefCell<Vec<PresenceUpdate>>,
    flush_scheduled: Cell<bool>,
}

impl PresenceOwner {
    pub fn new(store: Store, mesh: Rc<Mesh<ShardMsg>>) -> Rc<Self> {
        let nr_shards = mesh.nr_shards();
        Rc::new(Self {
            store,
            mesh,
            loading: RefCell::new(HashMap::new()),
            nr_shards,
            peers: RefCell::new(None),
            peer_pending: RefCell::new(Vec::new()),
            by_host: RefCell::new(HashMap::new()),
            users: RefCell::new(HashMap::new()),
            pending: RefCell::new(Vec::new()),
            flush_scheduled: Cell::new(false),
        })
    }

    /// Attaches host peering: from now on this host's contributions go to `peers`.
    pub fn set_peers(&self, peers: Weak<dyn ContributionSink>) {
        *self.peers.borrow_mut() = Some(peers);
    }

    fn sink(&self) -> Option<Rc<dyn ContributionSink>> {
        self.peers.borrow().as_ref().and_then(Weak::upgrade)
    }

    /// A shard reports that `uid` now has (`present`) or no longer has sessions there.
    pub async fn on_shard_presence(
        self: &Rc<Self>,
        uid: &UserId,
        shard: usize,
        present: bool,
        seed: Option<PresenceSeed>,
    ) {
        let known_here = self.users.borrow().get(uid).is_some_and(|p| p.chosen_local);
        if present && !known_here {
            // First sight: the chosen status comes with the notice, as the login read it, or
            // else from the store. A status committed since then arrives through the change
            // feed: before this notice, it made the user known already (`on_chosen_status`);
            // during the read, it wins over what the read returns; after, it updates the entry.
            // The notices of one user are handled one at a time by the caller.
            let user = match seed {
                Some(seed) => seed,
                None => {
                    self.loading.borrow_mut().entry(uid.clone()).or_insert(None);
                    let read = self.store.user(uid).await;
                    let newer = self.loading.borrow_mut().remove(uid).flatten();
                    let mut user = match read {
                        Ok(Some(u)) => PresenceSeed::of(&u),
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(uid = %uid, error = %e, "presence: cannot read the user");
                            return;
                        }
                    };
                    if let Some((status, text)) = newer {
                        (user.status, user.status_text) = (status, text);
                    }
                    user
                }
            };
            let chosen = Status::parse(&user.status).unwrap_or(Status::Online);
            let mut users = self.users.borrow_mut();
            let p = users.entry(uid.clone()).or_insert_with(|| {
                UserPresence::new(
                    user.username,
                    user.name,
                    chosen,
                    user.status_text.clone(),
                    self.nr_shards,
                )
            });
            if !p.chosen_local {
                // Known so far only from a peer: this host's store has the final word.
                (p.chosen, p.text, p.chosen_local) = (chosen, user.status_text, true);
            }
        }
        let mut users = self.users.borrow_mut();
        if !users.contains_key(uid) {
            return;
        }
        if let Some(p) = users.get_mut(uid) {
            if let Some(slot) = p.present.get_mut(shard) {
                *slot += if present { 1 } else { -1 };
                if *slot <= 0 {
                    if let Some(idle) = p.idle.get_mut(shard) {
                        *idle = false;
                    }
                }
            }
        }
        drop(users);
        self.mark(uid);
    }

    /// A shard reports that every session of `uid` there is idle (`true`) or one is active.
    pub fn on_shard_idle(self: &Rc<Self>, uid: &UserId, shard: usize, idle: bool) {
        if let Some(p) = self.users.borrow_mut().get_mut(uid) {
            if let Some(slot) = p.idle.get_mut(shard) {
                *slot = idle;
            }
        } else {
            return;
        }
        self.mark(uid);
    }

    /// The user's chosen status changed (from the change feed). Set while the user has no
    /// connection anywhere (over REST), it is shown as chosen until they connect.
    pub fn on_chosen_status(self: &Rc<Self>, user: &crate::store::UserRef, status: &str, text: &str) {
        let uid = &user.id;
        let chosen = Status::parse(status).unwrap_or(Status::Online);
        let known = match self.users.borrow_mut().get_mut(uid) {
            Some(p) => {
                p.chosen = chosen;
                p.text = text.to_owned();
                p.chosen_local = true;
                if p.connection() == Status::Offline {
                    p.detached = true;
                }
                true
            }
            None => false,
        };
        if !known {
            // Being read on first sight: this change is newer than what the read may return.
            let loading = match self.loading.borrow_mut().get_mut(uid) {
                Some(slot) => {
                    *slot = Some((status.to_owned(), text.to_owned()));
                    true
                }
                None => false,
            };
            if loading {
                return;
            }
            let mut p = UserPresence::new(
                user.username.clone(),
                user.name.clone(),
                chosen,
                text.to_owned(),
                self.nr_shards,
            );
            (p.chosen_local, p.detached) = (true, true);
            self.users.borrow_mut().insert(uid.clone(), p);
        }
        self.mark(uid);
    }

    /// Contributions from peer host `host`, in order: each says whether the user is connected
    /// there and what they chose (used while this host knows nothing newer of its own).
    pub fn on_remote(self: &Rc<Self>, host: u64, list: Vec<Contribution>) {
        for c in list {
            {
                let mut users = self.users.borrow_mut();
                let mut by_host = self.by_host.borrow_mut();
                if c.connection == Status::Offline {
                    let Some(p) = users.get_mut(&c.uid) else { continue };
                    p.remote.remove(&host);
                    if let Some(set) = by_host.get_mut(&host) {
                        set.remove(&c.uid);
                    }
                } else {
                    let p = users.entry(c.uid.clone()).or_insert_with(|| {
                        UserPresence::new(
                            c.username.clone(),
                            c.name.clone(),
                            c.chosen,
                            c.text.clone(),
                            self.nr_shards,
                        )
                    });
                    p.remote.insert(host, c.connection);
                    if !p.chosen_local {
                        (p.chosen, p.text) = (c.chosen, c.text);
                    }
                    by_host.entry(host).or_default().insert(c.uid.clone());
                }
            }
            self.mark(&c.uid);
        }
    }

    /// Peer host `host` sent its whole state: what it no longer reports is dropped.
    pub fn replace_host(self: &Rc<Self>, host: u64, list: Vec<Contribution>) {
        let now: HashSet<&UserId> = list
            .iter()
            .filter(|c| c.connection != Status::Offline)
            .map(|c| &c.uid)
            .collect();
        let gone: Vec<UserId> = self
            .by_host
            .borrow()
            .get(&host)
            .map(|set| set.iter().filter(|u| !now.contains(u)).cloned().collect())
            .unwrap_or_default();
        self.forget_host_users(host, gone);
        self.on_remote(host, list);
    }

    /// Peer host `host` is lost: its contributions expire.
    pub fn drop_host(self: &Rc<Self>, host: u64) {
        let gone: Vec<UserId> = self
            .by_host
            .borrow_mut()
            .remove(&host)
            .map(|set| set.into_iter().collect())
            .unwrap_or_default();
        if !gone.is_empty() {
            tracing::info!(
                host = format_args!("{host:016x}"),
                users = gone.len(),
                "peer lost: its users' presence expired"
            );
        }
        self.forget_host_users(host, gone);
    }

    fn forget_host_users(self: &Rc<Self>, host: u64, uids: Vec<UserId>) {
        for uid in uids {
            if let Some(p) = self.users.borrow_mut().get_mut(&uid) {
                p.remote.remove(&host);
            }
            if let Some(set) = self.by_host.borrow_mut().get_mut(&host) {
                set.remove(&uid);
            }
            self.mark(&uid);
        }
    }

    /// This host's own contributions: every user connected here.
    pub fn local_snapshot(&self) -> Vec<Contribution> {
        self.users
            .borrow()
            .iter()
            .filter_map(|(uid, p)| {
                let connection = p.local_connection();
                (connection != Status::Offline).then(|| Contribution {
                    uid: uid.clone(),
                    username: p.username.clone(),
                    name: p.name.clone(),
                    connection,
                    chosen: p.chosen,
                    text: p.text.clone(),
                })
            })
            .collect()
    }

    /// The current host-level presence of `uids`: (status, connection status, status text).
    pub fn query(&self, uids: &[UserId]) -> Vec<PresenceRead> {
        let users = self.users.borrow();
        uids.iter()
            .map(|uid| match users.get(uid) {
                Some(p) => (p.effective(), p.connection(), p.text.clone()),
                None => (Status::Offline, Status::Offline, String::new()),
            })
            .collect()
    }

    /// Records `uid`'s transition, if its visible state changed, and schedules a broadcast.
    fn mark(self: &Rc<Self>, uid: &UserId) {
        {
            let mut users = self.users.borrow_mut();
            let Some(p) = users.get_mut(uid) else { return };
            if p.connection() != Status::Offline {
                p.detached = false;
            }
            let now = (p.effective(), p.connection(), p.text.clone());
            let local = p.local_connection();
            let share = (local != Status::Offline).then(|| (local, p.chosen, p.text.clone()));
            if share != p.shared {
                if self.sink().is_some() {
                    self.peer_pending.borrow_mut().push(Contribution {
                        uid: uid.clone(),
                        username: p.username.clone(),
                        name: p.name.clone(),
                        connection: local,
                        chosen: p.chosen,
                        text: p.text.clone(),
                    });
                }
                p.shared = share;
            }
            if p.published.as_ref() != Some(&now) {
                self.pending.borrow_mut().push(PresenceUpdate {
                    uid: uid.clone(),
                    username: p.username.clone(),
                    name: p.name.clone(),
                    status: now.0,
                    connection: now.1,
                    text: now.2.clone(),
                });
                p.published = Some(now);
            }
            if p.connection() == Status::Offline && !p.detached {
                users.remove(uid);
            }
        }
        if !self.flush_scheduled.replace(true) {
            let me = self.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(PRESENCE_FLUSH).await;
                me.flush().await;
            })
            .detach();
        }
    }

    /// Broadcasts the transitions gathered since the last flush, in the order they happened. Runs
    /// until nothing is pending, so two flushes never interleave.
    async fn flush(&self) {
        loop {
            let to_peers = std::mem::take(&mut *self.peer_pending.borrow_mut());
            if !to_peers.is_empty() {
                if let Some(peers) = self.sink() {
                    peers.send_presence(&to_peers);
                }
            }
            let updates = std::mem::take(&mut *self.pending.borrow_mut());
            if updates.is_empty() {
                self.flush_scheduled.set(false);
                return;
            }
            for chunk in updates.chunks(PRESENCE_BATCH) {
                let batch = Arc::new(chunk.to_vec());
                for shard in 0..self.nr_shards {
                    if self
                        .mesh
                        .send_to(shard, ShardMsg::Presence(batch.clone()))
                        .await
                        .is_err()
                    {
                        tracing::debug!(shard, "shard gone; presence not delivered there");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(present: &[bool], idle: &[bool], chosen: Status) -> UserPresence {
        let mut p = UserPresence::new("u".into(), "U".into(), chosen, String::new(), present.len());
        p.present = present.iter().map(|p| i32::from(*p)).collect();
        p.idle = idle.to_vec();
        p
    }

    #[test]
    fn effective_status_combines_connections_and_choice() {
        assert_eq!(
            user(&[false, false], &[false, false], Status::Online).effective(),
            Status::Offline
        );
        assert_eq!(
            user(&[true, false], &[false, false], Status::Online).effective(),
            Status::Online
        );
        assert_eq!(
            user(&[true, true], &[true, false], Status::Online).effective(),
            Status::Online
        );
        assert_eq!(
            user(&[true, true], &[true, true], Status::Online).effective(),
            Status::Away
        );
        assert_eq!(
            user(&[true, false], &[false, false], Status::Busy).effective(),
            Status::Busy
        );
        assert_eq!(
            user(&[false, false], &[false, false], Status::Busy).effective(),
            Status::Offline
        );
        // Peers' contributions: connected on another host counts; online anywhere wins.
        let mut remote = user(&[false, false], &[false, false], Status::Online);
        remote.remote.insert(7, Status::Away);
        assert_eq!(
            (remote.connection(), remote.local_connection()),
            (Status::Away, Status::Offline)
        );
        let mut idle_here = user(&[true, false], &[true, false], Status::Online);
        idle_here.remote.insert(7, Status::Online);
        assert_eq!(idle_here.effective(), Status::Online);
        idle_here.remote.clear();
        assert_eq!(idle_here.effective(), Status::Away);
        // Chosen "offline" is invisible: offline to others while connected.
        let invisible = user(&[true, false], &[false, false], Status::Offline);
        assert_eq!(
            (invisible.effective(), invisible.connection()),
            (Status::Offline, Status::Online)
        );
    }
}
