"""queue_serial and queue_parallel: jobs through one agent against `docker run`, and where a job's time goes.
"""

import statistics
import subprocess
import time

from common import BenchError, CpuMeter, FINISHED, READY, RECORDED, STARTED, TARGETS, cpu_line, median_ms, parse_ts, say, tail


class QueueFigures:
    """queue_serial, queue_parallel."""

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
        baseline, baseline_cpu = self._docker_baseline(jobs, slots)

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

    def _docker_baseline(self, jobs, slots):
        """`jobs` runs of `docker run --rm IMAGE true`, `slots` at a time, after one
        warm-up run: the seconds they took and their CPU."""
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
        return baseline, baseline_cpu

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
