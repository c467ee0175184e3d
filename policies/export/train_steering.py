"""Train the steering models of the steering demonstration from rollouts reflex recorded:
a value function for V-GPS and a latent-noise policy for DSRL, both for the weakened
flow policy of launch/sim_arm_steering.toml.

Input: a LeRobotDataset written by `reflex run launch/sim_arm_steering.toml --record
DIR` (PNG frames, `video = false`): per row the top camera, the joint positions,
`complementary_info.policy_action` (the joint targets the policy asked for) and the
sparse reward (1 on the row where the classifier saw the target reached).

1. Value function, Monte Carlo return regression: for row k of an episode whose
   success is at row T, G_k = gamma^(T - k) (0 when the episode failed); the scored
   actions are the S = `replan_after` targets after row k (rows k+1 ... k+S, the
   segment V-GPS scores from action d = 1). Q(observation, segment) is an MLP on
   the frozen base policy's own observation features (its prefix graph, as DSRL
   feeds pi0's prefix token), the z-scored state, the z-scored segment and the
   segment minus the state; MSE, Adam. The exported graph takes what reflex maps:
   one observation, `image` [1, 3, 32, 32] and `state` [1, 3] (raw joint
   positions: the graph z-scores), and the K candidates' `action` [K, S, 3] ->
   `q` [K]: the observation's features are computed once and broadcast. Also its
   negation (the negative control: V-GPS with it must hurt).
2. Latent-noise policy, the cross-entropy method in noise space: for observations
   of the rollouts, CEM searches the initial noise w = M tanh(z) [H, D] whose chunk
   (the frozen flow policy sampled from w, 10 Euler steps, as reflex does) the value
   function scores highest; an MLP on the same features regresses z (DSRL's
   noise-aliasing idea with a search instead of an actor). Exported:
   `obs_features` (the base policy's prefix output, fed by reflex with
   `prefix_outputs = ["obs_features"]`, as DSRL feeds pi0's prefix token) and
   `state` -> `noise` [n, H, D] (before the squash). Also a latent policy that
   outputs 0 (reading only `state`), for the negative control run with
   exploration_std = 1 (random w).

Runs in the parity venv (pyarrow for the dataset):

    "$(bash scripts/parity_venv.sh)" policies/export/train_steering.py \
        --rollouts target/steering/rollouts --out-dir policies/models/steering
"""

import argparse
import glob
import io
import json
import os
import shlex
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
from onnx import helper, numpy_helper
from PIL import Image

from onnx_graph import const, save, tensor
from train_sim_reach import Mlp

HORIZON, DIM, SEGMENT = 10, 3, 3
EULER_STEPS = 10


def load_rollouts(root):
    """Per episode: images [T, 3, 32, 32] (the 96x96 frames box-filtered by 3, what
    reflex's `resize = [32, 32]` computes), state [T, 3], policy_action [T, 3],
    success row (or None)."""
    files = sorted(glob.glob(os.path.join(root, "data", "chunk-*", "file-*.parquet")))
    if not files:
        raise SystemExit(f"{root}: no data/chunk-*/file-*.parquet (record with `reflex run ... --record {root}`)")
    episodes = {}
    for path in files:
        table = pq.read_table(path, columns=["episode_index", "frame_index", "observation.images.top",
                                             "observation.state", "complementary_info.policy_action",
                                             "next.reward"]).to_pydict()
        for e, f, img, s, a, r in zip(*table.values()):
            episodes.setdefault(e, []).append((f, img, s, a, r))
    out = []
    for e in sorted(episodes):
        rows = sorted(episodes[e], key=lambda row: row[0])
        frames = np.stack([np.asarray(Image.open(io.BytesIO(r[1]["bytes"])).convert("RGB")) for r in rows])
        frames = frames.astype(np.float32) / 255.0
        t, h, w, _ = frames.shape
        pooled = frames.reshape(t, h // 3, 3, w // 3, 3, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2)
        rewards = [r[4] for r in rows]
        success = next((k for k, v in enumerate(rewards) if v > 0.5), None)
        out.append({"images": np.ascontiguousarray(pooled, np.float32),
                    "state": np.array([r[2][:DIM] for r in rows], np.float32),
                    "action": np.array([r[3][:DIM] for r in rows], np.float32),
                    "success": success})
    return out


def prefix_graph(path):
    """The base policy's prefix graph: nodes reading `image` and `state_z`, ending in
    `obs_features`, and its initializers."""
    model = onnx.load(path)
    nodes = []
    for node in model.graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.input[:] = ["state_z" if name == "state" else name for name in node.input]
        nodes.append(node)
    return nodes, list(model.graph.initializer)


def dense(mlp, prefix, x):
    nodes = []
    for i in range(mlp.layers):
        out = f"{prefix}_dense{i}"
        nodes.append(helper.make_node("Gemm", [x, f"{prefix}_w{i}", f"{prefix}_b{i}"], [out]))
        if i < mlp.layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"{prefix}_relu{i}"]))
            out = f"{prefix}_relu{i}"
        x = out
    return nodes, x, [const(f"{prefix}_{k}", v) for k, v in mlp.params.items()]


def z_score_nodes(stats):
    nodes = [helper.make_node("Sub", ["state", "state_mean"], ["state_centred"]),
             helper.make_node("Div", ["state_centred", "state_std"], ["state_z"])]
    return nodes, [const("state_mean", stats["state_mean"]), const("state_std", stats["state_std"])]


class Features:
    """The frozen base policy's observation features, and the statistics both
    models z-score with."""

    def __init__(self, models, name):
        with open(os.path.join(models, f"{name}_norm_stats.json")) as f:
            stats = json.load(f)["norm_stats"]
        self.state_mean = np.array(stats["state"]["mean"], np.float32)
        self.state_std = np.array(stats["state"]["std"], np.float32) + np.float32(1e-6)
        self.delta_mean = np.array(stats["actions"]["mean"], np.float32)
        self.delta_std = np.array(stats["actions"]["std"], np.float32) + np.float32(1e-6)
        opts = dict(providers=["CPUExecutionProvider"])
        self.prefix_path = os.path.join(models, f"{name}_prefix.onnx")
        self.prefix = ort.InferenceSession(self.prefix_path, **opts)
        self.expert = ort.InferenceSession(os.path.join(models, f"{name}_expert.onnx"), **opts)

    def state_z(self, state):
        return (state - self.state_mean) / self.state_std

    def of(self, images, state, batch=4096):
        return np.concatenate([self.prefix.run(["obs_features"], {"image": images[s:s + batch],
                                                                  "state": self.state_z(state[s:s + batch])})[0]
                               for s in range(0, len(state), batch)])

    def sample(self, feats, state, noise):
        """The flow policy from initial noise [n, H, D] -> absolute joint targets [n, H, D]."""
        x = noise.astype(np.float32)
        dt = np.float32(-1.0 / EULER_STEPS)
        for k in range(EULER_STEPS):
            t = np.full(len(x), 1.0 + k * dt, np.float32)
            x = x + dt * self.expert.run(["velocity"], {"obs_features": feats, "noisy_actions": x, "time": t})[0]
        return x * self.delta_std + self.delta_mean + state[:, None, :]


class Value:
    """Q(features, state, segment) and its graph."""

    def __init__(self, features, action_mean, action_std, rng, hidden):
        self.features = features
        self.action_mean, self.action_std = action_mean, action_std
        width = 128 + DIM + 2 * SEGMENT * DIM
        self.mlp = Mlp([width, hidden, hidden, 1], rng)

    def inputs(self, feats, state, segment):
        seg_z = (segment - self.action_mean) / self.action_std
        gap = (segment - state[:, None, :]) / self.features.delta_std
        return np.concatenate([feats, self.features.state_z(state), seg_z.reshape(len(state), -1),
                               gap.reshape(len(state), -1)], axis=1).astype(np.float32)

    def q(self, feats, state, segment):
        return self.mlp.predict(self.inputs(feats, state, segment))[:, 0]

    def export(self, path, negate, metadata):
        nodes, inits = z_score_nodes(vars(self.features))
        p_nodes, p_inits = prefix_graph(self.features.prefix_path)
        nodes += p_nodes
        inits += p_inits
        nodes += [
            helper.make_node("Sub", ["action", "action_mean"], ["action_centred"]),
            helper.make_node("Div", ["action_centred", "action_std"], ["action_z"]),
            helper.make_node("Flatten", ["action_z"], ["action_flat"], axis=1),
            helper.make_node("Unsqueeze", ["state", "axis1"], ["state_row"]),
            helper.make_node("Sub", ["action", "state_row"], ["gap"]),
            helper.make_node("Div", ["gap", "delta_std"], ["gap_z"]),
            helper.make_node("Flatten", ["gap_z"], ["gap_flat"], axis=1),
            # One observation for all n candidates: its features broadcast to n
            # rows (+ a zero column with one row per candidate).
            helper.make_node("Mul", ["action_flat", "zero"], ["action_zeros"]),
            helper.make_node("ReduceSum", ["action_zeros", "axis1"], ["zero_column"], keepdims=1),
            helper.make_node("Add", ["obs_features", "zero_column"], ["features_n"]),
            helper.make_node("Add", ["state_z", "zero_column"], ["state_z_n"]),
            helper.make_node("Concat", ["features_n", "state_z_n", "action_flat", "gap_flat"], ["q_in"], axis=1),
        ]
        inits += [const("action_mean", self.action_mean), const("action_std", self.action_std),
                  const("axis1", np.array([1], np.int64)), const("delta_std", self.features.delta_std),
                  const("zero", np.float32(0.0))]
        more, out, dense_inits = dense(self.mlp, "q", "q_in")
        nodes += more + [helper.make_node("Squeeze", [out, "axis1"], ["q_raw" if negate else "q"])]
        if negate:
            nodes.append(helper.make_node("Neg", ["q_raw"], ["q"]))
        graph = helper.make_graph(nodes, os.path.basename(path)[:-5],
                                  [tensor("image", [1, 3, 32, 32]), tensor("state", [1, DIM]),
                                   tensor("action", ["n", SEGMENT, DIM])],
                                  [tensor("q", ["n"])], inits + dense_inits)
        save(graph, path, {**metadata, "negated": str(negate)})


class Latent:
    """z(features, state) [H*D], w = magnitude * tanh(z), and its graph."""

    def __init__(self, features, rng, hidden):
        self.features = features
        self.mlp = Mlp([128 + DIM, hidden, hidden, HORIZON * DIM], rng)

    def inputs(self, feats, state):
        return np.concatenate([feats, self.features.state_z(state)], axis=1).astype(np.float32)

    def export(self, path, metadata):
        """`obs_features` (the prefix graph's output, which reflex feeds with
        `prefix_outputs`) and `state` -> `noise`."""
        nodes, inits = z_score_nodes(vars(self.features))
        nodes.append(helper.make_node("Concat", ["obs_features", "state_z"], ["latent_in"], axis=1))
        more, out, dense_inits = dense(self.mlp, "latent", "latent_in")
        nodes += more + [helper.make_node("Reshape", [out, "noise_shape"], ["noise"])]
        inits += dense_inits + [const("noise_shape", np.array([-1, HORIZON, DIM], np.int64))]
        graph = helper.make_graph(nodes, os.path.basename(path)[:-5],
                                  [tensor("obs_features", ["n", 128]), tensor("state", ["n", DIM])],
                                  [tensor("noise", ["n", HORIZON, DIM])], inits)
        save(graph, path, metadata)


def zero_latent(path, metadata):
    """`state` [n, 3] -> `noise` [n, H, D] of zeros (state @ 0: the input is read),
    for the negative control: w from exploration noise alone."""
    nodes = [helper.make_node("MatMul", ["state", "zeros"], ["flat"]),
             helper.make_node("Reshape", ["flat", "noise_shape"], ["noise"])]
    graph = helper.make_graph(nodes, os.path.basename(path)[:-5], [tensor("state", ["n", DIM])],
                              [tensor("noise", ["n", HORIZON, DIM])],
                              [const("zeros", np.zeros((DIM, HORIZON * DIM), np.float32)),
                               const("noise_shape", np.array([-1, HORIZON, DIM], np.int64))])
    save(graph, path, metadata)


def fit(mlp, x, y, train, val, epochs, batch, lr, rng, label):
    started = time.time()
    for epoch in range(epochs):
        step = float(lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs)))
        order = rng.permutation(train)
        losses = [mlp.step(x[b], y[b], step) for b in (order[s:s + batch] for s in range(0, len(order), batch))]
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            val_loss = float(np.mean((mlp.predict(x[val]) - y[val]) ** 2))
            print(f"{label} epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}  val {val_loss:.4f}  "
                  f"{time.time() - started:.0f} s", flush=True)


def auc(scores, labels):
    """P(score of a random positive > score of a random negative), ties half."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def cem(features, value, feats, state, magnitude, rng, population, elites, iterations):
    """Per observation, the mean w of the cross-entropy method maximizing Q of the
    chunk sampled from w (common random numbers across observations)."""
    n = len(state)
    mean = np.zeros((n, HORIZON * DIM), np.float32)
    std = np.ones((n, HORIZON * DIM), np.float32)
    for _ in range(iterations):
        eps = rng.standard_normal((population, HORIZON * DIM)).astype(np.float32)
        w = np.clip(mean[:, None] + std[:, None] * eps[None], -0.999 * magnitude, 0.999 * magnitude)
        flat = w.reshape(n * population, HORIZON, DIM)
        rep_feats = np.repeat(feats, population, axis=0)
        rep_state = np.repeat(state, population, axis=0)
        chunks = features.sample(rep_feats, rep_state, flat)
        q = value.q(rep_feats, rep_state, chunks[:, 1:1 + SEGMENT]).reshape(n, population)
        best = np.argsort(-q, axis=1)[:, :elites]
        chosen = np.take_along_axis(w, best[:, :, None], axis=1)
        mean = chosen.mean(axis=1)
        std = np.maximum(chosen.std(axis=1), 0.05)
    return mean


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", required=True, help="LeRobotDataset recorded by reflex (PNG frames)")
    parser.add_argument("--models", default="policies/models/steering", help="where the base policy is")
    parser.add_argument("--base", default="sim_reach_weak", help="the base policy's file name stem")
    parser.add_argument("--out-dir", default="policies/models/steering")
    parser.add_argument("--gamma", type=float, default=0.95, help="discount per row (0.1 s)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--magnitude", type=float, default=2.0, help="DSRL's action_magnitude")
    parser.add_argument("--cem-observations", type=int, default=12000)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--elites", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    rng = np.random.default_rng(args.seed)
    started = time.time()

    episodes = load_rollouts(args.rollouts)
    successes = sum(e["success"] is not None for e in episodes)
    print(f"{len(episodes)} episodes, {successes} successful ({successes / len(episodes):.1%}), "
          f"{sum(len(e['state']) for e in episodes)} rows", flush=True)
    features = Features(args.models, args.base)

    # Monte Carlo returns and the segments that followed each row.
    rows = {"images": [], "state": [], "segment": [], "ret": [], "episode": [], "success": []}
    for i, e in enumerate(episodes):
        t = len(e["state"]) if e["success"] is None else e["success"] + 1
        for k in range(t):
            after = [min(k + 1 + s, len(e["action"]) - 1) for s in range(SEGMENT)]
            rows["images"].append(e["images"][k])
            rows["state"].append(e["state"][k])
            rows["segment"].append(e["action"][after])
            rows["ret"].append(0.0 if e["success"] is None else args.gamma ** (e["success"] - k))
            rows["episode"].append(i)
            rows["success"].append(e["success"] is not None)
    data = {k: np.array(v, np.float32 if k not in ("episode", "success") else None) for k, v in rows.items()}
    feats = features.of(data["images"], data["state"])
    held_out = data["episode"] % 10 == 0
    train, val = np.flatnonzero(~held_out), np.flatnonzero(held_out)

    all_actions = np.concatenate([e["action"] for e in episodes])
    action_mean = all_actions.mean(0).astype(np.float32)
    action_std = (all_actions.std(0) + 1e-6).astype(np.float32)
    value = Value(features, action_mean, action_std, rng, args.hidden)
    x = value.inputs(feats, data["state"], data["segment"])
    fit(value.mlp, x, data["ret"][:, None], train, val, args.epochs, 256, 1e-3, rng, "value")
    q_val = value.mlp.predict(x[val])[:, 0]
    value_auc = auc(q_val, data["success"][val])
    print(f"value: held-out AUC of Q for success {value_auc:.3f} over {len(val)} rows", flush=True)

    # CEM in noise space on observations from the rollouts, then the latent MLP.
    pick = rng.permutation(len(data["state"]))[:args.cem_observations]
    cem_started = time.time()
    best_w = np.concatenate([
        cem(features, value, feats[b], data["state"][b], args.magnitude, np.random.default_rng(args.seed + 1),
            args.population, args.elites, args.iterations)
        for b in np.array_split(pick, max(1, len(pick) // 250))])
    print(f"CEM: {len(pick)} observations in {time.time() - cem_started:.0f} s", flush=True)
    target_z = np.arctanh(np.clip(best_w / args.magnitude, -0.995, 0.995)).astype(np.float32)
    latent = Latent(features, rng, args.hidden)
    lx = latent.inputs(feats[pick], data["state"][pick])
    l_held = data["episode"][pick] % 10 == 0
    fit(latent.mlp, lx, target_z, np.flatnonzero(~l_held), np.flatnonzero(l_held), args.epochs, 256, 1e-3, rng,
        "latent")

    # Offline check on held-out observations: Q of the chunk from the latent
    # policy's w, from the CEM w, and from random w (the base policy).
    hv = pick[l_held]
    w_latent = args.magnitude * np.tanh(latent.mlp.predict(lx[l_held])).reshape(-1, HORIZON, DIM)
    w_random = np.random.default_rng(7).standard_normal(w_latent.shape).astype(np.float32)
    scores = {}
    for label, w in (("latent", w_latent), ("cem", best_w[l_held].reshape(-1, HORIZON, DIM)), ("random", w_random)):
        chunk = features.sample(feats[hv], data["state"][hv], w)
        scores[label] = float(value.q(feats[hv], data["state"][hv], chunk[:, 1:1 + SEGMENT]).mean())
    print("held-out mean Q: " + ", ".join(f"{k} w {v:.3f}" for k, v in scores.items()), flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    meta = {"producer": "policies/export/train_steering.py", "command": command, "seed": args.seed,
            "rollout_episodes": len(episodes), "rollout_successes": successes, "gamma": args.gamma,
            "value_heldout_auc": value_auc, "latent_heldout_q": json.dumps(scores, sort_keys=True),
            "magnitude": args.magnitude, "base": args.base}
    paths = {k: os.path.join(args.out_dir, f"{args.base}_{k}.onnx")
             for k in ("value", "value_negated", "latent", "latent_zero")}
    value.export(paths["value"], False, {**meta, "description": "V-GPS value: MC-return regression"})
    value.export(paths["value_negated"], True, {**meta, "description": "negated V-GPS value (negative control)"})
    latent.export(paths["latent"], {**meta, "description": "DSRL latent-noise policy (CEM in noise space)"})
    zero_latent(paths["latent_zero"], {**meta, "description": "latent policy that outputs 0 (random-w control)"})

    # The graphs compute what numpy does, at batch 1 and 5.
    opts = dict(providers=["CPUExecutionProvider"])
    q_sess = ort.InferenceSession(paths["value"], **opts)
    l_sess = ort.InferenceSession(paths["latent"], **opts)
    for b in (val[:1], val[:5]):
        # One observation, len(b) candidate segments.
        o = np.repeat(b[:1], len(b))
        q_onnx = q_sess.run(["q"], {"image": data["images"][b[:1]], "state": data["state"][b[:1]],
                                    "action": data["segment"][b]})[0]
        q_np = value.q(feats[o], data["state"][o], data["segment"][b])
        z_onnx = l_sess.run(["noise"], {"obs_features": feats[b], "state": data["state"][b]})[0]
        z_np = latent.mlp.predict(latent.inputs(feats[b], data["state"][b])).reshape(-1, HORIZON, DIM)
        worst = max(float(np.abs(q_onnx - q_np).max()), float(np.abs(z_onnx - z_np).max()))
        if worst > 1e-4:
            raise SystemExit(f"exported graphs disagree with numpy by {worst}")
    for p in paths.values():
        print(f"wrote {p} ({os.path.getsize(p) / 1e6:.2f} MB)")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
