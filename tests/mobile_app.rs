//! The Rocket.Chat mobile app's start-up, replayed against a real chatd call by call as
//! `shared/reference/rocketchat-clients.md` lays it out (app 4.72): the server check in both
//! version forms, login, the 2-second window, the initial sync, a room opened, a message sent
//! and received, read, reopened with `chat.syncMessages` after edits and deletions made while
//! away, and logout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// The login-screen settings the app fetches (RN `lib/methods/getSettings.ts`).
const LOGIN_SETTINGS: &[&str] = &[
    "API_Gitlab_URL",
    "CAS_enabled",
    "CAS_login_url",
    "Accounts_EmailVerification",
    "Accounts_ManuallyApproveNewUsers",
    "Accounts_ShowFormLogin",
    "Site_Url",
    "Accounts_RegistrationForm",
    "Accounts_RegistrationForm_LinkReplacementText",
    "Accounts_EmailOrUsernamePlaceholder",
    "Accounts_PasswordPlaceholder",
    "Accounts_PasswordReset",
    "Accounts_iframe_enabled",
    "Accounts_Iframe_api_url",
    "Accounts_Iframe_api_method",
];

/// Every `stream-notify-user` event the app subscribes to after login.
const USER_EVENTS: &[&str] = &[
    "message",
    "otr",
    "webrtc",
    "notification",
    "rooms-changed",
    "subscriptions-changed",
    "uiInteraction",
    "e2ekeyRequest",
    "userData",
    "video-conference",
    "media-signal",
    "media-calls",
];

fn pct(s: &str) -> String {
    percent_encode(s)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The app's supported-versions decision (RN `lib/methods/checkSupportedVersions.ts`) on the
/// unsigned data `/api/info` carries, as the app applies it when Rocket.Chat's cloud cannot be
/// reached: the entry matching `~major.minor`, expired unless its expiration is in the future.
fn supported_status(info: &Value) -> &'static str {
    let version = info["version"].as_str().unwrap();
    let major_minor: Vec<&str> = version.split('.').take(2).collect();
    let sv = &info["supportedVersions"];
    // Older than the app's built-in list (2023-10-11): the built-in one is used, which only
    // knows 6.3-6.5.
    if sv["timestamp"].as_str().unwrap_or("") < "2023-10-11T00:00:00.000Z" {
        return "expired (built-in list)";
    }
    let entry = sv["versions"].as_array().unwrap().iter().find(|v| {
        let vv: Vec<&str> = v["version"].as_str().unwrap().split('.').take(2).collect();
        vv == major_minor
    });
    let Some(entry) = entry else {
        return "expired (no entry)";
    };
    let expiration = chatd::protocol::wire::parse_date(&entry["expiration"]).unwrap();
    if expiration >= chatd::ids::now_ms() {
        "supported"
    } else {
        "expired"
    }
}

/// The first frame matching `pred`, among those already received and kept or arriving next.
fn frame(c: &mut Ddp, pred: impl Fn(&Value) -> bool) -> Value {
    if let Some(pos) = c.events.iter().position(&pred) {
        return c.events.remove(pos).unwrap();
    }
    c.wait_frame(pred)
}

/// The app's DDP subscription options for stream events.
fn stream_args(event: &str) -> Value {
    json!([event, {"useCollection": false, "args": [false]}])
}

#[test]
fn the_mobile_app_starts_up_syncs_and_reopens_a_room() {
    let server = TestServer::start();
    // The workspace's first user is its admin; the app's user is a plain user.
    let mut admin = user(server.addr, "admin");
    let mut bob = user(server.addr, "bob");
    Ddp::open(server.addr).register("alice", "alice-pw");

    // 1. Adding the server: /api/info (both version forms read the same fields).
    let mut app = Http::new(server.addr);
    let (status, info) = app.get("/api/info");
    assert_eq!(status, 200);
    assert_eq!(info["success"], true);
    assert_eq!(info["version"], "8.5", "major.minor to callers without view-statistics");
    assert_eq!(supported_status(&info), "supported", "{info}");
    // The websocket probe.
    drop(Ddp::open(server.addr));
    // OAuth services: none.
    let (status, oauth) = app.get("settings.oauth");
    assert_eq!(
        (status, oauth["success"].clone(), oauth["services"].clone()),
        (200, json!(true), json!([]))
    );
    // Login settings, 7.0+ form and the pre-7.0 form: the same answer, the login form on.
    let (status, modern) = app.get(&format!("settings.public?_id={}", LOGIN_SETTINGS.join(",")));
    assert_eq!(status, 200, "{modern}");
    let query = json!({"_id": {"$in": LOGIN_SETTINGS}}).to_string();
    let (_, legacy) = app.get(&format!("settings.public?query={}", pct(&query)));
    assert_eq!(modern["settings"], legacy["settings"]);
    let setting = |v: &Value, id: &str| {
        v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["_id"] == id)
            .map(|s| s["value"].clone())
    };
    assert_eq!(setting(&modern, "Accounts_ShowFormLogin"), Some(json!(true)));
    assert_eq!(setting(&modern, "Accounts_RegistrationForm"), Some(json!("Public")));
    assert_eq!(setting(&modern, "Accounts_iframe_enabled"), Some(json!(false)));
    assert_eq!(modern["total"], json!(modern["settings"].as_array().unwrap().len()));
    // The unique id, both forms (the app sends it to Rocket.Chat's cloud).
    let (_, one) = app.get("settings.public?_id=uniqueID");
    let (_, one_legacy) = app.get(&format!("settings.public?query={}", pct(r#"{"_id": "uniqueID"}"#)));
    let unique = one["settings"][0]["value"].as_str().unwrap().to_owned();
    assert!(!unique.is_empty());
    assert_eq!(one_legacy["settings"][0]["value"], unique.as_str());
    // Every setting the app reads, as it pages (its URL carries whitespace before `&offset`).
    let (_, all) = app.get(&format!(
        "settings.public?_id={}%0A%09%09%09%09&offset=0",
        "Site_Name,UI_Use_Real_Name,Hide_System_Messages,FileUpload_MaxFileSize,uniqueID,Cloud_Workspace_AirGapped_Restrictions_Remaining_Days"
    ));
    assert!(setting(&all, "Hide_System_Messages").unwrap().is_array());
    assert!(setting(&all, "FileUpload_MaxFileSize").unwrap().is_number());
    assert!(setting(&all, "Cloud_Workspace_AirGapped_Restrictions_Remaining_Days").is_none());
    assert_eq!(all["total"], 5);

    // 2. The app opens its DDP socket before logging in; it stays open on the login screen.
    let mut ddp = Ddp::open(server.addr);
    ddp.send(json!({"msg": "ping", "id": "p1"}));
    ddp.wait_frame(|f| f["msg"] == "pong");
    // Public settings are live before login.
    assert!(ddp
        .sub("stream-notify-all", stream_args("public-settings-changed"))
        .is_ok());

    // 3. Password login over REST, then the resume login over DDP.
    let (status, login) = app.post("login", &json!({"user": "alice", "password": "alice-pw"}));
    assert_eq!(status, 200, "{login}");
    let uid = login["data"]["userId"].as_str().unwrap().to_owned();
    let token = login["data"]["authToken"].as_str().unwrap().to_owned();
    assert_eq!(login["data"]["me"]["username"], "alice");
    assert_eq!(login["data"]["me"]["roles"], json!(["user"]));
    app.auth = Some((uid.clone(), token.clone()));
    ddp.resume(&token);

    // 4. The 2-second window: permissions.listAll, then license:getModules (with the trailing
    //    argument every app call carries).
    let (status, perms) = app.get("permissions.listAll");
    assert_eq!(status, 200);
    let roles_of = |id: &str| {
        perms["update"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["_id"] == id)
            .map(|p| p["roles"].clone())
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    assert!(roles_of("create-c").as_array().unwrap().contains(&json!("user")));
    assert!(roles_of("mobile-upload-file")
        .as_array()
        .unwrap()
        .contains(&json!("user")));
    assert!(!roles_of("edit-message").as_array().unwrap().contains(&json!("user")));
    let newest = perms["update"][0]["_updatedAt"].as_str().unwrap().to_owned();
    let (_, again) = app.get(&format!("permissions.listAll?updatedSince={}", pct(&newest)));
    assert_eq!(
        (again["update"].clone(), again["remove"].clone()),
        (json!([]), json!([]))
    );
    assert_eq!(ddp.ok("license:getModules", json!([""])), json!([]));
    ddp.sub("stream-notify-logged", stream_args("permissions-changed"))
        .unwrap();

    // 5. The initial sync, then what the app forks.
    let sync_started = chatd::ids::now_ms();
    let (_, subs) = app.get("subscriptions.get");
    let (_, rooms) = app.get("rooms.get");
    assert_eq!(subs["remove"], json!([]));
    assert!(subs["update"].as_array().unwrap().iter().any(|s| s["rid"] == "GENERAL"));
    assert!(rooms["update"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.get("rid").is_none()));
    let (status, emoji) = app.get(&format!("emoji-custom.list?updatedSince={}", pct(&newest)));
    assert_eq!(
        (status, emoji["emojis"].clone()),
        (200, json!({"update": [], "remove": []}))
    );
    ddp.sub("stream-roles", json!(["roles", {"useCollection": false, "args": []}]))
        .unwrap();
    let (_, roles) = app.get("roles.list");
    assert!(roles["roles"].as_array().unwrap().iter().any(|r| r["_id"] == "owner"));
    let (status, commands) = app.get("commands.list");
    assert_eq!((status, commands["success"].clone()), (200, json!(true)));
    let device = "device-token-1";
    let (status, push) = app.post(
        "push.token",
        &json!({"id": "app-1", "value": device, "type": "gcm", "appName": "chat.rocket.android"}),
    );
    assert_eq!(status, 200, "{push}");
    assert_eq!(push["result"]["token"], json!({"gcm": device}));
    for event in ["updateAvatar", "Users:NameChanged"] {
        ddp.sub("stream-notify-logged", stream_args(event)).unwrap();
    }
    let (_, presence) = app.get(&format!("users.presence?ids={},{}", bob.uid(), admin.uid()));
    assert_eq!(presence["success"], true);
    assert!(presence["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["_id"] == bob.uid().as_str()));
    ddp.sub("stream-user-presence", json!(["", {"added": [bob.uid()]}]))
        .unwrap();
    // Users in public roles, both forms: the admin.
    let roles_ddp = ddp.ok("getUserRoles", json!([""]));
    assert_eq!(
        roles_ddp,
        json!([{"_id": admin.uid(), "username": "admin", "roles": ["admin"]}])
    );
    let (_, roles_rest) = app.get("roles.getUsersInPublicRoles");
    assert_eq!(roles_rest["users"], roles_ddp);
    assert_eq!(ddp.ok("UserPresence:away", json!([""])), json!(true));
    assert_eq!(ddp.ok("UserPresence:online", json!([""])), json!(true));
    for event in USER_EVENTS {
        let r = ddp.sub("stream-notify-user", stream_args(&format!("{uid}/{event}")));
        assert!(r.is_ok(), "{event}: {r:?}");
    }

    // 6. A room: bob makes a private group with alice; it reaches her live.
    let (_, created) = {
        let mut bob_rest = Http::new(server.addr);
        bob_rest.login("bob", "bob-pw");
        bob_rest.post(
            "groups.create",
            &json!({"name": "design", "members": ["alice"], "readOnly": false}),
        )
    };
    let rid = created["group"]["_id"].as_str().unwrap().to_owned();
    let inserted = frame(&mut ddp, |f| {
        f["collection"] == "stream-notify-user"
            && f["fields"]["eventName"] == format!("{uid}/subscriptions-changed")
            && f["fields"]["args"][0] == "inserted"
    });
    assert_eq!(inserted["fields"]["args"][1]["rid"], rid.as_str());
    // Opening it: the room streams, then its first page of history.
    let room_args = |event: String| json!([event, {"useCollection": false, "args": [rid.clone()]}]);
    ddp.sub("stream-room-messages", room_args(rid.clone())).unwrap();
    for kind in ["user-activity", "deleteMessage", "deleteMessageBulk", "messagesRead"] {
        ddp.sub("stream-notify-room", room_args(format!("{rid}/{kind}")))
            .unwrap();
    }
    let (status, history) = app.get(&format!(
        "groups.history?roomId={rid}&showThreadMessages=false&count=50"
    ));
    assert_eq!((status, history["messages"].clone()), (200, json!([])));

    // 7. Sending: the app's own id is kept; the message comes back on the room stream.
    let (status, sent) = app.post(
        "chat.sendMessage",
        &json!({"message": {"_id": "AppMessageId00001", "rid": rid, "msg": "hello from the app"}}),
    );
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["message"]["_id"], "AppMessageId00001");
    assert_eq!(sent["message"]["mentions"], json!([]));
    let echoed = ddp.next_message();
    assert_eq!(echoed["_id"], "AppMessageId00001");

    // 8. Receiving: bob mentions alice; her badge moves (subscriptions-changed with her own
    //    counters) and she gets the in-app notification.
    bob.send_message(&rid, "@alice have a look");
    let got = ddp.next_message();
    assert_eq!(got["msg"], "@alice have a look");
    let changed = frame(&mut ddp, |f| {
        f["collection"] == "stream-notify-user"
            && f["fields"]["eventName"] == format!("{uid}/subscriptions-changed")
            && f["fields"]["args"][1]["rid"] == rid.as_str()
    });
    let sub = &changed["fields"]["args"][1];
    assert_eq!(changed["fields"]["args"][0], "updated");
    assert_eq!(
        (sub["unread"].clone(), sub["userMentions"].clone(), sub["alert"].clone()),
        (json!(1), json!(1), json!(true))
    );
    frame(&mut ddp, |f| f["fields"]["eventName"] == format!("{uid}/notification"));

    // 9. Reading: the badge clears, and the room hears that everyone has read it.
    let (status, read) = app.post("subscriptions.read", &json!({"rid": rid}));
    assert_eq!((status, read["success"].clone()), (200, json!(true)));
    let cleared = frame(&mut ddp, |f| {
        f["fields"]["eventName"] == format!("{uid}/subscriptions-changed") && f["fields"]["args"][1]["unread"] == 0
    });
    assert_eq!(cleared["fields"]["args"][1]["userMentions"], 0);
    assert_eq!(cleared["fields"]["args"][1]["alert"], false);
    let receipt = frame(&mut ddp, |f| f["fields"]["eventName"] == format!("{rid}/messagesRead"));
    assert!(receipt["fields"]["args"][0]["until"]["$date"].as_i64().is_some());
    let (_, after_read) = app.get(&format!(
        "subscriptions.get?updatedSince={}",
        pct(&chatd::protocol::wire::iso(sync_started))
    ));
    let mine = after_read["update"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["rid"] == rid.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (mine["unread"].clone(), mine["alert"].clone()),
        (json!(0), json!(false))
    );

    // The mentions list, in the 7.0+ form and the older `query` form; starred and pinned lists
    // are empty.
    let sort = pct(r#"{"ts":-1}"#);
    let (status, mentions) = app.get(&format!(
        "groups.messages?roomId={rid}&offset=0&sort={sort}&mentionIds={uid}"
    ));
    assert_eq!(status, 200, "{mentions}");
    let legacy_query = pct(&json!({"mentions._id": {"$in": [uid]}}).to_string());
    let (_, mentions_legacy) = app.get(&format!(
        "groups.messages?roomId={rid}&offset=0&sort={sort}&query={legacy_query}"
    ));
    assert_eq!(mentions["messages"], mentions_legacy["messages"]);
    assert_eq!(mentions["total"], 1);
    assert_eq!(mentions["messages"][0]["msg"], "@alice have a look");
    let (_, starred) = app.get(&format!(
        "groups.messages?roomId={rid}&offset=0&sort={sort}&starredIds={uid}"
    ));
    assert_eq!(starred["messages"], json!([]));
    let (_, everything) = app.get(&format!("groups.messages?roomId={rid}"));
    assert_eq!(everything["total"], 2);

    // 10. Away: the app closes; bob edits one message, deletes another, sends a new one.
    let last_open = chatd::ids::now_ms();
    drop(ddp);
    let mut bob_rest = Http::new(server.addr);
    bob_rest.login("bob", "bob-pw");
    let doomed = bob.send_message(&rid, "to be deleted")["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let edited = got["_id"].as_str().unwrap().to_owned();
    let since = chatd::ids::now_ms();
    let (status, _) = bob_rest.post(
        "chat.update",
        &json!({"roomId": rid, "msgId": edited, "text": "@alice edited"}),
    );
    assert_eq!(status, 200);
    let (status, _) = bob_rest.post("chat.delete", &json!({"roomId": rid, "msgId": doomed}));
    assert_eq!(status, 200);
    let fresh = bob.send_message(&rid, "while you were away")["_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // 11. Back: reconnect, resume, and reopen the room with chat.syncMessages in both forms.
    let mut ddp = Ddp::open(server.addr);
    ddp.resume(&token);
    let iso_since = chatd::protocol::wire::iso(since);
    let (status, legacy) = app.get(&format!(
        "chat.syncMessages?roomId={rid}&lastUpdate={}",
        pct(&iso_since)
    ));
    assert_eq!(status, 200, "{legacy}");
    let ids = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut updated = ids(&legacy["result"]["updated"]);
    updated.sort();
    let mut want = vec![edited.clone(), fresh.clone()];
    want.sort();
    assert_eq!(updated, want, "{legacy}");
    assert_eq!(ids(&legacy["result"]["deleted"]), vec![doomed.clone()]);
    let the_edit = legacy["result"]["updated"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["_id"] == edited.as_str())
        .unwrap();
    assert_eq!(the_edit["msg"], "@alice edited");
    // 7.1+: UPDATED and DELETED from the last open, one change per page, following the cursor.
    let follow = |kind: &str| -> Vec<String> {
        let mut next = since.to_string();
        let mut out = Vec::new();
        for _ in 0..10 {
            let (status, page) = app.get(&format!(
                "chat.syncMessages?roomId={rid}&next={next}&count=1&type={kind}"
            ));
            assert_eq!(status, 200, "{page}");
            let list = if kind == "UPDATED" {
                &page["result"]["updated"]
            } else {
                &page["result"]["deleted"]
            };
            out.extend(ids(list));
            match page["result"]["cursor"]["next"].as_str() {
                Some(n) => next = n.to_owned(),
                None => return out,
            }
        }
        panic!("the cursor never ended");
    };
    assert_eq!(
        follow("UPDATED"),
        [edited.clone(), fresh.clone()],
        "in the order they changed"
    );
    assert_eq!(follow("DELETED"), vec![doomed.clone()]);
    let (_, all_updates) = app.get(&format!(
        "chat.syncMessages?roomId={rid}&next={last_open}&count=50&type=UPDATED"
    ));
    assert_eq!(all_updates["result"]["cursor"]["next"], Value::Null);
    assert_eq!(all_updates["result"]["deleted"], json!([]));
    // Rocket.Chat's refusals: both cursors, or a cursor with lastUpdate.
    let (status, _) = app.get(&format!(
        "chat.syncMessages?roomId={rid}&next=1&previous=2&type=UPDATED"
    ));
    assert_eq!(status, 400);
    // A room the caller does not belong to tells nothing.
    let (status, _) = {
        let mut carol = Http::new(server.addr);
        Ddp::open(server.addr).register("carol", "carol-pw");
        carol.login("carol", "carol-pw");
        carol.get(&format!(
            "chat.syncMessages?roomId={rid}&lastUpdate={}",
            pct(&iso_since)
        ))
    };
    assert_eq!(status, 403);

    // 12. Leaving a room: the next sync reports its subscription and the room as removed.
    let before_leave = chatd::protocol::wire::iso(chatd::ids::now_ms() - 1);
    let general_sub = subs["update"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["rid"] == "GENERAL")
        .unwrap()["_id"]
        .clone();
    let (status, left) = app.post("channels.leave", &json!({"roomId": "GENERAL"}));
    assert_eq!(status, 200, "{left}");
    let (_, subs_now) = app.get(&format!("subscriptions.get?updatedSince={}", pct(&before_leave)));
    assert_eq!(ids(&subs_now["remove"]), [general_sub.as_str().unwrap().to_owned()]);
    assert!(subs_now["remove"][0]["_deletedAt"].is_string());
    let (_, rooms_now) = app.get(&format!("rooms.get?updatedSince={}", pct(&before_leave)));
    assert_eq!(ids(&rooms_now["remove"]), ["GENERAL"]);

    // 13. Logout: the push token goes, then the login; the socket closes.
    let (status, _) = Http::finish(
        app.req("DELETE", "push.token")
            .set("Content-Type", "application/json")
            .send_string(&json!({"token": device}).to_string()),
    );
    assert_eq!(status, 200);
    let (status, out) = app.post("logout", &json!({}));
    assert_eq!((status, out["status"].clone()), (200, json!("success")));
    drop(ddp);
    let (status, _) = app.get("me");
    assert_eq!(status, 401, "the token no longer works");
    admin.ok("logout", json!([]));
}

/// The app's message actions (RN `lib/services/restApi.ts`, `lib/methods/loadThreadMessages.ts`,
/// `views/ThreadMessagesView`): a reaction, a thread reply and its thread screen, a pin (by the
/// room's owner) and a star, each seen on the open room's stream as the app reads it.
#[test]
fn the_mobile_app_reacts_replies_in_a_thread_pins_and_stars() {
    let server = TestServer::start();
    let _admin = user(server.addr, "admin");
    let mut bob = user(server.addr, "bob");
    let _alice = user(server.addr, "alice");
    let mut app = Http::new(server.addr);
    let (status, login) = app.post("login", &json!({"user": "alice", "password": "alice-pw"}));
    assert_eq!(status, 200, "{login}");
    let uid = login["data"]["userId"].as_str().unwrap().to_owned();
    let token = login["data"]["authToken"].as_str().unwrap().to_owned();
    app.auth = Some((uid.clone(), token.clone()));
    let mut ddp = Ddp::open(server.addr);
    ddp.resume(&token);
    let mut bob_rest = Http::new(server.addr);
    bob_rest.login("bob", "bob-pw");
    let (_, created) = bob_rest.post("groups.create", &json!({"name": "design", "members": ["alice"]}));
    let rid = created["group"]["_id"].as_str().unwrap().to_owned();
    ddp.sub(
        "stream-room-messages",
        json!([rid, {"useCollection": false, "args": [rid.clone()]}]),
    )
    .unwrap();
    let topic = bob.send_message(&rid, "which logo?");
    let mid = topic["_id"].as_str().unwrap().to_owned();
    assert_eq!(ddp.next_message()["_id"], mid.as_str());
    let next_of = |ddp: &mut Ddp, id: &str, pred: &dyn Fn(&Value) -> bool| loop {
        let m = ddp.next_message();
        if m["_id"] == id && pred(&m) {
            return m;
        }
    };

    // A reaction (the app's toggle): the message comes back with `reactions`.
    let (status, r) = app.post("chat.react", &json!({"emoji": ":heart:", "messageId": mid}));
    assert_eq!((status, r["success"].clone()), (200, json!(true)), "{r}");
    let m = next_of(&mut ddp, &mid, &|m| m.get("reactions").is_some());
    assert_eq!(m["reactions"], json!({":heart:": {"usernames": ["alice"]}}));

    // A thread reply with the app's own id; the first message is re-sent with tcount and tlm.
    let (status, sent) = app.post(
        "chat.sendMessage",
        &json!({"message": {"_id": "AppReplyId0000001", "rid": rid, "msg": "the blue one", "tmid": mid}}),
    );
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["message"]["tmid"], mid.as_str());
    let head = next_of(&mut ddp, &mid, &|m| m["tcount"] == 1);
    assert_eq!(head["tlm"]["$date"], sent_ts(&sent));
    // The thread screen: its messages over DDP, the room's threads over REST.
    let thread = ddp.ok("getThreadMessages", json!([{"tmid": mid}, ""]));
    let ids: Vec<&str> = thread
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mid.as_str(), "AppReplyId0000001"]);
    let (_, threads) = app.get(&format!("chat.getThreadsList?rid={rid}&count=50&offset=0&text="));
    assert_eq!(threads["threads"][0]["_id"], mid.as_str());
    assert_eq!(threads["total"], 1);
    // The app's first page leaves thread replies out (`showThreadMessages=false`) unless shown.
    let (_, history) = app.get(&format!(
        "groups.history?roomId={rid}&showThreadMessages=false&count=50"
    ));
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].as_str().unwrap())
        .collect();
    assert!(!texts.contains(&"the blue one"), "{texts:?}");

    // A pin by the room's owner: the message comes back pinned, and the system message arrives.
    let (status, pinned) = bob_rest.post("chat.pinMessage", &json!({"messageId": mid}));
    assert_eq!(status, 200, "{pinned}");
    let notice = loop {
        let m = ddp.next_message();
        if m["t"] == "message_pinned" {
            break m;
        }
    };
    assert_eq!(notice["attachments"][0]["text"], "which logo?");
    let (_, list) = app.get(&format!("chat.getPinnedMessages?roomId={rid}&offset=0&count=50"));
    assert_eq!(list["messages"][0]["_id"], mid.as_str());
    // Alice may not pin: pin-message is for owners and moderators.
    let (status, refused) = app.post("chat.pinMessage", &json!({"messageId": "AppReplyId0000001"}));
    assert_eq!((status, refused["errorType"].clone()), (400, json!("not-authorized")));

    // A star: hers only; the app's starred list (7.0+ form) has it.
    let (status, _) = app.post("chat.starMessage", &json!({"messageId": mid}));
    assert_eq!(status, 200);
    let m = next_of(&mut ddp, &mid, &|m| m.get("starred").is_some());
    assert_eq!(m["starred"], json!([{"_id": uid}]));
    let sort = pct(r#"{"ts":-1}"#);
    let (_, starred) = app.get(&format!(
        "groups.messages?roomId={rid}&offset=0&sort={sort}&starredIds={uid}"
    ));
    assert_eq!(starred["total"], 1);
    assert_eq!(starred["messages"][0]["_id"], mid.as_str());
}

/// A REST message's `ts` (ISO) in milliseconds.
fn sent_ts(v: &Value) -> i64 {
    chatd::protocol::wire::parse_date(&v["message"]["ts"]).unwrap()
}

#[test]
fn room_roles_decide_who_may_edit_delete_and_post() {
    let server = TestServer::start();
    let mut admin = user(server.addr, "root");
    let mut bob = user(server.addr, "bob");
    let mut carol = user(server.addr, "carol");
    // The first user is the admin.
    assert_eq!(
        admin.ok("getUserRoles", json!([])),
        json!([{"_id": admin.uid(), "username": "root", "roles": ["admin"]}])
    );
    let room = bob.ok("createPrivateGroup", json!(["plans", ["carol"], false]));
    let rid = room["rid"].as_str().unwrap().to_owned();
    let carols = carol.send_message(&rid, "carol's")["_id"].as_str().unwrap().to_owned();
    let bobs = bob.send_message(&rid, "bob's")["_id"].as_str().unwrap().to_owned();
    // edit-message and delete-message belong to admins, owners and moderators: a plain member
    // may change only their own (delete-own-message), the room's owner anyone's.
    let err = carol
        .call("updateMessage", json!([{"_id": bobs, "msg": "x"}]))
        .unwrap_err();
    assert_eq!(err["error"], "error-action-not-allowed");
    let err = carol.call("deleteMessage", json!([{"_id": bobs}])).unwrap_err();
    assert_eq!(err["error"], "error-action-not-allowed");
    carol.ok("updateMessage", json!([{"_id": carols, "msg": "carol's, edited"}]));
    bob.ok("updateMessage", json!([{"_id": carols, "msg": "moderated"}]));
    bob.ok("deleteMessage", json!([{"_id": carols}]));
    // A read-only room: only those with post-readonly (its owner) post.
    let ro = bob.ok("createPrivateGroup", json!(["announcements", ["carol"], true]));
    let ro = ro["rid"].as_str().unwrap().to_owned();
    assert_eq!(
        carol.call("sendMessage", json!([{"rid": ro, "msg": "x"}])).unwrap_err()["error"],
        "error-not-allowed"
    );
    bob.send_message(&ro, "owners may");
}

#[test]
fn subscriptions_made_before_a_resume_login_run_once_it_logs_in() {
    let server = TestServer::start();
    let mut bot = user(server.addr, "bot");
    let token = bot.token.clone().unwrap();
    let mut sender = user(server.addr, "sender");
    // After a reconnect the 0.2 SDK subscribes first and resumes its login after.
    let mut again = Ddp::open(server.addr);
    again.send(json!({"msg": "sub", "id": "s1", "name": "stream-room-messages", "params": ["__my_messages__", true]}));
    again.send(json!({"msg": "method", "id": "m1", "method": "login", "params": [{"resume": token}]}));
    again.wait_frame(|f| f["msg"] == "result" && f["id"] == "m1" && f.get("error").is_none());
    again.wait_frame(|f| f["msg"] == "ready" && f["subs"][0] == "s1");
    sender.send_message("GENERAL", "do you hear me");
    assert_eq!(again.next_message()["msg"], "do you hear me");
    // One that will never be allowed is refused once the login shows it.
    let mut third = Ddp::open(server.addr);
    third.send(json!({"msg": "sub", "id": "s2", "name": "stream-notify-user", "params": [format!("{}/notification", sender.uid()), false]}));
    third.send(json!({"msg": "method", "id": "m2", "method": "login", "params": [{"resume": token}]}));
    let refused = third.wait_frame(|f| f["msg"] == "nosub" && f["id"] == "s2");
    assert_eq!(refused["error"]["error"], "not-allowed");
    bot.ok("logout", json!([]));
}

#[test]
fn the_rest_bridge_runs_ddp_methods() {
    let server = TestServer::start();
    let _admin = user(server.addr, "admin");
    let mut watcher = user(server.addr, "watcher");
    watcher.sub("stream-room-messages", json!(["GENERAL", false])).unwrap();
    let mut app = Http::new(server.addr);
    let call = |method: &str, params: Value| json!({"message": json!({"msg": "method", "id": "42", "method": method, "params": params}).to_string()});
    let result = |v: &Value| -> Value { serde_json::from_str(v["message"].as_str().unwrap()).unwrap() };
    // A login through method.callAnon, as the apps send it when the server advertises the bridge.
    let (status, login) = app.post(
        "method.callAnon/login",
        &call(
            "login",
            json!([{"user": {"username": "watcher"}, "password": "watcher-pw"}]),
        ),
    );
    assert_eq!(status, 200, "{login}");
    let login = result(&login);
    assert_eq!(
        (login["msg"].clone(), login["id"].clone()),
        (json!("result"), json!("42"))
    );
    let token = login["result"]["token"].as_str().unwrap().to_owned();
    app.auth = Some((login["result"]["id"].as_str().unwrap().to_owned(), token));
    // A method that needs the login, through method.call: it acts as the caller.
    let (status, sent) = app.post(
        "method.call/sendMessage",
        &call("sendMessage", json!([{"rid": "GENERAL", "msg": "over the bridge"}, ""])),
    );
    assert_eq!(status, 200, "{sent}");
    assert_eq!(result(&sent)["result"]["msg"], "over the bridge");
    assert_eq!(watcher.next_message()["msg"], "over the bridge");
    // Errors come back inside the message; anonymous callers are not logged in.
    let (_, err) = app.post(
        "method.callAnon/sendMessage",
        &call("sendMessage", json!([{"rid": "GENERAL", "msg": "x"}])),
    );
    assert!(result(&err)["error"].is_object(), "{err}");
    let (status, _) = app.post("method.call/login", &call("sendMessage", json!([])));
    assert_eq!(status, 400, "the method named must be the URL's");
    let (_, missing) = app.post("method.call/noSuchMethod", &call("noSuchMethod", json!([])));
    assert_eq!(result(&missing)["error"]["error"], 404);
}
