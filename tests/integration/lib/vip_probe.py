#!/usr/bin/env python3
"""Client-side VIP prober for SK's namespace rig.

Connects to ADDRESS:PORT every INTERVAL ms (each attempt bounded by a connect and
read timeout), reads the one-line answer (the serving node's name), and records
(time, answer or failure). Runs until DURATION seconds pass, or until the file
named by --stop-file exists. Prints one JSON document: attempts, successes,
answers seen in order, the longest outage (time between the last success before
a gap and the first success after it), and every outage over --min-gap ms.
Only ever talks to the address it is given (a VIP inside the test's namespaces).
"""
import argparse
import json
import os
import socket
import sys
import time


def probe(addr, port, timeout):
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            answer = data.decode(errors="replace").strip()
            return answer or None
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("port", type=int)
    ap.add_argument("--interval-ms", type=float, default=10)
    ap.add_argument("--timeout-ms", type=float, default=100)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--stop-file")
    ap.add_argument("--ready-file", help="created after the first successful answer")
    ap.add_argument("--min-gap-ms", type=float, default=50)
    args = ap.parse_args()

    start = time.monotonic()
    deadline = start + args.duration
    attempts = successes = 0
    last_ok = None
    last_answer = None
    answers = []  # [answer, first_seen_s]
    outages = []
    longest = 0.0
    while time.monotonic() < deadline:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        t0 = time.monotonic()
        answer = probe(args.address, args.port, args.timeout_ms / 1000)
        attempts += 1
        now = time.monotonic()
        if answer is not None:
            successes += 1
            if last_ok is not None:
                gap = (now - last_ok) * 1000
                if gap >= args.min_gap_ms:
                    outages.append({"at_s": round(last_ok - start, 3), "ms": round(gap, 1)})
                longest = max(longest, gap)
            last_ok = now
            if answer != last_answer:
                answers.append([answer, round(now - start, 3)])
                last_answer = answer
            if args.ready_file and successes == 1:
                open(args.ready_file, "w").close()
        spent = time.monotonic() - t0
        time.sleep(max(0.0, args.interval_ms / 1000 - spent))
    end = time.monotonic()
    trailing = (end - last_ok) * 1000 if last_ok is not None else None
    json.dump({
        "attempts": attempts,
        "successes": successes,
        "answers": answers,
        "longest_outage_ms": round(longest, 1),
        "outages": outages,
        "trailing_failure_ms": None if trailing is None else round(trailing, 1),
        "duration_s": round(end - start, 3),
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
