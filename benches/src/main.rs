//! `chatd-load`: the load generator for chatd and its peers.
//!
//! `chatd-load seed` prepares a chatd data directory (users with tokens, rooms with members).
//! `chatd-load run` opens connections across several worker processes (each process has its own
//! 20,000-file limit), logs in (chatd: resume tokens), subscribes every member to its room, then
//! sends at a fixed offered rate (open loop: send times are scheduled, not paced by replies) and
//! reports deliveries per second, lost and duplicated deliveries, send→receive latency
//! (HdrHistogram), connection setup rate, and the server's CPU seconds and RSS read from /proc.
//! Every run is bounded in time and connections and targets loopback only.

mod process;
mod proto;
mod rcdump;
mod relay;
mod seed;
mod soak;
mod stall;
mod storm;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use proto::{Conn, Event};

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
        #[arg(long)]
        users: usize,
        #[arg(long, default_value_t = 0)]
        rooms: usize,
        #[arg(long, default_value_t = 0)]
        members: usize,
        #[arg(long)]
        plan: PathBuf,
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
    /// Runtime threads per worker process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
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

/// What a worker reports.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerResult {
    connections: usize,
    setup_secs: f64,
    sent: u64,
    acked: u64,
    deliveries: u64,
    expected: u64,
    lost: u64,
    duplicated: u64,
    errors: u64,
    latency: String,
    ack_latency: String,
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
pub struct Percentiles {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    count: u64,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        count: h.len(),
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_hist()))
}

fn unreachable_hist() -> Histogram<u64> {
    // `Histogram::new(3)` cannot fail; this keeps the code free of panics anyway.
    Histogram::new_with_max(1 << 40, 2).unwrap_or_else(|_| std::process::exit(70))
}

fn encode_hist(h: &Histogram<u64>) -> String {
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
fn cpu_secs(pids: &[u32]) -> Result<f64, u32> {
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

fn rss_kib(pids: &[u32]) -> u64 {
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

fn check_loopback(url: &str) -> anyhow::Result<()> {
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
        results.push(serde_json::from_str::<WorkerResult>(line.trim()).context("worker result")?);
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
    let mut total = WorkerResult::default();
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

// ---------- a worker ----------

/// One connection's part in the workload.
#[derive(Clone)]
struct Role {
    /// Index of the room in the plan / synthetic room number.
    room: usize,
    /// Room id (chatd) or name (peers).
    room_key: String,
    /// Global sender number when this connection sends.
    sender: Option<u32>,
    receives: bool,
    /// chatd: the login token.
    token: Option<String>,
}

/// Shared counters of a worker.
struct Shared {
    sent: Vec<AtomicU64>,
    deliveries: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

fn plan_roles(args: &RunArgs, index: usize) -> anyhow::Result<(Vec<Role>, usize, Vec<usize>)> {
    let procs = args.procs.max(1);
    let plan = match &args.plan {
        Some(p) => Some(serde_json::from_str::<seed::Plan>(&std::fs::read_to_string(p)?)?),
        None => None,
    };
    let mut roles = Vec::new();
    // Sender number → room, over the whole run.
    let mut sender_rooms = Vec::new();
    match args.mode {
        Mode::Idle => {
            let n = args.connections;
            for c in (0..n).filter(|c| c % procs == index) {
                let token = plan.as_ref().and_then(|p| p.users.get(c)).map(|u| u.token.clone());
                if args.proto == Proto::Chatd && token.is_none() {
                    bail!("the plan has fewer than {n} users");
                }
                roles.push(Role {
                    room: 0,
                    room_key: String::new(),
                    sender: None,
                    receives: false,
                    token,
                });
            }
        }
        Mode::Fanout | Mode::Acks => {
            let rooms: Vec<(String, Vec<Option<String>>)> = match (&plan, args.proto) {
                (Some(p), Proto::Chatd) => p
                    .rooms
                    .iter()
                    .map(|r| {
                        let tokens = r
                            .members
                            .iter()
                            .map(|i| p.users.get(*i).map(|u| u.token.clone()))
                            .collect();
                        (r.rid.clone(), tokens)
                    })
                    .collect(),
                (None, Proto::Chatd) => bail!("--plan is required for chatd"),
                _ => (0..args.rooms)
                    .map(|r| (format!("r{r}"), vec![None; args.members]))
                    .collect(),
            };
            let per_room = if args.mode == Mode::Acks {
                // Acks: `senders` in all, spread over the rooms; nobody receives.
                args.senders.div_ceil(rooms.len().max(1))
            } else {
                args.senders
            };
            let cap_total = if args.mode == Mode::Acks {
                args.senders
            } else {
                usize::MAX
            };
            let mut next_sender = 0u32;
            for (r, (key, members)) in rooms.iter().enumerate() {
                let senders_here = per_room.min(members.len());
                for (k, token) in members.iter().enumerate() {
                    let sender = if k < senders_here && (next_sender as usize) < cap_total {
                        let s = next_sender;
                        next_sender += 1;
                        sender_rooms.push(r);
                        Some(s)
                    } else {
                        None
                    };
                    let receives = args.mode == Mode::Fanout;
                    if args.mode == Mode::Acks && sender.is_none() {
                        continue;
                    }
                    if r % procs == index {
                        roles.push(Role {
                            room: r,
                            room_key: key.clone(),
                            sender,
                            receives,
                            token: token.clone(),
                        });
                    }
                }
            }
        }
    }
    let total_senders = sender_rooms.len();
    Ok((roles, total_senders, sender_rooms))
}

fn worker(index: usize, args: RunArgs) -> anyhow::Result<()> {
    chatd::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let res = rt.block_on(worker_async(index, args))?;
    println!("{}", serde_json::to_string(&res)?);
    Ok(())
}

/// Per-connection outcome.
struct ConnReport {
    received: HashMap<u32, Vec<u8>>,
    /// Distinct messages received per sender.
    distinct: HashMap<u32, u64>,
    latency: Histogram<u64>,
    ack_latency: Histogram<u64>,
}

async fn worker_async(index: usize, args: RunArgs) -> anyhow::Result<WorkerResult> {
    let (roles, total_senders, sender_rooms) = plan_roles(&args, index)?;
    let shared = Arc::new(Shared {
        sent: (0..total_senders).map(|_| AtomicU64::new(0)).collect(),
        deliveries: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    // Setup: connect everyone, bounded concurrency.
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let mut setups = Vec::with_capacity(roles.len());
    for role in roles.iter().cloned() {
        let sem = sem.clone();
        let url = args.url.clone();
        let proto = args.proto;
        setups.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            Conn::open(
                proto,
                &url,
                role.token.as_deref(),
                role.receives.then_some(role.room_key.as_str()),
            )
            .await
        }));
    }
    let mut conns = Vec::with_capacity(roles.len());
    for (s, role) in setups.into_iter().zip(roles.iter().cloned()) {
        let conn = s.await.map_err(|e| anyhow!("setup task: {e}"))??;
        conns.push((conn, role));
    }
    let setup_secs = started.elapsed().as_secs_f64();
    // Tell the parent, wait for GO.
    println!("READY");
    std::io::stdout().flush()?;
    let mut go = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().lock().read_line(&mut go)).await??;

    let per_sender_rate = if total_senders > 0 {
        args.rate / total_senders as f64
    } else {
        0.0
    };
    let duration = Duration::from_secs_f64(args.duration);
    let drain = Duration::from_secs_f64(args.drain);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let send_end = start + duration;
    // Progress line (worker 0 only).
    let progress = (index == 0).then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let sent: u64 = shared.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
                eprintln!(
                    "[{:5.1}s] worker 0: sent {sent}, acked {}, deliveries {}",
                    t.elapsed().as_secs_f64(),
                    shared.acked.load(Ordering::Relaxed),
                    shared.deliveries.load(Ordering::Relaxed)
                );
            }
        })
    });
    let mut tasks = Vec::with_capacity(conns.len());
    let connections = conns.len();
    for (conn, role) in conns {
        let shared = shared.clone();
        let mode = args.mode;
        let idle_for = duration;
        let room_senders: Vec<u32> = sender_rooms
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == role.room)
            .map(|(s, _)| s as u32)
            .collect();
        tasks.push(tokio::spawn(async move {
            drive(
                conn,
                role,
                room_senders,
                shared,
                mode,
                per_sender_rate,
                start,
                send_end,
                drain,
                idle_for,
            )
            .await
        }));
    }
    let mut reports = Vec::with_capacity(tasks.len());
    let mut roles_done = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok((report, role)) => {
                reports.push(report);
                roles_done.push(role);
            }
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    // Loss and duplicates: every receiving member should get every message of its room's senders.
    let mut lat = new_hist();
    let mut ack = new_hist();
    let (mut expected, mut lost, mut dup) = (0u64, 0u64, 0u64);
    for (rep, role) in reports.iter().zip(&roles_done) {
        let _ = lat.add(&rep.latency);
        let _ = ack.add(&rep.ack_latency);
        if !role.receives {
            continue;
        }
        for (s, room) in sender_rooms.iter().enumerate() {
            if *room != role.room {
                continue;
            }
            let sent = shared.sent.get(s).map_or(0, |c| c.load(Ordering::Relaxed));
            expected += sent;
            let got = rep.received.get(&(s as u32));
            for seq in 0..sent as usize {
                match got.and_then(|g| g.get(seq)).copied().unwrap_or(0) {
                    0 => lost += 1,
                    1 => {}
                    n => dup += u64::from(n) - 1,
                }
            }
        }
    }
    Ok(WorkerResult {
        connections,
        setup_secs,
        sent: shared.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum(),
        acked: shared.acked.load(Ordering::Relaxed),
        deliveries: shared.deliveries.load(Ordering::Relaxed),
        expected,
        lost,
        duplicated: dup,
        errors: shared.errors.load(Ordering::Relaxed),
        latency: encode_hist(&lat),
        ack_latency: encode_hist(&ack),
    })
}

/// Runs one connection through the send window and the drain.
#[allow(clippy::too_many_arguments)]
async fn drive(
    mut conn: Conn,
    role: Role,
    room_senders: Vec<u32>,
    shared: Arc<Shared>,
    mode: Mode,
    rate: f64,
    start: tokio::time::Instant,
    send_end: tokio::time::Instant,
    drain: Duration,
    idle_for: Duration,
) -> (ConnReport, Role) {
    let mut report = ConnReport {
        received: HashMap::new(),
        distinct: HashMap::new(),
        latency: new_hist(),
        ack_latency: new_hist(),
    };
    let hard_end = send_end + drain;
    if mode == Mode::Idle {
        let _ = tokio::time::timeout_at(start + idle_for, conn.idle()).await;
        return (report, role);
    }
    let period = if rate > 0.0 {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        Duration::from_secs(3600)
    };
    // Spread the senders' schedules over one period.
    let offset = role
        .sender
        .map(|s| period.mul_f64(f64::from(s % 1000) / 1000.0))
        .unwrap_or_default();
    let mut next_send = start + offset;
    let mut seq: u32 = 0;
    let mut pending_acks: HashMap<u64, u64> = HashMap::new();
    loop {
        let now = tokio::time::Instant::now();
        // Acks mode is closed-loop: each sender waits for its acknowledgment before the next.
        let sending = role.sender.is_some() && now < send_end && (mode != Mode::Acks || pending_acks.is_empty());
        if !sending && now >= send_end {
            // Drain: done once this connection has everything its room's senders sent, or at
            // the hard end.
            let complete = !role.receives || room_complete(&report, &room_senders, &shared);
            if (complete && pending_acks.is_empty()) || now >= hard_end {
                break;
            }
        }
        let wake = if sending { next_send.min(hard_end) } else { hard_end };
        tokio::select! {
            ev = conn.next_event() => match ev {
                Ok(Event::Message { sender, seq, sent_ns }) => {
                    let lat_us = now_ns().saturating_sub(sent_ns) / 1000;
                    let _ = report.latency.record(lat_us.max(1));
                    shared.deliveries.fetch_add(1, Ordering::Relaxed);
                    let v = report.received.entry(sender).or_default();
                    let i = seq as usize;
                    if v.len() <= i {
                        v.resize(i + 1, 0);
                    }
                    if let Some(c) = v.get_mut(i) {
                        if *c == 0 {
                            *report.distinct.entry(sender).or_default() += 1;
                        }
                        *c = c.saturating_add(1);
                    }
                }
                Ok(Event::Ack { id }) => {
                    if let Some(t) = pending_acks.remove(&id) {
                        let _ = report.ack_latency.record((now_ns().saturating_sub(t) / 1000).max(1));
                        shared.acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Event::Refused { id }) => {
                    if pending_acks.remove(&id).is_some() {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Event::Other) => {}
                Err(_) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                if sending && tokio::time::Instant::now() >= next_send {
                    if let Some(s) = role.sender {
                        let t = now_ns();
                        match conn.send(&role.room_key, s, seq, t).await {
                            Ok(ack_id) => {
                                if let Some(id) = ack_id {
                                    pending_acks.insert(id, t);
                                }
                                if let Some(c) = shared.sent.get(s as usize) {
                                    c.fetch_add(1, Ordering::Relaxed);
                                }
                                seq += 1;
                            }
                            Err(_) => {
                                shared.errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                        next_send = if mode == Mode::Acks { tokio::time::Instant::now() } else { next_send + period };
                    }
                }
            }
        }
    }
    conn.close().await;
    (report, role)
}

/// Whether this connection has heard every message its room's senders have sent so far.
fn room_complete(report: &ConnReport, room_senders: &[u32], shared: &Shared) -> bool {
    room_senders.iter().all(|s| {
        let sent = shared.sent.get(*s as usize).map_or(0, |c| c.load(Ordering::Relaxed));
        report.distinct.get(s).copied().unwrap_or(0) >= sent
    })
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
            users,
            rooms,
            members,
            plan,
        } => seed::seed(&data_dir, users, rooms, members).and_then(|p| {
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
        Cmd::Run(args) => run_parent(args.clone()).and_then(|r| {
            let line = serde_json::to_string(&r)?;
            println!("{line}");
            if let Some(out) = &args.out {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
                writeln!(f, "{line}")?;
            }
            eprintln!(
                "{} {}: {} conns, sent {}, deliveries {} ({:.0}/s), lost {}, dup {}, p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, \
                 server CPU {:.2} s ({:.0} deliveries/CPU-s), setup {:.0} conns/s, RSS {} KiB ({:.1} KiB/conn over the base), acks {:.0}/s (p50 {} µs, p99 {} µs), shards {:?}",
                r.proto, r.mode, r.connections, r.sent, r.deliveries, r.deliveries_per_s, r.lost, r.duplicated,
                r.latency_us.p50, r.latency_us.p99, r.latency_us.p999, r.latency_us.max,
                r.server_cpu_s, r.deliveries_per_cpu_s, r.setup_conns_per_s, r.server_rss_kib_idle, r.rss_per_conn_kib,
                r.acks_per_s, r.ack_latency_us.p50, r.ack_latency_us.p99, r.sessions_per_shard
            );
            Ok(())
        }),
        Cmd::RcDump(args) => rcdump::generate(&args),
        Cmd::Stall(args) => print_json(stall::run(args)),
        Cmd::Soak(args) => print_json(soak::run(args)),
        Cmd::Storm(args) => print_json(storm::run(args)),
        Cmd::TypingRelay(args) => print_json(relay::run(args)),
        Cmd::Worker { index, args_json } => serde_json::from_str(&args_json)
            .map_err(anyhow::Error::from)
            .and_then(|args| worker(index, args)),
    };
    if let Err(e) = res {
        eprintln!("chatd-load: {e:#}");
        std::process::exit(1);
    }
}
