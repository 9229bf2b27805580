//! The `chatd` command line: offline user admin, and refusing to share a port or a data dir.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::*;

fn chatd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(args)
        .env_remove("PORT")
        .output()
        .expect("run chatd")
}

fn user_add(dir: &std::path::Path, username: &str, password: &str) -> Output {
    chatd(&[
        "user",
        "add",
        "--data-dir",
        dir.to_str().unwrap(),
        "--username",
        username,
        "--password",
        password,
        "--email",
        &format!("{username}@example.org"),
    ])
}

#[test]
fn user_add_works_offline_and_refuses_a_store_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = user_add(dir.path(), "admin", "s3cret");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created user admin"));

    let again = user_add(dir.path(), "admin", "other");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in use"));

    let server = ChatdProcess::serve(dir.path());
    let mut c = Ddp::open(server.addr);
    let me = c.login("admin", "s3cret");
    assert!(me["id"].is_string(), "{me}");

    let busy = user_add(dir.path(), "late", "pw");
    assert_eq!(busy.status.code(), Some(3));
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains("in use by another chatd"), "{err}");
}

#[test]
fn a_second_chatd_refuses_the_same_data_dir_or_port() {
    let dir = tempfile::tempdir().unwrap();
    let first = ChatdProcess::serve(dir.path());

    let (code, log) = ChatdProcess::serve_with(dir.path(), &["--listen", "127.0.0.1:0"])
        .err()
        .expect("second chatd on the same data dir must not start");
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("in use by another chatd"), "{log}");

    let other_dir = tempfile::tempdir().unwrap();
    let port = first.addr.to_string();
    let (code, log) = ChatdProcess::serve_with(other_dir.path(), &["--listen", &port])
        .err()
        .expect("second chatd on the same port must not start");
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("already in use"), "{log}");

    // The first one is unaffected.
    let mut c = Ddp::open(first.addr);
    c.register("still", "here-pw");
}

#[test]
fn check_config_accepts_the_documented_example_and_rejects_unknown_keys() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/chatd.example.toml");
    let ok = chatd(&["serve", "--config", example, "--check-config"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nno_such_key = 1\n").unwrap();
    let out = chatd(&["serve", "--config", bad.to_str().unwrap(), "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
}
