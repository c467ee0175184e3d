"""A stand-in for a ros2_control arm behind rmw_zenoh, written from rmw_zenoh's
documented conventions (Jazzy 0.2.10) with independent tools: eclipse-zenoh
for the transport, rosbags for CDR and the type hashes. For tests/ros2.rs.

It is the router reflex connects to (rmw_zenohd's role) and the arm: it
publishes sensor_msgs/JointState on /joint_states at 100 Hz (joints in its own
order, plus a finger joint reflex does not drive), with rmw_zenoh's attachment
and liveliness tokens, and tracks the positions it is commanded through
joint_trajectory_controller (JointTrajectory) or forward_command_controller
(Float64MultiArray), first-order with a 50 ms time constant. At the end it
prints a JSON report: what it received, the attachments' sequence numbers, the
liveliness tokens it saw, and the final joint positions.
"""

import argparse
import json
import struct
import threading
import time

import numpy as np
import zenoh
from rosbags.typesys import Stores, get_typestore

STORE = get_typestore(Stores.ROS2_JAZZY)
T = STORE.types
JOINT_STATE = "sensor_msgs/msg/JointState"
TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
FORWARD = "std_msgs/msg/Float64MultiArray"
JOINTS = ["wrist", "finger_joint", "shoulder", "elbow"]
INITIAL = {"wrist": 0.6, "finger_joint": 0.01, "shoulder": 0.0, "elbow": 0.6}
# The position controller commands these, in the order of its own config.
FORWARD_JOINTS = ["shoulder", "elbow", "wrist"]


def dds(typename):
    pkg, kind, name = typename.split("/")
    return f"{pkg}::{kind}::dds_::{name}_"


def key(domain, topic, typename):
    return f"{domain}/{topic.strip('/')}/{dds(typename)}/{STORE.hash_rihs01(typename)}"


def attachment(seq, gid):
    return struct.pack("<qqB", seq, time.time_ns(), 16) + gid


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--domain", type=int, default=0)
    parser.add_argument("--tokens-at", type=float, default=2.0,
                        help="seconds after start to list the ROS graph's liveliness tokens")
    args = parser.parse_args()
    config = zenoh.Config()
    config.insert_json5("mode", '"router"')
    config.insert_json5("listen/endpoints", json.dumps([args.listen]))
    config.insert_json5("scouting/multicast/enabled", "false")
    positions = dict(INITIAL)
    targets = dict(INITIAL)
    lock = threading.Lock()
    received = {"trajectory": [], "forward": []}
    problems = []

    def on_command(kind):
        def handle(sample):
            raw = sample.attachment
            if raw is None:
                problems.append(f"{kind}: a sample without attachment")
                return
            raw = bytes(raw.to_bytes())
            if len(raw) != 33 or raw[16] != 16:
                problems.append(f"{kind}: attachment of {len(raw)} bytes: {raw.hex()}")
                return
            seq, stamp = struct.unpack_from("<qq", raw)
            msg = STORE.deserialize_cdr(bytes(sample.payload.to_bytes()), TRAJECTORY if kind == "trajectory" else FORWARD)
            if kind == "trajectory":
                names, point = list(msg.joint_names), msg.points[-1]
                values = point.positions.tolist()
                entry = {"seq": seq, "stamp": stamp, "names": names, "points": len(msg.points),
                         "positions": values, "velocities": point.velocities.tolist(),
                         "time_from_start": [point.time_from_start.sec, point.time_from_start.nanosec],
                         "gid": raw[17:].hex()}
            else:
                names, values = FORWARD_JOINTS, msg.data.tolist()
                entry = {"seq": seq, "stamp": stamp, "positions": values, "gid": raw[17:].hex()}
            with lock:
                received[kind].append(entry)
                for name, value in zip(names, values):
                    targets[name] = value
        return handle

    with zenoh.open(config) as session:
        zid = str(session.zid())
        gid = bytes(range(16))
        session.declare_subscriber(key(args.domain, "/joint_trajectory_controller/joint_trajectory", TRAJECTORY),
                                   on_command("trajectory"))
        session.declare_subscriber(key(args.domain, "/forward_position_controller/commands", FORWARD),
                                   on_command("forward"))
        tokens = [
            session.liveliness().declare_token(f"@ros2_lv/{args.domain}/{zid}/0/0/NN/%/%/ros2_control_node"),
            session.liveliness().declare_token(
                f"@ros2_lv/{args.domain}/{zid}/0/1/MP/%/%/ros2_control_node/%joint_states/"
                f"{dds(JOINT_STATE)}/{STORE.hash_rihs01(JOINT_STATE)}/::,10:,:,:,,"),
        ]
        seen = []

        def list_tokens():
            time.sleep(args.tokens_at)
            replies = session.liveliness().get(f"@ros2_lv/{args.domain}/**", timeout=2.0)
            seen.extend(str(reply.ok.key_expr) for reply in replies if reply.ok is not None)

        lister = threading.Thread(target=list_tokens)
        lister.start()
        publisher = session.declare_publisher(key(args.domain, "/joint_states", JOINT_STATE))
        Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
        end = time.monotonic() + args.seconds
        seq, dt, last = 0, 0.005, time.monotonic()
        while time.monotonic() < end:
            time.sleep(dt)
            now = time.monotonic()
            with lock:
                alpha = 1.0 - np.exp(-(now - last) / 0.05)
                velocity = {}
                for name in JOINTS:
                    step = alpha * (targets[name] - positions[name])
                    velocity[name] = step / max(now - last, 1e-6)
                    positions[name] += step
            last = now
            seq += 1
            if seq % 2:
                continue
            ns = time.time_ns()
            msg = T[JOINT_STATE](
                header=Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=""),
                name=JOINTS, position=np.array([positions[j] for j in JOINTS]),
                velocity=np.array([velocity[j] for j in JOINTS]), effort=np.array([], dtype=np.float64))
            publisher.put(bytes(STORE.serialize_cdr(msg, JOINT_STATE, little_endian=True)),
                          attachment=attachment(seq // 2, gid))
        lister.join()
        del tokens
    print(json.dumps({"received": received, "problems": problems, "tokens": seen, "final": positions,
                      "hashes": {t: STORE.hash_rihs01(t) for t in [JOINT_STATE, TRAJECTORY, FORWARD]}}))


if __name__ == "__main__":
    main()
