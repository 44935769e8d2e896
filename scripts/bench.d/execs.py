"""exec_true and exec_arm64: `deckhand exec` of a trivial job against `docker run`.
"""

import json
import os
import shutil
import statistics
import subprocess
import time

from common import BenchError, REPO, TARGETS, median_ms, say


class ExecFigures:
    """exec_true, exec_arm64."""

    def exec_true(self):
        runs = self.args.exec_runs
        config = self.config("exec")
        job_path = os.path.join(self.tmp, "exec-job.json")
        ids = iter(range(10**6))

        def deckhand_exec():
            with open(job_path, "w") as f:
                json.dump(self.job(f"bench-exec-{self.run_id}-{next(ids)}"), f)
            t0 = time.perf_counter()
            out = subprocess.run(
                [self.binary, "--config", config, "exec", job_path],
                capture_output=True,
                text=True,
                env=self.env,
            )
            elapsed = time.perf_counter() - t0
            lines = out.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if lines else {}
            if out.returncode != 0 or result.get("status") != "succeeded":
                raise BenchError(
                    f"deckhand exec failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}"
                )
            return elapsed, result.get("duration_ms", 0) / 1000.0

        def docker():
            t0 = time.perf_counter()
            self.docker_run()
            return time.perf_counter() - t0

        deckhand_exec()  # warm-up: page cache, image inspect, dockerd's caches
        docker()
        ours, runner, theirs = [], [], []
        # Interleaved, so drift in the engine's speed hits both sides alike.
        for _ in range(runs):
            wall, inner = deckhand_exec()
            ours.append(wall)
            runner.append(inner)
            theirs.append(docker())
        a, b = median_ms(ours), median_ms(theirs)
        ratio = a / b
        # Each deckhand run beside the docker run after it: the quartiles of
        # those ratios are the spread.
        paired = statistics.quantiles([o / t for o, t in zip(ours, theirs)], n=4)
        target = TARGETS["exec_true"]
        say(
            f"exec_true: deckhand exec median {a:.0f} ms, docker run --rm median {b:.0f} ms, "
            f"ratio {ratio:.2f} (target <= {target:.2f})"
        )
        say(
            f"  deckhand exec: runner (image check .. cleanup) median {median_ms(runner):.0f} ms, "
            f"process start + config + Docker connect + result median "
            f"{median_ms([w - r for w, r in zip(ours, runner)]):.0f} ms; "
            f"min/max deckhand {min(ours) * 1000:.0f}/{max(ours) * 1000:.0f} ms, "
            f"docker {min(theirs) * 1000:.0f}/{max(theirs) * 1000:.0f} ms ({runs} runs each)"
        )
        say(f"  paired ratios: quartiles {paired[0]:.2f} / {paired[1]:.2f} / {paired[2]:.2f}")
        self.row(
            "exec_true",
            f"{a:.0f} ms (median of {runs})",
            f"{b:.0f} ms (median of {runs})",
            f"{ratio:.2f} (IQR {paired[0]:.2f}-{paired[2]:.2f})",
            f"<= {target:.2f}",
            ratio <= target,
        )

    def exec_arm64(self):
        """The arm64 binary's `exec` of the same job under qemu-user, beside the
        native binary's: an emulated figure (the agent is emulated, Docker and the
        job are not), with no target; it shows the arm64 build works and what
        emulation costs, not how fast a Graviton host is."""
        arm = os.path.join(REPO, "target", "aarch64-unknown-linux-gnu", "release", "deckhand")
        qemu = shutil.which("qemu-aarch64-static")
        if not os.path.exists(arm) or not qemu:
            say("exec_arm64: skipped (needs scripts/build-static --arch arm64 and qemu-user-static)")
            return
        runs = max(3, self.args.exec_runs // 2)
        config = self.config("exec-arm64")
        job_path = os.path.join(self.tmp, "exec-arm64-job.json")
        ids = iter(range(10**6))

        def run(command):
            with open(job_path, "w") as f:
                json.dump(self.job(f"bench-arm64-{self.run_id}-{next(ids)}"), f)
            t0 = time.perf_counter()
            out = subprocess.run(command + ["--config", config, "exec", job_path], capture_output=True, text=True, env=self.env)
            elapsed = time.perf_counter() - t0
            lines = out.stdout.strip().splitlines()
            if out.returncode != 0 or json.loads(lines[-1]).get("status") != "succeeded":
                raise BenchError(f"exec failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
            return elapsed

        run([qemu, arm])  # warm-up
        run([self.binary])
        emulated, native = [], []
        for _ in range(runs):
            emulated.append(run([qemu, arm]))
            native.append(run([self.binary]))
        a, b = median_ms(emulated), median_ms(native)
        size = os.path.getsize(arm) / 1e6
        say(
            f"exec_arm64: arm64 binary ({size:.1f} MB) under qemu-user median {a:.0f} ms, "
            f"native x86-64 median {b:.0f} ms, ratio {a / b:.2f} (emulated; no target)"
        )
        self.row(
            "exec_arm64 (emulated)",
            f"{a:.0f} ms under qemu-aarch64 (median of {runs}; {size:.1f} MB binary)",
            f"{b:.0f} ms native x86-64 (median of {runs})",
            f"{a / b:.2f}",
            "none (emulated)",
            True,
        )
