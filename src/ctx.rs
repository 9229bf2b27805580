//! The per-shard context every connection task and API handler on a shard shares (`Rc`, one
//! per shard; built by the server at start, on the shard's own thread).

use std::rc::Rc;
use std::sync::Arc;

use chatd_shards::{ShardStats, ShutdownSignal};

use crate::app::login_guard::LoginGuard;
use crate::app::ops::Ops;
use crate::chat::hub::Hub;
use crate::config::Config;

/// What every connection task on a shard shares (shard-local, `Rc`).
pub struct ShardCtx {
    pub hub: Rc<Hub>,
    pub config: Arc<Config>,
    pub shutdown: ShutdownSignal,
    pub all_stats: Arc<Vec<Arc<ShardStats>>>,
    /// Host peering figures (written by the tailer shard).
    pub peer_stats: Arc<crate::peer::PeerStats>,
    pub started_at: std::time::Instant,
    /// Set when SIGTERM starts a drain (host-wide).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// TLS on the client port, when configured.
    pub tls: Option<Arc<crate::gateway::tls::TlsCerts>>,
    /// This shard's rate-limit counters (users, addresses, REST endpoints).
    pub rate: crate::gateway::ratelimit::ShardCounters,
    /// Failed logins, host-wide.
    pub login_guard: Arc<LoginGuard>,
}

impl ShardCtx {
    /// The shared operations, bound to this shard.
    pub fn ops(&self) -> Ops<'_> {
        Ops::new(&self.hub, &self.config, &self.login_guard)
    }
}
