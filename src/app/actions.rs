//! Operations on messages beyond sending them, shared by both front doors: reactions, pins,
//! stars, threads (following, reading, listing), single messages by id, and the filtered lists
//! (pinned, starred, mentioned, search). Writes go through the chat rules; filtered lists scan a
//! room newest first on a reader thread, at most [`MAX_SCAN`] messages (older ones are not
//! searched). Runs on the caller's shard.

use crate::ids::{MessageId, RoomId};
use crate::store::{Backend, HistoryQuery, Message, Room, RoomType, StoreResult, User, WriteOp, WriteOutput};

use super::error::{AppError, AppResult};
use super::ops::Ops;

/// Most messages a filtered list reads, newest first.
pub const MAX_SCAN: usize = 50_000;
/// Messages read per step of that scan.
const SCAN_CHUNK: usize = 1_000;
/// Most matches one scan keeps (a page is cut from them).
pub const MAX_MATCHES: usize = 10_000;
/// Longest reaction name accepted (without its colons).
const MAX_EMOJI_CHARS: usize = 64;

/// Hands `f` the messages of `rid` newest first, sent after `oldest` when given, at most the
/// newest [`MAX_SCAN`], until `f` answers `false`. Store-side threads only.
pub fn walk_room(
    b: &dyn Backend,
    rid: &RoomId,
    oldest: Option<i64>,
    mut f: impl FnMut(Message) -> bool,
) -> StoreResult<()> {
    let (mut scanned, mut latest) = (0usize, None);
    while scanned < MAX_SCAN {
        let q = HistoryQuery {
            latest,
            oldest,
            inclusive: false,
            limit: SCAN_CHUNK,
            ..HistoryQuery::default()
        };
        let (chunk, _) = b.history(rid, &q)?;
        let Some(last) = chunk.last() else { break };
        latest = Some(last.ts);
        scanned += chunk.len();
        for m in chunk {
            if !f(m) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The messages of `rid` that `keep` selects, newest first, sent after `oldest` when given: at
/// most [`MAX_MATCHES`], among the newest [`MAX_SCAN`]. Store-side threads only.
pub fn scan_room(
    b: &dyn Backend,
    rid: &RoomId,
    oldest: Option<i64>,
    keep: &dyn Fn(&Message) -> bool,
) -> StoreResult<Vec<Message>> {
    let mut found = Vec::new();
    walk_room(b, rid, oldest, |m| {
        if keep(&m) {
            found.push(m);
        }
        found.len() < MAX_MATCHES
    })?;
    Ok(found)
}

/// A reaction as Rocket.Chat stores it: `:name:` (colons added or kept). Names are letters,
/// digits and `_ + - .` (Rocket.Chat's emoji names and custom emoji aliases).
pub fn reaction_name(raw: &str) -> Option<String> {
    let name: String = raw.chars().filter(|c| *c != ':').collect();
    let valid = !name.is_empty()
        && name.chars().count() <= MAX_EMOJI_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    valid.then(|| format!(":{name}:"))
}

/// Which threads a thread list asks for (`chat.getThreadsList?type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadFilter {
    All,
    Following,
    Unread,
}

impl Ops<'_> {
    /// A write that answers with a message (reactions, pins, stars, follows).
    async fn message_write(&self, method: &str, op: WriteOp) -> AppResult<Message> {
        match self.write(method, op).await?.output {
            WriteOutput::Message(m) => Ok(*m),
            _ => Err(AppError::internal("unexpected write output")),
        }
    }

    /// `setReaction` / `chat.react`.
    pub async fn react(
        &self,
        method: &str,
        user: &User,
        mid: &str,
        emoji: &str,
        react: Option<bool>,
    ) -> AppResult<Message> {
        let emoji = reaction_name(emoji)
            .ok_or_else(|| AppError::client("error-not-allowed", "Invalid emoji provided.").with_method(method))?;
        let op = WriteOp::SetReaction {
            uid: user.id.clone(),
            mid: MessageId::from(mid),
            emoji,
            react,
        };
        self.message_write(method, op).await
    }

    /// Pins (answering with the system message posted) or unpins (the message).
    pub async fn set_pinned(&self, method: &str, user: &User, mid: &str, pinned: bool) -> AppResult<Message> {
        let op = WriteOp::SetPinned {
            uid: user.id.clone(),
            mid: MessageId::from(mid),
            pinned,
        };
        self.message_write(method, op).await
    }

    pub async fn set_starred(&self, method: &str, user: &User, mid: &str, starred: bool) -> AppResult<Message> {
        let op = WriteOp::SetStarred {
            uid: user.id.clone(),
            mid: MessageId::from(mid),
            starred,
        };
        self.message_write(method, op).await
    }

    pub async fn follow_thread(&self, method: &str, user: &User, mid: &str, follow: bool) -> AppResult<Message> {
        let op = WriteOp::FollowThread {
            uid: user.id.clone(),
            mid: MessageId::from(mid),
            follow,
        };
        self.message_write(method, op).await
    }

    /// Marks a thread read for the user (nothing for a thread they cannot see).
    pub async fn read_thread(&self, method: &str, user: &User, tmid: &str) -> AppResult<()> {
        let op = WriteOp::ReadThread {
            uid: user.id.clone(),
            tmid: MessageId::from(tmid),
        };
        self.write(method, op).await?;
        Ok(())
    }

    /// A message and its room, when the user may read that room; `None` for a missing message
    /// and for one in a room they may not see (indistinguishably).
    pub async fn visible_message(&self, user: &User, mid: &str) -> AppResult<Option<(Message, Room)>> {
        let mid = MessageId::from(mid);
        let Some(message) = self.hub.store.read(move |b| b.message(&mid)).await? else {
            return Ok(None);
        };
        let room = self.room(&message.rid).await?;
        Ok(self.visible_room(user, room).await?.map(|r| (message, r)))
    }

    /// The room the user may read (of `kind`, when given), or `None` (missing or hidden).
    async fn readable_room(&self, user: &User, rid: &RoomId, kind: Option<RoomType>) -> AppResult<Option<Room>> {
        let room = self.room(rid).await?;
        Ok(self
            .visible_room(user, room)
            .await?
            .filter(|r| kind.is_none_or(|k| k == r.t)))
    }

    /// The messages of a room the user may read that `keep` selects, newest first (see
    /// [`scan_room`]). `None`: the room is missing, hidden, or not of `kind`.
    pub async fn scan(
        &self,
        method: &str,
        user: &User,
        rid: &RoomId,
        kind: Option<RoomType>,
        oldest: Option<i64>,
        keep: impl Fn(&Message) -> bool + Send + 'static,
    ) -> AppResult<Option<Vec<Message>>> {
        if self.readable_room(user, rid, kind).await?.is_none() {
            return Ok(None);
        }
        let rid = rid.clone();
        let found = self
            .hub
            .store
            .read(move |b| scan_room(b, &rid, oldest, &keep))
            .await
            .map_err(|e| AppError::from(e).with_method(method))?;
        Ok(Some(found))
    }

    /// A thread's first message and its replies, newest first. `None`: no such message, or one
    /// the user may not read.
    pub async fn thread(&self, method: &str, user: &User, tmid: &str) -> AppResult<Option<(Message, Vec<Message>)>> {
        let Some((root, _)) = self.visible_message(user, tmid).await? else {
            return Ok(None);
        };
        let id = root.id.to_string();
        let replies = self
            .scan(method, user, &root.rid, None, Some(root.ts), move |m| {
                m.tmid.as_deref() == Some(id.as_str())
            })
            .await?
            .unwrap_or_default();
        Ok(Some((root, replies)))
    }

    /// The threads of a room (first messages with replies), most recently replied first,
    /// filtered by `filter` and by `text` (case-insensitive, in the first message). `None`: the
    /// room is missing or hidden.
    pub async fn threads(
        &self,
        method: &str,
        user: &User,
        rid: &RoomId,
        filter: ThreadFilter,
        text: Option<&str>,
    ) -> AppResult<Option<Vec<Message>>> {
        let unread: Vec<String> = match filter {
            ThreadFilter::Unread => self
                .hub
                .store
                .subscription(&user.id, rid)
                .await?
                .map(|s| s.tunread)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let uid = user.id.clone();
        let text = text.map(str::to_lowercase).filter(|t| !t.is_empty());
        let found = self
            .scan(method, user, rid, None, None, move |m| {
                m.tcount() > 0
                    && match filter {
                        ThreadFilter::All => true,
                        ThreadFilter::Following => m.followed_by(&uid),
                        ThreadFilter::Unread => unread.iter().any(|t| t == m.id.as_str()),
                    }
                    && text.as_ref().is_none_or(|t| m.msg.to_lowercase().contains(t.as_str()))
            })
            .await?;
        Ok(found.map(|mut list| {
            list.sort_by_key(|m| std::cmp::Reverse(m.tlm().unwrap_or(m.ts)));
            list
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_are_named_as_rocket_chat_stores_them() {
        assert_eq!(reaction_name("smile").as_deref(), Some(":smile:"));
        assert_eq!(reaction_name(":+1:").as_deref(), Some(":+1:"));
        assert_eq!(reaction_name(":flag_us:").as_deref(), Some(":flag_us:"));
        assert_eq!(reaction_name("::"), None);
        assert_eq!(reaction_name("<script>"), None);
        assert_eq!(reaction_name(&"a".repeat(65)), None);
    }
}
