//! Permissions, roles and licences: `permissions.listAll` / `permissions/get`, `roles.list`,
//! `getUserRoles` / `roles.getUsersInPublicRoles`, `license:getModules`. The table is
//! [`crate::app::permissions`]; the rules enforce it. Runs on the caller's shard.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::ddp::{self, Ddp, DdpResult};
use super::rest::{ok, Rest, RestResult};
use crate::app::error::AppError;
use crate::app::permissions::{public_roles, PERMISSIONS, PERMISSIONS_UPDATED_AT, ROLES};
use crate::protocol::wire::{self, Dates};

/// How long a shard reuses the list of users holding public roles (it is a scan of every user;
/// roles change by operator command, rarely).
const PUBLIC_ROLES_TTL: Duration = Duration::from_secs(60);

thread_local! {
    /// This shard's cached answer of [`users_in_public_roles_list`] (a shard's thread only).
    static PUBLIC_ROLE_USERS: RefCell<Option<(Instant, Value)>> = const { RefCell::new(None) };
}

/// Every permission changed after `since` (all without one), in Rocket.Chat's shape.
fn permissions_since(since: Option<i64>, d: Dates) -> Vec<Value> {
    if since.is_some_and(|t| t >= PERMISSIONS_UPDATED_AT) {
        return Vec::new();
    }
    PERMISSIONS
        .iter()
        .map(|(id, roles)| json!({"_id": id, "roles": roles, "_updatedAt": d.date(PERMISSIONS_UPDATED_AT)}))
        .collect()
}

/// REST `GET permissions.listAll[?updatedSince=<ISO>]`: `{update, remove}`.
pub async fn list_all(c: &Rest<'_>) -> RestResult {
    c.user()?;
    let since = c.query.date("updatedSince")?;
    Ok(ok(
        json!({"update": permissions_since(since, Dates::Iso), "remove": []}),
    ))
}

/// DDP `permissions/get [{$date}?]`: the list, or `{update, remove}` since a date.
pub async fn ddp_permissions_get(c: &mut Ddp<'_>) -> DdpResult {
    c.user()?;
    match c.param(0).and_then(wire::parse_date) {
        None => ddp::value(json!(permissions_since(None, Dates::Ejson))),
        Some(t) => ddp::value(json!({"update": permissions_since(Some(t), Dates::Ejson), "remove": []})),
    }
}

/// REST `GET roles.list`.
pub async fn roles_list(c: &Rest<'_>) -> RestResult {
    c.user()?;
    let roles: Vec<Value> = ROLES
        .iter()
        .map(|(name, scope, description)| {
            json!({
                "_id": name,
                "name": name,
                "scope": scope,
                "description": description,
                "protected": true,
                "mandatory2fa": false,
            })
        })
        .collect();
    Ok(ok(json!({ "roles": roles })))
}

/// The users holding a public role (`admin` by default), `{_id, username, roles}` with only
/// their public roles, sorted by username.
async fn users_in_public_roles_list(ops: crate::app::ops::Ops<'_>) -> Result<Value, AppError> {
    let cached = PUBLIC_ROLE_USERS.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < PUBLIC_ROLES_TTL)
            .map(|(_, v)| v.clone())
    });
    if let Some(v) = cached {
        return Ok(v);
    }
    let list = ops
        .hub
        .store
        .read(|b| {
            let public: Vec<&str> = public_roles().collect();
            let mut users: Vec<(String, Value)> = b
                .all_users()?
                .into_iter()
                .filter_map(|u| {
                    let roles: Vec<&String> = u.roles.iter().filter(|r| public.contains(&r.as_str())).collect();
                    (!roles.is_empty()).then(|| {
                        (
                            u.username.to_lowercase(),
                            json!({"_id": u.id, "username": u.username, "roles": roles}),
                        )
                    })
                })
                .collect();
            users.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(Value::Array(users.into_iter().map(|(_, v)| v).collect()))
        })
        .await?;
    PUBLIC_ROLE_USERS.with(|c| *c.borrow_mut() = Some((Instant::now(), list.clone())));
    Ok(list)
}

/// DDP `getUserRoles` (apps before 7.10).
pub async fn get_user_roles(c: &mut Ddp<'_>) -> DdpResult {
    c.user()?;
    ddp::value(users_in_public_roles_list(c.ops()).await?)
}

/// REST `GET roles.getUsersInPublicRoles` (apps from 7.10).
pub async fn users_in_public_roles(c: &Rest<'_>) -> RestResult {
    c.user()?;
    Ok(ok(json!({"users": users_in_public_roles_list(c.ops()).await?})))
}

/// DDP `license:getModules`: the enterprise modules licensed (none).
pub async fn license_modules(c: &mut Ddp<'_>) -> DdpResult {
    c.user()?;
    ddp::value(json!([]))
}
