#!/usr/bin/env python3
"""The page for people, as a person sees it: Debian's chromium, headless, driven by
chromium-driver through Selenium, loads http://.../ and https://.../ from kv_server
--websocket (https with a certificate made at start-up, which this browser is told to
accept), types three messages (UTF-8 typed at the keyboard, a 100 KB one pasted in, a short
one sent with the button), and the page must show each echoed, unchanged, with its size and
round-trip time, every entry inside the window. A screenshot of each run is kept
(SCREENSHOTS, default target/browser) and checked: a PNG of the window's size.

Needs chromium, chromium-driver and the selenium package; a missing one is a failure, not
a skip. KV_SERVER names the binary (default: the debug build)."""

import os
import re
import shutil
import struct
import sys
import tempfile

from kv_process import start_server

SCREENSHOTS = os.environ.get("SCREENSHOTS", "target/browser")
WIDTH, HEIGHT = 1000, 900

for tool in ("chromium", "chromedriver"):
    if shutil.which(tool) is None:
        sys.exit(f"browser_checks.py: {tool} is missing: apt-get install chromium chromium-driver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    sys.exit("browser_checks.py: selenium is missing: python3 -m pip install selenium")


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--ignore-certificate-errors",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def png_size(png):
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "a PNG"
    return struct.unpack(">II", png[16:24])


def check(driver, url, name):
    driver.get(url)
    wait = WebDriverWait(driver, 20)
    status = driver.find_element(By.ID, "status")
    wait.until(lambda _: status.get_attribute("class") == "open")
    scheme = "wss" if url.startswith("https") else "ws"
    assert status.text.startswith(f"Connected to {scheme}://127.0.0.1:"), status.text

    typed = "Grüße, κόσμε ✓ Привет"
    large = "".join(chr(ord("a") + n % 26) for n in range(100_000))
    box = driver.find_element(By.ID, "message")
    box.send_keys(typed)
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: d.execute_script("return document.body.dataset.echoed") == "1")
    # Pasted rather than typed: 100,000 key presses would test the driver, not the page.
    driver.execute_script("arguments[0].value = arguments[1]", box, large)
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: d.execute_script("return document.body.dataset.echoed") == "2")
    box.send_keys("the third, by the button")
    driver.find_element(By.ID, "send").click()
    wait.until(lambda d: d.execute_script("return document.body.dataset.echoed") == "3")

    entries = driver.find_elements(By.CSS_SELECTOR, "#log li.echo")
    assert len(entries) == 3, len(entries)
    # Newest first, as the page shows them.
    for entry, sent in zip(entries, ["the third, by the button", large, typed]):
        meta = entry.find_element(By.CLASS_NAME, "meta").text
        size = len(sent.encode("utf-8"))
        assert re.fullmatch(rf"Echoed {size} bytes in \d+\.\d ms", meta), meta
        shown = entry.find_element(By.CLASS_NAME, "text").text
        expected = sent if len(sent) <= 200 else sent[:200] + "\u2026"
        assert shown == expected, (shown[:80], expected[:80])
        assert not entry.find_elements(By.CLASS_NAME, "mismatch"), "the page saw a difference"
        assert entry.is_displayed()
        inside = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return r.top >= 0 && r.bottom <= window.innerHeight && r.height > 0",
            entry,
        )
        assert inside, f"{meta}: outside the window"
    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, f"{name}.png")
    png = driver.get_screenshot_as_png()
    open(path, "wb").write(png)
    width, height = png_size(png)
    assert width > WIDTH * 0.9 and height > HEIGHT * 0.7, (width, height)
    print(f"browser_checks.py: {url}: 3 messages echoed and shown; screenshot {path}")


def main():
    work = tempfile.mkdtemp()
    servers = []
    driver = None
    try:
        plain, plain_port = start_server(os.path.join(work, "ws.log"))
        secure, secure_port = start_server(os.path.join(work, "wss.log"), "--tls-self-signed")
        servers = [plain, secure]
        driver = browser(os.path.join(work, "profile"))
        check(driver, f"http://127.0.0.1:{plain_port}/", "page-ws")
        check(driver, f"https://127.0.0.1:{secure_port}/", "page-wss")
    finally:
        if driver is not None:
            driver.quit()
        for server in servers:
            server.terminate()
            server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


main()
