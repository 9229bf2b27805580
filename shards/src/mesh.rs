//! The bounded cross-shard mesh. Each shard holds one [`Mesh`] (its senders to every shard,
//! itself included) and one [`MeshReceiver`] per source shard. Runs on every shard; only the
//! messages themselves cross threads.
//!
//! Every channel is bounded by the capacity given at start. `send_to` waits for room
//! (back-pressure); `try_send_to` never waits and hands the message back in [`MeshFull`] when the
//! destination queue is full, so the caller decides whether to drop, count or retry.

use std::sync::Arc;

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::{GlommioError, ResourceType};

use crate::ShardStats;

/// A message that could not be queued, handed back to the caller.
#[derive(Debug)]
pub struct MeshFull<M> {
    pub to: usize,
    pub msg: M,
    /// `true` when the destination is gone (shutting down), not merely full.
    pub closed: bool,
}

/// This shard's sending side of the mesh.
pub struct Mesh<M: Send + 'static> {
    id: usize,
    nr_shards: usize,
    senders: Senders<M>,
    local: LocalSender<M>,
    stats: Arc<ShardStats>,
}

fn hand_back<M>(to: usize, err: GlommioError<M>) -> Result<(), MeshFull<M>> {
    match err {
        GlommioError::WouldBlock(ResourceType::Channel(msg)) => Err(MeshFull { to, msg, closed: false }),
        GlommioError::Closed(ResourceType::Channel(msg)) => Err(MeshFull { to, msg, closed: true }),
        other => {
            // Only channel errors carry the message; anything else means the mesh is unusable.
            tracing::error!(error = ?other, to, "mesh send failed and lost its message");
            Ok(())
        }
    }
}

impl<M: Send + 'static> Mesh<M> {
    pub(crate) fn new(senders: Senders<M>, local: LocalSender<M>, nr_shards: usize, stats: Arc<ShardStats>) -> Self {
        Self {
            id: senders.peer_id(),
            nr_shards,
            senders,
            local,
            stats,
        }
    }

    /// Index of this shard.
    pub fn shard_id(&self) -> usize {
        self.id
    }

    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    /// Queues `msg` for shard `to`, waiting while its queue is full.
    pub async fn send_to(&self, to: usize, msg: M) -> Result<(), MeshFull<M>> {
        let res = if to == self.id {
            self.local.send(msg).await
        } else {
            self.senders.send_to(to, msg).await
        };
        match res {
            Ok(()) => {
                ShardStats::add(&self.stats.mesh_sent, 1);
                Ok(())
            }
            Err(e) => hand_back(to, e),
        }
    }

    /// Queues `msg` for shard `to` without waiting; a full queue hands the message back.
    pub fn try_send_to(&self, to: usize, msg: M) -> Result<(), MeshFull<M>> {
        let res = if to == self.id {
            self.local.try_send(msg)
        } else {
            self.senders.try_send_to(to, msg)
        };
        match res {
            Ok(()) => {
                ShardStats::add(&self.stats.mesh_sent, 1);
                Ok(())
            }
            Err(e) => {
                let back = hand_back(to, e);
                if matches!(&back, Err(f) if !f.closed) {
                    ShardStats::add(&self.stats.mesh_full, 1);
                }
                back
            }
        }
    }

    /// Closes this shard's outgoing channels; receivers see `None` once drained.
    pub fn close(self) {
        self.senders.close();
    }
}

/// Messages from one source shard, in the order that shard sent them.
pub struct MeshReceiver<M: Send + 'static> {
    source: usize,
    inner: ReceiverKind<M>,
}

enum ReceiverKind<M: Send + 'static> {
    Remote(ConnectedReceiver<M>),
    Local(LocalReceiver<M>),
}

impl<M: Send + 'static> MeshReceiver<M> {
    /// The shard these messages come from.
    pub fn source(&self) -> usize {
        self.source
    }

    /// The next message, or `None` once the source closed its side and the queue is drained.
    pub async fn recv(&self) -> Option<M> {
        match &self.inner {
            ReceiverKind::Remote(r) => r.recv().await,
            ReceiverKind::Local(r) => r.recv().await,
        }
    }
}

pub(crate) fn assemble<M: Send + 'static>(
    senders: Senders<M>,
    mut receivers: Receivers<M>,
    nr_shards: usize,
    capacity: usize,
    stats: Arc<ShardStats>,
) -> (Mesh<M>, Vec<MeshReceiver<M>>) {
    let (local_tx, local_rx) = local_channel::new_bounded(capacity);
    let id = senders.peer_id();
    let mut rx: Vec<MeshReceiver<M>> = receivers
        .streams()
        .into_iter()
        .map(|(source, r)| MeshReceiver {
            source,
            inner: ReceiverKind::Remote(r),
        })
        .collect();
    rx.push(MeshReceiver {
        source: id,
        inner: ReceiverKind::Local(local_rx),
    });
    rx.sort_by_key(|r| r.source);
    (Mesh::new(senders, local_tx, nr_shards, stats), rx)
}
