"""Samples a diffusion chunk with diffusers' own scheduler (DDIMScheduler or
DDPMScheduler) around an ONNX denoising network, for parity tests against reflex.

The network runs in ONNX Runtime on the inputs `reflex infer --dump-inputs` wrote
(the same observation), starting from the initial noise in --noise; the noise each
scheduler step draws is taken, in order, from the rest of that file (diffusers'
`randn_tensor` is replaced by a function that returns the next sample), so both
sides see the same numbers. The arithmetic is diffusers'.

    python diffusers_parity.py --model m.onnx --inputs DIR --noise noise.npy \
        --scheduler '{"class": "DDPMScheduler", "num_train_timesteps": 100, ...}' \
        --steps 100 --out chunk.npy
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort
import torch
import diffusers
from diffusers.schedulers import scheduling_ddim, scheduling_ddpm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True, help="directory of <input>.npy from reflex infer --dump-inputs")
    parser.add_argument("--noise", required=True, help=".npy: the initial noise [B,H,D], then one sample per step")
    parser.add_argument("--scheduler", required=True,
                        help="JSON: {\"class\": ..., \"config\": scheduler_config.json} or the class's kwargs")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    spec = json.loads(args.scheduler)
    cls = getattr(diffusers, spec.pop("class"))
    if "config" in spec:
        scheduler = cls.from_pretrained(os.path.dirname(spec.pop("config")))
    else:
        scheduler = cls(**spec)
    scheduler.set_timesteps(args.steps)

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    ports = {i.name: i for i in session.get_inputs()}
    feeds = {name[:-4]: np.load(os.path.join(args.inputs, name))
             for name in os.listdir(args.inputs) if name.endswith(".npy")}
    noise = np.load(args.noise).astype(np.float32)
    x_np = next(v for k, v in ports.items() if k == "noisy_actions")
    shape = [d if isinstance(d, int) else 1 for d in x_np.shape]
    per = int(np.prod(shape))
    flat = noise.reshape(-1)
    x = torch.from_numpy(flat[:per].reshape(shape).copy())
    draws = iter(range(1, len(flat) // per))

    def next_noise(shape, generator=None, device=None, dtype=None, layout=None):
        k = next(draws)
        return torch.from_numpy(flat[k * per:(k + 1) * per].reshape(shape).copy()).to(dtype or torch.float32)

    scheduling_ddim.randn_tensor = next_noise
    scheduling_ddpm.randn_tensor = next_noise

    time_type = ports["timestep"].type
    for t in scheduler.timesteps:
        feeds["noisy_actions"] = x.numpy().astype(np.float32)
        t_value = int(t)
        feeds["timestep"] = (np.full([shape[0]], t_value, np.int64) if "int64" in time_type
                             else np.full([shape[0]], t_value, np.float32))
        model_out = torch.from_numpy(session.run(None, {k: v for k, v in feeds.items() if k in ports})[0])
        if isinstance(scheduler, diffusers.DDIMScheduler):
            x = scheduler.step(model_out, t, x, eta=args.eta).prev_sample
        else:
            x = scheduler.step(model_out, t, x).prev_sample
    np.save(args.out, x.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
