# shellcheck shell=bash
# Sourced by scripts/stack: the image builder's image (buildah on a Debian root, see
# builder-rootfs), made here once and kept: a fresh root takes minutes. Its name is
# keyed by the script that makes the root, so a change to it makes a new image.

builder_key() { sha256sum "$HERE/stack.d/builder-rootfs" | cut -c1-12; }
builder_image() { printf 'deckhand-builder:%s\n' "$(builder_key)"; }

ensure_builder_image() {
	local key image dir="$STACK_DIR/builder" tar
	key=$(builder_key)
	image=$(builder_image)
	if docker image inspect "$image" >/dev/null 2>&1; then
		log "builder: $image is there"
		return 0
	fi
	mkdir -p "$dir"
	tar="$dir/rootfs-$key.tar"
	if [[ ! -s $tar ]]; then
		rm -f "$dir"/rootfs-*.tar
		log "builder: making its root (debootstrap and apt: a few minutes, once)"
		"$HERE/stack.d/builder-rootfs" "$tar"
	fi
	log "builder: importing $tar as $image"
	docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		-c 'ENV BUILDAH_ISOLATION=chroot' "$tar" "$image" >/dev/null
	# Images of an earlier root: hundreds of MB each.
	local old
	for old in $(docker image ls --format '{{.Repository}}:{{.Tag}}' deckhand-builder); do
		[[ $old == "$image" ]] || docker image rm "$old" >/dev/null 2>&1 || true
	done
}
