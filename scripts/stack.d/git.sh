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

# ---------------------------------------------------------------- ssh

# An SSH remote for the deploy-key path: Debian's sshd on loopback with a config,
# host key and authorized_keys of its own under $GIT_SSH_DIR (nothing of the
# system's sshd setup is read or changed). It lets in one system user,
# $GIT_SSH_USER, whose login shell is git-shell (so only git's pack commands run),
# with one key: the stack's test deploy key. A second key, not authorized, lets
# tests see a wrong key refused. The repositories are the same as the other two
# servers', by absolute path: ssh://$GIT_SSH_USER@127.0.0.1:PORT$GIT_ROOT/NAME.git.
GIT_SSH_PORT=${STACK_GIT_SSH_PORT:-9422}
GIT_SSH_USER=deckhand-git
GIT_SSH_DIR="$STACK_DIR/git/ssh"

write_sshd_files() {
	local dir=$GIT_SSH_DIR home="$GIT_SSH_DIR/home"
	mkdir -p "$dir" "$home"
	chmod 755 "$dir"
	if ! id "$GIT_SSH_USER" >/dev/null 2>&1; then
		useradd --system --no-create-home --home-dir "$home" --shell /usr/bin/git-shell "$GIT_SSH_USER"
	fi
	# useradd leaves the account locked (`!`), which sshd without PAM refuses even
	# for a key; `*` is unlocked with no password that could ever match.
	usermod -p '*' "$GIT_SSH_USER"
	# The repositories belong to root (tests make them); git refuses a repository
	# owned by someone else unless told it is safe. Only this user reads this.
	printf '[safe]\n\tdirectory = *\n' >"$home/.gitconfig"
	chown -R "$GIT_SSH_USER:" "$home"
	local key
	for key in host_ed25519_key deploy_key wrong_key; do
		[[ -s $dir/$key ]] || ssh-keygen -q -t ed25519 -N '' -C "deckhand-stack-$key" -f "$dir/$key" >/dev/null
	done
	# restrict: no forwarding, no pty, no agent; git-shell allows only git's commands.
	printf 'restrict %s\n' "$(<"$dir/deploy_key.pub")" >"$dir/authorized_keys"
	chmod 644 "$dir/authorized_keys"
	printf '[%s]:%s %s\n' "$HOST" "$GIT_SSH_PORT" "$(cut -d' ' -f1,2 "$dir/host_ed25519_key.pub")" >"$dir/known_hosts"
	cat >"$dir/sshd_config" <<CONF
Port $GIT_SSH_PORT
ListenAddress $HOST
HostKey $dir/host_ed25519_key
PidFile none
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $GIT_SSH_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
LogLevel VERBOSE
CONF
	# sshd's privilege-separation folder, which the package's init script would make.
	mkdir -p /run/sshd
	chmod 755 /run/sshd
	/usr/sbin/sshd -t -f "$dir/sshd_config" || die "sshd refused $dir/sshd_config"
}

ensure_git_ssh() {
	if running_pid git-ssh "$GIT_SSH_DIR/sshd_config" >/dev/null && port_open "$GIT_SSH_PORT"; then
		log "git ssh: up on $HOST:$GIT_SSH_PORT"
		return 0
	fi
	port_open "$GIT_SSH_PORT" && die "$HOST:$GIT_SSH_PORT is taken by another process; set STACK_GIT_SSH_PORT"
	write_sshd_files
	# -D: in the foreground (spawn keeps its pid); -e: its log to git-ssh.log.
	spawn git-ssh /usr/sbin/sshd -D -e -f "$GIT_SSH_DIR/sshd_config"
	wait_port git-ssh "$GIT_SSH_PORT"
}

git_ssh_status() {
	if port_open "$GIT_SSH_PORT"; then
		printf 'git-ssh        up    ssh://%s@%s:%s%s/ (deploy key)\n' "$GIT_SSH_USER" "$HOST" "$GIT_SSH_PORT" "$GIT_ROOT"
	else
		printf 'git-ssh        down  ssh://%s:%s/\n' "$HOST" "$GIT_SSH_PORT"
		return 1
	fi
}
