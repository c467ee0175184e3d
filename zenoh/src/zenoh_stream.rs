//! A sensor stream that arrives over zenoh: a tensor (a taxel array, a
//! force-torque sensor), audio chunks, or text (a task instruction).
//!
//! Tensor and audio samples are `RFXT` messages (see [`crate::wire`]) whose shape
//! must be the declared one, in any of its dtypes; text is a UTF-8 payload. Samples
//! are stamped on the run's clock by `clock`: on arrival, from the sender's
//! monotonic stamp plus an estimated offset, or from its Unix stamp (synchronized
//! clocks), and numbered here, so a replayed message cannot look newer than it is.
//! Bad messages are counted and logged rate-limited.

use std::sync::{Arc, Mutex, PoisonError};

use crate::wire::{self, TensorHeader};
use reflex_runtime::driver::{
    Driver, DriverContext, DriverError, DriverPorts, TensorPort, TextPort,
};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::prompt::PromptCell;
use reflex_runtime::ratelimit::{WarnLimiter, suppressed_note};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::latest_slot;
use reflex_runtime::stream::{SourceCounters, StreamDecl, StreamKind};
use reflex_runtime::types::{TensorSample, monotonic_ns};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zenoh::Wait;

/// `[[drivers]] kind = "zenoh_stream"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZenohStreamConfig {
    /// The stream's name (`<name>.data`, `<name>.samples` or `<name>.text`).
    pub name: String,
    /// Default `<prefix>/<robot>/<name>`.
    pub key: Option<String>,
    /// `tensor`, `audio` or `text`.
    pub stream: StreamType,
    /// `tensor`: the shape of one sample, e.g. `[16, 16]` taxels.
    #[serde(default)]
    pub shape: Vec<usize>,
    /// `tensor`: nominal samples per second (status line).
    pub rate_hz: Option<f64>,
    /// `audio`: samples per chunk (one message).
    pub frames: Option<usize>,
    /// `audio`: channels, interleaved.
    pub channels: Option<usize>,
    /// `audio`: samples per second per channel.
    pub sample_rate_hz: Option<f64>,
    /// Which time a sample is stamped with on the run's clock (tensor and audio):
    /// `arrival` (default), `sender` (the sender's monotonic capture stamp plus an
    /// offset estimated from arrivals: no clock synchronization needed) or `unix`
    /// (the sender's Unix capture stamp: needs clocks synchronized by chrony or PTP).
    #[serde(default)]
    pub clock: StampClock,
}

/// Judges samples by the sender's sequence numbers: a number that does not
/// advance is a repeat (or a reordered sample) and is not fed; a jump counts the
/// samples skipped. A sequence that goes back with a newer sender stamp is a
/// restarted sender and starts over.
#[derive(Debug, Default)]
struct SequenceJudge {
    last: Option<(u64, u64)>,
}

impl SequenceJudge {
    fn fresh(&mut self, header: &TensorHeader, counters: &SourceCounters) -> bool {
        match self.last {
            Some((seq, _)) if header.seq > seq => {
                SourceCounters::add(&counters.dropped, header.seq - seq - 1);
            }
            Some((_, stamp)) if header.stamp_ns != 0 && header.stamp_ns > stamp => {
                SourceCounters::add(&counters.reconnects, 1);
            }
            Some(_) => {
                SourceCounters::add(&counters.repeated, 1);
                return false;
            }
            None => {}
        }
        self.last = Some((header.seq, header.stamp_ns));
        true
    }
}

impl ZenohStreamConfig {
    /// The key expression it subscribes to.
    pub fn key(&self, key_prefix: &str, robot: &str) -> String {
        (self.key.clone()).unwrap_or_else(|| format!("{key_prefix}/{robot}/{}", self.name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StampClock {
    #[default]
    Arrival,
    Sender,
    Unix,
}

/// Maps a sample's sender stamps to the run's clock.
#[derive(Debug)]
struct StampMapper {
    clock: StampClock,
    /// `sender`: the smallest arrival - sender stamp seen (the fastest sample's).
    offset_ns: Option<i64>,
    /// `unix`: the run's clock minus the Unix time, measured at start.
    unix_to_run_ns: i64,
}

impl StampMapper {
    fn new(clock: StampClock) -> Self {
        Self {
            clock,
            offset_ns: None,
            unix_to_run_ns: monotonic_ns() as i64 - wire::unix_ns() as i64,
        }
    }

    /// The capture time on the run's clock, never after `arrival_ns`; None for a
    /// stamp from before the run started (a sender clock far off).
    fn map(&mut self, header: &wire::TensorHeader, arrival_ns: u64) -> Option<u64> {
        let mapped = match self.clock {
            StampClock::Arrival => return Some(arrival_ns),
            StampClock::Sender if header.stamp_ns == 0 => return Some(arrival_ns),
            StampClock::Unix if header.unix_ns == 0 => return Some(arrival_ns),
            StampClock::Sender => {
                let here = arrival_ns as i64 - header.stamp_ns as i64;
                // A sender that restarted (its clock jumped back by more than a
                // second) is estimated anew.
                let offset = match self.offset_ns {
                    Some(o) if here - o < 1_000_000_000 => o.min(here),
                    _ => here,
                };
                self.offset_ns = Some(offset);
                header.stamp_ns as i64 + offset
            }
            StampClock::Unix => header.unix_ns as i64 + self.unix_to_run_ns,
        };
        (mapped >= 0).then(|| mapped.min(arrival_ns as i64) as u64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamType {
    Tensor,
    Audio,
    Text,
}

/// Registers `zenoh_stream`.
pub struct ZenohStreamKind;

#[derive(Debug)]
pub struct ZenohStreamSpec {
    pub config: ZenohStreamConfig,
    decl: StreamDecl,
}

impl DriverKind for ZenohStreamKind {
    fn kind(&self) -> &'static str {
        "zenoh_stream"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<ZenohStreamConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: ZenohStreamConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        if let Some(key) = &config.key {
            crate::bus::check_exact_key(key).map_err(|message| table.error_at("key", message))?;
        }
        let positive = |field: &str, value: Option<f64>| match value {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            Some(v) => Err(table.error_at(field, format!("must be a positive number, found {v}"))),
            None => Err(table.error_at(field, "is needed for this stream type")),
        };
        let count = |field: &str, value: Option<usize>| match value {
            Some(v) if (1..=wire::MAX_TENSOR_VALUES).contains(&v) => Ok(v),
            Some(v) => Err(table.error_at(
                field,
                format!("must be in 1..={}, found {v}", wire::MAX_TENSOR_VALUES),
            )),
            None => Err(table.error_at(field, "is needed for this stream type")),
        };
        let unused: &[(&str, bool)] = match config.stream {
            StreamType::Tensor => &[
                ("frames", config.frames.is_some()),
                ("channels", config.channels.is_some()),
                ("sample_rate_hz", config.sample_rate_hz.is_some()),
            ],
            StreamType::Audio => &[
                ("shape", !config.shape.is_empty()),
                ("rate_hz", config.rate_hz.is_some()),
            ],
            StreamType::Text => &[
                ("clock", config.clock != StampClock::Arrival),
                ("shape", !config.shape.is_empty()),
                ("rate_hz", config.rate_hz.is_some()),
                ("frames", config.frames.is_some()),
                ("channels", config.channels.is_some()),
                ("sample_rate_hz", config.sample_rate_hz.is_some()),
            ],
        };
        if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(table.error_at(
                field,
                format!(
                    "does not apply to this stream type (`{}`)",
                    format!("{:?}", config.stream).to_lowercase()
                ),
            ));
        }
        let decl = match config.stream {
            StreamType::Tensor => {
                let values = config
                    .shape
                    .iter()
                    .try_fold(1usize, |n, d| n.checked_mul(*d));
                if config.shape.is_empty()
                    || config.shape.contains(&0)
                    || config.shape.len() > 8
                    || values.is_none_or(|n| n > wire::MAX_TENSOR_VALUES)
                {
                    return Err(table.error_at(
                        "shape",
                        format!(
                            "must have 1 to 8 positive dimensions and at most {} values, found {:?}",
                            wire::MAX_TENSOR_VALUES,
                            config.shape
                        ),
                    ));
                }
                if config.rate_hz.is_some() {
                    positive("rate_hz", config.rate_hz)?;
                }
                StreamDecl::tensor(&config.name, config.shape.clone(), config.rate_hz)
            }
            StreamType::Audio => {
                let frames = count("frames", config.frames)?;
                let channels = count("channels", config.channels)?;
                if frames * channels > wire::MAX_TENSOR_VALUES {
                    return Err(table.error_at("frames", "frames x channels is too large"));
                }
                let rate = positive("sample_rate_hz", config.sample_rate_hz)?;
                StreamDecl::audio(&config.name, frames, channels, rate)
            }
            StreamType::Text => StreamDecl::text(&config.name),
        };
        if !crate::config(table.launch()).enabled {
            return Err(table.error_at(
                "",
                "a stream over zenoh needs the zenoh session: set zenoh.enabled = true",
            ));
        }
        Ok(Arc::new(ZenohStreamSpec { config, decl }))
    }
}

impl DriverSpec for ZenohStreamSpec {
    fn kind(&self) -> &'static str {
        "zenoh_stream"
    }
    fn source(&self, launch: &Launch) -> Option<String> {
        Some(format!(
            "zenoh key {}",
            self.config
                .key(&crate::config(launch).key_prefix, &launch.config.robot.name)
        ))
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        vec![self.decl.clone()]
    }
    fn is_arm(&self) -> bool {
        false
    }
    fn build(&self, launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(ZenohStream {
            cfg: self.config.clone(),
            decl: self.decl.clone(),
            key_prefix: crate::config(launch).key_prefix,
            subscriber: None,
            bad: Arc::new(WarnLimiter::for_network()),
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

pub struct ZenohStream {
    cfg: ZenohStreamConfig,
    decl: StreamDecl,
    key_prefix: String,
    subscriber: Option<zenoh::pubsub::Subscriber<()>>,
    bad: Arc<WarnLimiter>,
}

impl ZenohStream {
    fn failed(&self, message: impl Into<String>) -> DriverError {
        DriverError::failed(&self.cfg.name, message)
    }
}

impl Driver for ZenohStream {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        let session = ctx
            .services
            .get::<zenoh::Session>()
            .cloned()
            .ok_or_else(|| self.failed("needs the zenoh bus (zenoh.enabled = true)"))?;
        let key = self.cfg.key(&self.key_prefix, &ctx.robot);
        let (name, bad) = (self.cfg.name.clone(), self.bad.clone());
        let report = move |problem: String| {
            if let Some(suppressed) = bad.hit() {
                tracing::warn!(
                    "{name}: {problem}; {} bad messages so far{}",
                    bad.total(),
                    suppressed_note(suppressed)
                );
            }
        };
        let mut ports = DriverPorts::default();
        let subscriber = match &self.decl.kind {
            StreamKind::Text => {
                let text = PromptCell::new("");
                ports.texts.push(TextPort {
                    name: self.cfg.name.clone(),
                    text: text.clone(),
                });
                session
                    .declare_subscriber(key)
                    .callback(move |sample| {
                        let payload = sample.payload().to_bytes();
                        let problem = match std::str::from_utf8(&payload) {
                            Ok(s) => match text.set(s) {
                                Ok(()) => return,
                                Err(e) => e.to_string(),
                            },
                            Err(_) => format!("text of {} bytes is not UTF-8", payload.len()),
                        };
                        report(problem);
                    })
                    .wait()
            }
            kind => {
                let shape = kind.shape();
                let len = kind.values();
                let (writer, reader) = latest_slot(&TensorSample::zeros(len));
                ports.tensors.push(TensorPort {
                    name: self.cfg.name.clone(),
                    samples: reader,
                    len,
                });
                let counters = Arc::new(SourceCounters::default());
                ports
                    .counters
                    .push((self.cfg.name.clone(), counters.clone()));
                // The callback decodes into its own buffer, then copies into the
                // slot (the slot's buffers are preallocated to this size).
                let state = Mutex::new((
                    writer,
                    Vec::with_capacity(len),
                    0u64,
                    StampMapper::new(self.cfg.clock),
                    SequenceJudge::default(),
                ));
                session
                    .declare_subscriber(key)
                    .callback(move |sample| {
                        let payload = sample.payload().to_bytes();
                        let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
                        let (writer, values, seq, mapper, judge) = &mut *guard;
                        let arrival_ns = monotonic_ns();
                        match wire::decode_tensor_into(&payload, &shape, values) {
                            Ok(_) if values.iter().any(|v| !v.is_finite()) => {
                                SourceCounters::add(&counters.corrupt, 1);
                                report("sample with NaN or infinite values dropped".into())
                            }
                            Ok(header) if !judge.fresh(&header, &counters) => {}
                            Ok(header) => {
                                let Some(stamp_ns) = mapper.map(&header, arrival_ns) else {
                                    report(
                                        "sample stamped before this run started: is the \
                                         sender's clock synchronized (clock = \"unix\")?"
                                            .into(),
                                    );
                                    return;
                                };
                                *seq += 1;
                                let seq = *seq;
                                writer.publish_with(|slot| {
                                    slot.seq = seq;
                                    slot.stamp_ns = stamp_ns;
                                    slot.values.copy_from_slice(values);
                                });
                            }
                            Err(e) => {
                                SourceCounters::add(&counters.corrupt, 1);
                                report(format!("undecodable sample ({} bytes): {e}", payload.len()))
                            }
                        }
                    })
                    .wait()
            }
        }
        .map_err(|source| DriverError::Source {
            driver: self.cfg.name.clone(),
            source,
        })?;
        self.subscriber = Some(subscriber);
        Ok(ports)
    }

    fn start(&mut self) -> Result<(), DriverError> {
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        if let Some(subscriber) = self.subscriber.take() {
            let _ = subscriber.undeclare().wait();
        }
        let bad = self.bad.total();
        if bad > 0 {
            tracing::warn!(
                "{}: {bad} bad messages in total{}",
                self.cfg.name,
                suppressed_note(self.bad.suppressed())
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_tell_repeats_drops_and_a_restarted_sender() {
        let counters = SourceCounters::default();
        let mut judge = SequenceJudge::default();
        let header = |seq, stamp_ns| TensorHeader {
            seq,
            stamp_ns,
            unix_ns: 0,
        };
        let fed: Vec<bool> = [
            (1, 10),
            (2, 20),
            (2, 20),
            (1, 10),
            (5, 50),
            (1, 60),
            (2, 70),
        ]
        .into_iter()
        .map(|(seq, stamp)| judge.fresh(&header(seq, stamp), &counters))
        .collect();
        assert_eq!(fed, [true, true, false, false, true, true, true]);
        let counts = counters.snapshot();
        assert_eq!(
            (counts.repeated, counts.dropped, counts.reconnects),
            (2, 2, 1)
        );
    }
}
