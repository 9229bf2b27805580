//! The store: one interface over the durable data (users, tokens, rooms, subscriptions,
//! messages) and the change log. Writes go to the single writer thread through a bounded
//! crossbeam channel and are answered only after their group commit is durable; reads run on
//! the calling thread (any shard) in their own read transaction.
//!
//! The embedded backend (redb) lives in `embedded.rs`.

mod embedded;
pub mod model;

use std::sync::Arc;

pub use embedded::{CommitFeed, EmbeddedStore, HistoryQuery, OpenError, GENERAL_ROOM_ID, MAX_MESSAGE_CHARS};
pub use model::*;

use crate::ids::{MessageId, RoomId, UserId};

/// Capacity of the queue in front of the writer thread. When full, writers wait (back-pressure).
pub const WRITE_QUEUE_CAPACITY: usize = 4096;
/// Most requests applied in one transaction (one fsync).
pub const MAX_GROUP_COMMIT: usize = 512;

/// Who is at fault when a store operation fails.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The request is invalid for the current data (client's fault). `code` is the Rocket.Chat
    /// error code (e.g. `error-invalid-room`), `reason` a human text.
    #[error("{reason} [{code}]")]
    Rejected { code: &'static str, reason: String },
    /// The store failed (I/O, corruption, shutting down). Clients see a generic error.
    #[error("store failure: {0}")]
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

/// A write request for the writer thread.
#[derive(Debug, Clone)]
pub enum WriteOp {
    CreateUser {
        username: String,
        name: String,
        email: Option<String>,
        password_hash: String,
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
    CreateDirect {
        creator: UserId,
        other_username: String,
    },
    Join {
        uid: UserId,
        rid: RoomId,
    },
    Leave {
        uid: UserId,
        rid: RoomId,
    },
    SendMessage {
        uid: UserId,
        rid: RoomId,
        id: Option<MessageId>,
        msg: String,
        tmid: Option<String>,
    },
    UpdateMessage {
        uid: UserId,
        mid: MessageId,
        msg: String,
    },
    DeleteMessage {
        uid: UserId,
        mid: MessageId,
    },
    MarkRead {
        uid: UserId,
        rid: RoomId,
    },
    SetStatus {
        uid: UserId,
        status: String,
        status_text: Option<String>,
    },
}

/// What a successful write returns.
#[derive(Debug, Clone)]
pub enum WriteOutput {
    Unit,
    User(Box<User>),
    /// A room, and whether this write created it (`false`: it already existed, e.g. a DM).
    Room(Box<Room>, bool),
    Message(Box<Message>),
    /// `SendMessage` with an id that already exists: nothing was written.
    Duplicate(Box<Message>),
}

/// A durable write's result and the change-log position at which its effects are visible.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub output: WriteOutput,
    /// Change-log head after this write's transaction (its own last change, or the head then).
    pub seq: u64,
}

/// The handle every thread uses. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<EmbeddedStore>,
}

impl Store {
    pub fn new(inner: Arc<EmbeddedStore>) -> Self {
        Self { inner }
    }

    /// Submits a write and waits until it is durable.
    pub async fn write(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
        self.inner.submit(op).await
    }

    pub fn backend(&self) -> &EmbeddedStore {
        &self.inner
    }
}

impl std::ops::Deref for Store {
    type Target = EmbeddedStore;
    fn deref(&self) -> &EmbeddedStore {
        &self.inner
    }
}
