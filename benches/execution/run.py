"""Execution strategies under inference delay, measured (issue: chunk execution).

Runs the flow policy on the switching-target task (sim_arm_switching.toml: 4 s
episodes, the target jumps 1.5 s in) under --sim-clock, which makes the inference
delay exact: control.sim_inference_ticks from 0 to 4 action periods (1, 10, 20,
30, 40 ticks at 100 Hz control, 10 Hz actions). Every strategy runs the same seed,
so the same targets and the same policy noise per request tick, over the same
episodes. Per (strategy, delay):

- success rate over the episodes with its 95 % Wilson interval;
- time to complete: seconds from the switch to reaching the new target, a failed
  episode counting as the 2.5 s it had (so that failing the slow episodes does not
  look fast); also the mean over the reached episodes alone;
- smoothness before the safety filter (from the run summary's `executor`): the
  velocity step of the target at chunk switches (mean, max), RMS and max jerk;
- how often the safety filter had to limit the command (fraction of ticks).

Writes results.csv, results.md (the table), delay.svg (time to complete, success
and switch step against the delay) and trajectory.svg (one episode's shoulder
target and command under synchronous, replace and rtc, from `reflex replay
--trace`).

    .venv/bin/python benches/execution/run.py --episodes 200
"""

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LAUNCH = os.path.join(HERE, "sim_arm_switching.toml")
EPISODE_S, SWITCH_S = 4.0, 1.5

STRATEGIES = {
    "synchronous": ["execution.strategy=\"synchronous\"", "execution.replan_after=5"],
    "replace": ["execution.strategy=\"replace\"", "execution.replan_after=5"],
    "aggregate": ["execution.strategy=\"aggregate\"", "execution.replan_after=5"],
    "temporal_ensemble": ["execution.strategy=\"temporal_ensemble\"", "execution.replan_after=1"],
    "rtc": ["execution.strategy=\"rtc\"", "execution.replan_after=5"],
    # The same, with the smooth interpolation between actions.
    "rtc_quintic": ["execution.strategy=\"rtc\"", "execution.replan_after=5",
                    "execution.interpolation=\"quintic\""],
    # Training-time RTC: its own model (trained with a frozen prefix), no guidance.
    "rtc_trained": ["execution.strategy=\"rtc\"", "execution.mode=\"trained\"", "execution.replan_after=5",
                    "policy.prefix_model=\"../../policies/models/sim_reach_flow_rtc_prefix.onnx\"",
                    "policy.model=\"../../policies/models/sim_reach_flow_rtc_expert.onnx\"",
                    "policy.norm_stats.file=\"../../policies/models/sim_reach_flow_rtc_norm_stats.json\""],
}
COLORS = {"synchronous": "#444444", "replace": "#d62728", "aggregate": "#ff7f0e",
          "temporal_ensemble": "#2ca02c", "rtc": "#1f77b4", "rtc_quintic": "#17becf", "rtc_trained": "#9467bd"}


def wilson(successes, n, z=1.96):
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def run(reflex, strategy, ticks, episodes, out_dir, log=None, reuse=False, tag="summary"):
    summary = os.path.join(out_dir, f"{tag}_{strategy}_{ticks}.json")
    if reuse and os.path.exists(summary):
        with open(summary) as f:
            return json.load(f)
    cmd = [reflex, "run", LAUNCH, "--sim-clock", "--duration", str(episodes * EPISODE_S + 0.5),
           "--set", "zenoh.enabled=false", "--set", f"control.sim_inference_ticks={ticks}",
           "--summary-json", summary]
    for s in STRATEGIES[strategy]:
        cmd += ["--set", s]
    if log:
        cmd += ["--log", log]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    with open(summary) as f:
        return json.load(f)


def measure(summary, episodes):
    outcomes = summary["tasks"][0]["episodes"][:episodes]
    reached = [e for e in outcomes if e["reached"]]
    times = [e["time_to_reach_s"] - SWITCH_S for e in reached if e["time_to_reach_s"] is not None]
    # Failures count as the whole time left after the switch (censored), so a
    # strategy cannot look fast by failing the slow episodes.
    censored = times + [EPISODE_S - SWITCH_S] * (len(outcomes) - len(times))
    low, high = wilson(len(reached), len(outcomes))
    ex = summary["executor"]
    return {
        "episodes": len(outcomes),
        "success": len(reached) / max(1, len(outcomes)),
        "success_low": low,
        "success_high": high,
        "time_to_complete_s": sum(censored) / max(1, len(censored)),
        "time_when_reached_s": sum(times) / len(times) if times else float("nan"),
        "switch_jump_mean": ex["switch_jump_mean"],
        "switch_jump_max": ex["switch_jump_max"],
        "jerk_rms": ex["jerk_rms"],
        "jerk_max": ex["jerk_max"],
        "held_past_plan_ticks": ex["held_past_plan_ticks"],
        "limited_fraction": summary["limited_commands"] / max(1, summary["ticks"]),
    }


def svg_lines(path, title, x_label, panels, width=900, panel_height=220):
    """panels: [(y_label, {name: [(x, y), ...]}, {name: [(x, low, high)]} or None)]."""
    left, right, top, gap = 70, 170, 30, 50
    height = top + len(panels) * (panel_height + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>']
    for p, (y_label, series, bands) in enumerate(panels):
        y0 = top + p * (panel_height + gap)
        xs = [x for pts in series.values() for x, _ in pts]
        ys = [y for pts in series.values() for _, y in pts if not math.isnan(y)]
        if bands:
            ys += [v for pts in bands.values() for _, lo, hi in pts for v in (lo, hi)]
        x_min, x_max = min(xs), max(xs)
        y_min, y_max = min(ys), max(ys)
        if y_max - y_min < 1e-9:
            y_max = y_min + 1.0
        pad = 0.05 * (y_max - y_min)
        y_min, y_max = y_min - pad, y_max + pad
        plot_w = width - left - right

        def sx(x):
            return left + (x - x_min) / (x_max - x_min or 1.0) * plot_w

        def sy(y):
            return y0 + panel_height - (y - y_min) / (y_max - y_min) * panel_height

        parts.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_height}" '
                     'fill="none" stroke="#999"/>')
        for k in range(5):
            yv = y_min + k * (y_max - y_min) / 4
            parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
            xv = x_min + k * (x_max - x_min) / 4
            parts.append(f'<text x="{sx(xv):.1f}" y="{y0 + panel_height + 16}" '
                         f'text-anchor="middle">{xv:.3g}</text>')
        parts.append(f'<text x="16" y="{y0 + panel_height / 2}" transform="rotate(-90 16 '
                     f'{y0 + panel_height / 2})" text-anchor="middle">{y_label}</text>')
        if p == len(panels) - 1:
            parts.append(f'<text x="{left + plot_w / 2}" y="{y0 + panel_height + 34}" '
                         f'text-anchor="middle">{x_label}</text>')
        for name, pts in (bands or {}).items():
            poly = [(sx(x), sy(hi)) for x, _, hi in pts] + [(sx(x), sy(lo)) for x, lo, _ in reversed(pts)]
            parts.append('<polygon points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in poly) +
                         f'" fill="{COLORS.get(name, "#888")}" fill-opacity="0.15" stroke="none"/>')
        for i, (name, pts) in enumerate(series.items()):
            color = COLORS.get(name.split(" ")[0], "#888")
            dash = ' stroke-dasharray="5,3"' if name.endswith("command") else ""
            good = [(x, y) for x, y in pts if not math.isnan(y)]
            parts.append('<polyline fill="none" stroke-width="1.6" stroke="' + color + '"' + dash +
                         ' points="' + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good) + '"/>')
            if p == 0:
                ly = top + 14 + 16 * i
                parts.append(f'<line x1="{width - right + 12}" y1="{ly - 4}" x2="{width - right + 32}" '
                             f'y2="{ly - 4}" stroke="{color}" stroke-width="2"{dash}/>')
                parts.append(f'<text x="{width - right + 38}" y="{ly}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def trajectory(reflex, out_dir, work, ticks):
    """One episode (the second: a switch with the arm already moving) per strategy."""
    series = {}
    for strategy in ("synchronous", "replace", "rtc"):
        log = os.path.join(work, f"trajectory_{strategy}.log")
        if os.path.exists(log):
            os.remove(log)
        run(reflex, strategy, ticks, 2, work, log=log, tag="trajectory")
        trace = os.path.join(work, f"trajectory_{strategy}.csv")
        subprocess.run([reflex, "replay", log, "--trace", trace], cwd=REPO, check=True,
                       capture_output=True)
        with open(trace) as f:
            rows = list(csv.DictReader(f))
        t0 = float(rows[0]["time_s"])
        window = [r for r in rows if EPISODE_S <= float(r["time_s"]) - t0 < 2 * EPISODE_S]
        series[f"{strategy} target"] = [(float(r["time_s"]) - t0 - EPISODE_S, float(r["target.shoulder"]))
                                        for r in window]
        series[f"{strategy} command"] = [(float(r["time_s"]) - t0 - EPISODE_S, float(r["command.shoulder"]))
                                         for r in window]
        os.remove(log)
    svg_lines(os.path.join(out_dir, "trajectory.svg"),
              f"One episode at {ticks * 10} ms delay: shoulder target (solid), command (dashed); switch at {SWITCH_S} s",
              "time in the episode (s)", [("shoulder (rad)", series, None)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reflex", default=os.path.join(REPO, "target/release/reflex"))
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--delays", default="1,10,20,30,40", help="control ticks (100 Hz)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=HERE)
    parser.add_argument("--reuse", action="store_true", help="keep the run summaries already in OUT/runs")
    args = parser.parse_args()
    delays = [int(d) for d in args.delays.split(",")]
    strategies = args.strategies.split(",")
    work = os.path.join(args.out, "runs")
    os.makedirs(work, exist_ok=True)
    jobs = [(s, d) for d in delays for s in strategies]
    with ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(
            lambda job: run(args.reflex, job[0], job[1], args.episodes, work, reuse=args.reuse), jobs))
    rows = []
    for (strategy, ticks), summary in zip(jobs, summaries):
        row = {"strategy": strategy, "delay_ticks": ticks, "delay_ms": ticks * 10,
               **measure(summary, args.episodes)}
        rows.append(row)
        print(f"{strategy:18} delay {ticks * 10:3d} ms: success {row['success']:.3f} "
              f"[{row['success_low']:.3f}, {row['success_high']:.3f}], time {row['time_to_complete_s']:.3f} s "
              f"({row['time_when_reached_s']:.3f} s when reached), "
              f"switch step {row['switch_jump_mean']:.3f} / {row['switch_jump_max']:.3f} rad/s, "
              f"jerk rms {row['jerk_rms']:.0f}, limited {row['limited_fraction']:.3f}", flush=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| strategy | delay (ms) | success [95 % CI] | time to complete (s) | (when reached) "
             "| switch step mean / max (rad/s) | jerk RMS / max (rad/s³) | held past plan (ticks) | filter limited |",
             "|---|---:|---|---:|---:|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['delay_ms']} | {r['success']:.2f} [{r['success_low']:.2f}, "
                     f"{r['success_high']:.2f}] | {r['time_to_complete_s']:.2f} | {r['time_when_reached_s']:.2f} | "
                     f"{r['switch_jump_mean']:.3f} / "
                     f"{r['switch_jump_max']:.2f} | {r['jerk_rms']:.0f} / {r['jerk_max']:.0f} | "
                     f"{r['held_past_plan_ticks']} | {r['limited_fraction']:.2f} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    by = lambda key: {s: [(r["delay_ms"], r[key]) for r in rows if r["strategy"] == s] for s in strategies}
    bands = {s: [(r["delay_ms"], r["success_low"], r["success_high"]) for r in rows if r["strategy"] == s]
             for s in strategies}
    svg_lines(os.path.join(args.out, "delay.svg"),
              f"Switching-target reach, {args.episodes} episodes per point (same seeds)", "inference delay (ms)",
              [("time to complete (s, failures = 2.5)", by("time_to_complete_s"), None),
               ("success rate (95 % CI)", by("success"), bands),
               ("switch velocity step (rad/s)", by("switch_jump_mean"), None)])
    trajectory(args.reflex, args.out, work, 30)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
