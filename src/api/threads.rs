//! Threads: a thread's messages (`getThreadMessages` / `chat.getThreadMessages`,
//! `chat.syncThreadMessages`), a room's threads (`getThreadsList` / `chat.getThreadsList`,
//! `chat.syncThreadsList`), following (`followMessage`, `unfollowMessage` /
//! `chat.followMessage`, `chat.unfollowMessage`) and reading (`readThreads`). Replies themselves
//! are sent with `tmid` through `sendMessage` / `chat.sendMessage`. A thread or room the caller
//! may not see is answered as one that does not exist. Runs on the caller's shard.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::ddp::{self, opt_str, Ddp, DdpResult};
use super::message_actions::{not_allowed, paged, render};
use super::rest::{ok, Rest, RestError, RestResult};
use crate::app::actions::ThreadFilter;
use crate::app::error::AppError;
use crate::ids::RoomId;
use crate::protocol::ddp::MeteorError;
use crate::protocol::wire::Dates;
use crate::store::Message;

/// Most messages one DDP thread read answers.
const MAX_THREAD_PAGE: usize = 1000;

fn invalid_thread() -> RestError {
    RestError::typed(
        StatusCode::BAD_REQUEST,
        "Invalid Message [error-invalid-message]",
        "error-invalid-message",
    )
}

/// A non-negative number in a DDP options object (absent: `default`).
fn option_number(o: &serde_json::Map<String, Value>, key: &str, default: usize) -> Result<usize, MeteorError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| MeteorError::match_failed(&format!("{key} must be a number"))),
    }
}

/// DDP `getThreadMessages [{tmid, limit?, skip?}]` → `[first message, ...replies newest
/// first]` (`[]` for a thread without replies, or one the caller cannot see). Reading a thread
/// marks it read.
pub async fn ddp_get_thread_messages(c: &mut Ddp<'_>) -> DdpResult {
    let o = c.obj_at(0, "options")?;
    let tmid = opt_str(o, "tmid")?
        .ok_or_else(|| MeteorError::match_failed("tmid is required"))?
        .to_owned();
    let limit = option_number(o, "limit", MAX_THREAD_PAGE)?.clamp(1, MAX_THREAD_PAGE);
    let skip = option_number(o, "skip", 0)?;
    let user = c.user()?;
    let Some((root, replies)) = c.ops().thread("getThreadMessages", user, &tmid).await? else {
        return ddp::value(json!([]));
    };
    if root.tcount() == 0 {
        return ddp::value(json!([]));
    }
    // Reading marks the thread read: a write only when it is unread for the caller.
    let unread = c
        .ctx
        .hub
        .store
        .subscription(&user.id, &root.rid)
        .await
        .map_err(AppError::from)?
        .is_some_and(|s| s.tunread.contains(&tmid));
    if unread {
        c.ops().read_thread("getThreadMessages", user, &tmid).await?;
    }
    let mut list = vec![root];
    list.extend(replies.into_iter().skip(skip).take(limit));
    ddp::value(Value::Array(render(&list, Dates::Ejson)))
}

/// REST `GET chat.getThreadMessages?tmid&offset&count` → `{messages, count, offset, total}`,
/// oldest first.
pub async fn rest_get_thread_messages(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let tmid = c.query.required("tmid")?;
    let (offset, count) = c.query.page()?;
    let (_, mut replies) = c
        .ops()
        .thread("chat.getThreadMessages", user, tmid)
        .await?
        .ok_or_else(invalid_thread)?;
    replies.reverse();
    Ok(ok(paged("messages", &replies, offset, count)))
}

/// REST `GET chat.syncThreadMessages?tmid&updatedSince` → `{messages: {update, remove}}`: the
/// thread's replies changed after `updatedSince`, and its replies deleted since (within the
/// configured retention).
pub async fn sync_thread_messages(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let tmid = c.query.required("tmid")?;
    let since = c
        .query
        .date("updatedSince")?
        .ok_or_else(|| RestError::invalid("The required \"updatedSince\" query param is missing."))?;
    let (root, replies) = c
        .ops()
        .thread("chat.syncThreadMessages", user, tmid)
        .await?
        .ok_or_else(invalid_thread)?;
    let update: Vec<Message> = replies.into_iter().filter(|m| m.updated_at > since).collect();
    let remove = deleted_since(c, &root.rid, since).await?;
    Ok(ok(
        json!({"messages": {"update": render(&update, Dates::Iso), "remove": remove}}),
    ))
}

/// `{_id, _deletedAt}` of the room's messages deleted after `since`. chatd keeps no thread on
/// a deletion's record, so a thread's sync lists every deletion of its room: clients drop the
/// ids they do not hold.
async fn deleted_since(c: &Rest<'_>, rid: &RoomId, since: i64) -> Result<Vec<Value>, RestError> {
    let user = c.user()?;
    let changes = c
        .ops()
        .room_changes("sync", user, rid, since, crate::app::actions::MAX_MATCHES, false, true)
        .await?
        .ok_or_else(not_allowed)?;
    Ok(changes
        .deleted
        .iter()
        .map(|t| json!({"_id": t.id, "_deletedAt": Dates::Iso.date(t.deleted_at)}))
        .collect())
}

fn thread_filter(raw: Option<&str>) -> Result<ThreadFilter, String> {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("all") => Ok(ThreadFilter::All),
        Some("following") => Ok(ThreadFilter::Following),
        Some("unread") => Ok(ThreadFilter::Unread),
        Some(other) => Err(format!("type must be all, following or unread, not {other:?}")),
    }
}

/// REST `GET chat.getThreadsList?rid&type=all|following|unread&text&offset&count` →
/// `{threads, count, offset, total}`, most recently replied first.
pub async fn rest_threads_list(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let rid = RoomId::from(c.query.required("rid")?);
    let filter = thread_filter(c.query.get("type")).map_err(RestError::invalid)?;
    let (offset, count) = c.query.page()?;
    let list = c
        .ops()
        .threads("chat.getThreadsList", user, &rid, filter, c.query.get("text"))
        .await?
        .ok_or_else(not_allowed)?;
    Ok(ok(paged("threads", &list, offset, count)))
}

/// DDP `getThreadsList [{rid, limit?, skip?}]` → the room's threads, most recently replied
/// first (`[]` for a room the caller cannot see).
pub async fn ddp_threads_list(c: &mut Ddp<'_>) -> DdpResult {
    let o = c.obj_at(0, "options")?;
    let rid = RoomId::from(opt_str(o, "rid")?.ok_or_else(|| MeteorError::match_failed("rid is required"))?);
    let limit = option_number(o, "limit", 50)?.clamp(1, MAX_THREAD_PAGE);
    let skip = option_number(o, "skip", 0)?;
    let user = c.user()?;
    let list = c
        .ops()
        .threads("getThreadsList", user, &rid, ThreadFilter::All, None)
        .await?
        .unwrap_or_default();
    let page: Vec<Message> = list.into_iter().skip(skip).take(limit).collect();
    ddp::value(Value::Array(render(&page, Dates::Ejson)))
}

/// REST `GET chat.syncThreadsList?rid&updatedSince` → `{threads: {update, remove}}`.
pub async fn sync_threads_list(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let rid = RoomId::from(c.query.required("rid")?);
    let since = c
        .query
        .date("updatedSince")?
        .ok_or_else(|| RestError::invalid("The required \"updatedSince\" query param is missing."))?;
    let list = c
        .ops()
        .threads("chat.syncThreadsList", user, &rid, ThreadFilter::All, None)
        .await?
        .ok_or_else(not_allowed)?;
    let update: Vec<Message> = list.into_iter().filter(|m| m.updated_at > since).collect();
    let remove = deleted_since(c, &rid, since).await?;
    Ok(ok(
        json!({"threads": {"update": render(&update, Dates::Iso), "remove": remove}}),
    ))
}

/// DDP `followMessage [{mid}]` / `unfollowMessage [{mid}]`.
async fn ddp_follow_as(c: &mut Ddp<'_>, method: &str, follow: bool) -> DdpResult {
    let mid = opt_str(c.obj_at(0, "options")?, "mid")?
        .ok_or_else(|| MeteorError::match_failed("mid is required"))?
        .to_owned();
    let user = c.user()?;
    c.ops().follow_thread(method, user, &mid, follow).await?;
    ddp::none()
}

pub async fn ddp_follow(c: &mut Ddp<'_>) -> DdpResult {
    ddp_follow_as(c, "followMessage", true).await
}

pub async fn ddp_unfollow(c: &mut Ddp<'_>) -> DdpResult {
    ddp_follow_as(c, "unfollowMessage", false).await
}

/// REST `POST chat.followMessage {mid}` / `chat.unfollowMessage {mid}`.
async fn rest_follow_as(c: &Rest<'_>, method: &str, follow: bool) -> RestResult {
    let user = c.user()?;
    let mid = c
        .body
        .opt_str("mid")?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| RestError::invalid("The required \"mid\" body param is missing."))?;
    c.ops().follow_thread(method, user, mid, follow).await?;
    Ok(ok(json!({})))
}

pub async fn rest_follow(c: &Rest<'_>) -> RestResult {
    rest_follow_as(c, "chat.followMessage", true).await
}

pub async fn rest_unfollow(c: &Rest<'_>) -> RestResult {
    rest_follow_as(c, "chat.unfollowMessage", false).await
}

/// DDP `readThreads [tmid]`.
pub async fn ddp_read_threads(c: &mut Ddp<'_>) -> DdpResult {
    let tmid = c.str_at(0, "tmid")?.to_owned();
    let user = c.user()?;
    c.ops().read_thread("readThreads", user, &tmid).await?;
    ddp::none()
}
