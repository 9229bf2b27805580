//! The embedded backend: one redb file. The writer thread ("chatd-store") owns every write
//! transaction and commits requests in groups; reads run on the calling thread (shards, CLI) in
//! their own MVCC read transaction and never wait for the writer.
//!
//! Every data change appends a [`ChangeRecord`] to the `changes` table inside the same
//! transaction, so the change log and the data can never disagree, even after `kill -9`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures::channel::{mpsc, oneshot};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::model::*;
use super::{StoreError, StoreResult, WriteOp, WriteOutcome, WriteOutput, MAX_GROUP_COMMIT, WRITE_QUEUE_CAPACITY};
use crate::ids::{direct_room_id, now_ms, random_id, MessageId, RoomId, UserId};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const USERNAMES: TableDefinition<&str, &str> = TableDefinition::new("usernames");
const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
const ROOM_NAMES: TableDefinition<&str, &str> = TableDefinition::new("room_names");
/// (uid, rid) → subscription.
const SUBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("subscriptions");
/// (rid, uid) → (): room membership index.
const MEMBERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("members");
/// (rid, ts, seq) → message. `ts` strictly increases within a room, so this is also seq order.
const MESSAGES: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("messages");
/// message id → its key in `messages`.
const MESSAGE_IDS: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("message_ids");
/// change seq → change record.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_CHANGE_SEQ: &str = "change_seq";

/// Change-log entries kept behind the head; older ones are pruned by the writer.
const CHANGELOG_RETAIN: u64 = 200_000;
/// Prune the change log every this many commits.
const PRUNE_EVERY_COMMITS: u64 = 1024;
/// Longest message text accepted by the store (characters).
pub const MAX_MESSAGE_CHARS: usize = 5000;
/// The default public channel every new user joins.
pub const GENERAL_ROOM_ID: &str = "GENERAL";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the data directory {0} is in use by another chatd process (or `chatd user add`); stop it first")]
    InUse(String),
    #[error("cannot open the store at {path}: {reason}")]
    Failed { path: String, reason: String },
}

enum Request {
    Write {
        op: WriteOp,
        reply: oneshot::Sender<StoreResult<WriteOutcome>>,
    },
    Stop,
}

/// Wakes the change-feed tailer after each commit. Holds the newest committed change seq.
pub struct CommitFeed {
    pub wakeups: mpsc::Receiver<()>,
    pub head: Arc<AtomicU64>,
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    tx: Sender<Request>,
    head: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn ie<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Internal(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(ie)
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(b).map_err(ie)
}

fn ts_key(ts: i64) -> u64 {
    ts.max(0) as u64
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/chatd.redb` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<(Arc<Self>, CommitFeed), OpenError> {
        let db = Self::open_db(dir)?;
        let db = Arc::new(db);
        let failed = |e: StoreError| OpenError::Failed {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        let head_seq = bootstrap(&db).map_err(failed)?;
        let head = Arc::new(AtomicU64::new(head_seq));
        let (tx, rx) = crossbeam_channel::bounded(WRITE_QUEUE_CAPACITY);
        let (wake_tx, wakeups) = mpsc::channel(1);
        let writer_db = db.clone();
        let writer_head = head.clone();
        let writer = std::thread::Builder::new()
            .name("chatd-store".into())
            .spawn(move || writer_loop(writer_db, rx, writer_head, wake_tx))
            .map_err(|e| OpenError::Failed {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        let store = Arc::new(Self {
            db,
            tx,
            head: head.clone(),
            writer: Mutex::new(Some(writer)),
        });
        Ok((store, CommitFeed { wakeups, head }))
    }

    fn open_db(dir: &Path) -> Result<Database, OpenError> {
        let path = dir.join("chatd.redb");
        let fail = |reason: String| OpenError::Failed {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        match Database::create(&path) {
            Ok(db) => Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(OpenError::InUse(dir.display().to_string())),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// Submits a write and waits (asynchronously) until its group commit is durable.
    pub async fn submit(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
        let (reply, rx) = oneshot::channel();
        let mut req = Request::Write { op, reply };
        loop {
            match self.tx.try_send(req) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    // Back-pressure without blocking the shard's event loop.
                    req = back;
                    glommio::timer::sleep(Duration::from_micros(500)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(StoreError::Internal("store is shut down".into())),
            }
        }
        rx.await
            .map_err(|_| StoreError::Internal("store writer stopped".into()))?
    }

    /// Submits a write from a plain thread (CLI), blocking until durable.
    pub fn submit_blocking(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Write { op, reply })
            .map_err(|_| StoreError::Internal("store is shut down".into()))?;
        futures_lite::future::block_on(rx).map_err(|_| StoreError::Internal("store writer stopped".into()))?
    }

    /// Stops the writer after it finished every queued request, and waits for it.
    pub fn close(&self) {
        let _ = self.tx.send(Request::Stop);
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Newest committed change seq.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> StoreResult<T>) -> StoreResult<T> {
        let txn = self.db.begin_read().map_err(ie)?;
        f(&txn)
    }

    pub fn user(&self, uid: &UserId) -> StoreResult<Option<User>> {
        self.read(|t| get_json(t, USERS, uid.as_str()))
    }

    pub fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        self.read(|t| by_index(t, USERNAMES, username, USERS))
    }

    pub fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.read(|t| by_index(t, EMAILS, email, USERS))
    }

    /// The user owning an unexpired token (looked up by the token's SHA-256).
    pub fn user_by_token_hash(&self, token_hash: &str, now: i64) -> StoreResult<Option<(User, LoginToken)>> {
        self.read(|t| {
            let Some(token): Option<LoginToken> = get_json(t, TOKENS, token_hash)? else {
                return Ok(None);
            };
            if token.expires_at <= now {
                return Ok(None);
            }
            Ok(get_json::<User>(t, USERS, token.uid.as_str())?.map(|u| (u, token)))
        })
    }

    pub fn room(&self, rid: &RoomId) -> StoreResult<Option<Room>> {
        self.read(|t| get_json(t, ROOMS, rid.as_str()))
    }

    pub fn room_by_name(&self, name: &str) -> StoreResult<Option<Room>> {
        self.read(|t| by_index(t, ROOM_NAMES, name, ROOMS))
    }

    pub fn subscription(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>> {
        self.read(|t| {
            let subs = t.open_table(SUBS).map_err(ie)?;
            let v = subs.get((uid.as_str(), rid.as_str())).map_err(ie)?;
            v.map(|v| dec(v.value())).transpose()
        })
    }

    /// The user's subscriptions with their rooms.
    pub fn subscriptions_of(&self, uid: &UserId) -> StoreResult<Vec<(Subscription, Room)>> {
        self.read(|t| {
            let subs = t.open_table(SUBS).map_err(ie)?;
            let rooms = t.open_table(ROOMS).map_err(ie)?;
            let mut out = Vec::new();
            for entry in subs.range((uid.as_str(), "")..).map_err(ie)? {
                let (k, v) = entry.map_err(ie)?;
                if k.value().0 != uid.as_str() {
                    break;
                }
                let sub: Subscription = dec(v.value())?;
                if let Some(room) = rooms.get(sub.rid.as_str()).map_err(ie)? {
                    out.push((sub, dec(room.value())?));
                }
            }
            Ok(out)
        })
    }

    /// Member user ids of a room.
    pub fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>> {
        self.read(|t| {
            let members = t.open_table(MEMBERS).map_err(ie)?;
            let mut out = Vec::new();
            for entry in members.range((rid.as_str(), "")..).map_err(ie)? {
                let (k, _) = entry.map_err(ie)?;
                let (r, u) = k.value();
                if r != rid.as_str() {
                    break;
                }
                out.push(UserId::from(u));
            }
            Ok(out)
        })
    }

    /// Every (room, member) pair, for the tailer's routing table at start.
    pub fn all_memberships(&self) -> StoreResult<Vec<(RoomId, UserId)>> {
        self.read(|t| {
            let members = t.open_table(MEMBERS).map_err(ie)?;
            let mut out = Vec::new();
            for entry in members.iter().map_err(ie)? {
                let (k, _) = entry.map_err(ie)?;
                let (r, u) = k.value();
                out.push((RoomId::from(r), UserId::from(u)));
            }
            Ok(out)
        })
    }

    /// Public channels, by name.
    pub fn channels(&self) -> StoreResult<Vec<Room>> {
        self.read(|t| {
            let rooms = t.open_table(ROOMS).map_err(ie)?;
            let mut out = Vec::new();
            for entry in rooms.iter().map_err(ie)? {
                let (_, v) = entry.map_err(ie)?;
                let room: Room = dec(v.value())?;
                if room.t == RoomType::Channel {
                    out.push(room);
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    pub fn message(&self, mid: &MessageId) -> StoreResult<Option<Message>> {
        self.read(|t| {
            let ids = t.open_table(MESSAGE_IDS).map_err(ie)?;
            let Some(key) = ids.get(mid.as_str()).map_err(ie)? else {
                return Ok(None);
            };
            let (rid, ts, seq) = key.value();
            let messages = t.open_table(MESSAGES).map_err(ie)?;
            let v = messages.get((rid, ts, seq)).map_err(ie)?;
            v.map(|v| dec(v.value())).transpose()
        })
    }

    /// Messages of a room, newest first, with `ts` in `(oldest, latest)` (bounds inclusive when
    /// `inclusive`), skipping `offset` and returning at most `limit`. Also returns how many
    /// messages matched in total (for REST `total`).
    pub fn history(&self, rid: &RoomId, q: &HistoryQuery) -> StoreResult<(Vec<Message>, u64)> {
        self.read(|t| {
            let messages = t.open_table(MESSAGES).map_err(ie)?;
            let lo = match q.oldest {
                Some(o) if q.inclusive => ts_key(o),
                Some(o) => ts_key(o).saturating_add(1),
                None => 0,
            };
            let hi = match q.latest {
                Some(l) if q.inclusive => ts_key(l).saturating_add(1),
                Some(l) => ts_key(l),
                None => u64::MAX,
            };
            let mut out = Vec::new();
            let mut total = 0u64;
            if lo >= hi {
                return Ok((out, 0));
            }
            let range = messages
                .range((rid.as_str(), lo, 0)..(rid.as_str(), hi, 0))
                .map_err(ie)?;
            for entry in range.rev() {
                let (_, v) = entry.map_err(ie)?;
                total += 1;
                if total <= q.offset {
                    continue;
                }
                if out.len() < q.limit {
                    out.push(dec(v.value())?);
                } else if !q.count_total {
                    break;
                }
            }
            Ok((out, total))
        })
    }

    /// Change-log records after `seq`, oldest first, at most `limit`. A record that fails to
    /// decode is returned as an error in its slot so the reader can count it and move past it.
    pub fn changes_after(&self, seq: u64, limit: usize) -> StoreResult<Vec<(u64, StoreResult<ChangeRecord>)>> {
        self.read(|t| {
            let changes = t.open_table(CHANGES).map_err(ie)?;
            let mut out = Vec::new();
            for entry in changes.range(seq.saturating_add(1)..).map_err(ie)?.take(limit) {
                let (k, v) = entry.map_err(ie)?;
                out.push((k.value(), dec(v.value())));
            }
            Ok(out)
        })
    }

    /// The rooms a user belongs to, and the change-log position this snapshot reflects.
    pub fn memberships_of(&self, uid: &UserId) -> StoreResult<(Vec<RoomId>, u64)> {
        self.read(|t| {
            let meta = t.open_table(META).map_err(ie)?;
            let seq = meta.get(META_CHANGE_SEQ).map_err(ie)?.map(|v| v.value()).unwrap_or(0);
            let subs = t.open_table(SUBS).map_err(ie)?;
            let mut rooms = Vec::new();
            for entry in subs.range((uid.as_str(), "")..).map_err(ie)? {
                let (k, _) = entry.map_err(ie)?;
                let (u, r) = k.value();
                if u != uid.as_str() {
                    break;
                }
                rooms.push(RoomId::from(r));
            }
            Ok((rooms, seq))
        })
    }
}

/// A history read (DDP `loadHistory`/`loadMissedMessages`, REST `*.history`).
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub latest: Option<i64>,
    pub oldest: Option<i64>,
    pub inclusive: bool,
    pub offset: u64,
    pub limit: usize,
    /// Keep counting past `limit` to report the total (costs a longer scan).
    pub count_total: bool,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self {
            latest: None,
            oldest: None,
            inclusive: false,
            offset: 0,
            limit: 50,
            count_total: false,
        }
    }
}

fn get_json<T: DeserializeOwned>(
    t: &ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    key: &str,
) -> StoreResult<Option<T>> {
    let table = t.open_table(def).map_err(ie)?;
    let v = table.get(key).map_err(ie)?;
    v.map(|v| dec(v.value())).transpose()
}

/// A record found through a case-insensitive name index (`index`: name → id, `data`: id → record).
fn by_index<T: DeserializeOwned>(
    t: &ReadTransaction,
    index: TableDefinition<&str, &str>,
    name: &str,
    data: TableDefinition<&str, &[u8]>,
) -> StoreResult<Option<T>> {
    let ids = t.open_table(index).map_err(ie)?;
    let Some(id) = ids.get(name.to_lowercase().as_str()).map_err(ie)? else {
        return Ok(None);
    };
    let id = id.value().to_owned();
    get_json(t, data, &id)
}

/// Creates every table, the GENERAL channel, and returns the change-log head.
fn bootstrap(db: &Database) -> StoreResult<u64> {
    let txn = db.begin_write().map_err(ie)?;
    let head;
    {
        let mut w = Tables::open(&txn)?;
        head = w.meta.get(META_CHANGE_SEQ).map_err(ie)?.map(|v| v.value()).unwrap_or(0);
        if w.rooms.get(GENERAL_ROOM_ID).map_err(ie)?.is_none() {
            let now = now_ms();
            let room = Room {
                id: RoomId::from(GENERAL_ROOM_ID),
                t: RoomType::Channel,
                name: Some("general".into()),
                fname: Some("general".into()),
                creator: None,
                ts: now,
                updated_at: now,
                msgs: 0,
                users_count: 0,
                last_seq: 0,
                lm: None,
                last_message: None,
                read_only: false,
                uids: Vec::new(),
                usernames: Vec::new(),
            };
            w.put_room(&room)?;
            w.room_names.insert("general", GENERAL_ROOM_ID).map_err(ie)?;
        }
    }
    txn.commit().map_err(ie)?;
    Ok(head)
}

fn writer_loop(db: Arc<Database>, rx: Receiver<Request>, head: Arc<AtomicU64>, mut wake: mpsc::Sender<()>) {
    let mut batch: Vec<(WriteOp, oneshot::Sender<StoreResult<WriteOutcome>>)> = Vec::with_capacity(MAX_GROUP_COMMIT);
    let mut commits = 0u64;
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Write { op, reply } => batch.push((op, reply)),
                Request::Stop => stop = true,
            }
            if batch.len() < MAX_GROUP_COMMIT && !stop {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        commits += 1;
        let prune = commits % PRUNE_EVERY_COMMITS == 0;
        let seq_before = head.load(Ordering::Acquire);
        match commit_batch(&db, &mut batch, seq_before, prune) {
            Ok((results, new_head)) => {
                head.store(new_head, Ordering::Release);
                if new_head != seq_before {
                    // Full means a wake-up is already pending: the tailer reads up to the head.
                    let _ = wake.try_send(());
                }
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "store commit failed; requests rejected");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
}

type Batch = Vec<(WriteOp, oneshot::Sender<StoreResult<WriteOutcome>>)>;

fn commit_batch(
    db: &Database,
    batch: &mut Batch,
    seq: u64,
    prune: bool,
) -> StoreResult<(Vec<StoreResult<WriteOutcome>>, u64)> {
    let txn: WriteTransaction = db.begin_write().map_err(ie)?;
    let mut results = Vec::with_capacity(batch.len());
    let head;
    {
        let mut w = Tables::open(&txn)?;
        w.seq = seq;
        for (op, _) in batch.iter() {
            match w.apply(op.clone()) {
                Ok(output) => results.push(Ok(WriteOutcome { output, seq: w.seq })),
                // A rejected request wrote nothing (ops validate before writing).
                Err(e @ StoreError::Rejected { .. }) => results.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        if w.seq != seq {
            w.meta.insert(META_CHANGE_SEQ, w.seq).map_err(ie)?;
        }
        if prune && w.seq > CHANGELOG_RETAIN {
            let cutoff = w.seq - CHANGELOG_RETAIN;
            w.changes.retain_in(..cutoff, |_, _| false).map_err(ie)?;
        }
        head = w.seq;
    }
    txn.commit().map_err(ie)?;
    Ok((results, head))
}

/// Every table, opened once per write transaction.
struct Tables<'t> {
    users: Table<'t, &'static str, &'static [u8]>,
    usernames: Table<'t, &'static str, &'static str>,
    emails: Table<'t, &'static str, &'static str>,
    tokens: Table<'t, &'static str, &'static [u8]>,
    rooms: Table<'t, &'static str, &'static [u8]>,
    room_names: Table<'t, &'static str, &'static str>,
    subs: Table<'t, (&'static str, &'static str), &'static [u8]>,
    members: Table<'t, (&'static str, &'static str), ()>,
    messages: Table<'t, (&'static str, u64, u64), &'static [u8]>,
    message_ids: Table<'t, &'static str, (&'static str, u64, u64)>,
    changes: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    /// Change-log head inside this transaction.
    seq: u64,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `@username` tokens in a message text.
fn mentioned_usernames(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ':' | ';' | '!' | '?' | '(' | ')')) {
        if let Some(name) = word.strip_prefix('@') {
            let name = name.trim_end_matches('.');
            if !name.is_empty() && valid_name(name) && !out.contains(&name) && out.len() < 32 {
                out.push(name);
            }
        }
    }
    out
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
        Ok(Self {
            users: txn.open_table(USERS).map_err(ie)?,
            usernames: txn.open_table(USERNAMES).map_err(ie)?,
            emails: txn.open_table(EMAILS).map_err(ie)?,
            tokens: txn.open_table(TOKENS).map_err(ie)?,
            rooms: txn.open_table(ROOMS).map_err(ie)?,
            room_names: txn.open_table(ROOM_NAMES).map_err(ie)?,
            subs: txn.open_table(SUBS).map_err(ie)?,
            members: txn.open_table(MEMBERS).map_err(ie)?,
            messages: txn.open_table(MESSAGES).map_err(ie)?,
            message_ids: txn.open_table(MESSAGE_IDS).map_err(ie)?,
            changes: txn.open_table(CHANGES).map_err(ie)?,
            meta: txn.open_table(META).map_err(ie)?,
            seq: 0,
        })
    }

    fn push_change(&mut self, change: Change) -> StoreResult<()> {
        self.seq += 1;
        let rec = ChangeRecord { seq: self.seq, change };
        self.changes.insert(self.seq, enc(&rec)?.as_slice()).map_err(ie)?;
        Ok(())
    }

    fn user(&self, uid: &str) -> StoreResult<Option<User>> {
        self.users.get(uid).map_err(ie)?.map(|v| dec(v.value())).transpose()
    }

    fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let uid = self
            .usernames
            .get(username.to_lowercase().as_str())
            .map_err(ie)?
            .map(|v| v.value().to_owned());
        match uid {
            Some(uid) => self.user(&uid),
            None => Ok(None),
        }
    }

    fn existing_user(&self, uid: &UserId) -> StoreResult<User> {
        self.user(uid.as_str())?
            .ok_or_else(|| StoreError::rejected("error-invalid-user", "Invalid user"))
    }

    fn room(&self, rid: &str) -> StoreResult<Option<Room>> {
        self.rooms.get(rid).map_err(ie)?.map(|v| dec(v.value())).transpose()
    }

    fn existing_room(&self, rid: &RoomId) -> StoreResult<Room> {
        self.room(rid.as_str())?
            .ok_or_else(|| StoreError::rejected("error-invalid-room", "Invalid room"))
    }

    fn put_room(&mut self, room: &Room) -> StoreResult<()> {
        self.rooms.insert(room.id.as_str(), enc(room)?.as_slice()).map_err(ie)?;
        Ok(())
    }

    fn sub(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>> {
        self.subs
            .get((uid.as_str(), rid.as_str()))
            .map_err(ie)?
            .map(|v| dec(v.value()))
            .transpose()
    }

    fn put_sub(&mut self, sub: &Subscription) -> StoreResult<()> {
        self.subs
            .insert((sub.u.id.as_str(), sub.rid.as_str()), enc(sub)?.as_slice())
            .map_err(ie)?;
        self.members
            .insert((sub.rid.as_str(), sub.u.id.as_str()), ())
            .map_err(ie)?;
        Ok(())
    }

    fn get_message(&self, rid: &str, ts: u64, seq: u64) -> StoreResult<Option<Message>> {
        self.messages
            .get((rid, ts, seq))
            .map_err(ie)?
            .map(|v| dec(v.value()))
            .transpose()
    }

    fn put_message(&mut self, m: &Message) -> StoreResult<()> {
        let key = (m.rid.as_str(), ts_key(m.ts), m.seq);
        self.messages.insert(key, enc(m)?.as_slice()).map_err(ie)?;
        self.message_ids.insert(m.id.as_str(), key).map_err(ie)?;
        Ok(())
    }

    fn new_subscription(
        room: &Room,
        member: &User,
        name: String,
        fname: String,
        open: bool,
        owner: bool,
        now: i64,
    ) -> Subscription {
        Subscription {
            id: random_id(),
            rid: room.id.clone(),
            u: member.user_ref(),
            t: room.t,
            name,
            fname,
            open,
            ts: now,
            ls: now,
            read_seq: room.last_seq,
            updated_at: now,
            roles: if owner { vec!["owner".into()] } else { Vec::new() },
        }
    }

    /// Adds `user` to `room` (caller checked it is not a member), updating the room in place.
    fn add_member(&mut self, room: &mut Room, user: &User, owner: bool, now: i64) -> StoreResult<Subscription> {
        let name = room.name.clone().unwrap_or_default();
        let fname = room.fname.clone().unwrap_or_else(|| name.clone());
        let sub = Self::new_subscription(room, user, name, fname, true, owner, now);
        self.put_sub(&sub)?;
        room.users_count += 1;
        room.updated_at = now;
        Ok(sub)
    }

    fn apply(&mut self, op: WriteOp) -> StoreResult<WriteOutput> {
        let now = now_ms();
        match op {
            WriteOp::CreateUser {
                username,
                name,
                email,
                password_hash,
            } => {
                if !valid_name(&username) {
                    return Err(StoreError::rejected("error-invalid-username", "Invalid username"));
                }
                if self
                    .usernames
                    .get(username.to_lowercase().as_str())
                    .map_err(ie)?
                    .is_some()
                {
                    return Err(StoreError::rejected(
                        "error-field-unavailable",
                        format!("{username} is already in use :("),
                    ));
                }
                if let Some(email) = &email {
                    if self.emails.get(email.to_lowercase().as_str()).map_err(ie)?.is_some() {
                        return Err(StoreError::rejected("error-field-unavailable", "Email already exists"));
                    }
                }
                let user = User {
                    id: UserId(random_id()),
                    name: if name.trim().is_empty() { username.clone() } else { name },
                    username,
                    email,
                    password_hash,
                    created_at: now,
                    status: "online".into(),
                    status_text: String::new(),
                    roles: vec!["user".into()],
                };
                self.users
                    .insert(user.id.as_str(), enc(&user)?.as_slice())
                    .map_err(ie)?;
                self.usernames
                    .insert(user.username.to_lowercase().as_str(), user.id.as_str())
                    .map_err(ie)?;
                if let Some(email) = &user.email {
                    self.emails
                        .insert(email.to_lowercase().as_str(), user.id.as_str())
                        .map_err(ie)?;
                }
                // New users join the default channel, as in Rocket.Chat.
                if let Some(mut general) = self.room(GENERAL_ROOM_ID)? {
                    let sub = self.add_member(&mut general, &user, false, now)?;
                    self.put_room(&general)?;
                    self.push_change(Change::MemberAdded {
                        room: general,
                        subscription: sub,
                    })?;
                }
                Ok(WriteOutput::User(Box::new(user)))
            }
            WriteOp::CreateToken { token_hash, token } => {
                self.existing_user(&token.uid)?;
                self.tokens
                    .insert(token_hash.as_str(), enc(&token)?.as_slice())
                    .map_err(ie)?;
                Ok(WriteOutput::Unit)
            }
            WriteOp::DeleteToken { token_hash } => {
                self.tokens.remove(token_hash.as_str()).map_err(ie)?;
                Ok(WriteOutput::Unit)
            }
            WriteOp::CreateRoom {
                t,
                name,
                creator,
                members,
                read_only,
            } => {
                let name = name.trim().to_owned();
                if !valid_name(&name) {
                    return Err(StoreError::rejected(
                        "error-invalid-name",
                        format!("Invalid name: {name}"),
                    ));
                }
                if self.room_names.get(name.to_lowercase().as_str()).map_err(ie)?.is_some() {
                    return Err(StoreError::rejected(
                        "error-duplicate-channel-name",
                        format!("A channel with name '{name}' exists"),
                    ));
                }
                let owner = self.existing_user(&creator)?;
                let mut others = Vec::new();
                for m in members {
                    let user = self
                        .user_by_username(m.trim_start_matches('@'))?
                        .ok_or_else(|| StoreError::rejected("error-invalid-user", format!("Invalid user: {m}")))?;
                    if user.id != owner.id && !others.iter().any(|o: &User| o.id == user.id) {
                        others.push(user);
                    }
                }
                let mut room = Room {
                    id: RoomId(random_id()),
                    t,
                    name: Some(name.clone()),
                    fname: Some(name.clone()),
                    creator: Some(owner.user_ref()),
                    ts: now,
                    updated_at: now,
                    msgs: 0,
                    users_count: 0,
                    last_seq: 0,
                    lm: None,
                    last_message: None,
                    read_only,
                    uids: Vec::new(),
                    usernames: Vec::new(),
                };
                self.room_names
                    .insert(name.to_lowercase().as_str(), room.id.as_str())
                    .map_err(ie)?;
                let mut subs = vec![self.add_member(&mut room, &owner, true, now)?];
                for user in &others {
                    subs.push(self.add_member(&mut room, user, false, now)?);
                }
                self.put_room(&room)?;
                for sub in subs {
                    self.push_change(Change::MemberAdded {
                        room: room.clone(),
                        subscription: sub,
                    })?;
                }
                Ok(WriteOutput::Room(Box::new(room), true))
            }
            WriteOp::CreateDirect {
                creator,
                other_username,
            } => {
                let me = self.existing_user(&creator)?;
                let other = self
                    .user_by_username(other_username.trim_start_matches('@'))?
                    .ok_or_else(|| StoreError::rejected("error-invalid-user", "Invalid user"))?;
                let rid = direct_room_id(&me.id, &other.id);
                let (mut room, created) = match self.room(rid.as_str())? {
                    Some(room) => (room, false),
                    None => {
                        let mut pair = vec![
                            (me.id.clone(), me.username.clone()),
                            (other.id.clone(), other.username.clone()),
                        ];
                        pair.sort();
                        pair.dedup();
                        let room = Room {
                            id: rid.clone(),
                            t: RoomType::Direct,
                            name: None,
                            fname: None,
                            creator: None,
                            ts: now,
                            updated_at: now,
                            msgs: 0,
                            users_count: 0,
                            last_seq: 0,
                            lm: None,
                            last_message: None,
                            read_only: false,
                            uids: pair.iter().map(|p| p.0.clone()).collect(),
                            usernames: pair.iter().map(|p| p.1.clone()).collect(),
                        };
                        (room, true)
                    }
                };
                let mut subs = Vec::new();
                let participants: Vec<(&User, &User)> = if me.id == other.id {
                    vec![(&me, &me)]
                } else {
                    vec![(&me, &other), (&other, &me)]
                };
                for (member, peer) in participants {
                    if self.sub(&member.id, &rid)?.is_none() {
                        let open = member.id == me.id;
                        let sub = Self::new_subscription(
                            &room,
                            member,
                            peer.username.clone(),
                            peer.name.clone(),
                            open,
                            false,
                            now,
                        );
                        self.put_sub(&sub)?;
                        room.users_count += 1;
                        subs.push(sub);
                    }
                }
                if created || !subs.is_empty() {
                    room.updated_at = now;
                    self.put_room(&room)?;
                }
                for sub in subs {
                    self.push_change(Change::MemberAdded {
                        room: room.clone(),
                        subscription: sub,
                    })?;
                }
                Ok(WriteOutput::Room(Box::new(room), created))
            }
            WriteOp::Join { uid, rid } => {
                let mut room = self.existing_room(&rid)?;
                let user = self.existing_user(&uid)?;
                if self.sub(&uid, &rid)?.is_some() {
                    return Ok(WriteOutput::Room(Box::new(room), false));
                }
                if room.t != RoomType::Channel {
                    return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
                }
                let sub = self.add_member(&mut room, &user, false, now)?;
                self.put_room(&room)?;
                self.push_change(Change::MemberAdded {
                    room: room.clone(),
                    subscription: sub,
                })?;
                Ok(WriteOutput::Room(Box::new(room), false))
            }
            WriteOp::Leave { uid, rid } => {
                let mut room = self.existing_room(&rid)?;
                let sub = self
                    .sub(&uid, &rid)?
                    .ok_or_else(|| StoreError::rejected("error-user-not-in-room", "You are not in this room"))?;
                if room.t == RoomType::Direct {
                    return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
                }
                if sub.roles.iter().any(|r| r == "owner") && room.users_count > 1 {
                    let mut other_owner = false;
                    for member in self.members.range((rid.as_str(), "")..).map_err(ie)? {
                        let (k, _) = member.map_err(ie)?;
                        let (r, u) = k.value();
                        if r != rid.as_str() {
                            break;
                        }
                        if u == uid.as_str() {
                            continue;
                        }
                        let s = self
                            .subs
                            .get((u, r))
                            .map_err(ie)?
                            .map(|v| dec::<Subscription>(v.value()))
                            .transpose()?;
                        if s.is_some_and(|s| s.roles.iter().any(|r| r == "owner")) {
                            other_owner = true;
                            break;
                        }
                    }
                    if !other_owner {
                        return Err(StoreError::rejected(
                            "error-you-are-last-owner",
                            "You are the last owner. Please set new owner before leaving the room.",
                        ));
                    }
                }
                self.subs.remove((uid.as_str(), rid.as_str())).map_err(ie)?;
                self.members.remove((rid.as_str(), uid.as_str())).map_err(ie)?;
                room.users_count = room.users_count.saturating_sub(1);
                room.updated_at = now;
                self.put_room(&room)?;
                self.push_change(Change::MemberRemoved {
                    room,
                    uid,
                    subscription_id: sub.id,
                })?;
                Ok(WriteOutput::Unit)
            }
            WriteOp::SendMessage {
                uid,
                rid,
                id,
                msg,
                tmid,
            } => {
                let mut room = self.existing_room(&rid)?;
                let Some(mut sub) = self.sub(&uid, &rid)? else {
                    return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
                };
                if let Some(id) = &id {
                    if let Some(key) = self.message_ids.get(id.as_str()).map_err(ie)? {
                        let (r, ts, seq) = key.value();
                        let (r, ts, seq) = (r.to_owned(), ts, seq);
                        drop(key);
                        if let Some(existing) = self.get_message(&r, ts, seq)? {
                            return Ok(WriteOutput::Duplicate(Box::new(existing)));
                        }
                    }
                }
                if room.read_only && !sub.roles.iter().any(|r| r == "owner") {
                    return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
                }
                if msg.chars().count() > MAX_MESSAGE_CHARS {
                    return Err(StoreError::rejected(
                        "error-message-size-exceeded",
                        "Message size exceeds the allowed limit",
                    ));
                }
                let user = self.existing_user(&uid)?;
                let mut mentions = Vec::new();
                for name in mentioned_usernames(&msg) {
                    if let Some(u) = self.user_by_username(name)? {
                        mentions.push(u.user_ref());
                    }
                }
                // Strictly increasing within a room, so `ts` alone pages history exactly
                // (clients page `loadHistory` by the oldest `ts` they hold).
                let ts = now.max(room.lm.map_or(0, |lm| lm + 1));
                let message = Message {
                    id: id.unwrap_or_else(|| MessageId(random_id())),
                    rid: rid.clone(),
                    msg,
                    ts,
                    u: user.user_ref(),
                    updated_at: ts,
                    seq: room.last_seq + 1,
                    t: None,
                    tmid,
                    edited_at: None,
                    edited_by: None,
                    mentions,
                };
                self.put_message(&message)?;
                room.last_seq = message.seq;
                room.msgs += 1;
                room.lm = Some(ts);
                room.updated_at = ts;
                room.last_message = Some(message.clone());
                self.put_room(&room)?;
                // The sender has read their own message: one O(1) write, not one per member.
                sub.read_seq = message.seq;
                sub.ls = ts;
                self.put_sub(&sub)?;
                self.push_change(Change::MessageCreated {
                    message: message.clone(),
                    room,
                })?;
                Ok(WriteOutput::Message(Box::new(message)))
            }
            WriteOp::UpdateMessage { uid, mid, msg } => {
                let (mut message, mut room) = self.editable_message(&uid, &mid)?;
                if msg.chars().count() > MAX_MESSAGE_CHARS {
                    return Err(StoreError::rejected(
                        "error-message-size-exceeded",
                        "Message size exceeds the allowed limit",
                    ));
                }
                if message.msg == msg {
                    return Ok(WriteOutput::Message(Box::new(message)));
                }
                let editor = self.existing_user(&uid)?;
                message.msg = msg;
                message.edited_at = Some(now);
                message.edited_by = Some(editor.user_ref());
                message.updated_at = now;
                self.put_message(&message)?;
                if room.last_message.as_ref().is_some_and(|m| m.id == message.id) {
                    room.last_message = Some(message.clone());
                    self.put_room(&room)?;
                }
                room.updated_at = now;
                self.push_change(Change::MessageUpdated {
                    message: message.clone(),
                    room,
                })?;
                Ok(WriteOutput::Message(Box::new(message)))
            }
            WriteOp::DeleteMessage { uid, mid } => {
                let (message, mut room) = self.editable_message(&uid, &mid)?;
                self.messages
                    .remove((message.rid.as_str(), ts_key(message.ts), message.seq))
                    .map_err(ie)?;
                self.message_ids.remove(mid.as_str()).map_err(ie)?;
                room.msgs = room.msgs.saturating_sub(1);
                if room.last_message.as_ref().is_some_and(|m| m.id == message.id) {
                    let prev = self
                        .messages
                        .range((room.id.as_str(), 0, 0)..(room.id.as_str(), u64::MAX, 0))
                        .map_err(ie)?
                        .next_back();
                    room.last_message = match prev {
                        Some(entry) => Some(dec(entry.map_err(ie)?.1.value())?),
                        None => None,
                    };
                }
                room.updated_at = now;
                self.put_room(&room)?;
                self.push_change(Change::MessageDeleted {
                    rid: room.id.clone(),
                    mid,
                    room,
                })?;
                Ok(WriteOutput::Message(Box::new(message)))
            }
            WriteOp::MarkRead { uid, rid } => {
                let room = self
                    .room(rid.as_str())?
                    .ok_or_else(|| StoreError::rejected("error-room-does-not-exist", "This room does not exist"))?;
                let mut sub = self
                    .sub(&uid, &rid)?
                    .ok_or_else(|| StoreError::rejected("error-not-allowed", "Not allowed"))?;
                if sub.read_seq == room.last_seq && sub.open {
                    return Ok(WriteOutput::Unit);
                }
                sub.read_seq = room.last_seq;
                sub.ls = now;
                sub.open = true;
                sub.updated_at = now;
                self.put_sub(&sub)?;
                self.push_change(Change::SubscriptionUpdated {
                    subscription: sub,
                    room,
                })?;
                Ok(WriteOutput::Unit)
            }
            WriteOp::SetStatus {
                uid,
                status,
                status_text,
            } => {
                if !matches!(status.as_str(), "online" | "away" | "busy" | "offline") {
                    return Err(StoreError::rejected(
                        "error-invalid-status",
                        "Valid status types include online, away, offline, and busy.",
                    ));
                }
                let mut user = self.existing_user(&uid)?;
                let text = status_text.unwrap_or_else(|| user.status_text.clone());
                if user.status == status && user.status_text == text {
                    return Ok(WriteOutput::User(Box::new(user)));
                }
                user.status = status.clone();
                user.status_text = text.clone();
                self.users
                    .insert(user.id.as_str(), enc(&user)?.as_slice())
                    .map_err(ie)?;
                self.push_change(Change::UserStatusChanged {
                    user: user.user_ref(),
                    status,
                    status_text: text,
                })?;
                Ok(WriteOutput::User(Box::new(user)))
            }
        }
    }

    /// A message the user may edit or delete (its author, or an owner of the room), with its room.
    fn editable_message(&self, uid: &UserId, mid: &MessageId) -> StoreResult<(Message, Room)> {
        let key = self.message_ids.get(mid.as_str()).map_err(ie)?.map(|k| {
            let (r, ts, seq) = k.value();
            (r.to_owned(), ts, seq)
        });
        let not_found = || {
            StoreError::rejected(
                "error-invalid-message",
                format!("No message found with the id of \"{mid}\"."),
            )
        };
        let (rid, ts, seq) = key.ok_or_else(not_found)?;
        let message = self.get_message(&rid, ts, seq)?.ok_or_else(not_found)?;
        let room = self.existing_room(&message.rid)?;
        let sub = self.sub(uid, &message.rid)?;
        let is_owner = sub.as_ref().is_some_and(|s| s.roles.iter().any(|r| r == "owner"));
        if sub.is_none() || (message.u.id != *uid && !is_owner) {
            return Err(StoreError::rejected("error-action-not-allowed", "Not allowed"));
        }
        Ok((message, room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _feed) = EmbeddedStore::open(dir.path()).unwrap();
        (dir, Store::new(store))
    }

    fn user(store: &Store, name: &str) -> User {
        let op = WriteOp::CreateUser {
            username: name.into(),
            name: name.into(),
            email: None,
            password_hash: "x".into(),
        };
        match store.submit_blocking(op).unwrap().output {
            WriteOutput::User(u) => *u,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn send(store: &Store, uid: &UserId, rid: &RoomId, id: Option<&str>, text: &str) -> StoreResult<WriteOutcome> {
        store.submit_blocking(WriteOp::SendMessage {
            uid: uid.clone(),
            rid: rid.clone(),
            id: id.map(MessageId::from),
            msg: text.into(),
            tmid: None,
        })
    }

    #[test]
    fn messages_are_idempotent_ordered_and_logged() {
        let (_dir, store) = open();
        let alice = user(&store, "alice");
        let general = RoomId::from(GENERAL_ROOM_ID);
        let first = send(&store, &alice.id, &general, Some("m1"), "hello").unwrap();
        assert!(matches!(first.output, WriteOutput::Message(_)));
        let again = send(&store, &alice.id, &general, Some("m1"), "hello").unwrap();
        assert!(matches!(again.output, WriteOutput::Duplicate(_)));
        for i in 0..5 {
            send(&store, &alice.id, &general, None, &format!("n{i}")).unwrap();
        }
        let (page, total) = store
            .history(
                &general,
                &HistoryQuery {
                    limit: 3,
                    count_total: true,
                    ..HistoryQuery::default()
                },
            )
            .unwrap();
        assert_eq!(total, 6);
        assert_eq!(
            page.iter().map(|m| m.msg.as_str()).collect::<Vec<_>>(),
            ["n4", "n3", "n2"]
        );
        let changes: Vec<ChangeRecord> = store
            .changes_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.unwrap())
            .collect();
        // 1 join of GENERAL + 6 messages; the duplicate wrote nothing.
        assert_eq!(changes.len(), 7);
        assert!(changes.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(store.head(), changes.last().unwrap().seq);
    }

    #[test]
    fn non_members_cannot_post_and_leaving_removes_membership() {
        let (_dir, store) = open();
        let alice = user(&store, "alice");
        let bob = user(&store, "bob");
        let room = match store
            .submit_blocking(WriteOp::CreateRoom {
                t: RoomType::Private,
                name: "secret".into(),
                creator: alice.id.clone(),
                members: vec![],
                read_only: false,
            })
            .unwrap()
            .output
        {
            WriteOutput::Room(r, true) => *r,
            other => panic!("unexpected {other:?}"),
        };
        let err = send(&store, &bob.id, &room.id, None, "hi").unwrap_err();
        assert!(matches!(
            err,
            StoreError::Rejected {
                code: "error-not-allowed",
                ..
            }
        ));
        let err = store
            .submit_blocking(WriteOp::Join {
                uid: bob.id.clone(),
                rid: room.id.clone(),
            })
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::Rejected {
                code: "error-not-allowed",
                ..
            }
        ));
        let general = RoomId::from(GENERAL_ROOM_ID);
        store
            .submit_blocking(WriteOp::Leave {
                uid: bob.id.clone(),
                rid: general.clone(),
            })
            .unwrap();
        assert!(store.subscription(&bob.id, &general).unwrap().is_none());
        assert!(!store.members(&general).unwrap().contains(&bob.id));
        assert!(send(&store, &bob.id, &general, None, "hi").is_err());
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let (dir, _store) = open();
        assert!(matches!(EmbeddedStore::open(dir.path()), Err(OpenError::InUse(_))));
    }

    #[test]
    fn mentions_are_parsed() {
        assert_eq!(mentioned_usernames("hi @bob, and @carol. @bob"), ["bob", "carol"]);
    }
}
