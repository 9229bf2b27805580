//! Rocket.Chat REST API v1 subset (`/api/v1/*`), on every shard, behind hyper. Requests are parsed
//! here (lenient query strings, JSON bodies with a size cap), authenticated with the
//! `X-User-Id` / `X-Auth-Token` headers (the same resume tokens DDP uses), and carried out by the
//! shared [`Ops`], so a REST write takes the same store path and change distribution as DDP.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::http::{json_response, raw_json_response};
use crate::ctx::ShardCtx;
use crate::app::error::{AppError, Code};
use crate::app::ops::{LoginName, Ops};
use crate::auth;
use crate::ids::{RoomId, UserId};
use crate::protocol::wire::{self, Dates};
use crate::store::{HistoryQuery, Room, RoomType, User};

/// `API_Default_Count` and `API_Upper_Count_Limit` of Rocket.Chat.
const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 100;

type Reply = Response<Full<Bytes>>;

/// A failed request: the HTTP status and Rocket.Chat's error envelope.
#[derive(Debug)]
pub struct RestError {
    status: StatusCode,
    body: Value,
}

impl RestError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"success": false, "error": error.into()}),
        }
    }

    fn typed(status: StatusCode, error: impl Into<String>, error_type: &str) -> Self {
        Self {
            status,
            body: json!({"success": false, "error": error.into(), "errorType": error_type}),
        }
    }

    fn invalid(what: impl Into<String>) -> Self {
        Self::typed(StatusCode::BAD_REQUEST, what, "invalid-params")
    }

    fn unauthorized() -> Self {
        let text = "You must be logged in to do this.";
        Self {
            status: StatusCode::UNAUTHORIZED,
            body: json!({"success": false, "status": "error", "error": text, "message": text}),
        }
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Resource not found")
    }

    fn room_not_found() -> Self {
        Self::typed(
            StatusCode::BAD_REQUEST,
            "The required \"roomId\" or \"roomName\" param provided does not match any channel [error-room-not-found]",
            "error-room-not-found",
        )
    }

    fn reply(self) -> Reply {
        json_response(self.status, &self.body)
    }
}

/// The REST door's rendering of the one application error: Rocket.Chat's envelope with a status
/// by blame and code; server-side failures are logged once and shown as a generic 500.
impl From<AppError> for RestError {
    fn from(e: AppError) -> Self {
        let (code, reason) = match e {
            AppError::Client { code, reason, .. } => (code.to_string(), reason),
            AppError::Invalid(what) => return Self::invalid(what),
            e @ AppError::Store(_) => {
                e.log("rest");
                return Self::typed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    super::methods::STORE_UNAVAILABLE_REASON,
                    super::methods::STORE_UNAVAILABLE,
                );
            }
            e @ AppError::Busy(_) => {
                e.log("rest");
                return Self::typed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    super::methods::SERVER_BUSY_REASON,
                    super::methods::SERVER_BUSY,
                );
            }
            other => {
                other.log("rest");
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error");
            }
        };
        let status = match code.as_str() {
            "500" => StatusCode::INTERNAL_SERVER_ERROR,
            "error-not-allowed"
            | "error-action-not-allowed"
            | "not-allowed"
            | "error-not-authorized"
            | "error-user-not-in-room"
            | "unauthorized"
            | "error-unauthorized" => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::typed(status, format!("{reason} [{code}]"), &code)
    }
}

type RestResult = Result<Value, RestError>;

/// Query parameters, decoded leniently: some clients send them without percent-encoding, and
/// Python clients send booleans as `True` / `False` and lists as `key[]=a&key[]=b`.
struct Query(HashMap<String, Vec<String>>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let key = decode(k);
            let key = key.strip_suffix("[]").map(str::to_owned).unwrap_or(key);
            map.entry(key).or_default().push(decode(v));
        }
        Self(map)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    fn flag(&self, key: &str) -> Result<bool, RestError> {
        match self.get(key) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" || v.is_empty() => Ok(false),
            Some(v) => Err(RestError::invalid(format!("{key} must be a boolean, not {v:?}"))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<usize>, RestError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| RestError::invalid(format!("{key} must be a non-negative integer, not {v:?}")))
            })
            .transpose()
    }

    fn date(&self, key: &str) -> Result<Option<i64>, RestError> {
        self.get(key)
            .map(|v| {
                // `+` in an ISO offset arrives as a space when the client did not encode it.
                wire::parse_date(&Value::String(v.trim().replace(' ', "+")))
                    .ok_or_else(|| RestError::invalid(format!("{key} must be an ISO-8601 date, not {v:?}")))
            })
            .transpose()
    }

    /// Rocket.Chat's `offset` / `count`: count defaults to 50 and is capped at 100.
    fn page(&self) -> Result<(usize, usize), RestError> {
        let offset = self.number("offset")?.unwrap_or(0);
        let count = match self.number("count")? {
            None | Some(0) => DEFAULT_COUNT,
            Some(c) => c.min(MAX_COUNT),
        };
        Ok((offset, count))
    }
}

/// A JSON request body (an empty body is an empty object).
struct Body(Map<String, Value>);

impl Body {
    fn opt_str(&self, key: &str) -> Result<Option<&str>, RestError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RestError::invalid(format!("Param \"{key}\" must be a string"))),
        }
    }

    fn str(&self, key: &str) -> Result<&str, RestError> {
        match self.opt_str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(RestError::invalid(format!("Param \"{key}\" is required"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<bool, RestError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(RestError::invalid(format!("Param \"{key}\" must be a boolean"))),
        }
    }

    fn usernames(&self, key: &str) -> Result<Vec<String>, RestError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| RestError::invalid(format!("Param \"{key}\" must be a list of usernames"))),
            Some(_) => Err(RestError::invalid(format!("Param \"{key}\" must be an array"))),
        }
    }
}

/// How much of an oversized body is read and thrown away so the client can read the 413 (a
/// socket closed with unread data would reset the connection under the client's feet).
const DRAIN_FACTOR: usize = 8;

async fn read_body(mut body: Incoming, limit: usize) -> Result<Body, RestError> {
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(RestError::new(
                StatusCode::BAD_REQUEST,
                "Could not read the request body",
            ));
        };
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen <= limit {
            bytes.extend_from_slice(&data);
        } else if seen > limit.saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    if seen > limit {
        return Err(RestError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body over the limit of {limit} bytes"),
        ));
    }
    parse_body(&bytes)
}

/// A request body as JSON: an object, or nothing (whitespace) for an empty one.
fn parse_body(bytes: &[u8]) -> Result<Body, RestError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Body(Map::new()));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => Ok(Body(o)),
        Ok(_) => Err(RestError::invalid("The request body must be a JSON object")),
        Err(e) => Err(RestError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid JSON body: {e}"),
        )),
    }
}

/// Fuzzing entry (`tests/fuzz.rs`): parses a query string and a body as a request's are, then
/// reads the parameters every endpoint reads, by the names they use. Returns how many were read
/// without an error.
#[doc(hidden)]
pub fn fuzz_parameters(query: &str, body: &[u8]) -> usize {
    let q = Query::parse(Some(query));
    let mut read = 0;
    for key in QUERY_KEYS {
        read += usize::from(q.get(key).is_some());
        read += usize::from(q.flag(key).is_ok());
        read += usize::from(q.number(key).is_ok());
        read += usize::from(q.date(key).is_ok());
    }
    read += usize::from(q.page().is_ok());
    if let Ok(b) = parse_body(body) {
        for key in BODY_KEYS {
            read += usize::from(b.opt_str(key).is_ok());
            read += usize::from(b.str(key).is_ok());
            read += usize::from(b.opt_bool(key).is_ok());
            read += usize::from(b.usernames(key).is_ok());
        }
    }
    read
}

/// The query and body parameter names the endpoints read (for fuzzing).
#[doc(hidden)]
pub const QUERY_KEYS: &[&str] = &[
    "offset",
    "count",
    "latest",
    "oldest",
    "inclusive",
    "unreads",
    "roomId",
    "roomName",
    "userId",
    "username",
];
#[doc(hidden)]
pub const BODY_KEYS: &[&str] = &[
    "username", "password", "user", "email", "resume", "pass", "name", "members", "readOnly", "roomId", "channel",
    "text", "msg", "message", "status", "userId", "msgId", "_id", "rid",
];

fn ok(mut v: Value) -> Value {
    if let Value::Object(o) = &mut v {
        o.insert("success".into(), Value::Bool(true));
    }
    v
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// One REST request, after routing: who is calling and what they sent.
struct Call<'a> {
    ops: Ops<'a>,
    query: Query,
    body: Body,
    /// The client's address (for login blocking).
    ip: std::net::IpAddr,
}

/// A successful answer: a JSON value, or JSON text rendered elsewhere (off this shard).
enum Answer {
    Json(Value),
    Raw(String),
}

pub async fn handle(req: Request<Incoming>, ctx: &ShardCtx, ip: std::net::IpAddr) -> Reply {
    let mut limit = None;
    let mut reply = match handle_inner(req, ctx, ip, &mut limit).await {
        Ok(Answer::Json(v)) => json_response(StatusCode::OK, &v),
        Ok(Answer::Raw(text)) => raw_json_response(StatusCode::OK, text),
        Err(e) => e.reply(),
    };
    if let Some(v) = limit {
        // Rocket.Chat's headers on every answer of a limited route; the reset is epoch ms.
        let reset = crate::ids::now_ms().saturating_add(v.reset_in.as_millis() as i64);
        let headers = reply.headers_mut();
        for (name, value) in [
            ("x-ratelimit-limit", i64::from(v.limit)),
            ("x-ratelimit-remaining", i64::from(v.remaining)),
            ("x-ratelimit-reset", reset),
        ] {
            headers.insert(name, hyper::header::HeaderValue::from(value));
        }
    }
    reply
}

/// Counts a call to `endpoint` against the REST rule; refused past it (429).
fn rate_limit(
    ctx: &ShardCtx,
    ip: std::net::IpAddr,
    method: &Method,
    endpoint: &str,
    limit: &mut Option<super::ratelimit::Verdict>,
) -> Result<(), RestError> {
    let route = format!("{endpoint}{}", method.as_str().to_ascii_lowercase());
    *limit = ctx
        .rate
        .check_rest(&ctx.config.rate_limits, ip, &route, std::time::Instant::now());
    match limit {
        Some(v) if !v.allowed => Err(RestError {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: json!({
                "success": false,
                "error": format!(
                    "Error, too many requests. Please slow down. You must wait {} seconds before trying this endpoint again. [error-too-many-requests]",
                    super::ratelimit::seconds(v.reset_in)
                ),
            }),
        }),
        _ => Ok(()),
    }
}

async fn handle_inner(
    req: Request<Incoming>,
    ctx: &ShardCtx,
    ip: std::net::IpAddr,
    limit: &mut Option<super::ratelimit::Verdict>,
) -> Result<Answer, RestError> {
    let endpoint = req
        .uri()
        .path()
        .strip_prefix("/api/v1/")
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let method = req.method().clone();
    let query = Query::parse(req.uri().query());
    let (uid, token) = (
        header(req.headers(), "x-user-id").map(str::to_owned),
        header(req.headers(), "x-auth-token").map(str::to_owned),
    );
    let public = matches!(endpoint.as_str(), "login" | "users.register");
    if !known(&method, &endpoint) {
        return Err(RestError::not_found());
    }
    if public {
        rate_limit(ctx, ip, &method, &endpoint, limit)?;
    }
    let body = if method == Method::POST {
        read_body(req.into_body(), ctx.config.limits.max_http_body_bytes).await?
    } else {
        Body(Map::new())
    };
    let call = Call {
        ops: ctx.ops(),
        query,
        body,
        ip,
    };
    if public {
        return match endpoint.as_str() {
            "login" => call.login().await,
            _ => call.register().await,
        }
        .map(Answer::Json);
    }
    let (Some(uid), Some(token)) = (uid, token) else {
        return Err(RestError::unauthorized());
    };
    let user = match call.ops.login_resume(&token).await {
        Ok(l) if l.user.id.as_str() == uid => l.user,
        _ => return Err(RestError::unauthorized()),
    };
    if !super::ratelimit::privileged(&user.roles) {
        rate_limit(ctx, ip, &method, &endpoint, limit)?;
    }
    // Possibly large answers come as JSON rendered on a reader thread.
    match endpoint.as_str() {
        "rooms.get" | "subscriptions.get" => return call.listing(&endpoint, &user).await.map(Answer::Raw),
        "channels.list" => return call.room_list(&endpoint, None).await.map(Answer::Raw),
        "channels.list.joined" => return call.room_list(&endpoint, Some(&user)).await.map(Answer::Raw),
        "channels.history" => return call.history(&user, RoomType::Channel).await.map(Answer::Raw),
        "groups.history" => return call.history(&user, RoomType::Private).await.map(Answer::Raw),
        "im.history" | "dm.history" => return call.history(&user, RoomType::Direct).await.map(Answer::Raw),
        _ => {}
    }
    call.dispatch(&endpoint, &user, &token).await.map(Answer::Json)
}

/// Every (method, endpoint) served; anything else is a 404 before the body is read.
fn known(method: &Method, endpoint: &str) -> bool {
    const GET: &[&str] = &[
        "me",
        "users.info",
        "users.getStatus",
        "users.getPresence",
        "rooms.get",
        "subscriptions.get",
        "channels.info",
        "channels.list",
        "channels.list.joined",
        "channels.members",
        "channels.history",
        "groups.history",
        "im.history",
        "dm.history",
    ];
    const POST: &[&str] = &[
        "login",
        "logout",
        "users.register",
        "users.setStatus",
        "channels.create",
        "channels.join",
        "channels.leave",
        "groups.create",
        "im.create",
        "dm.create",
        "chat.postMessage",
        "chat.sendMessage",
        "chat.update",
        "chat.delete",
    ];
    match *method {
        Method::GET => GET.contains(&endpoint),
        Method::POST => POST.contains(&endpoint),
        _ => false,
    }
}

impl Call<'_> {
    async fn dispatch(&self, endpoint: &str, user: &User, token: &str) -> RestResult {
        match endpoint {
            "logout" => {
                self.ops.logout(auth::token_hash(token)).await?;
                Ok(ok(
                    json!({"status": "success", "data": {"message": "You've been logged out!"}}),
                ))
            }
            "me" => Ok(ok(wire::user(
                user,
                self.ops.presence(user).await?.0.as_str(),
                Dates::Iso,
                true,
            ))),
            "users.info" => self.users_info(user).await,
            "users.setStatus" => self.set_status(user).await,
            "users.getStatus" => self.get_status(user, false).await,
            "users.getPresence" => self.get_status(user, true).await,
            "channels.create" => self.create(user, RoomType::Channel, "channel").await,
            "groups.create" => self.create(user, RoomType::Private, "group").await,
            "channels.info" => {
                let room = self.channel_from_query(user).await?;
                Ok(ok(json!({"channel": wire::room(&room, Dates::Iso)})))
            }
            "channels.join" => {
                let room = self.channel_from_body().await?;
                self.ops.join("channels.join", user, room.id.clone()).await?;
                let room = self.ops.room(&room.id).await?.unwrap_or(room);
                Ok(ok(json!({"channel": wire::room(&room, Dates::Iso)})))
            }
            "channels.leave" => {
                let room = self.channel_from_body().await?;
                self.ops.leave("channels.leave", user, room.id.clone()).await?;
                let room = self.ops.room(&room.id).await?.unwrap_or(room);
                Ok(ok(json!({"channel": wire::room(&room, Dates::Iso)})))
            }
            "channels.members" => self.members(user).await,
            "im.create" | "dm.create" => self.create_direct(user, endpoint).await,
            "chat.postMessage" => self.post_message(user).await,
            "chat.sendMessage" => self.send_message(user).await,
            "chat.update" => self.update_message(user).await,
            "chat.delete" => self.delete_message(user).await,
            _ => Err(RestError::not_found()),
        }
    }

    async fn login(&self) -> RestResult {
        let body = &self.body;
        let logged_in = if let Some(resume) = body.opt_str("resume")? {
            self.ops.login_resume(resume).await
        } else {
            let name = match (body.opt_str("user")?, body.opt_str("username")?, body.opt_str("email")?) {
                (Some(u), _, _) if u.contains('@') => LoginName::Email(u),
                (Some(u), _, _) | (None, Some(u), _) => LoginName::Username(u),
                (None, None, Some(e)) => LoginName::Email(e),
                _ => return Err(login_failed()),
            };
            let digest = match body.0.get("password") {
                Some(Value::String(plain)) => auth::sha256_hex(plain),
                Some(Value::Object(p)) => match (p.get("digest").and_then(Value::as_str), p.get("algorithm")) {
                    (Some(d), Some(a)) if a == "sha-256" && auth::is_sha256_hex(d) => d.to_lowercase(),
                    _ => return Err(RestError::invalid("password digest must be a sha-256 hex string")),
                },
                None | Some(Value::Null) => return Err(login_failed()),
                Some(_) => return Err(RestError::invalid("Param \"password\" must be a string")),
            };
            self.ops.login_password(name, digest, Some(self.ip)).await
        };
        let logged_in = match logged_in {
            Ok(l) => l,
            Err(AppError::Client {
                code: Code::Number(403),
                ..
            }) => return Err(login_failed()),
            Err(AppError::Client { code, .. }) if code.to_string() == "error-user-is-not-activated" => {
                return Err(login_failed())
            }
            Err(AppError::Client { code, reason, .. }) if code.to_string().starts_with("error-login-blocked") => {
                return Err(RestError {
                    status: StatusCode::UNAUTHORIZED,
                    body: json!({"success": false, "status": "error", "error": code.to_string(), "message": reason}),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let me = wire::user(
            &logged_in.user,
            self.ops.presence(&logged_in.user).await?.0.as_str(),
            Dates::Iso,
            true,
        );
        Ok(ok(json!({
            "status": "success",
            "data": {"userId": logged_in.user.id, "authToken": logged_in.token, "me": me},
        })))
    }

    async fn register(&self) -> RestResult {
        let b = &self.body;
        let username = b.str("username")?;
        let pass = b.str("pass")?;
        let user = self
            .ops
            .register(
                "users.register",
                username,
                pass,
                b.opt_str("email")?,
                b.opt_str("name")?,
            )
            .await?;
        Ok(ok(json!({"user": wire::user(&user, "offline", Dates::Iso, false)})))
    }

    /// The user named by `userId` or `username` in the query, or the caller.
    async fn target_user(&self, caller: &User) -> Result<User, RestError> {
        let store = &self.ops.hub.store;
        let found = match (self.query.get("userId"), self.query.get("username")) {
            (Some(id), _) => store.user(&UserId::from(id)).await,
            (None, Some(name)) => store.user_by_username(name).await,
            (None, None) => return Ok(caller.clone()),
        }
        .map_err(AppError::from)?;
        found.ok_or_else(|| RestError::typed(StatusCode::BAD_REQUEST, "User not found.", "error-invalid-user"))
    }

    async fn users_info(&self, caller: &User) -> RestResult {
        if self.query.get("userId").is_none() && self.query.get("username").is_none() {
            return Err(RestError::invalid(
                "The required \"userId\" or \"username\" param was not provided",
            ));
        }
        let user = self.target_user(caller).await?;
        let own = user.id == caller.id;
        let status = self.ops.presence(&user).await?.0;
        Ok(ok(json!({"user": wire::user(&user, status.as_str(), Dates::Iso, own)})))
    }

    async fn set_status(&self, user: &User) -> RestResult {
        let b = &self.body;
        if let Some(target) = b.opt_str("userId")?.or(b.opt_str("username")?) {
            if target != user.id.as_str() && target != user.username {
                return Err(RestError::typed(
                    StatusCode::FORBIDDEN,
                    "Editing user is not allowed [error-action-not-allowed]",
                    "error-action-not-allowed",
                ));
            }
        }
        self.ops
            .set_status("users.setStatus", user, b.opt_str("status")?, b.opt_str("message")?)
            .await?;
        Ok(ok(json!({})))
    }

    async fn get_status(&self, caller: &User, presence: bool) -> RestResult {
        let user = self.target_user(caller).await?;
        // The text is the stored one: Rocket.Chat keeps it whether or not the user is connected.
        let (status, connection, _) = self.ops.presence(&user).await?;
        let text = user.status_text.clone();
        if presence {
            return Ok(ok(
                json!({"presence": status.as_str(), "connectionStatus": connection.as_str()}),
            ));
        }
        let mut v = json!({"_id": user.id, "status": status.as_str(), "message": text});
        if user.id == caller.id {
            v["connectionStatus"] = json!(connection.as_str());
        }
        Ok(ok(v))
    }

    async fn create(&self, user: &User, t: RoomType, key: &str) -> RestResult {
        let b = &self.body;
        let name = b.str("name")?;
        let members = b.usernames("members")?;
        let read_only = b.opt_bool("readOnly")?;
        let method = if t == RoomType::Channel {
            "channels.create"
        } else {
            "groups.create"
        };
        let room = self.ops.create_room(method, user, t, name, members, read_only).await?;
        Ok(ok(json!({ key: wire::room(&room, Dates::Iso) })))
    }

    async fn find_channel(&self, id: Option<&str>, name: Option<&str>) -> Result<Room, RestError> {
        let room = match (id, name) {
            (Some(id), _) => self.ops.room(&RoomId::from(id)).await?,
            (None, Some(name)) => self.ops.room_by_name_or_id(name.trim_start_matches('#')).await?,
            (None, None) => {
                return Err(RestError::invalid(
                    "The parameter \"roomId\" or \"roomName\" is required",
                ))
            }
        };
        match room {
            Some(r) if r.t == RoomType::Channel => Ok(r),
            _ => Err(RestError::room_not_found()),
        }
    }

    async fn channel_from_query(&self, _user: &User) -> Result<Room, RestError> {
        self.find_channel(self.query.get("roomId"), self.query.get("roomName"))
            .await
    }

    async fn channel_from_body(&self) -> Result<Room, RestError> {
        self.find_channel(self.body.opt_str("roomId")?, self.body.opt_str("roomName")?)
            .await
    }

    /// `channels.list` (every public channel) and `channels.list.joined` (the caller's): one
    /// page, sorted by name; the listing and sorting run on a reader thread.
    async fn room_list(&self, endpoint: &str, of: Option<&User>) -> Result<String, RestError> {
        let (offset, count) = self.query.page()?;
        let (list, n, total) = self
            .ops
            .room_page(endpoint, of, |r| r.t == RoomType::Channel, offset, count, Dates::Iso)
            .await?;
        Ok(format!(
            r#"{{"channels":{list},"count":{n},"offset":{offset},"total":{total},"success":true}}"#
        ))
    }

    /// `rooms.get` / `subscriptions.get`: Rocket.Chat's `{update, remove, success}`, with the
    /// list rendered on a reader thread.
    async fn listing(&self, endpoint: &str, user: &User) -> Result<String, RestError> {
        let since = self.query.date("updatedSince")?;
        let rooms = endpoint == "rooms.get";
        let list = self.ops.listing_json(endpoint, user, rooms, since, Dates::Iso).await?;
        Ok(format!(r#"{{"update":{list},"remove":[],"success":true}}"#))
    }

    async fn members(&self, user: &User) -> RestResult {
        let room = self.channel_from_query(user).await?;
        if !self.ops.can_read(user, &room).await? {
            return Err(RestError::typed(
                StatusCode::FORBIDDEN,
                "Not allowed [error-not-allowed]",
                "error-not-allowed",
            ));
        }
        let (offset, count) = self.query.page()?;
        let store = &self.ops.hub.store;
        let mut members = store.members(&room.id).await.map_err(AppError::from)?;
        members.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let total = members.len();
        let wanted: Vec<UserId> = members.into_iter().skip(offset).take(count).collect();
        let mut page = Vec::new();
        for u in store.users(wanted).await.map_err(AppError::from)? {
            let status = self.ops.hub.presence_of(&u.id).0;
            page.push(json!({"_id": u.id, "username": u.username, "name": u.name, "status": status.as_str()}));
        }
        Ok(ok(
            json!({"members": page, "count": page.len(), "offset": offset, "total": total}),
        ))
    }

    async fn history(&self, user: &User, t: RoomType) -> Result<String, RestError> {
        let q = &self.query;
        let rid = match (q.get("roomId"), q.get("roomName")) {
            (Some(id), _) => RoomId::from(id),
            (None, Some(name)) if t == RoomType::Channel => self.find_channel(None, Some(name)).await?.id,
            _ => return Err(RestError::invalid("The required \"roomId\" param is missing")),
        };
        let (offset, count) = q.page()?;
        let hq = HistoryQuery {
            latest: q.date("latest")?,
            oldest: q.date("oldest")?,
            inclusive: q.flag("inclusive")?,
            offset: offset as u64,
            limit: count,
            count_total: false,
        };
        // A room the caller may not read is answered exactly like one that does not exist.
        let Some(list) = self
            .ops
            .history_json("history", user, &rid, Some(t), &hq, Dates::Iso)
            .await?
        else {
            return Err(RestError::room_not_found());
        };
        Ok(format!(r#"{{"messages":{list},"success":true}}"#))
    }

    async fn create_direct(&self, user: &User, endpoint: &str) -> RestResult {
        let b = &self.body;
        let other = match (b.opt_str("username")?, b.opt_str("usernames")?) {
            (Some(u), _) => u.to_owned(),
            (None, Some(list)) => {
                let names: Vec<&str> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty() && *n != user.username)
                    .collect();
                match names.as_slice() {
                    [one] => (*one).to_owned(),
                    [] => return Err(RestError::invalid("Param \"usernames\" names nobody")),
                    _ => {
                        return Err(RestError::typed(
                            StatusCode::BAD_REQUEST,
                            "Group direct messages are not supported [error-not-allowed]",
                            "error-not-allowed",
                        ))
                    }
                }
            }
            (None, None) => return Err(RestError::invalid("Param \"username\" is required")),
        };
        let room = self.ops.create_direct(endpoint, user, &other).await?;
        let mut v = wire::room(&room, Dates::Iso);
        v["rid"] = json!(room.id);
        Ok(ok(json!({ "room": v })))
    }

    /// `chat.postMessage`'s target: `#name`, `@username` (a direct room, created if needed), or
    /// a bare room id or name.
    async fn post_target(&self, user: &User) -> Result<RoomId, RestError> {
        let b = &self.body;
        if let Some(rid) = b.opt_str("roomId")? {
            return Ok(RoomId::from(rid));
        }
        let channel = b.str("channel")?;
        if let Some(username) = channel.strip_prefix('@') {
            return Ok(self.ops.create_direct("chat.postMessage", user, username).await?.id);
        }
        match self.ops.room_by_name_or_id(channel.trim_start_matches('#')).await? {
            Some(r) => Ok(r.id),
            None => Err(RestError::typed(
                StatusCode::BAD_REQUEST,
                "Invalid room [error-invalid-room]",
                "error-invalid-room",
            )),
        }
    }

    async fn post_message(&self, user: &User) -> RestResult {
        let rid = self.post_target(user).await?;
        let text = self.body.opt_str("text")?.unwrap_or("");
        let tmid = self.body.opt_str("tmid")?;
        let sent = self
            .ops
            .send_message("chat.postMessage", user, rid, None, text, tmid)
            .await?;
        let m = sent.unwrap_or_else(|existing| existing);
        let channel = self
            .body
            .opt_str("channel")?
            .or(self.body.opt_str("roomId")?)
            .unwrap_or_default();
        Ok(ok(json!({
            "ts": m.ts,
            "channel": channel,
            "message": wire::message(&m, Dates::Iso),
        })))
    }

    async fn send_message(&self, user: &User) -> RestResult {
        let m = match self.body.0.get("message") {
            Some(Value::Object(m)) => Body(m.clone()),
            _ => return Err(RestError::invalid("Param \"message\" must be an object")),
        };
        let rid = m.str("rid")?;
        let text = m.opt_str("msg")?.unwrap_or("");
        let sent = self
            .ops
            .send_message(
                "chat.sendMessage",
                user,
                RoomId::from(rid),
                m.opt_str("_id")?,
                text,
                m.opt_str("tmid")?,
            )
            .await?;
        let m = sent.unwrap_or_else(|existing| existing);
        Ok(ok(json!({"message": wire::message(&m, Dates::Iso)})))
    }

    async fn update_message(&self, user: &User) -> RestResult {
        let b = &self.body;
        let rid = b.str("roomId")?;
        let mid = b.str("msgId")?;
        let text = b.opt_str("text")?.unwrap_or("");
        let m = self
            .ops
            .update_message("chat.update", user, mid, Some(rid), text)
            .await?;
        Ok(ok(json!({"message": wire::message(&m, Dates::Iso)})))
    }

    async fn delete_message(&self, user: &User) -> RestResult {
        let b = &self.body;
        let rid = b.str("roomId")?;
        let mid = b.str("msgId")?;
        let m = self.ops.delete_message("chat.delete", user, mid, Some(rid)).await?;
        Ok(ok(json!({
            "_id": m.id,
            "ts": crate::ids::now_ms().to_string(),
            "message": {"_id": m.id, "rid": m.rid, "u": wire::user_ref(&m.u)},
        })))
    }
}

fn login_failed() -> RestError {
    RestError {
        status: StatusCode::UNAUTHORIZED,
        body: json!({"success": false, "status": "error", "error": "Unauthorized", "message": "Unauthorized"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_leniently() {
        let q = Query::parse(Some(
            "roomId=GENERAL&count=100&inclusive=True&latest=2023-11-14T22:13:20.123Z&x[]=a&x[]=b&name=a%20b",
        ));
        assert_eq!(q.get("roomId"), Some("GENERAL"));
        assert_eq!(q.page().ok(), Some((0, 100)));
        assert!(q.flag("inclusive").unwrap_or(false));
        assert_eq!(q.date("latest").ok().flatten(), Some(1_700_000_000_123));
        assert_eq!(q.0.get("x").map(Vec::len), Some(2));
        assert_eq!(q.get("name"), Some("a b"));
        let raw = Query::parse(Some("latest=2023-11-14T22:13:20.123+00:00&count=500"));
        assert_eq!(raw.date("latest").ok().flatten(), Some(1_700_000_000_123));
        assert_eq!(raw.page().ok(), Some((0, MAX_COUNT)));
        assert!(Query::parse(Some("count=abc")).page().is_err());
        assert!(Query::parse(Some("")).get("x").is_none());
    }

    #[test]
    fn app_errors_map_to_rest_statuses_by_blame() {
        let e: RestError = AppError::client("error-not-allowed", "Not allowed").into();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.body["errorType"], "error-not-allowed");
        let e: RestError = AppError::client("error-invalid-room", "Invalid room").into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body["error"], "Invalid room [error-invalid-room]");
        let e: RestError = AppError::invalid("x").into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body["errorType"], "invalid-params");
        let e: RestError = AppError::Store("disk on fire".into()).into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.body["errorType"], "error-store-unavailable");
        assert!(
            !e.body.to_string().contains("disk"),
            "store details never reach the client"
        );
        let e: RestError = AppError::internal("bug").into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
