"""The model inputs of an observation, computed from the raw observation with the
libraries the field uses, so that the sampler parity tests do not feed the Python
references what reflex itself preprocessed (runs in the parity venv).

    python observation_reference.py --obs obs.json --out DIR \
        --image image:32x32:minus_one_one:pad --state state:8:quantile:norm_stats.json

obs.json is `reflex infer`'s observation file (`joint_positions`, `images` ->
uint8 [H, W, 3] .npy). Writes DIR/<input>.npy, float32:

  --image NAME:HxW:RANGE:MODE  the camera image, resized as openpi's
      `resize_with_pad` lays it out (MODE `pad`: aspect kept, the image centred,
      black around it) or stretched; the resize is OpenCV's INTER_AREA when the size
      divides evenly, else torch's bilinear `interpolate` (what reflex's `area`
      filter claims); RANGE zero_one (x / 255) or minus_one_one (x / 255 * 2 - 1);
      NCHW with a batch of one.
  --state NAME:WIDTH:MODE:STATS  the joint positions, normalized with the `state`
      entry of an openpi norm_stats.json (MODE quantile: (x - q01) / (q99 - q01 +
      1e-6) * 2 - 1; z_score: (x - mean) / (std + 1e-6)), zero-padded to WIDTH.
"""

import argparse
import json
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812


def resize(image, height, width):
    """uint8 [H, W, 3] -> float32 [height, width, 3], values 0..255."""
    h, w = image.shape[:2]
    pixels = image.astype(np.float32)
    if h % height == 0 and w % width == 0:
        return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    nchw = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(nchw, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).numpy()


def image_input(image, spec):
    size, pixel_range, mode = spec
    out_h, out_w = (int(v) for v in size.split("x"))
    h, w = image.shape[:2]
    inner_h, inner_w = out_h, out_w
    if mode == "pad" and out_h * w != out_w * h:
        # openpi's resize_with_pad: the larger ratio decides, sizes truncate.
        ratio = max(w / out_w, h / out_h)
        inner_h = min(max(int(h / ratio), 1), out_h)
        inner_w = min(max(int(w / ratio), 1), out_w)
    canvas = np.zeros((out_h, out_w, 3), np.float32)
    top, left = (out_h - inner_h) // 2, (out_w - inner_w) // 2
    canvas[top:top + inner_h, left:left + inner_w] = resize(image, inner_h, inner_w)
    if pixel_range == "zero_one":
        canvas = canvas / np.float32(255.0)
    elif pixel_range == "minus_one_one":
        canvas = canvas / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
    return canvas.transpose(2, 0, 1)[None].astype(np.float32)


def state_input(positions, spec):
    width, mode, stats_path = spec
    with open(stats_path) as f:
        stats = json.load(f)
    stats = stats.get("norm_stats", stats)["state"]
    x = np.asarray(positions, np.float32)
    n = len(x)
    if mode == "quantile":
        q01, q99 = (np.asarray(stats[k][:n], np.float32) for k in ("q01", "q99"))
        x = (x - q01) / (q99 - q01 + np.float32(1e-6)) * np.float32(2.0) - np.float32(1.0)
    elif mode == "z_score":
        mean, std = (np.asarray(stats[k][:n], np.float32) for k in ("mean", "std"))
        x = (x - mean) / (std + np.float32(1e-6))
    else:
        raise SystemExit(f"unknown state normalization {mode}")
    out = np.zeros((1, int(width)), np.float32)
    out[0, :n] = x
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--image", action="append", default=[], help="NAME:HxW:RANGE:MODE (camera `top`)")
    parser.add_argument("--state", action="append", default=[], help="NAME:WIDTH:MODE:STATS")
    args = parser.parse_args()

    with open(args.obs) as f:
        obs = json.load(f)
    base = os.path.dirname(os.path.abspath(args.obs))
    os.makedirs(args.out, exist_ok=True)
    for spec in args.image:
        name, *rest = spec.split(":")
        image = np.load(os.path.join(base, obs["images"]["top"]))
        np.save(os.path.join(args.out, f"{name}.npy"), image_input(image, rest))
    for spec in args.state:
        name, *rest = spec.split(":", 3)
        np.save(os.path.join(args.out, f"{name}.npy"), state_input(obs["joint_positions"], rest))


if __name__ == "__main__":
    main()
