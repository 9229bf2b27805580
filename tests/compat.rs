//! Compatibility with the published Rocket.Chat client packages (from PyPI, in the test
//! virtualenv), used unmodified against a real chatd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use serde_json::Value;

use common::*;
use serde_json::json;

#[test]
fn rocketchat_async_logs_in_lists_rooms_sends_and_receives() {
    let Some(python) = compat_python() else { return };
    let server = TestServer::start();
    let alice = user(server.addr, "alice");
    let _bob = user(server.addr, "bob");
    let token = alice.token.clone().expect("token");
    let url = format!("ws://{}/websocket", server.addr);
    let out = run_compat_script(
        &python,
        "realtime_async.py",
        &[url, "alice-pw".into(), "bob-pw".into(), token],
        Duration::from_secs(60),
    );
    assert!(out.contains("ok"), "{out}");

    // What the Python clients sent is stored once each, in order.
    let mut check = user(server.addr, "carol");
    let history = check.ok("loadHistory", json!(["GENERAL", null, 50, null]));
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter_map(|m| m["msg"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(texts, ["hello from alice", "hello from bob", "last"]);
}

/// The published bot SDK 0.2 (hubot-rocketchat's driver) keeps receiving across a server
/// restart: after reconnecting it re-sends its message subscription before its resume login,
/// and chatd runs that subscription once the login lands, as Rocket.Chat does.
#[test]
fn the_sdk02_bot_keeps_receiving_after_a_server_restart() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let Some(modules) = compat_node_modules() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChatdProcess::serve(dir.path());
    let addr = server.addr;
    let _admin = user(addr, "admin");
    let _bot = user(addr, "bot");
    let mut sender = user(addr, "sender");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/sdk02/bot.js");
    let mut bot = Command::new("node")
        .arg(&script)
        .args([addr.to_string().as_str(), "bot", "bot-pw"])
        .env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = bot.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = |what: &str| -> Value {
        let v = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the bot said nothing while waiting for {what}"));
        assert_ne!(v["event"], "failed", "{v}");
        v
    };
    assert_eq!(next("ready")["event"], "ready");
    sender.send_message("GENERAL", "before the restart");
    let got = next("the first message");
    assert_eq!(
        (got["event"].clone(), got["msg"].clone(), got["roomType"].clone()),
        (json!("message"), json!("before the restart"), json!("c"))
    );

    // A restart on the same port and data: the bot reconnects by itself.
    server.kill();
    drop(server);
    let listen = addr.to_string();
    let server = ChatdProcess::serve_with(dir.path(), &["--listen", listen.as_str()]).expect("chatd restarts");
    assert_eq!(next("the reconnect")["event"], "reconnected");
    // Its subscription runs once its resume login lands: keep sending until one arrives (the
    // bot's login races these sends; each is a new message, none is lost by the server).
    let mut sender = Ddp::open(server.addr);
    sender.login("sender", "sender-pw");
    let mut received = None;
    for i in 0..50 {
        sender.send_message("GENERAL", &format!("after the restart {i}"));
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(300)) {
            received = Some(v);
            break;
        }
    }
    let got = received.expect("the bot receives again after the restart");
    assert_eq!(got["event"], "message", "{got}");
    assert!(got["msg"].as_str().unwrap().starts_with("after the restart"), "{got}");
    drop(bot.stdin.take());
    let _ = bot.kill();
    let _ = bot.wait();
}
