//! `chatd-shards`: the generic thread-per-core runtime chatd is built on.
//!
//! It knows nothing about chat. It starts one glommio `LocalExecutor` per shard (pinned to a core
//! when asked), gives every shard its own `SO_REUSEPORT` listener bound to the same address so the
//! kernel spreads connections between cores, joins the shards into a bounded full mesh for
//! cross-shard messages, and stops them all on one shutdown signal, in reverse start order.
//!
//! Threads: [`ShardSet::start`] and [`ShardSet::stop`] run on the caller's thread; everything a
//! shard runs lives on that shard's own executor thread. Only handles ([`ShutdownHandle`],
//! `Arc<ShardStats>`) and mesh messages cross threads.

mod listener;
mod mesh;
mod runtime;
mod shutdown;
mod stats;

pub use listener::{bind_reuseport_group, Acceptor, ListenError};
pub use mesh::{Mesh, MeshFull, MeshReceiver};
pub use runtime::{ShardContext, ShardSet, ShardSetConfig, StartError};
pub use shutdown::{ShutdownHandle, ShutdownSignal};
pub use stats::{Histogram, ShardStats, StatsSnapshot, LATENCY_BOUNDS};
