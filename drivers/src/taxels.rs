//! `[[drivers]] kind = "serial_taxels"`: a tactile array (N x M pressures) on a
//! serial port, as a tensor stream `<name>.data` of shape `[rows, cols]`.
//!
//! Frame format (little-endian), what the sensor's firmware sends back to back:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | sync `0xAA 0x55` |
//! | 2 | 1 | rows (u8) |
//! | 3 | 1 | cols (u8) |
//! | 4 | 4 | u32 sequence number, +1 per frame |
//! | 8 | 2 N | u16 pressures, row-major (N = rows x cols), raw counts |
//! | 8 + 2 N | 2 | CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of bytes 2 .. 8 + 2 N |
//!
//! The reader resynchronizes on the sync bytes after noise or a cut frame; a frame
//! with a bad CRC or another shape is counted and dropped, one whose sequence number
//! did not advance is counted as repeated and not published. The first
//! `bias_frames` frames are averaged into a bias that is subtracted from every later
//! frame (an unloaded sensor reads zero), then `scale` converts counts to the
//! policy's unit.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use reflex_runtime::driver::{Driver, DriverContext, DriverError, DriverPorts, TensorPort};
use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::slot::{SlotWriter, latest_slot};
use reflex_runtime::stream::{SourceCounters, StreamDecl};
use reflex_runtime::tare::{TareRequests, TareWatch};
use reflex_runtime::types::{TensorSample, monotonic_ns};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const SYNC: [u8; 2] = [0xAA, 0x55];
const HEAD: usize = 8;

/// `[[drivers]] kind = "serial_taxels"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialTaxelsConfig {
    /// The stream's name (`<name>.data`).
    pub name: String,
    /// The serial device (`/dev/ttyUSB0`, `/dev/ttyACM0`, a pseudo-terminal).
    pub port: PathBuf,
    /// Baud rate (ignored by pseudo-terminals and USB CDC devices).
    #[serde(default = "default_baud")]
    pub baud: u32,
    pub rows: usize,
    pub cols: usize,
    /// Nominal frames per second (status; staleness is `[streams.<name>]`).
    pub rate_hz: Option<f64>,
    /// Frames averaged at start into the bias subtracted from every frame (0: none).
    #[serde(default = "default_bias_frames")]
    pub bias_frames: usize,
    /// Counts to the policy's unit (e.g. kPa per count).
    #[serde(default = "one")]
    pub scale: f32,
}

fn default_baud() -> u32 {
    921_600
}

fn default_bias_frames() -> usize {
    20
}

fn one() -> f32 {
    1.0
}

/// CRC-16/CCITT-FALSE.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for b in bytes {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Encodes one frame (for simulators and tests).
pub fn encode_frame(rows: usize, cols: usize, seq: u32, values: &[u16], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&SYNC);
    out.push(rows as u8);
    out.push(cols as u8);
    out.extend_from_slice(&seq.to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc16(&out[2..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Counters of one array.
#[derive(Debug, Default)]
pub struct TaxelCounters {
    pub frames: AtomicU64,
    pub skipped_bytes: AtomicU64,
    /// Corrupt frames (bad CRC) and repeated ones (sequence did not advance),
    /// shown by the loop.
    pub source: Arc<SourceCounters>,
}

/// Finds frames in a byte stream.
pub struct FrameParser {
    rows: usize,
    cols: usize,
    buf: Vec<u8>,
}

/// What the parser found.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Frame {
        seq: u32,
    },
    /// A whole frame whose CRC or shape is wrong.
    Corrupt(String),
}

impl FrameParser {
    pub fn new(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            buf: Vec::with_capacity(4 * Self::frame_len(rows, cols)),
        }
    }

    fn frame_len(rows: usize, cols: usize) -> usize {
        HEAD + 2 * rows * cols + 2
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame in what was pushed, its values in `values` (raw counts);
    /// None when more bytes are needed. Skipped noise is counted in `counters`.
    pub fn next(&mut self, values: &mut [f32], counters: &TaxelCounters) -> Option<Parsed> {
        let start = self.buf.windows(2).position(|w| w == SYNC);
        let Some(start) = start else {
            // Keep a last byte that may be the first half of a sync.
            let keep = usize::from(self.buf.last() == Some(&SYNC[0]));
            let skipped = self.buf.len() - keep;
            counters
                .skipped_bytes
                .fetch_add(skipped as u64, Ordering::Relaxed);
            self.buf.drain(..skipped);
            return None;
        };
        if start > 0 {
            counters
                .skipped_bytes
                .fetch_add(start as u64, Ordering::Relaxed);
            self.buf.drain(..start);
        }
        if self.buf.len() < HEAD {
            return None;
        }
        let (rows, cols) = (usize::from(self.buf[2]), usize::from(self.buf[3]));
        if (rows, cols) != (self.rows, self.cols) {
            // Not our frame (or noise that looks like a sync): skip the sync.
            self.buf.drain(..2);
            return Some(Parsed::Corrupt(format!(
                "a {rows} x {cols} frame, expected {} x {}",
                self.rows, self.cols
            )));
        }
        let len = Self::frame_len(rows, cols);
        if self.buf.len() < len {
            return None;
        }
        let crc = u16::from_le_bytes([self.buf[len - 2], self.buf[len - 1]]);
        if crc16(&self.buf[2..len - 2]) != crc {
            // Resynchronize after this sync: the real next frame may start inside.
            self.buf.drain(..2);
            return Some(Parsed::Corrupt("CRC mismatch".into()));
        }
        let seq = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        for (out, b) in values
            .iter_mut()
            .zip(self.buf[HEAD..len - 2].chunks_exact(2))
        {
            *out = f32::from(u16::from_le_bytes([b[0], b[1]]));
        }
        self.buf.drain(..len);
        Some(Parsed::Frame { seq })
    }
}

/// Registers `serial_taxels`.
pub struct SerialTaxelsKind;

#[derive(Debug)]
pub struct SerialTaxelsSpec {
    pub config: SerialTaxelsConfig,
    port: PathBuf,
}

impl DriverKind for SerialTaxelsKind {
    fn kind(&self) -> &'static str {
        "serial_taxels"
    }

    fn schema(&self) -> serde_json::Value {
        schema_of::<SerialTaxelsConfig>()
    }

    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let config: SerialTaxelsConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        if !(1..=255).contains(&config.rows) || !(1..=255).contains(&config.cols) {
            return Err(table.error_at("rows", "rows and cols must be in 1..=255"));
        }
        if baud_constant(config.baud).is_none() {
            return Err(table.error_at(
                "baud",
                format!(
                    "{} is not a standard baud rate (9600 ... 4000000)",
                    config.baud
                ),
            ));
        }
        if config.rate_hz.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(table.error_at("rate_hz", "must be a positive number"));
        }
        if config.bias_frames > 10_000 {
            return Err(table.error_at("bias_frames", "must be at most 10000"));
        }
        if !(config.scale.is_finite() && config.scale != 0.0) {
            return Err(table.error_at("scale", "must be a finite, non-zero number"));
        }
        let port = table.resolve(&config.port);
        if !port.exists() {
            return Err(table.error_at(
                "port",
                format!(
                    "no such serial port: {} (is the sensor plugged in?)",
                    port.display()
                ),
            ));
        }
        Ok(Arc::new(SerialTaxelsSpec { config, port }))
    }
}

impl DriverSpec for SerialTaxelsSpec {
    fn kind(&self) -> &'static str {
        "serial_taxels"
    }
    fn source(&self, _launch: &Launch) -> Option<String> {
        Some(format!("serial port {}", self.config.port.display()))
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn streams(&self) -> Vec<StreamDecl> {
        vec![StreamDecl::tensor(
            &self.config.name,
            vec![self.config.rows, self.config.cols],
            self.config.rate_hz,
        )]
    }
    fn is_arm(&self) -> bool {
        false
    }
    fn build(&self, _launch: &Launch) -> Result<Box<dyn Driver>, DriverError> {
        Ok(Box::new(SerialTaxels {
            cfg: self.config.clone(),
            port: self.port.clone(),
            reader: None,
            counters: Arc::new(TaxelCounters::default()),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            reported: false,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn baud_constant(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115_200 => libc::B115200,
        230_400 => libc::B230400,
        460_800 => libc::B460800,
        500_000 => libc::B500000,
        921_600 => libc::B921600,
        1_000_000 => libc::B1000000,
        2_000_000 => libc::B2000000,
        3_000_000 => libc::B3000000,
        4_000_000 => libc::B4000000,
        _ => return None,
    })
}

/// Opens the port raw (no echo, no line discipline), at `baud`.
fn open_raw(path: &std::path::Path, baud: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: termios is plain data filled by tcgetattr on a valid fd.
    unsafe {
        let mut tio: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut tio) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut tio);
        if let Some(speed) = baud_constant(baud) {
            libc::cfsetispeed(&mut tio, speed);
            libc::cfsetospeed(&mut tio, speed);
        }
        // read() returns after at most 50 ms without data, so stop is noticed.
        tio.c_cc[libc::VMIN] = 0;
        tio.c_cc[libc::VTIME] = 1;
        if libc::tcsetattr(fd, libc::TCSANOW, &tio) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

pub struct SerialTaxels {
    cfg: SerialTaxelsConfig,
    port: PathBuf,
    reader: Option<(File, SlotWriter<TensorSample>, Option<TareWatch>)>,
    counters: Arc<TaxelCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    reported: bool,
}

impl SerialTaxels {
    fn failed(&self, message: impl Into<String>) -> DriverError {
        DriverError::failed(&self.cfg.name, message)
    }
}

/// Reads frames until stopped: bias first, then publish. A tare request averages
/// a new bias from the next frames while they are still published against the old.
fn read_loop(
    cfg: SerialTaxelsConfig,
    mut port: File,
    mut writer: SlotWriter<TensorSample>,
    mut tare: Option<TareWatch>,
    counters: Arc<TaxelCounters>,
    stop: Arc<AtomicBool>,
) {
    let n = cfg.rows * cfg.cols;
    let mut parser = FrameParser::new(cfg.rows, cfg.cols);
    let mut raw = vec![0.0f32; n];
    let mut bias = vec![0.0f32; n];
    let mut next_bias = vec![0.0f32; n];
    let mut bias_seen = 0usize;
    let mut biased = cfg.bias_frames == 0;
    let mut last_seq: Option<u32> = None;
    let mut published = 0u64;
    let mut chunk = [0u8; 4096];
    let mut warned = 0u64;
    while !stop.load(Ordering::Acquire) {
        let got = match port.read(&mut chunk) {
            Ok(0) => continue,
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A pty whose other end closed reads EIO: the sensor is gone.
                if warned == 0 {
                    tracing::warn!(
                        "taxels `{}`: reading {} failed: {e}",
                        cfg.name,
                        cfg.port.display()
                    );
                }
                warned += 1;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        parser.push(&chunk[..got]);
        while let Some(parsed) = parser.next(&mut raw, &counters) {
            let seq = match parsed {
                Parsed::Corrupt(why) => {
                    let bad = counters.source.corrupt.fetch_add(1, Ordering::Relaxed) + 1;
                    if bad.is_power_of_two() {
                        tracing::warn!(
                            "taxels `{}`: frame dropped: {why} ({bad} so far)",
                            cfg.name
                        );
                    }
                    continue;
                }
                Parsed::Frame { seq } => seq,
            };
            if last_seq.is_some_and(|last| seq == last || seq.wrapping_sub(last) > u32::MAX / 2) {
                counters.source.repeated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            last_seq = Some(seq);
            counters.frames.fetch_add(1, Ordering::Relaxed);
            if tare.as_mut().is_some_and(TareWatch::requested) {
                next_bias.fill(0.0);
                bias_seen = 0;
            }
            if bias_seen < cfg.bias_frames {
                for (b, r) in next_bias.iter_mut().zip(&raw) {
                    *b += r / cfg.bias_frames as f32;
                }
                bias_seen += 1;
                let published_before = biased;
                if bias_seen == cfg.bias_frames {
                    bias.copy_from_slice(&next_bias);
                    biased = true;
                }
                // The frames of the first bias are not published.
                if !published_before {
                    continue;
                }
            }
            published += 1;
            let stamp_ns = monotonic_ns();
            writer.publish_with(|sample| {
                sample.seq = published;
                sample.stamp_ns = stamp_ns;
                for ((out, r), b) in sample.values.iter_mut().zip(&raw).zip(&bias) {
                    *out = (r - b) * cfg.scale;
                }
            });
        }
    }
}

impl Driver for SerialTaxels {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn open(&mut self, ctx: &DriverContext) -> Result<DriverPorts, DriverError> {
        if ctx.simulated {
            return Err(self
                .failed("a serial sensor needs the wall clock (its frames arrive in real time)"));
        }
        let port = open_raw(&self.port, self.cfg.baud).map_err(|e| {
            self.failed(format!(
                "cannot open serial port {}: {e}",
                self.port.display()
            ))
        })?;
        let len = self.cfg.rows * self.cfg.cols;
        let (writer, reader) = latest_slot(&TensorSample::zeros(len));
        let tare = (self.cfg.bias_frames > 0)
            .then(|| ctx.services.get::<TareRequests>()?.watch(&self.cfg.name))
            .flatten();
        self.reader = Some((port, writer, tare));
        Ok(DriverPorts {
            tensors: vec![TensorPort {
                name: self.cfg.name.clone(),
                samples: reader,
                len,
            }],
            counters: vec![(self.cfg.name.clone(), self.counters.source.clone())],
            ..DriverPorts::default()
        })
    }

    fn start(&mut self) -> Result<(), DriverError> {
        let Some((port, writer, tare)) = self.reader.take() else {
            return Err(self.failed("start before open"));
        };
        let (cfg, counters, stop) = (self.cfg.clone(), self.counters.clone(), self.stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("reflex-taxels-{}", self.cfg.name))
            .spawn(move || read_loop(cfg, port, writer, tare, counters, stop))
            .map_err(|e| self.failed(format!("cannot start reader thread: {e}")))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DriverError> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| self.failed("reader thread panicked"))?;
        }
        if !std::mem::replace(&mut self.reported, true) {
            let c = &self.counters;
            eprintln!(
                "reflex: taxels `{}` ({}): {} frames ({} for the bias), {} corrupt, {} repeated, {} bytes of noise skipped",
                self.cfg.name,
                self.port.display(),
                c.frames.load(Ordering::Relaxed),
                self.cfg.bias_frames,
                c.source.corrupt.load(Ordering::Relaxed),
                c.source.repeated.load(Ordering::Relaxed),
                c.skipped_bytes.load(Ordering::Relaxed)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_ccitt_false() {
        // The standard check value of CRC-16/CCITT-FALSE.
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn frames_are_found_in_noise_and_cut_frames_and_bad_crcs_are_dropped() {
        let counters = TaxelCounters::default();
        let mut parser = FrameParser::new(2, 2);
        let mut values = [0.0f32; 4];
        let mut frame = Vec::new();
        let mut stream = vec![0x00, 0xAA, 0x13]; // noise, a lone half-sync
        encode_frame(2, 2, 1, &[1, 2, 3, 4], &mut frame);
        stream.extend_from_slice(&frame);
        encode_frame(2, 2, 2, &[5, 6, 7, 8], &mut frame);
        let mut corrupt = frame.clone();
        corrupt[9] ^= 0x40;
        stream.extend_from_slice(&corrupt);
        encode_frame(2, 2, 3, &[9, 10, 11, 12], &mut frame);
        // Pushed in small pieces, as a serial port delivers it.
        let mut found = Vec::new();
        for piece in stream.chunks(3).chain([frame.as_slice()]) {
            parser.push(piece);
            while let Some(p) = parser.next(&mut values, &counters) {
                found.push((p.clone(), values));
            }
        }
        assert_eq!(found[0], (Parsed::Frame { seq: 1 }, [1.0, 2.0, 3.0, 4.0]));
        assert_eq!(found[1].0, Parsed::Corrupt("CRC mismatch".into()));
        assert_eq!(
            found.last().unwrap(),
            &(Parsed::Frame { seq: 3 }, [9.0, 10.0, 11.0, 12.0])
        );
        assert_eq!(found.len(), 3);
        assert!(counters.skipped_bytes.load(Ordering::Relaxed) >= 3);
    }
}
