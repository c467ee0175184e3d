//! Live audio capture (`[[drivers]] kind = "audio"`, `device = ...`) through the
//! real path — ALSA, cpal's callback, the ring, the driver's thread, the log-mel —
//! without a sound card: `reflex` runs with `HOME` set to a directory whose
//! `.asoundrc` defines a capture PCM of ALSA's `file` plugin, `reflex_test_mic`,
//! that reads its samples from a FIFO (its `null` slave would deliver silence; ALSA
//! lists a PCM of `.asoundrc` among its hints, so cpal finds it by name). A
//! thread of the test writes a 1 kHz tone into the FIFO in real time, one period
//! (one hop) per write, so capture runs at the pace of a microphone: the `null`
//! slave is not paced (ALSA would read as fast as it can), and the plugin reads
//! `infile` once per period and fills a short read with silence, so writes of a
//! whole period are what keep the tone whole.
//!
//! chunk_mel.onnx adds 1e-3 x (mean, max) of the spectrogram it was fed to the
//! state, so the run log shows what the policy heard.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use reflex_drivers::mel::{LogMel, MelConfig, MelNorm};

const RATE: u32 = 16_000;
const TONE_HZ: f64 = 1_000.0;
const AMPLITUDE: f64 = 0.5;
/// hop_ms = 25: 400 frames, the capture period the driver asks for.
const HOP_FRAMES: usize = 400;

/// The PCM the tests capture from: ALSA's file plugin reading `fifo`.
fn alsa_home(dir: &Path, fifo: &Path) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let asoundrc = format!(
        r#"pcm.reflex_test_mic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{}"
    format "raw"
}}
"#,
        fifo.display()
    );
    std::fs::write(home.join(".asoundrc"), asoundrc).unwrap();
    home
}

fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Writes the tone (f32 little-endian, mono) into `fifo` at the capture rate, one
/// hop per write, until `stop`. Each time ALSA opens the PCM it opens the FIFO
/// (cpal opens it once to list its configurations, then for the stream), so the
/// FIFO is opened again whenever its reader goes away. Returns the frames written.
fn spawn_tone_writer(
    fifo: PathBuf,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut frame = 0u64;
        while !stop.load(Ordering::Acquire) {
            // Non-blocking open: fails (ENXIO) until a reader has the FIFO open.
            let Ok(mut file) = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
            else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            {
                use std::os::fd::AsRawFd;
                let fd = file.as_raw_fd();
                unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
            }
            while !stop.load(Ordering::Acquire) {
                let due = start + Duration::from_secs_f64(frame as f64 / f64::from(RATE));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let chunk: Vec<u8> = (frame..frame + HOP_FRAMES as u64)
                    .flat_map(|i| tone(i).to_le_bytes())
                    .collect();
                if file.write_all(&chunk).is_err() {
                    break; // the reader closed the PCM
                }
                frame += HOP_FRAMES as u64;
                written.store(frame, Ordering::Relaxed);
            }
        }
    })
}

fn tone(i: u64) -> f32 {
    let t = i as f64 / f64::from(RATE);
    (AMPLITUDE * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as f32
}

fn mel_config() -> MelConfig {
    MelConfig {
        n_fft: 256,
        hop_length: 128,
        n_mels: 8,
        fmin: 0.0,
        fmax: None,
        norm: MelNorm::Slaney,
        htk: false,
        power: 2.0,
        amin: 1e-10,
        reference: 1.0,
        top_db: Some(80.0),
    }
}

/// (mean, max) of the log-mel of a 768-frame window (48 ms: 5 mel frames) of a
/// tone at `hz`, over every phase of a cycle: (lowest, highest) of each.
fn tone_stats(hz: f64) -> ((f64, f64), (f64, f64)) {
    let mut mel = LogMel::new(&mel_config(), f64::from(RATE));
    let mut features = vec![0.0f32; 40];
    let (mut mean, mut max) = ((f64::MAX, f64::MIN), (f64::MAX, f64::MIN));
    for phase in 0..32 {
        let window: Vec<f32> = (0..768)
            .map(|i| {
                let t = (i + phase) as f64 / f64::from(RATE);
                (AMPLITUDE * (2.0 * std::f64::consts::PI * hz * t).sin()) as f32
            })
            .collect();
        mel.compute(&window, &mut features);
        let m = features.iter().map(|v| f64::from(*v)).sum::<f64>() / 40.0;
        let x = features.iter().fold(f64::MIN, |a, v| a.max(f64::from(*v)));
        mean = (mean.0.min(m), mean.1.max(m));
        max = (max.0.min(x), max.1.max(x));
    }
    (mean, max)
}

/// The demo launch file with chunk_mel.onnx fed by an audio driver `mic` whose
/// source is `source_fields`.
fn launch_text(source_fields: &str) -> String {
    let policy = chunk_policy(
        "chunk_mel.onnx",
        "\n[[policy.inputs]]\nname = \"mel\"\nsource = \"mic.data\"\nshape = [1, 8, 5]\n",
        10,
    );
    format!(
        "{}\n[[drivers]]\nkind = \"audio\"\nname = \"mic\"\n{source_fields}window_ms = 48.0\n\
         hop_ms = 25.0\nfeatures = \"log_mel\"\n\n[drivers.mel]\nn_fft = 256\nhop_length = 128\n\
         n_mels = 8\n",
        demo_with_policy(&policy, 3),
    )
}

#[test]
fn a_microphone_feeds_the_policy_the_spectrogram_of_the_tone_it_hears() {
    let dir = scratch("microphone");
    let fifo = dir.join("mic.fifo");
    make_fifo(&fifo);
    let home = alsa_home(&dir, &fifo);
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text("device = \"reflex_test_mic\"\n")).unwrap();
    let check = run_ok(&["check", launch.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("mic (tensor [8, 5] at 40 Hz"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = spawn_tone_writer(fifo.clone(), stop.clone(), written.clone());
    let (log, summary_path) = (dir.join("run.log"), dir.join("summary.json"));
    let out = reflex()
        .env("HOME", &home)
        .args([
            "run",
            launch.to_str().unwrap(),
            "--duration",
            "3",
            "--set",
            "zenoh.enabled=false",
            "--log",
            log.to_str().unwrap(),
            "--summary-json",
            summary_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    // The driver's report: a period per hop, windows published, nothing lost.
    let line = stderr
        .lines()
        .find(|l| l.contains("reflex: audio `mic`"))
        .unwrap_or_else(|| panic!("no audio report: {stderr}"));
    assert!(
        line.contains("(ALSA \"reflex_test_mic\", 16000 Hz x 1, F32, 400-frame periods)"),
        "{line}"
    );
    assert!(line.contains(" 0 xruns, 0 ring overruns"), "{line}");
    let count = |after: &str| -> u64 {
        line.split(after)
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (windows, frames) = (count(" windows"), count(" frames captured"));
    // 3 s at 40 windows a second; the frames are those the writer wrote (to the
    // stream's FIFO; a few periods went to the first, listing open).
    assert!(
        windows >= 60 && windows <= frames / HOP_FRAMES as u64 + 1,
        "{line}"
    );
    let sent = written.load(Ordering::Relaxed);
    assert!(
        frames >= 40_000 && frames <= sent,
        "{line}; {sent} frames written"
    );

    // The stream was fresh: samples fed a few hops old at most (their stamps are
    // the capture times of their last frames, mapped to the run's clock).
    let s = summary(&summary_path);
    let mic = s["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "mic")
        .cloned()
        .unwrap();
    assert_eq!(mic["stale_episodes"], 0, "{mic}");
    assert!(mic["samples"].as_u64().unwrap() >= 60, "{mic}");
    let age = mic["age_ms"]["p50"].as_f64().unwrap();
    assert!((0.0..100.0).contains(&age), "{mic}");

    // Every chunk after the first windows saw the tone's spectrogram; a 3 kHz tone
    // (or silence) would read otherwise.
    let ((mean_lo, mean_hi), (max_lo, max_hi)) = tone_stats(TONE_HZ);
    let ((other_mean, _), (other_max, _)) = tone_stats(3_000.0);
    assert!(
        (other_mean - mean_lo).abs() > 1.0 || (other_max - max_lo).abs() > 1.0,
        "a 3 kHz tone reads like 1 kHz"
    );
    let chunks = chunk_offsets(&log);
    let mut checked = 0;
    for (tick, offset) in &chunks {
        // Ticks at 100 Hz; skip the first half second (the first window, partly
        // silence before capture started).
        if *tick < 50 {
            continue;
        }
        let (mean, max) = (offset[0] / 1e-3, offset[1] / 1e-3);
        assert!(
            (mean_lo - 0.05..=mean_hi + 0.05).contains(&mean)
                && (max_lo - 0.05..=max_hi + 0.05).contains(&max),
            "tick {tick}: the policy saw mean {mean:.3} max {max:.3} dB; a 1 kHz tone has \
             {mean_lo:.3}..{mean_hi:.3} / {max_lo:.3}..{max_hi:.3}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} chunks of {}", chunks.len());
    eprintln!("{line}; {checked} chunks heard the tone; {mic}");
}

/// Runs `reflex` (HOME = `home`), killed after 30 s: (success, stderr, elapsed).
fn run_bounded(home: &Path, args: &[&str]) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut child = reflex()
        .env("HOME", home)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("reflex {args:?} hung for 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr, started.elapsed())
}

#[test]
fn a_missing_microphone_is_a_clear_error_not_a_hang() {
    let dir = scratch("microphone-missing");
    let fifo = dir.join("mic.fifo");
    make_fifo(&fifo);
    let home = alsa_home(&dir, &fifo);
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text("device = \"reflex_no_such_pcm\"\n")).unwrap();
    // `check` does not open devices: the name is fine there.
    run_ok(&["check", launch.to_str().unwrap()]);
    let (ok, stderr, elapsed) = run_bounded(
        &home,
        &[
            "run",
            launch.to_str().unwrap(),
            "--duration",
            "2",
            "--set",
            "zenoh.enabled=false",
        ],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("cannot open ALSA capture device \"reflex_no_such_pcm\"")
            && stderr.contains("arecord -L"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");

    // A card that is not here: refused by `check` already.
    std::fs::write(&launch, launch_text("device = \"hw:9,0\"\n")).unwrap();
    let out = reflex()
        .args(["check", launch.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("field `drivers[1].device`: no sound card 9 on this machine"),
        "{err}"
    );
}

#[test]
fn microphone_settings_are_checked_at_their_field() {
    let dir = scratch("microphone-fields");
    let launch = dir.join("launch.toml");
    let wav = dir.join("silence.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&wav, spec).unwrap();
    for _ in 0..1600 {
        writer.write_sample(0i16).unwrap();
    }
    writer.finalize().unwrap();
    let file = format!("file = {:?}\n", wav.display());
    for (fields, expected) in [
        (
            format!("{file}device = \"default\"\n"),
            "audio needs exactly one of `file` or `device`, found both".to_string(),
        ),
        (
            String::new(),
            "audio needs exactly one of `file` (a WAV file) or `device`".to_string(),
        ),
        (
            format!("{file}sample_rate = 16000\n"),
            "field `drivers[1].sample_rate`: comes from the WAV file".to_string(),
        ),
        (
            format!("{file}channels = 2\n"),
            "field `drivers[1].channels`: comes from the WAV file".to_string(),
        ),
        (
            "device = \"default\"\nsample_rate = 100\n".to_string(),
            "field `drivers[1].sample_rate`: must be 1000 to 384000 Hz, found 100".to_string(),
        ),
        (
            "device = \"default\"\nchannels = 0\n".to_string(),
            "field `drivers[1].channels`: must be 1 to 32, found 0".to_string(),
        ),
        (
            "device = \"\"\n".to_string(),
            "field `drivers[1].device`: an ALSA PCM name".to_string(),
        ),
        (
            "device = \"default\"\nloop = true\n".to_string(),
            "field `drivers[1].loop`: applies to `file`".to_string(),
        ),
    ] {
        std::fs::write(&launch, launch_text(&fields)).unwrap();
        let out = reflex()
            .args(["check", launch.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{fields}");
        assert!(err.contains(&expected), "{fields}: {err}");
    }
    // A device at another rate and channel count: the stream's shape follows.
    let policy = chunk_policy("chunk_state_hold.onnx", "", 10);
    std::fs::write(
        &launch,
        format!(
            "{}\n[[drivers]]\nkind = \"audio\"\nname = \"mic\"\ndevice = \"default\"\n\
             sample_rate = 8000\nchannels = 2\nwindow_ms = 96.0\nhop_ms = 25.0\n",
            demo_with_policy(&policy, 3)
        ),
    )
    .unwrap();
    let check = run_ok(&["check", launch.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("mic (audio 2 ch at 8000 Hz in chunks of 768 at 40 Hz"),
        "{stdout}"
    );
}

#[test]
fn a_microphone_is_refused_under_the_simulated_clock() {
    let dir = scratch("microphone-sim");
    let fifo = dir.join("mic.fifo");
    make_fifo(&fifo);
    let home = alsa_home(&dir, &fifo);
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, launch_text("device = \"reflex_test_mic\"\n")).unwrap();
    // Refused before the device is opened: opening it would wait for a writer on
    // the FIFO (none here), and the run would hang.
    let (ok, stderr, _) = run_bounded(
        &home,
        &[
            "run",
            launch.to_str().unwrap(),
            "--sim-clock",
            "--duration",
            "1",
            "--set",
            "zenoh.enabled=false",
        ],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(
            "a live microphone (ALSA device \"reflex_test_mic\") cannot be stepped by the \
             simulated clock"
        ),
        "{stderr}"
    );
}
