"""The goal-reaching policy of the MuJoCo arm example (launch/mujoco_arm.toml),
written as an ONNX graph: `state` [1,7] and `goal` [1,7] (joint positions) ->
`actions` [1,10,7], action k = state + clip(goal - state, +-(k + 1) * step),
a straight line in joint space at `step` rad per action (1.2 rad/s at 10 Hz).
And its negative control, `mujoco_hold.onnx`: the same inputs, the goal unused,
every action the state (the arm never leaves where it is).

Run with .venv's python: policies/export/make_mujoco_policy.py
"""

import pathlib

import numpy as np
from onnx import helper

from onnx_graph import const, save, tensor

HORIZON, JOINTS, STEP = 10, 7, 0.12
MODELS = pathlib.Path(__file__).resolve().parents[1] / "models"


def reach(path):
    limits = (np.arange(1, HORIZON + 1, dtype=np.float32) * STEP).reshape(1, HORIZON, 1)
    nodes = [
        helper.make_node("Sub", ["goal", "state"], ["gap"]),  # [1,7]
        helper.make_node("Unsqueeze", ["gap", "axis1"], ["gap_row"]),  # [1,1,7]
        helper.make_node("Unsqueeze", ["state", "axis1"], ["state_row"]),
        helper.make_node("Neg", ["limits"], ["neg_limits"]),
        helper.make_node("Min", ["gap_row", "limits"], ["upper"]),  # broadcast [1,H,7]
        helper.make_node("Max", ["upper", "neg_limits"], ["moved"]),
        helper.make_node("Add", ["state_row", "moved"], ["actions"]),
    ]
    inits = [const("axis1", np.array([1], np.int64)), const("limits", limits)]
    graph = helper.make_graph(nodes, "mujoco_goal_reach", [tensor("state", [1, JOINTS]), tensor("goal", [1, JOINTS])],
                              [tensor("actions", [1, HORIZON, JOINTS])], inits)
    save(graph, str(path))


def hold(path):
    nodes = [
        helper.make_node("Mul", ["goal", "zero"], ["unused"]),
        helper.make_node("Add", ["state", "unused"], ["same"]),
        helper.make_node("Unsqueeze", ["same", "axis1"], ["row"]),
        helper.make_node("Expand", ["row", "repeat"], ["actions"]),
    ]
    inits = [const("axis1", np.array([1], np.int64)), const("zero", np.zeros(1, np.float32)),
             const("repeat", np.array([1, HORIZON, 1], np.int64))]
    graph = helper.make_graph(nodes, "mujoco_hold", [tensor("state", [1, JOINTS]), tensor("goal", [1, JOINTS])],
                              [tensor("actions", [1, HORIZON, JOINTS])], inits)
    save(graph, str(path))


if __name__ == "__main__":
    reach(MODELS / "mujoco_goal_reach.onnx")
    hold(MODELS / "mujoco_hold.onnx")
    print("wrote", MODELS / "mujoco_goal_reach.onnx", MODELS / "mujoco_hold.onnx")
