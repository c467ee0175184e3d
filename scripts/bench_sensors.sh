#!/usr/bin/env bash
# Sensor load benchmark (issue "Sensors"): the simulated arm at 500 Hz with three
# 640x480 cameras at 30 fps (GStreamer videotestsrc through OpenCV), a 16x16 taxel
# array at 100 Hz over zenoh (published by a Python node) and 16 kHz audio as a
# log-mel spectrogram, for 10 s of wall clock. Prints the tick's compute time and
# jitter, the allocations of the ticks after warm-up (a release build with the
# counting allocator, `--features count-allocations`) and, per stream, how old the
# samples fed to the policy were (capture to observation), their skew from the
# joint state and what the source counted.
#
#     scripts/bench_sensors.sh [seconds] [reflex run options, e.g. --set control.realtime.fifo_priority=80]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
cargo build --release --features count-allocations
work=target/bench-sensors
mkdir -p "$work"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# 16 kHz audio: a chirp, long enough for the run.
.venv/bin/python - "$work/audio.wav" "$seconds" <<'PY'
import sys, wave, numpy as np
sr, seconds = 16000, float(sys.argv[2]) + 5
t = np.arange(int(sr * seconds)) / sr
y = (0.4 * np.sin(2 * np.pi * (200 + 50 * t) * t) * 32767).astype("<i2")
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(sr); w.writeframes(y.tobytes())
PY

camera() {
    printf '[[drivers]]\nkind = "opencv_camera"\nname = "%s"\nwidth = 640\nheight = 480\nfps = 30.0\n' "$1"
    printf 'pipeline = "videotestsrc is-live=true pattern=%s ! video/x-raw,width=640,height=480,framerate=30/1 ! videoconvert ! video/x-raw,format=BGR ! appsink"\n\n' "$2"
}
{
    sed 's|^urdf = "sim_arm.urdf"|urdf = "'"$PWD"'/launch/sim_arm.urdf"|; s|\.\./policies/models/|'"$PWD"'/policies/models/|' launch/sim_arm.toml
    echo
    camera cam1 ball
    camera cam2 smpte
    camera cam3 snow
    printf '[[drivers]]\nkind = "zenoh_stream"\nname = "taxels"\nstream = "tensor"\nshape = [16, 16]\nrate_hz = 100.0\n\n'
    printf '[[drivers]]\nkind = "audio"\nname = "mic"\nfile = "%s"\nwindow_ms = 1000.0\nhop_ms = 20.0\nfeatures = "log_mel"\n\n' "$PWD/$work/audio.wav"
    printf '[drivers.mel]\nn_fft = 400\nhop_length = 160\nn_mels = 64\n'
} > "$work/launch.toml"

# The taxel node: 100 frames a second, RFXT messages.
.venv/bin/python - "$port" "$seconds" <<'PY' &
import struct, sys, time, numpy as np, zenoh
port, seconds = sys.argv[1], float(sys.argv[2]) + 4
conf = zenoh.Config()
conf.insert_json5("mode", '"peer"')
conf.insert_json5("connect/endpoints", f'["tcp/127.0.0.1:{port}"]')
conf.insert_json5("scouting/multicast/enabled", "false")
time.sleep(1.0)
with zenoh.open(conf) as session:
    pub = session.declare_publisher("reflex/sim_arm/taxels")
    start, seq = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        seq += 1
        values = np.random.default_rng(seq).random((16, 16), dtype=np.float32)
        pub.put(struct.pack("<4sHHQQQQ", b"RFXT", 1, 2, seq, 1, time.monotonic_ns(), time.time_ns()) + struct.pack("<2I", 16, 16) + values.tobytes())
        time.sleep(max(0.0, start + seq / 100 - time.monotonic()))
PY
node=$!
timeout $((seconds + 60)) target/release/reflex run "$work/launch.toml" --duration "$seconds" \
    --set control.rate_hz=500 --set "zenoh.listen=[\"tcp/127.0.0.1:$port\"]" \
    --summary-json "$work/summary.json" "$@" > "$work/stdout.txt" 2> "$work/stderr.txt" || true
wait $node || true
.venv/bin/python - "$work/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
c, j = s["compute"], s["jitter"]
print(f"ticks {s['ticks']} at 500 Hz: tick compute p50 {c['p50_us']:.1f} us, p99 {c['p99_us']:.1f} us, max {c['max_us']:.1f} us; period jitter p99 {j['p99_us']:.1f} us")
a = s.get("tick_allocations")
if a:
    print(f"allocations: {a['allocations']} in {a['ticks']} ticks after warm-up ({a['allocations'] / max(1, a['ticks']):.3f} per tick)")
print("| stream | samples | fed age p50 / p99 (ms) | skew from the state p50 / p99 (ms) | source |")
print("|---|---|---|---|---|")
for st in s["streams"]:
    a, k = st["age_ms"], st["skew_ms"]
    src = ", ".join(f"{v} {n}" for n, v in st["source"].items() if v) or "-"
    print(f"| {st['name']} | {st['samples']} | {a['p50']:.1f} / {a['p99']:.1f} | {k['p50']:.1f} / {k['p99']:.1f} | {src} |")
PY
grep -E "reflex: camera" "$work/stderr.txt" || true
