//! DDP (Meteor's Distributed Data Protocol) over WebSocket text frames: parsing client frames,
//! building server frames, and Meteor.Error objects. Pure; any thread.

use serde_json::{json, Map, Value};

/// A Meteor.Error as clients expect it inside `result.error` / `nosub.error`.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteorError {
    /// Code: a string like `error-invalid-room`, or a number like 403.
    pub error: Value,
    pub reason: String,
    pub details: Option<Value>,
}

impl MeteorError {
    pub fn new(code: impl Into<Value>, reason: impl Into<String>) -> Self {
        Self {
            error: code.into(),
            reason: reason.into(),
            details: None,
        }
    }

    pub fn with_method(mut self, method: &str) -> Self {
        self.details = Some(json!({ "method": method }));
        self
    }

    pub fn not_logged_in() -> Self {
        Self::new("error-not-authorized", "You must be logged in to do this.")
    }

    pub fn internal() -> Self {
        Self::new(500, "Internal server error")
    }

    /// Wrong parameter types (Meteor's `check` failure).
    pub fn match_failed(what: &str) -> Self {
        Self::new(400, format!("Match failed: {what}"))
    }

    pub fn code_text(&self) -> String {
        match &self.error {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("isClientSafe".into(), Value::Bool(true));
        m.insert("error".into(), self.error.clone());
        m.insert("reason".into(), Value::String(self.reason.clone()));
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        m.insert(
            "message".into(),
            Value::String(format!("{} [{}]", self.reason, self.code_text())),
        );
        m.insert("errorType".into(), Value::String("Meteor.Error".into()));
        Value::Object(m)
    }
}

/// One parsed client frame.
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    Connect {
        version: String,
        support: Vec<String>,
    },
    Ping {
        id: Option<Value>,
    },
    Pong,
    Method {
        id: String,
        method: String,
        params: Vec<Value>,
    },
    Sub {
        id: String,
        name: String,
        params: Vec<Value>,
    },
    Unsub {
        id: String,
    },
}

/// Why a frame could not be understood; answered with `{"msg":"error",...}`.
#[derive(Debug, PartialEq)]
pub struct FrameError {
    pub reason: &'static str,
    pub offending: Option<Value>,
}

/// DDP protocol versions we speak, in preference order.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["1", "pre2", "pre1"];

pub fn parse_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|_| FrameError {
        reason: "Parse error",
        offending: None,
    })?;
    let Value::Object(mut obj) = value else {
        return Err(FrameError {
            reason: "Bad request",
            offending: None,
        });
    };
    let msg = match obj.get("msg") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(FrameError {
                reason: "Bad request",
                offending: Some(Value::Object(obj)),
            })
        }
    };
    let take_str = |obj: &mut Map<String, Value>, key: &str| match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let take_params = |obj: &mut Map<String, Value>| -> Option<Vec<Value>> {
        match obj.remove("params") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(a)) => Some(a),
            Some(_) => None,
        }
    };
    match msg.as_str() {
        "connect" => {
            let version = take_str(&mut obj, "version");
            let support = match obj.remove("support") {
                Some(Value::Array(a)) => a
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
            match (version, support) {
                (Some(version), Some(support)) => Ok(ClientFrame::Connect { version, support }),
                _ => Err(FrameError {
                    reason: "Bad request",
                    offending: Some(Value::Object(obj)),
                }),
            }
        }
        "ping" => Ok(ClientFrame::Ping { id: obj.remove("id") }),
        "pong" => Ok(ClientFrame::Pong),
        "method" => {
            let id = take_str(&mut obj, "id");
            let method = take_str(&mut obj, "method");
            let params = take_params(&mut obj);
            match (id, method, params) {
                (Some(id), Some(method), Some(params)) => Ok(ClientFrame::Method { id, method, params }),
                _ => Err(FrameError {
                    reason: "Malformed method invocation",
                    offending: Some(Value::Object(obj)),
                }),
            }
        }
        "sub" => {
            let id = take_str(&mut obj, "id");
            let name = take_str(&mut obj, "name");
            let params = take_params(&mut obj);
            match (id, name, params) {
                (Some(id), Some(name), Some(params)) => Ok(ClientFrame::Sub { id, name, params }),
                _ => Err(FrameError {
                    reason: "Malformed subscription",
                    offending: Some(Value::Object(obj)),
                }),
            }
        }
        "unsub" => match take_str(&mut obj, "id") {
            Some(id) => Ok(ClientFrame::Unsub { id }),
            None => Err(FrameError {
                reason: "Bad request",
                offending: Some(Value::Object(obj)),
            }),
        },
        _ => Err(FrameError {
            reason: "Bad request",
            offending: Some(Value::Object(obj)),
        }),
    }
}

/// The version to speak with a client, or `None` (answer `failed`).
pub fn negotiate(version: &str, support: &[String]) -> Option<&'static str> {
    let pick = support
        .iter()
        .find_map(|s| SUPPORTED_VERSIONS.iter().copied().find(|v| v == s))?;
    (pick == version).then_some(pick)
}

pub fn connected(session: &str) -> String {
    json!({"msg": "connected", "session": session}).to_string()
}

pub fn failed() -> String {
    json!({"msg": "failed", "version": SUPPORTED_VERSIONS[0]}).to_string()
}

pub fn ping() -> String {
    r#"{"msg":"ping"}"#.to_owned()
}

pub fn pong(id: Option<Value>) -> String {
    match id {
        Some(id) => json!({"msg": "pong", "id": id}).to_string(),
        None => r#"{"msg":"pong"}"#.to_owned(),
    }
}

/// A method result. `None` leaves the `result` key out, as Meteor does for `undefined`.
pub fn result(id: &str, value: Option<Value>) -> String {
    match value {
        Some(v) => json!({"msg": "result", "id": id, "result": v}).to_string(),
        None => json!({"msg": "result", "id": id}).to_string(),
    }
}

/// A `result` frame around a result that is already JSON text (`raw` must be valid JSON).
pub fn result_raw(id: &str, raw: &str) -> String {
    format!(
        r#"{{"msg":"result","id":{},"result":{raw}}}"#,
        Value::String(id.to_owned())
    )
}

pub fn result_error(id: &str, err: &MeteorError) -> String {
    json!({"msg": "result", "id": id, "error": err.to_json()}).to_string()
}

pub fn updated(id: &str) -> String {
    json!({"msg": "updated", "methods": [id]}).to_string()
}

pub fn ready(sub_id: &str) -> String {
    json!({"msg": "ready", "subs": [sub_id]}).to_string()
}

pub fn nosub(sub_id: &str, err: Option<&MeteorError>) -> String {
    match err {
        Some(e) => json!({"msg": "nosub", "id": sub_id, "error": e.to_json()}).to_string(),
        None => json!({"msg": "nosub", "id": sub_id}).to_string(),
    }
}

/// A connection-level error.
pub fn error(reason: &str, offending: Option<Value>) -> String {
    match offending {
        Some(o) => json!({"msg": "error", "reason": reason, "offendingMessage": o}).to_string(),
        None => json!({"msg": "error", "reason": reason}).to_string(),
    }
}

/// A stream event: `changed` on collection `stream-<name>` with document id `"id"`. `args_json`
/// is the already-serialized args array, so one serialization serves every recipient.
pub fn stream_event(collection: &str, event_name: &str, args_json: &str) -> String {
    let mut s = String::with_capacity(96 + collection.len() + event_name.len() + args_json.len());
    s.push_str(r#"{"msg":"changed","collection":"#);
    s.push_str(&Value::String(collection.to_owned()).to_string());
    s.push_str(r#","id":"id","fields":{"eventName":"#);
    s.push_str(&Value::String(event_name.to_owned()).to_string());
    s.push_str(r#","args":"#);
    s.push_str(args_json);
    s.push_str("}}");
    s
}

/// `added` for a `useCollection: true` stream subscription.
pub fn stream_added(collection: &str, event_name: &str) -> String {
    json!({"msg": "added", "collection": collection, "id": "id", "fields": {"eventName": event_name}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_frames_clients_send() {
        assert_eq!(
            parse_frame(r#"{"msg":"connect","version":"1","support":["1"]}"#),
            Ok(ClientFrame::Connect {
                version: "1".into(),
                support: vec!["1".into()]
            })
        );
        assert_eq!(
            parse_frame(r#"{"msg":"method","method":"login","id":"1","params":[{"resume":"t"}]}"#),
            Ok(ClientFrame::Method {
                id: "1".into(),
                method: "login".into(),
                params: vec![json!({"resume":"t"})]
            })
        );
        assert_eq!(parse_frame(r#"{"msg":"pong"}"#), Ok(ClientFrame::Pong));
        assert_eq!(parse_frame("{not json").unwrap_err().reason, "Parse error");
        assert_eq!(parse_frame(r#"{"no":"msg"}"#).unwrap_err().reason, "Bad request");
        assert_eq!(parse_frame(r#"[1,2]"#).unwrap_err().reason, "Bad request");
        assert_eq!(
            parse_frame(r#"{"msg":"method","method":5,"id":"1"}"#)
                .unwrap_err()
                .reason,
            "Malformed method invocation"
        );
        assert_eq!(
            parse_frame(r#"{"msg":"method","method":"x","id":"1","params":{}}"#)
                .unwrap_err()
                .reason,
            "Malformed method invocation"
        );
    }

    #[test]
    fn negotiates_like_meteor() {
        assert_eq!(negotiate("1", &["1".into()]), Some("1"));
        assert_eq!(negotiate("1", &["1".into(), "pre2".into(), "pre1".into()]), Some("1"));
        assert_eq!(negotiate("pre2", &["1".into(), "pre2".into()]), None);
        assert_eq!(negotiate("2", &["2".into()]), None);
    }

    #[test]
    fn errors_have_meteor_shape() {
        let e = MeteorError::new(403, "User not found").to_json();
        assert_eq!(e["message"], "User not found [403]");
        assert_eq!(e["isClientSafe"], true);
        assert_eq!(e["errorType"], "Meteor.Error");
        let r: Value = serde_json::from_str(&result("7", None)).unwrap();
        assert!(r.get("result").is_none());
        let ev: Value = serde_json::from_str(&stream_event("stream-room-messages", "R\"1", "[1]")).unwrap();
        assert_eq!(ev["fields"]["eventName"], "R\"1");
        assert_eq!(ev["fields"]["args"], json!([1]));
    }
}
