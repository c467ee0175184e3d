"""Train the simulated-arm reaching policy by behaviour cloning and export it to ONNX.

Input: a directory written by `reflex demos` (`image.npy` [N, 3, 32, 32] in [0, 1],
`state.npy` [N, J] rad, `actions.npy` [N, H, J] absolute joint targets, `meta.json`),
i.e. the exact tensors the runtime feeds the model, rendered and preprocessed by
reflex itself.

Model: an MLP (Dense-ReLU-Dense-ReLU-Dense) on the flattened image and the z-scored
state that predicts the z-scored change of each future action from the current
state. Normalization is baked into the graph, so the ONNX model takes raw inputs and
returns absolute joint positions: `image [1,3,32,32]`, `state [1,J]` -> `actions [1,H,J]`.

numpy only (manual backprop, Adam): torch would pull gigabytes of CUDA wheels for a
3 MB model. Deterministic for a given --seed on a given machine.

    .venv/bin/python policies/export/train_sim_reach.py --demos demos/sim_reach \
        --out policies/models/sim_reach.onnx --epochs 80
"""

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort
from onnx import helper

from onnx_graph import const, save, tensor


def load(demos: str):
    """Returns (features buffer with the flattened image filled in, image shape, state, actions)."""
    image = np.load(os.path.join(demos, "image.npy"), mmap_mode="r")
    state = np.load(os.path.join(demos, "state.npy")).astype(np.float32)
    actions = np.load(os.path.join(demos, "actions.npy")).astype(np.float32)
    n = len(state)
    if image.ndim != 4 or len(image) != n or state.ndim != 2 or actions.shape[0] != n or actions.ndim != 3:
        raise SystemExit(f"inconsistent demos: image {image.shape}, state {state.shape}, actions {actions.shape}")
    if actions.shape[2] != state.shape[1]:
        raise SystemExit(f"actions have {actions.shape[2]} joints, state has {state.shape[1]}")
    if n < 20:
        raise SystemExit(f"only {n} samples in {demos}")
    # One preallocated [N, pixels + J] buffer: the image is ~600 MB as float32 at
    # N = 50k, so avoid holding a second copy for the concatenation.
    pixels = int(np.prod(image.shape[1:]))
    features = np.empty((n, pixels + state.shape[1]), np.float32)
    for start in range(0, n, 4096):
        features[start:start + 4096, :pixels] = image[start:start + 4096].reshape(-1, pixels)
    for name, array in [("image", features[:, :pixels]), ("state", state), ("actions", actions)]:
        if not np.isfinite(array).all():
            raise SystemExit(f"{name}.npy contains NaN or inf")
    return features, tuple(image.shape[1:]), state, actions


class Mlp:
    """Dense-ReLU-...-Dense with Adam; parameters in a dict for export."""

    def __init__(self, sizes, rng):
        self.params = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            # He init: keeps ReLU activations at unit scale through depth.
            self.params[f"w{i}"] = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            self.params[f"b{i}"] = np.zeros(fan_out, np.float32)
        self.layers = len(sizes) - 1
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.t = 0

    def forward(self, x):
        activations = [x]
        for i in range(self.layers):
            x = x @ self.params[f"w{i}"] + self.params[f"b{i}"]
            if i < self.layers - 1:
                x = np.maximum(x, 0.0)
            activations.append(x)
        return activations

    def predict(self, x, chunk=8192):
        return np.concatenate([self.forward(x[s:s + chunk])[-1] for s in range(0, len(x), chunk)])

    def step(self, x, target, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        """One Adam step on the mean squared error; returns the loss before the step."""
        acts = self.forward(x)
        error = acts[-1] - target
        loss = float(np.mean(error ** 2))
        grad = (2.0 / error.size) * error
        grads = {}
        for i in reversed(range(self.layers)):
            grads[f"w{i}"] = acts[i].T @ grad
            grads[f"b{i}"] = grad.sum(axis=0)
            if i > 0:  # no gradient is needed for the inputs themselves
                grad = (grad @ self.params[f"w{i}"].T) * (acts[i] > 0)
        self.apply(grads, lr, beta1, beta2, eps)
        return loss

    def apply(self, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        """One Adam update with the given gradients."""
        self.t += 1
        # Fold the bias corrections into the step size (same update, fewer temporaries).
        step = lr * np.sqrt(1 - beta2 ** self.t) / (1 - beta1 ** self.t)
        for k, g in grads.items():
            self.m[k] = beta1 * self.m[k] + (1 - beta1) * g
            self.v[k] = beta2 * self.v[k] + (1 - beta2) * (g * g)
            self.params[k] -= np.float32(step) * self.m[k] / (np.sqrt(self.v[k]) + np.float32(eps))


def fit(mlp, features, targets, train, args, rng, progress):
    """args.epochs of Adam over shuffled batches of `train`, the step size
    cosine-decayed from args.lr; prints `progress()` after each epoch."""
    started = time.time()
    for epoch in range(args.epochs):
        lr = float(args.lr * 0.5 * (1 + np.cos(np.pi * epoch / args.epochs)))
        order = rng.permutation(train)
        losses = [mlp.step(features[b], targets[b], lr)
                  for b in (order[s:s + args.batch] for s in range(0, len(order), args.batch))]
        print(f"epoch {epoch + 1:3d}  lr {lr:.1e}  loss {np.mean(losses):.5f}  {progress()}"
              f"  {time.time() - started:.0f} s", flush=True)


def action_head(mlp, features, d_mean, d_std, horizon, joints):
    """The MLP on `features`, its z-scored deltas scaled back and added to `state`:
    the nodes and initializers that end in `actions` [1, horizon, joints]."""
    nodes, x = [], features
    for i in range(mlp.layers):
        out = f"dense{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out]))
        if i < mlp.layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            out = f"relu{i}"
        x = out
    nodes += [
        helper.make_node("Mul", [x, "delta_std"], ["delta_scaled"]),
        helper.make_node("Add", ["delta_scaled", "delta_mean"], ["delta_flat"]),
        helper.make_node("Reshape", ["delta_flat", "chunk_shape"], ["delta"]),
        helper.make_node("Reshape", ["state", "state_shape"], ["state_row"]),
        helper.make_node("Add", ["state_row", "delta"], ["actions"]),
    ]
    initializers = [const(k, v) for k, v in mlp.params.items()] + [
        const("delta_mean", d_mean[None, :]),
        const("delta_std", d_std[None, :]),
        const("chunk_shape", np.array([1, horizon, joints], np.int64)),
        const("state_shape", np.array([1, 1, joints], np.int64)),
    ]
    return nodes, initializers


def export(path, mlp, stats, image_shape, joints, horizon, metadata):
    """Writes the MLP with normalization folded in as an ONNX graph."""
    s_mean, s_std, d_mean, d_std = stats
    head, head_initializers = action_head(mlp, "features", d_mean, d_std, horizon, joints)
    nodes = [
        helper.make_node("Flatten", ["image"], ["image_flat"], axis=1),
        helper.make_node("Sub", ["state", "state_mean"], ["state_centered"]),
        helper.make_node("Div", ["state_centered", "state_std"], ["state_z"]),
        helper.make_node("Concat", ["image_flat", "state_z"], ["features"], axis=1),
    ] + head
    initializers = head_initializers + [
        const("state_mean", s_mean[None, :]),
        const("state_std", s_std[None, :]),
    ]
    graph = helper.make_graph(
        nodes,
        "sim_reach",
        [tensor("image", [1, *image_shape]), tensor("state", [1, joints])],
        [tensor("actions", [1, horizon, joints])],
        initializers,
    )
    save(graph, path, metadata)


def verify(path, features, state, image_shape, predict_actions, rows):
    """The exported graph must compute what numpy computed; exits if it does not."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    pixels = int(np.prod(image_shape))
    worst = 0.0
    for i in rows:
        feeds = {"image": features[i, :pixels].reshape(1, *image_shape), "state": state[i:i + 1]}
        onnx_out = session.run(["actions"], feeds)[0]
        numpy_out = predict_actions(np.array([i]))
        if onnx_out.shape != numpy_out.shape or not np.isfinite(onnx_out).all():
            raise SystemExit(f"ONNX Runtime returned {onnx_out.shape} (finite: {np.isfinite(onnx_out).all()})")
        worst = max(worst, float(np.abs(onnx_out - numpy_out).max()))
    if worst > 1e-4:
        raise SystemExit(f"exported model disagrees with numpy by {worst} rad (limit 1e-4)")
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", required=True, help="directory from `reflex demos`")
    parser.add_argument("--out", default="policies/models/sim_reach.onnx")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak Adam step size (cosine-decayed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    features, image_shape, state, actions = load(args.demos)
    n, horizon, joints = actions.shape
    pixels = features.shape[1] - joints
    delta = (actions - state[:, None, :]).reshape(n, -1)

    # Demos are written episode after episode, so the last 10% are (nearly) whole
    # held-out episodes: a random split would validate on frames of training episodes.
    split = n - max(1, n // 10)
    train, val = np.arange(split), np.arange(split, n)
    s_mean, s_std = state[train].mean(0), state[train].std(0) + 1e-6
    d_mean, d_std = delta[train].mean(0), delta[train].std(0) + 1e-6
    features[:, pixels:] = (state - s_mean) / s_std
    targets = ((delta - d_mean) / d_std).astype(np.float32)

    mlp = Mlp([features.shape[1], args.hidden, args.hidden, horizon * joints], rng)

    def predict_actions(idx):
        delta_pred = mlp.predict(features[idx]) * d_std + d_mean
        return (delta_pred.reshape(-1, horizon, joints) + state[idx, None, :]).astype(np.float32)

    def mse_rad2(idx):
        # Error of the absolute targets in rad^2, averaged over steps and joints.
        return float(np.mean((predict_actions(idx) - actions[idx]) ** 2))

    train_probe = train[rng.permutation(len(train))[:4096]]  # cheap train-error estimate
    print(f"{n} samples ({len(train)} train, {len(val)} validation), horizon {horizon}, joints {joints}, "
          f"image {list(image_shape)}; predicting zero change: val mse {np.mean(delta[val] ** 2):.5f} rad^2")
    def progress():
        train_mse, val_mse = mse_rad2(train_probe), mse_rad2(val)
        return (f"train mse {train_mse:.6f}  val mse {val_mse:.6f} rad^2 "
                f"(rmse {np.sqrt(val_mse):.4f} rad)")

    fit(mlp, features, targets, train, args, rng, progress)

    val_mse = mse_rad2(val)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"producer": "policies/export/train_sim_reach.py", "seed": args.seed, "horizon": horizon,
            "joints": joints, "samples": n, "epochs": args.epochs, "hidden": args.hidden,
            "val_mse_rad2": val_mse, "val_rmse_rad": float(np.sqrt(val_mse))}
    meta_path = os.path.join(args.demos, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta["demos"] = json.dumps(json.load(f), sort_keys=True)
    export(args.out, mlp, (s_mean, s_std, d_mean, d_std), image_shape, joints, horizon, meta)
    worst = verify(args.out, features, state, image_shape, predict_actions, val[:100])
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB); final val mse {val_mse:.6f} rad^2; "
          f"ONNX Runtime matches numpy to {worst:.1e} rad on {min(100, len(val))} validation samples")


if __name__ == "__main__":
    main()
