#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Drives the web console of a real two-node cluster in headless Chromium (run by
# test_console_cluster.sh inside the local node's network namespace): checks the
# module's states on both nodes, clicks swap on the local node, confirms, and waits
# until the console shows the roles exchanged. Screenshots go to --out.
# Prints "ok - ..." / "FAIL - ..." per check and "# ..." notes (timings); exit 1 on
# any failure. chromedriver's and Chromium's pids are appended to --pids-file (the
# rig's RIG_PIDS_FILE) as soon as they exist, so the rig's teardown can end them; as
# child subreaper it waits for every browser process before it returns.
import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.remote_connection import RemoteConnection
from selenium.webdriver.support.ui import WebDriverWait

# CSS colours of style.css, as Chromium reports computed backgrounds (see test_console.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_console import COLOURS, rgb  # noqa: E402  (the fake-node console test's colour helpers)

failures = []


def check(cond, what, expected=None, got=None):
    if cond:
        print(f"ok - {what}", flush=True)
    else:
        detail = f" (expected {expected!r}, got {got!r})" if expected is not None or got is not None else ""
        print(f"FAIL - {what}{detail}", flush=True)
        failures.append(what)
    return cond


def note(text):
    print(f"# {text}", flush=True)


def register(pids_file, pid, what):
    with open(pids_file, "a") as f:
        f.write(f"{pid} {what}\n")


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def become_subreaper():
    """Chromium's helpers (crashpad handlers, zygotes) outlive the browser for a moment
    and would be reparented to init: as subreaper we get them, wait for them, and
    leave neither a process nor a zombie behind."""
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        note(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def reap_orphans(grace=10):
    """Waits (bounded) for every remaining child to exit, then kills what is left by pid."""
    deadline = time.time() + grace
    give_up = deadline + 5
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid:
            continue
        now = time.time()
        if now > give_up:
            note(f"children still there after SIGKILL: {children(os.getpid())}")
            return
        if now > deadline:
            # Killing a zygote hands its renderers to us: kill each round what is there.
            for c in children(os.getpid()):
                note(f"{c} ({comm(c)}) still running {grace} s after the browser quit: killing it")
                try:
                    os.kill(c, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chromedriver(args):
    port = free_port()
    log = open(os.path.join(args.work, "chromedriver.log"), "w")
    proc = subprocess.Popen([args.chromedriver, f"--port={port}", "--allowed-ips=127.0.0.1"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    register(args.pids_file, proc.pid, "chromedriver")
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromedriver exited with {proc.returncode}: see {log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("chromedriver did not listen within 30 s")


# What the page shows, read in one script run: the console re-renders everything at
# each poll, so element handles go stale between WebDriver calls, a snapshot does not.
SNAPSHOT_JS = """
const rows = {};
for (const r of document.querySelectorAll('.mrow')) {
  const b = r.querySelector('.state');
  rows[r.dataset.node + '/' + r.dataset.module] = b && {
    text: b.textContent, cls: b.dataset.stateClass, bg: getComputedStyle(b).backgroundColor,
    buttons: r.querySelectorAll('button').length };
}
const cards = [...document.querySelectorAll('.node')].map((c) => ({
  name: c.dataset.node, unreachable: c.classList.contains('unreachable'), local: !!c.querySelector('.local-tag') }));
const timeline = [...document.querySelectorAll('#timeline tr')].filter((t) => t.cells.length >= 5).map((t) => ({
  node: t.cells[1].textContent, module: t.cells[2].textContent,
  states: [...t.cells[3].querySelectorAll('.state')].map((b) => b.textContent), cause: t.cells[4].textContent }));
const toasts = [...document.querySelectorAll('.toast')].map((t) => ({
  text: t.textContent, error: t.classList.contains('error') }));
return { rows, cards, timeline, toasts };
"""


def snapshot(driver):
    return driver.execute_script(SNAPSHOT_JS)


def labels(snap, module, nodes):
    return {n: (snap["rows"].get(f"{n}/{module}") or {}).get("text") for n in nodes}


def settled(snap, module, want):
    """SNAP when every node answered and MODULE's rows show WANT ({node: label}), else None."""
    if any(c["unreachable"] for c in snap["cards"]):
        return None
    return snap if labels(snap, module, list(want)) == want else None


def click_action(driver, node, module, action, wait):
    """Clicks NODE's ACTION button for MODULE; retried while a re-render replaces the row."""
    def attempt(d):
        try:
            d.find_element(By.CSS_SELECTOR, f'.mrow[data-node="{node}"][data-module="{module}"] '
                           f'button[data-action="{action}"]').click()
            return True
        except (StaleElementReferenceException,):
            return False
    wait.until(attempt)


def browser_log(driver):
    try:
        return driver.get_log("browser")
    except WebDriverException:
        return []


def dump_browser_log(driver):
    for entry in browser_log(driver):
        note(f"browser: {entry.get('level')} {entry.get('message')}")


def run(args, driver):
    module, local, peer = args.module, args.local, args.peer
    nodes = [local, peer]
    shot = lambda name: driver.save_screenshot(os.path.join(args.out, f"console-cluster-{name}.png"))
    long_wait = WebDriverWait(driver, args.wait)

    t0 = time.time()
    driver.get(args.url + "/")
    note(f"page loaded in {time.time() - t0:.1f} s")
    want = {local: args.before_local, peer: args.before_peer}
    try:
        long_wait.until(lambda d: all(labels(snapshot(d), module, nodes).values()))
    except TimeoutException:
        shot("timeout")
        dump_browser_log(driver)
        check(False, f"both nodes' rows for {module} shown within {args.wait} s", nodes,
              labels(snapshot(driver), module, nodes))
        return
    note(f"both nodes shown {time.time() - t0:.1f} s after loading")
    # The status is polled every 2 s: wait for a rendering where both nodes answered
    # and both rows say what skctl said, and check that one.
    try:
        snap = long_wait.until(lambda d: settled(snapshot(d), module, want))
    except TimeoutException:
        snap = snapshot(driver)
    shot("before")
    cards = snap["cards"]
    check(sorted(c["name"] for c in cards) == sorted(nodes), "one card per node", sorted(nodes),
          [c["name"] for c in cards])
    check(not [c for c in cards if c["unreachable"]], "no node unreachable", [],
          [c["name"] for c in cards if c["unreachable"]])
    check([c["name"] for c in cards if c["local"]] == [local], f"{local} is marked as this node", [local],
          [c["name"] for c in cards if c["local"]])
    for n in nodes:
        r = snap["rows"].get(f"{n}/{module}") or {}
        check(r.get("text") == want[n], f"{module} on {n} shows {want[n]}", want[n], r.get("text"))
        check(r.get("cls") == "green", f"{module} on {n} is green", "green", r.get("cls"))
        check(rgb(r.get("bg") or "") == COLOURS["green"], f"{module} on {n} background is green",
              COLOURS["green"], r.get("bg"))
    peer_buttons = (snap["rows"].get(f"{peer}/{module}") or {}).get("buttons")
    check(peer_buttons == 0, f"no action buttons on {peer}'s row (actions go to this node)", 0, peer_buttons)

    # The admin token, then swap -> confirm.
    tok = driver.find_element(By.ID, "token")
    tok.clear()
    tok.send_keys(args.token)
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    click_action(driver, local, module, "swap", long_wait)
    dlg = driver.find_element(By.ID, "confirm")
    long_wait.until(lambda d: dlg.is_displayed())
    text = driver.find_element(By.ID, "confirm-text").text
    check(module in text and local in text, "dialog names module and node", f"{module} ... {local}", text)
    ok_btn = driver.find_element(By.ID, "confirm-ok")
    check(ok_btn.is_enabled(), "confirm enabled with the token")
    shot("dialog")
    t_confirm = time.time()
    ok_btn.click()

    # The action's answer: a toast (success or error) once the POST returns; it
    # stays 5 s (9 s for an error), polled well within that.
    try:
        toasts = long_wait.until(lambda d: snapshot(d)["toasts"])
        note(f"toast after {time.time() - t_confirm:.1f} s: {toasts[0]['text']!r}")
        check(not toasts[0]["error"], "the swap request succeeded", f"swap {module}: ...", toasts[0]["text"])
        check(toasts[0]["text"].startswith(f"swap {module}"), "toast reports the swap", f"swap {module} ...",
              toasts[0]["text"])
    except TimeoutException:
        check(False, "toast shown after the action")
    post_ms = driver.execute_script(
        "return performance.getEntriesByType('resource').filter((e) => e.name.endsWith(arguments[0]))"
        ".map((e) => Math.round(e.duration))", f"/api/v1/modules/{module}/swap")
    note(f"POST .../{module}/swap took {post_ms} ms (browser resource timing)")

    after = {local: args.after_local, peer: args.after_peer}
    try:
        snap = long_wait.until(lambda d: settled(snapshot(d), module, after))
        note(f"console shows the swapped roles {time.time() - t_confirm:.1f} s after confirming")
    except TimeoutException:
        snap = snapshot(driver)
    shot("after")
    check(not [c for c in snap["cards"] if c["unreachable"]], "no node unreachable after the swap", [],
          [c["name"] for c in snap["cards"] if c["unreachable"]])
    got = labels(snap, module, nodes)
    check(got == after, f"console shows {peer} {args.after_peer} and {local} {args.after_local} after the swap",
          after, got)
    for n in nodes:
        cls = (snap["rows"].get(f"{n}/{module}") or {}).get("cls")
        check(cls == "green", f"{module} on {n} is green after the swap", "green", cls)
    # The timeline shows the local node leaving PRIM for SECOND.
    hit = [t for t in snap["timeline"] if t["node"] == local and t["module"] == module and len(t["states"]) == 2
           and t["states"][0].startswith("PRIM/") and t["states"][1].startswith("SECOND/")]
    check(bool(hit), f"timeline shows {local} going from PRIM to SECOND", f"{local} PRIM/... -> SECOND/...",
          snap["timeline"][:4])
    if hit:
        note(f"timeline: {local} {hit[0]['states'][0]} -> {hit[0]['states'][1]}: {hit[0]['cause']}")
    # Failed fetches are the console's to show (and are checked above); a script
    # error is a bug of the console.
    entries = browser_log(driver)
    for e in entries:
        note(f"browser: {e.get('level')} {e.get('message')}")
    uncaught = [e.get("message") for e in entries if "Uncaught" in str(e.get("message"))]
    check(not uncaught, "no script error in the browser console", [], uncaught)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="the local node's console, http://ADDR:PORT")
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--local", required=True, help="the node whose console is loaded (the primary)")
    ap.add_argument("--peer", required=True)
    ap.add_argument("--before-local", default="PRIM/running")
    ap.add_argument("--before-peer", default="SECOND/in-sync")
    ap.add_argument("--after-local", default="SECOND/in-sync")
    ap.add_argument("--after-peer", default="PRIM/running")
    ap.add_argument("--out", required=True, help="screenshot directory")
    ap.add_argument("--work", required=True, help="scratch directory (profile, chromedriver log)")
    ap.add_argument("--pids-file", required=True)
    ap.add_argument("--wait", type=float, default=60, help="seconds for each wait on the page")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    with open(args.token_file) as f:
        args.token = f.read().strip()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    # Bounds every WebDriver HTTP call (no call may hang the test).
    RemoteConnection.set_timeout(120)

    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--disable-breakpad", "--no-proxy-server",
              f"--user-data-dir={os.path.join(args.work, 'profile')}", "--window-size=1360,1100"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})

    become_subreaper()
    cd = None
    driver = None
    browser_pids = []
    try:
        t0 = time.time()
        cd, port = start_chromedriver(args)
        driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=opts)
        browser_pids = children(cd.pid)
        for pid in browser_pids:
            register(args.pids_file, pid, "chromium")
        note(f"chromium started in {time.time() - t0:.1f} s (chromedriver {cd.pid}, browser {browser_pids})")
        driver.set_page_load_timeout(args.wait)
        run(args, driver)
    except Exception as e:  # reported as a failure, the teardown below still runs
        check(False, f"driver error: {type(e).__name__}: {e}")
        if driver:
            try:
                driver.save_screenshot(os.path.join(args.out, "console-cluster-error.png"))
            except Exception:
                pass
    finally:
        if driver:
            try:
                driver.quit()
            except Exception as e:
                note(f"quit: {e}")
        if cd:
            cd.terminate()
            try:
                cd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                cd.kill()
                cd.wait()
        reap_orphans()
    print(f"{len(failures)} failure(s); screenshots in {args.out}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
