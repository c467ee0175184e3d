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

/// Every execution strategy, with the inference delay longer than an action
/// period (several requests in flight for the asynchronous ones): the header
/// names the strategy and its parameters, and replay reproduces the commands.
#[test]
fn replay_is_bit_exact_under_every_execution_strategy() {
    let dir = scratch("determinism-strategies");
    let mut commands = Vec::new();
    for (strategy, extra) in [
        ("synchronous", &[][..]),
        ("replace", &["execution.chunk_size_threshold=0.5"]),
        (
            "aggregate",
            &[
                "execution.aggregate_fn=\"average\"",
                "execution.interpolation=\"quintic\"",
            ],
        ),
        ("temporal_ensemble", &["execution.m=0.1"]),
    ] {
        let log = dir.join(format!("{strategy}.log"));
        let mut args = vec![
            "run",
            "launch/sim_arm.toml",
            "--sim-clock",
            "--duration",
            "3",
            "--set",
            "zenoh.enabled=false",
            "--set",
            "control.sim_inference_ticks=25",
            "--set",
            "execution.replan_after=1",
            "--log",
            log.to_str().unwrap(),
        ];
        let strategy_arg = format!("execution.strategy=\"{strategy}\"");
        args.extend(["--set", &strategy_arg]);
        for e in extra {
            args.extend(["--set", e]);
        }
        run_ok(&args);
        let contents = read_log(&log).unwrap();
        assert_eq!(contents.header.strategy, strategy);
        let quintic = extra.iter().any(|e| e.contains("quintic"));
        assert_eq!(
            contents.header.interpolation == reflex_runtime::executor::Interpolation::Quintic,
            quintic
        );
        assert!(contents.header.strategy_params.is_object(), "{strategy}");
        let applied = (contents.records.iter())
            .filter(|r| matches!(r, Record::Chunk { accepted: true, .. }))
            .count();
        assert!(applied >= 5, "{strategy}: {applied} chunks applied");
        let (ok, stdout) = replay(&log);
        assert!(
            ok && stdout.contains("bit-identical"),
            "{strategy}: {stdout}"
        );
        commands.push(
            (contents.records.iter())
                .filter_map(|r| match r {
                    Record::Tick(t) => Some(t.command.position[0]),
                    _ => None,
                })
                .collect::<Vec<f64>>(),
        );
    }
    // Real-time chunking, with the flow policy whose sampler it guides.
    let log = dir.join("rtc.log");
    run_ok(&[
        "run",
        "launch/sim_arm_flow_rtc.toml",
        "--sim-clock",
        "--duration",
        "3",
        "--set",
        "zenoh.enabled=false",
        "--set",
        "control.sim_inference_ticks=20",
        "--log",
        log.to_str().unwrap(),
    ]);
    let contents = read_log(&log).unwrap();
    assert_eq!(contents.header.strategy, "rtc");
    assert_eq!(contents.header.strategy_params["schedule"], "exp");
    let (ok, stdout) = replay(&log);
    assert!(ok && stdout.contains("bit-identical"), "rtc: {stdout}");
    // The trace: every replayed tick, the target before the filter and the command.
    let trace = dir.join("rtc.csv");
    run_ok(&[
        "replay",
        log.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "tick,time_s,measured.shoulder,measured.elbow,measured.wrist,target.shoulder,\
         target.elbow,target.wrist,command.shoulder,command.elbow,command.wrist"
    );
    let ticks: Vec<_> = (contents.records.iter())
        .filter_map(|r| match r {
            Record::Tick(t) => Some(t),
            _ => None,
        })
        .collect();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), ticks.len());
    let mut limited = 0;
    for (row, tick) in rows.iter().zip(&ticks) {
        assert_eq!(row[0], tick.tick as f64);
        assert_eq!(
            &row[8..11],
            &tick.command.position[..3],
            "tick {}",
            tick.tick
        );
        limited += usize::from(row[5..8] != row[8..11]);
    }
    assert!(
        limited > 0,
        "the filter limited some targets: they differ from commands"
    );
    // The strategies really differ (the same seed, the same targets).
    for i in 0..commands.len() {
        for j in i + 1..commands.len() {
            assert_ne!(commands[i], commands[j], "strategies {i} and {j}");
        }
    }
}
