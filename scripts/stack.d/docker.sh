# shellcheck shell=bash
# Sourced by scripts/stack: the Docker engine (its flags, start, wait, ensure).

# Flags, and why:
# --bridge=none: no docker0 and no 172.17/16 addresses, because this workplace allows
#   only loopback. A container run without --network then has just its own `lo` (the
#   daemon still warns "IPv4 forwarding is disabled" on create; `--network none` does
#   not), and `--network host` is the way for a job to reach the stack on 127.0.0.1.
# --iptables=false --ip-forward=false: with no bridge there is nothing to NAT, and it
#   leaves the host's firewall and forwarding untouched (it also sidesteps the
#   iptables nft-vs-legacy question entirely).
# --live-restore: as on the AMI (packer/provision.sh), containers outlive a dockerd
#   restart; `scripts/stack restart-docker` (the soak's Docker restart) relies on it.
# The storage driver is left to dockerd (overlay2 on ext4); if the engine does not come
# up with it (overlayfs missing, or a root fs that cannot hold overlay upper dirs), we
# retry with vfs, which works anywhere, and remember the choice because images stored
# by one driver are invisible to the other.
DOCKERD_FLAGS=(--host=unix:///var/run/docker.sock --bridge=none --iptables=false --ip-forward=false --live-restore)

start_dockerd() { # [storage-driver]
	local driver=${1:-} args=("${DOCKERD_FLAGS[@]}")
	[[ -n $driver ]] && args+=("--storage-driver=$driver")
	log "starting dockerd ${args[*]}"
	spawn dockerd dockerd "${args[@]}"
}

# A dockerd that still writes to its log is working, not hung: at start it removes one
# "stale sandbox" record (~70 ms each) for every container that ran on a network it
# does not have (see job_network), and an engine that ran a few thousand of those
# takes minutes. So the deadline is DOCKER_WAIT of silence, capped at DOCKER_WAIT_MAX.
DOCKER_WAIT_MAX=${STACK_DOCKER_WAIT_MAX:-1800}

wait_dockerd() { # → 0 when the API answers, 1 if dockerd died, 2 past the deadline
	local start=$SECONDS deadline=$((SECONDS + DOCKER_WAIT)) pid size last_size=-1 said=0
	while ((SECONDS < deadline && SECONDS - start < DOCKER_WAIT_MAX)); do
		docker_server_up && return 0
		pid=$(<"$STACK_DIR/dockerd.pid") || true
		pid_alive "$pid" || return 1
		size=$(stat -c %s "$STACK_DIR/dockerd.log" 2>/dev/null || echo 0)
		if ((size != last_size)); then
			last_size=$size
			deadline=$((SECONDS + DOCKER_WAIT))
		fi
		if ((!said && SECONDS - start >= 10)); then
			said=1
			log "dockerd is still starting ($(last_dockerd_log | grep -c 'Removing stale sandbox') stale sandboxes removed so far); waiting while its log grows"
		fi
		sleep 0.5
	done
	return 2
}

# The network job containers should use on this engine. The stack's own dockerd runs
# with --bridge=none (no iptables here), so it has no "bridge" network; a container
# that asks for it still runs, without a network, but leaves a sandbox record behind
# that dockerd removes only at its next start. Tests, demo and bench use this instead.
job_network() {
	if docker network inspect bridge >/dev/null 2>&1; then echo bridge; else echo none; fi
}

# The log of the latest dockerd start only.
last_dockerd_log() {
	awk '/^=== .* starting: dockerd/ {buf = ""} {buf = buf $0 "\n"} END {printf "%s", buf}' \
		"$STACK_DIR/dockerd.log" 2>/dev/null || true
}

# dockerd refuses to start while /var/run/docker.pid names a process that still has a
# /proc entry, and it waits (then fails) on the containerd that
# /var/run/docker/containerd/containerd.pid names if that pid still answers signal 0.
# A dockerd killed with SIGKILL (CI ends a session's leftover processes that way)
# leaves both behind as zombies until this VM's PID 1 gets round to reaping them, and
# that blocks the next start. pid_alive treats zombies as dead.
clear_stale_docker_pidfiles() {
	local f pid
	for f in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
		[[ -s $f ]] || continue
		pid=$(<"$f")
		if pid_alive "$pid"; then
			[[ $f == /var/run/docker.pid ]] &&
				die "a dockerd (pid $pid, $f) runs but does not answer on /var/run/docker.sock; stop it first"
			continue
		fi
		log "removing stale $f (pid $pid is gone)"
		rm -f "$f"
	done
}

ensure_docker() {
	if docker_server_up; then
		if running_pid dockerd dockerd >/dev/null; then
			log "docker: up (ours)"
		else
			log "docker: up (not started by the stack; leaving it as it is)"
		fi
		return 0
	fi
	command -v dockerd >/dev/null || die "docker does not answer and there is no dockerd to start"
	local pid rc=0
	if pid=$(running_pid dockerd dockerd); then
		log "docker: our dockerd (pid $pid) is not answering yet; waiting"
		wait_dockerd && return 0
		stop_pid dockerd "$pid" 30
	fi
	clear_stale_docker_pidfiles
	local driver=""
	[[ -s $STACK_DIR/dockerd.storage-driver ]] && driver=$(<"$STACK_DIR/dockerd.storage-driver")
	start_dockerd "$driver"
	wait_dockerd || rc=$?
	if ((rc != 0)); then
		if ((rc == 1)); then log "dockerd exited; last lines of its log:"; else log "dockerd did not answer (its log silent for ${DOCKER_WAIT}s, or past ${DOCKER_WAIT_MAX}s); last lines of its log:"; fi
		last_dockerd_log | tail -n 15 >&2
		pid=$(<"$STACK_DIR/dockerd.pid") || true
		if pid_alive "$pid"; then stop_pid dockerd "$pid" 30; fi
		# Only a storage-driver failure is worth a vfs retry: anything else would fail
		# the same way, and a wrongly remembered vfs would hide every stored image.
		if [[ -n $driver ]] || ! grep -qiE 'error initializing graphdriver|driver not supported|not supported over|overlay[^ ]* .*(fail|not supported|invalid)' \
			<<<"$(last_dockerd_log)"; then
			die "dockerd did not start (see $STACK_DIR/dockerd.log)"
		fi
		log "retrying dockerd with --storage-driver=vfs"
		driver=vfs
		clear_stale_docker_pidfiles
		start_dockerd "$driver"
		wait_dockerd || {
			last_dockerd_log | tail -n 30 >&2
			die "dockerd did not start with vfs either (see $STACK_DIR/dockerd.log)"
		}
		echo "$driver" >"$STACK_DIR/dockerd.storage-driver"
	fi
	log "docker: up (storage driver $(docker info --format '{{.Driver}}' 2>/dev/null), cgroup $(docker info --format '{{.CgroupVersion}}' 2>/dev/null))"
}
