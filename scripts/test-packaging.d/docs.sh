# shellcheck shell=bash
# Sourced by scripts/test-packaging: the IAM policy and the JSON in the guides.

# Set by scripts/test-packaging before it sources this file.
: "${py:?}"

check_iam_policy() {
    "$py" - docs/iam/instance-role.json docs/operations.md <<'PY'
import json, sys
policy = json.load(open(sys.argv[1]))
guide = open(sys.argv[2]).read()
assert policy["Version"] == "2012-10-17"
as_list = lambda v: v if isinstance(v, list) else [v]
# AWS offers no resource-level permission for these, so "*" is required.
star_ok = {"autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeLifecycleHooks"}
actions, sids = set(), set()
pool_decrypt = False
for st in policy["Statement"]:
    sid = st.get("Sid", "")
    assert sid and sid not in sids, f"every statement needs its own Sid: {st}"
    sids.add(sid)
    assert sid in guide, f"{sid} is not explained in docs/operations.md"
    assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st, sid
    acts = as_list(st["Action"])
    assert all("*" not in a for a in acts), f"{sid}: wildcard action"
    actions |= set(acts)
    if "*" in as_list(st["Resource"]):
        assert set(acts) <= star_ok, f'{sid}: "Resource": "*" for {acts}'
        assert "Wildcard" in sid, f"{sid}: say in the Sid why * is needed"
    cond = json.dumps(st.get("Condition", {}))
    if "kms:Decrypt" in acts:
        # The pool's own context, or S3's for the SSE-KMS bundle object, and
        # then only through S3.
        assert "kms:EncryptionContext:pool" in cond or (
            "kms:EncryptionContext:aws:s3:arn" in cond and "kms:ViaService" in cond), sid
        pool_decrypt = pool_decrypt or "kms:EncryptionContext:pool" in cond
    if any(a.startswith("autoscaling:") and not a.startswith("autoscaling:Describe") for a in acts):
        assert "autoscaling:ResourceTag/" in cond, sid
    if "ec2:TerminateInstances" in acts:
        assert "ec2:SourceInstanceARN" in cond or "ec2:ResourceTag/" in cond, sid
assert pool_decrypt, "kms:Decrypt must be allowed with kms:EncryptionContext:pool"
# Exactly what deckhand calls: SQS receive/delete/visibility/send, and queue
# attributes for `deckhand check`; S3 get (and head), put (conditional), delete
# (claims), list (404 not 403, and check's HeadBucket; a cache prefix's
# newest key), abort (a cache save's multipart upload cut short); KMS decrypt; Auto
# Scaling and EC2 for on_exit = "terminate", the termination hook and
# autoscaling.protect_busy.
needed = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:SendMessage",
          "sqs:GetQueueAttributes", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
          "s3:AbortMultipartUpload", "kms:Decrypt", "autoscaling:TerminateInstanceInAutoScalingGroup",
          "autoscaling:CompleteLifecycleAction", "autoscaling:DescribeAutoScalingInstances",
          "autoscaling:DescribeLifecycleHooks", "autoscaling:SetInstanceProtection",
          "ec2:TerminateInstances", "sts:AssumeRole"}
assert needed <= actions, f"missing: {sorted(needed - actions)}"
assert actions <= needed, f"deckhand does not call: {sorted(actions - needed)}"
assert not any(a.startswith("ecr:") for a in actions), "ECR is not needed"
print(f"{len(sids)} statements; Resource * only for {sorted(star_ok & actions)}")
PY
}

# secrets.md quotes statements of the policy: they must be the same.
check_secrets_doc_iam() {
    "$py" - docs/iam/instance-role.json docs/secrets.md <<'PY'
import json, re, sys
policy = {st["Sid"]: st for st in json.load(open(sys.argv[1]))["Statement"]}
blocks = re.findall(r"```json\n(.*?)```", open(sys.argv[2]).read(), re.S)
quoted = [st for b in blocks for st in (lambda d: d if isinstance(d, list) else [d])(json.loads(b)) if "Sid" in st]
assert quoted, "no IAM statements quoted in docs/secrets.md"
for st in quoted:
    assert st["Sid"] in policy, f"{st['Sid']} is not in the policy"
    assert st == policy[st["Sid"]], f"{st['Sid']} differs from the policy"
print("quoted:", ", ".join(st["Sid"] for st in quoted))
PY
}

# Every ```json block in the guide is something to paste: it must parse.
check_ops_json() {
    "$py" - docs/operations.md <<'PY'
import json, re, sys
blocks = re.findall(r"```json\n(.*?)```", open(sys.argv[1]).read(), re.S)
assert blocks, "no JSON examples found"
for i, b in enumerate(blocks, 1):
    try:
        doc = json.loads(b)
    except ValueError as e:
        sys.exit(f"JSON block {i}: {e}\n{b}")
    # Redrive policies are JSON inside a string: parse those too.
    for k in ("RedrivePolicy", "RedriveAllowPolicy"):
        if k in doc:
            json.loads(doc[k])
print(f"{len(blocks)} JSON blocks parse")
PY
}
