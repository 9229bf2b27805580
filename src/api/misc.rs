//! The rest of what the apps call at start-up: `emoji-custom.list`, `commands.list`,
//! `push.token` (stored for the user; chatd sends no push notifications), and the REST bridge
//! to DDP methods (`method.call/<name>`, `method.callAnon/<name>`) the apps use when a server
//! advertises `API_Use_REST_For_DDP_Calls`. Runs on the caller's shard.

use std::rc::Rc;

use serde_json::{json, Value};

use super::ddp::{Conn, DdpAnswer};
use super::rest::{ok, Rest, RestError, RestResult};
use crate::auth;
use crate::chat::hub::SessionHandle;
use crate::chat::outbound::Outbound;
use crate::ids::{now_ms, random_id};
use crate::protocol::wire::Dates;

/// Where push tokens are stored (keyed by the SHA-256 of the token's value).
const PUSH_TOKENS: &str = "push_tokens";
/// Longest push token value or app name accepted.
const MAX_PUSH_FIELD: usize = 4096;
/// What a bridged call's connection may queue (its frames are dropped: a REST caller gets only
/// the result).
const BRIDGE_QUEUE_FRAMES: usize = 64;
const BRIDGE_QUEUE_BYTES: usize = 1 << 20;

/// `GET emoji-custom.list[?updatedSince]`: custom emoji (none are configured).
pub async fn emoji_custom_list(c: &Rest<'_>) -> RestResult {
    c.user()?;
    c.query.date("updatedSince")?;
    Ok(ok(json!({"emojis": {"update": [], "remove": []}})))
}

/// `GET commands.list`: slash commands the server runs (chatd runs none).
pub async fn commands_list(c: &Rest<'_>) -> RestResult {
    c.user()?;
    let (offset, _) = c.query.page()?;
    Ok(ok(json!({"commands": [], "offset": offset, "count": 0, "total": 0})))
}

/// `POST push.token {id?, type: "apn"|"gcm", value, appName, voipToken?}`: stores the device's
/// token for the caller.
pub async fn push_token_set(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let b = &c.body;
    let kind = b.str("type")?;
    if kind != "apn" && kind != "gcm" {
        return Err(RestError::invalid(
            "The required \"type\" body param is invalid or missing.",
        ));
    }
    let value = b.str("value")?;
    let app_name = b.str("appName")?;
    let voip = b.opt_str("voipToken")?;
    if [value, app_name, voip.unwrap_or("")]
        .iter()
        .any(|f| f.len() > MAX_PUSH_FIELD)
    {
        return Err(RestError::invalid("Push token fields are limited to 4096 bytes"));
    }
    let id = b
        .opt_str("id")?
        .filter(|s| !s.is_empty())
        .map_or_else(random_id, str::to_owned);
    let now = now_ms();
    let mut doc = json!({
        "_id": id,
        "token": {kind: value},
        "appName": app_name,
        "uid": user.id,
        "enabled": true,
        "createdAt": now,
        "updatedAt": now,
    });
    if let Some(v) = voip {
        doc["voipToken"] = json!(v);
    }
    let stored = c
        .ops()
        .put_doc(
            "push.token",
            PUSH_TOKENS,
            auth::sha256_hex(value),
            doc,
            false,
            Some(user),
        )
        .await?;
    let at = |k: &str| Dates::Iso.date(stored.get(k).and_then(Value::as_i64).unwrap_or(now));
    Ok(ok(json!({"result": {
        "_id": stored["_id"],
        "token": stored["token"],
        "appName": stored["appName"],
        "userId": user.id,
        "enabled": true,
        "createdAt": at("createdAt"),
        "updatedAt": at("updatedAt"),
    }})))
}

/// `DELETE push.token {token}`: forgets one of the caller's device tokens.
pub async fn push_token_delete(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let token = c.body.str("token")?;
    let deleted = c
        .ops()
        .delete_doc("push.token", PUSH_TOKENS, auth::sha256_hex(token), Some(user))
        .await?;
    if !deleted {
        return Err(RestError::new(hyper::StatusCode::NOT_FOUND, "Not found"));
    }
    Ok(ok(json!({})))
}

/// `POST method.call/<name> {message: "<EJSON {msg, id, method, params}>"}` (logged in).
pub async fn method_call(c: &Rest<'_>) -> RestResult {
    bridge(c, c.user.clone()).await
}

/// `POST method.callAnon/<name>` (no login: methods that need one answer so).
pub async fn method_call_anon(c: &Rest<'_>) -> RestResult {
    bridge(c, None).await
}

/// Runs one DDP method for a REST caller on a connection of its own that lives for this call,
/// and answers `{message: "<EJSON {msg: "result", id, result | error}>"}` as Rocket.Chat does.
async fn bridge(c: &Rest<'_>, user: Option<crate::store::User>) -> RestResult {
    let text = c.body.str("message")?;
    let call: Value =
        serde_json::from_str(text).map_err(|_| RestError::invalid("Param \"message\" must be an EJSON method call"))?;
    let method = call.get("method").and_then(Value::as_str).unwrap_or(c.tail.as_str());
    if method != c.tail {
        return Err(RestError::invalid(
            "The method in the message is not the one in the URL",
        ));
    }
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let params = match call.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(RestError::invalid("Param \"message.params\" must be an array")),
    };
    let handle = Rc::new(SessionHandle::new(
        0,
        Outbound::new(BRIDGE_QUEUE_FRAMES, BRIDGE_QUEUE_BYTES),
        c.ctx.hub.stats.clone(),
    ));
    let mut conn = Conn::new(handle.clone(), c.ip);
    conn.user = user;
    let result = super::ddp::call(c.ctx, &mut conn, method, params).await;
    // A login made through the bridge attached this one-call connection: it ends here.
    c.ctx.hub.detach_user(&handle).await;
    let reply = match result {
        Ok(DdpAnswer::Value(v)) => json!({"msg": "result", "id": id, "result": v}),
        Ok(DdpAnswer::Raw(raw)) => {
            let v: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
            json!({"msg": "result", "id": id, "result": v})
        }
        Err(e) => json!({"msg": "result", "id": id, "error": e.to_json()}),
    };
    Ok(ok(json!({"message": reply.to_string()})))
}
