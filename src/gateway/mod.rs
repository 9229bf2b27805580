//! The per-shard edge (every shard): accepts connections on the shard's own listener, reads the
//! first request head to route it, and hands it to the WebSocket DDP session (`session`) or to
//! hyper for HTTP (`http`). Everything here runs on the connection's shard.

mod health;
pub mod http;
mod io;
mod metrics;
pub mod ratelimit;
pub mod session;
pub mod tls;
pub mod web;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chatd_shards::{Acceptor, ShardStats};
use futures::{AsyncRead, AsyncReadExt};
use glommio::net::TcpStream;

use crate::ctx::ShardCtx;
use io::Prefixed;

/// Largest HTTP request head accepted before routing, bytes.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Accepts until shutdown, one task per connection.
pub async fn serve(acceptor: Acceptor, ctx: Rc<ShardCtx>) {
    while let Some(stream) = acceptor.next().await {
        let open = ctx
            .hub
            .stats
            .open_connections
            .load(std::sync::atomic::Ordering::Relaxed);
        if open as usize >= ctx.config.limits.max_connections_per_shard {
            // One line per thousand refusals: a flood must not flood the log too.
            let refused = ctx
                .hub
                .stats
                .refused_connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if refused % 1000 == 0 {
                tracing::warn!(
                    open,
                    refused = refused + 1,
                    "connection limit reached on this shard; refusing connections"
                );
            }
            drop(stream);
            continue;
        }
        ShardStats::add(&ctx.hub.stats.open_connections, 1);
        let counted = Counted(ctx.hub.stats.clone());
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            let _counted = counted;
            connection(stream, ctx).await
        })
        .detach();
    }
}

/// One accepted connection, counted in `open_connections` until the task that serves it ends
/// (however it ends).
struct Counted(Arc<ShardStats>);

impl Drop for Counted {
    fn drop(&mut self) {
        ShardStats::sub(&self.0.open_connections, 1);
    }
}

enum Route {
    WebSocket,
    Http,
}

/// Reads the request head (bounded in size and time) and decides where it goes; also returns
/// its `X-Forwarded-For` header.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<(Route, Option<String>)> {
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
                let upgrade = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && String::from_utf8_lossy(h.value)
                            .to_ascii_lowercase()
                            .contains("websocket")
                });
                let ws_path = matches!(path, "/websocket" | "/websocket/" | "/sockjs/websocket");
                let forwarded_for = forwarded_for(req.headers);
                return Some(if req.method == Some("GET") && upgrade && ws_path {
                    (Route::WebSocket, forwarded_for)
                } else {
                    (Route::Http, forwarded_for)
                });
            }
            // Too large or not HTTP at all: let hyper produce the proper error response.
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => continue,
            _ => return Some((Route::Http, None)),
        }
    }
}

/// Every `X-Forwarded-For` value of a request, joined in order (several headers form one list).
fn forwarded_for(headers: &[httparse::Header<'_>]) -> Option<String> {
    let values: Vec<String> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

async fn connection(stream: TcpStream, ctx: Rc<ShardCtx>) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let handshake = Duration::from_secs(ctx.config.limits.handshake_timeout_secs);
    // Bounds the TLS handshake and the request head; the session keeps its own clock after.
    let _ = stream.set_read_timeout(Some(handshake));
    // Each branch's future is boxed: inline, this future would be as large as the largest of
    // them (the TLS session's), and every plain connection paid for it (~20 KiB each).
    match ctx.tls.as_ref().map(|t| t.acceptor()) {
        None => Box::pin(route(stream, ctx, peer)).await,
        Some(acceptor) => match Box::pin(acceptor.accept(stream)).await {
            Ok(tls) => Box::pin(route(tls, ctx, peer)).await,
            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
        },
    }
}

/// Lifts the handshake's read timeout (plain or TLS stream alike).
trait ClearTimeout {
    fn clear_read_timeout(&self);
}

impl ClearTimeout for TcpStream {
    fn clear_read_timeout(&self) {
        let _ = self.set_read_timeout(None);
    }
}

impl ClearTimeout for futures_rustls::server::TlsStream<TcpStream> {
    fn clear_read_timeout(&self) {
        let _ = self.get_ref().0.set_read_timeout(None);
    }
}

async fn route<S>(mut stream: S, ctx: Rc<ShardCtx>, peer: std::net::IpAddr)
where
    S: AsyncRead + futures::AsyncWrite + ClearTimeout + Unpin + 'static,
{
    let mut head = Vec::with_capacity(1024);
    let Some((route, forwarded_for)) = read_head(&mut stream, &mut head).await else {
        return;
    };
    let trusted = ctx.config.rate_limits.trusted_proxies;
    let ip = ratelimit::client_ip(peer, forwarded_for.as_deref(), trusted);
    match route {
        Route::WebSocket => {
            // The session keeps its own clock (pings, auth timeout) from here on.
            stream.clear_read_timeout();
            session::run(Prefixed::new(head, stream), ctx, ip).await;
        }
        // Each HTTP request names its own client (keep-alive through a proxy carries many).
        Route::Http => http::serve(Prefixed::new(head, stream), ctx, peer).await,
    }
}
