"""Drives chatd's REST API with the published `rocketchat_API` client, unmodified, and checks
that a message posted over REST reaches a `rocketchat-async` client live.

Usage: rest_api.py HTTP_URL WS_URL
Exits non-zero with a message on the first expectation that fails.
"""
import asyncio
import sys

from rocketchat_API.rocketchat import RocketChat as Rest
from rocketchat_async import RocketChat as Realtime

WAIT = 10.0


def expect(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def setup_users(url):
    anon = Rest(server_url=url)
    for name in ("alice", "bob"):
        reg = anon.users_register(email=f"{name}@example.org", name=name.title(), password=f"{name}-pw", username=name)
        expect(reg["success"] and reg["user"]["username"] == name, f"register {name}: {reg}")
    alice = Rest("alice", "alice-pw", server_url=url)
    bob = Rest("bob@example.org", "bob-pw", server_url=url)  # login by email
    expect(alice.headers.get("X-User-Id") and bob.headers.get("X-User-Id"), "both logged in")
    return anon, alice, bob


def check_users(anon, alice, bob):
    version = anon.info()["version"]
    expect(version.split(".")[0].isdigit(), f"info version {version}")
    me = alice.me()
    expect(me["username"] == "alice" and me["_id"] == alice.headers["X-User-Id"], f"me: {me}")
    info = alice.users_info(username="bob")
    expect(info["user"]["_id"] == bob.headers["X-User-Id"], f"users.info: {info}")
    expect(alice.users_info(user_id=info["user"]["_id"])["user"]["username"] == "bob", "users.info by id")
    # Presence needs a connection: a user with none is offline whatever they chose.
    expect(bob.users_get_presence(username="alice")["presence"] == "offline", "offline without a connection")
    asyncio.run(status_while_connected(url_of(alice), alice, bob))
    expect(bob.users_get_presence(username="alice")["presence"] == "offline", "offline again after disconnecting")


def url_of(rest):
    return rest.server_url.replace("http://", "ws://") + "/websocket"


async def next_status(events, username):
    """The next user-status event for `username` seen by the watcher (bounded wait)."""
    while True:
        name, code = await asyncio.wait_for(events.get(), WAIT)
        if name == username:
            return code


async def status_while_connected(ws_url, alice, bob):
    # bob watches user-status over the realtime API (through the client's own dispatcher).
    watcher = Realtime()
    await asyncio.wait_for(watcher.start(ws_url, "bob", "bob-pw"), WAIT)
    events = asyncio.Queue()

    def on_status(msg):
        for entry in msg["fields"]["args"]:
            events.put_nowait((entry[1], entry[2]))

    sub = {"msg": "sub", "id": "status-watch", "name": "stream-notify-logged", "params": ["user-status", False]}
    await watcher._dispatcher.create_subscription(sub, "status-watch", on_status)
    await asyncio.wait_for(watcher.get_channels(), WAIT)  # the subscription is in place after this

    rt = Realtime()
    await asyncio.wait_for(rt.start(ws_url, "alice", "alice-pw"), WAIT)
    expect(await next_status(events, "alice") == 1, "bob sees alice come online")
    expect(bob.users_get_presence(username="alice")["presence"] == "online", "online once connected")
    expect(alice.users_set_status(message="at lunch", status="away")["success"], "users.setStatus")
    own = alice.call_api_get("users.getStatus")
    expect(own["status"] == "away" and own["_id"] == alice.headers["X-User-Id"], f"own status: {own}")
    expect(own["connectionStatus"] == "online" and own["message"] == "at lunch", f"own connection status: {own}")
    other = bob.call_api_get("users.getStatus", username="alice")
    expect(other["status"] == "away", f"alice's status seen by bob: {other}")
    expect(await next_status(events, "alice") == 2, "bob sees alice go away")
    expect(alice.users_set_status(message="", status="online")["success"], "back online")
    expect(bob.users_get_presence(username="alice")["presence"] == "online", "online again")
    expect(await next_status(events, "alice") == 1, "bob sees alice back online")
    rt._ws_connection_task.cancel()
    try:
        await rt._ws_connection_task
    except asyncio.CancelledError:
        pass
    expect(await next_status(events, "alice") == 0, "bob sees alice go offline when she disconnects")
    expect(bob.users_get_presence(username="alice")["presence"] == "offline", "offline after disconnect")


def check_rooms(alice, bob):
    ch = alice.channels_create("rest-room")["channel"]
    expect(ch["t"] == "c" and ch["name"] == "rest-room", f"channels.create: {ch}")
    joined = bob.channels_join(ch["_id"], None)
    expect(joined["channel"]["_id"] == ch["_id"], f"channels.join: {joined}")
    info = bob.channels_info(room_id=ch["_id"])
    expect(info["channel"]["name"] == "rest-room", f"channels.info: {info}")
    members = {m["username"] for m in alice.channels_members(room_id=ch["_id"])}
    expect(members == {"alice", "bob"}, f"channels.members: {members}")
    listed = {c["name"] for c in bob.channels_list()}
    expect({"general", "rest-room"} <= listed, f"channels.list: {listed}")
    joined_list = {c["name"] for c in bob.channels_list_joined()}
    expect("rest-room" in joined_list, f"channels.list.joined: {joined_list}")
    rooms = bob.rooms_get()
    expect(ch["_id"] in {r["_id"] for r in rooms["update"]}, "rooms.get lists the joined room")
    subs = bob.subscriptions_get()
    expect(ch["_id"] in {s["rid"] for s in subs["update"]}, "subscriptions.get lists the joined room")

    grp = alice.groups_create("rest-group", members=["bob"])["group"]
    expect(grp["t"] == "p", f"groups.create: {grp}")
    sent = alice.chat_send_message({"_id": "custom-id-1", "rid": grp["_id"], "msg": "in the group"})
    expect(sent["message"]["_id"] == "custom-id-1" and sent["message"]["rid"] == grp["_id"], f"chat.sendMessage: {sent}")
    history = list(bob.groups_history(grp["_id"]))
    expect([m["msg"] for m in history] == ["in the group"], f"groups.history: {history}")

    dm = alice.dm_create("bob")["room"]
    im = alice.call_api_post("im.create", username="bob")["room"]
    expect(dm["_id"] == im["_id"] == "".join(sorted([alice.headers["X-User-Id"], bob.headers["X-User-Id"]])), f"dm/im.create: {dm} {im}")
    to_dm = alice.chat_post_message("hi bob", channel="@bob")
    expect(to_dm["message"]["rid"] == dm["_id"], f"postMessage to @bob: {to_dm}")
    expect([m["msg"] for m in bob.dm_history(dm["_id"])] == ["hi bob"], "dm.history")
    im_hist = bob.call_api_get("im.history", roomId=dm["_id"])
    expect([m["msg"] for m in im_hist["messages"]] == ["hi bob"], f"im.history: {im_hist}")

    post = alice.chat_post_message("hello", room_id=ch["_id"])
    expect(post["channel"] == ch["_id"] and post["message"]["msg"] == "hello", f"chat.postMessage: {post}")
    mid = post["message"]["_id"]
    upd = alice.chat_update(ch["_id"], mid, "hello, edited")
    expect(upd["message"]["msg"] == "hello, edited", f"chat.update: {upd}")
    # Bob's join left Rocket.Chat's "uj" system message in the room; user messages have no `t`.
    said = lambda room: [m["msg"] for m in bob.channels_history(room) if not m.get("t")]
    expect(said(ch["_id"]) == ["hello, edited"], "edit visible in history")
    expect([m["t"] for m in bob.channels_history(ch["_id"]) if m.get("t")] == ["uj"], "the join's system message")
    gone = alice.chat_delete(ch["_id"], mid)
    expect(gone["_id"] == mid, f"chat.delete: {gone}")
    expect(said(ch["_id"]) == [], "deleted message gone from history")
    left = bob.channels_leave(ch["_id"])
    expect(left["success"], f"channels.leave: {left}")
    return ch


def check_paging(alice):
    room = alice.channels_create("paging")["channel"]
    sent = []
    for i in range(250):
        sent.append(alice.chat_post_message(f"page message {i}", room_id=room["_id"])["message"]["_id"])
    got = list(alice.channels_history(room["_id"], count=100))
    ids = [m["_id"] for m in got]
    expect(len(ids) == 250 and len(set(ids)) == 250, f"250 distinct messages, got {len(ids)} ({len(set(ids))} distinct)")
    expect(ids == list(reversed(sent)), "history pages come newest first, every message once")
    ts = [m["ts"] for m in got]
    expect(ts == sorted(ts, reverse=True), "timestamps descend")


async def check_live(url, ws_url, alice):
    carol_rest = Rest(server_url=url)
    carol_rest.users_register(email="carol@example.org", name="Carol", password="carol-pw", username="carol")
    carol = Realtime()
    await asyncio.wait_for(carol.start(ws_url, "carol", "carol-pw"), WAIT)
    got = asyncio.get_running_loop().create_future()

    def on_message(channel_id, sender_id, msg_id, thread_id, msg, qualifier, unread, repeated):
        if msg == "posted over REST" and not got.done():
            got.set_result((channel_id, sender_id, msg_id))

    await carol.subscribe_to_channel_messages("GENERAL", on_message)
    await asyncio.wait_for(carol.get_channels(), WAIT)  # the subscription is in place after this
    post = await asyncio.to_thread(alice.chat_post_message, "posted over REST", channel="#general")
    channel_id, sender_id, msg_id = await asyncio.wait_for(got, WAIT)
    expect(channel_id == "GENERAL" and sender_id == alice.headers["X-User-Id"], "live message from alice")
    expect(msg_id == post["message"]["_id"], "the live message is the posted one")


def main(url, ws_url):
    anon, alice, bob = setup_users(url)
    check_users(anon, alice, bob)
    check_rooms(alice, bob)
    check_paging(alice)
    asyncio.run(check_live(url, ws_url, alice))
    out = alice.logout()
    expect(out["status"] == "success", f"logout: {out}")
    try:
        alice.me()
        expect(False, "the token still works after logout")
    except Exception as e:  # RocketApiException with status 401
        expect("401" in repr(e) or "logged in" in str(e), f"after logout: {e!r}")
    print("rocketchat_API: register, login, rooms, groups, DMs, chat, status, paging, live: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
