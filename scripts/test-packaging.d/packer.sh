# shellcheck shell=bash
# Sourced by scripts/test-packaging: the Packer template's checks (fmt, HCL2,
# cleanup, Packer 1.6.6 offline).

# Set by scripts/test-packaging before it sources this file.
: "${work:?}"

check_packer_fmt() {
    packer fmt -check -diff packer/deckhand.pkr.hcl
}

# The whole template, including the required_plugins block that Packer 1.6.6
# cannot read, through an HCL2 parser; then what the issue asks of it.
check_packer_hcl2() {
    # hclpy: install_tools sets it before any check runs.
    # shellcheck disable=SC2154
    "$hclpy" - packer/deckhand.pkr.hcl <<'PY'
import sys, hcl2
def s(v):  # python-hcl2 8 keeps the quotes of string literals
    return v[1:-1] if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"' else v
doc = hcl2.load(open(sys.argv[1]))
amazon = doc["packer"][0]["required_plugins"][0]["amazon"]
assert s(amazon["source"]) == "github.com/hashicorp/amazon", amazon
assert s(amazon["version"]) == ">= 1.2.0", amazon
src = next(iter(doc["source"][0].items()))
assert s(src[0]) == "amazon-ebs", src[0]
ebs = next(iter(src[1].values()))
flt = ebs["source_ami_filter"][0]
assert s(flt["filters"]["name"]).startswith("debian-12-"), flt
assert [s(o) for o in flt["owners"]] == ["136693071363"], "owner must be Debian's account"
md = ebs["metadata_options"][0]
assert s(md["http_tokens"]) == "required", md
assert s(ebs["imds_support"]) == "v2.0"
variables = {s(k): v for d in doc["variable"] for k, v in d.items()}
# What scripts/build-static produces, per architecture.
assert s(variables["deckhand_binary"]["default"]) == "", "the binary follows var.arch unless named"
text = open(sys.argv[1]).read()
for arch, triple, itype in (("x86_64", "x86_64", "t3.small"), ("arm64", "aarch64", "t4g.small")):
    for needed in (f"target/{triple}-unknown-linux-gnu/release/deckhand", f'"{itype}"'):
        assert needed in text, f"{arch}: no {needed} in the template"
assert "list(string)" in variables["prepull_images"]["type"]
provs = [(s(k), v) for p in doc["build"][0]["provisioner"] for k, v in p.items()]
sources = " ".join(str(v.get("source", "")) for k, v in provs if k == "file")
for needed in ("local.deckhand_binary", "/deckhand.service", "/deckhand-imds-block.service", "bootstrap.sh"):
    assert needed in sources, f"no file provisioner for {needed}"
last = provs[-1]
assert last[0] == "shell" and "cleanup" in last[1]["execute_command"], "the last provisioner must be the cleanup"
print("required_plugins, Debian 12 filter, IMDSv2, provisioners, cleanup last: ok")
PY
}

# What the cleanup step must remove, as the issue lists it: commands, not
# comments, so deleting a step fails this.
check_packer_cleanup() {
    local missing=() what code
    code=$(sed -n '/^cleanup_step()/,/^}/p' packer/provision.sh | grep -v '^[[:space:]]*#')
    for what in "rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys" "cloud-init clean" \
        "truncate -s 0 /etc/machine-id" "/root/.bash_history" "rm -f /etc/ssh/ssh_host_" \
        "is not the skeleton"; do
        grep -qF -- "$what" <<<"$code" || missing+=("$what")
    done
    [ ${#missing[@]} -eq 0 ] || { printf 'cleanup_step lacks: %s\n' "${missing[@]}"; return 1; }
    echo "authorized_keys, cloud-init data, machine-id, host keys, history, skeleton check"
}

# Packer 1.6.6 predates plugins: scripts/packer-compat makes a tree whose copy
# of the template drops the few plugin-era attributes (the HCL2 check above
# covers them); here it also gets stubs where scripts/build-static puts the
# binaries.
make_packer_copy() {
    local tree=$work/packer-tree
    scripts/packer-compat "$tree" &&
        : >"$work/deckhand-stub" &&
        mkdir -p "$tree/target/x86_64-unknown-linux-gnu/release" "$tree/target/aarch64-unknown-linux-gnu/release" &&
        : >"$tree/target/x86_64-unknown-linux-gnu/release/deckhand" &&
        : >"$tree/target/aarch64-unknown-linux-gnu/release/deckhand"
}

# Offline for certain: an empty network namespace where unshare works,
# otherwise no AWS credentials or metadata service to find.
packer_offline() {
    if unshare -n true 2>/dev/null; then
        (cd "$work/packer-tree" && unshare -n packer "$@")
    else
        echo "(no network namespace here; running without AWS credentials instead)"
        (cd "$work/packer-tree" && env -u AWS_PROFILE AWS_ACCESS_KEY_ID=none AWS_SECRET_ACCESS_KEY=none \
            AWS_EC2_METADATA_DISABLED=true packer "$@")
    fi
}

check_packer_validate_syntax() {
    packer_offline validate -syntax-only packer/deckhand.pkr.hcl
}

# Full validation (variables, every block against 1.6.6's schemas, provisioner
# sources exist) needs no AWS call: amazon-ebs looks the source AMI up only at
# build time. For each architecture, with stubs where scripts/build-static puts
# the binaries (only their existence is checked), and with a binary named
# outright; an unknown architecture must fail.
check_packer_validate() {
    local arch
    for arch in x86_64 arm64; do
        packer_offline validate -var "arch=$arch" packer/deckhand.pkr.hcl || return 1
    done
    packer_offline validate -var arch=arm64 -var "deckhand_binary=$work/deckhand-stub" packer/deckhand.pkr.hcl || return 1
    if packer_offline validate -var arch=sparc packer/deckhand.pkr.hcl >/dev/null 2>&1; then
        echo "arch=sparc validated"
        return 1
    fi
    echo "x86_64 and arm64 validate; sparc does not"
}
