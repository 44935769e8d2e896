# shellcheck shell=bash
# Sourced by scripts/test-packaging: the log forwarder's configuration as
# deckhand renders it (`deckhand forwarder-config`), checked by rsyslog itself.

# Set by scripts/test-packaging before it sources this file.
: "${py:?}" "${work:?}" "${deckhand_bin:?}"

# forwarder_toml NAME KEYS...: bootstrap.sh's example config (a bundle, so a
# token_secret is allowed) with a [log_forwarder] of KEYS (key=value lines).
forwarder_toml() {
    local out=$work/forwarder/$1.toml
    shift
    mkdir -p "$work/forwarder" || return 1
    { cat "$work/full/etc/deckhand/config.toml" && printf '\n[log_forwarder]\n' && printf '%s\n' "$@"; } >"$out"
    echo "$out"
}

# rsyslogd -N1 on the rendered file, its work directory and counter file moved
# under $work (the real ones exist only on an instance).
check_forwarder_renders() {
    local ca=$work/forwarder/ca.pem kind config rendered
    mkdir -p "$work/forwarder/spool" || return 1
    printf -- '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n' >"$ca"
    for kind in rfc5424 json rfc5424-tls; do
        config=$(forwarder_toml "$kind" "kind = \"${kind%-tls}\"" 'endpoint = "logs.example.net:6514"' \
            'token_secret = "log-sink-token"' 'max_disk_mb = 64') || return 1
        [ "$kind" != rfc5424-tls ] || printf 'ca_file = "%s"\n' "$ca" >>"$config"
        rendered=$work/forwarder/$kind.conf
        env -u DECKHAND_CONFIG -u DECKHAND_BIN "$deckhand_bin" --config "$config" forwarder-config >"$rendered" || return 1
        grep -q 'TOKEN-PLACEHOLDER' "$rendered" || { echo "$kind: no token placeholder"; return 1; }
        sed -i -e "s#/var/lib/deckhand-forwarder#$work/forwarder/spool#" \
            -e "s#/run/deckhand-forwarder/#$work/forwarder/#" "$rendered"
        rsyslogd -N1 -f "$rendered" 2>&1 | sed "s/^/$kind: /"
        [ "${PIPESTATUS[0]}" = 0 ] || return 1
    done
    # Without [log_forwarder]: nothing to render.
    env -u DECKHAND_CONFIG -u DECKHAND_BIN "$deckhand_bin" --config "$work/full/etc/deckhand/config.toml" forwarder-config |
        grep -q 'forwarding is off'
}

# Each bad setting: exit 78 and the key named.
check_forwarder_rejects() {
    local link=$work/forwarder/link.pem key kind endpoint ca lines config out code
    mkdir -p "$work/forwarder" || return 1
    printf -- '-----BEGIN CERTIFICATE-----\n' >"$work/forwarder/real.pem"
    ln -sf "$work/forwarder/real.pem" "$link"
    while IFS='|' read -r key kind endpoint ca; do
        lines=("kind = \"$kind\"" "endpoint = \"$endpoint\"")
        [ -z "$ca" ] || lines+=("ca_file = \"$ca\"")
        config=$(forwarder_toml bad "${lines[@]}") || return 1
        code=0
        out=$(env -u DECKHAND_CONFIG -u DECKHAND_BIN "$deckhand_bin" --config "$config" forwarder-config 2>&1) || code=$?
        { [ "$code" = 78 ] && grep -q "log_forwarder.$key" <<<"$out"; } ||
            { echo "${lines[*]}: exit $code, $out"; return 1; }
        echo "$out"
    done <<EOF
kind|splunk|logs.example.net:6514|
endpoint|rfc5424|logs.example.net|
ca_file|rfc5424|logs.example.net:6514|$link
ca_file|rfc5424|logs.example.net:6514|$work/forwarder/missing.pem
EOF
}
