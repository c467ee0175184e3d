"""A Python reference for reflex's generative action samplers (flow matching and
DDIM), written from the published algorithms with onnxruntime + numpy only
(CPUExecutionProvider, 1 intra-op thread). The Rust tests compare against it.

    sampler_reference.py flow --model M.onnx [--prefix P.onnx] --inputs DIR --noise N.npy --steps 10 --out OUT.npy
    sampler_reference.py ddim --model M.onnx --inputs DIR --noise N.npy --steps 8 \\
        (--schedule squared_cosine|linear|scaled_linear --train-steps 100 [--beta-start 1e-4 --beta-end 0.02]
         | --alphas-cumprod F.npy) [--clip-sample 1.0] [--no-alpha-to-one] [--steps-offset 0] --out OUT.npy
    sampler_reference.py schedule --schedule S --train-steps T [--beta-start B0 --beta-end B1] --out F.npy
    sampler_reference.py bench [--kind flow|ddim] --model M.onnx [--prefix P.onnx] --inputs DIR --noise N.npy
        --steps 10 --repeat 200 [ddim schedule flags] [--full-graph-only]
    sampler_reference.py bench-graph --model M.onnx --inputs DIR --noise N.npy [--repeat 200]

DIR holds one `<input name>.npy` per observation input: the prefix graph's inputs in
split form, otherwise the model's inputs other than noisy_actions / time / timestep.
Noise is float32 [B,H,D]. If the observations have batch 1 and the noise batch B > 1,
the observations (single form) or the prefix outputs (split form) are tiled to B.

Flow (openpi pi0 convention: t = 1 is noise, t = 0 is data), all float32:
    dt = float32(-1 / steps); x = noise; t = float32(1)
    while t >= -dt / 2: v = model(obs, x, time=full([B], t)); x = x + dt * v; t = t + dt

DDIM (diffusers DDIMScheduler, eta = 0, epsilon prediction, "leading" spacing):
    alphas_cumprod: betas and cumprod(1 - betas) in float64, then cast to float32.
    step_ratio = T // steps; timesteps = arange(steps)[::-1] * step_ratio + steps_offset
    per step (coefficients in float64 from the float32 table, each cast to float32):
        ab_t = float64(ac[t]); ab_prev = float64(ac[t - step_ratio]) if t - step_ratio >= 0
                                         else (1.0 if set_alpha_to_one else float64(ac[0]))
        a_t = f32(sqrt(ab_t)); b_t = f32(sqrt(1 - ab_t)); a_p = f32(sqrt(ab_prev)); b_p = f32(sqrt(1 - ab_prev))
    then in float32, in this order:
        eps = model(obs, x, timestep=full([B], t, int64))
        x0 = (x - b_t * eps) / a_t; [x0 = clip(x0, -clip, clip)]
        x = a_p * x0 + b_p * eps
"""

import argparse
import json
import math
import os
import time as _time

import numpy as np
import onnxruntime as ort

STEP_INPUTS = {"noisy_actions", "time", "timestep"}


# ----------------------------------------------------------------------------- sessions and inputs


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # REFLEX_REFERENCE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider times the
    # same loop on a GPU (onnxruntime-gpu); the parity tests use the CPU.
    providers = os.environ.get("REFLEX_REFERENCE_PROVIDERS", "CPUExecutionProvider").split(",")
    return ort.InferenceSession(path, options, providers=providers)


def as_session(model):
    return session(model) if isinstance(model, str) else model


def obs_names(sess: ort.InferenceSession) -> list:
    return [i.name for i in sess.get_inputs() if i.name not in STEP_INPUTS]


def load_inputs(directory: str, names: list) -> dict:
    missing = [n for n in names if not os.path.exists(os.path.join(directory, n + ".npy"))]
    if missing:
        raise SystemExit(f"{directory} lacks {', '.join(n + '.npy' for n in missing)}")
    return {n: np.load(os.path.join(directory, n + ".npy")) for n in names}


def tile_to(feeds: dict, batch: int) -> dict:
    """Tile batch-1 arrays along axis 0 to `batch`; others must already match."""
    out = {}
    for name, value in feeds.items():
        if value.shape[0] == batch:
            out[name] = value
        elif value.shape[0] == 1:
            out[name] = np.repeat(value, batch, axis=0)
        else:
            raise ValueError(f"{name} has batch {value.shape[0]}, noise has {batch}")
    return out


# ----------------------------------------------------------------------------- flow matching


def flow_cache(model, prefix, obs: dict, batch: int) -> dict:
    """The per-chunk constant feeds of the velocity graph: the observations (single
    form) or the prefix graph's outputs by name (split form), tiled to `batch`."""
    if prefix is None:
        return tile_to(obs, batch)
    prefix = as_session(prefix)
    names = [o.name for o in prefix.get_outputs()]
    return tile_to(dict(zip(names, prefix.run(names, obs))), batch)


def flow_sample(model, obs: dict, noise: np.ndarray, steps: int = 10, prefix=None) -> np.ndarray:
    """Euler integration of the velocity field from t = 1 (noise) to t = 0 (data).

    model / prefix: ONNX file paths or sessions (prefix given = split form).
    obs: observation inputs by name (prefix inputs in split form). noise: float32 [B,H,D].
    """
    model = as_session(model)
    x = np.asarray(noise, np.float32)
    batch = x.shape[0]
    feeds = flow_cache(model, prefix, obs, batch)
    dt = np.float32(-1.0 / steps)
    t = np.float32(1.0)
    out = ["velocity"] if _has_output(model, "velocity") else None
    while t >= -dt / np.float32(2):
        feeds["noisy_actions"] = x
        feeds["time"] = np.full([batch], t, np.float32)
        v = model.run(out, feeds)[0]
        x = (x + dt * v).astype(np.float32)
        t = np.float32(t + dt)
    return x


def _has_output(sess, name):
    return any(o.name == name for o in sess.get_outputs())


def flow_graph_runs(steps: int, split: bool) -> int:
    dt = np.float32(-1.0 / steps)
    t, n = np.float32(1.0), 0
    while t >= -dt / np.float32(2):
        n, t = n + 1, np.float32(t + dt)
    return n + (1 if split else 0)


# ----------------------------------------------------------------------------- DDIM


def betas_for(schedule: str, train_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Float64 betas of a named diffusers schedule."""
    if schedule == "squared_cosine":  # diffusers "squaredcos_cap_v2"
        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / train_steps) / abar(i / train_steps), 0.999)
                         for i in range(train_steps)], np.float64)
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, train_steps, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, train_steps, dtype=np.float64) ** 2
    raise ValueError(f"unknown schedule {schedule!r}")


def alphas_cumprod(schedule: str, train_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """cumprod(1 - betas) in float64, cast to float32 [T]."""
    return np.cumprod(1.0 - betas_for(schedule, train_steps, beta_start, beta_end)).astype(np.float32)


def ddim_timesteps(train_steps: int, steps: int, steps_offset: int = 0):
    """("leading" spacing) timesteps, high to low, and the step ratio."""
    if not 0 < steps <= train_steps:
        raise ValueError(f"steps must be in 1..{train_steps}, got {steps}")
    ratio = train_steps // steps
    return (np.arange(steps, dtype=np.int64) * ratio)[::-1] + steps_offset, ratio


def ddim_coefficients(ac: np.ndarray, t: int, ratio: int, set_alpha_to_one: bool = True):
    """float32 (sqrt(ab_t), sqrt(1-ab_t), sqrt(ab_prev), sqrt(1-ab_prev)), each computed in float64."""
    ab_t = float(ac[t])
    prev = t - ratio
    ab_prev = float(ac[prev]) if prev >= 0 else (1.0 if set_alpha_to_one else float(ac[0]))
    return tuple(np.float32(math.sqrt(v)) for v in (ab_t, 1.0 - ab_t, ab_prev, 1.0 - ab_prev))


def ddim_plan(ac: np.ndarray, steps: int, set_alpha_to_one: bool = True, steps_offset: int = 0):
    """Each step's timestep and coefficients, computed once (as reflex does at load)."""
    ac = np.asarray(ac, np.float32)
    timesteps, ratio = ddim_timesteps(len(ac), steps, steps_offset)
    return [(int(t), ddim_coefficients(ac, int(t), ratio, set_alpha_to_one)) for t in timesteps]


def ddim_sample(model, obs: dict, noise: np.ndarray, plan, clip_sample=None) -> np.ndarray:
    """Deterministic DDIM (eta = 0) with an epsilon-predicting model.

    plan: ddim_plan(...); clip_sample: None or the clip range of x0.
    """
    model = as_session(model)
    x = np.asarray(noise, np.float32)
    batch = x.shape[0]
    feeds = tile_to(obs, batch)
    out = ["eps"] if _has_output(model, "eps") else None
    for t, (a_t, b_t, a_p, b_p) in plan:
        feeds["noisy_actions"] = x
        feeds["timestep"] = np.full([batch], t, np.int64)
        eps = model.run(out, feeds)[0].astype(np.float32)
        x0 = (x - b_t * eps) / a_t
        if clip_sample is not None:
            x0 = np.clip(x0, np.float32(-clip_sample), np.float32(clip_sample))
        x = (a_p * x0 + b_p * eps).astype(np.float32)
    return x


# ----------------------------------------------------------------------------- CLI


def schedule_from(args) -> np.ndarray:
    if args.alphas_cumprod:
        return np.load(args.alphas_cumprod).astype(np.float32)
    if not args.schedule:
        raise SystemExit("give --schedule or --alphas-cumprod")
    return alphas_cumprod(args.schedule, args.train_steps, args.beta_start, args.beta_end)


def add_schedule_flags(p, required=False):
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--schedule", choices=["squared_cosine", "linear", "scaled_linear"])
    group.add_argument("--alphas-cumprod", help="float32 [T] .npy instead of a named schedule")
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--beta-start", type=float, default=1e-4)
    p.add_argument("--beta-end", type=float, default=0.02)
    p.add_argument("--clip-sample", type=float, help="clip the x0 estimate to [-C, C]")
    p.add_argument("--no-alpha-to-one", action="store_true", help="final step uses alphas_cumprod[0], not 1")
    p.add_argument("--steps-offset", type=int, default=0)


def sampler_setup(args):
    """(kind, model session, prefix session or None, obs dict, noise)."""
    model = session(args.model)
    prefix = session(args.prefix) if getattr(args, "prefix", None) else None
    names = [i.name for i in prefix.get_inputs()] if prefix else obs_names(model)
    noise = np.load(args.noise).astype(np.float32)
    kind = getattr(args, "kind", None) or ("ddim" if any(i.name == "timestep" for i in model.get_inputs()) else "flow")
    return kind, model, prefix, load_inputs(args.inputs, names), noise


def run_chunk(args, kind, model, prefix, obs, noise, plan):
    if kind == "flow":
        return flow_sample(model, obs, noise, args.steps, prefix)
    return ddim_sample(model, obs, noise, plan, args.clip_sample)


def plan_from(args, kind):
    """The DDIM plan for `args` (None for flow), made once per run."""
    if kind != "ddim":
        return None
    return ddim_plan(schedule_from(args), args.steps, not args.no_alpha_to_one, args.steps_offset)


def step_feeds(model, prefix, obs, noise, kind):
    """The feeds of one velocity/eps graph run (mid-chunk time/timestep)."""
    batch = noise.shape[0]
    feeds = flow_cache(model, prefix, obs, batch) if kind == "flow" else tile_to(obs, batch)
    feeds["noisy_actions"] = noise
    names = {i.name for i in model.get_inputs()}
    if "time" in names:
        feeds["time"] = np.full([batch], 0.5, np.float32)
    if "timestep" in names:
        feeds["timestep"] = np.full([batch], 1, np.int64)
    return feeds


def timings(fn, repeat: int, warmup: int = 10) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = _time.perf_counter_ns()
        fn()
        samples.append((_time.perf_counter_ns() - start) / 1e3)
    return {"median_us": float(np.median(samples)), "p90_us": float(np.percentile(samples, 90))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("flow", help="flow-matching Euler sampling")
    p.add_argument("--model", required=True, help="velocity graph (single form) or expert step graph")
    p.add_argument("--prefix", help="prefix graph (split form)")
    p.add_argument("--inputs", required=True)
    p.add_argument("--noise", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", required=True)

    p = sub.add_parser("ddim", help="DDIM sampling with an epsilon model")
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--noise", required=True)
    p.add_argument("--steps", type=int, default=8)
    add_schedule_flags(p, required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("schedule", help="write alphas_cumprod (float32 [T])")
    p.add_argument("--schedule", required=True, choices=["squared_cosine", "linear", "scaled_linear"])
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--beta-start", type=float, default=1e-4)
    p.add_argument("--beta-end", type=float, default=0.02)
    p.add_argument("--out", required=True)

    p = sub.add_parser("bench", help="time the whole per-chunk sampling loop")
    p.add_argument("--kind", choices=["flow", "ddim"], help="default: ddim if the model takes `timestep`")
    p.add_argument("--model", required=True)
    p.add_argument("--prefix")
    p.add_argument("--inputs", required=True)
    p.add_argument("--noise", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=200)
    add_schedule_flags(p)
    p.add_argument("--full-graph-only", action="store_true",
                   help="time one run of --model (velocity/eps graph) instead of the whole loop")

    p = sub.add_parser("bench-graph", help="median latency of one graph run")
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--noise", required=True)
    p.add_argument("--repeat", type=int, default=200)

    args = parser.parse_args()
    if args.command == "schedule":
        ac = alphas_cumprod(args.schedule, args.train_steps, args.beta_start, args.beta_end)
        np.save(args.out, ac)
        print(json.dumps({"out": args.out, "first": float(ac[0]), "last": float(ac[-1]), "len": len(ac)}))
    elif args.command in ("flow", "ddim"):
        kind, model, prefix, obs, noise = sampler_setup(args)
        x = run_chunk(args, args.command, model, prefix, obs, noise, plan_from(args, args.command))
        np.save(args.out, x)
        print(json.dumps({"out": args.out, "shape": list(x.shape), "finite": bool(np.isfinite(x).all())}))
    elif args.command == "bench":
        kind, model, prefix, obs, noise = sampler_setup(args)
        if args.full_graph_only:
            feeds = step_feeds(model, prefix, obs, noise, kind)
            result = timings(lambda: model.run(None, feeds), args.repeat)
            result["graph_runs_per_chunk"] = 1
        else:
            plan = plan_from(args, kind)
            result = timings(lambda: run_chunk(args, kind, model, prefix, obs, noise, plan), args.repeat)
            result["graph_runs_per_chunk"] = flow_graph_runs(args.steps, prefix is not None) \
                if kind == "flow" else args.steps
        result["kind"] = kind
        print(json.dumps(result))
    elif args.command == "bench-graph":
        model = session(args.model)
        noise = np.load(args.noise).astype(np.float32)
        kind = "ddim" if any(i.name == "timestep" for i in model.get_inputs()) else "flow"
        feeds = step_feeds(model, None, load_inputs(args.inputs, obs_names(model)), noise, kind)
        print(json.dumps(timings(lambda: model.run(None, feeds), args.repeat)))


if __name__ == "__main__":
    main()
