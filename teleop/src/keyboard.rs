//! `keyboard_teleop`: a keyboard read from its Linux input device (evdev,
//! `/dev/input/by-id/...-event-kbd`), grabbed so its keys do not also reach the
//! terminal (where space is the e-stop).
//!
//! Hold **Shift** (either) to command the arm; release it to hand back. While held:
//!
//! | frame | keys |
//! |---|---|
//! | `end_effector` | ↑ / ↓: +x / -x, ← / →: +y / -y, Page Up / Page Down: +z / -z |
//! | `joint` | Q / A: joint 1 + / -, W / S: joint 2, E / D: joint 3, R / F: joint 4, T / G: joint 5, Y / H: joint 6, U / J: joint 7 |
//!
//! and O / C open / close the gripper. Keys are rates: holding one moves at
//! `speed`. The device file may also be a FIFO that delivers `struct input_event`
//! records (the tests do that).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reflex_runtime::launch::LaunchError;
use reflex_runtime::registry::{DriverKind, DriverSpec, KindTable, schema_of};
use reflex_runtime::teleop::TeleopFrame;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rate::{DeviceConfig, DeviceSpec, Integrator, RateSettings};

/// `[[drivers]] kind = "keyboard_teleop"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyboardConfig {
    pub name: String,
    /// The keyboard's event device, e.g. `/dev/input/by-id/usb-...-event-kbd`
    /// (readable by the user: the `input` group).
    pub device: PathBuf,
    /// Take the keyboard for reflex alone while the run lasts (EVIOCGRAB).
    #[serde(default = "yes")]
    pub grab: bool,
    #[serde(flatten)]
    pub rate: RateSettings,
}

fn yes() -> bool {
    true
}

// Linux input event codes (linux/input-event-codes.h).
const EV_KEY: u16 = 1;
const KEY_LEFTSHIFT: u16 = 42;
const KEY_RIGHTSHIFT: u16 = 54;
const KEY_UP: u16 = 103;
const KEY_DOWN: u16 = 108;
const KEY_LEFT: u16 = 105;
const KEY_RIGHT: u16 = 106;
const KEY_PAGEUP: u16 = 104;
const KEY_PAGEDOWN: u16 = 109;
const KEY_O: u16 = 24;
const KEY_C: u16 = 46;
/// Joint frame: (plus, minus) per joint.
const JOINT_KEYS: [(u16, u16); 7] = [
    (16, 30), // Q / A
    (17, 31), // W / S
    (18, 32), // E / D
    (19, 33), // R / F
    (20, 34), // T / G
    (21, 35), // Y / H
    (22, 36), // U / J
];
/// End-effector frame: (plus, minus) per axis.
const TIP_KEYS: [(u16, u16); 3] = [
    (KEY_UP, KEY_DOWN),
    (KEY_LEFT, KEY_RIGHT),
    (KEY_PAGEUP, KEY_PAGEDOWN),
];
/// `struct input_event` on 64-bit Linux: timeval (16 bytes), type, code, value.
const EVENT_BYTES: usize = 24;
/// EVIOCGRAB = _IOW('E', 0x90, int).
const EVIOCGRAB: libc::c_ulong = 0x4004_4590;

/// Which keys are down.
#[derive(Debug, Clone)]
pub struct Keys {
    down: [bool; 256],
}

impl Default for Keys {
    fn default() -> Self {
        Self { down: [false; 256] }
    }
}

impl Keys {
    /// Applies one `struct input_event` record.
    pub fn apply(&mut self, event: &[u8; EVENT_BYTES]) {
        let kind = u16::from_ne_bytes([event[16], event[17]]);
        let code = u16::from_ne_bytes([event[18], event[19]]);
        let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
        // 1 pressed, 0 released, 2 auto-repeat (still down).
        if kind == EV_KEY && usize::from(code) < self.down.len() {
            self.down[usize::from(code)] = value != 0;
        }
    }

    fn is_down(&self, code: u16) -> bool {
        self.down[usize::from(code)]
    }

    pub fn engaged(&self) -> bool {
        self.is_down(KEY_LEFTSHIFT) || self.is_down(KEY_RIGHTSHIFT)
    }

    /// Rates per axis of `frame` (into `out`) and the gripper's.
    pub fn rates(&self, frame: TeleopFrame, out: &mut [f64; 7]) -> f64 {
        let pairs: &[(u16, u16)] = match frame {
            TeleopFrame::Joint => &JOINT_KEYS,
            TeleopFrame::EndEffector => &TIP_KEYS,
        };
        out.fill(0.0);
        let axis = |(plus, minus): (u16, u16)| {
            f64::from(u8::from(self.is_down(plus))) - f64::from(u8::from(self.is_down(minus)))
        };
        for (rate, &pair) in out.iter_mut().zip(pairs) {
            *rate = axis(pair);
        }
        axis((KEY_O, KEY_C))
    }
}

/// An input event record, for tests and tools that feed a FIFO.
pub fn event_bytes(code: u16, pressed: bool) -> [u8; EVENT_BYTES] {
    let mut event = [0u8; EVENT_BYTES];
    event[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
    event[18..20].copy_from_slice(&code.to_ne_bytes());
    event[20..24].copy_from_slice(&i32::from(pressed).to_ne_bytes());
    event
}

/// Key codes the tests press.
pub mod codes {
    pub const SHIFT: u16 = super::KEY_LEFTSHIFT;
    pub const UP: u16 = super::KEY_UP;
}

pub struct KeyboardKind;

impl DriverKind for KeyboardKind {
    fn kind(&self) -> &'static str {
        KeyboardConfig::KIND
    }
    fn schema(&self) -> serde_json::Value {
        schema_of::<KeyboardConfig>()
    }
    fn check(&self, table: &KindTable<'_>) -> Result<Arc<dyn DriverSpec>, LaunchError> {
        let mut config: KeyboardConfig = table.parse()?;
        table.check_name("name", &config.name)?;
        config.rate.check(table)?;
        config.device = table.resolve(&config.device);
        Ok(Arc::new(DeviceSpec(config)))
    }
}

impl DeviceConfig for KeyboardConfig {
    const KIND: &'static str = "keyboard_teleop";
    fn name(&self) -> &str {
        &self.name
    }
    fn rate(&self) -> &RateSettings {
        &self.rate
    }
    fn source(&self) -> String {
        self.device.display().to_string()
    }
    fn run(&self, integrator: Integrator, stop: &AtomicBool) {
        read_keys(self, integrator, stop);
    }
}

/// Opens the device without blocking (a FIFO opens before its writer), grabbed
/// when asked and possible.
fn open_device(path: &Path, grab: bool) -> std::io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if grab && file.metadata()?.file_type().is_char_device() {
        // SAFETY: EVIOCGRAB takes an int by value on an open evdev descriptor.
        if unsafe { libc::ioctl(file.as_raw_fd(), EVIOCGRAB, 1 as libc::c_int) } != 0 {
            tracing::warn!(
                "{}: cannot grab the keyboard ({}); its keys also reach other programs",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(file)
}

/// The keyboard thread: read what arrived, then integrate one period.
fn read_keys(config: &KeyboardConfig, mut integrator: Integrator, stop: &AtomicBool) {
    let period = Duration::from_secs_f64(1.0 / config.rate.rate_hz);
    let mut keys = Keys::default();
    let mut device: Option<File> = None;
    let mut pending = Vec::with_capacity(EVENT_BYTES * 64);
    let mut buf = [0u8; EVENT_BYTES * 64];
    let mut rates = [0.0; 7];
    let mut warned = false;
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if device.is_none() {
            match open_device(&config.device, config.grab) {
                Ok(file) => {
                    device = Some(file);
                    warned = false;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(
                            "{}: {}: {e}; retrying",
                            config.name,
                            config.device.display()
                        );
                        warned = true;
                    }
                    integrator.release();
                    keys = Keys::default();
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        let Some(file) = device.as_mut() else {
            continue;
        };
        let mut poll = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait = period.saturating_sub(last.elapsed());
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, wait.as_millis() as libc::c_int) };
        if ready > 0 && poll.revents & libc::POLLIN != 0 {
            match file.read(&mut buf) {
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // Unplugged (ENODEV): hand the arm back and look for it again.
                    tracing::warn!("{}: {}: {e}", config.name, config.device.display());
                    device = None;
                    continue;
                }
            }
            let whole = pending.len() / EVENT_BYTES * EVENT_BYTES;
            for event in pending[..whole].chunks_exact(EVENT_BYTES) {
                keys.apply(event.try_into().expect("a whole event"));
            }
            pending.drain(..whole);
        } else if ready > 0 && poll.revents & libc::POLLHUP != 0 {
            // A FIFO whose writer left: nothing to read until another opens it.
            std::thread::sleep(wait);
        }
        let elapsed = last.elapsed();
        if elapsed >= period {
            last = Instant::now();
            let gripper = keys.rates(config.rate.frame, &mut rates);
            integrator.advance(&rates, gripper, keys.engaged(), elapsed.as_secs_f64());
        }
    }
    integrator.release();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_make_rates_and_shift_engages() {
        let mut keys = Keys::default();
        let mut rates = [0.0; 7];
        keys.apply(&event_bytes(KEY_UP, true));
        keys.apply(&event_bytes(KEY_RIGHT, true));
        assert!(!keys.engaged());
        keys.apply(&event_bytes(KEY_RIGHTSHIFT, true));
        assert!(keys.engaged());
        assert_eq!(keys.rates(TeleopFrame::EndEffector, &mut rates), 0.0);
        assert_eq!(rates[..3], [1.0, -1.0, 0.0]);
        // Auto-repeat keeps a key down; release lets it go.
        let mut repeat = event_bytes(KEY_UP, true);
        repeat[20..24].copy_from_slice(&2i32.to_ne_bytes());
        keys.apply(&repeat);
        keys.apply(&event_bytes(KEY_RIGHT, false));
        keys.apply(&event_bytes(KEY_C, true));
        assert_eq!(keys.rates(TeleopFrame::EndEffector, &mut rates), -1.0);
        assert_eq!(rates[..3], [1.0, 0.0, 0.0]);
        // The joint frame: W / S is joint 2.
        keys.apply(&event_bytes(31, true));
        keys.rates(TeleopFrame::Joint, &mut rates);
        assert_eq!(rates, [0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Other event types (EV_MSC scan codes, EV_SYN) change nothing.
        let mut scan = event_bytes(31, false);
        scan[16..18].copy_from_slice(&4u16.to_ne_bytes());
        keys.apply(&scan);
        keys.rates(TeleopFrame::Joint, &mut rates);
        assert_eq!(rates[1], -1.0);
    }
}
