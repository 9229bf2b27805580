//! Bounded per-session state and bounded waits: each cap reached answers with its documented
//! DDP error while the session and everyone else keep being served; connections count from
//! accept; shard round trips time out; the ping timer runs while a call waits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read as _;
use std::net::TcpStream;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

fn config_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("chatd.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn error_code(e: &Value) -> &str {
    e["error"].as_str().unwrap_or_default()
}

#[test]
fn subscription_event_name_and_presence_caps_answer_with_errors() {
    let server = TestServer::with(|c| {
        c.limits.max_subscriptions_per_session = 5;
        c.limits.max_event_name_chars = 64;
        c.limits.max_presence_watches = 3;
    });
    let mut bystander = user(server.addr, "bystander");
    let mut alice = user(server.addr, "alice");
    let uids: Vec<String> = ["u1", "u2", "u3", "u4", "u5"]
        .iter()
        .map(|n| user(server.addr, n).uid())
        .collect();

    // Subscriptions: five fit, the sixth is refused, and one freed makes room again.
    let mut subs = Vec::new();
    for i in 0..5 {
        subs.push(
            alice
                .sub("stream-notify-logged", json!([format!("event-{i}"), false]))
                .unwrap(),
        );
    }
    let err = alice
        .sub("stream-notify-logged", json!(["event-5", false]))
        .unwrap_err();
    assert_eq!(error_code(&err), "too-many-subscriptions", "{err}");
    alice.send(json!({"msg": "unsub", "id": subs[0]}));
    alice.wait_frame(|f| f["msg"] == "nosub" && f["id"] == subs[0].as_str());
    alice.sub("stream-notify-logged", json!(["event-5", false])).unwrap();

    // Names: a long event name and a huge stream name are refused without echoing them.
    let err = alice
        .sub("stream-notify-logged", json!(["x".repeat(65), false]))
        .unwrap_err();
    assert_eq!(error_code(&err), "invalid-event-name", "{err}");
    let err = alice.sub(&"s".repeat(100_000), json!(["e", false])).unwrap_err();
    assert_eq!(error_code(&err), "invalid-event-name", "{err}");
    assert!(err.to_string().len() < 1000, "the refusal does not echo the name");

    // Presence watches: at most three users; an edit past the cap is refused and changes nothing.
    let err = alice
        .sub("stream-user-presence", json!(["", {"added": &uids[..4]}]))
        .unwrap_err();
    assert_eq!(error_code(&err), "too-many-presence-watches", "{err}");
    alice
        .sub("stream-user-presence", json!(["", {"added": &uids[..2]}]))
        .unwrap();
    // A later subscription only edits the live one (answered `nosub` without an error).
    let edit = alice.sub("stream-user-presence", json!(["", {"added": [&uids[2]]}]));
    assert_eq!(edit, Err(Value::Null));
    let err = alice
        .sub("stream-user-presence", json!(["", {"added": [&uids[3]]}]))
        .unwrap_err();
    assert_eq!(error_code(&err), "too-many-presence-watches", "{err}");
    // Removing one makes room for another.
    let swap = alice.sub(
        "stream-user-presence",
        json!(["", {"added": [&uids[3]], "removed": [&uids[0]]}]),
    );
    assert_eq!(swap, Err(Value::Null));

    // The refused session and a bystander are still served.
    let rid = alice.ok("createChannel", json!(["caps", ["bystander"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    bystander.sub("stream-room-messages", json!([rid, false])).unwrap();
    alice.send_message(&rid, "still here");
    assert_eq!(bystander.next_message()["msg"], "still here");
}

#[test]
fn a_flood_of_subscriptions_is_capped_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let p = ChatdProcess::serve(&dir.path().join("data"));
    let mut alice = user(p.addr, "alice");
    let before = p.rss_bytes();
    const TRIES: usize = 40_000;
    const WINDOW: usize = 50;
    let (mut ready, mut refused) = (0usize, 0usize);
    for start in (0..TRIES).step_by(WINDOW) {
        for i in start..start + WINDOW {
            let name = format!("user-status-{i:06}-{}", "x".repeat(40));
            alice.send(
                json!({"msg": "sub", "id": format!("f{i}"), "name": "stream-notify-logged", "params": [name, false]}),
            );
        }
        for _ in 0..WINDOW {
            let f = alice.wait_frame(|f| f["msg"] == "ready" || f["msg"] == "nosub");
            if f["msg"] == "ready" {
                ready += 1;
            } else {
                assert_eq!(error_code(&f["error"]), "too-many-subscriptions", "{f}");
                refused += 1;
            }
        }
    }
    let grown = p.rss_bytes().saturating_sub(before);
    assert_eq!((ready, refused), (1000, TRIES - 1000));
    // Uncapped, 40,000 subscriptions grew the server by ~30 MiB.
    assert!(grown < 12 << 20, "server grew by {grown} bytes");
    let mut bob = user(p.addr, "bob");
    assert!(bob.call("rooms/get", json!([])).is_ok());
}

#[test]
fn connections_count_from_accept_against_the_shard_cap() {
    let server = TestServer::with(|c| {
        c.shards = 1;
        c.limits.max_connections_per_shard = 3;
    });
    let open = |s: &TestServer| s.stats()[0].open_connections;
    // Three connections that never send a byte (half-open HTTP) fill the shard.
    let mut idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    wait_until("three connections to be counted", || open(&server) == 3);
    // The fourth is closed at once.
    let mut fourth = TcpStream::connect(server.addr).unwrap();
    fourth.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    let n = fourth.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection over the cap is closed");
    assert_eq!(open(&server), 3);
    // One of them leaves: a new client is served again.
    drop(idle.pop());
    wait_until("the closed connection to be uncounted", || open(&server) == 2);
    let (status, _) = Http::new(server.addr).get("/api/info");
    assert_eq!(status, 200);
    wait_until("the HTTP connection to be uncounted", || open(&server) == 2);
    let mut c = Ddp::open(server.addr);
    assert!(c.call("rooms/get", json!([])).is_ok());
}

#[test]
fn pending_calls_are_capped_and_pings_keep_flowing_while_a_call_waits() {
    let dir = tempfile::tempdir().unwrap();
    let stall = dir.path().join("stall-routing");
    let config = config_file(
        dir.path(),
        "[limits]\nping_interval_secs = 1\nmax_pending_calls = 2\nround_trip_timeout_ms = 600000\n",
    );
    let p = ChatdProcess::serve_env(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--config", &config],
        &[("CHATD_TEST_STALL_ROUTING_FILE", stall.to_str().unwrap())],
    )
    .unwrap();
    let mut reg = Ddp::open(p.addr);
    reg.register("alice", "alice-pw");
    reg.register("bob", "bob-pw");

    // The tailer shard stops answering routing notices: a login waits.
    std::fs::write(&stall, b"").unwrap();
    let mut alice = Ddp::open(p.addr);
    let login = login_params("alice", "alice-pw");
    alice.send(json!({"msg": "method", "id": "login", "method": "login", "params": login}));
    alice.send(json!({"msg": "method", "id": "second", "method": "rooms/get", "params": []}));
    // A third frame is over the cap: refused at once, while the first two still wait.
    alice.send(json!({"msg": "method", "id": "third", "method": "rooms/get", "params": []}));
    let refused = alice.wait_frame(|f| f["msg"] == "result" && f["id"] == "third");
    assert_eq!(error_code(&refused["error"]), "too-many-pending-calls", "{refused}");
    alice.send(json!({"msg": "sub", "id": "sub4", "name": "stream-notify-logged", "params": ["user-status", false]}));
    let nosub = alice.wait_frame(|f| f["msg"] == "nosub" && f["id"] == "sub4");
    assert_eq!(error_code(&nosub["error"]), "too-many-pending-calls", "{nosub}");
    // The server keeps pinging while the login waits, and reads the answers: three intervals
    // pass and the session stays open.
    alice.answer_pings(3);
    assert!(
        !alice.events.iter().any(|f| f["id"] == "login" || f["id"] == "second"),
        "the held calls have not been answered yet"
    );

    // A client that stops answering pings while its call waits is closed by the ping timer
    // (alice keeps answering meanwhile, and stays).
    let addr = p.addr;
    let bob = std::thread::spawn(move || {
        let mut bob = ws_connect(addr);
        bob.send(Message::text(
            json!({"msg": "connect", "version": "1", "support": ["1"]}).to_string(),
        ))
        .unwrap();
        let login = login_params("bob", "bob-pw");
        bob.send(Message::text(
            json!({"msg": "method", "id": "login", "method": "login", "params": login}).to_string(),
        ))
        .unwrap();
        loop {
            match bob.read() {
                Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
                Ok(Message::Text(t)) => assert!(!t.contains("\"result\""), "bob's login was answered: {t}"),
                Ok(_) => {}
                Err(e) => panic!("bob's connection failed before a close frame: {e}"),
            }
        }
    });
    while !bob.is_finished() {
        alice.answer_pings(1);
    }
    assert_eq!(bob.join().unwrap(), Some(4000), "closed by the ping timeout");

    // Once the shard answers again, the held calls finish in order.
    std::fs::remove_file(&stall).unwrap();
    let logged_in = alice.wait_frame(|f| f["msg"] == "result" && f["id"] == "login");
    assert!(logged_in["result"]["token"].is_string(), "{logged_in}");
    let second = alice.wait_frame(|f| f["msg"] == "result" && f["id"] == "second");
    assert!(second["result"].is_array(), "{second}");
}

#[test]
fn shard_round_trips_time_out_with_server_busy() {
    let dir = tempfile::tempdir().unwrap();
    let stall = dir.path().join("stall-routing");
    let config = config_file(dir.path(), "[limits]\nround_trip_timeout_ms = 300\n");
    let p = ChatdProcess::serve_env(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--config", &config],
        &[("CHATD_TEST_STALL_ROUTING_FILE", stall.to_str().unwrap())],
    )
    .unwrap();
    let mut reg = Ddp::open(p.addr);
    reg.register("alice", "alice-pw");

    std::fs::write(&stall, b"").unwrap();
    // DDP: the login's routing round trip times out.
    let mut alice = Ddp::open(p.addr);
    let login = login_params("alice", "alice-pw");
    let err = alice.call("login", login.clone()).unwrap_err();
    assert_eq!(error_code(&err), "error-server-busy", "{err}");
    // REST: the login's presence query times out.
    let (status, body) = Http::new(p.addr).post("login", &json!({"username": "alice", "password": "alice-pw"}));
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("busy"), "{body}");

    // The same session logs in once the shard answers again.
    std::fs::remove_file(&stall).unwrap();
    let ok = alice.ok("login", login);
    assert!(ok["token"].is_string(), "{ok}");
    let mut rest = Http::new(p.addr);
    rest.login("alice", "alice-pw");
}

#[test]
fn a_status_set_over_rest_without_a_connection_keeps_its_text_and_status() {
    let server = TestServer::start();
    let mut reg = Ddp::open(server.addr);
    reg.register("carol", "carol-pw");
    let mut watcher = user(server.addr, "watcher");

    let mut carol = Http::new(server.addr);
    carol.login("carol", "carol-pw");
    let (status, body) = carol.post("users.setStatus", &json!({"status": "busy", "message": "in a meeting"}));
    assert_eq!(status, 200, "{body}");
    let (_, me) = carol.get("users.getStatus");
    assert_eq!(
        (me["status"].as_str(), me["message"].as_str()),
        (Some("busy"), Some("in a meeting")),
        "{me}"
    );
    assert_eq!(me["connectionStatus"], "offline", "{me}");
    // Others see the same.
    let carol_id = me["_id"].as_str().unwrap().to_owned();
    let mut other = Http::new(server.addr);
    other.login("watcher", "watcher-pw");
    let (_, seen) = other.get(&format!("users.getStatus?userId={carol_id}"));
    assert_eq!(
        (seen["status"].as_str(), seen["message"].as_str()),
        (Some("busy"), Some("in a meeting")),
        "{seen}"
    );
    let (_, info) = other.get(&format!("users.info?userId={carol_id}"));
    assert_eq!(info["user"]["status"], "busy", "{info}");

    // Once carol connects and leaves again, she is offline, and her text stays.
    watcher
        .sub("stream-notify-logged", json!(["user-status", false]))
        .unwrap();
    let mut ddp = Ddp::open(server.addr);
    ddp.login("carol", "carol-pw");
    drop(ddp);
    let went_offline = watcher.wait_frame(|f| {
        f["msg"] == "changed" && f["fields"]["args"][0][0] == carol_id.as_str() && f["fields"]["args"][0][2] == 0
    });
    assert_eq!(went_offline["fields"]["args"][0][3], "in a meeting", "{went_offline}");
    let (_, seen) = other.get(&format!("users.getStatus?userId={carol_id}"));
    assert_eq!(
        (seen["status"].as_str(), seen["message"].as_str()),
        (Some("offline"), Some("in a meeting")),
        "{seen}"
    );
}
