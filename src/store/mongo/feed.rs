//! The MongoDB change feed: one change stream per host over chatd's database, followed by a
//! tokio task on the store's runtime ([`follow`]) that decodes each event and hands it to the
//! feed thread over a bounded channel (when full, the task waits: the backlog stays in MongoDB's
//! oplog, not in memory).
//!
//! The following logic is a state machine over [`StreamIo`] (the driver, or a script in tests):
//! - after every poll, empty ones included, the resume point becomes the stream's own resume
//!   token: the last event's, or the post-batch token the server sends with an empty batch (the
//!   oplog position it has scanned to), so a resume never rescans what was already passed;
//! - every error drops the stream and re-opens it after a jittered exponential back-off from
//!   that point (after an invalidate, with `startAfter`), forever, logging once per change of
//!   state; a cursor the driver reports closed is re-opened the same way;
//! - a lost history (the resume point left the oplog: codes 286, 280, 260, 136) and an event too
//!   large to read (10334) re-open from now; once the new stream is open, the shards get a
//!   [`FeedEntry::HistoryLost`] (they reload their routing and tell clients to reconnect and
//!   reload), so nothing committed between the reload and the new stream is missed;
//! - an event that does not decode (even as BSON) is counted, logged with its token, handed on as
//!   [`FeedEntry::Undecodable`] and passed: the driver's token is already past it.
//!
//! Driver futures are always awaited to completion (`next_if_any`, bounded by the stream's
//! `maxAwaitTimeMS`): dropping one midway can leave the driver's stream in a state that panics.
//! Each completed poll is timed ([`FeedStats::last_poll_ms`]), so a `getMore` hung on a dead
//! connection shows in `/health` within seconds instead of going unnoticed.
//!
//! A host starts its stream at the cluster time its store opened, never at a position saved by
//! an earlier run: no session survives a restart, and replaying old changes would show them to
//! clients that connected after it as new.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{self, doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::Database;
use rand::Rng;
use tokio::sync::mpsc;

use super::convert::{from_doc, mark_of};
use super::schema::{ALL, CHANGES};
use crate::ids::now_ms;
use crate::store::{ChangeFeed, ChangeRecord, FeedEntry, FeedItem, Mark, StoreError, StoreResult};

/// An open stream answers at least every [`MAX_AWAIT`]; this long without a completed poll
/// means it hangs (a `getMore` on a dead connection): `/health` reports it.
pub const POLL_STALE: Duration = Duration::from_secs(10);

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
/// BSONObjectTooLarge: an event over 16 MB cannot be returned, and resuming before it fails the
/// same way forever; the feed goes on from now, as after a lost history. (chatd bounds its own
/// change documents well below this: only a foreign writer can cause it.)
pub const EVENT_TOO_LARGE: i32 = 10334;

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

    /// The stream cannot go on from where it is: it restarts from now.
    pub fn history_lost(&self) -> bool {
        self.code
            .is_some_and(|c| HISTORY_LOST_CODES.contains(&c) || c == EVENT_TOO_LARGE)
    }
}

/// One event as read: a document, or why its bytes are not one.
pub type RawEvent = Result<Document, String>;

/// What the state machine needs from a change stream.
pub trait StreamIo: Send {
    type Stream: Send;
    fn open(&mut self, start: &Start) -> impl Future<Output = Result<Self::Stream, Fault>> + Send;
    /// At most one round trip: the next event, or `None` when the server had nothing new.
    fn next(&mut self, stream: &mut Self::Stream) -> impl Future<Output = Result<Option<RawEvent>, Fault>> + Send;
    /// Where the stream stands: the last event's token, or the post-batch token of the last
    /// (possibly empty) batch; `None` before the server has sent one.
    fn token(&self, stream: &Self::Stream) -> Option<Bson>;
    /// Whether the cursor can still return events (a closed one answers `None` forever).
    fn alive(&self, stream: &Self::Stream) -> bool;
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
    /// Wall-clock milliseconds when a poll (or an open) last completed.
    pub last_poll_ms: AtomicU64,
}

impl FeedStats {
    fn polled(&self) {
        self.last_poll_ms
            .store(u64::try_from(now_ms()).unwrap_or(0), Ordering::Relaxed);
    }

    /// Milliseconds since the open stream last answered (`None` while no stream is open).
    pub fn poll_age_ms(&self) -> Option<u64> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        Some(u64::try_from(now_ms()).unwrap_or(0).saturating_sub(last))
    }
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
                        if full.get_bool("last_is_message").unwrap_or(false) {
                            super::schema::restore_last_message(&mut rec);
                        }
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
    // A lost history waiting to be announced once the new stream is open.
    let mut lost = false;
    while !out.is_closed() {
        let fault = match io.open(&start).await {
            Ok(mut stream) => {
                stats.polled();
                stats.open.store(true, Ordering::Release);
                if failing.take().is_some() {
                    tracing::info!("change stream open again");
                }
                if let Some(t) = io.token(&stream) {
                    start = Start::After(t);
                }
                if std::mem::take(&mut lost) {
                    // The new stream holds every change from here on: now the shards may
                    // reload what they route by.
                    let item = FeedItem {
                        mark: last_mark,
                        entry: FeedEntry::HistoryLost {
                            resumed_at: io.token(&stream).map_or_else(|| "now".into(), |t| token_text(&t)),
                        },
                    };
                    if out.send(item).await.is_err() {
                        return;
                    }
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
                "change stream cannot resume: changes were missed; starting from now and telling clients to reload"
            );
            start = Start::Now;
            lost = true;
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
        let polled = io.next(stream).await;
        stats.polled();
        let ev = match polled {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                // An empty batch still moves the resume point (its post-batch token).
                if let Some(t) = io.token(stream) {
                    *start = Start::After(t);
                }
                if !io.alive(stream) {
                    return Pumped::Failed(Fault {
                        code: None,
                        message: "the change stream's cursor was closed".into(),
                    });
                }
                continue;
            }
            Err(f) => return Pumped::Failed(f),
        };
        backoff.reset();
        let ev = match ev {
            Ok(doc) => decode_event(&doc),
            // Not even BSON: the driver's token is already past it.
            Err(reason) => Event {
                token: io.token(stream),
                cluster_time: None,
                wall_ms: None,
                decoded: Decoded::Bad(reason),
            },
        };
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
        if let Some(t) = &ev.token {
            *start = Start::After(t.clone());
        }
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
            entry,
        };
        if out.send(item).await.is_err() {
            return Pumped::Closed;
        }
    }
}

/// A resume token as operators see it in MongoDB's tools: its `_data` string.
fn token_text(token: &Bson) -> String {
    match token.as_document().and_then(|d| d.get_str("_data").ok()) {
        Some(data) => data.to_owned(),
        None => token.to_string(),
    }
}

/// The driver behind [`StreamIo`]: `db.watch()` with chatd's pipeline, events as raw BSON
/// (decoded by chatd, so a bad document never fails the stream).
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
    type Stream = ChangeStream<RawDocumentBuf>;

    async fn open(&mut self, start: &Start) -> Result<Self::Stream, Fault> {
        if matches!(start, Start::AfterInvalidate(_)) {
            // The database was dropped: its collections, indexes and GENERAL are gone.
            super::schema::ensure(&self.db)
                .await
                .map_err(|e| Fault::from_driver(&e))?;
            super::bootstrap_general(&self.db)
                .await
                .map_err(|e| Fault::from_driver(&e))?;
        }
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
            .map(|s| s.with_type::<RawDocumentBuf>())
            .map_err(|e| Fault::from_driver(&e))
    }

    async fn next(&mut self, stream: &mut Self::Stream) -> Result<Option<RawEvent>, Fault> {
        match stream.next_if_any().await {
            Ok(Some(raw)) => Ok(Some(raw.to_document().map_err(|e| e.to_string()))),
            Ok(None) => Ok(None),
            // The driver moved its token past the event before failing to read it.
            Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::BsonDeserialization(_)) => {
                Ok(Some(Err(super::describe(&e))))
            }
            Err(e) => Err(Fault::from_driver(&e)),
        }
    }

    fn token(&self, stream: &Self::Stream) -> Option<Bson> {
        stream.resume_token().and_then(|t| bson::to_bson(&t).ok())
    }

    fn alive(&self, stream: &Self::Stream) -> bool {
        stream.is_alive()
    }

    async fn pause(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// Removes the position file older versions kept in the data directory (a host no longer
/// resumes from an earlier run's position).
pub fn remove_old_position_file(dir: &std::path::Path) {
    let _ = std::fs::remove_file(dir.join("mongodb-feed-position"));
}

/// The feed thread's end: items from the [`follow`] task.
pub struct MongoFeed {
    rt: tokio::runtime::Handle,
    rx: mpsc::Receiver<FeedItem>,
}

impl MongoFeed {
    /// Starts the [`follow`] task on `rt` from `start`.
    pub fn start(rt: tokio::runtime::Handle, io: impl StreamIo + 'static, start: Start, stats: Arc<FeedStats>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_EVENTS);
        rt.spawn(follow(io, start, tx, stats));
        Self { rt, rx }
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
        /// An open; `Ok(Some(t))`: the server's first batch carried post-batch token `t`.
        Open(Result<Option<&'static str>, Fault>),
        /// A poll returning an event (its `_id` becomes the stream's token).
        Event(Document),
        /// A poll returning bytes that are not a document; the driver's token moved to `t`.
        Garbled(&'static str),
        /// An empty batch, with the post-batch token the server sent, if any.
        Empty(Option<&'static str>),
        /// An empty answer from a cursor the driver has closed.
        Closed,
        Fail(Fault),
    }

    #[derive(Default)]
    struct Log {
        opens: Vec<Start>,
        pauses: Vec<Duration>,
    }

    /// A change stream that follows a script the way the driver behaves (its cached token
    /// moves with every event and every batch's post-batch token), recording how it was
    /// opened and paused.
    struct Script {
        steps: VecDeque<Step>,
        log: Arc<Mutex<Log>>,
        token: Option<Bson>,
        alive: bool,
    }

    impl StreamIo for Script {
        type Stream = ();

        async fn open(&mut self, start: &Start) -> Result<(), Fault> {
            self.log.lock().unwrap().opens.push(start.clone());
            self.alive = true;
            self.token = None;
            match self.steps.pop_front() {
                Some(Step::Open(r)) => r.map(|t| self.token = t.map(token)),
                Some(_) => panic!("the script expected a poll, not an open"),
                // Out of script: the stream stays open and quiet.
                None => Ok(()),
            }
        }

        async fn next(&mut self, _: &mut ()) -> Result<Option<RawEvent>, Fault> {
            match self.steps.pop_front() {
                Some(Step::Event(d)) => {
                    self.token = d.get("_id").cloned();
                    Ok(Some(Ok(d)))
                }
                Some(Step::Garbled(t)) => {
                    self.token = Some(token(t));
                    Ok(Some(Err("invalid UTF-8 in a string".into())))
                }
                Some(Step::Empty(t)) => {
                    if let Some(t) = t {
                        self.token = Some(token(t));
                    }
                    Ok(None)
                }
                Some(Step::Closed) => {
                    self.alive = false;
                    Ok(None)
                }
                Some(Step::Fail(f)) => Err(f),
                Some(Step::Open(_)) => panic!("the script expected an open, not a poll"),
                None => {
                    tokio::task::yield_now().await;
                    Ok(None)
                }
            }
        }

        fn token(&self, _: &()) -> Option<Bson> {
            self.token.clone()
        }

        fn alive(&self, _: &()) -> bool {
            self.alive
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
            token: None,
            alive: true,
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
            FeedEntry::HistoryLost { .. } => "history lost",
        }
    }

    #[test]
    fn resumable_errors_resume_after_the_last_event_with_growing_jittered_pauses() {
        let t0 = Timestamp { time: 1, increment: 0 };
        let (items, log, stats) = drive(
            Start::At(t0),
            vec![
                Step::Open(Ok(None)),
                Step::Event(insert("t1", 10, record("away"))),
                // An empty batch from a server that sends no post-batch token.
                Step::Empty(None),
                // A network error on getMore, then the server is still being elected.
                Step::Fail(fault(None)),
                Step::Open(Err(fault(Some(10107)))),
                Step::Open(Err(fault(Some(216)))),
                Step::Open(Ok(None)),
                Step::Event(insert("t2", 11, record("busy"))),
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
        // Marks follow cluster times.
        assert!(items[0].mark < items[1].mark);
        assert_eq!(stats.events.load(Ordering::Relaxed), 2);
        assert!(stats.open.load(Ordering::Relaxed));
        assert!(stats.poll_age_ms().is_some_and(|age| age < 10_000));
    }

    #[test]
    fn empty_batches_move_the_resume_point_to_their_post_batch_token() {
        let t0 = Timestamp { time: 1, increment: 0 };
        let (items, log, _) = drive(
            Start::At(t0),
            vec![
                // The first batch's post-batch token is already past `t0`.
                Step::Open(Ok(Some("pb0"))),
                Step::Fail(fault(None)),
                Step::Open(Ok(None)),
                Step::Event(insert("e1", 10, record("away"))),
                // A quiet spell: the server scanned on (other hosts' heartbeats, TTL deletes).
                Step::Empty(Some("pb1")),
                Step::Empty(Some("pb2")),
                Step::Fail(fault(Some(6))),
                Step::Open(Ok(None)),
                Step::Event(insert("e2", 20, record("busy"))),
            ],
            2,
        );
        assert_eq!(items.iter().map(status_of).collect::<Vec<_>>(), ["away", "busy"]);
        assert_eq!(
            log.opens,
            [Start::At(t0), Start::After(token("pb0")), Start::After(token("pb2"))],
            "a resume starts where the server had scanned to, not at the last chat event"
        );
    }

    #[test]
    fn a_closed_cursor_is_reopened_not_polled_forever() {
        let (items, log, stats) = drive(
            Start::Now,
            vec![
                Step::Open(Ok(Some("o1"))),
                Step::Closed,
                Step::Open(Ok(None)),
                Step::Event(insert("k1", 5, record("online"))),
            ],
            1,
        );
        assert_eq!(status_of(&items[0]), "online");
        assert_eq!(log.opens, [Start::Now, Start::After(token("o1"))]);
        assert_eq!(stats.resumes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn lost_history_restarts_from_now_and_tells_the_shards_once_the_new_stream_is_open() {
        // At start, the resume point has left the oplog.
        let (items, log, stats) = drive(
            Start::After(token("old")),
            vec![
                Step::Open(Err(fault(Some(286)))),
                Step::Open(Ok(Some("s1"))),
                Step::Event(insert("n1", 50, record("online"))),
                // While running: the stream fell behind the oplog, and the server is then
                // unreachable for a while.
                Step::Fail(fault(Some(286))),
                Step::Open(Err(fault(None))),
                Step::Open(Err(fault(None))),
                Step::Open(Ok(Some("s2"))),
                Step::Event(insert("n2", 60, record("away"))),
            ],
            4,
        );
        assert_eq!(
            items.iter().map(status_of).collect::<Vec<_>>(),
            ["history lost", "online", "history lost", "away"]
        );
        assert_eq!(
            log.opens,
            [
                Start::After(token("old")),
                Start::Now,
                Start::Now,
                Start::Now,
                Start::Now
            ]
        );
        // Each announcement carries the new stream's starting point: it was made after that
        // stream existed, so the shards' reload cannot miss a change made in between.
        let resumed_at = |i: usize| match &items[i].entry {
            FeedEntry::HistoryLost { resumed_at } => resumed_at.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(resumed_at(0), "s1");
        assert_eq!(resumed_at(2), "s2");
        assert_eq!(stats.history_lost.load(Ordering::Relaxed), 2);
        assert_eq!(stats.resumes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_event_too_large_to_read_is_skipped_by_restarting_from_now() {
        let (items, log, _) = drive(
            Start::Now,
            vec![
                Step::Open(Ok(Some("a"))),
                Step::Fail(fault(Some(EVENT_TOO_LARGE))),
                Step::Open(Ok(Some("b"))),
                Step::Event(insert("x1", 5, record("away"))),
            ],
            2,
        );
        assert_eq!(
            items.iter().map(status_of).collect::<Vec<_>>(),
            ["history lost", "away"]
        );
        assert_eq!(log.opens, [Start::Now, Start::Now]);
    }

    #[test]
    fn a_bad_event_is_counted_handed_on_and_passed() {
        let (items, log, stats) = drive(
            Start::Now,
            vec![
                Step::Open(Ok(None)),
                Step::Event(insert("b1", 7, doc! {"change": 5})),
                // Bytes that are not even a document: the driver's token is past them.
                Step::Garbled("g1"),
                Step::Event(insert("b2", 8, record("away"))),
                Step::Garbled("g2"),
                Step::Fail(fault(Some(91))),
                Step::Open(Ok(None)),
                Step::Event(insert("b3", 9, record("busy"))),
            ],
            5,
        );
        assert_eq!(
            items.iter().map(status_of).collect::<Vec<_>>(),
            ["undecodable", "undecodable", "away", "undecodable", "busy"]
        );
        assert_eq!(stats.bad_events.load(Ordering::Relaxed), 3);
        assert_eq!(
            log.opens,
            [Start::Now, Start::After(token("g2"))],
            "the reopen starts after the unreadable event, not before it"
        );
    }

    #[test]
    fn an_invalidate_reopens_with_start_after_its_token() {
        let (items, log, _) = drive(
            Start::Now,
            vec![
                Step::Open(Ok(None)),
                Step::Event(doc! {"_id": token("inv"), "operationType": "invalidate"}),
                Step::Open(Ok(None)),
                Step::Event(insert("c1", 3, record("online"))),
            ],
            1,
        );
        assert_eq!(status_of(&items[0]), "online");
        assert_eq!(log.opens, [Start::Now, Start::AfterInvalidate(token("inv"))]);
        assert!(log.pauses.is_empty(), "an invalidate is not a failure");
    }

    #[test]
    fn a_message_that_is_its_rooms_last_travels_once_and_comes_back_whole() {
        use crate::store::Message;
        let mut room = crate::app::rules::general_room(1_000);
        let message: Message = serde_json::from_value(serde_json::json!({
            "id": "m1", "rid": "GENERAL", "msg": "hello", "ts": 2_000,
            "u": {"id": "u1", "username": "ann", "name": "Ann"},
            "updated_at": 2_000, "seq": 1,
        }))
        .unwrap();
        room.last_message = Some(message.clone());
        let rec = ChangeRecord {
            seq: 0,
            change: Change::MessageCreated {
                message: message.clone(),
                room: room.clone(),
            },
        };
        let stored = crate::store::mongo::schema::change_doc(&rec, "h1", 0).unwrap();
        assert!(stored.get_bool("last_is_message").unwrap());
        let slim = bson::to_vec(&stored).unwrap().len();
        let full = bson::to_vec(&doc! {"record": to_doc(&rec).unwrap()}).unwrap().len();
        assert!(slim < full, "{slim} bytes stored against {full}");
        let mut ev = insert("l1", 9, Document::new());
        ev.insert("fullDocument", stored);
        match decode_event(&ev).decoded {
            Decoded::Change(back) => match &back.change {
                Change::MessageCreated { room: r, .. } => {
                    assert_eq!(r.last_message.as_ref().map(|m| m.msg.as_str()), Some("hello"))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // An edit of an older message keeps the room's own last message.
        let mut older = message.clone();
        older.id = crate::ids::MessageId::from("m0");
        let rec = ChangeRecord {
            seq: 0,
            change: Change::MessageUpdated { message: older, room },
        };
        let stored = crate::store::mongo::schema::change_doc(&rec, "h1", 0).unwrap();
        assert!(stored.get("last_is_message").is_none());
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
}
