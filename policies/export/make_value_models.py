"""Analytic value models for the V-GPS stage tests (`[[stages]] kind = "vgps"`).

Each takes the arm's joint positions `state` [N, 3] and the scored actions and
returns `q` [N], the negative squared distance of the actions to a known target
that moves with the state, target = state + OFFSET:

- test/value_reach.onnx: action [N, 3] (one action),
      q = -sum_j (action_j - state_j - OFFSET_j)^2
- test/value_reach_segment.onnx: action [N, S, 3] (S actions, any S),
      q = -mean_s sum_j (action_sj - state_j - OFFSET_j)^2
- test/value_reach_negated.onnx: the first with q negated (prefers the farthest:
  the negative control of the steering tests).

    .venv/bin/python policies/export/make_value_models.py --out-dir policies/models/test
"""

import argparse
import os

import numpy as np
from onnx import helper

from onnx_graph import const, save, tensor

OFFSET = np.array([0.2, -0.1, 0.15], np.float32)


def value_model(path, segment=False, negate=False):
    action_shape = ["n", "s", 3] if segment else ["n", 3]
    nodes = []
    target = "target"
    nodes.append(helper.make_node("Add", ["state", "offset"], ["target"]))
    if segment:
        nodes.append(helper.make_node("Unsqueeze", ["target", "axis1"], ["target_row"]))
        target = "target_row"
    nodes += [
        helper.make_node("Sub", ["action", target], ["gap"]),
        helper.make_node("Mul", ["gap", "gap"], ["gap2"]),
        helper.make_node("ReduceSum", ["gap2", "last_axis"], ["dist2"], keepdims=0),
    ]
    if segment:
        nodes.append(helper.make_node("ReduceMean", ["dist2"], ["mean_dist2"], axes=[1], keepdims=0))
        dist = "mean_dist2"
    else:
        dist = "dist2"
    nodes.append(helper.make_node("Identity" if negate else "Neg", [dist], ["q"]))
    inits = [const("offset", OFFSET), const("last_axis", np.array([-1], np.int64)),
             const("axis1", np.array([1], np.int64))]
    if not segment:
        inits = inits[:2]
    graph = helper.make_graph(nodes, os.path.basename(path)[:-5],
                              [tensor("state", ["n", 3]), tensor("action", action_shape)],
                              [tensor("q", ["n"])], inits)
    save(graph, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="policies/models/test")
    args = parser.parse_args()
    value_model(os.path.join(args.out_dir, "value_reach.onnx"))
    value_model(os.path.join(args.out_dir, "value_reach_segment.onnx"), segment=True)
    value_model(os.path.join(args.out_dir, "value_reach_negated.onnx"), negate=True)
    # Check against numpy.
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    state = rng.normal(size=(5, 3)).astype(np.float32)
    action = rng.normal(size=(5, 3)).astype(np.float32)
    q = ort.InferenceSession(os.path.join(args.out_dir, "value_reach.onnx")).run(
        None, {"state": state, "action": action})[0]
    want = -((action - state - OFFSET) ** 2).sum(-1)
    assert np.abs(q - want).max() < 1e-5, (q, want)
    seg = rng.normal(size=(5, 4, 3)).astype(np.float32)
    q = ort.InferenceSession(os.path.join(args.out_dir, "value_reach_segment.onnx")).run(
        None, {"state": state, "action": seg})[0]
    want = -((seg - (state + OFFSET)[:, None]) ** 2).sum(-1).mean(-1)
    assert np.abs(q - want).max() < 1e-5, (q, want)
    print("value models written and checked")


if __name__ == "__main__":
    main()
