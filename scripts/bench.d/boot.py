"""boot: from `deckhand run` to READY, bare and with a warm image and an extracted cache, interleaved.
"""

import io
import json
import os
import queue
import statistics
import subprocess
import tarfile
import threading
import time

from common import BOOTSTRAPPED, BenchError, CACHE_CURRENT, CACHE_EXTRACTED, CACHE_EXTRACTING, PULLED, READY, TARGETS, WARM_READY, median_ms, parse_ts, say, tail


class BootFigures:
    """boot."""

    def boot_once(self, config, name):
        """Spawns `deckhand run`, waits for Ready, stops it. Returns (spawn -> Ready
        by the line's ts, spawn -> Ready seen on the pipe, the log lines)."""
        log = os.path.join(self.tmp, f"{name}-{self.next_seq()}.log")
        arrivals = queue.Queue()
        spawned = time.time()
        proc = subprocess.Popen(
            [self.binary, "--config", config, "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        self.agents.append(proc)

        def reader():
            with open(log, "ab") as out:
                for raw in proc.stdout:
                    arrivals.put((time.time(), raw))
                    out.write(raw)
            arrivals.put((time.time(), None))

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        seen = None
        deadline = time.monotonic() + 120
        while seen is None:
            try:
                at, raw = arrivals.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"boot: no Ready in 120 s:\n{tail(log)}")
            if raw is None:
                proc.wait()
                thread.join()
                raise BenchError(f"boot: the agent exited ({proc.returncode}) before Ready:\n{tail(log)}")
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("msg") == READY:
                seen = at
                ready_ts = parse_ts(line["ts"])
        code = self.stop_agent(proc)
        thread.join(30)
        if code != 0:
            raise BenchError(f"boot: the agent exited {code} after SIGTERM:\n{tail(log)}")
        return ready_ts - spawned, seen - spawned, self.read_log(log)

    def boot(self):
        runs = self.args.boot_runs
        url, bucket = self.pool("boot")
        key = "cache.tar.gz"
        source = f"s3://{bucket}/{key}"
        self.cache_sources.append(source)
        # A small archive: the measured starts find it extracted and download nothing.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for n in range(20):
                data = (f"library file {n}\n" * 200).encode()
                info = tarfile.TarInfo(f"lib/file-{n:02d}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        self.s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
        seq = self.next_seq()
        full = self.base_sections(url, bucket)
        full["imds"] = "enabled = false\n"
        full["cache"] = f'source = "{source}"\n'
        full["images"] = f'warm = ["{self.image}"]\n'
        full_config = self.config(f"boot-full-{seq}", full)
        bare = self.base_sections(url, bucket)
        bare["imds"] = "enabled = false\n"
        bare_config = self.config(f"boot-bare-{seq}", bare)

        # First starts, not measured: the full one extracts the cache; both warm the
        # page cache and dockerd.
        _, _, lines = self.boot_once(full_config, "boot-full")
        if not any(l.get("msg") == CACHE_EXTRACTED for l in lines):
            raise BenchError("boot: the first start did not extract the cache")
        self.boot_once(bare_config, "boot-bare")

        full_ts, full_seen, bare_ts, bare_seen = [], [], [], []
        boot_ms, warm_ms, cache_ms, bare_boot_ms = [], [], [], []
        # Interleaved, so drift hits both sides alike.
        for _ in range(runs):
            a, b, lines = self.boot_once(bare_config, "boot-bare")
            bare_ts.append(a)
            bare_seen.append(b)
            bare_boot_ms.append(self._boot_ms(lines))
            a, b, lines = self.boot_once(full_config, "boot-full")
            msgs = [l.get("msg") for l in lines]
            if CACHE_CURRENT not in msgs or CACHE_EXTRACTING in msgs or WARM_READY not in msgs or PULLED in msgs:
                raise BenchError("boot: a measured start pulled or extracted something: " + ", ".join(
                    m for m in msgs if m))
            full_ts.append(a)
            full_seen.append(b)
            boot_ms.append(self._boot_ms(lines))
            phases = {l.get("phase"): l.get("elapsed_ms") for l in lines if l.get("phase")}
            warm_ms.append(phases.get("warm images", 0))
            cache_ms.append(phases.get("cache", 0))
        a, b = median_ms(full_ts), median_ms(bare_ts)
        target = TARGETS["boot_ms"]
        say(
            f"boot: spawn -> \"{READY}\" with a warm image present and the cache current median {a:.0f} ms, "
            f"with neither median {b:.0f} ms, ratio {a / b:.2f} (target < {target:.0f} ms; imds off)"
        )
        say(
            f"  the line seen on stdout: median {median_ms(full_seen):.0f} ms / {median_ms(bare_seen):.0f} ms; "
            f"agent's boot_ms median {statistics.median(boot_ms):.0f} / {statistics.median(bare_boot_ms):.0f} ms "
            f"(warm images phase {statistics.median(warm_ms):.0f} ms, cache phase "
            f"{statistics.median(cache_ms):.0f} ms); min/max {min(full_ts) * 1000:.0f}/{max(full_ts) * 1000:.0f} "
            f"and {min(bare_ts) * 1000:.0f}/{max(bare_ts) * 1000:.0f} ms ({runs} starts each)"
        )
        self.row(
            "boot",
            f"{a:.0f} ms (median of {runs})",
            f"{b:.0f} ms, no warm image or cache (median of {runs})",
            f"{a / b:.2f}",
            f"< {target:.0f} ms",
            a < target,
        )
        self.remove_cache_volumes(source)

    @staticmethod
    def _boot_ms(lines):
        """The agent's own boot time: `boot_ms` of its "Bootstrapped." line."""
        return next((l.get("boot_ms", 0) for l in lines if l.get("msg") == BOOTSTRAPPED), 0)
