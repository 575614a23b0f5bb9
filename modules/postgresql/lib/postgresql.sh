# shellcheck shell=bash
# Sourced by the PostgreSQL module's hook scripts: reads app.env, fills in the defaults
# and holds the helpers. The scripts run as root in skd's mount namespace (where PGDATA is
# the replicating over-mount on the primary); the server runs as PG_OS_USER.

MODULE_DIR=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../app.env
. "$MODULE_DIR/app.env"

PGDATA=${PGDATA:-}
PGDATA=${PGDATA%/}
PG_OS_USER=${PG_OS_USER:-postgres}
PG_SOCKET_DIR=${PG_SOCKET_DIR:-/var/run/postgresql}
START_TIMEOUT=${START_TIMEOUT:-300}
STOP_TIMEOUT=${STOP_TIMEOUT:-60}
if [ -z "${PG_BIN:-}" ]; then
	PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
PG_LOG=${PG_LOG:-$SK_STATE_DIR/postgresql.log}
# The postmaster's pid (= its process group: pg_ctl starts it in a new session).
APP_PID_FILE=$SK_STATE_DIR/app.pid

pg_as_user() { runuser -u "$PG_OS_USER" -- "$@"; }

# What is wrong with the settings, one line each (nothing when they are usable).
pg_setup_problems() {
	[ -n "${PGDATA:-}" ] || echo "PGDATA is not set in $MODULE_DIR/app.env"
	[ -n "${PGPORT:-}" ] || echo "PGPORT is not set in $MODULE_DIR/app.env"
	[ -x "$PG_BIN/pg_ctl" ] || echo "no pg_ctl in '$PG_BIN' (install postgresql or set PG_BIN in app.env)"
	id -u "$PG_OS_USER" >/dev/null 2>&1 || echo "no OS user '$PG_OS_USER' (PG_OS_USER in app.env)"
	grep -qF "\"${PGDATA:-}\"" "$MODULE_DIR/module.json" ||
		echo "PGDATA $PGDATA is not a replicated dir in module.json (replication -> dirs)"
	[ -d "${PGDATA:-/nonexistent}" ] || echo "PGDATA $PGDATA does not exist (create it on both nodes)"
	[ -d "$PG_SOCKET_DIR" ] || echo "PG_SOCKET_DIR $PG_SOCKET_DIR does not exist"
}

# listen_addresses: PG_LISTEN, or localhost and the VIPs (SK_VIPS: "addr/len addr/len").
pg_listen() {
	if [ -n "${PG_LISTEN:-}" ]; then
		printf '%s' "$PG_LISTEN"
		return
	fi
	local out=localhost v
	for v in ${SK_VIPS:-}; do out+=",${v%/*}"; done
	printf '%s' "$out"
}

# Prints the pid of a postmaster running on PGDATA on this node. postmaster.pid is
# replicated from the peer and survives crashes, so its pid counts only if that process
# is a postgres whose working directory is PGDATA.
pg_running_pid() {
	local pid
	[ -f "$PGDATA/postmaster.pid" ] || return 1
	pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null) || return 1
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
	[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$PGDATA" ] || return 1
	printf '%s' "$pid"
}

# Kills what is left of the last server started here (backends whose postmaster died).
pg_kill_leftovers() {
	local pgid
	[ -f "$APP_PID_FILE" ] || return 0
	pgid=$(cat "$APP_PID_FILE")
	if [[ "$pgid" =~ ^[0-9]+$ ]] && kill -0 -- "-$pgid" 2>/dev/null; then
		echo "killing leftover processes of group $pgid"
		kill -KILL -- "-$pgid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.1; done
	fi
	rm -f "$APP_PID_FILE"
}
