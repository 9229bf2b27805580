//! The `chatd` binary: command line, logging, configuration, then run. Errors map to exit codes
//! (1: runtime failure, 2: bad configuration or usage, 3: a port, data directory or database
//! that is taken or unreachable). Runs on the main thread, which only waits for signals once the
//! server is up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[path = "cli/admin.rs"]
mod admin;

use anyhow::Context;
use chatd::config::{BackendKind, ConfigError};
use chatd::store::mongo::MongoOpenError;
use chatd::store::OpenError;
use chatd::{Config, Server, ServerError};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chatd",
    version,
    about = "Realtime chat server speaking Rocket.Chat's realtime and REST APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage users (the embedded store: while the server is stopped).
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Write a consistent copy of the embedded store, while the server runs or not.
    Backup(admin::BackupArgs),
    /// Copy data from another chat server into chatd's store (the server must be stopped).
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Import a Rocket.Chat database: users (with their passwords and resume tokens), rooms,
    /// subscriptions and messages, keeping every id. Safe to run again.
    Rocketchat(ImportArgs),
}

#[derive(Args)]
struct ImportArgs {
    /// A `mongodump` folder holding users.bson, rocketchat_room.bson,
    /// rocketchat_subscription.bson and rocketchat_message.bson (or .bson.gz).
    #[arg(long, conflicts_with = "mongo_url", required_unless_present = "mongo_url")]
    dump: Option<PathBuf>,
    /// A live Rocket.Chat database, e.g. mongodb://host:27017/rocketchat?replicaSet=rs0.
    #[arg(long)]
    mongo_url: Option<String>,
    /// Data directory of the embedded store. Default ./chatd-data.
    #[arg(long, default_value = "./chatd-data")]
    data_dir: PathBuf,
    /// Import into chatd's MongoDB backend at this URL (a replica set) instead of the embedded
    /// store; may be the same server as the source, as chatd's collections are its own.
    #[arg(long)]
    into_mongo_url: Option<String>,
    /// Seconds to wait for the target MongoDB before giving up (exit code 3).
    #[arg(long, default_value_t = 10)]
    mongo_connect_timeout: u64,
    /// Days an imported resume token lives after its login (Accounts_LoginExpiration).
    #[arg(long, default_value_t = 90)]
    token_ttl_days: u64,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (HTTP + WebSocket). Default 0.0.0.0:3000, or 0.0.0.0:$PORT.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Number of shards (pinned executor threads). Default: every online CPU.
    #[arg(long)]
    shards: Option<usize>,
    /// Data directory of the embedded store (with MongoDB: where this host keeps its change
    /// stream position). Default ./chatd-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Store backend: embedded (default; one host) or mongodb (hosts sharing a replica set).
    /// MONGO_URL in the environment selects mongodb.
    #[arg(long, value_enum)]
    store: Option<BackendKind>,
    /// MongoDB URL (a replica set), e.g. mongodb://db1,db2,db3/chatd?replicaSet=rs0. Overrides
    /// MONGO_URL.
    #[arg(long)]
    mongo_url: Option<String>,
    /// Seconds start-up waits for MongoDB before giving up with exit code 3. Default 10.
    #[arg(long)]
    mongo_connect_timeout: Option<u64>,
    /// TOML configuration file (every key: deploy/chatd.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Address of the cluster port for links from other chatd hosts (typing and presence).
    /// Needs the shared secret: CHATD_CLUSTER_SECRET or `[cluster] secret_file`.
    #[arg(long)]
    cluster_listen: Option<SocketAddr>,
    /// Another host's cluster address, host:port (repeatable); kept linked.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// The address other hosts reach this one at.
    #[arg(long, env = "INSTANCE_IP")]
    instance_ip: Option<String>,
    /// PEM certificate chain for HTTPS/WSS on the client port (with --tls-key); reloaded on SIGHUP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Variables of a Rocket.Chat unit that mean nothing to chatd, and why.
const IGNORED_ROCKETCHAT_ENV: &[(&str, &str)] = &[
    ("DEPLOY_METHOD", "deployment bookkeeping of Rocket.Chat"),
    ("DEPLOY_PLATFORM", "deployment bookkeeping of Rocket.Chat"),
    (
        "TCP_PORT",
        "Rocket.Chat's instance-to-instance port; chatd hosts peer over --cluster-listen",
    ),
];

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn build_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    apply_rocketchat_env(&mut config, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    // As in a Rocket.Chat unit: MONGO_URL selects the shared database.
    if let Ok(url) = std::env::var("MONGO_URL") {
        if !url.is_empty() {
            config.store.backend = BackendKind::Mongodb;
            config.store.mongo_url = Some(url);
        }
    }
    if let Some(url) = &args.mongo_url {
        config.store.backend = BackendKind::Mongodb;
        config.store.mongo_url = Some(url.clone());
    }
    if let Some(kind) = args.store {
        config.store.backend = kind;
    }
    if let Some(secs) = args.mongo_connect_timeout {
        config.store.mongo_connect_timeout_secs = secs;
    }
    if let Some(addr) = args.cluster_listen {
        config.cluster.listen = Some(addr);
    }
    if !args.peers.is_empty() {
        config.cluster.peers = args.peers.clone();
    }
    if let Some(ip) = &args.instance_ip {
        config.cluster.instance_ip = Some(ip.clone());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls.cert = Some(cert.clone());
        config.tls.key = Some(key.clone());
    }
    config
        .cluster
        .load_secret(std::env::var("CHATD_CLUSTER_SECRET").ok().filter(|s| !s.is_empty()))?;
    config.validate()?;
    Ok(config)
}

/// The environment of a Rocket.Chat systemd unit: `PORT` and `BIND_IP` set the listen address,
/// `ROOT_URL` the public URL, `MONGO_URL` selects the shared database (handled by the caller
/// with the other store settings), `INSTANCE_IP` is read by clap. A malformed value is a
/// configuration error naming the variable (exit 2).
fn apply_rocketchat_env(config: &mut Config, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, value: &str, what: &str| ConfigError::Invalid {
        key,
        problem: format!("is {value:?}, not {what}"),
    };
    if let Some(port) = var("PORT") {
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("PORT (environment)", &port, "a port number (1-65535)"))?;
        config.listen.set_port(port);
    }
    if let Some(ip) = var("BIND_IP") {
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| invalid("BIND_IP (environment)", &ip, "an IP address"))?;
        config.listen.set_ip(ip);
    }
    if let Some(url) = var("ROOT_URL") {
        config.root_url = Some(url.trim_end_matches('/').to_owned());
    }
    // Like Rocket.Chat's TEST_MODE: load tests turn rate limits off.
    match var("CHATD_RATE_LIMITS").as_deref() {
        None | Some("on") => {}
        Some("off") => config.rate_limits = chatd::config::RateLimits::off(),
        Some(other) => return Err(invalid("CHATD_RATE_LIMITS (environment)", other, "on or off")),
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = build_config(&args)?;
    init_logging(&config.log);
    if std::env::var_os("MONGO_OPLOG_URL").is_some() {
        tracing::info!("MONGO_OPLOG_URL is not needed and ignored: chatd follows MongoDB change streams");
    }
    if !config.rate_limits.enabled || !config.rate_limits.login_blocking {
        tracing::warn!(
            requests = config.rate_limits.enabled,
            login_blocking = config.rate_limits.login_blocking,
            "rate limits are partly or wholly off"
        );
    }
    for (var, why) in IGNORED_ROCKETCHAT_ENV {
        if std::env::var_os(var).is_some() {
            tracing::info!("{var} is ignored: {why}");
        }
    }
    if args.check_config {
        let store = match &config.store.mongo_url {
            Some(url) if config.store.backend == BackendKind::Mongodb => {
                format!("MongoDB at {}", chatd::store::mongo::redacted_url(url))
            }
            _ => format!("embedded store in {}", config.data_dir.display()),
        };
        println!(
            "configuration OK ({} shards, listening on {}, {store})",
            config.shard_count(),
            config.listen
        );
        return Ok(());
    }
    chatd::raise_fd_limit();
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let notice = Duration::from_secs(config.health.drain_notice_secs);
    let stop_limit = Duration::from_secs(config.limits.drain_timeout_secs) + STOP_GRACE;
    let server = Server::start(config)?;
    let mut terminate = false;
    while !terminate {
        let Some(signal) = signals.forever().next() else { break };
        match signal {
            SIGINT => {
                // Fast exit: every acknowledged write is already durable.
                tracing::info!("SIGINT: exiting now");
                std::process::exit(130);
            }
            SIGHUP => match server.reload_tls() {
                Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; the previous certificate stays in use")
                }
                None => tracing::info!("SIGHUP: nothing to reload (no TLS configured)"),
            },
            _ => terminate = true,
        }
    }
    if terminate {
        server.begin_drain();
        if !notice.is_zero() {
            tracing::info!(
                seconds = notice.as_secs(),
                "SIGTERM: /health/ready answers 503; serving on until the load balancer has noticed"
            );
            // A second SIGTERM (or SIGINT) ends the notice early.
            let deadline = Instant::now() + notice;
            while Instant::now() < deadline && !signals.pending().any(|s| s != SIGHUP) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        tracing::info!("SIGTERM: draining");
    }
    // Every acknowledged write is already durable: a stop that outlives the drain by far is
    // stuck, and exiting beats waiting for the supervisor's SIGKILL.
    std::thread::spawn(move || {
        std::thread::sleep(stop_limit);
        tracing::error!(seconds = stop_limit.as_secs(), "stop did not finish in time; exiting");
        std::process::exit(1);
    });
    server.stop();
    tracing::info!("stopped");
    Ok(())
}

/// How long a stop may take beyond the drain before the process exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(20);

fn import_rocketchat(args: ImportArgs) -> anyhow::Result<()> {
    use chatd::import::{self, Source};
    // The store first: a running server means exit code 3 before any source is touched.
    let mut sink: Box<dyn import::ImportSink> = match &args.into_mongo_url {
        Some(url) => {
            let store = admin::open_mongo(url, args.data_dir.clone(), args.mongo_connect_timeout)?;
            let at = chatd::store::mongo::redacted_url(url);
            Box::new(chatd::store::mongo::import::MongoImport::new(store, &at)?)
        }
        None => Box::new(chatd::store::embedded::import::EmbeddedImport::open(&args.data_dir)?),
    };
    let source = match (&args.dump, &args.mongo_url) {
        (Some(dir), _) => Source::dump(dir)?,
        (None, Some(url)) => Source::mongo(url)?,
        (None, None) => anyhow::bail!("name a source: --dump DIR or --mongo-url URL"),
    };
    let started = std::time::Instant::now();
    let report = import::run(&source, &mut *sink, args.token_ttl_days)?;
    print!("{}", report.summary());
    println!("import finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::User(cmd) => {
            init_logging("warn");
            admin::user(cmd)
        }
        Command::Backup(args) => {
            init_logging("warn");
            admin::backup(args)
        }
        Command::Import(ImportCommand::Rocketchat(args)) => {
            init_logging("warn");
            import_rocketchat(args)
        }
    };
    if let Err(e) = result {
        eprintln!("chatd: {e:#}");
        std::process::exit(exit_code(&e));
    }
}

/// Exit codes: 1 for failures at run time, 2 for a bad command line or configuration, 3 when the
/// port or the data directory is already taken by another process, or MongoDB is unreachable
/// (or not a replica set).
fn exit_code(e: &anyhow::Error) -> i32 {
    use chatd_shards::{ListenError, StartError};
    let in_use = matches!(e.downcast_ref::<OpenError>(), Some(OpenError::InUse(_)))
        || matches!(
            e.downcast_ref::<ServerError>(),
            Some(ServerError::Store(OpenError::InUse(_)))
                | Some(ServerError::Shards(StartError::Listen(ListenError::InUse { .. })))
        );
    let mongo = e
        .downcast_ref::<MongoOpenError>()
        .or(match e.downcast_ref::<ServerError>() {
            Some(ServerError::Mongo(m)) => Some(m),
            _ => None,
        });
    let unavailable = mongo.is_some_and(|m| !matches!(m, MongoOpenError::Url(_)));
    let usage = e.downcast_ref::<chatd::config::ConfigError>().is_some()
        || matches!(
            e.downcast_ref::<ServerError>(),
            Some(ServerError::Config(_) | ServerError::Tls(_))
        )
        || matches!(mongo, Some(MongoOpenError::Url(_)));
    if in_use || unavailable {
        3
    } else if usage {
        2
    } else {
        1
    }
}
