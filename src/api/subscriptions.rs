//! Subscriptions: `subscriptions.get` / `subscriptions/get` (and the listing `rooms.get` shares),
//! `readMessages` / `subscriptions.read`. Runs on the caller's shard; listings are rendered on a
//! reader thread.

use serde_json::Value;

use super::ddp::{self, Ddp, DdpAnswer, DdpResult};
use super::rest::{ok, Answer, Rest, RestError, RestResult};
use crate::ids::RoomId;
use crate::protocol::wire::Dates;

/// The `updatedSince` argument of `rooms/get` / `subscriptions/get` (`{$date}`), if any.
fn since_param(params: &[Value]) -> Option<i64> {
    params
        .first()
        .and_then(|v| v.get("$date"))
        .and_then(Value::as_f64)
        .map(|f| f as i64)
}

/// The DDP listing: the bare list, or `{update, remove}` when a date is given.
pub async fn ddp_listing(c: &Ddp<'_>, rooms: bool) -> Result<String, crate::protocol::ddp::MeteorError> {
    let Some(user) = c.conn.user.as_ref() else {
        return Ok("[]".into());
    };
    let since = since_param(&c.params);
    let (update, remove) = c.ops().listing_json(c.method, user, rooms, since, Dates::Ejson).await?;
    Ok(match since {
        Some(_) => format!(r#"{{"update":{update},"remove":{remove}}}"#),
        None => update,
    })
}

/// The REST listing: `{update, remove, success}`.
pub async fn rest_listing(c: &Rest<'_>, rooms: bool) -> RestResult {
    let user = c.user()?;
    let since = c.query.date("updatedSince")?;
    let method = if rooms { "rooms.get" } else { "subscriptions.get" };
    let (update, remove) = c.ops().listing_json(method, user, rooms, since, Dates::Iso).await?;
    Ok(Answer::Raw(format!(
        r#"{{"update":{update},"remove":{remove},"success":true}}"#
    )))
}

/// DDP `subscriptions/get [{$date}?]`.
pub async fn ddp_get(c: &mut Ddp<'_>) -> DdpResult {
    ddp_listing(c, false).await.map(DdpAnswer::Raw)
}

/// REST `GET subscriptions.get?updatedSince`.
pub async fn rest_get(c: &Rest<'_>) -> RestResult {
    rest_listing(c, false).await
}

/// DDP `readMessages [rid, readThreads?]`.
pub async fn ddp_read(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let user = c.user()?;
    c.ops().mark_read("readMessages", user, rid).await?;
    ddp::none()
}

/// REST `POST subscriptions.read {rid}` (or `{roomId}`, `readThreads?`).
pub async fn rest_read(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let rid = match (c.body.opt_str("rid")?, c.body.opt_str("roomId")?) {
        (Some(r), _) | (None, Some(r)) if !r.is_empty() => r,
        _ => {
            return Err(RestError::invalid(
                "The required \"rid\" or \"roomId\" param is missing",
            ))
        }
    };
    let read_threads = c.body.opt_bool("readThreads")?;
    let rid = RoomId::from(rid);
    c.ops().mark_read("subscriptions.read", user, rid.clone()).await?;
    // The apps' "mark read" (5.4+) clears the room's unread threads too.
    if read_threads {
        let unread = c
            .ctx
            .hub
            .store
            .subscription(&user.id, &rid)
            .await
            .map_err(crate::app::error::AppError::from)?
            .map(|s| s.tunread)
            .unwrap_or_default();
        for tmid in unread {
            c.ops().read_thread("subscriptions.read", user, &tmid).await?;
        }
    }
    Ok(ok(serde_json::json!({})))
}

/// REST `POST subscriptions.unread {roomId}` or `{firstUnreadMessage: {_id}}`.
pub async fn rest_unread(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let first = match c.body.0.get("firstUnreadMessage") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => match m.get("_id") {
            Some(Value::String(id)) if !id.is_empty() => Some(crate::ids::MessageId::from(id.as_str())),
            _ => return Err(RestError::invalid("Param \"firstUnreadMessage._id\" must be a string")),
        },
        Some(_) => return Err(RestError::invalid("Param \"firstUnreadMessage\" must be an object")),
    };
    let rid = c.body.opt_str("roomId")?.filter(|r| !r.is_empty()).map(RoomId::from);
    if first.is_none() && rid.is_none() {
        return Err(RestError::invalid(
            "The required \"roomId\" or \"firstUnreadMessage\" param is missing",
        ));
    }
    c.ops().mark_unread("subscriptions.unread", user, rid, first).await?;
    Ok(ok(serde_json::json!({})))
}
