//! The binary run log (`reflex run --log FILE`) and the recorder thread that writes it.
//!
//! The log holds every input the tick's decisions depend on (the measured joint
//! state, each chunk and the tick it was applied at) and every output (command and
//! safety flags), so `reflex replay` can re-execute the run and check each command
//! bit for bit. Under the simulated clock nothing in it depends on wall time, so
//! two runs with the same seed write identical bytes.
//!
//! Layout: `REFLEXLG`, u32 version, u32 header length, header JSON, then records,
//! each a one-byte kind followed by its little-endian fields (see [`Record`]), and
//! an `End` record when the run finished cleanly.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use crate::launch::JointConfig;
use crate::types::{ActionChunk, JointCommand, JointState, MAX_JOINTS};

pub const MAGIC: [u8; 8] = *b"REFLEXLG";
pub const VERSION: u32 = 1;

const KIND_START: u8 = 1;
const KIND_TICK: u8 = 2;
const KIND_CHUNK: u8 = 3;
const KIND_ESTOP: u8 = 4;
const KIND_OPERATOR: u8 = 5;
const KIND_END: u8 = 0xFF;

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
    /// The safety filter's settings (defaults for logs written before they existed).
    #[serde(default)]
    pub safety: crate::launch::SafetyConfig,
    /// The launch file as run (overrides applied).
    pub launch: String,
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
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a reflex log (bad magic)")]
    Magic,
    #[error("log format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("log header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("corrupt record at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
}

/// Writes records to any `Write`.
pub struct LogWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> LogWriter<W> {
    pub fn new(mut out: W, header: &LogHeader) -> io::Result<Self> {
        let json = serde_json::to_vec(header)?;
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(json.len() as u32).to_le_bytes())?;
        out.write_all(&json)?;
        Ok(Self {
            out,
            buf: Vec::with_capacity(4096),
        })
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        let b = &mut self.buf;
        b.clear();
        let f64s = |b: &mut Vec<u8>, values: &[f64]| {
            values
                .iter()
                .for_each(|v| b.extend_from_slice(&v.to_le_bytes()))
        };
        match record {
            Record::Start { joints, position } => {
                b.push(KIND_START);
                b.extend_from_slice(&(*joints as u16).to_le_bytes());
                f64s(b, &position[..*joints]);
            }
            Record::Tick(t) => {
                let n = t.state.joints;
                b.push(KIND_TICK);
                for v in [t.tick, t.now_ns, t.state.epoch, t.state.seq, t.state.stamp_ns] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                b.extend_from_slice(&(n as u16).to_le_bytes());
                f64s(b, t.state.positions());
                f64s(b, t.state.velocities());
                b.extend_from_slice(&t.command.seq.to_le_bytes());
                b.extend_from_slice(&(t.command.joints as u16).to_le_bytes());
                f64s(b, t.command.positions());
                b.extend_from_slice(&t.flags.to_le_bytes());
            }
            Record::Chunk {
                tick,
                accepted,
                chunk,
            } => {
                b.push(KIND_CHUNK);
                for v in [*tick, chunk.id, chunk.conditioned_on_tick] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                b.push(u8::from(*accepted));
                b.extend_from_slice(&(chunk.horizon as u32).to_le_bytes());
                b.extend_from_slice(&(chunk.dim as u32).to_le_bytes());
                for a in &chunk.actions {
                    b.extend_from_slice(&a.to_le_bytes());
                }
            }
            Record::Estop { tick } => {
                b.push(KIND_ESTOP);
                b.extend_from_slice(&tick.to_le_bytes());
            }
            Record::Operator {
                tick,
                request,
                outcome,
            } => {
                b.push(KIND_OPERATOR);
                b.extend_from_slice(&tick.to_le_bytes());
                b.extend_from_slice(&[*request, *outcome]);
            }
            Record::End { ticks } => {
                b.push(KIND_END);
                b.extend_from_slice(&ticks.to_le_bytes());
            }
        }
        self.out.write_all(&self.buf)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads a whole log.
pub fn read_log(path: &Path) -> Result<(LogHeader, Vec<Record>), LogError> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    parse_log(&bytes)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], LogError> {
        if self.bytes.len() - self.at < n {
            return Err(LogError::Corrupt {
                offset: self.at as u64,
                reason: "truncated".into(),
            });
        }
        self.at += n;
        Ok(&self.bytes[self.at - n..self.at])
    }
    fn u8(&mut self) -> Result<u8, LogError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, LogError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, LogError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, LogError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn f64(&mut self) -> Result<f64, LogError> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn joints(&mut self) -> Result<usize, LogError> {
        let n = usize::from(self.u16()?);
        if n > MAX_JOINTS {
            return Err(LogError::Corrupt {
                offset: self.at as u64,
                reason: format!("{n} joints"),
            });
        }
        Ok(n)
    }
    fn vector(&mut self, n: usize) -> Result<[f64; MAX_JOINTS], LogError> {
        let mut v = [0.0; MAX_JOINTS];
        for x in v.iter_mut().take(n) {
            *x = self.f64()?;
        }
        Ok(v)
    }
}

pub fn parse_log(bytes: &[u8]) -> Result<(LogHeader, Vec<Record>), LogError> {
    let mut c = Cursor { bytes, at: 0 };
    if c.take(8).map_err(|_| LogError::Magic)? != MAGIC {
        return Err(LogError::Magic);
    }
    let version = c.u32()?;
    if version != VERSION {
        return Err(LogError::Version(version));
    }
    let header_len = c.u32()? as usize;
    let header: LogHeader = serde_json::from_slice(c.take(header_len)?)?;
    let mut records = Vec::new();
    while c.at < bytes.len() {
        let offset = c.at as u64;
        let record = match c.u8()? {
            KIND_START => {
                let joints = c.joints()?;
                Record::Start {
                    joints,
                    position: c.vector(joints)?,
                }
            }
            KIND_TICK => {
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
                Record::Tick(TickRecord {
                    tick,
                    now_ns,
                    state,
                    command,
                    flags: c.u32()?,
                })
            }
            KIND_CHUNK => {
                let (tick, id, conditioned_on_tick) = (c.u64()?, c.u64()?, c.u64()?);
                let accepted = c.u8()? != 0;
                let (horizon, dim) = (c.u32()? as usize, c.u32()? as usize);
                let count = horizon.checked_mul(dim).filter(|n| *n <= 1 << 24).ok_or(
                    LogError::Corrupt {
                        offset,
                        reason: format!("chunk of {horizon} x {dim}"),
                    },
                )?;
                let raw = c.take(count * 4)?;
                let actions = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
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
                    },
                }
            }
            KIND_ESTOP => Record::Estop { tick: c.u64()? },
            KIND_OPERATOR => Record::Operator {
                tick: c.u64()?,
                request: c.u8()?,
                outcome: c.u8()?,
            },
            KIND_END => Record::End { ticks: c.u64()? },
            kind => {
                return Err(LogError::Corrupt {
                    offset,
                    reason: format!("unknown record kind {kind}"),
                });
            }
        };
        records.push(record);
    }
    Ok((header, records))
}

/// The recorder thread: drains events from the tick into a log file. The tick never
/// waits for it; when its queue is full, events are dropped and counted.
pub struct Recorder {
    events: Arc<ArrayQueue<LogEvent>>,
    dropped: AtomicU64,
    done: Arc<AtomicBool>,
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
    /// Creates `path` and starts the thread. Chunks go back to `free_chunks` once written.
    pub fn create(
        path: &Path,
        header: &LogHeader,
        free_chunks: Arc<ArrayQueue<Box<ActionChunk>>>,
    ) -> io::Result<Self> {
        let file = File::create(path)?;
        let writer = LogWriter::new(BufWriter::with_capacity(1 << 16, file), header)?;
        Self::spawn(writer, free_chunks)
    }

    fn spawn<W: Write + Send + 'static>(
        mut writer: LogWriter<BufWriter<W>>,
        free_chunks: Arc<ArrayQueue<Box<ActionChunk>>>,
    ) -> io::Result<Self> {
        let events: Arc<ArrayQueue<LogEvent>> = Arc::new(ArrayQueue::new(8192));
        let done = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let thread = {
            let (events, done, error) = (events.clone(), done.clone(), error.clone());
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
                    loop {
                        let Some(event) = events.pop() else {
                            if done.load(Ordering::Acquire) && events.is_empty() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        };
                        let result = match event {
                            LogEvent::Start { joints, position } => {
                                writer.write(&Record::Start { joints, position })
                            }
                            LogEvent::Estop { tick } => writer.write(&Record::Estop { tick }),
                            LogEvent::Operator {
                                tick,
                                request,
                                outcome,
                            } => writer.write(&Record::Operator {
                                tick,
                                request,
                                outcome,
                            }),
                            LogEvent::Tick(t) => {
                                ticks += 1;
                                writer.write(&Record::Tick(t))
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
                                let result = writer.write(&record);
                                if let Record::Chunk { chunk, .. } = record {
                                    let _ = free_chunks.push(Box::new(chunk));
                                }
                                result
                            }
                        };
                        match result {
                            Ok(()) if !failed => records += 1,
                            Ok(()) => {}
                            Err(e) => fail(e, &mut failed),
                        }
                    }
                    if !failed {
                        let end = writer.write(&Record::End { ticks }).and_then(|()| {
                            let mut out = writer.into_inner();
                            out.flush()?;
                            out.into_inner().map_err(|e| e.into_error()).map(drop)
                        });
                        if let Err(e) = end {
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
        self.done.store(true, Ordering::Release);
        let records = self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0);
        let error = self.error.lock().ok().and_then(|e| e.clone());
        LogSummary {
            records,
            dropped: self.dropped.load(Ordering::Relaxed),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> LogHeader {
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
            safety: Default::default(),
            launch: "seed = 1".into(),
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
            Record::End { ticks: 1 },
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut writer = LogWriter::new(Vec::new(), &header()).unwrap();
        for r in records() {
            writer.write(&r).unwrap();
        }
        let bytes = writer.into_inner();
        let (h, parsed) = parse_log(&bytes).unwrap();
        assert_eq!(h, header());
        assert_eq!(parsed, records());
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let mut writer = LogWriter::new(Vec::new(), &header()).unwrap();
        for r in records() {
            writer.write(&r).unwrap();
        }
        let bytes = writer.into_inner();
        assert!(matches!(
            parse_log(&bytes[..bytes.len() - 3]),
            Err(LogError::Corrupt { .. })
        ));
        assert!(matches!(parse_log(b"PNG\x89...."), Err(LogError::Magic)));
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

    #[test]
    fn a_full_disk_is_reported_and_keeps_what_was_written() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let disk = FullDisk {
            room: 2000,
            written: written.clone(),
        };
        let writer = LogWriter::new(BufWriter::with_capacity(64, disk), &header()).unwrap();
        let free = Arc::new(ArrayQueue::new(4));
        let recorder = Recorder::spawn(writer, free).unwrap();
        let Record::Tick(tick) = records()[2] else {
            unreachable!()
        };
        for _ in 0..200 {
            assert!(recorder.record(LogEvent::Tick(tick)).is_none());
        }
        let summary = recorder.finish();
        assert!(
            summary.error.as_deref().unwrap_or("").contains("No space"),
            "{summary:?}"
        );
        let bytes = written.lock().unwrap().clone();
        assert!(bytes.len() > 1000 && bytes.starts_with(&MAGIC));
    }
}
