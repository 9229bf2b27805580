//! The store: one interface over the durable data (users, tokens, rooms, subscriptions,
//! messages) and its change feed, implemented by each backend.
//!
//! - [`Backend`]: what a backend implements. Its reads are synchronous and run only on store-side
//!   threads (the reader pool below, the feed thread, the CLI); its writes are requests handed
//!   to the backend's own writer, answered once durable. The chat rules that decide what a write
//!   does live once in [`crate::app::rules`]; a backend only persists and reads.
//! - [`Store`]: the handle every thread holds. On a shard every read is `async`: it is handed to
//!   a bounded pool of reader threads, so scans and decodes never run on a shard's event loop.
//! - [`ChangeFeed`]: the backend's ordered change feed, read by one feed thread per host, which
//!   hands decoded batches to the tailer shard over a bounded channel; the [`Mark`] of each
//!   change orders it against write outcomes. A feed starts at the store's head when it opens
//!   (no backend resumes from an earlier run: no session survives a restart).

pub mod embedded;
pub mod model;
pub mod mongo;
mod pool;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::SinkExt;

pub use crate::app::rules::{GENERAL_ROOM_ID, MAX_MESSAGE_CHARS};
pub use embedded::{EmbeddedStore, OpenError};
pub use model::*;

use crate::ids::{MessageId, RoomId, UserId};
use pool::ReadPool;
pub use pool::ReaderPriority;

/// Capacity of the queue in front of a backend's writer. When full, writers wait (back-pressure).
pub const WRITE_QUEUE_CAPACITY: usize = 4096;
/// Most requests applied in one transaction (one fsync).
pub const MAX_GROUP_COMMIT: usize = 512;
/// Capacity of the reader pool's queue. When full, readers wait (back-pressure).
pub const READ_QUEUE_CAPACITY: usize = 1024;
/// Most change records the feed thread decodes and hands over in one batch.
pub const FEED_BATCH: usize = 1024;
/// Decoded batches queued between the feed thread and the tailer. When full, the feed thread
/// waits (the feed is durable; nothing is lost by reading it later).
pub const FEED_QUEUE_BATCHES: usize = 8;
/// How long a writer waits before offering a request again to a full queue.
const SUBMIT_RETRY: Duration = Duration::from_micros(500);
/// How long the feed thread waits for new changes before checking whether it should stop.
const FEED_WAIT: Duration = Duration::from_millis(200);

/// Who is at fault when a store operation fails.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The request is invalid for the current data (client's fault). `code` is the Rocket.Chat
    /// error code (e.g. `error-invalid-room`), `reason` a human text safe to show the client.
    #[error("{reason} [{code}]")]
    Rejected { code: &'static str, reason: String },
    /// The store could not do it (I/O, unavailable, shutting down): the store's fault.
    #[error("store failure: {0}")]
    Failed(String),
    /// Stored data that cannot be decoded, or a broken invariant: chatd's fault.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn rejected(code: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Rejected {
            code,
            reason: reason.into(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A point in the store's commit order: every write outcome and every feed change carries one,
/// and a shard that has applied the feed up to mark `m` has seen every write whose mark is ≤ `m`.
/// (Embedded: the change-log sequence number.)
pub type Mark = u64;

/// One entry read from a feed, decoded on the feed thread (or the backend's feed task).
#[derive(Debug)]
pub struct FeedItem {
    pub mark: Mark,
    pub entry: FeedEntry,
}

#[derive(Debug)]
pub enum FeedEntry {
    Change(Arc<ChangeRecord>),
    /// A record that failed to decode keeps its slot (with the reason) so the tailer counts and
    /// logs it and moves past it.
    Undecodable(String),
    /// The feed lost changes (MongoDB: the resume point left the oplog) and goes on from now:
    /// every connected client must reconnect and reload.
    HistoryLost {
        /// Where the new feed begins, for the log (MongoDB: its first resume token).
        resumed_at: String,
    },
}

/// A backend's ordered change feed. Runs on the feed thread only.
pub trait ChangeFeed: Send {
    /// Up to `max` changes after the current position, oldest first, waiting up to `wait` for
    /// the first one. Advances the position past what it returns.
    fn next_batch(&mut self, max: usize, wait: Duration) -> StoreResult<Vec<FeedItem>>;
}

/// How a backend is doing, for `/health` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct BackendStatus {
    pub backend: &'static str,
    /// The store answers (always, for the embedded store).
    pub reachable: bool,
    /// Why it does not.
    pub error: Option<String>,
    /// The change feed is open (always, for the embedded store).
    pub feed_open: bool,
    /// Milliseconds between the last change's commit and its arrival at the tailer.
    pub feed_lag_ms: u64,
    pub feed_events: u64,
    pub feed_bad_events: u64,
    pub feed_history_lost: u64,
    pub feed_resumes: u64,
    /// Milliseconds since the open change stream last answered a poll (`None`: no stream to
    /// poll, or a backend without one). An open stream answers at least every half second.
    pub feed_poll_age_ms: Option<u64>,
}

/// Where a write's outcome goes.
pub type Reply = oneshot::Sender<StoreResult<WriteOutcome>>;

/// A write request for a backend's writer.
pub struct WriteRequest {
    pub op: WriteOp,
    pub reply: Reply,
}

/// What a backend's writer thread receives over its bounded queue.
pub(crate) enum WriterMsg {
    Write(WriteRequest),
    /// Stop after every request queued before this one.
    Stop,
}

/// Offers a request to a writer's queue without blocking.
pub(crate) fn offer(tx: &crossbeam_channel::Sender<WriterMsg>, req: WriteRequest) -> Result<(), SubmitError> {
    match tx.try_send(WriterMsg::Write(req)) {
        Ok(()) => Ok(()),
        Err(crossbeam_channel::TrySendError::Full(WriterMsg::Write(req))) => Err(SubmitError::Full(req)),
        Err(_) => Err(SubmitError::Closed),
    }
}

/// A writer's next group: blocks for one message (unless `first` is one already received), then
/// takes whatever else is queued, up to `max` writes, into `batch`. `None` once the queue is
/// closed; otherwise whether a stop was among them (the writer stops after this group).
pub(crate) fn take_group(
    rx: &crossbeam_channel::Receiver<WriterMsg>,
    first: Option<WriterMsg>,
    max: usize,
    batch: &mut Vec<WriteRequest>,
) -> Option<bool> {
    let mut next = Some(match first {
        Some(msg) => msg,
        None => rx.recv().ok()?,
    });
    let mut stop = false;
    while let Some(msg) = next.take() {
        match msg {
            WriterMsg::Write(w) => batch.push(w),
            WriterMsg::Stop => stop = true,
        }
        if batch.len() < max && !stop {
            next = rx.try_recv().ok();
        }
    }
    Some(stop)
}

/// Upper bounds for the writer's group sizes (requests per commit).
const GROUP_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Figures of the store's writer, process-wide (a process runs one store and one writer; only
/// that writer thread records, anything may read).
pub struct WriterStats {
    /// Seconds from a group's first request taken to its commit answered (durable or failed).
    pub commit_seconds: chatd_shards::Histogram,
    /// Requests per commit.
    pub group_size: chatd_shards::Histogram,
}

pub static WRITER_STATS: WriterStats = WriterStats {
    commit_seconds: chatd_shards::Histogram::new(chatd_shards::LATENCY_BOUNDS),
    group_size: chatd_shards::Histogram::new(GROUP_BOUNDS),
};

impl WriterStats {
    /// Records one commit of `requests` requests that started at `started`.
    pub(crate) fn commit(&self, started: std::time::Instant, requests: usize) {
        self.commit_seconds.observe_duration(started.elapsed());
        self.group_size.observe(requests as f64);
    }
}

/// Why a backend did not take a request.
pub enum SubmitError {
    /// Its queue is full: try again later (the request is handed back).
    Full(WriteRequest),
    /// It is shut down.
    Closed,
}

/// What every backend implements. Reads are synchronous: they run on store-side threads only.
pub trait Backend: Send + Sync + 'static {
    fn user(&self, uid: &UserId) -> StoreResult<Option<User>>;
    /// Users by id, in the order asked, skipping unknown ids.
    fn users(&self, uids: &[UserId]) -> StoreResult<Vec<User>>;
    /// Every user, in id order (operator commands; a full scan).
    fn all_users(&self) -> StoreResult<Vec<User>>;
    /// Users whose username or name contains `term` (case-insensitively; every user without
    /// one), in username order, at most `limit`.
    fn users_matching(&self, term: Option<&str>, limit: usize) -> StoreResult<Vec<User>>;
    /// By username, case-insensitively.
    fn user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    /// By any of the user's emails, case-insensitively.
    fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// The user owning an unexpired token (looked up by the token's SHA-256).
    fn user_by_token_hash(&self, token_hash: &str, now: i64) -> StoreResult<Option<(User, LoginToken)>>;
    fn room(&self, rid: &RoomId) -> StoreResult<Option<Room>>;
    /// By name, case-insensitively.
    fn room_by_name(&self, name: &str) -> StoreResult<Option<Room>>;
    fn subscription(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>>;
    /// The user's subscriptions with their rooms.
    fn subscriptions_of(&self, uid: &UserId) -> StoreResult<Vec<(Subscription, Room)>>;
    /// Member user ids of a room.
    fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>>;
    /// Every (room, member) pair, for the tailer's routing table at start.
    fn all_memberships(&self) -> StoreResult<Vec<(RoomId, UserId)>>;
    /// A page of the public channels in name order (case-insensitive, then id), and how many
    /// there are: the cost is the page's, not the number of channels.
    fn channels_page(&self, offset: usize, count: usize) -> StoreResult<(Vec<Room>, u64)>;
    fn message(&self, mid: &MessageId) -> StoreResult<Option<Message>>;
    /// A page of a room's messages, newest first, and how many matched (see [`HistoryQuery`]).
    fn history(&self, rid: &RoomId, q: &HistoryQuery) -> StoreResult<(Vec<Message>, u64)>;
    /// The user's subscriptions, and the mark this snapshot reflects.
    fn memberships_of(&self, uid: &UserId) -> StoreResult<(Vec<Subscription>, Mark)>;
    /// Messages of a room sent or changed after `after` (ms), in the order of their last
    /// change (`updated_at`), at most `limit`.
    fn messages_updated(&self, rid: &RoomId, after: i64, limit: usize) -> StoreResult<Vec<Message>>;
    /// Messages of a room deleted after `after`, oldest deletion first, at most `limit` (kept
    /// for the configured retention).
    fn deleted_messages(&self, rid: &RoomId, after: i64, limit: usize) -> StoreResult<Vec<Trash>>;
    /// Subscriptions of a user removed after `after`, oldest first, at most `limit`.
    fn removed_subscriptions(&self, uid: &UserId, after: i64, limit: usize) -> StoreResult<Vec<Trash>>;
    /// A small document (settings, push tokens).
    fn doc(&self, coll: &str, id: &str) -> StoreResult<Option<serde_json::Value>>;

    /// Hands a write to the backend's writer without blocking.
    fn try_submit(&self, req: WriteRequest) -> Result<(), SubmitError>;
    /// Requests waiting in the writer's queue.
    fn writer_queue_len(&self) -> usize;
    /// Mark of the newest durable write.
    fn head(&self) -> Mark;
    /// The change feed, positioned at the head when the store opened. Taken once (later
    /// calls: `None`).
    fn take_feed(&self) -> Option<Box<dyn ChangeFeed>>;
    /// Roughly how many seconds of writes separate two marks (health checks compare the head
    /// with what shards applied). Embedded marks count changes, not time: one change = one
    /// "second" there, so 10,000 behind reads as far behind.
    fn marks_apart_seconds(&self, newer: Mark, older: Mark) -> u64 {
        newer.saturating_sub(older) / 1000
    }
    fn status(&self) -> BackendStatus {
        BackendStatus {
            backend: "embedded",
            reachable: true,
            feed_open: true,
            ..BackendStatus::default()
        }
    }
    /// Registers this host in the shared instances registry (MongoDB backend) with a heartbeat
    /// every `every`, and reports the cluster addresses of every live host (heartbeat younger
    /// than three intervals) after each beat. `None` where hosts share no registry.
    fn register_instance(&self, _me: Option<Instance>, _every: Duration) -> Option<mpsc::Receiver<Vec<String>>> {
        None
    }
    /// Stops the writer after every queued request, and waits for it.
    fn close(&self);
}

/// One host's entry in the instances registry.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Where other hosts reach its cluster port (`INSTANCE_IP:port`): the entry's key.
    pub addr: String,
    /// Its host id in peer handshakes (this run's).
    pub host: u64,
}

/// A history read (DDP `loadHistory`/`loadMissedMessages`, REST `*.history`).
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// Messages with `ts` before this (or at it, when `inclusive`).
    pub latest: Option<i64>,
    /// Messages with `ts` after this (or at it, when `inclusive`).
    pub oldest: Option<i64>,
    pub inclusive: bool,
    pub offset: u64,
    pub limit: usize,
    /// Keep counting past `limit` to report the total (costs a longer scan).
    pub count_total: bool,
    /// Leave out thread replies not also shown in the room (`showThreadMessages=false`).
    pub skip_thread_replies: bool,
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
            skip_thread_replies: false,
        }
    }
}

/// A write request. What each does, and who may, is decided by [`crate::app::rules`].
#[derive(Debug, Clone)]
pub enum WriteOp {
    CreateUser {
        username: String,
        name: String,
        email: Option<String>,
        password_hash: String,
    },
    /// Replaces a user's password hash (e.g. an imported bcrypt hash rehashed to Argon2id on
    /// the first successful login). Only when the stored hash is still `expected`.
    SetPasswordHash {
        uid: UserId,
        expected: String,
        password_hash: String,
    },
    /// An operator's change to an account (`chatd user passwd|deactivate|activate|role`);
    /// `None` leaves a field as it is. With `revoke_tokens`, every login of the user ends.
    AdminUpdateUser {
        uid: UserId,
        password_hash: Option<String>,
        active: Option<bool>,
        roles: Option<Vec<String>>,
        revoke_tokens: bool,
    },
    CreateToken {
        token_hash: String,
        token: LoginToken,
    },
    DeleteToken {
        token_hash: String,
    },
    CreateRoom {
        t: RoomType,
        name: String,
        creator: UserId,
        members: Vec<String>,
        read_only: bool,
    },
    /// A direct conversation of the creator with the users named (one: a 1:1 room; several:
    /// a group conversation; none, or only themself: a room with oneself). An existing room
    /// with exactly these members is reused.
    CreateDirect {
        creator: UserId,
        usernames: Vec<String>,
    },
    Join {
        uid: UserId,
        rid: RoomId,
    },
    /// `trash_ttl_ms`: how long the removed subscription's record is kept for syncing clients.
    Leave {
        uid: UserId,
        rid: RoomId,
        trash_ttl_ms: i64,
    },
    SendMessage {
        uid: UserId,
        rid: RoomId,
        id: Option<MessageId>,
        msg: String,
        /// A thread reply: the id of the thread's first message (a reply's own id is taken as
        /// its thread's).
        tmid: Option<String>,
        /// A thread reply also shown in the room (`tshow`).
        tshow: bool,
    },
    /// `setReaction` / `chat.react`: `emoji` is `:name:`; `react` adds (`Some(true)`), removes
    /// (`Some(false)`) or toggles (`None`) the user's reaction.
    SetReaction {
        uid: UserId,
        mid: MessageId,
        emoji: String,
        react: Option<bool>,
    },
    /// Pins or unpins a message; a pin posts Rocket.Chat's `message_pinned` system message.
    SetPinned {
        uid: UserId,
        mid: MessageId,
        pinned: bool,
    },
    /// Stars or unstars a message for the user.
    SetStarred {
        uid: UserId,
        mid: MessageId,
        starred: bool,
    },
    /// Follows or unfollows the thread of `mid` (a reply stands for its thread).
    FollowThread {
        uid: UserId,
        mid: MessageId,
        follow: bool,
    },
    /// Marks the thread `tmid` read for the user (off their subscription's `tunread`).
    ReadThread {
        uid: UserId,
        tmid: MessageId,
    },
    /// Adds users (by username) to a room, each announced with an `au` system message;
    /// members already in it are skipped.
    AddMembers {
        uid: UserId,
        rid: RoomId,
        usernames: Vec<String>,
    },
    /// Removes a member (`ru` system message). `trash_ttl_ms` as for [`WriteOp::Leave`].
    RemoveMember {
        uid: UserId,
        rid: RoomId,
        target: UserId,
        trash_ttl_ms: i64,
    },
    /// Gives (`on`) or takes a member's room role, `owner` or `moderator`
    /// (`subscription-role-added` / `-removed` system messages).
    SetRoomRole {
        uid: UserId,
        rid: RoomId,
        target: UserId,
        role: RoomRole,
        on: bool,
    },
    /// Changes a room's settings (each `Some` one), with Rocket.Chat's system message for each.
    SaveRoomSettings {
        uid: UserId,
        rid: RoomId,
        settings: RoomSettings,
    },
    /// Shows (`openRoom`) or hides (`hideRoom`) a room in the user's room list.
    SetOpen {
        uid: UserId,
        rid: RoomId,
        open: bool,
    },
    /// `rid`, when given, must be the message's room.
    UpdateMessage {
        uid: UserId,
        mid: MessageId,
        rid: Option<RoomId>,
        msg: String,
    },
    /// `rid`, when given, must be the message's room; `trash_ttl_ms`: how long the deletion's
    /// record is kept for syncing clients.
    DeleteMessage {
        uid: UserId,
        mid: MessageId,
        rid: Option<RoomId>,
        trash_ttl_ms: i64,
    },
    MarkRead {
        uid: UserId,
        rid: RoomId,
    },
    /// Marks a room unread for its user: from message `mid` on (`unread` counts from it), or,
    /// with only `rid`, as a whole (`alert`).
    MarkUnread {
        uid: UserId,
        rid: Option<RoomId>,
        mid: Option<MessageId>,
    },
    SetStatus {
        uid: UserId,
        status: String,
        status_text: Option<String>,
    },
    /// Stores a small document (a setting, a push token). With `only_if_absent`, an existing
    /// document is kept and returned instead. With `owner`, an existing document whose `uid`
    /// is another user's is left alone (`error-not-allowed`).
    PutDoc {
        coll: &'static str,
        id: String,
        doc: serde_json::Value,
        only_if_absent: bool,
        owner: Option<UserId>,
    },
    /// Deletes a small document; with `owner`, only one whose `uid` is that user's (anything
    /// else is answered as missing).
    DeleteDoc {
        coll: &'static str,
        id: String,
        owner: Option<UserId>,
    },
}

/// A role a member holds in one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomRole {
    Owner,
    Moderator,
}

impl RoomRole {
    pub fn name(self) -> &'static str {
        match self {
            RoomRole::Owner => "owner",
            RoomRole::Moderator => "moderator",
        }
    }
}

/// Room settings to change (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomSettings {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub announcement: Option<String>,
    pub description: Option<String>,
    pub read_only: Option<bool>,
    pub archived: Option<bool>,
}

/// What a successful write returns.
#[derive(Debug, Clone)]
pub enum WriteOutput {
    Unit,
    User(Box<User>),
    /// A room, and whether this write created it (`false`: it already existed, e.g. a DM).
    Room(Box<Room>, bool),
    Message(Box<Message>),
    /// `SendMessage` re-sent by its author to the same room with an id that already exists:
    /// nothing was written; the stored message.
    Duplicate(Box<Message>),
    /// The document now stored (`PutDoc`), or whether one was deleted (`DeleteDoc`: `Null`
    /// when there was none).
    Doc(serde_json::Value),
}

/// A durable write's result and the mark at which its effects are visible in the feed.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub output: WriteOutput,
    pub mark: Mark,
}

/// The handle every thread uses. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    readers: ReadPool,
    feed_thread: Arc<FeedThread>,
    /// How long a shard waits for one read or write before giving up (`None`: forever).
    timeout: Option<Duration>,
}

#[derive(Default)]
struct FeedThread {
    stop: AtomicBool,
    handle: Mutex<Option<JoinHandle<()>>>,
}

/// The tailer's end of the feed: decoded batches, in order.
pub type FeedReceiver = mpsc::Receiver<Vec<FeedItem>>;

impl Store {
    /// Wraps a backend and starts `readers` reader threads (at the default priority).
    pub fn new(backend: Arc<dyn Backend>, readers: usize) -> StoreResult<Self> {
        Self::with_priority(backend, readers, ReaderPriority::default())
    }

    /// Wraps a backend and starts `readers` reader threads at `priority`.
    pub fn with_priority(backend: Arc<dyn Backend>, readers: usize, priority: ReaderPriority) -> StoreResult<Self> {
        let readers = ReadPool::start(backend.clone(), readers.max(1), READ_QUEUE_CAPACITY, priority)?;
        Ok(Self {
            backend,
            readers,
            feed_thread: Arc::new(FeedThread::default()),
            timeout: None,
        })
    }

    /// Bounds every read and write a shard waits for: past `timeout` the call fails with
    /// [`StoreError::Failed`] (a write may still commit later; its outcome is unknown).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The bound set by [`Store::with_timeout`].
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Runs `fut` within the store timeout (shards only: uses a glommio timer).
    async fn bounded<T>(&self, what: &str, fut: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let Some(limit) = self.timeout else {
            return fut.await;
        };
        futures_lite::future::or(fut, async {
            glommio::timer::sleep(limit).await;
            Err(StoreError::Failed(format!(
                "{what} did not finish within {} s",
                limit.as_secs_f64()
            )))
        })
        .await
    }

    /// The backend, for synchronous use on a plain thread (CLI, tests). Never on a shard.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Runs `f` on a reader thread and waits (asynchronously) for its answer. Shards only.
    pub async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> StoreResult<T> + Send + 'static,
    {
        self.bounded("a store read", self.readers.run(f)).await
    }

    /// Submits a write and waits (asynchronously) until it is durable. Shards only: while the
    /// writer's queue is full it waits on a glommio timer (back-pressure), never blocking.
    pub async fn write(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
        self.bounded(
            "a store write (its outcome is unknown)",
            self.submit(op, || glommio::timer::sleep(SUBMIT_RETRY)),
        )
        .await
    }

    /// Submits a write from a plain thread (CLI, tests), blocking until durable.
    pub fn write_blocking(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
        futures_lite::future::block_on(self.submit(op, || async { std::thread::sleep(SUBMIT_RETRY) }))
    }

    async fn submit<P: std::future::Future<Output = ()>>(
        &self,
        op: WriteOp,
        pause: impl Fn() -> P,
    ) -> StoreResult<WriteOutcome> {
        let (reply, rx) = oneshot::channel();
        let mut req = WriteRequest { op, reply };
        loop {
            match self.backend.try_submit(req) {
                Ok(()) => break,
                Err(SubmitError::Full(back)) => {
                    req = back;
                    pause().await;
                }
                Err(SubmitError::Closed) => return Err(StoreError::Failed("store is shut down".into())),
            }
        }
        rx.await
            .map_err(|_| StoreError::Failed("store writer stopped".into()))?
    }

    /// Mark of the newest durable write.
    pub fn head(&self) -> Mark {
        self.backend.head()
    }

    /// Starts the feed thread ("chatd-feed"), which reads the backend's change feed from the
    /// head now and hands decoded batches to the returned receiver. Once per store.
    pub fn start_feed(&self) -> StoreResult<FeedReceiver> {
        let mut feed = self
            .backend
            .take_feed()
            .ok_or_else(|| StoreError::Internal("the change feed was already taken".into()))?;
        let (mut tx, rx) = mpsc::channel(FEED_QUEUE_BATCHES);
        let state = self.feed_thread.clone();
        let handle = std::thread::Builder::new()
            .name("chatd-feed".into())
            .spawn(move || {
                while !state.stop.load(Ordering::Acquire) {
                    let batch = match feed.next_batch(FEED_BATCH, FEED_WAIT) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(error = %e, "reading the change feed failed; will retry");
                            std::thread::sleep(FEED_WAIT);
                            continue;
                        }
                    };
                    if batch.is_empty() {
                        continue;
                    }
                    if futures_lite::future::block_on(tx.send(batch)).is_err() {
                        break;
                    }
                }
                tracing::debug!("feed thread stopped");
            })
            .map_err(|e| StoreError::Failed(format!("cannot start the feed thread: {e}")))?;
        if let Ok(mut h) = self.feed_thread.handle.lock() {
            *h = Some(handle);
        }
        Ok(rx)
    }

    /// How the backend is doing.
    pub fn status(&self) -> BackendStatus {
        self.backend.status()
    }

    /// Requests waiting for the writer and for the readers.
    pub fn queue_depths(&self) -> (usize, usize) {
        (self.backend.writer_queue_len(), self.readers.queue_len())
    }

    /// See [`Backend::marks_apart_seconds`].
    pub fn marks_apart_seconds(&self, newer: Mark, older: Mark) -> u64 {
        self.backend.marks_apart_seconds(newer, older)
    }

    /// Stops the feed thread, the readers and the writer (in that order) and waits for them.
    pub fn close(&self) {
        self.feed_thread.stop.store(true, Ordering::Release);
        let handle = self.feed_thread.handle.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.readers.stop();
        self.backend.close();
    }

    pub async fn user(&self, uid: &UserId) -> StoreResult<Option<User>> {
        let uid = uid.clone();
        self.read(move |b| b.user(&uid)).await
    }

    pub async fn users(&self, uids: Vec<UserId>) -> StoreResult<Vec<User>> {
        self.read(move |b| b.users(&uids)).await
    }

    pub async fn users_matching(&self, term: Option<String>, limit: usize) -> StoreResult<Vec<User>> {
        self.read(move |b| b.users_matching(term.as_deref(), limit)).await
    }

    pub async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let name = username.to_owned();
        self.read(move |b| b.user_by_username(&name)).await
    }

    pub async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let email = email.to_owned();
        self.read(move |b| b.user_by_email(&email)).await
    }

    pub async fn user_by_token_hash(&self, token_hash: &str, now: i64) -> StoreResult<Option<(User, LoginToken)>> {
        let hash = token_hash.to_owned();
        self.read(move |b| b.user_by_token_hash(&hash, now)).await
    }

    pub async fn room(&self, rid: &RoomId) -> StoreResult<Option<Room>> {
        let rid = rid.clone();
        self.read(move |b| b.room(&rid)).await
    }

    pub async fn room_by_name(&self, name: &str) -> StoreResult<Option<Room>> {
        let name = name.to_owned();
        self.read(move |b| b.room_by_name(&name)).await
    }

    pub async fn subscription(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>> {
        let (uid, rid) = (uid.clone(), rid.clone());
        self.read(move |b| b.subscription(&uid, &rid)).await
    }

    pub async fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>> {
        let rid = rid.clone();
        self.read(move |b| b.members(&rid)).await
    }

    pub async fn all_memberships(&self) -> StoreResult<Vec<(RoomId, UserId)>> {
        self.read(|b| b.all_memberships()).await
    }

    pub async fn doc(&self, coll: &'static str, id: &str) -> StoreResult<Option<serde_json::Value>> {
        let id = id.to_owned();
        self.read(move |b| b.doc(coll, &id)).await
    }

    pub async fn memberships_of(&self, uid: &UserId) -> StoreResult<(Vec<Subscription>, Mark)> {
        let uid = uid.clone();
        self.read(move |b| b.memberships_of(&uid)).await
    }
}
