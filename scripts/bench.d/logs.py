"""log_flood: a job's output in floods, through exec and the agent, against `docker run` to /dev/null.
"""

import json
import os
import subprocess
import threading
import time
import uuid

import boto3

from common import BenchError, TARGETS, cpu_secs, free_port, http_ok, proc_status, say


class LogFigures:
    """log_flood."""

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
