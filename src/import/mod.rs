//! `chatd import rocketchat`: copies a Rocket.Chat database (a `mongodump` folder or a live
//! MongoDB) into chatd's store while the server is stopped. Collections are read in dependency
//! order (users, rooms, subscriptions, messages), each streamed in batches; a record that is
//! malformed or dangling is skipped and counted with its reason, never fatal. Ids are kept, so
//! a second run updates what it wrote before and duplicates nothing. Runs on the caller's thread.

pub mod convert;
pub mod source;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use bson::Document;

use crate::ids::now_ms;
use crate::store::{Message, Room, StoreError, StoreResult, Subscription};
use convert::{ImportedUser, Skip};
pub use source::{Source, SourceError};

/// Records handed to the store per call (one transaction each).
const BATCH: usize = 10_000;
/// Messages handed to the store per call: large, because they land all over the store and
/// each transaction rewrites every page it touches.
const MESSAGE_BATCH: usize = 1_000_000;
/// Skip reasons shown per kind in the summary.
const EXAMPLES_PER_KIND: usize = 3;

/// Where imported records go: one implementation per store backend. Ids are kept; every call
/// upserts, so a second import changes nothing it already wrote.
pub trait ImportSink {
    /// Ids of the users and rooms the store already holds.
    fn existing_ids(&mut self) -> StoreResult<(HashSet<String>, HashSet<String>)>;
    /// Stores users with their indexes and tokens; per user, `Some(skip)` when refused (e.g. a
    /// username that differs only by case from another user's).
    fn put_users(&mut self, batch: &[ImportedUser]) -> StoreResult<Vec<Option<Skip>>>;
    /// Stores rooms (keeping the counters of a room already there); per room, a warning when
    /// its name could not be indexed.
    fn put_rooms(&mut self, batch: &[Room]) -> StoreResult<Vec<Option<String>>>;
    fn put_subscriptions(&mut self, batch: &[Subscription]) -> StoreResult<()>;
    /// Stores messages whose id is new (assigning room sequence numbers); returns how many were
    /// already there.
    fn put_messages(&mut self, batch: Vec<Message>) -> StoreResult<u64>;
    /// Recomputes what depends on everything: room counters and last messages, and each
    /// subscription's read position from its last-seen time.
    fn finish(&mut self) -> StoreResult<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("writing to chatd's store failed: {0}")]
    Store(#[from] StoreError),
}

/// What happened to one collection.
#[derive(Debug, Default)]
pub struct CollectionReport {
    pub found: bool,
    pub read: u64,
    pub imported: u64,
    /// kind → (count, first details).
    pub skipped: BTreeMap<&'static str, (u64, Vec<String>)>,
    pub notes: BTreeMap<&'static str, u64>,
    pub seconds: f64,
}

impl CollectionReport {
    fn skip(&mut self, s: Skip) {
        let entry = self.skipped.entry(s.kind).or_default();
        entry.0 += 1;
        if entry.1.len() < EXAMPLES_PER_KIND {
            entry.1.push(s.detail);
        }
    }

    fn note(&mut self, what: &'static str, n: u64) {
        if n > 0 {
            *self.notes.entry(what).or_default() += n;
        }
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().map(|(n, _)| n).sum()
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub users: CollectionReport,
    pub rooms: CollectionReport,
    pub subscriptions: CollectionReport,
    pub messages: CollectionReport,
    /// Seconds spent recomputing room counters and read positions at the end.
    pub finish_seconds: f64,
}

impl Report {
    /// The summary printed at the end: counts per collection and the first reasons per kind.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (name, c) in [
            ("users", &self.users),
            ("rocketchat_room", &self.rooms),
            ("rocketchat_subscription", &self.subscriptions),
            ("rocketchat_message", &self.messages),
        ] {
            if !c.found {
                let _ = writeln!(out, "{name:<24} not found in the source");
                continue;
            }
            let _ = writeln!(
                out,
                "{name:<24} read {:>9}  imported {:>9}  skipped {:>7}  ({:.1} s)",
                c.read,
                c.imported,
                c.skipped_total(),
                c.seconds
            );
            for (kind, (n, examples)) in &c.skipped {
                let _ = writeln!(out, "    skipped {n:>7} × {kind}: e.g. {}", examples.join("; "));
            }
            for (what, n) in &c.notes {
                let _ = writeln!(out, "    note    {n:>7} × {what}");
            }
        }
        let _ = writeln!(
            out,
            "room counters and read positions recomputed ({:.1} s)",
            self.finish_seconds
        );
        out
    }
}

fn decoded(report: &mut CollectionReport, doc: Result<Document, String>) -> Option<Document> {
    report.read += 1;
    match doc {
        Ok(d) => Some(d),
        Err(e) => {
            report.skip(Skip::new("document does not decode", e));
            None
        }
    }
}

/// Runs a whole import from `source` into `sink`. `token_ttl_days`: how long an imported
/// resume token lives after its login (Rocket.Chat's `Accounts_LoginExpiration`, 90 by default).
pub fn run(source: &Source, sink: &mut dyn ImportSink, token_ttl_days: u64) -> Result<Report, ImportError> {
    let now = now_ms();
    let ttl_ms = i64::try_from(token_ttl_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
    let mut report = Report::default();
    let (mut users, mut rooms) = sink.existing_ids()?;
    let mut failure: Option<StoreError> = None;

    let mut clock = std::time::Instant::now();
    let mut lap = || {
        let s = clock.elapsed().as_secs_f64();
        clock = std::time::Instant::now();
        s
    };

    // Users.
    let mut batch: Vec<ImportedUser> = Vec::new();
    let mut flush_users = |batch: &mut Vec<ImportedUser>, r: &mut CollectionReport, users: &mut HashSet<String>| {
        let results = sink.put_users(batch)?;
        for (u, refused) in batch.drain(..).zip(results) {
            match refused {
                Some(skip) => r.skip(skip),
                None => {
                    r.imported += 1;
                    r.note("resume tokens kept", u.tokens.len() as u64);
                    r.note("resume tokens dropped (expired or malformed)", u.tokens_dropped);
                    if u.user.password_hash.is_empty() {
                        r.note("users without a password (OAuth/LDAP-only): cannot log in with one", 1);
                    }
                    if !u.user.active {
                        r.note("deactivated users (cannot log in)", 1);
                    }
                    users.insert(u.user.id.0);
                }
            }
        }
        Ok::<(), StoreError>(())
    };
    report.users.found = source.for_each("users", &mut |doc| {
        if failure.is_some() {
            return;
        }
        let Some(d) = decoded(&mut report.users, doc) else {
            return;
        };
        match convert::user(&d, now, ttl_ms) {
            Ok(u) => batch.push(u),
            Err(s) => report.users.skip(s),
        }
        if batch.len() >= BATCH {
            if let Err(e) = flush_users(&mut batch, &mut report.users, &mut users) {
                failure = Some(e);
            }
        }
    })?;
    if let Some(e) = failure.take() {
        return Err(e.into());
    }
    flush_users(&mut batch, &mut report.users, &mut users)?;
    report.users.seconds = lap();

    // Rooms.
    let mut batch: Vec<Room> = Vec::new();
    let mut flush_rooms = |batch: &mut Vec<Room>, r: &mut CollectionReport, rooms: &mut HashSet<String>| {
        let warnings = sink.put_rooms(batch)?;
        for (room, warning) in batch.drain(..).zip(warnings) {
            if let Some(w) = warning {
                r.note("room names taken by another room (reachable by id only)", 1);
                tracing::warn!(rid = %room.id, "{w}");
            }
            r.imported += 1;
            rooms.insert(room.id.0);
        }
        Ok::<(), StoreError>(())
    };
    report.rooms.found = source.for_each("rocketchat_room", &mut |doc| {
        if failure.is_some() {
            return;
        }
        let Some(d) = decoded(&mut report.rooms, doc) else {
            return;
        };
        match convert::room(&d, now) {
            Ok(room) => batch.push(room),
            Err(s) => report.rooms.skip(s),
        }
        if batch.len() >= BATCH {
            if let Err(e) = flush_rooms(&mut batch, &mut report.rooms, &mut rooms) {
                failure = Some(e);
            }
        }
    })?;
    if let Some(e) = failure.take() {
        return Err(e.into());
    }
    flush_rooms(&mut batch, &mut report.rooms, &mut rooms)?;
    report.rooms.seconds = lap();

    // Subscriptions: membership, roles and read positions; only of users and rooms imported.
    let mut batch: Vec<Subscription> = Vec::new();
    report.subscriptions.found = source.for_each("rocketchat_subscription", &mut |doc| {
        if failure.is_some() {
            return;
        }
        let r = &mut report.subscriptions;
        let Some(d) = decoded(r, doc) else { return };
        match convert::subscription(&d, now) {
            Ok(sub) if !rooms.contains(sub.rid.as_str()) => {
                r.skip(Skip::new("room missing", format!("{} (room {})", sub.id, sub.rid)))
            }
            Ok(sub) if !users.contains(sub.u.id.as_str()) => {
                r.skip(Skip::new("user missing", format!("{} (user {})", sub.id, sub.u.id)))
            }
            Ok(sub) => batch.push(sub),
            Err(s) => r.skip(s),
        }
        if batch.len() >= BATCH {
            match sink.put_subscriptions(&batch) {
                Ok(()) => r.imported += batch.len() as u64,
                Err(e) => failure = Some(e),
            }
            batch.clear();
        }
    })?;
    if let Some(e) = failure.take() {
        return Err(e.into());
    }
    sink.put_subscriptions(&batch)?;
    report.subscriptions.imported += batch.len() as u64;
    report.subscriptions.seconds = lap();

    // Messages: kept with their ids and authors (even authors that no longer exist).
    let mut batch: Vec<Message> = Vec::new();
    let mut flush_messages = |batch: &mut Vec<Message>, r: &mut CollectionReport| {
        let n = batch.len() as u64;
        let duplicates = sink.put_messages(std::mem::take(batch))?;
        r.imported += n - duplicates.min(n);
        r.note("already in the store (not written again)", duplicates);
        Ok::<(), StoreError>(())
    };
    report.messages.found = source.for_each("rocketchat_message", &mut |doc| {
        if failure.is_some() {
            return;
        }
        let r = &mut report.messages;
        let Some(d) = decoded(r, doc) else { return };
        match convert::message(&d) {
            Ok(m) if !rooms.contains(m.rid.as_str()) => {
                r.skip(Skip::new("room missing", format!("{} (room {})", m.id, m.rid)))
            }
            Ok(m) => {
                if !users.contains(m.u.id.as_str()) {
                    r.note("messages whose author no longer exists (kept)", 1);
                }
                batch.push(m);
            }
            Err(s) => r.skip(s),
        }
        if batch.len() >= MESSAGE_BATCH {
            if let Err(e) = flush_messages(&mut batch, r) {
                failure = Some(e);
            }
        }
    })?;
    if let Some(e) = failure.take() {
        return Err(e.into());
    }
    flush_messages(&mut batch, &mut report.messages)?;
    report.messages.seconds = lap();

    sink.finish()?;
    report.finish_seconds = lap();
    Ok(report)
}
