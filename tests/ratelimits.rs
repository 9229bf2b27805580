//! Rate limits as Rocket.Chat answers them: DDP `too-many-requests` with `timeToReset`, REST 429
//! with `X-RateLimit-*` headers, and logins blocked per account and per address after failures.
//! Every rule here uses a ten-minute window, so no result depends on how fast the test runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};

use chatd::config::{RateLimits, Rule};
use common::*;
use serde_json::{json, Value};

const LONG: u64 = 600_000;

fn rules() -> RateLimits {
    RateLimits {
        ddp_connection_method: Rule::new(2, LONG),
        ddp_user_method: Rule::new(3, LONG),
        send_message: Rule::new(3, LONG),
        rest_endpoint: Rule::new(3, LONG),
        trusted_proxies: 1,
        login_failures_per_user: Rule::new(3, LONG),
        login_failures_per_ip: Rule::new(5, LONG),
        ..RateLimits::default()
    }
}

fn assert_too_many(err: &Value) {
    assert_eq!(err["error"], "too-many-requests", "{err}");
    let wait = err["details"]["timeToReset"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 4 * LONG, "{err}");
    let reason = err["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Error, too many requests. Please slow down. You must wait "),
        "{err}"
    );
}

#[test]
fn ddp_calls_past_a_rule_get_too_many_requests_and_privileged_senders_are_exempt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A bot account, made offline with the operator command.
    for args in [
        vec!["user", "add", "--username", "robot"],
        vec!["user", "role", "--username", "robot", "--add", "bot"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(&args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("MONGO_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"robot-pw\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let config = dir.path().join("chatd.toml");
    std::fs::write(
        &config,
        format!(
            "[rate_limits]\nddp_connection_method = {{ calls = 2, interval_ms = {LONG} }}\n\
             ddp_user_method = {{ calls = 100, interval_ms = {LONG} }}\n\
             send_message = {{ calls = 3, interval_ms = {LONG} }}\n"
        ),
    )
    .unwrap();
    let p = ChatdProcess::serve_env(
        &data,
        &["--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()],
        &[("CHATD_RATE_LIMITS", "on")],
    )
    .unwrap();

    // Per connection per method: two calls, then refused; another connection has its own two
    // (the per-user rules count per shard, so they are covered by unit tests).
    let mut alice = user(p.addr, "alice");
    assert!(alice.call("rooms/get", json!([])).is_ok());
    assert!(alice.call("rooms/get", json!([])).is_ok());
    assert_too_many(&alice.call("rooms/get", json!([])).unwrap_err());
    let mut alice2 = Ddp::open(p.addr);
    alice2.login("alice", "alice-pw");
    assert!(
        alice2.call("rooms/get", json!([])).is_ok(),
        "a new connection's own allowance"
    );
    assert!(alice2.call("rooms/get", json!([])).is_ok());
    assert_too_many(&alice2.call("rooms/get", json!([])).unwrap_err());
    // Other methods are counted apart.
    assert!(alice.call("subscriptions/get", json!([])).is_ok());

    // Subscriptions count by name too; `stream-*` names get four times the calls.
    let mut carol = user(p.addr, "carol");
    for i in 0..8 {
        carol
            .sub("stream-notify-logged", json!([format!("event-{i}"), false]))
            .unwrap();
    }
    assert_too_many(
        &carol
            .sub("stream-notify-logged", json!(["event-9", false]))
            .unwrap_err(),
    );

    // sendMessage has its own rule (per user), which a bot skips.
    let rid = alice.ok("createChannel", json!(["limited", ["robot"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        alice.send_message(&rid, &format!("m{i}"));
    }
    assert_too_many(
        &alice
            .call("sendMessage", json!([{"rid": rid, "msg": "one too many"}]))
            .unwrap_err(),
    );
    let mut robot = Ddp::open(p.addr);
    robot.login("robot", "robot-pw");
    for i in 0..6 {
        robot.send_message(&rid, &format!("beep {i}"));
    }
    // A refused user's other calls and other users are unaffected.
    let mut bob = user(p.addr, "bob");
    assert!(bob.call("rooms/get", json!([])).is_ok());
}

#[test]
fn rest_answers_carry_rate_limit_headers_and_429_past_the_limit() {
    // One shard: request counters are per shard, and this test counts every request.
    let server = TestServer::with(|c| {
        c.shards = 1;
        c.rate_limits = rules();
    });
    // The first user of a workspace is its admin, whom no limit counts.
    let _admin = user(server.addr, "admin");
    let _alice = user(server.addr, "alice");
    let mut rest = Http::new(server.addr);
    rest.login("alice", "alice-pw");
    let before = chatd::ids::now_ms();
    for remaining in [2, 1, 0] {
        let resp = rest.req("GET", "me").call().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            resp.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        let reset: i64 = resp.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!(
            reset >= before && reset <= chatd::ids::now_ms() + LONG as i64,
            "epoch ms: {reset}"
        );
    }
    let resp = match rest.req("GET", "me").call() {
        Err(ureq::Error::Status(429, r)) => r,
        other => panic!("expected 429, got {other:?}"),
    };
    assert_eq!(resp.header("x-ratelimit-remaining"), Some("0"));
    let body: Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
    assert_eq!(body["success"], false);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("Error, too many requests. Please slow down. You must wait ")
            && error.ends_with("[error-too-many-requests]"),
        "{body}"
    );
    // Another endpoint has its own count. A logged-in caller is counted as a user, not as an
    // address: the same user from another address is still over, another user from the same
    // address is not (a whole company behind one NAT address does not share one count).
    assert_eq!(rest.get("users.getStatus").0, 200);
    let moved = rest.req("GET", "me").set("X-Forwarded-For", "198.51.100.7").call();
    assert!(matches!(moved, Err(ureq::Error::Status(429, _))), "{moved:?}");
    let _bob = user(server.addr, "bob");
    let mut bob_rest = Http::new(server.addr);
    bob_rest.login("bob", "bob-pw");
    assert_eq!(bob_rest.get("me").0, 200);
    // Endpoints outside /api/v1 are not limited.
    for _ in 0..5 {
        assert_eq!(rest.get("/api/info").0, 200);
    }
}

#[test]
fn failed_logins_block_the_account_and_then_the_address() {
    let server = TestServer::with(|c| c.rate_limits = rules());
    for name in ["alice", "bob", "carol"] {
        let mut c = Ddp::open(server.addr);
        c.register(name, &format!("{name}-pw"));
    }
    let login = |name: &str, pw: &str| {
        let mut c = Ddp::open(server.addr);
        c.call("login", login_params(name, pw))
    };
    for _ in 0..3 {
        assert_eq!(login("alice", "wrong").unwrap_err()["error"], 403);
    }
    // Blocked now, even with the right password, over DDP and REST alike.
    let err = login("alice", "alice-pw").unwrap_err();
    assert_eq!(err["error"], "error-login-blocked-for-user", "{err}");
    let (status, body) = Http::new(server.addr).post("login", &json!({"username": "ALICE", "password": "alice-pw"}));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("error-login-blocked-for-user")),
        "{body}"
    );
    // Others log in; a success clears an account's failures.
    assert!(login("bob", "wrong").is_err());
    assert!(login("bob", "bob-pw").is_ok());
    // Five failures from one address block it for every account.
    assert!(login("carol", "wrong").is_err());
    let err = login("carol", "carol-pw").unwrap_err();
    assert_eq!(err["error"], "error-login-blocked-for-ip", "{err}");
    // A client with another address (behind the trusted proxy) is not blocked.
    let other = Http::new(server.addr)
        .req("POST", "login")
        .set("Content-Type", "application/json")
        .set("X-Forwarded-For", "198.51.100.7")
        .send_string(&json!({"username": "carol", "password": "carol-pw"}).to_string())
        .unwrap();
    assert_eq!(other.status(), 200);
}
