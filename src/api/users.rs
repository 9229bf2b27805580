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
