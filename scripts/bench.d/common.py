"""What every figure shares: the figures and their targets, the agent's log messages, output, and the
machine's processes and CPU.
"""

import datetime as dt
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request


FIGURES = ("exec_true", "exec_arm64", "queue_serial", "queue_parallel", "cancel", "live_log", "artifacts", "inputs", "idle", "fleet", "aws_requests", "log_flood", "notice", "requeue", "boot", "box_boot", "cache", "cache_restore", "source", "image_build")


TARGETS = {
    # Raised on 2026-12-04 (issue "Scale and cost"): from 1.10, 1.15, 1.10, 20 MB.
    "exec_true": 1.03,
    "queue_serial": 1.05,
    "queue_parallel": 1.05,
    "idle_rss_mb": 14.0,
    "notice_release_s": 2.0,
    "notice_exit_s": 5.0,
    # From the spot notice to the job's next attempt started on an idle agent.
    "requeue_s": 2.0,
    # From the agent seeing the notice to the last message released.
    "notice_seen_release_s": 0.1,
    "boot_ms": 1000.0,
    "cache_vs_tar": 0.80,
    "artifacts_rate": 0.80,
    "inputs_rate": 0.80,
    "requests_per_job": 8,
    "requests_per_idle_hour": 200,
    "flood_throughput": 0.90,
    "fleet": 1.10,
    "flood_rss_mb": 40.0,
    # Issue 25: a warm mirror's checkout against `git clone` from the server, and a
    # new commit's fetch and checkout against the same two steps by hand.
    "source_warm_speedup": 5.0,
    "source_new_commit": 1.2,
    # Issue 24: a job's caches. Restores as speeds against the stock tools' (the
    # host tier against `tar -x` of a local file, the S3 tier against
    # `curl | zstd -d | tar -x`), the save as a time against `tar | zstd | curl -T`,
    # and a warm rebuild against the cold build that filled the cache.
    "cache_restore_host": 1.0,
    "cache_restore_s3": 0.9,
    "cache_save": 1.1,
    "cache_warm_speedup": 3.0,
}


# Request prices, US East (N. Virginia), in dollars per request, as published by
# AWS for 2026 (docs/benchmarks.md states them with the date read).
PRICES = {
    "sqs": 0.40 / 1e6,  # standard queue, any request (past the free tier)
    "s3_put": 0.005 / 1e3,  # PUT, COPY, POST, LIST
    "s3_get": 0.0004 / 1e3,  # GET, HEAD and the rest
    "s3_delete": 0.0,  # DELETE is free
    "kms": 0.03 / 1e4,
    "sts": 0.0,
    "autoscaling": 0.0,
}


READY = "Ready; serving the queue."


STARTED = "Job started."


FINISHED = "Job finished."


RECORDED = "Result recorded."


SPOT_NOTICE = "Spot interruption notice."


STOPPING_JOBS = "Stopping running jobs to hand them back."


STOPPING_JOB = "Stopping job."


HANDED_BACK = "Job sent back to the queue as a fresh copy."


DRAINED = "Drained; exiting."


BOOTSTRAPPED = "Bootstrapped."


CACHE_CURRENT = "Cache volume is current; nothing to download."


CACHE_EXTRACTING = "Extracting the cache archive."


CACHE_EXTRACTED = "Cache extracted."


WARM_READY = "Warm image ready."


PULLED = "Pulled image."


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


IMDS_SIM = os.path.join(REPO, "scripts", "imds-sim")


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


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


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


def cpu_split(pid):
    """(user s, sys s) a process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / tick, int(fields[12]) / tick


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
