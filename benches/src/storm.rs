//! `chatd-load storm`: a restart under load. Seeds a data directory with `--clients` users in
//! rooms of `--members`, starts the real `chatd`, connects every client (resume login, one room
//! subscription), checks a first message per room arrives, then sends SIGTERM. Each client
//! reads the delay in its 1012 close reason ("reconnect in N ms"), waits it, and reconnects
//! (retrying every 50–250 ms while nothing listens) to a new chatd started on the same port and
//! data right after the old one exits. Meanwhile a second message per room is sent as soon as the
//! new server listens, while most clients are still away: each client must get it, live or from
//! `loadMissedMessages`. Reports how long until every client was back, logged in and
//! re-subscribed, the reconnect rate, login latency, and server and client CPU. Loopback only;
//! the only processes it signals are the two chatd it started, by pid.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::process::ChatdProcess;
use crate::seed;

#[derive(Clone, Debug, clap::Args)]
pub struct StormArgs {
    /// The chatd binary to run.
    #[arg(long)]
    pub chatd: PathBuf,
    /// Data directory (created and seeded; must not exist yet).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Connected clients, each its own user.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Members per room.
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Shards of the server.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// The server's `limits.reconnect_spread_ms`.
    #[arg(long, default_value_t = 5000)]
    pub spread_ms: u64,
    /// Every client must be back within this many seconds of the SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub deadline_secs: u64,
}

/// Clients making their first connection at once.
const INITIAL_JOINS: usize = 256;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Starts chatd on the storm's port and data directory; its log goes beside the data.
fn start_server(args: &StormArgs, port: u16, config: &std::path::Path) -> anyhow::Result<ChatdProcess> {
    let (listen, shards) = (format!("127.0.0.1:{port}"), args.shards.to_string());
    let (data_dir, config) = (args.data_dir.display().to_string(), config.display().to_string());
    let log_filter = std::env::var("STORM_SERVER_LOG").unwrap_or_else(|_| "info".into());
    ChatdProcess::start(
        &args.chatd,
        &[
            "serve",
            "--listen",
            &listen,
            "--shards",
            &shards,
            "--data-dir",
            &data_dir,
            "--config",
            &config,
        ],
        &[("RUST_LOG", log_filter)],
        Some(&args.data_dir.with_extension("log")),
    )
}

/// A process's CPU seconds so far (0 when it is gone).
fn cpu_secs(pid: u32) -> f64 {
    crate::cpu_secs(&[pid]).unwrap_or(0.0)
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string())).await?;
    Ok(())
}

/// What a client hears next: a frame, or the server's close.
enum Heard {
    Frame(Value),
    Closed(Option<(u16, String)>),
}

async fn hear(ws: &mut Ws) -> Heard {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if v["msg"] == "ping" {
                    if send(ws, json!({"msg": "pong"})).await.is_err() {
                        return Heard::Closed(None);
                    }
                    continue;
                }
                return Heard::Frame(v);
            }
            Some(Ok(Message::Close(f))) => {
                return Heard::Closed(f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Heard::Closed(None),
        }
    }
}

/// Connects, resumes the session's login and subscribes to `rid`; waits for both answers.
async fn join(url: &str, token: &str, rid: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    send(&mut ws, json!({"msg": "connect", "version": "1", "support": ["1"]})).await?;
    send(
        &mut ws,
        json!({"msg": "method", "id": "login", "method": "login", "params": [{"resume": token}]}),
    )
    .await?;
    send(
        &mut ws,
        json!({"msg": "sub", "id": "room", "name": "stream-room-messages", "params": [rid, false]}),
    )
    .await?;
    let (mut logged_in, mut subscribed) = (false, false);
    while !(logged_in && subscribed) {
        match hear(&mut ws).await {
            Heard::Frame(f) if f["msg"] == "result" && f["id"] == "login" => {
                if f.get("error").is_some() {
                    bail!("login: {f}");
                }
                logged_in = true;
            }
            Heard::Frame(f) if f["msg"] == "ready" => subscribed = true,
            Heard::Frame(f) if f["msg"] == "nosub" => bail!("subscription refused: {f}"),
            Heard::Frame(_) => {}
            Heard::Closed(close) => bail!("closed while joining: {close:?}"),
        }
    }
    Ok(ws)
}

/// One client's account of the storm.
#[derive(Default)]
struct ClientReport {
    /// Milliseconds from the close to logged in and re-subscribed again.
    back_after_ms: Option<u64>,
    /// Milliseconds from the successful connect to the login answer.
    login_ms: Option<u64>,
    refused_attempts: u64,
    close_hint_ms: Option<u64>,
    close_code: Option<u16>,
}

struct Shared {
    url: String,
    /// Bounds the clients making their first connection at once.
    gate: tokio::sync::Semaphore,
    /// Clients logged in and subscribed.
    joined: AtomicUsize,
    /// Clients that have the first message.
    first: AtomicUsize,
    /// Clients back and holding the second message.
    complete: AtomicUsize,
    stop: tokio::sync::watch::Receiver<bool>,
}

fn texts_of(f: &Value) -> Vec<String> {
    f["fields"]["args"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["msg"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn client(shared: Arc<Shared>, token: String, rid: String, room: usize) -> ClientReport {
    let mut report = ClientReport::default();
    let (first, second) = (format!("a-{room}"), format!("b-{room}"));
    let mut seen: HashSet<String> = HashSet::new();
    // The newest message time seen: `loadMissedMessages` returns what came after it.
    let mut last_ts = 0i64;
    let mut stop = shared.stop.clone();
    // The first connection: at most `INITIAL_JOINS` clients joining at once (a burst of thousands
    // of connects overflows the listen backlog), each retrying a failed attempt as a client does.
    let mut attempts = 0;
    let mut ws = loop {
        let joined = {
            let _permit = shared.gate.acquire().await;
            join(&shared.url, &token, &rid).await
        };
        match joined {
            Ok(ws) => break ws,
            Err(e) if attempts >= 20 => {
                eprintln!("storm: a client could not join in 20 attempts: {e:#}");
                return report;
            }
            Err(_) => {
                attempts += 1;
                let pause = rand::thread_rng().gen_range(50..=250);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    };
    shared.joined.fetch_add(1, Ordering::Relaxed);
    // Phase 1: live, until the server closes.
    let closed_at;
    loop {
        match hear(&mut ws).await {
            Heard::Frame(f) if f["msg"] == "changed" => {
                if let Some(ts) = f["fields"]["args"][0]["ts"]["$date"].as_i64() {
                    last_ts = last_ts.max(ts);
                }
                for t in texts_of(&f) {
                    if t == first && seen.insert(t.clone()) {
                        shared.first.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.insert(t);
                }
            }
            Heard::Frame(_) => {}
            Heard::Closed(close) => {
                closed_at = Instant::now();
                if let Some((code, reason)) = close {
                    report.close_code = Some(code);
                    report.close_hint_ms = reason
                        .strip_prefix(chatd::server::RESTART_CLOSE_PREFIX)
                        .and_then(|r| r.strip_suffix(" ms"))
                        .and_then(|n| n.parse().ok());
                }
                break;
            }
        }
    }
    drop(ws);
    // Phase 2: wait the hinted delay, then reconnect until the new server takes us.
    tokio::time::sleep(Duration::from_millis(report.close_hint_ms.unwrap_or(0))).await;
    let mut ws = loop {
        if *stop.borrow() {
            return report;
        }
        let attempt = Instant::now();
        match join(&shared.url, &token, &rid).await {
            Ok(ws) => {
                report.login_ms = Some(attempt.elapsed().as_millis() as u64);
                break ws;
            }
            Err(_) => {
                report.refused_attempts += 1;
                let pause = rand::thread_rng().gen_range(50..=250);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    };
    report.back_after_ms = Some(closed_at.elapsed().as_millis() as u64);
    // What was sent while away: everything after the newest message seen before the close.
    let since = json!({"$date": last_ts});
    if send(
        &mut ws,
        json!({"msg": "method", "id": "missed", "method": "loadMissedMessages", "params": [rid, since]}),
    )
    .await
    .is_err()
    {
        return report;
    }
    let mut counted = false;
    loop {
        if !counted && seen.contains(&second) {
            counted = true;
            shared.complete.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            heard = hear(&mut ws) => match heard {
                Heard::Frame(f) if f["msg"] == "changed" => seen.extend(texts_of(&f)),
                Heard::Frame(f) if f["msg"] == "result" && f["id"] == "missed" => {
                    if let Some(list) = f["result"].as_array() {
                        seen.extend(list.iter().filter_map(|m| m["msg"].as_str().map(str::to_owned)));
                    }
                }
                Heard::Frame(_) => {}
                Heard::Closed(_) => return report,
            },
            _ = stop.changed() => return report,
        }
    }
}

/// Sends one message to every room, each from its first member (a fresh connection each).
async fn send_round(url: &str, plan: &seed::Plan, tag: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    for (i, room) in plan.rooms.iter().enumerate() {
        let sender = room
            .members
            .first()
            .and_then(|m| plan.users.get(*m))
            .ok_or_else(|| anyhow!("empty room"))?;
        let mut ws = join(url, &sender.token, &room.rid)
            .await
            .with_context(|| format!("round {tag}, room {i}, {:.1} s in", started.elapsed().as_secs_f64()))?;
        let id = format!("{tag}-{i}");
        send(&mut ws, json!({"msg": "method", "id": id, "method": "sendMessage", "params": [{"_id": format!("storm-{tag}-{i}"), "rid": room.rid, "msg": id}]})).await?;
        loop {
            match hear(&mut ws).await {
                Heard::Frame(f) if f["msg"] == "result" && f["id"] == id.as_str() => {
                    if f.get("error").is_some() {
                        bail!("send {id}: {f}");
                    }
                    break;
                }
                Heard::Frame(_) => {}
                Heard::Closed(_) => bail!("closed while sending {id}"),
            }
        }
    }
    Ok(())
}

fn percentile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

pub async fn run(args: StormArgs) -> anyhow::Result<Value> {
    if args.data_dir.exists() {
        bail!(
            "{} exists; the storm seeds a new data directory",
            args.data_dir.display()
        );
    }
    chatd::raise_fd_limit();
    let rooms = args.clients.div_ceil(args.members).max(1);
    let plan = seed::seed(&args.data_dir, None, args.clients, rooms, args.members)?;
    let config = args.data_dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nreconnect_spread_ms = {}\nmax_connections_per_shard = 19000\n",
            args.spread_ms
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("ws://127.0.0.1:{port}/websocket");
    let server = start_server(&args, port, &config)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        url: url.clone(),
        gate: tokio::sync::Semaphore::new(INITIAL_JOINS),
        joined: AtomicUsize::new(0),
        first: AtomicUsize::new(0),
        complete: AtomicUsize::new(0),
        stop: stop_rx,
    });
    // Each client is one user; its room is the first room listing it.
    let mut room_of = vec![None; plan.users.len()];
    for (ri, r) in plan.rooms.iter().enumerate() {
        for m in &r.members {
            if let Some(slot) = room_of.get_mut(*m) {
                slot.get_or_insert(ri);
            }
        }
    }
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for (ui, u) in plan.users.iter().enumerate() {
        let Some(ri) = room_of.get(ui).copied().flatten() else {
            continue;
        };
        let rid = plan.rooms[ri].rid.clone();
        tasks.push(tokio::spawn(client(shared.clone(), u.token.clone(), rid, ri)));
    }
    let clients = tasks.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.joined.load(Ordering::Relaxed) < clients {
        if Instant::now() > deadline {
            bail!(
                "only {} of {clients} clients joined",
                shared.joined.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send_round(&url, &plan, "a").await?;
    while shared.first.load(Ordering::Relaxed) < clients {
        if Instant::now() > deadline {
            bail!(
                "only {} of {clients} clients got the first message",
                shared.first.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected_in = connect_started.elapsed().as_secs_f64();

    // The restart.
    let old_pid = server.pid();
    let old_cpu = cpu_secs(old_pid);
    let term_at = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate()).await??;
    let drained_in = term_at.elapsed().as_secs_f64();
    let server = start_server(&args, port, &config)?;
    let listening_after = term_at.elapsed().as_secs_f64();
    let new_pid = server.pid();
    let client_cpu_before = cpu_secs(std::process::id());
    send_round(&url, &plan, "b").await?;
    let deadline = term_at + Duration::from_secs(args.deadline_secs);
    while shared.complete.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_back_after = term_at.elapsed().as_secs_f64();
    let server_cpu = cpu_secs(new_pid);
    let client_cpu = cpu_secs(std::process::id()) - client_cpu_before;
    let _ = stop_tx.send(true);
    let mut reports = Vec::with_capacity(clients);
    for t in tasks {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(30), t).await {
            reports.push(r);
        }
    }
    let complete = shared.complete.load(Ordering::Relaxed);
    drop(server);

    let mut login = Histogram::<u64>::new(3)?;
    let mut back = Histogram::<u64>::new(3)?;
    let (mut refused, mut hinted, mut code_1012) = (0u64, 0usize, 0usize);
    let mut returns: Vec<u64> = Vec::new();
    for r in &reports {
        if let Some(ms) = r.login_ms {
            login.record(ms.max(1))?;
        }
        if let Some(ms) = r.back_after_ms {
            back.record(ms.max(1))?;
            returns.push(ms);
        }
        refused += r.refused_attempts;
        hinted += usize::from(r.close_hint_ms.is_some());
        code_1012 += usize::from(r.close_code == Some(u16::from(CloseCode::Restart)));
    }
    returns.sort_unstable();
    // Reconnect rate over the middle 90 % of returns (the tails are the spread's edges).
    let rate = match (returns.get(returns.len() / 20), returns.get(returns.len() * 19 / 20)) {
        (Some(a), Some(b)) if b > a => (returns.len() as f64 * 0.9) / ((b - a) as f64 / 1000.0),
        _ => 0.0,
    };
    let lost = clients - complete;
    let report = json!({
        "scenario": "restart-storm",
        "clients": clients,
        "rooms": plan.rooms.len(),
        "shards": args.shards,
        "spread_ms": args.spread_ms,
        "connected_in_s": connected_in,
        "drain_s": drained_in,
        "old_exit": status.code(),
        "old_server_cpu_s": old_cpu,
        "new_listening_after_s": listening_after,
        "closed_with_1012": code_1012,
        "closed_with_delay_hint": hinted,
        "back_and_complete": complete,
        "missing_second_message_or_not_back": lost,
        "all_back_after_s": all_back_after,
        "deadline_s": args.deadline_secs,
        "back_after_ms": {"p50": percentile(&back, 0.5), "p99": percentile(&back, 0.99), "max": back.max()},
        "login_ms": {"p50": percentile(&login, 0.5), "p99": percentile(&login, 0.99), "max": login.max()},
        "reconnects_per_s": rate,
        "refused_connect_attempts": refused,
        "new_server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
    });
    eprintln!(
        "storm: {clients} clients; SIGTERM → new server listening after {listening_after:.2} s; {complete} back with every message after {all_back_after:.2} s (deadline {} s); login p50 {} ms p99 {} ms; {rate:.0} reconnects/s; new server CPU {server_cpu:.2} s, client CPU {client_cpu:.2} s",
        args.deadline_secs,
        percentile(&login, 0.5),
        percentile(&login, 0.99),
    );
    if lost > 0 {
        println!("{report}");
        bail!(
            "{lost} of {clients} clients were not back with every message within {} s",
            args.deadline_secs
        );
    }
    Ok(report)
}
