"""Drives chatd with the published `rocketchat-async` client, unmodified.

Usage: realtime_async.py WS_URL ALICE_PASSWORD BOB_PASSWORD ALICE_TOKEN
(the users `alice` and `bob` exist; the token is one of alice's resume tokens).
Exits non-zero with a message on the first expectation that fails.
"""
import asyncio
import sys

from rocketchat_async import RocketChat

WAIT = 10.0


class Inbox:
    """Collects (sender_id, msg_id, text) from a channel-message callback."""

    def __init__(self):
        self.items = []
        self.changed = asyncio.Event()

    def callback(self, channel_id, sender_id, msg_id, thread_id, msg, qualifier, unread, repeated):
        self.items.append((channel_id, sender_id, msg_id, msg))
        self.changed.set()

    async def wait_for(self, text):
        async def scan():
            while not any(item[3] == text for item in self.items):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(scan(), WAIT)
        return [item for item in self.items if item[3] == text]


def expect(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


async def main(url, alice_pw, bob_pw, alice_token):
    alice = RocketChat()
    await asyncio.wait_for(alice.start(url, "alice", alice_pw), WAIT)
    bob = RocketChat()
    await asyncio.wait_for(bob.start(url, "bob", bob_pw), WAIT)
    expect(alice.user_id and bob.user_id and alice.user_id != bob.user_id, "both logged in with distinct ids")

    channels = await asyncio.wait_for(alice.get_channels(), WAIT)
    expect(("GENERAL", "c") in channels, f"alice's rooms list GENERAL as a channel: {channels}")

    alice_inbox, bob_inbox = Inbox(), Inbox()
    await bob.subscribe_to_channel_messages("GENERAL", bob_inbox.callback)
    await alice.subscribe_to_channel_messages("GENERAL", alice_inbox.callback)
    # The client does not wait for `ready`; a method round trip on each connection makes sure
    # the subscription was processed before anything is sent.
    await asyncio.wait_for(bob.get_channels(), WAIT)
    await asyncio.wait_for(alice.get_channels(), WAIT)

    await asyncio.wait_for(alice.send_message("hello from alice", "GENERAL"), WAIT)
    got = await bob_inbox.wait_for("hello from alice")
    expect(got[0][0] == "GENERAL" and got[0][1] == alice.user_id, f"bob got alice's message: {got}")

    await asyncio.wait_for(bob.send_message("hello from bob", "GENERAL"), WAIT)
    got = await alice_inbox.wait_for("hello from bob")
    expect(got[0][1] == bob.user_id, f"alice got bob's message: {got}")

    # A third message after both: anything duplicated would have arrived by then.
    await asyncio.wait_for(alice.send_message("last", "GENERAL"), WAIT)
    await bob_inbox.wait_for("last")
    ids = [item[2] for item in bob_inbox.items]
    expect(len(ids) == len(set(ids)) == 3, f"bob received each message exactly once: {bob_inbox.items}")

    # Typing: alice's send_typing_event reaches bob, who listens through the client's own
    # subscription machinery (the package has no typing helper for receiving).
    typing = asyncio.get_running_loop().create_future()

    def on_activity(msg):
        fields = msg["fields"]
        if fields["eventName"] == "GENERAL/user-activity" and not typing.done():
            typing.set_result(fields["args"])

    sub = {"msg": "sub", "id": "typing-watch", "name": "stream-notify-room", "params": ["GENERAL/user-activity", False]}
    await bob._dispatcher.create_subscription(sub, "typing-watch", on_activity)
    await asyncio.wait_for(bob.get_channels(), WAIT)
    await asyncio.wait_for(alice.send_typing_event("GENERAL"), WAIT)
    args = await asyncio.wait_for(typing, WAIT)
    expect(args[0] == "alice" and args[1] == ["user-typing"], f"bob sees alice typing: {args}")

    # Resume with a token issued elsewhere.
    again = RocketChat()
    await asyncio.wait_for(again.resume(url, "alice", alice_token), WAIT)
    expect(again.user_id == alice.user_id, "resume token logs in as alice")
    print("rocketchat-async: login, rooms, send, live receive, typing, resume: ok")


if __name__ == "__main__":
    url, alice_pw, bob_pw, token = sys.argv[1:5]
    asyncio.run(main(url, alice_pw, bob_pw, token))
    # The client's reader tasks keep the loop's sockets open; the process exits here.
