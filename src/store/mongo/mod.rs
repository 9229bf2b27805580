//! The MongoDB backend: chatd hosts sharing one replica set.
//!
//! Threads: the driver lives on the store's own tokio runtime ("chatd-mongo-N" workers), which
//! also runs the change-stream task ([`feed::follow`]) and a reachability probe. Shards never
//! run tokio: they reach the backend over the same bounded queues as the embedded store's — the
//! writer thread ("chatd-mongo-writer", fed by a bounded crossbeam channel) and the reader pool —
//! and those plain threads block on the runtime for each driver call.
//!
//! Writes: the writer applies a group of requests with the shared chat rules inside one
//! multi-document transaction (write concern `w: majority, j: true`), retrying transient
//! transaction errors; a client's write is acknowledged only after the commit. Each change is
//! also inserted into the change-log collection in the same transaction; every host's tailer
//! follows those inserts through one change stream, and a write's mark is its commit's operation
//! time, compared with the cluster time of the changes a shard has applied.

pub mod convert;
pub mod feed;
pub mod import;
mod reads;
pub mod schema;
mod txn;
mod work;

use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mongodb::bson::{doc, Document, Timestamp};
use mongodb::error::{ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{
    Acknowledgment, ClientOptions, ConnectionString, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern,
};
use mongodb::{Client, ClientSession, Database};
use rand::Rng;
use tokio::runtime::Handle;

use super::{
    Backend, BackendStatus, ChangeFeed, Mark, StoreError, StoreResult, SubmitError, WriteOutcome, WriteRequest,
    WriterMsg, WRITE_QUEUE_CAPACITY,
};
use crate::app::rules::{self, GENERAL_ROOM_ID};
use crate::ids::{now_ms, MessageId, RoomId, UserId};
use feed::{DriverIo, FeedStats, MongoFeed, Start};
use reads::Reads;
use txn::MongoTxn;

/// Most requests applied in one transaction.
pub const MAX_GROUP: usize = 64;
/// How long a majority write may wait for replication before it reports an unknown outcome
/// (the write may still land; clients re-send with the same id, which is idempotent).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a transaction that failed with a transient error (write conflicts between
/// hosts, elections) before its requests fail...
const TRANSIENT_ATTEMPTS: u32 = 8;
/// ... and no new attempt starts after this long, so a client hears back within about the
/// connect timeout plus this even while MongoDB is unreachable.
const TRANSIENT_BUDGET: Duration = Duration::from_secs(5);
/// Commit retries when the outcome of a commit is unknown.
const COMMIT_ATTEMPTS: u32 = 3;
/// Between reachability probes.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Driver worker threads.
const RUNTIME_THREADS: usize = 2;
/// The server's WriteConflict.
const WRITE_CONFLICT: i32 = 112;
/// The server's CommandNotFound.
const COMMAND_NOT_FOUND: i32 = 59;

/// What the backend needs to start.
#[derive(Clone)]
pub struct MongoOptions {
    pub url: String,
    /// The database; when `None`, the URL's path names it (`chatd` when that is empty too).
    pub database: Option<String>,
    /// Start-up gives up after this long without a usable server (exit code 3); also the
    /// driver's server-selection timeout for every operation later.
    pub connect_timeout: Duration,
    /// Where this host keeps its change-stream position.
    pub data_dir: PathBuf,
    /// This host's name, recorded with each change it writes.
    pub host: String,
    /// Reader threads that may each hold a connection (sizes the connection pool).
    pub readers: usize,
}

impl std::fmt::Debug for MongoOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoOptions")
            .field("url", &redacted_url(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MongoOpenError {
    #[error("invalid MongoDB URL: {0}")]
    Url(String),
    #[error("MongoDB at {at} is unreachable: {reason}")]
    Unreachable { at: String, reason: String },
    #[error("MongoDB at {at} is not a replica set: chatd follows change streams, which need one (a one-member replica set is enough: rs.initiate())")]
    NotReplicaSet { at: String },
    #[error("MongoDB at {at}: {reason}")]
    Failed { at: String, reason: String },
    #[error("MongoDB at {at} is in use by running chatd hosts ({hosts}): stop every host first (an import into a running cluster is not safe)")]
    InUse { at: String, hosts: String },
}

/// A URL's hosts and database, without credentials or options (safe to log).
pub fn redacted_url(url: &str) -> String {
    match ConnectionString::parse(url) {
        Ok(cs) => {
            let hosts: Vec<String> = cs.host_info_hosts().unwrap_or_default();
            format!(
                "mongodb://{}/{}",
                hosts.join(","),
                cs.default_database.as_deref().unwrap_or("")
            )
        }
        Err(_) => "(invalid URL)".into(),
    }
}

trait HostInfo {
    fn host_info_hosts(&self) -> Option<Vec<String>>;
}

impl HostInfo for ConnectionString {
    fn host_info_hosts(&self) -> Option<Vec<String>> {
        match &self.host_info {
            mongodb::options::HostInfo::HostIdentifiers(hosts) => Some(hosts.iter().map(|h| h.to_string()).collect()),
            mongodb::options::HostInfo::DnsRecord(name) => Some(vec![format!("srv:{name}")]),
            _ => None,
        }
    }
}

/// Checks a URL's syntax (no I/O): `--check-config`.
pub fn validate_url(url: &str) -> Result<(), String> {
    ConnectionString::parse(url).map(|_| ()).map_err(|e| describe(&e))
}

/// The server's error code, where the error carries one.
pub fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first().map(|w| w.code))
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// A short description of a driver error (its kind, without the server's whole reply).
pub fn describe(e: &mongodb::error::Error) -> String {
    let text = e.kind.to_string();
    match text.char_indices().nth(400) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn majority_journaled() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .w_timeout(WRITE_TIMEOUT)
        .build()
}

/// Whether MongoDB answered lately (the probe) — `/health` turns unhealthy when not.
#[derive(Default)]
struct Reachability {
    up: AtomicBool,
    error: Mutex<Option<String>>,
}

pub struct MongoStore {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    rt: Handle,
    client: Client,
    reads: Reads,
    tx: Sender<WriterMsg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Mark of the newest commit this host made.
    head: Arc<AtomicU64>,
    feed_start: Mutex<Option<Start>>,
    feed_stats: Arc<FeedStats>,
    reach: Arc<Reachability>,
    stopping: Arc<AtomicBool>,
    /// This host's key in the instances registry, removed at close.
    registered: Mutex<Option<String>>,
}

/// What start-up learned about the server.
struct Connected {
    client: Client,
    db: Database,
    /// The cluster time when the store opened: the feed starts there unless it resumes.
    opened_at: Option<Timestamp>,
}

/// Connections besides the readers': the writer, the change stream's `getMore` (held up to
/// half a second), the probe, the registry, and the driver's own monitoring.
const POOL_EXTRA: usize = 8;

/// chatd's settings over what the URL says: timeouts, majority durability, primary reads, and a
/// pool with a connection for every thread that may hold one at once (the driver's default of
/// 10 would queue reads under load); a `maxPoolSize` in the URL wins.
fn tune(o: &mut ClientOptions, timeout: Duration, readers: usize) {
    o.app_name = Some("chatd".into());
    o.server_selection_timeout = Some(timeout);
    o.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
    o.write_concern = Some(majority_journaled());
    o.read_concern = Some(ReadConcern::majority());
    o.selection_criteria = Some(SelectionCriteria::ReadPreference(ReadPreference::Primary));
    if o.max_pool_size.is_none() {
        o.max_pool_size = Some(u32::try_from(readers + POOL_EXTRA).unwrap_or(u32::MAX));
    }
}

async fn connect(
    url: String,
    database: Option<String>,
    timeout: Duration,
    readers: usize,
) -> Result<Connected, MongoOpenError> {
    let at = redacted_url(&url);
    let mut o = ClientOptions::parse(&url)
        .await
        .map_err(|e| MongoOpenError::Url(describe(&e)))?;
    tune(&mut o, timeout, readers);
    let name = database
        .or_else(|| o.default_database.clone())
        .unwrap_or_else(|| "chatd".into());
    let client = Client::with_options(o).map_err(|e| MongoOpenError::Url(describe(&e)))?;
    let db = client.database(&name);
    let unreachable = |e: mongodb::error::Error| MongoOpenError::Unreachable {
        at: at.clone(),
        reason: describe(&e),
    };
    // `hello` exists from 4.4.2 (and 5.0); 4.4.0 and 4.4.1 know it as `isMaster`.
    let hello = match db.run_command(doc! {"hello": 1}).await {
        Err(e) if error_code(&e) == Some(COMMAND_NOT_FOUND) => {
            db.run_command(doc! {"isMaster": 1}).await.map_err(unreachable)?
        }
        other => other.map_err(unreachable)?,
    };
    if hello.get_str("setName").is_err() && hello.get_str("msg").ok() != Some("isdbgrid") {
        return Err(MongoOpenError::NotReplicaSet { at });
    }
    let failed = |e: mongodb::error::Error| MongoOpenError::Failed {
        at: at.clone(),
        reason: describe(&e),
    };
    schema::ensure(&db).await.map_err(failed)?;
    bootstrap_general(&db).await.map_err(failed)?;
    // A majority read in a causally consistent session: its operation time is a cluster time
    // every change committed before now is at or below.
    let mut session = client.start_session().await.map_err(failed)?;
    db.collection::<Document>(schema::ROOMS)
        .find_one(doc! {"_id": GENERAL_ROOM_ID})
        .session(&mut session)
        .await
        .map_err(failed)?;
    let opened_at = session.operation_time();
    Ok(Connected { client, db, opened_at })
}

/// Creates the GENERAL channel when missing (several hosts may race: the loser's upsert finds it).
pub(super) async fn bootstrap_general(db: &Database) -> mongodb::error::Result<()> {
    let room = rules::general_room(now_ms());
    let mut fields = match schema::room_doc(&room, true) {
        Ok(d) => d,
        Err(e) => return Err(mongodb::error::Error::custom(e.to_string())),
    };
    fields.remove("_id");
    let result = db
        .collection::<Document>(schema::ROOMS)
        .update_one(doc! {"_id": GENERAL_ROOM_ID}, doc! {"$setOnInsert": fields})
        .upsert(true)
        .await;
    match result {
        Err(e) if error_code(&e) == Some(schema::DUPLICATE_KEY) => Ok(()),
        other => other.map(|_| ()),
    }
}

impl MongoStore {
    /// Connects (giving up after `connect_timeout`), creates what is missing, and starts the
    /// writer thread and the reachability probe. The change stream starts when the feed is taken.
    pub fn open(opts: &MongoOptions) -> Result<Arc<Self>, MongoOpenError> {
        let at = redacted_url(&opts.url);
        let failed = |reason: String| MongoOpenError::Failed { at: at.clone(), reason };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("chatd-mongo")
            .enable_all()
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let rt = runtime.handle().clone();
        // The driver's own timeouts bound the attempt; the outer one is a backstop. The work is
        // spawned and only the join handle is timed out (never a driver future).
        let task = rt.spawn(connect(
            opts.url.clone(),
            opts.database.clone(),
            opts.connect_timeout,
            opts.readers,
        ));
        let joined =
            rt.block_on(async { tokio::time::timeout(opts.connect_timeout + Duration::from_secs(2), task).await });
        let connected = match joined {
            Ok(Ok(Ok(c))) => c,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => {
                return Err(MongoOpenError::Unreachable {
                    at,
                    reason: format!("no answer within {:?}", opts.connect_timeout),
                })
            }
        };
        let Connected { client, db, opened_at } = connected;
        feed::remove_old_position_file(&opts.data_dir);
        // From the open, never from an earlier run's position: see the feed's docs.
        let start = opened_at.map_or(Start::Now, Start::At);
        let head = Arc::new(AtomicU64::new(opened_at.map_or(0, convert::mark_of)));
        let (tx, rx) = crossbeam_channel::bounded(WRITE_QUEUE_CAPACITY);
        let reach = Arc::new(Reachability::default());
        reach.up.store(true, Ordering::Release);
        let writer = Writer {
            rt: rt.clone(),
            client: client.clone(),
            db: db.clone(),
            host: opts.host.clone(),
            head: head.clone(),
            reach: reach.clone(),
            session: None,
        };
        let writer = std::thread::Builder::new()
            .name("chatd-mongo-writer".into())
            .spawn(move || {
                writer.run(rx);
            })
            .map_err(|e| failed(e.to_string()))?;
        let stopping = Arc::new(AtomicBool::new(false));
        rt.spawn(probe(db.clone(), reach.clone(), stopping.clone()));
        tracing::info!(at = %at, database = db.name(), "MongoDB store open");
        Ok(Arc::new(Self {
            runtime: Mutex::new(Some(runtime)),
            reads: Reads { rt: rt.clone(), db },
            rt,
            client,
            tx,
            writer: Mutex::new(Some(writer)),
            head,
            feed_start: Mutex::new(Some(start)),
            feed_stats: Arc::new(FeedStats::default()),
            reach,
            stopping,
            registered: Mutex::new(None),
        }))
    }
}

/// Heartbeats of hosts older than this many intervals are stale (the host is gone).
const STALE_BEATS: u32 = 3;

/// Keeps this host's instances entry fresh and reports the live hosts' addresses after every
/// beat (a full list is dropped when the previous one was not taken yet: the next one follows).
async fn registry(
    db: Database,
    me: Option<super::Instance>,
    every: Duration,
    mut out: futures::channel::mpsc::Sender<Vec<String>>,
    stopping: Arc<AtomicBool>,
) {
    let coll = db.collection::<Document>(schema::INSTANCES);
    let stale_ms = i64::try_from((every * STALE_BEATS).as_millis()).unwrap_or(i64::MAX);
    let mut failing = false;
    let mut previous: Vec<String> = Vec::new();
    while !stopping.load(Ordering::Acquire) && !out.is_closed() {
        let beat = async {
            if let Some(me) = &me {
                coll.update_one(
                    doc! {"_id": &me.addr},
                    doc! {
                        "$set": {
                            "host": format!("{:016x}", me.host),
                            "pid": std::process::id(),
                            "every_ms": i64::try_from(every.as_millis()).unwrap_or(i64::MAX),
                        },
                        "$currentDate": {"heartbeat": true},
                        "$setOnInsert": {"started": mongodb::bson::DateTime::now()},
                    },
                )
                .upsert(true)
                .await?;
            }
            // Liveness by the server's clock, so hosts' clocks need not agree.
            live_hosts(&coll, stale_ms.into()).await
        };
        match beat.await {
            Ok(list) => {
                let list = if failing {
                    tracing::info!("instances registry reachable again");
                    failing = false;
                    // Hosts cut off by the same outage have not beaten again yet: keep the
                    // peers known before it for this one round instead of dropping their links.
                    union(&previous, list)
                } else {
                    list
                };
                previous.clone_from(&list);
                let _ = out.try_send(list);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %describe(&e), "instances registry heartbeat failed; will retry");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// `a` and `b` together, each address once.
fn union(a: &[String], b: Vec<String>) -> Vec<String> {
    let mut out = b;
    for x in a {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

/// The addresses of the hosts whose heartbeat is younger than `stale_ms` by the server's clock.
/// Read with local read concern: during a majority-commit stall (a secondary down in a
/// primary-secondary-arbiter set) heartbeats land on the primary but never become majority
/// committed, and a majority read would report every live host gone.
/// `stale_ms` is a number, or an expression over the entry (its own interval).
async fn live_hosts(
    coll: &mongodb::Collection<Document>,
    stale_ms: mongodb::bson::Bson,
) -> mongodb::error::Result<Vec<String>> {
    let live: Vec<Document> = futures::TryStreamExt::try_collect(
        coll.find(doc! {"$expr": {"$gt": ["$heartbeat", {"$subtract": ["$$NOW", stale_ms]}]}})
            .projection(doc! {"_id": 1})
            .read_concern(ReadConcern::local())
            .await?,
    )
    .await?;
    Ok(live
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
        .collect())
}

/// Pings the replica set every [`PROBE_EVERY`] (each ping bounded by the server-selection
/// timeout). Any member answering counts: during an election (about ten seconds without a
/// primary) writes wait, but websockets, typing and cached reads go on, and a load balancer that
/// took every host out at once would leave no host at all.
async fn probe(db: Database, reach: Arc<Reachability>, stopping: Arc<AtomicBool>) {
    let any_member = SelectionCriteria::ReadPreference(ReadPreference::Nearest { options: None });
    while !stopping.load(Ordering::Acquire) {
        let result = db
            .run_command(doc! {"ping": 1})
            .selection_criteria(any_member.clone())
            .await;
        let was = reach.up.swap(result.is_ok(), Ordering::AcqRel);
        match result {
            Ok(_) if !was => tracing::info!("MongoDB reachable again"),
            Err(e) => {
                let text = describe(&e);
                if was {
                    tracing::error!(error = %text, "MongoDB unreachable");
                }
                if let Ok(mut slot) = reach.error.lock() {
                    *slot = Some(text);
                }
            }
            Ok(_) => {}
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// The writer thread's state.
struct Writer {
    rt: Handle,
    client: Client,
    db: Database,
    host: String,
    head: Arc<AtomicU64>,
    /// The probe's view: while MongoDB is unreachable, queued writes fail at once instead of
    /// each group waiting out a server selection.
    reach: Arc<Reachability>,
    /// Made on first use, and again after a failure that may have broken it.
    session: Option<ClientSession>,
}

/// How one attempt at a group ended.
enum Attempt {
    Done(Vec<StoreResult<WriteOutcome>>),
    /// A driver error: the transaction is aborted.
    Failed(mongodb::error::Error),
}

/// What a writer thread did, returned when it stops (tests).
#[derive(Debug, Default, PartialEq)]
pub struct WriterReport {
    /// Requests whose client had stopped waiting before their turn: not applied.
    pub cancelled: u64,
    /// Requests failed at once because MongoDB was unreachable.
    pub failed_fast: u64,
}

/// Whether a failure is MongoDB being unreachable (no server could be selected).
fn unreachable_error(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::ServerSelection { .. })
}

impl Writer {
    fn run(mut self, rx: Receiver<WriterMsg>) -> WriterReport {
        let mut report = WriterReport::default();
        let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_GROUP);
        let mut stop = false;
        while !stop {
            let Some(last) = super::take_group(&rx, None, MAX_GROUP, &mut batch) else {
                break;
            };
            stop = last;
            // A client that stopped waiting was told "outcome unknown"; applying its write now,
            // late, would turn a re-send without a client id into a duplicate.
            let before = batch.len();
            batch.retain(|r| !r.reply.is_canceled());
            report.cancelled += (before - batch.len()) as u64;
            if batch.is_empty() {
                continue;
            }
            if !self.reach.up.load(Ordering::Acquire) {
                report.failed_fast += batch.len() as u64;
                let failure = StoreError::Failed("MongoDB is unreachable".into());
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(failure.clone()));
                }
                continue;
            }
            let started = std::time::Instant::now();
            let results = self.commit_group(&batch);
            super::WRITER_STATS.commit(started, batch.len());
            for (req, result) in batch.drain(..).zip(results) {
                let _ = req.reply.send(result);
            }
        }
        tracing::debug!("MongoDB writer stopped");
        report
    }

    /// Applies `batch` in one transaction, retrying transient failures. A group that fails
    /// otherwise (a unique index refused one request, a stored document that does not decode,
    /// a change over the size limit, conflicts that outlasted the retries) is split and its
    /// halves tried apart, down to single requests: one bad request never fails the others.
    /// Only an unreachable MongoDB fails a whole group at once.
    fn commit_group(&mut self, batch: &[WriteRequest]) -> Vec<StoreResult<WriteOutcome>> {
        match self.with_retries(batch) {
            Ok(results) => results,
            Err(e) if batch.len() > 1 && !unreachable_error(&e) => {
                let (a, b) = batch.split_at(batch.len() / 2);
                let mut out = self.commit_group(a);
                out.extend(self.commit_group(b));
                out
            }
            Err(e) => {
                let failure = StoreError::Failed(describe(&e));
                tracing::error!(error = %failure, requests = batch.len(), "MongoDB transaction failed; requests rejected");
                batch.iter().map(|_| Err(failure.clone())).collect()
            }
        }
    }

    fn with_retries(
        &mut self,
        batch: &[WriteRequest],
    ) -> Result<Vec<StoreResult<WriteOutcome>>, mongodb::error::Error> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.attempt(batch) {
                Attempt::Done(results) => return Ok(results),
                Attempt::Failed(e) => e,
            };
            let unreachable = unreachable_error(&error);
            if unreachable {
                // Its transaction was not aborted (no server to tell): start afresh next time.
                self.session = None;
            }
            // A duplicate key on a lone request: another host just wrote the same unique name;
            // once more, the rules see it and refuse cleanly.
            // A write conflict is transient whether the server labels it (a command error) or
            // reports it among a command's write errors (no labels there).
            let transient =
                error.contains_label(TRANSIENT_TRANSACTION_ERROR) || error_code(&error) == Some(WRITE_CONFLICT);
            let again = (transient && !unreachable)
                || (batch.len() == 1 && error_code(&error) == Some(schema::DUPLICATE_KEY) && attempt < 3);
            if !again || attempt >= TRANSIENT_ATTEMPTS || started.elapsed() >= TRANSIENT_BUDGET {
                return Err(error);
            }
            let pause = Duration::from_millis(rand::thread_rng().gen_range(1..=(5u64 << attempt.min(6))));
            std::thread::sleep(pause);
        }
    }

    fn session(&mut self) -> Result<&mut ClientSession, mongodb::error::Error> {
        if self.session.is_none() {
            let client = self.client.clone();
            self.session = Some(self.rt.block_on(async move { client.start_session().await })?);
        }
        match self.session.as_mut() {
            Some(s) => Ok(s),
            None => Err(mongodb::error::Error::custom("no session")),
        }
    }

    /// One transaction: the group's reads by key in one query per collection, the rules, every
    /// write in one command per collection, the commit (see [`work`]).
    fn attempt(&mut self, batch: &[WriteRequest]) -> Attempt {
        let rt = self.rt.clone();
        let db = self.db.clone();
        let host = self.host.clone();
        let session = match self.session() {
            Ok(s) => s,
            Err(e) => return Attempt::Failed(e),
        };
        let started = rt.block_on(
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(majority_journaled())
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .into_future(),
        );
        if let Err(e) = started {
            self.session = None;
            return Attempt::Failed(e);
        }
        let now = now_ms();
        let mut outputs = Vec::with_capacity(batch.len());
        let (failure, wrote) = {
            let mut t = MongoTxn::new(&rt, &db, session, &host, now);
            let ops: Vec<&super::WriteOp> = batch.iter().map(|r| &r.op).collect();
            let mut failure = t.prefetch(&ops).err();
            if failure.is_none() {
                for req in batch {
                    let before = t.pushed;
                    match rules::apply(&mut t, req.op.clone(), now) {
                        Ok(output) => outputs.push(Ok((output, t.pushed > before))),
                        // A refused request wrote nothing (the rules check before writing).
                        Err(e @ StoreError::Rejected { .. }) => outputs.push(Err(e)),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
            }
            if failure.is_none() {
                failure = t.flush().err();
            }
            let failure = failure.map(|e| {
                t.last_error
                    .borrow_mut()
                    .take()
                    .unwrap_or_else(|| mongodb::error::Error::custom(e.to_string()))
            });
            (failure, t.sent.get() > 0)
        };
        if let Some(e) = failure {
            abort(&rt, session, &e);
            return Attempt::Failed(e);
        }
        if !wrote {
            // Nothing was written: ending the transaction without a commit spares the no-op
            // oplog entry (and the majority wait) a read-only commit costs.
            let _ = rt.block_on(session.abort_transaction().into_future());
            return Attempt::Done(
                outputs
                    .into_iter()
                    .map(|r| r.map(|(output, _)| WriteOutcome { output, mark: 0 }))
                    .collect(),
            );
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match rt.block_on(session.commit_transaction().into_future()) {
                Ok(()) => break,
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < COMMIT_ATTEMPTS => continue,
                Err(e) => {
                    abort(&rt, session, &e);
                    return Attempt::Failed(e);
                }
            }
        }
        let mark = session.operation_time().map_or(0, convert::mark_of);
        // The head moves only with changes the feed will carry: a commit without one (a login,
        // a logout, a rehash) would leave the head ahead of every event, and `/health` would
        // report the feed stalled until some chat change happened.
        if outputs.iter().any(|r| matches!(r, Ok((_, true)))) {
            self.head.fetch_max(mark, Ordering::AcqRel);
        }
        Attempt::Done(
            outputs
                .into_iter()
                .map(|r| {
                    r.map(|(output, changed)| WriteOutcome {
                        output,
                        // Nothing to wait for when the write changed nothing the feed carries.
                        mark: if changed { mark } else { 0 },
                    })
                })
                .collect(),
        )
    }
}

/// Aborts the session's transaction after `cause`, unless no server is reachable (the abort
/// would wait out another server selection; the server drops the transaction by itself).
fn abort(rt: &Handle, session: &mut ClientSession, cause: &mongodb::error::Error) {
    if !matches!(cause.kind.as_ref(), ErrorKind::ServerSelection { .. }) {
        let _ = rt.block_on(session.abort_transaction().into_future());
    }
}

impl MongoStore {
    /// Hosts serving this database now (heartbeats younger than three of their own intervals),
    /// as `"addr"` strings: what an import checks before it writes.
    pub fn running_hosts(&self) -> StoreResult<Vec<String>> {
        let coll = self.reads.db.collection::<Document>(schema::INSTANCES);
        // Each entry judged by its own interval (older entries carry none: the default's).
        let stale = doc! {"$multiply": [{"$ifNull": ["$every_ms", 2000_i64]}, i64::from(STALE_BEATS)]};
        self.reads.run(async move { live_hosts(&coll, stale.into()).await })
    }

    /// Drops chatd's database (tests and tooling; never called by the server).
    pub fn drop_database(&self) -> StoreResult<()> {
        let db = self.reads.db.clone();
        self.rt
            .block_on(db.drop().into_future())
            .map_err(|e| StoreError::Failed(describe(&e)))
    }
}

impl Backend for MongoStore {
    fn user(&self, uid: &UserId) -> StoreResult<Option<super::User>> {
        self.reads.user(uid)
    }
    fn users(&self, uids: &[UserId]) -> StoreResult<Vec<super::User>> {
        self.reads.users(uids)
    }
    fn all_users(&self) -> StoreResult<Vec<super::User>> {
        self.reads.all_users()
    }
    fn users_matching(&self, term: Option<&str>, limit: usize) -> StoreResult<Vec<super::User>> {
        self.reads.users_matching(term, limit)
    }
    fn user_by_username(&self, username: &str) -> StoreResult<Option<super::User>> {
        self.reads.user_by_username(username)
    }
    fn user_by_email(&self, email: &str) -> StoreResult<Option<super::User>> {
        self.reads.user_by_email(email)
    }
    fn user_by_token_hash(&self, token_hash: &str, now: i64) -> StoreResult<Option<(super::User, super::LoginToken)>> {
        self.reads.user_by_token_hash(token_hash, now)
    }
    fn room(&self, rid: &RoomId) -> StoreResult<Option<super::Room>> {
        self.reads.room(rid)
    }
    fn room_by_name(&self, name: &str) -> StoreResult<Option<super::Room>> {
        self.reads.room_by_name(name)
    }
    fn subscription(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<super::Subscription>> {
        self.reads.subscription(uid, rid)
    }
    fn subscriptions_of(&self, uid: &UserId) -> StoreResult<Vec<(super::Subscription, super::Room)>> {
        self.reads.subscriptions_of(uid)
    }
    fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>> {
        self.reads.members(rid)
    }
    fn all_memberships(&self) -> StoreResult<Vec<(RoomId, UserId)>> {
        self.reads.all_memberships()
    }
    fn channels_page(&self, offset: usize, count: usize) -> StoreResult<(Vec<super::Room>, u64)> {
        self.reads.channels_page(offset, count)
    }
    fn message(&self, mid: &MessageId) -> StoreResult<Option<super::Message>> {
        self.reads.message(mid)
    }
    fn history(&self, rid: &RoomId, q: &super::HistoryQuery) -> StoreResult<(Vec<super::Message>, u64)> {
        self.reads.history(rid, q)
    }
    fn memberships_of(&self, uid: &UserId) -> StoreResult<(Vec<super::Subscription>, Mark)> {
        self.reads.memberships_of(uid)
    }
    fn messages_updated(&self, rid: &RoomId, after: i64, limit: usize) -> StoreResult<Vec<super::Message>> {
        self.reads.messages_updated(rid, after, limit)
    }
    fn deleted_messages(&self, rid: &RoomId, after: i64, limit: usize) -> StoreResult<Vec<super::Trash>> {
        self.reads.deleted_messages(rid, after, limit)
    }
    fn removed_subscriptions(&self, uid: &UserId, after: i64, limit: usize) -> StoreResult<Vec<super::Trash>> {
        self.reads.removed_subscriptions(uid, after, limit)
    }
    fn doc(&self, coll: &str, id: &str) -> StoreResult<Option<serde_json::Value>> {
        self.reads.doc(coll, id)
    }

    fn try_submit(&self, req: WriteRequest) -> Result<(), SubmitError> {
        super::offer(&self.tx, req)
    }

    fn writer_queue_len(&self) -> usize {
        self.tx.len()
    }

    fn head(&self) -> Mark {
        self.head
            .load(Ordering::Acquire)
            .max(self.feed_stats.last_mark.load(Ordering::Acquire))
    }

    fn take_feed(&self) -> Option<Box<dyn ChangeFeed>> {
        let start = self.feed_start.lock().ok()?.take()?;
        let io = DriverIo {
            db: self.reads.db.clone(),
        };
        Some(Box::new(MongoFeed::start(
            self.rt.clone(),
            io,
            start,
            self.feed_stats.clone(),
        )))
    }

    fn marks_apart_seconds(&self, newer: Mark, older: Mark) -> u64 {
        convert::mark_seconds(newer).saturating_sub(convert::mark_seconds(older))
    }

    fn status(&self) -> BackendStatus {
        let s = &self.feed_stats;
        let up = self.reach.up.load(Ordering::Acquire);
        BackendStatus {
            backend: "mongodb",
            reachable: up,
            error: if up {
                None
            } else {
                self.reach.error.lock().ok().and_then(|e| e.clone())
            },
            feed_open: s.open.load(Ordering::Acquire),
            feed_lag_ms: s.lag_ms.load(Ordering::Relaxed),
            feed_events: s.events.load(Ordering::Relaxed),
            feed_bad_events: s.bad_events.load(Ordering::Relaxed),
            feed_history_lost: s.history_lost.load(Ordering::Relaxed),
            feed_resumes: s.resumes.load(Ordering::Relaxed),
            feed_poll_age_ms: s.poll_age_ms(),
        }
    }

    fn register_instance(
        &self,
        me: Option<super::Instance>,
        every: Duration,
    ) -> Option<futures::channel::mpsc::Receiver<Vec<String>>> {
        let (tx, rx) = futures::channel::mpsc::channel(1);
        if let (Some(me), Ok(mut slot)) = (&me, self.registered.lock()) {
            *slot = Some(me.addr.clone());
        }
        self.rt
            .spawn(registry(self.reads.db.clone(), me, every, tx, self.stopping.clone()));
        Some(rx)
    }

    fn close(&self) {
        let _ = self.tx.send(WriterMsg::Stop);
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.stopping.store(true, Ordering::Release);
        let client = self.client.clone();
        let runtime = self.runtime.lock().ok().and_then(|mut r| r.take());
        if let Some(runtime) = runtime {
            // Leaves the registry at once, so other hosts stop dialling this one.
            let registered = self.registered.lock().ok().and_then(|mut r| r.take());
            if let Some(addr) = registered {
                let coll = self.reads.db.collection::<Document>(schema::INSTANCES);
                let task = runtime.spawn(async move { coll.delete_one(doc! {"_id": addr}).await });
                let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
            }
            // Lets the driver end its sessions and cursors, within a bound.
            let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await });
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::WriteOp;
    use futures::channel::oneshot;
    use mongodb::options::ServerAddress;

    #[test]
    fn the_pool_holds_a_connection_for_every_thread_that_may_wait_on_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut o = rt
            .block_on(ClientOptions::parse("mongodb://a:27017,b:27017/chatd?replicaSet=rs0").into_future())
            .unwrap();
        tune(&mut o, Duration::from_secs(10), 8);
        assert_eq!(o.max_pool_size, Some(16));
        assert_eq!(o.server_selection_timeout, Some(Duration::from_secs(10)));
        let mut o = rt
            .block_on(ClientOptions::parse("mongodb://a:27017/chatd?replicaSet=rs0&maxPoolSize=50").into_future())
            .unwrap();
        tune(&mut o, Duration::from_secs(10), 8);
        assert_eq!(o.max_pool_size, Some(50), "the operator's choice in the URL wins");
    }

    #[test]
    fn the_first_list_after_an_outage_keeps_the_peers_known_before_it() {
        let before = vec!["10.0.0.1:7000".to_owned(), "10.0.0.2:7000".to_owned()];
        let after = union(&before, vec!["10.0.0.2:7000".to_owned(), "10.0.0.3:7000".to_owned()]);
        assert_eq!(after, ["10.0.0.2:7000", "10.0.0.3:7000", "10.0.0.1:7000"]);
    }

    fn mark_read() -> WriteOp {
        WriteOp::MarkRead {
            uid: UserId::from("u1"),
            rid: RoomId::from("r1"),
        }
    }

    /// No server is needed: nothing in this test may reach one. Were the writer to try, the
    /// address below answers nothing and the report would show no fast failure.
    #[test]
    fn while_unreachable_queued_writes_fail_at_once_and_abandoned_ones_are_never_applied() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let opts = ClientOptions::builder()
            .hosts(vec![ServerAddress::Tcp {
                host: "127.0.0.1".into(),
                port: Some(9),
            }])
            .server_selection_timeout(Duration::from_secs(2))
            .build();
        let client = runtime.block_on(async { Client::with_options(opts) }).unwrap();
        let reach = Arc::new(Reachability::default());
        let writer = Writer {
            rt: runtime.handle().clone(),
            db: client.database("chatd_test"),
            client,
            host: "test".into(),
            head: Arc::new(AtomicU64::new(0)),
            reach: reach.clone(),
            session: None,
        };
        let (tx, rx) = crossbeam_channel::bounded(8);
        let (abandoned, gone) = oneshot::channel();
        drop(gone);
        tx.send(WriterMsg::Write(WriteRequest {
            op: mark_read(),
            reply: abandoned,
        }))
        .unwrap();
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let (reply, rx) = oneshot::channel();
            tx.send(WriterMsg::Write(WriteRequest { op: mark_read(), reply }))
                .unwrap();
            waiting.push(rx);
        }
        tx.send(WriterMsg::Stop).unwrap();
        let report = std::thread::spawn(move || writer.run(rx)).join().unwrap();
        assert_eq!(
            report,
            WriterReport {
                cancelled: 1,
                failed_fast: 2
            }
        );
        for rx in waiting {
            let answer = futures_lite::future::block_on(rx).unwrap();
            assert!(
                matches!(&answer, Err(StoreError::Failed(m)) if m.contains("unreachable")),
                "{answer:?}"
            );
        }
    }
}
