//! Users and presence: `users.info`, `users.setStatus` / `setUserStatus`,
//! `UserPresence:setDefaultStatus`, `UserPresence:online|away`, `users.getStatus`,
//! `users.getPresence`, `users.presence`. Runs on the caller's shard.

use serde_json::{json, Value};

use super::ddp::{self, Ddp, DdpResult};
use super::rest::{ok, Rest, RestError, RestResult};
use crate::app::error::AppError;
use crate::ids::UserId;
use crate::protocol::ddp::MeteorError;
use crate::protocol::wire::{self, Dates};
use crate::store::User;

/// Most users one `users.presence` call reports.
const MAX_PRESENCE_IDS: usize = 1000;

/// The user named by `userId` or `username` in the query, or the caller.
async fn target_user(c: &Rest<'_>, caller: &User) -> Result<User, RestError> {
    let store = &c.ctx.hub.store;
    let found = match (c.query.get("userId"), c.query.get("username")) {
        (Some(id), _) => store.user(&UserId::from(id)).await,
        (None, Some(name)) => store.user_by_username(name).await,
        (None, None) => return Ok(caller.clone()),
    }
    .map_err(AppError::from)?;
    found.ok_or_else(|| RestError::typed(hyper::StatusCode::BAD_REQUEST, "User not found.", "error-invalid-user"))
}

/// `GET users.info?userId|username`.
pub async fn info(c: &Rest<'_>) -> RestResult {
    let caller = c.user()?;
    if c.query.get("userId").is_none() && c.query.get("username").is_none() {
        return Err(RestError::invalid(
            "The required \"userId\" or \"username\" param was not provided",
        ));
    }
    let user = target_user(c, caller).await?;
    let own = user.id == caller.id;
    let status = c.ops().presence(&user).await?.0;
    Ok(ok(json!({"user": wire::user(&user, status.as_str(), Dates::Iso, own)})))
}

/// `POST users.setStatus {status?, message?, userId?|username?}` (only the caller's own).
pub async fn rest_set_status(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let b = &c.body;
    if let Some(target) = b.opt_str("userId")?.or(b.opt_str("username")?) {
        if target != user.id.as_str() && target != user.username {
            return Err(RestError::typed(
                hyper::StatusCode::FORBIDDEN,
                "Editing user is not allowed [error-action-not-allowed]",
                "error-action-not-allowed",
            ));
        }
    }
    c.ops()
        .set_status("users.setStatus", user, b.opt_str("status")?, b.opt_str("message")?)
        .await?;
    Ok(ok(json!({})))
}

/// `GET users.getStatus?userId|username` (the caller by default).
pub async fn get_status(c: &Rest<'_>) -> RestResult {
    let caller = c.user()?;
    let user = target_user(c, caller).await?;
    // The text is the stored one: Rocket.Chat keeps it whether or not the user is connected.
    let (status, connection, _) = c.ops().presence(&user).await?;
    let mut v = json!({"_id": user.id, "status": status.as_str(), "message": user.status_text});
    if user.id == caller.id {
        v["connectionStatus"] = json!(connection.as_str());
    }
    Ok(ok(v))
}

/// `GET users.getPresence?userId|username`.
pub async fn get_presence(c: &Rest<'_>) -> RestResult {
    let caller = c.user()?;
    let user = target_user(c, caller).await?;
    let (status, connection, _) = c.ops().presence(&user).await?;
    Ok(ok(
        json!({"presence": status.as_str(), "connectionStatus": connection.as_str()}),
    ))
}

/// `GET users.presence?ids=a,b[&from=ISO]`: the status of each named user who is not offline
/// (users not listed are offline, as the apps read it).
pub async fn presence(c: &Rest<'_>) -> RestResult {
    c.user()?;
    let ids: Vec<UserId> = c
        .query
        .0
        .get("ids")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(MAX_PRESENCE_IDS)
        .map(UserId::from)
        .collect();
    let mut users = Vec::new();
    if !ids.is_empty() {
        let read = c.ctx.hub.query_presence(ids.clone()).await?;
        for (uid, (status, _, text)) in ids.iter().zip(read) {
            if status != crate::chat::presence::Status::Offline {
                users.push(json!({"_id": uid, "status": status.as_str(), "statusText": text}));
            }
        }
    }
    Ok(ok(json!({"users": users, "full": ids.is_empty()})))
}

/// DDP `UserPresence:setDefaultStatus [status]`.
pub async fn set_default_status(c: &mut Ddp<'_>) -> DdpResult {
    let status = c.str_at(0, "status")?.to_owned();
    let user = c.user()?;
    c.ops().set_status(c.method, user, Some(&status), None).await?;
    ddp::value(json!(true))
}

/// DDP `UserPresence:online` / `UserPresence:away`.
pub async fn online_or_away(c: &mut Ddp<'_>) -> DdpResult {
    c.user()?;
    let away = c.method == "UserPresence:away";
    c.ctx.hub.set_idle(&c.conn.handle, away).await;
    ddp::value(json!(true))
}

/// DDP `setUserStatus [status?, text?]`.
pub async fn set_user_status(c: &mut Ddp<'_>) -> DdpResult {
    let status = match c.param(0) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(MeteorError::match_failed("statusType must be a string")),
    };
    let text = match c.param(1) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(MeteorError::match_failed("statusText must be a string")),
    };
    let user = c.user()?;
    c.ops()
        .set_status(c.method, user, status.as_deref(), text.as_deref())
        .await?;
    ddp::none()
}

/// Most users a listing or search reads (in username order) before filtering and paging.
const MAX_USER_SCAN: usize = 100_000;
/// Most users `users.autocomplete` and `spotlight` answer.
const MAX_SUGGESTIONS: usize = 10;
/// Most rooms `spotlight` answers.
const MAX_ROOM_SUGGESTIONS: usize = 10;
/// Longest search term accepted (characters).
const MAX_TERM_CHARS: usize = 120;

/// One condition of a `users.list` query on one field.
enum Cond {
    Is(Value),
    Not(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    /// `$regex` of plain text: a case-insensitive substring.
    Contains(String),
}

impl Cond {
    fn parse(field: &str, v: &Value) -> Result<Self, String> {
        let Value::Object(o) = v else {
            return Ok(Cond::Is(v.clone()));
        };
        let list = |v: &Value| {
            v.as_array()
                .cloned()
                .ok_or(format!("{field}: $in and $nin take arrays"))
        };
        let only = |key: &str| o.len() == 1 && o.contains_key(key);
        if let Some(Value::String(p)) = o.get("$regex") {
            let options = o.get("$options").and_then(Value::as_str).unwrap_or("");
            let plain = p
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '@'));
            let extra = o.keys().any(|k| k != "$regex" && k != "$options");
            if extra || !plain || !options.chars().all(|c| c == 'i') {
                return Err(format!(
                    "{field}: chatd matches $regex as plain text (letters, digits, space, _ - @)"
                ));
            }
            return Ok(Cond::Contains(p.to_lowercase()));
        }
        match (o.get("$ne"), o.get("$in"), o.get("$nin")) {
            (Some(v), _, _) if only("$ne") => Ok(Cond::Not(v.clone())),
            (_, Some(v), _) if only("$in") => Ok(Cond::In(list(v)?)),
            (_, _, Some(v)) if only("$nin") => Ok(Cond::NotIn(list(v)?)),
            _ => Err(format!("{field}: only a value, $ne, $in, $nin or $regex is understood")),
        }
    }

    fn holds(&self, actual: &Value) -> bool {
        match self {
            Cond::Is(v) => actual == v,
            Cond::Not(v) => actual != v,
            Cond::In(list) => list.contains(actual),
            Cond::NotIn(list) => !list.contains(actual),
            Cond::Contains(text) => actual
                .as_str()
                .is_some_and(|s| s.to_lowercase().contains(text.as_str())),
        }
    }
}

/// A `users.list` query: conditions on `_id`, `username`, `name`, `status`, `active`, `type`.
fn user_query(raw: Option<&str>) -> Result<Vec<(String, Cond)>, RestError> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let Ok(Value::Object(q)) = serde_json::from_str::<Value>(raw) else {
        return Err(RestError::invalid("Param \"query\" must be a JSON object"));
    };
    q.iter()
        .map(|(k, v)| {
            if !matches!(k.as_str(), "_id" | "username" | "name" | "status" | "active" | "type") {
                return Err(RestError::invalid(format!(
                    "Param \"query\" may name _id, username, name, status, active or type, not {k:?}"
                )));
            }
            Cond::parse(k, v).map(|c| (k.clone(), c)).map_err(RestError::invalid)
        })
        .collect()
}

/// A `fields` projection (`{"username": 1}` keeps, `{"emails": 0}` drops) applied to rendered
/// users; `_id` is always kept.
fn projection(raw: Option<&str>) -> Result<Option<(bool, Vec<String>)>, RestError> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Ok(None);
    };
    let Ok(Value::Object(f)) = serde_json::from_str::<Value>(raw) else {
        return Err(RestError::invalid("Param \"fields\" must be a JSON object"));
    };
    let keep = f.values().any(|v| v.as_i64() == Some(1) || v == &Value::Bool(true));
    Ok(Some((keep, f.keys().cloned().collect())))
}

fn project(mut v: Value, p: &Option<(bool, Vec<String>)>) -> Value {
    if let (Value::Object(o), Some((keep, fields))) = (&mut v, p) {
        o.retain(|k, _| k == "_id" || fields.contains(k) == *keep);
    }
    v
}

/// `GET users.list?query&fields&sort&offset&count` → `{users, count, offset, total}`, in
/// username order (`sort={"username":-1}` or `{"name":1}` also understood). `status` is the
/// live presence.
pub async fn list(c: &Rest<'_>) -> RestResult {
    let caller = c.user()?;
    if !crate::app::permissions::allows(crate::app::permissions::Permission::ViewDRoom, &caller.roles) {
        return Err(super::message_actions::not_allowed());
    }
    let conds = user_query(c.query.get("query"))?;
    let fields = projection(c.query.get("fields"))?;
    let (sort_key, descending) = match c.query.get("sort").filter(|s| !s.trim().is_empty()) {
        None => ("username".to_owned(), false),
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(o)) if o.len() == 1 => {
                let (k, v) = o
                    .iter()
                    .next()
                    .map(|(k, v)| (k.clone(), v.as_i64()))
                    .unwrap_or_default();
                if !matches!(k.as_str(), "username" | "name") || !matches!(v, Some(1 | -1)) {
                    return Err(RestError::invalid(
                        "Param \"sort\" may order by username or name, 1 or -1",
                    ));
                }
                (k, v == Some(-1))
            }
            _ => return Err(RestError::invalid("Param \"sort\" must be a JSON object")),
        },
    };
    let (offset, count) = c.query.page()?;
    let users = c
        .ctx
        .hub
        .store
        .users_matching(None, MAX_USER_SCAN)
        .await
        .map_err(AppError::from)?;
    let statuses = c
        .ctx
        .hub
        .query_presence(users.iter().map(|u| u.id.clone()).collect())
        .await?;
    let mut rendered: Vec<Value> = users
        .iter()
        .zip(statuses)
        .map(|(u, (status, _, _))| wire::user(u, status.as_str(), Dates::Iso, false))
        .filter(|v| conds.iter().all(|(k, cond)| cond.holds(&v[k.as_str()])))
        .collect();
    if sort_key == "name" {
        rendered.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_lowercase());
    }
    if descending {
        rendered.reverse();
    }
    let total = rendered.len();
    let page: Vec<Value> = rendered
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|v| project(v, &fields))
        .collect();
    Ok(ok(
        json!({"users": page, "count": page.len(), "offset": offset, "total": total}),
    ))
}

/// A search term as the clients send it (`@name` and `#room` prefixes dropped).
fn term_of(raw: &str) -> Result<String, String> {
    let term = raw.trim().trim_start_matches(['@', '#']).to_owned();
    if term.chars().count() > MAX_TERM_CHARS {
        return Err(format!("the search term is limited to {MAX_TERM_CHARS} characters"));
    }
    Ok(term)
}

/// Active users matching `term`, minus `exclude` (usernames), at most `limit`, each with their
/// live status: `{_id, username, name, status, statusText}`.
async fn suggest_users(
    ops: &crate::app::ops::Ops<'_>,
    term: &str,
    exclude: &[String],
    limit: usize,
) -> Result<Vec<Value>, AppError> {
    let term = (!term.is_empty()).then(|| term.to_owned());
    let mut users = ops.hub.store.users_matching(term, MAX_USER_SCAN).await?;
    users.retain(|u| u.active && !exclude.contains(&u.username));
    users.truncate(limit);
    let statuses = ops
        .hub
        .query_presence(users.iter().map(|u| u.id.clone()).collect())
        .await?;
    Ok(users
        .iter()
        .zip(statuses)
        .map(|(u, (status, _, text))| {
            json!({"_id": u.id, "username": u.username, "name": u.name, "status": status.as_str(), "statusText": text})
        })
        .collect())
}

/// `GET users.autocomplete?selector={"term", "exceptions"?}` → `{items}`.
pub async fn autocomplete(c: &Rest<'_>) -> RestResult {
    c.user()?;
    let raw = c
        .query
        .get("selector")
        .ok_or_else(|| RestError::invalid("The required \"selector\" query param is missing."))?;
    let Ok(Value::Object(selector)) = serde_json::from_str::<Value>(raw) else {
        return Err(RestError::invalid("Param \"selector\" must be a JSON object"));
    };
    let term = match selector.get("term") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(t)) => term_of(t).map_err(RestError::invalid)?,
        Some(_) => return Err(RestError::invalid("selector.term must be a string")),
    };
    let exclude: Vec<String> = match selector.get("exceptions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(_) => return Err(RestError::invalid("selector.exceptions must be an array")),
    };
    let items = suggest_users(&c.ops(), &term, &exclude, MAX_SUGGESTIONS).await?;
    Ok(ok(json!({"items": items})))
}

/// DDP `spotlight [text, usernamesToExclude?, {users?, rooms?}?, rid?]` → `{users, rooms}`:
/// active users and the rooms the caller may see (their own rooms and public channels) whose
/// names contain the text.
pub async fn spotlight(c: &mut Ddp<'_>) -> DdpResult {
    let term = term_of(c.str_at(0, "text")?).map_err(|e| MeteorError::match_failed(&e))?;
    let exclude: Vec<String> = match c.param(1) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(_) => return Err(MeteorError::match_failed("usernames must be an array")),
    };
    let (want_users, want_rooms) = match c.param(2) {
        None | Some(Value::Null) => (true, true),
        Some(Value::Object(o)) => (
            o.get("users").and_then(Value::as_bool).unwrap_or(false),
            o.get("rooms").and_then(Value::as_bool).unwrap_or(false),
        ),
        Some(_) => return Err(MeteorError::match_failed("type must be an object")),
    };
    let user = c.user()?;
    let ops = c.ops();
    let users = if want_users {
        suggest_users(&ops, &term, &exclude, MAX_SUGGESTIONS).await?
    } else {
        Vec::new()
    };
    let rooms = if want_rooms {
        ops.rooms_named(user, &term, MAX_ROOM_SUGGESTIONS)
            .await?
            .iter()
            .map(|r| json!({"_id": r.id, "name": r.name, "fname": r.fname, "t": r.t.code()}))
            .collect()
    } else {
        Vec::new()
    };
    ddp::value(json!({"users": users, "rooms": rooms}))
}
