"""cache: the cache archive extracted into a volume by deckhand against a local tar.
"""

import os
import random
import shutil
import statistics
import subprocess
import time

from common import BenchError, CACHE_EXTRACTED, CpuMeter, READY, TARGETS, cpu_split, note, parse_ts, say, tail


class CacheFigures:
    """cache."""

    def make_cache_tree(self, root, total):
        """Mixed content, `total` bytes of file data: many small text files (a fifth,
        200 B to 32 KB, in 200 directories), six large text files, and /dev/urandom
        chunks (about a sixth). The text is slices of a 4 MB pool of pseudo-words taken
        at random offsets, so gzip (32 KB window) compresses it about as it would
        source code, not as a repeated string.
        Returns (file bytes, entries: files + directories + the root)."""
        rng = random.Random(20261127)
        words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10))) for _ in range(6000)]
        seps = [" ", " ", " ", " ", "\n", "(", ");\n", ", ", " = ", "::", ".", "\n    "]
        # Zipf-like word frequencies (s = 1.2): gzip -6 gets about 3:1 on this text,
        # near what it gets on source code.
        weights = [1 / (rank + 1) ** 1.2 for rank in range(len(words))]
        pool = "".join(w + rng.choice(seps) for w in rng.choices(words, weights=weights, k=650_000)).encode()
        pool_len = len(pool)

        def text(n):
            out = bytearray()
            while len(out) < n:
                start = rng.randrange(0, pool_len - 1)
                out += pool[start : start + min(n - len(out), rng.randint(4096, 262144))]
            return bytes(out[:n])

        written = 0
        entries = 1
        small_budget = total // 5
        random_budget = total // 6
        dirs = []
        for d in range(200):
            path = os.path.join(root, "pkgs", f"pkg-{d:03d}", "src")
            os.makedirs(path)
            dirs.append(path)
        entries += 1 + 200 * 2
        n = 0
        while written < small_budget:
            size = int(round(200 * (32768 / 200) ** rng.random()))
            size = min(size, small_budget - written)
            with open(os.path.join(dirs[n % 200], f"mod_{n:05d}.rs"), "wb") as f:
                f.write(text(size))
            written += size
            n += 1
            entries += 1
        blobs = os.path.join(root, "blobs")
        os.makedirs(blobs)
        entries += 1
        chunk = 32 * 1024 * 1024
        count = max(1, random_budget // chunk)
        for i in range(count):
            size = random_budget // count
            with open(os.path.join(blobs, f"native-{i}.so"), "wb") as f:
                f.write(os.urandom(size))
            written += size
            entries += 1
        large_budget = total - written
        large = 6
        for i in range(large):
            size = large_budget // large
            with open(os.path.join(blobs, f"bundle-{i}.js"), "wb") as f:
                left = size
                while left:
                    part = text(min(left, 8 * 1024 * 1024))
                    f.write(part)
                    left -= len(part)
            written += size
            entries += 1
        return written, entries, n

    def scratch_volume(self):
        """A Docker volume of the bench's own (the filesystem deckhand extracts to);
        its mount point. Removed at the end of the figure."""
        name = f"deckhand-bench-tar-{self.run_id}-{self.next_seq()}"
        subprocess.run(
            ["docker", "volume", "create", "--label", f"deckhand.bench={self.run_id}", name],
            check=True, capture_output=True,
        )
        self.volumes.append(name)
        return subprocess.run(
            ["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", name],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    @staticmethod
    def timed_children(argv):
        """Runs argv; (wall s, user s, sys s) of it and its children."""
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        after = os.times()
        return wall, after.children_user - before.children_user, after.children_system - before.children_system

    def tar_extract(self, archive):
        """`tar -xzf FILE -C DIR` into a fresh volume."""
        mount = self.scratch_volume()
        subprocess.run(["sync"], check=True)
        return self.timed_children(["tar", "-xzf", archive, "-C", mount])

    def deckhand_extract(self, url, bucket, key, expect_entries, expect_bytes):
        """Starts an agent whose cache is s3://bucket/key (never extracted on this
        host), waits for Ready, stops it. (elapsed_ms as logged, user s, sys s, the
        "Cache extracted." line, spawn -> that line in s, CPU meter)."""
        source = f"s3://{bucket}/{key}"
        self.cache_sources.append(source)
        sections = self.base_sections(url, bucket)
        sections["imds"] = "enabled = false\n"
        sections["cache"] = f'source = "{source}"\n'
        config = self.config(f"cache-{self.next_seq()}", sections)
        subprocess.run(["sync"], check=True)
        spawned = time.time()
        proc, log = self.start_agent(config, "cache")
        meter = CpuMeter({"deckhand": proc.pid})
        lines = self.wait_log(
            proc, log, lambda ls: any(l.get("msg") == READY for l in ls), "the cache to be extracted", 900
        )
        cpu = meter.stop()
        user, system = cpu_split(proc.pid)
        code = self.stop_agent(proc)
        if code != 0:
            raise BenchError(f"cache: the agent exited {code} after SIGTERM:\n{tail(log)}")
        done = next((l for l in lines if l.get("msg") == CACHE_EXTRACTED), None)
        if done is None:
            raise BenchError(f"cache: no {CACHE_EXTRACTED!r} in the log:\n{tail(log)}")
        if done.get("entries") != expect_entries:
            raise BenchError(f"cache: {done.get('entries')} entries extracted, the archive has {expect_entries}")
        mount = subprocess.run(
            ["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", done.get("volume")],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        got = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(mount) for f in fs)
        if got != expect_bytes:
            raise BenchError(f"cache: {got} bytes of files in the volume, the archive holds {expect_bytes}")
        return done["elapsed_ms"] / 1000.0, user, system, done, parse_ts(done["ts"]) - spawned, cpu

    def cache(self):
        total = int(self.args.cache_mb * 1e6 * 0.96)  # stay under the size asked for
        seq = self.next_seq()
        src = os.path.join(self.tmp, f"cache-src-{seq}")
        archive = os.path.join(self.tmp, f"cache-{seq}.tar.gz")
        try:
            self._cache(total, src, archive)
        finally:
            # Everything extracted is deleted only now, after the last timed
            # extraction: see wait_inodes_settled.
            for source in list(self.cache_sources):
                self.remove_cache_volumes(source)
            for name in list(self.volumes):
                subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)
                self.volumes.remove(name)
            shutil.rmtree(src, ignore_errors=True)
            try:
                os.remove(archive)
            except OSError:
                pass
            subprocess.run(["sync"])
            self.bulk_deleted_at = time.monotonic()

    def wait_inodes_settled(self):
        """ext4 without a journal (this machine's root filesystem) prefers not to
        reuse an inode freed less than 60 s ago (360 s while its inode table block
        is dirty), and checks every such free inode it passes when it allocates one
        (fs/ext4/ialloc.c, recently_deleted). Creating thousands of files within a
        minute of deleting thousands is then several times slower: tar -xzf of the
        archive took 3.6 s at rest and 7-15 s after one. So the figure deletes
        nothing until its last timed extraction, and a retry first waits out the
        window of the deletes (synced) that ended the attempt before."""
        window = 62.0
        left = getattr(self, "bulk_deleted_at", -1e9) + window - time.monotonic()
        if left > 0:
            note(f"cache: waiting {left:.0f} s for the inodes freed by the last bulk delete to age")
            time.sleep(left)

    def _cache(self, total, src, archive):
        t0 = time.perf_counter()
        raw, entries, _small = self.make_cache_tree(src, total)
        subprocess.run(["tar", "-czf", archive, "-C", src, "."], check=True)
        size = os.path.getsize(archive)
        url, bucket = self.pool("cache")
        keys = ["cache.tar.gz", "cache-2.tar.gz"]
        with open(archive, "rb") as f:
            self.s3.put_object(Bucket=bucket, Key=keys[0], Body=f)
        # A second key for the second deckhand run: a fresh volume, nothing to reuse.
        self.s3.copy_object(Bucket=bucket, Key=keys[1], CopySource={"Bucket": bucket, "Key": keys[0]})
        note(
            f"cache: built and uploaded a {size / 1e6:.0f} MB archive of {raw / 1e6:.0f} MB "
            f"({entries} entries) in {time.perf_counter() - t0:.0f} s"
        )
        self.wait_inodes_settled()

        # Alternating, tar first, so drift falls on both sides alike. The curl | tar
        # context run goes before the second deckhand start, because that start
        # removes the first one's volume once its own is extracted (deckhand treats
        # every other cache volume on the host as stale) and nothing timed may follow
        # a bulk delete.
        presigned = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": keys[0]}, ExpiresIn=3600
        )
        # One untimed extraction first: the first one after the archive is built runs
        # slower (here 3.4 s of kernel time against 1.2 s for the next ones).
        self.tar_extract(archive)
        tars, ours = [], []
        tars.append(self.tar_extract(archive))
        ours.append(self.deckhand_extract(url, bucket, keys[0], entries, raw))
        tars.append(self.tar_extract(archive))
        # For context only: how fast moto serves the object, and the same stream
        # through stock tools.
        download = self.timed_children(["curl", "-sSf", "-o", "/dev/null", presigned])[0]
        mount = self.scratch_volume()
        subprocess.run(["sync"], check=True)
        piped = self.timed_children(
            ["bash", "-o", "pipefail", "-c", 'curl -sSf "$1" | tar -xzf - -C "$2"', "curl_tar", presigned, mount]
        )[0]
        ours.append(self.deckhand_extract(url, bucket, keys[1], entries, raw))

        ours_s = statistics.mean(o[0] for o in ours)
        theirs_s = statistics.mean(t[0] for t in tars)
        ratio = theirs_s / ours_s  # deckhand's rate over tar's
        target = TARGETS["cache_vs_tar"]
        mb, rmb = size / 1e6, raw / 1e6
        say(
            f"cache: deckhand extracted a {mb:.0f} MB tar.gz ({rmb:.0f} MB of files, {entries} entries) "
            f"from S3 in {ours_s:.2f} s: {mb / ours_s:.0f} MB/s of archive, {rmb / ours_s:.0f} MB/s uncompressed; "
            f"local tar -xzf {theirs_s:.2f} s: {mb / theirs_s:.0f} MB/s, {rmb / theirs_s:.0f} MB/s; "
            f"ratio {ratio:.2f} (target >= {target:.2f}; means of 2 each, alternating)"
        )
        say(
            "  runs (wall, user + sys CPU): tar " + ", ".join(
                f"{w:.2f} s ({u:.2f} + {s:.2f})" for w, u, s in tars
            ) + "; deckhand " + ", ".join(
                f"{o[0]:.2f} s ({o[1]:.2f} + {o[2]:.2f} from spawn)" for o in ours
            ) + f"; deckhand's own mb_per_s {', '.join(str(o[3].get('mb_per_s')) for o in ours)}; "
            f"spawn -> \"{CACHE_EXTRACTED}\" {', '.join(f'{o[4]:.2f}' for o in ours)} s"
        )
        say(
            f"  for context: moto serves the object alone (curl -o /dev/null) in {download:.2f} s "
            f"({mb / download:.0f} MB/s); curl | tar -xzf - takes {piped:.2f} s ({mb / piped:.0f} MB/s)"
        )
        cpu = ours[0][5]
        procs = ", ".join(f"{name} {secs:.2f} s" for name, secs in sorted(cpu["procs"].items()))
        say(
            f"  CPU, first deckhand run, spawn to Ready: machine {cpu['util'] * 100:.0f} % busy "
            f"(of {os.cpu_count()} cores) over {cpu['wall']:.2f} s, {cpu['busy']:.2f} s in all: {procs}"
        )
        self.row(
            "cache",
            f"{mb / ours_s:.0f} MB/s archive, {rmb / ours_s:.0f} MB/s files ({ours_s:.2f} s, from S3)",
            f"tar -xzf {mb / theirs_s:.0f} MB/s, {rmb / theirs_s:.0f} MB/s ({theirs_s:.2f} s, local file)",
            f"{ratio:.2f}",
            f">= {target:.2f}",
            ratio >= target,
        )
