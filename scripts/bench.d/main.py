"""deckhand's benchmarks: each figure next to a baseline (plain Docker, a local tar)
or a floor (the IMDS poll interval) from the same run. Driven by scripts/bench, which brings the stack up, exports its
endpoints and makes sure target/release/deckhand is current.

Standard library plus boto3 (the stack's venv). Everything it creates (temp dir,
queues, buckets, agents, IMDS simulators, cache volumes) is removed before it exits, also on SIGINT/SIGTERM.
"""

import argparse
import datetime as dt
import signal
import subprocess
import sys

sys.dont_write_bytecode = True  # the modules below leave no __pycache__ beside them

from aws import AwsFigures
from boot import BootFigures
from build import BuildFigures
from box import BoxFigures
from cache import CacheFigures
from caches import CachesFigures
from common import FIGURES, Watch, note, say, wait_quiet
from execs import ExecFigures
from fleet import FleetFigures
from harness import Harness
from idle import IdleFigures
from jobs import JobFigures
from logs import LogFigures
from notice import NoticeFigures
from queues import QueueFigures
from requeue import RequeueFigures
from source import SourceFigures


class Bench(
    ExecFigures, QueueFigures, FleetFigures, JobFigures, IdleFigures, BoxFigures, LogFigures, AwsFigures,
    NoticeFigures, RequeueFigures, BootFigures, CacheFigures, CachesFigures, SourceFigures, BuildFigures, Harness,
):
    """Every figure, each a method named after it, over the shared harness."""


def arguments():
    """The command line scripts/bench passes on, and the figures to run in their order."""
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("figures", nargs="*", metavar="FIGURE", help=f"any of {', '.join(FIGURES)} (default: all)")
    parser.add_argument("--binary", required=True)
    parser.add_argument("--exec-runs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--idle-secs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--notice-runs", type=int, default=3)
    parser.add_argument("--boot-runs", type=int, default=5)
    parser.add_argument("--cache-mb", type=int, default=500)
    parser.add_argument("--flood-mb", type=int, default=200)
    parser.add_argument("--box-runs", type=int, default=3)
    parser.add_argument("--fleet-jobs", type=int, default=600)
    parser.add_argument("--source-mb", type=int, default=200)
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the agents' logs and configs here")
    parser.add_argument(
        "--quiet-timeout",
        type=int,
        default=600,
        metavar="SECS",
        help="before each figure, wait up to SECS for no builds or tests to be running (0: don't)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="measure a figure again, up to N times, when other work ran alongside it",
    )
    parser.add_argument("--strict", action="store_true", help="exit 3 if a target is missed")
    args = parser.parse_args()
    unknown = [f for f in args.figures if f not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    figures = [f for f in FIGURES if f in args.figures] if args.figures else list(FIGURES)
    return args, figures


def main():
    args, figures = arguments()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    bench = Bench(args)
    failed = []
    interrupted = False
    try:
        started = dt.datetime.now().astimezone()
        say(f"deckhand bench {started:%Y-%m-%d %H:%M %Z}: {', '.join(figures)}; image {bench.image}")
        for name in figures:
            for attempt in range(args.retries + 1):
                quiet = args.quiet_timeout <= 0 or wait_quiet(name, args.quiet_timeout)
                watch = Watch()
                rows = len(bench.rows)
                try:
                    getattr(bench, name)()
                except Exception as e:  # one figure failing does not stop the others
                    watch.stop()
                    detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else e
                    say(f"{name}: FAILED: {detail}")
                    failed.append(name)
                    del bench.rows[rows:]
                    bench.rows.append((name, "failed", "", "", "", "**no**"))
                    bench.stop_agents()
                    break
                seen = watch.stop()
                if not seen and quiet:
                    break
                noisy = "  warning: {} ran alongside other work{}; its figures are noisy".format(
                    name, f" ({', '.join(sorted(seen))})" if seen else ""
                )
                if attempt < args.retries:
                    say(f"{noisy}: measuring it again")
                    del bench.rows[rows:]
                else:
                    say(noisy)
                    bench.rows[-1] = bench.rows[-1][:5] + (bench.rows[-1][5] + " (noisy)",)
    except KeyboardInterrupt:
        note("interrupted; cleaning up")
        interrupted = True
    finally:
        bench.clean_up()
    if interrupted:
        return 130

    say()
    say("| figure | deckhand | baseline | ratio | target | met? |")
    say("| --- | --- | --- | --- | --- | --- |")
    for r in bench.rows:
        say("| " + " | ".join(r) + " |")
    if failed:
        return 1
    if args.strict and any(not r[5].startswith("yes") for r in bench.rows):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
