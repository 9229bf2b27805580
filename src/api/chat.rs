//! Messages: sending (`sendMessage` / `chat.sendMessage`, `chat.postMessage`), editing
//! (`updateMessage` / `chat.update`), deleting (`deleteMessage` / `chat.delete`), history
//! (`loadHistory` / `channels|groups|im.history`, `loadMissedMessages`). Runs on the caller's
//! shard; pages are read and rendered on a reader thread.

use serde_json::json;

use super::ddp::{self, opt_str, Ddp, DdpAnswer, DdpResult};
use super::rest::{ok, Answer, Rest, RestError, RestResult};
use crate::app::ops::ThreadReply;
use crate::ids::RoomId;
use crate::protocol::ddp::MeteorError;
use crate::protocol::wire::{self, Dates};
use crate::store::{HistoryQuery, RoomType};

/// Most messages one `loadHistory` / `loadMissedMessages` answer carries (keeps frames < 1 MiB).
const MAX_HISTORY_PAGE: usize = 100;
const MAX_MISSED: usize = 500;

/// DDP `sendMessage [{_id?, rid, msg, tmid?}]`: the stored message, rendered straight to JSON;
/// none for a re-send.
pub async fn ddp_send(c: &mut Ddp<'_>) -> DdpResult {
    let m = c.obj_at(0, "message")?;
    let rid = opt_str(m, "rid")?.ok_or_else(|| MeteorError::match_failed("rid is required"))?;
    let (id, text, tmid) = (
        opt_str(m, "_id")?,
        opt_str(m, "msg")?.unwrap_or(""),
        opt_str(m, "tmid")?,
    );
    let tshow = match m.get("tshow") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => return Err(MeteorError::match_failed("tshow must be a boolean")),
    };
    let user = c.user()?;
    let sent = c
        .ops()
        .send_message(
            "sendMessage",
            user,
            RoomId::from(rid),
            id,
            text,
            ThreadReply::of(tmid, tshow),
        )
        .await?;
    Ok(match sent {
        Ok(m) => DdpAnswer::Raw(
            serde_json::to_string(&wire::WireMessage(&m, Dates::Ejson)).unwrap_or_else(|_| "null".into()),
        ),
        Err(_) => DdpAnswer::Value(None),
    })
}

/// REST `POST chat.sendMessage {message: {_id?, rid, msg, tmid?}}` (the client's `_id` kept).
pub async fn rest_send(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let m = match c.body.0.get("message") {
        Some(serde_json::Value::Object(m)) => super::rest::Body(m.clone()),
        _ => return Err(RestError::invalid("Param \"message\" must be an object")),
    };
    let sent = c
        .ops()
        .send_message(
            "chat.sendMessage",
            user,
            RoomId::from(m.str("rid")?),
            m.opt_str("_id")?,
            m.opt_str("msg")?.unwrap_or(""),
            ThreadReply::of(m.opt_str("tmid")?, m.opt_bool("tshow")?),
        )
        .await?;
    let m = sent.unwrap_or_else(|existing| existing);
    Ok(ok(json!({"message": wire::message(&m, Dates::Iso)})))
}

/// `chat.postMessage`'s target: `#name`, `@username` (a direct room, created if needed), or a
/// bare room id or name.
async fn post_target(c: &Rest<'_>) -> Result<RoomId, RestError> {
    let b = &c.body;
    if let Some(rid) = b.opt_str("roomId")? {
        return Ok(RoomId::from(rid));
    }
    let channel = b.str("channel")?;
    if let Some(username) = channel.strip_prefix('@') {
        return Ok(c
            .ops()
            .create_direct("chat.postMessage", c.user()?, &[username])
            .await?
            .id);
    }
    match c.ops().room_by_name_or_id(channel.trim_start_matches('#')).await? {
        Some(r) => Ok(r.id),
        None => Err(RestError::typed(
            hyper::StatusCode::BAD_REQUEST,
            "Invalid room [error-invalid-room]",
            "error-invalid-room",
        )),
    }
}

/// REST `POST chat.postMessage {roomId|channel, text, tmid?}`.
pub async fn post_message(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let rid = post_target(c).await?;
    let text = c.body.opt_str("text")?.unwrap_or("");
    let sent = c
        .ops()
        .send_message(
            "chat.postMessage",
            user,
            rid,
            None,
            text,
            ThreadReply::of(c.body.opt_str("tmid")?, c.body.opt_bool("tshow")?),
        )
        .await?;
    let m = sent.unwrap_or_else(|existing| existing);
    let channel = c
        .body
        .opt_str("channel")?
        .or(c.body.opt_str("roomId")?)
        .unwrap_or_default();
    Ok(ok(json!({
        "ts": m.ts,
        "channel": channel,
        "message": wire::message(&m, Dates::Iso),
    })))
}

/// DDP `updateMessage [{_id, rid?, msg}]`.
pub async fn ddp_update(c: &mut Ddp<'_>) -> DdpResult {
    let m = c.obj_at(0, "message")?;
    let mid = opt_str(m, "_id")?.ok_or_else(|| MeteorError::match_failed("_id is required"))?;
    let text = opt_str(m, "msg")?.ok_or_else(|| MeteorError::match_failed("msg is required"))?;
    let rid = opt_str(m, "rid")?;
    let user = c.user()?;
    c.ops().update_message("updateMessage", user, mid, rid, text).await?;
    ddp::none()
}

/// REST `POST chat.update {roomId, msgId, text}`.
pub async fn rest_update(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let b = &c.body;
    let m = c
        .ops()
        .update_message(
            "chat.update",
            user,
            b.str("msgId")?,
            Some(b.str("roomId")?),
            b.opt_str("text")?.unwrap_or(""),
        )
        .await?;
    Ok(ok(json!({"message": wire::message(&m, Dates::Iso)})))
}

/// DDP `deleteMessage [{_id}]`.
pub async fn ddp_delete(c: &mut Ddp<'_>) -> DdpResult {
    let m = c.obj_at(0, "message")?;
    let mid = opt_str(m, "_id")?.ok_or_else(|| MeteorError::match_failed("_id is required"))?;
    let user = c.user()?;
    c.ops().delete_message("deleteMessage", user, mid, None).await?;
    ddp::none()
}

/// REST `POST chat.delete {roomId, msgId}`.
pub async fn rest_delete(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let b = &c.body;
    let m = c
        .ops()
        .delete_message("chat.delete", user, b.str("msgId")?, Some(b.str("roomId")?))
        .await?;
    Ok(ok(json!({
        "_id": m.id,
        "ts": crate::ids::now_ms().to_string(),
        "message": {"_id": m.id, "rid": m.rid, "u": wire::user_ref(&m.u)},
    })))
}

/// DDP `loadHistory [rid, latest?, limit?, ls?]`.
pub async fn load_history(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let latest = c.param(1).and_then(wire::parse_date);
    let limit = match c.param(2) {
        None | Some(serde_json::Value::Null) => 20,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| MeteorError::match_failed("limit must be a number"))? as usize,
    };
    let q = HistoryQuery {
        latest,
        limit: limit.min(MAX_HISTORY_PAGE),
        ..HistoryQuery::default()
    };
    let user = c.user()?;
    let found = c
        .ops()
        .history_json("loadHistory", user, &rid, None, &q, Dates::Ejson)
        .await?;
    Ok(DdpAnswer::Raw(match found {
        Some(list) => format!(r#"{{"messages":{list},"unreadNotLoaded":0}}"#),
        None => "false".into(),
    }))
}

/// DDP `loadMissedMessages [rid, start]`.
pub async fn load_missed(c: &mut Ddp<'_>) -> DdpResult {
    let rid = RoomId::from(c.str_at(0, "rid")?);
    let start = c
        .param(1)
        .and_then(wire::parse_date)
        .ok_or_else(|| MeteorError::match_failed("start must be a date"))?;
    let q = HistoryQuery {
        oldest: Some(start),
        limit: MAX_MISSED,
        ..HistoryQuery::default()
    };
    let user = c.user()?;
    let found = c
        .ops()
        .history_json("loadMissedMessages", user, &rid, None, &q, Dates::Ejson)
        .await?;
    Ok(DdpAnswer::Raw(found.unwrap_or_else(|| "false".into())))
}

/// REST `GET channels|groups|im.history?roomId&latest&oldest&inclusive&offset&count`.
async fn history(c: &Rest<'_>, t: RoomType) -> RestResult {
    let user = c.user()?;
    let q = &c.query;
    let rid = match (q.get("roomId"), q.get("roomName")) {
        (Some(id), _) => RoomId::from(id),
        (None, Some(_)) if t == RoomType::Channel => super::rooms::channel_from_query(c).await?.id,
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
        // Rocket.Chat's default shows them; the app asks for `showThreadMessages=false`.
        skip_thread_replies: q.get("showThreadMessages").is_some() && !q.flag("showThreadMessages")?,
    };
    // A room the caller may not read is answered exactly like one that does not exist.
    let Some(list) = c
        .ops()
        .history_json("history", user, &rid, Some(t), &hq, Dates::Iso)
        .await?
    else {
        return Err(RestError::room_not_found());
    };
    Ok(Answer::Raw(format!(r#"{{"messages":{list},"success":true}}"#)))
}

pub async fn channels_history(c: &Rest<'_>) -> RestResult {
    history(c, RoomType::Channel).await
}

pub async fn groups_history(c: &Rest<'_>) -> RestResult {
    history(c, RoomType::Private).await
}

pub async fn im_history(c: &Rest<'_>) -> RestResult {
    history(c, RoomType::Direct).await
}

/// Most changes one `lastUpdate` sync reports (that form has no paging).
const MAX_SYNC: usize = 5000;
/// `count` of the cursor form: its default and its ceiling.
const SYNC_DEFAULT_COUNT: usize = 50;
const SYNC_MAX_COUNT: usize = 1000;

/// A cursor (`next` / `previous`): epoch milliseconds as a string.
fn cursor_ms(c: &Rest<'_>, key: &str) -> Result<Option<i64>, RestError> {
    c.query
        .get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                RestError::invalid(format!(
                    "The \"{key}\" query parameter must be a timestamp in milliseconds"
                ))
            })
        })
        .transpose()
}

/// REST `GET chat.syncMessages`: what changed in a room since the client last looked, in two
/// forms. Before 7.1: `?roomId&lastUpdate=<ISO>` → `{result: {updated, deleted}}`. From 7.1:
/// `?roomId&next=<ms>&count&type=UPDATED|DELETED` (or `previous`, going back) → one list and
/// `cursor: {next, previous}`, `next` set while there is more.
pub async fn sync_messages(c: &Rest<'_>) -> RestResult {
    use crate::app::ops::RoomChanges;
    let user = c.user()?;
    let q = &c.query;
    let Some(rid) = q.get("roomId").filter(|r| !r.is_empty()) else {
        return Err(RestError::invalid("The required \"roomId\" query param is missing"));
    };
    let rid = RoomId::from(rid);
    let last_update = q.date("lastUpdate")?;
    let (next, previous) = (cursor_ms(c, "next")?, cursor_ms(c, "previous")?);
    let kind = q.get("type").filter(|t| !t.is_empty());
    if next.is_some() && previous.is_some() {
        return Err(RestError::typed(
            hyper::StatusCode::BAD_REQUEST,
            "The \"next\" and \"previous\" parameters cannot be used together [error-cursor-conflict]",
            "error-cursor-conflict",
        ));
    }
    let hidden = || {
        RestError::typed(
            hyper::StatusCode::FORBIDDEN,
            "Not allowed [error-not-allowed]",
            "error-not-allowed",
        )
    };
    if let Some(since) = last_update {
        if next.is_some() || previous.is_some() {
            return Err(RestError::typed(
                hyper::StatusCode::BAD_REQUEST,
                "The \"lastUpdate\" parameter cannot be used with a cursor [error-cursor-and-lastUpdate-conflict]",
                "error-cursor-and-lastUpdate-conflict",
            ));
        }
        let Some(RoomChanges {
            mut updated,
            mut deleted,
        }) = c
            .ops()
            .room_changes("chat.syncMessages", user, &rid, since, MAX_SYNC, true, true)
            .await?
        else {
            return Err(hidden());
        };
        // Newest first, as Rocket.Chat sorts them.
        updated.reverse();
        deleted.reverse();
        let updated: Vec<_> = updated.iter().map(|m| wire::WireMessage(m, Dates::Iso)).collect();
        let deleted: Vec<_> = deleted
            .iter()
            .map(|t| json!({"_id": t.id, "_deletedAt": Dates::Iso.date(t.deleted_at)}))
            .collect();
        return Ok(ok(json!({"result": {"updated": updated, "deleted": deleted}})));
    }
    let updated = match kind {
        Some("UPDATED") => true,
        Some("DELETED") => false,
        Some(other) => {
            return Err(RestError::invalid(format!(
                "The \"type\" parameter must be UPDATED or DELETED, not {other:?}"
            )))
        }
        None => {
            return Err(RestError::invalid(
                "The \"type\" or \"lastUpdate\" parameters must be provided",
            ))
        }
    };
    let count = match q.number("count")? {
        None | Some(0) => SYNC_DEFAULT_COUNT,
        Some(n) => n.min(SYNC_MAX_COUNT),
    };
    // Going back (`previous`) reads everything up to the cursor and keeps the newest `count`.
    let after = if previous.is_some() { 0 } else { next.unwrap_or(0) };
    let fetch = if previous.is_some() { MAX_SYNC } else { count + 1 };
    let Some(changes) = c
        .ops()
        .room_changes("chat.syncMessages", user, &rid, after, fetch, updated, !updated)
        .await?
    else {
        return Err(hidden());
    };
    // (time, rendered) in ascending time.
    let mut items: Vec<(i64, serde_json::Value)> = if updated {
        changes
            .updated
            .iter()
            .map(|m| (m.updated_at, wire::message(m, Dates::Iso)))
            .collect()
    } else {
        changes
            .deleted
            .iter()
            .map(|t| {
                (
                    t.deleted_at,
                    json!({"_id": t.id, "_deletedAt": Dates::Iso.date(t.deleted_at)}),
                )
            })
            .collect()
    };
    let (next_cursor, previous_cursor) = match previous {
        Some(before) => {
            items.retain(|(at, _)| *at < before);
            let more = items.len() > count;
            let keep_from = items.len().saturating_sub(count);
            items.drain(..keep_from);
            let first = items.first().map(|(at, _)| at.to_string());
            (None, if more { first } else { None })
        }
        None => {
            let more = items.len() > count;
            if more {
                // Changes sharing the first left-out one's time go to the next page with it
                // (the next page starts after the cursor's time), unless they fill this one.
                let boundary = items.get(count).map(|(at, _)| *at);
                items.truncate(count);
                let whole = items.iter().filter(|(at, _)| Some(*at) != boundary).count();
                if whole > 0 {
                    items.truncate(whole);
                }
            }
            let last = items.last().map(|(at, _)| at.to_string());
            (if more { last } else { None }, None)
        }
    };
    let list: Vec<serde_json::Value> = items.into_iter().map(|(_, v)| v).collect();
    let (updated_list, deleted_list) = if updated {
        (list, Vec::new())
    } else {
        (Vec::new(), list)
    };
    Ok(ok(json!({
        "result": {
            "updated": updated_list,
            "deleted": deleted_list,
            "cursor": {"next": next_cursor, "previous": previous_cursor},
        }
    })))
}

/// Which messages a `<type>.messages` call asks for.
enum MessageFilter {
    All,
    /// Mentioning the user (`mentionIds=<uid>`; before 7.0 `query={"mentions._id":{"$in":[uid]}}`).
    Mentions(String),
    /// Starred by the user (`starredIds=<uid>`; `{"starred._id":{"$in":[uid]}}`).
    Starred(String),
    /// Pinned (`pinned=true`; `{"pinned":true}`).
    Pinned,
}

impl MessageFilter {
    fn from_query(c: &Rest<'_>) -> Result<Self, RestError> {
        let q = &c.query;
        if let Some(uid) = q.get("mentionIds").filter(|v| !v.is_empty()) {
            return Ok(Self::Mentions(uid.to_owned()));
        }
        if let Some(uid) = q.get("starredIds").filter(|v| !v.is_empty()) {
            return Ok(Self::Starred(uid.to_owned()));
        }
        if q.flag("pinned")? {
            return Ok(Self::Pinned);
        }
        let Some(raw) = q.get("query").filter(|v| !v.trim().is_empty()) else {
            return Ok(Self::All);
        };
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|_| RestError::invalid("Param \"query\" must be a JSON object"))?;
        let first_id = |key: &str| {
            v.get(key)
                .and_then(|o| o.get("$in"))
                .and_then(|a| a.get(0))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        if let Some(uid) = first_id("mentions._id") {
            Ok(Self::Mentions(uid))
        } else if let Some(uid) = first_id("starred._id") {
            Ok(Self::Starred(uid))
        } else if v.get("pinned") == Some(&serde_json::Value::Bool(true)) {
            Ok(Self::Pinned)
        } else {
            Err(RestError::invalid(
                "Param \"query\" may select mentions._id, starred._id or pinned",
            ))
        }
    }

    fn keeps(&self, m: &crate::store::Message) -> bool {
        match self {
            Self::All => true,
            Self::Mentions(uid) => m.mentions.iter().any(|u| u.id.as_str() == uid),
            Self::Starred(uid) => m
                .extra
                .get("starred")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|a| {
                    a.iter()
                        .any(|s| s.get("_id").and_then(serde_json::Value::as_str) == Some(uid))
                }),
            Self::Pinned => m.extra.get("pinned") == Some(&serde_json::Value::Bool(true)),
        }
    }
}

/// REST `GET channels|groups|im.messages?roomId&offset&count[&mentionIds|starredIds|pinned|query]`:
/// a room's messages newest first, all or those the filter keeps (both the 7.0+ and the older
/// `query` forms the apps send for their mentions, starred and pinned lists).
async fn room_messages(c: &Rest<'_>, t: RoomType) -> RestResult {
    let user = c.user()?;
    let Some(rid) = c.query.get("roomId").filter(|r| !r.is_empty()) else {
        return Err(RestError::invalid("The required \"roomId\" query param is missing"));
    };
    let filter = MessageFilter::from_query(c)?;
    let (offset, count) = c.query.page()?;
    let found = c
        .ops()
        .messages_where(
            "messages",
            user,
            &RoomId::from(rid),
            t,
            move |m| filter.keeps(m),
            offset,
            count,
        )
        .await?;
    let Some((page, total)) = found else {
        return Err(RestError::room_not_found());
    };
    let list: Vec<_> = page.iter().map(|m| wire::WireMessage(m, Dates::Iso)).collect();
    Ok(ok(
        json!({"messages": list, "count": list.len(), "offset": offset, "total": total}),
    ))
}

pub async fn channels_messages(c: &Rest<'_>) -> RestResult {
    room_messages(c, RoomType::Channel).await
}

pub async fn groups_messages(c: &Rest<'_>) -> RestResult {
    room_messages(c, RoomType::Private).await
}

pub async fn im_messages(c: &Rest<'_>) -> RestResult {
    room_messages(c, RoomType::Direct).await
}
