//! HTTP/1.1 on every shard, served by hyper with keep-alive (runs on the connection's shard).
//! Routes: `/health` (and `/live`, `/ready`), `/metrics` (OpenMetrics text), `/api/info` and the
//! REST API v1 (`/api/v1/*`, see [`crate::api::rest`]), the web client (`/`, `/assets/*`, see
//! [`super::web`]); everything else is a Rocket.Chat-style JSON 404. Every answer carries
//! `X-Content-Type-Options: nosniff`.

use std::convert::Infallible;
use std::rc::Rc;

use bytes::Bytes;
use futures::io::{AsyncRead, AsyncWrite};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::io::HyperIo;
use crate::ctx::ShardCtx;

/// Serves HTTP/1.1 on one connection from `peer`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + 'static>(io: S, ctx: Rc<ShardCtx>, peer: std::net::IpAddr) {
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move {
            let mut resp = route(req, &ctx, peer).await;
            resp.headers_mut().insert(
                hyper::header::X_CONTENT_TYPE_OPTIONS,
                hyper::header::HeaderValue::from_static("nosniff"),
            );
            Ok::<_, Infallible>(resp)
        }
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

async fn route(req: Request<Incoming>, ctx: &ShardCtx, peer: std::net::IpAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => super::health::health(ctx).await,
        (&Method::GET, "/health/live") => super::health::live(ctx),
        (&Method::GET, "/health/ready") => super::health::ready(ctx).await,
        (&Method::GET, "/metrics") => super::metrics::metrics(ctx),
        (&Method::GET | &Method::HEAD, "/" | "/index.html") if ctx.config.web.enabled => {
            super::web::page(req.headers(), &ctx.config.web.frame_ancestors)
        }
        (&Method::GET | &Method::HEAD, p) if ctx.config.web.enabled && p.starts_with("/assets/") => {
            super::web::asset_response(p.trim_start_matches("/assets/"), req.headers())
        }
        (&Method::GET, "/api/info") => {
            let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
            let body = crate::api::settings::info(ctx, header("x-user-id"), header("x-auth-token")).await;
            json_response(StatusCode::OK, &body)
        }
        (_, p) if p.starts_with("/api/v1/") => {
            let started = std::time::Instant::now();
            let forwarded: Vec<&str> = req
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
            let ip = super::ratelimit::client_ip(peer, forwarded.as_deref(), ctx.config.rate_limits.trusted_proxies);
            let resp = crate::api::rest::handle(req, ctx, ip).await;
            ctx.hub.stats.rest_seconds.observe_duration(started.elapsed());
            resp
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"success": false, "error": "Resource not found"}),
        ),
    }
}
