"""source: a job's checkout from the host's warm git mirror against `git clone`
from the server, and a new commit's fetch and checkout against the same two steps
by hand (a mirror's `git fetch`, then a local `git clone`).
"""

import json
import os
import shutil
import subprocess
import time

from common import READY, TARGETS, BenchError, note, say, tail

RECORDED = "Result recorded."
CHECKED_OUT = "Source checked out."


def git(*args, cwd=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class SourceFigures:
    """source."""

    def make_repo(self, bare, mb, commits):
        """A bare repository of `commits` commits: the first holds `mb` MB of
        100 kB files (random bytes, as incompressible as built artifacts are),
        each later one changes a small file. Made with `git fast-import`."""
        stream = os.path.join(self.tmp, "source.fi")
        with open(stream, "wb") as f:

            def commit(n, files):
                msg = f"commit {n}\n".encode()
                f.write(b"commit refs/heads/main\n")
                f.write(f"committer Bench <bench@deckhand.invalid> {1700000000 + n} +0000\n".encode())
                f.write(b"data %d\n%s" % (len(msg), msg))
                for path, body in files:
                    f.write(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(body), body))

            commit(0, [(f"blobs/f{i:05d}.bin", os.urandom(100_000)) for i in range(mb * 10)])
            for n in range(1, commits):
                commit(n, [("CHANGES", f"change {n}\n".encode())])
        git("init", "--quiet", "--bare", "--initial-branch=main", bare)
        with open(stream, "rb") as f:
            subprocess.run(["git", "-C", bare, "fast-import", "--quiet"], stdin=f, check=True)
        os.remove(stream)

    def source_job(self, url, proc, log, queue, job_id, source):
        """Runs one job with `source`; its `Source checked out.` line."""
        job = {"version": 1, "id": job_id, "image": self.image, "command": ["true"], "source": source}
        self.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(job))
        done = lambda ls: any(l.get("msg") == RECORDED and l.get("job_id") == job_id for l in ls)
        lines = self.wait_log(proc, log, done, f"the result of {job_id}", 600)
        line = next((l for l in lines if l.get("msg") == CHECKED_OUT and l.get("job_id") == job_id), None)
        if line is None:
            raise BenchError(f"source: no '{CHECKED_OUT}' line for {job_id}:\n{tail(log)}")
        return line

    def settled_after_delete(self, why):
        subprocess.run(["sync"], check=True)
        self.bulk_deleted_at = time.monotonic()
        note(f"source: {why}")
        self.wait_inodes_settled()

    def source(self):
        mb, commits = self.args.source_mb, 10_000
        root, daemon = os.environ["STACK_GIT_ROOT"], os.environ["STACK_GIT_DAEMON"]
        name = f"bench-{self.run_id}-{self.next_seq()}.git"
        bare = os.path.join(root, name)
        hand = os.path.join(self.tmp, "source-hand")
        try:
            self.make_repo(bare, mb, commits)
            self.measure_source(f"{daemon}/{name}", daemon, bare, hand, mb, commits)
        finally:
            shutil.rmtree(bare, ignore_errors=True)
            shutil.rmtree(hand, ignore_errors=True)

    def measure_source(self, url, daemon, bare, hand, mb, commits):
        queue, bucket = self.pool("source")
        profile = f'git_remotes = ["{daemon}/"]\nsource_max_mb = 1000000\n'
        config = self.agent_config("source", queue, bucket, 1, wait_secs=1, profile=profile)
        proc, log = self.start_agent(config, "source")
        self.wait_log(proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the agent to be ready", 60)
        run = lambda tag, source: self.source_job(url, proc, log, queue, f"bench-source-{tag}-{self.run_id}", source)
        cold = run("cold", {"repo": url, "ref": "main"})
        # Each job's workspace (2,000 files) is removed before its result is
        # recorded: the next checkout would meet ext4's recently-freed inodes
        # (see the cache figure), which the by-hand side never does.
        self.settled_after_delete("the cold job's workspace is gone")
        warm = run("warm", {"repo": url, "sha": cold["sha"]})
        os.makedirs(hand)
        t0 = time.perf_counter()
        git("clone", "--quiet", url, os.path.join(hand, "clone"))
        clone_s = time.perf_counter() - t0
        git("clone", "--quiet", "--mirror", url, os.path.join(hand, "mirror.git"))
        # A new commit on the server.
        work = os.path.join(hand, "clone")
        with open(os.path.join(work, "CHANGES"), "w") as f:
            f.write("one more\n")
        git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "--quiet", "-am", "new", cwd=work)
        git("push", "--quiet", bare, "HEAD:refs/heads/main", cwd=work)
        self.settled_after_delete("the warm job's workspace is gone")
        new = run("new", {"repo": url, "ref": "main"})
        t0 = time.perf_counter()
        git("-C", os.path.join(hand, "mirror.git"), "fetch", "--quiet")
        git("clone", "--quiet", "--no-hardlinks", os.path.join(hand, "mirror.git"), os.path.join(hand, "by-hand"))
        hand_s = time.perf_counter() - t0
        self.stop_agent(proc)
        warm_s = warm["checkout_ms"] / 1000
        new_s = (new["fetch_ms"] + new["checkout_ms"]) / 1000
        speedup, ratio = clone_s / warm_s, new_s / hand_s
        warm_target, new_target = TARGETS["source_warm_speedup"], TARGETS["source_new_commit"]
        say(
            f"source: {mb} MB, {commits} commits ({warm['bytes'] / 1e6:.0f} MB checked out): cold "
            f"{cold['fetch_ms']} + {cold['checkout_ms']} ms; warm checkout {warm['checkout_ms']} ms against "
            f"git clone from the server {clone_s * 1000:.0f} ms: {speedup:.1f}x (target >= {warm_target:.0f}x); "
            f"a new commit {new['fetch_ms']} + {new['checkout_ms']} ms against fetch + clone by hand "
            f"{hand_s * 1000:.0f} ms: {ratio:.2f} (target <= {new_target:.2f})"
        )
        self.row("source (warm)", f"{warm_s * 1000:.0f} ms", f"{clone_s * 1000:.0f} ms (git clone)",
                 f"{speedup:.1f}x", f">= {warm_target:.0f}x", speedup >= warm_target)
        self.row("source (new commit)", f"{new_s * 1000:.0f} ms", f"{hand_s * 1000:.0f} ms (by hand)",
                 f"{ratio:.2f}", f"<= {new_target:.2f}", ratio <= new_target)
