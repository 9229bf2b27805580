"""Logs in to chatd as users imported from a Rocket.Chat database, with the published clients,
unmodified: `rocketchat_API` (REST) and `rocketchat-async` (realtime) with the user's old
password, and `rocketchat-async` with a resume token that Rocket.Chat issued before the move.

Usage: imported_login.py HTTP_URL WS_URL USERNAME PASSWORD RESUME_TOKEN
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


async def realtime(ws_url, username, password, token, uid):
    rt = Realtime()
    await asyncio.wait_for(rt.start(ws_url, username, password), WAIT)
    expect(rt.user_id == uid, f"realtime password login as {username}")
    channels = await asyncio.wait_for(rt.get_channels(), WAIT)
    expect(any(c[0] == "GENERAL" for c in channels), f"imported rooms listed: {channels}")
    again = Realtime()
    await asyncio.wait_for(again.resume(ws_url, username, token), WAIT)
    expect(again.user_id == uid, "an old Rocket.Chat resume token logs in")


def main(http_url, ws_url, username, password, token):
    rest = Rest(username, password, server_url=http_url)
    uid = rest.headers.get("X-User-Id")
    expect(uid, f"REST login as {username} with the old password")
    expect(rest.me()["username"] == username, "me")
    asyncio.run(realtime(ws_url, username, password, token, uid))
    print("imported users: REST login, realtime login, old resume token: ok")


if __name__ == "__main__":
    main(*sys.argv[1:6])
