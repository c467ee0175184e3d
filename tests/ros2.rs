//! ROS 2 through rmw_zenoh, checked against independent implementations:
//! reflex's CDR bytes and RIHS01 type hashes equal those of rosbags (PyPI), and
//! the `ros2_arm` driver drives a ros2_control stand-in written from rmw_zenoh's
//! conventions with eclipse-zenoh and rosbags (tests/ros2_control_arm.py): joint
//! states matched by name, commands decoded by rosbags, every sample with
//! rmw_zenoh's attachment, the node and its endpoints in the liveliness graph.

mod common;

use std::process::{Command, Stdio};

use common::*;
use reflex_ros2::cdr::Writer;
use reflex_ros2::msgs::{self, Time, TrajectoryPoint};
use reflex_ros2::type_hash::{FLOAT64_MULTI_ARRAY, JOINT_STATE, JOINT_TRAJECTORY, type_hash};
use serde_json::{Value, json};

fn python() -> String {
    repo().join(".venv/bin/python").display().to_string()
}

/// rosbags' CDR (hex) of `messages` and its type hashes.
fn rosbags(messages: &Value) -> Value {
    let mut child = Command::new(python())
        .arg(repo().join("tests/ros2_reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(messages.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tests/ros2_reference.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn cdr_bytes_and_type_hashes_equal_rosbags() {
    let header = |sec, nanosec, frame: &str| json!({"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame});
    let names = ["shoulder", "elbow", "wrist"];
    let (p1, v1, a1) = ([0.1, -0.25, 1.5], [0.5, 0.0, -1.0], [2.0, -3.0, 0.25]);
    let (p2, v2, a2) = ([0.2, -0.2, 1.45], [0.0; 3], [0.0; 3]);
    let messages = json!([
        {"type": "sensor_msgs/msg/JointState", "fields": {
            "header": header(1_700_000_000, 123_456_789, "base_link"),
            "name": names, "position": [0.1, 0.2, 0.3], "velocity": [-1.0, 0.0, 1e-9],
            "effort": []}},
        {"type": "sensor_msgs/msg/JointState", "fields": {
            "header": header(0, 0, ""), "name": [], "position": [], "velocity": [], "effort": []}},
        {"type": "trajectory_msgs/msg/JointTrajectory", "fields": {
            "header": header(0, 0, ""), "joint_names": names, "points": [
                {"positions": p1, "velocities": v1, "accelerations": a1, "effort": [],
                 "time_from_start": {"sec": 0, "nanosec": 10_000_000}},
                {"positions": p2, "velocities": v2, "accelerations": a2, "effort": [],
                 "time_from_start": {"sec": 1, "nanosec": 500_000_000}}]}},
        {"type": "std_msgs/msg/Float64MultiArray", "fields": {
            "layout": {"dim": [], "data_offset": 0}, "data": [0.1, -0.25, 1.5]}},
    ]);
    let reference = rosbags(&messages);
    let mut ours = Vec::new();
    let mut w = Writer::default();
    msgs::write_joint_state(
        &mut w,
        Time {
            sec: 1_700_000_000,
            nanosec: 123_456_789,
        },
        "base_link",
        names.into_iter(),
        &[0.1, 0.2, 0.3],
        &[-1.0, 0.0, 1e-9],
        &[],
    );
    ours.push(hex(&w.bytes));
    msgs::write_joint_state(&mut w, Time::default(), "", [].into_iter(), &[], &[], &[]);
    ours.push(hex(&w.bytes));
    msgs::write_joint_trajectory(
        &mut w,
        Time::default(),
        "",
        names.into_iter(),
        &[
            TrajectoryPoint {
                positions: &p1,
                velocities: &v1,
                accelerations: &a1,
                time_from_start: Time::from_ns(10_000_000),
            },
            TrajectoryPoint {
                positions: &p2,
                velocities: &v2,
                accelerations: &a2,
                time_from_start: Time::from_ns(1_500_000_000),
            },
        ],
    );
    ours.push(hex(&w.bytes));
    msgs::write_float64_multi_array(&mut w, &[0.1, -0.25, 1.5]);
    ours.push(hex(&w.bytes));
    let theirs: Vec<String> = reference["cdr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "message {i}: reflex's CDR differs from rosbags'");
    }
    assert_eq!(ours.len(), theirs.len());

    // What rosbags wrote, reflex reads back.
    let bytes: Vec<u8> = (0..theirs[0].len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&theirs[0][i..i + 2], 16).unwrap())
        .collect();
    let mut state = msgs::JointState::default();
    state.decode_into(&bytes).unwrap();
    assert_eq!(state.name, names);
    assert_eq!(state.position, [0.1, 0.2, 0.3]);
    assert_eq!(state.stamp.nanosec, 123_456_789);
    assert!(state.decode_into(&bytes[..bytes.len() - 3]).is_err());

    for (message, name) in [
        (&JOINT_STATE, "sensor_msgs/msg/JointState"),
        (&JOINT_TRAJECTORY, "trajectory_msgs/msg/JointTrajectory"),
        (&FLOAT64_MULTI_ARRAY, "std_msgs/msg/Float64MultiArray"),
    ] {
        assert_eq!(type_hash(message), reference["hashes"][name], "{name}");
    }
}

/// Runs the ros2_control stand-in for `seconds` and reflex's `launch/ros2_arm.toml`
/// against it with `sets` for 3 s; the stand-in's report.
fn drive(sets: &[&str], seconds: &str) -> Value {
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let arm = Command::new(python())
        .arg(repo().join("tests/ros2_control_arm.py"))
        .args([
            "--listen",
            &endpoint,
            "--seconds",
            seconds,
            "--tokens-at",
            "2.5",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let connect = format!("zenoh.connect=[\"{endpoint}\"]");
    let mut args = vec![
        "run",
        "launch/ros2_arm.toml",
        "--duration",
        "3",
        "--set",
        &connect,
        "--set",
        "policy.model=\"../policies/models/test/chunk_state_offset.onnx\"",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = run_ok(&args);
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains("e-stop never latched"), "{summary}");
    let report = arm.wait_with_output().unwrap();
    assert!(report.status.success(), "the ros2_control stand-in failed");
    serde_json::from_slice(&report.stdout).unwrap()
}

/// Checks what every ROS 2 peer needs of a command stream.
fn check_stream(report: &Value, kind: &str) -> Vec<Value> {
    assert_eq!(report["problems"], json!([]), "{:#}", report["problems"]);
    let received = report["received"][kind].as_array().unwrap().clone();
    assert!(received.len() >= 250, "{} commands", received.len());
    // rmw_zenoh's attachment: a sequence number from 1, one GID.
    for (i, command) in received.iter().enumerate() {
        assert_eq!(command["seq"], i + 1);
        assert_eq!(command["gid"], received[0]["gid"]);
    }
    // The policy moves the first joint by 0.05 rad a chunk; the others hold.
    let final_ = &report["final"];
    let shoulder = final_["shoulder"].as_f64().unwrap();
    assert!(shoulder > 0.15, "shoulder at {shoulder}");
    for (joint, initial) in [("elbow", 0.6), ("wrist", 0.6), ("finger_joint", 0.01)] {
        let at = final_[joint].as_f64().unwrap();
        assert!((at - initial).abs() < 0.01, "{joint} moved to {at}");
    }
    received
}

#[test]
fn ros2_arm_drives_a_ros2_control_arm_over_rmw_zenoh() {
    let report = drive(&[], "6");
    let received = check_stream(&report, "trajectory");
    for command in &received {
        assert_eq!(command["names"], json!(["shoulder", "elbow", "wrist"]));
        assert_eq!(command["points"], 1);
        assert_eq!(command["time_from_start"], json!([0, 10_000_000]));
    }
    // Commanded velocities travel with the positions.
    assert!(
        received
            .iter()
            .any(|c| c["velocities"][0].as_f64().unwrap() > 0.1)
    );
    // The ROS graph sees reflex's node and both of its endpoints.
    let tokens: Vec<&str> = report["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let hashes = &report["hashes"];
    let has = |kind: &str, tail: &str| {
        tokens
            .iter()
            .any(|t| t.contains(&format!("/{kind}/%/%/reflex")) && t.ends_with(tail))
    };
    assert!(has("NN", "/NN/%/%/reflex"), "{tokens:#?}");
    let state_hash = hashes["sensor_msgs/msg/JointState"].as_str().unwrap();
    assert!(
        has(
            "MS",
            &format!("%joint_states/sensor_msgs::msg::dds_::JointState_/{state_hash}/::,10:,:,:,,")
        ),
        "{tokens:#?}"
    );
    let trajectory_hash = hashes["trajectory_msgs/msg/JointTrajectory"]
        .as_str()
        .unwrap();
    assert!(
        has(
            "MP",
            &format!(
                "%joint_trajectory_controller%joint_trajectory/\
                 trajectory_msgs::msg::dds_::JointTrajectory_/{trajectory_hash}/::,10:,:,:,,"
            )
        ),
        "{tokens:#?}"
    );
}

#[test]
fn ros2_arm_drives_a_forward_command_controller() {
    let report = drive(&["drivers[0].command=\"forward\""], "6");
    let received = check_stream(&report, "forward");
    assert!(
        received
            .iter()
            .all(|c| c["positions"].as_array().unwrap().len() == 3)
    );
    assert_eq!(report["received"]["trajectory"], json!([]));
}

#[test]
fn ros2_mode_connects_to_the_router_instead_of_listening_on_its_port() {
    let dir = scratch("ros2-errors");
    let launch = dir.join("listens.toml");
    std::fs::write(
        &launch,
        std::fs::read_to_string(repo().join("launch/ros2_arm.toml"))
            .unwrap()
            .replace("listen = []", "listen = [\"tcp/127.0.0.1:7447\"]")
            .replace(
                "\"../policies/",
                &format!("\"{}/policies/", repo().display()),
            ),
    )
    .unwrap();
    let out = reflex().arg("check").arg(&launch).output().unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("zenoh.listen") && error.contains("rmw_zenoh's router listens on port 7447"),
        "{error}"
    );
}
