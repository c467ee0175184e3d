"""Train a flow-matching policy (pi0 convention) for the simulated reaching task and
export it to ONNX, both as one graph and as a prefix/expert pair with shared weights.

Input: a directory written by `reflex demos` (see train_sim_reach.py). The model
generates chunks of the z-scored CHANGE of each joint from the current state
(delta = actions - state), like the behaviour-cloning model, but as a velocity field:

    t ~ 0.999 * Beta(1.5, 1) + 0.001,  eps ~ N(0, I) [H, D]
    x_t = t * eps + (1 - t) * a_norm,  target u = eps - a_norm,  loss = MSE(v(obs, x_t, t), u)

The runtime samples x at t = 1 from N(0, I) and integrates 10 Euler steps of
dt = -0.1 (x += dt * v(x, t)), unnormalizes with the "actions" z-score stats of
the norm-stats file and adds the current joint positions back.

Network: encoder  [flattened image (raw [0, 1]) ++ z-scored state] -> Dense-ReLU-Dense-ReLU -> obs_features [F]
         expert   [obs_features ++ flattened x_t [H*D] ++ sin/cos(t * freqs)] -> Dense-ReLU-Dense-ReLU-Dense -> velocity [H*D]
trained jointly with numpy (manual backprop, Adam); each observation gets several
(t, noise) draws per step, sharing one encoder pass.

Outputs (in --out-dir), all with a symbolic "batch" first dimension:
    sim_reach_flow.onnx          image [B,3,32,32], state [B,3] (normalized), noisy_actions [B,10,3], time [B] -> velocity [B,10,3]
    sim_reach_flow_prefix.onnx   image, state -> obs_features [B,F]
    sim_reach_flow_expert.onnx   obs_features, noisy_actions, time -> velocity
    sim_reach_flow_norm_stats.json   openpi format; "actions" are the stats of the delta actions

    OPENBLAS_NUM_THREADS=1 .venv/bin/python policies/export/train_sim_flow.py \
        --demos demos/sim_reach --out-dir policies/models --epochs 150 --seed 0
"""

import argparse
import json
import os
import shlex
import sys
import time
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
from onnx import helper

from onnx_graph import const, save, tensor
from train_sim_reach import Mlp, load

TIME_FREQS = np.geomspace(1.0, 100.0, 16).astype(np.float32)  # rad per unit of t
EULER_STEPS = 10


class Net(Mlp):
    """Mlp with the backward pass and the Adam update split apart, so two of them
    (encoder and expert) can be chained and trained together."""

    def __init__(self, sizes, rng, relu_out=False):
        super().__init__(sizes, rng)
        self.relu_out = relu_out  # the encoder's output features are ReLU'd too

    def forward(self, x):
        acts = super().forward(x)
        if self.relu_out:
            acts[-1] = np.maximum(acts[-1], 0.0)
        return acts

    def backward(self, acts, grad, input_grad=False):
        """Gradients of the parameters (and of the input when asked) given d loss / d output."""
        if self.relu_out:
            grad = grad * (acts[-1] > 0)
        grads = {}
        for i in reversed(range(self.layers)):
            grads[f"w{i}"] = acts[i].T @ grad
            grads[f"b{i}"] = grad.sum(axis=0)
            if i > 0 or input_grad:
                grad = grad @ self.params[f"w{i}"].T
                if i > 0:
                    grad = grad * (acts[i] > 0)
        return grads, (grad if input_grad else None)


def time_embedding(t):
    """[B] -> [B, 2 * len(TIME_FREQS)], computed exactly like the ONNX graph."""
    arg = t.astype(np.float32)[:, None] * TIME_FREQS[None, :]
    return np.concatenate([np.sin(arg), np.cos(arg)], axis=1)


def expert_input(features, x_flat, t):
    return np.concatenate([features, x_flat, time_embedding(t)], axis=1).astype(np.float32)


def prepare_demos(demos):
    """The demonstrations as the flow trainers use them: the image ++ z-scored state
    inputs, the z-scored delta actions [N, H*D], the split (the last 10 % in file
    order: (nearly) whole held-out episodes) and the openpi norm stats."""
    inputs, image_shape, state, actions = load(demos)
    n, horizon, dim = actions.shape
    pixels = inputs.shape[1] - dim
    delta = actions - state[:, None, :]
    split = n - max(1, n // 10)
    train, val = np.arange(split), np.arange(split, n)
    norm_stats = {"state": stats_of(state[train]), "actions": stats_of(delta[train].reshape(-1, dim))}
    s_mean, s_std = (np.array(norm_stats["state"][k], np.float32) for k in ("mean", "std"))
    a_mean, a_std = (np.array(norm_stats["actions"][k], np.float32) for k in ("mean", "std"))
    state_z = ((state - s_mean) / (s_std + 1e-6)).astype(np.float32)
    inputs[:, pixels:] = state_z
    a_norm = ((delta - a_mean) / (a_std + 1e-6)).astype(np.float32).reshape(n, -1)
    return SimpleNamespace(inputs=inputs, image_shape=image_shape, state=state, actions=actions, n=n,
                           horizon=horizon, dim=dim, pixels=pixels, train=train, val=val, norm_stats=norm_stats,
                           a_mean=a_mean, a_std=a_std, state_z=state_z, a_norm=a_norm)


def stats_of(x):
    """openpi norm stats of the rows of x [rows, D]."""
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist()}


# ---------------------------------------------------------------- ONNX export

def dense_nodes(net, prefix, x, relu_out):
    nodes = []
    for i in range(net.layers):
        out = f"{prefix}_dense{i}"
        nodes.append(helper.make_node("Gemm", [x, f"{prefix}_w{i}", f"{prefix}_b{i}"], [out]))
        if i < net.layers - 1 or relu_out:
            nodes.append(helper.make_node("Relu", [out], [f"{prefix}_relu{i}"]))
            out = f"{prefix}_relu{i}"
        x = out
    return nodes, x, [const(f"{prefix}_{k}", v) for k, v in net.params.items()]


def prefix_part(encoder):
    """image, state -> obs_features."""
    nodes = [helper.make_node("Flatten", ["image"], ["image_flat"], axis=1),
             helper.make_node("Concat", ["image_flat", "state"], ["encoder_in"], axis=1)]
    more, out, inits = dense_nodes(encoder, "enc", "encoder_in", relu_out=True)
    nodes += more + [helper.make_node("Identity", [out], ["obs_features"])]
    return nodes, inits


def expert_input_nodes(out, extra=(), freqs=None):
    """The expert's input as the graph builds it: Concat(obs_features, flattened
    noisy_actions, *extra, sin/cos(time * freqs)) named `out`; with its constants."""
    freqs = TIME_FREQS[None, :] if freqs is None else freqs
    nodes = [
        helper.make_node("Flatten", ["noisy_actions"], ["x_flat"], axis=1),
        helper.make_node("Unsqueeze", ["time", "time_axes"], ["time_col"]),
        helper.make_node("Mul", ["time_col", "time_freqs"], ["time_arg"]),
        helper.make_node("Sin", ["time_arg"], ["time_sin"]),
        helper.make_node("Cos", ["time_arg"], ["time_cos"]),
        helper.make_node("Concat", ["obs_features", "x_flat", *extra, "time_sin", "time_cos"], [out], axis=1),
    ]
    return nodes, [const("time_axes", np.array([1], np.int64)), const("time_freqs", freqs)]


def expert_part(expert, horizon, dim):
    """obs_features, noisy_actions, time -> velocity."""
    nodes, inits = expert_input_nodes("expert_in")
    more, out, dense = dense_nodes(expert, "exp", "expert_in", relu_out=False)
    nodes += more + [helper.make_node("Reshape", [out, "chunk_shape"], ["velocity"])]
    inits = dense + inits + [const("chunk_shape", np.array([-1, horizon, dim], np.int64))]
    return nodes, inits


def export_all(out_dir, encoder, expert, image_shape, horizon, dim, metadata, name="sim_reach_flow"):
    features = encoder.params[f"w{encoder.layers - 1}"].shape[1]
    image_in = tensor("image", ["batch", *image_shape])
    state_in = tensor("state", ["batch", dim])
    x_in = tensor("noisy_actions", ["batch", horizon, dim])
    time_in = tensor("time", ["batch"])
    feat_io = tensor("obs_features", ["batch", features])
    velocity = tensor("velocity", ["batch", horizon, dim])
    p_nodes, p_inits = prefix_part(encoder)
    e_nodes, e_inits = expert_part(expert, horizon, dim)
    paths = {k: os.path.join(out_dir, f"{name}{k}.onnx") for k in ("", "_prefix", "_expert")}
    save(helper.make_graph(p_nodes + e_nodes, "sim_reach_flow", [image_in, state_in, x_in, time_in],
                           [velocity], p_inits + e_inits), paths[""], {**metadata, "form": "single"})
    save(helper.make_graph(p_nodes, "sim_reach_flow_prefix", [image_in, state_in], [feat_io], p_inits),
         paths["_prefix"], {**metadata, "form": "prefix"})
    save(helper.make_graph(e_nodes, "sim_reach_flow_expert", [feat_io, x_in, time_in], [velocity], e_inits),
         paths["_expert"], {**metadata, "form": "expert"})
    return paths


def verify(paths, image, state_z, velocity_np, rng, horizon, dim):
    """single == prefix + expert (1e-5) == numpy (1e-4), at batch 1 and batch 7; exits otherwise."""
    opts = dict(providers=["CPUExecutionProvider"])
    single, prefix, expert = (ort.InferenceSession(paths[k], **opts) for k in ("", "_prefix", "_expert"))
    split_worst = numpy_worst = 0.0
    for rows in [np.array([i]) for i in range(0, len(state_z), max(1, len(state_z) // 20))] + \
            [np.arange(min(7, len(state_z)))]:
        x = rng.standard_normal((len(rows), horizon, dim)).astype(np.float32)
        t = rng.uniform(0.0, 1.0, len(rows)).astype(np.float32)
        feeds = {"image": image[rows], "state": state_z[rows]}
        v_single = single.run(["velocity"], {**feeds, "noisy_actions": x, "time": t})[0]
        feats = prefix.run(["obs_features"], feeds)[0]
        v_split = expert.run(["velocity"], {"obs_features": feats, "noisy_actions": x, "time": t})[0]
        v_np = velocity_np(image[rows].reshape(len(rows), -1), state_z[rows], x, t)
        if v_single.shape != (len(rows), horizon, dim) or not np.isfinite(v_single).all():
            raise SystemExit(f"ONNX Runtime returned {v_single.shape} (finite: {np.isfinite(v_single).all()})")
        split_worst = max(split_worst, float(np.abs(v_single - v_split).max()))
        numpy_worst = max(numpy_worst, float(np.abs(v_single - v_np).max()))
    if split_worst > 1e-5 or numpy_worst > 1e-4:
        raise SystemExit(f"exported graphs disagree: single vs split {split_worst}, vs numpy {numpy_worst}")
    return split_worst, numpy_worst


# ---------------------------------------------------------------- training

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", required=True, help="directory from `reflex demos`")
    parser.add_argument("--out-dir", default="policies/models")
    parser.add_argument("--name", default="sim_reach_flow", help="file names: NAME.onnx, NAME_prefix.onnx, ...")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--hidden", type=int, default=256, help="width of the encoder's first and the expert's layers")
    parser.add_argument("--features", type=int, default=128, help="width of obs_features")
    parser.add_argument("--batch", type=int, default=256, help="observations per step")
    parser.add_argument("--draws", type=int, default=8, help="(t, noise) draws per observation per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak Adam step size (cosine-decayed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bc-model", default="policies/models/sim_reach.onnx", help="baseline for the evaluation")
    args = parser.parse_args()
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])

    rng = np.random.default_rng(args.seed)
    demos = prepare_demos(args.demos)
    inputs, image_shape, state, actions = demos.inputs, demos.image_shape, demos.state, demos.actions
    n, horizon, dim, pixels = demos.n, demos.horizon, demos.dim, demos.pixels
    train, val, norm_stats = demos.train, demos.val, demos.norm_stats
    a_mean, a_std, state_z, a_norm = demos.a_mean, demos.a_std, demos.state_z, demos.a_norm
    chunk = horizon * dim

    encoder = Net([inputs.shape[1], args.hidden, args.features], rng, relu_out=True)
    t_dims = 2 * len(TIME_FREQS)
    expert = Net([args.features + chunk + t_dims, args.hidden, args.hidden, chunk], rng)

    def velocity_np(image_flat, sz, x, t):
        feats = encoder.forward(np.concatenate([image_flat, sz], axis=1).astype(np.float32))[-1]
        return expert.forward(expert_input(feats, x.reshape(len(x), -1), t))[-1].reshape(len(x), horizon, dim)

    def sample_t(gen, size):
        return (0.999 * gen.beta(1.5, 1.0, size) + 0.001).astype(np.float32)

    def flow_loss(idx, gen, draws=2, batch=2048):
        """Flow-matching MSE on idx with (t, noise) from gen (fixed seed -> comparable across epochs)."""
        total = 0.0
        for s in range(0, len(idx), batch):
            b = idx[s:s + batch]
            feats = np.repeat(encoder.forward(inputs[b])[-1], draws, axis=0)
            a = np.repeat(a_norm[b], draws, axis=0)
            t = sample_t(gen, len(a))
            eps = gen.standard_normal(a.shape).astype(np.float32)
            v = expert.forward(expert_input(feats, t[:, None] * eps + (1 - t[:, None]) * a, t))[-1]
            total += float(np.sum((v - (eps - a)) ** 2))
        return total / (len(idx) * draws * chunk)

    def sample_actions(idx, gen, batch=2048):
        """Euler from t = 1 (seeded noise) to 0 in EULER_STEPS steps -> absolute actions [len(idx), H, D]."""
        out = []
        for s in range(0, len(idx), batch):
            b = idx[s:s + batch]
            feats = encoder.forward(inputs[b])[-1]
            x = gen.standard_normal((len(b), chunk)).astype(np.float32)
            dt = np.float32(-1.0 / EULER_STEPS)
            for k in range(EULER_STEPS):
                t = np.full(len(b), 1.0 + k * dt, np.float32)
                x = x + dt * expert.forward(expert_input(feats, x, t))[-1]
            d = x.reshape(len(b), horizon, dim) * (a_std + 1e-6) + a_mean
            out.append(d + state[b, None, :])
        return np.concatenate(out)

    def chunk_errors(pred, idx):
        err = np.abs(pred - actions[idx])
        return float(err[:, 0].mean()), float(err.mean())

    train_probe = train[rng.permutation(len(train))[:4096]]
    print(f"{n} samples ({len(train)} train, {len(val)} validation), horizon {horizon}, dims {dim}; "
          f"encoder {encoder.params['w0'].shape[0]}-{args.hidden}-{args.features}, expert "
          f"{args.features + chunk + t_dims}-{args.hidden}-{args.hidden}-{chunk}; "
          f"{args.batch} obs x {args.draws} draws per step", flush=True)
    started = time.time()
    for epoch in range(args.epochs):
        lr = float(args.lr * 0.5 * (1 + np.cos(np.pi * epoch / args.epochs)))
        order = rng.permutation(train)
        losses = []
        for s in range(0, len(order), args.batch):
            b = order[s:s + args.batch]
            enc_acts = encoder.forward(inputs[b])
            feats = np.repeat(enc_acts[-1], args.draws, axis=0)
            a = np.repeat(a_norm[b], args.draws, axis=0)
            t = sample_t(rng, len(a))
            eps = rng.standard_normal(a.shape).astype(np.float32)
            x_t = t[:, None] * eps + (1 - t[:, None]) * a
            exp_acts = expert.forward(expert_input(feats, x_t, t))
            error = exp_acts[-1] - (eps - a)
            losses.append(float(np.mean(error ** 2)))
            exp_grads, in_grad = expert.backward(exp_acts, (2.0 / error.size) * error, input_grad=True)
            feat_grad = in_grad[:, :args.features].reshape(len(b), args.draws, -1).sum(axis=1)
            enc_grads, _ = encoder.backward(enc_acts, feat_grad)
            expert.apply(exp_grads, lr)
            encoder.apply(enc_grads, lr)
        line = (f"epoch {epoch + 1:3d}  lr {lr:.1e}  loss {np.mean(losses):.4f}  "
                f"val loss {flow_loss(val, np.random.default_rng(1)):.4f}")
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            first, whole = chunk_errors(sample_actions(val[::4], np.random.default_rng(2)), val[::4])
            line += f"  val sampled MAE first {first:.4f} chunk {whole:.4f} rad"
        print(f"{line}  {time.time() - started:.0f} s", flush=True)
    train_seconds = time.time() - started

    train_loss = flow_loss(train_probe, np.random.default_rng(1))
    val_loss = flow_loss(val, np.random.default_rng(1))

    # Offline evaluation on the held-out demos: flow (10 Euler steps, seeded noise) vs the BC model.
    flow_pred = sample_actions(val, np.random.default_rng(3))
    flow_first, flow_chunk = chunk_errors(flow_pred, val)
    flow_pred2 = sample_actions(val, np.random.default_rng(4))
    spread = float(np.abs(flow_pred - flow_pred2).mean())
    bc = None
    if os.path.exists(args.bc_model):
        session = ort.InferenceSession(args.bc_model, providers=["CPUExecutionProvider"])
        bc_pred = np.concatenate([
            session.run(["actions"], {"image": inputs[i:i + 1, :pixels].reshape(1, *image_shape),
                                      "state": state[i:i + 1]})[0] for i in val])
        bc = chunk_errors(bc_pred, val)
    evaluation = {"flow_first_mae_rad": flow_first, "flow_chunk_mae_rad": flow_chunk,
                  "flow_seed_to_seed_mae_rad": spread}
    if bc:
        evaluation.update(bc_first_mae_rad=bc[0], bc_chunk_mae_rad=bc[1], chunk_ratio=flow_chunk / bc[1])

    os.makedirs(args.out_dir, exist_ok=True)
    meta = {"producer": "policies/export/train_sim_flow.py",
            "description": "flow-matching chunk policy (pi0 convention: x_t = t*noise + (1-t)*actions, "
                           "v = noise - actions, sample from t=1 with Euler dt=-0.1 x 10) for the simulated "
                           "reaching arm; actions are z-scored deltas from the current joint positions, "
                           "state input is z-scored with the state norm stats",
            "command": command, "seed": args.seed, "epochs": args.epochs, "horizon": horizon,
            "action_dim": dim, "samples": n, "train_seconds": round(train_seconds),
            "train_flow_loss": train_loss, "val_flow_loss": val_loss,
            "evaluation": json.dumps(evaluation, sort_keys=True), "norm_stats": json.dumps(norm_stats)}
    meta_path = os.path.join(args.demos, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta["demos"] = json.dumps(json.load(f), sort_keys=True)
    paths = export_all(args.out_dir, encoder, expert, image_shape, horizon, dim, meta, args.name)
    stats_path = os.path.join(args.out_dir, f"{args.name}_norm_stats.json")
    with open(stats_path + ".partial", "w") as f:
        json.dump({"norm_stats": norm_stats}, f, indent=2)
        f.write("\n")
    os.replace(stats_path + ".partial", stats_path)

    vrows = val[np.random.default_rng(5).permutation(len(val))[:32]]
    images = inputs[vrows, :pixels].reshape(len(vrows), *image_shape)
    split_worst, numpy_worst = verify(paths, images, state_z[vrows], velocity_np, np.random.default_rng(6),
                                      horizon, dim)

    for p in list(paths.values()) + [stats_path]:
        print(f"wrote {p} ({os.path.getsize(p) / 1e6:.2f} MB)")
    print(f"trained {args.epochs} epochs in {train_seconds:.0f} s; flow loss train {train_loss:.4f} val {val_loss:.4f}")
    print(f"ONNX Runtime: single vs prefix+expert {split_worst:.1e}, vs numpy {numpy_worst:.1e}")
    print(f"held-out MAE ({len(val)} samples): flow first {flow_first:.4f} chunk {flow_chunk:.4f} rad "
          f"(seed-to-seed {spread:.4f})" + (f"; BC first {bc[0]:.4f} chunk {bc[1]:.4f} rad; "
                                            f"flow/BC chunk {flow_chunk / bc[1]:.2f}x" if bc else ""))


if __name__ == "__main__":
    main()
