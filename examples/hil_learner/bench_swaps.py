#!/usr/bin/env python3
"""What model swaps cost the tick: the demo at 500 Hz on the wall clock for
DURATION s, once without pushes and once with a model pushed every PERIOD s (the
demo policy with a small residual, as the learner sends), side by side from the
runs' summaries: overruns, skipped periods, tick compute and period jitter p99/max.

    .venv/bin/python examples/hil_learner/bench_swaps.py --out target/bench_swaps
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import zenoh

sys.path.insert(0, os.path.dirname(__file__))
from learner import BASE_MODEL, Pusher, free_port, with_offset, write_access_control  # noqa: E402


def run(args, out: str, pushes: bool):
    port = free_port()
    config, learner_config = write_access_control(out, port)
    summary = os.path.join(out, f"summary-{'swaps' if pushes else 'plain'}.json")
    command = [
        args.reflex, "run", "launch/sim_arm.toml", "--duration", str(args.duration),
        "--set", f"control.rate_hz={args.rate_hz}",
        "--set", f"zenoh.listen={json.dumps([f'tcp/127.0.0.1:{port}'])}",
        "--set", f"zenoh.config_file={json.dumps(os.path.abspath(config))}",
        "--set", "zenoh.model_updates=true",
        "--set", "drivers[0].episode_seconds=1000",
        "--summary-json", summary,
    ]
    log = open(os.path.join(out, f"actor-{'swaps' if pushes else 'plain'}.log"), "w")
    actor = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    swapped = 0
    try:
        time.sleep(1.5)
        if pushes:
            session = zenoh.open(learner_config)
            pusher = Pusher(session)
            base = onnx.load(BASE_MODEL)
            rng = np.random.default_rng(0)
            started = time.monotonic()
            while time.monotonic() - started < args.duration - 3 and actor.poll() is None:
                model = with_offset(base, rng.normal(0, 0.01, 3).astype(np.float32))
                pusher.push(model)
                swapped += 1
                time.sleep(args.period)
            session.close()
        actor.wait(timeout=args.duration + 60)
    finally:
        if actor.poll() is None:
            actor.send_signal(signal.SIGINT)
            actor.wait(timeout=60)
        log.close()
    with open(summary) as f:
        return json.load(f), swapped


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="target/bench_swaps")
    parser.add_argument("--reflex", default="target/release/reflex")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate-hz", type=float, default=500.0)
    parser.add_argument("--period", type=float, default=0.5, help="seconds between pushes")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for pushes in (False, True):
        s, swapped = run(args, args.out, pushes)
        rows.append((pushes, s, swapped))
    print(f"{'run':<8} {'pushed':>6} {'swaps':>5} {'ticks':>6} {'overruns':>8} {'skipped':>7} "
          f"{'compute p99':>11} {'max':>8} {'jitter p99':>10} {'max':>8}")
    for pushes, s, swapped in rows:
        print(f"{'swaps' if pushes else 'plain':<8} {swapped:>6} {s['model_swaps']:>5} {s['ticks']:>6} "
              f"{s['overruns']:>8} {s['skipped_periods']:>7} {s['compute']['p99_us']:>9.1f}us "
              f"{s['compute']['max_us']:>6.0f}us {s['jitter']['p99_us']:>8.1f}us {s['jitter']['max_us']:>6.0f}us")


if __name__ == "__main__":
    sys.exit(main())
