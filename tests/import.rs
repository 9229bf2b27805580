//! `chatd import rocketchat`: dumps built here from Rocket.Chat's documented schema (BSON written
//! by the `bson` crate, one file gzip-compressed), imported by the real binary, then served by a
//! real chatd and read with real clients (our DDP/REST test clients and the published Python ones).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bson::{doc, Bson};
use common::rcdump::*;
use common::*;
use serde_json::{json, Value};

/// The dump every test here imports. Alice and bob have passwords; carol is OAuth-only; dave is
/// deactivated; plus one record of every malformed or dangling kind.
struct Dump {
    dir: tempfile::TempDir,
    t0: i64,
}

const ALICE: &str = "aliceId00000000001";
const BOB: &str = "bobId0000000000002";
const CAROL: &str = "carolId00000000003";
const DAVE: &str = "daveId000000000004";
const SECRET: &str = "secretRoom0000001";
const ALICE_TOKEN: &str = "old-rocket-chat-resume-token-of-alice";

fn dm_id() -> String {
    format!("{ALICE}{BOB}")
}

fn build_dump() -> Dump {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rocketchat");
    std::fs::create_dir(&db).unwrap();
    let t0 = now() - 10 * DAY;
    let users = vec![
        user_doc(
            ALICE,
            "alice",
            Some("alice-old-pw"),
            true,
            vec![
                doc! {"when": date(now() - DAY), "hashedToken": rc_token_hash(ALICE_TOKEN)},
                doc! {"when": date(now() - 200 * DAY), "hashedToken": rc_token_hash("expired-token")},
            ],
        ),
        user_doc(BOB, "bob", Some("bob-old-pw"), true, vec![]),
        user_doc(CAROL, "carol", None, true, vec![]),
        user_doc(DAVE, "dave", Some("dave-old-pw"), false, vec![]),
        doc! {"_id": "noNameUser0000005", "name": "No Username"},
        user_doc("aliceTwin00000006", "Alice", Some("x"), true, vec![]),
        doc! {"_id": 42, "username": "numeric-id"},
    ];
    write_bson(&db.join("users.bson"), &users, true);

    let rooms = vec![
        doc! {"_id": "GENERAL", "t": "c", "name": "general", "ts": date(t0), "default": true, "msgs": 999},
        doc! {"_id": SECRET, "t": "p", "name": "secret", "fname": "Secret Plans", "ro": false,
        "u": {"_id": ALICE, "username": "alice"}, "ts": date(t0)},
        doc! {"_id": dm_id(), "t": "d", "uids": [ALICE, BOB], "usernames": ["alice", "bob"], "ts": date(t0)},
        doc! {"_id": "livechatRoom00001", "t": "l", "name": "visitor"},
    ];
    write_bson(&db.join("rocketchat_room.bson"), &rooms, false);

    let sub =
        |id: &str, rid: &str, uid: &str, username: &str, t: &str, name: &str, ls: Option<i64>, roles: Vec<&str>| {
            let mut d = doc! {"_id": id, "rid": rid, "u": {"_id": uid, "username": username}, "t": t,
            "name": name, "open": true, "ts": date(t0), "roles": roles};
            if let Some(ls) = ls {
                d.insert("ls", date(ls));
            }
            d
        };
    // Rocket.Chat's own counters are kept as they are: it does not count the user's own
    // messages (two of the three after alice's mark in GENERAL are hers).
    let mut s1 = sub(
        "s1",
        "GENERAL",
        ALICE,
        "alice",
        "c",
        "general",
        Some(t0 + 2_000),
        vec![],
    );
    s1.insert("unread", 1);
    s1.insert("userMentions", 1);
    s1.insert("alert", true);
    let mut s3 = sub("s3", SECRET, ALICE, "alice", "p", "secret", Some(t0), vec!["owner"]);
    s3.insert("unread", 0i64);
    let subs = vec![
        s1,
        sub("s2", "GENERAL", BOB, "bob", "c", "general", Some(t0 + 100_000), vec![]),
        s3,
        sub("s4", &dm_id(), ALICE, "alice", "d", "bob", None, vec![]),
        sub("s5", &dm_id(), BOB, "bob", "d", "alice", Some(t0 + 100_000), vec![]),
        sub("s6", "GENERAL", CAROL, "carol", "c", "general", None, vec![]),
        sub("s7", "deletedRoom000001", ALICE, "alice", "c", "gone", None, vec![]),
        sub(
            "s8",
            "GENERAL",
            "deletedUser000001",
            "ghost",
            "c",
            "general",
            None,
            vec![],
        ),
    ];
    write_bson(&db.join("rocketchat_subscription.bson"), &subs, false);

    let msg = |id: &str, rid: &str, uid: &str, username: &str, text: &str, at: i64| {
        doc! {"_id": id, "rid": rid, "msg": text, "ts": date(at), "u": {"_id": uid, "username": username},
        "_updatedAt": date(at), "urls": [], "mentions": [], "channels": []}
    };
    let mut m2 = msg("m2", "GENERAL", BOB, "bob", "second (edited)", t0 + 2_000);
    m2.insert("editedAt", date(t0 + 2_500));
    m2.insert("editedBy", doc! {"_id": BOB, "username": "bob"});
    m2.insert("reactions", doc! {":+1:": {"usernames": ["alice"]}});
    m2.insert(
        "attachments",
        vec![Bson::Document(
            doc! {"title": "plan.pdf", "ts": date(t0 + 2_000), "type": "file"},
        )],
    );
    // m1 is a pinned thread bob starred; its reply is m3; m2 mentions everyone.
    let mut m1 = msg("m1", "GENERAL", ALICE, "alice", "first", t0 + 1_000);
    m1.insert("tcount", 1);
    m1.insert("tlm", date(t0 + 3_000));
    m1.insert("replies", vec![ALICE, BOB]);
    m1.insert("pinned", true);
    m1.insert("pinnedAt", date(t0 + 1_500));
    m1.insert("pinnedBy", doc! {"_id": ALICE, "username": "alice"});
    m1.insert("starred", vec![Bson::Document(doc! {"_id": BOB})]);
    m2.insert("mentions", vec![Bson::Document(doc! {"_id": "all", "username": "all"})]);
    let mut m3 = msg("m3", "GENERAL", ALICE, "alice", "a reply", t0 + 3_000);
    m3.insert("tmid", "m1");
    let mut m4 = msg("m4", "GENERAL", ALICE, "alice", "carol", t0 + 4_000);
    m4.insert("t", "uj");
    let mut hidden = msg("m2-old", "GENERAL", BOB, "bob", "second", t0 + 2_000);
    hidden.insert("_hidden", true);
    hidden.insert("parent", "m2");
    let messages = vec![
        // Out of order on purpose: a dump is in storage order, not time order.
        m3,
        m1,
        m2,
        m4,
        msg(
            "m5",
            "GENERAL",
            "deletedUser000001",
            "ghost",
            "from a deleted user",
            t0 + 5_000,
        ),
        hidden,
        msg("s-1", SECRET, ALICE, "alice", "secret plan", t0 + 1_000),
        msg("d-1", &dm_id(), ALICE, "alice", "hi bob", t0 + 1_000),
        msg("d-2", &dm_id(), BOB, "bob", "hi alice", t0 + 2_000),
        msg("orphan", "deletedRoom000001", ALICE, "alice", "lost", t0),
        doc! {"_id": "no-ts", "rid": "GENERAL", "msg": "x", "u": {"_id": ALICE}},
    ];
    write_bson(&db.join("rocketchat_message.bson"), &messages, false);
    let settings = vec![
        doc! {"_id": "uniqueID", "value": "rc-workspace-unique-id", "public": true},
        doc! {"_id": "Cloud_Workspace_Supported_Versions_Token", "value": "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl"},
        doc! {"_id": "Site_Name", "value": "Not carried over"},
    ];
    write_bson(&db.join("rocketchat_settings.bson"), &settings, false);
    Dump { dir, t0 }
}

fn summary_line<'a>(out: &'a str, collection: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(collection))
        .unwrap_or_else(|| panic!("no {collection} line in:\n{out}"))
}

fn texts(history: &Value) -> Vec<String> {
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_rocket_chat_dump_imports_once_and_is_served_as_it_was() {
    let dump = build_dump();
    let data = tempfile::tempdir().unwrap();
    let out = import(dump.dir.path(), data.path());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Counts per collection, with reasons per kind.
    assert!(
        summary_line(&stdout, "users ").contains("imported         4"),
        "{stdout}"
    );
    assert!(stdout.contains("user without username"), "{stdout}");
    assert!(stdout.contains("username taken by another user"), "{stdout}");
    assert!(stdout.contains("no string _id"), "{stdout}");
    assert!(
        summary_line(&stdout, "rocketchat_room").contains("imported         3"),
        "{stdout}"
    );
    assert!(stdout.contains("room type not imported"), "{stdout}");
    assert!(
        summary_line(&stdout, "rocketchat_subscription").contains("imported         6"),
        "{stdout}"
    );
    assert!(
        stdout.contains("room missing") && stdout.contains("user missing"),
        "{stdout}"
    );
    assert!(
        summary_line(&stdout, "rocketchat_message").contains("imported         8"),
        "{stdout}"
    );
    assert!(stdout.contains("hidden (edit history or deleted)"), "{stdout}");
    assert!(stdout.contains("message without ts"), "{stdout}");
    assert!(
        summary_line(&stdout, "rocketchat_settings").contains("imported         2"),
        "{stdout}"
    );

    // A second run writes nothing new.
    let again = import(dump.dir.path(), data.path());
    let stdout2 = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{stdout2}");
    assert!(
        summary_line(&stdout2, "rocketchat_message").contains("imported         0"),
        "{stdout2}"
    );
    assert!(stdout2.contains("8 × already in the store"), "{stdout2}");

    let server = ChatdProcess::serve(data.path());
    // The workspace's id and its signed supported-versions token came along.
    let http = Http::new(server.addr);
    let (_, info) = http.get("/api/info");
    assert_eq!(
        info["supportedVersions"]["signed"],
        "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl"
    );
    let (_, unique) = http.get("settings.public?_id=uniqueID,Site_Name");
    assert_eq!(
        unique["settings"][1],
        json!({"_id": "uniqueID", "value": "rc-workspace-unique-id"})
    );
    assert_eq!(
        unique["settings"][0]["value"], "chatd",
        "other settings are chatd's own"
    );
    // Old passwords work (and keep working once rehashed to Argon2id).
    for _ in 0..2 {
        let mut alice = Ddp::open(server.addr);
        assert_eq!(alice.login("alice", "alice-old-pw")["id"], ALICE);
    }
    let mut wrong = Ddp::open(server.addr);
    let err = wrong
        .call(
            "login",
            json!([{"user": {"username": "alice"}, "password": {"digest": sha256_hex("nope"), "algorithm": "sha-256"}}]),
        )
        .unwrap_err();
    assert_eq!(err["error"], 403);
    // An old Rocket.Chat resume token logs in; an expired one does not.
    let mut resumed = Ddp::open(server.addr);
    assert_eq!(resumed.resume(ALICE_TOKEN)["id"], ALICE);
    assert!(Ddp::open(server.addr)
        .call("login", json!([{"resume": "expired-token"}]))
        .is_err());
    // OAuth-only and deactivated users cannot log in with a password.
    for (name, pw) in [("carol", "anything"), ("dave", "dave-old-pw")] {
        let mut c = Ddp::open(server.addr);
        let res = c.call(
            "login",
            json!([{"user": {"username": name}, "password": {"digest": sha256_hex(pw), "algorithm": "sha-256"}}]),
        );
        assert!(res.is_err(), "{name} must not log in: {res:?}");
    }

    // History in Rocket.Chat's shapes, newest first, each message once.
    let mut alice = Ddp::open(server.addr);
    alice.login("alice", "alice-old-pw");
    let h = alice.ok("loadHistory", json!(["GENERAL", null, 50, null]));
    assert_eq!(
        texts(&h),
        ["from a deleted user", "carol", "a reply", "second (edited)", "first"]
    );
    let msgs = h["messages"].as_array().unwrap();
    let m2 = msgs.iter().find(|m| m["_id"] == "m2").unwrap();
    assert_eq!(m2["editedAt"]["$date"], dump.t0 + 2_500);
    assert_eq!(m2["editedBy"]["username"], "bob");
    assert_eq!(m2["reactions"][":+1:"]["usernames"], json!(["alice"]));
    assert_eq!(m2["attachments"][0]["title"], "plan.pdf");
    assert_eq!(m2["attachments"][0]["ts"]["$date"], dump.t0 + 2_000);
    assert_eq!(m2["ts"]["$date"], dump.t0 + 2_000);
    assert_eq!(msgs.iter().find(|m| m["_id"] == "m3").unwrap()["tmid"], "m1");
    assert_eq!(msgs.iter().find(|m| m["_id"] == "m4").unwrap()["t"], "uj");
    assert_eq!(
        msgs.iter().find(|m| m["_id"] == "m5").unwrap()["u"]["username"],
        "ghost"
    );

    // Membership from subscriptions; Rocket.Chat's own unread counts (and mentions, alert) as
    // they were.
    let subs = alice.ok("subscriptions/get", json!([]));
    let subs = subs.as_array().unwrap();
    let find = |rid: &str| subs.iter().find(|s| s["rid"] == rid).cloned();
    let general = find("GENERAL").unwrap();
    assert_eq!(
        (
            general["unread"].clone(),
            general["userMentions"].clone(),
            general["alert"].clone()
        ),
        (json!(1), json!(1), json!(true)),
        "{subs:?}"
    );
    assert_eq!(find(SECRET).unwrap()["unread"], 0, "her own message is not unread");
    assert_eq!(
        find(&dm_id()).unwrap()["unread"],
        2,
        "no ls: read position is the subscription time"
    );
    assert_eq!(find(SECRET).unwrap()["roles"], json!(["owner"]));
    let rooms = alice.ok("rooms/get", json!([]));
    let secret = rooms
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["_id"] == SECRET)
        .unwrap()
        .clone();
    assert_eq!(secret["t"], "p");
    assert_eq!(secret["fname"], "Secret Plans");
    assert_eq!(secret["u"]["username"], "alice");
    assert_eq!(secret["usersCount"], 1);

    // The DM keeps its id; bob reads it over REST after a REST login with his old password.
    let http = format!("http://{}/api/v1", server.addr);
    let login: Value = serde_json::from_str(
        &ureq::post(&format!("{http}/login"))
            .set("Content-Type", "application/json")
            .send_string(&json!({"username": "bob", "password": "bob-old-pw"}).to_string())
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    let (uid, token) = (
        login["data"]["userId"].as_str().unwrap().to_owned(),
        login["data"]["authToken"].as_str().unwrap().to_owned(),
    );
    assert_eq!(uid, BOB);
    let dm: Value = serde_json::from_str(
        &ureq::get(&format!("{http}/im.history?roomId={}", dm_id()))
            .set("X-User-Id", &uid)
            .set("X-Auth-Token", &token)
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(texts(&dm), ["hi alice", "hi bob"]);
    // Bob is not in the private group: it answers him as a room that does not exist.
    let mut bob = Ddp::open(server.addr);
    bob.login("bob", "bob-old-pw");
    assert_eq!(bob.ok("loadHistory", json!([SECRET, null, 50, null])), json!(false));

    // Imported reactions, threads, pins, stars and mentions are live data.
    let mut ha = Http::new(server.addr);
    ha.auth = Some((ALICE.to_owned(), alice.token.clone().unwrap()));
    let mut hb = Http::new(server.addr);
    hb.auth = Some((BOB.to_owned(), bob.token.clone().unwrap()));
    let ids = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, threads) = ha.get("chat.getThreadsList?rid=GENERAL");
    assert_eq!(ids(&threads, "threads"), ["m1"], "{threads}");
    let (_, replies) = ha.get("chat.getThreadMessages?tmid=m1");
    assert_eq!(ids(&replies, "messages"), ["m3"], "{replies}");
    let (_, pinned) = hb.get("chat.getPinnedMessages?roomId=GENERAL");
    assert_eq!(ids(&pinned, "messages"), ["m1"], "{pinned}");
    let (_, starred) = hb.get("chat.getStarredMessages?roomId=GENERAL");
    assert_eq!(ids(&starred, "messages"), ["m1"], "{starred}");
    let (_, starred) = ha.get("chat.getStarredMessages?roomId=GENERAL");
    assert_eq!(starred["total"], 0, "{starred}");
    assert_eq!(
        msgs.iter().find(|m| m["_id"] == "m2").unwrap()["mentions"][0]["_id"],
        "all"
    );
    // Taking back alice's imported reaction leaves none; a new reply counts on.
    let (status, v) = ha.post("chat.react", &json!({"emoji": ":+1:", "messageId": "m2"}));
    assert_eq!(status, 200, "{v}");
    let (_, m) = ha.get("chat.getMessage?msgId=m2");
    assert!(m["message"].get("reactions").is_none(), "{m}");
    alice.ok(
        "sendMessage",
        json!([{"rid": "GENERAL", "msg": "another reply", "tmid": "m1"}]),
    );
    let (_, m) = ha.get("chat.getMessage?msgId=m1");
    assert_eq!(m["message"]["tcount"], 2, "{m}");

    // New messages continue the imported rooms.
    alice.send_message("GENERAL", "after the move");
    let h = alice.ok("loadHistory", json!(["GENERAL", null, 2, null]));
    assert_eq!(texts(&h), ["after the move", "another reply"]);

    // The published clients log in as imported users, with old passwords and an old token.
    if let Some(python) = compat_python() {
        let out = run_compat_script(
            &python,
            "imported_login.py",
            &[
                format!("http://{}", server.addr),
                format!("ws://{}/websocket", server.addr),
                "alice".into(),
                "alice-old-pw".into(),
                ALICE_TOKEN.into(),
            ],
            Duration::from_secs(60),
        );
        assert!(out.contains(": ok"), "{out}");
        eprintln!("{out}");
    }

    // A re-run after the move keeps what changed in chatd: bob's new password, not Rocket.Chat's.
    drop(bob);
    drop(alice);
    let mut server = server;
    server.kill();
    let passwd = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args([
            "user",
            "passwd",
            "--username",
            "bob",
            "--password",
            "bob-new-pw",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(passwd.status.success(), "{}", String::from_utf8_lossy(&passwd.stderr));
    let third = import(dump.dir.path(), data.path());
    assert!(third.status.success(), "{}", String::from_utf8_lossy(&third.stderr));
    let server = ChatdProcess::serve(data.path());
    let login = |pw: &str| {
        Ddp::open(server.addr).call(
            "login",
            json!([{"user": {"username": "bob"}, "password": {"digest": sha256_hex(pw), "algorithm": "sha-256"}}]),
        )
    };
    assert!(login("bob-new-pw").is_ok());
    assert!(
        login("bob-old-pw").is_err(),
        "the re-run put Rocket.Chat's password back"
    );
}

#[test]
fn import_refuses_a_store_in_use_and_survives_garbage() {
    let dump = build_dump();
    // Garbage after valid documents: counted, the rest of that file is reported unreadable.
    let path = dump.dir.path().join("rocketchat/rocketchat_room.bson");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]);
    std::fs::write(&path, bytes).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = ChatdProcess::serve(data.path());
    let busy = import(dump.dir.path(), data.path());
    assert_eq!(busy.status.code(), Some(3), "{}", String::from_utf8_lossy(&busy.stderr));
    drop(server);

    let out = import(dump.dir.path(), data.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("invalid document length"), "{stdout}");
    assert!(
        summary_line(&stdout, "rocketchat_room").contains("imported         3"),
        "{stdout}"
    );

    // A folder without a dump is a clear error, not a panic.
    let empty = tempfile::tempdir().unwrap();
    let none = import(empty.path(), data.path());
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("users.bson"));
}
