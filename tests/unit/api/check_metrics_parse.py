#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Feeds statusToMetrics() output (via http_fake_node --metrics) to the official
# Prometheus client parser: the exposition must parse and keep its types.
# usage: check_metrics_parse.py HTTP_FAKE_NODE STATUS.json...
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

# Families every fixture has (each replicates a dir and hears a peer), by type.
EXPECTED_TYPES = {
    "sk_module_state": "gauge",
    "sk_heartbeat_received": "counter",
    "sk_heartbeat_rtt_seconds": "gauge",
    "sk_replication_bytes": "counter",
    "sk_replication_in_sync": "gauge",
    "sk_build_info": "gauge",
}
# Families only some nodes have (resync progress on a resyncing SECOND, barrier
# latency on a source): the type is checked where present, presence over all files.
OPTIONAL_TYPES = {
    "sk_resync_progress_ratio": "gauge",
    "sk_replication_barrier_latency_seconds": "histogram",
}


def main():
    if len(sys.argv) < 3:
        print(__doc__ or "usage: check_metrics_parse.py HTTP_FAKE_NODE STATUS.json...", file=sys.stderr)
        return 2
    failures = 0
    seen_optional = set()
    for path in sys.argv[2:]:
        text = subprocess.run([sys.argv[1], "--metrics", path], check=True, capture_output=True,
                              text=True, timeout=30).stdout
        try:
            families = {f.name: f for f in text_string_to_metric_families(text)}
        except Exception as e:  # the parser raises ValueError and friends
            print(f"FAIL {path}: parser rejected the exposition: {e}")
            failures += 1
            continue
        for name, kind in EXPECTED_TYPES.items():
            got = families.get(name)
            if got is None:
                print(f"FAIL {path}: family {name} missing (got {sorted(families)})")
                failures += 1
            elif got.type != kind:
                print(f"FAIL {path}: {name} expected type {kind}, got {got.type}")
                failures += 1
        for name, kind in OPTIONAL_TYPES.items():
            got = families.get(name)
            if got is None:
                continue
            seen_optional.add(name)
            if got.type != kind:
                print(f"FAIL {path}: {name} expected type {kind}, got {got.type}")
                failures += 1
        if "sk_module_state" not in families:
            continue
        states = [s for s in families["sk_module_state"].samples if s.value == 1]
        modules = {s.labels["module"] for s in families["sk_module_state"].samples}
        if len(states) != len(modules):
            print(f"FAIL {path}: expected one current state per module ({len(modules)}), got {len(states)}")
            failures += 1
        samples = sum(len(f.samples) for f in families.values())
        print(f"ok {path}: {len(families)} families, {samples} samples")
    for name in sorted(set(OPTIONAL_TYPES) - seen_optional):
        print(f"FAIL: family {name} in none of {sys.argv[2:]}")
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
