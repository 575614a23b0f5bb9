#!/usr/bin/env bash
# The shipped application modules (modules/postgresql, mariadb, nginx, container) run
# with the real applications in the namespace rig: zero-loss failovers of PostgreSQL and
# MariaDB under a committing client (power cut of the primary, alternately on both
# nodes, each data dir identical to the other at the end), an nginx farm under curl and
# wrk clients (stateless and affinity) losing a node, a podman container moved with its
# volume, and every module checked by `skctl config check` (a broken one refused).
# A test is skipped only when its application is not installed.
. "$(dirname "$0")/lib/rig.sh"
. "$(dirname "$0")/lib/mirror.sh"
. "$(dirname "$0")/lib/farm.sh"
. "$(dirname "$0")/lib/apps.sh"

# ---------------------------------------------------------------- PostgreSQL

_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# Two nodes, one client; the module installed as shipped but for the per-node paths;
# a cluster made by initdb on n1 with the test's role and table; n1 PRIM, n2 in sync.
_pg_up() {
	PG_BIN=$(_pg_bin)
	apps_need "$PG_BIN/pg_ctl" postgresql
	rig_setup 2 1
	rig_write_cluster
	chmod 711 "$RIG_DIR"	# the postgres user reaches its dirs below
	local node
	for node in n1 n2; do
		install -d -o postgres -g postgres -m 700 "$RIG_DIR/$node/pgdata"
		install -d -o postgres -g postgres -m 755 "$RIG_DIR/$node/pgsock"
		apps_install postgresql "$node" "m['replication']['dirs'] = [{'path': rig + '/' + node + '/pgdata'}]
$APPS_SLOW_CHECKERS"
		apps_set_env "$RIG_DIR/$node/modules/postgresql/app.env" PGDATA "$RIG_DIR/$node/pgdata"
		apps_set_env "$RIG_DIR/$node/modules/postgresql/app.env" PG_SOCKET_DIR "$RIG_DIR/$node/pgsock"
	done
	# What the walk-through in the README has the operator do on the first node.
	runuser -u postgres -- "$PG_BIN/initdb" -D "$RIG_DIR/n1/pgdata" --auth-local=peer \
		--auth-host=scram-sha-256 -E UTF8 --no-instructions >"$RIG_DIR/initdb.log" 2>&1 ||
		{ cat "$RIG_DIR/initdb.log" >&2; rig_fail "initdb failed"; }
	echo "host all all 198.18.0.0/15 scram-sha-256" >>"$RIG_DIR/n1/pgdata/pg_hba.conf"
	printf '%s\n' "CREATE ROLE sk LOGIN PASSWORD 'sk-test';" "CREATE DATABASE skt OWNER sk;" |
		runuser -u postgres -- "$PG_BIN/postgres" --single -D "$RIG_DIR/n1/pgdata" postgres >/dev/null 2>&1
	printf '%s\n' "CREATE TABLE t (id bigint PRIMARY KEY, pad text);" "ALTER TABLE t OWNER TO sk;" |
		runuser -u postgres -- "$PG_BIN/postgres" --single -D "$RIG_DIR/n1/pgdata" skt >/dev/null 2>&1
	rig_start_pair postgresql 600 900
}

test_postgresql_zero_loss_across_failovers() {
	_pg_up
	apps_client_start pg 5432
	# Three power cuts of the primary: n1, then n2, then n1 again.
	apps_failover_cycle postgresql n1 n2
	apps_failover_cycle postgresql n2 n1
	apps_failover_cycle postgresql n1 n2
	apps_wait_acks 30
	apps_client_stop
	local out; out=$(apps_check_acked)
	rig_log "client: $(cat "$RIG_DIR/client.json"); final check: $out"
	# Every start after a crash ran PostgreSQL's own recovery, no manual step.
	grep -q 'database system was interrupted\|was not properly shut down' "$RIG_DIR/n2/state/postgresql/postgresql.log" ||
		rig_fail "no crash recovery in n2's server log"
	# Stop the server cleanly on the primary (n2), then both data dirs must be identical.
	rig_in_skd n2 runuser -u postgres -- "$PG_BIN/pg_ctl" stop -D "$RIG_DIR/n2/pgdata" -m fast -w -t 60 >/dev/null
	apps_quiesce_and_compare n2 n1 "$RIG_DIR/n2/pgdata" "$RIG_DIR/n1/pgdata"
	local node
	for node in n1 n2; do
		"$PG_BIN/pg_controldata" "$RIG_DIR/$node/pgdata" | grep -q 'cluster state: *shut down$' ||
			rig_fail "$node: $("$PG_BIN/pg_controldata" "$RIG_DIR/$node/pgdata" | grep 'cluster state')"
	done
}

# ---------------------------------------------------------------- MariaDB

_maria_up() {
	apps_need /usr/sbin/mariadbd mariadb-server
	rig_setup 2 1
	rig_write_cluster
	chmod 711 "$RIG_DIR"
	local node dir=$RIG_DIR/n1/mydata sock=$RIG_DIR/n1/mysock/init.sock pid
	for node in n1 n2; do
		install -d -o mysql -g mysql -m 700 "$RIG_DIR/$node/mydata"
		install -d -o mysql -g mysql -m 755 "$RIG_DIR/$node/mysock"
		apps_install mariadb "$node" "
m['vips'] = [{'address': '$APPS_VIP/24', 'interface': 'eth0'}]
m['replication']['dirs'] = [{'path': rig + '/' + node + '/mydata'}]
$APPS_SLOW_CHECKERS"
		apps_set_env "$RIG_DIR/$node/modules/mariadb/app.env" DATADIR "$RIG_DIR/$node/mydata"
		apps_set_env "$RIG_DIR/$node/modules/mariadb/app.env" SOCKET "$RIG_DIR/$node/mysock/mysqld.sock"
	done
	# What an operator does once on the first node: a database, a user, a table.
	mariadb-install-db --no-defaults --user=mysql --datadir="$dir" --skip-test-db \
		--auth-root-authentication-method=socket >"$RIG_DIR/install-db.log" 2>&1 ||
		{ tail -20 "$RIG_DIR/install-db.log" >&2; rig_fail "mariadb-install-db failed"; }
	/usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$dir" --socket="$sock" --skip-networking \
		--pid-file="$dir/init.pid" >"$RIG_DIR/init-mariadbd.log" 2>&1 &
	pid=$!
	echo "$pid init-mariadbd" >>"$RIG_PIDS_FILE"
	rig_wait_for 300 mariadb-admin --no-defaults --socket="$sock" --user=root ping >/dev/null ||
		{ tail "$RIG_DIR/init-mariadbd.log" >&2; rig_fail "the first mariadbd never answered"; }
	mariadb --no-defaults --socket="$sock" --user=root <<'SQL'
CREATE DATABASE skt;
CREATE USER 'sk'@'%' IDENTIFIED BY 'sk-test';
GRANT ALL ON skt.* TO 'sk'@'%';
CREATE TABLE skt.t (id BIGINT PRIMARY KEY, pad TEXT) ENGINE=InnoDB;
SQL
	kill -TERM "$pid"
	rig_wait_for 300 _rig_gone "$pid" || rig_fail "the first mariadbd did not stop"
	wait "$pid" 2>/dev/null || true
	rig_start_pair mariadb 600 900
}

test_mariadb_zero_loss_across_failovers() {
	_maria_up
	apps_client_start mariadb 3306
	apps_failover_cycle mariadb n1 n2
	apps_failover_cycle mariadb n2 n1
	apps_wait_acks 30
	apps_client_stop
	local out; out=$(apps_check_acked)
	rig_log "client: $(cat "$RIG_DIR/client.json"); final check: $out"
	grep -qi 'crash recovery\|Starting final batch to recover\|recovery' "$RIG_DIR/n2/state/mariadb/mariadb.log" ||
		rig_fail "no InnoDB crash recovery in n2's server log"
	# A clean shutdown on the primary (n1), then both data dirs must be identical.
	local pid; pid=$(cat "$RIG_DIR/n1/state/mariadb/app.pid")
	kill -TERM "$pid"
	rig_wait_for 600 _rig_gone "$pid" || rig_fail "mariadbd $pid did not stop"
	apps_quiesce_and_compare n1 n2 "$RIG_DIR/n1/mydata" "$RIG_DIR/n2/mydata"
}

# ---------------------------------------------------------------- nginx farm

NGINX_IPS=4	# source addresses per client namespace

# _nginx_up HASH: three nodes serving the shipped module with the rig's addresses.
_nginx_up() {
	local hash=$1 node
	apps_need /usr/sbin/nginx nginx
	rig_setup 3 2
	rig_write_cluster
	for node in n1 n2 n3; do
		apps_install nginx "$node" "
m['vips'] = [{'address': '$FARM_VIP/24'}]
m['farm']['hash'] = '$hash'"
	done
	for node in n1 n2 n3; do rig_start_skd "$node"; done
	for node in n1 n2 n3; do rig_skctl "$node" start -m nginx >/dev/null; done
	for node in n1 n2 n3; do farm_wait_label "$node" nginx 'UP/running' 300; done
	farm_wait_agreed nginx "n1 n2 n3" n1 n2 n3
	NGINX_C1=$(farm_client_ips 1 "$NGINX_IPS")
	NGINX_C2=$(farm_client_ips 2 "$NGINX_IPS")
}

# _curl_loops CLIENT "IPS" OUT: one curl loop per source address until curl.stop; each
# request logs "src start_ms end_ms curl_exit body".
_curl_loops() {
	local client=$1 ips=$2 out=$3 ip
	for ip in $ips; do
		rig_exec "$client" bash -c '
			stop=$1 ip=$2 vip=$3
			while [ ! -e "$stop" ]; do
				t0=${EPOCHREALTIME/./}
				body=$(curl -s -f --interface "$ip" --connect-timeout 1 -m 2 "http://$vip/" 2>/dev/null)
				rc=$?
				t1=${EPOCHREALTIME/./}
				echo "$ip $((t0 / 1000)) $((t1 / 1000)) $rc ${body:--}"
			done' _ "$RIG_DIR/curl.stop" "$ip" "$FARM_VIP" >>"$out.$ip" &
		echo "$! curl-$ip" >>"$RIG_PIDS_FILE"
		CURL_PIDS+=" $!"
	done
}

_curl_stop() {
	local pid
	touch "$RIG_DIR/curl.stop"
	for pid in $CURL_PIDS; do
		rig_wait_for 50 _rig_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	cat "$RIG_DIR"/curl.log.* >"$RIG_DIR/curl.log"
}

# _nginx_crash_run HASH: curl loops from 8 addresses, one node crashed; checks that
# nothing fails once the survivors have taken over its buckets (detection window), and
# prints "src node-before node-after" per address for the caller's own checks.
_nginx_crash_run() {
	local hash=$1 victim=n2 t_crash t_window fails late total
	_nginx_up "$hash"
	CURL_PIDS=""
	rm -f "$RIG_DIR/curl.stop"
	_curl_loops c1 "$NGINX_C1" "$RIG_DIR/curl.log"
	_curl_loops c2 "$NGINX_C2" "$RIG_DIR/curl.log"
	sleep 2
	t_crash=$(date +%s%3N)
	farm_crash_node "$victim" nginx
	farm_wait_agreed nginx "n1 n3" n1 n3
	sleep 2
	_curl_stop
	total=$(wc -l <"$RIG_DIR/curl.log")
	fails=$(awk '$4 != 0' "$RIG_DIR/curl.log" | wc -l)
	# Detection window: the heartbeat timeout plus 300 ms for the takeover; a request that
	# began before its end may have been in flight on the killed node.
	t_window=$((t_crash + ${RIG_HB_TIMEOUT:-500} + 300))
	late=$(awk -v t="$t_window" '$4 != 0 && $2 >= t' "$RIG_DIR/curl.log")
	[ -z "$late" ] || rig_fail "requests failed after the detection window: $(head -5 <<<"$late")"
	awk -v t="$t_crash" '$4 == 0 && $2 < t' "$RIG_DIR/curl.log" | grep -qv ' -$' ||
		rig_fail "no request succeeded before the crash"
	! awk '$4 == 0 && $5 !~ /^n[123]$/' "$RIG_DIR/curl.log" | grep -q . ||
		rig_fail "answers that are no node name: $(awk '$4 == 0 && $5 !~ /^n[123]$/' "$RIG_DIR/curl.log" | head -3)"
	! awk -v t="$t_window" '$4 == 0 && $2 >= t && $5 == "n2"' "$RIG_DIR/curl.log" | grep -q . ||
		rig_fail "the crashed n2 still answered after the window"
	rig_log "$hash: $total requests, $fails failed, all of them begun within $((${RIG_HB_TIMEOUT:-500} + 300)) ms after the crash"
	NGINX_T_CRASH=$t_crash
	NGINX_T_WINDOW=$t_window
}

# Per source address: the set of nodes that answered before the crash / after the window.
_nodes_of() { # ip before|after
	local cmp; [ "$2" = before ] && cmp='$3 < t' || cmp='$2 >= w'
	awk -v ip="$1" -v t="$NGINX_T_CRASH" -v w="$NGINX_T_WINDOW" "\$1 == ip && \$4 == 0 && $cmp { print \$5 }" \
		"$RIG_DIR/curl.log" | sort -u | tr '\n' ' '
}

test_nginx_stateless_farm_survives_a_node_crash() {
	_nginx_crash_run ip_port
	local ip spread=0
	for ip in $NGINX_C1 $NGINX_C2; do
		[ "$(_nodes_of "$ip" before | wc -w)" -ge 2 ] && spread=$((spread + 1))
	done
	# Stateless: connections of one client spread over the nodes.
	[ "$spread" -ge 6 ] || rig_fail "only $spread of 8 addresses reached more than one node (hash ip_port)"
	# Throughput with wrk (many connections from one address) after the crash: no error.
	if command -v wrk >/dev/null; then
		rig_exec c1 wrk -t 2 -c 32 -d 3 --timeout 2s "http://$FARM_VIP/" >"$RIG_DIR/wrk.txt" 2>&1 ||
			rig_fail "wrk failed: $(cat "$RIG_DIR/wrk.txt")"
		! grep -q 'Socket errors\|Non-2xx' "$RIG_DIR/wrk.txt" || rig_fail "wrk saw errors: $(cat "$RIG_DIR/wrk.txt")"
		rig_log "wrk on the two survivors: $(grep -E 'Requests/sec' "$RIG_DIR/wrk.txt" | tr -s ' ')"
	fi
}

test_nginx_affinity_farm_keeps_clients_on_their_node() {
	_nginx_crash_run ip
	local ip before after moved=0
	for ip in $NGINX_C1 $NGINX_C2; do
		before=$(_nodes_of "$ip" before)
		after=$(_nodes_of "$ip" after)
		[ "$(wc -w <<<"$before")" -eq 1 ] || rig_fail "$ip was served by '$before' before the crash (affinity)"
		[ "$(wc -w <<<"$after")" -eq 1 ] || rig_fail "$ip was served by '$after' after the crash (affinity)"
		if [ "$before" = "n2 " ]; then
			moved=$((moved + 1))
		else
			[ "$after" = "$before" ] || rig_fail "$ip moved from $before to $after although its node lives"
		fi
	done
	rig_log "affinity: every address stayed on one node; $moved moved off the crashed n2"
}

# ---------------------------------------------------------------- podman container

APPS_IMAGE=localhost/sk-apps-test:busybox

# A local image from scratch files (no registry here): busybox's sh and httpd.
_container_image() {
	local root=$RIG_DIR/rootfs a
	mkdir -p "$root/bin" "$root/data" "$root/tmp"
	cp /bin/busybox "$root/bin/busybox"
	for a in sh echo cat cp date sync httpd sleep; do ln -s busybox "$root/bin/$a"; done
	tar -C "$root" -cf "$RIG_DIR/rootfs.tar" .
	podman import "$RIG_DIR/rootfs.tar" "$APPS_IMAGE" >"$RIG_DIR/image.id" 2>"$RIG_DIR/import.err" ||
		{ cat "$RIG_DIR/import.err" >&2; rig_fail "podman import failed"; }
	apps_on_cleanup "podman rmi -f $(tail -n 1 "$RIG_DIR/image.id")"
}

# skd with a cgroup file system in its mount namespace: `ip netns exec` remounts /sys, which
# hides the host's cgroup mounts from everything skd starts (a real node has them).
_ct_start_skd() {
	rig_start_skd "$1"
	rig_in_skd "$1" mount -t cgroup2 none /sys/fs/cgroup
}

_ct_answer() { rig_exec c1 curl -s -f --connect-timeout 1 -m 2 "http://$APPS_VIP:8080/starts" 2>/dev/null | awk '{print $1}' | tr '\n' ' '; }
_ct_answer_is() { [ "$(_ct_answer)" = "$1" ]; }

test_container_moves_with_its_volume() {
	apps_need /usr/bin/podman podman
	[ -x /bin/busybox ] || rig_skip "/bin/busybox missing (Debian package busybox-static)"
	rig_setup 2 1
	rig_write_cluster
	apps_on_cleanup "podman rm -f --ignore sk-container-n1 sk-container-n2"
	_container_image
	local node env
	for node in n1 n2; do
		mkdir -p "$RIG_DIR/$node/ctdata"
		apps_install container "$node" "
m['vips'] = [{'address': '$APPS_VIP/24', 'interface': 'eth0'}]
m['replication']['dirs'] = [{'path': rig + '/' + node + '/ctdata'}]"
		env=$RIG_DIR/$node/modules/container/app.env
		apps_set_env "$env" IMAGE "$APPS_IMAGE"
		apps_set_env "$env" VOLUMES "$RIG_DIR/$node/ctdata:/data"
		apps_set_env "$env" NAME "sk-container-$node"
		# Rig only: podman's default limits exceed this machine's hard limits, and the
		# node's cgroup file system (below) has no controllers to give the container.
		apps_set_env "$env" RUN_OPTIONS "--cgroups disabled --ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
		# Each start appends "<node> <time>" to /data/starts and fsyncs it, then serves /data.
		apps_set_env "$env" COMMAND "sh -c 'echo \$SK_NODE \$(date +%s) >>/data/starts && sync /data/starts && exec httpd -f -p 8080 -h /data'"
	done
	_ct_start_skd n1
	_ct_start_skd n2
	rig_skctl n2 start -m container >/dev/null
	rig_skctl n1 prim -m container >/dev/null
	rig_wait_label n1 container 'PRIM/running' 600
	rig_wait_label n2 container 'SECOND/in-sync' 600
	rig_wait_for 100 _ct_answer_is "n1 " || rig_fail "the container on n1 serves '$(_ct_answer)'"
	# Power cut of n1: the container starts on n2 over the replicated volume.
	local conmon cpid
	read -r conmon cpid < <(podman inspect -f '{{.State.ConmonPid}} {{.State.Pid}}' sk-container-n1)
	kill -KILL "$conmon" "$cpid"
	apps_crash n1 container
	rig_wait_label n2 container 'ALONE/running' 600
	rig_wait_for 100 _ct_answer_is "n1 n2 " || rig_fail "after the failover the container serves '$(_ct_answer)'"
	# n1 returns, resyncs; a planned swap moves the container back to it.
	rig_exec n1 ip link set eth0 up
	_ct_start_skd n1
	rig_wait_label n1 container 'SECOND/in-sync' 600
	rig_skctl n1 swap -m container >/dev/null
	rig_wait_label n1 container 'PRIM/running' 600
	rig_wait_label n2 container 'SECOND/in-sync' 600
	rig_wait_for 100 _ct_answer_is "n1 n2 n1 " || rig_fail "after the swap the container serves '$(_ct_answer)'"
	! podman container exists sk-container-n2 || rig_fail "n2's container still exists after the swap"
	cmp "$RIG_DIR/n1/ctdata/starts" "$RIG_DIR/n2/ctdata/starts" || rig_fail "the volume differs between the nodes"
	rig_log "container volume after crash + swap: $(_ct_answer)"
}

# ---------------------------------------------------------------- configuration

test_shipped_modules_pass_config_check_and_a_broken_one_is_refused() {
	rig_setup 3 0
	rig_write_cluster
	local cluster=$RIG_DIR/n1/cluster.json m out rc=0
	for m in postgresql mariadb nginx container; do
		out=$("$SKCTL" config check "$cluster" "$SK_SRC_DIR/modules/$m/module.json" 2>&1) ||
			rig_fail "modules/$m refused: $out"
	done
	# A broken copy: an unknown checker action and a port out of range.
	mkdir -p "$RIG_DIR/broken"
	cp -a "$SK_SRC_DIR/modules/postgresql" "$RIG_DIR/broken/postgresql"
	sed -i 's/"action": "restart", "interval_ms": 2000/"action": "reboot", "interval_ms": 2000/; s/"port": 5432/"port": 65536/' \
		"$RIG_DIR/broken/postgresql/module.json"
	out=$("$SKCTL" config check "$cluster" "$RIG_DIR/broken/postgresql/module.json" 2>&1) || rc=$?
	[ "$rc" -eq 2 ] || rig_fail "broken module: exit $rc, expected 2: $out"
	if ! grep -q '/checkers/1/action' <<<"$out" || ! grep -q 'reboot' <<<"$out"; then
		rig_fail "the bad action is not named: $out"
	fi
	grep -q '/checkers/1/port' <<<"$out" || rig_fail "the bad port is not named: $out"
	rig_log "refused as expected: $(tr '\n' ' ' <<<"$out")"
	# Where skctl can install modules: the broken one is refused and nothing is installed.
	if "$SKCTL" module install --help 2>&1 | grep -q SOURCE; then
		rc=0
		out=$("$SKCTL" module install --config "$cluster" "$RIG_DIR/broken/postgresql" 2>&1) || rc=$?
		[ "$rc" -ne 0 ] || rig_fail "module install accepted the broken module: $out"
		grep -q 'reboot' <<<"$out" || rig_fail "module install did not say why: $out"
		[ ! -e "$RIG_DIR/n1/modules/postgresql" ] || rig_fail "the broken module was installed"
		for m in postgresql mariadb nginx container; do
			out=$("$SKCTL" module install --config "$cluster" "$SK_SRC_DIR/modules/$m" 2>&1) ||
				rig_fail "module install refused modules/$m: $out"
		done
		rig_log "skctl module install: the broken module refused, the four shipped ones installed"
	else
		rig_log "this skctl has no 'module install': only config check exercised"
	fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then rig_main "$@"; fi
