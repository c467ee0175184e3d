"""Write the tiny ONNX fixtures the Rust tests load (deterministic, a few KB each).

- chunk_state_hold.onnx: state [1,3] -> actions [1,10,3] = the state repeated (holds
  the measured position; used by launch/zenoh_arm.toml for bring-up);
- chunk_nan.onnx: image + state -> actions that are all NaN;
- chunk_wrong_input.onnx: like the demo model but its state input is `joint_state`;
- chunk_wrong_output.onnx: like the demo model but actions are [1,10,4].
"""

import argparse
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="policies/models/test")
    build(parser.parse_args().out_dir)
