//! `reflex run --rerun save=FILE.rrd`, read back with the Rerun SDK (rerun-sdk
//! from PyPI, tests/rerun_read.py): every tick's joint state and command, every
//! applied chunk as a future trajectory, what the policy saw, and the V-GPS
//! choices equal what the run log recorded.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use reflex_runtime::log::{Record, read_log};
use serde_json::Value;

fn read_back(rrd: &Path) -> Value {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/rerun_read.py"))
        .arg(rrd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rerun_read.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value an entity holds at `tick`.
fn at(entity: &Value, tick: u64) -> Option<&Value> {
    entity
        .as_array()?
        .iter()
        .find(|row| row[0] == tick)
        .map(|row| &row[1])
}

#[test]
fn the_rerun_recording_holds_what_the_run_log_holds() {
    let dir = scratch("rerun");
    let (rrd, log) = (dir.join("run.rrd"), dir.join("run.log"));
    let save = format!("save={}", rrd.display());
    run_ok(&[
        "run",
        "launch/sim_arm.toml",
        "--sim-clock",
        "--duration",
        "2",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
        "--rerun",
        &save,
    ]);
    let viewed = read_back(&rrd);
    let joints = ["shoulder", "elbow", "wrist"];
    let (mut ticks, mut chunks) = (0, 0);
    for record in read_log(&log).unwrap().records {
        match record {
            Record::Tick(t) => {
                ticks += 1;
                for (i, joint) in joints.iter().enumerate() {
                    let state = &viewed[format!("/joints/{joint}/state")];
                    let command = &viewed[format!("/joints/{joint}/command")];
                    assert_eq!(
                        at(state, t.tick).and_then(Value::as_f64),
                        Some(t.state.position[i])
                    );
                    assert_eq!(
                        at(command, t.tick).and_then(Value::as_f64),
                        Some(t.command.position[i])
                    );
                }
            }
            Record::Chunk {
                tick,
                accepted: true,
                chunk,
            } => {
                chunks += 1;
                for (j, joint) in joints.iter().enumerate() {
                    let strip = at(&viewed[format!("/chunks/{joint}")], tick)
                        .unwrap_or_else(|| panic!("no chunk for {joint} at tick {tick}"));
                    let strip = strip.as_array().unwrap();
                    assert_eq!(strip.len(), chunk.horizon);
                    for (k, point) in strip.iter().enumerate() {
                        // Action k runs (k + 1) action periods (0.1 s) after the chunk.
                        let (t, y) = (point[0].as_f64().unwrap(), point[1].as_f64().unwrap());
                        assert!((t - (k + 1) as f64 * 0.1).abs() < 1e-6);
                        assert_eq!(y as f32, chunk.actions[k * chunk.dim + j]);
                    }
                }
            }
            _ => {}
        }
    }
    assert!(
        ticks >= 200 && chunks >= 5,
        "{ticks} ticks, {chunks} chunks"
    );
    // What the policy saw: one 96 x 96 RGB frame per inference.
    let frames = viewed["/cameras/top"].as_array().unwrap();
    assert!(frames.len() >= chunks, "{} frames", frames.len());
    for frame in frames {
        assert_eq!(frame[1], 96 * 96 * 3);
        assert!(frame[2].as_u64().unwrap() > 0, "a black frame");
    }
    let format = &viewed["/cameras/top:format"][0][1];
    assert_eq!(
        (&format["width"], &format["height"]),
        (&Value::from(96), &Value::from(96))
    );
}

#[test]
fn steering_choices_are_in_the_recording() {
    let dir = scratch("rerun-steering");
    let (rrd, log) = (dir.join("run.rrd"), dir.join("run.log"));
    let launch = dir.join("vgps.toml");
    std::fs::write(
        &launch,
        repo_launch_text("sim_arm_steering.toml")
            .replacen("[policy]\n", "[policy]\nbatch = 4\n", 1)
            .replacen(
                "\n[safety]",
                &format!("{}\n[safety]", vgps_stage("sim_reach_weak_value.onnx")),
                1,
            ),
    )
    .unwrap();
    let save = format!("save={}", rrd.display());
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "1.5",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
        "--rerun",
        &save,
    ]);
    let viewed = read_back(&rrd);
    let mut choices = 0;
    for record in read_log(&log).unwrap().records {
        if let Record::Choice { tick, choice, .. } = record {
            choices += 1;
            let selected = at(&viewed["/steering/selected"], tick).and_then(Value::as_f64);
            assert_eq!(selected, Some(choice.selected as f64), "tick {tick}");
        }
    }
    assert!(choices >= 3, "{choices} choices");
}
