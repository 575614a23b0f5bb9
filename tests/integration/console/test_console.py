#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Headless Chromium test of the web console: two stand-in nodes (http_fake_node,
# fixed status documents), checks the states and colours shown, the progress bar,
# the timeline, and that "swap" -> confirm posts the action with the token.
# Saves screenshots under --out. Standalone:
#   tests/integration/console/test_console.py --fake-node BUILD/tests/unit/api/http_fake_node \
#       --console userspace/api/console --testdata tests/unit/api/testdata --out BUILD/console-test
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

TOKEN = "console-test-token-0123456789"
# CSS colours of style.css, as Chromium reports computed backgrounds.
COLOURS = {
    "green": (30, 158, 74),
    "orange": (224, 123, 0),
    "magenta": (176, 36, 156),
    "red": (208, 49, 45),
}


def rgb(css):
    """'rgb(1, 2, 3)' or 'rgba(1, 2, 3, 1)' -> (1, 2, 3); None for anything translucent or odd."""
    inner = css[css.find("(") + 1:css.rfind(")")]
    parts = [p.strip() for p in inner.split(",")]
    if len(parts) == 4 and float(parts[3]) != 1:
        return None
    try:
        return tuple(int(p) for p in parts[:3])
    except ValueError:
        return None

failures = []


def check(cond, what, expected=None, got=None):
    if cond:
        print(f"ok - {what}")
    else:
        detail = f" (expected {expected!r}, got {got!r})" if expected is not None or got is not None else ""
        print(f"FAIL - {what}{detail}")
        failures.append(what)


def start_node(args, tmp, name, extra):
    port_file = os.path.join(tmp, f"{name}.port")
    log = open(os.path.join(tmp, f"{name}.log"), "w")
    cmd = [args.fake_node, "--status", os.path.join(args.testdata, f"{name}-status.json"),
           "--listen", "127.0.0.1", "--port", "0", "--port-file", port_file,
           "--token-file", os.path.join(tmp, "token"), "--console", args.console,
           "--actions-log", os.path.join(tmp, f"{name}-actions.jsonl")] + extra
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        if os.path.exists(port_file):
            return proc, int(open(port_file).read())
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not start: see {log.name}")


def actions(tmp, name):
    path = os.path.join(tmp, f"{name}-actions.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def row(driver, node, module):
    return driver.find_element(By.CSS_SELECTOR, f'.mrow[data-node="{node}"][data-module="{module}"]')


def badge_of(driver, node, module):
    b = row(driver, node, module).find_element(By.CSS_SELECTOR, ".state")
    return b.text, b.get_attribute("data-state-class"), b.value_of_css_property("background-color")


def run(args, tmp, driver):
    procs = []
    try:
        p2, port2 = start_node(args, tmp, "node2", [])
        procs.append(p2)
        url2 = f"http://127.0.0.1:{port2}"
        p1, port1 = start_node(args, tmp, "node1", ["--cluster-nodes", f"node2={url2}"])
        procs.append(p1)
        url1 = f"http://127.0.0.1:{port1}"

        driver.get(url1 + "/")
        wait = WebDriverWait(driver, 20)
        try:
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.mrow[data-node="node2"][data-module="pgsql"]'))
        except TimeoutException:
            check(False, "both nodes' modules shown within 20 s")
            driver.save_screenshot(os.path.join(args.out, "console-timeout.png"))
            for entry in driver.get_log("browser"):
                print("browser:", entry.get("level"), entry.get("message"))
            return
        cards = driver.find_elements(By.CSS_SELECTOR, ".node")
        check(len(cards) == 2, "two node cards", 2, len(cards))

        expected = [
            ("node1", "pgsql", "PRIM/running", "green"),
            ("node2", "pgsql", "SECOND/resyncing", "orange"),
            ("node1", "web", "UP", "green"),
            ("node2", "web", "WAIT", "magenta"),
            ("node1", "batch", "STOP", "red"),
            ("node2", "batch", "ALONE/running", "magenta"),
        ]
        for node, module, text, cls in expected:
            got_text, got_cls, got_bg = badge_of(driver, node, module)
            check(got_text == text, f"{module} on {node} shows {text}", text, got_text)
            check(got_cls == cls, f"{module} on {node} is {cls}", cls, got_cls)
            check(rgb(got_bg) == COLOURS[cls], f"{module} on {node} background is {cls}", COLOURS[cls], got_bg)

        bar = row(driver, "node2", "pgsql").find_elements(By.CSS_SELECTOR, ".progress > div")
        check(len(bar) == 1, "resyncing SECOND has a progress bar", 1, len(bar))
        if bar:
            width = driver.execute_script("return arguments[0].style.width", bar[0])
            check(width == "42%", "progress bar at 42%", "42%", width)
        check(not row(driver, "node1", "pgsql").find_elements(By.CSS_SELECTOR, ".progress"),
              "no progress bar on the PRIM")

        tl = driver.find_elements(By.CSS_SELECTOR, "#timeline tr")
        check(len(tl) == 8, "timeline has every transition of both nodes", 8, len(tl))
        if tl:
            first = tl[0].text
            check("node2" in first and "checker http failed" in first, "timeline newest first", "node2 ... checker http failed", first)

        # Without a token the dialog refuses to confirm, and nothing is posted.
        sw = row(driver, "node1", "pgsql").find_element(By.CSS_SELECTOR, 'button[data-action="swap"]')
        sw.click()
        dlg = driver.find_element(By.ID, "confirm")
        wait.until(lambda d: dlg.is_displayed())
        ok_btn = driver.find_element(By.ID, "confirm-ok")
        check(not ok_btn.is_enabled(), "confirm disabled without a token")
        driver.find_element(By.ID, "confirm-cancel").click()
        wait.until(lambda d: not dlg.is_displayed())

        # With the token: swap, confirm, the action reaches node1's backend.
        tok = driver.find_element(By.ID, "token")
        tok.clear()
        tok.send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        saved = driver.execute_script("return sessionStorage.getItem('sk.token')")
        check(saved == TOKEN, "token kept in sessionStorage", TOKEN, saved)
        row(driver, "node1", "pgsql").find_element(By.CSS_SELECTOR, 'button[data-action="swap"]').click()
        wait.until(lambda d: dlg.is_displayed())
        text = driver.find_element(By.ID, "confirm-text").text
        check("pgsql" in text and "node1" in text, "dialog names module and node", "pgsql ... node1", text)
        driver.save_screenshot(os.path.join(args.out, "console-dialog.png"))
        check(actions(tmp, "node1") == [], "nothing posted before confirming", [], actions(tmp, "node1"))
        driver.find_element(By.ID, "confirm-ok").click()
        deadline = time.time() + 10
        while time.time() < deadline and not actions(tmp, "node1"):
            time.sleep(0.1)
        got = actions(tmp, "node1")
        check(len(got) == 1 and got[0]["action"] == "swap" and got[0]["module"] == "pgsql",
              "swap pgsql posted to node1", [{"action": "swap", "module": "pgsql"}], got)
        check(actions(tmp, "node2") == [], "nothing posted to node2", [], actions(tmp, "node2"))
        try:
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".toast"))
            toast = driver.find_element(By.CSS_SELECTOR, ".toast").text
            check(toast.startswith("swap pgsql"), "toast reports the result", "swap pgsql ...", toast)
        except TimeoutException:
            check(False, "toast shown after the action")
        driver.save_screenshot(os.path.join(args.out, "console.png"))

        # The ?nodes= fallback: node2's own console, node1 given in the query.
        driver.get(f"{url2}/?nodes={url1}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.mrow[data-node="node1"][data-module="pgsql"]'))
        local = driver.find_element(By.CSS_SELECTOR, ".node .local-tag").find_element(By.XPATH, "../..")
        check(local.get_attribute("data-node") == "node2", "?nodes= page shows node2 as this node", "node2",
              local.get_attribute("data-node"))
        remote_buttons = row(driver, "node1", "pgsql").find_elements(By.CSS_SELECTOR, "button")
        check(not remote_buttons, "no action buttons for another node's row", 0, len(remote_buttons))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fake-node", required=True)
    ap.add_argument("--console", required=True)
    ap.add_argument("--testdata", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="sk-console-test-")
    profile = os.path.join(tmp, "profile")
    with open(os.path.join(tmp, "token"), "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(os.path.join(tmp, "token"), 0o600)

    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1360,1100"]:
        opts.add_argument(a)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(executable_path=args.chromedriver,
                                                  log_path=os.path.join(tmp, "chromedriver.log")), options=opts)
        driver.set_page_load_timeout(20)
        run(args, tmp, driver)
    finally:
        if driver:
            driver.quit()
        if failures:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failure(s); screenshots in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
