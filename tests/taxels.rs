//! A tactile array on a serial port (`serial_taxels`), tested through a
//! pseudo-terminal: the test is the sensor's firmware, writing frames in the
//! documented format into the master side while reflex reads the slave. The fixture
//! model (chunk_taxels.onnx) adds 1e-3 x (sum, max) of the taxels to the state, so
//! every logged chunk shows the frame it saw, after bias removal.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use common::*;
use reflex_drivers::taxels::encode_frame;

const BASELINE: u16 = 100;
const BIAS_FRAMES: u32 = 10;
/// Unloaded frames the firmware sends first (0.5 s): more than the bias needs, so
/// the bias is the baseline whenever reflex starts reading.
const UNLOADED: u32 = 50;

/// A pseudo-terminal: (master to write to, the slave's path, the slave kept open).
fn pty() -> (File, String, File) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds; no name, termios or winsize asked for.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: ttyname returns a static buffer for a valid tty fd.
    let path = unsafe { std::ffi::CStr::from_ptr(libc::ttyname(slave)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: both fds were just opened and are owned here.
    unsafe { (File::from_raw_fd(master), path, File::from_raw_fd(slave)) }
}

fn launch_text(port: &str) -> String {
    let policy = chunk_policy(
        "chunk_taxels.onnx",
        "\n[[policy.inputs]]\nname = \"taxels\"\nsource = \"finger.data\"\nshape = [1, 4, 4]\n",
        10,
    );
    format!(
        "{}\n[[drivers]]\nkind = \"serial_taxels\"\nname = \"finger\"\nport = {port:?}\n\
         rows = 4\ncols = 4\nrate_hz = 100.0\nbias_frames = {BIAS_FRAMES}\n\n\
         [streams.finger]\nmax_age_ms = 200\n",
        demo_with_policy(&policy, 3)
    )
}

#[test]
fn a_serial_taxel_array_reaches_the_policy_bias_removed_and_checked() {
    let dir = scratch("taxels");
    let (mut master, port, _slave) = pty();
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text(&port)).unwrap();
    let check = run_ok(&["check", launch.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("finger (tensor [4, 4] at 100 Hz"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let log = dir.join("run.log");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "3",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = spawn_until(&args, "wall clock");
    // The firmware: UNLOADED frames, then taxel 5 pressed harder and harder (k
    // counts above the baseline), 100 frames a second.
    let mut frame = Vec::new();
    let started = Instant::now();
    let mut seq = 0u32;
    let mut k = 0u16;
    while started.elapsed() < Duration::from_millis(2000) {
        seq += 1;
        let mut values = [BASELINE; 16];
        if seq > UNLOADED {
            k += 1;
            values[5] += k;
        }
        encode_frame(4, 4, seq, &values, &mut frame);
        if seq == UNLOADED + 40 {
            // Line noise, then a frame with a bad CRC and one repeating seq 40 with
            // other values: neither may reach the policy.
            master.write_all(&[0x13, 0xAA, 0x00, 0x55]).unwrap();
            let mut corrupt = frame.clone();
            corrupt[12] ^= 0x7f;
            master.write_all(&corrupt).unwrap();
            master.write_all(&frame).unwrap();
            let mut repeat = Vec::new();
            encode_frame(4, 4, seq, &[60_000; 16], &mut repeat);
            master.write_all(&repeat).unwrap();
        } else {
            master.write_all(&frame).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());

    let (mut seen, mut raw) = (Vec::new(), Vec::new());
    for (_, offset) in chunk_offsets(&log) {
        let (sum, max) = (offset[0] / 1e-3, offset[1] / 1e-3);
        raw.push((sum, max));
        seen.push(sum.round() as i64);
    }
    // After bias removal only taxel 5 is non-zero: sum = max = k, a whole count.
    for (sum, max) in &raw {
        assert!(
            (sum - max).abs() < 0.05 && (sum - sum.round()).abs() < 0.05,
            "(sum, max) per chunk: {raw:?}"
        );
    }
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(
        seen.iter().all(|k| (0..=i64::from(k_max(seq))).contains(k)),
        "a chunk saw the corrupt or the repeated frame: {seen:?}"
    );
    assert!(seen.iter().filter(|k| **k > 0).count() >= 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[1] >= w[0]), "{seen:?}");
}

/// The largest press written: one count per frame after the unloaded ones.
fn k_max(frames: u32) -> u32 {
    frames - UNLOADED
}

#[test]
fn a_missing_serial_port_is_a_check_error() {
    let dir = scratch("taxels-missing");
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text("/dev/ttyREFLEX9")).unwrap();
    let out = reflex()
        .args(["check", launch.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("field `drivers[1].port`: no such serial port: /dev/ttyREFLEX9"),
        "{err}"
    );
}

/// `reflex tare` while running: the firmware's baseline drifts by DRIFT counts on
/// every taxel; the chunks show the drift until the tare, then zero again.
#[test]
fn reflex_tare_takes_a_new_bias_while_the_array_keeps_publishing() {
    const DRIFT: u16 = 7;
    let dir = scratch("taxels-tare");
    let (mut master, port, _slave) = pty();
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text(&port)).unwrap();
    let log = dir.join("run.log");
    let args: Vec<String> = [
        "run",
        launch.to_str().unwrap(),
        "--duration",
        "4",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut command = reflex();
    command.env("XDG_RUNTIME_DIR", &dir);
    let child = spawn_until_with(command, &args, "wall clock");
    let tare = |stream: Option<&str>| {
        let mut cmd = reflex();
        cmd.env("XDG_RUNTIME_DIR", &dir)
            .args(["tare", "--robot", "sim_arm"]);
        cmd.args(stream);
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let mut frame = Vec::new();
    let started = Instant::now();
    let (mut seq, mut tared) = (0u32, false);
    while started.elapsed() < Duration::from_millis(3600) {
        seq += 1;
        // Unloaded, then the baseline drifts (from 1 s on); tare at 2 s.
        let drift = if started.elapsed() > Duration::from_millis(1000) {
            DRIFT
        } else {
            0
        };
        encode_frame(4, 4, seq, &[BASELINE + drift; 16], &mut frame);
        master.write_all(&frame).unwrap();
        if !tared && started.elapsed() > Duration::from_millis(2000) {
            let answer = tare(Some("finger"));
            assert!(answer.contains("ok: taring finger"), "{answer}");
            let refused = tare(Some("top"));
            assert!(
                refused.contains("refused: stream `top` does not tare"),
                "{refused}"
            );
            tared = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let sums: Vec<i64> = chunk_offsets(&log)
        .iter()
        .map(|(_, offset)| (offset[0] / 1e-3).round() as i64)
        .collect();
    let drifted = 16 * i64::from(DRIFT);
    assert!(sums.iter().all(|s| [0, drifted].contains(s)), "{sums:?}");
    let first_drift = sums.iter().position(|s| *s == drifted).expect("drift seen");
    let last_drift = sums.iter().rposition(|s| *s == drifted).unwrap();
    assert!(first_drift > 0, "no chunk before the drift: {sums:?}");
    assert!(
        last_drift + 3 < sums.len(),
        "the tare did not take the drift out: {sums:?}"
    );
}
