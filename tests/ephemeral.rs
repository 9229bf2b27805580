//! Typing and presence across shards (the ephemeral path): clients placed on known shards, real
//! WebSockets, 2 shards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// The flood test reads this process's RSS, so the tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers users on connections that stay open and never log in, so they do not disturb the
/// per-shard session counts that placement relies on.
fn register_all(server: &TestServer, names: &[&str]) -> Vec<Ddp> {
    names
        .iter()
        .map(|n| {
            let mut c = Ddp::open(server.addr);
            c.register(n, &format!("{n}-pw"));
            c
        })
        .collect()
}

/// Logs `name` in on a connection that lands on `shard` (0 or 1). The attempts that landed
/// elsewhere are logged out (so they do not keep the user online) but stay connected (so closing
/// them cannot disturb later placements); they go into `keep`.
fn on_shard(server: &TestServer, name: &str, shard: usize, keep: &mut Vec<Ddp>) -> Ddp {
    let p = login_on_other_shard(server, name, 1 - shard);
    assert_eq!(p.shard, shard);
    for mut spare in p.spare {
        spare.ok("logout", json!([]));
        keep.push(spare);
    }
    p.client
}

/// The next `stream-notify-room` event (name, args).
fn next_room_event(c: &mut Ddp) -> (String, Value) {
    let ev = c.next_event("stream-notify-room");
    (
        ev["fields"]["eventName"].as_str().unwrap().to_owned(),
        ev["fields"]["args"].clone(),
    )
}

/// The next `user-activity` event: (username, activities).
fn next_activity(c: &mut Ddp) -> (String, Value) {
    loop {
        let (name, args) = next_room_event(c);
        if name.ends_with("/user-activity") {
            return (args[0].as_str().unwrap().to_owned(), args[1].clone());
        }
    }
}

fn typing_event(c: &mut Ddp, rid: &str, who: &str) {
    c.ok(
        "stream-notify-room",
        json!([format!("{rid}/user-activity"), who, ["user-typing"], {}]),
    );
}

// Ordering used below: notices from one shard to another travel one FIFO channel, so when a
// later notice from the same shard arrives first, the earlier one was never delivered.
#[test]
fn typing_reaches_members_on_every_shard_but_not_the_sender_or_outsiders() {
    let _serial = serial();
    let server = TestServer::start();
    let mut keep = register_all(&server, &["ann", "ben", "cat", "dan", "nat"]);
    let mut ann = on_shard(&server, "ann", 0, &mut keep);
    let mut cat = on_shard(&server, "cat", 0, &mut keep);
    let mut ben = on_shard(&server, "ben", 1, &mut keep);
    let mut dan = on_shard(&server, "dan", 1, &mut keep);
    let mut nat = on_shard(&server, "nat", 1, &mut keep);
    let room = ann.ok("createPrivateGroup", json!(["typing-room", ["ben", "cat", "dan"]]));
    let rid = room["_id"].as_str().unwrap().to_owned();
    let activity = format!("{rid}/user-activity");
    let typing = format!("{rid}/typing");
    for c in [&mut ann, &mut ben, &mut cat, &mut dan] {
        c.sub("stream-notify-room", json!([activity, false])).unwrap();
    }
    ben.sub("stream-notify-room", json!([typing, false])).unwrap();
    // Outsiders can neither listen nor write.
    assert!(nat.sub("stream-notify-room", json!([activity, false])).is_err());
    let refused = nat
        .call("stream-notify-room", json!([activity, "nat", ["user-typing"], {}]))
        .unwrap_err();
    assert_eq!(refused["error"], "not-allowed", "{refused}");

    // 1. ann (shard 0) types: members on both shards get it, in both forms where subscribed.
    ann.ok(
        "stream-notify-room",
        json!([activity, "ann", ["user-typing"], {"tmid": null}]),
    );
    assert_eq!(
        next_room_event(&mut ben),
        (activity.clone(), json!(["ann", ["user-typing"], {"tmid": null}]))
    );
    assert_eq!(next_room_event(&mut ben), (typing.clone(), json!(["ann", true])));
    for c in [&mut cat, &mut dan] {
        assert_eq!(next_activity(c), ("ann".into(), json!(["user-typing"])));
    }
    // 2. cat (shard 0) stops typing with the legacy call, bridged to user-activity. ann's next
    //    event is cat's: ann's own notice (earlier, same shard) never reached her.
    cat.ok("stream-notify-room", json!([typing, "cat", false]));
    assert_eq!(next_activity(&mut ann), ("cat".into(), json!([])));
    assert_eq!(next_room_event(&mut ben), (activity.clone(), json!(["cat", []])));
    assert_eq!(next_room_event(&mut ben), (typing.clone(), json!(["cat", false])));
    assert_eq!(next_activity(&mut dan), ("cat".into(), json!([])));
    // 3. ann types again: cat's next event is ann's, not her own stop.
    typing_event(&mut ann, &rid, "ann");
    assert_eq!(next_activity(&mut cat), ("ann".into(), json!(["user-typing"])));
    assert_eq!(next_activity(&mut ben).0, "ann");
    assert_eq!(next_activity(&mut dan).0, "ann");
    // 4. ben (shard 1) claims to be ann (dropped silently), then types as himself.
    assert_eq!(
        ben.call("stream-notify-room", json!([activity, "ann", ["user-typing"], {}])),
        Ok(Value::Null)
    );
    typing_event(&mut ben, &rid, "ben");
    for c in [&mut ann, &mut cat, &mut dan] {
        assert_eq!(next_activity(c).0, "ben", "the spoofed notice reached nobody");
    }
    // 5. dan (shard 1) types: ben's next is dan's, so ben never got his own.
    typing_event(&mut dan, &rid, "dan");
    assert_eq!(next_activity(&mut ben).0, "dan");
    assert_eq!(server.stats().iter().map(|s| s.dropped).sum::<u64>(), 0);
}

/// The next `user-status` event about `uid` (status code, text).
fn next_status(c: &mut Ddp, uid: &str) -> (u64, String) {
    loop {
        let ev = c.next_event("stream-notify-logged");
        let entry = &ev["fields"]["args"][0];
        if entry[0] == uid {
            return (
                entry[2].as_u64().unwrap(),
                entry[3].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
}

/// The next `stream-user-presence` event about `uid` (status code).
fn next_presence(c: &mut Ddp, uid: &str) -> u64 {
    loop {
        let ev = c.next_event("stream-user-presence");
        if ev["id"] == uid {
            assert_eq!(ev["fields"]["eventName"], uid);
            return ev["fields"]["args"][0][1].as_u64().unwrap();
        }
    }
}

fn abrupt_close(c: Ddp) {
    c.ws.get_ref().shutdown(std::net::Shutdown::Both).unwrap();
}

#[test]
fn presence_follows_connections_and_chosen_status_on_both_shards() {
    let _serial = serial();
    let server = TestServer::start();
    let mut keep = register_all(&server, &["obs0", "obs1", "pat"]);
    let mut observers = [
        on_shard(&server, "obs0", 0, &mut keep),
        on_shard(&server, "obs1", 1, &mut keep),
    ];
    for o in observers.iter_mut() {
        o.sub("stream-notify-logged", json!(["user-status", false])).unwrap();
    }

    // Connect: online, seen on both shards.
    let mut pat = on_shard(&server, "pat", 1, &mut keep);
    let uid = pat.uid();
    for o in observers.iter_mut() {
        assert_eq!(next_status(o, &uid), (1, String::new()));
        let live = o.sub("stream-user-presence", json!(["", {"added": [uid]}]));
        assert!(live.is_ok(), "{live:?}");
        assert_eq!(next_presence(o, &uid), 1, "current state on subscribe");
        // A second presence subscription only edits the first one.
        assert_eq!(
            o.sub("stream-user-presence", json!(["", {"added": [uid]}])),
            Err(Value::Null)
        );
    }
    // Chosen status: away (with text), then online again.
    pat.ok("setUserStatus", json!(["away", "out for lunch"]));
    pat.ok("UserPresence:setDefaultStatus", json!(["online"]));
    // Idle connection: away until the client says it is back.
    pat.ok("UserPresence:away", json!([]));
    pat.ok("UserPresence:online", json!([]));
    for o in observers.iter_mut() {
        assert_eq!(next_status(o, &uid), (2, "out for lunch".into()));
        assert_eq!(next_status(o, &uid).0, 1);
        assert_eq!(next_status(o, &uid).0, 2);
        assert_eq!(next_status(o, &uid).0, 1);
        for expected in [2, 1, 2, 1] {
            assert_eq!(next_presence(o, &uid), expected);
        }
    }
    // Abrupt disconnect: offline.
    abrupt_close(pat);
    for o in observers.iter_mut() {
        assert_eq!(next_status(o, &uid).0, 0);
        assert_eq!(next_presence(o, &uid), 0);
    }

    // Two connections on two shards: online until both are gone.
    let mut first = on_shard(&server, "pat", 0, &mut keep);
    for o in observers.iter_mut() {
        assert_eq!(next_status(o, &uid).0, 1);
    }
    let mut second = on_shard(&server, "pat", 1, &mut keep);
    first.ws.close(None).unwrap();
    drop(first);
    // Closing one changes nothing visible: the next event is the busy status set on the other.
    second.ok("setUserStatus", json!(["busy", ""]));
    for o in observers.iter_mut() {
        assert_eq!(next_status(o, &uid).0, 3, "no offline while a connection remains");
    }
    abrupt_close(second);
    for o in observers.iter_mut() {
        assert_eq!(next_status(o, &uid).0, 0);
    }
    // The chosen status was persisted; the connection status was not.
    keep[2].login("pat", "pat-pw");
    for o in observers.iter_mut() {
        assert_eq!(next_status(o, &uid).0, 3, "busy again on reconnect");
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_typing_flood_is_dropped_and_counted_while_messages_still_flow() {
    let _serial = serial();
    const FLOODERS: usize = 4;
    const EVENTS_EACH: usize = 5_000;
    let server = TestServer::with(|c| {
        c.ephemeral_capacity = 8;
        c.limits.outbound_queue_frames = 128;
    });
    let mut sender = user(server.addr, "sender");
    let mut reader = user(server.addr, "reader");
    let mut silent = Ddp::open_on(ws_connect_small_rcvbuf(server.addr));
    silent.register("silent", "silent-pw");
    silent.login("silent", "silent-pw");
    for c in [&mut reader, &mut silent] {
        c.sub("stream-notify-room", json!(["GENERAL/user-activity", false]))
            .unwrap();
        c.sub("stream-room-messages", json!(["GENERAL", false])).unwrap();
    }
    // Log everyone in first: password hashing (Argon2id, ~19 MiB each) is not what is measured.
    let clients: Vec<(String, Ddp)> = (0..FLOODERS)
        .map(|i| {
            let name = format!("flooder{i}");
            let c = user(server.addr, &name);
            (name, c)
        })
        .collect();
    let rss_before = rss_kib();
    let flooders: Vec<_> = clients
        .into_iter()
        .map(|(name, mut c)| {
            std::thread::spawn(move || {
                for n in 0..EVENTS_EACH {
                    // Pipelined in bursts; every call is answered.
                    c.send(
                        json!({"msg": "method", "method": "stream-notify-room", "id": format!("t{n}"),
                        "params": ["GENERAL/user-activity", name, ["user-typing"], {}]}),
                    );
                    if n % 50 == 49 {
                        let last = format!("t{n}");
                        c.wait_frame(|f| f["msg"] == "result" && f["id"] == last.as_str());
                        c.events.clear();
                    }
                }
            })
        })
        .collect();
    // Neither the reader nor the silent client reads while the flood runs.
    for f in flooders {
        f.join().unwrap();
    }
    sender.send_message("GENERAL", "after the flood");
    assert_eq!(reader.next_message()["msg"], "after the flood");
    // The silent client was never closed as slow: typing only ever filled half its queue, so
    // the message is there once it reads.
    assert_eq!(silent.next_message()["msg"], "after the flood");
    let stats = server.stats();
    let dropped: u64 = stats.iter().map(|s| s.dropped).sum();
    let slow: u64 = stats.iter().map(|s| s.slow_closed).sum();
    assert!(
        dropped > 0,
        "a flood into a client that does not read must drop typing events"
    );
    assert_eq!(slow, 0, "typing must never get a session closed as slow");
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 64, "memory grew by {grown_mib} MiB during the typing flood");
    eprintln!(
        "typing flood: {} events sent, {dropped} dropped, RSS grew {grown_mib} MiB",
        FLOODERS * EVENTS_EACH
    );
}
