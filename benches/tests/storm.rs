//! The restart storm at small scale: clients connected to the real server get a 1012 close with a
//! reconnect delay on SIGTERM, come back to the restarted server, log in, re-subscribe, and get
//! the message sent while they were away (live or through `loadMissedMessages`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_client_comes_back_with_every_message_after_a_restart() {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_chatd-load"));
    let chatd = load.with_file_name("chatd");
    assert!(
        chatd.is_file(),
        "{} is missing: run `cargo build --bin chatd`",
        chatd.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&load)
        .args(["storm", "--chatd"])
        .arg(&chatd)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--clients",
            "120",
            "--members",
            "20",
            "--spread-ms",
            "1000",
            "--deadline-secs",
            "30",
        ])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    let report: serde_json::Value = serde_json::from_str(log.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(report["back_and_complete"], 120, "{report}");
    assert_eq!(report["closed_with_1012"], 120, "{report}");
    assert_eq!(report["closed_with_delay_hint"], 120, "{report}");
    assert_eq!(report["old_exit"], 0, "{report}");
}
