"""Measures the built-in web client in headless Chromium against a real chatd (issue 25, point 6):

- the page's total transfer size, compressed, on a first visit (the browser's own Resource
  Timing `transferSize`: bodies as sent plus headers);
- navigation → login form shown (the Navigation Timing origin to the moment the "Username"
  input exists, observed by a MutationObserver installed before the page's scripts run);
- "Log in" clicked → the room named in the address rendered with its history (a room of
  50 messages; each repetition is a fresh page load with the login forgotten);
- another user's send → the message in the page: the sender's wall clock just before its REST
  request, the page's wall clock when the message's article enters the DOM, and at the next
  animation frame after that (as close to "painted" as a page can observe). Messages are sent
  50 ms apart (far more than each takes), and the page's records are read only at the end, so
  nothing polls the browser while a message is in flight.

chatd runs with one shard pinned to CPU 0; Chromium, chromedriver and this script to CPU 1.

usage: python benches/web/measure.py CHATD_BINARY [--logins 20] [--messages 200]
(with the test virtualenv: target/test-venv/bin/python; needs chromium + chromium-driver)
"""

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "web"))
from harness import Chatd, browser, by_label, button, quit_browser, wait  # noqa: E402

BROWSER_ARGS = tuple(a for a in os.environ.get("CHATD_MEASURE_CHROMIUM_ARGS", "").split() if a)

# Gap between probes, well above the latency measured, so none waits behind another.
PACE_SECS = 0.05

OBSERVE_LOGIN_FORM = """
window.__loginFormAt = null;
new MutationObserver((_, obs) => {
  if (document.getElementById('login-username')) {
    window.__loginFormAt = performance.now();
    obs.disconnect();
  }
}).observe(document, {subtree: true, childList: true});
"""

OBSERVE_MESSAGES = """
window.__seen = {};
const log = document.querySelector('[role="log"]');
new MutationObserver((records) => {
  const now = Date.now();
  for (const r of records) for (const n of r.addedNodes) {
    if (n.nodeType !== 1 || n.tagName !== 'ARTICLE') continue;
    const m = /probe-(\\d+)/.exec(n.textContent);
    if (!m || window.__seen[m[1]]) continue;
    const seen = {dom: now, frame: null};
    window.__seen[m[1]] = seen;
    requestAnimationFrame(() => { seen.frame = Date.now(); });
  }
}).observe(log, {childList: true});
window.__arrived = {};
chatd.ddp.socket.addEventListener('message', (ev) => {
  const m = /probe-(\\d+)/.exec(ev.data);
  if (m && !window.__arrived[m[1]]) window.__arrived[m[1]] = Date.now();
});
"""


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


async def plain_client(server, sender, reader, count):
    """The same probes read by a plain WebSocket DDP client (Python `websockets`): the part of
    the latency that is chatd and the network path, without a browser."""
    import websockets
    out = []
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/websocket") as ws:
        async def until(text):
            while text not in await ws.recv():
                pass
        await ws.send(json.dumps({"msg": "connect", "version": "1", "support": ["1"]}))
        await until("connected")
        await ws.send(json.dumps({"msg": "method", "id": "1", "method": "login", "params": [{"resume": reader[1]}]}))
        await until('"result"')
        await ws.send(json.dumps({"msg": "sub", "id": "2", "name": "stream-room-messages",
                                  "params": ["__my_messages__", False]}))
        await until('"ready"')
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for i in range(count):
            body = json.dumps({"message": {"rid": "GENERAL", "msg": f"plain-{i}"}})
            sent = time.time() * 1000
            conn.request("POST", "/api/v1/chat.sendMessage", body, {
                "Content-Type": "application/json", "X-User-Id": sender[0], "X-Auth-Token": sender[1]})
            conn.getresponse().read()
            await until(f'plain-{i}"')
            out.append(time.time() * 1000 - sent)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chatd")
    ap.add_argument("--logins", type=int, default=20)
    ap.add_argument("--messages", type=int, default=200)
    args = ap.parse_args()

    os.sched_setaffinity(0, {1})
    server = Chatd(args.chatd, shards=1)
    server.start()
    os.system(f"taskset -pc 0 {server.proc.pid} >/dev/null")
    sender = server.user("sender")
    reader = server.user("reader")
    for i in range(50):
        server.post(sender, "GENERAL", f"history message {i} with a little **markdown** and a https://example.com link")
    d = browser(extra_args=BROWSER_ARGS)
    results = {}
    try:
        # 1. transfer size and navigation → login form, first visit (empty cache).
        d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": OBSERVE_LOGIN_FORM})
        d.execute_cdp_cmd("Network.enable", {})
        d.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        form_ms = []
        sizes = []
        for i in range(args.logins):
            d.get(server.url + "/")
            wait(d, lambda d: d.execute_script("return window.__loginFormAt"), "login form")
            form_ms.append(d.execute_script("return window.__loginFormAt"))
            sizes.append(d.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return n.transferSize + performance.getEntriesByType('resource')"
                ".filter(r => !r.name.includes('/api/') && !r.name.includes('/websocket'))"
                ".reduce((s, r) => s + r.transferSize, 0);"))
        results["transfer_bytes"] = statistics.median(sizes)
        results["nav_to_login_form_ms"] = {"p50": statistics.median(form_ms), "max": max(form_ms), "n": len(form_ms)}

        # 2. "Log in" → the room in the address rendered with its 50 messages.
        d.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
        # DevTools' network instrumentation reports every WebSocket frame: off for the timings.
        d.execute_cdp_cmd("Network.disable", {})
        login_ms = []
        for i in range(args.logins):
            d.execute_script("localStorage.clear()")
            d.get(f"{server.url}/?{i}#/room/GENERAL")
            wait(d, lambda d: by_label(d, "Username"), "login form")
            by_label(d, "Username").send_keys("reader")
            by_label(d, "Password").send_keys("reader-pw")
            t = d.execute_async_script("""
                const done = arguments[arguments.length - 1];
                const start = performance.now();
                const check = () => {
                  const log = document.querySelector('[role="log"]');
                  if (log && log.querySelectorAll('article').length >= 50) {
                    requestAnimationFrame(() => done(performance.now() - start));
                  } else {
                    setTimeout(check, 1);
                  }
                };
                [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Log in').click();
                check();
            """)
            login_ms.append(t)
        results["login_to_room_ms"] = {"p50": statistics.median(login_ms), "max": max(login_ms), "n": len(login_ms)}

        # 3. Another user's send → on screen, one message at a time.
        d.set_script_timeout(30)
        wait(d, lambda d: button(d, "Log out"), "logged in")
        d.execute_script(OBSERVE_MESSAGES)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        sent = {}
        for i in range(args.messages):
            body = json.dumps({"message": {"rid": "GENERAL", "msg": f"probe-{i}"}})
            sent[i] = time.time() * 1000
            conn.request("POST", "/api/v1/chat.sendMessage", body, {
                "Content-Type": "application/json", "X-User-Id": sender[0], "X-Auth-Token": sender[1]})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            # Paced, not synchronized: nothing polls the browser while messages are in flight.
            time.sleep(PACE_SECS)
        wait(d, lambda d: d.execute_script(
            "const s = window.__seen[arguments[0]]; return s && s.frame", str(args.messages - 1)), "the last probe")
        seen = d.execute_script("return window.__seen")
        arrivals = d.execute_script("return window.__arrived")
        missing = [i for i in range(args.messages) if str(i) not in seen or not seen[str(i)]["frame"]]
        assert not missing, f"never shown: {missing[:10]}"
        arrived = [arrivals[str(i)] - sent[i] for i in range(args.messages)]
        dom = [seen[str(i)]["dom"] - sent[i] for i in range(args.messages)]
        frame = [seen[str(i)]["frame"] - sent[i] for i in range(args.messages)]
        results["send_to_screen_ms"] = {
            "websocket_frame": {"p50": statistics.median(arrived), "p99": pct(arrived, 99), "n": len(arrived)},
            "dom": {"p50": statistics.median(dom), "p99": pct(dom, 99), "n": len(dom)},
            "next_frame": {"p50": statistics.median(frame), "p99": pct(frame, 99), "n": len(frame)},
        }
        # The reference runs with the browser closed, so neither competes with the other.
        quit_browser(d)
        d = None
        plain = asyncio.run(plain_client(server, sender, reader, args.messages))
        results["send_to_plain_websocket_client_ms"] = {"p50": statistics.median(plain), "p99": pct(plain, 99),
                                                         "n": len(plain)}
    finally:
        if d:
            quit_browser(d)
        server.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
