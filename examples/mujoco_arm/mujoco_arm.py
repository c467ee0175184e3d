"""A physics-simulated 7-DoF arm behind zenoh: gymnasium's Pusher-v5 model (a
PR2-like arm) simulated by MuJoCo, driven by reflex through its documented wire
format (README, "zenoh"), like a real robot's bridge would be.

- Joint states (`RFXS`) on `<prefix>/<robot>/joint_states` at --state-hz.
- Joint commands (`RFXC`) from `<prefix>/<robot>/joint_commands`; or, with
  `--protocol ros2`, the arm is a ros2_control arm behind rmw_zenoh
  (ros2_wire.py: JointState out, JointTrajectory in, for `kind = "ros2_arm"`)
  and this process is the router reflex connects to. The positions are tracked by a PD loop in joint torque (the model's motors, limited to
  their +-2 Nm), stepped at 500 Hz in real time.
- A rendered camera (`RFXT`, uint8 [H, W, 3]) on `<prefix>/<robot>/rendered`.
- A goal (`RFXT`, float32 [7] joint positions) on `<prefix>/<robot>/goal`: a
  new seeded random one every --goal-seconds once reflex commands, --goals of
  them; the arm "reaches" a goal when every joint is within --tolerance rad of
  it. After the last one the arm holds until --seconds are up.

At the end it prints a JSON report (goals, which were reached and when). Exits
77 when MuJoCo cannot render here (`--check` only tries that). Run with
.venv-mujoco's python (scripts/mujoco_venv.sh), MUJOCO_GL=egl for headless.
"""

import argparse
import json
import os
import pathlib
import struct
import sys
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

JOINTS = [
    "r_shoulder_pan_joint",
    "r_shoulder_lift_joint",
    "r_upper_arm_roll_joint",
    "r_elbow_flex_joint",
    "r_forearm_roll_joint",
    "r_wrist_flex_joint",
    "r_wrist_roll_joint",
]
HEADER = struct.Struct("<4sHHQQQQ")
KP = np.array([40.0, 40.0, 20.0, 20.0, 6.0, 6.0, 4.0])
KD = np.array([4.0, 4.0, 2.0, 2.0, 0.4, 0.4, 0.2])


def model_path():
    import gymnasium

    return pathlib.Path(gymnasium.__file__).parent / "envs/mujoco/assets/pusher_v5.xml"


def load():
    import mujoco

    model = mujoco.MjModel.from_xml_path(str(model_path()))
    # The PD loop runs at 500 Hz; the gym task's 10 ms Euler step is too coarse for it.
    model.opt.timestep = 0.002
    return mujoco, model, mujoco.MjData(model)


def renderer(mujoco, model, size):
    try:
        return mujoco.Renderer(model, height=size, width=size)
    except Exception as e:  # noqa: BLE001 - any failure means: cannot render here
        print(f"MuJoCo cannot render on this machine ({type(e).__name__}: {e})", file=sys.stderr)
        sys.exit(77)


def tensor(seq, array, dtype_code):
    now = time.monotonic_ns()
    return (HEADER.pack(b"RFXT", 1, array.ndim, seq, dtype_code, now, time.time_ns())
            + struct.pack(f"<{array.ndim}I", *array.shape) + array.tobytes())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["reflex", "ros2"], default="reflex",
                        help="reflex's wire format (connecting to reflex), or ROS 2's through rmw_zenoh "
                             "(as the router reflex connects to, like rmw_zenohd)")
    parser.add_argument("--connect", default="tcp/127.0.0.1:7447", help="reflex's zenoh endpoint")
    parser.add_argument("--listen", default="tcp/127.0.0.1:7447", help="the router's endpoint (--protocol ros2)")
    parser.add_argument("--prefix", default="reflex")
    parser.add_argument("--robot", default="mujoco_arm")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--goals", type=int, default=5)
    parser.add_argument("--goal-seconds", type=float, default=4.0)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-hz", type=float, default=100.0)
    parser.add_argument("--camera", type=int, default=64, help="rendered image size, pixels")
    parser.add_argument("--camera-hz", type=float, default=10.0)
    parser.add_argument("--check", action="store_true", help="only check that MuJoCo renders")
    args = parser.parse_args()

    mujoco, model, data = load()
    camera = renderer(mujoco, model, args.camera)
    camera.update_scene(data)
    frame = camera.render()
    if args.check:
        print(json.dumps({"rendered": list(frame.shape)}))
        return

    import zenoh

    ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in JOINTS]
    qadr = np.array([model.jnt_qposadr[i] for i in ids])
    dadr = np.array([model.jnt_dofadr[i] for i in ids])
    low, high = model.jnt_range[ids, 0], model.jnt_range[ids, 1]
    start = np.clip(np.zeros(7), low + 0.1, high - 0.1)
    data.qpos[qadr] = start
    mujoco.mj_forward(model, data)
    rng = np.random.default_rng(args.seed)
    # Goals inside the joint ranges, away from their ends, where the arm touches
    # nothing (the table is in reach: a goal inside it cannot be reached).
    margin = 0.15 * (high - low)
    root = model.jnt_bodyid[ids[0]]

    def on_arm(body):
        while body > 0:
            if body == root:
                return True
            body = model.body_parentid[body]
        return False

    arm_geoms = {g for g in range(model.ngeom) if on_arm(model.geom_bodyid[g])}
    probe = mujoco.MjData(model)
    goals = []
    while len(goals) < args.goals:
        goal = rng.uniform(low + margin, high - margin)
        probe.qpos[:] = data.qpos
        probe.qpos[qadr] = goal
        mujoco.mj_forward(model, probe)
        contacts = probe.contact[: probe.ncon]
        if not any(c.geom1 in arm_geoms or c.geom2 in arm_geoms for c in contacts):
            goals.append(goal)

    target = start.copy()
    commands = {"count": 0, "first_s": None}
    lock = threading.Lock()
    started = time.monotonic()

    def on_positions(positions):
        if not np.all(np.isfinite(positions)):
            return
        with lock:
            target[:] = positions
            commands["count"] += 1
            if commands["first_s"] is None:
                commands["first_s"] = time.monotonic() - started

    def on_command(sample):
        raw = bytes(sample.payload.to_bytes())
        magic, _version, joints, *_ = HEADER.unpack_from(raw)
        if magic == b"RFXC" and joints == 7 and len(raw) >= HEADER.size + 56:
            on_positions(np.frombuffer(raw, "<f8", 7, HEADER.size))

    config = zenoh.Config()
    config.insert_json5("scouting/multicast/enabled", "false")
    if args.protocol == "ros2":
        config.insert_json5("mode", '"router"')
        config.insert_json5("listen/endpoints", json.dumps([args.listen]))
    else:
        config.insert_json5("mode", '"peer"')
        config.insert_json5("listen/endpoints", "[]")
        config.insert_json5("connect/endpoints", json.dumps([args.connect]))
    base = f"{args.prefix}/{args.robot}"
    report = {"goals": [], "commands": 0}
    with zenoh.open(config) as session:
        if args.protocol == "ros2":
            from ros2_wire import Ros2Arm

            ros2 = Ros2Arm(session, 0, JOINTS, on_positions)
            publish_state = ros2.publish
        else:
            session.declare_subscriber(f"{base}/joint_commands", on_command)
            states = session.declare_publisher(f"{base}/joint_states")

            def publish_state(positions, velocities):
                msg = HEADER.pack(b"RFXS", 1, 7, seq, 1, time.monotonic_ns(), time.time_ns())
                states.put(msg + positions.astype("<f8").tobytes() + velocities.astype("<f8").tobytes())
        camera_pub = session.declare_publisher(f"{base}/rendered")
        goal_pub = session.declare_publisher(f"{base}/goal")
        dt, substeps = model.opt.timestep, 5
        period = dt * substeps
        state_every = max(1, round(1.0 / (args.state_hz * period)))
        camera_every = max(1, round(1.0 / (args.camera_hz * period)))
        seq = frame_seq = goal_seq = 0
        goal_index, goal_started, reached_at, finished = -1, None, None, False
        next_time = time.monotonic()
        step = 0
        while time.monotonic() - started < args.seconds:
            # A new goal once reflex commands, every --goal-seconds.
            with lock:
                commanding = commands["first_s"] is not None
            now = time.monotonic()
            if commanding and (goal_started is None or now - goal_started >= args.goal_seconds):
                if goal_index >= 0:
                    report["goals"].append({"goal": goals[goal_index].tolist(), "reached_s": reached_at,
                                            "final_error": float(np.max(np.abs(data.qpos[qadr] - goals[goal_index])))})
                if goal_index + 1 < len(goals):
                    goal_index += 1
                    goal_started, reached_at = now, None
                else:
                    # Done: the last goal stays, the arm holds it until --seconds are up.
                    goal_started, finished = float("inf"), True
            with lock:
                wanted = target.copy()
            for _ in range(substeps):
                q, qd = data.qpos[qadr], data.qvel[dadr]
                data.ctrl[:] = np.clip(KP * (wanted - q) - KD * qd, -2.0, 2.0)
                mujoco.mj_step(model, data)
            step += 1
            q = data.qpos[qadr].copy()
            if goal_index >= 0 and not finished and reached_at is None and np.max(np.abs(q - goals[goal_index])) < args.tolerance:
                reached_at = now - goal_started
            if step % state_every == 0:
                seq += 1
                publish_state(q, data.qvel[dadr].copy())
                if goal_index >= 0:
                    goal_seq += 1
                    goal_pub.put(tensor(goal_seq, goals[goal_index].astype("<f4"), 1))
            if step % camera_every == 0:
                camera.update_scene(data)
                frame_seq += 1
                camera_pub.put(tensor(frame_seq, np.ascontiguousarray(camera.render()), 2))
            next_time += period
            time.sleep(max(0.0, next_time - time.monotonic()))
        report["commands"] = commands["count"]
        report["camera_frames"] = frame_seq
    print(json.dumps(report))


if __name__ == "__main__":
    main()
