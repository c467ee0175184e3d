//! Action targets other than absolute joint positions, through simulated runs of
//! the real binary: a gripper commanded through its own action column with its own
//! limits, and joint velocities integrated into position targets. (Delta targets
//! run in `launch/sim_arm_flow.toml`, whose trained policy reaches its targets in
//! tests/generative.rs only if the deltas are resolved right.)

mod common;

use common::*;
use reflex_runtime::log::{Record, read_log};

const RATE_HZ: f64 = 100.0;
const GRIPPER_RANGE: [f64; 2] = [0.0, 0.08];
const GRIPPER_SPEED: f64 = 0.05;

fn policy(model: &str, state_width: usize) -> String {
    format!(
        r#"[policy]
kind = "chunk"
model = "{model}"
intra_threads = 1

[[policy.inputs]]
name = "state"
source = "arm.position"
shape = [1, {state_width}]

[policy.actions]
horizon = 10
"#,
        model = fixture(model).display(),
    )
}

fn with_gripper(text: &str) -> String {
    format!("{text}\n[robot.gripper]\nrange = {GRIPPER_RANGE:?}\nmax_speed = {GRIPPER_SPEED}\n")
}

fn run_logged(name: &str, launch_text: &str, seconds: &str) -> Vec<Record> {
    let dir = scratch(name);
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text).unwrap();
    let log = dir.join("run.log");
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        seconds,
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    // Replay reproduces every joint and gripper command bit for bit.
    run_ok(&["replay", log.to_str().unwrap()]);
    read_log(&log).unwrap().records
}

#[test]
fn a_gripper_is_commanded_through_its_column_within_its_own_limits() {
    // chunk_gripper.onnx sees [3 joints, opening] and asks for the opening 0.02
    // below what it measures: the gripper closes step by step, limited by its speed.
    let text = with_gripper(&demo_with_policy(&policy("chunk_gripper.onnx", 4), 3));
    let records = run_logged("gripper", &text, "4");
    let ticks: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Tick(t) => Some(t),
            _ => None,
        })
        .collect();
    assert!(ticks.len() > 300);
    let start = records.iter().find_map(|r| match r {
        Record::Start { gripper, .. } => Some(*gripper),
        _ => None,
    });
    assert_eq!(
        start,
        Some(Some(GRIPPER_RANGE[1])),
        "starts from the measured opening"
    );
    let mut last = GRIPPER_RANGE[1];
    for t in &ticks {
        let g = t
            .command
            .gripper
            .expect("every command carries the gripper");
        assert!(g.is_finite() && (GRIPPER_RANGE[0]..=GRIPPER_RANGE[1]).contains(&g));
        assert!(
            (g - last).abs() <= GRIPPER_SPEED / RATE_HZ + 1e-12,
            "tick {}: {last} -> {g}",
            t.tick
        );
        assert!(
            t.state.gripper.is_some(),
            "the simulated arm reports its opening"
        );
        last = g;
    }
    let end = ticks.last().unwrap();
    assert!(
        end.command.gripper.unwrap() < 0.01 && end.state.gripper.unwrap() < 0.015,
        "the gripper closed: {:?}",
        (end.command.gripper, end.state.gripper)
    );
    // The joints held where they were (the model holds the measured positions).
    let first = ticks[0].command.positions().to_vec();
    for (a, b) in end.command.positions().iter().zip(&first) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    // Chunks are logged as executed: 4 columns, the opening last.
    let chunk = records
        .iter()
        .find_map(|r| match r {
            Record::Chunk { chunk, .. } => Some(chunk),
            _ => None,
        })
        .unwrap();
    assert_eq!(chunk.dim, 4);
}

#[test]
fn joint_velocities_are_integrated_into_positions_from_the_published_command() {
    let velocity = [0.3, -0.2, 0.1];
    let mut text = demo_with_policy(&policy("chunk_velocity.onnx", 3), 3);
    text = text.replace(
        "replan_after = 3",
        "replan_after = 3\ntarget = \"velocity\"",
    );
    let records = run_logged("velocity", &text, "2");
    let ticks: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Tick(t) => Some(t),
            _ => None,
        })
        .collect();
    // Past the start, every joint moves at its commanded velocity (within the
    // limits of the demo arm): the slope over the second second.
    let at = |s: f64| ticks[(s * RATE_HZ) as usize].command.positions().to_vec();
    let (a, b) = (at(0.9), at(1.9));
    for j in 0..3 {
        let slope = b[j] - a[j];
        assert!(
            (slope - velocity[j]).abs() < 0.02,
            "joint {j}: moved {slope} rad/s, commanded {}",
            velocity[j]
        );
    }
    // The chunks hold positions, not velocities: row k of a chunk conditioned on
    // tick t0 is the command at t0 plus (k + 1) action periods of velocity.
    let commands: std::collections::BTreeMap<u64, Vec<f64>> = ticks
        .iter()
        .map(|t| (t.tick, t.command.positions().to_vec()))
        .collect();
    let mut checked = 0;
    for record in &records {
        if let Record::Chunk { chunk, .. } = record
            && let Some(base) = commands.get(&chunk.conditioned_on_tick)
        {
            for k in 0..chunk.horizon {
                for j in 0..3 {
                    let want = base[j] + velocity[j] * 0.1 * (k + 1) as f64;
                    let got = f64::from(chunk.actions[k * 3 + j]);
                    assert!(
                        (got - want).abs() < 1e-5,
                        "row {k} joint {j}: {got} vs {want}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} chunks checked");
}

#[test]
fn targets_and_grippers_are_checked_at_their_fields() {
    let dir = scratch("targets-check");
    let launch = dir.join("launch.toml");
    let cases = [
        (
            with_gripper(&demo_with_policy(&policy("chunk_gripper.onnx", 4), 3))
                .replace("max_speed = 0.05", "max_speed = 0.05\ncolumn = 5"),
            "robot.gripper.column",
        ),
        (
            with_gripper(&demo_with_policy(&policy("chunk_gripper.onnx", 4), 3))
                .replace("range = [0.0, 0.08]", "range = [0.08, 0.0]"),
            "robot.gripper.range",
        ),
        (
            demo_with_policy(&policy("chunk_velocity.onnx", 3), 3)
                .replace("replan_after = 3", "replan_after = 3\ntarget = \"speed\""),
            "execution.target",
        ),
        // A model without the gripper's column is refused when the robot has one.
        (
            with_gripper(&demo_with_policy(&policy("chunk_state_hold.onnx", 4), 3)),
            "expected [1, horizon = 10, action columns = 4]",
        ),
    ];
    for (text, field) in cases {
        std::fs::write(&launch, text).unwrap();
        let out = reflex()
            .args(["check", launch.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field}: accepted");
        assert!(err.contains(field), "{field}: {err}");
    }
}
