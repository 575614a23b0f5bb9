#!/usr/bin/env bash
# Zero-loss campaign for synchronous replication (issue 3), in the namespace rig.
# Concurrent writers make records durable in every way an application can
# (fsync, fdatasync, O_SYNC, O_DSYNC, O_DIRECT, mmap+msync, small file +
# fsync(dir), rename-over) through the primary's over-mount and log each record
# outside the replicated dir once its durability call returned. The primary is
# crashed at random points (SIGKILL of skd, the app and the writers, and its
# link down): every logged record must be intact on the survivor. The crashed
# node returns, resyncs under load, and the next crash hits the other node.
# A second case crashes the primary while the peer is mid-resync: the peer
# must never serve, and the returning primary must still hold every record.
#
# ZL_SEED=N replays a run (the seed is printed). ZL_CAMPAIGN_KILLS and
# ZL_RESYNC_KILLS set the number of crashes of each case (default 44 + 6).
. "$(dirname "$0")/lib/rig.sh"
. "$(dirname "$0")/lib/mirror.sh"

ZL_SEED=${ZL_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
ZL_CAMPAIGN_KILLS=${ZL_CAMPAIGN_KILLS:-44}
ZL_RESYNC_KILLS=${ZL_RESYNC_KILLS:-6}
ZL_TOTAL=$((ZL_CAMPAIGN_KILLS + ZL_RESYNC_KILLS))
ZL_KINDS=(fsync fdatasync osync odsync odirect mmap smallfile rename)
RANDOM=$ZL_SEED
rig_log "seed $ZL_SEED (ZL_SEED=$ZL_SEED replays the same random choices)"

ZL_WPID=""	# writers' process group
ZL_WNODE=""	# the node whose mount they write through
ZL_RUN=0	# writer generation: each start gets new record ids
ZL_WKINDS=()	# the writer kinds of the current run

# The writers and the checker: one Python file, written into the rig.
_zl_python() {
	cat <<'PY'
import errno, hashlib, mmap, os, signal, sys

# Record size per slot-file writer; records sit at multiples of it.
REC = {"fsync": 512, "fdatasync": 512, "osync": 512, "odsync": 1024,
       "odirect": 4096, "mmap": 4096}
KINDS = list(REC) + ["smallfile", "rename"]
SLOTS = 8        # rename-over targets rn/s0..s7
SMALL = 512      # small-file and rename record size


def record(kind, run, n, size):
    """Content of record n of writer run `run`: a header, then a hash stream of it."""
    head = b"ZL %s %d %d " % (kind.encode(), run, n)
    return head + hashlib.shake_128(head).digest(size - len(head))


def parse(buf, kind):
    """(run, n) when buf is exactly one intact record of this writer, else None."""
    parts = bytes(buf[:64]).split(b" ", 4)
    if len(parts) < 5 or parts[0] != b"ZL" or parts[1] != kind.encode():
        return None
    try:
        run, n = int(parts[2]), int(parts[3])
    except ValueError:
        return None
    return (run, n) if bytes(buf) == record(kind, run, n, len(buf)) else None


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer(kind, root, run, ack, stop):
    """Writes records until the stop file appears; logs "run n" once each is durable."""
    log = os.open(os.path.join(ack, kind + ".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def acked(n):
        os.write(log, b"%d %d\n" % (run, n))

    n = 0
    if kind in REC:
        size = REC[kind]
        flags = os.O_RDWR | os.O_CREAT
        flags |= {"osync": os.O_SYNC, "odsync": os.O_DSYNC, "odirect": os.O_DIRECT}.get(kind, 0)
        fd = os.open(os.path.join(root, kind + ".dat"), flags, 0o644)
        fsync_path(root)
        # Past any torn tail a crash left: a record never straddles two slots.
        off = -(-os.fstat(fd).st_size // size) * size
        buf = mmap.mmap(-1, size)          # page-aligned, as O_DIRECT needs
        while not os.path.exists(stop):
            rec = record(kind, run, n, size)
            if kind == "mmap":
                os.ftruncate(fd, off + size)
                m = mmap.mmap(fd, size, offset=off)
                m[:] = rec
                m.flush()                  # msync(MS_SYNC)
                m.close()
            else:
                buf[:] = rec
                if os.pwrite(fd, buf, off) != size:
                    raise OSError(errno.EIO, "short write")
                if kind == "fsync":
                    os.fsync(fd)
                elif kind == "fdatasync":
                    os.fdatasync(fd)
            acked(n)
            off += size
            n += 1
    elif kind == "smallfile":
        top = os.path.join(root, "sf")
        os.makedirs(top, exist_ok=True)
        sub = os.path.join(top, "r%04d" % run)
        os.mkdir(sub)
        fsync_path(top)
        fsync_path(root)
        dfd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        while not os.path.exists(stop):
            fd = os.open(os.path.join(sub, "f%06d" % n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, record(kind, run, n, SMALL))
            os.fsync(fd)
            os.close(fd)
            os.fsync(dfd)
            acked(n)
            n += 1
    elif kind == "rename":
        top = os.path.join(root, "rn")
        os.makedirs(top, exist_ok=True)
        fsync_path(root)
        dfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        while not os.path.exists(stop):
            slot = n % SLOTS
            tmp = os.path.join(top, "s%d.tmp" % slot)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, record(kind, run, n, SMALL))
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, os.path.join(top, "s%d" % slot))
            os.fsync(dfd)
            acked(n)
            n += 1
    return n


def cmd_run(root, ack, run, stop, kinds):
    """One process per writer kind, all in this process group; exit 0 only if all were."""
    children = {}
    for kind in kinds:
        pid = os.fork()
        if pid == 0:
            try:
                n = writer(kind, root, int(run), ack, stop)
                sys.stderr.write("writer %s run %s: %d records\n" % (kind, run, n))
                os._exit(0)
            except BaseException as e:
                sys.stderr.write("writer %s run %s: %r\n" % (kind, run, e))
                os._exit(1)
        children[pid] = kind

    def term(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(1)
    signal.signal(signal.SIGTERM, term)
    bad = 0
    while children:
        pid, status = os.wait()
        children.pop(pid, None)
        bad += status != 0
    sys.exit(1 if bad else 0)


def acked_records(ack, kind):
    out = []
    try:
        with open(os.path.join(ack, kind + ".log")) as f:
            for line in f:
                run, n = line.split()
                out.append((int(run), int(n)))
    except FileNotFoundError:
        pass
    return out


def cmd_verify(root, ack):
    """Every acknowledged record present and intact; prints "acked R missing M"."""
    total = missing = 0
    details = []
    for kind in KINDS:
        acked = acked_records(ack, kind)
        total += len(acked)
        if not acked:
            continue
        lost = []
        if kind in REC:
            size = REC[kind]
            found = set()
            try:
                with open(os.path.join(root, kind + ".dat"), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                data = b""
            for off in range(0, len(data) - size + 1, size):
                r = parse(data[off:off + size], kind)
                if r:
                    found.add(r)
            lost = [r for r in acked if r not in found]
        elif kind == "smallfile":
            for run, n in acked:
                try:
                    with open(os.path.join(root, "sf", "r%04d" % run, "f%06d" % n), "rb") as f:
                        ok = f.read() == record(kind, run, n, SMALL)
                except FileNotFoundError:
                    ok = False
                if not ok:
                    lost.append((run, n))
        elif kind == "rename":
            # Rename-over replaces: each slot holds its last acked record or a newer one.
            last = {}
            for r in acked:
                last[r[1] % SLOTS] = max(last.get(r[1] % SLOTS, r), r)
            for slot, want in sorted(last.items()):
                try:
                    with open(os.path.join(root, "rn", "s%d" % slot), "rb") as f:
                        got = parse(f.read(), kind)
                except FileNotFoundError:
                    got = None
                if got is None or got < want or got[1] % SLOTS != slot:
                    lost.append(want)
        missing += len(lost)
        # Contiguous stretches: "run R records a-b" (the first 5 stretches).
        spans = []
        for run, n in sorted(lost):
            if spans and spans[-1][0] == run and spans[-1][2] == n - 1:
                spans[-1][2] = n
            else:
                spans.append([run, n, n])
        for run, a, b in spans[:5]:
            details.append("%s: run %d records %d-%d (last acked: run %d record %d)" % ((kind, run, a, b) + max(acked)))
    print("acked %d missing %d" % (total, missing))
    for d in details:
        print("lost " + d)
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        cmd_run(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    elif sys.argv[1] == "verify":
        cmd_verify(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: zl.py run ROOT ACKDIR RUN STOPFILE KIND... | verify ROOT ACKDIR")
PY
}

_zl_now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Two nodes, n1 primary, n2 in sync, writers' helper and ack dir in place.
_zl_pair_up() {
	rig_setup 2 1
	rig_write_cluster
	rig_write_mirror_module web
	rig_add_replicated_dir web
	_zl_python >"$RIG_DIR/zl.py"
	mkdir -p "$RIG_DIR/acked"
	rig_start_pair web 100 300
}

# _zl_start_writers NODE KIND...: the writers in NODE's skd mount namespace, in
# their own process group (so a crash kills them all at once).
_zl_start_writers() {
	local node=$1; shift
	ZL_RUN=$((ZL_RUN + 1))
	rm -f "$RIG_DIR/writers.stop"
	setsid nsenter -t "$(rig_skd_pid "$node")" -m -n python3 "$RIG_DIR/zl.py" run "$RIG_DIR/$node/data" \
		"$RIG_DIR/acked" "$ZL_RUN" "$RIG_DIR/writers.stop" "$@" 2>>"$RIG_DIR/writers.log" &
	ZL_WPID=$!
	ZL_WNODE=$node
	ZL_WKINDS=("$@")
	echo "$ZL_WPID writers" >>"$RIG_PIDS_FILE"
}

# A random mix of at least three writer kinds.
_zl_random_kinds() {
	local k out=()
	while [ ${#out[@]} -lt 3 ]; do
		out=()
		for k in "${ZL_KINDS[@]}"; do ((RANDOM % 3)) && out+=("$k"); done
	done
	echo "${out[@]}"
}

# Writers finish their current record and exit; all must have exited cleanly.
_zl_stop_writers() {
	local rc=0
	[ -n "$ZL_WPID" ] || return 0
	touch "$RIG_DIR/writers.stop"
	rig_wait_for 200 _rig_gone "$ZL_WPID" || { tail -5 "$RIG_DIR/writers.log" >&2; rig_fail "writers did not stop"; }
	wait "$ZL_WPID" || rc=$?
	ZL_WPID=""
	[ "$rc" -eq 0 ] || { tail -8 "$RIG_DIR/writers.log" >&2; rig_fail "a writer failed while no node crashed"; }
}

# Bounded wait until every writer of the current run has made a record durable
# (a stall of 30 s fails the test: acked writes must keep flowing).
_zl_wait_writing() {
	local i k idle=()
	for ((i = 0; i < 300; i++)); do
		_zl_writers_healthy
		idle=()
		for k in "${ZL_WKINDS[@]}"; do
			grep -q "^$ZL_RUN " "$RIG_DIR/acked/$k.log" 2>/dev/null || idle+=("$k")
		done
		[ ${#idle[@]} -eq 0 ] && return 0
		sleep 0.1
	done
	rig_fail "run $ZL_RUN on $ZL_WNODE: no record acked by ${idle[*]} within 30 s"
}

# No writer of the current run stopped (they stop only at a crash or when told
# to). Sets ZL_NEW: the records this run acked so far.
_zl_writers_healthy() {
	ZL_NEW=$(cat "$RIG_DIR"/acked/*.log 2>/dev/null | grep -c "^$ZL_RUN " || true)
	if grep -q " run $ZL_RUN: " "$RIG_DIR/writers.log" 2>/dev/null || ! kill -0 "$ZL_WPID" 2>/dev/null; then
		grep " run $ZL_RUN: " "$RIG_DIR/writers.log" >&2 || true
		rig_fail "a writer of run $ZL_RUN stopped before any crash"
	fi
}

# _zl_crash NODE: power cut: link down and SIGKILL of skd (random order, back to
# back), of the app's process group and of the writers if they run there.
_zl_crash() {
	local node=$1 pid app
	pid=$(rig_skd_pid "$node")
	if ((RANDOM % 2)); then
		rig_exec "$node" ip link set eth0 down
		kill -KILL "$pid"
	else
		kill -KILL "$pid"
		rig_exec "$node" ip link set eth0 down
	fi
	app="$RIG_DIR/$node/state/web/app.pid"
	if [ -f "$app" ]; then kill -KILL -- "-$(cat "$app")" 2>/dev/null || true; fi
	if [ -n "$ZL_WPID" ] && [ "$ZL_WNODE" = "$node" ]; then
		kill -KILL -- "-$ZL_WPID" 2>/dev/null || true
		wait "$ZL_WPID" 2>/dev/null || true
		ZL_WPID=""
	fi
	rig_stop_skd "$node" KILL
}

# _zl_restore NODE: power back: link up, skd starts (it rejoins on its own).
_zl_restore() {
	rig_exec "$1" ip link set eth0 up
	rig_start_skd "$1"
}

# _zl_verify NODE: every acked record intact as NODE's application sees its files.
# Prints "acked R missing M" (one line) and fails when M > 0.
_zl_verify() {
	local node=$1 out rc=0
	out=$(rig_in_skd "$node" python3 "$RIG_DIR/zl.py" verify "$RIG_DIR/$node/data" "$RIG_DIR/acked") || rc=$?
	ZL_ACKED=$(awk 'NR == 1 { print $2 }' <<<"$out")
	ZL_MISSING=$(awk 'NR == 1 { print $4 }' <<<"$out")
	if [ "$rc" -ne 0 ]; then
		printf '# %s\n' "${out//$'\n'/$'\n'# }" >&2
		return 1
	fi
}

# _zl_checkpoint PRIMARY SECOND: writers stopped, both trees identical by the
# independent hash (retried briefly: the last ops may still be in flight).
_zl_checkpoint() {
	local p=$1 s=$2 hp="" hs="" i
	_zl_stop_writers
	for ((i = 0; i < 30; i++)); do
		hp=$(rig_tree_hash "$RIG_DIR/$p/data")
		hs=$(rig_tree_hash "$RIG_DIR/$s/data")
		[ "$hp" = "$hs" ] && break
		sleep 0.2
	done
	if [ "$hp" != "$hs" ]; then
		diff <(rig_tree_list "$RIG_DIR/$p/data") <(rig_tree_list "$RIG_DIR/$s/data") | head -10 >&2 || true
		rig_fail "checkpoint: $p and $s trees differ after resync"
	fi
	rig_log "checkpoint: $p and $s identical ($(du -sk "$RIG_DIR/$p/data" | cut -f1) KiB, $(find "$RIG_DIR/$p/data" | wc -l) entries)"
	# The small files of earlier runs are verified on both sides now: remove them
	# (through the primary's mount) and forget their records, so the tree stays
	# bounded (each file the kernel caches holds an fd in the capture).
	local d run
	for d in "$RIG_DIR/$p/data/sf"/r*; do
		[ -d "$d" ] || continue
		run=$((10#${d##*/r}))
		[ "$run" -lt "$ZL_RUN" ] && rig_in_skd "$p" rm -rf "$d"
	done
	if [ -f "$RIG_DIR/acked/smallfile.log" ]; then
		awk -v keep="$ZL_RUN" '$1 >= keep' "$RIG_DIR/acked/smallfile.log" >"$RIG_DIR/acked/smallfile.keep"
		mv "$RIG_DIR/acked/smallfile.keep" "$RIG_DIR/acked/smallfile.log"
	fi
}

# _zl_wait_serving NODE TRIES: polls NODE's label every 50 ms until it serves.
_zl_wait_serving() {
	local node=$1 tries=$2 i got=""
	for ((i = 0; i < tries; i++)); do
		got=$(rig_mirror_label "$node" web 2>/dev/null || true)
		[[ "$got" =~ ^(ALONE|PRIM)/running$ ]] && return 0
		sleep 0.05
	done
	rig_fail "$node: web is '$got', expected it to serve after the crash of its peer"
}

# The campaign: crash the primary at a random point, check the survivor, bring
# the crashed node back under load, repeat with the roles swapped.
test_crash_primary_campaign() {
	_zl_pair_up
	local k p=n1 s=n2 t0 outage kinds delay
	kinds=$(_zl_random_kinds)
	# shellcheck disable=SC2086
	_zl_start_writers "$p" $kinds
	for ((k = 1; k <= ZL_CAMPAIGN_KILLS; k++)); do
		_zl_wait_writing
		# Random point: 0 .. 2.5 s after every writer is writing again (the
		# writers started while the peer was down and writing during its resync).
		delay=$((RANDOM % 2500))
		sleep "$((delay / 1000)).$(printf '%03d' $((delay % 1000)))"
		_zl_writers_healthy
		t0=$(_zl_now_ms)
		_zl_crash "$p"
		_zl_wait_serving "$s" 200
		outage=$(($(_zl_now_ms) - t0))
		[ "$(rig_vip_holders)" = "$s" ] || rig_fail "VIP holders after the crash of $p: '$(rig_vip_holders)'"
		_zl_verify "$s" || rig_fail "kill $k/$ZL_TOTAL: $p -> $s lost acknowledged records (seed $ZL_SEED)"
		printf '# kill %d/%d: %s -> %s, acked %s records, missing %s, outage %d ms (+%d by %s)\n' \
			"$k" "$ZL_TOTAL" "$p" "$s" "$ZL_ACKED" "$ZL_MISSING" "$outage" "$ZL_NEW" "${kinds// /,}" >&2
		# The survivor keeps writing while the crashed node returns and resyncs.
		kinds=$(_zl_random_kinds)
		# shellcheck disable=SC2086
		_zl_start_writers "$s" $kinds
		_zl_restore "$p"
		rig_wait_label "$p" web 'SECOND/in-sync' 600
		rig_wait_label "$s" web 'PRIM/running' 100
		if ((k % 5 == 0 || k == ZL_CAMPAIGN_KILLS)); then
			_zl_checkpoint "$s" "$p"
			kinds=$(_zl_random_kinds)
			# shellcheck disable=SC2086
			_zl_start_writers "$s" $kinds
		fi
		local tmp=$p; p=$s; s=$tmp
	done
	_zl_stop_writers
}

# _zl_big_change NODE MIB: new random content for big.bin through NODE's mount.
_zl_big_change() {
	rig_in_skd "$1" dd if=/dev/urandom of="$RIG_DIR/$1/data/big.bin" bs=1M count="$2" conv=fsync status=none
}

# Crash the primary while the returning peer is mid-resync (its link slowed by
# tbf so the resync lasts): the peer must go WAIT and never serve; when the
# primary returns, every acked record is there and the peer resyncs again.
test_crash_primary_while_peer_resyncs() {
	_zl_pair_up
	local i k p=n1 s=n2 t0 ts outage kinds delay label j
	kinds=$(_zl_random_kinds)
	# shellcheck disable=SC2086
	_zl_start_writers "$p" $kinds
	for ((i = 1; i <= ZL_RESYNC_KILLS; i++)); do
		k=$((ZL_CAMPAIGN_KILLS + i))
		_zl_wait_writing
		# The secondary crashes; the primary goes on alone and changes a lot.
		_zl_crash "$s"
		_zl_wait_serving "$p" 200
		_zl_big_change "$p" 16
		# The secondary returns over a slow link (24 Mbit/s toward it).
		rig_exec sw tc qdisc add dev "${s}e0" root tbf rate 24mbit burst 32kb latency 200ms
		_zl_restore "$s"
		rig_wait_label "$s" web 'SECOND/resyncing' 300
		ts=$(_zl_now_ms)
		# A random point of the resync (it lasts about 6 s at this rate).
		delay=$((RANDOM % 4000))
		sleep "$((delay / 1000)).$(printf '%03d' $((delay % 1000)))"
		label=$(rig_mirror_label "$s" web)
		[ "$label" = SECOND/resyncing ] || rig_fail "resync finished before the crash ($label): not a mid-resync kill"
		_zl_writers_healthy
		t0=$(_zl_now_ms)
		_zl_crash "$p"
		# The half-synced node must not serve: it waits for the old primary.
		for ((j = 0; j < 25; j++)); do
			label=$(rig_mirror_label "$s" web || true)
			[[ "$label" =~ ^(ALONE|PRIM)/ ]] && rig_fail "$s serves with half-resynced data ($label)"
			[ -z "$(rig_vip_holders)" ] || rig_fail "VIP held while only a half-resynced node runs"
			sleep 0.1
		done
		[[ "$label" =~ ^WAIT/ ]] || rig_fail "$s is '$label' after its source crashed mid-resync, expected WAIT"
		rig_exec sw tc qdisc del dev "${s}e0" root
		_zl_restore "$p"
		_zl_wait_serving "$p" 400
		outage=$(($(_zl_now_ms) - t0))
		_zl_verify "$p" || rig_fail "kill $k/$ZL_TOTAL: acked records lost across a crash during resync (seed $ZL_SEED)"
		printf '# kill %d/%d: %s -> %s (peer %s ms into its resync, stayed %s), acked %s records, missing %s, outage %d ms (until %s returned)\n' \
			"$k" "$ZL_TOTAL" "$p" "$p" "$((t0 - ts))" "$label" "$ZL_ACKED" "$ZL_MISSING" "$outage" "$p" >&2
		kinds=$(_zl_random_kinds)
		# shellcheck disable=SC2086
		_zl_start_writers "$p" $kinds
		rig_wait_label "$s" web 'SECOND/in-sync' 600
		rig_wait_label "$p" web 'PRIM/running' 100
		_zl_checkpoint "$p" "$s"
		# shellcheck disable=SC2086
		_zl_start_writers "$p" $kinds
	done
	_zl_stop_writers
}

# On failure: each node's skd log tail (resync rounds, errors) goes to stderr,
# and the whole logs are kept in ZL_KEEP_LOGS (a directory) when it is set.
_zl_dump() {
	local n
	for n in n1 n2; do
		[ -f "$RIG_DIR/$n/skd.log" ] || continue
		echo "# --- $n skd.log (last 40 lines)" >&2
		tail -40 "$RIG_DIR/$n/skd.log" | sed 's/^/# /' >&2
		if [ -n "${ZL_KEEP_LOGS:-}" ]; then
			mkdir -p "$ZL_KEEP_LOGS"
			cp "$RIG_DIR/$n/skd.log" "$ZL_KEEP_LOGS/$n-skd.log"
		fi
	done
	# The writers' files as each node's disk holds them (size, first difference).
	for f in "$RIG_DIR"/n1/data/*.dat; do
		[ -f "$f" ] || continue
		f=${f##*/}
		echo "# $f: n1 $(stat -c %s "$RIG_DIR/n1/data/$f" 2>/dev/null) bytes, n2 $(stat -c %s "$RIG_DIR/n2/data/$f" 2>/dev/null) bytes; $(cmp "$RIG_DIR/n1/data/$f" "$RIG_DIR/n2/data/$f" 2>&1 | head -1)" >&2
	done
	if [ -n "${ZL_KEEP_LOGS:-}" ]; then
		cp "$RIG_DIR/writers.log" "$ZL_KEEP_LOGS/" 2>/dev/null || true
		cp -r "$RIG_DIR/acked" "$ZL_KEEP_LOGS/" 2>/dev/null || true
		for n in n1 n2; do
			mkdir -p "$ZL_KEEP_LOGS/$n-data"
			cp "$RIG_DIR"/$n/data/*.dat "$ZL_KEEP_LOGS/$n-data/" 2>/dev/null || true
		done
	fi
}
RIG_ON_FAILURE=_zl_dump

rig_main "$@"
