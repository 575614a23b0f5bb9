# shellcheck shell=bash
# Sourced by the MariaDB module's hook scripts: reads app.env, fills in the defaults and
# holds the helpers. The scripts run as root in skd's mount namespace (where DATADIR is
# the replicating over-mount on the primary); mariadbd switches to DB_OS_USER itself.

MODULE_DIR=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../app.env
. "$MODULE_DIR/app.env"

DB_OS_USER=${DB_OS_USER:-mysql}
SOCKET=${SOCKET:-/run/mysqld/mysqld-sk.sock}
START_TIMEOUT=${START_TIMEOUT:-300}
STOP_TIMEOUT=${STOP_TIMEOUT:-120}
DB_LOG=${DB_LOG:-$SK_STATE_DIR/mariadb.log}
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
ADMIN=$(command -v mariadb-admin || echo /usr/bin/mariadb-admin)
# mariadbd's pid (= its process group: started with setsid).
APP_PID_FILE=$SK_STATE_DIR/app.pid

db_setup_problems() {
	[ -n "${DATADIR:-}" ] || echo "DATADIR is not set in $MODULE_DIR/app.env"
	[ -n "${PORT:-}" ] || echo "PORT is not set in $MODULE_DIR/app.env"
	[ -x "$MARIADBD" ] || echo "no mariadbd (install mariadb-server)"
	id -u "$DB_OS_USER" >/dev/null 2>&1 || echo "no OS user '$DB_OS_USER' (DB_OS_USER in app.env)"
	grep -qF "\"${DATADIR:-}\"" "$MODULE_DIR/module.json" ||
		echo "DATADIR $DATADIR is not a replicated dir in module.json (replication -> dirs)"
	[ -d "${DATADIR:-/nonexistent}" ] || echo "DATADIR $DATADIR does not exist (create it on both nodes)"
	[ -z "${DEFAULTS_FILE:-}" ] || [ -r "$DEFAULTS_FILE" ] || echo "DEFAULTS_FILE $DEFAULTS_FILE is not readable"
}

# The pid of the mariadbd started here, if it still runs.
db_running_pid() {
	local pid
	[ -f "$APP_PID_FILE" ] || return 1
	pid=$(cat "$APP_PID_FILE")
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mariadbd ] || return 1
	printf '%s' "$pid"
}

# Does the server answer on its socket? (root connects through unix_socket auth)
db_ping() { "$ADMIN" --no-defaults --socket="$SOCKET" --user=root --connect-timeout=2 ping >/dev/null 2>&1; }

# Kills what is left of the last server started here.
db_kill_leftovers() {
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
