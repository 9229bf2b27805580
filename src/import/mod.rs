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
    /// Stores workspace settings carried over (`(id, value)`, see [`IMPORTED_SETTINGS`]).
    fn put_settings(&mut self, settings: &[(String, serde_json::Value)]) -> StoreResult<()>;
}

/// Rocket.Chat settings carried over: the workspace's id (the apps send it to Rocket.Chat's
/// cloud) and its signed supported-versions token (served in `/api/info`).
pub const IMPORTED_SETTINGS: &[&str] = &[
    crate::api::settings::UNIQUE_ID,
    crate::api::settings::SUPPORTED_VERSIONS_TOKEN,
];

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
    pub settings: CollectionReport,
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
            ("rocketchat_settings", &self.settings),
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

/// Streams one collection: each document is decoded and converted (`convert` may skip it,
/// counting why), converted records are handed to `flush` in batches of `batch_size`. A store
/// failure stops the import; a bad record never does.
fn stream<T>(
    source: &Source,
    collection: &str,
    report: &mut CollectionReport,
    batch_size: usize,
    mut convert: impl FnMut(Document, &mut CollectionReport) -> Option<T>,
    mut flush: impl FnMut(Vec<T>, &mut CollectionReport) -> StoreResult<()>,
) -> Result<(), ImportError> {
    let started = std::time::Instant::now();
    let mut batch = Vec::new();
    let mut failure: Option<StoreError> = None;
    report.found = source.for_each(collection, &mut |doc| {
        if failure.is_some() {
            return;
        }
        let Some(d) = decoded(report, doc) else { return };
        if let Some(item) = convert(d, report) {
            batch.push(item);
        }
        if batch.len() >= batch_size {
            if let Err(e) = flush(std::mem::take(&mut batch), report) {
                failure = Some(e);
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if !batch.is_empty() {
        flush(batch, report)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(())
}

/// Runs a whole import from `source` into `sink`. `token_ttl_days`: how long an imported
/// resume token lives after its login (Rocket.Chat's `Accounts_LoginExpiration`, 90 by default).
pub fn run(source: &Source, sink: &mut dyn ImportSink, token_ttl_days: u64) -> Result<Report, ImportError> {
    let now = now_ms();
    let ttl_ms = i64::try_from(token_ttl_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
    let mut report = Report::default();
    let (mut users, mut rooms) = sink.existing_ids()?;

    stream(
        source,
        "rocketchat_settings",
        &mut report.settings,
        BATCH,
        |d, _| {
            let id = d.get_str("_id").ok()?;
            let value = d.get_str("value").ok()?;
            (IMPORTED_SETTINGS.contains(&id) && !value.is_empty())
                .then(|| (id.to_owned(), serde_json::Value::String(value.to_owned())))
        },
        |batch, r| {
            sink.put_settings(&batch)?;
            r.imported += batch.len() as u64;
            Ok(())
        },
    )?;

    stream(
        source,
        "users",
        &mut report.users,
        BATCH,
        |d, r| convert::user(&d, now, ttl_ms).map_err(|s| r.skip(s)).ok(),
        |batch, r| {
            let results = sink.put_users(&batch)?;
            for (u, refused) in batch.into_iter().zip(results) {
                if let Some(skip) = refused {
                    r.skip(skip);
                    continue;
                }
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
            Ok(())
        },
    )?;

    stream(
        source,
        "rocketchat_room",
        &mut report.rooms,
        BATCH,
        |d, r| convert::room(&d, now).map_err(|s| r.skip(s)).ok(),
        |batch, r| {
            let warnings = sink.put_rooms(&batch)?;
            for (room, warning) in batch.into_iter().zip(warnings) {
                if let Some(w) = warning {
                    r.note("room names taken by another room (reachable by id only)", 1);
                    tracing::warn!(rid = %room.id, "{w}");
                }
                r.imported += 1;
                rooms.insert(room.id.0);
            }
            Ok(())
        },
    )?;

    // Subscriptions: membership, roles and read positions; only of users and rooms imported.
    stream(
        source,
        "rocketchat_subscription",
        &mut report.subscriptions,
        BATCH,
        |d, r| match convert::subscription(&d, now) {
            Ok(sub) if !rooms.contains(sub.rid.as_str()) => {
                r.skip(Skip::new("room missing", format!("{} (room {})", sub.id, sub.rid)));
                None
            }
            Ok(sub) if !users.contains(sub.u.id.as_str()) => {
                r.skip(Skip::new("user missing", format!("{} (user {})", sub.id, sub.u.id)));
                None
            }
            Ok(sub) => Some(sub),
            Err(s) => {
                r.skip(s);
                None
            }
        },
        |batch, r| {
            sink.put_subscriptions(&batch)?;
            r.imported += batch.len() as u64;
            Ok(())
        },
    )?;

    // Messages: kept with their ids and authors (even authors that no longer exist).
    stream(
        source,
        "rocketchat_message",
        &mut report.messages,
        MESSAGE_BATCH,
        |d, r| match convert::message(&d) {
            Ok(m) if !rooms.contains(m.rid.as_str()) => {
                r.skip(Skip::new("room missing", format!("{} (room {})", m.id, m.rid)));
                None
            }
            Ok(m) => {
                if !users.contains(m.u.id.as_str()) {
                    r.note("messages whose author no longer exists (kept)", 1);
                }
                Some(m)
            }
            Err(s) => {
                r.skip(s);
                None
            }
        },
        |batch, r| {
            let n = batch.len() as u64;
            let duplicates = sink.put_messages(batch)?;
            r.imported += n - duplicates.min(n);
            r.note("already in the store (not written again)", duplicates);
            Ok(())
        },
    )?;

    let started = std::time::Instant::now();
    sink.finish()?;
    report.finish_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
