//! The MongoDB backend's side of `chatd import rocketchat`: bulk upserts into chatd's collections
//! while every chatd host is stopped (refused otherwise: see [`MongoImport::new`]); a starting
//! host loads its routing from the collections. Ids are kept and every write is an upsert, so a
//! second run duplicates nothing (and keeps what chatd owns of a user, see
//! [`crate::import::convert::rerun_user`]). Runs on the importer's thread, which
//! blocks on the store's tokio runtime; up to [`CONCURRENCY`] writes are in flight at once.

use std::collections::{HashMap, HashSet};
use std::future::{Future, IntoFuture};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::FindOptions;
use mongodb::{Collection, Database};

use super::convert::from_doc;
use super::schema::{self, MESSAGES, ROOMS, SUBSCRIPTIONS, TOKENS, USERS};
use super::{describe, MongoStore};
use crate::import::convert::{ImportedUser, Skip};
use crate::import::ImportSink;
use crate::store::{Message, Room, StoreError, StoreResult, Subscription, User};

/// Writes in flight at once.
const CONCURRENCY: usize = 32;
/// Messages inserted per `insertMany`.
const MESSAGE_CHUNK: usize = 10_000;

#[derive(Default)]
struct Tally {
    last_seq: u64,
    msgs: u64,
}

pub struct MongoImport {
    store: Arc<MongoStore>,
    tallies: HashMap<String, Tally>,
    touched: HashSet<String>,
}

impl MongoImport {
    /// Refuses while chatd hosts serve the database: an import writes no change records (hosts
    /// would not route imported memberships), numbers messages from counters live sends also
    /// move, and rewrites whole room documents.
    pub fn new(store: Arc<MongoStore>, at: &str) -> Result<Self, super::MongoOpenError> {
        let running = store.running_hosts().map_err(|e| super::MongoOpenError::Failed {
            at: at.to_owned(),
            reason: e.to_string(),
        })?;
        if !running.is_empty() {
            return Err(super::MongoOpenError::InUse {
                at: at.to_owned(),
                hosts: running.join(", "),
            });
        }
        Ok(Self {
            store,
            tallies: HashMap::new(),
            touched: HashSet::new(),
        })
    }

    fn db(&self) -> Database {
        self.store.reads.db.clone()
    }

    fn run<T>(&self, f: impl Future<Output = mongodb::error::Result<T>>) -> StoreResult<T> {
        self.store.reads.run(f)
    }

    /// Runs every future, at most [`CONCURRENCY`] at a time; the first error fails the call.
    fn run_all<F>(&self, futs: Vec<F>) -> StoreResult<()>
    where
        F: Future<Output = mongodb::error::Result<()>>,
    {
        self.run(async {
            futures::stream::iter(futs)
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ())
        })
    }

    /// Every document of `coll` matching `filter` (only the `projection` fields, when given).
    fn find_all(&self, coll: &str, filter: Document, projection: Option<Document>) -> StoreResult<Vec<Document>> {
        let opts = FindOptions::builder().projection(projection).build();
        self.store.reads.docs(coll, filter, opts)
    }

    fn ids(&self, coll: &str) -> StoreResult<HashSet<String>> {
        let docs = self.find_all(coll, doc! {}, Some(doc! {"_id": 1}))?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }
}

/// Replaces (or inserts) the document `_id` = `id`.
async fn upsert(c: Collection<Document>, id: String, d: Document) -> mongodb::error::Result<()> {
    c.replace_one(doc! {"_id": id}, d).upsert(true).await.map(|_| ())
}

/// `$set` of a record's fields (without `_id`) and `$setOnInsert` of the given keys.
fn upsert_update(mut fields: Document, on_insert: &[&str]) -> Document {
    fields.remove("_id");
    let mut insert = Document::new();
    for k in on_insert {
        if let Some(v) = fields.remove(*k) {
            insert.insert(*k, v);
        }
    }
    let mut update = doc! {"$set": fields};
    if !insert.is_empty() {
        update.insert("$setOnInsert", insert);
    }
    update
}

impl ImportSink for MongoImport {
    fn existing_ids(&mut self) -> StoreResult<(HashSet<String>, HashSet<String>)> {
        Ok((self.ids(USERS)?, self.ids(ROOMS)?))
    }

    fn put_users(&mut self, batch: &[ImportedUser]) -> StoreResult<Vec<Option<Skip>>> {
        let db = self.db();
        let users: Collection<Document> = db.collection(USERS);
        // Who holds each username and email now (another user's keep theirs).
        let names: Vec<String> = batch.iter().map(|u| u.user.username.to_lowercase()).collect();
        let emails: Vec<String> = batch
            .iter()
            .flat_map(|u| u.emails.iter().map(|e| e.to_lowercase()))
            .collect();
        let ids: Vec<&str> = batch.iter().map(|u| u.user.id.as_str()).collect();
        let holders = self.find_all(
            USERS,
            doc! {"$or": [{"_id": {"$in": &ids}}, {"username_lower": {"$in": &names}}, {"emails_lower": {"$in": &emails}}]},
            None,
        )?;
        let mut name_holder: HashMap<String, String> = HashMap::new();
        let mut email_holder: HashMap<String, String> = HashMap::new();
        let mut existing: HashMap<String, User> = HashMap::new();
        for h in &holders {
            let id = h.get_str("_id").unwrap_or_default().to_owned();
            if ids.contains(&id.as_str()) {
                existing.insert(id.clone(), from_doc(h)?);
            }
            if let Ok(n) = h.get_str("username_lower") {
                name_holder.insert(n.to_owned(), id.clone());
            }
            for e in h.get_array("emails_lower").into_iter().flatten() {
                if let Some(e) = e.as_str() {
                    email_holder.insert(e.to_owned(), id.clone());
                }
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        let mut writes = Vec::new();
        for iu in batch {
            let u = &iu.user;
            let lower = u.username.to_lowercase();
            match name_holder.get(&lower) {
                Some(holder) if *holder != u.id.as_str() => {
                    out.push(Some(Skip::new(
                        "username taken by another user (case-insensitive)",
                        format!("{} ({}; held by {})", u.username, u.id, holder),
                    )));
                    continue;
                }
                _ => {}
            }
            name_holder.insert(lower, u.id.0.clone());
            // Emails another user holds stay theirs (as in the embedded store).
            let mine: Vec<String> = iu
                .emails
                .iter()
                .map(|e| e.to_lowercase())
                .filter(|e| email_holder.get(e).is_none_or(|h| h == u.id.as_str()))
                .collect();
            for e in &mine {
                email_holder.insert(e.clone(), u.id.0.clone());
            }
            let mut user = match existing.get(u.id.as_str()) {
                Some(e) => crate::import::convert::rerun_user(u, e),
                None => u.clone(),
            };
            if user.email.as_ref().is_some_and(|e| !mine.contains(&e.to_lowercase())) {
                user.email = None;
            }
            let d = schema::user_doc(&user, &mine)?;
            writes.push(upsert(users.clone(), u.id.0.clone(), d));
            out.push(None);
        }
        self.run_all(writes)?;
        let tokens: Collection<Document> = db.collection(TOKENS);
        let mut writes = Vec::new();
        for (iu, skip) in batch.iter().zip(&out) {
            if skip.is_some() {
                continue;
            }
            for (hash, token) in &iu.tokens {
                writes.push(upsert(tokens.clone(), hash.clone(), schema::token_doc(hash, token)?));
            }
        }
        self.run_all(writes)?;
        Ok(out)
    }

    fn put_rooms(&mut self, batch: &[Room]) -> StoreResult<Vec<Option<String>>> {
        let db = self.db();
        let rooms: Collection<Document> = db.collection(ROOMS);
        let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
        let names: Vec<String> = batch
            .iter()
            .filter_map(|r| r.name.as_ref().map(|n| n.to_lowercase()))
            .collect();
        let found = self.find_all(
            ROOMS,
            doc! {"$or": [{"_id": {"$in": &ids}}, {"name_lower": {"$in": &names}}]},
            None,
        )?;
        let mut existing: HashMap<String, Room> = HashMap::new();
        let mut name_holder: HashMap<String, String> = HashMap::new();
        for d in &found {
            let id = d.get_str("_id").unwrap_or_default().to_owned();
            if let Ok(n) = d.get_str("name_lower") {
                name_holder.insert(n.to_owned(), id.clone());
            }
            if ids.contains(&id.as_str()) {
                existing.insert(id, from_doc(d)?);
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        let mut writes = Vec::new();
        for room in batch {
            let mut room = room.clone();
            if let Some(e) = existing.get(room.id.as_str()) {
                // A re-run: the counters describe messages already imported.
                room.last_seq = e.last_seq;
                room.msgs = e.msgs;
                room.lm = e.lm;
                room.last_message = e.last_message.clone();
                room.users_count = e.users_count;
            }
            let (indexed, warning) = match &room.name {
                Some(name) => {
                    let lower = name.to_lowercase();
                    match name_holder.get(&lower) {
                        Some(holder) if *holder != room.id.as_str() => {
                            (false, Some(format!("room name {name:?} is taken by another room")))
                        }
                        _ => {
                            name_holder.insert(lower, room.id.0.clone());
                            (true, None)
                        }
                    }
                }
                None => (true, None),
            };
            out.push(warning);
            writes.push(upsert(
                rooms.clone(),
                room.id.0.clone(),
                schema::room_doc(&room, indexed)?,
            ));
            self.touched.insert(room.id.0);
        }
        self.run_all(writes)?;
        Ok(out)
    }

    fn put_settings(&mut self, settings: &[(String, serde_json::Value)]) -> StoreResult<()> {
        let docs: Collection<Document> = self.db().collection(schema::DOCS);
        let mut writes = Vec::new();
        for (id, value) in settings {
            let key = schema::doc_key(crate::api::settings::SETTINGS, id);
            let value = mongodb::bson::to_bson(value).map_err(|e| StoreError::Internal(e.to_string()))?;
            writes.push(upsert(docs.clone(), key.clone(), doc! {"_id": key, "value": value}));
        }
        self.run_all(writes)
    }

    fn put_subscriptions(&mut self, batch: &[Subscription]) -> StoreResult<()> {
        let subs: Collection<Document> = self.db().collection(SUBSCRIPTIONS);
        let mut writes = Vec::new();
        for sub in batch {
            // An existing subscription of the user to the room keeps its id.
            let mut update = upsert_update(schema::subscription_doc(sub)?, &[]);
            update.insert("$setOnInsert", doc! {"_id": sub.id.as_str()});
            let subs = subs.clone();
            let key = schema::sub_key(sub.u.id.as_str(), sub.rid.as_str());
            writes.push(async move {
                subs.update_one(key, update)
                    .upsert(true)
                    .into_future()
                    .await
                    .map(|_| ())
            });
            self.touched.insert(sub.rid.0.clone());
        }
        self.run_all(writes)
    }

    fn put_messages(&mut self, mut batch: Vec<Message>) -> StoreResult<u64> {
        batch.sort_unstable_by(|a, b| (a.rid.as_str(), a.ts).cmp(&(b.rid.as_str(), b.ts)));
        let db = self.db();
        let messages: Collection<Document> = db.collection(MESSAGES);
        let rooms: Collection<Document> = db.collection(ROOMS);
        let mut duplicates = 0;
        let mut rest = batch;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(MESSAGE_CHUNK));
            let chunk = std::mem::replace(&mut rest, tail);
            // Ids already stored (a re-run) get no sequence number.
            let ids: Vec<&str> = chunk.iter().map(|m| m.id.as_str()).collect();
            let there = self.find_all(MESSAGES, doc! {"_id": {"$in": &ids}}, Some(doc! {"_id": 1}))?;
            let there: HashSet<&str> = there.iter().filter_map(|d| d.get_str("_id").ok()).collect();
            let mut seen: HashSet<String> = HashSet::new();
            let mut docs = Vec::with_capacity(chunk.len());
            for mut m in chunk {
                if there.contains(m.id.as_str()) || !seen.insert(m.id.0.clone()) {
                    duplicates += 1;
                    continue;
                }
                if !self.tallies.contains_key(m.rid.as_str()) {
                    let existing: Option<Room> = self
                        .run(rooms.find_one(doc! {"_id": m.rid.as_str()}).into_future())?
                        .map(|d| from_doc(&d))
                        .transpose()?;
                    let tally = Tally {
                        last_seq: existing.as_ref().map_or(0, |r| r.last_seq),
                        msgs: existing.as_ref().map_or(0, |r| r.msgs),
                    };
                    self.touched.insert(m.rid.0.clone());
                    self.tallies.insert(m.rid.0.clone(), tally);
                }
                if let Some(tally) = self.tallies.get_mut(m.rid.as_str()) {
                    m.seq = tally.last_seq + 1;
                    tally.last_seq = m.seq;
                    tally.msgs += 1;
                }
                docs.push(schema::message_doc(&m)?);
            }
            if docs.is_empty() {
                continue;
            }
            let result = self
                .store
                .rt
                .block_on(messages.insert_many(docs).ordered(false).into_future());
            match result {
                Ok(_) => {}
                // Inserted by someone else meanwhile: counted as already there.
                Err(e) => match e.kind.as_ref() {
                    ErrorKind::InsertMany(m)
                        if m.write_concern_error.is_none()
                            && m.write_errors
                                .as_ref()
                                .is_some_and(|w| w.iter().all(|w| w.code == schema::DUPLICATE_KEY)) =>
                    {
                        duplicates += m.write_errors.as_ref().map_or(0, |w| w.len() as u64);
                    }
                    _ => return Err(StoreError::Failed(describe(&e))),
                },
            }
        }
        Ok(duplicates)
    }

    fn finish(&mut self) -> StoreResult<()> {
        let db = self.db();
        let rooms: Collection<Document> = db.collection(ROOMS);
        let messages: Collection<Document> = db.collection(MESSAGES);
        let subs: Collection<Document> = db.collection(SUBSCRIPTIONS);
        let touched: Vec<String> = self.touched.drain().collect();
        for rid in touched {
            let Some(found) = self.run(rooms.find_one(doc! {"_id": &rid}).into_future())? else {
                continue;
            };
            let indexed = found.get_str("name_lower").is_ok();
            let mut room: Room = from_doc(&found)?;
            if let Some(tally) = self.tallies.get(&rid) {
                room.last_seq = room.last_seq.max(tally.last_seq);
                room.msgs = room.msgs.max(tally.msgs);
            }
            let opts = FindOptions::builder()
                .projection(doc! {"ts": 1, "_id": 0})
                .sort(doc! {"ts": 1, "seq": 1})
                .build();
            let times: Vec<i64> = self
                .store
                .reads
                .docs(MESSAGES, doc! {"rid": &rid}, opts)?
                .iter()
                .filter_map(|d| d.get_i64("ts").ok())
                .collect();
            let last: Option<Message> = self
                .run(
                    messages
                        .find_one(doc! {"rid": &rid})
                        .sort(doc! {"ts": -1, "seq": -1})
                        .into_future(),
                )?
                .map(|d| from_doc(&d))
                .transpose()?;
            if let Some(last) = last {
                room.lm = Some(last.ts);
                room.last_message = Some(last);
            }
            let members: Vec<Subscription> =
                self.store
                    .reads
                    .many(SUBSCRIPTIONS, doc! {"rid": &rid}, FindOptions::default())?;
            room.users_count = members.len() as u64;
            let mut writes = Vec::new();
            for mut sub in members {
                sub.read_seq = crate::import::convert::imported_read_seq(&sub, room.last_seq, &times);
                let subs = subs.clone();
                writes.push(async move {
                    subs.update_one(
                        doc! {"_id": sub.id.as_str()},
                        doc! {"$set": {"read_seq": sub.read_seq as i64}},
                    )
                    .into_future()
                    .await
                    .map(|_| ())
                });
            }
            self.run_all(writes)?;
            let d = schema::room_doc(&room, indexed)?;
            self.run(rooms.replace_one(doc! {"_id": &rid}, d).into_future())?;
        }
        Ok(())
    }
}
