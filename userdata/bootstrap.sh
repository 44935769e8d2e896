#!/bin/sh
# deckhand-bootstrap: make an EC2 instance a deckhand pool worker, no cloud-init
# needed. It writes /etc/deckhand/config.toml from a few parameters, installs
# the unit that keeps job containers away from the instance metadata service,
# installs deckhand from S3 if the AMI does not have it, and starts deckhand.
#
# Use it as the instance's user data (fill in PARAMETERS below), or run it
# with flags. Packer bakes it into the AMI as /usr/local/sbin/deckhand-bootstrap
# and runs it there with --skeleton. docs/operations.md has the whole story.
#
# Options (each overrides the PARAMETERS block):
#   --queue-url URL          SQS job queue (required)
#   --dead-letter-url URL    where rejected jobs are copied
#   --region REGION          default: taken from the queue URL
#   --secrets-bucket NAME    bucket of the sealed secrets bundle (required)
#   --secrets-key KEY        its object key (required)
#   --kms-key-id ID          KMS key that sealed it (required)
#   --pool NAME              KMS encryption context "pool" (default: ci)
#   --allowed-registry HOST  registry jobs may use; repeat (at least one)
#   --warm-image REF         image pulled before taking jobs; repeat
#   --cache-source S3URL     cache tarball, e.g. s3://ci-cache/cache.tar.zst
#   --slots N                concurrent jobs (default: 2)
#   --results-bucket NAME    results bucket (required)
#   --results-prefix PREFIX  key prefix of results (default: results/)
#   --idle-shutdown-secs N   --on-exit none|terminate|shutdown
#   --log-forwarder-{kind,endpoint,ca-file,token-secret} V   [log_forwarder]
#   --install-from S3PREFIX  fetch deckhand and deckhand.service from here
#                            when /usr/local/bin/deckhand is missing
#   --binary-sha256 HEX      expected checksum of that binary
#   --skeleton               write a config without pool parameters, enable
#                            the units, start nothing (for baking an AMI)
#   --root DIR               prefix every path written (or DECKHAND_ROOT);
#                            needs --no-system
#   --no-system              no iptables, systemctl or deckhand check (or
#                            DECKHAND_NO_SYSTEM=1); with --root, for tests
#   -h, --help               this text
# Exit status: 0 done, 1 a step failed, 2 bad parameters. All output is on
# stderr, which cloud-init keeps in /var/log/cloud-init-output.log.
#
# DECKHAND_ROOT and DECKHAND_NO_SYSTEM are this script's own variables, not
# deckhand config overrides (deckhand rejects DECKHAND_* names it does not
# know, so they are removed from the environment of the one deckhand call).
set -eu
# No globbing: lists of registries and images are split on spaces, and a "*"
# in one must not turn into file names.
set -f

# ---- PARAMETERS: fill these in when this file is the user data ----
queue_url=""
dead_letter_url=""
region=""
secrets_bucket=""
secrets_key=""
kms_key_id=""
pool="ci"
allowed_registries=""   # space-separated
warm_images=""          # space-separated
cache_source=""
slots="2"
results_bucket=""
results_prefix="results/"
idle_shutdown_secs="0"
on_exit="none"
log_forwarder_kind=""   # rfc5424 or json; empty: no log forwarding
log_forwarder_endpoint=""
log_forwarder_ca_file=""
log_forwarder_token_secret=""
install_from=""         # empty: deckhand is baked into the AMI
binary_sha256=""
# ---- end of PARAMETERS ----

root="${DECKHAND_ROOT:-}"
no_system="${DECKHAND_NO_SYSTEM:-0}"
skeleton=0

log() { printf 'deckhand-bootstrap: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { log "usage error: $*"; exit 2; }

# Every value ends up inside a TOML string or array. Rather than escaping,
# accept only the characters that URLs, bucket names, object keys, ARNs,
# aliases and image references use, so no value can break out of its quotes.
check_chars() {
    case $2 in
        *[!A-Za-z0-9._:/@+=,~%-]*) usage "$1 has a character outside [A-Za-z0-9._:/@+=,~%-]: '$2'" ;;
    esac
}
# TOML integers may not have leading zeros, and slots is written unquoted.
check_uint() {
    case $2 in
        '' | *[!0-9]* | 0[0-9]*) usage "$1 must be a whole number: '$2'" ;;
    esac
}
need() { [ -n "$2" ] || usage "$1 is required"; }

while [ $# -gt 0 ]; do
    opt=$1
    case $opt in
        # The comment block at the top of this file is the help.
        -h | --help) sed -n '2,/^set -eu/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        --skeleton) skeleton=1; shift; continue ;;
        --no-system) no_system=1; shift; continue ;;
    esac
    [ $# -ge 2 ] || usage "$opt needs a value"
    case $opt in
        --queue-url) queue_url=$2 ;;
        --dead-letter-url) dead_letter_url=$2 ;;
        --region) region=$2 ;;
        --secrets-bucket) secrets_bucket=$2 ;;
        --secrets-key) secrets_key=$2 ;;
        --kms-key-id) kms_key_id=$2 ;;
        --pool) pool=$2 ;;
        --allowed-registry) allowed_registries="$allowed_registries $2" ;;
        --warm-image) warm_images="$warm_images $2" ;;
        --cache-source) cache_source=$2 ;;
        --slots) slots=$2 ;;
        --results-bucket) results_bucket=$2 ;;
        --results-prefix) results_prefix=$2 ;;
        --idle-shutdown-secs) idle_shutdown_secs=$2 ;;
        --on-exit) on_exit=$2 ;;
        --log-forwarder-kind) log_forwarder_kind=$2 ;;
        --log-forwarder-endpoint) log_forwarder_endpoint=$2 ;;
        --log-forwarder-ca-file) log_forwarder_ca_file=$2 ;;
        --log-forwarder-token-secret) log_forwarder_token_secret=$2 ;;
        --install-from) install_from=$2 ;;
        --binary-sha256) binary_sha256=$2 ;;
        --root) root=$2 ;;
        *) usage "unknown option $opt" ;;
    esac
    shift 2
done

# "a b" -> "a", "b" (for a TOML array); the values were checked already.
toml_list() {
    out=""
    for item in $1; do
        out="$out${out:+, }\"$item\""
    done
    printf '%s' "$out"
}

# Write stdin to $1 with mode $2, atomically: deckhand or systemd never see
# half a file, even if this script is killed halfway.
put() {
    mkdir -p "$(dirname "$1")"
    cat >"$1.tmp.$$"
    chmod "$2" "$1.tmp.$$"
    mv -f "$1.tmp.$$" "$1"
}

validate() {
    # systemctl and iptables would act on this host, not on the root.
    [ -z "$root" ] || [ "$no_system" = 1 ] || usage "--root needs --no-system"
    for pair in "slots=$slots" "idle-shutdown-secs=$idle_shutdown_secs"; do
        check_uint "--${pair%%=*}" "${pair#*=}"
    done
    check_chars --pool "$pool"
    case $on_exit in
        none | terminate | shutdown) ;;
        *) usage "--on-exit must be none, terminate or shutdown: '$on_exit'" ;;
    esac
    check_chars --install-from "$install_from"
    check_chars --binary-sha256 "$binary_sha256"
    [ "$skeleton" = 1 ] && return 0
    need --queue-url "$queue_url"
    need --secrets-bucket "$secrets_bucket"
    need --secrets-key "$secrets_key"
    need --kms-key-id "$kms_key_id"
    need --allowed-registry "$allowed_registries"
    # deckhand run refuses to start without it (exit 78): S3 is the record.
    need --results-bucket "$results_bucket"
    need --results-prefix "$results_prefix"
    if [ -z "$region" ]; then
        # https://sqs.REGION.amazonaws.com/... or the legacy REGION.queue.amazonaws.com
        case $queue_url in
            https://sqs.*.amazonaws.com*/*) region=${queue_url#https://sqs.} ;;
            https://*.queue.amazonaws.com*/*) region=${queue_url#https://} ;;
            *) usage "--region is required when the queue URL does not name one" ;;
        esac
        region=${region%%.*}
    fi
    for pair in "queue-url=$queue_url" "dead-letter-url=$dead_letter_url" \
        "region=$region" "secrets-bucket=$secrets_bucket" \
        "secrets-key=$secrets_key" "kms-key-id=$kms_key_id" \
        "cache-source=$cache_source" "results-bucket=$results_bucket" \
        "results-prefix=$results_prefix" "log-forwarder-kind=$log_forwarder_kind" \
        "log-forwarder-endpoint=$log_forwarder_endpoint" \
        "log-forwarder-ca-file=$log_forwarder_ca_file" \
        "log-forwarder-token-secret=$log_forwarder_token_secret"; do
        check_chars "--${pair%%=*}" "${pair#*=}"
    done
    for item in $allowed_registries $warm_images; do
        check_chars "registry or image" "$item"
    done
}

# The config. Only the pool's parameters and the values the unit file relies
# on are written; everything else keeps deckhand's defaults (see
# docs/operations.md for overriding any key with /etc/deckhand/env).
# --skeleton leaves out every section that names the pool's resources.
emit_config() {
    if [ "$skeleton" = 1 ]; then
        cat <<'EOF'
# deckhand config SKELETON baked into the AMI: no pool parameters, no secrets.
# User data (cloud-config.yaml or deckhand-bootstrap) replaces this file at
# first boot; until then `deckhand run` refuses it (exit 78: no queue.url).
EOF
    else
        printf '# Written by deckhand-bootstrap; re-run it to change this file.\n'
    fi
    cat <<EOF

[agent]
slots = $slots
# deckhand.service creates both: StateDirectory=deckhand (on disk) and
# RuntimeDirectory=deckhand (on the /run tmpfs, so secrets never touch a disk).
work_dir = "/var/lib/deckhand"
secrets_dir = "/run/deckhand/secrets"
idle_shutdown_secs = $idle_shutdown_secs
EOF
    [ "$on_exit" = none ] || printf 'on_exit = "%s"\n' "$on_exit"
    if [ "$skeleton" = 0 ]; then
        cat <<EOF

[aws]
region = "$region"

[queue]
url = "$queue_url"
EOF
        [ -z "$dead_letter_url" ] || printf 'dead_letter_url = "%s"\n' "$dead_letter_url"
        printf '\n[results]\nbucket = "%s"\nprefix = "%s"\n' "$results_bucket" "$results_prefix"
        cat <<EOF

[secrets]
bucket = "$secrets_bucket"
key = "$secrets_key"
kms_key_id = "$kms_key_id"
context = { pool = "$pool" }

[images]
allowed_registries = [$(toml_list "$allowed_registries")]
EOF
        [ -z "$warm_images" ] || printf 'warm = [%s]\n' "$(toml_list "$warm_images")"
        [ -z "$cache_source" ] || printf '\n[cache]\nsource = "%s"\n' "$cache_source"
        emit_log_forwarder
    fi
    cat <<EOF

[drain]
# deckhand.service has TimeoutStopSec=150s, sized for these two (60 + 10) and
# for the spot notice's 120 s. Raise it with them, or systemd kills the drain.
stop_timeout_secs = 60
stop_grace_secs = 10
EOF
}

# deckhand checks these at boot: a wrong one turns forwarding off, loudly.
emit_log_forwarder() {
    [ -n "$log_forwarder_kind$log_forwarder_endpoint" ] || return 0
    printf '\n[log_forwarder]\nkind = "%s"\nendpoint = "%s"\n' "$log_forwarder_kind" "$log_forwarder_endpoint"
    [ -z "$log_forwarder_ca_file" ] || printf 'ca_file = "%s"\n' "$log_forwarder_ca_file"
    [ -z "$log_forwarder_token_secret" ] || printf 'token_secret = "%s"\n' "$log_forwarder_token_secret"
}

write_config() {
    emit_config | put "$root/etc/deckhand/config.toml" 0640
}

# systemd/deckhand-imds-block.service, for an AMI without it (scripts/test-packaging
# checks the copy against the file).
write_imds_block_unit() {
    put "$root/etc/systemd/system/deckhand-imds-block.service" 0644 <<'EOF'
# Keeps job containers off the instance metadata service. Packer installs this
# file; user data for an AMI without deckhand writes the same text (two
# embedded copies, scripts/test-packaging checks them against this file).
# deckhand.service requires it, so no job runs before the rule is in place.
[Unit]
# What systemctl status and the boot log call it.
Description=Keep containers off the instance metadata; add deckhand's credentials address
# The DOCKER-USER chain exists once dockerd has started.
Requires=docker.service
After=docker.service
# Docker restarted: apply the rule again, in case it rebuilt its chains.
PartOf=docker.service
Before=deckhand.service

[Service]
# Two commands, run once at start; the unit then stays "active" while the
# rule is in, which deckhand's Requires= checks.
Type=oneshot
RemainAfterExit=yes
# DOCKER-USER sees only forwarded traffic, i.e. containers; the host (and so
# deckhand) still reaches IMDS. -C first so that a re-run adds no duplicate.
# Only 169.254.169.254: the rest of 169.254.0.0/16 may serve job credentials.
# No ExecStop: the rule stays when this unit stops (fail closed).
ExecStart=/bin/sh -c 'iptables -w -C DOCKER-USER -d 169.254.169.254/32 -j DROP 2>/dev/null || iptables -w -I DOCKER-USER 1 -d 169.254.169.254/32 -j DROP'
# Where deckhand serves per-job AWS credentials (credentials.listen), as
# ECS does: on lo, a job reaches it through the host, and AWS SDKs accept
# this link-local address over plain HTTP. "replace" is idempotent.
ExecStart=/sbin/ip address replace 169.254.170.2/32 dev lo

[Install]
# At every boot, whether or not deckhand is enabled.
WantedBy=multi-user.target
EOF
}

# Only when the AMI has no deckhand: a baked binary is never replaced here.
install_deckhand() {
    bin="$root/usr/local/bin/deckhand"
    if [ -e "$bin" ]; then
        [ -z "$install_from" ] || log "deckhand is already installed; not fetching it from $install_from"
        return 0
    fi
    if [ -z "$install_from" ]; then
        [ "$no_system" = 1 ] && return 0
        die "/usr/local/bin/deckhand is missing and --install-from is not set"
    fi
    command -v aws >/dev/null 2>&1 || die "--install-from needs the aws CLI"
    src=${install_from%/}
    # Reuse the positional parameters (the options were parsed already) to
    # pass --region only when there is one (--skeleton has none).
    set --
    [ -z "$region" ] || set -- --region "$region"
    mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system"
    stage=$(mktemp -d "$root/usr/local/bin/.deckhand-install.XXXXXX")
    # The exit trap removes the staging directory whatever happens next.
    trap 'rm -rf "$stage"' EXIT
    aws s3 cp --only-show-errors "$@" "$src/deckhand" "$stage/deckhand" ||
        die "could not fetch $src/deckhand"
    aws s3 cp --only-show-errors "$@" "$src/deckhand.service" "$stage/deckhand.service" ||
        die "could not fetch $src/deckhand.service"
    if [ -n "$binary_sha256" ]; then
        printf '%s  %s\n' "$binary_sha256" "$stage/deckhand" | sha256sum -c - >/dev/null 2>&1 ||
            die "checksum of $src/deckhand does not match --binary-sha256"
    else
        log "warning: no --binary-sha256; trusting the S3 object as it is"
    fi
    chmod 0755 "$stage/deckhand"
    chmod 0644 "$stage/deckhand.service"
    # Same file system, so each mv is atomic.
    mv -f "$stage/deckhand" "$bin"
    mv -f "$stage/deckhand.service" "$root/etc/systemd/system/deckhand.service.tmp.$$"
    mv -f "$root/etc/systemd/system/deckhand.service.tmp.$$" "$root/etc/systemd/system/deckhand.service"
    log "installed deckhand from $src"
}

start_units() {
    if [ "$no_system" = 1 ]; then
        log "--no-system: not touching iptables or systemd"
        return 0
    fi
    # Catch a bad parameter here, with its message, rather than as exit 78 in
    # the journal later. --no-probe: the network may still be settling.
    # env -u: deckhand treats every DECKHAND_* variable as a config override
    # and rejects the ones that name no key, like this script's own two.
    [ "$skeleton" = 1 ] ||
        env -u DECKHAND_ROOT -u DECKHAND_NO_SYSTEM \
            /usr/local/bin/deckhand check --config /etc/deckhand/config.toml --no-probe ||
        die "deckhand check rejected /etc/deckhand/config.toml"
    if [ "$skeleton" = 1 ]; then
        # Baking an image: enable, start nothing. This works with or without a
        # running systemd (Packer's Docker source has none).
        systemctl enable docker.service deckhand-imds-block.service deckhand.service
        return 0
    fi
    systemctl daemon-reload
    # Starting the block unit starts Docker too (Requires=).
    systemctl enable --now deckhand-imds-block.service
    systemctl enable deckhand.service
    # The unit may have failed at boot on the skeleton config: forget that.
    systemctl reset-failed deckhand.service 2>/dev/null || true
    # --no-block: as user data this runs inside cloud-init's final stage, which
    # should not wait for image pulls; deckhand's own log tells how it went.
    systemctl restart --no-block deckhand.service
}

validate
install_deckhand
write_imds_block_unit
write_config
start_units
log "done (config in ${root:-}/etc/deckhand/config.toml)"
