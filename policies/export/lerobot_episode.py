"""The reference side of a parity test: runs a LeRobot policy (ACT or Diffusion
Policy) with LeRobot itself, one observation at a time, the way a LeRobot user
deploys it, and writes the executed actions.

    python lerobot_episode.py POLICY_DIR --episode ep.npz --out actions.npy [--noise noise.npy]
    python lerobot_episode.py POLICY_DIR --episode ep.npz --make-episode 30 --seed 0 --out actions.npy
    python lerobot_episode.py POLICY_DIR --episode ep.npz --time 20 [--threads 1]

The policy and its pre/post processors are loaded from POLICY_DIR, `policy.reset()`
is called once, then per step t: {"observation.state": state[t] [1, D],
"observation.images.<cam>": image[t] [1, 3, H, W] in [0, 1]} -> preprocessor ->
`policy.select_action` -> postprocessor -> action[t]. ACTIONS.npy is float32 [T, D].

The episode (.npz) holds `joint_positions` float32 [T, D] and, per camera,
`camera.<reflex camera>` uint8 [T, H, W, 3], the layout `reflex infer` reads.
--make-episode T first writes a random but smooth one there.

Diffusion noise comes from NOISE.npy, float32 [chunks, 1 + draws, 1, horizon, D]:
per chunk the initial sample (select_action's `noise=`, passed only when the action
queue is empty, i.e. a chunk is sampled), then the samples the scheduler's steps
draw, in order (DDPM draws one per step with t > 0; DDIM in LeRobot runs with eta = 0
and draws none). diffusers' `randn_tensor` is replaced to hand them out. A file with
1 + num_steps samples per chunk (`reflex infer --noise`'s layout) is read too. Without
--noise, the noise is standard normal from numpy seeded by --seed and is saved as
<ACTIONS stem>_noise.npy in reflex's layout (1 + num_steps samples per chunk when
the steps draw noise: the last, t = 0, goes unused by both).

--time N instead times select_action (pre- and postprocessing included, torch on
the CPU with --threads threads) over N chunks, i.e. N * n_action_steps calls cycling
through the episode's observations after one untimed warm-up chunk, and prints JSON:
"chunk_ms" for the calls that sample a chunk, "action_ms" for the others.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from diffusers.schedulers import scheduling_ddim, scheduling_ddpm

from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors

OBS_STATE = "observation.state"


def camera_names(config, mapping):
    """LeRobot image key -> reflex camera name (as import_lerobot.py maps them)."""
    names = {}
    for key in config.image_features:
        short = key.split("observation.images.", 1)[-1] if key.startswith("observation.images.") \
            else key.split(".")[-1]
        names[key] = mapping.get(key, mapping.get(short, short))
    return names


def make_episode(path, steps, seed, state_dim, cameras, image_shape):
    """A slow, smooth random walk of the joints and camera images that change over time
    (drifting colour waves plus pixel noise), saved in reflex's observation layout."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(-0.5, 0.5, state_dim)
    v = np.zeros(state_dim)
    joints = np.empty((steps, state_dim), np.float32)
    for t in range(steps):
        # Velocity with inertia, so the walk has no jumps.
        v = 0.9 * v + 0.01 * rng.standard_normal(state_dim)
        q = np.clip(q + v, -1.5, 1.5)
        joints[t] = q
    _, h, w = image_shape
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    episode = {"joint_positions": joints}
    for camera in cameras:
        freq = rng.uniform(1.0, 4.0, (3, 2))
        phase = rng.uniform(0, 2 * np.pi, 3)
        speed = rng.uniform(0.05, 0.2, 3)
        frames = np.empty((steps, h, w, 3), np.uint8)
        for t in range(steps):
            waves = [0.5 + 0.4 * np.sin(2 * np.pi * (freq[c, 0] * x + freq[c, 1] * y) + phase[c] + speed[c] * t)
                     for c in range(3)]
            image = np.stack(waves, axis=-1) + 0.03 * rng.standard_normal((h, w, 3))
            frames[t] = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
        episode[f"camera.{camera}"] = frames
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **episode)


def observation(episode, t, cameras):
    """What LeRobot's predict_action builds: batch of 1, images CHW float in [0, 1]."""
    obs = {OBS_STATE: torch.from_numpy(episode["joint_positions"][t]).float().unsqueeze(0)}
    for key, camera in cameras.items():
        image = torch.from_numpy(episode[f"camera.{camera}"][t]).float() / 255.0
        obs[key] = image.permute(2, 0, 1).unsqueeze(0).contiguous()
    return obs


def queue_empty(policy):
    """True when select_action is about to sample a new chunk."""
    if getattr(policy.config, "temporal_ensemble_coeff", None) is not None:
        return True  # ACT with temporal ensembling predicts a chunk at every step
    if hasattr(policy, "_action_queue"):
        return len(policy._action_queue) == 0
    return len(policy._queues["action"]) == 0


def scheduler_draws(policy):
    """How many samples one chunk's scheduler steps draw (diffusion only)."""
    diffusion = policy.diffusion
    scheduler = diffusion.noise_scheduler
    if policy.config.noise_scheduler_type != "DDPM":
        return 0  # LeRobot calls DDIMScheduler.step with its default eta = 0
    scheduler.set_timesteps(diffusion.num_inference_steps)
    return int(sum(int(t) > 0 for t in scheduler.timesteps))


class NoiseFeed:
    """Hands out the noise file's samples: a chunk's initial noise, then its step draws."""

    def __init__(self, noise, draws):
        self.noise, self.draws = noise, draws
        self.chunk, self.used = -1, 0

    def initial(self):
        if self.chunk >= 0 and self.used != self.draws:
            sys.exit(f"chunk {self.chunk} drew {self.used} step samples, expected {self.draws}")
        self.chunk += 1
        self.used = 0
        if self.chunk >= len(self.noise):
            sys.exit(f"the noise file has {len(self.noise)} chunks; the episode needs more")
        return torch.from_numpy(self.noise[self.chunk, 0].copy())

    def randn_tensor(self, shape, generator=None, device=None, dtype=None, layout=None):
        self.used += 1
        if self.used > self.draws:
            sys.exit(f"chunk {self.chunk}: the scheduler drew more than the {self.draws} samples expected")
        sample = self.noise[self.chunk, self.used]
        if tuple(shape) != sample.shape:
            sys.exit(f"the scheduler draws {tuple(shape)}, the noise file holds {sample.shape}")
        return torch.from_numpy(sample.copy()).to(dtype or torch.float32)


def run(policy, pre, post, episode, cameras, feed):
    steps = len(episode["joint_positions"])
    actions = np.empty((steps, policy.config.action_feature.shape[0]), np.float32)
    policy.reset()
    for t in range(steps):
        with torch.inference_mode():
            batch = pre(observation(episode, t, cameras))
            if feed is not None and queue_empty(policy):
                action = policy.select_action(batch, noise=feed.initial())
            else:
                action = policy.select_action(batch)
            actions[t] = post(action).squeeze(0).numpy()
    if feed is not None and feed.used != feed.draws:
        sys.exit(f"chunk {feed.chunk} drew {feed.used} step samples, expected {feed.draws}")
    return actions


def timing(policy, pre, post, episode, cameras, chunks, kind):
    steps = len(episode["joint_positions"])
    per_chunk = policy.config.n_action_steps
    chunk_ms, action_ms = [], []
    policy.reset()
    for i in range(per_chunk * (chunks + 1)):
        start = time.perf_counter()
        sampled = queue_empty(policy)
        with torch.inference_mode():
            batch = pre(observation(episode, i % steps, cameras))
            post(policy.select_action(batch))
        elapsed = (time.perf_counter() - start) * 1e3
        if i >= per_chunk:  # the first chunk is a warm-up
            (chunk_ms if sampled else action_ms).append(elapsed)

    def pct(values):
        return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))} \
            if values else None

    config = policy.config
    sampler = config.noise_scheduler_type.lower() if kind == "diffusion" else None
    steps_used = policy.diffusion.num_inference_steps if kind == "diffusion" else None
    return {"chunk_ms": pct(chunk_ms), "action_ms": pct(action_ms), "kind": kind, "sampler": sampler,
            "steps": steps_used, "chunks": len(chunk_ms), "actions": len(action_ms),
            "threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy_dir")
    parser.add_argument("--episode", required=True, help=".npz: joint_positions [T, D], camera.<name> [T, H, W, 3]")
    parser.add_argument("--out", help="ACTIONS.npy, float32 [T, D]")
    parser.add_argument("--noise", help="NOISE.npy, float32 [chunks, 1 + draws, 1, horizon, D] (diffusion)")
    parser.add_argument("--make-episode", type=int, metavar="T", help="first write a random smooth episode of T steps")
    parser.add_argument("--seed", type=int, default=0, help="for --make-episode and generated noise")
    parser.add_argument("--camera", action="append", default=[], metavar="LEROBOT_CAM=REFLEX_CAMERA")
    parser.add_argument("--time", type=int, metavar="N", help="time N chunks instead of writing actions")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    if args.out is None and args.time is None:
        parser.error("--out is required unless --time is given")

    torch.set_num_threads(args.threads)
    config = PreTrainedConfig.from_pretrained(args.policy_dir)
    kind = config.type
    if kind not in ("act", "diffusion"):
        sys.exit(f"policy type {kind!r}: this reference runs act and diffusion")
    policy = get_policy_class(kind).from_pretrained(args.policy_dir, config=config)
    policy.eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=args.policy_dir)

    mapping = dict(item.split("=", 1) for item in args.camera)
    cameras = camera_names(config, mapping)
    state_dim = config.robot_state_feature.shape[0]
    image_shape = tuple(next(iter(config.image_features.values())).shape)
    if args.make_episode:
        make_episode(args.episode, args.make_episode, args.seed, state_dim, cameras.values(), image_shape)
    episode = dict(np.load(args.episode))
    for key, camera in cameras.items():
        frames = episode.get(f"camera.{camera}")
        if frames is None:
            sys.exit(f"{args.episode} has no camera.{camera} (for {key})")
        if frames.shape[1:] != (image_shape[1], image_shape[2], 3) or frames.dtype != np.uint8:
            sys.exit(f"{args.episode}: camera.{camera} is {frames.dtype} {frames.shape[1:]}, the policy takes "
                     f"uint8 {(image_shape[1], image_shape[2], 3)} (LeRobot does not resize)")

    if args.time:
        print(json.dumps(timing(policy, pre, post, episode, cameras, args.time, kind)))
        return

    feed = None
    if kind == "diffusion":
        draws = scheduler_draws(policy)
        if args.noise:
            noise = np.load(args.noise).astype(np.float32)
        else:
            steps = len(episode["joint_positions"])
            chunks = -(-steps // config.n_action_steps)
            # reflex's layout: with step noise, one sample per step (the last,
            # t = 0, draws nothing and its sample goes unused by both).
            samples = 1 + (policy.diffusion.num_inference_steps if draws else 0)
            shape = (chunks, samples, 1, config.horizon, config.action_feature.shape[0])
            noise = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
            noise_path = os.path.splitext(args.out)[0] + "_noise.npy"
            np.save(noise_path, noise)
            print(f"wrote {noise_path} {list(noise.shape)}")
        # Also accepted: one sample per step (1 + num_steps), `reflex infer --noise`'s
        # layout; DDPM's last step (t = 0) draws nothing, so its sample goes unused.
        per_chunk = (1 + draws, 1 + policy.diffusion.num_inference_steps)
        if noise.ndim != 5 or noise.shape[1] not in per_chunk or noise.shape[2:] != (1, config.horizon,
                                                                                     config.action_feature.shape[0]):
            sys.exit(f"{args.noise}: shape {list(noise.shape)}, expected [chunks, {1 + draws}, 1, "
                     f"{config.horizon}, {config.action_feature.shape[0]}]")
        feed = NoiseFeed(noise, draws)
        scheduling_ddpm.randn_tensor = feed.randn_tensor
        scheduling_ddim.randn_tensor = feed.randn_tensor
    elif args.noise:
        sys.exit("--noise is for diffusion policies; ACT samples nothing at inference")

    actions = run(policy, pre, post, episode, cameras, feed)
    np.save(args.out, actions)
    print(f"wrote {args.out} {list(actions.shape)}")


if __name__ == "__main__":
    main()
