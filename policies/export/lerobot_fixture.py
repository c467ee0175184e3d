"""Builds a random-initialized LeRobot 0.4.4 policy (ACT or Diffusion Policy) for the
simulated arm and saves it the way a LeRobot user has one after training: a policy
directory with config.json, model.safetensors and the pre/post processor pipelines
(policy_preprocessor.json + normalizer statistics, policy_postprocessor.json + ...).

The policy sees what the sim arm has: `observation.state` (3 joints),
`observation.images.top` (RGB 96x96) and predicts `action` (3 joints). The weights
are random (torch seeded by --seed, so the directory is reproducible) and the dataset
statistics are made up but shaped like real ones. Nothing is downloaded: the
ResNet backbone starts from random weights too.

    python lerobot_fixture.py --kind act --out /tmp/lr-fixtures/act
    python lerobot_fixture.py --kind diffusion --sampler ddpm --out /tmp/lr-fixtures/dp_ddpm
    python lerobot_fixture.py --kind diffusion --size default --out /tmp/lr-fixtures/dp_big

--size test (default) is small enough to export and run in seconds on two CPU
cores; --size default keeps LeRobot's own defaults (for speed benchmarks).
"""

import argparse
import os

import numpy as np
import torch

from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.factory import make_pre_post_processors

JOINTS = 3
IMAGE_SHAPE = (3, 96, 96)


def features():
    inputs = {
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(JOINTS,)),
        "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=IMAGE_SHAPE),
    }
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(JOINTS,))}
    return inputs, outputs


def dataset_stats():
    """Statistics shaped like LeRobotDataset.meta.stats: joints in radians, images in [0, 1]."""
    joints = {
        "mean": np.array([0.10, 0.55, 0.40], np.float32),
        "std": np.array([0.45, 0.35, 0.30], np.float32),
        "min": np.array([-1.20, -0.60, -0.80], np.float32),
        "max": np.array([1.30, 1.50, 1.40], np.float32),
    }
    # The actions are position targets, so slightly wider than the measured states.
    actions = {k: v * (1.05 if k != "mean" else 1.0) for k, v in joints.items()}
    image = {
        # ImageNet's per-channel statistics, shaped [3, 1, 1] as LeRobot stores image stats.
        "mean": np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1),
        "std": np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1),
        "min": np.zeros((3, 1, 1), np.float32),
        "max": np.ones((3, 1, 1), np.float32),
    }
    return {"observation.state": joints, "observation.images.top": image, "action": actions}


def act_config(size, inputs, outputs):
    from lerobot.policies.act.configuration_act import ACTConfig

    common = dict(input_features=inputs, output_features=outputs, device="cpu",
                  pretrained_backbone_weights=None)
    if size == "default":
        return ACTConfig(**common, chunk_size=100, n_action_steps=100)
    return ACTConfig(**common, chunk_size=10, n_action_steps=5, dim_model=128, n_heads=4,
                     dim_feedforward=512, n_encoder_layers=2, n_decoder_layers=1, latent_dim=16,
                     vision_backbone="resnet18")


def diffusion_config(size, sampler, steps, inputs, outputs):
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    if size == "default":
        # LeRobot's defaults: DDPM, num_inference_steps None (= num_train_timesteps, 100);
        # an explicit --sampler / --steps still applies, e.g. to benchmark DDIM at 10.
        return DiffusionConfig(input_features=inputs, output_features=outputs, device="cpu",
                               pretrained_backbone_weights=None,
                               noise_scheduler_type=(sampler or "ddpm").upper(), num_inference_steps=steps)
    sampler = sampler or "ddim"
    if steps is None:
        steps = 10 if sampler == "ddim" else 100
    common = dict(input_features=inputs, output_features=outputs, device="cpu",
                  pretrained_backbone_weights=None, noise_scheduler_type=sampler.upper())
    return DiffusionConfig(**common, n_obs_steps=2, horizon=16, n_action_steps=8, crop_shape=(84, 84),
                           down_dims=(64, 128, 256), spatial_softmax_num_keypoints=32,
                           diffusion_step_embed_dim=64, num_inference_steps=steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", required=True, choices=["act", "diffusion"])
    parser.add_argument("--out", required=True, help="policy directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=["test", "default"], default="test")
    parser.add_argument("--sampler", choices=["ddim", "ddpm"],
                        help="diffusion only; default ddim (--size test), LeRobot's ddpm (--size default)")
    parser.add_argument("--dataset", metavar="DIR",
                        help="also write the statistics as the dataset's DIR/meta/stats.json, "
                             "with LeRobot's own writer")
    parser.add_argument("--steps", type=int, default=None,
                        help="diffusion num_inference_steps; default 10 for ddim, 100 for ddpm "
                             "(--size default: LeRobot's null, i.e. num_train_timesteps)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    inputs, outputs = features()
    if args.kind == "act":
        from lerobot.policies.act.modeling_act import ACTPolicy

        config = act_config(args.size, inputs, outputs)
        policy = ACTPolicy(config)
    else:
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

        config = diffusion_config(args.size, args.sampler, args.steps, inputs, outputs)
        policy = DiffusionPolicy(config)

    # Random init leaves some parameters at constants (LayerNorm/GroupNorm at 1 and 0,
    # FrozenBatchNorm at identity, many biases at 0): jitter every learned tensor so that
    # each one the export must carry changes the output the parity checks compare.
    # The fixed buffers (SpatialSoftmax's grid, ACT's sinusoidal table) stay as built.
    with torch.no_grad():
        for name, tensor in policy.state_dict().items():
            if not tensor.is_floating_point() or name.endswith(("pos_grid", "pos_enc")):
                continue
            tensor.add_(0.02 * torch.randn_like(tensor))
            if name.endswith("running_var"):
                tensor.abs_().add_(0.5)  # FrozenBatchNorm divides by its square root

    os.makedirs(args.out, exist_ok=True)
    policy.save_pretrained(args.out)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, dataset_stats=dataset_stats())
    preprocessor.save_pretrained(args.out)
    postprocessor.save_pretrained(args.out)
    if args.dataset:
        from pathlib import Path

        from lerobot.datasets.utils import write_stats

        # A dataset's stats also carry the sample count, which reflex ignores.
        stats = {key: {**fields, "count": np.array([1000])} for key, fields in dataset_stats().items()}
        write_stats(stats, Path(args.dataset))
        print(os.path.join(args.dataset, "meta", "stats.json"))
    for name in sorted(os.listdir(args.out)):
        print(os.path.join(args.out, name))


if __name__ == "__main__":
    main()
