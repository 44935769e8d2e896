"""fleet: six agents of two slots serving one queue against `docker run` twelve at a time.
"""

import json
import subprocess
import threading
import time

from common import BenchError, READY, RECORDED, TARGETS, parse_ts, say


class FleetFigures:
    """fleet."""

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

        events, reader, starts = self._watch_starts()
        procs = []
        try:
            self._start_fleet(url, bucket, agents, slots, procs)
            self._wait_fleet(url, bucket, jobs, procs)
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

    def _watch_starts(self):
        """Docker's start events for job containers, counted per job id (this run's
        fleet jobs only) in a thread: the `docker events` process, the thread, the counts."""
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
        return events, reader, starts

    def _start_fleet(self, url, bucket, agents, slots, procs):
        """Starts the fleet's agents, each with an instance id of its own, into `procs`."""
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

    def _wait_fleet(self, url, bucket, jobs, procs):
        """Until every job's result is recorded, the queue empty and every result in S3."""
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
