//! The `chatd` command line: offline user admin, refusing to share a port or a data dir,
//! configuration checks, and selecting MongoDB (the start-up failure path needs no server).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::*;

fn chatd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(args)
        .env_remove("PORT")
        .env_remove("MONGO_URL")
        .env_remove("MONGO_OPLOG_URL")
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

#[test]
fn mongo_url_selects_mongodb_and_check_config_validates_it() {
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["serve", "--check-config"])
            .args(args)
            .env_remove("PORT")
            .env_remove("MONGO_URL")
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    };
    // As in a Rocket.Chat unit: MONGO_URL alone selects MongoDB; the password is never shown.
    let out = run(
        &[
            (
                "MONGO_URL",
                "mongodb://chat:pw-secret@db1:27017,db2:27017/rocketchat?replicaSet=rs0",
            ),
            ("MONGO_OPLOG_URL", "mongodb://db1:27017/local"),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("MongoDB at mongodb://db1:27017,db2:27017/rocketchat"),
        "{stdout}"
    );
    assert!(!stdout.contains("pw-secret") && !stderr.contains("pw-secret"));
    assert!(stderr.contains("MONGO_OPLOG_URL is not needed"), "{stderr}");
    // --store embedded wins over the environment.
    let out = run(&[("MONGO_URL", "mongodb://db1/x")], &["--store", "embedded"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("embedded store"));
    // A URL that does not parse, or MongoDB without a URL: bad configuration (exit 2), naming the key.
    for args in [&["--mongo-url", "http://not-mongo"][..], &["--store", "mongodb"][..]] {
        let out = run(&[], args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("store.mongo_url"),
            "{args:?}"
        );
    }
}

#[test]
fn an_unreachable_mongodb_fails_start_clearly_with_exit_3_within_the_timeout() {
    use std::time::{Duration, Instant};
    use wait_timeout::ChildExt;
    // Nothing listens on the first address (connection refused); the second accepts TCP
    // connections and never answers (a black hole).
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for addr in [refused, silent.local_addr().unwrap()] {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
            .arg(dir.path())
            .args([
                "--mongo-url",
                &format!("mongodb://{addr}/chatd"),
                "--mongo-connect-timeout",
                "2",
            ])
            .env_remove("PORT")
            .env_remove("MONGO_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = match child.wait_timeout(Duration::from_secs(60)).unwrap() {
            Some(s) => s,
            None => {
                let _ = child.kill();
                panic!("chatd hung with MongoDB unreachable at {addr}");
            }
        };
        let elapsed = started.elapsed();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains(&format!("MongoDB at mongodb://{addr}/chatd is unreachable")),
            "{stderr}"
        );
        // The driver's own default would wait 30 s; the 2 s timeout (plus start-up) is honoured.
        assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    }
}

#[test]
fn the_environment_of_a_rocketchat_unit_is_honoured_or_refused_by_name() {
    // PORT and BIND_IP set the listen address, ROOT_URL shows in /api/info.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let p = ChatdProcess::serve_env(
        dir.path(),
        &[],
        &[
            ("PORT", &port),
            ("BIND_IP", "127.0.0.1"),
            ("ROOT_URL", "https://chat.example.com/"),
            ("MONGO_OPLOG_URL", "mongodb://db1/local"),
            ("DEPLOY_METHOD", "tar"),
        ],
    )
    .unwrap();
    assert_eq!(p.addr, format!("127.0.0.1:{port}").parse().unwrap());
    let info = ureq::get(&format!("http://{}/api/info", p.addr))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["rootUrl"], "https://chat.example.com");
    let log = p.log.lock().unwrap().clone();
    assert!(log.contains("MONGO_OPLOG_URL is not needed"), "{log}");
    assert!(log.contains("DEPLOY_METHOD is ignored"), "{log}");
    drop(p);

    // Malformed values are bad configuration: exit 2, naming the variable.
    for (var, value) in [
        ("PORT", "abc"),
        ("PORT", "0"),
        ("BIND_IP", "not-an-ip"),
        ("ROOT_URL", "chat.example.com"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["serve", "--check-config"])
            .env_remove("PORT")
            .env_remove("MONGO_URL")
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        let key = if var == "ROOT_URL" { "root_url" } else { var };
        assert!(stderr.contains(key), "{var}={value}: {stderr}");
    }
}

#[test]
fn a_locked_memory_limit_too_low_for_io_uring_is_explained_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -l 64 && exec {} serve --listen 127.0.0.1:0 --data-dir {}",
            env!("CARGO_BIN_EXE_chatd"),
            dir.path().display()
        ))
        .env_remove("PORT")
        .env_remove("MONGO_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked-memory limit is 65536 bytes"), "{stderr}");
    assert!(stderr.contains("LimitMEMLOCK=infinity"), "{stderr}");
}
