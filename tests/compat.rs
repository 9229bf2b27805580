//! Compatibility with the published Rocket.Chat client packages, used unmodified against a
//! real chatd: the Python clients (from PyPI, in the test virtualenv) and the bot SDKs 0.2 and
//! 1.x (from npm, installed by `tests/run.sh` from `tests/compat/sdk`).
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
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/sdk/bot02_restart.js");
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

/// A node bot script from `tests/compat/sdk`, its JSON lines arriving on a channel.
struct NodeBot {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl NodeBot {
    fn start(modules: &std::path::Path, script: &str, args: &[String], env: &[(&str, String)]) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/compat/sdk")
            .join(script);
        let mut cmd = Command::new("node");
        cmd.arg(&path)
            .args(args)
            .env("NODE_PATH", modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start node");
        let (tx, lines) = std::sync::mpsc::channel::<Value>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                // The SDKs print lines of their own; the scripts' lines are JSON objects.
                if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Self { child, lines }
    }

    /// The bot's next line, which must be `event`.
    fn expect(&self, event: &str) -> Value {
        let v = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the bot said nothing while waiting for {event}"));
        assert_eq!(v["event"], event, "{v}");
        v
    }
}

impl Drop for NodeBot {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next message on `c`'s room stream that `pred` accepts.
fn next_message_where(c: &mut Ddp, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let m = c.next_message();
        if pred(&m) {
            return m;
        }
    }
}

/// The published SDK 0.2 (with the asteroid fork it names) runs its own flows against chatd:
/// connect, log in, join by name, respond, react, a direct message, `users.list`, `GET logout`
/// and leaving.
#[test]
fn the_sdk02_bot_joins_responds_reacts_and_leaves() {
    let Some(modules) = compat_node_modules() else { return };
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let _bot = user(server.addr, "bot");
    let rid = alice.ok("createChannel", json!(["botroom", [], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.sub("stream-room-messages", json!([rid, false])).unwrap();
    let host = server.addr.to_string();
    let bot = NodeBot::start(
        &modules,
        "bot02_flow.js",
        &[host.clone(), "bot".into(), "bot-pw".into(), "botroom".into()],
        &[("ROCKETCHAT_URL", host)],
    );
    assert_eq!(bot.expect("ready")["joined"], json!([rid]));
    let joined = next_message_where(&mut alice, |m| m["t"] == "uj");
    assert_eq!(joined["u"]["username"], "bot");

    let ping = alice.send_message(&rid, "ping");
    let answered = bot.expect("answered");
    assert_eq!(
        (answered["roomName"].as_str(), answered["roomType"].as_str()),
        (Some("botroom"), Some("c"))
    );
    let pong = next_message_where(&mut alice, |m| m["msg"] == "pong");
    assert_eq!(pong["u"]["username"], "bot");
    let reacted = next_message_where(&mut alice, |m| m["_id"] == ping["_id"] && m.get("reactions").is_some());
    assert_eq!(reacted["reactions"], json!({":thumbsup:": {"usernames": ["bot"]}}));

    alice.send_message(&rid, "dm me");
    bot.expect("dm-sent");
    let dm = alice.ok("createDirectMessage", json!(["bot"]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let history = alice.ok("loadHistory", json!([dm, null, 10, null]));
    assert_eq!(history["messages"][0]["msg"], "hello in private");

    alice.send_message(&rid, "leave");
    let users = bot.expect("users");
    assert_eq!(users["names"], json!(["alice", "bot"]));
    assert_eq!(users["online"], json!(["alice", "bot"]));
    bot.expect("logged-out");
    bot.expect("left");
    let left = next_message_where(&mut alice, |m| m["t"] == "ul");
    assert_eq!(left["u"]["username"], "bot");
}

/// The published SDK 1.x `Bot` runs its own flows against chatd: REST login and DDP resume,
/// room info (by `rid`, as it asks), responding, `chat.react`, `chat.syncMessages`,
/// `users.list` and `rooms.leave`. Its join by name calls `chat.getRoomIdByNameOrId`, which
/// Rocket.Chat does not have either: that call fails, as it does there.
#[test]
fn the_sdk1_bot_responds_reacts_syncs_and_leaves() {
    let Some(modules) = compat_node_modules() else { return };
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let _bot = user(server.addr, "bot");
    let rid = alice.ok("createChannel", json!(["botroom", [], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.sub("stream-room-messages", json!([rid, false])).unwrap();
    let bot = NodeBot::start(
        &modules,
        "bot1_flow.js",
        &[
            format!("http://{}", server.addr),
            "bot".into(),
            "bot-pw".into(),
            rid.clone(),
        ],
        &[],
    );
    let ready = bot.expect("ready");
    assert_eq!(ready["roomType"], "c");
    assert_ne!(
        ready["missingRoute"], "answered",
        "chat.getRoomIdByNameOrId is not a Rocket.Chat route"
    );
    next_message_where(&mut alice, |m| m["t"] == "uj" && m["u"]["username"] == "bot");

    let ping = alice.send_message(&rid, "ping");
    bot.expect("answered");
    let pong = next_message_where(&mut alice, |m| m["msg"] == "pong");
    assert_eq!(pong["u"]["username"], "bot");
    let reacted = next_message_where(&mut alice, |m| m["_id"] == ping["_id"] && m.get("reactions").is_some());
    assert_eq!(reacted["reactions"], json!({":thumbsup:": {"usernames": ["bot"]}}));

    alice.send_message(&rid, "history");
    let texts = bot.expect("history")["texts"].clone();
    for t in ["ping", "pong", "history"] {
        assert!(texts.as_array().unwrap().iter().any(|x| x == t), "{t} in {texts}");
    }
    alice.send_message(&rid, "leave");
    assert_eq!(bot.expect("users")["names"], json!(["alice", "bot"]));
    bot.expect("left");
    next_message_where(&mut alice, |m| m["t"] == "ul" && m["u"]["username"] == "bot");
}
