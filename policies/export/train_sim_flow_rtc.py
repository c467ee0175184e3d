"""Training-time real-time chunking (arXiv 2512.05964) for the sim flow policy: the
same network and data as train_sim_flow.py, but the action expert also sees a
prefix mask [H], and during training a random inference delay d (0..--max-delay)
replaces the first d actions of x_t by the clean actions (mask 1), with the loss on
the other actions only. At run time (`[execution] strategy = "rtc"`, `mode =
"trained"`) reflex writes the actions that run while the chunk is computed into
those positions before every step: the chunk continues them with no guidance and
no vector-Jacobian product, at the cost of one step graph per step.

    x_t = t * eps + (1 - t) * a_norm;  x_t[:d] = a_norm[:d];  m = [1]*d + [0]*(H - d)
    loss = MSE over actions d.. of (v(obs, x_t, t, m) - (eps - a_norm))

Network: encoder as train_sim_flow.py; expert [obs_features ++ x_flat ++ m ++
sin/cos(t * freqs)] -> Dense-ReLU-Dense-ReLU-Dense -> velocity.

Outputs (in --out-dir), with a symbolic "batch" first dimension:
    sim_reach_flow_rtc_prefix.onnx   image [B,3,32,32], state [B,3] -> obs_features [B,F]
    sim_reach_flow_rtc_expert.onnx   obs_features, noisy_actions [B,10,3], time [B], prefix_mask [B,10]
                                     -> velocity [B,10,3]
    sim_reach_flow_rtc_norm_stats.json

    OPENBLAS_NUM_THREADS=1 .venv/bin/python policies/export/train_sim_flow_rtc.py \\
        --demos demos/sim_reach --out-dir policies/models --epochs 80 --seed 0
"""

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import helper

from onnx_graph import const, save, tensor
from train_sim_flow import (EULER_STEPS, TIME_FREQS, Net, dense_nodes, expert_input_nodes, prefix_part,
                            prepare_demos, time_embedding)


def expert_input(features, x_flat, mask, t):
    return np.concatenate([features, x_flat, mask, time_embedding(t)], axis=1).astype(np.float32)


def export(out_dir, encoder, expert, image_shape, horizon, dim, metadata):
    features = encoder.params[f"w{encoder.layers - 1}"].shape[1]
    image_in = tensor("image", ["batch", *image_shape])
    state_in = tensor("state", ["batch", dim])
    x_in = tensor("noisy_actions", ["batch", horizon, dim])
    time_in = tensor("time", ["batch"])
    mask_in = tensor("prefix_mask", ["batch", horizon])
    feat_io = tensor("obs_features", ["batch", features])
    velocity = tensor("velocity", ["batch", horizon, dim])
    p_nodes, p_inits = prefix_part(encoder)
    e_nodes, time_inits = expert_input_nodes("expert_in", extra=["prefix_mask"])
    more, out, e_inits = dense_nodes(expert, "exp", "expert_in", relu_out=False)
    e_nodes += more + [helper.make_node("Reshape", [out, "chunk_shape"], ["velocity"])]
    e_inits += time_inits + [const("chunk_shape", np.array([-1, horizon, dim], np.int64))]
    paths = {k: os.path.join(out_dir, f"sim_reach_flow_rtc{k}.onnx") for k in ("_prefix", "_expert")}
    save(helper.make_graph(p_nodes, "sim_reach_flow_rtc_prefix", [image_in, state_in], [feat_io], p_inits),
         paths["_prefix"], {**metadata, "form": "prefix"})
    save(helper.make_graph(e_nodes, "sim_reach_flow_rtc_expert", [feat_io, x_in, time_in, mask_in], [velocity],
                           e_inits), paths["_expert"], {**metadata, "form": "expert"})
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", required=True)
    parser.add_argument("--out-dir", default="policies/models")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-delay", type=int, default=5, help="largest prefix d drawn in training")
    parser.add_argument("--seed", type=int, default=0)
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
    expert = Net([args.features + chunk + horizon + t_dims, args.hidden, args.hidden, chunk], rng)

    def prefix(gen, rows):
        """Per row a delay d in 0..max_delay: the action mask [rows, H] and value mask [rows, H*D]."""
        d = gen.integers(0, args.max_delay + 1, rows)
        mask = (np.arange(horizon)[None, :] < d[:, None]).astype(np.float32)
        return mask, np.repeat(mask, dim, axis=1)

    def sample_t(gen, size):
        return (0.999 * gen.beta(1.5, 1.0, size) + 0.001).astype(np.float32)

    def sample(idx, gen, d, batch=2048):
        """Euler from noise with the first d actions frozen to the demonstration's."""
        out = []
        for s in range(0, len(idx), batch):
            b = idx[s:s + batch]
            feats = encoder.forward(inputs[b])[-1]
            mask = np.zeros((len(b), horizon), np.float32)
            mask[:, :d] = 1.0
            frozen = np.repeat(mask, dim, axis=1)
            x = gen.standard_normal((len(b), chunk)).astype(np.float32)
            dt = np.float32(-1.0 / EULER_STEPS)
            for k in range(EULER_STEPS):
                x = frozen * a_norm[b] + (1 - frozen) * x
                t = np.full(len(b), 1.0 + k * dt, np.float32)
                x = x + dt * expert.forward(expert_input(feats, x, mask, t))[-1]
            x = frozen * a_norm[b] + (1 - frozen) * x
            out.append(x.reshape(len(b), horizon, dim) * (a_std + 1e-6) + a_mean + state[b, None, :])
        return np.concatenate(out)

    print(f"{n} samples, horizon {horizon}, dims {dim}; prefixes of 0..{args.max_delay} actions", flush=True)
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
            mask, frozen = prefix(rng, len(a))
            x_t = frozen * a + (1 - frozen) * (t[:, None] * eps + (1 - t[:, None]) * a)
            exp_acts = expert.forward(expert_input(feats, x_t, mask, t))
            error = (exp_acts[-1] - (eps - a)) * (1 - frozen)
            count = max(1.0, float((1 - frozen).sum()))
            losses.append(float((error ** 2).sum() / count))
            exp_grads, in_grad = expert.backward(exp_acts, (2.0 / count) * error, input_grad=True)
            feat_grad = in_grad[:, :args.features].reshape(len(b), args.draws, -1).sum(axis=1)
            enc_grads, _ = encoder.backward(enc_acts, feat_grad)
            expert.apply(exp_grads, lr)
            encoder.apply(enc_grads, lr)
        line = f"epoch {epoch + 1:3d}  lr {lr:.1e}  loss {np.mean(losses):.4f}"
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            for d in (0, 3):
                err = np.abs(sample(val[::8], np.random.default_rng(2), d) - actions[val[::8]])
                line += f"  val MAE d={d}: after prefix {err[:, d:].mean():.4f}"
        print(f"{line}  {time.time() - started:.0f} s", flush=True)
    train_seconds = time.time() - started

    # Held-out: the chunk after a frozen prefix of d demonstration actions; and how
    # far its first free action is from the demonstration's (the switch).
    evaluation = {}
    for d in range(args.max_delay + 1):
        pred = sample(val, np.random.default_rng(3), d)
        err = np.abs(pred - actions[val])
        evaluation[f"d{d}_free_mae_rad"] = float(err[:, d:].mean())
        evaluation[f"d{d}_first_free_mae_rad"] = float(err[:, min(d, horizon - 1)].mean())
    os.makedirs(args.out_dir, exist_ok=True)
    meta = {"producer": "policies/export/train_sim_flow_rtc.py",
            "description": "flow-matching chunk policy for the simulated reaching arm, trained for "
                           "training-time real-time chunking: prefix_mask [B, H] marks the actions of "
                           "noisy_actions that are the clean, frozen prefix",
            "command": command, "seed": args.seed, "epochs": args.epochs, "max_delay": args.max_delay,
            "train_seconds": round(train_seconds), "evaluation": json.dumps(evaluation, sort_keys=True),
            "norm_stats": json.dumps(norm_stats)}
    paths = export(args.out_dir, encoder, expert, image_shape, horizon, dim, meta)
    stats_path = os.path.join(args.out_dir, "sim_reach_flow_rtc_norm_stats.json")
    with open(stats_path + ".partial", "w") as f:
        json.dump({"norm_stats": norm_stats}, f, indent=2)
        f.write("\n")
    os.replace(stats_path + ".partial", stats_path)

    # The exported graphs compute what numpy trained.
    rows = val[:16]
    opts = dict(providers=["CPUExecutionProvider"])
    prefix_s = ort.InferenceSession(paths["_prefix"], **opts)
    expert_s = ort.InferenceSession(paths["_expert"], **opts)
    feats = prefix_s.run(None, {"image": inputs[rows, :pixels].reshape(len(rows), *image_shape),
                                "state": state_z[rows]})[0]
    x = np.random.default_rng(6).standard_normal((len(rows), horizon, dim)).astype(np.float32)
    mask = (np.arange(horizon)[None, :] < 2).repeat(len(rows), 0).astype(np.float32)
    t = np.full(len(rows), 0.4, np.float32)
    got = expert_s.run(None, {"obs_features": feats, "noisy_actions": x, "time": t, "prefix_mask": mask})[0]
    want = expert.forward(expert_input(encoder.forward(inputs[rows])[-1], x.reshape(len(rows), -1), mask, t))[-1]
    worst = float(np.abs(got.reshape(len(rows), -1) - want).max())
    if worst > 1e-4:
        raise SystemExit(f"exported graphs disagree with numpy: {worst}")
    for p in list(paths.values()) + [stats_path]:
        print(f"wrote {p}")
    print(f"trained {args.epochs} epochs in {train_seconds:.0f} s; ONNX vs numpy {worst:.1e}")
    print(json.dumps(evaluation, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
