//! Starting and stopping a whole chatd: the store (and its writer thread), then the shards.
//! `Server::start` and `Server::stop` run on the caller's thread; `shard_main` runs once on each
//! shard. Stop runs in reverse start order: shards drain and end, then the store closes.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatd_shards::{Acceptor, MeshReceiver, ShardContext, ShardSet, ShardSetConfig, ShardStats, ShutdownHandle};

use crate::chat::hub::Hub;
use crate::chat::outbound::CloseReason;
use crate::chat::tailer::Tailer;
use crate::chat::{ShardMsg, TAILER_SHARD};
use crate::config::{Config, ConfigError};
use crate::gateway::{self, ShardCtx};
use crate::store::{EmbeddedStore, FeedReceiver, OpenError, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("cannot start the store: {0}")]
    StoreStart(#[from] StoreError),
    #[error(transparent)]
    Shards(#[from] chatd_shards::StartError),
}

/// A running chatd.
pub struct Server {
    shards: Option<ShardSet>,
    store: Store,
}

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
        let backend = EmbeddedStore::open(&config.data_dir)?;
        let store = match Store::new(backend.clone(), config.store_readers) {
            Ok(s) => s,
            Err(e) => {
                crate::store::Backend::close(&*backend);
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
        let config = Arc::new(config);
        let feed = Arc::new(Mutex::new(Some(feed)));
        let shard_store = store.clone();
        let started = ShardSet::start(&shard_cfg, ShutdownHandle::new(), move |ctx: ShardContext<ShardMsg>| {
            let store = shard_store.clone();
            let config = config.clone();
            let feed = if ctx.id == TAILER_SHARD {
                feed.lock().ok().and_then(|mut f| f.take())
            } else {
                None
            };
            async move { shard_main(ctx, store, config, feed, start_head).await }
        });
        match started {
            Ok(shards) => {
                tracing::info!(addr = %shards.local_addr(), shards = shard_cfg.shards, "chatd listening");
                Ok(Self {
                    shards: Some(shards),
                    store,
                })
            }
            Err(e) => {
                store.close();
                Err(e.into())
            }
        }
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
        self.store.close();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

async fn dispatch(rx: MeshReceiver<ShardMsg>, hub: Rc<Hub>, tailer: Option<Rc<Tailer>>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            ShardMsg::Changes { records, head } => hub.apply_changes(records, head),
            ShardMsg::Ack { token } => hub.ack(token),
            ShardMsg::UserShard {
                uid,
                shard,
                online,
                ack,
            } => match &tailer {
                Some(t) => t.on_user_shard(uid, shard, online, ack).await,
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
            ShardMsg::Activity(activity) => hub.apply_activity(&activity),
        }
    }
}

async fn shard_main(
    ctx: ShardContext<ShardMsg>,
    store: Store,
    config: Arc<Config>,
    feed: Option<FeedReceiver>,
    start_head: u64,
) {
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
    let hub = Rc::new(Hub::new(
        id,
        store.clone(),
        stats.clone(),
        mesh.clone(),
        Rc::new(ephemeral),
        start_head,
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
    for rx in receivers.into_iter().chain(ephemeral_receivers) {
        glommio::spawn_local(dispatch(rx, hub.clone(), tailer_ref.clone())).detach();
    }
    let tailer_task = tailer.map(|(t, feed)| {
        let shutdown = shutdown.clone();
        glommio::spawn_local(async move { t.run(feed, shutdown).await })
    });
    let gctx = Rc::new(ShardCtx {
        hub: hub.clone(),
        config: config.clone(),
        shutdown: shutdown.clone(),
        all_stats,
        started_at: Instant::now(),
    });
    gateway::serve(Acceptor::new(listener, stats.clone(), shutdown.clone()), gctx).await;

    // Draining: ask every client to reconnect (to another host or after restart), then wait.
    for s in hub.all_sessions() {
        s.out.close(CloseReason::new(1012, "server restarting; reconnect"));
    }
    let deadline = Instant::now() + Duration::from_secs(config.limits.drain_timeout_secs);
    while stats.open_connections.load(std::sync::atomic::Ordering::Relaxed) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if let Some(t) = tailer_task {
        t.await;
    }
    tracing::debug!(shard = id, "shard stopped");
}
