"""Write the small generative-policy ONNX fixtures the Rust sampler tests load
(deterministic: seeded numpy weights, float32, IR version 13 / opset 17).

Every input and output has a symbolic first dimension named "batch". Constants:
horizon H = 10, model action width D = 8 (the robot has 3 joints; the runtime
pads/slices), state width S = 8, image [B,3,32,32] float32 in [-1, 1].

- flow_velocity.onnx: a tiny pi0-like flow-matching model in one graph:
  image [B,3,32,32], state [B,8], noisy_actions [B,10,8], time [B] -> velocity [B,10,8].
- flow_prefix.onnx + flow_expert.onnx: the same weights split at the KV cache:
  prefix: image, state -> prefix_keys [B,17,32], prefix_values [B,17,32]
  (the action expert's K/V projections of the 17 prefix tokens: 16 8x8 image
  patches + 1 state token, after one transformer block);
  expert: prefix_keys, prefix_values, noisy_actions, time -> velocity [B,10,8].
  Both forms are emitted by the same Python helpers, so they compute the same function.
- diffusion_eps.onnx: a Diffusion-Policy-style eps network (FiLM-conditioned MLP):
  image, state, noisy_actions [B,10,8], timestep [B] int64 -> eps [B,10,8].
- flow_velocity_nan.onnx: flow_velocity with a velocity that is NaN everywhere.
- flow_velocity_wrong_output.onnx: flow_velocity with velocity [B,10,5].
- flow_norm_stats.json (openpi format, 3 joints) and flow_norm_stats_wrong_width.json
  (2 values per field).

The script checks with ONNX Runtime that single and split forms agree (B = 1 and 3)
and that batch rows are independent, then prints one line per file.

    .venv/bin/python policies/export/make_generative_models.py --out-dir policies/models/test
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from onnx_graph import const, save, tensor

H, D, S = 10, 8, 8  # horizon, model action width, state width
IMAGE = [3, 32, 32]
PATCH = 8
PATCHES = (IMAGE[1] // PATCH) * (IMAGE[2] // PATCH)  # 16
W = 32  # token width
L = PATCHES + 1  # prefix tokens: image patches + one state token
MLP_HIDDEN = 64
TIME_FREQS = np.array([0.5, 1.0, 2.0, 4.0], np.float32) * np.float32(np.pi)  # time in [0, 1]
DIFF_HIDDEN = 32
DIFF_TIME_DIM = 16  # sinusoidal features of the diffusion timestep (0..T-1)
SEED = 20250611
BATCH = "batch"
PRODUCER = {"producer": "policies/export/make_generative_models.py"}


def flow_weights(rng: np.random.Generator) -> dict:
    """All flow-model weights, drawn in a fixed order (scaled ~1/sqrt(fan_in))."""
    w = {}

    def lin(name, fan_in, fan_out, gain=1.0):
        w[name + ".w"] = (rng.standard_normal((fan_in, fan_out)) * gain / np.sqrt(fan_in)).astype(np.float32)
        w[name + ".b"] = (rng.standard_normal(fan_out) * 0.02).astype(np.float32)

    def norm(name):
        w[name + ".g"] = (1.0 + 0.1 * rng.standard_normal(W)).astype(np.float32)

    def block(p):
        norm(p + ".norm1")
        for proj in ("q", "k", "v", "o"):
            lin(f"{p}.{proj}", W, W)
        norm(p + ".norm2")
        lin(p + ".mlp1", W, MLP_HIDDEN)
        lin(p + ".mlp2", MLP_HIDDEN, W)

    lin("pre.patch", 3 * PATCH * PATCH, W)
    lin("pre.state", S, W)
    w["pre.pos"] = (0.5 * rng.standard_normal((L, W))).astype(np.float32)
    block("pre.blk")
    norm("pre.final")
    lin("pre.cache_k", W, W)
    lin("pre.cache_v", W, W)
    lin("exp.act", D, W)
    lin("exp.time1", 2 * len(TIME_FREQS), W)
    lin("exp.time2", W, W)
    w["exp.pos"] = (0.5 * rng.standard_normal((H, W))).astype(np.float32)
    block("exp.blk")
    norm("exp.final")
    lin("exp.out", W, D)
    return w


class Builder:
    """Collects nodes and initializers; weights are added on first use."""

    def __init__(self, weights: dict):
        self.weights, self.nodes, self.inits, self.used, self.count = weights, [], [], set(), 0

    def op(self, op_type, inputs, out=None, **attrs):
        if out is None:
            out = f"{op_type.lower()}_{self.count}"
            self.count += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, name, value):
        if name not in self.used:
            self.used.add(name)
            self.inits.append(const(name, value))
        return name

    def w(self, name):
        return self.const(name, self.weights[name])

    def ints(self, name, values):
        return self.const(name, np.array(values, np.int64))

    def scalar(self, name, value):
        return self.const(name, np.array(value, np.float32))


def linear(g: Builder, x, name, out=None):
    return g.op("Add", [g.op("MatMul", [x, g.w(name + ".w")]), g.w(name + ".b")], out)


def rms_norm(g: Builder, x, name):
    """x / sqrt(mean(x^2, last axis) + 1e-6) * gamma, from primitive ops."""
    mean_sq = g.op("ReduceMean", [g.op("Mul", [x, x])], axes=[-1], keepdims=1)
    denom = g.op("Sqrt", [g.op("Add", [mean_sq, g.scalar("eps_norm", 1e-6)])])
    return g.op("Mul", [g.op("Div", [x, denom]), g.w(name + ".g")])


def gelu_tanh(g: Builder, x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    cube = g.op("Mul", [g.op("Mul", [x, x]), x])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.scalar("gelu_c", 0.044715)])])
    t = g.op("Tanh", [g.op("Mul", [inner, g.scalar("gelu_k", np.sqrt(2.0 / np.pi))])])
    half_x = g.op("Mul", [x, g.scalar("half", 0.5)])
    return g.op("Mul", [half_x, g.op("Add", [t, g.scalar("one", 1.0)])])


def silu(g: Builder, x):
    return g.op("Mul", [x, g.op("Sigmoid", [x])])


def attention(g: Builder, q, k, v):
    """Single-head softmax(q k^T / sqrt(W)) v over [B,N,W] tensors."""
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
    scores = g.op("Mul", [scores, g.scalar("attn_scale", 1.0 / np.sqrt(W))])
    return g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])


def mlp_residual(g: Builder, x, p):
    h = linear(g, rms_norm(g, x, p + ".norm2"), p + ".mlp1")
    return g.op("Add", [x, linear(g, gelu_tanh(g, h), p + ".mlp2")])


def flow_prefix(g: Builder, image, state, keys_out, values_out):
    """image, state -> the expert's K/V of the L prefix tokens (the cache)."""
    n = IMAGE[1] // PATCH
    # [B,3,32,32] -> [B,3,4,8,4,8] -> [B,4,4,3,8,8] -> [B,16,192]: row-major 8x8 patches.
    x = g.op("Reshape", [image, g.ints("patch_shape", [0, 3, n, PATCH, n, PATCH])])
    x = g.op("Transpose", [x], perm=[0, 2, 4, 1, 3, 5])
    x = g.op("Reshape", [x, g.ints("patch_flat", [0, PATCHES, 3 * PATCH * PATCH])])
    patches = linear(g, x, "pre.patch")  # [B,16,W]
    state_tok = g.op("Unsqueeze", [linear(g, state, "pre.state"), g.ints("axis1", [1])])  # [B,1,W]
    x = g.op("Add", [g.op("Concat", [patches, state_tok], axis=1), g.w("pre.pos")])  # [B,L,W]
    h = rms_norm(g, x, "pre.blk.norm1")
    att = attention(g, linear(g, h, "pre.blk.q"), linear(g, h, "pre.blk.k"), linear(g, h, "pre.blk.v"))
    x = g.op("Add", [x, linear(g, att, "pre.blk.o")])
    x = rms_norm(g, mlp_residual(g, x, "pre.blk"), "pre.final")
    linear(g, x, "pre.cache_k", keys_out)
    linear(g, x, "pre.cache_v", values_out)


def flow_expert(g: Builder, keys, values, noisy, time, out, out_width=D, nan=False):
    """Action tokens attend over [prefix K/V ; their own K/V] -> velocity [B,H,out_width]."""
    t = g.op("Mul", [g.op("Unsqueeze", [time, g.ints("axis1", [1])]), g.const("time_freqs", TIME_FREQS)])
    feats = g.op("Concat", [g.op("Sin", [t]), g.op("Cos", [t])], axis=-1)  # [B,8]
    t_emb = linear(g, silu(g, linear(g, feats, "exp.time1")), "exp.time2")  # [B,W]
    t_emb = g.op("Unsqueeze", [t_emb, g.ints("axis1", [1])])  # [B,1,W]
    x = g.op("Add", [g.op("Add", [linear(g, noisy, "exp.act"), t_emb]), g.w("exp.pos")])  # [B,H,W]
    h = rms_norm(g, x, "exp.blk.norm1")
    k = g.op("Concat", [keys, linear(g, h, "exp.blk.k")], axis=1)  # [B,L+H,W]
    v = g.op("Concat", [values, linear(g, h, "exp.blk.v")], axis=1)
    x = g.op("Add", [x, linear(g, attention(g, linear(g, h, "exp.blk.q"), k, v), "exp.blk.o")])
    x = rms_norm(g, mlp_residual(g, x, "exp.blk"), "exp.final")
    last = out if out_width == D and not nan else None
    y = linear(g, x, "exp.out", last)
    if out_width != D:
        y = g.op("Slice", [y, g.ints("slice_start", [0]), g.ints("slice_end", [out_width]), g.ints("axis2", [2])],
                 None if nan else out)
    if nan:
        # A NaN constant, not 0/0 at run time: no optimizer can fold it away.
        g.op("Mul", [y, g.scalar("nan", np.nan)], out)


def obs_inputs():
    return [tensor("image", [BATCH, *IMAGE]), tensor("state", [BATCH, S])]


def cache_ports():
    return [tensor("prefix_keys", [BATCH, L, W]), tensor("prefix_values", [BATCH, L, W])]


def step_inputs():
    return [tensor("noisy_actions", [BATCH, H, D]), tensor("time", [BATCH])]


def flow_graphs(weights):
    """{file name: graph} for the single, split and fault forms of the flow model."""
    graphs = {}
    for name, width, nan in [("flow_velocity", D, False), ("flow_velocity_nan", D, True),
                             ("flow_velocity_wrong_output", 5, False)]:
        g = Builder(weights)
        flow_prefix(g, "image", "state", "prefix_keys", "prefix_values")
        flow_expert(g, "prefix_keys", "prefix_values", "noisy_actions", "time", "velocity", width, nan)
        graphs[name] = helper.make_graph(g.nodes, name, obs_inputs() + step_inputs(),
                                         [tensor("velocity", [BATCH, H, width])], g.inits)
    g = Builder(weights)
    flow_prefix(g, "image", "state", "prefix_keys", "prefix_values")
    graphs["flow_prefix"] = helper.make_graph(g.nodes, "flow_prefix", obs_inputs(), cache_ports(), g.inits)
    g = Builder(weights)
    flow_expert(g, "prefix_keys", "prefix_values", "noisy_actions", "time", "velocity")
    graphs["flow_expert"] = helper.make_graph(g.nodes, "flow_expert", cache_ports() + step_inputs(),
                                              [tensor("velocity", [BATCH, H, D])], g.inits)
    return graphs


def diffusion_graph(rng: np.random.Generator):
    """eps(noisy_actions | image, state, timestep): FiLM-conditioned residual MLP."""
    w = {}

    def lin(name, fan_in, fan_out, gain=1.0):
        w[name + ".w"] = (rng.standard_normal((fan_in, fan_out)) * gain / np.sqrt(fan_in)).astype(np.float32)
        w[name + ".b"] = (rng.standard_normal(fan_out) * 0.02).astype(np.float32)

    cond_dim = IMAGE[0] + S + DIFF_TIME_DIM
    lin("cond1", cond_dim, DIFF_HIDDEN, np.sqrt(2.0))
    lin("film", DIFF_HIDDEN, 2 * DIFF_HIDDEN, 0.5)
    lin("in", H * D, DIFF_HIDDEN, np.sqrt(2.0))
    lin("hid", DIFF_HIDDEN, DIFF_HIDDEN, np.sqrt(2.0))
    lin("out", DIFF_HIDDEN, H * D, 0.6)
    half = DIFF_TIME_DIM // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half).astype(np.float32)

    g = Builder(w)
    pooled = g.op("ReduceMean", ["image"], axes=[2, 3], keepdims=0)  # [B,3]
    t = g.op("Cast", ["timestep"], to=TensorProto.FLOAT)
    t = g.op("Mul", [g.op("Unsqueeze", [t, g.ints("axis1", [1])]), g.const("time_freqs", freqs)])  # [B,8]
    cond = g.op("Concat", [pooled, "state", g.op("Sin", [t]), g.op("Cos", [t])], axis=-1)  # [B,27]
    film = linear(g, silu(g, linear(g, cond, "cond1")), "film")  # [B,2*hidden]
    scale, shift = (g.op("Slice", [film, g.ints(f"film_{a}", [a]), g.ints(f"film_{b}", [b]), g.ints("axis_last", [-1])])
                    for a, b in [(0, DIFF_HIDDEN), (DIFF_HIDDEN, 2 * DIFF_HIDDEN)])
    x = g.op("Reshape", ["noisy_actions", g.ints("flat_actions", [0, H * D])])
    h = linear(g, x, "in")
    h = g.op("Add", [g.op("Mul", [h, g.op("Add", [scale, g.scalar("one", 1.0)])]), shift])
    h = g.op("Relu", [h])
    h = g.op("Add", [h, g.op("Relu", [linear(g, h, "hid")])])
    y = linear(g, h, "out")
    g.op("Reshape", [y, g.ints("chunk_shape", [0, H, D])], "eps")
    inputs = obs_inputs() + [tensor("noisy_actions", [BATCH, H, D]),
                             helper.make_tensor_value_info("timestep", TensorProto.INT64, [BATCH])]
    return helper.make_graph(g.nodes, "diffusion_eps", inputs, [tensor("eps", [BATCH, H, D])], g.inits)


def norm_stats(width):
    base = np.array([0.1, -0.2, 0.3])[:width]
    spread = np.array([0.5, 0.7, 0.4])[:width]

    def field(center, scale):
        return {
            "mean": [round(float(x), 4) for x in center],
            "std": [round(float(x), 4) for x in scale],
            "q01": [round(float(x), 4) for x in center - 2.0 * scale],
            "q99": [round(float(x), 4) for x in center + 2.0 * scale],
        }

    return {"norm_stats": {"state": field(base, spread), "actions": field(base * 0.5, spread * 1.2)}}


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def random_obs(rng, batch):
    return {
        "image": rng.uniform(-1, 1, (batch, *IMAGE)).astype(np.float32),
        "state": rng.standard_normal((batch, S)).astype(np.float32),
        "noisy_actions": rng.standard_normal((batch, H, D)).astype(np.float32),
        "time": rng.uniform(0, 1, batch).astype(np.float32),
    }


def check_flow(out_dir):
    single = session(os.path.join(out_dir, "flow_velocity.onnx"))
    prefix = session(os.path.join(out_dir, "flow_prefix.onnx"))
    expert = session(os.path.join(out_dir, "flow_expert.onnx"))
    rng = np.random.default_rng(7)
    worst, rows, mags = 0.0, 0.0, []
    results = {}
    for batch in (1, 3):
        feeds = random_obs(rng, batch)
        (v_single,) = single.run(None, feeds)
        keys, values = prefix.run(None, {"image": feeds["image"], "state": feeds["state"]})
        (v_split,) = expert.run(None, {"prefix_keys": keys, "prefix_values": values,
                                       "noisy_actions": feeds["noisy_actions"], "time": feeds["time"]})
        assert v_single.shape == (batch, H, D) and keys.shape == (batch, L, W), (v_single.shape, keys.shape)
        worst = max(worst, float(np.abs(v_single - v_split).max()))
        mags.append(float(np.abs(v_single).mean()))
        results[batch] = (feeds, v_single)
    feeds3, v3 = results[3]
    for i in range(3):
        (row,) = single.run(None, {k: v[i:i + 1] for k, v in feeds3.items()})
        rows = max(rows, float(np.abs(row[0] - v3[i]).max()))
    assert worst <= 1e-5, f"single vs split differ by {worst}"
    assert rows <= 1e-5, f"batch rows not independent: {rows}"
    assert all(0.05 < m < 3.0 for m in mags), mags
    (v_nan,) = session(os.path.join(out_dir, "flow_velocity_nan.onnx")).run(None, results[1][0])
    assert np.isnan(v_nan).all()
    (v_wrong,) = session(os.path.join(out_dir, "flow_velocity_wrong_output.onnx")).run(None, results[3][0])
    assert v_wrong.shape == (3, H, 5)
    print(f"check: single vs split max |diff| {worst:.2e}, batch-row max |diff| {rows:.2e}, "
          f"mean |velocity| {', '.join(f'{m:.3f}' for m in mags)}")


def check_diffusion(out_dir):
    sess = session(os.path.join(out_dir, "diffusion_eps.onnx"))
    rng = np.random.default_rng(8)
    feeds = random_obs(rng, 3)
    del feeds["time"]
    feeds["timestep"] = np.array([0, 50, 99], np.int64)
    (eps,) = sess.run(None, feeds)
    assert eps.shape == (3, H, D) and np.isfinite(eps).all()
    rows = max(float(np.abs(sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0][0] - eps[i]).max())
               for i in range(3))
    assert rows <= 1e-5, rows
    std = float(eps.std())
    assert 0.3 < std < 3.0, std
    print(f"check: diffusion eps std {std:.3f}, batch-row max |diff| {rows:.2e}")


def describe(path):
    sess = session(path)
    ports = [f"{i.name} {i.type} {i.shape}" for i in sess.get_inputs()]
    outs = [f"{o.name} {o.type} {o.shape}" for o in sess.get_outputs()]
    print(f"wrote {path} ({os.path.getsize(path)} B): {', '.join(ports)} -> {', '.join(outs)}")


def build(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(SEED)
    weights = flow_weights(rng)
    graphs = flow_graphs(weights)
    graphs["diffusion_eps"] = diffusion_graph(rng)
    order = ["flow_velocity", "flow_prefix", "flow_expert", "diffusion_eps", "flow_velocity_nan",
             "flow_velocity_wrong_output"]
    for name in order:
        save(graphs[name], os.path.join(out_dir, name + ".onnx"), PRODUCER)
    check_flow(out_dir)
    check_diffusion(out_dir)
    for name in order:
        describe(os.path.join(out_dir, name + ".onnx"))
    for name, width in [("flow_norm_stats.json", 3), ("flow_norm_stats_wrong_width.json", 2)]:
        path = os.path.join(out_dir, name)
        with open(path + ".partial", "w") as f:
            json.dump(norm_stats(width), f, indent=2)
            f.write("\n")
        os.replace(path + ".partial", path)
        print(f"wrote {path}: openpi norm_stats, state/actions mean/std/q01/q99 with {width} values each")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="policies/models/test")
    build(parser.parse_args().out_dir)
