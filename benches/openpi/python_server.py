"""The baseline of benches/openpi: a minimal Python policy server written to
openpi's websocket protocol (openpi's own server is not on PyPI, so this is a
re-implementation, not openpi's code), running the same ONNX model as `reflex
serve` with ONNX Runtime: the images HWC uint8 -> NCHW float32 / 255, the state
as float32, one session run, the chunk back as float32 [H, D].

Run with the openpi venv's python: python_server.py --model M --port P
"""

import argparse
import pathlib
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests"))
from openpi_server import serve_policy  # noqa: E402  (the protocol, written for the tests)

CAMERAS = {"observation/image": "image_top", "observation/wrist_image": "image_wrist", "observation/side_image": "image_side"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])

    def policy(request):
        feeds = {"state": np.asarray(request["observation/state"], dtype=np.float32)[None, :]}
        for key, name in CAMERAS.items():
            image = np.asarray(request[key])
            feeds[name] = image.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0)
        return session.run(["actions"], feeds)[0][0]

    serve_policy(args.port, policy, {"server": "python-baseline"}, f"python baseline on {args.port}")


if __name__ == "__main__":
    main()
