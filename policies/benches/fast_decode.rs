//! FAST decode latency, reflex vs the Python reference (scipy + HF tokenizers,
//! `policies/export/fast_reference.py`) in one run, on the same tokenizer files and
//! the same token ids, for [10, 7], [50, 14] and [50, 32] chunks. Medians over
//! many decodes; the Python side is timed inside Python (no process start-up).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use reflex_policies::fast::synthetic::smooth_chunks;
use reflex_policies::fast::{self, DecodeMode};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = repo.join(".venv/bin/python");
    let work = repo.join("target/fast-bench");
    let repeat = if quick { 20 } else { 2000 };
    println!(
        "| chunk | tokens | reflex decode (us) | Python reference (us) | speed-up |\n|---|---|---|---|---|"
    );
    for (horizon, dim, vocab) in [(10, 7, 1024), (50, 14, 2048), (50, 32, 4096)] {
        let chunks = smooth_chunks(300, horizon, dim, 11);
        let codec = fast::fit(&chunks, horizon, dim, 10.0, vocab).expect("fit");
        let dir = work.join(format!("{horizon}x{dim}"));
        codec.save(&dir).expect("save");
        let ids = codec.encode(&chunks[0]).expect("encode");
        let ids_file = dir.join("ids.json");
        std::fs::write(&ids_file, serde_json::to_string(&ids).unwrap()).unwrap();

        let mut times = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let start = Instant::now();
            std::hint::black_box(
                codec
                    .decode(std::hint::black_box(&ids), DecodeMode::Strict)
                    .unwrap(),
            );
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        let ours = median(times);
        let out = Command::new(&python)
            .arg(repo.join("policies/export/fast_reference.py"))
            .args([
                "bench",
                "--tokenizer",
                dir.to_str().unwrap(),
                "--ids",
                ids_file.to_str().unwrap(),
            ])
            .args(["--repeat", &repeat.to_string()])
            .output();
        let theirs = out
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["median_us"].as_f64());
        match theirs {
            Some(theirs) => println!(
                "| {horizon}x{dim} | {} | {ours:.1} | {theirs:.1} | {:.0}x |",
                ids.len(),
                theirs / ours
            ),
            None => println!(
                "| {horizon}x{dim} | {} | {ours:.1} | (python reference unavailable: run make setup) | |",
                ids.len()
            ),
        }
    }
}
