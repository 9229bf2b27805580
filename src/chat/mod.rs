//! Per-shard chat state and change distribution.
//!
//! - `hub`: one per shard (every shard): the local sessions, which local users are members of
//!   which rooms, stream subscriptions, and fan-out of change-feed events to local sessions.
//! - `tailer`: on the tailer shard only: reads the store's change log and sends each change over
//!   the mesh to exactly the shards with interested users.
//! - `outbound`: a session's bounded outbound frame queue.
//! - `presence`: typing / activity events and host-level presence (ephemeral, never stored).

pub mod hub;
pub mod outbound;
pub mod presence;
pub mod tailer;

use std::sync::Arc;

use crate::ids::UserId;
use crate::store::ChangeRecord;
use presence::{Activity, PresenceUpdate};

/// Messages crossing the shard mesh. Only owned data and `Arc`s of immutable records.
#[derive(Debug)]
pub enum ShardMsg {
    /// Session shard → tailer shard: `uid` now has at least one (`online`) or no session on
    /// `shard`. With `ack`, the tailer answers [`ShardMsg::Ack`] once routing includes it.
    UserShard {
        uid: UserId,
        shard: usize,
        online: bool,
        ack: Option<u64>,
        /// With `online`: the user as the login read them, so the presence owner needs no store
        /// read for a user it has not seen yet.
        seed: Option<Box<presence::PresenceSeed>>,
    },
    /// Tailer → shard, or any shard → any shard: answer to `UserShard` or `Ping` with its token.
    Ack { token: u64 },
    /// Any shard → any shard: answer `Ack { token }` to `shard` (health round trips).
    Ping { shard: usize, token: u64 },
    /// Tailer → every shard: the changes this shard must apply (in log order, possibly none) and
    /// the log position the whole batch reached.
    Changes { records: Vec<Arc<ChangeRecord>>, head: u64 },
    /// Session shard → presence owner: every session of `uid` on `shard` is idle (`true`), or
    /// one is active again.
    UserIdle { uid: UserId, shard: usize, idle: bool },
    /// Any shard → presence owner: what is the presence of these users now?
    PresenceQuery {
        uids: Vec<UserId>,
        shard: usize,
        token: u64,
    },
    /// Presence owner → asking shard: (status, connection status, text) per queried user.
    PresenceAnswer {
        token: u64,
        answers: Vec<presence::PresenceRead>,
    },
    /// Presence owner → every shard: a batch of presence transitions, in order.
    Presence(Arc<Vec<PresenceUpdate>>),
    /// Tailer → every shard: the change feed lost changes; every local client must reconnect
    /// and reload what it shows.
    Reload,
    /// Ephemeral lane, any shard → every shard: a typing / activity notice (dropped when the lane
    /// is full).
    Activity(Arc<Activity>),
}

/// The shard that runs the change-feed tailer and owns host-level presence.
pub const TAILER_SHARD: usize = 0;
