"""The bench's own state and the helpers every figure uses: configs, pools, agents, IMDS simulators,
and the clean-up that removes all of them.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid

import boto3
from botocore.config import Config as BotoConfig

from common import BenchError, IMDS_SIM, note, tail


class Harness:
    """The run's state (queues, buckets, agents, simulators, temp files) and the helpers every figure uses."""

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

    def wait_queue_empty(self, url, timeout):
        deadline = time.monotonic() + timeout
        while self.queue_counts(url) != (0, 0):
            if time.monotonic() > deadline:
                raise BenchError(f"the queue {url} is not empty after {timeout} s")
            time.sleep(0.2)

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
