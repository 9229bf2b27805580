//! The change-feed tailer (tailer shard only). It reads the store's change log in order and
//! sends each change over the mesh to exactly the shards where a user who cares is logged in.
//!
//! Routing state lives only here: which rooms each user belongs to (loaded at start, then kept
//! current by the membership changes flowing through the feed) and on which shards each user
//! has sessions (from `UserShard` notices, counted so that their arrival order never matters).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use chatd_shards::{Mesh, ShardStats, ShutdownSignal};
use futures::StreamExt;

use super::presence::PresenceOwner;
use super::ShardMsg;
use crate::ids::{RoomId, UserId};
use crate::store::{Change, ChangeRecord, FeedEntry, FeedItem, FeedReceiver, Mark, Store, StoreError};

/// How often [`Tailer::watch_progress`] looks at the feed.
const PROGRESS_PROBE: Duration = Duration::from_millis(250);

/// Test hook: while the file this environment variable names exists, the tailer holds the
/// batches it reads (so tests can stop the feed with changes pending).
pub const PAUSE_HOOK_ENV: &str = "CHATD_TEST_PAUSE_TAILER_FILE";

/// Change records one shard may have waiting in its outbox before the tailer gives up on it:
/// the records are dropped and the shard is told to reload (its clients reconnect), so a stalled
/// shard costs bounded memory and never holds up the others.
const OUTBOX_MAX_RECORDS: usize = 200_000;

/// What the tailer has for one shard and has not handed to the mesh yet. The tailer only appends
/// (never waits); the shard's own sender task drains it into the mesh, so a shard whose queue is
/// full delays nobody else. Consecutive `Changes` are merged into one message.
#[derive(Default)]
struct Outbox {
    queue: RefCell<VecDeque<ShardMsg>>,
    records: Cell<usize>,
    waker: Cell<Option<Waker>>,
    /// Times this shard's backlog went over [`OUTBOX_MAX_RECORDS`].
    overflows: Cell<u64>,
}

impl Outbox {
    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Appends a batch (merged into a `Changes` still waiting); `false` when the backlog went over
    /// its cap, in which case everything waiting was replaced by a reload.
    fn push_changes(&self, records: Vec<Arc<ChangeRecord>>, head: u64) -> bool {
        let mut queue = self.queue.borrow_mut();
        let added = records.len();
        if self.records.get() + added > OUTBOX_MAX_RECORDS {
            queue.clear();
            self.records.set(0);
            self.overflows.set(self.overflows.get() + 1);
            queue.push_back(ShardMsg::Reload);
            queue.push_back(ShardMsg::Changes {
                records: Vec::new(),
                head,
            });
            drop(queue);
            self.wake();
            return false;
        }
        self.records.set(self.records.get() + added);
        match queue.back_mut() {
            Some(ShardMsg::Changes {
                records: waiting,
                head: waiting_head,
            }) => {
                waiting.extend(records);
                *waiting_head = head;
            }
            _ => queue.push_back(ShardMsg::Changes { records, head }),
        }
        drop(queue);
        self.wake();
        true
    }

    fn push(&self, msg: ShardMsg) {
        self.queue.borrow_mut().push_back(msg);
        self.wake();
    }

    async fn next(&self) -> ShardMsg {
        poll_fn(|cx| match self.queue.borrow_mut().pop_front() {
            Some(msg) => {
                if let ShardMsg::Changes { records, .. } = &msg {
                    self.records.set(self.records.get().saturating_sub(records.len()));
                }
                Poll::Ready(msg)
            }
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Drains one shard's outbox into the mesh, in order, until the tailer ends (dropping its task).
async fn drain_outbox(mesh: Rc<Mesh<ShardMsg>>, shard: usize, outbox: Rc<Outbox>) {
    loop {
        let msg = outbox.next().await;
        if mesh.send_to(shard, msg).await.is_err() {
            tracing::debug!(shard, "shard gone; changes not delivered there");
        }
    }
}

#[derive(Default)]
struct Routing {
    /// user → sessions-present counter per shard (> 0: the user is on that shard).
    user_shards: HashMap<UserId, Vec<i32>>,
    user_rooms: HashMap<UserId, HashSet<RoomId>>,
    /// room → number of (member, shard) presences per shard.
    room_shards: HashMap<RoomId, Vec<u32>>,
}

impl Routing {
    fn user_mask(&self, uid: &UserId) -> u64 {
        self.user_shards.get(uid).map_or(0, |c| mask(c.iter().map(|n| *n > 0)))
    }

    fn room_mask(&self, rid: &RoomId) -> u64 {
        self.room_shards.get(rid).map_or(0, |c| mask(c.iter().map(|n| *n > 0)))
    }

    fn bump_room(&mut self, rid: &RoomId, shard: usize, up: bool, nr: usize) {
        let counts = self.room_shards.entry(rid.clone()).or_insert_with(|| vec![0; nr]);
        if let Some(c) = counts.get_mut(shard) {
            *c = if up { *c + 1 } else { c.saturating_sub(1) };
        }
        if counts.iter().all(|c| *c == 0) {
            self.room_shards.remove(rid);
        }
    }

    fn user_shard(&mut self, uid: &UserId, shard: usize, online: bool, nr: usize) {
        let counts = self.user_shards.entry(uid.clone()).or_insert_with(|| vec![0; nr]);
        let Some(c) = counts.get_mut(shard) else { return };
        let was = *c > 0;
        *c += if online { 1 } else { -1 };
        let is = *c > 0;
        if counts.iter().all(|c| *c == 0) {
            self.user_shards.remove(uid);
        }
        if was != is {
            let rooms: Vec<RoomId> = self
                .user_rooms
                .get(uid)
                .map(|r| r.iter().cloned().collect())
                .unwrap_or_default();
            for rid in rooms {
                self.bump_room(&rid, shard, is, nr);
            }
        }
    }

    fn membership(&mut self, uid: &UserId, rid: &RoomId, added: bool, nr: usize) {
        let rooms = self.user_rooms.entry(uid.clone()).or_default();
        let changed = if added {
            rooms.insert(rid.clone())
        } else {
            rooms.remove(rid)
        };
        if rooms.is_empty() {
            self.user_rooms.remove(uid);
        }
        if !changed {
            return;
        }
        let online: Vec<usize> = self
            .user_shards
            .get(uid)
            .map(|c| c.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, _)| i).collect())
            .unwrap_or_default();
        for shard in online {
            self.bump_room(rid, shard, added, nr);
        }
    }
}

fn mask(bits: impl Iterator<Item = bool>) -> u64 {
    bits.enumerate()
        .fold(0u64, |m, (i, on)| if on && i < 64 { m | (1 << i) } else { m })
}

pub struct Tailer {
    store: Store,
    mesh: Rc<Mesh<ShardMsg>>,
    nr_shards: usize,
    stats: Arc<ShardStats>,
    routing: RefCell<Routing>,
    presence: Rc<PresenceOwner>,
    /// Mark of the last change distributed.
    position: Cell<Mark>,
    /// Records that failed to decode (counted, logged, skipped; never a crash).
    pub bad_records: Cell<u64>,
    /// One per shard (see [`Outbox`]).
    outboxes: Vec<Rc<Outbox>>,
}

impl Tailer {
    /// Loads every membership (on a reader thread); the feed starts at the head at start
    /// (`position`): sessions only exist from now on, and they load their own state.
    pub async fn new(
        store: Store,
        mesh: Rc<Mesh<ShardMsg>>,
        stats: Arc<ShardStats>,
        position: Mark,
    ) -> Result<Self, StoreError> {
        let nr_shards = mesh.nr_shards();
        let mut routing = Routing::default();
        Self::load_memberships(&store, &mut routing).await?;
        Ok(Self {
            presence: PresenceOwner::new(store.clone(), mesh.clone()),
            store,
            mesh,
            nr_shards,
            stats,
            routing: RefCell::new(routing),
            position: Cell::new(position),
            bad_records: Cell::new(0),
            outboxes: (0..nr_shards).map(|_| Rc::new(Outbox::default())).collect(),
        })
    }

    async fn load_memberships(store: &Store, routing: &mut Routing) -> Result<(), StoreError> {
        routing.user_rooms.clear();
        for (rid, uid) in store.all_memberships().await? {
            routing.user_rooms.entry(uid).or_default().insert(rid);
        }
        Ok(())
    }

    /// The feed lost changes: membership changes among them are unknown, so routing is loaded
    /// again (users' shards are kept), and every shard tells its clients to reconnect and reload.
    async fn history_lost(&self) {
        let mut fresh = Routing::default();
        match Self::load_memberships(&self.store, &mut fresh).await {
            Ok(()) => {
                let mut r = self.routing.borrow_mut();
                let user_shards = std::mem::take(&mut r.user_shards);
                *r = fresh;
                let nr = self.nr_shards;
                for (uid, counts) in user_shards {
                    for (shard, n) in counts.iter().enumerate() {
                        for _ in 0..(*n).max(0) {
                            r.user_shard(&uid, shard, true, nr);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot reload memberships after the feed lost history"),
        }
        // Behind the changes already waiting for each shard, in order.
        for outbox in &self.outboxes {
            outbox.push(ShardMsg::Reload);
        }
    }

    /// The host-level presence owner (it lives on the tailer shard).
    pub fn presence(&self) -> &Rc<PresenceOwner> {
        &self.presence
    }

    /// Handles a `UserShard` notice and acknowledges it once routing includes it.
    pub async fn on_user_shard(
        &self,
        uid: UserId,
        shard: usize,
        online: bool,
        ack: Option<u64>,
        seed: Option<Box<super::presence::PresenceSeed>>,
    ) {
        self.routing
            .borrow_mut()
            .user_shard(&uid, shard, online, self.nr_shards);
        self.presence
            .on_shard_presence(&uid, shard, online, seed.map(|s| *s))
            .await;
        if let Some(token) = ack {
            if self.mesh.send_to(shard, ShardMsg::Ack { token }).await.is_err() {
                tracing::debug!(shard, "shard gone before its ack");
            }
        }
    }

    /// Shards that must see `change`; updates routing for membership changes (a joining user's
    /// shards are included, and so are a leaving user's).
    fn route(&self, change: &Change) -> u64 {
        let nr = self.nr_shards;
        let mut r = self.routing.borrow_mut();
        match change {
            Change::MemberAdded { room, subscription } => {
                r.membership(&subscription.u.id, &room.id, true, nr);
                r.room_mask(&room.id) | r.user_mask(&subscription.u.id)
            }
            Change::MemberRemoved { room, uid, .. } => {
                let m = r.room_mask(&room.id) | r.user_mask(uid);
                r.membership(uid, &room.id, false, nr);
                m
            }
            // Published by the presence owner (on this shard), not delivered as a change.
            Change::UserStatusChanged {
                user,
                status,
                status_text,
            } => {
                self.presence.on_chosen_status(user, status, status_text);
                0
            }
            other => {
                let room = other.room_id().map_or(0, |rid| r.room_mask(rid));
                let user = other.user_id().map_or(0, |uid| r.user_mask(uid));
                room | user
            }
        }
    }

    /// Distributes one decoded batch from the feed thread: each change to exactly the shards
    /// that care, and the mark reached to every shard (so waiting writers are released).
    async fn distribute(&self, batch: Vec<FeedItem>) {
        let mut per_shard: Vec<Vec<Arc<ChangeRecord>>> = (0..self.nr_shards).map(|_| Vec::new()).collect();
        let mut lost = false;
        for item in batch {
            self.position.set(self.position.get().max(item.mark));
            let rec = match item.entry {
                FeedEntry::Change(rec) => rec,
                FeedEntry::Undecodable(e) => {
                    self.bad_records.set(self.bad_records.get() + 1);
                    ShardStats::add(&self.stats.dropped, 1);
                    tracing::error!(mark = item.mark, error = %e, "change record failed to decode; skipped");
                    continue;
                }
                FeedEntry::HistoryLost { resumed_at } => {
                    tracing::error!(mark = item.mark, resumed_at = %resumed_at, "the change feed lost changes and goes on from now: routing reloaded, clients told to reload");
                    lost = true;
                    continue;
                }
            };
            let dest = self.route(&rec.change);
            for (shard, list) in per_shard.iter_mut().enumerate() {
                if shard < 64 && dest & (1 << shard) != 0 {
                    list.push(rec.clone());
                }
            }
        }
        let head = self.position.get();
        self.stats.feed_delivered.store(head, Ordering::Relaxed);
        // Every shard gets the head (writers wait on it anywhere); records only where routed.
        for (shard, (records, outbox)) in per_shard.into_iter().zip(&self.outboxes).enumerate() {
            if !outbox.push_changes(records, head) {
                ShardStats::add(&self.stats.dropped, 1);
                tracing::error!(
                    shard,
                    max_records = OUTBOX_MAX_RECORDS,
                    overflows = outbox.overflows.get(),
                    "a shard fell too far behind the change feed: its backlog was dropped and its clients told to reload"
                );
            }
        }
        if lost {
            self.history_lost().await;
        }
    }

    /// Runs until shutdown, keeping the shard's `feed_stalled_ms` figure: how long the store
    /// has had changes the tailer has not handed on while the tailer did not move.
    pub async fn watch_progress(&self, shutdown: ShutdownSignal) {
        let mut since = (self.position.get(), Instant::now());
        loop {
            if !shutdown.sleep(PROGRESS_PROBE).await {
                return;
            }
            let delivered = self.position.get();
            if delivered >= self.store.head() || delivered != since.0 {
                since = (delivered, Instant::now());
            }
            let stalled = u64::try_from(since.1.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.stats.feed_stalled_ms.store(stalled, Ordering::Relaxed);
        }
    }

    /// Runs until shutdown (or the feed ends), distributing every batch the feed thread reads.
    pub async fn run(&self, mut feed: FeedReceiver, shutdown: ShutdownSignal) {
        let pause_file = std::env::var_os(PAUSE_HOOK_ENV).map(std::path::PathBuf::from);
        // One sender per shard; dropped (cancelled) when this returns.
        let _senders: Vec<_> = self
            .outboxes
            .iter()
            .enumerate()
            .map(|(shard, outbox)| glommio::spawn_local(drain_outbox(self.mesh.clone(), shard, outbox.clone())))
            .collect();
        loop {
            let next = futures_lite::future::or(async { feed.next().await }, async {
                shutdown.wait().await;
                None
            })
            .await;
            if let Some(file) = &pause_file {
                // Test hook: hold every batch while the file exists.
                while file.exists() && shutdown.sleep(PROGRESS_PROBE).await {}
            }
            match next {
                Some(batch) => self.distribute(batch).await,
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_follows_users_between_shards_and_rooms() {
        let mut r = Routing::default();
        let (u, v) = (UserId::from("u"), UserId::from("v"));
        let room = RoomId::from("r");
        r.membership(&u, &room, true, 2);
        assert_eq!(r.room_mask(&room), 0, "nobody online yet");
        r.user_shard(&u, 1, true, 2);
        assert_eq!(r.room_mask(&room), 0b10);
        r.user_shard(&v, 0, true, 2);
        r.membership(&v, &room, true, 2);
        assert_eq!(r.room_mask(&room), 0b11);
        // Offline arriving before online (reordered notices) nets out.
        r.user_shard(&u, 1, false, 2);
        assert_eq!(r.room_mask(&room), 0b01);
        r.membership(&v, &room, false, 2);
        assert_eq!(r.room_mask(&room), 0);
        assert_eq!(r.user_mask(&v), 0b01);
    }

    fn changes(msg: Option<ShardMsg>) -> Option<(usize, u64)> {
        match msg {
            Some(ShardMsg::Changes { records, head }) => Some((records.len(), head)),
            _ => None,
        }
    }

    fn record(seq: u64) -> Arc<ChangeRecord> {
        Arc::new(ChangeRecord {
            seq,
            change: Change::UserStatusChanged {
                user: crate::store::UserRef {
                    id: UserId::from("u"),
                    username: "u".into(),
                    name: String::new(),
                },
                status: "online".into(),
                status_text: String::new(),
            },
        })
    }

    fn pop(outbox: &Outbox) -> Option<ShardMsg> {
        outbox.queue.borrow_mut().pop_front().inspect(|m| {
            if let ShardMsg::Changes { records, .. } = m {
                outbox.records.set(outbox.records.get() - records.len());
            }
        })
    }

    #[test]
    fn an_outbox_merges_waiting_batches_and_a_stalled_shard_is_told_to_reload() {
        let outbox = Outbox::default();
        assert!(outbox.push_changes(vec![record(1)], 1));
        assert!(outbox.push_changes(vec![record(2), record(3)], 3));
        assert!(outbox.push_changes(Vec::new(), 4));
        // Three batches waiting became one message with the latest head.
        assert_eq!(changes(pop(&outbox)), Some((3, 4)));
        assert!(pop(&outbox).is_none());
        // Past the cap: the backlog is replaced by a reload and the head, memory stays bounded.
        let big: Vec<_> = (0..OUTBOX_MAX_RECORDS as u64).map(record).collect();
        assert!(outbox.push_changes(big, 10));
        assert!(!outbox.push_changes(vec![record(11)], 11));
        assert_eq!(outbox.records.get(), 0);
        assert!(matches!(pop(&outbox), Some(ShardMsg::Reload)));
        assert_eq!(changes(pop(&outbox)), Some((0, 11)));
        // It goes on normally afterwards.
        assert!(outbox.push_changes(vec![record(12)], 12));
        assert_eq!(changes(pop(&outbox)), Some((1, 12)));
    }
}
