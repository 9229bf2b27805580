//! Configuration: one serde tree with every default in one place, `deny_unknown_fields`, and
//! `validate()` messages that name the key. Built on the main thread; shards get an `Arc` copy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address every shard listens on (HTTP + WebSocket).
    pub listen: SocketAddr,
    /// Number of shards; 0 means one per online CPU.
    pub shards: usize,
    /// Directory of the embedded store; with MongoDB, where this host keeps its change-stream
    /// position.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    /// Pin shard i to CPU i.
    pub pin_cores: bool,
    pub limits: Limits,
    pub accounts: Accounts,
    pub workspace: Workspace,
    pub sync: Sync,
    pub cluster: Cluster,
    pub health: Health,
    pub rate_limits: RateLimits,
    pub tls: Tls,
    pub web: Web,
    /// The public URL clients reach chatd at (`ROOT_URL`), shown in `/api/info` and used in
    /// links; `None` shows nothing.
    pub root_url: Option<String>,
    /// Capacity of each shard-to-shard mesh channel.
    pub mesh_capacity: usize,
    /// Capacity of each shard-to-shard channel of the ephemeral lane (typing); a full lane
    /// drops events (counted in `chatd_dropped_events_total`).
    pub ephemeral_capacity: usize,
    /// Locked I/O memory per shard executor, bytes (glommio needs at least 512 KiB).
    pub io_memory_bytes: usize,
    /// Store reader threads: every store read (lookups, listings, history pages) runs on one
    /// of them, never on a shard's event loop.
    pub store_readers: usize,
    /// Scheduling of reader threads: "idle" (run only on CPU time no shard wants) or "nice"
    /// (nice 10: a smaller share, never starved).
    pub store_reader_priority: crate::store::ReaderPriority,
    /// Log filter (tracing EnvFilter syntax), overridden by `RUST_LOG`.
    pub log: String,
}

/// The built-in web client at `/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    /// Serve the web client at `/` (its assets under `/assets/`); off: `/` answers 404.
    pub enabled: bool,
    /// The Content-Security-Policy `frame-ancestors` sources: which sites may show chatd's
    /// page in a frame. `'none'` (the default) allows none; e.g. `'self' https://intranet.example`.
    pub frame_ancestors: String,
}

impl Default for Web {
    fn default() -> Self {
        Self {
            enabled: true,
            frame_ancestors: "'none'".into(),
        }
    }
}

/// `/health` and draining.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Milliseconds every shard has to answer a `/health` round trip before it counts as stuck.
    pub shard_timeout_ms: u64,
    /// Seconds the change feed may have changes pending without moving before `/health` says
    /// it is stalled.
    pub feed_stall_secs: u64,
    /// Seconds between SIGTERM and closing connections during which `/health/ready` answers 503
    /// and everything else is served as usual, so a load balancer stops sending new clients
    /// first. Set it above the balancer's health-check interval × unhealthy threshold.
    pub drain_notice_secs: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            shard_timeout_ms: 1000,
            feed_stall_secs: 10,
            drain_notice_secs: 0,
        }
    }
}

impl Health {
    pub fn shard_timeout(&self) -> Duration {
        Duration::from_millis(self.shard_timeout_ms)
    }
}

/// One rate-limit rule: at most `calls` per `interval_ms` (a fixed window opened by the first
/// call); `calls = 0` turns the rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub calls: u32,
    pub interval_ms: u64,
}

impl Rule {
    pub const fn new(calls: u32, interval_ms: u64) -> Self {
        Self { calls, interval_ms }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// Rate limits, with Rocket.Chat's defaults. Request rules count per shard; login failures
/// per host. `CHATD_RATE_LIMITS=off` in the environment turns every rule off (load tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// DDP and REST request rules on or off (`DDP_Rate_Limit_*_Enabled`,
    /// `API_Enable_Rate_Limiter`).
    pub enabled: bool,
    /// Proxies (load balancers) in front of chatd that append to `X-Forwarded-For`: the client
    /// address is the one that many hops from the right. 0: the TCP peer (no proxy).
    pub trusted_proxies: usize,
    /// DDP calls per client address (127.0.0.1 is left out).
    pub ddp_ip: Rule,
    /// DDP calls per logged-in user.
    pub ddp_user: Rule,
    /// DDP calls per connection.
    pub ddp_connection: Rule,
    /// DDP calls of one method (or subscription) name per user; `stream-*` names get 4× calls
    /// over 4× the interval.
    pub ddp_user_method: Rule,
    /// The same per connection.
    pub ddp_connection_method: Rule,
    /// `sendMessage` per user (roles admin and bot are exempt).
    pub send_message: Rule,
    /// `createDirectMessage` per user (roles admin and bot are exempt).
    pub create_direct_message: Rule,
    /// `setUserStatus` per user.
    pub set_user_status: Rule,
    /// REST calls per endpoint (method + path) per client address; roles admin and bot are
    /// exempt. Answers carry `X-RateLimit-Limit/Remaining/Reset`; past it, 429.
    pub rest_endpoint: Rule,
    /// Block logins after failed attempts (`Accounts_Block_Failed_Login_Attempts_Enable`).
    pub login_blocking: bool,
    /// Failed logins per account before it is blocked; the block lasts `interval_ms` after the
    /// last failure.
    pub login_failures_per_user: Rule,
    /// The same per client address.
    pub login_failures_per_ip: Rule,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_proxies: 0,
            ddp_ip: Rule::new(120_000, 60_000),
            ddp_user: Rule::new(1200, 60_000),
            ddp_connection: Rule::new(600, 60_000),
            ddp_user_method: Rule::new(20, 10_000),
            ddp_connection_method: Rule::new(10, 10_000),
            send_message: Rule::new(5, 1000),
            create_direct_message: Rule::new(10, 60_000),
            set_user_status: Rule::new(1, 1000),
            rest_endpoint: Rule::new(10, 60_000),
            login_blocking: true,
            login_failures_per_user: Rule::new(10, 300_000),
            login_failures_per_ip: Rule::new(50, 300_000),
        }
    }
}

impl RateLimits {
    /// Every rule off.
    pub fn off() -> Self {
        Self {
            enabled: false,
            login_blocking: false,
            ..Self::default()
        }
    }
}

/// TLS on the client port: both files or neither (plain HTTP/WebSocket).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain, leaf first. `--tls-cert`.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). `--tls-key`.
    pub key: Option<PathBuf>,
}

/// Which store backend holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// One redb file in `data_dir` (single host).
    #[default]
    Embedded,
    /// A MongoDB replica set shared by every host of a cluster.
    Mongodb,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: BackendKind,
    /// The replica set's URL, e.g. `mongodb://db1,db2,db3/chatd?replicaSet=rs0` (the path names
    /// the database; `chatd` when absent). `MONGO_URL` sets it and selects MongoDB.
    pub mongo_url: Option<String>,
    /// Seconds start-up waits for a usable MongoDB server before it gives up (exit code 3); also
    /// how long an operation waits for one while running.
    pub mongo_connect_timeout_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Embedded,
            mongo_url: None,
            mongo_connect_timeout_secs: 10,
        }
    }
}

/// The URL may hold a password: `Debug` shows only its hosts and database.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field(
                "mongo_url",
                &self.mongo_url.as_deref().map(crate::store::mongo::redacted_url),
            )
            .field("mongo_connect_timeout_secs", &self.mongo_connect_timeout_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket frame/message accepted, bytes.
    pub max_frame_bytes: usize,
    /// Longest message text, characters.
    pub max_message_chars: usize,
    /// Seconds a client has to finish the HTTP request / WebSocket handshake.
    pub handshake_timeout_secs: u64,
    /// Seconds a WebSocket client has to log in before it is disconnected; 0 (the default)
    /// keeps logged-out connections open, as Rocket.Chat does (the mobile app holds one open on
    /// its login screen). Pings still close dead ones.
    pub auth_timeout_secs: u64,
    /// Seconds of silence before the server pings; as long again without any frame closes.
    pub ping_interval_secs: u64,
    /// Frames a session may have queued before it is closed as slow.
    pub outbound_queue_frames: usize,
    /// Bytes a session may have queued before it is closed as slow.
    pub outbound_queue_bytes: usize,
    /// Connections a shard holds at most; more are closed at once.
    pub max_connections_per_shard: usize,
    /// Largest HTTP request body, bytes.
    pub max_http_body_bytes: usize,
    /// Seconds SIGTERM waits for sessions to drain.
    pub drain_timeout_secs: u64,
    /// Stream subscriptions one WebSocket session may hold; one more is refused with
    /// `nosub` error `too-many-subscriptions`.
    pub max_subscriptions_per_session: usize,
    /// Longest stream or event name accepted in a subscription, characters; a longer one is
    /// refused with `nosub` error `invalid-event-name`.
    pub max_event_name_chars: usize,
    /// Users one session may watch on `stream-user-presence`; a watch that would pass it is
    /// refused with `nosub` error `too-many-presence-watches`.
    pub max_presence_watches: usize,
    /// Method calls and subscriptions of one session waiting for or under way; one more is
    /// answered at once with error `too-many-pending-calls`.
    pub max_pending_calls: usize,
    /// Milliseconds a round trip to another shard (login routing, presence queries) may take
    /// before the call fails with `error-server-busy`.
    pub round_trip_timeout_ms: u64,
    /// On SIGTERM every session is closed with 1012 "server restarting; reconnect in N ms", N
    /// random below this many milliseconds, so that clients come back spread out (0: at once).
    pub reconnect_spread_ms: u64,
    /// Seconds a store read or write may take before the call fails with
    /// `error-store-unavailable` (a write's outcome is then unknown; re-sending it with the same
    /// message id is safe).
    pub store_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Accounts {
    /// Days a login token stays valid.
    pub token_ttl_days: u64,
    /// Whether `registerUser` / `users.register` accept new users.
    pub registration_open: bool,
}

/// Host peering: typing and presence between chatd hosts, one TCP link per pair of hosts.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Address the cluster port listens on (peer links); `None` (the default) accepts no links.
    pub listen: Option<SocketAddr>,
    /// Other hosts' cluster addresses (`host:port`), dialled and kept connected. A host that
    /// dials us is linked too, so one side of each pair naming the other is enough.
    pub peers: Vec<String>,
    /// The address other hosts reach this host at (`INSTANCE_IP`), shown to peers and in logs.
    pub instance_ip: Option<String>,
    /// File holding the shared secret that authenticates every link (`CHATD_CLUSTER_SECRET`
    /// overrides it). Required as soon as `listen` or `peers` is set.
    pub secret_file: Option<PathBuf>,
    /// The secret itself, loaded from the environment or `secret_file` (never from the TOML
    /// text, never printed).
    #[serde(skip)]
    pub secret: Option<ClusterSecret>,
    /// Milliseconds between heartbeats on an idle link.
    pub heartbeat_ms: u64,
    /// Milliseconds without any frame from a peer before its link is declared dead and its
    /// users' presence expires.
    pub peer_timeout_ms: u64,
    /// Frames a link may have queued for sending; when full, events are dropped and counted
    /// (presence is re-sent as a snapshot once the link catches up).
    pub send_queue_frames: usize,
    /// Largest frame accepted from a peer, bytes; a larger one closes the link.
    pub max_frame_bytes: usize,
    /// Typing notices per second handed on from one peer link; more are dropped and counted.
    pub max_typing_per_sec: u32,
    /// With MongoDB: milliseconds between this host's heartbeats in the instances registry
    /// (hosts find each other there; an entry three heartbeats old is ignored).
    pub registry_heartbeat_ms: u64,
}

/// The cluster secret; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(pub Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("instance_ip", &self.instance_ip)
            .field("secret_file", &self.secret_file)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("peer_timeout_ms", &self.peer_timeout_ms)
            .finish_non_exhaustive()
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            listen: None,
            peers: Vec::new(),
            instance_ip: None,
            secret_file: None,
            secret: None,
            heartbeat_ms: 1000,
            peer_timeout_ms: 5000,
            send_queue_frames: 4096,
            max_frame_bytes: 1 << 20,
            max_typing_per_sec: 20_000,
            registry_heartbeat_ms: 2000,
        }
    }
}

/// Shortest accepted cluster secret, bytes.
pub const MIN_SECRET_BYTES: usize = 16;

impl Cluster {
    /// Whether this host takes part in a cluster (listens for or dials peers).
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || !self.peers.is_empty()
    }

    /// Loads the secret: `CHATD_CLUSTER_SECRET` if set, else `secret_file` (surrounding
    /// whitespace trimmed).
    pub fn load_secret(&mut self, env_secret: Option<String>) -> Result<(), ConfigError> {
        if let Some(s) = env_secret {
            self.secret = Some(ClusterSecret(s.trim().as_bytes().to_vec()));
            return Ok(());
        }
        if let Some(path) = &self.secret_file {
            let text = std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            self.secret = Some(ClusterSecret(text.trim_ascii().to_vec()));
        }
        Ok(())
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            shards: 0,
            data_dir: PathBuf::from("./chatd-data"),
            store: StoreConfig::default(),
            pin_cores: true,
            limits: Limits::default(),
            accounts: Accounts::default(),
            workspace: Workspace::default(),
            sync: Sync::default(),
            cluster: Cluster::default(),
            health: Health::default(),
            rate_limits: RateLimits::default(),
            tls: Tls::default(),
            web: Web::default(),
            root_url: None,
            mesh_capacity: 1024,
            ephemeral_capacity: 1024,
            io_memory_bytes: 512 * 1024,
            store_readers: 2,
            store_reader_priority: crate::store::ReaderPriority::Idle,
            log: "info".into(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1 << 20,
            max_message_chars: crate::store::MAX_MESSAGE_CHARS,
            handshake_timeout_secs: 10,
            auth_timeout_secs: 0,
            ping_interval_secs: 20,
            outbound_queue_frames: 4096,
            outbound_queue_bytes: 8 << 20,
            max_connections_per_shard: 19_000,
            max_http_body_bytes: 1 << 20,
            drain_timeout_secs: 10,
            max_subscriptions_per_session: 1000,
            max_event_name_chars: 256,
            max_presence_watches: 2000,
            max_pending_calls: 100,
            round_trip_timeout_ms: 5000,
            store_timeout_secs: 15,
            reconnect_spread_ms: 5000,
        }
    }
}

/// What clients are told about the workspace (`/api/info`, public settings).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workspace {
    /// The workspace's name (`Site_Name`), shown by the apps.
    pub site_name: String,
    /// The Rocket.Chat version chatd answers as (`/api/info`). The apps refuse servers whose
    /// `major.minor` is outside Rocket.Chat's support window, and switch request forms on it:
    /// choose a release Rocket.Chat currently supports (see the README).
    pub rocketchat_version: String,
    /// A supported-versions token signed by Rocket.Chat's cloud (`Cloud_Workspace_Supported_Versions_Token`
    /// of a registered Rocket.Chat workspace; `chatd import rocketchat` carries it over into the
    /// store, and this key overrides that). It must list `rocketchat_version`. Never printed.
    pub supported_versions_token: Option<String>,
    /// Days after start-up until which the unsigned supported-versions answer declares
    /// `rocketchat_version` supported (apps read it when they cannot reach Rocket.Chat's cloud).
    pub supported_for_days: u64,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("site_name", &self.site_name)
            .field("rocketchat_version", &self.rocketchat_version)
            .field(
                "supported_versions_token",
                &self.supported_versions_token.as_ref().map(|_| "<set>"),
            )
            .field("supported_for_days", &self.supported_for_days)
            .finish()
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self {
            site_name: "chatd".into(),
            // An LTS release: supported by Rocket.Chat until the end of June 2027.
            rocketchat_version: "8.5.0".into(),
            supported_versions_token: None,
            supported_for_days: 180,
        }
    }
}

/// What clients syncing after a time away are told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sync {
    /// Days a deleted message or a removed subscription is remembered, so that clients
    /// syncing (`chat.syncMessages`, `subscriptions.get?updatedSince`) drop what they cached.
    /// A client away longer than this keeps what was deleted meanwhile until it reloads.
    pub deletion_retention_days: u64,
}

impl Default for Sync {
    fn default() -> Self {
        Self {
            deletion_retention_days: 90,
        }
    }
}

impl Sync {
    pub fn retention_ms(&self) -> i64 {
        i64::try_from(self.deletion_retention_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX)
    }
}

impl Default for Accounts {
    fn default() -> Self {
        Self {
            token_ttl_days: 90,
            registration_open: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The number of shards to run (resolving 0 to the number of online CPUs).
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            self.shards
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.into(),
            })
        };
        if self.shard_count() > 64 {
            return bad("shards", "must be at most 64");
        }
        if self.limits.max_frame_bytes < 1024 {
            return bad("limits.max_frame_bytes", "must be at least 1024");
        }
        if self.limits.max_message_chars == 0 || self.limits.max_message_chars > crate::store::MAX_MESSAGE_CHARS {
            return bad("limits.max_message_chars", "must be between 1 and 5000");
        }
        if self.limits.ping_interval_secs == 0 || self.limits.ping_interval_secs > 25 {
            return bad(
                "limits.ping_interval_secs",
                "must be between 1 and 25 (load balancers drop idle connections at 60 s)",
            );
        }
        if self.limits.outbound_queue_frames == 0 || self.limits.outbound_queue_bytes < self.limits.max_frame_bytes {
            return bad(
                "limits.outbound_queue_bytes",
                "must hold at least one frame of limits.max_frame_bytes",
            );
        }
        if semver_major_minor(&self.workspace.rocketchat_version).is_none() {
            return bad(
                "workspace.rocketchat_version",
                "must be a version like 8.5.0 (major.minor.patch)",
            );
        }
        if self.sync.deletion_retention_days == 0 {
            return bad("sync.deletion_retention_days", "must be at least 1");
        }
        if self.limits.handshake_timeout_secs == 0 {
            return bad("limits.handshake_timeout_secs", "must be at least 1 second");
        }
        if self.limits.max_subscriptions_per_session == 0
            || self.limits.max_presence_watches == 0
            || self.limits.max_pending_calls == 0
        {
            return bad(
                "limits.max_pending_calls",
                "per-session caps (max_subscriptions_per_session, max_presence_watches, max_pending_calls) must be at least 1",
            );
        }
        if self.limits.max_event_name_chars < 64 {
            return bad("limits.max_event_name_chars", "must be at least 64");
        }
        if self.limits.round_trip_timeout_ms < 100 || self.limits.round_trip_timeout_ms > 600_000 {
            return bad("limits.round_trip_timeout_ms", "must be between 100 and 600000");
        }
        if self.limits.reconnect_spread_ms > 600_000 {
            return bad("limits.reconnect_spread_ms", "must be at most 600000");
        }
        if self.limits.store_timeout_secs == 0 || self.limits.store_timeout_secs > 3600 {
            return bad("limits.store_timeout_secs", "must be between 1 and 3600");
        }
        let rl = &self.rate_limits;
        for (key, rule) in [
            ("rate_limits.ddp_ip", rl.ddp_ip),
            ("rate_limits.ddp_user", rl.ddp_user),
            ("rate_limits.ddp_connection", rl.ddp_connection),
            ("rate_limits.ddp_user_method", rl.ddp_user_method),
            ("rate_limits.ddp_connection_method", rl.ddp_connection_method),
            ("rate_limits.send_message", rl.send_message),
            ("rate_limits.create_direct_message", rl.create_direct_message),
            ("rate_limits.set_user_status", rl.set_user_status),
            ("rate_limits.rest_endpoint", rl.rest_endpoint),
            ("rate_limits.login_failures_per_user", rl.login_failures_per_user),
            ("rate_limits.login_failures_per_ip", rl.login_failures_per_ip),
        ] {
            if rule.calls > 0 && (rule.interval_ms == 0 || rule.interval_ms > 86_400_000) {
                return bad(key, "interval_ms must be between 1 and 86400000");
            }
        }
        if rl.trusted_proxies > 16 {
            return bad("rate_limits.trusted_proxies", "must be at most 16");
        }
        if self.io_memory_bytes < 512 * 1024 {
            return bad("io_memory_bytes", "must be at least 524288 (glommio's minimum)");
        }
        if self.ephemeral_capacity == 0 {
            return bad("ephemeral_capacity", "must be at least 1");
        }
        if self.store_readers == 0 || self.store_readers > 64 {
            return bad("store_readers", "must be between 1 and 64");
        }
        if self.mesh_capacity == 0 {
            return bad("mesh_capacity", "must be at least 1");
        }
        if self.accounts.token_ttl_days == 0 {
            return bad("accounts.token_ttl_days", "must be at least 1");
        }
        if self.health.shard_timeout_ms < 10 || self.health.shard_timeout_ms > 60_000 {
            return bad("health.shard_timeout_ms", "must be between 10 and 60000");
        }
        if self.health.feed_stall_secs == 0 {
            return bad("health.feed_stall_secs", "must be at least 1");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert", "and tls.key must be given together");
        }
        let ancestors = self.web.frame_ancestors.trim();
        if ancestors.is_empty()
            || ancestors
                .chars()
                .any(|c| matches!(c, ';' | ',' | '\r' | '\n') || c.is_control())
        {
            return bad(
                "web.frame_ancestors",
                "must be a CSP source list such as 'none' or 'self' https://example.com (no ';' or ',')",
            );
        }
        if let Some(url) = &self.root_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("root_url", "must start with http:// or https://");
            }
        }
        self.validate_store()?;
        self.validate_cluster()
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        let s = &self.store;
        if s.backend != BackendKind::Mongodb {
            return Ok(());
        }
        let Some(url) = &s.mongo_url else {
            return Err(ConfigError::Invalid {
                key: "store.mongo_url",
                problem: "is required with store.backend = \"mongodb\" (or set MONGO_URL)".into(),
            });
        };
        if let Err(e) = crate::store::mongo::validate_url(url) {
            return Err(ConfigError::Invalid {
                key: "store.mongo_url",
                problem: format!("is not a usable MongoDB URL: {e}"),
            });
        }
        if s.mongo_connect_timeout_secs == 0 || s.mongo_connect_timeout_secs > 600 {
            return Err(ConfigError::Invalid {
                key: "store.mongo_connect_timeout_secs",
                problem: "must be between 1 and 600".into(),
            });
        }
        Ok(())
    }

    /// The MongoDB backend's options, when it is selected.
    pub fn mongo_options(&self) -> Option<crate::store::mongo::MongoOptions> {
        if self.store.backend != BackendKind::Mongodb {
            return None;
        }
        let host = self
            .cluster
            .instance_ip
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| self.listen.to_string());
        Some(crate::store::mongo::MongoOptions {
            url: self.store.mongo_url.clone()?,
            database: None,
            connect_timeout: Duration::from_secs(self.store.mongo_connect_timeout_secs),
            data_dir: self.data_dir.clone(),
            host,
            readers: self.store_readers.max(crate::server::MONGO_MIN_READERS),
        })
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.into(),
            })
        };
        let c = &self.cluster;
        if !c.enabled() {
            return Ok(());
        }
        match &c.secret {
            None => {
                return bad(
                    "cluster.secret_file",
                    "is required when cluster.listen or cluster.peers is set (or set CHATD_CLUSTER_SECRET)",
                )
            }
            Some(s) if s.0.len() < MIN_SECRET_BYTES => {
                return bad("cluster.secret_file", "must hold a secret of at least 16 bytes")
            }
            Some(_) => {}
        }
        for peer in &c.peers {
            let port_ok = peer
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
            if !port_ok {
                return bad("cluster.peers", &format!("entry {peer:?} is not host:port"));
            }
        }
        if c.heartbeat_ms < 50 || c.heartbeat_ms > 10_000 {
            return bad("cluster.heartbeat_ms", "must be between 50 and 10000");
        }
        if c.peer_timeout_ms < 3 * c.heartbeat_ms || c.peer_timeout_ms > 60_000 {
            return bad(
                "cluster.peer_timeout_ms",
                "must be at least 3 heartbeats and at most 60000",
            );
        }
        if c.send_queue_frames == 0 {
            return bad("cluster.send_queue_frames", "must be at least 1");
        }
        if c.registry_heartbeat_ms < 100 || c.registry_heartbeat_ms > 60_000 {
            return bad("cluster.registry_heartbeat_ms", "must be between 100 and 60000");
        }
        if c.max_typing_per_sec == 0 {
            return bad("cluster.max_typing_per_sec", "must be at least 1");
        }
        if c.max_frame_bytes < 64 * 1024 || c.max_frame_bytes > 64 << 20 {
            return bad("cluster.max_frame_bytes", "must be between 65536 and 67108864");
        }
        Ok(())
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.limits.ping_interval_secs)
    }

    pub fn round_trip_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.round_trip_timeout_ms)
    }
}

/// `(major, minor)` of a `major.minor[.patch]` version.
pub fn semver_major_minor(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    match parts.next() {
        None => {}
        Some(p) if p.parse::<u64>().is_ok() => {}
        Some(_) => return None,
    }
    parts.next().is_none().then_some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../deploy/chatd.example.toml");
        let cfg = Config::from_toml(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.limits.max_frame_bytes, 1 << 20);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        assert!(Config::from_toml("listne = \"0.0.0.0:1\"")
            .unwrap_err()
            .contains("listne"));
        let cfg = Config::from_toml("[limits]\nping_interval_secs = 90").unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("limits.ping_interval_secs"));
    }
}
