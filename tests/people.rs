//! People and room screens against the real server (2 shards, port 0, temp dir): user
//! listings and searches (`users.list`, `users.autocomplete`, `spotlight`), members
//! (`getUsersOfRoom`, `channels|groups|im.members`), room info and leaving (`rooms.info`,
//! `groups.info`, `rooms.leave`, `groups.leave`), with what an outsider learns (nothing: a
//! hidden room answers as a missing one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u[key].as_str().unwrap().to_owned())
        .collect()
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn users_are_listed_and_searched_with_live_status() {
    let server = TestServer::start();
    let alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let _carol = user(server.addr, "carol");
    // Dave registers and never connects: offline.
    let mut dave = Ddp::open(server.addr);
    dave.register("dave", "dave-pw");
    drop(dave);
    let h = http_as(&server, &alice);

    let all = ok_body(h.get("users.list"));
    assert_eq!(names(&all["users"], "username"), ["alice", "bob", "carol", "dave"]);
    assert_eq!(all["total"], 4);
    assert!(
        all["users"][0].get("emails").is_none(),
        "other users' emails are private"
    );
    // The 0.2 SDK's forms: a projection, and only those online.
    let q = format!("users.list?fields={}", pct(r#"{"username":1}"#));
    let only = ok_body(h.get(&q));
    assert_eq!(
        only["users"][1].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["_id", "username"]
    );
    let q = format!(
        "users.list?fields={}&query={}",
        pct(r#"{"username":1}"#),
        pct(r#"{"status":{"$ne":"offline"}}"#)
    );
    wait_until("dave reads offline and the others online", || {
        names(&ok_body(h.get(&q))["users"], "username") == ["alice", "bob", "carol"]
    });
    // The same query unencoded, as the SDK sends it.
    let raw = r#"users.list?query={"status":{"$ne":"offline"}}&count=2&offset=1&sort={"username":-1}"#;
    let page = ok_body(h.get(raw));
    assert_eq!(names(&page["users"], "username"), ["bob", "alice"]);
    assert_eq!(
        (page["total"].as_u64(), page["count"].as_u64(), page["offset"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    let q = format!(
        "users.list?query={}",
        pct(r#"{"username":{"$regex":"CA","$options":"i"}}"#)
    );
    assert_eq!(names(&ok_body(h.get(&q))["users"], "username"), ["carol"]);
    for bad in [
        r#"{"$where":"1"}"#,
        r#"{"username":{"$regex":"^a.*"}}"#,
        "[1]",
        "not json",
    ] {
        let q = format!("users.list?query={}", pct(bad));
        assert_eq!(failure(h.get(&q)).1, "invalid-params", "{bad}");
    }
    assert_eq!(
        failure(h.get(&format!("users.list?sort={}", pct(r#"{"emails":1}"#)))).1,
        "invalid-params"
    );

    // Autocomplete and spotlight.
    let sel = |s: &str| format!("users.autocomplete?selector={}", pct(s));
    let items = ok_body(h.get(&sel(r#"{"term":"CAR"}"#)))["items"].clone();
    assert_eq!(names(&items, "username"), ["carol"]);
    assert_eq!(items[0]["status"], "online");
    let items = ok_body(h.get(&sel(r#"{"term":"","exceptions":["alice","bob"]}"#)))["items"].clone();
    assert_eq!(names(&items, "username"), ["carol", "dave"]);
    assert_eq!(failure(h.get(&sel(r#"{"term":5}"#))).1, "invalid-params");
    assert_eq!(failure(h.get("users.autocomplete")).1, "invalid-params");

    let mut carol = Ddp::open(server.addr);
    carol.login("carol", "carol-pw");
    carol.ok("createChannel", json!(["bobs-fans", [], false]));
    carol.ok("createPrivateGroup", json!(["bobs-secret", [], false]));
    let found = bob.ok("spotlight", json!(["@bo", [], {"users": true, "rooms": true}, ""]));
    assert_eq!(names(&found["users"], "username"), ["bob"]);
    assert_eq!(
        names(&found["rooms"], "name"),
        ["bobs-fans"],
        "a private group bob is not in stays hidden"
    );
    assert_eq!(found["rooms"][0]["t"], "c");
    let found = carol.ok("spotlight", json!(["bobs", ["bob"], {"users": true, "rooms": true}]));
    assert_eq!(names(&found["users"], "username"), Vec::<String>::new());
    assert_eq!(names(&found["rooms"], "name"), ["bobs-fans", "bobs-secret"]);
    let found = carol.ok("spotlight", json!(["a", [], {"users": true}]));
    assert_eq!(found["rooms"], json!([]));
    assert_eq!(carol.call("spotlight", json!([5])).unwrap_err()["error"], 400);
    assert_eq!(carol.call("spotlight", json!(["a", "bob"])).unwrap_err()["error"], 400);
}

#[test]
fn members_room_info_and_leaving_keep_private_rooms_private() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let bob = user(server.addr, "bob");
    let mut carol = user(server.addr, "carol");
    let chan = alice.ok("createChannel", json!(["open-room", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = alice.ok("createPrivateGroup", json!(["closed-room", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let dm = alice.ok("createDirectMessage", json!(["bob"]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ha, hb, hc) = (
        http_as(&server, &alice),
        http_as(&server, &bob),
        http_as(&server, &carol),
    );

    // getUsersOfRoom: everyone, or those online; a hidden room is a missing one.
    let all = alice.ok("getUsersOfRoom", json!([group, true]));
    assert_eq!(all["total"], 2);
    assert_eq!(names(&all["records"], "username"), ["alice", "bob"]);
    let page = alice.ok("getUsersOfRoom", json!([group, true, {"limit": 1, "skip": 1}]));
    assert_eq!(names(&page["records"], "username"), ["bob"]);
    assert_eq!(page["total"], 2);
    let filtered = alice.ok("getUsersOfRoom", json!([group, true, null, "ALI"]));
    assert_eq!(names(&filtered["records"], "username"), ["alice"]);
    let hidden = carol.call("getUsersOfRoom", json!([group, true])).unwrap_err();
    let missing = carol.call("getUsersOfRoom", json!(["nope", true])).unwrap_err();
    assert_eq!(hidden["error"], "error-not-allowed");
    assert_eq!(hidden, missing);
    assert_eq!(
        carol.call("getUsersOfRoom", json!([group, "yes"])).unwrap_err()["error"],
        400
    );
    drop(bob);
    wait_until("bob reads offline", || {
        names(
            &alice.ok("getUsersOfRoom", json!([group, false]))["records"],
            "username",
        ) == ["alice"]
    });

    // Members over REST.
    let m = ok_body(ha.get(&format!("groups.members?roomId={group}")));
    assert_eq!(names(&m["members"], "username"), ["alice", "bob"]);
    let m = ok_body(ha.get("groups.members?roomName=closed-room&status[]=online"));
    assert_eq!(names(&m["members"], "username"), ["alice"]);
    let m = ok_body(ha.get(&format!("channels.members?roomId={chan}&filter=bo")));
    assert_eq!(names(&m["members"], "username"), ["bob"]);
    let m = ok_body(ha.get(&format!("im.members?roomId={dm}")));
    assert_eq!(m["total"], 2);
    let hidden = failure(hc.get(&format!("groups.members?roomId={group}")));
    let missing = failure(hc.get("groups.members?roomId=nope"));
    assert_eq!(hidden, (400, "error-room-not-found".to_owned()));
    assert_eq!(hidden, missing);
    assert_eq!(
        failure(hc.get(&format!("im.members?roomId={dm}"))),
        failure(hc.get("im.members?roomId=nope"))
    );

    // Room info: any visible room; a private one is missing to outsiders.
    let info = ok_body(hc.get(&format!("rooms.info?roomId={chan}")));
    assert_eq!(info["room"]["name"], "open-room");
    let info = ok_body(hb.get(&format!("rooms.info?roomId={group}")));
    assert_eq!(info["room"]["t"], "p");
    let info = ok_body(hb.get("groups.info?roomName=closed-room"));
    assert_eq!(info["group"]["_id"], group.as_str());
    let hidden = failure(hc.get(&format!("rooms.info?roomId={group}")));
    let missing = failure(hc.get("rooms.info?roomId=nope"));
    assert_eq!(hidden, (400, "not-allowed".to_owned()));
    assert_eq!(hidden, missing);
    assert_eq!(
        failure(hc.get(&format!("groups.info?roomId={group}"))),
        failure(hc.get("groups.info?roomId=nope"))
    );
    // A channel is not a group.
    assert_eq!(
        failure(ha.get(&format!("groups.info?roomId={chan}"))).1,
        "error-room-not-found"
    );
    // The 1.x SDK asks with `rid`; no parameter at all is a client error.
    assert_eq!(
        ok_body(ha.get(&format!("rooms.info?rid={chan}")))["room"]["_id"],
        chan.as_str()
    );
    assert_eq!(failure(ha.get("rooms.info")).1, "invalid-params");

    // Leaving, watched by alice's room list.
    alice
        .sub(
            "stream-notify-user",
            json!([format!("{}/subscriptions-changed", alice.uid()), false]),
        )
        .unwrap();
    let mut bob = Ddp::open(server.addr);
    bob.login("bob", "bob-pw");
    let hb = http_as(&server, &bob);
    ok_body(hb.post("rooms.leave", &json!({"roomId": chan})));
    ok_body(hb.post("groups.leave", &json!({"roomName": "closed-room"})));
    let m = ok_body(ha.get(&format!("groups.members?roomId={group}")));
    assert_eq!(names(&m["members"], "username"), ["alice"]);
    assert_eq!(
        failure(hb.get(&format!("groups.info?roomId={group}"))).1,
        "error-room-not-found"
    );
    // Leaving a room one is not in, a DM, or as the last owner.
    assert_eq!(
        failure(hb.post("rooms.leave", &json!({"roomId": chan}))).1,
        "error-user-not-in-room"
    );
    assert_eq!(
        failure(hb.post("rooms.leave", &json!({"roomId": dm}))).1,
        "error-not-allowed"
    );
    let hidden = failure(hc.post("rooms.leave", &json!({"roomId": group})));
    let missing = failure(hc.post("rooms.leave", &json!({"roomId": "nope"})));
    assert_eq!(hidden, missing);
    ok_body(ha.post("channels.invite", &json!({"roomId": chan, "userId": carol.uid()})));
    assert_eq!(
        failure(ha.post("rooms.leave", &json!({"roomId": chan}))).1,
        "error-you-are-last-owner"
    );
    assert_eq!(failure(ha.post("rooms.leave", &json!({}))).1, "invalid-params");
    let _ = carol.ok("getUsersOfRoom", json!([chan, true]));
}

#[test]
fn group_direct_messages_are_found_by_their_members() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let carol = user(server.addr, "carol");
    let dave = user(server.addr, "dave");
    let (ha, hc, hd) = (
        http_as(&server, &alice),
        http_as(&server, &carol),
        http_as(&server, &dave),
    );
    bob.sub(
        "stream-notify-user",
        json!([format!("{}/subscriptions-changed", bob.uid()), false]),
    )
    .unwrap();

    // REST with a comma list; the room has every member and a random id.
    let room = ok_body(ha.post("im.create", &json!({"usernames": "bob, carol"})))["room"].clone();
    let rid = room["_id"].as_str().unwrap().to_owned();
    assert_eq!(room["t"], "d");
    assert_eq!(room["usersCount"], 3);
    assert_eq!(room["usernames"], json!(["alice", "bob", "carol"]));
    let mut uids: Vec<String> = serde_json::from_value(room["uids"].clone()).unwrap();
    uids.sort();
    let mut expected = vec![alice.uid(), bob.uid(), carol.uid()];
    expected.sort();
    assert_eq!(uids, expected);
    assert_ne!(rid, format!("{}{}", expected[0], expected[1]));
    // Each member's list names the others.
    loop {
        let ev = bob.next_event("stream-notify-user");
        let sub = &ev["fields"]["args"][1];
        if sub["rid"] == rid.as_str() {
            assert_eq!(sub["name"], "alice, carol");
            break;
        }
    }
    let sub = subscription_of(&hc, &rid);
    assert_eq!(sub["name"], "alice, bob");
    // The same members in another order, over DDP with the mobile app's trailing "": the same room.
    let again = bob.ok("createDirectMessage", json!(["carol", "alice", ""]));
    assert_eq!(again["rid"], rid.as_str());
    assert_eq!(again["usernames"], json!(["alice", "bob", "carol"]));
    // A message reaches every member; outsiders see nothing.
    alice.send_message(&rid, "hi both");
    let history = ok_body(hc.get(&format!("im.history?roomId={rid}")));
    assert_eq!(history["messages"][0]["msg"], "hi both");
    assert_eq!(
        failure(hd.get(&format!("im.history?roomId={rid}"))),
        failure(hd.get("im.history?roomId=nope"))
    );
    // A subset is another conversation; a 1:1 keeps the concatenated id.
    let pair = ok_body(ha.post("im.create", &json!({"usernames": "bob"})))["room"]["_id"].clone();
    assert_eq!(
        pair,
        json!(format!(
            "{}{}",
            expected_pair(&alice, &bob).0,
            expected_pair(&alice, &bob).1
        ))
    );
    // Limits and unknown users.
    for i in 0..8 {
        user(server.addr, &format!("u{i}"));
    }
    let many: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    assert_eq!(
        failure(ha.post("im.create", &json!({"usernames": many.join(",")}))).1,
        "error-direct-message-max-user-exceeded"
    );
    assert_eq!(
        failure(ha.post("im.create", &json!({"usernames": "bob,nobody"}))).1,
        "error-invalid-user"
    );
    assert_eq!(
        failure(ha.post("im.create", &json!({"usernames": " , "}))).1,
        "invalid-params"
    );
    assert_eq!(alice.call("createDirectMessage", json!([5])).unwrap_err()["error"], 400);
    let _ = dave;
}

fn expected_pair(a: &Ddp, b: &Ddp) -> (String, String) {
    let (x, y) = (a.uid(), b.uid());
    if x < y {
        (x, y)
    } else {
        (y, x)
    }
}

fn subscription_of(h: &Http, rid: &str) -> Value {
    let subs = ok_body(h.get("subscriptions.get"));
    subs["update"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["rid"] == rid)
        .unwrap()
        .clone()
}
