# shellcheck shell=bash
# Sourced by scripts/stack: moto's server in its venv.

ensure_moto_venv() {
	if [[ -x $VENV/bin/moto_server ]] &&
		[[ $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true) == "$MOTO_VERSION" ]] &&
		"$VENV/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
		return 0
	fi
	log "moto: installing moto[server]==$MOTO_VERSION into $VENV"
	rm -rf "$VENV"
	# Debian's own python3, not whatever python3 comes first on PATH (pyenv shims on
	# these machines): the venv must not depend on a toolchain the next machine lacks.
	/usr/bin/python3 -m venv "$VENV"
	local pip=("$VENV/bin/pip" install --no-input --disable-pip-version-check -q)
	# The pin set only fits the moto version it was frozen from.
	if grep -qx "moto==$MOTO_VERSION" "$MOTO_CONSTRAINTS" 2>/dev/null; then
		pip+=(-c "$MOTO_CONSTRAINTS")
	fi
	"${pip[@]}" "moto[server]==$MOTO_VERSION" >&2
}

ensure_moto() {
	local pid code
	if pid=$(running_pid moto "$VENV/bin/moto_server"); then
		code=$(http_code "http://$HOST:$MOTO_PORT/moto-api/")
		if [[ $code == 200 ]]; then
			log "moto: up on $HOST:$MOTO_PORT"
			return 0
		fi
	fi
	ensure_moto_venv
	if pid=$(running_pid moto "$VENV/bin/moto_server"); then
		stop_pid moto "$pid" 10
	fi
	port_open "$MOTO_PORT" && die "$HOST:$MOTO_PORT is taken by another process; free it or set STACK_MOTO_PORT"
	spawn moto env -i PATH="$VENV/bin:/usr/bin:/bin" HOME="$STACK_DIR" \
		"$VENV/bin/python" "$VENV/bin/moto_server" -H "$HOST" -p "$MOTO_PORT"
	local deadline=$((SECONDS + SERVICE_WAIT))
	while ((SECONDS < deadline)); do
		code=$(http_code "http://$HOST:$MOTO_PORT/moto-api/")
		if [[ $code == 200 ]]; then
			log "moto: up on $HOST:$MOTO_PORT"
			return 0
		fi
		pid=$(<"$STACK_DIR/moto.pid") || true
		pid_alive "$pid" || break
		sleep 0.3
	done
	tail -n 20 "$STACK_DIR/moto.log" >&2 || true
	die "moto did not answer on http://$HOST:$MOTO_PORT/moto-api/ (see $STACK_DIR/moto.log)"
}
