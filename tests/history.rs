//! Policies that condition on past observations (LeRobot's `n_obs_steps`): a
//! Diffusion-Policy-style fixture with `history = 2` on its state and image inputs
//! is fed the current observation and the one a whole action period before it.
//! Its actions encode the two states it saw, so every chunk of a simulated run is
//! checked against the states the log recorded at those ticks.

mod common;

use std::collections::BTreeMap;

use common::*;
use reflex_runtime::log::{Record, read_log};

const HORIZON: usize = 10;
const JOINTS: usize = 3;
/// 100 Hz control, 10 Hz actions: one observation frame is 10 ticks.
const TICKS_PER_FRAME: u64 = 10;

fn history_policy() -> String {
    format!(
        r#"[policy]
kind = "chunk"
model = "{model}"
intra_threads = 1

[[policy.inputs]]
name = "image"
source = "camera.top"
shape = [1, 2, 3, 32, 32]
history = 2
image = {{ resize = [32, 32] }}

[[policy.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 2, 3]
history = 2

[policy.actions]
horizon = {HORIZON}
"#,
        model = fixture("chunk_history2.onnx").display(),
    )
}

/// What chunk_history2.onnx computes from the older (`s0`) and newer (`s1`) state.
fn expected(s0: &[f64], s1: &[f64]) -> Vec<f32> {
    let mut actions = Vec::with_capacity(HORIZON * JOINTS);
    for h in 0..HORIZON {
        for j in 0..JOINTS {
            let (a, b) = (s0[j] as f32, s1[j] as f32);
            let v = 0.5 * (b - a) + 0.02;
            actions.push(b + (h + 1) as f32 * v);
        }
    }
    actions
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
}

#[test]
fn a_history_of_two_feeds_the_last_two_observations() {
    let dir = scratch("history2");
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, demo_with_policy(&history_policy(), 2)).unwrap();
    let log = dir.join("run.log");
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "3",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let contents = read_log(&log).unwrap();
    let mut states: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut chunks = Vec::new();
    for record in &contents.records {
        match record {
            Record::Tick(t) => {
                states.insert(t.tick, t.state.positions().to_vec());
            }
            Record::Chunk { chunk, .. } => chunks.push(chunk.clone()),
            _ => {}
        }
    }
    let first_tick = *states.keys().next().unwrap();
    let state_at = |tick: u64| states[&tick.max(first_tick)].clone();
    assert!(chunks.len() >= 10, "{} chunks", chunks.len());
    let mut moving = 0;
    for chunk in &chunks {
        let c = chunk.conditioned_on_tick;
        let (s0, s1) = (state_at(c.saturating_sub(TICKS_PER_FRAME)), state_at(c));
        assert!(
            close(&chunk.actions, &expected(&s0, &s1)),
            "chunk {} (tick {c}): {:?}, expected {:?}",
            chunk.id,
            &chunk.actions[..JOINTS],
            &expected(&s0, &s1)[..JOINTS]
        );
        // Negative control: the state one tick off is told apart whenever the arm moves.
        let off = state_at(c.saturating_sub(TICKS_PER_FRAME - 1));
        if !close(&chunk.actions, &expected(&off, &s1)) {
            moving += 1;
        }
    }
    assert!(
        moving >= chunks.len() / 2,
        "the arm barely moved: only {moving} of {} chunks tell the frame apart",
        chunks.len()
    );
}

#[test]
fn history_shapes_are_checked_at_their_fields() {
    let dir = scratch("history-shape");
    let launch = dir.join("launch.toml");
    let bad = history_policy().replace(
        "shape = [1, 2, 3]\nhistory = 2",
        "shape = [1, 3]\nhistory = 2",
    );
    std::fs::write(&launch, demo_with_policy(&bad, 5)).unwrap();
    let out = reflex()
        .args(["check", launch.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("field `policy.inputs[1].shape`"), "{err}");
    assert!(
        err.contains("with history = 2 the shape is [1, 2, ...]"),
        "{err}"
    );
}
