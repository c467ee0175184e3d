"""Write reward-classifier fixtures for `[reward_classifier]` (HIL-SERL's success
classifier), for the simulated arm's top camera (96x96 RGB in [0, 1]):

- reward_green.onnx: `image` float32 [1,3,96,96] -> `probability` float32 [1,1] =
  sigmoid(2 (4 - g)), g the number of pixels of the end effector's green (G > 0.75,
  R < 0.3). The target is drawn in red over the effector, so the green disappears
  when the effector is on the target: probability near 1 on target, near 0 away.
- reward_never.onnx: the same graph with the count offset by 1000 pixels: never
  success (the negative control).

Analytic, so nothing is trained; IR 13, opset 17, checked with ONNX Runtime.

    .venv/bin/python policies/export/make_reward_classifier.py --out-dir policies/models/test
"""

import argparse
import os

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from onnx_graph import const, save, tensor

SIDE = 96


def classifier(offset: float):
    nodes = [
        helper.make_node("Slice", ["image", "r0", "r1", "axis1"], ["red"]),
        helper.make_node("Slice", ["image", "g0", "g1", "axis1"], ["green"]),
        helper.make_node("Greater", ["green", "green_min"], ["is_green"]),
        helper.make_node("Less", ["red", "red_max"], ["not_red"]),
        helper.make_node("And", ["is_green", "not_red"], ["effector"]),
        helper.make_node("Cast", ["effector"], ["effector_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["effector_f", "axes"], ["count"], keepdims=0),
        helper.make_node("Reshape", ["count", "shape11"], ["count11"]),
        helper.make_node("Sub", ["threshold", "count11"], ["margin"]),
        helper.make_node("Mul", ["margin", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    init = [
        const("r0", np.array([0], np.int64)),
        const("r1", np.array([1], np.int64)),
        const("g0", np.array([1], np.int64)),
        const("g1", np.array([2], np.int64)),
        const("axis1", np.array([1], np.int64)),
        const("green_min", np.float32(0.75)),
        const("red_max", np.float32(0.3)),
        const("axes", np.array([1, 2, 3], np.int64)),
        const("shape11", np.array([1, 1], np.int64)),
        const("threshold", np.float32(4.0 - offset)),
        const("gain", np.float32(2.0)),
    ]
    return helper.make_graph(
        nodes, "reward", [tensor("image", [1, 3, SIDE, SIDE])], [tensor("probability", [1, 1])], init
    )


def check(path: str, expect_on: bool):
    session = ort.InferenceSession(path)
    away = np.full((1, 3, SIDE, SIDE), 40 / 255, np.float32)
    away[:, 1, 40:45, 40:45] = 220 / 255  # a visible effector: 25 green pixels
    away[:, 0, 40:45, 40:45] = 40 / 255
    on = np.full((1, 3, SIDE, SIDE), 40 / 255, np.float32)
    on[:, 0, 38:47, 38:47] = 1.0  # the red target hides it
    p_away = session.run(None, {"image": away})[0].item()
    p_on = session.run(None, {"image": on})[0].item()
    assert p_away < 0.01, p_away
    assert (p_on > 0.99) == expect_on, p_on


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default="policies/models/test")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for name, offset, expect in [("reward_green.onnx", 0.0, True), ("reward_never.onnx", 1000.0, False)]:
        path = os.path.join(args.out_dir, name)
        save(classifier(offset), path)
        check(path, expect)
        print(path)


if __name__ == "__main__":
    main()
