//! Per-shard listeners. [`bind_reuseport_group`] runs on the starting thread and creates one
//! `SO_REUSEPORT` socket per shard, all on one address; [`Acceptor`] runs on each shard and turns
//! accept failures into back-off instead of crashes.

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{ShardStats, ShutdownSignal};

/// Backlog for each shard's listener.
const LISTEN_BACKLOG: i32 = 4096;
/// First and longest pause after the process ran out of file descriptors on accept.
const FD_BACKOFF_MIN: Duration = Duration::from_millis(10);
const FD_BACKOFF_MAX: Duration = Duration::from_millis(1000);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{addr} is already in use (is another chatd or another server running on this port?)")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Refuses an address that someone already listens on. `SO_REUSEPORT` would otherwise let a second
/// process silently share the port with the first: a probe bound *without* it fails instead.
fn probe_exclusive(addr: SocketAddr) -> Result<(), ListenError> {
    let io_err = |source| ListenError::Io { addr, source };
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(io_err)?;
    probe.set_reuse_address(true).map_err(io_err)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ListenError::InUse { addr }),
        Err(e) => Err(io_err(e)),
    }
}

/// Binds `count` listening sockets with `SO_REUSEPORT` on `addr`. Port 0 picks a free port once
/// and binds the rest to it. Returns the sockets (one per shard) and the bound address.
pub fn bind_reuseport_group(addr: SocketAddr, count: usize) -> Result<(Vec<StdTcpListener>, SocketAddr), ListenError> {
    if addr.port() != 0 {
        probe_exclusive(addr)?;
    }
    let mut out = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = reuseport_socket(bound).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => ListenError::InUse { addr: bound },
            _ => ListenError::Io { addr: bound, source: e },
        })?;
        if bound.port() == 0 {
            let local = socket.local_addr().map_err(|e| ListenError::Io { addr, source: e })?;
            if let Some(a) = local.as_socket() {
                bound = a;
            }
        }
        out.push(StdTcpListener::from(socket));
    }
    Ok((out, bound))
}

/// Accepts connections on one shard until shutdown. Running out of file descriptors pauses
/// accepting with exponential back-off (counted in the shard's stats) instead of failing.
pub struct Acceptor {
    listener: TcpListener,
    stats: Arc<ShardStats>,
    shutdown: ShutdownSignal,
}

impl Acceptor {
    pub fn new(listener: TcpListener, stats: Arc<ShardStats>, shutdown: ShutdownSignal) -> Self {
        Self {
            listener,
            stats,
            shutdown,
        }
    }

    /// Returns the next connection, or `None` once shutdown has been triggered.
    pub async fn next(&self) -> Option<TcpStream> {
        let mut backoff = FD_BACKOFF_MIN;
        loop {
            let accepted = future::or(async { Some(self.listener.accept().await) }, async {
                self.shutdown.wait().await;
                None
            })
            .await?;
            match accepted {
                Ok(stream) => {
                    ShardStats::add(&self.stats.accepted, 1);
                    return Some(stream);
                }
                Err(e) => {
                    let e: io::Error = e.into();
                    match e.raw_os_error() {
                        Some(libc::EMFILE) | Some(libc::ENFILE) => {
                            ShardStats::add(&self.stats.accept_fd_exhausted, 1);
                            tracing::warn!(
                                backoff_ms = backoff.as_millis() as u64,
                                "out of file descriptors on accept; backing off"
                            );
                            glommio::timer::sleep(backoff).await;
                            backoff = (backoff * 2).min(FD_BACKOFF_MAX);
                        }
                        _ => {
                            ShardStats::add(&self.stats.accept_errors, 1);
                            tracing::debug!(error = %e, "accept failed");
                            future::yield_now().await;
                        }
                    }
                }
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr().map_err(Into::into)
    }
}
