//! [`ShardSet`]: starts the shards, hands each its [`ShardContext`], and stops them. `start`,
//! `join` and `stop` run on the calling thread; the shard futures run on their own pinned
//! executor threads.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::os::unix::io::FromRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::listener::{bind_reuseport_group, ListenError};
use crate::mesh::{assemble, Mesh, MeshReceiver};
use crate::{ShardStats, ShutdownHandle, ShutdownSignal};

/// Longest a shard runs ready tasks before it polls for I/O and cross-thread wake-ups again
/// (glommio's default is 100 ms: under a flood that never lets the run queue empty, a wake-up
/// from the store's threads would wait that long).
const PREEMPT_TIMER: Duration = Duration::from_millis(5);

/// Period of the timer that wakes every executor for as long as it runs. glommio can lose a
/// cross-thread wake-up of an executor that sleeps (DataDog/glommio#261): the waker stays queued
/// until the executor wakes for another reason. The tick bounds that delay; without it a shard
/// whose only remaining work was such a wake-up (the mesh forming at start, the shutdown signal
/// at stop) slept forever.
const WAKE_TICK: Duration = Duration::from_millis(10);

/// How long `start` waits for every shard to come up before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ShardSetConfig {
    /// Number of shards (executor threads). At least 1.
    pub shards: usize,
    /// Address every shard listens on (port 0 picks one port for all).
    pub listen: SocketAddr,
    /// Capacity of each directed mesh channel (messages).
    pub mesh_capacity: usize,
    /// Capacity of each directed channel of the ephemeral lane: a second, independent mesh for
    /// fire-and-forget traffic (typing), so that filling it can never hold up the main mesh.
    pub ephemeral_capacity: usize,
    /// Pin shard `i` to CPU `i mod online CPUs`.
    pub pin_cores: bool,
    /// glommio I/O buffer memory per executor (locked memory; glommio needs at least 512 KiB).
    pub io_memory: usize,
    /// Thread name prefix.
    pub name: String,
}

impl Default for ShardSetConfig {
    fn default() -> Self {
        Self {
            shards: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mesh_capacity: 1024,
            ephemeral_capacity: 1024,
            pin_cores: true,
            io_memory: 512 * 1024,
            name: "shard".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("shard {shard} failed to start: {reason}")]
    Shard { shard: usize, reason: String },
    #[error("shard {shard} ended with an error: {reason}")]
    Join { shard: usize, reason: String },
}

/// What one shard gets: its identity, its listener, its end of the mesh, its stats and the
/// shutdown signal.
pub struct ShardContext<M: Send + 'static> {
    pub id: usize,
    pub nr_shards: usize,
    pub listener: TcpListener,
    pub mesh: Mesh<M>,
    /// One receiver per source shard (index = source shard id).
    pub receivers: Vec<MeshReceiver<M>>,
    /// The ephemeral lane (see [`ShardSetConfig::ephemeral_capacity`]) and its receivers.
    pub ephemeral: Mesh<M>,
    pub ephemeral_receivers: Vec<MeshReceiver<M>>,
    pub stats: Arc<ShardStats>,
    pub all_stats: Arc<Vec<Arc<ShardStats>>>,
    pub shutdown: ShutdownSignal,
}

/// The running shards. Dropping it without `stop`/`join` detaches the threads.
pub struct ShardSet {
    handles: Vec<ExecutorJoinHandle<()>>,
    local_addr: SocketAddr,
    stats: Arc<Vec<Arc<ShardStats>>>,
    shutdown: ShutdownHandle,
}

/// io_uring submission queue depth per ring. Beyond submission room, the depth sizes the kernel's
/// cancellation hash table (2 × depth completions → up to 256 buckets): glommio cancels and
/// re-arms a timeout on every turn of the event loop, and each cancel walks one bucket of the
/// table that also holds every idle connection's pending poll. At glommio's default of 128 the
/// table has 8 buckets; with 5,000 connections that walk cost 12 % of a shard's CPU.
const RING_DEPTH: usize = 1024;

/// How often the stall probe asks to be woken.
const STALL_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// The recent stall figure covers this window and the one before it.
const STALL_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Records in `loop_stall_max_us` / `loop_stall_recent_us` how late a periodic timer fires on
/// this shard: the longest stretch the event loop spent in one task (or one run of tasks)
/// without coming back.
async fn stall_probe(stats: Arc<ShardStats>, shutdown: crate::ShutdownSignal) {
    let (mut window_start, mut current, mut previous) = (std::time::Instant::now(), 0u64, 0u64);
    loop {
        let started = std::time::Instant::now();
        if !shutdown.sleep(STALL_PROBE_INTERVAL).await {
            return;
        }
        let late = started.elapsed().saturating_sub(STALL_PROBE_INTERVAL);
        let late_us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        stats.loop_lateness.observe_duration(late);
        stats
            .loop_stall_max_us
            .fetch_max(late_us, std::sync::atomic::Ordering::Relaxed);
        current = current.max(late_us);
        if window_start.elapsed() >= STALL_WINDOW {
            previous = current;
            current = 0;
            window_start = std::time::Instant::now();
        }
        stats
            .loop_stall_recent_us
            .store(current.max(previous), std::sync::atomic::Ordering::Relaxed);
    }
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl ShardSet {
    /// Binds the listeners, starts one executor per shard, joins the mesh, then runs `shard_main`
    /// on every shard. Returns once every shard is up.
    pub fn start<M, F, Fut>(
        config: &ShardSetConfig,
        shutdown: ShutdownHandle,
        shard_main: F,
    ) -> Result<Self, StartError>
    where
        M: Send + 'static,
        F: Fn(ShardContext<M>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let nr = config.shards.max(1);
        let (listeners, local_addr) = bind_reuseport_group(config.listen, nr)?;
        let stats: Arc<Vec<Arc<ShardStats>>> = Arc::new((0..nr).map(|_| Arc::new(ShardStats::default())).collect());
        let mesh = MeshBuilder::<M, _>::full(nr, config.mesh_capacity.max(1));
        let lane = MeshBuilder::<M, _>::full(nr, config.ephemeral_capacity.max(1));
        let (ready_tx, ready_rx) = mpsc::channel::<usize>();
        let cpus = online_cpus();
        let mut handles = Vec::with_capacity(nr);
        let mut failure = None;
        for (id, std_listener) in listeners.into_iter().enumerate() {
            let placement = if config.pin_cores {
                Placement::Fixed(id % cpus)
            } else {
                Placement::Unbound
            };
            let mesh = mesh.clone();
            let lane = lane.clone();
            let ready_tx = ready_tx.clone();
            let stats = stats.clone();
            let shutdown = shutdown.signal();
            let shard_main = shard_main.clone();
            let capacity = config.mesh_capacity.max(1);
            let lane_capacity = config.ephemeral_capacity.max(1);
            let fd = std_listener.into_raw_fd();
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("{}{}", config.name, id))
                .io_memory(config.io_memory)
                .ring_depth(RING_DEPTH)
                .preempt_timer(PREEMPT_TIMER)
                .spawn(move || async move {
                    // SAFETY: `fd` is a listening TCP socket whose ownership was released above.
                    let listener = unsafe { TcpListener::from_raw_fd(fd) };
                    // Runs until this future returns (dropping the task cancels it).
                    let _ticker = glommio::spawn_local(async {
                        loop {
                            glommio::timer::sleep(WAKE_TICK).await;
                        }
                    });
                    let joined = future::or(
                        async { Some(futures_lite::future::zip(mesh.join(), lane.join()).await) },
                        async {
                            shutdown.wait().await;
                            None
                        },
                    )
                    .await;
                    let Some((Ok((senders, receivers)), Ok((lane_senders, lane_receivers)))) = joined else {
                        return;
                    };
                    let my_stats = stats.get(id).cloned().unwrap_or_default();
                    let (mesh, receivers) = assemble(senders, receivers, nr, capacity, my_stats.clone());
                    let (ephemeral, ephemeral_receivers) =
                        assemble(lane_senders, lane_receivers, nr, lane_capacity, my_stats.clone());
                    let _ = ready_tx.send(id);
                    glommio::spawn_local(stall_probe(my_stats.clone(), shutdown.clone())).detach();
                    let ctx = ShardContext {
                        id,
                        nr_shards: nr,
                        listener,
                        mesh,
                        receivers,
                        ephemeral,
                        ephemeral_receivers,
                        stats: my_stats,
                        all_stats: stats,
                        shutdown,
                    };
                    shard_main(ctx).await;
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    failure = Some(StartError::Shard {
                        shard: id,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        drop(ready_tx);
        let mut set = ShardSet {
            handles,
            local_addr,
            stats,
            shutdown,
        };
        if failure.is_none() {
            for _ in 0..nr {
                if let Err(e) = ready_rx.recv_timeout(START_TIMEOUT) {
                    failure = Some(StartError::Shard {
                        shard: usize::MAX,
                        reason: format!("not every shard came up: {e}"),
                    });
                    break;
                }
            }
        }
        match failure {
            None => Ok(set),
            Some(err) => {
                set.shutdown.trigger();
                // Prefer the shard's own error over the timeout.
                let joined = set.join_inner();
                Err(joined.err().unwrap_or(err))
            }
        }
    }

    /// The address every shard listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Per-shard stats (index = shard id).
    pub fn stats(&self) -> Arc<Vec<Arc<ShardStats>>> {
        self.stats.clone()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    fn join_inner(&mut self) -> Result<(), StartError> {
        let mut first_err = None;
        // Reverse start order: the first shard (which may host shared services) stops last.
        while let Some(handle) = self.handles.pop() {
            let shard = self.handles.len();
            if let Err(e) = handle.join() {
                first_err.get_or_insert(StartError::Join {
                    shard,
                    reason: e.to_string(),
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Waits until every shard future has returned.
    pub fn join(mut self) -> Result<(), StartError> {
        self.join_inner()
    }

    /// Triggers shutdown and waits for every shard.
    pub fn stop(self) -> Result<(), StartError> {
        self.shutdown.trigger();
        self.join()
    }
}
