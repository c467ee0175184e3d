"""The resizes reflex's `area` and `bilinear` image filters claim to be, computed by
OpenCV and torch themselves (in the parity venv), for tests/image_parity.rs.

    python resize_reference.py --image img.npy --sizes 32x32 48x48 --out ref.npz

For every output size HxW (height x width) it writes, from the uint8 [H, W, 3]
image converted to float32 (values 0..255, so no rounding hides a difference):
  area_HxW   cv2.resize(..., interpolation=cv2.INTER_AREA)
  linear_HxW cv2.resize(..., interpolation=cv2.INTER_LINEAR)
  torch_HxW  torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
             antialias=False), as LeRobot and SmolVLA resize
each float32 [H, W, 3].
"""

import argparse

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True)
    parser.add_argument("--sizes", nargs="+", required=True, help="HxW output sizes")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    image = np.load(args.image).astype(np.float32)
    results = {}
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        # OpenCV takes (width, height).
        results[f"area_{size}"] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        results[f"linear_{size}"] = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        nchw = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
        resized = F.interpolate(nchw, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
        results[f"torch_{size}"] = resized[0].permute(1, 2, 0).contiguous().numpy()
    np.savez(args.out, **{k: v.astype(np.float32) for k, v in results.items()})


if __name__ == "__main__":
    main()
