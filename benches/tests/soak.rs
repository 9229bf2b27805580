//! The kill -9 soak at small scale: a few SIGKILL cycles of the real server during pipelined
//! writes lose and duplicate nothing, and the soak's checker catches a deleted message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

/// The chatd binary built beside chatd-load (`cargo test --workspace` builds both).
fn chatd_binary() -> PathBuf {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_chatd-load"));
    let chatd = load.with_file_name("chatd");
    assert!(
        chatd.is_file(),
        "{} is missing: run `cargo build --bin chatd` (cargo test --workspace builds it)",
        chatd.display()
    );
    chatd
}

fn soak(extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chatd-load"))
        .args(["soak", "--chatd"])
        .arg(chatd_binary())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn kill_9_cycles_lose_and_duplicate_nothing() {
    let (ok, log) = soak(&["--cycles", "5", "--clients", "3"]);
    assert!(ok, "{log}");
    assert!(log.contains("lost 0, duplicated 0"), "{log}");
}

#[test]
fn the_soak_checker_catches_a_lost_message() {
    let (ok, log) = soak(&["--cycles", "2", "--clients", "2", "--self-check"]);
    assert!(ok, "{log}");
    assert!(log.contains("self-check passed"), "{log}");
}
