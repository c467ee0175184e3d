"""Guided real-time chunking written from the paper (Black, Galliker, Levine 2025,
arXiv 2506.07339, Algorithm 1), in numpy float64, for the analytic velocity field
of policies/models/test/rtc_analytic.npz. Independent of reflex's sampler: the
paper's convention throughout (tau = 0 noise, tau = 1 data, v toward the data),
the field converted from the model's openpi convention (t = 1 noise):

    v_paper(A, tau) = -v_model(A, t = 1 - tau)
    v_model(x, t)   = tanh(x_flat @ A + t c + state @ S + b)

Per step, with n steps and tau = 0, 1/n, ..., 1 - 1/n:
    f(A')  = A' + (1 - tau) v_paper(A', tau)            (the denoised chunk)
    e      = (Y - f(A_tau)) * W                         (W: the soft prefix mask)
    g      = e^T df/dA'                                 (VJP, here in closed form)
    r2     = (1 - tau)^2 / (tau^2 + (1 - tau)^2)
    v      = v_paper(A_tau, tau) + min(beta, (1 - tau) / (tau r2)) g     (beta at tau = 0)
    A      = A + v / n
Mask (the paper's soft mask): 1 for i < d, c_i (e^c_i - 1) / (e - 1) with
c_i = (H - s - i) / (H - s - d + 1) for d <= i < H - s, 0 beyond ("exp"; "linear"
drops the exponential map).

With --sampler ddim the model is the diffusion noise network built on the same
field (make_rtc_models.py's analytic_eps_graphs), at timestep k of T = 100:
    eps(x, k) = sqrt(1 - ab_k) (x - sqrt(ab_k) field(x, k / T))
sampled with deterministic DDIM (Song, Meng, Ermon 2021, eq. 12 with sigma = 0)
on the squared-cosine schedule (Nichol & Dhariwal 2021: alpha_bar(t) = f(t) / f(0),
f(t) = cos^2((t / T + 0.008) / 1.008 * pi / 2), betas clipped at 0.999) over the
timesteps T/n apart, and guided by PiGDM (Song, Vahdat, Mardani, Kautz 2023) in the classifier-guidance
form of Dhariwal & Nichol (eq. 14):
    x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
    e      = (Y - x0_hat) * W
    g      = e^T d x0_hat / d x_t = (e - sqrt(1 - ab_t) J_eps^T e) / sqrt(ab_t)
    score  = min(beta, 1 / r2) g,   r2 = 1 - ab_t
    eps'   = eps - sqrt(1 - ab_t) score
    x_prev = sqrt(ab_prev) (x_t - sqrt(1 - ab_t) eps') / sqrt(ab_t) + sqrt(1 - ab_prev) eps'
with ab_prev = 1 after the last timestep.

--check-vjp MODEL also compares an exported VJP graph with float64 central
differences of this numpy field and exits non-zero beyond 1e-4.

    python rtc_reference.py --params rtc_analytic.npz --state 0.1,0.5,-0.3 \
        --noise noise.npy --previous plan.npy --d 2 --s 2 --out actions.npy
"""

import argparse
import math

import numpy as np


def field(p, x, t, state, time_scale=1.0):
    """The model's velocity (openpi convention), x [H, D] -> [H, D], float64."""
    h, d = x.shape
    pre = x.reshape(-1) @ p["A"] + t * time_scale * p["c"][0] + state @ p["S"] + p["b"]
    return np.tanh(pre).reshape(h, d)


def field_vjp(p, x, t, state, u, time_scale=1.0):
    """(d v_model / d x)^T u in closed form."""
    v = field(p, x, t, state, time_scale).reshape(-1)
    return (((1 - v * v) * u.reshape(-1)) @ p["A"].T).reshape(x.shape)


def mask(h, d, s, schedule):
    end = h - s
    start = min(d, end)
    w = np.zeros(h)
    for i in range(h):
        if i >= end:
            continue
        if i < start:
            w[i] = 1.0
            continue
        c = (end - i) / (end - start + 1)
        w[i] = c * math.expm1(c) / (math.e - 1) if schedule == "exp" else c
    return w


def guided(p, state, noise, previous, d, s, steps, beta, schedule):
    h, dim = noise.shape
    w = mask(h, d, s, schedule)[:, None]
    y = np.zeros((h, dim))
    y[: len(previous)] = previous
    w[len(previous):] = 0.0
    a = noise.astype(np.float64)
    for k in range(steps):
        tau = k / steps
        t = 1.0 - tau
        v = -field(p, a, t, state)
        denoised = a + (1 - tau) * v
        e = (y - denoised) * w
        # f(A') = A' - (1 - tau) v_model(A', 1 - tau): its VJP is e - (1 - tau) J^T e.
        g = e - (1 - tau) * field_vjp(p, a, t, state, e)
        if tau == 0:
            weight = beta
        else:
            r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
            weight = min(beta, (1 - tau) / (tau * r2))
        a = a + (v + weight * g) / steps
    return a


def cosine_alpha_bar(train_steps):
    """Nichol & Dhariwal's squared-cosine schedule: alpha_bar at t = 0 .. T-1."""
    f = lambda t: math.cos((t / train_steps + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(train_steps)]
    return np.cumprod(1.0 - np.array(betas))


def eps_model(p, ab, x, k, state):
    m = field(p, x, k, state, 1.0 / len(ab))
    return math.sqrt(1 - ab[k]) * (x - math.sqrt(ab[k]) * m)


def eps_model_vjp(p, ab, x, k, state, u):
    return math.sqrt(1 - ab[k]) * (u - math.sqrt(ab[k]) * field_vjp(p, x, k, state, u, 1.0 / len(ab)))


def guided_ddim(p, state, noise, previous, d, s, steps, beta, schedule, train_steps):
    h, dim = noise.shape
    w = mask(h, d, s, schedule)[:, None]
    y = np.zeros((h, dim))
    y[: len(previous)] = previous
    w[len(previous):] = 0.0
    ab = cosine_alpha_bar(train_steps)
    stride = train_steps // steps
    x = noise.astype(np.float64)
    for k in range(stride * (steps - 1), -1, -stride):
        ab_t = ab[k]
        ab_prev = ab[k - stride] if k >= stride else 1.0
        eps = eps_model(p, ab, x, k, state)
        x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        e = (y - x0) * w
        g = (e - math.sqrt(1 - ab_t) * eps_model_vjp(p, ab, x, k, state, e)) / math.sqrt(ab_t)
        score = min(beta, 1.0 / (1.0 - ab_t)) * g
        eps = eps - math.sqrt(1 - ab_t) * score
        x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return x


def check_vjp(path, p, rng, train_steps=None):
    """The flow field's VJP graph, or with train_steps the eps network's."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    h, dim = p["A"].shape[0] // 3, 3
    ab = cosine_alpha_bar(train_steps) if train_steps else None
    worst = 0.0
    for _ in range(5):
        x = rng.normal(size=(h, dim))
        state = rng.normal(size=3)
        u = rng.normal(size=(h, dim))
        if ab is None:
            t = float(rng.uniform(0.05, 1.0))
            time = {"time": np.array([t], np.float32)}
            model = lambda x: field(p, x, t, state)
        else:
            k = int(rng.integers(0, train_steps))
            time = {"timestep": np.array([k], np.int64)}
            model = lambda x: eps_model(p, ab, x, k, state)
        out = session.run(None, {"state": state[None].astype(np.float32),
                                 "noisy_actions": x[None].astype(np.float32),
                                 "cotangent": u[None].astype(np.float32), **time})
        vjp = dict(zip([o.name for o in session.get_outputs()], out))["vjp"][0]
        # Central differences of <u, v(x)> along each coordinate.
        eps = 1e-6
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            step = np.zeros_like(x)
            step[i] = eps
            numeric[i] = ((model(x + step) - model(x - step)) * u).sum() / (2 * eps)
        worst = max(worst, float(np.abs(vjp - numeric).max()))
    if worst > 1e-4:
        raise SystemExit(f"{path}: VJP vs finite differences {worst:.2e}")
    print(f"vjp vs finite differences: {worst:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", required=True)
    parser.add_argument("--state", help="comma-separated joint positions")
    parser.add_argument("--noise", help=".npy [1, H, D] or [H, D]")
    parser.add_argument("--previous", help=".npy [rows, D]: the plan, in the model's space")
    parser.add_argument("--d", type=int, default=0)
    parser.add_argument("--s", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--beta", type=float, default=5.0)
    parser.add_argument("--schedule", default="exp", choices=["exp", "linear"])
    parser.add_argument("--sampler", default="flow", choices=["flow", "ddim"])
    parser.add_argument("--train-steps", type=int, default=100, help="ddim: the schedule's T")
    parser.add_argument("--out")
    parser.add_argument("--check-vjp", metavar="MODEL")
    args = parser.parse_args()
    p = dict(np.load(args.params))
    p = {k: v.astype(np.float64) for k, v in p.items()}
    if args.check_vjp:
        check_vjp(args.check_vjp, p, np.random.default_rng(0),
                  args.train_steps if args.sampler == "ddim" else None)
    if args.out:
        state = np.array([float(v) for v in args.state.split(",")])
        noise = np.load(args.noise).astype(np.float64).reshape(-1, 3)
        previous = np.load(args.previous).astype(np.float64)
        if args.sampler == "ddim":
            out = guided_ddim(p, state, noise, previous, args.d, args.s, args.steps, args.beta,
                              args.schedule, args.train_steps)
        else:
            out = guided(p, state, noise, previous, args.d, args.s, args.steps, args.beta, args.schedule)
        np.save(args.out, out[None].astype(np.float64))


if __name__ == "__main__":
    main()
