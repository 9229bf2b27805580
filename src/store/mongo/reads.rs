//! The MongoDB backend's reads: each a query (or two) on the primary with majority read concern
//! (the client's defaults), blocking on the store's tokio runtime. Runs on store-side threads
//! (the reader pool, the CLI), never on a shard and never on a runtime thread.

use std::collections::HashMap;
use std::future::IntoFuture;

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::FindOptions;
use mongodb::{Collection, Database};
use tokio::runtime::Handle;

use super::convert::{from_doc, mark_of};
use super::schema::{self, DOCS, MESSAGES, ROOMS, SUBSCRIPTIONS, TOKENS, TRASH, USERS};
use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{
    HistoryQuery, LoginToken, Mark, Message, Room, StoreError, StoreResult, Subscription, Trash, TrashKind, User,
};

/// `text` with every regular-expression metacharacter escaped (matched literally).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$-/#&~ ".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Most ids asked for in one `$in` query.
const IN_CHUNK: usize = 1000;

pub struct Reads {
    pub rt: Handle,
    pub db: Database,
}

impl Reads {
    /// Runs one driver call to completion on the store's runtime (never cancelled).
    pub(super) fn run<T>(&self, f: impl IntoFuture<Output = mongodb::error::Result<T>>) -> StoreResult<T> {
        self.rt
            .block_on(f.into_future())
            .map_err(|e| StoreError::Failed(super::describe(&e)))
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    fn one<T: serde::de::DeserializeOwned>(&self, coll: &str, filter: Document) -> StoreResult<Option<T>> {
        let c = self.coll(coll);
        self.run(c.find_one(filter))?.map(|d| from_doc(&d)).transpose()
    }

    /// Every document of `coll` matching `filter`, as raw documents.
    pub(super) fn docs(&self, coll: &str, filter: Document, opts: FindOptions) -> StoreResult<Vec<Document>> {
        let c = self.coll(coll);
        self.run(async { c.find(filter).with_options(opts).await?.try_collect().await })
    }

    pub(super) fn many<T: serde::de::DeserializeOwned>(
        &self,
        coll: &str,
        filter: Document,
        opts: FindOptions,
    ) -> StoreResult<Vec<T>> {
        self.docs(coll, filter, opts)?.iter().map(from_doc).collect()
    }

    pub fn user(&self, uid: &UserId) -> StoreResult<Option<User>> {
        self.one(USERS, doc! {"_id": uid.as_str()})
    }

    pub fn users(&self, uids: &[UserId]) -> StoreResult<Vec<User>> {
        let mut found: HashMap<String, User> = HashMap::new();
        for chunk in uids.chunks(IN_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|u| u.as_str()).collect();
            for u in self.many::<User>(USERS, doc! {"_id": {"$in": ids}}, FindOptions::default())? {
                found.insert(u.id.0.clone(), u);
            }
        }
        Ok(uids.iter().filter_map(|u| found.get(u.as_str()).cloned()).collect())
    }

    pub fn all_users(&self) -> StoreResult<Vec<User>> {
        let opts = FindOptions::builder().sort(doc! {"_id": 1}).build();
        self.many(USERS, doc! {}, opts)
    }

    /// A case-insensitive regular expression of the escaped term on `username_lower` and
    /// `name`, in username order.
    pub fn users_matching(&self, term: Option<&str>, limit: usize) -> StoreResult<Vec<User>> {
        let filter = match term {
            None => doc! {},
            Some(term) => {
                let pattern = regex_escape(&term.to_lowercase());
                doc! {"$or": [
                    {"username_lower": {"$regex": &pattern}},
                    {"name": {"$regex": &pattern, "$options": "i"}},
                ]}
            }
        };
        let opts = FindOptions::builder()
            .sort(doc! {"username_lower": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .build();
        self.many(USERS, filter, opts)
    }

    pub fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        self.one(USERS, doc! {"username_lower": username.to_lowercase()})
    }

    pub fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.one(USERS, doc! {"emails_lower": email.to_lowercase()})
    }

    pub fn user_by_token_hash(&self, token_hash: &str, now: i64) -> StoreResult<Option<(User, LoginToken)>> {
        let Some(token): Option<LoginToken> = self.one(TOKENS, doc! {"_id": token_hash})? else {
            return Ok(None);
        };
        if token.expires_at <= now {
            return Ok(None);
        }
        Ok(self.user(&token.uid)?.map(|u| (u, token)))
    }

    pub fn room(&self, rid: &RoomId) -> StoreResult<Option<Room>> {
        self.one(ROOMS, doc! {"_id": rid.as_str()})
    }

    pub fn room_by_name(&self, name: &str) -> StoreResult<Option<Room>> {
        self.one(ROOMS, doc! {"name_lower": name.to_lowercase()})
    }

    pub fn subscription(&self, uid: &UserId, rid: &RoomId) -> StoreResult<Option<Subscription>> {
        self.one(SUBSCRIPTIONS, schema::sub_key(uid.as_str(), rid.as_str()))
    }

    pub fn subscriptions_of(&self, uid: &UserId) -> StoreResult<Vec<(Subscription, Room)>> {
        let subs: Vec<Subscription> = self.many(SUBSCRIPTIONS, doc! {"u.id": uid.as_str()}, FindOptions::default())?;
        let mut rooms: HashMap<String, Room> = HashMap::new();
        for chunk in subs.chunks(IN_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|s| s.rid.as_str()).collect();
            for r in self.many::<Room>(ROOMS, doc! {"_id": {"$in": ids}}, FindOptions::default())? {
                rooms.insert(r.id.0.clone(), r);
            }
        }
        Ok(subs
            .into_iter()
            .filter_map(|s| rooms.get(s.rid.as_str()).cloned().map(|r| (s, r)))
            .collect())
    }

    fn pairs(&self, filter: Document) -> StoreResult<Vec<(RoomId, UserId)>> {
        let opts = FindOptions::builder()
            .projection(doc! {"rid": 1, "u.id": 1, "_id": 0})
            .build();
        Ok(self
            .docs(SUBSCRIPTIONS, filter, opts)?
            .iter()
            .filter_map(|d| {
                let rid = d.get_str("rid").ok()?;
                let uid = d.get_document("u").ok()?.get_str("id").ok()?;
                Some((RoomId::from(rid), UserId::from(uid)))
            })
            .collect())
    }

    pub fn members(&self, rid: &RoomId) -> StoreResult<Vec<UserId>> {
        Ok(self
            .pairs(doc! {"rid": rid.as_str()})?
            .into_iter()
            .map(|(_, u)| u)
            .collect())
    }

    pub fn all_memberships(&self) -> StoreResult<Vec<(RoomId, UserId)>> {
        self.pairs(Document::new())
    }

    pub fn channels_page(&self, offset: usize, count: usize) -> StoreResult<(Vec<Room>, u64)> {
        let c = self.coll(ROOMS);
        let total = self.run(c.count_documents(schema::channels_filter()))?;
        if count == 0 {
            return Ok((Vec::new(), total));
        }
        let opts = FindOptions::builder()
            .sort(doc! {"name_sort": 1, "_id": 1})
            .skip(offset as u64)
            .limit(i64::try_from(count).unwrap_or(i64::MAX))
            .build();
        Ok((self.many(ROOMS, schema::channels_filter(), opts)?, total))
    }

    pub fn message(&self, mid: &MessageId) -> StoreResult<Option<Message>> {
        self.one(MESSAGES, doc! {"_id": mid.as_str()})
    }

    /// As the embedded store: newest first; without `count_total` the count is exact up to one
    /// past the page (enough to say whether there is more).
    pub fn history(&self, rid: &RoomId, q: &HistoryQuery) -> StoreResult<(Vec<Message>, u64)> {
        let mut ts = Document::new();
        if let Some(o) = q.oldest {
            ts.insert(if q.inclusive { "$gte" } else { "$gt" }, o);
        }
        if let Some(l) = q.latest {
            ts.insert(if q.inclusive { "$lte" } else { "$lt" }, l);
        }
        let mut filter = doc! {"rid": rid.as_str()};
        if !ts.is_empty() {
            filter.insert("ts", ts);
        }
        if q.skip_thread_replies {
            filter.insert(
                "$or",
                vec![doc! {"tmid": {"$exists": false}}, doc! {"extra.tshow": true}],
            );
        }
        let opts = FindOptions::builder()
            .sort(doc! {"ts": -1, "seq": -1})
            .skip(q.offset)
            .limit(i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX))
            .build();
        let mut page: Vec<Message> = self.many(MESSAGES, filter.clone(), opts)?;
        let total = if q.count_total {
            let c = self.coll(MESSAGES);
            self.run(c.count_documents(filter))?
        } else {
            q.offset + page.len() as u64
        };
        page.truncate(q.limit);
        Ok((page, total))
    }

    /// The user's subscriptions, and the cluster time the read saw (a causally consistent
    /// session's operation time): changes after it are not in the answer.
    pub fn memberships_of(&self, uid: &UserId) -> StoreResult<(Vec<Subscription>, Mark)> {
        let c = self.coll(SUBSCRIPTIONS);
        let filter = doc! {"u.id": uid.as_str()};
        let (docs, mark) = self.run(async {
            let mut session = self.db.client().start_session().await?;
            let mut cursor = c.find(filter).session(&mut session).await?;
            let mut docs = Vec::new();
            while let Some(d) = cursor.next(&mut session).await {
                docs.push(d?);
            }
            Ok((docs, session.operation_time().map_or(0, mark_of)))
        })?;
        let subs = docs.iter().map(from_doc).collect::<StoreResult<Vec<Subscription>>>()?;
        Ok((subs, mark))
    }

    /// Messages of a room changed after `after`, by their last change.
    pub fn messages_updated(&self, rid: &RoomId, after: i64, limit: usize) -> StoreResult<Vec<Message>> {
        let opts = FindOptions::builder()
            .sort(doc! {"updated_at": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .build();
        self.many(MESSAGES, doc! {"rid": rid.as_str(), "updated_at": {"$gt": after}}, opts)
    }

    fn trash(&self, filter: Document, limit: usize) -> StoreResult<Vec<Trash>> {
        let opts = FindOptions::builder()
            .sort(doc! {"deleted_at": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .build();
        self.many(TRASH, filter, opts)
    }

    pub fn deleted_messages(&self, rid: &RoomId, after: i64, limit: usize) -> StoreResult<Vec<Trash>> {
        let kind = format!("{:?}", TrashKind::Message);
        self.trash(
            doc! {"kind": kind, "rid": rid.as_str(), "deleted_at": {"$gt": after}},
            limit,
        )
    }

    pub fn removed_subscriptions(&self, uid: &UserId, after: i64, limit: usize) -> StoreResult<Vec<Trash>> {
        let kind = format!("{:?}", TrashKind::Subscription);
        self.trash(
            doc! {"kind": kind, "uid": uid.as_str(), "deleted_at": {"$gt": after}},
            limit,
        )
    }

    pub fn doc(&self, coll: &str, id: &str) -> StoreResult<Option<serde_json::Value>> {
        let c = self.coll(DOCS);
        let found = self.run(c.find_one(doc! {"_id": schema::doc_key(coll, id)}))?;
        Ok(found
            .and_then(|d| d.get("value").cloned())
            .map(|b| b.into_relaxed_extjson()))
    }
}
