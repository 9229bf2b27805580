//! Per-shard counters. Each shard writes only its own `ShardStats` (relaxed atomics, no lock);
//! any thread may read them, e.g. for `/metrics` or for tests proving which shard served whom.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default, Debug)]
pub struct ShardStats {
    /// Connections accepted by this shard's listener.
    pub accepted: AtomicU64,
    /// Connections currently open on this shard.
    pub open_connections: AtomicU64,
    /// Accept errors caused by running out of file descriptors (EMFILE/ENFILE); accept backs off.
    pub accept_fd_exhausted: AtomicU64,
    /// Other accept errors.
    pub accept_errors: AtomicU64,
    /// Mesh messages sent by this shard to other shards (and to itself).
    pub mesh_sent: AtomicU64,
    /// `try_send` attempts that found the destination queue full and handed the message back.
    pub mesh_full: AtomicU64,
    /// Application-defined counters: authenticated sessions on this shard.
    pub sessions: AtomicU64,
    /// Application-defined counters: frames delivered to sessions by this shard.
    pub deliveries: AtomicU64,
    /// Application-defined counters: events dropped (e.g. ephemeral events under overload).
    pub dropped: AtomicU64,
    /// Application-defined counters: sessions closed because they were too slow to read.
    pub slow_closed: AtomicU64,
    /// Longest time this shard's event loop was busy without returning to its timers, in µs,
    /// since start (measured by a probe timer: how late it fired).
    pub loop_stall_max_us: AtomicU64,
    /// The same over a recent window only (the last 10 to 20 seconds), in µs.
    pub loop_stall_recent_us: AtomicU64,
}

/// A plain copy of [`ShardStats`] at one instant.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub open_connections: u64,
    pub accept_fd_exhausted: u64,
    pub accept_errors: u64,
    pub mesh_sent: u64,
    pub mesh_full: u64,
    pub sessions: u64,
    pub deliveries: u64,
    pub dropped: u64,
    pub slow_closed: u64,
    pub loop_stall_max_us: u64,
    pub loop_stall_recent_us: u64,
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: r(&self.accepted),
            open_connections: r(&self.open_connections),
            accept_fd_exhausted: r(&self.accept_fd_exhausted),
            accept_errors: r(&self.accept_errors),
            mesh_sent: r(&self.mesh_sent),
            mesh_full: r(&self.mesh_full),
            sessions: r(&self.sessions),
            deliveries: r(&self.deliveries),
            dropped: r(&self.dropped),
            slow_closed: r(&self.slow_closed),
            loop_stall_max_us: r(&self.loop_stall_max_us),
            loop_stall_recent_us: r(&self.loop_stall_recent_us),
        }
    }
}
