//! The embedded store's journal: how a group of writes becomes durable without a random-page
//! redb commit per group.
//!
//! Every table of a journaled write transaction is a [`Logged`] table: each insert and removal is
//! also appended, as redb's own key and value bytes, to that table's log. The writer commits the
//! group to redb *without* durability (the pages stay in redb's write buffer, visible to readers)
//! and hands the logs to the journal thread, which appends them to `chatd.journal` as one record
//! and `fdatasync`s it; only then are the group's requests answered and the change-log head
//! published (so the feed never hands out a change that a crash could take back). While one group
//! is synced the writer already applies the next: the sync and the apply overlap.
//!
//! In a lull of writes, or every few seconds (or megabytes) of them, redb is committed durably
//! instead: a checkpoint. The journal is then emptied. At open, [`replay`] applies every record
//! newer than the store's durable journal number (`META_JOURNAL_LSN`, written in the same
//! transactions) and checkpoints.
//!
//! Record layout: magic, payload length, CRC-32 of (number, payload), group number (u64), payload;
//! little-endian. The payload is a sequence of `table id, op, key length, key, value length,
//! value`. Replay stops at the first record that is torn, fails its checksum or does not continue
//! the numbering (a tail left by an emptying that did not reach the disk).

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crossbeam_channel::Sender;
use redb::{AccessGuard, Database, Key, ReadableDatabase, StorageError, Table, Value};

use super::schema::{sf, Tables, META, META_JOURNAL_LSN};
use crate::store::{ChangeRecord, StoreError, StoreResult, WriteOutcome, WRITER_STATS};

pub const FILE_NAME: &str = "chatd.journal";
const MAGIC: u32 = 0x314A_4443; // "CDJ1"
const HEADER: usize = 20;

pub const OP_PUT: u8 = 1;
pub const OP_DEL: u8 = 2;
/// Removes every key below the given one (the change log's pruning; `u64` keys only).
pub const OP_DROP_BELOW: u8 = 3;

fn push(log: &mut Vec<u8>, table: u8, op: u8, key: &[u8], value: &[u8]) {
    log.push(table);
    log.push(op);
    // Keys and values are far below 4 GiB (redb's limit is lower).
    log.extend_from_slice(&(key.len() as u32).to_le_bytes());
    log.extend_from_slice(key);
    log.extend_from_slice(&(value.len() as u32).to_le_bytes());
    log.extend_from_slice(value);
}

/// A redb table whose changes are also logged (when journaled). Reads go straight to the table.
pub struct Logged<'t, K: Key + 'static, V: Value + 'static> {
    table: Table<'t, K, V>,
    id: u8,
    log: Option<Vec<u8>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> Deref for Logged<'t, K, V> {
    type Target = Table<'t, K, V>;
    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

impl<'t, K: Key + 'static, V: Value + 'static> Logged<'t, K, V> {
    pub fn new(table: Table<'t, K, V>, id: u8, journaled: bool) -> Self {
        Self {
            table,
            id,
            log: journaled.then(Vec::new),
        }
    }

    pub fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StorageError> {
        if let Some(log) = &mut self.log {
            push(
                log,
                self.id,
                OP_PUT,
                K::as_bytes(key.borrow()).as_ref(),
                V::as_bytes(value.borrow()).as_ref(),
            );
        }
        self.table.insert(key, value)
    }

    /// An insert that is not logged: replay writes it itself (the journal number).
    pub fn insert_unlogged<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StorageError> {
        self.table.insert(key, value).map(|_| ())
    }

    pub fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StorageError> {
        if let Some(log) = &mut self.log {
            push(log, self.id, OP_DEL, K::as_bytes(key.borrow()).as_ref(), &[]);
        }
        self.table.remove(key)
    }

    /// Keeps the entries `keep` says yes to; each removal is logged.
    pub fn retain<F: for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool>(
        &mut self,
        mut keep: F,
    ) -> Result<(), StorageError> {
        let Self { table, id, log } = self;
        table.retain(|k, v| {
            let key = log.as_ref().map(|_| K::as_bytes(&k).as_ref().to_vec());
            let kept = keep(k, v);
            if let (false, Some(log), Some(key)) = (kept, log.as_mut(), key) {
                push(log, *id, OP_DEL, &key, &[]);
            }
            kept
        })
    }

    fn log_len(&self) -> usize {
        self.log.as_ref().map_or(0, Vec::len)
    }

    fn take_log_into(&mut self, out: &mut Vec<u8>) {
        if let Some(log) = &mut self.log {
            out.append(log);
        }
    }

    /// Applies one logged operation (replay).
    fn apply(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        match op {
            OP_PUT => self.table.insert(K::from_bytes(key), V::from_bytes(value)).map(|_| ()),
            OP_DEL => self.table.remove(K::from_bytes(key)).map(|_| ()),
            _ => Err(StorageError::Corrupted(format!("journal: unknown operation {op}"))),
        }
    }
}

impl Logged<'_, u64, &'static [u8]> {
    /// Removes every entry below `cutoff`, logged as one operation.
    pub fn drop_below(&mut self, cutoff: u64) -> Result<(), StorageError> {
        if let Some(log) = &mut self.log {
            push(log, self.id, OP_DROP_BELOW, &cutoff.to_le_bytes(), &[]);
        }
        self.table.retain_in(..cutoff, |_, _| false)
    }

    fn apply_u64(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        if op == OP_DROP_BELOW {
            return self.drop_below(u64::from_bytes(key));
        }
        self.apply(op, key, value)
    }
}

/// Sum of every table's log length, and the logs drained in table order (per-table order is
/// kept, which is all replay needs: no operation touches two tables).
pub(crate) trait LogSource {
    fn log_len(&self) -> usize;
    fn take_log(&mut self) -> Vec<u8>;
    fn apply(&mut self, table: u8, op: u8, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
}

macro_rules! log_source {
    ($($id:literal => $field:ident $(via $special:ident)?),* $(,)?) => {
        impl LogSource for Tables<'_> {
            fn log_len(&self) -> usize {
                0 $(+ self.$field.log_len())*
            }
            fn take_log(&mut self) -> Vec<u8> {
                let mut out = Vec::with_capacity(self.log_len());
                $(self.$field.take_log_into(&mut out);)*
                out
            }
            fn apply(&mut self, table: u8, op: u8, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
                match table {
                    $($id => log_source!(@apply self.$field, op, key, value $(, $special)?),)*
                    _ => Err(StorageError::Corrupted(format!("journal: unknown table {table}"))),
                }
            }
        }
        /// Table ids in the journal (stable: they are on disk).
        pub(crate) mod table_id {
            $(#[allow(non_upper_case_globals)] pub const $field: u8 = $id;)*
        }
    };
    (@apply $t:expr, $op:ident, $key:ident, $value:ident) => { $t.apply($op, $key, $value) };
    (@apply $t:expr, $op:ident, $key:ident, $value:ident, $special:ident) => { $t.$special($op, $key, $value) };
}

log_source! {
    1 => users,
    2 => usernames,
    3 => emails,
    4 => tokens,
    5 => rooms,
    6 => room_names,
    7 => channels,
    8 => subs,
    9 => members,
    10 => messages,
    11 => message_ids,
    12 => changes via apply_u64,
    13 => meta,
    14 => room_tails,
    15 => edits,
    16 => trash_messages,
    17 => trash_subs,
    18 => docs,
}

/// Applies a record's payload to `t`.
fn apply_payload(t: &mut Tables<'_>, mut payload: &[u8]) -> StoreResult<()> {
    let corrupt = || StoreError::Internal("journal: a record's operations are cut short".into());
    while !payload.is_empty() {
        let [table, op, rest @ ..] = payload else {
            return Err(corrupt());
        };
        let (key, rest) = take_field(rest).ok_or_else(corrupt)?;
        let (value, rest) = take_field(rest).ok_or_else(corrupt)?;
        t.apply(*table, *op, key, value).map_err(sf)?;
        payload = rest;
    }
    Ok(())
}

fn take_field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn checksum(lsn: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one record to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum(lsn, payload).to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The valid records at the start of `bytes`, in order; stops at the first torn or damaged one.
pub fn records(mut bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    std::iter::from_fn(move || {
        let header = bytes.get(..HEADER)?;
        let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        if word(0) != MAGIC {
            return None;
        }
        let len = word(4) as usize;
        let lsn = u64::from_le_bytes(header[12..20].try_into().ok()?);
        let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
        if checksum(lsn, payload) != word(8) {
            return None;
        }
        bytes = &bytes[HEADER + len..];
        Some((lsn, payload))
    })
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The durable journal number of the store (0 before any journaled write).
pub fn durable_lsn(db: &Database) -> StoreResult<u64> {
    let t = db.begin_read().map_err(sf)?;
    let meta = match t.open_table(META) {
        Ok(m) => m,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(sf(e)),
    };
    Ok(meta.get(META_JOURNAL_LSN).map_err(sf)?.map_or(0, |v| v.value()))
}

/// What [`replay`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub groups: u64,
    pub bytes: u64,
    /// Journal number reached.
    pub lsn: u64,
}

/// Applies every journal record newer than the store's durable state in one durable commit, then
/// empties the journal. Runs at open, before anything else uses the file.
pub fn replay(db: &Database, dir: &Path) -> StoreResult<Replayed> {
    let path = path(dir);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(sf)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(sf(e)),
    }
    let durable = durable_lsn(db)?;
    let mut done = Replayed {
        lsn: durable,
        ..Replayed::default()
    };
    let txn = db.begin_write().map_err(sf)?;
    {
        let mut t = Tables::open(&txn)?;
        for (lsn, payload) in records(&bytes) {
            if lsn <= done.lsn {
                if done.groups > 0 {
                    break; // an old tail after newer records: the journal ends here
                }
                continue; // already in the store
            }
            if lsn != done.lsn + 1 {
                return Err(StoreError::Internal(format!(
                    "journal {}: record {lsn} follows {}: acknowledged writes are missing",
                    path.display(),
                    done.lsn
                )));
            }
            apply_payload(&mut t, payload)?;
            done.lsn = lsn;
            done.groups += 1;
            done.bytes += payload.len() as u64;
        }
        t.meta.insert_unlogged(META_JOURNAL_LSN, done.lsn).map_err(sf)?;
    }
    txn.commit().map_err(sf)?;
    let f = File::options().write(true).open(&path).map_err(sf)?;
    f.set_len(0).map_err(sf)?;
    f.sync_all().map_err(sf)?;
    Ok(done)
}

/// A group the writer committed (non-durably unless `durable`), to be answered once its record
/// is on disk.
pub struct Group {
    /// Journal number and payload; `None` when the group changed nothing or is durable already.
    pub record: Option<(u64, Vec<u8>)>,
    /// Change-log head after the group.
    pub head: u64,
    pub replies: Vec<(crate::store::Reply, StoreResult<WriteOutcome>)>,
    pub started: Instant,
    /// The group's change records (slimmed, as stored), for [`Recent`].
    pub changes: Vec<ChangeRecord>,
}

/// Change records that became durable, handed from the journal thread to the feed thread so it
/// need not read them back from the file. Bounded: when the feed falls behind, the oldest are
/// dropped and it reads those from the store instead.
pub struct Recent {
    records: Mutex<VecDeque<ChangeRecord>>,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    fn push(&self, changes: &mut Vec<ChangeRecord>) {
        if changes.is_empty() {
            return;
        }
        if let Ok(mut q) = self.records.lock() {
            q.extend(changes.drain(..));
            let over = q.len().saturating_sub(self.capacity);
            q.drain(..over);
        }
    }

    /// The records right after `seq`, in order, up to `max` (none when they are not here: the
    /// caller reads the store). Records at or before `seq` are dropped on the way.
    pub fn take_after(&self, seq: u64, max: usize) -> Vec<ChangeRecord> {
        let Ok(mut q) = self.records.lock() else {
            return Vec::new();
        };
        while q.front().is_some_and(|r| r.seq <= seq) {
            q.pop_front();
        }
        if q.front().is_none_or(|r| r.seq != seq + 1) {
            return Vec::new();
        }
        let n = q.len().min(max);
        q.drain(..n).collect()
    }
}

pub enum JournalMsg {
    Group(Group),
    /// The store is durable up to everything sent before: empty the file.
    Empty,
}

/// The bounded queue from the writer to the journal thread. A mutex and two condition variables,
/// not a channel: a blocked side sleeps at once instead of spinning and yielding first, which on
/// a busy core cost a context switch per yield (measured: a tenth of a one-core server's CPU).
pub struct Handoff {
    state: Mutex<(VecDeque<JournalMsg>, bool)>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
}

impl Handoff {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new((VecDeque::with_capacity(capacity), false)),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `msg`, waiting while the queue is full; `false` once the journal is gone.
    pub fn send(&self, msg: JournalMsg) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        while state.0.len() >= self.capacity && !state.1 {
            state = match self.not_full.wait(state) {
                Ok(s) => s,
                Err(_) => return false,
            };
        }
        if state.1 {
            return false;
        }
        state.0.push_back(msg);
        drop(state);
        self.not_empty.notify_one();
        true
    }

    /// No more messages: the journal thread ends once it has taken the queued ones.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// Waits for messages and moves up to `max` of them into `out`; `false` once closed and empty.
    fn take(&self, out: &mut Vec<JournalMsg>, max: usize) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        while state.0.is_empty() && !state.1 {
            state = match self.not_empty.wait(state) {
                Ok(s) => s,
                Err(_) => return false,
            };
        }
        let n = state.0.len().min(max);
        out.extend(state.0.drain(..n));
        let more = !state.0.is_empty() || !state.1;
        drop(state);
        self.not_full.notify_one();
        n > 0 || more
    }
}

/// The journal thread's side.
pub struct JournalWriter {
    file: File,
    offset: u64,
    buf: Vec<u8>,
    head: Arc<AtomicU64>,
    recent: Arc<Recent>,
    wake: Sender<()>,
    failed: Arc<AtomicBool>,
}

/// Groups taken per write+sync at most.
const MAX_GROUPS_PER_SYNC: usize = 256;

impl JournalWriter {
    /// Opens (creating) the journal for appending; it is empty after [`replay`].
    pub fn open(
        dir: &Path,
        head: Arc<AtomicU64>,
        recent: Arc<Recent>,
        wake: Sender<()>,
        failed: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let path = path(dir);
        let file = File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let offset = file.metadata()?.len();
        // The file's own name must survive a crash too.
        File::open(dir)?.sync_all()?;
        Ok(Self {
            file,
            offset,
            buf: Vec::new(),
            head,
            recent,
            wake,
            failed,
        })
    }

    /// Runs until the writer closes the handoff: appends, syncs, answers.
    pub fn run(mut self, handoff: Arc<Handoff>) {
        let mut pending: Vec<Group> = Vec::new();
        let mut taken = Vec::with_capacity(MAX_GROUPS_PER_SYNC);
        while handoff.take(&mut taken, MAX_GROUPS_PER_SYNC) {
            for msg in taken.drain(..) {
                match msg {
                    JournalMsg::Group(g) => {
                        if let Some((lsn, payload)) = &g.record {
                            encode_record(&mut self.buf, *lsn, payload);
                        }
                        pending.push(g);
                    }
                    JournalMsg::Empty => {
                        self.flush(&mut pending);
                        self.empty();
                    }
                }
            }
            self.flush(&mut pending);
        }
        tracing::debug!("store journal stopped");
    }

    fn write_and_sync(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        self.file.sync_data()
    }

    fn flush(&mut self, pending: &mut Vec<Group>) {
        if pending.is_empty() {
            return;
        }
        if !self.failed.load(Ordering::Acquire) {
            if let Err(e) = self.write_and_sync() {
                // After a failed fsync nothing written since the last good one can be trusted:
                // every later write is refused (see the writer).
                tracing::error!(error = %e, "store journal write failed; the store refuses writes from now on");
                self.failed.store(true, Ordering::Release);
            }
        }
        let failed = self.failed.load(Ordering::Acquire);
        self.buf.clear();
        let mut advanced = false;
        for mut g in pending.drain(..) {
            WRITER_STATS.commit(g.started, g.replies.len());
            if failed {
                for (reply, _) in g.replies {
                    let _ = reply.send(Err(StoreError::Failed(
                        "the store's journal could not be written".into(),
                    )));
                }
                continue;
            }
            // Before the head moves: the feed reads up to the head, from here when it can.
            self.recent.push(&mut g.changes);
            if g.head > self.head.load(Ordering::Acquire) {
                self.head.store(g.head, Ordering::Release);
                advanced = true;
            }
            for (reply, result) in g.replies {
                let _ = reply.send(result);
            }
        }
        if advanced {
            // Full means a wake-up is already pending.
            let _ = self.wake.try_send(());
        }
    }

    fn empty(&mut self) {
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        // Not synced: a tail that survives a crash is recognised by its old numbers.
        if let Err(e) = self.file.set_len(0) {
            tracing::warn!(error = %e, "emptying the store journal failed; it keeps growing until the next checkpoint");
            return;
        }
        self.offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stop_at_damage_and_keep_order() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, b"first");
        encode_record(&mut buf, 8, b"");
        encode_record(&mut buf, 9, b"third");
        let all: Vec<_> = records(&buf).collect();
        assert_eq!(all, vec![(7, &b"first"[..]), (8, &b""[..]), (9, &b"third"[..])]);
        // A torn tail: the last record cut anywhere is dropped, the others kept.
        for cut in 1..(HEADER + 5) {
            let torn = &buf[..buf.len() - cut];
            assert_eq!(records(torn).count(), 2, "cut {cut}");
        }
        // A flipped byte in the second record's payload length or number ends the journal there.
        let mut bad = buf.clone();
        let second = HEADER + 5;
        bad[second + 12] ^= 1;
        assert_eq!(records(&bad).count(), 1);
    }

    /// Two journaled groups made on one store, replayed into another at the same starting state:
    /// every kind of operation lands, old records are skipped, a torn tail is ignored, the
    /// journal is emptied, and a gap is refused.
    #[test]
    fn replay_applies_newer_records_once_and_empties_the_journal() {
        use crate::store::embedded::EmbeddedStore;
        use redb::ReadableTable;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = EmbeddedStore::open_db(a.path()).unwrap();
        let group = |f: &dyn Fn(&mut Tables<'_>)| {
            let txn = source.begin_write().unwrap();
            let log = {
                let mut t = Tables::open_journaled(&txn).unwrap();
                f(&mut t);
                t.take_log()
            };
            txn.commit().unwrap();
            log
        };
        let first = group(&|t| {
            t.users.insert("u1", b"one".as_slice()).unwrap();
            t.users.insert("u2", b"two".as_slice()).unwrap();
            t.members.insert(("r1", "u1"), ()).unwrap();
            t.message_ids.insert("m1", ("r1", 5, 1)).unwrap();
            for seq in 1..=4u64 {
                t.changes.insert(seq, b"c".as_slice()).unwrap();
            }
            t.tokens.insert("h1", b"t1".as_slice()).unwrap();
            t.tokens.insert("h2", b"t2".as_slice()).unwrap();
        });
        let second = group(&|t| {
            t.users.insert("u1", b"one again".as_slice()).unwrap();
            t.users.remove("u2").unwrap();
            t.changes.drop_below(3).unwrap();
            t.tokens.retain(|k, _| k != "h1").unwrap();
        });
        assert!(!first.is_empty() && !second.is_empty());

        // The target starts where the source did (both fresh), then gets the journal.
        drop(EmbeddedStore::open_db(b.path()).unwrap());
        let mut journal = Vec::new();
        encode_record(&mut journal, 1, &first);
        encode_record(&mut journal, 2, &second);
        let mut torn = Vec::new();
        encode_record(&mut torn, 3, b"never finished");
        journal.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(path(b.path()), &journal).unwrap();

        let db = EmbeddedStore::open_db(b.path()).unwrap();
        assert_eq!(durable_lsn(&db).unwrap(), 2);
        assert_eq!(std::fs::metadata(path(b.path())).unwrap().len(), 0, "journal emptied");
        {
            let r = db.begin_read().unwrap();
            let users = r.open_table(super::super::schema::USERS).unwrap();
            assert_eq!(users.get("u1").unwrap().unwrap().value(), b"one again");
            assert!(users.get("u2").unwrap().is_none());
            let members = r.open_table(super::super::schema::MEMBERS).unwrap();
            assert!(members.get(("r1", "u1")).unwrap().is_some());
            let ids = r.open_table(super::super::schema::MESSAGE_IDS).unwrap();
            assert_eq!(ids.get("m1").unwrap().unwrap().value(), ("r1", 5, 1));
            let changes = r.open_table(super::super::schema::CHANGES).unwrap();
            let left: Vec<u64> = changes.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
            assert_eq!(left, vec![3, 4]);
            let tokens = r.open_table(super::super::schema::TOKENS).unwrap();
            assert!(tokens.get("h1").unwrap().is_none());
            assert!(tokens.get("h2").unwrap().is_some());
        }
        drop(db);

        // Records the store already has are skipped (an emptying that did not reach the disk).
        std::fs::write(path(b.path()), &journal).unwrap();
        let db = EmbeddedStore::open_db(b.path()).unwrap();
        assert_eq!(durable_lsn(&db).unwrap(), 2);
        drop(db);

        // A record that does not follow the store's number means acknowledged writes are gone.
        let mut gap = Vec::new();
        encode_record(&mut gap, 4, &second);
        std::fs::write(path(b.path()), &gap).unwrap();
        let Err(err) = EmbeddedStore::open_db(b.path()) else {
            panic!("a gap is refused");
        };
        assert!(err.to_string().contains("acknowledged writes are missing"), "{err}");
    }

    #[test]
    fn recent_hands_over_only_what_follows() {
        let rec = |seq| ChangeRecord {
            seq,
            change: crate::store::Change::UserStatusChanged {
                user: crate::store::UserRef {
                    id: "u".into(),
                    username: "u".into(),
                    name: "U".into(),
                },
                status: "online".into(),
                status_text: String::new(),
            },
        };
        let recent = Recent::new(3);
        recent.push(&mut vec![rec(1), rec(2)]);
        recent.push(&mut vec![rec(3), rec(4)]); // 1 falls out
        assert!(
            recent.take_after(0, 10).is_empty(),
            "1 is gone: the store has to answer"
        );
        let seqs = |v: Vec<ChangeRecord>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(recent.take_after(1, 1)), vec![2]);
        assert_eq!(seqs(recent.take_after(2, 10)), vec![3, 4]);
        assert!(recent.take_after(4, 10).is_empty());
        recent.push(&mut vec![rec(5), rec(6)]);
        assert_eq!(seqs(recent.take_after(5, 10)), vec![6], "older ones are skipped");
    }

    #[test]
    fn payload_fields_are_bounded() {
        assert!(take_field(&[5, 0, 0, 0, 1, 2]).is_none());
        assert_eq!(take_field(&[2, 0, 0, 0, 1, 2, 3]), Some((&[1u8, 2][..], &[3u8][..])));
    }
}
