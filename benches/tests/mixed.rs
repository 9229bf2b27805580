//! Scenario S7 at small scale: a generated Rocket.Chat dump imported into a real chatd, users
//! logging in with the dump's resume tokens, and the mixed load running without errors: messages
//! are delivered, every kind of call is answered, and the reconnecting users come back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

#[test]
fn the_mixed_load_runs_against_an_imported_store() {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_chatd-load"));
    let chatd = load.with_file_name("chatd");
    assert!(
        chatd.is_file(),
        "{} is missing: run `cargo build --bin chatd`",
        chatd.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (dump, data) = (dir.path().join("dump"), dir.path().join("data"));
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    ok(Command::new(&load)
        .args([
            "rc-dump",
            "--users",
            "200",
            "--rooms",
            "30",
            "--channels",
            "5",
            "--dms",
            "400",
        ])
        .args(["--large-channels", "2", "--large-members", "120", "--messages", "3000"])
        .args(["--general-messages", "100", "--out"])
        .arg(&dump)
        .output()
        .unwrap());
    ok(Command::new(&chatd)
        .args(["import", "rocketchat", "--dump"])
        .arg(&dump)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap());
    let mut server = Command::new(&chatd)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--data-dir"])
        .arg(&data)
        .env("CHATD_RATE_LIMITS", "off")
        .env("RUST_LOG", "info")
        .env_remove("MONGO_URL")
        .env_remove("PORT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .take(200)
        .map_while(Result::ok)
        .find_map(|l| {
            l.contains("chatd listening")
                .then(|| {
                    l.split("addr=")
                        .nth(1)
                        .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
                })
                .flatten()
        })
        .expect("chatd did not say where it listens");
    std::thread::spawn(move || lines.for_each(drop));
    let out = Command::new(&load)
        .args(["mixed", "--url", &format!("ws://{addr}/websocket")])
        .args(["--connected", "60", "--active", "40", "--away", "10", "--duration", "6"])
        .args([
            "--message-every-s",
            "1",
            "--history-every-s",
            "2",
            "--presence-every-s",
            "2",
        ])
        .args(["--reconnect-fraction", "0.2", "--server-pid", &server.id().to_string()])
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["errors"], 0, "{r}\n{stderr}");
    assert_eq!(r["setup_errors"], 0, "{r}\n{stderr}");
    assert!(r["messages_sent"].as_u64().unwrap() > 0, "{r}");
    assert!(r["deliveries"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["reconnects"], 12, "every reconnecting user came back: {r}");
    for kind in ["sendMessage", "loadHistory", "presence", "typing"] {
        assert!(
            r["method_latency_by_kind_us"][kind]["count"].as_u64().unwrap_or(0) > 0,
            "{kind}: {r}"
        );
    }
}
