//! HTTP/1.1 on every shard, served by hyper with keep-alive (runs on the connection's shard).
//! Routes: `/health`, `/metrics` (Prometheus text), `/api/info`; everything else is a
//! Rocket.Chat-style JSON 404. The REST API v1 builds on this router.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::io::{AsyncRead, AsyncWrite};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::io::HyperIo;
use super::ShardCtx;

/// The Rocket.Chat version chatd reports compatibility with.
pub const COMPAT_VERSION: &str = "6.5.0";

pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + 'static>(io: S, ctx: Rc<ShardCtx>) {
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route(req, &ctx).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .serve_connection(HyperIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    raw_json_response(status, body.to_string())
}

/// A response whose body is already JSON text.
pub fn raw_json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn route(req: Request<Incoming>, ctx: &ShardCtx) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => health(ctx),
        (&Method::GET, "/metrics") => metrics(ctx),
        (&Method::GET, "/api/info") => json_response(
            StatusCode::OK,
            &json!({"version": COMPAT_VERSION, "minimumClientVersions": {}, "success": true}),
        ),
        (_, p) if p.starts_with("/api/v1/") => super::rest::handle(req, ctx).await,
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"success": false, "error": "Resource not found"}),
        ),
    }
}

/// Seconds of writes the shards may be behind the store's head before `/health` says lagging.
const HEALTH_MAX_BEHIND_SECS: u64 = 10;

fn health(ctx: &ShardCtx) -> Response<Full<Bytes>> {
    let store = &ctx.hub.store;
    let head = store.head();
    let applied = ctx.hub.applied();
    let behind = store.marks_apart_seconds(head, applied);
    let st = store.status();
    let status = if !st.reachable {
        "store unreachable"
    } else if !st.feed_open {
        "change feed reconnecting"
    } else if behind >= HEALTH_MAX_BEHIND_SECS {
        "lagging"
    } else {
        "ok"
    };
    let body = json!({
        "status": status,
        "store": st.backend,
        "store_error": st.error,
        "feed_head": head,
        "feed_applied": applied,
        "feed_lag_ms": st.feed_lag_ms,
        "shard": ctx.hub.shard,
    });
    json_response(
        if status == "ok" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

fn metrics(ctx: &ShardCtx) -> Response<Full<Bytes>> {
    let mut out = String::new();
    type Series = (&'static str, &'static str, fn(&chatd_shards::ShardStats) -> u64);
    let series: [Series; 11] = [
        ("chatd_connections_open", "gauge", |s| {
            s.open_connections.load(Ordering::Relaxed)
        }),
        ("chatd_connections_accepted_total", "counter", |s| {
            s.accepted.load(Ordering::Relaxed)
        }),
        ("chatd_accept_fd_exhausted_total", "counter", |s| {
            s.accept_fd_exhausted.load(Ordering::Relaxed)
        }),
        ("chatd_sessions_authenticated", "gauge", |s| {
            s.sessions.load(Ordering::Relaxed)
        }),
        ("chatd_deliveries_total", "counter", |s| {
            s.deliveries.load(Ordering::Relaxed)
        }),
        ("chatd_dropped_events_total", "counter", |s| {
            s.dropped.load(Ordering::Relaxed)
        }),
        ("chatd_slow_consumers_closed_total", "counter", |s| {
            s.slow_closed.load(Ordering::Relaxed)
        }),
        ("chatd_mesh_sent_total", "counter", |s| {
            s.mesh_sent.load(Ordering::Relaxed)
        }),
        ("chatd_mesh_full_total", "counter", |s| {
            s.mesh_full.load(Ordering::Relaxed)
        }),
        // Microseconds: the longest the shard's event loop went without coming back to its
        // timers since start (how late a 10 ms probe timer fired).
        ("chatd_event_loop_stall_max_us", "gauge", |s| {
            s.loop_stall_max_us.load(Ordering::Relaxed)
        }),
        // The same over the last 10 to 20 seconds only.
        ("chatd_event_loop_stall_recent_us", "gauge", |s| {
            s.loop_stall_recent_us.load(Ordering::Relaxed)
        }),
    ];
    for (name, kind, get) in series {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (shard, s) in ctx.all_stats.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(s));
        }
    }
    let _ = writeln!(
        out,
        "# TYPE chatd_change_feed_head gauge\nchatd_change_feed_head {}",
        ctx.hub.store.head()
    );
    let st = ctx.hub.store.status();
    let store_series: [(&str, &str, f64); 7] = [
        ("chatd_store_reachable", "gauge", f64::from(u8::from(st.reachable))),
        ("chatd_change_feed_open", "gauge", f64::from(u8::from(st.feed_open))),
        ("chatd_change_feed_lag_seconds", "gauge", st.feed_lag_ms as f64 / 1000.0),
        ("chatd_change_feed_events_total", "counter", st.feed_events as f64),
        (
            "chatd_change_feed_bad_events_total",
            "counter",
            st.feed_bad_events as f64,
        ),
        (
            "chatd_change_feed_history_lost_total",
            "counter",
            st.feed_history_lost as f64,
        ),
        ("chatd_change_feed_resumes_total", "counter", st.feed_resumes as f64),
    ];
    for (name, kind, value) in store_series {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name}{{store=\"{}\"}} {value}", st.backend);
    }
    let p = &ctx.peer_stats;
    let peer_series: [(&str, &str, &std::sync::atomic::AtomicU64); 7] = [
        ("chatd_peer_links_up", "gauge", &p.links_up),
        ("chatd_peer_links_established_total", "counter", &p.links_established),
        ("chatd_peer_refused_total", "counter", &p.refused),
        ("chatd_peer_frames_sent_total", "counter", &p.frames_sent),
        ("chatd_peer_frames_received_total", "counter", &p.frames_received),
        ("chatd_peer_dropped_total", "counter", &p.dropped),
        ("chatd_peer_expired_total", "counter", &p.expired),
    ];
    for (name, kind, counter) in peer_series {
        let _ = writeln!(
            out,
            "# TYPE {name} {kind}\n{name} {}",
            crate::peer::PeerStats::get(counter)
        );
    }
    let _ = writeln!(
        out,
        "# TYPE chatd_uptime_seconds gauge\nchatd_uptime_seconds {}",
        ctx.started_at.elapsed().as_secs()
    );
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
