//! Log-mel spectrogram cost per window, reflex vs librosa (the peer a Python user
//! would call: `melspectrogram` + `power_to_db`, timed inside Python after a
//! warm-up, so no JIT or process start-up is counted), on the same samples with
//! the same parameters. Medians over many windows.
//!
//!     cargo bench -p reflex-drivers --bench mel

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use reflex_drivers::mel::{LogMel, MelConfig, MelNorm};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let repeat = if quick { 5 } else { 300 };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = repo.join(".venv/bin/python");
    println!(
        "| window | n_fft / hop / mels | frames | reflex (ms) | librosa (ms) | speed-up |\n|---|---|---|---|---|---|"
    );
    for (seconds, n_fft, hop, mels) in [
        (1.0, 400, 160, 64),
        (0.5, 512, 128, 80),
        (2.0, 1024, 256, 128),
    ] {
        let rate = 16_000.0;
        let n = (seconds * rate) as usize;
        let samples: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f64 / rate;
                (0.5 * (2.0 * std::f64::consts::PI * (300.0 + 900.0 * t) * t).sin()) as f32
            })
            .collect();
        let config = MelConfig {
            n_fft,
            hop_length: hop,
            n_mels: mels,
            fmin: 0.0,
            fmax: None,
            norm: MelNorm::Slaney,
            htk: false,
            power: 2.0,
            amin: 1e-10,
            reference: 1.0,
            top_db: Some(80.0),
        };
        let frames = config.frames(n);
        let mut mel = LogMel::new(&config, rate);
        let mut out = vec![0.0f32; mels * frames];
        mel.compute(&samples, &mut out);
        let times: Vec<f64> = (0..repeat)
            .map(|_| {
                let start = Instant::now();
                mel.compute(std::hint::black_box(&samples), &mut out);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let ours = median(times);
        let program = format!(
            r#"
import time, numpy as np, librosa
sr = {rate}
t = np.arange({n}) / sr
y = (0.5 * np.sin(2 * np.pi * (300 + 900 * t) * t)).astype(np.float32)
f = lambda: librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft={n_fft},
    hop_length={hop}, center=False, n_mels={mels}, power=2.0), ref=1.0, amin=1e-10, top_db=80.0)
f()
ts = []
for _ in range({repeat}):
    s = time.perf_counter(); f(); ts.append((time.perf_counter() - s) * 1e3)
print(sorted(ts)[len(ts) // 2])
"#
        );
        let peer = Command::new(&python)
            .args(["-c", &program])
            .env("NUMBA_CACHE_DIR", std::env::temp_dir())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            });
        match peer {
            Some(theirs) => println!(
                "| {seconds} s at 16 kHz | {n_fft} / {hop} / {mels} | {frames} | {ours:.3} | {theirs:.3} | {:.1}x |",
                theirs / ours
            ),
            None => println!(
                "| {seconds} s at 16 kHz | {n_fft} / {hop} / {mels} | {frames} | {ours:.3} | (librosa not in .venv) | |"
            ),
        }
    }
}
