//! Core realtime API against the real server (2 shards, port 0, temp dir) with real WebSocket
//! clients: accounts, rooms, cross-shard delivery, history, reconnect catch-up, authorization.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn register_login_and_resume() {
    let server = TestServer::start();
    let mut c = Ddp::open(server.addr);
    let uid = c.register("alice", "secret-1");
    assert_eq!(uid.len(), 17);
    let login = c.login("alice", "secret-1");
    assert_eq!(login["id"], uid.as_str());
    assert_eq!(login["type"], "password");
    assert!(login["tokenExpires"]["$date"].as_i64().unwrap() > 0);
    let token = login["token"].as_str().unwrap().to_owned();

    // Wrong password and unknown users are 403s with Meteor's error shape.
    let mut other = Ddp::open(server.addr);
    let err = other
        .call("login", json!([{"user": {"username": "alice"}, "password": {"digest": sha256_hex("nope"), "algorithm": "sha-256"}}]))
        .unwrap_err();
    assert_eq!(err["error"], 403);
    assert_eq!(err["reason"], "Incorrect password");
    assert_eq!(err["errorType"], "Meteor.Error");
    let err = other
        .call(
            "login",
            json!([{"user": {"username": "nobody"}, "password": {"digest": sha256_hex("x"), "algorithm": "sha-256"}}]),
        )
        .unwrap_err();
    assert_eq!(err["reason"], "User not found");

    // Resume on a new connection; email login works too.
    let r = other.resume(&token);
    assert_eq!(r["id"], uid.as_str());
    assert_eq!(r["type"], "resume");
    let mut by_email = Ddp::open(server.addr);
    let v = by_email.ok("login", json!([{"user": {"email": "alice@example.com"}, "password": {"digest": sha256_hex("secret-1"), "algorithm": "sha-256"}}]));
    assert_eq!(v["id"], uid.as_str());

    // Logout invalidates the token.
    other.ok("logout", json!([]));
    let mut again = Ddp::open(server.addr);
    let err = again.call("login", json!([{"resume": token}])).unwrap_err();
    assert_eq!(err["error"], 403);
    // Methods need a login.
    let err = again
        .call("sendMessage", json!([{"rid": "GENERAL", "msg": "x"}]))
        .unwrap_err();
    assert_eq!(err["error"], "error-not-authorized");
}

#[test]
fn pipelined_connect_and_login_work() {
    let server = TestServer::start();
    user(server.addr, "pipe");
    let mut ws = ws_connect(server.addr);
    let login = json!({"msg": "method", "method": "login", "id": "1", "params": [{"user": {"username": "pipe"}, "password": {"digest": sha256_hex("pipe-pw"), "algorithm": "sha-256"}}]});
    // Both frames written before reading anything, as rocketchat-async does.
    ws.send(tungstenite::Message::text(
        json!({"msg": "connect", "version": "1", "support": ["1"]}).to_string(),
    ))
    .unwrap();
    ws.send(tungstenite::Message::text(login.to_string())).unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|f: &Value| f["msg"] == "updated") {
        let tungstenite::Message::Text(t) = ws.read().unwrap() else {
            continue;
        };
        seen.push(serde_json::from_str(&t).unwrap());
    }
    let kinds: Vec<&str> = seen.iter().filter_map(|f| f["msg"].as_str()).collect();
    assert_eq!(kinds, ["connected", "result", "updated"]);
    assert!(seen[0].get("session").is_some() || seen[1]["msg"] == "connected");
    assert!(seen
        .iter()
        .any(|f| f["msg"] == "result" && f["result"]["token"].is_string()));
}

#[test]
fn channel_create_join_send_and_live_delivery() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let room = alice.ok("createChannel", json!(["dev", [], false]));
    assert_eq!(room["inserted"], true);
    assert_eq!(room["t"], "c");
    let rid = room["rid"].as_str().unwrap().to_owned();

    // Not a member yet: no subscription, no posting.
    assert_eq!(
        bob.sub("stream-room-messages", json!([rid, false])).unwrap_err()["error"],
        "not-allowed"
    );
    assert_eq!(
        bob.call("sendMessage", json!([{"rid": rid, "msg": "hi"}])).unwrap_err()["error"],
        "error-not-allowed"
    );

    assert_eq!(bob.ok("joinRoom", json!([rid])), json!(true));
    bob.sub(
        "stream-room-messages",
        json!([rid, {"useCollection": false, "args": []}]),
    )
    .unwrap();
    alice.sub("stream-room-messages", json!([rid, false])).unwrap();
    let sent = alice.ok(
        "sendMessage",
        json!([{"_id": "abc123", "rid": rid, "msg": "hello bob"}]),
    );
    assert_eq!(sent["_id"], "abc123");
    assert!(sent["ts"]["$date"].is_i64());
    let got = bob.next_message();
    assert_eq!(got["_id"], "abc123");
    assert_eq!(got["msg"], "hello bob");
    assert_eq!(got["u"]["username"], "alice");
    // The sender's own subscription receives it too (no self-skip for messages).
    assert_eq!(alice.next_message()["_id"], "abc123");

    // A re-send with the same id is idempotent: empty result, nothing delivered twice.
    assert_eq!(
        alice.ok(
            "sendMessage",
            json!([{"_id": "abc123", "rid": rid, "msg": "hello bob"}])
        ),
        Value::Null
    );
    alice.ok("sendMessage", json!([{"_id": "after", "rid": rid, "msg": "next"}]));
    assert_eq!(bob.next_message()["_id"], "after");

    // Edit and delete reach subscribers.
    bob.sub("stream-notify-room", json!([format!("{rid}/deleteMessage"), false]))
        .unwrap();
    alice.ok(
        "updateMessage",
        json!([{"_id": "abc123", "rid": rid, "msg": "hello, bob"}]),
    );
    let edited = bob.next_message();
    assert_eq!(edited["msg"], "hello, bob");
    assert_eq!(edited["editedBy"]["username"], "alice");
    assert_eq!(
        bob.call("deleteMessage", json!([{"_id": "abc123"}])).unwrap_err()["error"],
        "error-action-not-allowed"
    );
    alice.ok("deleteMessage", json!([{"_id": "abc123"}]));
    let del = bob.next_event("stream-notify-room");
    assert_eq!(del["fields"]["eventName"], format!("{rid}/deleteMessage"));
    assert_eq!(del["fields"]["args"][0]["_id"], "abc123");

    // rooms/get is a bare array and includes the channel; subscriptions carry unread counts.
    let rooms = bob.ok("rooms/get", json!([]));
    assert!(rooms
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["_id"] == rid.as_str() && r["t"] == "c"));
    let subs = bob.ok("subscriptions/get", json!([]));
    let sub = subs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["rid"] == rid.as_str())
        .unwrap()
        .clone();
    // Bob's own join notice is read; alice's two messages count, the deleted one too (as in
    // Rocket.Chat, a deletion does not take back an unread count).
    assert_eq!(sub["unread"], 2, "{sub}");
    bob.ok("readMessages", json!([rid]));
    let subs = bob.ok("subscriptions/get", json!([]));
    assert_eq!(
        subs.as_array()
            .unwrap()
            .iter()
            .find(|s| s["rid"] == rid.as_str())
            .unwrap()["unread"],
        0
    );
}

#[test]
fn users_on_different_shards_get_each_others_messages_once_and_in_order() {
    let server = TestServer::start();
    let mut setup = user(server.addr, "alice");
    let _bob_setup = user(server.addr, "bob");
    let rid = setup.ok("createChannel", json!(["xshard", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = login_and_locate(&server, "alice");
    let b = login_on_other_shard(&server, "bob", a.shard);
    let (shard_a, shard_b) = (a.shard, b.shard);
    let (mut alice, mut bob) = (a.client, b.client);
    assert_ne!(shard_a, shard_b, "the two users must sit on different shards");
    alice.sub("stream-room-messages", json!([rid, false])).unwrap();
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();

    const N: usize = 40;
    for i in 0..N {
        alice.send_message(&rid, &format!("a{i}"));
        bob.send_message(&rid, &format!("b{i}"));
    }
    let expected: Vec<String> = (0..N).flat_map(|i| [format!("a{i}"), format!("b{i}")]).collect();
    for client in [&mut alice, &mut bob] {
        let got: Vec<String> = (0..2 * N)
            .map(|_| client.next_message()["msg"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, expected, "every message exactly once, in send order");
    }
    // Nothing more arrives: a marker message is the very next event on both.
    alice.send_message(&rid, "end");
    assert_eq!(alice.next_message()["msg"], "end");
    assert_eq!(bob.next_message()["msg"], "end");
    let stats = server.stats();
    assert!(
        stats[shard_a].deliveries > 0 && stats[shard_b].deliveries > 0,
        "both shards delivered: {stats:?}"
    );
}

#[test]
fn history_pages_backwards_without_gaps_or_repeats() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let rid = alice.ok("createChannel", json!(["hist", [], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..45 {
        alice.send_message(&rid, &format!("m{i}"));
    }
    let mut end: Value = Value::Null;
    let mut seen = Vec::new();
    loop {
        let page = alice.ok("loadHistory", json!([rid, end, 10, null]));
        let msgs = page["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            break;
        }
        assert!(msgs.len() <= 10);
        for m in &msgs {
            seen.push(m["msg"].as_str().unwrap().to_owned());
        }
        end = msgs.last().unwrap()["ts"].clone();
    }
    let expected: Vec<String> = (0..45).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(
        seen, expected,
        "every message once, newest first, across page boundaries"
    );
}

#[test]
fn reconnect_with_resume_token_and_load_missed_messages() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let rid = alice.ok("createChannel", json!(["catchup", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();
    alice.send_message(&rid, "before");
    let last_seen = bob.next_message();
    assert_eq!(last_seen["msg"], "before");
    let token = bob.token.clone().unwrap();
    drop(bob);

    let mut missed_ids = Vec::new();
    for i in 0..7 {
        missed_ids.push(
            alice.send_message(&rid, &format!("missed {i}"))["_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut bob = Ddp::open(server.addr);
    bob.resume(&token);
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();
    let missed = bob.ok("loadMissedMessages", json!([rid, last_seen["ts"]]));
    let mut got: Vec<String> = missed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["_id"].as_str().unwrap().to_owned())
        .collect();
    got.reverse();
    assert_eq!(got, missed_ids, "exactly the messages sent while disconnected");
    // And live delivery resumes.
    alice.send_message(&rid, "live again");
    assert_eq!(bob.next_message()["msg"], "live again");
}

#[test]
fn non_members_and_leavers_receive_nothing() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let mut eve = user(server.addr, "eve");
    let secret = alice.ok("createPrivateGroup", json!(["secret", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Everyone listens to everything they are allowed to.
    for c in [&mut alice, &mut bob, &mut eve] {
        c.sub("stream-room-messages", json!(["__my_messages__", false]))
            .unwrap();
        c.sub("stream-room-messages", json!(["GENERAL", false])).unwrap();
    }
    assert_eq!(
        eve.sub("stream-room-messages", json!([secret, false])).unwrap_err()["error"],
        "not-allowed"
    );
    // A private group answers a non-member exactly as a room that does not exist.
    assert_eq!(
        eve.call("joinRoom", json!([secret])).unwrap_err(),
        eve.call("joinRoom", json!(["no-such-room"])).unwrap_err()
    );
    assert_eq!(eve.ok("loadHistory", json!([secret, null, 10, null])), json!(false));
    bob.sub("stream-room-messages", json!([secret, false])).unwrap();

    alice.send_message(&secret, "for bob only");
    assert_eq!(bob.next_message()["msg"], "for bob only");
    // Barrier: a GENERAL message is delivered after the secret one on every shard (feed order),
    // so if eve were to get the secret message it would arrive first.
    alice.send_message("GENERAL", "barrier 1");
    let first = eve.next_message();
    assert_eq!(first["msg"], "barrier 1", "eve must not see the private message");

    // Bob leaves; later messages reach alice but never bob.
    bob.ok("leaveRoom", json!([secret]));
    alice.send_message(&secret, "after bob left");
    alice.send_message("GENERAL", "barrier 2");
    loop {
        let m = bob.next_message();
        assert_ne!(m["msg"], "after bob left", "a user who left still received a message");
        if m["msg"] == "barrier 2" {
            break;
        }
    }
    assert_eq!(
        bob.call("sendMessage", json!([{"rid": secret, "msg": "x"}]))
            .unwrap_err()["error"],
        "error-invalid-room",
        "a former member of a private group learns no more than anyone else"
    );
}

#[test]
fn direct_messages_use_sorted_user_ids() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let dm = alice.ok("createDirectMessage", json!(["bob"]));
    let mut ids = [alice.uid(), bob.uid()];
    ids.sort();
    assert_eq!(dm["rid"], ids.concat());
    assert_eq!(dm["t"], "d");
    let rid = dm["rid"].as_str().unwrap().to_owned();
    let uid = bob.uid();
    bob.sub("stream-notify-user", json!([format!("{uid}/notification"), false]))
        .unwrap();
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();
    alice.send_message(&rid, "psst");
    assert_eq!(bob.next_message()["msg"], "psst");
    let note = bob.next_event("stream-notify-user");
    assert_eq!(note["fields"]["args"][0]["payload"]["rid"], rid.as_str());
    // Creating it again returns the same room.
    assert_eq!(bob.ok("createDirectMessage", json!(["alice"]))["rid"], rid.as_str());
}
