//! Audio as a stream: log-mel spectrograms checked against librosa on the same
//! samples with the same parameters, and a WAV file feeding a policy under the
//! simulated clock (chunk_mel.onnx adds 1e-3 x (mean, max) of the spectrogram it
//! was fed to the state).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use reflex_drivers::audio::read_wav;
use reflex_drivers::mel::{LogMel, MelConfig, MelNorm};

/// A chirp with a little deterministic noise, 16-bit PCM.
fn write_wav(path: &Path, sample_rate: u32, seconds: f64, channels: u16) {
    let spec = hound::WavSpec {
        channels,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    let n = (f64::from(sample_rate) * seconds) as usize;
    let mut noise = 12345u32;
    for i in 0..n {
        let t = i as f64 / f64::from(sample_rate);
        let f = 200.0 + 1500.0 * t;
        noise = noise.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let x = 0.5 * (2.0 * std::f64::consts::PI * f * t).sin()
            + 0.01 * ((noise >> 16) as f64 / 32768.0 - 1.0);
        for c in 0..channels {
            let v = x * if c == 0 { 1.0 } else { 0.5 };
            writer.write_sample((v * 32767.0) as i16).unwrap();
        }
    }
    writer.finalize().unwrap();
}

fn config(n_fft: usize, hop: usize, n_mels: usize) -> MelConfig {
    MelConfig {
        n_fft,
        hop_length: hop,
        n_mels,
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

/// librosa on the file: load (mono mean, native rate), melspectrogram with
/// center=False, power_to_db. Returns [n_mels][frames].
fn librosa_log_mel(path: &Path, c: &MelConfig) -> Vec<Vec<f64>> {
    let python = repo().join(".venv/bin/python");
    let program = format!(
        r#"
import json, librosa, numpy as np
y, sr = librosa.load({path:?}, sr=None, mono=True)
S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft={n_fft}, hop_length={hop}, win_length=None,
    window="hann", center=False, power={power}, n_mels={n_mels}, fmin={fmin}, fmax={fmax},
    htk={htk}, norm={norm})
D = librosa.power_to_db(S, ref={reference}, amin={amin}, top_db={top_db})
print(json.dumps(D.astype(np.float64).tolist()))
"#,
        path = path.display().to_string(),
        n_fft = c.n_fft,
        hop = c.hop_length,
        power = c.power,
        n_mels = c.n_mels,
        fmin = c.fmin,
        fmax = c.fmax.map_or("None".to_string(), |f| f.to_string()),
        htk = if c.htk { "True" } else { "False" },
        norm = match c.norm {
            MelNorm::Slaney => "\"slaney\"",
            MelNorm::None => "None",
        },
        reference = c.reference,
        amin = c.amin,
        top_db = c.top_db.map_or("None".to_string(), |t| t.to_string()),
    );
    let out = Command::new(python)
        .args(["-c", &program])
        .env("NUMBA_CACHE_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reflex_log_mel(path: &Path, c: &MelConfig) -> (Vec<f32>, usize) {
    let wav = read_wav(path).unwrap();
    let mono: Vec<f32> = wav
        .samples
        .chunks(wav.channels)
        .map(|ch| ch.iter().sum::<f32>() / wav.channels as f32)
        .collect();
    let frames = c.frames(mono.len());
    let mut out = vec![0.0f32; c.n_mels * frames];
    LogMel::new(c, f64::from(wav.sample_rate)).compute(&mono, &mut out);
    (out, frames)
}

#[test]
fn log_mel_spectrograms_match_librosa() {
    let dir = scratch("audio-parity");
    let mono = dir.join("chirp.wav");
    write_wav(&mono, 16_000, 1.0, 1);
    let stereo = dir.join("stereo.wav");
    write_wav(&stereo, 22_050, 0.5, 2);
    let mut settings = vec![
        (mono.clone(), config(400, 160, 40)),
        (stereo.clone(), config(512, 256, 64)),
    ];
    // HTK scale, no area normalization, magnitude, a band, no top_db floor.
    let mut other = config(1024, 300, 32);
    (
        other.htk,
        other.norm,
        other.power,
        other.fmin,
        other.fmax,
        other.top_db,
    ) = (true, MelNorm::None, 1.0, 60.0, Some(7000.0), None);
    settings.push((mono.clone(), other));
    let mut worst = 0.0f64;
    for (path, c) in &settings {
        let reference = librosa_log_mel(path, c);
        let (ours, frames) = reflex_log_mel(path, c);
        assert_eq!(reference.len(), c.n_mels);
        assert_eq!(reference[0].len(), frames, "frames (center = False)");
        for (m, row) in reference.iter().enumerate() {
            for (t, want) in row.iter().enumerate() {
                let got = f64::from(ours[m * frames + t]);
                worst = worst.max((got - want).abs());
            }
        }
    }
    // librosa computes the STFT in float32 (complex64); reflex in f64.
    assert!(worst < 1e-3, "largest difference {worst} dB");
    eprintln!("log-mel vs librosa: largest difference {worst:.2e} dB");
    // Negative control: another window gives other numbers.
    let (ours, _) = reflex_log_mel(&mono, &config(512, 160, 40));
    let reference = librosa_log_mel(&mono, &config(400, 160, 40));
    assert!((f64::from(ours[0]) - reference[0][0]).abs() > 0.01);
}

#[test]
fn a_wav_file_feeds_the_spectrogram_of_the_window_due_at_each_tick() {
    let dir = scratch("audio-run");
    let wav = dir.join("chirp.wav");
    write_wav(&wav, 8_000, 3.0, 1);
    let policy = chunk_policy(
        "chunk_mel.onnx",
        "\n[[policy.inputs]]\nname = \"mel\"\nsource = \"mic.data\"\nshape = [1, 8, 5]\n",
        10,
    );
    let text = format!(
        "{}\n[[drivers]]\nkind = \"audio\"\nname = \"mic\"\nfile = {:?}\nwindow_ms = 100.0\n\
         hop_ms = 50.0\nfeatures = \"log_mel\"\n\n[drivers.mel]\nn_fft = 256\nhop_length = 128\n\
         n_mels = 8\n",
        demo_with_policy(&policy, 3),
        wav.display()
    );
    let launch = dir.join("launch.toml");
    std::fs::write(&launch, text).unwrap();
    let check = run_ok(&["check", launch.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("mic (tensor [8, 5] at 20 Hz"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let log = dir.join("run.log");
    run_ok(&[
        "run",
        launch.to_str().unwrap(),
        "--sim-clock",
        "--duration",
        "2",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let samples = read_wav(&wav).unwrap().samples;
    let mut c = config(256, 128, 8);
    c.fmax = None;
    let mut mel = LogMel::new(&c, 8_000.0);
    let mut checked = 0;
    for (tick, offset) in chunk_offsets(&log) {
        // 100 Hz ticks, a window every 50 ms (400 samples) ending at the newest hop
        // boundary; 800 samples, silence before the start.
        let end = (tick / 5) as usize * 400;
        let window: Vec<f32> = (0..800)
            .map(|i| {
                let at = end as i64 - 800 + i as i64;
                if at < 0 { 0.0 } else { samples[at as usize] }
            })
            .collect();
        let mut features = vec![0.0f32; 40];
        mel.compute(&window, &mut features);
        let mean = features.iter().map(|v| f64::from(*v)).sum::<f64>() / 40.0;
        let max = features.iter().fold(f64::MIN, |m, v| m.max(f64::from(*v)));
        let (got_mean, got_max) = (offset[0] / 1e-3, offset[1] / 1e-3);
        assert!(
            (got_mean - mean).abs() < 0.05 && (got_max - max).abs() < 0.05,
            "tick {tick}: saw mean {got_mean:.3} max {got_max:.3}, the window ending at \
             sample {end} has {mean:.3} / {max:.3}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} chunks");
}
