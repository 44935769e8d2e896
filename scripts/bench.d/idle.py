"""idle: what an agent with nothing to do costs: its memory and CPU over --idle-secs.
"""

import os
import statistics
import time

from common import BenchError, READY, TARGETS, cpu_secs, proc_status, say, tail


class IdleFigures:
    """idle."""

    def idle(self):
        """--rounds agents, each idle --idle-secs: the median RSS, and the spread."""
        rounds = [self._idle_once() for _ in range(self.args.rounds)]
        rss = sorted(r[0] for r in rounds)
        cpu = statistics.median(r[1] for r in rounds)
        secs = self.args.idle_secs
        target = TARGETS["idle_rss_mb"]
        median = statistics.median(rss)
        anon = statistics.median(r[2] for r in rounds)
        file = statistics.median(r[3] for r in rounds)
        pss = statistics.median(r[4] for r in rounds)
        say(f"idle: median RSS {median:.1f} MB over {len(rounds)} agents ({', '.join(f'{r:.1f}' for r in rss)}): "
            f"{anon:.1f} MB anonymous + {file:.1f} MB of the binary's pages; PSS {pss:.1f} MB; CPU {cpu:.2f} s in {secs} s")
        self.row(
            "idle",
            f"RSS {median:.1f} MB ({rss[0]:.1f}-{rss[-1]:.1f}; anon {anon:.1f} + binary {file:.1f}); PSS {pss:.1f} MB; "
            f"CPU {cpu:.2f} s / {secs} s",
            "none",
            "n/a",
            f"RSS < {target:.0f} MB",
            median < target,
        )

    def _idle_once(self):
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
        pss_mb = proportional_set_mb(proc.pid)
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
            f"{logged} log lines while idle; RSS is {status.get('RssAnon', 0) / 1024:.1f} MB anonymous "
            f"(the agent's own memory) + {status.get('RssFile', 0) / 1024:.1f} MB file-backed (the "
            "binary's code pages: clean, shared, reclaimable)"
        )
        return rss_mb, cpu, status.get("RssAnon", 0) / 1024.0, status.get("RssFile", 0) / 1024.0, pss_mb


def proportional_set_mb(pid):
    """PSS from /proc/PID/smaps_rollup: each page divided by the processes that map
    it, so the binary's pages count once across agents (or a copy in the cache)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024.0
    return 0.0
