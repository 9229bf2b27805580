//! Per-shard counters. Each shard writes only its own `ShardStats` (relaxed atomics, no lock);
//! any thread may read them, e.g. for `/metrics` or for tests proving which shard served whom.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default, Debug)]
pub struct ShardStats {
    /// Connections accepted by this shard's listener.
    pub accepted: AtomicU64,
    /// Connections currently open on this shard, counted from `accept` to close (HTTP,
    /// handshakes in progress and WebSocket sessions alike).
    pub open_connections: AtomicU64,
    /// Application-defined gauges: WebSocket sessions open on this shard (logged in or not).
    pub websockets: AtomicU64,
    /// Accept errors caused by running out of file descriptors (EMFILE/ENFILE); accept backs off.
    pub accept_fd_exhausted: AtomicU64,
    /// Other accept errors.
    pub accept_errors: AtomicU64,
    /// Application-defined counters: connections closed at accept because the shard was full.
    pub refused_connections: AtomicU64,
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
    /// How late each probe timer fired, in seconds: the distribution of event-loop polls.
    pub loop_lateness: Histogram,
    /// Application-defined gauges: stream subscriptions open on this shard.
    pub subscriptions: AtomicU64,
    /// Application-defined gauges: the change-log position this shard has applied.
    pub applied: AtomicU64,
    /// Application-defined (tailer shard only): the change-log position handed to the shards.
    pub feed_delivered: AtomicU64,
    /// Application-defined (tailer shard only): how long changes have been pending without the
    /// tailer moving, in ms (0 when it moves or has nothing pending).
    pub feed_stalled_ms: AtomicU64,
    /// Application-defined: DDP method latency, seconds.
    pub method_seconds: Histogram,
    /// Application-defined: REST request latency, seconds.
    pub rest_seconds: Histogram,
    /// Application-defined: from a change's commit to its frames queued on this shard's
    /// sessions, seconds.
    pub delivery_seconds: Histogram,
}

/// Upper bounds (seconds) for latency histograms: 50 µs to 10 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Most buckets a [`Histogram`] holds (bounds beyond this are ignored).
const MAX_BUCKETS: usize = 24;

/// A fixed-bucket histogram of relaxed atomics: one writer (its shard or thread) records without
/// a lock; any thread reads it for exposition. Counts are per bucket (not cumulative); the sum is
/// kept in millionths of the unit.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `buckets[i]` counts values ≤ `bounds[i]` and above the previous bound; the slot after
    /// the last bound counts the rest (+Inf).
    buckets: [AtomicU64; MAX_BUCKETS + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(LATENCY_BOUNDS)
    }
}

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    fn bounds(&self) -> &[f64] {
        self.bounds.get(..MAX_BUCKETS).unwrap_or(self.bounds)
    }

    pub fn observe(&self, value: f64) {
        let bounds = self.bounds();
        let slot = bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        // Saturating float-to-int conversion; negative values count as 0.
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// (sum, count, buckets as (upper bound, count in this bucket alone)), +Inf last; the
    /// count is the buckets' total, so a reading is consistent even while values arrive.
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut out = Vec::with_capacity(self.bounds().len() + 1);
        let mut total = 0u64;
        for (i, b) in self.buckets.iter().enumerate().take(self.bounds().len() + 1) {
            let n = b.load(Ordering::Relaxed);
            total += n;
            out.push((self.bounds().get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        (self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, total, out)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_bucket_and_ends_with_inf() {
        static BOUNDS: &[f64] = &[1.0, 2.0, 4.0];
        let h = Histogram::new(BOUNDS);
        for v in [0.5, 1.0, 1.5, 3.0, 9.0, 9.0] {
            h.observe(v);
        }
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 6);
        assert!((sum - 24.0).abs() < 1e-6, "{sum}");
        assert_eq!(buckets, vec![(1.0, 2), (2.0, 1), (4.0, 1), (f64::INFINITY, 2)]);
    }
}
