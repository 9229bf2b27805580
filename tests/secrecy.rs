//! A non-member learns nothing about a private group through any door: every DDP method and
//! subscription and every REST endpoint that names a room or a message answers a private group
//! (and its messages) exactly as it answers a room (or message) that does not exist; and a
//! client-chosen message id counts as a re-send only for the same id, room and author.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Replaces the caller's own input echoed in an answer, so two answers compare on substance.
fn scrub(v: &Value, echoes: &[&str]) -> Value {
    let mut text = v.to_string();
    for e in echoes {
        text = text.replace(e, "<ID>");
    }
    serde_json::from_str(&text).unwrap()
}

struct Rest {
    base: String,
    agent: ureq::Agent,
    auth: (String, String),
}

impl Rest {
    fn login(server: &TestServer, username: &str) -> Self {
        let base = format!("http://{}/api/v1/", server.addr);
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        let resp = agent
            .post(&format!("{base}login"))
            .set("Content-Type", "application/json")
            .send_string(&json!({"username": username, "password": format!("{username}-pw")}).to_string())
            .unwrap();
        let v: Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
        let auth = (
            v["data"]["userId"].as_str().unwrap().to_owned(),
            v["data"]["authToken"].as_str().unwrap().to_owned(),
        );
        Self { base, agent, auth }
    }

    fn finish(res: Result<ureq::Response, ureq::Error>) -> Value {
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport error: {e}"),
        };
        let status = resp.status();
        let body: Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
        json!({"status": status, "body": body})
    }

    fn get(&self, path: &str) -> Value {
        Self::finish(
            self.agent
                .get(&format!("{}{path}", self.base))
                .set("X-User-Id", &self.auth.0)
                .set("X-Auth-Token", &self.auth.1)
                .call(),
        )
    }

    fn post(&self, path: &str, body: Value) -> Value {
        Self::finish(
            self.agent
                .post(&format!("{}{path}", self.base))
                .set("X-User-Id", &self.auth.0)
                .set("X-Auth-Token", &self.auth.1)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
        )
    }
}

const SECRET_MSG: &str = "secret-msg-0000001";

#[test]
fn a_private_group_answers_a_non_member_like_nothing_at_every_door() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let _bob = user(server.addr, "bob");
    let mut eve = user(server.addr, "eve");
    let secret = alice.ok("createPrivateGroup", json!(["secret", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = alice.ok(
        "sendMessage",
        json!([{"_id": SECRET_MSG, "rid": secret, "msg": "the plan"}]),
    );
    assert_eq!(sent["_id"], SECRET_MSG);
    let public = alice.send_message("GENERAL", "hello all");
    let public_id = public["_id"].as_str().unwrap().to_owned();
    let (nope, nomsg) = ("NoSuchRoom0000001", "no-such-message-01");
    let eve_id = eve.uid();

    // DDP writes: (params naming the secret, the same naming nothing).
    let pairs: Vec<(&str, Value, Value)> = vec![
        (
            "sendMessage",
            json!([{"rid": secret, "msg": "x"}]),
            json!([{"rid": nope, "msg": "x"}]),
        ),
        (
            "sendMessage",
            json!([{"_id": SECRET_MSG, "rid": secret, "msg": "x"}]),
            json!([{"_id": SECRET_MSG, "rid": nope, "msg": "x"}]),
        ),
        (
            "updateMessage",
            json!([{"_id": SECRET_MSG, "rid": secret, "msg": "hacked"}]),
            json!([{"_id": nomsg, "rid": nope, "msg": "hacked"}]),
        ),
        (
            "updateMessage",
            json!([{"_id": SECRET_MSG, "msg": "hacked"}]),
            json!([{"_id": nomsg, "msg": "hacked"}]),
        ),
        ("deleteMessage", json!([{"_id": SECRET_MSG}]), json!([{"_id": nomsg}])),
        ("joinRoom", json!([secret]), json!([nope])),
        ("leaveRoom", json!([secret]), json!([nope])),
        ("readMessages", json!([secret]), json!([nope])),
        (
            "stream-notify-room",
            json!([format!("{secret}/typing"), "eve", true]),
            json!([format!("{nope}/typing"), "eve", true]),
        ),
        // Reads.
        (
            "loadHistory",
            json!([secret, null, 10, null]),
            json!([nope, null, 10, null]),
        ),
        (
            "loadMissedMessages",
            json!([secret, {"$date": 0}]),
            json!([nope, {"$date": 0}]),
        ),
        ("getRoomIdByNameOrId", json!(["secret"]), json!(["no-such-name"])),
        ("getRoomIdByNameOrId", json!([secret]), json!([nope])),
        ("getRoomNameById", json!([secret]), json!([nope])),
        // Message actions and threads.
        ("setReaction", json!([":tada:", SECRET_MSG]), json!([":tada:", nomsg])),
        ("pinMessage", json!([{"_id": SECRET_MSG}]), json!([{"_id": nomsg}])),
        ("unpinMessage", json!([{"_id": SECRET_MSG}]), json!([{"_id": nomsg}])),
        (
            "starMessage",
            json!([{"_id": SECRET_MSG, "rid": secret, "starred": true}]),
            json!([{"_id": nomsg, "rid": nope, "starred": true}]),
        ),
        ("getSingleMessage", json!([SECRET_MSG]), json!([nomsg])),
        ("messageSearch", json!(["plan", secret]), json!(["plan", nope])),
        (
            "sendMessage",
            json!([{"rid": "GENERAL", "msg": "x", "tmid": SECRET_MSG}]),
            json!([{"rid": "GENERAL", "msg": "x", "tmid": nomsg}]),
        ),
        (
            "getThreadMessages",
            json!([{"tmid": SECRET_MSG}]),
            json!([{"tmid": nomsg}]),
        ),
        ("getThreadsList", json!([{"rid": secret}]), json!([{"rid": nope}])),
        ("followMessage", json!([{"mid": SECRET_MSG}]), json!([{"mid": nomsg}])),
        ("unfollowMessage", json!([{"mid": SECRET_MSG}]), json!([{"mid": nomsg}])),
        ("readThreads", json!([SECRET_MSG]), json!([nomsg])),
        // People and room management.
        ("getUsersOfRoom", json!([secret, true]), json!([nope, true])),
        (
            "addUserToRoom",
            json!([{"rid": secret, "username": "eve"}]),
            json!([{"rid": nope, "username": "eve"}]),
        ),
        (
            "addUsersToRoom",
            json!([{"rid": secret, "users": ["eve"]}]),
            json!([{"rid": nope, "users": ["eve"]}]),
        ),
        (
            "removeUserFromRoom",
            json!([{"rid": secret, "username": "bob"}]),
            json!([{"rid": nope, "username": "bob"}]),
        ),
        ("addRoomOwner", json!([secret, eve_id]), json!([nope, eve_id])),
        ("removeRoomOwner", json!([secret, eve_id]), json!([nope, eve_id])),
        ("addRoomModerator", json!([secret, eve_id]), json!([nope, eve_id])),
        ("removeRoomModerator", json!([secret, eve_id]), json!([nope, eve_id])),
        (
            "saveRoomSettings",
            json!([secret, "roomTopic", "x"]),
            json!([nope, "roomTopic", "x"]),
        ),
        ("archiveRoom", json!([secret]), json!([nope])),
        ("unarchiveRoom", json!([secret]), json!([nope])),
        ("hideRoom", json!([secret]), json!([nope])),
        ("openRoom", json!([secret]), json!([nope])),
    ];
    for (method, hidden, missing) in pairs {
        let a = eve.call(method, hidden.clone());
        let b = eve.call(method, missing.clone());
        let echoes = [SECRET_MSG, nomsg, secret.as_str(), nope];
        assert_eq!(
            a.as_ref().map(|v| scrub(v, &echoes)).map_err(|e| scrub(e, &echoes)),
            b.as_ref().map(|v| scrub(v, &echoes)).map_err(|e| scrub(e, &echoes)),
            "{method}: a private group answered differently from nothing ({hidden} vs {missing})"
        );
    }
    // Subscriptions.
    for (name, hidden, missing) in [
        ("stream-room-messages", json!([secret, false]), json!([nope, false])),
        (
            "stream-notify-room",
            json!([format!("{secret}/deleteMessage"), false]),
            json!([format!("{nope}/deleteMessage"), false]),
        ),
    ] {
        assert_eq!(
            eve.sub(name, hidden).unwrap_err(),
            eve.sub(name, missing).unwrap_err(),
            "{name}"
        );
    }
    // Listings never mention it.
    for method in ["rooms/get", "subscriptions/get"] {
        let all = eve.ok(method, json!([]));
        assert!(!all.to_string().contains(&secret), "{method} lists the private group");
    }

    // REST, every door that names a room or a message.
    let rest = Rest::login(&server, "eve");
    let gets = [
        ("groups.history?roomId={}", secret.as_str(), nope),
        ("channels.history?roomId={}", secret.as_str(), nope),
        ("im.history?roomId={}", secret.as_str(), nope),
        ("channels.info?roomId={}", secret.as_str(), nope),
        ("channels.info?roomName={}", "secret", "no-such-name"),
        ("channels.members?roomId={}", secret.as_str(), nope),
        ("chat.getMessage?msgId={}", SECRET_MSG, nomsg),
        ("chat.getPinnedMessages?roomId={}", secret.as_str(), nope),
        ("chat.getStarredMessages?roomId={}", secret.as_str(), nope),
        ("chat.getMentionedMessages?roomId={}", secret.as_str(), nope),
        ("chat.search?searchText=plan&roomId={}", secret.as_str(), nope),
        (
            "chat.getDeletedMessages?since=1970-01-01T00:00:00.000Z&roomId={}",
            secret.as_str(),
            nope,
        ),
        ("chat.getThreadMessages?tmid={}", SECRET_MSG, nomsg),
        (
            "chat.syncThreadMessages?updatedSince=1970-01-01T00:00:00.000Z&tmid={}",
            SECRET_MSG,
            nomsg,
        ),
        ("chat.getThreadsList?rid={}", secret.as_str(), nope),
        (
            "chat.syncThreadsList?updatedSince=1970-01-01T00:00:00.000Z&rid={}",
            secret.as_str(),
            nope,
        ),
        ("rooms.info?roomId={}", secret.as_str(), nope),
        ("rooms.info?roomName={}", "secret", "no-such-name"),
        ("groups.info?roomId={}", secret.as_str(), nope),
        ("groups.info?roomName={}", "secret", "no-such-name"),
        ("groups.members?roomId={}", secret.as_str(), nope),
        ("groups.messages?roomId={}", secret.as_str(), nope),
        ("im.members?roomId={}", secret.as_str(), nope),
    ];
    for (path, hidden, missing) in gets {
        let a = rest.get(&path.replace("{}", hidden));
        let b = rest.get(&path.replace("{}", missing));
        assert_eq!(
            scrub(&a, &[hidden, missing]),
            scrub(&b, &[hidden, missing]),
            "GET {path}"
        );
        assert_ne!(a["status"], 200, "GET {path}");
    }
    let posts: Vec<(&str, Value, Value)> = vec![
        (
            "chat.sendMessage",
            json!({"message": {"rid": secret, "msg": "x"}}),
            json!({"message": {"rid": nope, "msg": "x"}}),
        ),
        (
            "chat.postMessage",
            json!({"roomId": secret, "text": "x"}),
            json!({"roomId": nope, "text": "x"}),
        ),
        (
            "chat.postMessage",
            json!({"channel": "#secret", "text": "x"}),
            json!({"channel": "#no-such-name", "text": "x"}),
        ),
        (
            "chat.postMessage",
            json!({"channel": secret, "text": "x"}),
            json!({"channel": nope, "text": "x"}),
        ),
        (
            "chat.update",
            json!({"roomId": secret, "msgId": SECRET_MSG, "text": "hacked"}),
            json!({"roomId": nope, "msgId": nomsg, "text": "hacked"}),
        ),
        (
            "chat.update",
            json!({"roomId": "GENERAL", "msgId": SECRET_MSG, "text": "hacked"}),
            json!({"roomId": "GENERAL", "msgId": nomsg, "text": "hacked"}),
        ),
        (
            "chat.delete",
            json!({"roomId": secret, "msgId": SECRET_MSG}),
            json!({"roomId": nope, "msgId": nomsg}),
        ),
        (
            "chat.delete",
            json!({"roomId": "GENERAL", "msgId": SECRET_MSG}),
            json!({"roomId": "GENERAL", "msgId": nomsg}),
        ),
        ("channels.join", json!({"roomId": secret}), json!({"roomId": nope})),
        ("channels.leave", json!({"roomId": secret}), json!({"roomId": nope})),
        (
            "chat.react",
            json!({"emoji": "tada", "messageId": SECRET_MSG}),
            json!({"emoji": "tada", "messageId": nomsg}),
        ),
        (
            "chat.pinMessage",
            json!({"messageId": SECRET_MSG}),
            json!({"messageId": nomsg}),
        ),
        (
            "chat.unPinMessage",
            json!({"messageId": SECRET_MSG}),
            json!({"messageId": nomsg}),
        ),
        (
            "chat.starMessage",
            json!({"messageId": SECRET_MSG}),
            json!({"messageId": nomsg}),
        ),
        (
            "chat.unStarMessage",
            json!({"messageId": SECRET_MSG}),
            json!({"messageId": nomsg}),
        ),
        ("chat.followMessage", json!({"mid": SECRET_MSG}), json!({"mid": nomsg})),
        (
            "chat.unfollowMessage",
            json!({"mid": SECRET_MSG}),
            json!({"mid": nomsg}),
        ),
        (
            "chat.sendMessage",
            json!({"message": {"rid": "GENERAL", "msg": "x", "tmid": SECRET_MSG}}),
            json!({"message": {"rid": "GENERAL", "msg": "x", "tmid": nomsg}}),
        ),
        ("rooms.leave", json!({"roomId": secret}), json!({"roomId": nope})),
        ("rooms.hide", json!({"roomId": secret}), json!({"roomId": nope})),
        (
            "rooms.saveRoomSettings",
            json!({"rid": secret, "roomTopic": "x"}),
            json!({"rid": nope, "roomTopic": "x"}),
        ),
        ("groups.leave", json!({"roomId": secret}), json!({"roomId": nope})),
        (
            "groups.leave",
            json!({"roomName": "secret"}),
            json!({"roomName": "no-such-name"}),
        ),
        (
            "groups.invite",
            json!({"roomId": secret, "username": "eve"}),
            json!({"roomId": nope, "username": "eve"}),
        ),
        (
            "groups.kick",
            json!({"roomId": secret, "username": "bob"}),
            json!({"roomId": nope, "username": "bob"}),
        ),
        (
            "groups.addOwner",
            json!({"roomId": secret, "username": "eve"}),
            json!({"roomId": nope, "username": "eve"}),
        ),
        (
            "groups.setTopic",
            json!({"roomId": secret, "topic": "x"}),
            json!({"roomId": nope, "topic": "x"}),
        ),
        (
            "groups.rename",
            json!({"roomId": secret, "name": "y"}),
            json!({"roomId": nope, "name": "y"}),
        ),
        ("groups.archive", json!({"roomId": secret}), json!({"roomId": nope})),
        ("groups.open", json!({"roomId": secret}), json!({"roomId": nope})),
        ("groups.hide", json!({"roomId": secret}), json!({"roomId": nope})),
        (
            "channels.invite",
            json!({"roomId": secret, "username": "eve"}),
            json!({"roomId": nope, "username": "eve"}),
        ),
    ];
    for (path, hidden, missing) in posts {
        let a = rest.post(path, hidden.clone());
        let b = rest.post(path, missing.clone());
        let echoes = [SECRET_MSG, nomsg, secret.as_str(), nope, "no-such-name"];
        assert_eq!(
            scrub(&a, &echoes),
            scrub(&b, &echoes),
            "POST {path} {hidden} vs {missing}"
        );
        assert_ne!(a["status"], 200, "POST {path}");
    }
    let found = eve.ok("spotlight", json!(["secret", [], {"users": true, "rooms": true}]));
    assert!(
        !found.to_string().contains(&secret),
        "spotlight lists the private group: {found}"
    );
    for path in [
        "rooms.get",
        "subscriptions.get",
        "channels.list",
        "channels.list.joined",
    ] {
        assert!(
            !rest.get(path).to_string().contains(&secret),
            "{path} lists the private group"
        );
    }

    // Re-using an existing message id: refused alike, whether the message is hidden or visible
    // to the caller, over DDP and REST; nothing is written and nothing is revealed.
    let ddp_hidden = eve.call(
        "sendMessage",
        json!([{"_id": SECRET_MSG, "rid": "GENERAL", "msg": "x"}]),
    );
    let ddp_visible = eve.call("sendMessage", json!([{"_id": public_id, "rid": "GENERAL", "msg": "x"}]));
    let echoes = [SECRET_MSG, public_id.as_str()];
    assert_eq!(
        scrub(&ddp_hidden.unwrap_err(), &echoes),
        scrub(&ddp_visible.unwrap_err(), &echoes)
    );
    let rest_hidden = rest.post(
        "chat.sendMessage",
        json!({"message": {"_id": SECRET_MSG, "rid": "GENERAL", "msg": "x"}}),
    );
    let rest_visible = rest.post(
        "chat.sendMessage",
        json!({"message": {"_id": public_id, "rid": "GENERAL", "msg": "x"}}),
    );
    assert_eq!(scrub(&rest_hidden, &echoes), scrub(&rest_visible, &echoes));
    assert_eq!(rest_hidden["status"], 403, "{rest_hidden}");
    assert!(!rest_hidden.to_string().contains("the plan"));

    // The private group is as alice left it: one message, unchanged.
    let h = alice.ok("loadHistory", json!([secret, null, 10, null]));
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{h}");
    assert_eq!(msgs[0]["msg"], "the plan");
    let g = alice.ok("loadHistory", json!(["GENERAL", null, 10, null]));
    assert_eq!(
        g["messages"].as_array().unwrap().len(),
        1,
        "no message was added to GENERAL: {g}"
    );
}

#[test]
fn a_re_send_is_a_duplicate_only_for_the_same_id_room_and_author() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let rid = alice.ok("createPrivateGroup", json!(["team", ["bob"], false]))["rid"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = alice.ok("sendMessage", json!([{"_id": "client-id-1", "rid": rid, "msg": "one"}]));
    assert_eq!(first["_id"], "client-id-1");
    // The same author, room and id: accepted as a re-send (DDP answers it without a message),
    // nothing written; REST answers with the stored message.
    alice.ok(
        "sendMessage",
        json!([{"_id": "client-id-1", "rid": rid, "msg": "one, again"}]),
    );
    let rest = Rest::login(&server, "alice");
    let again = rest.post(
        "chat.sendMessage",
        json!({"message": {"_id": "client-id-1", "rid": rid, "msg": "one, again"}}),
    );
    assert_eq!(again["status"], 200, "{again}");
    assert_eq!(again["body"]["message"]["msg"], "one");
    // Another member, same room: refused, and the stored text is not revealed.
    let err = bob
        .call(
            "sendMessage",
            json!([{"_id": "client-id-1", "rid": rid, "msg": "mine"}]),
        )
        .unwrap_err();
    assert_eq!(err["error"], "error-not-allowed");
    assert!(!err.to_string().contains("one"), "{err}");
    // The same author, another room: refused.
    let err = alice
        .call(
            "sendMessage",
            json!([{"_id": "client-id-1", "rid": "GENERAL", "msg": "x"}]),
        )
        .unwrap_err();
    assert_eq!(err["error"], "error-not-allowed");
    let h = alice.ok("loadHistory", json!([rid, null, 10, null]));
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one"]);
}
