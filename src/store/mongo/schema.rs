//! chatd's collections in MongoDB, their indexes, and the document each record is stored as
//! (documented for operators in `deploy/mongodb.md`). A document is the record's own fields
//! (see [`super::convert`]) plus `_id` and the lowercase keys the unique indexes need. Created at
//! start when missing; runs on the store's tokio runtime.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use super::convert::to_doc;
use crate::store::{Change, ChangeRecord, LoginToken, Message, Room, RoomType, StoreResult, Subscription, Trash, User};

pub const USERS: &str = "chatd_users";
pub const TOKENS: &str = "chatd_tokens";
pub const ROOMS: &str = "chatd_rooms";
pub const SUBSCRIPTIONS: &str = "chatd_subscriptions";
pub const MESSAGES: &str = "chatd_messages";
/// The change log: one document per change, inserted in the transaction that made it; the
/// tailers follow its inserts through the change stream.
pub const CHANGES: &str = "chatd_changes";
/// The instances registry: one document per host (keyed by its cluster address) with a
/// heartbeat the host refreshes; readers ignore stale ones by heartbeat age.
pub const INSTANCES: &str = "chatd_instances";
/// Deleted messages and removed subscriptions, kept for syncing clients until `expire_at` (a
/// TTL index removes them then).
pub const TRASH: &str = "chatd_trash";
/// Small documents (settings, push tokens): `_id` is `<collection>:<id>`.
pub const DOCS: &str = "chatd_docs";
/// Every collection chatd creates.
pub const ALL: [&str; 9] = [
    USERS,
    TOKENS,
    ROOMS,
    SUBSCRIPTIONS,
    MESSAGES,
    CHANGES,
    INSTANCES,
    TRASH,
    DOCS,
];
/// Instances whose heartbeat is older than this are deleted by MongoDB (garbage collection only:
/// liveness is judged by heartbeat age when reading).
pub const INSTANCES_TTL: Duration = Duration::from_secs(300);

/// Change documents are only needed until every tailer has read them from the stream (which
/// reads the oplog, not this collection, and gives up on a position older than the oplog
/// anyway): the TTL index removes them after ten minutes, for operators to look at recent ones.
pub const CHANGES_TTL: Duration = Duration::from_secs(600);

/// MongoDB's duplicate-key error (a unique index refused a write).
pub const DUPLICATE_KEY: i32 = 11000;
/// MongoDB's "namespace exists" (creating a collection that is there).
pub const NAMESPACE_EXISTS: i32 = 48;
/// IndexOptionsConflict: an index of that name exists with other options (here: a TTL another
/// chatd version, or an operator's `collMod`, set differently).
pub const INDEX_OPTIONS_CONFLICT: i32 = 85;

fn unique(keys: Document, name: &str, partial: Option<Document>) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_owned())
                .unique(true)
                .partial_filter_expression(partial)
                .build(),
        )
        .build()
}

fn plain(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_owned()).build())
        .build()
}

/// The indexes of each collection (names are stable: creating them again is a no-op).
pub fn indexes() -> Vec<(&'static str, Vec<IndexModel>)> {
    let exists = |field: &str| Some(doc! { field: { "$exists": true } });
    vec![
        (
            USERS,
            vec![
                unique(doc! {"username_lower": 1}, "username_lower", None),
                unique(doc! {"emails_lower": 1}, "emails_lower", exists("emails_lower")),
            ],
        ),
        (TOKENS, vec![plain(doc! {"uid": 1}, "uid")]),
        (
            ROOMS,
            vec![
                unique(doc! {"name_lower": 1}, "name_lower", exists("name_lower")),
                plain(doc! {"t": 1, "name_sort": 1, "_id": 1}, "t_name_sort"),
                // Group direct conversations are found by their members.
                plain(doc! {"uids": 1}, "uids"),
            ],
        ),
        (
            SUBSCRIPTIONS,
            vec![
                unique(doc! {"u.id": 1, "rid": 1}, "uid_rid", None),
                plain(doc! {"rid": 1, "u.id": 1}, "rid_uid"),
            ],
        ),
        (
            MESSAGES,
            vec![
                plain(doc! {"rid": 1, "ts": 1, "seq": 1}, "rid_ts_seq"),
                plain(doc! {"rid": 1, "updated_at": 1}, "rid_updated_at"),
            ],
        ),
        (
            TRASH,
            vec![
                plain(doc! {"kind": 1, "rid": 1, "deleted_at": 1}, "kind_rid_deleted_at"),
                plain(doc! {"kind": 1, "uid": 1, "deleted_at": 1}, "kind_uid_deleted_at"),
                // Per-document expiry: each record carries its own time, so a changed retention
                // never changes the index.
                IndexModel::builder()
                    .keys(doc! {"expire_at": 1})
                    .options(
                        IndexOptions::builder()
                            .name("expire_at_ttl".to_owned())
                            .expire_after(Duration::from_secs(0))
                            .build(),
                    )
                    .build(),
            ],
        ),
        (
            INSTANCES,
            vec![IndexModel::builder()
                .keys(doc! {"heartbeat": 1})
                .options(
                    IndexOptions::builder()
                        .name("heartbeat_ttl".to_owned())
                        .expire_after(INSTANCES_TTL)
                        .build(),
                )
                .build()],
        ),
        (
            CHANGES,
            vec![IndexModel::builder()
                .keys(doc! {"at": 1})
                .options(
                    IndexOptions::builder()
                        .name("at_ttl".to_owned())
                        .expire_after(CHANGES_TTL)
                        .build(),
                )
                .build()],
        ),
    ]
}

/// Creates every collection and index that is missing.
pub async fn ensure(db: &Database) -> mongodb::error::Result<()> {
    let existing = db.list_collection_names().await?;
    for name in ALL {
        if !existing.iter().any(|e| e == name) {
            match db.create_collection(name).await {
                Ok(()) => tracing::info!(collection = name, "created collection"),
                // Another host created it meanwhile.
                Err(e) if super::error_code(&e) == Some(NAMESPACE_EXISTS) => {}
                Err(e) => return Err(e),
            }
        }
    }
    for (name, models) in indexes() {
        let coll = db.collection::<Document>(name);
        match coll.create_indexes(models.clone()).await {
            Err(e) if super::error_code(&e) == Some(INDEX_OPTIONS_CONFLICT) => {
                // Only expiry times ever change: set this version's, then create the rest.
                for (index, ttl) in models.iter().filter_map(ttl_of) {
                    let cmd = doc! {"collMod": name, "index": {"name": &index, "expireAfterSeconds": ttl}};
                    db.run_command(cmd).await?;
                    tracing::info!(collection = name, index, seconds = ttl, "index expiry changed");
                }
                coll.create_indexes(models).await?;
            }
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// The name and expiry (seconds) of a TTL index.
fn ttl_of(model: &IndexModel) -> Option<(String, i64)> {
    let o = model.options.as_ref()?;
    let ttl = i64::try_from(o.expire_after?.as_secs()).ok()?;
    Some((o.name.clone()?, ttl))
}

pub fn user_doc(u: &User, extra_emails: &[String]) -> StoreResult<Document> {
    let mut d = to_doc(u)?;
    d.insert("_id", u.id.as_str());
    d.insert("username_lower", u.username.to_lowercase());
    let mut emails: Vec<String> = u.email.iter().chain(extra_emails).map(|e| e.to_lowercase()).collect();
    emails.sort();
    emails.dedup();
    if !emails.is_empty() {
        d.insert("emails_lower", emails);
    }
    Ok(d)
}

pub fn token_doc(token_hash: &str, t: &LoginToken) -> StoreResult<Document> {
    let mut d = to_doc(t)?;
    d.insert("_id", token_hash);
    Ok(d)
}

/// `indexed_name`: whether the room holds its name in the unique name index (an imported room
/// whose name another room holds keeps it unindexed).
pub fn room_doc(r: &Room, indexed_name: bool) -> StoreResult<Document> {
    let mut d = to_doc(r)?;
    d.insert("_id", r.id.as_str());
    if let Some(name) = &r.name {
        // Listings sort by it; the unique index holds it only when the name is the room's own.
        d.insert("name_sort", name.to_lowercase());
        if indexed_name {
            d.insert("name_lower", name.to_lowercase());
        }
    }
    Ok(d)
}

pub fn subscription_doc(s: &Subscription) -> StoreResult<Document> {
    let mut d = to_doc(s)?;
    d.insert("_id", s.id.as_str());
    Ok(d)
}

pub fn message_doc(m: &Message) -> StoreResult<Document> {
    let mut d = to_doc(m)?;
    d.insert("_id", m.id.as_str());
    Ok(d)
}

/// A change as stored in the change log (`seq` is 0: a change's position is the cluster time
/// of its insert, assigned by the tailer).
///
/// A new or edited message that is its room's last one is stored once: the room's copy is left
/// out and `last_is_message` says so (the feed puts it back, [`restore_last_message`]), which
/// halves what each message adds to the oplog.
pub fn change_doc(record: &ChangeRecord, host: &str, now_ms: i64) -> StoreResult<Document> {
    let at = Bson::DateTime(mongodb::bson::DateTime::from_millis(now_ms));
    if let Change::MessageCreated { message, room } | Change::MessageUpdated { message, room } = &record.change {
        if room.last_message.as_ref().is_some_and(|m| m.id == message.id) {
            let mut slim = to_doc(record)?;
            if let Some(Bson::Document(change)) = slim.get_mut("change") {
                for (_, body) in change.iter_mut() {
                    if let Some(Bson::Document(r)) = body.as_document_mut().and_then(|b| b.get_mut("room")) {
                        r.insert("last_message", Bson::Null);
                    }
                }
            }
            return Ok(doc! {"at": at, "host": host, "last_is_message": true, "record": slim});
        }
    }
    Ok(doc! {"at": at, "host": host, "record": to_doc(record)?})
}

/// Puts back the room's last message left out by [`change_doc`].
pub fn restore_last_message(record: &mut ChangeRecord) {
    if let Change::MessageCreated { message, room } | Change::MessageUpdated { message, room } = &mut record.change {
        if room.last_message.is_none() {
            room.last_message = Some(message.clone());
        }
    }
}

/// A deletion record: its fields, a `_id` unique per kind and thing, and the expiry date the
/// TTL index reads.
pub fn trash_doc(t: &Trash) -> StoreResult<Document> {
    let mut d = to_doc(t)?;
    d.insert("_id", format!("{:?}:{}", t.kind, t.id));
    d.insert(
        "expire_at",
        Bson::DateTime(mongodb::bson::DateTime::from_millis(t.expires_at)),
    );
    Ok(d)
}

/// Key of a small document.
pub fn doc_key(coll: &str, id: &str) -> String {
    format!("{coll}:{id}")
}

/// Filter of one subscription.
pub fn sub_key(uid: &str, rid: &str) -> Document {
    doc! {"u.id": uid, "rid": rid}
}

/// Filter of the public channels.
pub fn channels_filter() -> Document {
    doc! {"t": RoomType::Channel.code()}
}
