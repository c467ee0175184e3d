#!/usr/bin/env bash
# reflex against LeRobot's own PyTorch `select_action`, on this CPU, with the same
# weights and the same observations: ACT, and Diffusion Policy with DDIM-10 and
# LeRobot's default DDPM-100. LeRobot's default model sizes (random weights from
# its config classes, policies/export/lerobot_fixture.py --size default), imported
# with policies/export/import_lerobot.py; both sides on one CPU thread (torch
# set_num_threads(1); reflex intra_threads = 1).
#
#   scripts/bench_lerobot.sh [CHUNKS]     # chunks timed per case (default 5)
#
# Per chunk: the select_action calls that sample a chunk (LeRobot) / one sampled
# chunk in `reflex infer --episode` (reflex). Per action: the other calls, which
# only hand out the next queued action (LeRobot still preprocesses the
# observation on each; reflex only when it samples). Writes target/bench-lerobot/.
set -euo pipefail
cd "$(dirname "$0")/.."
chunks=${1:-5}
py=$(bash scripts/parity_venv.sh)
out=target/bench-lerobot
mkdir -p "$out"
cargo build --release -q
export OMP_NUM_THREADS=1
printf '%-16s %-28s %-28s\n' case "LeRobot chunk p50/p99 ms" "reflex chunk p50/p99 ms"
for case in act:act:: dp_ddim:diffusion:ddim:10 dp_ddpm:diffusion:ddpm:100; do
    IFS=: read -r name kind sampler steps <<<"$case"
    dir="$out/$name"
    args=(--kind "$kind" --size default --out "$dir/pretrained_model")
    [ -n "$sampler" ] && args+=(--sampler "$sampler" --steps "$steps")
    [ -f "$dir/pretrained_model/config.json" ] || "$py" policies/export/lerobot_fixture.py "${args[@]}" >/dev/null
    [ -f "$dir/imported/launch.toml" ] ||
        "$py" policies/export/import_lerobot.py "$dir/pretrained_model" --out "$dir/imported" \
            --robot launch/sim_arm.toml >/dev/null
    per_chunk=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['n_action_steps'])" \
        "$dir/pretrained_model/config.json")
    steps_needed=$((per_chunk * (chunks + 1)))
    "$py" policies/export/lerobot_episode.py "$dir/pretrained_model" --episode "$dir/episode.npz" \
        --make-episode "$steps_needed" --seed 1 --time "$chunks" --threads 1 | tail -n 1 >"$dir/lerobot.json"
    ./target/release/reflex infer "$dir/imported/launch.toml" --episode "$dir/episode.npz" \
        --out "$dir/reflex.json" >/dev/null
    "$py" - "$dir" "$name" <<'EOF'
import json, sys
d, name = sys.argv[1], sys.argv[2]
lr = json.load(open(f"{d}/lerobot.json"))
rx = json.load(open(f"{d}/reflex.json"))
def cell(c):
    return f"{c['p50']:.3f} / {c['p99']:.3f}" if c else "-"
print(f"{name:<16} {cell(lr['chunk_ms']):<28} {cell(rx['chunk_ms']):<28}")
print(f"{'  per action':<16} {cell(lr['action_ms']):<28} {cell(rx['action_ms']):<28}")
EOF
done
