//! DDP methods and stream subscriptions of one session (runs on the session's shard). Writes go
//! through the store; a write's result is sent only once it is durable *and* this shard has
//! applied its change, so the client's next call sees the effect.

use serde_json::{json, Map, Value};

use super::session::Session;
use crate::app::error::{AppError, Code};
use crate::app::ops::{LoggedIn, LoginName, Ops};
use crate::auth;
use crate::chat::hub::{
    MY_MESSAGES, STREAM_NOTIFY_LOGGED, STREAM_NOTIFY_ROOM, STREAM_NOTIFY_USER, STREAM_ROOM_MESSAGES,
};
use crate::chat::presence::{Activity, Origin};
use crate::ids::{RoomId, UserId};
use crate::protocol::ddp::{self, MeteorError};
use crate::protocol::wire::{self, Dates};
use crate::store::{HistoryQuery, Room, RoomType};

/// Most messages one `loadHistory` / `loadMissedMessages` answer carries (keeps frames < 1 MiB).
const MAX_HISTORY_PAGE: usize = 100;
const MAX_MISSED: usize = 500;

type MethodResult = Result<Option<Value>, MeteorError>;

fn str_at<'a>(params: &'a [Value], i: usize, what: &str) -> Result<&'a str, MeteorError> {
    params
        .get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| MeteorError::match_failed(&format!("{what} must be a string")))
}

fn obj_at<'a>(params: &'a [Value], i: usize, what: &str) -> Result<&'a Map<String, Value>, MeteorError> {
    params
        .get(i)
        .and_then(Value::as_object)
        .ok_or_else(|| MeteorError::match_failed(&format!("{what} must be an object")))
}

/// An optional string field: absent/null is `None`, anything but a string is a Match error.
pub fn opt_str<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, MeteorError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(MeteorError::match_failed(&format!("{key} must be a string"))),
    }
}

/// The `updatedSince` argument of `rooms/get` / `subscriptions/get` (`{$date}`), if any.
fn since_param(params: &[Value]) -> Option<i64> {
    params
        .first()
        .and_then(|v| v.get("$date"))
        .and_then(Value::as_f64)
        .map(|f| f as i64)
}

impl Session {
    fn ops(&self) -> Ops<'_> {
        self.ctx.ops()
    }

    pub async fn call(&mut self, method: &str, params: Vec<Value>) -> MethodResult {
        match method {
            "login" => self.login(&params).await,
            "registerUser" => self.register_user(&params).await,
            "logout" => self.logout().await,
            "createChannel" => self.create_room(method, RoomType::Channel, &params).await,
            "createPrivateGroup" => self.create_room(method, RoomType::Private, &params).await,
            "createDirectMessage" => self.create_direct(&params).await,
            "joinRoom" => self.join_room(&params).await,
            "leaveRoom" => self.leave_room(&params).await,
            "updateMessage" => self.update_message(&params).await,
            "deleteMessage" => self.delete_message(&params).await,
            "readMessages" => self.read_messages(&params).await,
            "getRoomIdByNameOrId" => self.room_id_by_name_or_id(&params).await,
            "getRoomNameById" => self.room_name_by_id(&params).await,
            "UserPresence:setDefaultStatus" => {
                let user = self.require_user()?;
                let status = str_at(&params, 0, "status")?;
                self.ops().set_status(method, user, Some(status), None).await?;
                Ok(Some(json!(true)))
            }
            "UserPresence:online" | "UserPresence:away" => {
                self.require_user()?;
                self.ctx.hub.set_idle(&self.handle, method == "UserPresence:away").await;
                Ok(Some(json!(true)))
            }
            "setUserStatus" => {
                let user = self.require_user()?;
                let status = match params.first() {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(_) => return Err(MeteorError::match_failed("statusType must be a string")),
                };
                let text = match params.get(1) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(_) => return Err(MeteorError::match_failed("statusText must be a string")),
                };
                self.ops().set_status(method, user, status, text).await?;
                Ok(None)
            }
            "stream-notify-room" => self.notify_room(&params).await,
            _ => Err(MeteorError::new(404, format!("Method '{method}' not found"))),
        }
    }

    async fn login(&mut self, params: &[Value]) -> MethodResult {
        let arg = obj_at(params, 0, "login options")?;
        let logged_in = if let Some(resume) = arg.get("resume") {
            let token = resume
                .as_str()
                .ok_or_else(|| MeteorError::match_failed("resume must be a string"))?;
            self.ops().login_resume(token).await?
        } else {
            let name = match arg.get("user") {
                Some(Value::Object(sel)) => match (opt_str(sel, "username")?, opt_str(sel, "email")?) {
                    (Some(name), _) => LoginName::Username(name),
                    (None, Some(email)) => LoginName::Email(email),
                    _ => return Err(MeteorError::match_failed("user must name a username or email")),
                },
                Some(Value::String(s)) if s.contains('@') => LoginName::Email(s),
                Some(Value::String(s)) => LoginName::Username(s),
                _ => return Err(MeteorError::new(400, "Unrecognized options for login request")),
            };
            let digest = match arg.get("password") {
                Some(Value::Object(p)) => match (opt_str(p, "digest")?, opt_str(p, "algorithm")?) {
                    (Some(d), Some("sha-256")) if auth::is_sha256_hex(d) => d.to_lowercase(),
                    _ => {
                        return Err(MeteorError::match_failed(
                            "password digest must be a sha-256 hex string",
                        ))
                    }
                },
                Some(Value::String(plain)) => auth::sha256_hex(plain),
                _ => return Err(MeteorError::match_failed("password is required")),
            };
            self.ops().login_password(name, digest, Some(self.ip)).await?
        };
        self.ctx
            .hub
            .attach_user(&self.handle, &logged_in.user)
            .await
            .map_err(|e| e.with_method("login"))?;
        let LoggedIn {
            user,
            token,
            token_hash,
            expires,
            kind,
        } = logged_in;
        let id = user.id.clone();
        self.user = Some(user);
        self.token_hash = Some(token_hash);
        Ok(Some(
            json!({"id": id, "token": token, "tokenExpires": {"$date": expires}, "type": kind}),
        ))
    }

    async fn register_user(&mut self, params: &[Value]) -> MethodResult {
        let form = obj_at(params, 0, "registration form")?;
        let username = opt_str(form, "username")?.ok_or_else(|| MeteorError::match_failed("username is required"))?;
        let pass = opt_str(form, "pass")?.ok_or_else(|| MeteorError::match_failed("pass is required"))?;
        let email = opt_str(form, "email")?;
        let name = opt_str(form, "name")?;
        let user = self.ops().register("registerUser", username, pass, email, name).await?;
        Ok(Some(json!(user.id)))
    }

    async fn logout(&mut self) -> MethodResult {
        if let Some(hash) = self.token_hash.take() {
            self.ops().logout(hash).await?;
        }
        self.user = None;
        self.ctx.hub.detach_user(&self.handle).await;
        Ok(None)
    }

    /// `rooms/get` and `subscriptions/get`: the result's JSON, rendered off this shard (see
    /// [`Ops::listing_json`]); the session frames it without parsing it again.
    pub async fn listing(&self, method: &str, params: &[Value]) -> Result<String, MeteorError> {
        let Some(user) = self.user.as_ref() else {
            return Ok("[]".into());
        };
        let since = since_param(params);
        let rooms = method == "rooms/get";
        let list = self
            .ops()
            .listing_json(method, user, rooms, since, Dates::Ejson)
            .await?;
        Ok(match since {
            Some(_) => format!(r#"{{"update":{list},"remove":[]}}"#),
            None => list,
        })
    }

    async fn create_room(&self, method: &str, t: RoomType, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let name = str_at(params, 0, "name")?;
        let members = match params.get(1) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| MeteorError::match_failed("members must be usernames"))?,
            Some(_) => return Err(MeteorError::match_failed("members must be an array")),
        };
        let read_only = match params.get(2) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(MeteorError::match_failed("readOnly must be a boolean")),
        };
        let room = self
            .ops()
            .create_room(method, user, t, name, members, read_only)
            .await?;
        let mut v = wire::room(&room, Dates::Ejson);
        if let Value::Object(o) = &mut v {
            o.insert("rid".into(), json!(room.id));
            o.insert("inserted".into(), json!(true));
        }
        Ok(Some(v))
    }

    async fn create_direct(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let other = str_at(params, 0, "username")?;
        if params.len() > 1 {
            return Err(
                MeteorError::new("error-not-allowed", "Group direct messages are not supported")
                    .with_method("createDirectMessage"),
            );
        }
        let room = self.ops().create_direct("createDirectMessage", user, other).await?;
        Ok(Some(
            json!({"t": "d", "rid": room.id, "_id": room.id, "usernames": room.usernames}),
        ))
    }

    async fn join_room(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        self.ops().join("joinRoom", user, rid).await?;
        Ok(Some(json!(true)))
    }

    async fn leave_room(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        self.ops().leave("leaveRoom", user, rid).await?;
        Ok(None)
    }

    /// The stored message as the result, rendered straight to JSON; none for a re-send.
    async fn send_message(&self, params: &[Value]) -> Result<Option<String>, MeteorError> {
        let user = self.require_user()?;
        let m = obj_at(params, 0, "message")?;
        let rid = opt_str(m, "rid")?.ok_or_else(|| MeteorError::match_failed("rid is required"))?;
        let text = opt_str(m, "msg")?.unwrap_or("");
        let sent = self
            .ops()
            .send_message(
                "sendMessage",
                user,
                RoomId::from(rid),
                opt_str(m, "_id")?,
                text,
                opt_str(m, "tmid")?,
            )
            .await?;
        Ok(sent
            .ok()
            .map(|m| serde_json::to_string(&wire::WireMessage(&m, Dates::Ejson)).unwrap_or_else(|_| "null".into())))
    }

    async fn update_message(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let m = obj_at(params, 0, "message")?;
        let mid = opt_str(m, "_id")?.ok_or_else(|| MeteorError::match_failed("_id is required"))?;
        let text = opt_str(m, "msg")?.ok_or_else(|| MeteorError::match_failed("msg is required"))?;
        self.ops()
            .update_message("updateMessage", user, mid, opt_str(m, "rid")?, text)
            .await?;
        Ok(None)
    }

    async fn delete_message(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let m = obj_at(params, 0, "message")?;
        let mid = opt_str(m, "_id")?.ok_or_else(|| MeteorError::match_failed("_id is required"))?;
        self.ops().delete_message("deleteMessage", user, mid, None).await?;
        Ok(None)
    }

    async fn load_history(&self, params: &[Value]) -> Result<String, MeteorError> {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        let latest = params.get(1).and_then(wire::parse_date);
        let limit = match params.get(2) {
            None | Some(Value::Null) => 20,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| MeteorError::match_failed("limit must be a number"))? as usize,
        };
        let q = HistoryQuery {
            latest,
            limit: limit.min(MAX_HISTORY_PAGE),
            ..HistoryQuery::default()
        };
        Ok(
            match self
                .ops()
                .history_json("loadHistory", user, &rid, None, &q, Dates::Ejson)
                .await?
            {
                Some(list) => format!(r#"{{"messages":{list},"unreadNotLoaded":0}}"#),
                None => "false".into(),
            },
        )
    }

    async fn load_missed(&self, params: &[Value]) -> Result<String, MeteorError> {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        let start = params
            .get(1)
            .and_then(wire::parse_date)
            .ok_or_else(|| MeteorError::match_failed("start must be a date"))?;
        let q = HistoryQuery {
            oldest: Some(start),
            limit: MAX_MISSED,
            ..HistoryQuery::default()
        };
        let found = self
            .ops()
            .history_json("loadMissedMessages", user, &rid, None, &q, Dates::Ejson)
            .await?;
        Ok(found.unwrap_or_else(|| "false".into()))
    }

    /// Methods whose result can be large (listings, history pages): their JSON is rendered on
    /// a reader thread and framed as is. `None`: not one of them.
    pub async fn call_raw(&self, method: &str, params: &[Value]) -> Option<Result<Option<String>, MeteorError>> {
        Some(match method {
            "rooms/get" | "subscriptions/get" => self.listing(method, params).await.map(Some),
            "loadHistory" => self.load_history(params).await.map(Some),
            "loadMissedMessages" => self.load_missed(params).await.map(Some),
            "sendMessage" => self.send_message(params).await,
            _ => return None,
        })
    }

    async fn read_messages(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        self.ops().mark_read("readMessages", user, rid).await?;
        Ok(None)
    }

    /// `stream-notify-room` writes: `<rid>/user-activity [username, activities, extra?]` and
    /// `<rid>/typing [username, bool]` from a member. A username other than the caller's is
    /// dropped silently (Rocket.Chat does the same); nothing is stored.
    async fn notify_room(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let event = str_at(params, 0, "eventName")?;
        let not_allowed = || MeteorError::new("not-allowed", "Not allowed").with_method("stream-notify-room");
        let (rid, kind) = event.split_once('/').ok_or_else(not_allowed)?;
        let username = str_at(params, 1, "username")?;
        let (activities, extra) = match kind {
            "user-activity" => {
                let list = params
                    .get(2)
                    .and_then(Value::as_array)
                    .ok_or_else(|| MeteorError::match_failed("activities must be an array"))?;
                let activities = list
                    .iter()
                    .map(|a| a.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| MeteorError::match_failed("activities must be strings"))?;
                let extra = match params.get(3) {
                    None | Some(Value::Null) => None,
                    Some(v @ Value::Object(_)) => Some(v.clone()),
                    Some(_) => return Err(MeteorError::match_failed("extra must be an object")),
                };
                (activities, extra)
            }
            "typing" => {
                let on = params
                    .get(2)
                    .and_then(Value::as_bool)
                    .ok_or_else(|| MeteorError::match_failed("typing flag must be a boolean"))?;
                (if on { vec!["user-typing".to_owned()] } else { Vec::new() }, None)
            }
            _ => return Err(not_allowed()),
        };
        let rid = RoomId::from(rid);
        if !self.ops().member_of(user, &rid).await? {
            return Err(not_allowed());
        }
        if username != user.username {
            tracing::debug!(claimed = username, "typing event with another user's name dropped");
            return Ok(None);
        }
        self.ctx.hub.send_activity(Activity {
            rid,
            username: user.username.clone(),
            activities,
            extra,
            origin: Origin {
                host: 0,
                shard: self.ctx.hub.shard,
                session: self.handle.id,
            },
        });
        Ok(None)
    }

    /// `stream-user-presence ["", {added: [uid...], removed: [uid...]}]`. `Ok(true)`: this is the
    /// connection's live presence subscription; `Ok(false)`: it only edited the live one.
    pub async fn subscribe_presence(&self, id: &str, params: &[Value]) -> Result<bool, MeteorError> {
        self.user
            .as_ref()
            .ok_or_else(|| MeteorError::new("not-allowed", "Not allowed"))?;
        let uids = |key: &str| -> Result<Vec<UserId>, MeteorError> {
            match params.get(1).and_then(|o| o.get(key)) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(UserId::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| MeteorError::match_failed(&format!("{key} must be user ids"))),
                Some(_) => Err(MeteorError::match_failed(&format!("{key} must be an array"))),
            }
        };
        let (added, removed) = (uids("added")?, uids("removed")?);
        let cap = self.ctx.config.limits.max_presence_watches;
        self.ctx
            .hub
            .watch_presence(&self.handle, id, &added, &removed, cap)
            .await
            .ok_or_else(|| {
                MeteorError::new(
                    "too-many-presence-watches",
                    format!("A connection may watch the presence of at most {cap} users"),
                )
            })
    }

    /// A room the user may see; a hidden room is answered exactly like a missing one.
    async fn accessible_room(&self, name_or_id: &str) -> Result<Room, MeteorError> {
        let user = self.require_user()?;
        let room = self.ops().room_by_name_or_id(name_or_id).await?;
        match self.ops().visible_room(user, room).await? {
            Some(r) => Ok(r),
            None => Err(MeteorError::new("error-not-allowed", "Not allowed")),
        }
    }

    async fn room_id_by_name_or_id(&self, params: &[Value]) -> MethodResult {
        let room = self.accessible_room(str_at(params, 0, "name or id")?).await?;
        Ok(Some(json!(room.id)))
    }

    async fn room_name_by_id(&self, params: &[Value]) -> MethodResult {
        let room = self.accessible_room(str_at(params, 0, "rid")?).await?;
        Ok(Some(json!(room.name)))
    }

    /// Authorizes and records a stream subscription. `Ok(false)`: a duplicate id, ignored.
    pub async fn subscribe(&self, id: &str, name: &str, params: &[Value]) -> Result<bool, MeteorError> {
        let limits = &self.ctx.config.limits;
        let too_long = |what: &str| {
            MeteorError::new(
                "invalid-event-name",
                format!("The {what} is longer than {} characters", limits.max_event_name_chars),
            )
        };
        if name.chars().count() > limits.max_event_name_chars {
            return Err(too_long("stream name"));
        }
        let stream = match name {
            "stream-room-messages" => STREAM_ROOM_MESSAGES,
            "stream-notify-user" => STREAM_NOTIFY_USER,
            "stream-notify-room" => STREAM_NOTIFY_ROOM,
            "stream-notify-logged" => STREAM_NOTIFY_LOGGED,
            _ => return Err(MeteorError::new(404, format!("Subscription '{name}' not found"))),
        };
        let event = params
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| MeteorError::match_failed("eventName must be a string"))?;
        if event.is_empty() {
            return Err(MeteorError::new("invalid-event-name", "Invalid event name"));
        }
        if event.chars().count() > limits.max_event_name_chars {
            return Err(too_long("event name"));
        }
        if self.handle.sub_count() >= limits.max_subscriptions_per_session {
            return Err(MeteorError::new(
                "too-many-subscriptions",
                format!(
                    "This connection already holds {} subscriptions; unsubscribe from some first",
                    limits.max_subscriptions_per_session
                ),
            ));
        }
        let not_allowed = || MeteorError::new("not-allowed", "Not allowed");
        let user = self.user.as_ref().ok_or_else(not_allowed)?;
        let allowed = match stream {
            STREAM_ROOM_MESSAGES => event == MY_MESSAGES || self.ops().member_of(user, &RoomId::from(event)).await?,
            STREAM_NOTIFY_USER => event
                .strip_prefix(user.id.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
            STREAM_NOTIFY_ROOM => match event.split_once('/') {
                Some((rid, _)) => self.ops().member_of(user, &RoomId::from(rid)).await?,
                None => false,
            },
            _ => true,
        };
        if !allowed {
            return Err(not_allowed());
        }
        if !self.handle.add_sub(id, stream, event) {
            return Ok(false);
        }
        let use_collection = match params.get(1) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Object(o)) => o.get("useCollection").and_then(Value::as_bool).unwrap_or(false),
            _ => false,
        };
        if use_collection {
            self.handle.out.push_str(ddp::stream_added(name, event));
        }
        Ok(true)
    }
}

/// The error code and text both doors give when the store failed (e.g. MongoDB unreachable):
/// the client may retry; nothing about the failure itself is shown.
pub const STORE_UNAVAILABLE: &str = "error-store-unavailable";
pub const STORE_UNAVAILABLE_REASON: &str = "The database is unavailable; try again shortly";
/// The same when a round trip inside the server timed out.
pub const SERVER_BUSY: &str = "error-server-busy";
pub const SERVER_BUSY_REASON: &str = "The server is busy; try again shortly";

/// The DDP door's rendering of the one application error: client errors as Meteor errors with
/// their code; server-side failures logged once and shown as a generic 500.
impl From<AppError> for MeteorError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Client { code, reason, method } => {
                let code = match code {
                    Code::Name(n) => Value::String(n.into_owned()),
                    Code::Number(n) => json!(n),
                };
                let err = MeteorError::new(code, reason);
                match method {
                    Some(m) => err.with_method(&m),
                    None => err,
                }
            }
            AppError::Invalid(what) => MeteorError::match_failed(&what),
            e @ AppError::Store(_) => {
                e.log("ddp");
                MeteorError::new(STORE_UNAVAILABLE, STORE_UNAVAILABLE_REASON)
            }
            e @ AppError::Busy(_) => {
                e.log("ddp");
                MeteorError::new(SERVER_BUSY, SERVER_BUSY_REASON)
            }
            other => {
                other.log("ddp");
                MeteorError::internal()
            }
        }
    }
}
