//! The embedded store's tables and record encoding, and [`Tables`]: every table opened in one
//! write transaction, implementing the chat rules' [`Txn`]. Runs on the writer thread (and the
//! importer's thread, which owns the file while the server is stopped).

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::journal::Logged;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::app::rules::Txn;
use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{
    Change, ChangeRecord, LoginToken, Message, Room, RoomType, StoreError, StoreResult, Subscription, Trash, TrashKind,
    User,
};

pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// lowercase username → user id.
pub const USERNAMES: TableDefinition<&str, &str> = TableDefinition::new("usernames");
/// lowercase email → user id.
pub const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");
/// SHA-256 (hex) of a login token → token.
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// rid → room, without its last message (read from `messages`) and with the counters of
/// [`ROOM_TAILS`] possibly out of date.
pub const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
/// rid → [`Tail`]: what a new message changes in its room, so a message rewrites 32 bytes, not
/// the room record.
pub const ROOM_TAILS: TableDefinition<&str, Tail> = TableDefinition::new("room_tails");
/// `(last_seq, msgs, lm or i64::MIN for none, updated_at)`.
pub type Tail = (u64, u64, i64, i64);
/// lowercase room name → room id.
pub const ROOM_NAMES: TableDefinition<&str, &str> = TableDefinition::new("room_names");
/// (lowercase name, rid) → (): public channels in name order (listings page through it).
pub const CHANNELS: TableDefinition<(&str, &str), ()> = TableDefinition::new("channel_names");
/// META key set once every channel is in `CHANNELS` (stores made before it existed are indexed
/// at open).
pub const META_CHANNELS_INDEXED: &str = "channels_indexed";
/// (uid, rid) → subscription.
pub const SUBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("subscriptions");
/// (rid, uid) → (): room membership index.
pub const MEMBERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("members");
/// (rid, ts, seq) → message. `ts` strictly increases within a room, so this is also seq order.
pub const MESSAGES: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("messages");
/// message id → its key in `messages`.
pub const MESSAGE_IDS: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("message_ids");
/// change seq → change record.
pub const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (rid, updated_at, message id) → (): messages changed after they were sent (edits), at their
/// last change; with the messages sent since a time, what `chat.syncMessages` reports.
pub const EDITS: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("message_edits");
/// (rid, deleted_at, message id) → [`Trash`]: deleted messages, for syncing clients.
pub const TRASH_MESSAGES: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("trash_messages");
/// (uid, deleted_at, subscription id) → [`Trash`]: removed subscriptions, for syncing clients.
pub const TRASH_SUBS: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("trash_subscriptions");
/// (collection, id) → JSON: small documents (settings, push tokens).
pub const DOCS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("docs");
pub const META_CHANGE_SEQ: &str = "change_seq";
/// Number of the last journal group in the store (see [`super::journal`]).
pub const META_JOURNAL_LSN: &str = "journal_lsn";

/// A store-side failure (I/O, redb): the store's fault.
pub fn sf<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Failed(e.to_string())
}

pub fn enc<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Internal(format!("encoding a record: {e}")))
}

/// A stored record that does not decode is chatd's fault (a bug or a damaged file).
pub fn dec<T: DeserializeOwned>(b: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Internal(format!("decoding a record: {e}")))
}

/// Message key component for a timestamp (pre-1970 dates sort first).
pub fn ts_key(ts: i64) -> u64 {
    ts.max(0) as u64
}

pub fn message_key(m: &Message) -> (&str, u64, u64) {
    (m.rid.as_str(), ts_key(m.ts), m.seq)
}

/// The members of `rid` in the membership index (of a read or a write transaction).
pub fn members_of(
    table: &impl ReadableTable<(&'static str, &'static str), ()>,
    rid: &RoomId,
) -> StoreResult<Vec<UserId>> {
    let mut out = Vec::new();
    for entry in table.range((rid.as_str(), "")..).map_err(sf)? {
        let (k, _) = entry.map_err(sf)?;
        let (r, u) = k.value();
        if r != rid.as_str() {
            break;
        }
        out.push(UserId::from(u));
    }
    Ok(out)
}

fn tail_of(room: &Room) -> Tail {
    (room.last_seq, room.msgs, room.lm.unwrap_or(i64::MIN), room.updated_at)
}

/// The room's last message: the last entry of its messages (ts strictly increases in a room).
pub fn last_message_in(
    messages: &impl ReadableTable<(&'static str, u64, u64), &'static [u8]>,
    rid: &str,
) -> StoreResult<Option<Message>> {
    let last = messages
        .range((rid, 0, 0)..(rid, u64::MAX, u64::MAX))
        .map_err(sf)?
        .next_back();
    match last {
        Some(entry) => Ok(Some(dec(entry.map_err(sf)?.1.value())?)),
        None => Ok(None),
    }
}

/// A stored room record made whole: the counters of its tail (stores written before tails
/// existed have none, and their record is whole already) and, unless `messages` is `None`, its
/// last message.
pub fn finish_room(
    record: &[u8],
    tails: &impl ReadableTable<&'static str, Tail>,
    messages: Option<&impl ReadableTable<(&'static str, u64, u64), &'static [u8]>>,
) -> StoreResult<Room> {
    let mut room: Room = dec(record)?;
    if let Some(tail) = tails.get(room.id.as_str()).map_err(sf)? {
        let (last_seq, msgs, lm, updated_at) = tail.value();
        room.last_seq = last_seq;
        room.msgs = msgs;
        room.lm = (lm != i64::MIN).then_some(lm);
        room.updated_at = updated_at;
    }
    if let Some(messages) = messages {
        room.last_message = last_message_in(messages, room.id.as_str())?;
    }
    Ok(room)
}

/// Every table, opened once per write transaction; with [`Tables::open_journaled`] every change
/// is also logged for the journal.
pub struct Tables<'t> {
    pub users: Logged<'t, &'static str, &'static [u8]>,
    pub usernames: Logged<'t, &'static str, &'static str>,
    pub emails: Logged<'t, &'static str, &'static str>,
    pub tokens: Logged<'t, &'static str, &'static [u8]>,
    pub rooms: Logged<'t, &'static str, &'static [u8]>,
    pub room_tails: Logged<'t, &'static str, Tail>,
    pub room_names: Logged<'t, &'static str, &'static str>,
    pub channels: Logged<'t, (&'static str, &'static str), ()>,
    pub subs: Logged<'t, (&'static str, &'static str), &'static [u8]>,
    pub members: Logged<'t, (&'static str, &'static str), ()>,
    pub messages: Logged<'t, (&'static str, u64, u64), &'static [u8]>,
    pub message_ids: Logged<'t, &'static str, (&'static str, u64, u64)>,
    pub changes: Logged<'t, u64, &'static [u8]>,
    pub meta: Logged<'t, &'static str, u64>,
    pub edits: Logged<'t, (&'static str, u64, &'static str), ()>,
    pub trash_messages: Logged<'t, (&'static str, u64, &'static str), &'static [u8]>,
    pub trash_subs: Logged<'t, (&'static str, u64, &'static str), &'static [u8]>,
    pub docs: Logged<'t, (&'static str, &'static str), &'static [u8]>,
    /// Change-log head inside this transaction.
    pub seq: u64,
    /// The change records appended in this transaction, kept (journaled transactions only) so
    /// the feed can take them from memory instead of reading and decoding them back.
    pub appended: Option<Vec<ChangeRecord>>,
}

impl<'t> Tables<'t> {
    /// The tables of a transaction that commits durably itself (import, bootstrap, replay).
    pub fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
        Self::open_with(txn, false)
    }

    /// The tables of a transaction whose changes go to the journal (the writer).
    pub fn open_journaled(txn: &'t WriteTransaction) -> StoreResult<Self> {
        Self::open_with(txn, true)
    }

    fn open_with(txn: &'t WriteTransaction, journaled: bool) -> StoreResult<Self> {
        use super::journal::table_id as id;
        let mut t = Self {
            users: Logged::new(txn.open_table(USERS).map_err(sf)?, id::users, journaled),
            usernames: Logged::new(txn.open_table(USERNAMES).map_err(sf)?, id::usernames, journaled),
            emails: Logged::new(txn.open_table(EMAILS).map_err(sf)?, id::emails, journaled),
            tokens: Logged::new(txn.open_table(TOKENS).map_err(sf)?, id::tokens, journaled),
            rooms: Logged::new(txn.open_table(ROOMS).map_err(sf)?, id::rooms, journaled),
            room_tails: Logged::new(txn.open_table(ROOM_TAILS).map_err(sf)?, id::room_tails, journaled),
            room_names: Logged::new(txn.open_table(ROOM_NAMES).map_err(sf)?, id::room_names, journaled),
            channels: Logged::new(txn.open_table(CHANNELS).map_err(sf)?, id::channels, journaled),
            subs: Logged::new(txn.open_table(SUBS).map_err(sf)?, id::subs, journaled),
            members: Logged::new(txn.open_table(MEMBERS).map_err(sf)?, id::members, journaled),
            messages: Logged::new(txn.open_table(MESSAGES).map_err(sf)?, id::messages, journaled),
            message_ids: Logged::new(txn.open_table(MESSAGE_IDS).map_err(sf)?, id::message_ids, journaled),
            changes: Logged::new(txn.open_table(CHANGES).map_err(sf)?, id::changes, journaled),
            meta: Logged::new(txn.open_table(META).map_err(sf)?, id::meta, journaled),
            edits: Logged::new(txn.open_table(EDITS).map_err(sf)?, id::edits, journaled),
            trash_messages: Logged::new(
                txn.open_table(TRASH_MESSAGES).map_err(sf)?,
                id::trash_messages,
                journaled,
            ),
            trash_subs: Logged::new(txn.open_table(TRASH_SUBS).map_err(sf)?, id::trash_subs, journaled),
            docs: Logged::new(txn.open_table(DOCS).map_err(sf)?, id::docs, journaled),
            seq: 0,
            appended: journaled.then(Vec::new),
        };
        t.seq = t.meta.get(META_CHANGE_SEQ).map_err(sf)?.map(|v| v.value()).unwrap_or(0);
        Ok(t)
    }

    /// Records the change-log head reached in this transaction.
    pub fn save_seq(&mut self) -> StoreResult<()> {
        self.meta.insert(META_CHANGE_SEQ, self.seq).map_err(sf)?;
        Ok(())
    }

    fn by_name(index: &Table<'t, &'static str, &'static str>, name: &str) -> StoreResult<Option<String>> {
        Ok(index
            .get(name.to_lowercase().as_str())
            .map_err(sf)?
            .map(|v| v.value().to_owned()))
    }

    /// Indexes `email` (lowercased) for `uid`, unless another user holds it already.
    pub fn index_email(&mut self, email: &str, uid: &UserId) -> StoreResult<bool> {
        let key = email.to_lowercase();
        if Self::by_name(&self.emails, &key)?.is_some_and(|owner| owner != uid.as_str()) {
            return Ok(false);
        }
        self.emails.insert(key.as_str(), uid.as_str()).map_err(sf)?;
        Ok(true)
    }

    /// Lists a public channel in the channel index (other rooms: nothing).
    pub fn index_channel(&mut self, room: &Room) -> StoreResult<()> {
        if let (RoomType::Channel, Some(name)) = (room.t, &room.name) {
            self.channels
                .insert((name.to_lowercase().as_str(), room.id.as_str()), ())
                .map_err(sf)?;
        }
        Ok(())
    }

    /// Indexes a room's name (lowercased) unless another room holds it (imported rooms whose
    /// names differ only by case keep the first); `false` when it is taken.
    pub fn index_room_name(&mut self, name: &str, rid: &RoomId) -> StoreResult<bool> {
        let key = name.to_lowercase();
        if Self::by_name(&self.room_names, &key)?.is_some_and(|owner| owner != rid.as_str()) {
            return Ok(false);
        }
        self.room_names.insert(key.as_str(), rid.as_str()).map_err(sf)?;
        Ok(true)
    }

    /// Writes a room's record (without its last message) and its tail; no index.
    pub fn put_room_record(&mut self, room: &Room) -> StoreResult<()> {
        let record = if room.last_message.is_some() {
            enc(&Room {
                last_message: None,
                ..room.clone()
            })?
        } else {
            enc(room)?
        };
        self.rooms.insert(room.id.as_str(), record.as_slice()).map_err(sf)?;
        self.room_tails.insert(room.id.as_str(), tail_of(room)).map_err(sf)?;
        Ok(())
    }

    pub fn message_by_id(&self, mid: &str) -> StoreResult<Option<Message>> {
        let key = self.message_ids.get(mid).map_err(sf)?.map(|k| {
            let (r, ts, seq) = k.value();
            (r.to_owned(), ts, seq)
        });
        let Some((rid, ts, seq)) = key else {
            return Ok(None);
        };
        self.messages
            .get((rid.as_str(), ts, seq))
            .map_err(sf)?
            .map(|v| dec(v.value()))
            .transpose()
    }
}

/// Key of a message's entry in [`EDITS`], when it changed after it was sent.
fn edit_key(m: &Message) -> Option<(&str, u64, &str)> {
    (m.updated_at > m.ts).then(|| (m.rid.as_str(), ts_key(m.updated_at), m.id.as_str()))
}

/// Drops the records of `table` under `scope` deleted before `before` (expired).
fn prune_trash(
    table: &mut Logged<'_, (&'static str, u64, &'static str), &'static [u8]>,
    scope: &str,
    before: i64,
) -> StoreResult<()> {
    let expired: Vec<(u64, String)> = table
        .range((scope, 0, "")..(scope, ts_key(before), ""))
        .map_err(sf)?
        .map(|e| e.map(|(k, _)| (k.value().1, k.value().2.to_owned())))
        .collect::<Result<_, _>>()
        .map_err(sf)?;
    for (at, id) in expired {
        table.remove((scope, at, id.as_str())).map_err(sf)?;
    }
    Ok(())
}

impl Txn for Tables<'_> {
    fn user(&self, uid: &UserId) -> StoreResult<Option<User>> {
        self.users
            .get(uid.as_str())
            .map_err(sf)?
            .map(|v| dec(v.value()))
            .transpose()
    }

    fn has_users(&self) -> StoreResult<bool> {
        Ok(self.users.first().map_err(sf)?.is_some())
    }

    fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        match Self::by_name(&self.usernames, username)? {
            Some(uid) => self.user(&UserId(uid)),
            None => Ok(None),
        }
    }

    fn email_taken(&self, email: &str) -> StoreResult<bool> {
        Ok(Self::by_name(&self.emails, email)?.is_some())
    }

    fn put_user(&mut self, user: &User) -> StoreResult<()> {
        self.users.insert(user.id.as_str(), enc(user)?.as_slice()).map_err(sf)?;
        self.usernames
            .insert(user.username.to_lowercase().as_str(), user.id.as_str())
            .map_err(sf)?;
        if let Some(email) = &user.email {
            self.index_email(email, &user.id)?;
        }
        Ok(())
    }

    fn put_token(&mut self, token_hash: &str, token: &LoginToken) -> StoreResult<()> {
        self.tokens.insert(token_hash, enc(token)?.as_slice()).map_err(sf)?;
        Ok(())
    }

    fn delete_token(&mut self, token_hash: &str) -> StoreResult<()> {
        self.tokens.remove(token_hash).map_err(sf)?;
        Ok(())
    }

    fn delete_tokens_of(&mut self, uid: &UserId) -> StoreResult<u64> {
        let mut gone = 0u64;
        self.tokens
            .retain(|_, v| {
                let mine = dec::<LoginToken>(v).is_ok_and(|t| &t.uid == uid);
                gone += u64::from(mine);
                !mine
            })
            .map_err(sf)?;
        Ok(gone)
    }

    fn room(&self, rid: &RoomId) -> StoreResult<Option<Room>> {
        self.rooms
            .get(rid.as_str())
            .map_err(sf)?
            .map(|v| finish_room(v.value(), &*self.room_tails, Some(&*self.messages)))
            .transpose()
    }

    fn room_without_last_message(&self, rid: &RoomId) -> StoreResult<Option<Room>> {
        self.rooms
            .get(rid.as_str())
            .map_err(sf)?
            .map(|v| {
                finish_room(
                    v.value(),
                    &*self.room_tails,
                    None::<&Table<'_, (&str, u64, u64), &[u8]>>,
                )
            })
            .transpose()
    }

    fn room_name_taken(&self, name: &str) -> StoreResult<bool> {
        Ok(Self::by_name(&self.room_names, name)?.is_some())
    }

    /// Through `uid`'s subscriptions (a range of the subscriptions table).
    fn direct_room_of(&self, uid: &UserId, uids: &[UserId]) -> StoreResult<Option<Room>> {
        let mut rids = Vec::new();
        for entry in self.subs.range((uid.as_str(), "")..).map_err(sf)? {
            let (k, _) = entry.map_err(sf)?;
            let (u, r) = k.value();
            if u != uid.as_str() {
                break;
            }
            rids.push(RoomId::from(r));
        }
        for rid in rids {
            if let Some(room) = self.room_without_last_message(&rid)? {
                let mut members = room.uids.clone();
                members.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                if room.t == RoomType::Direct && members == uids {
                    return self.room(&rid);
                }
            }
        }
        Ok(None)
    }

    fn put_renamed_room(&mut self, old: &Room, room: &Room) -> StoreResult<()> {
        if let Some(name) = &old.name {
            let key = name.to_lowercase();
            if Self::by_name(&self.room_names, &key)?.is_some_and(|owner| owner == old.id.as_str()) {
                self.room_names.remove(key.as_str()).map_err(sf)?;
            }
            self.channels.remove((key.as_str(), old.id.as_str())).map_err(sf)?;
        }
        self.put_room(room)
    }

    fn put_room(&mut self, room: &Room) -> StoreResult<()> {
        self.put_room_record(room)?;
        if let Some(name) = &room.name {
            self.index_room_name(name, &room.id)?;
        }
        self.index_channel(room)
    }

    fn sub(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>> {
        self.subs
            .get((uid.as_str(), rid.as_str()))
            .map_err(sf)?
            .map(|v| dec(v.value()))
            .transpose()
    }

    fn put_sub(&mut self, sub: &Subscription) -> StoreResult<()> {
        self.subs
            .insert((sub.u.id.as_str(), sub.rid.as_str()), enc(sub)?.as_slice())
            .map_err(sf)?;
        self.members
            .insert((sub.rid.as_str(), sub.u.id.as_str()), ())
            .map_err(sf)?;
        Ok(())
    }

    fn remove_sub(&mut self, uid: &UserId, rid: &RoomId) -> StoreResult<()> {
        self.subs.remove((uid.as_str(), rid.as_str())).map_err(sf)?;
        self.members.remove((rid.as_str(), uid.as_str())).map_err(sf)?;
        Ok(())
    }

    fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>> {
        members_of(&*self.members, rid)
    }

    fn message(&self, mid: &MessageId) -> StoreResult<Option<Message>> {
        self.message_by_id(mid.as_str())
    }

    fn put_message(&mut self, m: &Message) -> StoreResult<()> {
        let key = message_key(m);
        self.messages.insert(key, enc(m)?.as_slice()).map_err(sf)?;
        self.message_ids.insert(m.id.as_str(), key).map_err(sf)?;
        Ok(())
    }

    fn replace_message(&mut self, old: &Message, new: &Message) -> StoreResult<()> {
        if let Some(key) = edit_key(old) {
            self.edits.remove(key).map_err(sf)?;
        }
        if let Some(key) = edit_key(new) {
            self.edits.insert(key, ()).map_err(sf)?;
        }
        self.put_message(new)
    }

    fn remove_message(&mut self, m: &Message) -> StoreResult<()> {
        self.messages.remove(message_key(m)).map_err(sf)?;
        self.message_ids.remove(m.id.as_str()).map_err(sf)?;
        if let Some(key) = edit_key(m) {
            self.edits.remove(key).map_err(sf)?;
        }
        Ok(())
    }

    fn put_trash(&mut self, trash: &Trash) -> StoreResult<()> {
        let ttl = trash.expires_at.saturating_sub(trash.deleted_at);
        let record = enc(trash)?;
        let (table, scope) = match (trash.kind, &trash.uid) {
            (TrashKind::Message, _) => (&mut self.trash_messages, trash.rid.as_str()),
            (TrashKind::Subscription, Some(uid)) => (&mut self.trash_subs, uid.as_str()),
            (TrashKind::Subscription, None) => {
                return Err(StoreError::Internal(
                    "a removed subscription's record without its user".into(),
                ))
            }
        };
        prune_trash(table, scope, trash.deleted_at.saturating_sub(ttl))?;
        table
            .insert((scope, ts_key(trash.deleted_at), trash.id.as_str()), record.as_slice())
            .map_err(sf)?;
        Ok(())
    }

    fn doc(&self, coll: &str, id: &str) -> StoreResult<Option<serde_json::Value>> {
        self.docs
            .get((coll, id))
            .map_err(sf)?
            .map(|v| dec(v.value()))
            .transpose()
    }

    fn put_doc(&mut self, coll: &str, id: &str, doc: &serde_json::Value) -> StoreResult<()> {
        self.docs.insert((coll, id), enc(doc)?.as_slice()).map_err(sf)?;
        Ok(())
    }

    fn delete_doc(&mut self, coll: &str, id: &str) -> StoreResult<()> {
        self.docs.remove((coll, id)).map_err(sf)?;
        Ok(())
    }

    fn last_message(&self, rid: &RoomId) -> StoreResult<Option<Message>> {
        last_message_in(&*self.messages, rid.as_str())
    }

    /// Only the tail: a new message changes nothing else (its text is the last message).
    fn update_room(&mut self, room: &Room) -> StoreResult<()> {
        self.room_tails.insert(room.id.as_str(), tail_of(room)).map_err(sf)?;
        Ok(())
    }

    fn update_sub(&mut self, sub: &Subscription) -> StoreResult<()> {
        self.subs
            .insert((sub.u.id.as_str(), sub.rid.as_str()), enc(sub)?.as_slice())
            .map_err(sf)?;
        Ok(())
    }

    fn push_change(&mut self, mut change: Change) -> StoreResult<()> {
        self.seq += 1;
        slim_change(&mut change);
        let rec = ChangeRecord { seq: self.seq, change };
        self.changes.insert(self.seq, enc(&rec)?.as_slice()).map_err(sf)?;
        if let Some(appended) = &mut self.appended {
            appended.push(rec);
        }
        Ok(())
    }
}

/// A new message is its room's last message, so its change record carries the text once: the
/// room goes in without `last_message`, and [`restore_change`] puts it back when read.
fn slim_change(change: &mut Change) {
    if let Change::MessageCreated { message, room } = change {
        if room.last_message.as_ref().is_some_and(|m| m.id == message.id) {
            room.last_message = None;
        }
    }
}

/// Undoes [`slim_change`] on a record read from the change log.
pub fn restore_change(change: &mut Change) {
    if let Change::MessageCreated { message, room } = change {
        if room.last_message.is_none() {
            room.last_message = Some(message.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use redb::ReadableDatabase;

    /// A room written before tails existed (counters in the record, no tail) reads back with its
    /// own counters; once a message is stored, the tail and the messages table speak for it.
    #[test]
    fn rooms_without_a_tail_keep_their_counters() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedStore::open_db(dir.path()).unwrap();
        let mut room = crate::app::rules::general_room(1_000);
        room.id = RoomId::from("legacy");
        room.name = Some("legacy".into());
        (room.msgs, room.last_seq, room.lm) = (5, 7, Some(900));
        let txn = db.begin_write().unwrap();
        {
            let mut t = Tables::open(&txn).unwrap();
            t.rooms.insert("legacy", enc(&room).unwrap().as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let read = |db: &redb::Database| super::super::reads::room(db, &room.id).unwrap().unwrap();
        let got = read(&db);
        assert_eq!((got.msgs, got.last_seq, got.lm), (5, 7, Some(900)));
        assert!(got.last_message.is_none());

        let txn = db.begin_write().unwrap();
        {
            let mut t = Tables::open(&txn).unwrap();
            let message = Message {
                id: MessageId::from("m8"),
                rid: room.id.clone(),
                msg: "hi".into(),
                ts: 2_000,
                u: crate::store::UserRef {
                    id: UserId::from("u1"),
                    username: "u1".into(),
                    name: "U1".into(),
                },
                updated_at: 2_000,
                seq: 8,
                t: None,
                tmid: None,
                edited_at: None,
                edited_by: None,
                mentions: Vec::new(),
                extra: Default::default(),
            };
            t.put_message(&message).unwrap();
            (room.msgs, room.last_seq, room.lm) = (6, 8, Some(2_000));
            t.update_room(&room).unwrap();
        }
        txn.commit().unwrap();
        let got = read(&db);
        assert_eq!((got.msgs, got.last_seq, got.lm), (6, 8, Some(2_000)));
        assert_eq!(got.last_message.unwrap().id.as_str(), "m8");
        // The record itself was not rewritten.
        let r = db.begin_read().unwrap();
        let stored: Room = dec(r.open_table(ROOMS).unwrap().get("legacy").unwrap().unwrap().value()).unwrap();
        assert_eq!(stored.msgs, 5);
    }
}
