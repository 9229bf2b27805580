//! Two chatd hosts sharing one MongoDB replica set (real processes, real driver): a message sent
//! on host A reaches a subscriber on host B through B's change stream; the hosts find each other
//! in the instances registry (no `--peer`) and typing crosses; a write's result reaches its
//! author only once the author's own host has applied it. Runs only when `CHATD_TEST_MONGO_URL`
//! names a replica set (each run in a database of its own, dropped afterwards); otherwise it
//! says loudly that it was skipped. There is no `mongod` on the machines this project is built
//! on, so this is the test that proves the backend where one exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::Duration;

use chatd::store::mongo::{MongoOptions, MongoStore};
use common::*;
use serde_json::json;

const SECRET: &str = "mongo-cluster-test-secret-0123456789";
const OPS: &str = "GENERAL";

/// `url` with its database replaced by `db` (options kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let hosts_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..hosts_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[test]
fn hosts_sharing_mongodb_deliver_messages_across_hosts_and_find_each_other() {
    let Some(url) = std::env::var("CHATD_TEST_MONGO_URL").ok().filter(|u| !u.is_empty()) else {
        // Written straight to stderr so the test harness does not swallow it.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: MongoDB cluster test — CHATD_TEST_MONGO_URL is not set (it must name a replica set) ***\n"
        );
        return;
    };
    let db = format!("chatd_cluster_{}", chatd::ids::random_id());
    let url = with_database(&url, &db);
    let root = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let dir = root.path().join(name);
        ChatdProcess::serve_env(
            &dir,
            &[
                "--listen",
                "127.0.0.1:0",
                "--mongo-url",
                &url,
                "--cluster-listen",
                "127.0.0.1:0",
                "--instance-ip",
                "127.0.0.1",
            ],
            &[("CHATD_CLUSTER_SECRET", SECRET)],
        )
        .expect("chatd starts on MongoDB")
    };
    let a = start("a");
    let b = start("b");

    // Users registered on A exist on B (one database).
    let mut alice = Ddp::open(a.addr);
    alice.register("alice", "alice-pw");
    alice.login("alice", "alice-pw");
    let mut bob = Ddp::open(b.addr);
    bob.register("bob", "bob-pw");
    bob.login("bob", "bob-pw");

    // A message sent on A reaches bob on B through B's change stream.
    bob.sub("stream-room-messages", json!([OPS, false])).unwrap();
    let sent = alice.send_message(OPS, "hello across hosts");
    let got = bob.next_message();
    assert_eq!(got["_id"], sent["_id"]);
    assert_eq!(got["msg"], "hello across hosts");
    // And alice's own host applied it before answering: her next history read has it.
    let history = alice.ok("loadHistory", json!([OPS, null, 10, null]));
    assert!(history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["_id"] == sent["_id"]));

    // The hosts found each other in the registry (no --peer given): typing crosses.
    wait_until("a peer link between A and B", || {
        metric(&a, "chatd_peer_links_up") == 1 && metric(&b, "chatd_peer_links_up") == 1
    });
    bob.sub("stream-notify-room", json!([format!("{OPS}/user-activity"), false]))
        .unwrap();
    alice.ok(
        "stream-notify-room",
        json!([format!("{OPS}/user-activity"), "alice", ["user-typing"], {}]),
    );
    loop {
        let ev = bob.next_event("stream-notify-room");
        if ev["fields"]["eventName"] == format!("{OPS}/user-activity") {
            assert_eq!(ev["fields"]["args"][0], "alice");
            break;
        }
    }
    // Both hosts' feeds are healthy.
    for p in [&a, &b] {
        let health = ureq::get(&format!("http://{}/health", p.addr)).call().unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(metric(p, "chatd_change_feed_bad_events_total"), 0);
    }
    drop(a);
    drop(b);

    let cleanup = MongoStore::open(&MongoOptions {
        url,
        database: Some(db),
        connect_timeout: Duration::from_secs(10),
        data_dir: root.path().join("cleanup"),
        host: "cleanup".into(),
        readers: 1,
    })
    .unwrap();
    cleanup.drop_database().unwrap();
    chatd::store::Backend::close(&*cleanup);
}

#[test]
fn database_names_are_swapped_into_urls() {
    assert_eq!(
        with_database("mongodb://h1,h2/x?replicaSet=rs0", "t"),
        "mongodb://h1,h2/t?replicaSet=rs0"
    );
    assert_eq!(with_database("mongodb://h1:27017", "t"), "mongodb://h1:27017/t");
    assert_eq!(with_database("mongodb://u:p@h1/?w=1", "t"), "mongodb://u:p@h1/t?w=1");
}
