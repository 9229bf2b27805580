//! The REST API v1 subset: the published `rocketchat_API` client (PyPI, in the test virtualenv)
//! used unmodified, REST writes delivered live over DDP, and bad requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn rocketchat_api_client_works_unmodified() {
    let Some(python) = compat_python() else { return };
    let server = TestServer::start();
    let out = run_compat_script(
        &python,
        "rest_api.py",
        &[
            format!("http://{}", server.addr),
            format!("ws://{}/websocket", server.addr),
        ],
        Duration::from_secs(120),
    );
    assert!(out.contains(": ok"), "{out}");
}

fn assert_error(res: (u16, Value), status: u16, what: &str) {
    assert_eq!(res.0, status, "{what}: {}", res.1);
    assert_eq!(res.1["success"], false, "{what}: {}", res.1);
    assert!(res.1["error"].is_string(), "{what}: {}", res.1);
}

#[test]
fn rest_writes_are_delivered_live_on_every_shard_and_tokens_are_shared_with_ddp() {
    let server = TestServer::start();
    let _alice_ddp = user(server.addr, "alice");
    let mut rest = Http::new(server.addr);
    let login = rest.login("alice", "alice-pw");
    let token = login["data"]["authToken"].as_str().unwrap().to_owned();

    // A REST token logs in over DDP, and a DDP token works for REST.
    let mut via_rest_token = Ddp::open(server.addr);
    assert_eq!(via_rest_token.resume(&token)["id"], login["data"]["userId"]);
    let bob = user(server.addr, "bob");
    let mut bob_rest = Http::new(server.addr);
    bob_rest.auth = Some((bob.uid(), bob.token.clone().unwrap()));
    assert_eq!(bob_rest.get("me").1["username"], "bob");

    // Watchers on both shards (registered on connections that stay open and never log in, so
    // the per-shard session counts only move for the placements).
    let _registrations: Vec<Ddp> = (0..2)
        .map(|i| {
            let mut c = Ddp::open(server.addr);
            c.register(&format!("watcher{i}"), &format!("watcher{i}-pw"));
            c
        })
        .collect();
    let mut watchers: Vec<Placed> = (0..2)
        .map(|shard| {
            let mut p = login_on_other_shard(&server, &format!("watcher{shard}"), 1 - shard);
            p.client.sub("stream-room-messages", json!(["GENERAL", false])).unwrap();
            p.client
                .sub("stream-notify-room", json!(["GENERAL/deleteMessage", false]))
                .unwrap();
            p
        })
        .collect();
    assert_ne!(watchers[0].shard, watchers[1].shard);

    let (status, posted) = rest.post("chat.postMessage", &json!({"channel": "#general", "text": "over REST"}));
    assert_eq!(status, 200, "{posted}");
    let mid = posted["message"]["_id"].as_str().unwrap().to_owned();
    for w in &mut watchers {
        let m = w.client.next_message();
        assert_eq!(
            (m["_id"].as_str(), m["msg"].as_str()),
            (Some(mid.as_str()), Some("over REST"))
        );
    }
    let (status, deleted) = rest.post("chat.delete", &json!({"roomId": "GENERAL", "msgId": mid}));
    assert_eq!(status, 200, "{deleted}");
    for w in &mut watchers {
        let ev = w.client.next_event("stream-notify-room");
        assert_eq!(ev["fields"]["args"][0]["_id"], mid, "{ev}");
    }
}

#[test]
fn bad_requests_get_rocket_chat_errors_and_the_server_keeps_serving() {
    let server = TestServer::with(|c| c.limits.max_http_body_bytes = 64 * 1024);
    let _alice = user(server.addr, "alice");
    let mut http = Http::new(server.addr);

    // No auth, wrong token, wrong password.
    let anon = Http::new(server.addr);
    let (status, v) = anon.get("me");
    assert_error((status, v.clone()), 401, "no auth");
    assert_eq!(v["status"], "error");
    let mut forged = Http::new(server.addr);
    forged.auth = Some(("nobody".into(), "not-a-token".into()));
    assert_error(forged.get("rooms.get"), 401, "wrong token");
    assert_error(
        anon.post("login", &json!({"username": "alice", "password": "wrong"})),
        401,
        "wrong password",
    );
    assert_error(
        anon.post("login", &json!({"username": "nobody", "password": "x"})),
        401,
        "unknown user",
    );

    http.login("alice", "alice-pw");
    // Malformed JSON, a body that is not an object, wrong types.
    assert_error(
        http.post_raw("chat.postMessage", b"{\"roomId\": "),
        400,
        "malformed JSON",
    );
    assert_error(http.post_raw("chat.postMessage", b"[1,2]"), 400, "array body");
    let (status, v) = http.post("chat.postMessage", &json!({"roomId": 42, "text": "x"}));
    assert_error((status, v.clone()), 400, "roomId as a number");
    assert_eq!(v["errorType"], "invalid-params");
    assert_error(
        http.post("channels.create", &json!({"name": ["x"]})),
        400,
        "name as a list",
    );
    assert_error(
        http.get("channels.history?roomId=GENERAL&count=lots"),
        400,
        "count not a number",
    );
    assert_error(
        http.get("channels.history?roomId=GENERAL&latest=yesterday"),
        400,
        "bad date",
    );
    // Unknown endpoints and methods.
    assert_error(http.get("no.such.endpoint"), 404, "unknown endpoint");
    assert_error(http.post("me", &json!({})), 404, "wrong method");
    // Not allowed: history of a private group one is not in.
    let mut bob = Http::new(server.addr);
    let _bob = user(server.addr, "bob");
    bob.login("bob", "bob-pw");
    let (_, grp) = bob.post("groups.create", &json!({"name": "secret"}));
    let gid = grp["group"]["_id"].as_str().unwrap().to_owned();
    // Another user's private group is answered exactly as a group that does not exist.
    let foreign = http.get(&format!("groups.history?roomId={gid}"));
    assert_error(foreign.clone(), 400, "foreign group history");
    assert_eq!(foreign, http.get("groups.history?roomId=nope"), "foreign group history");
    assert_error(http.get("channels.info?roomName=nope"), 400, "unknown channel");
    // Oversized body.
    let big = json!({"roomId": "GENERAL", "text": "x".repeat(100 * 1024)});
    assert_error(http.post("chat.postMessage", &big), 413, "oversized body");
    // A message over the size limit.
    let long = json!({"roomId": "GENERAL", "text": "y".repeat(6000)});
    let (status, v) = http.post("chat.postMessage", &long);
    assert_error((status, v.clone()), 400, "message too long");
    assert_eq!(v["errorType"], "error-message-size-exceeded");

    // Still serving, on a fresh connection and on the old one.
    let (status, v) = Http::new(server.addr).get("/api/info");
    assert_eq!(status, 200, "{v}");
    let (status, v) = http.post("chat.postMessage", &json!({"roomId": "GENERAL", "text": "still here"}));
    assert_eq!(status, 200, "{v}");
    let (status, v) = http.get("channels.history?roomId=GENERAL&count=1");
    assert_eq!((status, v["messages"][0]["msg"].as_str()), (200, Some("still here")));
}
