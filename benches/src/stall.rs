//! `chatd-load stall`: does heavy reading stall other sessions? Two phases of equal length on a
//! running chatd: a probe (user A sends a message every `--interval-ms` to a fresh room, user B
//! receives it; send → receive latency on one clock) runs alone, then beside a reader that pages
//! through a large room's history (DDP `loadHistory`, 100 at a time, oldest-first back through
//! the room) and lists every public channel (REST `channels.list`, 100 per page, each call a
//! scan of all channels). Reports both latency distributions and the server's own event-loop
//! stall metric. Run server and this tool on different cores. The probe and the reader run on
//! separate threads of this tool, so the reader's work never delays the probe's time stamps.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Debug, clap::Args)]
pub struct StallArgs {
    /// chatd's address (host:port).
    #[arg(long)]
    pub addr: String,
    /// Password of every user (the `rc-dump` generator gives all users "pw-user0").
    #[arg(long, default_value = "pw-user0")]
    pub password: String,
    /// The probe's two users.
    #[arg(long, default_value = "user0")]
    pub sender: String,
    #[arg(long, default_value = "user1")]
    pub receiver: String,
    /// The reader's user and the large room it pages through.
    #[arg(long, default_value = "user2")]
    pub reader: String,
    #[arg(long, default_value = "GENERAL")]
    pub big_room: String,
    /// Seconds per phase.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    #[arg(long, default_value_t = 5)]
    pub interval_ms: u64,
    /// What the reader does: page the big room's history, list the channels, or both in turn.
    #[arg(long, default_value = "both")]
    pub reader_does: String,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn sha256_hex(s: &str) -> String {
    chatd::auth::sha256_hex(s)
}

/// A minimal DDP client: one method call at a time, answering pings.
pub(crate) struct Ddp {
    ws: Ws,
    next: u64,
}

impl Ddp {
    /// Opens a WebSocket and sends DDP `connect` (not logged in).
    pub(crate) async fn connect(addr: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/websocket")).await?;
        let mut c = Self { ws, next: 0 };
        c.send(json!({"msg": "connect", "version": "1", "support": ["1"]}))
            .await?;
        Ok(c)
    }

    pub(crate) async fn login(addr: &str, user: &str, password: &str) -> anyhow::Result<(Self, String, String)> {
        let mut c = Self::connect(addr).await?;
        let r = c
            .call(
                "login",
                json!([{"user": {"username": user}, "password": {"digest": sha256_hex(password), "algorithm": "sha-256"}}]),
            )
            .await?;
        let uid = r["id"].as_str().ok_or_else(|| anyhow!("login: {r}"))?.to_owned();
        let token = r["token"].as_str().unwrap_or_default().to_owned();
        Ok((c, uid, token))
    }

    pub(crate) async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(v.to_string())).await?;
        Ok(())
    }

    pub(crate) async fn frame(&mut self) -> anyhow::Result<Value> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["msg"] == "ping" {
                        self.send(json!({"msg": "pong"})).await?;
                        continue;
                    }
                    return Ok(v);
                }
                Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    pub(crate) async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next += 1;
        let id = self.next.to_string();
        self.send(json!({"msg": "method", "method": method, "id": id, "params": params}))
            .await?;
        loop {
            let f = self.frame().await?;
            if f["msg"] == "result" && f["id"] == id.as_str() {
                if let Some(e) = f.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(f["result"].clone());
            }
        }
    }
}

fn stall_metric(addr: &str) -> u64 {
    let Ok(resp) = ureq::get(&format!("http://{addr}/metrics")).call() else {
        return 0;
    };
    let text = resp.into_string().unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("chatd_event_loop_stall_recent_seconds{"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|secs| (secs * 1e6) as u64)
        .max()
        .unwrap_or(0)
}

/// Runs the probe for `seconds`; returns the latency histogram (µs) and how many probe
/// messages had not arrived 5 s after the phase ended (counted as lost).
async fn probe(
    a: &mut Ddp,
    b: &mut Ddp,
    rid: &str,
    seconds: u64,
    interval: Duration,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = Histogram::<u64>::new(3)?;
    let epoch = Instant::now();
    let end = epoch + Duration::from_secs(seconds);
    let mut next_send = epoch;
    let mut n = 0u64;
    let mut in_flight = 0u64;
    loop {
        let now = Instant::now();
        if now >= end && in_flight == 0 {
            break;
        }
        if now >= end + Duration::from_secs(5) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_send.into()), if now < end => {
                n += 1;
                let sent_us = epoch.elapsed().as_micros();
                a.send(json!({"msg": "method", "method": "sendMessage", "id": format!("p{n}"),
                              "params": [{"rid": rid, "msg": format!("probe {sent_us}")}]})).await?;
                in_flight += 1;
                next_send += interval;
            }
            f = a.frame() => { f?; }
            _ = tokio::time::sleep_until((end + Duration::from_secs(5)).into()) => {}
            f = b.frame() => {
                let f = f?;
                if f["msg"] == "changed" && f["collection"] == "stream-room-messages" {
                    let text = f["fields"]["args"][0]["msg"].as_str().unwrap_or_default();
                    if let Some(sent) = text.strip_prefix("probe ").and_then(|t| t.parse::<u128>().ok()) {
                        let lat = epoch.elapsed().as_micros().saturating_sub(sent);
                        hist.record(u64::try_from(lat).unwrap_or(u64::MAX))?;
                        in_flight = in_flight.saturating_sub(1);
                    }
                }
            }
        }
    }
    Ok((hist, in_flight))
}

/// A minimal HTTP/1.1 client on one keep-alive connection (GET only, `Content-Length` bodies).
struct Http {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    host: String,
}

impl Http {
    async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: tokio::io::BufReader::new(stream),
            host: addr.to_owned(),
        })
    }

    async fn get(&mut self, path: &str, uid: &str, token: &str) -> anyhow::Result<Vec<u8>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nX-User-Id: {uid}\r\nX-Auth-Token: {token}\r\n\r\n",
            self.host
        );
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut status = String::new();
        self.stream.read_line(&mut status).await?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", status.trim());
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(body)
    }
}

/// Pages through the big room and the channel list until `stop`; returns (history pages,
/// channel pages, messages read).
async fn reader(args: &StallArgs, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<(u64, u64, u64)> {
    let (mut c, uid, token) = Ddp::login(&args.addr, &args.reader, &args.password).await?;
    let (mut pages, mut lists, mut read) = (0u64, 0u64, 0u64);
    let mut latest: Value = Value::Null;
    let mut offset = 0usize;
    // One keep-alive connection, as a real client would hold.
    let mut http = Http::connect(&args.addr).await?;
    while !*stop.borrow() {
        if args.reader_does != "list" {
            let page = c.call("loadHistory", json!([args.big_room, latest, 100, null])).await?;
            let msgs = page["messages"].as_array().cloned().unwrap_or_default();
            read += msgs.len() as u64;
            pages += 1;
            latest = match msgs.last() {
                Some(m) => m["ts"].clone(),
                None => Value::Null,
            };
        }
        if args.reader_does == "history" {
            continue;
        }
        // On this task's own thread, like the history pages: the probe shares the tool's one
        // thread with the reader in every mode, so modes compare.
        let list = http
            .get(
                &format!("/api/v1/channels.list?offset={offset}&count=100"),
                &uid,
                &token,
            )
            .await
            .context("channels.list")?;
        let v: Value = serde_json::from_slice(&list)?;
        let total = v["total"].as_u64().unwrap_or(0) as usize;
        offset = if offset + 100 >= total { 0 } else { offset + 100 };
        lists += 1;
    }
    Ok((pages, lists, read))
}

fn pct((h, lost): &(Histogram<u64>, u64)) -> Value {
    json!({"n": h.len(), "lost": lost, "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
           "p999_us": h.value_at_quantile(0.999), "max_us": h.max()})
}

pub async fn run(args: StallArgs) -> anyhow::Result<Value> {
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let (mut a, _, _) = Ddp::login(&args.addr, &args.sender, &args.password).await?;
    let (mut b, _, _) = Ddp::login(&args.addr, &args.receiver, &args.password).await?;
    let name = format!("probe-{}", chatd::ids::random_id());
    let room = a.call("createChannel", json!([name, [args.receiver], false])).await?;
    let rid = room["rid"]
        .as_str()
        .ok_or_else(|| anyhow!("createChannel: {room}"))?
        .to_owned();
    b.send(json!({"msg": "sub", "id": "s", "name": "stream-room-messages", "params": [rid, false]}))
        .await?;
    loop {
        if b.frame().await?["msg"] == "ready" {
            break;
        }
    }
    // Warm-up, then the quiet phase.
    probe(&mut a, &mut b, &rid, 2, interval).await?;
    let stall_before = stall_metric(&args.addr);
    let quiet = probe(&mut a, &mut b, &rid, args.seconds, interval).await?;
    let stall_quiet = stall_metric(&args.addr);
    // The loaded phase: the reader runs beside the probe, on its own thread (and runtime), so
    // decoding its large answers never delays the probe's time stamps.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reader_args = args.clone();
    let reading = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(reader(&reader_args, stop_rx)))
    });
    let loaded = probe(&mut a, &mut b, &rid, args.seconds, interval).await?;
    let _ = stop_tx.send(true);
    let (pages, lists, read) = reading.join().map_err(|_| anyhow!("the reader thread panicked"))??;
    let stall_loaded = stall_metric(&args.addr);
    Ok(json!({
        "quiet": pct(&quiet),
        "loaded": pct(&loaded),
        "p99_rise_us": i128::from(loaded.0.value_at_quantile(0.99)) - i128::from(quiet.0.value_at_quantile(0.99)),
        "reader": {"history_pages": pages, "channel_list_pages": lists, "messages_read": read},
        "server_stall_recent_us": {"after_warmup": stall_before, "after_quiet": stall_quiet, "after_loaded": stall_loaded},
    }))
}
