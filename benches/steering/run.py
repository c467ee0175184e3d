"""Steering a frozen policy, measured (issue: V-GPS and DSRL).

The base policy is launch/sim_arm_steering.toml's weakened flow policy (trained on
demonstrations of which half reach for the target's mirror image). Every variant
runs the same recorded episodes under --sim-clock with the same seed, so the same
targets in the same order and the same reset pose: reflex records them
(`--record`, LeRobotDataset) and the reward classifier says which succeeded.

Variants:
- base: the policy alone (one sample per chunk);
- vgps K=4, 10, 32: K candidates, the value function trained on the base policy's
  recorded rollouts (policies/export/train_steering.py) picks the argmax of Q on
  the executed segment;
- vgps negated (K=10): the same with -Q, a negative control that must hurt;
- dsrl: the latent-noise policy trained in noise space chooses the initial noise;
- dsrl random w: a latent policy that outputs 0 with exploration_std = 1 and a
  bound of 3 (w ~ N(0, 1) clipped at 3 sigma: the base policy's own noise through
  the DSRL path), a negative control that must match the base;
- dsrl + vgps (K=10): candidate 0 from w, the rest seeded, V-GPS picks.

Per variant: success rate with its 95 % Wilson interval, the mean time to success
(failures count the whole episode), and the share of chunks where V-GPS ran another
candidate than the first. Writes results.csv and results.md here.

    "$(bash scripts/parity_venv.sh)" benches/steering/run.py --episodes 200
"""

import argparse
import csv
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LAUNCH = os.path.join(REPO, "launch", "sim_arm_steering.toml")
MODELS = os.path.join(REPO, "policies", "models", "steering")
EPISODE_S = 3.0


def value_stage(model):
    return f"""
[[stages]]
kind = "vgps"
model = "{{models}}/{model}"
score = "segment"

[[stages.inputs]]
name = "image"
source = "camera.top"
shape = [1, 3, 32, 32]
image = {{ resize = [32, 32], layout = "nchw", range = "zero_one" }}

[[stages.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]
"""


def latent_noise(model, magnitude, exploration_std=0.0, features=True):
    """The latent-noise policy reads the base policy's prefix output (its
    observation features) and the joint positions."""
    prefix = 'prefix_outputs = ["obs_features"]' if features else ""
    return f"""
[policy.latent_noise]
model = "{{models}}/{model}"
action_magnitude = {magnitude}
exploration_std = {exploration_std}
{prefix}

[[policy.latent_noise.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]
"""


# name: (policy batch, text added to [policy] and after it, stage text)
VARIANTS = {
    "base": (1, "", ""),
    "vgps K=4": (4, "", value_stage("sim_reach_weak_value.onnx")),
    "vgps K=10": (10, "", value_stage("sim_reach_weak_value.onnx")),
    "vgps K=32": (32, "", value_stage("sim_reach_weak_value.onnx")),
    "vgps K=10 negated Q": (10, "", value_stage("sim_reach_weak_value_negated.onnx")),
    "dsrl": (1, latent_noise("sim_reach_weak_latent.onnx", 2.0), ""),
    "dsrl random w": (1, latent_noise("sim_reach_weak_latent_zero.onnx", 3.0, 1.0, features=False), ""),
    "dsrl + vgps K=10": (10, latent_noise("sim_reach_weak_latent.onnx", 2.0), value_stage("sim_reach_weak_value.onnx")),
}


def wilson(successes, n, z=1.96):
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def launch_text(batch, policy_extra, stage, models):
    """The steering launch file with absolute model paths, `batch` candidates and the
    variant's sections ([policy.latent_noise] belongs to [policy]: it goes right
    after the policy's own keys)."""
    with open(LAUNCH) as f:
        text = f.read()
    text = text.replace('"../policies/', f'"{REPO}/policies/')
    text = text.replace("[policy]\n", f"[policy]\nbatch = {batch}\n", 1)
    marker = "\n[safety]"
    extra = (policy_extra + stage).replace("{models}", models)
    return text.replace(marker, extra + marker, 1)


def run(reflex, name, episodes, seed, work, models):
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    launch = os.path.join(work, f"{slug}.toml")
    with open(launch, "w") as f:
        f.write(launch_text(*VARIANTS[name], models))
    dataset = os.path.join(work, slug)
    shutil.rmtree(dataset, ignore_errors=True)
    summary = os.path.join(work, f"{slug}.json")
    cmd = [reflex, "run", launch, "--sim-clock", "--seed", str(seed), "--record", dataset,
           "--set", f"recording.episodes={episodes}", "--set", "zenoh.enabled=false",
           "--duration", str(episodes * (EPISODE_S + 2.0) + 60), "--summary-json", summary]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return dataset, summary


def outcomes(dataset, episodes):
    """Per episode (in order): the time of its success, s, or None."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(dataset, "data", "chunk-*", "file-*.parquet"))):
        t = pq.read_table(path, columns=["episode_index", "timestamp", "next.reward"]).to_pydict()
        for e, ts, r in zip(t["episode_index"], t["timestamp"], t["next.reward"]):
            if r > 0.5:
                rows[e] = ts
            rows.setdefault(e, None)
    if len(rows) < episodes:
        raise SystemExit(f"{dataset}: {len(rows)} episodes recorded, {episodes} asked for")
    return [rows[e] for e in sorted(rows)[:episodes]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reflex", default=os.path.join(REPO, "target/release/reflex"))
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="the same for every variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--models", default=MODELS, help="where the value and latent-noise models are")
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    names = args.variants.split(",")
    work = os.path.join(args.out, "runs")
    os.makedirs(work, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda n: run(args.reflex, n, args.episodes, args.seed, work, os.path.abspath(args.models)), names))
    rows = []
    base = None
    for name, (dataset, summary_path) in zip(names, results):
        times = outcomes(dataset, args.episodes)
        with open(summary_path) as f:
            summary = json.load(f)
        wins = sum(t is not None for t in times)
        low, high = wilson(wins, len(times))
        if name == "base":
            base = times
        steering = summary.get("steering") or {}
        row = {"variant": name, "episodes": len(times), "successes": wins, "success": wins / len(times),
               "success_low": low, "success_high": high,
               "time_s": sum(EPISODE_S if t is None else t for t in times) / len(times),
               "other_than_first": (steering["not_first"] / steering["scored"]) if steering.get("scored") else None,
               "latent_chunks": steering.get("latent_chunks", 0)}
        if base is not None and name != "base":
            # Paired on the same episodes: won here but not by the base, and the reverse.
            row["gained"] = sum(a is not None and b is None for a, b in zip(times, base))
            row["lost"] = sum(a is None and b is not None for a, b in zip(times, base))
        rows.append(row)
        print(f"{name:22} success {row['success']:.3f} [{low:.3f}, {high:.3f}] ({wins}/{len(times)}), "
              f"time {row['time_s']:.2f} s", flush=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        fields = ["variant", "episodes", "successes", "success", "success_low", "success_high", "time_s",
                  "other_than_first", "latent_chunks", "gained", "lost"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| variant | success [95 % CI] | successes | vs base: won / lost (same episodes) "
             "| mean time (s, failure = 3) | V-GPS ran another than candidate 0 |",
             "|---|---|---:|---|---:|---:|"]
    for r in rows:
        paired = f"{r['gained']} / {r['lost']}" if "gained" in r else "-"
        other = f"{r['other_than_first']:.0%}" if r["other_than_first"] is not None else "-"
        lines.append(f"| {r['variant']} | {r['success']:.2f} [{r['success_low']:.2f}, {r['success_high']:.2f}] | "
                     f"{r['successes']}/{r['episodes']} | {paired} | {r['time_s']:.2f} | {other} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
