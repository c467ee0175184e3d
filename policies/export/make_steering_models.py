"""Analytic models for the steering tests: value models for V-GPS (`[[stages]]
kind = "vgps"`) and latent-noise policies for DSRL (`[policy.latent_noise]`).

Each takes the arm's joint positions `state` [N, 3] and the scored actions and
returns `q` [N], the negative squared distance of the actions to a known target
that moves with the state, target = state + OFFSET:

- test/value_reach.onnx: action [N, 3] (one action),
      q = -sum_j (action_j - state_j - OFFSET_j)^2
- test/value_reach_segment.onnx: action [N, S, 3] (S actions, any S),
      q = -mean_s sum_j (action_sj - state_j - OFFSET_j)^2
- test/value_reach_negated.onnx: the first with q negated (prefers the farthest:
  the negative control of the steering tests).

Latent-noise policies of the trained sim flow policy's prefix features (DSRL's
`prefix_outputs`), output `noise` [n, 10, 3] = reshape(obs_features @ W):
- test/latent_features.onnx: input `obs_features` (fed from the prefix graph);
- test/latent_features_embedded.onnx: the prefix graph copied in, inputs `image`
  and the z-scored `state`: the same noise from the observation.

Latent-noise policies, input `state` [1, 3], output `noise` (before the squash):
- test/latent_fixed.onnx: [1, 6, 3], the constant LATENT_FIXED (state @ 0 added,
  so the input is read): w = action_magnitude * tanh(LATENT_FIXED) every chunk;
- test/latent_large.onnx: [1, 3] (one latent action repeated over the horizon),
  the constant [10, -10, 3] + state @ 0: w near the bound.

    .venv/bin/python policies/export/make_steering_models.py --out-dir policies/models/test
"""

import argparse
import os

import numpy as np
import onnx
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


# The fixed latent of latent_fixed.onnx, [6, 3]: sin(0.9 i) * 1.2.
LATENT_FIXED = (np.sin(0.9 * np.arange(18)) * 1.2).astype(np.float32).reshape(6, 3)


def latent_model(path, value):
    """noise = value + state @ 0, shaped like value with a batch of 1."""
    flat = value.reshape(1, -1)
    nodes = [
        helper.make_node("MatMul", ["state", "zeros"], ["read"]),
        helper.make_node("Add", ["read", "value"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["noise"]),
    ]
    inits = [const("zeros", np.zeros((3, flat.shape[1]), np.float32)), const("value", flat),
             const("shape", np.array([1, *value.shape], np.int64))]
    graph = helper.make_graph(nodes, os.path.basename(path)[:-5], [tensor("state", [1, 3])],
                              [tensor("noise", [1, *value.shape])], inits)
    save(graph, path)


def latent_from_features(out_dir, prefix_path, horizon=10, dim=3):
    """Latent policies of the trained sim flow policy's prefix features:
    - latent_features.onnx: `obs_features` [n, F] (what `prefix_outputs` feeds)
      -> noise = reshape(obs_features @ W) [n, H, D], W seeded;
    - latent_features_embedded.onnx: the same from the observation, the prefix
      graph copied in (`image`, z-scored `state` -> obs_features -> the same)."""
    prefix = onnx.load(prefix_path)
    features = [o for o in prefix.graph.output if o.name == "obs_features"][0]
    width = features.type.tensor_type.shape.dim[1].dim_value
    w = (np.random.default_rng(3).standard_normal((width, horizon * dim)) * 0.1).astype(np.float32)
    head = [helper.make_node("MatMul", ["obs_features", "latent_w"], ["latent_flat"]),
            helper.make_node("Reshape", ["latent_flat", "latent_shape"], ["noise"])]
    inits = [const("latent_w", w), const("latent_shape", np.array([-1, horizon, dim], np.int64))]
    noise = tensor("noise", ["n", horizon, dim])
    save(helper.make_graph(head, "latent_features", [tensor("obs_features", ["n", width])], [noise], inits),
         os.path.join(out_dir, "latent_features.onnx"))
    save(helper.make_graph(list(prefix.graph.node) + head, "latent_features_embedded", list(prefix.graph.input),
                           [noise], list(prefix.graph.initializer) + inits),
         os.path.join(out_dir, "latent_features_embedded.onnx"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="policies/models/test")
    parser.add_argument("--prefix", default="policies/models/sim_reach_flow_prefix.onnx",
                        help="the trained sim flow policy's prefix graph")
    args = parser.parse_args()
    latent_from_features(args.out_dir, args.prefix)
    value_model(os.path.join(args.out_dir, "value_reach.onnx"))
    value_model(os.path.join(args.out_dir, "value_reach_segment.onnx"), segment=True)
    value_model(os.path.join(args.out_dir, "value_reach_negated.onnx"), negate=True)
    latent_model(os.path.join(args.out_dir, "latent_fixed.onnx"), LATENT_FIXED)
    latent_model(os.path.join(args.out_dir, "latent_large.onnx"), np.array([10.0, -10.0, 3.0], np.float32))
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
    noise = ort.InferenceSession(os.path.join(args.out_dir, "latent_fixed.onnx")).run(
        None, {"state": state[:1]})[0]
    assert noise.shape == (1, 6, 3) and np.abs(noise[0] - LATENT_FIXED).max() < 1e-6
    print("value and latent-noise models written and checked")


if __name__ == "__main__":
    main()
