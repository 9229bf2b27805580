//! JSON shapes of stored objects as Rocket.Chat clients read them. DDP carries dates as EJSON
//! `{"$date": ms}`, REST as ISO-8601 strings; [`Dates`] picks one. Pure; any thread.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
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
    serde_json::to_value(WireMessage(m, d)).unwrap_or(Value::Null)
}

/// A message as clients read it, serialized straight to JSON text (no intermediate [`Value`]):
/// the fields Rocket.Chat sends, then the fields kept from an import (reactions, attachments,
/// …) with their dates in this door's form; an imported field of the same name takes the place
/// of the base one.
pub struct WireMessage<'a>(pub &'a Message, pub Dates);

impl Serialize for WireMessage<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (m, d) = (self.0, self.1);
        let mut o = Fields {
            map: s.serialize_map(None)?,
            base: Vec::with_capacity(13),
            extra: &m.extra,
            d,
        };
        o.put("_id", &m.id)?;
        o.put("rid", &m.rid)?;
        o.put("msg", &m.msg)?;
        o.put("ts", &Date(m.ts, d))?;
        o.put("u", &Ref(&m.u, true))?;
        o.put("_updatedAt", &Date(m.updated_at, d))?;
        o.put("urls", &[(); 0])?;
        o.put("mentions", &Mentions(&m.mentions))?;
        o.put("channels", &[(); 0])?;
        if let Some(t) = &m.t {
            o.put("t", t)?;
        }
        if let Some(tmid) = &m.tmid {
            o.put("tmid", tmid)?;
        }
        if let Some(at) = m.edited_at {
            o.put("editedAt", &Date(at, d))?;
        }
        if let Some(by) = &m.edited_by {
            o.put("editedBy", &Ref(by, false))?;
        }
        for (k, v) in &m.extra {
            if !o.base.contains(&k.as_str()) {
                o.map.serialize_entry(k, &WithDates(v, d))?;
            }
        }
        o.map.end()
    }
}

/// A message's base fields as they are written: each replaced by an imported field of its name.
struct Fields<'a, M> {
    map: M,
    base: Vec<&'static str>,
    extra: &'a Map<String, Value>,
    d: Dates,
}

impl<M: SerializeMap> Fields<'_, M> {
    fn put<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), M::Error> {
        self.base.push(key);
        match self.extra.get(key) {
            Some(kept) => self.map.serialize_entry(key, &WithDates(kept, self.d)),
            None => self.map.serialize_entry(key, v),
        }
    }
}

/// A date in the door's form.
struct Date(i64, Dates);

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.1 {
            Dates::Ejson => {
                let mut o = s.serialize_map(Some(1))?;
                o.serialize_entry("$date", &self.0)?;
                o.end()
            }
            Dates::Iso => s.serialize_str(&iso(self.0)),
        }
    }
}

/// `{_id, username, name}` (with `name` when the flag says so).
struct Ref<'a>(&'a UserRef, bool);

impl Serialize for Ref<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut o = s.serialize_map(None)?;
        o.serialize_entry("_id", &self.0.id)?;
        o.serialize_entry("username", &self.0.username)?;
        if self.1 {
            o.serialize_entry("name", &self.0.name)?;
        }
        o.end()
    }
}

struct Mentions<'a>(&'a [UserRef]);

impl Serialize for Mentions<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut list = s.serialize_seq(Some(self.0.len()))?;
        for u in self.0 {
            list.serialize_element(&Mention(u))?;
        }
        list.end()
    }
}

struct Mention<'a>(&'a UserRef);

impl Serialize for Mention<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut o = s.serialize_map(Some(4))?;
        o.serialize_entry("_id", &self.0.id)?;
        o.serialize_entry("username", &self.0.username)?;
        o.serialize_entry("name", &self.0.name)?;
        o.serialize_entry("type", "user")?;
        o.end()
    }
}

/// A kept value with every EJSON date `{"$date": ms}` inside in the door's form.
struct WithDates<'a>(&'a Value, Dates);

impl Serialize for WithDates<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(o) => match (o.len(), o.get("$date").and_then(Value::as_i64)) {
                (1, Some(ms)) => Date(ms, self.1).serialize(s),
                _ => {
                    let mut map = s.serialize_map(Some(o.len()))?;
                    for (k, v) in o {
                        map.serialize_entry(k, &WithDates(v, self.1))?;
                    }
                    map.end()
                }
            },
            Value::Array(a) => {
                let mut list = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    list.serialize_element(&WithDates(v, self.1))?;
                }
                list.end()
            }
            other => other.serialize(s),
        }
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
    for (key, text) in [
        ("topic", &r.topic),
        ("announcement", &r.announcement),
        ("description", &r.description),
    ] {
        if let Some(text) = text {
            o.insert(key.into(), json!(text));
        }
    }
    if r.archived {
        o.insert("archived".into(), json!(true));
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
        "active": u.active,
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
    serde_json::to_value(WireSubscription(s, r, d)).unwrap_or(Value::Null)
}

/// A subscription as clients read it, serialized straight to JSON text (a new message sends one
/// to every member listening, each with their own counters).
pub struct WireSubscription<'a>(pub &'a Subscription, pub &'a Room, pub Dates);

impl Serialize for WireSubscription<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let (s, r, d) = (self.0, self.1, self.2);
        let unread = r.last_seq.saturating_sub(s.read_seq).min(r.msgs);
        let alert = s.alert || unread > 0 || s.user_mentions > 0 || s.group_mentions > 0;
        // Rocket.Chat opens every other member's subscription when a message arrives
        // (`setOpenForRoomIdExcludingUserId`): a direct message created closed for its
        // recipient shows up in their room list with the first message. Derived here, as
        // unread is, instead of written per message.
        // A room the user hid shows again with the next message after it was hidden.
        let open = s.open || (unread > 0 && r.last_seq > s.closed_seq);
        let mut o = ser.serialize_map(Some(16))?;
        o.serialize_entry("_id", &s.id)?;
        o.serialize_entry("rid", &s.rid)?;
        o.serialize_entry("u", &Ref(&s.u, true))?;
        o.serialize_entry("t", s.t.code())?;
        o.serialize_entry("name", &s.name)?;
        o.serialize_entry("fname", &s.fname)?;
        o.serialize_entry("open", &open)?;
        o.serialize_entry("alert", &alert)?;
        o.serialize_entry("unread", &unread)?;
        o.serialize_entry("userMentions", &s.user_mentions)?;
        o.serialize_entry("groupMentions", &s.group_mentions)?;
        o.serialize_entry("tunread", &s.tunread)?;
        o.serialize_entry("ts", &Date(s.ts, d))?;
        o.serialize_entry("ls", &Date(s.ls, d))?;
        o.serialize_entry("_updatedAt", &Date(s.updated_at.max(r.updated_at), d))?;
        o.serialize_entry("roles", &s.roles)?;
        o.end()
    }
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

    /// Every field in its place, an imported field replacing the base one of its name where that
    /// one stands, other imported fields after, dates inside them in the door's form.
    #[test]
    fn messages_render_every_field_once_in_order() {
        let who = |id: &str| UserRef {
            id: id.into(),
            username: format!("{id}-name"),
            name: id.to_uppercase(),
        };
        let extra = json!({
            "reactions": {":+1:": {"usernames": ["b-name"]}},
            "urls": [{"url": "https://x"}],
            "attachments": [{"ts": {"$date": 5}, "title": "t"}],
        });
        let m = Message {
            id: "m1".into(),
            rid: "r1".into(),
            msg: "hi @b-name".into(),
            ts: 1,
            u: who("a"),
            updated_at: 3,
            seq: 1,
            t: Some("uj".into()),
            tmid: Some("m0".into()),
            edited_at: Some(2),
            edited_by: Some(who("a")),
            mentions: vec![who("b")],
            extra: extra.as_object().cloned().unwrap_or_default(),
        };
        let ejson = r#"{"_id":"m1","rid":"r1","msg":"hi @b-name","ts":{"$date":1},"u":{"_id":"a","username":"a-name","name":"A"},"_updatedAt":{"$date":3},"urls":[{"url":"https://x"}],"mentions":[{"_id":"b","username":"b-name","name":"B","type":"user"}],"channels":[],"t":"uj","tmid":"m0","editedAt":{"$date":2},"editedBy":{"_id":"a","username":"a-name"},"reactions":{":+1:":{"usernames":["b-name"]}},"attachments":[{"ts":{"$date":5},"title":"t"}]}"#;
        assert_eq!(serde_json::to_string(&WireMessage(&m, Dates::Ejson)).unwrap(), ejson);
        assert_eq!(message(&m, Dates::Ejson).to_string(), ejson);
        let iso_form = serde_json::to_string(&WireMessage(&m, Dates::Iso)).unwrap();
        assert!(iso_form.contains(r#""ts":"1970-01-01T00:00:00.001Z""#), "{iso_form}");
        assert!(
            iso_form.contains(r#""attachments":[{"ts":"1970-01-01T00:00:00.005Z","title":"t"}]"#),
            "{iso_form}"
        );
    }

    #[test]
    fn subscriptions_carry_their_own_counters() {
        let u = UserRef {
            id: "u1".into(),
            username: "ann".into(),
            name: "Ann".into(),
        };
        let mut room = crate::app::rules::general_room(1_000);
        (room.last_seq, room.msgs, room.updated_at) = (10, 9, 5_000);
        let sub = Subscription {
            id: "s1".into(),
            rid: room.id.clone(),
            u,
            t: RoomType::Channel,
            name: "general".into(),
            fname: "general".into(),
            open: true,
            ts: 1_000,
            ls: 2_000,
            read_seq: 7,
            updated_at: 3_000,
            roles: vec!["owner".into()],
            user_mentions: 2,
            group_mentions: 0,
            alert: false,
            closed_seq: 0,
            tunread: vec!["m1".into()],
        };
        let v: Value =
            serde_json::from_str(&serde_json::to_string(&WireSubscription(&sub, &room, Dates::Ejson)).unwrap())
                .unwrap();
        assert_eq!(v["unread"], 3);
        assert_eq!(v["userMentions"], 2);
        assert_eq!(v["tunread"], json!(["m1"]));
        assert_eq!(v["alert"], true);
        assert_eq!(v["_updatedAt"], json!({"$date": 5_000}));
        assert_eq!(v["u"], json!({"_id": "u1", "username": "ann", "name": "Ann"}));
        assert_eq!(subscription(&sub, &room, Dates::Iso)["ls"], "1970-01-01T00:00:02.000Z");
        let read = Subscription {
            read_seq: 10,
            user_mentions: 0,
            ..sub
        };
        assert_eq!(subscription(&read, &room, Dates::Ejson)["alert"], false);
        // A closed subscription (a direct message's recipient) opens with an unread message.
        let closed = Subscription { open: false, ..read };
        assert_eq!(subscription(&closed, &room, Dates::Ejson)["open"], false);
        let behind = Subscription { read_seq: 9, ..closed };
        assert_eq!(subscription(&behind, &room, Dates::Ejson)["open"], true);
    }
}
