//! Rocket.Chat documents (users, rooms, subscriptions, messages) to chatd records. Pure; every
//! function answers `Err(reason)` for a document it cannot use, so the importer counts and skips
//! it. Shapes and variants: ../shared/reference/rocketchat-schema.md. Runs on the importer thread.

use bson::{Bson, Document};
use serde_json::{Map, Value};

use crate::auth;
use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{LoginToken, Message, Room, RoomType, Subscription, User, UserRef};

/// A user with their imported login tokens (keyed by chatd's hex SHA-256).
#[derive(Debug)]
pub struct ImportedUser {
    pub user: User,
    /// Every email (the first is `user.email`).
    pub emails: Vec<String>,
    pub tokens: Vec<(String, LoginToken)>,
    /// Tokens dropped because they had expired or were not a Meteor token hash.
    pub tokens_dropped: u64,
}

/// A user imported again (a re-run) who is already in chatd: chatd owns what it may have changed
/// since the first run (a password changed or rehashed to Argon2 at login, roles, deactivation,
/// the chosen status), so those stay; profile fields come from Rocket.Chat again.
pub fn rerun_user(imported: &User, existing: &User) -> User {
    let mut u = imported.clone();
    if existing.password_hash.starts_with("$argon2") || imported.password_hash.is_empty() {
        u.password_hash.clone_from(&existing.password_hash);
    }
    u.roles.clone_from(&existing.roles);
    u.active = existing.active;
    u.status.clone_from(&existing.status);
    u.status_text.clone_from(&existing.status_text);
    u.created_at = existing.created_at;
    u
}

/// Why a document was skipped: a short kind (counted) and a detail (shown for the first few).
#[derive(Debug)]
pub struct Skip {
    pub kind: &'static str,
    pub detail: String,
}

impl Skip {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// A string id: strings as they are, ObjectIds as their hex (rare in Rocket.Chat's data).
fn id_of(v: Option<&Bson>) -> Option<String> {
    match v? {
        Bson::String(s) if !s.is_empty() => Some(s.clone()),
        Bson::ObjectId(o) => Some(o.to_hex()),
        _ => None,
    }
}

fn doc_id(d: &Document) -> Result<String, Skip> {
    id_of(d.get("_id")).ok_or_else(|| Skip::new("no string _id", format!("{:?}", d.get("_id"))))
}

fn str_of<'a>(d: &'a Document, key: &str) -> Option<&'a str> {
    match d.get(key) {
        Some(Bson::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// A date in any encoding Rocket.Chat data carries: BSON datetime, a number of ms, an
/// ISO-8601 string, or Extended JSON `{$date: …}`.
pub fn date_of(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::DateTime(d) => Some(d.timestamp_millis()),
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(f) if f.is_finite() => Some(*f as i64),
        Bson::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_millis()),
        Bson::Document(d) => match d.get("$date") {
            Some(Bson::Document(inner)) => str_of(inner, "$numberLong").and_then(|n| n.parse().ok()),
            other => date_of(other),
        },
        _ => None,
    }
}

fn bool_of(d: &Document, key: &str) -> Option<bool> {
    match d.get(key) {
        Some(Bson::Boolean(b)) => Some(*b),
        _ => None,
    }
}

/// A non-negative count (Rocket.Chat stores counters as int32, int64 or double).
fn count_of(d: &Document, key: &str) -> Option<u64> {
    match d.get(key) {
        Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
        Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
        Some(Bson::Double(f)) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }
}

fn strings_of(v: Option<&Bson>) -> Vec<String> {
    match v {
        Some(Bson::Array(a)) => a
            .iter()
            .filter_map(|x| match x {
                Bson::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The embedded `u` of messages, rooms and subscriptions.
fn user_ref_of(v: Option<&Bson>) -> Option<UserRef> {
    let Some(Bson::Document(u)) = v else { return None };
    let id = id_of(u.get("_id"))?;
    let username = str_of(u, "username").unwrap_or_default().to_owned();
    let name = str_of(u, "name").unwrap_or(&username).to_owned();
    Some(UserRef {
        id: UserId(id),
        username,
        name,
    })
}

/// A BSON value as chatd keeps uninterpreted fields: JSON, with dates as EJSON `{"$date": ms}`.
pub fn bson_to_json(v: &Bson) -> Value {
    match v {
        Bson::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Array(a) => Value::Array(a.iter().map(bson_to_json).collect()),
        Bson::Document(d) => Value::Object(doc_to_json(d)),
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Int32(n) => Value::from(*n),
        Bson::Int64(n) => Value::from(*n),
        Bson::DateTime(d) => serde_json::json!({ "$date": d.timestamp_millis() }),
        Bson::ObjectId(o) => Value::String(o.to_hex()),
        other => other.clone().into_relaxed_extjson(),
    }
}

fn doc_to_json(d: &Document) -> Map<String, Value> {
    d.iter().map(|(k, v)| (k.clone(), bson_to_json(v))).collect()
}

/// `users` → a chatd user with their password hash and resume tokens.
pub fn user(d: &Document, now: i64, token_ttl_ms: i64) -> Result<ImportedUser, Skip> {
    let id = doc_id(d)?;
    let username = str_of(d, "username")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Skip::new("user without username", id.clone()))?
        .to_owned();
    let emails: Vec<String> = match d.get("emails") {
        Some(Bson::Array(list)) => list
            .iter()
            .filter_map(|e| match e {
                Bson::Document(e) => str_of(e, "address").map(str::to_owned),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let services = match d.get("services") {
        Some(Bson::Document(s)) => Some(s),
        _ => None,
    };
    let password_hash = services
        .and_then(|s| s.get_document("password").ok())
        .and_then(|p| str_of(p, "bcrypt"))
        .unwrap_or_default()
        .to_owned();
    let mut tokens = Vec::new();
    let mut tokens_dropped = 0;
    let login_tokens = services
        .and_then(|s| s.get_document("resume").ok())
        .and_then(|r| r.get_array("loginTokens").ok());
    for entry in login_tokens.into_iter().flatten() {
        let Bson::Document(t) = entry else {
            tokens_dropped += 1;
            continue;
        };
        let Some(hash) = str_of(t, "hashedToken").and_then(auth::meteor_token_hash_to_hex) else {
            tokens_dropped += 1;
            continue;
        };
        // Tokens without `when` (personal access tokens, 0.5x REST logins) never expire.
        let (created_at, expires_at) = match date_of(t.get("when")) {
            Some(when) => (when, when.saturating_add(token_ttl_ms)),
            None => (date_of(t.get("createdAt")).unwrap_or(now), i64::MAX),
        };
        if expires_at <= now {
            tokens_dropped += 1;
            continue;
        }
        tokens.push((
            hash,
            LoginToken {
                uid: UserId(id.clone()),
                created_at,
                expires_at,
            },
        ));
    }
    let roles = match d.get("roles") {
        Some(Bson::Array(_)) => strings_of(d.get("roles")),
        _ => vec!["user".to_owned()],
    };
    // Rocket.Chat refuses logins of users that are not `active: true`, and of apps.
    let active = bool_of(d, "active") == Some(true) && str_of(d, "type") != Some("app");
    let status = match str_of(d, "statusDefault") {
        Some(s @ ("online" | "away" | "busy" | "offline")) => s.to_owned(),
        _ => "online".to_owned(),
    };
    let user = User {
        id: UserId(id),
        name: str_of(d, "name")
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(&username)
            .to_owned(),
        username,
        email: emails.first().cloned(),
        password_hash,
        created_at: date_of(d.get("createdAt")).unwrap_or(now),
        status,
        status_text: str_of(d, "statusText").unwrap_or_default().to_owned(),
        roles,
        active,
    };
    Ok(ImportedUser {
        user,
        emails,
        tokens,
        tokens_dropped,
    })
}

/// `rocketchat_room` → a chatd room (counters are recomputed by the store after messages).
pub fn room(d: &Document, now: i64) -> Result<Room, Skip> {
    let id = doc_id(d)?;
    let t = match str_of(d, "t") {
        Some("c") => RoomType::Channel,
        Some("p") => RoomType::Private,
        Some("d") => RoomType::Direct,
        other => return Err(Skip::new("room type not imported", format!("{id}: t={other:?}"))),
    };
    let name = str_of(d, "name").filter(|n| !n.is_empty()).map(str::to_owned);
    if t != RoomType::Direct && name.is_none() {
        return Err(Skip::new("room without name", id));
    }
    let ts = date_of(d.get("ts")).unwrap_or(now);
    Ok(Room {
        id: RoomId(id),
        t,
        fname: str_of(d, "fname").map(str::to_owned).or_else(|| name.clone()),
        name: if t == RoomType::Direct { None } else { name },
        creator: user_ref_of(d.get("u")),
        ts,
        updated_at: date_of(d.get("_updatedAt")).unwrap_or(ts),
        msgs: 0,
        users_count: 0,
        last_seq: 0,
        lm: None,
        last_message: None,
        read_only: bool_of(d, "ro").unwrap_or(false),
        uids: strings_of(d.get("uids")).into_iter().map(UserId).collect(),
        usernames: strings_of(d.get("usernames")),
        topic: str_of(d, "topic").filter(|t| !t.is_empty()).map(str::to_owned),
        announcement: str_of(d, "announcement").filter(|t| !t.is_empty()).map(str::to_owned),
        description: str_of(d, "description").filter(|t| !t.is_empty()).map(str::to_owned),
        archived: bool_of(d, "archived").unwrap_or(false),
    })
}

/// What an imported subscription's `read_seq` holds until the sink has counted its room's
/// messages: Rocket.Chat's own `unread` count, or this when the document has none.
pub const UNREAD_UNKNOWN: u64 = i64::MAX as u64;

/// The read position of an imported subscription once its room's messages are known: the
/// room's last sequence minus Rocket.Chat's own `unread` count (kept as it is: Rocket.Chat does
/// not count the user's own messages), or, when the document had none, minus the messages
/// after the last-seen mark `ls`. `times` are the room's message times in order.
pub fn imported_read_seq(sub: &Subscription, last_seq: u64, times: &[i64]) -> u64 {
    let unread = if sub.read_seq == UNREAD_UNKNOWN {
        let seen = times.partition_point(|ts| *ts <= sub.ls.max(0));
        (times.len() - seen) as u64
    } else {
        sub.read_seq.min(times.len() as u64)
    };
    last_seq.saturating_sub(unread)
}

/// `rocketchat_subscription` → a chatd subscription. Its read position is turned into
/// `read_seq` by the store once the room's messages are in (see [`imported_read_seq`]).
pub fn subscription(d: &Document, now: i64) -> Result<Subscription, Skip> {
    let id = doc_id(d)?;
    let rid = id_of(d.get("rid")).ok_or_else(|| Skip::new("subscription without rid", id.clone()))?;
    let u = user_ref_of(d.get("u")).ok_or_else(|| Skip::new("subscription without u._id", id.clone()))?;
    let t = match str_of(d, "t") {
        Some("p") => RoomType::Private,
        Some("d") => RoomType::Direct,
        _ => RoomType::Channel,
    };
    let ts = date_of(d.get("ts")).unwrap_or(now);
    let name = str_of(d, "name").unwrap_or_default().to_owned();
    Ok(Subscription {
        id,
        rid: RoomId(rid),
        u,
        t,
        fname: str_of(d, "fname").map_or_else(|| name.clone(), str::to_owned),
        name,
        open: bool_of(d, "open").unwrap_or(true),
        ts,
        ls: date_of(d.get("ls")).unwrap_or(ts),
        read_seq: count_of(d, "unread").unwrap_or(UNREAD_UNKNOWN),
        updated_at: date_of(d.get("_updatedAt")).unwrap_or(ts),
        roles: strings_of(d.get("roles")),
        user_mentions: count_of(d, "userMentions").unwrap_or(0),
        group_mentions: count_of(d, "groupMentions").unwrap_or(0),
        alert: bool_of(d, "alert").unwrap_or(false),
        closed_seq: 0,
        tunread: strings_of(d.get("tunread")),
    })
}

/// Message fields chatd interprets or drops; everything else is kept in `extra` as it was.
const MESSAGE_FIELDS: &[&str] = &[
    "_id",
    "rid",
    "msg",
    "ts",
    "u",
    "_updatedAt",
    "t",
    "tmid",
    "editedAt",
    "editedBy",
    "mentions",
    "_hidden",
];

/// `rocketchat_message` → a chatd message (its `seq` is assigned by the store).
pub fn message(d: &Document) -> Result<Message, Skip> {
    let id = doc_id(d)?;
    if bool_of(d, "_hidden") == Some(true) {
        return Err(Skip::new("hidden (edit history or deleted)", id));
    }
    let rid = id_of(d.get("rid")).ok_or_else(|| Skip::new("message without rid", id.clone()))?;
    let ts = date_of(d.get("ts")).ok_or_else(|| Skip::new("message without ts", id.clone()))?;
    let u = user_ref_of(d.get("u")).ok_or_else(|| Skip::new("message without u._id", id.clone()))?;
    let msg = str_of(d, "msg").unwrap_or_default().to_owned();
    let mentions = match d.get("mentions") {
        Some(Bson::Array(list)) => list.iter().filter_map(|m| user_ref_of(Some(m))).collect(),
        _ => Vec::new(),
    };
    let extra = d
        .iter()
        .filter(|(k, _)| !MESSAGE_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), bson_to_json(v)))
        .collect();
    Ok(Message {
        id: MessageId(id),
        rid: RoomId(rid),
        msg,
        ts,
        u,
        updated_at: date_of(d.get("_updatedAt")).unwrap_or(ts),
        seq: 0,
        t: str_of(d, "t").map(str::to_owned),
        tmid: str_of(d, "tmid").map(str::to_owned),
        edited_at: date_of(d.get("editedAt")),
        edited_by: user_ref_of(d.get("editedBy")),
        mentions,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn a_rerun_keeps_what_chatd_owns_of_a_user() {
        let rc = User {
            id: UserId::from("u1"),
            username: "ann".into(),
            name: "Ann Again".into(),
            email: Some("ann@example.org".into()),
            password_hash: "$2b$10$rocketchat".into(),
            created_at: 5,
            status: "offline".into(),
            status_text: String::new(),
            roles: vec!["user".into()],
            active: true,
        };
        let mut chatd = rc.clone();
        chatd.name = "Ann".into();
        chatd.password_hash = "$argon2id$v=19$changed-in-chatd".into();
        chatd.roles = vec!["admin".into(), "user".into()];
        chatd.active = false;
        chatd.status = "away".into();
        chatd.created_at = 1;
        let merged = rerun_user(&rc, &chatd);
        assert_eq!(merged.password_hash, chatd.password_hash);
        assert_eq!(merged.roles, chatd.roles);
        assert!(!merged.active);
        assert_eq!((merged.status.as_str(), merged.created_at), ("away", 1));
        assert_eq!(merged.name, "Ann Again", "the profile comes from Rocket.Chat again");
        // Before any login to chatd (still Rocket.Chat's bcrypt), a password changed in Rocket.Chat
        // between the runs is taken.
        let mut untouched = rc.clone();
        untouched.password_hash = "$2b$10$older".into();
        assert_eq!(rerun_user(&rc, &untouched).password_hash, rc.password_hash);
    }

    #[test]
    fn dates_come_in_every_encoding() {
        let ms = 1_714_550_400_000i64;
        assert_eq!(
            date_of(Some(&Bson::DateTime(bson::DateTime::from_millis(ms)))),
            Some(ms)
        );
        assert_eq!(date_of(Some(&Bson::String("2024-05-01T08:00:00Z".into()))), Some(ms));
        assert_eq!(
            date_of(Some(&Bson::Document(doc! {"$date": {"$numberLong": ms.to_string()}}))),
            Some(ms)
        );
        assert_eq!(date_of(Some(&Bson::Document(doc! {"$date": ms}))), Some(ms));
        assert_eq!(date_of(Some(&Bson::Boolean(true))), None);
    }

    #[test]
    fn users_without_username_or_password_and_odd_tokens() {
        assert_eq!(
            user(&doc! {"_id": "u1"}, 0, 1).unwrap_err().kind,
            "user without username"
        );
        let u = user(
            &doc! {"_id": "u2", "username": "oauth", "active": true, "roles": "admin",
            "services": {"google": {"id": "x"}, "resume": {"loginTokens": ["bare", {"hashedToken": "zz"}]}}},
            0,
            1,
        )
        .unwrap();
        assert!(u.user.password_hash.is_empty());
        assert_eq!(u.user.roles, ["user"]);
        assert_eq!(u.tokens_dropped, 2);
        assert!(u.user.active);
        let app = user(
            &doc! {"_id": "u3", "username": "bot", "active": true, "type": "app"},
            0,
            1,
        )
        .unwrap();
        assert!(!app.user.active);
    }

    #[test]
    fn messages_keep_what_chatd_does_not_interpret() {
        let m = message(&doc! {
            "_id": "m1", "rid": "r1", "msg": "hi", "ts": bson::DateTime::from_millis(5),
            "u": {"_id": "u1", "username": "alice"},
            "reactions": {":+1:": {"usernames": ["bob"]}},
            "attachments": [{"title": "x", "ts": bson::DateTime::from_millis(7)}],
        })
        .unwrap();
        assert_eq!(m.extra["reactions"][":+1:"]["usernames"][0], "bob");
        assert_eq!(m.extra["attachments"][0]["ts"]["$date"], 7);
        assert!(!m.extra.contains_key("msg"));
        assert_eq!(
            message(&doc! {"_id": "m2", "_hidden": true}).unwrap_err().kind,
            "hidden (edit history or deleted)"
        );
    }
}
