"""Write the tiny ONNX fixtures the Rust tests load (deterministic, a few KB each).

All are IR version 13, opset 17, checked with onnx.checker and run once with ONNX
Runtime. The chunk fixtures take `image` float32 [1,3,32,32] (unused values: it
enters as 0 * mean(image), so the input stays live) and `state` float32 [1,3] rad,
and return `actions` float32 [1,10,3] rad:

- chunk_identity.onnx: actions[0,h,:] = state (hold the current position);
- chunk_nan.onnx: actions are all NaN;
- chunk_wrong_input.onnx: identity, but the state input is named `joint_state`;
- chunk_wrong_output.onnx: identity, but actions are [1,10,4] (state zero-padded);
- chunk_state_hold.onnx: identity with no image input at all (state -> actions;
  used by launch/zenoh_arm.toml for bring-up);
- chunk_state_offset.onnx: chunk_state_hold's signature, first joint's targets
  +0.05 (a model pushed at run time in tests/zenoh_acl.rs);
- chunk_history2.onnx: a Diffusion-Policy-style observation of the last two
  frames (LeRobot n_obs_steps = 2): `state` [1,2,3] and `image` [1,2,3,32,32], oldest
  first; actions[0,h,:] = s1 + (h + 1) * (0.5 * (s1 - s0) + 0.02) where s0, s1 are
  the two states, so every chunk shows which two states it was fed;
- chunk_prompt.onnx: `state` [1,3], `input_ids` and `attention_mask` int64 [1,16];
  actions [1,11,3] are the state plus 1e-3 times the ids followed by the mask
  (flattened, zero-padded to 33), so every chunk shows the tokens it was fed;
- chunk_gripper.onnx: a robot with a gripper: `state` [1,4] (3 joints, then the
  gripper's opening) -> actions [1,10,4] = the state with the opening 0.02 smaller
  (hold the joints, close the gripper step by step from what it measures);
- chunk_velocity.onnx: `state` [1,3] (consumed, unused) -> actions [1,10,3] =
  joint velocities (0.3, -0.2, 0.1) rad/s at every step;
- chunk_tensor.onnx: `state` [1,3], `taxels` [1,4,4] (a tensor stream) and `audio`
  [1,8,1] (an audio stream's chunk) -> actions [1,10,3] = the state plus 1e-3 times
  (sum of the taxels, sum of the audio samples, 0): every chunk shows the sensor
  samples it was fed;
- chunk_taxels.onnx: `state` [1,3] and `taxels` [1,4,4] -> actions [1,10,3] = the
  state plus 1e-3 x (sum of the taxels, their maximum, 0);
- chunk_mel.onnx: `state` [1,3] and `mel` [1,8,5] (a log-mel spectrogram, dB) ->
  actions [1,10,3] = the state plus 1e-3 x (mean of the spectrogram, its maximum, 0);
- chunk_image_mean.onnx: `image` [1,3,32,32] in [0, 1] and `state` [1,3] ->
  actions [1,10,3] = the state plus 0.1 x the image's mean brightness: every chunk
  shows which camera frame it saw (camera tests with gray frames);
- fast_prefix.onnx + fast_step.onnx (+ fast_fixture.json): a tiny autoregressive
  FAST model with a cache that emits a known token sequence (needs the [10, 3]
  tokenizer made by make_fast_tokenizer.py --dim 3, by default in <out-dir>/fast_10x3).

    .venv/bin/python policies/export/make_test_models.py --out-dir policies/models/test
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from onnx import helper

from onnx_graph import const, save, tensor

HORIZON, JOINTS = 10, 3
IMAGE = [3, 32, 32]


def chunk_model(name, state_name="state", out_joints=JOINTS, image=True, nan=False, offset=0.0):
    """A "hold the state" chunk policy and its variants, as an ONNX graph
    (`offset` is added to the first joint's targets)."""
    nodes = [helper.make_node("Unsqueeze", [state_name, "axis1"], ["row"])]  # [B,1,J]
    inits = [const("axis1", np.array([1], np.int64))]
    row = "row"
    if out_joints != JOINTS:
        nodes.append(helper.make_node("Pad", ["row", "pads"], ["row_padded"]))
        inits.append(const("pads", np.array([0, 0, 0, 0, 0, out_joints - JOINTS], np.int64)))
        row = "row_padded"
    # Expanding by [1,H,1] keeps whatever batch size came in.
    nodes.append(helper.make_node("Expand", [row, "repeat"], ["chunk"]))
    inits.append(const("repeat", np.array([1, HORIZON, 1], np.int64)))
    terms = ["chunk"]
    if image:
        # Per-sample mean as [B,1,1], times zero: the image is consumed, never changes the result.
        nodes += [
            helper.make_node("ReduceMean", ["image"], ["image_mean4"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Squeeze", ["image_mean4", "axis3"], ["image_mean"]),
            helper.make_node("Mul", ["image_mean", "zero"], ["image_term"]),
        ]
        inits += [const("axis3", np.array([3], np.int64)), const("zero", np.array(0.0, np.float32))]
        terms.append("image_term")
    if offset:
        shift = np.zeros((1, 1, out_joints), np.float32)
        shift[0, 0, 0] = offset
        inits.append(const("offset", shift))
        terms.append("offset")
    if nan:
        # A NaN constant, not 0/0 at run time: no optimizer can fold it away.
        inits.append(const("nan", np.array(np.nan, np.float32)))
        terms.append("nan")
    total = terms[0]
    for k, term in enumerate(terms[1:]):
        out = "actions" if k == len(terms) - 2 else f"sum{k}"
        nodes.append(helper.make_node("Add", [total, term], [out]))
        total = out
    if total != "actions":
        nodes.append(helper.make_node("Identity", [total], ["actions"]))
    inputs = ([tensor("image", [1, *IMAGE])] if image else []) + [tensor(state_name, [1, JOINTS])]
    graph = helper.make_graph(nodes, name, inputs, [tensor("actions", [1, HORIZON, out_joints])], inits)
    return graph, (out_joints, nan, offset)


HISTORY_GAIN, HISTORY_DRIFT = 0.5, 0.02


def history_model():
    """chunk_history2.onnx: actions from the last two joint states (and both images)."""
    nodes = [
        helper.make_node("Gather", ["state", "idx1"], ["s1"], axis=1),  # [1,3]
        helper.make_node("Gather", ["state", "idx0"], ["s0"], axis=1),
        helper.make_node("Sub", ["s1", "s0"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["gd"]),
        helper.make_node("Add", ["gd", "drift"], ["v"]),
        helper.make_node("Unsqueeze", ["v", "axis1"], ["v3"]),  # [1,1,3]
        helper.make_node("Mul", ["v3", "steps"], ["moves"]),  # [1,H,3]
        helper.make_node("Unsqueeze", ["s1", "axis1"], ["s13"]),
        helper.make_node("Add", ["s13", "moves"], ["chunk"]),
        # Both images are consumed (times zero): the input stays live.
        helper.make_node("ReduceMean", ["image"], ["image_mean"], axes=[1, 2, 3, 4], keepdims=0),
        helper.make_node("Mul", ["image_mean", "zero"], ["image_term"]),
        helper.make_node("Add", ["chunk", "image_term"], ["actions"]),
    ]
    inits = [
        const("idx0", np.array(0, np.int64)),
        const("idx1", np.array(1, np.int64)),
        const("gain", np.array(HISTORY_GAIN, np.float32)),
        const("drift", np.array(HISTORY_DRIFT, np.float32)),
        const("axis1", np.array([1], np.int64)),
        const("steps", np.arange(1, HORIZON + 1, dtype=np.float32).reshape(1, HORIZON, 1)),
        const("zero", np.array(0.0, np.float32)),
    ]
    inputs = [tensor("image", [1, 2, *IMAGE]), tensor("state", [1, 2, JOINTS])]
    return helper.make_graph(nodes, "chunk_history2", inputs, [tensor("actions", [1, HORIZON, JOINTS])], inits)


def history_expected(state):
    """What chunk_history2 returns for `state` [1,2,3]."""
    s0, s1 = state[:, 0, :], state[:, 1, :]
    v = HISTORY_GAIN * (s1 - s0) + HISTORY_DRIFT
    return s1[:, None, :] + np.arange(1, HORIZON + 1, dtype=np.float32)[None, :, None] * v[:, None, :]


def build_history(out_dir: str):
    path = os.path.join(out_dir, "chunk_history2.onnx")
    save(history_model(), path, {"producer": "policies/export/make_test_models.py", "history": 2})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    state = rng.uniform(-2, 2, (1, 2, JOINTS)).astype(np.float32)
    image = rng.random((1, 2, *IMAGE), np.float32)
    result = session.run(["actions"], {"state": state, "image": image})[0]
    if not np.allclose(result, history_expected(state), atol=1e-6):
        raise SystemExit(f"chunk_history2.onnx: got {result}, expected {history_expected(state)}")
    print(f"wrote {path} ({os.path.getsize(path)} B)")


PROMPT_LENGTH, PROMPT_HORIZON, PROMPT_SCALE = 16, 11, 1e-3


def prompt_model():
    """chunk_prompt.onnx: actions that carry the prompt tensors they were fed."""
    from onnx import TensorProto
    nodes = [
        helper.make_node("Concat", ["input_ids", "attention_mask"], ["tokens"], axis=1),  # [1,32]
        helper.make_node("Cast", ["tokens"], ["tokens_f"], to=TensorProto.FLOAT),
        helper.make_node("Pad", ["tokens_f", "pads"], ["padded"]),  # [1,33]
        helper.make_node("Reshape", ["padded", "chunk_shape"], ["grid"]),  # [1,11,3]
        helper.make_node("Mul", ["grid", "scale"], ["offsets"]),
        helper.make_node("Unsqueeze", ["state", "axis1"], ["row"]),
        helper.make_node("Add", ["row", "offsets"], ["actions"]),
    ]
    inits = [
        const("pads", np.array([0, 0, 0, PROMPT_HORIZON * JOINTS - 2 * PROMPT_LENGTH], np.int64)),
        const("chunk_shape", np.array([1, PROMPT_HORIZON, JOINTS], np.int64)),
        const("scale", np.array(PROMPT_SCALE, np.float32)),
        const("axis1", np.array([1], np.int64)),
    ]
    inputs = [
        tensor("state", [1, JOINTS]),
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, PROMPT_LENGTH]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, PROMPT_LENGTH]),
    ]
    outputs = [tensor("actions", [1, PROMPT_HORIZON, JOINTS])]
    return helper.make_graph(nodes, "chunk_prompt", inputs, outputs, inits)


def build_prompt(out_dir: str):
    path = os.path.join(out_dir, "chunk_prompt.onnx")
    save(prompt_model(), path, {"producer": "policies/export/make_test_models.py"})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    state = np.array([[0.1, -0.2, 0.3]], np.float32)
    ids = np.arange(2, 2 + PROMPT_LENGTH, dtype=np.int64).reshape(1, -1)
    mask = (np.arange(PROMPT_LENGTH) < 5).astype(np.int64).reshape(1, -1)
    result = session.run(["actions"], {"state": state, "input_ids": ids, "attention_mask": mask})[0]
    flat = np.zeros(PROMPT_HORIZON * JOINTS, np.float32)
    flat[: 2 * PROMPT_LENGTH] = np.concatenate([ids[0], mask[0]]).astype(np.float32)
    want = state[:, None, :] + PROMPT_SCALE * flat.reshape(1, PROMPT_HORIZON, JOINTS)
    if not np.allclose(result, want, atol=1e-6):
        raise SystemExit(f"chunk_prompt.onnx: got {result}, expected {want}")
    print(f"wrote {path} ({os.path.getsize(path)} B)")


GRIPPER_STEP = 0.02
VELOCITY = [0.3, -0.2, 0.1]
SENSOR_SCALE = 1e-3
BRIGHTNESS_SCALE = 0.1


def targets_models():
    """chunk_gripper.onnx and chunk_velocity.onnx (see the module docstring)."""
    axis1 = const("axis1", np.array([1], np.int64))
    repeat = const("repeat", np.array([1, HORIZON, 1], np.int64))
    gripper = helper.make_graph(
        [
            helper.make_node("Add", ["state", "step"], ["closer"]),
            helper.make_node("Unsqueeze", ["closer", "axis1"], ["row"]),
            helper.make_node("Expand", ["row", "repeat"], ["actions"]),
        ],
        "chunk_gripper",
        [tensor("state", [1, JOINTS + 1])],
        [tensor("actions", [1, HORIZON, JOINTS + 1])],
        [const("step", np.array([[0, 0, 0, -GRIPPER_STEP]], np.float32)), axis1, repeat],
    )
    velocity = helper.make_graph(
        [
            helper.make_node("Mul", ["state", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "velocity"], ["row2"]),
            helper.make_node("Unsqueeze", ["row2", "axis1"], ["row"]),
            helper.make_node("Expand", ["row", "repeat"], ["actions"]),
        ],
        "chunk_velocity",
        [tensor("state", [1, JOINTS])],
        [tensor("actions", [1, HORIZON, JOINTS])],
        [const("zero", np.array(0.0, np.float32)),
         const("velocity", np.array([VELOCITY], np.float32)), axis1, repeat],
    )
    sensors = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["taxels", "all_axes"], ["taxel_sum"], keepdims=0),
            helper.make_node("ReduceSum", ["audio", "all_axes"], ["audio_sum"], keepdims=0),
            helper.make_node("Concat", ["taxel_sum1", "audio_sum1", "zero1"], ["sums"], axis=0),
            helper.make_node("Mul", ["sums", "scale"], ["offset"]),
            helper.make_node("Add", ["state", "offset"], ["row2"]),
            helper.make_node("Unsqueeze", ["row2", "axis1"], ["row"]),
            helper.make_node("Expand", ["row", "repeat"], ["actions"]),
        ],
        "chunk_tensor",
        [tensor("state", [1, JOINTS]), tensor("taxels", [1, 4, 4]), tensor("audio", [1, 8, 1])],
        [tensor("actions", [1, HORIZON, JOINTS])],
        [const("all_axes", np.array([0, 1, 2], np.int64)), const("scale", np.array(SENSOR_SCALE, np.float32)),
         const("zero1", np.zeros(1, np.float32)), axis1, repeat],
    )
    # ReduceSum with keepdims=0 gives scalars; reshape them to [1] for the Concat.
    sensors.node.insert(2, helper.make_node("Reshape", ["taxel_sum", "one"], ["taxel_sum1"]))
    sensors.node.insert(3, helper.make_node("Reshape", ["audio_sum", "one"], ["audio_sum1"]))
    sensors.initializer.append(const("one", np.array([1], np.int64)))
    image_mean = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean4"], axes=[1, 2, 3], keepdims=0),  # [1]
            helper.make_node("Mul", ["mean4", "brightness_scale"], ["offset"]),
            helper.make_node("Unsqueeze", ["offset", "axis1"], ["offset2"]),  # [1,1]
            helper.make_node("Add", ["state", "offset2"], ["row2"]),
            helper.make_node("Unsqueeze", ["row2", "axis1"], ["row"]),
            helper.make_node("Expand", ["row", "repeat"], ["actions"]),
        ],
        "chunk_image_mean",
        [tensor("image", [1, *IMAGE]), tensor("state", [1, JOINTS])],
        [tensor("actions", [1, HORIZON, JOINTS])],
        [const("brightness_scale", np.array(BRIGHTNESS_SCALE, np.float32)), axis1, repeat],
    )
    mel = stats_graph("chunk_mel", "mel", [1, 8, 5])
    taxels = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["taxels", "all_axes"], ["sum0"], keepdims=0),
            helper.make_node("ReduceMax", ["taxels"], ["max0"], axes=[0, 1, 2], keepdims=0),
            helper.make_node("Reshape", ["sum0", "one"], ["sum1"]),
            helper.make_node("Reshape", ["max0", "one"], ["max1"]),
            helper.make_node("Concat", ["sum1", "max1", "zero1"], ["stats"], axis=0),
            helper.make_node("Mul", ["stats", "scale"], ["offset"]),
            helper.make_node("Add", ["state", "offset"], ["row2"]),
            helper.make_node("Unsqueeze", ["row2", "axis1"], ["row"]),
            helper.make_node("Expand", ["row", "repeat"], ["actions"]),
        ],
        "chunk_taxels",
        [tensor("state", [1, JOINTS]), tensor("taxels", [1, 4, 4])],
        [tensor("actions", [1, HORIZON, JOINTS])],
        [const("all_axes", np.array([0, 1, 2], np.int64)), const("one", np.array([1], np.int64)),
         const("zero1", np.zeros(1, np.float32)), const("scale", np.array(SENSOR_SCALE, np.float32)),
         axis1, repeat],
    )
    return {"chunk_gripper.onnx": gripper, "chunk_velocity.onnx": velocity, "chunk_tensor.onnx": sensors,
            "chunk_image_mean.onnx": image_mean, "chunk_taxels.onnx": taxels, "chunk_mel.onnx": mel}


def stats_graph(name, input_name, shape):
    """state [1,3] and `input_name` -> actions = state + 1e-3 x (mean, max, 0) of the input."""
    axes = list(range(len(shape)))
    return helper.make_graph(
        [
            helper.make_node("ReduceMean", [input_name], ["mean0"], axes=axes, keepdims=0),
            helper.make_node("ReduceMax", [input_name], ["max0"], axes=axes, keepdims=0),
            helper.make_node("Reshape", ["mean0", "one"], ["mean1"]),
            helper.make_node("Reshape", ["max0", "one"], ["max1"]),
            helper.make_node("Concat", ["mean1", "max1", "zero1"], ["stats"], axis=0),
            helper.make_node("Mul", ["stats", "scale"], ["offset"]),
            helper.make_node("Add", ["state", "offset"], ["row2"]),
            helper.make_node("Unsqueeze", ["row2", "axis1"], ["row"]),
            helper.make_node("Expand", ["row", "repeat"], ["actions"]),
        ],
        name,
        [tensor("state", [1, JOINTS]), tensor(input_name, shape)],
        [tensor("actions", [1, HORIZON, JOINTS])],
        [const("one", np.array([1], np.int64)), const("zero1", np.zeros(1, np.float32)),
         const("scale", np.array(SENSOR_SCALE, np.float32)), const("axis1", np.array([1], np.int64)),
         const("repeat", np.array([1, HORIZON, 1], np.int64))],
    )


def build_targets(out_dir: str):
    state = np.array([[0.1, -0.2, 0.3, 0.08]], np.float32)
    for name, graph in targets_models().items():
        path = os.path.join(out_dir, name)
        save(graph, path, {"producer": "policies/export/make_test_models.py"})
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        if name == "chunk_gripper.onnx":
            want = np.repeat((state + [[0, 0, 0, -GRIPPER_STEP]])[:, None, :], HORIZON, axis=1)
            result = session.run(["actions"], {"state": state})[0]
        elif name == "chunk_taxels.onnx":
            taxels = np.arange(16, dtype=np.float32).reshape(1, 4, 4) - 3
            offset = SENSOR_SCALE * np.array([taxels.sum(), taxels.max(), 0], np.float32)
            want = np.repeat((state[:, :JOINTS] + offset)[:, None, :], HORIZON, axis=1)
            result = session.run(["actions"], {"state": state[:, :JOINTS], "taxels": taxels})[0]
        elif name == "chunk_mel.onnx":
            mel = np.linspace(-80, -3, 40, dtype=np.float32).reshape(1, 8, 5)
            offset = SENSOR_SCALE * np.array([mel.mean(), mel.max(), 0], np.float32)
            want = np.repeat((state[:, :JOINTS] + offset)[:, None, :], HORIZON, axis=1)
            result = session.run(["actions"], {"state": state[:, :JOINTS], "mel": mel})[0]
        elif name == "chunk_image_mean.onnx":
            image = np.full((1, *IMAGE), 0.25, np.float32)
            want = np.repeat((state[:, :JOINTS] + BRIGHTNESS_SCALE * 0.25)[:, None, :], HORIZON, axis=1)
            result = session.run(["actions"], {"state": state[:, :JOINTS], "image": image})[0]
        elif name == "chunk_tensor.onnx":
            taxels = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
            audio = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8, 1) + 0.5
            offset = SENSOR_SCALE * np.array([taxels.sum(), audio.sum(), 0], np.float32)
            want = np.repeat((state[:, :JOINTS] + offset)[:, None, :], HORIZON, axis=1)
            result = session.run(["actions"], {"state": state[:, :JOINTS], "taxels": taxels, "audio": audio})[0]
        else:
            want = np.repeat(np.array([[VELOCITY]], np.float32), HORIZON, axis=1)
            result = session.run(["actions"], {"state": state[:, :JOINTS]})[0]
        if not np.allclose(result, want, atol=1e-7):
            raise SystemExit(f"{name}: got {result}, expected {want}")
        print(f"wrote {path} ({os.path.getsize(path)} B)")


def expected_actions(state, out_joints, nan, offset):
    """What a chunk fixture must return for `state` [B,J] (numpy, float32)."""
    padded = np.zeros((len(state), out_joints), np.float32)
    padded[:, :JOINTS] = state
    padded[:, 0] += np.float32(offset)
    actions = np.repeat(padded[:, None, :], HORIZON, axis=1)
    return np.full_like(actions, np.nan) if nan else actions


def build(out_dir: str):
    models = {
        "chunk_identity.onnx": chunk_model("chunk_identity"),
        "chunk_nan.onnx": chunk_model("chunk_nan", nan=True),
        "chunk_wrong_input.onnx": chunk_model("chunk_wrong_input", state_name="joint_state"),
        "chunk_wrong_output.onnx": chunk_model("chunk_wrong_output", out_joints=JOINTS + 1),
        "chunk_state_hold.onnx": chunk_model("chunk_state_hold", image=False),
        # The same signature as chunk_state_hold, other targets: a model pushed at run time.
        "chunk_state_offset.onnx": chunk_model("chunk_state_offset", image=False, offset=0.05),
    }
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (graph, expect) in models.items():
        path = os.path.join(out_dir, name)
        save(graph, path, {"producer": "policies/export/make_test_models.py",
                           "horizon": HORIZON, "joints": expect[0]})
        # Prove it loads, and that it computes what it claims.
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        state = rng.uniform(-2, 2, (1, JOINTS)).astype(np.float32)
        feeds = {i.name: (state if i.name.endswith("state") else rng.random((1, *IMAGE), np.float32))
                 for i in session.get_inputs()}
        result = session.run(["actions"], feeds)[0]
        want = expected_actions(state, *expect)
        if result.shape != want.shape or not np.allclose(result, want, atol=1e-6, equal_nan=True):
            raise SystemExit(f"{name}: got {result} for state {state}, expected {want}")
        if expect[1] and not np.isnan(result).all():
            raise SystemExit(f"{name}: ONNX Runtime did not output NaN everywhere")
        ports = [f"{i.name} {i.type} {i.shape}" for i in session.get_inputs()]
        out = session.get_outputs()[0]
        print(f"wrote {path} ({os.path.getsize(path)} B): {', '.join(ports)} -> {out.name} {out.type} {out.shape}"
              f"{'  (all NaN)' if expect[1] else ''}")


def fast_fixture(out_dir: str, tokenizer_dir: str):
    """A tiny autoregressive FAST "VLA" for tests: the prefix graph starts a position
    counter cache, each decoder step advances it and emits the next token of a fixed
    FAST sequence (the tokens of a constant chunk at GOAL, quantile-normalized over
    QUANTILES), then the end token. Real cache plumbing, deterministic output."""
    from fast_reference import Fast

    fast = Fast.load(tokenizer_dir)
    low, high = QUANTILES
    normalized = (np.array(GOAL) - low) / (high - low) * 2 - 1
    ids = fast.encode(np.tile(normalized, (fast.horizon, 1)))
    vocab = fast.tokenizer.get_vocab_size() + 1
    end = vocab - 1
    table = np.full((len(ids) + 1, vocab), -10.0, np.float32)
    for row, token in enumerate([*ids, end]):
        table[row, token] = 10.0
    prefix = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["state"], ["state_sum"], keepdims=1),
            helper.make_node("Mul", ["state_sum", "zero"], ["start"]),
            helper.make_node("Identity", ["start"], ["present.pos"]),
            helper.make_node("Gather", ["table", "first"], ["logits"], axis=0),
        ],
        "fast_prefix",
        [tensor("state", [1, JOINTS])],
        [tensor("logits", [1, vocab]), tensor("present.pos", [1, 1])],
        [const("zero", np.zeros((1, 1), np.float32)), const("table", table), const("first", np.array([0], np.int64))],
    )
    step = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["token_f"], to=1),
            helper.make_node("Mul", ["token_f", "zero"], ["token_zero"]),
            helper.make_node("Add", ["past.pos", "one"], ["next_pos"]),
            helper.make_node("Add", ["next_pos", "token_zero"], ["present.pos"]),
            helper.make_node("Reshape", ["present.pos", "flat"], ["pos_flat"]),
            helper.make_node("Cast", ["pos_flat"], ["index"], to=7),
            helper.make_node("Gather", ["table", "index"], ["logits"], axis=0),
        ],
        "fast_step",
        [helper.make_tensor_value_info("input_ids", 7, [1, 1]), tensor("past.pos", [1, 1])],
        [tensor("logits", [1, vocab]), tensor("present.pos", [1, 1])],
        [const("zero", np.zeros((1, 1), np.float32)), const("one", np.ones((1, 1), np.float32)),
         const("flat", np.array([1], np.int64)), const("table", table)],
    )
    for name, graph in [("fast_prefix.onnx", prefix), ("fast_step.onnx", step)]:
        save(graph, os.path.join(out_dir, name), {"producer": "policies/export/make_test_models.py"})
    # Replay the decoding loop with onnxruntime to prove the graphs emit the sequence.
    pre = ort.InferenceSession(os.path.join(out_dir, "fast_prefix.onnx"), providers=["CPUExecutionProvider"])
    stp = ort.InferenceSession(os.path.join(out_dir, "fast_step.onnx"), providers=["CPUExecutionProvider"])
    logits, pos = pre.run(None, {"state": np.zeros((1, JOINTS), np.float32)})
    emitted = []
    while (token := int(logits.argmax())) != end and len(emitted) < 256:
        emitted.append(token)
        logits, pos = stp.run(None, {"input_ids": np.array([[token]], np.int64), "past.pos": pos})
    assert emitted == ids, (emitted, ids)
    meta = {"ids": ids, "end_token": end, "goal": GOAL, "q01": [low] * JOINTS, "q99": [high] * JOINTS}
    with open(os.path.join(out_dir, "fast_fixture.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"wrote fast_prefix.onnx + fast_step.onnx: {len(ids)} tokens then end token {end}")


GOAL = [0.4, -0.6, 0.9]
QUANTILES = (-2.8, 2.8)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="policies/models/test")
    parser.add_argument("--fast-tokenizer", help="[10, 3] FAST tokenizer directory (default: <out-dir>/fast_10x3)")
    parser.add_argument("--skip-fast", action="store_true", help="write only the chunk fixtures")
    args = parser.parse_args()
    build(args.out_dir)
    build_history(args.out_dir)
    build_prompt(args.out_dir)
    build_targets(args.out_dir)
    if not args.skip_fast:
        fast_fixture(args.out_dir, args.fast_tokenizer or os.path.join(args.out_dir, "fast_10x3"))
