# shellcheck shell=bash
# Sourced by scripts/stack: the two local registries (one open, one behind htpasswd)
# and the test image they hold.

write_if_changed() { # FILE CONTENT → 0 if the file changed
	local file=$1 content=$2
	if [[ -f $file ]] && [[ $(<"$file") == "$content" ]]; then
		return 1
	fi
	printf '%s\n' "$content" >"$file"
	return 0
}

registry_config() { # NAME PORT [htpasswd-file]
	local name=$1 port=$2 htfile=${3:-}
	cat <<EOF
# Written by scripts/stack; rewritten on every \`up\`.
version: 0.1
log:
  level: info
  fields:
    service: $name
storage:
  filesystem:
    rootdirectory: $STACK_DIR/$name/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $HOST:$port
  # Fixed so upload state survives a restart; nothing else uses it.
  secret: deckhand-stack-$name
  headers:
    X-Content-Type-Options: [nosniff]
EOF
	if [[ -n $htfile ]]; then
		cat <<EOF
auth:
  htpasswd:
    realm: deckhand-stack
    path: $htfile
EOF
	fi
}

# Debian's docker-registry package runs its own instance from /etc/docker/registry
# (auth on, listening on :5000 of every interface) if its service was ever started;
# that instance would hold our port, so it is stopped here.
stop_stock_registry() {
	local pid p
	if [[ -r /var/run/docker-registry.pid ]]; then
		pid=$(</var/run/docker-registry.pid)
		if pid_alive "$pid"; then
			log "stopping Debian's stock docker-registry service (pid $pid) that holds the port"
			stop_pid docker-registry-stock "$pid" 10
		fi
	fi
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qE '(^|/)docker-registry serve /etc/docker/registry/config.yml'; then
			log "stopping Debian's stock docker-registry (pid $pid)"
			stop_pid docker-registry-stock "$pid" 10
		fi
	done
}

ensure_registry() { # NAME PORT EXPECTED-HTTP-CODE [htpasswd-file]
	local name=$1 port=$2 want=$3 htfile=${4:-} dir="$STACK_DIR/$1" pid code
	mkdir -p "$dir/data"
	local config="$dir/config.yml" changed=""
	write_if_changed "$config" "$(registry_config "$name" "$port" "$htfile")" && changed=1
	if pid=$(running_pid "$name" "$config"); then
		if [[ -z $changed ]]; then
			code=$(http_code "http://$HOST:$port/v2/")
			if [[ $code == "$want" ]]; then
				log "$name: up on $HOST:$port"
				return 0
			fi
		fi
		stop_pid "$name" "$pid" 10
	fi
	if port_open "$port"; then
		stop_stock_registry
		port_open "$port" && die "$HOST:$port is taken by another process; free it or set the port variable"
	fi
	spawn "$name" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		docker-registry serve "$config"
	# (env -i: distribution lets any REGISTRY_* variable override its config file.)
	local deadline=$((SECONDS + SERVICE_WAIT))
	while ((SECONDS < deadline)); do
		code=$(http_code "http://$HOST:$port/v2/")
		if [[ $code == "$want" ]]; then
			log "$name: up on $HOST:$port (/v2/ answers $code)"
			return 0
		fi
		pid=$(<"$STACK_DIR/$name.pid") || true
		pid_alive "$pid" || break
		sleep 0.2
	done
	tail -n 20 "$STACK_DIR/$name.log" >&2 || true
	die "$name did not answer $want on http://$HOST:$port/v2/ (see $STACK_DIR/$name.log)"
}

ensure_htpasswd() {
	local file="$STACK_DIR/registry-auth/htpasswd"
	mkdir -p "$STACK_DIR/registry-auth"
	# bcrypt salts differ per run, so check the password instead of comparing bytes.
	if [[ -s $file ]] && htpasswd -vb "$file" "$AUTH_USER" "$AUTH_PASSWORD" >/dev/null 2>&1; then
		return 0
	fi
	htpasswd -Bbn "$AUTH_USER" "$AUTH_PASSWORD" >"$file.tmp"
	mv "$file.tmp" "$file"
}

# The test image: busybox built here, pushed to both registries.

MANIFEST_ACCEPT='application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.index.v1+json'

# The registry's own digest for REPO:TAG, from Docker-Content-Digest. The Accept header
# matters: without schema2 in it, distribution 2.8 would answer for a schema1 rewrite.
registry_digest() { # PORT TAG [curl args...]
	local port=$1 tag=$2
	shift 2
	curl -s -I --max-time 5 -H "Accept: $MANIFEST_ACCEPT" "$@" \
		"http://$HOST:$port/v2/$IMAGE_REPO/manifests/$tag" 2>/dev/null |
		tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}'
}

build_image() { # REF
	local ref=$1 build="$STACK_DIR/image-build" applet
	local root="$build/rootfs"
	rm -rf "$build"
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp,proc,sys,dev}
	chmod 1777 "$root/tmp" "$root/var/tmp"
	chmod 700 "$root/root"
	cp /bin/busybox "$root/bin/busybox"
	chmod 755 "$root/bin/busybox"
	while read -r applet; do
		[[ $applet == */* && $applet != bin/busybox ]] || continue
		[[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
	done < <(/bin/busybox --list-full)
	cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
	cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
	# Fixed order, times and owners: the layer's digest then depends only on the
	# busybox binary.
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
		-C "$root" -cf "$build/rootfs.tar" .
	docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin' \
		"$build/rootfs.tar" "$ref" >/dev/null
	rm -rf "$build"
}

ensure_image() {
	local ver ref auth_ref built="" digest
	ver=$(busybox_version) || die "busybox-static is not installed"
	ref="$HOST:$REGISTRY_PORT/$IMAGE_REPO:$ver"
	auth_ref="$HOST:$AUTH_REGISTRY_PORT/$IMAGE_REPO:$ver"

	if ! docker image inspect "$ref" >/dev/null 2>&1; then
		# Docker's data may have been wiped while the registry kept the image: pulling it
		# back keeps the digest that earlier runs handed out.
		if [[ -n $(registry_digest "$REGISTRY_PORT" "$ver") ]] &&
			docker pull -q "$ref" >/dev/null 2>&1; then
			log "image: pulled $ref back from the registry"
		else
			log "image: building $ref"
			build_image "$ref"
			built=1
		fi
	fi

	if [[ -n $built || -z $(registry_digest "$REGISTRY_PORT" "$ver") ]]; then
		log "image: pushing $ref"
		docker push "$ref" >&2
	fi

	if [[ -n $built || -z $(registry_digest "$AUTH_REGISTRY_PORT" "$ver" -u "$AUTH_USER:$AUTH_PASSWORD") ]]; then
		log "image: pushing $auth_ref"
		docker tag "$ref" "$auth_ref"
		# A throwaway client config: the login never lands in the user's
		# ~/.docker/config.json, so tests start logged out.
		local cfg
		cfg=$(mktemp -d "$STACK_DIR/docker-login.XXXXXX")
		printf '%s\n' "$AUTH_PASSWORD" |
			DOCKER_CONFIG=$cfg docker login -u "$AUTH_USER" --password-stdin "$HOST:$AUTH_REGISTRY_PORT" >&2
		DOCKER_CONFIG=$cfg docker push "$auth_ref" >&2
		DOCKER_CONFIG=$cfg docker logout "$HOST:$AUTH_REGISTRY_PORT" >&2 || true
		rm -rf "$cfg"
	fi
	# Belt and braces: an earlier manual login to the auth registry would make
	# "pull without credentials fails" tests pass for the wrong reason.
	docker logout "$HOST:$AUTH_REGISTRY_PORT" >/dev/null 2>&1 || true

	digest=$(registry_digest "$REGISTRY_PORT" "$ver" || true)
	[[ $digest == sha256:* ]] || die "registry on $HOST:$REGISTRY_PORT has no manifest for $ref"
	printf '%s\n' "$digest" >"$STACK_DIR/image.digest"
	printf '%s\n' "$ver" >"$STACK_DIR/image.version"
	log "image: $ref = $digest"
}
