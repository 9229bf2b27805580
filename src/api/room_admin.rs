//! Managing rooms: members (`addUserToRoom`, `addUsersToRoom` / `channels|groups.invite`,
//! `removeUserFromRoom` / `channels|groups.kick`), room roles (`addRoomOwner`,
//! `removeRoomOwner`, `addRoomModerator`, `removeRoomModerator` / `channels|groups.addOwner`
//! and the like), settings (`saveRoomSettings` / `rooms.saveRoomSettings`,
//! `channels|groups.setTopic|setAnnouncement|setDescription|rename|setReadOnly|archive|
//! unarchive`, `archiveRoom`, `unarchiveRoom`), and a room's place in the user's list
//! (`hideRoom`, `openRoom` / `channels|groups|im.open|close|hide`, `rooms.hide`). Rocket.Chat's
//! system messages are posted by the rules. Runs on the caller's shard.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::ddp::{self, opt_str, Ddp, DdpResult};
use super::rest::{ok, Rest, RestError, RestResult};
use crate::app::error::AppError;
use crate::ids::{RoomId, UserId};
use crate::protocol::ddp::MeteorError;
use crate::protocol::wire::{self, Dates};
use crate::store::{Room, RoomRole, RoomSettings, RoomType, User, WriteOp};

/// Which REST family names the room (`channels.*` for public channels, `groups.*` for private
/// groups, `im.*` for direct rooms, `rooms.*` for any).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Channels,
    Groups,
    Im,
    Rooms,
}

impl Family {
    fn of(endpoint: &str) -> Self {
        match endpoint.split('.').next() {
            Some("channels") => Family::Channels,
            Some("groups") => Family::Groups,
            Some("im" | "dm") => Family::Im,
            _ => Family::Rooms,
        }
    }

    fn admits(self, t: RoomType) -> bool {
        match self {
            Family::Channels => t == RoomType::Channel,
            Family::Groups => t == RoomType::Private,
            Family::Im => t == RoomType::Direct,
            Family::Rooms => true,
        }
    }

    /// The key the room is answered under.
    fn key(self) -> &'static str {
        match self {
            Family::Channels => "channel",
            Family::Groups => "group",
            _ => "room",
        }
    }

    fn not_found(self) -> RestError {
        match self {
            Family::Groups => RestError::typed(
                StatusCode::BAD_REQUEST,
                "The required \"roomId\" or \"roomName\" param provided does not match any group [error-room-not-found]",
                "error-room-not-found",
            ),
            _ => RestError::room_not_found(),
        }
    }
}

/// The endpoint's name (`channels.invite`, …).
fn endpoint<'a>(c: &'a Rest<'_>) -> &'a str {
    &c.endpoint
}

/// The room a REST body names (`roomId`, or `roomName`; `rid` for `rooms.*`), of the family's
/// kind and visible to the caller; anything else is the family's "not found".
async fn body_room(c: &Rest<'_>) -> Result<(Room, Family), RestError> {
    let family = Family::of(endpoint(c));
    let user = c.user()?;
    let b = &c.body;
    let room = match (b.opt_str("roomId")?.or(b.opt_str("rid")?), b.opt_str("roomName")?) {
        (Some(id), _) => c.ops().room(&RoomId::from(id)).await?,
        (None, Some(name)) => c.ops().room_by_name_or_id(name.trim_start_matches('#')).await?,
        (None, None) => {
            return Err(RestError::invalid(
                "The parameter \"roomId\" or \"roomName\" is required",
            ))
        }
    };
    match c.ops().visible_room(user, room).await? {
        Some(r) if family.admits(r.t) => Ok((r, family)),
        _ => Err(family.not_found()),
    }
}

/// The user a REST body names (`userId`, or `username`).
async fn body_user(c: &Rest<'_>) -> Result<User, RestError> {
    let store = &c.ctx.hub.store;
    let b = &c.body;
    let found = match (b.opt_str("userId")?, b.opt_str("username")?) {
        (Some(id), _) => store.user(&UserId::from(id)).await,
        (None, Some(name)) => store.user_by_username(name).await,
        (None, None) => {
            return Err(RestError::invalid(
                "The parameter \"userId\" or \"username\" is required",
            ))
        }
    }
    .map_err(AppError::from)?;
    found.ok_or_else(|| {
        RestError::typed(
            StatusCode::BAD_REQUEST,
            "Invalid user [error-invalid-user]",
            "error-invalid-user",
        )
    })
}

/// The room re-read after a write (its counters and settings as the write left them).
async fn fresh(c: &Rest<'_>, room: Room) -> Result<Room, RestError> {
    Ok(c.ops().room(&room.id).await?.unwrap_or(room))
}

/// `channels.invite` / `groups.invite {roomId|roomName, userId|userIds|username}`.
pub async fn rest_invite(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let (room, family) = body_room(c).await?;
    let mut usernames = Vec::new();
    if let Some(Value::Array(ids)) = c.body.0.get("userIds") {
        for id in ids {
            let id = id
                .as_str()
                .ok_or_else(|| RestError::invalid("Param \"userIds\" must be a list of ids"))?;
            let u = c.ctx.hub.store.user(&UserId::from(id)).await.map_err(AppError::from)?;
            let u = u.ok_or_else(|| {
                RestError::typed(
                    StatusCode::BAD_REQUEST,
                    "Invalid user [error-invalid-user]",
                    "error-invalid-user",
                )
            })?;
            usernames.push(u.username);
        }
    } else {
        usernames.push(body_user(c).await?.username);
    }
    let op = WriteOp::AddMembers {
        uid: user.id.clone(),
        rid: room.id.clone(),
        usernames,
    };
    c.ops().write(endpoint(c), op).await?;
    let room = fresh(c, room).await?;
    Ok(ok(json!({ family.key(): wire::room(&room, Dates::Iso) })))
}

/// `channels.kick` / `groups.kick {roomId|roomName, userId|username}`.
pub async fn rest_kick(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let (room, family) = body_room(c).await?;
    let target = body_user(c).await?;
    c.ops().remove_member(endpoint(c), user, &room.id, &target.id).await?;
    let room = fresh(c, room).await?;
    Ok(ok(json!({ family.key(): wire::room(&room, Dates::Iso) })))
}

/// `channels|groups.addOwner|removeOwner|addModerator|removeModerator {roomId, userId}`.
pub async fn rest_role(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let (room, _) = body_room(c).await?;
    let target = body_user(c).await?;
    let name = endpoint(c);
    let action = name.split('.').nth(1).unwrap_or_default();
    let (role, on) = match action {
        "addOwner" => (RoomRole::Owner, true),
        "removeOwner" => (RoomRole::Owner, false),
        "addModerator" => (RoomRole::Moderator, true),
        _ => (RoomRole::Moderator, false),
    };
    c.ops()
        .set_room_role(name, user, &room.id, &target.id, role, on)
        .await?;
    Ok(ok(json!({})))
}

/// A string setting in a REST body (`""` clears it).
fn text_param<'a>(c: &'a Rest<'_>, key: &str) -> Result<&'a str, RestError> {
    c.body
        .opt_str(key)?
        .ok_or_else(|| RestError::invalid(format!("The bodyParam \"{key}\" is required")))
}

/// `channels|groups.setTopic|setAnnouncement|setDescription|rename|setReadOnly|archive|
/// unarchive`: one setting; the answer names what was set, as Rocket.Chat's does.
pub async fn rest_setting(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let (room, family) = body_room(c).await?;
    let name = endpoint(c);
    let action = name.split('.').nth(1).unwrap_or_default();
    let mut settings = RoomSettings::default();
    let answer = match action {
        "setTopic" => {
            let v = text_param(c, "topic")?;
            settings.topic = Some(v.to_owned());
            json!({"topic": v})
        }
        "setAnnouncement" => {
            let v = text_param(c, "announcement")?;
            settings.announcement = Some(v.to_owned());
            json!({"announcement": v})
        }
        "setDescription" => {
            let v = text_param(c, "description")?;
            settings.description = Some(v.to_owned());
            json!({"description": v})
        }
        "rename" => {
            settings.name = Some(c.body.str("name")?.to_owned());
            Value::Null
        }
        "setReadOnly" => {
            match c.body.0.get("readOnly") {
                Some(Value::Bool(b)) => settings.read_only = Some(*b),
                _ => return Err(RestError::invalid("The bodyParam \"readOnly\" must be a boolean")),
            }
            Value::Null
        }
        "archive" => {
            settings.archived = Some(true);
            json!({})
        }
        _ => {
            settings.archived = Some(false);
            json!({})
        }
    };
    c.ops().save_room_settings(name, user, &room.id, settings).await?;
    if answer.is_null() {
        let room = fresh(c, room).await?;
        return Ok(ok(json!({ family.key(): wire::room(&room, Dates::Iso) })));
    }
    Ok(ok(answer))
}

/// The settings of a `rooms.saveRoomSettings` body or a DDP `saveRoomSettings` object
/// (Rocket.Chat's names: `roomName`, `roomTopic`, `roomAnnouncement`, `roomDescription`,
/// `readOnly`, `archived`); other settings are refused by name.
fn settings_from(o: &serde_json::Map<String, Value>, skip: &[&str]) -> Result<RoomSettings, String> {
    let mut s = RoomSettings::default();
    for (k, v) in o {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let text = || v.as_str().map(str::to_owned).ok_or(format!("{k} must be a string"));
        let flag = || v.as_bool().ok_or(format!("{k} must be a boolean"));
        match k.as_str() {
            "roomName" => s.name = Some(text()?),
            "roomTopic" => s.topic = Some(text()?),
            "roomAnnouncement" => s.announcement = Some(text()?),
            "roomDescription" => s.description = Some(text()?),
            "readOnly" => s.read_only = Some(flag()?),
            "archived" => s.archived = Some(flag()?),
            other => return Err(format!("Invalid room setting: {other}")),
        }
    }
    Ok(s)
}

/// `POST rooms.saveRoomSettings {rid, roomName?, roomTopic?, …}` → `{rid}`.
pub async fn rest_save_settings(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let (room, _) = body_room(c).await?;
    let settings = settings_from(&c.body.0, &["rid", "roomId"]).map_err(RestError::invalid)?;
    c.ops()
        .save_room_settings("rooms.saveRoomSettings", user, &room.id, settings)
        .await?;
    Ok(ok(json!({"rid": room.id})))
}

/// DDP `saveRoomSettings [rid, setting, value]` or `[rid, {setting: value, …}]` →
/// `{result: true, rid}`.
pub async fn ddp_save_settings(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let settings = match (c.param(1), c.param(2)) {
        (Some(Value::Object(o)), _) => settings_from(o, &[]),
        (Some(Value::String(k)), Some(v)) => {
            let mut o = serde_json::Map::new();
            o.insert(k.clone(), v.clone());
            settings_from(&o, &[])
        }
        _ => Err("settings must be an object, or a name and a value".to_owned()),
    }
    .map_err(|e| MeteorError::match_failed(&e))?;
    let user = c.user()?;
    c.ops()
        .save_room_settings("saveRoomSettings", user, &rid, settings)
        .await?;
    ddp::value(json!({"result": true, "rid": rid}))
}

/// DDP `archiveRoom [rid]` / `unarchiveRoom [rid]`.
pub async fn ddp_archive(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let archived = c.method == "archiveRoom";
    let user = c.user()?;
    let settings = RoomSettings {
        archived: Some(archived),
        ..RoomSettings::default()
    };
    c.ops().save_room_settings(c.method, user, &rid, settings).await?;
    ddp::value(json!(true))
}

/// DDP `addUserToRoom [{rid, username}]` / `addUsersToRoom [{rid, users: [usernames]}]` →
/// `true`.
pub async fn ddp_add_users(c: &mut Ddp<'_>) -> DdpResult {
    let o = c.obj_at(0, "data")?;
    let rid = RoomId::from(opt_str(o, "rid")?.ok_or_else(|| MeteorError::match_failed("rid is required"))?);
    let usernames: Vec<String> = match (o.get("users"), opt_str(o, "username")?) {
        (Some(Value::Array(list)), _) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| MeteorError::match_failed("users must be usernames"))?,
        (None, Some(name)) => vec![name.to_owned()],
        _ => return Err(MeteorError::match_failed("users must be an array of usernames")),
    };
    let user = c.user()?;
    let op = WriteOp::AddMembers {
        uid: user.id.clone(),
        rid,
        usernames,
    };
    c.ops().write(c.method, op).await?;
    ddp::value(json!(true))
}

/// DDP `removeUserFromRoom [{rid, username}]` → `true`.
pub async fn ddp_remove_user(c: &mut Ddp<'_>) -> DdpResult {
    let o = c.obj_at(0, "data")?;
    let rid = RoomId::from(opt_str(o, "rid")?.ok_or_else(|| MeteorError::match_failed("rid is required"))?);
    let username = opt_str(o, "username")?
        .ok_or_else(|| MeteorError::match_failed("username is required"))?
        .to_owned();
    let user = c.user()?;
    let target = c
        .ctx
        .hub
        .store
        .user_by_username(&username)
        .await
        .map_err(AppError::from)?
        .ok_or_else(|| MeteorError::new("error-invalid-user", "Invalid user").with_method("removeUserFromRoom"))?;
    c.ops()
        .remove_member("removeUserFromRoom", user, &rid, &target.id)
        .await?;
    ddp::value(json!(true))
}

/// DDP `addRoomOwner|removeRoomOwner|addRoomModerator|removeRoomModerator [rid, userId]` →
/// `true`.
pub async fn ddp_role(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let target = UserId::from(c.str_at(1, "userId")?);
    let (role, on) = match c.method {
        "addRoomOwner" => (RoomRole::Owner, true),
        "removeRoomOwner" => (RoomRole::Owner, false),
        "addRoomModerator" => (RoomRole::Moderator, true),
        _ => (RoomRole::Moderator, false),
    };
    let user = c.user()?;
    c.ops().set_room_role(c.method, user, &rid, &target, role, on).await?;
    ddp::value(json!(true))
}

/// DDP `hideRoom [rid]` / `openRoom [rid]`.
pub async fn ddp_open(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let open = c.method == "openRoom";
    let user = c.user()?;
    c.ops().set_open(c.method, user, &rid, open).await?;
    ddp::value(json!(1))
}

/// `channels|groups|im.open|close|hide {roomId}`, `rooms.hide {roomId}`.
pub async fn rest_open(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let (room, _) = body_room(c).await?;
    let name = endpoint(c);
    let open = name.ends_with(".open");
    c.ops().set_open(name, user, &room.id, open).await?;
    Ok(ok(json!({})))
}
