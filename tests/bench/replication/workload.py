#!/usr/bin/env python3
# Workloads for tests/bench/replication/run.sh that fio does not express exactly:
# per-operation write+fsync latency and small-file create+write+fsync (optionally
# interleaved in chunks with the same workload on a bare directory), an fsync'ed
# record writer that logs every acknowledged record (for the crash-loss check),
# and a deterministic test tree plus a deterministic 1% change for the resync runs.
# Every subcommand prints one JSON object on stdout.
import argparse
import hashlib
import json
import os
import random
import sys
import time

PAGE = 4096


def percentile(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def lat_summary(ns):
    s = sorted(ns)
    total = sum(ns)
    return {
        "ops": len(ns),
        "median_us": percentile(s, 50) / 1000.0,
        "p99_us": percentile(s, 99) / 1000.0,
        "mean_us": (total / len(ns) / 1000.0) if ns else 0.0,
        "max_us": (s[-1] / 1000.0) if s else 0.0,
    }


class FsyncLat:
    """Appends 4 KiB blocks to DIR/fsync-lat.dat, fsync after each; times each pair."""

    def __init__(self, d):
        self.path = os.path.join(d, "fsync-lat.dat")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.buf = os.urandom(PAGE)
        self.n = 0
        self.lat = []

    def run(self, ops, record=True):
        for _ in range(ops):
            t0 = time.perf_counter_ns()
            os.pwrite(self.fd, self.buf, self.n * PAGE)
            os.fsync(self.fd)
            t1 = time.perf_counter_ns()
            self.n += 1
            if record:
                self.lat.append(t1 - t0)

    def close(self, keep):
        os.close(self.fd)
        if not keep:
            os.unlink(self.path)

    def summary(self):
        out = lat_summary(self.lat)
        out["ops_per_s"] = len(self.lat) / (sum(self.lat) / 1e9) if self.lat else 0.0
        return out


class FsyncPair:
    """Two FsyncLat on two directories of the same disk, one op each at the same time
    (two threads); times each op until both are durable. This is what a durable ack
    costs when, as on this rig, the primary and the replica share one disk: the two
    fsyncs meet in one device queue (and one file system journal)."""

    def __init__(self, d):
        import threading
        self.a = FsyncLat(os.path.join(d, "a"))
        self.b = FsyncLat(os.path.join(d, "b"))
        self.go = threading.Barrier(2)
        self.stop = False
        self.thread = threading.Thread(target=self._peer, daemon=True)
        self.thread.start()
        self.lat = []

    def _peer(self):
        while True:
            self.go.wait()
            if self.stop:
                return
            self.b.run(1, record=False)
            self.go.wait()

    def run(self, ops, record=True):
        for _ in range(ops):
            t0 = time.perf_counter_ns()
            self.go.wait()
            self.a.run(1, record=False)
            self.go.wait()
            if record:
                self.lat.append(time.perf_counter_ns() - t0)

    def close(self, keep):
        self.stop = True
        self.go.wait()
        self.thread.join()
        self.a.close(keep)
        self.b.close(keep)

    def summary(self):
        return FsyncLat.summary(self)


class SmallFiles:
    """create + write + fsync + close of new files in DIR/smallfiles."""

    def __init__(self, d, size):
        self.dir = os.path.join(d, "smallfiles")
        os.makedirs(self.dir, exist_ok=True)
        self.buf = os.urandom(size)
        self.n = 0
        self.lat = []

    def run(self, files, record=True):
        for _ in range(files):
            t0 = time.perf_counter_ns()
            fd = os.open(os.path.join(self.dir, "f%06d" % self.n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, self.buf)
            os.fsync(fd)
            os.close(fd)
            self.n += 1
            if record:
                self.lat.append(time.perf_counter_ns() - t0)

    def summary(self):
        out = lat_summary(self.lat)
        out["ops_per_s"] = len(self.lat) / (sum(self.lat) / 1e9) if self.lat else 0.0
        out["bytes"] = len(self.lat) * len(self.buf)
        return out


def interleaved(sut, bare, total, chunk, extra=None):
    """Runs total ops on sut and, with --bare, as many on bare (and extra), in
    alternating chunks (ABBA order): this machine's disk latency moves 10x in phases
    of seconds, so back-to-back runs would compare different phases."""
    if bare is None:
        sut.run(total)
        return
    order = [w for w in (bare, extra, sut) if w is not None]
    done = 0
    i = 0
    while done < total:
        n = min(chunk, total - done)
        for w in (order if i % 2 == 0 else order[::-1]):
            w.run(n)
        done += n
        i += 1


def cmd_fsync_lat(a):
    sut = FsyncLat(a.dir)
    bare = FsyncLat(a.bare) if a.bare else None
    pair = None
    if a.bare and a.pair:
        os.makedirs(os.path.join(a.bare, "pair", "a"), exist_ok=True)
        os.makedirs(os.path.join(a.bare, "pair", "b"), exist_ok=True)
        pair = FsyncPair(os.path.join(a.bare, "pair"))
    for w in (sut, bare, pair):
        if w:
            w.run(a.warmup, record=False)
    interleaved(sut, bare, a.ops, a.chunk, pair)
    out = sut.summary()
    sut.close(a.keep)
    if bare:
        out["bare"] = bare.summary()
        bare.close(a.keep)
    if pair:
        out["bare"]["pair"] = pair.summary()
        pair.close(a.keep)
    print(json.dumps(out))


def cmd_smallfiles(a):
    sut = SmallFiles(a.dir, a.size)
    bare = SmallFiles(a.bare, a.size) if a.bare else None
    interleaved(sut, bare, a.files, a.chunk)
    out = sut.summary()
    if bare:
        out["bare"] = bare.summary()
    print(json.dumps(out))


def cmd_records(a):
    """Appends fsync'ed records until killed, an error, or --seconds; logs each ack.

    The ack log lives outside the replicated directory: a record is logged only
    after its fsync returned, i.e. after the system under test acknowledged it.
    """
    rec_len = max(32, a.record_size)
    fd = os.open(a.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    ack = os.open(a.acklog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    end = time.monotonic() + a.seconds
    n = 0
    err = ""
    try:
        while time.monotonic() < end:
            n += 1
            line = ("rec %010d " % n).encode()
            line += b"x" * (rec_len - len(line) - 1) + b"\n"
            os.write(fd, line)
            os.fsync(fd)
            os.write(ack, b"%d\n" % n)
    except OSError as e:
        err = str(e)
    print(json.dumps({"written": n, "error": err}))


def cmd_check_records(a):
    acked = []
    with open(a.acklog, "rb") as f:
        for line in f:
            line = line.strip()
            if line:
                acked.append(int(line))
    present = set()
    try:
        with open(a.file, "rb") as f:
            for line in f:
                if line.startswith(b"rec ") and line.endswith(b"\n"):
                    try:
                        present.add(int(line[4:14]))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    missing = [n for n in acked if n not in present]
    print(json.dumps({
        "acked": len(acked),
        "present": len(present),
        "missing": len(missing),
        "first_missing": missing[0] if missing else None,
        "last_acked": acked[-1] if acked else 0,
    }))


def cmd_mktree(a):
    """A tree of about --bytes: files of 64 KiB..32 MiB (log-uniform) plus small files."""
    rng = random.Random(a.seed)
    total = 0
    files = 0
    # One random 8 MiB pool sliced at random offsets: fast and incompressible.
    pool = os.urandom(8 << 20)
    ndirs = 8
    for d in range(ndirs):
        os.makedirs(os.path.join(a.dir, "d%02d" % d), exist_ok=True)
    while total < a.bytes:
        if rng.random() < 0.3:
            size = rng.randint(100, 16 << 10)
        else:
            size = int(2 ** rng.uniform(16, 25))
        size = min(size, a.bytes - total) or 1
        path = os.path.join(a.dir, "d%02d" % rng.randrange(ndirs), "f%06d.bin" % files)
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = min(left, 1 << 20)
                off = rng.randrange(len(pool) - chunk + 1)
                f.write(pool[off:off + chunk])
                left -= chunk
        total += size
        files += 1
    print(json.dumps({"files": files, "bytes": total}))


def list_files(root):
    out = []
    for dp, dn, fn in os.walk(root):
        dn.sort()
        for n in sorted(fn):
            p = os.path.join(dp, n)
            out.append((os.path.relpath(p, root), os.path.getsize(p)))
    return out


def cmd_change(a):
    """Deterministic change of about --percent of the tree's bytes: random 4 KiB
    blocks (--block) rewritten in place in random files, a few new files, a few
    deleted ones. Same seed + same tree = same change (applied to SK and rsync)."""
    rng = random.Random(a.seed)
    files = list_files(a.dir)
    total = sum(s for _, s in files)
    budget = int(total * a.percent / 100.0)
    big = [(p, s) for p, s in files if s >= a.block]
    written = 0
    blocks = 0
    touched = set()
    dirty_bs = set()  # (file, block index) in units of --resync-block
    new_bytes = int(budget * 0.1)
    block_budget = budget - new_bytes
    # Files chosen by size weight, so the change spreads like a real workload.
    weights = [s for _, s in big]
    while written < block_budget and big:
        p, s = rng.choices(big, weights=weights)[0]
        nblk = s // a.block
        off = rng.randrange(nblk) * a.block
        with open(os.path.join(a.dir, p), "r+b") as f:
            f.seek(off)
            f.write(os.urandom(a.block))
        written += a.block
        blocks += 1
        touched.add(p)
        dirty_bs.add((p, off // a.resync_block))
    deleted = []
    for p, s in rng.sample(files, min(a.delete, len(files))):
        if p in touched:
            continue
        os.unlink(os.path.join(a.dir, p))
        deleted.append(p)
    created = 0
    created_bytes = 0
    per_new = max(1, new_bytes // max(1, a.new))
    for i in range(a.new):
        path = os.path.join(a.dir, "d%02d" % rng.randrange(8), "new%04d_%d.bin" % (i, a.seed))
        with open(path, "wb") as f:
            f.write(os.urandom(per_new))
        created += 1
        created_bytes += per_new
    dirty_bytes = 0
    sizes = dict(files)
    for p, b in dirty_bs:
        dirty_bytes += min(a.resync_block, sizes[p] - b * a.resync_block)
    print(json.dumps({
        "tree_bytes": total,
        "blocks_rewritten": blocks,
        "files_touched": len(touched),
        "bytes_rewritten": written,
        "new_files": created,
        "new_bytes": created_bytes,
        "deleted_files": len(deleted),
        "bytes_changed": written + created_bytes,
        "bytes_in_dirty_resync_blocks": dirty_bytes + created_bytes,
    }))


def cmd_treehash(a):
    h = hashlib.sha256()
    for p, s in list_files(a.dir):
        h.update(("%s %d\n" % (p, s)).encode())
        with open(os.path.join(a.dir, p), "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
    print(json.dumps({"sha256": h.hexdigest()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fsync-lat")
    p.add_argument("dir")
    p.add_argument("--ops", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--bare", help="also run on this directory, interleaved in chunks")
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--pair", action="store_true",
                   help="with --bare, also two fsyncs at once on the bare disk (FsyncPair)")
    p.set_defaults(fn=cmd_fsync_lat)
    p = sub.add_parser("smallfiles")
    p.add_argument("dir")
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--size", type=int, default=PAGE)
    p.add_argument("--bare", help="also run on this directory, interleaved in chunks")
    p.add_argument("--chunk", type=int, default=25)
    p.set_defaults(fn=cmd_smallfiles)
    p = sub.add_parser("records")
    p.add_argument("file")
    p.add_argument("acklog")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--record-size", type=int, default=128)
    p.set_defaults(fn=cmd_records)
    p = sub.add_parser("check-records")
    p.add_argument("file")
    p.add_argument("acklog")
    p.set_defaults(fn=cmd_check_records)
    p = sub.add_parser("mktree")
    p.add_argument("dir")
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(fn=cmd_mktree)
    p = sub.add_parser("change")
    p.add_argument("dir")
    p.add_argument("--percent", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--block", type=int, default=PAGE)
    p.add_argument("--resync-block", type=int, default=65536)
    p.add_argument("--new", type=int, default=5)
    p.add_argument("--delete", type=int, default=3)
    p.set_defaults(fn=cmd_change)
    p = sub.add_parser("treehash")
    p.add_argument("dir")
    p.set_defaults(fn=cmd_treehash)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
