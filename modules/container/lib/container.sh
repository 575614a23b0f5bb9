# shellcheck shell=bash
# Sourced by the container module's hook scripts: reads app.env and holds the helpers.
# The scripts run in skd's mount namespace, so the volumes podman binds are the
# replicating over-mounts on the primary. The container uses the host network.

MODULE_DIR=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../app.env
. "$MODULE_DIR/app.env"

NAME=${NAME:-sk-$SK_MODULE}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}
read -r -a PODMAN <<<"$(command -v podman || echo /usr/bin/podman) ${PODMAN_OPTIONS:-}"
# conmon's pid (the container's monitor), for a test's crash and for the logs.
# shellcheck disable=SC2034
APP_PID_FILE=$SK_STATE_DIR/app.pid

ct_setup_problems() {
	local v
	[ -x "${PODMAN[0]}" ] || { echo "no podman (install the podman package)"; return; }
	[ -n "${IMAGE:-}" ] || echo "IMAGE is not set in $MODULE_DIR/app.env"
	"${PODMAN[@]}" image exists "$IMAGE" 2>/dev/null ||
		echo "image $IMAGE is not on this node (podman pull or podman load it on both nodes)"
	for v in ${VOLUMES:-}; do
		[ -d "${v%%:*}" ] || echo "volume dir ${v%%:*} does not exist"
		grep -qF "\"${v%%:*}\"" "$MODULE_DIR/module.json" ||
			echo "volume dir ${v%%:*} is not a replicated dir in module.json (replication -> dirs)"
	done
}

# Running, and its process is alive: after a crash of the node podman may still record
# a container as running whose processes are gone.
ct_running() {
	local running pid
	read -r running pid < <("${PODMAN[@]}" container inspect -f '{{.State.Running}} {{.State.Pid}}' "$NAME" 2>/dev/null) || return 1
	[ "$running" = true ] && [ "${pid:-0}" -gt 0 ] && kill -0 "$pid" 2>/dev/null
}
