//! `chatd-load`: the load generator for chatd and its peers.
//!
//! `chatd-load seed` prepares a chatd data directory (users with tokens, rooms with members).
//! `chatd-load run` opens connections across several worker processes (each process has its own
//! 20,000-file limit), logs in (chatd: resume tokens), subscribes every member to its room, then
//! sends at a fixed offered rate (open loop: send times are scheduled, not paced by replies) and
//! reports deliveries per second, lost and duplicated deliveries, send→receive latency
//! (HdrHistogram), connection setup rate, and the server's CPU seconds and RSS read from /proc.
//! Every run is bounded in time and connections and targets loopback only.

mod mixed;
mod process;
mod proto;
mod rcdump;
mod refrelay;
mod relay;
mod seed;
mod soak;
mod stall;
mod storm;
mod worker;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    name = "chatd-load",
    about = "Load generator for chatd and its peers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Seed a stopped chatd's data directory and write the plan (users, tokens, rooms) as JSON.
    Seed {
        #[arg(long)]
        data_dir: PathBuf,
        /// Seed this MongoDB database (a replica set) instead of the data directory's store.
        #[arg(long)]
        mongo_url: Option<String>,
        #[arg(long)]
        users: usize,
        #[arg(long, default_value_t = 0)]
        rooms: usize,
        #[arg(long, default_value_t = 0)]
        members: usize,
        #[arg(long)]
        plan: PathBuf,
    },
    /// Drop the MongoDB database a URL names (after a benchmark on MongoDB).
    MongoDrop {
        #[arg(long)]
        mongo_url: String,
    },
    /// Run a workload and print the results (JSON on stdout, a summary on stderr).
    Run(RunArgs),
    /// Write a generated Rocket.Chat `mongodump` folder (for `chatd import rocketchat`).
    RcDump(rcdump::DumpArgs),
    /// Measure another session's delivery latency with and without a heavy reader beside it.
    Stall(stall::StallArgs),
    /// Kill -9 the server again and again during pipelined writes; check every acknowledged
    /// message is stored exactly once.
    Soak(soak::SoakArgs),
    /// Restart under load: SIGTERM with thousands of clients connected; time until every client
    /// is back with every message.
    Storm(storm::StormArgs),
    /// Measure typing relay latency, on one host or across two peered hosts.
    TypingRelay(relay::RelayArgs),
    /// Scenario S7: the seed deployment's mixed load against a store imported from `rc-dump`.
    Mixed(mixed::MixedArgs),
    /// Serve the calibration reference: a minimal WebSocket fan-out relay (NATS subset).
    RefRelay(refrelay::RefRelayArgs),
    /// One worker process of a run (started by `run`, which passes its options as JSON).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        index: usize,
        #[arg(long)]
        args_json: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum Proto {
    /// chatd's Rocket.Chat realtime API (DDP over /websocket).
    Chatd,
    /// The socket.io relay of benches/peers (Engine.IO v4 over WebSocket).
    Socketio,
    /// nats-server's WebSocket listener (subjects as rooms).
    Nats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum Mode {
    /// Members of each room receive; some of them send at the offered rate.
    Fanout,
    /// Connections log in and stay idle (S1): setup rate and server memory per connection.
    Idle,
    /// Senders only, nobody subscribed, each sending its next message as soon as the previous one
    /// is acknowledged: acknowledged writes per second and ack latency (S5, chatd).
    Acks,
}

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "chatd")]
    proto: Proto,
    #[arg(long, value_enum, default_value = "fanout")]
    mode: Mode,
    /// WebSocket URL (ws://127.0.0.1:3000/websocket, ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket,
    /// ws://127.0.0.1:8222).
    #[arg(long)]
    url: String,
    /// chatd: the plan written by `seed` (users, tokens, rooms).
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Rooms and members per room (peers; chatd takes them from the plan).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Idle mode: how many connections.
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Senders per room (fanout) or in all (acks).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Offered messages per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Sending time in seconds (hard upper bound: 600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Longest wait for outstanding deliveries after sending stops, seconds.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Worker processes (each has its own open-file limit).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Connections opened at once per worker during setup.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Server processes to measure (CPU, RSS): pids...
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// ...and/or process names (as in /proc/PID/comm), e.g. chatd, node, nginx, redis-server.
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// A label for the result line.
    #[arg(long, default_value = "")]
    label: String,
    /// Append the JSON result to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The run's result.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    label: String,
    proto: String,
    mode: String,
    connections: usize,
    rooms: usize,
    members: usize,
    offered_rate: f64,
    duration_s: f64,
    sent: u64,
    acked: u64,
    deliveries: u64,
    expected: u64,
    lost: u64,
    duplicated: u64,
    errors: u64,
    deliveries_per_s: f64,
    latency_us: Percentiles,
    ack_latency_us: Percentiles,
    /// How late the load generator's sends went out after their intended times (the latencies
    /// above count from the intended time).
    send_lag_us: Percentiles,
    /// CPU seconds of the load generator's workers over the same window as `server_cpu_s`.
    client_cpu_s: f64,
    setup_conns_per_s: f64,
    server_cpu_s: f64,
    deliveries_per_cpu_s: f64,
    acks_per_s: f64,
    /// Server RSS before any connection, with every connection set up, and at the end.
    server_rss_kib_base: u64,
    server_rss_kib_idle: u64,
    server_rss_kib_end: u64,
    rss_per_conn_kib: f64,
    /// chatd: authenticated sessions per shard at the start of sending.
    sessions_per_shard: Vec<u64>,
    /// The server processes measured.
    server_pids: Vec<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Percentiles {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    count: u64,
}

pub(crate) fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        count: h.len(),
    }
}

pub(crate) fn new_hist() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_hist()))
}

fn unreachable_hist() -> Histogram<u64> {
    // `Histogram::new(3)` cannot fail; this keeps the code free of panics anyway.
    Histogram::new_with_max(1 << 40, 2).unwrap_or_else(|_| std::process::exit(70))
}

pub(crate) fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    if V2Serializer::new().serialize(h, &mut buf).is_err() {
        return String::new();
    }
    base64::engine::general_purpose::STANDARD.encode(buf)
}

fn decode_hist(s: &str) -> Histogram<u64> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .and_then(|b| Deserializer::new().deserialize(&mut b.as_slice()).ok())
        .unwrap_or_else(new_hist)
}

/// Wall-clock nanoseconds (shared by every process on this host: latency spans processes).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------- /proc readings ----------

fn pids_of(args: &RunArgs) -> Vec<u32> {
    let mut pids = args.server_pids.clone();
    if !args.server_names.is_empty() {
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if args.server_names.iter().any(|n| n == comm.trim()) {
                    pids.push(pid);
                }
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// utime + stime of each process, in seconds (`None` for a process that is gone).
fn cpu_of(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter().map(|pid| cpu_secs(&[*pid]).ok()).collect()
}

/// utime + stime of the processes, in seconds; an error if one of them is gone.
pub(crate) fn cpu_secs(pids: &[u32]) -> Result<f64, u32> {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| *pid)?;
        total += parse_cpu(&stat).ok_or(*pid)? / tick;
    }
    Ok(total)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    Some(stat).and_then(|stat| {
        // Fields after the command name (which may contain spaces) start after ')'.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some(utime + stime)
    })
}

pub(crate) fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// chatd's authenticated sessions per shard, from `/metrics`.
async fn chatd_sessions(url: &str) -> Vec<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(host) = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .map(str::to_owned)
    else {
        return Vec::new();
    };
    let Ok(mut s) = tokio::net::TcpStream::connect(&host).await else {
        return Vec::new();
    };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return Vec::new();
    }
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await;
    let mut out = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("chatd_sessions_authenticated{shard=\"") {
            if let Some((_, v)) = rest.split_once("\"} ") {
                // Gauges are exposed as floats ("3.0").
                out.push(v.trim().parse::<f64>().map_or(0, |v| v as u64));
            }
        }
    }
    out
}

// ---------- the parent ----------

pub(crate) fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|h| h.rsplit_once(':').map(|(h, _)| h))
        .unwrap_or("");
    let ok = host == "localhost" || host == "[::1]" || host.starts_with("127.");
    if !ok {
        bail!("refusing to load {host:?}: chatd-load targets loopback only");
    }
    Ok(())
}

fn run_parent(args: RunArgs) -> anyhow::Result<RunResult> {
    check_loopback(&args.url)?;
    if !(0.0..=600.0).contains(&args.duration) {
        bail!("--duration must be between 0 and 600 seconds");
    }
    let procs = args.procs.clamp(1, 64);
    let exe = std::env::current_exe()?;
    let args_json = serde_json::to_string(&args)?;
    let rss_base = rss_kib(&pids_of(&args));
    let mut children = Vec::new();
    for index in 0..procs {
        let child = std::process::Command::new(&exe)
            .arg("worker")
            .arg("--index")
            .arg(index.to_string())
            .arg("--args-json")
            .arg(&args_json)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting worker {index}"))?;
        children.push(child);
    }
    let pids = pids_of(&args);
    let setup_started = Instant::now();
    // Wait for every worker to be set up.
    let mut readers = Vec::new();
    for c in children.iter_mut() {
        let out = c.stdout.take().ok_or_else(|| anyhow!("worker stdout"))?;
        let mut r = std::io::BufReader::new(out);
        let mut line = String::new();
        r.read_line(&mut line)?;
        if line.trim() != "READY" {
            bail!("a worker failed during setup: {line}");
        }
        readers.push(r);
    }
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let rss_idle = rss_kib(&pids);
    let sessions_per_shard = if args.proto == Proto::Chatd {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(chatd_sessions(&args.url))
    } else {
        Vec::new()
    };
    let cpu0 = cpu_of(&pids);
    let t0 = Instant::now();
    for c in children.iter_mut() {
        if let Some(stdin) = c.stdin.as_mut() {
            writeln!(stdin, "GO")?;
        }
    }
    let mut results = Vec::new();
    for r in readers.iter_mut() {
        let mut line = String::new();
        r.read_line(&mut line)?;
        results.push(serde_json::from_str::<worker::WorkerResult>(line.trim()).context("worker result")?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_of(&pids);
    let mut cpu = 0.0;
    for (i, (a, b)) in cpu0.iter().zip(&cpu1).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => cpu += b - a,
            _ => eprintln!(
                "warning: server process {} was not there for the whole run; its CPU is not counted",
                pids[i]
            ),
        }
    }
    let rss_end = rss_kib(&pids);
    for mut c in children {
        let _ = c.wait();
    }
    let mut lat = new_hist();
    let mut ack = new_hist();
    let mut lag = new_hist();
    let mut total = worker::WorkerResult::default();
    for w in &results {
        total.connections += w.connections;
        total.sent += w.sent;
        total.acked += w.acked;
        total.deliveries += w.deliveries;
        total.expected += w.expected;
        total.lost += w.lost;
        total.duplicated += w.duplicated;
        total.errors += w.errors;
        let _ = lat.add(decode_hist(&w.latency));
        let _ = ack.add(decode_hist(&w.ack_latency));
        let _ = lag.add(decode_hist(&w.send_lag));
        total.cpu_s += w.cpu_s;
    }
    let send_window = args.duration.max(1e-9);
    let (rooms, members) = match (&args.plan, args.mode) {
        (Some(p), Mode::Fanout | Mode::Acks) => std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<seed::Plan>(&t).ok())
            .map(|plan| (plan.rooms.len(), plan.rooms.first().map_or(0, |r| r.members.len())))
            .unwrap_or((args.rooms, args.members)),
        _ => (args.rooms, args.members),
    };
    let res = RunResult {
        label: args.label.clone(),
        proto: format!("{:?}", args.proto).to_lowercase(),
        mode: format!("{:?}", args.mode).to_lowercase(),
        connections: total.connections,
        rooms,
        members,
        offered_rate: args.rate,
        duration_s: elapsed,
        sent: total.sent,
        acked: total.acked,
        deliveries: total.deliveries,
        expected: total.expected,
        lost: total.lost,
        duplicated: total.duplicated,
        errors: total.errors,
        deliveries_per_s: total.deliveries as f64 / send_window,
        latency_us: percentiles(&lat),
        ack_latency_us: percentiles(&ack),
        send_lag_us: percentiles(&lag),
        client_cpu_s: total.cpu_s,
        setup_conns_per_s: total.connections as f64 / setup_secs.max(1e-9),
        server_cpu_s: cpu,
        deliveries_per_cpu_s: if cpu > 0.0 { total.deliveries as f64 / cpu } else { 0.0 },
        acks_per_s: total.acked as f64 / send_window,
        server_rss_kib_idle: rss_idle,
        server_rss_kib_end: rss_end,
        server_rss_kib_base: rss_base,
        rss_per_conn_kib: if total.connections > 0 {
            rss_idle.saturating_sub(rss_base) as f64 / total.connections as f64
        } else {
            0.0
        },
        sessions_per_shard,
        server_pids: pids.clone(),
    };
    Ok(res)
}

/// Runs a one-client measurement on a current-thread runtime and prints its JSON result.
fn print_json(measure: impl std::future::Future<Output = anyhow::Result<serde_json::Value>>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let v = rt.block_on(measure)?;
    println!("{v}");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Seed {
            data_dir,
            mongo_url,
            users,
            rooms,
            members,
            plan,
        } => seed::seed(&data_dir, mongo_url.as_deref(), users, rooms, members).and_then(|p| {
            std::fs::write(&plan, serde_json::to_vec(&p)?)?;
            eprintln!(
                "seeded {} users and {} rooms into {}; plan in {}",
                p.users.len(),
                p.rooms.len(),
                data_dir.display(),
                plan.display()
            );
            Ok(())
        }),
        Cmd::MongoDrop { mongo_url } => seed::drop_mongo(&mongo_url),
        Cmd::Run(args) => run_parent(args.clone()).and_then(|r| {
            let line = serde_json::to_string(&r)?;
            println!("{line}");
            if let Some(out) = &args.out {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
                writeln!(f, "{line}")?;
            }
            eprintln!(
                "{} {}: {} conns, sent {}, deliveries {} ({:.0}/s), lost {}, dup {}, p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, \
                 server CPU {:.2} s ({:.0} deliveries/CPU-s), client CPU {:.2} s, send lag p99 {} µs, setup {:.0} conns/s, RSS {} KiB ({:.1} KiB/conn over the base), acks {:.0}/s (p50 {} µs, p99 {} µs), shards {:?}",
                r.proto, r.mode, r.connections, r.sent, r.deliveries, r.deliveries_per_s, r.lost, r.duplicated,
                r.latency_us.p50, r.latency_us.p99, r.latency_us.p999, r.latency_us.max,
                r.server_cpu_s, r.deliveries_per_cpu_s, r.client_cpu_s, r.send_lag_us.p99, r.setup_conns_per_s, r.server_rss_kib_idle, r.rss_per_conn_kib,
                r.acks_per_s, r.ack_latency_us.p50, r.ack_latency_us.p99, r.sessions_per_shard
            );
            Ok(())
        }),
        Cmd::RcDump(args) => rcdump::generate(&args),
        Cmd::Stall(args) => print_json(stall::run(args)),
        Cmd::Soak(args) => print_json(soak::run(args)),
        Cmd::Storm(args) => print_json(storm::run(args)),
        Cmd::TypingRelay(args) => print_json(relay::run(args)),
        Cmd::RefRelay(args) => refrelay::serve(args),
        Cmd::Mixed(args) => print_json(mixed::run(args)),
        Cmd::Worker { index, args_json } => serde_json::from_str(&args_json)
            .map_err(anyhow::Error::from)
            .and_then(|args| worker::worker(index, args)),
    };
    if let Err(e) = res {
        eprintln!("chatd-load: {e:#}");
        std::process::exit(1);
    }
}
