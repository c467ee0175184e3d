#!/usr/bin/env python3
"""A learner for reflex's actor: closes the loop on the simulated arm over zenoh.

The deployed policy is the demo's reaching policy with a calibration error: its
shoulder targets are off by WEAKNESS rad, so it mostly stops beside the target.
reflex (the actor) runs it in episodes, a success classifier rewards each episode
that reaches the target, and every recorded row streams out on
`reflex/sim_arm/transitions`. This learner improves the policy from those
transitions alone, HIL-SERL's actor / learner split with a simple learner: a
residual (a constant per-joint offset added to the policy's actions) searched by
the cross-entropy method on the episodes' sparse success. Each candidate residual
becomes an ONNX model (the deployed graph plus one Add) pushed to
`reflex/sim_arm/models/policy` with its SHA-256; reflex swaps it in between chunks
and stamps every row with the model version, so the learner scores a candidate on
the episodes that ran entirely under its version.

Usage (from the repository root, after `cargo build --release`):

    .venv/bin/python examples/hil_learner/learner.py --out target/hil_learner

It writes `curve.csv` (per generation: simulated minutes, episodes, successes,
success rate and its 95 % Wilson interval) and `curve.svg` (the curve with its
band), and prints the table. Access control: model pushes need it, so the script
writes a zenoh config with user/password authentication and an ACL that lets only
the user `learner` push models and read the transitions (fresh credentials per
run), and hands it to reflex with `--set`.
"""

import argparse
import copy
import hashlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import zenoh
from onnx import helper, numpy_helper

LAUNCH = "examples/hil_learner/sim_arm_learner.toml"
BASE_MODEL = "policies/models/sim_reach.onnx"
ROBOT = "sim_arm"
RATE_HZ = 100.0
# The deployed policy's calibration error, rad per joint.
WEAKNESS = np.array([0.15, 0.0, 0.0], np.float32)


def with_offset(base: onnx.ModelProto, offset) -> bytes:
    """`base` with `offset` [3] added to every action (same inputs and outputs)."""
    model = copy.deepcopy(base)
    graph = model.graph
    output = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{output}_base" if o == output else o for o in node.output]
    graph.initializer.append(
        numpy_helper.from_array(np.asarray(offset, np.float32).reshape(1, 1, 3), "learned_offset"))
    graph.node.append(helper.make_node("Add", [f"{output}_base", "learned_offset"], [output]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def wilson(successes: int, n: int, z: float = 1.96):
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class Episodes:
    """Episodes assembled from the transition stream, by episode index."""

    def __init__(self):
        self.lock = threading.Lock()
        self.open = {}
        self.done = []  # (episode_index, versions, success, last_tick)
        self.arrived = threading.Condition(self.lock)

    def on_sample(self, sample):
        message = json.loads(bytes(sample.payload.to_bytes()))
        with self.lock:
            if message.get("kind") == "discard":
                self.open.pop(message["episode_index"], None)
                return
            rows = self.open.setdefault(message["episode_index"], [])
            rows.append(message)
            if message["done"]:
                rows = self.open.pop(message["episode_index"])
                versions = {r["model_version"] for r in rows}
                success = any(r["reward"] > 0 for r in rows)
                self.done.append((message["episode_index"], versions, success, message["tick"]))
                self.arrived.notify_all()

    def wait_for(self, version: int, count: int, timeout_s: float):
        """Episodes that ran entirely under `version` (at least `count` of them)."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while True:
                pure = [e for e in self.done if e[1] == {version}]
                if len(pure) >= count:
                    return pure
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"timed out waiting for {count} episodes of model version {version}")
                self.arrived.wait(left)


class Pusher:
    """Pushes models and waits for reflex's verdict on each."""

    def __init__(self, session):
        self.session = session
        self.results = []
        self.cv = threading.Condition()
        session.declare_subscriber(f"reflex/{ROBOT}/models/policy/result", self._on_result)

    def _on_result(self, sample):
        with self.cv:
            self.results.append(json.loads(bytes(sample.payload.to_bytes())))
            self.cv.notify_all()

    def push(self, model: bytes, timeout_s: float = 30.0) -> int:
        digest = hashlib.sha256(model).hexdigest()
        with self.cv:
            seen = len(self.results)
        self.session.put(f"reflex/{ROBOT}/models/policy", model,
                         attachment=json.dumps({"sha256": digest}))
        with self.cv:
            if not self.cv.wait_for(lambda: len(self.results) > seen, timeout_s):
                raise SystemExit("reflex did not answer the push")
            result = self.results[seen]
        if not result["accepted"]:
            raise SystemExit(f"reflex refused the model: {result['error']}")
        return result["version"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_access_control(out: str, port: int):
    """A zenoh config for reflex (user/password + ACL) and the learner's credentials."""
    password = secrets.token_hex(16)
    users = os.path.join(out, "users.txt")
    with open(users, "w") as f:
        f.write(f"learner:{password}\n")
    os.chmod(users, 0o600)
    key = f"reflex/{ROBOT}"
    config = {
        "transport": {"auth": {"usrpwd": {"dictionary_file": users}}},
        "access_control": {
            "enabled": True,
            "default_permission": "deny",
            "rules": [
                {"id": "stop", "messages": ["put"], "flows": ["ingress"], "permission": "allow",
                 "key_exprs": [f"{key}/control/estop"]},
                {"id": "announce", "messages": ["declare_subscriber"], "flows": ["egress"],
                 "permission": "allow", "key_exprs": [f"{key}/**"]},
                {"id": "models", "messages": ["put"], "flows": ["ingress"], "permission": "allow",
                 "key_exprs": [f"{key}/models/policy"]},
                {"id": "outputs-subscribe", "messages": ["declare_subscriber"], "flows": ["ingress"],
                 "permission": "allow",
                 "key_exprs": [f"{key}/transitions", f"{key}/models/policy/result", f"{key}/status"]},
                {"id": "outputs-deliver", "messages": ["put"], "flows": ["egress"], "permission": "allow",
                 "key_exprs": [f"{key}/transitions", f"{key}/models/policy/result", f"{key}/status"]},
            ],
            "subjects": [{"id": "anyone"}, {"id": "learner", "usernames": ["learner"]}],
            "policies": [
                {"rules": ["stop", "announce"], "subjects": ["anyone"]},
                {"rules": ["models", "outputs-subscribe", "outputs-deliver"], "subjects": ["learner"]},
            ],
        },
    }
    path = os.path.join(out, "zenoh_actor.json5")
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    learner = zenoh.Config()
    learner.insert_json5("mode", '"peer"')
    learner.insert_json5("listen/endpoints", "[]")
    learner.insert_json5("connect/endpoints", json.dumps([f"tcp/127.0.0.1:{port}"]))
    learner.insert_json5("scouting/multicast/enabled", "false")
    learner.insert_json5("transport/auth/usrpwd/user", '"learner"')
    learner.insert_json5("transport/auth/usrpwd/password", json.dumps(password))
    return path, learner


def svg_curve(rows, path: str):
    """The success rate per generation against simulated minutes, with its 95 % band."""
    width, height, pad = 640, 360, 56
    t_max = max(r["sim_minutes"] for r in rows) or 1.0
    x = lambda t: pad + (width - 2 * pad) * t / t_max
    y = lambda p: height - pad - (height - 2 * pad) * p
    band = [(x(r["sim_minutes"]), y(r["high"])) for r in rows]
    band += [(x(r["sim_minutes"]), y(r["low"])) for r in reversed(rows)]
    line = [(x(r["sim_minutes"]), y(r["rate"])) for r in rows]
    pts = lambda ps: " ".join(f"{a:.1f},{b:.1f}" for a, b in ps)
    grid = "".join(
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(p):.1f}" y2="{y(p):.1f}" stroke="#ddd"/>'
        f'<text x="{pad - 8}" y="{y(p) + 4:.1f}" text-anchor="end" font-size="12">{p:.0%}</text>'
        for p in (0, 0.25, 0.5, 0.75, 1.0))
    ticks = "".join(
        f'<text x="{x(t):.1f}" y="{height - pad + 18}" text-anchor="middle" font-size="12">{t:.1f}</text>'
        for t in np.linspace(0, t_max, 5))
    dots = "".join(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="#1f77b4"/>' for a, b in line)
    svg = f"""<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>{grid}{ticks}
<polygon points="{pts(band)}" fill="#1f77b4" fill-opacity="0.2" stroke="none"/>
<polyline points="{pts(line)}" fill="none" stroke="#1f77b4" stroke-width="2"/>{dots}
<text x="{width / 2}" y="{height - 12}" text-anchor="middle" font-size="13">simulated minutes</text>
<text x="16" y="{height / 2}" text-anchor="middle" font-size="13" transform="rotate(-90 16 {height / 2})">episode success rate (95 % Wilson band)</text>
<text x="{width / 2}" y="24" text-anchor="middle" font-size="14">reflex actor + residual CEM learner, simulated arm</text>
</svg>
"""
    with open(path, "w") as f:
        f.write(svg)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="target/hil_learner")
    parser.add_argument("--reflex", default="target/release/reflex")
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--population", type=int, default=6)
    parser.add_argument("--episodes", type=int, default=3, help="episodes scored per candidate")
    parser.add_argument("--elites", type=int, default=2)
    parser.add_argument("--sigma", type=float, default=0.1, help="initial search width, rad")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    base = onnx.load(BASE_MODEL)
    deployed = os.path.join(args.out, "deployed.onnx")
    with open(deployed, "wb") as f:
        f.write(with_offset(base, WEAKNESS))
    port = free_port()
    config, learner_config = write_access_control(args.out, port)
    dataset = os.path.join(args.out, "dataset")
    if os.path.exists(dataset):
        subprocess.run(["rm", "-rf", dataset], check=True)
    command = [
        args.reflex, "run", LAUNCH, "--sim-clock", "--record", dataset,
        "--set", f"policy.model={json.dumps(os.path.abspath(deployed))}",
        "--set", f"zenoh.listen={json.dumps([f'tcp/127.0.0.1:{port}'])}",
        "--set", f"zenoh.config_file={json.dumps(os.path.abspath(config))}",
        "--set", "zenoh.model_updates=true",
        "--set", f"seed={args.seed}",
    ]
    actor_log = open(os.path.join(args.out, "actor.log"), "w")
    actor = subprocess.Popen(command, stdout=actor_log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)
        session = zenoh.open(learner_config)
        episodes = Episodes()
        session.declare_subscriber(f"reflex/{ROBOT}/transitions", episodes.on_sample)
        pusher = Pusher(session)

        mean, sigma = np.zeros(3), np.full(3, args.sigma)
        rows = []
        print(f"{'gen':>3} {'sim min':>7} {'episodes':>8} {'success':>7} {'rate':>5} {'95% band':>13}  mean residual")
        # Generation 0 scores the deployed policy itself (residual 0).
        for generation in range(args.generations + 1):
            if generation == 0:
                candidates = [np.zeros(3)]
                per_candidate = args.population * args.episodes
            else:
                candidates = [mean + sigma * rng.standard_normal(3) for _ in range(args.population)]
                per_candidate = args.episodes
            scores, successes, n, last_tick = [], 0, 0, 0
            for residual in candidates:
                version = pusher.push(with_offset(base, WEAKNESS + residual.astype(np.float32)))
                scored = episodes.wait_for(version, per_candidate, timeout_s=600)[:per_candidate]
                wins = sum(e[2] for e in scored)
                scores.append(wins + 1e-3 * rng.random())  # ties broken at random
                successes += wins
                n += len(scored)
                last_tick = max(last_tick, max(e[3] for e in scored))
            low, high = wilson(successes, n)
            row = {"generation": generation, "sim_minutes": last_tick / RATE_HZ / 60, "episodes": n,
                   "successes": successes, "rate": successes / n, "low": low, "high": high,
                   "mean_residual": mean.round(4).tolist()}
            rows.append(row)
            print(f"{generation:>3} {row['sim_minutes']:>7.2f} {n:>8} {successes:>7} {row['rate']:>5.2f} "
                  f"[{low:.2f}, {high:.2f}]  {np.round(mean, 3)}", flush=True)
            if generation > 0:
                elite = np.array([candidates[i] for i in np.argsort(scores)[-args.elites:]])
                mean = elite.mean(axis=0)
                sigma = np.maximum(0.5 * sigma + 0.5 * elite.std(axis=0), 0.01)
        with open(os.path.join(args.out, "curve.csv"), "w") as f:
            f.write("generation,sim_minutes,episodes,successes,rate,low95,high95\n")
            for r in rows:
                f.write(f"{r['generation']},{r['sim_minutes']:.3f},{r['episodes']},{r['successes']},"
                        f"{r['rate']:.3f},{r['low']:.3f},{r['high']:.3f}\n")
        svg_curve(rows, os.path.join(args.out, "curve.svg"))
        print(f"learned residual {np.round(mean, 3)} (the calibration error was {-WEAKNESS})")
        print(f"wrote {args.out}/curve.csv and {args.out}/curve.svg")
        session.close()
    finally:
        actor.send_signal(signal.SIGINT)
        try:
            actor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            actor.kill()
        actor_log.close()


if __name__ == "__main__":
    sys.exit(main())
