"""notice: from a spot notice to the jobs handed back and the agent's exit, against the IMDS poll interval.
"""

import json
import statistics
import threading
import time

from common import BenchError, FINISHED, HANDED_BACK, SPOT_NOTICE, STARTED, STOPPING_JOB, STOPPING_JOBS, TARGETS, median_ms, parse_ts, say, tail


class NoticeFigures:
    """notice."""

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
            f"\"{STOPPING_JOB}\" -> \"{HANDED_BACK}\" (claim release, a fresh copy sent and the original deleted, before the container's stop) "
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

        return self._notice_timings(log, ids, bucket, t0, released_at, exited_box[0])

    def _notice_timings(self, log, ids, bucket, t0, released_at, exited_at):
        """From the agent's log and its results: where the time between the notice
        (sent at `t0`) and the hand-backs and exit went; both jobs must be
        followed through the log and recorded `interrupted`."""
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
            "exit": exited_at - t0,
            "detect": noticed - t0,
            "to_stop": ts(STOPPING_JOBS)[0] - noticed,
            "stop_to_finished": statistics.median(stop_to_finished),
            "finished_to_handed": statistics.median(finished_to_handed),
            "handed_to_seen": released_at - max(handed),
            "handed_to_exit": exited_at - max(handed),
        }
