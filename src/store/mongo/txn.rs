//! [`MongoTxn`]: the chat rules' record access ([`Txn`]) inside one MongoDB multi-document
//! transaction. Every read and write goes through the writer's session, so reads see the
//! transaction's own writes and the whole group commits (or aborts) at once. Runs on the MongoDB
//! writer thread, which blocks on the store's tokio runtime for each call (it is not a runtime
//! thread, so blocking there is allowed).

use std::cell::RefCell;
use std::future::IntoFuture;

use mongodb::bson::{doc, Document};
use mongodb::options::FindOneOptions;
use mongodb::{ClientSession, Collection, Database};
use tokio::runtime::Handle;

use super::convert::from_doc;
use super::schema::{self, DOCS, MESSAGES, ROOMS, SUBSCRIPTIONS, TOKENS, TRASH, USERS};
use super::work::{self, Work};
use crate::app::rules::Txn;
use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{
    Change, ChangeRecord, LoginToken, Message, Room, StoreError, StoreResult, Subscription, Trash, User, WriteOp,
};

pub struct MongoTxn<'a> {
    rt: &'a Handle,
    db: &'a Database,
    session: RefCell<&'a mut ClientSession>,
    /// Name of this host, recorded with each change (for operators reading the log).
    host: &'a str,
    now: i64,
    /// What the transaction has read and written, until [`MongoTxn::flush`].
    work: RefCell<Work>,
    /// Changes written in this transaction.
    pub pushed: usize,
    /// Write commands sent to the server so far (none: a read-only transaction).
    pub sent: std::cell::Cell<usize>,
    /// The driver error behind the last failure, kept for the writer's retry decision.
    pub last_error: RefCell<Option<mongodb::error::Error>>,
}

/// Largest change document accepted: its change event (the document plus some 300 bytes) must
/// stay under MongoDB's 16 MiB limit, or no host could read past it.
pub const MAX_CHANGE_BYTES: usize = 15 * 1024 * 1024;

impl<'a> MongoTxn<'a> {
    pub fn new(rt: &'a Handle, db: &'a Database, session: &'a mut ClientSession, host: &'a str, now: i64) -> Self {
        Self {
            rt,
            db,
            session: RefCell::new(session),
            host,
            now,
            work: RefCell::new(Work::default()),
            pushed: 0,
            sent: std::cell::Cell::new(0),
            last_error: RefCell::new(None),
        }
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    fn fail(&self, e: mongodb::error::Error) -> StoreError {
        let failure = StoreError::Failed(super::describe(&e));
        *self.last_error.borrow_mut() = Some(e);
        failure
    }

    /// Runs one driver call to completion (never cancelled: the driver's futures must not be
    /// dropped midway), keeping its error for the writer.
    fn run<T, F: IntoFuture<Output = mongodb::error::Result<T>>>(&self, f: F) -> StoreResult<T> {
        self.rt.block_on(f.into_future()).map_err(|e| self.fail(e))
    }

    /// Every document of `coll` matching `filter`, in the transaction.
    fn find_all(&self, coll: &str, filter: Document, projection: Option<Document>) -> StoreResult<Vec<Document>> {
        let c = self.coll(coll);
        let mut s = self.session.borrow_mut();
        let opts = mongodb::options::FindOptions::builder().projection(projection).build();
        let mut cursor = self.run(c.find(filter).with_options(opts).session(&mut **s))?;
        let mut out = Vec::new();
        while let Some(d) = self.run(async { cursor.next(&mut s).await.transpose() })? {
            out.push(d);
        }
        Ok(out)
    }

    /// Sends `coll`'s pending writes (before a query that must see them).
    fn flush_coll(&self, coll: &'static str) -> StoreResult<()> {
        let commands = self.work.borrow_mut().take_commands(coll);
        self.send(commands)
    }

    /// Sends every pending write: called once, before the commit.
    pub fn flush(&self) -> StoreResult<()> {
        let commands = self.work.borrow_mut().take_all_commands();
        self.send(commands)
    }

    fn send(&self, commands: Vec<Document>) -> StoreResult<()> {
        for cmd in commands {
            let mut s = self.session.borrow_mut();
            let reply = self.run(self.db.run_command(cmd).session(&mut **s))?;
            self.sent.set(self.sent.get() + 1);
            work::check_reply(&reply).map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// The document `id` of `coll` (a by-key collection), from the transaction's view.
    fn by_id(&self, coll: &'static str, id: &str) -> StoreResult<Option<Document>> {
        if let Some(known) = self.work.borrow().get(coll, id) {
            return Ok(known.cloned());
        }
        let found = {
            let c = self.coll(coll);
            let mut s = self.session.borrow_mut();
            self.run(c.find_one(doc! {"_id": id}).session(&mut **s))?
        };
        self.work.borrow_mut().loaded(coll, id, found.clone());
        Ok(found)
    }

    fn decoded<T: serde::de::DeserializeOwned>(&self, coll: &'static str, id: &str) -> StoreResult<Option<T>> {
        self.by_id(coll, id)?.map(|d| from_doc(&d)).transpose()
    }

    /// Whether a document matches `filter` (a query: `coll`'s pending writes are sent first).
    fn exists(&self, coll: &'static str, filter: Document) -> StoreResult<bool> {
        self.flush_coll(coll)?;
        let c = self.coll(coll);
        let mut s = self.session.borrow_mut();
        let opts = FindOneOptions::builder().projection(doc! {"_id": 1}).build();
        Ok(self
            .run(c.find_one(filter).with_options(opts).session(&mut **s))?
            .is_some())
    }

    /// `$set` of the record's fields; `on_insert` keys (index keys that never change) only when
    /// the document is new.
    fn upsert_fields(&self, coll: &'static str, id: &str, fields: Document, on_insert: Document) -> StoreResult<()> {
        if self.work.borrow().get(coll, id).is_none() {
            self.by_id(coll, id)?;
        }
        self.work
            .borrow_mut()
            .set_fields(coll, id, fields, on_insert)
            .map_err(|_| StoreError::Internal(format!("{coll} {id} was not loaded before its update")))
    }

    /// Reads, in as few round trips as there are collections, what `ops` will read by key: the
    /// rooms, senders, their subscriptions and re-sent message ids of a group of sends and reads.
    pub fn prefetch(&self, ops: &[&WriteOp]) -> StoreResult<()> {
        let mut rooms: Vec<&str> = Vec::new();
        let mut users: Vec<&str> = Vec::new();
        let mut messages: Vec<&str> = Vec::new();
        let mut subs: Vec<(&str, &str)> = Vec::new();
        for op in ops {
            match op {
                WriteOp::SendMessage { uid, rid, id, .. } => {
                    rooms.push(rid.as_str());
                    users.push(uid.as_str());
                    subs.push((uid.as_str(), rid.as_str()));
                    if let Some(id) = id {
                        messages.push(id.as_str());
                    }
                }
                WriteOp::MarkRead { uid, rid } => {
                    rooms.push(rid.as_str());
                    subs.push((uid.as_str(), rid.as_str()));
                }
                _ => {}
            }
        }
        for (coll, mut ids) in [(ROOMS, rooms), (USERS, users), (MESSAGES, messages)] {
            ids.sort_unstable();
            ids.dedup();
            ids.retain(|id| self.work.borrow().get(coll, id).is_none());
            if ids.len() < 2 {
                // One document is read when it is needed, as without a prefetch.
                continue;
            }
            let found = self.find_all(coll, doc! {"_id": {"$in": &ids}}, None)?;
            let mut work = self.work.borrow_mut();
            let mut missing: std::collections::HashSet<&str> = ids.iter().copied().collect();
            for d in found {
                if let Ok(id) = d.get_str("_id") {
                    let id = id.to_owned();
                    missing.remove(id.as_str());
                    work.loaded(coll, &id, Some(d));
                }
            }
            for id in missing {
                work.loaded(coll, id, None);
            }
        }
        subs.sort_unstable();
        subs.dedup();
        subs.retain(|(u, r)| self.work.borrow().sub(u, r).is_none());
        if subs.len() >= 2 {
            let filter: Vec<Document> = subs.iter().map(|(u, r)| schema::sub_key(u, r)).collect();
            let found = self.find_all(SUBSCRIPTIONS, doc! {"$or": filter}, None)?;
            let mut work = self.work.borrow_mut();
            for d in found {
                if let Some((u, r)) = d
                    .get_document("u")
                    .ok()
                    .and_then(|u| u.get_str("id").ok())
                    .zip(d.get_str("rid").ok())
                    .map(|(u, r)| (u.to_owned(), r.to_owned()))
                {
                    work.sub_loaded(&u, &r, Some(d));
                }
            }
            for (u, r) in subs {
                if work.sub(u, r).is_none() {
                    work.sub_loaded(u, r, None);
                }
            }
        }
        Ok(())
    }
}

/// Splits the index keys (`keys`) out of a stored document, for `$setOnInsert`.
fn split_keys(mut doc: Document, keys: &[&str]) -> (Document, Document) {
    let mut on_insert = Document::new();
    for k in keys {
        if let Some(v) = doc.remove(*k) {
            on_insert.insert(*k, v);
        }
    }
    (doc, on_insert)
}

impl Txn for MongoTxn<'_> {
    fn user(&self, uid: &UserId) -> StoreResult<Option<User>> {
        self.decoded(USERS, uid.as_str())
    }

    fn has_users(&self) -> StoreResult<bool> {
        self.exists(USERS, doc! {})
    }

    fn put_trash(&mut self, trash: &Trash) -> StoreResult<()> {
        let d = schema::trash_doc(trash)?;
        let id = d
            .get_str("_id")
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .to_owned();
        self.work.get_mut().put(TRASH, &id, d);
        Ok(())
    }

    fn doc(&self, coll: &str, id: &str) -> StoreResult<Option<serde_json::Value>> {
        let found = self.by_id(DOCS, &schema::doc_key(coll, id))?;
        Ok(found
            .and_then(|d| d.get("value").cloned())
            .map(|b| b.into_relaxed_extjson()))
    }

    fn put_doc(&mut self, coll: &str, id: &str, value: &serde_json::Value) -> StoreResult<()> {
        let key = schema::doc_key(coll, id);
        let value = mongodb::bson::to_bson(value).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.work.get_mut().put(DOCS, &key, doc! {"value": value});
        Ok(())
    }

    fn delete_doc(&mut self, coll: &str, id: &str) -> StoreResult<()> {
        self.work.get_mut().delete(DOCS, &schema::doc_key(coll, id));
        Ok(())
    }

    fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        self.flush_coll(USERS)?;
        let found = {
            let c = self.coll(USERS);
            let mut s = self.session.borrow_mut();
            self.run(
                c.find_one(doc! {"username_lower": username.to_lowercase()})
                    .session(&mut **s),
            )?
        };
        match found {
            Some(d) => {
                if let Ok(id) = d.get_str("_id") {
                    self.work.borrow_mut().loaded(USERS, id, Some(d.clone()));
                }
                from_doc(&d).map(Some)
            }
            None => Ok(None),
        }
    }

    fn email_taken(&self, email: &str) -> StoreResult<bool> {
        self.exists(USERS, doc! {"emails_lower": email.to_lowercase()})
    }

    fn put_user(&mut self, user: &User) -> StoreResult<()> {
        let (fields, on_insert) = split_keys(schema::user_doc(user, &[])?, &["username_lower", "emails_lower"]);
        self.upsert_fields(USERS, user.id.as_str(), fields, on_insert)
    }

    fn put_token(&mut self, token_hash: &str, token: &LoginToken) -> StoreResult<()> {
        let d = schema::token_doc(token_hash, token)?;
        self.work.get_mut().put(TOKENS, token_hash, d);
        Ok(())
    }

    fn delete_token(&mut self, token_hash: &str) -> StoreResult<()> {
        self.work.get_mut().delete(TOKENS, token_hash);
        Ok(())
    }

    fn delete_tokens_of(&mut self, uid: &UserId) -> StoreResult<u64> {
        self.flush_coll(TOKENS)?;
        let deleted = {
            let c = self.coll(TOKENS);
            let mut s = self.session.borrow_mut();
            self.run(c.delete_many(doc! {"uid": uid.as_str()}).session(&mut **s))?
                .deleted_count
        };
        self.sent.set(self.sent.get() + 1);
        self.work.get_mut().forget(TOKENS);
        Ok(deleted)
    }

    fn room(&self, rid: &RoomId) -> StoreResult<Option<Room>> {
        self.decoded(ROOMS, rid.as_str())
    }

    fn room_name_taken(&self, name: &str) -> StoreResult<bool> {
        self.exists(ROOMS, doc! {"name_lower": name.to_lowercase()})
    }

    fn put_room(&mut self, room: &Room) -> StoreResult<()> {
        let (fields, on_insert) = split_keys(schema::room_doc(room, true)?, &["name_lower"]);
        self.upsert_fields(ROOMS, room.id.as_str(), fields, on_insert)
    }

    /// A query on the rooms' `uids` (indexed): exactly these members, in any order.
    fn direct_room_of(&self, _uid: &UserId, uids: &[UserId]) -> StoreResult<Option<Room>> {
        self.flush_coll(ROOMS)?;
        let ids: Vec<&str> = uids.iter().map(|u| u.as_str()).collect();
        let filter = doc! {"t": "d", "uids": {"$all": &ids, "$size": ids.len() as i64}};
        let found = self.find_all(ROOMS, filter, Some(doc! {"_id": 1}))?;
        match found.first().and_then(|d| d.get_str("_id").ok()) {
            Some(id) => self.room(&RoomId::from(id)),
            None => Ok(None),
        }
    }

    /// The name index key is written with the rest (it is insert-only for other updates).
    fn put_renamed_room(&mut self, _old: &Room, room: &Room) -> StoreResult<()> {
        self.upsert_fields(ROOMS, room.id.as_str(), schema::room_doc(room, true)?, Document::new())
    }

    fn sub(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>> {
        let known = self.work.borrow().sub(uid.as_str(), rid.as_str()).map(|d| d.cloned());
        let found = match known {
            Some(d) => d,
            None => {
                let found = {
                    let c = self.coll(SUBSCRIPTIONS);
                    let mut s = self.session.borrow_mut();
                    self.run(
                        c.find_one(schema::sub_key(uid.as_str(), rid.as_str()))
                            .session(&mut **s),
                    )?
                };
                self.work
                    .borrow_mut()
                    .sub_loaded(uid.as_str(), rid.as_str(), found.clone());
                found
            }
        };
        found.map(|d| from_doc(&d)).transpose()
    }

    fn put_sub(&mut self, sub: &Subscription) -> StoreResult<()> {
        let d = schema::subscription_doc(sub)?;
        self.work.get_mut().put(SUBSCRIPTIONS, &sub.id, d);
        Ok(())
    }

    fn remove_sub(&mut self, uid: &UserId, rid: &RoomId) -> StoreResult<()> {
        if let Some(sub) = self.sub(uid, rid)? {
            self.work.get_mut().delete(SUBSCRIPTIONS, &sub.id);
        }
        Ok(())
    }

    fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>> {
        self.flush_coll(SUBSCRIPTIONS)?;
        let docs = self.find_all(
            SUBSCRIPTIONS,
            doc! {"rid": rid.as_str()},
            Some(doc! {"u.id": 1, "_id": 0}),
        )?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get_document("u").and_then(|u| u.get_str("id")).ok())
            .map(UserId::from)
            .collect())
    }

    fn message(&self, mid: &MessageId) -> StoreResult<Option<Message>> {
        self.decoded(MESSAGES, mid.as_str())
    }

    fn put_message(&mut self, m: &Message) -> StoreResult<()> {
        let d = schema::message_doc(m)?;
        self.work.get_mut().put(MESSAGES, m.id.as_str(), d);
        Ok(())
    }

    fn remove_message(&mut self, m: &Message) -> StoreResult<()> {
        self.work.get_mut().delete(MESSAGES, m.id.as_str());
        Ok(())
    }

    fn last_message(&self, rid: &RoomId) -> StoreResult<Option<Message>> {
        self.flush_coll(MESSAGES)?;
        let c = self.coll(MESSAGES);
        let mut s = self.session.borrow_mut();
        let found = self.run(
            c.find_one(doc! {"rid": rid.as_str()})
                .sort(doc! {"ts": -1, "seq": -1})
                .session(&mut **s),
        )?;
        found.map(|d| from_doc(&d)).transpose()
    }

    fn push_change(&mut self, change: Change) -> StoreResult<()> {
        let record = ChangeRecord { seq: 0, change };
        let doc = schema::change_doc(&record, self.host, self.now)?;
        let size = mongodb::bson::to_vec(&doc).map_or(usize::MAX, |v| v.len());
        if size > MAX_CHANGE_BYTES {
            // Not a refusal by the rules (the request has written already): the request fails,
            // alone (the writer retries a failed group one request at a time).
            return Err(StoreError::Internal(format!(
                "a change of {size} bytes is over the {MAX_CHANGE_BYTES}-byte limit"
            )));
        }
        self.work.get_mut().push_change(doc);
        self.pushed += 1;
        Ok(())
    }
}
