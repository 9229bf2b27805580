//! The REST door (`/api/v1/*`, every shard, behind hyper): reads a request (lenient query
//! strings, a JSON body under a size cap), authenticates it with `X-User-Id` / `X-Auth-Token`
//! (the same resume tokens DDP uses), counts it against the rate limits (by user, or by address
//! before login), finds its handler in the routing table ([`super::rest_route`]) and renders the
//! answer or the error in Rocket.Chat's envelope. Handlers live in the API group modules.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::app::error::AppError;
use crate::app::ops::Ops;
use crate::ctx::ShardCtx;
use crate::gateway::http::{json_response, raw_json_response};
use crate::gateway::ratelimit::{self, RestKey};
use crate::protocol::wire;
use crate::store::User;

/// `API_Default_Count` and `API_Upper_Count_Limit` of Rocket.Chat.
const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 100;

pub type Reply = Response<Full<Bytes>>;

/// A failed request: the HTTP status and Rocket.Chat's error envelope.
#[derive(Debug)]
pub struct RestError {
    pub status: StatusCode,
    pub body: Value,
}

impl RestError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"success": false, "error": error.into()}),
        }
    }

    pub fn typed(status: StatusCode, error: impl Into<String>, error_type: &str) -> Self {
        Self {
            status,
            body: json!({"success": false, "error": error.into(), "errorType": error_type}),
        }
    }

    pub fn invalid(what: impl Into<String>) -> Self {
        Self::typed(StatusCode::BAD_REQUEST, what, "invalid-params")
    }

    pub fn unauthorized() -> Self {
        let text = "You must be logged in to do this.";
        Self {
            status: StatusCode::UNAUTHORIZED,
            body: json!({"success": false, "status": "error", "error": text, "message": text}),
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Resource not found")
    }

    pub fn room_not_found() -> Self {
        Self::typed(
            StatusCode::BAD_REQUEST,
            "The required \"roomId\" or \"roomName\" param provided does not match any channel [error-room-not-found]",
            "error-room-not-found",
        )
    }

    pub fn reply(self) -> Reply {
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
                    crate::app::error::STORE_UNAVAILABLE_REASON,
                    crate::app::error::STORE_UNAVAILABLE,
                );
            }
            e @ AppError::Busy(_) => {
                e.log("rest");
                return Self::typed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    crate::app::error::SERVER_BUSY_REASON,
                    crate::app::error::SERVER_BUSY,
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

/// Query parameters, decoded leniently: some clients send them without percent-encoding, and
/// Python clients send booleans as `True` / `False` and lists as `key[]=a&key[]=b`.
pub struct Query(pub HashMap<String, Vec<String>>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
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

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    /// A parameter that must be present and not empty (Rocket.Chat's "required param" error).
    pub fn required(&self, key: &str) -> Result<&str, RestError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RestError::invalid(format!("The required \"{key}\" query param is missing.")))
    }

    pub fn flag(&self, key: &str) -> Result<bool, RestError> {
        match self.get(key) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" || v.is_empty() => Ok(false),
            Some(v) => Err(RestError::invalid(format!("{key} must be a boolean, not {v:?}"))),
        }
    }

    pub fn number(&self, key: &str) -> Result<Option<usize>, RestError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| RestError::invalid(format!("{key} must be a non-negative integer, not {v:?}")))
            })
            .transpose()
    }

    pub fn date(&self, key: &str) -> Result<Option<i64>, RestError> {
        self.get(key)
            .map(|v| {
                // `+` in an ISO offset arrives as a space when the client did not encode it.
                wire::parse_date(&Value::String(v.trim().replace(' ', "+")))
                    .ok_or_else(|| RestError::invalid(format!("{key} must be an ISO-8601 date, not {v:?}")))
            })
            .transpose()
    }

    /// Rocket.Chat's `offset` / `count`: count defaults to 50 and is capped at 100.
    pub fn page(&self) -> Result<(usize, usize), RestError> {
        let offset = self.number("offset")?.unwrap_or(0);
        let count = match self.number("count")? {
            None | Some(0) => DEFAULT_COUNT,
            Some(c) => c.min(MAX_COUNT),
        };
        Ok((offset, count))
    }
}

/// A JSON request body (an empty body is an empty object).
pub struct Body(pub Map<String, Value>);

impl Body {
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, RestError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RestError::invalid(format!("Param \"{key}\" must be a string"))),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str, RestError> {
        match self.opt_str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(RestError::invalid(format!("Param \"{key}\" is required"))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<bool, RestError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(RestError::invalid(format!("Param \"{key}\" must be a boolean"))),
        }
    }

    pub fn usernames(&self, key: &str) -> Result<Vec<String>, RestError> {
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

pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Body, RestError> {
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
    "updatedSince",
    "lastUpdate",
    "next",
    "previous",
    "type",
    "_id",
    "query",
    "ids",
];
#[doc(hidden)]
pub const BODY_KEYS: &[&str] = &[
    "username", "password", "user", "email", "resume", "pass", "name", "members", "readOnly", "roomId", "channel",
    "text", "msg", "message", "status", "userId", "msgId", "_id", "rid",
];

/// A successful answer: `v` with `success: true` added.
pub fn ok(mut v: Value) -> Answer {
    if let Value::Object(o) = &mut v {
        o.insert("success".into(), Value::Bool(true));
    }
    Answer::Json(v)
}

pub fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A successful answer: a JSON value, or JSON text rendered elsewhere (off the shard).
pub enum Answer {
    Json(Value),
    Raw(String),
}

/// What a REST handler returns.
pub type RestResult = Result<Answer, RestError>;

/// Who may call an endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (login, registration, public settings).
    Public,
    /// A logged-in user (`X-User-Id` / `X-Auth-Token`).
    User,
}

/// One REST request after routing: who is calling and what they sent.
pub struct Rest<'a> {
    pub ctx: &'a ShardCtx,
    pub query: Query,
    pub body: Body,
    /// The client's address (after trusted proxies).
    pub ip: std::net::IpAddr,
    /// The caller, on endpoints that need one.
    pub user: Option<User>,
    /// The caller's raw token (logout).
    pub token: Option<String>,
    /// What follows a route's prefix (`method.call/<name>`), when it has one.
    pub tail: String,
    /// The endpoint as requested (`channels.invite`): handlers shared by a family of
    /// endpoints tell them apart by it.
    pub endpoint: String,
}

impl Rest<'_> {
    pub fn ops(&self) -> Ops<'_> {
        self.ctx.ops()
    }

    /// The authenticated caller.
    pub fn user(&self) -> Result<&User, RestError> {
        self.user.as_ref().ok_or_else(RestError::unauthorized)
    }
}

/// Serves one `/api/v1/*` request.
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

/// Counts a call to `endpoint` against the REST rule for `key`; refused past it (429).
fn rate_limit(
    ctx: &ShardCtx,
    key: RestKey,
    method: &Method,
    endpoint: &str,
    limit: &mut Option<ratelimit::Verdict>,
) -> Result<(), RestError> {
    // Routes with a tail (`method.call/<name>`) are counted by their prefix and tail's start.
    let route = format!(
        "{}{}",
        endpoint.chars().take(64).collect::<String>(),
        method.as_str().to_ascii_lowercase()
    );
    *limit = ctx
        .rate
        .check_rest(&ctx.config.rate_limits, key, &route, std::time::Instant::now());
    match limit {
        Some(v) if !v.allowed => Err(RestError {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: json!({
                "success": false,
                "error": format!(
                    "Error, too many requests. Please slow down. You must wait {} seconds before trying this endpoint again. [error-too-many-requests]",
                    ratelimit::seconds(v.reset_in)
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
    limit: &mut Option<ratelimit::Verdict>,
) -> RestResult {
    let endpoint = req
        .uri()
        .path()
        .strip_prefix("/api/v1/")
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let method = req.method().clone();
    let Some((route, access, handler)) = super::rest_route(&method, &endpoint) else {
        return Err(RestError::not_found());
    };
    let tail = endpoint
        .strip_prefix(route)
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned();
    let query = Query::parse(req.uri().query());
    let (uid, token) = (
        header(req.headers(), "x-user-id").map(str::to_owned),
        header(req.headers(), "x-auth-token").map(str::to_owned),
    );
    let user = match (access, &uid, &token) {
        (Access::Public, _, _) => None,
        (Access::User, Some(uid), Some(token)) => match ctx.ops().login_resume(token).await {
            Ok(l) if l.user.id.as_str() == uid => Some(l.user),
            _ => return Err(RestError::unauthorized()),
        },
        (Access::User, _, _) => return Err(RestError::unauthorized()),
    };
    // A whole company behind one address shares nothing: logged-in callers are counted by user.
    match &user {
        Some(u) if ratelimit::privileged(&u.roles) => {}
        Some(u) => rate_limit(ctx, RestKey::User(u.id.clone()), &method, &endpoint, limit)?,
        None => rate_limit(ctx, RestKey::Ip(ip), &method, &endpoint, limit)?,
    }
    let body = if method == Method::POST || method == Method::DELETE {
        read_body(req.into_body(), ctx.config.limits.max_http_body_bytes).await?
    } else {
        Body(Map::new())
    };
    let call = Rest {
        ctx,
        query,
        body,
        ip,
        user,
        token,
        tail,
        endpoint,
    };
    handler(&call).await
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
