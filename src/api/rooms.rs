//! Rooms: creating channels, groups and direct rooms (`createChannel` / `channels.create`,
//! `createPrivateGroup` / `groups.create`, `createDirectMessage` / `im.create`), joining and
//! leaving (`joinRoom` / `channels.join`, `leaveRoom` / `channels.leave`), lookups
//! (`channels.info`, `getRoomIdByNameOrId`, `getRoomNameById`), listings (`rooms.get` /
//! `rooms/get`, `channels.list`, `channels.list.joined`) and members (`channels.members`).
//! Runs on the caller's shard.

use serde_json::{json, Value};

use super::ddp::{self, Ddp, DdpAnswer, DdpResult};
use super::rest::{ok, Answer, Rest, RestError, RestResult};
use crate::app::error::AppError;
use crate::ids::{RoomId, UserId};
use crate::protocol::ddp::MeteorError;
use crate::protocol::wire::{self, Dates};
use crate::store::{Room, RoomType, User};

/// The members a DDP create call names (`[name, members?, readOnly?]`).
fn ddp_members(c: &Ddp<'_>) -> Result<Vec<String>, MeteorError> {
    match c.param(1) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| MeteorError::match_failed("members must be usernames")),
        Some(_) => Err(MeteorError::match_failed("members must be an array")),
    }
}

/// DDP `createChannel` / `createPrivateGroup [name, members?, readOnly?]`.
pub async fn ddp_create(c: &mut Ddp<'_>) -> DdpResult {
    let t = if c.method == "createChannel" {
        RoomType::Channel
    } else {
        RoomType::Private
    };
    let name = c.str_at(0, "name")?.to_owned();
    let members = ddp_members(c)?;
    let read_only = match c.param(2) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(MeteorError::match_failed("readOnly must be a boolean")),
    };
    let user = c.user()?;
    let room = c
        .ops()
        .create_room(c.method, user, t, &name, members, read_only)
        .await?;
    let mut v = wire::room(&room, Dates::Ejson);
    if let Value::Object(o) = &mut v {
        o.insert("rid".into(), json!(room.id));
        o.insert("inserted".into(), json!(true));
    }
    ddp::value(v)
}

/// REST `channels.create` / `groups.create {name, members?, readOnly?}`.
pub async fn rest_create(c: &Rest<'_>, t: RoomType) -> RestResult {
    let user = c.user()?;
    let b = &c.body;
    let (method, key) = if t == RoomType::Channel {
        ("channels.create", "channel")
    } else {
        ("groups.create", "group")
    };
    let room = c
        .ops()
        .create_room(
            method,
            user,
            t,
            b.str("name")?,
            b.usernames("members")?,
            b.opt_bool("readOnly")?,
        )
        .await?;
    Ok(ok(json!({ key: wire::room(&room, Dates::Iso) })))
}

pub async fn channels_create(c: &Rest<'_>) -> RestResult {
    rest_create(c, RoomType::Channel).await
}

pub async fn groups_create(c: &Rest<'_>) -> RestResult {
    rest_create(c, RoomType::Private).await
}

/// DDP `createDirectMessage [username]` (one other user).
pub async fn ddp_create_direct(c: &mut Ddp<'_>) -> DdpResult {
    let other = c.str_at(0, "username")?.to_owned();
    // A second username (group DMs) — the mobile app's trailing "" is not one.
    if c.opt_str_at(1, "username")?.is_some() {
        return Err(
            MeteorError::new("error-not-allowed", "Group direct messages are not supported")
                .with_method("createDirectMessage"),
        );
    }
    let user = c.user()?;
    let room = c.ops().create_direct("createDirectMessage", user, &other).await?;
    ddp::value(json!({"t": "d", "rid": room.id, "_id": room.id, "usernames": room.usernames}))
}

/// REST `im.create` / `dm.create {username}` or `{usernames: "a,b"}`.
pub async fn rest_create_direct(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let b = &c.body;
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
                        hyper::StatusCode::BAD_REQUEST,
                        "Group direct messages are not supported [error-not-allowed]",
                        "error-not-allowed",
                    ))
                }
            }
        }
        (None, None) => return Err(RestError::invalid("Param \"username\" is required")),
    };
    let room = c.ops().create_direct("im.create", user, &other).await?;
    let mut v = wire::room(&room, Dates::Iso);
    v["rid"] = json!(room.id);
    Ok(ok(json!({ "room": v })))
}

/// DDP `joinRoom [rid, joinCode?]`.
pub async fn ddp_join(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let user = c.user()?;
    c.ops().join("joinRoom", user, rid).await?;
    ddp::value(json!(true))
}

/// DDP `leaveRoom [rid]`.
pub async fn ddp_leave(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let user = c.user()?;
    c.ops().leave("leaveRoom", user, rid).await?;
    ddp::none()
}

/// A public channel by `roomId` or `roomName`.
async fn find_channel(c: &Rest<'_>, id: Option<&str>, name: Option<&str>) -> Result<Room, RestError> {
    let room = match (id, name) {
        (Some(id), _) => c.ops().room(&RoomId::from(id)).await?,
        (None, Some(name)) => c.ops().room_by_name_or_id(name.trim_start_matches('#')).await?,
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

pub async fn channel_from_query(c: &Rest<'_>) -> Result<Room, RestError> {
    find_channel(c, c.query.get("roomId"), c.query.get("roomName")).await
}

async fn channel_from_body(c: &Rest<'_>) -> Result<Room, RestError> {
    find_channel(c, c.body.opt_str("roomId")?, c.body.opt_str("roomName")?).await
}

/// `GET channels.info?roomId|roomName`.
pub async fn channels_info(c: &Rest<'_>) -> RestResult {
    c.user()?;
    let room = channel_from_query(c).await?;
    Ok(ok(json!({"channel": wire::room(&room, Dates::Iso)})))
}

/// `POST channels.join {roomId|roomName}`.
pub async fn channels_join(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let room = channel_from_body(c).await?;
    c.ops().join("channels.join", user, room.id.clone()).await?;
    let room = c.ops().room(&room.id).await?.unwrap_or(room);
    Ok(ok(json!({"channel": wire::room(&room, Dates::Iso)})))
}

/// `POST channels.leave {roomId|roomName}`.
pub async fn channels_leave(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let room = channel_from_body(c).await?;
    c.ops().leave("channels.leave", user, room.id.clone()).await?;
    let room = c.ops().room(&room.id).await?.unwrap_or(room);
    Ok(ok(json!({"channel": wire::room(&room, Dates::Iso)})))
}

/// `channels.list` (every public channel) and `channels.list.joined` (the caller's): one page,
/// sorted by name; the listing and sorting run on a reader thread.
async fn room_list(c: &Rest<'_>, endpoint: &str, of: Option<&User>) -> RestResult {
    let (offset, count) = c.query.page()?;
    let (list, n, total) = c
        .ops()
        .room_page(endpoint, of, |r| r.t == RoomType::Channel, offset, count, Dates::Iso)
        .await?;
    Ok(Answer::Raw(format!(
        r#"{{"channels":{list},"count":{n},"offset":{offset},"total":{total},"success":true}}"#
    )))
}

pub async fn channels_list(c: &Rest<'_>) -> RestResult {
    c.user()?;
    room_list(c, "channels.list", None).await
}

pub async fn channels_list_joined(c: &Rest<'_>) -> RestResult {
    room_list(c, "channels.list.joined", Some(c.user()?)).await
}

/// `GET channels.members?roomId|roomName&offset&count`.
pub async fn channels_members(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let room = channel_from_query(c).await?;
    if !c.ops().can_read(user, &room).await? {
        return Err(RestError::typed(
            hyper::StatusCode::FORBIDDEN,
            "Not allowed [error-not-allowed]",
            "error-not-allowed",
        ));
    }
    let (offset, count) = c.query.page()?;
    let store = &c.ctx.hub.store;
    let mut members = store.members(&room.id).await.map_err(AppError::from)?;
    members.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let total = members.len();
    let wanted: Vec<UserId> = members.into_iter().skip(offset).take(count).collect();
    let mut page = Vec::new();
    for u in store.users(wanted).await.map_err(AppError::from)? {
        let status = c.ctx.hub.presence_of(&u.id).0;
        page.push(json!({"_id": u.id, "username": u.username, "name": u.name, "status": status.as_str()}));
    }
    Ok(ok(
        json!({"members": page, "count": page.len(), "offset": offset, "total": total}),
    ))
}

/// A room the user may see; a hidden room is answered exactly like a missing one.
async fn accessible_room(c: &Ddp<'_>, name_or_id: &str) -> Result<Room, MeteorError> {
    let user = c.user()?;
    let room = c.ops().room_by_name_or_id(name_or_id).await?;
    match c.ops().visible_room(user, room).await? {
        Some(r) => Ok(r),
        None => Err(MeteorError::new("error-not-allowed", "Not allowed")),
    }
}

/// DDP `getRoomIdByNameOrId [nameOrId]`.
pub async fn room_id_by_name_or_id(c: &mut Ddp<'_>) -> DdpResult {
    let room = accessible_room(c, c.str_at(0, "name or id")?).await?;
    ddp::value(json!(room.id))
}

/// DDP `getRoomNameById [rid]`.
pub async fn room_name_by_id(c: &mut Ddp<'_>) -> DdpResult {
    let room = accessible_room(c, c.str_at(0, "rid")?).await?;
    ddp::value(json!(room.name))
}

/// DDP `rooms/get [{$date}?]`: every room of the caller, or `{update, remove}` since a date.
pub async fn ddp_rooms_get(c: &mut Ddp<'_>) -> DdpResult {
    super::subscriptions::ddp_listing(c, true).await.map(DdpAnswer::Raw)
}

/// REST `GET rooms.get?updatedSince`.
pub async fn rest_rooms_get(c: &Rest<'_>) -> RestResult {
    super::subscriptions::rest_listing(c, true).await
}
