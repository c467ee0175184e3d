"""The independent side of tests/ros2.rs: rosbags (PyPI) serializes ROS 2
messages to CDR and computes their RIHS01 type hashes from ROS 2 Jazzy's
message definitions.

Reads a JSON list of messages on stdin, each {"type": ..., "fields": {...}}
(JointState, JointTrajectory, Float64MultiArray in their ROS field names);
prints JSON {"cdr": [hex, ...], "hashes": {type: RIHS01_...}}. With --decode
TYPE it instead reads hex CDR lines and prints them decoded (field dicts).
"""

import json
import sys

import numpy as np
from rosbags.typesys import Stores, get_typestore

TYPES = [
    "sensor_msgs/msg/JointState",
    "trajectory_msgs/msg/JointTrajectory",
    "std_msgs/msg/Float64MultiArray",
    "std_msgs/msg/String",
]

store = get_typestore(Stores.ROS2_JAZZY)
T = store.types


def f64(values):
    return np.array(values, dtype=np.float64)


def time(t, name="builtin_interfaces/msg/Time"):
    return T[name](sec=t["sec"], nanosec=t["nanosec"])


def header(h):
    return T["std_msgs/msg/Header"](stamp=time(h["stamp"]), frame_id=h["frame_id"])


def build(kind, f):
    if kind == "sensor_msgs/msg/JointState":
        return T[kind](header=header(f["header"]), name=f["name"], position=f64(f["position"]),
                       velocity=f64(f["velocity"]), effort=f64(f["effort"]))
    if kind == "trajectory_msgs/msg/JointTrajectory":
        point = T["trajectory_msgs/msg/JointTrajectoryPoint"]
        points = [point(positions=f64(p["positions"]), velocities=f64(p["velocities"]),
                        accelerations=f64(p["accelerations"]), effort=f64(p["effort"]),
                        time_from_start=time(p["time_from_start"], "builtin_interfaces/msg/Duration"))
                  for p in f["points"]]
        return T[kind](header=header(f["header"]), joint_names=f["joint_names"], points=points)
    if kind == "std_msgs/msg/Float64MultiArray":
        dim = T["std_msgs/msg/MultiArrayDimension"]
        layout = T["std_msgs/msg/MultiArrayLayout"](
            dim=[dim(label=d["label"], size=d["size"], stride=d["stride"]) for d in f["layout"]["dim"]],
            data_offset=f["layout"]["data_offset"])
        return T[kind](layout=layout, data=f64(f["data"]))
    raise SystemExit(f"unknown type {kind}")


def plain(value):
    """A decoded message as JSON-able values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: plain(getattr(value, k)) for k in value.__dataclass_fields__ if k != "__msgtype__"}
    return value


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--decode":
        for line in sys.stdin:
            if line.strip():
                msg = store.deserialize_cdr(bytes.fromhex(line.strip()), sys.argv[2])
                print(json.dumps(plain(msg)))
        return
    messages = json.load(sys.stdin)
    cdr = [bytes(store.serialize_cdr(build(m["type"], m["fields"]), m["type"], little_endian=True)).hex()
           for m in messages]
    print(json.dumps({"cdr": cdr, "hashes": {t: store.hash_rihs01(t) for t in TYPES}}))


if __name__ == "__main__":
    main()
