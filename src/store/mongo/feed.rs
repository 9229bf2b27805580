//! The MongoDB change feed: one change stream per host over chatd's database, followed by a
//! tokio task on the store's runtime ([`follow`]) that decodes each event and hands it to the
//! feed thread over a bounded channel (when full, the task waits: the backlog stays in MongoDB's
//! oplog, not in memory).
//!
//! The following logic is a state machine over [`StreamIo`] (the driver, or a script in tests):
//! - every error drops the stream and re-opens it after a jittered exponential back-off, resuming
//!   after the last event's token (or after an invalidate with `startAfter`), forever, logging
//!   once per change of state;
//! - a lost history (the resume point left the oplog: codes 286, 280, 260, 136) re-opens from
//!   now and hands the shards a [`FeedEntry::HistoryLost`] (they tell clients to reconnect and
//!   reload); counted, never retried in a loop;
//! - an event that does not decode is counted, logged with its id, handed on as
//!   [`FeedEntry::Undecodable`] and passed: never a crash, never a silent drop.
//!
//! Driver futures are always awaited to completion (`next_if_any`, bounded by the stream's
//! `maxAwaitTimeMS`): dropping one midway can leave the driver's stream in a state that panics.
//! The resume token is persisted per host in a file in the data directory ([`TokenFile`]) after
//! the tailer has handed a change to the shards, so a restart neither skips nor repeats.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{self, doc, Bson, Document, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::Database;
use rand::Rng;
use tokio::sync::mpsc;

use super::convert::{from_doc, mark_of, position_of_token, token_of_position};
use super::schema::{ALL, CHANGES};
use crate::ids::now_ms;
use crate::store::{ChangeFeed, ChangeRecord, FeedEntry, FeedItem, FeedPosition, Mark, StoreError, StoreResult};

/// First pause after a failure; doubled per failure up to [`BACKOFF_MAX`], with jitter.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest a `getMore` waits for new events (`maxAwaitTimeMS`).
pub const MAX_AWAIT: Duration = Duration::from_millis(500);
/// Decoded events queued between the tailer task and the feed thread. When full, the task
/// waits (the changes stay in the oplog).
pub const QUEUE_EVENTS: usize = 4096;

/// Server error codes meaning the stream cannot resume where it was: the history it needs is
/// gone (ChangeStreamHistoryLost 286, CappedPositionLost 136), the token is unusable
/// (InvalidResumeToken 260), or the server refuses to go on (ChangeStreamFatalError 280).
pub const HISTORY_LOST_CODES: [i32; 4] = [286, 136, 260, 280];

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// From whatever is newest when it opens.
    Now,
    /// At (and after) a cluster time.
    At(Timestamp),
    /// Just after the event whose resume token this is.
    After(Bson),
    /// Just after an invalidate event (only `startAfter` may follow one).
    AfterInvalidate(Bson),
}

/// A failed stream operation, reduced to what the state machine decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub code: Option<i32>,
    pub message: String,
}

impl Fault {
    pub fn from_driver(e: &mongodb::error::Error) -> Self {
        Self {
            code: super::error_code(e),
            message: super::describe(e),
        }
    }

    pub fn history_lost(&self) -> bool {
        self.code.is_some_and(|c| HISTORY_LOST_CODES.contains(&c))
    }
}

/// What the state machine needs from a change stream.
pub trait StreamIo: Send {
    type Stream: Send;
    fn open(&mut self, start: &Start) -> impl Future<Output = Result<Self::Stream, Fault>> + Send;
    /// At most one round trip: the next event, or `None` when the server had nothing new.
    fn next(&mut self, stream: &mut Self::Stream) -> impl Future<Output = Result<Option<Document>, Fault>> + Send;
    fn pause(&mut self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// The feed's figures, shared with the store's status (metrics, `/health`).
#[derive(Default, Debug)]
pub struct FeedStats {
    /// A stream is open and answering.
    pub open: AtomicBool,
    pub events: AtomicU64,
    pub bad_events: AtomicU64,
    pub history_lost: AtomicU64,
    /// Re-opens after an error.
    pub resumes: AtomicU64,
    /// Milliseconds between the last event's write and its arrival here.
    pub lag_ms: AtomicU64,
    /// Mark of the newest event seen (moves the store's head).
    pub last_mark: AtomicU64,
}

/// What one change event means to chatd.
#[derive(Debug)]
pub enum Decoded {
    Change(Box<ChangeRecord>),
    /// The stream ends; re-open after it.
    Invalidate,
    /// An event chatd does not act on (a dropped or renamed collection: logged).
    Ignored(String),
    /// An event that should carry a change but does not decode.
    Bad(String),
}

/// One event, decoded from its documented shape: `_id` (resume token), `operationType`,
/// `clusterTime`, `wallTime` (6.0+), `ns`, `documentKey`, `fullDocument`.
#[derive(Debug)]
pub struct Event {
    pub token: Option<Bson>,
    pub cluster_time: Option<Timestamp>,
    pub wall_ms: Option<i64>,
    pub decoded: Decoded,
}

pub fn decode_event(ev: &Document) -> Event {
    let token = ev.get("_id").cloned();
    let cluster_time = ev.get_timestamp("clusterTime").ok();
    let wall_ms = ev.get_datetime("wallTime").ok().map(|d| d.timestamp_millis());
    let op = ev.get_str("operationType").unwrap_or("");
    let coll = ev
        .get_document("ns")
        .ok()
        .and_then(|ns| ns.get_str("coll").ok())
        .unwrap_or("");
    let decoded = match (op, token.is_some()) {
        (_, false) => Decoded::Bad("the event has no resume token (_id)".into()),
        ("invalidate", _) => Decoded::Invalidate,
        ("insert", _) if coll == CHANGES => match ev.get_document("fullDocument") {
            Ok(full) => match full.get_document("record") {
                Ok(record) => match from_doc::<ChangeRecord>(record) {
                    Ok(mut rec) => {
                        rec.seq = cluster_time.map_or(0, mark_of);
                        Decoded::Change(Box::new(rec))
                    }
                    Err(e) => Decoded::Bad(e.to_string()),
                },
                Err(_) => Decoded::Bad("the change document has no record".into()),
            },
            Err(_) => Decoded::Bad("an insert event without fullDocument".into()),
        },
        (other, _) => Decoded::Ignored(format!("{other} on {coll:?}")),
    };
    Event {
        token,
        cluster_time,
        wall_ms,
        decoded,
    }
}

/// The stream's `$match`: inserts into the change log, and the events that end or break a
/// stream over chatd's collections (so they are seen and logged).
pub fn pipeline() -> Vec<Document> {
    vec![doc! {"$match": {"$or": [
        {"operationType": "insert", "ns.coll": CHANGES},
        {"operationType": {"$in": ["invalidate", "dropDatabase"]}},
        {"operationType": {"$in": ["drop", "rename"]}, "ns.coll": {"$in": ALL.to_vec()}},
    ]}}]
}

/// Jittered exponential back-off.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next pause: the current step, less up to half of it at random.
    pub fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter = rand::thread_rng().gen_range(0.0..0.5);
        base.mul_f64(1.0 - jitter)
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// The state machine: follows the stream from `start`, handing items to `out`, until `out` is
/// closed. Never returns on a stream error: it re-opens.
pub async fn follow<I: StreamIo>(mut io: I, mut start: Start, out: mpsc::Sender<FeedItem>, stats: Arc<FeedStats>) {
    let mut backoff = Backoff::default();
    let mut failing: Option<Option<i32>> = None;
    let mut last_mark: Mark = 0;
    while !out.is_closed() {
        let fault = match io.open(&start).await {
            Ok(mut stream) => {
                stats.open.store(true, Ordering::Release);
                if failing.take().is_some() {
                    tracing::info!("change stream open again");
                }
                match pump(
                    &mut io,
                    &mut stream,
                    &mut start,
                    &out,
                    &stats,
                    &mut backoff,
                    &mut last_mark,
                )
                .await
                {
                    Pumped::Closed => return,
                    Pumped::Invalidated => continue,
                    Pumped::Failed(f) => f,
                }
            }
            Err(f) => f,
        };
        stats.open.store(false, Ordering::Release);
        if fault.history_lost() {
            stats.history_lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                code = fault.code,
                error = %fault.message,
                "change stream history lost: changes were missed; starting from now and telling clients to reload"
            );
            start = Start::Now;
            let item = FeedItem {
                mark: last_mark,
                position: FeedPosition(Vec::new()),
                entry: FeedEntry::HistoryLost,
            };
            if out.send(item).await.is_err() {
                return;
            }
        } else {
            stats.resumes.fetch_add(1, Ordering::Relaxed);
            if failing != Some(fault.code) {
                tracing::warn!(code = fault.code, error = %fault.message, "change stream failed; resuming with back-off");
            }
            failing = Some(fault.code);
        }
        io.pause(backoff.step()).await;
    }
}

enum Pumped {
    Closed,
    Invalidated,
    Failed(Fault),
}

async fn pump<I: StreamIo>(
    io: &mut I,
    stream: &mut I::Stream,
    start: &mut Start,
    out: &mpsc::Sender<FeedItem>,
    stats: &FeedStats,
    backoff: &mut Backoff,
    last_mark: &mut Mark,
) -> Pumped {
    loop {
        if out.is_closed() {
            return Pumped::Closed;
        }
        let ev = match io.next(stream).await {
            Ok(Some(ev)) => ev,
            Ok(None) => continue,
            Err(f) => return Pumped::Failed(f),
        };
        backoff.reset();
        let ev = decode_event(&ev);
        if let Some(ts) = ev.cluster_time {
            *last_mark = (*last_mark).max(mark_of(ts));
            stats.last_mark.fetch_max(*last_mark, Ordering::AcqRel);
        }
        let written_ms = ev.wall_ms.or_else(|| ev.cluster_time.map(|t| i64::from(t.time) * 1000));
        if let Some(at) = written_ms {
            stats
                .lag_ms
                .store(now_ms().saturating_sub(at).max(0) as u64, Ordering::Relaxed);
        }
        let position = match &ev.token {
            Some(t) => {
                *start = Start::After(t.clone());
                position_of_token(t).unwrap_or(FeedPosition(Vec::new()))
            }
            None => FeedPosition(Vec::new()),
        };
        let entry = match ev.decoded {
            Decoded::Change(rec) => {
                stats.events.fetch_add(1, Ordering::Relaxed);
                FeedEntry::Change(Arc::new(*rec))
            }
            Decoded::Bad(reason) => {
                stats.bad_events.fetch_add(1, Ordering::Relaxed);
                tracing::error!(token = ?ev.token, error = %reason, "change event failed to decode; skipped");
                FeedEntry::Undecodable(reason)
            }
            Decoded::Ignored(what) => {
                tracing::warn!(event = %what, "change event on chatd's collections ignored");
                continue;
            }
            Decoded::Invalidate => {
                tracing::warn!("change stream invalidated (database dropped?); opening a new one after it");
                if let Some(t) = ev.token {
                    *start = Start::AfterInvalidate(t);
                }
                return Pumped::Invalidated;
            }
        };
        let item = FeedItem {
            mark: *last_mark,
            position,
            entry,
        };
        if out.send(item).await.is_err() {
            return Pumped::Closed;
        }
    }
}

/// The driver behind [`StreamIo`]: `db.watch()` with chatd's pipeline, events as raw documents
/// (decoded by [`decode_event`], so a bad document never fails the stream).
pub struct DriverIo {
    pub db: Database,
}

/// A resume token as the driver's type (it only deserializes from raw BSON).
fn resume_token(token: &Bson) -> Result<ResumeToken, Fault> {
    #[derive(serde::Deserialize)]
    struct Holder {
        t: ResumeToken,
    }
    // An unusable token is treated as the server treats one (InvalidResumeToken): start anew.
    let unusable = |e: String| Fault {
        code: Some(260),
        message: format!("unusable resume token: {e}"),
    };
    let bytes = bson::to_vec(&doc! {"t": token.clone()}).map_err(|e| unusable(e.to_string()))?;
    bson::from_slice::<Holder>(&bytes)
        .map(|h| h.t)
        .map_err(|e| unusable(e.to_string()))
}

impl StreamIo for DriverIo {
    type Stream = ChangeStream<Document>;

    async fn open(&mut self, start: &Start) -> Result<Self::Stream, Fault> {
        let watch = self
            .db
            .watch()
            .pipeline(pipeline())
            .max_await_time(MAX_AWAIT)
            .batch_size(crate::store::FEED_BATCH as u32);
        let watch = match start {
            Start::Now => watch,
            Start::At(ts) => watch.start_at_operation_time(*ts),
            Start::After(t) => watch.resume_after(resume_token(t)?),
            Start::AfterInvalidate(t) => watch.start_after(resume_token(t)?),
        };
        watch
            .await
            .map(|s| s.with_type::<Document>())
            .map_err(|e| Fault::from_driver(&e))
    }

    async fn next(&mut self, stream: &mut Self::Stream) -> Result<Option<Document>, Fault> {
        stream.next_if_any().await.map_err(|e| Fault::from_driver(&e))
    }

    async fn pause(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// The per-host file holding the last delivered resume token, with the database it belongs to
/// (a token of another database is ignored). Replaced atomically (write, fsync, rename).
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    database: String,
}

impl TokenFile {
    pub fn new(dir: &Path, database: &str) -> Self {
        Self {
            path: dir.join("mongodb-feed-position"),
            database: database.to_owned(),
        }
    }

    /// The saved token, if there is one for this database.
    pub fn load(&self) -> Option<Bson> {
        let bytes = std::fs::read(&self.path).ok()?;
        let doc: Document = match bson::from_slice(&bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "feed position file unreadable; starting from now");
                return None;
            }
        };
        if doc.get_str("database").ok() != Some(self.database.as_str()) {
            tracing::warn!(path = %self.path.display(), "feed position belongs to another database; starting from now");
            return None;
        }
        doc.get("token").cloned()
    }

    /// Saves `position` (an empty one removes the file: start from now next time).
    pub fn save(&self, position: &FeedPosition) -> StoreResult<()> {
        let fail = |e: std::io::Error| StoreError::Failed(format!("saving the feed position: {e}"));
        let Some(token) = token_of_position(position) else {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
                _ => Ok(()),
            };
        };
        let doc = doc! {"database": self.database.as_str(), "token": token, "saved_at": now_ms()};
        let bytes = bson::to_vec(&doc).map_err(|e| StoreError::Internal(format!("encoding the feed position: {e}")))?;
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(fail)?;
            f.write_all(&bytes).map_err(fail)?;
            f.sync_all().map_err(fail)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(fail)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// The feed thread's end: items from the [`follow`] task, and the token file.
pub struct MongoFeed {
    rt: tokio::runtime::Handle,
    rx: mpsc::Receiver<FeedItem>,
    file: TokenFile,
    last_saved: Option<FeedPosition>,
}

impl MongoFeed {
    /// Starts the [`follow`] task on `rt` from `start`.
    pub fn start(
        rt: tokio::runtime::Handle,
        io: impl StreamIo + 'static,
        start: Start,
        file: TokenFile,
        stats: Arc<FeedStats>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_EVENTS);
        rt.spawn(follow(io, start, tx, stats));
        Self {
            rt,
            rx,
            file,
            last_saved: None,
        }
    }
}

impl ChangeFeed for MongoFeed {
    fn next_batch(&mut self, max: usize, wait: Duration) -> StoreResult<Vec<FeedItem>> {
        let first = self
            .rt
            .block_on(async { tokio::time::timeout(wait, self.rx.recv()).await });
        let mut out = match first {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => return Err(StoreError::Failed("the change stream task stopped".into())),
            Ok(Some(item)) => vec![item],
        };
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(item) => out.push(item),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    fn persist(&mut self, position: &FeedPosition) -> StoreResult<()> {
        if self.last_saved.as_ref() == Some(position) {
            return Ok(());
        }
        self.file.save(position)?;
        self.last_saved = Some(position.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::DateTime;

    use super::*;
    use crate::ids::UserId;
    use crate::store::mongo::convert::to_doc;
    use crate::store::{Change, UserRef};

    fn record(status: &str) -> Document {
        to_doc(&ChangeRecord {
            seq: 0,
            change: Change::UserStatusChanged {
                user: UserRef {
                    id: UserId::from("u1"),
                    username: "ann".into(),
                    name: "Ann".into(),
                },
                status: status.into(),
                status_text: String::new(),
            },
        })
        .unwrap()
    }

    fn token(name: &str) -> Bson {
        Bson::Document(doc! {"_data": name})
    }

    /// An insert into the change log, shaped as the manual documents insert events.
    fn insert(tok: &str, secs: u32, record: Document) -> Document {
        let id = ObjectId::new();
        doc! {
            "_id": token(tok),
            "operationType": "insert",
            "clusterTime": Timestamp { time: secs, increment: 1 },
            "wallTime": DateTime::from_millis(i64::from(secs) * 1000),
            "ns": {"db": "chatd", "coll": CHANGES},
            "documentKey": {"_id": id},
            "fullDocument": {"_id": id, "at": DateTime::from_millis(0), "host": "h1", "record": record},
        }
    }

    #[test]
    fn every_event_kind_decodes_from_its_documented_shape() {
        let ev = decode_event(&insert("a1", 100, record("away")));
        assert_eq!(ev.token, Some(token("a1")));
        assert_eq!(ev.wall_ms, Some(100_000));
        match ev.decoded {
            Decoded::Change(rec) => {
                assert_eq!(
                    rec.seq,
                    mark_of(Timestamp {
                        time: 100,
                        increment: 1
                    }),
                    "seq is the cluster time"
                );
                assert!(matches!(&rec.change, Change::UserStatusChanged { status, .. } if status == "away"));
            }
            other => panic!("{other:?}"),
        }
        // A change document that is not one of chatd's records.
        let ev = decode_event(&insert("a2", 100, doc! {"change": {"Nope": 1}}));
        assert!(matches!(ev.decoded, Decoded::Bad(_)), "{:?}", ev.decoded);
        let mut no_full = insert("a3", 100, record("online"));
        no_full.remove("fullDocument");
        assert!(matches!(decode_event(&no_full).decoded, Decoded::Bad(_)));
        let mut no_token = insert("a4", 100, record("online"));
        no_token.remove("_id");
        assert!(matches!(decode_event(&no_token).decoded, Decoded::Bad(_)));
        // The stream-ending and collection-level events.
        let invalidate =
            doc! {"_id": token("i"), "operationType": "invalidate", "clusterTime": Timestamp { time: 5, increment: 0 }};
        assert!(matches!(decode_event(&invalidate).decoded, Decoded::Invalidate));
        for op in [
            doc! {"_id": token("d"), "operationType": "drop", "ns": {"db": "chatd", "coll": CHANGES}},
            doc! {"_id": token("r"), "operationType": "rename", "ns": {"db": "chatd", "coll": CHANGES}, "to": {"db": "chatd", "coll": "x"}},
            doc! {"_id": token("dd"), "operationType": "dropDatabase", "ns": {"db": "chatd"}},
            doc! {"_id": token("u"), "operationType": "update", "ns": {"db": "chatd", "coll": CHANGES}, "documentKey": {"_id": 1}, "updateDescription": {"updatedFields": {"x": 1}, "removedFields": []}},
            doc! {"_id": token("n"), "operationType": "createIndexes", "ns": {"db": "chatd", "coll": CHANGES}},
        ] {
            assert!(matches!(decode_event(&op).decoded, Decoded::Ignored(_)), "{op}");
        }
    }

    enum Step {
        Open(Result<(), Fault>),
        Next(Result<Option<Document>, Fault>),
    }

    #[derive(Default)]
    struct Log {
        opens: Vec<Start>,
        pauses: Vec<Duration>,
    }

    /// A change stream that follows a script, recording how it was opened and paused.
    struct Script {
        steps: VecDeque<Step>,
        log: Arc<Mutex<Log>>,
    }

    impl StreamIo for Script {
        type Stream = ();

        async fn open(&mut self, start: &Start) -> Result<(), Fault> {
            self.log.lock().unwrap().opens.push(start.clone());
            match self.steps.pop_front() {
                Some(Step::Open(r)) => r,
                Some(Step::Next(_)) => panic!("the script expected a poll, not an open"),
                // Out of script: the stream stays open and quiet.
                None => Ok(()),
            }
        }

        async fn next(&mut self, _: &mut ()) -> Result<Option<Document>, Fault> {
            match self.steps.pop_front() {
                Some(Step::Next(r)) => r,
                Some(Step::Open(_)) => panic!("the script expected an open, not a poll"),
                None => {
                    tokio::task::yield_now().await;
                    Ok(None)
                }
            }
        }

        async fn pause(&mut self, d: Duration) {
            self.log.lock().unwrap().pauses.push(d);
        }
    }

    fn fault(code: Option<i32>) -> Fault {
        Fault {
            code,
            message: format!("scripted failure {code:?}"),
        }
    }

    /// Runs the state machine over `steps` from `start` until it has handed over `items`
    /// entries; returns them, the log and the stats.
    fn drive(start: Start, steps: Vec<Step>, items: usize) -> (Vec<FeedItem>, Log, Arc<FeedStats>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let stats = Arc::new(FeedStats::default());
        let io = Script {
            steps: steps.into(),
            log: log.clone(),
        };
        let got = rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(QUEUE_EVENTS);
            let task = tokio::spawn(follow(io, start, tx, stats.clone()));
            let mut got = Vec::new();
            while got.len() < items {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some(item)) => got.push(item),
                    other => panic!("the feed stopped early: {other:?}"),
                }
            }
            drop(rx);
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("follow ends once its receiver is gone")
                .unwrap();
            got
        });
        let log = std::mem::take(&mut *log.lock().unwrap());
        (got, log, stats)
    }

    fn status_of(item: &FeedItem) -> &str {
        match &item.entry {
            FeedEntry::Change(rec) => match &rec.change {
                Change::UserStatusChanged { status, .. } => status,
                _ => "other change",
            },
            FeedEntry::Undecodable(_) => "undecodable",
            FeedEntry::HistoryLost => "history lost",
        }
    }

    #[test]
    fn resumable_errors_resume_after_the_last_event_with_growing_jittered_pauses() {
        let t0 = Timestamp { time: 1, increment: 0 };
        let (items, log, stats) = drive(
            Start::At(t0),
            vec![
                Step::Open(Ok(())),
                Step::Next(Ok(Some(insert("t1", 10, record("away"))))),
                Step::Next(Ok(None)),
                // A network error on getMore, then the server is still being elected.
                Step::Next(Err(fault(None))),
                Step::Open(Err(fault(Some(10107)))),
                Step::Open(Err(fault(Some(216)))),
                Step::Open(Ok(())),
                Step::Next(Ok(Some(insert("t2", 11, record("busy"))))),
            ],
            2,
        );
        assert_eq!(items.iter().map(status_of).collect::<Vec<_>>(), ["away", "busy"]);
        assert_eq!(
            log.opens,
            [
                Start::At(t0),
                Start::After(token("t1")),
                Start::After(token("t1")),
                Start::After(token("t1"))
            ]
        );
        assert_eq!(stats.resumes.load(Ordering::Relaxed), 3);
        assert_eq!(log.pauses.len(), 3);
        // 100 ms, 200 ms, 400 ms steps, each less up to half at random.
        for (pause, step_ms) in log.pauses.iter().zip([100u64, 200, 400]) {
            let step = Duration::from_millis(step_ms);
            assert!(*pause <= step && *pause >= step / 2, "{pause:?} for a {step:?} step");
        }
        // The positions handed on are the events' tokens; marks follow cluster times.
        assert_eq!(token_of_position(&items[1].position), Some(token("t2")));
        assert!(items[0].mark < items[1].mark);
        assert_eq!(stats.events.load(Ordering::Relaxed), 2);
        assert!(stats.open.load(Ordering::Relaxed));
    }

    #[test]
    fn lost_history_restarts_from_now_once_and_tells_the_shards() {
        // At start, the saved token has left the oplog.
        let (items, log, stats) = drive(
            Start::After(token("old")),
            vec![
                Step::Open(Err(fault(Some(286)))),
                Step::Open(Ok(())),
                Step::Next(Ok(Some(insert("n1", 50, record("online"))))),
                // While running: the stream fell behind the oplog.
                Step::Next(Err(fault(Some(286)))),
                Step::Open(Ok(())),
                Step::Next(Ok(Some(insert("n2", 60, record("away"))))),
            ],
            4,
        );
        assert_eq!(
            items.iter().map(status_of).collect::<Vec<_>>(),
            ["history lost", "online", "history lost", "away"]
        );
        assert_eq!(log.opens, [Start::After(token("old")), Start::Now, Start::Now]);
        assert_eq!(stats.history_lost.load(Ordering::Relaxed), 2);
        assert_eq!(stats.resumes.load(Ordering::Relaxed), 0);
        // Nothing to resume from after a loss: the saved position is cleared.
        assert!(items[0].position.0.is_empty());
    }

    #[test]
    fn a_bad_event_is_counted_handed_on_and_passed() {
        let (items, log, stats) = drive(
            Start::Now,
            vec![
                Step::Open(Ok(())),
                Step::Next(Ok(Some(insert("b1", 7, doc! {"change": 5})))),
                Step::Next(Ok(Some(insert("b2", 8, record("away"))))),
                Step::Next(Err(fault(Some(91)))),
                Step::Open(Ok(())),
                Step::Next(Ok(Some(insert("b3", 9, record("busy"))))),
            ],
            3,
        );
        assert_eq!(
            items.iter().map(status_of).collect::<Vec<_>>(),
            ["undecodable", "away", "busy"]
        );
        assert_eq!(stats.bad_events.load(Ordering::Relaxed), 1);
        assert_eq!(log.opens, [Start::Now, Start::After(token("b2"))]);
    }

    #[test]
    fn an_invalidate_reopens_with_start_after_its_token() {
        let (items, log, _) = drive(
            Start::Now,
            vec![
                Step::Open(Ok(())),
                Step::Next(Ok(Some(doc! {"_id": token("inv"), "operationType": "invalidate"}))),
                Step::Open(Ok(())),
                Step::Next(Ok(Some(insert("c1", 3, record("online"))))),
            ],
            1,
        );
        assert_eq!(status_of(&items[0]), "online");
        assert_eq!(log.opens, [Start::Now, Start::AfterInvalidate(token("inv"))]);
        assert!(log.pauses.is_empty(), "an invalidate is not a failure");
    }

    #[test]
    fn saved_tokens_become_the_drivers_resume_tokens() {
        let t = resume_token(&token("8263A1B2C3000000012B0229296E04")).unwrap();
        assert_eq!(bson::to_bson(&t).unwrap(), token("8263A1B2C3000000012B0229296E04"));
    }

    #[test]
    fn backoff_is_capped_and_reset() {
        let mut b = Backoff::default();
        let pauses: Vec<Duration> = (0..20).map(|_| b.step()).collect();
        assert!(pauses.iter().all(|p| *p <= BACKOFF_MAX));
        assert!(pauses[19] >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.step() <= BACKOFF_MIN);
    }

    #[test]
    fn the_token_file_round_trips_and_ignores_what_is_not_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path(), "chatd");
        assert_eq!(file.load(), None);
        file.save(&position_of_token(&token("p1")).unwrap()).unwrap();
        assert_eq!(file.load(), Some(token("p1")));
        file.save(&position_of_token(&token("p2")).unwrap()).unwrap();
        assert_eq!(file.load(), Some(token("p2")));
        // Another database's token is not resumed from.
        assert_eq!(TokenFile::new(dir.path(), "other").load(), None);
        // An empty position (after lost history) clears it.
        file.save(&FeedPosition(Vec::new())).unwrap();
        assert_eq!(file.load(), None);
        // A damaged file reads as nothing.
        std::fs::write(dir.path().join("mongodb-feed-position"), b"garbage").unwrap();
        assert_eq!(file.load(), None);
    }
}
