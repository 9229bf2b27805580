//! `chatd-load mixed`: the seed deployment's day as a workload (scenario S7). Users of a store
//! imported from a `rc-dump` log in with their resume tokens and behave like Rocket.Chat clients:
//! they list their rooms, subscribe to their own message and notification streams, and for the
//! run's duration the active ones type and then send paragraph-sized messages (mostly in direct
//! messages and the large channels), load history, switch between away and online, and some
//! reconnect (resume token, then `loadMissedMessages`). Reports the server's CPU share and memory,
//! and the latency of deliveries and of method calls.
//!
//! Every message carries its send time, so a delivery's latency is measured on receipt (one host,
//! one clock). Loss is not counted here (S2/S3 count it exactly); this scenario is about cost and
//! latency under a realistic mix.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::proto::{find_payload, ws_config, Event};
use crate::{cpu_secs, new_hist, now_ns, percentiles, rss_kib};

#[derive(Clone, Debug, clap::Args)]
pub struct MixedArgs {
    /// chatd's WebSocket URL (loopback).
    #[arg(long)]
    pub url: String,
    /// Users connected (user0 .. user{N-1} of the dump).
    #[arg(long, default_value_t = 1000)]
    pub connected: usize,
    /// Of those, how many send messages and load history.
    #[arg(long, default_value_t = 600)]
    pub active: usize,
    /// Of those connected, how many start away.
    #[arg(long, default_value_t = 340)]
    pub away: usize,
    /// Mean seconds between one active user's messages.
    #[arg(long, default_value_t = 15.0)]
    pub message_every_s: f64,
    /// Mean seconds between one active user's history loads.
    #[arg(long, default_value_t = 60.0)]
    pub history_every_s: f64,
    /// Mean seconds between one user's switches between away and online.
    #[arg(long, default_value_t = 120.0)]
    pub presence_every_s: f64,
    /// Share of connected users who drop their connection once and come back.
    #[arg(long, default_value_t = 0.10)]
    pub reconnect_fraction: f64,
    /// Characters of message text.
    #[arg(long, default_value_t = 500)]
    pub paragraph_chars: usize,
    /// Seconds of mixed load after everyone is connected (hard upper bound: 1800).
    #[arg(long, default_value_t = 300.0)]
    pub duration: f64,
    /// Server processes to measure.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What every user task records into (one thread).
struct Figures {
    delivery: RefCell<Histogram<u64>>,
    method: RefCell<Histogram<u64>>,
    by_method: RefCell<HashMap<&'static str, Histogram<u64>>>,
    reconnect: RefCell<Histogram<u64>>,
    sent: Cell<u64>,
    deliveries: Cell<u64>,
    typing_events: Cell<u64>,
    reconnects: Cell<u64>,
    errors: Cell<u64>,
}

impl Figures {
    fn new() -> Self {
        Self {
            delivery: RefCell::new(new_hist()),
            method: RefCell::new(new_hist()),
            by_method: RefCell::default(),
            reconnect: RefCell::new(new_hist()),
            sent: Cell::default(),
            deliveries: Cell::default(),
            typing_events: Cell::default(),
            reconnects: Cell::default(),
            errors: Cell::default(),
        }
    }

    fn record(h: &RefCell<Histogram<u64>>, us: u64) {
        let _ = h.borrow_mut().record(us.max(1));
    }

    fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }

    fn method(&self, kind: &'static str, us: u64) {
        Self::record(&self.method, us);
        let mut by = self.by_method.borrow_mut();
        let _ = by.entry(kind).or_insert_with(new_hist).record(us.max(1));
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One logged-in client connection.
struct Client {
    ws: Ws,
    next_id: u64,
    /// Calls waiting for their result: id → (kind, sent at, ns).
    pending: HashMap<u64, (&'static str, u64)>,
}

struct RoomInfo {
    id: String,
    t: String,
    users: u64,
}

impl Client {
    async fn connect(url: &str, token: &str) -> anyhow::Result<(Self, String)> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
        let mut c = Self {
            ws,
            next_id: 0,
            pending: HashMap::new(),
        };
        c.send(json!({"msg": "connect", "version": "1", "support": ["1"]}))
            .await?;
        let r = c.call_wait("login", json!([{"resume": token}])).await?;
        let uid = r["id"]
            .as_str()
            .ok_or_else(|| anyhow!("login answered {r}"))?
            .to_owned();
        Ok((c, uid))
    }

    async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(v.to_string())).await?;
        Ok(())
    }

    /// Sends a method call and records it as pending; returns its id.
    async fn call(&mut self, kind: &'static str, method: &str, params: Value) -> anyhow::Result<u64> {
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(id, (kind, now_ns()));
        self.send(json!({"msg": "method", "method": method, "id": id.to_string(), "params": params}))
            .await?;
        Ok(id)
    }

    /// A call during setup: waits for its result (answering pings, ignoring the rest).
    async fn call_wait(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.call("setup", method, params).await?;
        loop {
            let f = self.next_frame().await?;
            let v: Value = serde_json::from_str(&f)?;
            if v["msg"] == "ping" {
                self.send(json!({"msg": "pong"})).await?;
            } else if v["msg"] == "result" && v["id"].as_str().and_then(|s| s.parse::<u64>().ok()) == Some(id) {
                self.pending.remove(&id);
                if v.get("error").is_some() {
                    bail!("{method} failed: {v}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    async fn sub(&mut self, name: &str, event: &str) -> anyhow::Result<()> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"msg": "sub", "id": id.to_string(), "name": name, "params": [event, false]}))
            .await
    }

    async fn next_frame(&mut self) -> anyhow::Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

/// A user's part: who they are and what they will do.
struct Plan {
    index: usize,
    token: String,
    active: bool,
    away: bool,
    /// When (from the start of the run) this user drops its connection and comes back.
    reconnect_at: Option<Duration>,
}

fn paragraph(rng: &mut StdRng, chars: usize) -> String {
    const WORDS: &[&str] = &[
        "the", "release", "is", "ready", "for", "review", "please", "check", "logs", "on", "staging", "before", "we",
        "ship", "it", "tonight", "meeting", "moved", "to", "three", "customer", "reported", "slow", "login",
    ];
    let mut s = String::with_capacity(chars + 16);
    while s.len() < chars {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    s
}

/// Exponentially distributed delay with the given mean (a Poisson process).
fn exp_delay(rng: &mut StdRng, mean_s: f64) -> Duration {
    let u: f64 = rng.gen_range(1e-9..1.0);
    Duration::from_secs_f64((-u.ln() * mean_s).min(3600.0))
}

/// Logs in, lists rooms, subscribes like a Rocket.Chat client; returns the client, its uid,
/// its rooms and the room whose typing it watches.
async fn login(url: &str, plan: &Plan) -> anyhow::Result<(Client, String, Vec<RoomInfo>)> {
    let (mut c, uid) = Client::connect(url, &plan.token).await?;
    let rooms = c.call_wait("rooms/get", json!([])).await?;
    let rooms: Vec<RoomInfo> = rooms
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some(RoomInfo {
                        id: r["_id"].as_str()?.to_owned(),
                        t: r["t"].as_str().unwrap_or("c").to_owned(),
                        users: r["usersCount"].as_u64().unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    c.sub("stream-room-messages", "__my_messages__").await?;
    for ev in ["notification", "rooms-changed", "subscriptions-changed"] {
        c.sub("stream-notify-user", &format!("{uid}/{ev}")).await?;
    }
    if let Some(focus) = focus_room(&rooms) {
        c.sub("stream-notify-room", &format!("{}/user-activity", focus.id))
            .await?;
    }
    Ok((c, uid, rooms))
}

/// The room a user has open: a large channel they are in, else a direct message, else any.
fn focus_room(rooms: &[RoomInfo]) -> Option<&RoomInfo> {
    rooms
        .iter()
        .find(|r| r.t == "c" && r.users >= 100 && r.id != "GENERAL")
        .or_else(|| rooms.iter().find(|r| r.t == "d"))
        .or_else(|| rooms.first())
}

/// Where an active user writes: 70 % a direct message, 25 % a large channel, else any room.
fn pick_room<'a>(rng: &mut StdRng, rooms: &'a [RoomInfo]) -> Option<&'a RoomInfo> {
    let dms: Vec<&RoomInfo> = rooms.iter().filter(|r| r.t == "d").collect();
    let large: Vec<&RoomInfo> = rooms
        .iter()
        .filter(|r| r.t != "d" && r.users >= 100 && r.id != "GENERAL")
        .collect();
    let roll: f64 = rng.gen();
    let pick = |list: &[&'a RoomInfo], rng: &mut StdRng| list.get(rng.gen_range(0..list.len().max(1))).copied();
    if roll < 0.70 && !dms.is_empty() {
        pick(&dms, rng)
    } else if roll < 0.95 && !large.is_empty() {
        pick(&large, rng)
    } else {
        rooms.get(rng.gen_range(0..rooms.len().max(1)))
    }
}

/// One user through the run.
async fn user(url: String, plan: Plan, args: Rc<MixedArgs>, figures: Rc<Figures>, start: Instant, end: Instant) {
    if let Err(e) = user_inner(&url, &plan, &args, &figures, start, end).await {
        Figures::bump(&figures.errors);
        if figures.errors.get() <= 5 {
            eprintln!("mixed: user{}: {e:#}", plan.index);
        }
    }
}

async fn user_inner(
    url: &str,
    plan: &Plan,
    args: &MixedArgs,
    fig: &Figures,
    start: Instant,
    end: Instant,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(plan.index as u64));
    let (mut c, _uid, rooms) = login(url, plan).await?;
    let username = format!("user{}", plan.index);
    let mut away = plan.away;
    if away {
        c.call("UserPresence:away", "UserPresence:away", json!([])).await?;
    }
    let far = end + Duration::from_secs(3600);
    let never = |active: bool, at: Instant| if active { at } else { far };
    let now = Instant::now();
    let mut next_msg = never(plan.active, now.max(start) + exp_delay(&mut rng, args.message_every_s));
    let mut next_history = never(plan.active, now.max(start) + exp_delay(&mut rng, args.history_every_s));
    let mut next_presence = now.max(start) + exp_delay(&mut rng, args.presence_every_s);
    let mut reconnect_at = plan.reconnect_at.map_or(far, |d| start + d);
    // A message being typed: its room and when it will be sent.
    let mut typing: Option<(String, Instant)> = None;
    let mut seq = 0u64;
    let mut last_seen_ms = chatd::ids::now_ms();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let send_at = typing.as_ref().map_or(far, |(_, at)| *at);
        // While a message is being typed, the next one is not due yet.
        let msg_due = if typing.is_some() { far } else { next_msg };
        let wake = msg_due
            .min(next_history)
            .min(next_presence)
            .min(reconnect_at)
            .min(send_at)
            .min(end);
        tokio::select! {
            f = c.next_frame() => {
                let f = f?;
                on_frame(&mut c, &f, fig, &mut last_seen_ms).await?;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if now >= send_at {
                    if let Some((rid, _)) = typing.take() {
                        let text = format!("b|{}|{seq}|{}|{}", plan.index, now_ns(), paragraph(&mut rng, args.paragraph_chars));
                        seq += 1;
                        c.call("sendMessage", "sendMessage", json!([{"rid": rid, "msg": text}])).await?;
                        c.call("typing", "stream-notify-room", json!([format!("{rid}/user-activity"), username, [], {}])).await?;
                        Figures::bump(&fig.sent);
                    }
                }
                if now >= next_msg && typing.is_none() {
                    if let Some(room) = pick_room(&mut rng, &rooms) {
                        c.call("typing", "stream-notify-room", json!([format!("{}/user-activity", room.id), username, ["user-typing"], {}])).await?;
                        typing = Some((room.id.clone(), now + Duration::from_millis(rng.gen_range(1000..3000))));
                    }
                    next_msg = now + exp_delay(&mut rng, args.message_every_s);
                }
                if now >= next_history {
                    if let Some(room) = rooms.get(rng.gen_range(0..rooms.len().max(1))) {
                        c.call("loadHistory", "loadHistory", json!([room.id, null, 50, {"$date": chatd::ids::now_ms()}])).await?;
                    }
                    next_history = now + exp_delay(&mut rng, args.history_every_s);
                }
                if now >= next_presence {
                    away = !away;
                    let m = if away { "UserPresence:away" } else { "UserPresence:online" };
                    c.call("presence", m, json!([])).await?;
                    next_presence = now + exp_delay(&mut rng, args.presence_every_s);
                }
                if now >= reconnect_at {
                    reconnect_at = far;
                    let _ = c.ws.close(None).await;
                    let began = Instant::now();
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1000))).await;
                    let (mut fresh, _, _) = login(url, plan).await?;
                    if away {
                        fresh.call_wait("UserPresence:away", json!([])).await?;
                    }
                    // What was missed while away, in up to five rooms (a client reloads the
                    // rooms it shows).
                    for room in rooms.iter().take(5) {
                        fresh.call_wait("loadMissedMessages", json!([room.id, {"$date": last_seen_ms - 1000}])).await?;
                    }
                    Figures::record(&fig.reconnect, began.elapsed().as_micros() as u64);
                    Figures::bump(&fig.reconnects);
                    c = fresh;
                    typing = None;
                }
            }
        }
    }
    let _ = c.ws.close(None).await;
    Ok(())
}

async fn on_frame(c: &mut Client, f: &str, fig: &Figures, last_seen_ms: &mut i64) -> anyhow::Result<()> {
    if f.starts_with(r#"{"msg":"changed""#) {
        match find_payload(f) {
            Some(Event::Message { sent_ns, .. }) => {
                Figures::record(&fig.delivery, now_ns().saturating_sub(sent_ns) / 1000);
                Figures::bump(&fig.deliveries);
                *last_seen_ms = chatd::ids::now_ms();
            }
            _ => Figures::bump(&fig.typing_events),
        }
        return Ok(());
    }
    let v: Value = serde_json::from_str(f)?;
    match v["msg"].as_str() {
        Some("ping") => c.send(json!({"msg": "pong"})).await?,
        Some("result") => {
            let id = v["id"].as_str().and_then(|s| s.parse::<u64>().ok());
            if let Some((kind, t0)) = id.and_then(|id| c.pending.remove(&id)) {
                if v.get("error").is_some() {
                    Figures::bump(&fig.errors);
                } else {
                    fig.method(kind, now_ns().saturating_sub(t0) / 1000);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

pub async fn run(args: MixedArgs) -> anyhow::Result<Value> {
    crate::check_loopback(&args.url)?;
    if !(1.0..=1800.0).contains(&args.duration) {
        bail!("--duration must be between 1 and 1800 seconds");
    }
    chatd::raise_fd_limit();
    let args = Rc::new(args);
    let figures = Rc::new(Figures::new());
    let mut rng = StdRng::seed_from_u64(args.seed);
    let n = args.connected;
    let reconnecting = ((n as f64) * args.reconnect_fraction).round() as usize;
    // Everyone logs in first (not measured), then the run starts for all at once.
    let setup_started = Instant::now();
    let lead = Duration::from_secs(5) + Duration::from_millis(20 * n as u64);
    let start = Instant::now() + lead;
    let end = start + Duration::from_secs_f64(args.duration);
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let plan = Plan {
            index: i,
            token: crate::rcdump::token_of(i),
            active: i < args.active,
            away: i >= n.saturating_sub(args.away),
            reconnect_at: (i % n.max(1) < reconnecting)
                .then(|| Duration::from_secs_f64(args.duration * rng.gen_range(0.1..0.9))),
        };
        // Logins are spread over the lead so setup does not flood the server.
        let delay = Duration::from_millis(10 * i as u64);
        let (url, a, f) = (args.url.clone(), args.clone(), figures.clone());
        tasks.push(local.spawn_local(async move {
            tokio::time::sleep(delay).await;
            user(url, plan, a, f, start, end).await;
        }));
    }
    let pids = args.server_pids.clone();
    let measured = local
        .run_until(async {
            tokio::time::sleep_until(start.into()).await;
            let setup_errors = figures.errors.get();
            let cpu0 = cpu_secs(&pids).unwrap_or(0.0);
            let client0 = cpu_secs(&[std::process::id()]).unwrap_or(0.0);
            let rss0 = rss_kib(&pids);
            // Only what happens from here on counts.
            figures.delivery.borrow_mut().reset();
            figures.method.borrow_mut().reset();
            figures.by_method.borrow_mut().clear();
            figures.deliveries.set(0);
            let mut peak_rss = rss0;
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                peak_rss = peak_rss.max(rss_kib(&pids));
            }
            let cpu = cpu_secs(&pids).unwrap_or(0.0) - cpu0;
            let client = cpu_secs(&[std::process::id()]).unwrap_or(0.0) - client0;
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
            }
            (setup_errors, cpu, client, rss0, peak_rss)
        })
        .await;
    let (setup_errors, cpu, client, rss0, peak_rss) = measured;
    let secs = args.duration;
    let hist = |h: &RefCell<Histogram<u64>>| percentiles(&h.borrow());
    let by_method: serde_json::Map<String, Value> = figures
        .by_method
        .borrow()
        .iter()
        .filter(|(k, _)| **k != "setup")
        .map(|(k, h)| (k.to_string(), serde_json::to_value(percentiles(h)).unwrap_or_default()))
        .collect();
    let out = json!({
        "scenario": "s7", "connected": n, "active": args.active, "away_at_start": args.away,
        "duration_s": secs, "setup_s": (start - setup_started).as_secs_f64(),
        "messages_sent": figures.sent.get(), "messages_per_s": figures.sent.get() as f64 / secs,
        "deliveries": figures.deliveries.get(), "typing_events": figures.typing_events.get(),
        "reconnects": figures.reconnects.get(), "errors": figures.errors.get(), "setup_errors": setup_errors,
        "server_cpu_s": cpu, "server_cpu_pct_of_one_core": 100.0 * cpu / secs,
        "client_cpu_s": client, "server_rss_kib_start": rss0, "server_rss_kib_peak": peak_rss,
        "delivery_latency_us": serde_json::to_value(hist(&figures.delivery))?,
        "method_latency_us": serde_json::to_value(hist(&figures.method))?,
        "method_latency_by_kind_us": by_method,
        "reconnect_us": serde_json::to_value(hist(&figures.reconnect))?,
    });
    eprintln!(
        "s7: {n} connected ({} active), {:.0} s: {} messages ({:.1}/s), {} deliveries, {} reconnects, {} errors; \
         server CPU {:.1} % of one core, RSS peak {} MiB; delivery p50/p99/p99.9 {}/{}/{} µs; methods p50/p99/p99.9 {}/{}/{} µs",
        args.active,
        secs,
        figures.sent.get(),
        figures.sent.get() as f64 / secs,
        figures.deliveries.get(),
        figures.reconnects.get(),
        figures.errors.get(),
        100.0 * cpu / secs,
        peak_rss / 1024,
        out["delivery_latency_us"]["p50"],
        out["delivery_latency_us"]["p99"],
        out["delivery_latency_us"]["p999"],
        out["method_latency_us"]["p50"],
        out["method_latency_us"]["p99"],
        out["method_latency_us"]["p999"],
    );
    Ok(out)
}
