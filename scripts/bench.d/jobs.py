"""What a job can ask for around its command, each against its floor: cancel, live_log, artifacts, inputs.
"""

import json
import os
import random
import shutil
import subprocess
import time

from common import BenchError, READY, RECORDED, TARGETS, median_ms, parse_ts, say, tail


class JobFigures:
    """cancel, live_log, artifacts, inputs."""

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
