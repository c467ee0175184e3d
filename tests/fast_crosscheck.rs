//! reflex's FAST codec against the Python reference (`policies/export/fast_reference.py`,
//! scipy + Hugging Face tokenizers) on 1,000 smooth chunks of three shapes: identical
//! token ids, decoded actions equal to 1e-6, and tokenizers fitted by either side
//! loaded by the other.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use reflex_policies::fast::synthetic::smooth_chunks;
use reflex_policies::fast::{self, DecodeMode, FastCodec};
use serde_json::Value;

fn as_rows(chunks: &[Vec<f64>], dim: usize) -> Value {
    Value::from(
        chunks
            .iter()
            .map(|c| c.chunks(dim).map(|r| r.to_vec()).collect::<Vec<_>>())
            .collect::<Vec<_>>(),
    )
}

fn python(args: &[&str]) -> Value {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("policies/export/fast_reference.py"))
        .args(args)
        .output()
        .expect("python reference");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Encodes and decodes `chunks` on both sides with the tokenizer in `dir`.
fn cross_check(dir: &Path, chunks: &[Vec<f64>], dim: usize, scratch_dir: &Path) -> usize {
    let file = scratch_dir.join(format!(
        "chunks-{}.json",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&file, as_rows(chunks, dim).to_string()).unwrap();
    let reference = python(&[
        "check",
        "--tokenizer",
        dir.to_str().unwrap(),
        "--chunks",
        file.to_str().unwrap(),
    ]);
    let codec = FastCodec::load(dir).unwrap();
    let mut decoded_compared = 0;
    for (i, (chunk, expected)) in chunks.iter().zip(reference.as_array().unwrap()).enumerate() {
        let ids = codec.encode(chunk).unwrap();
        let want: Vec<u32> = serde_json::from_value(expected["ids"].clone()).unwrap();
        assert_eq!(ids, want, "chunk {i}: token ids differ");
        match (codec.decode(&ids, DecodeMode::Strict), &expected["decoded"]) {
            (Ok(ours), Value::Array(rows)) => {
                let theirs: Vec<f64> = rows
                    .iter()
                    .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                    .collect();
                for (a, b) in ours.iter().zip(&theirs) {
                    assert!((a - b).abs() <= 1e-6, "chunk {i}: {a} vs {b}");
                }
                decoded_compared += 1;
            }
            (Err(e), Value::Null) => panic!("chunk {i}: both rejected its own encoding: {e}"),
            (ours, theirs) => panic!("chunk {i}: reflex {ours:?}, reference {theirs}"),
        }
    }
    decoded_compared
}

#[test]
fn reflex_matches_the_python_reference_on_1000_chunks() {
    let dir = scratch("fast-crosscheck");
    // The committed fixture (fitted by the Python reference) for [10, 7].
    let mut total = cross_check(
        &repo().join("policies/models/fast"),
        &smooth_chunks(400, 10, 7, 1),
        7,
        &dir,
    );
    // Tokenizers fitted by the reference for two more shapes.
    for (horizon, dim, vocab) in [(50, 14, 2048), (16, 3, 512)] {
        let train = smooth_chunks(300, horizon, dim, 2);
        let train_file = dir.join(format!("train-{horizon}x{dim}.json"));
        std::fs::write(&train_file, as_rows(&train, dim).to_string()).unwrap();
        let out = dir.join(format!("py-{horizon}x{dim}"));
        let (h, d, v) = (horizon.to_string(), dim.to_string(), vocab.to_string());
        python(&[
            "fit",
            "--chunks",
            train_file.to_str().unwrap(),
            "--horizon",
            &h,
            "--dim",
            &d,
            "--vocab-size",
            &v,
            "--out",
            out.to_str().unwrap(),
        ]);
        total += cross_check(&out, &smooth_chunks(300, horizon, dim, 3), dim, &dir);
    }
    assert_eq!(total, 1000);
}

#[test]
fn a_tokenizer_fitted_by_reflex_loads_in_python_and_encodes_the_same() {
    let dir = scratch("fast-fit-interop");
    let train = smooth_chunks(500, 10, 7, 4);
    let codec = fast::fit(&train, 10, 7, 10.0, 1024).unwrap();
    let out = dir.join("rust-fitted");
    codec.save(&out).unwrap();
    assert_eq!(
        cross_check(&out, &smooth_chunks(100, 10, 7, 5), 7, &dir),
        100
    );
}

#[test]
fn the_cli_fits_encodes_and_decodes() {
    let dir = scratch("fast-cli");
    let chunks = smooth_chunks(300, 10, 7, 6);
    let values: Vec<f32> = chunks.iter().flatten().map(|&v| v as f32).collect();
    reflex::npy::write_f32(&dir.join("chunks.npy"), &[300, 10, 7], &values).unwrap();
    let tok = dir.join("tok");
    run_ok(&[
        "fast",
        "fit",
        "--input",
        dir.join("chunks.npy").to_str().unwrap(),
        "--out",
        tok.to_str().unwrap(),
    ]);
    let chunk_file = dir.join("chunk.json");
    std::fs::write(&chunk_file, as_rows(&chunks[..1], 7)[0].to_string()).unwrap();
    let out = run_ok(&[
        "fast",
        "encode",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--input",
        chunk_file.to_str().unwrap(),
    ]);
    let ids: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids_file = dir.join("ids.json");
    std::fs::write(&ids_file, ids.to_string()).unwrap();
    let out = run_ok(&[
        "fast",
        "decode",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--input",
        ids_file.to_str().unwrap(),
    ]);
    let decoded: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = decoded["actions"].as_array().unwrap();
    assert_eq!(rows.len(), 10);
    for (t, row) in rows.iter().enumerate() {
        for (d, v) in row.as_array().unwrap().iter().enumerate() {
            // float32 input, quantization step 0.1 in coefficient space.
            assert!((v.as_f64().unwrap() - chunks[0][t * 7 + d]).abs() < 0.2);
        }
    }
    // An invalid sequence is a clear rejection with exit code 1.
    std::fs::write(&ids_file, "[5]").unwrap();
    let out = reflex()
        .args([
            "fast",
            "decode",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--input",
            ids_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("expected 70"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
