//! Starting and stopping a whole chatd: the store (and its writer thread), then the shards.
//! `Server::start` and `Server::stop` run on the caller's thread; `shard_main` runs once on each
//! shard. Stop runs in reverse start order: shards drain and end, then the store closes.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatd_shards::{Acceptor, MeshReceiver, ShardContext, ShardSet, ShardSetConfig, ShardStats, ShutdownHandle};

use crate::chat::hub::Hub;
use crate::chat::outbound::CloseReason;
use crate::chat::tailer::Tailer;
use crate::chat::{ShardMsg, TAILER_SHARD};
use crate::config::{Config, ConfigError};
use crate::ctx::ShardCtx;
use crate::gateway;
use crate::gateway::tls::TlsCerts;
use crate::peer::{PeerStats, Peers};
use crate::store::embedded::backup::ControlSocket;
use crate::store::mongo::{MongoOpenError, MongoStore};
use crate::store::{Backend, EmbeddedStore, FeedReceiver, OpenError, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(transparent)]
    Mongo(#[from] MongoOpenError),
    #[error(transparent)]
    Tls(#[from] crate::gateway::tls::TlsError),
    #[error("the web client's files are inconsistent (a build problem): {0}")]
    Web(String),
    #[error(
        "the locked-memory limit is {limit} bytes; each shard locks io_memory_bytes = {needed} for io_uring. \
         Raise it: `ulimit -l unlimited` in the shell, LimitMEMLOCK=infinity in the systemd unit, \
         --ulimit memlock=-1 for docker"
    )]
    MemLock { limit: u64, needed: u64 },
    #[error("cannot start the store: {0}")]
    StoreStart(#[from] StoreError),
    #[error(transparent)]
    Shards(#[from] chatd_shards::StartError),
    #[error("cannot listen on the cluster port {addr}: {source}")]
    ClusterListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A running chatd.
pub struct Server {
    shards: Option<ShardSet>,
    store: Store,
    cluster_addr: Option<std::net::SocketAddr>,
    peer_stats: Arc<PeerStats>,
    /// Set at the start of a drain: `/health/ready` answers 503 from then on.
    draining: Arc<AtomicBool>,
    tls: Option<Arc<TlsCerts>>,
    /// The embedded store's `chatd backup` socket.
    control: Option<ControlSocket>,
}

/// What the tailer shard needs to start host peering.
struct ClusterStart {
    host: u64,
    name: String,
    /// The address other hosts can dial, when known (`INSTANCE_IP`, or a specific listen IP).
    advertised: Option<String>,
    listener: Option<std::net::TcpListener>,
}

/// Host-wide handles every shard gets.
struct HostShared {
    peer_stats: Arc<PeerStats>,
    draining: Arc<AtomicBool>,
    tls: Option<Arc<TlsCerts>>,
    /// Failed logins, counted for the whole host.
    login_guard: Arc<crate::app::login_guard::LoginGuard>,
}

/// Reader threads at least, with MongoDB (each read waits on a network round trip).
pub(crate) const MONGO_MIN_READERS: usize = 8;

/// Raises the open-file limit to the hard limit (each connection is a file descriptor).
pub fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

impl Server {
    pub fn start(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        // glommio refuses to start an executor below this; say so before anything is opened.
        if let Ok((limit, _)) = rlimit::getrlimit(rlimit::Resource::MEMLOCK) {
            let needed = config.io_memory_bytes as u64;
            if limit < needed {
                return Err(ServerError::MemLock { limit, needed });
            }
        }
        // Certificates before anything is opened: a bad file fails the start with nothing to undo.
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(TlsCerts::load(cert, key)?),
            _ => None,
        };
        // The web client's asset table, built once here so no shard pays for it on a request.
        if config.web.enabled {
            if let Err(problem) = crate::gateway::web::prepare() {
                return Err(ServerError::Web(problem.to_owned()));
            }
        }
        let mut control = None;
        let (backend, readers): (Arc<dyn Backend>, usize) = match config.mongo_options() {
            // Reads wait on the network: more of them in flight.
            Some(opts) => (MongoStore::open(&opts)?, config.store_readers.max(MONGO_MIN_READERS)),
            None => {
                let store = EmbeddedStore::open(&config.data_dir)?;
                match store.control_socket(&config.data_dir) {
                    Ok(c) => control = Some(c),
                    Err(e) => tracing::warn!(error = %e, "no control socket: `chatd backup` cannot reach this server"),
                }
                (store, config.store_readers)
            }
        };
        let store = match Store::with_priority(backend.clone(), readers, config.store_reader_priority)
            .map(|s| s.with_timeout(Duration::from_secs(config.limits.store_timeout_secs)))
        {
            Ok(s) => s,
            Err(e) => {
                backend.close();
                return Err(e.into());
            }
        };
        let feed = match store.start_feed() {
            Ok(f) => f,
            Err(e) => {
                store.close();
                return Err(e.into());
            }
        };
        let shard_cfg = ShardSetConfig {
            shards: config.shard_count(),
            listen: config.listen,
            mesh_capacity: config.mesh_capacity,
            ephemeral_capacity: config.ephemeral_capacity,
            pin_cores: config.pin_cores,
            io_memory: config.io_memory_bytes,
            name: "chatd-shard".into(),
        };
        let start_head = store.head();
        let cluster = match Self::cluster_start(&config) {
            Ok(c) => c,
            Err(e) => {
                store.close();
                return Err(e);
            }
        };
        let cluster_addr = cluster
            .as_ref()
            .and_then(|c| c.listener.as_ref())
            .and_then(|l| l.local_addr().ok());
        let peer_stats = Arc::new(PeerStats::default());
        let shard_peer_stats = peer_stats.clone();
        let draining = Arc::new(AtomicBool::new(false));
        let shard_draining = draining.clone();
        let shard_tls = tls.clone();
        let login_guard = Arc::new(crate::app::login_guard::LoginGuard::new(&config.rate_limits));
        let cluster = Arc::new(Mutex::new(cluster));
        let config = Arc::new(config);
        let feed = Arc::new(Mutex::new(Some(feed)));
        let shard_store = store.clone();
        let started = ShardSet::start(&shard_cfg, ShutdownHandle::new(), move |ctx: ShardContext<ShardMsg>| {
            let store = shard_store.clone();
            let config = config.clone();
            let peer_stats = shard_peer_stats.clone();
            let draining = shard_draining.clone();
            let tls = shard_tls.clone();
            let login_guard = login_guard.clone();
            let (feed, cluster) = if ctx.id == TAILER_SHARD {
                (
                    feed.lock().ok().and_then(|mut f| f.take()),
                    cluster.lock().ok().and_then(|mut c| c.take()),
                )
            } else {
                (None, None)
            };
            let host = HostShared {
                peer_stats,
                draining,
                tls,
                login_guard,
            };
            async move { shard_main(ctx, store, config, feed, start_head, cluster, host).await }
        });
        match started {
            Ok(shards) => {
                if let Some(addr) = cluster_addr {
                    tracing::info!(addr = %addr, "cluster port listening");
                }
                tracing::info!(addr = %shards.local_addr(), shards = shard_cfg.shards, "chatd listening");
                Ok(Self {
                    shards: Some(shards),
                    store,
                    cluster_addr,
                    peer_stats,
                    draining,
                    tls,
                    control,
                })
            }
            Err(e) => {
                store.close();
                Err(e.into())
            }
        }
    }

    /// Binds the cluster port (so a taken port fails the start, not a shard later) and picks
    /// this run's host id.
    fn cluster_start(config: &Config) -> Result<Option<ClusterStart>, ServerError> {
        let c = &config.cluster;
        if !c.enabled() {
            return Ok(None);
        }
        let listener = match c.listen {
            Some(addr) => {
                Some(std::net::TcpListener::bind(addr).map_err(|source| ServerError::ClusterListen { addr, source })?)
            }
            None => None,
        };
        let port = listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port());
        let name = match (&c.instance_ip, port) {
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            (Some(ip), None) => ip.clone(),
            (None, _) => listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or_else(|| "(dial-only)".to_owned(), |a| a.to_string()),
        };
        let advertised = match (&c.instance_ip, listener.as_ref().and_then(|l| l.local_addr().ok())) {
            (Some(ip), Some(a)) => Some(format!("{ip}:{}", a.port())),
            (None, Some(a)) if !a.ip().is_unspecified() => Some(a.to_string()),
            _ => None,
        };
        let host = rand::random::<u64>().max(1);
        tracing::info!(
            host = format_args!("{host:016x}"),
            name = %name,
            peers = c.peers.len(),
            "host peering on"
        );
        if config.mongo_options().is_none() {
            tracing::warn!(
                "host peering with the embedded store shares typing and presence only: messages are not shared between hosts without MongoDB"
            );
        }
        Ok(Some(ClusterStart {
            host,
            name,
            advertised,
            listener,
        }))
    }

    /// The cluster port's address, when host peering listens.
    pub fn cluster_addr(&self) -> Option<std::net::SocketAddr> {
        self.cluster_addr
    }

    /// Host peering figures.
    pub fn peer_stats(&self) -> Arc<PeerStats> {
        self.peer_stats.clone()
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.shards
            .as_ref()
            .map_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)), |s| s.local_addr())
    }

    /// Per-shard stats (index = shard id).
    pub fn stats(&self) -> Arc<Vec<Arc<ShardStats>>> {
        self.shards.as_ref().map(|s| s.stats()).unwrap_or_default()
    }

    pub fn shutdown_handle(&self) -> Option<ShutdownHandle> {
        self.shards.as_ref().map(|s| s.shutdown_handle())
    }

    /// Starts a drain: `/health/ready` answers 503 from now on while everything else is served
    /// as usual, so load balancers stop sending new clients before [`Server::stop`].
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Reads the TLS certificate and key again (SIGHUP); `None` without TLS. On failure the
    /// previous certificate stays in use.
    pub fn reload_tls(&self) -> Option<Result<(), crate::gateway::tls::TlsError>> {
        self.tls.as_ref().map(|t| t.reload())
    }

    /// Drains and stops the shards, then closes the store.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(shards) = self.shards.take() {
            if let Err(e) = shards.stop() {
                tracing::error!(error = %e, "a shard ended with an error");
            }
        }
        if let Some(mut c) = self.control.take() {
            c.stop();
        }
        self.store.close();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Close code when the change feed lost history: 1012 "service restart" (clients reconnect,
/// log in again with their resume token and re-subscribe, then catch up with
/// `loadMissedMessages` / history, as after any reconnect).
/// The close reason of a drain: `server restarting; reconnect in N ms`, N random below `spread`
/// (clients that read it wait N ms; others use their own back-off).
pub fn restart_close_reason(spread_ms: u64) -> String {
    use rand::Rng;
    let wait = if spread_ms == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..spread_ms)
    };
    format!("{RESTART_CLOSE_PREFIX}{wait} ms")
}

/// What a drain's close reason starts with, before the delay in milliseconds.
pub const RESTART_CLOSE_PREFIX: &str = "server restarting; reconnect in ";

pub const RELOAD_CLOSE_CODE: u16 = 1012;
pub const RELOAD_CLOSE_REASON: &str = "change feed restarted: reconnect and reload";

/// CPU shares of the ephemeral task queue (typing, peer links) against the default queue's 1000.
const EPHEMERAL_SHARES: usize = 100;

/// Spawns `fut` into task queue `queue`.
fn spawn_in(queue: glommio::TaskQueueHandle, fut: impl std::future::Future<Output = ()> + 'static) {
    match glommio::spawn_local_into(fut, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::error!(error = %e, "cannot spawn into the ephemeral task queue"),
    }
}

/// Messages one dispatch task handles before it lets the shard's other tasks run: a lane that is
/// never empty (a typing flood) must not starve the others.
const DISPATCH_BURST: u32 = 64;

/// Test hook: while the file this environment variable names exists, the tailer shard holds
/// routing notices and presence queries (a shard that does not answer, for timeout tests).
pub const STALL_ROUTING_HOOK_ENV: &str = "CHATD_TEST_STALL_ROUTING_FILE";

async fn dispatch(rx: MeshReceiver<ShardMsg>, hub: Rc<Hub>, tailer: Option<Rc<Tailer>>, peers: Option<Rc<Peers>>) {
    let mut burst = 0u32;
    let stall_file = tailer
        .as_ref()
        .and_then(|_| std::env::var_os(STALL_ROUTING_HOOK_ENV))
        .map(std::path::PathBuf::from);
    while let Some(msg) = rx.recv().await {
        burst += 1;
        if burst >= DISPATCH_BURST {
            burst = 0;
            futures_lite::future::yield_now().await;
        }
        if let Some(file) = &stall_file {
            if matches!(msg, ShardMsg::UserShard { .. } | ShardMsg::PresenceQuery { .. }) {
                while file.exists() {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        match msg {
            ShardMsg::Changes { records, head } => hub.apply_changes(records, head),
            ShardMsg::Reload => {
                let sessions = hub.all_sessions();
                tracing::warn!(
                    sessions = sessions.len(),
                    "change feed lost history: asking clients to reconnect and reload"
                );
                for s in sessions {
                    s.out.close(CloseReason::new(RELOAD_CLOSE_CODE, RELOAD_CLOSE_REASON));
                }
            }
            ShardMsg::Ack { token } => hub.ack(token),
            ShardMsg::Ping { shard, token } => {
                if hub.mesh().try_send_to(shard, ShardMsg::Ack { token }).is_err() {
                    tracing::debug!(
                        shard,
                        "health round trip not answered: the asking shard's queue is full"
                    );
                }
            }
            ShardMsg::UserShard {
                uid,
                shard,
                online,
                ack,
                seed,
            } => match &tailer {
                Some(t) => t.on_user_shard(uid, shard, online, ack, seed).await,
                None => tracing::error!(
                    source = rx.source(),
                    "routing notice sent to a shard without the tailer"
                ),
            },
            ShardMsg::UserIdle { uid, shard, idle } => match &tailer {
                Some(t) => t.presence().on_shard_idle(&uid, shard, idle),
                None => tracing::error!(source = rx.source(), "idle notice sent to a shard without the owner"),
            },
            ShardMsg::PresenceQuery { uids, shard, token } => match &tailer {
                Some(t) => {
                    let answers = t.presence().query(&uids);
                    if hub
                        .mesh()
                        .send_to(shard, ShardMsg::PresenceAnswer { token, answers })
                        .await
                        .is_err()
                    {
                        tracing::debug!(shard, "shard gone before its presence answer");
                    }
                }
                None => tracing::error!(source = rx.source(), "presence query sent to a shard without the owner"),
            },
            ShardMsg::PresenceAnswer { token, answers } => hub.presence_answer(token, answers),
            ShardMsg::Presence(updates) => hub.apply_presence(&updates),
            ShardMsg::Activity(activity) => {
                hub.apply_activity(&activity);
                if let Some(peers) = &peers {
                    peers.send_activity(&activity);
                }
            }
        }
    }
}

async fn shard_main(
    ctx: ShardContext<ShardMsg>,
    store: Store,
    config: Arc<Config>,
    feed: Option<FeedReceiver>,
    start_head: u64,
    cluster: Option<ClusterStart>,
    host: HostShared,
) {
    let HostShared {
        peer_stats,
        draining,
        tls,
        login_guard,
    } = host;
    let ShardContext {
        id,
        listener,
        mesh,
        receivers,
        ephemeral,
        ephemeral_receivers,
        stats,
        all_stats,
        shutdown,
        ..
    } = ctx;
    let mesh = Rc::new(mesh);
    let ephemeral = Rc::new(ephemeral);
    let hub = Rc::new(Hub::new(
        id,
        store.clone(),
        stats.clone(),
        mesh.clone(),
        ephemeral.clone(),
        start_head,
        config.round_trip_timeout(),
    ));
    let tailer = match (id == TAILER_SHARD, feed) {
        (true, Some(feed)) => match Tailer::new(store.clone(), mesh.clone(), stats.clone(), start_head).await {
            Ok(t) => Some((Rc::new(t), feed)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the change-feed tailer; nothing will be delivered");
                None
            }
        },
        _ => None,
    };
    let tailer_ref = tailer.as_ref().map(|(t, _)| t.clone());
    // Typing and peer links get their own task queue with a small share of the shard: a flood
    // of them can take at most that share from sessions, the tailer and message fan-out.
    let lane_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(EPHEMERAL_SHARES),
        glommio::Latency::NotImportant,
        "ephemeral",
    );
    let peers = match (cluster, &config.cluster.secret, &tailer_ref) {
        (Some(c), Some(secret), Some(t)) => {
            let peers = Peers::new(
                c.host,
                c.name,
                secret.0.clone(),
                config.cluster.clone(),
                t.presence().clone(),
                ephemeral.clone(),
                stats.clone(),
                peer_stats.clone(),
                shutdown.clone(),
            );
            // Link tasks run in the ephemeral task queue (and so does what they spawn).
            let starting = peers.clone();
            let listener = c.listener;
            spawn_in(lane_queue, async move { crate::peer::link::start(&starting, listener) });
            let me = c.advertised.map(|addr| crate::store::Instance { addr, host: c.host });
            if me.is_none() && config.mongo_options().is_some() {
                tracing::warn!("no address to advertise in the instances registry (set --instance-ip / INSTANCE_IP): other hosts will not find this one there");
            }
            let every = Duration::from_millis(config.cluster.registry_heartbeat_ms);
            if let Some(lists) = store.backend().register_instance(me, every) {
                spawn_in(lane_queue, crate::peer::link::follow_registry(peers.clone(), lists));
            }
            Some(peers)
        }
        _ => None,
    };
    for rx in receivers {
        glommio::spawn_local(dispatch(rx, hub.clone(), tailer_ref.clone(), peers.clone())).detach();
    }
    for rx in ephemeral_receivers {
        spawn_in(lane_queue, dispatch(rx, hub.clone(), tailer_ref.clone(), peers.clone()));
    }
    let tailer_task = tailer.map(|(t, feed)| {
        let shutdown = shutdown.clone();
        let watched = t.clone();
        let watch_shutdown = shutdown.clone();
        glommio::spawn_local(async move { watched.watch_progress(watch_shutdown).await }).detach();
        glommio::spawn_local(async move { t.run(feed, shutdown).await })
    });
    let gctx = Rc::new(ShardCtx {
        rate: Default::default(),
        login_guard,
        hub: hub.clone(),
        config: config.clone(),
        shutdown: shutdown.clone(),
        all_stats,
        peer_stats,
        started_at: Instant::now(),
        draining,
        tls,
    });
    gateway::serve(Acceptor::new(listener, stats.clone(), shutdown.clone()), gctx).await;

    if let Some(peers) = &peers {
        peers.close_all();
    }
    // Draining: ask every client to reconnect (to another host or after restart), each after its
    // own random delay so that they do not all come back in the same instant, then wait.
    // A session whose handshake was under way when accepting stopped starts after this loop:
    // the wait below closes such late ones too.
    let spread = config.limits.reconnect_spread_ms;
    let close_all = || {
        for s in hub.all_sessions() {
            if !s.out.is_closing() {
                s.out.close(CloseReason::new(1012, restart_close_reason(spread)));
            }
        }
    };
    close_all();
    let deadline = Instant::now() + Duration::from_secs(config.limits.drain_timeout_secs);
    while stats.websockets.load(std::sync::atomic::Ordering::Relaxed) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        close_all();
    }
    if let Some(t) = tailer_task {
        t.await;
    }
    tracing::debug!(shard = id, "shard stopped");
}
