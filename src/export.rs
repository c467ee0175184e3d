//! `reflex export LOG --mcap OUT.mcap`: a run log as an MCAP file for Foxglove and
//! PlotJuggler. Messages are JSON (`json` encoding) with a JSON schema each,
//! stamped with the run's clock (the tick's time), one topic per kind:
//!
//! - `/joint_states`: the measured state of every tick (sensor_msgs/JointState's
//!   fields: `name`, `position`, `velocity`);
//! - `/joint_commands`: the command the tick published, with its velocity and the
//!   safety filter's flags;
//! - `/chunks`: every chunk that reached the tick, accepted or not, as a future
//!   trajectory (`actions` rows, `action_period_s` apart);
//! - `/steering`: what a ranking stage (V-GPS) chose from (scores, the chosen
//!   candidate); `/initial_noise`: a latent-noise policy's w (DSRL);
//! - `/events`: e-stops and operator requests with their outcomes, as
//!   `foxglove.Log` (Foxglove's log panel shows them).
//!
//! The log header (reflex version, clock, seed, the launch file as run, the model
//! files and their hashes) goes into an MCAP metadata record named `reflex`.

use std::collections::{BTreeMap, HashMap};
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use mcap::records::{MessageHeader, Metadata};
use reflex_runtime::control::Request;
use reflex_runtime::log::{LogHeader, Record, read_log};
use serde_json::{Value, json};

#[derive(Args)]
pub struct ExportArgs {
    /// The run log (`reflex run --log FILE`).
    log: PathBuf,
    /// Write it as an MCAP file (JSON messages with JSON schemas).
    #[arg(long, value_name = "OUT.mcap")]
    mcap: PathBuf,
}

/// A topic's schema: its name and the JSON schema of its messages.
struct Topic {
    name: &'static str,
    schema: &'static str,
    properties: Value,
}

fn time_schema() -> Value {
    json!({"type": "object", "properties": {
        "sec": {"type": "integer", "minimum": 0},
        "nsec": {"type": "integer", "minimum": 0, "maximum": 999_999_999}}})
}

fn numbers() -> Value {
    json!({"type": "array", "items": {"type": "number"}})
}

fn topics() -> Vec<Topic> {
    let names = json!({"type": "array", "items": {"type": "string"}});
    vec![
        Topic {
            name: "/joint_states",
            schema: "reflex.JointState",
            properties: json!({"timestamp": time_schema(), "tick": {"type": "integer"},
                "name": names, "position": numbers(), "velocity": numbers()}),
        },
        Topic {
            name: "/joint_commands",
            schema: "reflex.JointCommand",
            properties: json!({"timestamp": time_schema(), "tick": {"type": "integer"},
                "name": names, "position": numbers(), "velocity": numbers(),
                "safety_flags": {"type": "integer"}}),
        },
        Topic {
            name: "/chunks",
            schema: "reflex.ActionChunk",
            properties: json!({"timestamp": time_schema(), "tick": {"type": "integer"},
                "id": {"type": "integer"}, "conditioned_on_tick": {"type": "integer"},
                "accepted": {"type": "boolean"}, "model_version": {"type": "integer"},
                "action_period_s": {"type": "number"},
                "actions": {"type": "array", "items": numbers()}}),
        },
        Topic {
            name: "/steering",
            schema: "reflex.ChunkChoice",
            properties: json!({"timestamp": time_schema(), "tick": {"type": "integer"},
                "chunk_id": {"type": "integer"}, "selected": {"type": "integer"},
                "scores": numbers(), "candidates": {"type": "integer"}}),
        },
        Topic {
            name: "/initial_noise",
            schema: "reflex.InitialNoise",
            properties: json!({"timestamp": time_schema(), "tick": {"type": "integer"},
                "chunk_id": {"type": "integer"}, "from_latent": {"type": "boolean"},
                "values": numbers()}),
        },
        Topic {
            name: "/events",
            schema: "foxglove.Log",
            // Foxglove's schema: level 1 debug ... 5 fatal.
            properties: json!({"timestamp": time_schema(), "level": {"type": "integer"},
                "message": {"type": "string"}, "name": {"type": "string"},
                "file": {"type": "string"}, "line": {"type": "integer"}}),
        },
    ]
}

fn stamp(ns: u64) -> Value {
    json!({"sec": ns / 1_000_000_000, "nsec": ns % 1_000_000_000})
}

fn request_name(code: u8) -> String {
    match Request::from_code(code) {
        Some(Request::Estop) => "e-stop".into(),
        Some(Request::Rearm) => "re-arm".into(),
        Some(Request::Resume) => "resume".into(),
        Some(Request::EpisodeReset) => "episode reset".into(),
        Some(Request::EpisodeBegin) => "episode begin".into(),
        None => format!("request {code}"),
    }
}

/// The log header as MCAP metadata (strings; structured values as JSON).
fn header_metadata(header: &LogHeader) -> anyhow::Result<Metadata> {
    let mut metadata = BTreeMap::new();
    for (key, value) in [
        ("reflex_version", header.reflex_version.clone()),
        ("clock", header.clock.clone()),
        ("seed", header.seed.to_string()),
        ("rate_hz", header.rate_hz.to_string()),
        ("action_rate_hz", header.action_rate_hz.to_string()),
        ("strategy", header.strategy.clone()),
        ("launch", header.launch.clone()),
        ("models", serde_json::to_string(&header.models)?),
        ("joints", serde_json::to_string(&header.joints)?),
    ] {
        metadata.insert(key.to_string(), value);
    }
    Ok(Metadata {
        name: "reflex".into(),
        metadata,
    })
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let contents =
        read_log(&args.log).with_context(|| format!("cannot read {}", args.log.display()))?;
    let header = &contents.header;
    if header.rate_hz <= 0.0 {
        bail!("{}: the log header has no control rate", args.log.display());
    }
    // A tick's time on the run's clock; ticks without a record of their own
    // (events between them) fall back to tick / rate.
    let period_ns = 1e9 / header.rate_hz;
    let tick_ns: HashMap<u64, u64> = (contents.records.iter())
        .filter_map(|r| match r {
            Record::Tick(t) => Some((t.tick, t.now_ns)),
            _ => None,
        })
        .collect();
    let time_of = |tick: u64| {
        (tick_ns.get(&tick).copied()).unwrap_or_else(|| (tick as f64 * period_ns).round() as u64)
    };
    let names: Vec<&str> = header.joints.iter().map(|j| j.name.as_str()).collect();

    let file = std::fs::File::create(&args.mcap)
        .with_context(|| format!("cannot create {}", args.mcap.display()))?;
    let options = mcap::WriteOptions::new()
        .compression(None)
        .profile("reflex");
    let mut out = mcap::Writer::with_options(BufWriter::new(file), options)?;
    let mut channels = HashMap::new();
    for topic in topics() {
        let schema = json!({"type": "object", "title": topic.schema,
            "properties": topic.properties});
        let schema_id =
            out.add_schema(topic.schema, "jsonschema", &serde_json::to_vec(&schema)?)?;
        let channel = out.add_channel(schema_id, topic.name, "json", &BTreeMap::new())?;
        channels.insert(topic.name, (channel, 0u32));
    }
    out.write_metadata(&header_metadata(header)?)?;
    let mut write = |topic: &str, ns: u64, message: Value| -> anyhow::Result<()> {
        let (channel_id, sequence) = channels.get_mut(topic).context("unknown topic")?;
        *sequence += 1;
        out.write_to_known_channel(
            &MessageHeader {
                channel_id: *channel_id,
                sequence: *sequence,
                log_time: ns,
                publish_time: ns,
            },
            &serde_json::to_vec(&message)?,
        )?;
        Ok(())
    };
    let event = |ns: u64, level: u8, message: String| {
        json!({"timestamp": stamp(ns), "level": level, "message": message,
            "name": "reflex", "file": "", "line": 0})
    };
    let action_period_s = 1.0 / header.action_rate_hz;
    for record in &contents.records {
        match record {
            Record::Tick(t) => {
                let ns = t.now_ns;
                write(
                    "/joint_states",
                    ns,
                    json!({"timestamp": stamp(ns), "tick": t.tick, "name": names,
                        "position": t.state.positions(), "velocity": t.state.velocities()}),
                )?;
                let joints = t.command.joints;
                write(
                    "/joint_commands",
                    ns,
                    json!({"timestamp": stamp(ns), "tick": t.tick, "name": names,
                        "position": t.command.positions(),
                        "velocity": &t.command.velocity[..joints], "safety_flags": t.flags}),
                )?;
            }
            Record::Chunk {
                tick,
                accepted,
                chunk,
            } => {
                let ns = time_of(*tick);
                let rows: Vec<&[f32]> = chunk.actions.chunks(chunk.dim.max(1)).collect();
                write(
                    "/chunks",
                    ns,
                    json!({"timestamp": stamp(ns), "tick": tick, "id": chunk.id,
                        "conditioned_on_tick": chunk.conditioned_on_tick, "accepted": accepted,
                        "model_version": chunk.model_version,
                        "action_period_s": action_period_s, "actions": rows}),
                )?;
            }
            Record::Choice {
                tick,
                chunk_id,
                choice,
            } => {
                let ns = time_of(*tick);
                write(
                    "/steering",
                    ns,
                    json!({"timestamp": stamp(ns), "tick": tick, "chunk_id": chunk_id,
                        "selected": choice.selected, "scores": choice.scores,
                        "candidates": choice.scores.len()}),
                )?;
            }
            Record::Noise {
                tick,
                chunk_id,
                from_latent,
                values,
            } => {
                let ns = time_of(*tick);
                write(
                    "/initial_noise",
                    ns,
                    json!({"timestamp": stamp(ns), "tick": tick, "chunk_id": chunk_id,
                        "from_latent": from_latent, "values": values}),
                )?;
            }
            Record::Estop { tick } => {
                let ns = time_of(*tick);
                write(
                    "/events",
                    ns,
                    event(ns, 4, format!("e-stop requested after tick {tick}")),
                )?;
            }
            Record::Operator {
                tick,
                request,
                outcome,
            } => {
                let ns = time_of(*tick);
                let (level, what) = match outcome {
                    0 => (2, "accepted".to_string()),
                    code => (3, format!("refused (code {code})")),
                };
                let message = format!("{} before tick {tick}: {what}", request_name(*request));
                write("/events", ns, event(ns, level, message))?;
            }
            Record::Start { .. } | Record::Teleop { .. } | Record::End { .. } => {}
        }
    }
    out.finish()?;
    println!(
        "wrote {} ({} records of {})",
        args.mcap.display(),
        contents.records.len(),
        args.log.display()
    );
    Ok(())
}
