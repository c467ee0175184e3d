"""Train the simulated-arm reaching policy by behaviour cloning and export it to ONNX.

Input: a directory written by `reflex demos` (`image.npy` [N, 3, 32, 32] in [0, 1],
`state.npy` [N, J] rad, `actions.npy` [N, H, J] absolute joint targets), i.e. the
exact tensors the runtime feeds the model, rendered and preprocessed by reflex itself.

Model: an MLP on the flattened image and the z-scored state that predicts the
z-scored change of each future action from the current state. Normalization is
baked into the graph, so the ONNX model takes raw inputs and returns absolute
joint positions: `image [1,3,32,32]`, `state [1,J]` -> `actions [1,H,J]`.

numpy only (manual backprop, Adam): torch would pull gigabytes of CUDA wheels for a
3 MB model. Deterministic for a given --seed.
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
    image = np.load(os.path.join(demos, "image.npy"), mmap_mode="r")
    state = np.load(os.path.join(demos, "state.npy")).astype(np.float32)
    actions = np.load(os.path.join(demos, "actions.npy")).astype(np.float32)
    return np.asarray(image, dtype=np.float32).reshape(len(state), -1), state, actions


class Mlp:
    """Dense-ReLU-Dense-ReLU-Dense with Adam; parameters in a dict for export."""

    def __init__(self, sizes, rng):
        self.params = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
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

    def step(self, x, target, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        acts = self.forward(x)
        error = acts[-1] - target
        loss = float(np.mean(error ** 2))
        grad = 2.0 * error / error.size
        grads = {}
        for i in reversed(range(self.layers)):
            grads[f"w{i}"] = acts[i].T @ grad
            grads[f"b{i}"] = grad.sum(axis=0)
            if i > 0:
                grad = (grad @ self.params[f"w{i}"].T) * (acts[i] > 0)
        self.t += 1
        for k, g in grads.items():
            self.m[k] = beta1 * self.m[k] + (1 - beta1) * g
            self.v[k] = beta2 * self.v[k] + (1 - beta2) * g * g
            m_hat = self.m[k] / (1 - beta1 ** self.t)
            v_hat = self.v[k] / (1 - beta2 ** self.t)
            self.params[k] -= lr * m_hat / (np.sqrt(v_hat) + eps)
        return loss


def export(path, mlp, stats, image_shape, joints, horizon, metadata):
    """Writes the MLP with normalization folded in as an ONNX graph."""
    s_mean, s_std, d_mean, d_std = stats
    nodes = [
        helper.make_node("Flatten", ["image"], ["image_flat"], axis=1),
        helper.make_node("Sub", ["state", "state_mean"], ["state_centered"]),
        helper.make_node("Div", ["state_centered", "state_std"], ["state_z"]),
        helper.make_node("Concat", ["image_flat", "state_z"], ["features"], axis=1),
    ]
    x = "features"
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
        const("state_mean", s_mean[None, :]),
        const("state_std", s_std[None, :]),
        const("delta_mean", d_mean[None, :]),
        const("delta_std", d_std[None, :]),
        const("chunk_shape", np.array([1, horizon, joints], np.int64)),
        const("state_shape", np.array([1, 1, joints], np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "sim_reach",
        [tensor("image", [1, *image_shape]), tensor("state", [1, joints])],
        [tensor("actions", [1, horizon, joints])],
        initializers,
    )
    save(graph, path, metadata)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", required=True)
    parser.add_argument("--out", default="policies/models/sim_reach.onnx")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    image, state, actions = load(args.demos)
    n, horizon, joints = actions.shape
    image_shape = np.load(os.path.join(args.demos, "image.npy"), mmap_mode="r").shape[1:]
    delta = (actions - state[:, None, :]).reshape(n, -1)

    order = rng.permutation(n)
    split = int(n * 0.9)
    train, val = order[:split], order[split:]
    s_mean, s_std = state[train].mean(0), state[train].std(0) + 1e-6
    d_mean, d_std = delta[train].mean(0), delta[train].std(0) + 1e-6
    features = np.concatenate([image, (state - s_mean) / s_std], axis=1).astype(np.float32)
    targets = ((delta - d_mean) / d_std).astype(np.float32)

    mlp = Mlp([features.shape[1], args.hidden, args.hidden, horizon * joints], rng)

    def rmse_rad(idx):
        pred = mlp.forward(features[idx])[-1] * d_std + d_mean
        return float(np.sqrt(np.mean((pred - delta[idx]) ** 2)))

    started = time.time()
    for epoch in range(args.epochs):
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * epoch / args.epochs))  # cosine decay
        batch_order = rng.permutation(train)
        losses = [
            mlp.step(features[b], targets[b], lr)
            for b in np.array_split(batch_order, max(1, len(batch_order) // args.batch))
        ]
        print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.5f}  train rmse {rmse_rad(train[:4096]):.4f} rad"
              f"  val rmse {rmse_rad(val):.4f} rad  ({time.time() - started:.0f} s)", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"producer": "policies/export/train_sim_reach.py", "seed": args.seed, "horizon": horizon,
            "joints": joints, "samples": n, "val_rmse_rad": rmse_rad(val)}
    meta_path = os.path.join(args.demos, "meta.json")
    if os.path.exists(meta_path):
        meta["demos"] = json.dumps(json.load(open(meta_path)))
    export(args.out, mlp, (s_mean, s_std, d_mean, d_std), image_shape, joints, horizon, meta)

    # The exported graph must compute what numpy computed.
    session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    worst = 0.0
    for i in val[:100]:
        onnx_out = session.run(["actions"], {"image": image[i].reshape(1, *image_shape), "state": state[i:i + 1]})[0]
        numpy_out = (mlp.forward(features[i:i + 1])[-1] * d_std + d_mean).reshape(1, horizon, joints) + state[i]
        worst = max(worst, float(np.abs(onnx_out - numpy_out).max()))
    if worst > 1e-4:
        raise SystemExit(f"exported model disagrees with numpy by {worst}")
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB); ONNX Runtime matches numpy to {worst:.1e}")


if __name__ == "__main__":
    main()
