#!/usr/bin/env bash
# Recording benchmark (issue "Human-in-the-loop collection"): the simulated arm at
# 500 Hz with two 640x480 cameras at 30 fps (GStreamer videotestsrc through OpenCV),
# run for N seconds of wall clock twice: without recording, and recording both
# cameras (h264) plus state and actions as a LeRobot dataset at 30 fps in episodes
# of 8 s, and every tick (state and command at 500 Hz) in the run log. Prints overruns and tick compute of both runs, the process CPU time (the
# difference is what recording costs: encoding, parquet), and the time to finalize
# each episode. A release build (the counting allocator also reports the tick's
# allocations after warm-up).
#
#     scripts/bench_recording.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
cargo build --release --features count-allocations
work=target/bench-recording
rm -rf "$work"
mkdir -p "$work"

camera() {
    printf '[[drivers]]\nkind = "opencv_camera"\nname = "%s"\nwidth = 640\nheight = 480\nfps = 30.0\n' "$1"
    printf 'pipeline = "videotestsrc is-live=true pattern=%s ! video/x-raw,width=640,height=480,framerate=30/1 ! videoconvert ! video/x-raw,format=BGR ! appsink"\n\n' "$2"
}
{
    sed 's|^urdf = "sim_arm.urdf"|urdf = "'"$PWD"'/launch/sim_arm.urdf"|; s|\.\./policies/models/|'"$PWD"'/policies/models/|' launch/sim_arm.toml
    echo
    camera cam1 ball
    camera cam2 smpte
    printf '[recording]\nfps = 30\nepisode_time_s = 8.0\nreset_time_s = 0.5\ncameras = ["cam1", "cam2"]\n'
} > "$work/launch.toml"

run() {
    local name=$1
    shift
    /usr/bin/time -f "%U %S" -o "$work/$name.time" \
        timeout $((seconds + 60)) target/release/reflex run "$work/launch.toml" --duration "$seconds" \
        --set control.rate_hz=500 --set zenoh.enabled=false \
        --summary-json "$work/$name.json" "$@" > "$work/$name.out" 2> "$work/$name.err" || true
}
run plain
run recording --record "$work/dataset" --log "$work/recording.log"

.venv/bin/python - "$work" "$seconds" <<'PY'
import json, sys
work, seconds = sys.argv[1], float(sys.argv[2])
print(f"| run ({seconds:.0f} s, 500 Hz, 2 x 640x480 @ 30 fps) | ticks | overruns | skipped periods | tick compute p50 / p99 / max (us) | CPU (s: user + sys) | allocations per tick |")
print("|---|---|---|---|---|---|---|")
cpu = {}
for name in ["plain", "recording"]:
    s = json.load(open(f"{work}/{name}.json"))
    user, sys_ = map(float, open(f"{work}/{name}.time").read().split()[-2:])
    cpu[name] = user + sys_
    c = s["compute"]
    a = s.get("tick_allocations") or {}
    per_tick = a["allocations"] / max(1, a["ticks"]) if a else float("nan")
    print(f"| {name} | {s['ticks']} | {s['overruns']} | {s['skipped_periods']} | {c['p50_us']:.1f} / {c['p99_us']:.1f} / {c['max_us']:.1f} | {cpu[name]:.2f} | {per_tick:.3f} |")
e = json.load(open(f"{work}/recording.json"))["episodes"]
extra = cpu["recording"] - cpu["plain"]
print()
print(f"recorded {e['saved']} episodes, {e['frames']} rows, rows lost {e['rows_lost']}, error {e['error']}")
print(f"recording cost {extra:.2f} CPU s over {seconds:.0f} s: {100 * extra / seconds / 2:.0f}% of a core per camera (encoding 2 cameras + rows)")
f = e["finalize_ms"]
if f:
    print(f"episode finalization: mean {sum(f) / len(f):.0f} ms, max {max(f):.0f} ms ({len(f)} episodes)")
PY
