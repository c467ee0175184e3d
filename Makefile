# reflex: `make run` runs the simulated-arm demo, `make test` runs every test.
# Both install what is missing first (scripts/setup.sh).

CARGO ?= cargo
DURATION ?= 15

.PHONY: run test setup build check lint bench bench-execution bench-steering bench-openpi hil-learner demos train train-flow train-flow-rtc train-multisensor train-steering models fast-tokenizer fast-sim-policy import-lerobot clean

run: setup
	$(CARGO) build --release
	./target/release/reflex run launch/sim_arm.toml --duration $(DURATION)

test: setup
	@bash scripts/parity_venv.sh > /dev/null
	@bash scripts/openpi_venv.sh > /dev/null
	@bash scripts/mujoco_venv.sh > /dev/null
	$(CARGO) test --workspace
	# The benches are not run here, but they must compile.
	$(CARGO) check --workspace --benches

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release

check: build
	./target/release/reflex check launch/sim_arm.toml

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	$(CARGO) bench --workspace

# The actor / learner loop on the simulated arm (examples/hil_learner): reflex
# records episodes and streams transitions, a Python learner pushes better models;
# writes target/hil_learner/curve.{csv,svg} (about a minute).
hil-learner: build
	timeout 1200 .venv/bin/python examples/hil_learner/learner.py --out target/hil_learner

# Bring a LeRobot ACT or Diffusion Policy directory (config.json, model.safetensors,
# processor files): ONNX graph(s), its statistics and a launch file for ROBOT's
# sensors in OUT, checked with `reflex check`. Runs in the parity venv (torch,
# LeRobot; made on first use, outside the clone).
POLICY ?=
OUT ?= imported
ROBOT ?= launch/sim_arm.toml
import-lerobot: build
	@test -n "$(POLICY)" || { echo "usage: make import-lerobot POLICY=path/to/pretrained_model [OUT=imported] [ROBOT=launch/sim_arm.toml]"; exit 2; }
	"$$(bash scripts/parity_venv.sh)" policies/export/import_lerobot.py "$(POLICY)" --out "$(OUT)" --robot "$(ROBOT)"
	./target/release/reflex check "$(OUT)/launch.toml"

# Execution strategies under inference delay (README, Benchmarks): about 5 minutes.
bench-execution: build
	.venv/bin/python benches/execution/run.py --episodes 200

# Steering a frozen policy (README, "The measured improvement"): success rates of
# the weakened flow policy alone, with V-GPS and with DSRL, 200 recorded episodes
# per variant (about 2 minutes; the parity venv reads the datasets).
bench-steering: build
	"$$(bash scripts/parity_venv.sh)" benches/steering/run.py --episodes 200

# One inference request with three 224x224 cameras over loopback: openpi-client
# against reflex serve and against a minimal Python openpi-protocol server with the
# same ONNX model (README, "openpi interop"; about a minute).
bench-openpi: build
	.venv/bin/python benches/openpi/run.py --requests 300 --rounds 3

# Developer-run: regenerate the demo policy (scripted demonstrations -> numpy
# behaviour cloning -> ONNX) and the test fixtures. The outputs are committed.
demos: build
	./target/release/reflex demos launch/sim_arm.toml --out demos/sim_reach --episodes 1200 --steps 40 --speed 1.3

train: demos
	.venv/bin/python policies/export/train_sim_reach.py --demos demos/sim_reach --out policies/models/sim_reach.onnx --epochs 80

# The flow-matching policy of launch/sim_arm_flow.toml (about 17 minutes on one core).
train-flow: demos
	OPENBLAS_NUM_THREADS=1 .venv/bin/python policies/export/train_sim_flow.py --demos demos/sim_reach --out-dir policies/models --epochs 150 --seed 0
	.venv/bin/python policies/export/make_rtc_models.py --expert policies/models/sim_reach_flow_expert.onnx --out-dir policies/models

# The flow policy trained for training-time real-time chunking
# (launch/sim_arm_flow_rtc_trained.toml; about 17 minutes on one core).
train-flow-rtc: demos
	OPENBLAS_NUM_THREADS=1 .venv/bin/python policies/export/train_sim_flow_rtc.py --demos demos/sim_reach --out-dir policies/models --epochs 150 --seed 0

# The multisensor policy of launch/sim_arm_multisensor.toml: demonstrations with
# the camera, both microphones and the taxel pad, then numpy BC (about 4 minutes).
train-multisensor: build
	./target/release/reflex demos launch/sim_arm_multisensor.toml --out demos/sim_multisensor --episodes 1200 --steps 40 --speed 1.3
	OPENBLAS_NUM_THREADS=1 .venv/bin/python policies/export/train_sim_multisensor.py --demos demos/sim_multisensor --out policies/models/sim_multisensor.onnx --epochs 40 --seed 0

# The steering demonstration's models (launch/sim_arm_steering.toml): a flow policy
# weakened on demonstrations of which half reach for the target's mirror image,
# 2000 episodes reflex records with it, then the value function (Monte Carlo
# returns) and the latent-noise policy (CEM in noise space) trained on them
# (about 20 minutes; the last step runs in the parity venv).
train-steering: build
	./target/release/reflex demos launch/sim_arm.toml --out demos/sim_reach_mistakes --episodes 4000 --steps 40 --speed 1.3 --mistakes 0.5
	OPENBLAS_NUM_THREADS=1 .venv/bin/python policies/export/train_sim_flow.py --demos demos/sim_reach_mistakes --out-dir policies/models/steering --name sim_reach_weak --epochs 20 --seed 0
	rm -rf target/steering/rollouts
	./target/release/reflex run launch/sim_arm_steering.toml --sim-clock --seed 1 --record target/steering/rollouts --set recording.episodes=2000 --set zenoh.enabled=false --duration 20000
	OPENBLAS_NUM_THREADS=1 "$$(bash scripts/parity_venv.sh)" policies/export/train_steering.py --rollouts target/steering/rollouts --out-dir policies/models/steering

fast-tokenizer: setup
	.venv/bin/python policies/export/make_fast_tokenizer.py --out policies/models/fast

fast-sim-policy: setup
	.venv/bin/python policies/export/make_sim_fast_policy.py

models: setup
	.venv/bin/python policies/export/make_fast_tokenizer.py --dim 3 --out policies/models/test/fast_10x3
	.venv/bin/python policies/export/make_test_models.py --out-dir policies/models/test
	.venv/bin/python policies/export/make_generative_models.py --out-dir policies/models/test
	.venv/bin/python policies/export/make_prompt_tokenizer.py --out policies/models/test/prompt
	.venv/bin/python policies/export/make_reward_classifier.py --out-dir policies/models/test
	.venv/bin/python policies/export/make_rtc_models.py --expert policies/models/sim_reach_flow_expert.onnx --out-dir policies/models
	.venv/bin/python policies/export/make_steering_models.py --out-dir policies/models/test

clean:
	$(CARGO) clean
