"""Helpers for the web client's browser tests and measurements: a chatd process on a free port
with its own data directory, users made over REST, and headless Chromium from Debian's packages
(`chromium`, `chromium-driver`) driven by Selenium."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("CHATD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHATD_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_SECS = 20


class Chatd:
    """`chatd serve` as a child process; `kill()` is SIGKILL, `start()` again reuses the port
    and the data directory."""

    def __init__(self, binary, extra=(), shards=2):
        self.binary = binary
        self.extra = list(extra)
        self.shards = shards
        self.dir = tempfile.mkdtemp(prefix="chatd-web-")
        self.proc = None
        self.port = 0
        self.log = []

    def start(self):
        env = dict(os.environ, RUST_LOG="info", CHATD_RATE_LIMITS="off")
        env.pop("PORT", None)
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--shards", str(self.shards), "--data-dir", self.dir,
             "--listen", f"127.0.0.1:{self.port}", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        found = threading.Event()

        def read(stream):
            for line in stream:
                self.log.append(line)
                m = re.search(r"chatd listening.*addr=127\.0\.0\.1:(\d+)", line)
                if m and not found.is_set():
                    self.port = int(m.group(1))
                    found.set()
        threading.Thread(target=read, args=(self.proc.stderr,), daemon=True).start()
        if not found.wait(30):
            self.kill()
            raise RuntimeError("chatd did not start:\n" + "".join(self.log[-30:]))
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- REST -------------------------------------------------------------------------------

    def rest(self, method, endpoint, body=None, auth=None, headers=None):
        """(status, json) of one REST call; `auth` is (userId, token)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/api/v1/{endpoint}", data=data, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("X-User-Id", auth[0])
            req.add_header("X-Auth-Token", auth[1])
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def user(self, username, password=None):
        """Registers (if needed) and logs in; returns (userId, token)."""
        password = password or f"{username}-pw"
        self.rest("POST", "users.register",
                  {"username": username, "pass": password, "email": f"{username}@example.com", "name": username.title()})
        status, body = self.rest("POST", "login", {"user": username, "password": password})
        assert status == 200, (status, body)
        return body["data"]["userId"], body["data"]["authToken"]

    def post(self, auth, rid, text):
        status, body = self.rest("POST", "chat.sendMessage", {"message": {"rid": rid, "msg": text}}, auth=auth)
        assert status == 200, (status, body)
        return body["message"]


def browser(width=1280, height=800, phone=False, extra_args=()):
    """A fresh headless Chromium with its own profile; `phone`: a phone's screen and touch
    (Chromium's device emulation, as its DevTools does it), `width` x `height` CSS pixels."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chatd-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions",
                "--disable-features=Translate,OptimizationHints,MediaRouter",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", *extra_args):
        opts.add_argument(arg)
    if phone:
        opts.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0, "touch": True},
            "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                         "(KHTML, like Gecko) Chrome/156.0 Mobile Safari/537.36",
        })
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_SECS)
    driver.chatd_profile = profile
    return driver


def quit_browser(driver):
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "chatd_profile", ""), ignore_errors=True)


def wait(driver, condition, what, secs=WAIT_SECS):
    """Waits until `condition(driver)` is truthy; fails naming `what`. An element that the page
    replaced while the condition looked at it (a re-render) only means: look again."""
    try:
        return WebDriverWait(driver, secs, poll_frequency=0.05,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
                             ).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out after {secs} s waiting for: {what}") from None


# ---- finding things the way Testing Library does: by role, label and name -------------------

def by_label(driver, label):
    """The input or textarea whose label (or aria-label) is `label`, among those shown."""
    for el in driver.find_elements(By.CSS_SELECTOR, "input, textarea"):
        if not el.is_displayed():
            continue
        if el.get_attribute("aria-label") == label:
            return el
        el_id = el.get_attribute("id")
        if el_id:
            for lab in driver.find_elements(By.CSS_SELECTOR, f'label[for="{el_id}"]'):
                if lab.text.strip() == label:
                    return el
        # A label wrapping the input.
        parent = el.find_elements(By.XPATH, "./ancestor::label[1]")
        if parent and parent[0].text.strip() == label:
            return el
    return None


def button(driver, name):
    """The shown button whose accessible name is `name`."""
    for el in driver.find_elements(By.CSS_SELECTOR, "button"):
        if el.is_displayed() and (el.get_attribute("aria-label") or el.text).strip() == name:
            return el
    return None


def click_button(driver, name):
    el = wait(driver, lambda d: button(d, name), f'button "{name}"')
    el.click()


def type_into(driver, label, text):
    el = wait(driver, lambda d: by_label(d, label), f'textbox "{label}"')
    el.clear()
    el.send_keys(text)
    return el


def rooms_nav(driver):
    navs = [n for n in driver.find_elements(By.CSS_SELECTOR, "nav") if n.get_attribute("aria-label") == "Rooms"]
    return navs[0] if navs else None


def room_entry(driver, name):
    """The link in nav "Rooms" whose accessible name starts with `name`."""
    nav = rooms_nav(driver)
    if not nav:
        return None
    for a in nav.find_elements(By.CSS_SELECTOR, "a"):
        if accessible_name(driver, a).startswith(name + " ") or accessible_name(driver, a) == name:
            return a
    return None


def accessible_name(driver, el):
    """The element's accessible name as Chromium's accessibility tree computes it."""
    return driver.execute_cdp_cmd("Accessibility.getPartialAXTree", {
        "backendNodeId": backend_node_id(driver, el), "fetchRelatives": False,
    })["nodes"][0].get("name", {}).get("value", "")


def backend_node_id(driver, el):
    remote = driver.execute_cdp_cmd("DOM.describeNode", {"objectId": object_id(driver, el)})
    return remote["node"]["backendNodeId"]


def object_id(driver, el):
    driver.execute_script("window.__chatdPick = arguments[0];", el)
    res = driver.execute_cdp_cmd("Runtime.evaluate", {"expression": "window.__chatdPick"})
    return res["result"]["objectId"]


def message_log(driver):
    for el in driver.find_elements(By.CSS_SELECTOR, '[role="log"]'):
        if el.get_attribute("aria-label") == "Messages" and el.is_displayed():
            return el
    return None


def articles(driver):
    log = message_log(driver)
    return log.find_elements(By.CSS_SELECTOR, 'article, [role="article"]') if log else []


def article_with(driver, text):
    for a in articles(driver):
        if text in a.text:
            return a
    return None


def alert_text(driver):
    texts = [el.text for el in driver.find_elements(By.CSS_SELECTOR, '[role="alert"]') if el.is_displayed()]
    return " ".join(texts)
