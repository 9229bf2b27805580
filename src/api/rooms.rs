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
use crate::ids::RoomId;
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

/// DDP `createDirectMessage [...usernames]`: one user, or several for a group conversation
/// (the mobile app's trailing `""` is not a username).
pub async fn ddp_create_direct(c: &mut Ddp<'_>) -> DdpResult {
    let mut names = Vec::new();
    for i in 0..c.params.len() {
        if let Some(name) = c.opt_str_at(i, "username")? {
            names.push(name.to_owned());
        }
    }
    if names.is_empty() {
        return Err(MeteorError::match_failed("username must be a string"));
    }
    let user = c.user()?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let room = c.ops().create_direct("createDirectMessage", user, &names).await?;
    ddp::value(json!({"t": "d", "rid": room.id, "_id": room.id, "usernames": room.usernames}))
}

/// REST `im.create` / `dm.create {username}` or `{usernames: "a,b,c"}`.
pub async fn rest_create_direct(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let b = &c.body;
    let names: Vec<&str> = match (b.opt_str("username")?, b.opt_str("usernames")?) {
        (Some(u), _) => vec![u],
        (None, Some(list)) => list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect(),
        (None, None) => return Err(RestError::invalid("Param \"username\" is required")),
    };
    if names.is_empty() {
        return Err(RestError::invalid("Param \"usernames\" names nobody"));
    }
    let room = c.ops().create_direct("im.create", user, &names).await?;
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

/// One page of a room's members in username order, each `{_id, username, name, status,
/// statusText, utcOffset}` with their live status, and how many matched: only those online
/// (not offline) when `online_only`, only those whose username or name contains `filter`.
async fn member_page_of(
    ops: &crate::app::ops::Ops<'_>,
    rid: &RoomId,
    online_only: bool,
    filter: Option<&str>,
    offset: usize,
    count: usize,
) -> Result<(Vec<Value>, usize), AppError> {
    let store = &ops.hub.store;
    let ids = store.members(rid).await?;
    let mut users = store.users(ids).await?;
    let filter = filter.map(str::to_lowercase).filter(|f| !f.is_empty());
    if let Some(f) = &filter {
        users.retain(|u| u.username.to_lowercase().contains(f.as_str()) || u.name.to_lowercase().contains(f.as_str()));
    }
    users.sort_by_key(|u| u.username.to_lowercase());
    let statuses = ops
        .hub
        .query_presence(users.iter().map(|u| u.id.clone()).collect())
        .await?;
    let listed: Vec<Value> = users
        .iter()
        .zip(statuses)
        .filter(|(_, (status, _, _))| !online_only || *status != crate::chat::presence::Status::Offline)
        .map(|(u, (status, _, text))| {
            json!({"_id": u.id, "username": u.username, "name": u.name, "status": status.as_str(),
                   "statusText": text, "utcOffset": 0})
        })
        .collect();
    let total = listed.len();
    Ok((listed.into_iter().skip(offset).take(count).collect(), total))
}

/// The members answer of `channels|groups|im.members?…&offset&count&status[]=online&filter`.
async fn members_answer(c: &Rest<'_>, room: &Room) -> RestResult {
    let (offset, count) = c.query.page()?;
    let online_only = c
        .query
        .0
        .get("status[]")
        .or_else(|| c.query.0.get("status"))
        .is_some_and(|v| !v.is_empty() && v.iter().all(|s| s != "offline"));
    let (page, total) = member_page_of(&c.ops(), &room.id, online_only, c.query.get("filter"), offset, count).await?;
    Ok(ok(
        json!({"members": page, "count": page.len(), "offset": offset, "total": total}),
    ))
}

/// `GET channels.members?roomId|roomName&offset&count&status[]&filter`.
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
    members_answer(c, &room).await
}

/// A private group the caller belongs to, by `roomId` or `roomName`; any other room (missing,
/// public, or not theirs) is Rocket.Chat's "does not match any group".
async fn find_group(c: &Rest<'_>, id: Option<&str>, name: Option<&str>) -> Result<Room, RestError> {
    let user = c.user()?;
    let room = match (id, name) {
        (Some(id), _) => c.ops().room(&RoomId::from(id)).await?,
        (None, Some(name)) => c.ops().room_by_name_or_id(name).await?,
        (None, None) => {
            return Err(RestError::invalid(
                "The parameter \"roomId\" or \"roomName\" is required",
            ))
        }
    };
    match room {
        Some(r) if r.t == RoomType::Private && c.ops().member_of(user, &r.id).await? => Ok(r),
        _ => Err(RestError::typed(
            hyper::StatusCode::BAD_REQUEST,
            "The required \"roomId\" or \"roomName\" param provided does not match any group [error-room-not-found]",
            "error-room-not-found",
        )),
    }
}

async fn group_from_query(c: &Rest<'_>) -> Result<Room, RestError> {
    find_group(c, c.query.get("roomId"), c.query.get("roomName")).await
}

async fn group_from_body(c: &Rest<'_>) -> Result<Room, RestError> {
    find_group(c, c.body.opt_str("roomId")?, c.body.opt_str("roomName")?).await
}

/// `GET groups.members?roomId|roomName&offset&count&status[]&filter`.
pub async fn groups_members(c: &Rest<'_>) -> RestResult {
    let room = group_from_query(c).await?;
    members_answer(c, &room).await
}

/// `GET im.members?roomId&offset&count`.
pub async fn im_members(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let rid = RoomId::from(
        c.query
            .get("roomId")
            .ok_or_else(|| RestError::invalid("The required \"roomId\" query param is missing."))?,
    );
    match c.ops().room(&rid).await? {
        Some(r) if r.t == RoomType::Direct && c.ops().member_of(user, &r.id).await? => members_answer(c, &r).await,
        _ => Err(RestError::room_not_found()),
    }
}

/// `GET groups.info?roomId|roomName` → `{group}`.
pub async fn groups_info(c: &Rest<'_>) -> RestResult {
    let room = group_from_query(c).await?;
    Ok(ok(json!({"group": wire::room(&room, Dates::Iso)})))
}

/// `POST groups.leave {roomId|roomName}`.
pub async fn groups_leave(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let room = group_from_body(c).await?;
    c.ops().leave("groups.leave", user, room.id.clone()).await?;
    Ok(ok(json!({})))
}

/// Rocket.Chat's answer for a room the caller may not see, or that does not exist
/// (`rooms.info`, `rooms.leave`).
fn room_not_allowed() -> RestError {
    RestError::typed(
        hyper::StatusCode::BAD_REQUEST,
        "Not Allowed [not-allowed]",
        "not-allowed",
    )
}

/// A room of any kind the caller may see, by `roomId` (or `roomName`) in `params`.
async fn visible_room_param(c: &Rest<'_>, id: Option<&str>, name: Option<&str>) -> Result<Room, RestError> {
    let user = c.user()?;
    let room = match (id, name) {
        (Some(id), _) => c.ops().room(&RoomId::from(id)).await?,
        (None, Some(name)) => c.ops().room_by_name_or_id(name).await?,
        (None, None) => {
            return Err(RestError::invalid(
                "The \"roomId\" or \"roomName\" parameter is required",
            ))
        }
    };
    c.ops().visible_room(user, room).await?.ok_or_else(room_not_allowed)
}

/// `GET rooms.info?roomId|roomName` → `{room}`. `rid` is read too: the 1.x bot SDK sends it
/// (on every incoming message, to tell direct rooms apart).
pub async fn rooms_info(c: &Rest<'_>) -> RestResult {
    let id = c.query.get("roomId").or(c.query.get("rid"));
    let room = visible_room_param(c, id, c.query.get("roomName")).await?;
    Ok(ok(json!({"room": wire::room(&room, Dates::Iso)})))
}

/// `POST rooms.leave {roomId}` (or `{rid}`, as the 1.x bot SDK sends it).
pub async fn rooms_leave(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let rid = c
        .body
        .opt_str("roomId")?
        .or(c.body.opt_str("rid")?)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| RestError::invalid("The required \"roomId\" param is missing."))?;
    let room = visible_room_param(c, Some(rid), None).await?;
    c.ops().leave("rooms.leave", user, room.id).await?;
    Ok(ok(json!({})))
}

/// DDP `getUsersOfRoom [rid, showAll, {limit, skip}?, filter?]` → `{total, records}`: the
/// room's members, all or only those online.
pub async fn get_users_of_room(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let show_all = match c.param(1) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(MeteorError::match_failed("showAll must be a boolean")),
    };
    let (limit, skip) = match c.param(2) {
        None | Some(Value::Null) => (usize::MAX, 0),
        Some(Value::Object(o)) => {
            let n = |k: &str, d: usize| match o.get(k) {
                None | Some(Value::Null) => Ok(d),
                Some(v) => v
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| MeteorError::match_failed(&format!("{k} must be a number"))),
            };
            (n("limit", usize::MAX)?, n("skip", 0)?)
        }
        Some(_) => return Err(MeteorError::match_failed("options must be an object")),
    };
    let filter = c.opt_str_at(3, "filter")?.map(str::to_owned);
    let user = c.user()?;
    let room = c.ops().room(&rid).await?;
    if c.ops().visible_room(user, room).await?.is_none() {
        return Err(MeteorError::new("error-not-allowed", "Not allowed").with_method("getUsersOfRoom"));
    }
    let (records, total) = member_page_of(&c.ops(), &rid, !show_all, filter.as_deref(), skip, limit).await?;
    ddp::value(json!({"total": total, "records": records}))
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
