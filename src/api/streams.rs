//! Streams: DDP subscriptions by name (`stream-room-messages`, `stream-notify-user`,
//! `stream-notify-room`, `stream-notify-logged`, `stream-notify-all`, `stream-roles`,
//! `stream-user-presence`) and the `stream-notify-room` method (typing). A subscription that
//! needs a user and arrives before the login waits and runs once the connection logs in, as
//! Meteor re-runs a connection's subscriptions when its user changes. Runs on the session's
//! shard.

use serde_json::Value;

use super::ddp::{self, Conn, Ddp, DdpResult, PendingSub};
use crate::chat::hub::{
    MY_MESSAGES, STREAM_NOTIFY_ALL, STREAM_NOTIFY_LOGGED, STREAM_NOTIFY_ROOM, STREAM_NOTIFY_USER, STREAM_ROLES,
    STREAM_ROOM_MESSAGES, STREAM_USER_PRESENCE,
};
use crate::chat::presence::{Activity, Origin};
use crate::ctx::ShardCtx;
use crate::ids::{RoomId, UserId};
use crate::protocol::ddp::{self as frames, MeteorError};

/// How a subscription was answered.
pub enum SubAnswer {
    /// `ready`.
    Ready,
    /// `nosub` without an error: a duplicate id (Meteor ignores such a sub), or a presence
    /// subscription that only edited the live one.
    Duplicate,
    /// It waits for a login; answered then.
    Waiting,
}

/// Handles one `sub` frame.
pub async fn subscribe(
    ctx: &ShardCtx,
    conn: &mut Conn,
    id: &str,
    name: &str,
    params: Vec<Value>,
) -> Result<SubAnswer, MeteorError> {
    if conn.user.is_none() && needs_user(name) {
        if name != STREAM_USER_PRESENCE && !params.first().is_some_and(Value::is_string) {
            return Err(MeteorError::match_failed("eventName must be a string"));
        }
        let cap = ctx.config.limits.max_subscriptions_per_session;
        if conn.pending_subs.len() + conn.handle.sub_count() >= cap {
            return Err(too_many(cap));
        }
        conn.pending_subs.push(PendingSub {
            id: id.to_owned(),
            name: name.to_owned(),
            params,
        });
        return Ok(SubAnswer::Waiting);
    }
    if name == STREAM_USER_PRESENCE {
        return subscribe_presence(ctx, conn, id, &params).await.map(|live| {
            if live {
                SubAnswer::Ready
            } else {
                SubAnswer::Duplicate
            }
        });
    }
    subscribe_stream(ctx, conn, id, name, &params).await
}

/// Runs the subscriptions that waited for this connection's login, answering each (after a
/// login that failed they stay waiting; a logout leaves none).
pub async fn run_pending(ctx: &ShardCtx, conn: &mut Conn) {
    if conn.user.is_none() || conn.pending_subs.is_empty() {
        return;
    }
    for sub in std::mem::take(&mut conn.pending_subs) {
        let answer = subscribe(ctx, conn, &sub.id, &sub.name, sub.params).await;
        push_answer(conn, &sub.id, answer);
    }
}

/// Queues a subscription's answer frame.
pub fn push_answer(conn: &Conn, id: &str, answer: Result<SubAnswer, MeteorError>) {
    let frame = match answer {
        Ok(SubAnswer::Ready) => frames::ready(id),
        Ok(SubAnswer::Duplicate) => frames::nosub(id, None),
        Ok(SubAnswer::Waiting) => return,
        Err(e) => frames::nosub(id, Some(&e)),
    };
    conn.handle.out.push_str(frame);
}

/// An `unsub`: a live subscription, or one still waiting for the login.
pub fn unsubscribe(ctx: &ShardCtx, conn: &mut Conn, id: &str) {
    conn.pending_subs.retain(|s| s.id != id);
    conn.handle.remove_sub(id);
    ctx.hub.clear_presence_watch_if(&conn.handle, id);
}

/// Streams that need a logged-in user (everything known but public settings).
fn needs_user(name: &str) -> bool {
    matches!(
        name,
        STREAM_ROOM_MESSAGES
            | STREAM_NOTIFY_USER
            | STREAM_NOTIFY_ROOM
            | STREAM_NOTIFY_LOGGED
            | STREAM_ROLES
            | STREAM_USER_PRESENCE
    )
}

fn too_many(cap: usize) -> MeteorError {
    MeteorError::new(
        "too-many-subscriptions",
        format!("This connection already holds {cap} subscriptions; unsubscribe from some first"),
    )
}

/// `stream-user-presence ["", {added: [uid...], removed: [uid...]}]`. `Ok(true)`: this is the
/// connection's live presence subscription; `Ok(false)`: it only edited the live one.
async fn subscribe_presence(ctx: &ShardCtx, conn: &Conn, id: &str, params: &[Value]) -> Result<bool, MeteorError> {
    conn.user
        .as_ref()
        .ok_or_else(|| MeteorError::new("not-allowed", "Not allowed"))?;
    let uids = |key: &str| -> Result<Vec<UserId>, MeteorError> {
        match params.get(1).and_then(|o| o.get(key)) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(UserId::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| MeteorError::match_failed(&format!("{key} must be user ids"))),
            Some(_) => Err(MeteorError::match_failed(&format!("{key} must be an array"))),
        }
    };
    let (added, removed) = (uids("added")?, uids("removed")?);
    let cap = ctx.config.limits.max_presence_watches;
    ctx.hub
        .watch_presence(&conn.handle, id, &added, &removed, cap)
        .await
        .ok_or_else(|| {
            MeteorError::new(
                "too-many-presence-watches",
                format!("A connection may watch the presence of at most {cap} users"),
            )
        })
}

/// Authorizes and records a stream subscription.
async fn subscribe_stream(
    ctx: &ShardCtx,
    conn: &Conn,
    id: &str,
    name: &str,
    params: &[Value],
) -> Result<SubAnswer, MeteorError> {
    let limits = &ctx.config.limits;
    let too_long = |what: &str| {
        MeteorError::new(
            "invalid-event-name",
            format!("The {what} is longer than {} characters", limits.max_event_name_chars),
        )
    };
    if name.chars().count() > limits.max_event_name_chars {
        return Err(too_long("stream name"));
    }
    let stream = match name {
        "stream-room-messages" => STREAM_ROOM_MESSAGES,
        "stream-notify-user" => STREAM_NOTIFY_USER,
        "stream-notify-room" => STREAM_NOTIFY_ROOM,
        "stream-notify-logged" => STREAM_NOTIFY_LOGGED,
        "stream-notify-all" => STREAM_NOTIFY_ALL,
        "stream-roles" => STREAM_ROLES,
        _ => return Err(MeteorError::new(404, format!("Subscription '{name}' not found"))),
    };
    let event = params
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| MeteorError::match_failed("eventName must be a string"))?;
    if event.is_empty() {
        return Err(MeteorError::new("invalid-event-name", "Invalid event name"));
    }
    if event.chars().count() > limits.max_event_name_chars {
        return Err(too_long("event name"));
    }
    if conn.handle.sub_count() >= limits.max_subscriptions_per_session {
        return Err(too_many(limits.max_subscriptions_per_session));
    }
    let not_allowed = || MeteorError::new("not-allowed", "Not allowed");
    let ops = ctx.ops();
    let allowed = match (stream, conn.user.as_ref()) {
        (STREAM_NOTIFY_ALL, _) => true,
        (_, None) => false,
        (STREAM_ROOM_MESSAGES, Some(user)) => event == MY_MESSAGES || ops.member_of(user, &RoomId::from(event)).await?,
        (STREAM_NOTIFY_USER, Some(user)) => event
            .strip_prefix(user.id.as_str())
            .is_some_and(|rest| rest.starts_with('/')),
        (STREAM_NOTIFY_ROOM, Some(user)) => match event.split_once('/') {
            Some((rid, _)) => ops.member_of(user, &RoomId::from(rid)).await?,
            None => false,
        },
        (_, Some(_)) => true,
    };
    if !allowed {
        return Err(not_allowed());
    }
    if !conn.handle.add_sub(id, stream, event) {
        return Ok(SubAnswer::Duplicate);
    }
    let use_collection = match params.get(1) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Object(o)) => o.get("useCollection").and_then(Value::as_bool).unwrap_or(false),
        _ => false,
    };
    if use_collection {
        conn.handle.out.push_str(frames::stream_added(name, event));
    }
    Ok(SubAnswer::Ready)
}

/// DDP `stream-notify-room`: `<rid>/user-activity [username, activities, extra?]` and
/// `<rid>/typing [username, bool]` from a member. A username other than the caller's is dropped
/// silently (Rocket.Chat does the same); nothing is stored.
pub async fn notify_room(c: &mut Ddp<'_>) -> DdpResult {
    let event = c.str_at(0, "eventName")?;
    let not_allowed = || MeteorError::new("not-allowed", "Not allowed").with_method("stream-notify-room");
    let (rid, kind) = event.split_once('/').ok_or_else(not_allowed)?;
    let username = c.str_at(1, "username")?;
    let (activities, extra) = match kind {
        "user-activity" => {
            let list = c
                .param(2)
                .and_then(Value::as_array)
                .ok_or_else(|| MeteorError::match_failed("activities must be an array"))?;
            let activities = list
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| MeteorError::match_failed("activities must be strings"))?;
            let extra = match c.param(3) {
                None | Some(Value::Null) => None,
                Some(v @ Value::Object(_)) => Some(v.clone()),
                Some(_) => return Err(MeteorError::match_failed("extra must be an object")),
            };
            (activities, extra)
        }
        "typing" => {
            let on = c
                .param(2)
                .and_then(Value::as_bool)
                .ok_or_else(|| MeteorError::match_failed("typing flag must be a boolean"))?;
            (if on { vec!["user-typing".to_owned()] } else { Vec::new() }, None)
        }
        _ => return Err(not_allowed()),
    };
    let rid = RoomId::from(rid);
    let user = c.user()?;
    if !c.ops().member_of(user, &rid).await? {
        return Err(not_allowed());
    }
    if username != user.username {
        tracing::debug!(claimed = username, "typing event with another user's name dropped");
        return ddp::none();
    }
    c.ctx.hub.send_activity(Activity {
        rid,
        username: user.username.clone(),
        activities,
        extra,
        origin: Origin {
            host: 0,
            shard: c.ctx.hub.shard,
            session: c.conn.handle.id,
        },
    });
    ddp::none()
}
