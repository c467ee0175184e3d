"""Fit a FAST tokenizer fixture on smooth synthetic trajectories (deterministic):
2000 chunks of [10, --dim] normalized actions (sums of low-frequency sines, the shape
of real joint trajectories after quantile normalization), scale 10, vocab 1024.
Writes policies/models/fast/{tokenizer.json, processor_config.json}."""

import argparse
import json
import os

import numpy as np

from fast_reference import fit


def smooth_chunks(rng, n, horizon, dim):
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    amp = rng.uniform(-0.8, 0.8, (n, 1, dim))
    freq = rng.uniform(0.0, 3.0, (n, 1, dim))
    phase = rng.uniform(-np.pi, np.pi, (n, 1, dim))
    offset = rng.uniform(-0.5, 0.5, (n, 1, dim))
    return offset + amp * np.sin(2 * np.pi * freq * t / 2 + phase)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="policies/models/fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=7)
    args = parser.parse_args()
    chunks = smooth_chunks(np.random.default_rng(args.seed), 2000, 10, args.dim)
    fast = fit(list(chunks), 10, args.dim, 10.0, 1024)
    os.makedirs(args.out, exist_ok=True)
    fast.tokenizer.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "processor_config.json"), "w") as f:
        json.dump({"scale": 10.0, "min_token": fast.min_token, "vocab_size": 1024, "time_horizon": 10,
                   "action_dim": args.dim, "processor_class": "UniversalActionProcessor"}, f, indent=2)
    lengths = [len(fast.encode(c)) for c in chunks[:200]]
    print(f"wrote {args.out}: min_token {fast.min_token}, vocab {fast.tokenizer.get_vocab_size()}, "
          f"{np.mean(lengths):.1f} tokens per chunk ({10 * args.dim} coefficients)")


if __name__ == "__main__":
    main()
