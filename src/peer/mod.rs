//! Host peering: typing and presence between chatd hosts, one TCP link per pair of hosts. Runs
//! on the tailer shard (which also owns host-level presence and sees every typing notice of this
//! host on the ephemeral lane), so no lock is shared with other shards: they reach it over the
//! mesh like anything else.
//!
//! - `codec`: frames on the wire (length-prefixed, postcard bodies, versioned hello).
//! - `handshake`: challenge–response authentication with the shared secret.
//! - `link`: the connection tasks — accepting, dialling with jittered back-off, and per link a
//!   reader, a writer with one bounded send queue, heartbeats and a silence timeout.
//! - [`Peers`] (here): the live links, what goes out on them and what comes in.
//!
//! What crosses: typing notices written on this host (sent once per link, dropped and counted
//! when a link's queue is full), and this host's *own* presence contributions: per user, whether
//! they are connected here (online / away) and the status they chose. Each host combines its own
//! connections with every peer's contributions, so a user connected anywhere is online
//! everywhere. A new link starts with a full snapshot each way; a peer that goes silent past the
//! timeout, or whose link closes and is not back shortly, has its contributions dropped. Messages
//! never cross here: they cross hosts through a shared store's change feed.

pub mod codec;
pub mod handshake;
pub mod link;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatd_shards::{Mesh, ShardStats, ShutdownSignal};

use crate::chat::presence::{Activity, Contribution, ContributionSink, Origin, PresenceOwner, Status};
use crate::chat::ShardMsg;
use crate::config::Cluster;
use crate::ids::RoomId;
use codec::{Frame, PeerActivity, PeerPresence, WireStatus};

/// Most presence entries per snapshot frame.
const SNAPSHOT_CHUNK: usize = 2048;
/// Longest accepted typing notice parts (the DDP door's limits are tighter).
const MAX_NAME_CHARS: usize = 256;
const MAX_ACTIVITIES: usize = 16;

/// Why a link ended or was refused. Blame: the peer (garbage, version, authentication,
/// oversized, silence) or the network / this host.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("connection: {0}")]
    Io(std::io::Error),
    #[error("closed by the peer")]
    Closed,
    #[error("garbage from the peer: {0}")]
    Garbage(&'static str),
    #[error("peer speaks link protocol version {0}, this host {v}", v = codec::VERSION)]
    Version(u16),
    #[error("peer failed authentication (wrong cluster secret)")]
    Unauthenticated,
    #[error("peer frame of {len} bytes is over the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("peer silent past the timeout")]
    Silent,
    #[error("connected to itself")]
    SelfLink,
    #[error("a link to this host already exists")]
    Duplicate,
    #[error("handshake not finished in time")]
    HandshakeTimeout,
    #[error("internal: {0}")]
    Internal(String),
}

impl PeerError {
    pub(crate) fn io(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Self::Closed
        } else {
            Self::Io(e)
        }
    }

    /// Whether the peer misbehaved (as opposed to the network or an orderly close).
    pub fn peer_at_fault(&self) -> bool {
        matches!(
            self,
            Self::Garbage(_) | Self::Version(_) | Self::Unauthenticated | Self::Oversized { .. }
        )
    }
}

/// Peering figures, written by the tailer shard, read by `/metrics` on any shard.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub links_up: AtomicU64,
    pub links_established: AtomicU64,
    /// Connections refused or closed because the peer misbehaved (garbage, wrong version,
    /// wrong secret, oversized frame).
    pub refused: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    /// Events not sent because a link's queue was full.
    pub dropped: AtomicU64,
    /// Times a peer's presence contributions expired (peer lost).
    pub expired: AtomicU64,
}

impl PeerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The receiving end of a link's send queue (its writer task holds it).
pub(crate) type SendQueue = glommio::channels::local_channel::LocalReceiver<Rc<Vec<u8>>>;

/// One live, authenticated link.
pub struct LinkHandle {
    /// Local serial of this link (also the origin tag of what it brings in).
    pub id: u64,
    /// The peer's host id and address.
    pub host: u64,
    pub name: String,
    /// Host id of the side that dialled: of two links between the same hosts, the one dialled by
    /// the smaller host id stays.
    pub dialer: u64,
    tx: glommio::channels::local_channel::LocalSender<Rc<Vec<u8>>>,
    /// A presence frame was dropped: send a fresh snapshot once the queue has drained.
    resync: Cell<bool>,
    /// Closed (permits never granted): wakes the link's tasks to end.
    closed: glommio::sync::Semaphore,
}

impl LinkHandle {
    pub fn close(&self) {
        self.closed.close();
    }
}

/// This host's side of the cluster (tailer shard only).
pub struct Peers {
    host: u64,
    name: String,
    secret: Vec<u8>,
    pub(crate) cfg: Cluster,
    links: RefCell<HashMap<u64, Rc<LinkHandle>>>,
    /// Addresses being dialled, each with whether it is still wanted (static peers always are;
    /// discovered ones until they leave the instances registry).
    dialling: RefCell<HashMap<String, Rc<Cell<bool>>>>,
    next_link: Cell<u64>,
    /// Per peer host: bumped whenever a link comes up, so a pending expiry knows it is stale.
    generations: RefCell<HashMap<u64, u64>>,
    owner: Rc<PresenceOwner>,
    ephemeral: Rc<Mesh<ShardMsg>>,
    shard_stats: Arc<ShardStats>,
    pub stats: Arc<PeerStats>,
    pub(crate) shutdown: ShutdownSignal,
}

fn wire_status(s: Status) -> WireStatus {
    match s {
        Status::Offline => WireStatus::Offline,
        Status::Online => WireStatus::Online,
        Status::Away => WireStatus::Away,
        Status::Busy => WireStatus::Busy,
    }
}

fn status(s: WireStatus) -> Status {
    match s {
        WireStatus::Offline => Status::Offline,
        WireStatus::Online => Status::Online,
        WireStatus::Away => Status::Away,
        WireStatus::Busy => Status::Busy,
    }
}

fn to_wire(c: &Contribution) -> PeerPresence {
    PeerPresence {
        uid: c.uid.to_string(),
        username: c.username.clone(),
        name: c.name.clone(),
        connection: wire_status(c.connection),
        chosen: wire_status(c.chosen),
        text: c.text.clone(),
    }
}

fn from_wire(p: PeerPresence) -> Contribution {
    // A connection is online, away or offline; anything else from a peer counts as online.
    let connection = match status(p.connection) {
        Status::Busy => Status::Online,
        s => s,
    };
    Contribution {
        uid: p.uid.as_str().into(),
        username: p.username,
        name: p.name,
        connection,
        chosen: status(p.chosen),
        text: p.text,
    }
}

impl Peers {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: u64,
        name: String,
        secret: Vec<u8>,
        cfg: Cluster,
        owner: Rc<PresenceOwner>,
        ephemeral: Rc<Mesh<ShardMsg>>,
        shard_stats: Arc<ShardStats>,
        stats: Arc<PeerStats>,
        shutdown: ShutdownSignal,
    ) -> Rc<Self> {
        let peers = Rc::new(Self {
            host,
            name,
            secret,
            cfg,
            links: RefCell::new(HashMap::new()),
            dialling: RefCell::new(HashMap::new()),
            next_link: Cell::new(1),
            generations: RefCell::new(HashMap::new()),
            owner: owner.clone(),
            ephemeral,
            shard_stats,
            stats,
            shutdown,
        });
        let sink: Rc<dyn ContributionSink> = peers.clone();
        owner.set_peers(Rc::downgrade(&sink));
        peers
    }

    pub fn host(&self) -> u64 {
        self.host
    }

    /// A fresh hello for one connection.
    pub(crate) fn hello(&self) -> codec::Hello {
        codec::Hello {
            host: self.host,
            nonce: rand::random(),
            name: self.name.clone(),
        }
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// This host's name as peers see it (its advertised `ip:port` when it has one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts dialling `addr` (and keeps it linked) unless that is already so; returns the flag
    /// that keeps its dial loop going.
    pub(crate) fn want(&self, addr: &str) -> Option<Rc<Cell<bool>>> {
        let mut dialling = self.dialling.borrow_mut();
        if let Some(flag) = dialling.get(addr) {
            flag.set(true);
            return None;
        }
        let flag = Rc::new(Cell::new(true));
        dialling.insert(addr.to_owned(), flag.clone());
        Some(flag)
    }

    /// Stops dialling `addr` (a live link stays until it ends by itself).
    pub(crate) fn unwant(&self, addr: &str) {
        if let Some(flag) = self.dialling.borrow_mut().remove(addr) {
            flag.set(false);
        }
    }

    /// Addresses being dialled.
    pub(crate) fn dialled(&self) -> Vec<String> {
        self.dialling.borrow().keys().cloned().collect()
    }

    /// Whether a live link to `host` exists.
    pub fn linked_to(&self, host: u64) -> bool {
        self.links.borrow().contains_key(&host)
    }

    /// Registers an authenticated link. Of two links between the same two hosts, the one dialled
    /// by the smaller host id stays (both hosts apply the same rule, so they keep the same one).
    fn register(&self, peer: &codec::Hello, dialer: u64) -> Result<(Rc<LinkHandle>, SendQueue), PeerError> {
        let existing = self.links.borrow().get(&peer.host).cloned();
        if let Some(old) = existing {
            if old.dialer <= dialer {
                return Err(PeerError::Duplicate);
            }
            tracing::debug!(peer = %peer.name, "replacing a duplicate link");
            old.close();
        }
        let (tx, rx) = glommio::channels::local_channel::new_bounded(self.cfg.send_queue_frames);
        let id = self.next_link.get();
        self.next_link.set(id + 1);
        let handle = Rc::new(LinkHandle {
            id,
            host: peer.host,
            name: peer.name.clone(),
            dialer,
            tx,
            // A new link starts with our whole presence state.
            resync: Cell::new(true),
            closed: glommio::sync::Semaphore::new(0),
        });
        if self.links.borrow_mut().insert(peer.host, handle.clone()).is_none() {
            self.stats.links_up.fetch_add(1, Ordering::Relaxed);
        }
        *self.generations.borrow_mut().entry(peer.host).or_insert(0) += 1;
        PeerStats::bump(&self.stats.links_established);
        Ok((handle, rx))
    }

    /// A link ended. Its host's presence contributions expire after `grace` unless a link to
    /// that host is back by then (and has replaced them with a snapshot).
    fn unregister(self: &Rc<Self>, link: &LinkHandle, grace: Duration) {
        let removed = {
            let mut links = self.links.borrow_mut();
            if links.get(&link.host).is_some_and(|l| l.id == link.id) {
                links.remove(&link.host);
                true
            } else {
                false
            }
        };
        if !removed {
            return;
        }
        self.stats.links_up.fetch_sub(1, Ordering::Relaxed);
        let host = link.host;
        let generation = self.generations.borrow().get(&host).copied().unwrap_or(0);
        let me = self.clone();
        glommio::spawn_local(async move {
            if !grace.is_zero() {
                glommio::timer::sleep(grace).await;
            }
            let current = me.generations.borrow().get(&host).copied().unwrap_or(0);
            if current == generation && !me.linked_to(host) {
                me.generations.borrow_mut().remove(&host);
                PeerStats::bump(&me.stats.expired);
                me.owner.drop_host(host);
            }
        })
        .detach();
    }

    /// Queues `frame` on every link; a full queue drops it (counted). `presence` frames that
    /// are dropped are made good by a snapshot once that link catches up.
    fn broadcast(&self, frame: &Frame, presence: bool) {
        let links: Vec<Rc<LinkHandle>> = self.links.borrow().values().cloned().collect();
        if links.is_empty() {
            return;
        }
        let bytes = match codec::encode(frame) {
            Ok(b) => Rc::new(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a peer frame");
                return;
            }
        };
        for link in links {
            if link.tx.try_send(bytes.clone()).is_err() {
                PeerStats::bump(&self.stats.dropped);
                if presence {
                    link.resync.set(true);
                }
            }
        }
    }

    /// A typing notice written on this host: to every peer.
    pub fn send_activity(&self, a: &Activity) {
        if a.origin.host != 0 {
            return;
        }
        let frame = Frame::Typing(PeerActivity {
            rid: a.rid.to_string(),
            username: a.username.clone(),
            activities: a.activities.clone(),
            extra: a.extra.as_ref().map(|v| v.to_string()),
        });
        self.broadcast(&frame, false);
    }

    /// This host's whole presence state, as frames.
    fn snapshot_frames(&self) -> Vec<Vec<u8>> {
        let all = self.owner.local_snapshot();
        let mut frames = Vec::new();
        let mut chunks = all.chunks(SNAPSHOT_CHUNK).peekable();
        if chunks.peek().is_none() {
            if let Ok(f) = codec::encode(&Frame::Snapshot {
                entries: Vec::new(),
                last: true,
            }) {
                frames.push(f);
            }
        }
        while let Some(chunk) = chunks.next() {
            let frame = Frame::Snapshot {
                entries: chunk.iter().map(to_wire).collect(),
                last: chunks.peek().is_none(),
            };
            match codec::encode(&frame) {
                Ok(f) => frames.push(f),
                Err(e) => tracing::error!(error = %e, "cannot encode a presence snapshot"),
            }
        }
        frames
    }

    /// A typing notice from a peer: to every shard of this host over the ephemeral lane (full
    /// lanes drop it, counted). Malformed notices are dropped.
    fn on_typing(&self, link: &LinkHandle, a: PeerActivity) {
        let sane = !a.rid.is_empty()
            && a.rid.len() <= MAX_NAME_CHARS
            && !a.username.is_empty()
            && a.username.len() <= MAX_NAME_CHARS
            && a.activities.len() <= MAX_ACTIVITIES
            && a.activities.iter().all(|s| s.len() <= MAX_NAME_CHARS);
        let extra = match a.extra.as_deref().map(serde_json::from_str::<serde_json::Value>) {
            None => None,
            Some(Ok(v)) if v.is_object() => Some(v),
            Some(_) => return,
        };
        if !sane {
            return;
        }
        let activity = Arc::new(Activity {
            rid: RoomId::from(a.rid.as_str()),
            username: a.username,
            activities: a.activities,
            extra,
            origin: Origin {
                host: u32::try_from(link.id).unwrap_or(u32::MAX).max(1),
                shard: 0,
                session: 0,
            },
        });
        for shard in 0..self.ephemeral.nr_shards() {
            if self
                .ephemeral
                .try_send_to(shard, ShardMsg::Activity(activity.clone()))
                .is_err()
            {
                ShardStats::add(&self.shard_stats.dropped, 1);
            }
        }
    }

    fn on_presence(&self, link: &LinkHandle, entries: Vec<PeerPresence>) {
        let list: Vec<Contribution> = entries.into_iter().map(from_wire).collect();
        self.owner.on_remote(link.host, list);
    }

    fn on_snapshot(&self, link: &LinkHandle, entries: Vec<PeerPresence>) {
        let list: Vec<Contribution> = entries.into_iter().map(from_wire).collect();
        self.owner.replace_host(link.host, list);
    }

    /// Closes every link (shutdown).
    pub fn close_all(&self) {
        for link in self.links.borrow().values() {
            link.close();
        }
    }
}

impl ContributionSink for Peers {
    /// Changes of this host's own presence contributions: to every peer.
    fn send_presence(&self, changes: &[Contribution]) {
        for chunk in changes.chunks(SNAPSHOT_CHUNK) {
            self.broadcast(&Frame::Presence(chunk.iter().map(to_wire).collect()), true);
        }
    }
}
