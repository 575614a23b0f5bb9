# shellcheck shell=bash
# Sourced by the nginx module's hook scripts: reads app.env and holds the helpers. nginx
# runs with its prefix, pid file and generated configuration in the module's state dir.

MODULE_DIR=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../app.env
. "$MODULE_DIR/app.env"

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
PREFIX=$SK_STATE_DIR/nginx
PID_FILE=$PREFIX/nginx.pid
# The master's pid (= its process group: nginx puts its master in a new session).
APP_PID_FILE=$SK_STATE_DIR/app.pid

nginx_setup_problems() {
	[ -x "$NGINX" ] || echo "no nginx (install the nginx package)"
	[ -n "${PORT:-}" ] || echo "PORT is not set in $MODULE_DIR/app.env"
	[ -z "${NGINX_CONF:-}" ] || [ -r "$NGINX_CONF" ] || echo "NGINX_CONF $NGINX_CONF is not readable"
	[ -z "${DOC_ROOT:-}" ] || [ -d "$DOC_ROOT" ] || echo "DOC_ROOT $DOC_ROOT is not a directory"
	[ -n "${NGINX_CONF:-}" ] || id -u "${NGINX_USER:-www-data}" >/dev/null 2>&1 ||
		echo "no OS user '${NGINX_USER:-www-data}' (NGINX_USER in app.env)"
}

# Prints the configuration file to use, writing the generated one first when needed.
nginx_conf() {
	local conf=$PREFIX/nginx.conf site
	if [ -n "${NGINX_CONF:-}" ]; then
		printf '%s' "$NGINX_CONF"
		return
	fi
	mkdir -p "$PREFIX"
	if [ -n "${DOC_ROOT:-}" ]; then
		site="root $DOC_ROOT;"
	else
		site="location / { default_type text/plain; return 200 \"$SK_NODE\\n\"; }"
	fi
	cat >"$conf" <<CONF
# Written by the SK nginx module ($SK_MODULE on $SK_NODE); edit app.env, not this file.
user ${NGINX_USER:-www-data};
worker_processes ${WORKERS:-auto};
error_log $PREFIX/error.log;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_timeout 30;
	server {
		listen $PORT reuseport backlog=4096;
		add_header X-SK-Node $SK_NODE always;
		$site
	}
}
CONF
	printf '%s' "$conf"
}

nginx_running_pid() {
	local pid
	[ -f "$PID_FILE" ] || return 1
	pid=$(cat "$PID_FILE")
	[[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nginx ] || return 1
	printf '%s' "$pid"
}

nginx_kill_leftovers() {
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
