//! The chat rules, once, for every backend: what each [`WriteOp`] does to the data and who may do
//! it (authorization, idempotent sends, mentions, DM ids, owners, unread sequence numbers, the
//! default room). A backend supplies a [`Txn`] — reads and writes of whole records inside one of
//! its transactions — and calls [`apply`]; it never decides anything itself.
//!
//! Secrecy rule: a user who may not see a room (a private group or DM they are not in) gets the
//! same answer as for a room or message that does not exist, from every write. Runs on a
//! backend's writer thread.

use super::permissions::{self, Permission};
use crate::ids::{direct_room_id, random_id, MessageId, RoomId, UserId};
use crate::store::{
    Change, LoginToken, Message, Room, RoomRole, RoomSettings, RoomType, StoreError, StoreResult, Subscription, Trash,
    TrashKind, User, UserRef, WriteOp, WriteOutput,
};

/// Longest message text accepted (characters).
pub const MAX_MESSAGE_CHARS: usize = 5000;
/// The default public channel every new user joins.
pub const GENERAL_ROOM_ID: &str = "GENERAL";
/// Most mentions resolved per message.
const MAX_MENTIONS: usize = 32;
/// Largest room whose read receipts (`messagesRead`: when every member has read) are worked
/// out on each read; in larger rooms that scan of every member's subscription is not made.
pub const MAX_READ_RECEIPT_MEMBERS: u64 = 32;

/// Record-level access to one backend transaction. Reads see this transaction's own writes.
pub trait Txn {
    fn user(&self, uid: &UserId) -> StoreResult<Option<User>>;
    /// Whether any user exists (the first one becomes an admin).
    fn has_users(&self) -> StoreResult<bool>;
    fn user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    fn email_taken(&self, email: &str) -> StoreResult<bool>;
    /// Stores a user with its username and email indexes.
    fn put_user(&mut self, user: &User) -> StoreResult<()>;
    fn put_token(&mut self, token_hash: &str, token: &LoginToken) -> StoreResult<()>;
    fn delete_token(&mut self, token_hash: &str) -> StoreResult<()>;
    /// Deletes every login token of `uid` (a scan: operator commands only); how many.
    fn delete_tokens_of(&mut self, uid: &UserId) -> StoreResult<u64>;
    fn room(&self, rid: &RoomId) -> StoreResult<Option<Room>>;
    /// The room with `last_message` left out (`None`) when a backend can skip reading it.
    fn room_without_last_message(&self, rid: &RoomId) -> StoreResult<Option<Room>> {
        self.room(rid)
    }
    fn room_name_taken(&self, name: &str) -> StoreResult<bool>;
    /// The direct room whose members are exactly `uids` (sorted), among those `uid` (one of
    /// them) is in.
    fn direct_room_of(&self, uid: &UserId, uids: &[UserId]) -> StoreResult<Option<Room>>;
    /// Stores a renamed room: `old` as it was read in this transaction, `room` with its new
    /// name (its name indexes move with it).
    fn put_renamed_room(&mut self, _old: &Room, room: &Room) -> StoreResult<()> {
        self.put_room(room)
    }
    /// Stores a room (with its name index, for named rooms).
    fn put_room(&mut self, room: &Room) -> StoreResult<()>;
    /// Stores a room whose name and type are unchanged since it was read in this transaction
    /// (a new message): backends may skip rewriting its indexes.
    fn update_room(&mut self, room: &Room) -> StoreResult<()> {
        self.put_room(room)
    }
    fn sub(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>>;
    /// Stores a subscription (with the room's membership index).
    fn put_sub(&mut self, sub: &Subscription) -> StoreResult<()>;
    /// Stores a subscription read in this transaction (its membership is unchanged): backends may
    /// skip rewriting the membership index.
    fn update_sub(&mut self, sub: &Subscription) -> StoreResult<()> {
        self.put_sub(sub)
    }
    fn remove_sub(&mut self, uid: &UserId, rid: &RoomId) -> StoreResult<()>;
    fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>>;
    fn message(&self, mid: &MessageId) -> StoreResult<Option<Message>>;
    fn put_message(&mut self, m: &Message) -> StoreResult<()>;
    /// Stores a changed message (`old` as it was read in this transaction): backends keep an
    /// index of changes by time for `chat.syncMessages`.
    fn replace_message(&mut self, _old: &Message, new: &Message) -> StoreResult<()> {
        self.put_message(new)
    }
    fn remove_message(&mut self, m: &Message) -> StoreResult<()>;
    /// Records a deletion for clients to sync (and drops expired records of the same room or
    /// user, where a backend keeps them itself).
    fn put_trash(&mut self, trash: &Trash) -> StoreResult<()>;
    /// A small JSON document of `coll` (settings, push tokens).
    fn doc(&self, coll: &str, id: &str) -> StoreResult<Option<serde_json::Value>>;
    fn put_doc(&mut self, coll: &str, id: &str, doc: &serde_json::Value) -> StoreResult<()>;
    fn delete_doc(&mut self, coll: &str, id: &str) -> StoreResult<()>;
    /// The newest message of a room.
    fn last_message(&self, rid: &RoomId) -> StoreResult<Option<Message>>;
    /// Appends a change to the feed in this transaction (backends whose feed is derived from
    /// their own log, like MongoDB's change streams, may record nothing).
    fn push_change(&mut self, change: Change) -> StoreResult<()>;
}

/// The room named by `rid` as `uid` may see it: a public channel, or a room they are in.
/// Anything else is answered exactly like a room that does not exist.
fn visible_room(t: &impl Txn, uid: &UserId, rid: &RoomId) -> StoreResult<(Room, Option<Subscription>)> {
    visible(t, uid, t.room(rid)?)
}

/// [`visible_room`] without the room's last message (a new message replaces it).
fn visible_room_for_message(t: &impl Txn, uid: &UserId, rid: &RoomId) -> StoreResult<(Room, Option<Subscription>)> {
    visible(t, uid, t.room_without_last_message(rid)?)
}

fn visible<T: Txn>(t: &T, uid: &UserId, room: Option<Room>) -> StoreResult<(Room, Option<Subscription>)> {
    let hidden = || StoreError::rejected("error-invalid-room", "Invalid room");
    let room = room.ok_or_else(hidden)?;
    let rid = &room.id;
    let sub = t.sub(uid, rid)?;
    if sub.is_none() && room.t != RoomType::Channel {
        return Err(hidden());
    }
    Ok((room, sub))
}

fn is_owner(sub: &Subscription) -> bool {
    sub.roles.iter().any(|r| r == "owner")
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `@username` tokens in a message text.
pub fn mentioned_usernames(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ':' | ';' | '!' | '?' | '(' | ')')) {
        if let Some(name) = word.strip_prefix('@') {
            let name = name.trim_end_matches('.');
            if !name.is_empty() && valid_name(name) && !out.contains(&name) && out.len() < MAX_MENTIONS {
                out.push(name);
            }
        }
    }
    out
}

fn existing_user(t: &impl Txn, uid: &UserId) -> StoreResult<User> {
    t.user(uid)?
        .ok_or_else(|| StoreError::rejected("error-invalid-user", "Invalid user"))
}

fn check_size(msg: &str) -> StoreResult<()> {
    if msg.chars().count() > MAX_MESSAGE_CHARS {
        return Err(StoreError::rejected(
            "error-message-size-exceeded",
            "Message size exceeds the allowed limit",
        ));
    }
    Ok(())
}

/// The GENERAL channel as a new store starts with it.
pub fn general_room(now: i64) -> Room {
    Room {
        id: RoomId::from(GENERAL_ROOM_ID),
        t: RoomType::Channel,
        name: Some("general".into()),
        fname: Some("general".into()),
        creator: None,
        ts: now,
        updated_at: now,
        msgs: 0,
        users_count: 0,
        last_seq: 0,
        lm: None,
        last_message: None,
        read_only: false,
        uids: Vec::new(),
        usernames: Vec::new(),
        topic: None,
        announcement: None,
        description: None,
        archived: false,
    }
}

fn new_subscription(
    room: &Room,
    member: &User,
    name: String,
    fname: String,
    open: bool,
    owner: bool,
    now: i64,
) -> Subscription {
    Subscription {
        id: random_id(),
        rid: room.id.clone(),
        u: member.user_ref(),
        t: room.t,
        name,
        fname,
        open,
        ts: now,
        ls: now,
        read_seq: room.last_seq,
        updated_at: now,
        roles: if owner { vec!["owner".into()] } else { Vec::new() },
        user_mentions: 0,
        group_mentions: 0,
        alert: false,
        closed_seq: 0,
        tunread: Vec::new(),
    }
}

/// Adds `user` to `room` (caller checked it is not a member), updating the room in place.
fn add_member(t: &mut impl Txn, room: &mut Room, user: &User, owner: bool, now: i64) -> StoreResult<Subscription> {
    let name = room.name.clone().unwrap_or_default();
    let fname = room.fname.clone().unwrap_or_else(|| name.clone());
    let sub = new_subscription(room, user, name, fname, true, owner, now);
    t.put_sub(&sub)?;
    room.users_count += 1;
    room.updated_at = now;
    Ok(sub)
}

/// Adds one member to `room` (caller checked they are not one), stores the room and announces
/// the new subscription.
fn join_member(t: &mut impl Txn, room: &mut Room, user: &User, now: i64) -> StoreResult<()> {
    let sub = add_member(t, room, user, false, now)?;
    t.put_room(room)?;
    t.push_change(Change::MemberAdded {
        room: room.clone(),
        subscription: sub,
    })
}

/// One `MemberAdded` change per new subscription of `room`.
fn announce_members(t: &mut impl Txn, room: &Room, subs: Vec<Subscription>) -> StoreResult<()> {
    for sub in subs {
        t.push_change(Change::MemberAdded {
            room: room.clone(),
            subscription: sub,
        })?;
    }
    Ok(())
}

/// A message `uid` may edit (`delete: false`) or delete, with its room. Rocket.Chat's rule:
/// `edit-message` / `delete-message` (admins, the room's owners and moderators) allow it on any
/// message; otherwise only the author may, and deleting also needs `delete-own-message`. A
/// message in a room the user cannot see, or not in `rid` when given, does not exist for them.
fn changeable_message(
    t: &impl Txn,
    uid: &UserId,
    mid: &MessageId,
    rid: Option<&RoomId>,
    delete: bool,
) -> StoreResult<(Message, Room)> {
    let not_found = || {
        StoreError::rejected(
            "error-invalid-message",
            format!("No message found with the id of \"{mid}\"."),
        )
    };
    let message = t.message(mid)?.ok_or_else(not_found)?;
    if rid.is_some_and(|r| *r != message.rid) {
        return Err(not_found());
    }
    let (room, sub) = visible_room(t, uid, &message.rid).map_err(|_| not_found())?;
    let user = existing_user(t, uid)?;
    let room_roles = sub.as_ref().map(|s| s.roles.as_slice()).unwrap_or_default();
    let roles = || user.roles.iter().chain(room_roles);
    let any = if delete {
        Permission::DeleteMessage
    } else {
        Permission::EditMessage
    };
    let own = message.u.id == *uid
        && sub.is_some()
        && (!delete || permissions::allows(Permission::DeleteOwnMessage, roles()));
    if !(own || permissions::allows(any, roles())) {
        return Err(StoreError::rejected("error-action-not-allowed", "Not allowed"));
    }
    Ok((message, room))
}

/// Refuses unless the user's global roles grant `p` (`error-not-allowed`, as Rocket.Chat).
fn require(user: &User, p: Permission) -> StoreResult<()> {
    if permissions::allows(p, &user.roles) {
        Ok(())
    } else {
        Err(StoreError::rejected("error-not-allowed", "Not allowed"))
    }
}

/// The time up to which every member of `room` has read it, when the room is small enough to
/// look (see [`MAX_READ_RECEIPT_MEMBERS`]); `reader` is the subscription just read.
fn read_by_everyone(t: &impl Txn, room: &Room, reader: &Subscription) -> StoreResult<Option<i64>> {
    if room.users_count > MAX_READ_RECEIPT_MEMBERS {
        return Ok(None);
    }
    let mut until = reader.ls;
    for member in t.members(&room.id)? {
        if member == reader.u.id {
            continue;
        }
        if let Some(s) = t.sub(&member, &room.id)? {
            if s.read_seq < room.last_seq {
                until = until.min(s.ls);
            }
        }
    }
    Ok(Some(until))
}

/// The first message of the thread `tmid` names (a reply stands for its thread), which must be
/// in room `rid`.
fn thread_root(t: &impl Txn, tmid: &MessageId, rid: &RoomId) -> StoreResult<Message> {
    let invalid = || StoreError::rejected("error-invalid-message", "Invalid thread message");
    let mut root = t.message(tmid)?.ok_or_else(invalid)?;
    if let Some(up) = root.tmid.clone() {
        root = t.message(&MessageId::from(up.as_str()))?.ok_or_else(invalid)?;
    }
    if root.rid != *rid {
        return Err(invalid());
    }
    Ok(root)
}

/// The users a text mentions: `@username` of existing users, and `@all` / `@here` when the
/// sender `may` (`mention-all` / `mention-here`) (otherwise they are plain words).
fn resolve_mentions(t: &impl Txn, text: &str, may: impl Fn(Permission) -> bool) -> StoreResult<Vec<UserRef>> {
    let mut mentions = Vec::new();
    for name in mentioned_usernames(text) {
        let group = match name {
            "all" => Some(Permission::MentionAll),
            "here" => Some(Permission::MentionHere),
            _ => None,
        };
        match group {
            Some(p) if may(p) => mentions.push(UserRef {
                id: UserId::from(name),
                username: name.to_owned(),
                name: name.to_owned(),
            }),
            Some(_) => {}
            None => {
                if let Some(u) = t.user_by_username(name)? {
                    mentions.push(u.user_ref());
                }
            }
        }
    }
    Ok(mentions)
}

/// Most quoted messages one message carries.
const MAX_QUOTES: usize = 5;

/// The message ids a text links to as the apps quote and reply: permalinks
/// (`<server>/<channel|group|direct>/<name>?msg=<id>`) anywhere in it, at most [`MAX_QUOTES`].
pub fn quoted_ids(text: &str) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '<' | '>' | '[' | ']')) {
        if !(word.starts_with("http://") || word.starts_with("https://")) {
            continue;
        }
        let Some((_, query)) = word.split_once('?') else {
            continue;
        };
        for pair in query.split('&') {
            if let Some(id) = pair.strip_prefix("msg=") {
                let valid = !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
                if valid && !out.iter().any(|(_, i)| *i == id) && out.len() < MAX_QUOTES {
                    out.push((word, id));
                }
            }
        }
    }
    out
}

/// Rocket.Chat's quote attachments for the permalinks in `text` that name messages `uid` may
/// see (others are left as plain links): the quoted text, its author and time, and the link.
fn quote_attachments(t: &impl Txn, uid: &UserId, text: &str) -> StoreResult<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for (link, id) in quoted_ids(text) {
        let Some(quoted) = t.message(&MessageId::from(id))? else {
            continue;
        };
        if visible_room(t, uid, &quoted.rid).is_err() {
            continue;
        }
        out.push(serde_json::json!({
            "text": quoted.msg,
            "message_link": link,
            "author_name": quoted.u.username,
            "author_icon": format!("/avatar/{}", quoted.u.username),
            "attachments": [],
            "ts": {"$date": quoted.ts},
        }));
    }
    Ok(out)
}

/// Stores a new message as the newest of `room` (its `seq` assigned here), updates the room's
/// counters and announces it.
fn insert_message(t: &mut impl Txn, room: &mut Room, message: &mut Message) -> StoreResult<()> {
    message.seq = room.last_seq + 1;
    t.put_message(message)?;
    room.last_seq = message.seq;
    room.msgs += 1;
    room.lm = Some(message.ts);
    room.updated_at = message.ts;
    room.last_message = Some(message.clone());
    t.update_room(room)?;
    t.push_change(Change::MessageCreated {
        message: message.clone(),
        room: room.clone(),
    })
}

/// A system message of type `kind` by `user` in `room`, sent now (after the room's last one).
fn system_message(room: &Room, user: &User, kind: &str, msg: String, now: i64) -> Message {
    let ts = now.max(room.lm.map_or(0, |lm| lm + 1));
    Message {
        id: MessageId(random_id()),
        rid: room.id.clone(),
        msg,
        ts,
        u: user.user_ref(),
        updated_at: ts,
        seq: 0,
        t: Some(kind.to_owned()),
        tmid: None,
        edited_at: None,
        edited_by: None,
        mentions: Vec::new(),
        extra: Default::default(),
    }
}

/// Counts a new message's mentions on the members' subscriptions: `userMentions` of each
/// member named (at most `MAX_MENTIONS` writes), `groupMentions` of every other member for
/// `@all` / `@here` (one write per member, as Rocket.Chat's group mention costs).
fn count_mentions(t: &mut impl Txn, room: &Room, message: &Message) -> StoreResult<()> {
    let group = message
        .mentions
        .iter()
        .any(|m| m.id.as_str() == "all" || m.id.as_str() == "here");
    if group {
        for member in t.members(&room.id)? {
            if member == message.u.id {
                continue;
            }
            if let Some(mut theirs) = t.sub(&member, &room.id)? {
                if message.mentions.iter().any(|m| m.id == member) {
                    theirs.user_mentions += 1;
                } else {
                    theirs.group_mentions += 1;
                }
                t.update_sub(&theirs)?;
            }
        }
        return Ok(());
    }
    for m in &message.mentions {
        if m.id == message.u.id {
            continue;
        }
        if let Some(mut theirs) = t.sub(&m.id, &room.id)? {
            theirs.user_mentions += 1;
            t.update_sub(&theirs)?;
        }
    }
    Ok(())
}

/// A reply counted on its thread's first message (`tcount`, `tlm`, the replier and the
/// thread's author following it), re-sent to the room; every other follower who is a member
/// gets the thread in their `tunread`.
fn count_thread_reply(t: &mut impl Txn, room: &Room, root: Message, reply: &Message) -> StoreResult<()> {
    let mut changed = root.clone();
    changed.count_reply(reply.ts);
    if !changed.followed_by(&root.u.id) {
        changed.set_follower(&root.u.id, true);
    }
    if !changed.followed_by(&reply.u.id) {
        changed.set_follower(&reply.u.id, true);
    }
    let tmid = root.id.to_string();
    for follower in changed.followers() {
        if follower == reply.u.id {
            continue;
        }
        if let Some(mut sub) = t.sub(&follower, &room.id)? {
            if !sub.tunread.contains(&tmid) {
                sub.tunread.push(tmid.clone());
                sub.updated_at = reply.ts;
                save_sub(t, sub, room.clone())?;
            }
        }
    }
    save_changed_message(t, room.clone(), &root, changed, reply.ts)?;
    Ok(())
}

/// Stores a subscription changed for its user only and announces it (`subscriptions-changed`).
fn save_sub(t: &mut impl Txn, sub: Subscription, room: Room) -> StoreResult<()> {
    t.update_sub(&sub)?;
    t.push_change(Change::SubscriptionUpdated {
        subscription: sub,
        room,
        read_until: None,
    })
}

/// Takes `tmid` off a subscription's unread threads; whether it was there.
fn drop_thread_unread(sub: &mut Subscription, tmid: &str) -> bool {
    let before = sub.tunread.len();
    sub.tunread.retain(|t| t != tmid);
    sub.tunread.len() != before
}

/// Stores `changed` in place of `old` (a reaction, pin, star or thread counter), with its
/// `_updatedAt` moved past every earlier change so `chat.syncMessages` reports it, and re-sends
/// it to the room.
fn save_changed_message(
    t: &mut impl Txn,
    mut room: Room,
    old: &Message,
    mut changed: Message,
    now: i64,
) -> StoreResult<WriteOutput> {
    changed.updated_at = now.max(old.updated_at + 1).max(room.lm.unwrap_or(0) + 1);
    t.replace_message(old, &changed)?;
    if room.last_message.as_ref().is_some_and(|m| m.id == changed.id) {
        room.last_message = Some(changed.clone());
        t.put_room(&room)?;
    }
    t.push_change(Change::MessageUpdated {
        message: changed.clone(),
        room,
    })?;
    Ok(WriteOutput::Message(Box::new(changed)))
}

/// Most members of a direct conversation, its creator included (Rocket.Chat's
/// `DirectMesssage_maxUsers` default).
pub const MAX_DIRECT_MEMBERS: usize = 8;

/// Most users one `AddMembers` adds.
pub const MAX_INVITES: usize = 100;

/// Posts a system message of type `kind` by `user` in `room` (re-read without its last
/// message, so counters are current).
fn post_system(
    t: &mut impl Txn,
    room: &mut Room,
    user: &User,
    kind: &str,
    msg: String,
    now: i64,
) -> StoreResult<Message> {
    post_notice(t, room, system_message(room, user, kind, msg, now))
}

/// Posts a system message made by [`system_message`] (its author is the one who acted).
fn post_notice(t: &mut impl Txn, room: &mut Room, mut notice: Message) -> StoreResult<Message> {
    insert_message(t, room, &mut notice)?;
    // Like their own messages, what a member did is not unread for them.
    if let Some(mut sub) = t.sub(&notice.u.id, &room.id)? {
        sub.read_seq = notice.seq;
        sub.ls = notice.ts;
        t.update_sub(&sub)?;
    }
    Ok(notice)
}

/// A room `uid` manages with permission `p` (their global roles with their roles in the
/// room): the room, their subscription (if a member) and their user. A room they cannot see
/// is a missing one; a direct room has no settings or members to manage.
fn managed_room(
    t: &impl Txn,
    uid: &UserId,
    rid: &RoomId,
    p: Permission,
) -> StoreResult<(Room, Option<Subscription>, User)> {
    let (room, sub) = visible_room(t, uid, rid)?;
    let user = existing_user(t, uid)?;
    let room_roles = sub.as_ref().map(|s| s.roles.as_slice()).unwrap_or_default();
    if room.t == RoomType::Direct || !permissions::allows(p, user.roles.iter().chain(room_roles)) {
        return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
    }
    Ok((room, sub, user))
}

/// A member's subscription, or Rocket.Chat's "not in this room".
fn member_sub(t: &impl Txn, target: &UserId, rid: &RoomId) -> StoreResult<Subscription> {
    t.sub(target, rid)?
        .ok_or_else(|| StoreError::rejected("error-user-not-in-room", "User is not in this room"))
}

/// Whether someone other than `except` owns `rid`.
fn has_other_owner(t: &impl Txn, rid: &RoomId, except: &UserId) -> StoreResult<bool> {
    for member in t.members(rid)? {
        if member != *except && t.sub(&member, rid)?.is_some_and(|s| is_owner(&s)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes `uid`'s subscription to `room` (recording it for syncing clients) and announces it.
fn drop_member(t: &mut impl Txn, room: &mut Room, sub: Subscription, now: i64, trash_ttl_ms: i64) -> StoreResult<()> {
    let uid = sub.u.id.clone();
    t.remove_sub(&uid, &room.id)?;
    t.put_trash(&Trash {
        kind: TrashKind::Subscription,
        id: sub.id.clone(),
        rid: room.id.clone(),
        uid: Some(uid.clone()),
        deleted_at: now,
        expires_at: now.saturating_add(trash_ttl_ms),
    })?;
    room.users_count = room.users_count.saturating_sub(1);
    room.updated_at = now;
    t.put_room(room)?;
    t.push_change(Change::MemberRemoved {
        room: room.clone(),
        uid,
        subscription_id: sub.id,
    })
}

/// Applies room settings (checked by the caller) with a system message for each change.
fn save_settings(t: &mut impl Txn, room: &mut Room, user: &User, settings: RoomSettings, now: i64) -> StoreResult<()> {
    let limit = |text: &Option<String>, what: &str| -> StoreResult<()> {
        if text.as_ref().is_some_and(|s| s.chars().count() > MAX_MESSAGE_CHARS) {
            return Err(StoreError::rejected(
                "error-invalid-room-setting",
                format!("The room's {what} is too long"),
            ));
        }
        Ok(())
    };
    limit(&settings.topic, "topic")?;
    limit(&settings.announcement, "announcement")?;
    limit(&settings.description, "description")?;
    if let Some(name) = &settings.name {
        let name = name.trim();
        if !valid_name(name) {
            return Err(StoreError::rejected(
                "error-invalid-room-name",
                format!("{name} is not a valid room name"),
            ));
        }
        if room.name.as_deref() != Some(name) {
            if t.room_name_taken(name)? && !room.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)) {
                return Err(StoreError::rejected(
                    "error-duplicate-channel-name",
                    format!("A channel with name '{name}' exists"),
                ));
            }
            let old = room.clone();
            room.name = Some(name.to_owned());
            room.fname = Some(name.to_owned());
            room.updated_at = now;
            t.put_renamed_room(&old, room)?;
            // Every member's subscription carries the room's name.
            for member in t.members(&room.id)? {
                if let Some(mut sub) = t.sub(&member, &room.id)? {
                    sub.name = name.to_owned();
                    sub.fname = name.to_owned();
                    sub.updated_at = now;
                    save_sub(t, sub, room.clone())?;
                }
            }
            post_system(t, room, user, "r", name.to_owned(), now)?;
        }
    }
    let texts = [
        (settings.topic, "room_changed_topic"),
        (settings.announcement, "room_changed_announcement"),
        (settings.description, "room_changed_description"),
    ];
    for (value, kind) in texts {
        let Some(value) = value else { continue };
        let slot = match kind {
            "room_changed_topic" => &mut room.topic,
            "room_changed_announcement" => &mut room.announcement,
            _ => &mut room.description,
        };
        let new = (!value.is_empty()).then(|| value.clone());
        if *slot == new {
            continue;
        }
        *slot = new;
        room.updated_at = now;
        t.put_room(room)?;
        post_system(t, room, user, kind, value, now)?;
    }
    if let Some(ro) = settings.read_only.filter(|ro| *ro != room.read_only) {
        room.read_only = ro;
        room.updated_at = now;
        t.put_room(room)?;
        let kind = if ro {
            "room-set-read-only"
        } else {
            "room-removed-read-only"
        };
        post_system(t, room, user, kind, user.username.clone(), now)?;
    }
    if let Some(archived) = settings.archived.filter(|a| *a != room.archived) {
        // The notice goes out while the room still takes messages.
        if archived {
            post_system(t, room, user, "room-archived", String::new(), now)?;
            room.archived = true;
        } else {
            room.archived = false;
            post_system(t, room, user, "room-unarchived", String::new(), now)?;
        }
        room.updated_at = now;
        t.put_room(room)?;
    }
    Ok(())
}

/// Applies one write inside a backend transaction. A rejected write has written nothing (every
/// check runs before the first write).
pub fn apply(t: &mut impl Txn, op: WriteOp, now: i64) -> StoreResult<WriteOutput> {
    match op {
        WriteOp::CreateUser {
            username,
            name,
            email,
            password_hash,
        } => {
            if !valid_name(&username) {
                return Err(StoreError::rejected("error-invalid-username", "Invalid username"));
            }
            if t.user_by_username(&username)?.is_some() {
                return Err(StoreError::rejected(
                    "error-field-unavailable",
                    format!("{username} is already in use :("),
                ));
            }
            if let Some(email) = &email {
                if t.email_taken(email)? {
                    return Err(StoreError::rejected("error-field-unavailable", "Email already exists"));
                }
            }
            // The first user of a workspace administers it, as in Rocket.Chat.
            let roles = if t.has_users()? {
                vec!["user".into()]
            } else {
                vec!["admin".into(), "user".into()]
            };
            let user = User {
                id: UserId(random_id()),
                name: if name.trim().is_empty() { username.clone() } else { name },
                username,
                email,
                password_hash,
                created_at: now,
                status: "online".into(),
                status_text: String::new(),
                roles,
                active: true,
            };
            t.put_user(&user)?;
            // New users join the default channel, as in Rocket.Chat.
            if let Some(mut general) = t.room(&RoomId::from(GENERAL_ROOM_ID))? {
                join_member(t, &mut general, &user, now)?;
            }
            Ok(WriteOutput::User(Box::new(user)))
        }
        WriteOp::SetPasswordHash {
            uid,
            expected,
            password_hash,
        } => {
            let mut user = existing_user(t, &uid)?;
            if user.password_hash == expected {
                user.password_hash = password_hash;
                t.put_user(&user)?;
            }
            Ok(WriteOutput::Unit)
        }
        WriteOp::AdminUpdateUser {
            uid,
            password_hash,
            active,
            roles,
            revoke_tokens,
        } => {
            let mut user = existing_user(t, &uid)?;
            if let Some(hash) = password_hash {
                user.password_hash = hash;
            }
            if let Some(active) = active {
                user.active = active;
            }
            if let Some(roles) = roles {
                user.roles = roles;
            }
            t.put_user(&user)?;
            if revoke_tokens {
                t.delete_tokens_of(&uid)?;
            }
            Ok(WriteOutput::User(Box::new(user)))
        }
        WriteOp::CreateToken { token_hash, token } => {
            existing_user(t, &token.uid)?;
            t.put_token(&token_hash, &token)?;
            Ok(WriteOutput::Unit)
        }
        WriteOp::DeleteToken { token_hash } => {
            t.delete_token(&token_hash)?;
            Ok(WriteOutput::Unit)
        }
        WriteOp::CreateRoom {
            t: kind,
            name,
            creator,
            members,
            read_only,
        } => {
            let name = name.trim().to_owned();
            if kind == RoomType::Direct || !valid_name(&name) {
                return Err(StoreError::rejected(
                    "error-invalid-name",
                    format!("Invalid name: {name}"),
                ));
            }
            if t.room_name_taken(&name)? {
                return Err(StoreError::rejected(
                    "error-duplicate-channel-name",
                    format!("A channel with name '{name}' exists"),
                ));
            }
            let owner = existing_user(t, &creator)?;
            require(
                &owner,
                if kind == RoomType::Channel {
                    Permission::CreateC
                } else {
                    Permission::CreateP
                },
            )?;
            let mut others: Vec<User> = Vec::new();
            for m in members {
                let user = t
                    .user_by_username(m.trim_start_matches('@'))?
                    .ok_or_else(|| StoreError::rejected("error-invalid-user", format!("Invalid user: {m}")))?;
                if user.id != owner.id && !others.iter().any(|o| o.id == user.id) {
                    others.push(user);
                }
            }
            let mut room = Room {
                id: RoomId(random_id()),
                t: kind,
                name: Some(name.clone()),
                fname: Some(name),
                creator: Some(owner.user_ref()),
                read_only,
                ..general_room(now)
            };
            let mut subs = vec![add_member(t, &mut room, &owner, true, now)?];
            for user in &others {
                subs.push(add_member(t, &mut room, user, false, now)?);
            }
            t.put_room(&room)?;
            announce_members(t, &room, subs)?;
            Ok(WriteOutput::Room(Box::new(room), true))
        }
        WriteOp::CreateDirect { creator, usernames } => {
            let me = existing_user(t, &creator)?;
            let mut others: Vec<User> = Vec::new();
            for name in &usernames {
                let user = t
                    .user_by_username(name.trim().trim_start_matches('@'))?
                    .ok_or_else(|| StoreError::rejected("error-invalid-user", "Invalid user"))?;
                if user.id != me.id && !others.iter().any(|o| o.id == user.id) {
                    others.push(user);
                }
            }
            if others.len() + 1 > MAX_DIRECT_MEMBERS {
                return Err(StoreError::rejected(
                    "error-direct-message-max-user-exceeded",
                    format!(
                        "You cannot add more than {MAX_DIRECT_MEMBERS} users, including yourself to a direct message"
                    ),
                ));
            }
            let mut members = others;
            members.push(me.clone());
            // A conversation with oneself, with one other user (the room id is the two user
            // ids sorted and joined), or with several (a room found by its members).
            members.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            let existing = if members.len() <= 2 {
                let other = members.iter().find(|u| u.id != me.id).unwrap_or(&me);
                match t.room(&direct_room_id(&me.id, &other.id))? {
                    Some(room) if room.t == RoomType::Direct => Some(room),
                    // An id collision with a room of another kind: never touch it.
                    Some(_) => return Err(StoreError::rejected("error-invalid-user", "Invalid user")),
                    None => None,
                }
            } else {
                let uids: Vec<UserId> = members.iter().map(|u| u.id.clone()).collect();
                t.direct_room_of(&me.id, &uids)?
            };
            let (mut room, created) = match existing {
                Some(room) => (room, false),
                // Opening an existing conversation needs no permission; starting one does.
                None if !permissions::allows(Permission::CreateD, &me.roles) => {
                    return Err(StoreError::rejected("error-not-allowed", "Not allowed"))
                }
                None => {
                    let id = match members.as_slice() {
                        [a, b] => direct_room_id(&a.id, &b.id),
                        [a] => direct_room_id(&a.id, &a.id),
                        _ => RoomId(random_id()),
                    };
                    let mut usernames: Vec<String> = members.iter().map(|u| u.username.clone()).collect();
                    usernames.sort();
                    let room = Room {
                        id,
                        t: RoomType::Direct,
                        name: None,
                        fname: None,
                        uids: members.iter().map(|u| u.id.clone()).collect(),
                        usernames,
                        ..general_room(now)
                    };
                    (room, true)
                }
            };
            let mut subs = Vec::new();
            for member in &members {
                if t.sub(&member.id, &room.id)?.is_some() {
                    continue;
                }
                // Each member's list names the others (themself, in a conversation with
                // oneself), by username and by name.
                let peers: Vec<&User> = members.iter().filter(|u| u.id != member.id).collect();
                let peers = if peers.is_empty() { vec![member] } else { peers };
                let mut peers = peers;
                peers.sort_by(|a, b| a.username.cmp(&b.username));
                let name = peers.iter().map(|u| u.username.as_str()).collect::<Vec<_>>().join(", ");
                let fname = peers.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ");
                let open = member.id == me.id;
                let sub = new_subscription(&room, member, name, fname, open, false, now);
                t.put_sub(&sub)?;
                room.users_count += 1;
                subs.push(sub);
            }
            if created || !subs.is_empty() {
                room.updated_at = now;
                t.put_room(&room)?;
            }
            announce_members(t, &room, subs)?;
            Ok(WriteOutput::Room(Box::new(room), created))
        }
        WriteOp::Join { uid, rid } => {
            let user = existing_user(t, &uid)?;
            let (mut room, sub) = visible_room(t, &uid, &rid)?;
            if sub.is_some() {
                return Ok(WriteOutput::Room(Box::new(room), false));
            }
            join_member(t, &mut room, &user, now)?;
            post_system(t, &mut room, &user, "uj", user.username.clone(), now)?;
            Ok(WriteOutput::Room(Box::new(room), false))
        }
        WriteOp::Leave { uid, rid, trash_ttl_ms } => {
            let (room, sub) = visible_room(t, &uid, &rid)?;
            let sub = sub.ok_or_else(|| StoreError::rejected("error-user-not-in-room", "You are not in this room"))?;
            if room.t == RoomType::Direct {
                return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
            }
            let leaver = existing_user(t, &uid)?;
            let may = if room.t == RoomType::Channel {
                Permission::LeaveC
            } else {
                Permission::LeaveP
            };
            if !permissions::allows(may, leaver.roles.iter().chain(&sub.roles)) {
                return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
            }
            if is_owner(&sub) && room.users_count > 1 && !has_other_owner(t, &rid, &uid)? {
                return Err(StoreError::rejected(
                    "error-you-are-last-owner",
                    "You are the last owner. Please set new owner before leaving the room.",
                ));
            }
            let mut room = room;
            drop_member(t, &mut room, sub, now, trash_ttl_ms)?;
            post_system(t, &mut room, &leaver, "ul", leaver.username.clone(), now)?;
            Ok(WriteOutput::Unit)
        }
        WriteOp::SendMessage {
            uid,
            rid,
            id,
            msg,
            tmid,
            tshow,
        } => {
            let (mut room, sub) = visible_room_for_message(t, &uid, &rid)?;
            let mut sub = sub.ok_or_else(|| StoreError::rejected("error-not-allowed", "Not allowed"))?;
            if let Some(id) = &id {
                if let Some(existing) = t.message(id)? {
                    // A re-send: only the same author, to the same room. Anything else learns
                    // nothing about the stored message (not even its room).
                    if existing.rid == rid && existing.u.id == uid {
                        return Ok(WriteOutput::Duplicate(Box::new(existing)));
                    }
                    return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
                }
            }
            check_size(&msg)?;
            if room.archived {
                return Err(StoreError::rejected("error-room-archived", "Room is archived"));
            }
            let user = existing_user(t, &uid)?;
            let roles = || user.roles.iter().chain(&sub.roles);
            if room.read_only && !permissions::allows(Permission::PostReadonly, roles()) {
                return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
            }
            // A reply names its thread's first message, in this room.
            let parent = match &tmid {
                Some(tmid) => Some(thread_root(t, &MessageId::from(tmid.as_str()), &rid)?),
                None => None,
            };
            let mentions = resolve_mentions(t, &msg, |p| permissions::allows(p, roles()))?;
            // Strictly increasing within a room, so `ts` alone pages history exactly (clients
            // page `loadHistory` by the oldest `ts` they hold).
            let ts = now.max(room.lm.map_or(0, |lm| lm + 1));
            let mut message = Message {
                id: id.unwrap_or_else(|| MessageId(random_id())),
                rid: rid.clone(),
                msg,
                ts,
                u: user.user_ref(),
                updated_at: ts,
                seq: 0,
                t: None,
                tmid: parent.as_ref().map(|p| p.id.to_string()),
                edited_at: None,
                edited_by: None,
                mentions,
                extra: Default::default(),
            };
            if tshow && parent.is_some() {
                message.extra.insert("tshow".into(), true.into());
            }
            let quotes = quote_attachments(t, &uid, &message.msg)?;
            if !quotes.is_empty() {
                message.extra.insert("attachments".into(), quotes.into());
            }
            insert_message(t, &mut room, &mut message)?;
            // The sender has read their own message: one O(1) write, not one per member.
            sub.read_seq = message.seq;
            sub.ls = ts;
            t.update_sub(&sub)?;
            count_mentions(t, &room, &message)?;
            if let Some(parent) = parent {
                count_thread_reply(t, &room, parent, &message)?;
            }
            Ok(WriteOutput::Message(Box::new(message)))
        }
        WriteOp::SetReaction { uid, mid, emoji, react } => {
            let not_allowed = || StoreError::rejected("error-not-allowed", "Not allowed");
            let user = existing_user(t, &uid)?;
            let message = t.message(&mid)?.ok_or_else(not_allowed)?;
            let (room, sub) = visible_room(t, &uid, &message.rid).map_err(|_| not_allowed())?;
            let already = message.reacted(&emoji, &user.username);
            let react = react.unwrap_or(!already);
            if react == already {
                return Ok(WriteOutput::Message(Box::new(message)));
            }
            let roles = sub.as_ref().map(|s| s.roles.as_slice()).unwrap_or_default();
            if room.read_only && !permissions::allows(Permission::PostReadonly, user.roles.iter().chain(roles)) {
                return Err(StoreError::rejected(
                    "error-not-allowed",
                    "You can't send messages because the room is readonly.",
                ));
            }
            let mut changed = message.clone();
            changed.set_reaction(&emoji, &user.username, react);
            save_changed_message(t, room, &message, changed, now)
        }
        WriteOp::SetPinned { uid, mid, pinned } => {
            let not_found = || {
                StoreError::rejected(
                    "error-invalid-message",
                    if pinned {
                        "Message you are pinning was not found"
                    } else {
                        "Message you are unpinning was not found"
                    },
                )
            };
            let user = existing_user(t, &uid)?;
            let message = t.message(&mid)?.ok_or_else(not_found)?;
            let (mut room, sub) = visible_room(t, &uid, &message.rid).map_err(|_| not_found())?;
            let sub = sub.ok_or_else(not_found)?;
            if !permissions::allows(Permission::PinMessage, user.roles.iter().chain(&sub.roles)) {
                return Err(StoreError::rejected("not-authorized", "Not Authorized"));
            }
            if message.pinned() == pinned {
                return Ok(WriteOutput::Message(Box::new(message)));
            }
            let mut changed = message.clone();
            changed.set_pinned(pinned, &user.user_ref(), now);
            let original = match save_changed_message(t, room.clone(), &message, changed, now)? {
                WriteOutput::Message(m) => m,
                _ => return Err(StoreError::Internal("a pin saved no message".into())),
            };
            if !pinned {
                return Ok(WriteOutput::Message(original));
            }
            // Rocket.Chat's system message: the pinned text quoted in an attachment.
            room = t
                .room_without_last_message(&room.id)?
                .ok_or_else(|| StoreError::Internal("the pinned message's room vanished".into()))?;
            let mut notice = system_message(&room, &user, "message_pinned", String::new(), now);
            notice.extra.insert(
                "attachments".into(),
                serde_json::json!([{
                    "text": original.msg,
                    "author_name": original.u.username,
                    "author_icon": format!("/avatar/{}", original.u.username),
                    "ts": {"$date": original.ts},
                }]),
            );
            let notice = post_notice(t, &mut room, notice)?;
            Ok(WriteOutput::Message(Box::new(notice)))
        }
        WriteOp::SetStarred { uid, mid, starred } => {
            let not_found = || StoreError::rejected("error-invalid-message", "Message not found");
            let message = t.message(&mid)?.ok_or_else(not_found)?;
            let (room, sub) = visible_room(t, &uid, &message.rid).map_err(|_| not_found())?;
            // Only members star (Rocket.Chat answers `false` otherwise; chatd: not found).
            sub.ok_or_else(not_found)?;
            if message.starred_by(&uid) == starred {
                return Ok(WriteOutput::Message(Box::new(message)));
            }
            let mut changed = message.clone();
            changed.set_starred(&uid, starred);
            save_changed_message(t, room, &message, changed, now)
        }
        WriteOp::FollowThread { uid, mid, follow } => {
            let not_found = || StoreError::rejected("error-invalid-message", "Invalid message");
            let message = t.message(&mid)?.ok_or_else(not_found)?;
            let root = match &message.tmid {
                Some(tmid) => t.message(&MessageId::from(tmid.as_str()))?.ok_or_else(not_found)?,
                None => message,
            };
            let (room, sub) = visible_room(t, &uid, &root.rid).map_err(|_| not_found())?;
            if root.followed_by(&uid) == follow {
                return Ok(WriteOutput::Message(Box::new(root)));
            }
            let mut changed = root.clone();
            changed.set_follower(&uid, follow);
            if !follow {
                if let Some(mut sub) = sub {
                    if drop_thread_unread(&mut sub, root.id.as_str()) {
                        sub.updated_at = now;
                        save_sub(t, sub, room.clone())?;
                    }
                }
            }
            save_changed_message(t, room, &root, changed, now)
        }
        WriteOp::ReadThread { uid, tmid } => {
            let Some(root) = t.message(&tmid)? else {
                return Ok(WriteOutput::Unit);
            };
            let Ok((room, Some(mut sub))) = visible_room(t, &uid, &root.rid) else {
                return Ok(WriteOutput::Unit);
            };
            if drop_thread_unread(&mut sub, tmid.as_str()) {
                sub.updated_at = now;
                save_sub(t, sub, room)?;
            }
            Ok(WriteOutput::Unit)
        }
        WriteOp::AddMembers { uid, rid, usernames } => {
            if usernames.len() > MAX_INVITES {
                return Err(StoreError::rejected(
                    "error-too-many-users",
                    format!("At most {MAX_INVITES} users can be added at once"),
                ));
            }
            let (room, sub) = visible_room(t, &uid, &rid)?;
            let inviter = existing_user(t, &uid)?;
            if room.t == RoomType::Direct {
                return Err(StoreError::rejected(
                    "error-cant-invite-for-direct-room",
                    "Can't invite user to direct rooms",
                ));
            }
            let room_roles = sub.as_ref().map(|s| s.roles.as_slice()).unwrap_or_default();
            let roles = || inviter.roles.iter().chain(room_roles);
            let any = if room.t == RoomType::Channel {
                Permission::AddUserToAnyCRoom
            } else {
                Permission::AddUserToAnyPRoom
            };
            let may = (sub.is_some() && permissions::allows(Permission::AddUserToJoinedRoom, roles()))
                || permissions::allows(any, roles());
            if !may {
                return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
            }
            let mut users = Vec::new();
            for name in &usernames {
                let user = t
                    .user_by_username(name.trim_start_matches('@'))?
                    .ok_or_else(|| StoreError::rejected("error-invalid-user", format!("Invalid user: {name}")))?;
                if !users.iter().any(|u: &User| u.id == user.id) {
                    users.push(user);
                }
            }
            let mut room = t
                .room_without_last_message(&rid)?
                .ok_or_else(|| StoreError::Internal("the room vanished".into()))?;
            for user in users {
                if t.sub(&user.id, &rid)?.is_some() {
                    continue;
                }
                join_member(t, &mut room, &user, now)?;
                post_system(t, &mut room, &inviter, "au", user.username.clone(), now)?;
            }
            Ok(WriteOutput::Room(Box::new(room), false))
        }
        WriteOp::RemoveMember {
            uid,
            rid,
            target,
            trash_ttl_ms,
        } => {
            let (mut room, _, remover) = managed_room(t, &uid, &rid, Permission::RemoveUser)?;
            let theirs = member_sub(t, &target, &rid)?;
            if is_owner(&theirs) && !has_other_owner(t, &rid, &target)? {
                return Err(StoreError::rejected(
                    "error-you-are-last-owner",
                    "This is the last owner. Please set a new owner before removing this one.",
                ));
            }
            let username = theirs.u.username.clone();
            drop_member(t, &mut room, theirs, now, trash_ttl_ms)?;
            room = t
                .room_without_last_message(&rid)?
                .ok_or_else(|| StoreError::Internal("the room vanished".into()))?;
            post_system(t, &mut room, &remover, "ru", username, now)?;
            Ok(WriteOutput::Room(Box::new(room), false))
        }
        WriteOp::SetRoomRole {
            uid,
            rid,
            target,
            role,
            on,
        } => {
            let p = match role {
                RoomRole::Owner => Permission::SetOwner,
                RoomRole::Moderator => Permission::SetModerator,
            };
            let (mut room, _, setter) = managed_room(t, &uid, &rid, p)?;
            let mut theirs = member_sub(t, &target, &rid)?;
            let name = role.name();
            let holds = theirs.roles.iter().any(|r| r == name);
            if on && holds {
                return Err(StoreError::rejected(
                    if role == RoomRole::Owner {
                        "error-user-already-owner"
                    } else {
                        "error-user-already-moderator"
                    },
                    format!(
                        "User is already {} {name}",
                        if role == RoomRole::Owner { "an" } else { "a" }
                    ),
                ));
            }
            if !on && !holds {
                return Err(StoreError::rejected(
                    if role == RoomRole::Owner {
                        "error-user-not-owner"
                    } else {
                        "error-user-not-moderator"
                    },
                    format!(
                        "User is not {} {name}",
                        if role == RoomRole::Owner { "an" } else { "a" }
                    ),
                ));
            }
            if !on && role == RoomRole::Owner && !has_other_owner(t, &rid, &target)? {
                return Err(StoreError::rejected(
                    "error-remove-last-owner",
                    "This is the last owner. Please set a new owner before removing this one.",
                ));
            }
            if on {
                theirs.roles.push(name.to_owned());
            } else {
                theirs.roles.retain(|r| r != name);
            }
            theirs.updated_at = now;
            let username = theirs.u.username.clone();
            save_sub(t, theirs, room.clone())?;
            let kind = if on {
                "subscription-role-added"
            } else {
                "subscription-role-removed"
            };
            let mut notice = system_message(&room, &setter, kind, username, now);
            notice.extra.insert("role".into(), name.into());
            post_notice(t, &mut room, notice)?;
            Ok(WriteOutput::Unit)
        }
        WriteOp::SaveRoomSettings { uid, rid, settings } => {
            let (room, sub, user) = managed_room(t, &uid, &rid, Permission::EditRoom)?;
            let room_roles = sub.as_ref().map(|s| s.roles.clone()).unwrap_or_default();
            let may = |p: Permission| permissions::allows(p, user.roles.iter().chain(&room_roles));
            if settings.read_only.is_some_and(|ro| ro != room.read_only) && !may(Permission::SetReadonly) {
                return Err(StoreError::rejected(
                    "error-action-not-allowed",
                    "Editing room is not allowed",
                ));
            }
            match settings.archived {
                Some(true) if !room.archived && !may(Permission::ArchiveRoom) => {
                    return Err(StoreError::rejected(
                        "error-action-not-allowed",
                        "Archiving room is not allowed",
                    ))
                }
                Some(false) if room.archived && !may(Permission::UnarchiveRoom) => {
                    return Err(StoreError::rejected(
                        "error-action-not-allowed",
                        "Unarchiving room is not allowed",
                    ))
                }
                _ => {}
            }
            let mut room = t
                .room_without_last_message(&room.id)?
                .ok_or_else(|| StoreError::Internal("the room vanished".into()))?;
            save_settings(t, &mut room, &user, settings, now)?;
            Ok(WriteOutput::Room(Box::new(room), false))
        }
        WriteOp::SetOpen { uid, rid, open } => {
            let (room, sub) = visible_room(t, &uid, &rid)?;
            let mut sub =
                sub.ok_or_else(|| StoreError::rejected("error-user-not-in-room", "You are not in this room"))?;
            sub.open = open;
            if !open {
                sub.alert = false;
                sub.closed_seq = room.last_seq;
            }
            sub.updated_at = now;
            save_sub(t, sub, room)?;
            Ok(WriteOutput::Unit)
        }
        WriteOp::UpdateMessage { uid, mid, rid, msg } => {
            let (old, mut room) = changeable_message(t, &uid, &mid, rid.as_ref(), false)?;
            check_size(&msg)?;
            if old.msg == msg {
                return Ok(WriteOutput::Message(Box::new(old)));
            }
            let editor = existing_user(t, &uid)?;
            let mut message = old.clone();
            message.msg = msg;
            message.edited_at = Some(now);
            message.edited_by = Some(editor.user_ref());
            // Later than the message's earlier change and than every message of the room (whose
            // times may run ahead of the clock in a burst): a client that has seen any of them
            // and syncs from that time sees this edit.
            message.updated_at = now.max(old.updated_at + 1).max(room.lm.unwrap_or(0) + 1);
            t.replace_message(&old, &message)?;
            if room.last_message.as_ref().is_some_and(|m| m.id == message.id) {
                room.last_message = Some(message.clone());
                t.put_room(&room)?;
            }
            room.updated_at = now;
            t.push_change(Change::MessageUpdated {
                message: message.clone(),
                room,
            })?;
            Ok(WriteOutput::Message(Box::new(message)))
        }
        WriteOp::DeleteMessage {
            uid,
            mid,
            rid,
            trash_ttl_ms,
        } => {
            let (message, mut room) = changeable_message(t, &uid, &mid, rid.as_ref(), true)?;
            t.remove_message(&message)?;
            t.put_trash(&Trash {
                kind: TrashKind::Message,
                id: message.id.to_string(),
                rid: message.rid.clone(),
                uid: None,
                deleted_at: now,
                expires_at: now.saturating_add(trash_ttl_ms),
            })?;
            room.msgs = room.msgs.saturating_sub(1);
            if room.last_message.as_ref().is_some_and(|m| m.id == message.id) {
                room.last_message = t.last_message(&room.id)?;
            }
            room.updated_at = now;
            t.put_room(&room)?;
            t.push_change(Change::MessageDeleted {
                rid: room.id.clone(),
                mid,
                room: room.clone(),
            })?;
            // A deleted reply no longer counts in its thread.
            if let Some(tmid) = &message.tmid {
                if let Some(root) = t.message(&MessageId::from(tmid.as_str()))? {
                    let mut changed = root.clone();
                    changed.uncount_reply();
                    save_changed_message(t, room, &root, changed, now)?;
                }
            }
            Ok(WriteOutput::Message(Box::new(message)))
        }
        WriteOp::MarkRead { uid, rid } => {
            let (room, sub) = visible_room(t, &uid, &rid)?;
            let mut sub = sub.ok_or_else(|| StoreError::rejected("error-not-allowed", "Not allowed"))?;
            if sub.read_seq == room.last_seq
                && sub.open
                && sub.user_mentions == 0
                && sub.group_mentions == 0
                && !sub.alert
            {
                return Ok(WriteOutput::Unit);
            }
            sub.read_seq = room.last_seq;
            sub.ls = now;
            sub.open = true;
            sub.user_mentions = 0;
            sub.group_mentions = 0;
            sub.alert = false;
            sub.updated_at = now;
            t.update_sub(&sub)?;
            let read_until = read_by_everyone(t, &room, &sub)?;
            t.push_change(Change::SubscriptionUpdated {
                subscription: sub,
                room,
                read_until,
            })?;
            Ok(WriteOutput::Unit)
        }
        WriteOp::MarkUnread { uid, rid, mid } => {
            let message = match &mid {
                Some(mid) => Some(
                    t.message(mid)?
                        .ok_or_else(|| StoreError::rejected("error-invalid-message", "Invalid message"))?,
                ),
                None => None,
            };
            let rid = match (&message, rid) {
                (Some(m), _) => m.rid.clone(),
                (None, Some(rid)) => rid,
                (None, None) => return Err(StoreError::rejected("error-invalid-room", "Invalid room")),
            };
            let (room, sub) = visible_room(t, &uid, &rid).map_err(|_| {
                StoreError::rejected(
                    if mid.is_some() {
                        "error-invalid-message"
                    } else {
                        "error-invalid-room"
                    },
                    "Invalid",
                )
            })?;
            let mut sub = sub.ok_or_else(|| StoreError::rejected("error-not-allowed", "Not allowed"))?;
            match &message {
                Some(m) => {
                    sub.read_seq = m.seq.saturating_sub(1);
                    sub.ls = m.ts.saturating_sub(1);
                }
                None => sub.alert = true,
            }
            sub.updated_at = now;
            save_sub(t, sub, room)?;
            Ok(WriteOutput::Unit)
        }
        WriteOp::SetStatus {
            uid,
            status,
            status_text,
        } => {
            if !matches!(status.as_str(), "online" | "away" | "busy" | "offline") {
                return Err(StoreError::rejected(
                    "error-invalid-status",
                    "Valid status types include online, away, offline, and busy.",
                ));
            }
            let mut user = existing_user(t, &uid)?;
            let text = status_text.unwrap_or_else(|| user.status_text.clone());
            if user.status == status && user.status_text == text {
                return Ok(WriteOutput::User(Box::new(user)));
            }
            user.status = status.clone();
            user.status_text = text.clone();
            t.put_user(&user)?;
            t.push_change(Change::UserStatusChanged {
                user: user.user_ref(),
                status,
                status_text: text,
            })?;
            Ok(WriteOutput::User(Box::new(user)))
        }
        WriteOp::PutDoc {
            coll,
            id,
            doc,
            only_if_absent,
            owner,
        } => {
            let existing = t.doc(coll, &id)?;
            if let (Some(owner), Some(old)) = (&owner, &existing) {
                if old.get("uid").and_then(serde_json::Value::as_str) != Some(owner.as_str()) {
                    return Err(StoreError::rejected("error-not-allowed", "Not allowed"));
                }
            }
            match existing {
                Some(old) if only_if_absent => Ok(WriteOutput::Doc(old)),
                _ => {
                    t.put_doc(coll, &id, &doc)?;
                    Ok(WriteOutput::Doc(doc))
                }
            }
        }
        WriteOp::DeleteDoc { coll, id, owner } => {
            let existing = t.doc(coll, &id)?;
            let mine = existing.as_ref().is_some_and(|d| {
                owner
                    .as_ref()
                    .is_none_or(|o| d.get("uid").and_then(serde_json::Value::as_str) == Some(o.as_str()))
            });
            if !mine {
                return Ok(WriteOutput::Doc(serde_json::Value::Null));
            }
            t.delete_doc(coll, &id)?;
            Ok(WriteOutput::Doc(serde_json::Value::Bool(true)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_parsed() {
        assert_eq!(mentioned_usernames("hi @bob, and @carol. @bob"), ["bob", "carol"]);
        assert!(mentioned_usernames("mail me at a@b.c").is_empty());
    }

    #[test]
    fn permalinks_name_the_quoted_messages() {
        let text = "[ ](https://chat.example/group/design?msg=Abc123) and [ ](http://h/direct/x?a=1&msg=Def-4_5)\nok";
        let ids: Vec<&str> = quoted_ids(text).into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["Abc123", "Def-4_5"]);
        assert!(quoted_ids("?msg=x not a link, https://h/c?msg=<script>").is_empty());
        let many =
            "https://h/c?msg=a ".repeat(3) + &(0..10).map(|i| format!("https://h/c?msg=m{i} ")).collect::<String>();
        assert_eq!(quoted_ids(&many).len(), MAX_QUOTES);
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_name("dev-team.2"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
