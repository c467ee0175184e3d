#!/usr/bin/env python3
"""What model swaps cost the tick: the demo at 500 Hz on the wall clock for
DURATION s, three ways: without a learner; with a learner that makes and puts a
model every PERIOD s on a key reflex does not take (the learner's own CPU and
traffic: the fair baseline); and with the same puts on the model key, each loaded
and swapped in. Side by side from the runs' summaries: overruns, skipped periods,
tick compute and period jitter p99 / max. `--fifo` gives the tick SCHED_FIFO 80 and locks
the process's memory, as on a robot (root, or CAP_SYS_NICE and CAP_IPC_LOCK).

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


def run(args, out: str, mode: str):
    port = free_port()
    config, learner_config = write_access_control(out, port)
    summary = os.path.join(out, f"summary-{mode}.json")
    command = [
        args.reflex, "run", "launch/sim_arm.toml", "--duration", str(args.duration),
        "--set", f"control.rate_hz={args.rate_hz}",
        "--set", f"zenoh.listen={json.dumps([f'tcp/127.0.0.1:{port}'])}",
        "--set", f"zenoh.config_file={json.dumps(os.path.abspath(config))}",
        "--set", "zenoh.model_updates=true",
        "--set", "drivers[0].episode_seconds=1000",
        "--summary-json", summary,
    ]
    if args.fifo:
        command += ["--set", "control.realtime.fifo_priority=80",
                    "--set", "control.realtime.lock_memory=true"]
    log = open(os.path.join(out, f"actor-{mode}.log"), "w")
    actor = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    swapped = 0
    try:
        time.sleep(1.5)
        if mode != "plain":
            session = zenoh.open(learner_config)
            pusher = Pusher(session)
            base = onnx.load(BASE_MODEL)
            rng = np.random.default_rng(0)
            started = time.monotonic()
            while time.monotonic() - started < args.duration - 3 and actor.poll() is None:
                model = with_offset(base, rng.normal(0, 0.01, 3).astype(np.float32))
                if mode == "swaps":
                    pusher.push(model)
                else:
                    # Refused by the ACL before reflex sees it: the learner's cost only.
                    session.put("reflex/sim_arm/models/elsewhere", model)
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
    parser.add_argument("--fifo", action="store_true", help="the tick at SCHED_FIFO 80, memory locked")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for mode in ("plain", "learner", "swaps"):
        s, swapped = run(args, args.out, mode)
        rows.append((mode, s, swapped))
    print(f"{'run':<8} {'pushed':>6} {'swaps':>5} {'ticks':>6} {'overruns':>8} {'skipped':>7} "
          f"{'compute p99':>11} {'max':>8} {'jitter p99':>10} {'max':>8}")
    for mode, s, swapped in rows:
        print(f"{mode:<8} {swapped:>6} {s['model_swaps']:>5} {s['ticks']:>6} "
              f"{s['overruns']:>8} {s['skipped_periods']:>7} {s['compute']['p99_us']:>9.1f}us "
              f"{s['compute']['max_us']:>6.0f}us {s['jitter']['p99_us']:>8.1f}us {s['jitter']['max_us']:>6.0f}us")


if __name__ == "__main__":
    sys.exit(main())
