# shellcheck shell=bash
# Sourced by scripts/test-packaging: the user data's checks (cloud-config.yaml,
# bootstrap.sh) and `deckhand check` on the configs they write.

# Set by scripts/test-packaging before it sources this file.
: "${deckhand_bin:?}" "${params[0]:?}" "${py:?}" "${work:?}"

check_cloud_init_schema() {
    cloud-init schema --config-file userdata/cloud-config.yaml
}

check_userdata_size() {
    local f size rc=0
    for f in userdata/cloud-config.yaml userdata/bootstrap.sh; do
        size=$(wc -c <"$f")
        echo "$f: $size bytes"
        [ "$size" -le 16384 ] || rc=1
    done
    return $rc
}

# The user data's two embedded copies of the IMDS-block unit (for AMIs without
# it) are the file under systemd/, byte for byte.
check_imds_unit_identical() {
    cmp systemd/deckhand-imds-block.service "$work/cloud/root/etc/systemd/system/deckhand-imds-block.service" &&
        cmp systemd/deckhand-imds-block.service "$work/full/etc/systemd/system/deckhand-imds-block.service"
}

check_bootstrap_config() {
    "$py" - "$work/full/etc/deckhand/config.toml" <<'PY'
import os, stat, sys, tomllib
path = sys.argv[1]
mode = stat.S_IMODE(os.stat(path).st_mode)
assert mode == 0o640, f"mode {mode:o}, want 640"
c = tomllib.load(open(path, "rb"))
assert c["queue"]["url"] == "https://sqs.eu-west-1.amazonaws.com/123456789012/ci-jobs"
assert c["aws"]["region"] == "eu-west-1", "region not derived from the queue URL"
assert c["agent"]["slots"] == 3
assert c["agent"]["work_dir"] == "/var/lib/deckhand"
assert c["agent"]["secrets_dir"].startswith("/run/deckhand/"), "secrets must be under the unit's RuntimeDirectory"
assert c["secrets"] == {"bucket": "ci-pool-secrets", "key": "pools/ci/bundle.json",
                        "kms_key_id": "alias/ci-pool", "context": {"pool": "ci"}}
assert c["images"]["allowed_registries"] == ["registry.internal:5000"]
assert c["images"]["warm"] == ["registry.internal:5000/ci/rust:1.83"]
assert c["cache"]["source"] == "s3://ci-cache/cache.tar.zst"
assert c["results"] == {"bucket": "ci-results", "prefix": "results/"}
print("valid TOML with the given parameters, mode 0640")
PY
}

# cloud-init's schema allows unknown top-level keys, so say what must be there:
# both files, and a runcmd that checks the config and enables and starts both
# units in order.
check_cloud_config_steps() {
    "$py" - userdata/cloud-config.yaml <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
paths = {f["path"] for f in doc.get("write_files", [])}
for p in ("/etc/deckhand/config.toml", "/etc/systemd/system/deckhand-imds-block.service"):
    assert p in paths, f"write_files lacks {p}"
script = "\n".join(c if isinstance(c, str) else " ".join(c) for c in doc.get("runcmd", []))
steps = ["deckhand check --config /etc/deckhand/config.toml --no-probe",
         "systemctl daemon-reload",
         "systemctl enable --now deckhand-imds-block.service",
         "systemctl enable deckhand.service",
         "systemctl start --no-block deckhand.service"]
at = -1
for step in steps:
    i = script.find(step)
    assert i > at, f"runcmd lacks, or misorders: {step}"
    at = i
print("write_files and runcmd steps in order")
PY
}

check_cloud_config_toml() {
    "$py" - "$work/cloud/root/etc/deckhand/config.toml" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
for section in ("agent", "aws", "queue", "results", "secrets", "images", "drain"):
    assert section in c, f"[{section}] missing"
assert c["agent"]["secrets_dir"].startswith("/run/deckhand/")
# deckhand check does not test what only `deckhand run` requires.
assert c["queue"].get("url"), "queue.url: required by deckhand run"
assert c["results"].get("bucket"), "results.bucket: required by deckhand run"
assert c["secrets"].get("context"), "secrets.context: required with a bundle"
print("sections:", ", ".join(sorted(c)))
PY
}

# The AMI's skeleton must name no pool resource and hold no secret.
check_bootstrap_skeleton() {
    local root=$work/skeleton
    bootstrap "$root" --skeleton 2>/dev/null &&
        "$py" - "$root/etc/deckhand/config.toml" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
leaked = {"aws", "queue", "results", "secrets", "images", "cache"} & set(c)
assert not leaked, f"skeleton has pool sections: {sorted(leaked)}"
print("sections:", ", ".join(sorted(c)))
PY
}

# Bad parameters exit 2 and write nothing.
check_bootstrap_rejects() {
    local root=$work/rejects case_args rc without_results_bucket="${params[*]}"
    without_results_bucket=${without_results_bucket/ --results-bucket ci-results/}
    local -a cases=(
        "missing queue URL|--secrets-bucket b --secrets-key k --kms-key-id x --allowed-registry r"
        "quote in a value|${params[*]} --secrets-key a\"b"
        "semicolon in a value|${params[*]} --kms-key-id a;b"
        "leading zero in slots|${params[*]} --slots 08"
        "unknown option|${params[*]} --frobnicate 1"
        "no region in a custom queue URL|${params[*]} --queue-url http://127.0.0.1:4566/000000000000/q"
        "missing results bucket|${without_results_bucket}"
        "unknown --on-exit|${params[*]} --on-exit reboot"
    )
    for c in "${cases[@]}"; do
        read -r -a case_args <<<"${c#*|}"
        rc=0
        bootstrap "$root" "${case_args[@]}" 2>/dev/null || rc=$?
        if [ "$rc" != 2 ] || [ -e "$root/etc/deckhand/config.toml" ]; then
            echo "${c%%|*}: exit $rc (want 2), config written: $([ -e "$root/etc/deckhand/config.toml" ] && echo yes || echo no)"
            return 1
        fi
        echo "${c%%|*}: rejected"
    done
    # --root alone would let systemctl act on this host. Stand-ins that fail
    # come first in PATH, so even a broken guard could not touch the host.
    local guard=$work/guard-bin
    mkdir -p "$guard" &&
        printf '#!/bin/sh\necho "a stand-in was called" >&2\nexit 99\n' >"$guard/systemctl" &&
        cp "$guard/systemctl" "$guard/iptables" && chmod +x "$guard/systemctl" "$guard/iptables" || return 1
    rc=0
    PATH="$guard:$PATH" sh userdata/bootstrap.sh "${params[@]}" --root "$root" 2>/dev/null || rc=$?
    if [ "$rc" != 2 ] || [ -e "$root/etc/deckhand/config.toml" ]; then
        echo "--root without --no-system: exit $rc (want 2)"
        return 1
    fi
    echo "--root without --no-system: rejected"
}

# --install-from with a stand-in aws CLI that copies from a local directory:
# the binary and unit are installed, a wrong checksum installs nothing.
check_bootstrap_install() {
    local s3=$work/s3 bin=$work/fakebin root=$work/install sum
    mkdir -p "$s3/ci-artifacts/deckhand/0.1.0" "$bin" &&
        printf '#!/bin/sh\necho deckhand 0.1.0\n' >"$s3/ci-artifacts/deckhand/0.1.0/deckhand" &&
        cp systemd/deckhand.service "$s3/ci-artifacts/deckhand/0.1.0/" &&
        cat >"$bin/aws" <<EOF &&
#!/bin/sh
# stand-in: aws s3 cp [options] s3://BUCKET/KEY DEST
[ "\$1 \$2" = "s3 cp" ] || exit 1
shift 2
while [ \$# -gt 2 ]; do shift; done
case \$1 in s3://*) cp "$s3/\${1#s3://}" "\$2" ;; *) exit 1 ;; esac
EOF
        chmod +x "$bin/aws" || return 1
    sum=$(sha256sum "$s3/ci-artifacts/deckhand/0.1.0/deckhand" | cut -d' ' -f1)
    if PATH="$bin:$PATH" bootstrap "$root/bad" "${params[@]}" --install-from s3://ci-artifacts/deckhand/0.1.0/ \
        --binary-sha256 0000000000000000000000000000000000000000000000000000000000000000 2>/dev/null; then
        echo "a wrong checksum was accepted"
        return 1
    fi
    if [ -e "$root/bad/usr/local/bin/deckhand" ] || ls "$root/bad/usr/local/bin/".deckhand-install.* >/dev/null 2>&1; then
        echo "a wrong checksum left files behind"
        return 1
    fi
    PATH="$bin:$PATH" bootstrap "$root/good" "${params[@]}" --install-from s3://ci-artifacts/deckhand/0.1.0/ \
        --binary-sha256 "$sum" 2>/dev/null &&
        [ -x "$root/good/usr/local/bin/deckhand" ] &&
        cmp systemd/deckhand.service "$root/good/etc/systemd/system/deckhand.service" &&
        echo "installed binary and unit; wrong checksum refused"
}

# deckhand's own validation of what the user data writes. env -i: deckhand
# treats every DECKHAND_* variable as a config override and rejects names that
# are not keys (DECKHAND_BIN is one), and the caller's real overrides would
# change what is being validated.
deckhand_check() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$deckhand_bin" check --config "$1" --no-probe
}

check_deckhand_accepts() {
    if [ ! -x "$deckhand_bin" ]; then
        echo "no deckhand binary at $deckhand_bin: build it (cargo build) or set DECKHAND_BIN, then run this again"
        return 1
    fi
    deckhand_check "$1"
}

check_deckhand_rejects_slots() {
    local root=$work/slots65 rc=0
    if [ ! -x "$deckhand_bin" ]; then
        echo "no deckhand binary at $deckhand_bin: build it (cargo build) or set DECKHAND_BIN, then run this again"
        return 1
    fi
    bootstrap "$root" "${params[@]}" --slots 65 2>/dev/null || return 1
    deckhand_check "$root/etc/deckhand/config.toml" || rc=$?
    echo "exit $rc"
    [ "$rc" = 78 ]
}
