# shellcheck shell=bash
# Sourced by scripts/stack: git servers for the source tests, on loopback, both
# serving the bare repositories under $GIT_ROOT (tests make theirs, uniquely named):
# `git daemon` (git://, anonymous) and lighttpd running git's own http-backend as a
# CGI behind basic auth (http://, user $GIT_USER).

GIT_ROOT="$STACK_DIR/git/repos"
GIT_DAEMON_PORT=${STACK_GIT_DAEMON_PORT:-9418}
GIT_HTTP_PORT=${STACK_GIT_HTTP_PORT:-9080}
GIT_USER=deckhand-ci
GIT_PASSWORD=stack-git-token-0f3a9c

ensure_git_daemon() {
	mkdir -p "$GIT_ROOT"
	if running_pid git-daemon "--port=$GIT_DAEMON_PORT" >/dev/null && port_open "$GIT_DAEMON_PORT"; then
		log "git daemon: up on $HOST:$GIT_DAEMON_PORT"
		return 0
	fi
	port_open "$GIT_DAEMON_PORT" && die "$HOST:$GIT_DAEMON_PORT is taken by another process; set STACK_GIT_DAEMON_PORT"
	spawn git-daemon /usr/bin/git daemon --reuseaddr --export-all --listen="$HOST" \
		--port="$GIT_DAEMON_PORT" --base-path="$GIT_ROOT" "$GIT_ROOT"
	wait_port git-daemon "$GIT_DAEMON_PORT"
}

# lighttpd's config: the example in git-http-backend(1), plus basic auth.
write_lighttpd_conf() {
	local dir="$STACK_DIR/git"
	htpasswd -bcm "$dir/htpasswd" "$GIT_USER" "$GIT_PASSWORD" 2>/dev/null
	mkdir -p "$dir/www"
	cat >"$dir/lighttpd.conf" <<CONF
server.modules = ("mod_alias", "mod_auth", "mod_authn_file", "mod_cgi", "mod_setenv")
server.bind = "$HOST"
server.port = $GIT_HTTP_PORT
server.document-root = "$dir/www"
server.errorlog = "$dir/lighttpd-error.log"
alias.url = ("/git" => "/usr/lib/git-core/git-http-backend")
\$HTTP["url"] =~ "^/git" {
	cgi.assign = ("" => "")
	setenv.set-environment = ("GIT_PROJECT_ROOT" => "$GIT_ROOT", "GIT_HTTP_EXPORT_ALL" => "")
	auth.backend = "htpasswd"
	auth.backend.htpasswd.userfile = "$dir/htpasswd"
	auth.require = ("" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
}
CONF
}

ensure_git_http() {
	if running_pid git-http "$STACK_DIR/git/lighttpd.conf" >/dev/null &&
		[[ $(http_code "http://$HOST:$GIT_HTTP_PORT/git/") == 401 ]]; then
		log "git http: up on $HOST:$GIT_HTTP_PORT"
		return 0
	fi
	port_open "$GIT_HTTP_PORT" && die "$HOST:$GIT_HTTP_PORT is taken by another process; set STACK_GIT_HTTP_PORT"
	write_lighttpd_conf
	spawn git-http /usr/sbin/lighttpd -D -f "$STACK_DIR/git/lighttpd.conf"
	wait_port git-http "$GIT_HTTP_PORT"
}

wait_port() {
	local name=$1 port=$2 deadline=$((SECONDS + SERVICE_WAIT))
	while ((SECONDS < deadline)); do
		if port_open "$port"; then
			log "$name: up on $HOST:$port"
			return 0
		fi
		sleep 0.2
	done
	tail -n 20 "$STACK_DIR/$name.log" >&2 || true
	die "$name did not listen on $HOST:$port (see $STACK_DIR/$name.log)"
}

git_status() {
	local bad=0
	if port_open "$GIT_DAEMON_PORT"; then
		printf 'git-daemon     up    git://%s:%s/ (%s)\n' "$HOST" "$GIT_DAEMON_PORT" "$GIT_ROOT"
	else
		printf 'git-daemon     down  git://%s:%s/\n' "$HOST" "$GIT_DAEMON_PORT"
		bad=1
	fi
	if [[ $(http_code "http://$HOST:$GIT_HTTP_PORT/git/") == 401 ]]; then
		printf 'git-http       up    http://%s:%s/git/ (basic auth)\n' "$HOST" "$GIT_HTTP_PORT"
	else
		printf 'git-http       down  http://%s:%s/git/\n' "$HOST" "$GIT_HTTP_PORT"
		bad=1
	fi
	return "$bad"
}
