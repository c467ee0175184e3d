//! The first robot reflex drives whose dynamics nobody here wrote: gymnasium's
//! Pusher-v5 arm (7 joints) simulated by MuJoCo (examples/mujoco_arm), behind
//! reflex's zenoh wire format. Under the goal-reaching policy the arm reaches
//! seeded random goals; under the hold policy (the negative control, same
//! inputs, the goal unused) it reaches none. The same arm behind ROS 2
//! (rmw_zenoh conventions) is driven by the `ros2_arm` driver. Skipped, saying why, where MuJoCo
//! cannot render.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// The python of .venv-mujoco (`make test` makes it first).
fn mujoco_python() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/mujoco_venv.sh"))
        .output()
        .expect("scripts/mujoco_venv.sh");
    assert!(
        out.status.success(),
        "the MuJoCo venv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn example() -> PathBuf {
    repo().join("examples/mujoco_arm/mujoco_arm.py")
}

/// How reflex reaches the arm.
#[derive(Clone, Copy, PartialEq)]
enum Wire {
    /// reflex's wire format (`zenoh_arm`, launch/mujoco_arm.toml).
    Reflex,
    /// ROS 2 through rmw_zenoh (`ros2_arm`, launch/mujoco_arm_ros2.toml).
    Ros2,
}

/// The launch file for `wire` with `model` against the simulated arm for
/// `goals` goals of 5 s each: the arm's report and reflex's summary.
fn drive(python: &PathBuf, wire: Wire, model: &str, goals: usize, seed: u64) -> (Value, Value) {
    let dir = scratch("mujoco-arm");
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    // The arm outlives the run (reflex starts after it), so its states never stop.
    let seconds = goals as f64 * 5.0 + 8.0;
    let mut arm = Command::new(python);
    arm.arg(example());
    match wire {
        Wire::Reflex => arm.args(["--connect", &endpoint]),
        Wire::Ros2 => arm.args(["--protocol", "ros2", "--listen", &endpoint]),
    };
    let arm = arm
        .args(["--goals", &goals.to_string(), "--goal-seconds", "5"])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .env("MUJOCO_GL", "egl")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let summary_path = dir.join(format!("{model}-{seed}.json"));
    let (launch, zenoh) = match wire {
        Wire::Reflex => (
            "launch/mujoco_arm.toml",
            format!("zenoh.listen=[\"{endpoint}\"]"),
        ),
        Wire::Ros2 => {
            // The arm is the router: it must listen before reflex connects.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            (
                "launch/mujoco_arm_ros2.toml",
                format!("zenoh.connect=[\"{endpoint}\"]"),
            )
        }
    };
    let policy = format!("policy.model=\"../policies/models/{model}\"");
    let duration = (seconds - 4.0).to_string();
    run_ok(&[
        "run",
        launch,
        "--duration",
        &duration,
        "--set",
        &zenoh,
        "--set",
        &policy,
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]);
    let out = arm.wait_with_output().unwrap();
    assert!(out.status.success(), "the MuJoCo arm failed");
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        summary(&summary_path),
    )
}

fn reached(report: &Value) -> usize {
    report["goals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| !g["reached_s"].is_null())
        .count()
}

#[test]
fn the_mujoco_arm_reaches_its_goals_under_the_policy_and_holds_without_it() {
    let python = mujoco_python();
    let check = Command::new(&python)
        .arg(example())
        .arg("--check")
        .env("MUJOCO_GL", "egl")
        .output()
        .unwrap();
    if check.status.code() == Some(77) {
        eprintln!("SKIPPED: {}", String::from_utf8_lossy(&check.stderr).trim());
        return;
    }
    assert!(check.status.success(), "MuJoCo: {check:?}");

    let (report, summary) = drive(&python, Wire::Reflex, "mujoco_goal_reach.onnx", 6, 3);
    eprintln!("{report}");
    assert_eq!(report["goals"].as_array().unwrap().len(), 6, "{report}");
    let hits = reached(&report);
    assert!(hits >= 5, "{hits} of 6 goals reached: {report}");
    assert_eq!(summary["estop"], false, "{summary}");
    assert_eq!(summary["inference_errors"], 0, "{summary}");
    // The rendered camera reached reflex as a stream.
    let rendered = summary["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "rendered")
        .unwrap()
        .clone();
    assert!(rendered["samples"].as_u64().unwrap() >= 100, "{rendered}");

    // The negative control: the same loop, the goal unused.
    let (held, _) = drive(&python, Wire::Reflex, "mujoco_hold.onnx", 2, 3);
    assert_eq!(reached(&held), 0, "{held}");

    // The same arm as a ros2_control arm behind rmw_zenoh, driven by `ros2_arm`.
    let (ros2, summary) = drive(&python, Wire::Ros2, "mujoco_goal_reach.onnx", 3, 4);
    let hits = reached(&ros2);
    assert!(hits >= 2, "{hits} of 3 goals reached over ROS 2: {ros2}");
    assert_eq!(summary["estop"], false, "{summary}");
}
