//! Durability under SIGKILL: every message the server acknowledged is in history after a
//! restart, exactly once. Runs the real `chatd` binary as a separate process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// Sends `sendMessage` and waits for its result; `None` once the connection is gone.
fn try_send(c: &mut Ddp, id: &str, rid: &str, text: &str) -> Option<Result<Value, Value>> {
    let frame =
        json!({"msg": "method", "method": "sendMessage", "id": id, "params": [{"_id": id, "rid": rid, "msg": text}]});
    c.ws.send(Message::text(frame.to_string())).ok()?;
    loop {
        let text = match c.ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        };
        let v: Value = serde_json::from_str(&text).ok()?;
        if v["msg"] == "ping" {
            c.ws.send(Message::text(json!({"msg": "pong"}).to_string())).ok()?;
        } else if v["msg"] == "result" && v["id"] == id {
            return Some(match v.get("error") {
                Some(e) => Err(e.clone()),
                None => Ok(v["result"].clone()),
            });
        }
    }
}

#[test]
fn acknowledged_messages_survive_sigkill_exactly_once() {
    const SENDERS: usize = 3;
    const KILL_AFTER_ACKS: usize = 300;
    const MAX_PER_SENDER: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let mut chatd = ChatdProcess::serve(dir.path());
    let addr = chatd.addr;
    let mut reader = user(addr, "reader");
    let token = reader.token.clone().unwrap();

    let acked = Arc::new(AtomicUsize::new(0));
    let acks: Arc<Mutex<Vec<String>>> = Arc::default();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let mut c = user(addr, &format!("sender{s}"));
            let (acked, acks) = (acked.clone(), acks.clone());
            std::thread::spawn(move || {
                for i in 0..MAX_PER_SENDER {
                    let id = format!("s{s}m{i}");
                    match try_send(&mut c, &id, "GENERAL", &format!("message {id}")) {
                        Some(Ok(_)) => {
                            acks.lock().unwrap().push(id);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(Err(e)) => panic!("send {id} refused: {e}"),
                        None => return i,
                    }
                }
                panic!("the server was never killed");
            })
        })
        .collect();
    // Kill while every sender has a request in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        assert!(std::time::Instant::now() < deadline, "senders made no progress");
        std::thread::yield_now();
    }
    chatd.kill();
    let attempted: usize = senders.into_iter().map(|h| h.join().unwrap()).sum();
    let acks = acks.lock().unwrap().clone();
    drop(reader.ws.close(None));

    let chatd = ChatdProcess::serve(dir.path());
    let mut reader = Ddp::open(chatd.addr);
    reader.resume(&token);
    // Page back through the whole room (`loadHistory` returns at most 100 per call).
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut latest = Value::Null;
    for pages in 0.. {
        assert!(pages < 1_000, "history paging does not end");
        let page = reader.ok("loadHistory", json!(["GENERAL", latest, 100, null]));
        let messages = page["messages"].as_array().unwrap();
        for m in messages {
            *seen.entry(m["_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        match messages.last() {
            Some(oldest) if messages.len() == 100 => latest = oldest["ts"].clone(),
            _ => break,
        }
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "messages stored twice: {duplicated:?}");
    let lost: Vec<_> = acks.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost after SIGKILL: {lost:?}");
    // Anything beyond the acknowledged ones can only be a request that was in flight.
    assert!(
        seen.len() <= attempted + SENDERS,
        "{} stored, {attempted} attempted",
        seen.len()
    );
    // Whether the restart had to replay the journal depends on where the kill fell relative to
    // a checkpoint (nearly always it does; the journal's own test covers replay exactly).
    let replayed = chatd.log.lock().unwrap().contains("replayed the store journal");
    eprintln!(
        "crash test: {} acknowledged, {} stored after restart ({} in flight at the kill); journal replayed: {replayed}",
        acks.len(),
        seen.len(),
        seen.len() - acks.len()
    );
}
