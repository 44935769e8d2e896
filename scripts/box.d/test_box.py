#!/usr/bin/env python3
"""The box's tests: the image Packer built boots as an instance would, and deckhand
runs under systemd inside it (docs/packaging.md, "The box").

    scripts/box test      (builds the image, then runs this with the stack's venv)

Two boots. The first takes userdata/cloud-config.yaml, filled in for the local
stack with a log forwarder to scripts/box's sink, and goes through the whole
life of a host: cloud-init, READY, a job (and its lines at the sink), the IMDS
block, a bad config, a hung agent, the sink away and back, `systemctl stop`, a
spot notice (and the last line at the sink). The second takes
userdata/bootstrap.sh as the user data, with a log_forwarder of an unknown kind,
and runs one job. Each wait
has a generous deadline and polls a condition; nothing sleeps and then asserts.
Prints one PASS/FAIL line per check and the boot figure; exits 1 on a failure.
"""

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import uuid

import boto3

import forwarding

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BOX = os.environ.get("BOX_NAME", "deckhand-box")
STACK_DIR = os.environ.get("STACK_DIR", "/var/lib/deckhand-stack")
ENDPOINT = os.environ["STACK_AWS_ENDPOINT_URL"]
REGION = os.environ.get("AWS_REGION", "us-east-1")
IMAGE = os.environ["STACK_IMAGE"]
REGISTRY = os.environ["STACK_REGISTRY"]
BIN = os.environ.get("BOX_BINARY") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")),
    "x86_64-unknown-linux-gnu", "release", "deckhand")
RUN = f"box-{int(time.time())}-{uuid.uuid4().hex[:6]}"
SINK_LOG = forwarding.sink_log(STACK_DIR, BOX)
SINK = "192.0.2.1:10514"

sqs = boto3.client("sqs", endpoint_url=ENDPOINT, region_name=REGION)
s3 = boto3.client("s3", endpoint_url=ENDPOINT, region_name=REGION)
kms = boto3.client("kms", endpoint_url=ENDPOINT, region_name=REGION)

results = []


def log(msg):
    print(f"box test: {msg}", file=sys.stderr, flush=True)


def wait_for(fn, what, deadline=120, interval=0.5):
    end = time.monotonic() + deadline
    last = None
    while True:
        try:
            value = fn()
        except Exception as e:  # a box still booting answers with errors
            value, last = None, e
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}"
                                 + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def box(*cmd, check=True, input=None):
    p = subprocess.run(["docker", "exec", "-i", BOX, *cmd], capture_output=True, text=True,
                       input=input, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stdout}{p.stderr}")
    return p


def show(prop, unit="deckhand.service"):
    return box("systemctl", "show", "-p", prop, "--value", *([unit] if unit else [])).stdout.strip()


def start_deckhand(verb="start", *flags):
    """`systemctl VERB deckhand.service`, then waits for it to be active (READY=1)."""
    box("systemctl", verb, *flags, "deckhand.service")
    wait_for(lambda: show("ActiveState") == "active", "deckhand.service active", deadline=120)


def running_job(job_id):
    return box("docker", "ps", "-q", "--filter", f"label=deckhand.job_id={job_id}").stdout.strip()


def start_job(pool, name, script):
    """Sends a job running `script` and waits for its container; its id."""
    jid = f"{RUN}-{name}"
    pool.send(jid, ["sh", "-c", script])
    wait_for(lambda: running_job(jid), f"{jid} running", deadline=120)
    return jid


def journal():
    return box("journalctl", "-u", "deckhand.service", "-o", "cat", "--no-pager").stdout


def check(name):
    def wrap(fn):
        def run(*args):
            t = time.monotonic()
            try:
                detail = fn(*args)
                results.append((True, name))
                print(f"PASS  {name} ({time.monotonic() - t:.1f} s){': ' + detail if detail else ''}",
                      flush=True)
            except Exception:
                results.append((False, name))
                print(f"FAIL  {name}\n{traceback.format_exc()}", flush=True)
                dump_box()
        return run
    return wrap


def dump_box():
    for cmd in (["systemctl", "--failed", "--no-pager"],
                ["systemctl", "status", "--no-pager", "deckhand.service"],
                ["journalctl", "-u", "deckhand.service", "-n", "30", "--no-pager", "-o", "cat"]):
        p = box(*cmd, check=False)
        print(f"--- {' '.join(cmd)}\n{p.stdout}{p.stderr}", flush=True)


# --- the pool's resources in moto -------------------------------------------

class Pool:
    """A queue with a DLQ, results, a sealed secrets bundle and a cache archive."""

    def __init__(self, name):
        self.name = name
        dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        self.dlq = dlq
        self.queue = sqs.create_queue(QueueName=name, Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"}),
        })["QueueUrl"]
        self.bucket = name
        s3.create_bucket(Bucket=name)
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=f"alias/{name}", TargetKeyId=key)
        self.kms_alias = f"alias/{name}"
        self.seal()
        self.put_cache()

    def seal(self):
        with tempfile.TemporaryDirectory() as d:
            cfg = os.path.join(d, "seal.toml")
            with open(cfg, "w") as f:
                f.write(f'[aws]\nregion = "{REGION}"\nendpoint_url = "{ENDPOINT}"\n')
            secrets = os.path.join(d, "secrets.toml")
            with open(secrets, "w") as f:
                f.write('box_token = "box-secret-value-1234"\n')
            env = {k: v for k, v in os.environ.items() if not k.startswith("DECKHAND_")}
            subprocess.run([BIN, "--config", cfg, "--log-format", "text", "seal",
                            "--kms-key", self.kms_alias, "--context", "pool=box",
                            "--in", secrets, "--out", f"s3://{self.bucket}/secrets/bundle.json"],
                           check=True, env=env, capture_output=True, timeout=60)

    def put_cache(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "cache.tar.gz")
            with tarfile.open(path, "w:gz") as tar:
                marker = os.path.join(d, "box-cache-marker")
                with open(marker, "w") as f:
                    f.write("warm\n")
                tar.add(marker, arcname="box-cache-marker")
            s3.upload_file(path, self.bucket, "cache/cache.tar.gz")

    def params(self):
        return {
            ("aws", "region"): f'"{REGION}"',
            ("queue", "url"): f'"{self.queue}"',
            ("queue", "dead_letter_url"): f'"{self.dlq}"',
            ("results", "bucket"): f'"{self.bucket}"',
            ("secrets", "bucket"): f'"{self.bucket}"',
            ("secrets", "key"): '"secrets/bundle.json"',
            ("secrets", "kms_key_id"): f'"{self.kms_alias}"',
            ("secrets", "context"): '{ pool = "box" }',
            ("images", "allowed_registries"): f'["{REGISTRY}"]',
            ("images", "warm"): f'["{IMAGE}"]',
            ("cache", "source"): f'"s3://{self.bucket}/cache/cache.tar.gz"',
            ("profiles.default", "memory_mb"): "256",
            ("profiles.default", "cpus"): "1.0",
        }

    def send(self, job_id, command, **extra):
        job = {"version": 1, "id": job_id, "image": IMAGE, "command": command, **extra}
        sqs.send_message(QueueUrl=self.queue, MessageBody=json.dumps(job))

    def result(self, job_id, attempt=None):
        key = f"results/{job_id}/" + (f"attempt-{attempt}/" if attempt else "") + "result.json"
        try:
            return json.loads(s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    def log_text(self, job_id):
        return s3.get_object(Bucket=self.bucket, Key=f"results/{job_id}/log.txt")["Body"].read().decode()


def cloud_config(pool):
    """userdata/cloud-config.yaml with every `# PARAM` value of the config filled in."""
    text = open(os.path.join(REPO, "userdata", "cloud-config.yaml")).read()
    params, used, section, out = pool.params(), set(), None, []
    for line in text.split("\n"):
        m = re.match(r"^\s+\[([\w.]+)\]\s*$", line)
        if m:
            section = m.group(1)
        m = re.match(r"^(\s+)(\w+) = .*# PARAM", line)
        if m and (section, m.group(2)) in params:
            line = f"{m.group(1)}{m.group(2)} = {params[(section, m.group(2))]}"
            used.add((section, m.group(2)))
        out.append(line)
    missing = set(params) - used
    assert not missing, f"cloud-config.yaml has no PARAM line for {sorted(missing)}"
    leftover = [l for l in out if "# PARAM" in l and "=" in l and ".internal" in l]
    assert not leftover, f"unfilled PARAM lines: {leftover}"
    return forwarding.with_forwarder("\n".join(out), SINK, "box_token")


def bootstrap_script(pool):
    """userdata/bootstrap.sh with its PARAMETERS block filled in."""
    text = open(os.path.join(REPO, "userdata", "bootstrap.sh")).read()
    values = {
        "queue_url": pool.queue, "dead_letter_url": pool.dlq, "region": REGION,
        "secrets_bucket": pool.bucket, "secrets_key": "secrets/bundle.json",
        "kms_key_id": pool.kms_alias, "pool": "box", "allowed_registries": REGISTRY,
        "warm_images": IMAGE, "cache_source": f"s3://{pool.bucket}/cache/cache.tar.gz",
        "results_bucket": pool.bucket,
        # Hostile: a kind no forwarder has. The host must run jobs regardless.
        "log_forwarder_kind": "splunk", "log_forwarder_endpoint": SINK,
    }
    head, rest = text.split("# ---- end of PARAMETERS ----", 1)
    for name, value in values.items():
        head, n = re.subn(rf'(?m)^{name}=".*?"', f'{name}="{value}"', head)
        assert n == 1, f"bootstrap.sh has no PARAMETERS line for {name}"
    return head + "# ---- end of PARAMETERS ----" + rest


def boot(user_data):
    with tempfile.NamedTemporaryFile("w", suffix=".user-data", delete=False) as f:
        f.write(user_data)
    try:
        subprocess.run([os.path.join(REPO, "scripts", "box"), "up", f.name], check=True, timeout=300)
    finally:
        os.unlink(f.name)


# --- checks -------------------------------------------------------------------

@check("boot: cloud-init done without errors, system running, deckhand active after READY")
def check_boot():
    st = await_boot()
    assert "status: done" in st, st
    # The NoCloud seed was used (not cloud-init's fallback), so the user data ran.
    ds = box("cloud-init", "query", "platform", check=False).stdout.strip()
    assert ds == "nocloud", f"cloud-init's data source: {ds!r}"
    # systemd breaks an ordering cycle by dropping a job, which can leave the
    # system "running" with cloud-init silently skipped.
    boot_log = box("journalctl", "-b", "--no-pager", "-o", "cat").stdout
    assert "ordering cycle" not in boot_log, [l for l in boot_log.splitlines() if "cycle" in l]
    # READY=1 is what turned activating into active (Type=notify); the warm image
    # and the cache are in place by then because deckhand sends it only after both.
    images = box("docker", "image", "inspect", "--format", "{{.Id}}", IMAGE, check=False)
    assert images.returncode == 0, f"warm image {IMAGE} missing after READY"
    assert "cache" in journal(), "no cache phase in the journal"
    status = show("StatusText")
    return (f"systemd start -> READY {boot_figure()[0]:.2f} s; deckhand's own boot_ms "
            f"{boot_ms()}; status {status!r}")


def boot_ms():
    """deckhand's own `boot_ms`, from its last `Bootstrapped.` line."""
    lines = [l for l in journal().splitlines() if "Bootstrapped." in l]
    assert lines, "no 'Bootstrapped.' line in the journal"
    return json.loads(lines[-1])["boot_ms"]


def await_boot():
    """Waits for the box's boot: systemd, every stage of cloud-init (which must
    not fail), deckhand.service active (its READY=1), the system `running`.
    cloud-init's status, as `cloud-init status --long` prints it."""
    wait_for(lambda: box("test", "-S", "/run/systemd/private", check=False).returncode == 0,
             "systemd in the box", deadline=120)
    # cloud-init status --wait returns once every stage ran: 0 done, 1 an error.
    st = box("cloud-init", "status", "--wait", "--long", check=False)
    assert st.returncode == 0, f"cloud-init: exit {st.returncode}\n{st.stdout}{st.stderr}"
    wait_for(lambda: show("ActiveState") == "active", "deckhand.service active", deadline=300)
    running = box("systemctl", "is-system-running", "--wait", check=False).stdout.strip()
    assert running == "running", f"is-system-running: {running}\n" + box(
        "systemctl", "--failed", "--no-pager", check=False).stdout
    return st.stdout


def boot_figure():
    """Seconds from systemd's start, and from deckhand's, to deckhand's READY."""
    entered = int(show("ActiveEnterTimestampMonotonic"))
    userspace = int(show("UserspaceTimestampMonotonic", unit=None))
    started = int(show("ExecMainStartTimestampMonotonic"))
    return (entered - userspace) / 1e6, (entered - started) / 1e6


@check("a job from the queue runs in the box's Docker and its result lands")
def check_job(pool):
    jid = f"{RUN}-hello"
    pool.send(jid, ["sh", "-c", "echo hello from the box; test -f /cache/box-cache-marker && echo cache ok"])
    r = wait_for(lambda: pool.result(jid), f"result of {jid}", deadline=120)
    assert r["status"] == "succeeded", r
    text = pool.log_text(jid)
    assert "hello from the box" in text, text
    return f"status {r['status']}, attempt {r['attempt']}"


# An HTTP answer (even a 401 for want of a token) means the connection opened;
# a dropped packet gets none. (busybox nc: its wget crashes in this image.)
PROBE = ("out=$(printf 'GET /latest/meta-data/ HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80 2>&1);"
         " echo \"$out\"; case $out in *HTTP/*) echo REACHED; exit 1 ;; *) echo blocked ;; esac")


@check("IMDS block: a job cannot reach 169.254.169.254; without the rule a container can")
def check_imds_block(pool):
    # The box itself (where deckhand runs) reaches it: deckhand got its
    # credentials there.
    token = box("curl", "-sf", "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60",
                "http://169.254.169.254/latest/api/token")
    assert token.stdout, "the box cannot reach its own IMDS"
    jid = f"{RUN}-imds"
    pool.send(jid, ["sh", "-c", PROBE])
    r = wait_for(lambda: pool.result(jid), f"result of {jid}", deadline=120)
    assert r["status"] == "succeeded" and "blocked" in pool.log_text(jid), (r, pool.log_text(jid))
    # The control: take the rule out, and a container on the same bridge reaches
    # the simulator, so "blocked" above was the rule's doing, not the routing's.
    rule = ["-d", "169.254.169.254/32", "-j", "DROP"]
    box("iptables", "-w", "-D", "DOCKER-USER", *rule)
    try:
        p = box("docker", "run", "--rm", IMAGE, "sh", "-c", PROBE, check=False)
    finally:
        box("iptables", "-w", "-I", "DOCKER-USER", "1", *rule)
    assert "REACHED" in p.stdout, f"without the rule the container still could not reach IMDS: {p.stdout}"
    return "blocked in the job; reachable with the rule removed (control)"


@check("a bad config exits 78 and systemd does not restart it")
def check_bad_config():
    restarts = int(show("NRestarts"))
    box("sh", "-c", "cp /etc/deckhand/config.toml /etc/deckhand/config.toml.good && "
        "sed -i 's/^slots = .*/slots = 65/' /etc/deckhand/config.toml")
    try:
        box("systemctl", "restart", "deckhand.service", check=False)
        wait_for(lambda: show("ActiveState") == "failed", "deckhand failed", deadline=60)
        assert show("ExecMainStatus") == "78", show("ExecMainStatus")
        # RestartSec is 10 s: well past it, still failed and not restarted.
        failed_at = time.monotonic()
        wait_for(lambda: time.monotonic() - failed_at > 15 and show("ActiveState") == "failed",
                 "15 s of staying failed", deadline=30)
        assert int(show("NRestarts")) == restarts, (show("NRestarts"), restarts)
        text = journal()
        assert "slots" in text, "the journal does not name the bad key"
    finally:
        box("sh", "-c", "mv -f /etc/deckhand/config.toml.good /etc/deckhand/config.toml")
        box("systemctl", "reset-failed", "deckhand.service", check=False)
    start_deckhand("start", "--no-block")
    return "exit 78, stayed failed, NRestarts unchanged"


@check("a hung agent is killed by the watchdog and restarted")
def check_watchdog():
    # The unit's own watchdog (WatchdogSec=120s) with its timings shortened by a
    # runtime drop-in, so the test takes seconds: the mechanism is the unit's.
    box("sh", "-c", "mkdir -p /run/systemd/system/deckhand.service.d && printf "
        "'[Service]\\nWatchdogSec=6s\\nTimeoutAbortSec=5s\\nRestartSec=2s\\n' "
        ">/run/systemd/system/deckhand.service.d/box-test.conf && systemctl daemon-reload")
    try:
        start_deckhand("restart")
        restarts, pid = int(show("NRestarts")), show("MainPID")
        box("kill", "-STOP", pid)
        wait_for(lambda: int(show("NRestarts")) > restarts, "a restart after the watchdog", deadline=90)
        wait_for(lambda: show("ActiveState") == "active" and show("MainPID") not in ("0", pid),
                 "deckhand active again with a new pid", deadline=120)
        assert "watchdog" in box("journalctl", "-u", "deckhand.service", "--no-pager").stdout.lower()
    finally:
        box("sh", "-c", "rm -rf /run/systemd/system/deckhand.service.d && systemctl daemon-reload")
    start_deckhand("restart")
    return f"pid {pid} stopped, killed on the watchdog, restarted"


@check("systemctl stop drains within TimeoutStopSec: the running job finishes, exit 0")
def check_stop(pool):
    jid = start_job(pool, "stop", "echo started; sleep 6; echo finished")
    assert show("TimeoutStopUSec") == "2min 30s", show("TimeoutStopUSec")
    t = time.monotonic()
    box("systemctl", "stop", "deckhand.service")
    took = time.monotonic() - t
    assert took < 150, took
    assert show("ActiveState") == "inactive" and show("ExecMainStatus") == "0", (
        show("ActiveState"), show("ExecMainStatus"))
    r = wait_for(lambda: pool.result(jid), f"result of {jid}", deadline=30)
    assert r["status"] == "succeeded", r
    start_deckhand("start", "--no-block")
    return f"stopped in {took:.1f} s, job {r['status']}"


@check("a spot notice: the running job is handed back, deckhand exits 0, not restarted")
def check_spot(pool):
    jid = start_job(pool, "spot", "echo long job; sleep 600")
    restarts = int(show("NRestarts"))
    # The simulator's control API, from inside its namespace.
    box("ip", "netns", "exec", "imds", "curl", "-sf", "-X", "POST",
        "-d", '{"action": "terminate", "interruption_in_secs": 30}',
        "http://169.254.169.254/_sim/spot")
    t = time.monotonic()
    wait_for(lambda: show("ActiveState") == "inactive", "deckhand inactive", deadline=120)
    took = time.monotonic() - t
    assert show("ExecMainStatus") == "0", show("ExecMainStatus")
    attempt = wait_for(lambda: pool.result(jid, attempt=1), f"{jid} attempt-1", deadline=30)
    assert attempt["status"] == "interrupted", attempt
    assert pool.result(jid) is None, "a handed-back job has no final result"
    # The message is back on the queue, at once receivable.
    msg = wait_for(lambda: sqs.receive_message(QueueUrl=pool.queue, WaitTimeSeconds=1,
                                               VisibilityTimeout=30).get("Messages"),
                   "the handed-back message", deadline=30)[0]
    assert json.loads(msg["Body"])["id"] == jid
    sqs.delete_message(QueueUrl=pool.queue, ReceiptHandle=msg["ReceiptHandle"])
    inactive_at = time.monotonic()
    wait_for(lambda: time.monotonic() - inactive_at > 15, "15 s", deadline=30)
    assert show("ActiveState") == "inactive" and int(show("NRestarts")) == restarts
    assert not box("docker", "ps", "-q", "--filter", "label=deckhand.managed", check=False).stdout.strip()
    return f"inactive {took:.1f} s after the notice; attempt 1 interrupted; message back on the queue"


@check("bootstrap.sh as the user data: cloud-init runs it, deckhand serves a job")
def check_bootstrap_boot(pool):
    await_boot()
    jid = f"{RUN}-bootstrap"
    pool.send(jid, ["sh", "-c", "echo via bootstrap.sh"])
    r = wait_for(lambda: pool.result(jid), f"result of {jid}", deadline=120)
    assert r["status"] == "succeeded", r
    text = journal()
    assert "Log forwarding is off" in text and 'log_forwarder.kind: \\"splunk\\"' in text, text[-2000:]
    assert show("ActiveState", unit="deckhand-forwarder.service") == "inactive"
    return "cloud-init done, system running, job succeeded; forwarding off with log_forwarder.kind named"


# --- the log forwarder ------------------------------------------------------

def sink_lines(pred):
    return [line for line in forwarding.received(SINK_LOG) if pred(line)]


def refusals():
    """How often the forwarder has logged that the sink refused it."""
    text = box("journalctl", "-u", "deckhand-forwarder.service", "-o", "cat", "--no-pager").stdout
    return text.count("cannot connect to 192.0.2.1")


def forwarder_counters():
    text = box("cat", "/run/deckhand-forwarder/stats.json", check=False).stdout
    return forwarding.counters(text)


@check("forwarding: a job's lines reach the sink with job_id, instance_id, attempt, level as fields")
def check_forwarded(pool):
    assert show("ActiveState", unit="deckhand-forwarder.service") == "active"
    jid = f"{RUN}-hello"
    lines = wait_for(lambda: sink_lines(lambda l: l.fields.get("job_id") == jid
                                        and "hello from the box" in l.msg), f"{jid}'s line at the sink", deadline=60)
    fields = lines[0].fields
    assert fields["instance_id"] == "i-0b0c5d0e0f0a0b0c0" and fields["attempt"] == "1", fields
    assert fields["level"] == lines[0].deckhand()["level"], (fields, lines[0].msg)
    assert lines[0].sd.get("auth@32473", {}).get("token") == "box-secret-value-1234", lines[0].sd
    return f"{len(lines)} line(s); fields {fields}"


@check("forwarding: lines written while the sink is away arrive once it is back")
def check_outage(pool):
    subprocess.run([os.path.join(REPO, "scripts", "box"), "sink", "stop"], check=True, timeout=60)
    try:
        before = refusals()

        def noticed():  # each probe line makes the forwarder try the sink
            box("logger", "-t", "box-probe", "probe while the sink is away")
            return refusals() > before
        wait_for(noticed, "the forwarder to find the sink gone", deadline=90, interval=1)
        markers = [f"{RUN}-outage-{i}" for i in range(3)]
        for marker in markers:
            box("logger", "-t", "box-outage", marker)
        jid = f"{RUN}-outage"
        pool.send(jid, ["sh", "-c", "echo written while the sink is away"])
        wait_for(lambda: pool.result(jid), f"result of {jid}", deadline=120)
        queued = wait_for(lambda: forwarder_counters()["fwd queue"]["size"], "lines queued", deadline=30)
    finally:
        subprocess.run([os.path.join(REPO, "scripts", "box"), "sink", "start"], check=True, timeout=60)
    wait_for(lambda: all(sink_lines(lambda l, m=m: l.msg == m) for m in markers)
             and sink_lines(lambda l: l.fields.get("job_id") == jid and "written while" in l.msg),
             "the outage's lines at the sink", deadline=120)
    return f"{queued} line(s) queued while away, all arrived"


def drained_lines():
    return sink_lines(lambda l: (l.deckhand() or {}).get("msg") == "Drained; exiting.")


@check("forwarding: after the spot notice the host's last line reaches the sink")
def check_last_line(before):
    wait_for(lambda: len(drained_lines()) > before, "a new 'Drained; exiting.' at the sink", deadline=60)
    flushed = [json.loads(l) for l in journal().splitlines()
               if "log forwarder's queue" in l][-1]
    assert flushed["emptied"] is True, flushed
    return f"drain waited {flushed['waited_ms']} ms for the forwarder; 'Drained; exiting.' arrived"


def cgroup_hierarchies():
    """Each cgroup v1 controller's hierarchy id (0: none) on this host."""
    with open("/proc/cgroups") as f:
        return {line.split()[0]: line.split()[1] for line in f if not line.startswith("#")}


@check("the host's cgroup controllers are as they were before the box")
def check_host_cgroups(before):
    after = cgroup_hierarchies()
    changed = {c: (before[c], after.get(c)) for c in before if (before[c] == "0") != (after.get(c) == "0")}
    assert not changed, f"controllers bound or unbound by the box (before, after): {changed}"


def main():
    figures = {}
    cgroups_before = cgroup_hierarchies()
    try:
        pool = Pool(RUN)
        log(f"pool {RUN}; first boot: cloud-config.yaml")
        boot(cloud_config(pool))
        check_boot()
        if results[-1][0]:
            figures["boot"] = boot_figure()
            check_job(pool)
            check_imds_block(pool)
            check_bad_config()
            check_watchdog()
            check_forwarded(pool)
            check_outage(pool)
            check_stop(pool)
            drained_before = len(drained_lines())
            check_spot(pool)
            check_last_line(drained_before)
        log("second boot: bootstrap.sh")
        boot(bootstrap_script(pool))
        check_bootstrap_boot(pool)
    finally:
        subprocess.run([os.path.join(REPO, "scripts", "box"), "down"], timeout=300)
    check_host_cgroups(cgroups_before)
    if "boot" in figures:
        print(f"box: systemd start -> READY {figures['boot'][0]:.2f} s "
              f"(deckhand's start -> READY {figures['boot'][1]:.2f} s)")
    failed = [n for ok, n in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
