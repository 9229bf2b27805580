//! DDP methods and stream subscriptions of one session (runs on the session's shard). Writes go
//! through the store; a write's result is sent only once it is durable *and* this shard has
//! applied its change, so the client's next call sees the effect.

use serde_json::{json, Map, Value};

use super::session::Session;
use crate::auth;
use crate::chat::hub::{
    MY_MESSAGES, STREAM_NOTIFY_LOGGED, STREAM_NOTIFY_ROOM, STREAM_NOTIFY_USER, STREAM_ROOM_MESSAGES,
};
use crate::ids::{now_ms, random_secret, MessageId, RoomId};
use crate::protocol::ddp::{self, MeteorError};
use crate::protocol::wire::{self, Dates};
use crate::store::{HistoryQuery, LoginToken, Room, RoomType, StoreError, User, WriteOp, WriteOutcome, WriteOutput};

/// Most messages one `loadHistory` / `loadMissedMessages` answer carries (keeps frames < 1 MiB).
const MAX_HISTORY_PAGE: usize = 100;
const MAX_MISSED: usize = 500;

type MethodResult = Result<Option<Value>, MeteorError>;

fn store_err(method: &str, e: StoreError) -> MeteorError {
    match e {
        StoreError::Rejected { code, reason } => MeteorError::new(code, reason).with_method(method),
        StoreError::Internal(msg) => {
            tracing::error!(method, error = %msg, "store failure in a method");
            MeteorError::internal()
        }
    }
}

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
fn opt_str<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, MeteorError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(MeteorError::match_failed(&format!("{key} must be a string"))),
    }
}

impl Session {
    async fn write(&self, method: &str, op: WriteOp) -> Result<WriteOutcome, MeteorError> {
        let outcome = self.ctx.hub.store.write(op).await.map_err(|e| store_err(method, e))?;
        self.ctx.hub.wait_applied(outcome.seq).await;
        Ok(outcome)
    }

    fn room_or_false(&self, rid: &RoomId) -> Result<Option<Room>, MeteorError> {
        self.ctx.hub.store.room(rid).map_err(|e| store_err("room", e))
    }

    /// Whether the user belongs to the room. The shard's index is checked first; on a miss the
    /// store decides, because a membership another user's write just created may not have reached
    /// this shard yet (anything later in that room reaches it after the membership does).
    fn member_of(&self, user: &User, rid: &RoomId) -> bool {
        self.ctx.hub.is_member(&user.id, rid) || matches!(self.ctx.hub.store.subscription(&user.id, rid), Ok(Some(_)))
    }

    /// Whether the user may read the room's history: members, or anyone for public channels.
    fn can_read(&self, user: &User, room: &Room) -> bool {
        room.t == RoomType::Channel || self.member_of(user, &room.id)
    }

    pub async fn call(&mut self, method: &str, params: Vec<Value>) -> MethodResult {
        match method {
            "login" => self.login(&params).await,
            "registerUser" => self.register_user(&params).await,
            "logout" => self.logout().await,
            "rooms/get" => self.rooms_get(&params),
            "subscriptions/get" => self.subscriptions_get(&params),
            "createChannel" => self.create_room(method, RoomType::Channel, &params).await,
            "createPrivateGroup" => self.create_room(method, RoomType::Private, &params).await,
            "createDirectMessage" => self.create_direct(&params).await,
            "joinRoom" => self.join_room(&params).await,
            "leaveRoom" => self.leave_room(&params).await,
            "sendMessage" => self.send_message(&params).await,
            "updateMessage" => self.update_message(&params).await,
            "deleteMessage" => self.delete_message(&params).await,
            "loadHistory" => self.load_history(&params),
            "loadMissedMessages" => self.load_missed(&params),
            "readMessages" => self.read_messages(&params).await,
            "getRoomIdByNameOrId" => self.room_id_by_name_or_id(&params),
            "getRoomNameById" => self.room_name_by_id(&params),
            _ => Err(MeteorError::new(404, format!("Method '{method}' not found"))),
        }
    }

    async fn login(&mut self, params: &[Value]) -> MethodResult {
        let arg = obj_at(params, 0, "login options")?;
        let now = now_ms();
        let store = self.ctx.hub.store.clone();
        let (user, kind, token, token_hash, expires) = if let Some(resume) = arg.get("resume") {
            let token = resume
                .as_str()
                .ok_or_else(|| MeteorError::match_failed("resume must be a string"))?;
            let hash = auth::token_hash(token);
            match store
                .user_by_token_hash(&hash, now)
                .map_err(|e| store_err("login", e))?
            {
                Some((user, t)) => (user, "resume", token.to_owned(), hash, t.expires_at),
                None => {
                    return Err(MeteorError::new(
                        403,
                        "You've been logged out by the server. Please log in again.",
                    ))
                }
            }
        } else {
            let user = match arg.get("user") {
                Some(Value::Object(sel)) => match (opt_str(sel, "username")?, opt_str(sel, "email")?) {
                    (Some(name), _) => store.user_by_username(name),
                    (None, Some(email)) => store.user_by_email(email),
                    _ => return Err(MeteorError::match_failed("user must name a username or email")),
                },
                Some(Value::String(s)) if s.contains('@') => store.user_by_email(s),
                Some(Value::String(s)) => store.user_by_username(s),
                _ => return Err(MeteorError::new(400, "Unrecognized options for login request")),
            }
            .map_err(|e| store_err("login", e))?;
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
            let Some(user) = user else {
                return Err(MeteorError::new(403, "User not found"));
            };
            let phc = user.password_hash.clone();
            let ok = glommio::executor()
                .spawn_blocking(move || auth::verify_password_digest(&phc, &digest))
                .await;
            if !ok {
                return Err(MeteorError::new(403, "Incorrect password"));
            }
            let token = random_secret();
            let hash = auth::token_hash(&token);
            let expires = now + (self.ctx.config.accounts.token_ttl_days as i64) * 86_400_000;
            let record = LoginToken {
                uid: user.id.clone(),
                created_at: now,
                expires_at: expires,
            };
            self.write(
                "login",
                WriteOp::CreateToken {
                    token_hash: hash.clone(),
                    token: record,
                },
            )
            .await?;
            (user, "password", token, hash, expires)
        };
        self.ctx
            .hub
            .attach_user(&self.handle, &user)
            .await
            .map_err(|e| store_err("login", e))?;
        let id = user.id.clone();
        self.user = Some(user);
        self.token_hash = Some(token_hash);
        Ok(Some(
            json!({"id": id, "token": token, "tokenExpires": {"$date": expires}, "type": kind}),
        ))
    }

    async fn register_user(&mut self, params: &[Value]) -> MethodResult {
        if !self.ctx.config.accounts.registration_open {
            return Err(MeteorError::new(
                "error-user-registration-disabled",
                "User registration is disabled",
            ));
        }
        let form = obj_at(params, 0, "registration form")?;
        let username = opt_str(form, "username")?.ok_or_else(|| MeteorError::match_failed("username is required"))?;
        let pass = opt_str(form, "pass")?.ok_or_else(|| MeteorError::match_failed("pass is required"))?;
        let email = opt_str(form, "email")?.map(str::to_owned);
        let name = opt_str(form, "name")?.unwrap_or(username).to_owned();
        if pass.is_empty() {
            return Err(MeteorError::new("error-invalid-password", "Invalid password"));
        }
        let digest = auth::sha256_hex(pass);
        let hash = glommio::executor()
            .spawn_blocking(move || auth::hash_password_digest(&digest))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "password hashing failed");
                MeteorError::internal()
            })?;
        let op = WriteOp::CreateUser {
            username: username.to_owned(),
            name,
            email,
            password_hash: hash,
        };
        match self.write("registerUser", op).await?.output {
            WriteOutput::User(u) => Ok(Some(json!(u.id))),
            _ => Err(MeteorError::internal()),
        }
    }

    async fn logout(&mut self) -> MethodResult {
        if let Some(hash) = self.token_hash.take() {
            self.write("logout", WriteOp::DeleteToken { token_hash: hash }).await?;
        }
        self.user = None;
        self.ctx.hub.detach_user(&self.handle).await;
        Ok(None)
    }

    fn rooms_get(&self, params: &[Value]) -> MethodResult {
        let Some(user) = self.user.as_ref() else {
            return Ok(Some(json!([])));
        };
        let subs = self
            .ctx
            .hub
            .store
            .subscriptions_of(&user.id)
            .map_err(|e| store_err("rooms/get", e))?;
        let since = params
            .first()
            .and_then(|v| v.get("$date"))
            .and_then(Value::as_f64)
            .map(|f| f as i64);
        let rooms = subs
            .iter()
            .filter(|(_, r)| since.is_none_or(|s| r.updated_at > s))
            .map(|(_, r)| wire::room(r, Dates::Ejson));
        Ok(Some(match since {
            Some(_) => json!({"update": rooms.collect::<Vec<_>>(), "remove": []}),
            None => Value::Array(rooms.collect()),
        }))
    }

    fn subscriptions_get(&self, params: &[Value]) -> MethodResult {
        let Some(user) = self.user.as_ref() else {
            return Ok(Some(json!([])));
        };
        let subs = self
            .ctx
            .hub
            .store
            .subscriptions_of(&user.id)
            .map_err(|e| store_err("subscriptions/get", e))?;
        let since = params
            .first()
            .and_then(|v| v.get("$date"))
            .and_then(Value::as_f64)
            .map(|f| f as i64);
        let items = subs
            .iter()
            .filter(|(s, r)| since.is_none_or(|t| s.updated_at.max(r.updated_at) > t))
            .map(|(s, r)| wire::subscription(s, r, Dates::Ejson));
        Ok(Some(match since {
            Some(_) => json!({"update": items.collect::<Vec<_>>(), "remove": []}),
            None => Value::Array(items.collect()),
        }))
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
        let op = WriteOp::CreateRoom {
            t,
            name: name.to_owned(),
            creator: user.id.clone(),
            members,
            read_only,
        };
        match self.write(method, op).await?.output {
            WriteOutput::Room(room, _) => {
                let mut v = wire::room(&room, Dates::Ejson);
                if let Value::Object(o) = &mut v {
                    o.insert("rid".into(), json!(room.id));
                    o.insert("inserted".into(), json!(true));
                }
                Ok(Some(v))
            }
            _ => Err(MeteorError::internal()),
        }
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
        let op = WriteOp::CreateDirect {
            creator: user.id.clone(),
            other_username: other.to_owned(),
        };
        match self.write("createDirectMessage", op).await?.output {
            WriteOutput::Room(room, _) => Ok(Some(
                json!({"t": "d", "rid": room.id, "_id": room.id, "usernames": room.usernames}),
            )),
            _ => Err(MeteorError::internal()),
        }
    }

    async fn join_room(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        self.write(
            "joinRoom",
            WriteOp::Join {
                uid: user.id.clone(),
                rid,
            },
        )
        .await?;
        Ok(Some(json!(true)))
    }

    async fn leave_room(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        self.write(
            "leaveRoom",
            WriteOp::Leave {
                uid: user.id.clone(),
                rid,
            },
        )
        .await?;
        Ok(None)
    }

    async fn send_message(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let m = obj_at(params, 0, "message")?;
        let rid = opt_str(m, "rid")?.ok_or_else(|| MeteorError::match_failed("rid is required"))?;
        let text = opt_str(m, "msg")?.unwrap_or("");
        let id = opt_str(m, "_id")?;
        let tmid = opt_str(m, "tmid")?;
        if text.chars().count() > self.ctx.config.limits.max_message_chars {
            return Err(
                MeteorError::new("error-message-size-exceeded", "Message size exceeds the allowed limit")
                    .with_method("sendMessage"),
            );
        }
        if id.is_some_and(|i| i.is_empty() || i.len() > 128) {
            return Err(MeteorError::match_failed("_id must be 1 to 128 characters"));
        }
        let op = WriteOp::SendMessage {
            uid: user.id.clone(),
            rid: RoomId::from(rid),
            id: id.map(MessageId::from),
            msg: text.to_owned(),
            tmid: tmid.map(str::to_owned),
        };
        match self.write("sendMessage", op).await?.output {
            WriteOutput::Message(m) => Ok(Some(wire::message(&m, Dates::Ejson))),
            WriteOutput::Duplicate(_) => Ok(None),
            _ => Err(MeteorError::internal()),
        }
    }

    async fn update_message(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let m = obj_at(params, 0, "message")?;
        let mid = opt_str(m, "_id")?.ok_or_else(|| MeteorError::match_failed("_id is required"))?;
        let text = opt_str(m, "msg")?.ok_or_else(|| MeteorError::match_failed("msg is required"))?;
        if text.chars().count() > self.ctx.config.limits.max_message_chars {
            return Err(
                MeteorError::new("error-message-size-exceeded", "Message size exceeds the allowed limit")
                    .with_method("updateMessage"),
            );
        }
        if let Some(rid) = opt_str(m, "rid")? {
            if let Ok(Some(existing)) = self.ctx.hub.store.message(&MessageId::from(mid)) {
                if existing.rid.as_str() != rid {
                    return Err(
                        MeteorError::new("error-invalid-update-key", "Cannot move a message to another room")
                            .with_method("updateMessage"),
                    );
                }
            }
        }
        let op = WriteOp::UpdateMessage {
            uid: user.id.clone(),
            mid: MessageId::from(mid),
            msg: text.to_owned(),
        };
        self.write("updateMessage", op).await?;
        Ok(None)
    }

    async fn delete_message(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let m = obj_at(params, 0, "message")?;
        let mid = opt_str(m, "_id")?.ok_or_else(|| MeteorError::match_failed("_id is required"))?;
        self.write(
            "deleteMessage",
            WriteOp::DeleteMessage {
                uid: user.id.clone(),
                mid: MessageId::from(mid),
            },
        )
        .await?;
        Ok(None)
    }

    fn load_history(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        let latest = params.get(1).and_then(wire::parse_date);
        let limit = match params.get(2) {
            None | Some(Value::Null) => 20,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| MeteorError::match_failed("limit must be a number"))? as usize,
        };
        let Some(room) = self.room_or_false(&rid)? else {
            return Ok(Some(json!(false)));
        };
        if !self.can_read(user, &room) {
            return Ok(Some(json!(false)));
        }
        let q = HistoryQuery {
            latest,
            limit: limit.min(MAX_HISTORY_PAGE),
            ..HistoryQuery::default()
        };
        let (messages, _) = self
            .ctx
            .hub
            .store
            .history(&rid, &q)
            .map_err(|e| store_err("loadHistory", e))?;
        let list: Vec<Value> = messages.iter().map(|m| wire::message(m, Dates::Ejson)).collect();
        Ok(Some(json!({"messages": list, "unreadNotLoaded": 0})))
    }

    fn load_missed(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        let start = params
            .get(1)
            .and_then(wire::parse_date)
            .ok_or_else(|| MeteorError::match_failed("start must be a date"))?;
        let Some(room) = self.room_or_false(&rid)? else {
            return Ok(Some(json!(false)));
        };
        if !self.can_read(user, &room) {
            return Ok(Some(json!(false)));
        }
        let q = HistoryQuery {
            oldest: Some(start),
            limit: MAX_MISSED,
            ..HistoryQuery::default()
        };
        let (messages, _) = self
            .ctx
            .hub
            .store
            .history(&rid, &q)
            .map_err(|e| store_err("loadMissedMessages", e))?;
        Ok(Some(Value::Array(
            messages.iter().map(|m| wire::message(m, Dates::Ejson)).collect(),
        )))
    }

    async fn read_messages(&self, params: &[Value]) -> MethodResult {
        let user = self.require_user()?;
        let rid = RoomId::from(str_at(params, 0, "rid")?);
        self.write(
            "readMessages",
            WriteOp::MarkRead {
                uid: user.id.clone(),
                rid,
            },
        )
        .await?;
        Ok(None)
    }

    fn accessible_room(&self, name_or_id: &str) -> Result<Room, MeteorError> {
        let user = self.require_user()?;
        let store = &self.ctx.hub.store;
        let room = match store
            .room(&RoomId::from(name_or_id))
            .map_err(|e| store_err("room", e))?
        {
            Some(r) => Some(r),
            None => store.room_by_name(name_or_id).map_err(|e| store_err("room", e))?,
        };
        match room {
            Some(r) if self.can_read(user, &r) => Ok(r),
            _ => Err(MeteorError::new("error-not-allowed", "Not allowed")),
        }
    }

    fn room_id_by_name_or_id(&self, params: &[Value]) -> MethodResult {
        let room = self.accessible_room(str_at(params, 0, "name or id")?)?;
        Ok(Some(json!(room.id)))
    }

    fn room_name_by_id(&self, params: &[Value]) -> MethodResult {
        let room = self.accessible_room(str_at(params, 0, "rid")?)?;
        Ok(Some(json!(room.name)))
    }

    /// Authorizes and records a stream subscription. `Ok(false)`: a duplicate id, ignored.
    pub fn subscribe(&self, id: &str, name: &str, params: &[Value]) -> Result<bool, MeteorError> {
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
        let not_allowed = || MeteorError::new("not-allowed", "Not allowed");
        let user = self.user.as_ref().ok_or_else(not_allowed)?;
        let hub = &self.ctx.hub;
        let allowed = match stream {
            STREAM_ROOM_MESSAGES => event == MY_MESSAGES || hub.is_member(&user.id, &RoomId::from(event)),
            STREAM_NOTIFY_USER => event
                .strip_prefix(user.id.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
            STREAM_NOTIFY_ROOM => event
                .split_once('/')
                .is_some_and(|(rid, _)| hub.is_member(&user.id, &RoomId::from(rid))),
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
