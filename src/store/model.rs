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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Archived rooms take no new messages.
    #[serde(default)]
    pub archived: bool,
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
    /// The room's sequence number when the user hid the room (`hideRoom`): it shows again
    /// (`open`) with the next message.
    #[serde(default)]
    pub closed_seq: u64,
    /// Threads (their first message's id) with replies this user has not read (`tunread`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunread: Vec<String>,
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

/// Rocket.Chat's message action fields, kept in [`Message::extra`] in Rocket.Chat's own shape
/// (so an imported message's reactions, pins, stars and thread counters are served and changed
/// as they were): `reactions: {":e:": {usernames}}`, `pinned`, `pinnedAt`, `pinnedBy`,
/// `starred: [{_id}]`, `tcount`, `tlm`, `replies: [uid]`, `tshow`. Dates are EJSON.
impl Message {
    fn extra_array(&self, key: &str) -> &[serde_json::Value] {
        self.extra
            .get(key)
            .and_then(serde_json::Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// The usernames that reacted with `emoji`.
    pub fn reacted(&self, emoji: &str, username: &str) -> bool {
        self.extra
            .get("reactions")
            .and_then(|r| r.get(emoji))
            .and_then(|e| e.get("usernames"))
            .and_then(serde_json::Value::as_array)
            .is_some_and(|names| names.iter().any(|n| n.as_str() == Some(username)))
    }

    /// Adds or removes `username`'s `emoji` reaction (an emoji nobody uses any more disappears,
    /// and so does an empty `reactions`).
    pub fn set_reaction(&mut self, emoji: &str, username: &str, on: bool) {
        use serde_json::{json, Value};
        let reactions = self
            .extra
            .entry("reactions")
            .or_insert_with(|| Value::Object(Default::default()));
        if !reactions.is_object() {
            *reactions = Value::Object(Default::default());
        }
        if let Value::Object(map) = reactions {
            let entry = map.entry(emoji).or_insert_with(|| json!({"usernames": []}));
            if !entry.get("usernames").is_some_and(Value::is_array) {
                *entry = json!({"usernames": []});
            }
            if let Some(Value::Array(names)) = entry.get_mut("usernames") {
                names.retain(|n| n.as_str() != Some(username));
                if on {
                    names.push(Value::from(username));
                }
                if names.is_empty() {
                    map.remove(emoji);
                }
            }
            if map.is_empty() {
                self.extra.remove("reactions");
            }
        }
    }

    pub fn pinned(&self) -> bool {
        self.extra.get("pinned") == Some(&serde_json::Value::Bool(true))
    }

    /// Pins or unpins, recording who (and when, on a pin), as Rocket.Chat does.
    pub fn set_pinned(&mut self, pinned: bool, by: &UserRef, at: i64) {
        use serde_json::json;
        self.extra.insert("pinned".into(), pinned.into());
        self.extra
            .insert("pinnedBy".into(), json!({"_id": by.id, "username": by.username}));
        if pinned {
            self.extra.insert("pinnedAt".into(), json!({ "$date": at }));
        }
    }

    pub fn starred_by(&self, uid: &UserId) -> bool {
        self.extra_array("starred")
            .iter()
            .any(|s| s.get("_id").and_then(serde_json::Value::as_str) == Some(uid.as_str()))
    }

    pub fn set_starred(&mut self, uid: &UserId, starred: bool) {
        let mut list: Vec<serde_json::Value> = self
            .extra_array("starred")
            .iter()
            .filter(|s| s.get("_id").and_then(serde_json::Value::as_str) != Some(uid.as_str()))
            .cloned()
            .collect();
        if starred {
            list.push(serde_json::json!({ "_id": uid }));
        }
        if list.is_empty() {
            self.extra.remove("starred");
        } else {
            self.extra.insert("starred".into(), list.into());
        }
    }

    /// Replies in this message's thread (0: not a thread).
    pub fn tcount(&self) -> u64 {
        self.extra
            .get("tcount")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }

    /// Time of the thread's last reply.
    pub fn tlm(&self) -> Option<i64> {
        self.extra
            .get("tlm")
            .and_then(|v| v.get("$date"))
            .and_then(serde_json::Value::as_i64)
    }

    /// The users following this thread (`replies`: its author and everyone who replied or
    /// followed it).
    pub fn followers(&self) -> Vec<UserId> {
        self.extra_array("replies")
            .iter()
            .filter_map(|v| v.as_str().map(UserId::from))
            .collect()
    }

    pub fn followed_by(&self, uid: &UserId) -> bool {
        self.extra_array("replies")
            .iter()
            .any(|v| v.as_str() == Some(uid.as_str()))
    }

    /// Adds (or removes) a follower of the thread.
    pub fn set_follower(&mut self, uid: &UserId, follow: bool) {
        let mut list: Vec<serde_json::Value> = self
            .extra_array("replies")
            .iter()
            .filter(|v| v.as_str() != Some(uid.as_str()))
            .cloned()
            .collect();
        if follow {
            list.push(uid.as_str().into());
        }
        self.extra.insert("replies".into(), list.into());
    }

    /// Counts one more reply, sent at `ts`.
    pub fn count_reply(&mut self, ts: i64) {
        let n = self.tcount() + 1;
        self.extra.insert("tcount".into(), n.into());
        self.extra.insert("tlm".into(), serde_json::json!({ "$date": ts }));
    }

    /// Counts one reply fewer (a reply was deleted).
    pub fn uncount_reply(&mut self) {
        let n = self.tcount().saturating_sub(1);
        self.extra.insert("tcount".into(), n.into());
    }

    /// A thread reply also shown in the room (`tshow`).
    pub fn tshow(&self) -> bool {
        self.extra.get("tshow") == Some(&serde_json::Value::Bool(true))
    }

    /// Whether the message mentions `uid` by name, or everyone (`@all` / `@here`) when `group`.
    pub fn mentions_user(&self, uid: &UserId, group: bool) -> bool {
        self.mentions
            .iter()
            .any(|m| m.id == *uid || (group && (m.id.as_str() == "all" || m.id.as_str() == "here")))
    }
}
