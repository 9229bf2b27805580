//! The connection tasks of host peering (tailer shard only): the cluster port's accept loop, one
//! dial loop per configured peer, and per authenticated link a reader and a writer.
//!
//! - Handshakes are bounded in time and in number at once; a connection that sends garbage, a
//!   wrong version, a wrong secret or an oversized frame is closed and logged once.
//! - The writer takes every frame queued (one bounded queue per link; `Peers` drops into it
//!   with `try_send`, so a shard never waits on a link) and writes them with one call; on an
//!   idle link it sends a heartbeat; it sends a presence snapshot first and whenever one is due.
//! - The reader declares the peer lost after `peer_timeout` without any frame, and hands on at
//!   most `max_typing_per_sec` typing notices per second (more are dropped and counted), so a
//!   flooding peer costs this host little more than reading its bytes.
//! - Dialling retries with jittered exponential back-off, and waits while a link to the host
//!   it last reached at that address is up (the other side may have dialled first).

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use futures_lite::future::or;
use glommio::net::{TcpListener, TcpStream};
use rand::Rng;

use super::codec::{self, Frame};
use super::handshake::{self, Role};
use super::{LinkHandle, PeerError, PeerStats, Peers};

/// Most handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 32;
/// Dial back-off: first retry, and the longest (also bounded by the peer timeout).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Time a dial may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes the writer gathers into one write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Most presence entries one snapshot may hold (users connected to one host); more closes the link.
const MAX_SNAPSHOT_ENTRIES: usize = 1_000_000;
/// Frames the reader handles before it lets other tasks of the shard run.
const READ_BURST: u32 = 64;

/// Starts the link tasks: accepting on `listener` (if any) and dialling every configured peer.
pub fn start(peers: &Rc<Peers>, listener: Option<std::net::TcpListener>) {
    if let Some(listener) = listener {
        // SAFETY: the descriptor comes from a listening std socket whose ownership moves here.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        glommio::spawn_local(accept_loop(peers.clone(), listener)).detach();
    }
    for addr in peers.cfg.peers.clone() {
        dial_peer(peers, &addr);
    }
}

/// Dials `addr` and keeps it linked, unless it is already being dialled.
pub fn dial_peer(peers: &Rc<Peers>, addr: &str) {
    if let Some(wanted) = peers.want(addr) {
        glommio::spawn_local(dial_loop(peers.clone(), addr.to_owned(), wanted)).detach();
    }
}

/// Follows the instances registry (MongoDB backend): every fresh list of live hosts' cluster
/// addresses starts dialling the new ones and stops dialling those that left (static peers
/// stay). Runs until the registry ends.
pub async fn follow_registry(peers: Rc<Peers>, mut lists: futures::channel::mpsc::Receiver<Vec<String>>) {
    use futures::StreamExt;
    while let Some(list) = or(lists.next(), async {
        peers.shutdown.wait().await;
        None
    })
    .await
    {
        let (dial, drop) = registry_changes(&list, &peers.dialled(), &peers.cfg.peers, peers.name());
        for addr in dial {
            dial_peer(&peers, &addr);
        }
        for addr in drop {
            tracing::info!(addr = %addr, "host left the instances registry; no longer dialled");
            peers.unwant(&addr);
        }
    }
}

/// What a fresh registry list changes: addresses to start dialling (live, not this host, not
/// dialled yet) and to stop dialling (dialled, gone from the list, not a static peer).
fn registry_changes(live: &[String], dialled: &[String], fixed: &[String], me: &str) -> (Vec<String>, Vec<String>) {
    let dial = live
        .iter()
        .filter(|a| a.as_str() != me && !dialled.contains(a))
        .cloned()
        .collect();
    let drop = dialled
        .iter()
        .filter(|a| !live.contains(a) && !fixed.contains(a))
        .cloned()
        .collect();
    (dial, drop)
}

async fn accept_loop(peers: Rc<Peers>, listener: TcpListener) {
    let slots = Rc::new(glommio::sync::Semaphore::new(MAX_HANDSHAKES as u64));
    loop {
        let accepted = or(async { Some(listener.accept().await) }, async {
            peers.shutdown.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster port: accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.acquire_static_permit(1).await else {
            return;
        };
        let peers = peers.clone();
        glommio::spawn_local(async move {
            let from = stream.peer_addr().ok();
            if let Err(e) = connect_and_run(&peers, stream, Role::Acceptor).await {
                log_end(&peers, from, &e, "incoming");
            }
            drop(permit);
        })
        .detach();
    }
}

async fn dial_loop(peers: Rc<Peers>, addr: String, wanted: Rc<Cell<bool>>) {
    let max_backoff = BACKOFF_MAX.min(peers.cfg.peer_timeout());
    let mut backoff = BACKOFF_MIN;
    let mut last_host: Option<u64> = None;
    let mut logged_failure = false;
    while !peers.shutdown.is_triggered() && wanted.get() {
        if last_host.is_some_and(|h| peers.linked_to(h)) {
            // The other side dialled us and that link stayed; look again in a while.
            pause(&peers, peers.cfg.heartbeat()).await;
            continue;
        }
        let started = Instant::now();
        let result = match dial(&addr).await {
            Ok(stream) => {
                logged_failure = false;
                connect_and_run_noting(&peers, stream, &mut last_host).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {}
            Err(PeerError::Duplicate) => {}
            Err(e) => {
                if !logged_failure || e.peer_at_fault() {
                    log_end(&peers, None, &e, &addr);
                    logged_failure = true;
                }
            }
        }
        // A link that lived a while starts the back-off afresh.
        if started.elapsed() > max_backoff * 2 {
            backoff = BACKOFF_MIN;
        }
        let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        pause(&peers, jittered).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

async fn pause(peers: &Peers, d: Duration) {
    or(glommio::timer::sleep(d), peers.shutdown.wait()).await;
}

async fn dial(addr: &str) -> Result<TcpStream, PeerError> {
    let targets: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(PeerError::Io)?
        .collect();
    let mut last = PeerError::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{addr} resolves to no address"),
    ));
    for target in targets {
        match TcpStream::connect_timeout(target, CONNECT_TIMEOUT).await {
            Ok(s) => return Ok(s),
            Err(e) => last = PeerError::Io(std::io::Error::other(e.to_string())),
        }
    }
    Err(last)
}

fn log_end(peers: &Peers, from: Option<SocketAddr>, e: &PeerError, what: &str) {
    let from = from.map(|a| a.to_string()).unwrap_or_default();
    if e.peer_at_fault() {
        PeerStats::bump(&peers.stats.refused);
        tracing::warn!(peer = what, from, error = %e, "peer link refused");
    } else {
        tracing::info!(peer = what, from, error = %e, "peer link ended");
    }
}

async fn connect_and_run_noting(
    peers: &Rc<Peers>,
    stream: TcpStream,
    last_host: &mut Option<u64>,
) -> Result<(), PeerError> {
    let (theirs, rest) = authenticate(peers, stream, Role::Dialer).await?;
    *last_host = Some(theirs.host);
    run_link(peers, theirs, peers.host(), rest).await
}

async fn connect_and_run(peers: &Rc<Peers>, stream: TcpStream, role: Role) -> Result<(), PeerError> {
    let (theirs, rest) = authenticate(peers, stream, role).await?;
    let dialer = match role {
        Role::Dialer => peers.host(),
        Role::Acceptor => theirs.host,
    };
    run_link(peers, theirs, dialer, rest).await
}

async fn authenticate(
    peers: &Peers,
    mut stream: TcpStream,
    role: Role,
) -> Result<(codec::Hello, TcpStream), PeerError> {
    let _ = stream.set_nodelay(true);
    let me = peers.hello();
    let done = or(
        async { Some(handshake::run(&mut stream, peers.secret(), &me, role).await) },
        async {
            // A new connection has as long to authenticate as a link may stay silent.
            glommio::timer::sleep(peers.cfg.peer_timeout()).await;
            None
        },
    )
    .await;
    match done {
        Some(Ok(theirs)) => Ok((theirs, stream)),
        Some(Err(e)) => Err(e),
        None => Err(PeerError::HandshakeTimeout),
    }
}

async fn run_link(peers: &Rc<Peers>, theirs: codec::Hello, dialer: u64, stream: TcpStream) -> Result<(), PeerError> {
    let (link, rx) = peers.register(&theirs, dialer)?;
    tracing::info!(peer = %link.name, host = format_args!("{:016x}", link.host), "peer link up");
    let (reader, writer) = stream.split();
    let write_task = glommio::spawn_local(write_loop(peers.clone(), link.clone(), rx, writer));
    let ended = read_loop(peers, &link, reader).await;
    link.close();
    write_task.await;
    // A silent peer has been gone for a whole timeout already; a closed link gets a short grace
    // to come back before its users go offline here.
    let grace = match &ended {
        Err(PeerError::Silent) => Duration::ZERO,
        _ => peers.cfg.heartbeat() * 2,
    };
    peers.unregister(&link, grace);
    tracing::info!(peer = %link.name, reason = %ended.as_ref().err().map(ToString::to_string).unwrap_or_default(), "peer link down");
    match ended {
        Err(e) if e.peer_at_fault() => Err(e),
        _ => Ok(()),
    }
}

async fn read_loop(peers: &Peers, link: &LinkHandle, mut reader: ReadHalf<TcpStream>) -> Result<(), PeerError> {
    let mut buf = Vec::new();
    let mut staged: Vec<codec::PeerPresence> = Vec::new();
    let mut burst = 0u32;
    let mut budget = Budget::new(peers.cfg.max_typing_per_sec);
    loop {
        let got = or(
            async {
                Some(
                    or(
                        async { Some(codec::read_frame(&mut reader, peers.cfg.max_frame_bytes, &mut buf).await) },
                        async {
                            glommio::timer::sleep(peers.cfg.peer_timeout()).await;
                            None
                        },
                    )
                    .await,
                )
            },
            async {
                let _ = link.closed.acquire(1).await;
                None
            },
        )
        .await;
        match got {
            None => return Ok(()),
            Some(None) => return Err(PeerError::Silent),
            Some(Some(Err(e))) => return Err(e),
            Some(Some(Ok(()))) => {}
        }
        PeerStats::bump(&peers.stats.frames_received);
        match codec::decode(&buf)? {
            Frame::Ping => {}
            Frame::Typing(a) => {
                if budget.take(Instant::now()) {
                    peers.on_typing(link, a);
                } else {
                    PeerStats::bump(&peers.stats.dropped);
                }
            }
            Frame::Presence(list) => peers.on_presence(link, list),
            Frame::Snapshot { entries, last } => {
                staged.extend(entries);
                if staged.len() > MAX_SNAPSHOT_ENTRIES {
                    return Err(PeerError::Garbage("endless presence snapshot"));
                }
                if last {
                    peers.on_snapshot(link, std::mem::take(&mut staged));
                }
            }
        }
        burst += 1;
        if burst >= READ_BURST {
            burst = 0;
            futures_lite::future::yield_now().await;
        }
    }
}

/// A token bucket: `rate` per second, bursts up to one second's worth.
struct Budget {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn write_loop(peers: Rc<Peers>, link: Rc<LinkHandle>, rx: super::SendQueue, mut writer: WriteHalf<TcpStream>) {
    let heartbeat = peers.cfg.heartbeat();
    let ping = codec::encode(&Frame::Ping).unwrap_or_default();
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        if link.resync.replace(false) {
            for frame in peers.snapshot_frames() {
                if !write(&link, &mut writer, &frame).await {
                    return;
                }
            }
        }
        enum Next {
            Frame(Rc<Vec<u8>>),
            Idle,
            Closed,
        }
        let next = or(
            async { rx.recv().await.map_or(Next::Closed, Next::Frame) },
            or(
                async {
                    glommio::timer::sleep(heartbeat).await;
                    Next::Idle
                },
                async {
                    let _ = link.closed.acquire(1).await;
                    Next::Closed
                },
            ),
        )
        .await;
        batch.clear();
        match next {
            Next::Closed => break,
            Next::Idle => batch.extend_from_slice(&ping),
            Next::Frame(frame) => {
                batch.extend_from_slice(&frame);
                PeerStats::bump(&peers.stats.frames_sent);
                while batch.len() < WRITE_BATCH_BYTES {
                    let Some(Some(more)) = futures::FutureExt::now_or_never(rx.recv()) else {
                        break;
                    };
                    batch.extend_from_slice(&more);
                    PeerStats::bump(&peers.stats.frames_sent);
                }
            }
        }
        if !write(&link, &mut writer, &batch).await {
            return;
        }
    }
    let _ = writer.close().await;
}

/// Writes `bytes`; on failure closes the link (its reader ends too) and returns `false`.
async fn write(link: &LinkHandle, writer: &mut WriteHalf<TcpStream>, bytes: &[u8]) -> bool {
    let done = or(async { Some(writer.write_all(bytes).await) }, async {
        let _ = link.closed.acquire(1).await;
        None
    })
    .await;
    match done {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::debug!(peer = %link.name, error = %e, "peer write failed");
            link.close();
            false
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typing_budget_refills_at_its_rate_and_caps_bursts() {
        let t0 = Instant::now();
        let mut b = Budget::new(10);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 10);
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // A long pause refills one second's worth, not more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(later)).count(), 10);
    }

    #[test]
    fn registry_lists_start_and_stop_dialling_but_never_self_or_static_peers() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let me = "10.0.0.1:3010";
        let (dial, drop) = registry_changes(
            &v(&[me, "10.0.0.2:3010", "10.0.0.3:3010"]),
            &v(&["10.0.0.2:3010", "10.0.0.9:3010", "static:3010"]),
            &v(&["static:3010"]),
            me,
        );
        assert_eq!(dial, v(&["10.0.0.3:3010"]));
        assert_eq!(drop, v(&["10.0.0.9:3010"]));
    }
}
