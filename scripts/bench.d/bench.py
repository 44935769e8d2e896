"""deckhand's benchmarks: each figure next to a baseline (plain Docker, a local tar)
or a floor (the IMDS poll interval) from the same run. Driven by scripts/bench, which brings the stack up, exports its
endpoints and makes sure target/release/deckhand is current.

Standard library plus boto3 (the stack's venv). Everything it creates (temp dir,
queues, buckets, agents, IMDS simulators, cache volumes) is removed before it exits, also on SIGINT/SIGTERM.
"""

import argparse
import datetime as dt
import io
import json
import os
import queue
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid

import boto3
from botocore.config import Config as BotoConfig

FIGURES = ("exec_true", "exec_arm64", "queue_serial", "queue_parallel", "cancel", "live_log", "artifacts", "inputs", "idle", "fleet", "aws_requests", "log_flood", "notice", "boot", "box_boot", "cache")
TARGETS = {
    # Raised on 2026-12-04 (issue "Scale and cost"): from 1.10, 1.15, 1.10, 20 MB.
    "exec_true": 1.03,
    "queue_serial": 1.05,
    "queue_parallel": 1.05,
    "idle_rss_mb": 14.0,
    "notice_release_s": 2.0,
    "notice_exit_s": 5.0,
    # From the agent seeing the notice to the last message released.
    "notice_seen_release_s": 0.1,
    "boot_ms": 1000.0,
    "cache_vs_tar": 0.80,
    "artifacts_rate": 0.80,
    "inputs_rate": 0.80,
    "requests_per_job": 8,
    "requests_per_idle_hour": 200,
    "flood_throughput": 0.90,
    "fleet": 1.10,
    "flood_rss_mb": 40.0,
}
# Request prices, US East (N. Virginia), in dollars per request, as published by
# AWS for 2026 (docs/benchmarks.md states them with the date read).
PRICES = {
    "sqs": 0.40 / 1e6,  # standard queue, any request (past the free tier)
    "s3_put": 0.005 / 1e3,  # PUT, COPY, POST, LIST
    "s3_get": 0.0004 / 1e3,  # GET, HEAD and the rest
    "s3_delete": 0.0,  # DELETE is free
    "kms": 0.03 / 1e4,
    "sts": 0.0,
    "autoscaling": 0.0,
}
READY = "Ready; serving the queue."
STARTED = "Job started."
FINISHED = "Job finished."
RECORDED = "Result recorded."
SPOT_NOTICE = "Spot interruption notice."
STOPPING_JOBS = "Stopping running jobs to hand them back."
STOPPING_JOB = "Stopping job."
HANDED_BACK = "Message handed back to the queue."
DRAINED = "Drained; exiting."
BOOTSTRAPPED = "Bootstrapped."
CACHE_CURRENT = "Cache volume is current; nothing to download."
CACHE_EXTRACTING = "Extracting the cache archive."
CACHE_EXTRACTED = "Cache extracted."
WARM_READY = "Warm image ready."
PULLED = "Pulled image."
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMDS_SIM = os.path.join(REPO, "scripts", "imds-sim")


class BenchError(Exception):
    pass


def say(text=""):
    print(text, flush=True)


def note(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


def parse_ts(value):
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def price_class(op):
    """The price list an operation is billed on."""
    service = op.split(" ")[0]
    if service == "S3":
        verb = op.split(" ")[1]
        if verb in ("PUT", "POST", "LIST"):
            return "s3_put"
        if verb == "DELETE":
            return "s3_delete"
        return "s3_get"
    return {"SQS": "sqs", "KMS": "kms", "STS": "sts", "AutoScaling": "autoscaling"}.get(service, "sqs")


class RequestCounter:
    """An HTTP proxy on loopback in front of moto that counts each request by
    service and operation: SQS and KMS by `X-Amz-Target`, STS and Auto Scaling by
    the `Action` of their form, S3 by method (GET on a bucket with `list-type`
    is a LIST). moto closes each connection after one answer, so each
    connection carries one request."""

    def __init__(self, upstream):
        import socket
        import socketserver
        from urllib.parse import urlparse

        up = urlparse(upstream)
        self.upstream = (up.hostname, up.port or 80)
        self.lock = threading.Lock()
        self.counts = {}
        counter = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                client = self.request
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                counter.count(head)
                try:
                    server = socket.create_connection(counter.upstream)
                except OSError:
                    return
                server.sendall(head)
                relay(client, server)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, request):
        text = request.decode("latin-1")
        line, _, rest = text.partition("\r\n")
        method, target = (line.split(" ") + ["", ""])[:2]
        headers = {}
        for h in rest.split("\r\n\r\n")[0].split("\r\n"):
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
        amz = headers.get("x-amz-target", "")
        if amz.startswith("AmazonSQS."):
            op = "SQS " + amz.split(".", 1)[1]
        elif amz.startswith("TrentService."):
            op = "KMS " + amz.split(".", 1)[1]
        elif "Action=" in body or "Action=" in target:
            action = (body + "&" + target).split("Action=", 1)[1].split("&")[0]
            op = ("STS " if action.startswith("AssumeRole") or action == "GetCallerIdentity" else "AutoScaling ") + action
        elif method == "GET" and "list-type" in target:
            op = "S3 LIST"
        else:
            op = f"S3 {method}"
        with self.lock:
            self.counts[op] = self.counts.get(op, 0) + 1

    def reset(self):
        with self.lock:
            self.counts = {}

    def take(self):
        with self.lock:
            counts, self.counts = self.counts, {}
        return counts

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def relay(a, b):
    """Copies both ways until either side closes."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select(timeout=60):
                data = key.fileobj.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        b.close()


def median_ms(seconds):
    return statistics.median(seconds) * 1000.0


class Bench:
    def __init__(self, args):
        self.args = args
        self.binary = args.binary
        self.image = os.environ["STACK_IMAGE"]
        self.registry = os.environ["STACK_REGISTRY"]
        # Job and baseline containers alike: `none` on the stack's bridgeless dockerd.
        self.network = os.environ["STACK_NETWORK"]
        self.endpoint = os.environ["STACK_AWS_ENDPOINT_URL"]
        self.region = os.environ.get("AWS_REGION", "us-east-1")
        self.run_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.instance_id = f"bench-{self.run_id}"
        self.tmp = tempfile.mkdtemp(prefix="deckhand-bench-")
        self.agents = []  # Popen objects still to stop
        self.sims = []  # IMDS simulators (Popen) still to stop
        self.queues = []
        self.buckets = []
        self.cache_sources = []  # s3://bucket/key whose extracted volumes are removed
        self.volumes = []  # the tar baseline's own volumes
        self.rows = []  # (figure, deckhand, baseline, ratio, target, met)
        self.fleet_ids = []  # the fleet figure's agents' own instance ids
        self.tmpfs_dirs = []  # secrets dirs under /dev/shm
        self.seq = 0
        # deckhand refuses unknown DECKHAND_* variables: give it none of the caller's.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DECKHAND_")}
        session = boto3.session.Session(region_name=self.region)
        self.sqs = session.client("sqs", endpoint_url=self.endpoint)
        self.s3 = session.client(
            "s3",
            endpoint_url=self.endpoint,
            config=BotoConfig(s3={"addressing_style": "path"}),
        )

    # ------------------------------------------------------------------ helpers

    def next_seq(self):
        """A number for names that must differ between attempts at a figure."""
        self.seq += 1
        return self.seq

    def config(self, name, sections=None, instance_id=None):
        """Writes a config: its own work dir, this run's instance id (or
        `instance_id`), the stack's registry allowed, plus `sections`
        ({"queue": "key = value\\n", ...})."""
        sections = dict(sections or {})
        images = sections.pop("images", "")
        profile = sections.pop("profile", "")
        work = os.path.join(self.tmp, f"work-{name}")
        os.makedirs(work, exist_ok=True)
        path = os.path.join(self.tmp, f"{name}.toml")
        text = (
            "[agent]\n"
            f'work_dir = "{work}"\n'
            f'instance_id = "{instance_id or self.instance_id}"\n'
            + sections.pop("agent", "")
        )
        for section, body in sections.items():
            text += f"[{section}]\n{body}"
        text += f'[images]\nallowed_registries = ["{self.registry}"]\n' + images
        text += f'[profiles.default]\nnetwork = "{self.network}"\n' + profile
        # No image collection or intake stop mid-figure, whatever the free space.
        text += "[disk]\nmin_free_mb = 0\ngc_free_mb = 0\n"
        with open(path, "w") as f:
            f.write(text)
        return path

    def job(self, job_id):
        return {"version": 1, "id": job_id, "image": self.image, "command": ["true"]}

    def docker_run(self):
        subprocess.run(
            ["docker", "run", "--rm", f"--network={self.network}", self.image, "true"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def send_jobs(self, url, ids):
        """A job of `true` for each id, in batches of ten (SQS's most)."""
        for i in range(0, len(ids), 10):
            self.sqs.send_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(n), "MessageBody": json.dumps(self.job(j))} for n, j in enumerate(ids[i : i + 10])],
            )

    def statuses(self, bucket):
        """How many recorded results have each status."""
        counts = {}
        for key in self.result_keys(bucket):
            status = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())["status"]
            counts[status] = counts.get(status, 0) + 1
        return counts

    def pool(self, name):
        """A fresh queue and results bucket of this run's own."""
        base = f"deckhand-bench-{self.run_id}-{name}-{self.next_seq()}"
        url = self.sqs.create_queue(QueueName=base)["QueueUrl"]
        self.queues.append(url)
        bucket = base.lower().replace("_", "-")
        self.s3.create_bucket(Bucket=bucket)
        self.buckets.append(bucket)
        return url, bucket

    def agent_config(self, name, url, bucket, slots, wait_secs=20, results="", profile=""):
        return self.config(
            name,
            {
                "agent": f"slots = {slots}\n",
                "aws": f'region = "{self.region}"\nendpoint_url = "{self.endpoint}"\n',
                "queue": f'url = "{url}"\nwait_secs = {wait_secs}\nvisibility_timeout_secs = 300\n',
                "results": f'bucket = "{bucket}"\n' + results,
                "profile": profile,
            },
        )

    def start_agent(self, config, name, keep_log=True):
        """`deckhand run`, its output in a log file of its own (or, without
        `keep_log`, to /dev/null, as a journal would take it: then `log` is None)."""
        log = os.path.join(self.tmp, f"{name}-{self.next_seq()}.log") if keep_log else None
        out = open(log, "ab") if keep_log else subprocess.DEVNULL
        proc = subprocess.Popen(
            [self.binary, "--config", config, "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        if keep_log:
            out.close()
        self.agents.append(proc)
        return proc, log

    @staticmethod
    def read_log(path):
        lines = []
        with open(path, errors="replace") as f:
            for raw in f:
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    pass
        return lines

    def wait_log(self, proc, log, done, what, timeout):
        """Polls the agent's log until `done(lines)` holds; returns the lines."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.read_log(log)
            if done(lines):
                return lines
            if proc.poll() is not None:
                raise BenchError(f"the agent exited ({proc.returncode}) before {what}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout}s waiting for {what}:\n{tail(log)}")
            time.sleep(0.02)

    def stop_agent(self, proc, timeout=90):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                note(f"agent {proc.pid} still running {timeout}s after SIGTERM; killing it")
                proc.kill()
                proc.wait()
        if proc in self.agents:
            self.agents.remove(proc)
        return proc.returncode

    def queue_counts(self, url):
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )

    def result_keys(self, bucket):
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="results/"):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return [k for k in keys if k.endswith("/result.json") and k.count("/") == 2]

    def row(self, figure, deckhand, baseline, ratio, target, met):
        self.rows.append((figure, deckhand, baseline, ratio, target, "yes" if met else "**no**"))

    # ------------------------------------------------------------------ figures

    def exec_true(self):
        runs = self.args.exec_runs
        config = self.config("exec")
        job_path = os.path.join(self.tmp, "exec-job.json")
        ids = iter(range(10**6))

        def deckhand_exec():
            with open(job_path, "w") as f:
                json.dump(self.job(f"bench-exec-{self.run_id}-{next(ids)}"), f)
            t0 = time.perf_counter()
            out = subprocess.run(
                [self.binary, "--config", config, "exec", job_path],
                capture_output=True,
                text=True,
                env=self.env,
            )
            elapsed = time.perf_counter() - t0
            lines = out.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if lines else {}
            if out.returncode != 0 or result.get("status") != "succeeded":
                raise BenchError(
                    f"deckhand exec failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}"
                )
            return elapsed, result.get("duration_ms", 0) / 1000.0

        def docker():
            t0 = time.perf_counter()
            self.docker_run()
            return time.perf_counter() - t0

        deckhand_exec()  # warm-up: page cache, image inspect, dockerd's caches
        docker()
        ours, runner, theirs = [], [], []
        # Interleaved, so drift in the engine's speed hits both sides alike.
        for _ in range(runs):
            wall, inner = deckhand_exec()
            ours.append(wall)
            runner.append(inner)
            theirs.append(docker())
        a, b = median_ms(ours), median_ms(theirs)
        ratio = a / b
        # Each deckhand run beside the docker run after it: the quartiles of
        # those ratios are the spread.
        paired = statistics.quantiles([o / t for o, t in zip(ours, theirs)], n=4)
        target = TARGETS["exec_true"]
        say(
            f"exec_true: deckhand exec median {a:.0f} ms, docker run --rm median {b:.0f} ms, "
            f"ratio {ratio:.2f} (target <= {target:.2f})"
        )
        say(
            f"  deckhand exec: runner (image check .. cleanup) median {median_ms(runner):.0f} ms, "
            f"process start + config + Docker connect + result median "
            f"{median_ms([w - r for w, r in zip(ours, runner)]):.0f} ms; "
            f"min/max deckhand {min(ours) * 1000:.0f}/{max(ours) * 1000:.0f} ms, "
            f"docker {min(theirs) * 1000:.0f}/{max(theirs) * 1000:.0f} ms ({runs} runs each)"
        )
        say(f"  paired ratios: quartiles {paired[0]:.2f} / {paired[1]:.2f} / {paired[2]:.2f}")
        self.row(
            "exec_true",
            f"{a:.0f} ms (median of {runs})",
            f"{b:.0f} ms (median of {runs})",
            f"{ratio:.2f} (IQR {paired[0]:.2f}-{paired[2]:.2f})",
            f"<= {target:.2f}",
            ratio <= target,
        )

    def exec_arm64(self):
        """The arm64 binary's `exec` of the same job under qemu-user, beside the
        native binary's: an emulated figure (the agent is emulated, Docker and the
        job are not), with no target; it shows the arm64 build works and what
        emulation costs, not how fast a Graviton host is."""
        arm = os.path.join(REPO, "target", "aarch64-unknown-linux-gnu", "release", "deckhand")
        qemu = shutil.which("qemu-aarch64-static")
        if not os.path.exists(arm) or not qemu:
            say("exec_arm64: skipped (needs scripts/build-static --arch arm64 and qemu-user-static)")
            return
        runs = max(3, self.args.exec_runs // 2)
        config = self.config("exec-arm64")
        job_path = os.path.join(self.tmp, "exec-arm64-job.json")
        ids = iter(range(10**6))

        def run(command):
            with open(job_path, "w") as f:
                json.dump(self.job(f"bench-arm64-{self.run_id}-{next(ids)}"), f)
            t0 = time.perf_counter()
            out = subprocess.run(command + ["--config", config, "exec", job_path], capture_output=True, text=True, env=self.env)
            elapsed = time.perf_counter() - t0
            lines = out.stdout.strip().splitlines()
            if out.returncode != 0 or json.loads(lines[-1]).get("status") != "succeeded":
                raise BenchError(f"exec failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
            return elapsed

        run([qemu, arm])  # warm-up
        run([self.binary])
        emulated, native = [], []
        for _ in range(runs):
            emulated.append(run([qemu, arm]))
            native.append(run([self.binary]))
        a, b = median_ms(emulated), median_ms(native)
        size = os.path.getsize(arm) / 1e6
        say(
            f"exec_arm64: arm64 binary ({size:.1f} MB) under qemu-user median {a:.0f} ms, "
            f"native x86-64 median {b:.0f} ms, ratio {a / b:.2f} (emulated; no target)"
        )
        self.row(
            "exec_arm64 (emulated)",
            f"{a:.0f} ms under qemu-aarch64 (median of {runs}; {size:.1f} MB binary)",
            f"{b:.0f} ms native x86-64 (median of {runs})",
            f"{a / b:.2f}",
            "none (emulated)",
            True,
        )

    def _queue(self, figure, slots):
        """--rounds rounds of _queue_once; the row holds the median ratio and the
        spread (min-max) of the rounds'."""
        rounds = [self._queue_once(figure, slots) for _ in range(self.args.rounds)]
        ratios = sorted(r[0] / r[1] for r in rounds)
        ratio = statistics.median(ratios)
        ours = statistics.median(r[0] for r in rounds)
        baseline = statistics.median(r[1] for r in rounds)
        target = TARGETS[figure]
        say(
            f"{figure}: median of {len(rounds)} rounds: deckhand {ours:.2f} s, docker {baseline:.2f} s, "
            f"ratio {ratio:.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)}; target <= {target:.2f})"
        )
        self.row(
            figure,
            f"{ours:.2f} s (median of {len(rounds)})",
            f"{baseline:.2f} s",
            f"{ratio:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})",
            f"<= {target:.2f}",
            ratio <= target,
        )

    def _queue_once(self, figure, slots):
        jobs = self.args.jobs
        url, bucket = self.pool(figure)
        ids = [f"bench-{figure}-{self.run_id}-{i:03d}" for i in range(jobs)]
        self.send_jobs(url, ids)
        deadline = time.monotonic() + 10
        while (counts := self.queue_counts(url)) != (jobs, 0):
            if time.monotonic() > deadline:
                raise BenchError(f"{figure}: {counts} messages on the fresh queue, expected {jobs}")
            time.sleep(0.1)

        # The baseline first (the image is present; one warm-up run).
        self.docker_run()
        meter = CpuMeter()
        if slots == 1:
            t0 = time.perf_counter()
            for _ in range(jobs):
                self.docker_run()
            baseline = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            subprocess.run(
                ["xargs", "-P", str(slots), "-I{}", "docker", "run", "--rm", f"--network={self.network}", self.image, "true"],
                input="\n".join(str(i) for i in range(jobs)) + "\n",
                text=True,
                check=True,
                stdout=subprocess.DEVNULL,
                # Docker warns about IPv4 forwarding on every run; shown only on failure.
                stderr=subprocess.PIPE,
            )
            baseline = time.perf_counter() - t0
        baseline_cpu = meter.stop()

        config = self.agent_config(figure, url, bucket, slots)
        spawned = time.time()
        proc, log = self.start_agent(config, figure)
        meter = CpuMeter({"deckhand": proc.pid})
        lines = self.wait_log(
            proc,
            log,
            lambda ls: sum(1 for l in ls if l.get("msg") == RECORDED) >= jobs,
            f"{jobs} results",
            timeout=30 + jobs * 10,
        )
        agent_cpu = meter.stop()
        # The last job's message is deleted just after its result is recorded.
        deadline = time.monotonic() + 30
        while True:
            counts = self.queue_counts(url)
            keys = self.result_keys(bucket)
            if counts == (0, 0) and len(keys) == jobs:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{figure}: queue {counts} and {len(keys)} results after the last record")
            time.sleep(0.05)
        drained_at = time.time()
        code = self.stop_agent(proc)
        if code != 0:
            raise BenchError(f"{figure}: the agent exited {code} after SIGTERM:\n{tail(log)}")
        lines = self.read_log(log)

        statuses = self.statuses(bucket)
        if statuses != {"succeeded": jobs}:
            raise BenchError(f"{figure}: result statuses {statuses}")
        if len({l.get("job_id") for l in lines if l.get("msg") == STARTED}) != jobs:
            raise BenchError(f"{figure}: not every job ran exactly once:\n{tail(log)}")

        ready = next(l for l in lines if l.get("msg") == READY)
        recorded = [parse_ts(l["ts"]) for l in lines if l.get("msg") == RECORDED]
        ours = max(recorded) - parse_ts(ready["ts"])
        ratio = ours / baseline
        target = TARGETS[figure]
        label = "sequential" if slots == 1 else f"{slots} at a time (xargs -P {slots})"
        say(
            f"{figure}: deckhand run (slots = {slots}) {jobs} jobs {ours:.2f} s, "
            f"{jobs} docker run --rm {label} {baseline:.2f} s, ratio {ratio:.2f} (target <= {target:.2f})"
        )
        say(
            f"  per job: deckhand {ours / jobs * 1000:.0f} ms, docker {baseline / jobs * 1000:.0f} ms; "
            f"agent boot {self._boot_ms(lines) or ready.get('boot_ms', '?')} ms (not counted); "
            f"from spawn to queue empty and {jobs} result.json in S3: {drained_at - spawned:.2f} s"
        )
        self.phases(lines, slots)
        say(cpu_line("deckhand", agent_cpu, jobs))
        say(cpu_line("docker  ", baseline_cpu, jobs))
        return ours, baseline

    def phases(self, lines, slots):
        """Medians of where a job's time goes, from the agent's own log timestamps."""
        jobs = {}
        for l in lines:
            if l.get("msg") in (STARTED, FINISHED, RECORDED) and l.get("job_id"):
                jobs.setdefault(l["job_id"], {})[l["msg"]] = l
        pre, run, post, gap = [], [], [], []
        for j in jobs.values():
            if not all(m in j for m in (STARTED, FINISHED, RECORDED)):
                continue
            started = parse_ts(j[STARTED]["ts"])
            finished = parse_ts(j[FINISHED]["ts"])
            runner_start = finished - j[FINISHED].get("duration_ms", 0) / 1000.0
            j["runner_start"] = runner_start
            pre.append(started - runner_start)
            run.append(finished - started)
            post.append(parse_ts(j[RECORDED]["ts"]) - finished)
        if slots == 1:
            order = sorted(
                (j for j in jobs.values() if "runner_start" in j),
                key=lambda j: j["runner_start"],
            )
            for prev, cur in zip(order, order[1:]):
                gap.append(cur["runner_start"] - parse_ts(prev[RECORDED]["ts"]))
        parts = [
            f"image check + volume + create + attach + start {median_ms(pre):.0f} ms",
            f"run + wait + inspect + remove container and volume {median_ms(run):.0f} ms",
            f"record result (S3) {median_ms(post):.0f} ms",
        ]
        if gap:
            parts.insert(
                0,
                f"previous result recorded -> next job's runner start (unclaim, delete, "
                f"ping, receive, result check, claim) {median_ms(gap):.0f} ms",
            )
        say("  agent log medians: " + "; ".join(parts))

    def fleet(self):
        """6 agents x 2 slots on one queue (one host: the figure is about their
        coordination, not CPU), --fleet-jobs short jobs, against the same jobs run
        by `docker run --rm` 12 at a time. Every job must end with exactly one
        result, started exactly once (Docker's own start events, counted per job
        id), and the queue must be empty."""
        agents, slots, jobs = 6, 2, self.args.fleet_jobs
        url, bucket = self.pool("fleet")
        ids = [f"bench-fleet-{self.run_id}-{i:04d}" for i in range(jobs)]
        self.send_jobs(url, ids)
        self.docker_run()
        t0 = time.perf_counter()
        subprocess.run(
            ["xargs", "-P", str(agents * slots), "-I{}", "docker", "run", "--rm", f"--network={self.network}",
             self.image, "true"],
            input="\n".join(map(str, range(jobs))) + "\n", text=True, check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        baseline = time.perf_counter() - t0

        # Docker's start events for job containers, counted per job id.
        events = subprocess.Popen(
            ["docker", "events", "--filter", "type=container", "--filter", "event=start",
             "--filter", "label=deckhand.job_id", "--format", "{{json .Actor.Attributes}}"],
            stdout=subprocess.PIPE, text=True,
        )
        starts = {}

        def count_starts():
            for line in events.stdout:
                try:
                    job_id = json.loads(line).get("deckhand.job_id", "")
                except ValueError:
                    continue
                if job_id.startswith(f"bench-fleet-{self.run_id}-"):
                    starts[job_id] = starts.get(job_id, 0) + 1

        reader = threading.Thread(target=count_starts, daemon=True)
        reader.start()
        procs = []
        try:
            for n in range(agents):
                agent_id = f"{self.instance_id}-fleet{n}"
                self.fleet_ids.append(agent_id)
                config = self.config(f"fleet-{n}", {
                    "agent": f"slots = {slots}\n",
                    "aws": f'region = "{self.region}"\nendpoint_url = "{self.endpoint}"\n',
                    "queue": f'url = "{url}"\nwait_secs = 20\nvisibility_timeout_secs = 300\n',
                    "results": f'bucket = "{bucket}"\n',
                }, instance_id=agent_id)
                procs.append(self.start_agent(config, f"fleet-{n}"))
            deadline = time.monotonic() + 60 + jobs * 2
            while True:
                recorded = sum(sum(1 for l in self.read_log(log) if l.get("msg") == RECORDED) for _, log in procs)
                if recorded >= jobs:
                    break
                dead = [p.returncode for p, _ in procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise BenchError(f"fleet: {recorded} of {jobs} results (agents exited: {dead})")
                time.sleep(0.25)
            deadline = time.monotonic() + 30
            while (counts := self.queue_counts(url)) != (0, 0) or len(self.result_keys(bucket)) != jobs:
                if time.monotonic() > deadline:
                    raise BenchError(f"fleet: queue {counts}, {len(self.result_keys(bucket))} results")
                time.sleep(0.1)
        finally:
            for proc, _ in procs:
                self.stop_agent(proc)
            events.terminate()
            events.wait()
            reader.join(10)
        logs = [self.read_log(log) for _, log in procs]
        ready = min(parse_ts(l["ts"]) for lines in logs for l in lines if l.get("msg") == READY)
        last = max(parse_ts(l["ts"]) for lines in logs for l in lines if l.get("msg") == RECORDED)
        ours = last - ready
        per_agent = [sum(1 for l in lines if l.get("msg") == RECORDED) for lines in logs]
        statuses = self.statuses(bucket)
        twice = sorted(j for j, n in starts.items() if n > 1)
        never = sorted(set(ids) - set(starts))
        if statuses != {"succeeded": jobs} or twice or never:
            raise BenchError(f"fleet: statuses {statuses}; started twice {twice[:5]}; never started {never[:5]}")
        ratio = ours / baseline
        target = TARGETS["fleet"]
        say(
            f"fleet: {agents} agents x {slots} slots, {jobs} jobs {ours:.2f} s (first READY -> last result), "
            f"docker run --rm {agents * slots} at a time {baseline:.2f} s, ratio {ratio:.2f} (target <= {target:.2f}); "
            f"each job started once (Docker start events), {jobs} results, queue empty"
        )
        say(f"  jobs per agent: {', '.join(map(str, per_agent))}")
        self.row("fleet", f"{ours:.2f} s ({agents}x{slots}, {jobs} jobs)", f"{baseline:.2f} s",
                 f"{ratio:.2f}", f"<= {target:.2f}", ratio <= target)

    def queue_serial(self):
        self._queue("queue_serial", 1)

    def queue_parallel(self):
        self._queue("queue_parallel", 2)

    def cancel(self):
        """`deckhand cancel` of a running job until its container is gone, against
        `docker stop` of the same container run by hand (its floor: the signal and
        the removal), 10 times each."""
        runs = 10
        poll_secs = 2
        url, bucket = self.pool("cancel")
        config = self.agent_config(
            "cancel", url, bucket, 1, wait_secs=1, results=f"cancel_poll_secs = {poll_secs}\n"
        )
        proc, log = self.start_agent(config, "cancel")
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        # A job that exits on SIGTERM at once: the figure is deckhand's delay.
        script = "trap 'exit 143' TERM; echo running; while true; do sleep 0.05; done"

        def containers(label):
            return subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label={label}"],
                capture_output=True, text=True, check=True,
            ).stdout.split()

        def wait_for(what, condition, timeout=60):
            deadline = time.monotonic() + timeout
            while not condition():
                if time.monotonic() > deadline:
                    raise BenchError(f"cancel: timed out waiting for {what}:\n{tail(log)}")
                time.sleep(0.02)

        ours, theirs = [], []
        for n in range(runs):
            job_id = f"bench-cancel-{self.run_id}-{n}"
            job = {"version": 1, "id": job_id, "image": self.image, "command": ["sh", "-c", script]}
            self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(job))
            label = f"deckhand.job_id={job_id}"
            wait_for("the job to run", lambda: any(
                l.get("msg") == "running" and l.get("job_id") == job_id for l in self.read_log(log)))
            # A cancel comes at any moment of the agent's poll period, not just
            # after the job's start (which would always wait a whole period).
            time.sleep(random.uniform(0, poll_secs))
            t0 = time.perf_counter()
            subprocess.run(
                [self.binary, "--config", config, "cancel", job_id, "--reason", "bench"],
                check=True, stdout=subprocess.DEVNULL, env=self.env,
            )
            wait_for("the container to go", lambda: not containers(label))
            ours.append(time.perf_counter() - t0)
            key = f"results/{job_id}/result.json"
            wait_for("the result", lambda: self.s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"))
            status = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())["status"]
            if status != "cancelled":
                raise BenchError(f"cancel: {job_id} ended {status}, not cancelled")

            name = f"deckhand-bench-stop-{self.run_id}-{n}"
            subprocess.run(
                ["docker", "run", "-d", "--name", name, "--label", f"bench={name}",
                 f"--network={self.network}", self.image, "sh", "-c", script],
                check=True, stdout=subprocess.DEVNULL,
            )
            t0 = time.perf_counter()
            subprocess.run(["docker", "stop", "-t", "10", name], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["docker", "rm", name], check=True, stdout=subprocess.DEVNULL)
            theirs.append(time.perf_counter() - t0)
        self.stop_agent(proc)
        a, b = median_ms(ours), median_ms(theirs)
        target = (poll_secs + 0.5) * 1000
        say(
            f"cancel: deckhand cancel -> container gone median {a:.0f} ms (max {max(ours) * 1000:.0f}), "
            f"docker stop + rm median {b:.0f} ms; target <= cancel_poll_secs + 0.5 s = {target:.0f} ms"
        )
        say(f"  the poll alone waits {poll_secs / 2 * 1000:.0f} ms on average; the rest is the CLI, S3 and the stop")
        self.row("cancel", f"{a:.0f} ms", f"{b:.0f} ms", f"{a / b:.2f}", f"<= {target:.0f} ms", a <= target)

    def live_log(self):
        """A line the job prints until `deckhand logs --follow` prints it, against
        the agent's own log line for it (the floor: the moment the agent read it)."""
        flush_secs = 5
        lines_wanted = 40
        url, bucket = self.pool("live")
        config = self.agent_config(
            "live", url, bucket, 1, wait_secs=1, results=f"log_flush_secs = {flush_secs}\n"
        )
        proc, log = self.start_agent(config, "live")
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        job_id = f"bench-live-{self.run_id}"
        script = f"for i in $(seq {lines_wanted}); do echo line $i; sleep 0.5; done"
        job = {"version": 1, "id": job_id, "image": self.image, "command": ["sh", "-c", script]}
        self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(job))
        follower = subprocess.Popen(
            [self.binary, "--config", config, "logs", job_id, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            text=True,
        )
        arrived = {}
        for line in follower.stdout:
            arrived.setdefault(line.strip(), time.time())
        code = follower.wait(120)
        self.stop_agent(proc)
        if code != 0:
            raise BenchError(f"live_log: logs --follow exited {code}")
        read = {
            l["msg"]: parse_ts(l["ts"])
            for l in self.read_log(log)
            if l.get("stream") == "stdout" and l.get("job_id") == job_id
        }
        latencies = sorted(arrived[m] - t for m, t in read.items() if m in arrived)
        if len(latencies) != lines_wanted:
            raise BenchError(f"live_log: the follower printed {len(latencies)} of {lines_wanted} lines")
        p50 = latencies[len(latencies) // 2] * 1000
        p95 = latencies[int(len(latencies) * 0.95) - 1] * 1000
        target = (flush_secs + 1) * 1000
        say(
            f"live_log: printed -> seen by logs --follow p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
            f"max {latencies[-1] * 1000:.0f} ms over {lines_wanted} lines, one every 0.5 s "
            f"(log_flush_secs = {flush_secs}; target p95 <= {target:.0f} ms)"
        )
        self.row("live_log p95", f"{p95:.0f} ms", "0 ms (the agent's own log line)", "", f"<= {target:.0f} ms", p95 <= target)

    def artifacts(self):
        """A job's artifacts read out of its container and uploaded, against boto3
        uploading the same files from a local folder to the same moto, 4 at a time
        on both sides."""
        files, mb_each = 20, 10
        url, bucket = self.pool("artifacts")
        config = self.agent_config(
            "artifacts", url, bucket, 1, wait_secs=1, profile="artifacts_max_mb = 100000\n"
        )
        proc, log = self.start_agent(config, "artifacts")
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        job_id = f"bench-artifacts-{self.run_id}"
        script = f"mkdir out && for i in $(seq {files}); do head -c {mb_each * 1000000} /dev/urandom > out/f$i.bin; done"
        job = {"version": 1, "id": job_id, "image": self.image, "command": ["sh", "-c", script],
               "artifacts": ["out/*.bin"], "timeout_secs": 600}
        self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(job))
        lines = self.wait_log(proc, log, lambda ls: any(l.get("msg") == RECORDED and l.get("job_id") == job_id for l in ls), "the result", 300)
        self.stop_agent(proc)
        read = next(l for l in lines if l.get("msg") == "Artifacts read.")
        uploaded = next(l for l in lines if l.get("msg") == "Artifacts uploaded.")
        if read["files"] != files or uploaded["uploaded"] != files:
            raise BenchError(f"artifacts: read {read['files']}, uploaded {uploaded['uploaded']} of {files}")
        total = read["bytes"]
        # From the start of the read to the last upload's end: the uploads run
        # beside the read, and the last few finish after it (the container's
        # removal, a few tens of ms, falls in between and is counted too).
        ours_s = read["elapsed_ms"] / 1000 + parse_ts(uploaded["ts"]) - parse_ts(read["ts"])
        local = os.path.join(self.tmp, "artifacts-local")
        os.makedirs(local, exist_ok=True)
        for i in range(files):
            with open(os.path.join(local, f"f{i}.bin"), "wb") as f:
                f.write(os.urandom(mb_each * 1000000))
        from concurrent.futures import ThreadPoolExecutor
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: self.s3.upload_file(os.path.join(local, f"f{i}.bin"), bucket, f"baseline/f{i}.bin"), range(files)))
        theirs_s = time.perf_counter() - t0
        shutil.rmtree(local, ignore_errors=True)
        ours, theirs = total / 1e6 / ours_s, total / 1e6 / theirs_s
        ratio = ours / theirs
        target = TARGETS["artifacts_rate"]
        say(
            f"artifacts: {files} x {mb_each} MB read out of the container and uploaded in "
            f"{ours_s * 1000:.0f} ms (the read alone {read['elapsed_ms']} ms): {ours:.0f} MB/s; boto3 from a local folder (4 threads) {theirs:.0f} MB/s; "
            f"ratio {ratio:.2f} (target >= {target:.2f})"
        )
        self.row("artifacts", f"{ours:.0f} MB/s", f"{theirs:.0f} MB/s (boto3)", f"{ratio:.2f}", f">= {target:.2f}", ratio >= target)

    def inputs(self):
        """A job's source archive from S3 unpacked into its workspace, against
        `tar -xzf` of the same archive from a local file."""
        files, kb_each = 2000, 100
        url, bucket = self.pool("inputs")
        src = os.path.join(self.tmp, "inputs-src")
        os.makedirs(os.path.join(src, "tree"), exist_ok=True)
        for i in range(files):
            with open(os.path.join(src, "tree", f"f{i}.bin"), "wb") as f:
                f.write(os.urandom(kb_each * 1000))
        archive = os.path.join(self.tmp, "inputs.tar.gz")
        subprocess.run(["tar", "-czf", archive, "-C", src, "tree"], check=True)
        self.s3.upload_file(archive, bucket, "sources.tar.gz")
        config = self.agent_config(
            "inputs", url, bucket, 1, wait_secs=1,
            profile=f'input_buckets = ["{bucket}"]\ninputs_max_mb = 100000\n',
        )
        proc, log = self.start_agent(config, "inputs")
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        job_id = f"bench-inputs-{self.run_id}"
        job = {"version": 1, "id": job_id, "image": self.image, "command": ["true"],
               "inputs": [{"source": f"s3://{bucket}/sources.tar.gz", "path": "src"}]}
        self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(job))
        lines = self.wait_log(proc, log, lambda ls: any(l.get("msg") == RECORDED and l.get("job_id") == job_id for l in ls), "the result", 300)
        self.stop_agent(proc)
        placed = next((l for l in lines if l.get("msg") == "Inputs placed."), None)
        if placed is None:
            raise BenchError(f"inputs: no 'Inputs placed.' line:\n{tail(log)}")
        total = placed["bytes"]
        ours_s = placed["elapsed_ms"] / 1000
        out = os.path.join(self.tmp, "inputs-out")
        os.makedirs(out, exist_ok=True)
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        subprocess.run(["tar", "-xzf", archive, "-C", out], check=True)
        theirs_s = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        ours, theirs = total / 1e6 / ours_s, total / 1e6 / theirs_s
        ratio = ours / theirs
        target = TARGETS["inputs_rate"]
        say(
            f"inputs: {files} x {kb_each} kB tar.gz from S3 into the workspace in {placed['elapsed_ms']} ms: "
            f"{ours:.0f} MB/s; tar -xzf of the same local archive {theirs * 1000 / 1000:.0f} MB/s "
            f"({theirs_s * 1000:.0f} ms); ratio {ratio:.2f} (target >= {target:.2f})"
        )
        self.row("inputs", f"{ours:.0f} MB/s", f"{theirs:.0f} MB/s (tar -xzf)", f"{ratio:.2f}", f">= {target:.2f}", ratio >= target)

    def idle(self):
        """--rounds agents, each idle --idle-secs: the median RSS, and the spread."""
        rounds = [self._idle_once() for _ in range(self.args.rounds)]
        rss = sorted(r[0] for r in rounds)
        cpu = statistics.median(r[1] for r in rounds)
        secs = self.args.idle_secs
        target = TARGETS["idle_rss_mb"]
        median = statistics.median(rss)
        anon = statistics.median(r[2] for r in rounds)
        file = statistics.median(r[3] for r in rounds)
        say(f"idle: median RSS {median:.1f} MB over {len(rounds)} agents ({', '.join(f'{r:.1f}' for r in rss)}): "
            f"{anon:.1f} MB anonymous + {file:.1f} MB of the binary's pages; CPU {cpu:.2f} s in {secs} s")
        self.row(
            "idle",
            f"RSS {median:.1f} MB ({rss[0]:.1f}-{rss[-1]:.1f}; anon {anon:.1f} + binary {file:.1f}); "
            f"CPU {cpu:.2f} s / {secs} s",
            "none",
            "n/a",
            f"RSS < {target:.0f} MB",
            median < target,
        )

    def _idle_once(self):
        secs = self.args.idle_secs
        url, bucket = self.pool("idle")
        config = self.agent_config("idle", url, bucket, 1, wait_secs=20)
        proc, log = self.start_agent(config, "idle")
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        tick = os.sysconf("SC_CLK_TCK")
        cpu0 = cpu_secs(proc.pid, tick)
        lines0 = len(self.read_log(log))
        time.sleep(secs)
        if proc.poll() is not None:
            raise BenchError(f"idle: the agent exited ({proc.returncode}):\n{tail(log)}")
        cpu1 = cpu_secs(proc.pid, tick)
        status = proc_status(proc.pid)
        rss_mb = status["VmRSS"] / 1024.0
        hwm_mb = status["VmHWM"] / 1024.0
        threads = status.get("Threads", "?")
        logged = len(self.read_log(log)) - lines0
        code = self.stop_agent(proc)
        if code != 0:
            raise BenchError(f"idle: the agent exited {code} after SIGTERM:\n{tail(log)}")
        target = TARGETS["idle_rss_mb"]
        cpu = cpu1 - cpu0
        say(
            f"idle: deckhand run idle {secs} s on an empty queue (wait_secs 20): RSS {rss_mb:.1f} MB "
            f"(target < {target:.0f} MB), CPU {cpu:.2f} s in {secs} s ({cpu / secs * 100:.2f} % of a core); "
            "no baseline"
        )
        say(
            f"  peak RSS (VmHWM) {hwm_mb:.1f} MB, {threads} threads, CPU at ready {cpu0:.2f} s, "
            f"{logged} log lines while idle; RSS is {status.get('RssAnon', 0) / 1024:.1f} MB anonymous "
            f"(the agent's own memory) + {status.get('RssFile', 0) / 1024:.1f} MB file-backed (the "
            "binary's code pages: clean, shared, reclaimable)"
        )
        return rss_mb, cpu, status.get("RssAnon", 0) / 1024.0, status.get("RssFile", 0) / 1024.0

    # ------------------------------------------------------------ the box

    def box_boot(self):
        """The whole host's boot (docs/packaging.md, "The box"): the box boots with
        the pool's cloud-config.yaml; from systemd's start (PID 1) to
        deckhand.service active (its READY=1), beside deckhand's own start ->
        READY and its boot_ms, over --box-runs boots. The box is built from this
        bench's binary (the same code as the static one, linked to the same glibc
        as the box's Debian 12)."""
        runs = self.args.box_runs
        env = dict(self.env, BOX_BINARY=self.binary, BOX_NAME=f"deckhand-bench-box-{self.run_id}")
        subprocess.run([os.path.join(REPO, "scripts", "box"), "build"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sys.path.insert(0, os.path.join(REPO, "scripts", "box.d"))
        # scripts/box, which test_box.boot runs, takes the name from the
        # environment; test_box itself read it when first imported (a retry
        # imports it no more), so it is told too.
        os.environ["BOX_NAME"] = env["BOX_NAME"]
        import test_box  # noqa: E402: the box tests' own boot and user data

        test_box.BOX = env["BOX_NAME"]
        pool = test_box.Pool(f"bench-box-{self.run_id}-{self.next_seq()}")
        self.queues += [pool.queue, pool.dlq]
        self.buckets.append(pool.bucket)
        whole, agent, boot_ms = [], [], []
        try:
            for _ in range(runs):
                test_box.boot(test_box.cloud_config(pool))
                test_box.wait_for(lambda: test_box.show("ActiveState") == "active",
                                  "deckhand.service active in the box", deadline=300)
                a, b = test_box.boot_figure()
                whole.append(a)
                agent.append(b)
                boot_ms.append(test_box.boot_ms() / 1000.0)
        finally:
            subprocess.run([os.path.join(REPO, "scripts", "box"), "down"], env=env, capture_output=True)
        w, a, b = (statistics.median(x) for x in (whole, agent, boot_ms))
        say(
            f"box_boot: systemd start -> deckhand READY median {w:.2f} s (min/max {min(whole):.2f}/"
            f"{max(whole):.2f}, {runs} boots); deckhand's start -> READY {a:.2f} s; its boot_ms {b * 1000:.0f} ms"
        )
        self.row("box_boot", f"{w:.2f} s systemd start -> READY (median of {runs})",
                 f"deckhand start -> READY {a:.2f} s (boot_ms {b * 1000:.0f})", "n/a", "reported", True)

    # ------------------------------------------------------------ log flood

    FLOOD_KINDS = {
        # About 100-byte lines: the line splitter, the masker and the per-line
        # log event are the cost.
        "text": "yes 'deckhand log flood: the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJ' | head -c {n}",
        # 100 KiB lines, past the 64 KiB at which deckhand splits a line.
        "long": "l=$(head -c 102400 /dev/zero | tr '\\0' x); yes \"$l\" | head -c {n}",
    }

    def flood_setup(self):
        """A bundle of 20 pool secrets in moto, and an exec config and a job that
        asks for all 20, so that every line is masked against all of them."""
        url, bucket = self.pool("flood")
        kms = boto3.session.Session(region_name=self.region).client("kms", endpoint_url=self.endpoint)
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        names = [f"flood_secret_{i:02}" for i in range(20)]
        secrets = os.path.join(self.tmp, "flood-secrets.toml")
        with open(secrets, "w") as f:
            for name in names:
                f.write(f'{name} = "{uuid.uuid4().hex[:24]}"\n')
        seal_cfg = self.config("flood-seal", {"aws": f'region = "{self.region}"\nendpoint_url = "{self.endpoint}"\n'})
        subprocess.run(
            [self.binary, "--config", seal_cfg, "seal", "--kms-key", key, "--context", "pool=bench",
             "--in", secrets, "--out", f"s3://{bucket}/bundle.json"],
            check=True, capture_output=True, env=self.env,
        )
        quoted = ", ".join(f'"{n}"' for n in names)
        # Secret files only ever on a tmpfs.
        secrets_dir = f"/dev/shm/deckhand-bench-{self.run_id}"
        self.tmpfs_dirs.append(secrets_dir)
        sections = {
            "agent": f'secrets_dir = "{secrets_dir}"\n',
            "aws": f'region = "{self.region}"\nendpoint_url = "{self.endpoint}"\n',
            "secrets": f'bucket = "{bucket}"\nkey = "bundle.json"\nkms_key_id = "{key}"\ncontext = {{ pool = "bench" }}\n',
            # The whole flood is kept (the default cap, 100 MB, would stop it).
            "profile": f"secrets = [{quoted}]\nmax_log_mb = {self.args.flood_mb * 2}\n",
        }
        return url, bucket, names, sections

    def flood_job(self, kind, names):
        n = self.args.flood_mb * 1_000_000
        return {"version": 1, "id": f"bench-flood-{kind}-{self.run_id}-{self.next_seq()}", "image": self.image,
                "command": ["sh", "-c", self.FLOOD_KINDS[kind].format(n=n)], "secrets": names}

    def flood_docker(self, job):
        """`docker run --rm` of the same command, its output read to /dev/null."""
        t0 = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", f"--network={self.network}", self.image, *job["command"]],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return time.perf_counter() - t0

    def flood_exec(self, config, job):
        path = os.path.join(self.tmp, "flood-job.json")
        with open(path, "w") as f:
            json.dump(job, f)
        t0 = time.perf_counter()
        proc = subprocess.Popen([self.binary, "--config", config, "exec", path], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=self.env)
        # Peak RSS sampled from /proc (wait4's ru_maxrss counts the forked
        # Python's pages before the exec); CPU time from wait4.
        peak = [0]

        def sample():
            while True:
                try:
                    peak[0] = max(peak[0], proc_status(proc.pid)["VmHWM"])
                except (OSError, KeyError):
                    return
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if proc.returncode != 0:
            raise BenchError(f"log_flood: deckhand exec exited {proc.returncode}: {err[-2000:]}")
        return wall, peak[0] / 1024.0, usage.ru_utime + usage.ru_stime

    def flood_agent(self, url, bucket, sections, kinds, names):
        """One agent (slot 1, its stdout to /dev/null, as the journal would take
        it) runs each kind's job from the queue; per job: the job's own run time
        (the result's duration_ms), send to result recorded (the 200 MB log's
        upload to moto included), agent CPU seconds, and its peak RSS."""
        port = free_port()
        config = self.config("flood-agent", dict(sections, **{
            "agent": sections["agent"] + "slots = 1\n",
            "queue": f'url = "{url}"\nwait_secs = 1\nvisibility_timeout_secs = 600\n',
            "results": f'bucket = "{bucket}"\n',
            "metrics": f'listen = "127.0.0.1:{port}"\n',
        }))
        proc, _ = self.start_agent(config, "flood-agent", keep_log=False)
        ready = f"http://127.0.0.1:{port}/readyz"
        deadline = time.monotonic() + 60
        while not http_ok(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"log_flood: the agent did not become ready ({proc.poll()})")
            time.sleep(0.05)
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for kind in kinds:
            job = self.flood_job(kind, names)
            cpu0 = cpu_secs(proc.pid, tick)
            t0 = time.perf_counter()
            self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(job))
            key = f"results/{job['id']}/result.json"
            deadline = time.monotonic() + 900
            while True:
                try:
                    result = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                    break
                except self.s3.exceptions.NoSuchKey:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"log_flood: no result for the {kind} job ({proc.poll()})")
                time.sleep(0.1)
            recorded = time.perf_counter() - t0
            if result["status"] != "succeeded":
                raise BenchError(f"log_flood: the {kind} job ended {result['status']}: {result.get('reason')}")
            out[kind] = (result["duration_ms"] / 1000.0, recorded, cpu_secs(proc.pid, tick) - cpu0,
                         proc_status(proc.pid)["VmHWM"] / 1024.0)
        if self.stop_agent(proc) != 0:
            raise BenchError("log_flood: the agent did not drain cleanly")
        return out

    def log_flood(self):
        mb = self.args.flood_mb
        url, bucket, names, sections = self.flood_setup()
        exec_config = self.config("flood-exec", dict(sections))
        kinds = list(self.FLOOD_KINDS)
        target = TARGETS["flood_throughput"]
        rss_target = TARGETS["flood_rss_mb"]
        results = {}
        for kind in kinds:
            job = self.flood_job(kind, names)
            base = self.flood_docker(job)
            wall, rss, cpu = self.flood_exec(exec_config, job)
            results[kind] = (base, wall, rss, cpu)
        agent = self.flood_agent(url, bucket, sections, kinds, names)
        for kind in kinds:
            base, wall, rss, cpu = results[kind]
            run, recorded, agent_cpu, agent_rss = agent[kind]
            for side, secs, peak, used in (("exec", wall, rss, cpu), ("agent", run, agent_rss, agent_cpu)):
                share = base / secs
                say(
                    f"log_flood {kind} ({mb} MB, 20 secrets) {side}: {mb / secs:.0f} MB/s vs docker run to "
                    f"/dev/null {mb / base:.0f} MB/s: {share:.2f} of its throughput (target >= {target:.2f}); "
                    f"peak RSS {peak:.1f} MB (target <= {rss_target:.0f}); {used / mb * 100:.2f} CPU s per 100 MB"
                )
                self.row(
                    f"log_flood {kind} {side}",
                    f"{mb / secs:.0f} MB/s; RSS {peak:.1f} MB; {used / mb * 100:.2f} CPU s/100 MB",
                    f"{mb / base:.0f} MB/s",
                    f"{share:.2f}",
                    f">= {target:.2f}; RSS <= {rss_target:.0f} MB",
                    share >= target and peak <= rss_target,
                )
            say(f"  agent {kind}: sent to result recorded {recorded:.1f} s (the job {run:.1f} s; the rest is the log's upload)")

    # ------------------------------------------------------------ aws requests

    def aws_requests(self):
        """Every request the agent sends to SQS, S3, KMS and STS, counted by a
        proxy in front of moto: per short job, per minute of a running job, per
        idle hour, and what they cost at AWS's request prices."""
        counter = RequestCounter(self.endpoint)
        try:
            self._aws_requests(counter)
        finally:
            counter.close()

    def _aws_requests(self, counter):
        jobs = 20
        url, bucket = self.pool("requests")
        config = self.config(
            "requests",
            {
                "agent": "slots = 1\n",
                "aws": f'region = "{self.region}"\nendpoint_url = "{counter.url}"\n',
                "queue": f'url = "{url}"\nwait_secs = 20\nvisibility_timeout_secs = 300\n',
                "results": f'bucket = "{bucket}"\n',
            },
        )
        proc, log = self.start_agent(config, "requests")
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        # Idle: only the long polls.
        # A whole minute: three 20 s long polls, whatever --idle-secs says (a
        # shorter window sees one or two and misstates the hour).
        idle_secs = 60
        counter.reset()
        time.sleep(idle_secs)
        idle = counter.take()
        per_idle_hour = sum(idle.values()) * 3600.0 / idle_secs
        # Short jobs, one after another: all they cost, receives included.
        ids = [f"bench-requests-{self.run_id}-{i:03d}" for i in range(jobs)]
        counter.reset()
        self.send_jobs(url, ids)
        deadline = time.monotonic() + 300
        while len(self.result_keys(bucket)) < jobs:
            if time.monotonic() > deadline:
                raise BenchError(f"aws_requests: {len(self.result_keys(bucket))}/{jobs} results after 300 s")
            time.sleep(0.2)
        self.wait_queue_empty(url, 120)
        short = counter.take()
        per_job = sum(short.values()) / jobs
        # A running job of 30 s printing a line a second (live log chunks).
        long_id = f"bench-requests-{self.run_id}-long"
        body = {"version": 1, "id": long_id, "image": self.image, "command": ["sh", "-c", "for i in $(seq 30); do echo line $i; sleep 1; done"]}
        self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
        lines = self.wait_log(proc, log, lambda ls: any(l.get("msg") == STARTED and l.get("job_id") == long_id for l in ls), "the long job to start", 120)
        counter.reset()
        started = time.monotonic()
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == FINISHED and l.get("job_id") == long_id for l in ls), "the long job to finish", 120)
        running = counter.take()
        running_minutes = (time.monotonic() - started) / 60.0
        per_running_minute = sum(running.values()) / running_minutes
        code = self.stop_agent(proc)
        if code != 0:
            raise BenchError(f"aws_requests: the agent exited {code} after SIGTERM:\n{tail(log)}")
        del lines

        def breakdown(counts, per):
            return ", ".join(f"{op} {n / per:.2f}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1]))

        def dollars(counts, per):
            return sum(PRICES[price_class(op)] * n for op, n in counts.items()) / per

        per_million_jobs = dollars(short, jobs) * 1e6
        per_idle_month = dollars(idle, idle_secs / 3600.0) * 730
        say(
            f"aws_requests: {per_job:.1f} requests per short job (target <= {TARGETS['requests_per_job']}), "
            f"{per_idle_hour:.0f} per idle agent-hour (target <= {TARGETS['requests_per_idle_hour']}), "
            f"{per_running_minute:.1f} per minute of a running job"
        )
        say(f"  per short job: {breakdown(short, jobs)}")
        say(f"  per idle hour: {breakdown(idle, idle_secs / 3600.0)}")
        say(f"  per running minute: {breakdown(running, running_minutes)}")
        say(
            f"  at AWS's request prices: ${per_million_jobs:.2f} per million short jobs, "
            f"${per_idle_month:.4f} per idle agent-month (730 h)"
        )
        self.row(
            "aws_requests per job",
            f"{per_job:.1f} requests (${per_million_jobs:.2f} per million jobs)",
            "none",
            "n/a",
            f"<= {TARGETS['requests_per_job']}",
            per_job <= TARGETS["requests_per_job"],
        )
        self.row(
            "aws_requests idle",
            f"{per_idle_hour:.0f} per agent-hour (${per_idle_month:.4f} per agent-month)",
            "none",
            "n/a",
            f"<= {TARGETS['requests_per_idle_hour']}",
            per_idle_hour <= TARGETS["requests_per_idle_hour"],
        )
        self.row(
            "aws_requests running",
            f"{per_running_minute:.1f} per minute of a running job",
            "none",
            "n/a",
            "none",
            True,
        )

    def wait_queue_empty(self, url, timeout):
        deadline = time.monotonic() + timeout
        while self.queue_counts(url) != (0, 0):
            if time.monotonic() > deadline:
                raise BenchError(f"the queue {url} is not empty after {timeout} s")
            time.sleep(0.2)

    # ------------------------------------------------------- notice, boot, cache

    def base_sections(self, url, bucket, wait_secs=20, visibility=300):
        return {
            "aws": f'region = "{self.region}"\nendpoint_url = "{self.endpoint}"\n',
            "queue": f'url = "{url}"\nwait_secs = {wait_secs}\nvisibility_timeout_secs = {visibility}\n',
            "results": f'bucket = "{bucket}"\n',
        }

    def start_sim(self):
        """An IMDS simulator on a free loopback port; its base URL."""
        seq = self.next_seq()
        port_file = os.path.join(self.tmp, f"imds-{seq}.port")
        err = open(os.path.join(self.tmp, f"imds-{seq}.log"), "ab")
        proc = subprocess.Popen(
            [IMDS_SIM, "--host", "127.0.0.1", "--port", "0", "--port-file", port_file],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        err.close()
        self.sims.append(proc)
        deadline = time.monotonic() + 15
        while not os.path.exists(port_file):
            if proc.poll() is not None:
                raise BenchError(f"the IMDS simulator exited ({proc.returncode}) before listening")
            if time.monotonic() > deadline:
                raise BenchError("the IMDS simulator did not write its port file in 15 s")
            time.sleep(0.02)
        with open(port_file) as f:
            port = int(f.read().strip())
        return proc, f"http://127.0.0.1:{port}"

    def stop_sim(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.sims:
            self.sims.remove(proc)

    @staticmethod
    def sim_call(base, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            base + path, data=data, method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def remove_cache_volumes(self, source):
        names = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", f"label=deckhand.cache.source={source}"],
            capture_output=True, text=True,
        ).stdout.split()
        for name in names:
            out = subprocess.run(["docker", "volume", "rm", name], capture_output=True, text=True)
            if out.returncode != 0:
                note(f"docker volume rm {name}: {out.stderr.strip()}")
        return names

    def notice(self):
        runs = self.args.notice_runs
        poll_s = 1.0
        grace_s = 2
        results = []
        for i in range(runs):
            # The notice lands at a different phase of the agent's 1 s poll in each
            # run (i/runs of the interval later), so the median is not one phase by luck.
            results.append(self._notice_once(i / runs * poll_s, grace_s))
        release = statistics.median(r["release"] for r in results)
        seen = statistics.median(r["seen_release"] for r in results)
        exited = statistics.median(r["exit"] for r in results)
        t_rel, t_exit = TARGETS["notice_release_s"], TARGETS["notice_exit_s"]
        t_seen = TARGETS["notice_seen_release_s"]
        say(
            f"notice: spot notice -> both messages visible again median {release:.2f} s "
            f"(target < {t_rel:.0f} s), -> agent exited median {exited:.2f} s (target < {t_exit:.0f} s); "
            f"floor: imds.poll_ms {poll_s:.2f} s ({runs} runs, 2 jobs, slots 2, on_spot release, "
            f"stop_grace_secs {grace_s})"
        )

        def ms(key):
            return "/".join(f"{r[key] * 1000:.0f}" for r in results)

        say(
            f"  per run (ms): release {ms('release')}; seen -> released {ms('seen_release')} "
            f"(target <= {t_seen * 1000:.0f}); exit {ms('exit')}; notice visible -> agent's "
            f"\"{SPOT_NOTICE}\" (poll wait) {ms('detect')}"
        )
        say(
            "  agent log medians: notice logged -> jobs stopped "
            f"{median_ms([r['to_stop'] for r in results]):.0f} ms; \"{STOPPING_JOB}\" -> \"{FINISHED}\" "
            f"{median_ms([r['stop_to_finished'] for r in results]):.0f} ms, of which stop_grace_secs "
            f"{grace_s * 1000} ms (busybox sleep as PID 1 ignores SIGTERM: SIGKILL ends the grace); "
            f"\"{STOPPING_JOB}\" -> \"{HANDED_BACK}\" (claim release, visibility 0, before the container's stop) "
            f"{median_ms([r['finished_to_handed'] for r in results]):.0f} ms; last hand-back -> queue "
            f"poll saw (2, 0) {median_ms([r['handed_to_seen'] for r in results]):.0f} ms (50 ms polls); "
            f"last hand-back -> process exit {median_ms([r['handed_to_exit'] for r in results]):.0f} ms"
        )
        self.row(
            "notice",
            f"release {release:.2f} s, of which after the agent saw it {seen * 1000:.0f} ms; "
            f"exit {exited:.2f} s (median of {runs})",
            f"poll interval {poll_s:.2f} s (floor)",
            "n/a",
            f"release < {t_rel:.0f} s, seen -> released <= {t_seen * 1000:.0f} ms, exit < {t_exit:.0f} s",
            release < t_rel and seen <= t_seen and exited < t_exit,
        )

    def _notice_once(self, offset, grace_s):
        url, bucket = self.pool("notice")
        sim, sim_url = self.start_sim()
        try:
            sections = self.base_sections(url, bucket, visibility=600)
            sections["agent"] = "slots = 2\n"
            sections["imds"] = f'enabled = true\nendpoint = "{sim_url}"\npoll_ms = 1000\n'
            sections["drain"] = f'on_spot = "release"\nstop_grace_secs = {grace_s}\n'
            config = self.config(f"notice-{self.next_seq()}", sections)
            ids = [f"bench-notice-{self.run_id}-{self.next_seq()}-{n}" for n in range(2)]
            for job_id in ids:
                body = dict(self.job(job_id), command=["sleep", "600"])
                self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
            proc, log = self.start_agent(config, "notice")
            self.wait_log(
                proc, log, lambda ls: sum(1 for l in ls if l.get("msg") == STARTED) >= 2,
                "both jobs to start", 60,
            )
            deadline = time.monotonic() + 10
            while (counts := self.queue_counts(url)) != (0, 2):
                if time.monotonic() > deadline:
                    raise BenchError(f"notice: queue {counts} with both jobs running, expected (0, 2)")
                time.sleep(0.05)
            time.sleep(offset)

            exited_box = []

            def waiter():
                proc.wait()
                exited_box.append(time.time())

            thread = threading.Thread(target=waiter, daemon=True)
            thread.start()
            t0 = time.time()
            self.sim_call(sim_url, "/_sim/spot", {"action": "terminate", "in_secs": 0, "interruption_in_secs": 120})
            released_at = None
            limit = time.monotonic() + 60
            while released_at is None:
                if self.queue_counts(url) == (2, 0):
                    released_at = time.time()
                    break
                if time.monotonic() > limit:
                    raise BenchError(f"notice: messages not visible again 60 s after the notice:\n{tail(log)}")
                time.sleep(0.05)
            thread.join(60)
            if not exited_box:
                raise BenchError(f"notice: the agent still runs 60 s after the notice:\n{tail(log)}")
            code = proc.returncode
            self.agents.remove(proc)
            if code != 0:
                raise BenchError(f"notice: the agent exited {code}:\n{tail(log)}")
        finally:
            self.stop_sim(sim)

        lines = self.read_log(log)

        def ts(msg):
            found = [parse_ts(l["ts"]) for l in lines if l.get("msg") == msg]
            if not found:
                raise BenchError(f"notice: no {msg!r} in the agent's log:\n{tail(log)}")
            return found

        handed = ts(HANDED_BACK)
        if len(handed) != 2:
            raise BenchError(f"notice: {len(handed)} hand-backs logged, expected 2:\n{tail(log)}")
        per_job = {}
        for l in lines:
            if l.get("msg") in (STOPPING_JOB, FINISHED, HANDED_BACK) and l.get("job_id"):
                per_job.setdefault(l["job_id"], {})[l["msg"]] = parse_ts(l["ts"])
        stop_to_finished, finished_to_handed = [], []
        for j in per_job.values():
            if all(m in j for m in (STOPPING_JOB, FINISHED, HANDED_BACK)):
                stop_to_finished.append(j[FINISHED] - j[STOPPING_JOB])
                finished_to_handed.append(j[HANDED_BACK] - j[STOPPING_JOB])
        if len(stop_to_finished) != 2:
            raise BenchError(f"notice: could not follow both jobs through the log:\n{tail(log)}")
        for job_id in ids:
            key = f"results/{job_id}/attempt-1/result.json"
            try:
                status = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())["status"]
            except Exception as e:
                raise BenchError(f"notice: no {key}: {e}")
            if status != "interrupted":
                raise BenchError(f"notice: {key} says {status}, expected interrupted")
        noticed = ts(SPOT_NOTICE)[0]
        return {
            "release": released_at - t0,
            # The agent's own clock: the notice logged -> the last hand-back logged
            # (claims released, visibility 0). The queue poll above adds up to 50 ms.
            "seen_release": max(handed) - noticed,
            "exit": exited_box[0] - t0,
            "detect": noticed - t0,
            "to_stop": ts(STOPPING_JOBS)[0] - noticed,
            "stop_to_finished": statistics.median(stop_to_finished),
            "finished_to_handed": statistics.median(finished_to_handed),
            "handed_to_seen": released_at - max(handed),
            "handed_to_exit": exited_box[0] - max(handed),
        }

    def boot_once(self, config, name):
        """Spawns `deckhand run`, waits for Ready, stops it. Returns (spawn -> Ready
        by the line's ts, spawn -> Ready seen on the pipe, the log lines)."""
        log = os.path.join(self.tmp, f"{name}-{self.next_seq()}.log")
        arrivals = queue.Queue()
        spawned = time.time()
        proc = subprocess.Popen(
            [self.binary, "--config", config, "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        self.agents.append(proc)

        def reader():
            with open(log, "ab") as out:
                for raw in proc.stdout:
                    arrivals.put((time.time(), raw))
                    out.write(raw)
            arrivals.put((time.time(), None))

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        seen = None
        deadline = time.monotonic() + 120
        while seen is None:
            try:
                at, raw = arrivals.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"boot: no Ready in 120 s:\n{tail(log)}")
            if raw is None:
                proc.wait()
                thread.join()
                raise BenchError(f"boot: the agent exited ({proc.returncode}) before Ready:\n{tail(log)}")
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("msg") == READY:
                seen = at
                ready_ts = parse_ts(line["ts"])
        code = self.stop_agent(proc)
        thread.join(30)
        if code != 0:
            raise BenchError(f"boot: the agent exited {code} after SIGTERM:\n{tail(log)}")
        return ready_ts - spawned, seen - spawned, self.read_log(log)

    def boot(self):
        runs = self.args.boot_runs
        url, bucket = self.pool("boot")
        key = "cache.tar.gz"
        source = f"s3://{bucket}/{key}"
        self.cache_sources.append(source)
        # A small archive: the measured starts find it extracted and download nothing.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for n in range(20):
                data = (f"library file {n}\n" * 200).encode()
                info = tarfile.TarInfo(f"lib/file-{n:02d}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        self.s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
        seq = self.next_seq()
        full = self.base_sections(url, bucket)
        full["imds"] = "enabled = false\n"
        full["cache"] = f'source = "{source}"\n'
        full["images"] = f'warm = ["{self.image}"]\n'
        full_config = self.config(f"boot-full-{seq}", full)
        bare = self.base_sections(url, bucket)
        bare["imds"] = "enabled = false\n"
        bare_config = self.config(f"boot-bare-{seq}", bare)

        # First starts, not measured: the full one extracts the cache; both warm the
        # page cache and dockerd.
        _, _, lines = self.boot_once(full_config, "boot-full")
        if not any(l.get("msg") == CACHE_EXTRACTED for l in lines):
            raise BenchError("boot: the first start did not extract the cache")
        self.boot_once(bare_config, "boot-bare")

        full_ts, full_seen, bare_ts, bare_seen = [], [], [], []
        boot_ms, warm_ms, cache_ms, bare_boot_ms = [], [], [], []
        # Interleaved, so drift hits both sides alike.
        for _ in range(runs):
            a, b, lines = self.boot_once(bare_config, "boot-bare")
            bare_ts.append(a)
            bare_seen.append(b)
            bare_boot_ms.append(self._boot_ms(lines))
            a, b, lines = self.boot_once(full_config, "boot-full")
            msgs = [l.get("msg") for l in lines]
            if CACHE_CURRENT not in msgs or CACHE_EXTRACTING in msgs or WARM_READY not in msgs or PULLED in msgs:
                raise BenchError("boot: a measured start pulled or extracted something: " + ", ".join(
                    m for m in msgs if m))
            full_ts.append(a)
            full_seen.append(b)
            boot_ms.append(self._boot_ms(lines))
            phases = {l.get("phase"): l.get("elapsed_ms") for l in lines if l.get("phase")}
            warm_ms.append(phases.get("warm images", 0))
            cache_ms.append(phases.get("cache", 0))
        a, b = median_ms(full_ts), median_ms(bare_ts)
        target = TARGETS["boot_ms"]
        say(
            f"boot: spawn -> \"{READY}\" with a warm image present and the cache current median {a:.0f} ms, "
            f"with neither median {b:.0f} ms, ratio {a / b:.2f} (target < {target:.0f} ms; imds off)"
        )
        say(
            f"  the line seen on stdout: median {median_ms(full_seen):.0f} ms / {median_ms(bare_seen):.0f} ms; "
            f"agent's boot_ms median {statistics.median(boot_ms):.0f} / {statistics.median(bare_boot_ms):.0f} ms "
            f"(warm images phase {statistics.median(warm_ms):.0f} ms, cache phase "
            f"{statistics.median(cache_ms):.0f} ms); min/max {min(full_ts) * 1000:.0f}/{max(full_ts) * 1000:.0f} "
            f"and {min(bare_ts) * 1000:.0f}/{max(bare_ts) * 1000:.0f} ms ({runs} starts each)"
        )
        self.row(
            "boot",
            f"{a:.0f} ms (median of {runs})",
            f"{b:.0f} ms, no warm image or cache (median of {runs})",
            f"{a / b:.2f}",
            f"< {target:.0f} ms",
            a < target,
        )
        self.remove_cache_volumes(source)

    @staticmethod
    def _boot_ms(lines):
        """The agent's own boot time: `boot_ms` of its "Bootstrapped." line."""
        return next((l.get("boot_ms", 0) for l in lines if l.get("msg") == BOOTSTRAPPED), 0)

    def make_cache_tree(self, root, total):
        """Mixed content, `total` bytes of file data: many small text files (a fifth,
        200 B to 32 KB, in 200 directories), six large text files, and /dev/urandom
        chunks (about a sixth). The text is slices of a 4 MB pool of pseudo-words taken
        at random offsets, so gzip (32 KB window) compresses it about as it would
        source code, not as a repeated string.
        Returns (file bytes, entries: files + directories + the root)."""
        rng = random.Random(20261127)
        words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10))) for _ in range(6000)]
        seps = [" ", " ", " ", " ", "\n", "(", ");\n", ", ", " = ", "::", ".", "\n    "]
        # Zipf-like word frequencies (s = 1.2): gzip -6 gets about 3:1 on this text,
        # near what it gets on source code.
        weights = [1 / (rank + 1) ** 1.2 for rank in range(len(words))]
        pool = "".join(w + rng.choice(seps) for w in rng.choices(words, weights=weights, k=650_000)).encode()
        pool_len = len(pool)

        def text(n):
            out = bytearray()
            while len(out) < n:
                start = rng.randrange(0, pool_len - 1)
                out += pool[start : start + min(n - len(out), rng.randint(4096, 262144))]
            return bytes(out[:n])

        written = 0
        entries = 1
        small_budget = total // 5
        random_budget = total // 6
        dirs = []
        for d in range(200):
            path = os.path.join(root, "pkgs", f"pkg-{d:03d}", "src")
            os.makedirs(path)
            dirs.append(path)
        entries += 1 + 200 * 2
        n = 0
        while written < small_budget:
            size = int(round(200 * (32768 / 200) ** rng.random()))
            size = min(size, small_budget - written)
            with open(os.path.join(dirs[n % 200], f"mod_{n:05d}.rs"), "wb") as f:
                f.write(text(size))
            written += size
            n += 1
            entries += 1
        blobs = os.path.join(root, "blobs")
        os.makedirs(blobs)
        entries += 1
        chunk = 32 * 1024 * 1024
        count = max(1, random_budget // chunk)
        for i in range(count):
            size = random_budget // count
            with open(os.path.join(blobs, f"native-{i}.so"), "wb") as f:
                f.write(os.urandom(size))
            written += size
            entries += 1
        large_budget = total - written
        large = 6
        for i in range(large):
            size = large_budget // large
            with open(os.path.join(blobs, f"bundle-{i}.js"), "wb") as f:
                left = size
                while left:
                    part = text(min(left, 8 * 1024 * 1024))
                    f.write(part)
                    left -= len(part)
            written += size
            entries += 1
        return written, entries, n

    def scratch_volume(self):
        """A Docker volume of the bench's own (the filesystem deckhand extracts to);
        its mount point. Removed at the end of the figure."""
        name = f"deckhand-bench-tar-{self.run_id}-{self.next_seq()}"
        subprocess.run(
            ["docker", "volume", "create", "--label", f"deckhand.bench={self.run_id}", name],
            check=True, capture_output=True,
        )
        self.volumes.append(name)
        return subprocess.run(
            ["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", name],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    @staticmethod
    def timed_children(argv):
        """Runs argv; (wall s, user s, sys s) of it and its children."""
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        after = os.times()
        return wall, after.children_user - before.children_user, after.children_system - before.children_system

    def tar_extract(self, archive):
        """`tar -xzf FILE -C DIR` into a fresh volume."""
        mount = self.scratch_volume()
        subprocess.run(["sync"], check=True)
        return self.timed_children(["tar", "-xzf", archive, "-C", mount])

    def deckhand_extract(self, url, bucket, key, expect_entries, expect_bytes):
        """Starts an agent whose cache is s3://bucket/key (never extracted on this
        host), waits for Ready, stops it. (elapsed_ms as logged, user s, sys s, the
        "Cache extracted." line, spawn -> that line in s, CPU meter)."""
        source = f"s3://{bucket}/{key}"
        self.cache_sources.append(source)
        sections = self.base_sections(url, bucket)
        sections["imds"] = "enabled = false\n"
        sections["cache"] = f'source = "{source}"\n'
        config = self.config(f"cache-{self.next_seq()}", sections)
        subprocess.run(["sync"], check=True)
        spawned = time.time()
        proc, log = self.start_agent(config, "cache")
        meter = CpuMeter({"deckhand": proc.pid})
        lines = self.wait_log(
            proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the cache to be extracted", 900
        )
        cpu = meter.stop()
        user, system = cpu_split(proc.pid)
        code = self.stop_agent(proc)
        if code != 0:
            raise BenchError(f"cache: the agent exited {code} after SIGTERM:\n{tail(log)}")
        done = next((l for l in lines if l.get("msg") == CACHE_EXTRACTED), None)
        if done is None:
            raise BenchError(f"cache: no {CACHE_EXTRACTED!r} in the log:\n{tail(log)}")
        if done.get("entries") != expect_entries:
            raise BenchError(f"cache: {done.get('entries')} entries extracted, the archive has {expect_entries}")
        mount = subprocess.run(
            ["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", done.get("volume")],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        got = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(mount) for f in fs)
        if got != expect_bytes:
            raise BenchError(f"cache: {got} bytes of files in the volume, the archive holds {expect_bytes}")
        return done["elapsed_ms"] / 1000.0, user, system, done, parse_ts(done["ts"]) - spawned, cpu

    def cache(self):
        total = int(self.args.cache_mb * 1e6 * 0.96)  # stay under the size asked for
        seq = self.next_seq()
        src = os.path.join(self.tmp, f"cache-src-{seq}")
        archive = os.path.join(self.tmp, f"cache-{seq}.tar.gz")
        try:
            self._cache(total, src, archive)
        finally:
            # Everything extracted is deleted only now, after the last timed
            # extraction: see wait_inodes_settled.
            for source in list(self.cache_sources):
                self.remove_cache_volumes(source)
            for name in list(self.volumes):
                subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)
                self.volumes.remove(name)
            shutil.rmtree(src, ignore_errors=True)
            try:
                os.remove(archive)
            except OSError:
                pass
            subprocess.run(["sync"])
            self.bulk_deleted_at = time.monotonic()

    def wait_inodes_settled(self):
        """ext4 without a journal (this machine's root filesystem) prefers not to
        reuse an inode freed less than 60 s ago (360 s while its inode table block
        is dirty), and checks every such free inode it passes when it allocates one
        (fs/ext4/ialloc.c, recently_deleted). Creating thousands of files within a
        minute of deleting thousands is then several times slower: tar -xzf of the
        archive took 3.6 s at rest and 7-15 s after one. So the figure deletes
        nothing until its last timed extraction, and a retry first waits out the
        window of the deletes (synced) that ended the attempt before."""
        window = 62.0
        left = getattr(self, "bulk_deleted_at", -1e9) + window - time.monotonic()
        if left > 0:
            note(f"cache: waiting {left:.0f} s for the inodes freed by the last bulk delete to age")
            time.sleep(left)

    def _cache(self, total, src, archive):
        t0 = time.perf_counter()
        raw, entries, _small = self.make_cache_tree(src, total)
        subprocess.run(["tar", "-czf", archive, "-C", src, "."], check=True)
        size = os.path.getsize(archive)
        url, bucket = self.pool("cache")
        keys = ["cache.tar.gz", "cache-2.tar.gz"]
        with open(archive, "rb") as f:
            self.s3.put_object(Bucket=bucket, Key=keys[0], Body=f)
        # A second key for the second deckhand run: a fresh volume, nothing to reuse.
        self.s3.copy_object(Bucket=bucket, Key=keys[1], CopySource={"Bucket": bucket, "Key": keys[0]})
        note(
            f"cache: built and uploaded a {size / 1e6:.0f} MB archive of {raw / 1e6:.0f} MB "
            f"({entries} entries) in {time.perf_counter() - t0:.0f} s"
        )
        self.wait_inodes_settled()

        # Alternating, tar first, so drift falls on both sides alike. The curl | tar
        # context run goes before the second deckhand start, because that start
        # removes the first one's volume once its own is extracted (deckhand treats
        # every other cache volume on the host as stale) and nothing timed may follow
        # a bulk delete.
        presigned = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": keys[0]}, ExpiresIn=3600
        )
        # One untimed extraction first: the first one after the archive is built runs
        # slower (here 3.4 s of kernel time against 1.2 s for the next ones).
        self.tar_extract(archive)
        tars, ours = [], []
        tars.append(self.tar_extract(archive))
        ours.append(self.deckhand_extract(url, bucket, keys[0], entries, raw))
        tars.append(self.tar_extract(archive))
        # For context only: how fast moto serves the object, and the same stream
        # through stock tools.
        download = self.timed_children(["curl", "-sSf", "-o", "/dev/null", presigned])[0]
        mount = self.scratch_volume()
        subprocess.run(["sync"], check=True)
        piped = self.timed_children(
            ["bash", "-o", "pipefail", "-c", 'curl -sSf "$1" | tar -xzf - -C "$2"', "curl_tar", presigned, mount]
        )[0]
        ours.append(self.deckhand_extract(url, bucket, keys[1], entries, raw))

        ours_s = statistics.mean(o[0] for o in ours)
        theirs_s = statistics.mean(t[0] for t in tars)
        ratio = theirs_s / ours_s  # deckhand's rate over tar's
        target = TARGETS["cache_vs_tar"]
        mb, rmb = size / 1e6, raw / 1e6
        say(
            f"cache: deckhand extracted a {mb:.0f} MB tar.gz ({rmb:.0f} MB of files, {entries} entries) "
            f"from S3 in {ours_s:.2f} s: {mb / ours_s:.0f} MB/s of archive, {rmb / ours_s:.0f} MB/s uncompressed; "
            f"local tar -xzf {theirs_s:.2f} s: {mb / theirs_s:.0f} MB/s, {rmb / theirs_s:.0f} MB/s; "
            f"ratio {ratio:.2f} (target >= {target:.2f}; means of 2 each, alternating)"
        )
        say(
            "  runs (wall, user + sys CPU): tar " + ", ".join(
                f"{w:.2f} s ({u:.2f} + {s:.2f})" for w, u, s in tars
            ) + "; deckhand " + ", ".join(
                f"{o[0]:.2f} s ({o[1]:.2f} + {o[2]:.2f} from spawn)" for o in ours
            ) + f"; deckhand's own mb_per_s {', '.join(str(o[3].get('mb_per_s')) for o in ours)}; "
            f"spawn -> \"{CACHE_EXTRACTED}\" {', '.join(f'{o[4]:.2f}' for o in ours)} s"
        )
        say(
            f"  for context: moto serves the object alone (curl -o /dev/null) in {download:.2f} s "
            f"({mb / download:.0f} MB/s); curl | tar -xzf - takes {piped:.2f} s ({mb / piped:.0f} MB/s)"
        )
        cpu = ours[0][5]
        procs = ", ".join(f"{name} {secs:.2f} s" for name, secs in sorted(cpu["procs"].items()))
        say(
            f"  CPU, first deckhand run, spawn to Ready: machine {cpu['util'] * 100:.0f} % busy "
            f"(of {os.cpu_count()} cores) over {cpu['wall']:.2f} s, {cpu['busy']:.2f} s in all: {procs}"
        )
        self.row(
            "cache",
            f"{mb / ours_s:.0f} MB/s archive, {rmb / ours_s:.0f} MB/s files ({ours_s:.2f} s, from S3)",
            f"tar -xzf {mb / theirs_s:.0f} MB/s, {rmb / theirs_s:.0f} MB/s ({theirs_s:.2f} s, local file)",
            f"{ratio:.2f}",
            f">= {target:.2f}",
            ratio >= target,
        )

    # ------------------------------------------------------------------ cleanup

    def leftovers(self):
        names = []
        for agent in [self.instance_id, *self.fleet_ids]:
            for kind, cmd in (
                ("container", ["docker", "ps", "-aq", "--filter", f"label=deckhand.agent={agent}"]),
                ("volume", ["docker", "volume", "ls", "-q", "--filter", f"label=deckhand.agent={agent}"]),
            ):
                out = subprocess.run(cmd, capture_output=True, text=True).stdout.split()
                names.extend((kind, n) for n in out)
        return names

    def stop_agents(self):
        for proc in list(self.agents):
            try:
                self.stop_agent(proc)
            except Exception as e:  # keep cleaning
                note(f"stopping agent {proc.pid}: {e}")

    def clean_up(self):
        self.stop_agents()
        for proc in list(self.sims):
            try:
                self.stop_sim(proc)
            except Exception as e:
                note(f"stopping the IMDS simulator {proc.pid}: {e}")
        for source in self.cache_sources:
            self.remove_cache_volumes(source)
        for name in self.volumes:
            subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)
        for kind, name in self.leftovers():
            note(f"removing leftover {kind} {name}")
            if kind == "container":
                subprocess.run(["docker", "rm", "-f", name], capture_output=True)
            else:
                subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)
        for url in self.queues:
            try:
                self.sqs.delete_queue(QueueUrl=url)
            except Exception as e:
                note(f"delete queue {url}: {e}")
        for bucket in self.buckets:
            try:
                for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if objects:
                        self.s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})
                self.s3.delete_bucket(Bucket=bucket)
            except Exception as e:
                note(f"delete bucket {bucket}: {e}")
        if self.args.keep_logs:
            os.makedirs(self.args.keep_logs, exist_ok=True)
            for name in os.listdir(self.tmp):
                if name.endswith(".log") or name.endswith(".toml"):
                    shutil.copy(os.path.join(self.tmp, name), self.args.keep_logs)
            note(f"agent logs and configs kept in {self.args.keep_logs}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        for path in self.tmpfs_dirs:
            shutil.rmtree(path, ignore_errors=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def cpu_secs(pid, tick):
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: split after its closing parenthesis.
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / tick


def cpu_split(pid):
    """(user s, sys s) a process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / tick, int(fields[12]) / tick


def proc_status(pid):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip()
            if value.endswith(" kB"):
                status[key] = int(value[:-3])
            elif value.isdigit():
                status[key] = int(value)
    return status


def machine_jiffies():
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def machine_busy(secs):
    """The fraction of all cores busy over the next `secs` seconds."""
    busy0, total0 = machine_jiffies()
    time.sleep(secs)
    busy1, total1 = machine_jiffies()
    return (busy1 - busy0) / max(1, total1 - total0)


# Other work on the machine that would skew the figures: builds and test runs
# (which drive the same dockerd and moto).
FOREIGN = ("rustc", "cargo", "cargo-nextest", "deckhand", "cc", "ld")


def foreign_processes():
    """Names of processes that are busy with something else: builds, tests, other
    deckhand agents (this script's own children do not count)."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, rest = f.read().rpartition(")")
            comm = head.partition("(")[2]
            ppid = int(rest.split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0].decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            continue
        if comm in FOREIGN or "/target/debug/deps/" in argv0 or "/target/debug/" in argv0:
            found.add(comm)
    return found


class Watch:
    """Notes, in a background thread, foreign work seen while a figure runs."""

    def __init__(self):
        import threading

        self.seen = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.wait(1.0):
            self.seen |= foreign_processes()

    def stop(self):
        self.done.set()
        self.thread.join()
        self.seen |= foreign_processes()
        return self.seen


def wait_quiet(name, timeout):
    """Waits until the machine has been quiet (< 10 % busy, no builds or tests) for
    three seconds in a row, at most `timeout` seconds; False if it never was."""
    deadline = time.monotonic() + timeout
    quiet = 0
    told = False
    while quiet < 3:
        busy = machine_busy(1.0)
        others = foreign_processes()
        if busy < 0.10 and not others:
            quiet += 1
            continue
        quiet = 0
        if time.monotonic() > deadline:
            note(
                f"warning: the machine is still busy ({busy * 100:.0f} %"
                + (f", {', '.join(sorted(others))} running" if others else "")
                + f") after {timeout} s; running {name} anyway, its figures will be noisy"
            )
            return False
        if not told:
            note(
                f"waiting for the machine to be quiet before {name} ({busy * 100:.0f} % busy"
                + (f", {', '.join(sorted(others))} running" if others else "")
                + ")"
            )
            told = True
    return True


def find_pids():
    """The stack's long-lived processes whose CPU time is worth splitting out."""
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if comm in ("dockerd", "containerd"):
            pids.setdefault(comm, int(entry))
        elif "moto_server" in cmdline:
            pids.setdefault("moto", int(entry))
    return pids


class CpuMeter:
    """CPU seconds used over an interval: the whole machine and named processes
    (dockerd, containerd, moto, and the agent when given). Whatever is left of
    the machine's busy time is container shims, runc, the docker CLI, this script
    and the rest of the system."""

    def __init__(self, extra=None):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.pids = find_pids()
        self.pids.update(extra or {})
        self.t0 = time.perf_counter()
        self.start = self.sample()

    def sample(self):
        values = {"machine": machine_jiffies()}
        for name, pid in self.pids.items():
            try:
                values[name] = cpu_secs(pid, self.tick)
            except OSError:
                values[name] = None
        return values

    def stop(self):
        end = self.sample()
        wall = time.perf_counter() - self.t0
        busy = (end["machine"][0] - self.start["machine"][0]) / self.tick
        total = (end["machine"][1] - self.start["machine"][1]) / self.tick
        used = {}
        for name in self.pids:
            if self.start.get(name) is not None and end.get(name) is not None:
                used[name] = end[name] - self.start[name]
        return {"busy": busy, "util": busy / total if total else 0.0, "wall": wall, "procs": used}


def cpu_line(label, cpu, jobs):
    """One line: machine utilisation and CPU ms per job by process."""
    procs = cpu["procs"]
    named = sum(procs.values())
    parts = [f"{name} {secs / jobs * 1000:.0f}" for name, secs in sorted(procs.items())]
    parts.append(f"other {(cpu['busy'] - named) / jobs * 1000:.0f}")
    return (
        f"    {label}: machine {cpu['util'] * 100:.0f} % busy (of {os.cpu_count()} cores), "
        f"{cpu['busy'] / jobs * 1000:.0f} ms CPU per job: " + ", ".join(parts)
    )


def main():
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("figures", nargs="*", metavar="FIGURE", help=f"any of {', '.join(FIGURES)} (default: all)")
    parser.add_argument("--binary", required=True)
    parser.add_argument("--exec-runs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--idle-secs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--notice-runs", type=int, default=3)
    parser.add_argument("--boot-runs", type=int, default=5)
    parser.add_argument("--cache-mb", type=int, default=500)
    parser.add_argument("--flood-mb", type=int, default=200)
    parser.add_argument("--box-runs", type=int, default=3)
    parser.add_argument("--fleet-jobs", type=int, default=600)
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the agents' logs and configs here")
    parser.add_argument(
        "--quiet-timeout",
        type=int,
        default=600,
        metavar="SECS",
        help="before each figure, wait up to SECS for no builds or tests to be running (0: don't)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="measure a figure again, up to N times, when other work ran alongside it",
    )
    parser.add_argument("--strict", action="store_true", help="exit 3 if a target is missed")
    args = parser.parse_args()
    unknown = [f for f in args.figures if f not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    figures = [f for f in FIGURES if f in args.figures] if args.figures else list(FIGURES)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    bench = Bench(args)
    failed = []
    interrupted = False
    try:
        started = dt.datetime.now().astimezone()
        say(f"deckhand bench {started:%Y-%m-%d %H:%M %Z}: {', '.join(figures)}; image {bench.image}")
        for name in figures:
            for attempt in range(args.retries + 1):
                quiet = args.quiet_timeout <= 0 or wait_quiet(name, args.quiet_timeout)
                watch = Watch()
                rows = len(bench.rows)
                try:
                    getattr(bench, name)()
                except Exception as e:  # one figure failing does not stop the others
                    watch.stop()
                    detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else e
                    say(f"{name}: FAILED: {detail}")
                    failed.append(name)
                    del bench.rows[rows:]
                    bench.rows.append((name, "failed", "", "", "", "**no**"))
                    bench.stop_agents()
                    break
                seen = watch.stop()
                if not seen and quiet:
                    break
                noisy = "  warning: {} ran alongside other work{}; its figures are noisy".format(
                    name, f" ({', '.join(sorted(seen))})" if seen else ""
                )
                if attempt < args.retries:
                    say(f"{noisy}: measuring it again")
                    del bench.rows[rows:]
                else:
                    say(noisy)
                    bench.rows[-1] = bench.rows[-1][:5] + (bench.rows[-1][5] + " (noisy)",)
    except KeyboardInterrupt:
        note("interrupted; cleaning up")
        interrupted = True
    finally:
        bench.clean_up()
    if interrupted:
        return 130

    say()
    say("| figure | deckhand | baseline | ratio | target | met? |")
    say("| --- | --- | --- | --- | --- | --- |")
    for r in bench.rows:
        say("| " + " | ".join(r) + " |")
    if failed:
        return 1
    if args.strict and any(not r[5].startswith("yes") for r in bench.rows):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
