//! Acting on messages: reactions (`setReaction` / `chat.react`), pins (`pinMessage`,
//! `unpinMessage` / `chat.pinMessage`, `chat.unPinMessage`), stars (`starMessage` /
//! `chat.starMessage`, `chat.unStarMessage`), one message (`getSingleMessage` /
//! `chat.getMessage`), and the room lists built on them (`chat.getPinnedMessages`,
//! `chat.getStarredMessages`, `chat.getMentionedMessages`, `messageSearch` / `chat.search`,
//! `chat.getDeletedMessages`). A message or room the caller may not see is answered exactly as
//! one that does not exist. Runs on the caller's shard.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::ddp::{self, opt_str, Ddp, DdpAnswer, DdpResult};
use super::rest::{ok, Rest, RestError, RestResult};
use crate::ids::RoomId;
use crate::protocol::ddp::MeteorError;
use crate::protocol::wire::{self, Dates};
use crate::store::{Message, User};

/// Longest search text accepted (characters).
const MAX_SEARCH_CHARS: usize = 256;
/// Most messages one `messageSearch` answers.
const MAX_SEARCH_LIMIT: usize = 100;

/// Messages rendered for a door.
pub fn render(list: &[Message], d: Dates) -> Vec<Value> {
    list.iter().map(|m| wire::message(m, d)).collect()
}

/// One page of `list` and the paging fields Rocket.Chat adds (`count`, `offset`, `total`).
pub fn paged(key: &str, list: &[Message], offset: usize, count: usize) -> Value {
    let page: Vec<Message> = list.iter().skip(offset).take(count).cloned().collect();
    json!({
        key: render(&page, Dates::Iso),
        "count": page.len(),
        "offset": offset,
        "total": list.len(),
    })
}

/// Rocket.Chat's answer for a message that is not there, or not the caller's to see.
fn message_not_found() -> RestError {
    RestError::typed(
        StatusCode::BAD_REQUEST,
        "Message not found [error-message-not-found]",
        "error-message-not-found",
    )
}

/// Rocket.Chat's answer for a room list the caller may not read (or that does not exist).
pub fn not_allowed() -> RestError {
    RestError::typed(
        StatusCode::FORBIDDEN,
        "Not allowed [error-not-allowed]",
        "error-not-allowed",
    )
}

/// The `messageId` of a REST body, checked to name a message the caller may see.
async fn visible_message_id<'a>(c: &'a Rest<'_>, user: &User) -> Result<&'a str, RestError> {
    let mid = c
        .body
        .opt_str("messageId")?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| RestError::invalid("The required \"messageId\" param is missing."))?;
    match c.ops().visible_message(user, mid).await? {
        Some(_) => Ok(mid),
        None => Err(message_not_found()),
    }
}

/// DDP `setReaction [reaction, messageId, shouldReact?]`.
pub async fn ddp_set_reaction(c: &mut Ddp<'_>) -> DdpResult {
    let emoji = c.str_at(0, "reaction")?.to_owned();
    let mid = c.str_at(1, "messageId")?.to_owned();
    let react = match c.param(2) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        // The mobile app's trailing argument.
        Some(Value::String(s)) if s.is_empty() => None,
        Some(_) => return Err(MeteorError::match_failed("shouldReact must be a boolean")),
    };
    let user = c.user()?;
    c.ops().react("setReaction", user, &mid, &emoji, react).await?;
    ddp::none()
}

/// REST `POST chat.react {emoji|reaction, messageId, shouldReact?}`.
pub async fn rest_react(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let b = &c.body;
    let emoji = b
        .opt_str("emoji")?
        .or(b.opt_str("reaction")?)
        .ok_or_else(|| RestError::invalid("The required \"emoji\" param is missing."))?;
    let react = match b.0.get("shouldReact") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(v)) => Some(*v),
        Some(_) => return Err(RestError::invalid("Param \"shouldReact\" must be a boolean")),
    };
    let mid = visible_message_id(c, user).await?;
    c.ops().react("chat.react", user, mid, emoji, react).await?;
    Ok(ok(json!({})))
}

/// The `_id` of a DDP message parameter (`[{_id, …}]`).
fn message_id_at<'a>(c: &'a Ddp<'_>) -> Result<&'a str, MeteorError> {
    opt_str(c.obj_at(0, "message")?, "_id")?.ok_or_else(|| MeteorError::match_failed("_id is required"))
}

/// DDP `pinMessage [{_id}]`: the system message posted (the message itself when it was pinned
/// already).
pub async fn ddp_pin(c: &mut Ddp<'_>) -> DdpResult {
    let mid = message_id_at(c)?.to_owned();
    let user = c.user()?;
    let m = c.ops().set_pinned("pinMessage", user, &mid, true).await?;
    ddp::value(wire::message(&m, Dates::Ejson))
}

/// DDP `unpinMessage [{_id}]` → `true`.
pub async fn ddp_unpin(c: &mut Ddp<'_>) -> DdpResult {
    let mid = message_id_at(c)?.to_owned();
    let user = c.user()?;
    c.ops().set_pinned("unpinMessage", user, &mid, false).await?;
    ddp::value(Value::Bool(true))
}

/// REST `POST chat.pinMessage {messageId}` → `{message}` (the system message).
pub async fn rest_pin(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let mid = visible_message_id(c, user).await?;
    let m = c.ops().set_pinned("chat.pinMessage", user, mid, true).await?;
    Ok(ok(json!({"message": wire::message(&m, Dates::Iso)})))
}

/// REST `POST chat.unPinMessage {messageId}`.
pub async fn rest_unpin(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let mid = visible_message_id(c, user).await?;
    c.ops().set_pinned("chat.unPinMessage", user, mid, false).await?;
    Ok(ok(json!({})))
}

/// DDP `starMessage [{_id, rid, starred}]` → `true`.
pub async fn ddp_star(c: &mut Ddp<'_>) -> DdpResult {
    let m = c.obj_at(0, "message")?;
    let mid = opt_str(m, "_id")?
        .ok_or_else(|| MeteorError::match_failed("_id is required"))?
        .to_owned();
    let starred = match m.get("starred") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(MeteorError::match_failed("starred must be a boolean")),
    };
    let user = c.user()?;
    c.ops().set_starred("starMessage", user, &mid, starred).await?;
    ddp::value(Value::Bool(true))
}

async fn rest_star_as(c: &Rest<'_>, method: &str, starred: bool) -> RestResult {
    let user = c.user()?;
    let mid = visible_message_id(c, user).await?;
    c.ops().set_starred(method, user, mid, starred).await?;
    Ok(ok(json!({})))
}

/// REST `POST chat.starMessage {messageId}`.
pub async fn rest_star(c: &Rest<'_>) -> RestResult {
    rest_star_as(c, "chat.starMessage", true).await
}

/// REST `POST chat.unStarMessage {messageId}`.
pub async fn rest_unstar(c: &Rest<'_>) -> RestResult {
    rest_star_as(c, "chat.unStarMessage", false).await
}

/// DDP `getSingleMessage [msgId]`: the message, or nothing.
pub async fn ddp_get_single(c: &mut Ddp<'_>) -> DdpResult {
    let mid = c.str_at(0, "msgId")?.to_owned();
    let user = c.user()?;
    match c.ops().visible_message(user, &mid).await? {
        Some((m, _)) => Ok(DdpAnswer::Value(Some(wire::message(&m, Dates::Ejson)))),
        None => ddp::none(),
    }
}

/// REST `GET chat.getMessage?msgId` → `{message}`.
pub async fn get_message(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let mid = c
        .query
        .get("msgId")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| RestError::invalid("The \"msgId\" query parameter must be provided."))?;
    match c.ops().visible_message(user, mid).await? {
        Some((m, _)) => Ok(ok(json!({"message": wire::message(&m, Dates::Iso)}))),
        None => Err(message_not_found()),
    }
}

/// The `roomId` query parameter.
pub fn room_id_param(c: &Rest<'_>) -> Result<RoomId, RestError> {
    Ok(RoomId::from(c.query.required("roomId")?))
}

/// A room's messages that `keep` selects, one page of them.
async fn room_list(c: &Rest<'_>, method: &str, keep: impl Fn(&Message) -> bool + Send + 'static) -> RestResult {
    let user = c.user()?;
    let rid = room_id_param(c)?;
    let (offset, count) = c.query.page()?;
    let found = c.ops().scan(method, user, &rid, None, None, keep).await?;
    let list = found.ok_or_else(not_allowed)?;
    Ok(ok(paged("messages", &list, offset, count)))
}

/// REST `GET chat.getPinnedMessages?roomId&offset&count`.
pub async fn pinned(c: &Rest<'_>) -> RestResult {
    room_list(c, "chat.getPinnedMessages", Message::pinned).await
}

/// REST `GET chat.getStarredMessages?roomId&offset&count`: those the caller starred.
pub async fn starred(c: &Rest<'_>) -> RestResult {
    let uid = c.user()?.id.clone();
    room_list(c, "chat.getStarredMessages", move |m| m.starred_by(&uid)).await
}

/// REST `GET chat.getMentionedMessages?roomId&offset&count`: those naming the caller.
pub async fn mentioned(c: &Rest<'_>) -> RestResult {
    let uid = c.user()?.id.clone();
    room_list(c, "chat.getMentionedMessages", move |m| m.mentions_user(&uid, false)).await
}

/// A search text: case-insensitive, every word must occur in the message.
fn matcher(text: &str) -> Result<impl Fn(&Message) -> bool + Send + 'static, String> {
    if text.chars().count() > MAX_SEARCH_CHARS {
        return Err(format!("searchText is limited to {MAX_SEARCH_CHARS} characters"));
    }
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    Ok(move |m: &Message| {
        if words.is_empty() || m.t.is_some() {
            return false;
        }
        let body = m.msg.to_lowercase();
        words.iter().all(|w| body.contains(w.as_str()))
    })
}

/// REST `GET chat.search?roomId&searchText&offset&count` → `{messages}`, newest first.
pub async fn rest_search(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let rid = room_id_param(c)?;
    let text = c
        .query
        .get("searchText")
        .ok_or_else(|| RestError::invalid("The required \"searchText\" query param is missing."))?;
    let keep = matcher(text).map_err(RestError::invalid)?;
    let (offset, count) = c.query.page()?;
    let list = c
        .ops()
        .scan("chat.search", user, &rid, None, None, keep)
        .await?
        .ok_or_else(not_allowed)?;
    let page: Vec<Message> = list.into_iter().skip(offset).take(count).collect();
    Ok(ok(json!({"messages": render(&page, Dates::Iso)})))
}

/// DDP `messageSearch [text, rid, limit?, offset?]` → `{messages}`.
pub async fn ddp_search(c: &mut Ddp<'_>) -> DdpResult {
    let text = c.str_at(0, "text")?.to_owned();
    let rid = RoomId::from(c.str_at(1, "rid")?);
    let number = |v: Option<&Value>, what: &str, default: usize| match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| MeteorError::match_failed(&format!("{what} must be a number"))),
    };
    let limit = number(c.param(2), "limit", 20)?.min(MAX_SEARCH_LIMIT);
    let offset = number(c.param(3), "offset", 0)?;
    let keep = matcher(&text).map_err(|e| MeteorError::match_failed(&e))?;
    let user = c.user()?;
    let list = c
        .ops()
        .scan("messageSearch", user, &rid, None, None, keep)
        .await?
        .unwrap_or_default();
    let page: Vec<Message> = list.into_iter().skip(offset).take(limit).collect();
    ddp::value(json!({"messages": render(&page, Dates::Ejson)}))
}

/// REST `GET chat.getDeletedMessages?roomId&since&offset&count` → `{messages: [{_id}], …}`:
/// the room's messages deleted after `since` (within the configured retention).
pub async fn deleted(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let rid = room_id_param(c)?;
    let since = c
        .query
        .date("since")?
        .ok_or_else(|| RestError::invalid("The required \"since\" query param is missing."))?;
    let (offset, count) = c.query.page()?;
    let changes = c
        .ops()
        .room_changes(
            "chat.getDeletedMessages",
            user,
            &rid,
            since,
            crate::app::actions::MAX_MATCHES,
            false,
            true,
        )
        .await?
        .ok_or_else(not_allowed)?;
    let total = changes.deleted.len();
    let page: Vec<Value> = changes
        .deleted
        .iter()
        .skip(offset)
        .take(count)
        .map(|t| json!({"_id": t.id}))
        .collect();
    Ok(ok(json!({
        "messages": page,
        "count": page.len(),
        "offset": offset,
        "total": total,
    })))
}
