//! `reflex export LOG --mcap`: a recorded run with V-GPS and DSRL (the analytic
//! flow policy, two short episodes) exported to MCAP and read back by the `mcap`
//! Python package (tests/mcap_read.py), an independent reader: every tick's
//! state and command, every chunk, choice and initial noise, and the operator
//! events are there, equal to what reflex's own log reader finds, with JSON
//! schemas naming each field, stamped with the run's clock; the log header is the
//! `reflex` metadata record. A file that is not a run log is refused.

mod common;

use std::process::Command;

use common::*;
use reflex_runtime::log::{Record, read_log};
use serde_json::Value;

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn a_run_log_exports_to_mcap_that_the_mcap_package_reads() {
    let dir = scratch("export-mcap");
    let latent = format!(
        "\n[policy.latent_noise]\nmodel = \"{}\"\naction_magnitude = 1.5\n\n\
         [[policy.latent_noise.inputs]]\nname = \"state\"\nsource = \"state.joint_positions\"\n\
         shape = [1, 3]\n\n[[stages]]\nkind = \"vgps\"\nmodel = \"{}\"\n\n[[stages.inputs]]\n\
         name = \"state\"\nsource = \"state.joint_positions\"\nshape = [1, 3]\n",
        fixture("latent_fixed.onnx").display(),
        fixture("value_reach.onnx").display()
    );
    let launch = dir.join("steered.toml");
    std::fs::write(
        &launch,
        demo_with_policy(&analytic_flow_policy(4, &latent), 2),
    )
    .unwrap();
    let log = dir.join("run.log");
    let dataset = dir.join("episodes");
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "30",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
        "--record",
        dataset.to_str().unwrap(),
        "--set",
        "recording.episodes=2",
        "--set",
        "recording.episode_time_s=1.0",
        "--set",
        "recording.reset_time_s=0.2",
    ]);
    let mcap = dir.join("run.mcap");
    run_ok(&[
        "export",
        log.to_str().unwrap(),
        "--mcap",
        mcap.to_str().unwrap(),
    ]);
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/mcap_read.py"))
        .arg(&mcap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let topics = &read["topics"];
    let log = read_log(&log).unwrap();

    // Schemas: JSON schemas whose properties are the messages' fields.
    for (topic, schema) in [
        ("/joint_states", "reflex.JointState"),
        ("/joint_commands", "reflex.JointCommand"),
        ("/chunks", "reflex.ActionChunk"),
        ("/steering", "reflex.ChunkChoice"),
        ("/initial_noise", "reflex.InitialNoise"),
        ("/events", "foxglove.Log"),
    ] {
        let t = &topics[topic];
        assert_eq!(t["schema"], schema, "{topic}");
        assert_eq!(t["schema_encoding"], "jsonschema");
        assert_eq!(t["message_encoding"], "json");
        let mut fields: Vec<String> = (t["messages"][0].as_object())
            .unwrap_or_else(|| panic!("no message on {topic}"))
            .keys()
            .cloned()
            .collect();
        fields.sort();
        assert_eq!(
            serde_json::to_value(&fields).unwrap(),
            t["schema_properties"],
            "{topic}"
        );
    }

    // Every tick, in order, with the log's values and the run's clock.
    let ticks: Vec<_> = (log.records.iter())
        .filter_map(|r| match r {
            Record::Tick(t) => Some(t),
            _ => None,
        })
        .collect();
    let states = topics["/joint_states"]["messages"].as_array().unwrap();
    let commands = topics["/joint_commands"]["messages"].as_array().unwrap();
    assert_eq!(states.len(), ticks.len());
    assert_eq!(commands.len(), ticks.len());
    let times = numbers(&topics["/joint_states"]["log_times"]);
    for ((t, state), (command, time)) in ticks.iter().zip(states).zip(commands.iter().zip(times)) {
        assert_eq!(state["tick"], t.tick);
        assert_eq!(numbers(&state["position"]), t.state.positions());
        assert_eq!(numbers(&command["position"]), t.command.positions());
        assert_eq!(command["safety_flags"], t.flags);
        assert_eq!(time, t.now_ns as f64);
        let stamp = &state["timestamp"];
        assert_eq!(
            stamp["sec"].as_u64().unwrap() * 1_000_000_000 + stamp["nsec"].as_u64().unwrap(),
            t.now_ns
        );
    }
    assert_eq!(state_names(&states[0]), ["shoulder", "elbow", "wrist"]);

    // Chunks (as future trajectories), choices, initial noise.
    let chunks: Vec<_> = (log.records.iter())
        .filter_map(|r| match r {
            Record::Chunk {
                accepted, chunk, ..
            } => Some((accepted, chunk)),
            _ => None,
        })
        .collect();
    let exported = topics["/chunks"]["messages"].as_array().unwrap();
    assert!(chunks.len() > 5);
    assert_eq!(exported.len(), chunks.len());
    for ((accepted, chunk), message) in chunks.iter().zip(exported) {
        assert_eq!(message["id"], chunk.id);
        assert_eq!(message["accepted"], **accepted);
        let rows = message["actions"].as_array().unwrap();
        assert_eq!(rows.len(), chunk.horizon);
        // float32 values travel as their shortest decimal: back to float32 exactly.
        let flat: Vec<f32> = rows.iter().flat_map(numbers).map(|x| x as f32).collect();
        assert_eq!(flat, chunk.actions);
    }
    let count = |kind: fn(&Record) -> bool| log.records.iter().filter(|r| kind(r)).count();
    let choices = topics["/steering"]["messages"].as_array().unwrap();
    assert_eq!(choices.len(), count(|r| matches!(r, Record::Choice { .. })));
    assert!(choices.iter().all(|c| c["candidates"] == 4));
    assert_eq!(
        topics["/initial_noise"]["messages"]
            .as_array()
            .unwrap()
            .len(),
        count(|r| matches!(r, Record::Noise { .. }))
    );

    // Events: the episodes' resets and begins (accepted), the shutdown's stop.
    let events: Vec<&str> = (topics["/events"]["messages"].as_array().unwrap().iter())
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        events.len(),
        count(|r| matches!(r, Record::Operator { .. } | Record::Estop { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("episode begin") && e.ends_with("accepted")),
        "{events:?}"
    );
    assert!(events.last().unwrap().starts_with("e-stop"), "{events:?}");

    // The header as metadata.
    let meta = &read["metadata"]["reflex"];
    assert_eq!(meta["clock"], "sim");
    assert!(meta["launch"].as_str().unwrap().contains("kind = \"vgps\""));
    let models: Value = serde_json::from_str(meta["models"].as_str().unwrap()).unwrap();
    assert_eq!(models.as_array().unwrap().len(), 3, "{models}");
    assert_eq!(read["profile"], "reflex");

    // Not a run log: refused, nothing written.
    let bogus = dir.join("bogus.log");
    std::fs::write(&bogus, b"not a log").unwrap();
    let out = reflex()
        .args(["export", bogus.to_str().unwrap(), "--mcap"])
        .arg(dir.join("bogus.mcap"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad magic"));
    assert!(!dir.join("bogus.mcap").exists());
}

fn state_names(state: &Value) -> Vec<String> {
    (state["name"].as_array().unwrap().iter())
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}
