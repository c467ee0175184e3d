"""Train the multisensor policy of launch/sim_arm_multisensor.toml by behaviour
cloning and export it to ONNX.

The task: two identical red targets, one on each side of the arm; only the true one
emits a tone. The camera cannot tell them apart; two microphones (a log-mel
spectrogram each) and a taxel pad on the end effector can.

Input: a directory written by `reflex demos launch/sim_arm_multisensor.toml`, one
`<input>.npy` per policy input in the order of `meta.json`'s "inputs" (`image`
[N, 3, 32, 32] in [0, 1], `state` [N, 3] rad, `sound` [N, 2, 16, 3] dB, `touch`
[N, 4, 4]) and `actions.npy` [N, H, J]: exactly the tensors the runtime feeds the
model, made by reflex itself.

Model: the MLP of train_sim_reach.py on the flattened image and the z-scored other
inputs, predicting the z-scored change of each future action from the current
state. Normalization is folded into the graph: the ONNX model takes the raw inputs
and returns absolute joint positions.

numpy only (manual backprop, Adam). Deterministic for a given --seed on a machine.

    .venv/bin/python policies/export/train_sim_multisensor.py \
        --demos demos/sim_multisensor --out policies/models/sim_multisensor.onnx
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from onnx import helper

from onnx_graph import const, save, tensor
from train_sim_reach import Mlp, action_head, fit


def load(demos):
    """Returns (names, shapes, features [N, F], the feature slice of each input, state, actions)."""
    with open(os.path.join(demos, "meta.json")) as f:
        meta = json.load(f)
    names = meta["inputs"]
    if "state" not in names or "image" not in names:
        raise SystemExit(f"{demos}: expected `image` and `state` among the inputs, found {names}")
    arrays = {name: np.load(os.path.join(demos, f"{name}.npy"), mmap_mode="r") for name in names}
    actions = np.load(os.path.join(demos, "actions.npy")).astype(np.float32)
    n = len(actions)
    for name, array in arrays.items():
        if len(array) != n:
            raise SystemExit(f"{name}.npy has {len(array)} samples, actions.npy {n}")
    widths = [int(np.prod(arrays[name].shape[1:])) for name in names]
    features = np.empty((n, sum(widths)), np.float32)
    slices, at = {}, 0
    for name, width in zip(names, widths):
        slices[name] = slice(at, at + width)
        for start in range(0, n, 4096):
            features[start:start + 4096, at:at + width] = arrays[name][start:start + 4096].reshape(-1, width)
        at += width
    if not np.isfinite(features).all() or not np.isfinite(actions).all():
        raise SystemExit("the demos contain NaN or inf")
    shapes = {name: tuple(arrays[name].shape[1:]) for name in names}
    return names, shapes, features, slices, np.array(arrays["state"], np.float32), actions, meta


def export(path, mlp, names, shapes, stats, joints, horizon, metadata):
    """The MLP with the input z-scores and the output scaling folded in."""
    d_mean, d_std = stats.pop("delta")
    nodes, flat = [], []
    for name in names:
        nodes.append(helper.make_node("Flatten", [name], [f"{name}_flat"], axis=1))
        if name in stats:
            nodes += [helper.make_node("Sub", [f"{name}_flat", f"{name}_mean"], [f"{name}_centered"]),
                      helper.make_node("Div", [f"{name}_centered", f"{name}_std"], [f"{name}_z"])]
            flat.append(f"{name}_z")
        else:
            flat.append(f"{name}_flat")
    nodes.append(helper.make_node("Concat", flat, ["features"], axis=1))
    head, initializers = action_head(mlp, "features", d_mean, d_std, horizon, joints)
    nodes += head
    for name, (mean, std) in stats.items():
        initializers += [const(f"{name}_mean", mean[None, :]), const(f"{name}_std", std[None, :])]
    graph = helper.make_graph(
        nodes, "sim_multisensor",
        [tensor(name, [1, *shapes[name]]) for name in names],
        [tensor("actions", [1, horizon, joints])],
        initializers,
    )
    save(graph, path, metadata)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", required=True, help="directory from `reflex demos`")
    parser.add_argument("--out", default="policies/models/sim_multisensor.onnx")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak Adam step size (cosine-decayed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    names, shapes, features, slices, state, actions, demo_meta = load(args.demos)
    n, horizon, joints = actions.shape
    delta = (actions - state[:, None, :]).reshape(n, -1)
    # Demos are written episode after episode: the last 10% are held-out episodes.
    split = n - max(1, n // 10)
    train, val = np.arange(split), np.arange(split, n)
    stats = {}
    for name in names:
        if name == "image":
            continue  # pixels in [0, 1] go in as they are
        block = features[:, slices[name]]
        mean, std = block[train].mean(0), block[train].std(0) + 1e-3
        features[:, slices[name]] = (block - mean) / std
        stats[name] = (mean.astype(np.float32), std.astype(np.float32))
    d_mean, d_std = delta[train].mean(0), delta[train].std(0) + 1e-6
    targets = ((delta - d_mean) / d_std).astype(np.float32)
    mlp = Mlp([features.shape[1], args.hidden, args.hidden, horizon * joints], rng)

    def predict_actions(idx):
        delta_pred = mlp.predict(features[idx]) * d_std + d_mean
        return (delta_pred.reshape(-1, horizon, joints) + state[idx, None, :]).astype(np.float32)

    def mse_rad2(idx):
        return float(np.mean((predict_actions(idx) - actions[idx]) ** 2))

    train_probe = train[rng.permutation(len(train))[:4096]]
    print(f"{n} samples ({len(train)} train, {len(val)} validation), inputs "
          f"{', '.join(f'{k} {list(shapes[k])}' for k in names)}; horizon {horizon}, joints {joints}")
    fit(mlp, features, targets, train, args, rng,
        lambda: f"train mse {mse_rad2(train_probe):.6f}  val mse {mse_rad2(val):.6f} rad^2")

    val_mse = mse_rad2(val)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"producer": "policies/export/train_sim_multisensor.py", "seed": args.seed, "horizon": horizon,
            "joints": joints, "samples": n, "epochs": args.epochs, "hidden": args.hidden,
            "val_mse_rad2": val_mse, "demos": json.dumps(demo_meta, sort_keys=True)}
    stats["delta"] = (d_mean.astype(np.float32), d_std.astype(np.float32))
    export(args.out, mlp, names, shapes, stats, joints, horizon, meta)

    # The exported graph must compute what numpy computed.
    session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    raw = {name: np.load(os.path.join(args.demos, f"{name}.npy"), mmap_mode="r") for name in names}
    worst = 0.0
    for i in val[:100]:
        out = session.run(["actions"], {name: np.array(raw[name][i:i + 1], np.float32) for name in names})[0]
        worst = max(worst, float(np.abs(out - predict_actions(np.array([i]))).max()))
    if worst > 1e-4:
        raise SystemExit(f"exported model disagrees with numpy by {worst} rad (limit 1e-4)")
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB); final val mse {val_mse:.6f} rad^2; "
          f"ONNX Runtime matches numpy to {worst:.1e} rad")


if __name__ == "__main__":
    main()
