//! Operator commands on the embedded store: `chatd user add|list|passwd|deactivate|activate|role`
//! (passwords from standard input or a file, never empty), and `chatd backup` taken while
//! clients write, restored into a new data directory and served with every acknowledged message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};

/// Runs `chatd ARGS` with `stdin` as its standard input.
fn chatd_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(args)
        .env_remove("MONGO_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn user_cmd(dir: &Path, sub: &str, username: &str, extra: &[&str], stdin: &str) -> Output {
    let mut args = vec!["user", sub, "--data-dir", dir.to_str().unwrap(), "--username", username];
    args.extend_from_slice(extra);
    chatd_with_stdin(&args, stdin)
}

fn login_result(addr: std::net::SocketAddr, username: &str, password: &str) -> Result<Value, Value> {
    let mut c = Ddp::open(addr);
    c.call(
        "login",
        json!([{"user": {"username": username}, "password": {"digest": sha256_hex(password), "algorithm": "sha-256"}}]),
    )
}

#[test]
fn user_commands_read_passwords_safely_and_change_accounts_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Empty passwords are refused, from standard input or the command line (bad usage: exit 2).
    for (extra, stdin) in [(&[][..], "\n"), (&["--password", ""][..], "")] {
        let out = user_cmd(&data, "add", "alice", extra, stdin);
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("password"));
    }
    ok(&user_cmd(
        &data,
        "add",
        "alice",
        &["--email", "alice@example.org"],
        "first-pw\n",
    ));
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "bob-pw\n").unwrap();
    ok(&user_cmd(
        &data,
        "add",
        "bob",
        &["--password-file", pw_file.to_str().unwrap()],
        "",
    ));
    ok(&user_cmd(&data, "role", "bob", &["--add", "admin", "--add", "bot"], ""));
    ok(&user_cmd(&data, "role", "bob", &["--remove", "bot"], ""));
    let listed = ok(&chatd_with_stdin(
        &["user", "list", "--json", "--data-dir", data.to_str().unwrap()],
        "",
    ));
    let users: HashMap<String, Value> = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["username"].as_str().unwrap().to_owned(), v))
        .collect();
    assert_eq!(users.len(), 2, "{listed}");
    assert_eq!(users["alice"]["email"], "alice@example.org");
    let roles: Vec<&str> = users["bob"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(roles.contains(&"admin") && !roles.contains(&"bot"), "{roles:?}");

    // A login made now, then a new password while the server is stopped: the old login ends.
    let p = ChatdProcess::serve(&data);
    let mut c = Ddp::open(p.addr);
    c.login("alice", "first-pw");
    let old_token = c.token.clone().unwrap();
    drop(c);
    drop(p);
    ok(&user_cmd(&data, "passwd", "alice", &[], "second-pw\n"));
    ok(&user_cmd(&data, "deactivate", "bob", &[], ""));
    let p = ChatdProcess::serve(&data);
    assert!(login_result(p.addr, "alice", "first-pw").is_err());
    assert!(login_result(p.addr, "alice", "second-pw").is_ok());
    assert!(
        Ddp::open(p.addr).call("login", json!([{"resume": old_token}])).is_err(),
        "the old login ended"
    );
    assert!(login_result(p.addr, "bob", "bob-pw").is_err(), "deactivated");
    // The embedded store belongs to the running server: commands refuse with exit 3.
    let out = user_cmd(&data, "activate", "bob", &[], "");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    drop(p);
    ok(&user_cmd(&data, "activate", "bob", &[], ""));
    let p = ChatdProcess::serve(&data);
    assert!(login_result(p.addr, "bob", "bob-pw").is_ok());
    // An unknown user is named.
    drop(p);
    let out = user_cmd(&data, "deactivate", "nobody", &[], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named nobody"));
}

/// Writers, each in its own room, sending one message at a time and recording what was acked.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Vec<Arc<Mutex<Vec<String>>>>,
    total: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
    rooms: Vec<String>,
}

fn start_writers(addr: std::net::SocketAddr, n: usize) -> Writers {
    let (stop, total) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let (mut acked, mut threads, mut rooms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let mut c = user(addr, &format!("writer{i}"));
        let rid = c.ok("createChannel", json!([format!("room{i}"), [], false]))["rid"]
            .as_str()
            .unwrap()
            .to_owned();
        rooms.push(rid.clone());
        let mine = Arc::new(Mutex::new(Vec::new()));
        acked.push(mine.clone());
        let (stop, total) = (stop.clone(), total.clone());
        threads.push(std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Acquire) && k < 100_000 {
                let id = format!("w{i}-{k:06}");
                c.ok("sendMessage", json!([{"_id": id, "rid": rid, "msg": id}]));
                mine.lock().unwrap().push(id);
                total.fetch_add(1, Ordering::Release);
                k += 1;
            }
        }));
    }
    Writers {
        stop,
        acked,
        total,
        threads,
        rooms,
    }
}

/// Every message id in a room, oldest first.
fn room_ids(addr: std::net::SocketAddr, username: &str, rid: &str) -> Vec<String> {
    let mut c = Ddp::open(addr);
    c.login(username, &format!("{username}-pw"));
    let page = c.ok("loadHistory", json!([rid, null, 100_000, null]));
    let mut ids: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["t"].is_null())
        .map(|m| m["_id"].as_str().unwrap().to_owned())
        .collect();
    ids.reverse();
    ids
}

#[test]
fn a_backup_taken_while_clients_write_restores_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let (data, restored) = (dir.path().join("data"), dir.path().join("restored"));
    std::fs::create_dir_all(&restored).unwrap();
    let backup_file = dir.path().join("chatd-backup.redb");
    let mut p = ChatdProcess::serve(&data);
    let w = start_writers(p.addr, 3);
    wait_until("writers to get going", || w.total.load(Ordering::Acquire) >= 60);
    let before: Vec<usize> = w.acked.iter().map(|a| a.lock().unwrap().len()).collect();
    let out = chatd_with_stdin(
        &[
            "backup",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            backup_file.to_str().unwrap(),
        ],
        "",
    );
    let report = ok(&out);
    assert!(report.contains("backup written"), "{report}");
    // Writes went on during the backup.
    let at_backup_end = w.total.load(Ordering::Acquire);
    wait_until("writes after the backup", || {
        w.total.load(Ordering::Acquire) > at_backup_end + 10
    });
    w.stop.store(true, Ordering::Release);
    for t in w.threads {
        t.join().unwrap();
    }
    p.kill();

    // Restore: the file becomes the data directory's store; a server serves it.
    std::fs::copy(&backup_file, restored.join("chatd.redb")).unwrap();
    let p = ChatdProcess::serve(&restored);
    for (i, rid) in w.rooms.iter().enumerate() {
        let acked = w.acked[i].lock().unwrap().clone();
        let got = room_ids(p.addr, &format!("writer{i}"), rid);
        // A snapshot of one commit: each writer's messages are a prefix of what it sent, no gaps
        // and no duplicates, holding at least everything acknowledged before the backup began.
        assert!(got.len() >= before[i], "room {i}: {} < {}", got.len(), before[i]);
        assert_eq!(got[..], acked[..got.len()], "room {i}");
        eprintln!(
            "room {i}: {} of {} acknowledged messages in the backup",
            got.len(),
            acked.len()
        );
        assert!(
            got.len() < acked.len(),
            "room {i}: writes after the backup are not in it"
        );
    }
    drop(p);

    // With the server stopped the command copies the file itself: every acknowledged message.
    let offline = dir.path().join("offline.redb");
    ok(&chatd_with_stdin(
        &[
            "backup",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            offline.to_str().unwrap(),
        ],
        "",
    ));
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    std::fs::copy(&offline, again.join("chatd.redb")).unwrap();
    let p = ChatdProcess::serve(&again);
    for (i, rid) in w.rooms.iter().enumerate() {
        let acked = w.acked[i].lock().unwrap().clone();
        assert_eq!(room_ids(p.addr, &format!("writer{i}"), rid), acked, "room {i}");
    }
}

#[test]
fn a_role_without_create_permissions_cannot_create_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The first account is the workspace's admin, as in Rocket.Chat.
    ok(&user_cmd(&data, "add", "root", &["--password", "root-pw"], ""));
    ok(&user_cmd(&data, "add", "visitor", &["--password", "visitor-pw"], ""));
    ok(&user_cmd(
        &data,
        "role",
        "visitor",
        &["--remove", "user", "--add", "guest"],
        "",
    ));
    let listed = ok(&chatd_with_stdin(
        &["user", "list", "--json", "--data-dir", data.to_str().unwrap()],
        "",
    ));
    assert!(
        listed
            .lines()
            .any(|l| l.contains("\"root\"") && l.contains("\"admin\"")),
        "{listed}"
    );
    let p = ChatdProcess::serve(&data);
    let mut visitor = Ddp::open(p.addr);
    visitor.login("visitor", "visitor-pw");
    // create-c, create-p and create-d are given to users, bots and admins, not guests.
    for (method, params) in [
        ("createChannel", json!(["lobby", [], false])),
        ("createPrivateGroup", json!(["secret", [], false])),
        ("createDirectMessage", json!(["root"])),
    ] {
        let err = visitor.call(method, params).unwrap_err();
        assert_eq!(err["error"], "error-not-allowed", "{method}: {err}");
    }
    let mut root = Ddp::open(p.addr);
    root.login("root", "root-pw");
    root.ok("createChannel", json!(["lobby", ["visitor"], false]));
    // Opening a conversation someone else started needs no permission.
    let dm = root.ok("createDirectMessage", json!(["visitor"]));
    let again = visitor.ok("createDirectMessage", json!(["root"]));
    assert_eq!(dm["rid"], again["rid"]);
}
