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

/// The calibration reference (`ref-relay`) and the NATS-protocol client against each other: every
/// message reaches every member exactly once, the relay is measured, and the client reports its
/// own CPU and send lag.
#[test]
fn the_reference_relay_delivers_everything_once() {
    use std::io::{BufRead, BufReader};
    let load = env!("CARGO_BIN_EXE_chatd-load");
    let mut relay = Command::new(load)
        .args(["ref-relay", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(relay.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.strip_prefix("ref-relay listening on ").expect(&first).to_owned();
    let out = Command::new(load)
        .args([
            "run",
            "--proto",
            "nats",
            "--rooms",
            "4",
            "--members",
            "10",
            "--senders",
            "2",
        ])
        .args(["--rate", "200", "--duration", "2", "--drain", "10", "--procs", "2"])
        .args([
            "--url",
            &format!("ws://{addr}"),
            "--server-pid",
            &relay.id().to_string(),
        ])
        .output()
        .unwrap();
    relay.kill().unwrap();
    relay.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent > 0, "{r}");
    // 4 rooms × 2 senders, every message to all 10 members of its room.
    assert_eq!(r["expected"].as_u64().unwrap(), sent * 10, "{r}");
    assert_eq!(r["deliveries"], r["expected"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["send_lag_us"]["count"].as_u64().unwrap(), sent, "{r}");
    assert!(r["client_cpu_s"].as_f64().unwrap() >= 0.0, "{r}");
}
