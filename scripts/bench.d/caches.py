"""cache_restore: a job's `caches` (issue 24) restored from the host tier against
`tar -x` of the same tree from local disk, from the S3 tier against
`curl | zstd -d | tar -x` from moto, saved against `tar | zstd | curl -T`, and a
warm rebuild against the cold build that filled the cache.
"""

import json
import os
import subprocess
import time

from common import RECORDED, READY, TARGETS, BenchError, note, parse_ts, say, tail

# The cold build: a dependency tree of 20,000 files in 200 folders made one file
# at a time by a busybox shell (compressible text from `seq`, about 250 MB), and
# 20 artifacts of 12.5 MB of random bytes (250 MB): 500 MB, 20,000 files. A warm
# job finds `deps/.built` and does nothing. The sizes scale with --cache-mb.
BUILD = r"""
set -e
if [ -e deps/.built ]; then echo warm; exit 0; fi
mkdir -p deps/bin
d=0
while [ $d -lt 200 ]; do
  mkdir -p deps/pkg-$d
  f=0
  while [ $f -lt {per_dir} ]; do
    seq $((f * 1000)) $((f * 1000 + {seq_len})) > deps/pkg-$d/mod-$f.o
    f=$((f + 1))
  done
  d=$((d + 1))
done
b=0
while [ $b -lt 20 ]; do
  head -c {blob_bytes} /dev/urandom > deps/bin/lib-$b.a
  b=$((b + 1))
done
touch deps/.built
echo cold
"""


class CachesFigures:
    """cache_restore."""

    def cache_job(self, proc, log, queue, job_id, key):
        """Sends a job of `caches = [{key, paths: ["deps"]}]` and waits for its
        result; (result, send -> "Result recorded." in s)."""
        scale = self.args.cache_mb / 500
        script = BUILD.format(
            per_dir=max(1, int(100 * scale)), seq_len=1900, blob_bytes=int(12_500_000 * scale)
        )
        job = {
            "version": 1,
            "id": job_id,
            "image": self.image,
            "command": ["sh", "-c", script],
            "workdir": "/work",
            "caches": [{"key": key, "paths": ["deps"]}],
        }
        sent = time.time()
        self.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(job))
        done = lambda ls: any(l.get("msg") == RECORDED and l.get("job_id") == job_id for l in ls)
        lines = self.wait_log(proc, log, done, f"the result of {job_id}", 1800)
        recorded = next(l for l in lines if l.get("msg") == RECORDED and l.get("job_id") == job_id)
        result = json.loads(self.s3.get_object(Bucket=self.results_bucket, Key=f"results/{job_id}/result.json")["Body"].read())
        if result.get("status") != "succeeded":
            raise BenchError(f"cache_restore: {job_id} ended {result.get('status')}: {result.get('reason')}\n{tail(log)}")
        return result, parse_ts(recorded["ts"]) - sent

    def caches_agent(self, name, queue, bucket, prefix):
        """An agent (slots = 1, a work dir of its own: an empty host tier) keeping
        caches in `bucket` under `prefix`."""
        config = self.agent_config(name, queue, bucket, 1, wait_secs=1, profile="cache_max_mb = 4096\n")
        with open(config, "a") as f:
            f.write(f'[caches]\nbucket = "{bucket}"\nprefix = "{prefix}/"\n')
        proc, log = self.start_agent(config, name)
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        work = os.path.join(self.tmp, f"work-{name}")
        return proc, log, work

    def settle(self, why):
        """Waits out ext4's window for inodes a bulk delete freed (see the cache
        figure's wait_inodes_settled): each job's workspace volume, 20,000 files,
        is removed when it ends, and nothing timed may follow that too closely."""
        subprocess.run(["sync"], check=True)
        self.bulk_deleted_at = time.monotonic()
        note(f"cache_restore: {why}")
        self.wait_inodes_settled()

    def cache_restore(self):
        queue, bucket = self.pool("caches")
        self.results_bucket = bucket
        prefix = f"bench-{self.run_id}"
        key = f"deps-{self.next_seq()}"
        scope = "default"
        a, a_log, a_work = self.caches_agent(f"caches-a-{self.next_seq()}", queue, bucket, prefix)
        cold, cold_s = self.cache_job(a, a_log, queue, f"bench-cache-cold-{self.run_id}", key)
        report = cold["caches"][0]
        if not report.get("saved"):
            raise BenchError(f"cache_restore: the cold job's cache was not saved: {report}")
        tree = os.path.join(a_work, "caches", "tier", scope, key, "tree")
        files = sum(len(fs) for _, _, fs in os.walk(tree))
        raw = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tree) for f in fs)
        # The baselines' inputs, untimed: the tree as a plain tar and as the zstd
        # tar deckhand put in S3 (its own object, read back).
        plain = os.path.join(self.tmp, "cache-restore.tar")
        subprocess.run(["tar", "-cf", plain, "-C", tree, "."], check=True)
        object_key = f"{prefix}/{scope}/{key}.tar.zst"
        packed = self.s3.head_object(Bucket=bucket, Key=object_key)["ContentLength"]
        get_url = self.s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": object_key}, ExpiresIn=3600)
        put_url = self.s3.generate_presigned_url(
            "put_object", Params={"Bucket": bucket, "Key": f"{prefix}/baseline.tar.zst"}, ExpiresIn=3600
        )
        self.settle("the cold job's workspace is gone")

        # Host tier: the warm job on the same agent, against tar -x of the tree.
        tar_x = self.timed_children(["tar", "-xf", plain, "-C", self.scratch_volume()])[0]
        warm, warm_s = self.cache_job(a, a_log, queue, f"bench-cache-warm-{self.run_id}", key)
        host = warm["caches"][0]
        if host.get("tier") != "host" or host.get("hit") != "exact":
            raise BenchError(f"cache_restore: the warm job did not hit the host tier: {host}")
        self.stop_agent(a)
        self.settle("the warm job's workspace is gone")

        # S3 tier: a second agent with an empty host tier, against curl | zstd -d | tar -x.
        piped = self.timed_children([
            "bash", "-o", "pipefail", "-c", 'curl -sSf "$1" | zstd -dq | tar -xf - -C "$2"', "s3_restore",
            get_url, self.scratch_volume(),
        ])[0]
        b, b_log, _ = self.caches_agent(f"caches-b-{self.next_seq()}", queue, bucket, prefix)
        fresh, _ = self.cache_job(b, b_log, queue, f"bench-cache-s3-{self.run_id}", key)
        s3 = fresh["caches"][0]
        if s3.get("tier") != "s3":
            raise BenchError(f"cache_restore: the second agent's job did not restore from S3: {s3}")
        self.stop_agent(b)

        # Save: the tree from local disk, packed at zstd's level 3 as deckhand does, uploaded.
        save_base = self.timed_children([
            "bash", "-o", "pipefail", "-c", 'tar -cf - -C "$1" . | zstd -3 -q -T1 | curl -sSf -T - "$2"', "save",
            tree, put_url,
        ])[0]
        os.remove(plain)

        self.report_cache_restore(
            files, raw, packed, (host, tar_x), (s3, piped), (report, save_base), (cold, cold_s), (warm, warm_s)
        )

    def report_cache_restore(self, files, raw, packed, host_side, s3_side, save_side, cold_side, warm_side):
        """Prints the figure and its breakdown, and adds its rows."""
        (host, tar_x), (s3, piped), (report, save_base) = host_side, s3_side, save_side
        (cold, cold_s), (warm, warm_s) = cold_side, warm_side
        t = TARGETS
        host_s, s3_s, save_s = host["restore_ms"] / 1000, s3["restore_ms"] / 1000, report["save_ms"] / 1000
        host_ratio, s3_ratio, save_ratio = tar_x / host_s, piped / s3_s, save_s / save_base
        speedup = cold_s / warm_s
        mb = raw / 1e6
        say(
            f"cache_restore: {mb:.0f} MB in {files} files ({packed / 1e6:.0f} MB packed); "
            f"host tier {host_s:.2f} s vs tar -x {tar_x:.2f} s: {host_ratio:.2f}x tar's speed; "
            f"S3 tier {s3_s:.2f} s vs curl | zstd -d | tar -x {piped:.2f} s: {s3_ratio:.2f}x; "
            f"save {save_s:.2f} s vs tar | zstd | curl -T {save_base:.2f} s: {save_ratio:.2f}; "
            f"cold job {cold_s:.1f} s (its container {cold['duration_ms'] / 1000:.1f} s), "
            f"warm {warm_s:.1f} s: {speedup:.1f}x"
        )
        # Where each job's time went: its result's duration_ms (the attempt, with
        # its restore and save in it) and what came around it (receive, pull
        # check, the workspace's 20,000 files removed before the result).
        for name, result, total in (("cold", cold, cold_s), ("warm", warm, warm_s)):
            c = result["caches"][0]
            say(
                f"  {name}: send -> recorded {total:.2f} s; the attempt {result['duration_ms'] / 1000:.2f} s, "
                f"of which restore {c['restore_ms'] / 1000:.2f} s and save {c['save_ms'] / 1000:.2f} s"
            )
        self.row("cache_restore (host tier)", f"{host_s:.2f} s ({mb / host_s:.0f} MB/s)",
                 f"{tar_x:.2f} s (tar -x, local file)", f"{host_ratio:.2f}", f">= {t['cache_restore_host']:.2f}",
                 host_ratio >= t["cache_restore_host"])
        self.row("cache_restore (S3 tier)", f"{s3_s:.2f} s ({mb / s3_s:.0f} MB/s)",
                 f"{piped:.2f} s (curl \\| zstd -d \\| tar -x)", f"{s3_ratio:.2f}", f">= {t['cache_restore_s3']:.2f}",
                 s3_ratio >= t["cache_restore_s3"])
        self.row("cache_restore (save)", f"{save_s:.2f} s", f"{save_base:.2f} s (tar \\| zstd \\| curl -T)",
                 f"{save_ratio:.2f}", f"<= {t['cache_save']:.2f}", save_ratio <= t["cache_save"])
        self.row("cache_restore (warm rebuild)", f"{warm_s:.1f} s", f"{cold_s:.1f} s (the cold build)",
                 f"{speedup:.1f}x", f">= {t['cache_warm_speedup']:.0f}x", speedup >= t["cache_warm_speedup"])
