#!/usr/bin/python3
"""Zero-loss database client for the application tests (PostgreSQL or MariaDB).

run:   commits one row per transaction through the VIP, again and again, and appends
       "<id> <wall ms>" to ACKFILE only after COMMIT returned; on any error it drops the
       connection and reconnects (the id in flight is in doubt and never logged).
       Stops when STOPFILE exists; prints a JSON summary.
check: reads ACKFILE first, then selects every id from the table: prints JSON with
       the acknowledged ids that are missing (must be none).
"""
import argparse, json, os, sys, time

def connect(a):
    if a.kind == "pg":
        import psycopg2
        # Keepalives and tcp_user_timeout: a connection to a dead primary fails in seconds.
        c = psycopg2.connect(host=a.host, port=a.port, user=a.user, password=a.password,
                             dbname=a.db, connect_timeout=2, keepalives=1, keepalives_idle=1,
                             keepalives_interval=1, keepalives_count=2, tcp_user_timeout=3000)
    else:
        import pymysql
        c = pymysql.connect(host=a.host, port=a.port, user=a.user, password=a.password,
                            database=a.db, connect_timeout=2, read_timeout=5, write_timeout=5,
                            autocommit=False)
    return c

def run(a):
    ids = []
    if os.path.exists(a.ackfile):
        with open(a.ackfile) as f:
            ids = [int(l.split()[0]) for l in f if l.strip()]
    next_id = max(ids, default=0) + 1
    pad = "x" * a.pad
    log = open(a.ackfile, "a", buffering=1)
    conn, stats = None, {"attempts": 0, "committed": 0, "errors": 0, "reconnects": 0,
                         "first_errors": [], "longest_gap_ms": 0.0}
    last_ok = None
    while not os.path.exists(a.stopfile):
        try:
            if conn is None:
                conn = connect(a)
                stats["reconnects"] += 1
            i = next_id
            next_id += 1
            stats["attempts"] += 1
            cur = conn.cursor()
            cur.execute("INSERT INTO t (id, pad) VALUES (%s, %s)", (i, pad))
            conn.commit()
            now = time.time()
            log.write("%d %d\n" % (i, int(now * 1000)))
            stats["committed"] += 1
            if last_ok is not None:
                stats["longest_gap_ms"] = max(stats["longest_gap_ms"], round((now - last_ok) * 1000, 1))
            last_ok = now
            if stats["committed"] == 1 and a.readyfile:
                open(a.readyfile, "w").close()
        except Exception as e:
            stats["errors"] += 1
            if len(stats["first_errors"]) < 8:
                stats["first_errors"].append("%s: %s" % (type(e).__name__, str(e).strip()[:160]))
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            conn = None
            time.sleep(0.1)
        if a.delay:
            time.sleep(a.delay)
    print(json.dumps(stats))

def check(a):
    with open(a.ackfile) as f:
        acked = {int(l.split()[0]) for l in f if l.strip()}
    deadline, err = time.time() + a.wait, None
    while True:
        try:
            conn = connect(a)
            cur = conn.cursor()
            cur.execute("SELECT id FROM t")
            rows = {int(r[0]) for r in cur.fetchall()}
            conn.close()
            break
        except Exception as e:
            err = "%s: %s" % (type(e).__name__, e)
            if time.time() > deadline:
                print(json.dumps({"error": err}))
                return 1
            time.sleep(0.2)
    missing = sorted(acked - rows)
    print(json.dumps({"acked": len(acked), "rows": len(rows), "missing": len(missing),
                      "missing_ids": missing[:10], "max_acked": max(acked, default=0)}))
    return 0

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["run", "check"])
p.add_argument("--kind", choices=["pg", "mariadb"], required=True)
p.add_argument("--host", required=True)
p.add_argument("--port", type=int, required=True)
p.add_argument("--user", default="sk")
p.add_argument("--password", default="sk-test")
p.add_argument("--db", default="skt")
p.add_argument("--ackfile", required=True)
p.add_argument("--stopfile", default="")
p.add_argument("--readyfile", default="")
p.add_argument("--pad", type=int, default=200)
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--wait", type=float, default=30.0)
a = p.parse_args()
sys.exit(run(a) if a.mode == "run" else check(a))
