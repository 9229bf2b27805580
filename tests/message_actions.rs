//! Message actions against the real server (2 shards, port 0, temp dir), each over DDP and
//! REST with a second user watching the room's stream: reactions, pins, stars, threads,
//! mentions, single messages, search and deletions, and what an outsider learns (nothing: the
//! same answer as for a message or room that does not exist).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// The next re-send of message `mid` on the room stream.
fn next_version_of(c: &mut Ddp, mid: &str) -> Value {
    loop {
        let m = c.next_message();
        if m["_id"] == mid {
            return m;
        }
    }
}

fn rid_of(v: &Value) -> String {
    v["rid"].as_str().unwrap().to_owned()
}

#[test]
fn reactions_pins_and_stars_over_both_doors_reach_the_room() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let mut carol = user(server.addr, "carol");
    let rid = rid_of(&alice.ok("createChannel", json!(["acts", ["bob"], false])));
    let secret = rid_of(&alice.ok("createPrivateGroup", json!(["hush", [], false])));
    bob.sub("stream-room-messages", json!([rid, false])).unwrap();
    let (ha, hb, hc) = (
        http_as(&server, &alice),
        http_as(&server, &bob),
        http_as(&server, &carol),
    );

    let mid = alice.send_message(&rid, "react to me")["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bob.next_message()["_id"], mid.as_str());
    let hidden = alice.send_message(&secret, "private")["_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Reactions: DDP toggles on, REST adds another user's, DDP toggles off, `shouldReact`.
    assert_eq!(alice.ok("setReaction", json!(["smile", mid])), Value::Null);
    let m = next_version_of(&mut bob, &mid);
    assert_eq!(m["reactions"], json!({":smile:": {"usernames": ["alice"]}}));
    let first_update = m["_updatedAt"]["$date"].as_i64().unwrap();
    ok_body(hb.post("chat.react", &json!({"emoji": ":smile:", "messageId": mid})));
    let m = next_version_of(&mut bob, &mid);
    assert_eq!(m["reactions"][":smile:"]["usernames"], json!(["alice", "bob"]));
    assert!(m["_updatedAt"]["$date"].as_i64().unwrap() > first_update);
    alice.ok("setReaction", json!([":smile:", mid]));
    let m = next_version_of(&mut bob, &mid);
    assert_eq!(m["reactions"][":smile:"]["usernames"], json!(["bob"]));
    // shouldReact=true when already reacted changes nothing; false removes.
    ok_body(hb.post(
        "chat.react",
        &json!({"emoji": "smile", "messageId": mid, "shouldReact": true}),
    ));
    ok_body(hb.post(
        "chat.react",
        &json!({"emoji": "smile", "messageId": mid, "shouldReact": false}),
    ));
    let m = next_version_of(&mut bob, &mid);
    assert!(m.get("reactions").is_none(), "{m}");
    // A reaction reaches chat.syncMessages clients as an update.
    let sync = ok_body(hb.get(&format!(
        "chat.syncMessages?roomId={rid}&lastUpdate=1970-01-01T00:00:00.000Z"
    )));
    assert!(sync["result"]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["_id"] == mid.as_str()));

    // Bad emoji, bad types, unknown and hidden messages.
    let e = alice.call("setReaction", json!(["<b>", mid])).unwrap_err();
    assert_eq!(
        (e["error"].as_str(), e["reason"].as_str()),
        (Some("error-not-allowed"), Some("Invalid emoji provided."))
    );
    assert_eq!(alice.call("setReaction", json!([5, mid])).unwrap_err()["error"], 400);
    assert_eq!(
        alice.call("setReaction", json!(["smile", mid, "yes"])).unwrap_err()["error"],
        400
    );
    let unknown = carol.call("setReaction", json!(["smile", "no-such-id"])).unwrap_err();
    let private = carol.call("setReaction", json!(["smile", hidden])).unwrap_err();
    assert_eq!(unknown["error"], "error-not-allowed");
    assert_eq!(unknown, private);
    let unknown = failure(hc.post("chat.react", &json!({"emoji": "smile", "messageId": "no-such-id"})));
    let private = failure(hc.post("chat.react", &json!({"emoji": "smile", "messageId": hidden})));
    assert_eq!(unknown, (400, "error-message-not-found".to_owned()));
    assert_eq!(unknown, private);
    assert_eq!(
        failure(hb.post("chat.react", &json!({"emoji": 3, "messageId": mid}))).1,
        "invalid-params"
    );

    // Pins: members without `pin-message` may not; the owner's pin posts the system message.
    let e = bob.call("pinMessage", json!([{"_id": mid}])).unwrap_err();
    assert_eq!(e["error"], "not-authorized");
    let notice = ok_body(ha.post("chat.pinMessage", &json!({"messageId": mid})))["message"].clone();
    assert_eq!(notice["t"], "message_pinned");
    assert_eq!(notice["attachments"][0]["text"], "react to me");
    assert_eq!(notice["attachments"][0]["author_name"], "alice");
    let (a, b) = (bob.next_message(), bob.next_message());
    let (pinned, posted) = if a["_id"] == mid.as_str() { (a, b) } else { (b, a) };
    assert_eq!(pinned["pinned"], true);
    assert_eq!(pinned["pinnedBy"]["username"], "alice");
    assert!(pinned["pinnedAt"]["$date"].is_i64());
    assert_eq!(posted["t"], "message_pinned");
    let list = ok_body(hb.get(&format!("chat.getPinnedMessages?roomId={rid}")));
    assert_eq!(list["total"], 1);
    assert_eq!(list["messages"][0]["_id"], mid.as_str());
    assert_eq!(alice.ok("unpinMessage", json!([{"_id": mid}])), true);
    assert_eq!(next_version_of(&mut bob, &mid)["pinned"], false);
    assert_eq!(
        ok_body(hb.get(&format!("chat.getPinnedMessages?roomId={rid}")))["total"],
        0
    );
    let unknown = carol.call("pinMessage", json!([{"_id": "no-such-id"}])).unwrap_err();
    let private = carol.call("pinMessage", json!([{"_id": hidden}])).unwrap_err();
    assert_eq!(unknown["error"], "error-invalid-message");
    assert_eq!(unknown, private);
    // A pinned-list read of a hidden room looks like one of a missing room.
    let private = failure(hc.get(&format!("chat.getPinnedMessages?roomId={secret}")));
    let missing = failure(hc.get("chat.getPinnedMessages?roomId=nope"));
    assert_eq!(private, (403, "error-not-allowed".to_owned()));
    assert_eq!(private, missing);

    // Stars are each user's own.
    assert_eq!(
        bob.ok("starMessage", json!([{"_id": mid, "rid": rid, "starred": true}])),
        true
    );
    let m = next_version_of(&mut bob, &mid);
    assert_eq!(m["starred"], json!([{"_id": bob.uid()}]));
    ok_body(ha.post("chat.starMessage", &json!({"messageId": mid})));
    let starred = |h: &Http| ok_body(h.get(&format!("chat.getStarredMessages?roomId={rid}")))["total"].clone();
    assert_eq!(starred(&hb), 1);
    assert_eq!(starred(&ha), 1);
    ok_body(hb.post("chat.unStarMessage", &json!({"messageId": mid})));
    assert_eq!(starred(&hb), 0);
    assert_eq!(starred(&ha), 1);
    // Carol is not in the channel: she cannot star its messages.
    let e = failure(hc.post("chat.starMessage", &json!({"messageId": mid})));
    assert_eq!(e.1, "error-invalid-message");
    assert_eq!(
        bob.call("starMessage", json!([{"_id": mid}])).unwrap_err()["error"],
        400
    );
}

#[test]
fn threads_count_replies_notify_followers_and_list() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let mut carol = user(server.addr, "carol");
    let rid = rid_of(&alice.ok("createChannel", json!(["threads", ["bob", "carol"], false])));
    let secret = rid_of(&alice.ok("createPrivateGroup", json!(["hush", ["bob"], false])));
    carol.sub("stream-room-messages", json!([rid, false])).unwrap();
    alice
        .sub(
            "stream-notify-user",
            json!([format!("{}/subscriptions-changed", alice.uid()), false]),
        )
        .unwrap();
    let (ha, hb, hc) = (
        http_as(&server, &alice),
        http_as(&server, &bob),
        http_as(&server, &carol),
    );

    let root = alice.send_message(&rid, "a topic")["_id"].as_str().unwrap().to_owned();
    carol.next_message();
    // A reply over DDP: the reply, then its thread's first message with the new counters.
    let reply = bob.ok("sendMessage", json!([{"rid": rid, "msg": "first reply", "tmid": root}]));
    assert_eq!(reply["tmid"], root.as_str());
    assert_eq!(carol.next_message()["_id"], reply["_id"]);
    let head = next_version_of(&mut carol, &root);
    assert_eq!(head["tcount"], 1);
    assert_eq!(head["tlm"], reply["ts"]);
    let mut followers: Vec<String> = serde_json::from_value(head["replies"].clone()).unwrap();
    followers.sort();
    let mut expected = vec![alice.uid(), bob.uid()];
    expected.sort();
    assert_eq!(followers, expected);
    // The thread's author has an unread thread.
    loop {
        let ev = alice.next_event("stream-notify-user");
        if ev["fields"]["args"][1]["tunread"] == json!([root]) {
            break;
        }
    }
    // A reply over REST, naming a reply as its thread: counted on the first message.
    let second = ok_body(hb.post(
        "chat.sendMessage",
        &json!({"message": {"rid": rid, "msg": "second", "tmid": reply["_id"], "tshow": true}}),
    ))["message"]
        .clone();
    assert_eq!(second["tmid"], root.as_str());
    assert_eq!(second["tshow"], true);
    assert_eq!(next_version_of(&mut carol, &root)["tcount"], 2);

    // Reading the thread: DDP answers [first, ...replies newest first] and marks it read.
    let list = alice.ok("getThreadMessages", json!([{"tmid": root}]));
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            root.as_str(),
            second["_id"].as_str().unwrap(),
            reply["_id"].as_str().unwrap()
        ]
    );
    let subs = ok_body(ha.get("subscriptions.get"));
    let sub = subs["update"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["rid"] == rid.as_str())
        .unwrap()
        .clone();
    assert_eq!(sub["tunread"], json!([]));
    // REST: oldest first, paged.
    let page = ok_body(hc.get(&format!("chat.getThreadMessages?tmid={root}&count=1")));
    assert_eq!((page["total"].as_u64(), page["count"].as_u64()), (Some(2), Some(1)));
    assert_eq!(page["messages"][0]["_id"], reply["_id"]);

    // Thread lists: all, following, unread; text filter.
    let other = alice.send_message(&rid, "another topic")["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    carol.ok(
        "sendMessage",
        json!([{"rid": rid, "msg": "carol replies", "tmid": other}]),
    );
    let threads = |h: &Http, q: &str| -> Vec<String> {
        ok_body(h.get(&format!("chat.getThreadsList?rid={rid}{q}")))["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(threads(&hb, ""), [other.clone(), root.clone()]);
    assert_eq!(threads(&hb, "&type=following"), [root.as_str()]);
    assert_eq!(threads(&ha, "&type=unread"), [other.as_str()]);
    assert_eq!(threads(&hb, "&text=ANOTHER"), [other.as_str()]);
    // Unfollowing drops the thread from alice's following list and her unread threads.
    ok_body(ha.post("chat.unfollowMessage", &json!({"mid": other})));
    assert_eq!(threads(&ha, "&type=following"), [root.as_str()]);
    assert!(threads(&ha, "&type=unread").is_empty());
    alice.ok("followMessage", json!([{"mid": other}]));
    assert_eq!(threads(&ha, "&type=following").len(), 2);
    // readThreads after another reply.
    bob.ok("sendMessage", json!([{"rid": rid, "msg": "more", "tmid": other}]));
    assert_eq!(threads(&ha, "&type=unread"), [other.as_str()]);
    alice.ok("readThreads", json!([other]));
    assert!(threads(&ha, "&type=unread").is_empty());
    // The apps' "mark read" with readThreads clears them too.
    bob.ok("sendMessage", json!([{"rid": rid, "msg": "again", "tmid": other}]));
    assert_eq!(threads(&ha, "&type=unread"), [other.as_str()]);
    ok_body(ha.post("subscriptions.read", &json!({"rid": rid, "readThreads": true})));
    assert!(threads(&ha, "&type=unread").is_empty());
    // Sync forms.
    let synced = ok_body(hb.get(&format!(
        "chat.syncThreadsList?rid={rid}&updatedSince=1970-01-01T00:00:00.000Z"
    )));
    assert_eq!(synced["threads"]["update"].as_array().unwrap().len(), 2);
    let synced = ok_body(hb.get(&format!(
        "chat.syncThreadMessages?tmid={root}&updatedSince=1970-01-01T00:00:00.000Z"
    )));
    assert_eq!(synced["messages"]["update"].as_array().unwrap().len(), 2);
    // Deleting a reply uncounts it.
    bob.ok("deleteMessage", json!([{"_id": reply["_id"]}]));
    loop {
        let m = carol.next_message();
        if m["_id"] == root.as_str() && m["tcount"] == 1 {
            break;
        }
    }

    // A reply to nothing, or to another room's message, is refused; outsiders see nothing.
    let e = bob
        .call("sendMessage", json!([{"rid": rid, "msg": "x", "tmid": "no-such-id"}]))
        .unwrap_err();
    assert_eq!(e["error"], "error-invalid-message");
    let hidden_root = alice.send_message(&secret, "secret topic")["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.ok(
        "sendMessage",
        json!([{"rid": secret, "msg": "secret reply", "tmid": hidden_root}]),
    );
    let e = bob
        .call("sendMessage", json!([{"rid": rid, "msg": "x", "tmid": hidden_root}]))
        .unwrap_err();
    assert_eq!(e["error"], "error-invalid-message");
    assert_eq!(carol.ok("getThreadMessages", json!([{"tmid": hidden_root}])), json!([]));
    assert_eq!(
        carol.ok("getThreadMessages", json!([{"tmid": "no-such-id"}])),
        json!([])
    );
    let private = failure(hc.get(&format!("chat.getThreadMessages?tmid={hidden_root}")));
    let missing = failure(hc.get("chat.getThreadMessages?tmid=no-such-id"));
    assert_eq!(private, (400, "error-invalid-message".to_owned()));
    assert_eq!(private, missing);
    let private = failure(hc.get(&format!("chat.getThreadsList?rid={secret}")));
    let missing = failure(hc.get("chat.getThreadsList?rid=nope"));
    assert_eq!(private, missing);
    let private = carol.call("followMessage", json!([{"mid": hidden_root}])).unwrap_err();
    let missing = carol.call("followMessage", json!([{"mid": "no-such-id"}])).unwrap_err();
    assert_eq!(private, missing);
    // Bad input.
    assert_eq!(carol.call("getThreadMessages", json!(["x"])).unwrap_err()["error"], 400);
    assert_eq!(
        carol.call("getThreadMessages", json!([{"tmid": 5}])).unwrap_err()["error"],
        400
    );
    assert_eq!(
        failure(hc.get(&format!("chat.getThreadsList?rid={rid}&type=mine"))).1,
        "invalid-params"
    );
    assert_eq!(
        failure(hc.get(&format!("chat.getThreadsList?rid={rid}&count=x"))).1,
        "invalid-params"
    );
}

#[test]
fn mentions_single_messages_search_and_deletions() {
    let server = TestServer::start();
    let mut alice = user(server.addr, "alice");
    let mut bob = user(server.addr, "bob");
    let mut carol = user(server.addr, "carol");
    let rid = rid_of(&alice.ok("createChannel", json!(["talk", ["bob", "carol"], false])));
    carol
        .sub(
            "stream-notify-user",
            json!([format!("{}/subscriptions-changed", carol.uid()), false]),
        )
        .unwrap();
    carol
        .sub(
            "stream-notify-user",
            json!([format!("{}/notification", carol.uid()), false]),
        )
        .unwrap();
    let secret = rid_of(&alice.ok("createPrivateGroup", json!(["hush", [], false])));
    let (ha, hb, hc) = (
        http_as(&server, &alice),
        http_as(&server, &bob),
        http_as(&server, &carol),
    );

    // @bob counts on bob's subscription; @all on everyone else's group mentions.
    let named = alice.send_message(&rid, "hello @bob, see the Quarterly report");
    assert_eq!(named["mentions"][0]["username"], "bob");
    let everyone = alice.send_message(&rid, "@all standup in five");
    assert_eq!(everyone["mentions"][0]["_id"], "all");
    let sub_of = |h: &Http| {
        let subs = ok_body(h.get("subscriptions.get"));
        subs["update"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["rid"] == rid.as_str())
            .unwrap()
            .clone()
    };
    // Live: carol is notified of the group mention, and her room list hears of it.
    loop {
        let ev = carol.next_event("stream-notify-user");
        if ev["fields"]["eventName"] == format!("{}/notification", carol.uid()) {
            assert_eq!(ev["fields"]["args"][0]["text"], "@all standup in five", "{ev}");
            break;
        }
    }
    loop {
        let ev = carol.next_event("stream-notify-user");
        let sub = &ev["fields"]["args"][1];
        if sub["rid"] == rid.as_str() && sub["groupMentions"] == 1 {
            break;
        }
    }
    let b = sub_of(&hb);
    assert_eq!(
        (b["userMentions"].as_u64(), b["groupMentions"].as_u64()),
        (Some(1), Some(1))
    );
    let c = sub_of(&hc);
    assert_eq!(
        (c["userMentions"].as_u64(), c["groupMentions"].as_u64()),
        (Some(0), Some(1))
    );
    let a = sub_of(&ha);
    assert_eq!(
        (a["userMentions"].as_u64(), a["groupMentions"].as_u64()),
        (Some(0), Some(0))
    );
    let mentioned = ok_body(hb.get(&format!("chat.getMentionedMessages?roomId={rid}")));
    assert_eq!(mentioned["total"], 1);
    assert_eq!(mentioned["messages"][0]["_id"], named["_id"]);
    bob.ok("readMessages", json!([rid]));
    assert_eq!(sub_of(&hb)["groupMentions"], 0);

    // One message by id; a hidden one is a missing one.
    let hidden = alice.send_message(&secret, "private")["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = ok_body(hb.get(&format!("chat.getMessage?msgId={}", named["_id"].as_str().unwrap())));
    assert_eq!(got["message"]["msg"], named["msg"]);
    let private = failure(hb.get(&format!("chat.getMessage?msgId={hidden}")));
    let missing = failure(hb.get("chat.getMessage?msgId=nope"));
    assert_eq!(private, (400, "error-message-not-found".to_owned()));
    assert_eq!(private, missing);
    assert_eq!(bob.ok("getSingleMessage", json!([named["_id"]]))["_id"], named["_id"]);
    assert_eq!(bob.ok("getSingleMessage", json!([hidden])), Value::Null);
    assert_eq!(bob.ok("getSingleMessage", json!(["nope"])), Value::Null);

    // Quotes and replies as the apps send them: a permalink prefix becomes Rocket.Chat's quote
    // attachment, for messages the sender may see only.
    let named_id = named["_id"].as_str().unwrap();
    let link = format!("http://chat.example/channel/talk?msg={named_id}");
    let quote = bob.send_message(&rid, &format!("[ ]({link})\nquoting you"));
    assert_eq!(quote["msg"], format!("[ ]({link})\nquoting you"));
    let att = &quote["attachments"][0];
    assert_eq!(
        (
            att["text"].as_str(),
            att["author_name"].as_str(),
            att["message_link"].as_str()
        ),
        (named["msg"].as_str(), Some("alice"), Some(link.as_str()))
    );
    assert_eq!(att["ts"], named["ts"]);
    let sneaky = bob.send_message(
        &rid,
        &format!("[ ](http://chat.example/group/hush?msg={hidden})\nwhat is this"),
    );
    assert!(sneaky.get("attachments").is_none(), "{sneaky}");

    // Search: every word, any case, newest first; system messages are not searched.
    alice.send_message(&rid, "the quarterly numbers are in");
    let found = ok_body(hb.get(&format!("chat.search?roomId={rid}&searchText=quarterly")));
    let texts: Vec<&str> = found["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["the quarterly numbers are in", "hello @bob, see the Quarterly report"]
    );
    let found = bob.ok("messageSearch", json!(["REPORT quarterly", rid, 10]));
    assert_eq!(found["messages"].as_array().unwrap().len(), 1);
    let private = failure(hb.get(&format!("chat.search?roomId={secret}&searchText=private")));
    let missing = failure(hb.get("chat.search?roomId=nope&searchText=private"));
    assert_eq!(private, missing);
    assert_eq!(
        bob.ok("messageSearch", json!(["private", secret])),
        json!({"messages": []})
    );
    assert_eq!(
        failure(hb.get(&format!("chat.search?roomId={rid}&searchText={}", "x".repeat(300)))).1,
        "invalid-params"
    );
    assert_eq!(bob.call("messageSearch", json!([1, rid])).unwrap_err()["error"], 400);

    // Deleted messages since a time.
    let before = chrono_iso(named["ts"]["$date"].as_i64().unwrap());
    alice.ok("deleteMessage", json!([{"_id": named["_id"]}]));
    let gone = ok_body(hb.get(&format!("chat.getDeletedMessages?roomId={rid}&since={before}")));
    assert_eq!(gone["total"], 1);
    assert_eq!(gone["messages"][0]["_id"], named["_id"]);
    let private = failure(hb.get(&format!("chat.getDeletedMessages?roomId={secret}&since={before}")));
    let missing = failure(hb.get(&format!("chat.getDeletedMessages?roomId=nope&since={before}")));
    assert_eq!(private, missing);
    assert_eq!(
        failure(hb.get(&format!("chat.getDeletedMessages?roomId={rid}"))).1,
        "invalid-params"
    );
}

/// An ISO-8601 date (UTC, milliseconds) for a query string.
fn chrono_iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
