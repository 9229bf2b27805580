//! chatd hosts sharing one MongoDB replica set (real processes, real driver): a message sent on
//! host A reaches a subscriber on host B through B's change stream; the hosts find each other in
//! the instances registry (no `--peer`) and typing crosses; a quiet cluster stays healthy after
//! a login; a restarted host does not replay old messages; an import is refused while a host
//! runs and reads a live Rocket.Chat database past its first batch; `/health` through a primary
//! election. Runs only when `CHATD_TEST_MONGO_URL` names a replica set (each test in a database
//! of its own, dropped afterwards); otherwise each test says loudly that it was skipped. There is
//! no `mongod` on the machines this project is built on, so these are the tests that prove the
//! backend where one exists (the CI workflow in `.github/workflows/mongodb.yml` runs them).
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
    // And it is stored: a history read (answered by MongoDB, majority-committed) has it.
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

    drop_database(&url, &db, root.path());
}

fn drop_database(url: &str, db: &str, root: &std::path::Path) {
    let cleanup = MongoStore::open(&MongoOptions {
        url: url.to_owned(),
        database: Some(db.to_owned()),
        connect_timeout: Duration::from_secs(10),
        data_dir: root.join("cleanup"),
        host: "cleanup".into(),
        readers: 1,
    })
    .unwrap();
    cleanup.drop_database().unwrap();
    chatd::store::Backend::close(&*cleanup);
}

/// The replica set to test against, or `None` after saying loudly that `what` was skipped.
fn mongo_url(what: &str) -> Option<String> {
    let url = std::env::var("CHATD_TEST_MONGO_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {what} — CHATD_TEST_MONGO_URL is not set (it must name a replica set) ***\n"
        );
    }
    url
}

/// A test's own database on the replica set: its URL, its name, and a directory for the hosts.
struct Setup {
    url: String,
    db: String,
    root: tempfile::TempDir,
}

impl Setup {
    /// `None` (after saying so) without a replica set.
    fn new(what: &str, prefix: &str) -> Option<Self> {
        let base = mongo_url(what)?;
        let db = format!("{prefix}_{}", chatd::ids::random_id());
        Some(Self {
            url: with_database(&base, &db),
            db,
            root: tempfile::tempdir().unwrap(),
        })
    }

    fn host(&self, name: &str, config: &str) -> ChatdProcess {
        host(self.root.path(), name, &self.url, config)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            drop_database(&self.url, &self.db, self.root.path());
        }
    }
}

/// A host on `url` with its data in `root/name`, and `config` as its configuration file.
fn host(root: &std::path::Path, name: &str, url: &str, config: &str) -> ChatdProcess {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("chatd.toml");
    std::fs::write(&file, config).unwrap();
    ChatdProcess::serve_env(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--mongo-url",
            url,
            "--cluster-listen",
            "127.0.0.1:0",
            "--instance-ip",
            "127.0.0.1",
            "--config",
            file.to_str().unwrap(),
        ],
        &[("CHATD_CLUSTER_SECRET", SECRET)],
    )
    .expect("chatd starts on MongoDB")
}

/// SIGTERM twice (the drain notice, then the stop), and the exit.
fn stop(mut p: ChatdProcess) {
    use wait_timeout::ChildExt;
    let pid = i32::try_from(p.child.id()).unwrap();
    for _ in 0..2 {
        // SAFETY: signalling the child this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if let Ok(Some(_)) = p.child.wait_timeout(Duration::from_secs(1)) {
            return;
        }
    }
    let status = p.child.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(status.is_some(), "chatd stops on SIGTERM");
}

fn health(p: &ChatdProcess) -> (u16, serde_json::Value) {
    match ureq::get(&format!("http://{}/health", p.addr)).call() {
        Ok(r) => (r.status(), serde_json::from_str(&r.into_string().unwrap()).unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, serde_json::from_str(&r.into_string().unwrap()).unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_login_on_a_quiet_cluster_leaves_the_host_healthy() {
    let Some(t) = Setup::new("health after a login on a quiet cluster", "chatd_quiet") else {
        return;
    };
    let a = t.host("a", "[health]\nfeed_stall_secs = 2\n");
    let mut alice = Ddp::open(a.addr);
    alice.register("alice", "alice-pw");
    alice.login("alice", "alice-pw");
    // Writes without a change record: a login's token, a rehash, a read of a read room.
    let mut again = Ddp::open(a.addr);
    again.login("alice", "alice-pw");
    again.ok("readMessages", json!([OPS]));
    // Quiet for longer than the stall limit: the elapsed time is what is tested.
    std::thread::sleep(Duration::from_secs(4));
    let (code, body) = health(&a);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_restarted_host_does_not_replay_old_messages_to_new_sessions() {
    let Some(t) = Setup::new("no replay after a restart", "chatd_replay") else {
        return;
    };
    let a = t.host("a", "");
    let b = t.host("b", "");
    let mut bob = Ddp::open(b.addr);
    bob.register("bob", "bob-pw");
    bob.login("bob", "bob-pw");
    bob.send_message(OPS, "before the stop");
    stop(a);
    // While A is down, 20 messages.
    let old: Vec<String> = (0..20)
        .map(|i| {
            bob.send_message(OPS, &format!("while A was down {i}"))["_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let a = t.host("a", "");
    let mut alice = Ddp::open(a.addr);
    alice.register("alice", "alice-pw");
    alice.login("alice", "alice-pw");
    alice.sub("stream-room-messages", json!([OPS, false])).unwrap();
    let fresh = bob.send_message(OPS, "after the restart");
    loop {
        let m = alice.next_message();
        let id = m["_id"].as_str().unwrap().to_owned();
        assert!(!old.contains(&id), "an old message replayed as new: {m}");
        if id == fresh["_id"].as_str().unwrap() {
            break;
        }
    }
    // The restarted host's feed began at its start: it did not read the 20 again.
    assert!(metric(&a, "chatd_change_feed_events_total") < 20);
}

#[test]
fn an_import_is_refused_while_a_host_runs_and_reads_a_live_source_past_its_first_batch() {
    let Some(t) = Setup::new("import into MongoDB from a live source", "chatd_import") else {
        return;
    };
    let source_db = format!("rc_{}", t.db);
    let source_url = with_database(&t.url, &source_db);
    // A Rocket.Chat database with more users than one import batch (10,000).
    let (rt, source) = mongo_db(&source_url, &source_db);
    let users: Vec<bson::Document> = (0..10_001)
        .map(|i| common::rcdump::user_doc(&format!("u{i:05}"), &format!("user{i:05}"), None, true, vec![]))
        .collect();
    rt.block_on(async { source.collection::<bson::Document>("users").insert_many(users).await })
        .unwrap();
    let import = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args([
                "import",
                "rocketchat",
                "--mongo-url",
                &source_url,
                "--into-mongo-url",
                &t.url,
            ])
            .arg("--data-dir")
            .arg(t.root.path().join("import"))
            .output()
            .unwrap()
    };
    let a = t.host("a", "");
    wait_until("the host in the registry", || {
        let out = import();
        out.status.code() == Some(3) && String::from_utf8_lossy(&out.stderr).contains("running chatd hosts")
    });
    stop(a);
    let out = import();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (rt, chatd_db) = mongo_db(&t.url, &t.db);
    let n = rt
        .block_on(async {
            chatd_db
                .collection::<bson::Document>("chatd_users")
                .count_documents(bson::doc! {})
                .await
        })
        .unwrap();
    assert_eq!(n, 10_001);
    rt.block_on(async { source.drop().await }).unwrap();
}

#[test]
fn health_through_a_primary_election() {
    let Some(t) = Setup::new("health through a primary election", "chatd_election") else {
        return;
    };
    let (rt, admin) = mongo_db(&t.url, "admin");
    let hello = rt
        .block_on(async { admin.run_command(bson::doc! {"hello": 1}).await })
        .unwrap();
    if hello.get_array("hosts").map_or(0, |h| h.len()) < 3 {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: health through a primary election — the replica set has fewer than 3 electable members ***\n"
        );
        return;
    }
    let a = t.host("a", "");
    assert_eq!(health(&a).0, 200);
    // The primary steps down; an election follows.
    let _ = rt.block_on(async {
        admin
            .run_command(bson::doc! {"replSetStepDown": 10, "secondaryCatchUpPeriodSecs": 5})
            .await
    });
    let started = std::time::Instant::now();
    let mut unhealthy_since: Option<std::time::Instant> = None;
    let mut longest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(25) {
        let (code, _) = health(&a);
        if code == 200 {
            if let Some(t) = unhealthy_since.take() {
                longest = longest.max(t.elapsed());
            }
        } else {
            unhealthy_since.get_or_insert_with(std::time::Instant::now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(t) = unhealthy_since {
        longest = longest.max(t.elapsed());
    }
    // The store stays "reachable" (any member answers); only the change stream's reconnection
    // may show, for about the election's length.
    assert!(longest <= Duration::from_secs(12), "unhealthy for {longest:?}");
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
