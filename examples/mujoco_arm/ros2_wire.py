"""The MuJoCo arm as a ros2_control arm behind rmw_zenoh (Jazzy 0.2.10's
conventions, README "ROS 2 through rmw_zenoh"): sensor_msgs/JointState out on
/joint_states, trajectory_msgs/JointTrajectory in from
/joint_trajectory_controller/joint_trajectory, CDR by rosbags, rmw_zenoh's
33-byte attachment on every sample, liveliness tokens for the node and its
endpoints."""

import struct
import time

import numpy as np
from rosbags.typesys import Stores, get_typestore

STORE = get_typestore(Stores.ROS2_JAZZY)
JOINT_STATE = "sensor_msgs/msg/JointState"
TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
QOS = "::,10:,:,:,,"  # reliable, volatile, keep last 10


def _dds(typename):
    pkg, kind, name = typename.split("/")
    return f"{pkg}::{kind}::dds_::{name}_"


def _key(domain, topic, typename):
    return f"{domain}/{topic.strip('/')}/{_dds(typename)}/{STORE.hash_rihs01(typename)}"


class Ros2Arm:
    def __init__(self, session, domain, joints, on_positions, node="mujoco_arm"):
        self.joints, self.on_positions = list(joints), on_positions
        zid = str(session.zid())
        prefix = f"@ros2_lv/{domain}/{zid}/0"
        self.tokens = [
            session.liveliness().declare_token(f"{prefix}/0/NN/%/%/{node}"),
            session.liveliness().declare_token(
                f"{prefix}/1/MP/%/%/{node}/%joint_states/{_dds(JOINT_STATE)}/{STORE.hash_rihs01(JOINT_STATE)}/{QOS}"),
            session.liveliness().declare_token(
                f"{prefix}/2/MS/%/%/{node}/%joint_trajectory_controller%joint_trajectory/"
                f"{_dds(TRAJECTORY)}/{STORE.hash_rihs01(TRAJECTORY)}/{QOS}"),
        ]
        self.gid = bytes(range(16))
        self.seq = 0
        self.publisher = session.declare_publisher(_key(domain, "/joint_states", JOINT_STATE))
        self.subscriber = session.declare_subscriber(
            _key(domain, "/joint_trajectory_controller/joint_trajectory", TRAJECTORY), self._on_trajectory)

    def _on_trajectory(self, sample):
        if sample.attachment is None or len(bytes(sample.attachment.to_bytes())) != 33:
            return  # as rmw_zenoh: no attachment, no message
        msg = STORE.deserialize_cdr(bytes(sample.payload.to_bytes()), TRAJECTORY)
        if not msg.points:
            return
        by_name = dict(zip(msg.joint_names, msg.points[-1].positions.tolist()))
        if all(j in by_name for j in self.joints):
            self.on_positions(np.array([by_name[j] for j in self.joints]))

    def publish(self, positions, velocities):
        types = STORE.types
        ns = time.time_ns()
        msg = types[JOINT_STATE](
            header=types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9), frame_id=""),
            name=self.joints, position=np.asarray(positions, np.float64),
            velocity=np.asarray(velocities, np.float64), effort=np.array([], np.float64))
        self.seq += 1
        attachment = struct.pack("<qqB", self.seq, ns, 16) + self.gid
        self.publisher.put(bytes(STORE.serialize_cdr(msg, JOINT_STATE, little_endian=True)), attachment=attachment)
