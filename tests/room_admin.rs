//! Room management against the real server (2 shards, port 0, temp dir), over DDP and REST,
//! with a member watching the room's stream for Rocket.Chat's system messages: inviting and
//! removing members, owner and moderator roles, topic / announcement / description / name /
//! read-only / archived, and hiding a room; every refusal for outsiders the same as for a room
//! that does not exist.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// The next system message of type `t` on the watcher's room stream.
fn next_notice(c: &mut Ddp, t: &str) -> Value {
    loop {
        let m = c.next_message();
        if m["t"] == t {
            return m;
        }
    }
}

fn subscription(h: &Http, rid: &str) -> Option<Value> {
    let subs = ok_body(h.get("subscriptions.get"));
    subs["update"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["rid"] == rid)
        .cloned()
}

#[test]
fn members_and_roles_are_managed_with_system_messages() {
    let server = TestServer::start();
    // alice is the first user: a server admin.
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let mut carol = user(server.addr, "carol");
    let dave = user(server.addr, "dave");
    let rid = alice.ok("createChannel", json!(["team", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = alice.ok("createPrivateGroup", json!(["hush", [], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();
    let (ha, hb, hc) = (
        http_as(&server, &alice),
        http_as(&server, &bob),
        http_as(&server, &carol),
    );

    // Invitations: REST by id, DDP by username; a plain member may not invite.
    let room = ok_body(ha.post("channels.invite", &json!({"roomId": rid, "userId": carol.uid()})));
    assert_eq!(room["channel"]["usersCount"], 3);
    let au = next_notice(&mut bob, "au");
    assert_eq!(
        (au["msg"].as_str(), au["u"]["username"].as_str()),
        (Some("carol"), Some("alice"))
    );
    assert!(subscription(&hc, &rid).is_some());
    assert_eq!(
        alice.ok("addUsersToRoom", json!([{"rid": rid, "users": ["dave"]}])),
        true
    );
    assert_eq!(next_notice(&mut bob, "au")["msg"], "dave");
    // Already in: nothing happens.
    ok_body(ha.post("channels.invite", &json!({"roomId": rid, "username": "dave"})));
    let e = carol
        .call("addUserToRoom", json!([{"rid": rid, "username": "alice"}]))
        .unwrap_err();
    assert_eq!(e["error"], "error-not-allowed");
    let e = alice
        .call("addUserToRoom", json!([{"rid": rid, "username": "nobody"}]))
        .unwrap_err();
    assert_eq!(e["error"], "error-invalid-user");
    assert_eq!(
        alice
            .call("addUsersToRoom", json!([{"rid": rid, "users": "dave"}]))
            .unwrap_err()["error"],
        400
    );

    // Roles: a moderator may remove members but not make owners.
    assert_eq!(alice.ok("addRoomModerator", json!([rid, bob.uid()])), true);
    let added = next_notice(&mut bob, "subscription-role-added");
    assert_eq!(
        (added["msg"].as_str(), added["role"].as_str()),
        (Some("bob"), Some("moderator"))
    );
    assert_eq!(subscription(&hb, &rid).unwrap()["roles"], json!(["moderator"]));
    let e = alice.call("addRoomModerator", json!([rid, bob.uid()])).unwrap_err();
    assert_eq!(e["error"], "error-user-already-moderator");
    ok_body(hb.post("channels.kick", &json!({"roomId": rid, "userId": dave.uid()})));
    let ru = next_notice(&mut bob, "ru");
    assert_eq!(
        (ru["msg"].as_str(), ru["u"]["username"].as_str()),
        (Some("dave"), Some("bob"))
    );
    assert!(subscription(&http_as(&server, &dave), &rid).is_none());
    let e = bob.call("addRoomOwner", json!([rid, carol.uid()])).unwrap_err();
    assert_eq!(e["error"], "error-not-allowed");
    // Owners: the last one cannot be removed.
    ok_body(ha.post("channels.addOwner", &json!({"roomId": rid, "userId": bob.uid()})));
    assert_eq!(next_notice(&mut bob, "subscription-role-added")["role"], "owner");
    assert_eq!(
        failure(ha.post("channels.addOwner", &json!({"roomId": rid, "userId": bob.uid()}))).1,
        "error-user-already-owner"
    );
    ok_body(hb.post("channels.removeOwner", &json!({"roomId": rid, "userId": alice.uid()})));
    let removed = next_notice(&mut bob, "subscription-role-removed");
    assert_eq!(
        (removed["msg"].as_str(), removed["role"].as_str()),
        (Some("alice"), Some("owner"))
    );
    assert_eq!(
        failure(hb.post("channels.removeOwner", &json!({"roomId": rid, "userId": bob.uid()}))).1,
        "error-remove-last-owner"
    );
    assert_eq!(
        failure(hb.post("channels.removeOwner", &json!({"roomId": rid, "userId": carol.uid()}))).1,
        "error-user-not-owner"
    );
    assert_eq!(
        failure(hb.post("channels.kick", &json!({"roomId": rid, "userId": dave.uid()}))).1,
        "error-user-not-in-room"
    );
    ok_body(hb.post("channels.removeModerator", &json!({"roomId": rid, "userId": bob.uid()})));
    assert_eq!(subscription(&hb, &rid).unwrap()["roles"], json!(["owner"]));

    // Outsiders learn nothing about a private group: every door answers as for a missing room.
    let pairs = [
        (
            "groups.invite",
            json!({"roomId": secret, "username": "carol"}),
            json!({"roomId": "nope", "username": "carol"}),
        ),
        (
            "groups.kick",
            json!({"roomId": secret, "userId": alice.uid()}),
            json!({"roomId": "nope", "userId": alice.uid()}),
        ),
        (
            "groups.addOwner",
            json!({"roomId": secret, "userId": carol.uid()}),
            json!({"roomId": "nope", "userId": carol.uid()}),
        ),
        (
            "groups.setTopic",
            json!({"roomId": secret, "topic": "x"}),
            json!({"roomId": "nope", "topic": "x"}),
        ),
        ("groups.hide", json!({"roomId": secret}), json!({"roomId": "nope"})),
    ];
    for (endpoint, hidden, missing) in pairs {
        let (h, m) = (
            failure(hc.post(endpoint, &hidden)),
            failure(hc.post(endpoint, &missing)),
        );
        assert_eq!(h, m, "{endpoint}");
        assert_eq!(h.1, "error-room-not-found", "{endpoint}");
    }
    let calls = [
        (
            "addUserToRoom",
            json!([{"rid": secret, "username": "carol"}]),
            json!([{"rid": "nope", "username": "carol"}]),
        ),
        (
            "removeUserFromRoom",
            json!([{"rid": secret, "username": "alice"}]),
            json!([{"rid": "nope", "username": "alice"}]),
        ),
        (
            "addRoomOwner",
            json!([secret, carol.uid()]),
            json!(["nope", carol.uid()]),
        ),
        (
            "saveRoomSettings",
            json!([secret, "roomTopic", "x"]),
            json!(["nope", "roomTopic", "x"]),
        ),
        ("hideRoom", json!([secret]), json!(["nope"])),
    ];
    for (method, hidden, missing) in calls {
        let (h, m) = (
            carol.call(method, hidden).unwrap_err(),
            carol.call(method, missing).unwrap_err(),
        );
        assert_eq!(h, m, "{method}");
    }
}

#[test]
fn settings_hiding_and_archiving() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let rid = alice.ok("createChannel", json!(["plans", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();
    let (ha, hb) = (http_as(&server, &alice), http_as(&server, &bob));

    // One setting per REST call, each with its notice; members without edit-room may not.
    let set = ok_body(ha.post("channels.setTopic", &json!({"roomId": rid, "topic": "Q3 goals"})));
    assert_eq!(set["topic"], "Q3 goals");
    assert_eq!(next_notice(&mut bob, "room_changed_topic")["msg"], "Q3 goals");
    ok_body(ha.post(
        "channels.setAnnouncement",
        &json!({"roomId": rid, "announcement": "offsite friday"}),
    ));
    assert_eq!(
        next_notice(&mut bob, "room_changed_announcement")["msg"],
        "offsite friday"
    );
    let r = alice.ok("saveRoomSettings", json!([rid, "roomDescription", "planning"]));
    assert_eq!(r, json!({"result": true, "rid": rid}));
    assert_eq!(next_notice(&mut bob, "room_changed_description")["msg"], "planning");
    let info = ok_body(hb.get(&format!("rooms.info?roomId={rid}")))["room"].clone();
    assert_eq!(
        (
            info["topic"].as_str(),
            info["announcement"].as_str(),
            info["description"].as_str()
        ),
        (Some("Q3 goals"), Some("offsite friday"), Some("planning"))
    );
    assert_eq!(
        failure(hb.post("channels.setTopic", &json!({"roomId": rid, "topic": "mine"}))).1,
        "error-not-allowed"
    );
    // Several at once, and a rename (every member's subscription follows).
    ok_body(ha.post(
        "rooms.saveRoomSettings",
        &json!({"rid": rid, "roomName": "roadmap", "roomTopic": "Q4 goals"}),
    ));
    assert_eq!(next_notice(&mut bob, "r")["msg"], "roadmap");
    assert_eq!(next_notice(&mut bob, "room_changed_topic")["msg"], "Q4 goals");
    assert_eq!(subscription(&hb, &rid).unwrap()["name"], "roadmap");
    assert_eq!(bob.ok("getRoomIdByNameOrId", json!(["roadmap"])), rid.as_str());
    assert_eq!(
        bob.call("getRoomIdByNameOrId", json!(["plans"])).unwrap_err()["error"],
        "error-not-allowed"
    );
    // The old name is free again; a taken name is refused.
    alice.ok("createChannel", json!(["plans", [], false]));
    assert_eq!(
        failure(ha.post("channels.rename", &json!({"roomId": rid, "name": "plans"}))).1,
        "error-duplicate-channel-name"
    );
    assert_eq!(
        failure(ha.post("channels.rename", &json!({"roomId": rid, "name": "a b"}))).1,
        "error-invalid-room-name"
    );
    assert_eq!(
        failure(ha.post("rooms.saveRoomSettings", &json!({"rid": rid, "favorite": true}))).1,
        "invalid-params"
    );
    assert_eq!(
        alice
            .call("saveRoomSettings", json!([rid, "roomTopic", 5]))
            .unwrap_err()["error"],
        400
    );

    // Read-only: only those with post-readonly may post.
    ok_body(ha.post("channels.setReadOnly", &json!({"roomId": rid, "readOnly": true})));
    assert_eq!(next_notice(&mut bob, "room-set-read-only")["msg"], "alice");
    let e = bob.call("sendMessage", json!([{"rid": rid, "msg": "hi"}])).unwrap_err();
    assert_eq!(e["error"], "error-not-allowed");
    alice.send_message(&rid, "owners may");
    ok_body(ha.post("channels.setReadOnly", &json!({"roomId": rid, "readOnly": false})));
    next_notice(&mut bob, "room-removed-read-only");

    // Hiding: off the list until the next message.
    assert_eq!(bob.ok("hideRoom", json!([rid])), 1);
    assert_eq!(subscription(&hb, &rid).unwrap()["open"], false);
    alice.send_message(&rid, "wake up");
    wait_until("the room shows again", || {
        subscription(&hb, &rid).unwrap()["open"] == true
    });
    ok_body(hb.post("channels.close", &json!({"roomId": rid})));
    assert_eq!(subscription(&hb, &rid).unwrap()["open"], false);
    ok_body(hb.post("channels.open", &json!({"roomId": rid})));
    assert_eq!(subscription(&hb, &rid).unwrap()["open"], true);

    // Archived: no new messages until unarchived (unarchiving is an admin's; alice is one).
    ok_body(ha.post("channels.archive", &json!({"roomId": rid})));
    next_notice(&mut bob, "room-archived");
    assert_eq!(
        ok_body(hb.get(&format!("rooms.info?roomId={rid}")))["room"]["archived"],
        true
    );
    let e = bob.call("sendMessage", json!([{"rid": rid, "msg": "hi"}])).unwrap_err();
    assert_eq!(e["error"], "error-room-archived");
    assert_eq!(
        bob.call("unarchiveRoom", json!([rid])).unwrap_err()["error"],
        "error-not-allowed"
    );
    assert_eq!(alice.ok("unarchiveRoom", json!([rid])), true);
    next_notice(&mut bob, "room-unarchived");
    bob.send_message(&rid, "back");
}
