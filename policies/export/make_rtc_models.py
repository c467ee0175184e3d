"""Vector-Jacobian-product (VJP) graphs for guided real-time chunking (RTC).

Guided RTC (Black, Galliker, Levine 2025) steers every denoising step with
J^T e, the VJP of the velocity network through the noisy actions. `torch.onnx`
cannot export autograd, so the backward graphs here are derived by hand:

- sim_reach_flow_expert_vjp.onnx (from policies/models/sim_reach_flow_expert.onnx,
  the trained sim flow policy's action expert, Dense-ReLU-Dense-ReLU-Dense on
  [obs_features ++ x_flat ++ sin/cos(t * freqs)]):
      obs_features [B,F], noisy_actions [B,H,D], time [B], cotangent [B,H,D]
      -> velocity [B,H,D] (the expert's own output), vjp [B,H,D]
  where vjp = (d velocity / d noisy_actions)^T cotangent:
      g2 = cotangent_flat @ W2^T * (h2 > 0);  g1 = g2 @ W1^T * (h1 > 0);
      vjp = (g1 @ W0^T)[:, F : F + H*D]
- test/rtc_analytic.onnx + test/rtc_analytic_vjp.onnx: a nonlinear analytic
  velocity field for the sampler tests (H = 6, D = 3, one observation input: state [B, 3]):
      v(x, t, state) = tanh(x_flat @ A + t * c + state @ S + b) reshaped [B,H,D]
      vjp = ((1 - v^2) * cotangent)_flat @ A^T
  A, c, S, b are seeded; they are also written to test/rtc_analytic.npz so that a
  numpy reference (policies/export/rtc_reference.py) evaluates the same field.
- test/rtc_analytic_eps{,_vjp,_prefix}.onnx: a diffusion noise network built on the
  same field (ports `timestep` int64, `eps`; see analytic_eps_graphs), for the DDIM
  sampler tests.

Both VJP graphs are checked against central finite differences of the forward
graph with ONNX Runtime (float64 reference on the analytic model); the script
exits non-zero when they disagree.

    .venv/bin/python policies/export/make_rtc_models.py \
        --expert policies/models/sim_reach_flow_expert.onnx --out-dir policies/models
"""

import argparse
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnx_graph import const, save, tensor
from rtc_reference import cosine_alpha_bar
from train_sim_flow import expert_input_nodes

ANALYTIC_H, ANALYTIC_D, ANALYTIC_S = 6, 3, 3
# The diffusion twin's schedule: squared cosine over 100 training timesteps.
ANALYTIC_TRAIN_STEPS = 100


def initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def expert_vjp_graph(expert_path, out_path):
    """The expert's forward pass plus its hand-derived backward pass to x."""
    model = onnx.load(expert_path)
    weights = initializers(model)
    layers = sorted(k for k in weights if k.startswith("exp_w"))
    if len(layers) != 3:
        raise SystemExit(f"{expert_path}: expected 3 dense layers, found {layers}")
    w = [weights[f"exp_w{i}"] for i in range(3)]
    b = [weights[f"exp_b{i}"] for i in range(3)]
    horizon, dim = (int(v) for v in weights["chunk_shape"][1:])
    features = w[0].shape[0] - horizon * dim - weights["time_freqs"].shape[1] * 2
    # The expert's own forward pass, its time frequencies read from the model.
    nodes, time_inits = expert_input_nodes("z", freqs=weights["time_freqs"])
    nodes += [
        helper.make_node("Gemm", ["z", "w0", "b0"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w1", "b1"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["h2"]),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["v_flat"]),
        helper.make_node("Reshape", ["v_flat", "chunk_shape"], ["velocity"]),
        # Backward: ReLU passes the gradient where its output is positive.
        helper.make_node("Flatten", ["cotangent"], ["u_flat"], axis=1),
        helper.make_node("MatMul", ["u_flat", "w2_t"], ["g2_pre"]),
        helper.make_node("Greater", ["h2", "zero"], ["on2"]),
        helper.make_node("Cast", ["on2"], ["on2_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["g2_pre", "on2_f"], ["g2"]),
        helper.make_node("MatMul", ["g2", "w1_t"], ["g1_pre"]),
        helper.make_node("Greater", ["h1", "zero"], ["on1"]),
        helper.make_node("Cast", ["on1"], ["on1_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["g1_pre", "on1_f"], ["g1"]),
        helper.make_node("MatMul", ["g1", "w0_t"], ["gz"]),
        helper.make_node("Slice", ["gz", "x_start", "x_end", "one_axis"], ["gx_flat"]),
        helper.make_node("Reshape", ["gx_flat", "chunk_shape"], ["vjp"]),
    ]
    inits = [const(f"w{i}", w[i]) for i in range(3)] + [const(f"b{i}", b[i]) for i in range(3)]
    inits += [const(f"w{i}_t", np.ascontiguousarray(w[i].T)) for i in range(3)]
    inits += time_inits + [
        const("chunk_shape", weights["chunk_shape"]),
        const("zero", np.array(0.0, np.float32)),
        const("x_start", np.array([features], np.int64)),
        const("x_end", np.array([features + horizon * dim], np.int64)),
        const("one_axis", np.array([1], np.int64)),
    ]
    graph = helper.make_graph(
        nodes, "sim_reach_flow_expert_vjp",
        [tensor("obs_features", ["batch", features]), tensor("noisy_actions", ["batch", horizon, dim]),
         tensor("time", ["batch"]), tensor("cotangent", ["batch", horizon, dim])],
        [tensor("velocity", ["batch", horizon, dim]), tensor("vjp", ["batch", horizon, dim])],
        inits,
    )
    metadata = {p.key: p.value for p in model.metadata_props}
    save(graph, out_path, {**metadata, "form": "expert_vjp", "source": os.path.basename(expert_path)})
    rng = np.random.default_rng(3)
    feeds = {
        "obs_features": np.abs(rng.normal(size=(2, features))).astype(np.float32),
        "noisy_actions": rng.normal(size=(2, horizon, dim)).astype(np.float32),
        "time": np.array([0.7, 0.2], np.float32),
    }
    forward = ort.InferenceSession(expert_path, providers=["CPUExecutionProvider"])
    # ReLU kinks: a small step, so that few pre-activations change sign.
    worst = check_vjp(forward, ort.InferenceSession(out_path, providers=["CPUExecutionProvider"]), feeds, rng,
                      eps=1e-3)
    return worst


def check_vjp(forward, vjp, feeds, rng, eps):
    """Central differences of <cotangent, v(x)> along random directions vs <vjp, direction>;
    also checks that the VJP graph's velocity is the forward graph's. Returns the worst
    relative error."""
    x = feeds["noisy_actions"]
    u = rng.normal(size=x.shape).astype(np.float32)
    out = vjp.run(None, {**feeds, "cotangent": u})
    velocity = forward.run(None, feeds)[0]
    if np.abs(out[0] - velocity).max() > 1e-5:
        raise SystemExit("the VJP graph's velocity differs from the forward graph's")
    numeric, analytic = [], []
    for _ in range(16):
        direction = rng.normal(size=x.shape).astype(np.float32)
        plus = forward.run(None, {**feeds, "noisy_actions": (x + eps * direction).astype(np.float32)})[0]
        minus = forward.run(None, {**feeds, "noisy_actions": (x - eps * direction).astype(np.float32)})[0]
        numeric.append(((plus - minus) * u).sum(axis=(1, 2)) / (2 * eps))
        analytic.append((out[1] * direction).sum(axis=(1, 2)))
    numeric, analytic = np.array(numeric), np.array(analytic)
    # Relative to the typical size of a directional derivative.
    worst = float(np.abs(numeric - analytic).max() / np.sqrt((analytic**2).mean()))
    if worst > 2e-2:
        raise SystemExit(f"VJP disagrees with finite differences: relative error {worst:.2e}")
    return worst


def field_nodes():
    """v_flat = tanh(x_flat @ A + time c + state @ S + b), from `noisy_actions`, `time`, `state`."""
    return [
        helper.make_node("Flatten", ["noisy_actions"], ["x_flat"], axis=1),
        helper.make_node("MatMul", ["x_flat", "A"], ["xa"]),
        helper.make_node("Unsqueeze", ["time", "time_axes"], ["time_col"]),
        helper.make_node("MatMul", ["time_col", "c"], ["tc"]),
        helper.make_node("MatMul", ["state", "S"], ["sx"]),
        helper.make_node("Sum", ["xa", "tc", "sx", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["v_flat"]),
    ]


def field_vjp_nodes():
    """gx = ((1 - v^2) * u)_flat @ A^T, u the flattened `cotangent`."""
    return [
        helper.make_node("Flatten", ["cotangent"], ["u_flat"], axis=1),
        helper.make_node("Mul", ["v_flat", "v_flat"], ["v2"]),
        helper.make_node("Sub", ["one", "v2"], ["dtanh"]),
        helper.make_node("Mul", ["u_flat", "dtanh"], ["g"]),
        helper.make_node("MatMul", ["g", "A_t"], ["gx"]),
    ]


def field_inits(params):
    a, c, sm, b = params
    h, d = ANALYTIC_H, ANALYTIC_D
    return [const("A", a), const("c", c), const("S", sm), const("b", b),
            const("time_axes", np.array([1], np.int64)), const("chunk_shape", np.array([-1, h, d], np.int64))]


def field_vjp_inits(params):
    return [const("A_t", np.ascontiguousarray(params[0].T)), const("one", np.array(1.0, np.float32))]


def analytic_graphs(out_dir, params):
    """test/rtc_analytic{,_vjp}.onnx: the flow field v = tanh(x_flat @ A + t c + state @ S + b)."""
    h, d, s = ANALYTIC_H, ANALYTIC_D, ANALYTIC_S
    forward_nodes = field_nodes() + [helper.make_node("Reshape", ["v_flat", "chunk_shape"], ["velocity"])]
    inits = field_inits(params)
    inputs = [tensor("state", ["batch", s]), tensor("noisy_actions", ["batch", h, d]), tensor("time", ["batch"])]
    velocity = tensor("velocity", ["batch", h, d])
    paths = {k: os.path.join(out_dir, f"rtc_analytic{k}.onnx") for k in ("", "_vjp")}
    save(helper.make_graph(forward_nodes, "rtc_analytic", inputs, [velocity], inits), paths[""])
    vjp_nodes = forward_nodes + field_vjp_nodes() + [
        helper.make_node("Reshape", ["gx", "chunk_shape"], ["vjp"]),
    ]
    save(helper.make_graph(vjp_nodes, "rtc_analytic_vjp", inputs + [tensor("cotangent", ["batch", h, d])],
                           [velocity, tensor("vjp", ["batch", h, d])], inits + field_vjp_inits(params)),
         paths["_vjp"])
    return paths


def analytic_eps_graphs(out_dir, params):
    """test/rtc_analytic_eps{,_vjp,_prefix}.onnx: a noise network shaped like the exact one
    for data centred on a state-dependent mean m (Tweedie: x0_hat = sqrt(ab) x + (1 - ab) m),
        eps(x, k) = sqrt(1 - ab_k) (x - sqrt(ab_k) m),  m = tanh(x_flat @ A + (k / 100) c + state @ S + b),
    ab_k from the 100-step squared-cosine schedule at the int64 timestep k. Its VJP:
        sqrt(1 - ab) (u - sqrt(ab) ((1 - m^2) u)_flat @ A^T).
    The _prefix form takes `prefix_mask` [B, H] and predicts no noise on the marked rows."""
    h, d, s = ANALYTIC_H, ANALYTIC_D, ANALYTIC_S
    alpha_bar = cosine_alpha_bar(ANALYTIC_TRAIN_STEPS)
    forward_nodes = [
        helper.make_node("Cast", ["timestep"], ["k_float"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["k_float", "time_scale"], ["time"]),
        *field_nodes(),
        # sqrt(ab_k) and sqrt(1 - ab_k) as [B, 1] columns.
        helper.make_node("Gather", ["sqrt_ab", "timestep"], ["sa"]),
        helper.make_node("Gather", ["sqrt_1mab", "timestep"], ["sb"]),
        helper.make_node("Unsqueeze", ["sa", "time_axes"], ["sa_col"]),
        helper.make_node("Unsqueeze", ["sb", "time_axes"], ["sb_col"]),
        helper.make_node("Mul", ["v_flat", "sa_col"], ["m_scaled"]),
        helper.make_node("Sub", ["x_flat", "m_scaled"], ["gap"]),
        helper.make_node("Mul", ["gap", "sb_col"], ["eps_flat"]),
    ]
    inits = field_inits(params) + [
        const("time_scale", np.array(1.0 / ANALYTIC_TRAIN_STEPS, np.float32)),
        const("sqrt_ab", np.sqrt(alpha_bar).astype(np.float32)),
        const("sqrt_1mab", np.sqrt(1.0 - alpha_bar).astype(np.float32)),
    ]
    timestep = helper.make_tensor_value_info("timestep", onnx.TensorProto.INT64, ["batch"])
    inputs = [tensor("state", ["batch", s]), tensor("noisy_actions", ["batch", h, d]), timestep]
    eps = tensor("eps", ["batch", h, d])
    paths = {k: os.path.join(out_dir, f"rtc_analytic_eps{k}.onnx") for k in ("", "_vjp", "_prefix")}
    reshape = [helper.make_node("Reshape", ["eps_flat", "chunk_shape"], ["eps"])]
    save(helper.make_graph(forward_nodes + reshape, "rtc_analytic_eps", inputs, [eps], inits), paths[""])
    vjp_nodes = forward_nodes + reshape + field_vjp_nodes() + [
        helper.make_node("Mul", ["gx", "sa_col"], ["gx_scaled"]),
        helper.make_node("Sub", ["u_flat", "gx_scaled"], ["inner"]),
        helper.make_node("Mul", ["inner", "sb_col"], ["vjp_flat"]),
        helper.make_node("Reshape", ["vjp_flat", "chunk_shape"], ["vjp"]),
    ]
    save(helper.make_graph(vjp_nodes, "rtc_analytic_eps_vjp", inputs + [tensor("cotangent", ["batch", h, d])],
                           [eps, tensor("vjp", ["batch", h, d])], inits + field_vjp_inits(params)),
         paths["_vjp"])
    prefix_nodes = forward_nodes + [
        helper.make_node("Reshape", ["eps_flat", "chunk_shape"], ["eps_full"]),
        helper.make_node("Unsqueeze", ["prefix_mask", "last_axis"], ["mask_col"]),
        helper.make_node("Sub", ["one", "mask_col"], ["keep"]),
        helper.make_node("Mul", ["eps_full", "keep"], ["eps"]),
    ]
    save(helper.make_graph(prefix_nodes, "rtc_analytic_eps_prefix", inputs + [tensor("prefix_mask", ["batch", h])],
                           [eps], inits + [const("last_axis", np.array([2], np.int64)),
                                           const("one", np.array(1.0, np.float32))]),
         paths["_prefix"])
    return paths


def analytic_models(out_dir):
    """The flow field and its diffusion twin, from the same seeded A, c, S, b."""
    h, d, s = ANALYTIC_H, ANALYTIC_D, ANALYTIC_S
    rng = np.random.default_rng(11)
    a = (rng.normal(size=(h * d, h * d)) * 0.6 / np.sqrt(h * d)).astype(np.float32)
    c = rng.normal(size=(1, h * d)).astype(np.float32)
    sm = rng.normal(size=(s, h * d)).astype(np.float32)
    b = (rng.normal(size=(h * d,)) * 0.1).astype(np.float32)
    np.savez(os.path.join(out_dir, "rtc_analytic.npz"), A=a, c=c, S=sm, b=b)
    params = (a, c, sm, b)
    flow = analytic_graphs(out_dir, params)
    eps = analytic_eps_graphs(out_dir, params)
    worst = 0.0
    for names, time in [((flow[""], flow["_vjp"]), np.array([1.0, 0.5, 0.1], np.float32)),
                        ((eps[""], eps["_vjp"]), np.array([90, 40, 0], np.int64))]:
        feeds = {"state": rng.normal(size=(3, s)).astype(np.float32),
                 "noisy_actions": rng.normal(size=(3, h, d)).astype(np.float32),
                 "time" if time.dtype == np.float32 else "timestep": time}
        sessions = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in names]
        worst = max(worst, check_vjp(*sessions, feeds, rng, eps=1e-2))
    return [*flow.values(), *eps.values()], worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expert", default="policies/models/sim_reach_flow_expert.onnx")
    parser.add_argument("--out-dir", default="policies/models")
    args = parser.parse_args()
    out = os.path.join(args.out_dir, "sim_reach_flow_expert_vjp.onnx")
    worst = expert_vjp_graph(args.expert, out)
    print(f"{out}: VJP vs finite differences, worst relative error {worst:.1e}")
    test_dir = os.path.join(args.out_dir, "test")
    paths, worst = analytic_models(test_dir)
    print(f"{', '.join(paths)}: VJP vs finite differences, worst relative error {worst:.1e}")


if __name__ == "__main__":
    main()
