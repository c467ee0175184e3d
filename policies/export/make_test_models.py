"""Write the tiny ONNX fixtures the Rust tests load (deterministic, a few KB each).

- chunk_state_hold.onnx: state [1,3] -> actions [1,10,3] = the state repeated (holds
  the measured position; used by launch/zenoh_arm.toml for bring-up);
- chunk_nan.onnx: image + state -> actions that are all NaN;
- chunk_wrong_input.onnx: like the demo model but its state input is `joint_state`;
- chunk_wrong_output.onnx: like the demo model but actions are [1,10,4];
- fast_prefix.onnx + fast_step.onnx (+ fast_fixture.json): a tiny autoregressive
  FAST model with a cache that emits a known token sequence (needs the [10, 3]
  tokenizer in fast_10x3/, made by make_fast_tokenizer.py --dim 3).
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from onnx import helper

from onnx_graph import const, save, tensor

HORIZON, JOINTS = 10, 3


def hold(state_name: str, out_joints: int = JOINTS, extra_inputs=(), add_nan: bool = False):
    """actions = the state repeated over the horizon; the state is zero-padded to
    `out_joints`, NaN is added on request, extra inputs are declared but unused."""
    nodes, inits, row_input = [], [], state_name
    if out_joints != JOINTS:
        nodes.append(helper.make_node("Pad", [state_name, "pads"], ["padded"]))
        inits.append(const("pads", np.array([0, 0, 0, out_joints - JOINTS], np.int64)))
        row_input = "padded"
    nodes += [
        helper.make_node("Reshape", [row_input, "row_shape"], ["row"]),
        helper.make_node("Expand", ["row", "chunk_shape"], ["held"]),
    ]
    inits += [
        const("row_shape", np.array([1, 1, out_joints], np.int64)),
        const("chunk_shape", np.array([1, HORIZON, out_joints], np.int64)),
    ]
    if add_nan:
        nodes.append(helper.make_node("Add", ["held", "nan"], ["actions"]))
        inits.append(const("nan", np.array(np.nan, np.float32)))
    else:
        nodes.append(helper.make_node("Identity", ["held"], ["actions"]))
    inputs = [*extra_inputs, tensor(state_name, [1, JOINTS])]
    return nodes, inits, inputs, out_joints


def build(out_dir: str):
    image = tensor("image", [1, 3, 32, 32])
    models = {
        "chunk_state_hold.onnx": hold("state"),
        "chunk_nan.onnx": hold("state", extra_inputs=[image], add_nan=True),
        "chunk_wrong_input.onnx": hold("joint_state", extra_inputs=[image]),
        "chunk_wrong_output.onnx": hold("state", out_joints=JOINTS + 1, extra_inputs=[image]),
    }
    os.makedirs(out_dir, exist_ok=True)
    for name, (nodes, inits, inputs, joints) in models.items():
        graph = helper.make_graph(
            nodes, name.removesuffix(".onnx"), inputs, [tensor("actions", [1, HORIZON, joints])], inits
        )
        path = os.path.join(out_dir, name)
        save(graph, path, {"producer": "policies/export/make_test_models.py"})
        # Prove it loads and runs.
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feeds = {i.name: np.full(i.shape, 0.25, np.float32) for i in session.get_inputs()}
        result = session.run(None, feeds)[0]
        print(f"wrote {path}: inputs {[i.name for i in session.get_inputs()]} -> actions {list(result.shape)}"
              f"{' (NaN)' if np.isnan(result).all() else ''}")


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
    args = parser.parse_args()
    build(args.out_dir)
    fast_fixture(args.out_dir, os.path.join(args.out_dir, "fast_10x3"))
