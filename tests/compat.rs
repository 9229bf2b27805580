//! Compatibility with the published Rocket.Chat client packages (from PyPI, in the test
//! virtualenv), used unmodified against a real chatd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

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
