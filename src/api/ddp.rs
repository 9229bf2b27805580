//! The DDP door (every shard, on the session's task): a method call's parameters, the
//! connection's login state ([`Conn`]) and the rendering of the one application error as a
//! Meteor error. Handlers live in the API group modules; [`call`] finds them in the routing
//! table ([`super::ddp_method`]).

use std::rc::Rc;

use serde_json::{json, Map, Value};

use crate::app::error::{AppError, Code, SERVER_BUSY, SERVER_BUSY_REASON, STORE_UNAVAILABLE, STORE_UNAVAILABLE_REASON};
use crate::app::ops::Ops;
use crate::chat::hub::SessionHandle;
use crate::ctx::ShardCtx;
use crate::protocol::ddp::MeteorError;
use crate::store::User;

/// A subscription made before the connection logged in, run once it does (Meteor re-runs a
/// connection's subscriptions when its user changes; bots re-subscribe before their resume
/// login after a reconnect).
pub struct PendingSub {
    pub id: String,
    pub name: String,
    pub params: Vec<Value>,
}

/// What the API keeps per DDP connection: its outbound handle, its user and login token.
pub struct Conn {
    pub handle: Rc<SessionHandle>,
    pub user: Option<User>,
    /// SHA-256 of the token this connection logged in with (for `logout`).
    pub token_hash: Option<String>,
    /// The client's address (after trusted proxies).
    pub ip: std::net::IpAddr,
    /// Subscriptions waiting for a login (bounded by `limits.max_subscriptions_per_session`).
    pub pending_subs: Vec<PendingSub>,
}

impl Conn {
    pub fn new(handle: Rc<SessionHandle>, ip: std::net::IpAddr) -> Self {
        Self {
            handle,
            user: None,
            token_hash: None,
            ip,
            pending_subs: Vec::new(),
        }
    }
}

/// A successful method answer: a JSON value (or none), or JSON text rendered off the shard.
pub enum DdpAnswer {
    Value(Option<Value>),
    Raw(String),
}

pub type DdpResult = Result<DdpAnswer, MeteorError>;

/// `Ok` with a value.
pub fn value(v: Value) -> DdpResult {
    Ok(DdpAnswer::Value(Some(v)))
}

/// `Ok` without a result.
pub fn none() -> DdpResult {
    Ok(DdpAnswer::Value(None))
}

/// One method call: the shard, the connection and the parameters. Clients may send more
/// parameters than a method reads (the mobile app appends one to every call): the surplus is
/// ignored.
pub struct Ddp<'a> {
    pub ctx: &'a ShardCtx,
    pub conn: &'a mut Conn,
    pub params: Vec<Value>,
    pub method: &'a str,
}

impl Ddp<'_> {
    pub fn ops(&self) -> Ops<'_> {
        self.ctx.ops()
    }

    /// The logged-in user.
    pub fn user(&self) -> Result<&User, MeteorError> {
        self.conn.user.as_ref().ok_or_else(MeteorError::not_logged_in)
    }

    pub fn param(&self, i: usize) -> Option<&Value> {
        self.params.get(i)
    }

    pub fn str_at(&self, i: usize, what: &str) -> Result<&str, MeteorError> {
        self.params
            .get(i)
            .and_then(Value::as_str)
            .ok_or_else(|| MeteorError::match_failed(&format!("{what} must be a string")))
    }

    /// An optional string parameter: absent, null or `""` (the mobile app's trailing argument) is
    /// `None`.
    pub fn opt_str_at(&self, i: usize, what: &str) -> Result<Option<&str>, MeteorError> {
        match self.params.get(i) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(MeteorError::match_failed(&format!("{what} must be a string"))),
        }
    }

    pub fn obj_at(&self, i: usize, what: &str) -> Result<&Map<String, Value>, MeteorError> {
        self.params
            .get(i)
            .and_then(Value::as_object)
            .ok_or_else(|| MeteorError::match_failed(&format!("{what} must be an object")))
    }
}

/// An optional string field: absent/null is `None`, anything but a string is a Match error.
pub fn opt_str<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, MeteorError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(MeteorError::match_failed(&format!("{key} must be a string"))),
    }
}

/// Runs one method call.
pub async fn call(ctx: &ShardCtx, conn: &mut Conn, method: &str, params: Vec<Value>) -> DdpResult {
    let Some(handler) = super::ddp_method(method) else {
        return Err(MeteorError::new(404, format!("Method '{method}' not found")));
    };
    let mut call = Ddp {
        ctx,
        conn,
        params,
        method,
    };
    handler(&mut call).await
}

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
