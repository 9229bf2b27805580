//! JSON shapes of stored objects as Rocket.Chat clients read them. DDP carries dates as EJSON
//! `{"$date": ms}`, REST as ISO-8601 strings; [`Dates`] picks one. Pure; any thread.

use serde_json::{json, Map, Value};

use crate::store::{Message, Room, RoomType, Subscription, User, UserRef};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dates {
    /// `{"$date": ms}` (DDP).
    Ejson,
    /// `"2016-12-09T12:50:51.555Z"` (REST).
    Iso,
}

impl Dates {
    pub fn date(self, ms: i64) -> Value {
        match self {
            Dates::Ejson => json!({ "$date": ms }),
            Dates::Iso => Value::String(iso(ms)),
        }
    }
}

pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Parses a date parameter: EJSON `{"$date": ms}`, a number of ms, or an ISO-8601 string.
pub fn parse_date(v: &Value) -> Option<i64> {
    match v {
        Value::Object(o) => o.get("$date").and_then(Value::as_f64).map(|f| f as i64),
        Value::Number(n) => n.as_f64().map(|f| f as i64),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| d.timestamp_millis())
            .ok()
            .or_else(|| s.parse::<i64>().ok()),
        _ => None,
    }
}

pub fn user_ref(u: &UserRef) -> Value {
    json!({ "_id": u.id, "username": u.username, "name": u.name })
}

pub fn message(m: &Message, d: Dates) -> Value {
    let mut o = Map::new();
    o.insert("_id".into(), json!(m.id));
    o.insert("rid".into(), json!(m.rid));
    o.insert("msg".into(), json!(m.msg));
    o.insert("ts".into(), d.date(m.ts));
    o.insert("u".into(), user_ref(&m.u));
    o.insert("_updatedAt".into(), d.date(m.updated_at));
    o.insert("urls".into(), json!([]));
    o.insert(
        "mentions".into(),
        Value::Array(
            m.mentions
                .iter()
                .map(|u| json!({"_id": u.id, "username": u.username, "name": u.name, "type": "user"}))
                .collect(),
        ),
    );
    o.insert("channels".into(), json!([]));
    if let Some(t) = &m.t {
        o.insert("t".into(), json!(t));
    }
    if let Some(tmid) = &m.tmid {
        o.insert("tmid".into(), json!(tmid));
    }
    if let Some(at) = m.edited_at {
        o.insert("editedAt".into(), d.date(at));
    }
    if let Some(by) = &m.edited_by {
        o.insert("editedBy".into(), json!({"_id": by.id, "username": by.username}));
    }
    // Fields kept as they were (imported reactions, attachments, …), dates in this door's form.
    for (k, v) in &m.extra {
        o.insert(k.clone(), with_dates(v, d));
    }
    Value::Object(o)
}

/// `v` with every EJSON date `{"$date": ms}` inside rendered as `d` asks.
fn with_dates(v: &Value, d: Dates) -> Value {
    match v {
        Value::Object(o) => match (o.len(), o.get("$date").and_then(Value::as_i64)) {
            (1, Some(ms)) => d.date(ms),
            _ => Value::Object(o.iter().map(|(k, v)| (k.clone(), with_dates(v, d))).collect()),
        },
        Value::Array(a) => Value::Array(a.iter().map(|v| with_dates(v, d)).collect()),
        other => other.clone(),
    }
}

pub fn room(r: &Room, d: Dates) -> Value {
    let mut o = Map::new();
    o.insert("_id".into(), json!(r.id));
    o.insert("t".into(), json!(r.t.code()));
    if let Some(name) = &r.name {
        o.insert("name".into(), json!(name));
    }
    if let Some(fname) = &r.fname {
        o.insert("fname".into(), json!(fname));
    }
    if let Some(u) = &r.creator {
        o.insert("u".into(), json!({"_id": u.id, "username": u.username, "name": u.name}));
    }
    o.insert("ts".into(), d.date(r.ts));
    o.insert("_updatedAt".into(), d.date(r.updated_at));
    o.insert("msgs".into(), json!(r.msgs));
    o.insert("usersCount".into(), json!(r.users_count));
    if let Some(lm) = r.lm {
        o.insert("lm".into(), d.date(lm));
    }
    if let Some(m) = &r.last_message {
        o.insert("lastMessage".into(), message(m, d));
    }
    o.insert("ro".into(), json!(r.read_only));
    o.insert("sysMes".into(), json!(true));
    o.insert("default".into(), json!(r.id.as_str() == crate::store::GENERAL_ROOM_ID));
    if r.t == RoomType::Direct {
        o.insert("uids".into(), json!(r.uids));
        o.insert("usernames".into(), json!(r.usernames));
    }
    Value::Object(o)
}

/// A user as REST returns it (`users.info`, `me`, `login`). `private` adds what only the user
/// themself may see (emails, settings).
pub fn user(u: &User, status: &str, d: Dates, private: bool) -> Value {
    let mut v = json!({
        "_id": u.id,
        "type": "user",
        "username": u.username,
        "name": u.name,
        "status": status,
        "statusText": u.status_text,
        "active": true,
        "roles": u.roles,
        "utcOffset": 0,
        "createdAt": d.date(u.created_at),
    });
    if private {
        if let Value::Object(o) = &mut v {
            let emails: Vec<Value> = u
                .email
                .iter()
                .map(|e| json!({"address": e, "verified": false}))
                .collect();
            o.insert("emails".into(), Value::Array(emails));
            o.insert("statusConnection".into(), json!(status));
            o.insert("settings".into(), json!({"preferences": {}}));
        }
    }
    v
}

/// A subscription; unread is derived from the room's sequence (O(1), no per-message writes).
pub fn subscription(s: &Subscription, r: &Room, d: Dates) -> Value {
    let unread = r.last_seq.saturating_sub(s.read_seq).min(r.msgs);
    json!({
        "_id": s.id,
        "rid": s.rid,
        "u": {"_id": s.u.id, "username": s.u.username, "name": s.u.name},
        "t": s.t.code(),
        "name": s.name,
        "fname": s.fname,
        "open": s.open,
        "alert": unread > 0,
        "unread": unread,
        "userMentions": 0,
        "groupMentions": 0,
        "ts": d.date(s.ts),
        "ls": d.date(s.ls),
        "_updatedAt": d.date(s.updated_at.max(r.updated_at)),
        "roles": s.roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_in_every_client_form() {
        assert_eq!(parse_date(&json!({"$date": 1700000000123i64})), Some(1700000000123));
        assert_eq!(parse_date(&json!(5)), Some(5));
        assert_eq!(parse_date(&json!("2023-11-14T22:13:20.123Z")), Some(1700000000123));
        assert_eq!(iso(1700000000123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_date(&json!(null)), None);
    }
}
