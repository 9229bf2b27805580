//! Stored records and change-log records. Plain data shared by the store thread, the tailer and
//! every shard (changes travel as `Arc<ChangeRecord>`).

use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, RoomId, UserId};

/// The short user reference embedded in messages, rooms and subscriptions (`u`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: UserId,
    pub username: String,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub name: String,
    pub email: Option<String>,
    /// PHC string (Argon2id), or a bcrypt hash of the sha-256 digest for imported accounts.
    pub password_hash: String,
    pub created_at: i64,
    /// The status the user chose (persisted): online, away, busy, offline.
    pub status: String,
    pub status_text: String,
    pub roles: Vec<String>,
    /// Deactivated users cannot log in (Rocket.Chat's `active: false`).
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl User {
    pub fn user_ref(&self) -> UserRef {
        UserRef {
            id: self.id.clone(),
            username: self.username.clone(),
            name: self.name.clone(),
        }
    }
}

/// A login (resume) token. Only its SHA-256 is stored, as the key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginToken {
    pub uid: UserId,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomType {
    #[serde(rename = "c")]
    Channel,
    #[serde(rename = "p")]
    Private,
    #[serde(rename = "d")]
    Direct,
}

impl RoomType {
    pub fn code(self) -> &'static str {
        match self {
            RoomType::Channel => "c",
            RoomType::Private => "p",
            RoomType::Direct => "d",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Room {
    pub id: RoomId,
    pub t: RoomType,
    /// Absent on direct rooms.
    pub name: Option<String>,
    pub fname: Option<String>,
    /// Creator (absent on direct rooms).
    pub creator: Option<UserRef>,
    pub ts: i64,
    pub updated_at: i64,
    /// Number of visible messages.
    pub msgs: u64,
    pub users_count: u64,
    /// Sequence number of the last message (monotonic; basis of O(1) unread counts).
    pub last_seq: u64,
    /// Time of the last message.
    pub lm: Option<i64>,
    pub last_message: Option<Message>,
    pub read_only: bool,
    /// Direct rooms: participants.
    pub uids: Vec<UserId>,
    pub usernames: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub rid: RoomId,
    pub u: UserRef,
    pub t: RoomType,
    /// Room name, or the other user's username for DMs.
    pub name: String,
    pub fname: String,
    pub open: bool,
    pub ts: i64,
    /// Last seen (read) time.
    pub ls: i64,
    /// Room sequence number read up to; `unread = room.last_seq - read_seq`.
    pub read_seq: u64,
    pub updated_at: i64,
    pub roles: Vec<String>,
    /// Messages mentioning this user by name since they last read the room.
    #[serde(default)]
    pub user_mentions: u64,
    /// Messages mentioning `@all` / `@here` since they last read the room.
    #[serde(default)]
    pub group_mentions: u64,
    /// Marked unread by the user (`subscriptions.unread`) until they read the room again.
    #[serde(default)]
    pub alert: bool,
}

/// What a deletion leaves behind for clients that cached the deleted thing: `chat.syncMessages`
/// reports deleted messages, `subscriptions.get` / `rooms.get` removed subscriptions. Kept until
/// `expires_at` (the configured retention).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trash {
    pub kind: TrashKind,
    /// The message's or the subscription's id.
    pub id: String,
    pub rid: RoomId,
    /// A subscription's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<UserId>,
    pub deleted_at: i64,
    pub expires_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrashKind {
    Message,
    Subscription,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub rid: RoomId,
    pub msg: String,
    pub ts: i64,
    pub u: UserRef,
    pub updated_at: i64,
    /// Position in the room (1-based, monotonic).
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_by: Option<UserRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserRef>,
    /// Fields chatd keeps without interpreting them (imported `reactions`, `attachments`, …),
    /// served as they were. Dates inside are EJSON `{"$date": ms}`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One entry of the change log, written in the same transaction as the data it describes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub seq: u64,
    pub change: Change,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Change {
    /// A new message, with the room as updated by it (last message, counters).
    MessageCreated {
        message: Message,
        room: Room,
    },
    MessageUpdated {
        message: Message,
        room: Room,
    },
    MessageDeleted {
        rid: RoomId,
        mid: MessageId,
        room: Room,
    },
    /// A user gained a subscription (joined, was added, created the room).
    MemberAdded {
        room: Room,
        subscription: Subscription,
    },
    /// A user lost a subscription.
    MemberRemoved {
        room: Room,
        uid: UserId,
        subscription_id: String,
    },
    /// A subscription changed for its user only (read marks).
    SubscriptionUpdated {
        subscription: Subscription,
        room: Room,
        /// After a read: every member has read the room up to this time (`messagesRead`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_until: Option<i64>,
    },
    /// A user's chosen status changed.
    UserStatusChanged {
        user: UserRef,
        status: String,
        status_text: String,
    },
}

impl Change {
    /// The room this change is about, if any.
    pub fn room_id(&self) -> Option<&RoomId> {
        match self {
            Change::MessageCreated { room, .. }
            | Change::MessageUpdated { room, .. }
            | Change::MessageDeleted { room, .. }
            | Change::MemberAdded { room, .. }
            | Change::MemberRemoved { room, .. } => Some(&room.id),
            Change::SubscriptionUpdated { .. } | Change::UserStatusChanged { .. } => None,
        }
    }

    /// The user this change is specifically about, if any.
    pub fn user_id(&self) -> Option<&UserId> {
        match self {
            Change::MemberAdded { subscription, .. } => Some(&subscription.u.id),
            Change::MemberRemoved { uid, .. } => Some(uid),
            Change::SubscriptionUpdated { subscription, .. } => Some(&subscription.u.id),
            Change::UserStatusChanged { user, .. } => Some(&user.id),
            _ => None,
        }
    }
}
