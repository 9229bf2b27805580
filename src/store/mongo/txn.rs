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
use super::schema::{self, CHANGES, DOCS, MESSAGES, ROOMS, SUBSCRIPTIONS, TOKENS, TRASH, USERS};
use crate::app::rules::Txn;
use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{
    Change, ChangeRecord, LoginToken, Message, Room, StoreError, StoreResult, Subscription, Trash, User,
};

pub struct MongoTxn<'a> {
    rt: &'a Handle,
    db: &'a Database,
    session: RefCell<&'a mut ClientSession>,
    /// Name of this host, recorded with each change (for operators reading the log).
    host: &'a str,
    now: i64,
    /// Changes written in this transaction.
    pub pushed: usize,
    /// The driver error behind the last failure, kept for the writer's retry decision.
    pub last_error: RefCell<Option<mongodb::error::Error>>,
}

impl<'a> MongoTxn<'a> {
    pub fn new(rt: &'a Handle, db: &'a Database, session: &'a mut ClientSession, host: &'a str, now: i64) -> Self {
        Self {
            rt,
            db,
            session: RefCell::new(session),
            host,
            now,
            pushed: 0,
            last_error: RefCell::new(None),
        }
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Runs one driver call to completion (never cancelled: the driver's futures must not be
    /// dropped midway), keeping its error for the writer.
    fn run<T, F: IntoFuture<Output = mongodb::error::Result<T>>>(&self, f: F) -> StoreResult<T> {
        self.rt.block_on(f.into_future()).map_err(|e| {
            let failure = StoreError::Failed(super::describe(&e));
            *self.last_error.borrow_mut() = Some(e);
            failure
        })
    }

    fn find_one(&self, coll: &str, filter: Document) -> StoreResult<Option<Document>> {
        let c = self.coll(coll);
        let mut s = self.session.borrow_mut();
        self.run(c.find_one(filter).session(&mut **s))
    }

    fn exists(&self, coll: &str, filter: Document) -> StoreResult<bool> {
        let c = self.coll(coll);
        let mut s = self.session.borrow_mut();
        let opts = FindOneOptions::builder().projection(doc! {"_id": 1}).build();
        Ok(self
            .run(c.find_one(filter).with_options(opts).session(&mut **s))?
            .is_some())
    }

    fn decoded<T: serde::de::DeserializeOwned>(&self, coll: &str, filter: Document) -> StoreResult<Option<T>> {
        self.find_one(coll, filter)?.map(|d| from_doc(&d)).transpose()
    }

    fn replace(&self, coll: &str, id: &str, doc: Document) -> StoreResult<()> {
        let c = self.coll(coll);
        let mut s = self.session.borrow_mut();
        self.run(c.replace_one(doc! {"_id": id}, doc).upsert(true).session(&mut **s))?;
        Ok(())
    }

    /// Sets the record's fields; `on_insert` fields (index keys that never change) only when
    /// the document is new.
    fn upsert_fields(&self, coll: &str, id: &str, mut fields: Document, on_insert: Document) -> StoreResult<()> {
        fields.remove("_id");
        let mut update = doc! {"$set": fields};
        if !on_insert.is_empty() {
            update.insert("$setOnInsert", on_insert);
        }
        let c = self.coll(coll);
        let mut s = self.session.borrow_mut();
        self.run(c.update_one(doc! {"_id": id}, update).upsert(true).session(&mut **s))?;
        Ok(())
    }

    fn delete(&self, coll: &str, filter: Document) -> StoreResult<()> {
        let c = self.coll(coll);
        let mut s = self.session.borrow_mut();
        self.run(c.delete_one(filter).session(&mut **s))?;
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
        self.decoded(USERS, doc! {"_id": uid.as_str()})
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
        self.replace(TRASH, &id, d)
    }

    fn doc(&self, coll: &str, id: &str) -> StoreResult<Option<serde_json::Value>> {
        let found = self.find_one(DOCS, doc! {"_id": schema::doc_key(coll, id)})?;
        Ok(found
            .and_then(|d| d.get("value").cloned())
            .map(|b| b.into_relaxed_extjson()))
    }

    fn put_doc(&mut self, coll: &str, id: &str, value: &serde_json::Value) -> StoreResult<()> {
        let key = schema::doc_key(coll, id);
        let value = mongodb::bson::to_bson(value).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.replace(DOCS, &key, doc! {"_id": key.as_str(), "value": value})
    }

    fn delete_doc(&mut self, coll: &str, id: &str) -> StoreResult<()> {
        self.delete(DOCS, doc! {"_id": schema::doc_key(coll, id)})
    }

    fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        self.decoded(USERS, doc! {"username_lower": username.to_lowercase()})
    }

    fn email_taken(&self, email: &str) -> StoreResult<bool> {
        self.exists(USERS, doc! {"emails_lower": email.to_lowercase()})
    }

    fn put_user(&mut self, user: &User) -> StoreResult<()> {
        let (fields, on_insert) = split_keys(schema::user_doc(user, &[])?, &["username_lower", "emails_lower"]);
        self.upsert_fields(USERS, user.id.as_str(), fields, on_insert)
    }

    fn put_token(&mut self, token_hash: &str, token: &LoginToken) -> StoreResult<()> {
        self.replace(TOKENS, token_hash, schema::token_doc(token_hash, token)?)
    }

    fn delete_token(&mut self, token_hash: &str) -> StoreResult<()> {
        self.delete(TOKENS, doc! {"_id": token_hash})
    }

    fn delete_tokens_of(&mut self, uid: &UserId) -> StoreResult<u64> {
        let c = self.coll(TOKENS);
        let mut s = self.session.borrow_mut();
        Ok(self
            .run(c.delete_many(doc! {"uid": uid.as_str()}).session(&mut **s))?
            .deleted_count)
    }

    fn room(&self, rid: &RoomId) -> StoreResult<Option<Room>> {
        self.decoded(ROOMS, doc! {"_id": rid.as_str()})
    }

    fn room_name_taken(&self, name: &str) -> StoreResult<bool> {
        self.exists(ROOMS, doc! {"name_lower": name.to_lowercase()})
    }

    fn put_room(&mut self, room: &Room) -> StoreResult<()> {
        let (fields, on_insert) = split_keys(schema::room_doc(room, true)?, &["name_lower"]);
        self.upsert_fields(ROOMS, room.id.as_str(), fields, on_insert)
    }

    fn sub(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>> {
        self.decoded(SUBSCRIPTIONS, schema::sub_key(uid.as_str(), rid.as_str()))
    }

    fn put_sub(&mut self, sub: &Subscription) -> StoreResult<()> {
        self.replace(SUBSCRIPTIONS, &sub.id, schema::subscription_doc(sub)?)
    }

    fn remove_sub(&mut self, uid: &UserId, rid: &RoomId) -> StoreResult<()> {
        self.delete(SUBSCRIPTIONS, schema::sub_key(uid.as_str(), rid.as_str()))
    }

    fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>> {
        let c = self.coll(SUBSCRIPTIONS);
        let mut s = self.session.borrow_mut();
        let mut cursor = self.run(
            c.find(doc! {"rid": rid.as_str()})
                .projection(doc! {"u.id": 1, "_id": 0})
                .session(&mut **s),
        )?;
        let mut out = Vec::new();
        while let Some(d) = self.run(async { cursor.next(&mut s).await.transpose() })? {
            if let Ok(id) = d.get_document("u").and_then(|u| u.get_str("id")) {
                out.push(UserId::from(id));
            }
        }
        Ok(out)
    }

    fn message(&self, mid: &MessageId) -> StoreResult<Option<Message>> {
        self.decoded(MESSAGES, doc! {"_id": mid.as_str()})
    }

    fn put_message(&mut self, m: &Message) -> StoreResult<()> {
        self.replace(MESSAGES, m.id.as_str(), schema::message_doc(m)?)
    }

    fn remove_message(&mut self, m: &Message) -> StoreResult<()> {
        self.delete(MESSAGES, doc! {"_id": m.id.as_str()})
    }

    fn last_message(&self, rid: &RoomId) -> StoreResult<Option<Message>> {
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
        let c = self.coll(CHANGES);
        {
            let mut s = self.session.borrow_mut();
            self.run(c.insert_one(doc).session(&mut **s))?;
        }
        self.pushed += 1;
        Ok(())
    }
}
