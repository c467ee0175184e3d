//! The binary run log (`reflex run --log FILE`), the recorder thread that writes
//! it, and the reader that recovers everything a damaged log still holds.
//!
//! The log holds every input the tick's decisions depend on (the measured joint
//! state, each chunk and the tick it was applied at) and every output (command and
//! safety flags), so `reflex replay` can re-execute the run and check each command
//! bit for bit. Under the simulated clock nothing in it depends on wall time, so
//! two runs with the same seed write identical bytes.
//!
//! # Layout (format version 3)
//!
//! All integers are little-endian.
//!
//! ```text
//! file  = "REFLEXLG" (8 bytes) | version: u32 = 3 | frame(header) | frame(record)*
//! frame = SYNC (4 bytes: F5 52 46 58) | length: u32 | crc: u32 | body (length bytes)
//! body  = kind: u8 | fields
//! crc   = CRC-32 (IEEE, zlib's crc32) of the 4 length bytes followed by the body
//! ```
//!
//! | kind | body after the kind byte |
//! |------|--------------------------|
//! | 0 header | the [`LogHeader`] as JSON |
//! | 1 Start  | joints u16, position f64 x joints |
//! | 2 Tick   | tick u64, now_ns u64, state seq u64, state stamp_ns u64, joints u16, state position f64 x joints, state velocity f64 x joints, command seq u64, command joints u16, command position f64 x joints, flags u32 |
//! | 3 Chunk  | tick u64, chunk id u64, conditioned_on_tick u64, accepted u8, horizon u32, dim u32, model version u32, actions f32 x horizon x dim |
//! | 4 Estop  | tick u64 |
//! | 5 Operator | tick u64, request u8 (`control::Request` code), outcome u8 (0 accepted, else the refusal's code) |
//! | 6 Teleop | tick u64, seq u64, bits u8 (1: engaged, 2: end-effector frame), values u16, f64 x values |
//! | 8 Noise | tick u64, chunk id u64, from_latent u8 (1: the latent-noise policy's w, 0: a seeded candidate), the chunk's initial noise f32 x horizon x model dim |
//! | 7 Choice | tick u64, chunk id u64, selected u32, candidates u32, score f32 x candidates, then every candidate's actions f32 x candidates x horizon x dim (left out when they would not fit a record) |
//! | 255 End  | ticks u64 (written only when the run closed its log cleanly) |
//!
//! Size caps (the writer refuses to exceed them, the reader rejects frames over
//! them): a header body is at most [`MAX_HEADER_BYTES`], a record body at most
//! [`MAX_RECORD_BYTES`]; a header has 1..=[`MAX_JOINTS`] joints and a horizon of
//! at most [`MAX_HORIZON`] (so the largest chunk fits one record).
//!
//! # Crash safety
//!
//! The tick only pushes events into a bounded queue. The recorder thread writes
//! them, hands its buffer to the OS at least every [`FLUSH_INTERVAL`] (so a
//! `kill -9` loses at most that much), syncs the file to the disk every
//! [`SYNC_INTERVAL`] (a power loss loses at most that much) and syncs it when the
//! log is closed.
//!
//! # Reading a damaged log
//!
//! [`LogReader`] streams the file and returns every whole frame whose CRC matches;
//! the magic, version and header frame must be intact. When the log ends without
//! an End record, [`LogReport::end`] says at which byte and why (a cut frame, or
//! the end of a whole record). A damaged frame in the middle (no marker where a
//! frame should start, a length over the cap, a CRC mismatch) is reported with
//! its offset, and the reader resynchronizes: it scans forward byte by byte for the
//! next marker that starts a frame with a valid CRC and goes on from there. We
//! continue rather than stop because every later record is still good data for
//! statistics (`reflex calibrate`); `reflex replay` re-executes only the records
//! before the first gap, since the tick's state cannot be rebuilt across one.
//! A frame whose CRC matches but whose body does not decode (an unknown kind
//! written by a newer reflex, sizes that disagree with the header) is reported and
//! skipped: its CRC vouches for its length.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use crate::launch::JointConfig;
use crate::types::{ActionChunk, JointCommand, JointState, MAX_JOINTS};

pub const MAGIC: [u8; 8] = *b"REFLEXLG";
pub const VERSION: u32 = 3;
/// Starts every frame; lets a reader find the next frame after a damaged one.
pub const SYNC: [u8; 4] = [0xF5, b'R', b'F', b'X'];
/// Marker, length and CRC.
pub const FRAME_HEAD: usize = 12;
/// The largest header body (the launch file as run is part of it).
pub const MAX_HEADER_BYTES: usize = 4 << 20;
/// The largest record body.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// The longest action chunk a log can hold (MAX_HORIZON x MAX_JOINTS f32 fits a record).
pub const MAX_HORIZON: usize = 4096;
/// The highest control rate a log can describe (the launch file's limit).
pub const MAX_RATE_HZ: f64 = 10_000.0;
/// How often the recorder hands what it wrote to the OS.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// How often the recorder syncs the file to the disk.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Corrupt frames described one by one in a [`LogReport`]; later ones are only counted.
const MAX_REPORTED_CORRUPTIONS: usize = 100;

/// Record kinds: the first byte of a frame's body. Adding a kind means a number
/// here, a variant in [`Record`], and one arm each in [`encode_body`] and
/// [`decode_body`].
mod kind {
    pub const HEADER: u8 = 0;
    pub const START: u8 = 1;
    pub const TICK: u8 = 2;
    pub const CHUNK: u8 = 3;
    pub const ESTOP: u8 = 4;
    pub const OPERATOR: u8 = 5;
    pub const TELEOP: u8 = 6;
    pub const CHOICE: u8 = 7;
    pub const NOISE: u8 = 8;
    pub const END: u8 = 0xFF;
}

fn replace() -> String {
    "replace".into()
}

/// Everything replay needs to rebuild the tick, plus the launch text for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogHeader {
    pub reflex_version: String,
    /// `sim` or `wall`.
    pub clock: String,
    pub seed: u64,
    pub rate_hz: f64,
    pub joints: Vec<JointConfig>,
    pub max_state_age_ms: f64,
    pub estop_after_stale_ms: f64,
    pub horizon: usize,
    pub action_rate_hz: f64,
    pub replan_after: usize,
    /// How the executor's target moves between actions (`linear` for logs
    /// written before there was a choice).
    #[serde(default)]
    pub interpolation: crate::executor::Interpolation,
    /// The execution strategy (`replace` for logs written before strategies).
    #[serde(default = "replace")]
    pub strategy: String,
    /// The strategy's checked parameters.
    #[serde(default)]
    pub strategy_params: serde_json::Value,
    /// The safety filter's settings (defaults for logs written before they existed).
    #[serde(default)]
    pub safety: crate::launch::SafetyConfig,
    /// The URDF the run's robot model came from (for the workspace box on replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urdf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tip_link: Option<String>,
    /// `[robot.gripper]`, when the robot has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gripper: Option<crate::gripper::GripperConfig>,
    /// `[recording.reset]` of a run that recorded episodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<crate::recording::ResetParams>,
    /// The launch file as run (overrides applied).
    pub launch: String,
    /// Every model file the run loaded at start, with its SHA-256: the versions
    /// behind each step (a chunk's `model_version` counts base-policy swaps
    /// from these; value and latent-noise models do not change within a run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelFile>,
}

/// A model file a run loaded, and its content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// The launch-file field naming it (`policy.model`, `stages[0].model`, ...).
    pub field: String,
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

impl LogHeader {
    /// Checks every value replay builds the tick from; on error returns the field
    /// and what is wrong with it. The writer and the reader both run it, so a log
    /// that was written can be read, and an edited header cannot crash replay.
    pub fn check(&self) -> Result<(), (String, String)> {
        let field = |name: &str, message: String| Err((name.to_string(), message));
        if self.clock != "sim" && self.clock != "wall" {
            return field(
                "clock",
                format!("must be `sim` or `wall`, found {:?}", self.clock),
            );
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= MAX_RATE_HZ) {
            return field(
                "rate_hz",
                format!("must be in (0, {MAX_RATE_HZ}], found {}", self.rate_hz),
            );
        }
        let joints = self.joints.len();
        if joints == 0 || joints > MAX_JOINTS {
            return field(
                "joints",
                format!("need 1..={MAX_JOINTS} joints, found {joints}"),
            );
        }
        for (i, joint) in self.joints.iter().enumerate() {
            if let Err((name, message)) = joint.check() {
                return field(&format!("joints[{i}].{name}"), message);
            }
        }
        if let Some(gripper) = &self.gripper
            && let Err((name, message)) = gripper.check(joints)
        {
            return field(&format!("gripper.{name}"), message);
        }
        for (name, value) in [
            ("max_state_age_ms", self.max_state_age_ms),
            ("estop_after_stale_ms", self.estop_after_stale_ms),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return field(name, format!("must be a finite number >= 0, found {value}"));
            }
        }
        if self.horizon == 0 || self.horizon > MAX_HORIZON {
            return field(
                "horizon",
                format!("must be in 1..={MAX_HORIZON}, found {}", self.horizon),
            );
        }
        if !(self.action_rate_hz.is_finite()
            && self.action_rate_hz > 0.0
            && self.action_rate_hz <= self.rate_hz)
        {
            return field(
                "action_rate_hz",
                format!(
                    "must be positive and at most rate_hz ({}), found {}",
                    self.rate_hz, self.action_rate_hz
                ),
            );
        }
        if let Err((name, message)) = self.safety.check(joints) {
            return field(&format!("safety.{name}"), message);
        }
        if self.replan_after == 0 || self.replan_after > self.horizon {
            return field(
                "replan_after",
                format!(
                    "must be in 1..={} (the horizon), found {}",
                    self.horizon, self.replan_after
                ),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickRecord {
    pub tick: u64,
    pub now_ns: u64,
    pub state: JointState,
    pub command: JointCommand,
    pub flags: u32,
}

// Records are plain fixed-size values on purpose: boxing the large ones would
// allocate in the tick.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The measured position the safety filter was armed from.
    Start {
        joints: usize,
        position: [f64; MAX_JOINTS],
        /// The gripper's measured opening, when the arm reports one.
        gripper: Option<f64>,
    },
    Tick(TickRecord),
    /// A chunk that reached the tick, accepted or rejected.
    Chunk {
        tick: u64,
        accepted: bool,
        chunk: ActionChunk,
    },
    /// An e-stop requested from outside the tick (shutdown, operator), after `tick`.
    Estop {
        tick: u64,
    },
    /// A re-arm or resume request (`control::Request` code) and its outcome
    /// (0 accepted, else `safety::Refusal` code), applied before `tick`'s step.
    Operator {
        tick: u64,
        request: u8,
        outcome: u8,
    },
    /// A new sample of the teleop device, applied before `tick`'s step (after
    /// the operator requests of that tick).
    Teleop {
        tick: u64,
        sample: crate::teleop::TeleopCommand,
    },
    /// What a ranking stage chose chunk `chunk_id` from (written after its
    /// Chunk record; replay does not need it).
    Choice {
        tick: u64,
        chunk_id: u64,
        choice: crate::types::ChunkChoice,
    },
    /// The initial noise chunk `chunk_id` was sampled from, when a latent-noise
    /// policy (DSRL) steers the sampler (written after its Chunk record).
    Noise {
        tick: u64,
        chunk_id: u64,
        from_latent: bool,
        values: Vec<f32>,
    },
    End {
        ticks: u64,
    },
}

/// What the tick hands the recorder; chunks travel as the worker's boxes.
#[allow(clippy::large_enum_variant)] // see Record
pub enum LogEvent {
    Start {
        joints: usize,
        position: [f64; MAX_JOINTS],
        gripper: Option<f64>,
    },
    Tick(TickRecord),
    Chunk {
        tick: u64,
        accepted: bool,
        chunk: Box<ActionChunk>,
    },
    Estop {
        tick: u64,
    },
    Operator {
        tick: u64,
        request: u8,
        outcome: u8,
    },
    Teleop {
        tick: u64,
        sample: crate::teleop::TeleopCommand,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "{} is {what}, not a regular file; a run log is a file written by `reflex run --log`",
        path.display()
    )]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("not a reflex log (bad magic)")]
    Magic,
    #[error(
        "log format version {0} is not supported (this build reads version {VERSION}; \
         replay a log with the reflex version that wrote it)"
    )]
    Version(u32),
    #[error("log header: {0}")]
    Header(String),
    #[error(
        "log header field `{field}`: {message} (the header was edited or damaged; \
         replay needs the header as the run wrote it)"
    )]
    InvalidHeader { field: String, message: String },
}

/// Encodes a record's body (kind byte and fields) at the end of `b`.
fn encode_body(record: &Record, b: &mut Vec<u8>) {
    let f64s = |b: &mut Vec<u8>, values: &[f64]| {
        values
            .iter()
            .for_each(|v| b.extend_from_slice(&v.to_le_bytes()))
    };
    match record {
        Record::Start {
            joints,
            position,
            gripper,
        } => {
            b.push(kind::START);
            b.extend_from_slice(&(*joints as u16).to_le_bytes());
            f64s(b, &position[..*joints]);
            // Optional trailing values: logs of robots without a gripper stay as they were.
            if let Some(g) = gripper {
                f64s(b, &[*g]);
            }
        }
        Record::Tick(t) => {
            b.push(kind::TICK);
            for v in [
                t.tick,
                t.now_ns,
                t.state.epoch,
                t.state.seq,
                t.state.stamp_ns,
            ] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&(t.state.joints as u16).to_le_bytes());
            f64s(b, t.state.positions());
            f64s(b, t.state.velocities());
            b.extend_from_slice(&t.command.seq.to_le_bytes());
            b.extend_from_slice(&(t.command.joints as u16).to_le_bytes());
            f64s(b, t.command.positions());
            b.extend_from_slice(&t.flags.to_le_bytes());
            if let Some(command) = t.command.gripper {
                f64s(b, &[t.state.gripper.unwrap_or(f64::NAN), command]);
            }
        }
        Record::Chunk {
            tick,
            accepted,
            chunk,
        } => {
            b.push(kind::CHUNK);
            for v in [*tick, chunk.id, chunk.conditioned_on_tick] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.push(u8::from(*accepted));
            b.extend_from_slice(&(chunk.horizon as u32).to_le_bytes());
            b.extend_from_slice(&(chunk.dim as u32).to_le_bytes());
            b.extend_from_slice(&chunk.model_version.to_le_bytes());
            for a in &chunk.actions {
                b.extend_from_slice(&a.to_le_bytes());
            }
        }
        Record::Estop { tick } => {
            b.push(kind::ESTOP);
            b.extend_from_slice(&tick.to_le_bytes());
        }
        Record::Operator {
            tick,
            request,
            outcome,
        } => {
            b.push(kind::OPERATOR);
            b.extend_from_slice(&tick.to_le_bytes());
            b.extend_from_slice(&[*request, *outcome]);
        }
        Record::Teleop { tick, sample } => {
            b.push(kind::TELEOP);
            b.extend_from_slice(&tick.to_le_bytes());
            b.extend_from_slice(&sample.seq.to_le_bytes());
            // Bit 0: engaged; bit 1: end-effector frame.
            let end_effector = sample.frame == crate::teleop::TeleopFrame::EndEffector;
            b.push(u8::from(sample.engaged) | (u8::from(end_effector) << 1));
            b.extend_from_slice(&(sample.len as u16).to_le_bytes());
            f64s(b, sample.positions());
        }
        Record::Choice {
            tick,
            chunk_id,
            choice,
        } => {
            b.push(kind::CHOICE);
            b.extend_from_slice(&tick.to_le_bytes());
            b.extend_from_slice(&chunk_id.to_le_bytes());
            b.extend_from_slice(&choice.selected.to_le_bytes());
            b.extend_from_slice(&(choice.scores.len() as u32).to_le_bytes());
            for q in &choice.scores {
                b.extend_from_slice(&q.to_le_bytes());
            }
            // The candidates go in when the frame stays under the record cap.
            if 32 + 4 * (choice.scores.len() + choice.candidates.len()) <= MAX_RECORD_BYTES {
                for a in &choice.candidates {
                    b.extend_from_slice(&a.to_le_bytes());
                }
            }
        }
        Record::Noise {
            tick,
            chunk_id,
            from_latent,
            values,
        } => {
            b.push(kind::NOISE);
            b.extend_from_slice(&tick.to_le_bytes());
            b.extend_from_slice(&chunk_id.to_le_bytes());
            b.push(u8::from(*from_latent));
            for v in values {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        Record::End { ticks } => {
            b.push(kind::END);
            b.extend_from_slice(&ticks.to_le_bytes());
        }
    }
}

/// Decodes a frame body; `joints` is the header's joint count. Every size is
/// bounded by the body's length, so a hostile body cannot make it allocate more.
fn decode_body(body: &[u8], joints: usize) -> Result<Record, String> {
    let mut c = BodyCursor { body, at: 0 };
    let record = match c.u8()? {
        kind::START => {
            let n = c.joints()?;
            if n != joints {
                return Err(format!(
                    "Start record with {n} joints, the header has {joints}"
                ));
            }
            let position = c.vector(n)?;
            let gripper = if c.remaining() == 8 {
                Some(c.f64()?)
            } else {
                None
            };
            Record::Start {
                joints: n,
                position,
                gripper,
            }
        }
        kind::TICK => {
            let (tick, now_ns) = (c.u64()?, c.u64()?);
            let (epoch, seq, stamp_ns) = (c.u64()?, c.u64()?, c.u64()?);
            let n = c.joints()?;
            let mut state = JointState::empty(n);
            (state.epoch, state.seq, state.stamp_ns) = (epoch, seq, stamp_ns);
            state.position = c.vector(n)?;
            state.velocity = c.vector(n)?;
            let mut command = JointCommand::empty(0);
            command.seq = c.u64()?;
            command.joints = c.joints()?;
            command.position = c.vector(command.joints)?;
            (command.tick, command.stamp_ns) = (tick, now_ns);
            let flags = c.u32()?;
            if c.remaining() == 16 {
                let measured = c.f64()?;
                state.gripper = (!measured.is_nan()).then_some(measured);
                command.gripper = Some(c.f64()?);
            }
            Record::Tick(TickRecord {
                tick,
                now_ns,
                state,
                command,
                flags,
            })
        }
        kind::CHUNK => {
            let (tick, id, conditioned_on_tick) = (c.u64()?, c.u64()?, c.u64()?);
            let accepted = c.u8()? != 0;
            let (horizon, dim) = (c.u32()? as usize, c.u32()? as usize);
            let model_version = c.u32()?;
            let bytes = horizon
                .checked_mul(dim)
                .and_then(|n| n.checked_mul(4))
                .filter(|n| *n == c.remaining())
                .ok_or_else(|| {
                    format!(
                        "Chunk record of {horizon} x {dim} actions, but {} bytes of actions",
                        c.remaining()
                    )
                })?;
            let actions = c
                .take(bytes)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Record::Chunk {
                tick,
                accepted,
                chunk: ActionChunk {
                    id,
                    conditioned_on_tick,
                    horizon,
                    dim,
                    actions,
                    infer_ns: 0,
                    model_version,
                    choice: Default::default(),
                    noise: Vec::new(),
                    noise_from_latent: false,
                },
            }
        }
        kind::ESTOP => Record::Estop { tick: c.u64()? },
        kind::OPERATOR => Record::Operator {
            tick: c.u64()?,
            request: c.u8()?,
            outcome: c.u8()?,
        },
        kind::TELEOP => {
            let (tick, seq) = (c.u64()?, c.u64()?);
            let bits = c.u8()?;
            let engaged = bits & 1 != 0;
            let frame = if bits & 2 != 0 {
                crate::teleop::TeleopFrame::EndEffector
            } else {
                crate::teleop::TeleopFrame::Joint
            };
            let len = usize::from(c.array().map(u16::from_le_bytes)?);
            if len > MAX_JOINTS + 1 {
                return Err(format!(
                    "Teleop record with {len} values (at most {})",
                    MAX_JOINTS + 1
                ));
            }
            let mut sample = crate::teleop::TeleopCommand {
                seq,
                engaged,
                frame,
                len,
                ..crate::teleop::TeleopCommand::NONE
            };
            for x in sample.positions.iter_mut().take(len) {
                *x = f64::from_bits(c.u64()?);
            }
            Record::Teleop { tick, sample }
        }
        kind::CHOICE => {
            let (tick, chunk_id) = (c.u64()?, c.u64()?);
            let (selected, count) = (c.u32()?, c.u32()? as usize);
            let floats = |bytes: &[u8]| -> Vec<f32> {
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            };
            let score_bytes = count
                .checked_mul(4)
                .filter(|n| *n <= c.remaining())
                .ok_or_else(|| {
                    format!(
                        "Choice record of {count} scores, but {} bytes",
                        c.remaining()
                    )
                })?;
            let scores = floats(c.take(score_bytes)?);
            if selected as usize >= count.max(1) || !c.remaining().is_multiple_of(4) {
                return Err(format!(
                    "Choice record: candidate {selected} of {count}, {} bytes of candidates",
                    c.remaining()
                ));
            }
            let candidates = floats(c.take(c.remaining())?);
            Record::Choice {
                tick,
                chunk_id,
                choice: crate::types::ChunkChoice {
                    selected,
                    scores,
                    candidates,
                },
            }
        }
        kind::NOISE => {
            let (tick, chunk_id) = (c.u64()?, c.u64()?);
            let from_latent = c.u8()? != 0;
            if !c.remaining().is_multiple_of(4) {
                return Err(format!(
                    "Noise record with {} bytes of noise",
                    c.remaining()
                ));
            }
            let values = c
                .take(c.remaining())?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Record::Noise {
                tick,
                chunk_id,
                from_latent,
                values,
            }
        }
        kind::END => Record::End { ticks: c.u64()? },
        kind::HEADER => return Err("a second header frame".into()),
        other => {
            return Err(format!(
                "unknown record kind {other} (written by a newer reflex?)"
            ));
        }
    };
    if c.remaining() != 0 {
        return Err(format!(
            "{} unexpected bytes after a whole record of kind {}",
            c.remaining(),
            body[0]
        ));
    }
    Ok(record)
}

/// Reads little-endian fields from one frame's body.
struct BodyCursor<'a> {
    body: &'a [u8],
    at: usize,
}

impl BodyCursor<'_> {
    fn remaining(&self) -> usize {
        self.body.len() - self.at
    }
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "record body ends after {} bytes, a field needs {n} more at byte {}",
                self.body.len(),
                self.at
            ));
        }
        self.at += n;
        Ok(&self.body[self.at - n..self.at])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }
    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }
    fn joints(&mut self) -> Result<usize, String> {
        let n = usize::from(self.array().map(u16::from_le_bytes)?);
        if n > MAX_JOINTS {
            return Err(format!("{n} joints (at most {MAX_JOINTS})"));
        }
        Ok(n)
    }
    fn vector(&mut self, n: usize) -> Result<[f64; MAX_JOINTS], String> {
        let mut v = [0.0; MAX_JOINTS];
        for x in v.iter_mut().take(n) {
            *x = f64::from_bits(self.u64()?);
        }
        Ok(v)
    }
}

fn frame_crc(length: [u8; 4], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length);
    hasher.update(body);
    hasher.finalize()
}

/// Fills in the marker, length and CRC of a frame whose body follows
/// `FRAME_HEAD` reserved bytes in `frame`.
fn seal_frame(frame: &mut [u8], cap: usize) -> io::Result<()> {
    let len = frame.len() - FRAME_HEAD;
    if len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a log record of {len} bytes is over the {cap}-byte cap"),
        ));
    }
    let length = (len as u32).to_le_bytes();
    let crc = frame_crc(length, &frame[FRAME_HEAD..]);
    frame[..4].copy_from_slice(&SYNC);
    frame[4..8].copy_from_slice(&length);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Writes records to any `Write`, one frame each.
pub struct LogWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> LogWriter<W> {
    /// Writes the magic, version and header; refuses a header that the reader would reject.
    pub fn new(mut out: W, header: &LogHeader) -> io::Result<Self> {
        if let Err((field, message)) = header.check() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("log header field `{field}`: {message}"),
            ));
        }
        let mut frame = vec![0; FRAME_HEAD];
        frame.push(kind::HEADER);
        serde_json::to_writer(&mut frame, header)?;
        seal_frame(&mut frame, MAX_HEADER_BYTES)?;
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&frame)?;
        Ok(Self {
            out,
            buf: Vec::with_capacity(4096),
        })
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        self.buf.clear();
        self.buf.resize(FRAME_HEAD, 0);
        encode_body(record, &mut self.buf);
        seal_frame(&mut self.buf, MAX_RECORD_BYTES)?;
        self.out.write_all(&self.buf)
    }

    /// Hands buffered bytes to the OS.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Where the recorder writes: a file, or memory in tests.
pub trait LogSink: Write + Send + 'static {
    /// Makes everything written so far durable (fsync for a file).
    fn sync(&mut self) -> io::Result<()>;
}

/// Nowhere: a recorder that only feeds an observer.
impl LogSink for io::Sink {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sees every record the recorder writes, on its thread.
pub type RecordObserver = Box<dyn FnMut(&Record) + Send>;

/// The recorder's writer and its observer.
struct Observed<W: Write> {
    writer: LogWriter<W>,
    observer: Option<RecordObserver>,
}

impl<W: Write> Observed<W> {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        if let Some(observer) = &mut self.observer {
            observer(record);
        }
        self.writer.write(record)
    }
}

impl LogSink for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl<W: LogSink> LogWriter<BufWriter<W>> {
    /// Flushes to the OS, then to the disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_mut().sync()
    }
}

/// How a log ends.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEnd {
    /// The End record: the run closed its log cleanly after `ticks` ticks.
    Complete { ticks: u64 },
    /// No End record: the readable log stops at byte `offset` (a killed or crashed
    /// run, a full disk, damage that no valid frame follows), for `reason`.
    Truncated { offset: u64, reason: String },
}

impl fmt::Display for LogEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Complete { ticks } => {
                write!(f, "the log ends cleanly (End record after {ticks} ticks)")
            }
            Self::Truncated { offset, reason } => write!(
                f,
                "the log ends at byte {offset} without an End record: {reason}"
            ),
        }
    }
}

/// A damaged stretch in the middle of a log.
#[derive(Debug, Clone, PartialEq)]
pub struct CorruptFrame {
    /// Where the damage starts.
    pub offset: u64,
    /// Bytes skipped until the next valid frame (or the end of the log).
    pub skipped: u64,
    pub reason: String,
    /// Whole records read before it.
    pub records_before: u64,
}

impl fmt::Display for CorruptFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "corrupt frame at byte {}: {}; skipped {} bytes, reading resumed at byte {}",
            self.offset,
            self.reason,
            self.skipped,
            self.offset + self.skipped
        )
    }
}

/// What a reader found besides the records.
#[derive(Debug, Clone, PartialEq)]
pub struct LogReport {
    pub end: LogEnd,
    /// The first damaged stretches (at most 100 are described).
    pub corrupt: Vec<CorruptFrame>,
    /// All damaged stretches, described or not.
    pub corrupt_count: u64,
    /// Whole, valid records returned.
    pub records: u64,
}

impl LogReport {
    /// An End record and no damage.
    pub fn is_clean(&self) -> bool {
        matches!(self.end, LogEnd::Complete { .. }) && self.corrupt_count == 0
    }

    /// One line per finding: each corrupt frame, then how the log ends.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.corrupt.iter().map(ToString::to_string).collect();
        let unlisted = self.corrupt_count - self.corrupt.len() as u64;
        if unlisted > 0 {
            lines.push(format!("... and {unlisted} more corrupt frames"));
        }
        lines.push(self.end.to_string());
        lines
    }
}

/// The outcome of looking for a frame at the reader's position.
enum FrameCheck {
    Valid {
        len: usize,
    },
    /// The input ends inside the frame.
    Cut(String),
    Invalid(String),
}

/// Streams a log: holds at most one frame (and a read-ahead block) in memory.
pub struct LogReader<R: Read> {
    input: R,
    buf: Vec<u8>,
    /// Index in `buf` of the byte at `offset`.
    pos: usize,
    offset: u64,
    eof: bool,
    read_error: Option<String>,
    header: LogHeader,
    report: LogReport,
    finished: bool,
}

const READ_BLOCK: usize = 64 * 1024;

/// Opens a log file: checks it is a regular file, then reads and checks its header.
pub fn open_log(path: &Path) -> Result<LogReader<File>, LogError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // O_NONBLOCK: opening a FIFO must not wait for a writer before we can refuse it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a plain file"
        };
        return Err(LogError::NotAFile {
            path: path.to_path_buf(),
            what,
        });
    }
    LogReader::new(file)
}

impl<R: Read> LogReader<R> {
    /// Reads the magic, version and header; all three must be intact.
    pub fn new(input: R) -> Result<Self, LogError> {
        let mut reader = Self {
            input,
            buf: Vec::with_capacity(READ_BLOCK),
            pos: 0,
            offset: 0,
            eof: false,
            read_error: None,
            header: LogHeader {
                reflex_version: String::new(),
                clock: String::new(),
                seed: 0,
                rate_hz: 0.0,
                joints: Vec::new(),
                max_state_age_ms: 0.0,
                estop_after_stale_ms: 0.0,
                horizon: 0,
                action_rate_hz: 0.0,
                replan_after: 0,
                interpolation: Default::default(),
                strategy: "replace".into(),
                strategy_params: serde_json::Value::Null,
                safety: Default::default(),
                urdf: None,
                tip_link: None,
                gripper: None,
                reset: None,
                launch: String::new(),
                models: Vec::new(),
            },
            report: LogReport {
                end: LogEnd::Truncated {
                    offset: 0,
                    reason: "not read yet".into(),
                },
                corrupt: Vec::new(),
                corrupt_count: 0,
                records: 0,
            },
            finished: false,
        };
        if !reader.fill(MAGIC.len() + 4) {
            let present = reader.available();
            return Err(match &reader.read_error {
                Some(e) => LogError::Io(io::Error::other(e.clone())),
                // The start of a log that was cut (a run killed as it began).
                None if MAGIC.starts_with(&reader.buf[..present.min(MAGIC.len())]) => {
                    LogError::Header(format!(
                        "the log ends after {present} bytes, before its header: the run \
                         wrote nothing more"
                    ))
                }
                None => LogError::Magic,
            });
        }
        if reader.buf[..MAGIC.len()] != MAGIC {
            return Err(LogError::Magic);
        }
        let mut version = [0; 4];
        version.copy_from_slice(&reader.buf[MAGIC.len()..MAGIC.len() + 4]);
        let version = u32::from_le_bytes(version);
        if version != VERSION {
            return Err(LogError::Version(version));
        }
        reader.consume(MAGIC.len() + 4);
        let len = match reader.check_frame(MAX_HEADER_BYTES) {
            FrameCheck::Valid { len } => len,
            FrameCheck::Cut(reason) | FrameCheck::Invalid(reason) => {
                let reason = match &reader.read_error {
                    Some(e) => format!("read error: {e}"),
                    None => reason,
                };
                return Err(LogError::Header(format!(
                    "the header frame at byte {} is unreadable: {reason}",
                    reader.offset
                )));
            }
        };
        let body = &reader.buf[reader.pos + FRAME_HEAD..reader.pos + FRAME_HEAD + len];
        if body[0] != kind::HEADER {
            return Err(LogError::Header(format!(
                "the first frame is a record of kind {}, not the header",
                body[0]
            )));
        }
        reader.header = serde_json::from_slice(&body[1..])
            .map_err(|e| LogError::Header(format!("not a valid header: {e}")))?;
        reader.consume(FRAME_HEAD + len);
        if let Err((field, message)) = reader.header.check() {
            return Err(LogError::InvalidHeader { field, message });
        }
        Ok(reader)
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// What was found so far; complete once [`Self::next_record`] returned `None`.
    pub fn report(&self) -> &LogReport {
        &self.report
    }

    pub fn into_parts(self) -> (LogHeader, LogReport) {
        (self.header, self.report)
    }

    /// The next whole, valid record; `None` at the end of the log (see [`Self::report`]).
    /// Damage and read errors end up in the report, never as a panic or an error.
    pub fn next_record(&mut self) -> Option<Record> {
        while !self.finished {
            let at = self.offset;
            match self.check_frame(MAX_RECORD_BYTES) {
                FrameCheck::Valid { len } => {
                    let start = self.pos + FRAME_HEAD;
                    let decoded =
                        decode_body(&self.buf[start..start + len], self.header.joints.len());
                    self.consume(FRAME_HEAD + len);
                    match decoded {
                        Ok(record) => {
                            if let Record::End { ticks } = record {
                                self.finish_complete(ticks);
                            }
                            self.report.records += 1;
                            return Some(record);
                        }
                        Err(reason) => self.corrupt(at, (FRAME_HEAD + len) as u64, reason),
                    }
                }
                FrameCheck::Cut(reason) if self.available() == 0 => {
                    self.finish_truncated(at, reason)
                }
                FrameCheck::Cut(reason) | FrameCheck::Invalid(reason) => match self.resync() {
                    Some(skipped) => self.corrupt(at, skipped, reason),
                    None => self.finish_truncated(at, reason),
                },
            }
        }
        None
    }

    fn available(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Makes at least `n` bytes available at the position; false if the input ends first.
    fn fill(&mut self, n: usize) -> bool {
        while self.available() < n {
            if self.eof {
                return false;
            }
            if self.pos > 0 && self.pos * 2 >= self.buf.len() {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let old = self.buf.len();
            self.buf.resize(old + READ_BLOCK, 0);
            let read = self.input.read(&mut self.buf[old..]);
            self.buf.truncate(old + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.eof = true;
                    self.read_error = Some(e.to_string());
                }
            }
        }
        true
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.offset += n as u64;
    }

    /// Checks for a whole, valid frame at the position without consuming it.
    fn check_frame(&mut self, cap: usize) -> FrameCheck {
        if !self.fill(FRAME_HEAD) {
            return FrameCheck::Cut(if self.available() == 0 {
                "no frame follows the last whole record (the run was killed, crashed, \
                 or is still writing)"
                    .into()
            } else {
                format!(
                    "a frame cut after {} of its {FRAME_HEAD} header bytes",
                    self.available()
                )
            });
        }
        let head = &self.buf[self.pos..self.pos + FRAME_HEAD];
        if head[..4] != SYNC {
            return FrameCheck::Invalid("no frame marker where a frame should start".into());
        }
        let length = [head[4], head[5], head[6], head[7]];
        let crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        let len = u32::from_le_bytes(length) as usize;
        if len == 0 || len > cap {
            return FrameCheck::Invalid(format!("frame length {len} is outside 1..={cap} bytes"));
        }
        if !self.fill(FRAME_HEAD + len) {
            return FrameCheck::Cut(format!(
                "a frame of {len} bytes with only {} present before the end of the log",
                self.available() - FRAME_HEAD
            ));
        }
        let body = &self.buf[self.pos + FRAME_HEAD..self.pos + FRAME_HEAD + len];
        if frame_crc(length, body) != crc {
            return FrameCheck::Invalid("CRC mismatch".into());
        }
        FrameCheck::Valid { len }
    }

    /// Moves to the next valid frame after the position; returns the bytes skipped,
    /// or `None` when no valid frame follows (everything up to the end is consumed).
    fn resync(&mut self) -> Option<u64> {
        let start = self.offset;
        self.consume(1);
        loop {
            if !self.fill(SYNC.len()) {
                self.consume(self.available());
                return None;
            }
            let window = &self.buf[self.pos..];
            match window.windows(SYNC.len()).position(|w| w == SYNC) {
                Some(i) => {
                    self.consume(i);
                    if let FrameCheck::Valid { .. } = self.check_frame(MAX_RECORD_BYTES) {
                        return Some(self.offset - start);
                    }
                    self.consume(1);
                }
                // Keep the last bytes: a marker may straddle the next block.
                None => self.consume(window.len() - (SYNC.len() - 1)),
            }
        }
    }

    fn corrupt(&mut self, offset: u64, skipped: u64, reason: String) {
        self.report.corrupt_count += 1;
        if self.report.corrupt.len() < MAX_REPORTED_CORRUPTIONS {
            self.report.corrupt.push(CorruptFrame {
                offset,
                skipped,
                reason,
                records_before: self.report.records,
            });
        }
    }

    fn finish_truncated(&mut self, offset: u64, reason: String) {
        let reason = match self.read_error.take() {
            Some(e) => format!("read error: {e}"),
            None => reason,
        };
        self.report.end = LogEnd::Truncated { offset, reason };
        self.finished = true;
    }

    fn finish_complete(&mut self, ticks: u64) {
        self.report.end = LogEnd::Complete { ticks };
        self.finished = true;
        // The writer writes nothing after End: anything there is damage, counted, not read.
        let at = self.offset;
        let mut trailing = 0u64;
        while self.fill(1) {
            trailing += self.available() as u64;
            self.consume(self.available());
        }
        if trailing > 0 {
            self.corrupt(at, trailing, "data after the End record (ignored)".into());
        }
    }
}

/// A whole log read into memory.
#[derive(Debug, Clone, PartialEq)]
pub struct LogContents {
    pub header: LogHeader,
    /// Every whole, valid record, in order.
    pub records: Vec<Record>,
    pub report: LogReport,
}

/// Reads every whole record of a log file (see [`open_log`] to stream instead).
pub fn read_log(path: &Path) -> Result<LogContents, LogError> {
    collect(open_log(path)?)
}

/// Reads every whole record of a log held in memory.
pub fn parse_log(bytes: &[u8]) -> Result<LogContents, LogError> {
    collect(LogReader::new(bytes)?)
}

fn collect<R: Read>(mut reader: LogReader<R>) -> Result<LogContents, LogError> {
    let mut records = Vec::new();
    while let Some(record) = reader.next_record() {
        records.push(record);
    }
    let (header, report) = reader.into_parts();
    Ok(LogContents {
        header,
        records,
        report,
    })
}

/// The recorder thread: drains events from the tick into a log file. The tick never
/// waits for it; when its queue is full, events are dropped and counted.
pub struct Recorder {
    events: Arc<ArrayQueue<LogEvent>>,
    dropped: AtomicU64,
    done: Arc<AtomicBool>,
    /// Whether closing writes the End record (not when a panic unwinds the loop).
    clean: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<u64>>,
}

/// How the log ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSummary {
    pub records: u64,
    pub dropped: u64,
    /// The first write error (a full disk, say); records before it are on disk.
    pub error: Option<String>,
}

impl Recorder {
    /// Creates `path` (a regular file, replaced if it exists) and starts the thread.
    /// Chunks go back to `free_chunks` once written.
    pub fn create(
        path: &Path,
        header: &LogHeader,
        free_chunks: Arc<ArrayQueue<Box<ActionChunk>>>,
    ) -> io::Result<Self> {
        Self::spawn(Self::open(path, header)?, free_chunks, None)
    }

    /// Like [`create`](Self::create), and every record also goes to `observer`
    /// on the recorder's thread (a live viewer); without `path` nothing is
    /// written to disk.
    pub fn create_observed(
        path: Option<&Path>,
        header: &LogHeader,
        free_chunks: Arc<ArrayQueue<Box<ActionChunk>>>,
        observer: RecordObserver,
    ) -> io::Result<Self> {
        match path {
            Some(path) => Self::spawn(Self::open(path, header)?, free_chunks, Some(observer)),
            None => {
                let writer = LogWriter::new(BufWriter::new(io::sink()), header)?;
                Self::spawn(writer, free_chunks, Some(observer))
            }
        }
    }

    fn open(path: &Path, header: &LogHeader) -> io::Result<LogWriter<BufWriter<File>>> {
        if let Ok(meta) = std::fs::metadata(path)
            && !meta.is_file()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} exists and is not a regular file; a run log must be a file",
                    path.display()
                ),
            ));
        }
        let file = File::create(path)?;
        let mut writer = LogWriter::new(BufWriter::with_capacity(1 << 16, file), header)?;
        // The header goes out now: a run killed while waiting for the robot still
        // leaves a log that says what was run.
        writer.flush()?;
        Ok(writer)
    }

    fn spawn<W: LogSink>(
        writer: LogWriter<BufWriter<W>>,
        free_chunks: Arc<ArrayQueue<Box<ActionChunk>>>,
        observer: Option<RecordObserver>,
    ) -> io::Result<Self> {
        let mut out = Observed { writer, observer };
        let events: Arc<ArrayQueue<LogEvent>> = Arc::new(ArrayQueue::new(8192));
        let done = Arc::new(AtomicBool::new(false));
        let clean = Arc::new(AtomicBool::new(true));
        let error = Arc::new(Mutex::new(None));
        let thread = {
            let (events, done, clean, error) =
                (events.clone(), done.clone(), clean.clone(), error.clone());
            std::thread::Builder::new()
                .name("reflex-recorder".into())
                .spawn(move || {
                    let mut records = 0u64;
                    let mut ticks = 0u64;
                    let mut failed = false;
                    let fail = |e: io::Error, failed: &mut bool| {
                        if !*failed {
                            tracing::error!(
                                "run log write failed, logging stops (the run goes on): {e}"
                            );
                            if let Ok(mut slot) = error.lock() {
                                *slot = Some(e.to_string());
                            }
                            *failed = true;
                        }
                    };
                    let mut last_flush = Instant::now();
                    let mut last_sync = Instant::now();
                    let mut unflushed = false;
                    loop {
                        if let Some(event) = events.pop() {
                            let result = match event {
                                LogEvent::Start {
                                    joints,
                                    position,
                                    gripper,
                                } => out.write(&Record::Start {
                                    joints,
                                    position,
                                    gripper,
                                }),
                                LogEvent::Estop { tick } => out.write(&Record::Estop { tick }),
                                LogEvent::Teleop { tick, sample } => {
                                    out.write(&Record::Teleop { tick, sample })
                                }
                                LogEvent::Operator {
                                    tick,
                                    request,
                                    outcome,
                                } => out.write(&Record::Operator {
                                    tick,
                                    request,
                                    outcome,
                                }),
                                LogEvent::Tick(t) => {
                                    ticks += 1;
                                    out.write(&Record::Tick(t))
                                }
                                LogEvent::Chunk {
                                    tick,
                                    accepted,
                                    chunk,
                                } => {
                                    let record = Record::Chunk {
                                        tick,
                                        accepted,
                                        chunk: *chunk,
                                    };
                                    let mut result = out.write(&record);
                                    if let Record::Chunk { mut chunk, .. } = record {
                                        if result.is_ok() && !chunk.choice.scores.is_empty() {
                                            // Lent to the record and back: no copy.
                                            let choice = Record::Choice {
                                                tick,
                                                chunk_id: chunk.id,
                                                choice: std::mem::take(&mut chunk.choice),
                                            };
                                            result = out.write(&choice);
                                            if let Record::Choice { choice, .. } = choice {
                                                chunk.choice = choice;
                                            }
                                        }
                                        if result.is_ok() && !chunk.noise.is_empty() {
                                            let noise = Record::Noise {
                                                tick,
                                                chunk_id: chunk.id,
                                                from_latent: chunk.noise_from_latent,
                                                values: std::mem::take(&mut chunk.noise),
                                            };
                                            result = out.write(&noise);
                                            if let Record::Noise { values, .. } = noise {
                                                chunk.noise = values;
                                            }
                                        }
                                        let _ = free_chunks.push(Box::new(chunk));
                                    }
                                    result
                                }
                            };
                            match result {
                                Ok(()) if !failed => {
                                    records += 1;
                                    unflushed = true;
                                }
                                Ok(()) => {}
                                Err(e) => fail(e, &mut failed),
                            }
                        } else if done.load(Ordering::Acquire) && events.is_empty() {
                            break;
                        } else {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        // Bounds what a kill -9 (flush) or a power loss (sync) can lose.
                        if unflushed && !failed && last_flush.elapsed() >= FLUSH_INTERVAL {
                            unflushed = false;
                            last_flush = Instant::now();
                            let result = if last_sync.elapsed() >= SYNC_INTERVAL {
                                last_sync = last_flush;
                                out.writer.sync()
                            } else {
                                out.writer.flush()
                            };
                            if let Err(e) = result {
                                fail(e, &mut failed);
                            }
                        }
                    }
                    if !failed {
                        let end = if clean.load(Ordering::Acquire) {
                            out.write(&Record::End { ticks })
                        } else {
                            Ok(())
                        };
                        if let Err(e) = end.and_then(|()| out.writer.sync()) {
                            fail(e, &mut failed);
                        }
                    }
                    records
                })?
        };
        Ok(Self {
            events,
            dropped: AtomicU64::new(0),
            done,
            clean,
            error,
            thread: Some(thread),
        })
    }

    /// Queues an event; never blocks. A dropped chunk is handed back.
    pub fn record(&self, event: LogEvent) -> Option<Box<ActionChunk>> {
        match self.events.push(event) {
            Ok(()) => None,
            Err(event) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                match event {
                    LogEvent::Chunk { chunk, .. } => Some(chunk),
                    _ => None,
                }
            }
        }
    }

    /// Writes what is queued, closes the file and says how it went.
    pub fn finish(mut self) -> LogSummary {
        let records = self.close();
        let error = self.error.lock().ok().and_then(|e| e.clone());
        LogSummary {
            records,
            dropped: self.dropped.load(Ordering::Relaxed),
            error,
        }
    }

    fn close(&mut self) -> u64 {
        self.done.store(true, Ordering::Release);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Recorder {
    /// A run that ends early (interrupted start-up, an error) still closes its log:
    /// queued records are written and the file synced. A panic leaves out the End
    /// record, so the log does not claim a clean finish.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.clean
                .store(!std::thread::panicking(), Ordering::Release);
            self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header() -> LogHeader {
        LogHeader {
            reflex_version: "test".into(),
            clock: "sim".into(),
            seed: 1,
            rate_hz: 100.0,
            joints: vec![JointConfig {
                name: "a".into(),
                position: [-1.0, 1.0],
                velocity: 1.0,
                acceleration: 1.0,
                jerk: None,
            }],
            max_state_age_ms: 50.0,
            estop_after_stale_ms: 500.0,
            horizon: 2,
            action_rate_hz: 10.0,
            replan_after: 1,
            interpolation: Default::default(),
            strategy: "replace".into(),
            strategy_params: serde_json::Value::Null,
            safety: Default::default(),
            urdf: None,
            tip_link: None,
            gripper: None,
            reset: None,
            launch: "seed = 1".into(),
            models: Vec::new(),
        }
    }

    fn records() -> Vec<Record> {
        let mut state = JointState::empty(1);
        (state.seq, state.position[0], state.velocity[0]) = (3, 0.5, -0.5);
        let mut command = JointCommand::empty(1);
        (
            command.seq,
            command.tick,
            command.stamp_ns,
            command.position[0],
        ) = (1, 4, 40, 0.25);
        vec![
            Record::Start {
                joints: 1,
                position: state.position,
                gripper: None,
            },
            Record::Chunk {
                tick: 4,
                accepted: true,
                chunk: ActionChunk {
                    id: 1,
                    conditioned_on_tick: 2,
                    horizon: 2,
                    dim: 1,
                    actions: vec![0.1, 0.2],
                    infer_ns: 0,
                    model_version: 3,
                    choice: Default::default(),
                    noise: Vec::new(),
                    noise_from_latent: false,
                },
            },
            Record::Tick(TickRecord {
                tick: 4,
                now_ns: 40,
                state,
                command,
                flags: 1,
            }),
            Record::Estop { tick: 4 },
            Record::Operator {
                tick: 5,
                request: 2,
                outcome: 4,
            },
            // A robot with a gripper: its measured opening and its command (the
            // opening unknown on the second tick).
            Record::Start {
                joints: 1,
                position: state.position,
                gripper: Some(0.04),
            },
            Record::Tick(TickRecord {
                tick: 5,
                now_ns: 50,
                state: JointState {
                    gripper: Some(0.03),
                    ..state
                },
                command: JointCommand {
                    gripper: Some(0.02),
                    tick: 5,
                    stamp_ns: 50,
                    ..command
                },
                flags: 0,
            }),
            Record::Tick(TickRecord {
                tick: 6,
                now_ns: 60,
                state,
                command: JointCommand {
                    gripper: Some(0.02),
                    tick: 6,
                    stamp_ns: 60,
                    ..command
                },
                flags: 0,
            }),
            Record::Noise {
                tick: 4,
                chunk_id: 1,
                from_latent: true,
                values: vec![0.5, -0.25],
            },
            Record::Choice {
                tick: 4,
                chunk_id: 1,
                choice: crate::types::ChunkChoice {
                    selected: 1,
                    scores: vec![0.5, 0.75],
                    candidates: vec![0.0, 0.0, 0.1, 0.2],
                },
            },
            Record::End { ticks: 1 },
        ]
    }

    fn written(records: &[Record]) -> Vec<u8> {
        let mut writer = LogWriter::new(Vec::new(), &header()).unwrap();
        for r in records {
            writer.write(r).unwrap();
        }
        writer.into_inner()
    }

    #[test]
    fn records_round_trip() {
        let log = parse_log(&written(&records())).unwrap();
        assert_eq!(log.header, header());
        assert_eq!(log.records, records());
        assert!(log.report.is_clean(), "{:?}", log.report);
        assert_eq!(log.report.end, LogEnd::Complete { ticks: 1 });
    }

    #[test]
    fn a_cut_log_keeps_its_whole_records_and_says_where_it_ends() {
        let bytes = written(&records());
        let log = parse_log(&bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(log.records, records()[..records().len() - 1]);
        let LogEnd::Truncated { offset, reason } = &log.report.end else {
            panic!("{:?}", log.report)
        };
        // The End frame: 12 bytes of frame head, 9 of body.
        assert_eq!(*offset as usize, bytes.len() - 21);
        assert!(reason.contains("only 6 present"), "{reason}");
        assert!(parse_log(b"PNG\x89....").is_err_and(|e| matches!(e, LogError::Magic)));
        let err = parse_log(b"REFLE").unwrap_err().to_string();
        assert!(
            err.contains("ends after 5 bytes, before its header"),
            "{err}"
        );
        let err = parse_log(b"").unwrap_err().to_string();
        assert!(err.contains("ends after 0 bytes"), "{err}");
    }

    #[test]
    fn a_corrupt_frame_in_the_middle_is_reported_and_skipped() {
        let bytes = written(&records());
        let chunk_start = written(&records()[..1]).len();
        let mut damaged = bytes.clone();
        damaged[chunk_start + FRAME_HEAD + 5] ^= 0x10;
        let log = parse_log(&damaged).unwrap();
        let mut expected = records();
        expected.remove(1);
        assert_eq!(log.records, expected);
        assert_eq!(log.report.corrupt_count, 1);
        let corrupt = &log.report.corrupt[0];
        assert_eq!(corrupt.offset as usize, chunk_start);
        assert_eq!(corrupt.records_before, 1);
        assert!(corrupt.reason.contains("CRC"), "{corrupt}");
        assert_eq!(log.report.end, LogEnd::Complete { ticks: 1 });
    }

    #[test]
    fn a_frame_with_a_valid_crc_but_an_unknown_kind_is_skipped() {
        let mut bytes = written(&records()[..1]);
        let mut frame = vec![0; FRAME_HEAD];
        frame.extend_from_slice(&[77, 1, 2, 3]);
        seal_frame(&mut frame, MAX_RECORD_BYTES).unwrap();
        bytes.extend_from_slice(&frame);
        bytes.extend_from_slice(&written(&records()[3..])[written(&[]).len()..]);
        let log = parse_log(&bytes).unwrap();
        assert_eq!(log.records.len(), 1 + records()[3..].len());
        assert!(
            log.report.corrupt[0]
                .reason
                .contains("unknown record kind 77"),
            "{:?}",
            log.report
        );
    }

    #[test]
    fn headers_the_tick_cannot_run_are_rejected_by_writer_and_reader() {
        type Edit = fn(&mut LogHeader);
        let cases: [(&str, Edit); 10] = [
            ("rate_hz", |h| h.rate_hz = 0.0),
            ("rate_hz", |h| h.rate_hz = f64::NAN),
            ("joints[0].velocity", |h| h.joints[0].velocity = -1.0),
            ("joints[0].position", |h| h.joints[0].position = [3.0, -3.0]),
            ("joints", |h| h.joints = vec![h.joints[0].clone(); 40]),
            ("horizon", |h| h.horizon = 1 << 63),
            ("max_state_age_ms", |h| h.max_state_age_ms = f64::INFINITY),
            ("action_rate_hz", |h| h.action_rate_hz = 1e6),
            ("replan_after", |h| h.replan_after = 3),
            ("clock", |h| h.clock = "sundial".into()),
        ];
        for (field, edit) in cases {
            let mut bad = header();
            edit(&mut bad);
            let err = LogWriter::new(Vec::new(), &bad).err().unwrap().to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
            // The same header forged into a log with a valid CRC.
            let mut frame = vec![0; FRAME_HEAD];
            frame.push(kind::HEADER);
            serde_json::to_writer(&mut frame, &bad).unwrap();
            seal_frame(&mut frame, MAX_HEADER_BYTES).unwrap();
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&VERSION.to_le_bytes());
            bytes.extend_from_slice(&frame);
            match parse_log(&bytes) {
                Err(LogError::InvalidHeader { field: f, .. }) => assert_eq!(f, field),
                // JSON has no NaN or infinity: serde writes them as null.
                Err(LogError::Header(message)) if message.contains("null, expected f64") => {}
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_start_record_for_another_joint_count_is_damage() {
        let mut position = [0.0; MAX_JOINTS];
        position[1] = 1.0;
        let log = parse_log(&written(&[Record::Start {
            joints: 2,
            position,
            gripper: None,
        }]))
        .unwrap();
        assert!(log.records.is_empty());
        assert!(log.report.corrupt[0].reason.contains("2 joints"));
    }

    #[test]
    fn devices_and_directories_are_not_logs() {
        let err = read_log(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(err.contains("character device"), "{err}");
        let err = read_log(Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
    }

    /// A short log as the writer writes it: its bytes, where the header frame ends,
    /// the records, and the byte range of each record's frame.
    fn sample_log() -> (Vec<u8>, usize, Vec<Record>, Vec<std::ops::Range<usize>>) {
        let base = records();
        let mut all = base[..3].to_vec();
        for i in 0..6u64 {
            let Record::Tick(mut t) = base[2] else {
                unreachable!()
            };
            t.tick += i + 1;
            t.command.tick = t.tick;
            t.command.seq += i + 1;
            t.state.position[0] = 0.1 * i as f64;
            all.push(Record::Tick(t));
        }
        all.extend_from_slice(&base[3..]);
        let mut writer = LogWriter::new(Vec::new(), &header()).unwrap();
        let header_end = writer.out.len();
        let mut ranges = Vec::new();
        for r in &all {
            let start = writer.out.len();
            writer.write(r).unwrap();
            ranges.push(start..writer.out.len());
        }
        (writer.into_inner(), header_end, all, ranges)
    }

    #[test]
    fn a_log_cut_at_every_byte_keeps_every_whole_record() {
        let (bytes, header_end, all, ranges) = sample_log();
        for cut in 0..=bytes.len() {
            let log = match parse_log(&bytes[..cut]) {
                Ok(log) => log,
                Err(e) => {
                    assert!(cut < header_end, "cut at {cut}: {e}");
                    continue;
                }
            };
            assert!(
                cut >= header_end,
                "cut at {cut} inside the header was accepted"
            );
            let whole = ranges.iter().filter(|r| r.end <= cut).count();
            assert_eq!(log.records, all[..whole], "cut at {cut}");
            assert_eq!(
                log.report.corrupt_count, 0,
                "cut at {cut}: {:?}",
                log.report
            );
            // Replay takes whatever a damaged log yields without panicking.
            crate::control::replay(&log.header, &log.records);
            if cut == bytes.len() {
                assert!(log.report.is_clean());
            } else {
                let LogEnd::Truncated { offset, .. } = log.report.end else {
                    panic!("cut at {cut}: {:?}", log.report)
                };
                let last_end = if whole == 0 {
                    header_end
                } else {
                    ranges[whole - 1].end
                };
                assert_eq!(offset as usize, last_end, "cut at {cut}");
            }
        }
    }

    mod damage {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Every frame the flips did not touch is read, before and after the
            /// damage; no touched frame is; a touched header is an error.
            #[test]
            fn bit_flips_lose_exactly_the_frames_they_touch(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4)
            ) {
                let (bytes, header_end, all, ranges) = sample_log();
                let mut damaged = bytes.clone();
                let mut touched = Vec::new();
                for (index, bit) in &flips {
                    let at = index.index(bytes.len());
                    damaged[at] ^= 1 << bit;
                    touched.push(at);
                }
                // Two flips of the same bit cancel out.
                touched.retain(|at| damaged[*at] != bytes[*at]);
                let result = parse_log(&damaged);
                if touched.iter().any(|at| *at < header_end) {
                    prop_assert!(result.is_err());
                    return Ok(());
                }
                let log = result.unwrap();
                let expected: Vec<Record> = all
                    .iter()
                    .zip(&ranges)
                    .filter(|(_, r)| !touched.iter().any(|at| r.contains(at)))
                    .map(|(record, _)| record.clone())
                    .collect();
                prop_assert_eq!(&log.records, &expected);
                crate::control::replay(&log.header, &log.records);
                let lost = all.len() - expected.len();
                let clean_end = matches!(log.report.end, LogEnd::Complete { .. });
                prop_assert_eq!(lost == 0, clean_end && log.report.corrupt_count == 0);
            }

            /// Garbage between two frames is one corrupt stretch of exactly its length.
            #[test]
            fn garbage_between_frames_is_skipped(
                at in any::<prop::sample::Index>(),
                garbage in proptest::collection::vec(any::<u8>(), 1..64),
            ) {
                let (bytes, _, all, ranges) = sample_log();
                let boundary = ranges[at.index(ranges.len())].start;
                let mut damaged = bytes[..boundary].to_vec();
                damaged.extend_from_slice(&garbage);
                damaged.extend_from_slice(&bytes[boundary..]);
                let log = parse_log(&damaged).unwrap();
                prop_assert_eq!(&log.records, &all);
                prop_assert_eq!(log.report.corrupt_count, 1);
                let corrupt = &log.report.corrupt[0];
                prop_assert_eq!(corrupt.offset as usize, boundary);
                prop_assert_eq!(corrupt.skipped as usize, garbage.len());
            }
        }
    }

    /// A writer that fails after `room` bytes, like a full disk.
    struct FullDisk {
        room: usize,
        written: Arc<Mutex<Vec<u8>>>,
    }
    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut written = self.written.lock().unwrap();
            if written.len() + buf.len() > self.room {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "No space left on device",
                ));
            }
            written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl LogSink for FullDisk {
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn tick_event() -> TickRecord {
        let Record::Tick(tick) = records()[2] else {
            unreachable!()
        };
        tick
    }

    #[test]
    fn a_full_disk_is_reported_and_keeps_what_was_written() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let disk = FullDisk {
            room: 2000,
            written: written.clone(),
        };
        let writer = LogWriter::new(BufWriter::with_capacity(64, disk), &header()).unwrap();
        let free = Arc::new(ArrayQueue::new(4));
        let recorder = Recorder::spawn(writer, free, None).unwrap();
        for _ in 0..200 {
            assert!(recorder.record(LogEvent::Tick(tick_event())).is_none());
        }
        let summary = recorder.finish();
        assert!(
            summary.error.as_deref().unwrap_or("").contains("No space"),
            "{summary:?}"
        );
        let bytes = written.lock().unwrap().clone();
        assert!(bytes.len() > 1000 && bytes.starts_with(&MAGIC));
        let log = parse_log(&bytes).unwrap();
        assert!(!log.records.is_empty());
        assert!(matches!(log.report.end, LogEnd::Truncated { .. }));
    }

    #[test]
    fn the_recorder_flushes_while_the_run_goes_on() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let disk = FullDisk {
            room: usize::MAX / 2,
            written: written.clone(),
        };
        // A buffer far larger than what is recorded: only a timed flush empties it.
        let writer = LogWriter::new(BufWriter::with_capacity(1 << 20, disk), &header()).unwrap();
        let recorder = Recorder::spawn(writer, Arc::new(ArrayQueue::new(4)), None).unwrap();
        recorder.record(LogEvent::Tick(tick_event()));
        let mut flushed = Vec::new();
        for _ in 0..200 {
            flushed = written.lock().unwrap().clone();
            if !flushed.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = parse_log(&flushed).unwrap();
        assert_eq!(log.records, [Record::Tick(tick_event())]);
        assert!(matches!(log.report.end, LogEnd::Truncated { .. }));
        recorder.finish();
        let log = parse_log(&written.lock().unwrap()).unwrap();
        assert_eq!(log.report.end, LogEnd::Complete { ticks: 1 });
    }

    #[test]
    fn a_dropped_recorder_closes_its_log() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let disk = FullDisk {
            room: usize::MAX / 2,
            written: written.clone(),
        };
        let writer = LogWriter::new(BufWriter::with_capacity(1 << 20, disk), &header()).unwrap();
        let recorder = Recorder::spawn(writer, Arc::new(ArrayQueue::new(4)), None).unwrap();
        recorder.record(LogEvent::Tick(tick_event()));
        drop(recorder);
        let log = parse_log(&written.lock().unwrap()).unwrap();
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.report.end, LogEnd::Complete { ticks: 1 });
    }
}
