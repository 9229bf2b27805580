//! Conversions between chatd's records and BSON, pure and unit-tested: records travel through
//! their serde JSON form (the same form the embedded store keeps), so both backends store the
//! same fields. EJSON dates (`{"$date": ms}`, used inside imported message fields) become real
//! BSON dates and come back the same way. Also marks ↔ BSON timestamps. Runs on store-side threads only.

use mongodb::bson::{self, Bson, Document, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::store::{Mark, StoreError, StoreResult};

/// Deepest nesting converted; deeper values are refused (a record is never this deep).
const MAX_DEPTH: usize = 64;

/// A JSON value as BSON: integers that fit become Int64, other numbers Double, `{"$date": n}`
/// a BSON date.
pub fn json_to_bson(v: &Value) -> StoreResult<Bson> {
    json_to_bson_at(v, 0)
}

fn json_to_bson_at(v: &Value, depth: usize) -> StoreResult<Bson> {
    if depth > MAX_DEPTH {
        return Err(StoreError::Internal("a record nests too deeply for BSON".into()));
    }
    Ok(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Bson::Int64(i),
            // Above i64::MAX: keep the value, losing only precision.
            (None, Some(u)) => Bson::Double(u as f64),
            (None, None) => Bson::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(
            items
                .iter()
                .map(|i| json_to_bson_at(i, depth + 1))
                .collect::<StoreResult<_>>()?,
        ),
        Value::Object(map) => {
            if let (1, Some(Value::Number(ms))) = (map.len(), map.get("$date")) {
                if let Some(ms) = ms.as_i64() {
                    return Ok(Bson::DateTime(bson::DateTime::from_millis(ms)));
                }
            }
            let mut doc = Document::new();
            for (k, v) in map {
                doc.insert(k.clone(), json_to_bson_at(v, depth + 1)?);
            }
            Bson::Document(doc)
        }
    })
}

/// A BSON value as JSON (the inverse of [`json_to_bson`]; other BSON types become their
/// closest JSON form: timestamps and ids as strings, binary as hex).
pub fn bson_to_json(v: &Bson) -> Value {
    bson_to_json_at(v, 0)
}

fn bson_to_json_at(v: &Bson, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match v {
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(d) => Number::from_f64(*d).map_or(Value::Null, Value::Number),
        Bson::String(s) | Bson::Symbol(s) => Value::String(s.clone()),
        Bson::Array(items) => Value::Array(items.iter().map(|i| bson_to_json_at(i, depth + 1)).collect()),
        Bson::Document(doc) => Value::Object(doc_to_json_map(doc, depth + 1)),
        Bson::DateTime(d) => {
            let mut m = Map::new();
            m.insert("$date".into(), Value::from(d.timestamp_millis()));
            Value::Object(m)
        }
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        Bson::Timestamp(ts) => Value::from(mark_of(*ts)),
        Bson::Decimal128(d) => Value::String(d.to_string()),
        Bson::Binary(b) => Value::String(hex::encode(&b.bytes)),
        other => Value::String(other.to_string()),
    }
}

fn doc_to_json_map(doc: &Document, depth: usize) -> Map<String, Value> {
    doc.iter()
        .map(|(k, v)| (k.clone(), bson_to_json_at(v, depth)))
        .collect()
}

/// A record as a BSON document (its serde JSON form, converted).
pub fn to_doc<T: Serialize>(record: &T) -> StoreResult<Document> {
    let json = serde_json::to_value(record).map_err(|e| StoreError::Internal(format!("encoding a record: {e}")))?;
    match json_to_bson(&json)? {
        Bson::Document(d) => Ok(d),
        _ => Err(StoreError::Internal("a record did not encode as a document".into())),
    }
}

/// A record from a stored document. Fields chatd adds for its indexes (`_id`, `*_lower`) are
/// ignored by the record types. A document that does not decode is chatd's fault.
pub fn from_doc<T: DeserializeOwned>(doc: &Document) -> StoreResult<T> {
    let json = Value::Object(doc_to_json_map(doc, 0));
    match serde_json::from_value(json.clone()) {
        Ok(v) => Ok(v),
        // A document an operator edited by hand: mongosh stores `{$set: {msgs: 5}}` as a
        // double and `new Date()` as a BSON date where chatd keeps integers. Read those as the
        // integers they mean rather than failing every write that touches the document.
        Err(first) => serde_json::from_value(lenient(json))
            .map_err(|_| StoreError::Internal(format!("decoding a stored document: {first}"))),
    }
}

/// `json` with integral floats as integers and `{"$date": ms}` as `ms`.
fn lenient(json: Value) -> Value {
    match json {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(lenient).collect()),
        Value::Object(map) => {
            if let (1, Some(Value::Number(ms))) = (map.len(), map.get("$date")) {
                if let Some(ms) = ms.as_i64() {
                    return Value::from(ms);
                }
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, lenient(v))).collect())
        }
        other => other,
    }
}

/// The mark of a cluster time: seconds in the high half, the increment in the low half, so marks
/// order as the timestamps do.
pub fn mark_of(ts: Timestamp) -> Mark {
    (u64::from(ts.time) << 32) | u64::from(ts.increment)
}

/// Seconds of a mark made by [`mark_of`].
pub fn mark_seconds(mark: Mark) -> u64 {
    mark >> 32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ids::{MessageId, RoomId, UserId};
    use crate::store::{Message, UserRef};
    use serde_json::json;

    #[test]
    fn records_round_trip_with_dates_as_bson_dates() {
        let mut extra = Map::new();
        extra.insert(
            "attachments".into(),
            json!([{"title": "a.png", "ts": {"$date": 1_700_000_000_123_i64}, "size": 1.5}]),
        );
        let m = Message {
            id: MessageId::from("m1"),
            rid: RoomId::from("r1"),
            msg: "hi $date".into(),
            ts: 1_700_000_000_000,
            u: UserRef {
                id: UserId::from("u1"),
                username: "ann".into(),
                name: "Ann".into(),
            },
            updated_at: 1_700_000_000_000,
            seq: u64::from(u32::MAX) + 7,
            t: None,
            tmid: Some("m0".into()),
            edited_at: None,
            edited_by: None,
            mentions: vec![],
            extra,
        };
        let doc = to_doc(&m).unwrap();
        let ts = doc.get_document("extra").unwrap().get_array("attachments").unwrap()[0]
            .as_document()
            .unwrap()
            .get("ts")
            .unwrap()
            .clone();
        assert_eq!(ts, Bson::DateTime(bson::DateTime::from_millis(1_700_000_000_123)));
        assert_eq!(doc.get_i64("seq").unwrap(), i64::from(u32::MAX) + 7);
        let back: Message = from_doc(&doc).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&m).unwrap());
    }

    #[test]
    fn stored_documents_with_extra_fields_still_decode() {
        let mut doc = to_doc(&UserRef {
            id: UserId::from("u"),
            username: "bo".into(),
            name: "Bo".into(),
        })
        .unwrap();
        doc.insert("_id", "u");
        doc.insert("username_lower", "bo");
        doc.insert("when", Bson::Timestamp(Timestamp { time: 1, increment: 2 }));
        let back: UserRef = from_doc(&doc).unwrap();
        assert_eq!(back.username, "bo");
        // A document of the wrong shape is an error, not a panic.
        let mut bad = Document::new();
        bad.insert("id", 5);
        assert!(matches!(from_doc::<UserRef>(&bad), Err(StoreError::Internal(_))));
    }

    #[test]
    fn hand_edited_counters_and_dates_still_decode() {
        use crate::store::Room;
        let room: Room = crate::app::rules::general_room(1_700_000_000_000);
        let mut doc = to_doc(&room).unwrap();
        // What `db.chatd_rooms.updateOne({}, {$set: {msgs: 5, updated_at: new Date()}})` stores.
        doc.insert("msgs", Bson::Double(5.0));
        doc.insert(
            "updated_at",
            Bson::DateTime(bson::DateTime::from_millis(1_700_000_000_999)),
        );
        let back: Room = from_doc(&doc).unwrap();
        assert_eq!(back.msgs, 5);
        assert_eq!(back.updated_at, 1_700_000_000_999);
        // A fraction is not an integer: still refused, as an error.
        doc.insert("msgs", Bson::Double(5.5));
        assert!(matches!(from_doc::<Room>(&doc), Err(StoreError::Internal(_))));
    }

    #[test]
    fn marks_order_like_cluster_times() {
        let a = mark_of(Timestamp { time: 10, increment: 5 });
        let b = mark_of(Timestamp { time: 10, increment: 6 });
        let c = mark_of(Timestamp { time: 11, increment: 0 });
        assert!(a < b && b < c);
        assert_eq!(mark_seconds(c), 11);
    }

    #[test]
    fn absurd_nesting_is_refused_not_overflowed() {
        let mut v = json!(1);
        for _ in 0..200 {
            v = json!([v]);
        }
        assert!(json_to_bson(&v).is_err());
    }
}
