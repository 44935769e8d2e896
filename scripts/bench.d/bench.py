"""deckhand's benchmarks: each figure next to a plain-Docker baseline measured in
the same run. Driven by scripts/bench, which brings the stack up, exports its
endpoints and makes sure target/release/deckhand is current.

Standard library plus boto3 (the stack's venv). Everything it creates (temp dir,
queues, buckets, agents) is removed before it exits, also on SIGINT/SIGTERM.
"""

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import boto3
from botocore.config import Config as BotoConfig

FIGURES = ("exec_true", "queue_serial", "queue_parallel", "idle")
TARGETS = {
    "exec_true": 1.10,
    "queue_serial": 1.15,
    "queue_parallel": 1.10,
    "idle_rss_mb": 20.0,
}
READY = "Ready; serving the queue."
STARTED = "Job started."
FINISHED = "Job finished."
RECORDED = "Result recorded."


class BenchError(Exception):
    pass


def say(text=""):
    print(text, flush=True)


def note(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


def parse_ts(value):
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def median_ms(seconds):
    return statistics.median(seconds) * 1000.0


class Bench:
    def __init__(self, args):
        self.args = args
        self.binary = args.binary
        self.image = os.environ["STACK_IMAGE"]
        self.registry = os.environ["STACK_REGISTRY"]
        self.endpoint = os.environ["STACK_AWS_ENDPOINT_URL"]
        self.region = os.environ.get("AWS_REGION", "us-east-1")
        self.run_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.instance_id = f"bench-{self.run_id}"
        self.tmp = tempfile.mkdtemp(prefix="deckhand-bench-")
        self.agents = []  # Popen objects still to stop
        self.queues = []
        self.buckets = []
        self.rows = []  # (figure, deckhand, baseline, ratio, target, met)
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

    def config(self, name, sections=None):
        """Writes a config: its own work dir, this run's instance id, the stack's
        registry allowed, plus `sections` ({"queue": "key = value\\n", ...})."""
        sections = dict(sections or {})
        work = os.path.join(self.tmp, f"work-{name}")
        os.makedirs(work, exist_ok=True)
        path = os.path.join(self.tmp, f"{name}.toml")
        text = (
            "[agent]\n"
            f'work_dir = "{work}"\n'
            f'instance_id = "{self.instance_id}"\n'
            + sections.pop("agent", "")
        )
        for section, body in sections.items():
            text += f"[{section}]\n{body}"
        text += f'[images]\nallowed_registries = ["{self.registry}"]\n'
        with open(path, "w") as f:
            f.write(text)
        return path

    def job(self, job_id):
        return {"version": 1, "id": job_id, "image": self.image, "command": ["true"]}

    def docker_run(self):
        subprocess.run(
            ["docker", "run", "--rm", self.image, "true"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def pool(self, name):
        """A fresh queue and results bucket of this run's own."""
        base = f"deckhand-bench-{self.run_id}-{name}-{self.next_seq()}"
        url = self.sqs.create_queue(QueueName=base)["QueueUrl"]
        self.queues.append(url)
        bucket = base.lower().replace("_", "-")
        self.s3.create_bucket(Bucket=bucket)
        self.buckets.append(bucket)
        return url, bucket

    def agent_config(self, name, url, bucket, slots, wait_secs=20):
        return self.config(
            name,
            {
                "agent": f"slots = {slots}\n",
                "aws": f'region = "{self.region}"\nendpoint_url = "{self.endpoint}"\n',
                "queue": f'url = "{url}"\nwait_secs = {wait_secs}\nvisibility_timeout_secs = 300\n',
                "results": f'bucket = "{bucket}"\n',
            },
        )

    def start_agent(self, config, name):
        log = os.path.join(self.tmp, f"{name}-{self.next_seq()}.log")
        out = open(log, "ab")
        proc = subprocess.Popen(
            [self.binary, "--config", config, "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
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
        self.row(
            "exec_true",
            f"{a:.0f} ms (median of {runs})",
            f"{b:.0f} ms (median of {runs})",
            f"{ratio:.2f}",
            f"<= {target:.2f}",
            ratio <= target,
        )

    def _queue(self, figure, slots):
        jobs = self.args.jobs
        url, bucket = self.pool(figure)
        ids = [f"bench-{figure}-{self.run_id}-{i:03d}" for i in range(jobs)]
        for i in range(0, jobs, 10):
            batch = ids[i : i + 10]
            self.sqs.send_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(n), "MessageBody": json.dumps(self.job(j))} for n, j in enumerate(batch)],
            )
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
                ["xargs", "-P", str(slots), "-I{}", "docker", "run", "--rm", self.image, "true"],
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

        statuses = {}
        for key in keys:
            body = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            statuses[body["status"]] = statuses.get(body["status"], 0) + 1
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
            f"agent boot {ready.get('boot_ms', '?')} ms (not counted); "
            f"from spawn to queue empty and {jobs} result.json in S3: {drained_at - spawned:.2f} s"
        )
        self.phases(lines, slots)
        say(cpu_line("deckhand", agent_cpu, jobs))
        say(cpu_line("docker  ", baseline_cpu, jobs))
        self.row(
            figure,
            f"{ours:.2f} s",
            f"{baseline:.2f} s",
            f"{ratio:.2f}",
            f"<= {target:.2f}",
            ratio <= target,
        )

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

    def queue_serial(self):
        self._queue("queue_serial", 1)

    def queue_parallel(self):
        self._queue("queue_parallel", 2)

    def idle(self):
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
            f"{logged} log lines while idle"
        )
        self.row(
            "idle",
            f"RSS {rss_mb:.1f} MB; CPU {cpu:.2f} s / {secs} s",
            "none",
            "n/a",
            f"RSS < {target:.0f} MB",
            rss_mb < target,
        )

    # ------------------------------------------------------------------ cleanup

    def leftovers(self):
        names = []
        for kind, cmd in (
            ("container", ["docker", "ps", "-aq", "--filter", f"label=deckhand.agent={self.instance_id}"]),
            ("volume", ["docker", "volume", "ls", "-q", "--filter", f"label=deckhand.agent={self.instance_id}"]),
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
    parser.add_argument("--idle-secs", type=int, default=60)
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
