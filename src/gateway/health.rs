//! `/health`, `/health/live` and `/health/ready` (answered on the connection's shard).
//!
//! `/health` asks every shard for a mesh round trip within `health.shard_timeout_ms`, and reads
//! the tailer shard's figures: it is unhealthy (503) when a shard does not answer, the store is
//! unreachable, the change feed is reconnecting, or the feed has had changes pending without
//! moving for `health.feed_stall_secs`. `/health/live` only says this process serves HTTP;
//! `/health/ready` is `/health` plus draining: from SIGTERM on it answers 503 so a load
//! balancer stops sending new clients before connections close.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::http::json_response;
use crate::chat::TAILER_SHARD;
use crate::ctx::ShardCtx;

/// What every shard and the tailer say, and what is wrong.
struct Report {
    problems: Vec<String>,
    body: Value,
}

async fn report(ctx: &ShardCtx) -> Report {
    let timeout = ctx.config.health.shard_timeout();
    let pings = (0..ctx.all_stats.len()).map(|shard| ctx.hub.ping_shard(shard, timeout));
    let answered = futures::future::join_all(pings).await;
    let mut problems = Vec::new();
    let shards: Vec<Value> = ctx
        .all_stats
        .iter()
        .zip(&answered)
        .enumerate()
        .map(|(shard, (s, ok))| {
            if !ok {
                problems.push(format!(
                    "shard {shard} did not answer within {} ms",
                    timeout.as_millis()
                ));
            }
            json!({
                "shard": shard,
                "answered": ok,
                "connections": s.open_connections.load(Ordering::Relaxed),
                "websockets": s.websockets.load(Ordering::Relaxed),
                "sessions": s.sessions.load(Ordering::Relaxed),
                "subscriptions": s.subscriptions.load(Ordering::Relaxed),
                "applied": s.applied.load(Ordering::Relaxed),
                "event_loop_stall_recent_us": s.loop_stall_recent_us.load(Ordering::Relaxed),
            })
        })
        .collect();
    let store = &ctx.hub.store;
    let st = store.status();
    if !st.reachable {
        problems.push("store unreachable".into());
    } else if !st.feed_open {
        problems.push("change feed reconnecting".into());
    } else if let Some(age) = st
        .feed_poll_age_ms
        .filter(|age| *age >= ctx.config.health.feed_stall_secs.saturating_mul(1000))
    {
        problems.push(format!("change stream not answering for {} s", age / 1000));
    }
    let head = store.head();
    let tailer = ctx.all_stats.get(TAILER_SHARD);
    let delivered = tailer.map_or(0, |s| s.feed_delivered.load(Ordering::Relaxed));
    let stalled_ms = tailer.map_or(0, |s| s.feed_stalled_ms.load(Ordering::Relaxed));
    if stalled_ms >= ctx.config.health.feed_stall_secs.saturating_mul(1000) {
        problems.push(format!(
            "change feed stalled: changes pending and not moving for {} s",
            stalled_ms / 1000
        ));
    }
    let body = json!({
        "status": if problems.is_empty() { "ok" } else { "unhealthy" },
        "problems": problems,
        "answered_by": ctx.hub.shard,
        "draining": ctx.draining.load(Ordering::Acquire),
        "store": {
            "backend": st.backend,
            "reachable": st.reachable,
            "error": st.error,
        },
        "feed": {
            "open": st.feed_open,
            "head": head,
            "delivered": delivered,
            "behind_seconds": store.marks_apart_seconds(head, delivered),
            "stalled_ms": stalled_ms,
            "lag_ms": st.feed_lag_ms,
            "tailer_shard": TAILER_SHARD,
        },
        "shards": shards,
    });
    Report { problems, body }
}

fn answer(ok: bool, body: &Value) -> Response<Full<Bytes>> {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}

/// `GET /health`: every shard and the tailer.
pub async fn health(ctx: &ShardCtx) -> Response<Full<Bytes>> {
    let r = report(ctx).await;
    answer(r.problems.is_empty(), &r.body)
}

/// `GET /health/live`: the process serves HTTP on this shard.
pub fn live(ctx: &ShardCtx) -> Response<Full<Bytes>> {
    answer(true, &json!({"status": "live", "answered_by": ctx.hub.shard}))
}

/// `GET /health/ready`: healthy and not draining.
pub async fn ready(ctx: &ShardCtx) -> Response<Full<Bytes>> {
    if ctx.draining.load(Ordering::Acquire) {
        return answer(false, &json!({"status": "draining", "answered_by": ctx.hub.shard}));
    }
    let r = report(ctx).await;
    let ok = r.problems.is_empty();
    answer(
        ok,
        &json!({"status": if ok { "ready" } else { "unhealthy" }, "problems": r.problems, "answered_by": ctx.hub.shard}),
    )
}
