#!/bin/sh
# Runs on the Packer build instance, as root, in two steps:
#   provision.sh install   Docker, deckhand, its units, the config skeleton
#   provision.sh cleanup   leave no credentials, keys or identity in the AMI
# Files come from /tmp/deckhand-stage (uploaded by packer/deckhand.pkr.hcl).
# PREPULL_IMAGES: space-separated images to pull into the image.
set -eu

stage=/tmp/deckhand-stage

log() { printf 'provision: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# systemd runs on an EC2 build instance; the box's build container (a Docker
# source, scripts/box) has none, and there units can only be enabled.
systemd_running() { [ -d /run/systemd/system ]; }

installed() {
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q ' ok installed$' || return 1
    done
}

install_step() {
    export DEBIAN_FRONTEND=noninteractive
    # Debian's own Docker (docker.io); iptables for the metadata block. The box's
    # base root already holds them (its build container has no network).
    if ! installed docker.io iptables ca-certificates; then
        apt-get update
        apt-get install -y --no-install-recommends docker.io iptables ca-certificates
    fi
    # live-restore: a dockerd that crashes and is restarted leaves the running
    # jobs running, and deckhand takes them up again when it answers. json-file
    # keeps each job's whole output, which deckhand reads back after such a gap.
    # cgroupfs: each job's container gets a cgroup parent of deckhand's own that
    # outlives it, so its usage is read whole however short it ran (the systemd
    # driver wants slices, which systemd keeps after the job).
    install -d -m 0755 /etc/docker
    cat >/etc/docker/daemon.json <<'JSON'
{
  "live-restore": true,
  "log-driver": "json-file",
  "exec-opts": ["native.cgroupdriver=cgroupfs"]
}
JSON

    install -m 0755 "$stage/deckhand" /usr/local/bin/deckhand
    # The binary must be static and runnable here, or every instance fails.
    /usr/local/bin/deckhand --version
    # Every unit the host runs, from systemd/ in the repository.
    install -m 0644 "$stage/deckhand.service" "$stage/deckhand-imds-block.service" /etc/systemd/system/
    install -m 0755 "$stage/bootstrap.sh" /usr/local/sbin/deckhand-bootstrap
    install -D -m 0644 "$stage/operations.md" /usr/local/share/doc/deckhand/operations.md

    # The config skeleton, written by the same code as at boot (it writes the
    # IMDS-block unit too: the same text, checked against the file above).
    # Enables Docker and both units; starts nothing.
    /usr/local/sbin/deckhand-bootstrap --skeleton
    # Here the binary exists, so verify the units as installed, together.
    systemd-analyze verify /etc/systemd/system/deckhand.service /etc/systemd/system/deckhand-imds-block.service
    # On a build instance: Docker for the pre-pulls, and the block, to see that
    # its rule applies on this kernel.
    if systemd_running; then
        systemctl start deckhand-imds-block.service
    fi

    for image in ${PREPULL_IMAGES:-}; do
        log "pulling $image"
        docker pull "$image"
    done
}

cleanup_step() {
    # The config must be the skeleton: no pool sections, so no queue URL,
    # bucket names or KMS key of any pool end up in the AMI.
    if grep -Eq '^[[:space:]]*\[(aws|queue|results|secrets|images|cache)\]' /etc/deckhand/config.toml; then
        die "/etc/deckhand/config.toml is not the skeleton"
    fi
    rm -f /etc/deckhand/env
    # State of a deckhand that must not have run; recreated at boot.
    rm -rf /var/lib/deckhand /run/deckhand
    # Credentials any tool may have left (none are expected).
    rm -rf /root/.docker /root/.aws

    # cloud-init: forget this build instance (its instance data, the build's
    # user data, logs, seed) so the AMI boots as a new instance.
    if command -v cloud-init >/dev/null 2>&1; then
        cloud-init clean --logs --seed
    fi
    # SSH: Packer's temporary key pair and this host's keys. cloud-init
    # makes new host keys on each instance's first boot.
    rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
    rm -f /etc/ssh/ssh_host_*
    # dockerd's own identity key (Docker 20.10); it makes a new one at start.
    rm -f /etc/docker/key.json
    # Empty, not deleted: each instance then gets its own machine-id, and
    # systemd does not treat the boot as a "first boot" (which would re-apply
    # unit presets and could undo the enables above).
    truncate -s 0 /etc/machine-id
    rm -f /var/lib/dbus/machine-id
    # Logs and shell history of the build.
    journalctl --rotate >/dev/null 2>&1 || true
    journalctl --vacuum-time=1s >/dev/null 2>&1 || true
    rm -f /root/.bash_history /home/*/.bash_history
    apt-get clean
    rm -rf /var/lib/apt/lists/* "$stage"
}

case ${1:-} in
    install) install_step ;;
    cleanup) cleanup_step ;;
    *) die "usage: provision.sh install|cleanup" ;;
esac
