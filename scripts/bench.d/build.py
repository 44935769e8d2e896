"""image_build: a job's image build (bases staged by the engine, buildah in the
builder container, the image loaded and pushed by the engine) against `docker
build` then `docker push` of the same Dockerfile on the host, from the same run.
No target yet: the ratio is measured.
"""

import json
import os
import statistics
import subprocess
import time

from common import BenchError, say

# A base, a RUN step that writes 200 small files and one of 20 MB: a layer of
# real work for both builders to commit and push.
DOCKERFILE = (
    "FROM {image}\n"
    "RUN for i in $(seq 1 200); do echo $i > /f$i; done && dd if=/dev/urandom of=/blob bs=1M count=20 2>/dev/null\n"
)


class BuildFigures:
    """image_build."""

    def image_build(self):
        builder = os.environ.get("STACK_BUILDER_IMAGE")
        if not builder:
            raise BenchError("image_build: STACK_BUILDER_IMAGE is not set (scripts/stack up makes the builder)")
        runs = max(3, self.args.rounds)
        dockerfile = DOCKERFILE.format(image=self.image)
        config = self.config(
            "image-build",
            {"images": f'builder = "{builder}"\n', "profile": f'push_registries = ["{self.registry}"]\n'},
        )
        context = os.path.join(self.tmp, "image-build-context")
        os.makedirs(context, exist_ok=True)
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(dockerfile)
        ours, theirs, walls = [], [], []
        for n in range(runs + 1):
            repo = f"{self.registry}/bench/build-{self.run_id}-{n}"
            wall, built = self.deckhand_build(config, dockerfile, f"{repo}:deckhand", n)
            baseline = self.docker_build(context, f"{repo}:docker")
            if n == 0:
                continue  # warm-up: page cache, the builder image's first start
            ours.append((built["build_ms"] + built["push_ms"]) / 1000)
            theirs.append(baseline)
            walls.append(wall)
        a, b = statistics.median(ours), statistics.median(theirs)
        ratio = a / b
        say(
            f"image_build: {runs} runs each, interleaved: deckhand's build + push median {a:.2f} s "
            f"(the whole deckhand exec, its job's command included, {statistics.median(walls):.2f} s) against "
            f"docker build --no-cache + docker push {b:.2f} s: {ratio:.2f}x (no target yet)"
        )
        self.row("image_build", f"{a:.2f} s", f"{b:.2f} s (docker build + push)", f"{ratio:.2f}x", "none yet", True)

    def deckhand_build(self, config, dockerfile, tag, n):
        """`deckhand exec` of a job that writes the Dockerfile and builds it;
        its wall time and the result's `images[0]`."""
        job_id = f"bench-build-{self.run_id}-{n}"
        job = {
            "version": 1, "id": job_id, "image": self.image,
            "command": ["sh", "-c", "printf '%s' \"$DOCKERFILE\" > Dockerfile"],
            "env": {"DOCKERFILE": dockerfile},
            "image_build": {"tags": [tag]},
        }
        path = os.path.join(self.tmp, f"{job_id}.json")
        with open(path, "w") as f:
            json.dump(job, f)
        t0 = time.perf_counter()
        out = subprocess.run([self.binary, "--config", config, "exec", path], capture_output=True, text=True, env=self.env)
        wall = time.perf_counter() - t0
        lines = out.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {}
        if result.get("status") != "succeeded" or not result.get("images"):
            raise BenchError(f"image_build: deckhand exec failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
        return wall, result["images"][0]

    def docker_build(self, context, tag):
        """`docker build --no-cache` then `docker push` on the host; seconds."""
        t0 = time.perf_counter()
        for cmd in (["docker", "build", "-q", "--no-cache", f"--network={self.network}", "-t", tag, context],
                    ["docker", "push", "-q", tag]):
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
        subprocess.run(["docker", "image", "rm", tag], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return elapsed
