//! The embedded backend: one redb file. The writer thread ("chatd-store") owns every write
//! transaction and commits requests in groups, applying each with the shared chat rules; reads
//! run on store-side threads (the reader pool, the feed thread, the CLI) in their own MVCC read
//! transaction and never wait for the writer.
//!
//! Every data change appends a [`ChangeRecord`] to the `changes` table inside the same
//! transaction, so the change log and the data can never disagree, even after `kill -9`.

pub mod backup;
mod feed;
pub mod import;
mod reads;
pub mod schema;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    Backend, ChangeFeed, StoreError, StoreResult, SubmitError, WriteOp, WriteOutcome, WriteRequest, WriterMsg,
};
use super::{MAX_GROUP_COMMIT, WRITE_QUEUE_CAPACITY};
use crate::app::rules::Txn;
use crate::app::rules::{self, GENERAL_ROOM_ID};
use crate::ids::{now_ms, RoomId};
use feed::EmbeddedFeed;
use schema::{sf, Tables, CHANGES};

/// Change-log entries kept behind the head; older ones are pruned by the writer.
const CHANGELOG_RETAIN: u64 = 200_000;
/// Prune the change log every this many commits.
const PRUNE_EVERY_COMMITS: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the data directory {0} is in use by another chatd process (or a chatd command); stop it first")]
    InUse(String),
    #[error("cannot open the store at {path}: {reason}")]
    Failed { path: String, reason: String },
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    tx: Sender<WriterMsg>,
    head: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
    feed: Mutex<Option<EmbeddedFeed>>,
    /// Shared by the reader threads (never by shards): see [`reads::PageHints`].
    channel_hints: Mutex<reads::PageHints>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/chatd.redb` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Arc<Self>, OpenError> {
        let db = Arc::new(Self::open_db(dir)?);
        let failed = |reason: String| OpenError::Failed {
            path: dir.display().to_string(),
            reason,
        };
        let head_seq = bootstrap(&db).map_err(|e| failed(e.to_string()))?;
        let head = Arc::new(AtomicU64::new(head_seq));
        let (tx, rx) = crossbeam_channel::bounded(WRITE_QUEUE_CAPACITY);
        // One pending wake-up is enough: the feed reads up to the head.
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let writer_db = db.clone();
        let writer_head = head.clone();
        let writer = std::thread::Builder::new()
            .name("chatd-store".into())
            .spawn(move || writer_loop(writer_db, rx, writer_head, wake_tx))
            .map_err(|e| failed(e.to_string()))?;
        Ok(Arc::new(Self {
            feed: Mutex::new(Some(EmbeddedFeed::new(db.clone(), head_seq, wake_rx))),
            channel_hints: Mutex::new(reads::PageHints::default()),
            db,
            tx,
            head,
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// Opens the file for exclusive use (`InUse` when another process has it).
    /// Writes a consistent copy of the store to `out` (see [`backup`]).
    pub fn backup_to(&self, out: &Path) -> super::StoreResult<backup::BackupReport> {
        backup::backup(&self.db, out)
    }

    /// Serves `chatd backup` requests on `dir/control.sock` while this store is open.
    pub fn control_socket(&self, dir: &Path) -> std::io::Result<backup::ControlSocket> {
        backup::ControlSocket::start(dir, self.db.clone())
    }

    pub fn open_db(dir: &Path) -> Result<Database, OpenError> {
        Self::open_db_with_cache(dir, None)
    }

    /// As [`EmbeddedStore::open_db`], with a page cache of `cache_bytes` (bulk imports).
    pub fn open_db_with_cache(dir: &Path, cache_bytes: Option<usize>) -> Result<Database, OpenError> {
        let path = dir.join("chatd.redb");
        let fail = |reason: String| OpenError::Failed {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let mut builder = Database::builder();
        if let Some(bytes) = cache_bytes {
            builder.set_cache_size(bytes);
        }
        match builder.create(&path) {
            Ok(db) => Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(OpenError::InUse(dir.display().to_string())),
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

impl Backend for EmbeddedStore {
    fn user(&self, uid: &crate::ids::UserId) -> StoreResult<Option<super::User>> {
        reads::user(&self.db, uid)
    }
    fn users(&self, uids: &[crate::ids::UserId]) -> StoreResult<Vec<super::User>> {
        reads::users(&self.db, uids)
    }
    fn all_users(&self) -> StoreResult<Vec<super::User>> {
        reads::all_users(&self.db)
    }
    fn user_by_username(&self, username: &str) -> StoreResult<Option<super::User>> {
        reads::user_by_username(&self.db, username)
    }
    fn user_by_email(&self, email: &str) -> StoreResult<Option<super::User>> {
        reads::user_by_email(&self.db, email)
    }
    fn user_by_token_hash(&self, token_hash: &str, now: i64) -> StoreResult<Option<(super::User, super::LoginToken)>> {
        reads::user_by_token_hash(&self.db, token_hash, now)
    }
    fn room(&self, rid: &RoomId) -> StoreResult<Option<super::Room>> {
        reads::room(&self.db, rid)
    }
    fn room_by_name(&self, name: &str) -> StoreResult<Option<super::Room>> {
        reads::room_by_name(&self.db, name)
    }
    fn subscription(&self, uid: &crate::ids::UserId, rid: &RoomId) -> StoreResult<Option<super::Subscription>> {
        reads::subscription(&self.db, uid, rid)
    }
    fn subscriptions_of(&self, uid: &crate::ids::UserId) -> StoreResult<Vec<(super::Subscription, super::Room)>> {
        reads::subscriptions_of(&self.db, uid)
    }
    fn members(&self, rid: &RoomId) -> StoreResult<Vec<crate::ids::UserId>> {
        reads::members(&self.db, rid)
    }
    fn all_memberships(&self) -> StoreResult<Vec<(RoomId, crate::ids::UserId)>> {
        reads::all_memberships(&self.db)
    }
    fn channels_page(&self, offset: usize, count: usize) -> StoreResult<(Vec<super::Room>, u64)> {
        reads::channels_page(&self.db, &self.channel_hints, offset, count)
    }
    fn message(&self, mid: &crate::ids::MessageId) -> StoreResult<Option<super::Message>> {
        reads::message(&self.db, mid)
    }
    fn history(&self, rid: &RoomId, q: &super::HistoryQuery) -> StoreResult<(Vec<super::Message>, u64)> {
        reads::history(&self.db, rid, q)
    }
    fn memberships_of(&self, uid: &crate::ids::UserId) -> StoreResult<(Vec<RoomId>, super::Mark)> {
        reads::memberships_of(&self.db, uid)
    }

    fn try_submit(&self, req: WriteRequest) -> Result<(), SubmitError> {
        super::offer(&self.tx, req)
    }

    fn writer_queue_len(&self) -> usize {
        self.tx.len()
    }

    fn head(&self) -> super::Mark {
        self.head.load(Ordering::Acquire)
    }

    fn take_feed(&self) -> Option<Box<dyn ChangeFeed>> {
        let feed = self.feed.lock().ok()?.take()?;
        Some(Box::new(feed))
    }

    fn close(&self) {
        let _ = self.tx.send(WriterMsg::Stop);
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Creates every table and the GENERAL channel; returns the change-log head.
pub(crate) fn bootstrap(db: &Database) -> StoreResult<u64> {
    let txn = db.begin_write().map_err(sf)?;
    let head;
    {
        let mut w = Tables::open(&txn)?;
        head = w.seq;
        let general = RoomId::from(GENERAL_ROOM_ID);
        if w.room(&general)?.is_none() {
            w.put_room(&rules::general_room(now_ms()))?;
        }
        if w.meta.get(schema::META_CHANNELS_INDEXED).map_err(sf)?.is_none() {
            let mut rooms = Vec::new();
            for entry in w.rooms.iter().map_err(sf)? {
                let (_, v) = entry.map_err(sf)?;
                rooms.push(schema::dec::<super::Room>(v.value())?);
            }
            for room in &rooms {
                w.index_channel(room)?;
            }
            w.meta.insert(schema::META_CHANNELS_INDEXED, 1).map_err(sf)?;
        }
    }
    txn.commit().map_err(sf)?;
    Ok(head)
}

fn writer_loop(db: Arc<Database>, rx: Receiver<WriterMsg>, head: Arc<AtomicU64>, wake: Sender<()>) {
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_GROUP_COMMIT);
    let mut commits = 0u64;
    let mut stop = false;
    while !stop {
        let Some(last) = super::take_group(&rx, MAX_GROUP_COMMIT, &mut batch) else {
            break;
        };
        stop = last;
        if batch.is_empty() {
            continue;
        }
        commits += 1;
        let started = std::time::Instant::now();
        let prune = commits % PRUNE_EVERY_COMMITS == 0;
        let seq_before = head.load(Ordering::Acquire);
        // The requests are applied by value (no copy of any message): a failed commit answers
        // every request of the group with the error, so nothing needs them afterwards.
        let (ops, replies): (Vec<WriteOp>, Vec<_>) = batch.drain(..).map(|r| (r.op, r.reply)).unzip();
        let committed = commit_batch(&db, ops, prune);
        super::WRITER_STATS.commit(started, replies.len());
        match committed {
            Ok((results, new_head)) => {
                head.store(new_head, Ordering::Release);
                if new_head != seq_before {
                    // Full means a wake-up is already pending.
                    let _ = wake.try_send(());
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = replies.len(), "store commit failed; requests rejected");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
}

fn commit_batch(db: &Database, batch: Vec<WriteOp>, prune: bool) -> StoreResult<(Vec<StoreResult<WriteOutcome>>, u64)> {
    let txn: WriteTransaction = db.begin_write().map_err(sf)?;
    let mut results = Vec::with_capacity(batch.len());
    let head;
    {
        let mut w = Tables::open(&txn)?;
        let start = w.seq;
        let now = now_ms();
        for op in batch {
            match rules::apply(&mut w, op, now) {
                Ok(output) => results.push(Ok(WriteOutcome { output, mark: w.seq })),
                // A rejected request wrote nothing (the rules check before writing).
                Err(e @ StoreError::Rejected { .. }) => results.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        if w.seq != start {
            w.save_seq()?;
        }
        if prune && w.seq > CHANGELOG_RETAIN {
            let cutoff = w.seq - CHANGELOG_RETAIN;
            w.changes.retain_in(..cutoff, |_, _| false).map_err(sf)?;
        }
        head = w.seq;
    }
    txn.commit().map_err(sf)?;
    Ok((results, head))
}

/// Reads the change-log records after `seq` (tests and the feed).
pub fn changes_after(
    db: &Database,
    seq: u64,
    limit: usize,
) -> StoreResult<Vec<(u64, StoreResult<super::ChangeRecord>)>> {
    let t = db.begin_read().map_err(sf)?;
    let changes = t.open_table(CHANGES).map_err(sf)?;
    let mut out = Vec::new();
    for entry in changes.range(seq.saturating_add(1)..).map_err(sf)?.take(limit) {
        let (k, v) = entry.map_err(sf)?;
        let rec = schema::dec::<super::ChangeRecord>(v.value()).map(|mut r| {
            schema::restore_change(&mut r.change);
            r
        });
        out.push((k.value(), rec));
    }
    Ok(out)
}
