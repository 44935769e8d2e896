"""box_boot: the AMI's image booted in the box, from systemd's start to deckhand.service's READY=1.
"""

import os
import statistics
import subprocess
import sys

from common import REPO, say


class BoxFigures:
    """box_boot."""

    def box_boot(self):
        """The whole host's boot (docs/packaging.md, "The box"): the box boots with
        the pool's cloud-config.yaml; from systemd's start (PID 1) to
        deckhand.service active (its READY=1), beside deckhand's own start ->
        READY and its boot_ms, over --box-runs boots. The box is built from this
        bench's binary (the same code as the static one, linked to the same glibc
        as the box's Debian 12)."""
        runs = self.args.box_runs
        env = dict(self.env, BOX_BINARY=self.binary, BOX_NAME=f"deckhand-bench-box-{self.run_id}")
        subprocess.run([os.path.join(REPO, "scripts", "box"), "build"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sys.path.insert(0, os.path.join(REPO, "scripts", "box.d"))
        # scripts/box, which test_box.boot runs, takes the name from the
        # environment; test_box itself read it when first imported (a retry
        # imports it no more), so it is told too.
        os.environ["BOX_NAME"] = env["BOX_NAME"]
        import test_box  # noqa: E402: the box tests' own boot and user data

        test_box.BOX = env["BOX_NAME"]
        pool = test_box.Pool(f"bench-box-{self.run_id}-{self.next_seq()}")
        self.queues += [pool.queue, pool.dlq]
        self.buckets.append(pool.bucket)
        whole, agent, boot_ms = [], [], []
        try:
            for _ in range(runs):
                test_box.boot(test_box.cloud_config(pool))
                test_box.wait_for(lambda: test_box.show("ActiveState") == "active",
                                  "deckhand.service active in the box", deadline=300)
                a, b = test_box.boot_figure()
                whole.append(a)
                agent.append(b)
                boot_ms.append(test_box.boot_ms() / 1000.0)
        finally:
            subprocess.run([os.path.join(REPO, "scripts", "box"), "down"], env=env, capture_output=True)
        w, a, b = (statistics.median(x) for x in (whole, agent, boot_ms))
        say(
            f"box_boot: systemd start -> deckhand READY median {w:.2f} s (min/max {min(whole):.2f}/"
            f"{max(whole):.2f}, {runs} boots); deckhand's start -> READY {a:.2f} s; its boot_ms {b * 1000:.0f} ms"
        )
        self.row("box_boot", f"{w:.2f} s systemd start -> READY (median of {runs})",
                 f"deckhand start -> READY {a:.2f} s (boot_ms {b * 1000:.0f})", "n/a", "reported", True)
