//! One DDP session over WebSocket (runs on the connection's shard, never moves). The reader
//! handles the client's frames strictly in order (pipelined `connect` + `login` work); a writer
//! task drains the bounded outbound queue, coalescing everything pending into one flush.
//!
//! Timers: a server `ping` after `ping_interval` of silence and a close after as long again;
//! a close if the client has not logged in within `auth_timeout` (when one is set). Method calls
//! and subscriptions go to the API ([`crate::api`]).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chatd_shards::ShardStats;
use futures::io::{AsyncRead, AsyncWrite};
use futures::{SinkExt, StreamExt};
use tracing::Instrument;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use super::ratelimit::{self, DdpCall, Kind};
use crate::api::ddp::{Conn, DdpAnswer};
use crate::api::streams;
use crate::chat::hub::SessionHandle;
use crate::chat::outbound::{Batch, CloseReason, Outbound};
use crate::ctx::ShardCtx;
use crate::ids::random_id;
use crate::protocol::ddp::{self, ClientFrame, MeteorError};

/// After this many malformed frames a connection is closed (abusive client).
const MAX_BAD_FRAMES: u32 = 50;
/// Read chunk of each WebSocket. tungstenite allocates it up front (128 KiB by default, which made
/// an idle connection cost ~142 KiB); chat clients send small frames (DDP calls of a few hundred
/// bytes), and larger ones still work, in more reads.
const WS_READ_BUFFER: usize = 2 * 1024;
/// How long a closing session's writer may take to deliver what is queued and the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The same for a slow consumer, whose socket is known to be full.
const SLOW_CLOSE_GRACE: Duration = Duration::from_millis(250);

/// Per-connection state owned by the reader.
pub struct Session {
    pub ctx: Rc<ShardCtx>,
    pub handle: Rc<SessionHandle>,
    pub ddp_session: String,
    pub connected: bool,
    /// What the API keeps of this connection (its user, token, waiting subscriptions).
    pub conn: Conn,
    bad_frames: Rc<Cell<u32>>,
    /// This connection's own rate-limit counters.
    rate: ratelimit::ConnectionCounters,
}

enum Wake {
    Frame(Option<Result<Message, tungstenite::Error>>),
    Timer,
    Closing,
}

pub async fn run<S: AsyncRead + AsyncWrite + Unpin + 'static>(io: S, ctx: Rc<ShardCtx>, ip: std::net::IpAddr) {
    let limits = &ctx.config.limits;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let handshake = async_tungstenite::accept_hdr_async_with_config(
        io,
        async_tungstenite::tungstenite::handshake::server::NoCallback,
        Some(ws_config),
    );
    let timeout = Duration::from_secs(limits.handshake_timeout_secs);
    let ws = futures_lite::future::or(async { Some(handshake.await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    let ws = match ws {
        Some(Ok(ws)) => ws,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "websocket handshake failed");
            return;
        }
        None => {
            tracing::debug!("websocket handshake timed out");
            return;
        }
    };
    let (sink, stream) = ws.split();
    let handle = ctx
        .hub
        .new_session(Outbound::new(limits.outbound_queue_frames, limits.outbound_queue_bytes));
    // Every line logged for this session, by its reader or its writer, carries its span; the
    // span is attached to each task (`instrument`), never entered across an await.
    let span = tracing::debug_span!("session", shard = ctx.hub.shard, id = handle.id, ip = %ip);
    let writer = glommio::spawn_local(write_loop(sink, handle.clone()).instrument(span.clone()));
    serve(ctx, handle, writer, ip, stream).instrument(span).await;
}

/// The session from its greeting to its close.
async fn serve<S>(
    ctx: Rc<ShardCtx>,
    handle: Rc<SessionHandle>,
    writer: glommio::Task<()>,
    ip: std::net::IpAddr,
    stream: async_tungstenite::WebSocketReceiver<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session {
        ctx: ctx.clone(),
        handle: handle.clone(),
        ddp_session: random_id(),
        connected: false,
        conn: Conn::new(handle.clone(), ip),
        bad_frames: Rc::new(Cell::new(0)),
        rate: Default::default(),
    };
    // Meteor's greeting; clients ignore it, some wait for nothing else before `connect`.
    handle.out.push_str(r#"{"server_id":"0"}"#.to_owned());
    session.read_loop(stream).await;
    ctx.hub.end_session(&handle).await;
    let slow = handle.out.was_slow();
    if slow {
        ShardStats::add(&ctx.hub.stats.slow_closed, 1);
        tracing::info!(session = handle.id, "closing slow consumer");
    }
    handle.out.close(CloseReason::new(1000, ""));
    // A peer that stopped reading can keep the writer parked on a full socket forever: give it a
    // bounded grace to take the close frame, then drop the connection.
    let grace = if slow { SLOW_CLOSE_GRACE } else { CLOSE_GRACE };
    let mut writer = writer;
    let finished = futures_lite::future::or(
        async {
            (&mut writer).await;
            true
        },
        async {
            glommio::timer::sleep(grace).await;
            false
        },
    )
    .await;
    if !finished {
        tracing::debug!(
            session = handle.id,
            "peer did not take the close frame; dropping the connection"
        );
        writer.cancel().await;
    }
}

async fn write_loop<S>(mut sink: async_tungstenite::WebSocketSender<S>, handle: Rc<SessionHandle>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Grows to the largest batch seen; an idle session keeps only what it needed.
    let mut batch: Vec<Utf8Bytes> = Vec::new();
    loop {
        match handle.out.next_batch(&mut batch).await {
            Batch::Frames => {
                for frame in batch.drain(..) {
                    if sink.feed(Message::Text(frame)).await.is_err() {
                        handle.out.close(CloseReason::new(1006, "write failed"));
                        return;
                    }
                }
                // One flush for everything that was pending: the coalesced write.
                if sink.flush().await.is_err() {
                    handle.out.close(CloseReason::new(1006, "write failed"));
                    return;
                }
            }
            Batch::Close(reason) => {
                let frame = (reason.code != 1006).then(|| CloseFrame {
                    code: CloseCode::from(reason.code),
                    reason: reason.reason.into(),
                });
                let _ = sink.close(frame).await;
                return;
            }
        }
    }
}

impl Session {
    fn push(&self, frame: String) {
        self.handle.out.push_str(frame);
    }

    fn close(&self, code: u16, reason: &str) {
        self.handle.out.close(CloseReason::new(code, reason));
    }

    /// Reads the client's frames until the connection ends. A reader answers pings and runs
    /// the ping and auth timers at all times, also while a call is under way; every other frame
    /// goes, in order, to the processor, which handles one at a time. At most
    /// `limits.max_pending_calls` frames wait or run; one more is answered at once with an error.
    async fn read_loop<S>(&mut self, stream: async_tungstenite::WebSocketReceiver<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (tx, mut rx) = futures::channel::mpsc::unbounded::<ClientFrame>();
        let pending = Cell::new(0usize);
        let ended = Cell::new(false);
        let reader = Reader {
            ctx: self.ctx.clone(),
            handle: self.handle.clone(),
            bad_frames: self.bad_frames.clone(),
            pending: &pending,
        };
        let read = Box::pin(async move {
            reader.run(stream, tx).await;
        });
        let process = Box::pin(async {
            while let Some(frame) = rx.next().await {
                if ended.get() {
                    return;
                }
                let go_on = self.on_frame(frame).await;
                pending.set(pending.get().saturating_sub(1));
                if !go_on {
                    return;
                }
            }
        });
        let first = futures::future::select(read, process).await;
        match first {
            // The connection ended: the call under way finishes (every wait in it is bounded);
            // frames still queued are dropped.
            futures::future::Either::Left(((), process)) => {
                ended.set(true);
                process.await;
            }
            futures::future::Either::Right(((), _read)) => {}
        }
    }

    fn bad_frame(&mut self, reason: &str, offending: Option<serde_json::Value>, what: &str) -> bool {
        bad_frame(&self.handle, &self.bad_frames, reason, offending, what)
    }

    /// Handles one frame from the reader; `false` ends the session.
    async fn on_frame(&mut self, frame: ClientFrame) -> bool {
        if !self.connected {
            return match frame {
                ClientFrame::Connect { version, support } => match ddp::negotiate(&version, &support) {
                    Some(_) => {
                        self.connected = true;
                        self.push(ddp::connected(&self.ddp_session));
                        true
                    }
                    None => {
                        self.push(ddp::failed());
                        self.close(1002, "unsupported DDP version");
                        false
                    }
                },
                ClientFrame::Ping { id } => {
                    self.push(ddp::pong(id));
                    true
                }
                _ => self.bad_frame("Must connect first", None, "frame before connect"),
            };
        }
        match frame {
            ClientFrame::Connect { .. } => self.bad_frame("Already connected", None, "second connect"),
            ClientFrame::Ping { id } => {
                self.push(ddp::pong(id));
                true
            }
            ClientFrame::Pong => true,
            ClientFrame::Method { id, method, params } => {
                if let Err(v) = self.rate_check(Kind::Method, &method) {
                    self.push(ddp::result_error(&id, &v.ddp_error()));
                    self.push(ddp::updated(&id));
                    return true;
                }
                let started = std::time::Instant::now();
                let was_logged_in = self.conn.user.is_some();
                let res = crate::api::ddp::call(&self.ctx, &mut self.conn, &method, params).await;
                self.ctx.hub.stats.method_seconds.observe_duration(started.elapsed());
                match res {
                    // Possibly large results come as JSON rendered on a reader thread, framed as is.
                    Ok(DdpAnswer::Raw(raw)) => self.push(ddp::result_raw(&id, &raw)),
                    Ok(DdpAnswer::Value(v)) => self.push(ddp::result(&id, v)),
                    Err(e) => {
                        tracing::debug!(method, error = %e.reason, "method failed");
                        self.push(ddp::result_error(&id, &e));
                    }
                }
                self.push(ddp::updated(&id));
                // Subscriptions made before the login run now that there is a user.
                if !was_logged_in && self.conn.user.is_some() {
                    streams::run_pending(&self.ctx, &mut self.conn).await;
                }
                true
            }
            ClientFrame::Sub { id, name, params } => {
                let answer = match self.rate_check(Kind::Sub, &name) {
                    Err(v) => Err(v.ddp_error()),
                    Ok(()) => streams::subscribe(&self.ctx, &mut self.conn, &id, &name, params).await,
                };
                streams::push_answer(&self.conn, &id, answer);
                true
            }
            ClientFrame::Unsub { id } => {
                streams::unsubscribe(&self.ctx, &mut self.conn, &id);
                self.push(ddp::nosub(&id, None));
                true
            }
        }
    }

    /// Counts one call against the rate limits; `Err` with the wait when refused.
    fn rate_check(&mut self, kind: Kind, name: &str) -> Result<(), ratelimit::Verdict> {
        let call = DdpCall {
            kind,
            name,
            ip: self.conn.ip,
            user: self
                .conn
                .user
                .as_ref()
                .map(|u| (&u.id, ratelimit::privileged(&u.roles))),
        };
        let verdict = self
            .ctx
            .rate
            .check_ddp(&self.ctx.config.rate_limits, &mut self.rate, &call, Instant::now());
        if let Err(v) = &verdict {
            tracing::debug!(name, wait_ms = v.reset_in.as_millis() as u64, "call over a rate limit");
        }
        verdict
    }
}

/// Answers a malformed frame; `false` once the client has sent too many (the session is then
/// closed). A client's mistakes are logged at debug level, once each.
fn bad_frame(
    handle: &SessionHandle,
    count: &Cell<u32>,
    reason: &str,
    offending: Option<serde_json::Value>,
    what: &str,
) -> bool {
    count.set(count.get() + 1);
    tracing::debug!(what, reason, "bad client frame");
    handle.out.push_str(ddp::error(reason, offending));
    if count.get() >= MAX_BAD_FRAMES {
        handle.out.close(CloseReason::new(1008, "too many malformed frames"));
        return false;
    }
    true
}

/// The session's reading half: frames in, pings answered, timers kept.
struct Reader<'a> {
    ctx: Rc<ShardCtx>,
    handle: Rc<SessionHandle>,
    bad_frames: Rc<Cell<u32>>,
    /// Frames handed to the processor and not finished yet.
    pending: &'a Cell<usize>,
}

impl Reader<'_> {
    fn push(&self, frame: String) {
        self.handle.out.push_str(frame);
    }

    fn close(&self, code: u16, reason: &str) {
        self.handle.out.close(CloseReason::new(code, reason));
    }

    async fn run<S>(
        &self,
        mut stream: async_tungstenite::WebSocketReceiver<S>,
        tx: futures::channel::mpsc::UnboundedSender<ClientFrame>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ping_every = self.ctx.config.ping_interval();
        let auth_timeout = self.ctx.config.limits.auth_timeout_secs;
        let auth_deadline = (auth_timeout > 0).then(|| Instant::now() + Duration::from_secs(auth_timeout));
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let logged_in = self.handle.user().is_some();
            let mut deadline = match ping_sent {
                Some(at) => at + ping_every,
                None => last_heard + ping_every,
            };
            if let (false, Some(auth)) = (logged_in, auth_deadline) {
                deadline = deadline.min(auth);
            }
            let sleep_for = deadline.saturating_duration_since(now);
            let wake = futures_lite::future::or(
                async { Wake::Frame(stream.next().await) },
                futures_lite::future::or(
                    async {
                        glommio::timer::sleep(sleep_for).await;
                        Wake::Timer
                    },
                    async {
                        self.handle.out.closed().await;
                        Wake::Closing
                    },
                ),
            )
            .await;
            match wake {
                Wake::Closing => return,
                Wake::Timer => {
                    let now = Instant::now();
                    if self.handle.user().is_none() && auth_deadline.is_some_and(|d| now >= d) {
                        tracing::debug!("closing: not logged in within the auth timeout");
                        self.push(ddp::error("Authentication timeout", None));
                        self.close(4001, "authentication timeout");
                        return;
                    }
                    match ping_sent {
                        Some(at) if now >= at + ping_every => {
                            tracing::debug!("closing: no answer to ping");
                            self.close(4000, "TIMEOUT");
                            return;
                        }
                        Some(_) => {}
                        None if now >= last_heard + ping_every => {
                            self.push(ddp::ping());
                            ping_sent = Some(now);
                        }
                        None => {}
                    }
                }
                Wake::Frame(None) => return,
                Wake::Frame(Some(Err(e))) => {
                    self.on_transport_error(e);
                    return;
                }
                Wake::Frame(Some(Ok(msg))) => {
                    last_heard = Instant::now();
                    ping_sent = None;
                    let go_on = match msg {
                        Message::Text(text) => self.on_text(&text, &tx),
                        Message::Binary(_) => self.bad_frame("Bad request", None, "binary frame"),
                        Message::Close(_) => return,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => true,
                    };
                    if !go_on {
                        return;
                    }
                }
            }
        }
    }

    fn bad_frame(&self, reason: &str, offending: Option<serde_json::Value>, what: &str) -> bool {
        bad_frame(&self.handle, &self.bad_frames, reason, offending, what)
    }

    /// Parses one text frame: pings are answered here, everything else is queued for the
    /// processor (or refused when too many wait). `false` ends the session.
    fn on_text(&self, text: &str, tx: &futures::channel::mpsc::UnboundedSender<ClientFrame>) -> bool {
        let frame = match ddp::parse_frame(text) {
            Ok(f) => f,
            Err(e) => return self.bad_frame(e.reason, e.offending, "unparseable DDP"),
        };
        match frame {
            ClientFrame::Ping { id } => {
                self.push(ddp::pong(id));
                return true;
            }
            ClientFrame::Pong => return true,
            _ => {}
        }
        let cap = self.ctx.config.limits.max_pending_calls;
        if self.pending.get() >= cap {
            let err = MeteorError::new(
                "too-many-pending-calls",
                format!("More than {cap} calls are waiting for an answer on this connection; wait for their results"),
            );
            tracing::debug!(cap, "refusing a frame: too many pending calls");
            return match frame {
                ClientFrame::Method { id, .. } => {
                    self.push(ddp::result_error(&id, &err));
                    self.push(ddp::updated(&id));
                    true
                }
                ClientFrame::Sub { id, .. } => {
                    self.push(ddp::nosub(&id, Some(&err)));
                    true
                }
                _ => self.bad_frame("Too many pending requests", None, "frame over the pending cap"),
            };
        }
        self.pending.set(self.pending.get() + 1);
        // The processor lives as long as this reader; a send can only fail once it has ended.
        tx.unbounded_send(frame).is_ok()
    }

    fn on_transport_error(&self, e: tungstenite::Error) {
        use tungstenite::error::{CapacityError, Error};
        match e {
            Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                tracing::debug!(size, max_size, "closing: frame over the size cap");
                self.close(1009, "message too big");
            }
            Error::Capacity(c) => {
                tracing::debug!(error = %c, "closing: frame over a size cap");
                self.close(1009, "message too big");
            }
            Error::Protocol(p) => {
                tracing::debug!(error = %p, "closing: websocket protocol violation");
                self.close(1002, "protocol error");
            }
            Error::Utf8(_) => {
                tracing::debug!("closing: invalid UTF-8 in a text frame");
                self.close(1007, "invalid utf-8");
            }
            Error::ConnectionClosed | Error::AlreadyClosed | Error::Io(_) => {
                tracing::debug!("connection closed by peer");
                self.close(1006, "");
            }
            other => {
                tracing::info!(error = %other, "closing after a websocket error");
                self.close(1011, "error");
            }
        }
    }
}
