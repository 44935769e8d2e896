"""requeue: from a spot notice to the job's next attempt started on a second, idle agent.
"""

import json
import statistics
import time

from common import BenchError, READY, STARTED, TARGETS, parse_ts, say, tail


class RequeueFigures:
    """requeue."""

    def requeue(self):
        runs = self.args.notice_runs
        results = [self._requeue_once() for _ in range(runs)]
        median = statistics.median(r["requeue"] for r in results)
        target = TARGETS["requeue_s"]
        per_run = "/".join(f"{r['requeue'] * 1000:.0f}" for r in results)
        seen = "/".join(f"{r['detect'] * 1000:.0f}" for r in results)
        say(
            f"requeue: spot notice -> next attempt started on an idle agent median {median:.2f} s "
            f"(target <= {target:.0f} s); per run {per_run} ms, of which the notice's poll wait {seen} ms; "
            f"floor: imds.poll_ms 1.00 s ({runs} runs, on_spot release, stop_grace_secs 2, the copy "
            "sent before the container stops; anchors: a Buildkite agent lost on spot, ~576 s to a retry)"
        )
        self.row(
            "requeue",
            f"{median:.2f} s (median of {runs})",
            "poll interval 1.00 s (floor)",
            "n/a",
            f"<= {target:.0f} s",
            median <= target,
        )

    def _requeue_once(self):
        url, bucket = self.pool("requeue")
        sim, sim_url = self.start_sim()
        try:
            sections = self.base_sections(url, bucket, visibility=600)
            spot = dict(sections)
            spot["imds"] = f'enabled = true\nendpoint = "{sim_url}"\npoll_ms = 1000\n'
            spot["drain"] = 'on_spot = "release"\nstop_grace_secs = 2\n'
            # Two hosts: each its own instance id, or the second would take the
            # first's running job for a crashed run's and remove it.
            seq = self.next_seq()
            doomed_config = self.config(f"requeue-spot-{seq}", spot, instance_id=f"i-requeue-spot-{seq}")
            idle_config = self.config(f"requeue-idle-{seq}", sections, instance_id=f"i-requeue-idle-{seq}")
            job_id = f"bench-requeue-{self.run_id}-{self.next_seq()}"
            script = 'if [ "$DECKHAND_ATTEMPT" = 1 ]; then sleep 600; fi'
            body = dict(self.job(job_id), command=["sh", "-c", script])
            self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
            doomed, doomed_log = self.start_agent(doomed_config, "requeue-spot")
            self.wait_log(doomed, doomed_log, lambda ls: any(l.get("msg") == STARTED for l in ls), "the job to start", 60)
            # Started second, so the job is the first agent's; idle and long-polling.
            idle, idle_log = self.start_agent(idle_config, "requeue-idle")
            self.wait_log(idle, idle_log, lambda ls: any(l.get("msg") == READY for l in ls), "the idle agent", 60)
            time.sleep(0.5)
            t0 = time.time()
            self.sim_call(sim_url, "/_sim/spot", {"action": "terminate", "in_secs": 0, "interruption_in_secs": 120})
            self.wait_log(
                idle, idle_log, lambda ls: any(l.get("msg") == STARTED for l in ls), "the next attempt", 60,
            )
            started = [parse_ts(l["ts"]) for l in self.read_log(idle_log) if l.get("msg") == STARTED]
            noticed = [parse_ts(l["ts"]) for l in self.read_log(doomed_log) if l.get("msg") == "Spot interruption notice."]
            if not started or not noticed:
                raise BenchError(f"requeue: the logs lack the notice or the start:\n{tail(idle_log)}")
            self.stop_agent(doomed)
            self.stop_agent(idle)
        finally:
            self.stop_sim(sim)
        return {"requeue": started[0] - t0, "detect": noticed[0] - t0}
