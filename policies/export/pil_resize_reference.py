"""openpi's image resizing, for checking reflex's `filter = "pil_bilinear"`.

openpi resizes camera images with `resize_with_pad`: keep the aspect ratio, resize
with Pillow's BILINEAR filter (antialiased when downscaling), paste centred on a
black canvas. Written here from that published behaviour:

    ratio = max(w / W, h / H); size = (int(w / ratio), int(h / ratio))
    resized = Image.fromarray(img).resize(size, resample=Image.BILINEAR)
    canvas = Image.new(mode, (W, H), 0); canvas.paste(resized, (int((W - rw) / 2), int((H - rh) / 2)))

    .venv/bin/python policies/export/pil_resize_reference.py --input img.npy --height 224 --width 224 --out out.npy
"""

import argparse

import numpy as np
from PIL import Image


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    pil = Image.fromarray(image)
    cur_width, cur_height = pil.size
    if (cur_width, cur_height) == (width, height):
        return image.copy()
    ratio = max(cur_width / width, cur_height / height)
    resized_height, resized_width = int(cur_height / ratio), int(cur_width / ratio)
    resized = pil.resize((resized_width, resized_height), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (max(0, int((width - resized_width) / 2)), max(0, int((height - resized_height) / 2))))
    return np.asarray(canvas)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="uint8 [H, W, 3] .npy")
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stretch", action="store_true", help="plain Image.resize to the size, no padding")
    args = parser.parse_args()
    image = np.load(args.input)
    if args.stretch:
        out = np.asarray(Image.fromarray(image).resize((args.width, args.height), resample=Image.BILINEAR))
    else:
        out = resize_with_pad(image, args.height, args.width)
    np.save(args.out, out)


if __name__ == "__main__":
    main()
