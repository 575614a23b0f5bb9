#!/usr/bin/env python3
"""Counts every test case meson ran, from its testlog.json.

A doctest executable counts its test cases ("[doctest] test cases: N | P passed |
F failed"), a TAP test counts its "ok"/"not ok" lines, anything else counts as
one test by its result. Prints a per-suite table, then "N passed, N failed".
Exit status 1 when anything failed or nothing ran.
"""
import json
import re
import sys

DOCTEST = re.compile(r"\[doctest\] test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed")
TAP = re.compile(r"^(not ok|ok)\b(.*)$", re.M)


def count(entry):
    out = entry.get("stdout") or ""
    result = entry.get("result", "")
    m = DOCTEST.search(out)
    if m:
        passed, failed = int(m.group(2)), int(m.group(3))
        if result not in ("OK", "EXPECTEDFAIL") and failed == 0:
            failed = 1  # crashed or timed out after printing a summary
        return passed, failed
    taps = TAP.findall(out)
    if taps:
        passed = sum(1 for s, rest in taps if s == "ok" and "# SKIP" not in rest)
        failed = sum(1 for s, _ in taps if s == "not ok")
        if result not in ("OK", "EXPECTEDFAIL") and failed == 0:
            failed = 1
        return passed, failed
    if result == "SKIP":
        return 0, 0
    return (1, 0) if result in ("OK", "EXPECTEDFAIL") else (0, 1)


def main():
    path = sys.argv[1]
    passed = failed = 0
    rows = []
    try:
        with open(path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        print(f"test summary: cannot read {path}: {e}")
        entries = []
    for e in entries:
        p, f = count(e)
        passed += p
        failed += f
        rows.append((e.get("name", "?"), e.get("result", "?"), p, f))
    print()
    print(f"{'test':<40} {'result':<8} {'passed':>6} {'failed':>6}")
    for name, result, p, f in rows:
        print(f"{name:<40} {result:<8} {p:>6} {f:>6}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
