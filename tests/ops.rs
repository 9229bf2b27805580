//! Operations: `/metrics` checked by the reference Prometheus parser and the same from every
//! shard; the monitoring kit names only metrics that exist; `/health` covers every shard and
//! the tailer (unhealthy when the feed stalls with changes pending); `/health/ready` goes false
//! while draining; the environment of a Rocket.Chat unit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const KIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");

/// One scrape on a new connection: (shard that answered, body).
fn scrape(addr: std::net::SocketAddr) -> (usize, String) {
    let agent = ureq::AgentBuilder::new().timeout(WAIT).build();
    let resp = agent.get(&format!("http://{addr}/metrics")).call().unwrap();
    assert!(resp.content_type().starts_with("application/openmetrics-text"));
    let shard = resp.header("x-chatd-shard").unwrap().parse().unwrap();
    (shard, resp.into_string().unwrap())
}

/// Runs `check_metrics.py` on an exposition (and a kit folder): (problems, samples, referenced).
fn check(
    python: &std::path::Path,
    exposition: &str,
    kit: Option<&std::path::Path>,
) -> (Vec<String>, BTreeMap<String, f64>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, exposition).unwrap();
    let mut args = vec![file.display().to_string()];
    args.extend(kit.map(|k| k.display().to_string()));
    let out = run_compat_script(python, "check_metrics.py", &args, Duration::from_secs(60));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let samples = v["samples"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    (strings("problems"), samples, strings("referenced"))
}

fn get_json(url: &str) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new().timeout(WAIT).build();
    match agent.get(url).call() {
        Ok(r) => (r.status(), serde_json::from_str(&r.into_string().unwrap()).unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, serde_json::from_str(&r.into_string().unwrap()).unwrap()),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[test]
fn metrics_parse_strictly_every_family_is_documented_and_every_shard_answers_the_same() {
    let Some(python) = compat_python() else { return };
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let rid = alice.ok("createChannel", json!(["ops", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();
    for i in 0..3 {
        alice.send_message(&rid, &format!("m{i}"));
    }
    for _ in 0..3 {
        bob.next_message();
    }

    // The same figures whichever shard answers (new connection per scrape until both answered).
    let mut by_shard: BTreeMap<usize, String> = BTreeMap::new();
    for _ in 0..200 {
        let (shard, body) = scrape(server.addr);
        by_shard.entry(shard).or_insert(body);
        if by_shard.len() == 2 {
            break;
        }
    }
    assert_eq!(by_shard.len(), 2, "both shards answered /metrics");
    let mut parsed = Vec::new();
    for body in by_shard.values() {
        let (problems, samples, referenced) = check(&python, body, Some(std::path::Path::new(KIT)));
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(referenced.len() >= 15, "the kit names {referenced:?}");
        parsed.push(samples);
    }
    let (a, b) = (&parsed[0], &parsed[1]);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same series from both shards"
    );
    let stable = [
        "chatd_deliveries_total",
        "chatd_sessions_authenticated",
        "chatd_subscriptions",
        "chatd_change_feed_head",
        "chatd_change_feed_delivered",
        "chatd_change_feed_applied",
        "chatd_delivery_latency_seconds_count",
        "chatd_method_duration_seconds_count",
    ];
    for (key, value) in a {
        if stable.iter().any(|s| key.starts_with(&format!("{s}{{"))) {
            assert_eq!(Some(value), b.get(key), "{key} differs between the shards' answers");
        }
    }
    let sum = |prefix: &str| -> f64 {
        a.iter()
            .filter(|(k, _)| k.starts_with(&format!("{prefix}{{")))
            .map(|(_, v)| v)
            .sum()
    };
    assert!(sum("chatd_deliveries_total") >= 3.0);
    assert_eq!(sum("chatd_sessions_authenticated"), 2.0);
    assert!(sum("chatd_subscriptions") >= 1.0);
    assert!(sum("chatd_delivery_latency_seconds_count") >= 3.0);
    assert!(sum("chatd_store_commit_group_size_count") >= 3.0);
    assert!(a
        .keys()
        .any(|k| k.starts_with("chatd_method_duration_seconds_bucket{") && k.contains(r#""api": "ddp""#)));

    // The kit check is not vacuous: a rule naming a metric that does not exist is caught.
    let kit = tempfile::tempdir().unwrap();
    for f in ["prometheus.yml", "grafana-dashboard.json"] {
        std::fs::copy(format!("{KIT}/{f}"), kit.path().join(f)).unwrap();
    }
    let rules = std::fs::read_to_string(format!("{KIT}/alerts.yml")).unwrap()
        + "      - alert: Bogus\n        expr: chatd_no_such_metric > 1\n";
    std::fs::write(kit.path().join("alerts.yml"), rules).unwrap();
    let (problems, _, _) = check(&python, &by_shard[&0], Some(kit.path()));
    assert!(
        problems.iter().any(|p| p.contains("chatd_no_such_metric")),
        "{problems:?}"
    );
}

fn config_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("chatd.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn health_covers_every_shard_and_goes_unhealthy_while_the_feed_stalls_with_changes_pending() {
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause-tailer");
    let config = config_file(dir.path(), "[health]\nfeed_stall_secs = 1\n");
    let p = ChatdProcess::serve_env(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--config", &config],
        &[("CHATD_TEST_PAUSE_TAILER_FILE", pause.to_str().unwrap())],
    )
    .unwrap();
    let health = format!("http://{}/health", p.addr);
    let (code, body) = get_json(&health);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok");
    let shards = body["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    assert!(shards.iter().all(|s| s["answered"] == true), "{body}");

    let mut alice = user(p.addr, "alice");
    let rid = alice.ok("createChannel", json!(["stall", [], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Stop the tailer, then write: the change is durable and pending, and nothing moves.
    std::fs::write(&pause, b"").unwrap();
    let addr = p.addr;
    let writer = std::thread::spawn(move || {
        let mut c = Ddp::open(addr);
        c.login("alice", "alice-pw");
        c.call("sendMessage", json!([{"rid": rid, "msg": "held"}]))
    });
    wait_until("/health to report the stalled feed", || {
        let (code, body) = get_json(&health);
        code == 503
            && body["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_str().unwrap().starts_with("change feed stalled"))
    });
    let (code, body) = get_json(&format!("http://{}/health/ready", p.addr));
    assert_eq!((code, body["status"].as_str()), (503, Some("unhealthy")), "{body}");
    assert!(metric(&p, "chatd_change_feed_stalled_seconds") >= 1);

    std::fs::remove_file(&pause).unwrap();
    wait_until("/health to recover once the tailer moves", || {
        get_json(&health).0 == 200
    });
    assert!(writer.join().unwrap().is_ok(), "the held message was accepted");
    drop(alice);
}

#[test]
fn ready_goes_false_while_draining_and_live_stays_true_until_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "[health]\ndrain_notice_secs = 60\n");
    let mut p = ChatdProcess::serve_with(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--config", &config],
    )
    .unwrap();
    let ready = format!("http://{}/health/ready", p.addr);
    let live = format!("http://{}/health/live", p.addr);
    assert_eq!(get_json(&ready).0, 200);
    let mut client = user(p.addr, "carol");

    let pid = i32::try_from(p.child.id()).unwrap();
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_until("/health/ready to answer 503 while draining", || {
        let (code, body) = get_json(&ready);
        code == 503 && body["status"] == "draining"
    });
    // Everything else is served as usual during the notice.
    assert_eq!(get_json(&live).0, 200);
    assert_eq!(metric(&p, "chatd_draining"), 1);
    client.ok("createChannel", json!(["still-served", [], false]));

    // A second SIGTERM ends the notice: clients are told to reconnect and the process exits 0.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    use wait_timeout::ChildExt;
    let status = p
        .child
        .wait_timeout(WAIT)
        .unwrap()
        .expect("chatd exits after the drain");
    assert!(status.success(), "{status}");
    // The store stopped with a checkpoint: the journal (which held the channel) is empty.
    let journal = std::fs::metadata(dir.path().join("data").join("chatd.journal")).unwrap();
    assert_eq!(journal.len(), 0, "nothing left to replay after a clean stop");
}
