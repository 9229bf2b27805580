//! `chatd-load soak`: crash durability under load. Each cycle starts the real `chatd` binary on
//! one data directory, lets several clients pipeline `sendMessage` calls (client `_id`s, a window
//! of calls in flight each), and kills the server with SIGKILL after a random moment. Calls left
//! unanswered by a kill are sent again, with the same `_id`, at the start of the next cycle (as
//! a reconnecting client does). After the last cycle the room's whole history is read back over
//! REST and checked: every acknowledged message present exactly once, no message twice.
//! Prints `acked / lost / duplicated`; exits 1 if anything was lost or duplicated. Loopback only;
//! the only process it stops is the chatd it started, by its handle.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use rand::Rng;
use serde_json::{json, Value};

use crate::process::ChatdProcess;
use crate::stall::Ddp;

#[derive(Clone, Debug, clap::Args)]
pub struct SoakArgs {
    /// The chatd binary to run.
    #[arg(long)]
    pub chatd: PathBuf,
    /// Data directory (created; must not hold another store).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Kill -9 cycles.
    #[arg(long, default_value_t = 100)]
    pub cycles: u32,
    /// Concurrent sending clients (each its own user).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Calls each client keeps in flight.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// The kill comes at a random moment this many milliseconds at most after sending starts.
    #[arg(long, default_value_t = 300)]
    pub max_kill_ms: u64,
    /// Shards of the server.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Checks the checker: deletes one acknowledged message before reading back, and passes
    /// only if exactly that one is reported lost.
    #[arg(long)]
    pub self_check: bool,
}

/// Starts chatd on the soak's data directory, any free port, rate limits off.
fn start_server(args: &SoakArgs) -> anyhow::Result<ChatdProcess> {
    let data_dir = args.data_dir.display().to_string();
    let shards = args.shards.to_string();
    ChatdProcess::start(
        &args.chatd,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            &shards,
            "--data-dir",
            &data_dir,
        ],
        &[("CHATD_RATE_LIMITS", "off".into()), ("RUST_LOG", "info".into())],
        None,
    )
}

/// What one client did in one cycle.
struct ClientCycle {
    acked: Vec<String>,
    refused: Vec<(String, String)>,
    /// Sent but not answered before the kill: sent again next cycle.
    unanswered: Vec<String>,
    sent: u64,
}

async fn client_cycle(
    addr: String,
    user: String,
    rid: String,
    cycle: u32,
    index: usize,
    window: usize,
    mut carried: VecDeque<String>,
) -> ClientCycle {
    let mut out = ClientCycle {
        acked: Vec::new(),
        refused: Vec::new(),
        unanswered: Vec::new(),
        sent: 0,
    };
    let mut c = match Ddp::login(&addr, &user, &format!("{user}-pw")).await {
        Ok((c, _, _)) => c,
        Err(_) => {
            // Killed before this client got in: its carried calls wait for the next cycle.
            out.unanswered = carried.into();
            return out;
        }
    };
    let mut seq = 0u64;
    let mut in_flight: HashMap<String, ()> = HashMap::new();
    loop {
        while in_flight.len() < window {
            let id = carried.pop_front().unwrap_or_else(|| {
                seq += 1;
                format!("soak-{cycle}-{index}-{seq}")
            });
            let frame = json!({"msg": "method", "method": "sendMessage", "id": id, "params": [{"_id": id, "rid": rid, "msg": id}]});
            if c.send(frame).await.is_err() {
                in_flight.insert(id, ());
                out.unanswered = in_flight.into_keys().collect();
                out.unanswered.extend(carried);
                return out;
            }
            out.sent += 1;
            in_flight.insert(id, ());
        }
        match c.frame().await {
            Ok(f) if f["msg"] == "result" => {
                let Some(id) = f["id"].as_str() else { continue };
                if in_flight.remove(id).is_none() {
                    continue;
                }
                match f.get("error") {
                    None => out.acked.push(id.to_owned()),
                    Some(e) => out.refused.push((id.to_owned(), e.to_string())),
                }
            }
            Ok(_) => {}
            Err(_) => {
                out.unanswered = in_flight.into_keys().collect();
                out.unanswered.extend(carried);
                return out;
            }
        }
    }
}

/// Logs `user` in over REST: `(user id, token)`.
fn rest_login(agent: &ureq::Agent, addr: &str, user: &str) -> anyhow::Result<(String, String)> {
    let login: Value = serde_json::from_str(
        &agent
            .post(&format!("http://{addr}/api/v1/login"))
            .set("Content-Type", "application/json")
            .send_string(&json!({"username": user, "password": format!("{user}-pw")}).to_string())?
            .into_string()?,
    )?;
    let uid = login["data"]["userId"]
        .as_str()
        .ok_or_else(|| anyhow!("login: {login}"))?;
    Ok((
        uid.to_owned(),
        login["data"]["authToken"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build()
}

/// Sends one message with id and text `id` over REST and waits for its acknowledgement.
fn send_one(addr: &str, user: &str, rid: &str, id: &str) -> anyhow::Result<()> {
    let agent = agent();
    let (uid, token) = rest_login(&agent, addr, user)?;
    let sent: Value = serde_json::from_str(
        &agent
            .post(&format!("http://{addr}/api/v1/chat.sendMessage"))
            .set("X-User-Id", &uid)
            .set("X-Auth-Token", &token)
            .set("Content-Type", "application/json")
            .send_string(&json!({"message": {"rid": rid, "_id": id, "msg": id}}).to_string())?
            .into_string()?,
    )?;
    match sent["success"].as_bool() {
        Some(true) => Ok(()),
        _ => Err(anyhow!("chat.sendMessage: {sent}")),
    }
}

/// The room's whole history over REST (newest first, 100 per page), as `_id`s and texts; first
/// deletes `delete` when given (the self-check).
fn history(addr: &str, user: &str, rid: &str, delete: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let agent = agent();
    let (uid, token) = rest_login(&agent, addr, user)?;
    let (uid, token) = (uid.as_str(), token.as_str());
    if let Some(id) = delete {
        agent
            .post(&format!("http://{addr}/api/v1/chat.delete"))
            .set("X-User-Id", uid)
            .set("X-Auth-Token", token)
            .set("Content-Type", "application/json")
            .send_string(&json!({"roomId": rid, "msgId": id}).to_string())?;
    }
    let mut all = Vec::new();
    loop {
        let page: Value = serde_json::from_str(
            &agent
                .get(&format!(
                    "http://{addr}/api/v1/channels.history?roomId={rid}&count=100&offset={}",
                    all.len()
                ))
                .set("X-User-Id", uid)
                .set("X-Auth-Token", token)
                .call()?
                .into_string()?,
        )?;
        let msgs = page["messages"].as_array().ok_or_else(|| anyhow!("history: {page}"))?;
        if msgs.is_empty() {
            return Ok(all);
        }
        for m in msgs {
            all.push((
                m["_id"].as_str().unwrap_or_default().to_owned(),
                m["msg"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
}

pub async fn run(args: SoakArgs) -> anyhow::Result<Value> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.data_dir)?;
    let users: Vec<String> = (0..args.clients).map(|i| format!("soak{i}")).collect();
    // Set-up: users and one channel (that server is killed too).
    let server = start_server(&args)?;
    let mut reg = Ddp::connect(&server.addr).await?;
    for u in &users {
        reg.call(
            "registerUser",
            json!([{"username": u, "pass": format!("{u}-pw"), "name": u, "email": format!("{u}@example.com")}]),
        )
        .await?;
    }
    let (mut owner, _, _) = Ddp::login(&server.addr, &users[0], &format!("{}-pw", users[0])).await?;
    let room = owner.call("createChannel", json!(["soak", &users[1..], false])).await?;
    let rid = room["rid"]
        .as_str()
        .ok_or_else(|| anyhow!("createChannel: {room}"))?
        .to_owned();
    drop(owner);
    drop(reg);
    server.kill()?;

    let mut acked: HashMap<String, u32> = HashMap::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut carried: Vec<VecDeque<String>> = vec![VecDeque::new(); args.clients];
    let mut sent = 0u64;
    let mut rng = rand::thread_rng();
    for cycle in 0..args.cycles {
        let server = start_server(&args)?;
        let tasks: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                tokio::spawn(client_cycle(
                    server.addr.clone(),
                    u.clone(),
                    rid.clone(),
                    cycle,
                    i,
                    args.window,
                    std::mem::take(&mut carried[i]),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1..=args.max_kill_ms.max(1)))).await;
        server.kill()?;
        for (i, t) in tasks.into_iter().enumerate() {
            let done = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .map_err(|_| anyhow!("client {i} did not notice the kill within 30 s"))??;
            sent += done.sent;
            for id in done.acked {
                *acked.entry(id).or_default() += 1;
            }
            refused.extend(done.refused);
            carried[i] = done.unanswered.into();
        }
        if (cycle + 1) % 10 == 0 {
            eprintln!("soak: {} cycles, {} acknowledged so far", cycle + 1, acked.len());
        }
    }

    // Read everything back from a server started on the same data.
    let server = start_server(&args)?;
    let mut victim = args.self_check.then(|| acked.keys().next().cloned()).flatten();
    if args.self_check && victim.is_none() {
        // Every cycle was killed before anything was acknowledged (the kill times are random):
        // acknowledge one message now, so the check always has one to delete.
        let id = "soak-self-check".to_owned();
        tokio::task::spawn_blocking({
            let (addr, user, rid, id) = (server.addr.clone(), users[0].clone(), rid.clone(), id.clone());
            move || send_one(&addr, &user, &rid, &id)
        })
        .await??;
        acked.insert(id.clone(), 1);
        victim = Some(id);
    }
    let stored = tokio::task::spawn_blocking({
        let (addr, user, rid, victim) = (server.addr.clone(), users[0].clone(), rid.clone(), victim.clone());
        move || history(&addr, &user, &rid, victim.as_deref())
    })
    .await??;
    server.kill()?;
    let mut by_id: HashMap<&str, u32> = HashMap::new();
    let mut by_text: HashMap<&str, u32> = HashMap::new();
    for (id, text) in &stored {
        *by_id.entry(id).or_default() += 1;
        if text.starts_with("soak-") {
            *by_text.entry(text).or_default() += 1;
        }
    }
    let lost: Vec<&String> = acked.keys().filter(|id| !by_id.contains_key(id.as_str())).collect();
    let duplicated = by_id.values().filter(|n| **n > 1).count() + by_text.values().filter(|n| **n > 1).count();
    let stored_unacked = by_text.keys().filter(|t| !acked.contains_key(**t)).count();
    let report = json!({
        "cycles": args.cycles,
        "clients": args.clients,
        "window": args.window,
        "sent": sent,
        "acked": acked.len(),
        "acked_twice": acked.values().filter(|n| **n > 1).count(),
        "refused": refused.len(),
        "lost": lost.len(),
        "duplicated": duplicated,
        "stored": stored.len(),
        "stored_unacked": stored_unacked,
        "unanswered_at_end": carried.iter().map(VecDeque::len).sum::<usize>(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    eprintln!(
        "soak: {} kill -9 cycles, {} clients: sent {sent}, acked {}, lost {}, duplicated {}, refused {} (stored {}, of which unacknowledged {})",
        args.cycles,
        args.clients,
        acked.len(),
        lost.len(),
        duplicated,
        refused.len(),
        stored.len(),
        stored_unacked
    );
    if let Some(victim) = &victim {
        let caught = lost.len() == 1 && lost.first().is_some_and(|l| *l == victim) && duplicated == 0;
        eprintln!(
            "soak: self-check {}: deleted {victim}, reported lost {:?}",
            if caught { "passed" } else { "FAILED" },
            lost
        );
        if !caught {
            std::process::exit(1);
        }
        return Ok(report);
    }
    if let Some((id, e)) = refused.first() {
        eprintln!("soak: first refusal: {id}: {e}");
    }
    if !lost.is_empty() || duplicated > 0 || !refused.is_empty() {
        eprintln!(
            "soak: FAILED (first lost: {:?})",
            lost.iter().take(5).collect::<Vec<_>>()
        );
        println!("{report}");
        std::process::exit(1);
    }
    Ok(report)
}
