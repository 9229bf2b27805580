"""The built-in web client in real headless Chromium (Debian's chromium + chromium-driver),
against a real chatd: registration and login, two browsers chatting live, a third user's REST
message, typing, edit and delete, unread badges, rooms and direct messages, presence, XSS
attempts, history paging, reload, reconnection after chatd is killed, logout, a phone's width
and dark mode, a logout while chatd is down. Screenshots of the main views go to the artifacts
directory.

usage: browser_test.py CHATD_BINARY ARTIFACTS_DIR
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import (  # noqa: E402
    By, Chatd, accessible_name, alert_text, article_with, articles, browser, button, by_label,
    click_button, message_log, quit_browser, room_entry, rooms_nav, type_into, wait,
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


def step(name):
    print(f"== {name}", flush=True)


def login(d, url, username, password):
    d.get(url + "/")
    wait(d, lambda d: by_label(d, "Username"), "the login form")
    type_into(d, "Username", username)
    type_into(d, "Password", password)
    click_button(d, "Log in")
    wait(d, rooms_nav, f"nav Rooms after {username} logs in")


def open_room(d, name):
    wait(d, lambda d: room_entry(d, name), f'room "{name}" in nav Rooms').click()
    wait(d, lambda d: d.find_element(By.ID, "room-title").text == name, f'room "{name}" open')
    wait(d, message_log, "log Messages")


def send(d, text):
    box = wait(d, lambda d: by_label(d, "Message"), 'textbox "Message"')
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def badge(d, name):
    entry = room_entry(d, name)
    if not entry:
        return None
    found = [b.get_attribute("aria-label") for b in entry.find_elements(By.CSS_SELECTOR, ".badge")]
    return found[0] if found else None


def presence_of(d, name):
    entry = room_entry(d, name)
    if not entry:
        return None
    found = entry.find_elements(By.CSS_SELECTOR, '[role="img"].presence')
    return found[0].get_attribute("aria-label") if found else None


def typing_notice(d):
    for el in d.find_elements(By.CSS_SELECTOR, '[aria-live="polite"]'):
        if el.text.strip():
            return el.text.strip()
    return ""


def user_articles(d):
    return [a for a in articles(d) if "system" not in (a.get_attribute("class") or "")]


def main(binary, artifacts):
    os.makedirs(artifacts, exist_ok=True)
    server = Chatd(binary).start()
    url = server.url
    drivers = []
    try:
        carol = server.user("carol")
        server.user("bob")
        general = "GENERAL"

        step("registration through the form")
        a = browser()
        drivers.append(a)
        a.get(url + "/")
        wait(a, lambda d: by_label(d, "Username") and button(d, "Log in"), "login form")
        a.save_screenshot(os.path.join(artifacts, "login.png"))
        click_button(a, "Create an account")
        type_into(a, "Username", "alice")
        type_into(a, "Email", "alice@example.com")
        type_into(a, "Name", "Alice Liddell")
        type_into(a, "Password", "alice-pw")
        click_button(a, "Register")
        wait(a, rooms_nav, "nav Rooms after registering")
        open_room(a, "general")

        step("a wrong password is an alert")
        b = browser()
        drivers.append(b)
        b.get(url + "/")
        wait(b, lambda d: by_label(d, "Username"), "login form")
        type_into(b, "Username", "bob")
        type_into(b, "Password", "not-bobs")
        click_button(b, "Log in")
        wait(b, lambda d: "Wrong username or password" in alert_text(d), "role=alert with the failure")
        login(b, url, "bob", "bob-pw")
        open_room(b, "general")

        step("two browsers chat in real time; Enter sends, Shift+Enter is a new line")
        send(a, "hello bob")
        got = wait(b, lambda d: article_with(d, "hello bob"), "alice's message at bob")
        assert "alice" in got.text, got.text
        assert got.aria_role == "article", got.aria_role
        log = message_log(b)
        assert log.aria_role == "log" and log.accessible_name == "Messages", (log.aria_role, log.accessible_name)
        nav = rooms_nav(b)
        assert nav.aria_role == "navigation" and nav.accessible_name == "Rooms"
        box = wait(b, lambda d: by_label(d, "Message"), 'textbox "Message"')
        assert box.aria_role == "textbox"
        box.send_keys("first line")
        wait(a, lambda d: typing_notice(d) == "bob is typing", '"bob is typing" at alice')
        box.send_keys(Keys.SHIFT, Keys.ENTER)
        box.send_keys("second line")
        box.send_keys(Keys.ENTER)
        got = wait(a, lambda d: article_with(d, "second line"), "bob's two-line message at alice")
        body = got.find_element(By.CSS_SELECTOR, ".body")
        assert body.find_elements(By.CSS_SELECTOR, "br"), body.get_attribute("innerHTML")
        assert "first line\nsecond line" in body.text, body.text
        wait(a, lambda d: typing_notice(d) == "", "the typing notice ends with the message")
        a.save_screenshot(os.path.join(artifacts, "room.png"))

        step("a third user's REST message appears live in both")
        server.post(carol, general, "carol says hi over REST")
        for d in (a, b):
            got = wait(d, lambda d: article_with(d, "carol says hi over REST"), "carol's REST message")
            assert "carol" in got.text

        step("edit and delete one's own message, seen live by the other")
        mine = article_with(a, "hello bob")
        ActionChains(a).move_to_element(mine).perform()
        mine.find_element(By.XPATH, ".//button[normalize-space()='Edit']").click()
        editor = wait(a, lambda d: by_label(d, "Edit message"), 'textbox "Edit message"')
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys("hello bob, edited")
        editor.send_keys(Keys.ENTER)
        got = wait(b, lambda d: article_with(d, "hello bob, edited"), "the edit at bob")
        assert "(edited)" in got.text, got.text
        assert not article_with(b, "hello bob\n"), "the old text is gone"
        assert not [x for x in articles(b) if "Edit" in x.text and "hello bob" in x.text], "bob may not edit alice's"
        mine = article_with(a, "hello bob, edited")
        ActionChains(a).move_to_element(mine).perform()
        mine.find_element(By.XPATH, ".//button[normalize-space()='Delete']").click()
        mine.find_element(By.XPATH, ".//button[normalize-space()='Yes, delete']").click()
        wait(b, lambda d: not article_with(d, "hello bob, edited"), "the deletion at bob")
        wait(a, lambda d: not article_with(d, "hello bob, edited"), "the deletion at alice")

        step("hostile message text renders as text")
        payloads = [
            '<img src=x onerror="window.__xss=1">',
            "<script>window.__xss=2</script>",
            "[click me](javascript:window.__xss=3)",
            '<a href="javascript:window.__xss=4">html link</a>',
            "**bold** _italic_ `code` and https://example.com/safe",
        ]
        for p in payloads:
            server.post(carol, general, p)
        wait(a, lambda d: article_with(d, "bold italic code"), "the markdown message")
        wait(a, lambda d: article_with(d, "window.__xss=2"), "the script payload")
        assert a.execute_script("return window.__xss") is None, "a payload ran"
        bodies = a.find_elements(By.CSS_SELECTOR, '[role="log"] .body')
        assert not [el for el in a.find_elements(By.CSS_SELECTOR, '[role="log"] .body img')], "an <img> was rendered"
        assert not a.find_elements(By.CSS_SELECTOR, '[role="log"] .body script')
        hrefs = [el.get_attribute("href") or "" for el in a.find_elements(By.CSS_SELECTOR, '[role="log"] .body a')]
        assert not [h for h in hrefs if h.lower().startswith("javascript")], hrefs
        assert article_with(a, '<img src=x onerror="window.__xss=1">'), "the raw HTML is shown as text"
        md = article_with(a, "bold italic code")
        assert md.find_elements(By.CSS_SELECTOR, "strong") and md.find_elements(By.CSS_SELECTOR, "em")
        assert md.find_elements(By.CSS_SELECTOR, "code")
        link = md.find_element(By.CSS_SELECTOR, "a")
        assert link.get_attribute("href") == "https://example.com/safe", link.get_attribute("href")
        assert link.get_attribute("rel") == "noopener noreferrer", link.get_attribute("rel")
        assert link.get_attribute("target") == "_blank"
        del bodies

        step("create a private room; unread badges count what arrives elsewhere")
        click_button(a, "Create room")
        dialog = wait(a, lambda d: d.find_element(By.CSS_SELECTOR, "dialog[open]"), "the Create room dialog")
        assert dialog.aria_role == "dialog" and dialog.accessible_name == "Create room", dialog.aria_role
        assert a.find_element(By.XPATH, "//label[normalize-space()='Private']/input").aria_role == "checkbox"
        type_into(a, "Name", "plans")
        a.find_element(By.XPATH, "//label[normalize-space()='Private']/input").click()
        click_button(a, "Create")
        wait(a, lambda d: d.find_element(By.ID, "room-title").text == "plans", "the new room opens")
        status, rooms = server.rest("GET", "rooms.get", auth=a_auth(a))
        assert [r for r in rooms["update"] if r.get("name") == "plans" and r["t"] == "p"], rooms
        unread_one = server.post(carol, general, "unread one")
        server.post(carol, general, "unread two")
        wait(a, lambda d: badge(d, "general") == "2 unread", 'badge "2 unread" on general')
        assert accessible_name(a, room_entry(a, "general")).startswith("general"), "entry names start with the room"
        open_room(a, "general")
        wait(a, lambda d: badge(d, "general") is None, "the badge clears when the room is read")

        step("a direct message with a user found by name, with presence")
        click_button(a, "New direct message")
        type_into(a, "Username", "bob")
        click_button(a, "Start")
        wait(a, lambda d: d.find_element(By.ID, "room-title").text == "bob", "the DM opens")
        wait(a, lambda d: presence_of(d, "bob") == "online", "bob shown online")
        dot = room_entry(a, "bob").find_element(By.CSS_SELECTOR, ".presence")
        assert dot.accessible_name == "online", dot.accessible_name
        send(a, "psst bob")
        wait(b, lambda d: badge(d, "alice") == "1 unread", 'badge "1 unread" on alice at bob')
        open_room(b, "alice")
        wait(b, lambda d: article_with(d, "psst bob"), "the DM at bob")
        send(b, "hi alice! what's up?")
        wait(a, lambda d: article_with(d, "what's up?"), "bob's answer at alice")
        send(a, "the **release** is ready: `v1.2`, notes at https://example.com/notes")
        wait(b, lambda d: article_with(d, "the release is ready"), "alice's markdown at bob")
        server.post(carol, general, "standup in 5 minutes")
        wait(a, lambda d: badge(d, "general") == "1 unread", 'badge "1 unread" on general')
        box = wait(b, lambda d: by_label(d, "Message"), 'textbox "Message"')
        box.send_keys("sounds good")
        wait(a, lambda d: typing_notice(d) == "bob is typing", '"bob is typing" in the DM')
        a.save_screenshot(os.path.join(artifacts, "readme.png"))
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        wait(a, lambda d: typing_notice(d) == "", "bob stops typing when the box is emptied")

        step("history loads older pages as one scrolls up")
        status, body = server.rest("POST", "channels.create", {"name": "history", "members": ["alice"]}, auth=carol)
        assert status == 200, body
        rid = body["channel"]["_id"]
        for i in range(120):
            server.post(carol, rid, f"history {i:03}")
        open_room(a, "history")
        wait(a, lambda d: article_with(d, "history 119"), "the newest page")
        assert not article_with(a, "history 000"), "the whole history at once"
        first_page = len(user_articles(a))
        assert first_page < 120, first_page
        for _ in range(20):
            if article_with(a, "history 000"):
                break
            count = len(user_articles(a))
            a.execute_script("arguments[0].scrollTop = 0", message_log(a))
            wait(a, lambda d: len(user_articles(d)) > count or article_with(d, "history 000"), "an older page")
        texts = [x.find_element(By.CSS_SELECTOR, ".body").text for x in user_articles(a)]
        assert texts == [f"history {i:03}" for i in range(120)], texts[:5]
        assert a.find_elements(By.CSS_SELECTOR, ".start"), "the start of the room is shown"

        step("a room opened again shows what changed while another room was open")
        status, body = server.rest("POST", "chat.delete", {"roomId": general, "msgId": unread_one["_id"]}, auth=carol)
        assert status == 200, body
        server.post(carol, general, "while alice read history")
        open_room(a, "general")
        wait(a, lambda d: article_with(d, "while alice read history"), "the message sent meanwhile")
        wait(a, lambda d: not article_with(d, "unread one"), "the message deleted while another room was open")
        open_room(a, "history")

        step("a reload keeps the session and the open room")
        token = a.execute_script("return localStorage.getItem('Meteor.loginToken')")
        assert token
        a.refresh()
        wait(a, rooms_nav, "nav Rooms after a reload, without the login form")
        wait(a, lambda d: d.find_element(By.ID, "room-title").text == "history", "the room after a reload")
        assert not by_label(a, "Password")

        step("chatd is killed: the page says so, reconnects, resumes and fetches what it missed")
        open_room(a, "general")
        server.kill()
        wait(a, lambda d: "Connection lost" in " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, '[role="status"]')),
             "the connection-lost notice")
        # The page cannot reach chatd until we let it: what is sent meanwhile is missed live.
        a.execute_cdp_cmd("Network.enable", {})
        a.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        server.start()
        # A retry now fails (chatd is up, the page cannot reach it): proof that what follows is
        # missed live and has to be fetched after the reconnect.
        tries = a.execute_script("return chatd.ddp.attempt")
        click_button(a, "Reconnect now")
        wait(a, lambda d: d.execute_script("return chatd.ddp.attempt") > tries, "a failed reconnect while offline")
        assert a.execute_script("return chatd.state.connection") != "connected"
        server.post(carol, general, "sent while alice was away")
        assert not article_with(a, "sent while alice was away")
        a.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        click_button(a, "Reconnect now")
        wait(a, lambda d: article_with(d, "sent while alice was away"), "the missed message after reconnecting")
        wait(a, lambda d: not d.find_elements(By.CSS_SELECTOR, ".banner"), "the notice goes away")
        server.post(carol, general, "live again")
        wait(a, lambda d: article_with(d, "live again"), "live messages after the reconnect")

        step("logout revokes the token; others see the user go offline")
        b_token = b.execute_script("return localStorage.getItem('Meteor.loginToken')")
        b_uid = b.execute_script("return localStorage.getItem('Meteor.userId')")
        status, _ = server.rest("GET", "me", auth=(b_uid, b_token))
        assert status == 200, status
        wait(b, lambda d: button(d, "Log out"), "Log out").click()
        wait(b, lambda d: by_label(d, "Password"), "the login form after logout")
        assert b.execute_script("return localStorage.getItem('Meteor.loginToken')") is None
        status, _ = server.rest("GET", "me", auth=(b_uid, b_token))
        assert status == 401, f"the old token still works: {status}"
        wait(a, lambda d: presence_of(d, "bob") == "offline", "bob shown offline at alice")

        step("dark mode follows the system's preference")
        a.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        bg = a.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert bg in ("rgb(23, 25, 28)",), bg
        a.save_screenshot(os.path.join(artifacts, "room-dark.png"))

        step("a phone's width: one pane at a time")
        m = browser(width=390, height=844, phone=True)
        drivers.append(m)
        login(m, url, "carol", "carol-pw")
        m.save_screenshot(os.path.join(artifacts, "phone-rooms.png"))
        open_room(m, "general")
        assert not rooms_nav(m).is_displayed(), "the room list hides while a room is open"
        send(m, "from my phone")
        wait(m, lambda d: article_with(d, "from my phone"), "the phone's own message")
        wait(a, lambda d: article_with(d, "from my phone"), "the phone's message at alice")
        m.save_screenshot(os.path.join(artifacts, "phone-room.png"))
        width = m.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at a phone's width ({width}px)"
        m.find_element(By.CSS_SELECTOR, 'a[aria-label="Back to rooms"]').click()
        wait(m, lambda d: rooms_nav(d).is_displayed(), "back to the room list")

        step("a logout that cannot reach chatd revokes the token when the page next starts")
        alice = a_auth(a)
        server.kill()
        wait(a, lambda d: "Connection lost" in " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, '[role="status"]')),
             "the connection-lost notice")
        click_button(a, "Log out")
        wait(a, lambda d: by_label(d, "Password"), "the login form after logging out offline")
        server.start()
        assert server.rest("GET", "me", auth=alice)[0] == 200, "the token was revoked before chatd came back"
        a.refresh()
        wait(a, lambda d: server.rest("GET", "me", auth=alice)[0] == 401, "the token revoked after the reload")
        assert a.execute_script("return localStorage.getItem('chatd.pendingLogout')") is None

        for d in drivers:
            # Expected: the wrong password's 401, and the socket and the logout failing while
            # chatd was down.
            errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
                      and "/websocket" not in e.get("message", "")
                      and "/api/v1/login - Failed to load resource" not in e.get("message", "")
                      and "net::ERR_CONNECTION_REFUSED" not in e.get("message", "")]
            assert not errors, errors
        print("ok")
    except BaseException:
        for i, d in enumerate(drivers):
            d.save_screenshot(os.path.join(artifacts, f"failure-{i}.png"))
            print(f"-- browser {i} state:", d.execute_script(
                "const s = window.chatd && window.chatd.state; return s && JSON.stringify("
                "{phase: s.phase, connection: s.connection, openRid: s.openRid, error: s.error,"
                " rooms: [...s.rooms.values()].map(e => [e.room && e.room._id, e.sub && e.sub.name, e.sub && e.sub.unread])})"))
            print(f"-- browser {i} console:", d.get_log("browser"))
        raise
    finally:
        for d in drivers:
            quit_browser(d)
        server.close()


def a_auth(driver):
    return (driver.execute_script("return localStorage.getItem('Meteor.userId')"),
            driver.execute_script("return localStorage.getItem('Meteor.loginToken')"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
