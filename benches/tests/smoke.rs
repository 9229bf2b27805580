//! A short smoke run of the load generator against a real chatd (2 shards, port 0, temp dir):
//! checks correctness — every message sent was delivered to every member exactly once — not speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;

use chatd::{Config, Server};
use serde_json::Value;

#[test]
fn every_message_is_delivered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plan = dir.path().join("plan.json");
    let load = env!("CARGO_BIN_EXE_chatd-load");
    let seeded = Command::new(load)
        .args(["seed", "--users", "48", "--rooms", "3", "--members", "16"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--plan")
        .arg(&plan)
        .output()
        .unwrap();
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stderr));

    let server = Server::start(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: 2,
        pin_cores: false,
        data_dir: data,
        // A load test: its clients send faster than Rocket.Chat's rate limits allow.
        rate_limits: chatd::config::RateLimits::off(),
        ..Config::default()
    })
    .unwrap();
    let url = format!("ws://{}/websocket", server.local_addr());
    let out = Command::new(load)
        .args([
            "run",
            "--rate",
            "150",
            "--duration",
            "2",
            "--drain",
            "10",
            "--procs",
            "2",
            "--senders",
            "2",
        ])
        .args(["--url", &url, "--server-pid", &std::process::id().to_string()])
        .arg("--plan")
        .arg(&plan)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (sent, expected, deliveries) = (
        r["sent"].as_u64().unwrap(),
        r["expected"].as_u64().unwrap(),
        r["deliveries"].as_u64().unwrap(),
    );
    assert!(sent > 0, "{r}");
    // 3 rooms × 2 senders, every message to all 16 members of its room.
    assert_eq!(expected, sent * 16, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(deliveries, expected, "{r}");
    assert_eq!(r["acked"], sent, "every send acknowledged: {r}");
    let shards = r["sessions_per_shard"].as_array().unwrap();
    assert_eq!(shards.iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 48, "{r}");
    server.stop();
}
