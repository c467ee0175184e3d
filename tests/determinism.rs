//! Reproducibility: simulated-clock runs are byte-identical, and `reflex replay`
//! reproduces a wall-clock run's commands bit for bit, and notices when the log
//! has been tampered with.

mod common;

use std::path::Path;

use common::*;
use reflex_runtime::log::{LogWriter, Record, read_log};

fn sim_run(log: &Path, seed: &str) {
    run_ok(&[
        "run",
        "launch/sim_arm.toml",
        "--sim-clock",
        "--duration",
        "3",
        "--seed",
        seed,
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
}

#[test]
fn simulated_runs_with_the_same_seed_write_identical_logs() {
    let dir = scratch("determinism-sim");
    let (a, b, c) = (dir.join("a.log"), dir.join("b.log"), dir.join("c.log"));
    sim_run(&a, "5");
    sim_run(&b, "5");
    sim_run(&c, "6");
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert!(a.len() > 10_000, "a real log: {} bytes", a.len());
    assert!(a == b, "same seed, different bytes");
    assert!(
        a != c,
        "a different seed draws different targets, so the logs must differ"
    );
}

fn replay(log: &Path) -> (bool, String) {
    let out = reflex()
        .args(["replay", log.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn rewrite(from: &Path, to: &Path, change: impl Fn(&mut Vec<Record>)) {
    let log = read_log(from).unwrap();
    let (header, mut records) = (log.header, log.records);
    change(&mut records);
    let mut writer = LogWriter::new(Vec::new(), &header).unwrap();
    for r in &records {
        writer.write(r).unwrap();
    }
    std::fs::write(to, writer.into_inner()).unwrap();
}

#[test]
fn replay_reproduces_a_wall_clock_run_and_detects_tampering() {
    let dir = scratch("determinism-replay");
    let log = dir.join("wall.log");
    run_ok(&[
        "run",
        "launch/sim_arm.toml",
        "--duration",
        "2",
        "--set",
        "zenoh.enabled=false",
        "--log",
        log.to_str().unwrap(),
    ]);
    let (ok, stdout) = replay(&log);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("bit-identical"), "{stdout}");

    // An input changed by a hair: the first applied chunk's first action.
    let nudged = dir.join("nudged.log");
    rewrite(&log, &nudged, |records| {
        let chunk = records.iter_mut().find_map(|r| match r {
            Record::Chunk {
                accepted: true,
                chunk,
                ..
            } => Some(chunk),
            _ => None,
        });
        chunk.expect("the run applied chunks").actions[3] += 1e-4;
    });
    let (ok, stdout) = replay(&nudged);
    assert!(!ok, "a nudged chunk must change some command: {stdout}");
    assert!(stdout.contains("DIFFERENT"), "{stdout}");

    // An output changed in its last bit.
    let flipped = dir.join("flipped.log");
    rewrite(&log, &flipped, |records| {
        let tick = records.iter_mut().rev().find_map(|r| match r {
            Record::Tick(t) => Some(t),
            _ => None,
        });
        let tick = tick.unwrap();
        tick.command.position[1] = f64::from_bits(tick.command.position[1].to_bits() ^ 1);
    });
    let (ok, stdout) = replay(&flipped);
    assert!(!ok && stdout.contains("joint 1"), "{stdout}");
}
