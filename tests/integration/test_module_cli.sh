#!/usr/bin/env bash
# skctl module install/list/remove/package against real skd processes in the namespace
# rig: a packaged module installed into running nodes is picked up by skd and runs;
# remove and install --force are refused while it runs and allowed after stop; broken
# modules and hostile archives are refused with their errors and nothing is written.
. "$(dirname "$0")/lib/rig.sh"
. "$(dirname "$0")/lib/mirror.sh"

# The mirror test module (lib/mirror.sh) as a source directory $RIG_DIR/src/web;
# the nodes' modules directories stay empty.
_module_source() {
	rig_write_mirror_module web
	mkdir -p "$RIG_DIR/src"
	mv "$RIG_DIR/n1/modules/web" "$RIG_DIR/src/web"
	rm -rf "$RIG_DIR/n2/modules/web"
}

# mod NODE ARGS...: skctl module ... with that node's cluster file and socket.
mod() {
	local node=$1; shift
	rig_skctl "$node" module "$@" --config "$RIG_DIR/$node/cluster.json"
}

# Nothing but module directories in a modules dir: no temp or removed copies left.
_no_leftovers() {
	local left
	left=$(find "$RIG_DIR/$1/modules" -mindepth 1 -maxdepth 1 -name '.*')
	[ -z "$left" ] || rig_fail "left in $1/modules: $left"
}

_skd_modules() { rig_skctl "$1" status --json | jq -r '[.modules[].name] | join(",")'; }

test_install_running_node_remove_refused_while_running() {
	rig_setup 2 1
	rig_write_cluster
	_module_source
	rig_start_skd n1
	rig_start_skd n2
	local out rc
	out=$(mod n1 package "$RIG_DIR/src/web" -o "$RIG_DIR/web.tar.gz")
	grep -q "wrote $RIG_DIR/web.tar.gz: module web" <<<"$out" || rig_fail "package: $out"
	tar tzf "$RIG_DIR/web.tar.gz" | grep -qx 'web/scripts/start_prim' || rig_fail "archive lacks web/scripts/start_prim"
	tar tvzf "$RIG_DIR/web.tar.gz" | grep -q '^-rwxr-xr-x .* web/scripts/start_prim$' || rig_fail "script mode lost"

	for n in n1 n2; do
		out=$(mod "$n" install "$RIG_DIR/web.tar.gz")
		grep -q "installed module web into $RIG_DIR/$n/modules/web" <<<"$out" || rig_fail "$n install: $out"
		grep -q 'skd reloaded its configuration: module web is loaded (STOP' <<<"$out" || rig_fail "$n reload: $out"
		[ "$(_skd_modules "$n")" = web ] || rig_fail "$n: skd lists '$(_skd_modules "$n")'"
		[ -x "$RIG_DIR/$n/modules/web/scripts/start_prim" ] || rig_fail "$n: start_prim not executable"
		_no_leftovers "$n"
	done

	# The installed module runs like any other.
	rig_skctl n2 start -m web >/dev/null
	rig_skctl n1 prim -m web >/dev/null
	rig_wait_label n1 web 'PRIM/running'
	rig_wait_label n2 web 'SECOND/in-sync'
	[ "$(rig_vip_answer)" = n1 ] || rig_fail "client got '$(rig_vip_answer)' from the VIP, expected n1"
	mod n1 list | grep -Eq '^web +mirror +n1,n2 +PRIM/running' || rig_fail "list: $(mod n1 list)"
	[ "$(mod n1 list --json | jq -r '.modules[0].running')" = true ] || rig_fail "list --json: not running"

	# Refused while running on this node: remove, and install --force.
	rc=0; out=$(mod n1 remove web 2>&1) || rc=$?
	[ "$rc" -eq 1 ] || rig_fail "remove while running: exit $rc"
	grep -q 'module remove refused: module web is running on this node (PRIM/running)' <<<"$out" ||
		rig_fail "remove while running: $out"
	rc=0; out=$(mod n1 install "$RIG_DIR/web.tar.gz" --force 2>&1) || rc=$?
	[ "$rc" -eq 1 ] && grep -q 'module install --force refused: module web is running' <<<"$out" ||
		rig_fail "install --force while running: exit $rc: $out"
	rc=0; out=$(mod n1 install "$RIG_DIR/web.tar.gz" 2>&1) || rc=$?
	[ "$rc" -eq 1 ] && grep -q 'already installed .*(--force replaces it)' <<<"$out" ||
		rig_fail "second install: exit $rc: $out"
	[ -f "$RIG_DIR/n1/modules/web/module.json" ] || rig_fail "module files gone after a refusal"
	rig_wait_label n1 web 'PRIM/running' 5

	# Another module installed while web runs: its files go in, but skd refuses to reload
	# a changed configuration while modules run; skctl says so and exits 1.
	cp -r "$RIG_DIR/src/web" "$RIG_DIR/src/db"
	sed -i 's/"name": "web"/"name": "db"/; s#198.18.0.100/24#198.18.0.101/24#' "$RIG_DIR/src/db/module.json"
	rc=0; out=$(mod n1 install "$RIG_DIR/src/db" 2>&1) || rc=$?
	[ "$rc" -eq 1 ] || rig_fail "install beside a running module: exit $rc: $out"
	grep -q 'module db is installed, but skd did not reload' <<<"$out" && grep -q 'stop them first' <<<"$out" ||
		rig_fail "install beside a running module: $out"
	[ "$(_skd_modules n1)" = web ] || rig_fail "n1 skd lists '$(_skd_modules n1)'"
	mod n1 list | grep -Eq '^db +mirror +n1,n2 +not loaded by skd' || rig_fail "list: $(mod n1 list)"
	# Removing it again brings the files back to what skd runs: the reload passes.
	out=$(mod n1 remove db) || rig_fail "remove db: $out"
	grep -q 'module db is no longer loaded' <<<"$out" || rig_fail "remove db: $out"
	rig_wait_label n1 web 'PRIM/running' 5

	# Stopped here: remove is allowed on n1 and skd drops the module; n2 keeps serving.
	rig_skctl n1 stop -m web >/dev/null
	rig_wait_label n1 web 'STOP/idle'
	rig_wait_label n2 web 'ALONE/running|PRIM/running'
	out=$(mod n1 remove web)
	grep -q "removed module web from $RIG_DIR/n1/modules" <<<"$out" || rig_fail "remove: $out"
	grep -q 'module web is no longer loaded' <<<"$out" || rig_fail "remove reload: $out"
	[ ! -e "$RIG_DIR/n1/modules/web" ] || rig_fail "n1/modules/web still there"
	[ -z "$(_skd_modules n1)" ] || rig_fail "n1 skd still lists '$(_skd_modules n1)'"
	_no_leftovers n1
	mod n1 list | grep -q '^no modules installed' || rig_fail "list after remove: $(mod n1 list)"
	rc=0; mod n2 remove web >/dev/null 2>&1 || rc=$?
	[ "$rc" -eq 1 ] || rig_fail "remove on n2 while it serves: exit $rc"
	rig_skctl n2 stop -m web >/dev/null
	rig_wait_label n2 web 'STOP/idle'
	mod n2 remove web >/dev/null || rig_fail "remove on n2 after stop"
	[ -z "$(_skd_modules n2)" ] || rig_fail "n2 skd still lists '$(_skd_modules n2)'"
	_no_leftovers n2
}

test_broken_module_refused_with_errors() {
	rig_setup 1 0
	rig_write_cluster
	_module_source
	rig_start_skd n1
	local src="$RIG_DIR/src/web" out rc=0 reloads
	reloads=$(rig_skctl n1 status --json | jq .config.reloads)
	# Four problems: unknown node, bad VIP, a hook that is not executable, a misspelled
	# hook name; then a link out of the module.
	sed -i 's/"nodes": \["n1", "n2"\]/"nodes": ["n1", "n9"]/; s#198.18.0.100/24#198.18.0.300/24#' "$src/module.json"
	chmod 644 "$src/scripts/stop_prim"
	cp "$src/scripts/prestart" "$src/scripts/strat_prim"
	out=$(mod n1 install "$src" 2>&1) || rc=$?
	[ "$rc" -eq 2 ] || rig_fail "broken module: exit $rc, expected 2: $out"
	grep -q "$src/module.json: /nodes/1: found unknown node \"n9\"" <<<"$out" || rig_fail "no node error: $out"
	grep -q "$src/module.json: /vips/0/address" <<<"$out" || rig_fail "no VIP error: $out"
	grep -q "$src/scripts/stop_prim: not executable" <<<"$out" || rig_fail "no mode error: $out"
	grep -q "$src/scripts/strat_prim: unknown script name \"strat_prim\" (did you mean \"start_prim\"?)" <<<"$out" ||
		rig_fail "no name error: $out"
	grep -q '^4 error(s)$' <<<"$out" || rig_fail "error count: $out"
	ln -s /etc/passwd "$src/passwd"
	rc=0; out=$(mod n1 install "$src" 2>&1) || rc=$?
	[ "$rc" -eq 2 ] && grep -q "$src/passwd: symlink to \"/etc/passwd\" points outside the module" <<<"$out" ||
		rig_fail "escaping symlink: exit $rc: $out"
	# Nothing was written and skd was not asked to reload.
	[ -z "$(ls -A "$RIG_DIR/n1/modules")" ] || rig_fail "modules dir not empty: $(ls -A "$RIG_DIR/n1/modules")"
	[ "$(rig_skctl n1 status --json | jq .config.reloads)" = "$reloads" ] || rig_fail "skd reloaded"
	# package refuses it the same way.
	rc=0; out=$(mod n1 package "$src" -o "$RIG_DIR/bad.tar.gz" 2>&1) || rc=$?
	[ "$rc" -eq 2 ] && grep -q 'module package refused' <<<"$out" || rig_fail "package: exit $rc: $out"
	[ ! -e "$RIG_DIR/bad.tar.gz" ] || rig_fail "package wrote an archive"
}

test_hostile_archives_refused() {
	rig_setup 1 0
	rig_write_cluster
	_module_source
	rig_start_skd n1
	local out rc a
	# Archives a user could be sent: a path climbing out, an absolute path, a device
	# node, a symlink out, a file written through a symlink. Built with Python's tarfile.
	python3 - "$RIG_DIR" <<'PY'
import io, sys, tarfile
d = sys.argv[1]
mod = open(d + "/src/web/module.json", "rb").read()
def tar(name, extra):
    with tarfile.open(d + "/" + name, "w:gz") as t:
        i = tarfile.TarInfo("web/module.json"); i.size = len(mod); t.addfile(i, io.BytesIO(mod))
        for info, data in extra:
            t.addfile(info, io.BytesIO(data) if data else None)
def f(name, data=b"x"):
    i = tarfile.TarInfo(name); i.size = len(data); return (i, data)
def special(name, typ, link=""):
    i = tarfile.TarInfo(name); i.type = typ; i.linkname = link; return (i, None)
tar("climb.tar.gz", [f("web/../../../../tmp/sk-climb-" + d[-6:])])
tar("abs.tar.gz", [f(d + "/abs-target")])
tar("dev.tar.gz", [special("web/null", tarfile.CHRTYPE)])
tar("link.tar.gz", [special("web/out", tarfile.SYMTYPE, "../../../n1")])
tar("through.tar.gz", [special("web/out", tarfile.SYMTYPE, d + "/n1"), f("web/out/evil")])
PY
	for a in climb abs dev link through; do
		rc=0; out=$(mod n1 install "$RIG_DIR/$a.tar.gz" 2>&1) || rc=$?
		[ "$rc" -eq 2 ] || rig_fail "$a: exit $rc, expected 2: $out"
		grep -q 'module install refused, nothing was written' <<<"$out" || rig_fail "$a: $out"
		rig_log "$a: $(tail -1 <<<"$out")"
	done
	grep -q '"\.\." in the path' <<<"$(mod n1 install "$RIG_DIR/climb.tar.gz" 2>&1)" || rig_fail "climb message"
	grep -q 'absolute path' <<<"$(mod n1 install "$RIG_DIR/abs.tar.gz" 2>&1)" || rig_fail "abs message"
	grep -q 'a character device, not allowed' <<<"$(mod n1 install "$RIG_DIR/dev.tar.gz" 2>&1)" || rig_fail "dev message"
	grep -q 'points outside the module' <<<"$(mod n1 install "$RIG_DIR/link.tar.gz" 2>&1)" || rig_fail "link message"
	grep -q 'its parent "out" is a symlink, not a directory' <<<"$(mod n1 install "$RIG_DIR/through.tar.gz" 2>&1)" ||
		rig_fail "through message"
	[ ! -e "/tmp/sk-climb-${RIG_DIR: -6}" ] && [ ! -e "$RIG_DIR/abs-target" ] && [ ! -e "$RIG_DIR/n1/evil" ] ||
		rig_fail "a hostile archive wrote outside"
	[ -z "$(ls -A "$RIG_DIR/n1/modules")" ] || rig_fail "modules dir not empty: $(ls -A "$RIG_DIR/n1/modules")"
}

test_without_skd_then_skd_loads_it() {
	rig_setup 2 0
	rig_write_cluster
	_module_source
	local out
	out=$(mod n1 install "$RIG_DIR/src/web")
	grep -q 'skd is not running: it loads module web when it starts' <<<"$out" || rig_fail "install: $out"
	mod n1 list | grep -Eq '^web +mirror +n1,n2 +-$' || rig_fail "list without skd: $(mod n1 list)"
	rig_start_skd n1
	[ "$(_skd_modules n1)" = web ] || rig_fail "skd lists '$(_skd_modules n1)'"
	mod n1 list | grep -Eq '^web +mirror +n1,n2 +STOP' || rig_fail "list: $(mod n1 list)"
	rig_stop_skd n1
	out=$(mod n1 remove web)
	grep -q 'skd is not running here: module remove without a running check' <<<"$out" || rig_fail "remove: $out"
	[ -z "$(ls -A "$RIG_DIR/n1/modules")" ] || rig_fail "modules dir not empty"
}

rig_main "$@"
